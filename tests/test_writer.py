"""The bulk writer against the real PostgreSQL: durability, dedup, bad rows, backpressure, restarts."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from ingestor.device_state import DeviceStates
from ingestor.metrics import build_metrics
from ingestor.tables import SENSOR_DATA
from ingestor.writer import Writer

from .factories import NOW, reading, readings


async def count(pool: asyncpg.Pool, sql: str = "SELECT count(*) FROM iot.sensor_data") -> int:
    return await pool.fetchval(sql)


async def test_rows_are_committed_before_the_caller_returns(pool: asyncpg.Pool, profile: str) -> None:
    writer = Writer(pool, SENSOR_DATA, batch_rows=1000, batch_delay=0.01)
    result = await writer.write(readings(2500))
    assert result.stored == 2500 and result.rejected == []
    # Another connection sees them at once: committed, not just sent.
    assert await count(pool) == 2500
    await writer.close()


async def test_concurrent_callers_share_batches(pool: asyncpg.Pool) -> None:
    metrics = build_metrics()
    writer = Writer(pool, SENSOR_DATA, batch_rows=5000, batch_delay=0.05, metrics=metrics)
    chunks = [readings(100, start=NOW - timedelta(hours=1, minutes=i)) for i in range(40)]
    chunks = [[(r[0], f"{r[1]}-{i}", *r[2:]) for r in chunk] for i, chunk in enumerate(chunks)]
    results = await asyncio.gather(*(writer.write(c) for c in chunks))
    assert sum(r.stored for r in results) == 4000
    assert await count(pool) == 4000
    batches = metrics.registry.get_sample_value("smart_dairy_batch_rows_count", {"table": "sensor_data"})
    assert batches < 40  # grouped, not one commit per caller
    await writer.close()


async def test_duplicates_are_stored_once(pool: asyncpg.Pool, profile: str) -> None:
    metrics = build_metrics()
    writer = Writer(pool, SENSOR_DATA, batch_rows=10_000, batch_delay=0.01, metrics=metrics)
    rows = readings(1000)
    await writer.write(rows)
    # Re-sent whole, re-sent in part with new rows, and duplicated inside one batch.
    again = await writer.write(rows[500:] + readings(10, start=NOW - timedelta(minutes=1), devices=1))
    assert again.stored == 510 and again.rejected == []
    await writer.write([reading("X", at=NOW - timedelta(seconds=5))] * 3)
    assert await count(pool) == 1000 + 10 + 1
    assert metrics.registry.get_sample_value("smart_dairy_dedup_fallbacks_total", {"table": "sensor_data"}) >= 2
    await writer.close()


async def test_an_unstorable_row_is_dead_lettered_and_its_neighbours_stored(pool: asyncpg.Pool, profile: str) -> None:
    writer = Writer(pool, SENSOR_DATA, batch_rows=10_000, batch_delay=0.01)
    rows = readings(1000)
    rows[137] = reading("OLD", at=NOW - timedelta(days=400))          # outside every partition / chunk window
    rows[600] = reading("BIG", battery=70000)                            # smallint overflow
    rows[601] = (*reading("NUL")[:4], None, *reading("NUL")[5:])         # metric_name NOT NULL
    result = await writer.write(rows, channel="mqtt", source="dairy/farm/1/test")
    rejected = dict(result.rejected)
    if profile == "timescale":
        rejected.setdefault(137, "hypertables accept any time")  # no partition bound to violate there
    assert sorted(rejected) == [137, 600, 601]
    assert result.stored == 1000 - len(result.rejected)
    assert await count(pool) == result.stored
    letters = await pool.fetch("SELECT channel, topic_or_path, payload, errors FROM iot.dead_letters ORDER BY id")
    assert len(letters) == len(result.rejected)
    assert {r["channel"] for r in letters} == {"mqtt"}
    assert {r["topic_or_path"] for r in letters} == {"dairy/farm/1/test"}
    errors = " ".join(json.loads(r["errors"])[0]["error"] for r in letters)
    assert "int16 range" in errors or "smallint" in errors
    assert "metric_name" in errors or "null" in errors.lower()
    assert {json.loads(r["payload"])["device_uid"] for r in letters} <= {"OLD", "BIG", "NUL"}
    await writer.close()


async def test_backpressure_bounds_pending_rows(pool: asyncpg.Pool) -> None:
    writer = Writer(pool, SENSOR_DATA, batch_rows=500, batch_delay=0.001, max_pending_rows=1000)
    seen: list[int] = []

    async def produce(i: int) -> None:
        await writer.write([(r[0], f"{r[1]}-{i}", *r[2:]) for r in readings(400)])
        seen.append(writer.pending_rows)

    await asyncio.gather(*(produce(i) for i in range(20)))
    assert max(seen) <= 1000
    assert await count(pool) == 8000
    await writer.close()


async def test_device_state_keeps_the_newest_reading(pool: asyncpg.Pool) -> None:
    now = datetime.now(UTC).replace(microsecond=0)  # the status is judged against now(): not the suite's start
    states = DeviceStates()
    writer = Writer(pool, SENSOR_DATA, batch_rows=100, batch_delay=0.001, on_commit=states.note)
    await writer.write([reading("D1", at=now - timedelta(minutes=1), battery=50), reading("D2")])
    async with pool.acquire() as conn:
        assert await states.flush(conn) == 2
    await writer.write([reading("D1", at=now - timedelta(minutes=10), battery=99, metric="x")])  # late row
    async with pool.acquire() as conn:
        assert await states.flush(conn) == 1
        assert await states.flush(conn) == 0
    row = await pool.fetchrow("SELECT * FROM iot.device_current_status WHERE device_uid = 'D1'")
    assert row["last_seen"] == now - timedelta(minutes=1) and row["battery_level"] == 50
    assert row["status"] == "online"
    # The late row's metric is still recorded, with its own time; the newer metric keeps its time.
    times = json.loads(await pool.fetchval("SELECT metric_times FROM iot.device_state WHERE device_uid = 'D1'"))
    assert {k: datetime.fromisoformat(v) for k, v in times.items()} == {
        "activity": now - timedelta(minutes=1), "x": now - timedelta(minutes=10)}
    await writer.close()


async def test_closed_writer_refuses_rows(pool: asyncpg.Pool) -> None:
    writer = Writer(pool, SENSOR_DATA)
    await writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        await writer.write(readings(1))
