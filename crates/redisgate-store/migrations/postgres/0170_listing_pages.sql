-- Keyset pages of an organization's instances and API keys (`WHERE org_id = ? AND id > ?
-- ORDER BY id LIMIT ?`): each page is one range of these indexes, however deep the walk.
-- The keys' index leaves out instance tokens (two per instance), which listings never show;
-- it also serves the key quota's count.
CREATE INDEX redis_instances_org_page ON redis_instances (org_id, id);
CREATE INDEX api_keys_org_page ON api_keys (org_id, id) WHERE instance_token IS NULL;
