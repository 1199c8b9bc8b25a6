//! Who runs an instance's Redis: the [`Provisioner`] trait, implemented in
//! `redisgate-provision` by the local (supervised `redis-server` child processes) and
//! external (a server the user brings) provisioners.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::ids::InstanceId;
use crate::instance::InstanceStatus;

/// A Redis connection URL that may carry a password: shown nowhere, logged never.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    pub fn new(url: String) -> Self {
        RedisUrl(url)
    }

    /// The URL itself, for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RedisUrl(<redacted>)")
    }
}

/// What a provisioner needs to start an instance.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub id: InstanceId,
    /// `maxmemory` for a local instance (bytes).
    pub memory_bytes: u64,
    /// `maxmemory-policy` for a local instance.
    pub eviction_policy: crate::instance::EvictionPolicy,
    /// For external instances: the server to use.
    pub external_url: Option<RedisUrl>,
    /// For external `rediss://` instances: the CA (PEM) to verify the server against instead
    /// of the platform's roots.
    pub tls_ca_pem: Option<String>,
}

/// What the owner of an external instance is told when its server cannot be used, whatever
/// the cause (refused, timed out, wrong password, TLS, or an address the egress policy
/// refuses): telling them apart would make RedisGate a port scanner of its own network.
pub const UNREACHABLE: &str = "could not connect to the server; check the URL, the password and that the server accepts connections from RedisGate";

/// Why an instance could not be provisioned; the text is safe to show to its owner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvisionError {
    #[error("{0}")]
    Failed(String),
    /// An external server could not be used. Shown as [`UNREACHABLE`]; the cause (redacted,
    /// no secrets) is for logs and deployment administrators only.
    #[error("{UNREACHABLE}")]
    Unreachable(String),
    #[error("instance not known to this provisioner")]
    Unknown,
}

/// Status changes the provisioner observes on its own (a crash, a restart), reported as
/// they happen so the store never shows a stale status.
pub type StatusSink = Arc<dyn Fn(InstanceId, InstanceStatus, Option<String>) + Send + Sync>;

#[async_trait]
pub trait Provisioner: Send + Sync + 'static {
    /// Starts the instance (or, after a RedisGate restart, starts it again on its existing
    /// data) and returns how to reach it once it answers PING.
    async fn start(&self, spec: &InstanceSpec) -> Result<RedisUrl, ProvisionError>;
    /// Gives the running instance's server a new password, live (connections already
    /// authenticated stay, nothing is lost) and for its restarts, and returns the new URL.
    /// Only a provisioner that owns the server's password can; others answer `Unknown`.
    async fn rotate_password(&self, spec: &InstanceSpec) -> Result<RedisUrl, ProvisionError> {
        let _ = spec;
        Err(ProvisionError::Unknown)
    }
    /// Stops it and removes its data for good.
    async fn destroy(&self, id: InstanceId) -> Result<(), ProvisionError>;
    /// Stops every instance it runs (RedisGate is shutting down); data is kept.
    async fn shutdown(&self);
}
