-- The change feed (Store::changes_after): one row per insert, update or delete of an
-- instance or API key, and per update or delete of an organization, written by the triggers
-- below in the writing transaction, so that no store method can forget one. Replicas follow
-- it by seq instead of re-reading every instance. Rows say only what changed; the follower
-- re-reads the subject.
--
-- AUTOINCREMENT: a seq is never handed out twice, even after the highest rows are pruned.
-- `at` is SQLite's clock, which has milliseconds: padded to the six fractional digits every
-- other timestamp has (see 0001), so that it compares with them as text.
CREATE TABLE changes (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    subject_kind TEXT    NOT NULL CHECK (subject_kind IN ('instance', 'api_key', 'organization')),
    subject_id   BLOB    NOT NULL,
    at           TEXT    NOT NULL
) STRICT;
-- Pruning takes the oldest rows.
CREATE INDEX changes_at ON changes (at);

-- The highest seq pruned: a reader whose cursor is below it has missed rows. One row.
CREATE TABLE change_watermark (
    id  INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL CHECK (seq >= 0)
) STRICT;
INSERT INTO change_watermark (id, seq) VALUES (1, 0);

-- Triggers fire for deletes cascading through foreign keys too (the store turns foreign keys
-- on for every connection), so deleting an organization records its instances and keys.
CREATE TRIGGER redis_instances_insert_change AFTER INSERT ON redis_instances BEGIN
    INSERT INTO changes (subject_kind, subject_id, at)
    VALUES ('instance', NEW.id, strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'));
END;
CREATE TRIGGER redis_instances_update_change AFTER UPDATE ON redis_instances BEGIN
    INSERT INTO changes (subject_kind, subject_id, at)
    VALUES ('instance', NEW.id, strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'));
END;
CREATE TRIGGER redis_instances_delete_change AFTER DELETE ON redis_instances BEGIN
    INSERT INTO changes (subject_kind, subject_id, at)
    VALUES ('instance', OLD.id, strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'));
END;

-- Every column but last_used_at, which touch_api_keys writes every second for keys in use:
-- that is no change anyone follows. A column added to api_keys later must be added here (by
-- dropping and re-creating this trigger in that migration); the sqlite_only test
-- `api_key_update_trigger_names_every_column_but_last_used_at` checks it.
CREATE TRIGGER api_keys_insert_change AFTER INSERT ON api_keys BEGIN
    INSERT INTO changes (subject_kind, subject_id, at)
    VALUES ('api_key', NEW.id, strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'));
END;
CREATE TRIGGER api_keys_update_change AFTER UPDATE OF
    id, org_id, name, scope, instance_ids, expires_at, revoked_at, secret_hash, created_by,
    created_at, rate_per_second, rate_burst, instance_token, token_instance_id, sealed_key
ON api_keys BEGIN
    INSERT INTO changes (subject_kind, subject_id, at)
    VALUES ('api_key', NEW.id, strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'));
END;
CREATE TRIGGER api_keys_delete_change AFTER DELETE ON api_keys BEGIN
    INSERT INTO changes (subject_kind, subject_id, at)
    VALUES ('api_key', OLD.id, strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'));
END;

-- A new organization has no instance or key yet, so only updates (plan, quota, name) and
-- deletes are recorded.
CREATE TRIGGER organizations_update_change AFTER UPDATE ON organizations BEGIN
    INSERT INTO changes (subject_kind, subject_id, at)
    VALUES ('organization', NEW.id, strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'));
END;
CREATE TRIGGER organizations_delete_change AFTER DELETE ON organizations BEGIN
    INSERT INTO changes (subject_kind, subject_id, at)
    VALUES ('organization', OLD.id, strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'));
END;
