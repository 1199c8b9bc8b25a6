//! API keys: `rg_<id>_<secret>`, shown once, stored as SHA-256 only.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{ApiKeyId, InstanceId, OrgId};
use crate::policy::Access;

/// What a key may run on the data plane.
/// Ordered by power (`ReadOnly < ReadWrite < Admin`), so a scope can be capped with `min`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// Read commands only.
    ReadOnly,
    /// Every command safe on a shared connection.
    ReadWrite,
    /// Read-write plus gated commands (FLUSHALL, FLUSHDB, scripting).
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ReadOnly => "read-only",
            Scope::ReadWrite => "read-write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Scope::ReadOnly, Scope::ReadWrite, Scope::Admin].into_iter().find(|x| x.as_str() == s)
    }

    pub fn access(self) -> Access {
        match self {
            Scope::ReadOnly => Access::ReadOnly,
            Scope::ReadWrite => Access::ReadWrite,
            Scope::Admin => Access::Admin,
        }
    }
}

/// Which of an instance's two REST tokens a key is (Upstash's `rest_token` and
/// `read_only_rest_token`): keys bound to that one instance, made with it, shown on its
/// connect page to members who may see credentials, replaced by a credential reset and gone
/// with the instance. Ordinary API keys sit beside them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TokenKind {
    /// Read-write: every command a `read-write` key may run.
    Standard,
    ReadOnly,
}

impl TokenKind {
    pub const BOTH: [TokenKind; 2] = [TokenKind::Standard, TokenKind::ReadOnly];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Standard => "standard",
            TokenKind::ReadOnly => "read-only",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::BOTH.into_iter().find(|k| k.as_str() == s)
    }

    /// The scope a token of this kind has. A standard token is `read-write`, not `admin`:
    /// members see it, and a member may not mint keys that flush the data.
    pub fn scope(self) -> Scope {
        match self {
            TokenKind::Standard => Scope::ReadWrite,
            TokenKind::ReadOnly => Scope::ReadOnly,
        }
    }
}

/// Every key starts with this, so leaked keys are easy to recognise (secret scanners).
pub const KEY_PREFIX: &str = "rg_";

/// The text of a key, shown once: `rg_<id as 32 hex digits>_<secret, base64url>`.
pub fn format_key(id: ApiKeyId, secret: &[u8; 32]) -> String {
    use base64::Engine as _;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    format!("{KEY_PREFIX}{}_{secret}", id.0.simple())
}

/// Whether a bearer token has the shape of an API key (as opposed to a standalone token).
pub fn looks_like_key(token: &str) -> bool {
    token.strip_prefix(KEY_PREFIX).and_then(|rest| rest.split_once('_')).is_some_and(|(id, secret)| {
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && secret.len() == 43
    })
}

/// A key's metadata (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub org_id: OrgId,
    pub name: String,
    pub scope: Scope,
    /// `None`: every instance of the organization.
    pub instance_ids: Option<Vec<InstanceId>>,
    /// This key's own rate limit; `None`: the organization's plan rate.
    pub rate_limit: Option<crate::ratelimit::Rate>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl ApiKey {
    /// Usable at `now`: not revoked, not expired.
    pub fn is_active(&self, now: OffsetDateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }

    /// May reach `instance`.
    pub fn allows_instance(&self, instance: InstanceId) -> bool {
        self.instance_ids.as_ref().is_none_or(|ids| ids.contains(&instance))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_a_recognisable_shape() {
        let key = format_key(ApiKeyId::new(), &[7; 32]);
        assert!(key.starts_with("rg_") && looks_like_key(&key), "{key}");
        assert!(!looks_like_key("rg_short_x") && !looks_like_key("some-standalone-token"));
    }
}
