"""The maintenance loop: partitions, rollup refresh and retention (postgres profile); compression,
refresh and retention policies (timescale profile). Each step is logged and counted in metrics.

TimescaleDB 2.28.3 on PostgreSQL 15.20 (the build this project is checked against) records every
background job run by its scheduler as failed ("cannot drop portal "" while it is being set up")
although the job's work commits, while the same job run in the foreground with CALL run_job()
succeeds. So this loop runs the policies of the `iot` tables itself, each on its own schedule; where
the scheduler works the extra runs are harmless (policies are idempotent).

Values cannot poison shared work (issue 13): a refresh that fails because of what some rows hold
must not stop every other bucket. On the postgres profile iot.refresh_rollup isolates the failing
bucket itself (migration 0009). On the timescale profile a continuous aggregate's refresh job stops
at the first part of its window that fails, so when it fails with an error the data causes, the
window is refreshed again a day at a time; a day that still fails is dead-lettered and skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from .dead_letters import letter
from .metrics import Metrics, build_metrics
from .storage import RETRYABLE_ERRORS, caused_by_data, stored_profile
from .tables import DEAD_LETTERS

log = logging.getLogger(__name__)


# Errors the data causes (storage.caused_by_data) skip a day; other errors (lock timeouts, a
# restarting server) fail the step as a whole and it is retried on the next pass.
_DAY = timedelta(days=1)

_DEAD_LETTER_RETENTION = """WITH d AS (DELETE FROM iot.dead_letters WHERE received_at < now() - interval '90 days'
                                      RETURNING 1) SELECT count(*) FROM d"""


@dataclass
class MaintenanceState:
    """What the loop remembers between passes: when each TimescaleDB job last ran, and which days
    of which continuous aggregate it reported as failing."""

    job_last_run: dict[int, float] = field(default_factory=dict)
    # (continuous aggregate, day) already dead-lettered by this loop: a poisoned day is retried on
    # every pass (a fix of its rows is picked up), but reported once.
    dead_lettered: set[tuple[str, datetime]] = field(default_factory=set)


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
    conn.add_log_listener(_log_server_warning)  # a bucket skipped (and dead-lettered) is a WARNING
    try:
        row = await conn.fetchrow("SELECT * FROM iot.refresh_rollup($1)", name)
    finally:
        conn.remove_log_listener(_log_server_warning)
    return (f"{row['ranges']} ranges, {row['buckets_written']} buckets written, "
            f"watermark {row['watermark']:%Y-%m-%d %H:%M}")


def _log_server_warning(_conn: asyncpg.Connection, message: asyncpg.PostgresLogMessage) -> None:
    if message.severity == "WARNING":
        log.warning("server: %s", message.message)


async def _timescale_steps(conn: asyncpg.Connection, state: MaintenanceState, force: bool):
    jobs = await conn.fetch(
        """SELECT job_id, proc_name, hypertable_name, extract(epoch FROM schedule_interval) AS every
           FROM timescaledb_information.jobs
           WHERE hypertable_schema = 'iot' OR hypertable_name IN (
               SELECT materialization_hypertable_name FROM timescaledb_information.continuous_aggregates
               WHERE view_schema = 'iot')
           ORDER BY proc_name DESC, job_id""")  # refresh before compression and retention
    caggs = await conn.fetch(
        """SELECT materialization_hypertable_name, view_name, format('%I.%I', view_schema, view_name) AS qualified
           FROM timescaledb_information.continuous_aggregates WHERE view_schema = 'iot'""")
    names = {c["materialization_hypertable_name"]: c["view_name"] for c in caggs}
    qualified = {c["view_name"]: c["qualified"] for c in caggs}
    now = time.monotonic()
    for job in jobs:
        last = state.job_last_run.get(job["job_id"])
        if not force and last is not None and now - last < job["every"]:
            continue
        state.job_last_run[job["job_id"]] = now
        target = names.get(job["hypertable_name"], job["hypertable_name"])
        work = (_refresh_cagg(conn, job["job_id"], target, qualified[target], state)
                if job["proc_name"] == "policy_refresh_continuous_aggregate" else _run_job(conn, job["job_id"]))
        yield f"{job['proc_name'].removeprefix('policy_')}:{target}", work
    yield "retention:dead_letters", _scalar(conn, _DEAD_LETTER_RETENTION, "{} dead letters deleted")


# TimescaleDB (2.2x) refuses a refresh whose window overlaps one in progress (its own policy job in
# the background, say) with SQLSTATE 55P03 rather than waiting for it: wait and try again.
CONCURRENT_REFRESH_RETRIES = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)


async def _call(conn: asyncpg.Connection, sql: str, *args: object) -> None:
    """`CALL sql`, tried again while a concurrent refresh of the same window holds it off."""
    for pause in (*CONCURRENT_REFRESH_RETRIES, None):
        try:
            await conn.execute(sql, *args)
            return
        except asyncpg.LockNotAvailableError as exc:
            if pause is None:
                raise
            log.info("maintenance: %s; trying again in %g s", exc, pause)
            await asyncio.sleep(pause)


async def _run_job(conn: asyncpg.Connection, job_id: int) -> str:
    await _call(conn, "CALL run_job($1)", job_id)
    return f"job {job_id} ran"


async def _refresh_cagg(conn: asyncpg.Connection, job_id: int, name: str, view: str, state: MaintenanceState) -> str:
    """Run a continuous aggregate's refresh job; when the data makes it fail, refresh its window a
    day at a time instead, dead-lettering and skipping the days that fail.

    The job refreshes its window (start_offset..end_offset ago) newest first and stops at the first
    batch that fails: one bucket that cannot be computed (1e300 and 0 overflow stddev) would leave
    every older bucket of every farm unrefreshed, late data invisible. A day is the unit used here:
    it suits every rollup (15 minutes to a day), and refresh_continuous_aggregate cannot select a
    farm, so a poisoned day is skipped for all farms while the other days are materialized. The day
    keeps its invalidation, so each pass retries it (about 0.1 s for 90 days of no-op refreshes).
    """
    try:
        return await _run_job(conn, job_id)
    except asyncpg.PostgresError as exc:
        if not caused_by_data(exc):
            raise
        failure = exc
    window = await conn.fetchrow(
        """SELECT now() - (config->>'start_offset')::interval AS lo, now() - (config->>'end_offset')::interval AS hi
           FROM timescaledb_information.jobs WHERE job_id = $1""", job_id)
    if window is None or window["lo"] is None or window["hi"] is None:
        raise failure  # no bounded window to walk
    log.warning("refresh of %s failed (%s: %s); refreshing it a day at a time", name, failure.sqlstate, failure)
    # Days start at midnight UTC, where time_bucket's buckets of 15 minutes, an hour and a day all
    # start. The first day starts at or after the window's start, never before: the job's window
    # starts at raw retention so that a refresh never erases buckets whose raw rows are gone.
    lo, hi = window["lo"].astimezone(UTC), window["hi"].astimezone(UTC)
    day = lo.replace(hour=0, minute=0, second=0, microsecond=0)
    day = day if day == lo else day + _DAY
    refreshed, skipped = 0, []
    while day < hi:
        end = min(day + _DAY, hi)
        try:
            await _call(conn, "CALL refresh_continuous_aggregate($1::regclass, $2::timestamptz, $3::timestamptz)",
                        view, day, end)
            refreshed += 1
            state.dead_lettered.discard((name, day))
        except asyncpg.PostgresError as exc:
            if isinstance(exc, asyncpg.InvalidParameterValueError) and end < day + _DAY:
                pass  # today so far holds no whole bucket of this rollup ("refresh window too small")
            elif caused_by_data(exc):
                skipped.append(day)
                await _dead_letter_day(conn, name, day, end, exc, state)
            else:
                raise
        day += _DAY
    return (f"job {job_id} failed ({failure.sqlstate}); refreshed a day at a time: {refreshed} days refreshed, "
            f"{len(skipped)} skipped ({', '.join(f'{d:%Y-%m-%d}' for d in skipped) or 'none'})")


async def _dead_letter_day(conn: asyncpg.Connection, name: str, day: datetime, end: datetime,
                           exc: asyncpg.PostgresError, state: MaintenanceState) -> None:
    log.warning("refresh of %s skipped the day %s..%s: %s: %s", name, day.isoformat(), end.isoformat(),
                exc.sqlstate, exc)
    if (name, day) in state.dead_lettered:
        return
    payload = json.dumps({"rollup": name, "bucket_start": day.isoformat(), "bucket_end": end.isoformat()})
    row = letter("maintenance", f"rollup:{name}", payload,
                 [{"field": None, "sqlstate": exc.sqlstate, "error": str(exc)}])
    await conn.copy_records_to_table(DEAD_LETTERS.name, schema_name="iot", records=[row], columns=DEAD_LETTERS.columns)
    state.dead_lettered.add((name, day))


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
