//! Typed configuration: defaults, then a TOML file, then the environment (env wins).
//!
//! Besides `REDISGATE_*` variables (nested keys joined with `__`, e.g.
//! `REDISGATE_HTTP__MAX_BODY_BYTES`), the SRH variables of serverless-redis-http are accepted
//! as they are, so RedisGate can replace SRH in a docker-compose file by changing the image only:
//! `SRH_MODE=env` with `SRH_TOKEN` and `SRH_CONNECTION_STRING`, `SRH_MODE=file` with SRH's
//! tokens JSON file, and `SRH_PORT`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use redisgate_core::account::Registration;
use redisgate_core::egress::EgressPolicy;
use redisgate_core::quota::Plan;
use redisgate_core::ratelimit::Rate;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The whole configuration tree.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on. Port 0 picks a free port (tests do this).
    pub listen: SocketAddr,
    /// Serve `/metrics` on this address instead of on `listen` (e.g. a port only Prometheus
    /// reaches), with `/health` showing every component without a session (operators' side).
    /// Unset: `/metrics` is on the main listener.
    pub metrics_listen: Option<SocketAddr>,
    /// Standalone mode: each token maps straight to one Redis server, served at `/`.
    pub tokens: Vec<TokenConfig>,
    /// Shortcut for one token from the environment: `REDISGATE_TOKEN` + `REDISGATE_REDIS_URL`.
    pub token: Option<SecretString>,
    pub redis_url: Option<SecretString>,
    /// Where RedisGate keeps its state (the SQLite database, instance data).
    pub data_dir: PathBuf,
    /// The metadata store: `postgres://…` for PostgreSQL; unset means SQLite in `data_dir`.
    /// `DATABASE_URL` is accepted too.
    pub database_url: Option<SecretString>,
    /// Key that seals stored secrets (external instances' URLs): 64 hex digits. Unset means a
    /// key generated into `data_dir/secret.key`; replicas sharing a database need the same.
    pub secret_key: Option<SecretString>,
    pub http: HttpSettings,
    pub backend: BackendSettings,
    pub cors: CorsSettings,
    pub auth: AuthSettings,
    pub instances: InstanceSettings,
    pub rate_limit: RateLimitSettings,
    pub quota: QuotaSettings,
    pub audit: AuditSettings,
    pub tls: TlsSettings,
    pub usage: UsageSettings,
    pub backups: BackupSettings,
}

/// HTTPS on `listen` (see [`crate::tls`]). Off unless `cert_file` and `key_file` are set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The server's certificate, PEM: the leaf first, then any intermediates (a chain file).
    pub cert_file: Option<PathBuf>,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Mutual TLS: clients must present a certificate signed by one of these CAs (PEM).
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `required` (default; no certificate, no handshake) or
    /// `optional` (clients without one are served too; one that is presented is verified).
    pub client_auth: Option<ClientAuth>,
    /// With TLS on, also serve plain HTTP here (e.g. a port only a load balancer's health
    /// checks reach). Unset: `listen` is the only listener, and it speaks HTTPS only.
    pub plain_listen: Option<SocketAddr>,
    /// Time a client has to finish the TLS handshake; it holds a connection slot meanwhile.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// How often the files are checked for a new certificate (SIGHUP checks at once).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    Required,
    Optional,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            client_auth: None,
            plain_listen: None,
            handshake_timeout: Duration::from_secs(10),
            reload_interval: Duration::from_secs(10),
        }
    }
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let needs_tls = |key: &str| invalid(key, "needs tls.cert_file and tls.key_file");
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => return Err(invalid("tls.key_file", "required with tls.cert_file")),
            (None, Some(_)) => return Err(invalid("tls.cert_file", "required with tls.key_file")),
            (None, None) if self.client_ca_file.is_some() => return Err(needs_tls("tls.client_ca_file")),
            (None, None) if self.plain_listen.is_some() => return Err(needs_tls("tls.plain_listen")),
            _ => {}
        }
        if self.client_auth.is_some() && self.client_ca_file.is_none() {
            return Err(invalid("tls.client_auth", "needs tls.client_ca_file"));
        }
        for (key, d) in
            [("tls.handshake_timeout", self.handshake_timeout), ("tls.reload_interval", self.reload_interval)]
        {
            if d.is_zero() {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        Ok(())
    }
}

/// The audit log.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// Entries older than this are deleted (checked at start and hourly). At least a day.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
}

impl Default for AuditSettings {
    fn default() -> Self {
        // Three months at hand is what audit requirements commonly ask for (PCI DSS 10.5.1
        // wants them immediately available); it also caps what a flood that gets past
        // `auth.anonymous_rate` can leave behind. Longer is the administrator's choice.
        Self { retention: Duration::from_secs(90 * 24 * 3600) }
    }
}

/// The instances' usage history (see [`crate::usage`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageSettings {
    /// How often instances with traffic (or a member looking) are sampled: at most 10 s, the
    /// finest resolution kept; shorter only makes several samples per 10 s row (tests).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for UsageSettings {
    fn default() -> Self {
        Self { interval: Duration::from_secs(10) }
    }
}

/// Deployment-wide limits on what one account may create.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaSettings {
    /// Organizations one user may own (each comes with its own quota of instances and
    /// memory). Deployment administrators are not held to it; 0: only they create any.
    pub max_organizations_per_user: u32,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        Self { max_organizations_per_user: 3 }
    }
}

/// Data-plane rate limits (GCRA per API key, per token in standalone mode).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    pub enabled: bool,
    /// The default rate: requests per second, and how many may come at once.
    pub per_second: u32,
    pub burst: u32,
    /// Rates for organizations on a plan, e.g. `[rate_limit.plans.pro] per_second = 1000`.
    pub plans: HashMap<Plan, Rate>,
    /// The rate of standalone tokens that have none of their own. Unset (the default): they are
    /// not limited, as with serverless-redis-http, whose place they take in CI and compose
    /// files; `per_second`/`burst` above are API keys' default.
    pub tokens: Option<Rate>,
    /// `local`: each replica keeps its own budgets. `distributed`: replicas share them in
    /// `redis_url`, falling back to `local` while that Redis cannot answer.
    pub mode: RateLimitMode,
    /// The Redis holding shared budgets: one RedisGate owns, never a tenant's instance.
    pub redis_url: Option<SecretString>,
    /// How long a request waits for that Redis before it is judged locally instead.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitMode {
    #[default]
    Local,
    Distributed,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            per_second: 100,
            burst: 100,
            plans: HashMap::new(),
            tokens: None,
            mode: RateLimitMode::Local,
            redis_url: None,
            redis_timeout: Duration::from_millis(100),
        }
    }
}

impl RateLimitSettings {
    pub fn default_rate(&self) -> Rate {
        Rate { per_second: self.per_second, burst: self.burst }
    }

    /// The rate of an organization on `plan`.
    pub fn for_plan(&self, plan: Plan) -> Rate {
        self.plans.get(&plan).copied().unwrap_or_else(|| self.default_rate())
    }
}

/// Local instances (redis-server child processes, data under `data_dir/instances`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InstanceSettings {
    /// The `redis-server` binary to run; a bare name is looked up in `PATH`.
    pub redis_server: PathBuf,
    /// Most local instances on this host, across all organizations (quotas are per
    /// organization; this bounds the sum). Default: one per 64 MiB of host RAM, at most 1000.
    pub max_local_instances: u32,
    /// Most `maxmemory` (MiB) all local instances may reserve together. Default: half the
    /// host's RAM.
    pub max_local_memory_mb: u64,
    pub external: ExternalSettings,
}

impl Default for InstanceSettings {
    fn default() -> Self {
        let total = host_memory_mb();
        Self {
            redis_server: PathBuf::from("redis-server"),
            max_local_instances: default_max_local_instances(total),
            max_local_memory_mb: default_max_local_memory_mb(total),
            external: ExternalSettings::default(),
        }
    }
}

/// External instances: servers tenants bring by URL.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExternalSettings {
    /// Non-public addresses tenants' URLs may reach: CIDR ranges (`10.0.0.0/8`), addresses
    /// (`10.1.2.3`, `[fd00::1]:6379`), host names (`redis.internal`, `redis.internal:6379`).
    /// Empty (the default): public unicast addresses only. RedisGate's own addresses and cloud
    /// metadata services stay refused whatever this says.
    pub allow: Vec<String>,
    /// Whether tenants' `rediss://` URLs may say `#insecure` (TLS without verifying the
    /// server's certificate). Off (the default): such URLs are refused at creation and at
    /// connect; tenants give their server's CA (`tls_ca_pem`) instead.
    pub allow_insecure_tls: bool,
}

impl ExternalSettings {
    /// The egress policy, or the first bad entry named by key.
    pub fn policy(&self) -> Result<EgressPolicy, ConfigError> {
        EgressPolicy::parse(&self.allow)
            .map_err(|(i, e)| invalid(&format!("instances.external.allow[{i}]"), e.to_string()))
    }
}

/// Assumed when the host's memory cannot be read (no `/proc/meminfo`): a small machine.
const FALLBACK_HOST_MEMORY_MB: u64 = 2048;

/// The host's RAM in MiB, from `/proc/meminfo` (`MemTotal`).
pub fn host_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total_mb(&text))
        .unwrap_or(FALLBACK_HOST_MEMORY_MB)
}

/// `MemTotal` of a `/proc/meminfo` text, in MiB.
fn mem_total_mb(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib / 1024)
}

/// `maxmemory` is not a process' footprint: allocator fragmentation and the fork of an AOF
/// rewrite (copy-on-write, up to the dataset again) come on top, and RedisGate and the OS need
/// room too. Reserving the other half for all of that keeps a full host out of the OOM killer.
fn default_max_local_memory_mb(host_mb: u64) -> u64 {
    (host_mb / 2).max(1)
}

/// An idle `redis-server` with AOF costs about 12 MiB RSS (measured, Redis 7.0) before any
/// data, plus a supervisor and ~10 file descriptors: one per 64 MiB of RAM keeps those
/// baselines under a fifth of the host.
fn default_max_local_instances(host_mb: u64) -> u32 {
    (host_mb / 64).clamp(1, 1000) as u32
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            metrics_listen: None,
            tokens: Vec::new(),
            token: None,
            redis_url: None,
            data_dir: PathBuf::from("data"),
            database_url: None,
            secret_key: None,
            http: HttpSettings::default(),
            backend: BackendSettings::default(),
            cors: CorsSettings::default(),
            auth: AuthSettings::default(),
            instances: InstanceSettings::default(),
            rate_limit: RateLimitSettings::default(),
            quota: QuotaSettings::default(),
            audit: AuditSettings::default(),
            tls: TlsSettings::default(),
            usage: UsageSettings::default(),
            backups: BackupSettings::default(),
        }
    }
}

/// One standalone token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The bearer token clients send. Compared in constant time, never logged.
    pub token: SecretString,
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` for TLS.
    pub url: SecretString,
    /// Only read commands pass (Upstash "read-only token").
    #[serde(default)]
    pub read_only: bool,
    /// A name for logs; defaults to the backend's host and port.
    #[serde(default)]
    pub name: Option<String>,
    /// This token's own rate limit; unset means `rate_limit.tokens` (by default none).
    #[serde(default)]
    pub rate_limit: Option<Rate>,
}

/// Limits and timeouts of the HTTP side.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Largest request body accepted; larger ones get 413 (Upstash's free tier limit: 10 MB).
    pub max_body_bytes: usize,
    /// Most commands in one `/pipeline` or `/multi-exec`.
    pub max_pipeline_commands: usize,
    /// Time a client has to send a request's headers. It also bounds how long an idle
    /// keep-alive connection is kept, so slow or silent clients cannot hold connections.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time a client has to send the whole body once the headers are in (408 otherwise).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// How long SIGTERM waits for in-flight requests before closing connections.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Interval of `: keepalive` comments on SSE streams; a dead peer shows up at the next one.
    #[serde(with = "humantime_serde")]
    pub sse_keepalive: Duration,
    /// Most open HTTP connections on `listen` and `tls.plain_listen` together (handshakes
    /// included); further clients wait in the listen backlog until one closes, so no flood
    /// grows tasks or memory without bound.
    pub max_connections: usize,
    /// Most concurrent SSE streams of one API key (or standalone token); more get 429.
    pub max_streams_per_key: usize,
    /// Most requests of one API key (or standalone token) being served at once; more get 429.
    pub max_requests_in_flight_per_key: usize,
    /// Largest data-plane reply encoded (an upper bound of its encoded size, checked before
    /// encoding); a larger one is answered with a JSON error. Local instances' output buffer
    /// limit is derived from it.
    pub max_response_bytes: usize,
    /// Reverse proxies (CIDRs) whose `X-Forwarded-For` (or, without it, `Forwarded`) header
    /// names the client; from anyone else those headers are ignored. Empty: the TCP peer is
    /// the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The URL clients reach this deployment at (`https://redis.example.com`), for the REST
    /// URLs an instance's connect page shows. Unset: the scheme and `Host` of the request
    /// asking for it.
    pub public_url: Option<url::Url>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 10 * 1024 * 1024,
            max_pipeline_commands: 10_000,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            sse_keepalive: Duration::from_secs(15),
            // An idle keep-alive connection costs a task, hyper's buffers and a descriptor:
            // about 21 KiB RSS each (measured: 1000 of them, +21 MiB), so 4096 stay under
            // 100 MiB, and under common `nofile` limits beside the instances' sockets.
            max_connections: 4096,
            // Each stream holds a Redis connection of its own (and a slot among the backend's
            // `max_streams`): one key may not take them all.
            max_streams_per_key: 16,
            // The default burst: more at once than the rate limit admits is only useful to
            // someone holding requests open (slow bodies) to starve others.
            max_requests_in_flight_per_key: 100,
            max_response_bytes: 64 * 1024 * 1024,
            public_url: None,
            trusted_proxies: Vec::new(),
        }
    }
}

/// How RedisGate talks to Redis.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendSettings {
    /// Connection attempts after the first failed one, before requests stop waiting for it.
    pub connect_retries: u32,
    /// Pause between connection attempts (also the reconnect cadence while Redis is down).
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// Time allowed for one TCP (and TLS) connect plus handshake.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time Redis has to answer a command or batch before the client gets 504. Explicit
    /// because the redis crate's default (500 ms) breaks legitimately slow commands.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// How often an open shared connection is checked: by the replies it carried since the
    /// last check, else by a PING (which notices a dead Redis without traffic).
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// An instance's shared connection is opened by its first request and closed after this
    /// long without one; script connections close with it (SSE streams have their own).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Instances without an open connection are checked (connect, PING, close) one after the
    /// other at this total rate, whatever their number; 0 turns the checks off.
    pub idle_checks_per_second: u32,
    /// Most concurrent SSE streams per backend, each holding its own Redis connection.
    pub max_streams: usize,
    /// Time an EVAL/EVALSHA/FCALL (or _RO) may run before the gateway kills it with SCRIPT
    /// KILL / FUNCTION KILL. Local instances accept the kill only after their 1 s
    /// `busy-reply-threshold`, so a smaller value acts as 1 s there.
    #[serde(with = "humantime_serde")]
    pub script_timeout: Duration,
}

impl Default for BackendSettings {
    fn default() -> Self {
        Self {
            connect_retries: 3,
            retry_delay: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(10),
            health_check_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(300),
            idle_checks_per_second: 20,
            max_streams: 256,
            script_timeout: Duration::from_secs(5),
        }
    }
}

/// Cross-origin access for browsers (the JS SDK runs there with read-only tokens).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsSettings {
    /// `["*"]` allows any origin (never with credentials); an empty list turns CORS off.
    pub allowed_origins: Vec<String>,
    /// Allow credentialed requests; only valid with an explicit origin list.
    pub allow_credentials: bool,
}

impl CorsSettings {
    /// Whether any origin is allowed (`"*"` in the list).
    pub fn any_origin(&self) -> bool {
        self.allowed_origins.iter().any(|o| o == "*")
    }
}

impl Default for CorsSettings {
    fn default() -> Self {
        Self { allowed_origins: vec!["*".into()], allow_credentials: false }
    }
}

/// Accounts and sessions.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// How long a login session lasts.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Failed-login window: past the limits below, logins wait until it ends (429).
    #[serde(with = "humantime_serde")]
    pub login_window: Duration,
    pub max_failed_logins_per_email: u32,
    pub max_failed_logins_per_ip: u32,
    /// How long the data plane trusts a cached API key before asking the store again; a key
    /// revoked on another replica stops working within this time.
    #[serde(with = "humantime_serde")]
    pub key_cache_ttl: Duration,
    /// Who may create an account: `invite` (with an invitation), `open` (anyone), `closed`
    /// (nobody). The first account is created in every mode: it administers the deployment.
    pub registration: Registration,
    /// How long an invitation can be used.
    #[serde(with = "humantime_serde")]
    pub invitation_ttl: Duration,
    /// Requests per client address to the routes anyone may call (register, log in, accept
    /// an invitation), in this process; more get 429 before any password hash or write.
    /// `auth.anonymous_rate()` gives it as a [`Rate`].
    #[serde(rename = "anonymous_rate")]
    pub anonymous: AnonymousRate,
    /// When the console's session cookie carries `Secure`: `auto` when the request came over
    /// TLS (a TLS listener, or a trusted proxy's `X-Forwarded-Proto: https`), `always`.
    pub cookie_secure: CookieSecure,
}

/// `auth.cookie_secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CookieSecure {
    #[default]
    Auto,
    Always,
}

/// `auth.anonymous_rate`, each half defaulted on its own (so one may be set alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnonymousRate {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for AnonymousRate {
    fn default() -> Self {
        // A person signs up once and logs in a few times a day; a script bootstrapping a
        // deployment (an administrator, a dozen invitees registering and logging in) stays
        // within the burst. A flood gets 30, then one a second: one Argon2 hash a second
        // (a few percent of a core) and at most 86,400 audit rows a day per address.
        Self { per_second: 1, burst: 30 }
    }
}

impl AuthSettings {
    pub fn anonymous_rate(&self) -> Rate {
        Rate { per_second: self.anonymous.per_second, burst: self.anonymous.burst }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            session_ttl: Duration::from_secs(24 * 3600),
            login_window: Duration::from_secs(15 * 60),
            max_failed_logins_per_email: 5,
            max_failed_logins_per_ip: 50,
            key_cache_ttl: Duration::from_millis(900),
            registration: Registration::Invite,
            invitation_ttl: Duration::from_secs(7 * 24 * 3600),
            anonymous: AnonymousRate::default(),
            cookie_secure: CookieSecure::Auto,
        }
    }
}

impl Settings {
    /// The metadata store URL: the configured one, or the SQLite file in `data_dir`.
    pub fn store_url(&self) -> String {
        match &self.database_url {
            Some(u) => u.expose_secret().to_owned(),
            None => format!("sqlite://{}", self.data_dir.join("redisgate.db").display()),
        }
    }
}

/// A configuration problem, named by key so the operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("SRH tokens file {path}: {message}")]
    SrhFile { path: PathBuf, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

/// SRH's tokens file: token -> `{srh_id, connection_string, max_connections}`.
#[derive(Deserialize)]
struct SrhEntry {
    srh_id: Option<String>,
    connection_string: String,
    // Accepted for compatibility. RedisGate multiplexes commands over one connection per
    // backend, so an SRH pool size has nothing to size.
    #[serde(rename = "max_connections")]
    _max_connections: Option<u64>,
}

/// `REDISGATE_*` variables read by the binary itself, not part of the settings tree.
const NOT_SETTINGS: &[&str] = &["REDISGATE_CONFIG", "REDISGATE_LOG", "REDISGATE_LOG_JSON", EGRESS_ALLOW_ENV];

/// `instances.external.allow` from the environment: entries separated by commas. (Read by
/// hand: the config crate parses lists only if it parses every variable's type.)
const EGRESS_ALLOW_ENV: &str = "REDISGATE_INSTANCES__EXTERNAL__ALLOW";

/// Where SRH looks for its tokens file, in the order SRH's release and dev layouts use.
const SRH_TOKEN_FILES: &[&str] = &["/app/srh-config/tokens.json", "srh-config/tokens.json"];

impl Settings {
    /// Loads defaults, then `file` (if given), then the environment `env` (pass
    /// `std::env::vars()`; tests pass their own map).
    pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut b = config::Config::builder();
        if let Some(f) = file {
            b = b.add_source(config::File::from(f).format(config::FileFormat::Toml).required(true));
        }
        let ours: HashMap<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("REDISGATE_") && !NOT_SETTINGS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        b = b.add_source(
            config::Environment::with_prefix("REDISGATE")
                .prefix_separator("_")
                .separator("__")
                .source(Some(ours)),
        );
        let mut s: Settings = b.build()?.try_deserialize()?;
        if s.database_url.is_none() {
            s.database_url = env.get("DATABASE_URL").map(|u| SecretString::from(u.clone()));
        }
        if let Some(list) = env.get(EGRESS_ALLOW_ENV) {
            s.instances.external.allow =
                list.split(',').map(str::trim).filter(|e| !e.is_empty()).map(String::from).collect();
        }
        s.apply_srh_env(env)?;
        if let (Some(token), Some(url)) = (s.token.take(), s.redis_url.take()) {
            s.tokens.push(TokenConfig { token, url, read_only: false, name: None, rate_limit: None });
        } else if s.token.is_some() || s.redis_url.is_some() {
            return Err(invalid("token", "REDISGATE_TOKEN and REDISGATE_REDIS_URL must be set together"));
        }
        s.validate()?;
        Ok(s)
    }

    fn apply_srh_env(&mut self, env: &HashMap<String, String>) -> Result<(), ConfigError> {
        if let Some(port) = env.get("SRH_PORT") {
            let port: u16 = port.parse().map_err(|_| invalid("SRH_PORT", "not a port number"))?;
            // SRH listens on every interface (it runs in a container); so do we in SRH mode.
            let ipv6 = env.get("SRH_IPV6").is_some_and(|v| v == "true");
            self.listen = if ipv6 {
                SocketAddr::from(([0u16; 8], port))
            } else {
                SocketAddr::from(([0, 0, 0, 0], port))
            };
        }
        match env.get("SRH_MODE").map(String::as_str) {
            None => Ok(()),
            Some("env") => {
                let token =
                    env.get("SRH_TOKEN").ok_or_else(|| invalid("SRH_TOKEN", "required with SRH_MODE=env"))?;
                let url = env
                    .get("SRH_CONNECTION_STRING")
                    .ok_or_else(|| invalid("SRH_CONNECTION_STRING", "required with SRH_MODE=env"))?;
                self.tokens.push(TokenConfig {
                    token: token.clone().into(),
                    url: url.clone().into(),
                    read_only: false,
                    name: None,
                    rate_limit: None,
                });
                Ok(())
            }
            Some("file") => {
                let path = match env.get("SRH_TOKENS_FILE") {
                    Some(p) => PathBuf::from(p),
                    None => SRH_TOKEN_FILES.iter().map(PathBuf::from).find(|p| p.exists()).ok_or_else(|| {
                        invalid("SRH_MODE", format!("file mode needs a tokens file at one of {SRH_TOKEN_FILES:?} (or SRH_TOKENS_FILE)"))
                    })?,
                };
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError::SrhFile { path: path.clone(), message: e.to_string() })?;
                let entries: HashMap<String, SrhEntry> = serde_json::from_str(&text)
                    .map_err(|e| ConfigError::SrhFile { path: path.clone(), message: e.to_string() })?;
                let mut entries: Vec<_> = entries.into_iter().collect();
                entries.sort_by(|a, b| a.1.srh_id.cmp(&b.1.srh_id));
                for (token, e) in entries {
                    self.tokens.push(TokenConfig {
                        token: token.into(),
                        url: e.connection_string.into(),
                        read_only: false,
                        name: e.srh_id,
                        rate_limit: None,
                    });
                }
                Ok(())
            }
            Some(other) => Err(invalid("SRH_MODE", format!("`{other}` is not `env` or `file`"))),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (i, t) in self.tokens.iter().enumerate() {
            if t.token.expose_secret().len() < 8 {
                return Err(invalid(&format!("tokens[{i}].token"), "must be at least 8 characters"));
            }
            let url = t.url.expose_secret();
            // The parse error is not shown: it could echo the password in the URL.
            if redis::Client::open(url).is_err() {
                return Err(invalid(&format!("tokens[{i}].url"), "not a usable redis:// or rediss:// URL"));
            }
        }
        if let Some(url) = &self.http.public_url
            && (!matches!(url.scheme(), "http" | "https") || url.host().is_none() || url.query().is_some())
        {
            return Err(invalid("http.public_url", "must be an http:// or https:// URL without a query"));
        }
        let at_least_one = [
            ("http.max_body_bytes", self.http.max_body_bytes as u64),
            ("http.max_pipeline_commands", self.http.max_pipeline_commands as u64),
            ("http.max_response_bytes", self.http.max_response_bytes as u64),
            ("http.max_connections", self.http.max_connections as u64),
            ("http.max_streams_per_key", self.http.max_streams_per_key as u64),
            ("http.max_requests_in_flight_per_key", self.http.max_requests_in_flight_per_key as u64),
            ("instances.max_local_instances", u64::from(self.instances.max_local_instances)),
            ("instances.max_local_memory_mb", self.instances.max_local_memory_mb),
        ];
        if let Some((key, _)) = at_least_one.iter().find(|(_, v)| *v == 0) {
            return Err(invalid(key, "must be greater than 0"));
        }
        let host_mb = host_memory_mb();
        if self.instances.max_local_memory_mb > host_mb {
            return Err(invalid(
                "instances.max_local_memory_mb",
                format!(
                    "{} MiB is more than this host's {host_mb} MiB of RAM",
                    self.instances.max_local_memory_mb
                ),
            ));
        }
        if self.backend.script_timeout.is_zero() {
            return Err(invalid("backend.script_timeout", "must be greater than 0"));
        }
        if let Some(url) = &self.database_url {
            let url = url.expose_secret();
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite://"))
            {
                return Err(invalid(
                    "database_url",
                    "must start with postgres://, postgresql:// or sqlite://",
                ));
            }
        }
        let rates = std::iter::once(("rate_limit", self.rate_limit.default_rate()))
            .chain(std::iter::once(("auth.anonymous_rate", self.auth.anonymous_rate())))
            .chain(self.rate_limit.plans.values().map(|r| ("rate_limit.plans", *r)))
            .chain(self.rate_limit.tokens.map(|r| ("rate_limit.tokens", r)))
            .chain(self.tokens.iter().filter_map(|t| t.rate_limit.map(|r| ("tokens[].rate_limit", r))));
        for (key, r) in rates {
            if r.per_second == 0 || r.burst == 0 {
                return Err(invalid(key, "per_second and burst must be at least 1"));
            }
        }
        match (self.rate_limit.mode, &self.rate_limit.redis_url) {
            (RateLimitMode::Distributed, None) => {
                return Err(invalid(
                    "rate_limit.redis_url",
                    "required with rate_limit.mode = \"distributed\"",
                ));
            }
            (_, Some(url)) if redis::Client::open(url.expose_secret()).is_err() => {
                return Err(invalid("rate_limit.redis_url", "not a usable redis:// or rediss:// URL"));
            }
            _ => {}
        }
        if self.auth.invitation_ttl.is_zero() || time::Duration::try_from(self.auth.invitation_ttl).is_err() {
            return Err(invalid(
                "auth.invitation_ttl",
                "must be greater than 0 (and below ~292 billion years)",
            ));
        }
        if self.audit.retention < Duration::from_secs(24 * 3600)
            || time::Duration::try_from(self.audit.retention).is_err()
        {
            return Err(invalid("audit.retention", "must be at least 1 day (and below ~292 billion years)"));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(10)).contains(&self.usage.interval) {
            return Err(invalid("usage.interval", "must be between 10ms and 10s"));
        }
        if self.cors.allow_credentials && self.cors.any_origin() {
            return Err(invalid("cors.allow_credentials", "cannot be combined with the `*` origin"));
        }
        self.instances.external.policy()?;
        self.tls.validate()?;
        self.backups.validate()?;
        Ok(())
    }
}

/// Backups of instances (docs/BACKUPS.md): where they are kept and what bounds them.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupSettings {
    /// Backups one organization keeps, of every state and kind. Past it, a create (manual
    /// or daily) is refused until some are deleted.
    pub max_per_org: u32,
    /// MiB of ready backups one organization keeps: once reached, new backups are refused.
    pub max_mb_per_org: u64,
    /// The largest RDB file an instance may be created from (upload), in MiB.
    pub max_upload_mb: u64,
    /// The memory the scratch `redis-server` of an external instance's backup may hold, in
    /// MiB: a bigger dataset fails the backup instead of growing this host's memory.
    pub max_scratch_memory_mb: u64,
    /// Backups and restores running at once on this replica; more wait their turn.
    pub max_concurrent: usize,
    /// How long one backup or restore may take before it fails.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How often the scheduler looks for due daily backups.
    #[serde(with = "humantime_serde")]
    pub scheduler_interval: Duration,
    /// `redis-check-rdb`, which checks uploaded RDB files; a bare name is looked up in `PATH`.
    pub redis_check_rdb: PathBuf,
    /// S3-compatible object storage; unset: `data_dir/backups`.
    pub s3: Option<S3Settings>,
    /// What the scheduler takes for "now": the wall clock, unless a test injects its own.
    #[serde(skip)]
    pub clock: Clock,
}

/// A bucket on S3 or an S3-compatible server (MinIO, Ceph, moto).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// Unset: AWS S3 itself. Otherwise the server's URL (`http://` is allowed for a server
    /// on a private network); buckets are addressed by path.
    pub endpoint: Option<String>,
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: SecretString,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// The scheduler's notion of now; [`Clock::default`] is the wall clock.
#[derive(Clone, Default)]
pub struct Clock(Option<std::sync::Arc<dyn Fn() -> time::OffsetDateTime + Send + Sync>>);

impl Clock {
    /// A clock that answers `now()` (tests: a time they move by hand).
    pub fn fixed_by(now: impl Fn() -> time::OffsetDateTime + Send + Sync + 'static) -> Clock {
        Clock(Some(std::sync::Arc::new(now)))
    }

    pub fn now(&self) -> time::OffsetDateTime {
        match &self.0 {
            Some(f) => f(),
            None => time::OffsetDateTime::now_utc(),
        }
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Clock(injected)" } else { "Clock(wall)" })
    }
}

impl Default for BackupSettings {
    fn default() -> Self {
        Self {
            max_per_org: 100,
            max_mb_per_org: 10 * 1024,
            max_upload_mb: 1024,
            max_scratch_memory_mb: 1024,
            max_concurrent: 2,
            timeout: Duration::from_secs(30 * 60),
            scheduler_interval: Duration::from_secs(60),
            redis_check_rdb: PathBuf::from("redis-check-rdb"),
            s3: None,
            clock: Clock::default(),
        }
    }
}

impl BackupSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let at_least_one = [
            ("backups.max_per_org", u64::from(self.max_per_org)),
            ("backups.max_mb_per_org", self.max_mb_per_org),
            ("backups.max_upload_mb", self.max_upload_mb),
            ("backups.max_scratch_memory_mb", self.max_scratch_memory_mb),
            ("backups.max_concurrent", self.max_concurrent as u64),
            ("backups.timeout", self.timeout.as_millis() as u64),
            ("backups.scheduler_interval", self.scheduler_interval.as_millis() as u64),
        ];
        if let Some((key, _)) = at_least_one.iter().find(|(_, v)| *v == 0) {
            return Err(invalid(key, "must be greater than 0"));
        }
        if let Some(s3) = &self.s3 {
            if s3.bucket.is_empty() {
                return Err(invalid("backups.s3.bucket", "must not be empty"));
            }
            if let Some(e) = &s3.endpoint
                && !(e.starts_with("http://") || e.starts_with("https://"))
            {
                return Err(invalid("backups.s3.endpoint", "must be an http:// or https:// URL"));
            }
        }
        Ok(())
    }
}

/// A commented example configuration (`redisgate config default`).
pub const EXAMPLE: &str = include_str!("../redisgate.example.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn example_file_parses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, EXAMPLE).unwrap();
        let s = Settings::load(Some(&p), &env(&[])).unwrap();
        assert_eq!(s.tokens.len(), 2);
        assert!(s.tokens[1].read_only);
        // The safe defaults are what the example shows.
        assert_eq!(s.auth.registration, Registration::Invite);
        assert_eq!(s.auth.invitation_ttl, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(s.quota.max_organizations_per_user, 3);
        assert!(s.http.trusted_proxies.is_empty());
        assert_eq!(s.auth.anonymous_rate(), Rate { per_second: 1, burst: 30 });
        assert_eq!(s.audit.retention, Duration::from_secs(90 * 24 * 3600));
        assert_eq!(s.usage.interval, Duration::from_secs(10));
    }

    #[test]
    fn tls_keys_come_together() {
        let load = |pairs: &[(&str, &str)]| Settings::load(None, &env(pairs)).map_err(|e| e.to_string());
        let e = load(&[("REDISGATE_TLS__CERT_FILE", "/c.pem")]).unwrap_err();
        assert!(e.contains("tls.key_file"), "{e}");
        let e = load(&[("REDISGATE_TLS__CLIENT_CA_FILE", "/ca.pem")]).unwrap_err();
        assert!(e.contains("tls.client_ca_file"), "{e}");
        let e = load(&[("REDISGATE_TLS__PLAIN_LISTEN", "127.0.0.1:8081")]).unwrap_err();
        assert!(e.contains("tls.plain_listen"), "{e}");
        let both = [("REDISGATE_TLS__CERT_FILE", "/c.pem"), ("REDISGATE_TLS__KEY_FILE", "/k.pem")];
        let e = load(&[both[0], both[1], ("REDISGATE_TLS__CLIENT_AUTH", "optional")]).unwrap_err();
        assert!(e.contains("tls.client_auth"), "{e}");
        let s = Settings::load(
            None,
            &env(&[
                both[0],
                both[1],
                ("REDISGATE_TLS__PLAIN_LISTEN", "127.0.0.1:8081"),
                ("REDISGATE_TLS__CLIENT_CA_FILE", "/ca.pem"),
                ("REDISGATE_TLS__CLIENT_AUTH", "optional"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (s.tls.plain_listen.map(|a| a.port()), s.tls.client_auth),
            (Some(8081), Some(ClientAuth::Optional))
        );
        assert!(!s.instances.external.allow_insecure_tls, "verification is the default");
    }

    #[test]
    fn trusted_proxies_are_cidrs() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[http]\ntrusted_proxies = [\"127.0.0.1/32\", \"::1/128\"]\n").unwrap();
        let s = Settings::load(Some(&p), &env(&[])).unwrap();
        assert_eq!(s.http.trusted_proxies.len(), 2);
        assert!(s.http.trusted_proxies[0].contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap()));
    }

    #[test]
    fn env_wins_over_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "listen = \"127.0.0.1:1111\"\n[http]\nmax_body_bytes = 5\n").unwrap();
        let s = Settings::load(
            Some(&p),
            &env(&[
                ("REDISGATE_LISTEN", "127.0.0.1:2222"),
                ("REDISGATE_HTTP__MAX_BODY_BYTES", "7"),
                ("REDISGATE_BACKEND__RETRY_DELAY", "250ms"),
            ]),
        )
        .unwrap();
        assert_eq!(s.listen.port(), 2222);
        assert_eq!(s.http.max_body_bytes, 7);
        assert_eq!(s.backend.retry_delay, Duration::from_millis(250));
    }

    #[test]
    fn srh_env_mode() {
        let s = Settings::load(
            None,
            &env(&[
                ("SRH_MODE", "env"),
                ("SRH_TOKEN", "example_token"),
                ("SRH_CONNECTION_STRING", "redis://redis:6379"),
                ("SRH_PORT", "8079"),
            ]),
        )
        .unwrap();
        assert_eq!(s.listen, "0.0.0.0:8079".parse().unwrap());
        assert_eq!(s.tokens[0].token.expose_secret(), "example_token");
    }

    #[test]
    fn srh_file_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.json");
        std::fs::write(&p, r#"{"example_token_1":{"srh_id":"a","connection_string":"redis://localhost:6379","max_connections":3},
                               "example_token_2":{"srh_id":"b","connection_string":"rediss://u:p@host:6380","max_connections":3}}"#).unwrap();
        let s = Settings::load(None, &env(&[("SRH_MODE", "file"), ("SRH_TOKENS_FILE", p.to_str().unwrap())]))
            .unwrap();
        assert_eq!(s.tokens.len(), 2);
        assert_eq!(s.tokens[1].name.as_deref(), Some("b"));
    }

    #[test]
    fn host_memory_defaults() {
        let meminfo = "MemTotal:       24683584 kB\nMemFree:         3558500 kB\n";
        assert_eq!(mem_total_mb(meminfo), Some(24105));
        assert_eq!(mem_total_mb("MemFree: 1 kB\n"), None);
        assert_eq!(default_max_local_memory_mb(24105), 12052);
        assert_eq!(default_max_local_instances(24105), 376);
        assert_eq!(default_max_local_instances(32), 1);
        assert_eq!(default_max_local_instances(1 << 20), 1000);
        assert!(Settings::default().instances.max_local_memory_mb <= host_memory_mb());
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = Settings::load(
            None,
            &env(&[("SRH_MODE", "env"), ("SRH_TOKEN", "short"), ("SRH_CONNECTION_STRING", "redis://x")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("tokens[0].token"), "{e}");
        let e = Settings::load(
            None,
            &env(&[("REDISGATE_TOKEN", "long-enough"), ("REDISGATE_REDIS_URL", "http://x")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("tokens[0].url"), "{e}");
        let e = Settings::load(None, &env(&[("REDISGATE_HTTP__MAX_BODY_BYTES", "lots")])).unwrap_err();
        assert!(e.to_string().contains("max_body_bytes"), "{e}");
        let e = Settings::load(None, &env(&[("REDISGATE_AUTH__INVITATION_TTL", "0s")])).unwrap_err();
        assert!(e.to_string().contains("auth.invitation_ttl"), "{e}");
        let e = Settings::load(None, &env(&[("REDISGATE_AUTH__REGISTRATION", "sometimes")])).unwrap_err();
        assert!(e.to_string().contains("registration"), "{e}");
        let e = Settings::load(None, &env(&[("REDISGATE_AUTH__COOKIE_SECURE", "sometimes")])).unwrap_err();
        assert!(e.to_string().contains("cookie_secure"), "{e}");
        let s = Settings::load(None, &env(&[("REDISGATE_AUTH__COOKIE_SECURE", "always")])).unwrap();
        assert_eq!(s.auth.cookie_secure, CookieSecure::Always);
        assert_eq!(Settings::default().auth.cookie_secure, CookieSecure::Auto);
        let e = Settings::load(None, &env(&[("REDISGATE_AUDIT__RETENTION", "23h")])).unwrap_err();
        assert!(e.to_string().contains("audit.retention"), "{e}");
        let e = Settings::load(None, &env(&[("REDISGATE_USAGE__INTERVAL", "1m")])).unwrap_err();
        assert!(e.to_string().contains("usage.interval"), "{e}");
        let e = Settings::load(None, &env(&[("REDISGATE_AUTH__ANONYMOUS_RATE__BURST", "0")])).unwrap_err();
        assert!(e.to_string().contains("auth.anonymous_rate"), "{e}");
        // One half of the rate alone keeps the default of the other.
        let s = Settings::load(None, &env(&[("REDISGATE_AUTH__ANONYMOUS_RATE__BURST", "5")])).unwrap();
        assert_eq!(s.auth.anonymous_rate(), Rate { per_second: 1, burst: 5 });
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[http]\ntrusted_proxies = [\"10.0.0.0/33\"]\n").unwrap();
        let e = Settings::load(Some(&p), &env(&[])).unwrap_err();
        assert!(e.to_string().contains("trusted_proxies"), "{e}");
        let e = Settings::load(None, &env(&[("SRH_MODE", "weird")])).unwrap_err();
        assert!(e.to_string().contains("SRH_MODE"), "{e}");
        let e = Settings::load(None, &env(&[("REDISGATE_RATE_LIMIT__MODE", "distributed")])).unwrap_err();
        assert!(e.to_string().contains("rate_limit.redis_url"), "{e}");
        let e = Settings::load(
            None,
            &env(&[("REDISGATE_RATE_LIMIT__MODE", "distributed"), ("REDISGATE_RATE_LIMIT__REDIS_URL", "x")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("rate_limit.redis_url"), "{e}");
        for key in ["HTTP__MAX_CONNECTIONS", "HTTP__MAX_STREAMS_PER_KEY", "INSTANCES__MAX_LOCAL_INSTANCES"] {
            let e = Settings::load(None, &env(&[(&format!("REDISGATE_{key}"), "0")])).unwrap_err();
            assert!(e.to_string().contains(&key.to_lowercase().replace("__", ".")), "{e}");
        }
        let e = Settings::load(None, &env(&[("REDISGATE_INSTANCES__MAX_LOCAL_MEMORY_MB", "1000000000")]))
            .unwrap_err();
        assert!(e.to_string().contains("instances.max_local_memory_mb"), "{e}");
    }

    #[test]
    fn egress_allow_list_is_validated_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[instances.external]\nallow = [\"10.0.0.0/8\", \"redis.internal:6379\"]\n")
            .unwrap();
        let s = Settings::load(Some(&p), &env(&[])).unwrap();
        assert_eq!(s.instances.external.allow.len(), 2);
        std::fs::write(&p, "[instances.external]\nallow = [\"10.0.0.0/8\", \"10.0.0.1/8\"]\n").unwrap();
        let e = Settings::load(Some(&p), &env(&[])).unwrap_err();
        assert!(e.to_string().contains("instances.external.allow[1]"), "{e}");
        assert!(Settings::default().instances.external.allow.is_empty(), "only public addresses by default");
        let s = Settings::load(Some(&p), &env(&[(EGRESS_ALLOW_ENV, "127.0.0.0/8, cache:6379")])).unwrap();
        assert_eq!(s.instances.external.allow, ["127.0.0.0/8", "cache:6379"], "the environment wins");
        let e = Settings::load(None, &env(&[(EGRESS_ALLOW_ENV, "10.0.0.0/8,not a host")])).unwrap_err();
        assert!(e.to_string().contains("instances.external.allow[1]"), "{e}");
    }
}
