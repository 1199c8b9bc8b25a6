-- A per-key rate limit override (both set or both NULL: the organization's plan rate).
ALTER TABLE api_keys
    ADD COLUMN rate_per_second integer CHECK (rate_per_second > 0),
    ADD COLUMN rate_burst integer CHECK (rate_burst > 0),
    ADD CONSTRAINT api_keys_rate_both CHECK ((rate_per_second IS NULL) = (rate_burst IS NULL));
