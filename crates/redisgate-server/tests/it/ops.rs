//! Operations: `/metrics` after real traffic (every series, closed label sets, bounded
//! cardinality) and the health probes, including a metadata-store outage at the socket level.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redisgate_server::config::Settings;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::api::{Api, control_plane};
use crate::common::{Gate, Redis, free_port, settings};
use crate::instances::{Tenant, redis_cmd};

async fn scrape(g: &Gate) -> String {
    let r = g.http.get(g.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap()
}

/// Series lines (`name{labels} value`), comments skipped.
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.rsplit_once(' ').map_or(l, |(s, _)| s).to_owned())
        .collect()
}

fn has(text: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    series(text).iter().any(|s| {
        let (n, rest) = s.split_once('{').unwrap_or((s.as_str(), ""));
        n == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_real_traffic() {
    let dead_redis = format!("redis://127.0.0.1:{}", free_port());
    let mut settings = Settings::default();
    settings.backend.health_check_interval = Duration::from_millis(200);
    settings.tokens = vec![redisgate_server::config::TokenConfig {
        token: "standalone-to-nowhere".to_owned().into(),
        url: dead_redis.into(),
        read_only: false,
        name: None,
        rate_limit: None,
    }];
    let g = Gate::start_unchecked(settings).await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let (key, _) = t.key(json!({"name": "app", "scope": "read-write"})).await;
    assert_eq!(redis_cmd(&g, &t.instance, &key, json!(["SET", "k", "v"])).await.0, 200);
    assert_eq!(redis_cmd(&g, &t.instance, &key, json!(["GET", "k"])).await.0, 200);
    assert_eq!(redis_cmd(&g, &t.instance, &key, json!(["INCR", "k"])).await.0, 400);
    assert_eq!(redis_cmd(&g, &t.instance, "rg_bad", json!(["GET", "k"])).await.0, 401);
    let (s, _) = Api::anon(&g)
        .post("/auth/register", json!({"email": "ann@example.com", "password": "correct horse battery"}))
        .await;
    assert_eq!(s, 409, "a conflict is an answer, not a database error");

    // Gauges are refreshed in the background (every 5 health rounds: 1 s here).
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(&g).await;
        if has(&text, "users_total", &[])
            && text.lines().any(|l| l.starts_with("users_total ") && !l.ends_with(" 0"))
        {
            break text;
        }
        assert!(Instant::now() < deadline, "gauges never refreshed:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let expect: &[(&str, &[(&str, &str)])] = &[
        ("http_requests_total", &[("method", "POST"), ("path", "/redis/{instance_id}"), ("status", "200")]),
        ("http_requests_total", &[("method", "POST"), ("path", "/api/organizations"), ("status", "201")]),
        (
            "http_request_errors_total",
            &[("method", "POST"), ("path", "/redis/{instance_id}"), ("status", "401")],
        ),
        ("http_request_errors_total", &[("method", "POST"), ("path", "/auth/register"), ("status", "409")]),
        ("http_request_duration_seconds_bucket", &[("method", "POST"), ("path", "/redis/{instance_id}")]),
        ("http_request_duration_seconds_count", &[("method", "POST"), ("path", "/auth/login")]),
        ("redis_commands_total", &[("command", "SET")]),
        ("redis_commands_total", &[("command", "GET")]),
        ("redis_command_errors_total", &[("command", "INCR")]),
        ("redis_command_duration_seconds_bucket", &[("command", "GET")]),
        ("redis_connections_active", &[]),
        ("redis_connection_retries_total", &[]),
        ("database_queries_total", &[("type", "create_user")]),
        ("database_queries_total", &[("type", "api_key_by_hash")]),
        ("database_query_errors_total", &[("type", "create_user")]),
        ("database_query_duration_seconds_bucket", &[("type", "create_instance")]),
        ("redis_instances_total", &[]),
        ("redis_instances_unhealthy", &[]),
        ("organizations_total", &[]),
        ("users_total", &[]),
        ("redisgate_ready", &[]),
        ("api_key_requests_total", &[]),
        ("api_key_auth_failures_total", &[]),
        ("process_cpu_seconds_total", &[]),
        ("process_resident_memory_bytes", &[]),
    ];
    for (name, labels) in expect {
        assert!(has(&text, name, labels), "missing {name}{labels:?} in:\n{text}");
    }
    assert!(text.lines().any(|l| l.starts_with("redis_connections_active ") && !l.ends_with(" 0")));
    // Only closed label values: no key, id or token ever appears.
    for line in series(&text) {
        assert!(!line.contains(&t.instance) && !line.contains(&t.org) && !line.contains(&key), "{line}");
    }
}

/// The value of the series `name{command="<command>"}`, 0 when it does not exist.
fn command_value(text: &str, name: &str, command: &str) -> f64 {
    let prefix = format!("{name}{{command=\"{command}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0.0, |v| v.parse().unwrap())
}

/// A batch's commands are counted one by one, runs of the same command and failures within
/// them included, however the gateway records them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_commands_are_counted_each() {
    let redis = Redis::start().await;
    let g = Gate::start(settings(&redis)).await;
    let before = scrape(&g).await;
    let body = r#"[["GET","a"],["GET","a"],["SET","t","x"],["INCR","t"],["INCR","n"],["GET","a"],["INCR","t"],["GET","a"]]"#;
    let (status, _) = g.post_json("/pipeline", body).await;
    assert_eq!(status, 200);
    let after = scrape(&g).await;
    let delta = |name: &str, command: &str| {
        command_value(&after, name, command) - command_value(&before, name, command)
    };
    assert_eq!(delta("redis_commands_total", "GET"), 4.0);
    assert_eq!(delta("redis_command_errors_total", "GET"), 0.0);
    assert_eq!(delta("redis_commands_total", "INCR"), 3.0);
    assert_eq!(delta("redis_command_errors_total", "INCR"), 2.0, "INCR of text, twice");
    assert_eq!(delta("redis_commands_total", "SET"), 1.0);
    assert_eq!(delta("redis_command_duration_seconds_count", "GET"), 4.0);
    assert_eq!(delta("redis_command_duration_seconds_count", "INCR"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_sets_stay_bounded() {
    let g = control_plane().await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let (key, _) = t.key(json!({"name": "app", "scope": "read-write"})).await;
    // One request of every kind first, so that every label combination exists.
    let warm = json!([["SET", "warm", "1"], ["GET", "warm"]]);
    let url = g.url(&format!("/redis/{}/pipeline", t.instance));
    g.http.post(&url).bearer_auth(&key).json(&warm).send().await.unwrap();
    g.http.post(&url).bearer_auth(&key).json(&json!([["NOSUCHCMD1"]])).send().await.unwrap();
    g.http.get(g.url("/nowhere/at/all")).send().await.unwrap();
    g.http.get(g.url(&format!("/api/organizations/{}", uuid::Uuid::new_v4()))).send().await.unwrap();
    g.http
        .post(g.url(&format!("/redis/{}/get/k", uuid::Uuid::new_v4())))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    scrape(&g).await;
    let before_text = scrape(&g).await;
    let before = series(&before_text);
    // 10,000 distinct keys and 1,000 random command names, in pipelines of 500.
    for batch in 0..22 {
        let cmds: Vec<serde_json::Value> = (0..500)
            .map(|i| {
                let n = batch * 500 + i;
                if batch < 20 {
                    json!(["SET", format!("key:{n}"), "v"])
                } else {
                    json!([format!("CMD{n:x}Q"), "x"])
                }
            })
            .collect();
        let r = g.http.post(&url).bearer_auth(&key).json(&cmds).send().await.unwrap();
        // Names the command catalog does not know are refused before Redis (and metrics).
        assert_eq!(r.status(), if batch < 20 { 200 } else { 400 });
    }
    // Random paths: unknown routes, unknown ids, unknown instances.
    for i in 0..300 {
        g.http.get(g.url(&format!("/random/{i}/path"))).send().await.unwrap();
        g.http.get(g.url(&format!("/api/organizations/{}", uuid::Uuid::new_v4()))).send().await.unwrap();
        g.http
            .post(g.url(&format!("/redis/{}/get/k{i}", uuid::Uuid::new_v4())))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
    }
    let after_text = scrape(&g).await;
    let after = series(&after_text);
    // Background work (the once-a-second key-usage flush, the change feed and its pruning,
    // status writes) may add series from closed sets meanwhile, the store's query names above
    // all (one histogram of 20 series each, whenever a task first runs: not counted here);
    // 11,000 distinct keys, names and ids must add none.
    let new: Vec<&String> = after.difference(&before).filter(|s| !s.starts_with("database_")).collect();
    assert!(new.len() < 60, "series grew by {}: {new:#?}", new.len());
    for line in &after {
        assert!(!line.contains("key:") && !line.contains("CMD") && !line.contains("/random/"), "{line}");
    }
    assert!(after.len() < 1000, "{} series", after.len());
    assert!(has(&after_text, "redis_commands_total", &[("command", "SET")]));
    assert!(has(&after_text, "http_requests_total", &[("path", "unmatched")]));
}

/// A TCP proxy in front of PostgreSQL that a test can cut and restore, like a database outage.
struct Proxy {
    port: u16,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(port: u16, upstream: u16) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let inner = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                inner.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Proxy { port, tasks }
    }

    /// Stops accepting and drops every open connection.
    fn cut(&self) {
        self.tasks.lock().unwrap().drain(..).for_each(|t| t.abort());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_metadata_store() {
    let db = crate::common::PgDatabase::create().await;
    let pg_port = db.port();
    let proxy = Proxy::start(0, pg_port).await;
    // Component details while the store is away: on the operators' listener, which needs no
    // session (sessions live in the store).
    let ops = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let settings = Settings {
        database_url: Some(db.url(Some(proxy.port)).into()),
        metrics_listen: Some(ops),
        ..Settings::default()
    };
    let g = Gate::start_unchecked(settings).await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let (key, _) = t.key(json!({"name": "app", "scope": "read-write"})).await;
    assert_eq!(redis_cmd(&g, &t.instance, &key, json!(["SET", "k", "v"])).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.http.get(g.url("/health/ready")).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, inst) = t.api.get(&format!("/api/organizations/{}/redis-instances/{}", t.org, t.instance)).await;
    assert_eq!((s, inst["health"].as_str()), (200, Some("healthy")), "{inst}");

    // PostgreSQL goes away: not ready within 2 s, with a JSON reason; liveness stays.
    proxy.cut();
    let cut_at = Instant::now();
    loop {
        let r = g.http.get(g.url("/health/ready")).send().await.unwrap();
        if r.status() == 503 {
            let body: serde_json::Value = r.json().await.unwrap();
            // A fixed reason: never the driver's error text (hosts, users, paths).
            assert_eq!(body, json!({"status": "not_ready", "error": "metadata store unreachable"}));
            break;
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(2),
            "still ready {:?} after the store went away",
            cut_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(g.http.get(g.url("/health/live")).send().await.unwrap().status(), 200);
    let r = g.http.get(g.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "unhealthy");
    assert!(body["error"].is_string() && body.get("components").is_none(), "{body}");
    let r = g.http.get(format!("http://{ops}/health")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["components"]["metadata_store"]["status"], "unhealthy");
    // The data plane keeps serving the key it knows.
    for _ in 0..5 {
        assert_eq!(
            redis_cmd(&g, &t.instance, &key, json!(["GET", "k"])).await,
            (200, json!({"result": "v"}))
        );
    }

    // PostgreSQL is back: ready again.
    let _back = Proxy::start(proxy.port, pg_port).await;
    let back_at = Instant::now();
    while g.http.get(g.url("/health/ready")).send().await.unwrap().status() != 200 {
        assert!(back_at.elapsed() < Duration::from_secs(10), "not ready again after the store came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, body) = g.http.get(g.url("/health")).send().await.map(|r| (r.status(), r)).unwrap();
    assert_eq!(s, 200);
    let body: serde_json::Value = body.json().await.unwrap();
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert!(body["uptime_seconds"].is_u64());
    drop(t);
    g.shutdown().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_per_key_and_per_token() {
    let redis = crate::common::Redis::start().await;
    let mut s = crate::common::settings(&redis);
    s.rate_limit.per_second = 1;
    s.rate_limit.burst = 3;
    s.rate_limit.tokens = Some(redisgate_core::ratelimit::Rate { per_second: 1, burst: 3 });
    let g = Gate::start_unchecked(s).await;
    // Standalone token: three at once, then 429 with a JSON error and the headers.
    let post = || g.http.post(g.url("/")).bearer_auth(crate::common::TOKEN).body(r#"["PING"]"#).send();
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let r = post().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["ratelimit-limit"], "1");
        remaining.push(r.headers()["ratelimit-remaining"].to_str().unwrap().to_owned());
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let r = post().await.unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["ratelimit-remaining"], "0");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().starts_with("ERR rate limit exceeded"), "{body}");
    // Another token has its own budget.
    let r = g
        .http
        .post(g.url("/"))
        .bearer_auth(crate::common::RO_TOKEN)
        .body(r#"["PING"]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A pipeline of four commands is one request: 3 - 1 - 1 leaves 1.
    let r = g
        .http
        .post(g.url("/pipeline"))
        .bearer_auth(crate::common::RO_TOKEN)
        .body(r#"[["PING"],["PING"],["PING"],["PING"]]"#)
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), r.headers()["ratelimit-remaining"].to_str().unwrap()), (200, "1"));

    // API keys: per key, at the plan's rate (free here: the configured default).
    let t = Tenant::new(&g, "ann@example.com").await;
    let (a, _) = t.key(json!({"name": "a", "scope": "read-write"})).await;
    let (b, _) = t.key(json!({"name": "b", "scope": "read-write"})).await;
    for _ in 0..3 {
        assert_eq!(redis_cmd(&g, &t.instance, &a, json!(["PING"])).await.0, 200);
    }
    let (s, body) = redis_cmd(&g, &t.instance, &a, json!(["PING"])).await;
    assert_eq!(s, 429, "{body}");
    assert_eq!(redis_cmd(&g, &t.instance, &b, json!(["PING"])).await.0, 200, "b has its own budget");
    // A key's own rate (set through the API) wins over the default: burst 1 here, not 3.
    let (c, _) =
        t.key(json!({"name": "c", "scope": "read-write", "rate_limit": {"per_second": 1, "burst": 1}})).await;
    assert_eq!(redis_cmd(&g, &t.instance, &c, json!(["PING"])).await.0, 200);
    assert_eq!(redis_cmd(&g, &t.instance, &c, json!(["PING"])).await.0, 429);
    // Changed through the API, it applies at once: burst 1000 now.
    let (s, c_id) = t.api.get(&format!("/api/organizations/{}/api-keys", t.org)).await;
    assert_eq!(s, 200);
    let c_id = c_id.as_array().unwrap().iter().find(|k| k["name"] == "c").unwrap()["id"].clone();
    let c_url = format!("/api/organizations/{}/api-keys/{}", t.org, c_id.as_str().unwrap());
    let (s, body) = t.api.patch(&c_url, json!({"rate_limit": {"per_second": 1000, "burst": 1000}})).await;
    assert_eq!((s, body["rate_limit"].clone()), (200, json!({"per_second": 1000, "burst": 1000})), "{body}");
    assert_eq!(redis_cmd(&g, &t.instance, &c, json!(["PING"])).await.0, 200);
    let (s, body) = t.api.patch(&c_url, json!({})).await;
    assert_eq!((s, body["field"].as_str()), (422, Some("rate_limit")), "absent is not null: {body}");
    let (s, body) = t.api.patch(&c_url, json!({"rate_limit": null})).await;
    assert_eq!((s, body["rate_limit"].clone()), (200, serde_json::Value::Null), "{body}");
    let (s, body) = t
        .api
        .post(
            &format!("/api/organizations/{}/api-keys", t.org),
            json!({"name": "d", "scope": "read-write", "rate_limit": {"per_second": 0, "burst": 1}}),
        )
        .await;
    assert_eq!((s, body["field"].as_str()), (422, Some("rate_limit")), "{body}");
    // A plan's rate set through the API (ann is the deployment administrator) wins over the
    // configuration's, for keys without a rate of their own, at once.
    let (s, set) = t.api.put("/api/plans/free/rate-limit", json!({"per_second": 1, "burst": 2})).await;
    assert_eq!((s, set), (200, json!({"per_second": 1, "burst": 2})));
    let (_, plans) = t.api.get("/api/plans").await;
    assert_eq!(plans[0]["plan"], "free");
    assert_eq!(
        (plans[0]["rate_limit"]["burst"].as_u64(), plans[0]["rate_limit_source"].as_str()),
        (Some(2), Some("api"))
    );
    let (e, _) = t.key(json!({"name": "e", "scope": "read-write"})).await;
    assert_eq!(redis_cmd(&g, &t.instance, &e, json!(["PING"])).await.0, 200);
    assert_eq!(redis_cmd(&g, &t.instance, &e, json!(["PING"])).await.0, 200);
    assert_eq!(redis_cmd(&g, &t.instance, &e, json!(["PING"])).await.0, 429, "burst 2 from the plan");
    let (bob, _) = Api::signup(&g, "bob@example.com").await;
    let (s, body) = bob.put("/api/plans/pro/rate-limit", json!({"per_second": 5, "burst": 5})).await;
    assert_eq!((s, body["code"].as_str()), (403, Some("forbidden")));
    assert_eq!(t.api.delete("/api/plans/free/rate-limit").await.0, 204);
    let (_, plans) = t.api.get("/api/plans").await;
    assert_eq!(plans[0]["rate_limit_source"], "config");
    let text = scrape(&g).await;
    assert!(
        text.lines().any(|l| l.starts_with("rate_limit_rejections_total ") && !l.ends_with(" 0")),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_on_a_separate_listener() {
    let port = free_port();
    let settings = Settings { metrics_listen: Some(([127, 0, 0, 1], port).into()), ..Settings::default() };
    let g = Gate::start_unchecked(settings).await;
    assert_eq!(g.http.get(g.url("/health/live")).send().await.unwrap().status(), 200);
    let (s, body) = Api::anon(&g).get("/metrics").await;
    assert_eq!((s, body["code"].as_str()), (404, Some("not_found")), "not on the main listener");
    let r = g.http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(has(&text, "http_requests_total", &[("path", "/health/live")]), "{text}");
}

/// Counters without labels are exported from start-up at 0, so alerts and dashboards see a
/// value, not "no data", on a healthy deployment that has not counted anything yet. (nextest
/// runs each test in a process of its own: nothing else has counted here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlabelled_counters_are_exported_from_the_start() {
    let g = Gate::start_unchecked(Settings::default()).await;
    let text = g.http.get(g.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "redis_connection_retries_total",
        "redis_reconnects_total",
        "api_key_requests_total",
        "api_key_auth_failures_total",
        "rate_limit_rejections_total",
        "rate_limit_fallbacks_total",
        "audit_entries_pruned_total",
    ] {
        assert!(text.lines().any(|l| l.starts_with(&format!("{name} "))), "{name} missing:\n{text}");
    }
}
