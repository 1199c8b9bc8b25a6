//! The metadata store: one trait, implemented for SQLite (the embedded default) and
//! PostgreSQL in `redisgate-store`, both held to one conformance suite.
//!
//! Rules every implementation keeps:
//! - quota checks and the insert they guard are one atomic step: concurrent creates never
//!   end above a quota;
//! - an organization always keeps at least one owner;
//! - a user never owns more organizations than the cap `create_org` is given, and an
//!   invitation is used at most once, even when the same requests race;
//! - secrets are never stored in the clear: sessions and API keys by SHA-256 only; an
//!   external instance's URL only sealed (encrypted) by the caller;
//! - every insert, update and delete of an instance or API key, and every update and delete
//!   of an organization, leaves a row in the change feed ([`Change`]), written by the
//!   database itself (triggers), so that no store method can forget one.

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::account::{Email, User};
use crate::apikey::{ApiKey, Scope, TokenKind};
use crate::audit::{AuditEntry, AuditQuery, NewAuditEntry};
use crate::backup::{Backup, BackupCaps, BackupSchedule, BackupState, NewBackup};
use crate::ids::{ApiKeyId, BackupId, InstanceId, InvitationId, OrgId, UserId};
use crate::instance::{BackendKind, EvictionPolicy, Instance, InstanceStatus, ProvisionerKind};
use crate::org::{Invitation, InvitationError, Member, Organization, Role};
use crate::quota::{Limit, Plan, Quota};
use crate::ratelimit::Rate;
use crate::usage::{Resolution, UsageRow};

/// A SHA-256 digest of a secret (session token, API key).
pub type SecretHash = [u8; 32];

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A uniqueness rule: the text names what already exists ("email", "member").
    #[error("{0} already exists")]
    Conflict(&'static str),
    #[error("quota exceeded: {}", .0.as_str())]
    QuotaExceeded(Limit),
    #[error("an organization must keep at least one owner")]
    LastOwner,
    /// `Admission::FirstUserOnly` and the deployment already has users.
    #[error("registration is closed")]
    RegistrationClosed,
    /// The invitation exists but cannot be used (or not by this account).
    #[error("{0}")]
    Invitation(InvitationError),
    /// The database cannot be reached or failed; details are for logs only.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
}

/// A user with the password hash, for logging in only.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

/// Who `create_user` lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Anyone (open registration).
    Anyone,
    /// Only the very first user, who bootstraps the deployment; `RegistrationClosed` after.
    FirstUserOnly,
}

/// An invitation to create; the token itself never reaches the store.
#[derive(Debug, Clone)]
pub struct NewInvitation {
    pub org_id: OrgId,
    pub email: Email,
    pub role: Role,
    pub invited_by: UserId,
    pub expires_at: OffsetDateTime,
    pub token_hash: SecretHash,
}

/// Who accepts an invitation: a new account (registering with it) or an existing one.
#[derive(Debug, Clone, Copy)]
pub enum Invitee<'a> {
    New { email: &'a Email, password_hash: &'a str },
    Existing(UserId),
}

/// An instance to create.
#[derive(Debug, Clone)]
pub struct NewInstance {
    pub id: InstanceId,
    pub org_id: OrgId,
    pub name: String,
    pub provisioner: ProvisionerKind,
    pub kind: BackendKind,
    pub memory_bytes: u64,
    pub eviction_policy: EvictionPolicy,
    /// External instances: the connection URL (`standalone`) or the JSON
    /// [`crate::topology::Topology`] (`sentinel`, `cluster`), sealed by the caller.
    pub sealed_url: Option<Vec<u8>>,
    /// External `rediss://` instances: the CA (PEM) their server's certificate is verified
    /// against instead of the platform's roots.
    pub tls_ca_pem: Option<String>,
}

/// An instance with what the gateway needs to reach it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRecord {
    pub instance: Instance,
    pub sealed_url: Option<Vec<u8>>,
    pub tls_ca_pem: Option<String>,
}

/// An API key to create; the secret itself never reaches the store.
#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: ApiKeyId,
    pub org_id: OrgId,
    pub name: String,
    pub scope: Scope,
    pub instance_ids: Option<Vec<InstanceId>>,
    pub rate_limit: Option<Rate>,
    pub expires_at: Option<OffsetDateTime>,
    pub secret_hash: SecretHash,
    pub created_by: Option<UserId>,
}

/// One of an instance's REST tokens to store: an API key (kept by its hash, as any key) and
/// its text sealed by the caller, so that it can be shown again on the connect page.
#[derive(Debug, Clone)]
pub struct NewInstanceToken {
    pub key: NewApiKey,
    pub kind: TokenKind,
    pub sealed_key: Vec<u8>,
}

/// One of an instance's REST tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceToken {
    pub key: ApiKey,
    pub kind: TokenKind,
    pub sealed_key: Vec<u8>,
}

/// What `update_instance` changes; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct InstanceChange {
    pub name: Option<String>,
    pub memory_bytes: Option<u64>,
    pub eviction_policy: Option<EvictionPolicy>,
}

/// Totals of the deployment (gauges on `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub users: u64,
    pub organizations: u64,
    pub instances: u64,
}

/// What a change feed row is about; the follower re-reads the subject itself. Ordered and
/// hashable so that a follower can fold a page of rows into a set of subjects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChangeSubject {
    Instance(InstanceId),
    ApiKey(ApiKeyId),
    Organization(OrgId),
}

impl ChangeSubject {
    /// The kind as the feed table stores it.
    pub fn kind(&self) -> &'static str {
        match self {
            ChangeSubject::Instance(_) => "instance",
            ChangeSubject::ApiKey(_) => "api_key",
            ChangeSubject::Organization(_) => "organization",
        }
    }

    /// A subject from the feed table's kind and id columns; `None` for an unknown kind.
    pub fn parse(kind: &str, id: uuid::Uuid) -> Option<ChangeSubject> {
        match kind {
            "instance" => Some(ChangeSubject::Instance(InstanceId(id))),
            "api_key" => Some(ChangeSubject::ApiKey(ApiKeyId(id))),
            "organization" => Some(ChangeSubject::Organization(OrgId(id))),
            _ => None,
        }
    }
}

/// One row of the change feed: `subject` was inserted, updated or deleted at `at` (the
/// database's clock; SQLite's has milliseconds), as the `seq`-th change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: i64,
    pub at: OffsetDateTime,
    pub subject: ChangeSubject,
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Answers when the database does (readiness, `redisgate check`).
    async fn ping(&self) -> StoreResult<()>;

    // Users and sessions.
    /// Creates a user if `admission` allows; the very first user of a deployment becomes its
    /// administrator. Deciding "first" and inserting are one atomic step.
    async fn create_user(
        &self,
        email: &Email,
        password_hash: &str,
        admission: Admission,
    ) -> StoreResult<User>;
    async fn user(&self, id: UserId) -> StoreResult<User>;
    async fn credentials(&self, email: &Email) -> StoreResult<Option<Credentials>>;
    async fn create_session(
        &self,
        token_hash: &SecretHash,
        user: UserId,
        expires_at: OffsetDateTime,
    ) -> StoreResult<()>;
    /// The user of a live (unrevoked, unexpired at `now`) session.
    async fn session_user(&self, token_hash: &SecretHash, now: OffsetDateTime) -> StoreResult<Option<User>>;
    async fn revoke_session(&self, token_hash: &SecretHash) -> StoreResult<()>;

    // Organizations and members.
    /// Creates an organization with `owner` as its first owner, in one transaction, unless
    /// `owner` already owns `max_owned` organizations (`QuotaExceeded(MaxOrganizations)`);
    /// concurrent creates by one user never end above it.
    async fn create_org(
        &self,
        name: &str,
        plan: Plan,
        owner: UserId,
        max_owned: u32,
    ) -> StoreResult<Organization>;
    async fn org(&self, id: OrgId) -> StoreResult<Organization>;
    /// The organizations `user` belongs to, with the user's role in each.
    async fn orgs_of(&self, user: UserId) -> StoreResult<Vec<(Organization, Role)>>;
    async fn rename_org(&self, id: OrgId, name: &str) -> StoreResult<Organization>;
    /// Deletes the organization and everything it owns (members, instances, keys; audit stays).
    async fn delete_org(&self, id: OrgId) -> StoreResult<()>;
    async fn set_quota(&self, id: OrgId, quota: Quota) -> StoreResult<Organization>;
    async fn role_of(&self, org: OrgId, user: UserId) -> StoreResult<Option<Role>>;
    async fn members(&self, org: OrgId) -> StoreResult<Vec<Member>>;
    async fn add_member(&self, org: OrgId, user: UserId, role: Role) -> StoreResult<Member>;
    /// Changes a role; refuses (`LastOwner`) to demote the last owner.
    async fn set_role(&self, org: OrgId, user: UserId, role: Role) -> StoreResult<Member>;
    /// Removes a member; refuses (`LastOwner`) to remove the last owner.
    async fn remove_member(&self, org: OrgId, user: UserId) -> StoreResult<()>;

    // Invitations.
    /// Records an invitation unless the organization has `MAX_PENDING_INVITATIONS` pending
    /// (`QuotaExceeded(MaxInvitations)`); `NotFound` for an unknown organization.
    async fn create_invitation(&self, new: NewInvitation) -> StoreResult<Invitation>;
    /// The organization's invitations still pending at `now`, oldest first.
    async fn invitations(&self, org: OrgId, now: OffsetDateTime) -> StoreResult<Vec<Invitation>>;
    /// Revokes a pending invitation of `org`: `NotFound` if there is none of that id, and
    /// `Invitation(Used | Revoked | Expired)` when it is no longer pending.
    async fn revoke_invitation(
        &self,
        org: OrgId,
        id: InvitationId,
        at: OffsetDateTime,
    ) -> StoreResult<Invitation>;
    async fn invitation_by_hash(&self, token_hash: &SecretHash) -> StoreResult<Option<Invitation>>;
    /// Uses the invitation: in one transaction checks it (`Invitation::check` at `now`;
    /// `NotFound` for an unknown token), creates the invitee's account if new (`Conflict`
    /// "email" if taken), adds the membership (`Conflict` "member" if already one) and marks
    /// the invitation used. Two racing accepts: one wins, the other gets `Invitation(Used)`.
    async fn accept_invitation(
        &self,
        token_hash: &SecretHash,
        invitee: Invitee<'_>,
        now: OffsetDateTime,
    ) -> StoreResult<(User, Member)>;

    // Instances.
    /// Inserts a `pending` instance if the organization's instance and memory quotas allow.
    async fn create_instance(&self, new: NewInstance) -> StoreResult<InstanceRecord>;
    async fn instance(&self, id: InstanceId) -> StoreResult<InstanceRecord>;
    /// Up to `limit` of the organization's instances with an id greater than `after` (from
    /// the first without one), by id: a keyset page (see [`crate::page`]).
    async fn instances_page(
        &self,
        org: OrgId,
        after: Option<InstanceId>,
        limit: u32,
    ) -> StoreResult<Vec<Instance>>;
    /// Every instance of the deployment (start-up re-provisioning).
    async fn all_instances(&self) -> StoreResult<Vec<InstanceRecord>>;
    async fn set_instance_status(
        &self,
        id: InstanceId,
        status: InstanceStatus,
        reason: Option<&str>,
    ) -> StoreResult<()>;
    async fn delete_instance(&self, id: InstanceId) -> StoreResult<()>;
    /// Renames, resizes or changes the eviction policy of an instance. A new `memory_bytes`
    /// is checked against the organization's memory quota (counting the instance's new size,
    /// not its old one) in the same transaction as the update.
    async fn update_instance(&self, id: InstanceId, change: InstanceChange) -> StoreResult<InstanceRecord>;

    // Instance tokens: API keys of one instance (see `TokenKind`). They count against no key
    // quota, and `api_keys_page`, `api_key` and `revoke_api_key` do not see them; the data plane's
    // `api_key_by_hash` does, like any key.
    /// Replaces the instance's tokens with `tokens` in one transaction: the old ones are
    /// deleted (so resets leave nothing behind) and stop working on every replica at its
    /// next key-cache refresh. `NotFound` for an unknown instance.
    async fn replace_instance_tokens(
        &self,
        instance: InstanceId,
        tokens: Vec<NewInstanceToken>,
    ) -> StoreResult<Vec<InstanceToken>>;
    /// The instance's tokens (none for an instance made before tokens existed).
    async fn instance_tokens(&self, instance: InstanceId) -> StoreResult<Vec<InstanceToken>>;

    // API keys.
    /// Inserts a key if the organization's key quota allows (revoked keys do not count).
    async fn create_api_key(&self, new: NewApiKey) -> StoreResult<ApiKey>;
    async fn api_key(&self, id: ApiKeyId) -> StoreResult<ApiKey>;
    async fn api_key_by_hash(&self, hash: &SecretHash) -> StoreResult<Option<ApiKey>>;
    /// Up to `limit` of the organization's keys (revoked ones included, instance tokens not)
    /// with an id greater than `after`, by id: a keyset page (see [`crate::page`]).
    async fn api_keys_page(
        &self,
        org: OrgId,
        after: Option<ApiKeyId>,
        limit: u32,
    ) -> StoreResult<Vec<ApiKey>>;
    async fn revoke_api_key(&self, id: ApiKeyId, at: OffsetDateTime) -> StoreResult<ApiKey>;
    /// Sets (or with `None` clears) a key's own rate limit.
    async fn set_api_key_rate_limit(&self, id: ApiKeyId, rate: Option<Rate>) -> StoreResult<ApiKey>;
    /// Records last use, batched off the hot path.
    async fn touch_api_keys(&self, used: &[(ApiKeyId, OffsetDateTime)]) -> StoreResult<()>;

    // Audit.
    async fn append_audit(&self, entry: NewAuditEntry) -> StoreResult<()>;
    async fn audit_logs(&self, org: OrgId, query: &AuditQuery) -> StoreResult<Vec<AuditEntry>>;
    /// The entries of no organization (logins, registrations, attempts by non-members), with
    /// the same filters and pages as `audit_logs`.
    async fn deployment_audit_logs(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEntry>>;
    /// Deletes at most `limit` of the oldest entries created before `before` and answers how
    /// many went: retention calls it in batches, so no call holds a long lock.
    async fn prune_audit(&self, before: OffsetDateTime, limit: u32) -> StoreResult<u64>;

    // Plan rate limits.
    /// The rates set for plans (plans without one use the configuration).
    async fn plan_rates(&self) -> StoreResult<Vec<(Plan, Rate)>>;
    /// Sets (`Some`) or clears (`None`) a plan's rate.
    async fn set_plan_rate(&self, plan: Plan, rate: Option<Rate>) -> StoreResult<()>;

    // Counters for metrics.
    /// How many users, organizations and instances exist, in one round trip.
    async fn counts(&self) -> StoreResult<Counts>;

    // Usage history (see `crate::usage`).
    /// Records samples in one transaction. A row of an instance deleted meanwhile is dropped,
    /// not an error.
    async fn append_usage(&self, rows: &[UsageRow]) -> StoreResult<()>;
    /// The rows of `instance` starting at or after `since` at `finest_to` or a finer
    /// resolution, oldest first.
    async fn usage(
        &self,
        instance: InstanceId,
        since: OffsetDateTime,
        finest_to: Resolution,
    ) -> StoreResult<Vec<UsageRow>>;
    /// Down-sampling: replaces at most `limit` of the oldest `from` rows starting before
    /// `before` (of every instance) by their [`crate::usage::merge`] into `to` rows, in one
    /// transaction, and answers how many rows it took. Concurrent callers (replicas) never
    /// take the same row.
    async fn roll_up_usage(
        &self,
        from: Resolution,
        to: Resolution,
        before: OffsetDateTime,
        limit: u32,
    ) -> StoreResult<u64>;
    /// Deletes at most `limit` of the oldest `resolution` rows starting before `before`, and
    /// answers how many went.
    async fn prune_usage(
        &self,
        resolution: Resolution,
        before: OffsetDateTime,
        limit: u32,
    ) -> StoreResult<u64>;
    // Backups.
    /// Records a `pending` backup unless the organization already keeps `caps.max_count`
    /// backups (`QuotaExceeded(MaxBackups)`) or its ready backups add up to `caps.max_bytes`
    /// (`QuotaExceeded(MaxBackupBytes)`), decided atomically with the insert; `NotFound` for
    /// an unknown instance.
    async fn create_backup(&self, new: NewBackup, caps: BackupCaps) -> StoreResult<Backup>;
    /// Ends a backup: `ready` with its size, or `failed` with a reason.
    async fn finish_backup(
        &self,
        id: BackupId,
        state: BackupState,
        size_bytes: u64,
        error: Option<&str>,
    ) -> StoreResult<Backup>;
    async fn backup(&self, id: BackupId) -> StoreResult<Backup>;
    /// An instance's backups, newest first.
    async fn backups(&self, instance: InstanceId) -> StoreResult<Vec<Backup>>;
    async fn delete_backup(&self, id: BackupId) -> StoreResult<()>;
    /// Sets an instance's daily schedule (`Some((retention_days, first_run_at))`, replacing
    /// one it has) or removes it (`None`); `NotFound` for an unknown instance.
    async fn set_backup_schedule(
        &self,
        instance: InstanceId,
        schedule: Option<(u32, OffsetDateTime)>,
    ) -> StoreResult<Option<BackupSchedule>>;
    async fn backup_schedule(&self, instance: InstanceId) -> StoreResult<Option<BackupSchedule>>;
    /// Claims one schedule of an instance in `among` (the instances the caller serves) due at
    /// `now` (`next_run_at <= now`), moving its `next_run_at` to `next` in the same atomic
    /// step, and answers it as it was before the move. Replicas racing for the same due run:
    /// exactly one gets it.
    async fn claim_due_backup(
        &self,
        now: OffsetDateTime,
        next: OffsetDateTime,
        among: &[InstanceId],
    ) -> StoreResult<Option<BackupSchedule>>;

    // Change feed: what replicas follow instead of re-reading every instance. Rows are
    // written by database triggers in the same transaction as the change they record:
    // instances on insert, update and delete; API keys (instance tokens too) on insert,
    // delete and an update of anything but `last_used_at` (so `touch_api_keys` writes none);
    // organizations on update and delete. Deletes cascading from an organization or an
    // instance write rows for every child that goes. An update writes a row even when it
    // sets the values already there.
    //
    // Ordering: on SQLite (one writer) rows commit in `seq` order. On PostgreSQL `seq` comes
    // from a sequence taken before commit, so concurrent transactions can commit out of
    // order: a reader may see seq 7 before seq 6 appears, and a rolled-back transaction
    // leaves a gap that never fills. The store takes no lock to prevent it; a follower that
    // must not miss a row re-reads a little behind its cursor (or tracks gaps) itself.
    /// Changes with seq > after, ascending, at most `limit`; `None` when rows after `after`
    /// were pruned (the follower must re-read everything and restart from `last_change`).
    async fn changes_after(&self, after: i64, limit: u32) -> StoreResult<Option<Vec<Change>>>;
    /// The highest seq written (or pruned); 0 on an empty feed.
    async fn last_change(&self) -> StoreResult<i64>;
    /// Deletes the rows older than `before` (and any of lower seq, so that what is left is
    /// always every row above one seq even if the clock stepped back); remembers the highest
    /// deleted seq as the watermark below which `changes_after` answers None. Returns how
    /// many rows went.
    async fn prune_changes(&self, before: OffsetDateTime) -> StoreResult<u64>;
}
