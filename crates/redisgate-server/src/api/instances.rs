//! Redis instances of an organization: create (local process or external server), list
//! (in pages, see `super::paging`),
//! get (with status), configure, connect details, credential reset, live stats, delete. The
//! rules are the instance service's (`crate::instances`); these handlers authorize and map.

use std::sync::Arc;

use http::StatusCode;
use redisgate_core::account::User;
use redisgate_core::ids::{InstanceId, OrgId};
use redisgate_core::instance::Instance;
use redisgate_core::org::Action;
use redisgate_core::page::Cursor;
use redisgate_core::store::{InstanceRecord, StoreError};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit;
use super::auth::CurrentUser;
use super::error::ErrorBody;
use super::paging::{PageParams, PageQuery, Paged};
use super::{ApiError, ApiJson, ApiPath, ApiResult, ApiState, RequestMeta, State, authorize};
use crate::instances::{Connect, InstanceUpdate, NewRedisInstance, Stats};

/// An instance with its live health, from the gateway's background health checks.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct InstanceView {
    #[serde(flatten)]
    pub instance: Instance,
    /// `healthy` (its Redis answered the last check), `unhealthy` (it did not),
    /// `unchecked` (idle since this replica served it, not reached by the idle checks yet),
    /// `not_running`. An instance with a connection is checked every
    /// `backend.health_check_interval`; one without, by the idle checks, at a bounded total
    /// rate (`/health` says how long a round takes).
    pub health: &'static str,
    /// When its Redis was last seen answering (a reply, a PING or a check), as this replica
    /// saw it; absent when never.
    #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen_healthy: Option<time::OffsetDateTime>,
    /// Why an external server could not be used (refused, timed out, authentication, egress
    /// policy): shown to deployment administrators only. Its owner's `status_reason` gives
    /// one reason for all of these, so the gateway cannot be used to scan the network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_detail: Option<String>,
    /// Sentinel and Cluster instances: each server known now, its role and whether the
    /// gateway is connected to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<crate::backend::ha::NodeStatus>>,
}

fn view(state: &ApiState, user: &User, instance: Instance) -> InstanceView {
    let (health, last_seen_healthy) = state.instances.health(instance.id);
    let status_detail = if user.is_admin { state.instances.status_detail(instance.id) } else { None };
    let nodes = state.instances.nodes(instance.id);
    InstanceView { instance, health, last_seen_healthy, status_detail, nodes }
}

/// Create an instance (owner, admin, member). It is started before the answer: the status
/// says whether that worked (`running`) or why not (`error`).
#[utoipa::path(post, path = "/api/organizations/{org_id}/redis-instances", tag = "redis-instances", security(("session" = [])),
    params(("org_id" = OrgId, Path)), request_body = NewRedisInstance,
    responses((status = 201, body = InstanceView), (status = 403, description = "role, quota or host capacity", body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath(org): ApiPath<OrgId>,
    ApiJson(req): ApiJson<NewRedisInstance>,
) -> ApiResult<(StatusCode, axum::Json<InstanceView>)> {
    let result = async {
        authorize(&state, user.id, org, Action::ManageInstances).await?;
        Ok(state.instances.create(org, user.id, req).await?.instance)
    }
    .await;
    let target = result.as_ref().ok().map(|i| i.id.to_string());
    let inst = audit::outcome(&state, &user, Some(org), "instance.create", target, &meta, result).await?;
    Ok((StatusCode::CREATED, axum::Json(view(&state, &user, inst))))
}

/// The organization's instances, by id (creation order), a page at a time: while more
/// follow, the `Link` header holds the next page's URL.
#[utoipa::path(get, path = "/api/organizations/{org_id}/redis-instances", tag = "redis-instances", security(("session" = [])),
    params(("org_id" = OrgId, Path), PageParams),
    responses((status = 200, body = Vec<InstanceView>, headers(("link" = String, description = "`<…?limit=N&after=CURSOR>; rel=\"next\"` (RFC 8288, a relative URL) while more follow; absent on the last page"))),
        (status = 404, body = ErrorBody), (status = 422, description = "a bad `limit` or `after`", body = ErrorBody)))]
async fn list(
    state: State,
    CurrentUser(user): CurrentUser,
    ApiPath(org): ApiPath<OrgId>,
    page: PageQuery,
) -> ApiResult<Paged<InstanceView>> {
    authorize(&state, user.id, org, Action::ViewInstances).await?;
    let rows = state.store.instances_page(org, page.after().map(|c| InstanceId(c.0)), page.fetch()).await?;
    Ok(page.answer(rows, |i| Cursor(i.id.0)).map(|i| view(&state, &user, i)))
}

pub(super) async fn record_of(state: &ApiState, org: OrgId, id: InstanceId) -> ApiResult<InstanceRecord> {
    match state.store.instance(id).await {
        Ok(r) if r.instance.org_id == org => Ok(r),
        Ok(_) | Err(StoreError::NotFound) => Err(ApiError::NotFound("instance")),
        Err(e) => Err(e.into()),
    }
}

/// One instance with its status.
#[utoipa::path(get, path = "/api/organizations/{org_id}/redis-instances/{instance_id}", tag = "redis-instances", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("instance_id" = InstanceId, Path)), responses((status = 200, body = InstanceView), (status = 404, body = ErrorBody)))]
async fn get(
    state: State,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id)): ApiPath<(OrgId, InstanceId)>,
) -> ApiResult<axum::Json<InstanceView>> {
    authorize(&state, user.id, org, Action::ViewInstances).await?;
    Ok(axum::Json(view(&state, &user, record_of(&state, org, id).await?.instance)))
}

/// Live stats from the instance's `INFO`: memory used, keys, ops/s, clients.
#[utoipa::path(get, path = "/api/organizations/{org_id}/redis-instances/{instance_id}/stats", tag = "redis-instances", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("instance_id" = InstanceId, Path)),
    responses((status = 200, body = Stats), (status = 404, body = ErrorBody), (status = 503, description = "not running", body = ErrorBody)))]
async fn stats(
    state: State,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id)): ApiPath<(OrgId, InstanceId)>,
) -> ApiResult<axum::Json<Stats>> {
    authorize(&state, user.id, org, Action::ViewInstances).await?;
    record_of(&state, org, id).await?;
    state.instances.stats(id).await.map(axum::Json).ok_or(ApiError::Unavailable)
}

/// Rename, resize (`memory_mb`, within the memory quota) or change the eviction policy of an
/// instance (owner, admin, member). Memory and eviction apply to a running local instance at
/// once and after its restarts; external servers keep their own settings (422).
#[utoipa::path(patch, path = "/api/organizations/{org_id}/redis-instances/{instance_id}", tag = "redis-instances", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("instance_id" = InstanceId, Path)), request_body = InstanceUpdate,
    responses((status = 200, body = InstanceView), (status = 403, description = "role, quota or host capacity", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the instance is not running", body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id)): ApiPath<(OrgId, InstanceId)>,
    ApiJson(req): ApiJson<InstanceUpdate>,
) -> ApiResult<axum::Json<InstanceView>> {
    let result = async {
        authorize(&state, user.id, org, Action::ManageInstances).await?;
        let rec = record_of(&state, org, id).await?;
        Ok(state.instances.update(&rec, req).await?.instance)
    }
    .await;
    let inst =
        audit::outcome(&state, &user, Some(org), "instance.update", Some(id.to_string()), &meta, result)
            .await?;
    Ok(axum::Json(view(&state, &user, inst)))
}

/// Reset an instance's credentials (owner, admin, member): new REST tokens (the old ones get
/// 401 within a second on every replica) and, for a local instance, a new server password,
/// applied live without dropping connections or data.
#[utoipa::path(post, path = "/api/organizations/{org_id}/redis-instances/{instance_id}/reset-credentials", tag = "redis-instances", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("instance_id" = InstanceId, Path)),
    responses((status = 200, body = Connect), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "the instance is not running", body = ErrorBody)))]
async fn reset_credentials(
    state: State,
    meta: RequestMeta,
    headers: http::HeaderMap,
    over_tls: Option<axum::Extension<crate::serve::OverTls>>,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id)): ApiPath<(OrgId, InstanceId)>,
) -> ApiResult<axum::Json<Connect>> {
    let result = async {
        authorize(&state, user.id, org, Action::ManageInstances).await?;
        let rec = record_of(&state, org, id).await?;
        state.instances.reset_credentials(&rec, user.id).await?;
        // The old tokens stop here at once; other replicas follow within their key cache's
        // freshness (under a second).
        state.keys.invalidate_all();
        Ok(rec)
    }
    .await;
    let rec = audit::outcome(
        &state,
        &user,
        Some(org),
        "instance.reset_credentials",
        Some(id.to_string()),
        &meta,
        result,
    )
    .await?;
    connect_of(&state, &headers, over_tls.is_some(), &rec, &user).await.map(axum::Json)
}

/// The instance's REST URL and tokens, with a `.env` block and curl, TypeScript and Python
/// snippets (owner, admin, member: whoever may use it read-write; not viewers).
#[utoipa::path(get, path = "/api/organizations/{org_id}/redis-instances/{instance_id}/connect", tag = "redis-instances", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("instance_id" = InstanceId, Path)),
    responses((status = 200, body = Connect), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn connect(
    state: State,
    headers: http::HeaderMap,
    over_tls: Option<axum::Extension<crate::serve::OverTls>>,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id)): ApiPath<(OrgId, InstanceId)>,
) -> ApiResult<axum::Json<Connect>> {
    authorize(&state, user.id, org, Action::ViewCredentials).await?;
    let rec = record_of(&state, org, id).await?;
    connect_of(&state, &headers, over_tls.is_some(), &rec, &user).await.map(axum::Json)
}

async fn connect_of(
    state: &ApiState,
    headers: &http::HeaderMap,
    over_tls: bool,
    rec: &InstanceRecord,
    user: &User,
) -> ApiResult<Connect> {
    let base = match &state.public_url {
        Some(url) => url.as_str().trim_end_matches('/').to_owned(),
        None => {
            let host = headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
            format!("{}://{host}", if over_tls { "https" } else { "http" })
        }
    };
    let tokens = state.instances.tokens(rec, user.id).await?;
    Ok(Connect::new(format!("{base}/redis/{}", rec.instance.id), tokens))
}

/// Delete an instance (owner, admin, member): a local instance's process stops and its data
/// is removed; an external server is left alone.
#[utoipa::path(delete, path = "/api/organizations/{org_id}/redis-instances/{instance_id}", tag = "redis-instances", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("instance_id" = InstanceId, Path)), responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id)): ApiPath<(OrgId, InstanceId)>,
) -> ApiResult<StatusCode> {
    let result = async {
        authorize(&state, user.id, org, Action::ManageInstances).await?;
        let rec = record_of(&state, org, id).await?;
        Ok(state.instances.remove(&rec).await?)
    }
    .await;
    audit::outcome(&state, &user, Some(org), "instance.delete", Some(id.to_string()), &meta, result).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, update, delete))
        .routes(routes!(stats))
        .routes(routes!(connect))
        .routes(routes!(reset_credentials))
}
