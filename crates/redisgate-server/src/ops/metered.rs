//! A [`Store`] that times and counts every operation (`database_queries_total{type}`,
//! `database_query_errors_total{type}`, `database_query_duration_seconds{type}`), where
//! `type` is the operation's name: a closed set, whatever the arguments. Each operation run
//! for a request also gets a `store` span (see [`super::telemetry`]).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use redisgate_core::account::{Email, User};
use redisgate_core::apikey::ApiKey;
use redisgate_core::audit::{AuditEntry, AuditQuery, NewAuditEntry};
use redisgate_core::backup::{Backup, BackupCaps, BackupSchedule, BackupState, NewBackup};
use redisgate_core::ids::{ApiKeyId, BackupId, InstanceId, InvitationId, OrgId, UserId};
use redisgate_core::instance::{Instance, InstanceStatus};
use redisgate_core::org::{Invitation, Member, Organization, Role};
use redisgate_core::quota::{Plan, Quota};
use redisgate_core::ratelimit::Rate;
use redisgate_core::store::{
    Admission, Change, Counts, Credentials, InstanceChange, InstanceRecord, InstanceToken, Invitee,
    NewApiKey, NewInstance, NewInstanceToken, NewInvitation, SecretHash, Store, StoreError, StoreResult,
};
use redisgate_core::usage::{Resolution, UsageRow};
use time::OffsetDateTime;
use tracing::Instrument as _;

use super::metrics::{DB_DURATION, DB_ERRORS, DB_QUERIES};

pub struct MeteredStore {
    inner: Arc<dyn Store>,
}

impl MeteredStore {
    pub fn wrap(inner: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(MeteredStore { inner })
    }
}

/// Only a failing database is an error; "not found", "already exists" and "over quota" are
/// answers. The error series is touched on success too, so it exists (at 0) for every type.
fn record<T>(op: &'static str, started: Instant, result: &StoreResult<T>) {
    metrics::counter!(DB_QUERIES, "type" => op).increment(1);
    let failed = matches!(result, Err(StoreError::Unavailable(_)));
    metrics::counter!(DB_ERRORS, "type" => op).increment(u64::from(failed));
    metrics::histogram!(DB_DURATION, "type" => op).record(started.elapsed().as_secs_f64());
}

/// The span of one store operation: its name only, never its arguments. Requests' queries
/// only: see [`super::telemetry`], whose filter knows the span by its name.
fn store_span(op: &'static str) -> tracing::Span {
    tracing::debug_span!(
        super::telemetry::STORE_SPAN,
        otel.name = op,
        otel.kind = "client",
        db.operation.name = op,
        otel.status_code = tracing::field::Empty,
    )
}

/// Implements every `Store` method as "time the inner call, record it, return it".
macro_rules! metered {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        #[async_trait]
        impl Store for MeteredStore {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> StoreResult<$ret> {
                    let span = store_span(stringify!($name));
                    let started = Instant::now();
                    let result = self.inner.$name($($arg),*).instrument(span.clone()).await;
                    record(stringify!($name), started, &result);
                    if matches!(result, Err(StoreError::Unavailable(_))) {
                        span.record("otel.status_code", "ERROR");
                    }
                    result
                }
            )*
        }
    };
}

metered! {
    fn ping(&self) -> ();
    fn create_user(&self, email: &Email, password_hash: &str, admission: Admission) -> User;
    fn user(&self, id: UserId) -> User;
    fn credentials(&self, email: &Email) -> Option<Credentials>;
    fn create_session(&self, token_hash: &SecretHash, user: UserId, expires_at: OffsetDateTime) -> ();
    fn session_user(&self, token_hash: &SecretHash, now: OffsetDateTime) -> Option<User>;
    fn revoke_session(&self, token_hash: &SecretHash) -> ();
    fn create_org(&self, name: &str, plan: Plan, owner: UserId, max_owned: u32) -> Organization;
    fn org(&self, id: OrgId) -> Organization;
    fn orgs_of(&self, user: UserId) -> Vec<(Organization, Role)>;
    fn rename_org(&self, id: OrgId, name: &str) -> Organization;
    fn delete_org(&self, id: OrgId) -> ();
    fn set_quota(&self, id: OrgId, quota: Quota) -> Organization;
    fn role_of(&self, org: OrgId, user: UserId) -> Option<Role>;
    fn members(&self, org: OrgId) -> Vec<Member>;
    fn add_member(&self, org: OrgId, user: UserId, role: Role) -> Member;
    fn set_role(&self, org: OrgId, user: UserId, role: Role) -> Member;
    fn remove_member(&self, org: OrgId, user: UserId) -> ();
    fn create_invitation(&self, new: NewInvitation) -> Invitation;
    fn invitations(&self, org: OrgId, now: OffsetDateTime) -> Vec<Invitation>;
    fn revoke_invitation(&self, org: OrgId, id: InvitationId, at: OffsetDateTime) -> Invitation;
    fn invitation_by_hash(&self, token_hash: &SecretHash) -> Option<Invitation>;
    fn accept_invitation(&self, token_hash: &SecretHash, invitee: Invitee<'_>, now: OffsetDateTime) -> (User, Member);
    fn create_instance(&self, new: NewInstance) -> InstanceRecord;
    fn instance(&self, id: InstanceId) -> InstanceRecord;
    fn instances_page(&self, org: OrgId, after: Option<InstanceId>, limit: u32) -> Vec<Instance>;
    fn all_instances(&self) -> Vec<InstanceRecord>;
    fn set_instance_status(&self, id: InstanceId, status: InstanceStatus, reason: Option<&str>) -> ();
    fn delete_instance(&self, id: InstanceId) -> ();
    fn update_instance(&self, id: InstanceId, change: InstanceChange) -> InstanceRecord;
    fn replace_instance_tokens(&self, instance: InstanceId, tokens: Vec<NewInstanceToken>) -> Vec<InstanceToken>;
    fn instance_tokens(&self, instance: InstanceId) -> Vec<InstanceToken>;
    fn create_api_key(&self, new: NewApiKey) -> ApiKey;
    fn api_key(&self, id: ApiKeyId) -> ApiKey;
    fn api_key_by_hash(&self, hash: &SecretHash) -> Option<ApiKey>;
    fn api_keys_page(&self, org: OrgId, after: Option<ApiKeyId>, limit: u32) -> Vec<ApiKey>;
    fn revoke_api_key(&self, id: ApiKeyId, at: OffsetDateTime) -> ApiKey;
    fn set_api_key_rate_limit(&self, id: ApiKeyId, rate: Option<Rate>) -> ApiKey;
    fn touch_api_keys(&self, used: &[(ApiKeyId, OffsetDateTime)]) -> ();
    fn append_audit(&self, entry: NewAuditEntry) -> ();
    fn audit_logs(&self, org: OrgId, query: &AuditQuery) -> Vec<AuditEntry>;
    fn deployment_audit_logs(&self, query: &AuditQuery) -> Vec<AuditEntry>;
    fn prune_audit(&self, before: OffsetDateTime, limit: u32) -> u64;
    fn plan_rates(&self) -> Vec<(Plan, Rate)>;
    fn set_plan_rate(&self, plan: Plan, rate: Option<Rate>) -> ();
    fn counts(&self) -> Counts;
    fn append_usage(&self, rows: &[UsageRow]) -> ();
    fn usage(&self, instance: InstanceId, since: OffsetDateTime, finest_to: Resolution) -> Vec<UsageRow>;
    fn roll_up_usage(&self, from: Resolution, to: Resolution, before: OffsetDateTime, limit: u32) -> u64;
    fn prune_usage(&self, resolution: Resolution, before: OffsetDateTime, limit: u32) -> u64;
    fn create_backup(&self, new: NewBackup, caps: BackupCaps) -> Backup;
    fn finish_backup(&self, id: BackupId, state: BackupState, size_bytes: u64, error: Option<&str>) -> Backup;
    fn backup(&self, id: BackupId) -> Backup;
    fn backups(&self, instance: InstanceId) -> Vec<Backup>;
    fn delete_backup(&self, id: BackupId) -> ();
    fn set_backup_schedule(&self, instance: InstanceId, schedule: Option<(u32, OffsetDateTime)>) -> Option<BackupSchedule>;
    fn backup_schedule(&self, instance: InstanceId) -> Option<BackupSchedule>;
    fn claim_due_backup(&self, now: OffsetDateTime, next: OffsetDateTime, among: &[InstanceId]) -> Option<BackupSchedule>;
    fn changes_after(&self, after: i64, limit: u32) -> Option<Vec<Change>>;
    fn last_change(&self) -> i64;
    fn prune_changes(&self, before: OffsetDateTime) -> u64;
}
