//! Server-Sent Events: `/subscribe`, `/psubscribe`, `/ssubscribe`, `/monitor` (PROTOCOL.md §9).

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::common::{Gate, RO_TOKEN, Redis, TOKEN, settings};

/// Reads SSE frames from a streaming response, skipping `:` keep-alive comments.
pub struct Events {
    stream: futures_util::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

impl Events {
    async fn open(g: &Gate, path: &str) -> Events {
        Events::open_as(g, path, TOKEN).await
    }

    /// The stream at `path` (under the gateway's base URL), opened with `token`.
    pub async fn open_as(g: &Gate, path: &str, token: &str) -> Events {
        let r = g
            .http
            .post(g.url(path))
            .bearer_auth(token)
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
        self.next_raw_within(Duration::from_secs(5)).await
    }

    /// [`Events::next_raw`], waiting up to `limit` for each chunk.
    async fn next_raw_within(&mut self, limit: Duration) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
                if frame.starts_with(b":") {
                    continue;
                }
                return String::from_utf8(frame).unwrap();
            }
            let chunk = tokio::time::timeout(limit, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("an event within {limit:?}"))
                .expect("stream still open")
                .unwrap();
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The next event's data, without the `data: ` prefix and framing.
    pub async fn next(&mut self) -> String {
        self.next_within(Duration::from_secs(5)).await
    }

    /// [`Events::next`], waiting up to `limit` for each chunk (across a failover).
    pub async fn next_within(&mut self, limit: Duration) -> String {
        let raw = self.next_raw_within(limit).await;
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

async fn shard_numsub(redis: &Redis, channel: &str) -> i64 {
    let v: Vec<redis::Value> = redis.cmd(&["PUBSUB", "SHARDNUMSUB", channel]).await;
    redis::from_redis_value(v[1].clone()).unwrap()
}

#[tokio::test]
async fn sharded_subscribe_on_one_server_survives_its_restart() {
    let mut redis = Redis::start().await;
    let g = Gate::start(settings(&redis)).await;
    // Subscribing reads: a read-only token may, as on /subscribe.
    let mut s = Events::open_as(&g, "/ssubscribe/orders/audit", RO_TOKEN).await;
    assert_eq!([s.next().await, s.next().await], ["ssubscribe,orders,1", "ssubscribe,audit,2"]);
    assert_eq!(g.post_json("/", r#"["SPUBLISH","orders","o-1"]"#).await.1["result"], 1);
    assert_eq!(s.next().await, "smessage,orders,o-1");
    // Published on the server itself; line breaks cannot break the framing.
    redis.cmd::<i64>(&["SPUBLISH", "audit", "line1\nline2"]).await;
    assert_eq!(s.next_raw().await, "data: smessage,audit,line1\ndata: line2\n\n");

    // The server restarts: the stream subscribes again and says so with the confirmations.
    redis.restart().await;
    assert_eq!([s.next().await, s.next().await], ["ssubscribe,orders,1", "ssubscribe,audit,2"]);
    assert_eq!(shard_numsub(&redis, "orders").await, 1);
    redis.cmd::<i64>(&["SPUBLISH", "orders", "o-2"]).await;
    assert_eq!(s.next().await, "smessage,orders,o-2");

    // A channel is required; SSUBSCRIBE as a command points to the endpoint.
    let (st, body) = g.post_json("/ssubscribe", "").await;
    assert_eq!((st, body["error"].as_str().unwrap().contains("at least one channel")), (400, true), "{body}");
    let (st, body) = g.post_json("/", r#"["SSUBSCRIBE","orders"]"#).await;
    assert_eq!((st, body["error"].as_str().unwrap().contains("/ssubscribe")), (400, true), "{body}");
    // A wrong token is refused before anything reaches Redis.
    let r = g.http.post(g.url("/ssubscribe/orders")).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);

    // The client goes away: the subscription is released.
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    while shard_numsub(&redis, "orders").await != 0 {
        assert!(Instant::now() < deadline, "sharded subscription not released after the client left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
