-- The registry cache reloads when a table's newest updated_at moves. A key whose farms or scopes
-- change (in Odoo, or by hand) must move it too, whoever updates the row: a trigger stamps it.
ALTER TABLE iot.api_keys ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

CREATE FUNCTION iot.stamp_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER api_keys_updated_at BEFORE UPDATE ON iot.api_keys
    FOR EACH ROW EXECUTE FUNCTION iot.stamp_updated_at();
