//! Server-Sent Events: `/subscribe`, `/psubscribe`, `/monitor` (PROTOCOL.md §9).

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::common::{Gate, Redis, TOKEN, settings};

/// Reads SSE frames from a streaming response, skipping `:` keep-alive comments.
struct Events {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl Events {
    async fn open(g: &Gate, path: &str) -> Events {
        let r = g
            .http
            .post(g.url(path))
            .bearer_auth(TOKEN)
            .header("Accept", "text/event-stream")
            .body("[]")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        Events { stream: r.bytes_stream().boxed(), buf: Vec::new() }
    }

    /// The next event's raw bytes, `\n\n` included.
    async fn next_raw(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
                if frame.starts_with(b":") {
                    continue;
                }
                return String::from_utf8(frame).unwrap();
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.stream.next())
                .await
                .expect("an event within 5 s")
                .expect("stream still open")
                .unwrap();
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The next event's data, without the `data: ` prefix and framing.
    async fn next(&mut self) -> String {
        let raw = self.next_raw().await;
        raw.strip_prefix("data: ").unwrap().trim_end_matches('\n').to_owned()
    }
}

async fn numsub(redis: &Redis, channel: &str) -> i64 {
    let v: Vec<redis::Value> = redis.cmd(&["PUBSUB", "NUMSUB", channel]).await;
    redis::from_redis_value(v[1].clone()).unwrap()
}

#[tokio::test]
async fn subscribe_stream_and_client_abort() {
    let redis = Redis::start().await;
    let g = Gate::start(settings(&redis)).await;
    let mut a = Events::open(&g, "/subscribe/news").await;
    assert_eq!(a.next_raw().await, "data: subscribe,news,1\n\n");
    // A second stream on the same channel has its own connection, so its count is 1 too.
    let mut b = Events::open(&g, "/subscribe/news").await;
    assert_eq!(b.next().await, "subscribe,news,1");
    assert_eq!(g.post_json("/", r#"["PUBLISH","news","hello, world"]"#).await.1["result"], 2);
    assert_eq!(a.next_raw().await, "data: message,news,hello, world\n\n");
    assert_eq!(b.next().await, "message,news,hello, world");
    // Path form PUBLISH; a payload with a line break cannot break the framing.
    g.http.post(g.url("/publish/news/line1%0Aline2")).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(a.next_raw().await, "data: message,news,line1\ndata: line2\n\n");

    // The client goes away: the backend subscription is released.
    drop(a);
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(5);
    while numsub(&redis, "news").await != 0 {
        assert!(Instant::now() < deadline, "subscriptions not released after the clients left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn several_channels_and_patterns() {
    let redis = Redis::start().await;
    let g = Gate::start(settings(&redis)).await;
    let mut s = Events::open(&g, "/subscribe/a/b/a").await;
    assert_eq!(
        [s.next().await, s.next().await, s.next().await],
        ["subscribe,a,1", "subscribe,b,2", "subscribe,a,2"]
    );
    let mut p = Events::open(&g, "/psubscribe/n*").await;
    assert_eq!(p.next().await, "psubscribe,n*,1");
    g.post("/", r#"["PUBLISH","news","hi"]"#).await;
    assert_eq!(p.next().await, "pmessage,n*,news,hi");
    g.post("/", r#"["PUBLISH","b","x"]"#).await;
    assert_eq!(s.next().await, "message,b,x");
    // Keep-alive comments flow on a quiet stream (200 ms in the test settings).
    let mut raw = Vec::new();
    while !raw.windows(12).any(|w| w == b": keepalive\n") {
        let chunk =
            tokio::time::timeout(Duration::from_secs(5), s.stream.next()).await.unwrap().unwrap().unwrap();
        raw.extend_from_slice(&chunk);
    }
    let (st, body) = g.post_json("/subscribe", "").await;
    assert_eq!(st, 400);
    assert!(body["error"].as_str().unwrap().contains("at least one channel"));
}

#[tokio::test]
async fn monitor_stream() {
    let redis = Redis::start().await;
    let g = Gate::start(settings(&redis)).await;
    let mut m = Events::open(&g, "/monitor").await;
    assert_eq!(m.next_raw().await, "data: \"OK\"\n\n");
    g.post("/", r#"["SET","watched","v"]"#).await;
    loop {
        let line = m.next().await;
        if line.contains(r#""SET" "watched" "v""#) {
            break;
        }
    }
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let redis = Redis::start().await;
    let g = Gate::start(settings(&redis)).await;
    let mut s = Events::open(&g, "/subscribe/x").await;
    assert_eq!(s.next().await, "subscribe,x,1");
    g.shutdown().await;
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = s.stream.next().await {}
    });
    rest.await.expect("stream closed by shutdown");
}
