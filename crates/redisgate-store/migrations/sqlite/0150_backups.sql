-- Backups of an instance's data. The object itself lives in backup storage (a directory or
-- an S3 bucket) under object_key; the row says whether it is complete (state = 'ready').
-- Rows go with their instance (and organization); the objects they leave behind are swept
-- from storage by the backup scheduler.
CREATE TABLE backups (
    id          BLOB    NOT NULL PRIMARY KEY,
    instance_id BLOB    NOT NULL REFERENCES redis_instances (id) ON DELETE CASCADE,
    org_id      BLOB    NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('manual', 'daily')),
    state       TEXT    NOT NULL CHECK (state IN ('pending', 'ready', 'failed')),
    size_bytes  INTEGER NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
    error       TEXT,
    object_key  TEXT    NOT NULL,
    created_at  TEXT    NOT NULL
) STRICT;
-- The per-instance listing, and the per-organization caps' count and sum.
CREATE INDEX backups_instance ON backups (instance_id, created_at);
CREATE INDEX backups_org ON backups (org_id);

-- Daily backups: one row per instance that has them. next_run_at is the claim: a replica
-- takes a due row by moving it forward in the same statement that finds it.
CREATE TABLE backup_schedules (
    instance_id    BLOB    NOT NULL PRIMARY KEY REFERENCES redis_instances (id) ON DELETE CASCADE,
    retention_days INTEGER NOT NULL CHECK (retention_days BETWEEN 1 AND 30),
    next_run_at    TEXT    NOT NULL
) STRICT;
CREATE INDEX backup_schedules_due ON backup_schedules (next_run_at);
