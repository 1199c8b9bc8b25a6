//! The [`Provisioner`](redisgate_core::provision::Provisioner)s that run (or reach) the Redis
//! server behind each RedisGate instance.
//!
//! # Layout
//! - [`local`]: [`LocalProvisioner`], one supervised `redis-server` child process per
//!   instance, its data (AOF) and `redis.conf` under `<root>/<instance-id>/`.
//!   - `local/conf.rs`: the generated `redis.conf`, the instance password, port picking.
//!   - `local/process.rs`: spawning `redis-server`, waiting for PING, stopping it.
//!   - `local/supervisor.rs`: the per-instance task that restarts a crashed server.
//! - [`external`]: [`ExternalProvisioner`], a `redis://` / `rediss://` server the user brings;
//!   checked with a PING, never touched otherwise.
//! - `probe.rs`: one authenticated PING, with failures described without secrets.
//! - [`SharedResolver`]: the DNS resolver through which checked connections resolve (the
//!   server's egress policy plugs in there).
//! - `redact.rs`: keeps passwords out of every reason, log line and status message.
//!
//! Passwords live only in `redis.conf` (mode 0600) and in the returned
//! [`RedisUrl`](redisgate_core::provision::RedisUrl); everything that leaves this crate as text
//! passes through a redactor first.
#![forbid(unsafe_code)]

pub mod external;
pub mod local;
mod probe;
mod redact;

pub use external::ExternalProvisioner;
pub use local::{LocalOptions, LocalProvisioner};

/// A DNS resolver many connections share: the redis crate takes one by value per connection
/// config, and an egress policy must see every connect.
#[derive(Clone)]
pub struct SharedResolver(std::sync::Arc<dyn redis::io::AsyncDNSResolver>);

impl SharedResolver {
    pub fn new(resolver: impl redis::io::AsyncDNSResolver) -> Self {
        SharedResolver(std::sync::Arc::new(resolver))
    }
}

impl redis::io::AsyncDNSResolver for SharedResolver {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        host: &'b str,
        port: u16,
    ) -> redis::RedisFuture<'a, Box<dyn Iterator<Item = std::net::SocketAddr> + Send + 'a>> {
        self.0.resolve(host, port)
    }
}

/// One authenticated PING to `url` within `timeout`: how long it took, or why it failed, with
/// the URL and its password redacted (safe for owners, logs and `redisgate check`). With a
/// `resolver`, only the addresses it returns are dialled.
pub async fn ping(
    url: &str,
    timeout: std::time::Duration,
    resolver: Option<&SharedResolver>,
) -> Result<std::time::Duration, String> {
    ping_verified(url, None, timeout, resolver).await
}

/// [`ping`] verifying a `rediss://` server against `ca_pem` (an external instance's own CA).
pub async fn ping_verified(
    url: &str,
    ca_pem: Option<&str>,
    timeout: std::time::Duration,
    resolver: Option<&SharedResolver>,
) -> Result<std::time::Duration, String> {
    let started = std::time::Instant::now();
    probe::ping_verified(url, ca_pem, timeout, resolver)
        .await
        .map(|()| started.elapsed())
        .map_err(|e| redact::Redactor::for_url(url).redact(&e.describe()))
}
