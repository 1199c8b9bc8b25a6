//! The web console: a small single-page application of plain ES modules
//! (`crates/redisgate-server/console/`), compiled into the binary and served at `/console/`.
//! It has no server-side logic of its own: every page calls the JSON API (`/auth/…`,
//! `/api/…`) with the session cookie and the CSRF token, as curl calls it with a bearer token.
//!
//! Every answer under `/console` carries a strict Content-Security-Policy (no inline script
//! or style, nothing from another origin, no framing), `nosniff` and `no-referrer`. Assets
//! are revalidated with an ETag (`no-cache`), so an upgraded binary is picked up at once.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};

/// The policy of every console answer. `img-src data:` is for the inline SVG icon only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

macro_rules! assets {
    ($($name:literal => $kind:literal),* $(,)?) => {
        &[$(($name, include_bytes!(concat!("../console/", $name)) as &[u8], $kind)),*]
    };
}

/// Every file of the console: name, bytes, content type.
const ASSETS: &[(&str, &[u8], &str)] = assets![
    "index.html" => "text/html; charset=utf-8",
    "style.css" => "text/css; charset=utf-8",
    "app.js" => "text/javascript; charset=utf-8",
    "api.js" => "text/javascript; charset=utf-8",
    "dom.js" => "text/javascript; charset=utf-8",
    "auth.js" => "text/javascript; charset=utf-8",
    "orgs.js" => "text/javascript; charset=utf-8",
    "instances.js" => "text/javascript; charset=utf-8",
    "browser.js" => "text/javascript; charset=utf-8",
    "cli.js" => "text/javascript; charset=utf-8",
    "keys.js" => "text/javascript; charset=utf-8",
    "audit.js" => "text/javascript; charset=utf-8",
];

struct Asset {
    bytes: &'static [u8],
    content_type: &'static str,
    etag: HeaderValue,
}

/// The assets with their ETags (a hash of the bytes), computed once.
static TABLE: LazyLock<Vec<(&'static str, Asset)>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|&(name, bytes, content_type)| {
            let digest = Sha256::digest(bytes);
            let etag = format!("\"{}\"", hex_prefix(&digest));
            (
                name,
                Asset {
                    bytes,
                    content_type,
                    etag: HeaderValue::try_from(etag).expect("hex is a valid header"),
                },
            )
        })
        .collect()
});

fn hex_prefix(digest: &[u8]) -> String {
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// The security headers every console answer carries.
fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

fn asset(name: &str, headers: &HeaderMap) -> Response {
    let Some((_, a)) = TABLE.iter().find(|(n, _)| *n == name) else {
        return secure(crate::api::ApiError::NotFound("console page").into_response());
    };
    let cache =
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-cache")), (header::ETAG, a.etag.clone())];
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v == a.etag) {
        return secure((StatusCode::NOT_MODIFIED, cache).into_response());
    }
    let kind = (header::CONTENT_TYPE, HeaderValue::from_static(a.content_type));
    secure((cache, [kind], a.bytes).into_response())
}

async fn index(headers: HeaderMap) -> Response {
    asset("index.html", &headers)
}

async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    asset(&name, &headers)
}

async fn to_console() -> Response {
    secure(axum::response::Redirect::permanent("/console/").into_response())
}

/// `/console/` (the page; its own routes are `#/…` fragments, so the server serves one
/// document), `/console/{file}`, and `/console` and `/` sending browsers there.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", axum::routing::get(to_console))
        .route("/console", axum::routing::get(to_console))
        .route("/console/", axum::routing::get(index))
        .route("/console/{name}", axum::routing::get(file))
}
