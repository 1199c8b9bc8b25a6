//! One authenticated PING against a Redis URL, and a description of why it failed that is
//! safe to show to the instance's owner.

use std::io;
use std::time::Duration;

use redis::{AsyncConnectionConfig, ErrorKind, RedisError};

/// Why a PING did not come back.
#[derive(Debug)]
pub(crate) enum ProbeError {
    InvalidUrl,
    TimedOut(Duration),
    Redis(RedisError),
}

impl ProbeError {
    /// A short reason for people. Callers still pass it through a redactor: driver texts are
    /// not ours to trust.
    pub(crate) fn describe(&self) -> String {
        match self {
            ProbeError::InvalidUrl => "invalid Redis URL".to_owned(),
            ProbeError::TimedOut(after) => format!("timed out after {}", human(*after)),
            ProbeError::Redis(err) => describe_redis(err),
        }
    }
}

fn describe_redis(err: &RedisError) -> String {
    if err.kind() == ErrorKind::AuthenticationFailed || err.code() == Some("WRONGPASS") {
        return "authentication failed: wrong username or password".to_owned();
    }
    if err.code() == Some("NOAUTH") {
        return "authentication failed: the server requires a password and the URL has none".to_owned();
    }
    if err.code() == Some("LOADING") {
        return "the server is still loading its data".to_owned();
    }
    if err.is_connection_refusal() {
        return "connection refused".to_owned();
    }
    if err.is_timeout() {
        return "timed out".to_owned();
    }
    match err.kind() {
        ErrorKind::InvalidClientConfig => "invalid Redis URL".to_owned(),
        // The driver's own text names the I/O cause (DNS, TLS, reset) and nothing secret.
        ErrorKind::Io => format!("could not connect: {err}"),
        _ => format!("the server refused: {err}"),
    }
}

/// Connects to `url` and sends PING; the whole exchange is bounded by `timeout`. With a
/// `resolver`, the host is resolved through it and only addresses it returns are dialled.
pub(crate) async fn ping(
    url: &str,
    timeout: Duration,
    resolver: Option<&crate::SharedResolver>,
) -> Result<(), ProbeError> {
    ping_verified(url, None, timeout, resolver).await
}

/// [`ping`] verifying a `rediss://` server against `ca_pem` (PEM) instead of the platform's
/// roots.
pub(crate) async fn ping_verified(
    url: &str,
    ca_pem: Option<&str>,
    timeout: Duration,
    resolver: Option<&crate::SharedResolver>,
) -> Result<(), ProbeError> {
    if url.starts_with("rediss://") {
        // Mixing rustls providers panics; whichever one is installed first wins process-wide.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let client = match ca_pem {
        None => redis::Client::open(url),
        Some(ca) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates { client_tls: None, root_cert: Some(ca.as_bytes().to_vec()) },
        ),
    };
    let client = client.map_err(|_| ProbeError::InvalidUrl)?;
    let mut config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    if let Some(resolver) = resolver {
        config = config.set_dns_resolver(resolver.clone());
    }
    let exchange = async {
        let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(ProbeError::TimedOut(timeout)),
        Ok(Err(err)) if err.is_timeout() => Err(ProbeError::TimedOut(timeout)),
        Ok(Err(err)) => Err(ProbeError::Redis(err)),
        Ok(Ok(_)) => Ok(()),
    }
}

/// `CONFIG SET name value` on the server at `url`, bounded by `timeout`.
pub(crate) async fn config_set(
    url: &str,
    name: &str,
    value: &str,
    timeout: Duration,
) -> Result<(), ProbeError> {
    let client = redis::Client::open(url).map_err(|_| ProbeError::InvalidUrl)?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let exchange = async {
        let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
        redis::cmd("CONFIG").arg("SET").arg(name).arg(value).query_async::<()>(&mut conn).await
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(ProbeError::TimedOut(timeout)),
        Ok(Err(err)) => Err(ProbeError::Redis(err)),
        Ok(Ok(())) => Ok(()),
    }
}

/// Asks the server at `url` to shut down (flushing its AOF); used on a server we own but
/// no longer have a process handle for. The connection dropping is the expected answer.
pub(crate) async fn shutdown(url: &str, timeout: Duration) -> io::Result<()> {
    let client = redis::Client::open(url).map_err(|_| io::Error::other("invalid Redis URL"))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let exchange = async {
        let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
        redis::cmd("SHUTDOWN").query_async::<()>(&mut conn).await
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "SHUTDOWN timed out")),
        Ok(Err(err)) if err.is_connection_dropped() || err.is_io_error() => Ok(()),
        Ok(Err(err)) => Err(io::Error::other(err.code().unwrap_or("error").to_owned())),
        Ok(Ok(())) => Ok(()),
    }
}

/// `3s`, `500ms`: durations as people write them.
pub(crate) fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}
