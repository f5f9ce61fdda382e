-- Raw time series as TimescaleDB hypertables. Same columns and keys as the postgres profile;
-- see 0002_timeseries.postgres.sql for why each index exists. `migrate` creates the extension
-- before this runs: CREATE EXTENSION timescaledb inside a transaction breaks asyncpg's protocol.

CREATE TABLE iot.sensor_data (
    time            timestamptz NOT NULL,
    device_uid      text NOT NULL,
    device_type     text NOT NULL,
    farm_id         integer NOT NULL,
    metric_name     text NOT NULL,
    metric_value    double precision NOT NULL,
    metric_unit     text,
    data_quality    text NOT NULL DEFAULT 'valid',
    is_interpolated boolean NOT NULL DEFAULT false,
    animal_id       integer,
    zone_id         integer,
    session_id      text,
    battery_level   smallint,
    signal_strength smallint,
    metadata        jsonb NOT NULL DEFAULT '{}'
);
SELECT create_hypertable('iot.sensor_data', by_range('time', INTERVAL '1 day'), create_default_indexes => false);
ALTER TABLE iot.sensor_data ADD CONSTRAINT sensor_data_key UNIQUE (device_uid, metric_name, time);

CREATE TABLE iot.milk_production_realtime (
    time                timestamptz NOT NULL,
    milk_meter_id       text NOT NULL,
    animal_id           integer,
    farm_id             integer NOT NULL,
    session_id          text NOT NULL,
    yield_kg            double precision NOT NULL,
    duration_seconds    integer,
    flow_rate_kg_min    double precision,
    conductivity_ms     double precision,
    temperature_c       double precision,
    blood_detected      boolean NOT NULL DEFAULT false,
    fat_percent         double precision,
    protein_percent     double precision,
    lactose_percent     double precision,
    somatic_cell_count  integer,
    mastitis_risk_score double precision,
    session_start       timestamptz,
    session_end         timestamptz,
    milking_type        text,
    meter_status        text,
    metadata            jsonb NOT NULL DEFAULT '{}'
);
SELECT create_hypertable('iot.milk_production_realtime', by_range('time', INTERVAL '7 days'), create_default_indexes => false);
ALTER TABLE iot.milk_production_realtime ADD CONSTRAINT milk_production_key UNIQUE (session_id, time);
CREATE INDEX milk_production_animal ON iot.milk_production_realtime (animal_id, time);

CREATE TABLE iot.rfid_events (
    time       timestamptz NOT NULL,
    reader_id  text NOT NULL,
    antenna_id integer,
    tag_epc    text NOT NULL,
    animal_id  integer,
    farm_id    integer NOT NULL,
    rssi       double precision,
    direction  text,
    read_count integer NOT NULL DEFAULT 1
);
SELECT create_hypertable('iot.rfid_events', by_range('time', INTERVAL '1 day'), create_default_indexes => false);
ALTER TABLE iot.rfid_events ADD CONSTRAINT rfid_events_key UNIQUE (tag_epc, reader_id, time);

CREATE TABLE iot.alerts (
    time        timestamptz NOT NULL,
    alert_id    text NOT NULL,
    rule_code   text NOT NULL,
    farm_id     integer NOT NULL,
    severity    text NOT NULL,
    category    text NOT NULL,
    source_type text NOT NULL,
    source_id   text NOT NULL,
    animal_id   integer,
    zone_id     integer,
    message     text NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}',
    status      text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'acknowledged', 'resolved')),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
SELECT create_hypertable('iot.alerts', by_range('time', INTERVAL '30 days'), create_default_indexes => false);
ALTER TABLE iot.alerts ADD CONSTRAINT alerts_key UNIQUE (alert_id, time);
CREATE INDEX alerts_updated ON iot.alerts (updated_at);
CREATE INDEX alerts_farm_status ON iot.alerts (farm_id, status, time);

-- Compression after 7 days. Segmenting by device and metric keeps each compressed batch one
-- series, so the latest/range queries decompress only the series they ask for.
ALTER TABLE iot.sensor_data SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_uid, metric_name',
    timescaledb.compress_orderby = 'time DESC'
);
SELECT add_compression_policy('iot.sensor_data', INTERVAL '7 days');
ALTER TABLE iot.milk_production_realtime SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'animal_id',
    timescaledb.compress_orderby = 'time DESC'
);
SELECT add_compression_policy('iot.milk_production_realtime', INTERVAL '7 days');
ALTER TABLE iot.rfid_events SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'reader_id',
    timescaledb.compress_orderby = 'time DESC'
);
SELECT add_compression_policy('iot.rfid_events', INTERVAL '7 days');

-- Retention (contract section 2): raw data 90 days; alerts are kept.
SELECT add_retention_policy('iot.sensor_data', INTERVAL '90 days');
SELECT add_retention_policy('iot.milk_production_realtime', INTERVAL '90 days');
SELECT add_retention_policy('iot.rfid_events', INTERVAL '90 days');
