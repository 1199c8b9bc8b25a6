//! Connections to one Redis server: a supervised, shared, multiplexed connection for
//! ordinary commands, and dedicated connections for SSE streams.
//!
//! States: `Connecting` (requests wait) → `Up` (requests share the connection) → on
//! disconnect `Down` (requests fail fast with 503) → reconnect every `retry_delay` → `Up`.
//! A backend [`Hold::Always`] starts connecting at once, and requests wait while that first
//! cycle (1 attempt + `connect_retries` retries) runs, so a start-up race with Redis does not
//! fail them, but an outage never makes them hang.
//!
//! An instance's backend is held [`Hold::OnDemand`]: it starts `Idle`, with no connection and
//! no task. Its first request starts the supervisor and waits for one connect attempt; after
//! `backend.idle_timeout` without a request (up or down) the supervisor closes the connection,
//! the script connections with it, and ends: the backend is `Idle` again and costs nothing
//! but its memory. So ten thousand registered instances cost what the busy ones cost.
//!
//! Health: an open connection is checked every `health_check_interval`, by the replies it
//! carried since the last check, else by a PING. An idle backend is checked by
//! [`Backend::probe`] (connect, PING, close), which the instance service runs at a bounded
//! total rate. Each check's outcome is kept with its time ([`Backend::health`]).
//!
//! A command is sent once. If the connection breaks while it is in flight, the client gets a
//! 503 saying the outcome is unknown: re-sending could apply a write twice.
//!
//! Scripts go through [`Backend::run_script`] / [`Backend::run_script_batch`]: bounded by
//! `script_timeout`, and on local instances sent as the key scope's ACL user over a connection
//! of that user, opened on the first script (see [`script`]). Those connections follow
//! the same rules: 503 while they cannot be opened, a command is never re-sent, and one that
//! broke is opened again by the next script.
//!
//! A Sentinel or Cluster instance's backend routes instead ([`Backend::start_routed`]): each
//! call goes to the plain backends of the servers [`ha`] picks, under the same rules.

pub mod ha;
pub mod mux;
pub mod script;

// The connection metrics' names: this module's own, listed with the others in
// `ops::metrics` (which re-exports them), so the backends need nothing of `ops`.
pub const REDIS_CONNECTIONS_ACTIVE: &str = "redis_connections_active";
pub const REDIS_CONNECTION_RETRIES: &str = "redis_connection_retries_total";
pub const REDIS_RECONNECTS: &str = "redis_reconnects_total";
pub const TOPOLOGY_CHANGES: &str = "redis_topology_changes_total";
pub const CLUSTER_REDIRECTS: &str = "redis_cluster_redirects_total";

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use redis::aio::PubSub;
use redis::{Client, Value};
use redisgate_core::provision::UNREACHABLE;
use redisgate_provision::SharedResolver;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use redisgate_core::policy::Access;

use self::ha::Routed;
use self::mux::Mux;
use self::script::{Kinds, ScopeError, ScopeUsers};
use crate::config::BackendSettings;

/// Why a backend could not serve a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("ERR Redis is unavailable ({reason}); retry later")]
    Unavailable { reason: Arc<str>, retry_after: Duration },
    #[error(
        "ERR connection to Redis was lost with the request in flight; it may or may not have run and was not re-sent"
    )]
    ConnectionLost { retry_after: Duration },
    #[error("ERR Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("ERR too many concurrent streams on this database; retry later")]
    TooManyStreams { retry_after: Duration },
    #[error("ERR unexpected answer from Redis: {0}")]
    Protocol(String),
    #[error(
        "ERR the script ran longer than backend.script_timeout ({timeout:?}) and was not killed: {reason}; it runs on, and the database answers BUSY until it ends"
    )]
    ScriptNotKilled { timeout: Duration, reason: &'static str },
}

#[derive(Clone)]
pub(super) enum State {
    /// No connection and no supervisor: the next request starts one ([`Hold::OnDemand`]).
    Idle,
    Connecting,
    Up(Mux),
    Down(Arc<str>),
}

/// When a backend holds its shared connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// From the start and for good: the operator's servers (standalone tokens, the rate
    /// limiter's Redis) and the nodes of a Sentinel or Cluster topology, whose routing needs
    /// them connected.
    Always,
    /// From the first request until `backend.idle_timeout` after the last: instances.
    OnDemand,
}

/// What the last check of a backend's server found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// It answered.
    Healthy,
    /// It did not (or its connection is down).
    Unhealthy,
    /// Not checked yet: an idle backend the checks have not reached since it was served.
    Unchecked,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Unchecked => "unchecked",
        }
    }
}

/// How the shared connection's watch ended.
enum Watched {
    Broken,
    Idle,
    Stopped,
}

/// One Redis server as seen by the gateway.
pub struct Backend {
    label: String,
    /// Read at each connect, so that a credential reset (a new password) applies to the next
    /// connection while the current ones, already authenticated, carry on.
    client: std::sync::RwLock<Client>,
    /// An external instance's: every connect resolves through the egress policy, and
    /// failures are told to clients in one uniform reason (details only in the log).
    egress: Option<SharedResolver>,
    cfg: BackendSettings,
    state: watch::Sender<State>,
    check_now: Notify,
    streams: Arc<Semaphore>,
    /// This backend's own stop: a child of the application's, fired earlier by [`Backend::stop`]
    /// when its instance is deleted.
    stop: CancellationToken,
    /// Set for local instances: scripts run as their key scope's ACL user.
    scope_users: OnceLock<ScopeUsers>,
    /// Set for Sentinel and Cluster instances: calls go where it routes them (boxed there, as
    /// they come back to a plain backend's methods).
    routed: Option<Routed>,
    /// Set for an external instance with a CA of its own: the roots its stream connections'
    /// TLS is verified against (the shared connection has them in its client).
    stream_roots: OnceLock<Arc<rustls::ClientConfig>>,
    /// What the data plane counted for this instance since the usage sampler last looked
    /// ([`crate::usage`]): reached through the backend the request already holds.
    usage: redisgate_core::usage::Meter,
    hold: Hold,
    /// Itself, for the supervisor a request starts ([`Hold::OnDemand`]).
    me: Weak<Backend>,
    tracker: TaskTracker,
    /// Set by every request that takes the shared connection; the supervisor's checks take it
    /// (one relaxed store per request: the idle clock needs no time read on the hot path).
    used: AtomicBool,
    /// Set by every reply: a check that finds it set needs no PING.
    answered: AtomicBool,
    /// When a request last wanted a connection that was not up, in ms since `epoch` (the
    /// reconnect loop gives up after `idle_timeout` without one).
    wanted_at: AtomicU64,
    epoch: tokio::time::Instant,
    /// When a check last found the server answering / not answering (unix ms; 0: never).
    healthy_at: AtomicI64,
    failed_at: AtomicI64,
}

impl Backend {
    /// Creates the backend; its connection supervisor runs on `tracker` (from now on, or from
    /// the first request: see [`Hold`]) and stops when `cancel` fires or [`Backend::stop`] is
    /// called. `label` names it in logs (never the URL: it may hold a password).
    pub fn start(
        label: String,
        client: Client,
        hold: Hold,
        cfg: BackendSettings,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        Self::start_with(label, client, None, hold, cfg, tracker, cancel)
    }

    /// [`Backend::start`] for a tenant's server: connections dial only addresses `egress`
    /// admits, and clients are never told why a connect failed.
    pub fn start_checked(
        label: String,
        client: Client,
        egress: SharedResolver,
        hold: Hold,
        cfg: BackendSettings,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        Self::start_with(label, client, Some(egress), hold, cfg, tracker, cancel)
    }

    fn start_with(
        label: String,
        client: Client,
        egress: Option<SharedResolver>,
        hold: Hold,
        cfg: BackendSettings,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let first = match hold {
            Hold::Always => State::Connecting,
            Hold::OnDemand => State::Idle,
        };
        let backend = Self::new(label, client, egress, hold, cfg, first, None, tracker, cancel.child_token());
        if hold == Hold::Always {
            tracker.spawn(Arc::clone(&backend).supervise(backend.stop.clone()));
        }
        backend
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        label: String,
        client: Client,
        egress: Option<SharedResolver>,
        hold: Hold,
        cfg: BackendSettings,
        state: State,
        routed: Option<Routed>,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            label,
            client: std::sync::RwLock::new(client),
            egress,
            streams: Arc::new(Semaphore::new(cfg.max_streams)),
            cfg,
            state: watch::Sender::new(state),
            check_now: Notify::new(),
            stop,
            scope_users: OnceLock::new(),
            routed,
            stream_roots: OnceLock::new(),
            usage: Default::default(),
            hold,
            me: me.clone(),
            tracker: tracker.clone(),
            used: AtomicBool::new(false),
            answered: AtomicBool::new(false),
            wanted_at: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
            healthy_at: AtomicI64::new(0),
            failed_at: AtomicI64::new(0),
        })
    }

    /// A Sentinel or Cluster instance's backend: `route` builds the router from this backend's
    /// stop token (its own backends and tasks stop with it). It has no connection of its own;
    /// `client` (its first listed server) only names it.
    pub fn start_routed(
        label: String,
        client: Client,
        cfg: BackendSettings,
        cancel: CancellationToken,
        route: impl FnOnce(CancellationToken) -> Routed,
    ) -> Arc<Self> {
        let stop = cancel.child_token();
        let routed = Some(route(stop.clone()));
        let state = State::Down("routed".into());
        // Its tracker is never used: the router's own backends supervise themselves.
        Self::new(label, client, None, Hold::Always, cfg, state, routed, &TaskTracker::new(), stop)
    }

    /// The client the next connection is opened with.
    fn client(&self) -> Client {
        self.client.read().expect("backend client lock").clone()
    }

    /// Opens future connections with `client` (a credential reset): the shared connection
    /// and open streams stay as they are, so no request sees the change.
    pub fn set_client(&self, client: Client) {
        *self.client.write().expect("backend client lock") = client;
    }

    /// The `INFO` text of every server holding this backend's keyspace (one, or a cluster's
    /// primaries), each answer bounded by `per_server` (else by the response timeout alone);
    /// `None` if any does not answer.
    pub async fn info(self: &Arc<Self>, per_server: Option<Duration>) -> Option<Vec<String>> {
        let servers = match self.routed() {
            Some(routed) => routed.primaries(),
            None => vec![Arc::clone(self)],
        };
        let mut texts = Vec::with_capacity(servers.len());
        for server in servers {
            let cmd = redis::cmd("INFO");
            let info = match per_server {
                Some(bound) => tokio::time::timeout(bound, server.run(&cmd)).await.ok()?,
                None => server.run(&cmd).await,
            };
            let info = info.ok()?;
            texts.push(match info {
                Value::BulkString(b) => String::from_utf8(b).ok()?,
                Value::VerbatimString { text, .. } => text,
                _ => return None,
            });
        }
        Some(texts)
    }

    /// The router of a Sentinel or Cluster instance's backend.
    pub fn routed(&self) -> Option<&Routed> {
        self.routed.as_ref()
    }

    /// Stops serving for good: the supervisor ends (no more reconnects, retries or logs), the
    /// shared connection closes, requests still holding the backend get 503, and its SSE
    /// streams end (see [`Backend::stopped`]).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Resolves once the backend is stopped (or the application shuts down).
    pub fn stopped(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.stop.clone().cancelled_owned()
    }

    /// The requests counted for the usage history since the sampler last took them.
    pub fn usage(&self) -> &redisgate_core::usage::Meter {
        &self.usage
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The `backend.*` settings it runs under.
    pub fn settings(&self) -> &BackendSettings {
        &self.cfg
    }

    /// `true` while the shared connection is up.
    pub fn is_up(&self) -> bool {
        if let Some(routed) = &self.routed {
            return routed.is_up();
        }
        matches!(*self.state.borrow(), State::Up(_))
    }

    /// What the last check found, and when the server was last seen answering. A Sentinel or
    /// Cluster instance is healthy while its router has every primary connected.
    pub fn health(&self) -> (Health, Option<time::OffsetDateTime>) {
        (self.health_state(), self.last_seen_healthy())
    }

    /// [`Backend::health`] without the time (the census asks it of every instance).
    pub fn health_state(&self) -> Health {
        if let Some(routed) = &self.routed {
            if routed.is_up() {
                self.record_check(true);
            }
        } else if let State::Down(_) = *self.state.borrow() {
            return Health::Unhealthy;
        }
        match (self.healthy_at.load(Ordering::Relaxed), self.failed_at.load(Ordering::Relaxed)) {
            (0, 0) => Health::Unchecked,
            (ok, failed) if failed > ok => Health::Unhealthy,
            _ => Health::Healthy,
        }
    }

    /// When a check last found the server answering.
    pub fn last_seen_healthy(&self) -> Option<time::OffsetDateTime> {
        at(self.healthy_at.load(Ordering::Relaxed))
    }

    /// Records a check's outcome (also the provisioner's, which checked the server before its
    /// backend was made).
    pub fn record_check(&self, answering: bool) {
        let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        let field = if answering { &self.healthy_at } else { &self.failed_at };
        field.store(now, Ordering::Relaxed);
    }

    /// Whether this backend holds no connection, so only [`Backend::probe`] can check it.
    pub fn is_idle(&self) -> bool {
        self.routed.is_none() && matches!(*self.state.borrow(), State::Idle)
    }

    /// Checks an idle backend's server with a connection of its own (connect, PING, close),
    /// bounded by the connect and response timeouts, and records the outcome. A backend with a
    /// connection (or a supervisor trying to open one) is checked by its supervisor instead.
    pub async fn probe(&self) {
        if !self.is_idle() || self.stop.is_cancelled() {
            return;
        }
        // A plain socket with AUTH, SELECT and PING written at once, as for a stream: no
        // multiplexer task and no CLIENT SETINFO, since this runs for every idle instance.
        let client = self.client();
        let info = client.get_connection_info();
        let ping = self.open_session(info, Some(redis::cmd("PING")));
        let bound = self.cfg.connect_timeout + self.cfg.response_timeout;
        let answered = matches!(tokio::time::timeout(bound, ping).await, Ok(Ok(_)));
        if !answered {
            tracing::debug!(backend = %self.label, "idle check: Redis did not answer");
        }
        self.record_check(answered);
    }

    fn unavailable(&self, reason: Arc<str>) -> BackendError {
        BackendError::Unavailable { reason, retry_after: self.cfg.retry_delay }
    }

    async fn connection(&self) -> Result<Mux, BackendError> {
        if let State::Up(conn) = &*self.state.borrow() {
            self.used.store(true, Ordering::Relaxed);
            return Ok(conn.clone());
        }
        let wanted = self.epoch.elapsed().as_millis() as u64;
        self.wanted_at.store(wanted, Ordering::Relaxed);
        let mut rx = self.state.subscribe();
        loop {
            let idle = match &*rx.borrow_and_update() {
                State::Up(conn) => {
                    self.used.store(true, Ordering::Relaxed);
                    return Ok(conn.clone());
                }
                State::Down(reason) => return Err(self.unavailable(reason.clone())),
                State::Connecting => false,
                State::Idle => true,
            };
            // (The state's read guard is gone: waking writes the state.)
            if idle {
                self.wake()?;
                continue;
            }
            if rx.changed().await.is_err() {
                return Err(self.unavailable("shutting down".into()));
            }
        }
    }

    /// Starts the supervisor of an idle backend (once, however many requests ask).
    fn wake(&self) -> Result<(), BackendError> {
        if self.stop.is_cancelled() {
            return Err(self.unavailable("stopped".into()));
        }
        let woke = self.state.send_if_modified(|state| {
            let idle = matches!(state, State::Idle);
            if idle {
                *state = State::Connecting;
            }
            idle
        });
        if woke && let Some(me) = self.me.upgrade() {
            self.tracker.spawn(Arc::clone(&me).supervise(me.stop.clone()));
        }
        Ok(())
    }

    /// A reply as the data plane takes it; the health checks count it as the server answering.
    fn answer<T>(&self, reply: redis::RedisResult<T>) -> Result<T, BackendError> {
        match reply {
            Ok(v) => {
                self.answered.store(true, Ordering::Relaxed);
                Ok(v)
            }
            Err(e) => Err(self.map_err(e)),
        }
    }

    fn map_err(&self, e: redis::RedisError) -> BackendError {
        if e.is_timeout() {
            BackendError::Timeout(self.cfg.response_timeout)
        } else if e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error() {
            self.report_broken();
            BackendError::ConnectionLost { retry_after: self.cfg.retry_delay }
        } else {
            BackendError::Protocol(e.to_string())
        }
    }

    /// Runs one command. Redis error replies come back as `Ok(Value::ServerError)`.
    pub async fn run(&self, cmd: &redis::Cmd) -> Result<Value, BackendError> {
        if let Some(routed) = &self.routed {
            return Box::pin(routed.run(cmd, None)).await;
        }
        let conn = self.connection().await?;
        self.answer(conn.send(cmd).await)
    }

    /// [`Backend::run`] for a command given as its arguments (the data plane's): a plain
    /// backend writes them to Redis as they are; a routed one builds the command its router
    /// reads keys from.
    pub async fn run_args(&self, args: &[Vec<u8>]) -> Result<Value, BackendError> {
        if self.routed.is_some() {
            return self.run(&packed(args)).await;
        }
        let conn = self.connection().await?;
        self.answer(conn.send_args(args).await)
    }

    /// Sends a pipeline as one contiguous write and returns all `count` replies, error replies
    /// included as values. Because the write is contiguous and Redis serves one connection in
    /// order, a MULTI … EXEC batch sent this way cannot interleave with other requests on the
    /// shared connection: that is what keeps `/multi-exec` atomic without a dedicated connection.
    pub async fn run_batch(&self, pipe: &redis::Pipeline, count: usize) -> Result<Vec<Value>, BackendError> {
        if let Some(routed) = &self.routed {
            return Box::pin(routed.run_batch(pipe, count, None)).await;
        }
        let conn = self.connection().await?;
        let values = self.answer(conn.send_batch(pipe).await)?;
        if values.len() != count {
            return Err(BackendError::Protocol(format!("expected {count} replies, got {}", values.len())));
        }
        Ok(values)
    }

    /// From now on scripts run as their key scope's ACL user, which RedisGate creates through
    /// this backend's (default) user: for local instances, whose server is ours.
    pub fn run_scripts_as_scope_users(&self, users: ScopeUsers) {
        let _ = self.scope_users.set(users);
    }

    /// Stream connections ([`Backend::pubsub`], [`Backend::monitor`]) verify the server
    /// against `roots` (the instance's own CA) instead of the platform's.
    pub fn verify_streams_with(&self, roots: Arc<rustls::ClientConfig>) {
        let _ = self.stream_roots.set(roots);
    }

    /// Runs one script command (see [`script`]).
    pub async fn run_script(
        &self,
        cmd: &redis::Cmd,
        access: Access,
        kinds: Kinds,
    ) -> Result<Value, BackendError> {
        if let Some(routed) = &self.routed {
            return Box::pin(routed.run(cmd, Some((access, kinds)))).await;
        }
        let conn = self.script_connection(access).await?;
        self.bounded(conn.send(cmd), access, kinds).await
    }

    /// [`Backend::run_batch`] for a batch holding scripts: all of it goes over the script
    /// connection, so its order (and a MULTI … EXEC's atomicity) holds there too.
    pub async fn run_script_batch(
        &self,
        pipe: &redis::Pipeline,
        count: usize,
        access: Access,
        kinds: Kinds,
    ) -> Result<Vec<Value>, BackendError> {
        if let Some(routed) = &self.routed {
            return Box::pin(routed.run_batch(pipe, count, Some((access, kinds)))).await;
        }
        let conn = self.script_connection(access).await?;
        let values = self.bounded(conn.send_batch(pipe), access, kinds).await?;
        if values.len() != count {
            return Err(BackendError::Protocol(format!("expected {count} replies, got {}", values.len())));
        }
        Ok(values)
    }

    /// The connection scripts of `access` run on: the scope user's on local instances, the
    /// shared one otherwise. Its response timeout leaves room for the kill and the reply after.
    async fn script_connection(&self, access: Access) -> Result<Mux, BackendError> {
        let shared = self.connection().await?;
        let mut conn = match self.scope_users.get() {
            None => shared,
            Some(users) => {
                let opened = users
                    .connection(access, &self.client(), &shared, self.state.subscribe(), |c| {
                        self.connect_script_user(c)
                    })
                    .await;
                match opened {
                    Ok(conn) => conn,
                    Err(ScopeError::Backend(e)) => return Err(e),
                    Err(ScopeError::Setup(reason)) => {
                        tracing::warn!(backend = %self.label, error = reason, "cannot set up the script user");
                        return Err(self.unavailable(reason.into()));
                    }
                }
            }
        };
        conn.set_response_timeout(self.script_response_timeout());
        Ok(conn)
    }

    fn script_response_timeout(&self) -> Duration {
        self.cfg.script_timeout + self.cfg.response_timeout
    }

    async fn connect_script_user(&self, client: Client) -> Result<Mux, BackendError> {
        self.connect_own(&client, self.script_response_timeout()).await
    }

    /// A connection of its own as `client`'s user (a script user's, a kill's), its requests
    /// answered within `response_timeout`; it closes when dropped or when the backend stops.
    async fn connect_own(&self, client: &Client, response_timeout: Duration) -> Result<Mux, BackendError> {
        let session = self.connect_dedicated(self.open_session(client.get_connection_info(), None)).await?;
        Ok(Mux::start(session, response_timeout, &self.tracker, &self.stop))
    }

    /// Awaits a script's reply; past `script_timeout`, kills the script and awaits the reply
    /// Redis then sends, or gives up at once when the script cannot be killed.
    async fn bounded<T>(
        &self,
        reply: impl Future<Output = redis::RedisResult<T>>,
        access: Access,
        kinds: Kinds,
    ) -> Result<T, BackendError> {
        let mut reply = std::pin::pin!(reply);
        let early = tokio::select! {
            r = &mut reply => Some(r),
            () = tokio::time::sleep(self.cfg.script_timeout) => None,
        };
        let result = match early {
            Some(r) => r,
            None => match self.kill_scripts(kinds).await {
                script::Killed::Done => reply.await,
                script::Killed::No(reason) => {
                    tracing::warn!(backend = %self.label, reason, "script exceeded backend.script_timeout and was not killed");
                    return Err(BackendError::ScriptNotKilled { timeout: self.cfg.script_timeout, reason });
                }
            },
        };
        match result {
            Ok(v) => self.answer(Ok(v)),
            Err(e) => {
                if let Some(users) = self.scope_users.get()
                    && (e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error())
                {
                    users.forget(access).await;
                }
                Err(self.map_err(e))
            }
        }
    }

    /// SCRIPT KILL / FUNCTION KILL over a short-lived connection of its own (the one that
    /// carried the script waits behind it), as this backend's (default or URL) user.
    async fn kill_scripts(&self, kinds: Kinds) -> script::Killed {
        tracing::info!(backend = %self.label, "script exceeded backend.script_timeout; killing it");
        // A busy server answers only a few commands (AUTH, the kills), which is all a session
        // of ours sends before them.
        match self.connect_own(&self.client(), self.cfg.response_timeout).await {
            Ok(conn) => script::kill(&conn, kinds).await,
            Err(_) => script::Killed::No("the kill could not be delivered"),
        }
    }

    fn stream_permit(&self) -> Result<OwnedSemaphorePermit, BackendError> {
        Arc::clone(&self.streams)
            .try_acquire_owned()
            .map_err(|_| BackendError::TooManyStreams { retry_after: self.cfg.retry_delay })
    }

    async fn connect_dedicated<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BackendError> {
        match tokio::time::timeout(self.cfg.connect_timeout, fut).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => {
                if self.egress.is_some() {
                    tracing::warn!(backend = %self.label, error = short_reason(&e), "cannot open a stream connection to Redis");
                }
                Err(self.unavailable(self.reason(&e).into()))
            }
            Err(_) if self.egress.is_some() => Err(self.unavailable(UNREACHABLE.into())),
            Err(_) => Err(self.unavailable("connect timed out".into())),
        }
    }

    /// The reason clients are given for a failed connect: its category, or for a tenant's
    /// server one text whatever the cause (which then only the log names).
    fn reason(&self, e: &redis::RedisError) -> &'static str {
        if self.egress.is_some() { UNREACHABLE } else { short_reason(e) }
    }

    /// A dedicated pub/sub connection for one SSE stream. The guard bounds concurrent
    /// streams and counts the connection; hold it as long as the connection.
    pub async fn pubsub(&self) -> Result<(PubSub, StreamGuard), BackendError> {
        if let Some(routed) = &self.routed {
            return Box::pin(routed.stream_node(None).await?.pubsub()).await;
        }
        let permit = self.stream_permit()?;
        let client = self.client();
        let info = client.get_connection_info();
        let conn = self
            .connect_dedicated(async {
                match &self.egress {
                    // `new` sets the session up (AUTH, SELECT) as the crate's own connect does.
                    Some(egress) => {
                        PubSub::new(
                            info.redis_settings(),
                            crate::egress::dial(info, egress, self.stream_roots.get()).await?,
                        )
                        .await
                    }
                    None => client.get_async_pubsub().await,
                }
            })
            .await?;
        Ok((conn, StreamGuard { _permit: permit, _active: ActiveConnection::open() }))
    }

    /// A dedicated connection that has already sent MONITOR, as the lines Redis sends.
    pub async fn monitor(&self) -> Result<(MonitorLines, StreamGuard), BackendError> {
        if let Some(routed) = &self.routed {
            return Box::pin(routed.stream_node(None).await?.monitor()).await;
        }
        let permit = self.stream_permit()?;
        let client = self.client();
        let info = client.get_connection_info();
        let lines = self
            .connect_dedicated(async {
                match &self.egress {
                    Some(egress) => {
                        monitor_over(
                            crate::egress::dial(info, egress, self.stream_roots.get()).await?,
                            info.redis_settings(),
                        )
                        .await
                    }
                    None => Ok(client.get_async_monitor().await?.into_on_message::<Value>().boxed()),
                }
            })
            .await?;
        Ok((lines, StreamGuard { _permit: permit, _active: ActiveConnection::open() }))
    }

    /// A dedicated connection with its session set up (AUTH, SELECT) and nothing else, for a
    /// stream the redis crate has no type for (sharded pub/sub, [`super::sharded`]). Dialled
    /// through the egress policy for a tenant's server; the guard as for [`Backend::pubsub`].
    /// A Sentinel or Cluster instance's backend has no server of its own: route first.
    pub async fn session(&self) -> Result<(Session, StreamGuard), BackendError> {
        if self.routed.is_some() {
            return Err(BackendError::Protocol("a routed backend has no session of its own".into()));
        }
        let permit = self.stream_permit()?;
        let client = self.client();
        let info = client.get_connection_info();
        let session = self.connect_dedicated(self.open_session(info, None)).await?;
        Ok((session, StreamGuard { _permit: permit, _active: ActiveConnection::open() }))
    }

    /// A plain connection to this backend's server with its session set up ([`set_up`],
    /// then `last`): dialled through the egress policy for a tenant's server, plainly for our
    /// own (a local instance, a standalone token's).
    async fn open_session(
        &self,
        info: &redis::ConnectionInfo,
        last: Option<redis::Cmd>,
    ) -> redis::RedisResult<Session> {
        let stream = match &self.egress {
            Some(egress) => crate::egress::dial(info, egress, self.stream_roots.get()).await?,
            None => crate::egress::dial_own(info).await?,
        };
        set_up(stream, info.redis_settings(), last).await
    }

    /// Asks the supervisor to check the connection now: a request just saw it fail.
    fn report_broken(&self) {
        self.check_now.notify_one();
    }

    async fn supervise(self: Arc<Self>, cancel: CancellationToken) {
        if self.connect_until(&cancel).await {
            return; // idle: the state says so, and the next request starts a supervisor again
        }
        // The state must not keep the last connection alive: its handle is what holds the
        // socket open.
        self.state.send_replace(State::Down("stopped".into()));
    }

    /// Connects, and reconnects while the backend is wanted. Returns `true` when it ended
    /// for idleness (having set the state to `Idle` as its last step), `false` when stopped.
    async fn connect_until(&self, cancel: &CancellationToken) -> bool {
        let mut failures = 0u32;
        let mut lost_before = false;
        // Only the start-up cycle of a backend held always lets requests wait through retries.
        let patience = match self.hold {
            Hold::Always => self.cfg.connect_retries,
            Hold::OnDemand => 0,
        };
        loop {
            let client = self.client();
            let open = tokio::time::timeout(
                self.cfg.connect_timeout,
                self.open_session(client.get_connection_info(), None),
            );
            let attempt = tokio::select! {
                r = open => r.unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into())),
                () = cancel.cancelled() => return false,
            };
            match attempt {
                Ok(session) => {
                    let conn = Mux::start(session, self.cfg.response_timeout, &self.tracker, &self.stop);
                    tracing::info!(backend = %self.label, "connected to Redis");
                    if lost_before {
                        metrics::counter!(REDIS_RECONNECTS).increment(1);
                    }
                    failures = 0;
                    self.record_check(true);
                    self.state.send_replace(State::Up(conn.clone()));
                    let active = ActiveConnection::open();
                    let watched = self.watch(conn, cancel).await;
                    drop(active);
                    match watched {
                        Watched::Stopped => return false,
                        Watched::Idle => {
                            tracing::debug!(backend = %self.label, "idle; connection closed");
                            if let Some(users) = self.scope_users.get() {
                                users.forget_all().await;
                            }
                            self.state.send_replace(State::Idle);
                            return true;
                        }
                        Watched::Broken => {}
                    }
                    tracing::warn!(backend = %self.label, "connection to Redis lost; reconnecting");
                    lost_before = true;
                    self.record_check(false);
                    self.state.send_replace(State::Down("connection lost, reconnecting".into()));
                }
                Err(e) => {
                    metrics::counter!(REDIS_CONNECTION_RETRIES).increment(1);
                    failures += 1;
                    self.record_check(false);
                    let reason = self.reason(&e);
                    if failures > patience || !matches!(*self.state.borrow(), State::Connecting) {
                        self.state.send_replace(State::Down(reason.into()));
                    }
                    tracing::warn!(backend = %self.label, attempt = failures, error = short_reason(&e), "cannot connect to Redis");
                    if self.hold == Hold::OnDemand && self.unwanted_for() >= self.cfg.idle_timeout {
                        self.state.send_replace(State::Idle);
                        return true;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(self.cfg.retry_delay) => {}
                        () = cancel.cancelled() => return false,
                    }
                }
            }
        }
    }

    /// How long since a request last wanted the connection while it was not up.
    fn unwanted_for(&self) -> Duration {
        let wanted = Duration::from_millis(self.wanted_at.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(wanted)
    }

    /// Checks the shared connection every `health_check_interval`, and at once when a request
    /// reports a failure: by the replies since the last check, else (or when a failure was
    /// reported) by a PING. Ends when the connection breaks (at once: [`Mux::closed`]) or is
    /// found broken, when it has not been used for `idle_timeout` ([`Hold::OnDemand`]), or at
    /// shutdown.
    async fn watch(&self, conn: Mux, cancel: &CancellationToken) -> Watched {
        let mut last_used = tokio::time::Instant::now();
        loop {
            let reported = tokio::select! {
                () = crate::beat::sleep(self.cfg.health_check_interval) => false,
                () = self.check_now.notified() => true,
                () = conn.closed() => return Watched::Broken,
                () = cancel.cancelled() => return Watched::Stopped,
            };
            let now = tokio::time::Instant::now();
            if self.used.swap(false, Ordering::Relaxed) {
                last_used = now;
            }
            if self.hold == Hold::OnDemand && now - last_used >= self.cfg.idle_timeout {
                return Watched::Idle;
            }
            if self.answered.swap(false, Ordering::Relaxed) && !reported {
                self.record_check(true);
                continue;
            }
            match conn.send(&redis::cmd("PING")).await {
                Err(e) if e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error() => {
                    return Watched::Broken;
                }
                Err(e) => {
                    self.record_check(false);
                    tracing::warn!(backend = %self.label, error = short_reason(&e), "health check failed")
                }
                Ok(_) => self.record_check(true),
            }
        }
    }
}

/// `args` as a `redis::Cmd`, sized once: growing its argument and data buffers part by part
/// cost more than copying.
pub fn packed(args: &[Vec<u8>]) -> redis::Cmd {
    let mut c = redis::Cmd::with_capacity(args.len(), args.iter().map(Vec::len).sum());
    for arg in args {
        c.arg(arg.as_slice());
    }
    c
}

/// A time kept as unix ms (0: never).
fn at(unix_ms: i64) -> Option<time::OffsetDateTime> {
    (unix_ms > 0)
        .then(|| time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000).ok())
        .flatten()
}

/// Counts one open Redis connection in `redis_connections_active` while it lives.
pub(super) struct ActiveConnection;

impl ActiveConnection {
    pub(super) fn open() -> Self {
        metrics::gauge!(REDIS_CONNECTIONS_ACTIVE).increment(1.0);
        ActiveConnection
    }
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        metrics::gauge!(REDIS_CONNECTIONS_ACTIVE).decrement(1.0);
    }
}

/// Held by an SSE stream: its slot among `max_streams`, and its count as an open connection.
pub struct StreamGuard {
    _permit: OwnedSemaphorePermit,
    _active: ActiveConnection,
}

/// What a MONITOR connection sends: one value per command Redis runs.
pub type MonitorLines = BoxStream<'static, Value>;

/// MONITOR over `stream`, a connection [`crate::egress::dial`] opened: the redis crate builds
/// its `Monitor` only over connections it dials itself. Redis writes each monitored command as
/// one simple string line (it escapes the arguments), so lines are all there is to parse.
async fn monitor_over(
    stream: Box<dyn crate::egress::Io>,
    info: &redis::RedisConnectionInfo,
) -> redis::RedisResult<MonitorLines> {
    let conn = set_up(stream, info, Some(redis::cmd("MONITOR"))).await?;
    let lines = futures_util::stream::unfold(conn, |mut conn| async move {
        let text = line(&mut conn).await.ok()??;
        Some((Value::BulkString(text.strip_prefix(b"+").unwrap_or(&text).to_vec()), conn))
    });
    Ok(lines.boxed())
}

/// A connection [`crate::egress::dial`] opened, its session set up.
pub type Session = BufReader<Box<dyn crate::egress::Io>>;

/// Sets the session up as the redis crate's connect does (AUTH with the URL's user and
/// password, SELECT of its database), then sends `last` if given, pipelined; every reply up to
/// the last must be `+OK`.
async fn set_up(
    stream: Box<dyn crate::egress::Io>,
    info: &redis::RedisConnectionInfo,
    last: Option<redis::Cmd>,
) -> redis::RedisResult<Session> {
    let mut setup = Vec::new();
    if let Some(password) = info.password() {
        setup.push(redis::cmd("AUTH").arg(info.username()).arg(password).clone());
    }
    if info.db() != 0 {
        setup.push(redis::cmd("SELECT").arg(info.db()).clone());
    }
    setup.extend(last);
    let mut conn = BufReader::new(stream);
    let packed: Vec<u8> = setup.iter().flat_map(redis::Cmd::get_packed_command).collect();
    conn.write_all(&packed).await?;
    conn.flush().await?;
    for i in 0..setup.len() {
        if !line(&mut conn).await?.is_some_and(|reply| reply.starts_with(b"+")) {
            let kind = if i == 0 && info.password().is_some() {
                redis::ErrorKind::AuthenticationFailed
            } else {
                redis::ErrorKind::Io
            };
            return Err(redis::RedisError::from((kind, "the server refused the session")));
        }
    }
    Ok(conn)
}

/// The longest MONITOR line read: the server is a tenant's, and a line without its end would
/// otherwise grow without bound. (Redis writes a command's arguments into its line, so a
/// larger write ends the stream.)
const MAX_MONITOR_LINE: u64 = 4 << 20;

/// One line without its `\r\n`; `None` at the end of the stream or past [`MAX_MONITOR_LINE`].
async fn line(conn: &mut BufReader<Box<dyn crate::egress::Io>>) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    conn.take(MAX_MONITOR_LINE).read_until(b'\n', &mut line).await?;
    Ok(line.ends_with(b"\n").then(|| line.trim_ascii_end().to_vec()))
}

/// A reason safe to show to clients and logs: the error's category, never the URL or password.
pub(crate) fn short_reason(e: &redis::RedisError) -> &'static str {
    if crate::egress::is_refusal(e) {
        "refused by the egress policy"
    } else if e.is_connection_refusal() {
        "connection refused"
    } else if e.is_timeout() {
        "connect timed out"
    } else if e.kind() == redis::ErrorKind::AuthenticationFailed {
        "authentication failed"
    } else if e.is_io_error() {
        "network error"
    } else {
        "connection failed"
    }
}
