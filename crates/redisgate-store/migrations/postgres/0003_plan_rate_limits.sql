-- Rate limits per plan set through the API (deployment administrators); absent: the config.
CREATE TABLE plan_rate_limits (
    plan text PRIMARY KEY CHECK (plan IN ('free', 'pro', 'enterprise')),
    per_second integer NOT NULL CHECK (per_second > 0),
    burst integer NOT NULL CHECK (burst > 0)
);
