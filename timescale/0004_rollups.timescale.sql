-- Rollups as continuous aggregates with real-time aggregation (materialized_only = false), so a
-- query includes readings not yet materialized, as on the postgres profile. Same columns, same
-- order. Refresh windows start at raw retention: a refresh never reaches buckets whose raw rows
-- retention has dropped, which would erase them. Policies are run by the maintenance loop too:
-- see ingestor/maintenance.py for why.

CREATE MATERIALIZED VIEW iot.sensor_data_15min
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket('15 minutes', time) AS bucket, device_uid, device_type, farm_id, metric_name,
       avg(metric_value) AS avg_value, min(metric_value) AS min_value, max(metric_value) AS max_value,
       stddev(metric_value) AS stddev_value, count(*) AS sample_count
FROM iot.sensor_data
GROUP BY 1, 2, 3, 4, 5
WITH NO DATA;

CREATE MATERIALIZED VIEW iot.sensor_data_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket('1 hour', time) AS bucket, device_uid, device_type, farm_id, metric_name,
       avg(metric_value) AS avg_value, min(metric_value) AS min_value, max(metric_value) AS max_value,
       stddev(metric_value) AS stddev_value, count(*) AS sample_count,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY metric_value) AS median_value,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY metric_value) AS p95_value,
       count(*) FILTER (WHERE data_quality = 'valid') AS valid_count
FROM iot.sensor_data
GROUP BY 1, 2, 3, 4, 5
WITH NO DATA;

CREATE MATERIALIZED VIEW iot.sensor_data_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket('1 day', time) AS bucket, device_uid, device_type, farm_id, metric_name,
       avg(metric_value) AS avg_value, min(metric_value) AS min_value, max(metric_value) AS max_value,
       stddev(metric_value) AS stddev_value, count(*) AS sample_count,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY metric_value) AS median_value,
       count(*) FILTER (WHERE data_quality <> 'valid') AS error_count
FROM iot.sensor_data
GROUP BY 1, 2, 3, 4, 5
WITH NO DATA;

CREATE MATERIALIZED VIEW iot.milk_production_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket('1 day', time) AS bucket, animal_id, farm_id,
       sum(yield_kg) AS total_yield_kg, avg(yield_kg) AS avg_yield_per_session, count(*) AS milking_count,
       avg(conductivity_ms) AS avg_conductivity, avg(somatic_cell_count) AS avg_scc,
       max(mastitis_risk_score) AS max_mastitis_risk, avg(fat_percent) AS avg_fat,
       avg(protein_percent) AS avg_protein
FROM iot.milk_production_realtime
GROUP BY 1, 2, 3
WITH NO DATA;

-- Same query indexes as the postgres profile's materialized tables.
CREATE INDEX ON iot.sensor_data_15min (device_uid, metric_name, bucket);
CREATE INDEX ON iot.sensor_data_15min (farm_id, bucket);
CREATE INDEX ON iot.sensor_data_hourly (device_uid, metric_name, bucket);
CREATE INDEX ON iot.sensor_data_hourly (farm_id, bucket);
CREATE INDEX ON iot.sensor_data_daily (device_uid, metric_name, bucket);
CREATE INDEX ON iot.sensor_data_daily (farm_id, bucket);
CREATE INDEX ON iot.milk_production_daily (animal_id, bucket);
CREATE INDEX ON iot.milk_production_daily (farm_id, bucket);

SELECT add_continuous_aggregate_policy('iot.sensor_data_15min',
    start_offset => INTERVAL '90 days', end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute');
SELECT add_continuous_aggregate_policy('iot.sensor_data_hourly',
    start_offset => INTERVAL '90 days', end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '5 minutes');
SELECT add_continuous_aggregate_policy('iot.sensor_data_daily',
    start_offset => INTERVAL '90 days', end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '15 minutes');
SELECT add_continuous_aggregate_policy('iot.milk_production_daily',
    start_offset => INTERVAL '90 days', end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '15 minutes');

SELECT add_retention_policy('iot.sensor_data_15min', INTERVAL '180 days');
SELECT add_retention_policy('iot.sensor_data_hourly', INTERVAL '365 days');
