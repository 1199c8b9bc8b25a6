//! Redis instances: what a user asked for, and what state it is in.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{InstanceId, OrgId};

/// Who runs the instance's Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProvisionerKind {
    /// A supervised `redis-server` child process of RedisGate.
    Local,
    /// A Redis server the user brings (`redis://` or `rediss://`).
    External,
}

impl ProvisionerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProvisionerKind::Local => "local",
            ProvisionerKind::External => "external",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "local" => Some(Self::Local),
            "external" => Some(Self::External),
            _ => None,
        }
    }
}

/// What an external instance's Redis is: one server, a Sentinel-managed primary with its
/// replicas, or a Redis Cluster. Local instances are always `standalone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// One server at a `redis://` or `rediss://` URL.
    #[default]
    Standalone,
    /// A primary found through Redis Sentinel, followed across failovers.
    Sentinel,
    /// A Redis Cluster reached through seed nodes; commands go to their slot's node.
    Cluster,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standalone => "standalone",
            Self::Sentinel => "sentinel",
            Self::Cluster => "cluster",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Standalone, Self::Sentinel, Self::Cluster].into_iter().find(|k| k.as_str() == s)
    }
}

/// Lifecycle: `pending` → `running` → `stopped` / `error` (with a reason). Never a lie: an
/// instance whose process could not start is `error`, not `running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum InstanceStatus {
    Pending,
    Running,
    Stopped,
    Error,
}

impl InstanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Running, Self::Stopped, Self::Error].into_iter().find(|x| x.as_str() == s)
    }
}

/// What a full instance does with a write (Redis' `maxmemory-policy`). Local instances only:
/// an external server's configuration is its owner's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EvictionPolicy {
    /// Refuse writes with an OOM error (Redis' default, and ours: nothing is lost silently).
    #[default]
    Noeviction,
    AllkeysLru,
    AllkeysLfu,
    AllkeysRandom,
    VolatileLru,
    VolatileLfu,
    VolatileRandom,
    VolatileTtl,
}

impl EvictionPolicy {
    const ALL: [EvictionPolicy; 8] = [
        Self::Noeviction,
        Self::AllkeysLru,
        Self::AllkeysLfu,
        Self::AllkeysRandom,
        Self::VolatileLru,
        Self::VolatileLfu,
        Self::VolatileRandom,
        Self::VolatileTtl,
    ];

    /// The name Redis and the API use (`allkeys-lru`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Noeviction => "noeviction",
            Self::AllkeysLru => "allkeys-lru",
            Self::AllkeysLfu => "allkeys-lfu",
            Self::AllkeysRandom => "allkeys-random",
            Self::VolatileLru => "volatile-lru",
            Self::VolatileLfu => "volatile-lfu",
            Self::VolatileRandom => "volatile-random",
            Self::VolatileTtl => "volatile-ttl",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// One Redis instance.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Instance {
    pub id: InstanceId,
    pub org_id: OrgId,
    pub name: String,
    pub provisioner: ProvisionerKind,
    /// `standalone`, `sentinel` or `cluster`.
    pub kind: BackendKind,
    pub memory_bytes: u64,
    /// `maxmemory-policy` of a local instance (`noeviction` for external ones: not ours).
    pub eviction_policy: EvictionPolicy,
    pub status: InstanceStatus,
    /// Why the instance is in `error` (or `stopped`), for people.
    pub status_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eviction_policies_round_trip_under_redis_names() {
        for p in EvictionPolicy::ALL {
            assert_eq!(EvictionPolicy::parse(p.as_str()), Some(p));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
        }
        assert_eq!(EvictionPolicy::parse("lru"), None);
    }
}
