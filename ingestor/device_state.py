"""Each device's newest reading, for iot.device_current_status.

Kept in memory from committed batches and upserted once a second in its own transaction: one
statement per device per second instead of per batch, and no row locks shared between the
writer's concurrent batches. The state is derived, not acknowledged data: a crash loses at most
the last second of `last_seen`, which the next readings restore.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import asyncpg

from .storage import RETRYABLE_ERRORS
from .tables import SENSOR_DATA

log = logging.getLogger(__name__)

_TIME, _UID, _TYPE, _FARM, _BATTERY, _SIGNAL = (
    SENSOR_DATA.index(c) for c in ("time", "device_uid", "device_type", "farm_id", "battery_level", "signal_strength"))

_UPSERT = """
    INSERT INTO iot.device_state AS s (device_uid, device_type, farm_id, last_seen, battery_level, signal_strength)
    SELECT * FROM unnest($1::text[], $2::text[], $3::integer[], $4::timestamptz[], $5::smallint[], $6::smallint[])
    ON CONFLICT (device_uid) DO UPDATE SET
        device_type = excluded.device_type,
        farm_id = excluded.farm_id,
        last_seen = excluded.last_seen,
        battery_level = coalesce(excluded.battery_level, s.battery_level),
        signal_strength = coalesce(excluded.signal_strength, s.signal_strength),
        updated_at = now()
    WHERE excluded.last_seen >= s.last_seen
"""


class DeviceStates:
    """Newest reading per device, noted from committed batches, flushed to iot.device_state."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple] = {}

    def note(self, rows: Sequence[tuple]) -> None:
        """Remember the newest row per device of a committed batch (one C-level pass)."""
        newest = {r[_UID]: r for r in rows}  # a device's rows arrive in time order
        latest = self._latest
        for uid, row in newest.items():
            seen = latest.get(uid)
            if seen is None or row[_TIME] >= seen[_TIME]:
                latest[uid] = row

    async def flush(self, conn: asyncpg.Connection) -> int:
        """Upsert what was noted since the last flush; return the number of devices."""
        latest, self._latest = self._latest, {}
        if not latest:
            return 0
        rows = [latest[uid] for uid in sorted(latest)]  # one lock order for every flusher
        try:
            await conn.execute(_UPSERT, [r[_UID] for r in rows], [r[_TYPE] for r in rows],
                               [r[_FARM] for r in rows], [r[_TIME] for r in rows],
                               [r[_BATTERY] for r in rows], [r[_SIGNAL] for r in rows])
        except BaseException:
            for uid, row in latest.items():  # keep them for the next flush
                self._latest.setdefault(uid, row)
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
