//! The audit log: who did what to which thing, from where, and how it ended. Never a secret.

use serde::Serialize;
use time::OffsetDateTime;

use crate::ids::{AuditId, OrgId, UserId};

/// Did the audited action succeed?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Outcome::Success, Outcome::Failure, Outcome::Denied].into_iter().find(|o| o.as_str() == s)
    }
}

/// An entry to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEntry {
    pub org_id: Option<OrgId>,
    pub actor_user_id: Option<UserId>,
    /// What the actor was known as (an e-mail, or "anonymous"), kept if the user is deleted.
    pub actor: String,
    /// `noun.verb`, e.g. `instance.create`, `auth.login`.
    pub action: String,
    /// The id or name acted upon.
    pub target: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub outcome: Outcome,
    /// A short human detail (an error code, a role change); never a secret.
    pub detail: Option<String>,
}

/// A recorded entry.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: AuditId,
    pub org_id: Option<OrgId>,
    pub actor_user_id: Option<UserId>,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub outcome: Outcome,
    pub detail: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Filters and page of an audit listing. Pages go backwards in time: `before` is the id of
/// the last entry of the previous page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditQuery {
    pub action: Option<String>,
    pub actor_user_id: Option<UserId>,
    pub outcome: Option<Outcome>,
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub before: Option<AuditId>,
    pub limit: u32,
}
