-- RedisGate metadata, SQLite flavour. Append-only: change the schema in a new file, never here.
--
-- Conventions:
-- - ids are UUIDs as 16-byte BLOBs (sqlx's Uuid encoding);
-- - timestamps are UTC RFC 3339 TEXT with exactly six fractional digits
--   ("2026-01-02T03:04:05.123456Z"), written by the store only, so that comparing the text
--   compares the instants (and precision matches PostgreSQL's timestamptz);
-- - enums are their lowercase `as_str()` names, checked here so a typo cannot land;
-- - STRICT tables, so a value of the wrong type is an error instead of a silent coercion.

CREATE TABLE users (
    id            BLOB    NOT NULL PRIMARY KEY,
    email         TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    is_admin      INTEGER NOT NULL DEFAULT 0 CHECK (is_admin IN (0, 1)),
    created_at    TEXT    NOT NULL
) STRICT;

CREATE TABLE sessions (
    token_hash BLOB NOT NULL PRIMARY KEY,
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    revoked_at TEXT
) STRICT;

-- Foreign keys are not indexed automatically; the cascade from users would scan otherwise.
CREATE INDEX sessions_user_id ON sessions (user_id);

CREATE TABLE organizations (
    id               BLOB    NOT NULL PRIMARY KEY,
    name             TEXT    NOT NULL,
    plan             TEXT    NOT NULL CHECK (plan IN ('free', 'pro', 'enterprise')),
    max_instances    INTEGER NOT NULL CHECK (max_instances >= 0),
    max_memory_bytes INTEGER NOT NULL CHECK (max_memory_bytes >= 0),
    max_api_keys     INTEGER NOT NULL CHECK (max_api_keys >= 0),
    created_at       TEXT    NOT NULL
) STRICT;

CREATE TABLE memberships (
    org_id    BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id   BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role      TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    joined_at TEXT NOT NULL,
    PRIMARY KEY (org_id, user_id)
) STRICT;

-- "Which organizations is this user in" is asked on every dashboard page.
CREATE INDEX memberships_user_id ON memberships (user_id);

CREATE TABLE redis_instances (
    id            BLOB    NOT NULL PRIMARY KEY,
    org_id        BLOB    NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    provisioner   TEXT    NOT NULL CHECK (provisioner IN ('local', 'external')),
    memory_bytes  INTEGER NOT NULL CHECK (memory_bytes >= 0),
    status        TEXT    NOT NULL CHECK (status IN ('pending', 'running', 'stopped', 'error')),
    status_reason TEXT,
    -- Sealed (encrypted) by the caller; the store never sees an external URL in the clear.
    sealed_url    BLOB,
    created_at    TEXT    NOT NULL
) STRICT;

-- Serves both the per-org listing and the quota check's count and sum.
CREATE INDEX redis_instances_org_id ON redis_instances (org_id, created_at);

CREATE TABLE api_keys (
    id           BLOB NOT NULL PRIMARY KEY,
    org_id       BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    scope        TEXT NOT NULL CHECK (scope IN ('read-only', 'read-write', 'admin')),
    -- A JSON array of instance ids; NULL means every instance of the organization, which is
    -- not the same as an empty array (no instance at all).
    instance_ids TEXT CHECK (instance_ids IS NULL OR json_valid(instance_ids)),
    expires_at   TEXT,
    revoked_at   TEXT,
    last_used_at TEXT,
    secret_hash  BLOB NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    -- No foreign key: like the audit actor, who created a key is history, not a live link.
    created_by   BLOB,
    created_at   TEXT NOT NULL
) STRICT;

CREATE INDEX api_keys_org_id ON api_keys (org_id, created_at);

-- No foreign key on org_id: entries outlive the organization they describe.
CREATE TABLE audit_logs (
    id            BLOB NOT NULL PRIMARY KEY,
    org_id        BLOB,
    actor_user_id BLOB,
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL,
    target        TEXT,
    ip            TEXT,
    user_agent    TEXT,
    outcome       TEXT NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
    detail        TEXT,
    created_at    TEXT NOT NULL
) STRICT;

-- Listings are per organization, newest first, with id breaking ties within one microsecond.
CREATE INDEX audit_logs_org_created ON audit_logs (org_id, created_at, id);
