"""The farm registry (devices, animals, zones, API keys) that Odoo pushes into `iot`, held in memory,
and the owners of device ids the registry does not know.

Validation looks every reading up here, so it must be a dict lookup, not a query. The tables are
small (thousands of rows); the cache reloads them whole when their change counter
(`iot.change_counters`, moved by a trigger on any statement, visible at commit) moves: at once on
the NOTIFY that the trigger sends, and by polling every few seconds should a notification be lost.
A revoked key stops working within a second.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import asyncpg

from .storage import RETRYABLE_ERRORS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Device:
    farm_id: int
    device_type: str
    animal_id: int | None
    zone_id: int | None
    gain: float
    offset: float
    expected_interval_s: int = 300


@dataclass(frozen=True)
class ApiKey:
    id: int
    key_hash: str
    farm_ids: frozenset[int]
    scopes: frozenset[str]
    revoked: bool


@dataclass(frozen=True)
class Registry:
    devices: dict[str, Device] = field(default_factory=dict)
    animals: dict[int, int] = field(default_factory=dict)  # animal id -> farm id
    animal_codes: dict[tuple[int, str], int] = field(default_factory=dict)  # (farm, ear tag) -> animal id
    animal_tags: dict[str, tuple[int, int]] = field(default_factory=dict)  # RFID EPC -> (farm id, animal id)
    animal_names: dict[int, str] = field(default_factory=dict)  # animal id -> ear tag, for alert messages
    calvings: dict[int, float] = field(default_factory=dict)  # animal id -> her last calving (epoch, UTC midnight)
    groups: dict[int, str] = field(default_factory=dict)  # animal id -> her group (pen) on the farm
    zones: dict[int, int] = field(default_factory=dict)  # zone id -> farm id
    api_keys: dict[str, ApiKey] = field(default_factory=dict)  # key prefix -> key


CHANGES_CHANNEL = "iot_changes"  # NOTIFY payload: the counter that moved
_VERSION = "SELECT version FROM iot.change_counters WHERE name = $1"


async def version(conn: asyncpg.Connection, name: str) -> int:
    """The change counter of `name` (registry, alert_rules) as committed now."""
    return await conn.fetchval(_VERSION, name)

API_KEY_COLUMNS = "id, key_prefix, key_hash, farm_ids, scopes, revoked_at IS NOT NULL AS revoked"


def api_key_from_row(row: asyncpg.Record) -> ApiKey:
    return ApiKey(row["id"], row["key_hash"], frozenset(row["farm_ids"]), frozenset(row["scopes"]),
                  row["revoked"])


async def load(conn: asyncpg.Connection) -> Registry:
    """Read the whole registry in one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        devices = await conn.fetch("SELECT device_uid, farm_id, device_type, animal_id, zone_id, calibration_gain, "
                                   "calibration_offset, expected_interval_s FROM iot.devices WHERE active")
        animals = await conn.fetch("SELECT id, farm_id, code, rfid_epc, extract(epoch FROM calving_date)::float8, "
                                   "group_name FROM iot.animals WHERE active")
        zones = await conn.fetch("SELECT id, farm_id FROM iot.zones WHERE active")
        keys = await conn.fetch(f"SELECT {API_KEY_COLUMNS} FROM iot.api_keys")
    return Registry(
        devices={r[0]: Device(*r[1:]) for r in devices},
        animals={r[0]: r[1] for r in animals},
        animal_codes={(r[1], r[2]): r[0] for r in animals},
        animal_tags={r[3].upper(): (r[1], r[0]) for r in animals if r[3]},
        animal_names={r[0]: r[2] for r in animals},
        calvings={r[0]: r[4] for r in animals if r[4] is not None},
        groups={r[0]: r[5] for r in animals if r[5]},
        zones={r[0]: r[1] for r in zones},
        api_keys={r["key_prefix"]: api_key_from_row(r) for r in keys},
    )


class RegistryCache:
    """The current Registry, replaced whole on change (readers never see half an update)."""

    def __init__(self) -> None:
        self.current = Registry()
        self._version: int | None = None
        # One reload at a time: a slower one begun earlier must not replace a newer registry.
        self._lock = asyncio.Lock()

    async def refresh(self, conn: asyncpg.Connection) -> bool:
        """Reload when the registry changed; return whether it did."""
        async with self._lock:
            seen = await version(conn, "registry")
            if seen == self._version:
                return False
            self.current = await load(conn)
            self._version = seen  # read before the load: a change committed in between reloads again
        log.info("registry loaded: %d devices, %d animals, %d zones, %d API keys", len(self.current.devices),
                 len(self.current.animals), len(self.current.zones), len(self.current.api_keys))
        return True

    async def run(self, pool: asyncpg.Pool, interval: float, stop: asyncio.Event, changed: asyncio.Event) -> None:
        """Reload when `changed` is set (a notification) or every `interval` seconds."""
        while not stop.is_set():
            changed.clear()
            try:
                async with pool.acquire() as conn:
                    await self.refresh(conn)
            except RETRYABLE_ERRORS as exc:
                log.warning("registry refresh failed, keeping the last one: %s", exc)
            await first_of(stop, changed, timeout=interval)


async def first_of(*events: asyncio.Event, timeout: float | None) -> None:
    """Wait until one of `events` is set or `timeout` passes (None: no timeout)."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


class ChangeListener:
    """LISTENs on its own connection for the change counters' notifications and sets one event per
    counter; reconnects when the connection is lost (the pollers cover the gap)."""

    def __init__(self, dsn: str, names: tuple[str, ...] = ("registry", "alert_rules")) -> None:
        self.dsn = dsn
        self.events = {name: asyncio.Event() for name in names}

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        event = self.events.get(payload)
        if event is not None:
            event.set()

    async def run(self, stop: asyncio.Event, retry_s: float = 1.0) -> None:
        while not stop.is_set():
            conn = None
            try:
                conn = await asyncpg.connect(self.dsn)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(CHANGES_CHANNEL, self._notified)
                for event in self.events.values():  # anything missed while not listening
                    event.set()
                await first_of(stop, lost, timeout=None)
            except RETRYABLE_ERRORS as exc:
                log.warning("listening for registry changes failed (%s); polling until it is back", exc)
            finally:
                if conn is not None and not conn.is_closed():
                    await conn.close()
            await first_of(stop, timeout=retry_s)


# Claimed ids remembered at once; past this many the memory is cleared and claims are read again.
MAX_REMEMBERED_OWNERS = 100_000

_CLAIM = """
    WITH wanted AS (SELECT * FROM unnest($1::text[], $2::integer[]) AS w(device_uid, farm_id)),
    claimed AS (INSERT INTO iot.device_owners (device_uid, farm_id)
                SELECT device_uid, farm_id FROM wanted ORDER BY device_uid  -- one lock order for all claimers
                ON CONFLICT DO NOTHING RETURNING device_uid, farm_id)
    SELECT device_uid, farm_id FROM claimed
    UNION ALL
    SELECT o.device_uid, o.farm_id FROM iot.device_owners o JOIN wanted USING (device_uid)
"""


class DeviceOwners:
    """The farm of each device id the registry does not know: the first farm to send it."""

    def __init__(self) -> None:
        self.known: dict[str, int] = {}

    async def claim(self, pool: asyncpg.Pool, wanted: dict[str, int]) -> None:
        """Learn the owners of `wanted` ids (id -> the farm sending it), claiming those no farm has."""
        missing = {uid: farm for uid, farm in wanted.items() if uid not in self.known}
        if not missing:
            return
        if len(self.known) + len(missing) > MAX_REMEMBERED_OWNERS:
            self.known = {}
        async with pool.acquire() as conn:
            # A claim racing ours commits while our statement waits, unseen by its snapshot: ask again.
            for _ in range(3):
                ids = sorted(missing)
                rows = await conn.fetch(_CLAIM, ids, [missing[uid] for uid in ids])
                self.known.update(rows)
                missing = {uid: farm for uid, farm in missing.items() if uid not in self.known}
                if not missing:
                    return
