//! Running Redis commands on an instance from a member's session: the console's command
//! line and data browser. Nothing is decided here that the data plane decides: the request
//! goes through the gateway's own path ([`crate::gateway::serve_as`]: slots, rate limit,
//! parser, policy, executor, encoders), and its answer is the data plane's, byte for byte.
//! What this module adds is who the caller is: a member, at the scope of their role
//! ([`redisgate_core::org::Role::data_scope`]), or at the scope of one of the
//! organization's API keys (capped by the role), refused as the data plane refuses a
//! revoked, expired or other-instance key.

use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use redisgate_core::ids::{ApiKeyId, InstanceId, OrgId};
use redisgate_core::org::Action;
use redisgate_core::store::StoreError;
use serde::Deserialize;
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::CurrentUser;
use super::error::ErrorBody;
use super::{ApiError, ApiJson, ApiPath, ApiResult, ApiState, State, authorize};
use crate::gateway;
use crate::ops::ratelimit::Bucket;

/// How strings in the answer are written.
#[derive(Deserialize, utoipa::ToSchema, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReplyEncoding {
    /// As text (what the data plane answers by default).
    #[default]
    Plain,
    /// Every string base64-encoded except a top-level `OK` (`Upstash-Encoding: base64`):
    /// binary values arrive intact.
    Base64,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// One command, as the data plane's JSON body: `["SET", "greeting", "hello"]`.
    #[schema(value_type = Option<Vec<String>>)]
    pub command: Option<serde_json::Value>,
    /// Or several, run as a `/pipeline` (each with its own answer).
    #[schema(value_type = Option<Vec<Vec<String>>>)]
    pub pipeline: Option<serde_json::Value>,
    #[serde(default)]
    pub encoding: ReplyEncoding,
    /// Run with this API key's scope (never more than your role's) and rate instead of your
    /// role's: a revoked or expired key, or one not allowed on the instance, gets the data
    /// plane's 401.
    pub api_key_id: Option<ApiKeyId>,
}

/// Run one command (or a pipeline) on an instance, as the data plane would for a key of your
/// role's scope: viewers `read-only`, members `read-write`, owners and administrators
/// `admin`. The answer is the data plane's (`{"result"}`, `[{"result"}|{"error"}…]`); a
/// refusal keeps the data plane's status and exact `error` text and adds a `code`
/// (`command_failed`, `api_key_refused`, `too_many_requests`, `unavailable`, `timeout`).
#[utoipa::path(post, path = "/api/organizations/{org_id}/redis-instances/{instance_id}/command", tag = "redis-instances", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("instance_id" = InstanceId, Path)), request_body = CommandRequest,
    responses((status = 200, description = "the data plane's answer"),
        (status = 400, description = "refused by the policy, or Redis' error: `{\"error\"}` with the data plane's text"),
        (status = 401, description = "the API key asked for is not usable here (the data plane's answer)"),
        (status = 404, body = ErrorBody), (status = 409, description = "the instance is not running", body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, description = "the caller's rate")))]
async fn run(
    state: State,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id)): ApiPath<(OrgId, InstanceId)>,
    ApiJson(req): ApiJson<CommandRequest>,
) -> ApiResult<Response> {
    let role = authorize(&state, user.id, org, Action::ViewInstances).await?;
    super::instances::record_of(&state, org, id).await?;
    let (path, body) = match (&req.command, &req.pipeline) {
        (Some(c), None) => ("/", c),
        (None, Some(p)) => ("/pipeline", p),
        _ => return Err(ApiError::validation("command", "give either `command` or `pipeline`")),
    };
    let plan = state.store.org(org).await?.plan;
    let (scope, caller, own_rate) = match req.api_key_id {
        None => (role.data_scope(), Bucket::User(user.id), None),
        Some(key_id) => {
            let key = match state.store.api_key(key_id).await {
                Ok(k) if k.org_id == org => k,
                Ok(_) | Err(StoreError::NotFound) => {
                    return Ok(with_code(gateway::unauthorized(&state.gateway.sync)).await);
                }
                Err(e) => return Err(e.into()),
            };
            if !key.is_active(OffsetDateTime::now_utc()) || !key.allows_instance(id) {
                return Ok(with_code(gateway::unauthorized(&state.gateway.sync)).await);
            }
            (key.scope.min(role.data_scope()), Bucket::ApiKey(key.id), key.rate_limit)
        }
    };
    let principal =
        state.keys.console_principal(org, id, scope, caller, own_rate, plan).ok_or(ApiError::NotRunning)?;
    let body = serde_json::to_vec(body).map_err(|_| ApiError::Internal)?;
    let mut request = http::Request::post(path).body(Body::from(body)).map_err(|_| ApiError::Internal)?;
    if req.encoding == ReplyEncoding::Base64 {
        request.headers_mut().insert("upstash-encoding", http::HeaderValue::from_static("base64"));
    }
    Ok(with_code(gateway::serve_as(&state.gateway, principal, request).await).await)
}

/// The management API's errors all carry a `code`; the data plane's carry only `error`
/// (Upstash's shape). A refused answer keeps its status, headers and exact text and gains
/// the code of its status.
async fn with_code(response: Response) -> Response {
    let status = response.status();
    if status.is_success() {
        return response;
    }
    let code = match status.as_u16() {
        400 => "command_failed",
        401 => "api_key_refused",
        413 => "too_large",
        429 => "too_many_requests",
        503 => "unavailable",
        504 => "timeout",
        _ => "command_failed",
    };
    let (mut parts, body) = response.into_parts();
    // Error bodies are one short JSON object: the limit only guards against surprises.
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let error = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    let body = serde_json::to_vec(&serde_json::json!({"error": error, "code": code})).unwrap_or_default();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new().routes(routes!(run))
}
