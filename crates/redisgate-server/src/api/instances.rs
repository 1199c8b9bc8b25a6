//! Redis instances of an organization: create (local process or external server), list,
//! get (with status), live stats, delete.

use std::sync::Arc;

use http::StatusCode;
use redisgate_core::account::User;
use redisgate_core::ids::{InstanceId, OrgId};
use redisgate_core::instance::{BackendKind, Instance, ProvisionerKind};
use redisgate_core::org::Action;
use redisgate_core::store::{InstanceRecord, NewInstance, StoreError};
use redisgate_core::topology::{ClusterSpec, SentinelSpec, Topology};
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
    /// Stored sealed; never shown again. `rediss://` servers are verified against the
    /// platform's roots, or `tls_ca_pem`; `#insecure` (no verification) is refused unless the
    /// deployment allows it (`instances.external.allow_insecure_tls`).
    pub url: Option<String>,
    /// External instances: `standalone` (default: one server at `url`), `sentinel` (give
    /// `sentinel`) or `cluster` (give `cluster`). See docs/BACKENDS.md.
    pub kind: Option<BackendKind>,
    /// A `sentinel` instance's sentinels, master name and credentials; stored sealed, never
    /// shown again.
    pub sentinel: Option<SentinelSpec>,
    /// A `cluster` instance's seed nodes and credentials; stored sealed, never shown again.
    pub cluster: Option<ClusterSpec>,
    /// External `rediss://` instances: the CA certificate(s), PEM, that the server's
    /// certificate is verified against instead of the platform's roots (at most 64 KiB).
    pub tls_ca_pem: Option<String>,
}

/// Largest `tls_ca_pem` accepted: a few CA certificates.
const MAX_CA_PEM_BYTES: usize = 64 * 1024;

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
    /// Sentinel and Cluster instances: each server known now, its role and whether the
    /// gateway is connected to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<crate::gateway::ha::NodeStatus>>,
}

fn view(state: &ApiState, user: &User, instance: Instance) -> InstanceView {
    let health = state.instances.health(instance.id);
    let status_detail = if user.is_admin { state.instances.status_detail(instance.id) } else { None };
    let nodes = state.instances.nodes(instance.id);
    InstanceView { instance, health, status_detail, nodes }
}

use crate::instances::NOT_ALLOWED;

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
        let kind = req.kind.unwrap_or_default();
        let topology = match (kind, req.sentinel, req.cluster) {
            (BackendKind::Standalone, None, None) => None,
            (BackendKind::Sentinel, Some(s), None) => Some(Topology::Sentinel(s)),
            (BackendKind::Cluster, None, Some(c)) => Some(Topology::Cluster(c)),
            (BackendKind::Sentinel, ..) => {
                return Err(ApiError::validation("sentinel", "sentinel instances take `sentinel` only"));
            }
            (BackendKind::Cluster, ..) => {
                return Err(ApiError::validation("cluster", "cluster instances take `cluster` only"));
            }
            (BackendKind::Standalone, ..) => {
                return Err(ApiError::validation("kind", "`sentinel` and `cluster` need their kind"));
            }
        };
        let (memory_bytes, sealed_url) = match (provisioner, topology) {
            (ProvisionerKind::Local, Some(_)) => {
                return Err(ApiError::validation("kind", "only external instances are sentinel or cluster"));
            }
            (ProvisionerKind::External, Some(topology)) => {
                if req.url.is_some() {
                    return Err(ApiError::validation("url", "sentinel and cluster instances take no url"));
                }
                if let Err(invalid) = state.instances.check_topology(&topology).await {
                    return Err(ApiError::validation(invalid.field, invalid.reason));
                }
                (0, Some(state.instances.sealer.seal(&serde_json::to_vec(&topology).map_err(|_| ApiError::Internal)?)))
            }
            (ProvisionerKind::Local, None) => {
                if req.url.is_some() {
                    return Err(ApiError::validation("url", "only external instances take a url"));
                }
                if req.tls_ca_pem.is_some() {
                    return Err(ApiError::validation("tls_ca_pem", "only external instances take a CA"));
                }
                let mb = req.memory_mb.unwrap_or(DEFAULT_MEMORY_MB);
                if !(1..=1024 * 1024).contains(&mb) {
                    return Err(ApiError::validation("memory_mb", "must be between 1 and 1048576"));
                }
                (mb * 1024 * 1024, None)
            }
            (ProvisionerKind::External, None) => {
                let url = req
                    .url
                    .as_deref()
                    .ok_or_else(|| ApiError::validation("url", "external instances need a url"))?;
                if !(url.starts_with("redis://") || url.starts_with("rediss://"))
                    || redis::Client::open(url).is_err()
                {
                    return Err(ApiError::validation("url", "must be a redis:// or rediss:// URL"));
                }
                if let Err(why) = state.instances.check_tls(url) {
                    return Err(ApiError::validation("url", why));
                }
                if let Some(ca) = &req.tls_ca_pem {
                    if !url.starts_with("rediss://") || crate::egress::asks_insecure_tls(url) {
                        return Err(ApiError::validation(
                            "tls_ca_pem",
                            "only for a rediss:// URL that verifies the server (no #insecure)",
                        ));
                    }
                    if ca.len() > MAX_CA_PEM_BYTES {
                        return Err(ApiError::validation("tls_ca_pem", "must be at most 64 KiB"));
                    }
                    if let Err(why) = crate::egress::tls_roots(ca) {
                        return Err(ApiError::validation("tls_ca_pem", why));
                    }
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
            kind,
            memory_bytes,
            sealed_url,
            tls_ca_pem: req.tls_ca_pem.clone(),
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
