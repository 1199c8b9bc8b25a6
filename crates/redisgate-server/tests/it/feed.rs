//! Replicas follow the store's change feed: what one replica creates, revokes or deletes is
//! seen by the others within a second, on PostgreSQL and on a SQLite file they share.

use std::time::{Duration, Instant};

use redisgate_server::config::Settings;
use serde_json::json;

use crate::common::{Gate, PgDatabase, Redis};
use crate::instances::{Tenant, redis_cmd};

/// Polls `b` until `instance` answers `want` to a GET with `key`, within one second.
async fn within_a_second(b: &Gate, instance: &str, key: &str, want: u16, what: &str) {
    let since = Instant::now();
    loop {
        let (s, body) = redis_cmd(b, instance, key, json!(["GET", "k"])).await;
        if s == want {
            return;
        }
        assert!(since.elapsed() < Duration::from_secs(1), "{what}: still {s} {body} after 1 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two replicas of `replica`: an external instance created through `a` is served by `b`, a
/// key revoked through `a` stops on `b`, and the instance deleted through `a` stops on `b`,
/// each within a second. `b`'s key cache is kept for an hour, so only the feed can tell it.
async fn replicas_follow(replica: impl Fn() -> Settings) {
    let redis = Redis::start().await;
    let mut on_b = replica();
    on_b.auth.key_cache_ttl = Duration::from_secs(3600);
    // Both start at once, as replicas rolled out together do (on one SQLite file, the second
    // used to fail applying a migration the first had just applied).
    let (a, b) = tokio::join!(Gate::start_unchecked(replica()), Gate::start_unchecked(on_b));
    let t = Tenant::external(&a, "ann@example.com", &redis.url()).await;
    let (key, key_id) = t.key(json!({"name": "k", "scope": "read-write"})).await;
    let (spare, _) = t.key(json!({"name": "spare", "scope": "read-write"})).await;
    let id = t.instance.as_str();
    within_a_second(&b, id, &key, 200, "the new instance is not served by the other replica").await;
    assert_eq!(redis_cmd(&b, id, &spare, json!(["GET", "k"])).await.0, 200);

    let keys = format!("/api/organizations/{}/api-keys/{key_id}", t.org);
    assert_eq!(t.api.delete(&keys).await.0, 200);
    within_a_second(&b, id, &key, 401, "the revoked key still works on the other replica").await;
    assert_eq!(redis_cmd(&b, id, &spare, json!(["GET", "k"])).await.0, 200, "the other key goes on");

    let path = format!("/api/organizations/{}/redis-instances/{id}", t.org);
    assert_eq!(t.api.delete(&path).await.0, 204);
    within_a_second(&b, id, &spare, 401, "the deleted instance is still served by the other replica").await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgres_follow_creates_revocations_and_deletes_within_a_second() {
    let db = PgDatabase::create().await;
    replicas_follow(|| db.replica()).await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_sqlite_file_follow_creates_revocations_and_deletes_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    replicas_follow(|| Settings {
        database_url: Some(url.clone().into()),
        secret_key: Some("cd".repeat(32).into()),
        ..Settings::default()
    })
    .await;
}
