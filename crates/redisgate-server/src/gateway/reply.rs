//! Building data-plane HTTP responses: the Upstash envelope, status codes and the headers
//! every answer carries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::Response;
use http::{HeaderName, HeaderValue, StatusCode, header};
use redisgate_core::codec;

use crate::backend::BackendError;

/// `upstash-sync-token` values: strictly increasing for the life of the process, and
/// prefixed by the start time so that a restarted gateway does not repeat old values.
pub struct SyncTokens {
    epoch: u64,
    counter: AtomicU64,
}

impl SyncTokens {
    pub fn new() -> Self {
        let epoch = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Self { epoch, counter: AtomicU64::new(0) }
    }

    fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        let (mut epoch, mut count) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (epoch, count) = (epoch.format(self.epoch), count.format(n));
        let mut v = Vec::with_capacity(epoch.len() + count.len() + 1);
        v.extend_from_slice(epoch.as_bytes());
        v.push(b'-');
        v.extend_from_slice(count.as_bytes());
        HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).expect("digits and a dash")
    }
}

impl Default for SyncTokens {
    fn default() -> Self {
        Self::new()
    }
}

const SYNC_TOKEN: HeaderName = HeaderName::from_static("upstash-sync-token");

/// A response with a body already encoded.
pub fn bytes(status: StatusCode, content_type: &'static str, body: Vec<u8>, sync: &SyncTokens) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    // No `reserve`: a header map's first allocation holds six headers, as many as an answer
    // gets (these two, three RateLimit ones, Retry-After); reserving twelve cost more than
    // the regrowth it saved for the rare answer with CORS headers.
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(SYNC_TOKEN, sync.next());
    r
}

pub fn json(status: StatusCode, body: Vec<u8>, sync: &SyncTokens) -> Response {
    bytes(status, "application/json", body, sync)
}

/// `{"error": text}` with `status`.
pub fn error(status: StatusCode, text: &str, sync: &SyncTokens) -> Response {
    let mut body = Vec::with_capacity(text.len() + 12);
    codec::write_error(text, &mut body);
    json(status, body, sync)
}

fn retry_after(mut r: Response, after: Duration) -> Response {
    let secs = after.as_secs_f64().ceil().max(1.0) as u64;
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// A backend failure as an HTTP answer: 503 + `Retry-After` when Redis is unreachable or the
/// connection broke, 504 on a response timeout (or a script that outran its bound), 502 on anything Redis should never send.
pub fn backend_error(e: &BackendError, sync: &SyncTokens) -> Response {
    let text = e.to_string();
    match e {
        BackendError::Unavailable { retry_after: a, .. }
        | BackendError::ConnectionLost { retry_after: a }
        | BackendError::TooManyStreams { retry_after: a } => {
            retry_after(error(StatusCode::SERVICE_UNAVAILABLE, &text, sync), *a)
        }
        BackendError::Timeout(_) | BackendError::ScriptNotKilled { .. } => {
            error(StatusCode::GATEWAY_TIMEOUT, &text, sync)
        }
        BackendError::Protocol(_) => error(StatusCode::BAD_GATEWAY, &text, sync),
    }
}
