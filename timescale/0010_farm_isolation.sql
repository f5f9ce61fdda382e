-- Farm isolation and bounded rejections (issue 13).

-- A dead letter keeps a bounded prefix of what was sent, with the whole payload's size and hash (to
-- match it against a device's log), and the farm it concerned: the per-farm cap on rejected bytes
-- counts by it, and a farm's operators read their own.
ALTER TABLE iot.dead_letters
    ADD COLUMN payload_bytes  integer,
    ADD COLUMN payload_sha256 text,
    ADD COLUMN farm_id        integer;
CREATE INDEX dead_letters_farm ON iot.dead_letters (farm_id, received_at);

-- Device ids the registry does not know are claimed by the first farm that sends them: another farm
-- sending the same id is refused, so one farm can neither overwrite nor shadow another's readings
-- (the raw tables' keys name the device, not the farm). Registered devices follow the registry.
CREATE TABLE iot.device_owners (
    device_uid text PRIMARY KEY,
    farm_id    integer NOT NULL,
    claimed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO iot.device_owners (device_uid, farm_id)
SELECT device_uid, farm_id FROM iot.device_state
ON CONFLICT DO NOTHING;

-- Session ids are made up by each farm's parlour software: two farms may well number theirs the
-- same way, so a session is a duplicate only within its farm.
ALTER TABLE iot.milk_production_realtime DROP CONSTRAINT milk_production_key;
ALTER TABLE iot.milk_production_realtime ADD CONSTRAINT milk_production_key UNIQUE (farm_id, session_id, time);

-- A change counter per concern, moved by any statement on its tables and visible only once that
-- transaction commits (unlike updated_at := now(), which is the transaction's start and can hide a
-- change from a reader that looked in between). NOTIFY, also delivered at commit, lets the
-- ingestor reload at once; the counter is what it compares when it polls.
CREATE TABLE iot.change_counters (
    name    text PRIMARY KEY,
    version bigint NOT NULL DEFAULT 0
);
INSERT INTO iot.change_counters (name) VALUES ('registry'), ('alert_rules');

CREATE FUNCTION iot.count_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE iot.change_counters SET version = version + 1 WHERE name = TG_ARGV[0];
    PERFORM pg_notify('iot_changes', TG_ARGV[0]);
    RETURN NULL;
END $$;

CREATE TRIGGER devices_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON iot.devices
    FOR EACH STATEMENT EXECUTE FUNCTION iot.count_change('registry');
CREATE TRIGGER animals_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON iot.animals
    FOR EACH STATEMENT EXECUTE FUNCTION iot.count_change('registry');
CREATE TRIGGER zones_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON iot.zones
    FOR EACH STATEMENT EXECUTE FUNCTION iot.count_change('registry');
CREATE TRIGGER api_keys_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON iot.api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION iot.count_change('registry');
CREATE TRIGGER alert_rules_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON iot.alert_rules
    FOR EACH STATEMENT EXECUTE FUNCTION iot.count_change('alert_rules');
