//! Test fixtures: a private `redis-server` and a running RedisGate.

#![allow(dead_code)]

use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redisgate_core::account::Registration;
use redisgate_server::config::{AnonymousRate, Settings, TokenConfig};
use tokio::sync::oneshot;

pub const TOKEN: &str = "test-token-read-write";
pub const RO_TOKEN: &str = "test-token-read-only";

/// A free TCP port on loopback (bound, then released for the child process to take).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed when the test ends, however it ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `redis-server` of our own, stopped when dropped.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Waits until `n` clients are blocked (e.g. by CLIENT PAUSE) in this server.
    pub async fn wait_blocked(&self, n: usize) {
        let want = format!("blocked_clients:{n}\r");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.cmd::<String>(&["INFO", "clients"]).await.contains(&want) {
            assert!(Instant::now() < deadline, "never saw {n} blocked client(s)");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A server that is not started yet: `start_later` reserves its port.
    pub fn reserve() -> Redis {
        Redis { port: free_port(), child: None, dir: tempfile::tempdir().unwrap() }
    }

    /// Starts a server reserved with [`Redis::reserve`].
    pub async fn start_now(&mut self) {
        assert!(self.spawn().await, "redis-server did not start on port {}", self.port);
    }

    pub async fn start() -> Redis {
        for _ in 0..5 {
            let mut r = Redis { port: free_port(), child: None, dir: tempfile::tempdir().unwrap() };
            if r.spawn().await {
                return r;
            }
        }
        panic!("could not start redis-server (is it installed? scripts/test.sh installs it)");
    }

    /// Starts the server process on `self.port`; `false` if it did not come up.
    async fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(mut c) = self.client().get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut c).await.is_ok()
            {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Kills the process (SIGKILL): an abrupt outage.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the process again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        assert!(self.spawn().await, "redis-server did not restart on port {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    /// Runs a command directly on Redis, bypassing the gateway.
    pub async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        self.try_cmd(args).await.unwrap()
    }

    pub async fn try_cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        // The redis crate's default response timeout (500 ms) is for production traffic; a
        // test's own large write (5 MiB) on a loaded machine can take longer than that.
        let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(20)));
        let mut c = self.client().get_multiplexed_async_connection_with_config(&cfg).await?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut c).await
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running RedisGate, shut down when dropped.
pub struct Gate {
    pub base: String,
    pub http: reqwest::Client,
    _data: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Settings with a read-write and a read-only token on `redis`, fast retries and keep-alives.
pub fn settings(redis: &Redis) -> Settings {
    let mut s = Settings {
        tokens: vec![token(TOKEN, redis, false), token(RO_TOKEN, redis, true)],
        ..Settings::default()
    };
    s.backend.retry_delay = Duration::from_millis(200);
    s.backend.health_check_interval = Duration::from_millis(200);
    s.http.sse_keepalive = Duration::from_millis(200);
    s
}

pub fn token(t: &str, redis: &Redis, read_only: bool) -> TokenConfig {
    TokenConfig {
        token: t.to_owned().into(),
        url: redis.url().into(),
        read_only,
        name: None,
        rate_limit: None,
    }
}

/// Production defaults a test keeps instead of the relaxed test ones (see
/// `Gate::launch_keeping`).
#[derive(Clone, Copy, Default)]
struct Keep {
    egress: bool,
    accounts: bool,
    rate_limit: bool,
}

impl Gate {
    /// Starts RedisGate on port 0 and waits until it serves PING through `TOKEN`.
    pub async fn start(settings: Settings) -> Gate {
        let g = Gate::start_unchecked(settings).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = g.post("/", r#"["PING"]"#).await;
            if r.status() == 200 {
                return g;
            }
            assert!(Instant::now() < deadline, "gateway not ready: {}", r.status());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts RedisGate on port 0 without waiting for its backend, with its state (the SQLite
    /// metadata store, instances) in a directory of its own.
    pub async fn start_unchecked(mut settings: Settings) -> Gate {
        let data = tempfile::tempdir().unwrap();
        settings.data_dir = data.path().to_owned();
        Gate::launch(settings, data).await
    }

    /// Starts RedisGate keeping its state in `settings.data_dir`, which the caller owns (to
    /// start another RedisGate on the same state later).
    pub async fn start_with_data_dir(settings: Settings) -> Gate {
        Gate::launch(settings, tempfile::tempdir().unwrap()).await
    }

    /// Like [`Gate::start_unchecked`], with the production egress policy (no allow-list):
    /// external instances on loopback are refused.
    pub async fn start_strict(mut settings: Settings) -> Gate {
        let data = tempfile::tempdir().unwrap();
        settings.data_dir = data.path().to_owned();
        Gate::launch_keeping(settings, data, Keep { egress: true, ..Keep::default() }).await
    }

    /// Like [`Gate::start_with_data_dir`], with the production egress policy.
    pub async fn start_strict_with_data_dir(settings: Settings) -> Gate {
        Gate::launch_keeping(settings, tempfile::tempdir().unwrap(), Keep { egress: true, ..Keep::default() })
            .await
    }

    /// Like [`Gate::start_unchecked`], with the production rate limits (100/s for API keys).
    pub async fn start_with_default_rates(mut settings: Settings) -> Gate {
        let data = tempfile::tempdir().unwrap();
        settings.data_dir = data.path().to_owned();
        Gate::launch_keeping(settings, data, Keep { rate_limit: true, ..Keep::default() }).await
    }

    /// Like [`Gate::start_unchecked`], but with the account rules a deployment gets by
    /// default (invite-only registration, the organization cap) instead of the test ones.
    pub async fn start_as_deployed(mut settings: Settings) -> Gate {
        let data = tempfile::tempdir().unwrap();
        settings.data_dir = data.path().to_owned();
        Gate::launch_keeping(settings, data, Keep { accounts: true, ..Keep::default() }).await
    }

    async fn launch(settings: Settings, data: tempfile::TempDir) -> Gate {
        Gate::launch_keeping(settings, data, Keep::default()).await
    }

    /// Starts RedisGate with test defaults where the test left the production ones, except
    /// for those `keep` names.
    async fn launch_keeping(mut settings: Settings, data: tempfile::TempDir, keep: Keep) -> Gate {
        // Every test Redis listens on loopback, which the production egress policy refuses to
        // external instances. Tests of the policy set their own or use `start_strict`.
        if !keep.egress && settings.instances.external.allow.is_empty() {
            settings.instances.external.allow = vec!["127.0.0.0/8".into()];
        }
        // Tests sign up many users and give each many organizations; the tests of those rules
        // use `start_as_deployed`, or set their own values.
        if !keep.accounts && settings.auth.registration == Registration::Invite {
            settings.auth.registration = Registration::Open;
        }
        if !keep.accounts && settings.quota.max_organizations_per_user == 3 {
            settings.quota.max_organizations_per_user = 1_000_000;
        }
        // Every test client is 127.0.0.1, and some sign up hundreds of users.
        if !keep.accounts && settings.auth.anonymous == AnonymousRate::default() {
            settings.auth.anonymous = AnonymousRate { per_second: 1_000_000, burst: 1_000_000 };
        }
        // Tests send bursts far above the production default (100/s); the limiter still runs,
        // at a rate no test reaches. Tests of the limiter set their own rates.
        if !keep.rate_limit && settings.rate_limit.per_second == 100 && settings.rate_limit.burst == 100 {
            settings.rate_limit.per_second = 1_000_000;
            settings.rate_limit.burst = 1_000_000;
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(redisgate_server::launch(settings, listener, async {
            let _ = rx.await;
        }));
        Gate { base, http: reqwest::Client::new(), _data: data, stop: Some(stop), task: Some(task) }
    }

    /// Starts RedisGate serving HTTPS (the caller's `settings.tls`) and waits until `client`
    /// (which trusts the test CA) gets PING through `TOKEN` at `https://localhost:<port>`.
    pub async fn start_https(mut settings: Settings, client: reqwest::Client) -> Gate {
        let data = tempfile::tempdir().unwrap();
        settings.data_dir = data.path().to_owned();
        let mut g = Gate::launch(settings, data).await;
        g.base = g.base.replace("http://127.0.0.1:", "https://localhost:");
        g.http = client;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match g.http.post(g.url("/")).bearer_auth(TOKEN).body(r#"["PING"]"#).send().await {
                Ok(r) if r.status() == 200 => return g,
                other => assert!(Instant::now() < deadline, "HTTPS gateway not ready: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// POST `body` to `path` with the read-write token.
    pub async fn post(&self, path: &str, body: &str) -> reqwest::Response {
        self.http.post(self.url(path)).bearer_auth(TOKEN).body(body.to_owned()).send().await.unwrap()
    }

    /// POST and return (status, parsed JSON body).
    pub async fn post_json(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        let r = self.post(path, body).await;
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    /// Triggers graceful shutdown and waits for `launch` to return.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        self.stopped().await;
    }

    /// Sends the shutdown signal (as SIGTERM would) without waiting.
    pub fn begin_shutdown(&mut self) {
        let _ = self.stop.take().expect("shutdown begun once").send(());
    }

    /// Waits for `launch` to return, which it must do cleanly.
    pub async fn stopped(mut self) {
        tokio::time::timeout(Duration::from_secs(10), self.task.take().unwrap())
            .await
            .expect("shutdown finished in time")
            .unwrap()
            .unwrap();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Runs a helper process of a test (Node, Python) to its end within `timeout`: its exit
/// status and its stdout and stderr as one report. `what` names it in the panics.
pub async fn run_to_report(
    cmd: &mut tokio::process::Command,
    timeout: Duration,
    what: &str,
) -> (std::process::ExitStatus, String) {
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {timeout:?}"))
        .unwrap_or_else(|e| panic!("{what} does not run ({e}); scripts/test.sh installs what it needs"));
    let report = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, report)
}

/// Path of the repository root (for fixtures such as the Python SDK tests).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh PostgreSQL database for one test, on `REDISGATE_TEST_DATABASE_URL`'s server
/// (scripts/test.sh makes sure one answers). Dropped by [`PgDatabase::drop_now`].
pub struct PgDatabase {
    admin: sqlx::PgConnection,
    admin_url: String,
    pub name: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        use sqlx::Connection as _;
        let admin_url = std::env::var("REDISGATE_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into());
        let name = format!("rg_it_{}", uuid::Uuid::new_v4().simple());
        let mut admin =
            sqlx::PgConnection::connect(&admin_url).await.expect("PostgreSQL (scripts/test.sh starts it)");
        // `name` is our own hex id, nothing a user wrote.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        PgDatabase { admin, admin_url, name }
    }

    /// The database's URL, optionally through another port (a proxy in front of the server).
    pub fn url(&self, port: Option<u16>) -> String {
        let (creds, host) = self.admin_url.rsplit_once('@').unwrap();
        let host = host.split('/').next().unwrap();
        match port {
            Some(p) => format!("{creds}@127.0.0.1:{p}/{}", self.name),
            None => format!("{creds}@{host}/{}", self.name),
        }
    }

    /// Settings of one RedisGate replica among several on this database (sharing the secret
    /// key, as replicas must).
    pub fn replica(&self) -> Settings {
        Settings {
            database_url: Some(self.url(None).into()),
            secret_key: Some("ab".repeat(32).into()),
            ..Settings::default()
        }
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        let host = self.admin_url.rsplit_once('@').unwrap().1.split('/').next().unwrap();
        host.rsplit_once(':').map_or(5432, |(_, p)| p.parse().unwrap())
    }

    pub async fn drop_now(mut self) {
        let drop = format!("DROP DATABASE {} WITH (FORCE)", self.name);
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&mut self.admin).await;
    }
}

/// A `redis-server` that speaks only TLS, on loopback, with a certificate for `localhost` and
/// 127.0.0.1 from a CA of its own (`ca_pem`), which nothing trusts unless told to.
pub struct TlsRedis {
    pub port: u16,
    pub ca_pem: String,
    password: Option<&'static str>,
    _child: KillOnDrop,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    pub async fn start() -> TlsRedis {
        TlsRedis::start_with(None).await
    }

    pub async fn start_with(password: Option<&'static str>) -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let ca = TestCa::new("TLS redis-server CA");
        let issued = ca.server(1);
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--bind", "127.0.0.1", "--save", "", "--tls-auth-clients", "no"])
            .args(["--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--dir")
            .arg(dir.path())
            .args(password.map(|p| ["--requirepass", p]).into_iter().flatten())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server installed (scripts/test.sh installs it)");
        let r = TlsRedis { port, ca_pem: ca.pem, password, _child: KillOnDrop(child), _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(5);
        while r.try_cmd::<String>(&["PING"]).await.is_err() {
            assert!(Instant::now() < deadline, "TLS redis-server did not start on {port}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        r
    }

    pub async fn try_cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let auth = self.password.map(|p| format!(":{p}@")).unwrap_or_default();
        let root_cert = Some(self.ca_pem.clone().into_bytes());
        let client = redis::Client::build_with_tls(
            format!("rediss://{auth}127.0.0.1:{}", self.port),
            redis::TlsCertificates { client_tls: None, root_cert },
        )?;
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd(args[0]).arg(&args[1..]).query_async(&mut c).await
    }

    pub async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        self.try_cmd(args).await.unwrap()
    }

    /// Connections accepted so far (this question is one of them).
    pub async fn connections(&self) -> u64 {
        let info: String = self.cmd(&["INFO", "stats"]).await;
        info.lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    }

    /// Waits until a client of this server runs `command` (`subscribe`, `monitor`).
    pub async fn wait_client(&self, command: &str) {
        let want = format!("cmd={command}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.cmd::<String>(&["CLIENT", "LIST"]).await.contains(&want) {
            assert!(Instant::now() < deadline, "no client ran {command}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A throw-away certificate authority for TLS tests (rcgen, in process).
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub pem: String,
}

/// A certificate and its key, PEM, signed by a [`TestCa`].
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages =
            vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { pem: cert.pem(), issuer: rcgen::Issuer::new(params, key) }
    }

    /// A server certificate for `localhost` and 127.0.0.1 with serial number `serial`.
    pub fn server(&self, serial: u64) -> Issued {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        params.serial_number = Some(serial.into());
        params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate whose subject's common name is `cn`.
    pub fn client(&self, cn: &str) -> Issued {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, params: rcgen::CertificateParams) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }
}
