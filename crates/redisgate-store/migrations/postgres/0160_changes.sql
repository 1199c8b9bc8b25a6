-- The change feed (Store::changes_after): one row per insert, update or delete of an
-- instance or API key, and per update or delete of an organization, written by the triggers
-- below in the writing transaction, so that no store method can forget one. Replicas follow
-- it by seq instead of re-reading every instance. Rows say only what changed; the follower
-- re-reads the subject.
--
-- seq comes from an identity sequence, taken when the row is inserted, not when it commits:
-- concurrent transactions may commit out of order, and a rollback leaves a gap for good.
-- Followers deal with that (see the Store trait); nothing here serializes writers.
CREATE TABLE changes (
    seq          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_kind text        NOT NULL CHECK (subject_kind IN ('instance', 'api_key', 'organization')),
    subject_id   uuid        NOT NULL,
    at           timestamptz NOT NULL
);
-- Pruning takes the oldest rows.
CREATE INDEX changes_at ON changes (at);

-- The highest seq pruned: a reader whose cursor is below it has missed rows. One row.
CREATE TABLE change_watermark (
    id  integer PRIMARY KEY CHECK (id = 1),
    seq bigint  NOT NULL CHECK (seq >= 0)
);
INSERT INTO change_watermark (id, seq) VALUES (1, 0);

-- One function for every table: the subject kind is the trigger's argument. No pg_notify:
-- followers poll their cursor.
CREATE FUNCTION record_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO changes (subject_kind, subject_id, at)
    VALUES (TG_ARGV[0], CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END, now());
    RETURN NULL;
END
$$;

-- Row triggers fire for deletes cascading through foreign keys too, so deleting an
-- organization records its instances and keys.
CREATE TRIGGER redis_instances_change AFTER INSERT OR UPDATE OR DELETE ON redis_instances
    FOR EACH ROW EXECUTE FUNCTION record_change('instance');

-- Every column but last_used_at, which touch_api_keys writes every second for keys in use:
-- that is no change anyone follows. A column added to api_keys later must be added here (by
-- dropping and re-creating this trigger in that migration).
CREATE TRIGGER api_keys_change AFTER INSERT OR DELETE OR UPDATE OF
    id, org_id, name, scope, instance_ids, expires_at, revoked_at, secret_hash, created_by,
    created_at, rate_per_second, rate_burst, instance_token, token_instance_id, sealed_key
ON api_keys FOR EACH ROW EXECUTE FUNCTION record_change('api_key');

-- A new organization has no instance or key yet, so only updates (plan, quota, name) and
-- deletes are recorded.
CREATE TRIGGER organizations_change AFTER UPDATE OR DELETE ON organizations
    FOR EACH ROW EXECUTE FUNCTION record_change('organization');
