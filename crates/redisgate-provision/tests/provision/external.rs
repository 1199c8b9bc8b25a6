//! ExternalProvisioner against a private redis-server standing in for the user's.

use std::time::Duration;

use redisgate_core::ids::InstanceId;
use redisgate_core::provision::{InstanceSpec, ProvisionError, Provisioner, RedisUrl, UNREACHABLE};
use redisgate_provision::ExternalProvisioner;

use crate::support::*;

const PASSWORD: &str = "users-own-secret-0123";

fn external(url: &str) -> InstanceSpec {
    InstanceSpec {
        id: InstanceId::new(),
        memory_bytes: 0,
        eviction_policy: Default::default(),
        external_url: Some(RedisUrl::new(url.to_owned())),
        tls_ca_pem: None,
    }
}

/// Why the server could not be used: the detail of an `Unreachable` (whose text is the one
/// reason owners see), or the reason of a `Failed`.
async fn reason(p: &ExternalProvisioner, url: &str) -> String {
    match p.start(&external(url)).await {
        Err(e @ ProvisionError::Unreachable(_)) if e.to_string() != UNREACHABLE => {
            panic!("owners are told one reason, got {e}")
        }
        Err(ProvisionError::Failed(reason) | ProvisionError::Unreachable(reason)) => {
            eprintln!("REASON: {reason}");
            assert!(!reason.contains(PASSWORD), "password leaked: {reason}");
            assert!(!reason.contains("wrong-password"), "password leaked: {reason}");
            reason
        }
        other => panic!("expected Failed or Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_reachable_server_is_accepted_and_left_alone() {
    let server = PrivateRedis::start(Some(PASSWORD)).await;
    let url = server.url(Some(PASSWORD));
    let p = ExternalProvisioner::new();
    let spec = external(&url);
    let got = p.start(&spec).await.unwrap();
    assert_eq!(got.expose(), url);
    set(&got, "mine", "yes").await;

    p.destroy(spec.id).await.unwrap();
    p.shutdown().await;
    assert_eq!(get(&got, "mine").await.as_deref(), Some("yes"), "never touches the user's data");
}

#[tokio::test]
async fn authentication_failures_are_named_without_the_password() {
    let server = PrivateRedis::start(Some(PASSWORD)).await;
    let p = ExternalProvisioner::new();

    let wrong = reason(&p, &format!("redis://:wrong-password@127.0.0.1:{}", server.port)).await;
    assert!(wrong.contains("authentication failed"), "{wrong}");
    let missing = reason(&p, &server.url(None)).await;
    assert!(
        missing.contains("authentication failed") && missing.contains("requires a password"),
        "{missing}"
    );
    let user = reason(&p, &format!("redis://nobody:{PASSWORD}@127.0.0.1:{}", server.port)).await;
    assert!(user.contains("authentication failed"), "{user}");
}

#[tokio::test]
async fn unreachable_servers_fail_clearly() {
    let p = ExternalProvisioner::with_timeout(Duration::from_millis(500));
    let closed = reason(&p, &format!("redis://:{PASSWORD}@127.0.0.1:{}", free_port())).await;
    assert!(closed.contains("connection refused"), "{closed}");

    // Accepts the connection, never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let timed_out = reason(&p, &format!("redis://:{PASSWORD}@127.0.0.1:{port}")).await;
    assert!(timed_out.contains("timed out"), "{timed_out}");

    // TLS against a plain listener: still a reason, still no password.
    let tls = reason(&p, &format!("rediss://:{PASSWORD}@127.0.0.1:{port}")).await;
    assert!(!tls.is_empty());
}

#[tokio::test]
async fn the_url_is_required_and_must_be_redis() {
    let p = ExternalProvisioner::new();
    let spec = InstanceSpec {
        id: InstanceId::new(),
        memory_bytes: 0,
        eviction_policy: Default::default(),
        external_url: None,
        tls_ca_pem: None,
    };
    assert!(matches!(p.start(&spec).await, Err(ProvisionError::Failed(r)) if r.contains("redis://")));
    let bad = reason(&p, &format!("http://:{PASSWORD}@127.0.0.1:1")).await;
    assert!(bad.contains("redis://"), "{bad}");
    let garbage = reason(&p, &format!("redis://:{PASSWORD}@[not-a-host")).await;
    assert!(!garbage.is_empty());
}
