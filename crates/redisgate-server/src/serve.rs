//! The HTTP listener: hyper with header-read timeouts (which also close idle keep-alive
//! connections), at most `http.max_connections` open connections, and graceful shutdown that
//! lets in-flight requests finish.
//!
//! The connection cap is a semaphore taken *before* `accept`: past it, new clients wait in
//! the kernel's listen backlog (and beyond that are refused by the kernel), so a flood of
//! connections costs this process no task, buffer or descriptor until a slot frees.
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
use crate::ops::metrics::Observation;

/// First path segments the router owns; in standalone mode every other path is a command.
/// (No Redis command is named like one of them, so none is shadowed.)
pub const ROUTER_SEGMENTS: &[&str] = &["api", "auth", "docs", "openapi.json", "health", "metrics", "console"];

/// Marks a request that arrived over TLS (set by a TLS listener; there is none yet), so the
/// console's session cookie says `Secure`.
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// The data plane, served without the router.
#[derive(Clone)]
pub struct DataPlane {
    service: tower::util::Either<Cors<Direct>, Direct>,
}

impl DataPlane {
    /// `standalone`: the protocol is also served at `/` for standalone tokens.
    pub fn new(gateway: Arc<Gateway>, standalone: bool, cors: Option<CorsLayer>) -> Self {
        let direct = Direct { gateway, standalone };
        let service = match cors {
            Some(cors) => tower::util::Either::Left(cors.layer(direct)),
            None => tower::util::Either::Right(direct),
        };
        DataPlane { service }
    }

    fn serves(&self, path: &str) -> bool {
        let direct = match &self.service {
            tower::util::Either::Left(cors) => cors.get_ref(),
            tower::util::Either::Right(direct) => direct,
        };
        direct.target(path).is_some()
    }
}

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
}

impl Service<http::Request<Body>> for Direct {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let gw = Arc::clone(&self.gateway);
        let target = self.target(req.uri().path());
        Box::pin(async move {
            let observation = Observation::start(&req);
            let span = observation.span().clone();
            let (res, route) = match target {
                Some(Target::Instance(route)) => {
                    (gateway::handle_instance(State(gw), req).instrument(span).await, Some(route))
                }
                // Standalone: no route label for the span; the raw path holds keys.
                _ => (gateway::handle(State(gw), req).instrument(span).await, None),
            };
            observation.finish(route, "standalone", &res);
            Ok(res)
        })
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting, waits up to
/// `shutdown_grace` for open requests to finish, closes what is left, and returns. Every
/// connection is a task on `tracker`.
pub async fn serve(
    listener: TcpListener,
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
    let slots = Arc::new(Semaphore::new(http.max_connections));
    // Fired when the grace period is over: the connections still open are dropped (closed).
    let closing = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let (app, data_plane) = (app.clone(), data_plane.clone());
        let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let mut req = req.map(Body::new);
            if data_plane.serves(req.uri().path()) {
                return Either::Left(data_plane.service.clone().oneshot(req));
            }
            // The peer address rides along in the request extensions (audit log, throttling).
            req.extensions_mut().insert(ConnectInfo(peer));
            Either::Right(app.clone().oneshot(req))
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        let closing = closing.clone();
        tracker.spawn(async move {
            // Errors here are clients going away mid-request; nothing to do about them.
            tokio::select! {
                _ = conn => {}
                () = closing.cancelled() => {}
            }
            drop(slot);
        });
    }
    drop(listener);
    tracing::info!(connections = graceful.count(), "shutting down: waiting for in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(http.shutdown_grace) => tracing::warn!("shutdown grace period over; closing the remaining connections"),
    }
    closing.cancel();
}
