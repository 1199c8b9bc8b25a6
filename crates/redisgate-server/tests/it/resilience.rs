//! Redis going away and coming back: 503 + Retry-After while it is down, recovery by itself,
//! explicit response timeouts, and no command sent twice.

use std::time::{Duration, Instant};

use redisgate_server::config::Settings;

use crate::common::{Gate, Redis, TOKEN, settings, token};

async fn status_of(g: &Gate, body: &str) -> (u16, Option<String>, serde_json::Value) {
    let r = g.post("/", body).await;
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (status, retry, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_restart_under_load_with_default_timings() {
    let mut redis = Redis::start().await;
    // Default retry and health-check timings (1 s), as a user gets them.
    let s = Settings { tokens: vec![token(TOKEN, &redis, false)], ..Settings::default() };
    let g = Gate::start(s).await;
    assert_eq!(status_of(&g, r#"["SET","k","v"]"#).await.0, 200);

    redis.kill();
    // While Redis is down: 503 with a JSON error and Retry-After, never 500 and never a hang.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut unavailable = 0;
    while unavailable < 5 {
        let started = Instant::now();
        let (status, retry, body) = status_of(&g, r#"["GET","k"]"#).await;
        assert!(started.elapsed() < Duration::from_secs(5), "a request hung during the outage");
        assert_eq!(status, 503, "{body}");
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(body["error"].as_str().unwrap().starts_with("ERR"), "{body}");
        unavailable += 1;
        assert!(Instant::now() < deadline);
    }

    redis.restart().await;
    let back = Instant::now();
    loop {
        let (status, _, body) = status_of(&g, r#"["SET","k","again"]"#).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(back.elapsed() < Duration::from_secs(2), "not serving 2 s after Redis came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(redis.cmd::<String>(&["GET", "k"]).await, "again");
}

#[tokio::test]
async fn redis_not_up_at_start() {
    let mut redis = Redis::reserve();
    let mut s = settings(&redis);
    s.backend.connect_retries = 1;
    let g = Gate::start_unchecked(s).await;
    // The first cycle (1 try + 1 retry, 200 ms apart) fails: requests get 503, not a hang.
    let (status, retry, body) = status_of(&g, r#"["PING"]"#).await;
    assert_eq!(status, 503, "{body}");
    assert!(retry.is_some());
    redis.start_now().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_of(&g, r#"["PING"]"#).await.0 != 200 {
        assert!(Instant::now() < deadline, "never connected after Redis started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn response_timeout_is_explicit_and_nothing_is_resent() {
    let redis = Redis::start().await;
    let mut s = settings(&redis);
    s.backend.response_timeout = Duration::from_millis(300);
    let g = Gate::start(s).await;
    redis.cmd::<()>(&["CLIENT", "PAUSE", "1500", "WRITE"]).await;
    let (status, _, body) = status_of(&g, r#"["INCR","counter"]"#).await;
    assert_eq!(status, 504, "{body}");
    assert!(body["error"].as_str().unwrap().contains("did not answer within 300ms"), "{body}");
    redis.cmd::<()>(&["CLIENT", "UNPAUSE"]).await;
    // The INCR that timed out ran exactly once, when Redis got to it: it was not re-sent.
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.cmd::<Option<i64>>(&["GET", "counter"]).await.is_none() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status_of(&g, r#"["INCR","counter"]"#).await.2["result"], 2);
}

#[tokio::test]
async fn rediss_backend_over_tls() {
    let tls_redis = crate::common::TlsRedis::start().await;
    let port = tls_redis.port;
    let url = format!("rediss://127.0.0.1:{port}/#insecure");
    let tls = redisgate_server::config::TokenConfig {
        token: TOKEN.to_owned().into(),
        url: url.into(),
        read_only: false,
        name: Some("tls".into()),
        rate_limit: None,
    };
    let mut s = Settings { tokens: vec![tls], ..Settings::default() };
    s.backend.retry_delay = Duration::from_millis(100);
    s.backend.connect_retries = 50;
    let g = Gate::start(s).await;
    assert_eq!(status_of(&g, r#"["SET","tls","yes"]"#).await.0, 200);
    assert_eq!(status_of(&g, r#"["GET","tls"]"#).await.2["result"], "yes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_when_redis_dies_all_fail_and_none_hangs() {
    let mut redis = Redis::start().await;
    let mut s = settings(&redis);
    // Long enough that only the lost connection can end the requests.
    s.backend.response_timeout = Duration::from_secs(20);
    let g = Gate::start(s).await;
    assert_eq!(status_of(&g, r#"["SET","k","v"]"#).await.0, 200);
    // Redis holds the shared connection's first write; the others queue behind it.
    redis.cmd::<()>(&["CLIENT", "PAUSE", "20000", "WRITE"]).await;
    let singles = (0..20).map(|i| {
        let g = &g;
        async move { g.post_json("/", &format!(r#"["INCR","n{i}"]"#)).await }
    });
    let pipelines = (0..5).map(|i| {
        let g = &g;
        async move { g.post_json("/pipeline", &format!(r#"[["INCR","p{i}"],["GET","k"]]"#)).await }
    });
    let all = async {
        futures_util::future::join(
            futures_util::future::join_all(singles),
            futures_util::future::join_all(pipelines),
        )
        .await
    };
    // Once every request is in Redis' query buffer (the 25 requests pack to 660 bytes, of which
    // the paused first command holds at most 23), all of them are in flight.
    let killer = async {
        redis.wait_blocked(1).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while queued(&redis).await < 660 - 23 {
            assert!(Instant::now() < deadline, "the requests never reached Redis");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        redis.kill();
    };
    let started = Instant::now();
    let ((singles, pipelines), ()) =
        tokio::time::timeout(Duration::from_secs(10), futures_util::future::join(all, killer))
            .await
            .expect("requests hung after Redis died");
    assert!(started.elapsed() < Duration::from_secs(10));
    for (status, body) in singles.into_iter().chain(pipelines) {
        assert_eq!(status, 503, "{body}");
        let error = body["error"].as_str().unwrap();
        // Every one was in flight (sent, or queued to be) when the connection broke.
        assert!(error.contains("lost with the request in flight"), "{body}");
    }
}

/// The longest query buffer among the server's clients: what it has read and not yet run.
async fn queued(redis: &Redis) -> usize {
    let clients = redis.cmd::<String>(&["CLIENT", "LIST"]).await;
    let qbuf = |field: &str| field.strip_prefix("qbuf=").and_then(|n| n.parse().ok());
    clients.split_whitespace().filter_map(qbuf).max().unwrap_or(0)
}
