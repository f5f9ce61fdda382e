"""kill -9 of the server in the middle of a load: every acknowledged reading is stored, exactly once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from ingestor import apikeys
from ingestor.loadgen import running_server

BATCHES, SIZE = 60, 500
NO_MQTT = {"SMART_DAIRY_MQTT_ENABLED": "false"}
NOW = datetime.now(UTC).replace(microsecond=0)


def batch(n: int) -> dict:
    return {"readings": [{"device_uid": f"B{n}", "device_type": "collar", "farm_id": 1, "metric_name": "activity_index",
                          "metric_value": float(k % 500), "timestamp": (NOW - timedelta(seconds=k)).isoformat()}
                         for k in range(SIZE)]}


async def post_all(url: str, key: str, batches: list[int], acked: list[int]) -> None:
    """Post batches from 4 clients; stop quietly when the server goes away."""
    queue = list(batches)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, timeout=30) as client:
        async def worker() -> None:
            while queue:
                n = queue.pop(0)
                try:
                    r = await client.post("/api/v1/ingest/sensor/batch", json=batch(n))
                except httpx.TransportError:
                    return  # the server was killed: this batch is not acknowledged
                assert r.status_code == 200 and r.json()["accepted"] == SIZE
                acked.append(n)

        await asyncio.gather(*(worker() for _ in range(4)))


async def test_kill_9_loses_no_acknowledged_reading_and_a_resend_stores_each_once(db: str) -> None:
    conn = await asyncpg.connect(db)
    key = await apikeys.create(conn, [1])
    acked: list[int] = []
    try:
        async with running_server(db, NO_MQTT) as (url, proc):
            load = asyncio.create_task(post_all(url, key, list(range(BATCHES)), acked))
            while len(acked) < 10:  # wait until a fair share is acknowledged, with more in flight
                await asyncio.sleep(0.005)
            proc.kill()
            await proc.wait()
            await load
        assert 10 <= len(acked) < BATCHES
        counts = dict(await conn.fetch("SELECT device_uid, count(*) FROM iot.sensor_data GROUP BY 1"))
        assert all(counts.get(f"B{n}") == SIZE for n in acked), "an acknowledged batch lost rows"
        # The devices re-send everything they were not sure of (here: all of it) to a restarted server.
        async with running_server(db, NO_MQTT) as (url, _):
            again: list[int] = []
            await post_all(url, key, list(range(BATCHES)), again)
        assert sorted(again) == list(range(BATCHES))
        assert await conn.fetchval("SELECT count(*) FROM iot.sensor_data") == BATCHES * SIZE
    finally:
        await conn.close()
