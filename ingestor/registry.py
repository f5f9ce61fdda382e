"""The farm registry (devices, animals, zones, API keys) that Odoo pushes into `iot`, held in memory.

Validation looks every reading up here, so it must be a dict lookup, not a query. The tables are
small (thousands of rows); the cache reloads them whole when their fingerprint (row counts and
newest `updated_at`) changes, checked every few seconds: an edit in Odoo applies without a restart.
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
    animal_tags: dict[str, int] = field(default_factory=dict)  # RFID EPC -> animal id
    animal_names: dict[int, str] = field(default_factory=dict)  # animal id -> ear tag, for alert messages
    zones: dict[int, int] = field(default_factory=dict)  # zone id -> farm id
    api_keys: dict[str, ApiKey] = field(default_factory=dict)  # key prefix -> key


_FINGERPRINT = """
    SELECT (SELECT (count(*), max(updated_at))::text FROM iot.devices)
        || (SELECT (count(*), max(updated_at))::text FROM iot.animals)
        || (SELECT (count(*), max(updated_at))::text FROM iot.zones)
        || (SELECT (count(*), max(updated_at))::text FROM iot.api_keys)
"""

API_KEY_COLUMNS = "id, key_prefix, key_hash, farm_ids, scopes, revoked_at IS NOT NULL AS revoked"


def api_key_from_row(row: asyncpg.Record) -> ApiKey:
    return ApiKey(row["id"], row["key_hash"], frozenset(row["farm_ids"]), frozenset(row["scopes"]),
                  row["revoked"])


async def load(conn: asyncpg.Connection) -> Registry:
    """Read the whole registry in one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        devices = await conn.fetch("SELECT device_uid, farm_id, device_type, animal_id, zone_id, calibration_gain, "
                                   "calibration_offset, expected_interval_s FROM iot.devices WHERE active")
        animals = await conn.fetch("SELECT id, farm_id, code, rfid_epc FROM iot.animals WHERE active")
        zones = await conn.fetch("SELECT id, farm_id FROM iot.zones WHERE active")
        keys = await conn.fetch(f"SELECT {API_KEY_COLUMNS} FROM iot.api_keys")
    return Registry(
        devices={r[0]: Device(*r[1:]) for r in devices},
        animals={r[0]: r[1] for r in animals},
        animal_codes={(r[1], r[2]): r[0] for r in animals},
        animal_tags={r[3]: r[0] for r in animals if r[3]},
        animal_names={r[0]: r[2] for r in animals},
        zones={r[0]: r[1] for r in zones},
        api_keys={r["key_prefix"]: api_key_from_row(r) for r in keys},
    )


class RegistryCache:
    """The current Registry, replaced whole on change (readers never see half an update)."""

    def __init__(self) -> None:
        self.current = Registry()
        self._fingerprint: str | None = None

    async def refresh(self, conn: asyncpg.Connection) -> bool:
        """Reload when the registry changed; return whether it did."""
        fingerprint = await conn.fetchval(_FINGERPRINT)
        if fingerprint == self._fingerprint:
            return False
        self.current = await load(conn)
        self._fingerprint = fingerprint
        log.info("registry loaded: %d devices, %d animals, %d zones, %d API keys", len(self.current.devices),
                 len(self.current.animals), len(self.current.zones), len(self.current.api_keys))
        return True

    async def run(self, pool: asyncpg.Pool, interval: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with pool.acquire() as conn:
                    await self.refresh(conn)
            except RETRYABLE_ERRORS as exc:
                log.warning("registry refresh failed, keeping the last one: %s", exc)
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except TimeoutError:
                pass
