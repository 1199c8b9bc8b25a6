//! Per-key rate limiting on the data plane: GCRA (see `redisgate_core::ratelimit`) per API
//! key, and per token in standalone mode. An HTTP request counts once, whatever it carries:
//! a `/pipeline` or `/multi-exec` of N commands is one request (its size is bounded by
//! `http.max_pipeline_commands`). Admitted answers carry `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset`; refused ones get 429, a JSON error and
//! `Retry-After` too.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;

use http::{HeaderMap, HeaderValue};
use redisgate_core::ids::ApiKeyId;
use redisgate_core::ratelimit::{Decision, Rate};
use tokio::time::Instant;

/// Whose budget a request spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// A standalone token, by its position in the configuration.
    Token(usize),
    ApiKey(ApiKeyId),
}

const SHARDS: usize = 16;

/// TATs per bucket, sharded so concurrent requests of different keys rarely share a lock.
pub struct RateLimiter {
    epoch: Instant,
    shards: [Mutex<HashMap<Bucket, u64>>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    pub fn new() -> Self {
        RateLimiter { epoch: Instant::now(), shards: Default::default(), hasher: Default::default() }
    }

    /// Spends one request of `bucket` at `rate`. Uses tokio's clock, so tests can pause it.
    pub fn check(&self, bucket: Bucket, rate: Rate) -> Decision {
        // Offset by a second so that "never seen" (TAT 0) is always in the past.
        let now = self.epoch.elapsed().as_nanos() as u64 + 1_000_000_000;
        let mut h = self.hasher.build_hasher();
        bucket.hash(&mut h);
        let shard = &self.shards[(std::hash::Hasher::finish(&h) as usize) % SHARDS];
        let mut map = shard.lock().expect("rate limiter lock");
        let tat = map.get(&bucket).copied().unwrap_or(0);
        let (decision, new_tat) = rate.check(tat, now);
        if new_tat != tat {
            map.insert(bucket, new_tat);
        }
        decision
    }
}

/// The `RateLimit-*` headers (and `Retry-After` when refused) for a decision.
pub fn headers(rate: Rate, d: &Decision, h: &mut HeaderMap) {
    let secs = |dur: std::time::Duration| dur.as_secs() + u64::from(dur.subsec_nanos() > 0);
    h.insert("ratelimit-limit", HeaderValue::from(rate.per_second));
    h.insert("ratelimit-remaining", HeaderValue::from(d.remaining));
    h.insert("ratelimit-reset", HeaderValue::from(secs(d.reset_after)));
    if !d.allowed {
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs(d.retry_after).max(1)));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn gcra_on_a_paused_clock() {
        let limiter = RateLimiter::new();
        let rate = Rate { per_second: 10, burst: 5 };
        let key = Bucket::Token(0);
        let admitted = (0..8).filter(|_| limiter.check(key, rate).allowed).count();
        assert_eq!(admitted, 5, "the burst, at once");
        let refused = limiter.check(key, rate);
        assert_eq!((refused.allowed, refused.retry_after), (false, Duration::from_millis(100)));
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(!limiter.check(key, rate).allowed);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(limiter.check(key, rate).allowed, "one more every 100 ms");
        assert!(!limiter.check(key, rate).allowed);
        // Other buckets have budgets of their own.
        assert!(limiter.check(Bucket::Token(1), rate).allowed);
        // After a quiet second the bucket is full again.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!((0..8).filter(|_| limiter.check(key, rate).allowed).count(), 5);
    }

    #[test]
    fn header_values() {
        let rate = Rate { per_second: 100, burst: 100 };
        let d = Decision {
            allowed: false,
            remaining: 0,
            reset_after: Duration::from_millis(1500),
            retry_after: Duration::from_millis(10),
        };
        let mut h = HeaderMap::new();
        headers(rate, &d, &mut h);
        assert_eq!(h["ratelimit-limit"], "100");
        assert_eq!(h["ratelimit-remaining"], "0");
        assert_eq!(h["ratelimit-reset"], "2");
        assert_eq!(h["retry-after"], "1");
    }
}
