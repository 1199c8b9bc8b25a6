-- Invitations to join an organization with a role. The token is kept only as its SHA-256;
-- an invitation is pending while accepted_at and revoked_at are NULL and expires_at is ahead.
CREATE TABLE invitations (
    id          uuid        PRIMARY KEY,
    org_id      uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email       text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    token_hash  bytea       NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    -- No foreign keys on people: who invited and who accepted is history, as in audit_logs.
    invited_by  uuid,
    expires_at  timestamptz NOT NULL,
    accepted_at timestamptz,
    accepted_by uuid,
    revoked_at  timestamptz,
    created_at  timestamptz NOT NULL
);
CREATE INDEX invitations_org_id ON invitations (org_id, created_at);
