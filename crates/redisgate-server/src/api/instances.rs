//! Redis instances of an organization: create (local process or external server), list,
//! get (with status), live stats, delete.

use std::sync::Arc;

use http::StatusCode;
use redisgate_core::account::User;
use redisgate_core::ids::{InstanceId, OrgId};
use redisgate_core::instance::{Instance, ProvisionerKind};
use redisgate_core::org::Action;
use redisgate_core::store::{InstanceRecord, NewInstance, StoreError};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit;
use super::auth::CurrentUser;
use super::error::ErrorBody;
use super::{ApiError, ApiJson, ApiPath, ApiResult, ApiState, RequestMeta, State, authorize};
use crate::instances::Stats;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRedisInstance {
    /// 1–100 characters.
    pub name: String,
    /// `local` (default): a redis-server process run by RedisGate. `external`: your own server.
    pub provisioner: Option<ProvisionerKind>,
    /// `maxmemory` of a local instance, in MiB (default 64); counts against the quota.
    pub memory_mb: Option<u64>,
    /// External instances: `redis://[user:password@]host:port[/db]` or `rediss://…`.
    /// Stored sealed; never shown again.
    pub url: Option<String>,
}

const DEFAULT_MEMORY_MB: u64 = 64;

/// An instance with its live health, from the gateway's background health checks.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct InstanceView {
    #[serde(flatten)]
    pub instance: Instance,
    /// `healthy` (its Redis answers), `unhealthy` (it does not), `not_running`.
    pub health: &'static str,
    /// Why an external server could not be used (refused, timed out, authentication, egress
    /// policy): shown to deployment administrators only. Its owner's `status_reason` gives
    /// one reason for all of these, so the gateway cannot be used to scan the network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_detail: Option<String>,
}

fn view(state: &ApiState, user: &User, instance: Instance) -> InstanceView {
    let health = state.instances.health(instance.id);
    let status_detail = if user.is_admin { state.instances.status_detail(instance.id) } else { None };
    InstanceView { instance, health, status_detail }
}

/// The one answer to a URL the egress policy refuses, whichever rule refused it and whether
/// or not its host resolves.
const NOT_ALLOWED: &str = "is not a server RedisGate may connect to";

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
        let name = req.name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(ApiError::validation("name", "must be 1 to 100 characters"));
        }
        let provisioner = req.provisioner.unwrap_or(ProvisionerKind::Local);
        let (memory_bytes, sealed_url) = match provisioner {
            ProvisionerKind::Local => {
                if req.url.is_some() {
                    return Err(ApiError::validation("url", "only external instances take a url"));
                }
                let mb = req.memory_mb.unwrap_or(DEFAULT_MEMORY_MB);
                if !(1..=1024 * 1024).contains(&mb) {
                    return Err(ApiError::validation("memory_mb", "must be between 1 and 1048576"));
                }
                (mb * 1024 * 1024, None)
            }
            ProvisionerKind::External => {
                let url = req
                    .url
                    .as_deref()
                    .ok_or_else(|| ApiError::validation("url", "external instances need a url"))?;
                if !(url.starts_with("redis://") || url.starts_with("rediss://"))
                    || redis::Client::open(url).is_err()
                {
                    return Err(ApiError::validation("url", "must be a redis:// or rediss:// URL"));
                }
                if let Err(why) = state.instances.egress.check_url(url).await {
                    tracing::info!(org.id = %org, reason = %why, "external instance URL refused by the egress policy");
                    return Err(ApiError::validation("url", NOT_ALLOWED));
                }
                // An external server's memory is not ours to limit or count.
                (0, Some(state.instances.sealer.seal(url.as_bytes())))
            }
        };
        let new = NewInstance {
            id: InstanceId::new(),
            org_id: org,
            name: name.to_owned(),
            provisioner,
            memory_bytes,
            sealed_url,
        };
        // Host-wide caps on local instances, decided one create at a time.
        let admitted = match provisioner {
            ProvisionerKind::Local => Some(state.instances.admit_local(memory_bytes).await?),
            ProvisionerKind::External => None,
        };
        let rec = state.store.create_instance(new).await?;
        drop(admitted);
        state.instances.start(&rec).await;
        Ok(state.store.instance(rec.instance.id).await?.instance)
    }
    .await;
    let target = result.as_ref().ok().map(|i| i.id.to_string());
    let inst = audit::outcome(&state, &user, Some(org), "instance.create", target, &meta, result).await?;
    Ok((StatusCode::CREATED, axum::Json(view(&state, &user, inst))))
}

/// The organization's instances.
#[utoipa::path(get, path = "/api/organizations/{org_id}/redis-instances", tag = "redis-instances", security(("session" = [])),
    params(("org_id" = OrgId, Path)), responses((status = 200, body = Vec<InstanceView>), (status = 404, body = ErrorBody)))]
async fn list(
    state: State,
    CurrentUser(user): CurrentUser,
    ApiPath(org): ApiPath<OrgId>,
) -> ApiResult<axum::Json<Vec<InstanceView>>> {
    authorize(&state, user.id, org, Action::ViewInstances).await?;
    Ok(axum::Json(state.store.instances(org).await?.into_iter().map(|i| view(&state, &user, i)).collect()))
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
        if let Err(reason) = state.instances.delete(&rec).await {
            tracing::error!(instance.id = %id, %reason, "could not destroy an instance's server");
            return Err(ApiError::Internal);
        }
        Ok(state.store.delete_instance(id).await?)
    }
    .await;
    audit::outcome(&state, &user, Some(org), "instance.delete", Some(id.to_string()), &meta, result).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new().routes(routes!(create, list)).routes(routes!(get, delete)).routes(routes!(stats))
}
