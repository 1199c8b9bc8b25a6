//! An instance's own REST tokens (standard and read-only, as Upstash's), its connect page, a
//! credential reset under a running client, and its configuration (rename, resize, eviction),
//! against real redis-servers.

use std::path::Path;
use std::time::{Duration, Instant};

use redisgate_server::config::Settings;
use serde_json::{Value, json};

use crate::api::{Api, control_plane};
use crate::common::{Gate, Redis};
use crate::instances::{Tenant, redis_cmd};

fn instance_path(t: &Tenant<'_>) -> String {
    format!("/api/organizations/{}/redis-instances/{}", t.org, t.instance)
}

async fn connect(t: &Tenant<'_>) -> Value {
    let (s, c) = t.api.get(&format!("{}/connect", instance_path(t))).await;
    assert_eq!(s, 200, "{c}");
    c
}

fn tokens(c: &Value) -> (String, String) {
    (c["rest_token"].as_str().unwrap().to_owned(), c["read_only_rest_token"].as_str().unwrap().to_owned())
}

/// The port and password of a local instance's server, from the `redis.conf` RedisGate wrote.
fn local_server(data_dir: &Path, instance: &str) -> (u16, String) {
    let conf = std::fs::read_to_string(data_dir.join("instances").join(instance).join("redis.conf")).unwrap();
    let value = |name: &str| {
        conf.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')).unwrap().trim().to_owned()
    };
    (value("port").parse().unwrap(), value("requirepass"))
}

async fn direct<T: redis::FromRedisValue>(port: u16, password: &str, args: &[&str]) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://:{password}@127.0.0.1:{port}"))?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd(args[0]).arg(&args[1..]).query_async(&mut conn).await
}

/// A local instance's live setting, asked of its server directly.
async fn config_get(data_dir: &Path, instance: &str, name: &str) -> String {
    let (port, password) = local_server(data_dir, instance);
    direct::<Vec<String>>(port, &password, &["CONFIG", "GET", name]).await.unwrap().swap_remove(1)
}

async fn audited(t: &Tenant<'_>, action: &str) -> bool {
    let (s, logs) = t.api.get(&format!("/api/organizations/{}/audit-logs", t.org)).await;
    assert_eq!(s, 200, "{logs}");
    logs.to_string().contains(&format!("\"{action}\""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_has_a_standard_and_a_read_only_token() {
    let g = control_plane().await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let c = connect(&t).await;
    let rest_url = g.url(&format!("/redis/{}", t.instance));
    assert_eq!(c["rest_url"], rest_url.as_str(), "{c}");
    let (rw, ro) = tokens(&c);
    assert_ne!(rw, ro);
    assert!(c["env"].as_str().unwrap().contains(&format!("UPSTASH_REDIS_REST_URL=\"{rest_url}\"")), "{c}");
    assert!(c["env"].as_str().unwrap().contains(&format!("UPSTASH_REDIS_REST_TOKEN=\"{rw}\"")), "{c}");
    for snippet in ["curl", "typescript", "python"] {
        assert!(c[snippet].as_str().unwrap().contains(&rw), "{snippet}: {c}");
    }
    // The same tokens each time: they are the instance's, not minted per view.
    assert_eq!(tokens(&connect(&t).await), (rw.clone(), ro.clone()));

    assert_eq!(
        redis_cmd(&g, &t.instance, &rw, json!(["SET", "k", "v"])).await,
        (200, json!({"result": "OK"}))
    );
    assert_eq!(redis_cmd(&g, &t.instance, &ro, json!(["GET", "k"])).await, (200, json!({"result": "v"})));
    let (s, body) = redis_cmd(&g, &t.instance, &ro, json!(["SET", "k", "w"])).await;
    assert_eq!(s, 400, "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("NOPERM"), "{body}");
    // Upstash's path form and `_token` work with them as with any key.
    let r = g.http.get(format!("{rest_url}/get/k?_token={ro}")).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"result": "v"}));

    // They are not API keys to manage: not listed, not revocable there, not in the key quota.
    let keys = format!("/api/organizations/{}/api-keys", t.org);
    assert_eq!(t.api.get(&keys).await, (200, json!([])));
    let token_id = rw.split('_').nth(1).unwrap();
    assert_eq!(t.api.delete(&format!("{keys}/{token_id}")).await.0, 404);
    for i in 0..10 {
        t.key(json!({"name": format!("k{i}"), "scope": "read-only"})).await;
    }
    // Another instance of the organization is not theirs to reach.
    let (s, other) = t
        .api
        .post(&format!("/api/organizations/{}/redis-instances", t.org), json!({"name": "b", "memory_mb": 8}))
        .await;
    assert_eq!(s, 201, "{other}");
    let other = other["id"].as_str().unwrap();
    assert_eq!(redis_cmd(&g, other, &rw, json!(["GET", "k"])).await.0, 401);
    // Deleted with their instance.
    assert_eq!(t.api.delete(&instance_path(&t)).await.0, 204);
    assert_eq!(redis_cmd(&g, &t.instance, &rw, json!(["GET", "k"])).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_reset_under_a_running_client_loses_nothing() {
    let data = tempfile::tempdir().unwrap();
    let settings = Settings { data_dir: data.path().to_owned(), ..Settings::default() };
    let g = Gate::start_with_data_dir(settings).await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let (old_rw, old_ro) = tokens(&connect(&t).await);
    let (port, old_password) = local_server(data.path(), &t.instance);
    // A client on an API key (which a reset leaves alone) writes a counter throughout.
    let (key, _) = t.key(json!({"name": "app", "scope": "read-write"})).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (http, url, key, stop) =
            (g.http.clone(), g.url(&format!("/redis/{}", t.instance)), key.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut acked, mut failed) = (0u64, Vec::new());
            while !stop.is_cancelled() {
                let r = http.post(&url).bearer_auth(&key).body(r#"["INCR","n"]"#).send().await.unwrap();
                match r.status().as_u16() {
                    200 => acked += 1,
                    s => failed.push(format!("{s} {}", r.text().await.unwrap())),
                }
            }
            (acked, failed)
        })
    };
    let until_acked = Instant::now() + Duration::from_secs(10);
    while redis_cmd(&g, &t.instance, &key, json!(["GET", "n"])).await.1["result"].is_null() {
        assert!(Instant::now() < until_acked, "the writer never got going");
    }

    let (s, reset) = t.api.post(&format!("{}/reset-credentials", instance_path(&t)), json!(null)).await;
    assert_eq!(s, 200, "{reset}");
    let reset_at = Instant::now();
    let (new_rw, new_ro) = tokens(&reset);
    assert!(new_rw != old_rw && new_ro != old_ro);
    assert_eq!(tokens(&connect(&t).await), (new_rw.clone(), new_ro.clone()));
    for old in [&old_rw, &old_ro] {
        loop {
            let (s, body) = redis_cmd(&g, &t.instance, old, json!(["GET", "n"])).await;
            if s == 401 {
                break;
            }
            assert_eq!(s, 200, "{body}");
            assert!(reset_at.elapsed() < Duration::from_secs(1), "an old token still works");
        }
    }
    assert_eq!(redis_cmd(&g, &t.instance, &new_ro, json!(["GET", "n"])).await.0, 200);

    // The server's password changed, live: the old one is refused, the new one is in its conf.
    let (same_port, new_password) = local_server(data.path(), &t.instance);
    assert_eq!(same_port, port);
    assert_ne!(new_password, old_password);
    let refused = direct::<String>(port, &old_password, &["PING"]).await.unwrap_err();
    assert_eq!(refused.kind(), redis::ErrorKind::AuthenticationFailed, "{refused}");
    assert_eq!(direct::<String>(port, &new_password, &["PING"]).await.unwrap(), "PONG");

    stop.cancel();
    let (acked, failed) = writer.await.unwrap();
    assert!(failed.is_empty(), "the client saw errors during the reset: {failed:?}");
    let (_, n) = redis_cmd(&g, &t.instance, &new_rw, json!(["GET", "n"])).await;
    assert_eq!(n["result"], acked.to_string(), "acknowledged writes: {acked}");

    // A restart of the server (here: it exits) comes back with the new password, and the
    // gateway's reconnect uses it.
    let _ = direct::<()>(port, &new_password, &["SHUTDOWN"]).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, body) = redis_cmd(&g, &t.instance, &new_rw, json!(["GET", "n"])).await;
        if s == 200 {
            assert_eq!(body["result"], acked.to_string());
            break;
        }
        assert!(Instant::now() < deadline, "never served again after the restart: {s} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(audited(&t, "instance.reset_credentials").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_tokens_stop_on_every_replica_within_a_second() {
    let db = crate::common::PgDatabase::create().await;
    let redis = Redis::start().await;
    let a = Gate::start_unchecked(db.replica()).await;
    let b = Gate::start_unchecked(db.replica()).await;
    let t = Tenant::external(&a, "ann@example.com", &redis.url()).await;
    let (old, _) = tokens(&connect(&t).await);
    let id = t.instance.as_str();
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis_cmd(&b, id, &old, json!(["PING"])).await.0 != 200 {
        assert!(Instant::now() < deadline, "never served by the other replica");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, reset) = t.api.post(&format!("{}/reset-credentials", instance_path(&t)), json!(null)).await;
    assert_eq!(s, 200, "{reset}");
    let reset_at = Instant::now();
    while redis_cmd(&b, id, &old, json!(["PING"])).await.0 != 401 {
        assert!(
            reset_at.elapsed() < Duration::from_secs(1),
            "the old token still works on the other replica"
        );
    }
    let (new, _) = tokens(&reset);
    assert_eq!(redis_cmd(&b, id, &new, json!(["PING"])).await, (200, json!({"result": "PONG"})));
    a.shutdown().await;
    b.shutdown().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_resize_and_eviction_apply_live_and_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let settings = || Settings { data_dir: data.path().to_owned(), ..Settings::default() };
    let g = Gate::start_with_data_dir(settings()).await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let path = instance_path(&t);
    let (s, inst) = t.api.get(&path).await;
    assert_eq!((s, &inst["eviction_policy"]), (200, &json!("noeviction")), "{inst}");

    let (s, inst) = t.api.patch(&path, json!({"name": "sessions"})).await;
    assert_eq!((s, &inst["name"]), (200, &json!("sessions")), "{inst}");
    let (s, inst) = t.api.patch(&path, json!({"memory_mb": 32, "eviction_policy": "allkeys-lru"})).await;
    assert_eq!(s, 200, "{inst}");
    assert_eq!((&inst["memory_bytes"], &inst["eviction_policy"]), (&json!(32 << 20), &json!("allkeys-lru")));
    assert_eq!(config_get(data.path(), &t.instance, "maxmemory").await, (32u64 << 20).to_string());
    assert_eq!(config_get(data.path(), &t.instance, "maxmemory-policy").await, "allkeys-lru");

    // Refused changes change nothing: over the memory quota (256 MiB on the free plan), a
    // policy Redis does not have, a size of 0.
    let (s, body) = t.api.patch(&path, json!({"memory_mb": 300, "name": "never"})).await;
    assert_eq!((s, &body["code"]), (403, &json!("quota_exceeded")), "{body}");
    for bad in [json!({"eviction_policy": "lru"}), json!({"memory_mb": 0}), json!({"name": ""})] {
        let (s, body) = t.api.patch(&path, bad.clone()).await;
        assert_eq!(s, 422, "{bad}: {body}");
        assert!(body["error"].is_string());
    }
    let (_, inst) = t.api.get(&path).await;
    assert_eq!((&inst["name"], &inst["memory_bytes"]), (&json!("sessions"), &json!(32 << 20)));
    assert_eq!(config_get(data.path(), &t.instance, "maxmemory").await, (32u64 << 20).to_string());
    assert!(audited(&t, "instance.update").await);

    // Stored: a restart of RedisGate renders them into the server's configuration.
    let (session, instance) = (t.api.token.clone(), t.instance.clone());
    drop(t);
    g.shutdown().await;
    let g = Gate::start_with_data_dir(settings()).await;
    let api = Api { g: &g, token: session };
    let deadline = Instant::now() + Duration::from_secs(15);
    while api.get(&path).await.1["health"] != "healthy" {
        assert!(Instant::now() < deadline, "not back after the restart");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(config_get(data.path(), &instance, "maxmemory").await, (32u64 << 20).to_string());
    assert_eq!(config_get(data.path(), &instance, "maxmemory-policy").await, "allkeys-lru");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_server_keeps_its_own_memory_settings() {
    let g = control_plane().await;
    let redis = Redis::start().await;
    let t = Tenant::external(&g, "ann@example.com", &redis.url()).await;
    let path = instance_path(&t);
    for change in [json!({"memory_mb": 8}), json!({"eviction_policy": "allkeys-lfu"})] {
        let (s, body) = t.api.patch(&path, change.clone()).await;
        assert_eq!(s, 422, "{change}: {body}");
    }
    let (s, inst) = t.api.patch(&path, json!({"name": "theirs"})).await;
    assert_eq!((s, &inst["name"]), (200, &json!("theirs")), "{inst}");
    assert_eq!(redis.cmd::<Vec<String>>(&["CONFIG", "GET", "maxmemory-policy"]).await[1], "noeviction");
}
