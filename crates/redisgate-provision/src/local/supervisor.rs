//! The task that owns one instance's `redis-server` process: it restarts the server when it
//! dies on its own, and stops it when asked.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use redisgate_core::ids::InstanceId;
use redisgate_core::instance::InstanceStatus;
use redisgate_core::provision::StatusSink;
use tokio::process::Child;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::LocalOptions;
use super::process::{Launcher, terminate};

pub(crate) struct Supervisor {
    pub id: InstanceId,
    pub launcher: Arc<Launcher>,
    pub sink: StatusSink,
    pub options: LocalOptions,
    /// The running server's pid, 0 while there is none; read by `LocalProvisioner::pid`.
    pub pid: Arc<AtomicU32>,
    pub stop: CancellationToken,
}

impl Supervisor {
    pub(crate) async fn run(self, mut child: Child) {
        // When recent failures happened, to tell a crash loop from the odd crash.
        let mut failures: VecDeque<Instant> = VecDeque::new();
        loop {
            self.pid.store(child.id().unwrap_or(0), Ordering::Relaxed);
            let exited = tokio::select! {
                biased;
                () = self.stop.cancelled() => {
                    terminate(&mut child, &self.launcher.url(), self.options.stop_timeout).await;
                    self.pid.store(0, Ordering::Relaxed);
                    return;
                }
                exited = child.wait() => exited,
            };
            self.pid.store(0, Ordering::Relaxed);
            let mut failure = match exited {
                Ok(status) => format!("redis-server exited ({status})"),
                Err(e) => format!("redis-server could not be watched ({e})"),
            };
            tracing::warn!(instance.id = %self.id, reason = %failure, "redis-server stopped unexpectedly");

            child = loop {
                let now = Instant::now();
                failures.push_back(now);
                while failures.front().is_some_and(|t| now.duration_since(*t) > self.options.restart_window) {
                    failures.pop_front();
                }
                let restarts = u32::try_from(failures.len()).unwrap_or(u32::MAX);
                if restarts > self.options.max_restarts {
                    let reason = format!(
                        "{failure}; not restarting it again: {} failures within {}",
                        restarts,
                        crate::probe::human(self.options.restart_window)
                    );
                    tracing::error!(instance.id = %self.id, reason = %reason, "giving up on redis-server");
                    self.report(InstanceStatus::Error, Some(reason));
                    return;
                }
                self.report(InstanceStatus::Error, Some(format!("{failure}; restarting")));

                let delay = self.backoff(restarts);
                tokio::select! {
                    biased;
                    () = self.stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                // Cancelling drops a half-started child, which kill_on_drop then kills: it
                // has not accepted a write yet, so there is nothing to flush.
                let launched = tokio::select! {
                    biased;
                    () = self.stop.cancelled() => return,
                    launched = self.launcher.launch() => launched,
                };
                match launched {
                    Ok(child) => break child,
                    Err(e) => {
                        failure = format!(
                            "redis-server could not be restarted ({})",
                            e.into_reason(self.launcher.port)
                        );
                        tracing::warn!(instance.id = %self.id, reason = %failure, "restart failed");
                    }
                }
            };
            tracing::info!(instance.id = %self.id, pid = child.id(), "redis-server restarted");
            self.report(InstanceStatus::Running, None);
        }
    }

    /// `restart_backoff_min` doubled for each recent failure, capped at `restart_backoff_max`.
    fn backoff(&self, restarts: u32) -> Duration {
        let factor = 1u32.checked_shl(restarts.saturating_sub(1)).unwrap_or(u32::MAX);
        self.options.restart_backoff_min.saturating_mul(factor).min(self.options.restart_backoff_max)
    }

    fn report(&self, status: InstanceStatus, reason: Option<String>) {
        // Reasons are built from our own words and redacted log tails; redact once more so
        // a future edit cannot leak the password through here.
        let reason = reason.map(|r| self.launcher.redact(&r));
        (self.sink)(self.id, status, reason);
    }
}
