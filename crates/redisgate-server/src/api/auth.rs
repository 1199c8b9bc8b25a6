//! Accounts: register, log in (throttled), who am I, log out.
//!
//! The routes anyone may call (register, log in, and accepting an invitation) are first
//! held to `auth.anonymous_rate` per client address ([`Admitted`]): past it a request is
//! refused before any password hash, store read or audit row, so a flood from one address
//! costs neither CPU nor database growth. Those refusals are counted in
//! `auth_rate_limit_rejections_total`, not audited (auditing them would be the growth).
//!
//! Passwords are hashed with Argon2id off the async threads. Sessions are opaque bearer
//! tokens (`rgs_…`, 256 random bits) that expire; only their SHA-256 is stored, so a copy of
//! the database logs nobody in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::{FromRequestParts, MatchedPath};
use axum::response::IntoResponse;
use base64::Engine as _;
use http::StatusCode;
use http::request::Parts;
use redisgate_core::account::{self, Email, Registration, User};
use redisgate_core::audit::Outcome;
use redisgate_core::org::Role;
use redisgate_core::quota::Plan;
use redisgate_core::ratelimit::Rate;
use redisgate_core::store::{Admission, Invitee, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::gateway::auth::bearer;
use crate::ops::metrics::AUTH_RATE_LIMIT_REJECTIONS;
use crate::ops::ratelimit::LocalLimiter;

use super::{ApiError, ApiJson, ApiResult, ApiState, RequestMeta, State};
use crate::api::audit;

/// Counts failed logins per e-mail, per client address and per (e-mail, address) in fixed
/// windows, in this process' memory.
///
/// An attempt is counted *before* its password is verified ([`LoginThrottle::begin`]) and
/// given back only when it succeeds, so parallel guesses cannot all pass the check while
/// the slow verifications run. Past `per_ip` failures an address waits out the window. Past
/// `per_email` failures the e-mail is locked, but not for its owner: an address with no
/// failure against that e-mail may still try (once — each failure locks that address for
/// that e-mail too), so a stranger guessing cannot lock the owner out.
pub struct LoginThrottle {
    window: Duration,
    per_email: u32,
    per_ip: u32,
    counts: Mutex<HashMap<ThrottleKey, (u32, Instant)>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum ThrottleKey {
    Email(String),
    Ip(String),
    Pair(String, String),
}

/// The address a throttle counts: IPv6 clients by their /64, which one subscriber usually
/// holds whole (else each of its 2^64 addresses would be a fresh one).
fn throttle_address(ip: Option<&str>) -> String {
    match ip.and_then(|ip| ip.parse::<std::net::IpAddr>().ok()) {
        Some(std::net::IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                ipnet::Ipv6Net::new(v6, 64).expect("64 is a valid IPv6 prefix length").trunc().to_string()
            }
        },
        Some(ip) => ip.to_string(),
        None => ip.unwrap_or("-").to_owned(),
    }
}

/// `auth.anonymous_rate`: GCRA per client address (as the login throttle counts them), in
/// this process' memory.
pub struct AnonymousLimit {
    rate: Rate,
    buckets: LocalLimiter<String>,
}

impl AnonymousLimit {
    pub fn new(rate: Rate) -> Self {
        Self { rate, buckets: LocalLimiter::new() }
    }

    /// Spends one request of the address, or `Err(retry_after)`.
    fn check(&self, ip: Option<&str>) -> Result<(), Duration> {
        let d = self.buckets.check(throttle_address(ip), self.rate);
        if d.allowed { Ok(()) } else { Err(d.retry_after) }
    }

    /// Forgets addresses whose budget is full again; called periodically, so memory is
    /// bounded by the addresses seen within one burst's refill time.
    pub fn forget_idle(&self) {
        self.buckets.retain_recent();
    }
}

/// Where a request to an anonymous route came from, once `auth.anonymous_rate` admitted it.
/// Extracted before the body, so even malformed requests spend the budget.
pub struct Admitted(pub RequestMeta);

impl FromRequestParts<Arc<ApiState>> for Admitted {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, ApiError> {
        let Ok(meta) = RequestMeta::from_request_parts(parts, state).await;
        if let Err(retry_after) = state.anonymous.check(meta.ip.as_deref()) {
            // The route template: a closed set of label values.
            let route = parts.extensions.get::<MatchedPath>().map_or("-", MatchedPath::as_str).to_owned();
            metrics::counter!(AUTH_RATE_LIMIT_REJECTIONS, "route" => route).increment(1);
            return Err(ApiError::TooManyRequests { retry_after });
        }
        Ok(Admitted(meta))
    }
}

/// Counter entries one process keeps at most (about 100 bytes each). Past it, finished
/// windows are forgotten first, then the oldest running ones.
const MAX_THROTTLE_ENTRIES: usize = 100_000;

/// A login attempt counted as a failure until [`LoginThrottle::succeeded`] gives it back.
pub struct Attempt {
    email: String,
    ip: String,
}

impl LoginThrottle {
    pub fn new(window: Duration, per_email: u32, per_ip: u32) -> Self {
        Self { window, per_email, per_ip, counts: Mutex::new(HashMap::new()) }
    }

    /// Reserves an attempt, or `Err(retry_after)` while the address, or the e-mail for this
    /// address, is over its limit.
    pub fn begin(&self, email: &str, ip: Option<&str>) -> Result<Attempt, Duration> {
        let now = Instant::now();
        let ip = &throttle_address(ip);
        let keys = [
            ThrottleKey::Email(email.to_owned()),
            ThrottleKey::Ip(ip.to_owned()),
            ThrottleKey::Pair(email.to_owned(), ip.to_owned()),
        ];
        let mut map = self.counts.lock().expect("throttle lock");
        // (failures in the running window, time until it ends)
        let live = |key: &ThrottleKey| match map.get(key) {
            Some((n, since)) if now.duration_since(*since) < self.window => {
                (*n, self.window - now.duration_since(*since))
            }
            _ => (0, Duration::ZERO),
        };
        let [(by_email, email_wait), (by_ip, ip_wait), (by_pair, pair_wait)] = keys.each_ref().map(live);
        if by_ip >= self.per_ip {
            return Err(ip_wait);
        }
        if by_email >= self.per_email && by_pair > 0 {
            return Err(email_wait.min(pair_wait));
        }
        if map.len() + keys.len() > MAX_THROTTLE_ENTRIES {
            Self::shrink(&mut map, now, self.window);
        }
        for key in keys {
            let entry = map.entry(key).or_insert((0, now));
            if now.duration_since(entry.1) >= self.window {
                *entry = (0, now);
            }
            entry.0 += 1;
        }
        Ok(Attempt { email: email.to_owned(), ip: ip.to_owned() })
    }

    /// Keeps the map under [`MAX_THROTTLE_ENTRIES`]: finished windows go, then, under a
    /// spray of distinct e-mails and addresses, the oldest quarter of the running ones.
    fn shrink(map: &mut HashMap<ThrottleKey, (u32, Instant)>, now: Instant, window: Duration) {
        map.retain(|_, (_, since)| now.duration_since(*since) < window);
        if map.len() + 3 > MAX_THROTTLE_ENTRIES {
            let mut starts: Vec<Instant> = map.values().map(|(_, since)| *since).collect();
            let cut = starts.len() / 4;
            let (_, oldest_kept, _) = starts.select_nth_unstable(cut);
            let oldest_kept = *oldest_kept;
            map.retain(|_, (_, since)| *since >= oldest_kept);
            if map.len() + 3 > MAX_THROTTLE_ENTRIES {
                // All started at one instant: nothing is older than anything else.
                map.clear();
            }
        }
    }

    /// The right password: the attempt is given back and the e-mail's failures forgotten.
    pub fn succeeded(&self, attempt: Attempt) {
        let mut map = self.counts.lock().expect("throttle lock");
        map.remove(&ThrottleKey::Email(attempt.email.clone()));
        for key in [ThrottleKey::Ip(attempt.ip.clone()), ThrottleKey::Pair(attempt.email, attempt.ip)] {
            if let Some((n, _)) = map.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
    }

    #[cfg(test)]
    fn entries(&self) -> usize {
        self.counts.lock().expect("throttle lock").len()
    }
}

pub use crate::secrets::hash_secret;

/// `prefix` + 256 random bits, base64url.
pub fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

async fn hash_password(password: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || {
        Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string())
    })
    .await
    .map_err(|_| ApiError::Internal)?
    .map_err(|_| ApiError::Internal)
}

/// Verifies off the async threads. Unknown users are checked against a fixed hash so that
/// the answer takes as long as for a real account.
async fn verify_password(password: String, hash: Option<String>) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    tokio::task::spawn_blocking(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| {
            DUMMY
                .get_or_init(|| {
                    Argon2::default()
                        .hash_password(b"not-a-real-password")
                        .expect("hashing works")
                        .to_string()
                })
                .clone()
        });
        let ok = PasswordHash::new(&hash)
            .is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok());
        known && ok
    })
    .await
    .unwrap_or(false)
}

/// The console's session cookie.
pub const SESSION_COOKIE: &str = "rg_session";

/// The header a cookie-authenticated state change must carry the session's CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The session token of a request, and whether it came as the console's cookie. An
/// `Authorization` header wins and is never completed by the cookie: a request another
/// site's page sends with a made-up bearer token gets no help from the browser's cookie.
fn session_token(headers: &http::HeaderMap) -> Option<(&str, bool)> {
    if headers.contains_key(http::header::AUTHORIZATION) {
        return bearer(headers).map(|t| (t, false));
    }
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix(SESSION_COOKIE)?.strip_prefix('='))
        .filter(|t| !t.is_empty())
        .map(|t| (t, true))
}

/// The CSRF token of a session: derived from its secret, so the store keeps nothing more and
/// only someone who holds the (HttpOnly) cookie's session can be handed it.
pub fn csrf_token(session: &str) -> String {
    let digest = Sha256::new().chain_update(b"redisgate csrf\0").chain_update(session.as_bytes()).finalize();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
}

/// Methods that change nothing, which need no CSRF token.
fn is_safe(method: &http::Method) -> bool {
    matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS)
}

/// The session behind the request: a bearer token, or the console's cookie, in which case a
/// state-changing method must also carry the session's CSRF token (bearer requests cannot
/// be forged by another site's page: it does not know the token).
pub struct Session {
    pub user: User,
    token: String,
    cookie: bool,
}

impl FromRequestParts<Arc<ApiState>> for Session {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, ApiError> {
        let (token, cookie) = session_token(&parts.headers).ok_or(ApiError::Unauthenticated)?;
        let user = state.store.session_user(&hash_secret(token), OffsetDateTime::now_utc()).await?;
        let user = user.ok_or(ApiError::Unauthenticated)?;
        if cookie && !is_safe(&parts.method) {
            let sent = parts.headers.get(CSRF_HEADER).map(http::HeaderValue::as_bytes).unwrap_or_default();
            if !bool::from(subtle::ConstantTimeEq::ct_eq(sent, csrf_token(token).as_bytes())) {
                return Err(ApiError::CsrfToken);
            }
        }
        Ok(Session { user, token: token.to_owned(), cookie })
    }
}

/// The user behind the request's session ([`Session`]: bearer token or cookie + CSRF).
pub struct CurrentUser(pub User);

impl FromRequestParts<Arc<ApiState>> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, ApiError> {
        Session::from_request_parts(parts, state).await.map(|s| CurrentUser(s.user))
    }
}

/// Whether the request reached us over TLS, so the cookie may say `Secure`: a TLS listener
/// marks its requests with [`crate::serve::OverTls`]; behind a proxy, only a peer in
/// `http.trusted_proxies` is believed about `X-Forwarded-Proto`.
fn over_tls(parts: &Parts, state: &ApiState) -> bool {
    if state.auth.cookie_secure == crate::config::CookieSecure::Always
        || parts.extensions.get::<crate::serve::OverTls>().is_some()
    {
        return true;
    }
    let peer = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let trusted = peer.is_some_and(|ip| state.trusted_proxies.iter().any(|net| net.contains(&ip)));
    trusted
        && parts
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').next().unwrap_or("").trim().eq_ignore_ascii_case("https"))
}

/// Whether the session cookie is to be `Secure`, extracted before the body.
pub struct CookieSecurity(bool);

impl FromRequestParts<Arc<ApiState>> for CookieSecurity {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, Self::Rejection> {
        Ok(CookieSecurity(over_tls(parts, state)))
    }
}

/// `Set-Cookie` for the session (`value` empty and `max_age` 0 clear it).
fn session_cookie(value: &str, max_age: Duration, secure: bool) -> http::HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        max_age.as_secs()
    );
    http::HeaderValue::try_from(text).expect("session tokens are base64url")
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Your e-mail address (case-insensitive).
    pub email: String,
    /// At least 12 characters.
    pub password: String,
    /// `true` (the console): the session is set as the `rg_session` cookie (HttpOnly,
    /// SameSite=Strict) instead of answered, and the answer holds its CSRF token.
    #[serde(default)]
    pub cookie: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LoginAnswer {
    /// Send as `Authorization: Bearer <token>`. Shown once; absent for a cookie session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A cookie session's CSRF token: send it as `x-csrf-token` with every POST, PUT, PATCH
    /// and DELETE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub user: User,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OrgMembership {
    pub id: redisgate_core::ids::OrgId,
    pub name: String,
    pub plan: Plan,
    pub role: Role,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Me {
    pub user: User,
    pub organizations: Vec<OrgMembership>,
    /// For a cookie session (the console): its CSRF token, for `x-csrf-token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// Your e-mail address (case-insensitive).
    pub email: String,
    /// At least 12 characters.
    pub password: String,
    /// The token of an invitation to this e-mail (`rgi_…`): the account joins its
    /// organization. Required unless this is the deployment's first account or
    /// `auth.registration = "open"`.
    pub invitation: Option<String>,
}

/// Create an account. The first account of a deployment administers it (in every
/// registration mode); after it, `auth.registration` decides: `invite` (the default) needs
/// an invitation, `open` lets anyone in, `closed` nobody.
#[utoipa::path(post, path = "/auth/register", tag = "auth", request_body = NewAccount,
    responses((status = 201, body = User),
        (status = 429, description = "too many requests from this address (`auth.anonymous_rate`)", body = super::error::ErrorBody),
        (status = 403, description = "invitation required, registration closed, or the invitation is for another e-mail", body = super::error::ErrorBody),
        (status = 404, description = "unknown invitation", body = super::error::ErrorBody),
        (status = 409, description = "e-mail taken", body = super::error::ErrorBody),
        (status = 410, description = "invitation used, revoked or expired", body = super::error::ErrorBody),
        (status = 422, body = super::error::ErrorBody)))]
async fn register(
    state: State,
    Admitted(meta): Admitted,
    ApiJson(c): ApiJson<NewAccount>,
) -> ApiResult<impl IntoResponse> {
    let email = Email::parse(&c.email).map_err(|m| ApiError::validation("email", m))?;
    account::check_password(&c.password).map_err(|m| ApiError::validation("password", m))?;
    let result = create_account(&state, &email, c.password, c.invitation).await;
    let (org, outcome, detail) = match &result {
        Ok((_, member)) => (member.as_ref().map(|m| m.org_id), Outcome::Success, None),
        Err(e) => (None, Outcome::Failure, Some(e.code().to_owned())),
    };
    let (user, target) = match &result {
        Ok((user, _)) => (Some(user), Some(user.id.to_string())),
        Err(_) => (None, None),
    };
    let mut entry = audit::entry(org, user, "auth.register", target, &meta, outcome, detail);
    entry.actor = email.as_str().to_owned();
    audit::record(&state, entry).await;
    let (user, _) = result?;
    Ok((StatusCode::CREATED, axum::Json(user)))
}

/// The account, and the membership an invitation gave it. Who may register is checked
/// before the (slow, CPU-bound) password hash, so refused strangers cost nothing; the store
/// decides again atomically.
async fn create_account(
    state: &ApiState,
    email: &Email,
    password: String,
    invitation: Option<String>,
) -> ApiResult<(User, Option<redisgate_core::org::Member>)> {
    let mode = state.auth.registration;
    let taken = |e| match e {
        StoreError::Conflict(_) => {
            ApiError::Conflict { code: "email_taken", message: "an account with this e-mail exists".into() }
        }
        StoreError::NotFound => ApiError::NotFound("invitation"),
        e => e.into(),
    };
    if let Some(token) = invitation {
        if !mode.lets_invitees_in() {
            return Err(ApiError::RegistrationClosed);
        }
        let token_hash = hash_secret(&token);
        let now = OffsetDateTime::now_utc();
        let inv =
            state.store.invitation_by_hash(&token_hash).await?.ok_or(ApiError::NotFound("invitation"))?;
        inv.check(email, now).map_err(ApiError::Invitation)?;
        let hash = hash_password(password).await?;
        let invitee = Invitee::New { email, password_hash: &hash };
        let (user, member) = state.store.accept_invitation(&token_hash, invitee, now).await.map_err(taken)?;
        return Ok((user, Some(member)));
    }
    let admission = if mode.lets_anyone_in() { Admission::Anyone } else { Admission::FirstUserOnly };
    let refused = if mode == Registration::Closed {
        ApiError::RegistrationClosed
    } else {
        ApiError::InvitationRequired
    };
    if admission == Admission::FirstUserOnly && state.store.counts().await?.users > 0 {
        return Err(refused);
    }
    let hash = hash_password(password).await?;
    match state.store.create_user(email, &hash, admission).await {
        Ok(user) => Ok((user, None)),
        Err(StoreError::RegistrationClosed) => Err(refused),
        Err(e) => Err(taken(e)),
    }
}

/// Log in; answers a session token.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = Credentials,
    responses((status = 200, body = LoginAnswer), (status = 401, body = super::error::ErrorBody), (status = 429, description = "throttled failures, or too many requests from this address", body = super::error::ErrorBody)))]
async fn login(
    state: State,
    Admitted(meta): Admitted,
    CookieSecurity(secure): CookieSecurity,
    ApiJson(c): ApiJson<Credentials>,
) -> ApiResult<axum::response::Response> {
    let email = Email::parse(&c.email).map_err(|m| ApiError::validation("email", m))?;
    let record_failure = |detail: &'static str| {
        audit::entry_for(
            None,
            None,
            email.as_str(),
            "auth.login",
            None,
            &meta,
            Outcome::Failure,
            Some(detail.into()),
        )
    };
    // Counted before the slow verify, so parallel guesses see each other.
    let attempt = match state.throttle.begin(email.as_str(), meta.ip.as_deref()) {
        Ok(attempt) => attempt,
        Err(retry_after) => {
            audit::record(&state, record_failure("throttled")).await;
            return Err(ApiError::TooManyRequests { retry_after });
        }
    };
    let creds = state.store.credentials(&email).await?;
    let (user, hash) = match creds {
        Some(c) => (Some(c.user), Some(c.password_hash)),
        None => (None, None),
    };
    if !verify_password(c.password, hash).await {
        audit::record(&state, record_failure("invalid_credentials")).await;
        return Err(ApiError::InvalidCredentials);
    }
    let user = user.expect("verified passwords belong to known users");
    state.throttle.succeeded(attempt);
    let token = random_token("rgs_");
    let expires_at = OffsetDateTime::now_utc() + state.auth.session_ttl;
    state.store.create_session(&hash_secret(&token), user.id, expires_at).await?;
    audit::record(&state, audit::entry(None, Some(&user), "auth.login", None, &meta, Outcome::Success, None))
        .await;
    if !c.cookie {
        return Ok(axum::Json(LoginAnswer { token: Some(token), csrf_token: None, expires_at, user })
            .into_response());
    }
    let cookie = session_cookie(&token, state.auth.session_ttl, secure);
    let answer = LoginAnswer { token: None, csrf_token: Some(csrf_token(&token)), expires_at, user };
    Ok(([(http::header::SET_COOKIE, cookie)], axum::Json(answer)).into_response())
}

/// Who the session belongs to, and their organizations.
#[utoipa::path(get, path = "/auth/me", tag = "auth", security(("session" = [])),
    responses((status = 200, body = Me), (status = 401, body = super::error::ErrorBody)))]
async fn me(state: State, session: Session) -> ApiResult<axum::Json<Me>> {
    let csrf_token = session.cookie.then(|| csrf_token(&session.token));
    let user = session.user;
    let organizations = state
        .store
        .orgs_of(user.id)
        .await?
        .into_iter()
        .map(|(o, role)| OrgMembership { id: o.id, name: o.name, plan: o.plan, role })
        .collect();
    Ok(axum::Json(Me { user, organizations, csrf_token }))
}

/// End the session (a cookie session's cookie is cleared too).
#[utoipa::path(post, path = "/auth/logout", tag = "auth", security(("session" = [])),
    responses((status = 204), (status = 401, body = super::error::ErrorBody), (status = 403, description = "cookie session without its CSRF token", body = super::error::ErrorBody)))]
async fn logout(
    state: State,
    meta: RequestMeta,
    CookieSecurity(secure): CookieSecurity,
    session: Session,
) -> ApiResult<axum::response::Response> {
    state.store.revoke_session(&hash_secret(&session.token)).await?;
    audit::record(
        &state,
        audit::entry(None, Some(&session.user), "auth.logout", None, &meta, Outcome::Success, None),
    )
    .await;
    let clear = session_cookie("", Duration::ZERO, secure);
    Ok((StatusCode::NO_CONTENT, [(http::header::SET_COOKIE, clear)]).into_response())
}

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(me))
        .routes(routes!(logout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    #[test]
    fn the_session_comes_from_the_bearer_header_else_the_cookie() {
        let cookie = headers(&[("cookie", "theme=dark; rg_session=rgs_abc;other=1")]);
        assert_eq!(session_token(&cookie), Some(("rgs_abc", true)));
        let two = headers(&[("cookie", "a=1"), ("cookie", "rg_session=rgs_x")]);
        assert_eq!(session_token(&two), Some(("rgs_x", true)));
        // A look-alike name or an empty value is no session.
        assert_eq!(session_token(&headers(&[("cookie", "xrg_session=rgs_abc; rg_session_2=y")])), None);
        assert_eq!(session_token(&headers(&[("cookie", "rg_session=")])), None);
        let both = headers(&[("authorization", "Bearer rgs_b"), ("cookie", "rg_session=rgs_c")]);
        assert_eq!(session_token(&both), Some(("rgs_b", false)));
        // An unusable Authorization header is not replaced by the cookie.
        let broken = headers(&[("authorization", "Basic Zm9v"), ("cookie", "rg_session=rgs_c")]);
        assert_eq!(session_token(&broken), None);
    }

    #[test]
    fn csrf_tokens_are_per_session() {
        let a = csrf_token("rgs_a");
        assert_eq!(a, csrf_token("rgs_a"));
        assert_ne!(a, csrf_token("rgs_b"));
        assert!(!a.contains("rgs_a") && a.len() == 43, "{a}");
    }

    #[test]
    fn a_locked_email_still_lets_fresh_addresses_try_once() {
        let t = LoginThrottle::new(Duration::from_secs(60), 2, 100);
        for _ in 0..2 {
            t.begin("ann@x.io", Some("6.6.6.6")).unwrap();
        }
        assert!(t.begin("ann@x.io", Some("6.6.6.6")).is_err(), "the guesser is locked");
        // The owner, elsewhere, gets in; a second failure from a new address locks it too.
        let owner = t.begin("ann@x.io", Some("7.7.7.7")).unwrap();
        t.succeeded(owner);
        t.begin("bob@x.io", Some("8.8.8.8")).unwrap();
        t.begin("bob@x.io", Some("8.8.8.8")).unwrap();
        t.begin("bob@x.io", Some("9.9.9.9")).unwrap();
        assert!(t.begin("bob@x.io", Some("9.9.9.9")).is_err());
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let t = LoginThrottle::new(Duration::from_secs(60), 1, 100);
        t.begin("ann@x.io", Some("2001:db8:1:2::1")).unwrap();
        assert!(t.begin("ann@x.io", Some("2001:db8:1:2:ffff::9")).is_err(), "same /64, same client");
        t.begin("ann@x.io", Some("2001:db8:1:3::1")).unwrap();
        assert_eq!(throttle_address(Some("::ffff:1.2.3.4")), "1.2.3.4");
        assert_eq!(throttle_address(Some("5.6.7.8")), "5.6.7.8");
    }

    #[test]
    fn a_success_gives_its_reservation_back() {
        let t = LoginThrottle::new(Duration::from_secs(60), 5, 2);
        t.succeeded(t.begin("a@x.io", Some("1.1.1.1")).unwrap());
        t.succeeded(t.begin("b@x.io", Some("1.1.1.1")).unwrap());
        t.begin("c@x.io", Some("1.1.1.1")).unwrap();
        t.begin("d@x.io", Some("1.1.1.1")).unwrap();
        assert!(t.begin("e@x.io", Some("1.1.1.1")).is_err(), "two failures lock the address");
    }

    #[test]
    fn memory_stays_bounded_under_a_spray() {
        let t = LoginThrottle::new(Duration::from_secs(600), 5, 1_000_000);
        for i in 0..(MAX_THROTTLE_ENTRIES / 2) {
            let _ = t.begin(&format!("u{i}@x.io"), Some(&format!("10.0.{}.{}", i / 256, i % 256)));
        }
        assert!(t.entries() <= MAX_THROTTLE_ENTRIES, "{}", t.entries());
    }
}
