//! Plans and the per-organization limits that come with them.

use serde::{Deserialize, Serialize};

/// A billing plan; it sets the default quota of a new organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    Free,
    Pro,
    Enterprise,
}

impl Plan {
    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Pro => "pro",
            Plan::Enterprise => "enterprise",
        }
    }

    pub fn parse(s: &str) -> Option<Plan> {
        [Plan::Free, Plan::Pro, Plan::Enterprise].into_iter().find(|p| p.as_str() == s)
    }

    /// The quota an organization on this plan starts with.
    pub fn default_quota(self) -> Quota {
        const MB: u64 = 1024 * 1024;
        match self {
            Plan::Free => Quota { max_instances: 3, max_memory_bytes: 256 * MB, max_api_keys: 10 },
            Plan::Pro => Quota { max_instances: 20, max_memory_bytes: 8 * 1024 * MB, max_api_keys: 100 },
            Plan::Enterprise => {
                Quota { max_instances: 200, max_memory_bytes: 128 * 1024 * MB, max_api_keys: 1000 }
            }
        }
    }
}

/// Limits of one organization. Enforced atomically by the store: concurrent creates never
/// end above them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub max_instances: u32,
    pub max_memory_bytes: u64,
    pub max_api_keys: u32,
}

/// Which limit a create would break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    MaxInstances,
    MaxMemoryBytes,
    MaxApiKeys,
    /// Organizations one user may own (`quota.max_organizations_per_user`).
    MaxOrganizations,
    /// Pending invitations of one organization ([`crate::org::MAX_PENDING_INVITATIONS`]).
    MaxInvitations,
    /// Backups one organization keeps (`backups.max_per_org`).
    MaxBackups,
    /// Bytes of backups one organization keeps (`backups.max_bytes_per_org_mb`).
    MaxBackupBytes,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::MaxInstances => "max_instances",
            Limit::MaxMemoryBytes => "max_memory_bytes",
            Limit::MaxApiKeys => "max_api_keys",
            Limit::MaxOrganizations => "max_organizations",
            Limit::MaxInvitations => "max_invitations",
            Limit::MaxBackups => "max_backups",
            Limit::MaxBackupBytes => "max_backup_bytes",
        }
    }
}
