//! A Cluster instance: commands go to the primary serving their first key's slot.
//!
//! The slot map comes from `CLUSTER NODES`, asked of a connected node (the seeds at first)
//! every `backend.health_check_interval`, and at once after a MOVED, a CLUSTERDOWN or a node
//! that cannot be reached. Each primary has a plain backend (replicas are listed, not used).
//!
//! Redirections are followed, since a node that answers MOVED, ASK or TRYAGAIN did not run
//! the command: MOVED re-sends it to the named node (and refreshes the map), ASK sends
//! `ASKING` and the command to the importing node in one write, TRYAGAIN waits a moment. A
//! command whose connection broke in flight is never re-sent (503, outcome unknown), and a
//! slot whose primary is down, or a cluster answering CLUSTERDOWN, gets 503 + `Retry-After`
//! until the map shows the promoted replica.
//!
//! - `/pipeline`: one sub-pipeline per node, sent concurrently, replies put back in the
//!   request's order; commands redirected in it are then re-sent one by one, in order. When
//!   some nodes answered and others failed, the failed ones' commands answer with the error in
//!   their places (the others ran); only when all failed does the request get the 503.
//! - `/multi-exec`: all keys must share one slot, else the transaction is discarded with Redis'
//!   own `CROSSSLOT` error (a node would answer the same); it runs on that slot's primary, and
//!   is sent again only when the node discarded it (EXECABORT) because of a redirection.
//! - Keyless commands: `SCAN` walks every primary (cursor format in docs/BACKENDS.md),
//!   `DBSIZE` adds up, `KEYS` concatenates, `FLUSHALL`/`FLUSHDB` and `SCRIPT LOAD|FLUSH` /
//!   `FUNCTION LOAD|DELETE|FLUSH|RESTORE` run on every primary, `RANDOMKEY` asks primaries until
//!   one has a key; any other keyless command goes to the primary of the lowest slots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis::Value;
use redisgate_core::topology::{ClusterSpec, SLOTS, first_key, key_slot, parse_address};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Dialer, NodeStatus, Script, address, error_reply, parts, send, send_batch, status_of};
use crate::backend::{Backend, BackendError};
use crate::backend::{CLUSTER_REDIRECTS, TOPOLOGY_CHANGES};

/// Redirections followed for one command before its last answer is given as is.
const MAX_REDIRECTS: usize = 16;
/// The pause before asking again after TRYAGAIN (a multi-key command during a migration) or an
/// ASK inside a transaction.
const RETRY_PAUSE: Duration = Duration::from_millis(25);
/// SCAN cursors carry the primary's position in their low bits.
const SCAN_NODE_BITS: u32 = 10;
const NO_SHARD: u16 = u16::MAX;

/// Redis' own text for keys in different slots.
pub const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

struct Shard {
    host: String,
    port: u16,
    backend: Arc<Backend>,
    replicas: Vec<(String, u16)>,
    first_slot: u16,
}

/// Which shard serves each slot.
struct SlotMap {
    slots: Vec<u16>,
    /// Ordered by their lowest slot: the SCAN cursor's node index.
    shards: Vec<Shard>,
    complete: bool,
}

impl Default for SlotMap {
    fn default() -> Self {
        SlotMap { slots: vec![NO_SHARD; usize::from(SLOTS)], shards: Vec::new(), complete: false }
    }
}

pub struct Cluster {
    dial: Dialer,
    seeds: Vec<(String, u16)>,
    map: RwLock<Arc<SlotMap>>,
    /// Every node backend opened, by address (primaries, seeds, redirection targets).
    nodes: Mutex<HashMap<(String, u16), Arc<Backend>>>,
    refresh: Notify,
}

/// Where a command goes.
#[derive(Clone, Copy)]
enum Route {
    Slot(u16),
    /// No key: any primary.
    Any,
    /// A keyspace-wide command answered from several primaries.
    Spread(Spread),
}

#[derive(Clone, Copy)]
enum Spread {
    Sum,
    Concat,
    AllOk,
    Scan,
    RandomKey,
}

fn route(parts: &[&[u8]]) -> Route {
    if let Some(key) = first_key(parts) {
        return Route::Slot(key_slot(key));
    }
    let name = parts.first().copied().unwrap_or_default();
    let sub = parts.get(1).copied().unwrap_or_default();
    let is = |n: &[u8], s: &str| n.eq_ignore_ascii_case(s.as_bytes());
    let any_sub = |subs: &[&str]| subs.iter().any(|s| is(sub, s));
    if is(name, "DBSIZE") {
        Route::Spread(Spread::Sum)
    } else if is(name, "KEYS") {
        Route::Spread(Spread::Concat)
    } else if is(name, "SCAN") {
        Route::Spread(Spread::Scan)
    } else if is(name, "RANDOMKEY") {
        Route::Spread(Spread::RandomKey)
    } else if is(name, "FLUSHALL")
        || is(name, "FLUSHDB")
        || (is(name, "SCRIPT") && any_sub(&["LOAD", "FLUSH"]))
        || (is(name, "FUNCTION") && any_sub(&["LOAD", "DELETE", "FLUSH", "RESTORE"]))
    {
        Route::Spread(Spread::AllOk)
    } else {
        Route::Any
    }
}

/// What a node's error reply asks of the client.
enum Redirect {
    Moved(String, u16),
    Ask(String, u16),
    TryAgain,
    Down,
}

fn redirect(v: &Value) -> Option<Redirect> {
    let Value::ServerError(e) = v else { return None };
    let target = || {
        let (_slot, addr) = e.details()?.split_once(' ')?;
        parse_address(addr)
    };
    match e.code() {
        "MOVED" => Some(target().map_or(Redirect::Down, |(h, p)| Redirect::Moved(h, p))),
        "ASK" => Some(target().map_or(Redirect::Down, |(h, p)| Redirect::Ask(h, p))),
        "TRYAGAIN" => Some(Redirect::TryAgain),
        "CLUSTERDOWN" => Some(Redirect::Down),
        _ => None,
    }
}

impl Cluster {
    /// Starts keeping the slot map on `dial.tracker`, until `dial.stop` fires.
    pub fn start(dial: Dialer, spec: ClusterSpec) -> Arc<Self> {
        let seeds = spec.seeds.iter().filter_map(|a| parse_address(a)).collect();
        let me = Arc::new(Cluster {
            dial,
            seeds,
            map: RwLock::default(),
            nodes: Mutex::default(),
            refresh: Notify::new(),
        });
        let stop = me.dial.stop.clone();
        me.dial.tracker.spawn(Arc::clone(&me).maintain(stop));
        me
    }

    fn map(&self) -> Arc<SlotMap> {
        Arc::clone(&self.map.read().expect("slot map lock"))
    }

    pub fn is_up(&self) -> bool {
        let map = self.map();
        map.complete && map.shards.iter().all(|s| s.backend.is_up())
    }

    pub fn primaries(&self) -> Vec<Arc<Backend>> {
        self.map().shards.iter().map(|s| Arc::clone(&s.backend)).collect()
    }

    pub fn nodes(&self) -> Vec<NodeStatus> {
        let map = self.map();
        let mut out = Vec::new();
        for s in &map.shards {
            out.push(NodeStatus {
                address: address(&s.host, s.port),
                role: "primary",
                status: status_of(&s.backend),
            });
            for (h, p) in &s.replicas {
                out.push(NodeStatus { address: address(h, *p), role: "replica", status: "unused" });
            }
        }
        out
    }

    /// The node backend of `host:port`, opened on first use.
    fn node(&self, host: &str, port: u16) -> Result<Arc<Backend>, BackendError> {
        let mut nodes = self.nodes.lock().expect("nodes lock");
        if let Some(b) = nodes.get(&(host.to_owned(), port)) {
            return Ok(Arc::clone(b));
        }
        let backend =
            self.dial.node(host, port).ok_or_else(|| self.dial.unavailable("unusable node address"))?;
        nodes.insert((host.to_owned(), port), Arc::clone(&backend));
        Ok(backend)
    }

    fn target(&self, route: Route) -> Result<Arc<Backend>, BackendError> {
        let map = self.map();
        let shard = match route {
            Route::Slot(slot) => map.shards.get(usize::from(map.slots[usize::from(slot)])),
            _ => map.shards.first(),
        };
        match shard {
            Some(s) => Ok(Arc::clone(&s.backend)),
            None => {
                self.refresh.notify_one();
                Err(self.dial.unavailable("no cluster node serves this slot yet"))
            }
        }
    }

    /// A failed send: the map may be stale (a primary died), so refresh it.
    fn failed<T>(&self, r: Result<T, BackendError>) -> Result<T, BackendError> {
        if r.is_err() {
            self.refresh.notify_one();
        }
        r
    }

    pub async fn stream_node(&self, channel: Option<&[u8]>) -> Result<Arc<Backend>, BackendError> {
        self.target(channel.map_or(Route::Any, |c| Route::Slot(key_slot(c))))
    }

    /// The node a `MOVED` answer to a stream's command (sharded SSUBSCRIBE) names; the map is
    /// refreshed, as after any MOVED.
    pub fn moved_to(&self, host: &str, port: u16) -> Result<Arc<Backend>, BackendError> {
        metrics::counter!(CLUSTER_REDIRECTS, "kind" => "moved").increment(1);
        self.refresh.notify_one();
        self.node(host, port)
    }

    pub async fn run(&self, cmd: &redis::Cmd, script: Script) -> Result<Value, BackendError> {
        match route(&parts(cmd)) {
            Route::Spread(spread) => self.spread(cmd, spread).await,
            r => self.run_one(cmd, script, r).await,
        }
    }

    /// One command on its slot's node, following redirections.
    async fn run_one(&self, cmd: &redis::Cmd, script: Script, route: Route) -> Result<Value, BackendError> {
        let mut target = self.target(route)?;
        let mut asking = false;
        let mut last = None;
        for _ in 0..MAX_REDIRECTS {
            let reply = if asking {
                let mut pipe = redis::Pipeline::with_capacity(2);
                pipe.add_command(redis::cmd("ASKING")).add_command(cmd.clone());
                self.failed(send_batch(&target, &pipe, 2, script).await)?.pop().unwrap_or(Value::Nil)
            } else {
                self.failed(send(&target, cmd, script).await)?
            };
            match redirect(&reply) {
                None => return Ok(reply),
                Some(Redirect::Moved(host, port)) => {
                    metrics::counter!(CLUSTER_REDIRECTS, "kind" => "moved").increment(1);
                    self.refresh.notify_one();
                    target = self.node(&host, port)?;
                    asking = false;
                }
                Some(Redirect::Ask(host, port)) => {
                    metrics::counter!(CLUSTER_REDIRECTS, "kind" => "ask").increment(1);
                    target = self.node(&host, port)?;
                    asking = true;
                }
                Some(Redirect::TryAgain) => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                    target = self.target(route)?;
                    asking = false;
                }
                Some(Redirect::Down) => {
                    self.refresh.notify_one();
                    return Err(self.dial.unavailable("the cluster is failing over"));
                }
            }
            last = Some(reply);
        }
        Ok(last.unwrap_or(Value::Nil))
    }

    /// A keyspace-wide command across the primaries.
    async fn spread(&self, cmd: &redis::Cmd, spread: Spread) -> Result<Value, BackendError> {
        let shards = self.primaries();
        if shards.is_empty() || !self.map().complete {
            self.refresh.notify_one();
            return Err(self.dial.unavailable("the cluster's slot map is not complete"));
        }
        match spread {
            Spread::Scan => return self.scan(cmd, &shards).await,
            Spread::RandomKey => {
                for shard in &shards {
                    match self.failed(shard.run(cmd).await)? {
                        Value::Nil => {}
                        v => return Ok(v),
                    }
                }
                return Ok(Value::Nil);
            }
            _ => {}
        }
        let replies = futures_util::future::join_all(shards.iter().map(|s| s.run(cmd))).await;
        let mut values = Vec::with_capacity(replies.len());
        for r in replies {
            let v = self.failed(r)?;
            if matches!(v, Value::ServerError(_)) {
                return Ok(v);
            }
            values.push(v);
        }
        Ok(match spread {
            Spread::Sum => {
                Value::Int(values.iter().map(|v| if let Value::Int(n) = v { *n } else { 0 }).sum())
            }
            Spread::Concat => Value::Array(
                values
                    .into_iter()
                    .flat_map(|v| if let Value::Array(a) = v { a } else { Vec::new() })
                    .collect(),
            ),
            _ => values.into_iter().next().unwrap_or(Value::Okay),
        })
    }

    /// `SCAN cursor …` over every primary in turn: the cursor is the node's cursor shifted
    /// left by [`SCAN_NODE_BITS`], plus the primary's index in slot order.
    async fn scan(&self, cmd: &redis::Cmd, shards: &[Arc<Backend>]) -> Result<Value, BackendError> {
        let args = parts(cmd);
        let Some(cursor) = args.get(1).and_then(|c| std::str::from_utf8(c).ok()?.parse::<u64>().ok()) else {
            return Ok(error_reply("ERR invalid cursor"));
        };
        let index = (cursor & ((1 << SCAN_NODE_BITS) - 1)) as usize;
        let Some(shard) = shards.get(index) else {
            return Ok(Value::Array(vec![Value::BulkString(b"0".to_vec()), Value::Array(Vec::new())]));
        };
        let mut node_cmd = redis::cmd("SCAN");
        node_cmd.arg(cursor >> SCAN_NODE_BITS);
        for a in &args[2..] {
            node_cmd.arg(*a);
        }
        let reply = self.failed(shard.run(&node_cmd).await)?;
        let Value::Array(mut page) = reply else { return Ok(reply) };
        let next = match page.first() {
            Some(Value::BulkString(c)) => std::str::from_utf8(c).ok().and_then(|c| c.parse::<u64>().ok()),
            _ => None,
        };
        let Some(next) = next else { return Ok(Value::Array(page)) };
        let ours = match next {
            0 if index + 1 < shards.len() => (index + 1) as u64,
            0 => 0,
            n => (n << SCAN_NODE_BITS) | index as u64,
        };
        page[0] = Value::BulkString(ours.to_string().into_bytes());
        Ok(Value::Array(page))
    }

    pub async fn run_batch(
        &self,
        pipe: &redis::Pipeline,
        count: usize,
        script: Script,
    ) -> Result<Vec<Value>, BackendError> {
        let cmds: Vec<&redis::Cmd> = pipe.cmd_iter().collect();
        let is =
            |c: &redis::Cmd, n: &str| parts(c).first().is_some_and(|p| p.eq_ignore_ascii_case(n.as_bytes()));
        let values = match (cmds.first(), cmds.last()) {
            (Some(first), Some(last)) if cmds.len() >= 2 && is(first, "MULTI") && is(last, "EXEC") => {
                self.transaction(pipe, &cmds, script).await?
            }
            _ => self.pipeline(&cmds, script).await?,
        };
        if values.len() != count {
            return Err(BackendError::Protocol(format!("expected {count} replies, got {}", values.len())));
        }
        Ok(values)
    }

    /// A `/pipeline`: split per node, answered in the request's order.
    async fn pipeline(&self, cmds: &[&redis::Cmd], script: Script) -> Result<Vec<Value>, BackendError> {
        let routes: Vec<Route> = cmds.iter().map(|c| route(&parts(c))).collect();
        let mut groups: Vec<(Arc<Backend>, Vec<usize>)> = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            if matches!(r, Route::Spread(_)) {
                continue;
            }
            let node = self.target(*r)?;
            match groups.iter_mut().find(|(b, _)| Arc::ptr_eq(b, &node)) {
                Some((_, members)) => members.push(i),
                None => groups.push((node, vec![i])),
            }
        }
        let sends = groups.iter().map(|(node, members)| async move {
            let mut sub = redis::Pipeline::with_capacity(members.len());
            for &i in members {
                sub.add_command(cmds[i].clone());
            }
            send_batch(node, &sub, members.len(), script).await
        });
        let mut replies: Vec<Option<Value>> = vec![None; cmds.len()];
        let sent = futures_util::future::join_all(sends).await;
        // Every node failed: nothing ran (or nothing is known to have), the 503 rules apply.
        if let Some(Err(e)) = sent.iter().find(|r| r.is_err())
            && sent.iter().all(Result::is_err)
            && routes.iter().all(|r| !matches!(r, Route::Spread(_)))
        {
            self.refresh.notify_one();
            return Err(e.clone());
        }
        // Some nodes answered: their commands ran, so the request succeeds, and the commands of a
        // node that failed answer with its error in their places.
        let mut failed = vec![false; cmds.len()];
        for ((_, members), sent) in groups.iter().zip(sent) {
            match self.failed(sent) {
                Ok(values) => members.iter().zip(values).for_each(|(&i, v)| replies[i] = Some(v)),
                Err(e) => members.iter().for_each(|&i| {
                    replies[i] = Some(error_reply(&e.to_string()));
                    failed[i] = true;
                }),
            }
        }
        // Redirected commands did not run: re-send them, and the keyspace-wide ones, in order.
        let mut out = Vec::with_capacity(cmds.len());
        for (i, reply) in replies.into_iter().enumerate() {
            let resent = match reply {
                Some(v) if failed[i] || redirect(&v).is_none() => Ok(v),
                _ => match routes[i] {
                    Route::Spread(s) => self.spread(cmds[i], s).await,
                    r => self.run_one(cmds[i], script, r).await,
                },
            };
            out.push(resent.unwrap_or_else(|e| error_reply(&e.to_string())));
        }
        Ok(out)
    }

    /// A `/multi-exec` (`cmds` is MULTI, the commands, EXEC) on its one slot's primary.
    async fn transaction(
        &self,
        pipe: &redis::Pipeline,
        cmds: &[&redis::Cmd],
        script: Script,
    ) -> Result<Vec<Value>, BackendError> {
        let inner = &cmds[1..cmds.len() - 1];
        let slots: Vec<Option<u16>> = inner.iter().map(|c| first_key(&parts(c)).map(key_slot)).collect();
        let first = slots.iter().flatten().next().copied();
        if let Some(cross) = slots.iter().position(|s| s.is_some_and(|s| Some(s) != first)) {
            // As a node answers: the command that crosses fails to queue, EXEC discards all.
            let mut replies = vec![Value::Okay];
            replies.extend((0..inner.len()).map(|i| {
                if i == cross { error_reply(CROSSSLOT) } else { Value::SimpleString("QUEUED".into()) }
            }));
            replies.push(error_reply("EXECABORT Transaction discarded because of previous errors."));
            return Ok(replies);
        }
        let route = first.map_or(Route::Any, Route::Slot);
        let mut target = self.target(route)?;
        let mut replies = Vec::new();
        for _ in 0..MAX_REDIRECTS {
            replies = self.failed(send_batch(&target, pipe, cmds.len(), script).await)?;
            let discarded = matches!(replies.last(), Some(Value::ServerError(e)) if e.code() == "EXECABORT");
            let why = replies[1..replies.len() - 1].iter().find_map(redirect);
            match (discarded, why) {
                (true, Some(Redirect::Moved(host, port))) => {
                    metrics::counter!(CLUSTER_REDIRECTS, "kind" => "moved").increment(1);
                    self.refresh.notify_one();
                    target = self.node(&host, port)?;
                }
                // ASKING covers one command, not a transaction: wait for the migration.
                (true, Some(Redirect::Ask(..) | Redirect::TryAgain)) => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                    target = self.target(route)?;
                }
                (true, Some(Redirect::Down)) => {
                    self.refresh.notify_one();
                    return Err(self.dial.unavailable("the cluster is failing over"));
                }
                _ => return Ok(replies),
            }
        }
        Ok(replies)
    }

    /// Keeps the slot map: at every health-check interval, and soon after a request saw it
    /// stale (coalesced, at most every 50 ms).
    async fn maintain(self: Arc<Self>, stop: CancellationToken) {
        for (host, port) in self.seeds.clone() {
            let _ = self.node(&host, port);
        }
        loop {
            self.refresh_once().await;
            tokio::select! {
                () = tokio::time::sleep(self.dial.cfg.health_check_interval) => {}
                () = self.refresh.notified() => {}
                () = stop.cancelled() => break,
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                () = stop.cancelled() => break,
            }
        }
        *self.map.write().expect("slot map lock") = Arc::default();
        self.nodes.lock().expect("nodes lock").clear();
    }

    /// Asks connected nodes (primaries first, then the others known) for CLUSTER NODES and
    /// installs the first complete answer.
    async fn refresh_once(&self) {
        let mut candidates: Vec<((String, u16), Arc<Backend>)> =
            self.nodes.lock().expect("nodes lock").iter().map(|(a, b)| (a.clone(), Arc::clone(b))).collect();
        let map = self.map();
        candidates.sort_by_key(|((h, p), b)| {
            let primary = map.shards.iter().any(|s| s.host == *h && s.port == *p);
            (!b.is_up(), !primary)
        });
        let limit = self.dial.cfg.connect_timeout + self.dial.cfg.response_timeout;
        for ((host, _port), backend) in candidates {
            let asked = tokio::time::timeout(limit, backend.run(redis::cmd("CLUSTER").arg("NODES"))).await;
            let text = match asked {
                Ok(Ok(Value::BulkString(b))) => String::from_utf8_lossy(&b).into_owned(),
                Ok(Ok(Value::VerbatimString { text, .. })) => text,
                _ => continue,
            };
            if let Some(new) = self.build(&text, &host) {
                self.install(new);
                return;
            }
        }
    }

    /// The map CLUSTER NODES describes (one line per node: id, `ip:port@bus`, flags, its
    /// primary's id, …, the slot ranges it serves); an empty host means the node asked. (Not
    /// CLUSTER SLOTS: Redis 7.0 caches that answer and can keep serving it without replicas
    /// that joined after it was first asked.)
    fn build(&self, text: &str, asked_host: &str) -> Option<SlotMap> {
        let mut map = SlotMap::default();
        struct Line<'a> {
            id: &'a str,
            host: String,
            port: u16,
            primary: bool,
            primary_of: &'a str,
            ranges: Vec<(u16, u16)>,
        }
        let mut lines = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split_ascii_whitespace().collect();
            let [id, addr, flags, primary_of, ..] = fields[..] else { return None };
            let flags: Vec<&str> = flags.split(',').collect();
            if flags.iter().any(|f| matches!(*f, "fail" | "noaddr" | "handshake")) {
                continue;
            }
            let endpoint = addr.split(['@', ',']).next()?;
            let (host, port) = endpoint.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let host = if host.is_empty() { asked_host.to_owned() } else { host.to_owned() };
            let mut ranges = Vec::new();
            for slots in fields.iter().skip(8).filter(|f| !f.starts_with('[')) {
                let (a, b) = slots.split_once('-').unwrap_or((slots, slots));
                let (a, b): (u16, u16) = (a.parse().ok()?, b.parse().ok()?);
                if a > b || b >= SLOTS {
                    return None;
                }
                ranges.push((a, b));
            }
            let primary = flags.contains(&"master");
            lines.push(Line { id, host, port: port.parse().ok()?, primary, primary_of, ranges });
        }
        let mut covered = 0usize;
        for l in lines.iter().filter(|l| l.primary && !l.ranges.is_empty()) {
            let backend = self.node(&l.host, l.port).ok()?;
            let replicas = lines
                .iter()
                .filter(|r| !r.primary && r.primary_of == l.id)
                .map(|r| (r.host.clone(), r.port))
                .collect();
            let first_slot = l.ranges.iter().map(|r| r.0).min().unwrap_or(0);
            let index = map.shards.len() as u16;
            map.shards.push(Shard { host: l.host.clone(), port: l.port, backend, replicas, first_slot });
            for &(a, b) in &l.ranges {
                for slot in a..=b {
                    map.slots[usize::from(slot)] = index;
                }
                covered += usize::from(b - a) + 1;
            }
        }
        // Slot order: stable SCAN positions whoever is primary.
        let mut order: Vec<usize> = (0..map.shards.len()).collect();
        order.sort_by_key(|&i| map.shards[i].first_slot);
        let mut position = vec![0u16; order.len()];
        for (new, &old) in order.iter().enumerate() {
            position[old] = new as u16;
        }
        for s in map.slots.iter_mut().filter(|s| **s != NO_SHARD) {
            *s = position[usize::from(*s)];
        }
        let mut shards: Vec<Option<Shard>> = map.shards.into_iter().map(Some).collect();
        map.shards = order.iter().map(|&i| shards[i].take().expect("each shard once")).collect();
        map.complete = covered >= usize::from(SLOTS) && map.slots.iter().all(|s| *s != NO_SHARD);
        Some(map)
    }

    fn install(&self, new: SlotMap) {
        let changed = {
            let old = self.map();
            old.slots != new.slots
                || old.shards.len() != new.shards.len()
                || old
                    .shards
                    .iter()
                    .zip(&new.shards)
                    .any(|(a, b)| (&a.host, a.port, &a.replicas) != (&b.host, b.port, &b.replicas))
        };
        if !changed {
            return;
        }
        tracing::info!(backend = %self.dial.label, primaries = new.shards.len(), complete = new.complete, "cluster slot map changed");
        metrics::counter!(TOPOLOGY_CHANGES, "kind" => "cluster").increment(1);
        // Nodes that are neither primaries nor seeds now are no longer needed.
        let mut nodes = self.nodes.lock().expect("nodes lock");
        nodes.retain(|(h, p), backend| {
            let keep = new.shards.iter().any(|s| s.host == *h && s.port == *p)
                || self.seeds.iter().any(|(sh, sp)| sh == h && sp == p);
            if !keep {
                backend.stop();
            }
            keep
        });
        *self.map.write().expect("slot map lock") = Arc::new(new);
    }
}
