-- What an external instance's Redis is: `standalone` (one server, its URL sealed in
-- sealed_url), `sentinel` or `cluster` (sealed_url then holds the sealed JSON topology).
ALTER TABLE redis_instances ADD COLUMN kind TEXT NOT NULL DEFAULT 'standalone';
