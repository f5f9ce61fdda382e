"""A database restart in the middle of a stream loses no acknowledged row."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from datetime import timedelta

import asyncpg
import pytest

from ingestor.tables import SENSOR_DATA
from ingestor.writer import Writer

from .factories import NOW, reading


def restart_command() -> list[str] | None:
    """How to restart the server the tests use: $SMART_DAIRY_TEST_PG_RESTART, else Debian's tools as root."""
    if cmd := os.environ.get("SMART_DAIRY_TEST_PG_RESTART"):
        return cmd.split()
    if os.geteuid() != 0 or not shutil.which("pg_lsclusters"):
        return None
    first = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True).stdout.split()
    if len(first) < 2:
        return None
    return ["pg_ctlcluster", "--skip-systemctl-redirect", first[0], first[1], "restart", "-m", "fast"]


async def test_database_restart_mid_stream_loses_no_acknowledged_row(db: str) -> None:
    command = restart_command()
    if command is None:
        pytest.skip("cannot restart PostgreSQL here (not root, no pg_ctlcluster): restart safety NOT tested")
    pool = await asyncpg.create_pool(db, min_size=1, max_size=4)
    writer = Writer(pool, SENSOR_DATA, batch_rows=2000, batch_delay=0.005)
    acked: list[str] = []
    restarted = asyncio.Event()

    async def produce(p: int) -> None:
        for i in range(60):
            uid = f"R{p}-{i}"
            rows = [reading(uid, "activity", float(k), NOW - timedelta(seconds=k)) for k in range(100)]
            result = await writer.write(rows)
            assert result.stored == 100 and not result.rejected
            acked.append(uid)
            if i == 20 and p == 0:
                await asyncio.to_thread(subprocess.run, command, check=True, capture_output=True)
                restarted.set()

    try:
        await asyncio.wait_for(asyncio.gather(*(produce(p) for p in range(4))), timeout=120)
    finally:
        await writer.close()
        await pool.close()
    assert restarted.is_set()
    conn = await asyncpg.connect(db)
    try:
        stored = dict(await conn.fetch("SELECT device_uid, count(*) FROM iot.sensor_data GROUP BY 1"))
    finally:
        await conn.close()
    assert len(acked) == 240
    assert all(stored.get(uid) == 100 for uid in acked), "an acknowledged batch is missing rows"
