"""Rollups equal a direct GROUP BY over the raw rows, however and whenever the rows were written."""

from __future__ import annotations

import asyncio
import itertools
import math
from datetime import timedelta

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestor import maintenance
from ingestor.tables import SENSOR_DATA
from ingestor.writer import Writer

from .conftest import clone, drop_database, dsn_for, template_for
from .factories import NOW, reading

ORIGIN = "timestamptz '2000-01-03 00:00:00+00'"
DIRECT = {
    "sensor_data_15min": f"""
        SELECT date_bin('15 minutes', time, {ORIGIN}), device_uid, device_type, farm_id, metric_name,
               avg(metric_value), min(metric_value), max(metric_value), stddev(metric_value), count(*)
        FROM iot.sensor_data WHERE device_uid LIKE $1 GROUP BY 1, 2, 3, 4, 5""",
    "sensor_data_hourly": f"""
        SELECT date_bin('1 hour', time, {ORIGIN}), device_uid, device_type, farm_id, metric_name,
               avg(metric_value), min(metric_value), max(metric_value), stddev(metric_value), count(*),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY metric_value),
               percentile_cont(0.95) WITHIN GROUP (ORDER BY metric_value),
               count(*) FILTER (WHERE data_quality = 'valid')
        FROM iot.sensor_data WHERE device_uid LIKE $1 GROUP BY 1, 2, 3, 4, 5""",
    "sensor_data_daily": f"""
        SELECT date_bin('1 day', time, {ORIGIN}), device_uid, device_type, farm_id, metric_name,
               avg(metric_value), min(metric_value), max(metric_value), stddev(metric_value), count(*),
               percentile_cont(0.5) WITHIN GROUP (ORDER BY metric_value),
               count(*) FILTER (WHERE data_quality <> 'valid')
        FROM iot.sensor_data WHERE device_uid LIKE $1 GROUP BY 1, 2, 3, 4, 5""",
}


def same(a: list, b: list) -> bool:
    def close(x: object, y: object) -> bool:
        if isinstance(x, float) and isinstance(y, float):
            return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)
        return x == y
    return len(a) == len(b) and all(len(r) == len(s) and all(map(close, r, s)) for r, s in zip(a, b, strict=False))


async def assert_rollups_match(conn: asyncpg.Connection, prefix: str) -> None:
    for view, direct in DIRECT.items():
        expected = sorted(tuple(r) for r in await conn.fetch(direct, prefix + "%"))
        got = sorted(tuple(r) for r in await conn.fetch(f"SELECT * FROM iot.{view} WHERE device_uid LIKE $1",
                                                         prefix + "%"))
        assert same(got, expected), f"{view}: {len(got)} rows vs {len(expected)} expected"


# A step: rows (device, metric, minutes ago, value, valid?), how they are written, then maybe a refresh.
row = st.tuples(st.integers(0, 2), st.sampled_from(["activity", "temperature_c"]),
                st.integers(0, 3 * 24 * 60), st.floats(-40, 900, allow_nan=False), st.booleans())
step = st.tuples(st.lists(row, min_size=1, max_size=40), st.sampled_from(["writer", "insert", "delete", "update"]),
                 st.booleans())
_example = itertools.count()


@pytest.fixture
def sync_db(profile: str):
    name = asyncio.run(_clone(profile))
    yield dsn_for(name)
    asyncio.run(drop_database(name))


async def _clone(profile: str) -> str:
    return await clone(await template_for(profile))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=6))
def test_rollups_equal_group_by_after_random_writes(sync_db: str, steps: list) -> None:
    asyncio.run(_apply_steps(sync_db, steps, f"E{next(_example)}-"))


async def _apply_steps(dsn: str, steps: list, prefix: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    writer = Writer(pool, SENSOR_DATA, batch_rows=1000, batch_delay=0.001)
    try:
        async with pool.acquire() as conn:
            for rows, how, refresh in steps:
                data = [reading(f"{prefix}{d}", m, v, NOW - timedelta(minutes=ago),
                                quality="valid" if ok else "suspect") for d, m, ago, v, ok in rows]
                if how == "writer":
                    await writer.write(data)
                elif how == "insert":  # a farm script with psql: plain SQL, duplicates ignored
                    await conn.executemany(
                        "INSERT INTO iot.sensor_data (time, device_uid, device_type, farm_id, metric_name, "
                        "metric_value, data_quality) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                        [(r[0], r[1], r[2], r[3], r[4], r[5], r[7]) for r in data])
                elif how == "delete":
                    await conn.execute("DELETE FROM iot.sensor_data WHERE device_uid = $1 AND time >= $2",
                                       data[0][1], data[0][0])
                else:
                    await conn.execute("UPDATE iot.sensor_data SET metric_value = metric_value + 1 "
                                       "WHERE device_uid = $1 AND time <= $2", data[0][1], data[0][0])
                # Rows newer than the watermark are aggregated at query time; late rows (below it)
                # are picked up by the next refresh, as with TimescaleDB's invalidation log.
                if refresh:
                    await maintenance.run_once(conn)
                    await assert_rollups_match(conn, prefix)
            await maintenance.run_once(conn)
            await assert_rollups_match(conn, prefix)
    finally:
        await writer.close()
        await pool.close()


async def test_late_rows_refresh_only_their_buckets(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        writer_rows = [reading("LATE", "activity", float(i), NOW - timedelta(hours=30, minutes=i)) for i in range(60)]
        await conn.copy_records_to_table("sensor_data", schema_name="iot", records=writer_rows,
                                         columns=SENSOR_DATA.columns)
        await maintenance.run_once(conn)
        # Nothing new: no bucket recomputed.
        idle = await conn.fetchrow("SELECT * FROM iot.refresh_rollup('sensor_data_hourly')")
        assert idle["ranges"] == 0 and idle["buckets_written"] == 0
        # One late row, 29 hours back: one hourly bucket recomputed, not the day.
        await conn.execute("INSERT INTO iot.sensor_data (time, device_uid, device_type, farm_id, metric_name, "
                           "metric_value) VALUES ($1, 'LATE', 'collar', 1, 'activity', 1000)",
                           NOW - timedelta(hours=29, minutes=30))
        late = await conn.fetchrow("SELECT * FROM iot.refresh_rollup('sensor_data_hourly')")
        assert late["ranges"] == 1 and late["buckets_written"] == 1
        await maintenance.run_once(conn)
        await assert_rollups_match(conn, "LATE")
    finally:
        await conn.close()


async def test_retention_drops_only_partitions_past_the_window(db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        inside = [reading("RET", "activity", 1.0, NOW - timedelta(days=d)) for d in (89, 45, 1)]
        await conn.copy_records_to_table("sensor_data", schema_name="iot", records=inside, columns=SENSOR_DATA.columns)
        assert await conn.fetchval("SELECT iot.drop_expired_partitions(now())") == 0
        assert await conn.fetchval("SELECT count(*) FROM iot.sensor_data") == 3
        # Two days later the 89-day-old row is past 90 days with all its partition: dropped, alone.
        dropped = await conn.fetchval("SELECT iot.drop_expired_partitions(now() + interval '2 days')")
        assert dropped >= 1
        left = await conn.fetch("SELECT time FROM iot.sensor_data ORDER BY time")
        assert [r["time"] for r in left] == [NOW - timedelta(days=45), NOW - timedelta(days=1)]
        # Partitions still cover the window and a week ahead after ensure_partitions.
        await conn.fetchval("SELECT iot.ensure_partitions(now() + interval '2 days')")
        for days in (-85, 0, 8):
            await conn.execute("INSERT INTO iot.sensor_data (time, device_uid, device_type, farm_id, metric_name, "
                               "metric_value) VALUES (now() + make_interval(days => $1), 'RET2', 'collar', 1, 'a', 1)",
                               days)
    finally:
        await conn.close()
