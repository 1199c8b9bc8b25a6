-- Usage history (redisgate_core::usage): one row per sample a replica took of an instance
-- (resolution 10), or per merge of older rows into minutes (60) and ten minutes (600).
-- Rows are additive: several replicas' rows for one interval are combined when read, so no
-- replica coordinates with another when writing. Times are unix seconds: compact, and compared
-- as numbers in both stores.
CREATE TABLE usage_samples (
    id               INTEGER PRIMARY KEY,
    instance_id      BLOB    NOT NULL REFERENCES redis_instances (id) ON DELETE CASCADE,
    resolution       INTEGER NOT NULL CHECK (resolution IN (10, 60, 600)),
    start_unix       INTEGER NOT NULL,
    reads            INTEGER NOT NULL CHECK (reads >= 0),
    writes           INTEGER NOT NULL CHECK (writes >= 0),
    errors           INTEGER NOT NULL CHECK (errors >= 0),
    -- Sparse latency histogram: `bucket:count,…` (see usage::Histogram::encode).
    latency          TEXT    NOT NULL,
    -- The latest INFO figures read in the interval; all NULL when none was read.
    server_unix      INTEGER,
    keys             INTEGER,
    memory_bytes     INTEGER,
    hits             INTEGER,
    misses           INTEGER,
    connections      INTEGER
);
-- Reading one instance's period; and the cascade when an instance goes.
CREATE INDEX usage_samples_instance ON usage_samples (instance_id, start_unix);
-- Down-sampling and pruning take the oldest rows of one resolution.
CREATE INDEX usage_samples_age ON usage_samples (resolution, start_unix);
