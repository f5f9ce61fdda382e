-- Rollups on plain PostgreSQL, built the way TimescaleDB builds continuous aggregates:
--   * each rollup has a materialized table and a watermark; buckets below the watermark are read
--     from the table, newer ones are aggregated from raw rows at query time ("real-time"), so a
--     query always includes the newest readings;
--   * statement triggers log the time ranges touched by every INSERT/COPY/UPDATE/DELETE, however
--     the rows were written, into iot.rollup_invalidations (TimescaleDB's invalidation log);
--   * iot.refresh_rollup() recomputes only the invalidated buckets below the watermark, then
--     materializes the buckets that completed since the last refresh and moves the watermark.
-- Each aggregate is written once, as an inlinable SQL function used by both the view and the
-- refresh, so the two can never disagree; filters on the view push down into it.

CREATE TABLE iot.rollups (
    name         text PRIMARY KEY,       -- the view users query
    source       text NOT NULL,          -- the raw table it aggregates
    width        interval NOT NULL,
    lag          interval NOT NULL,      -- a bucket is materialized once it ended this long ago
    retention    interval,               -- materialized buckets older than this are deleted
    watermark    timestamptz NOT NULL DEFAULT '-infinity',
    refreshed_at timestamptz
);
INSERT INTO iot.rollups (name, source, width, lag, retention) VALUES
    ('sensor_data_15min', 'sensor_data', '15 minutes', '1 minute', '180 days'),
    ('sensor_data_hourly', 'sensor_data', '1 hour', '1 minute', '365 days'),
    ('sensor_data_daily', 'sensor_data', '1 day', '1 minute', NULL),
    ('milk_production_daily', 'milk_production_realtime', '1 day', '1 minute', NULL);

CREATE TABLE iot.rollup_invalidations (
    rollup text NOT NULL,
    lo     timestamptz NOT NULL,
    hi     timestamptz NOT NULL
);
CREATE INDEX rollup_invalidations_rollup ON iot.rollup_invalidations (rollup, lo);

-- STABLE so the planner evaluates it once per query and prunes partitions with it.
CREATE FUNCTION iot.rollup_watermark(p_name text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT watermark FROM iot.rollups WHERE name = p_name
$$;

-- One row per (statement, hour touched) and rollup: a 10k-row COPY logs a handful of rows.
CREATE FUNCTION iot.log_invalidation() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO iot.rollup_invalidations (rollup, lo, hi)
        SELECT r.name, t.lo, t.hi
        FROM (SELECT min(time) AS lo, max(time) AS hi FROM new_rows GROUP BY date_trunc('hour', time)) t
        CROSS JOIN iot.rollups r WHERE r.source = TG_TABLE_NAME;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        INSERT INTO iot.rollup_invalidations (rollup, lo, hi)
        SELECT r.name, t.lo, t.hi
        FROM (SELECT min(time) AS lo, max(time) AS hi FROM old_rows GROUP BY date_trunc('hour', time)) t
        CROSS JOIN iot.rollups r WHERE r.source = TG_TABLE_NAME;
    END IF;
    RETURN NULL;
END $$;

-- PostgreSQL allows one event per trigger that has transition tables.
CREATE TRIGGER sensor_data_invalidate_ins AFTER INSERT ON iot.sensor_data
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION iot.log_invalidation();
CREATE TRIGGER sensor_data_invalidate_upd AFTER UPDATE ON iot.sensor_data
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION iot.log_invalidation();
CREATE TRIGGER sensor_data_invalidate_del AFTER DELETE ON iot.sensor_data
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION iot.log_invalidation();
CREATE TRIGGER milk_invalidate_ins AFTER INSERT ON iot.milk_production_realtime
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION iot.log_invalidation();
CREATE TRIGGER milk_invalidate_upd AFTER UPDATE ON iot.milk_production_realtime
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION iot.log_invalidation();
CREATE TRIGGER milk_invalidate_del AFTER DELETE ON iot.milk_production_realtime
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION iot.log_invalidation();

-- The aggregates (seed 001 section 7.1, columns of contract section 2). time_bucket's origin.
CREATE FUNCTION iot.agg_sensor_data_15min(p_lo timestamptz, p_hi timestamptz)
RETURNS TABLE (bucket timestamptz, device_uid text, device_type text, farm_id integer, metric_name text,
               avg_value double precision, min_value double precision, max_value double precision,
               stddev_value double precision, sample_count bigint)
LANGUAGE sql STABLE AS $$
    SELECT date_bin('15 minutes', s.time, timestamptz '2000-01-03 00:00:00+00'),
           s.device_uid, s.device_type, s.farm_id, s.metric_name,
           avg(s.metric_value), min(s.metric_value), max(s.metric_value), stddev(s.metric_value), count(*)
    FROM iot.sensor_data s
    WHERE s.time >= p_lo AND s.time < p_hi
    GROUP BY 1, 2, 3, 4, 5
$$;

CREATE FUNCTION iot.agg_sensor_data_hourly(p_lo timestamptz, p_hi timestamptz)
RETURNS TABLE (bucket timestamptz, device_uid text, device_type text, farm_id integer, metric_name text,
               avg_value double precision, min_value double precision, max_value double precision,
               stddev_value double precision, sample_count bigint,
               median_value double precision, p95_value double precision, valid_count bigint)
LANGUAGE sql STABLE AS $$
    SELECT date_bin('1 hour', s.time, timestamptz '2000-01-03 00:00:00+00'),
           s.device_uid, s.device_type, s.farm_id, s.metric_name,
           avg(s.metric_value), min(s.metric_value), max(s.metric_value), stddev(s.metric_value), count(*),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY s.metric_value),
           percentile_cont(0.95) WITHIN GROUP (ORDER BY s.metric_value),
           count(*) FILTER (WHERE s.data_quality = 'valid')
    FROM iot.sensor_data s
    WHERE s.time >= p_lo AND s.time < p_hi
    GROUP BY 1, 2, 3, 4, 5
$$;

CREATE FUNCTION iot.agg_sensor_data_daily(p_lo timestamptz, p_hi timestamptz)
RETURNS TABLE (bucket timestamptz, device_uid text, device_type text, farm_id integer, metric_name text,
               avg_value double precision, min_value double precision, max_value double precision,
               stddev_value double precision, sample_count bigint,
               median_value double precision, error_count bigint)
LANGUAGE sql STABLE AS $$
    SELECT date_bin('1 day', s.time, timestamptz '2000-01-03 00:00:00+00'),
           s.device_uid, s.device_type, s.farm_id, s.metric_name,
           avg(s.metric_value), min(s.metric_value), max(s.metric_value), stddev(s.metric_value), count(*),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY s.metric_value),
           count(*) FILTER (WHERE s.data_quality <> 'valid')
    FROM iot.sensor_data s
    WHERE s.time >= p_lo AND s.time < p_hi
    GROUP BY 1, 2, 3, 4, 5
$$;

CREATE FUNCTION iot.agg_milk_production_daily(p_lo timestamptz, p_hi timestamptz)
RETURNS TABLE (bucket timestamptz, animal_id integer, farm_id integer,
               total_yield_kg double precision, avg_yield_per_session double precision, milking_count bigint,
               avg_conductivity double precision, avg_scc numeric, max_mastitis_risk double precision,
               avg_fat double precision, avg_protein double precision)
LANGUAGE sql STABLE AS $$
    SELECT date_bin('1 day', m.time, timestamptz '2000-01-03 00:00:00+00'), m.animal_id, m.farm_id,
           sum(m.yield_kg), avg(m.yield_kg), count(*), avg(m.conductivity_ms), avg(m.somatic_cell_count),
           max(m.mastitis_risk_score), avg(m.fat_percent), avg(m.protein_percent)
    FROM iot.milk_production_realtime m
    WHERE m.time >= p_lo AND m.time < p_hi
    GROUP BY 1, 2, 3
$$;

-- Materialized buckets. Indexes serve the API's per-device range query (device, metric, bucket),
-- the farm-wide dashboard and Odoo reports (farm, bucket), and refresh/retention (bucket).
CREATE TABLE iot.sensor_data_15min_mat AS SELECT * FROM iot.agg_sensor_data_15min('-infinity', '-infinity');
CREATE TABLE iot.sensor_data_hourly_mat AS SELECT * FROM iot.agg_sensor_data_hourly('-infinity', '-infinity');
CREATE TABLE iot.sensor_data_daily_mat AS SELECT * FROM iot.agg_sensor_data_daily('-infinity', '-infinity');
CREATE TABLE iot.milk_production_daily_mat AS SELECT * FROM iot.agg_milk_production_daily('-infinity', '-infinity');
CREATE INDEX ON iot.sensor_data_15min_mat (device_uid, metric_name, bucket);
CREATE INDEX ON iot.sensor_data_15min_mat (farm_id, bucket);
CREATE INDEX ON iot.sensor_data_15min_mat (bucket);
CREATE INDEX ON iot.sensor_data_hourly_mat (device_uid, metric_name, bucket);
CREATE INDEX ON iot.sensor_data_hourly_mat (farm_id, bucket);
CREATE INDEX ON iot.sensor_data_hourly_mat (bucket);
CREATE INDEX ON iot.sensor_data_daily_mat (device_uid, metric_name, bucket);
CREATE INDEX ON iot.sensor_data_daily_mat (farm_id, bucket);
CREATE INDEX ON iot.sensor_data_daily_mat (bucket);
CREATE INDEX ON iot.milk_production_daily_mat (animal_id, bucket);
CREATE INDEX ON iot.milk_production_daily_mat (farm_id, bucket);
CREATE INDEX ON iot.milk_production_daily_mat (bucket);

CREATE VIEW iot.sensor_data_15min AS
    SELECT * FROM iot.sensor_data_15min_mat WHERE bucket < iot.rollup_watermark('sensor_data_15min')
    UNION ALL
    SELECT * FROM iot.agg_sensor_data_15min(iot.rollup_watermark('sensor_data_15min'), 'infinity');
CREATE VIEW iot.sensor_data_hourly AS
    SELECT * FROM iot.sensor_data_hourly_mat WHERE bucket < iot.rollup_watermark('sensor_data_hourly')
    UNION ALL
    SELECT * FROM iot.agg_sensor_data_hourly(iot.rollup_watermark('sensor_data_hourly'), 'infinity');
CREATE VIEW iot.sensor_data_daily AS
    SELECT * FROM iot.sensor_data_daily_mat WHERE bucket < iot.rollup_watermark('sensor_data_daily')
    UNION ALL
    SELECT * FROM iot.agg_sensor_data_daily(iot.rollup_watermark('sensor_data_daily'), 'infinity');
CREATE VIEW iot.milk_production_daily AS
    SELECT * FROM iot.milk_production_daily_mat WHERE bucket < iot.rollup_watermark('milk_production_daily')
    UNION ALL
    SELECT * FROM iot.agg_milk_production_daily(iot.rollup_watermark('milk_production_daily'), 'infinity');

-- Recompute [p_lo, p_hi) of one rollup from raw rows. Table and function names come from
-- iot.rollups and are quoted by format(%I); the bounds travel as parameters.
CREATE FUNCTION iot.recompute_rollup(p_name text, p_lo timestamptz, p_hi timestamptz)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_rows bigint;
BEGIN
    EXECUTE format('DELETE FROM iot.%I WHERE bucket >= $1 AND bucket < $2', p_name || '_mat') USING p_lo, p_hi;
    EXECUTE format('INSERT INTO iot.%I SELECT * FROM iot.%I($1, $2)', p_name || '_mat', 'agg_' || p_name)
        USING p_lo, p_hi;
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    RETURN v_rows;
END $$;

-- One refresh of one rollup: invalidated buckets below the old watermark, plus the buckets that
-- completed since, merged into disjoint ranges and recomputed; then the watermark moves. The
-- invalidations are consumed first, so rows committed while this runs keep theirs for next time.
CREATE FUNCTION iot.refresh_rollup(p_name text, p_now timestamptz DEFAULT now())
RETURNS TABLE (ranges integer, buckets_written bigint, watermark timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    r       iot.rollups;
    v_new   timestamptz;
    rng     record;
BEGIN
    SELECT * INTO STRICT r FROM iot.rollups WHERE name = p_name FOR UPDATE;
    v_new := greatest(r.watermark, date_bin(r.width, p_now - r.lag, timestamptz '2000-01-03 00:00:00+00'));
    ranges := 0;
    buckets_written := 0;
    FOR rng IN
        WITH consumed AS (
            DELETE FROM iot.rollup_invalidations i
            WHERE i.rollup = p_name AND i.lo < v_new
            RETURNING i.lo, i.hi
        ), wanted AS (
            SELECT date_bin(r.width, c.lo, timestamptz '2000-01-03 00:00:00+00') AS lo,
                   least(date_bin(r.width, c.hi, timestamptz '2000-01-03 00:00:00+00') + r.width, r.watermark) AS hi
            FROM consumed c WHERE c.lo < r.watermark
            UNION ALL
            SELECT r.watermark, v_new WHERE v_new > r.watermark
        ), islands AS (
            SELECT w.lo, w.hi,
                   count(*) FILTER (WHERE w.lo > w.prev_hi) OVER (ORDER BY w.lo, w.hi) AS island
            FROM (SELECT lo, hi, max(hi) OVER (ORDER BY lo, hi ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_hi
                  FROM wanted) w
        )
        SELECT min(lo) AS lo, max(hi) AS hi FROM islands GROUP BY island ORDER BY 1
    LOOP
        ranges := ranges + 1;
        buckets_written := buckets_written + iot.recompute_rollup(p_name, rng.lo, rng.hi);
    END LOOP;
    IF r.retention IS NOT NULL THEN
        EXECUTE format('DELETE FROM iot.%I WHERE bucket < $1', p_name || '_mat') USING p_now - r.retention;
    END IF;
    UPDATE iot.rollups SET watermark = v_new, refreshed_at = p_now WHERE name = p_name;
    watermark := v_new;
    RETURN NEXT;
END $$;
