//! HTTPS on the listener: rustls with the ring provider (the one this process uses for
//! `rediss://` too; mixing providers panics), TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`,
//! and optionally client certificates checked against `tls.client_ca_file` (mutual TLS).
//!
//! The files are read again every `tls.reload_interval` and on SIGHUP. When their contents
//! changed, a new [`ServerConfig`] is built and swapped in whole, so a rotated certificate,
//! key or client CA takes effect together; handshakes after the swap use it, connections
//! already established keep their session. A file that does not load (half written, a key
//! that does not match) leaves the configuration in use as it is, and is reported once per
//! change, naming the configuration key and never the files' contents.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest as _, Sha256};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::{ClientAuth, ConfigError, TlsSettings};
use crate::ops::metrics::TLS_RELOADS;

/// The listener's TLS configuration, replaced when its files change.
pub struct Tls {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
    /// A digest of what the last reload saw (the files' contents, or why they could not be
    /// read): a reload does nothing, and logs nothing, until it changes.
    seen: Mutex<[u8; 32]>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// The files are as they were.
    Unchanged,
    /// A new configuration is in use.
    Replaced,
}

impl Tls {
    /// The configured TLS, or `None` when `tls.cert_file` is unset; an error names the key
    /// whose file is missing or unusable.
    pub fn load(settings: &TlsSettings) -> Result<Option<Arc<Tls>>, ConfigError> {
        if !settings.enabled() {
            return Ok(None);
        }
        let files = Files::read(settings)?;
        let config = build(settings, &files)?;
        Ok(Some(Arc::new(Tls {
            settings: settings.clone(),
            current: RwLock::new(config),
            seen: Mutex::new(files.digest()),
        })))
    }

    /// The time a client has to finish its handshake.
    pub fn handshake_timeout(&self) -> Duration {
        self.settings.handshake_timeout
    }

    /// Accepts handshakes with the configuration in use now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current.read().expect("tls lock")))
    }

    /// Reads the files again and, if they changed and load, uses them from the next
    /// handshake on. `Err` means they changed but do not load: the previous configuration
    /// stays. An error already returned for the same files is not returned again
    /// (`Unchanged`), unless `force` (SIGHUP: the operator asks now).
    pub fn reload(&self, force: bool) -> Result<Reloaded, ConfigError> {
        let read = Files::read(&self.settings);
        let digest = match &read {
            Ok(files) => files.digest(),
            Err(e) => Sha256::digest(e.to_string()).into(),
        };
        {
            let mut seen = self.seen.lock().expect("tls lock");
            if *seen == digest && !force {
                return Ok(Reloaded::Unchanged);
            }
            *seen = digest;
        }
        let files = read?;
        let config = build(&self.settings, &files)?;
        *self.current.write().expect("tls lock") = config;
        Ok(Reloaded::Replaced)
    }

    /// Reloads every `tls.reload_interval`, and at once on SIGHUP when `hangup` is given,
    /// until `cancel`.
    pub async fn watch(
        self: Arc<Self>,
        mut hangup: Option<tokio::signal::unix::Signal>,
        cancel: CancellationToken,
    ) {
        loop {
            let forced = tokio::select! {
                () = tokio::time::sleep(self.settings.reload_interval) => false,
                Some(()) = async { hangup.as_mut()?.recv().await } => true,
                () = cancel.cancelled() => return,
            };
            match self.reload(forced) {
                Ok(Reloaded::Replaced) => {
                    metrics::counter!(TLS_RELOADS, "result" => "ok").increment(1);
                    tracing::info!(forced, "TLS certificate reloaded");
                }
                Ok(Reloaded::Unchanged) if forced => tracing::info!("SIGHUP: TLS files unchanged"),
                Ok(Reloaded::Unchanged) => {}
                Err(e) => {
                    metrics::counter!(TLS_RELOADS, "result" => "error").increment(1);
                    tracing::error!(error = %e, "TLS files not reloaded; the previous certificate stays in use")
                }
            }
        }
    }
}

/// The files' contents as read.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn read(settings: &TlsSettings) -> Result<Files, ConfigError> {
        let read = |key: &str, path: &Option<std::path::PathBuf>| -> Result<Option<Vec<u8>>, ConfigError> {
            let Some(path) = path else { return Ok(None) };
            std::fs::read(path)
                .map(Some)
                .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
        };
        let missing = |key: &str| invalid(key, "required with tls.cert_file");
        Ok(Files {
            cert: read("tls.cert_file", &settings.cert_file)?.ok_or_else(|| missing("tls.cert_file"))?,
            key: read("tls.key_file", &settings.key_file)?.ok_or_else(|| missing("tls.key_file"))?,
            client_ca: read("tls.client_ca_file", &settings.client_ca_file)?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [&self.cert[..], &self.key[..], self.client_ca.as_deref().unwrap_or(b"-")] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.finalize().into()
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

/// PEM certificates, at least one.
fn certificates(key: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(key, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(key, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn build(settings: &TlsSettings, files: &Files) -> Result<Arc<ServerConfig>, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates("tls.cert_file", &files.cert)?;
    // The parser's message is not shown: it could quote a line of the key.
    let key = PrivateKeyDer::from_pem_slice(&files.key)
        .map_err(|_| invalid("tls.key_file", "not a PEM private key (PKCS#8, PKCS#1 or SEC1)"))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| invalid("tls.cert_file", e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates("tls.client_ca_file", pem)? {
                roots.add(ca).map_err(|e| {
                    invalid("tls.client_ca_file", format!("not a usable CA certificate: {e}"))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match settings.client_auth.unwrap_or(ClientAuth::Required) {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier.build().map_err(|e| invalid("tls.client_ca_file", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| invalid("tls.key_file", format!("unusable with tls.cert_file: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
