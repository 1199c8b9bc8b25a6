//! [`ExternalProvisioner`]: the user brings a `redis://` or `rediss://` server. RedisGate only
//! checks that it answers; it never stops it, and never deletes its data.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redisgate_core::ids::InstanceId;
use redisgate_core::provision::{InstanceSpec, ProvisionError, Provisioner, RedisUrl};

/// Checks a user-supplied server with an authenticated PING and hands its URL back.
#[derive(Debug)]
pub struct ExternalProvisioner {
    timeout: Duration,
}

impl ExternalProvisioner {
    /// With a 3 s bound on connecting (TLS and AUTH included) and on the PING.
    pub fn new() -> Arc<Self> {
        Self::with_timeout(Duration::from_secs(3))
    }

    pub fn with_timeout(timeout: Duration) -> Arc<Self> {
        Arc::new(ExternalProvisioner { timeout })
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
        match crate::ping(text, self.timeout).await {
            Ok(_) => Ok(url.clone()),
            Err(reason) => {
                tracing::info!(instance.id = %spec.id, reason = %reason, "external Redis check failed");
                Err(ProvisionError::Failed(reason))
            }
        }
    }

    async fn destroy(&self, _id: InstanceId) -> Result<(), ProvisionError> {
        Ok(())
    }

    async fn shutdown(&self) {}
}
