"""`smart-dairy bench`: each ingest path against the machine's ceiling, a raw binary COPY of the
same rows into the same table with the same indexes, measured in the same run just before it."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import msgspec
import pydantic
from tqdm import tqdm

from . import apikeys, storage
from .device_state import DeviceStates
from .registry import Registry
from .simulator import BARN_METRICS, COLLAR_METRICS, Farm, sensor_rows, utc_floor
from .tables import SENSOR_DATA
from .validation import Context, decode_batch, validate_readings
from .writer import Writer

WRITER_TARGET = 0.8  # contract section 6
HTTP_TARGET, HTTP_MIN_RATE = 0.6, 100_000
HTTP_BATCH = 10_000
_READING_KEYS = ("timestamp", "device_uid", "device_type", "farm_id", "metric_name", "metric_value", "metric_unit")


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


def http_bodies(rows: list[tuple], batch: int = HTTP_BATCH) -> list[bytes]:
    """The rows as the JSON batches a farm's scripts would post."""
    c = SENSOR_DATA.columns
    pick = [c.index("time"), *(c.index(k) for k in _READING_KEYS[1:])]
    optional = [(k, c.index(k)) for k in ("animal_id", "zone_id", "battery_level", "signal_strength")]
    bodies = []
    for i in range(0, len(rows), batch):
        readings = []
        for r in rows[i:i + batch]:
            item = dict(zip(_READING_KEYS, (r[j] for j in pick), strict=True))
            item.update((k, r[j]) for k, j in optional if r[j] is not None)
            readings.append(item)
        bodies.append(msgspec.json.encode({"readings": readings}))
    return bodies


@contextlib.asynccontextmanager
async def running_server(dsn: str, env: dict[str, str] | None = None
                         ) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """`smart-dairy serve` in its own process, as deployed; yields (base URL, process) once it is healthy."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SMART_DAIRY_DSN": dsn, "SMART_DAIRY_MAINTENANCE_INTERVAL": "3600", **(env or {})}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ingestor.cli", "serve", "--port", str(port),
                                                env=env, stdout=asyncio.subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(200):  # readiness: the server answers /health once its pool and writers are up
                try:
                    if (await client.get(f"{url}/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.returncode is not None:
                    raise RuntimeError(f"the server exited with {proc.returncode}")
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the server did not become healthy in 10 s")
        yield url, proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def _through_http(dsn: str, bodies: list[bytes], rows: int, *, clients: int) -> tuple[Figure, list[float]]:
    async with _connect(dsn) as conn:
        key = await apikeys.create(conn, [1], name="bench")
    latencies: list[float] = []
    queue = list(reversed(bodies))
    progress = tqdm(total=rows, desc="HTTP batches", unit="row", unit_scale=True, leave=False)
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    async with (running_server(dsn, {"SMART_DAIRY_MQTT_ENABLED": "false"}) as (url, _),
                httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as client):

        async def post() -> None:
            while queue:
                body = queue.pop()
                sent = time.perf_counter()
                response = await client.post("/api/v1/ingest/sensor/batch", content=body)
                latencies.append(time.perf_counter() - sent)
                answer = response.json()
                if response.status_code != 200 or answer["rejected"]:
                    raise RuntimeError(f"HTTP {response.status_code}: {str(answer)[:300]}")
                progress.update(answer["accepted"])

        started = time.perf_counter()
        await asyncio.gather(*(post() for _ in range(clients)))
        seconds = time.perf_counter() - started
    progress.close()
    return Figure(f"HTTP batches of {HTTP_BATCH:,}, {clients} clients, to commit", rows, seconds), latencies


@contextlib.asynccontextmanager
async def _connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


class _PydanticReading(pydantic.BaseModel):
    """The Reading struct as a pydantic v2 model, only to measure the alternative decoder."""

    device_uid: str
    device_type: str
    farm_id: int
    metric_name: str
    metric_value: float
    metric_unit: str | None = None
    timestamp: datetime | float | None = None
    animal_id: int | str | None = None
    zone_id: int | None = None
    battery_level: int | None = None
    signal_strength: int | None = None


class _PydanticBatch(pydantic.BaseModel):
    readings: list[_PydanticReading]


def _decode_figures(bodies: list[bytes], rows: int) -> list[Figure]:
    """In-process cost of turning the HTTP bodies into rows, and of decoding alone with each library."""
    ctx = Context(Registry())
    started = time.perf_counter()
    for body in bodies:
        items, _ = decode_batch(body)
        validate_readings(items, ctx)
    figures = [Figure("decode + validate (msgspec, in process)", rows, time.perf_counter() - started)]
    for label, decode in (("decode only: msgspec", lambda b: decode_batch(b)),
                          ("decode only: pydantic v2", _PydanticBatch.model_validate_json)):
        started = time.perf_counter()
        for body in bodies:
            decode(body)
        figures.append(Figure(label, rows, time.perf_counter() - started))
    return figures


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(dsn: str, migrations: Path, *, rows: int, profile: str | None, batch_rows: int,
              chunk: int, producers: int, http_clients: int = 4) -> list[str]:
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
        bodies = http_bodies(data)
        for figure in _decode_figures(bodies, rows):
            lines.append(figure.line(ceiling))
        async with pool.acquire() as conn:
            await _reset(conn, result.profile)
        http, latencies = await _through_http(dsn, bodies, rows, clients=http_clients)
        stored = await pool.fetchval("SELECT count(*) FROM iot.sensor_data")
        assert stored == rows, f"HTTP: stored {stored} of {rows} rows"
        lines.append(f"{http.line(ceiling)}  request p50 {_percentile(latencies, .5) * 1000:.0f} ms, "
                     f"p99 {_percentile(latencies, .99) * 1000:.0f} ms")
    finally:
        await pool.close()
    ratio = writer.rate / ceiling.rate
    http_ratio = http.rate / ceiling.rate
    lines.append(
        f"summary: writer {ratio:.2f}x raw COPY ({writer.rate:,.0f} rows/s), "
        f"{'meets' if ratio >= WRITER_TARGET else 'MISSES'} {WRITER_TARGET}x; with re-sends "
        f"{dup.rate / ceiling.rate:.2f}x; HTTP {http_ratio:.2f}x ({http.rate:,.0f} readings/s), "
        f"{'meets' if http_ratio >= HTTP_TARGET and http.rate >= HTTP_MIN_RATE else 'MISSES'} "
        f"{HTTP_TARGET}x and {HTTP_MIN_RATE:,}/s; profile {result.profile}")
    return lines
