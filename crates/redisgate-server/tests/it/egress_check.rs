//! `redisgate check` (in-process: [`redisgate_server::check::run`]) and the egress policy: the
//! operator's check pings a stored external instance only where the server itself would
//! connect, and says so when the policy refuses it, without connecting.

use redisgate_server::check::{self, Line};
use redisgate_server::config::{Settings, TokenConfig};
use serde_json::json;

use crate::api::Api;
use crate::common::{Gate, Redis};
use crate::egress::connections;

/// The check's line for the one external instance.
fn external_line(lines: &[Line]) -> &Line {
    lines.iter().find(|l| l.component.contains(", external)")).unwrap_or_else(|| panic!("{lines:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_pings_external_instances_through_the_egress_policy() {
    let tenant = Redis::start().await;
    let data = tempfile::tempdir().unwrap();
    let mut s = Settings { data_dir: data.path().to_owned(), ..Settings::default() };
    s.instances.external.allow = vec!["127.0.0.0/8".into()];
    let g = Gate::start_with_data_dir(s.clone()).await;
    let (api, _) = Api::signup(&g, "ann@example.com").await;
    let (_, org) = api.post("/api/organizations", json!({"name": "Acme"})).await;
    let instances = format!("/api/organizations/{}/redis-instances", org["id"].as_str().unwrap());
    let (st, inst) =
        api.post(&instances, json!({"name": "ext", "provisioner": "external", "url": tenant.url()})).await;
    assert_eq!((st, inst["status"].as_str()), (201, Some("running")), "{inst}");
    g.shutdown().await;

    // Allowed as when it was created: the check reaches it.
    let lines = check::run(&s, "test").await;
    assert!(external_line(&lines).result.is_ok(), "{lines:?}");

    // The administrator closes loopback again: the check refuses it, and does not connect.
    let before = connections(&tenant).await;
    let mut strict = s.clone();
    strict.instances.external.allow = Vec::new();
    let lines = check::run(&strict, "test").await;
    let refused = external_line(&lines).result.clone().expect_err("refused");
    assert!(refused.starts_with("refused by the egress policy"), "{refused}");
    assert_eq!(connections(&tenant).await, before + 1, "the check did not connect to it");

    // Inside the allowed range, but now one of RedisGate's own services (a standalone token's
    // Redis): refused too. The token's own line still pings it: that is the operator's.
    let token = TokenConfig {
        token: "long-enough-token".to_owned().into(),
        url: tenant.url().into(),
        read_only: false,
        name: Some("own".into()),
        rate_limit: None,
    };
    let own = Settings { tokens: vec![token], ..s };
    let before = connections(&tenant).await;
    let lines = check::run(&own, "test").await;
    let refused = external_line(&lines).result.clone().expect_err("refused");
    assert!(refused.starts_with("refused by the egress policy"), "{refused}");
    assert!(lines.iter().any(|l| l.component == "standalone redis own" && l.result.is_ok()), "{lines:?}");
    assert_eq!(connections(&tenant).await, before + 2, "only the token's PING reached it");
}
