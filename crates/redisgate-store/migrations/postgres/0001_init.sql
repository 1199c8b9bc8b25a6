-- RedisGate metadata, PostgreSQL. Append-only: never edit a migration once released; add
-- the next one (and its SQLite twin) instead.
--
-- Enumerations are text with CHECK constraints rather than PG enum types, so adding a value
-- is a constraint swap in one transaction, and both backends store the same spellings.

CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    email         text        NOT NULL UNIQUE,
    password_hash text        NOT NULL,
    is_admin      boolean     NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL
);

-- Sessions are looked up by the SHA-256 of the token; the token itself is never stored.
CREATE TABLE sessions (
    token_hash bytea       PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz
);
CREATE INDEX sessions_user_id ON sessions (user_id);

CREATE TABLE organizations (
    id               uuid        PRIMARY KEY,
    name             text        NOT NULL,
    plan             text        NOT NULL CHECK (plan IN ('free', 'pro', 'enterprise')),
    max_instances    integer     NOT NULL CHECK (max_instances >= 0),
    max_memory_bytes bigint      NOT NULL CHECK (max_memory_bytes >= 0),
    max_api_keys     integer     NOT NULL CHECK (max_api_keys >= 0),
    created_at       timestamptz NOT NULL
);

CREATE TABLE memberships (
    org_id    uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id   uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role      text        NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    joined_at timestamptz NOT NULL,
    PRIMARY KEY (org_id, user_id)
);
-- "Which organizations is this user in" runs on every dashboard load.
CREATE INDEX memberships_user_id ON memberships (user_id);

CREATE TABLE redis_instances (
    id            uuid        PRIMARY KEY,
    org_id        uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name          text        NOT NULL,
    provisioner   text        NOT NULL CHECK (provisioner IN ('local', 'external')),
    memory_bytes  bigint      NOT NULL CHECK (memory_bytes >= 0),
    status        text        NOT NULL CHECK (status IN ('pending', 'running', 'stopped', 'error')),
    status_reason text,
    -- External instances only: the connection URL, encrypted by the caller.
    sealed_url    bytea,
    created_at    timestamptz NOT NULL
);
CREATE INDEX redis_instances_org_id ON redis_instances (org_id, created_at);

CREATE TABLE api_keys (
    id           uuid        PRIMARY KEY,
    org_id       uuid        NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name         text        NOT NULL,
    scope        text        NOT NULL CHECK (scope IN ('read-only', 'read-write', 'admin')),
    -- NULL: every instance of the organization; otherwise a JSON array of instance ids.
    instance_ids jsonb       CHECK (instance_ids IS NULL OR jsonb_typeof(instance_ids) = 'array'),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz,
    secret_hash  bytea       NOT NULL UNIQUE CHECK (octet_length(secret_hash) = 32),
    -- No foreign key: the key outlives the person who made it.
    created_by   uuid,
    created_at   timestamptz NOT NULL
);
CREATE INDEX api_keys_org_id ON api_keys (org_id, created_at);

-- No foreign keys: the trail must outlive the organizations and users it names.
CREATE TABLE audit_logs (
    id            uuid        PRIMARY KEY,
    org_id        uuid,
    actor_user_id uuid,
    actor         text        NOT NULL,
    action        text        NOT NULL,
    target        text,
    ip            text,
    user_agent    text,
    outcome       text        NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
    detail        text,
    created_at    timestamptz NOT NULL
);
CREATE INDEX audit_logs_org_created ON audit_logs (org_id, created_at DESC, id DESC);
