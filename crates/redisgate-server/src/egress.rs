//! Where external instances may connect: [`Egress`] resolves a tenant's host, asks the pure
//! policy ([`redisgate_core::egress`]) about every resolved address, and hands back only the
//! addresses that passed.
//!
//! It plugs into the redis crate as its DNS resolver ([`Egress::resolver`]), so every connect
//! of an external instance is checked where it happens: the PING at creation and at each
//! start, the shared connection's reconnects; the dedicated SSE connections, which the redis
//! crate cannot open through a resolver, are dialled here ([`dial`]). A name that
//! resolves elsewhere the second time (DNS rebinding) is judged by the second answer, and the
//! connection goes to that checked address and no other.
//!
//! RedisGate's own addresses (its listeners, the metadata database, the limiter's Redis, the
//! standalone tokens' Redis servers, resolved once at start-up, and the local instances' ports,
//! asked at every check) are refused whatever the allow-list says. Standalone tokens and the
//! limiter are the operator's own configuration and are not subject to the policy.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::RedisFuture;
use redis::io::AsyncDNSResolver;
use redisgate_core::egress::{EgressPolicy, OwnAddresses};
use redisgate_provision::SharedResolver;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use secrecy::ExposeSecret;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{ConfigError, Settings};

/// The ports local instances listen on right now (they come and go).
pub type LocalPorts = Arc<dyn Fn() -> Vec<u16> + Send + Sync>;

/// Why a connection was not even attempted; the text (for logs and administrators) names the
/// address and the rule, so it never goes to tenants.
const REFUSED_PREFIX: &str = "egress policy";

pub struct Egress {
    policy: EgressPolicy,
    own: OwnAddresses,
    local_ports: LocalPorts,
    /// Bounds one resolution (a tenant's DNS server may be slow on purpose).
    timeout: Duration,
}

impl Egress {
    /// `own` lists RedisGate's services as `host:port` pairs; names are resolved now.
    pub async fn new(
        policy: EgressPolicy,
        own: impl IntoIterator<Item = (String, u16)>,
        local_ports: LocalPorts,
        timeout: Duration,
    ) -> Arc<Self> {
        let mut addrs = OwnAddresses::default();
        for (host, port) in own {
            match lookup(&host, port, timeout).await {
                Ok(resolved) => {
                    for addr in resolved {
                        if is_local(addr.ip()) || addr.ip().is_loopback() || addr.ip().is_unspecified() {
                            addrs.add_local_port(addr.port());
                        } else {
                            addrs.add_exact(addr);
                        }
                    }
                }
                // Its address is then unknown; the ranges still refuse it if it is internal.
                Err(e) => {
                    tracing::warn!(host = %host, port, error = %e, "cannot resolve one of RedisGate's own services for the egress policy")
                }
            }
        }
        Arc::new(Egress { policy, own: addrs, local_ports, timeout })
    }

    /// The addresses `host:port` resolves to that the policy admits; an error if none.
    pub async fn admitted(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let resolved = lookup(host, port, self.timeout).await?;
        let mut own = self.own.clone();
        for p in (self.local_ports)() {
            own.add_local_port(p);
        }
        let mut refused = Vec::new();
        let admitted: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|addr| match self.policy.decide(host, *addr, &own, is_local) {
                Ok(()) => true,
                Err(why) => {
                    refused.push(format!("{addr}: {why}"));
                    false
                }
            })
            .collect();
        if admitted.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{REFUSED_PREFIX} refuses {}", refused.join(", ")),
            ));
        }
        Ok(admitted)
    }

    /// Whether a tenant's URL leads only to refused addresses (or nowhere): checked before an
    /// instance is created. The error is for logs only.
    pub async fn check_url(&self, url: &str) -> Result<(), String> {
        let (host, port) = redis_endpoint(url).ok_or_else(|| "not a TCP redis:// URL".to_owned())?;
        self.admitted(&host, port).await.map(drop).map_err(|e| e.to_string())
    }

    /// The policy as the redis crate's resolver: connections made with it dial only admitted
    /// addresses.
    pub fn resolver(self: &Arc<Self>) -> SharedResolver {
        SharedResolver::new(Resolver(Arc::clone(self)))
    }
}

/// The policy `settings` configure, knowing RedisGate's own services: `listen` (the bound
/// listener; `redisgate check` knows only the configured address), the metrics and plain HTTP
/// listeners, the PostgreSQL metadata database, the limiter's Redis and the standalone tokens'
/// Redis servers, and the local instances' ports as `local_ports` tells them.
pub async fn for_settings(
    settings: &Settings,
    listen: SocketAddr,
    local_ports: LocalPorts,
) -> Result<Arc<Egress>, ConfigError> {
    let policy = settings.instances.external.policy()?;
    let mut own: Vec<(String, u16)> = std::iter::once(listen)
        .chain(settings.metrics_listen)
        .chain(settings.tls.plain_listen)
        .map(|a| (a.ip().to_string(), a.port()))
        .collect();
    own.extend(settings.database_url.as_ref().and_then(|u| database_endpoint(u.expose_secret())));
    let redis_urls = settings.rate_limit.redis_url.iter().chain(settings.tokens.iter().map(|t| &t.url));
    own.extend(redis_urls.filter_map(|u| redis_endpoint(u.expose_secret())));
    Ok(Egress::new(policy, own, local_ports, settings.backend.connect_timeout).await)
}

/// Any byte stream to a Redis server: plain TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}

/// Why a tenant's `rediss://` URL is refused: it asks for TLS without verifying the server.
pub const INSECURE_TLS_REFUSED: &str = "`#insecure` (TLS without verifying the server's certificate) is not allowed on this deployment; give the server's CA instead (tls_ca_pem)";

/// The rule on a tenant's URL: `#insecure` only where the deployment allows it
/// (`instances.external.allow_insecure_tls`). Checked at creation and before every start, so
/// a row written under a laxer configuration is refused too; the redis crate's
/// `tls-rustls-insecure` feature, which honours the fragment, is never reached past it.
pub fn check_tls(url: &str, allow_insecure: bool) -> Result<(), &'static str> {
    if asks_insecure_tls(url) && !allow_insecure { Err(INSECURE_TLS_REFUSED) } else { Ok(()) }
}

/// Whether `url` is `rediss://…#insecure`, as the redis crate parses it (the fragment is the
/// only way a URL turns verification off).
pub fn asks_insecure_tls(url: &str) -> bool {
    redis::Client::open(url).is_ok_and(|c| {
        matches!(c.get_connection_info().addr(), redis::ConnectionAddr::TcpTls { insecure: true, .. })
    })
}

/// An external instance's client: verified against its own CA (`ca_pem`) when it has one,
/// else against the platform's roots (or not at all for an admitted `#insecure`).
pub fn tenant_client(url: &str, ca_pem: Option<&str>) -> redis::RedisResult<redis::Client> {
    match ca_pem {
        None => redis::Client::open(url),
        Some(ca) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates { client_tls: None, root_cert: Some(ca.as_bytes().to_vec()) },
        ),
    }
}

/// The CA certificates of a PEM text (an instance's `tls_ca_pem`), as verification roots for
/// [`dial`]; an error when there are none or one does not parse.
pub fn tls_roots(ca_pem: &str) -> Result<Arc<ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("not a PEM certificate: {e}"))?;
        roots.add(cert).map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("holds no PEM certificate".to_owned());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
}

/// A connection for `info` (a tenant's `redis://` or `rediss://` URL) to an address `resolver`
/// admits now, for connections the redis crate would otherwise open by name without a resolver
/// of ours (pub/sub, monitor). The TCP connection goes to exactly the checked address, and TLS
/// runs over it verified for the URL's host name (against `roots`, the instance's own CA, when
/// given), so a DNS answer that changes between the check and the dial (rebinding) is never
/// used. Setting up the Redis session (AUTH, SELECT) is the caller's.
pub async fn dial(
    info: &redis::ConnectionInfo,
    resolver: &SharedResolver,
    roots: Option<&Arc<ClientConfig>>,
) -> redis::RedisResult<Box<dyn Io>> {
    let (host, port) = tcp_endpoint(info.addr()).ok_or_else(|| refused("not a TCP address"))?;
    let admitted: Vec<SocketAddr> = resolver.resolve(&host, port).await?.collect();
    connect(info, &host, admitted, roots).await
}

/// [`dial`] for a server of our own (a local instance, a standalone token's), resolved
/// plainly: no policy applies.
pub async fn dial_own(info: &redis::ConnectionInfo) -> redis::RedisResult<Box<dyn Io>> {
    let (host, port) = tcp_endpoint(info.addr()).ok_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "not a TCP address"))
    })?;
    let found: Vec<SocketAddr> = tokio::net::lookup_host((unbracketed(&host), port)).await?.collect();
    connect(info, &host, found, None).await
}

fn refused(why: &str) -> redis::RedisError {
    redis::RedisError::from(io::Error::other(format!("{REFUSED_PREFIX}: {why}")))
}

/// TCP to the first of `addrs` that answers, then TLS for `info`'s `rediss://`.
async fn connect(
    info: &redis::ConnectionInfo,
    host: &str,
    addrs: Vec<SocketAddr>,
    roots: Option<&Arc<ClientConfig>>,
) -> redis::RedisResult<Box<dyn Io>> {
    // Each address in turn, as the redis crate tries every one it resolved.
    let mut tcp = Err(refused("no address"));
    for checked in addrs {
        tcp = TcpStream::connect(checked).await.map_err(redis::RedisError::from);
        if tcp.is_ok() {
            break;
        }
    }
    let tcp = tcp?;
    tcp.set_nodelay(true)?;
    match info.addr() {
        // The redis crate's `tls_params` cannot be read back, so the instance's own roots come
        // as `roots`; otherwise the URL's `#insecure` (admitted by `check_tls`) is honoured.
        redis::ConnectionAddr::TcpTls { insecure, .. } => {
            let name = ServerName::try_from(unbracketed(host).to_owned()).map_err(|_| {
                redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "not a TLS server name"))
            })?;
            let config = match roots {
                Some(roots) => Arc::clone(roots),
                None => tls_config(*insecure)?,
            };
            let connector = TlsConnector::from(config);
            Ok(Box::new(connector.connect(name, tcp).await?))
        }
        _ => Ok(Box::new(tcp)),
    }
}

/// The rustls configuration the redis crate builds for a `rediss://` URL (its
/// `tokio-rustls-comp` without `tls-rustls-webpki-roots`): the platform's roots, or with
/// `#insecure` no verification and no SNI. Built once: the roots are read from disk.
fn tls_config(insecure: bool) -> redis::RedisResult<Arc<ClientConfig>> {
    static VERIFIED: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    static INSECURE: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    let build = || -> Result<Arc<ClientConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        if insecure {
            let verifier = NoVerification(provider.signature_verification_algorithms);
            let mut config = builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth();
            config.enable_sni = false;
            return Ok(Arc::new(config));
        }
        let native = rustls_native_certs::load_native_certs();
        if let Some(e) = native.errors.first() {
            return Err(format!("cannot load the platform's root certificates: {e}"));
        }
        let mut roots = RootCertStore::empty();
        let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
        Ok(Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
    };
    let cell = if insecure { &INSECURE } else { &VERIFIED };
    cell.get_or_init(build)
        .clone()
        .map_err(|e| redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "TLS configuration", e)))
}

/// `#insecure`: any certificate and signature is accepted, exactly as the redis crate does for
/// such URLs (the tenant asked for encryption without authentication of the server).
#[derive(Debug)]
struct NoVerification(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Whether `e` (from a connect through [`Egress::resolver`]) was the policy refusing.
pub fn is_refusal(e: &redis::RedisError) -> bool {
    e.is_io_error() && e.to_string().contains(REFUSED_PREFIX)
}

struct Resolver(Arc<Egress>);

impl AsyncDNSResolver for Resolver {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        host: &'b str,
        port: u16,
    ) -> RedisFuture<'a, Box<dyn Iterator<Item = SocketAddr> + Send + 'a>> {
        Box::pin(async move {
            let admitted = self.0.admitted(host, port).await?;
            Ok(Box::new(admitted.into_iter()) as Box<dyn Iterator<Item = SocketAddr> + Send>)
        })
    }
}

async fn lookup(host: &str, port: u16, timeout: Duration) -> io::Result<Vec<SocketAddr>> {
    match tokio::time::timeout(timeout, tokio::net::lookup_host((unbracketed(host), port))).await {
        Ok(found) => Ok(found?.collect()),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "DNS resolution timed out")),
    }
}

/// The redis crate hands IPv6 hosts over with or without their URL brackets.
fn unbracketed(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Whether `ip` is one of this machine's addresses: only those can be bound. (Binding a UDP
/// socket sends nothing.)
fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// `host:port` of a `postgres://` URL (None for SQLite or a socket path).
pub fn database_endpoint(url: &str) -> Option<(String, u16)> {
    let parsed = url::Url::parse(url).ok()?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return None;
    }
    let host = parsed.host_str().filter(|h| !h.is_empty())?.to_owned();
    Some((host, parsed.port().unwrap_or(5432)))
}

/// `host:port` of a `redis://` or `rediss://` URL.
pub fn redis_endpoint(url: &str) -> Option<(String, u16)> {
    tcp_endpoint(redis::Client::open(url).ok()?.get_connection_info().addr())
}

fn tcp_endpoint(addr: &redis::ConnectionAddr) -> Option<(String, u16)> {
    match addr {
        redis::ConnectionAddr::Tcp(host, port) | redis::ConnectionAddr::TcpTls { host, port, .. } => {
            Some((host.clone(), *port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_local_instances() -> LocalPorts {
        Arc::new(Vec::new)
    }

    #[test]
    fn endpoints_of_configured_urls() {
        assert_eq!(database_endpoint("postgres://u:p@db.internal/x"), Some(("db.internal".into(), 5432)));
        assert_eq!(database_endpoint("postgresql://u:p@127.0.0.1:6543/x"), Some(("127.0.0.1".into(), 6543)));
        assert_eq!(database_endpoint("sqlite:///tmp/x.db"), None);
        assert_eq!(redis_endpoint("redis://:pw@127.0.0.1:6390/0"), Some(("127.0.0.1".into(), 6390)));
    }

    /// Resolution only, of loopback names and literals: nothing is dialled.
    #[tokio::test]
    async fn admits_only_what_the_policy_admits() {
        let strict =
            Egress::new(EgressPolicy::default(), [], no_local_instances(), Duration::from_secs(2)).await;
        for host in ["127.0.0.1", "localhost", "::1", "[::1]", "::ffff:127.0.0.1", "0.0.0.0", "2130706433"] {
            let e = strict.admitted(host, 6379).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{host}: {e}");
        }
        let open = EgressPolicy::parse(&["127.0.0.0/8"]).unwrap();
        let ports: LocalPorts = Arc::new(|| vec![7001]);
        let g = Egress::new(open, [("localhost".to_owned(), 8080)], ports, Duration::from_secs(2)).await;
        assert_eq!(g.admitted("127.0.0.1", 6379).await.unwrap(), vec!["127.0.0.1:6379".parse().unwrap()]);
        assert!(g.admitted("127.0.0.1", 8080).await.is_err(), "own listener");
        assert!(g.admitted("127.0.0.9", 7001).await.is_err(), "a local instance");
        assert!(g.check_url("redis://:pw@127.0.0.1:8080").await.is_err());
        assert!(g.check_url("redis://127.0.0.1:6379").await.is_ok());
    }
}
