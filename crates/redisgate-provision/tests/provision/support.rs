//! Helpers shared by the provisioner tests.

use std::future::Future;
use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redisgate_core::ids::InstanceId;
use redisgate_core::instance::InstanceStatus;
use redisgate_core::provision::{InstanceSpec, RedisUrl, StatusSink};
use redisgate_provision::LocalOptions;
use tokio::process::{Child, Command};
use tokio::time::Instant;

pub const MIB: u64 = 1024 * 1024;

pub type Event = (InstanceId, InstanceStatus, Option<String>);

/// A status sink that remembers what it heard.
#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<Event>>>);

impl Events {
    pub fn sink(&self) -> StatusSink {
        let events = self.0.clone();
        Arc::new(move |id, status, reason| events.lock().unwrap().push((id, status, reason)))
    }

    pub fn all(&self) -> Vec<Event> {
        self.0.lock().unwrap().clone()
    }

    pub fn statuses(&self) -> Vec<InstanceStatus> {
        self.all().into_iter().map(|e| e.1).collect()
    }
}

pub fn spec(id: InstanceId, memory_bytes: u64) -> InstanceSpec {
    InstanceSpec {
        id,
        memory_bytes,
        eviction_policy: Default::default(),
        external_url: None,
        tls_ca_pem: None,
    }
}

/// Quick restarts so crash tests finish fast.
pub fn fast_options() -> LocalOptions {
    LocalOptions {
        restart_backoff_min: Duration::from_millis(50),
        restart_backoff_max: Duration::from_millis(200),
        ..LocalOptions::default()
    }
}

/// `redis://:<password>@127.0.0.1:<port>` → (password, port).
pub fn parts(url: &RedisUrl) -> (String, u16) {
    let rest = url.expose().strip_prefix("redis://:").expect("local URL shape");
    let (password, hostport) = rest.split_once('@').unwrap();
    let port = hostport.rsplit_once(':').unwrap().1.parse().unwrap();
    (password.to_owned(), port)
}

pub async fn connect(url: &str) -> redis::RedisResult<MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    redis::Client::open(url)?.get_multiplexed_async_connection_with_config(&config).await
}

pub async fn set(url: &RedisUrl, key: &str, value: &str) {
    let mut conn = connect(url.expose()).await.expect("connect");
    redis::cmd("SET").arg(key).arg(value).query_async::<()>(&mut conn).await.expect("SET");
}

pub async fn get(url: &RedisUrl, key: &str) -> Option<String> {
    let mut conn = connect(url.expose()).await.expect("connect");
    redis::cmd("GET").arg(key).query_async(&mut conn).await.expect("GET")
}

/// Polls `check` until it returns true; panics with `what` after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

pub fn kill9(pid: u32) {
    let status = std::process::Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap();
    assert!(status.success());
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Writes an executable script without this process ever holding a writable fd to it: a
/// concurrent fork in another test would otherwise make exec fail with ETXTBSY.
pub fn script(path: &Path, body: &str) {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"printf '%s\n' "$1" > "$2" && chmod 755 "$2""#)
        .arg("sh")
        .arg(body)
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A plain redis-server of the test's own, standing in for a user's server.
pub struct PrivateRedis {
    pub port: u16,
    _child: Child,
}

impl PrivateRedis {
    pub async fn start(password: Option<&str>) -> PrivateRedis {
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if let Some(pw) = password {
            cmd.arg("--requirepass").arg(pw);
        }
        let child = cmd.spawn().expect("redis-server is installed");
        let server = PrivateRedis { port, _child: child };
        let url = server.url(password);
        eventually(Duration::from_secs(10), "private redis-server answers", || {
            let url = url.clone();
            async move {
                match connect(&url).await {
                    Ok(mut c) => redis::cmd("PING").query_async::<String>(&mut c).await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
        server
    }

    pub fn url(&self, password: Option<&str>) -> String {
        match password {
            Some(pw) => format!("redis://:{pw}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }
}
