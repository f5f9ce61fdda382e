-- Detectors a farmer can believe (issue 14): each cow judged against her own rhythm (the same hours
-- of her previous days) and beyond her group at the same time, milk as kilograms an hour over her
-- last two milkings, lameness as a decline over days, stuck sensors as a device fault. New signals
-- (analytics.py): hour_ratio, hour_zscore, day_ratio, group_ratio, vs_group, day_vs_group; per
-- device unchanged_h; per cow the derived metric yield_kg_per_hour. Thresholds and their sources:
--   oestrus          her 1-hour activity average >= 1.35 x the same hours of her last days, beyond her
--                    group's change at the time, and >= 3 of her typical deviations from her same
--                    hours above them, for 2 hours (a heat lasts 6-24 h; noise an hour or so). Activity rises 1.3-1.6x in weak heats and 2-4x in strong ones (Roelofs
--                    et al. 2005; Lopez et al. 2004 for the spread of expression); milking and feeding
--                    peaks come back at the same hours and are her normal; regrouping, heat or a
--                    ration change move her group with her. One heat is one alert: it resolves when
--                    the rise is over and re-arms 12 h later (a heat lasts 6-24 h, a cycle 18-24 days),
--                    not a fixed 72 h that also hid the next real heat.
--   rumination_drop  her day's rumination <= 0.85 x her last weeks' and her last hours <= 0.75 x her
--                    same hours, both beyond her group's change, for 2 h: a sick cow ruminates 30-50 %
--                    less for a day or more (seed 000 section 3.1; Stangaferro et al. 2016); collars
--                    report 2-hour blocks (Schirmann et al. 2009), whose low hours are no floor; a
--                    ration change or heat lowers the whole group's 10-25 %. No absolute floor: a
--                    2-hour block of a healthy cow goes under 300 min/day.
--   fever            body temperature >= 39.5 degC for 30 min, and >= 1.01 x her same hours beyond her
--                    group's change (about 0.4 degC): in a heat wave the whole herd runs 0.3-0.8 degC
--                    warmer (hyperthermia, a heat-stress alert of the zone, not a fever of each cow).
--   yield_drop       kg an hour over her last two milkings <= 0.85 x her own level beyond her group's,
--                    and 2.5 standard deviations under her own level, at two milkings in a row (10 h):
--                    robots milk at irregular intervals, so a session's kilograms say little alone;
--                    heat lowers a whole group's yield 5-10 %.
--   mastitis_yield   conductivity >= 1.15 x her baseline with kg an hour <= 0.9 x her level beyond
--                    her group's (seed 000 section 3.1: yield down 10-20 %).
--   lameness         her day's activity <= 0.8 x her last weeks' beyond her group's, with her day's
--                    lying (resting minutes) >= 1.05 x beyond her group's, for 12 h: lame cows walk
--                    15-40 % less and lie 10-25 % longer over days (O'Callaghan et al. 2003; Alsaaod et
--                    al. 2012; Thorup et al. 2015). One alert a week at most per cow.
--   anomaly          5 standard deviations from a series' baseline, for climate sensors: a cow's
--                    series have their detectors, judged in context; a flat z-score on her daily
--                    rhythm was noise to the farmer.
--   stuck_sensor     every reading of a device unchanged for 6 h: a climate sensor repeating its last
--                    values has frozen (firmware or a dead probe); real air changes within minutes.
UPDATE iot.alert_rules SET conditions = '[
        {"signal": "vs_group", "metric": "activity_index", "op": ">=", "value": 1.35},
        {"signal": "hour_zscore", "metric": "activity_index", "op": ">=", "value": 3}]',
    combine = 'and', duration_s = 7200, suppression_s = 43200, updated_at = now()
WHERE code = 'oestrus' AND builtin;

UPDATE iot.alert_rules SET conditions = '[
        {"signal": "day_vs_group", "metric": "rumination_minutes", "op": "<=", "value": 0.85},
        {"signal": "vs_group", "metric": "rumination_minutes", "op": "<=", "value": 0.75}]',
    combine = 'and', updated_at = now()
WHERE code = 'rumination_drop' AND builtin;

UPDATE iot.alert_rules SET conditions = '[
        {"signal": "value", "metric": "body_temperature_c", "op": ">=", "value": 39.5},
        {"signal": "vs_group", "metric": "body_temperature_c", "op": ">=", "value": 1.01}]',
    combine = 'and', updated_at = now()
WHERE code = 'fever' AND builtin;

UPDATE iot.alert_rules SET conditions = '[
        {"signal": "vs_group", "metric": "yield_kg_per_hour", "op": "<=", "value": 0.85},
        {"signal": "zscore", "metric": "yield_kg_per_hour", "op": "<=", "value": -2.5}]',
    combine = 'and', duration_s = 36000, updated_at = now()
WHERE code = 'yield_drop' AND builtin;

UPDATE iot.alert_rules SET conditions = '[
        {"signal": "ratio", "metric": "conductivity_ms", "op": ">=", "value": 1.15},
        {"signal": "vs_group", "metric": "yield_kg_per_hour", "op": "<=", "value": 0.9}]',
    updated_at = now()
WHERE code = 'mastitis_yield' AND builtin;

UPDATE iot.alert_rules SET device_type = 'env_sensor', updated_at = now() WHERE code = 'anomaly' AND builtin;

INSERT INTO iot.alert_rules (code, name, device_type, category, severity, combine, conditions, duration_s,
                             suppression_s, max_per_hour, builtin)
VALUES
    ('lameness', 'Lameness (less walking, more lying)', NULL, 'health', 'warning', 'and',
     '[{"signal": "day_vs_group", "metric": "activity_index", "op": "<=", "value": 0.8},
       {"signal": "day_vs_group", "metric": "resting_minutes", "op": ">=", "value": 1.05}]', 43200, 604800, 20, true),
    ('stuck_sensor', 'Sensor stuck (readings unchanged)', NULL, 'device', 'warning', 'and',
     '[{"signal": "unchanged_h", "metric": null, "op": ">=", "value": 6}]', 0, 86400, 50, true)
ON CONFLICT (code) DO NOTHING;
