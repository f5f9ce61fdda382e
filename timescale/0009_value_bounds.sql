-- Values cannot poison shared work (issue 13, invariant 5). Rollups sum values and their squares
-- (avg, stddev) in float8: two readings 1e300 and 0 in one bucket overflow, and the refresh of every
-- farm's buckets failed with them. Every stored value is bounded, however it was written (the API,
-- MQTT, a user's INSERT or COPY): |value| <= 1e9, NaN and infinities refused too (NaN sorts above
-- every number in PostgreSQL, so BETWEEN refuses it; NULL passes where the column allows it).
--
-- 1e9 is a copy of ingestor.validation.MAX_MAGNITUDE, the one place the bound is decided:
-- tests/test_poison.py asserts that the constraints below refuse exactly what it refuses.
--
-- Rows already stored outside the bound would make ADD CONSTRAINT fail: they are moved to
-- iot.dead_letters (channel 'migration', the row as JSON, the fields and why) and deleted first.
-- On TimescaleDB the DELETE reaches compressed chunks too, and ADD CONSTRAINT checks them (2.28.3).

WITH moved AS (
    DELETE FROM iot.sensor_data
    WHERE NOT (metric_value BETWEEN -1e9 AND 1e9)
    RETURNING *
)
INSERT INTO iot.dead_letters (channel, topic_or_path, payload, errors)
SELECT 'migration', 'iot.sensor_data', row_to_json(moved)::text,
       jsonb_build_array(jsonb_build_object(
           'field', 'metric_value',
           'error', format('metric_value: %s is outside -1e9..1e9, the bound of every stored value '
                           '(migration 0009_value_bounds)', moved.metric_value)))
FROM moved;

WITH moved AS (
    DELETE FROM iot.milk_production_realtime
    WHERE NOT (yield_kg BETWEEN -1e9 AND 1e9)
       OR NOT (flow_rate_kg_min BETWEEN -1e9 AND 1e9)
       OR NOT (conductivity_ms BETWEEN -1e9 AND 1e9)
       OR NOT (temperature_c BETWEEN -1e9 AND 1e9)
       OR NOT (fat_percent BETWEEN -1e9 AND 1e9)
       OR NOT (protein_percent BETWEEN -1e9 AND 1e9)
       OR NOT (lactose_percent BETWEEN -1e9 AND 1e9)
       OR NOT (mastitis_risk_score BETWEEN -1e9 AND 1e9)
    RETURNING *
)
INSERT INTO iot.dead_letters (channel, topic_or_path, payload, errors)
SELECT 'migration', 'iot.milk_production_realtime', row_to_json(moved)::text,
       (SELECT jsonb_agg(jsonb_build_object(
                   'field', f.name,
                   'error', format('%s: %s is outside -1e9..1e9, the bound of every stored value '
                                   '(migration 0009_value_bounds)', f.name, f.value)))
        FROM (VALUES ('yield_kg', moved.yield_kg), ('flow_rate_kg_min', moved.flow_rate_kg_min),
                     ('conductivity_ms', moved.conductivity_ms), ('temperature_c', moved.temperature_c),
                     ('fat_percent', moved.fat_percent), ('protein_percent', moved.protein_percent),
                     ('lactose_percent', moved.lactose_percent),
                     ('mastitis_risk_score', moved.mastitis_risk_score)) AS f (name, value)
        WHERE NOT (f.value BETWEEN -1e9 AND 1e9))
FROM moved;

WITH moved AS (
    DELETE FROM iot.rfid_events
    WHERE NOT (rssi BETWEEN -1e9 AND 1e9)
    RETURNING *
)
INSERT INTO iot.dead_letters (channel, topic_or_path, payload, errors)
SELECT 'migration', 'iot.rfid_events', row_to_json(moved)::text,
       jsonb_build_array(jsonb_build_object(
           'field', 'rssi',
           'error', format('rssi: %s is outside -1e9..1e9, the bound of every stored value '
                           '(migration 0009_value_bounds)', moved.rssi)))
FROM moved;

-- One constraint per column, so a refused row's error names its column. One ALTER per table: its
-- rows are checked in one pass. Partitions and chunks made later inherit the constraints.
ALTER TABLE iot.sensor_data
    ADD CONSTRAINT sensor_data_metric_value_bounded CHECK (metric_value BETWEEN -1e9 AND 1e9);

ALTER TABLE iot.milk_production_realtime
    ADD CONSTRAINT milk_production_yield_kg_bounded CHECK (yield_kg BETWEEN -1e9 AND 1e9),
    ADD CONSTRAINT milk_production_flow_rate_kg_min_bounded CHECK (flow_rate_kg_min BETWEEN -1e9 AND 1e9),
    ADD CONSTRAINT milk_production_conductivity_ms_bounded CHECK (conductivity_ms BETWEEN -1e9 AND 1e9),
    ADD CONSTRAINT milk_production_temperature_c_bounded CHECK (temperature_c BETWEEN -1e9 AND 1e9),
    ADD CONSTRAINT milk_production_fat_percent_bounded CHECK (fat_percent BETWEEN -1e9 AND 1e9),
    ADD CONSTRAINT milk_production_protein_percent_bounded CHECK (protein_percent BETWEEN -1e9 AND 1e9),
    ADD CONSTRAINT milk_production_lactose_percent_bounded CHECK (lactose_percent BETWEEN -1e9 AND 1e9),
    ADD CONSTRAINT milk_production_mastitis_risk_score_bounded CHECK (mastitis_risk_score BETWEEN -1e9 AND 1e9);

ALTER TABLE iot.rfid_events
    ADD CONSTRAINT rfid_events_rssi_bounded CHECK (rssi BETWEEN -1e9 AND 1e9);
