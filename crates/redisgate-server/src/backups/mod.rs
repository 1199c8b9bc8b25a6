//! Backups of instances and restores from them (docs/BACKUPS.md).
//!
//! Every backup is an RDB file in backup storage ([`storage`]), recorded in the metadata
//! store with its state (`pending` → `ready` | `failed`):
//! - a local instance's is the RDB its own `redis-server` writes on `BGSAVE`: a point-in-time
//!   snapshot, taken by fork;
//! - an external instance's is made key by key (SCAN, then DUMP and PTTL of each key) into a
//!   scratch `redis-server` ([`scratch`]) that then SAVEs it: each key is exact as of the
//!   moment it was read, but the keys are not one snapshot.
//!
//! A restore starts a scratch server on the backup's RDB, empties the target (FLUSHALL) and
//! copies every key with its type, value and remaining TTL (RESTORE … REPLACE): the same for
//! any target, local or external, the backup's own instance or another of the organization.
//! Creating an instance from an uploaded RDB is that restore into a new local instance, once
//! `redis-check-rdb` has read the file.
//!
//! [`schedule`] takes the daily backups and keeps each instance's last `retention_days`.

pub mod schedule;
pub mod scratch;
pub mod storage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use redisgate_core::backup::{Backup, BackupCaps, BackupKind, BackupState, NewBackup};
use redisgate_core::ids::BackupId;
use redisgate_core::instance::ProvisionerKind;
use redisgate_core::store::{InstanceRecord, Store, StoreError};
use redisgate_provision::LocalProvisioner;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::scratch::{Scratch, Side};
use self::storage::Storage;
use crate::backend::Backend;
use crate::config::BackupSettings;
use crate::instances::Instances;

/// Why a backup operation did not happen.
#[derive(Debug)]
pub enum BackupError {
    Store(StoreError),
    /// The instance has no running server here to take from or restore into.
    NotRunning,
    /// The backup is not `ready` (still being taken, or failed).
    NotReady,
    /// The uploaded file is not an RDB `redis-check-rdb` can read.
    BadRdb,
    /// The data could not be copied (the target's memory, an RDB from a newer Redis, the
    /// target refused a command): for the caller, with the reason.
    Failed(String),
    /// Storage or a helper process failed: for the operator's log.
    Internal(String),
}

impl std::fmt::Display for BackupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackupError::Store(e) => write!(f, "{e}"),
            BackupError::NotRunning => f.write_str("the instance is not running"),
            BackupError::NotReady => f.write_str("the backup is not ready"),
            BackupError::BadRdb => f.write_str("not a valid RDB file"),
            BackupError::Failed(r) | BackupError::Internal(r) => f.write_str(r),
        }
    }
}

impl From<StoreError> for BackupError {
    fn from(e: StoreError) -> Self {
        BackupError::Store(e)
    }
}

/// The backup service: one per application, shared by the API and the scheduler.
pub struct Backups {
    store: Arc<dyn Store>,
    instances: Arc<Instances>,
    local: Arc<LocalProvisioner>,
    storage: Storage,
    /// Private scratch space (0700): RDB files in transit and scratch servers' directories.
    work: PathBuf,
    redis_server: PathBuf,
    settings: BackupSettings,
    /// Backups and restores at once (`backups.max_concurrent`); the rest queue.
    slots: tokio::sync::Semaphore,
    /// One BGSAVE-and-move at a time: two would race for the instance's one `dump.rdb`.
    bgsave: tokio::sync::Mutex<()>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

/// Polling a BGSAVE's progress.
const BGSAVE_POLL: Duration = Duration::from_millis(20);

impl Backups {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        instances: Arc<Instances>,
        local: Arc<LocalProvisioner>,
        storage: Storage,
        data_dir: &Path,
        redis_server: PathBuf,
        settings: BackupSettings,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> anyhow::Result<Arc<Backups>> {
        let work = std::path::absolute(data_dir.join("backups").join("work"))?;
        // Left over from a crash: nothing in it is needed any more.
        let _ = std::fs::remove_dir_all(&work);
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&work).map_err(|e| anyhow::anyhow!("creating {}: {e}", work.display()))?;
        Ok(Arc::new(Backups {
            store,
            instances,
            local,
            storage,
            work,
            redis_server,
            slots: tokio::sync::Semaphore::new(settings.max_concurrent),
            settings,
            bgsave: tokio::sync::Mutex::new(()),
            tracker,
            cancel,
        }))
    }

    pub fn settings(&self) -> &BackupSettings {
        &self.settings
    }

    fn caps(&self) -> BackupCaps {
        BackupCaps {
            max_count: self.settings.max_per_org,
            max_bytes: self.settings.max_mb_per_org.saturating_mul(1024 * 1024),
        }
    }

    /// Records a `pending` backup of the instance (within the organization's caps) and takes
    /// it in the background; its state says when it is `ready` or why it `failed`.
    pub async fn create(
        self: &Arc<Self>,
        rec: &InstanceRecord,
        name: String,
        kind: BackupKind,
    ) -> Result<Backup, BackupError> {
        let backup = self.record(rec, name, kind).await?;
        let (me, rec, pending) = (Arc::clone(self), rec.clone(), backup.clone());
        self.tracker.spawn(async move { me.take(&rec, &pending).await });
        Ok(backup)
    }

    async fn record(
        &self,
        rec: &InstanceRecord,
        name: String,
        kind: BackupKind,
    ) -> Result<Backup, BackupError> {
        let inst = &rec.instance;
        if self.instances.backend(inst.id).is_none() {
            return Err(BackupError::NotRunning);
        }
        let id = BackupId::new();
        let new = NewBackup {
            id,
            instance_id: inst.id,
            org_id: inst.org_id,
            name,
            kind,
            object_key: format!("{}/{}/{id}.rdb", inst.org_id, inst.id),
        };
        Ok(self.store.create_backup(new, self.caps()).await?)
    }

    /// Takes a recorded backup now and records how it ended.
    async fn take(&self, rec: &InstanceRecord, backup: &Backup) -> Backup {
        let outcome = tokio::select! {
            r = tokio::time::timeout(self.settings.timeout, self.take_and_store(rec, backup)) => {
                r.unwrap_or_else(|_| Err("the backup took longer than backups.timeout".into()))
            }
            () = self.cancel.cancelled() => Err("RedisGate stopped during the backup".into()),
        };
        let finished = match outcome {
            Ok(size) => {
                tracing::info!(backup.id = %backup.id, instance.id = %rec.instance.id, size_bytes = size, "backup ready");
                self.store.finish_backup(backup.id, BackupState::Ready, size, None).await
            }
            Err(reason) => {
                tracing::warn!(backup.id = %backup.id, instance.id = %rec.instance.id, %reason, "backup failed");
                let _ = self.storage.delete(&backup.object_key).await;
                self.store.finish_backup(backup.id, BackupState::Failed, 0, Some(&reason)).await
            }
        };
        match finished {
            Ok(b) => b,
            Err(e) => {
                // Deleted (with its instance) while it was being taken: its object goes too.
                let _ = self.storage.delete(&backup.object_key).await;
                tracing::info!(backup.id = %backup.id, error = %e, "backup ended after its record went");
                backup.clone()
            }
        }
    }

    async fn take_and_store(&self, rec: &InstanceRecord, backup: &Backup) -> Result<u64, String> {
        let _slot = self.slots.acquire().await.map_err(|_| "shutting down".to_owned())?;
        let backend = self.instances.backend(rec.instance.id).ok_or("the instance is not running")?.1;
        match rec.instance.provisioner {
            ProvisionerKind::Local => {
                let dir = tempfile::Builder::new()
                    .prefix("b")
                    .tempdir_in(&self.work)
                    .map_err(|e| format!("scratch directory: {e}"))?;
                let file = dir.path().join("dump.rdb");
                self.bgsave_into(&backend, rec, &file).await?;
                self.storage.put_file(&backup.object_key, &file).await
            }
            ProvisionerKind::External => {
                let scratch = self.scratch(None).await?;
                scratch::copy_keys(&Side::Backend(&backend), &scratch.side()).await?;
                let file = scratch.save().await?;
                self.storage.put_file(&backup.object_key, &file).await
            }
        }
    }

    async fn scratch(&self, rdb: Option<&Path>) -> Result<Scratch, String> {
        let memory = self.settings.max_scratch_memory_mb.saturating_mul(1024 * 1024);
        Scratch::start(&self.redis_server, &self.work, rdb, memory, self.settings.timeout).await
    }

    /// BGSAVE on a local instance, then its `dump.rdb` moved to `out`.
    async fn bgsave_into(&self, backend: &Backend, rec: &InstanceRecord, out: &Path) -> Result<(), String> {
        let _one = self.bgsave.lock().await;
        let before = persistence(backend).await?.saves;
        loop {
            // SCHEDULE: during an AOF rewrite the save starts right after it.
            match backend.run(redis::cmd("BGSAVE").arg("SCHEDULE")).await.map_err(|e| e.to_string())? {
                redis::Value::ServerError(e) if e.to_string().contains("in progress") => {
                    tokio::time::sleep(BGSAVE_POLL).await;
                }
                redis::Value::ServerError(e) => return Err(format!("BGSAVE: {e}")),
                _ => break,
            }
        }
        loop {
            let p = persistence(backend).await?;
            if !p.in_progress && p.saves > before {
                if !p.last_ok {
                    return Err("the instance's BGSAVE failed (see its redis.log)".into());
                }
                break;
            }
            tokio::time::sleep(BGSAVE_POLL).await;
        }
        let rdb = self.local.data_dir(rec.instance.id).join("dump.rdb");
        // The instance persists to its AOF; the RDB is ours to take away.
        if tokio::fs::rename(&rdb, out).await.is_err() {
            tokio::fs::copy(&rdb, out).await.map_err(|e| format!("copying the instance's RDB: {e}"))?;
            let _ = tokio::fs::remove_file(&rdb).await;
        }
        Ok(())
    }

    /// Deletes a backup's object and record. One being taken cannot be deleted yet; one left
    /// `pending` by a crash can, once older than any take may run (`backups.timeout`).
    pub async fn delete(&self, backup: &Backup) -> Result<(), BackupError> {
        let stale = time::OffsetDateTime::now_utc() - self.settings.timeout;
        if backup.state == BackupState::Pending && backup.created_at > stale {
            return Err(BackupError::NotReady);
        }
        self.storage.delete(&backup.object_key).await.map_err(BackupError::Internal)?;
        Ok(self.store.delete_backup(backup.id).await?)
    }

    /// A ready backup's RDB: its size and its bytes.
    pub async fn download(
        &self,
        backup: &Backup,
    ) -> Result<
        (u64, futures_util::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>),
        BackupError,
    > {
        if backup.state != BackupState::Ready {
            return Err(BackupError::NotReady);
        }
        self.storage.stream(&backup.object_key).await.map_err(BackupError::Internal)
    }

    /// Replaces the target's data with the backup's: every key, type, value and TTL. Answers
    /// how many keys were restored.
    pub async fn restore(&self, backup: &Backup, target: &InstanceRecord) -> Result<u64, BackupError> {
        if backup.state != BackupState::Ready {
            return Err(BackupError::NotReady);
        }
        let _slot = self.slots.acquire().await.map_err(|_| BackupError::Internal("shutting down".into()))?;
        let dir = self.work_dir()?;
        let file = dir.path().join("restore.rdb");
        self.storage.fetch_to(&backup.object_key, &file).await.map_err(BackupError::Internal)?;
        self.restore_file(&file, target).await
    }

    /// Loads `file` (an RDB) into the target, replacing its data.
    pub async fn restore_file(&self, file: &Path, target: &InstanceRecord) -> Result<u64, BackupError> {
        let backend = self.instances.backend(target.instance.id).ok_or(BackupError::NotRunning)?.1;
        let run = async {
            let scratch = self.scratch(Some(file)).await?;
            let to = Side::Backend(&backend);
            to.flush_all().await?;
            scratch::copy_keys(&scratch.side(), &to).await
        };
        match tokio::time::timeout(self.settings.timeout, run).await {
            Ok(Ok(n)) => {
                tracing::info!(instance.id = %target.instance.id, keys = n, "restored");
                Ok(n)
            }
            Ok(Err(reason)) => Err(BackupError::Failed(reason)),
            Err(_) => Err(BackupError::Failed("the restore took longer than backups.timeout".into())),
        }
    }

    /// A private directory for one operation's files, removed when dropped.
    pub fn work_dir(&self) -> Result<tempfile::TempDir, BackupError> {
        tempfile::Builder::new()
            .prefix("u")
            .tempdir_in(&self.work)
            .map_err(|e| BackupError::Internal(format!("scratch directory: {e}")))
    }

    /// Whether `file` is an RDB `redis-check-rdb` reads to the end.
    pub async fn check_rdb(&self, file: &Path) -> Result<(), BackupError> {
        match scratch::check_rdb(&self.settings.redis_check_rdb, file, self.settings.timeout).await {
            Ok(()) => Ok(()),
            Err(scratch::RdbCheck::Invalid) => Err(BackupError::BadRdb),
            Err(scratch::RdbCheck::Unavailable) => {
                Err(BackupError::Internal("redis-check-rdb (backups.redis_check_rdb) cannot be run".into()))
            }
        }
    }

    /// One of the `backups.max_concurrent` turns: an upload holds it from its first byte to
    /// the end of its restore, so uploads in flight (and their files) are bounded too.
    pub async fn turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, BackupError> {
        self.slots.acquire().await.map_err(|_| BackupError::Internal("shutting down".into()))
    }
}

/// What `INFO persistence` says about RDB saves.
struct Persistence {
    saves: u64,
    in_progress: bool,
    last_ok: bool,
}

async fn persistence(backend: &Backend) -> Result<Persistence, String> {
    let text = match backend.run(redis::cmd("INFO").arg("persistence")).await.map_err(|e| e.to_string())? {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::VerbatimString { text, .. } => text,
        other => return Err(format!("unexpected INFO reply: {other:?}")),
    };
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(|v| v.trim().to_owned()))
    };
    Ok(Persistence {
        saves: field("rdb_saves").and_then(|v| v.parse().ok()).ok_or("INFO has no rdb_saves (Redis 7+)")?,
        in_progress: field("rdb_bgsave_in_progress").as_deref() != Some("0"),
        last_ok: field("rdb_last_bgsave_status").as_deref() == Some("ok"),
    })
}
