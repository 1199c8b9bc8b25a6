//! The data plane: the Upstash REST protocol over real Redis (PROTOCOL.md).
//!
//! # Layout
//! - [`auth`]: tokens, from `Authorization: Bearer` or `_token`, checked in constant time.
//! - [`keys`]: API keys for `/redis/{instance_id}`, from an in-memory cache.
//! - [`backend`]: the connections to one Redis server (shared multiplexed + dedicated for SSE),
//!   with retry and reconnect.
//! - [`exec`]: running one command, a pipeline or a transaction.
//! - [`ha`]: Sentinel and Cluster instances, routed over per-server backends.
//! - [`lua`]: Upstash's script shebang over plain Redis, under the SHAs clients computed.
//! - [`script`]: scripts' time bound (SCRIPT KILL) and per-scope ACL users.
//! - [`sse`]: `/subscribe`, `/psubscribe`, `/monitor` as Server-Sent Events.
//! - [`sharded`]: `/ssubscribe` (sharded pub/sub) as Server-Sent Events, following its slot.
//! - [`reply`]: response envelopes, status codes, `upstash-sync-token`.
//! - [`slots`]: requests in flight and SSE streams per caller.
//!
//! A request goes: method check → token → the caller's in-flight slot → rate limit → body
//! (size and time bounded) → parse → policy for every command → backend → encode.

pub mod auth;
pub mod exec;
pub mod keys;
pub mod lua;
pub mod reply;
pub mod sharded;
pub mod slots;
pub mod sse;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use redis::Value;
use redisgate_core::codec::{self, Encoding};
use redisgate_core::command::Command;
use redisgate_core::policy::{self, Access, Refusal};
use redisgate_core::request::{self, ParseLimits, Request as Rq};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use self::auth::{Principal, Tokens};
use self::exec::TxOutcome;
use self::reply::SyncTokens;
use crate::config::HttpSettings;

/// Shared state of the data plane.
pub struct Gateway {
    /// Standalone tokens, served at `/`.
    pub tokens: Tokens,
    /// API keys, served at `/redis/{instance_id}`.
    pub keys: Arc<keys::KeyAuth>,
    pub limiter: Arc<crate::ops::ratelimit::RateLimiter>,
    pub http: HttpSettings,
    pub sync: SyncTokens,
    pub shutdown: CancellationToken,
    /// Requests in flight and streams per caller.
    pub slots: Arc<slots::Slots>,
    /// SHAs of scripts sent rewritten for plain Redis.
    pub scripts: lua::Scripts,
}

/// What the client asked the answer to look like (PROTOCOL.md §4.3, §4.4).
#[derive(Clone, Copy)]
struct Format {
    encoding: Encoding,
    resp2: bool,
}

const ENCODING: HeaderName = HeaderName::from_static("upstash-encoding");
const RESPONSE_FORMAT: HeaderName = HeaderName::from_static("upstash-response-format");

fn format(headers: &HeaderMap) -> Result<Format, &'static str> {
    let encoding = match headers.get(ENCODING) {
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"base64") => Encoding::Base64,
        _ => Encoding::Plain,
    };
    let resp2 = match headers.get(RESPONSE_FORMAT).map(HeaderValue::as_bytes) {
        None => false,
        Some(v) if v.eq_ignore_ascii_case(b"json") => false,
        Some(v) if v.eq_ignore_ascii_case(b"resp2") => true,
        Some(_) => return Err("ERR Upstash-Response-Format must be `json` or `resp2`"),
    };
    if resp2 && encoding == Encoding::Base64 {
        return Err("ERR Upstash-Response-Format: resp2 cannot be combined with Upstash-Encoding: base64");
    }
    Ok(Format { encoding, resp2 })
}

fn method_not_allowed(method: &Method, sync: &SyncTokens) -> Response {
    let mut r = reply::error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("ERR method {method} is not allowed; use GET, POST, PUT or HEAD"),
        sync,
    );
    r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, POST, PUT, HEAD"));
    r
}

/// The answer to a missing, wrong, revoked or expired key (also the console's, for a key it
/// was asked to run as).
pub fn unauthorized(sync: &SyncTokens) -> Response {
    reply::error(StatusCode::UNAUTHORIZED, "WRONGPASS invalid or missing auth token", sync)
}

fn allowed_method(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::POST | Method::PUT | Method::HEAD)
}

/// Standalone mode: the protocol at `/`, the token picks the backend.
pub async fn handle(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    if !allowed_method(req.method()) {
        return method_not_allowed(req.method(), &gw.sync);
    }
    let span = tracing::debug_span!("auth", auth.method = "token", auth.outcome = tracing::field::Empty);
    let principal =
        span.in_scope(|| auth::token(req.headers(), req.uri().query()).and_then(|t| gw.tokens.find(&t)));
    span.record("auth.outcome", if principal.is_some() { "ok" } else { "denied" });
    let Some(principal) = principal else {
        return unauthorized(&gw.sync);
    };
    serve(&gw, principal, 0, req).await
}

/// `/redis/{instance_id}/…`: the protocol for one instance, reached with an API key. A wrong
/// key, a key of another organization or not allowed on the instance, and an instance that
/// does not exist (or is not running) all get the same 401.
pub async fn handle_instance(State(gw): State<Arc<Gateway>>, req: Request) -> Response {
    if !allowed_method(req.method()) {
        return method_not_allowed(req.method(), &gw.sync);
    }
    let rest = req.uri().path().strip_prefix("/redis/").unwrap_or("");
    let id = &rest[..rest.find('/').unwrap_or(rest.len())];
    // The protocol path (`/get/k`, `/pipeline`, …) starts after the id.
    let path_start = "/redis/".len() + id.len();
    let (Ok(id), Some(token)) = (id.parse(), auth::token(req.headers(), req.uri().query())) else {
        return unauthorized(&gw.sync);
    };
    match gw.keys.principal(&token, id).await {
        Ok(principal) => {
            metrics::counter!(crate::ops::metrics::API_KEY_REQUESTS).increment(1);
            serve(&gw, principal, path_start, req).await
        }
        Err(keys::Denied::Unauthorized) => {
            metrics::counter!(crate::ops::metrics::API_KEY_AUTH_FAILURES).increment(1);
            unauthorized(&gw.sync)
        }
        Err(keys::Denied::StoreDown) => {
            let e = crate::backend::BackendError::Unavailable {
                reason: "the key store is unreachable".into(),
                retry_after: std::time::Duration::from_secs(1),
            };
            reply::backend_error(&e, &gw.sync)
        }
    }
}

/// A request the management API built for `principal` (the console's command line and data
/// browser): it takes the data plane's own path after authentication, so the same slots,
/// rate limit, parser, policy and error texts apply. Only the body and the
/// `upstash-encoding` header of `req` are read; its path is the protocol path.
pub async fn serve_as(gw: &Gateway, principal: Principal, req: Request) -> Response {
    serve(gw, principal, 0, req).await
}

/// Everything after authentication: in-flight slot, rate limit, format headers, body, parse,
/// policy, run, encode. The protocol path is the request's path from `path_start` on.
async fn serve(gw: &Gateway, principal: Principal, path_start: usize, req: Request) -> Response {
    let Some(_in_flight) = gw.slots.request(principal.caller) else {
        return reply::error(StatusCode::TOO_MANY_REQUESTS, &gw.slots.too_many_requests(), &gw.sync);
    };
    let Some((bucket, rate)) = principal.limit else {
        return serve_admitted(gw, principal, path_start, req).await;
    };
    let span = tracing::debug_span!("rate_limit", ratelimit.allowed = tracing::field::Empty);
    let decision = gw.limiter.check(bucket, rate).instrument(span.clone()).await;
    span.record("ratelimit.allowed", decision.allowed);
    let mut response = if decision.allowed {
        serve_admitted(gw, principal, path_start, req).await
    } else {
        metrics::counter!(crate::ops::metrics::RATE_LIMIT_REJECTIONS).increment(1);
        let text = format!(
            "ERR rate limit exceeded: {} requests per second (burst {})",
            rate.per_second, rate.burst
        );
        reply::error(StatusCode::TOO_MANY_REQUESTS, &text, &gw.sync)
    };
    crate::ops::ratelimit::headers(rate, &decision, response.headers_mut());
    response
}

async fn serve_admitted(gw: &Gateway, principal: Principal, path_start: usize, req: Request) -> Response {
    let sync = &gw.sync;
    let (parts, body) = req.into_parts();
    let fmt = match format(&parts.headers) {
        Ok(f) => f,
        Err(e) => return reply::error(StatusCode::BAD_REQUEST, e, sync),
    };
    let body = match read_body(&gw.http, body).await {
        Ok(b) => b,
        Err((status, text)) => return reply::error(status, text, sync),
    };
    let limits = ParseLimits { max_batch_commands: gw.http.max_pipeline_commands };
    let path = parts.uri.path().get(path_start..).unwrap_or("");
    let parsed = match request::parse(path, parts.uri.query(), &body, limits) {
        Ok(p) => p,
        Err(e) => return reply::error(StatusCode::BAD_REQUEST, &e.to_string(), sync),
    };
    drop(body);
    if let Err(refusal) = authorize(&parsed, principal.access) {
        return reply::error(StatusCode::BAD_REQUEST, &refusal.to_string(), sync);
    }
    let mut response = dispatch(gw, &principal, parsed, fmt).await;
    if parts.method == Method::HEAD {
        *response.body_mut() = Body::empty();
    }
    response
}

/// Reads the whole body within the size and time limits.
async fn read_body(http: &HttpSettings, body: Body) -> Result<bytes::Bytes, (StatusCode, &'static str)> {
    const TOO_LARGE: (StatusCode, &str) = (StatusCode::PAYLOAD_TOO_LARGE, "ERR max request size exceeded");
    // Most data-plane requests (GET path form) have no body: skip the timer entirely.
    if axum::body::HttpBody::is_end_stream(&body) {
        return Ok(bytes::Bytes::new());
    }
    let read = Limited::new(body, http.max_body_bytes).collect();
    match tokio::time::timeout(http.body_read_timeout, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(TOO_LARGE),
        Ok(Err(_)) => Err((StatusCode::BAD_REQUEST, "ERR could not read the request body")),
        Err(_) => Err((StatusCode::REQUEST_TIMEOUT, "ERR request body not received in time")),
    }
}

/// Policy for every command of the request, in whatever form it came.
fn authorize(req: &Rq, access: Access) -> Result<(), Refusal> {
    match req {
        Rq::Monitor if access == Access::ReadOnly => Err(Refusal::NoPermission { command: "monitor".into() }),
        // Subscribing reads; the SSE endpoints are the only way to do it.
        Rq::Subscribe(_) | Rq::PSubscribe(_) | Rq::SSubscribe(_) | Rq::Monitor => Ok(()),
        _ => req.commands().iter().try_for_each(|c| policy::check(c, access)),
    }
}

/// Records a batch's commands (by catalog position): each gets its own outcome and an equal
/// share of the time in the metrics; the instance's usage meter counts each command as a read
/// or a write (and failed or not), and the request's time once.
fn record_commands(
    backend: &crate::backend::Backend,
    commands: &[Option<usize>],
    started: std::time::Instant,
    outcomes: Option<&[Value]>,
) {
    let elapsed = started.elapsed();
    let share = elapsed.as_secs_f64() / commands.len().max(1) as f64;
    let usage = backend.usage();
    usage.request(elapsed);
    // A run of the same command (a batch of GETs) is recorded at once: the same counts and
    // samples as one by one, with one series lookup.
    let mut first = 0;
    for run in commands.chunk_by(|a, b| a == b) {
        let mut errors = 0;
        for i in first..first + run.len() {
            let failed = outcomes.is_none_or(|vs| matches!(vs.get(i), Some(Value::ServerError(_)) | None));
            usage.command(crate::usage::is_read(run[0]), failed);
            errors += u64::from(failed);
        }
        crate::ops::metrics::redis_commands(run[0], run.len() as u64, errors, share);
        first += run.len();
    }
}

async fn dispatch(gw: &Gateway, p: &Principal, req: Rq, fmt: Format) -> Response {
    let sync = &gw.sync;
    let backend = &p.backend;
    let keepalive = gw.http.sse_keepalive;
    let max_reply = gw.http.max_response_bytes;
    let started = std::time::Instant::now();
    // The commands' catalog positions, for their metrics.
    let (one, many): ([Option<usize>; 1], Vec<Option<usize>>);
    let commands: &[Option<usize>] = match &req {
        // Most requests carry one command: no allocation for its position.
        Rq::Single(c) => {
            one = [c.catalog_index()];
            &one
        }
        _ => {
            many = req.commands().iter().map(Command::catalog_index).collect();
            &many
        }
    };
    // A stream holds its caller's stream slot for as long as it lasts.
    let slot = match &req {
        Rq::Subscribe(_) | Rq::PSubscribe(_) | Rq::SSubscribe(_) | Rq::Monitor => match gw
            .slots
            .stream(p.caller)
        {
            Some(slot) => Some(slot),
            None => return reply::error(StatusCode::TOO_MANY_REQUESTS, &gw.slots.too_many_streams(), sync),
        },
        _ => None,
    };
    let shutdown = gw.shutdown.clone();
    let result = match req {
        Rq::Single(cmd) => {
            let (cmd, fix) = gw.scripts.prepare(cmd);
            exec::single(backend, cmd, p.access).await.map(|mut v| {
                if let Some(fix) = fix {
                    fix.apply(&mut v);
                }
                record_commands(backend, commands, started, Some(std::slice::from_ref(&v)));
                single_reply(&v, fmt, max_reply, sync)
            })
        }
        Rq::Pipeline(cmds) => {
            let (cmds, fixes) = prepare_batch(&gw.scripts, cmds);
            exec::pipeline(backend, cmds, p.access).await.map(|mut vs| {
                apply_fixes(&mut vs, fixes);
                record_commands(backend, commands, started, Some(&vs));
                batch_reply(&vs, fmt, max_reply, sync)
            })
        }
        Rq::Transaction(cmds) => {
            let (cmds, fixes) = prepare_batch(&gw.scripts, cmds);
            exec::transaction(backend, cmds, p.access).await.map(|out| match out {
                // The docs: resp2 does not apply to /multi-exec, which always answers JSON.
                TxOutcome::Committed(mut vs) => {
                    apply_fixes(&mut vs, fixes);
                    record_commands(backend, commands, started, Some(&vs));
                    batch_reply(&vs, Format { resp2: false, ..fmt }, max_reply, sync)
                }
                TxOutcome::Discarded(text) => {
                    record_commands(backend, commands, started, None);
                    reply::error(StatusCode::BAD_REQUEST, &text, sync)
                }
            })
        }
        // Streams are boxed: their futures are large, and would otherwise make every request's.
        Rq::Subscribe(names) => {
            Box::pin(sse::subscribe(backend, names, false, keepalive, shutdown, slot)).await
        }
        Rq::PSubscribe(names) => {
            Box::pin(sse::subscribe(backend, names, true, keepalive, shutdown, slot)).await
        }
        Rq::SSubscribe(names) => {
            match Box::pin(sharded::ssubscribe(backend, names, keepalive, shutdown, slot, max_reply)).await {
                Ok(r) => Ok(r),
                Err(sharded::Refused::Redis(text)) => {
                    return reply::error(StatusCode::BAD_REQUEST, &text, sync);
                }
                Err(sharded::Refused::Backend(e)) => Err(e),
            }
        }
        Rq::Monitor => Box::pin(sse::monitor(backend, keepalive, shutdown, slot)).await,
    };
    result.unwrap_or_else(|e| {
        record_commands(backend, commands, started, None);
        tracing::warn!(backend = backend.label(), error = %e, "backend request failed");
        reply::backend_error(&e, sync)
    })
}

/// A batch's commands as they go to Redis ([`lua::Scripts::prepare`]), and the answers to
/// fix afterwards by position (none, and no allocation, for a batch without Upstash scripts).
fn prepare_batch(scripts: &lua::Scripts, cmds: Vec<Command>) -> (Vec<Command>, Vec<(usize, lua::ClientSha)>) {
    let mut fixes = Vec::new();
    let cmds = cmds
        .into_iter()
        .enumerate()
        .map(|(i, cmd)| {
            let (cmd, fix) = scripts.prepare(cmd);
            fixes.extend(fix.map(|f| (i, f)));
            cmd
        })
        .collect();
    (cmds, fixes)
}

fn apply_fixes(values: &mut [Value], fixes: Vec<(usize, lua::ClientSha)>) {
    for (i, fix) in fixes {
        if let Some(v) = values.get_mut(i) {
            fix.apply(v);
        }
    }
}

/// The answer for a reply that would encode to more than `http.max_response_bytes`. The
/// commands did run: only their reply is dropped, and the text says so.
fn too_large(bound: usize, max: usize, sync: &SyncTokens) -> Response {
    let text = format!(
        "ERR reply too large: up to {bound} bytes encoded, above http.max_response_bytes ({max}); \
         the command ran but its reply was dropped: ask for less (GETRANGE, LRANGE, SCAN …)"
    );
    reply::error(StatusCode::BAD_REQUEST, &text, sync)
}

fn single_reply(v: &Value, fmt: Format, max: usize, sync: &SyncTokens) -> Response {
    if let Value::ServerError(e) = v {
        return reply::error(StatusCode::BAD_REQUEST, &codec::error_text(e), sync);
    }
    if fmt.resp2 {
        let bound = codec::resp2_len_bound(v);
        if bound > max {
            return too_large(bound, max, sync);
        }
        let mut out = Vec::with_capacity(bound);
        codec::write_resp2(v, &mut out);
        return reply::bytes(StatusCode::OK, "application/octet-stream", out, sync);
    }
    let size = match json_size(std::slice::from_ref(v), 0, fmt.encoding, max) {
        Ok(size) => size,
        Err(bound) => return too_large(bound, max, sync),
    };
    let mut out = Vec::with_capacity(size);
    codec::write_envelope(v, fmt.encoding, &mut out);
    reply::json(StatusCode::OK, out, sync)
}

/// The buffer size for the JSON envelopes of `values` and `frame` bytes around them, or
/// `Err(bound)` when they could encode to more than `max`. The size without escapes is exact
/// for the usual text and decides alone when even six times it fits; only a reply near the
/// limit has its text read for the exact bound.
fn json_size(values: &[Value], frame: usize, enc: Encoding, max: usize) -> Result<usize, usize> {
    let size = frame + values.iter().map(|v| codec::envelope_len_unescaped(v, enc)).sum::<usize>();
    if size.saturating_mul(6) <= max {
        return Ok(size);
    }
    let bound = frame + values.iter().map(|v| codec::envelope_len_bound(v, enc)).sum::<usize>();
    if bound > max { Err(bound) } else { Ok(bound) }
}

/// `[{"result":…},{"error":…},…]`, or with resp2 the raw replies one after the other.
fn batch_reply(values: &[Value], fmt: Format, max: usize, sync: &SyncTokens) -> Response {
    if fmt.resp2 {
        let bound = values.iter().map(codec::resp2_len_bound).sum();
        if bound > max {
            return too_large(bound, max, sync);
        }
        let mut out = Vec::with_capacity(bound);
        values.iter().for_each(|v| codec::write_resp2(v, &mut out));
        return reply::bytes(StatusCode::OK, "application/octet-stream", out, sync);
    }
    // `[`, `]` and the commas.
    let frame = 2 + values.len().saturating_sub(1);
    let size = match json_size(values, frame, fmt.encoding, max) {
        Ok(size) => size,
        Err(bound) => return too_large(bound, max, sync),
    };
    let mut out = Vec::with_capacity(size);
    out.push(b'[');
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        codec::write_envelope(v, fmt.encoding, &mut out);
    }
    out.push(b']');
    reply::json(StatusCode::OK, out, sync)
}
