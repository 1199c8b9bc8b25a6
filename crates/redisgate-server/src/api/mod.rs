//! The control plane: a JSON API over the metadata store, one module per noun.
//!
//! # Layout
//! - [`error`]: [`ApiError`], the JSON error body of every management answer.
//! - [`auth`]: register, log in, sessions; the [`auth::CurrentUser`] extractor.
//! - [`orgs`]: organizations, members and quotas, guarded by the role table in
//!   `redisgate_core::org::Role::allows`.
//! - [`audit`]: recording and listing the audit log.
//! - [`instances`]: Redis instances (provisioned by RedisGate or brought by the user).
//! - [`keys`]: API keys for the data plane.
//! - [`plans`]: plans, their quotas and rate limits.
//!
//! Handlers are thin: extract, authorize, call the store or a service, map to a response.
//! Every route is registered through `utoipa_axum`, so `/openapi.json` is generated from the
//! same code that serves the requests.

pub mod audit;
pub mod auth;
pub mod error;
pub mod instances;
pub mod keys;
pub mod orgs;
pub mod plans;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts};
use http::request::Parts;
use redisgate_core::ids::{OrgId, UserId};
use redisgate_core::org::{Action, Role};
use redisgate_core::store::Store;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use self::error::{ApiError, ApiResult};
use crate::config::AuthSettings;

/// Shared state of the management API.
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub instances: Arc<crate::instances::Instances>,
    /// For revocations to take effect at once on this server.
    pub keys: Arc<crate::gateway::keys::KeyAuth>,
    /// The configured rates (what a plan gets when the API has not set one).
    pub rate_limit: crate::config::RateLimitSettings,
    pub auth: AuthSettings,
    pub throttle: auth::LoginThrottle,
}

pub type State = axum::extract::State<Arc<ApiState>>;

/// A JSON body whose rejections are [`ApiError`]s (so they are JSON too).
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// Path parameters whose rejections are [`ApiError`]s: a malformed id is a 404, as for an
/// id that does not exist.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// Where a request came from, for the audit log.
#[derive(Debug, Clone, Default)]
pub struct RequestMeta {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string());
        let user_agent = parts
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect());
        Ok(RequestMeta { ip, user_agent })
    }
}

/// The caller's role in `org`, if it allows `action`. A caller who is not a member gets
/// `NotFound`, exactly as for an organization that does not exist, so ids leak nothing.
pub async fn authorize(state: &ApiState, user: UserId, org: OrgId, action: Action) -> ApiResult<Role> {
    let role = state.store.role_of(org, user).await?.ok_or(ApiError::NotFound("organization"))?;
    if role.allows(action) { Ok(role) } else { Err(ApiError::Forbidden) }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "RedisGate management API", description = "Users, organizations, members, quotas and the audit log. Errors are JSON `{\"error\", \"code\"}`."),
    components(schemas(error::ErrorBody)),
    modifiers(&SessionAuth)
)]
struct ApiDoc;

struct SessionAuth;

impl utoipa::Modify for SessionAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "session",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("a session token from POST /auth/login"))
                    .build(),
            ),
        );
    }
}

/// The management routes and their OpenAPI document.
pub fn router(state: Arc<ApiState>) -> (axum::Router, utoipa::openapi::OpenApi) {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(auth::routes())
        .merge(orgs::routes())
        .merge(audit::routes())
        .merge(instances::routes())
        .merge(keys::routes())
        .merge(plans::routes())
        .split_for_parts();
    let mut api = api;
    qualify_operation_ids(&mut api);
    (router.with_state(state), api)
}

/// utoipa names an operation after its handler, and most modules have a `list`, a `get` and a
/// `delete`; OpenAPI wants operation ids unique (generators and fuzzers key on them), so each
/// is qualified by its tag, which is its module: `redis_instances_list`.
fn qualify_operation_ids(api: &mut utoipa::openapi::OpenApi) {
    for item in api.paths.paths.values_mut() {
        let ops = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
        for op in ops.into_iter().flatten() {
            if let (Some(id), Some(tag)) = (&op.operation_id, op.tags.as_ref().and_then(|t| t.first())) {
                op.operation_id = Some(format!("{}_{id}", tag.replace('-', "_")));
            }
        }
    }
}
