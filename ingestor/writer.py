"""The bulk writer: validated rows in, durable rows out.

Callers `await write(rows)`; the writer groups concurrent submissions into one batch (by size and
age), stores it with one binary COPY in one transaction and wakes every caller only after COMMIT
(group commit). Memory is bounded: `write` waits while too many rows are pending (backpressure).

Dedup without ON CONFLICT: the batch is COPYed optimistically inside a savepoint; duplicates are
rare (re-sent messages), so the common path runs at raw COPY speed. When the unique key refuses
the COPY, the batch is COPYed into a temporary staging table and merged with INSERT ... ON CONFLICT
DO NOTHING. A batch the database refuses for another row-level reason is split in halves until
the bad rows are isolated; they go to iot.dead_letters in the same transaction, their neighbours
are stored. A lost connection or a restarting database is retried with backoff, the rows kept in
memory and their callers waiting: nothing is acknowledged before it is committed.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import chain

import asyncpg

from .dead_letters import letter
from .metrics import Metrics, build_metrics
from .storage import CONNECTION_ERRORS, RETRYABLE_ERRORS, caused_by_data
from .tables import DEAD_LETTERS, Table

log = logging.getLogger(__name__)

Row = tuple
CommitHook = Callable[[Sequence[Row]], None]  # sees every committed batch; must be quick


class WriterClosed(RuntimeError):
    """The writer is closed and takes no more rows."""


class WriterBusy(RuntimeError):
    """The writer is full and the caller chose not to wait longer."""


@dataclass
class WriteResult:
    stored: int = 0                                       # rows now stored (new, or already there)
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (index in the submission, reason)


@dataclass
class _Submission:
    rows: Sequence[Row]
    channel: str
    source: str
    future: asyncio.Future[WriteResult]
    enqueued: float


def _is_row_level(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.PostgresError):
        return caused_by_data(exc)
    # Raised by asyncpg while encoding a value the column type cannot take.
    return isinstance(exc, (asyncpg.DataError, ValueError, TypeError, OverflowError))


def describe(exc: BaseException) -> str:
    """A short reason naming the problem, for dead letters and logs."""
    if isinstance(exc, asyncpg.PostgresError):
        detail = f" ({exc.detail})" if getattr(exc, "detail", None) else ""
        return f"{exc.sqlstate}: {exc.args[0] if exc.args else type(exc).__name__}{detail}"
    return f"{type(exc).__name__}: {exc}"


class Writer:
    """Group-committing binary COPY writer for one table."""

    def __init__(self, pool: asyncpg.Pool, table: Table, *, batch_rows: int = 20_000,
                 batch_delay: float = 0.05, max_pending_rows: int = 200_000,
                 concurrency: int = 2, metrics: Metrics | None = None,
                 on_commit: CommitHook | None = None) -> None:
        self.table = table
        self._pool = pool
        self._batch_rows = batch_rows
        self._batch_delay = batch_delay
        self._max_pending = max(max_pending_rows, batch_rows)
        self._metrics = metrics or build_metrics()
        self._on_commit = on_commit
        self._concurrency = concurrency
        self._queue: deque[_Submission] = deque()
        self._pending = 0  # accepted, not committed (queued or being written)
        self._queued = 0   # accepted, not yet taken by a flusher
        self._busy = 0     # flushers writing a batch now
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        # Built from the fixed table definitions in tables.py, never from input.
        cols = ", ".join(f'"{c}"' for c in table.columns)
        self._stage = f"stage_{table.name}"
        self._stage_sql = (f'CREATE TEMP TABLE IF NOT EXISTS "{self._stage}" '
                           f'(LIKE iot."{table.name}" INCLUDING DEFAULTS) ON COMMIT DELETE ROWS; '
                           f'TRUNCATE "{self._stage}"')
        self._merge_sql = (f'INSERT INTO iot."{table.name}" ({cols}) SELECT {cols} FROM "{self._stage}" '
                           f"ON CONFLICT DO NOTHING")
        self._labels = {"table": table.name}

    @property
    def pending_rows(self) -> int:
        """Rows accepted and not yet committed."""
        return self._pending

    def start(self) -> None:
        """Start the flushing tasks on the running loop."""
        # Two flushers let one batch's COMMIT overlap the next batch's COPY.
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._run(), name=f"writer-{self.table.name}-{i}")
                           for i in range(self._concurrency)]

    async def close(self) -> None:
        """Commit everything pending, then stop."""
        self._closing = True
        async with self._changed:
            self._changed.notify_all()
        await asyncio.gather(*self._tasks)
        self._tasks = []

    @property
    def lag_seconds(self) -> float:
        """Age of the oldest row not yet taken into a batch (0 when none waits)."""
        return time.monotonic() - self._queue[0].enqueued if self._queue else 0.0

    async def write(self, rows: Sequence[Row], *, channel: str = "internal", source: str = "",
                    admit_timeout: float | None = None) -> WriteResult:
        """Store `rows` durably; return once they are committed (or dead-lettered).

        While the writer holds max_pending_rows the caller waits (backpressure); with
        `admit_timeout`, at most that long before WriterBusy, for callers that can tell their
        client to come back later instead.
        """
        if self._closing:
            raise WriterClosed(f"writer for {self.table.name} is closed")
        if not rows:
            return WriteResult()
        self.start()
        loop = asyncio.get_running_loop()
        async with self._changed:
            # A submission larger than the whole budget is let in alone rather than never.
            try:
                await asyncio.wait_for(self._changed.wait_for(
                    lambda: self._pending == 0 or self._pending + len(rows) <= self._max_pending), admit_timeout)
            except TimeoutError:
                raise WriterBusy(f"writer for {self.table.name} holds {self._pending} uncommitted rows") from None
            sub = _Submission(rows, channel, source, loop.create_future(), time.monotonic())
            self._queue.append(sub)
            self._pending += len(rows)
            self._queued += len(rows)
            self._metrics.pending_rows.labels(**self._labels).set(self._pending)
            self._changed.notify_all()
        return await sub.future

    async def _run(self) -> None:
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                # While another batch is being written, gather a fuller one (up to the oldest row's
                # deadline); when none is, write at once: low latency when idle, big batches under load.
                deadline = self._queue[0].enqueued + self._batch_delay
                while (self._queue and self._busy and self._queued < self._batch_rows and not self._closing
                       and (left := deadline - time.monotonic()) > 0):
                    try:
                        await asyncio.wait_for(self._changed.wait(), left)
                    except TimeoutError:
                        break
                if not self._queue:
                    continue  # another flusher took it
                subs = [self._queue.popleft()]
                taken = len(subs[0].rows)
                while self._queue and taken + len(self._queue[0].rows) <= self._batch_rows:
                    taken += len(self._queue[0].rows)
                    subs.append(self._queue.popleft())
                self._queued -= taken
                self._busy += 1
            try:
                results = await self._commit(subs)
            except BaseException as exc:  # cancelled or a bug: callers must not wait forever
                for sub in subs:
                    if not sub.future.done():
                        sub.future.set_exception(exc)
                raise
            finally:
                async with self._changed:
                    self._busy -= 1
                    self._pending -= taken
                    self._metrics.pending_rows.labels(**self._labels).set(self._pending)
                    self._changed.notify_all()
            for sub, result in zip(subs, results, strict=True):
                if not sub.future.done():
                    sub.future.set_result(result)

    async def _commit(self, subs: list[_Submission]) -> list[WriteResult]:
        rows = list(chain.from_iterable(s.rows for s in subs))
        delay = 0.05
        while True:
            started = time.perf_counter()
            try:
                async with self._pool.acquire() as conn:
                    try:
                        async with conn.transaction():
                            rejected = await self._store(conn, rows, merge=False)
                            if rejected:
                                await self._dead_letter(conn, subs, rows, rejected)
                    except CONNECTION_ERRORS:
                        # A connection that failed mid-protocol may be left in a state where its next
                        # query fails; close it so the pool opens a fresh one for the retry.
                        conn.terminate()
                        raise
                break
            except RETRYABLE_ERRORS as exc:
                # Connection lost, database restarting, schema missing...: keep the rows, retry.
                self._metrics.write_retries.labels(**self._labels).inc()
                log.warning("writing %d rows to %s failed (%s); retrying in %.2fs",
                            len(rows), self.table.name, describe(exc), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._metrics.commit_seconds.labels(**self._labels).observe(time.perf_counter() - started)
        self._metrics.batch_rows.labels(**self._labels).observe(len(rows))
        self._metrics.rows_written.labels(**self._labels).inc(len(rows) - len(rejected))
        self._metrics.rows_rejected.labels(**self._labels).inc(len(rejected))
        if self._on_commit is not None:
            bad = {i for i, _ in rejected}
            self._on_commit([r for i, r in enumerate(rows) if i not in bad] if bad else rows)
        return self._split_results(subs, rejected)

    async def _store(self, conn: asyncpg.Connection, rows: Sequence[Row], *, merge: bool) -> list[tuple[int, str]]:
        """Store rows inside a savepoint; return the (index, reason) of rows that cannot be stored."""
        try:
            async with conn.transaction():
                if merge:
                    await conn.execute(self._stage_sql)
                    await conn.copy_records_to_table(self._stage, records=rows, columns=self.table.columns)
                    await conn.execute(self._merge_sql)
                else:
                    await conn.copy_records_to_table(self.table.name, schema_name="iot", records=rows,
                                                     columns=self.table.columns)
            return []
        except asyncpg.UniqueViolationError:
            if merge:
                raise
            self._metrics.dedup_fallbacks.labels(**self._labels).inc()
            return await self._store(conn, rows, merge=True)
        except Exception as exc:
            if not _is_row_level(exc):
                raise
            if len(rows) == 1:
                return [(0, describe(exc))]
            mid = len(rows) // 2
            left = await self._store(conn, rows[:mid], merge=merge)
            right = await self._store(conn, rows[mid:], merge=merge)
            return left + [(i + mid, reason) for i, reason in right]

    async def _dead_letter(self, conn: asyncpg.Connection, subs: list[_Submission], rows: Sequence[Row],
                           rejected: list[tuple[int, str]]) -> None:
        offsets = list(_offsets(subs))
        records = []
        farm = self.table.columns.index("farm_id") if "farm_id" in self.table.columns else None
        for index, reason in rejected:
            sub = subs[bisect.bisect_right(offsets, index) - 1]
            payload = json.dumps(dict(zip(self.table.columns, rows[index], strict=True)), default=str)
            records.append(letter(sub.channel, sub.source, payload,
                                  [{"field": None, "error": f"not storable in {self.table.name}: {reason}"}],
                                  None if farm is None else rows[index][farm]))
        await conn.copy_records_to_table(DEAD_LETTERS.name, schema_name="iot", records=records,
                                         columns=DEAD_LETTERS.columns)
        log.warning("dead-lettered %d of %d rows for %s, first: %s", len(rejected), len(rows),
                    self.table.name, rejected[0][1])

    @staticmethod
    def _split_results(subs: list[_Submission], rejected: list[tuple[int, str]]) -> list[WriteResult]:
        results = [WriteResult(stored=len(s.rows)) for s in subs]
        offsets = list(_offsets(subs))
        for index, reason in rejected:
            i = bisect.bisect_right(offsets, index) - 1
            results[i].rejected.append((index - offsets[i], reason))
            results[i].stored -= 1
        return results


def _offsets(subs: list[_Submission]):
    total = 0
    for s in subs:
        yield total
        total += len(s.rows)
