//! People: e-mail addresses, users, sessions.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::UserId;

/// A normalized (trimmed, lower-cased) e-mail address. Parsed, not validated later.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, format = "email")]
pub struct Email(String);

impl Email {
    /// Accepts `local@domain.tld`-shaped addresses up to 254 characters.
    pub fn parse(s: &str) -> Result<Email, &'static str> {
        let s = s.trim().to_lowercase();
        let (local, domain) = s.split_once('@').ok_or("must contain @")?;
        let ok = !local.is_empty()
            && s.len() <= 254
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !s.chars().any(|c| c.is_whitespace() || c.is_control())
            && !domain.contains('@');
        if ok { Ok(Email(s)) } else { Err("is not an e-mail address") }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A user as the rest of the system sees it: never with the password hash.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    /// Administrator of the whole deployment (may change quotas).
    pub is_admin: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Who may create an account (`auth.registration`). The first account of a deployment is
/// always created, whatever the mode: it bootstraps the deployment as its administrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Only with an invitation to an organization (the safe default).
    #[default]
    Invite,
    /// Anyone who can reach the server (opt-in).
    Open,
    /// Nobody after the first account, not even with an invitation; existing accounts may
    /// still accept invitations.
    Closed,
}

impl Registration {
    /// Whether an account may be created without an invitation once the deployment has one.
    pub fn lets_anyone_in(self) -> bool {
        self == Registration::Open
    }

    /// Whether an invitation may create a new account.
    pub fn lets_invitees_in(self) -> bool {
        self != Registration::Closed
    }
}

/// Password rules, checked before hashing.
pub fn check_password(p: &str) -> Result<(), &'static str> {
    match p.chars().count() {
        0..12 => Err("must be at least 12 characters"),
        12..=256 => Ok(()),
        _ => Err("must be at most 256 characters"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized() {
        assert_eq!(Email::parse(" Ann@Example.COM ").unwrap().as_str(), "ann@example.com");
        for bad in ["", "ann", "@x.io", "ann@", "ann@localhost", "a b@x.io", "a@b@x.io", "a@.x", "a@x."] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }
}
