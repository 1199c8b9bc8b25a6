//! Connections on demand: an instance's backend holds no connection until its first request,
//! closes it after `backend.idle_timeout`, and is checked while idle at a bounded rate.

use std::time::{Duration, Instant};

use redisgate_server::backend::{Backend, Health, Hold};
use redisgate_server::config::{BackendSettings, Settings};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::common::{Gate, Redis};
use crate::instances::{Tenant, redis_cmd};

/// The clients connected to `redis`, apart from the one asking.
async fn clients(redis: &Redis) -> usize {
    let list: String = redis.cmd(&["CLIENT", "LIST"]).await;
    list.lines().filter(|l| !l.contains("cmd=client|list")).count()
}

/// Polls until `redis` has `n` clients besides the one asking.
async fn wait_clients(redis: &Redis, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = clients(redis).await;
        if now == n {
            return;
        }
        assert!(Instant::now() < deadline, "{now} clients, expected {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lets the tasks woken by an `advance` of the paused clock run.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

// Current-thread runtime, so the clock can be paused. Real I/O happens only while it runs:
// a paused clock would otherwise jump to the next timer whenever the runtime waits for a socket.
#[tokio::test]
async fn a_connection_opens_with_the_first_request_and_closes_after_idle_timeout() {
    let redis = Redis::start().await;
    let cfg = BackendSettings {
        idle_timeout: Duration::from_secs(300),
        health_check_interval: Duration::from_secs(1),
        ..BackendSettings::default()
    };
    let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
    let backend = Backend::start("t".into(), redis.client(), Hold::OnDemand, cfg, &tracker, cancel.clone());
    assert!(backend.is_idle());
    assert_eq!(clients(&redis).await, 0, "nothing connects before a request");
    assert_eq!(backend.health().0, Health::Unchecked);

    let pong = backend.run(&redis::cmd("PING")).await.expect("the first request connects and is answered");
    assert_eq!(pong, redis::Value::SimpleString("PONG".into()));
    assert_eq!(clients(&redis).await, 1);
    assert_eq!(backend.health().0, Health::Healthy);

    // The first check after the request sees it used.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    tokio::time::resume();
    assert_eq!(clients(&redis).await, 1);
    // Just before `idle_timeout` after it: still open.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(298)).await;
    settle().await;
    tokio::time::resume();
    assert_eq!(clients(&redis).await, 1, "closed before idle_timeout");
    assert!(!backend.is_idle());
    // Past it: closed, and the backend is idle again.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(3)).await;
    settle().await;
    tokio::time::resume();
    wait_clients(&redis, 0).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !backend.is_idle() {
        assert!(Instant::now() < deadline, "never idle");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The next request opens a connection again.
    assert!(backend.run(&redis::cmd("PING")).await.is_ok());
    assert_eq!(clients(&redis).await, 1);
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
}

/// Settings where the idle checks are off: only requests connect.
fn unchecked() -> Settings {
    let mut s = Settings::default();
    s.backend.retry_delay = Duration::from_millis(100);
    s.backend.health_check_interval = Duration::from_millis(100);
    s.backend.idle_checks_per_second = 0;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_while_idle_answers_503_at_once_then_200_once_it_is_back() {
    let mut redis = Redis::start().await;
    let g = Gate::start_unchecked(unchecked()).await;
    let t = Tenant::external(&g, "ann@example.com", &redis.url()).await;
    let (key, _) = t.key(json!({"name": "app", "scope": "read-write"})).await;
    wait_clients(&redis, 0).await; // the create's check connected, and closed
    redis.kill();
    let asked = Instant::now();
    let r = g
        .http
        .post(g.url(&format!("/redis/{}", t.instance)))
        .bearer_auth(&key)
        .json(&json!(["SET", "k", "v"]))
        .send()
        .await
        .unwrap();
    let took = asked.elapsed();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    // One connect attempt (refused on loopback), not the retries of a start-up cycle.
    assert!(took < Duration::from_secs(1), "the first request waited {took:?}");
    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, body) = redis_cmd(&g, &t.instance, &key, json!(["SET", "k", "v"])).await;
        if s == 200 {
            break;
        }
        assert_eq!(s, 503, "{body}");
        assert!(Instant::now() < deadline, "not served after Redis came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(redis.cmd::<String>(&["GET", "k"]).await, "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_are_checked_and_say_when_they_were_last_seen_healthy() {
    let mut s = unchecked();
    s.backend.idle_checks_per_second = 20;
    let mut redis = Redis::start().await;
    let g = Gate::start_unchecked(s).await;
    let t = Tenant::external(&g, "root@example.com", &redis.url()).await; // the administrator
    let path = format!("/api/organizations/{}/redis-instances/{}", t.org, t.instance);
    let (_, inst) = t.api.get(&path).await;
    assert_eq!(inst["health"], "healthy", "the create's check saw it answer: {inst}");
    let seen = inst["last_seen_healthy"].as_str().expect("a time").to_owned();
    // Seen again by the idle checks, with no request and no connection held.
    let api = &t.api;
    let health = || {
        let path = path.clone();
        async move { api.get(&path).await.1 }
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while health().await["last_seen_healthy"].as_str() == Some(&seen) {
        assert!(Instant::now() < deadline, "the idle instance was never checked again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    let down = loop {
        let inst = health().await;
        if inst["health"] == "unhealthy" {
            break inst;
        }
        assert!(Instant::now() < deadline, "the dead instance was never found: {inst}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let last = down["last_seen_healthy"].as_str().expect("kept while unhealthy").to_owned();
    // `/health` lists it, with the same time, and how long a round of idle checks takes.
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let (_, body) = t.api.get("/health").await;
        let instances = &body["components"]["instances"];
        if let Some(entry) =
            instances["unhealthy"].as_array().and_then(|u| u.iter().find(|e| e["id"] == t.instance.as_str()))
        {
            assert_eq!(instances["idle_checks"]["per_second"], 20, "{body}");
            break entry.clone();
        }
        assert!(Instant::now() < deadline, "never listed: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(listed["last_seen_healthy"], last.as_str());
    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while health().await["health"] != "healthy" {
        assert!(Instant::now() < deadline, "never healthy again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
