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
    let line = lines.next().expect("a start-up line").unwrap();
    let port = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    // Keep draining logs so the child never blocks on a full pipe.
    let log = Arc::new(Mutex::new(line + "\n"));
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        lines.map_while(Result::ok).for_each(|l| sink.lock().unwrap().push_str(&(l + "\n")))
    });
    (Proc(child), port, log)
}

/// One HTTP/1.1 request with `Connection: close`; the whole answer as text.
fn http(port: u16, request_line: &str, token: &str, body: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{request_line} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
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
