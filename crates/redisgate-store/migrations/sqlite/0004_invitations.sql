-- Invitations to join an organization with a role. The token is kept only as its SHA-256;
-- an invitation is pending while accepted_at and revoked_at are NULL and expires_at is ahead.
CREATE TABLE invitations (
    id          BLOB NOT NULL PRIMARY KEY,
    org_id      BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email       TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    token_hash  BLOB NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    -- No foreign keys on people: who invited and who accepted is history, as in audit_logs.
    invited_by  BLOB,
    expires_at  TEXT NOT NULL,
    accepted_at TEXT,
    accepted_by BLOB,
    revoked_at  TEXT,
    created_at  TEXT NOT NULL
) STRICT;

CREATE INDEX invitations_org_id ON invitations (org_id, created_at);
