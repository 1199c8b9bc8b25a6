//! Instances and API keys end to end: a real redis-server per instance, reached over
//! `/redis/{id}` with API keys; revocation, scopes, isolation, quotas, restart.

use std::time::{Duration, Instant};

use redisgate_server::config::Settings;
use serde_json::{Value, json};

use crate::api::{Api, control_plane};
use crate::common::{Gate, Redis};

/// An organization with one running instance (local, or external with [`Tenant::external`]),
/// ready for keys.
pub struct Tenant<'a> {
    pub api: Api<'a>,
    pub org: String,
    pub instance: String,
}

impl<'a> Tenant<'a> {
    pub async fn new(g: &'a Gate, email: &str) -> Tenant<'a> {
        Tenant::with_instance(g, email, json!({"name": "cache", "memory_mb": 16})).await
    }

    /// An organization of `email`'s with one external instance: the Redis at `url`.
    pub async fn external(g: &'a Gate, email: &str, url: &str) -> Tenant<'a> {
        Tenant::with_instance(g, email, json!({"name": "ext", "provisioner": "external", "url": url})).await
    }

    pub async fn with_instance(g: &'a Gate, email: &str, instance: Value) -> Tenant<'a> {
        let (api, _) = Api::signup(g, email).await;
        let (s, org) = api.post("/api/organizations", json!({"name": "Acme"})).await;
        assert_eq!(s, 201, "{org}");
        let org = org["id"].as_str().unwrap().to_owned();
        let (s, inst) = api.post(&format!("/api/organizations/{org}/redis-instances"), instance).await;
        assert_eq!((s, inst["status"].as_str()), (201, Some("running")), "{inst}");
        let instance = inst["id"].as_str().unwrap().to_owned();
        Tenant { api, org, instance }
    }

    /// Another running local instance in the tenant's organization; its id.
    pub async fn another_instance(&self, name: &str) -> String {
        let path = format!("/api/organizations/{}/redis-instances", self.org);
        let (s, inst) = self.api.post(&path, json!({"name": name, "memory_mb": 8})).await;
        assert_eq!((s, inst["status"].as_str()), (201, Some("running")), "{inst}");
        inst["id"].as_str().unwrap().to_owned()
    }

    pub async fn key(&self, body: Value) -> (String, String) {
        let (s, k) = self.api.post(&format!("/api/organizations/{}/api-keys", self.org), body).await;
        assert_eq!(s, 201, "{k}");
        (k["key"].as_str().unwrap().to_owned(), k["api_key"]["id"].as_str().unwrap().to_owned())
    }
}

/// POST a command array to `/redis/{instance}` with `key`.
pub async fn redis_cmd(g: &Gate, instance: &str, key: &str, cmd: Value) -> (u16, Value) {
    let r =
        g.http.post(g.url(&format!("/redis/{instance}"))).bearer_auth(key).json(&cmd).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_key_set_get_revoke() {
    let g = control_plane().await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let (key, key_id) = t.key(json!({"name": "app", "scope": "read-write"})).await;
    assert!(key.starts_with("rg_"));
    assert_eq!(
        redis_cmd(&g, &t.instance, &key, json!(["SET", "greeting", "hello"])).await,
        (200, json!({"result": "OK"}))
    );
    assert_eq!(
        redis_cmd(&g, &t.instance, &key, json!(["GET", "greeting"])).await,
        (200, json!({"result": "hello"}))
    );
    // Path form, pipeline and `_token` work under the instance prefix too.
    let r =
        g.http.get(g.url(&format!("/redis/{}/get/greeting?_token={key}", t.instance))).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"result": "hello"}));
    let r = g
        .http
        .post(g.url(&format!("/redis/{}/pipeline", t.instance)))
        .bearer_auth(&key)
        .body(r#"[["INCR","n"],["INCR","n"]]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!([{"result": 1}, {"result": 2}]));
    // The key's secret is never listed again; last use is recorded off the request path.
    let keys_url = format!("/api/organizations/{}/api-keys", t.org);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, list) = t.api.get(&keys_url).await;
        assert!(!list.to_string().contains(&key));
        if list[0]["last_used_at"].is_string() {
            break;
        }
        assert!(Instant::now() < deadline, "last_used_at never recorded: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Revoked: refused within a second (here: at once, this server revoked it).
    let (s, revoked) = t.api.delete(&format!("{keys_url}/{key_id}")).await;
    assert_eq!((s, revoked["revoked_at"].is_string()), (200, true), "{revoked}");
    let revoked_at = Instant::now();
    loop {
        let (s, body) = redis_cmd(&g, &t.instance, &key, json!(["GET", "greeting"])).await;
        if s == 401 {
            assert_eq!(body, json!({"error": "WRONGPASS invalid or missing auth token"}));
            break;
        }
        assert!(revoked_at.elapsed() < Duration::from_secs(1), "revoked key still works");
    }
    let (s, stats) =
        t.api.get(&format!("/api/organizations/{}/redis-instances/{}/stats", t.org, t.instance)).await;
    assert_eq!((s, stats["keys"].as_u64()), (200, Some(2)), "{stats}");
    assert!(stats["used_memory_bytes"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_gate_commands() {
    let g = control_plane().await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let (ro, _) = t.key(json!({"name": "ro", "scope": "read-only"})).await;
    let (rw, _) = t.key(json!({"name": "rw", "scope": "read-write"})).await;
    let (admin, _) = t.key(json!({"name": "admin", "scope": "admin"})).await;
    let i = &t.instance;
    assert_eq!(redis_cmd(&g, i, &rw, json!(["SET", "k", "v"])).await.0, 200);
    assert_eq!(redis_cmd(&g, i, &ro, json!(["GET", "k"])).await, (200, json!({"result": "v"})));
    let (s, body) = redis_cmd(&g, i, &ro, json!(["SET", "k", "x"])).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("NOPERM this token has no permissions to run the 'set' command"))
    );
    // Flushing and script management are admin's; running scripts is read-write's (as
    // Upstash's standard token, which @upstash/ratelimit and @upstash/lock need). What a
    // script may call inside is the per-scope ACL users' business, not this list's.
    for gated in [
        json!(["FLUSHALL"]),
        json!(["FLUSHDB"]),
        json!(["SCRIPT", "FLUSH"]),
        json!(["FUNCTION", "FLUSH"]),
        json!(["FUNCTION", "DELETE", "lib"]),
    ] {
        let (s, body) = redis_cmd(&g, i, &rw, gated.clone()).await;
        assert_eq!(s, 400, "{gated}: {body}");
        assert!(body["error"].as_str().unwrap().starts_with("NOPERM"), "{body}");
    }
    assert_eq!(redis_cmd(&g, i, &rw, json!(["EVAL", "return 1", 0])).await, (200, json!({"result": 1})));
    let (s, sha) = redis_cmd(&g, i, &rw, json!(["SCRIPT", "LOAD", "return KEYS[1]"])).await;
    assert_eq!(s, 200, "{sha}");
    assert_eq!(
        redis_cmd(&g, i, &rw, json!(["EVALSHA", sha["result"], 1, "a"])).await,
        (200, json!({"result": "a"}))
    );
    let (s, body) = redis_cmd(&g, i, &ro, json!(["EVAL_RO", "return redis.call('KEYS','*')", 0])).await;
    assert_eq!(s, 400, "read-only keys run no script: {body}");
    assert!(body["error"].as_str().unwrap().starts_with("NOPERM"), "{body}");
    assert_eq!(
        redis_cmd(&g, i, &rw, json!(["GET", "k"])).await.1,
        json!({"result": "v"}),
        "nothing was flushed"
    );
    assert_eq!(redis_cmd(&g, i, &admin, json!(["EVAL", "return 1", 0])).await, (200, json!({"result": 1})));
    assert_eq!(redis_cmd(&g, i, &admin, json!(["FLUSHALL"])).await, (200, json!({"result": "OK"})));
    assert_eq!(redis_cmd(&g, i, &rw, json!(["GET", "k"])).await.1, json!({"result": null}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_cross_tenants_or_instances() {
    let g = control_plane().await;
    let a = Tenant::new(&g, "ann@example.com").await;
    let b = Tenant::new(&g, "bob@example.com").await;
    let (s, second) = a
        .api
        .post(
            &format!("/api/organizations/{}/redis-instances", a.org),
            json!({"name": "second", "memory_mb": 16}),
        )
        .await;
    assert_eq!(s, 201, "{second}");
    let second = second["id"].as_str().unwrap().to_owned();
    let (a_key, _) = a.key(json!({"name": "all", "scope": "admin"})).await;
    let (only_first, _) =
        a.key(json!({"name": "first", "scope": "read-write", "instance_ids": [a.instance]})).await;
    let (b_key, _) = b.key(json!({"name": "b", "scope": "admin"})).await;
    assert_eq!(redis_cmd(&g, &a.instance, &a_key, json!(["SET", "secret", "a"])).await.0, 200);
    assert_eq!(redis_cmd(&g, &second, &a_key, json!(["PING"])).await.0, 200);
    let wrongpass = json!({"error": "WRONGPASS invalid or missing auth token"});
    let cases = [
        (&a.instance, &b_key, "another organization's key"),
        (&b.instance, &a_key, "a key on another organization's instance"),
        (&second, &only_first, "a key not allowed on this instance"),
        (&"00000000-0000-0000-0000-000000000000".to_owned(), &a_key, "a missing instance"),
        (&"not-an-id".to_owned(), &a_key, "a malformed instance id"),
        (
            &a.instance,
            &"rg_00000000000000000000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned(),
            "an unknown key",
        ),
        (&a.instance, &"test-token-read-write".to_owned(), "a token that is not a key"),
    ];
    for (instance, key, what) in cases {
        for (path, body) in [
            ("", r#"["GET","secret"]"#),
            ("/get/secret", ""),
            ("/pipeline", r#"[["GET","secret"]]"#),
            ("/multi-exec", r#"[["GET","secret"]]"#),
        ] {
            let r = g
                .http
                .post(g.url(&format!("/redis/{instance}{path}")))
                .bearer_auth(key)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401, "{what} {path}");
            assert_eq!(r.json::<Value>().await.unwrap(), wrongpass, "{what} {path}");
        }
    }
    // Keys can only name the organization's own instances.
    let (s, body) = a
        .api
        .post(
            &format!("/api/organizations/{}/api-keys", a.org),
            json!({"name": "x", "scope": "read-only", "instance_ids": [b.instance]}),
        )
        .await;
    assert_eq!((s, body["field"].as_str()), (422, Some("instance_ids")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_quota_holds_under_concurrent_creates() {
    let g = control_plane().await;
    let (root, _) = Api::signup(&g, "root@example.com").await;
    let (_, org) = root.post("/api/organizations", json!({"name": "Acme"})).await;
    let org = org["id"].as_str().unwrap().to_owned();
    let quota = json!({"max_instances": 3, "max_memory_bytes": 1073741824u64, "max_api_keys": 10});
    assert_eq!(root.put(&format!("/api/organizations/{org}/quota"), quota).await.0, 200);
    let url = format!("/api/organizations/{org}/redis-instances");
    let creates = (0..8).map(|i| root.post(&url, json!({"name": format!("i{i}"), "memory_mb": 8})));
    let results = futures_util::future::join_all(creates).await;
    let created = results.iter().filter(|(s, _)| *s == 201).count();
    assert_eq!(created, 3, "{results:?}");
    for (s, body) in results.iter().filter(|(s, _)| *s != 201) {
        assert_eq!(
            (*s, body["code"].as_str(), body["limit"].as_str()),
            (403, Some("quota_exceeded"), Some("max_instances")),
            "{body}"
        );
    }
    assert_eq!(root.get(&url).await.1.as_array().unwrap().len(), 3);
    let (s, body) = root.post(&url, json!({"name": "big", "memory_mb": 2048})).await;
    assert_eq!(s, 403, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_instances_and_honest_errors() {
    let redis = Redis::start().await;
    let mut settings = Settings::default();
    settings.instances.redis_server = "/nonexistent/redis-server".into();
    let g = Gate::start_unchecked(settings).await;
    let (ann, _) = Api::signup(&g, "ann@example.com").await;
    let (_, org) = ann.post("/api/organizations", json!({"name": "Acme"})).await;
    let url = format!("/api/organizations/{}/redis-instances", org["id"].as_str().unwrap());
    // A local instance whose server cannot start is `error`, with the reason; never served.
    let (s, broken) = ann.post(&url, json!({"name": "local"})).await;
    assert_eq!((s, broken["status"].as_str()), (201, Some("error")), "{broken}");
    assert!(broken["status_reason"].as_str().is_some_and(|r| !r.is_empty()), "{broken}");
    // An external server: running when it answers, error with a reason when it does not.
    let (s, ext) =
        ann.post(&url, json!({"name": "mine", "provisioner": "external", "url": redis.url()})).await;
    assert_eq!((s, ext["status"].as_str()), (201, Some("running")), "{ext}");
    assert!(!ext.to_string().contains(&redis.url()), "the URL is never shown again");
    let closed = format!("redis://127.0.0.1:{}", crate::common::free_port());
    let (s, dead) = ann.post(&url, json!({"name": "dead", "provisioner": "external", "url": closed})).await;
    assert_eq!((s, dead["status"].as_str()), (201, Some("error")), "{dead}");
    let (s, body) =
        ann.post(&url, json!({"name": "bad", "provisioner": "external", "url": "http://x"})).await;
    assert_eq!((s, body["field"].as_str()), (422, Some("url")));
    let (s, body) = ann.post(&url, json!({"name": "bad", "provisioner": "external"})).await;
    assert_eq!((s, body["field"].as_str()), (422, Some("url")));
    // Data written through the gateway lands in the user's server.
    let (_, k) = ann
        .post(
            &format!("/api/organizations/{}/api-keys", org["id"].as_str().unwrap()),
            json!({"name": "k", "scope": "read-write"}),
        )
        .await;
    let key = k["key"].as_str().unwrap();
    assert_eq!(
        redis_cmd(&g, ext["id"].as_str().unwrap(), key, json!(["SET", "from", "gateway"])).await.0,
        200
    );
    assert_eq!(redis.cmd::<String>(&["GET", "from"]).await, "gateway");
    assert_eq!(
        redis_cmd(&g, broken["id"].as_str().unwrap(), key, json!(["PING"])).await.0,
        401,
        "an instance in error is not served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_survive_a_restart_and_deletion_removes_them() {
    let data = tempfile::tempdir().unwrap();
    let settings = || Settings { data_dir: data.path().to_owned(), ..Settings::default() };
    let g = Gate::start_with_data_dir(settings()).await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let (key, _) = t.key(json!({"name": "app", "scope": "read-write"})).await;
    assert_eq!(redis_cmd(&g, &t.instance, &key, json!(["SET", "durable", "yes"])).await.0, 200);
    let (org, instance, token) = (t.org.clone(), t.instance.clone(), t.api.token.clone());
    drop(t);
    g.shutdown().await;
    // While RedisGate is down, the store says so.
    let store = redisgate_store::connect(&settings().store_url()).await.unwrap();
    let rec = store.instance(instance.parse().unwrap()).await.unwrap();
    assert_eq!(rec.instance.status, redisgate_core::instance::InstanceStatus::Stopped);
    drop(store);

    let g = Gate::start_with_data_dir(settings()).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, body) = redis_cmd(&g, &instance, &key, json!(["GET", "durable"])).await;
        if s == 200 {
            assert_eq!(body, json!({"result": "yes"}), "the data came back with the instance");
            break;
        }
        assert!(Instant::now() < deadline, "instance not back after restart: {s} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let api = Api { g: &g, token };
    let inst_dir = data.path().join("instances").join(&instance);
    assert!(inst_dir.exists());
    assert_eq!(api.delete(&format!("/api/organizations/{org}/redis-instances/{instance}")).await.0, 204);
    assert!(!inst_dir.exists(), "deleting an instance removes its data");
    assert_eq!(redis_cmd(&g, &instance, &key, json!(["GET", "durable"])).await.0, 401);
    assert_eq!(api.get(&format!("/api/organizations/{org}/redis-instances/{instance}")).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_every_component() {
    let data = tempfile::tempdir().unwrap();
    let (redis, token_redis) = (Redis::start().await, Redis::start().await);
    let mut settings = Settings { data_dir: data.path().to_owned(), ..Settings::default() };
    // The check applies the deployment's egress policy to external instances, as the server
    // does: loopback is opened here as the test Gate opens it for itself, and the token's Redis
    // (one of RedisGate's own services, refused to tenants) is not the tenant's server.
    settings.instances.external.allow = vec!["127.0.0.0/8".into()];
    let g = Gate::start_with_data_dir(settings.clone()).await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let (s, ext) = t
        .api
        .post(
            &format!("/api/organizations/{}/redis-instances", t.org),
            json!({"name": "ext", "provisioner": "external", "url": redis.url()}),
        )
        .await;
    assert_eq!(s, 201, "{ext}");
    settings.tokens = vec![crate::common::token("standalone-token", &token_redis, false)];
    let lines = redisgate_server::check::run(&settings, "test").await;
    let text: Vec<String> = lines.iter().map(ToString::to_string).collect();
    assert!(lines.iter().all(|l| l.result.is_ok()), "{text:#?}");
    assert_eq!(lines.len(), 5, "config, standalone redis, store, two instances: {text:#?}");
    assert!(text.iter().any(|l| l.contains(&t.instance) && l.contains("local")), "{text:#?}");
    // A server that is down is one failing line, with the reason and no secret.
    settings.tokens = vec![redisgate_server::config::TokenConfig {
        token: "standalone-token".to_owned().into(),
        url: format!("redis://:hunter2-password@127.0.0.1:{}", crate::common::free_port()).into(),
        read_only: false,
        name: Some("down".into()),
        rate_limit: None,
    }];
    let lines = redisgate_server::check::run(&settings, "test").await;
    let failing: Vec<String> = lines.iter().filter(|l| l.result.is_err()).map(ToString::to_string).collect();
    assert_eq!(failing.len(), 1, "{failing:#?}");
    assert!(failing[0].contains("down") && failing[0].contains("connection refused"), "{failing:#?}");
    assert!(!failing[0].contains("hunter2"));
    drop(t);
    g.shutdown().await;
}

/// The same platform on PostgreSQL: only `database_url` changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_on_postgresql() {
    let db = crate::common::PgDatabase::create().await;
    let settings = Settings { database_url: Some(db.url(None).into()), ..Settings::default() };
    let g = Gate::start_unchecked(settings).await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let (key, _) = t.key(json!({"name": "app", "scope": "read-write"})).await;
    assert_eq!(redis_cmd(&g, &t.instance, &key, json!(["SET", "on", "postgres"])).await.0, 200);
    assert_eq!(redis_cmd(&g, &t.instance, &key, json!(["GET", "on"])).await.1, json!({"result": "postgres"}));
    let (s, log) = t.api.get(&format!("/api/organizations/{}/audit-logs", t.org)).await;
    assert_eq!((s, log["items"][0]["action"].as_str()), (200, Some("api_key.create")), "{log}");
    drop(t);
    g.shutdown().await;
    db.drop_now().await;
}
