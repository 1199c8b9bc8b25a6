//! Backups of an instance: create (now), list, get, delete, download (the RDB), restore into
//! the same instance or another of the organization; the daily schedule; and creating an
//! instance from an uploaded RDB. The work is in [`crate::backups`].

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Query;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt as _;
use http::{StatusCode, header};
use redisgate_core::backup::{Backup, BackupKind, BackupSchedule, RETENTION_DAYS};
use redisgate_core::ids::{BackupId, InstanceId, OrgId};
use redisgate_core::instance::Instance;
use redisgate_core::org::Action;
use redisgate_core::store::StoreError;

use crate::instances::NewRedisInstance;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::audit;
use super::auth::CurrentUser;
use super::error::ErrorBody;
use super::instances::record_of;
use super::{ApiError, ApiJson, ApiPath, ApiResult, ApiState, RequestMeta, State, authorize};
use crate::backups::BackupError;

impl From<BackupError> for ApiError {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::Store(e) => e.into(),
            BackupError::NotRunning => ApiError::NotRunning,
            BackupError::NotReady => {
                ApiError::Conflict { code: "backup_not_ready", message: "the backup is not ready".into() }
            }
            BackupError::BadRdb => {
                ApiError::validation("body", "is not an RDB file redis-check-rdb can read")
            }
            BackupError::Failed(reason) => ApiError::Conflict { code: "restore_failed", message: reason },
            BackupError::Internal(detail) => {
                tracing::error!(error = %detail, "backup storage or helper failed");
                ApiError::Internal
            }
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBackupRequest {
    /// 1–100 characters.
    pub name: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// Must be `true`: the target's data is replaced (FLUSHALL, then every key of the backup).
    pub confirm: Option<bool>,
    /// Another instance of the same organization to restore into; default: the backup's own.
    pub target_instance_id: Option<InstanceId>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Restored {
    pub instance_id: InstanceId,
    /// Keys written into the target.
    pub keys: u64,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// How many daily backups are kept: 1–30 (one a day, so that many days).
    pub retention_days: u32,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ScheduleView {
    /// The daily schedule, or `null` when the instance has none.
    pub daily: Option<BackupSchedule>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ImportParams {
    /// The new instance's name, 1–100 characters.
    pub name: String,
    /// Its `maxmemory` in MiB (default 64); the RDB's data must fit.
    pub memory_mb: Option<u64>,
}

fn valid_name(name: &str) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::validation("name", "must be 1 to 100 characters"));
    }
    Ok(name.to_owned())
}

/// The backup, if it is one of this instance of this organization.
async fn backup_of(state: &ApiState, org: OrgId, instance: InstanceId, id: BackupId) -> ApiResult<Backup> {
    match state.store.backup(id).await {
        Ok(b) if b.org_id == org && b.instance_id == instance => Ok(b),
        Ok(_) | Err(StoreError::NotFound) => Err(ApiError::NotFound("backup")),
        Err(e) => Err(e.into()),
    }
}

/// Take a backup now (owner, admin, member). It is `pending` in the answer; its state turns
/// `ready` (or `failed`, with a reason) when it is taken.
#[utoipa::path(post, path = "/api/organizations/{org_id}/redis-instances/{instance_id}/backups", tag = "backups", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("instance_id" = InstanceId, Path)), request_body = NewBackupRequest,
    responses((status = 202, body = Backup), (status = 403, description = "role or backup quota", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the instance is not running", body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id)): ApiPath<(OrgId, InstanceId)>,
    ApiJson(req): ApiJson<NewBackupRequest>,
) -> ApiResult<(StatusCode, axum::Json<Backup>)> {
    let result = async {
        authorize(&state, user.id, org, Action::ManageInstances).await?;
        let name = valid_name(&req.name)?;
        let rec = record_of(&state, org, id).await?;
        Ok(state.backups.create(&rec, name, BackupKind::Manual).await?)
    }
    .await;
    let target = result.as_ref().ok().map(|b| b.id.to_string());
    let backup = audit::outcome(&state, &user, Some(org), "backup.create", target, &meta, result).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(backup)))
}

/// The instance's backups, newest first.
#[utoipa::path(get, path = "/api/organizations/{org_id}/redis-instances/{instance_id}/backups", tag = "backups", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("instance_id" = InstanceId, Path)),
    responses((status = 200, body = Vec<Backup>), (status = 404, body = ErrorBody)))]
async fn list(
    state: State,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id)): ApiPath<(OrgId, InstanceId)>,
) -> ApiResult<axum::Json<Vec<Backup>>> {
    authorize(&state, user.id, org, Action::ViewInstances).await?;
    record_of(&state, org, id).await?;
    Ok(axum::Json(state.store.backups(id).await?))
}

/// One backup with its state.
#[utoipa::path(get, path = "/api/organizations/{org_id}/redis-instances/{instance_id}/backups/{backup_id}", tag = "backups", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("instance_id" = InstanceId, Path), ("backup_id" = BackupId, Path)),
    responses((status = 200, body = Backup), (status = 404, body = ErrorBody)))]
async fn get(
    state: State,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id, backup)): ApiPath<(OrgId, InstanceId, BackupId)>,
) -> ApiResult<axum::Json<Backup>> {
    authorize(&state, user.id, org, Action::ViewInstances).await?;
    Ok(axum::Json(backup_of(&state, org, id, backup).await?))
}

/// Delete a backup (owner, admin, member); one still being taken cannot be (409).
#[utoipa::path(delete, path = "/api/organizations/{org_id}/redis-instances/{instance_id}/backups/{backup_id}", tag = "backups", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("instance_id" = InstanceId, Path), ("backup_id" = BackupId, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id, backup)): ApiPath<(OrgId, InstanceId, BackupId)>,
) -> ApiResult<StatusCode> {
    let result = async {
        authorize(&state, user.id, org, Action::ManageInstances).await?;
        let backup = backup_of(&state, org, id, backup).await?;
        Ok(state.backups.delete(&backup).await?)
    }
    .await;
    audit::outcome(&state, &user, Some(org), "backup.delete", Some(backup.to_string()), &meta, result)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Download a ready backup as an RDB file (owner, admin, member: it holds the data).
#[utoipa::path(get, path = "/api/organizations/{org_id}/redis-instances/{instance_id}/backups/{backup_id}/download", tag = "backups", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("instance_id" = InstanceId, Path), ("backup_id" = BackupId, Path)),
    responses((status = 200, description = "the RDB file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "not ready", body = ErrorBody)))]
async fn download(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id, backup)): ApiPath<(OrgId, InstanceId, BackupId)>,
) -> ApiResult<Response> {
    let result = async {
        authorize(&state, user.id, org, Action::ManageInstances).await?;
        let backup = backup_of(&state, org, id, backup).await?;
        Ok(state.backups.download(&backup).await?)
    }
    .await;
    let (size, bytes) =
        audit::outcome(&state, &user, Some(org), "backup.download", Some(backup.to_string()), &meta, result)
            .await?;
    let body = Body::from_stream(bytes.map(|chunk| chunk.map_err(std::io::Error::other)));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, size.to_string()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{backup}.rdb\"")),
        ],
        body,
    )
        .into_response())
}

/// Restore a ready backup (owner, admin, member) into its own instance or, with
/// `target_instance_id`, another instance of the same organization: the target's data is
/// replaced by the backup's, every key with its type, value and remaining TTL. Needs
/// `"confirm": true`. The answer comes when the restore is done.
#[utoipa::path(post, path = "/api/organizations/{org_id}/redis-instances/{instance_id}/backups/{backup_id}/restore", tag = "backups", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("instance_id" = InstanceId, Path), ("backup_id" = BackupId, Path)), request_body = RestoreRequest,
    responses((status = 200, body = Restored), (status = 403, body = ErrorBody), (status = 404, description = "no such backup or target in this organization", body = ErrorBody),
        (status = 409, description = "not ready, target not running, or the data did not fit", body = ErrorBody), (status = 422, description = "no confirmation", body = ErrorBody)))]
async fn restore(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id, backup)): ApiPath<(OrgId, InstanceId, BackupId)>,
    ApiJson(req): ApiJson<RestoreRequest>,
) -> ApiResult<axum::Json<Restored>> {
    let result = async {
        authorize(&state, user.id, org, Action::ManageInstances).await?;
        let backup = backup_of(&state, org, id, backup).await?;
        // Only an instance of this organization: another's is "not found", like any id.
        let target = record_of(&state, org, req.target_instance_id.unwrap_or(id)).await?;
        if req.confirm != Some(true) {
            return Err(ApiError::validation("confirm", "must be true: the target's data is replaced"));
        }
        let keys = state.backups.restore(&backup, &target).await?;
        Ok(Restored { instance_id: target.instance.id, keys })
    }
    .await;
    let target = result.as_ref().ok().map(|r| format!("{backup} -> {}", r.instance_id));
    Ok(axum::Json(audit::outcome(&state, &user, Some(org), "backup.restore", target, &meta, result).await?))
}

/// The instance's daily backup schedule.
#[utoipa::path(get, path = "/api/organizations/{org_id}/redis-instances/{instance_id}/backup-schedule", tag = "backups", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("instance_id" = InstanceId, Path)),
    responses((status = 200, body = ScheduleView), (status = 404, body = ErrorBody)))]
async fn get_schedule(
    state: State,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id)): ApiPath<(OrgId, InstanceId)>,
) -> ApiResult<axum::Json<ScheduleView>> {
    authorize(&state, user.id, org, Action::ViewInstances).await?;
    record_of(&state, org, id).await?;
    Ok(axum::Json(ScheduleView { daily: state.store.backup_schedule(id).await? }))
}

/// Turn daily backups on, or change their retention (owner, admin, member). The first is
/// taken at the scheduler's next look, then one a day.
#[utoipa::path(put, path = "/api/organizations/{org_id}/redis-instances/{instance_id}/backup-schedule", tag = "backups", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("instance_id" = InstanceId, Path)), request_body = ScheduleRequest,
    responses((status = 200, body = ScheduleView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn put_schedule(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id)): ApiPath<(OrgId, InstanceId)>,
    ApiJson(req): ApiJson<ScheduleRequest>,
) -> ApiResult<axum::Json<ScheduleView>> {
    let result = async {
        authorize(&state, user.id, org, Action::ManageInstances).await?;
        record_of(&state, org, id).await?;
        if !RETENTION_DAYS.contains(&req.retention_days) {
            return Err(ApiError::validation("retention_days", "must be between 1 and 30"));
        }
        // A changed retention keeps the time of day of the next run; a new schedule runs now.
        let next = match state.store.backup_schedule(id).await? {
            Some(s) => s.next_run_at,
            None => state.backups.settings().clock.now(),
        };
        Ok(ScheduleView {
            daily: state.store.set_backup_schedule(id, Some((req.retention_days, next))).await?,
        })
    }
    .await;
    Ok(axum::Json(
        audit::outcome(&state, &user, Some(org), "backup.schedule", Some(id.to_string()), &meta, result)
            .await?,
    ))
}

/// Turn daily backups off (owner, admin, member); the daily backups taken so far stay.
#[utoipa::path(delete, path = "/api/organizations/{org_id}/redis-instances/{instance_id}/backup-schedule", tag = "backups", security(("session" = [])),
    params(("org_id" = OrgId, Path), ("instance_id" = InstanceId, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_schedule(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath((org, id)): ApiPath<(OrgId, InstanceId)>,
) -> ApiResult<StatusCode> {
    let result = async {
        authorize(&state, user.id, org, Action::ManageInstances).await?;
        record_of(&state, org, id).await?;
        state.store.set_backup_schedule(id, None).await?;
        Ok(())
    }
    .await;
    audit::outcome(&state, &user, Some(org), "backup.unschedule", Some(id.to_string()), &meta, result)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create a local instance from an uploaded RDB file (the request body, at most
/// `backups.max_upload_mb`), checked with `redis-check-rdb` first: a file it cannot read is
/// refused with 422 and no instance is made.
#[utoipa::path(post, path = "/api/organizations/{org_id}/redis-instances/import", tag = "backups", security(("session" = [])),
    params(("org_id" = OrgId, Path), ImportParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "an RDB file"),
    responses((status = 201, body = Instance), (status = 403, description = "role, quota or host capacity", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the data did not fit the instance", body = ErrorBody), (status = 422, description = "not an RDB file, too large, or bad parameters", body = ErrorBody)))]
async fn import(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    ApiPath(org): ApiPath<OrgId>,
    params: Result<Query<ImportParams>, axum::extract::rejection::QueryRejection>,
    body: Body,
) -> ApiResult<(StatusCode, axum::Json<Instance>)> {
    let result = async {
        authorize(&state, user.id, org, Action::ManageInstances).await?;
        let Query(params) = params?;
        let name = valid_name(&params.name)?;
        let mb = params.memory_mb.unwrap_or(64);
        if !(1..=1024 * 1024).contains(&mb) {
            return Err(ApiError::validation("memory_mb", "must be between 1 and 1048576"));
        }
        let _turn = state.backups.turn().await?;
        let dir = state.backups.work_dir()?;
        let file = dir.path().join("upload.rdb");
        receive(body, &file, state.backups.settings().max_upload_mb).await?;
        state.backups.check_rdb(&file).await?;
        let rec = state.instances.create(org, user.id, NewRedisInstance::local(name, mb)).await?;
        if let Err(e) = state.backups.restore_file(&file, &rec).await {
            // No half-made instance stays behind.
            let _ = state.instances.remove(&rec).await;
            return Err(e.into());
        }
        Ok(state.store.instance(rec.instance.id).await?.instance)
    }
    .await;
    let target = result.as_ref().ok().map(|i| i.id.to_string());
    let inst = audit::outcome(&state, &user, Some(org), "instance.import", target, &meta, result).await?;
    Ok((StatusCode::CREATED, axum::Json(inst)))
}

/// Writes the request body to `file`, refusing one over `max_mb` MiB.
async fn receive(body: Body, file: &std::path::Path, max_mb: u64) -> ApiResult<()> {
    let max = max_mb.saturating_mul(1024 * 1024);
    let mut out = crate::backups::storage::private_file(file).await.map_err(|e| {
        tracing::error!(error = %e, "could not write an upload");
        ApiError::Internal
    })?;
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::validation("body", "could not be read"))?;
        size += chunk.len() as u64;
        if size > max {
            return Err(ApiError::validation(
                "body",
                format!("is larger than {max_mb} MiB (backups.max_upload_mb)"),
            ));
        }
        out.write_all(&chunk).await.map_err(|e| {
            tracing::error!(error = %e, "could not write an upload");
            ApiError::Internal
        })?;
    }
    out.flush().await.map_err(|_| ApiError::Internal)
}

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, delete))
        .routes(routes!(download))
        .routes(routes!(restore))
        .routes(routes!(get_schedule, put_schedule, delete_schedule))
        .routes(routes!(import))
}
