//! Backups of an instance's data: what was taken, when, how big, and whether it is usable;
//! and the per-instance daily schedule with its retention.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{BackupId, InstanceId, OrgId};

/// Who asked for a backup: a person (`manual`, kept until deleted) or the daily schedule
/// (`daily`, deleted once older than the instance's retention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    Manual,
    Daily,
}

impl BackupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Daily => "daily",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Manual, Self::Daily].into_iter().find(|k| k.as_str() == s)
    }
}

/// `pending` while it is being taken, then `ready` (its object is complete and stored) or
/// `failed` (with a reason; nothing usable is stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupState {
    Pending,
    Ready,
    Failed,
}

impl BackupState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Ready, Self::Failed].into_iter().find(|k| k.as_str() == s)
    }
}

/// One backup.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Backup {
    pub id: BackupId,
    pub instance_id: InstanceId,
    pub org_id: OrgId,
    pub name: String,
    pub kind: BackupKind,
    pub state: BackupState,
    /// The stored RDB's size; 0 until `ready`.
    pub size_bytes: u64,
    /// Why it failed, for people.
    pub error: Option<String>,
    /// Where the object lives in backup storage (relative to its root or bucket).
    #[serde(skip)]
    pub object_key: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A backup to record (as `pending`).
#[derive(Debug, Clone)]
pub struct NewBackup {
    pub id: BackupId,
    pub instance_id: InstanceId,
    pub org_id: OrgId,
    pub name: String,
    pub kind: BackupKind,
    pub object_key: String,
}

/// What one organization may keep; `create_backup` checks both atomically with the insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupCaps {
    /// Backups of every state.
    pub max_count: u32,
    /// The sum of the `ready` backups' sizes: a create is refused once it is reached.
    pub max_bytes: u64,
}

/// An instance's daily backups: one every day from `next_run_at`, each kept `retention_days`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BackupSchedule {
    pub instance_id: InstanceId,
    pub org_id: OrgId,
    /// 1–30.
    pub retention_days: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub next_run_at: OffsetDateTime,
}

/// The retention days a schedule may have.
pub const RETENTION_DAYS: std::ops::RangeInclusive<u32> = 1..=30;
