//! API keys on the data plane (`/redis/{instance_id}/…`).
//!
//! Keys are looked up by the SHA-256 of the presented text in an in-memory cache; the store
//! is asked only when the cached answer is older than `fresh_for` (under 1 s by default), so
//! a key revoked on another replica stops working within a second and one revoked here at
//! once. Unknown keys are cached too, so guessing does not reach the database on every
//! request. While the store is unreachable, the last answer for a key keeps serving (a store
//! outage must not take the data plane down with it); keys never seen get 503.
//! `last_used_at` is collected in memory and written in batches, off the request path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redisgate_core::apikey::{ApiKey, looks_like_key};
use redisgate_core::ids::{ApiKeyId, InstanceId};
use redisgate_core::quota::Plan;
use redisgate_core::ratelimit::Rate;
use redisgate_core::store::{SecretHash, Store, StoreError};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tracing::{Instrument as _, Span};

use super::auth::Principal;
use crate::config::RateLimitSettings;
use crate::instances::Instances;
use crate::ops::ratelimit::Bucket;

/// A key with its organization's plan (which sets its rate limit).
type KnownKey = Arc<(ApiKey, Plan)>;

/// How long a request waits for the store on a cache refresh.
const STORE_WAIT: Duration = Duration::from_millis(250);

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
    /// Answers and when they were fetched; kept well beyond `fresh_for` for store outages.
    cache: moka::future::Cache<SecretHash, (Option<KnownKey>, Instant)>,
    fresh_for: Duration,
    rate_limit: Option<RateLimitSettings>,
    /// Plan rates set through the API (they win over the configuration's), refreshed from the
    /// store every second so that all replicas follow.
    plan_rates: std::sync::RwLock<std::collections::HashMap<Plan, Rate>>,
    used: Mutex<HashMap<ApiKeyId, OffsetDateTime>>,
}

impl KeyAuth {
    pub fn new(
        store: Arc<dyn Store>,
        instances: Arc<Instances>,
        fresh_for: Duration,
        rate_limit: Option<RateLimitSettings>,
    ) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_idle(Duration::from_secs(3600))
            .support_invalidation_closures()
            .build();
        KeyAuth {
            store,
            instances,
            cache,
            fresh_for,
            rate_limit,
            plan_rates: Default::default(),
            used: Mutex::default(),
        }
    }

    /// The key and its organization's plan (for the plan's rate limit).
    async fn fetch(&self, hash: &SecretHash) -> Result<Option<(ApiKey, Plan)>, StoreError> {
        let Some(key) = self.store.api_key_by_hash(hash).await? else { return Ok(None) };
        let plan = self.store.org(key.org_id).await?.plan;
        Ok(Some((key, plan)))
    }

    async fn lookup(&self, hash: SecretHash) -> Result<Option<KnownKey>, Denied> {
        let cached = self.cache.get(&hash).await;
        if let Some((key, at)) = &cached
            && at.elapsed() < self.fresh_for
        {
            return Ok(key.clone());
        }
        // Bounded, so that a store outage costs a request 250 ms at most, not a pool timeout.
        let fetched = tokio::time::timeout(STORE_WAIT, self.fetch(&hash)).await;
        match fetched.unwrap_or_else(|_| Err(StoreError::Unavailable("no answer in time".into()))) {
            Ok(key) => {
                let key = key.map(Arc::new);
                self.cache.insert(hash, (key.clone(), Instant::now())).await;
                Ok(key)
            }
            Err(e) => match cached {
                Some((key, _)) => {
                    tracing::warn!(error = %e, "key store unreachable; serving the last known answer");
                    Ok(key)
                }
                None => Err(Denied::StoreDown),
            },
        }
    }

    /// The principal for `token` on `instance`.
    pub async fn principal(&self, token: &str, instance: InstanceId) -> Result<Principal, Denied> {
        let span = tracing::debug_span!(
            "auth",
            auth.method = "api_key",
            instance.id = %instance,
            key.id = tracing::field::Empty,
            auth.outcome = tracing::field::Empty,
        );
        let result = self.authenticate(token, instance, &span).instrument(span.clone()).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(Denied::Unauthorized) => "denied",
            Err(Denied::StoreDown) => "store_down",
        };
        span.record("auth.outcome", outcome);
        result
    }

    async fn authenticate(
        &self,
        token: &str,
        instance: InstanceId,
        span: &Span,
    ) -> Result<Principal, Denied> {
        if !looks_like_key(token) {
            return Err(Denied::Unauthorized);
        }
        let hash: SecretHash = Sha256::digest(token.as_bytes()).into();
        let entry = self.lookup(hash).await?.ok_or(Denied::Unauthorized)?;
        let (key, plan) = (&entry.0, entry.1);
        let now = OffsetDateTime::now_utc();
        if !key.is_active(now) || !key.allows_instance(instance) {
            return Err(Denied::Unauthorized);
        }
        let (org, backend) = self.instances.backend(instance).ok_or(Denied::Unauthorized)?;
        if org != key.org_id {
            return Err(Denied::Unauthorized);
        }
        span.record("key.id", tracing::field::display(key.id));
        self.used.lock().expect("usage lock").insert(key.id, now);
        // The key's own rate, else its plan's rate from the API, else from the configuration.
        let limit = self
            .rate_limit
            .as_ref()
            .map(|r| (Bucket::ApiKey(key.id), key.rate_limit.unwrap_or_else(|| self.plan_rate(plan, r))));
        Ok(Principal { access: key.scope.access(), backend, caller: Bucket::ApiKey(key.id), limit })
    }

    /// The principal of a member running commands from the console on `instance` of `org`
    /// at `scope`: `caller`'s budget at `own_rate`, else the plan's rate, as an API key's.
    /// `None` when the instance is not running (or not `org`'s).
    pub fn console_principal(
        &self,
        org: redisgate_core::ids::OrgId,
        instance: InstanceId,
        scope: redisgate_core::apikey::Scope,
        caller: Bucket,
        own_rate: Option<Rate>,
        plan: Plan,
    ) -> Option<Principal> {
        let (owner, backend) = self.instances.backend(instance)?;
        if owner != org {
            return None;
        }
        if let Bucket::ApiKey(id) = caller {
            self.used.lock().expect("usage lock").insert(id, OffsetDateTime::now_utc());
        }
        let limit =
            self.rate_limit.as_ref().map(|r| (caller, own_rate.unwrap_or_else(|| self.plan_rate(plan, r))));
        Some(Principal { access: scope.access(), backend, caller, limit })
    }

    /// Forgets every cached key: called when a key is revoked here, so it stops at once.
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }

    /// Forgets the cached answers about key `id` (its row changed in the store).
    pub fn forget_key(&self, id: ApiKeyId) {
        self.forget_if(move |k| k.id == id);
    }

    /// Forgets the cached keys of organization `org` (its plan changed, or it is gone).
    pub fn forget_org(&self, org: redisgate_core::ids::OrgId) {
        self.forget_if(move |k| k.org_id == org);
    }

    fn forget_if(&self, which: impl Fn(&ApiKey) -> bool + Send + Sync + 'static) {
        let forgotten =
            self.cache.invalidate_entries_if(move |_, (key, _)| key.as_ref().is_some_and(|k| which(&k.0)));
        if forgotten.is_err() {
            self.invalidate_all(); // (cannot happen: the cache is built to support it)
        }
    }

    /// The rate of an organization on `plan`: the one set through the API (as this replica
    /// last loaded it, at most a second ago), else the configuration's.
    pub fn plan_rate(&self, plan: Plan, config: &RateLimitSettings) -> Rate {
        let set = self.plan_rates.read().expect("plan rates lock").get(&plan).copied();
        set.unwrap_or_else(|| config.for_plan(plan))
    }

    /// Reloads the plan rates set through the API.
    pub async fn refresh_plan_rates(&self) {
        match self.store.plan_rates().await {
            Ok(rates) => *self.plan_rates.write().expect("plan rates lock") = rates.into_iter().collect(),
            Err(e) => tracing::warn!(error = %e, "could not refresh plan rate limits"),
        }
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
