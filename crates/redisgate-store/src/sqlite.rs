//! The embedded store: one SQLite file in WAL mode.
//!
//! SQLite has one writer at a time, which is what makes the quota and last-owner rules easy
//! to keep: every read-then-write step runs in a `BEGIN IMMEDIATE` transaction, so it takes
//! the write lock before it reads and concurrent steps queue behind the busy timeout instead
//! of failing with `SQLITE_BUSY` on a lock upgrade, or deciding on a stale snapshot.
//!
//! Timestamps are stored as fixed-width UTC RFC 3339 text with microseconds (see
//! `ts`), so SQL comparisons on the text order instants correctly and values read back
//! are exactly what was returned when written.

use std::path::Path;
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
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use time::{OffsetDateTime, UtcOffset};
use uuid::Uuid;

use crate::db_error;
use crate::usage::{Values, usage_cols, usage_from};

/// Long enough to ride out a burst of queued writers, short enough that a stuck lock
/// surfaces as an error rather than a hung request.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Readers run in parallel under WAL; writers queue on the database lock anyway, so more
/// connections than this only add memory.
const MAX_CONNECTIONS: u32 = 8;

/// Audit pages: what `limit: 0` means, and the most one call returns.
const AUDIT_DEFAULT_LIMIT: u32 = 50;
const AUDIT_MAX_LIMIT: u32 = 500;

/// The metadata store in one SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

/// The database holds password hashes, session and key digests and the audit log: only its
/// owner may read it. Creates the missing parent directories 0700 (an existing one is left
/// as it is: it may be shared, like `/tmp`), creates the file 0600 before SQLite does (which
/// would follow the umask; SQLite gives its `-wal` and `-shm` files the database file's mode),
/// and tightens the file and its `-wal`/`-shm` to 0600 when they exist already.
fn private_files(path: &Path) -> Result<std::fs::File, StoreError> {
    let failed = |what: &Path, e: std::io::Error| StoreError::Unavailable(format!("{}: {e}", what.display()));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        let mut dir = std::fs::DirBuilder::new();
        dir.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut dir, 0o700);
        dir.create(parent).map_err(|e| failed(parent, e))?;
    }
    let mut file = std::fs::OpenOptions::new();
    file.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
    let opened = file.open(path).map_err(|e| failed(path, e))?;
    #[cfg(unix)]
    for suffix in ["", "-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt as _;
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let p = Path::new(&name);
        match std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(p, e)),
            _ => {}
        }
    }
    Ok(opened)
}

/// Holds `file` (the database file itself) locked exclusively (`flock`, which SQLite's own
/// POSIX locks do not see) until the returned handle is dropped; waits for it on a blocking
/// thread, since the holder may be a task of this very runtime.
async fn exclusive(file: std::fs::File, path: &Path) -> Result<std::fs::File, StoreError> {
    let what = path.display().to_string();
    tokio::task::spawn_blocking(move || file.lock().map(|()| file))
        .await
        .map_err(|e| StoreError::Unavailable(format!("locking {what}: {e}")))?
        .map_err(|e| StoreError::Unavailable(format!("locking {what}: {e}")))
}

impl SqliteStore {
    /// Opens (creating the file and its parent directory if needed, private: see
    /// [`private_files`]) the database at `path`
    /// and brings its schema up to date. `":memory:"` gives a private in-memory database,
    /// for tests.
    pub async fn open(path: &str) -> Result<SqliteStore, StoreError> {
        let base = SqliteConnectOptions::new()
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .statement_cache_capacity(128)
            // 1 MiB of pages per connection, not SQLite's 2 MiB: the pool's 8 connections each
            // fill their own cache, and the operating system caches the file for all of them.
            .pragma("cache_size", "-1024");
        // Replicas sharing the file may start at the same moment, and sqlx's SQLite migrator
        // takes no lock of its own: two of them would apply one migration twice. The first to
        // lock the file migrates; the others wait and find nothing left to do.
        let mut migrating = None;
        let pool = if path == ":memory:" {
            // Every connection to ":memory:" is its own database, so the pool must hold
            // exactly one connection and never let it go.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(base.in_memory(true))
                .await
        } else {
            let file = private_files(Path::new(path))?;
            migrating = Some(exclusive(file, Path::new(path)).await?);
            SqlitePoolOptions::new()
                .max_connections(MAX_CONNECTIONS)
                .connect_with(
                    base.filename(path)
                        .create_if_missing(true)
                        .journal_mode(SqliteJournalMode::Wal)
                        // With WAL, NORMAL loses at most the last commits on power loss, never
                        // consistency, and saves an fsync per commit.
                        .synchronous(SqliteSynchronous::Normal),
                )
                .await
        }
        .map_err(db)?;
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrating the SQLite store: {e}")))?;
        drop(migrating);
        Ok(SqliteStore { pool })
    }

    /// A transaction holding the write lock from its first statement; see the module docs.
    async fn write_tx(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)
    }
}

// ---------------------------------------------------------------------------------------
// Values in and out.

/// The one text form of a timestamp: UTC, six fractional digits. Fixed width is what makes
/// `<` on the text agree with `<` on instants (RFC 3339 from `time` drops trailing zeros,
/// and "…00Z" sorts after "…00.5Z").
fn ts(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// `t` as it will read back: UTC, truncated to microseconds.
fn stored(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(UtcOffset::UTC);
    t.replace_nanosecond(t.microsecond() * 1_000).expect("microseconds times 1000 is a valid nanosecond")
}

fn now() -> OffsetDateTime {
    stored(OffsetDateTime::now_utc())
}

/// SQLite integers are signed 64-bit; a limit or size above that is beyond any real
/// deployment, so it is kept as the largest storable value.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn db(e: sqlx::Error) -> StoreError {
    db_error(e, "record")
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("unreadable {what} in the SQLite store: {detail}"))
}

fn get<'r, T>(row: &'r SqliteRow, col: &str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(col).map_err(|e| corrupt(col, e))
}

fn get_enum<T>(row: &SqliteRow, col: &str, parse: fn(&str) -> Option<T>) -> StoreResult<T> {
    let s: String = get(row, col)?;
    parse(&s).ok_or_else(|| corrupt(col, format!("{s:?}")))
}

fn get_u64(row: &SqliteRow, col: &str) -> StoreResult<u64> {
    let v: i64 = get(row, col)?;
    u64::try_from(v).map_err(|e| corrupt(col, e))
}

fn get_u32(row: &SqliteRow, col: &str) -> StoreResult<u32> {
    let v: i64 = get(row, col)?;
    u32::try_from(v).map_err(|e| corrupt(col, e))
}

/// The column lists each mapper below reads, kept next to the mappers so the two agree.
/// Organization and key columns are unqualified because SQLite's RETURNING cannot name a
/// table alias; no column of `organizations` clashes with `memberships` in `orgs_of`.
macro_rules! user_cols {
    () => {
        "u.id, u.email, u.is_admin, u.created_at"
    };
}
macro_rules! org_cols {
    () => {
        "id, name, plan, max_instances, max_memory_bytes, max_api_keys, created_at"
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
macro_rules! key_cols {
    () => {
        "id, org_id, name, scope, instance_ids, rate_per_second, rate_burst, expires_at, revoked_at, \
         last_used_at, created_at"
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
        "id, org_id, email, role, invited_by, expires_at, accepted_at, revoked_at, created_at"
    };
}

fn invitation_from(row: &SqliteRow) -> StoreResult<Invitation> {
    let email: String = get(row, "email")?;
    Ok(Invitation {
        id: InvitationId(get(row, "id")?),
        org_id: OrgId(get(row, "org_id")?),
        email: Email::parse(&email).map_err(|e| corrupt("email", e))?,
        role: get_enum(row, "role", Role::parse)?,
        invited_by: get::<Option<Uuid>>(row, "invited_by")?.map(UserId),
        expires_at: get(row, "expires_at")?,
        accepted_at: get(row, "accepted_at")?,
        revoked_at: get(row, "revoked_at")?,
        created_at: get(row, "created_at")?,
    })
}

fn user_from(row: &SqliteRow) -> StoreResult<User> {
    let email: String = get(row, "email")?;
    Ok(User {
        id: UserId(get(row, "id")?),
        email: Email::parse(&email).map_err(|e| corrupt("email", e))?,
        is_admin: get(row, "is_admin")?,
        created_at: get(row, "created_at")?,
    })
}

fn org_from(row: &SqliteRow) -> StoreResult<Organization> {
    Ok(Organization {
        id: OrgId(get(row, "id")?),
        name: get(row, "name")?,
        plan: get_enum(row, "plan", Plan::parse)?,
        quota: Quota {
            max_instances: get_u32(row, "max_instances")?,
            max_memory_bytes: get_u64(row, "max_memory_bytes")?,
            max_api_keys: get_u32(row, "max_api_keys")?,
        },
        created_at: get(row, "created_at")?,
    })
}

fn member_from(row: &SqliteRow) -> StoreResult<Member> {
    Ok(Member {
        org_id: OrgId(get(row, "org_id")?),
        user_id: UserId(get(row, "user_id")?),
        email: get(row, "email")?,
        role: get_enum(row, "role", Role::parse)?,
        joined_at: get(row, "joined_at")?,
    })
}

fn instance_from(row: &SqliteRow) -> StoreResult<InstanceRecord> {
    Ok(InstanceRecord {
        instance: Instance {
            id: InstanceId(get(row, "id")?),
            org_id: OrgId(get(row, "org_id")?),
            name: get(row, "name")?,
            provisioner: get_enum(row, "provisioner", ProvisionerKind::parse)?,
            kind: get_enum(row, "kind", BackendKind::parse)?,
            memory_bytes: get_u64(row, "memory_bytes")?,
            eviction_policy: get_enum(row, "eviction_policy", EvictionPolicy::parse)?,
            status: get_enum(row, "status", InstanceStatus::parse)?,
            status_reason: get(row, "status_reason")?,
            created_at: get(row, "created_at")?,
        },
        sealed_url: get(row, "sealed_url")?,
        tls_ca_pem: get(row, "tls_ca_pem")?,
    })
}

fn key_from(row: &SqliteRow) -> StoreResult<ApiKey> {
    let instance_ids: Option<String> = get(row, "instance_ids")?;
    Ok(ApiKey {
        id: ApiKeyId(get(row, "id")?),
        org_id: OrgId(get(row, "org_id")?),
        name: get(row, "name")?,
        scope: get_enum(row, "scope", Scope::parse)?,
        instance_ids: instance_ids
            .map(|s| serde_json::from_str(&s).map_err(|e| corrupt("instance_ids", e)))
            .transpose()?,
        rate_limit: rate_from(get(row, "rate_per_second")?, get(row, "rate_burst")?)?,
        expires_at: get(row, "expires_at")?,
        revoked_at: get(row, "revoked_at")?,
        last_used_at: get(row, "last_used_at")?,
        created_at: get(row, "created_at")?,
    })
}

/// Inserts an API key, or with `token` one of an instance's tokens (its kind, instance and
/// sealed text), in `tx`; quotas are the caller's.
async fn insert_key(
    tx: &mut Transaction<'static, Sqlite>,
    new: NewApiKey,
    instance_ids: Option<String>,
    token: Option<(TokenKind, InstanceId, &[u8])>,
) -> StoreResult<ApiKey> {
    let key = ApiKey {
        id: new.id,
        org_id: new.org_id,
        name: new.name,
        scope: new.scope,
        instance_ids: new.instance_ids,
        rate_limit: new.rate_limit,
        expires_at: new.expires_at.map(stored),
        revoked_at: None,
        last_used_at: None,
        created_at: now(),
    };
    sqlx::query(
        "INSERT INTO api_keys \
             (id, org_id, name, scope, instance_ids, expires_at, secret_hash, created_by, created_at, \
              rate_per_second, rate_burst, instance_token, token_instance_id, sealed_key) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )
    .bind(key.id.0)
    .bind(key.org_id.0)
    .bind(&key.name)
    .bind(key.scope.as_str())
    .bind(instance_ids)
    .bind(key.expires_at.map(ts))
    .bind(&new.secret_hash[..])
    .bind(new.created_by.map(|u| u.0))
    .bind(ts(key.created_at))
    .bind(key.rate_limit.map(|r| i64::from(r.per_second)))
    .bind(key.rate_limit.map(|r| i64::from(r.burst)))
    .bind(token.map(|t| t.0.as_str()))
    .bind(token.map(|t| t.1.0))
    .bind(token.map(|t| t.2))
    .execute(&mut **tx)
    .await
    .map_err(|e| db_error(e, "api key"))?;
    Ok(key)
}

fn rate_from(per_second: Option<i64>, burst: Option<i64>) -> StoreResult<Option<Rate>> {
    match (per_second, burst) {
        (Some(p), Some(b)) => Ok(Some(Rate {
            per_second: u32::try_from(p).map_err(|e| corrupt("rate_per_second", e))?,
            burst: u32::try_from(b).map_err(|e| corrupt("rate_burst", e))?,
        })),
        _ => Ok(None),
    }
}

fn audit_from(row: &SqliteRow) -> StoreResult<AuditEntry> {
    Ok(AuditEntry {
        id: AuditId(get(row, "id")?),
        org_id: get::<Option<Uuid>>(row, "org_id")?.map(OrgId),
        actor_user_id: get::<Option<Uuid>>(row, "actor_user_id")?.map(UserId),
        actor: get(row, "actor")?,
        action: get(row, "action")?,
        target: get(row, "target")?,
        ip: get(row, "ip")?,
        user_agent: get(row, "user_agent")?,
        outcome: get_enum(row, "outcome", Outcome::parse)?,
        detail: get(row, "detail")?,
        created_at: get(row, "created_at")?,
    })
}

macro_rules! backup_cols {
    () => {
        "id, instance_id, org_id, name, kind, state, size_bytes, error, object_key, created_at"
    };
}

fn backup_from(row: &SqliteRow) -> StoreResult<Backup> {
    Ok(Backup {
        id: BackupId(get(row, "id")?),
        instance_id: InstanceId(get(row, "instance_id")?),
        org_id: OrgId(get(row, "org_id")?),
        name: get(row, "name")?,
        kind: get_enum(row, "kind", BackupKind::parse)?,
        state: get_enum(row, "state", BackupState::parse)?,
        size_bytes: get_u64(row, "size_bytes")?,
        error: get(row, "error")?,
        object_key: get(row, "object_key")?,
        created_at: get(row, "created_at")?,
    })
}

/// A schedule row joined with its instance's organization.
const SCHEDULE_SELECT: &str = "SELECT s.instance_id, i.org_id, s.retention_days, s.next_run_at \
     FROM backup_schedules s JOIN redis_instances i ON i.id = s.instance_id WHERE s.instance_id = ?1";

fn schedule_from(row: &SqliteRow) -> StoreResult<BackupSchedule> {
    Ok(BackupSchedule {
        instance_id: InstanceId(get(row, "instance_id")?),
        org_id: OrgId(get(row, "org_id")?),
        retention_days: get_u32(row, "retention_days")?,
        next_run_at: get(row, "next_run_at")?,
    })
}

fn change_from(row: &SqliteRow) -> StoreResult<Change> {
    let kind: String = get(row, "subject_kind")?;
    Ok(Change {
        seq: get(row, "seq")?,
        at: get(row, "at")?,
        subject: ChangeSubject::parse(&kind, get(row, "subject_id")?)
            .ok_or_else(|| corrupt("subject_kind", kind))?,
    })
}

fn all<T>(rows: Vec<SqliteRow>, f: fn(&SqliteRow) -> StoreResult<T>) -> StoreResult<Vec<T>> {
    rows.iter().map(f).collect()
}

/// One member with the e-mail, read inside the caller's transaction.
async fn member_in(tx: &mut Transaction<'static, Sqlite>, org: OrgId, user: UserId) -> StoreResult<Member> {
    let row = sqlx::query(concat!(
        "SELECT ",
        member_cols!(),
        " FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.org_id = ?1 AND m.user_id = ?2"
    ))
    .bind(org.0)
    .bind(user.0)
    .fetch_optional(&mut **tx)
    .await
    .map_err(db)?
    .ok_or(StoreError::NotFound)?;
    member_from(&row)
}

async fn role_in(
    tx: &mut Transaction<'static, Sqlite>,
    org: OrgId,
    user: UserId,
) -> StoreResult<Option<Role>> {
    let role: Option<String> =
        sqlx::query_scalar("SELECT role FROM memberships WHERE org_id = ?1 AND user_id = ?2")
            .bind(org.0)
            .bind(user.0)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db)?;
    role.map(|r| Role::parse(&r).ok_or_else(|| corrupt("role", r))).transpose()
}

/// Refuses when `user`, an owner, is the only owner left; the caller holds the write lock,
/// so no other owner can leave between this count and its own change.
async fn ensure_not_last_owner(tx: &mut Transaction<'static, Sqlite>, org: OrgId) -> StoreResult<()> {
    let owners: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM memberships WHERE org_id = ?1 AND role = 'owner'")
            .bind(org.0)
            .fetch_one(&mut **tx)
            .await
            .map_err(db)?;
    if owners <= 1 { Err(StoreError::LastOwner) } else { Ok(()) }
}

impl SqliteStore {
    /// One page of the audit log of `org`, or with `None` of the entries without one.
    async fn audit_page(&self, org: Option<OrgId>, query: &AuditQuery) -> StoreResult<Vec<AuditEntry>> {
        let limit = match query.limit {
            0 => AUDIT_DEFAULT_LIMIT,
            n => n.min(AUDIT_MAX_LIMIT),
        };
        // Absent filters bind NULL and drop out, which keeps the SQL one static string;
        // `IS` matches the NULL organization too, and uses the index like `=`.
        // The cursor compares (created_at, id) as a pair, the same order the page is sorted
        // by; an unknown cursor matches nothing, so it yields an empty page.
        let rows = sqlx::query(concat!(
            "SELECT ",
            audit_cols!(),
            " FROM audit_logs a WHERE a.org_id IS ?1 \
               AND (?2 IS NULL OR a.action = ?2) \
               AND (?3 IS NULL OR a.actor_user_id = ?3) \
               AND (?4 IS NULL OR a.outcome = ?4) \
               AND (?5 IS NULL OR a.created_at >= ?5) \
               AND (?6 IS NULL OR a.created_at < ?6) \
               AND (?7 IS NULL OR (a.created_at, a.id) < \
                    (SELECT b.created_at, b.id FROM audit_logs b WHERE b.id = ?7)) \
             ORDER BY a.created_at DESC, a.id DESC LIMIT ?8"
        ))
        .bind(org.map(|o| o.0))
        .bind(query.action.as_deref())
        .bind(query.actor_user_id.map(|u| u.0))
        .bind(query.outcome.map(Outcome::as_str))
        .bind(query.since.map(ts))
        .bind(query.until.map(ts))
        .bind(query.before.map(|b| b.0))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        all(rows, audit_from)
    }
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(db)?;
        Ok(())
    }

    // Users and sessions.

    async fn create_user(
        &self,
        email: &Email,
        password_hash: &str,
        admission: Admission,
    ) -> StoreResult<User> {
        let id = UserId::new();
        let created_at = now();
        // One statement, so the "no user yet" check and the insert share the write lock:
        // two first sign-ups at once cannot both become administrators, nor both get in
        // when only the first may.
        let is_admin: Option<bool> = sqlx::query_scalar(
            "INSERT INTO users (id, email, password_hash, is_admin, created_at) \
             SELECT ?1, ?2, ?3, NOT EXISTS (SELECT 1 FROM users), ?4 \
             WHERE ?5 OR NOT EXISTS (SELECT 1 FROM users) \
             RETURNING is_admin",
        )
        .bind(id.0)
        .bind(email.as_str())
        .bind(password_hash)
        .bind(ts(created_at))
        .bind(admission == Admission::Anyone)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_error(e, "email"))?;
        let is_admin = is_admin.ok_or(StoreError::RegistrationClosed)?;
        Ok(User { id, email: email.clone(), is_admin, created_at })
    }

    async fn user(&self, id: UserId) -> StoreResult<User> {
        let row = sqlx::query(concat!("SELECT ", user_cols!(), " FROM users u WHERE u.id = ?1"))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        user_from(&row)
    }

    async fn credentials(&self, email: &Email) -> StoreResult<Option<Credentials>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_cols!(),
            ", u.password_hash FROM users u WHERE u.email = ?1"
        ))
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
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
            "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(&token_hash[..])
        .bind(user.0)
        .bind(ts(now()))
        .bind(ts(expires_at))
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
              WHERE s.token_hash = ?1 AND s.revoked_at IS NULL AND s.expires_at > ?2"
        ))
        .bind(&token_hash[..])
        .bind(ts(now))
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(user_from).transpose()
    }

    async fn revoke_session(&self, token_hash: &SecretHash) -> StoreResult<()> {
        // Logging out twice, or with a token that never existed, is not an error.
        sqlx::query("UPDATE sessions SET revoked_at = COALESCE(revoked_at, ?2) WHERE token_hash = ?1")
            .bind(&token_hash[..])
            .bind(ts(now()))
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    // Organizations and members.

    async fn create_org(
        &self,
        name: &str,
        plan: Plan,
        owner: UserId,
        max_owned: u32,
    ) -> StoreResult<Organization> {
        let org = Organization {
            id: OrgId::new(),
            name: name.to_owned(),
            plan,
            quota: plan.default_quota(),
            created_at: now(),
        };
        let mut tx = self.write_tx().await?;
        // Under the write lock: parallel creates by one user count each other.
        let owned: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM memberships WHERE user_id = ?1 AND role = 'owner'")
                .bind(owner.0)
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
        if owned >= i64::from(max_owned) {
            return Err(StoreError::QuotaExceeded(Limit::MaxOrganizations));
        }
        sqlx::query(
            "INSERT INTO organizations (id, name, plan, max_instances, max_memory_bytes, max_api_keys, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(org.id.0)
        .bind(&org.name)
        .bind(plan.as_str())
        .bind(i64::from(org.quota.max_instances))
        .bind(int(org.quota.max_memory_bytes))
        .bind(i64::from(org.quota.max_api_keys))
        .bind(ts(org.created_at))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query(
            "INSERT INTO memberships (org_id, user_id, role, joined_at) VALUES (?1, ?2, 'owner', ?3)",
        )
        .bind(org.id.0)
        .bind(owner.0)
        .bind(ts(org.created_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, "member"))?;
        tx.commit().await.map_err(db)?;
        Ok(org)
    }

    async fn org(&self, id: OrgId) -> StoreResult<Organization> {
        let row = sqlx::query(concat!("SELECT ", org_cols!(), " FROM organizations WHERE id = ?1"))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        org_from(&row)
    }

    async fn orgs_of(&self, user: UserId) -> StoreResult<Vec<(Organization, Role)>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            org_cols!(),
            ", m.role FROM memberships m JOIN organizations o ON o.id = m.org_id \
              WHERE m.user_id = ?1 ORDER BY o.created_at, o.id"
        ))
        .bind(user.0)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(|row| Ok((org_from(row)?, get_enum(row, "role", Role::parse)?))).collect()
    }

    async fn rename_org(&self, id: OrgId, name: &str) -> StoreResult<Organization> {
        let row =
            sqlx::query(concat!("UPDATE organizations SET name = ?2 WHERE id = ?1 RETURNING ", org_cols!()))
                .bind(id.0)
                .bind(name)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?
                .ok_or(StoreError::NotFound)?;
        org_from(&row)
    }

    async fn delete_org(&self, id: OrgId) -> StoreResult<()> {
        // Members, instances and keys go by ON DELETE CASCADE; audit rows have no foreign key.
        let done = sqlx::query("DELETE FROM organizations WHERE id = ?1")
            .bind(id.0)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    async fn set_quota(&self, id: OrgId, quota: Quota) -> StoreResult<Organization> {
        let row = sqlx::query(concat!(
            "UPDATE organizations SET max_instances = ?2, max_memory_bytes = ?3, max_api_keys = ?4 \
             WHERE id = ?1 RETURNING ",
            org_cols!()
        ))
        .bind(id.0)
        .bind(i64::from(quota.max_instances))
        .bind(int(quota.max_memory_bytes))
        .bind(i64::from(quota.max_api_keys))
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .ok_or(StoreError::NotFound)?;
        org_from(&row)
    }

    async fn role_of(&self, org: OrgId, user: UserId) -> StoreResult<Option<Role>> {
        let role: Option<String> =
            sqlx::query_scalar("SELECT role FROM memberships WHERE org_id = ?1 AND user_id = ?2")
                .bind(org.0)
                .bind(user.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        role.map(|r| Role::parse(&r).ok_or_else(|| corrupt("role", r))).transpose()
    }

    async fn members(&self, org: OrgId) -> StoreResult<Vec<Member>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            member_cols!(),
            " FROM memberships m JOIN users u ON u.id = m.user_id \
              WHERE m.org_id = ?1 ORDER BY m.joined_at, m.user_id"
        ))
        .bind(org.0)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        all(rows, member_from)
    }

    async fn add_member(&self, org: OrgId, user: UserId, role: Role) -> StoreResult<Member> {
        let mut tx = self.write_tx().await?;
        sqlx::query("INSERT INTO memberships (org_id, user_id, role, joined_at) VALUES (?1, ?2, ?3, ?4)")
            .bind(org.0)
            .bind(user.0)
            .bind(role.as_str())
            .bind(ts(now()))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "member"))?;
        let member = member_in(&mut tx, org, user).await?;
        tx.commit().await.map_err(db)?;
        Ok(member)
    }

    async fn set_role(&self, org: OrgId, user: UserId, role: Role) -> StoreResult<Member> {
        let mut tx = self.write_tx().await?;
        let current = role_in(&mut tx, org, user).await?.ok_or(StoreError::NotFound)?;
        if current == Role::Owner && role != Role::Owner {
            ensure_not_last_owner(&mut tx, org).await?;
        }
        sqlx::query("UPDATE memberships SET role = ?3 WHERE org_id = ?1 AND user_id = ?2")
            .bind(org.0)
            .bind(user.0)
            .bind(role.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let member = member_in(&mut tx, org, user).await?;
        tx.commit().await.map_err(db)?;
        Ok(member)
    }

    async fn remove_member(&self, org: OrgId, user: UserId) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        let current = role_in(&mut tx, org, user).await?.ok_or(StoreError::NotFound)?;
        if current == Role::Owner {
            ensure_not_last_owner(&mut tx, org).await?;
        }
        sqlx::query("DELETE FROM memberships WHERE org_id = ?1 AND user_id = ?2")
            .bind(org.0)
            .bind(user.0)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    // Invitations.

    async fn create_invitation(&self, new: NewInvitation) -> StoreResult<Invitation> {
        let inv = Invitation {
            id: InvitationId::new(),
            org_id: new.org_id,
            email: new.email,
            role: new.role,
            invited_by: Some(new.invited_by),
            expires_at: stored(new.expires_at),
            accepted_at: None,
            revoked_at: None,
            created_at: now(),
        };
        let mut tx = self.write_tx().await?;
        let pending: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM invitations \
             WHERE org_id = ?1 AND accepted_at IS NULL AND revoked_at IS NULL AND expires_at > ?2",
        )
        .bind(inv.org_id.0)
        .bind(ts(inv.created_at))
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        if pending >= i64::from(MAX_PENDING_INVITATIONS) {
            return Err(StoreError::QuotaExceeded(Limit::MaxInvitations));
        }
        sqlx::query(
            "INSERT INTO invitations (id, org_id, email, role, token_hash, invited_by, expires_at, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(inv.id.0)
        .bind(inv.org_id.0)
        .bind(inv.email.as_str())
        .bind(inv.role.as_str())
        .bind(&new.token_hash[..])
        .bind(new.invited_by.0)
        .bind(ts(inv.expires_at))
        .bind(ts(inv.created_at))
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, "invitation"))?;
        tx.commit().await.map_err(db)?;
        Ok(inv)
    }

    async fn invitations(&self, org: OrgId, now: OffsetDateTime) -> StoreResult<Vec<Invitation>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            invitation_cols!(),
            " FROM invitations WHERE org_id = ?1 AND accepted_at IS NULL AND revoked_at IS NULL \
              AND expires_at > ?2 ORDER BY created_at, id"
        ))
        .bind(org.0)
        .bind(ts(now))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        all(rows, invitation_from)
    }

    async fn revoke_invitation(
        &self,
        org: OrgId,
        id: InvitationId,
        at: OffsetDateTime,
    ) -> StoreResult<Invitation> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(concat!(
            "SELECT ",
            invitation_cols!(),
            " FROM invitations WHERE id = ?1 AND org_id = ?2"
        ))
        .bind(id.0)
        .bind(org.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?
        .ok_or(StoreError::NotFound)?;
        let mut inv = invitation_from(&row)?;
        inv.usable_at(at).map_err(StoreError::Invitation)?;
        inv.revoked_at = Some(stored(at));
        sqlx::query("UPDATE invitations SET revoked_at = ?2 WHERE id = ?1")
            .bind(id.0)
            .bind(inv.revoked_at.map(ts))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(inv)
    }

    async fn invitation_by_hash(&self, token_hash: &SecretHash) -> StoreResult<Option<Invitation>> {
        let row =
            sqlx::query(concat!("SELECT ", invitation_cols!(), " FROM invitations WHERE token_hash = ?1"))
                .bind(&token_hash[..])
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        row.as_ref().map(invitation_from).transpose()
    }

    async fn accept_invitation(
        &self,
        token_hash: &SecretHash,
        invitee: Invitee<'_>,
        now: OffsetDateTime,
    ) -> StoreResult<(User, Member)> {
        let mut tx = self.write_tx().await?;
        let row =
            sqlx::query(concat!("SELECT ", invitation_cols!(), " FROM invitations WHERE token_hash = ?1"))
                .bind(&token_hash[..])
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?
                .ok_or(StoreError::NotFound)?;
        let inv = invitation_from(&row)?;
        let user = match invitee {
            Invitee::New { email, password_hash } => {
                inv.check(email, now).map_err(StoreError::Invitation)?;
                // Never the first user: the inviting organization already has an owner.
                let user = User {
                    id: UserId::new(),
                    email: email.clone(),
                    is_admin: false,
                    created_at: stored(now),
                };
                sqlx::query(
                    "INSERT INTO users (id, email, password_hash, is_admin, created_at) VALUES (?1, ?2, ?3, 0, ?4)",
                )
                .bind(user.id.0)
                .bind(user.email.as_str())
                .bind(password_hash)
                .bind(ts(user.created_at))
                .execute(&mut *tx)
                .await
                .map_err(|e| db_error(e, "email"))?;
                user
            }
            Invitee::Existing(id) => {
                let row = sqlx::query(concat!("SELECT ", user_cols!(), " FROM users u WHERE u.id = ?1"))
                    .bind(id.0)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db)?
                    .ok_or(StoreError::NotFound)?;
                let user = user_from(&row)?;
                inv.check(&user.email, now).map_err(StoreError::Invitation)?;
                user
            }
        };
        sqlx::query("INSERT INTO memberships (org_id, user_id, role, joined_at) VALUES (?1, ?2, ?3, ?4)")
            .bind(inv.org_id.0)
            .bind(user.id.0)
            .bind(inv.role.as_str())
            .bind(ts(now))
            .execute(&mut *tx)
            .await
            .map_err(|e| db_error(e, "member"))?;
        sqlx::query("UPDATE invitations SET accepted_at = ?2, accepted_by = ?3 WHERE id = ?1")
            .bind(inv.id.0)
            .bind(ts(now))
            .bind(user.id.0)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let member = member_in(&mut tx, inv.org_id, user.id).await?;
        tx.commit().await.map_err(db)?;
        Ok((user, member))
    }

    // Instances.

    async fn create_instance(&self, new: NewInstance) -> StoreResult<InstanceRecord> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query("SELECT max_instances, max_memory_bytes FROM organizations WHERE id = ?1")
            .bind(new.org_id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        let (max_instances, max_memory) =
            (get_u64(&row, "max_instances")?, get_u64(&row, "max_memory_bytes")?);
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(memory_bytes), 0) AS bytes FROM redis_instances WHERE org_id = ?1",
        )
        .bind(new.org_id.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        let (count, used) = (get_u64(&row, "n")?, get_u64(&row, "bytes")?);
        if count >= max_instances {
            return Err(StoreError::QuotaExceeded(Limit::MaxInstances));
        }
        // Widened so that a huge request cannot wrap around and slip under the limit.
        if u128::from(used) + u128::from(new.memory_bytes) > u128::from(max_memory) {
            return Err(StoreError::QuotaExceeded(Limit::MaxMemoryBytes));
        }
        let record = InstanceRecord {
            instance: Instance {
                id: new.id,
                org_id: new.org_id,
                name: new.name,
                provisioner: new.provisioner,
                kind: new.kind,
                memory_bytes: new.memory_bytes,
                eviction_policy: new.eviction_policy,
                status: InstanceStatus::Pending,
                status_reason: None,
                created_at: now(),
            },
            sealed_url: new.sealed_url,
            tls_ca_pem: new.tls_ca_pem,
        };
        let i = &record.instance;
        sqlx::query(
            "INSERT INTO redis_instances \
             (id, org_id, name, provisioner, memory_bytes, status, status_reason, sealed_url, tls_ca_pem, \
              created_at, kind, eviction_policy) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, ?7, ?8, ?9, ?10, ?11)",
        )
        .bind(i.id.0)
        .bind(i.org_id.0)
        .bind(&i.name)
        .bind(i.provisioner.as_str())
        .bind(int(i.memory_bytes))
        .bind(i.status.as_str())
        .bind(record.sealed_url.as_deref())
        .bind(record.tls_ca_pem.as_deref())
        .bind(ts(i.created_at))
        .bind(i.kind.as_str())
        .bind(i.eviction_policy.as_str())
        .execute(&mut *tx)
        .await
        .map_err(|e| db_error(e, "instance"))?;
        tx.commit().await.map_err(db)?;
        Ok(record)
    }

    async fn instance(&self, id: InstanceId) -> StoreResult<InstanceRecord> {
        let row =
            sqlx::query(concat!("SELECT ", instance_cols!(), " FROM redis_instances i WHERE i.id = ?1"))
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?
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
            " FROM redis_instances i WHERE i.org_id = ?1 AND i.id > ?2 ORDER BY i.id LIMIT ?3"
        ))
        .bind(org.0)
        .bind(after.map_or(Uuid::nil(), |a| a.0))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(|row| instance_from(row).map(|r| r.instance)).collect()
    }

    async fn all_instances(&self) -> StoreResult<Vec<InstanceRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            instance_cols!(),
            " FROM redis_instances i ORDER BY i.created_at, i.id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        all(rows, instance_from)
    }

    async fn set_instance_status(
        &self,
        id: InstanceId,
        status: InstanceStatus,
        reason: Option<&str>,
    ) -> StoreResult<()> {
        let done = sqlx::query("UPDATE redis_instances SET status = ?2, status_reason = ?3 WHERE id = ?1")
            .bind(id.0)
            .bind(status.as_str())
            .bind(reason)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    async fn delete_instance(&self, id: InstanceId) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM redis_instances WHERE id = ?1")
            .bind(id.0)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    async fn update_instance(&self, id: InstanceId, change: InstanceChange) -> StoreResult<InstanceRecord> {
        let mut tx = self.write_tx().await?;
        if let Some(bytes) = change.memory_bytes {
            let row = sqlx::query(
                "SELECT o.max_memory_bytes AS max, \
                 (SELECT COALESCE(SUM(memory_bytes), 0) FROM redis_instances \
                  WHERE org_id = i.org_id AND id != i.id) AS others \
                 FROM redis_instances i JOIN organizations o ON o.id = i.org_id WHERE i.id = ?1",
            )
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
            let (max, others) = (get_u64(&row, "max")?, get_u64(&row, "others")?);
            if u128::from(others) + u128::from(bytes) > u128::from(max) {
                return Err(StoreError::QuotaExceeded(Limit::MaxMemoryBytes));
            }
        }
        let done = sqlx::query(
            "UPDATE redis_instances SET name = COALESCE(?2, name), \
             memory_bytes = COALESCE(?3, memory_bytes), eviction_policy = COALESCE(?4, eviction_policy) \
             WHERE id = ?1",
        )
        .bind(id.0)
        .bind(change.name)
        .bind(change.memory_bytes.map(int))
        .bind(change.eviction_policy.map(EvictionPolicy::as_str))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let row =
            sqlx::query(concat!("SELECT ", instance_cols!(), " FROM redis_instances i WHERE i.id = ?1"))
                .bind(id.0)
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
        let record = instance_from(&row)?;
        tx.commit().await.map_err(db)?;
        Ok(record)
    }

    async fn replace_instance_tokens(
        &self,
        instance: InstanceId,
        tokens: Vec<NewInstanceToken>,
    ) -> StoreResult<Vec<InstanceToken>> {
        let mut tx = self.write_tx().await?;
        let known: Option<i64> = sqlx::query_scalar("SELECT 1 FROM redis_instances WHERE id = ?1")
            .bind(instance.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        known.ok_or(StoreError::NotFound)?;
        sqlx::query("DELETE FROM api_keys WHERE token_instance_id = ?1")
            .bind(instance.0)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let mut made = Vec::with_capacity(tokens.len());
        for t in tokens {
            let ids = Some(serde_json::to_string(&[instance]).map_err(|e| corrupt("instance_ids", e))?);
            let key = insert_key(&mut tx, t.key, ids, Some((t.kind, instance, &t.sealed_key))).await?;
            made.push(InstanceToken { key, kind: t.kind, sealed_key: t.sealed_key });
        }
        tx.commit().await.map_err(db)?;
        Ok(made)
    }

    async fn instance_tokens(&self, instance: InstanceId) -> StoreResult<Vec<InstanceToken>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            ", instance_token, sealed_key FROM api_keys WHERE token_instance_id = ?1 ORDER BY instance_token DESC"
        ))
        .bind(instance.0)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        all(rows, |row| {
            Ok(InstanceToken {
                key: key_from(row)?,
                kind: get_enum(row, "instance_token", TokenKind::parse)?,
                sealed_key: get(row, "sealed_key")?,
            })
        })
    }

    // API keys.

    async fn create_api_key(&self, new: NewApiKey) -> StoreResult<ApiKey> {
        let instance_ids = new
            .instance_ids
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Unavailable(format!("encoding instance ids: {e}")))?;
        let mut tx = self.write_tx().await?;
        let max: Option<i64> = sqlx::query_scalar("SELECT max_api_keys FROM organizations WHERE id = ?1")
            .bind(new.org_id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let max = max.ok_or(StoreError::NotFound)?;
        let live: i64 =
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM api_keys WHERE org_id = ?1 AND revoked_at IS NULL AND instance_token IS NULL",
            )
                .bind(new.org_id.0)
                .fetch_one(&mut *tx)
                .await
                .map_err(db)?;
        if live >= max {
            return Err(StoreError::QuotaExceeded(Limit::MaxApiKeys));
        }
        let key = insert_key(&mut tx, new, instance_ids, None).await?;
        tx.commit().await.map_err(db)?;
        Ok(key)
    }

    async fn api_key(&self, id: ApiKeyId) -> StoreResult<ApiKey> {
        let row = sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM api_keys WHERE id = ?1 AND instance_token IS NULL"
        ))
        .bind(id.0)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .ok_or(StoreError::NotFound)?;
        key_from(&row)
    }

    async fn api_key_by_hash(&self, hash: &SecretHash) -> StoreResult<Option<ApiKey>> {
        let row = sqlx::query(concat!("SELECT ", key_cols!(), " FROM api_keys WHERE secret_hash = ?1"))
            .bind(&hash[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
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
            " FROM api_keys WHERE org_id = ?1 AND instance_token IS NULL AND id > ?2 \
             ORDER BY id LIMIT ?3"
        ))
        .bind(org.0)
        .bind(after.map_or(Uuid::nil(), |a| a.0))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        all(rows, key_from)
    }

    async fn revoke_api_key(&self, id: ApiKeyId, at: OffsetDateTime) -> StoreResult<ApiKey> {
        // COALESCE keeps the first revocation time: revoking again is a no-op, not a rewrite.
        let row = sqlx::query(concat!(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) \
             WHERE id = ?1 AND instance_token IS NULL RETURNING ",
            key_cols!()
        ))
        .bind(id.0)
        .bind(ts(at))
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .ok_or(StoreError::NotFound)?;
        key_from(&row)
    }

    async fn set_api_key_rate_limit(&self, id: ApiKeyId, rate: Option<Rate>) -> StoreResult<ApiKey> {
        let row = sqlx::query(concat!(
            "UPDATE api_keys SET rate_per_second = ?2, rate_burst = ?3 \
             WHERE id = ?1 AND instance_token IS NULL RETURNING ",
            key_cols!()
        ))
        .bind(id.0)
        .bind(rate.map(|r| i64::from(r.per_second)))
        .bind(rate.map(|r| i64::from(r.burst)))
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .ok_or(StoreError::NotFound)?;
        key_from(&row)
    }

    async fn touch_api_keys(&self, used: &[(ApiKeyId, OffsetDateTime)]) -> StoreResult<()> {
        if used.is_empty() {
            return Ok(());
        }
        // One transaction per batch: one fsync instead of one per key. Batches can arrive
        // out of order, hence only ever moving the time forward; keys deleted meanwhile are
        // simply not updated.
        let mut tx = self.write_tx().await?;
        for (id, at) in used {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = ?2 \
                 WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
            )
            .bind(id.0)
            .bind(ts(*at))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    // Audit.

    async fn append_audit(&self, entry: NewAuditEntry) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_logs \
             (id, org_id, actor_user_id, actor, action, target, ip, user_agent, outcome, detail, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )
        .bind(AuditId::new().0)
        .bind(entry.org_id.map(|o| o.0))
        .bind(entry.actor_user_id.map(|u| u.0))
        .bind(entry.actor)
        .bind(entry.action)
        .bind(entry.target)
        .bind(entry.ip)
        .bind(entry.user_agent)
        .bind(entry.outcome.as_str())
        .bind(entry.detail)
        .bind(ts(now()))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn audit_logs(&self, org: OrgId, query: &AuditQuery) -> StoreResult<Vec<AuditEntry>> {
        self.audit_page(Some(org), query).await
    }

    async fn deployment_audit_logs(&self, query: &AuditQuery) -> StoreResult<Vec<AuditEntry>> {
        self.audit_page(None, query).await
    }

    async fn prune_audit(&self, before: OffsetDateTime, limit: u32) -> StoreResult<u64> {
        // Timestamps are fixed-width UTC text, so they compare as they sort.
        let done = sqlx::query(
            "DELETE FROM audit_logs WHERE id IN \
             (SELECT id FROM audit_logs WHERE created_at < ?1 ORDER BY created_at, id LIMIT ?2)",
        )
        .bind(ts(before))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected())
    }

    // Plan rate limits.

    async fn plan_rates(&self) -> StoreResult<Vec<(Plan, Rate)>> {
        let rows: Vec<(String, i64, i64)> =
            sqlx::query_as("SELECT plan, per_second, burst FROM plan_rate_limits ORDER BY plan")
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        rows.into_iter()
            .map(|(plan, p, b)| {
                let plan = Plan::parse(&plan).ok_or_else(|| corrupt("plan", &plan))?;
                Ok((plan, rate_from(Some(p), Some(b))?.expect("both columns are NOT NULL")))
            })
            .collect()
    }

    async fn set_plan_rate(&self, plan: Plan, rate: Option<Rate>) -> StoreResult<()> {
        let q = match rate {
            Some(r) => sqlx::query(
                "INSERT INTO plan_rate_limits (plan, per_second, burst) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (plan) DO UPDATE SET per_second = excluded.per_second, burst = excluded.burst",
            )
            .bind(plan.as_str())
            .bind(i64::from(r.per_second))
            .bind(i64::from(r.burst)),
            None => sqlx::query("DELETE FROM plan_rate_limits WHERE plan = ?1").bind(plan.as_str()),
        };
        q.execute(&self.pool).await.map_err(db)?;
        Ok(())
    }

    // Counters.

    async fn counts(&self) -> StoreResult<Counts> {
        let (users, orgs, instances): (i64, i64, i64) =
            sqlx::query_as("SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM organizations), (SELECT count(*) FROM redis_instances)").fetch_one(&self.pool).await.map_err(db)?;
        let count = |what: &str, n: i64| u64::try_from(n).map_err(|e| corrupt(what, e));
        Ok(Counts {
            users: count("user count", users)?,
            organizations: count("organization count", orgs)?,
            instances: count("instance count", instances)?,
        })
    }

    // Usage history.

    async fn append_usage(&self, rows: &[UsageRow]) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        // One transaction for the sampler's whole tick: one fsync.
        let mut tx = self.write_tx().await?;
        for r in rows {
            insert_usage(&mut tx, r).await?;
        }
        tx.commit().await.map_err(db)
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
            " FROM usage_samples WHERE instance_id = ?1 AND start_unix >= ?2 AND resolution <= ?3 \
             ORDER BY start_unix, id"
        ))
        .bind(instance.0)
        .bind(since.unix_timestamp())
        .bind(finest_to.seconds())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(usage_from).collect()
    }

    async fn roll_up_usage(
        &self,
        from: Resolution,
        to: Resolution,
        before: OffsetDateTime,
        limit: u32,
    ) -> StoreResult<u64> {
        // The write lock from the first statement: no other caller takes these rows.
        let mut tx = self.write_tx().await?;
        let rows = sqlx::query(concat!(
            "SELECT id, ",
            usage_cols!(),
            " FROM usage_samples WHERE resolution = ?1 AND start_unix < ?2 ORDER BY start_unix, id LIMIT ?3"
        ))
        .bind(from.seconds())
        .bind(before.unix_timestamp())
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let ids = rows.iter().map(|r| get::<i64>(r, "id")).collect::<StoreResult<Vec<_>>>()?;
        let taken = rows.iter().map(usage_from).collect::<StoreResult<Vec<_>>>()?;
        let ids_json = serde_json::to_string(&ids).map_err(|e| corrupt("usage ids", e))?;
        sqlx::query("DELETE FROM usage_samples WHERE id IN (SELECT value FROM json_each(?1))")
            .bind(ids_json)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        for r in usage::merge(&taken, to) {
            insert_usage(&mut tx, &r).await?;
        }
        tx.commit().await.map_err(db)?;
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
             WHERE resolution = ?1 AND start_unix < ?2 ORDER BY start_unix, id LIMIT ?3)",
        )
        .bind(resolution.seconds())
        .bind(before.unix_timestamp())
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected())
    }

    // Backups.

    async fn create_backup(&self, new: NewBackup, caps: BackupCaps) -> StoreResult<Backup> {
        let mut tx = self.write_tx().await?;
        let owner: Option<Uuid> = sqlx::query_scalar("SELECT org_id FROM redis_instances WHERE id = ?1")
            .bind(new.instance_id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        if owner != Some(new.org_id.0) {
            return Err(StoreError::NotFound);
        }
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, COALESCE(SUM(CASE WHEN state = 'ready' THEN size_bytes ELSE 0 END), 0) AS bytes \
             FROM backups WHERE org_id = ?1",
        )
        .bind(new.org_id.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        if get_u64(&row, "n")? >= u64::from(caps.max_count) {
            return Err(StoreError::QuotaExceeded(Limit::MaxBackups));
        }
        if get_u64(&row, "bytes")? >= caps.max_bytes {
            return Err(StoreError::QuotaExceeded(Limit::MaxBackupBytes));
        }
        let row = sqlx::query(concat!(
            "INSERT INTO backups (id, instance_id, org_id, name, kind, state, size_bytes, error, object_key, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, NULL, ?6, ?7) RETURNING ",
            backup_cols!()
        ))
        .bind(new.id.0)
        .bind(new.instance_id.0)
        .bind(new.org_id.0)
        .bind(&new.name)
        .bind(new.kind.as_str())
        .bind(&new.object_key)
        .bind(ts(now()))
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| db_error(e, "backup"))?;
        let backup = backup_from(&row)?;
        tx.commit().await.map_err(db)?;
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
            "UPDATE backups SET state = ?2, size_bytes = ?3, error = ?4 WHERE id = ?1 RETURNING ",
            backup_cols!()
        ))
        .bind(id.0)
        .bind(state.as_str())
        .bind(int(size_bytes))
        .bind(error)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        .ok_or(StoreError::NotFound)?;
        backup_from(&row)
    }

    async fn backup(&self, id: BackupId) -> StoreResult<Backup> {
        let row = sqlx::query(concat!("SELECT ", backup_cols!(), " FROM backups WHERE id = ?1"))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        backup_from(&row)
    }

    async fn backups(&self, instance: InstanceId) -> StoreResult<Vec<Backup>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            backup_cols!(),
            " FROM backups WHERE instance_id = ?1 ORDER BY created_at DESC, id DESC"
        ))
        .bind(instance.0)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        all(rows, backup_from)
    }

    async fn delete_backup(&self, id: BackupId) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM backups WHERE id = ?1")
            .bind(id.0)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 { Err(StoreError::NotFound) } else { Ok(()) }
    }

    async fn set_backup_schedule(
        &self,
        instance: InstanceId,
        schedule: Option<(u32, OffsetDateTime)>,
    ) -> StoreResult<Option<BackupSchedule>> {
        let mut tx = self.write_tx().await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM redis_instances WHERE id = ?1")
            .bind(instance.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        if exists.is_none() {
            return Err(StoreError::NotFound);
        }
        let Some((retention_days, first_run_at)) = schedule else {
            sqlx::query("DELETE FROM backup_schedules WHERE instance_id = ?1")
                .bind(instance.0)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            tx.commit().await.map_err(db)?;
            return Ok(None);
        };
        sqlx::query(
            "INSERT INTO backup_schedules (instance_id, retention_days, next_run_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (instance_id) DO UPDATE SET retention_days = excluded.retention_days, \
             next_run_at = excluded.next_run_at",
        )
        .bind(instance.0)
        .bind(i64::from(retention_days))
        .bind(ts(first_run_at))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        let row = sqlx::query(SCHEDULE_SELECT).bind(instance.0).fetch_one(&mut *tx).await.map_err(db)?;
        let schedule = schedule_from(&row)?;
        tx.commit().await.map_err(db)?;
        Ok(Some(schedule))
    }

    async fn backup_schedule(&self, instance: InstanceId) -> StoreResult<Option<BackupSchedule>> {
        let row =
            sqlx::query(SCHEDULE_SELECT).bind(instance.0).fetch_optional(&self.pool).await.map_err(db)?;
        row.as_ref().map(schedule_from).transpose()
    }

    async fn claim_due_backup(
        &self,
        now: OffsetDateTime,
        next: OffsetDateTime,
        among: &[InstanceId],
    ) -> StoreResult<Option<BackupSchedule>> {
        // Ids are 16-byte blobs: the list goes in as a JSON array of their hex forms.
        let among = serde_json::to_string(
            &among.iter().map(|i| i.0.simple().to_string().to_uppercase()).collect::<Vec<_>>(),
        )
        .map_err(|e| StoreError::Unavailable(format!("encoding instance ids: {e}")))?;
        // One writer at a time: the read and the move cannot interleave with another claim.
        let mut tx = self.write_tx().await?;
        let due: Option<Uuid> = sqlx::query_scalar(
            "SELECT instance_id FROM backup_schedules WHERE next_run_at <= ?1 \
             AND hex(instance_id) IN (SELECT value FROM json_each(?2)) ORDER BY next_run_at LIMIT 1",
        )
        .bind(ts(now))
        .bind(among)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(instance) = due else { return Ok(None) };
        let row = sqlx::query(SCHEDULE_SELECT).bind(instance).fetch_one(&mut *tx).await.map_err(db)?;
        let schedule = schedule_from(&row)?;
        sqlx::query("UPDATE backup_schedules SET next_run_at = ?2 WHERE instance_id = ?1")
            .bind(instance)
            .bind(ts(next))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Some(schedule))
    }

    // Change feed (rows written by the triggers of migration 0160).

    async fn changes_after(&self, after: i64, limit: u32) -> StoreResult<Option<Vec<Change>>> {
        // The rows first, then the watermark: a prune committed between the two has raised
        // the watermark by then, so a cursor it overtook answers None, never a list with a hole.
        let rows = sqlx::query(
            "SELECT seq, subject_kind, subject_id, at FROM changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let watermark: i64 =
            sqlx::query_scalar("SELECT seq FROM change_watermark").fetch_one(&self.pool).await.map_err(db)?;
        if after < watermark { Ok(None) } else { all(rows, change_from).map(Some) }
    }

    async fn last_change(&self) -> StoreResult<i64> {
        sqlx::query_scalar(
            "SELECT max(COALESCE((SELECT max(seq) FROM changes), 0), (SELECT seq FROM change_watermark))",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)
    }

    async fn prune_changes(&self, before: OffsetDateTime) -> StoreResult<u64> {
        // Everything up to the newest old row goes, so what is left is every row above one
        // seq even when the clock stepped back between writes.
        let mut tx = self.write_tx().await?;
        let cut: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM changes WHERE at < ?1")
            .bind(ts(before))
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        let Some(cut) = cut else { return Ok(0) };
        let done = sqlx::query("DELETE FROM changes WHERE seq <= ?1")
            .bind(cut)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("UPDATE change_watermark SET seq = max(seq, ?1)")
            .bind(cut)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(done.rows_affected())
    }
}

/// Inserts one usage row unless its instance is gone (deleted since it was sampled).
async fn insert_usage(tx: &mut Transaction<'static, Sqlite>, r: &UsageRow) -> StoreResult<()> {
    let v = Values::of(r);
    let [server_unix, keys, memory, hits, misses, connections] = v.server;
    sqlx::query(concat!(
        "INSERT INTO usage_samples (",
        usage_cols!(),
        ") SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13 \
         WHERE EXISTS (SELECT 1 FROM redis_instances WHERE id = ?1)"
    ))
    .bind(v.instance_id)
    .bind(v.resolution)
    .bind(v.start)
    .bind(v.reads)
    .bind(v.writes)
    .bind(v.errors)
    .bind(v.latency)
    .bind(server_unix)
    .bind(keys)
    .bind(memory)
    .bind(hits)
    .bind(misses)
    .bind(connections)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}
