-- The detectors every farm gets (contract section 7). Odoo imports them as editable rules; until
-- Odoo pushes its own, these are what the ingestor judges. Thresholds and their sources:
--   heat_stress      THI >= 72 for 30 min: mild heat stress begins at THI 72 (Armstrong 1994); 30 min
--                    so that one hot reading in the sun does not count.
--   oestrus          activity >= 1.8 x the cow's own baseline for 30 min: activity rises two- to
--                    fourfold during oestrus (seed 000 section 3.1; Roelofs et al. 2005 report 2-4x).
--   fever            body temperature >= 39.5 degC for 30 min: normal 38.0-39.0, fever above 39.5
--                    (seed 000 section 3.1).
--   rumination_drop  rumination <= 0.75 x the cow's baseline for 2 h, or below 300 min/day: a sick cow
--                    ruminates 30-50 % less (seed 000 section 3.1); 450-550 min/day is normal.
--   mastitis         at milking, conductivity >= 1.25 x the cow's baseline, or SCC >= 200,000
--                    cells/ml, or blood: conductivity rises 20-40 % and SCC over 200,000 marks
--                    (sub)clinical mastitis (seed 000 section 3.1).
--   mastitis_yield   conductivity >= 1.15 x baseline together with yield <= 0.9 x baseline: the
--                    weaker signals that agree (seed 000 section 3.1: yield down 10-20 %).
--   yield_drop       yield <= 0.88 x the cow's own baseline at two milkings in a row (11 h apart):
--                    one low session is noise, two are a trend (seed 000 section 3.1).
--   device_offline   no reading for 4 expected intervals: iot.device_current_status calls that offline.
--   low_battery      battery <= 20 %: collars and sensors are serviced at 20 % (seed 003 section 6).
--   weak_signal      signal <= -100 dBm for an hour: below it LoRa and BLE links drop packets.
--   anomaly          any metric 5 standard deviations from its series' rolling baseline.
ALTER TABLE iot.alerts ADD COLUMN resolved_at timestamptz;

INSERT INTO iot.alert_rules (code, name, device_type, category, severity, combine, conditions, duration_s,
                             suppression_s, max_per_hour, builtin)
VALUES
    ('heat_stress', 'Heat stress (THI)', 'env_sensor', 'heat_stress', 'warning', 'and',
     '[{"signal": "thi", "metric": null, "op": ">=", "value": 72}]', 1800, 21600, 20, true),
    ('oestrus', 'Cow in heat (activity rise)', NULL, 'reproduction', 'info', 'and',
     '[{"signal": "ratio", "metric": "activity_index", "op": ">=", "value": 1.8}]', 1800, 259200, 20, true),
    ('fever', 'Fever', NULL, 'health', 'critical', 'and',
     '[{"signal": "value", "metric": "body_temperature_c", "op": ">=", "value": 39.5}]', 1800, 43200, 20, true),
    ('rumination_drop', 'Rumination drop', NULL, 'health', 'warning', 'or',
     '[{"signal": "ratio", "metric": "rumination_minutes", "op": "<=", "value": 0.75},
       {"signal": "value", "metric": "rumination_minutes", "op": "<", "value": 300}]', 7200, 43200, 20, true),
    ('mastitis', 'Mastitis risk', NULL, 'mastitis', 'critical', 'or',
     '[{"signal": "ratio", "metric": "conductivity_ms", "op": ">=", "value": 1.25},
       {"signal": "value", "metric": "somatic_cell_count", "op": ">=", "value": 200000},
       {"signal": "value", "metric": "blood_detected", "op": ">=", "value": 1}]', 0, 86400, 20, true),
    ('mastitis_yield', 'Mastitis risk (conductivity and yield)', NULL, 'mastitis', 'warning', 'and',
     '[{"signal": "ratio", "metric": "conductivity_ms", "op": ">=", "value": 1.15},
       {"signal": "ratio", "metric": "yield_kg", "op": "<=", "value": 0.9}]', 0, 86400, 20, true),
    ('yield_drop', 'Milk yield drop', NULL, 'production', 'warning', 'and',
     '[{"signal": "ratio", "metric": "yield_kg", "op": "<=", "value": 0.88}]', 39600, 86400, 20, true),
    ('device_offline', 'Device offline', NULL, 'device', 'warning', 'and',
     '[{"signal": "missed_intervals", "metric": null, "op": ">=", "value": 4}]', 0, 21600, 50, true),
    ('low_battery', 'Low battery', NULL, 'device', 'info', 'and',
     '[{"signal": "battery", "metric": null, "op": "<=", "value": 20}]', 0, 86400, 50, true),
    ('weak_signal', 'Weak signal', NULL, 'device', 'info', 'and',
     '[{"signal": "signal_strength", "metric": null, "op": "<=", "value": -100}]', 3600, 86400, 50, true),
    ('anomaly', 'Unusual reading', NULL, 'anomaly', 'info', 'or',
     '[{"signal": "zscore", "metric": "*", "op": ">=", "value": 5},
       {"signal": "zscore", "metric": "*", "op": "<=", "value": -5}]', 0, 21600, 10, true)
ON CONFLICT (code) DO NOTHING;
