"""Each device's newest reading, for iot.device_current_status, and each metric's newest time, for
the latest-reading query.

Kept in memory from committed batches and upserted once a second in its own transaction: one
statement per device per second instead of per batch, and no row locks shared between the
writer's concurrent batches. The state is derived, not acknowledged data: a crash loses at most
the last second of `last_seen`, which the next readings restore.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from datetime import datetime
from operator import itemgetter

import asyncpg

from .storage import RETRYABLE_ERRORS
from .tables import SENSOR_DATA

log = logging.getLogger(__name__)

_TIME, _UID, _TYPE, _FARM, _METRIC, _BATTERY, _SIGNAL = (
    SENSOR_DATA.index(c) for c in ("time", "device_uid", "device_type", "farm_id", "metric_name", "battery_level",
                                   "signal_strength"))

_uid_of, _series_of, _time_of = itemgetter(_UID), itemgetter(_UID, _METRIC), itemgetter(_TIME)

# A late batch still advances the metric times it carries; battery and signal come from the newest row.
_UPSERT = """
    INSERT INTO iot.device_state AS s (device_uid, device_type, farm_id, last_seen, battery_level, signal_strength,
                                       metric_times)
    SELECT * FROM unnest($1::text[], $2::text[], $3::integer[], $4::timestamptz[], $5::smallint[], $6::smallint[],
                         $7::jsonb[])
    ON CONFLICT (device_uid) DO UPDATE SET
        device_type = excluded.device_type,
        farm_id = excluded.farm_id,
        last_seen = greatest(s.last_seen, excluded.last_seen),
        battery_level = CASE WHEN excluded.last_seen >= s.last_seen
                             THEN coalesce(excluded.battery_level, s.battery_level) ELSE s.battery_level END,
        signal_strength = CASE WHEN excluded.last_seen >= s.last_seen
                               THEN coalesce(excluded.signal_strength, s.signal_strength) ELSE s.signal_strength END,
        metric_times = s.metric_times || (
            SELECT coalesce(jsonb_object_agg(k, v), '{}') FROM jsonb_each_text(excluded.metric_times) AS e(k, v)
            WHERE s.metric_times->>k IS NULL OR (s.metric_times->>k)::timestamptz < v::timestamptz),
        updated_at = now()
"""


class DeviceStates:
    """Newest reading per device and newest time per metric, noted from committed batches, flushed to
    iot.device_state."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple] = {}
        self._metric_times: dict[tuple[str, str], datetime] = {}

    def note(self, rows: Sequence[tuple]) -> None:
        """Remember the newest row per device and time per metric of a committed batch."""
        # Built by C-level map/zip passes: this runs on every committed batch, in the writer's process.
        newest = dict(zip(map(_uid_of, rows), rows, strict=True))  # a device's rows arrive in time order: last wins
        latest = self._latest
        for uid, row in newest.items():
            seen = latest.get(uid)
            if seen is None or row[_TIME] >= seen[_TIME]:
                latest[uid] = row
        # Each metric's time is used as a lower bound (where the latest query starts looking), so a
        # late batch may lower it until the next batch: no per-metric comparison needed here; the
        # flush keeps the newest time in the table.
        self._metric_times.update(zip(map(_series_of, rows), map(_time_of, rows), strict=True))

    async def flush(self, conn: asyncpg.Connection) -> int:
        """Upsert what was noted since the last flush; return the number of devices."""
        latest, self._latest = self._latest, {}
        times, self._metric_times = self._metric_times, {}
        if not latest:
            return 0
        per_device: dict[str, dict[str, str]] = {}
        for (uid, metric), t in times.items():
            per_device.setdefault(uid, {})[metric] = t.isoformat()
        rows = [latest[uid] for uid in sorted(latest)]  # one lock order for every flusher
        try:
            await conn.execute(_UPSERT, [r[_UID] for r in rows], [r[_TYPE] for r in rows],
                               [r[_FARM] for r in rows], [r[_TIME] for r in rows],
                               [r[_BATTERY] for r in rows], [r[_SIGNAL] for r in rows],
                               [json.dumps(per_device.get(r[_UID], {})) for r in rows])
        except BaseException:
            for uid, row in latest.items():  # keep them for the next flush
                self._latest.setdefault(uid, row)
            for key, t in times.items():
                self._metric_times.setdefault(key, t)
            raise
        return len(rows)

    async def run(self, pool: asyncpg.Pool, interval: float = 1.0, stop: asyncio.Event | None = None) -> None:
        """Flush every `interval` seconds until `stop` is set, then once more."""
        stop = stop or asyncio.Event()
        while True:
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass
            try:
                async with pool.acquire() as conn:
                    await self.flush(conn)
            except RETRYABLE_ERRORS as exc:
                log.warning("device state flush failed, will retry: %s", exc)
            if stop.is_set():
                return
