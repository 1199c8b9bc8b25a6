//! The egress policy of external instances, attacked: a tenant's `redis://` URL must not lead
//! RedisGate to loopback, to internal networks, or to RedisGate's own services, however the
//! address is spelled, at creation or at any later (re)connect; and an unreachable server must
//! look the same to its tenant whatever the cause, so the gateway is no port scanner.
//!
//! Only loopback is ever connected to; other address classes are unit tests of
//! `redisgate_core::egress`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redisgate_core::egress::EgressPolicy;
use redisgate_provision::SharedResolver;
use redisgate_server::backend::{Backend, Hold};
use redisgate_server::config::{BackendSettings, RateLimitMode, Settings};
use redisgate_server::egress::{Egress, LocalPorts};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::Api;
use crate::common::{Gate, PgDatabase, Redis, free_port, settings};
use crate::instances::redis_cmd;

/// The one status reason tenants see for an external server RedisGate cannot use.
pub const UNREACHABLE: &str = "could not connect to the server; check the URL, the password and that the server accepts connections from RedisGate";

/// An organization of a fresh account's, and its instances URL.
async fn org<'a>(g: &'a Gate, email: &str) -> (Api<'a>, String) {
    let (api, _) = Api::signup(g, email).await;
    let (s, org) = api.post("/api/organizations", json!({"name": "Acme"})).await;
    assert_eq!(s, 201, "{org}");
    (api, format!("/api/organizations/{}/redis-instances", org["id"].as_str().unwrap()))
}

async fn create_external(api: &Api<'_>, instances: &str, url: &str) -> (u16, Value) {
    api.post(instances, json!({"name": "ext", "provisioner": "external", "url": url})).await
}

/// Connections `redis` has accepted so far (this question is one of them).
pub async fn connections(redis: &Redis) -> u64 {
    let info: String = redis.cmd(&["INFO", "stats"]).await;
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO stats has total_connections_received")
}

/// The create request was refused as a validation error on `url`, with the one reason.
fn assert_refused(status: u16, body: &Value, what: &str) -> String {
    assert_eq!(status, 422, "{what}: {body}");
    assert_eq!(
        (body["code"].as_str(), body["field"].as_str()),
        (Some("validation_failed"), Some("url")),
        "{what}: {body}"
    );
    body["error"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_policy_refuses_loopback_in_every_spelling() {
    let victim = Redis::start().await;
    let g = Gate::start_strict(Settings::default()).await;
    let (api, instances) = org(&g, "mallory@example.com").await;
    let before = connections(&victim).await;
    let port = victim.port;
    let mut reasons = Vec::new();
    for url in [
        format!("redis://127.0.0.1:{port}"),
        format!("redis://localhost:{port}"),
        format!("redis://LOCALHOST.:{port}"),
        format!("redis://[::1]:{port}"),
        format!("redis://[::ffff:127.0.0.1]:{port}"),
        format!("redis://127.1.2.3:{port}"),
        format!("redis://2130706433:{port}"),
        format!("redis://0x7f000001:{port}"),
        format!("redis://0177.0.0.1:{port}"),
        format!("rediss://127.0.0.1:{port}"),
        format!("redis://user:pw@127.0.0.1:{port}/0"),
    ] {
        let (s, body) = create_external(&api, &instances, &url).await;
        reasons.push(assert_refused(s, &body, &url));
    }
    reasons.dedup();
    assert_eq!(reasons.len(), 1, "one reason, no oracle: {reasons:?}");
    for word in ["loopback", "127.0.0.1", "private", "resolve"] {
        assert!(!reasons[0].contains(word), "the reason names no rule or address: {}", reasons[0]);
    }
    // The redis crate's URL parser itself rejects the unspecified addresses.
    for host in ["0.0.0.0", "[::]"] {
        let (s, body) = create_external(&api, &instances, &format!("redis://{host}:{port}")).await;
        assert_refused(s, &body, host);
    }
    // A name that does not resolve is refused the same way: no DNS oracle either.
    let (s, body) = create_external(&api, &instances, "redis://no-such-host.invalid:6379").await;
    assert_eq!(assert_refused(s, &body, "unresolvable"), reasons[0]);
    assert_eq!(connections(&victim).await, before + 1, "nothing but this question reached the victim");
    let (_, list) = api.get(&instances).await;
    assert_eq!(list, json!([]), "nothing was created");
}

/// Starts a local instance and returns the loopback port its `redis-server` listens on (from
/// its `redis.conf`).
async fn local_instance_port(api: &Api<'_>, instances: &str, data_dir: &std::path::Path) -> u16 {
    let (s, inst) = api.post(instances, json!({"name": "local", "memory_mb": 8})).await;
    assert_eq!((s, inst["status"].as_str()), (201, Some("running")), "{inst}");
    let conf = data_dir.join("instances").join(inst["id"].as_str().unwrap()).join("redis.conf");
    let text = std::fs::read_to_string(conf).unwrap();
    text.lines().find_map(|l| l.strip_prefix("port ")).unwrap().trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_range_still_excludes_redisgates_own_services() {
    let tenant_redis = Redis::start().await;
    let limiter = Redis::start().await;
    let token_redis = Redis::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut s = settings(&token_redis);
    s.data_dir = data.path().to_owned();
    s.instances.external.allow = vec!["127.0.0.0/8".into()];
    s.rate_limit.mode = RateLimitMode::Distributed;
    s.rate_limit.redis_url = Some(limiter.url().into());
    let g = Gate::start_with_data_dir(s).await;
    let (api, instances) = org(&g, "mallory@example.com").await;

    let (s, ok) = create_external(&api, &instances, &tenant_redis.url()).await;
    assert_eq!((s, ok["status"].as_str()), (201, Some("running")), "an allowed server is used: {ok}");

    let gate_port: u16 = g.base.rsplit_once(':').unwrap().1.parse().unwrap();
    let local_port = local_instance_port(&api, &instances, data.path()).await;
    let token_before = connections(&token_redis).await;
    for (what, port) in [
        ("RedisGate's own listener", gate_port),
        ("the limiter's Redis", limiter.port),
        ("a standalone token's Redis", token_redis.port),
        ("a local instance", local_port),
    ] {
        for host in ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "127.0.0.2"] {
            let (s, body) = create_external(&api, &instances, &format!("redis://{host}:{port}")).await;
            assert_refused(s, &body, &format!("{what} via {host}"));
        }
    }
    // The gateway's own backend pings the token's Redis; none of the attempts above did.
    let pings = connections(&token_redis).await - token_before;
    assert_eq!(pings, 1, "no connection from the refused instances");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_range_still_excludes_the_metadata_database() {
    let db = PgDatabase::create().await;
    let mut s = db.replica();
    s.instances.external.allow = vec!["127.0.0.0/8".into()];
    let g = Gate::start_unchecked(s).await;
    let (api, instances) = org(&g, "mallory@example.com").await;
    for host in ["127.0.0.1", "localhost"] {
        let (s, body) = create_external(&api, &instances, &format!("redis://{host}:{}", db.port())).await;
        assert_refused(s, &body, &format!("PostgreSQL via {host}"));
    }
    g.shutdown().await;
    db.drop_now().await;
}

/// The instance once RedisGate has restored every instance (readiness waits for that).
async fn settled(api: &Api<'_>, instances: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.get("/health/ready").await.0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, inst) = api.get(&format!("{instances}/{id}")).await;
    assert_eq!(s, 200, "{inst}");
    inst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_start_is_checked_again_against_the_current_policy() {
    let redis = Redis::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut s = Settings { data_dir: data.path().to_owned(), ..Settings::default() };
    s.instances.external.allow = vec!["127.0.0.0/8".into()];
    let g = Gate::start_with_data_dir(s.clone()).await;
    let (api, instances) = org(&g, "ann@example.com").await;
    let (st, inst) = create_external(&api, &instances, &redis.url()).await;
    assert_eq!((st, inst["status"].as_str()), (201, Some("running")), "{inst}");
    let id = inst["id"].as_str().unwrap().to_owned();
    let token = api.token.clone();
    g.shutdown().await;

    // The administrator closes loopback again; the stored instance must not be reconnected.
    let before = connections(&redis).await;
    s.instances.external.allow = Vec::new();
    let g = Gate::start_strict_with_data_dir(s).await;
    let api = Api { g: &g, token };
    let inst = settled(&api, &instances, &id).await;
    assert_eq!(inst["status"], "error", "{inst}");
    assert_eq!(inst["status_reason"], UNREACHABLE, "{inst}");
    assert_eq!(inst["health"], "not_running", "{inst}");
    // Ann, the deployment's first account, administers it and sees why.
    let detail = inst["status_detail"].as_str().unwrap_or_default();
    assert!(detail.contains("egress policy") && detail.contains("loopback"), "{inst}");
    assert_eq!(connections(&redis).await, before + 1, "RedisGate did not connect to it");
}

/// The first account administers the deployment; the second is an ordinary tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_look_the_same_to_tenants() {
    let locked = Redis::start().await;
    let _: () = locked.cmd(&["CONFIG", "SET", "requirepass", "the-real-password"]).await;
    let g = Gate::start_unchecked(Settings::default()).await;
    let (admin, admin_instances) = org(&g, "root@example.com").await;
    let (tenant, tenant_instances) = org(&g, "mallory@example.com").await;
    let urls = [
        format!("redis://127.0.0.1:{}", free_port()),
        format!("redis://127.0.0.1:{}", locked.port),
        format!("redis://:wrong-password@127.0.0.1:{}", locked.port),
    ];
    let mut seen = Vec::new();
    for url in &urls {
        let (s, inst) = create_external(&tenant, &tenant_instances, url).await;
        assert_eq!((s, inst["status"].as_str()), (201, Some("error")), "{inst}");
        assert_eq!(inst["status_reason"], UNREACHABLE, "{url}: {inst}");
        assert!(inst.get("status_detail").is_none(), "details are for administrators: {inst}");
        let (_, again) = tenant.get(&format!("{tenant_instances}/{}", inst["id"].as_str().unwrap())).await;
        assert!(again.get("status_detail").is_none(), "{again}");

        let (s, inst) = create_external(&admin, &admin_instances, url).await;
        assert_eq!((s, inst["status_reason"].as_str()), (201, Some(UNREACHABLE)), "{inst}");
        let detail = inst["status_detail"].as_str().expect("administrators see the cause").to_owned();
        assert!(!detail.contains("wrong-password"), "no password in details: {detail}");
        seen.push(detail);
    }
    assert!(seen[0].contains("refused"), "{seen:?}");
    assert!(seen[1].contains("requires a password"), "{seen:?}");
    assert!(seen[2].contains("wrong"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_plane_does_not_say_why_an_external_server_is_down() {
    let mut redis = Redis::start().await;
    let g = Gate::start_unchecked(Settings::default()).await;
    let (api, instances) = org(&g, "ann@example.com").await;
    let (s, inst) = create_external(&api, &instances, &redis.url()).await;
    assert_eq!((s, inst["status"].as_str()), (201, Some("running")), "{inst}");
    let id = inst["id"].as_str().unwrap();
    let keys = instances.replace("redis-instances", "api-keys");
    let (_, k) = api.post(&keys, json!({"name": "k", "scope": "read-write"})).await;
    let key = k["key"].as_str().unwrap();
    assert_eq!(redis_cmd(&g, id, key, json!(["PING"])).await.0, 200);

    redis.kill();
    // Once the supervisor has tried to reconnect (and found the port closed), the 503 carries
    // the reconnect's reason: the same one as any other failure.
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = loop {
        let (s, body) = redis_cmd(&g, id, key, json!(["PING"])).await;
        let error = body["error"].as_str().unwrap_or_default().to_owned();
        if s == 503 && error.contains("unavailable") && !error.contains("reconnecting") {
            break error;
        }
        assert!(Instant::now() < deadline, "never saw a reconnect failure: {s} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(error.contains(UNREACHABLE), "{error}");
    assert!(!error.contains("refused"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_of_an_allowed_server_still_work() {
    let redis = Redis::start().await;
    let g = Gate::start_unchecked(Settings::default()).await;
    let (api, instances) = org(&g, "ann@example.com").await;
    let (s, inst) = create_external(&api, &instances, &format!("redis://localhost:{}", redis.port)).await;
    assert_eq!((s, inst["status"].as_str()), (201, Some("running")), "{inst}");
    let id = inst["id"].as_str().unwrap();
    let keys = instances.replace("redis-instances", "api-keys");
    let (_, k) = api.post(&keys, json!({"name": "k", "scope": "admin"})).await;
    let key = k["key"].as_str().unwrap();
    let mut sub =
        g.http.get(g.url(&format!("/redis/{id}/subscribe/news"))).bearer_auth(key).send().await.unwrap();
    assert_eq!(sub.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(5), sub.chunk()).await.unwrap().unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("subscribe"), "{first:?}");
    let monitor = g.http.get(g.url(&format!("/redis/{id}/monitor"))).bearer_auth(key).send().await.unwrap();
    assert_eq!(monitor.status(), 200);
    let clients: String = redis.cmd(&["CLIENT", "LIST"]).await;
    assert!(clients.contains("cmd=monitor"), "the monitor connection reached the allowed server: {clients}");
}

/// The shared connection and the SSE connections of an external backend are checked at every
/// connect, not once: when its address becomes one the policy refuses (here: one of RedisGate's
/// own local-instance ports, as the local provisioner would report it), the next reconnect is
/// refused before it dials, and the server sees no connection from RedisGate.
/// An egress policy admitting loopback, and the list of "local instance ports" it refuses,
/// which a test changes to turn an allowed address into one of RedisGate's own.
pub async fn adjustable_egress() -> (Arc<Egress>, Arc<Mutex<Vec<u16>>>) {
    let own: Arc<Mutex<Vec<u16>>> = Arc::default();
    let local_ports: LocalPorts = {
        let own = Arc::clone(&own);
        Arc::new(move || own.lock().unwrap().clone())
    };
    let policy = EgressPolicy::parse(&["127.0.0.0/8"]).unwrap();
    (Egress::new(policy, [], local_ports, Duration::from_secs(2)).await, own)
}

/// A tenant's backend for `url` whose connections resolve through `resolver`, quick to notice
/// and retry; stop it with [`stop`].
pub fn checked_backend(
    url: &str,
    resolver: SharedResolver,
) -> (Arc<Backend>, TaskTracker, CancellationToken) {
    checked_backend_verified(url, None, resolver)
}

/// [`checked_backend`] verifying a `rediss://` server against `ca_pem`, as an instance with
/// its own CA does.
pub fn checked_backend_verified(
    url: &str,
    ca_pem: Option<&str>,
    resolver: SharedResolver,
) -> (Arc<Backend>, TaskTracker, CancellationToken) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = BackendSettings {
        connect_retries: 0,
        retry_delay: Duration::from_millis(50),
        health_check_interval: Duration::from_millis(50),
        ..BackendSettings::default()
    };
    let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
    let client = redisgate_server::egress::tenant_client(url, ca_pem).unwrap();
    let backend =
        Backend::start_checked("t".into(), client, resolver, Hold::OnDemand, cfg, &tracker, cancel.clone());
    if let Some(ca) = ca_pem {
        backend.verify_streams_with(redisgate_server::egress::tls_roots(ca).unwrap());
    }
    (backend, tracker, cancel)
}

pub async fn stop(tracker: TaskTracker, cancel: CancellationToken) {
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
}

/// Neither a pub/sub nor a monitor connection opens, and the caller is told only the one reason.
pub async fn assert_streams_refused(backend: &Backend, why: &str) {
    for stream in [backend.pubsub().await.map(drop), backend.monitor().await.map(drop)] {
        let e = stream.expect_err(why);
        assert!(e.to_string().contains(UNREACHABLE), "{why}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reconnect_is_checked_again() {
    let mut redis = Redis::start().await;
    let (egress, own) = adjustable_egress().await;
    let (backend, tracker, cancel) =
        checked_backend(&format!("redis://localhost:{}", redis.port), egress.resolver());
    assert!(backend.run(&redis::cmd("PING")).await.is_ok(), "allowed while the address is the tenant's");
    drop(backend.pubsub().await.expect("a pub/sub connection to an allowed address"));
    drop(backend.monitor().await.expect("a monitor connection to an allowed address"));

    own.lock().unwrap().push(redis.port);
    redis.restart().await;
    let before = connections(&redis).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match backend.run(&redis::cmd("PING")).await {
            Err(e) if e.to_string().contains(UNREACHABLE) => break,
            other => assert!(Instant::now() < deadline, "never refused: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_streams_refused(&backend, "stream connections are refused too").await;
    assert_eq!(connections(&redis).await, before + 1, "no connection from RedisGate since the change");
    stop(tracker, cancel).await;
}

/// The monitor of a tenant's server reads lines RedisGate did not write: one past the bound (a
/// write of a value larger than 4 MiB is echoed in full) ends the stream instead of growing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_line_past_the_bound_ends_the_stream() {
    use futures_util::StreamExt;

    let redis = Redis::start().await;
    let (egress, _) = adjustable_egress().await;
    let (backend, tracker, cancel) = checked_backend(&redis.url(), egress.resolver());
    let (mut monitor, _guard) = backend.monitor().await.expect("a monitor connection");
    let _: () = redis.cmd(&["SET", "small", "x"]).await;
    let first = tokio::time::timeout(Duration::from_secs(5), monitor.next()).await.unwrap();
    assert!(
        matches!(&first, Some(redis::Value::BulkString(l)) if l.ends_with(br#""SET" "small" "x""#)),
        "{first:?}"
    );
    let _: () = redis.cmd(&["SET", "big", &"x".repeat(5 << 20)]).await;
    // Other short lines (the backend's own health-check PINGs) may still come before it.
    let rest: Vec<redis::Value> = tokio::time::timeout(Duration::from_secs(5), monitor.collect())
        .await
        .expect("the stream ended at the long line");
    let big =
        |v: &redis::Value| matches!(v, redis::Value::BulkString(l) if l.windows(5).any(|w| w == br#""big""#));
    assert!(!rest.iter().any(big), "the long line was passed on: {} lines", rest.len());
    stop(tracker, cancel).await;
}
