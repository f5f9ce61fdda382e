"""Fixtures: every test gets its own scratch database on the real PostgreSQL server.

A template database per storage profile is migrated once per run; each test clones it (a file
copy, far faster than migrating) and drops its clone afterwards.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
import uvicorn

from ingestor import alerts, apikeys, storage
from ingestor.alerts import Rule
from ingestor.api import create_app
from ingestor.config import Settings
from ingestor.loadgen import Broker
from ingestor.mqtt import Subscriber
from ingestor.pipeline import Pipeline

ADMIN_DSN = os.environ.get("SMART_DAIRY_TEST_ADMIN_DSN", "postgresql://localhost/postgres")
MIGRATIONS = Path(__file__).resolve().parent.parent / "timescale"
_SKIPPED_TIMESCALE = "TimescaleDB is not installed on this PostgreSQL server: the timescale profile was NOT tested"


def dsn_for(name: str) -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{name}"


async def _admin(sql: str, *args: object) -> None:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def drop_database(name: str) -> None:
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _timescale_available() -> bool:
    conn = await asyncpg.connect(ADMIN_DSN)
    try:
        return await storage.timescale_available(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def timescale_available() -> bool:
    return asyncio.run(_timescale_available())


_TEMPLATES: dict[str, str] = {}


async def template_for(profile: str) -> str:
    """Migrated template database of `profile`, made on first use in this run."""
    if profile not in _TEMPLATES:
        name = f"sdt_tpl_{profile}_{os.getpid()}"
        await drop_database(name)
        await storage.migrate(dsn_for(name), MIGRATIONS, profile)
        # TimescaleDB's scheduler keeps a connection to every database with the extension, and a
        # database with connections cannot be a template: close it to connections first.
        await _admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        await _admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        _TEMPLATES[profile] = name
    return _TEMPLATES[profile]


@pytest.fixture(scope="session", autouse=True)
def _drop_templates() -> Iterator[None]:
    yield
    for name in _TEMPLATES.values():
        asyncio.run(drop_database(name))


async def clone(template: str) -> str:
    name = f"sdt_{uuid.uuid4().hex[:12]}"
    for attempt in range(50):
        try:
            await _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')
            return name
        except asyncpg.ObjectInUseError:
            # A background worker was still leaving the template; it cannot come back.
            await _admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", template)
            await asyncio.sleep(0.05 * (attempt + 1))
    raise RuntimeError(f"template {template} stayed busy")


@pytest.fixture(params=["postgres", pytest.param("timescale", marks=pytest.mark.timescale)])
def profile(request: pytest.FixtureRequest, timescale_available: bool) -> str:
    """Run the test once per storage profile."""
    if request.param == "timescale" and not timescale_available:
        pytest.skip(_SKIPPED_TIMESCALE)
    return request.param


@pytest.fixture
async def db(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """DSN of a fresh, migrated scratch database (the `profile` fixture's, else postgres)."""
    profile = request.getfixturevalue("profile") if "profile" in request.fixturenames else "postgres"
    name = await clone(await template_for(profile))
    try:
        yield dsn_for(name)
    finally:
        await drop_database(name)


@pytest.fixture
async def empty_db() -> AsyncIterator[str]:
    """DSN of a database name that does not exist yet (dropped afterwards)."""
    name = f"sdt_{uuid.uuid4().hex[:12]}"
    try:
        yield dsn_for(name)
    finally:
        await drop_database(name)


@pytest.fixture
async def pool(db: str) -> AsyncIterator[asyncpg.Pool]:
    p = await asyncpg.create_pool(db, min_size=1, max_size=4)
    try:
        yield p
    finally:
        await p.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    skipped = terminalreporter.stats.get("skipped", [])
    reasons = {str(r.longrepr[2]) if isinstance(r.longrepr, tuple) else str(r.longrepr) for r in skipped}
    loud = sorted(r for r in reasons if "NOT tested" in r)
    if loud:
        terminalreporter.section("NOT TESTED HERE", sep="!", red=True, bold=True)
        for reason in loud:
            terminalreporter.write_line(reason.removeprefix("Skipped: "), red=True, bold=True)


@dataclass
class Api:
    """A running `serve` app over real HTTP, its pipeline, and keys for farm 1 (read/write, read-only) and farm 2."""

    url: str
    pipeline: Pipeline
    dsn: str
    key: str
    read_only_key: str
    farm2_key: str

    def client(self, key: str | None = "default", **kw: object) -> httpx.AsyncClient:
        headers = {} if key is None else {"X-API-Key": self.key if key == "default" else key}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30, **kw)

    async def dead_letters(self) -> list[asyncpg.Record]:
        return await self.pipeline.pool.fetch("SELECT * FROM iot.dead_letters ORDER BY id")


async def start_api(dsn: str, **settings: object) -> tuple[uvicorn.Server, asyncio.Task[None], str, Pipeline]:
    app = create_app(Settings(dsn=dsn, **{"mqtt_enabled": False, **settings}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on", log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:  # readiness: set once the lifespan (pool, writers) is up and the socket bound
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, f"http://127.0.0.1:{port}", app.state.pipeline


@pytest.fixture
async def api(db: str, request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    """The API on a scratch database; a test marked `api_settings(...)` overrides settings."""
    marker = request.node.get_closest_marker("api_settings")
    server, task, url, pipeline = await start_api(db, **(marker.kwargs if marker else {}))
    conn = await asyncpg.connect(db)
    try:
        keys = [await apikeys.create(conn, [1]), await apikeys.create(conn, [1], read_only=True),
                await apikeys.create(conn, [2])]
    finally:
        await conn.close()
    try:
        yield Api(url, pipeline, db, *keys)
    finally:
        server.should_exit = True
        await task


# --- polling, the MQTT path and the alert rules, shared by several test modules -------------------


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 60,
                     what: str = "condition") -> None:
    """Poll `check` until it holds (a readiness condition, not a delay), or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not await _value(check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        await asyncio.sleep(0.05)


@pytest.fixture
def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@dataclass
class Ingest:
    pipeline: Pipeline
    subscriber: Subscriber

    async def count(self, table: str = "sensor_data") -> int:
        return await self.pipeline.pool.fetchval(f"SELECT count(*) FROM iot.{table}")  # noqa: S608 (fixed names)


@pytest.fixture
async def ingest(db: str, broker: Broker) -> AsyncIterator[Ingest]:
    settings = Settings(dsn=db, mqtt_port=broker.port, mqtt_client_id=f"test-{os.getpid()}-{time.monotonic_ns()}")
    pipeline = Pipeline(settings, background=False)
    await pipeline.start()
    subscriber = Subscriber(pipeline, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(subscriber.run(stop))
    await eventually(lambda: subscriber.status.connected, 10, "subscriber connected")
    try:
        yield Ingest(pipeline, subscriber)
    finally:
        stop.set()
        await task
        await pipeline.stop()


async def _value(result: bool | Awaitable[bool]) -> bool:
    return await result if inspect.isawaitable(result) else result


FEVERISH = "FEVERISH"


async def add_feverish_rule(db: object) -> None:
    """A fever by the value alone (>= 39.5 degC for 30 min), for tests about episodes rather than
    detectors: the built-in fever also wants her same hours and her group, days of data. `db`: a
    pool or a connection."""
    await db.execute(
        "INSERT INTO iot.alert_rules (code, name, category, severity, conditions, duration_s, suppression_s, "
        "max_per_hour) VALUES ($1, $1, 'health', 'critical', $2, 1800, 43200, 20)", FEVERISH,
        '[{"signal": "value", "metric": "body_temperature_c", "op": ">=", "value": 39.5}]')


@pytest.fixture
async def rules(db: str) -> list[Rule]:
    conn = await asyncpg.connect(db)
    try:
        return await alerts.load_rules(conn)
    finally:
        await conn.close()
