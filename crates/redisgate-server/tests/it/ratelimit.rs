//! The distributed rate limiter: one budget across replicas, kept in a Redis RedisGate owns,
//! and the fall-back to local limits (never a 5xx) while that Redis is away.

use std::time::{Duration, Instant};

use redisgate_server::config::{RateLimitMode, Settings};
use serde_json::json;

use crate::api::Api;
use crate::common::{Gate, PgDatabase, Redis, TOKEN, settings};
use crate::instances::{Tenant, redis_cmd};

fn distributed(s: &mut Settings, limiter: &Redis, per_second: u32, burst: u32) {
    s.rate_limit.mode = RateLimitMode::Distributed;
    s.rate_limit.redis_url = Some(limiter.url().into());
    s.rate_limit.per_second = per_second;
    s.rate_limit.burst = burst;
    // Standalone tokens are unlimited unless configured: these tests limit theirs too.
    s.rate_limit.tokens = Some(redisgate_core::ratelimit::Rate { per_second, burst });
    s.backend.health_check_interval = Duration::from_millis(200);
    s.backend.retry_delay = Duration::from_millis(200);
    // A loaded test machine can keep a debug build's limiter answer past the default 100 ms
    // (one CI run saw a single fall-back): these tests are about what the limiter decides. The
    // hanging-limiter test sets its own.
    s.rate_limit.redis_timeout = Duration::from_secs(2);
}

/// Polls until `gate` serves `key` on `instance` (a replica learns keys and instances from the
/// shared store).
async fn wait_served(g: &Gate, instance: &str, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, body) = redis_cmd(g, instance, key, json!(["PING"])).await;
        if s == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "replica never served the key: {s} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(g: &Gate, name: &str) -> f64 {
    let text = g.http.get(g.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// The `rate_limiter` component of `GET /health`, as a deployment administrator sees it.
async fn health_of_limiter(admin: &Api<'_>) -> String {
    let (_, body) = admin.get("/health").await;
    assert_eq!(body["components"]["rate_limiter"]["mode"], "distributed", "{body}");
    body["components"]["rate_limiter"]["status"].as_str().unwrap().to_owned()
}

/// Two replicas on one PostgreSQL serve the same API key under constant overload for 3 s.
/// Each replica alone would admit `burst + rate·t`; together, with one shared budget, they
/// must admit that once (±10 %), not twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_limit_across_two_replicas() {
    const RATE: u32 = 100;
    const BURST: u32 = 20;
    let db = PgDatabase::create().await;
    let tenant_redis = Redis::start().await;
    let limiter = Redis::start().await;
    let replica = || {
        let mut s = db.replica();
        distributed(&mut s, &limiter, RATE, BURST);
        s
    };
    let a = Gate::start_unchecked(replica()).await;
    let t = Tenant::external(&a, "ann@example.com", &tenant_redis.url()).await;
    let instance = t.instance.clone();
    // The second replica finds the instance in the shared store when it starts.
    let b = Gate::start_unchecked(replica()).await;
    let (warmup, _) = t.key(json!({"name": "warmup", "scope": "read-write"})).await;
    let warmup = warmup.as_str();
    wait_served(&a, &instance, warmup).await;
    wait_served(&b, &instance, warmup).await;

    // A fresh key: its bucket is full when the load starts.
    let (key, _) = t.key(json!({"name": "app", "scope": "read-write"})).await;
    let started = Instant::now();
    let run_for = Duration::from_secs(3);
    let client = |g: &Gate| {
        let (http, url, key) = (g.http.clone(), g.url(&format!("/redis/{instance}")), key.clone());
        tokio::spawn(async move {
            let (mut admitted, mut refused, mut other) = (0u32, 0u32, Vec::new());
            while started.elapsed() < run_for {
                let r = http.post(&url).bearer_auth(&key).body(r#"["INCR","hits"]"#).send().await.unwrap();
                match r.status().as_u16() {
                    200 => admitted += 1,
                    429 => refused += 1,
                    s => other.push(s),
                }
            }
            (admitted, refused, other, started.elapsed())
        })
    };
    let tasks: Vec<_> = (0..8).map(|i| client(if i % 2 == 0 { &a } else { &b })).collect();
    let (mut admitted, mut refused, mut elapsed) = (0, 0, Duration::ZERO);
    for t in tasks {
        let (ad, re, other, el) = t.await.unwrap();
        assert!(other.is_empty(), "only 200 and 429 expected, got {other:?}");
        (admitted, refused, elapsed) = (admitted + ad, refused + re, elapsed.max(el));
    }
    let expected = f64::from(BURST) + f64::from(RATE) * elapsed.as_secs_f64();
    let ratio = f64::from(admitted) / expected;
    eprintln!("admitted {admitted}, refused {refused}, expected {expected:.0} over {elapsed:?}: {ratio:.3}");
    assert!(refused > admitted, "the load must exceed the limit for the test to mean anything");
    assert!((0.9..=1.1).contains(&ratio), "admitted {admitted}, expected {expected:.0} (±10 %)");
    let hits: u32 = tenant_redis.cmd(&["GET", "hits"]).await;
    assert_eq!(hits, admitted, "every admitted request ran, no refused one did");
    assert_eq!(metric(&a, "rate_limit_fallbacks_total").await, 0.0);
    a.shutdown().await;
    b.shutdown().await;
    db.drop_now().await;
}

/// The limiter's Redis dies: requests are judged by the local limiter (counted), never 5xx;
/// when it returns (with an empty script cache) the shared budget is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_local_limits_while_the_limiter_redis_is_down() {
    let data = Redis::start().await;
    let mut limiter = Redis::start().await;
    let mut s = settings(&data);
    distributed(&mut s, &limiter, 5, 5);
    let g = Gate::start_unchecked(s).await;
    let (admin, _) = Api::signup(&g, "root@example.com").await; // the first account
    let post = || g.http.post(g.url("/")).bearer_auth(TOKEN).body(r#"["PING"]"#).send();
    // Shared: the bucket lives in the limiter's Redis.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = post().await.unwrap().status();
        assert!(s == 200 || s == 429, "{s}");
        if limiter.cmd::<bool>(&["EXISTS", "redisgate:ratelimit:token:0"]).await {
            break;
        }
        assert!(Instant::now() < deadline, "the shared bucket never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = metric(&g, "rate_limit_fallbacks_total").await;

    assert_eq!(health_of_limiter(&admin).await, "healthy");
    limiter.kill();
    let started = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(post().await.unwrap().status().as_u16());
    }
    let elapsed = started.elapsed();
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    // The local limit (5/s, burst 5) still holds. (Its bucket may be partly spent already:
    // requests that came before the first connection to the limiter were judged locally.)
    let admitted = statuses.iter().filter(|s| **s == 200).count() as f64;
    assert!(admitted >= 1.0 && admitted <= 5.0 + 5.0 * elapsed.as_secs_f64() + 1.0, "{statuses:?}");
    let during = metric(&g, "rate_limit_fallbacks_total").await;
    assert!(during >= before + 30.0, "every request judged locally is counted: {before} -> {during}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while health_of_limiter(&admin).await != "degraded" {
        assert!(Instant::now() < deadline, "/health never said the shared limiter is away");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Back: the script is loaded again (NOSCRIPT -> EVAL) and the shared bucket reappears.
    limiter.restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !limiter.cmd::<bool>(&["EXISTS", "redisgate:ratelimit:token:0"]).await {
        let s = post().await.unwrap().status();
        assert!(s == 200 || s == 429, "{s}");
        assert!(Instant::now() < deadline, "the shared limiter never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = metric(&g, "rate_limit_fallbacks_total").await;
    for _ in 0..10 {
        let s = post().await.unwrap().status();
        assert!(s == 200 || s == 429, "{s}");
    }
    assert_eq!(metric(&g, "rate_limit_fallbacks_total").await, after, "no fall-backs once it is back");
    assert_eq!(health_of_limiter(&admin).await, "healthy");
    g.shutdown().await;
}

/// A limiter Redis that hangs (not down, just silent) costs a request `redis_timeout`, then
/// the local limiter answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_limiter_redis_times_out_to_the_local_limit() {
    let data = Redis::start().await;
    let limiter = Redis::start().await;
    let mut s = settings(&data);
    distributed(&mut s, &limiter, 1000, 1000);
    s.rate_limit.redis_timeout = Duration::from_millis(100);
    let g = Gate::start(s).await;
    let before = metric(&g, "rate_limit_fallbacks_total").await;
    limiter.cmd::<String>(&["CLIENT", "PAUSE", "3000", "ALL"]).await;
    let r = g.http.post(g.url("/")).bearer_auth(TOKEN).body(r#"["PING"]"#).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["ratelimit-limit"], "1000");
    assert!(metric(&g, "rate_limit_fallbacks_total").await > before);
    g.shutdown().await;
}

/// Standalone mode replaces serverless-redis-http, which has no limit, in CI runs that send as
/// fast as they can: with the default configuration its tokens are not limited, while API keys
/// keep the 100/s default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_tokens_are_unlimited_by_default_and_api_keys_are_not() {
    let redis = Redis::start().await;
    let g = Gate::start_with_default_rates(settings(&redis)).await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let (key, _) = t.key(serde_json::json!({"name": "app", "scope": "read-write"})).await;
    let statuses = |url: String, token: String| {
        let http = g.http.clone();
        async move {
            // 500 requests, 50 at a time, as fast as the gateway answers.
            let mut seen = Vec::new();
            for _ in 0..10 {
                let batch = (0..50).map(|_| http.post(&url).bearer_auth(&token).body(r#"["PING"]"#).send());
                for r in futures_util::future::join_all(batch).await {
                    seen.push(r.unwrap().status().as_u16());
                }
            }
            seen
        }
    };
    let standalone = statuses(g.url("/"), TOKEN.to_owned()).await;
    assert!(standalone.iter().all(|s| *s == 200), "standalone: {standalone:?}");
    let keyed = statuses(g.url(&format!("/redis/{}", t.instance)), key).await;
    assert!(keyed.contains(&429), "an API key past its 100/s default is limited");
    assert!(keyed.iter().all(|s| *s == 200 || *s == 429), "{keyed:?}");
}
