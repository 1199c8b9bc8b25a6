//! Backups end to end: taken from real local and external `redis-server`s, restored into the
//! same and other instances and checked key by key (type, value, TTL ± 1 s) over every type,
//! refused across organizations, downloaded as RDB and uploaded into a new instance (a bad
//! file refused), daily backups on an injected clock, and S3 storage against moto's server.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redisgate_server::config::{Clock, Settings};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::api::Api;
use crate::common::{Gate, Redis};
use crate::instances::Tenant;

/// What a key holds, compared across instances: its type, its value in a canonical form
/// (unordered collections sorted), and its PTTL in ms (-1: none).
#[derive(Debug, Clone, PartialEq)]
struct Held {
    kind: String,
    value: String,
    pttl: i64,
    /// When `pttl` was read: TTLs are compared key by key, whatever the reads took.
    at: Instant,
}

type Dataset = BTreeMap<Vec<u8>, Held>;

/// Writes one of each type, some with TTLs, binary keys and values included.
async fn fill(c: &mut MultiplexedConnection) {
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg("s:plain")
        .arg("hello")
        .cmd("SET")
        .arg("s:ttl")
        .arg("short-lived")
        .arg("EX")
        .arg(500)
        .cmd("SET")
        .arg(&b"s:\x00\xffbinary"[..])
        .arg(&b"\x00\x01\xfe\xff"[..])
        .cmd("SET")
        .arg("s:int")
        .arg(12345)
        .cmd("HSET")
        .arg("h:user")
        .arg("name")
        .arg("ann")
        .arg("age")
        .arg("41")
        .arg("city")
        .arg("Oslo")
        .cmd("PEXPIRE")
        .arg("h:user")
        .arg(900_000)
        .cmd("RPUSH")
        .arg("l:queue")
        .arg("a")
        .arg("b")
        .arg("c")
        .arg("a")
        .cmd("SADD")
        .arg("set:tags")
        .arg("x")
        .arg("y")
        .arg("z")
        .cmd("EXPIRE")
        .arg("set:tags")
        .arg(3600)
        .cmd("ZADD")
        .arg("z:board")
        .arg(1.5)
        .arg("ann")
        .arg(-2)
        .arg("bob")
        .arg(1e9)
        .arg("cyd")
        .cmd("XADD")
        .arg("x:events")
        .arg("1-1")
        .arg("kind")
        .arg("login")
        .cmd("XADD")
        .arg("x:events")
        .arg("2-0")
        .arg("kind")
        .arg("logout")
        .arg("who")
        .arg("ann")
        .cmd("XGROUP")
        .arg("CREATE")
        .arg("x:events")
        .arg("workers")
        .arg("0")
        .cmd("EXPIRE")
        .arg("x:events")
        .arg(7200);
    for i in 0..300 {
        // Enough keys for SCAN to take several steps.
        pipe.cmd("SET").arg(format!("bulk:{i}")).arg(i);
    }
    let _: () = pipe.query_async(c).await.unwrap();
}

/// Every key of the server, key by key.
async fn dataset(c: &mut MultiplexedConnection) -> Dataset {
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query_async(c).await.unwrap();
    let mut all = Dataset::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(c).await.unwrap();
        let value = match kind.as_str() {
            "string" => format!("{:?}", redis::cmd("GET").arg(&key).query_async::<Vec<u8>>(c).await.unwrap()),
            "hash" => {
                let h: BTreeMap<Vec<u8>, Vec<u8>> =
                    redis::cmd("HGETALL").arg(&key).query_async(c).await.unwrap();
                format!("{h:?}")
            }
            "list" => {
                let l: Vec<Vec<u8>> =
                    redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query_async(c).await.unwrap();
                format!("{l:?}")
            }
            "set" => {
                let mut s: Vec<Vec<u8>> = redis::cmd("SMEMBERS").arg(&key).query_async(c).await.unwrap();
                s.sort();
                format!("{s:?}")
            }
            "zset" => {
                let z: Vec<(Vec<u8>, f64)> = redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(c)
                    .await
                    .unwrap();
                format!("{z:?}")
            }
            "stream" => {
                let entries: redis::Value =
                    redis::cmd("XRANGE").arg(&key).arg("-").arg("+").query_async(c).await.unwrap();
                let groups: redis::Value =
                    redis::cmd("XINFO").arg("GROUPS").arg(&key).query_async(c).await.unwrap();
                format!("{entries:?} {groups:?}")
            }
            other => panic!("unexpected type {other}"),
        };
        let pttl: i64 = redis::cmd("PTTL").arg(&key).query_async(c).await.unwrap();
        all.insert(key, Held { kind, value, pttl, at: Instant::now() });
    }
    all
}

/// The restored data is the backup's: the same keys, types and values, and TTLs within a
/// second of the backup's (what was left of each when it was read, less the time between its
/// two reads).
fn assert_same(restored: &Dataset, backed_up: &Dataset) {
    let keys = |d: &Dataset| d.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(restored), keys(backed_up), "the same keys");
    for (key, want) in backed_up {
        let got = &restored[key];
        assert_eq!((&got.kind, &got.value), (&want.kind, &want.value), "{key:?}");
        if want.pttl == -1 {
            assert_eq!(got.pttl, -1, "{key:?} has no TTL");
        } else {
            let expected = want.pttl - got.at.duration_since(want.at).as_millis() as i64;
            assert!(
                (got.pttl - expected).abs() <= 1000,
                "{key:?}: TTL {} ms, expected {expected} ms ± 1 s",
                got.pttl
            );
        }
    }
    assert!(backed_up.len() > 300 && backed_up.values().filter(|h| h.pttl > 0).count() == 4);
}

/// A direct connection to a local instance's server, from its redis.conf in `data_dir`.
async fn local_conn(data_dir: &Path, instance: &str) -> MultiplexedConnection {
    let url = redisgate_provision::LocalProvisioner::configured_url(
        &data_dir.join("instances"),
        instance.parse().unwrap(),
    )
    .expect("the instance's redis.conf");
    redis::Client::open(url.expose()).unwrap().get_multiplexed_async_connection().await.unwrap()
}

/// POSTs a backup and waits for it to be ready.
async fn backup_now(api: &Api<'_>, org: &str, instance: &str, name: &str) -> Value {
    let base = format!("/api/organizations/{org}/redis-instances/{instance}/backups");
    let (s, b) = api.post(&base, json!({"name": name})).await;
    assert_eq!((s, b["state"].as_str()), (202, Some("pending")), "{b}");
    wait_ready(api, &format!("{base}/{}", b["id"].as_str().unwrap())).await
}

pub async fn wait_ready(api: &Api<'_>, path: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, b) = api.get(path).await;
        assert_eq!(s, 200, "{b}");
        match b["state"].as_str() {
            Some("ready") => return b,
            Some("pending") => {}
            _ => panic!("backup did not become ready: {b}"),
        }
        assert!(Instant::now() < deadline, "backup still pending: {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Replaces part of the data, so that a restore has something to undo.
async fn scribble(c: &mut MultiplexedConnection) {
    let _: () = redis::pipe()
        .cmd("SET")
        .arg("s:plain")
        .arg("changed")
        .cmd("DEL")
        .arg("h:user")
        .arg("x:events")
        .cmd("SET")
        .arg("new:key")
        .arg("not in the backup")
        .cmd("PERSIST")
        .arg("set:tags")
        .query_async(c)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_backups_restore_key_by_key_here_and_into_another_instance_never_across_orgs() {
    let data = tempfile::tempdir().unwrap();
    let g =
        Gate::start_with_data_dir(Settings { data_dir: data.path().to_owned(), ..Settings::default() }).await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let (org, instance) = (t.org.clone(), t.instance.clone());
    let mut c = local_conn(data.path(), &instance).await;
    fill(&mut c).await;
    let backed_up = dataset(&mut c).await;
    let backup = backup_now(&t.api, &org, &instance, "before the migration").await;
    assert_eq!(
        (backup["name"].as_str(), backup["kind"].as_str()),
        (Some("before the migration"), Some("manual"))
    );
    assert!(backup["size_bytes"].as_u64().unwrap() > 1000, "{backup}");
    let backups = format!("/api/organizations/{org}/redis-instances/{instance}/backups");
    let (s, list) = t.api.get(&backups).await;
    assert_eq!((s, list.as_array().unwrap().len()), (200, 1), "{list}");
    let id = backup["id"].as_str().unwrap();
    scribble(&mut c).await;

    // Same instance: the explicit confirmation is required.
    let restore = format!("{backups}/{id}/restore");
    for body in [json!({}), json!({"confirm": false})] {
        let (s, e) = t.api.post(&restore, body).await;
        assert_eq!((s, e["code"].as_str()), (422, Some("validation_failed")), "{e}");
    }
    assert_eq!(
        dataset(&mut c).await["new:key".as_bytes()].value,
        format!("{:?}", b"not in the backup".to_vec())
    );
    let (s, r) = t.api.post(&restore, json!({"confirm": true})).await;
    assert_eq!((s, r["keys"].as_u64()), (200, Some(backed_up.len() as u64)), "{r}");
    assert_same(&dataset(&mut c).await, &backed_up);

    // Another instance of the organization.
    let (s, other) = t
        .api
        .post(&format!("/api/organizations/{org}/redis-instances"), json!({"name": "copy", "memory_mb": 16}))
        .await;
    assert_eq!(s, 201, "{other}");
    let other = other["id"].as_str().unwrap().to_owned();
    let mut oc = local_conn(data.path(), &other).await;
    let _: () = redis::cmd("SET").arg("only:here").arg("1").query_async(&mut oc).await.unwrap();
    let (s, r) = t.api.post(&restore, json!({"confirm": true, "target_instance_id": other})).await;
    assert_eq!((s, r["instance_id"].as_str()), (200, Some(other.as_str())), "{r}");
    assert_same(&dataset(&mut oc).await, &backed_up);

    // Never into another organization's instance, nor by its members.
    let b = Tenant::new(&g, "bob@example.com").await;
    let mut bc = local_conn(data.path(), &b.instance).await;
    let _: () = redis::cmd("SET").arg("bobs").arg("data").query_async(&mut bc).await.unwrap();
    let (s, e) = t.api.post(&restore, json!({"confirm": true, "target_instance_id": b.instance})).await;
    assert_eq!((s, e["code"].as_str()), (404, Some("not_found")), "{e}");
    let (s, _) = b.api.post(&restore, json!({"confirm": true, "target_instance_id": b.instance})).await;
    assert_eq!(s, 404);
    let theirs = format!("/api/organizations/{}/redis-instances/{}/backups/{id}", b.org, b.instance);
    assert_eq!(b.api.get(&theirs).await.0, 404, "a backup is found only under its own instance and org");
    assert_eq!(b.api.post(&format!("{theirs}/restore"), json!({"confirm": true})).await.0, 404);
    assert_eq!(dataset(&mut bc).await.len(), 1, "bob's instance is untouched");

    // Download: the RDB itself.
    let r = g
        .http
        .get(g.url(&format!("{backups}/{id}/download")))
        .bearer_auth(t.api.token.as_ref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    let rdb = r.bytes().await.unwrap();
    assert_eq!(rdb.len() as u64, backup["size_bytes"].as_u64().unwrap());
    assert!(rdb.starts_with(b"REDIS"), "an RDB file");

    // Upload: a new instance from that file; a file that is not an RDB is refused.
    let import = |name: &str| {
        g.url(&format!("/api/organizations/{org}/redis-instances/import?name={name}&memory_mb=16"))
    };
    let token = t.api.token.clone().unwrap();
    let (_, before) = t.api.get(&format!("/api/organizations/{org}/redis-instances")).await;
    let mut corrupt = rdb.to_vec();
    let middle = corrupt.len() / 2;
    corrupt[middle..middle + 16].fill(0xAA);
    for bad in [b"not an rdb file at all".to_vec(), corrupt, rdb[..rdb.len() / 2].to_vec()] {
        let r = g.http.post(import("bad")).bearer_auth(&token).body(bad).send().await.unwrap();
        assert_eq!(r.status(), 422);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["code"], "validation_failed", "{e}");
    }
    let (_, after) = t.api.get(&format!("/api/organizations/{org}/redis-instances")).await;
    assert_eq!(
        before.as_array().unwrap().len(),
        after.as_array().unwrap().len(),
        "no instance from a bad file"
    );
    let r = g.http.post(import("imported")).bearer_auth(&token).body(rdb.clone()).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let imported: Value = r.json().await.unwrap();
    assert_eq!(
        (imported["status"].as_str(), imported["name"].as_str()),
        (Some("running"), Some("imported")),
        "{imported}"
    );
    let mut ic = local_conn(data.path(), imported["id"].as_str().unwrap()).await;
    assert_same(&dataset(&mut ic).await, &backed_up);

    // Delete.
    assert_eq!(t.api.delete(&format!("{backups}/{id}")).await.0, 204);
    assert_eq!(t.api.get(&format!("{backups}/{id}")).await.0, 404);
    assert_eq!(t.api.post(&restore, json!({"confirm": true})).await.0, 404);
    let objects = data.path().join("backups/objects").join(&org).join(&instance);
    assert_eq!(std::fs::read_dir(&objects).unwrap().count(), 0, "the object went with its record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_backups_are_taken_key_by_key_and_restore_every_type() {
    let g = crate::api::control_plane().await;
    let redis = Redis::start().await;
    let t = Tenant::external(&g, "ann@example.com", &redis.url()).await;
    let mut c = redis.client().get_multiplexed_async_connection().await.unwrap();
    fill(&mut c).await;
    let backed_up = dataset(&mut c).await;
    let backup = backup_now(&t.api, &t.org, &t.instance, "nightly").await;
    scribble(&mut c).await;
    let restore = format!(
        "/api/organizations/{}/redis-instances/{}/backups/{}/restore",
        t.org,
        t.instance,
        backup["id"].as_str().unwrap()
    );
    let (s, r) = t.api.post(&restore, json!({"confirm": true})).await;
    assert_eq!(s, 200, "{r}");
    assert_same(&dataset(&mut c).await, &backed_up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_backups_run_on_the_clock_once_a_day_and_keep_the_retention() {
    // The scheduler's "now": a day passes when the test says so.
    let days = Arc::new(AtomicI64::new(0));
    let start = OffsetDateTime::now_utc();
    let clock = {
        let days = Arc::clone(&days);
        Clock::fixed_by(move || start + time::Duration::days(days.load(Ordering::SeqCst)))
    };
    let data = tempfile::tempdir().unwrap();
    let settings = || {
        let mut s = Settings { data_dir: data.path().to_owned(), ..Settings::default() };
        s.backups.clock = clock.clone();
        s.backups.scheduler_interval = Duration::from_millis(50);
        s.backups.max_upload_mb = 1;
        s
    };
    let g = Gate::start_with_data_dir(settings()).await;
    let t = Tenant::new(&g, "ann@example.com").await;
    // (An upload over `backups.max_upload_mb` is refused before it is checked.)
    let import = g.url(&format!("/api/organizations/{}/redis-instances/import?name=big", t.org));
    let r = g
        .http
        .post(import)
        .bearer_auth(t.api.token.as_ref().unwrap())
        .body(vec![0u8; 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("max_upload_mb"));
    let schedule = format!("/api/organizations/{}/redis-instances/{}/backup-schedule", t.org, t.instance);
    let backups = format!("/api/organizations/{}/redis-instances/{}/backups", t.org, t.instance);
    for bad in [0, 31] {
        let (s, e) = t.api.put(&schedule, json!({"retention_days": bad})).await;
        assert_eq!((s, e["code"].as_str()), (422, Some("validation_failed")), "{e}");
    }
    assert_eq!(t.api.get(&schedule).await.1, json!({"daily": null}));
    let (s, set) = t.api.put(&schedule, json!({"retention_days": 2})).await;
    assert_eq!((s, set["daily"]["retention_days"].as_u64()), (200, Some(2)), "{set}");

    // The first run is due at once; each later one a day after the previous.
    let first = wait_for(&t.api, &backups, start, 1).await;
    assert_eq!(first.len(), 1, "{first:?}");
    // Taken once for the day: the schedule moved on a day, and no second backup comes.
    let (_, s) = t.api.get(&schedule).await;
    let next = OffsetDateTime::parse(
        s["daily"]["next_run_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(next > start + time::Duration::hours(23), "{s}");

    // A restart keeps the schedule (it is in the store) and does not run it again early.
    drop(t);
    g.shutdown().await;
    let g = Gate::start_with_data_dir(settings()).await;
    let api = Api::anon(&g);
    let login = api
        .post("/auth/login", json!({"email": "ann@example.com", "password": "correct horse battery"}))
        .await
        .1;
    let api = Api { g: &g, token: login["token"].as_str().map(str::to_owned) };
    let t = Tenant {
        api,
        org: backups.split('/').nth(3).unwrap().to_owned(),
        instance: backups.split('/').nth(5).unwrap().to_owned(),
    };
    wait_running(&t).await;
    assert_eq!(t.api.get(&schedule).await.1["daily"]["retention_days"], 2);

    days.store(1, Ordering::SeqCst);
    assert_eq!(wait_for(&t.api, &backups, start, 2).await.len(), 2);
    days.store(2, Ordering::SeqCst);
    wait_for(&t.api, &backups, start, 3).await;
    // Retention 2: the first day's backup goes once the third is taken (right after it, so
    // the list may show all three for a moment).
    let first = format!("daily-{}", start.date());
    let deadline = Instant::now() + Duration::from_secs(20);
    let kept = loop {
        let list = dailies(&t.api, &backups).await;
        if !list.iter().any(|b| b["name"].as_str() == Some(first.as_str())) {
            break list;
        }
        assert!(Instant::now() < deadline, "retention never removed the first day's backup: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(kept.len(), 2, "{kept:?}");

    // Off: no more daily backups; those taken stay.
    assert_eq!(t.api.delete(&schedule).await.0, 204);
    assert_eq!(t.api.get(&schedule).await.1, json!({"daily": null}));
}

async fn wait_running(t: &Tenant<'_>) {
    let path = format!("/api/organizations/{}/redis-instances/{}", t.org, t.instance);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, i) = t.api.get(&path).await;
        if i["status"] == "running" {
            return;
        }
        assert!(Instant::now() < deadline, "instance not back: {i}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn dailies(api: &Api<'_>, backups: &str) -> Vec<Value> {
    let (_, list) = api.get(backups).await;
    list.as_array().unwrap().iter().filter(|b| b["kind"] == "daily").cloned().collect()
}

/// Waits until the daily backup of run `runs` (1: the first day's) is there and every daily
/// backup is ready.
async fn wait_for(api: &Api<'_>, backups: &str, start: OffsetDateTime, runs: i64) -> Vec<Value> {
    let expect = format!("daily-{}", (start + time::Duration::days(runs - 1)).date());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = dailies(api, backups).await;
        let named = list.iter().any(|b| b["name"].as_str() == Some(expect.as_str()));
        if named && list.iter().all(|b| b["state"] == "ready") {
            return list;
        }
        assert!(Instant::now() < deadline, "run {runs} never came: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// moto's S3 server on a free loopback port, stopped when dropped.
struct Moto {
    _child: crate::common::KillOnDrop,
    url: String,
}

impl Moto {
    async fn start() -> Moto {
        let port = crate::common::free_port();
        let child = std::process::Command::new(crate::python_sdk::python())
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto's server (pip install 'moto[server]', see tests/python/requirements.txt)");
        let moto = Moto { _child: crate::common::KillOnDrop(child), url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(30);
        while reqwest::get(&moto.url).await.is_err() {
            assert!(Instant::now() < deadline, "moto's server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        moto
    }

    /// The keys in `bucket` (moto lists without checking signatures).
    async fn keys(&self, bucket: &str) -> String {
        reqwest::get(format!("{}/{bucket}?list-type=2", self.url)).await.unwrap().text().await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_in_s3_compatible_storage() {
    let moto = Moto::start().await;
    let bucket = "redisgate-backups";
    let made = reqwest::Client::new().put(format!("{}/{bucket}", moto.url)).send().await.unwrap();
    assert!(made.status().is_success(), "{made:?}");
    let data = tempfile::tempdir().unwrap();
    let mut settings = Settings { data_dir: data.path().to_owned(), ..Settings::default() };
    settings.backups.s3 = Some(redisgate_server::config::S3Settings {
        endpoint: Some(moto.url.clone()),
        bucket: bucket.into(),
        region: "us-east-1".into(),
        access_key_id: "testing".into(),
        secret_access_key: "testing".to_owned().into(),
    });
    let g = Gate::start_with_data_dir(settings).await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let mut c = local_conn(data.path(), &t.instance).await;
    fill(&mut c).await;
    let backed_up = dataset(&mut c).await;
    let backup = backup_now(&t.api, &t.org, &t.instance, "to s3").await;
    let id = backup["id"].as_str().unwrap();
    let key = format!("{}/{}/{id}.rdb", t.org, t.instance);
    let listing = moto.keys(bucket).await;
    assert!(listing.contains(&key), "{listing}");
    assert!(listing.contains(&format!("<Size>{}</Size>", backup["size_bytes"])), "{listing}");
    assert!(!data.path().join("backups/objects").exists(), "nothing stored locally");

    scribble(&mut c).await;
    let path = format!("/api/organizations/{}/redis-instances/{}/backups/{id}", t.org, t.instance);
    let (s, r) = t.api.post(&format!("{path}/restore"), json!({"confirm": true})).await;
    assert_eq!(s, 200, "{r}");
    assert_same(&dataset(&mut c).await, &backed_up);
    let r = g
        .http
        .get(g.url(&format!("{path}/download")))
        .bearer_auth(t.api.token.as_ref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len() as u64, backup["size_bytes"].as_u64().unwrap());

    assert_eq!(t.api.delete(&path).await.0, 204);
    assert!(!moto.keys(bucket).await.contains(&key), "deleted from the bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_take_each_daily_backup_once() {
    let db = crate::common::PgDatabase::create().await;
    let redis = Redis::start().await;
    let days = Arc::new(AtomicI64::new(0));
    let start = OffsetDateTime::now_utc();
    let replica = || {
        let days = Arc::clone(&days);
        let mut s = db.replica();
        s.backups.clock = Clock::fixed_by(move || start + time::Duration::days(days.load(Ordering::SeqCst)));
        s.backups.scheduler_interval = Duration::from_millis(10);
        s
    };
    let a = Gate::start_unchecked(replica()).await;
    let b = Gate::start_unchecked(replica()).await;
    // An external instance: both replicas serve it, so both schedulers may take its backups.
    let t = Tenant::external(&a, "ann@example.com", &redis.url()).await;
    let _: () = redis.cmd(&["SET", "k", "v"]).await;
    let backups = format!("/api/organizations/{}/redis-instances/{}/backups", t.org, t.instance);
    let on_b = Api { g: &b, token: t.api.token.clone() };
    let deadline = Instant::now() + Duration::from_secs(10);
    while on_b.get(&format!("/api/organizations/{}/redis-instances/{}", t.org, t.instance)).await.1["health"]
        != "healthy"
    {
        assert!(Instant::now() < deadline, "the other replica never served the instance");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let schedule = format!("/api/organizations/{}/redis-instances/{}/backup-schedule", t.org, t.instance);
    assert_eq!(t.api.put(&schedule, json!({"retention_days": 30})).await.0, 200);
    for day in 0..4 {
        days.store(day, Ordering::SeqCst);
        let list = wait_for(&t.api, &backups, start, day + 1).await;
        let mut names: Vec<&str> = list.iter().filter_map(|b| b["name"].as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(
            (list.len(), names.len()),
            (day as usize + 1, day as usize + 1),
            "one backup a day: {list:?}"
        );
    }
    drop(on_b);
    drop(t);
    a.shutdown().await;
    b.shutdown().await;
    db.drop_now().await;
}
