//! The RedisGate HTTP application.
//!
//! # Layout
//! - [`config`]: the typed configuration tree (defaults → TOML → environment, SRH variables).
//! - [`api`]: the control plane, a JSON management API with its OpenAPI document.
//! - [`gateway`]: the data plane, the Upstash REST protocol over real Redis.
//! - [`serve`]: the HTTP listener (timeouts, graceful shutdown).
//!
//! [`launch`] builds and runs the whole application the same way in production and in tests:
//! tests bind port 0 and pass the listener in.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod gateway;
pub mod serve;

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

use crate::api::ApiState;
use crate::api::auth::LoginThrottle;
use crate::config::{CorsSettings, Settings};
use crate::gateway::auth::{Principal, Tokens};
use crate::gateway::backend::Backend;
use crate::gateway::{Gateway, reply::SyncTokens};

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
    let tokens = build_tokens(&settings, &tracker, &cancel)?;
    // Streams end as soon as shutdown starts (they would otherwise hold the drain open);
    // backend supervisors stop only after in-flight requests are done.
    let streams_end = CancellationToken::new();
    let gateway = Arc::new(Gateway {
        tokens,
        http: settings.http.clone(),
        sync: SyncTokens::new(),
        shutdown: streams_end.clone(),
    });
    let store =
        redisgate_store::connect(&settings.store_url()).await.context("opening the metadata store")?;
    let a = &settings.auth;
    let api = Arc::new(ApiState {
        store,
        auth: a.clone(),
        throttle: LoginThrottle::new(
            a.login_window,
            a.max_failed_logins_per_email,
            a.max_failed_logins_per_ip,
        ),
    });
    let app = router(api, (!settings.tokens.is_empty()).then_some(gateway), &settings.cors);
    let addr = listener.local_addr().context("listener address")?;
    tracing::info!(%addr, tokens = settings.tokens.len(), "RedisGate listening");

    let shutdown = async move {
        shutdown.await;
        streams_end.cancel();
    };
    serve::serve(listener, app, &settings.http, shutdown).await;
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(())
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
                let b = Backend::start(label, client, settings.backend.clone(), tracker, cancel.clone());
                backends.insert(url.to_owned(), Arc::clone(&b));
                b
            }
        };
        let access = if t.read_only { Access::ReadOnly } else { Access::ReadWrite };
        tokens.add(t.token.expose_secret(), Principal { access, backend });
    }
    Ok(tokens)
}

/// The management API, its OpenAPI document and docs page, and — in standalone mode — the
/// Upstash protocol at `/` for every path the API does not own.
fn router(api: Arc<ApiState>, standalone: Option<Arc<Gateway>>, cors: &CorsSettings) -> Router {
    let (management, openapi) = api::router(api);
    let docs = utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", openapi);
    let app = management.merge(docs);
    let app = match standalone {
        Some(gw) => app.fallback_service(Router::new().fallback(gateway::handle).with_state(gw)),
        None => app.fallback(|| async { api::ApiError::NotFound("route") }),
    };
    match cors_layer(cors) {
        Some(layer) => app.layer(layer),
        None => app,
    }
}

/// CORS for browsers. `*` never goes with credentials (the config refuses that combination).
fn cors_layer(cors: &CorsSettings) -> Option<CorsLayer> {
    if cors.allowed_origins.is_empty() {
        return None;
    }
    let origin = if cors.allowed_origins.iter().any(|o| o == "*") {
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
