//! Daily backups. The schedule is in the metadata store (one row per instance with its
//! `next_run_at`), so it survives restarts; every replica runs this loop, and a due run goes
//! to whichever claims it first (`Store::claim_due_backup` moves `next_run_at` a day on in the
//! same atomic step), so it is taken once however many replicas there are. A replica claims
//! only instances it serves: a local instance's backups are taken by the replica running its
//! `redis-server`.
//!
//! Retention keeps an instance's newest `retention_days` ready daily backups (one a day, so
//! that many days) and deletes the daily backups older than those; manual backups are kept
//! until someone deletes them.

use std::sync::Arc;
use std::time::Duration;

use redisgate_core::backup::{BackupKind, BackupState};
use redisgate_core::ids::{BackupId, InstanceId};
use redisgate_core::store::StoreError;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::Backups;

/// A day between daily backups.
pub const PERIOD: time::Duration = time::Duration::DAY;

/// How often objects without a record (their instance or organization was deleted) are
/// looked for, and how old such an object must be: younger ones may belong to a backup whose
/// record is being written.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
const ORPHAN_AGE: time::Duration = time::Duration::HOUR;

impl Backups {
    /// Runs due daily backups every `backups.scheduler_interval` until `cancel`.
    pub async fn run_schedule(self: Arc<Self>, cancel: CancellationToken) {
        let mut last_sweep: Option<tokio::time::Instant> = None;
        loop {
            self.run_due().await;
            if last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
                last_sweep = Some(tokio::time::Instant::now());
                self.sweep_orphans().await;
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.scheduler_interval) => {}
                () = cancel.cancelled() => return,
            }
        }
    }

    /// Takes every daily backup due now (by the configured clock), one after another.
    pub async fn run_due(self: &Arc<Self>) {
        // Only instances served here: another replica's local instance is its own to back up.
        let served = self.instances.served();
        loop {
            let now = self.settings.clock.now();
            let due = match self.store.claim_due_backup(now, now + PERIOD, &served).await {
                Ok(Some(due)) => due,
                Ok(None) => return,
                Err(e) => return tracing::warn!(error = %e, "could not claim due daily backups"),
            };
            let name = format!("daily-{}", due.next_run_at.date());
            self.daily(due.instance_id, name, due.retention_days).await;
        }
    }

    async fn daily(self: &Arc<Self>, instance: InstanceId, name: String, retention_days: u32) {
        let rec = match self.store.instance(instance).await {
            Ok(rec) => rec,
            Err(StoreError::NotFound) => return,
            Err(e) => return tracing::warn!(instance.id = %instance, error = %e, "daily backup skipped"),
        };
        let backup = match self.record(&rec, name, BackupKind::Daily).await {
            Ok(b) => b,
            Err(e) => {
                return tracing::warn!(instance.id = %instance, error = ?e, "daily backup not taken");
            }
        };
        let taken = self.take(&rec, &backup).await;
        if taken.state == BackupState::Ready {
            self.prune(instance, retention_days).await;
        }
    }

    /// Deletes the daily backups older than the newest `retention_days` ready ones.
    async fn prune(&self, instance: InstanceId, retention_days: u32) {
        let Ok(all) = self.store.backups(instance).await else { return };
        let mut ready = 0;
        let mut expired = Vec::new();
        for b in all.into_iter().filter(|b| b.kind == BackupKind::Daily) {
            if ready >= retention_days && b.state != BackupState::Pending {
                expired.push(b);
            } else if b.state == BackupState::Ready {
                ready += 1;
            }
        }
        for b in expired {
            match self.delete(&b).await {
                Ok(()) => tracing::info!(backup.id = %b.id, instance.id = %instance, "daily backup expired"),
                Err(e) => tracing::warn!(backup.id = %b.id, error = ?e, "could not delete an expired backup"),
            }
        }
    }

    /// Deletes objects whose record is gone (deleted with their instance or organization).
    async fn sweep_orphans(&self) {
        let keys = match self.storage.keys().await {
            Ok(k) => k,
            Err(e) => return tracing::warn!(error = %e, "could not list backup storage"),
        };
        let old_enough = OffsetDateTime::now_utc() - ORPHAN_AGE;
        for (key, modified) in keys {
            if modified > old_enough {
                continue;
            }
            let id = key.rsplit('/').next().and_then(|f| f.strip_suffix(".rdb"));
            let Some(id) = id.and_then(|s| s.parse::<BackupId>().ok()) else { continue };
            if matches!(self.store.backup(id).await, Err(StoreError::NotFound)) {
                match self.storage.delete(&key).await {
                    Ok(()) => tracing::info!(backup.id = %id, "orphaned backup object deleted"),
                    Err(e) => tracing::warn!(error = %e, "could not delete an orphaned backup object"),
                }
            }
        }
    }
}
