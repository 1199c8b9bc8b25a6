//! The PostgreSQL store, for production and for several RedisGate replicas sharing one
//! database.
//!
//! Every invariant that spans rows (the first user is the administrator, quotas, the last
//! owner) is decided inside one transaction that first takes a lock everyone racing for the
//! same invariant must also take, so READ COMMITTED suffices: each statement after the lock
//! sees what the previous holder committed.

use std::time::Duration;

use redisgate_core::account::{Email, User};
use redisgate_core::apikey::{ApiKey, Scope, TokenKind};
use redisgate_core::audit::{AuditEntry, AuditQuery, NewAuditEntry, Outcome};
use redisgate_core::backup::{Backup, BackupCaps, BackupKind, BackupSchedule, BackupState, NewBackup};
use redisgate_core::ids::{ApiKeyId, AuditId, BackupId, InstanceId, InvitationId, OrgId, UserId};
use redisgate_core::instance::{BackendKind, EvictionPolicy, Instance, InstanceStatus, ProvisionerKind};
use redisgate_core::org::{Invitation, MAX_PENDING_INVITATIONS, Member, Organization, Role};
use redisgate_core::quota::{Limit, Plan, Quota};
use redisgate_core::ratelimit::Rate;
use redisgate_core::store::{
    Admission, Change, ChangeSubject, Counts, Credentials, InstanceChange, InstanceRecord, InstanceToken,
    Invitee, NewApiKey, NewInstance, NewInstanceToken, NewInvitation, SecretHash, Store, StoreError,
    StoreResult,
};
use redisgate_core::usage::{self, Resolution, UsageRow};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Decode, Postgres, Row, Type};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::db_error;
use crate::usage::{Values, usage_cols, usage_from};

const MAX_CONNECTIONS: u32 = 10;
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
const AUDIT_DEFAULT_LIMIT: u32 = 50;
const AUDIT_MAX_LIMIT: u32 = 500;

// Column lists as macros so `concat!` can splice them into `&'static str` queries.
macro_rules! user_cols {
    () => {
        "u.id, u.email, u.is_admin, u.created_at"
    };
}
macro_rules! org_cols {
    () => {
        "o.id, o.name, o.plan, o.max_instances, o.max_memory_bytes, o.max_api_keys, o.created_at"
    };
}
macro_rules! member_cols {
    () => {
        "m.org_id, m.user_id, u.email, m.role, m.joined_at"
    };
}
macro_rules! instance_cols {
    () => {
        "i.id, i.org_id, i.name, i.provisioner, i.kind, i.memory_bytes, i.eviction_policy, i.status, \
         i.status_reason, i.sealed_url, i.tls_ca_pem, i.created_at"
    };
}
// jsonb is read back as text so the store needs no sqlx `json` feature.
macro_rules! key_cols {
    () => {
        "k.id, k.org_id, k.name, k.scope, k.instance_ids::text AS instance_ids, k.rate_per_second, \
         k.rate_burst, k.expires_at, k.revoked_at, k.last_used_at, k.created_at"
    };
}
macro_rules! audit_cols {
    () => {
        "a.id, a.org_id, a.actor_user_id, a.actor, a.action, a.target, a.ip, a.user_agent, \
         a.outcome, a.detail, a.created_at"
    };
}

macro_rules! invitation_cols {
    () => {
        "n.id, n.org_id, n.email, n.role, n.invited_by, n.expires_at, n.accepted_at, n.revoked_at, n.created_at"
    };
}

/// The audit page statement for one organization predicate (on the entries `a` and on the
/// cursor's entry `c`).
macro_rules! audit_page_sql {
    ($org:literal, $cursor_org:literal) => {
        concat!(
            "SELECT ",
            audit_cols!(),
            " FROM audit_logs a WHERE ",
            $org,
            " AND ($2::text IS NULL OR a.action = $2) \
               AND ($3::uuid IS NULL OR a.actor_user_id = $3) \
               AND ($4::text IS NULL OR a.outcome = $4) \
               AND ($5::timestamptz IS NULL OR a.created_at >= $5) \
               AND ($6::timestamptz IS NULL OR a.created_at < $6) \
               AND ($7::uuid IS NULL OR (a.created_at, a.id) < \
                    (SELECT c.created_at, c.id FROM audit_logs c WHERE c.id = $7 AND ",
            $cursor_org,
            ")) ORDER BY a.created_at DESC, a.id DESC LIMIT $8"
        )
    };
}

/// The PostgreSQL [`Store`].
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects and brings the schema up to date. Replicas starting together are safe: the
    /// migrator serializes itself with an advisory lock.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .map_err(|e| StoreError::Unavailable(format!("connecting to PostgreSQL: {e}")))?;
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrating PostgreSQL: {e}")))?;
        Ok(PgStore { pool })
    }

    /// One page of the audit log of `org`, or with `None` of the entries without one.
    async fn audit_page(&self, org: Option<OrgId>, query: &AuditQuery) -> StoreResult<Vec<AuditEntry>> {
        let limit = match query.limit {
            0 => AUDIT_DEFAULT_LIMIT,
            n => n.min(AUDIT_MAX_LIMIT),
        };
        // One static statement with optional filters keeps the query text fixed (and so
        // prepared once); PostgreSQL plans each execution with the actual NULLs folded away.
        // `since` is inclusive and `until` exclusive, so adjacent windows never overlap. The
        // cursor is looked up within the same organization: another org's entry id, like an
        // unknown one, yields an empty page rather than a position in someone else's log.
        // Two fixed statements rather than `IS NOT DISTINCT FROM`, which no index serves.
        let sql = match org {
            Some(_) => audit_page_sql!("a.org_id = $1", "c.org_id = $1"),
            None => audit_page_sql!("a.org_id IS NULL AND $1::uuid IS NULL", "c.org_id IS NULL"),
        };
        let rows = sqlx::query(sql)
            .bind(org.map(|o| o.0))
            .bind(query.action.as_deref())
            .bind(query.actor_user_id.map(|u| u.0))
            .bind(query.outcome.map(Outcome::as_str))
            .bind(query.since)
            .bind(query.until)
            .bind(query.before.map(|b| b.0))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(unavailable)?;
        rows.iter().map(audit_from).collect()
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    db_error(e, "row")
}

fn corrupt(what: &str, value: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("unexpected {what} in the database: {value}"))
}

/// Values the domain allows but the column cannot hold are refused, never wrapped.
fn too_large(what: &str, value: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what} {value} is too large to store"))
}

fn get<'r, T>(row: &'r PgRow, col: &str) -> StoreResult<T>
where
    T: Decode<'r, Postgres> + Type<Postgres>,
{
    row.try_get(col).map_err(unavailable)
}

/// A text column holding one of a domain enum's names.
fn get_enum<T>(row: &PgRow, col: &str, parse: fn(&str) -> Option<T>) -> StoreResult<T> {
    let text: String = get(row, col)?;
    parse(&text).ok_or_else(|| corrupt(col, &text))
}

fn to_i32(what: &str, v: u32) -> StoreResult<i32> {
    i32::try_from(v).map_err(|_| too_large(what, v))
}

fn to_i64(what: &str, v: u64) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| too_large(what, v))
}

fn to_u32(what: &str, v: i32) -> StoreResult<u32> {
    u32::try_from(v).map_err(|_| corrupt(what, v))
}

fn to_u64(what: &str, v: i64) -> StoreResult<u64> {
    u64::try_from(v).map_err(|_| corrupt(what, v))
}

fn user_from(row: &PgRow) -> StoreResult<User> {
    let email: String = get(row, "email")?;
    Ok(User {
        id: UserId(get(row, "id")?),
        email: Email::parse(&email).map_err(|_| corrupt("e-mail", &email))?,
        is_admin: get(row, "is_admin")?,
        created_at: get(row, "created_at")?,
    })
}

fn org_from(row: &PgRow) -> StoreResult<Organization> {
    let plan: String = get(row, "plan")?;
    Ok(Organization {
        id: OrgId(get(row, "id")?),
        name: get(row, "name")?,
        plan: Plan::parse(&plan).ok_or_else(|| corrupt("plan", &plan))?,
        quota: Quota {
            max_instances: to_u32("max_instances", get(row, "max_instances")?)?,
            max_memory_bytes: to_u64("max_memory_bytes", get(row, "max_memory_bytes")?)?,
            max_api_keys: to_u32("max_api_keys", get(row, "max_api_keys")?)?,
        },
        created_at: get(row, "created_at")?,
    })
}

fn invitation_from(row: &PgRow) -> StoreResult<Invitation> {
    let email: String = get(row, "email")?;
    Ok(Invitation {
        id: InvitationId(get(row, "id")?),
        org_id: OrgId(get(row, "org_id")?),
        email: Email::parse(&email).map_err(|_| corrupt("e-mail", &email))?,
        role: role_from(row)?,
        invited_by: get::<Option<Uuid>>(row, "invited_by")?.map(UserId),
        expires_at: get(row, "expires_at")?,
        accepted_at: get(row, "accepted_at")?,
        revoked_at: get(row, "revoked_at")?,
        created_at: get(row, "created_at")?,
    })
}

fn role_from(row: &PgRow) -> StoreResult<Role> {
    let role: String = get(row, "role")?;
    Role::parse(&role).ok_or_else(|| corrupt("role", &role))
}

fn member_from(row: &PgRow) -> StoreResult<Member> {
    Ok(Member {
        org_id: OrgId(get(row, "org_id")?),
        user_id: UserId(get(row, "user_id")?),
        email: get(row, "email")?,
        role: role_from(row)?,
        joined_at: get(row, "joined_at")?,
    })
}

fn instance_from(row: &PgRow) -> StoreResult<InstanceRecord> {
    let provisioner: String = get(row, "provisioner")?;
    let status: String = get(row, "status")?;
    let kind: String = get(row, "kind")?;
    Ok(InstanceRecord {
        instance: Instance {
            id: InstanceId(get(row, "id")?),
            org_id: OrgId(get(row, "org_id")?),
            name: get(row, "name")?,
            provisioner: ProvisionerKind::parse(&provisioner)
                .ok_or_else(|| corrupt("provisioner", &provisioner))?,
            kind: BackendKind::parse(&kind).ok_or_else(|| corrupt("instance kind", &kind))?,
            memory_bytes: to_u64("memory_bytes", get(row, "memory_bytes")?)?,
            eviction_policy: get_enum(row, "eviction_policy", EvictionPolicy::parse)?,
            status: InstanceStatus::parse(&status).ok_or_else(|| corrupt("instance status", &status))?,
            status_reason: get(row, "status_reason")?,
            created_at: get(row, "created_at")?,
        },
        sealed_url: get(row, "sealed_url")?,
        tls_ca_pem: get(row, "tls_ca_pem")?,
    })
}

fn key_from(row: &PgRow) -> StoreResult<ApiKey> {
    let scope: String = get(row, "scope")?;
    let instance_ids: Option<String> = get(row, "instance_ids")?;
    let instance_ids = instance_ids
        .map(|json| serde_json::from_str::<Vec<InstanceId>>(&json).map_err(|_| corrupt("instance_ids", json)))
        .transpose()?;
    Ok(ApiKey {
        id: ApiKeyId(get(row, "id")?),
        org_id: OrgId(get(row, "org_id")?),
        name: get(row, "name")?,
        scope: Scope::parse(&scope).ok_or_else(|| corrupt("scope", &scope))?,
        instance_ids,
        rate_limit: match (
            get::<Option<i32>>(row, "rate_per_second")?,
            get::<Option<i32>>(row, "rate_burst")?,
        ) {
            (Some(p), Some(b)) => Some(Rate {
                per_second: u32::try_from(p).map_err(|_| corrupt("rate_per_second", p))?,
                burst: u32::try_from(b).map_err(|_| corrupt("rate_burst", b))?,
            }),
            _ => None,
        },
        expires_at: get(row, "expires_at")?,
        revoked_at: get(row, "revoked_at")?,
        last_used_at: get(row, "last_used_at")?,
        created_at: get(row, "created_at")?,
    })
}

/// A rate's number as PostgreSQL's `integer` (the API caps rates at 10^9, below `i32::MAX`).
fn int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn audit_from(row: &PgRow) -> StoreResult<AuditEntry> {
    let outcome: String = get(row, "outcome")?;
    Ok(AuditEntry {
        id: AuditId(get(row, "id")?),
        org_id: get::<Option<Uuid>>(row, "org_id")?.map(OrgId),
        actor_user_id: get::<Option<Uuid>>(row, "actor_user_id")?.map(UserId),
        actor: get(row, "actor")?,
        action: get(row, "action")?,
        target: get(row, "target")?,
        ip: get(row, "ip")?,
        user_agent: get(row, "user_agent")?,
        outcome: Outcome::parse(&outcome).ok_or_else(|| corrupt("outcome", &outcome))?,
        detail: get(row, "detail")?,
        created_at: get(row, "created_at")?,
    })
}

/// Locks the organization's row until the transaction ends, so quota and last-owner checks
/// of the same organization run one at a time; returns its quota.
/// Inserts an API key, or with `token` one of an instance's tokens (its kind, instance and
/// sealed text); quotas are the caller's.
async fn insert_key(
    conn: &mut PgConnection,
    new: NewApiKey,
    instance_ids: Option<String>,
    token: Option<(TokenKind, InstanceId, &[u8])>,
) -> StoreResult<ApiKey> {
    let row = sqlx::query(concat!(
        "INSERT INTO api_keys AS k \
             (id, org_id, name, scope, instance_ids, expires_at, secret_hash, created_by, created_at, \
              rate_per_second, rate_burst, instance_token, token_instance_id, sealed_key) \
             VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING ",
        key_cols!()
    ))
    .bind(new.id.0)
    .bind(new.org_id.0)
    .bind(&new.name)
    .bind(new.scope.as_str())
    .bind(instance_ids)
    .bind(new.expires_at)
    .bind(&new.secret_hash[..])
    .bind(new.created_by.map(|u| u.0))
    .bind(OffsetDateTime::now_utc())
    .bind(new.rate_limit.map(|r| int(r.per_second)))
    .bind(new.rate_limit.map(|r| int(r.burst)))
    .bind(token.map(|t| t.0.as_str()))
    .bind(token.map(|t| t.1.0))
    .bind(token.map(|t| t.2))
    .fetch_one(conn)
    .await
    .map_err(|e| db_error(e, "api key"))?;
    key_from(&row)
}

macro_rules! backup_cols {
    () => {
        "b.id, b.instance_id, b.org_id, b.name, b.kind, b.state, b.size_bytes, b.error, b.object_key, b.created_at"
    };
}

fn backup_from(row: &PgRow) -> StoreResult<Backup> {
    let kind: String = get(row, "kind")?;
    let state: String = get(row, "state")?;
    Ok(Backup {
        id: BackupId(get(row, "id")?),
        instance_id: InstanceId(get(row, "instance_id")?),
        org_id: OrgId(get(row, "org_id")?),
        name: get(row, "name")?,
        kind: BackupKind::parse(&kind).ok_or_else(|| corrupt("backup kind", &kind))?,
        state: BackupState::parse(&state).ok_or_else(|| corrupt("backup state", &state))?,
        size_bytes: to_u64("backup size", get(row, "size_bytes")?)?,
        error: get(row, "error")?,
        object_key: get(row, "object_key")?,
        created_at: get(row, "created_at")?,
    })
}

fn change_from(row: &PgRow) -> StoreResult<Change> {
    let kind: String = get(row, "subject_kind")?;
    Ok(Change {
        seq: get(row, "seq")?,
        at: get(row, "at")?,
        subject: ChangeSubject::parse(&kind, get(row, "subject_id")?)
            .ok_or_else(|| corrupt("subject_kind", &kind))?,
    })
}

/// A schedule row joined with its instance's organization.
const SCHEDULE_SELECT: &str = "SELECT s.instance_id, i.org_id, s.retention_days, s.next_run_at \
     FROM backup_schedules s JOIN redis_instances i ON i.id = s.instance_id WHERE s.instance_id = $1";

fn schedule_from(row: &PgRow) -> StoreResult<BackupSchedule> {
    Ok(BackupSchedule {
        instance_id: InstanceId(get(row, "instance_id")?),
        org_id: OrgId(get(row, "org_id")?),
        retention_days: to_u32("retention days", get(row, "retention_days")?)?,
        next_run_at: get(row, "next_run_at")?,
    })
}

async fn lock_org(conn: &mut PgConnection, org: OrgId) -> StoreResult<Quota> {
    let row =
        sqlx::query(concat!("SELECT ", org_cols!(), " FROM organizations o WHERE o.id = $1 FOR UPDATE"))
            .bind(org.0)
            .fetch_optional(conn)
            .await
            .map_err(unavailable)?
            .ok_or(StoreError::NotFound)?;
    Ok(org_from(&row)?.quota)
}

/// The number of owners of an organization whose row the caller has locked.
async fn owner_count(conn: &mut PgConnection, org: OrgId) -> StoreResult<i64> {
    sqlx::query_scalar("SELECT count(*) FROM memberships WHERE org_id = $1 AND role = 'owner'")
        .bind(org.0)
        .fetch_one(conn)
        .await
        .map_err(unavailable)
}

/// A member's current role, read under the organization's lock.
async fn current_role(conn: &mut PgConnection, org: OrgId, user: UserId) -> StoreResult<Role> {
    let row = sqlx::query("SELECT role FROM memberships WHERE org_id = $1 AND user_id = $2")
        .bind(org.0)
        .bind(user.0)
        .fetch_optional(conn)
        .await
        .map_err(unavailable)?
        .ok_or(StoreError::NotFound)?;
    role_from(&row)
}

#[async_trait::async_trait]
impl Store for PgStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(unavailable)?;
        Ok(())
    }

    async fn create_user(
        &self,
        email: &Email,
        password_hash: &str,
        admission: Admission,
    ) -> StoreResult<User> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        // Without the lock, two first registrations could each see an empty table and both
        // become administrators (or both get in when only the first may). The mode conflicts
        // with itself and with writers, not readers.
        sqlx::query("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let row = sqlx::query(
            "INSERT INTO users AS u (id, email, password_hash, is_admin, created_at) \
             SELECT $1, $2, $3, NOT EXISTS (SELECT 1 FROM users), $4 \
             WHERE $5 OR NOT EXISTS (SELECT 1 FROM users) \
             RETURNING u.id, u.email, u.is_admin, u.created_at",
        )
        .bind(UserId::new().0)
        .bind(email.as_str())
        .bind(password_hash)
        .bind(OffsetDateTime::now_utc())
        .bind(admission == Admission::Anyone)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db_error(e, "email"))?
        .ok_or(StoreError::RegistrationClosed)?;
        let user = user_from(&row)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(user)
    }

    async fn user(&self, id: UserId) -> StoreResult<User> {
        let row = sqlx::query(concat!("SELECT ", user_cols!(), " FROM users u WHERE u.id = $1"))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .ok_or(StoreError::NotFound)?;
        user_from(&row)
    }

    async fn credentials(&self, email: &Email) -> StoreResult<Option<Credentials>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_cols!(),
            ", u.password_hash FROM users u WHERE u.email = $1"
        ))
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.map(|row| Ok(Credentials { user: user_from(&row)?, password_hash: get(&row, "password_hash")? }))
            .transpose()
    }

    async fn create_session(
        &self,
        token_hash: &SecretHash,
        user: UserId,
        expires_at: OffsetDateTime,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&token_hash[..])
        .bind(user.0)
        .bind(OffsetDateTime::now_utc())
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, "session"))?;
        Ok(())
    }

    async fn session_user(&self, token_hash: &SecretHash, now: OffsetDateTime) -> StoreResult<Option<User>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_cols!(),
            " FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2"
        ))
        .bind(&token_hash[..])
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(user_from).transpose()
    }

    async fn revoke_session(&self, token_hash: &SecretHash) -> StoreResult<()> {
        // Logging out twice, or with a session already gone, is not an error.
        sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE token_hash = $1 AND revoked_at IS NULL")
            .bind(&token_hash[..])
            .bind(OffsetDateTime::now_utc())
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn create_org(
        &self,
        name: &str,
        plan: Plan,
        owner: UserId,
        max_owned: u32,
    ) -> StoreResult<Organization> {
        let quota = plan.default_quota();
        let now = OffsetDateTime::now_utc();
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        // The owner's row is the lock every create by this user takes, so the count below
        // sees the organizations a racing create committed.
        sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
            .bind(owner.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?
            .ok_or(StoreError::NotFound)?;
        let owned: i64 =
            sqlx::query_scalar("SELECT count(*) FROM memberships WHERE user_id = $1 AND role = 'owner'")
                .bind(owner.0)
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
        if owned >= i64::from(max_owned) {
            return Err(StoreError::QuotaExceeded(Limit::MaxOrganizations));
        }
        let row = sqlx::query(concat!(
            "INSERT INTO organizations AS o \
             (id, name, plan, max_instances, max_memory_bytes, max_api_keys, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING ",
            org_cols!()
        ))
        .bind(OrgId::new().0)
        .bind(name)
        .bind(plan.as_str())
        .bind(to_i32("max_instances", quota.max_instances)?)
        .bind(to_i64("max_memory_bytes", quota.max_memory_bytes)?)
        .bind(to_i32("max_api_keys", quota.max_api_keys)?)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| db_error(e, "organization"))?;
        let org = org_from(&row)?;
        sqlx::query(
            "INSERT INTO memberships (org_id, user_id, role, joined_at) VALUES ($1, $2, 'owner', $3)",
        )
        .bind(org.id.0)
        .bind(owner.0)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, "member"))?;
        tx.commit().await.map_err(unavailable)?;
        Ok(org)
    }

    async fn org(&self, id: OrgId) -> StoreResult<Organization> {
        let row = sqlx::query(concat!("SELECT ", org_cols!(), " FROM organizations o WHERE o.id = $1"))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .ok_or(StoreError::NotFound)?;
        org_from(&row)
    }

    async fn orgs_of(&self, user: UserId) -> StoreResult<Vec<(Organization, Role)>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            org_cols!(),
            ", m.role FROM memberships m JOIN organizations o ON o.id = m.org_id \
             WHERE m.user_id = $1 ORDER BY o.created_at, o.id"
        ))
        .bind(user.0)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(|row| Ok((org_from(row)?, role_from(row)?))).collect()
    }

    async fn rename_org(&self, id: OrgId, name: &str) -> StoreResult<Organization> {
        let row = sqlx::query(concat!(
            "UPDATE organizations o SET name = $2 WHERE o.id = $1 RETURNING ",
            org_cols!()
        ))
        .bind(id.0)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .ok_or(StoreError::NotFound)?;
        org_from(&row)
    }

    async fn delete_org(&self, id: OrgId) -> StoreResult<()> {
        // Memberships, instances and keys go by ON DELETE CASCADE; audit_logs has no key.
        let done = sqlx::query("DELETE FROM organizations WHERE id = $1")
            .bind(id.0)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn set_quota(&self, id: OrgId, quota: Quota) -> StoreResult<Organization> {
        let row = sqlx::query(concat!(
            "UPDATE organizations o SET max_instances = $2, max_memory_bytes = $3, max_api_keys = $4 \
             WHERE o.id = $1 RETURNING ",
            org_cols!()
        ))
        .bind(id.0)
        .bind(to_i32("max_instances", quota.max_instances)?)
        .bind(to_i64("max_memory_bytes", quota.max_memory_bytes)?)
        .bind(to_i32("max_api_keys", quota.max_api_keys)?)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .ok_or(StoreError::NotFound)?;
        org_from(&row)
    }

    async fn role_of(&self, org: OrgId, user: UserId) -> StoreResult<Option<Role>> {
        let row = sqlx::query("SELECT role FROM memberships WHERE org_id = $1 AND user_id = $2")
            .bind(org.0)
            .bind(user.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(role_from).transpose()
    }

    async fn members(&self, org: OrgId) -> StoreResult<Vec<Member>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            member_cols!(),
            " FROM memberships m JOIN users u ON u.id = m.user_id \
             WHERE m.org_id = $1 ORDER BY m.joined_at, m.user_id"
        ))
        .bind(org.0)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(member_from).collect()
    }

    async fn add_member(&self, org: OrgId, user: UserId, role: Role) -> StoreResult<Member> {
        let row = sqlx::query(concat!(
            "WITH m AS (INSERT INTO memberships (org_id, user_id, role, joined_at) \
             VALUES ($1, $2, $3, $4) RETURNING *) \
             SELECT ",
            member_cols!(),
            " FROM m JOIN users u ON u.id = m.user_id"
        ))
        .bind(org.0)
        .bind(user.0)
        .bind(role.as_str())
        .bind(OffsetDateTime::now_utc())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_error(e, "member"))?;
        member_from(&row)
    }

    async fn set_role(&self, org: OrgId, user: UserId, role: Role) -> StoreResult<Member> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        lock_org(&mut tx, org).await?;
        let current = current_role(&mut tx, org, user).await?;
        if current == Role::Owner && role != Role::Owner && owner_count(&mut tx, org).await? <= 1 {
            return Err(StoreError::LastOwner);
        }
        let row = sqlx::query(concat!(
            "WITH m AS (UPDATE memberships SET role = $3 WHERE org_id = $1 AND user_id = $2 \
             RETURNING *) \
             SELECT ",
            member_cols!(),
            " FROM m JOIN users u ON u.id = m.user_id"
        ))
        .bind(org.0)
        .bind(user.0)
        .bind(role.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        let member = member_from(&row)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(member)
    }

    async fn remove_member(&self, org: OrgId, user: UserId) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        lock_org(&mut tx, org).await?;
        let current = current_role(&mut tx, org, user).await?;
        if current == Role::Owner && owner_count(&mut tx, org).await? <= 1 {
            return Err(StoreError::LastOwner);
        }
        sqlx::query("DELETE FROM memberships WHERE org_id = $1 AND user_id = $2")
            .bind(org.0)
            .bind(user.0)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    async fn create_invitation(&self, new: NewInvitation) -> StoreResult<Invitation> {
        let now = OffsetDateTime::now_utc();
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        lock_org(&mut tx, new.org_id).await?;
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM invitations \
             WHERE org_id = $1 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(new.org_id.0)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        if pending >= i64::from(MAX_PENDING_INVITATIONS) {
            return Err(StoreError::QuotaExceeded(Limit::MaxInvitations));
        }
        let row = sqlx::query(concat!(
            "INSERT INTO invitations AS n \
             (id, org_id, email, role, token_hash, invited_by, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
            invitation_cols!()
        ))
        .bind(InvitationId::new().0)
        .bind(new.org_id.0)
        .bind(new.email.as_str())
        .bind(new.role.as_str())
        .bind(&new.token_hash[..])
        .bind(new.invited_by.0)
        .bind(new.expires_at)
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| db_error(e, "invitation"))?;
        let inv = invitation_from(&row)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(inv)
    }

    async fn invitations(&self, org: OrgId, now: OffsetDateTime) -> StoreResult<Vec<Invitation>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            invitation_cols!(),
            " FROM invitations n WHERE n.org_id = $1 AND n.accepted_at IS NULL AND n.revoked_at IS NULL \
              AND n.expires_at > $2 ORDER BY n.created_at, n.id"
        ))
        .bind(org.0)
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(invitation_from).collect()
    }

    async fn revoke_invitation(
        &self,
        org: OrgId,
        id: InvitationId,
        at: OffsetDateTime,
    ) -> StoreResult<Invitation> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let row = sqlx::query(concat!(
            "SELECT ",
            invitation_cols!(),
            " FROM invitations n WHERE n.id = $1 AND n.org_id = $2 FOR UPDATE"
        ))
        .bind(id.0)
        .bind(org.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?
        .ok_or(StoreError::NotFound)?;
        invitation_from(&row)?.usable_at(at).map_err(StoreError::Invitation)?;
        let row = sqlx::query(concat!(
            "UPDATE invitations AS n SET revoked_at = $2 WHERE n.id = $1 RETURNING ",
            invitation_cols!()
        ))
        .bind(id.0)
        .bind(at)
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        let inv = invitation_from(&row)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(inv)
    }

    async fn invitation_by_hash(&self, token_hash: &SecretHash) -> StoreResult<Option<Invitation>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            invitation_cols!(),
            " FROM invitations n WHERE n.token_hash = $1"
        ))
        .bind(&token_hash[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(invitation_from).transpose()
    }

    async fn accept_invitation(
        &self,
        token_hash: &SecretHash,
        invitee: Invitee<'_>,
        now: OffsetDateTime,
    ) -> StoreResult<(User, Member)> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        // The invitation's row lock: a racing accept waits, then sees it used.
        let row = sqlx::query(concat!(
            "SELECT ",
            invitation_cols!(),
            " FROM invitations n WHERE n.token_hash = $1 FOR UPDATE"
        ))
        .bind(&token_hash[..])
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?
        .ok_or(StoreError::NotFound)?;
        let inv = invitation_from(&row)?;
        let user = match invitee {
            Invitee::New { email, password_hash } => {
                inv.check(email, now).map_err(StoreError::Invitation)?;
                // Never the first user: the inviting organization already has an owner.
                let row = sqlx::query(
                    "INSERT INTO users AS u (id, email, password_hash, is_admin, created_at) \
                     VALUES ($1, $2, $3, false, $4) RETURNING u.id, u.email, u.is_admin, u.created_at",
                )
                .bind(UserId::new().0)
                .bind(email.as_str())
                .bind(password_hash)
                .bind(now)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| db_error(e, "email"))?;
                user_from(&row)?
            }
            Invitee::Existing(id) => {
                let row = sqlx::query(concat!("SELECT ", user_cols!(), " FROM users u WHERE u.id = $1"))
                    .bind(id.0)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(unavailable)?
                    .ok_or(StoreError::NotFound)?;
                let user = user_from(&row)?;
                inv.check(&user.email, now).map_err(StoreError::Invitation)?;
                user
            }
        };
        let row = sqlx::query(concat!(
            "WITH m AS (INSERT INTO memberships (org_id, user_id, role, joined_at) \
             VALUES ($1, $2, $3, $4) RETURNING *) \
             SELECT ",
            member_cols!(),
            " FROM m JOIN users u ON u.id = m.user_id"
        ))
        .bind(inv.org_id.0)
        .bind(user.id.0)
        .bind(inv.role.as_str())
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| db_error(e, "member"))?;
        let member = member_from(&row)?;
        sqlx::query("UPDATE invitations SET accepted_at = $2, accepted_by = $3 WHERE id = $1")
            .bind(inv.id.0)
            .bind(now)
            .bind(user.id.0)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok((user, member))
    }

    async fn create_instance(&self, new: NewInstance) -> StoreResult<InstanceRecord> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let quota = lock_org(&mut tx, new.org_id).await?;
        let usage = sqlx::query(
            "SELECT count(*) AS n, COALESCE(sum(memory_bytes), 0)::bigint AS memory \
             FROM redis_instances WHERE org_id = $1",
        )
        .bind(new.org_id.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        let count: i64 = get(&usage, "n")?;
        let used: i64 = get(&usage, "memory")?;
        if count >= i64::from(quota.max_instances) {
            return Err(StoreError::QuotaExceeded(Limit::MaxInstances));
        }
        // A size no column can hold is over any quota a column can hold.
        let fits = i128::from(used) + i128::from(new.memory_bytes) <= i128::from(quota.max_memory_bytes);
        let memory_bytes = match i64::try_from(new.memory_bytes) {
            Ok(m) if fits => m,
            _ => return Err(StoreError::QuotaExceeded(Limit::MaxMemoryBytes)),
        };
        let row = sqlx::query(concat!(
            "INSERT INTO redis_instances AS i \
             (id, org_id, name, provisioner, kind, memory_bytes, status, status_reason, sealed_url, tls_ca_pem, \
              created_at, eviction_policy) \
             VALUES ($1, $2, $3, $4, $9, $5, 'pending', NULL, $6, $7, $8, $10) RETURNING ",
            instance_cols!()
        ))
        .bind(new.id.0)
        .bind(new.org_id.0)
        .bind(&new.name)
        .bind(new.provisioner.as_str())
        .bind(memory_bytes)
        .bind(new.sealed_url.as_deref())
        .bind(new.tls_ca_pem.as_deref())
        .bind(OffsetDateTime::now_utc())
        .bind(new.kind.as_str())
        .bind(new.eviction_policy.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| db_error(e, "instance"))?;
        let record = instance_from(&row)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(record)
    }

    async fn instance(&self, id: InstanceId) -> StoreResult<InstanceRecord> {
        let row =
            sqlx::query(concat!("SELECT ", instance_cols!(), " FROM redis_instances i WHERE i.id = $1"))
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?
                .ok_or(StoreError::NotFound)?;
        instance_from(&row)
    }

    async fn instances_page(
        &self,
        org: OrgId,
        after: Option<InstanceId>,
        limit: u32,
    ) -> StoreResult<Vec<Instance>> {
        // The first page starts after the nil id, which no row has: every page is one range
        // of the (org_id, id) index (migration 0170).
        let rows = sqlx::query(concat!(
            "SELECT ",
            instance_cols!(),
            " FROM redis_instances i WHERE i.org_id = $1 AND i.id > $2 ORDER BY i.id LIMIT $3"
        ))
        .bind(org.0)
        .bind(after.map_or(Uuid::nil(), |a| a.0))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(|row| Ok(instance_from(row)?.instance)).collect()
    }

    async fn all_instances(&self) -> StoreResult<Vec<InstanceRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            instance_cols!(),
            " FROM redis_instances i ORDER BY i.created_at, i.id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(instance_from).collect()
    }

    async fn set_instance_status(
        &self,
        id: InstanceId,
        status: InstanceStatus,
        reason: Option<&str>,
    ) -> StoreResult<()> {
        let done = sqlx::query("UPDATE redis_instances SET status = $2, status_reason = $3 WHERE id = $1")
            .bind(id.0)
            .bind(status.as_str())
            .bind(reason)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn delete_instance(&self, id: InstanceId) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM redis_instances WHERE id = $1")
            .bind(id.0)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn update_instance(&self, id: InstanceId, change: InstanceChange) -> StoreResult<InstanceRecord> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let org: Option<Uuid> = sqlx::query_scalar("SELECT org_id FROM redis_instances WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
        let org = OrgId(org.ok_or(StoreError::NotFound)?);
        let mut memory_bytes = None;
        if let Some(bytes) = change.memory_bytes {
            // The organization's row lock orders this against concurrent creates and resizes.
            let quota = lock_org(&mut tx, org).await?;
            let others: i64 = sqlx::query_scalar(
                "SELECT COALESCE(sum(memory_bytes), 0)::bigint FROM redis_instances WHERE org_id = $1 AND id <> $2",
            )
            .bind(org.0)
            .bind(id.0)
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
            let fits = i128::from(others) + i128::from(bytes) <= i128::from(quota.max_memory_bytes);
            memory_bytes = match i64::try_from(bytes) {
                Ok(m) if fits => Some(m),
                _ => return Err(StoreError::QuotaExceeded(Limit::MaxMemoryBytes)),
            };
        }
        let row = sqlx::query(concat!(
            "UPDATE redis_instances i SET name = COALESCE($2, i.name), \
             memory_bytes = COALESCE($3, i.memory_bytes), eviction_policy = COALESCE($4, i.eviction_policy) \
             WHERE i.id = $1 RETURNING ",
            instance_cols!()
        ))
        .bind(id.0)
        .bind(change.name)
        .bind(memory_bytes)
        .bind(change.eviction_policy.map(EvictionPolicy::as_str))
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?
        .ok_or(StoreError::NotFound)?;
        let record = instance_from(&row)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(record)
    }

    async fn replace_instance_tokens(
        &self,
        instance: InstanceId,
        tokens: Vec<NewInstanceToken>,
    ) -> StoreResult<Vec<InstanceToken>> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        // Locked, so that two resets of one instance end with one pair of tokens.
        let known: Option<i32> = sqlx::query_scalar("SELECT 1 FROM redis_instances WHERE id = $1 FOR UPDATE")
            .bind(instance.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
        known.ok_or(StoreError::NotFound)?;
        sqlx::query("DELETE FROM api_keys WHERE token_instance_id = $1")
            .bind(instance.0)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        let mut made = Vec::with_capacity(tokens.len());
        for t in tokens {
            let ids = Some(serde_json::to_string(&[instance]).map_err(|e| corrupt("instance_ids", e))?);
            let key = insert_key(&mut tx, t.key, ids, Some((t.kind, instance, &t.sealed_key))).await?;
            made.push(InstanceToken { key, kind: t.kind, sealed_key: t.sealed_key });
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(made)
    }

    async fn instance_tokens(&self, instance: InstanceId) -> StoreResult<Vec<InstanceToken>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            ", k.instance_token, k.sealed_key FROM api_keys k WHERE k.token_instance_id = $1 \
             ORDER BY k.instance_token DESC"
        ))
        .bind(instance.0)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                Ok(InstanceToken {
                    key: key_from(row)?,
                    kind: get_enum(row, "instance_token", TokenKind::parse)?,
                    sealed_key: get(row, "sealed_key")?,
                })
            })
            .collect()
    }

    async fn create_api_key(&self, new: NewApiKey) -> StoreResult<ApiKey> {
        let instance_ids = new
            .instance_ids
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Unavailable(format!("encoding instance ids: {e}")))?;
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let quota = lock_org(&mut tx, new.org_id).await?;
        let live: i64 =
            sqlx::query_scalar(
                "SELECT count(*) FROM api_keys WHERE org_id = $1 AND revoked_at IS NULL AND instance_token IS NULL",
            )
                .bind(new.org_id.0)
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
        if live >= i64::from(quota.max_api_keys) {
            return Err(StoreError::QuotaExceeded(Limit::MaxApiKeys));
        }
        let key = insert_key(&mut tx, new, instance_ids, None).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(key)
    }

    async fn api_key(&self, id: ApiKeyId) -> StoreResult<ApiKey> {
        let row = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM api_keys k WHERE k.id = $1 AND k.instance_token IS NULL"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .ok_or(StoreError::NotFound)?;
        key_from(&row)
    }

    async fn api_key_by_hash(&self, hash: &SecretHash) -> StoreResult<Option<ApiKey>> {
        let row = sqlx::query(concat!("SELECT ", key_cols!(), " FROM api_keys k WHERE k.secret_hash = $1"))
            .bind(&hash[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(key_from).transpose()
    }

    async fn api_keys_page(
        &self,
        org: OrgId,
        after: Option<ApiKeyId>,
        limit: u32,
    ) -> StoreResult<Vec<ApiKey>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM api_keys k WHERE k.org_id = $1 AND k.instance_token IS NULL \
             AND k.id > $2 ORDER BY k.id LIMIT $3"
        ))
        .bind(org.0)
        .bind(after.map_or(Uuid::nil(), |a| a.0))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(key_from).collect()
    }

    async fn revoke_api_key(&self, id: ApiKeyId, at: OffsetDateTime) -> StoreResult<ApiKey> {
        // Revoking again keeps the first time: the audit trail already points at it.
        let row = sqlx::query(concat!(
            "UPDATE api_keys k SET revoked_at = COALESCE(k.revoked_at, $2) \
             WHERE k.id = $1 AND k.instance_token IS NULL RETURNING ",
            key_cols!()
        ))
        .bind(id.0)
        .bind(at)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .ok_or(StoreError::NotFound)?;
        key_from(&row)
    }

    async fn set_api_key_rate_limit(&self, id: ApiKeyId, rate: Option<Rate>) -> StoreResult<ApiKey> {
        let row = sqlx::query(concat!(
            "UPDATE api_keys k SET rate_per_second = $2, rate_burst = $3 \
             WHERE k.id = $1 AND k.instance_token IS NULL RETURNING ",
            key_cols!()
        ))
        .bind(id.0)
        .bind(rate.map(|r| int(r.per_second)))
        .bind(rate.map(|r| int(r.burst)))
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .ok_or(StoreError::NotFound)?;
        key_from(&row)
    }

    async fn touch_api_keys(&self, used: &[(ApiKeyId, OffsetDateTime)]) -> StoreResult<()> {
        if used.is_empty() {
            return Ok(());
        }
        let (ids, ats): (Vec<Uuid>, Vec<OffsetDateTime>) = used.iter().map(|(id, at)| (id.0, *at)).unzip();
        // Grouped first: UPDATE ... FROM with several rows for one key applies an arbitrary one.
        // Batches from replicas can arrive out of order, so last use only ever moves forward.
        sqlx::query(
            "UPDATE api_keys k SET last_used_at = t.at \
             FROM (SELECT id, max(at) AS at FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, at) \
                   GROUP BY id) t \
             WHERE k.id = t.id AND (k.last_used_at IS NULL OR k.last_used_at < t.at)",
        )
        .bind(ids)
        .bind(ats)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    async fn append_audit(&self, entry: NewAuditEntry) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_logs \
             (id, org_id, actor_user_id, actor, action, target, ip, user_agent, outcome, detail, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(AuditId::new().0)
        .bind(entry.org_id.map(|o| o.0))
        .bind(entry.actor_user_id.map(|u| u.0))
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(&entry.ip)
        .bind(&entry.user_agent)
        .bind(entry.outcome.as_str())
        .bind(&entry.detail)
        .bind(OffsetDateTime::now_utc())
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, "audit entry"))?;
        Ok(())
    }

    async fn audit_logs(&self, org: OrgId, query: &AuditQuery) -> StoreResult<Vec<AuditEntry>> {
        self.audit_page(Some(org), query).await
    }

    async fn deployment_audit_logs(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEntry>> {
        self.audit_page(None, query).await
    }

    async fn prune_audit(&self, before: OffsetDateTime, limit: u32) -> StoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM audit_logs WHERE id IN \
             (SELECT id FROM audit_logs WHERE created_at < $1 ORDER BY created_at, id LIMIT $2)",
        )
        .bind(before)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(|e| db_error(e, "audit entry"))?;
        Ok(done.rows_affected())
    }

    async fn plan_rates(&self) -> StoreResult<Vec<(Plan, Rate)>> {
        let rows: Vec<(String, i32, i32)> =
            sqlx::query_as("SELECT plan, per_second, burst FROM plan_rate_limits ORDER BY plan")
                .fetch_all(&self.pool)
                .await
                .map_err(unavailable)?;
        rows.into_iter()
            .map(|(plan, p, b)| {
                let parsed = Plan::parse(&plan).ok_or_else(|| corrupt("plan", &plan))?;
                let per_second = u32::try_from(p).map_err(|_| corrupt("per_second", p))?;
                let burst = u32::try_from(b).map_err(|_| corrupt("burst", b))?;
                Ok((parsed, Rate { per_second, burst }))
            })
            .collect()
    }

    async fn set_plan_rate(&self, plan: Plan, rate: Option<Rate>) -> StoreResult<()> {
        let q = match rate {
            Some(r) => sqlx::query(
                "INSERT INTO plan_rate_limits (plan, per_second, burst) VALUES ($1, $2, $3) \
                 ON CONFLICT (plan) DO UPDATE SET per_second = excluded.per_second, burst = excluded.burst",
            )
            .bind(plan.as_str())
            .bind(int(r.per_second))
            .bind(int(r.burst)),
            None => sqlx::query("DELETE FROM plan_rate_limits WHERE plan = $1").bind(plan.as_str()),
        };
        q.execute(&self.pool).await.map_err(unavailable)?;
        Ok(())
    }

    async fn counts(&self) -> StoreResult<Counts> {
        let (users, orgs, instances): (i64, i64, i64) = sqlx::query_as("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM organizations), (SELECT count(*) FROM redis_instances)")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(Counts {
            users: to_u64("user count", users)?,
            organizations: to_u64("organization count", orgs)?,
            instances: to_u64("instance count", instances)?,
        })
    }

    // Usage history.

    async fn append_usage(&self, rows: &[UsageRow]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        match insert_usage(&self.pool, rows).await {
            // An instance deleted between the EXISTS and the foreign key's check: once more,
            // and the EXISTS leaves its rows out.
            Err(StoreError::NotFound) => insert_usage(&self.pool, rows).await,
            other => other,
        }
    }

    async fn usage(
        &self,
        instance: InstanceId,
        since: OffsetDateTime,
        finest_to: Resolution,
    ) -> StoreResult<Vec<UsageRow>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            usage_cols!(),
            " FROM usage_samples WHERE instance_id = $1 AND start_unix >= $2 AND resolution <= $3 \
             ORDER BY start_unix, id"
        ))
        .bind(instance.0)
        .bind(since.unix_timestamp())
        .bind(finest_to.seconds())
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(usage_from).collect()
    }

    async fn roll_up_usage(
        &self,
        from: Resolution,
        to: Resolution,
        before: OffsetDateTime,
        limit: u32,
    ) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        // Rows another replica is rolling up right now are skipped, not counted twice.
        let rows = sqlx::query(concat!(
            "SELECT id, ",
            usage_cols!(),
            " FROM usage_samples WHERE resolution = $1 AND start_unix < $2 ORDER BY start_unix, id \
             LIMIT $3 FOR UPDATE SKIP LOCKED"
        ))
        .bind(from.seconds())
        .bind(before.unix_timestamp())
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let ids = rows.iter().map(|r| get::<i64>(r, "id")).collect::<StoreResult<Vec<_>>>()?;
        let taken = rows.iter().map(usage_from).collect::<StoreResult<Vec<_>>>()?;
        sqlx::query("DELETE FROM usage_samples WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        insert_usage(&mut *tx, &usage::merge(&taken, to)).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(ids.len() as u64)
    }

    async fn prune_usage(
        &self,
        resolution: Resolution,
        before: OffsetDateTime,
        limit: u32,
    ) -> StoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM usage_samples WHERE id IN (SELECT id FROM usage_samples \
             WHERE resolution = $1 AND start_unix < $2 ORDER BY start_unix, id LIMIT $3 \
             FOR UPDATE SKIP LOCKED)",
        )
        .bind(resolution.seconds())
        .bind(before.unix_timestamp())
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected())
    }

    // Backups.

    async fn create_backup(&self, new: NewBackup, caps: BackupCaps) -> StoreResult<Backup> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        // The organization's row is the lock every create of its backups takes.
        lock_org(&mut tx, new.org_id).await?;
        let owner: Option<Uuid> = sqlx::query_scalar("SELECT org_id FROM redis_instances WHERE id = $1")
            .bind(new.instance_id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
        if owner != Some(new.org_id.0) {
            return Err(StoreError::NotFound);
        }
        let usage = sqlx::query(
            "SELECT count(*) AS n, COALESCE(sum(size_bytes) FILTER (WHERE state = 'ready'), 0)::bigint AS bytes \
             FROM backups WHERE org_id = $1",
        )
        .bind(new.org_id.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(unavailable)?;
        if to_u64("backup count", get(&usage, "n")?)? >= u64::from(caps.max_count) {
            return Err(StoreError::QuotaExceeded(Limit::MaxBackups));
        }
        if to_u64("backup bytes", get(&usage, "bytes")?)? >= caps.max_bytes {
            return Err(StoreError::QuotaExceeded(Limit::MaxBackupBytes));
        }
        let row = sqlx::query(concat!(
            "INSERT INTO backups AS b (id, instance_id, org_id, name, kind, state, size_bytes, error, object_key, created_at) \
             VALUES ($1, $2, $3, $4, $5, 'pending', 0, NULL, $6, $7) RETURNING ",
            backup_cols!()
        ))
        .bind(new.id.0)
        .bind(new.instance_id.0)
        .bind(new.org_id.0)
        .bind(&new.name)
        .bind(new.kind.as_str())
        .bind(&new.object_key)
        .bind(OffsetDateTime::now_utc())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| db_error(e, "backup"))?;
        let backup = backup_from(&row)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(backup)
    }

    async fn finish_backup(
        &self,
        id: BackupId,
        state: BackupState,
        size_bytes: u64,
        error: Option<&str>,
    ) -> StoreResult<Backup> {
        let row = sqlx::query(concat!(
            "UPDATE backups AS b SET state = $2, size_bytes = $3, error = $4 WHERE b.id = $1 RETURNING ",
            backup_cols!()
        ))
        .bind(id.0)
        .bind(state.as_str())
        .bind(to_i64("backup size", size_bytes)?)
        .bind(error)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?
        .ok_or(StoreError::NotFound)?;
        backup_from(&row)
    }

    async fn backup(&self, id: BackupId) -> StoreResult<Backup> {
        let row = sqlx::query(concat!("SELECT ", backup_cols!(), " FROM backups b WHERE b.id = $1"))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?
            .ok_or(StoreError::NotFound)?;
        backup_from(&row)
    }

    async fn backups(&self, instance: InstanceId) -> StoreResult<Vec<Backup>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            backup_cols!(),
            " FROM backups b WHERE b.instance_id = $1 ORDER BY b.created_at DESC, b.id DESC"
        ))
        .bind(instance.0)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter().map(backup_from).collect()
    }

    async fn delete_backup(&self, id: BackupId) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM backups WHERE id = $1")
            .bind(id.0)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        if done.rows_affected() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    async fn set_backup_schedule(
        &self,
        instance: InstanceId,
        schedule: Option<(u32, OffsetDateTime)>,
    ) -> StoreResult<Option<BackupSchedule>> {
        let Some((retention_days, first_run_at)) = schedule else {
            let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM redis_instances WHERE id = $1")
                .bind(instance.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
            exists.ok_or(StoreError::NotFound)?;
            sqlx::query("DELETE FROM backup_schedules WHERE instance_id = $1")
                .bind(instance.0)
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
            return Ok(None);
        };
        // A foreign-key violation (no such instance) maps to NotFound.
        sqlx::query(
            "INSERT INTO backup_schedules (instance_id, retention_days, next_run_at) VALUES ($1, $2, $3) \
             ON CONFLICT (instance_id) DO UPDATE SET retention_days = excluded.retention_days, \
             next_run_at = excluded.next_run_at",
        )
        .bind(instance.0)
        .bind(to_i32("retention days", retention_days)?)
        .bind(first_run_at)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        self.backup_schedule(instance).await
    }

    async fn backup_schedule(&self, instance: InstanceId) -> StoreResult<Option<BackupSchedule>> {
        let row = sqlx::query(SCHEDULE_SELECT)
            .bind(instance.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.as_ref().map(schedule_from).transpose()
    }

    async fn claim_due_backup(
        &self,
        now: OffsetDateTime,
        next: OffsetDateTime,
        among: &[InstanceId],
    ) -> StoreResult<Option<BackupSchedule>> {
        let among: Vec<Uuid> = among.iter().map(|i| i.0).collect();
        // SKIP LOCKED: a row another replica is claiming right now is not waited for; once
        // that claim commits, the row's new next_run_at fails the re-checked `<= $1`.
        let row = sqlx::query(
            "UPDATE backup_schedules s SET next_run_at = $2 \
             FROM (SELECT instance_id, next_run_at AS was FROM backup_schedules \
                   WHERE next_run_at <= $1 AND instance_id = ANY($3) \
                   ORDER BY next_run_at LIMIT 1 FOR UPDATE SKIP LOCKED) d, \
                  redis_instances i \
             WHERE s.instance_id = d.instance_id AND i.id = s.instance_id AND s.next_run_at <= $1 \
             RETURNING s.instance_id, i.org_id, s.retention_days, d.was AS next_run_at",
        )
        .bind(now)
        .bind(next)
        .bind(&among)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(schedule_from).transpose()
    }

    // Change feed (rows written by the triggers of migration 0160).

    async fn changes_after(&self, after: i64, limit: u32) -> StoreResult<Option<Vec<Change>>> {
        // Two statements under READ COMMITTED, the rows first: a prune committed between
        // the two has raised the watermark by then, so a cursor it overtook answers None,
        // never a list with a hole.
        let rows = sqlx::query(
            "SELECT seq, subject_kind, subject_id, at FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        let watermark: i64 = sqlx::query_scalar("SELECT seq FROM change_watermark")
            .fetch_one(&self.pool)
            .await
            .map_err(unavailable)?;
        if after < watermark {
            Ok(None)
        } else {
            rows.iter().map(change_from).collect::<StoreResult<_>>().map(Some)
        }
    }

    async fn last_change(&self) -> StoreResult<i64> {
        sqlx::query_scalar(
            "SELECT GREATEST(COALESCE((SELECT max(seq) FROM changes), 0), (SELECT seq FROM change_watermark))",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)
    }

    async fn prune_changes(&self, before: OffsetDateTime) -> StoreResult<u64> {
        // Everything up to the newest old row goes, so what is left is every row above one
        // seq even when the clock stepped back. Concurrent prunes (replicas) are safe: the
        // later one's DELETE skips the rows the earlier one took, and the watermark only rises.
        let gone: i64 = sqlx::query_scalar(
            "WITH cut AS (SELECT max(seq) AS seq FROM changes WHERE at < $1),                   gone AS (DELETE FROM changes c USING cut WHERE c.seq <= cut.seq RETURNING c.seq),                   mark AS (UPDATE change_watermark w SET seq = GREATEST(w.seq, (SELECT max(seq) FROM gone))                            WHERE EXISTS (SELECT 1 FROM gone))              SELECT count(*) FROM gone",
        )
        .bind(before)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        to_u64("pruned changes", gone)
    }
}

/// Inserts usage rows in one statement (one array per column), leaving out those of
/// instances that are gone (deleted since they were sampled).
async fn insert_usage<'c, E>(conn: E, rows: &[UsageRow]) -> StoreResult<()>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    let values: Vec<Values> = rows.iter().map(Values::of).collect();
    let column = |f: fn(&Values) -> i64| values.iter().map(f).collect::<Vec<i64>>();
    let server = |i: usize| values.iter().map(|v| v.server[i]).collect::<Vec<Option<i64>>>();
    sqlx::query(concat!(
        "INSERT INTO usage_samples (",
        usage_cols!(),
        ") SELECT u.* FROM UNNEST($1::uuid[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], \
         $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], \
         $13::bigint[]) AS u (",
        usage_cols!(),
        ") WHERE EXISTS (SELECT 1 FROM redis_instances i WHERE i.id = u.instance_id)"
    ))
    .bind(values.iter().map(|v| v.instance_id).collect::<Vec<Uuid>>())
    .bind(column(|v| v.resolution))
    .bind(column(|v| v.start))
    .bind(column(|v| v.reads))
    .bind(column(|v| v.writes))
    .bind(column(|v| v.errors))
    .bind(values.iter().map(|v| v.latency.clone()).collect::<Vec<String>>())
    .bind(server(0))
    .bind(server(1))
    .bind(server(2))
    .bind(server(3))
    .bind(server(4))
    .bind(server(5))
    .execute(conn)
    .await
    .map_err(unavailable)?;
    Ok(())
}
