//! The `redisgate` binary as users run it: SRH's environment and tokens file as a drop-in,
//! `--listen`, SIGTERM, and `config default`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_redisgate");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis(extra: &[&str]) -> (Proc, u16) {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server installed");
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Proc(child), port)
}

/// A fresh directory for the server's state, kept until the test process ends.
fn data_dir() -> std::path::PathBuf {
    tempfile::tempdir().unwrap().keep()
}

/// Starts `redisgate serve` and returns it with the port it printed and its log so far.
fn serve(env: &[(&str, &str)], args: &[&str]) -> (Proc, u16, Arc<Mutex<String>>) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .env_clear()
        .env("REDISGATE_DATA_DIR", data_dir())
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Log lines may come first (the OpenTelemetry export announces itself).
    let mut early = String::new();
    let line = loop {
        let line = lines.next().unwrap_or_else(|| panic!("no start-up line in:\n{early}")).unwrap();
        if line.contains("serving on http://") {
            break line;
        }
        early += &(line + "\n");
    };
    let port = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    // Keep draining logs so the child never blocks on a full pipe.
    let log = Arc::new(Mutex::new(early + &line + "\n"));
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        lines.map_while(Result::ok).for_each(|l| sink.lock().unwrap().push_str(&(l + "\n")))
    });
    (Proc(child), port, log)
}

/// One HTTP/1.1 request with `Connection: close`; the whole answer as text.
fn http(port: u16, request_line: &str, token: &str, body: &str) -> String {
    http_with(port, request_line, &[("Authorization", &format!("Bearer {token}"))], body)
}

/// [`http`] with any headers.
fn http_with(port: u16, request_line: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let headers: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        s,
        "{request_line} HTTP/1.1\r\nHost: t\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Waits for the backend connection: the first requests may see 503 while it connects.
fn until_ok(port: u16, token: &str, body: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = http(port, "POST /", token, body);
        if answer.starts_with("HTTP/1.1 200") || Instant::now() > deadline {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm_and_wait(p: &mut Proc) -> std::process::ExitStatus {
    let pid = p.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = p.0.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn srh_env_mode_is_a_drop_in_and_never_logs_secrets() {
    let (_redis, rport) = redis(&["--requirepass", "redis-password-xyz"]);
    let url = format!("redis://:redis-password-xyz@127.0.0.1:{rport}");
    let env = [
        ("SRH_MODE", "env"),
        ("SRH_TOKEN", "srh_example_token"),
        ("SRH_CONNECTION_STRING", url.as_str()),
        ("SRH_PORT", "0"),
        ("REDISGATE_LOG", "trace"),
    ];
    let (mut gw, port, log) = serve(&env, &[]);
    let answer = until_ok(port, "srh_example_token", r#"["SET","k","v"]"#);
    assert!(answer.ends_with(r#"{"result":"OK"}"#), "{answer}");
    assert!(http(port, "POST /", "wrong-token", r#"["GET","k"]"#).starts_with("HTTP/1.1 401"));
    assert!(sigterm_and_wait(&mut gw).success());
    let log = log.lock().unwrap();
    assert!(log.contains("connected to Redis"), "{log}");
    assert!(
        !log.contains("srh_example_token") && !log.contains("redis-password-xyz"),
        "secret in the log:\n{log}"
    );
    // The log goes to a pipe here, not a terminal: no colour escape codes in it.
    assert!(!log.contains('\x1b'), "escape codes in the log:\n{log}");
}

#[test]
fn srh_tokens_file_and_listen_flag() {
    let (_redis, rport) = redis(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.json");
    std::fs::write(
        &file,
        format!(r#"{{"file_token_one":{{"srh_id":"one","connection_string":"redis://127.0.0.1:{rport}","max_connections":3}}}}"#),
    )
    .unwrap();
    let env = [("SRH_MODE", "file"), ("SRH_TOKENS_FILE", file.to_str().unwrap()), ("SRH_PORT", "1")];
    // --listen wins over SRH_PORT.
    let (mut gw, port, _log) = serve(&env, &["--listen", "127.0.0.1:0"]);
    assert_ne!(port, 1);
    let answer = until_ok(port, "file_token_one", r#"["PING"]"#);
    assert!(answer.ends_with(r#"{"result":"PONG"}"#), "{answer}");
    assert!(sigterm_and_wait(&mut gw).success());
}

#[test]
fn bad_configuration_fails_at_start_naming_the_key() {
    let out = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .envs([("SRH_MODE", "env"), ("SRH_TOKEN", "long-enough-token")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SRH_CONNECTION_STRING"));
    let out = Command::new(BIN).arg("serve").env_clear().env("DATABASE_URL", "mysql://x").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("database_url"));
}

#[test]
fn config_default_prints_a_valid_example() {
    let out = Command::new(BIN).args(["config", "default"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("[[tokens]]") && text.contains("max_body_bytes"));
}

#[test]
fn check_exits_non_zero_when_something_is_down() {
    let data = data_dir();
    // Nothing has run here yet: the check says so, and creates nothing.
    let none = Command::new(BIN).arg("check").env_clear().env("REDISGATE_DATA_DIR", &data).output().unwrap();
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stdout).contains("no database at"));
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 0, "check created files");
    let (_redis, rport) = redis(&[]);
    let url = format!("redis://127.0.0.1:{rport}");
    let data_str = data.to_str().unwrap();
    let env = [
        ("REDISGATE_DATA_DIR", data_str),
        ("REDISGATE_TOKEN", "long-enough-token"),
        ("REDISGATE_REDIS_URL", &url),
    ];
    let (mut gw, port, _) = serve(&env, &["--listen", "127.0.0.1:0"]);
    until_ok(port, "long-enough-token", r#"["PING"]"#);
    assert!(sigterm_and_wait(&mut gw).success());
    let ok = Command::new(BIN).arg("check").env_clear().env("REDISGATE_DATA_DIR", &data).output().unwrap();
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{text}");
    assert!(text.lines().any(|l| l.starts_with("ok") && l.contains("metadata store (sqlite)")), "{text}");
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down = Command::new(BIN)
        .arg("check")
        .env_clear()
        .env("REDISGATE_DATA_DIR", &data)
        .env("REDISGATE_TOKEN", "long-enough-token")
        .env("REDISGATE_REDIS_URL", format!("redis://127.0.0.1:{port}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&down.stdout);
    assert_eq!(down.status.code(), Some(1), "{text}");
    assert!(text.lines().any(|l| l.starts_with("FAIL") && l.contains("connection refused")), "{text}");
}

/// What an in-process OTLP/HTTP receiver was sent: path, content type, body.
type Posts = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A minimal OTLP/HTTP receiver on a free port: records every POST and answers 200 with an
/// empty export response, keeping connections alive as collectors do.
fn otlp_receiver() -> (u16, Posts) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let posts = Posts::default();
    let sink = Arc::clone(&posts);
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let sink = Arc::clone(&sink);
            std::thread::spawn(move || otlp_connection(conn, &sink));
        }
    });
    (port, posts)
}

fn otlp_connection(mut conn: TcpStream, sink: &Mutex<Vec<(String, String, Vec<u8>)>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let (mut length, mut content_type) = (0, String::new());
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let Some((name, value)) = line.trim_end().split_once(':') else { break };
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "content-type" => content_type = value.trim().to_owned(),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_owned();
        let answer = if content_type.contains("json") { "{}" } else { "" };
        sink.lock().unwrap().push((path, content_type.clone(), body));
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if conn.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// Every span of every OTLP/JSON export so far, with its resource's `service.name`.
fn exported_spans(posts: &Posts) -> Vec<(String, serde_json::Value)> {
    let posts = posts.lock().unwrap();
    let mut spans = Vec::new();
    for (path, content_type, body) in posts.iter() {
        assert_eq!(path, "/v1/traces");
        assert_eq!(content_type, "application/json");
        let export: serde_json::Value = serde_json::from_slice(body).unwrap();
        for resource in export["resourceSpans"].as_array().unwrap() {
            let attributes = resource["resource"]["attributes"].as_array().unwrap();
            let service =
                attributes.iter().find(|a| a["key"] == "service.name").unwrap()["value"]["stringValue"]
                    .as_str()
                    .unwrap()
                    .to_owned();
            for scope in resource["scopeSpans"].as_array().unwrap() {
                for span in scope["spans"].as_array().unwrap() {
                    spans.push((service.clone(), span.clone()));
                }
            }
        }
    }
    spans
}

/// A span attribute's value, whatever its OTLP/JSON type, as text.
fn attr(span: &serde_json::Value, key: &str) -> Option<String> {
    let a = span["attributes"].as_array()?.iter().find(|a| a["key"] == key)?;
    let (_, value) = a["value"].as_object()?.iter().next()?;
    Some(value.as_str().map_or_else(|| value.to_string(), str::to_owned))
}

/// The OTLP/JSON type of a span attribute's value (`stringValue`, `intValue`, ...).
fn attr_type(span: &serde_json::Value, key: &str) -> Option<String> {
    let a = span["attributes"].as_array()?.iter().find(|a| a["key"] == key)?;
    a["value"].as_object()?.keys().next().cloned()
}

/// The JSON body of an HTTP answer from [`http_with`].
fn json_body(answer: &str) -> serde_json::Value {
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// The spans of one trace, once `done` says they are all there (polled up to 10 s).
fn wait_for_trace(
    posts: &Posts,
    trace: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spans: Vec<_> = exported_spans(posts)
            .into_iter()
            .filter(|(service, s)| service == "redisgate" && s["traceId"] == trace)
            .map(|(_, s)| s)
            .collect();
        if done(&spans) {
            return spans;
        }
        assert!(Instant::now() < deadline, "trace {trace} incomplete: {spans:#?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True when `span` descends from the span `ancestor` (by span id) within `spans`.
fn descends(spans: &[serde_json::Value], span: &serde_json::Value, ancestor: &str) -> bool {
    let mut parent = span["parentSpanId"].as_str().unwrap_or_default().to_owned();
    for _ in 0..spans.len() {
        if parent == ancestor {
            return true;
        }
        match spans.iter().find(|s| s["spanId"] == parent.as_str()) {
            Some(p) => parent = p["parentSpanId"].as_str().unwrap_or_default().to_owned(),
            None => return false,
        }
    }
    false
}

fn named<'a>(spans: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    spans.iter().find(|s| s["name"] == name)
}

const SERVER: i64 = 2;
const CLIENT: i64 = 3;

#[test]
fn otel_spans_of_a_request_follow_its_traceparent() {
    let (otlp, posts) = otlp_receiver();
    let (_redis, rport) = redis(&[]);
    let url = format!("redis://127.0.0.1:{rport}");
    // The external instance's own server: the token's is RedisGate's, which tenants may not use.
    let (_tenant_redis, tport) = redis(&[]);
    let tenant_url = format!("redis://127.0.0.1:{tport}");
    let endpoint = format!("http://127.0.0.1:{otlp}");
    let env = [
        ("REDISGATE_TOKEN", "otel-standalone-token"),
        ("REDISGATE_REDIS_URL", url.as_str()),
        ("REDISGATE_INSTANCES__EXTERNAL__ALLOW", "127.0.0.0/8"),
        // Standalone tokens are unlimited by default; limited, their requests have a
        // rate_limit span.
        ("REDISGATE_RATE_LIMIT__TOKENS__PER_SECOND", "1000"),
        ("REDISGATE_RATE_LIMIT__TOKENS__BURST", "1000"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let (mut gw, port, log) = serve(&env, &["--listen", "127.0.0.1:0"]);
    until_ok(port, "otel-standalone-token", r#"["PING"]"#);

    // A data-plane request, part of a trace that started elsewhere.
    let (trace, caller) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traceparent = format!("00-{trace}-{caller}-01");
    let headers = [("Authorization", "Bearer otel-standalone-token"), ("traceparent", traceparent.as_str())];
    let answer = http_with(port, "POST /", &headers, r#"["SET","otel-key-k1","otel-value-v1"]"#);
    assert!(answer.ends_with(r#"{"result":"OK"}"#), "{answer}");
    let spans = wait_for_trace(&posts, trace, |spans| {
        ["POST", "auth", "rate_limit", "SET"].iter().all(|n| named(spans, n).is_some())
    });
    let server = named(&spans, "POST").unwrap();
    assert_eq!(server["parentSpanId"], caller, "the incoming traceparent is the parent");
    assert_eq!(server["kind"], SERVER);
    assert_eq!(attr(server, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(attr(server, "http.response.status_code").as_deref(), Some("200"));
    assert_eq!(attr_type(server, "http.response.status_code").as_deref(), Some("intValue"));
    assert_eq!(attr(server, "http.route"), None, "the standalone data plane's path holds keys");
    let server_id = server["spanId"].as_str().unwrap();
    let auth = named(&spans, "auth").unwrap();
    assert_eq!(attr(auth, "auth.method").as_deref(), Some("token"));
    assert_eq!(attr(auth, "auth.outcome").as_deref(), Some("ok"));
    let limit = named(&spans, "rate_limit").unwrap();
    assert_eq!(attr(limit, "ratelimit.allowed").as_deref(), Some("true"));
    let redis = named(&spans, "SET").unwrap();
    assert_eq!(redis["kind"], CLIENT);
    assert_eq!(attr(redis, "db.system.name").as_deref(), Some("redis"));
    assert_eq!(attr(redis, "db.operation.name").as_deref(), Some("SET"));
    for child in [auth, limit, redis] {
        assert!(descends(&spans, child, server_id), "{child:#} is not under the request");
    }

    // A management request: its store queries are spans of its trace too.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("00-{trace}-b7ad6b7169203331-01");
    let headers = [("Content-Type", "application/json"), ("traceparent", traceparent.as_str())];
    let body = r#"{"email":"otel@example.com","password":"otel secret passphrase"}"#;
    let answer = http_with(port, "POST /auth/register", &headers, body);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let spans = wait_for_trace(&posts, trace, |spans| {
        named(spans, "POST /auth/register").is_some() && named(spans, "create_user").is_some()
    });
    let server = named(&spans, "POST /auth/register").unwrap();
    assert_eq!(server["parentSpanId"], "b7ad6b7169203331");
    assert_eq!(attr(server, "http.route").as_deref(), Some("/auth/register"));
    assert_eq!(attr(server, "http.response.status_code").as_deref(), Some("201"));
    let store = named(&spans, "create_user").unwrap();
    assert_eq!(store["kind"], CLIENT);
    assert_eq!(attr(store, "db.operation.name").as_deref(), Some("create_user"));
    assert!(descends(&spans, store, server["spanId"].as_str().unwrap()));

    // An instance reached with an API key: the key's lookup (and its store queries on the
    // cache miss) under the auth span, and a pipeline.
    let session = json_body(&http_with(port, "POST /auth/login", &headers[..1], body))["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let bearer = format!("Bearer {session}");
    let api = [("Content-Type", "application/json"), ("Authorization", bearer.as_str())];
    let org = json_body(&http_with(port, "POST /api/organizations", &api, r#"{"name":"Acme"}"#));
    let org = org["id"].as_str().unwrap();
    let instance = format!(r#"{{"name":"ext","provisioner":"external","url":"{tenant_url}"}}"#);
    let instance = json_body(&http_with(
        port,
        &format!("POST /api/organizations/{org}/redis-instances"),
        &api,
        &instance,
    ));
    let instance = instance["id"].as_str().unwrap();
    let key_body = r#"{"name":"k","scope":"read-write"}"#;
    let key = json_body(&http_with(port, &format!("POST /api/organizations/{org}/api-keys"), &api, key_body));
    let (api_key, key_id) = (key["key"].as_str().unwrap(), key["api_key"]["id"].as_str().unwrap());
    let trace = "1af7651916cd43dd8448eb211c80319e";
    let traceparent = format!("00-{trace}-d7ad6b7169203331-01");
    let bearer = format!("Bearer {api_key}");
    let headers = [("Authorization", bearer.as_str()), ("traceparent", traceparent.as_str())];
    let pipeline = r#"[["INCR","otel-counter"],["GET","otel-key-k1"]]"#;
    let answer = http_with(port, &format!("POST /redis/{instance}/pipeline"), &headers, pipeline);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let route = "POST /redis/{instance_id}/{*rest}";
    let spans = wait_for_trace(&posts, trace, |spans| {
        [route, "auth", "api_key_by_hash", "rate_limit", "PIPELINE"].iter().all(|n| named(spans, n).is_some())
    });
    let server = named(&spans, route).unwrap();
    assert_eq!(attr(server, "http.route").as_deref(), Some("/redis/{instance_id}/{*rest}"));
    let auth = named(&spans, "auth").unwrap();
    assert_eq!(attr(auth, "auth.method").as_deref(), Some("api_key"));
    assert_eq!(attr(auth, "auth.outcome").as_deref(), Some("ok"));
    assert_eq!(attr(auth, "instance.id").as_deref(), Some(instance));
    assert_eq!(attr(auth, "key.id").as_deref(), Some(key_id));
    assert!(descends(&spans, named(&spans, "api_key_by_hash").unwrap(), auth["spanId"].as_str().unwrap()));
    let batch = named(&spans, "PIPELINE").unwrap();
    assert_eq!(attr(batch, "db.operation.batch.size").as_deref(), Some("2"));
    assert_eq!(attr_type(batch, "db.operation.batch.size").as_deref(), Some("intValue"));
    for child in [auth, batch, named(&spans, "rate_limit").unwrap()] {
        assert!(descends(&spans, child, server["spanId"].as_str().unwrap()), "{child:#}");
    }

    assert!(sigterm_and_wait(&mut gw).success());
    // Nothing secret left the process: tokens, keys, values, passwords, the Redis URL.
    let everything: String =
        posts.lock().unwrap().iter().map(|(_, _, body)| String::from_utf8_lossy(body).into_owned()).collect();
    let secrets = [
        "otel-standalone-token",
        "otel-key-k1",
        "otel-value-v1",
        "otel-counter",
        "otel secret passphrase",
        "otel@example.com",
        &session,
        api_key,
        &url,
        &tenant_url,
    ];
    for secret in secrets {
        assert!(!everything.contains(secret), "{secret} was exported");
    }
    let log = log.lock().unwrap();
    assert!(log.contains("exporting OpenTelemetry traces"), "{log}");
}

#[test]
fn otel_protobuf_is_the_default_and_shutdown_flushes() {
    let (otlp, posts) = otlp_receiver();
    let (_redis, rport) = redis(&[]);
    let url = format!("redis://127.0.0.1:{rport}");
    let endpoint = format!("http://127.0.0.1:{otlp}/v1/traces");
    let env = [
        ("REDISGATE_TOKEN", "otel-standalone-token"),
        ("REDISGATE_REDIS_URL", url.as_str()),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.as_str()),
        // Nothing would be sent for a minute: only the flush at shutdown sends the spans.
        ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
    ];
    let (mut gw, port, _log) = serve(&env, &["--listen", "127.0.0.1:0"]);
    until_ok(port, "otel-standalone-token", r#"["PING"]"#);
    let trace = "5af7651916cd43dd8448eb211c80319d";
    let traceparent = format!("00-{trace}-c7ad6b7169203331-01");
    let headers = [("Authorization", "Bearer otel-standalone-token"), ("traceparent", traceparent.as_str())];
    assert!(http_with(port, "GET /get/otel-key", &headers, "").starts_with("HTTP/1.1 200"));
    assert!(sigterm_and_wait(&mut gw).success());
    let raw_trace_id: Vec<u8> =
        (0..16).map(|i| u8::from_str_radix(&trace[2 * i..2 * i + 2], 16).unwrap()).collect();
    let posts = posts.lock().unwrap();
    assert!(
        posts.iter().any(|(path, content_type, body)| path == "/v1/traces"
            && content_type == "application/x-protobuf"
            && body.windows(16).any(|w| w == raw_trace_id)),
        "no protobuf export of the trace among {} posts",
        posts.len()
    );
}

#[test]
fn otel_grpc_is_refused_at_start() {
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("REDISGATE_DATA_DIR", data_dir())
        .envs([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported"), "{stderr}");
}
