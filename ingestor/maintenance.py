"""The maintenance loop: partitions, rollup refresh and retention (postgres profile); compression,
refresh and retention policies (timescale profile). Each step is logged and counted in metrics.

TimescaleDB 2.28.3 on PostgreSQL 15.20 (the build this project is checked against) records every
background job run by its scheduler as failed ("cannot drop portal "" while it is being set up")
although the job's work commits, while the same job run in the foreground with CALL run_job()
succeeds. So this loop runs the policies of the `iot` tables itself, each on its own schedule; where
the scheduler works the extra runs are harmless (policies are idempotent).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import asyncpg

from .metrics import Metrics, build_metrics
from .storage import RETRYABLE_ERRORS, stored_profile

log = logging.getLogger(__name__)


_DEAD_LETTER_RETENTION = """WITH d AS (DELETE FROM iot.dead_letters WHERE received_at < now() - interval '90 days'
                                      RETURNING 1) SELECT count(*) FROM d"""


@dataclass
class MaintenanceState:
    """What the loop remembers between passes: when each TimescaleDB job last ran."""

    job_last_run: dict[int, float] = field(default_factory=dict)


@dataclass
class StepResult:
    step: str
    detail: str
    seconds: float


async def run_once(conn: asyncpg.Connection, *, metrics: Metrics | None = None,
                   state: MaintenanceState | None = None, force: bool = True) -> list[StepResult]:
    """Run one maintenance pass; `force` runs every TimescaleDB job now instead of when due."""
    metrics = metrics or build_metrics()
    state = state or MaintenanceState()
    profile = await stored_profile(conn)
    if profile is None:
        raise RuntimeError("schema iot is missing: run `smart-dairy migrate` first")
    steps = _postgres_steps(conn) if profile == "postgres" else _timescale_steps(conn, state, force)
    results = []
    async for name, work in steps:
        started = time.perf_counter()
        try:
            detail = await work
        except asyncpg.PostgresError as exc:
            metrics.maintenance_runs.labels(step=name, outcome="error").inc()
            log.error("maintenance step %s failed: %s", name, exc)
            continue
        elapsed = time.perf_counter() - started
        metrics.maintenance_runs.labels(step=name, outcome="ok").inc()
        metrics.maintenance_seconds.labels(step=name).observe(elapsed)
        metrics.maintenance_last_success.labels(step=name).set(time.time())
        log.info("maintenance %s: %s (%.3fs)", name, detail, elapsed)
        results.append(StepResult(name, detail, elapsed))
    return results


async def _postgres_steps(conn: asyncpg.Connection):
    yield "partitions", _scalar(conn, "SELECT iot.ensure_partitions()", "{} partitions created")
    yield "retention", _scalar(conn, "SELECT iot.drop_expired_partitions()", "{} partitions dropped")
    yield "retention:dead_letters", _scalar(conn, _DEAD_LETTER_RETENTION, "{} dead letters deleted")
    for name in await conn.fetch("SELECT name FROM iot.rollups ORDER BY name"):
        yield f"refresh:{name['name']}", _refresh(conn, name["name"])


async def _scalar(conn: asyncpg.Connection, sql: str, template: str) -> str:
    return template.format(await conn.fetchval(sql))


async def _refresh(conn: asyncpg.Connection, name: str) -> str:
    row = await conn.fetchrow("SELECT * FROM iot.refresh_rollup($1)", name)
    return (f"{row['ranges']} ranges, {row['buckets_written']} buckets written, "
            f"watermark {row['watermark']:%Y-%m-%d %H:%M}")


async def _timescale_steps(conn: asyncpg.Connection, state: MaintenanceState, force: bool):
    jobs = await conn.fetch(
        """SELECT job_id, proc_name, hypertable_name, extract(epoch FROM schedule_interval) AS every
           FROM timescaledb_information.jobs
           WHERE hypertable_schema = 'iot' OR hypertable_name IN (
               SELECT materialization_hypertable_name FROM timescaledb_information.continuous_aggregates
               WHERE view_schema = 'iot')
           ORDER BY proc_name DESC, job_id""")  # refresh before compression and retention
    names = dict(await conn.fetch(
        """SELECT materialization_hypertable_name, view_name
           FROM timescaledb_information.continuous_aggregates WHERE view_schema = 'iot'"""))
    now = time.monotonic()
    for job in jobs:
        last = state.job_last_run.get(job["job_id"])
        if not force and last is not None and now - last < job["every"]:
            continue
        state.job_last_run[job["job_id"]] = now
        target = names.get(job["hypertable_name"], job["hypertable_name"])
        yield f"{job['proc_name'].removeprefix('policy_')}:{target}", _run_job(conn, job["job_id"])
    yield "retention:dead_letters", _scalar(conn, _DEAD_LETTER_RETENTION, "{} dead letters deleted")


async def _run_job(conn: asyncpg.Connection, job_id: int) -> str:
    await conn.execute("CALL run_job($1)", job_id)
    return f"job {job_id} ran"


async def run_forever(dsn: str, interval: float, *, metrics: Metrics | None = None,
                      stop: asyncio.Event | None = None) -> None:
    """Run a pass every `interval` seconds until `stop` is set; a failed pass is logged and retried."""
    state = MaintenanceState()
    stop = stop or asyncio.Event()
    while not stop.is_set():
        try:
            conn = await asyncpg.connect(dsn)
            try:
                await run_once(conn, metrics=metrics, state=state, force=False)
            finally:
                await conn.close()
        except RETRYABLE_ERRORS as exc:
            log.warning("maintenance pass failed: %s", exc)
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass
