//! Host-wide bounds against hostile tenants: caps on local instances and their memory across
//! organizations, connection and per-key concurrency limits, what anonymous `/health` shows,
//! private state files, and deleted instances that really stop.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use redisgate_server::config::Settings;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::api::Api;
use crate::common::{Gate, PgDatabase, RO_TOKEN, Redis, TOKEN, free_port, settings};
use crate::instances::{Tenant, redis_cmd};

/// A gauge or counter without labels from `/metrics`; 0 while it has never been set.
async fn metric(g: &Gate, name: &str) -> f64 {
    let text = g.http.get(g.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

/// Polls `metric` until it equals `want`.
async fn wait_metric(g: &Gate, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = metric(g, name).await;
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed {now}, expected {want}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A control plane with fast retries and health checks.
fn quick() -> Settings {
    let mut s = Settings::default();
    s.backend.retry_delay = Duration::from_millis(100);
    s.backend.health_check_interval = Duration::from_millis(100);
    s.http.sse_keepalive = Duration::from_millis(100);
    s
}

/// Opens an SSE stream on an instance with `key`; the status, and the response to hold it.
async fn stream(g: &Gate, instance: &str, key: &str) -> (u16, reqwest::Response) {
    let r = g
        .http
        .post(g.url(&format!("/redis/{instance}/subscribe/news")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r)
}

/// Reads a held stream up to its first event, so it surely has a slot and a connection.
async fn first_event(
    r: reqwest::Response,
) -> futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>> {
    let mut body = r.bytes_stream().boxed();
    let chunk = tokio::time::timeout(Duration::from_secs(5), body.next()).await.unwrap().unwrap().unwrap();
    assert!(chunk.starts_with(b"data: subscribe,news,1"), "{chunk:?}");
    body
}

async fn create(api: &Api<'_>, org: &str, mb: u64) -> (u16, Value) {
    api.post(&format!("/api/organizations/{org}/redis-instances"), json!({"name": "x", "memory_mb": mb}))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_caps_hold_under_parallel_creates_across_organizations() {
    let mut s = quick();
    s.instances.max_local_instances = 2;
    s.instances.max_local_memory_mb = 40;
    let g = Gate::start_unchecked(s).await;
    let ann = Tenant::new(&g, "ann@example.com").await; // one local instance, 16 MiB
    let (bob, _) = Api::signup(&g, "bob@example.com").await;
    let (_, org) = bob.post("/api/organizations", json!({"name": "Bob's"})).await;
    let bob_org = org["id"].as_str().unwrap().to_owned();
    // Four creates at once from two organizations, each well within its own quota: the host
    // has room for one more instance, so exactly one gets it.
    let answers = futures_util::future::join_all([
        Box::pin(create(&ann.api, &ann.org, 8)),
        Box::pin(create(&ann.api, &ann.org, 8)),
        Box::pin(create(&bob, &bob_org, 8)),
        Box::pin(create(&bob, &bob_org, 8)),
    ])
    .await;
    let created: Vec<&(u16, Value)> = answers.iter().filter(|(s, _)| *s == 201).collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    for (s, body) in answers.iter().filter(|(s, _)| *s != 201) {
        assert_eq!(
            (*s, body["code"].as_str(), body["limit"].as_str()),
            (403, Some("host_capacity_exceeded"), Some("max_local_instances")),
            "{body}"
        );
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    }
    // Deleting one frees its place; memory is the next bound: 16 + 32 > 40 MiB, 16 + 24 fits.
    let (_, list) = ann.api.get(&format!("/api/organizations/{}/redis-instances", ann.org)).await;
    let (_, listb) = bob.get(&format!("/api/organizations/{bob_org}/redis-instances")).await;
    let newest = list
        .as_array()
        .unwrap()
        .iter()
        .chain(listb.as_array().unwrap())
        .find(|i| i["memory_bytes"] == 8 << 20);
    let newest = newest.expect("the created instance is listed");
    let org = newest["org_id"].as_str().unwrap();
    let api = if org == ann.org { &ann.api } else { &bob };
    let (s, _) = api
        .delete(&format!("/api/organizations/{org}/redis-instances/{}", newest["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, 204);
    let (s, body) = create(&bob, &bob_org, 32).await;
    assert_eq!(
        (s, body["code"].as_str(), body["limit"].as_str()),
        (403, Some("host_capacity_exceeded"), Some("max_local_memory_mb")),
        "{body}"
    );
    assert_eq!(create(&bob, &bob_org, 24).await.0, 201);
    // External servers are not this host's to bound.
    let redis = Redis::start().await;
    let ext = json!({"name": "ext", "provisioner": "external", "url": redis.url()});
    assert_eq!(bob.post(&format!("/api/organizations/{bob_org}/redis-instances"), ext).await.0, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_per_key_are_bounded() {
    let mut s = quick();
    s.http.max_streams_per_key = 2;
    let g = Gate::start_unchecked(s).await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let (a, _) = t.key(json!({"name": "a", "scope": "read-write"})).await;
    let (b, _) = t.key(json!({"name": "b", "scope": "read-write"})).await;
    let (s1, r1) = stream(&g, &t.instance, &a).await;
    let (s2, r2) = stream(&g, &t.instance, &a).await;
    assert_eq!((s1, s2), (200, 200));
    let (_first, _second) = (first_event(r1).await, first_event(r2).await);
    let (s3, r3) = stream(&g, &t.instance, &a).await;
    assert_eq!(s3, 429);
    let body: Value = r3.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().starts_with("ERR too many concurrent streams for this key (limit 2)"),
        "{body}"
    );
    // Another key of the same organization still gets its streams.
    let (sb, rb) = stream(&g, &t.instance, &b).await;
    assert_eq!(sb, 200);
    let _b = first_event(rb).await;
    // Closing one of `a`'s streams gives its slot back (noticed at the next keep-alive).
    drop(_first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, r) = stream(&g, &t.instance, &a).await;
        if s == 200 {
            drop(first_event(r).await);
            break;
        }
        assert_eq!(s, 429);
        assert!(Instant::now() < deadline, "the closed stream's slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request whose body never finishes arriving: held in flight until `finish`.
struct SlowBody(TcpStream);

impl SlowBody {
    async fn start(addr: SocketAddr, token: &str) -> SlowBody {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST / HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 8\r\n\r\n[\"PI"
        );
        c.write_all(head.as_bytes()).await.unwrap();
        SlowBody(c)
    }

    /// Whether the server answered (or closed) already.
    fn answered(&self) -> bool {
        !matches!(self.0.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Sends the rest of the body and reads the answer's status line.
    async fn finish(mut self) -> String {
        self.0.write_all(b"NG\"]").await.unwrap();
        read_status(&mut self.0).await
    }
}

async fn read_status(c: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.expect("an answer").unwrap();
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("").to_owned()
}

fn addr(g: &Gate) -> SocketAddr {
    g.base.strip_prefix("http://").unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_per_token_are_bounded() {
    let redis = Redis::start().await;
    let mut s = settings(&redis);
    s.http.max_requests_in_flight_per_key = 2;
    let g = Gate::start(s).await;
    // Probes pass until both slow requests are in; then the token is refused, JSON and 429.
    // (A slow request that came while a probe was in flight was refused itself: sent again.)
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        held.retain(|h: &SlowBody| !h.answered());
        while held.len() < 2 {
            held.push(SlowBody::start(addr(&g), TOKEN).await);
        }
        let r = g.post("/", r#"["PING"]"#).await;
        if r.status() == 429 {
            let body: Value = r.json().await.unwrap();
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("ERR too many requests in flight for this key (limit 2)"),
                "{body}"
            );
            break;
        }
        assert_eq!(r.status(), 200);
        assert!(Instant::now() < deadline, "slow requests never counted as in flight");
    }
    // Another token is not starved.
    let r = g.http.post(g.url("/")).bearer_auth(RO_TOKEN).body(r#"["PING"]"#).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // One slow request completes: its slot is free again.
    assert_eq!(held.pop().unwrap().finish().await, "HTTP/1.1 200 OK");
    assert_eq!(g.post("/", r#"["PING"]"#).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_one() {
    let redis = Redis::start().await;
    let mut s = settings(&redis);
    s.http.max_connections = 2;
    let g = Gate::start_unchecked(s).await;
    let ping = format!(
        "POST / HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\ncontent-length: 8\r\n\r\n[\"PING\"]"
    );
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(addr(&g)).await.unwrap();
        c.write_all(ping.as_bytes()).await.unwrap();
        assert_eq!(read_status(&mut c).await, "HTTP/1.1 200 OK");
        open.push(c); // kept alive: both slots taken
    }
    let mut third = TcpStream::connect(addr(&g)).await.unwrap(); // in the listen backlog
    third.write_all(ping.as_bytes()).await.unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), third.read(&mut buf)).await;
    assert!(early.is_err(), "a third connection was served beyond max_connections = 2");
    drop(open.remove(0));
    assert_eq!(read_status(&mut third).await, "HTTP/1.1 200 OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_health_says_only_status_and_version() {
    let metrics_port = free_port();
    let mut s = quick();
    s.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], metrics_port)));
    let g = Gate::start_unchecked(s).await;
    let mut redis = Redis::start().await;
    let admin = Tenant::external(&g, "root@example.com", &redis.url()).await; // the first account
    let (member, _) = Api::signup(&g, "mallory@example.com").await;
    redis.kill(); // the instance turns unhealthy: its id shows up in the component details
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, body) = admin.api.get("/health").await;
        assert_eq!(s, 200, "{body}");
        if body["components"]["instances"]["unhealthy"].to_string().contains(&admin.instance) {
            break;
        }
        assert!(Instant::now() < deadline, "the dead instance never showed up: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (who, api) in [("anonymous", Api::anon(&g)), ("a non-administrator", member)] {
        let (s, body) = api.get("/health").await;
        assert_eq!(s, 200, "{who}: {body}");
        let mut keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["status", "uptime_seconds", "version"], "{who}: {body}");
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    }
    // Operators' side: the metrics listener has the details without a session.
    let r = g.http.get(format!("http://127.0.0.1:{metrics_port}/health")).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    assert!(body["components"]["instances"]["unhealthy"].to_string().contains(&admin.instance), "{body}");
    let local = &body["components"]["instances"]["local"];
    assert_eq!((local["count"].as_u64(), local["memory_mb"].as_u64()), (Some(0), Some(0)), "{body}");
    assert!(local["max_count"].as_u64().is_some_and(|n| n > 0), "{body}");
    let ready: Value = g.http.get(g.url("/health/ready")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready, json!({"status": "ready"}));
}

#[cfg(unix)]
fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_files_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("state");
    let files = ["redisgate.db", "redisgate.db-wal", "redisgate.db-shm", "secret.key"];
    let check = |when: &str| {
        assert_eq!(mode(&dir), 0o700, "{when}: data_dir");
        for f in files {
            assert_eq!(mode(&dir.join(f)), 0o600, "{when}: {f}");
        }
    };
    let start = || {
        let s = Settings { data_dir: dir.clone(), ..quick() };
        async move {
            let g = Gate::start_with_data_dir(s).await;
            // Served: the store is open (and its WAL files exist) and the secret key is loaded.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Api::anon(&g).get("/health/live").await.0 != 200 {
                assert!(Instant::now() < deadline, "never served");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            g
        }
    };
    // Created so.
    let g = start().await;
    check("created");
    // Loosened by hand (or an older RedisGate, or a restore from backup): tightened at start.
    g.shutdown().await;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in files.iter().filter(|f| dir.join(f).exists()) {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let g = start().await;
    check("restarted");
    g.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_instance_stops_its_backend() {
    let g = Gate::start_unchecked(quick()).await;
    let before = metric(&g, "redis_connections_active").await;
    let mut redis = Redis::start().await;
    let t = Tenant::external(&g, "ann@example.com", &redis.url()).await;
    let (key, _) = t.key(json!({"name": "app", "scope": "read-write"})).await;
    // The first command opens the shared connection (on demand).
    assert_eq!(redis_cmd(&g, &t.instance, &key, json!(["PING"])).await.0, 200);
    let (s, r) = stream(&g, &t.instance, &key).await;
    assert_eq!(s, 200);
    let mut events = first_event(r).await;
    wait_metric(&g, "redis_connections_active", before + 2.0).await; // shared + the stream's
    let (s, _) = t.api.delete(&format!("/api/organizations/{}/redis-instances/{}", t.org, t.instance)).await;
    assert_eq!(s, 204);
    // The stream ends, and both connections go.
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = events.next().await {}
    });
    assert!(end.await.is_ok(), "the deleted instance's stream kept going");
    wait_metric(&g, "redis_connections_active", before).await;
    assert_eq!(redis_cmd(&g, &t.instance, &key, json!(["PING"])).await.0, 401);
    // Its Redis goes away: nothing of ours tries to reach it any more.
    redis.kill();
    assert_no_more_retries(&g).await;
}

/// `redis_connection_retries_total` does not move over ten retry intervals (100 ms each).
async fn assert_no_more_retries(g: &Gate) {
    let retries = metric(g, "redis_connection_retries_total").await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            metric(g, "redis_connection_retries_total").await,
            retries,
            "a deleted instance is retried"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_organization_stops_its_backends() {
    let g = Gate::start_unchecked(quick()).await;
    let before = metric(&g, "redis_connections_active").await;
    let mut redis = Redis::start().await;
    let t = Tenant::external(&g, "ann@example.com", &redis.url()).await;
    let (key, _) = t.key(json!({"name": "app", "scope": "read-write"})).await;
    assert_eq!(redis_cmd(&g, &t.instance, &key, json!(["PING"])).await.0, 200);
    wait_metric(&g, "redis_connections_active", before + 1.0).await;
    assert_eq!(t.api.delete(&format!("/api/organizations/{}", t.org)).await.0, 204);
    wait_metric(&g, "redis_connections_active", before).await;
    redis.kill();
    assert_no_more_retries(&g).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_through_another_replica_stops_the_backend_here() {
    let db = PgDatabase::create().await;
    let replica = || {
        let mut s = db.replica();
        s.backend.retry_delay = Duration::from_millis(100);
        s.backend.health_check_interval = Duration::from_millis(100);
        s
    };
    let a = Gate::start_unchecked(replica()).await;
    let b = Gate::start_unchecked(replica()).await;
    let before = metric(&a, "redis_connections_active").await; // one recorder: both replicas
    let mut redis = Redis::start().await;
    let t = Tenant::external(&a, "ann@example.com", &redis.url()).await;
    let (key, _) = t.key(json!({"name": "app", "scope": "read-write"})).await;
    assert_eq!(redis_cmd(&a, &t.instance, &key, json!(["PING"])).await.0, 200);
    // `b` follows within 1 s (the change feed); its first command connects there too.
    let deadline = Instant::now() + Duration::from_secs(1);
    while redis_cmd(&b, &t.instance, &key, json!(["PING"])).await.0 != 200 {
        assert!(Instant::now() < deadline, "the other replica never served the instance");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    wait_metric(&a, "redis_connections_active", before + 2.0).await;
    assert_eq!(
        t.api.delete(&format!("/api/organizations/{}/redis-instances/{}", t.org, t.instance)).await.0,
        204
    );
    wait_metric(&b, "redis_connections_active", before).await;
    redis.kill();
    assert_no_more_retries(&b).await;
    drop(t);
    a.shutdown().await;
    b.shutdown().await;
    db.drop_now().await;
}
