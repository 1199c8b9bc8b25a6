//! Cluster instances end to end: a 3-primary/3-replica Redis Cluster on loopback
//! (`redis-server --cluster-enabled yes` ×6 + `redis-cli --cluster create`); slots migrated
//! and a primary killed under a client writing counters through the gateway.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redisgate_core::topology::key_slot;
use serde_json::{Value, json};

use crate::common::Gate;
use crate::instances::{Tenant, redis_cmd};
use crate::sse::Events;
use crate::topo::{
    Proc, assert_primary, clients_on, fast, ok, only_127_0_0_1, promotion, tenant_org, until, writer,
};

struct TestCluster {
    nodes: Vec<Proc>,
}

impl TestCluster {
    /// Six nodes, three of them replicas; `extra` arguments for every node.
    async fn start(extra: &[&str]) -> TestCluster {
        let mut args = vec!["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"];
        args.extend(["--cluster-node-timeout", "1500", "--logfile", "redis.log"]);
        args.extend(extra);
        let mut nodes = Vec::new();
        for _ in 0..6 {
            nodes.push(Proc::server(&args, None).await);
        }
        let addrs: Vec<String> = nodes.iter().map(Proc::addr).collect();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("redis-cli")
                .arg("--cluster")
                .arg("create")
                .args(&addrs)
                .args(["--cluster-replicas", "1", "--cluster-yes"])
                .output()
                .expect("redis-cli is installed (scripts/test.sh)")
        })
        .await
        .unwrap();
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let c = TestCluster { nodes };
        for n in &c.nodes {
            until("cluster_state:ok everywhere", Duration::from_secs(30), || async {
                let info = n.text(&["CLUSTER", "INFO"]).await;
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:6")
            })
            .await;
            // A replica that never synchronized would not take over (its data is too old).
            until("replicas in sync", Duration::from_secs(30), || async {
                let repl = n.text(&["INFO", "replication"]).await;
                repl.contains("role:master") || repl.contains("master_link_status:up")
            })
            .await;
        }
        c
    }

    fn seeds(&self) -> Vec<String> {
        self.nodes.iter().take(2).map(Proc::addr).collect()
    }

    async fn id(&self, i: usize) -> String {
        self.nodes[i].text(&["CLUSTER", "MYID"]).await
    }

    /// The primary serving `key`: the one that answers it without MOVED.
    async fn owner(&self, key: &str) -> usize {
        for i in self.primaries().await {
            match self.nodes[i].try_cmd(&["EXISTS", key]).await {
                Err(e) if e.code() == Some("MOVED") || e.code() == Some("ASK") => {}
                _ => return i,
            }
        }
        panic!("no primary serves {key}");
    }

    /// `{prefix}{n}` names, one served by each primary, with their owner.
    async fn one_per_primary(&self, prefix: &str) -> Vec<(String, usize)> {
        let count = self.primaries().await.len();
        let mut out: Vec<(String, usize)> = Vec::new();
        for i in 0.. {
            let name = format!("{prefix}{i}");
            let owner = self.owner(&name).await;
            if out.iter().all(|(_, o)| *o != owner) {
                out.push((name, owner));
            }
            if out.len() == count {
                break;
            }
        }
        out
    }

    async fn primaries(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.role().await.as_deref() == Some("master") {
                out.push(i);
            }
        }
        out
    }
}

async fn cluster_instance<'a>(g: &'a Gate, c: &TestCluster) -> (Tenant<'a>, String) {
    let body =
        json!({"name": "c", "provisioner": "external", "kind": "cluster", "cluster": {"seeds": c.seeds()}});
    let t = Tenant::with_instance(g, "ann@example.com", body).await;
    let (key, _) = t.key(json!({"name": "app", "scope": "admin"})).await;
    (t, key)
}

async fn post(g: &Gate, path: &str, key: &str, body: Value) -> (u16, Value) {
    let r = g.http.post(g.url(path)).bearer_auth(key).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_commands_pipelines_transactions_and_scan() {
    let c = TestCluster::start(&[]).await;
    let g = Gate::start_unchecked(fast()).await;
    let (t, key) = cluster_instance(&g, &c).await;
    let id = &t.instance;

    // Per-node status: three primaries up, three replicas listed.
    let (_, view) = t.api.get(&format!("/api/organizations/{}/redis-instances/{id}", t.org)).await;
    assert_eq!(
        (view["kind"].as_str(), view["health"].as_str()),
        (Some("cluster"), Some("healthy")),
        "{view}"
    );
    let nodes = view["nodes"].as_array().unwrap();
    assert_eq!(nodes.iter().filter(|n| n["role"] == "primary" && n["status"] == "up").count(), 3, "{view}");
    assert_eq!(nodes.iter().filter(|n| n["role"] == "replica").count(), 3, "{view}");

    // Single commands land on their slot's node, wherever that is.
    let keys: Vec<String> = (0..60).map(|i| format!("key:{i}")).collect();
    let slots: BTreeSet<u16> = keys.iter().map(|k| key_slot(k.as_bytes())).collect();
    assert!(slots.len() > 30);
    for k in &keys {
        assert_eq!(ok(&g, id, &key, json!(["SET", k, format!("v-{k}")])).await, json!("OK"));
    }
    for k in &keys {
        assert_eq!(ok(&g, id, &key, json!(["GET", k])).await, json!(format!("v-{k}")));
    }
    let mut per_node = Vec::new();
    for p in c.primaries().await {
        per_node.push(c.nodes[p].text(&["DBSIZE"]).await);
    }
    assert!(per_node.iter().all(|n| n != "Int(0)"), "keys on every primary: {per_node:?}");

    // Multi-key commands: one slot works, across slots Redis' own CROSSSLOT.
    assert_eq!(ok(&g, id, &key, json!(["MSET", "{u}a", "1", "{u}b", "2"])).await, json!("OK"));
    assert_eq!(ok(&g, id, &key, json!(["MGET", "{u}a", "{u}b"])).await, json!(["1", "2"]));
    let (s, body) = redis_cmd(&g, id, &key, json!(["MSET", "key:1", "x", "key:2", "y"])).await;
    assert_eq!(s, 400, "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("CROSSSLOT"), "{body}");
    // A script runs on its key's node.
    assert_eq!(
        ok(&g, id, &key, json!(["EVAL", "return redis.call('GET', KEYS[1])", "1", "key:7"])).await,
        json!("v-key:7")
    );

    // A pipeline across nodes is answered in the request's order.
    let pipeline: Vec<Value> =
        keys.iter().map(|k| json!(["GET", k])).chain([json!(["INCR", "{u}n"])]).collect();
    let (s, replies) = post(&g, &format!("/redis/{id}/pipeline"), &key, json!(pipeline)).await;
    assert_eq!(s, 200, "{replies}");
    let replies = replies.as_array().unwrap();
    for (k, r) in keys.iter().zip(replies) {
        assert_eq!(r["result"], json!(format!("v-{k}")));
    }
    assert_eq!(replies.last().unwrap()["result"], json!(1));

    // Transactions: one slot commits, across slots is discarded with CROSSSLOT.
    let tx = json!([["INCR", "{u}n"], ["GET", "{u}a"]]);
    let (s, r) = post(&g, &format!("/redis/{id}/multi-exec"), &key, tx).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!((r[0]["result"].clone(), r[1]["result"].clone()), (json!(2), json!("1")));
    let tx = json!([["INCR", "{u}n"], ["SET", "key:3", "z"]]);
    let (s, r) = post(&g, &format!("/redis/{id}/multi-exec"), &key, tx).await;
    assert_eq!(s, 400, "{r}");
    assert!(r["error"].as_str().unwrap().contains("CROSSSLOT"), "{r}");
    assert_eq!(ok(&g, id, &key, json!(["GET", "{u}n"])).await, json!("2"), "nothing of it ran");
    assert_eq!(ok(&g, id, &key, json!(["GET", "key:3"])).await, json!("v-key:3"));

    // Keyspace-wide commands: DBSIZE adds up, KEYS concatenates, SCAN walks every primary.
    let total = keys.len() + 3; // {u}a, {u}b, {u}n
    assert_eq!(ok(&g, id, &key, json!(["DBSIZE"])).await, json!(total));
    assert_eq!(ok(&g, id, &key, json!(["KEYS", "key:*"])).await.as_array().unwrap().len(), keys.len());
    let mut seen = BTreeSet::new();
    let mut cursor = "0".to_owned();
    let mut pages = 0;
    loop {
        let page = ok(&g, id, &key, json!(["SCAN", cursor, "MATCH", "key:*", "COUNT", "7"])).await;
        seen.extend(page[1].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_owned()));
        cursor = page[0].as_str().unwrap().to_owned();
        pages += 1;
        assert!(pages < 1000, "SCAN ends");
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(seen, keys.iter().cloned().collect::<BTreeSet<_>>(), "SCAN saw every key once or more");
    let stats = t.api.get(&format!("/api/organizations/{}/redis-instances/{id}/stats", t.org)).await;
    assert_eq!(stats.1["keys"], json!(total), "{stats:?}");
    assert_eq!(ok(&g, id, &key, json!(["FLUSHALL"])).await, json!("OK"));
    assert_eq!(ok(&g, id, &key, json!(["DBSIZE"])).await, json!(0));

    // SSE: a message published through the gateway reaches a subscriber through it.
    let r = g
        .http
        .post(g.url(&format!("/redis/{id}/subscribe/news")))
        .bearer_auth(&key)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text.contains("message,news,hello") {
        if text.contains("subscribe,news,1") {
            ok(&g, id, &key, json!(["PUBLISH", "news", "hello"])).await;
        }
        let chunk = tokio::time::timeout_at(deadline.into(), stream.next()).await.expect("events in time");
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_migration_under_load_is_invisible() {
    let c = TestCluster::start(&[]).await;
    let g = Arc::new(Gate::start_unchecked(fast()).await);
    let (t, key) = cluster_instance(&g, &c).await;
    // Ten keys in the migrated slot, and some elsewhere.
    let mut keys: Vec<String> = (0..10).map(|i| format!("{{m}}:{i}")).collect();
    keys.extend((0..6).map(|i| format!("other:{i}")));
    let slot = key_slot(b"m");
    let w = writer(Arc::clone(&g), t.instance.clone(), key.clone(), keys.clone());
    w.more("writes", 100).await;

    let from = c.owner("{m}").await;
    let primaries = c.primaries().await;
    let to = *primaries.iter().find(|p| **p != from).unwrap();
    let (from_id, to_id) = (c.id(from).await, c.id(to).await);
    let s = slot.to_string();
    c.nodes[to].try_cmd(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id]).await.unwrap();
    c.nodes[from].try_cmd(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id]).await.unwrap();
    // One key at a time, with writes in between: some keys are asked for on the old node
    // (ASK), some on the new.
    let to_port = c.nodes[to].port.to_string();
    loop {
        let Ok(redis::Value::Array(batch)) =
            c.nodes[from].try_cmd(&["CLUSTER", "GETKEYSINSLOT", &s, "1"]).await
        else {
            panic!("GETKEYSINSLOT")
        };
        let Some(redis::Value::BulkString(k)) = batch.first() else { break };
        let k = String::from_utf8(k.clone()).unwrap();
        c.nodes[from].try_cmd(&["MIGRATE", "127.0.0.1", &to_port, &k, "0", "5000"]).await.unwrap();
        w.more("writes during the migration", 20).await;
    }
    for p in &primaries {
        c.nodes[*p].try_cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &to_id]).await.unwrap();
    }
    w.more("writes after the migration", 100).await;
    let w = w.finish().await;
    assert_eq!((w.refused, w.unknown.len()), (0, 0), "no client-visible error: {:?}", w.errors);
    let mut finals = Vec::new();
    for k in &keys {
        finals.push(
            ok(&g, &t.instance, &key, json!(["GET", k])).await.as_str().unwrap().parse::<i64>().unwrap(),
        );
    }
    w.check_against(&finals);
    for (k, acked) in w.acked.iter().enumerate() {
        assert_eq!(finals[k], acked.len() as i64, "key {}: exactly the acknowledged writes", keys[k]);
    }
    assert_eq!(c.owner("{m}").await, to, "the slot moved");
    // The redirections were followed and counted. Which kinds: ASK while keys move is all but
    // certain; MOVED after the slot's owner changes only if a request reaches the old owner
    // before the gateway's next slot-map refresh, which a fast health check can win.
    let metrics = g.http.get(g.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        ["redis_cluster_redirects_total{kind=\"ask\"}", "redis_cluster_redirects_total{kind=\"moved\"}"]
            .iter()
            .any(|series| metrics.contains(series)),
        "redirections counted: {metrics}"
    );
    eprintln!("slot migration: {} writes, no error", w.total_acked());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_fails_over_with_503s_and_no_lost_write() {
    let mut c = TestCluster::start(&[]).await;
    let g = Arc::new(Gate::start_unchecked(fast()).await);
    let (t, key) = cluster_instance(&g, &c).await;
    let keys: Vec<String> = (0..12).map(|i| format!("counter:{i}")).collect();
    let victim = c.owner(&keys[0]).await;
    let w = writer(Arc::clone(&g), t.instance.clone(), key.clone(), keys.clone());
    w.more("writes", 100).await;

    let victim_id = c.id(victim).await;
    let mut replica = None;
    for (i, n) in c.nodes.iter().enumerate() {
        if n.text(&["INFO", "replication"]).await.contains(&format!("master_port:{}", c.nodes[victim].port)) {
            replica = Some(i);
        }
    }
    let replica = replica.expect("the victim has a replica");
    let killed = Instant::now();
    c.nodes[victim].kill();
    // Before the promotion, a pipeline over every key: the commands of the dead primary answer
    // with its error in their places, the others run.
    let dead = c.nodes[victim].addr();
    let view = format!("/api/organizations/{}/redis-instances/{}", t.org, t.instance);
    until("the gateway to see the primary down", Duration::from_secs(5), || async {
        let (_, v) = t.api.get(&view).await;
        v["nodes"].as_array().unwrap().iter().any(|n| n["address"] == dead && n["status"] == "down")
    })
    .await;
    let reads: Vec<Value> = keys.iter().map(|k| json!(["GET", k])).collect();
    let (s, replies) = post(&g, &format!("/redis/{}/pipeline", t.instance), &key, json!(reads)).await;
    assert_eq!(c.nodes[replica].role().await.as_deref(), Some("slave"), "still before the promotion");
    assert_eq!(s, 200, "{replies}");
    let replies = replies.as_array().unwrap();
    assert!(replies[0]["error"].as_str().is_some_and(|e| e.contains("Redis")), "{replies:?}");
    assert!(replies.iter().any(|r| r["result"].is_string()), "other nodes answered: {replies:?}");
    let promoted = promotion(&c.nodes[replica]).await;
    let k0 = keys[0].clone();
    until("a write to the failed-over slot", Duration::from_secs(10), || async {
        w.writes.lock().unwrap().key_acked_at[0].last().is_some_and(|t| *t > killed)
    })
    .await;
    w.more("more writes", 100).await;
    let w = w.finish().await;
    let mut finals = Vec::new();
    for k in &keys {
        finals.push(
            ok(&g, &t.instance, &key, json!(["GET", k])).await.as_str().map_or(0, |v| v.parse().unwrap()),
        );
    }
    w.check_against(&finals);
    let last_before = w.key_acked_at[0].iter().copied().filter(|t| *t < killed).max().unwrap();
    let first_after = w.key_acked_at[0].iter().copied().find(|t| *t > killed).unwrap();
    let after_promotion = first_after.saturating_duration_since(promoted);
    eprintln!(
        "cluster failover of {victim_id} ({k0}'s slot): promotion {:?} after the kill; {k0} unavailable for {:?}, \
         written again {after_promotion:?} after the promotion; {} refused with 503, {} unknown",
        promoted.duration_since(killed),
        first_after.duration_since(last_before),
        w.refused,
        w.unknown.len()
    );
    assert!(after_promotion < Duration::from_secs(5), "{k0} served {after_promotion:?} after the promotion");
    assert!(w.refused + w.unknown.len() > 0, "the outage was seen as 503s");
    assert_primary(&t, &c.nodes[replica].addr()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_nodes_the_egress_policy_forbids_are_never_dialled() {
    // The nodes listen on 127.0.0.1 and 127.0.0.2 and announce 127.0.0.2, which this
    // deployment does not allow: the seeds (127.0.0.1) are reachable, the slot map is not.
    let c =
        TestCluster::start(&["--bind", "127.0.0.1", "127.0.0.2", "--cluster-announce-ip", "127.0.0.2"]).await;
    let g = only_127_0_0_1().await;
    let (api, instances) = tenant_org(&g, "mallory@example.com").await;
    let body =
        json!({"name": "c", "provisioner": "external", "kind": "cluster", "cluster": {"seeds": c.seeds()}});
    let (st, inst) = api.post(&instances, body).await;
    assert_eq!((st, inst["status"].as_str()), (201, Some("error")), "{inst}");
    assert_eq!(inst["status_reason"], crate::egress::UNREACHABLE, "{inst}");
    for n in &c.nodes {
        let laddr = format!("127.0.0.2:{}", n.port);
        assert_eq!(clients_on(n, &laddr).await, Vec::<String>::new(), "no connection to {laddr}");
    }
    // Seeds the policy forbids are refused at creation.
    let seeds: Vec<String> = c.nodes.iter().map(|n| format!("127.0.0.2:{}", n.port)).collect();
    let body =
        json!({"name": "c", "provisioner": "external", "kind": "cluster", "cluster": {"seeds": seeds}});
    let (st, body) = api.post(&instances, body).await;
    assert_eq!((st, body["field"].as_str()), (422, Some("seeds")), "{body}");
}

/// The Python SDK suite through a Cluster instance, each test's keys under one hash tag. (With
/// keys in different slots, the failures are Redis' own CROSSSLOT refusals: docs/BACKENDS.md.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstash_redis_python_sdk_through_a_cluster() {
    let c = TestCluster::start(&[]).await;
    let g = Gate::start_unchecked(fast()).await;
    let (t, _) = cluster_instance(&g, &c).await;
    let (key, _) = t.key(json!({"name": "sdk", "scope": "read-write"})).await;
    crate::python_sdk::run_pytest_one_slot(&format!("{}/redis/{}", g.base, t.instance), &key).await;
}

/// `/monitor` on a cluster shows every primary's commands. `/ssubscribe`: each stream on its
/// channel's primary, for channels of different primaries; then one channel's slot moves and
/// another's primary is killed, and each stream subscribes again on the new owner
/// (docs/BACKENDS.md, "Sharded pub/sub").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pubsub_follows_slot_moves_and_failovers() {
    let mut c = TestCluster::start(&[]).await;
    let g = Gate::start_unchecked(fast()).await;
    let (t, admin) = cluster_instance(&g, &c).await;
    let id = t.instance.clone();
    let (reader, _) = t.key(json!({"name": "reader", "scope": "read-only"})).await;
    let channels = c.one_per_primary("ch:").await;

    // `/monitor` merges the MONITOR lines of every primary.
    let keys: Vec<String> = c.one_per_primary("mon:").await.into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys.len(), 3);
    let mut m = Events::open_as(&g, &format!("/redis/{id}/monitor"), &admin).await;
    assert_eq!(m.next().await, "\"OK\"");
    for k in &keys {
        assert_eq!(ok(&g, &id, &admin, json!(["SET", k, "seen"])).await, json!("OK"));
    }
    let mut unseen: BTreeSet<String> = keys.iter().map(|k| format!(r#""SET" "{k}" "seen""#)).collect();
    while !unseen.is_empty() {
        let line = m.next().await;
        unseen.retain(|want| !line.contains(want.as_str()));
    }

    // Subscribing reads: a read-only key may.
    let mut streams = Vec::new();
    for (name, _) in &channels {
        let mut s = Events::open_as(&g, &format!("/redis/{id}/ssubscribe/{name}"), &reader).await;
        assert_eq!(s.next().await, format!("ssubscribe,{name},1"));
        streams.push(s);
    }
    for ((name, owner), s) in channels.iter().zip(&mut streams) {
        let numsub = c.nodes[*owner].text(&["PUBSUB", "SHARDNUMSUB", name]).await;
        assert!(numsub.ends_with("int(1)])"), "{name} on node {owner}: {numsub}");
        // Through the gateway (SPUBLISH is routed by the channel's slot), and on the node.
        assert_eq!(ok(&g, &id, &admin, json!(["SPUBLISH", name, "via gateway"])).await, json!(1));
        assert_eq!(s.next().await, format!("smessage,{name},via gateway"));
        c.nodes[*owner].try_cmd(&["SPUBLISH", name, "on the node"]).await.unwrap();
        assert_eq!(s.next().await, format!("smessage,{name},on the node"));
    }

    // Channels of different slots: Redis' own CROSSSLOT, as a 400.
    let (a, b) = (&channels[0].0, &channels[1].0);
    let r = g
        .http
        .post(g.url(&format!("/redis/{id}/ssubscribe/{a}/{b}")))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().starts_with("CROSSSLOT"), "{body}");
    // Another organization's key, and no key: 401, as for every data-plane request.
    let (other_api, other) = tenant_org(&g, "mallory@example.com").await;
    let other_org = other.trim_start_matches("/api/organizations/").trim_end_matches("/redis-instances");
    let (st, k) = other_api
        .post(&format!("/api/organizations/{other_org}/api-keys"), json!({"name": "m", "scope": "admin"}))
        .await;
    assert_eq!(st, 201, "{k}");
    let path = format!("/redis/{id}/ssubscribe/{a}");
    for key in [k["key"].as_str().unwrap(), ""] {
        let r = g.http.post(g.url(&path)).bearer_auth(key).send().await.unwrap();
        assert_eq!(r.status(), 401, "key {key:?}");
        assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    }

    // The first channel's slot moves to another primary: Redis unsubscribes the stream there,
    // and it subscribes again on the new owner.
    let (moved, from) = channels[0].clone();
    let to = channels[1].1;
    let (from_id, to_id) = (c.id(from).await, c.id(to).await);
    let slot = key_slot(moved.as_bytes()).to_string();
    c.nodes[to].try_cmd(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]).await.unwrap();
    c.nodes[from].try_cmd(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]).await.unwrap();
    for (_, p) in &channels {
        c.nodes[*p].try_cmd(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]).await.unwrap();
    }
    assert_eq!(streams[0].next().await, format!("ssubscribe,{moved},1"));
    assert!(c.nodes[to].text(&["PUBSUB", "SHARDNUMSUB", &moved]).await.ends_with("int(1)])"));
    assert_eq!(ok(&g, &id, &admin, json!(["SPUBLISH", &moved, "after the move"])).await, json!(1));
    assert_eq!(streams[0].next().await, format!("smessage,{moved},after the move"));

    // The third channel's primary dies: once its replica is promoted, the stream is there.
    let (orphan, victim) = channels[2].clone();
    let victim_port = format!("master_port:{}", c.nodes[victim].port);
    let mut replica = None;
    for (i, n) in c.nodes.iter().enumerate() {
        if n.text(&["INFO", "replication"]).await.contains(&victim_port) {
            replica = Some(i);
        }
    }
    let replica = replica.expect("the victim has a replica");
    let killed = Instant::now();
    c.nodes[victim].kill();
    assert_eq!(streams[2].next_within(Duration::from_secs(20)).await, format!("ssubscribe,{orphan},1"));
    eprintln!("sharded subscription back {:?} after its primary was killed", killed.elapsed());
    assert_eq!(c.nodes[replica].role().await.as_deref(), Some("master"));
    assert_eq!(ok(&g, &id, &admin, json!(["SPUBLISH", &orphan, "after the failover"])).await, json!(1));
    assert_eq!(streams[2].next().await, format!("smessage,{orphan},after the failover"));
    // The stream on the untouched primary saw nothing of it.
    assert_eq!(ok(&g, &id, &admin, json!(["SPUBLISH", &channels[1].0, "still here"])).await, json!(1));
    assert_eq!(streams[1].next().await, format!("smessage,{},still here", channels[1].0));
}
