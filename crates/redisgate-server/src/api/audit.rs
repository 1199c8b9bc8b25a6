//! The audit log: recorded for every management mutation and every login, listed per
//! organization with filters and pagination. Entries never hold a secret. Entries older
//! than `audit.retention` are deleted by [`retention`], a background task.

use std::sync::Arc;

use axum::extract::Query;
use redisgate_core::account::User;
use redisgate_core::audit::{AuditEntry, AuditQuery, NewAuditEntry, Outcome};
use redisgate_core::ids::{AuditId, OrgId, UserId};
use redisgate_core::org::Action;
use redisgate_core::store::{Store, StoreResult};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::CurrentUser;
use super::{ApiError, ApiPath, ApiResult, ApiState, RequestMeta, State, authorize};

/// An entry for an action by `user` (or by nobody known).
pub fn entry(
    org: Option<OrgId>,
    user: Option<&User>,
    action: &str,
    target: Option<String>,
    meta: &RequestMeta,
    outcome: Outcome,
    detail: Option<String>,
) -> NewAuditEntry {
    let actor = user.map_or("anonymous", |u| u.email.as_str());
    entry_for(org, user.map(|u| u.id), actor, action, target, meta, outcome, detail)
}

/// An entry with the actor given by name (e.g. the e-mail a failed login tried).
#[allow(clippy::too_many_arguments)]
pub fn entry_for(
    org: Option<OrgId>,
    actor_user_id: Option<UserId>,
    actor: &str,
    action: &str,
    target: Option<String>,
    meta: &RequestMeta,
    outcome: Outcome,
    detail: Option<String>,
) -> NewAuditEntry {
    NewAuditEntry {
        org_id: org,
        actor_user_id,
        actor: actor.to_owned(),
        action: action.to_owned(),
        target,
        ip: meta.ip.clone(),
        user_agent: meta.user_agent.clone(),
        outcome,
        detail,
    }
}

/// Writes an entry. A failure to write is logged loudly but does not undo the action.
pub async fn record(state: &ApiState, e: NewAuditEntry) {
    let action = e.action.clone();
    if let Err(err) = state.store.append_audit(e).await {
        tracing::error!(%action, error = %err, "could not write an audit log entry");
    }
}

/// Runs `result` and records it: success, or the error code as the detail. A caller who is
/// not a member of `org` gets a deployment-level entry (no organization) instead, so that
/// outsiders cannot write into an organization's log by probing its id.
pub async fn outcome<T>(
    state: &ApiState,
    user: &User,
    org: Option<OrgId>,
    action: &str,
    target: Option<String>,
    meta: &RequestMeta,
    result: ApiResult<T>,
) -> ApiResult<T> {
    let (org, outcome, detail) = match (&result, org) {
        (Ok(_), org) => (org, Outcome::Success, None),
        (Err(ApiError::NotMember), Some(probed)) => {
            (None, Outcome::Denied, Some(format!("not a member of organization {probed}")))
        }
        (Err(ApiError::Forbidden), org) => (org, Outcome::Denied, Some("forbidden".to_owned())),
        (Err(e), org) => (org, Outcome::Failure, Some(e.code().to_owned())),
    };
    record(state, entry(org, Some(user), action, target, meta, outcome, detail)).await;
    result
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditFilter {
    /// Only this action, e.g. `instance.create`.
    action: Option<String>,
    /// Only actions by this user id.
    actor_user_id: Option<UserId>,
    /// `success`, `failure` or `denied`.
    outcome: Option<String>,
    /// RFC 3339; entries at or after.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>)]
    since: Option<OffsetDateTime>,
    /// RFC 3339; entries before.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>)]
    until: Option<OffsetDateTime>,
    /// The `next` of the previous page.
    before: Option<AuditId>,
    /// 1–500, default 50.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    /// Pass as `before` to get the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<AuditId>,
}

/// The organization's audit log, newest first.
#[utoipa::path(get, path = "/api/organizations/{org_id}/audit-logs", tag = "audit", security(("session" = [])),
    params(("org_id" = OrgId, Path), AuditFilter),
    responses((status = 200, body = AuditPage), (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
async fn list(
    state: State,
    CurrentUser(user): CurrentUser,
    ApiPath(org): ApiPath<OrgId>,
    filter: Result<Query<AuditFilter>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<AuditPage>> {
    let Query(f) = filter?;
    authorize(&state, user.id, org, Action::ViewAudit).await?;
    let query = f.query()?;
    let items = state.store.audit_logs(org, &query).await?;
    Ok(axum::Json(AuditPage::of(items, query.limit)))
}

impl AuditFilter {
    fn query(self) -> ApiResult<AuditQuery> {
        let limit = super::paging::limit(self.limit.as_deref(), 50, 500)?;
        let outcome = match self.outcome.as_deref() {
            None => None,
            Some(o) => Some(
                Outcome::parse(o)
                    .ok_or_else(|| ApiError::validation("outcome", "must be success, failure or denied"))?,
            ),
        };
        Ok(AuditQuery {
            action: self.action,
            actor_user_id: self.actor_user_id,
            outcome,
            since: self.since,
            until: self.until,
            before: self.before,
            limit,
        })
    }
}

impl AuditPage {
    fn of(items: Vec<AuditEntry>, limit: u32) -> Self {
        let next = (items.len() == limit as usize).then(|| items.last().map(|e| e.id)).flatten();
        AuditPage { items, next }
    }
}

/// The deployment's own log (deployment administrators): entries of no organization —
/// logins, registrations, and attempts by non-members on an organization's routes.
#[utoipa::path(get, path = "/api/audit-logs", tag = "audit", security(("session" = [])),
    params(AuditFilter),
    responses((status = 200, body = AuditPage), (status = 403, body = super::error::ErrorBody)))]
async fn deployment(
    state: State,
    CurrentUser(user): CurrentUser,
    filter: Result<Query<AuditFilter>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<axum::Json<AuditPage>> {
    let Query(f) = filter?;
    if !user.is_admin {
        return Err(ApiError::Forbidden);
    }
    let query = f.query()?;
    let items = state.store.deployment_audit_logs(&query).await?;
    Ok(axum::Json(AuditPage::of(items, query.limit)))
}

/// Entries deleted per statement: small enough that no statement holds the table (SQLite's
/// single writer, PostgreSQL's row locks) for long, while a backlog still goes quickly.
const PRUNE_BATCH: u32 = 1000;

/// How often [`retention`] looks for entries past the retention.
const PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// Deletes the entries created before `before`, batch by batch, until none is left or
/// `cancel` fires; answers how many went.
pub async fn prune(
    store: &dyn Store,
    before: OffsetDateTime,
    cancel: &CancellationToken,
) -> StoreResult<u64> {
    let mut total = 0;
    while !cancel.is_cancelled() {
        let n = store.prune_audit(before, PRUNE_BATCH).await?;
        total += n;
        if n < u64::from(PRUNE_BATCH) {
            break;
        }
        // Let other writers in between batches.
        tokio::task::yield_now().await;
    }
    Ok(total)
}

/// `audit.retention`: prunes at start, then every [`PRUNE_INTERVAL`], until `cancel`.
pub async fn retention(store: Arc<dyn Store>, keep: std::time::Duration, cancel: CancellationToken) {
    let keep = time::Duration::try_from(keep).expect("audit.retention is validated");
    let mut every = tokio::time::interval(PRUNE_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = cancel.cancelled() => return,
        }
        match prune(store.as_ref(), OffsetDateTime::now_utc() - keep, &cancel).await {
            Ok(0) => {}
            Ok(n) => {
                metrics::counter!(crate::ops::metrics::AUDIT_PRUNED).increment(n);
                tracing::info!(audit.pruned = n, "deleted audit entries past audit.retention");
            }
            Err(e) => tracing::warn!(error = %e, "could not prune the audit log; retrying next hour"),
        }
    }
}

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(deployment))
}
