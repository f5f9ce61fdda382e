"""`smart-dairy bench`: each ingest path against the machine's ceiling, a raw binary COPY of the
same rows into the same table with the same indexes, measured in the same run just before it."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from tqdm import tqdm

from . import storage
from .device_state import DeviceStates
from .simulator import BARN_METRICS, COLLAR_METRICS, Farm, sensor_rows, utc_floor
from .tables import SENSOR_DATA
from .writer import Writer

WRITER_TARGET = 0.8  # contract section 6


@dataclass
class Figure:
    label: str
    rows: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds

    def line(self, ceiling: Figure | None) -> str:
        ratio = "1.00x (ceiling)" if ceiling is None else f"{self.rate / ceiling.rate:.2f}x raw COPY"
        return f"{self.label:<44} {self.rows:>10,} rows {self.seconds:>7.2f} s {self.rate:>10,.0f} rows/s  {ratio}"


def bench_rows(count: int, *, seed: int = 7) -> list[tuple]:
    """`count` readings shaped like a farm: 1,000 collars and 8 barn sensors every 5 seconds."""
    farm = Farm(cows=1000, zones=8)
    series = farm.cows * len(COLLAR_METRICS) + farm.zones * len(BARN_METRICS)
    ticks = math.ceil(count / series)
    start = utc_floor(datetime.now(UTC) - timedelta(seconds=ticks * 5 + 120), 60)
    return sensor_rows(farm, start, ticks, 5.0, seed=seed)[:count]


async def _reset(conn: asyncpg.Connection, profile: str) -> None:
    await conn.execute("TRUNCATE iot.sensor_data, iot.device_state, iot.dead_letters")
    if profile == "postgres":
        await conn.execute("TRUNCATE iot.rollup_invalidations")
    await conn.execute("CHECKPOINT")


async def _raw_copy(conn: asyncpg.Connection, rows: list[tuple]) -> Figure:
    started = time.perf_counter()
    await conn.copy_records_to_table(SENSOR_DATA.name, schema_name="iot", records=rows, columns=SENSOR_DATA.columns)
    return Figure("raw COPY (binary, one statement)", len(rows), time.perf_counter() - started)


async def _through_writer(pool: asyncpg.Pool, chunks: list[list[tuple]], *, label: str, batch_rows: int,
                          producers: int) -> Figure:
    states = DeviceStates()
    stop = asyncio.Event()
    flusher = asyncio.create_task(states.run(pool, 1.0, stop))
    writer = Writer(pool, SENSOR_DATA, batch_rows=batch_rows, batch_delay=0.02,
                    max_pending_rows=batch_rows * 4, on_commit=states.note)
    queue = list(reversed(chunks))
    progress = tqdm(total=sum(map(len, chunks)), desc=label, unit="row", unit_scale=True, leave=False)

    async def produce() -> None:
        while queue:
            chunk = queue.pop()
            await writer.write(chunk)
            progress.update(len(chunk))

    started = time.perf_counter()
    await asyncio.gather(*(produce() for _ in range(producers)))
    seconds = time.perf_counter() - started
    await writer.close()
    stop.set()
    await flusher
    progress.close()
    return Figure(label, sum(map(len, chunks)), seconds)


async def run(dsn: str, migrations: Path, *, rows: int, profile: str | None, batch_rows: int,
              chunk: int, producers: int) -> list[str]:
    """Run the benchmark in a scratch database (dropped and re-made) and return the printed lines."""
    admin = await asyncpg.connect(dsn, database="postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{storage.database_name(dsn)}" WITH (FORCE)')
    finally:
        await admin.close()
    result = await storage.migrate(dsn, migrations, profile)
    data = bench_rows(rows)
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    resent = [c for i, c in enumerate(chunks) for _ in range(2 if i % 100 == 0 else 1)]
    lines = [f"bench: {rows:,} sensor rows, profile {result.profile}, writer batches of {batch_rows:,}, "
             f"{producers} producers submitting {chunk:,} rows each"]
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    try:
        async with pool.acquire() as conn:
            await _reset(conn, result.profile)
            ceiling = await _raw_copy(conn, data)
            lines.append(ceiling.line(None))
        figures = []
        for label, submissions in (("writer (group commit, dedup, device state)", chunks),
                                   ("writer, 1% of submissions re-sent", resent)):
            async with pool.acquire() as conn:
                await _reset(conn, result.profile)
            figures.append(await _through_writer(pool, submissions, label=label, batch_rows=batch_rows,
                                                 producers=producers))
            lines.append(figures[-1].line(ceiling))
            stored = await pool.fetchval("SELECT count(*) FROM iot.sensor_data")
            assert stored == rows, f"{label}: stored {stored} of {rows} rows"
        writer, dup = figures
    finally:
        await pool.close()
    ratio = writer.rate / ceiling.rate
    verdict = "meets" if ratio >= WRITER_TARGET else "MISSES"
    lines.append(f"summary: writer {ratio:.2f}x raw COPY ({writer.rate:,.0f} rows/s), {verdict} the "
                 f"{WRITER_TARGET}x target; with re-sends {dup.rate / ceiling.rate:.2f}x; profile {result.profile}")
    return lines
