-- A per-key rate limit override (both set or both NULL: the organization's plan rate).
ALTER TABLE api_keys ADD COLUMN rate_per_second INTEGER;
ALTER TABLE api_keys ADD COLUMN rate_burst INTEGER;
