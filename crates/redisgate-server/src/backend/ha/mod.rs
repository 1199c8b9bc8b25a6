//! Sentinel and Cluster instances (docs/BACKENDS.md): a [`Routed`] backend sends each call to
//! the plain [`Backend`]s of the servers it picks, so every rule of one server holds per server
//! (a command is sent once; 503 + `Retry-After` while a server is down or unknown; bounded
//! connects and replies), and every server it dials passes the egress policy at connect time,
//! whether the owner listed it or a sentinel or cluster node announced it.
//!
//! - [`sentinel`]: the primary as the sentinels name it, verified with ROLE, followed on
//!   `+switch-master`; reads may go to replicas.
//! - [`cluster`]: the slot map from CLUSTER NODES; MOVED/ASK followed, pipelines split per
//!   node, SCAN and the keyspace-wide commands across the primaries.

pub mod cluster;
pub mod sentinel;

use std::sync::Arc;
use std::time::Duration;

use redis::Value;
use redisgate_core::policy::Access;
use redisgate_core::topology::node_url;
use redisgate_provision::SharedResolver;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::script::Kinds;
use super::{Backend, BackendError};
use crate::config::BackendSettings;

/// A script call's access and kill kinds; `None` for plain commands.
pub type Script = Option<(Access, Kinds)>;

/// The router of a Sentinel or Cluster instance's backend.
pub enum Routed {
    Sentinel(Arc<sentinel::Sentinel>),
    Cluster(Arc<cluster::Cluster>),
}

/// One server of a Sentinel or Cluster instance, as its owner sees it in the API.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct NodeStatus {
    /// `host:port`, as listed or announced.
    pub address: String,
    /// `sentinel`, `primary` or `replica`.
    pub role: &'static str,
    /// `up` (connected), `down` (not connected; the same word whatever the cause, as for
    /// external instances), `unused` (a cluster replica: commands go to primaries) or
    /// `listed` (a sentinel: asked in turn, not held connected).
    pub status: &'static str,
}

impl Routed {
    /// Whether every server requests need is connected.
    pub fn is_up(&self) -> bool {
        match self {
            Routed::Sentinel(s) => s.is_up(),
            Routed::Cluster(c) => c.is_up(),
        }
    }

    pub async fn run(&self, cmd: &redis::Cmd, script: Script) -> Result<Value, BackendError> {
        match self {
            Routed::Sentinel(s) => s.run(cmd, script).await,
            Routed::Cluster(c) => c.run(cmd, script).await,
        }
    }

    pub async fn run_batch(
        &self,
        pipe: &redis::Pipeline,
        count: usize,
        script: Script,
    ) -> Result<Vec<Value>, BackendError> {
        match self {
            Routed::Sentinel(s) => send_batch(&*s.primary().await?, pipe, count, script).await,
            Routed::Cluster(c) => c.run_batch(pipe, count, script).await,
        }
    }

    /// The server a stream (SSE) connects to: the primary; for a cluster, the node of
    /// `channel`'s slot, or any primary (classic pub/sub reaches every node).
    pub async fn stream_node(&self, channel: Option<&[u8]>) -> Result<Arc<Backend>, BackendError> {
        match self {
            Routed::Sentinel(s) => s.primary().await,
            Routed::Cluster(c) => c.stream_node(channel).await,
        }
    }

    /// Every server known now, with its role and status.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        match self {
            Routed::Sentinel(s) => s.nodes(),
            Routed::Cluster(c) => c.nodes(),
        }
    }

    /// The primaries' backends (stats add their INFO up).
    pub fn primaries(&self) -> Vec<Arc<Backend>> {
        match self {
            Routed::Sentinel(s) => s.current_primary().into_iter().collect(),
            Routed::Cluster(c) => c.primaries(),
        }
    }

    /// Waits up to `timeout` until [`Routed::is_up`].
    pub async fn ready(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_up() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// What opening a server of a topology needs: plain backends that dial through the egress
/// policy, stop with the instance's backend, and carry the topology's credentials.
pub struct Dialer {
    pub label: String,
    pub egress: SharedResolver,
    pub cfg: BackendSettings,
    pub tracker: TaskTracker,
    /// The instance backend's stop: these backends stop with it.
    pub stop: CancellationToken,
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Dialer {
    /// A supervised backend of the server at `host:port`; it connects only if the egress
    /// policy admits the address (when it does not, it stays down and says "unreachable").
    pub fn node(&self, host: &str, port: u16) -> Option<Arc<Backend>> {
        let url = node_url(host, port, self.tls, self.username.as_deref(), self.password.as_deref());
        let client = redis::Client::open(url).ok()?;
        let label = format!("{} node {host}:{port}", self.label);
        Some(Backend::start_checked(
            label,
            client,
            self.egress.clone(),
            super::Hold::Always,
            self.cfg.clone(),
            &self.tracker,
            self.stop.clone(),
        ))
    }

    pub fn unavailable(&self, reason: &str) -> BackendError {
        BackendError::Unavailable { reason: reason.into(), retry_after: self.cfg.retry_delay }
    }
}

/// One command on `node`, over its script path when it is a script.
pub async fn send(node: &Backend, cmd: &redis::Cmd, script: Script) -> Result<Value, BackendError> {
    match script {
        Some((access, kinds)) => node.run_script(cmd, access, kinds).await,
        None => node.run(cmd).await,
    }
}

/// A batch on `node`, over its script path when it holds scripts.
pub async fn send_batch(
    node: &Backend,
    pipe: &redis::Pipeline,
    count: usize,
    script: Script,
) -> Result<Vec<Value>, BackendError> {
    match script {
        Some((access, kinds)) => node.run_script_batch(pipe, count, access, kinds).await,
        None => node.run_batch(pipe, count).await,
    }
}

/// The command's parts (name first) as byte slices.
pub fn parts(cmd: &redis::Cmd) -> Vec<&[u8]> {
    cmd.args_iter()
        .filter_map(|a| match a {
            redis::Arg::Simple(b) => Some(b),
            _ => None,
        })
        .collect()
}

/// A Redis error reply built from its text (`CODE message`), as Redis would send it.
pub fn error_reply(text: &str) -> Value {
    redis::parse_redis_value(format!("-{text}\r\n").as_bytes())
        .unwrap_or_else(|_| Value::SimpleString(text.to_owned()))
}

/// `host:port` of a node, bracketing IPv6 hosts.
pub fn address(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

fn status_of(backend: &Backend) -> &'static str {
    if backend.is_up() { "up" } else { "down" }
}
