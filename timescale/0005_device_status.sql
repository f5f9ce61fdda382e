-- Latest known state per device, kept by the writer (one upsert per batch, not per row) because
-- finding each device's newest raw row would scan every metric of every device.
CREATE TABLE iot.device_state (
    device_uid      text PRIMARY KEY,
    device_type     text NOT NULL,
    farm_id         integer NOT NULL,
    last_seen       timestamptz NOT NULL,
    battery_level   smallint,
    signal_strength smallint,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Registry devices that never reported are listed too, as offline. A device is degraded when it
-- missed its expected interval, offline after four (a device missing from the registry is expected every 300 s).
CREATE VIEW iot.device_current_status AS
SELECT coalesce(s.device_uid, d.device_uid) AS device_uid,
       coalesce(s.device_type, d.device_type) AS device_type,
       coalesce(s.farm_id, d.farm_id) AS farm_id,
       d.animal_id,
       d.zone_id,
       s.last_seen,
       s.battery_level,
       s.signal_strength,
       CASE
           WHEN s.last_seen IS NULL THEN 'offline'
           WHEN s.last_seen > now() - make_interval(secs => coalesce(d.expected_interval_s, 300) * 1.5) THEN 'online'
           WHEN s.last_seen > now() - make_interval(secs => coalesce(d.expected_interval_s, 300) * 4) THEN 'degraded'
           ELSE 'offline'
       END AS status
FROM iot.device_state s
FULL JOIN iot.devices d ON d.device_uid = s.device_uid;
