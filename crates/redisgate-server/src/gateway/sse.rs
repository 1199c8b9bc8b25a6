//! Server-Sent Events for `/subscribe`, `/psubscribe` and `/monitor` (PROTOCOL.md §9).
//!
//! ```text
//! data: subscribe,news,1
//! data: message,news,hello, world
//! data: psubscribe,n*,1
//! data: pmessage,n*,news,hello
//! data: "OK"                                  (MONITOR, first event)
//! data: 1721284005.242090 [0 127.0.0.1:5555] "GET" "k"
//! ```
//! Each stream owns one dedicated Redis connection, so subscription counts are per stream
//! as the SDK tests expect. When the client goes away hyper drops the body stream, which
//! drops the connection and so the subscription; periodic `: keepalive` comments make a dead
//! peer show up on quiet channels. A stream also ends when its backend stops (the instance
//! was deleted) and at shutdown, and holds its caller's stream slot (see [`super::slots`])
//! for as long as it lasts.

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt, stream};
use http::{HeaderValue, header};
use tokio_util::sync::CancellationToken;

use super::slots::Slot;
use crate::backend::ha::Routed;
use crate::backend::{Backend, BackendError};

/// One SSE event carrying `text`. Line breaks inside it become further `data:` lines, so a
/// payload can never break the framing.
pub(super) fn event(text: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(text);
    let mut out = BytesMut::with_capacity(text.len() + 8);
    for line in text.split(['\n', '\r']) {
        out.put_slice(b"data: ");
        out.put_slice(line.as_bytes());
        out.put_u8(b'\n');
    }
    out.put_u8(b'\n');
    out.freeze()
}

pub(super) fn joined(parts: &[&[u8]]) -> Bytes {
    event(&parts.join(&b","[..]))
}

/// The streamed response: `first` events, then `rest`, with keep-alive comments in between,
/// ending when the backend stream ends, the backend stops or the server shuts down.
pub(super) fn respond(
    first: Vec<Bytes>,
    rest: impl Stream<Item = Bytes> + Send + 'static,
    keepalive: Duration,
    backend: &Backend,
    shutdown: CancellationToken,
) -> Response {
    let stopped = backend.stopped();
    let end = async move {
        tokio::select! {
            () = stopped => {}
            () = shutdown.cancelled() => {}
        }
    };
    let ticks = stream::unfold(
        tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive),
        |mut i| async {
            i.tick().await;
            Some((Bytes::from_static(b": keepalive\n\n"), i))
        },
    );
    // `select` ends only when both sides end; the ticks never do, so end on `rest` explicitly.
    let rest = rest.map(Some).chain(stream::once(async { None }));
    let body = stream::iter(first)
        .chain(
            stream::select(rest, ticks.map(Some))
                .take_while(|b| std::future::ready(b.is_some()))
                .map(|b| b.unwrap_or_default()),
        )
        .take_until(end)
        .map(Ok::<_, Infallible>);
    let mut r = Response::new(Body::from_stream(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

/// SUBSCRIBE (or PSUBSCRIBE when `pattern`) to `names` and stream the messages.
pub async fn subscribe(
    backend: &Backend,
    names: Vec<Vec<u8>>,
    pattern: bool,
    keepalive: Duration,
    shutdown: CancellationToken,
    slot: Option<Slot>,
) -> Result<Response, BackendError> {
    let (mut pubsub, permit) = backend.pubsub().await?;
    let sub = if pattern { pubsub.psubscribe(&names).await } else { pubsub.subscribe(&names).await };
    sub.map_err(|_| BackendError::ConnectionLost { retry_after: Duration::from_secs(1) })?;
    // Redis counts distinct subscriptions on the connection; this one is ours alone.
    let kind: &[u8] = if pattern { b"psubscribe" } else { b"subscribe" };
    let mut seen = HashSet::new();
    let first = names
        .iter()
        .map(|n| {
            seen.insert(n.as_slice());
            joined(&[kind, n, seen.len().to_string().as_bytes()])
        })
        .collect();
    let messages = pubsub.into_on_message().map(move |msg| {
        let _held = (&permit, &slot);
        let channel = msg.get_channel_name().as_bytes();
        let payload = msg.get_payload_bytes();
        match msg.from_pattern().then(|| msg.get_pattern::<Vec<u8>>().ok()).flatten() {
            Some(p) => joined(&[b"pmessage", &p, channel, payload]),
            None => joined(&[b"message", channel, payload]),
        }
    });
    Ok(respond(first, messages, keepalive, backend, shutdown))
}

/// MONITOR as a stream: `"OK"` first, then one line per command Redis runs. On a Cluster
/// instance, the lines of every primary there is when the stream opens, merged as they come
/// (a primary that goes away ends its part only).
pub async fn monitor(
    backend: &Backend,
    keepalive: Duration,
    shutdown: CancellationToken,
    slot: Option<Slot>,
) -> Result<Response, BackendError> {
    let primaries = match backend.routed() {
        Some(Routed::Cluster(cluster)) => cluster.primaries(),
        _ => Vec::new(),
    };
    let (mon, permit) = if primaries.len() > 1 {
        let mut all = Vec::with_capacity(primaries.len());
        let mut permits = Vec::with_capacity(primaries.len());
        for node in &primaries {
            let (lines, permit) = node.monitor().await?;
            all.push(lines);
            permits.push(permit);
        }
        (stream::select_all(all).boxed(), permits)
    } else {
        let (lines, permit) = backend.monitor().await?;
        (lines, vec![permit])
    };
    let lines = mon.map(move |line| {
        let _held = (&permit, &slot);
        match line {
            redis::Value::SimpleString(s) => event(s.as_bytes()),
            redis::Value::BulkString(b) => event(&b),
            other => event(format!("{other:?}").as_bytes()),
        }
    });
    Ok(respond(vec![event(b"\"OK\"")], lines, keepalive, backend, shutdown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_never_break_framing() {
        assert_eq!(&event(b"message,ch,a,b")[..], b"data: message,ch,a,b\n\n");
        assert_eq!(&event(b"message,ch,x\ny")[..], b"data: message,ch,x\ndata: y\n\n");
    }
}
