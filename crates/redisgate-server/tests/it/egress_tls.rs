//! The egress policy of `rediss://` external instances' SSE streams (SUBSCRIBE, PSUBSCRIBE,
//! MONITOR): each stream's connection goes to the very address the policy just checked, over
//! TLS verified for the URL's host name, and never to whatever the name resolves to a moment
//! later (DNS rebinding).
//!
//! Real `redis-server`s with TLS on loopback and a certificate from a throw-away CA, which the
//! backends are given as the instance's own (`tls_ca_pem`). Also the rule on `#insecure`: refused
//! at creation and at start unless `instances.external.allow_insecure_tls`.

use std::time::Duration;

use redis::RedisFuture;
use redis::io::AsyncDNSResolver;
use redisgate_provision::SharedResolver;
use redisgate_server::config::Settings;
use serde_json::json;

use crate::api::Api;
use crate::common::{Gate, TlsRedis};
use crate::egress::{
    adjustable_egress, assert_streams_refused, checked_backend, checked_backend_verified, stop,
};

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
    // One CA for both, so a connection to the victim would verify too: only the address
    // tells them apart.
    let url = format!("rediss://localhost:{}", victim.port);
    let (backend, tracker, cancel) =
        checked_backend_verified(&url, Some(&format!("{}{}", tenant.ca_pem, victim.ca_pem)), rebinding);
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
    let url = format!("rediss://localhost:{}", redis.port);
    let (backend, tracker, cancel) = checked_backend_verified(&url, Some(&redis.ca_pem), egress.resolver());
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

/// The certificate is verified: against the platform's roots (which do not know the test CA)
/// or another instance's CA it is refused, and the stream is not opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_streams_verify_the_certificate() {
    let (redis, other) = (TlsRedis::start().await, TlsRedis::start().await);
    let checked = || SharedResolver::new(Rebinding { checked: ([127, 0, 0, 1], redis.port).into() });
    let url = format!("rediss://localhost:{}", redis.port);
    let (backend, tracker, cancel) = checked_backend(&url, checked());
    assert_streams_refused(&backend, "an unverifiable certificate is refused").await;
    stop(tracker, cancel).await;
    let (backend, tracker, cancel) = checked_backend_verified(&url, Some(&other.ca_pem), checked());
    assert_streams_refused(&backend, "another CA's certificate is refused").await;
    stop(tracker, cancel).await;
}

/// The connections we dial ourselves set the session up as the URL says: its password, its
/// database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_streams_authenticate_and_select_as_the_url_says() {
    let redis = TlsRedis::start_with(Some("s3cret")).await;
    let checked = || SharedResolver::new(Rebinding { checked: ([127, 0, 0, 1], redis.port).into() });
    let url = format!("rediss://:s3cret@localhost:{}/3", redis.port);
    let (backend, tracker, cancel) = checked_backend_verified(&url, Some(&redis.ca_pem), checked());
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

    let wrong = format!("rediss://:wrong@localhost:{}/3", redis.port);
    let (backend, tracker, cancel) = checked_backend_verified(&wrong, Some(&redis.ca_pem), checked());
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
    let url = format!("rediss://localhost:{}", redis.port);
    let new = json!({"name": "tls", "provisioner": "external", "url": url, "tls_ca_pem": redis.ca_pem});
    let (s, inst) = api.post(&instances, new).await;
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
    // (The gateway's own checks of the idle instance may show up first.)
    loop {
        let line = tokio::time::timeout(Duration::from_secs(5), mon.chunk()).await.unwrap().unwrap().unwrap();
        let line = String::from_utf8_lossy(&line);
        if line.contains("\"ECHO\" \"seen\"") {
            break;
        }
        assert!(
            line.contains("\"PING\"") || line.contains("\"AUTH\"") || line.contains("\"CLIENT\""),
            "{line:?}"
        );
    }
}

/// An organization's instances endpoint on `g`, with a signed-up user's API session.
async fn tenant(g: &Gate) -> (Api<'_>, String) {
    let (api, _) = Api::signup(g, "ann@example.com").await;
    let (_, org) = api.post("/api/organizations", json!({"name": "Acme"})).await;
    (api, format!("/api/organizations/{}/redis-instances", org["id"].as_str().unwrap()))
}

/// By default `#insecure` is refused at creation (a JSON 422 on `url`), and so is a CA that is
/// not one; with the instance's CA the server is verified and used, without it (the platform's
/// roots) the instance does not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_instances_are_verified() {
    let redis = TlsRedis::start().await;
    let g = Gate::start_unchecked(Settings::default()).await;
    let (api, instances) = tenant(&g).await;
    let url = format!("rediss://localhost:{}", redis.port);
    let create = |body: serde_json::Value| api.post(&instances, body);

    let (s, e) =
        create(json!({"name": "x", "provisioner": "external", "url": format!("{url}/#insecure")})).await;
    assert_eq!((s, e["field"].as_str()), (422, Some("url")), "{e}");
    assert!(e["error"].as_str().unwrap().contains("#insecure"), "{e}");
    for bad in ["", "not pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"] {
        let (s, e) =
            create(json!({"name": "x", "provisioner": "external", "url": url, "tls_ca_pem": bad})).await;
        assert_eq!((s, e["field"].as_str()), (422, Some("tls_ca_pem")), "{bad:?}: {e}");
    }
    let plain = format!("redis://localhost:{}", redis.port);
    let (s, _) =
        create(json!({"name": "x", "provisioner": "external", "url": plain, "tls_ca_pem": redis.ca_pem}))
            .await;
    assert_eq!(s, 422, "a CA without TLS");

    let (s, unverified) = create(json!({"name": "roots", "provisioner": "external", "url": url})).await;
    assert_eq!((s, unverified["status"].as_str()), (201, Some("error")), "{unverified}");

    let (s, inst) =
        create(json!({"name": "ca", "provisioner": "external", "url": url, "tls_ca_pem": redis.ca_pem}))
            .await;
    assert_eq!((s, inst["status"].as_str()), (201, Some("running")), "{inst}");
    let (_, k) = api
        .post(&instances.replace("redis-instances", "api-keys"), json!({"name": "k", "scope": "admin"}))
        .await;
    let id = inst["id"].as_str().unwrap();
    let r = g
        .http
        .post(g.url(&format!("/redis/{id}")))
        .bearer_auth(k["key"].as_str().unwrap())
        .body(r#"["SET","verified","yes"]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(redis.cmd::<String>(&["GET", "verified"]).await, "yes");
}

/// `instances.external.allow_insecure_tls = true` admits `#insecure`; a row created so is
/// refused at the next start of a deployment that does not allow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_tls_only_where_the_deployment_allows_it() {
    let redis = TlsRedis::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut lax = Settings { data_dir: data.path().to_owned(), ..Settings::default() };
    lax.instances.external.allow_insecure_tls = true;
    let g = Gate::start_with_data_dir(lax.clone()).await;
    let (api, instances) = tenant(&g).await;
    let url = format!("rediss://localhost:{}/#insecure", redis.port);
    let (s, inst) = api.post(&instances, json!({"name": "lax", "provisioner": "external", "url": url})).await;
    assert_eq!((s, inst["status"].as_str()), (201, Some("running")), "{inst}");
    let path = format!("{instances}/{}", inst["id"].as_str().unwrap());
    let token = api.token.clone();
    drop(api);
    g.shutdown().await;

    let strict = Settings { instances: Settings::default().instances, ..lax };
    let g = Gate::start_with_data_dir(strict).await;
    let api = Api { g: &g, token };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, inst) = api.get(&path).await;
        if inst["status"] == "error" {
            assert!(inst["status_reason"].as_str().unwrap().contains("#insecure"), "{inst}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the #insecure instance was restored: {inst}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    g.shutdown().await;
}
