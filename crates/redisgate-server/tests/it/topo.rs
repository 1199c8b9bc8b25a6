//! Fixtures for Sentinel and Cluster tests: `redis-server` and `redis-sentinel` processes on
//! free loopback ports, readiness by polling (ROLE, SENTINEL, CLUSTER INFO), and a client
//! that writes a counter through the gateway while the test breaks things.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Value;
use serde_json::json;

use crate::common::{Gate, free_port};

/// One `redis-server` (or `redis-sentinel`) process, killed when dropped.
pub struct Proc {
    pub port: u16,
    pub password: Option<String>,
    child: Option<Child>,
    pub dir: tempfile::TempDir,
}

impl Proc {
    /// `redis-server` on a free port of 127.0.0.1 with `extra` arguments.
    pub async fn server(extra: &[&str], password: Option<&str>) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut args: Vec<String> = ["--port", &port.to_string(), "--save", "", "--appendonly", "no"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if !extra.contains(&"--bind") {
            args.extend(["--bind".into(), "127.0.0.1".into()]);
        }
        args.extend(["--dir".into(), dir.path().display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        Proc::spawn("redis-server", &args, port, password, dir).await
    }

    async fn spawn(
        program: &str,
        args: &[String],
        port: u16,
        password: Option<&str>,
        dir: tempfile::TempDir,
    ) -> Proc {
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} is installed (scripts/test.sh): {e}"));
        let p = Proc { port, password: password.map(str::to_owned), child: Some(child), dir };
        p.wait_answering().await;
        p
    }

    /// `redis-sentinel` on a free port with `conf` (its `port` line is added).
    pub async fn sentinel(conf: &str) -> Proc {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let file = dir.path().join("sentinel.conf");
        let text = format!("port {port}\nbind 127.0.0.1\ndir {}\n{conf}\n", dir.path().display());
        std::fs::write(&file, text).unwrap();
        Proc::spawn("redis-sentinel", &[file.display().to_string()], port, None, dir).await
    }

    async fn wait_answering(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_cmd(&["PING"]).await.is_err() {
            assert!(Instant::now() < deadline, "server on port {} did not start", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the process (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn try_cmd(&self, args: &[&str]) -> redis::RedisResult<Value> {
        let url = match &self.password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        };
        let client = redis::Client::open(url)?;
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let mut c = client.get_multiplexed_async_connection_with_config(&cfg).await?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut c).await
    }

    pub async fn text(&self, args: &[&str]) -> String {
        match self.try_cmd(args).await.unwrap() {
            Value::BulkString(b) => String::from_utf8(b).unwrap(),
            Value::VerbatimString { text, .. } => text,
            Value::SimpleString(s) => s,
            other => format!("{other:?}"),
        }
    }

    /// One field of `SENTINEL MASTER <name>` (a flat list of names and values).
    pub async fn sentinel_field(&self, master: &str, field: &str) -> Option<String> {
        let Value::Array(kv) = self.try_cmd(&["SENTINEL", "MASTER", master]).await.ok()? else { return None };
        kv.chunks(2).find_map(|pair| match pair {
            [Value::BulkString(k), Value::BulkString(v)] if k == field.as_bytes() => {
                String::from_utf8(v.clone()).ok()
            }
            _ => None,
        })
    }

    /// `ROLE`'s first element.
    pub async fn role(&self) -> Option<String> {
        match self.try_cmd(&["ROLE"]).await.ok()? {
            Value::Array(parts) => match parts.first()? {
                Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
                _ => None,
            },
            _ => None,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 20 ms until it holds, for at most `limit`.
pub async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a client writing `INCR` through the gateway saw.
#[derive(Default, Debug)]
pub struct Writes {
    /// Values INCR acknowledged, per key index.
    pub acked: Vec<Vec<i64>>,
    /// 503s that said the command may have run (connection lost in flight).
    pub unknown: Vec<usize>,
    /// 503s with Retry-After that said it did not run.
    pub refused: usize,
    /// Anything else: must stay empty.
    pub errors: Vec<String>,
    /// When each acknowledgement and each 503 came (`key_acked_at`: per key index).
    pub acked_at: Vec<Instant>,
    pub key_acked_at: Vec<Vec<Instant>>,
    pub failed_at: Vec<Instant>,
}

/// A running [`writer`].
pub struct Writer {
    task: tokio::task::JoinHandle<()>,
    pub writes: Arc<Mutex<Writes>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Writer {
    /// Waits for `n` more acknowledged writes (at most 10 s).
    pub async fn more(&self, what: &str, n: usize) {
        let before = self.writes.lock().unwrap().total_acked();
        until(what, Duration::from_secs(10), || async {
            self.writes.lock().unwrap().total_acked() >= before + n
        })
        .await;
    }

    /// Stops writing and hands over what the client saw.
    pub async fn finish(self) -> Writes {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap();
        std::mem::take(&mut *self.writes.lock().unwrap())
    }
}

/// Waits (at most 30 s) until `node` answers ROLE `master`, and says when that was seen.
pub async fn promotion(node: &Proc) -> Instant {
    until("the replica's promotion", Duration::from_secs(30), || async {
        node.role().await.as_deref() == Some("master")
    })
    .await;
    Instant::now()
}

/// Writes `INCR keys[i]` round-robin through `/redis/{instance}` until finished.
pub fn writer(gate: Arc<Gate>, instance: String, key: String, keys: Vec<String>) -> Writer {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let writes = Arc::new(Mutex::new(Writes {
        acked: vec![Vec::new(); keys.len()],
        key_acked_at: vec![Vec::new(); keys.len()],
        ..Writes::default()
    }));
    let out = Arc::clone(&writes);
    let task = tokio::spawn(async move {
        let mut i = 0usize;
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let k = i % keys.len();
            i += 1;
            let r = gate
                .http
                .post(gate.url(&format!("/redis/{instance}")))
                .bearer_auth(&key)
                .json(&json!(["INCR", keys[k]]))
                .timeout(Duration::from_secs(20))
                .send()
                .await;
            let now = Instant::now();
            let mut w = out.lock().unwrap();
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    w.errors.push(format!("request failed: {e}"));
                    continue;
                }
            };
            let status = r.status().as_u16();
            let retry_after = r.headers().get("retry-after").is_some();
            drop(w);
            let body: serde_json::Value = r.json().await.unwrap_or(json!({"error": "not JSON"}));
            let mut w = out.lock().unwrap();
            match (status, body["result"].as_i64()) {
                (200, Some(n)) => {
                    w.acked[k].push(n);
                    w.acked_at.push(now);
                    w.key_acked_at[k].push(now);
                }
                (503, _) if retry_after && body["error"].is_string() => {
                    w.failed_at.push(now);
                    if body["error"].as_str().unwrap().contains("in flight") {
                        w.unknown.push(k);
                    } else {
                        w.refused += 1;
                    }
                }
                _ => w.errors.push(format!("{status} {body}")),
            }
        }
    });
    Writer { task, writes, stop }
}

impl Writes {
    /// Every acknowledged write is in `finals` (the keys' values read back afterwards), and no
    /// write was applied twice: each final value is at least the highest acknowledged one and
    /// at most the acknowledged writes plus those whose outcome was unknown.
    pub fn check_against(&self, finals: &[i64]) {
        assert!(self.errors.is_empty(), "client-visible errors other than 503: {:?}", self.errors);
        for (k, acked) in self.acked.iter().enumerate() {
            assert!(
                acked.windows(2).all(|w| w[0] < w[1]),
                "key {k}: acknowledged values increase: {acked:?}"
            );
            let unknown = self.unknown.iter().filter(|u| **u == k).count() as i64;
            let max = acked.last().copied().unwrap_or(0);
            assert!(finals[k] >= max, "key {k}: an acknowledged write was lost ({} < {max})", finals[k]);
            assert!(
                finals[k] <= acked.len() as i64 + unknown,
                "key {k}: a write was applied twice ({} > {} acknowledged + {unknown} unknown)",
                finals[k],
                acked.len()
            );
        }
    }

    pub fn total_acked(&self) -> usize {
        self.acked.iter().map(Vec::len).sum()
    }
}

/// The `result` of a command through `/redis/{instance}`, asserting 200.
pub async fn ok(g: &Gate, instance: &str, key: &str, cmd: serde_json::Value) -> serde_json::Value {
    let (s, body) = crate::instances::redis_cmd(g, instance, key, cmd.clone()).await;
    assert_eq!(s, 200, "{cmd}: {body}");
    body["result"].clone()
}

/// Client connections to `p` that arrived on `laddr` (`ip:port`), other than the servers' own:
/// sentinels (named `sentinel-*`) and replicas (flag `S`).
pub async fn clients_on(p: &Proc, laddr: &str) -> Vec<String> {
    p.text(&["CLIENT", "LIST"])
        .await
        .lines()
        .filter(|l| l.contains(&format!(" laddr={laddr} ")))
        .filter(|l| !l.contains(" name=sentinel-") && !l.contains(" flags=S "))
        .map(str::to_owned)
        .collect()
}

/// The instance's view names `addr` as its primary.
pub async fn assert_primary(t: &crate::instances::Tenant<'_>, addr: &str) {
    let (_, view) = t.api.get(&format!("/api/organizations/{}/redis-instances/{}", t.org, t.instance)).await;
    let nodes = view["nodes"].as_array().unwrap();
    assert!(
        nodes.iter().any(|n| n["role"] == "primary" && n["address"] == addr),
        "{addr} is the primary: {view}"
    );
}

/// Settings that notice failures fast: 200 ms retries and health checks, 500 ms connects.
pub fn fast() -> redisgate_server::config::Settings {
    let mut s = redisgate_server::config::Settings::default();
    s.backend.retry_delay = Duration::from_millis(200);
    s.backend.health_check_interval = Duration::from_millis(200);
    s.backend.connect_timeout = Duration::from_millis(500);
    s
}

/// A gateway ([`fast`]) whose egress policy allows 127.0.0.1 only (not the rest of 127/8).
pub async fn only_127_0_0_1() -> Gate {
    let mut s = fast();
    s.instances.external.allow = vec!["127.0.0.1/32".into()];
    Gate::start_unchecked(s).await
}

/// A new account's organization, and its instances URL.
pub async fn tenant_org<'a>(g: &'a Gate, email: &str) -> (crate::api::Api<'a>, String) {
    let (api, _) = crate::api::Api::signup(g, email).await;
    let (_, org) = api.post("/api/organizations", json!({"name": "Acme"})).await;
    (api, format!("/api/organizations/{}/redis-instances", org["id"].as_str().unwrap()))
}
