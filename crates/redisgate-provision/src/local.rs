//! [`LocalProvisioner`]: every instance is its own `redis-server` child process, listening on
//! a loopback port with a random password, persisting to an AOF in `<root>/<instance-id>/`,
//! and watched by a supervisor task that restarts it when it dies.

mod conf;
mod process;
mod supervisor;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use redisgate_core::ids::InstanceId;
use redisgate_core::provision::{InstanceSpec, ProvisionError, Provisioner, RedisUrl, StatusSink};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::conf::{BUSY_REPLY_THRESHOLD, generate_password};
use self::conf::{CONF_FILE, ConfValues};
use self::process::{Auth, LaunchError, Launcher};
use self::supervisor::Supervisor;
use crate::redact::Redactor;

/// How long the `CONFIG SET requirepass` of a password rotation may take.
const ROTATE_TIMEOUT: Duration = Duration::from_secs(3);

/// How many times a start picks a new port when another process grabbed the previous pick.
const PORT_ATTEMPTS: usize = 3;

/// Tunables of the local provisioner.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// The `redis-server` binary; a bare name is looked up in `PATH`.
    pub redis_server: PathBuf,
    /// How long a start (or a restart) may take until the server answers PING.
    pub start_timeout: Duration,
    /// The delay before the first restart after a crash; doubled for each further crash
    /// within `restart_window`, up to `restart_backoff_max`.
    pub restart_backoff_min: Duration,
    pub restart_backoff_max: Duration,
    /// More failures than this within `restart_window` and the supervisor gives up: the
    /// instance goes to `error` and stays there until the next `start`.
    pub max_restarts: u32,
    pub restart_window: Duration,
    /// How long a server gets to exit after SIGTERM before it is killed.
    pub stop_timeout: Duration,
    /// The largest reply the gateway serves (`http.max_response_bytes`); Redis' output buffer
    /// limit for clients is derived from it.
    pub max_reply_bytes: u64,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            redis_server: PathBuf::from("redis-server"),
            start_timeout: Duration::from_secs(10),
            restart_backoff_min: Duration::from_millis(200),
            restart_backoff_max: Duration::from_secs(5),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(3),
            max_reply_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Runs each instance as a supervised `redis-server` child process.
///
/// Must hold: an instance's password changes only through [`Provisioner::rotate_password`]
/// (live, and in its `redis.conf` for restarts), and it never appears in a log line, status
/// reason or error.
pub struct LocalProvisioner {
    root: PathBuf,
    status: StatusSink,
    options: LocalOptions,
    slots: Mutex<HashMap<InstanceId, Arc<Slot>>>,
    tracker: TaskTracker,
    /// Cancelled by `shutdown` (or drop); every supervisor's stop token is a child of it.
    closing: CancellationToken,
}

/// One instance. `state` is an async lock held across a whole start or stop, so concurrent
/// calls for the same instance queue up instead of spawning two servers on one AOF.
#[derive(Default)]
struct Slot {
    pid: Arc<AtomicU32>,
    /// The loopback port of its server (0 until one is launched); restarts keep it.
    port: AtomicU16,
    state: tokio::sync::Mutex<Option<Running>>,
}

struct Running {
    launcher: Arc<Launcher>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

impl LocalProvisioner {
    /// `root` holds one directory per instance; it is created on first use. `status` hears
    /// about crashes and restarts as the supervisors see them.
    pub fn new(root: PathBuf, status: StatusSink, options: LocalOptions) -> Arc<Self> {
        // redis-server resolves its paths after chdir-ing into `dir`, so they must be absolute.
        let root = std::path::absolute(&root).unwrap_or(root);
        Arc::new(LocalProvisioner {
            root,
            status,
            options,
            slots: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            closing: CancellationToken::new(),
        })
    }

    /// The pid of the instance's running `redis-server`, if one is running right now (not
    /// while it is being restarted); for operators and tests.
    pub fn pid(&self, id: InstanceId) -> Option<u32> {
        let slot = self.slots.lock().unwrap_or_else(PoisonError::into_inner).get(&id).cloned()?;
        match slot.pid.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// The loopback ports of the servers it runs (or is restarting): RedisGate's own, which
    /// tenants' external instances must not reach.
    pub fn ports(&self) -> Vec<u16> {
        let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.values().map(|s| s.port.load(Ordering::Relaxed)).filter(|p| *p != 0).collect()
    }

    /// The URL of an instance's server as its `redis.conf` under `root` describes it, without
    /// starting anything: for `redisgate check`, which runs beside a serving RedisGate.
    pub fn configured_url(root: &Path, id: InstanceId) -> Option<RedisUrl> {
        let prev = conf::read_previous(&root.join(id.to_string()).join(conf::CONF_FILE)).ok()?;
        Some(RedisUrl::new(format!("redis://:{}@127.0.0.1:{}", prev.password?, prev.port?)))
    }

    /// Where the instance's `redis.conf`, AOF and logs live.
    pub fn data_dir(&self, id: InstanceId) -> PathBuf {
        self.root.join(id.to_string())
    }

    fn slot(&self, id: InstanceId) -> Arc<Slot> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner).entry(id).or_default().clone()
    }

    fn existing_slot(&self, id: InstanceId) -> Option<Arc<Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner).get(&id).cloned()
    }

    fn all_slots(&self) -> Vec<Arc<Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    /// Prepares the instance's files and starts its server, picking a new port if the
    /// previous one is taken.
    async fn launch(&self, spec: &InstanceSpec) -> Result<(Launcher, tokio::process::Child), ProvisionError> {
        let dir = self.data_dir(spec.id);
        let conf_path = dir.join(CONF_FILE);
        let previous = {
            let (blocking_dir, conf_path) = (dir.clone(), conf_path.clone());
            tokio::task::spawn_blocking(move || -> io::Result<_> {
                conf::create_private_dir(&blocking_dir)?;
                let mut previous = conf::read_previous(&conf_path)?;
                if previous.password.is_none() {
                    previous.password = Some(conf::generate_password()?);
                }
                Ok(previous)
            })
            .await
            .map_err(|e| failed(format!("could not prepare the data directory: {e}")))?
            .map_err(|e| failed(format!("could not prepare the data directory {}: {e}", dir.display())))?
        };
        let password = previous.password.unwrap_or_default();
        let redactor = Redactor::new(&password);

        if let Some(port) = previous.port {
            self.reclaim_orphan(spec.id, port, &password).await;
        }

        let mut preferred = previous.port;
        for _ in 0..PORT_ATTEMPTS {
            let port = conf::pick_port(preferred.take())
                .map_err(|e| failed(format!("could not find a free port on 127.0.0.1: {e}")))?;
            let text = ConfValues {
                password: &password,
                port,
                memory_bytes: spec.memory_bytes,
                eviction_policy: spec.eviction_policy,
                dir: &dir,
                max_reply_bytes: self.options.max_reply_bytes,
            }
            .render()
            .map_err(|e| failed(format!("could not write {CONF_FILE}: {e}")))?;
            {
                let conf_path = conf_path.clone();
                tokio::task::spawn_blocking(move || conf::write_private_file(&conf_path, &text))
                    .await
                    .map_err(|e| failed(format!("could not write {CONF_FILE}: {e}")))?
                    .map_err(|e| failed(format!("could not write {CONF_FILE}: {e}")))?;
            }
            let launcher = Launcher {
                binary: self.options.redis_server.clone(),
                dir: dir.clone(),
                conf: conf_path.clone(),
                port,
                auth: std::sync::RwLock::new(Auth {
                    url: local_url(&password, port),
                    redactor: redactor.clone(),
                }),
                start_timeout: self.options.start_timeout,
            };
            match launcher.launch().await {
                Ok(child) => return Ok((launcher, child)),
                Err(LaunchError::PortTaken) => {
                    tracing::info!(instance.id = %spec.id, port, "port taken before redis-server bound it; picking another");
                }
                Err(LaunchError::Failed(reason)) => return Err(failed(redactor.redact(&reason))),
            }
        }
        Err(failed("could not find a free port on 127.0.0.1 that redis-server could bind".to_owned()))
    }

    /// A server of ours may still run from an earlier RedisGate that died without stopping it
    /// (SIGKILL, OOM kill). Starting a second server on the same AOF would corrupt it, so one
    /// that answers on the old port with this instance's password is asked to shut down.
    async fn reclaim_orphan(&self, id: InstanceId, port: u16, password: &str) {
        let url = local_url(password, port);
        if crate::probe::ping(url.expose(), Duration::from_millis(500), None).await.is_err() {
            return;
        }
        tracing::warn!(instance.id = %id, port, "found a redis-server left over from an earlier run; shutting it down");
        let _ = crate::probe::shutdown(url.expose(), self.options.stop_timeout).await;
        let deadline = tokio::time::Instant::now() + self.options.stop_timeout;
        while tokio::time::Instant::now() < deadline
            && crate::probe::ping(url.expose(), Duration::from_millis(500), None).await.is_ok()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[async_trait]
impl Provisioner for LocalProvisioner {
    async fn start(&self, spec: &InstanceSpec) -> Result<RedisUrl, ProvisionError> {
        if self.closing.is_cancelled() {
            return Err(shutting_down());
        }
        if spec.memory_bytes == 0 {
            // maxmemory 0 means "no limit" to Redis, the opposite of what a quota wants.
            return Err(failed("memory_bytes must be greater than 0".to_owned()));
        }
        let slot = self.slot(spec.id);
        let mut state = slot.state.lock().await;
        if let Some(running) = state.as_ref()
            && !running.task.is_finished()
        {
            return Ok(running.launcher.url());
        }
        // A supervisor that gave up leaves its slot behind; this start is the retry.
        *state = None;

        let (launcher, mut child) = self.launch(spec).await?;
        if self.closing.is_cancelled() {
            process::terminate(&mut child, &launcher.url(), self.options.stop_timeout).await;
            return Err(shutting_down());
        }
        let url = launcher.url();
        let launcher = Arc::new(launcher);
        tracing::info!(instance.id = %spec.id, port = launcher.port, pid = child.id(), "redis-server started");
        slot.port.store(launcher.port, Ordering::Relaxed);
        let stop = self.closing.child_token();
        let supervisor = Supervisor {
            id: spec.id,
            launcher: Arc::clone(&launcher),
            sink: self.status.clone(),
            options: self.options.clone(),
            pid: slot.pid.clone(),
            stop: stop.clone(),
        };
        slot.pid.store(child.id().unwrap_or(0), Ordering::Relaxed);
        let task = self.tracker.spawn(supervisor.run(child));
        *state = Some(Running { launcher, stop, task });
        Ok(url)
    }

    async fn rotate_password(&self, spec: &InstanceSpec) -> Result<RedisUrl, ProvisionError> {
        let slot = self.existing_slot(spec.id).ok_or(ProvisionError::Unknown)?;
        let state = slot.state.lock().await;
        let Some(running) = state.as_ref().filter(|r| !r.task.is_finished()) else {
            return Err(failed("the instance's server is not running".to_owned()));
        };
        let launcher = &running.launcher;
        let password = conf::generate_password().map_err(|e| failed(e.to_string()))?;
        let dir = self.data_dir(spec.id);
        let render = |password: &str| {
            ConfValues {
                password,
                port: launcher.port,
                memory_bytes: spec.memory_bytes,
                eviction_policy: spec.eviction_policy,
                dir: &dir,
                max_reply_bytes: self.options.max_reply_bytes,
            }
            .render()
            .map_err(|e| failed(format!("could not write {CONF_FILE}: {e}")))
        };
        let old = conf::read_previous(&launcher.conf).ok().and_then(|p| p.password).unwrap_or_default();
        let write = |text: String| {
            let conf_path = launcher.conf.clone();
            async move {
                tokio::task::spawn_blocking(move || conf::write_private_file(&conf_path, &text))
                    .await
                    .map_err(|e| failed(format!("could not write {CONF_FILE}: {e}")))?
                    .map_err(|e| failed(format!("could not write {CONF_FILE}: {e}")))
            }
        };
        // The file first: from here on a crash restarts with the new password, and the gateway
        // holds the new URL before this returns. If Redis refuses it, the file goes back.
        write(render(&password)?).await?;
        let url = launcher.url();
        if let Err(e) = crate::probe::config_set(url.expose(), "requirepass", &password, ROTATE_TIMEOUT).await
        {
            let reason = launcher.redact(&e.describe());
            write(render(&old)?).await?;
            return Err(failed(format!("the server refused the new password: {reason}")));
        }
        let url = local_url(&password, launcher.port);
        launcher.set_auth(Auth { url: url.clone(), redactor: Redactor::new(&password) });
        tracing::info!(instance.id = %spec.id, "instance password rotated");
        Ok(url)
    }

    async fn destroy(&self, id: InstanceId) -> Result<(), ProvisionError> {
        if let Some(slot) = self.existing_slot(id) {
            let mut state = slot.state.lock().await;
            if let Some(running) = state.take() {
                running.stop().await;
            }
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            if slots.get(&id).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                slots.remove(&id);
            }
        }
        let dir = self.data_dir(id);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {
                tracing::info!(instance.id = %id, "instance data removed");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(failed(format!("could not remove {}: {e}", dir.display()))),
        }
    }

    async fn shutdown(&self) {
        self.closing.cancel();
        self.tracker.close();
        for slot in self.all_slots() {
            // Waits for a start in flight; its server is then stopped with the rest.
            if let Some(running) = slot.state.lock().await.take() {
                running.stop().await;
            }
        }
        self.tracker.wait().await;
    }
}

impl Drop for LocalProvisioner {
    fn drop(&mut self) {
        // Without a shutdown the supervisors would keep their servers running; stopping them
        // gracefully beats kill_on_drop's SIGKILL when the runtime goes away.
        self.closing.cancel();
    }
}

fn local_url(password: &str, port: u16) -> RedisUrl {
    RedisUrl::new(format!("redis://:{password}@127.0.0.1:{port}"))
}

fn failed(reason: String) -> ProvisionError {
    ProvisionError::Failed(reason)
}

fn shutting_down() -> ProvisionError {
    failed("RedisGate is shutting down".to_owned())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn defaults_match_the_documented_policy() {
        let o = LocalOptions::default();
        assert_eq!(o.redis_server, Path::new("redis-server"));
        assert_eq!(o.start_timeout, Duration::from_secs(10));
        assert_eq!((o.max_restarts, o.restart_window), (5, Duration::from_secs(60)));
    }
}
