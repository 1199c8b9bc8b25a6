//! Sentinel instances end to end: a primary, a replica and three `redis-sentinel` processes
//! on loopback; the primary is killed under a client writing counters through the gateway.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::Gate;
use crate::instances::Tenant;
use crate::topo::{
    Proc, assert_primary, clients_on, fast, ok, only_127_0_0_1, promotion, tenant_org, until, writer,
};

const PW: &str = "data-pw";

/// A primary with one replica (both with a password) and `n` sentinels watching it as
/// `mymaster`, all agreed (each sentinel knows the replica and the other sentinels).
struct Group {
    primary: Proc,
    replica: Proc,
    sentinels: Vec<Proc>,
}

impl Group {
    async fn start(n: usize) -> Group {
        let auth = ["--requirepass", PW, "--masterauth", PW];
        let primary = Proc::server(&auth, Some(PW)).await;
        let port = primary.port.to_string();
        let mut replica_args = auth.to_vec();
        replica_args.extend(["--replicaof", "127.0.0.1", &port]);
        let replica = Proc::server(&replica_args, Some(PW)).await;
        until("the replica's link", Duration::from_secs(10), || async {
            replica.text(&["INFO", "replication"]).await.contains("master_link_status:up")
        })
        .await;
        let quorum = n.div_ceil(2);
        let conf = format!(
            "sentinel resolve-hostnames no\nsentinel monitor mymaster 127.0.0.1 {port} {quorum}\n\
             sentinel auth-pass mymaster {PW}\nsentinel down-after-milliseconds mymaster 1000\n\
             sentinel failover-timeout mymaster 10000\nsentinel parallel-syncs mymaster 1"
        );
        let mut sentinels = Vec::new();
        for _ in 0..n {
            sentinels.push(Proc::sentinel(&conf).await);
        }
        for s in &sentinels {
            until("sentinels to agree", Duration::from_secs(20), || async {
                let others = s.sentinel_field("mymaster", "num-other-sentinels").await;
                let replicas = s.sentinel_field("mymaster", "num-slaves").await;
                others == Some((n - 1).to_string()) && replicas.as_deref() == Some("1")
            })
            .await;
        }
        Group { primary, replica, sentinels }
    }

    fn spec(&self, read_from_replicas: bool) -> serde_json::Value {
        json!({
            "sentinels": self.sentinels.iter().map(Proc::addr).collect::<Vec<_>>(),
            "master_name": "mymaster",
            "password": PW,
            "read_from_replicas": read_from_replicas,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_keeps_every_acknowledged_write() {
    let mut group = Group::start(3).await;
    let g = Arc::new(Gate::start_unchecked(fast()).await);
    let spec = group.spec(false);
    let t = Tenant::with_instance(
        &g,
        "ann@example.com",
        json!({"name": "ha", "provisioner": "external", "kind": "sentinel", "sentinel": spec}),
    )
    .await;
    let (key, _) = t.key(json!({"name": "app", "scope": "read-write"})).await;

    // The API shows the kind and every server, never the passwords.
    let (s, view) = t.api.get(&format!("/api/organizations/{}/redis-instances/{}", t.org, t.instance)).await;
    assert_eq!(
        (s, view["kind"].as_str(), view["health"].as_str()),
        (200, Some("sentinel"), Some("healthy")),
        "{view}"
    );
    let nodes = view["nodes"].as_array().unwrap();
    assert!(
        nodes
            .iter()
            .any(|n| n["role"] == "primary" && n["address"] == group.primary.addr() && n["status"] == "up"),
        "{view}"
    );
    assert_eq!(nodes.iter().filter(|n| n["role"] == "sentinel").count(), 3, "{view}");
    assert!(!view.to_string().contains(PW), "no password in {view}");
    assert_eq!(ok(&g, &t.instance, &key, json!(["SET", "k", "v"])).await, json!("OK"));

    let keys: Vec<String> = (0..4).map(|i| format!("counter:{i}")).collect();
    let w = writer(Arc::clone(&g), t.instance.clone(), key.clone(), keys.clone());
    w.more("writes before the kill", 100).await;

    let killed = Instant::now();
    let acked_before = w.writes.lock().unwrap().total_acked();
    group.primary.kill();
    let promoted = promotion(&group.replica).await;
    until("a write after the failover", Duration::from_secs(10), || async {
        w.writes.lock().unwrap().acked_at.last().is_some_and(|t| *t > promoted)
    })
    .await;
    w.more("more writes on the new primary", 50).await;
    let w = w.finish().await;
    let served = w.acked_at.iter().copied().find(|t| *t > killed).unwrap();

    let mut finals = Vec::new();
    for k in &keys {
        finals.push(group.replica.text(&["GET", k]).await.parse().unwrap_or(0));
    }
    w.check_against(&finals);
    let outage = served.duration_since(killed);
    let after_promotion = served.saturating_duration_since(promoted);
    eprintln!(
        "sentinel failover: {acked_before} writes before the kill, {} after; outage {outage:?} \
         (promotion after {:?}, first write {after_promotion:?} after it); {} refused with 503, {} unknown",
        w.total_acked() - acked_before,
        promoted.duration_since(killed),
        w.refused,
        w.unknown.len()
    );
    assert!(w.refused + w.unknown.len() > 0, "the outage was seen as 503s");
    assert!(
        after_promotion < Duration::from_secs(5),
        "writes served {after_promotion:?} after the promotion"
    );
    assert_primary(&t, &group.replica.addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_reads_may_go_to_replicas() {
    let group = Group::start(1).await;
    let g = Gate::start_unchecked(fast()).await;
    let t = Tenant::with_instance(
        &g,
        "ann@example.com",
        json!({"name": "ha", "provisioner": "external", "kind": "sentinel", "sentinel": group.spec(true)}),
    )
    .await;
    let (key, _) = t.key(json!({"name": "app", "scope": "read-write"})).await;
    until("the replica is used", Duration::from_secs(10), || async {
        let (_, view) =
            t.api.get(&format!("/api/organizations/{}/redis-instances/{}", t.org, t.instance)).await;
        view["nodes"].as_array().unwrap().iter().any(|n| n["role"] == "replica" && n["status"] == "up")
    })
    .await;
    // A key only the replica has (written there with replica-read-only off) is read there.
    group.replica.try_cmd(&["CONFIG", "SET", "replica-read-only", "no"]).await.unwrap();
    group.replica.try_cmd(&["SET", "only-on-replica", "r"]).await.unwrap();
    let mut seen = false;
    for _ in 0..10 {
        seen |= ok(&g, &t.instance, &key, json!(["GET", "only-on-replica"])).await == json!("r");
    }
    assert!(seen, "GET went to the replica");
    // Writes go to the primary.
    assert_eq!(ok(&g, &t.instance, &key, json!(["SET", "w", "1"])).await, json!("OK"));
    assert_eq!(group.primary.text(&["GET", "w"]).await, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_the_egress_policy_forbids_is_never_dialled() {
    // The primary listens on 127.0.0.1 and 127.0.0.2; the sentinel names it at 127.0.0.2,
    // which this deployment does not allow (only 127.0.0.1 is).
    let primary = Proc::server(&["--bind", "127.0.0.1", "127.0.0.2"], None).await;
    let conf = format!(
        "sentinel resolve-hostnames no\nsentinel monitor evil 127.0.0.2 {} 1\nsentinel down-after-milliseconds evil 1000",
        primary.port
    );
    let sentinel = Proc::sentinel(&conf).await;
    until("the sentinel to see the primary", Duration::from_secs(10), || async {
        sentinel.sentinel_field("evil", "flags").await.as_deref() == Some("master")
    })
    .await;
    let g = only_127_0_0_1().await;
    let (api, instances) = tenant_org(&g, "mallory@example.com").await;
    let spec = json!({"sentinels": [sentinel.addr()], "master_name": "evil"});
    let (st, inst) = api
        .post(
            &instances,
            json!({"name": "evil", "provisioner": "external", "kind": "sentinel", "sentinel": spec}),
        )
        .await;
    assert_eq!(st, 201, "{inst}");
    assert_eq!(inst["status"], "error", "{inst}");
    assert_eq!(inst["status_reason"], crate::egress::UNREACHABLE, "one reason, no oracle: {inst}");
    let laddr = format!("127.0.0.2:{}", primary.port);
    assert_eq!(
        clients_on(&primary, &laddr).await,
        Vec::<String>::new(),
        "nothing but the sentinel reached {laddr}"
    );
    // A listed sentinel the policy forbids is refused at creation.
    let spec = json!({"sentinels": [format!("127.0.0.2:{}", sentinel.port)], "master_name": "evil"});
    let (st, body) = api
        .post(
            &instances,
            json!({"name": "evil", "provisioner": "external", "kind": "sentinel", "sentinel": spec}),
        )
        .await;
    assert_eq!((st, body["field"].as_str()), (422, Some("sentinels")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_instances_in_check_metrics_restart_and_delete() {
    let group = Group::start(1).await;
    let data = tempfile::tempdir().unwrap();
    let mut settings = fast();
    settings.data_dir = data.path().to_owned();
    settings.instances.external.allow = vec!["127.0.0.0/8".into()];
    let g = Gate::start_with_data_dir(settings.clone()).await;
    let body =
        json!({"name": "ha", "provisioner": "external", "kind": "sentinel", "sentinel": group.spec(false)});
    let t = Tenant::with_instance(&g, "ann@example.com", body).await;
    let (key, _) = t.key(json!({"name": "app", "scope": "read-write"})).await;
    assert_eq!(ok(&g, &t.instance, &key, json!(["SET", "k", "v"])).await, json!("OK"));
    let metrics = g.http.get(g.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("redis_topology_changes_total{kind=\"sentinel\"} 1"), "{metrics}");
    let stats =
        t.api.get(&format!("/api/organizations/{}/redis-instances/{}/stats", t.org, t.instance)).await;
    assert_eq!((stats.0, stats.1["keys"].as_u64()), (200, Some(1)), "{stats:?}");

    // `redisgate check` pings the sentinels through the egress policy.
    let lines = redisgate_server::check::run(&settings, "test").await;
    let line = lines.iter().find(|l| l.component.contains(&t.instance)).expect("a line for the instance");
    assert!(line.component.contains("sentinel") && line.result.is_ok(), "{line}");

    // A restart serves it again, from the stored (sealed) topology.
    let (org, instance, token) = (t.org.clone(), t.instance.clone(), t.api.token.clone());
    drop(t);
    g.shutdown().await;
    let g = Gate::start_with_data_dir(settings.clone()).await;
    let api = crate::api::Api { g: &g, token };
    until("the instance restored", Duration::from_secs(10), || async {
        let (_, v) = api.get(&format!("/api/organizations/{org}/redis-instances/{instance}")).await;
        v["health"] == "healthy"
    })
    .await;
    assert_eq!(ok(&g, &instance, &key, json!(["GET", "k"])).await, json!("v"));

    // Deleting it closes every connection the gateway held to its servers.
    let laddr = group.primary.addr();
    assert!(!clients_on(&group.primary, &laddr).await.is_empty(), "the gateway is connected");
    let (s, _) = api.delete(&format!("/api/organizations/{org}/redis-instances/{instance}")).await;
    assert_eq!(s, 204);
    until("the gateway's connections closed", Duration::from_secs(5), || async {
        // Only this question's own connection is left.
        clients_on(&group.primary, &laddr).await.len() <= 1
    })
    .await;
}
