//! Accounts: register, log in (throttled), who am I, log out.
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
use axum::extract::FromRequestParts;
use axum::response::IntoResponse;
use base64::Engine as _;
use http::StatusCode;
use http::request::Parts;
use redisgate_core::account::{self, Email, User};
use redisgate_core::audit::Outcome;
use redisgate_core::org::Role;
use redisgate_core::quota::Plan;
use redisgate_core::store::SecretHash;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::gateway::auth::bearer;

use super::{ApiError, ApiJson, ApiResult, ApiState, RequestMeta, State};
use crate::api::audit;

/// Counts failed logins per e-mail and per client address in a fixed window; past the limit,
/// further attempts are refused with 429 until the window ends, even with the right password.
pub struct LoginThrottle {
    window: Duration,
    per_email: u32,
    per_ip: u32,
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl LoginThrottle {
    pub fn new(window: Duration, per_email: u32, per_ip: u32) -> Self {
        Self { window, per_email, per_ip, failures: Mutex::new(HashMap::new()) }
    }

    fn keys(email: &str, ip: Option<&str>) -> [(String, bool); 2] {
        [(format!("email:{email}"), true), (format!("ip:{}", ip.unwrap_or("-")), false)]
    }

    /// `Err(retry_after)` while either key is over its limit.
    fn check(&self, email: &str, ip: Option<&str>) -> Result<(), Duration> {
        let now = Instant::now();
        let map = self.failures.lock().expect("throttle lock");
        for (key, is_email) in Self::keys(email, ip) {
            let limit = if is_email { self.per_email } else { self.per_ip };
            if let Some((n, since)) = map.get(&key) {
                let age = now.duration_since(*since);
                if *n >= limit && age < self.window {
                    return Err(self.window - age);
                }
            }
        }
        Ok(())
    }

    fn failed(&self, email: &str, ip: Option<&str>) {
        let now = Instant::now();
        let mut map = self.failures.lock().expect("throttle lock");
        if map.len() > 100_000 {
            // Bound memory under a spray of distinct keys: forget windows that are over.
            map.retain(|_, (_, since)| now.duration_since(*since) < self.window);
        }
        for (key, _) in Self::keys(email, ip) {
            let entry = map.entry(key).or_insert((0, now));
            if now.duration_since(entry.1) >= self.window {
                *entry = (0, now);
            }
            entry.0 += 1;
        }
    }

    fn succeeded(&self, email: &str) {
        self.failures.lock().expect("throttle lock").remove(&format!("email:{email}"));
    }
}

/// The SHA-256 of a secret token, as the store keeps it.
pub fn hash_secret(secret: &str) -> SecretHash {
    Sha256::digest(secret.as_bytes()).into()
}

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

/// The user behind the request's session token.
pub struct CurrentUser(pub User);

impl FromRequestParts<Arc<ApiState>> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers).ok_or(ApiError::Unauthenticated)?;
        let user = state.store.session_user(&hash_secret(token), OffsetDateTime::now_utc()).await?;
        user.map(CurrentUser).ok_or(ApiError::Unauthenticated)
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Your e-mail address (case-insensitive).
    pub email: String,
    /// At least 12 characters.
    pub password: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LoginAnswer {
    /// Send as `Authorization: Bearer <token>`. Shown once.
    pub token: String,
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
}

/// Create an account. The first account of a deployment administers it.
#[utoipa::path(post, path = "/auth/register", tag = "auth", request_body = Credentials,
    responses((status = 201, body = User), (status = 409, description = "e-mail taken", body = super::error::ErrorBody), (status = 422, body = super::error::ErrorBody)))]
async fn register(
    state: State,
    meta: RequestMeta,
    ApiJson(c): ApiJson<Credentials>,
) -> ApiResult<impl IntoResponse> {
    let email = Email::parse(&c.email).map_err(|m| ApiError::validation("email", m))?;
    account::check_password(&c.password).map_err(|m| ApiError::validation("password", m))?;
    let hash = hash_password(c.password).await?;
    let user = state.store.create_user(&email, &hash).await.map_err(|e| match e {
        redisgate_core::store::StoreError::Conflict(_) => {
            ApiError::Conflict { code: "email_taken", message: "an account with this e-mail exists".into() }
        }
        e => e.into(),
    })?;
    audit::record(
        &state,
        audit::entry(
            None,
            Some(&user),
            "auth.register",
            Some(user.id.to_string()),
            &meta,
            Outcome::Success,
            None,
        ),
    )
    .await;
    Ok((StatusCode::CREATED, axum::Json(user)))
}

/// Log in; answers a session token.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = Credentials,
    responses((status = 200, body = LoginAnswer), (status = 401, body = super::error::ErrorBody), (status = 429, body = super::error::ErrorBody)))]
async fn login(
    state: State,
    meta: RequestMeta,
    ApiJson(c): ApiJson<Credentials>,
) -> ApiResult<axum::Json<LoginAnswer>> {
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
    if let Err(retry_after) = state.throttle.check(email.as_str(), meta.ip.as_deref()) {
        audit::record(&state, record_failure("throttled")).await;
        return Err(ApiError::TooManyRequests { retry_after });
    }
    let creds = state.store.credentials(&email).await?;
    let (user, hash) = match creds {
        Some(c) => (Some(c.user), Some(c.password_hash)),
        None => (None, None),
    };
    if !verify_password(c.password, hash).await {
        state.throttle.failed(email.as_str(), meta.ip.as_deref());
        audit::record(&state, record_failure("invalid_credentials")).await;
        return Err(ApiError::InvalidCredentials);
    }
    let user = user.expect("verified passwords belong to known users");
    state.throttle.succeeded(email.as_str());
    let token = random_token("rgs_");
    let expires_at = OffsetDateTime::now_utc() + state.auth.session_ttl;
    state.store.create_session(&hash_secret(&token), user.id, expires_at).await?;
    audit::record(&state, audit::entry(None, Some(&user), "auth.login", None, &meta, Outcome::Success, None))
        .await;
    Ok(axum::Json(LoginAnswer { token, expires_at, user }))
}

/// Who the session belongs to, and their organizations.
#[utoipa::path(get, path = "/auth/me", tag = "auth", security(("session" = [])),
    responses((status = 200, body = Me), (status = 401, body = super::error::ErrorBody)))]
async fn me(state: State, CurrentUser(user): CurrentUser) -> ApiResult<axum::Json<Me>> {
    let organizations = state
        .store
        .orgs_of(user.id)
        .await?
        .into_iter()
        .map(|(o, role)| OrgMembership { id: o.id, name: o.name, plan: o.plan, role })
        .collect();
    Ok(axum::Json(Me { user, organizations }))
}

/// End the session.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", security(("session" = [])),
    responses((status = 204), (status = 401, body = super::error::ErrorBody)))]
async fn logout(
    state: State,
    meta: RequestMeta,
    CurrentUser(user): CurrentUser,
    headers: http::HeaderMap,
) -> ApiResult<StatusCode> {
    let token = bearer(&headers).ok_or(ApiError::Unauthenticated)?;
    state.store.revoke_session(&hash_secret(token)).await?;
    audit::record(
        &state,
        audit::entry(None, Some(&user), "auth.logout", None, &meta, Outcome::Success, None),
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

pub fn routes() -> OpenApiRouter<Arc<ApiState>> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(me))
        .routes(routes!(logout))
}
