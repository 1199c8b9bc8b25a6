//! API keys on the data plane (`/redis/{instance_id}/…`).
//!
//! Keys are looked up by the SHA-256 of the presented text in an in-memory cache; the store
//! is asked only on a miss, and entries live at most `ttl` (under 1 s by default), so a key
//! revoked on another replica stops working within a second and one revoked here at once.
//! Unknown keys are cached too, so guessing does not reach the database on every request.
//! `last_used_at` is collected in memory and written in batches, off the request path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redisgate_core::apikey::{ApiKey, looks_like_key};
use redisgate_core::ids::{ApiKeyId, InstanceId};
use redisgate_core::store::{SecretHash, Store};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::auth::Principal;
use crate::instances::Instances;

/// Why a key lookup gave no principal.
pub enum Denied {
    /// Missing, unknown, revoked or expired key, other organization, instance not allowed,
    /// or no such (running) instance: all answered the same way.
    Unauthorized,
    /// The metadata store could not be asked.
    StoreDown,
}

pub struct KeyAuth {
    store: Arc<dyn Store>,
    instances: Arc<Instances>,
    cache: moka::future::Cache<SecretHash, Option<Arc<ApiKey>>>,
    used: Mutex<HashMap<ApiKeyId, OffsetDateTime>>,
}

impl KeyAuth {
    pub fn new(store: Arc<dyn Store>, instances: Arc<Instances>, ttl: Duration) -> Self {
        let cache = moka::future::Cache::builder().max_capacity(100_000).time_to_live(ttl).build();
        KeyAuth { store, instances, cache, used: Mutex::default() }
    }

    /// The principal for `token` on `instance`.
    pub async fn principal(&self, token: &str, instance: InstanceId) -> Result<Principal, Denied> {
        if !looks_like_key(token) {
            return Err(Denied::Unauthorized);
        }
        let hash: SecretHash = Sha256::digest(token.as_bytes()).into();
        let store = Arc::clone(&self.store);
        let key = self
            .cache
            .try_get_with(hash, async move { store.api_key_by_hash(&hash).await.map(|k| k.map(Arc::new)) })
            .await
            .map_err(|_| Denied::StoreDown)?
            .ok_or(Denied::Unauthorized)?;
        let now = OffsetDateTime::now_utc();
        if !key.is_active(now) || !key.allows_instance(instance) {
            return Err(Denied::Unauthorized);
        }
        let (org, backend) = self.instances.backend(instance).ok_or(Denied::Unauthorized)?;
        if org != key.org_id {
            return Err(Denied::Unauthorized);
        }
        self.used.lock().expect("usage lock").insert(key.id, now);
        Ok(Principal { access: key.scope.access(), backend })
    }

    /// Forgets every cached key: called when a key is revoked here, so it stops at once.
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    /// Writes the collected `last_used_at` times; called every second by a background task.
    pub async fn flush_usage(&self) {
        let batch: Vec<(ApiKeyId, OffsetDateTime)> = self.used.lock().expect("usage lock").drain().collect();
        if !batch.is_empty()
            && let Err(e) = self.store.touch_api_keys(&batch).await
        {
            tracing::warn!(error = %e, keys = batch.len(), "could not record API key usage");
        }
    }
}
