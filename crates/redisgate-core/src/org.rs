//! Organizations, member roles, and the one table of what each role may do.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{OrgId, UserId};
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
    /// | ViewApiKeys       |   ✓   |   ✓   |   ✓    |   ✓    |
    /// | ManageApiKeys     |   ✓   |   ✓   |   ✓    |        |
    /// | ViewAudit         |   ✓   |   ✓   |        |        |
    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        use Role::*;
        match action {
            ViewOrg | ViewInstances | ViewApiKeys => true,
            ManageInstances | ManageApiKeys => matches!(self, Owner | Admin | Member),
            UpdateOrg | ManageMembers | ViewAudit => matches!(self, Owner | Admin),
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
    ViewApiKeys,
    ManageApiKeys,
    ViewAudit,
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
        assert!(!Role::Member.allows(Action::ViewAudit));
    }
}
