//! Per-key rate limiting on the data plane: GCRA (see `redisgate_core::ratelimit`) per API
//! key, and per token in standalone mode. An HTTP request counts once, whatever it carries:
//! a `/pipeline` or `/multi-exec` of N commands is one request (its size is bounded by
//! `http.max_pipeline_commands`). Admitted answers carry `RateLimit-Limit`,
//! `RateLimit-Remaining` and `RateLimit-Reset`; refused ones get 429, a JSON error and
//! `Retry-After` too.
//!
//! Budgets live in this process (`local` mode), or in a Redis shared by all replicas
//! (`distributed` mode): there a Lua script runs the same GCRA atomically on Redis' own
//! clock, so replicas agree on time as well as on the TAT. When that Redis cannot answer in
//! time the request is judged by the local limiter instead (counted in
//! `rate_limit_fallbacks_total`): a limiter outage loosens the limit to one per replica, it
//! never fails a request.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderName, HeaderValue};
use redis::Value;
use redisgate_core::ids::ApiKeyId;
use redisgate_core::ratelimit::{Decision, Rate, Unit};
use tokio::time::Instant;

use super::metrics::RATE_LIMIT_FALLBACKS;
use crate::backend::{Backend, BackendError};

/// Whose budget a request spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// A standalone token, by its position in the configuration (the same on every replica).
    Token(usize),
    ApiKey(ApiKeyId),
    /// A member running commands from the console with their role's rights.
    User(redisgate_core::ids::UserId),
}

impl std::fmt::Display for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bucket::Token(i) => write!(f, "token:{i}"),
            Bucket::ApiKey(id) => write!(f, "key:{id}"),
            Bucket::User(id) => write!(f, "user:{id}"),
        }
    }
}

/// The data plane's limiter: shared budgets when distributed, with the local ones as the
/// fall-back.
pub struct RateLimiter {
    // Buckets are ids of authenticated keys or token positions, not attacker-chosen input:
    // the fast hash is safe here.
    local: LocalLimiter<Bucket, rustc_hash::FxBuildHasher>,
    shared: Option<SharedLimiter>,
}

impl RateLimiter {
    pub fn local() -> Self {
        RateLimiter { local: LocalLimiter::new(), shared: None }
    }

    /// Budgets kept in the Redis behind `backend`.
    pub fn distributed(backend: Arc<Backend>) -> Self {
        // The series exists from the start, so a "no fall-backs" alert has something to read.
        metrics::counter!(RATE_LIMIT_FALLBACKS).increment(0);
        RateLimiter { local: LocalLimiter::new(), shared: Some(SharedLimiter { backend }) }
    }

    /// `None` in local mode; in distributed mode whether the shared limiter's Redis is
    /// connected (when not, requests are limited per replica).
    pub fn shared_up(&self) -> Option<bool> {
        self.shared.as_ref().map(|s| s.backend.is_up())
    }

    /// Spends one request of `bucket` at `rate`.
    pub async fn check(&self, bucket: Bucket, rate: Rate) -> Decision {
        if let Some(shared) = &self.shared {
            // Boxed: the shared path's future is large, and inline it would be moved with every
            // request's future in local mode too.
            match Box::pin(shared.check(bucket, rate)).await {
                Ok(d) => return d,
                Err(e) => {
                    metrics::counter!(RATE_LIMIT_FALLBACKS).increment(1);
                    tracing::debug!(error = %e, "shared rate limit unavailable; limiting locally");
                }
            }
        }
        self.local.check(bucket, rate)
    }
}

const SHARDS: usize = 16;

/// TATs per key, sharded so concurrent requests of different keys rarely share a lock.
/// Keys chosen by clients (addresses) keep the default, keyed hash.
pub struct LocalLimiter<K, S = RandomState> {
    epoch: Instant,
    hasher: S,
    shards: [Mutex<HashMap<K, u64, S>>; SHARDS],
}

impl<K: Hash + Eq, S: BuildHasher + Clone + Default> LocalLimiter<K, S> {
    pub fn new() -> Self {
        let hasher = S::default();
        LocalLimiter {
            epoch: Instant::now(),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::with_hasher(hasher.clone()))),
            hasher,
        }
    }

    /// Uses tokio's clock, so tests can pause it.
    fn now(&self) -> u64 {
        // Offset by a second so that "never seen" (TAT 0) is always in the past.
        self.epoch.elapsed().as_nanos() as u64 + 1_000_000_000
    }

    pub fn check(&self, key: K, rate: Rate) -> Decision {
        let now = self.now();
        let shard = &self.shards[(self.hasher.hash_one(&key) as usize) % SHARDS];
        let mut map = shard.lock().expect("rate limiter lock");
        let tat = map.get(&key).copied().unwrap_or(0);
        let (decision, new_tat) = rate.check(tat, now);
        if new_tat != tat {
            map.insert(key, new_tat);
        }
        decision
    }

    /// Forgets the keys whose bucket is full again (TAT in the past): for GCRA they are the
    /// same as keys never seen, so this changes no decision and bounds memory by the keys
    /// active within one burst's refill time.
    pub fn retain_recent(&self) {
        let now = self.now();
        for shard in &self.shards {
            shard.lock().expect("rate limiter lock").retain(|_, tat| *tat > now);
        }
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.shards.iter().map(|s| s.lock().expect("rate limiter lock").len()).sum()
    }
}

impl<K: Hash + Eq, S: BuildHasher + Clone + Default> Default for LocalLimiter<K, S> {
    fn default() -> Self {
        Self::new()
    }
}

/// GCRA as in `Rate::check_in`, in microseconds of Redis' `TIME` (exact in Lua's doubles).
/// Stores the new TAT only when admitted, expiring when the bucket would be full again, and
/// returns the TAT it found and the time it used, from which the caller recomputes the same
/// decision with the same integer arithmetic.
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local new_tat = math.max(tat, now) + tonumber(ARGV[1])
if new_tat <= now + tonumber(ARGV[2]) then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
end
return {tat, now}
";

struct SharedLimiter {
    backend: Arc<Backend>,
}

impl SharedLimiter {
    async fn check(&self, bucket: Bucket, rate: Rate) -> Result<Decision, BackendError> {
        // Never wait for a (re)connect: while the connection is not up, limit locally at once.
        if !self.backend.is_up() {
            return Err(BackendError::Unavailable {
                reason: "not connected".into(),
                retry_after: std::time::Duration::ZERO,
            });
        }
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(GCRA_LUA));
        let key = format!("redisgate:ratelimit:{bucket}");
        let (interval, tolerance) = rate.params(Unit::MICROS);
        let run = |verb: &str, script: &str| {
            let mut cmd = redis::cmd(verb);
            cmd.arg(script).arg(1).arg(&key).arg(interval).arg(tolerance);
            cmd
        };
        let mut reply = self.backend.run(&run("EVALSHA", SCRIPT.get_hash())).await?;
        // The script cache is empty after a restart of that Redis: send the source once.
        if matches!(&reply, Value::ServerError(e) if e.code() == "NOSCRIPT") {
            reply = self.backend.run(&run("EVAL", GCRA_LUA)).await?;
        }
        if let Value::Array(v) = &reply
            && let [Value::Int(tat), Value::Int(now)] = v.as_slice()
        {
            return Ok(rate.check_in(Unit::MICROS, *tat as u64, *now as u64).0);
        }
        Err(BackendError::Protocol(format!("unexpected rate limit script reply: {reply:?}")))
    }
}

/// A number as a header value. These headers go on every answer of a limited caller, and a
/// value made from a number is a fresh allocation: remaining budgets and resets up to
/// [`SMALL`] are made once.
fn number(n: u64) -> HeaderValue {
    const SMALL: u64 = 1024;
    static VALUES: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    if n >= SMALL {
        return HeaderValue::from(n);
    }
    // Static values: cloning one copies a pointer, where a shared one counts references.
    let values =
        VALUES.get_or_init(|| (0..SMALL).map(|n| HeaderValue::from_static(n.to_string().leak())).collect());
    values[n as usize].clone()
}

/// A caller's limit as a header value: the same number answer after answer, so the last one
/// each thread made is kept.
fn limit(n: u32) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(u32, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((m, v)) if *m == n => v.clone(),
        _ => last.insert((n, HeaderValue::from(n))).1.clone(),
    })
}

const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The `RateLimit-*` headers (and `Retry-After` when refused) for a decision.
pub fn headers(rate: Rate, d: &Decision, h: &mut HeaderMap) {
    let secs = |dur: std::time::Duration| dur.as_secs() + u64::from(dur.subsec_nanos() > 0);
    h.insert(LIMIT, limit(rate.per_second));
    h.insert(REMAINING, number(u64::from(d.remaining)));
    h.insert(RESET, number(secs(d.reset_after)));
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
        let limiter = LocalLimiter::<Bucket, rustc_hash::FxBuildHasher>::new();
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

    #[tokio::test(start_paused = true)]
    async fn full_buckets_are_forgotten_without_changing_decisions() {
        let limiter = LocalLimiter::<u32>::new();
        let rate = Rate { per_second: 10, burst: 5 };
        for key in 0..1000 {
            assert!(limiter.check(key, rate).allowed);
        }
        (0..4).for_each(|_| assert!(limiter.check(7, rate).allowed));
        assert!(!limiter.check(7, rate).allowed, "key 7 spent its burst");
        limiter.retain_recent();
        assert_eq!(limiter.remembered(), 1000, "no bucket has refilled yet");
        // One emission interval later only key 7 is still below full.
        tokio::time::advance(Duration::from_millis(101)).await;
        limiter.retain_recent();
        assert_eq!(limiter.remembered(), 1, "the others are as good as never seen");
        assert!(limiter.check(7, rate).allowed, "one more after 100 ms, as before");
        assert!(!limiter.check(7, rate).allowed, "and still remembered as spent");
        tokio::time::advance(Duration::from_secs(1)).await;
        limiter.retain_recent();
        assert_eq!(limiter.remembered(), 0);
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
