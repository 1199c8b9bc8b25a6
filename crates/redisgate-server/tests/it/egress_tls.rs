//! The egress policy of `rediss://` external instances' SSE streams (SUBSCRIBE, PSUBSCRIBE,
//! MONITOR): each stream's connection goes to the very address the policy just checked, over
//! TLS verified for the URL's host name, and never to whatever the name resolves to a moment
//! later (DNS rebinding).
//!
//! Real `redis-server`s with TLS on loopback and a throw-away self-signed certificate, so the
//! URLs say `#insecure` where a stream must get through.

use std::time::Duration;

use redis::RedisFuture;
use redis::io::AsyncDNSResolver;
use redisgate_provision::SharedResolver;
use redisgate_server::config::Settings;
use serde_json::json;

use crate::api::Api;
use crate::common::{Gate, TlsRedis};
use crate::egress::{adjustable_egress, assert_streams_refused, checked_backend, stop};

/// A rebinding DNS server as the policy sees it: whatever is asked, it answers `checked`,
/// an address the policy admits. The system resolver still answers the name's real address,
/// so a connection that resolves the name again lands there instead.
struct Rebinding {
    checked: std::net::SocketAddr,
}

impl AsyncDNSResolver for Rebinding {
    fn resolve<'a, 'b: 'a>(
        &'a self,
        _host: &'b str,
        _port: u16,
    ) -> RedisFuture<'a, Box<dyn Iterator<Item = std::net::SocketAddr> + Send + 'a>> {
        Box::pin(
            async move { Ok(Box::new(std::iter::once(self.checked)) as Box<dyn Iterator<Item = _> + Send>) },
        )
    }
}

/// The name in the URL points at `victim`, but the policy's answer was `tenant`: the stream
/// connections must go to `tenant`, the address that was checked, and the victim must see none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_streams_dial_the_address_that_was_checked() {
    let (tenant, victim) = (TlsRedis::start().await, TlsRedis::start().await);
    let rebinding = SharedResolver::new(Rebinding { checked: ([127, 0, 0, 1], tenant.port).into() });
    let url = format!("rediss://localhost:{}/#insecure", victim.port);
    let (backend, tracker, cancel) = checked_backend(&url, rebinding);
    let before = victim.connections().await;

    let (mut pubsub, _guard) = backend.pubsub().await.expect("a pub/sub connection to the checked address");
    pubsub.subscribe("news").await.unwrap();
    tenant.wait_client("subscribe").await;
    let (monitor, _mguard) = backend.monitor().await.expect("a monitor connection to the checked address");
    tenant.wait_client("monitor").await;
    assert_eq!(victim.connections().await, before + 1, "the victim got no connection from RedisGate");
    drop((pubsub, monitor));
    stop(tracker, cancel).await;
}

/// `every_reconnect_is_checked_again` of `egress.rs`, over TLS: once the allowed port is one
/// of RedisGate's own, stream connections are refused before anything is dialled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_streams_are_checked_at_every_connect() {
    let redis = TlsRedis::start().await;
    let (egress, own) = adjustable_egress().await;
    let url = format!("rediss://localhost:{}/#insecure", redis.port);
    let (backend, tracker, cancel) = checked_backend(&url, egress.resolver());
    // The shared connection is up (it stays up: only new connections are checked).
    assert!(backend.run(&redis::cmd("PING")).await.is_ok());
    drop(backend.pubsub().await.expect("an allowed TLS pub/sub connection"));
    drop(backend.monitor().await.expect("an allowed TLS monitor connection"));

    own.lock().unwrap().push(redis.port);
    let before = redis.connections().await;
    assert_streams_refused(&backend, "stream connections are refused").await;
    assert_eq!(redis.connections().await, before + 1, "no connection from RedisGate since the change");
    stop(tracker, cancel).await;
}

/// Without `#insecure` the certificate is verified: a self-signed one is refused, and the
/// stream is not opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_streams_verify_the_certificate() {
    let redis = TlsRedis::start().await;
    let checked = SharedResolver::new(Rebinding { checked: ([127, 0, 0, 1], redis.port).into() });
    let (backend, tracker, cancel) = checked_backend(&format!("rediss://localhost:{}", redis.port), checked);
    assert_streams_refused(&backend, "an unverifiable certificate is refused").await;
    stop(tracker, cancel).await;
}

/// The connections we dial ourselves set the session up as the URL says: its password, its
/// database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_streams_authenticate_and_select_as_the_url_says() {
    let redis = TlsRedis::start_with(Some("s3cret")).await;
    let checked = || SharedResolver::new(Rebinding { checked: ([127, 0, 0, 1], redis.port).into() });
    let url = format!("rediss://:s3cret@localhost:{}/3#insecure", redis.port);
    let (backend, tracker, cancel) = checked_backend(&url, checked());
    let (mut monitor, _m) = backend.monitor().await.expect("MONITOR with the URL's password");
    redis.wait_client("monitor").await;
    let clients: String = redis.cmd(&["CLIENT", "LIST"]).await;
    let line = clients.lines().find(|l| l.contains("cmd=monitor")).unwrap();
    assert!(line.contains(" db=3 "), "the monitor selected the URL's database: {line}");
    let (mut pubsub, _p) = backend.pubsub().await.expect("pub/sub with the URL's password");
    pubsub.subscribe("db-check").await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        use futures_util::StreamExt;
        while let Some(redis::Value::BulkString(l)) = monitor.next().await {
            let l = String::from_utf8_lossy(&l).into_owned();
            if l.contains("\"SUBSCRIBE\" \"db-check\"") {
                return l;
            }
        }
        panic!("the monitor stream ended");
    })
    .await
    .expect("the monitor saw the subscription");
    assert!(seen.contains(" [3 127.0.0.1:"), "the pub/sub connection selected database 3: {seen}");
    stop(tracker, cancel).await;

    let wrong = format!("rediss://:wrong@localhost:{}/3#insecure", redis.port);
    let (backend, tracker, cancel) = checked_backend(&wrong, checked());
    assert_streams_refused(&backend, "a wrong password is refused").await;
    stop(tracker, cancel).await;
}

/// The whole path: a tenant's `rediss://` instance streams SUBSCRIBE and MONITOR over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_of_a_rediss_instance_work() {
    let redis = TlsRedis::start().await;
    let g = Gate::start_unchecked(Settings::default()).await;
    let (api, _) = Api::signup(&g, "ann@example.com").await;
    let (_, org) = api.post("/api/organizations", json!({"name": "Acme"})).await;
    let instances = format!("/api/organizations/{}/redis-instances", org["id"].as_str().unwrap());
    let url = format!("rediss://localhost:{}/#insecure", redis.port);
    let (s, inst) = api.post(&instances, json!({"name": "tls", "provisioner": "external", "url": url})).await;
    assert_eq!((s, inst["status"].as_str()), (201, Some("running")), "{inst}");
    let id = inst["id"].as_str().unwrap();
    let (_, k) = api
        .post(&instances.replace("redis-instances", "api-keys"), json!({"name": "k", "scope": "admin"}))
        .await;
    let key = k["key"].as_str().unwrap();

    let mut sub =
        g.http.get(g.url(&format!("/redis/{id}/subscribe/news"))).bearer_auth(key).send().await.unwrap();
    assert_eq!(sub.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(5), sub.chunk()).await.unwrap().unwrap().unwrap();
    assert_eq!(&first[..], b"data: subscribe,news,1\n\n");
    redis.wait_client("subscribe").await;
    let _: i64 = redis.cmd(&["PUBLISH", "news", "over tls"]).await;
    let next = tokio::time::timeout(Duration::from_secs(5), sub.chunk()).await.unwrap().unwrap().unwrap();
    assert_eq!(&next[..], b"data: message,news,over tls\n\n");

    let mut mon = g.http.get(g.url(&format!("/redis/{id}/monitor"))).bearer_auth(key).send().await.unwrap();
    assert_eq!(mon.status(), 200);
    let ok = tokio::time::timeout(Duration::from_secs(5), mon.chunk()).await.unwrap().unwrap().unwrap();
    assert_eq!(&ok[..], b"data: \"OK\"\n\n");
    redis.wait_client("monitor").await;
    let _: String = redis.cmd(&["ECHO", "seen"]).await;
    let line = tokio::time::timeout(Duration::from_secs(5), mon.chunk()).await.unwrap().unwrap().unwrap();
    assert!(String::from_utf8_lossy(&line).contains("\"ECHO\" \"seen\""), "{line:?}");
}
