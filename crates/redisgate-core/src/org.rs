//! Organizations, member roles, and the one table of what each role may do.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::account::Email;
use crate::ids::{InvitationId, OrgId, UserId};
use crate::quota::{Plan, Quota};

/// A member's role in an organization, from most to least powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Member,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Member, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The data-plane scope a member of this role gets when they run commands from the
    /// console: the widest key scope the role could mint for itself (viewers mint none, so
    /// they only read).
    pub fn data_scope(self) -> crate::apikey::Scope {
        use crate::apikey::Scope;
        match self {
            Role::Owner | Role::Admin => Scope::Admin,
            Role::Member => Scope::ReadWrite,
            Role::Viewer => Scope::ReadOnly,
        }
    }

    /// Whether this role may do `action` — the whole permission model in one place.
    ///
    /// | action            | owner | admin | member | viewer |
    /// |-------------------|-------|-------|--------|--------|
    /// | ViewOrg           |   ✓   |   ✓   |   ✓    |   ✓    |
    /// | UpdateOrg         |   ✓   |   ✓   |        |        |
    /// | DeleteOrg         |   ✓   |       |        |        |
    /// | ManageMembers     |   ✓   |   ✓   |        |        |
    /// | ManageOwners      |   ✓   |       |        |        |
    /// | ViewInstances     |   ✓   |   ✓   |   ✓    |   ✓    |
    /// | ManageInstances   |   ✓   |   ✓   |   ✓    |        |
    /// | ViewCredentials   |   ✓   |   ✓   |   ✓    |        |
    /// | ViewApiKeys       |   ✓   |   ✓   |   ✓    |   ✓    |
    /// | ManageApiKeys     |   ✓   |   ✓   |   ✓    |        |
    /// | MintAdminKeys     |   ✓   |   ✓   |        |        |
    /// | ViewAudit         |   ✓   |   ✓   |        |        |
    ///
    /// Inviting is adding a member: `ManageMembers`, and `ManageOwners` to invite an owner.
    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        use Role::*;
        match action {
            ViewOrg | ViewInstances | ViewApiKeys => true,
            ManageInstances | ViewCredentials | ManageApiKeys => matches!(self, Owner | Admin | Member),
            UpdateOrg | ManageMembers | MintAdminKeys | ViewAudit => matches!(self, Owner | Admin),
            DeleteOrg | ManageOwners => self == Owner,
        }
    }
}

/// Everything a management route can ask permission for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    ViewOrg,
    UpdateOrg,
    DeleteOrg,
    /// Add, remove and change members below owner.
    ManageMembers,
    /// Grant or take away the owner role, or remove an owner.
    ManageOwners,
    ViewInstances,
    ManageInstances,
    /// See an instance's REST tokens (its connect page): whoever may use the instance with a
    /// read-write key may copy them; a viewer may not.
    ViewCredentials,
    ViewApiKeys,
    ManageApiKeys,
    /// Create API keys with the `admin` scope, which may flush the data and run scripts:
    /// more than a member may do to instances they can only use.
    MintAdminKeys,
    ViewAudit,
}

/// Pending invitations an organization may have at once; past it, revoke or wait for some to
/// expire. Bounds what one hostile owner can make the store keep.
pub const MAX_PENDING_INVITATIONS: u32 = 100;

/// An invitation to join an organization with a role. Its token (`rgi_…`) is shown once, to
/// the inviter, who passes it on (no mail is sent); only its SHA-256 is stored.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Invitation {
    pub id: InvitationId,
    pub org_id: OrgId,
    /// Only an account with this e-mail can accept.
    pub email: Email,
    pub role: Role,
    pub invited_by: Option<UserId>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub accepted_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// Why an invitation cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvitationError {
    #[error("this invitation was already used")]
    Used,
    #[error("this invitation was revoked")]
    Revoked,
    #[error("this invitation has expired")]
    Expired,
    #[error("this invitation is for another e-mail address")]
    WrongEmail,
}

impl InvitationError {
    pub fn code(self) -> &'static str {
        match self {
            InvitationError::Used => "invitation_used",
            InvitationError::Revoked => "invitation_revoked",
            InvitationError::Expired => "invitation_expired",
            InvitationError::WrongEmail => "invitation_email_mismatch",
        }
    }
}

impl Invitation {
    /// Still open at `now`: neither used nor revoked nor expired.
    pub fn is_pending(&self, now: OffsetDateTime) -> bool {
        self.usable_at(now).is_ok()
    }

    /// Still usable by its addressee at `now`; why not otherwise.
    pub fn usable_at(&self, now: OffsetDateTime) -> Result<(), InvitationError> {
        if self.accepted_at.is_some() {
            Err(InvitationError::Used)
        } else if self.revoked_at.is_some() {
            Err(InvitationError::Revoked)
        } else if self.expires_at <= now {
            Err(InvitationError::Expired)
        } else {
            Ok(())
        }
    }

    /// Whether the account `email` may accept it at `now`.
    pub fn check(&self, email: &Email, now: OffsetDateTime) -> Result<(), InvitationError> {
        self.usable_at(now)?;
        if &self.email == email { Ok(()) } else { Err(InvitationError::WrongEmail) }
    }
}

/// An organization: the unit of tenancy, quota and billing plan.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Organization {
    pub id: OrgId,
    pub name: String,
    pub plan: Plan,
    pub quota: Quota,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A user's membership.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Member {
    pub org_id: OrgId,
    pub user_id: UserId,
    pub email: String,
    pub role: Role,
    #[serde(with = "time::serde::rfc3339")]
    pub joined_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_order_power() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert!(Role::Owner.allows(Action::DeleteOrg));
        assert!(!Role::Admin.allows(Action::DeleteOrg));
        assert!(!Role::Admin.allows(Action::ManageOwners));
        assert!(Role::Member.allows(Action::ManageApiKeys));
        assert!(!Role::Viewer.allows(Action::ManageInstances));
        assert!(Role::Member.allows(Action::ViewCredentials));
        assert!(!Role::Viewer.allows(Action::ViewCredentials));
        assert!(!Role::Member.allows(Action::ViewAudit));
        assert!(Role::Admin.allows(Action::MintAdminKeys));
        assert!(!Role::Member.allows(Action::MintAdminKeys));
    }

    #[test]
    fn invitations_are_single_use_expiring_and_addressed() {
        let now = OffsetDateTime::now_utc();
        let ann = Email::parse("ann@example.com").unwrap();
        let inv = Invitation {
            id: InvitationId::new(),
            org_id: OrgId::new(),
            email: ann.clone(),
            role: Role::Member,
            invited_by: None,
            expires_at: now + time::Duration::hours(1),
            accepted_at: None,
            revoked_at: None,
            created_at: now,
        };
        assert_eq!(inv.check(&ann, now), Ok(()));
        assert_eq!(
            inv.check(&Email::parse("bob@example.com").unwrap(), now),
            Err(InvitationError::WrongEmail)
        );
        assert_eq!(inv.check(&ann, now + time::Duration::hours(1)), Err(InvitationError::Expired));
        let used = Invitation { accepted_at: Some(now), ..inv.clone() };
        assert_eq!(used.check(&ann, now), Err(InvitationError::Used));
        let revoked = Invitation { revoked_at: Some(now), ..inv };
        assert_eq!(revoked.check(&ann, now), Err(InvitationError::Revoked));
        assert!(!revoked.is_pending(now));
    }
}
