//! The HTTP listener: hyper with header-read timeouts (which also close idle keep-alive
//! connections), at most `http.max_connections` open connections, and graceful shutdown that
//! lets in-flight requests finish.
//!
//! The connection cap is a semaphore taken *before* `accept`: past it, new clients wait in
//! the kernel's listen backlog (and beyond that are refused by the kernel), so a flood of
//! connections costs this process no task, buffer or descriptor until a slot frees.
//!
//! With TLS ([`crate::tls`]) the handshake runs in the connection's task, holding its slot,
//! bounded by `tls.handshake_timeout`; a second, plain listener (`tls.plain_listen`) shares
//! the same slots.
//!
//! Requests go two ways. The data plane (`/redis/{instance_id}/…`, and in standalone mode
//! every path the router does not own) is called directly, with CORS, metrics and its span
//! but without the router: routing through ~40 routes, a boxed route service per request and
//! the middleware's boxing were a fifth of its instructions per request (callgrind, see
//! bench/README.md). Everything else (management API, docs, health, metrics) goes through the
//! [`Router`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::response::Response;
use futures_util::future::Either;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Layer as _, Service, ServiceExt as _};
use tower_http::cors::{Cors, CorsLayer};
use tracing::Instrument as _;

use crate::config::HttpSettings;
use crate::gateway::{self, Gateway};
use crate::ops::metrics::{Observation, TLS_HANDSHAKE_FAILURES};
use crate::tls::Tls;

/// First path segments the router owns; in standalone mode every other path is a command.
/// (No Redis command is named like one of them, so none is shadowed.)
pub const ROUTER_SEGMENTS: &[&str] = &["api", "auth", "docs", "openapi.json", "health", "metrics", "console"];

/// Marks a request that arrived on a TLS listener, so the console's session cookie says
/// `Secure`.
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// The data plane, served without the router.
#[derive(Clone)]
pub struct DataPlane {
    direct: Direct,
    cors: Option<Cors<Direct>>,
    /// Whether every request goes through [`Self::cors`], or only those with an `Origin`.
    cors_always: bool,
}

impl DataPlane {
    /// `standalone`: the protocol is also served at `/` for standalone tokens. `cors` applies to
    /// requests that carry `Origin` (browsers send it on every cross-origin request and
    /// preflight; servers and edge functions, the usual callers, do not), or to every request
    /// when `vary_by_origin`: with an origin list, answers differ by origin and must say
    /// `Vary: Origin` to caches even when asked without one. Skipping the layer saved a
    /// header map per request.
    pub fn new(
        gateway: Arc<Gateway>,
        standalone: bool,
        cors: Option<CorsLayer>,
        vary_by_origin: bool,
    ) -> Self {
        let direct = Direct { gateway, standalone };
        let cors = cors.map(|cors| cors.layer(direct.clone()));
        DataPlane { direct, cors, cors_always: vary_by_origin }
    }

    /// The request's answer if it is the data plane's, else the request back (for the router).
    #[allow(clippy::type_complexity, clippy::result_large_err)]
    fn call(
        &self,
        req: http::Request<Body>,
    ) -> Result<
        Either<tower::util::Oneshot<Cors<Direct>, http::Request<Body>>, DirectFuture>,
        http::Request<Body>,
    > {
        let Some(target) = self.direct.target(req.uri().path()) else {
            return Err(req);
        };
        Ok(match &self.cors {
            Some(cors) if self.cors_always || req.headers().contains_key(http::header::ORIGIN) => {
                Either::Left(cors.clone().oneshot(req))
            }
            _ => Either::Right(self.direct.serve(target, req)),
        })
    }
}

type DirectFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// Where a data-plane request goes, with its metrics route label.
enum Target {
    Instance(&'static str),
    Standalone,
}

/// The gateway's handlers as one service, each request counted and traced as the router's
/// layers would.
#[derive(Clone)]
struct Direct {
    gateway: Arc<Gateway>,
    standalone: bool,
}

impl Direct {
    fn target(&self, path: &str) -> Option<Target> {
        if let Some(rest) = path.strip_prefix("/redis/") {
            return match rest.find('/') {
                None if !rest.is_empty() => Some(Target::Instance("/redis/{instance_id}")),
                Some(i) if i > 0 => Some(Target::Instance("/redis/{instance_id}/{*rest}")),
                _ => None,
            };
        }
        let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
        (self.standalone && !ROUTER_SEGMENTS.contains(&first)).then_some(Target::Standalone)
    }

    fn serve(&self, target: Target, req: http::Request<Body>) -> DirectFuture {
        let gw = Arc::clone(&self.gateway);
        Box::pin(async move {
            let observation = Observation::start(&req);
            let span = observation.span().clone();
            let (res, route) = match target {
                Target::Instance(route) => {
                    (gateway::handle_instance(State(gw), req).instrument(span).await, Some(route))
                }
                // Standalone: no route label for the span; the raw path holds keys.
                Target::Standalone => (gateway::handle(State(gw), req).instrument(span).await, None),
            };
            observation.finish(route, "standalone", &res);
            Ok(res)
        })
    }
}

impl Service<http::Request<Body>> for Direct {
    type Response = Response;
    type Error = Infallible;
    type Future = DirectFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    /// Behind the CORS layer: [`DataPlane::call`] routed the request here already.
    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let target = self.target(req.uri().path()).unwrap_or(Target::Standalone);
        self.serve(target, req)
    }
}

/// One address served: plain HTTP, or HTTPS with `tls`.
pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<Arc<Tls>>,
}

/// Serves `app` on `listeners` until `shutdown` resolves, then stops accepting, waits up to
/// `shutdown_grace` for open requests to finish, closes what is left, and returns. Every
/// connection is a task on `tracker`; all listeners share `http.max_connections`.
pub async fn serve(
    listeners: Vec<Listener>,
    app: Router,
    data_plane: DataPlane,
    http: &HttpSettings,
    tracker: &TaskTracker,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(http.header_read_timeout).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(http.header_read_timeout))
        .keep_alive_timeout(http.header_read_timeout);
    let graceful = GracefulShutdown::new();
    // Fired when the grace period is over: the connections still open are dropped (closed).
    let closing = CancellationToken::new();
    {
        let server = Server {
            builder: Arc::new(builder),
            graceful: &graceful,
            slots: Arc::new(Semaphore::new(http.max_connections)),
            closing: closing.clone(),
            app,
            data_plane,
            tracker: tracker.clone(),
        };
        server.accept(&listeners, shutdown).await;
    }
    drop(listeners);
    tracing::info!(connections = graceful.count(), "shutting down: waiting for in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(http.shutdown_grace) => tracing::warn!("shutdown grace period over; closing the remaining connections"),
    }
    closing.cancel();
}

/// What every connection's task needs.
struct Server<'a> {
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: &'a GracefulShutdown,
    slots: Arc<Semaphore>,
    closing: CancellationToken,
    app: Router,
    data_plane: DataPlane,
    tracker: TaskTracker,
}

impl Server<'_> {
    /// Accepts on `listeners` until `shutdown`, each connection a task holding a slot. One
    /// loop for all of them: a free slot goes to whichever listener has a client first (a loop
    /// per listener would park a slot on a quiet one while clients wait on the other).
    async fn accept(&self, listeners: &[Listener], shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let slot = tokio::select! {
                slot = Arc::clone(&self.slots).acquire_owned() => slot.expect("the semaphore is never closed"),
                () = &mut shutdown => return,
            };
            // `accept` is cancel-safe: the listeners that lost the race keep their clients.
            let any = futures_util::future::select_all(listeners.iter().map(|l| Box::pin(l.tcp.accept())));
            let (stream, peer, listener) = tokio::select! {
                (accepted, i, _) = any => match accepted {
                    Ok((stream, peer)) => (stream, peer, &listeners[i]),
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => return,
            };
            let _ = stream.set_nodelay(true);
            let (app, data_plane) = (self.app.clone(), self.data_plane.clone());
            let over_tls = listener.tls.is_some();
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let mut req = match data_plane.call(req.map(Body::new)) {
                    Ok(answer) => return Either::Left(answer),
                    Err(req) => req,
                };
                // The peer address rides along in the request extensions (audit log, throttling).
                req.extensions_mut().insert(ConnectInfo(peer));
                if over_tls {
                    req.extensions_mut().insert(OverTls);
                }
                Either::Right(app.clone().oneshot(req))
            });
            let (builder, watcher, closing) =
                (Arc::clone(&self.builder), self.graceful.watcher(), self.closing.clone());
            let tls = listener.tls.clone();
            self.tracker.spawn(async move {
                let served = async {
                    // Errors while serving are clients going away mid-request; nothing to do
                    // about them.
                    let Some(tls) = tls else {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        return drop(watcher.watch(conn.into_owned()).await);
                    };
                    // The handshake holds the slot, so it is bounded in time: a client that
                    // stalls it (slowloris) gives the slot back after the timeout.
                    match tokio::time::timeout(tls.handshake_timeout(), tls.acceptor().accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                            drop(watcher.watch(conn.into_owned()).await);
                        }
                        Ok(Err(e)) => {
                            metrics::counter!(TLS_HANDSHAKE_FAILURES, "reason" => "error").increment(1);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!(TLS_HANDSHAKE_FAILURES, "reason" => "timeout").increment(1);
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                };
                tokio::select! {
                    () = served => {}
                    () = closing.cancelled() => {}
                }
                drop(slot);
            });
        }
    }
}
