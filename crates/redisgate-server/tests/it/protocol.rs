//! PROTOCOL.md §1–§8 and §10 against a real redis-server, byte for byte where it matters.

use serde_json::json;

use crate::common::{Gate, RO_TOKEN, Redis, TOKEN, settings};

async fn setup() -> (Redis, Gate) {
    let redis = Redis::start().await;
    let gate = Gate::start(settings(&redis)).await;
    (redis, gate)
}

async fn raw(r: reqwest::Response) -> (u16, String) {
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn body_form_and_envelope() {
    let (redis, g) = setup().await;
    assert_eq!(raw(g.post("/", r#"["SET","k","v"]"#).await).await, (200, r#"{"result":"OK"}"#.into()));
    assert_eq!(raw(g.post("/", r#"["get","k"]"#).await).await, (200, r#"{"result":"v"}"#.into()));
    // `result` is present even when null.
    assert_eq!(raw(g.post("/", r#"["GET","missing"]"#).await).await, (200, r#"{"result":null}"#.into()));
    // Numbers go to Redis exactly as written.
    g.post("/", r#"["SET","n",1e21]"#).await;
    assert_eq!(redis.cmd::<String>(&["GET", "n"]).await, "1e21");
    g.post("/", r#"["SET","b",true]"#).await;
    assert_eq!(redis.cmd::<String>(&["GET", "b"]).await, "true");
    // Redis errors keep their exact text, with status 400.
    assert_eq!(
        raw(g.post("/", r#"["INCR","k"]"#).await).await,
        (400, r#"{"error":"ERR value is not an integer or out of range"}"#.into())
    );
    let (s, body) = g.post_json("/", r#"["LPUSH","k","x"]"#).await;
    assert_eq!(
        (s, body["error"].as_str().unwrap()),
        (400, "WRONGTYPE Operation against a key holding the wrong kind of value")
    );
    // Bad bodies: 400 with a JSON error, nothing sent.
    for bad in ["", "{}", "[]", "[null]", r#"["SET","k",{"a":1}]"#, "not json"] {
        let (s, body) = g.post_json("/", bad).await;
        assert_eq!(s, 400, "{bad}");
        assert!(body["error"].as_str().unwrap().starts_with("ERR"), "{bad}: {body}");
    }
    assert_eq!(redis.cmd::<String>(&["GET", "k"]).await, "v");
}

#[tokio::test]
async fn path_form_appends_body_then_query() {
    let (redis, g) = setup().await;
    let get = |p: &str| g.http.get(g.url(p)).bearer_auth(TOKEN).send();
    assert_eq!(raw(get("/set/foo/bar/EX/100").await.unwrap()).await.0, 200);
    assert!(redis.cmd::<i64>(&["TTL", "foo"]).await > 0);
    // The raw body is the last argument, query parameters come after it; `_token` is not one.
    let r = g
        .http
        .post(g.url("/set/doc?EX=100&NX&_token=ignored"))
        .bearer_auth(TOKEN)
        .body(r#"{"a":[1,2]}"#)
        .send();
    assert_eq!(raw(r.await.unwrap()).await, (200, r#"{"result":"OK"}"#.into()));
    assert_eq!(redis.cmd::<String>(&["GET", "doc"]).await, r#"{"a":[1,2]}"#);
    assert!(redis.cmd::<i64>(&["TTL", "doc"]).await > 0);
    // Percent-decoding per segment: %2F is a literal slash, binary bytes pass through.
    assert_eq!(raw(get("/set/a%2Fb/x%20y%FF").await.unwrap()).await.0, 200);
    assert_eq!(redis.cmd::<Vec<u8>>(&["GET", "a/b"]).await, b"x y\xff");
    // Trailing slash and doubled slashes are accepted; PUT works like POST.
    assert_eq!(raw(get("//get/a%2Fb/").await.unwrap()).await, (200, "{\"result\":\"x y\u{fffd}\"}".into()));
    let r = g.http.put(g.url("/set/put-key")).bearer_auth(TOKEN).body("v").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // HEAD answers with headers only.
    let r = g.http.head(g.url("/get/foo")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("upstash-sync-token"));
    assert_eq!(r.text().await.unwrap(), "");
}

#[tokio::test]
async fn pipeline_items_and_errors() {
    let (_redis, g) = setup().await;
    let (s, body) = g
        .post("/pipeline", r#"[["SET","a","1"],["SET","b","x"],["INCR","b"],["INCR","a"],["GET","a"]]"#)
        .await
        .text()
        .await
        .map(|t| (200, t))
        .unwrap();
    assert_eq!(s, 200);
    assert_eq!(
        body,
        r#"[{"result":"OK"},{"result":"OK"},{"error":"ERR value is not an integer or out of range"},{"result":2},{"result":"2"}]"#
    );
    assert_eq!(raw(g.post("/pipeline", "[]").await).await, (200, "[]".into()));
    for bad in [r#"["GET","a"]"#, "[[]]", "{}", r#"[["GET",null]]"#] {
        let (s, body) = g.post_json("/pipeline", bad).await;
        assert_eq!(s, 400, "{bad}");
        assert!(body["error"].is_string());
    }
    // Path arguments after a reserved head are refused, not ignored.
    assert_eq!(g.post_json("/pipeline/x", "[]").await.0, 400);
}

#[tokio::test]
async fn multi_exec_runtime_errors_and_discards() {
    let (redis, g) = setup().await;
    assert_eq!(
        raw(g.post("/multi-exec", r#"[["SET","t","x"],["INCR","t"],["GET","t"]]"#).await).await,
        (
            200,
            r#"[{"result":"OK"},{"error":"ERR value is not an integer or out of range"},{"result":"x"}]"#
                .into()
        )
    );
    // A command that fails to queue discards the whole transaction: one error, status 400.
    let (s, body) = g.post_json("/multi-exec", r#"[["SET","t","y"],["SET","t"]]"#).await;
    assert_eq!(s, 400);
    let e = body["error"].as_str().unwrap();
    assert!(e.starts_with("EXECABORT Transaction discarded because of previous errors."), "{e}");
    assert!(e.contains("wrong number of arguments"), "{e}");
    assert_eq!(redis.cmd::<String>(&["GET", "t"]).await, "x", "nothing of a discarded transaction ran");
    assert_eq!(raw(g.post("/multi-exec", "[]").await).await, (200, "[]".into()));
}

#[tokio::test]
async fn base64_encoding_is_exact() {
    let (_redis, g) = setup().await;
    let b64 = |path: &'static str, body: &'static str| {
        g.http.post(g.url(path)).bearer_auth(TOKEN).header("Upstash-Encoding", "base64").body(body).send()
    };
    // Top-level OK stays plain; every other string is encoded, status replies included.
    assert_eq!(raw(b64("/", r#"["SET","k","bar"]"#).await.unwrap()).await.1, r#"{"result":"OK"}"#);
    assert_eq!(raw(b64("/", r#"["GET","k"]"#).await.unwrap()).await.1, r#"{"result":"YmFy"}"#);
    assert_eq!(raw(b64("/", r#"["PING"]"#).await.unwrap()).await.1, r#"{"result":"UE9ORw=="}"#);
    assert_eq!(raw(b64("/", r#"["TYPE","k"]"#).await.unwrap()).await.1, r#"{"result":"c3RyaW5n"}"#);
    assert_eq!(raw(b64("/", r#"["STRLEN","k"]"#).await.unwrap()).await.1, r#"{"result":3}"#);
    assert_eq!(raw(b64("/", r#"["GET","nope"]"#).await.unwrap()).await.1, r#"{"result":null}"#);
    b64("/", r#"["RPUSH","l","a","OK"]"#).await.unwrap();
    assert_eq!(
        raw(b64("/", r#"["LRANGE","l",0,-1]"#).await.unwrap()).await.1,
        r#"{"result":["YQ==","T0s="]}"#
    );
    // Errors are never encoded; each pipeline item is its own top level.
    assert_eq!(
        raw(b64("/", r#"["INCR","k"]"#).await.unwrap()).await,
        (400, r#"{"error":"ERR value is not an integer or out of range"}"#.into())
    );
    assert_eq!(
        raw(b64("/pipeline", r#"[["SET","p","v"],["GET","p"],["INCR","p"],["PING"]]"#).await.unwrap())
            .await
            .1,
        r#"[{"result":"OK"},{"result":"dg=="},{"error":"ERR value is not an integer or out of range"},{"result":"UE9ORw=="}]"#
    );
    assert_eq!(
        raw(b64("/multi-exec", r#"[["SET","m","v"],["GET","m"]]"#).await.unwrap()).await.1,
        r#"[{"result":"OK"},{"result":"dg=="}]"#
    );
    // Other header values mean "no encoding".
    let r = g
        .http
        .post(g.url("/"))
        .bearer_auth(TOKEN)
        .header("Upstash-Encoding", "hex")
        .body(r#"["GET","k"]"#)
        .send();
    assert_eq!(raw(r.await.unwrap()).await.1, r#"{"result":"bar"}"#);
}

#[tokio::test]
async fn resp2_format_is_raw_bytes() {
    let (_redis, g) = setup().await;
    let resp2 = |path: &'static str, body: &'static str| {
        g.http
            .post(g.url(path))
            .bearer_auth(TOKEN)
            .header("Upstash-Response-Format", "resp2")
            .body(body)
            .send()
    };
    let r = resp2("/", r#"["SET","k","bar"]"#).await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"+OK\r\n");
    assert_eq!(resp2("/", r#"["GET","k"]"#).await.unwrap().bytes().await.unwrap().as_ref(), b"$3\r\nbar\r\n");
    assert_eq!(resp2("/", r#"["GET","none"]"#).await.unwrap().bytes().await.unwrap().as_ref(), b"$-1\r\n");
    assert_eq!(
        resp2("/pipeline", r#"[["INCR","c"],["MGET","k","none"]]"#)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        b":1\r\n*2\r\n$3\r\nbar\r\n$-1\r\n"
    );
    // /multi-exec always answers JSON.
    assert_eq!(raw(resp2("/multi-exec", r#"[["GET","k"]]"#).await.unwrap()).await.1, r#"[{"result":"bar"}]"#);
    // Errors stay JSON with status 400.
    assert_eq!(raw(resp2("/", r#"["INCR","k"]"#).await.unwrap()).await.0, 400);
    let bad = g
        .http
        .post(g.url("/"))
        .bearer_auth(TOKEN)
        .header("Upstash-Response-Format", "xml")
        .body(r#"["GET","k"]"#);
    assert_eq!(raw(bad.send().await.unwrap()).await.0, 400);
    let both = g
        .http
        .post(g.url("/"))
        .bearer_auth(TOKEN)
        .header("Upstash-Response-Format", "resp2")
        .header("Upstash-Encoding", "base64")
        .body(r#"["GET","k"]"#);
    let (s, body) = raw(both.send().await.unwrap()).await;
    assert_eq!(s, 400);
    assert!(body.contains("cannot be combined"), "{body}");
}

#[tokio::test]
async fn sync_token_changes_on_every_response() {
    let (_redis, g) = setup().await;
    let mut seen = std::collections::HashSet::new();
    for body in [r#"["SET","k","v"]"#, r#"["GET","k"]"#, r#"["INCR","k"]"#] {
        let r = g
            .http
            .post(g.url("/"))
            .bearer_auth(TOKEN)
            .header("upstash-sync-token", "my-new-sync-token")
            .body(body)
            .send();
        let r = r.await.unwrap();
        assert!(seen.insert(r.headers()["upstash-sync-token"].to_str().unwrap().to_owned()));
    }
    let r =
        g.http.post(g.url("/pipeline")).bearer_auth(TOKEN).header("upstash-sync-token", "").body("[]").send();
    assert!(seen.insert(r.await.unwrap().headers()["upstash-sync-token"].to_str().unwrap().to_owned()));
    // Concurrent requests get distinct tokens too.
    let many = futures_util::future::join_all((0..50).map(|_| g.post("/", r#"["SET","c","v"]"#))).await;
    for r in many {
        assert!(seen.insert(r.headers()["upstash-sync-token"].to_str().unwrap().to_owned()));
    }
}

#[tokio::test]
async fn authentication() {
    let (redis, g) = setup().await;
    let wrongpass = r#"{"error":"WRONGPASS invalid or missing auth token"}"#;
    let r = g.http.post(g.url("/")).body(r#"["SET","k","v"]"#).send().await.unwrap();
    assert_eq!(raw(r).await, (401, wrongpass.into()));
    let r = g
        .http
        .post(g.url("/"))
        .bearer_auth("wrong-token-123")
        .body(r#"["SET","k","v"]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(raw(r).await, (401, wrongpass.into()));
    let r =
        g.http.post(g.url("/")).header("Authorization", format!("Basic {TOKEN}")).body(r#"["PING"]"#).send();
    assert_eq!(raw(r.await.unwrap()).await.0, 401);
    assert_eq!(redis.cmd::<Option<String>>(&["GET", "k"]).await, None);
    // `_token` works on every endpoint, and is never a command argument.
    let r = g.http.post(g.url(&format!("/set/k/v?_token={TOKEN}"))).send().await.unwrap();
    assert_eq!(raw(r).await, (200, r#"{"result":"OK"}"#.into()));
    let r = g
        .http
        .post(g.url(&format!("/pipeline?_token={TOKEN}")))
        .body(r#"[["GET","k"]]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(raw(r).await, (200, r#"[{"result":"v"}]"#.into()));
    // The header wins over `_token`.
    let r = g.http.post(g.url("/set/k/w?_token=wrong-token-123")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(raw(r).await.0, 200);
    let r = g
        .http
        .post(g.url(&format!("/set/k/w?_token={TOKEN}")))
        .bearer_auth("wrong-token-123")
        .send()
        .await
        .unwrap();
    assert_eq!(raw(r).await.0, 401);
}

#[tokio::test]
async fn methods_and_cors() {
    let (_redis, g) = setup().await;
    for m in [reqwest::Method::DELETE, reqwest::Method::PATCH] {
        let r = g.http.request(m.clone(), g.url("/get/k")).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 405, "{m}");
        assert_eq!(r.headers()["allow"], "GET, POST, PUT, HEAD");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"].is_string());
    }
    // Browser preflight, then the actual request exposes the sync token.
    let pre = g
        .http
        .request(reqwest::Method::OPTIONS, g.url("/"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "authorization,content-type,upstash-encoding")
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success());
    assert_eq!(pre.headers()["access-control-allow-origin"], "*");
    assert!(pre.headers()["access-control-allow-headers"].to_str().unwrap().contains("upstash-encoding"));
    assert!(!pre.headers().contains_key("access-control-allow-credentials"));
    let r = g
        .http
        .post(g.url("/"))
        .bearer_auth(TOKEN)
        .header("Origin", "https://app.example")
        .body(r#"["PING"]"#)
        .send();
    let r = r.await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert_eq!(r.headers()["access-control-expose-headers"], "upstash-sync-token");
    // A caller that is not a browser sends no Origin and gets no CORS headers: with the `*`
    // origin the answer does not vary by origin, so there is nothing to tell caches either.
    let r = g.http.post(g.url("/")).bearer_auth(TOKEN).body(r#"["PING"]"#).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    assert!(!r.headers().contains_key("vary"));
}

#[tokio::test]
async fn cors_origin_list() {
    let redis = Redis::start().await;
    let mut s = settings(&redis);
    s.cors.allowed_origins = vec!["https://good.example".into()];
    let g = Gate::start(s).await;
    let ask = |origin: &'static str| {
        g.http
            .request(reqwest::Method::OPTIONS, g.url("/"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .send()
    };
    assert_eq!(
        ask("https://good.example").await.unwrap().headers()["access-control-allow-origin"],
        "https://good.example"
    );
    assert!(
        !ask("https://evil.example").await.unwrap().headers().contains_key("access-control-allow-origin")
    );
    // With an origin list the answer varies by origin, so even one asked without Origin says so.
    let r = g.http.post(g.url("/")).bearer_auth(TOKEN).body(r#"["PING"]"#).send().await.unwrap();
    assert!(r.headers()["vary"].to_str().unwrap().contains("origin"), "{:?}", r.headers());
}

#[tokio::test]
async fn read_only_tokens_refuse_writes_in_every_form() {
    let (redis, g) = setup().await;
    redis.cmd::<()>(&["SET", "k", "v"]).await;
    let ro = |method: reqwest::Method, path: &str, body: &'static str| {
        g.http.request(method, g.url(path)).bearer_auth(RO_TOKEN).body(body).send()
    };
    let noperm = "NOPERM this token has no permissions to run the 'set' command";
    for (path, body) in [
        ("/", r#"["SET","k","x"]"#),
        ("/set/k/x", ""),
        ("/pipeline", r#"[["GET","k"],["SET","k","x"]]"#),
        ("/multi-exec", r#"[["SET","k","x"]]"#),
    ] {
        let (s, body) = raw(ro(reqwest::Method::POST, path, body).await.unwrap()).await;
        assert_eq!(s, 400, "{path}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            json!({ "error": noperm }),
            "{path}"
        );
    }
    assert_eq!(redis.cmd::<String>(&["GET", "k"]).await, "v", "no write went through");
    assert_eq!(
        raw(ro(reqwest::Method::GET, "/get/k", "").await.unwrap()).await,
        (200, r#"{"result":"v"}"#.into())
    );
    assert_eq!(
        raw(ro(reqwest::Method::POST, "/pipeline", r#"[["GET","k"],["STRLEN","k"]]"#).await.unwrap()).await.0,
        200
    );
    // Keyspace walks and MONITOR are refused too.
    assert_eq!(raw(ro(reqwest::Method::POST, "/", r#"["KEYS","*"]"#).await.unwrap()).await.0, 400);
    assert_eq!(raw(ro(reqwest::Method::POST, "/monitor", "").await.unwrap()).await.0, 400);
}

#[tokio::test]
async fn connection_state_commands_never_reach_redis() {
    let (redis, g) = setup().await;
    let refused = [
        r#"["SELECT",1]"#,
        r#"["AUTH","x"]"#,
        r#"["HELLO","3"]"#,
        r#"["CLIENT","SETNAME","x"]"#,
        r#"["RESET"]"#,
        r#"["QUIT"]"#,
        r#"["MULTI"]"#,
        r#"["EXEC"]"#,
        r#"["WATCH","k"]"#,
        r#"["BLPOP","l",0]"#,
        r#"["BRPOP","l",0]"#,
        r#"["BZPOPMIN","z",0]"#,
        r#"["XREAD","BLOCK",0,"STREAMS","s","$"]"#,
        r#"["SUBSCRIBE","ch"]"#,
        r#"["MONITOR"]"#,
        r#"["REPLICAOF","127.0.0.1","1"]"#,
        r#"["CONFIG","SET","requirepass","x"]"#,
        r#"["SHUTDOWN"]"#,
        r#"["DEBUG","SLEEP","1"]"#,
        r#"["MIGRATE","127.0.0.1",1,"k",0,1]"#,
    ];
    for body in refused {
        let (s, j) = g.post_json("/", body).await;
        assert_eq!(s, 400, "{body}");
        assert!(j["error"].as_str().unwrap().contains("not available over REST"), "{body}: {j}");
        let cmds = format!("[{body}]");
        assert_eq!(g.post_json("/pipeline", &cmds).await.0, 400, "pipeline {body}");
        assert_eq!(g.post_json("/multi-exec", &cmds).await.0, 400, "multi-exec {body}");
    }
    assert_eq!(g.http.get(g.url("/select/1")).bearer_auth(TOKEN).send().await.unwrap().status(), 400);
    // Redis never saw any of them (commandstats lists every command it ran).
    let stats: String = redis.cmd(&["INFO", "commandstats"]).await;
    for name in [
        "select",
        "auth",
        "hello",
        "client",
        "reset",
        "quit",
        "multi",
        "exec",
        "watch",
        "blpop",
        "brpop",
        "bzpopmin",
        "xread",
        "subscribe",
        "monitor",
        "replicaof",
        "config",
        "shutdown",
        "debug",
        "migrate",
    ] {
        assert!(!stats.contains(&format!("cmdstat_{name}:")), "{name} reached Redis:\n{stats}");
    }
    // PING and ECHO are the connection commands that pass.
    assert_eq!(g.post_json("/", r#"["ECHO","hi"]"#).await.1, json!({"result": "hi"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_stay_atomic() {
    let (_redis, g) = setup().await;
    let tx = r#"[["INCR","a"],["INCR","b"],["INCR","c"]]"#;
    for round in 0..1000 {
        let (t1, t2, t3, m) = tokio::join!(
            g.post_json("/multi-exec", tx),
            g.post_json("/multi-exec", tx),
            g.post_json("/multi-exec", tx),
            g.post_json("/", r#"["MGET","a","b","c"]"#)
        );
        for (s, t) in [t1, t2, t3] {
            assert_eq!(s, 200);
            let v: Vec<i64> = t.as_array().unwrap().iter().map(|i| i["result"].as_i64().unwrap()).collect();
            assert!(v[0] == v[1] && v[1] == v[2], "round {round}: transaction saw {v:?}");
        }
        let vals = m.1["result"].as_array().unwrap().clone();
        assert!(vals[0] == vals[1] && vals[1] == vals[2], "round {round}: MGET saw {vals:?}");
    }
    assert_eq!(
        g.post_json("/", r#"["MGET","a","b","c"]"#).await.1,
        json!({"result": ["3000", "3000", "3000"]})
    );
}

#[tokio::test]
async fn upstash_specific_semantics() {
    let (redis, g) = setup().await;
    g.post("/", r#"["ZADD","z",1,"m1",2,"m2",3,"m3",4,"m4"]"#).await;
    let zr = |body: &'static str| g.post_json("/", body);
    assert_eq!(zr(r#"["ZRANGE","z",0,2,"LIMIT",1,1]"#).await.1, json!({"result": ["m2"]}));
    assert_eq!(
        zr(r#"["ZRANGE","z",0,-1,"LIMIT",1,2,"WITHSCORES"]"#).await.1,
        json!({"result": ["m2", "2", "m3", "3"]})
    );
    assert_eq!(zr(r#"["ZRANGE","z",0,-1,"REV","LIMIT",0,2]"#).await.1, json!({"result": ["m4", "m3"]}));
    assert_eq!(zr(r#"["ZRANGE","z",-2,-1,"LIMIT",0,-1]"#).await.1, json!({"result": ["m3", "m4"]}));
    assert_eq!(zr(r#"["ZRANGE","z",0,-1,"LIMIT",10,1]"#).await.1, json!({"result": []}));
    assert_eq!(zr(r#"["ZRANGE","empty",0,-1,"LIMIT",0,1]"#).await.1, json!({"result": []}));
    // With BYSCORE, Redis' own LIMIT applies unchanged.
    assert_eq!(zr(r#"["ZRANGE","z",2,4,"BYSCORE","LIMIT",1,1]"#).await.1, json!({"result": ["m3"]}));
    assert_eq!(zr(r#"["ZRANGESTORE","dst","z",0,2,"LIMIT",1,1]"#).await.1, json!({"result": 1}));
    assert_eq!(redis.cmd::<Vec<String>>(&["ZRANGE", "dst", "0", "-1"]).await, ["m2"]);
    assert_eq!(zr(r#"["UNLINK"]"#).await, (200, json!({"result": 0})));
    g.post("/", r#"["SET","k","v"]"#).await;
    assert_eq!(zr(r#"["COPY","k","k"]"#).await, (200, json!({"result": 0})));
    assert_eq!(zr(r#"["COPY","k","k2"]"#).await, (200, json!({"result": 1})));
    // The same rules apply inside batches, in their place.
    assert_eq!(
        g.post_json("/pipeline", r#"[["UNLINK"],["ZRANGE","z",0,2,"LIMIT",1,1],["COPY","k","k"]]"#).await.1,
        json!([{"result": 0}, {"result": ["m2"]}, {"result": 0}])
    );
    assert_eq!(
        g.post_json("/multi-exec", r#"[["UNLINK"],["ZRANGE","z",0,2,"LIMIT",1,1],["GET","k"]]"#).await.1,
        json!([{"result": 0}, {"result": ["m2"]}, {"result": "v"}])
    );
}

/// Standalone mode shares the listener with the API: paths the router owns go to it, every
/// other path is a command.
#[tokio::test]
async fn standalone_paths_beside_the_router() {
    let redis = Redis::start().await;
    let g = Gate::start(settings(&redis)).await;
    let r = g.post("/echo/hello", "").await;
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, r#"{"result":"hello"}"#.to_owned()));
    let r = g.http.get(g.url("/health/live")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    for path in ["/api/nothing-here", "/redis/", "/auth"] {
        let r = g.http.get(g.url(path)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(body["error"].is_string(), "{path}: {body}");
    }
}
