//! [`ExternalProvisioner`]: the user brings a `redis://` or `rediss://` server. RedisGate only
//! checks that it answers; it never stops it, and never deletes its data.
//!
//! The owner of the instance learns only that the server could not be used
//! ([`ProvisionError::Unreachable`]), never whether it refused, timed out, wanted a password or
//! sits at an address the egress policy refuses: those differences would let a tenant map the
//! network RedisGate runs in. The cause goes to the log and to deployment administrators.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redisgate_core::ids::InstanceId;
use redisgate_core::provision::{InstanceSpec, ProvisionError, Provisioner, RedisUrl};

use crate::SharedResolver;
use crate::probe::ProbeError;
use crate::redact::Redactor;

/// Checks a user-supplied server with an authenticated PING and hands its URL back.
pub struct ExternalProvisioner {
    timeout: Duration,
    /// Resolves (and so admits) every address the PING may dial; `None` dials anything.
    resolver: Option<SharedResolver>,
}

impl std::fmt::Debug for ExternalProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalProvisioner")
            .field("timeout", &self.timeout)
            .field("checked", &self.resolver.is_some())
            .finish()
    }
}

impl ExternalProvisioner {
    /// With a 3 s bound on connecting (TLS and AUTH included) and on the PING.
    pub fn new() -> Arc<Self> {
        Self::with_timeout(Duration::from_secs(3))
    }

    pub fn with_timeout(timeout: Duration) -> Arc<Self> {
        Arc::new(ExternalProvisioner { timeout, resolver: None })
    }

    /// Resolves every server's host through `resolver` (the egress policy), so the PING
    /// goes only to an address it admits.
    pub fn checked(timeout: Duration, resolver: SharedResolver) -> Arc<Self> {
        Arc::new(ExternalProvisioner { timeout, resolver: Some(resolver) })
    }
}

#[async_trait]
impl Provisioner for ExternalProvisioner {
    async fn start(&self, spec: &InstanceSpec) -> Result<RedisUrl, ProvisionError> {
        let Some(url) = spec.external_url.as_ref() else {
            return Err(ProvisionError::Failed(
                "an external instance needs a redis:// or rediss:// URL".to_owned(),
            ));
        };
        let text = url.expose();
        if !(text.starts_with("redis://") || text.starts_with("rediss://")) {
            return Err(ProvisionError::Failed("the URL must start with redis:// or rediss://".to_owned()));
        }
        match crate::probe::ping_verified(
            text,
            spec.tls_ca_pem.as_deref(),
            self.timeout,
            self.resolver.as_ref(),
        )
        .await
        {
            Ok(()) => Ok(url.clone()),
            Err(ProbeError::InvalidUrl) => Err(ProvisionError::Failed("invalid Redis URL".to_owned())),
            Err(e) => {
                let detail = Redactor::for_url(text).redact(&e.describe());
                tracing::info!(instance.id = %spec.id, reason = %detail, "external Redis check failed");
                Err(ProvisionError::Unreachable(detail))
            }
        }
    }

    async fn destroy(&self, _id: InstanceId) -> Result<(), ProvisionError> {
        Ok(())
    }

    async fn shutdown(&self) {}
}
