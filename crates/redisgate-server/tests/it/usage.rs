//! Usage history end to end: traffic through an instance's URL, the sampler at a short
//! interval, and `GET …/usage` showing it; periods, errors, isolation, and two replicas on one
//! PostgreSQL whose samples add up.

use std::time::{Duration, Instant};

use redisgate_server::config::Settings;
use serde_json::{Value, json};

use crate::api::Api;
use crate::common::{Gate, PgDatabase, Redis};
use crate::instances::{Tenant, redis_cmd};

/// Samples every 50 ms instead of 10 s.
fn fast(mut s: Settings) -> Settings {
    s.usage.interval = Duration::from_millis(50);
    s
}

/// The totals of an answer: each point's rates times its length.
fn totals(usage: &Value) -> (u64, u64, u64) {
    let seconds = usage["resolution_seconds"].as_f64().unwrap();
    let sum = |field: &str| {
        let points = usage["points"].as_array().unwrap();
        (points.iter().map(|p| p[field].as_f64().unwrap()).sum::<f64>() * seconds).round() as u64
    };
    (sum("reads_per_sec"), sum("writes_per_sec"), sum("errors_per_sec"))
}

/// Polls the usage of `t`'s instance over `period` until `done` holds (10 s at most).
async fn usage_until(api: &Api<'_>, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, usage) = api.get(path).await;
        assert_eq!(s, 200, "{usage}");
        if done(&usage) {
            return usage;
        }
        assert!(Instant::now() < deadline, "usage never got there: {usage}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_shows_in_the_usage_history() {
    let g = Gate::start_unchecked(fast(Settings::default())).await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let (key, _) = t.key(json!({"name": "app", "scope": "read-write"})).await;
    let path = format!("/api/organizations/{}/redis-instances/{}/usage", t.org, t.instance);
    // A second instance nobody sends anything to.
    let idle = t.another_instance("idle").await;
    let idle_path = format!("/api/organizations/{}/redis-instances/{idle}/usage", t.org);
    for i in 0..3 {
        assert_eq!(redis_cmd(&g, &t.instance, &key, json!(["SET", format!("k{i}"), "v"])).await.0, 200);
    }
    for _ in 0..5 {
        assert_eq!(redis_cmd(&g, &t.instance, &key, json!(["GET", "k0"])).await.0, 200);
    }
    // A write Redis refuses: a write, and an error.
    assert_eq!(redis_cmd(&g, &t.instance, &key, json!(["INCR", "k0"])).await.0, 400);
    // A pipeline counts each of its commands.
    let r = g
        .http
        .post(g.url(&format!("/redis/{}/pipeline", t.instance)))
        .bearer_auth(&key)
        .json(&json!([["GET", "k1"], ["DEL", "k2"]]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let usage = usage_until(&t.api, &path, |u| {
        totals(u) == (6, 5, 1) && u["points"].as_array().unwrap().iter().any(|p| p["keys"] == 2)
    })
    .await;
    assert_eq!((usage["period"].as_str(), usage["resolution_seconds"].as_i64()), (Some("1h"), Some(10)));
    // Meanwhile the idle instance was not sampled at all (no INFO, no row); once a member
    // looks at its usage, it is, with its server's figures and no requests.
    let (s, quiet) = t.api.get(&idle_path).await;
    assert_eq!((s, quiet["points"].as_array().map(Vec::len)), (200, Some(0)), "{quiet}");
    let watched = usage_until(&t.api, &idle_path, |u| {
        u["points"].as_array().unwrap().iter().any(|p| p["memory_bytes"].as_u64().is_some_and(|m| m > 0))
    })
    .await;
    assert_eq!(totals(&watched), (0, 0, 0), "{watched}");
    assert!(watched["points"].as_array().unwrap().iter().all(|p| p["p50_ms"].is_null()), "{watched}");
    let points = usage["points"].as_array().unwrap();
    let served = points.iter().find(|p| p["p50_ms"].is_number()).expect("a point with requests");
    let (p50, p99) = (served["p50_ms"].as_f64().unwrap(), served["p99_ms"].as_f64().unwrap());
    assert!(0.0 < p50 && p50 <= p99 && p99 < 10_000.0, "{served}");
    let latest = points.iter().rev().find(|p| p["memory_bytes"].is_number()).unwrap();
    assert!(latest["memory_bytes"].as_u64().unwrap() > 0, "{latest}");
    assert!(latest["connections"].as_u64().unwrap() >= 1, "{latest}");
    // GET k0 five times and GET k1 once hit; nothing missed.
    assert!(latest["hits"].as_u64().unwrap() >= 6, "{latest}");
    // Every period holds the same counts at its own resolution.
    for (period, resolution) in [("3h", 10), ("12h", 60), ("1d", 60), ("3d", 600), ("7d", 600)] {
        let (s, u) = t.api.get(&format!("{path}?period={period}")).await;
        assert_eq!((s, u["resolution_seconds"].as_i64()), (200, Some(resolution)), "{u}");
        assert_eq!(totals(&u), (6, 5, 1), "{period}: {u}");
    }
    // A period it does not serve: 422, as JSON.
    for bad in ["?period=2h", "?period=", "?window=1h"] {
        let (s, body) = t.api.get(&format!("{path}{bad}")).await;
        assert_eq!((s, body["code"].as_str()), (422, Some("validation_failed")), "{bad}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    }
    // Another organization's owner, and an instance id that does not exist: 404.
    let other = Tenant::new(&g, "bob@example.com").await;
    let (s, body) = other.api.get(&path).await;
    assert_eq!((s, body["code"].as_str()), (404, Some("not_found")), "{body}");
    let theirs = format!("/api/organizations/{}/redis-instances/{}/usage", other.org, t.instance);
    assert_eq!(other.api.get(&theirs).await.0, 404, "ann's instance under bob's organization");
    let unknown = format!("/api/organizations/{}/redis-instances/{}/usage", t.org, uuid::Uuid::now_v7());
    assert_eq!(t.api.get(&unknown).await.0, 404);
    g.shutdown().await;
}

/// Two replicas on one PostgreSQL serve one external instance: each samples the requests it
/// served, and either answers with the sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_samples_add_up() {
    let db = PgDatabase::create().await;
    let redis = Redis::start().await;
    let a = Gate::start_unchecked(fast(db.replica())).await;
    let b = Gate::start_unchecked(fast(db.replica())).await;
    let t = Tenant::external(&a, "ann@example.com", &redis.url()).await;
    let (key, _) = t.key(json!({"name": "k", "scope": "read-write"})).await;
    let (id, key) = (t.instance.as_str(), key.as_str());
    // Until the other replica follows the new instance.
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis_cmd(&b, id, key, json!(["SET", "from", "b"])).await.0 != 200 {
        assert!(Instant::now() < deadline, "never served by the other replica");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..4 {
        assert_eq!(redis_cmd(&a, id, key, json!(["GET", "from"])).await.0, 200);
    }
    for _ in 0..3 {
        assert_eq!(redis_cmd(&b, id, key, json!(["GET", "from"])).await.0, 200);
    }
    let path = format!("/api/organizations/{}/redis-instances/{id}/usage", t.org);
    usage_until(&t.api, &path, |u| totals(u) == (7, 1, 0)).await;
    a.shutdown().await;
    b.shutdown().await;
    db.drop_now().await;
}
