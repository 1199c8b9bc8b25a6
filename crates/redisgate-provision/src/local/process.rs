//! One `redis-server` process: spawn it, wait until it answers an authenticated PING, stop it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use redisgate_core::provision::RedisUrl;
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::conf::{LOG_FILE, STDERR_FILE};
use crate::probe;
use crate::redact::Redactor;

const POLL_INTERVAL: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How much of the logs a failure reason quotes.
const TAIL_LINES: usize = 3;
const TAIL_BYTES: u64 = 64 * 1024;
const REASON_MAX: usize = 600;

/// How to run one instance's server, for the life of its supervisor: a restart comes back on
/// the same port with the password it has then (a credential reset changes it).
#[derive(Debug)]
pub(crate) struct Launcher {
    pub binary: PathBuf,
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub port: u16,
    pub auth: std::sync::RwLock<Auth>,
    pub start_timeout: Duration,
}

/// The server's URL (with its password) and the redactor that hides that password.
#[derive(Debug)]
pub(crate) struct Auth {
    pub url: RedisUrl,
    pub redactor: Redactor,
}

impl Launcher {
    pub(crate) fn url(&self) -> RedisUrl {
        self.auth.read().unwrap_or_else(std::sync::PoisonError::into_inner).url.clone()
    }

    pub(crate) fn redact(&self, text: &str) -> String {
        self.auth.read().unwrap_or_else(std::sync::PoisonError::into_inner).redactor.redact(text)
    }

    /// After `requirepass` changed: restarts and probes use the new password.
    pub(crate) fn set_auth(&self, auth: Auth) {
        *self.auth.write().unwrap_or_else(std::sync::PoisonError::into_inner) = auth;
    }
}

/// Why a launch failed.
#[derive(Debug)]
pub(crate) enum LaunchError {
    /// Another process took the port between picking it and redis-server binding it.
    PortTaken,
    /// Anything else, already redacted and fit to show to the instance's owner.
    Failed(String),
}

impl LaunchError {
    pub(crate) fn into_reason(self, port: u16) -> String {
        match self {
            LaunchError::PortTaken => format!("port {port} on 127.0.0.1 is taken by another process"),
            LaunchError::Failed(reason) => reason,
        }
    }
}

impl Launcher {
    /// Spawns redis-server and returns it once it answers PING with the instance password.
    pub(crate) async fn launch(&self) -> Result<Child, LaunchError> {
        let log_path = self.dir.join(LOG_FILE);
        // Only what this run writes explains its failure; older runs' lines would mislead.
        let log_offset = fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let stderr = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(self.dir.join(STDERR_FILE))
            .map_err(|e| LaunchError::Failed(format!("could not create {STDERR_FILE}: {e}")))?;

        let mut command = Command::new(&self.binary);
        command
            .arg(&self.conf)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            // Its own process group: a Ctrl-C in RedisGate's terminal must reach RedisGate
            // alone, which then stops the servers in order instead of racing their deaths.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| {
            LaunchError::Failed(self.redact(&format!("could not run {}: {e}", self.binary.display())))
        })?;

        match self.wait_ready(&mut child).await {
            Ok(()) => Ok(child),
            Err(NotReady::Exited(status)) => {
                let tail = self.output_tail(&log_path, log_offset);
                if tail.contains("Address already in use") {
                    return Err(LaunchError::PortTaken);
                }
                Err(LaunchError::Failed(
                    self.reason(&format!("redis-server exited ({status}) while starting"), &tail),
                ))
            }
            Err(NotReady::TimedOut) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                let tail = self.output_tail(&log_path, log_offset);
                let what =
                    format!("redis-server did not answer PING within {}", probe::human(self.start_timeout));
                Err(LaunchError::Failed(self.reason(&what, &tail)))
            }
            Err(NotReady::Wait(e)) => {
                let _ = child.start_kill();
                Err(LaunchError::Failed(format!("could not watch redis-server: {e}")))
            }
        }
    }

    async fn wait_ready(&self, child: &mut Child) -> Result<(), NotReady> {
        let deadline = Instant::now() + self.start_timeout;
        loop {
            if let Some(status) = child.try_wait().map_err(NotReady::Wait)? {
                return Err(NotReady::Exited(status));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NotReady::TimedOut);
            }
            // LOADING (replaying a big AOF) and refused connections both mean "not yet".
            if probe::ping(self.url().expose(), left.min(PROBE_TIMEOUT), None).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(POLL_INTERVAL.min(left)).await;
        }
    }

    fn reason(&self, what: &str, tail: &str) -> String {
        let mut reason = if tail.is_empty() { what.to_owned() } else { format!("{what}: {tail}") };
        if reason.len() > REASON_MAX {
            let mut cut = REASON_MAX;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
            reason.push('…');
        }
        self.redact(&reason)
    }

    /// The last lines of what redis-server wrote since `log_offset`: stderr first (config
    /// errors land there), else its logfile.
    fn output_tail(&self, log_path: &Path, log_offset: u64) -> String {
        let stderr = read_from(&self.dir.join(STDERR_FILE), 0);
        let text = if stderr.trim().is_empty() { read_from(log_path, log_offset) } else { stderr };
        let lines: Vec<&str> =
            text.lines().map(strip_log_prefix).map(str::trim).filter(|l| !l.is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join(" / ");
        self.redact(&tail)
    }
}

enum NotReady {
    Exited(ExitStatus),
    TimedOut,
    Wait(std::io::Error),
}

/// At most the last [`TAIL_BYTES`] of `path` after `offset`, lossily decoded.
fn read_from(path: &Path, offset: u64) -> String {
    let Ok(mut file) = File::open(path) else { return String::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = offset.max(len.saturating_sub(TAIL_BYTES));
    if start >= len || file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = file.take(TAIL_BYTES).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `1234:M 27 Nov 2026 11:35:40.008 # message` → `message`.
fn strip_log_prefix(line: &str) -> &str {
    let parts: Vec<&str> = line.splitn(7, ' ').collect();
    match parts.as_slice() {
        [pid_role, _day, _month, _year, _time, level, message]
            if pid_role.contains(':') && level.len() == 1 =>
        {
            message
        }
        _ => line,
    }
}

/// Stops a server gracefully: SIGTERM (Redis flushes its AOF and exits), then SIGKILL once
/// `grace` has passed. Always reaps the child.
pub(crate) async fn terminate(child: &mut Child, url: &RedisUrl, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Some(pid) = child.id() {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if !sent {
            // No `kill` binary (a minimal image): Redis' own SHUTDOWN is just as graceful.
            let _ = probe::shutdown(url.expose(), grace).await;
        }
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
        tracing::warn!(pid, "redis-server ignored SIGTERM; killing it");
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_redis_log_prefix() {
        assert_eq!(strip_log_prefix("29031:M 27 Nov 2026 11:35:40.009 # Bad file format"), "Bad file format");
        assert_eq!(strip_log_prefix("*** FATAL CONFIG FILE ERROR ***"), "*** FATAL CONFIG FILE ERROR ***");
    }

    #[test]
    fn read_from_respects_offset() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        fs::write(&p, "old\nnew\n").unwrap();
        assert_eq!(read_from(&p, 4), "new\n");
        assert_eq!(read_from(&p, 100), "");
        assert_eq!(read_from(&tmp.path().join("none"), 0), "");
    }
}
