//! No request can stall or flood other tenants: replies are bounded by
//! `http.max_response_bytes`, scripts by `backend.script_timeout`, and scripts' inner calls
//! by the calling key's scope.

use std::time::{Duration, Instant};

use redisgate_server::config::Settings;
use serde_json::{Value, json};

use crate::common::{Gate, Redis, TOKEN, settings};
use crate::instances::{Tenant, redis_cmd};

const MIB: usize = 1024 * 1024;

/// Headers of a request: `Upstash-Encoding`, `Upstash-Response-Format`.
type Headers = &'static [(&'static str, &'static str)];

/// `MGET big big … big` (`n` times) as a command array.
fn mget(n: usize) -> Value {
    let mut cmd = vec![json!("MGET")];
    cmd.extend(std::iter::repeat_n(json!("big"), n));
    Value::Array(cmd)
}

async fn post(g: &Gate, path: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let mut req = g.http.post(g.url(path)).bearer_auth(TOKEN).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.bytes().await.unwrap().to_vec())
}

fn error_of(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|_| panic!("JSON error body"));
    v["error"].as_str().unwrap_or_else(|| panic!("an error field: {v}")).to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_above_max_response_bytes_are_refused_in_every_form() {
    let redis = Redis::start().await;
    let mut s = settings(&redis);
    s.http.max_response_bytes = MIB;
    let g = Gate::start(s).await;
    // 64 KiB of text: 15 copies fit in 1 MiB of JSON, 50 do not.
    redis.cmd::<()>(&["SET", "big", &"x".repeat(64 * 1024)]).await;

    let (status, body) = post(&g, "/", &mget(15), &[]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body[..200.min(body.len())]));
    assert!(body.len() < MIB && body.len() > 15 * 64 * 1024);

    let big = mget(50);
    let cases: [(&str, Value, Headers); 5] = [
        ("/", big.clone(), &[]),
        ("/", big.clone(), &[("upstash-response-format", "resp2")]),
        ("/pipeline", json!([["PING"], big.clone()]), &[]),
        ("/multi-exec", json!([["PING"], big.clone()]), &[]),
        // 15 copies fit as text but not base64-encoded (4/3 larger).
        ("/", mget(15), &[("upstash-encoding", "base64")]),
    ];
    for (path, body, headers) in cases {
        let (status, reply) = post(&g, path, &body, headers).await;
        assert_eq!(
            status,
            400,
            "{path} {headers:?}: {}",
            String::from_utf8_lossy(&reply[..200.min(reply.len())])
        );
        let e = error_of(&reply);
        assert!(e.contains("http.max_response_bytes"), "{e}");
    }
    // Nothing broke on the shared connection.
    let (status, body) = post(&g, "/", &json!(["PING"]), &[]).await;
    assert_eq!((status, body), (200, br#"{"result":"PONG"}"#.to_vec()));
}

/// A control plane whose scripts are killed after 1 s (local instances' busy-reply-threshold).
async fn gate_with_script_timeout() -> Gate {
    let mut s = Settings::default();
    s.backend.script_timeout = Duration::from_secs(1);
    Gate::start_unchecked(s).await
}

/// Refused by an ACL: the gateway's or Redis' NOPERM, or Redis 7.0's text for a script's
/// inner call ("The user executing the script can't run this command").
fn is_acl_refusal(e: &str) -> bool {
    e.contains("NOPERM") || e.contains("can't run this command")
}

fn assert_refused(reply: &(u16, Value)) {
    let (status, body) = reply;
    assert_eq!(*status, 400, "{body}");
    let e = body["error"].as_str().unwrap_or_else(|| panic!("an error field: {body}"));
    assert!(is_acl_refusal(e), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_script_is_killed_and_never_stalls_another_tenant() {
    let g = gate_with_script_timeout().await;
    let a = Tenant::new(&g, "a@example.com").await;
    let b = Tenant::new(&g, "b@example.com").await;
    let (a_key, _) = a.key(json!({"name": "a", "scope": "admin"})).await;
    let (b_key, _) = b.key(json!({"name": "b", "scope": "read-only"})).await;
    assert_eq!(redis_cmd(&g, &b.instance, &b_key, json!(["PING"])).await, (200, json!({"result": "PONG"})));

    let started = Instant::now();
    let endless = {
        let (g, instance, key) = (&g, a.instance.clone(), a_key.clone());
        async move {
            let r = redis_cmd(g, &instance, &key, json!(["EVAL", "while true do end", "0"])).await;
            (r, started.elapsed())
        }
    };
    let pings = async {
        let mut slowest = Duration::ZERO;
        let mut count = 0;
        // Until well after the kill, so B is also measured while A's server is BUSY.
        while started.elapsed() < Duration::from_millis(2500) {
            let t = Instant::now();
            let r = redis_cmd(&g, &b.instance, &b_key, json!(["PING"])).await;
            slowest = slowest.max(t.elapsed());
            assert_eq!(r, (200, json!({"result": "PONG"})));
            count += 1;
        }
        (slowest, count)
    };
    let (((status, body), took), (slowest, count)) = tokio::join!(endless, pings);
    eprintln!("A answered after {took:?}; B: {count} PINGs meanwhile, the slowest took {slowest:?}");
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Script killed by user with SCRIPT KILL"), "{body}");
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(4), "answered after {took:?}");
    // A stall would last until the kill (backend.script_timeout, 1 s); the bound stays well
    // below that but above what a loaded 2-core CI machine shows (one run: 103 ms).
    assert!(slowest < Duration::from_millis(500), "B's slowest PING took {slowest:?} ({count} PINGs)");
    // A's instance (and its shared connection) serves again.
    assert_eq!(redis_cmd(&g, &a.instance, &a_key, json!(["PING"])).await, (200, json!({"result": "PONG"})));
    assert_eq!(
        redis_cmd(&g, &a.instance, &a_key, json!(["EVAL", "return 7", "0"])).await,
        (200, json!({"result": 7}))
    );
}

/// On an external instance the script runs on the shared connection, which must serve again
/// once the script is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_script_on_an_external_instance_is_killed_over_a_connection_of_its_own() {
    let redis = Redis::start().await;
    // The owner's server: its own threshold (Redis' default is 5 s) decides when a kill lands.
    redis.cmd::<()>(&["CONFIG", "SET", "busy-reply-threshold", "1000"]).await;
    let g = gate_with_script_timeout().await;
    let a = Tenant::external(&g, "a@example.com", &redis.url()).await;
    let (key, _) = a.key(json!({"name": "a", "scope": "admin"})).await;
    let started = Instant::now();
    let endless = redis_cmd(&g, &a.instance, &key, json!(["EVAL", "while true do end", "0"]));
    // Queued behind the script on the shared connection: answered once it is killed.
    let queued = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        redis_cmd(&g, &a.instance, &key, json!(["SET", "after", "1"])).await
    };
    let ((status, body), queued) = tokio::join!(endless, queued);
    let took = started.elapsed();
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("Script killed by user with SCRIPT KILL"), "{body}");
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(4), "answered after {took:?}");
    assert_eq!(queued, (200, json!({"result": "OK"})));
    assert_eq!(redis_cmd(&g, &a.instance, &key, json!(["PING"])).await, (200, json!({"result": "PONG"})));
}

/// The scope users live in the server's memory: after the server restarts, the next script
/// gets them back (with a 503 at most while the gateway notices, never a re-sent command).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_users_come_back_after_the_local_server_restarts() {
    let g = gate_with_script_timeout().await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let (rw, _) = t.key(json!({"name": "rw", "scope": "read-write"})).await;
    let flush = json!(["EVAL", "return redis.call('FLUSHALL')", "0"]);
    assert_refused(&redis_cmd(&g, &t.instance, &rw, flush.clone()).await);
    let (_, info) = redis_cmd(&g, &t.instance, &rw, json!(["INFO", "server"])).await;
    let info = info["result"].as_str().unwrap().to_owned();
    let pid = info.lines().find_map(|l| l.strip_prefix("process_id:")).unwrap().trim().to_owned();
    // Our own grandchild, the instance's redis-server: its supervisor restarts it.
    assert!(std::process::Command::new("kill").args(["-9", &pid]).status().unwrap().success());

    let get = json!(["EVAL_RO", "return redis.call('GET', 'missing')", "0"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = redis_cmd(&g, &t.instance, &rw, get.clone()).await;
        if status == 200 {
            assert_eq!(body, json!({"result": null}));
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(body["error"].is_string(), "{body}");
        assert!(Instant::now() < deadline, "scripts never served again: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The restarted server got the read-write user back, with its limits.
    assert_refused(&redis_cmd(&g, &t.instance, &rw, flush).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_wrote_cannot_be_killed_and_gets_a_504_while_it_runs_on() {
    let g = gate_with_script_timeout().await;
    let a = Tenant::new(&g, "a@example.com").await;
    let (key, _) = a.key(json!({"name": "a", "scope": "admin"})).await;
    // Writes, then spins for 2 s of server time: SCRIPT KILL must refuse (UNKILLABLE).
    let script = "redis.call('SET', KEYS[1], 'written') local t0 = redis.call('TIME')[1] \
                  while redis.call('TIME')[1] - t0 < 2 do end return 1";
    let started = Instant::now();
    let (status, body) = redis_cmd(&g, &a.instance, &key, json!(["EVAL", script, "1", "k"])).await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(body["error"].as_str().unwrap().contains("backend.script_timeout"), "{body}");
    assert!(took < Duration::from_millis(1900), "answered after {took:?}");
    // Once the script has ended on its own, the instance serves again, with its write.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = redis_cmd(&g, &a.instance, &key, json!(["GET", "k"])).await;
        if r == (200, json!({"result": "written"})) {
            break;
        }
        assert!(Instant::now() < deadline, "instance still busy: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_script_can_migrate_or_reconfigure_the_server() {
    let g = gate_with_script_timeout().await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let (key, _) = t.key(json!({"name": "admin", "scope": "admin"})).await;
    assert_eq!(redis_cmd(&g, &t.instance, &key, json!(["SET", "k", "v"])).await.0, 200);

    // MIGRATE would have the Redis server connect to any host; here a loopback listener.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let migrate = "return redis.call('MIGRATE', '127.0.0.1', ARGV[1], KEYS[1], 0, 500)";
    let r = redis_cmd(&g, &t.instance, &key, json!(["EVAL", migrate, "1", "k", port])).await;
    assert_refused(&r);
    let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(accepted.is_err(), "the server connected out");

    for script in [
        "return redis.call('CONFIG', 'SET', 'maxmemory', '0')",
        "return redis.call('DEBUG', 'SLEEP', '0')",
        "return redis.call('SHUTDOWN', 'NOSAVE')",
        "return redis.call('ACL', 'SETUSER', 'x', 'on', '>p', '+@all')",
        "return redis.call('REPLICAOF', '127.0.0.1', '1')",
        "return redis.call('SWAPDB', '0', '1')",
    ] {
        let (status, body) = redis_cmd(&g, &t.instance, &key, json!(["EVAL", script, "0"])).await;
        assert_eq!(status, 400, "{script}: {body}");
    }
    assert_eq!(redis_cmd(&g, &t.instance, &key, json!(["GET", "k"])).await, (200, json!({"result": "v"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_with_the_rights_of_the_keys_scope() {
    let g = gate_with_script_timeout().await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let (admin, _) = t.key(json!({"name": "admin", "scope": "admin"})).await;
    let (rw, _) = t.key(json!({"name": "rw", "scope": "read-write"})).await;
    let (ro, _) = t.key(json!({"name": "ro", "scope": "read-only"})).await;
    assert_eq!(redis_cmd(&g, &t.instance, &rw, json!(["SET", "k", "v"])).await.0, 200);

    // Read-only keys run no scripts: a script is the way around the read-only bans.
    let keys = json!(["EVAL_RO", "return redis.call('KEYS', '*')", "0"]);
    assert_refused(&redis_cmd(&g, &t.instance, &ro, keys.clone()).await);
    assert_eq!(redis_cmd(&g, &t.instance, &rw, keys).await, (200, json!({"result": ["k"]})));

    // A read-write key's script runs as the read-write ACL user, which cannot flush.
    let flush = json!(["EVAL", "return redis.call('FLUSHALL')", "0"]);
    assert_refused(&redis_cmd(&g, &t.instance, &rw, flush.clone()).await);
    assert_eq!(redis_cmd(&g, &t.instance, &rw, json!(["GET", "k"])).await, (200, json!({"result": "v"})));
    // The same script in a pipeline and a transaction.
    for path in ["pipeline", "multi-exec"] {
        let r = g
            .http
            .post(g.url(&format!("/redis/{}/{path}", t.instance)))
            .bearer_auth(&rw)
            .json(&json!([["GET", "k"], flush]))
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        assert!(body[1]["error"].as_str().is_some_and(is_acl_refusal), "{path}: {body}");
    }
    assert_eq!(redis_cmd(&g, &t.instance, &rw, json!(["GET", "k"])).await, (200, json!({"result": "v"})));
    // Admin keys may flush, from a script too.
    let r = redis_cmd(&g, &t.instance, &admin, flush).await;
    assert_eq!(r, (200, json!({"result": "OK"})));
    assert_eq!(redis_cmd(&g, &t.instance, &rw, json!(["GET", "k"])).await, (200, json!({"result": null})));
}

/// ZRANGE with LIMIT on a rank range is emulated with RedisGate's own Lua (PROTOCOL.md §10):
/// a read-only key, which may send no script itself, still gets the read it asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_scripts_run_for_read_only_keys() {
    let g = gate_with_script_timeout().await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let (rw, _) = t.key(json!({"name": "rw", "scope": "read-write"})).await;
    let (ro, _) = t.key(json!({"name": "ro", "scope": "read-only"})).await;
    let zadd = json!(["ZADD", "z", 1, "a", 2, "b", 3, "c"]);
    assert_eq!(redis_cmd(&g, &t.instance, &rw, zadd).await, (200, json!({"result": 3})));
    let zrange = json!(["ZRANGE", "z", 0, -1, "LIMIT", 1, 1]);
    assert_eq!(redis_cmd(&g, &t.instance, &ro, zrange.clone()).await, (200, json!({"result": ["b"]})));
    for path in ["pipeline", "multi-exec"] {
        let r = g
            .http
            .post(g.url(&format!("/redis/{}/{path}", t.instance)))
            .bearer_auth(&ro)
            .json(&json!([zrange]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.json::<Value>().await.unwrap(), json!([{"result": ["b"]}]), "{path}");
    }
}

/// `@upstash/ratelimit` sends scripts with Upstash's own shebang flag and calls them by the SHA
/// it computed: EVALSHA, on NOSCRIPT SCRIPT LOAD (expecting its SHA back), then EVALSHA again.
/// Plain Redis refuses the flag; the gateway drops it and keeps the client's SHA working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstash_shebang_scripts_run_under_the_clients_sha() {
    let g = gate_with_script_timeout().await;
    let t = Tenant::new(&g, "ann@example.com").await;
    let (rw, _) = t.key(json!({"name": "rw", "scope": "read-write"})).await;
    let script = "#!lua flags=allow-key-locking\nreturn redis.call('INCR', KEYS[1])";
    let sha = redisgate_core::compat::script_sha(script.as_bytes());
    let evalsha = json!(["EVALSHA", sha, 1, "hits"]);
    let (s, body) = redis_cmd(&g, &t.instance, &rw, evalsha.clone()).await;
    assert_eq!(s, 400, "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("NOSCRIPT"), "{body}");
    let load = json!(["SCRIPT", "LOAD", script]);
    assert_eq!(redis_cmd(&g, &t.instance, &rw, load.clone()).await, (200, json!({"result": sha})));
    assert_eq!(redis_cmd(&g, &t.instance, &rw, evalsha.clone()).await, (200, json!({"result": 1})));
    let eval = json!(["EVAL", script, 1, "hits"]);
    assert_eq!(redis_cmd(&g, &t.instance, &rw, eval).await, (200, json!({"result": 2})));
    let exists = json!(["SCRIPT", "EXISTS", sha]);
    assert_eq!(redis_cmd(&g, &t.instance, &rw, exists).await, (200, json!({"result": [1]})));
    for (path, first) in [("pipeline", 3), ("multi-exec", 4)] {
        let r = g
            .http
            .post(g.url(&format!("/redis/{}/{path}", t.instance)))
            .bearer_auth(&rw)
            .json(&json!([load, evalsha]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.json::<Value>().await.unwrap(), json!([{"result": sha}, {"result": first}]), "{path}");
    }
}
