"""API keys: `sdk_<prefix>_<secret>`, stored as the SHA-256 of the whole key, scoped to farms.

A key is 190 random bits, so a fast hash is as safe as a slow one (nothing to brute-force, unlike a
password) and costs nothing per request. The prefix is stored in clear to find the row.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import asyncpg

from .registry import API_KEY_COLUMNS, ApiKey, RegistryCache, api_key_from_row

SCOPES = ("read", "write")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def prefix_of(key: str) -> str | None:
    parts = key.split("_", 2)  # the secret itself may hold "_"
    return parts[1] if len(parts) == 3 and parts[0] == "sdk" and parts[1] else None


async def create(conn: asyncpg.Connection, farm_ids: list[int], *, read_only: bool = False, name: str = "") -> str:
    """Store a new key and return it: the only time it is ever seen in clear."""
    if not farm_ids:
        raise ValueError("a key needs at least one farm")
    prefix = secrets.token_hex(4)
    key = f"sdk_{prefix}_{secrets.token_urlsafe(24)}"
    scopes = ["read"] if read_only else list(SCOPES)
    await conn.execute("INSERT INTO iot.api_keys (name, key_prefix, key_hash, farm_ids, scopes) "
                       "VALUES ($1, $2, $3, $4, $5)", name, prefix, hash_key(key), farm_ids, scopes)
    return key


async def authenticate(key: str, cache: RegistryCache, pool: asyncpg.Pool) -> ApiKey | None:
    """The key's record when `key` is valid and not revoked, else None.

    Keys are looked up in the registry cache; a key created since its last refresh is read from
    the database (one indexed query) so a new key works at once.
    """
    prefix = prefix_of(key)
    if prefix is None:
        return None
    record = cache.current.api_keys.get(prefix)
    if record is None:
        async with pool.acquire() as conn:
            row = await conn.fetchrow(f"SELECT {API_KEY_COLUMNS} FROM iot.api_keys WHERE key_prefix = $1", prefix)
        if row is None:
            return None
        record = api_key_from_row(row)
    if record.revoked or not hmac.compare_digest(record.key_hash, hash_key(key)):
        return None
    return record
