//! The command catalog against Redis itself, and commands built to slip past the policy.
//!
//! `redisgate_core::catalog` is the one list of commands the gateway knows; here a real
//! redis-server's `COMMAND INFO` is compared with it, so a Redis whose commands or flags the
//! catalog does not describe (an upgrade, a new subcommand) fails until the catalog says what
//! to do with them.

use std::collections::BTreeSet;
use std::time::Duration;

use redis::Value;
use redisgate_core::catalog::{self, Origin, Spec, TRACKED_FLAGS};
use serde_json::json;

use crate::common::{Gate, RO_TOKEN, Redis, TOKEN, settings};

/// One command of `COMMAND INFO`: name (lower case, `parent|sub` for a subcommand), the
/// tracked flags, and its subcommands.
struct Info {
    name: String,
    flags: u8,
    subcommands: Vec<Info>,
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Okay => "OK".into(),
        other => panic!("not a string in COMMAND INFO: {other:?}"),
    }
}

fn items(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        other => panic!("not an array in COMMAND INFO: {other:?}"),
    }
}

/// `[name, arity, [flags], first, last, step, [acl categories], [tips], [key specs], [subcommands]]`
fn info(v: &Value) -> Info {
    let fields = items(v);
    let flags = items(&fields[2]).iter().map(text).collect::<Vec<_>>();
    let flags =
        TRACKED_FLAGS.iter().filter(|(_, n)| flags.iter().any(|f| f == n)).fold(0, |acc, (bit, _)| acc | bit);
    Info { name: text(&fields[0]), flags, subcommands: items(&fields[9]).iter().map(info).collect() }
}

fn flag_names(flags: u8) -> Vec<&'static str> {
    TRACKED_FLAGS.iter().filter(|(bit, _)| flags & bit != 0).map(|(_, n)| *n).collect()
}

fn present_in(spec: &Spec, version: (u8, u8)) -> bool {
    matches!(spec.origin, Origin::Redis { major, minor } if (major, minor) <= version)
}

/// The backend's `major.minor`, from `INFO server`.
async fn version(redis: &Redis) -> (u8, u8) {
    let server: String = redis.cmd(&["INFO", "server"]).await;
    let v = server.lines().find_map(|l| l.strip_prefix("redis_version:")).expect("redis_version in INFO");
    let mut parts = v.trim().split('.').map(|p| p.parse::<u8>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}

#[tokio::test]
async fn command_info_matches_the_catalog() {
    let redis = Redis::start().await;
    let version = version(&redis).await;
    let all: Value = redis.cmd(&["COMMAND", "INFO"]).await;
    let commands: Vec<Info> = items(&all).iter().map(info).collect();
    assert!(commands.len() > 200, "COMMAND INFO listed {} commands", commands.len());

    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    let mut compare = |name: &str, spec: Option<&Spec>, got: u8| match spec {
        None => problems.push(format!("{name}: Redis has it, the catalog does not classify it")),
        Some(spec) if spec.flags != got => problems.push(format!(
            "{name}: Redis flags {:?}, catalog {:?}",
            flag_names(got),
            flag_names(spec.flags)
        )),
        Some(_) => {}
    };
    for c in &commands {
        let upper = c.name.to_ascii_uppercase();
        let spec = catalog::find(&upper);
        seen.insert(upper.clone());
        compare(&upper, spec, c.flags);
        for s in &c.subcommands {
            let sub = s.name.split_once('|').expect("parent|sub").1.to_ascii_uppercase();
            seen.insert(format!("{upper}|{sub}"));
            compare(&format!("{upper}|{sub}"), spec.and_then(|p| p.subcommand(sub.as_bytes())), s.flags);
        }
    }
    // The other way round: what the catalog says this version has must be there (a typo in a
    // name would otherwise leave the real command unclassified and the entry dead).
    for (parent, sub) in catalog::entries() {
        let (name, spec) = match sub {
            Some(s) => (format!("{}|{}", parent.name, s.name), s),
            None => (parent.name.to_owned(), parent),
        };
        if present_in(spec, version) && !seen.contains(&name) {
            problems.push(format!("{name}: in the catalog as Redis {version:?}'s, Redis does not have it"));
        }
    }
    assert!(problems.is_empty(), "catalog vs Redis {version:?} COMMAND INFO:\n{}", problems.join("\n"));

    // The subcommands whose class differs from their parent's are really resolved as such.
    for (cmd, sub) in
        [("SCRIPT", "FLUSH"), ("FUNCTION", "DELETE"), ("OBJECT", "ENCODING"), ("XINFO", "STREAM")]
    {
        assert!(seen.contains(&format!("{cmd}|{sub}")), "{cmd} {sub}");
    }
    for (cmd, sub) in [("CLIENT", "LIST"), ("CONFIG", "GET")] {
        let class = catalog::resolve(cmd, Some(sub.as_bytes())).unwrap().class;
        assert!(matches!(class, redisgate_core::policy::Class::Refused(_)), "{cmd} {sub}: {class:?}");
    }
}

/// `XREADGROUP GROUP g STREAMS BLOCK 0 STREAMS s >`: consumer `STREAMS` of group `g`, then a
/// real `BLOCK 0`. A detector that stops at the first `STREAMS` forwards it, and the read then
/// holds the shared backend connection, with every other request queued behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disguised_blocking_read_is_refused_and_others_go_on() {
    let redis = Redis::start().await;
    redis.cmd::<()>(&["XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"]).await;
    redis.cmd::<()>(&["SET", "k", "v"]).await;
    let g = Gate::start(settings(&redis)).await;
    let attack = json!(["XREADGROUP", "GROUP", "g", "STREAMS", "BLOCK", 0, "STREAMS", "s", ">"]);
    let send = |path: &str, body: serde_json::Value| {
        g.http.post(g.url(path)).bearer_auth(TOKEN).json(&body).timeout(Duration::from_secs(3)).send()
    };
    for (path, body) in
        [("/", attack.clone()), ("/pipeline", json!([attack])), ("/multi-exec", json!([attack]))]
    {
        let r = send(path, body).await.unwrap_or_else(|e| panic!("{path}: no answer: {e}"));
        assert_eq!(r.status(), 400, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body["error"],
            "ERR command 'XREADGROUP' is not available over REST: \
             blocking commands would hold the shared backend connection",
            "{path}"
        );
    }
    // The same connection still serves everyone else.
    let r = send("/", json!(["GET", "k"])).await.expect("GET answered");
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), json!({"result": "v"}));
    let stats: String = redis.cmd(&["INFO", "commandstats"]).await;
    assert!(!stats.contains("cmdstat_xreadgroup:"), "XREADGROUP reached Redis:\n{stats}");
    // A real non-blocking group read with keyword-named group and consumer passes.
    redis.cmd::<()>(&["XGROUP", "CREATE", "s", "BLOCK", "0"]).await;
    redis.cmd::<String>(&["XADD", "s", "*", "f", "1"]).await;
    let (s, body) =
        g.post_json("/", r#"["XREADGROUP","GROUP","BLOCK","STREAMS","COUNT",1,"STREAMS","s",">"]"#).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["result"][0][0], "s", "{body}");
}

#[tokio::test]
async fn unknown_commands_answer_as_redis_and_never_reach_it() {
    let redis = Redis::start().await;
    let g = Gate::start(settings(&redis)).await;
    let (s, body) = g.post_json("/", r#"["NOSUCHCOMMAND","secret"]"#).await;
    assert_eq!((s, body), (400, json!({"error": "ERR unknown command 'NOSUCHCOMMAND'"})));
    let (s, body) = g.post_json("/", r#"["OBJECT","FROBNICATE","k"]"#).await;
    assert_eq!((s, body), (400, json!({"error": "ERR unknown subcommand 'FROBNICATE'. Try OBJECT HELP."})));
    let (s, body) = g.post_json("/pipeline", r#"[["PING"],["NOSUCHCOMMAND"]]"#).await;
    assert_eq!(s, 400, "{body}");
    // A refused container stays refused whatever subcommand follows, an unknown one too.
    let (s, body) = g.post_json("/", r#"["CLIENT","FUTURE-SUBCOMMAND"]"#).await;
    assert_eq!(s, 400);
    assert!(body["error"].as_str().unwrap().contains("not available over REST"), "{body}");
    // JSON.* is in the catalog (Upstash serves it); this Redis lacks the module and says so.
    let (s, body) = g.post_json("/", r#"["JSON.GET","k"]"#).await;
    assert_eq!(s, 400);
    assert!(body["error"].as_str().unwrap().starts_with("ERR unknown command 'JSON.GET'"), "{body}");
    let stats: String = redis.cmd(&["INFO", "commandstats"]).await;
    assert!(!stats.contains("cmdstat_object:"), "OBJECT FROBNICATE reached Redis:\n{stats}");
    assert!(!stats.contains("cmdstat_client"), "CLIENT reached Redis:\n{stats}");
}

#[tokio::test]
async fn scripts_and_their_management_follow_the_scope() {
    let redis = Redis::start().await;
    let g = Gate::start(settings(&redis)).await;
    let ro = |body: &'static str| g.http.post(g.url("/")).bearer_auth(RO_TOKEN).body(body).send();
    // Read-only tokens run no script, not even a read-only one.
    for body in [
        r#"["EVAL_RO","return redis.call('KEYS','*')",0]"#,
        r#"["FCALL_RO","f",0]"#,
        r#"["SCRIPT","LOAD","return 1"]"#,
    ] {
        let r = ro(body).await.unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let j: serde_json::Value = r.json().await.unwrap();
        assert!(j["error"].as_str().unwrap().starts_with("NOPERM"), "{body}: {j}");
    }
    let r = ro(r#"["FUNCTION","LIST"]"#).await.unwrap();
    assert_eq!(r.status(), 200, "listing functions reads");
    // Admin (the standalone token) loads, runs and flushes.
    let (s, sha) = g.post_json("/", r#"["SCRIPT","LOAD","return 7"]"#).await;
    assert_eq!(s, 200, "{sha}");
    let body = json!(["EVALSHA", sha["result"], 0]).to_string();
    assert_eq!(g.post_json("/", &body).await, (200, json!({"result": 7})));
    assert_eq!(g.post_json("/", r#"["SCRIPT","FLUSH"]"#).await, (200, json!({"result": "OK"})));
    let (s, body) = g.post_json("/", &json!(["EVALSHA", sha["result"], 0]).to_string()).await;
    assert_eq!(s, 400);
    assert!(body["error"].as_str().unwrap().starts_with("NOSCRIPT"), "{body}");
    // SCRIPT DEBUG would put the shared connection in debugging mode.
    let (s, body) = g.post_json("/", r#"["SCRIPT","DEBUG","YES"]"#).await;
    assert_eq!(s, 400);
    assert!(body["error"].as_str().unwrap().contains("not available over REST"), "{body}");
}
