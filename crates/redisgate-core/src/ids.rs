//! Identifiers: UUID-backed newtypes, so an org id can never be passed where an instance id
//! is expected. New ids are UUID v7 (time-ordered), which keeps indexes and listings in
//! creation order.

use std::fmt;
use std::str::FromStr;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                uuid::Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_type!(
    /// A person with a login.
    UserId
);
id_type!(
    /// An organization (tenant).
    OrgId
);
id_type!(
    /// A Redis instance owned by an organization.
    InstanceId
);
id_type!(
    /// An API key of an organization.
    ApiKeyId
);
id_type!(
    /// One audit log entry.
    AuditId
);
id_type!(
    /// An invitation to join an organization.
    InvitationId
);
id_type!(
    /// One backup of an instance.
    BackupId
);
