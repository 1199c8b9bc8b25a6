//! Connections to one Redis server: a supervised, shared, multiplexed connection for
//! ordinary commands, and dedicated connections for SSE streams.
//!
//! States: `Connecting` (requests wait) → `Up` (requests share the connection) → on
//! disconnect `Down` (requests fail fast with 503) → reconnect every `retry_delay` → `Up`.
//! Requests wait only while the very first connection cycle (1 attempt + `connect_retries`
//! retries) is still running, so a start-up race with Redis does not fail requests, but an
//! outage never makes them hang.
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
pub mod script;

// The connection metrics' names: this module's own, listed with the others in
// `ops::metrics` (which re-exports them), so the backends need nothing of `ops`.
pub const REDIS_CONNECTIONS_ACTIVE: &str = "redis_connections_active";
pub const REDIS_CONNECTION_RETRIES: &str = "redis_connection_retries_total";
pub const REDIS_RECONNECTS: &str = "redis_reconnects_total";
pub const TOPOLOGY_CHANGES: &str = "redis_topology_changes_total";
pub const CLUSTER_REDIRECTS: &str = "redis_cluster_redirects_total";

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use redis::aio::{MultiplexedConnection, PubSub};
use redis::{AsyncConnectionConfig, Client, Value};
use redisgate_core::provision::UNREACHABLE;
use redisgate_provision::SharedResolver;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use redisgate_core::policy::Access;

use self::ha::Routed;
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
    Connecting,
    Up(MultiplexedConnection),
    Down(Arc<str>),
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
}

impl Backend {
    /// Creates the backend and starts its connection supervisor on `tracker`; the supervisor
    /// stops when `cancel` fires or [`Backend::stop`] is called. `label` names it in logs
    /// (never the URL: it may hold a password).
    pub fn start(
        label: String,
        client: Client,
        cfg: BackendSettings,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        Self::start_with(label, client, None, cfg, tracker, cancel)
    }

    /// [`Backend::start`] for a tenant's server: connections dial only addresses `egress`
    /// admits, and clients are never told why a connect failed.
    pub fn start_checked(
        label: String,
        client: Client,
        egress: SharedResolver,
        cfg: BackendSettings,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        Self::start_with(label, client, Some(egress), cfg, tracker, cancel)
    }

    fn start_with(
        label: String,
        client: Client,
        egress: Option<SharedResolver>,
        cfg: BackendSettings,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let backend = Arc::new(Self {
            label,
            client: std::sync::RwLock::new(client),
            egress,
            streams: Arc::new(Semaphore::new(cfg.max_streams)),
            cfg,
            state: watch::Sender::new(State::Connecting),
            check_now: Notify::new(),
            stop: cancel.child_token(),
            scope_users: OnceLock::new(),
            routed: None,
            stream_roots: OnceLock::new(),
            usage: Default::default(),
        });
        tracker.spawn(Arc::clone(&backend).supervise(backend.stop.clone()));
        backend
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
        Arc::new(Self {
            label,
            client: std::sync::RwLock::new(client),
            egress: None,
            streams: Arc::new(Semaphore::new(cfg.max_streams)),
            cfg,
            state: watch::Sender::new(State::Down("routed".into())),
            check_now: Notify::new(),
            routed: Some(route(stop.clone())),
            stop,
            scope_users: OnceLock::new(),
            stream_roots: OnceLock::new(),
            usage: Default::default(),
        })
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

    fn unavailable(&self, reason: Arc<str>) -> BackendError {
        BackendError::Unavailable { reason, retry_after: self.cfg.retry_delay }
    }

    async fn connection(&self) -> Result<MultiplexedConnection, BackendError> {
        if let State::Up(conn) = &*self.state.borrow() {
            return Ok(conn.clone());
        }
        let mut rx = self.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                State::Up(conn) => return Ok(conn.clone()),
                State::Down(reason) => return Err(self.unavailable(reason.clone())),
                State::Connecting => {}
            }
            if rx.changed().await.is_err() {
                return Err(self.unavailable("shutting down".into()));
            }
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
        let mut conn = self.connection().await?;
        conn.send_packed_command(cmd).await.map_err(|e| self.map_err(e))
    }

    /// Sends a pipeline as one contiguous write and returns all `count` replies, error replies
    /// included as values. Because the write is contiguous and Redis serves one connection in
    /// order, a MULTI … EXEC batch sent this way cannot interleave with other requests on the
    /// shared connection: that is what keeps `/multi-exec` atomic without a dedicated connection.
    pub async fn run_batch(&self, pipe: &redis::Pipeline, count: usize) -> Result<Vec<Value>, BackendError> {
        if let Some(routed) = &self.routed {
            return Box::pin(routed.run_batch(pipe, count, None)).await;
        }
        let mut conn = self.connection().await?;
        let values = conn.send_packed_commands(pipe, 0, count).await.map_err(|e| self.map_err(e))?;
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
        let mut conn = self.script_connection(access).await?;
        self.bounded(conn.send_packed_command(cmd), access, kinds).await
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
        let mut conn = self.script_connection(access).await?;
        let values = self.bounded(conn.send_packed_commands(pipe, 0, count), access, kinds).await?;
        if values.len() != count {
            return Err(BackendError::Protocol(format!("expected {count} replies, got {}", values.len())));
        }
        Ok(values)
    }

    /// The connection scripts of `access` run on: the scope user's on local instances, the
    /// shared one otherwise. Its response timeout leaves room for the kill and the reply after.
    async fn script_connection(&self, access: Access) -> Result<MultiplexedConnection, BackendError> {
        let mut shared = self.connection().await?;
        let mut conn = match self.scope_users.get() {
            None => shared,
            Some(users) => {
                let opened = users
                    .connection(access, &self.client(), &mut shared, self.state.subscribe(), |c| {
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

    async fn connect_script_user(&self, client: Client) -> Result<MultiplexedConnection, BackendError> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.cfg.connect_timeout))
            .set_response_timeout(Some(self.script_response_timeout()));
        self.connect_dedicated(client.get_multiplexed_async_connection_with_config(&cfg)).await
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
            Ok(v) => Ok(v),
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
        let info = self.client().get_connection_info().clone();
        // A busy server answers only a few commands (AUTH, HELLO, the kills): no CLIENT SETINFO.
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        let Ok(client) = Client::open(info.set_redis_settings(settings)) else {
            return script::Killed::No("the kill could not be delivered");
        };
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.cfg.connect_timeout))
            .set_response_timeout(Some(self.cfg.response_timeout));
        match self.connect_dedicated(client.get_multiplexed_async_connection_with_config(&cfg)).await {
            Ok(mut conn) => script::kill(&mut conn, kinds).await,
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
        let session = self
            .connect_dedicated(async {
                let stream = match &self.egress {
                    Some(egress) => crate::egress::dial(info, egress, self.stream_roots.get()).await?,
                    // Our own server (a local instance, a standalone token's): resolved plainly.
                    None => crate::egress::dial_own(info).await?,
                };
                set_up(stream, info.redis_settings(), None).await
            })
            .await?;
        Ok((session, StreamGuard { _permit: permit, _active: ActiveConnection::open() }))
    }

    /// Asks the supervisor to check the connection now: a request just saw it fail.
    fn report_broken(&self) {
        self.check_now.notify_one();
    }

    async fn supervise(self: Arc<Self>, cancel: CancellationToken) {
        self.connect_until(&cancel).await;
        // The state must not keep the last connection alive: its handle is what holds the
        // socket open.
        self.state.send_replace(State::Down("stopped".into()));
    }

    async fn connect_until(&self, cancel: &CancellationToken) {
        let mut failures = 0u32;
        let mut lost_before = false;
        loop {
            let mut cfg = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.cfg.connect_timeout))
                .set_response_timeout(Some(self.cfg.response_timeout));
            if let Some(egress) = &self.egress {
                cfg = cfg.set_dns_resolver(egress.clone());
            }
            let client = self.client();
            let attempt = tokio::select! {
                r = client.get_multiplexed_async_connection_with_config(&cfg) => r,
                () = cancel.cancelled() => return,
            };
            match attempt {
                Ok(conn) => {
                    tracing::info!(backend = %self.label, "connected to Redis");
                    if lost_before {
                        metrics::counter!(REDIS_RECONNECTS).increment(1);
                    }
                    failures = 0;
                    self.state.send_replace(State::Up(conn.clone()));
                    let active = ActiveConnection::open();
                    let keep_going = self.watch(conn, cancel).await;
                    drop(active);
                    if !keep_going {
                        return;
                    }
                    tracing::warn!(backend = %self.label, "connection to Redis lost; reconnecting");
                    lost_before = true;
                    self.state.send_replace(State::Down("connection lost, reconnecting".into()));
                }
                Err(e) => {
                    metrics::counter!(REDIS_CONNECTION_RETRIES).increment(1);
                    failures += 1;
                    let reason = self.reason(&e);
                    if failures > self.cfg.connect_retries
                        || !matches!(*self.state.borrow(), State::Connecting)
                    {
                        self.state.send_replace(State::Down(reason.into()));
                    }
                    tracing::warn!(backend = %self.label, attempt = failures, error = short_reason(&e), "cannot connect to Redis");
                    tokio::select! {
                        () = tokio::time::sleep(self.cfg.retry_delay) => {}
                        () = cancel.cancelled() => return,
                    }
                }
            }
        }
    }

    /// Pings the shared connection every `health_check_interval`, and at once when a request
    /// reports a failure, until the connection is found broken (`true`) or shutdown (`false`).
    /// (The redis crate only reports disconnects by push message on RESP3 connections, and we
    /// speak RESP2 so replies keep the exact shapes the SDKs expect.)
    async fn watch(&self, mut conn: MultiplexedConnection, cancel: &CancellationToken) -> bool {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.cfg.health_check_interval) => {}
                () = self.check_now.notified() => {}
                () = cancel.cancelled() => return false,
            }
            match conn.send_packed_command(&redis::cmd("PING")).await {
                Err(e) if e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error() => {
                    return true;
                }
                Err(e) => {
                    tracing::warn!(backend = %self.label, error = short_reason(&e), "health check failed")
                }
                Ok(_) => {}
            }
        }
    }
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
