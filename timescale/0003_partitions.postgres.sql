-- Partition upkeep for the postgres profile, in the database so that psql users, the maintenance
-- loop and `migrate` share one implementation. Partitions always cover the retention window and
-- `premake` ahead, so any row inside the window can be written with a plain INSERT or COPY; a row
-- outside it has no partition and fails (the writer dead-letters it), as validation would reject it.

CREATE TABLE iot.partitioned_tables (
    table_name text PRIMARY KEY,
    width      interval NOT NULL,   -- one partition's span, aligned like time_bucket (origin 2000-01-03)
    lookback   interval NOT NULL,   -- partitions exist this far back: what validation still accepts
    retention  interval,            -- partitions wholly older than this are dropped; NULL: kept
    premake    interval NOT NULL DEFAULT '7 days'
);
INSERT INTO iot.partitioned_tables (table_name, width, lookback, retention) VALUES
    ('sensor_data', '1 day', '90 days', '90 days'),
    ('milk_production_realtime', '7 days', '90 days', '90 days'),
    ('rfid_events', '1 day', '90 days', '90 days'),
    ('alerts', '30 days', '90 days', NULL);

CREATE FUNCTION iot.partition_name(p_table text, p_lo timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_table || '_p' || to_char(p_lo AT TIME ZONE 'UTC', 'YYYYMMDD')
$$;

CREATE FUNCTION iot.ensure_partitions(p_now timestamptz DEFAULT now())
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    t       record;
    v_lo    timestamptz;
    v_name  text;
    v_made  integer := 0;
BEGIN
    FOR t IN SELECT * FROM iot.partitioned_tables ORDER BY table_name LOOP
        v_lo := date_bin(t.width, p_now - t.lookback, timestamptz '2000-01-03 00:00:00+00');
        WHILE v_lo < p_now + t.premake LOOP
            v_name := iot.partition_name(t.table_name, v_lo);
            IF to_regclass(format('iot.%I', v_name)) IS NULL THEN
                EXECUTE format('CREATE TABLE iot.%I PARTITION OF iot.%I FOR VALUES FROM (%L) TO (%L)',
                               v_name, t.table_name, v_lo, v_lo + t.width);
                v_made := v_made + 1;
            END IF;
            v_lo := v_lo + t.width;
        END LOOP;
    END LOOP;
    RETURN v_made;
END $$;

-- A partition is dropped only when all of it is past the retention window: rows inside the window
-- are never lost to retention, and rows slightly past it go with their partition a little later.
CREATE FUNCTION iot.drop_expired_partitions(p_now timestamptz DEFAULT now())
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    p       record;
    v_count integer := 0;
BEGIN
    FOR p IN
        SELECT c.relname, t.width, t.retention,
               to_timestamp(right(c.relname, 8), 'YYYYMMDD')::timestamp AT TIME ZONE 'UTC' AS lo
        FROM iot.partitioned_tables t
        JOIN pg_class parent ON parent.relname = t.table_name
             AND parent.relnamespace = 'iot'::regnamespace
        JOIN pg_inherits i ON i.inhparent = parent.oid
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE t.retention IS NOT NULL
    LOOP
        IF p.lo + p.width <= p_now - p.retention THEN
            EXECUTE format('DROP TABLE iot.%I', p.relname);
            v_count := v_count + 1;
        END IF;
    END LOOP;
    RETURN v_count;
END $$;
