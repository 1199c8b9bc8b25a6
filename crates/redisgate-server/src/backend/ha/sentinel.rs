//! A Sentinel instance: the primary is whatever the sentinels name for `master_name`, once the
//! server itself answers ROLE `master`.
//!
//! One task asks the sentinels (`SENTINEL get-master-addr-by-name`) every
//! `backend.health_check_interval`, and at once when a sentinel publishes `+switch-master` for
//! this master (a second task subscribes to it, on one sentinel after another). A new address
//! gets a plain backend of its own; it becomes the primary only once it answers ROLE `master`,
//! and the old one is stopped then. Until that moment requests keep going to the old primary,
//! which during a failover is down: they get 503 + `Retry-After` at once, never a wait, and a
//! command in flight when it died is reported lost, never re-sent. Every address a sentinel
//! names is dialled through the egress policy, like the sentinels themselves.
//!
//! With `read_from_replicas`, single read-only commands (Redis' `readonly` flag, no scripts)
//! go round-robin to the replicas the sentinels list as healthy, and to the primary when none
//! is connected; batches and transactions always go to the primary.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSub};
use redis::{AsyncConnectionConfig, FromRedisValue as _, Value};
use redisgate_core::catalog;
use redisgate_core::topology::{SentinelSpec, node_url, parse_address};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{Dialer, NodeStatus, Script, address, parts, send, status_of};
use crate::backend::{Backend, BackendError};

/// A server of the topology with its backend.
#[derive(Clone)]
struct Node {
    host: String,
    port: u16,
    backend: Arc<Backend>,
}

pub struct Sentinel {
    dial: Dialer,
    spec: SentinelSpec,
    sentinels: Vec<(String, u16)>,
    /// The verified primary; `None` until the first one answered ROLE `master`.
    primary: watch::Sender<Option<Node>>,
    replicas: RwLock<Vec<Node>>,
    next_replica: AtomicUsize,
    /// A sentinel announced a switch: ask again now.
    wake: Notify,
}

impl Sentinel {
    /// Starts following the primary on `dial.tracker`, until `dial.stop` fires.
    pub fn start(dial: Dialer, spec: SentinelSpec) -> Arc<Self> {
        let sentinels = spec.sentinels.iter().filter_map(|a| parse_address(a)).collect();
        let me = Arc::new(Sentinel {
            dial,
            spec,
            sentinels,
            primary: watch::Sender::new(None),
            replicas: RwLock::default(),
            next_replica: AtomicUsize::new(0),
            wake: Notify::new(),
        });
        let stop = me.dial.stop.clone();
        me.dial.tracker.spawn(Arc::clone(&me).follow(stop.clone()));
        me.dial.tracker.spawn(Arc::clone(&me).listen(stop));
        me
    }

    pub fn is_up(&self) -> bool {
        self.primary.borrow().as_ref().is_some_and(|n| n.backend.is_up())
    }

    pub fn current_primary(&self) -> Option<Arc<Backend>> {
        self.primary.borrow().as_ref().map(|n| Arc::clone(&n.backend))
    }

    /// The primary's backend; before the first one is known, waits for it at most one
    /// connect timeout.
    pub async fn primary(&self) -> Result<Arc<Backend>, BackendError> {
        if let Some(b) = self.current_primary() {
            return Ok(b);
        }
        let mut rx = self.primary.subscribe();
        let known = tokio::time::timeout(self.dial.cfg.connect_timeout, rx.wait_for(Option::is_some)).await;
        match known {
            Ok(Ok(node)) => Ok(Arc::clone(&node.as_ref().expect("waited for Some").backend)),
            _ => Err(self.dial.unavailable("no primary is known yet")),
        }
    }

    pub async fn run(&self, cmd: &redis::Cmd, script: Script) -> Result<Value, BackendError> {
        if script.is_none()
            && self.spec.read_from_replicas
            && let Some(replica) = self.replica_for(cmd)
        {
            match replica.run(cmd).await {
                // Not sent: the primary may answer instead.
                Err(BackendError::Unavailable { .. }) => {}
                other => return other,
            }
        }
        send(&*self.primary().await?, cmd, script).await
    }

    /// A connected replica when `cmd` only reads.
    fn replica_for(&self, cmd: &redis::Cmd) -> Option<Arc<Backend>> {
        let name = std::str::from_utf8(parts(cmd).first()?).ok()?.to_ascii_uppercase();
        if !catalog::find(&name).is_some_and(|s| s.has(catalog::READONLY)) {
            return None;
        }
        let replicas = self.replicas.read().expect("replicas lock");
        let up: Vec<&Node> = replicas.iter().filter(|n| n.backend.is_up()).collect();
        if up.is_empty() {
            return None;
        }
        let i = self.next_replica.fetch_add(1, Ordering::Relaxed) % up.len();
        Some(Arc::clone(&up[i].backend))
    }

    pub fn nodes(&self) -> Vec<NodeStatus> {
        let mut out: Vec<NodeStatus> = self
            .sentinels
            .iter()
            .map(|(h, p)| NodeStatus { address: address(h, *p), role: "sentinel", status: "listed" })
            .collect();
        if let Some(n) = &*self.primary.borrow() {
            out.push(NodeStatus {
                address: address(&n.host, n.port),
                role: "primary",
                status: status_of(&n.backend),
            });
        }
        for n in self.replicas.read().expect("replicas lock").iter() {
            out.push(NodeStatus {
                address: address(&n.host, n.port),
                role: "replica",
                status: status_of(&n.backend),
            });
        }
        out
    }

    /// Asks the sentinels for the primary (and replicas) every health-check interval, and at
    /// once on `+switch-master`.
    async fn follow(self: Arc<Self>, stop: CancellationToken) {
        let mut conn: Option<(usize, MultiplexedConnection)> = None;
        loop {
            match self.ask(&mut conn, "get-master-addr-by-name").await {
                Some(Value::Array(addr)) => match <(String, u16)>::from_redis_value(Value::Array(addr)) {
                    Ok((host, port)) => self.use_primary(host, port).await,
                    Err(_) => {
                        tracing::warn!(backend = %self.dial.label, "a sentinel answered an unusable address")
                    }
                },
                Some(_) => {
                    tracing::warn!(backend = %self.dial.label, "the sentinels do not know this master name")
                }
                None => {}
            }
            if self.spec.read_from_replicas
                && let Some(replicas) = self.ask(&mut conn, "replicas").await
            {
                self.use_replicas(replicas);
            }
            tokio::select! {
                () = tokio::time::sleep(self.dial.cfg.health_check_interval) => {}
                () = self.wake.notified() => {}
                () = stop.cancelled() => break,
            }
        }
        // The backends stop with the instance's; drop their handles.
        self.primary.send_replace(None);
        self.replicas.write().expect("replicas lock").clear();
    }

    /// `SENTINEL <sub> <master_name>` on the first sentinel that answers.
    async fn ask(&self, conn: &mut Option<(usize, MultiplexedConnection)>, sub: &str) -> Option<Value> {
        let mut cmd = redis::cmd("SENTINEL");
        cmd.arg(sub).arg(&self.spec.master_name);
        let start = conn.as_ref().map_or(0, |(i, _)| *i);
        for k in 0..self.sentinels.len() {
            let i = (start + k) % self.sentinels.len();
            if conn.as_ref().is_none_or(|(j, _)| *j != i) {
                *conn = self.connect_sentinel(i).await.map(|c| (i, c));
            }
            let Some((_, c)) = conn.as_mut() else { continue };
            match c.send_packed_command(&cmd).await {
                Ok(Value::ServerError(e)) => {
                    tracing::warn!(backend = %self.dial.label, error = e.code(), "a sentinel refused the question");
                    *conn = None;
                }
                Ok(v) => return Some(v),
                Err(_) => *conn = None,
            }
        }
        None
    }

    fn sentinel_url(&self, i: usize) -> String {
        let (host, port) = &self.sentinels[i];
        let spec = &self.spec;
        node_url(host, *port, spec.tls, spec.sentinel_username.as_deref(), spec.sentinel_password.as_deref())
    }

    async fn connect_sentinel(&self, i: usize) -> Option<MultiplexedConnection> {
        let client = redis::Client::open(self.sentinel_url(i)).ok()?;
        let timeout = self.dial.cfg.connect_timeout;
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_dns_resolver(self.dial.egress.clone());
        match tokio::time::timeout(timeout, client.get_multiplexed_async_connection_with_config(&cfg)).await {
            Ok(Ok(c)) => Some(c),
            Ok(Err(e)) => {
                tracing::warn!(backend = %self.dial.label, sentinel = i, error = crate::backend::short_reason(&e), "cannot connect to a sentinel");
                None
            }
            Err(_) => None,
        }
    }

    /// Makes `host:port` the primary once it says it is one.
    async fn use_primary(&self, host: String, port: u16) {
        let same = self.primary.borrow().as_ref().is_some_and(|n| n.host == host && n.port == port);
        if same {
            return;
        }
        let Some(backend) = self.dial.node(&host, port) else { return };
        let limit = self.dial.cfg.connect_timeout + self.dial.cfg.response_timeout;
        let role = tokio::time::timeout(limit, backend.run(&redis::cmd("ROLE"))).await;
        let is_primary = match &role {
            Ok(Ok(Value::Array(parts))) => {
                matches!(parts.first(), Some(Value::BulkString(r)) if r.as_slice() == b"master")
            }
            _ => false,
        };
        if !is_primary {
            tracing::info!(backend = %self.dial.label, "the server the sentinels name is not (yet) a primary");
            backend.stop();
            return;
        }
        tracing::info!(backend = %self.dial.label, primary = %address(&host, port), "following a new primary");
        metrics::counter!(crate::backend::TOPOLOGY_CHANGES, "kind" => "sentinel").increment(1);
        let old = self.primary.send_replace(Some(Node { host, port, backend }));
        if let Some(old) = old {
            old.backend.stop();
        }
    }

    /// Keeps a backend per healthy replica the sentinels list.
    fn use_replicas(&self, listed: Value) {
        let Ok(list) = <Vec<HashMap<String, String>>>::from_redis_value(listed) else { return };
        let healthy: Vec<(String, u16)> = list
            .iter()
            .filter(|r| {
                let flags = r.get("flags").map_or("", String::as_str);
                !flags.split(',').any(|f| matches!(f, "s_down" | "o_down" | "disconnected"))
                    && r.get("master-link-status").is_some_and(|s| s == "ok")
            })
            .filter_map(|r| Some((r.get("ip")?.clone(), r.get("port")?.parse().ok()?)))
            .collect();
        let mut replicas = self.replicas.write().expect("replicas lock");
        replicas.retain(|n| {
            let keep = healthy.iter().any(|(h, p)| *h == n.host && *p == n.port);
            if !keep {
                n.backend.stop();
            }
            keep
        });
        for (host, port) in healthy {
            if !replicas.iter().any(|n| n.host == host && n.port == port)
                && let Some(backend) = self.dial.node(&host, port)
            {
                replicas.push(Node { host, port, backend });
            }
        }
    }

    /// Subscribes to `+switch-master` on one sentinel after another, and wakes [`Self::follow`]
    /// when this master switched.
    async fn listen(self: Arc<Self>, stop: CancellationToken) {
        let prefix = format!("{} ", self.spec.master_name);
        for i in (0..self.sentinels.len()).cycle() {
            let subscribed = tokio::select! {
                s = tokio::time::timeout(self.dial.cfg.connect_timeout, self.subscribe(i)) => s,
                () = stop.cancelled() => return,
            };
            if let Ok(Ok(pubsub)) = subscribed {
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        m = messages.next() => match m {
                            Some(m) if m.get_payload_bytes().starts_with(prefix.as_bytes()) => {
                                self.wake.notify_one();
                            }
                            Some(_) => {}
                            None => break,
                        },
                        () = stop.cancelled() => return,
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.dial.cfg.retry_delay) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    async fn subscribe(&self, i: usize) -> redis::RedisResult<PubSub> {
        let client = redis::Client::open(self.sentinel_url(i))?;
        let info = client.get_connection_info();
        let stream = crate::egress::dial(info, &self.dial.egress, None).await?;
        let mut pubsub = PubSub::new(info.redis_settings(), stream).await?;
        pubsub.subscribe("+switch-master").await?;
        Ok(pubsub)
    }
}
