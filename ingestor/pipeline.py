"""The ingestor's running parts, shared by the HTTP API and the MQTT subscriber: the database pool,
the registry cache, one writer per table, the alert rules, and the background loops (registry
refresh, device state, alert rules and silence, maintenance). `ingest` is the one path every item
takes: claim unknown device ids for their farm, validate, judge the alert rules, write rows and
alerts, dead-letter the rest (one letter per message).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

import asyncpg

from . import alerts, maintenance, registry
from .alerts import Alerting, Decisions
from .config import Settings
from .dead_letters import Allowance, letter
from .device_state import DeviceStates
from .metrics import Metrics, build_metrics
from .registry import ChangeListener, DeviceOwners, RegistryCache, first_of
from .storage import CONNECTION_ERRORS, RETRYABLE_ERRORS, stored_profile
from .tables import DEAD_LETTERS, MILK_PRODUCTION, RFID_EVENTS, SENSOR_DATA, Table
from .validation import Context, ItemError, Validated, validate_milk, validate_readings, validate_rfid
from .writer import Writer, WriterBusy

log = logging.getLogger(__name__)

# The database is away (restarting, unreachable): wait for it, as the writers do.
DATABASE_AWAY = (*CONNECTION_ERRORS, asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError)

# kind -> (table, validation, the field naming the device that sent the item)
KINDS: dict[str, tuple[Table, Callable[..., Validated], str]] = {
    "sensor": (SENSOR_DATA, validate_readings, "device_uid"),
    "milk": (MILK_PRODUCTION, validate_milk, "milk_meter_id"),
    "rfid": (RFID_EVENTS, validate_rfid, "reader_id"),
}


@dataclass(frozen=True)
class Origin:
    """The message items came from (an HTTP body, an MQTT message): what a dead letter keeps of it."""

    source: str  # the topic or path
    payload: bytes
    farm_id: int | None = None


@dataclass
class IngestResult:
    accepted: int = 0
    errors: list[ItemError] = field(default_factory=list)


class Pipeline:
    def __init__(self, settings: Settings, metrics: Metrics | None = None, *, background: bool = True) -> None:
        self.settings = settings
        self.metrics = metrics or build_metrics()
        self.registry = RegistryCache()
        self.owners = DeviceOwners()
        self.changes = ChangeListener(settings.dsn)
        self.allowance = Allowance(settings.dead_letter_bytes_per_farm_hour)
        self.device_states = DeviceStates()
        self.profile = "unknown"
        self.pool: asyncpg.Pool | None = None
        self.writers: dict[str, Writer] = {}
        self.dead_letters: Writer | None = None
        self._background = background
        self.alerting = Alerting.from_settings(settings) if settings.alerts_enabled else None
        # Called with what was stored, after it is committed (the MQTT side publishes it).
        self.alert_listeners: list[Callable[[Decisions], None]] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        if self.alerting is not None:
            self.metrics.registry.register(alerts.StateCollector(self.alerting))

    async def start(self) -> None:
        s = self.settings
        self.pool = await asyncpg.create_pool(s.dsn, min_size=1, max_size=s.pool_size)
        async with self.pool.acquire() as conn:
            self.profile = await stored_profile(conn) or "unknown"
            await self.registry.refresh(conn)
            if self.alerting is not None:
                self._rules_version = await registry.version(conn, "alert_rules")
                self.alerting.set_rules(await alerts.load_rules(conn))
                episodes, series = await alerts.restore(conn, self.alerting, self.registry.current)
                log.info("alerts: %d rules; restored %d episodes and %d baselines", len(self.alerting.rules),
                         episodes, series)
        common = dict(batch_rows=s.batch_rows, batch_delay=s.batch_delay, max_pending_rows=s.max_pending_rows,
                      metrics=self.metrics)
        self.writers = {kind: Writer(self.pool, table, **common,
                                     on_commit=self.device_states.note if table is SENSOR_DATA else None)
                        for kind, (table, *_) in KINDS.items()}
        self.dead_letters = Writer(self.pool, DEAD_LETTERS, **common)
        self._tasks = [asyncio.create_task(self.changes.run(self._stop)),
                       asyncio.create_task(self.registry.run(self.pool, s.registry_interval, self._stop,
                                                             self.changes.events["registry"])),
                       asyncio.create_task(self.device_states.run(self.pool, 1.0, self._stop))]
        if self.alerting is not None:
            self._tasks.append(asyncio.create_task(self._watch_alerts(s.registry_interval)))
        if self._background:
            self._tasks.append(asyncio.create_task(
                maintenance.run_forever(s.dsn, s.maintenance_interval, metrics=self.metrics, stop=self._stop)))

    async def stop(self) -> None:
        """Commit what was accepted, stop the loops, close the pool."""
        for writer in (*self.writers.values(), self.dead_letters):
            if writer is not None:
                await writer.close()
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.pool is not None:
            await self.pool.close()

    @property
    def pending_rows(self) -> int:
        return sum(w.pending_rows for w in self.writers.values())

    @property
    def lag_seconds(self) -> float:
        return max((w.lag_seconds for w in self.writers.values()), default=0.0)

    async def ingest(self, kind: str, items: Sequence[Any], *, channel: str, origin: Origin | Sequence[Origin],
                     decode_errors: Sequence[ItemError] = (), admit_timeout: float | None = None) -> IngestResult:
        """Validate decoded `items` (None where decoding failed, with `decode_errors`), store the valid
        ones durably, dead-letter the rest; return once both are committed.

        `origin` is the message every item came from, or one per item: each message with rejected
        items becomes one dead letter listing them.
        """
        table, validate, device_field = KINDS[kind]
        await self._claim(items, device_field, admit_timeout)
        validated = validate(items, Context(self.registry.current, self.owners.known))
        errors = [*decode_errors, *validated.errors]
        source = origin.source if isinstance(origin, Origin) else ""
        writes = [self.writers[kind].write(validated.rows, channel=channel, source=source, admit_timeout=admit_timeout)]
        # Judged before the rows are stored and stored beside them: the caller's acknowledgement waits
        # for both, so a crash in between re-delivers the readings and re-raises the same alert ids.
        await self._restore_baselines(kind, validated.rows)
        decisions = self._judge(kind, validated.rows)
        if decisions:
            writes.append(self.store_alerts(decisions))
        if errors:
            writes.append(self._dead_letter(channel, origin, errors))
        stored, *_ = await asyncio.gather(*writes)
        for index, reason in stored.rejected:  # the writer has dead-lettered these itself
            errors.append(ItemError(validated.indexes[index], None, f"not storable: {reason}"))
        self.metrics.items_accepted.labels(channel=channel, table=table.name).inc(stored.stored)
        for e in errors:
            self.metrics.items_rejected.labels(channel=channel, reason=e.field or "item").inc()
        errors.sort(key=lambda e: e.index)
        return IngestResult(stored.stored, errors)

    async def _claim(self, items: Sequence[Any], device_field: str, admit_timeout: float | None) -> None:
        """Learn which farm owns each device id the registry does not know, claiming new ones for the
        farm sending them (retried while the database is away, for at most `admit_timeout`)."""
        present = list(filter(None, items))
        new = (set(map(attrgetter(device_field), present)) - self.registry.current.devices.keys()
               - self.owners.known.keys())
        if not new:  # the common case, decided by C-level set operations
            return
        wanted: dict[str, int] = {}
        for item in present:
            uid = getattr(item, device_field)
            if uid in new and uid.isprintable():  # an unprintable id is refused by validation
                wanted.setdefault(uid, item.farm_id)
        delay, waited = 0.05, 0.0
        while True:
            try:
                await self.owners.claim(self.pool, wanted)
                return
            except DATABASE_AWAY as exc:
                if admit_timeout is not None and waited >= admit_timeout:
                    raise WriterBusy(f"device owners cannot be read: {exc}") from None
                log.warning("claiming %d device ids failed (%s); retrying in %.2fs", len(wanted), exc, delay)
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 5.0)

    async def _dead_letter(self, channel: str, origin: Origin | Sequence[Origin], errors: list[ItemError]) -> None:
        """One letter per message that had rejected items."""
        by_message: dict[int, tuple[Origin, list[dict[str, object]]]] = {}
        for e in sorted(errors, key=lambda e: e.index):
            o = origin if isinstance(origin, Origin) else origin[e.index]
            by_message.setdefault(id(o), (o, []))[1].append(e.as_json())
        await self._store_letters(channel, [letter(channel, o.source, o.payload, errs, o.farm_id)
                                            for o, errs in by_message.values()])

    async def _store_letters(self, channel: str, letters: list[tuple]) -> None:
        kept = [row for row in letters if self.allowance.admit(row)]
        if len(kept) < len(letters):
            dropped = len(letters) - len(kept)
            self.metrics.input_not_stored.labels(channel=channel, reason="farm_hourly_cap").inc(dropped)
        if kept:
            await self.dead_letters.write(kept, channel=channel, source=kept[0][2])

    async def _restore_baselines(self, kind: str, rows: list[tuple]) -> None:
        """Baselines of the batch's devices and cows not seen since start, from the aggregates (one
        query, waited for at most the admission timeout), before their readings are judged: none are
        read at start."""
        if self.alerting is not None and rows:
            await alerts.restore_baselines(self.pool, self.alerting, kind, rows, timeout=self.settings.admit_timeout)

    def _judge(self, kind: str, rows: list[tuple]) -> Decisions | None:
        if self.alerting is None or not rows:
            return None
        if kind == "sensor":
            return self.alerting.observe_readings(rows, self.registry.current)
        if kind == "milk":
            return self.alerting.observe_milk(rows, self.registry.current)
        return None

    async def store_alerts(self, decisions: Decisions) -> None:
        """Commit raised and resolved alerts (retried while the database is away), then tell listeners."""
        delay = 0.05
        while True:
            try:
                async with self.pool.acquire() as conn:
                    await alerts.store(conn, decisions)
                break
            except DATABASE_AWAY as exc:
                log.warning("storing %d alerts failed (%s); retrying in %.2fs",
                            len(decisions.raised) + len(decisions.resolved), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except asyncpg.PostgresError:
                # A statement error will not go away by retrying; the readings must not wait on it.
                log.exception("alerts could not be stored: %s", decisions.raised[:1] or decisions.resolved[:1])
                return
        for row in decisions.raised:
            self.metrics.alerts.labels(rule=row[2], event="raised").inc()
        for row in decisions.resolved:
            self.metrics.alerts.labels(rule=row[0].split(":", 1)[0], event="resolved").inc()
        for listener in self.alert_listeners:
            listener(decisions)

    async def _watch_alerts(self, interval: float) -> None:
        """Reload rules edited in Odoo, take up resolutions made there, judge silent devices."""
        watermark = datetime.now(UTC)
        changed = self.changes.events["alert_rules"]
        while not self._stop.is_set():
            changed.clear()
            try:
                async with self.pool.acquire() as conn:
                    seen = await registry.version(conn, "alert_rules")
                    if seen != self._rules_version:
                        self.alerting.set_rules(await alerts.load_rules(conn))
                        self._rules_version = seen
                        log.info("alert rules reloaded: %d active", len(self.alerting.rules))
                    watermark = await alerts.pull_resolutions(conn, self.alerting, watermark)
                now = datetime.now(UTC).timestamp()
                decisions = self.alerting.check_devices(now, self.registry.current)
                if decisions:
                    await self.store_alerts(decisions)
                self.alerting.prune()
            except RETRYABLE_ERRORS as exc:
                log.warning("alert housekeeping failed, retrying: %s", exc)
            await first_of(self._stop, changed, timeout=interval)

    async def reject(self, *, channel: str, source: str, payload: bytes | str, reason: str,
                     field_name: str | None = None, farm_id: int | None = None) -> None:
        """Dead-letter a whole message that could not be taken apart (bad body, topic, payload)."""
        self.metrics.items_rejected.labels(channel=channel, reason=field_name or "message").inc()
        await self._store_letters(channel, [letter(channel, source, payload, [{"field": field_name, "error": reason}],
                                                   farm_id)])
