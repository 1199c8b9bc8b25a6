//! The multiplexed connection: one socket to Redis that every request of a backend shares.
//!
//! A request appends its packed command(s) to one write buffer, and its reply slot to a FIFO,
//! under one short lock; the writer task is woken only when that buffer goes from empty to
//! non-empty, and sends everything pending with one write, so concurrent requests coalesce into
//! few writes. Redis answers one connection in order, so the reader task hands each reply it
//! parses to the oldest slot. Because a batch's commands go into the buffer under one lock, they
//! are contiguous on the wire: a MULTI … EXEC cannot interleave with other requests.
//!
//! Replies are read with a RESP2 parser of our own (the redis crate's is a `combine` parser and
//! was a fifth of a GET's cost in the gateway), producing exactly the [`Value`]s the crate
//! produces for RESP2, so callers and the SDKs' shapes see no difference.
//!
//! Timeouts: each slot carries its deadline; a third task keeps one timer, at the earliest
//! deadline it knows of, instead of one timer per request, and is woken only when a request
//! brings an earlier one (in steady use: about once per `response_timeout`). An expired slot is
//! answered with a timeout and stays in the FIFO to absorb its late reply. When the connection breaks (end of
//! stream, an I/O error, a reply that does not parse), every pending request fails with a
//! connection-dropped error, later ones fail at once, and [`Mux::closed`] resolves: nothing is
//! re-sent. Dropping the last handle (or stopping the backend) stops both tasks and closes the
//! socket.
//!
//! Memory: a tenant's server decides what it sends. A bulk string announcing more than 512 MiB
//! (Redis' own `proto-max-bulk-len` default) is refused before any of it is buffered, and an
//! array reserves room for at most 1,024 elements before they come; either way the connection
//! is then broken, as for any reply that does not parse. The whole reply is still bounded by
//! `http.max_response_bytes` only after it is read, as before (the gateway's check).

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use redis::{RedisError, RedisResult, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Session;

/// Nesting deeper than this is refused, as the redis crate does (its parser's bound).
const MAX_DEPTH: usize = 100;
/// The longest bulk string accepted: Redis' own `proto-max-bulk-len` default. A tenant's
/// server announcing more is refused before anything of it is buffered.
const MAX_BULK: usize = 512 << 20;
/// The most elements an array may announce (Redis' own aggregates hold at most 2^32 - 1).
const MAX_ELEMENTS: usize = u32::MAX as usize;
/// How many elements are reserved up front: an announced length is only a claim.
const PREALLOCATED: usize = 1024;
/// What one read asks the socket for at least.
const READ_CHUNK: usize = 16 << 10;

/// A handle on a shared connection: cheap to clone; the connection lives while any handle does.
#[derive(Clone)]
pub struct Mux {
    conn: Arc<Handle>,
    timeout: Duration,
}

/// Closes the connection when the last handle goes.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// What the tasks share. Each task waits on its own `Notify` besides its socket half, so the
/// hot path polls one future per task; closing is a flag (`Queue::broken`) and a wake of all.
struct Shared {
    queue: Mutex<Queue>,
    wake_writer: Notify,
    /// Only to close: the reader otherwise waits on its socket.
    wake_reader: Notify,
    /// A slot with an earlier deadline than `Queue::timer_at` came, or closing.
    wake_timer: Notify,
    /// Fired once the connection is closed (broken, the last handle dropped, or its backend
    /// stopped), for [`Mux::closed`].
    closed: CancellationToken,
}

impl Shared {
    fn close(&self) {
        self.queue.lock().expect("mux queue lock").broken = true;
        self.wake_writer.notify_one();
        self.wake_reader.notify_one();
        self.wake_timer.notify_one();
        self.closed.cancel();
    }
}

#[derive(Default)]
struct Queue {
    /// Packed commands not yet handed to the writer.
    out: Vec<u8>,
    /// Their reply slots, in the same order.
    slots: VecDeque<Slot>,
    /// The earliest deadline the timer is set for.
    timer_at: Option<Instant>,
    /// Closed: no new request is taken.
    broken: bool,
}

struct Slot {
    deadline: Instant,
    reply: Reply,
}

/// Where a request's replies go; the sender is gone once the request was answered (a timed-out
/// slot waits for its late reply only to drop it).
enum Reply {
    One(Option<oneshot::Sender<RedisResult<Value>>>),
    Many { left: usize, values: Vec<Value>, to: Option<oneshot::Sender<RedisResult<Vec<Value>>>> },
}

impl Reply {
    fn fail(&mut self, e: fn() -> RedisError) {
        match self {
            Reply::One(to) => {
                if let Some(to) = to.take() {
                    let _ = to.send(Err(e()));
                }
            }
            Reply::Many { to, .. } => {
                if let Some(to) = to.take() {
                    let _ = to.send(Err(e()));
                }
            }
        }
    }

    fn is_waited_for(&self) -> bool {
        match self {
            Reply::One(to) => to.is_some(),
            Reply::Many { to, .. } => to.is_some(),
        }
    }
}

fn dropped() -> RedisError {
    RedisError::from(io::Error::new(io::ErrorKind::ConnectionReset, "the connection to Redis was lost"))
}

fn timed_out() -> RedisError {
    RedisError::from(io::Error::from(io::ErrorKind::TimedOut))
}

impl Mux {
    /// Serves `session` (set up, see [`super::set_up`]) with requests answered within
    /// `timeout`; its tasks run on `tracker` and end, closing it, when `stop` fires.
    pub fn start(
        session: Session,
        timeout: Duration,
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) -> Mux {
        // What the set-up read ahead belongs to the replies.
        let mut buf = BytesMut::from(session.buffer());
        buf.reserve(READ_CHUNK);
        let (read, write) = tokio::io::split(session.into_inner());
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake_writer: Notify::new(),
            wake_reader: Notify::new(),
            wake_timer: Notify::new(),
            closed: CancellationToken::new(),
        });
        tracker.spawn(write_all(Arc::clone(&shared), write));
        tracker.spawn(read_all(Arc::clone(&shared), read, buf));
        tracker.spawn(deadlines(Arc::clone(&shared), stop.clone()));
        Mux { conn: Arc::new(Handle(shared)), timeout }
    }

    /// This handle's requests (and its clones') are answered within `timeout`.
    pub fn set_response_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Resolves once the connection is closed (broken, or stopped).
    pub async fn closed(&self) {
        self.conn.0.closed.cancelled().await;
    }

    /// Sends one command; a Redis error reply comes back as `Ok(Value::ServerError)`.
    pub async fn send(&self, cmd: &redis::Cmd) -> RedisResult<Value> {
        let (to, reply) = oneshot::channel();
        self.enqueue(|out| cmd.write_packed_command(out), Reply::One(Some(to)))?;
        reply.await.unwrap_or_else(|_| Err(dropped()))
    }

    /// [`Mux::send`] for a command given as its arguments, written into the buffer as they
    /// are: no `redis::Cmd` is built first (two allocations and a copy of every argument, about
    /// 470 instructions per command, for the data plane's every command).
    pub async fn send_args(&self, args: &[Vec<u8>]) -> RedisResult<Value> {
        let (to, reply) = oneshot::channel();
        self.enqueue(|out| write_command(out, args), Reply::One(Some(to)))?;
        reply.await.unwrap_or_else(|_| Err(dropped()))
    }

    /// Sends the commands of `pipe` as one contiguous write and returns one reply per command.
    /// (`pipe` must not be atomic: callers that want MULTI … EXEC put them in themselves.)
    pub async fn send_batch(&self, pipe: &redis::Pipeline) -> RedisResult<Vec<Value>> {
        let count = pipe.len();
        if count == 0 {
            return Ok(Vec::new());
        }
        let (to, reply) = oneshot::channel();
        let slot = Reply::Many { left: count, values: Vec::with_capacity(count), to: Some(to) };
        self.enqueue(|out| pipe.cmd_iter().for_each(|c| c.write_packed_command(out)), slot)?;
        reply.await.unwrap_or_else(|_| Err(dropped()))
    }

    fn enqueue(&self, write: impl FnOnce(&mut Vec<u8>), reply: Reply) -> RedisResult<()> {
        let shared = &self.conn.0;
        let deadline = Instant::now() + self.timeout;
        let (first, earlier) = {
            let mut q = shared.queue.lock().expect("mux queue lock");
            if q.broken {
                return Err(dropped());
            }
            let first = q.out.is_empty();
            write(&mut q.out);
            q.slots.push_back(Slot { deadline, reply });
            let earlier = q.timer_at.is_none_or(|at| deadline < at);
            if earlier {
                q.timer_at = Some(deadline);
            }
            (first, earlier)
        };
        if first {
            shared.wake_writer.notify_one();
        }
        if earlier {
            shared.wake_timer.notify_one();
        }
        Ok(())
    }
}

/// `args` as a RESP array of bulk strings, as `redis::Cmd::write_packed_command` writes it.
fn write_command(out: &mut Vec<u8>, args: &[Vec<u8>]) {
    let mut digits = itoa::Buffer::new();
    out.reserve(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.push(b'*');
    out.extend_from_slice(digits.format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(digits.format(arg.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// The writer task: everything pending in one write, until the connection closes.
async fn write_all(shared: Arc<Shared>, mut io: WriteHalf<Box<dyn crate::egress::Io>>) {
    let mut out = Vec::new();
    loop {
        shared.wake_writer.notified().await;
        {
            let mut q = shared.queue.lock().expect("mux queue lock");
            if q.broken {
                return;
            }
            std::mem::swap(&mut q.out, &mut out);
        }
        if out.is_empty() {
            continue;
        }
        // The write first: while it completes at once, the close is never polled.
        let written = tokio::select! {
            biased;
            r = async { io.write_all(&out).await?; io.flush().await } => r,
            () = shared.closed.cancelled() => return,
        };
        if written.is_err() {
            // The reader fails what is pending when it sees the close.
            shared.close();
            return;
        }
        out.clear();
        // One huge batch must not keep its buffer for the connection's life.
        if out.capacity() > 1 << 20 {
            out = Vec::new();
        }
    }
}

/// The reader task: every reply to its slot, until the stream ends or the connection closes;
/// then every pending request fails (none is re-sent).
async fn read_all(shared: Arc<Shared>, mut io: ReadHalf<Box<dyn crate::egress::Io>>, mut buf: BytesMut) {
    let mut parser = Parser::default();
    let mut values = Vec::new();
    // Made once, not per read: a fresh `Notified` joins the waiter list under its lock.
    let mut close = std::pin::pin!(shared.wake_reader.notified());
    loop {
        if !read_replies(&shared, &mut parser, &mut buf, &mut values) {
            break;
        }
        buf.reserve(READ_CHUNK.max(parser.need.saturating_sub(buf.len())));
        tokio::select! {
            biased;
            r = io.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            () = close.as_mut() => break,
        }
    }
    let pending = {
        let mut q = shared.queue.lock().expect("mux queue lock");
        q.broken = true;
        std::mem::take(&mut q.slots)
    };
    shared.close();
    for mut slot in pending {
        slot.reply.fail(dropped);
    }
}

/// Hands every complete reply in `buf` to its slot (under one lock for all of them); `false`
/// when the stream cannot go on: a reply that does not parse, or that nothing asked for.
fn read_replies(shared: &Shared, parser: &mut Parser, buf: &mut BytesMut, values: &mut Vec<Value>) -> bool {
    let mut ok = true;
    while buf.len() >= parser.need {
        match parser.parse(buf) {
            Ok(Some(value)) => values.push(value),
            Ok(None) => break,
            Err(_) => {
                ok = false;
                break;
            }
        }
    }
    if values.is_empty() {
        return ok;
    }
    let mut q = shared.queue.lock().expect("mux queue lock");
    for value in values.drain(..) {
        ok &= deliver(&mut q.slots, value);
    }
    ok
}

/// `false` for a reply nothing asked for.
fn deliver(slots: &mut VecDeque<Slot>, value: Value) -> bool {
    let Some(slot) = slots.front_mut() else { return false };
    match &mut slot.reply {
        Reply::One(to) => {
            if let Some(to) = to.take() {
                let _ = to.send(Ok(value));
            }
        }
        Reply::Many { left, values, to } => {
            values.push(value);
            *left -= 1;
            if *left > 0 {
                return true;
            }
            if let Some(to) = to.take() {
                let _ = to.send(Ok(std::mem::take(values)));
            }
        }
    }
    slots.pop_front();
    true
}

/// The timer task: answers the slots past their deadline with a timeout, and closes the
/// connection when `stop` fires.
async fn deadlines(shared: Arc<Shared>, stop: CancellationToken) {
    let timer = tokio::time::sleep(Duration::ZERO);
    let mut timer = std::pin::pin!(timer);
    let mut armed = false;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                shared.close();
                return;
            }
            () = &mut timer, if armed => {}
            () = shared.wake_timer.notified() => {}
        }
        let now = Instant::now();
        let next = {
            let mut q = shared.queue.lock().expect("mux queue lock");
            if q.broken {
                return;
            }
            let mut next: Option<Instant> = None;
            for slot in q.slots.iter_mut().filter(|s| s.reply.is_waited_for()) {
                if slot.deadline <= now {
                    slot.reply.fail(timed_out);
                } else {
                    next = Some(next.map_or(slot.deadline, |n| n.min(slot.deadline)));
                }
            }
            q.timer_at = next;
            next
        };
        armed = next.is_some();
        if let Some(at) = next {
            timer.as_mut().reset(at);
        }
    }
}

/// A RESP2 reply parser that resumes where the bytes ran out: complete elements are taken out
/// of the buffer as they are read, so a large reply arriving in many reads is read once.
#[derive(Default)]
struct Parser {
    /// The arrays being filled, innermost last, with how many elements each still lacks.
    open: Vec<(Vec<Value>, usize)>,
    /// How many bytes the buffer must hold before parsing can go on.
    need: usize,
}

/// One element read: a value, or the start of an array of that many elements.
enum Element {
    Value(Value),
    Array(usize),
}

fn parse_error(what: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::Parse, "unexpected answer from Redis", what.to_owned()))
}

impl Parser {
    /// The next complete reply in `buf` (its bytes taken out), `None` until more bytes come.
    fn parse(&mut self, buf: &mut BytesMut) -> RedisResult<Option<Value>> {
        loop {
            let mut value = match self.element(buf)? {
                None => return Ok(None),
                Some(Element::Array(0)) => Value::Array(Vec::new()),
                Some(Element::Array(n)) => {
                    if self.open.len() >= MAX_DEPTH {
                        return Err(parse_error("arrays nested too deep"));
                    }
                    self.open.push((Vec::with_capacity(n.min(PREALLOCATED)), n));
                    continue;
                }
                Some(Element::Value(v)) => v,
            };
            // Close every array this element completes.
            loop {
                let Some((values, left)) = self.open.last_mut() else { return Ok(Some(value)) };
                values.push(value);
                *left -= 1;
                if *left > 0 {
                    break;
                }
                let (values, _) = self.open.pop().expect("an open array");
                value = Value::Array(values);
            }
        }
    }

    /// One element (a scalar or an array header), its bytes taken out of `buf`.
    fn element(&mut self, buf: &mut BytesMut) -> RedisResult<Option<Element>> {
        self.need = 0;
        let Some(end) = buf.iter().position(|&b| b == b'\n') else {
            self.need = buf.len() + 1;
            return Ok(None);
        };
        if end < 2 || buf[end - 1] != b'\r' {
            return Err(parse_error("a line without its \\r\\n"));
        }
        let line = &buf[1..end - 1];
        let element = match buf[0] {
            b'+' => {
                let text =
                    std::str::from_utf8(line).map_err(|_| parse_error("a simple string not in UTF-8"))?;
                Element::Value(if text == "OK" { Value::Okay } else { Value::SimpleString(text.to_owned()) })
            }
            b':' => Element::Value(Value::Int(int(line)?)),
            // The crate's own parser builds the error's kind and code from the line (rare path).
            b'-' => Element::Value(redis::parse_redis_value(&buf[..=end])?),
            b'$' => match length(line, MAX_BULK, "a bulk string longer than 512 MiB")? {
                None => Element::Value(Value::Nil),
                Some(len) => {
                    let start = end + 1;
                    if buf.len() < start + len + 2 {
                        self.need = start + len + 2;
                        return Ok(None);
                    }
                    if &buf[start + len..start + len + 2] != b"\r\n" {
                        return Err(parse_error("a bulk string without its \\r\\n"));
                    }
                    let value = buf[start..start + len].to_vec();
                    buf.advance(start + len + 2);
                    return Ok(Some(Element::Value(Value::BulkString(value))));
                }
            },
            b'*' => match length(line, MAX_ELEMENTS, "an array of more than 2^32 elements")? {
                None => Element::Value(Value::Nil),
                Some(n) => Element::Array(n),
            },
            _ => return Err(parse_error("not a RESP2 type")),
        };
        buf.advance(end + 1);
        Ok(Some(element))
    }
}

/// A bulk string's or array's length line: `None` for the nil ones (negative), refused as
/// `too_long` above `max`.
fn length(line: &[u8], max: usize, too_long: &'static str) -> RedisResult<Option<usize>> {
    let len = int(line)?;
    if len < 0 {
        return Ok(None);
    }
    usize::try_from(len).ok().filter(|&l| l <= max).map(Some).ok_or_else(|| parse_error(too_long))
}

/// An integer line, read as the redis crate reads it.
fn int(line: &[u8]) -> RedisResult<i64> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| parse_error("expected an integer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_written_as_the_redis_crate_writes_them() {
        for args in [
            vec![b"PING".to_vec()],
            vec![b"SET".to_vec(), b"k".to_vec(), vec![0, b'\r', b'\n', 255]],
            vec![b"MSET".to_vec(), Vec::new(), vec![b'x'; 1000]],
        ] {
            let mut ours = Vec::new();
            write_command(&mut ours, &args);
            let mut theirs = Vec::new();
            crate::backend::packed(&args).write_packed_command(&mut theirs);
            assert_eq!(ours, theirs);
        }
    }

    /// Every reply in `bytes`, fed in pieces of the given sizes.
    fn parse_in(bytes: &[u8], split: usize) -> RedisResult<Vec<Value>> {
        let mut parser = Parser::default();
        let mut buf = BytesMut::new();
        let mut values = Vec::new();
        for piece in [&bytes[..split], &bytes[split..]] {
            buf.extend_from_slice(piece);
            while buf.len() >= parser.need {
                match parser.parse(&mut buf)? {
                    Some(v) => values.push(v),
                    None => break,
                }
            }
        }
        assert!(buf.is_empty(), "bytes left over");
        Ok(values)
    }

    const REPLIES: &[&[u8]] = &[
        b"+OK\r\n",
        b"+PONG\r\n",
        b":-42\r\n",
        b"$5\r\nhe\r\no\r\n",
        b"$0\r\n\r\n",
        b"$-1\r\n",
        b"*-1\r\n",
        b"*0\r\n",
        b"*3\r\n$1\r\na\r\n*2\r\n:1\r\n*1\r\n+x\r\n-ERR bad\r\n",
        b"-ERR bad thing\r\n",
        b"-WRONGTYPE Operation against a key\r\n",
        b"-NOSCRIPT No matching script\r\n",
        b"*2\r\n*0\r\n$-1\r\n",
    ];

    #[test]
    fn replies_parse_as_the_redis_crate_parses_them_at_every_split() {
        // The crate's own parser, reply by reply, is the reference.
        let expected: Vec<Value> = REPLIES.iter().map(|r| redis::parse_redis_value(r).unwrap()).collect();
        assert!(matches!(expected[0], Value::Okay));
        assert!(matches!(expected[5], Value::Nil) && matches!(expected[6], Value::Nil));
        let all = REPLIES.concat();
        for split in 0..=all.len() {
            assert_eq!(parse_in(&all, split).unwrap(), expected, "split at {split}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |n: usize| [b"*1\r\n".repeat(n), b":1\r\n".to_vec()].concat();
        assert_eq!(parse_in(&deep(MAX_DEPTH), 0).unwrap().len(), 1);
        assert!(parse_in(&deep(MAX_DEPTH + 1), 0).is_err());
    }

    #[test]
    fn huge_lengths_are_refused_before_anything_is_buffered() {
        let mut parser = Parser::default();
        let mut buf = BytesMut::from(&b"$536870913\r\n"[..]);
        assert_eq!(parser.parse(&mut buf).unwrap_err().kind(), redis::ErrorKind::Parse);
        let mut buf = BytesMut::from(&b"*4294967296\r\n"[..]);
        assert!(Parser::default().parse(&mut buf).is_err());
        // A large announced array reserves little until its elements come.
        let mut parser = Parser::default();
        let mut buf = BytesMut::from(&b"*4294967295\r\n:1\r\n"[..]);
        assert_eq!(parser.parse(&mut buf).unwrap(), None);
        assert_eq!(parser.open[0].0.capacity(), PREALLOCATED);
        assert_eq!(parser.open.len(), 1);
        // A bulk string waits for all of its bytes, and says how many.
        let mut buf = BytesMut::from(&b"$10\r\nabc"[..]);
        let mut parser = Parser::default();
        assert_eq!(parser.parse(&mut buf).unwrap(), None);
        assert_eq!(parser.need, 17);
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [&b":12x\r\n"[..], b"+a\n", b"?\r\n", b"$1\r\nab\r\n", b"+\xff\r\n"] {
            assert!(parse_in(bad, 0).is_err(), "{bad:?}");
        }
    }
}
