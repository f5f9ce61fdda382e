"""Floods against `smart-dairy serve` in its own process: whatever HTTP clients send, the ingestor's
peak resident memory (VmHWM, read from /proc) stays under contract section 6's 500 MB."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from ingestor import apikeys
from ingestor.loadgen import peak_rss_mb, running_server

LIMIT_MB = 500
NO_MQTT = {"SMART_DAIRY_MQTT_ENABLED": "false"}
CLIENTS = 8
NOW = datetime.now(UTC).replace(microsecond=0)


def heavy_batch(n: int = 10_000) -> bytes:
    """A valid batch of `n` readings, each with nearly as much metadata as a reading may carry
    (validation.MAX_METADATA_BYTES): ~11 MB, about the largest valid batch."""
    note = "x" * 990
    return json.dumps({"readings": [
        {"device_uid": f"FLOOD-{i % 500}", "device_type": "collar", "farm_id": 1, "metric_name": "activity_index",
         "metric_value": float(i % 700), "timestamp": (NOW - timedelta(seconds=i // 500)).isoformat(),
         "metadata": {"note": note, "i": i}} for i in range(n)]}).encode()


async def flood(url: str, key: str, body: bytes, rounds: int) -> dict[int, int]:
    """CLIENTS clients each posting `body` until it was answered `rounds` times other than 503 (after a
    503 they come back after Retry-After, as told); counts of every answer."""
    statuses: dict[int, int] = {}
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        async def one() -> None:
            answered = 0
            while answered < rounds:
                r = await client.post("/api/v1/ingest/sensor/batch", content=body)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 503:
                    await asyncio.sleep(float(r.headers["Retry-After"]))
                else:
                    answered += 1
        await asyncio.gather(*(one() for _ in range(CLIENTS)))
    return statuses


async def test_eight_clients_reposting_11_mb_valid_batches_keep_memory_flat(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        key = await apikeys.create(conn, [1])
        body = heavy_batch()
        async with running_server(db, NO_MQTT) as (url, proc):
            statuses = await flood(url, key, body, rounds=3)
            peak = peak_rss_mb(proc.pid)
        stored = await conn.fetchval("SELECT count(*) FROM iot.sensor_data")
    finally:
        await conn.close()
    print(f"{CLIENTS} clients x 3 valid batches of {len(body) / 1e6:.1f} MB: answers {statuses}, "
          f"{stored:,} rows stored, peak RSS {peak:.0f} MB")
    assert peak < LIMIT_MB, f"peak RSS {peak:.0f} MB"
    assert set(statuses) <= {200, 503} and statuses[200] == CLIENTS * 3
    assert stored == 10_000  # re-posts are duplicates


async def test_eight_clients_posting_15_mb_bodies_with_an_invalid_key_cost_nothing(db: str) -> None:
    body = b'{"readings": [' + b",".join([b'{"device_uid": "X", "metric_value": 1.0}'] * 380_000) + b"]}"
    async with running_server(db, NO_MQTT) as (url, proc):
        before = peak_rss_mb(proc.pid)
        statuses = await flood(url, "sdk_00000000_forged", body, rounds=5)
        peak = peak_rss_mb(proc.pid)
    print(f"{CLIENTS} clients x 5 bodies of {len(body) / 1e6:.1f} MB with an invalid key: answers {statuses}, "
          f"peak RSS {before:.0f} MB before, {peak:.0f} MB after")
    assert statuses == {401: CLIENTS * 5}
    assert peak < LIMIT_MB and peak - before < 50, f"peak RSS {peak:.0f} MB"
    conn = await asyncpg.connect(db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM iot.dead_letters") == 0
    finally:
        await conn.close()
