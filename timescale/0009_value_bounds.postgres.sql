-- A rollup refresh isolates a failure to the bucket that failed (issue 13, invariant 5). The bounds
-- of 0009_value_bounds.sql keep overflowing values out, but any row that still makes an aggregate
-- fail (a constraint dropped by hand, an error nobody foresaw) must not stop the refresh of every
-- other bucket and farm, nor keep the watermark where it is so late data stays invisible.
--
-- Each range is recomputed in its own exception block. When it fails with an error the data
-- causes (SQLSTATE classes 22 data exception, 23 integrity, 54 program limit: the classes the
-- writer dead-letters rows for), its buckets are recomputed one by one; a bucket that still fails
-- is recomputed farm by farm, and a farm's bucket that still fails is logged (RAISE WARNING),
-- dead-lettered (channel 'maintenance', topic 'rollup:<name>', the bucket and farm as payload, the
-- SQLSTATE and message as errors) and skipped: it has no materialized row until a write to its raw
-- rows invalidates it again. Other errors (lock timeouts, cancellation, disk full) still fail the
-- whole refresh, which rolls back and keeps its invalidations for the next pass.

-- Recompute [p_lo, p_hi) of one rollup bucket by bucket, and a failing bucket farm by farm; returns
-- the rows written. Called by refresh_rollup when recomputing the whole range failed.
CREATE FUNCTION iot.recompute_rollup_by_bucket(p_name text, p_lo timestamptz, p_hi timestamptz)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    r       iot.rollups;
    v_lo    timestamptz;
    v_farm  integer;
    v_rows  bigint := 0;
    v_n     bigint;
    v_state text;
    v_msg   text;
BEGIN
    SELECT * INTO STRICT r FROM iot.rollups WHERE name = p_name;
    -- Buckets whose raw rows are all gone have nothing to recompute: cleared here with the rest.
    EXECUTE format('DELETE FROM iot.%I WHERE bucket >= $1 AND bucket < $2', p_name || '_mat') USING p_lo, p_hi;
    FOR v_lo IN EXECUTE format(
        'SELECT DISTINCT date_bin($1, time, timestamptz ''2000-01-03 00:00:00+00'') FROM iot.%I
         WHERE time >= $2 AND time < $3 ORDER BY 1', r.source) USING r.width, p_lo, p_hi
    LOOP
        BEGIN
            v_rows := v_rows + iot.recompute_rollup(p_name, v_lo, v_lo + r.width);
        EXCEPTION WHEN data_exception OR integrity_constraint_violation OR program_limit_exceeded THEN
            FOR v_farm IN EXECUTE format(
                'SELECT DISTINCT farm_id FROM iot.%I WHERE time >= $1 AND time < $2 ORDER BY 1', r.source)
                USING v_lo, v_lo + r.width
            LOOP
                BEGIN
                    -- The aggregate is an inlinable SQL function: the farm filter reaches its scan.
                    EXECUTE format('INSERT INTO iot.%I SELECT * FROM iot.%I($1, $2) WHERE farm_id = $3',
                                   p_name || '_mat', 'agg_' || p_name) USING v_lo, v_lo + r.width, v_farm;
                    GET DIAGNOSTICS v_n = ROW_COUNT;
                    v_rows := v_rows + v_n;
                EXCEPTION WHEN data_exception OR integrity_constraint_violation OR program_limit_exceeded THEN
                    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_msg = MESSAGE_TEXT;
                    RAISE WARNING 'rollup %: bucket % of farm % skipped: % %', p_name, v_lo, v_farm, v_state, v_msg;
                    INSERT INTO iot.dead_letters (channel, topic_or_path, payload, errors)
                    VALUES ('maintenance', 'rollup:' || p_name,
                            jsonb_build_object('rollup', p_name, 'bucket_start', v_lo, 'bucket_end', v_lo + r.width,
                                               'farm_id', v_farm)::text,
                            jsonb_build_array(jsonb_build_object('field', NULL, 'sqlstate', v_state,
                                                                 'error', v_msg)));
                END;
            END LOOP;
        END;
    END LOOP;
    RETURN v_rows;
END $$;

-- As in 0004_rollups.postgres.sql, with each range recomputed in its own exception block.
CREATE OR REPLACE FUNCTION iot.refresh_rollup(p_name text, p_now timestamptz DEFAULT now())
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
        BEGIN
            buckets_written := buckets_written + iot.recompute_rollup(p_name, rng.lo, rng.hi);
        EXCEPTION WHEN data_exception OR integrity_constraint_violation OR program_limit_exceeded THEN
            buckets_written := buckets_written + iot.recompute_rollup_by_bucket(p_name, rng.lo, rng.hi);
        END;
    END LOOP;
    IF r.retention IS NOT NULL THEN
        EXECUTE format('DELETE FROM iot.%I WHERE bucket < $1', p_name || '_mat') USING p_now - r.retention;
    END IF;
    UPDATE iot.rollups SET watermark = v_new, refreshed_at = p_now WHERE name = p_name;
    watermark := v_new;
    RETURN NEXT;
END $$;
