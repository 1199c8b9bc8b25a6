-- Rate limits per plan set through the API (deployment administrators); absent: the config.
CREATE TABLE plan_rate_limits (
    plan TEXT PRIMARY KEY CHECK (plan IN ('free', 'pro', 'enterprise')),
    per_second INTEGER NOT NULL CHECK (per_second > 0),
    burst INTEGER NOT NULL CHECK (burst > 0)
) STRICT;
