//! The management API's one error type: JSON `{"error": "...", "code": "..."}` with the right
//! status. 5xx details go to the log, never to the client.

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use redisgate_core::capacity::HostLimit;
use redisgate_core::org::InvitationError;
use redisgate_core::quota::Limit;
use redisgate_core::ratelimit::Rate;
use redisgate_core::store::StoreError;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "authentication required: send a valid session token as `Authorization: Bearer <token>` (or sign in to the console)"
    )]
    Unauthenticated,
    /// A state-changing request authenticated by the session cookie without the session's
    /// CSRF token in `x-csrf-token`: it may come from another site's page.
    #[error("this request needs the session's CSRF token in the `x-csrf-token` header")]
    CsrfToken,
    /// The instance exists but has no running Redis to send a command to.
    #[error("the instance is not running")]
    NotRunning,
    #[error("invalid e-mail or password")]
    InvalidCredentials,
    #[error("your role in this organization does not allow this")]
    Forbidden,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("this route does not take that method")]
    MethodNotAllowed,
    /// The caller is not a member of the organization: answered exactly as a missing one
    /// (so ids leak nothing), but kept apart so the audit log does not file the attempt
    /// under an organization the caller does not belong to.
    #[error("organization not found")]
    NotMember,
    #[error("registration needs an invitation from an organization owner or administrator")]
    InvitationRequired,
    #[error("registration is closed on this deployment")]
    RegistrationClosed,
    #[error("{0}")]
    Invitation(InvitationError),
    #[error("only deployment administrators may give a key a rate above its plan's ({}/s, burst {})", .0.per_second, .0.burst)]
    RateAbovePlan(Rate),
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("`{field}` {message}")]
    Validation { field: String, message: String },
    #[error("quota exceeded: {}", .0.as_str())]
    QuotaExceeded(Limit),
    /// A deployment-wide cap (`instances.max_local_*`): this host has no room, whatever the
    /// organization's quota says.
    #[error("this deployment has no room for it: {} reached", .0.as_str())]
    HostCapacity(HostLimit),
    #[error("too many attempts; retry later")]
    TooManyRequests { retry_after: Duration },
    #[error("the metadata store is unavailable; retry later")]
    Unavailable,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation { field: field.into(), message: message.into() }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ApiError::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            ApiError::CsrfToken => (StatusCode::FORBIDDEN, "csrf_token_invalid"),
            ApiError::NotRunning => (StatusCode::CONFLICT, "instance_not_running"),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) | ApiError::NotMember => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::InvitationRequired => (StatusCode::FORBIDDEN, "invitation_required"),
            ApiError::RegistrationClosed => (StatusCode::FORBIDDEN, "registration_closed"),
            ApiError::Invitation(InvitationError::WrongEmail) => {
                (StatusCode::FORBIDDEN, InvitationError::WrongEmail.code())
            }
            // Used, revoked, expired: the invitation existed and is gone for good.
            ApiError::Invitation(e) => (StatusCode::GONE, e.code()),
            ApiError::RateAbovePlan(_) => (StatusCode::FORBIDDEN, "rate_limit_above_plan"),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::Validation { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            ApiError::QuotaExceeded(_) => (StatusCode::FORBIDDEN, "quota_exceeded"),
            ApiError::HostCapacity(_) => (StatusCode::FORBIDDEN, "host_capacity_exceeded"),
            ApiError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The stable machine-readable code (also used as the audit detail).
    pub fn code(&self) -> &'static str {
        self.status_and_code().1
    }
}

/// The JSON body of every management error.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
    /// Stable code for programs: `unauthenticated`, `forbidden`, `not_found`,
    /// `validation_failed`, `quota_exceeded`, `host_capacity_exceeded`, `email_taken`,
    /// `last_owner`, …
    pub code: &'static str,
    /// The request field a validation error is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The quota a `quota_exceeded` error is about, the host cap of a
    /// `host_capacity_exceeded` one (`rate_limit` for `rate_limit_above_plan`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<&'static str>,
    /// With `rate_limit_above_plan`: the highest rate the caller may give the key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<Rate>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = ErrorBody {
            error: self.to_string(),
            code,
            field: match &self {
                ApiError::Validation { field, .. } => Some(field.clone()),
                _ => None,
            },
            limit: match &self {
                ApiError::QuotaExceeded(l) => Some(l.as_str()),
                ApiError::HostCapacity(l) => Some(l.as_str()),
                ApiError::RateAbovePlan(_) => Some("rate_limit"),
                _ => None,
            },
            max_rate: match &self {
                ApiError::RateAbovePlan(r) => Some(*r),
                _ => None,
            },
        };
        let mut r = (status, Json(body)).into_response();
        if let ApiError::TooManyRequests { retry_after } = self {
            let secs = retry_after.as_secs().max(1);
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("resource"),
            StoreError::Conflict(what) => {
                ApiError::Conflict { code: "conflict", message: format!("{what} already exists") }
            }
            StoreError::QuotaExceeded(limit) => ApiError::QuotaExceeded(limit),
            StoreError::LastOwner => ApiError::Conflict {
                code: "last_owner",
                message: "an organization must keep at least one owner".into(),
            },
            StoreError::RegistrationClosed => ApiError::InvitationRequired,
            StoreError::Invitation(e) => ApiError::Invitation(e),
            StoreError::Unavailable(detail) => {
                tracing::error!(error = %detail, "metadata store failed");
                ApiError::Unavailable
            }
        }
    }
}

impl From<crate::instances::Refused> for ApiError {
    fn from(r: crate::instances::Refused) -> Self {
        match r {
            crate::instances::Refused::Host(limit) => ApiError::HostCapacity(limit),
            crate::instances::Refused::Store(e) => e.into(),
            crate::instances::Refused::Invalid { field, reason } => ApiError::validation(field, reason),
            crate::instances::Refused::NotRunning => ApiError::NotRunning,
            crate::instances::Refused::Internal => ApiError::Internal,
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        // serde's message names the field ("missing field `email`", "unknown variant ...").
        ApiError::validation("body", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(_: PathRejection) -> Self {
        ApiError::NotFound("resource")
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::validation("query", r.body_text())
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
