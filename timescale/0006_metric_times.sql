-- The newest reading time of each metric of a device, kept with the device's state. The latest-
-- reading query starts each metric's index probe at that time, so it opens the one or two newest
-- partitions instead of every partition of the retention window.
ALTER TABLE iot.device_state ADD COLUMN metric_times jsonb NOT NULL DEFAULT '{}';
