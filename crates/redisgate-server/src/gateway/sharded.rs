//! Sharded pub/sub as Server-Sent Events: `/ssubscribe/{channel}[/…]` (PROTOCOL.md §9,
//! docs/BACKENDS.md).
//!
//! ```text
//! data: ssubscribe,orders,1
//! data: smessage,orders,hello
//! data: ssubscribe,orders,1      (again: re-subscribed after the slot moved or a failover)
//! data: sunsubscribe,orders,0    (last: no server took the subscription back in time)
//! ```
//! SSUBSCRIBE runs on the server owning the channels' slot: for a Cluster instance that slot's
//! primary (a `MOVED` answer is followed), otherwise the one server (Redis 7 has sharded
//! pub/sub outside clusters too). When the slot moves away, Redis pushes `sunsubscribe`; when
//! the server goes away, the connection ends. Either way the stream subscribes again wherever
//! the slot is served now, retrying for up to [`RESUBSCRIBE_WINDOW`], and says so with the
//! confirmations again: messages published in between are not delivered (pub/sub keeps
//! nothing). If no server takes it back in time, the stream ends with Redis' own
//! `sunsubscribe` lines, counting down to 0, so a client can tell an end from a quiet channel.
//!
//! The redis crate's `PubSub` has no SSUBSCRIBE (outside its cluster client) and takes the
//! `sunsubscribe` Redis pushes for a confirmation of its own, so a stream over it could not
//! see the move: this module reads the few RESP2 replies of sharded pub/sub itself, over a
//! connection from [`Backend::session`], each reply bounded by `http.max_response_bytes`.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;
use bytes::Bytes;
use redisgate_core::topology::parse_address;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::slots::Slot;
use super::sse::{joined, respond};
use crate::backend::ha::Routed;
use crate::backend::{Backend, BackendError, Session, StreamGuard};

/// How long a stream whose subscription ended tries to subscribe again before it ends: longer
/// than a Cluster failover with a moderate `cluster-node-timeout`.
pub const RESUBSCRIBE_WINDOW: Duration = Duration::from_secs(30);
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(1);
/// MOVED answers followed for one SSUBSCRIBE.
const MAX_REDIRECTS: usize = 16;
/// The longest header or error line read (a tenant's server could send one without end).
const MAX_LINE: u64 = 64 * 1024;

/// Why no stream was opened.
pub enum Refused {
    /// Redis refused SSUBSCRIBE (`CROSSSLOT` for channels of different slots on a cluster,
    /// an unknown command before Redis 7, an ACL): its error text, for a 400.
    Redis(String),
    Backend(BackendError),
}

impl From<BackendError> for Refused {
    fn from(e: BackendError) -> Self {
        Refused::Backend(e)
    }
}

/// SSUBSCRIBE to `names` on their slot's server and stream the messages.
pub async fn ssubscribe(
    instance: &Arc<Backend>,
    names: Vec<Vec<u8>>,
    keepalive: Duration,
    shutdown: CancellationToken,
    slot: Option<Slot>,
    max_message: usize,
) -> Result<Response, Refused> {
    let (live, first) = open(instance, &names, max_message).await?;
    let state = Stream {
        instance: Arc::clone(instance),
        names,
        max_message,
        live: Some(live),
        pending: VecDeque::new(),
        done: false,
        _slot: slot,
    };
    let rest = futures_util::stream::unfold(state, Stream::next);
    Ok(respond(first, rest, keepalive, instance, shutdown))
}

/// A subscribed connection.
struct Live {
    conn: Session,
    _guard: StreamGuard,
}

struct Stream {
    instance: Arc<Backend>,
    names: Vec<Vec<u8>>,
    max_message: usize,
    live: Option<Live>,
    pending: VecDeque<Bytes>,
    done: bool,
    _slot: Option<Slot>,
}

impl Stream {
    async fn next(mut self) -> Option<(Bytes, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((event, self));
            }
            if self.done {
                return None;
            }
            let Some(live) = &mut self.live else {
                match self.resubscribe().await {
                    Some((live, confirmations)) => {
                        self.live = Some(live);
                        self.pending.extend(confirmations);
                    }
                    None => {
                        self.pending.extend(ended(&self.names));
                        self.done = true;
                    }
                }
                continue;
            };
            match read_reply(&mut live.conn, self.max_message).await {
                Ok(Reply::Push(p)) if p.len() == 3 && p[0] == b"smessage" => {
                    return Some((joined(&[b"smessage", &p[1], &p[2]]), self));
                }
                // `sunsubscribe`: the slot moved away. Anything else (the connection ended, a
                // reply too large or not of sharded pub/sub): this connection is done.
                other => {
                    let why = match other {
                        Ok(Reply::Push(p)) if p.first().is_some_and(|k| k == b"sunsubscribe") => "slot moved",
                        Err(e) if e.kind() == io::ErrorKind::InvalidData => "unexpected reply",
                        _ => "connection ended",
                    };
                    tracing::info!(
                        backend = self.instance.label(),
                        reason = why,
                        "sharded subscription ended; subscribing again"
                    );
                    self.live = None;
                }
            }
        }
    }

    /// Subscribes again, wherever the slot is served now, until [`RESUBSCRIBE_WINDOW`] ends.
    async fn resubscribe(&self) -> Option<(Live, Vec<Bytes>)> {
        let deadline = tokio::time::Instant::now() + RESUBSCRIBE_WINDOW;
        let mut pause = FIRST_PAUSE;
        loop {
            match open(&self.instance, &self.names, self.max_message).await {
                Ok(opened) => return Some(opened),
                Err(Refused::Redis(text)) => {
                    tracing::warn!(backend = self.instance.label(), error = %text, "sharded subscription refused");
                    return None;
                }
                Err(Refused::Backend(_)) => {}
            }
            if tokio::time::Instant::now() + pause > deadline {
                tracing::warn!(
                    backend = self.instance.label(),
                    "sharded subscription not taken back in time; ending the stream"
                );
                return None;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
}

/// The end of a stream: `sunsubscribe` for each distinct channel, counting down to 0.
fn ended(names: &[Vec<u8>]) -> Vec<Bytes> {
    let mut seen = HashSet::new();
    let distinct: Vec<&[u8]> = names.iter().map(Vec::as_slice).filter(|n| seen.insert(*n)).collect();
    let left = distinct.len();
    distinct
        .iter()
        .enumerate()
        .map(|(i, n)| joined(&[b"sunsubscribe", n, (left - i - 1).to_string().as_bytes()]))
        .collect()
}

/// SSUBSCRIBE on the server owning the channels' slot, following MOVED.
async fn open(instance: &Arc<Backend>, names: &[Vec<u8>], max: usize) -> Result<(Live, Vec<Bytes>), Refused> {
    let mut node = match instance.routed() {
        Some(routed) => routed.stream_node(names.first().map(Vec::as_slice)).await?,
        None => Arc::clone(instance),
    };
    let unavailable = |reason: &str| BackendError::Unavailable {
        reason: reason.into(),
        retry_after: instance.settings().retry_delay,
    };
    for _ in 0..MAX_REDIRECTS {
        let text = match subscribe_on(&node, names, max).await? {
            Ok(opened) => return Ok(opened),
            Err(text) => text,
        };
        let (code, details) = text.split_once(' ').unwrap_or((&text, ""));
        node = match (code, instance.routed()) {
            ("MOVED", Some(Routed::Cluster(cluster))) => {
                let target = details.split_once(' ').and_then(|(_slot, addr)| parse_address(addr));
                let (host, port) = target.ok_or_else(|| unavailable("the cluster named no node"))?;
                cluster.moved_to(&host, port)?
            }
            ("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN", _) => {
                return Err(unavailable("the channel's slot is moving").into());
            }
            _ => return Err(Refused::Redis(text)),
        };
    }
    Err(unavailable("too many redirections").into())
}

/// SSUBSCRIBE on `node`: the subscribed connection and its confirmations as events, or the
/// error Redis answered.
async fn subscribe_on(
    node: &Backend,
    names: &[Vec<u8>],
    max: usize,
) -> Result<Result<(Live, Vec<Bytes>), String>, BackendError> {
    let (mut conn, guard) = node.session().await?;
    let timeout = node.settings().response_timeout;
    let lost = BackendError::ConnectionLost { retry_after: node.settings().retry_delay };
    let confirm = async {
        conn.write_all(&redis::cmd("SSUBSCRIBE").arg(names).get_packed_command()).await?;
        conn.flush().await?;
        let mut first = Vec::with_capacity(names.len());
        for _ in names {
            match read_reply(&mut conn, max).await? {
                // One error answers the whole command.
                Reply::Error(text) => return Ok(Err(text)),
                Reply::Push(p) if p.len() == 3 && p[0] == b"ssubscribe" => {
                    first.push(joined(&[b"ssubscribe", &p[1], &p[2]]));
                }
                Reply::Push(_) => return Err(invalid()),
            }
        }
        Ok::<_, io::Error>(Ok(first))
    };
    match tokio::time::timeout(timeout, confirm).await {
        Ok(Ok(Ok(first))) => Ok(Ok((Live { conn, _guard: guard }, first))),
        Ok(Ok(Err(text))) => Ok(Err(text)),
        Ok(Err(_)) => Err(lost),
        Err(_) => Err(BackendError::Timeout(timeout)),
    }
}

/// One reply of sharded pub/sub: an array of bulk strings and integers (as their digits), or
/// an error.
enum Reply {
    Push(Vec<Vec<u8>>),
    Error(String),
}

fn invalid() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "not a sharded pub/sub reply")
}

fn number(digits: &[u8]) -> Option<usize> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// One line without its `\r\n`.
async fn line(conn: &mut Session) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    (&mut *conn).take(MAX_LINE).read_until(b'\n', &mut line).await?;
    if !line.ends_with(b"\r\n") {
        return Err(if line.is_empty() { io::ErrorKind::UnexpectedEof.into() } else { invalid() });
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

/// Reads one reply; a bulk string longer than `max` is [`invalid`] (never buffered whole).
async fn read_reply(conn: &mut Session, max: usize) -> io::Result<Reply> {
    let head = line(conn).await?;
    let count = match head.split_first() {
        Some((b'-', text)) => return Ok(Reply::Error(String::from_utf8_lossy(text).into_owned())),
        // Every sharded pub/sub reply has 3 elements.
        Some((b'*', n)) => number(n).filter(|n| *n <= 3).ok_or_else(invalid)?,
        _ => return Err(invalid()),
    };
    let mut parts = Vec::with_capacity(count);
    for _ in 0..count {
        let item = line(conn).await?;
        match item.split_first() {
            Some((b':', digits)) => parts.push(digits.to_vec()),
            Some((b'$', len)) => {
                let len = number(len).filter(|l| *l <= max).ok_or_else(invalid)?;
                let mut data = Vec::new();
                (&mut *conn).take(len as u64 + 2).read_to_end(&mut data).await?;
                if !data.ends_with(b"\r\n") || data.len() != len + 2 {
                    return Err(invalid());
                }
                data.truncate(len);
                parts.push(data);
            }
            _ => return Err(invalid()),
        }
    }
    Ok(Reply::Push(parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_counts_distinct_channels_down() {
        let names = vec![b"a".to_vec(), b"b".to_vec(), b"a".to_vec()];
        let lines: Vec<Bytes> = ended(&names);
        assert_eq!(lines, [&b"data: sunsubscribe,a,1\n\n"[..], b"data: sunsubscribe,b,0\n\n"]);
    }
}
