//! API keys: `rg_<id>_<secret>`, shown once, stored as SHA-256 only.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{ApiKeyId, InstanceId, OrgId};
use crate::policy::Access;

/// What a key may run on the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Read commands only.
    ReadOnly,
    /// Every command safe on a shared connection.
    ReadWrite,
    /// Read-write plus gated commands (FLUSHALL, FLUSHDB, scripting).
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ReadOnly => "read-only",
            Scope::ReadWrite => "read-write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Scope::ReadOnly, Scope::ReadWrite, Scope::Admin].into_iter().find(|x| x.as_str() == s)
    }

    pub fn access(self) -> Access {
        match self {
            Scope::ReadOnly => Access::ReadOnly,
            Scope::ReadWrite | Scope::Admin => Access::ReadWrite,
        }
    }
}

/// A key's metadata (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub org_id: OrgId,
    pub name: String,
    pub scope: Scope,
    /// `None`: every instance of the organization.
    pub instance_ids: Option<Vec<InstanceId>>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl ApiKey {
    /// Usable at `now`: not revoked, not expired.
    pub fn is_active(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }

    /// May reach `instance`.
    pub fn allows_instance(&self, instance: InstanceId) -> bool {
        self.instance_ids.as_ref().is_none_or(|ids| ids.contains(&instance))
    }
}
