//! The RedisGate HTTP application.
//!
//! # Layout
//! - [`config`]: the typed configuration tree (defaults → TOML → environment, SRH variables).
//! - [`api`]: the control plane, a JSON management API with its OpenAPI document.
//! - [`backups`]: instances' backups (local directory or S3), restores and daily schedules.
//! - [`gateway`]: the data plane, the Upstash REST protocol over real Redis.
//! - [`console`]: the web console's embedded assets, served at `/console/` under a strict CSP.
//! - [`egress`]: where external instances may connect (the policy as the redis DNS resolver).
//! - [`serve`]: the HTTP listener (timeouts, graceful shutdown), which sends data-plane requests
//!   straight to the gateway and the rest through the router.
//! - [`tls`]: HTTPS on that listener (certificates reloaded when they change, mutual TLS).
//! - [`usage`]: the instances' usage history: the sampler and the down-sampling of its rows.
//!
//! [`launch`] builds and runs the whole application the same way in production and in tests:
//! tests bind port 0 and pass the listener in.
#![forbid(unsafe_code)]

pub mod api;
pub mod backend;
pub mod backups;
pub mod beat;
pub mod check;
pub mod config;
pub mod console;
pub mod egress;
pub mod feed;
pub mod gateway;
pub mod instances;
pub mod ops;
pub mod secrets;
pub mod serve;
pub mod tls;
pub mod usage;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use http::{HeaderName, HeaderValue, Method};
use redisgate_core::policy::Access;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use redisgate_core::instance::InstanceStatus;
use redisgate_core::provision::StatusSink;
use redisgate_core::store::Store;
use redisgate_provision::{LocalOptions, LocalProvisioner};

use crate::api::ApiState;
use crate::api::auth::{AnonymousLimit, LoginThrottle};
use crate::backend::{Backend, Hold};
use crate::config::{BackendSettings, CorsSettings, RateLimitMode, Settings};
use crate::gateway::auth::{Principal, Tokens};
use crate::gateway::keys::KeyAuth;
use crate::gateway::{Gateway, reply::SyncTokens};
use crate::instances::Instances;
use crate::secrets::Sealer;

/// Runs RedisGate on `listener` until `shutdown` resolves, then drains and returns.
pub async fn launch(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // One TLS crypto provider for the whole process (rediss:// backends). Installing fails
    // only when one is already installed, which is just as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    // Before anything starts: a certificate that does not load stops start-up.
    let tls = tls::Tls::load(&settings.tls)?;
    let tokens = build_tokens(&settings, &tracker, &cancel)?;
    ops::metrics::handle();
    tracker.spawn(ops::metrics::upkeep(cancel.clone()));
    private_dir(&settings.data_dir)?;
    let store =
        redisgate_store::connect(&settings.store_url()).await.context("opening the metadata store")?;
    let store = ops::metered::MeteredStore::wrap(store);
    let secret_key = settings.secret_key.as_ref().map(|k| k.expose_secret().to_owned());
    let sealer = Sealer::load(secret_key.as_deref(), &settings.data_dir)?;
    let local = LocalProvisioner::new(
        settings.data_dir.join("instances"),
        status_sink(&store, &tracker),
        LocalOptions {
            redis_server: settings.instances.redis_server.clone(),
            max_reply_bytes: settings.http.max_response_bytes as u64,
            ..LocalOptions::default()
        },
    );
    let local_instances = Arc::clone(&local);
    let egress = {
        let local = Arc::clone(&local);
        let listen = listener.local_addr().context("listener address")?;
        egress::for_settings(&settings, listen, Arc::new(move || local.ports())).await?
    };
    let instances = Arc::new(Instances::new(
        Arc::clone(&store),
        local,
        egress,
        sealer,
        &settings,
        tracker.clone(),
        cancel.clone(),
    ));
    let backups = backups::Backups::new(
        Arc::clone(&store),
        Arc::clone(&instances),
        local_instances,
        backups::storage::Storage::open(&settings.backups, &settings.data_dir)?,
        &settings.data_dir,
        settings.instances.redis_server.clone(),
        settings.backups.clone(),
        tracker.clone(),
        cancel.clone(),
    )?;
    tracker.spawn(Arc::clone(&backups).run_schedule(cancel.clone()));
    let rate_limit = settings.rate_limit.enabled.then(|| settings.rate_limit.clone());
    let keys = Arc::new(KeyAuth::new(
        Arc::clone(&store),
        Arc::clone(&instances),
        settings.auth.key_cache_ttl,
        rate_limit,
    ));
    tracker.spawn(record_key_usage(Arc::clone(&keys), cancel.clone()));
    let limiter = Arc::new(rate_limiter(&settings, &tracker, &cancel)?);
    let health = ops::health::Health::new(
        Arc::clone(&store),
        Arc::clone(&instances),
        &settings.instances.redis_server,
        Arc::clone(&limiter),
        settings.backend.idle_checks_per_second,
    );
    tracker.spawn(Arc::clone(&health).run(settings.backend.health_check_interval, cancel.clone()));
    // Instances come back in the background: the API answers meanwhile, each instance's status
    // says where it is, and readiness waits for all of them. Then the store's change feed is
    // followed from where it stood before they were read (what other replicas did, and the
    // key revocations), and idle instances are checked.
    tracker.spawn({
        let (store, instances, keys) = (Arc::clone(&store), Arc::clone(&instances), Arc::clone(&keys));
        let (health, cancel, tracker) = (Arc::clone(&health), cancel.clone(), tracker.clone());
        async move {
            // Unreadable: the feed's first answer (`None`) makes the follower read everything.
            let start = store.last_change().await.unwrap_or(0);
            instances.restore_all().await;
            health.startup_complete();
            tracker.spawn(Arc::clone(&instances).check_idle(cancel.clone()));
            feed::follow(store, instances, keys, start, cancel).await;
        }
    });
    // Streams end as soon as shutdown starts (they would otherwise hold the drain open);
    // backend supervisors stop only after in-flight requests are done.
    let streams_end = CancellationToken::new();
    let gateway = Arc::new(Gateway {
        tokens,
        keys: Arc::clone(&keys),
        limiter,
        http: settings.http.clone(),
        sync: SyncTokens::new(),
        shutdown: streams_end.clone(),
        slots: gateway::slots::Slots::new(
            settings.http.max_requests_in_flight_per_key,
            settings.http.max_streams_per_key,
        ),
        scripts: gateway::lua::Scripts::default(),
    });
    let a = &settings.auth;
    let api = Arc::new(ApiState {
        store,
        instances: Arc::clone(&instances),
        backups,
        keys,
        gateway: Arc::clone(&gateway),
        rate_limit: settings.rate_limit.clone(),
        auth: a.clone(),
        throttle: LoginThrottle::new(
            a.login_window,
            a.max_failed_logins_per_email,
            a.max_failed_logins_per_ip,
        ),
        anonymous: AnonymousLimit::new(a.anonymous_rate()),
        max_orgs_per_user: settings.quota.max_organizations_per_user,
        trusted_proxies: settings.http.trusted_proxies.clone(),
        public_url: settings.http.public_url.clone(),
    });
    tracker.spawn(forget_idle_addresses(Arc::clone(&api), cancel.clone()));
    tracker.spawn(usage::run(
        Arc::clone(&api.store),
        Arc::clone(&instances),
        settings.usage.interval,
        cancel.clone(),
    ));
    tracker.spawn(api::audit::retention(Arc::clone(&api.store), settings.audit.retention, cancel.clone()));
    // A separate metrics listener, when configured, is bound before serving starts so that a
    // taken port fails start-up instead of silently dropping the metrics.
    let metrics_listener = match settings.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr).await.with_context(|| format!("cannot listen for metrics on {addr}"))?,
        ),
        None => None,
    };
    let app = router(api, Arc::clone(&health), metrics_listener.is_none(), &settings.cors);
    let vary_by_origin = !settings.cors.any_origin();
    let data_plane = serve::DataPlane::new(
        gateway,
        !settings.tokens.is_empty(),
        cors_layer(&settings.cors),
        vary_by_origin,
    );
    if let Some(listener) = metrics_listener {
        // The operators' side: metrics, and health with every component's details.
        let metrics = Router::new()
            .route("/metrics", axum::routing::get(|| async { ops::metrics::render() }))
            .route("/health", axum::routing::get(ops::health::operator_health))
            .with_state(health);
        let stop = cancel.clone();
        tracker.spawn(async move {
            let serving = axum::serve(listener, metrics).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serving.await {
                tracing::error!(error = %e, "metrics listener failed");
            }
        });
    }
    let addr = listener.local_addr().context("listener address")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, tokens = settings.tokens.len(), "RedisGate listening");
    let mut listeners = vec![serve::Listener { tcp: listener, tls: tls.clone() }];
    if let Some(addr) = settings.tls.plain_listen {
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for plain HTTP (tls.plain_listen) on {addr}"))?;
        tracing::info!(%addr, scheme = "http", "RedisGate listening");
        listeners.push(serve::Listener { tcp, tls: None });
    }
    if let Some(tls) = tls {
        // Registered now, so a SIGHUP from here on reloads instead of ending the process.
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler; TLS files are still reloaded when they change");
                None
            }
        };
        tracker.spawn(tls.watch(hangup, cancel.clone()));
    }

    let shutdown = async move {
        shutdown.await;
        streams_end.cancel();
    };
    serve::serve(listeners, app, data_plane, &settings.http, &tracker, shutdown).await;
    cancel.cancel();
    instances.shutdown().await;
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// `data_dir` holds the metadata store, the secret key and every local instance's data and
/// password: created 0700, and put back to 0700 at start if it was loosened. A directory we
/// may not chmod (a volume owned by root with a group for us, as Kubernetes' `fsGroup` makes)
/// is only warned about: the files in it are 0600 regardless.
fn private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).with_context(|| format!("creating data_dir {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            tracing::warn!(path = %dir.display(), error = %e, "data_dir could not be made private (0700)");
        }
    }
    Ok(())
}

/// Provisioners report status changes (a crashed process, a restart) through this; each
/// write is a task on the tracker, so shutdown waits for it.
fn status_sink(store: &Arc<dyn Store>, tracker: &TaskTracker) -> StatusSink {
    let (store, tracker) = (Arc::clone(store), tracker.clone());
    Arc::new(move |id, status: InstanceStatus, reason: Option<String>| {
        let store = Arc::clone(&store);
        tracker.spawn(async move {
            if let Err(e) = store.set_instance_status(id, status, reason.as_deref()).await {
                tracing::error!(instance.id = %id, error = %e, "could not record instance status");
            }
        });
    })
}

/// Writes API keys' `last_used_at` and reloads plan rates once a second, and writes the usage
/// once more at shutdown.
async fn record_key_usage(keys: Arc<KeyAuth>, cancel: CancellationToken) {
    keys.refresh_plan_rates().await;
    loop {
        tokio::select! {
            () = beat::sleep(std::time::Duration::from_secs(1)) => {
                keys.flush_usage().await;
                keys.refresh_plan_rates().await;
            }
            () = cancel.cancelled() => return keys.flush_usage().await,
        }
    }
}

/// Keeps `auth.anonymous_rate`'s memory to the addresses seen within the last seconds.
async fn forget_idle_addresses(api: Arc<ApiState>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = beat::sleep(std::time::Duration::from_secs(10)) => api.anonymous.forget_idle(),
            () = cancel.cancelled() => return,
        }
    }
}

/// The data plane's limiter; in distributed mode with its own supervised connection, whose
/// slow answers are not waited for beyond `rate_limit.redis_timeout`.
fn rate_limiter(
    settings: &Settings,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<ops::ratelimit::RateLimiter> {
    let rl = &settings.rate_limit;
    let url = match (rl.enabled, rl.mode, &rl.redis_url) {
        (true, RateLimitMode::Distributed, Some(url)) => url,
        _ => return Ok(ops::ratelimit::RateLimiter::local()),
    };
    let client =
        redis::Client::open(url.expose_secret()).context("rate_limit.redis_url is not a valid Redis URL")?;
    let cfg =
        BackendSettings { response_timeout: rl.redis_timeout, max_streams: 0, ..settings.backend.clone() };
    let backend = Backend::start("rate-limit".into(), client, Hold::Always, cfg, tracker, cancel.clone());
    Ok(ops::ratelimit::RateLimiter::distributed(backend))
}

/// One backend per distinct Redis URL, shared by the tokens that name it.
fn build_tokens(
    settings: &Settings,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<Tokens> {
    let mut backends: HashMap<String, Arc<Backend>> = HashMap::new();
    let mut tokens = Tokens::default();
    for (i, t) in settings.tokens.iter().enumerate() {
        let url = t.url.expose_secret();
        let backend = match backends.get(url) {
            Some(b) => Arc::clone(b),
            None => {
                let client = redis::Client::open(url)
                    .with_context(|| format!("tokens[{i}].url is not a valid Redis URL"))?;
                let addr = client.get_connection_info().addr().to_string();
                let label = t.name.clone().unwrap_or(addr);
                let b = Backend::start(
                    label,
                    client,
                    Hold::Always,
                    settings.backend.clone(),
                    tracker,
                    cancel.clone(),
                );
                backends.insert(url.to_owned(), Arc::clone(&b));
                b
            }
        };
        // A standalone token is Upstash's "Standard" token: every command, scripts included.
        let access = if t.read_only { Access::ReadOnly } else { Access::Admin };
        // Unlimited unless the token or `rate_limit.tokens` says otherwise: standalone mode
        // replaces SRH, which has no limit, in CI runs that send as fast as they can.
        let rate = t.rate_limit.or(settings.rate_limit.tokens);
        let limit =
            rate.filter(|_| settings.rate_limit.enabled).map(|r| (ops::ratelimit::Bucket::Token(i), r));
        tokens.add(
            t.token.expose_secret(),
            Principal { access, backend, caller: ops::ratelimit::Bucket::Token(i), limit },
        );
    }
    Ok(tokens)
}

/// The management API, its OpenAPI document and docs page, and the health and metrics
/// endpoints. (The data plane is served beside it: see [`serve`].)
fn router(
    api: Arc<ApiState>,
    health: Arc<ops::health::Health>,
    metrics_here: bool,
    cors: &CorsSettings,
) -> Router {
    let (management, openapi) = api::router(api);
    let docs = utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", openapi);
    let mut operations = Router::new()
        .route("/health/live", axum::routing::get(ops::health::live))
        .route("/health/ready", axum::routing::get(ops::health::ready))
        .route("/health", axum::routing::get(ops::health::health));
    if metrics_here {
        operations = operations.route("/metrics", axum::routing::get(|| async { ops::metrics::render() }));
    }
    let operations = operations.with_state(health);
    let app = management
        .merge(docs)
        .merge(operations)
        .merge(console::routes())
        .fallback(|| async { api::ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { api::ApiError::MethodNotAllowed })
        .layer(axum::middleware::from_fn_with_state(
            ops::metrics::FallbackLabel("unmatched"),
            ops::metrics::track_http,
        ));
    match cors_layer(cors) {
        Some(layer) => app.layer(layer),
        None => app,
    }
}

fn cors_layer(cors: &CorsSettings) -> Option<CorsLayer> {
    if cors.allowed_origins.is_empty() {
        return None;
    }
    let origin = if cors.any_origin() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(cors.allowed_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::HEAD])
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers([HeaderName::from_static("upstash-sync-token")])
            .allow_credentials(cors.allow_credentials)
            .max_age(std::time::Duration::from_secs(86400)),
    )
}
