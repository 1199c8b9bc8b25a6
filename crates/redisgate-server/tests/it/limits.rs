//! Exposure safety: body and pipeline limits, slow and idle clients, graceful shutdown.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Gate, Redis, TOKEN, settings};

#[tokio::test]
async fn body_and_pipeline_limits() {
    let redis = Redis::start().await;
    let mut s = settings(&redis);
    s.http.max_body_bytes = 1024;
    s.http.max_pipeline_commands = 3;
    let g = Gate::start(s).await;
    let big = format!(r#"["SET","k","{}"]"#, "x".repeat(2000));
    let (status, body) = g.post_json("/", &big).await;
    assert_eq!((status, body["error"].as_str().unwrap()), (413, "ERR max request size exceeded"));
    // Same without a Content-Length (chunked upload).
    let chunks = futures_util::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>("y".repeat(400))));
    let r = g
        .http
        .post(g.url("/set/k2"))
        .bearer_auth(TOKEN)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.json::<serde_json::Value>().await.unwrap()["error"].is_string());
    assert_eq!(redis.cmd::<Option<String>>(&["GET", "k"]).await, None);
    assert_eq!(redis.cmd::<Option<String>>(&["GET", "k2"]).await, None);

    let (status, body) = g
        .post_json("/pipeline", r#"[["SET","a","1"],["SET","b","1"],["SET","c","1"],["SET","d","1"]]"#)
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "ERR pipeline allows at most 3 commands, got 4");
    assert_eq!(redis.cmd::<Option<String>>(&["GET", "a"]).await, None, "nothing of a refused pipeline ran");
}

/// Reads until the server closes the connection; what it sent, and how long that took.
async fn read_to_close(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out))
        .await
        .expect("server closed the connection")
        .ok();
    (String::from_utf8_lossy(&out).into_owned(), started.elapsed())
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off() {
    let redis = Redis::start().await;
    let mut s = settings(&redis);
    s.http.header_read_timeout = Duration::from_millis(300);
    s.http.body_read_timeout = Duration::from_millis(300);
    let g = Gate::start(s).await;
    let addr = g.base.strip_prefix("http://").unwrap().to_owned();

    // Headers that never finish.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    read_to_close(&mut slow).await;

    // A keep-alive connection left idle after a complete request.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 8\r\n\r\n[\"PING\"]"
    );
    idle.write_all(req.as_bytes()).await.unwrap();
    let (answer, _) = read_to_close(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A body that stops half way: 408 with a JSON error.
    let mut stalled = TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "POST /set/k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\npartial"
    );
    stalled.write_all(req.as_bytes()).await.unwrap();
    let (answer, _) = read_to_close(&mut stalled).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#"{"error":"ERR request body not received in time"}"#), "{answer}");
    assert_eq!(redis.cmd::<Option<String>>(&["GET", "k"]).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let redis = Redis::start().await;
    let mut g = Gate::start(settings(&redis)).await;
    // Hold a write inside Redis so the request is provably in flight during shutdown.
    redis.cmd::<()>(&["CLIENT", "PAUSE", "10000", "WRITE"]).await;
    let http = g.http.clone();
    let url = g.url("/set/inflight/done");
    let request = tokio::spawn(async move { http.post(url).bearer_auth(TOKEN).send().await });
    redis.wait_blocked(1).await;
    g.begin_shutdown();
    // New connections are refused once shutdown has begun.
    let addr = g.base.strip_prefix("http://").unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(&addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after shutdown began");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    redis.cmd::<()>(&["CLIENT", "UNPAUSE"]).await;
    let r = request.await.unwrap().expect("in-flight request answered");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"result":"OK"}"#);
    g.stopped().await;
    assert_eq!(redis.cmd::<String>(&["GET", "inflight"]).await, "done");
}
