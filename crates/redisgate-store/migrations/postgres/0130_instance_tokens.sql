-- An instance's two REST tokens (Upstash's rest_token and read_only_rest_token) are API keys
-- bound to it: `instance_token` says which of the two, `token_instance_id` ties the key's life
-- to the instance's, and `sealed_key` holds the key text sealed by the caller, so that members
-- may copy it again from the instance's connect page (ordinary keys keep only their hash).
ALTER TABLE api_keys ADD COLUMN instance_token text CHECK (instance_token IN ('standard', 'read-only'));
ALTER TABLE api_keys ADD COLUMN token_instance_id uuid REFERENCES redis_instances (id) ON DELETE CASCADE;
ALTER TABLE api_keys ADD COLUMN sealed_key bytea;
CREATE INDEX api_keys_token_instance_id ON api_keys (token_instance_id) WHERE token_instance_id IS NOT NULL;

-- A local instance's maxmemory-policy.
ALTER TABLE redis_instances ADD COLUMN eviction_policy text NOT NULL DEFAULT 'noeviction';
