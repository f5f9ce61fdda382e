"""How good the alerts are: a labelled simulated herd through the pipeline, scored against its
ground truth.

The herd's messages go through the same path as over MQTT (topic mapping, validation, alert rules,
the writer) into a scratch database, tick by tick in simulated time; then every alert in
iot.alerts is matched to the injected events of the same cow, zone or device. An event is found
when an alert of its detector began between the event's start and its end plus the detector's
grace (milk detectors wait for the next milkings); an alert is true when it matches an event its
detector answers to (a fever also lowers rumination, mastitis also lowers yield).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec
import numpy as np
from tqdm import tqdm

from . import herd, storage
from .config import Settings
from .pipeline import Origin, Pipeline
from .simulator import utc_floor
from .topics import decode_message


@dataclass(frozen=True)
class Detector:
    name: str
    rules: tuple[str, ...]
    events: tuple[str, ...]  # event kinds the detector answers to; the first is the one it is scored on
    grace: timedelta  # how long after an event ends an alert still counts as finding it
    target: str = ""  # the bar, printed beside the figures


DETECTORS = (
    Detector("oestrus", ("oestrus",), ("oestrus",), timedelta(hours=2), "recall >= 90 %, precision >= 85 %"),
    Detector("mastitis", ("mastitis", "mastitis_yield"), ("mastitis",), timedelta(hours=14),
             "recall >= 80 %, specificity >= 95 %"),
    Detector("fever", ("fever",), ("fever",), timedelta(hours=2), "recall >= 95 %"),
    Detector("heat_stress", ("heat_stress",), ("heat_stress",), timedelta(hours=1), "recall >= 95 %"),
    Detector("rumination", ("rumination_drop",), ("rumination_drop", "fever"), timedelta(hours=3)),
    Detector("milk_yield", ("yield_drop",), ("yield_drop", "mastitis"), timedelta(hours=26)),
    Detector("device_offline", ("device_offline",), ("device_failure",), timedelta(hours=2)),
)
# Individual-health alerts (the alert burden, contract section 7: target <= 2 false per 100 cow-days):
# alerts about a cow in the categories of 0007_builtin_alert_rules.sql that concern her health,
# reproduction or milk. Device (offline, battery, signal) and heat-stress (zone) alerts are not.
INDIVIDUAL_CATEGORIES = frozenset({"reproduction", "health", "mastitis", "production", "anomaly"})
COW_EVENT_KINDS = ("oestrus", "fever", "mastitis", "rumination_drop", "yield_drop")  # what is wrong with a cow
BURDEN_TARGET = 2.0  # false individual-health alerts per 100 cow-days
# Baselines settle over a cow's first day on the farm (analytics.SETTLED_SPAN_S): events that begin
# then are not scored, as a farm would not expect its first day judged against a baseline.
WARM_UP = timedelta(days=1)
TICKS_PER_SUBMISSION = 4  # ticks handed to the pipeline at once (about 10,000 readings for 500 cows)


@dataclass
class Score:
    detector: Detector
    events: int = 0
    found: int = 0
    alerts: int = 0
    true: int = 0
    delays: list[float] | None = None
    specificity: float | None = None

    def line(self) -> str:
        recall = self.found / self.events if self.events else float("nan")
        precision = self.true / self.alerts if self.alerts else float("nan")
        delay = statistics.median(self.delays) if self.delays else float("nan")
        delay_text = "-" if delay != delay else f"{int(delay // 3600)}h{int(delay % 3600 // 60):02d}"
        extra = "" if self.specificity is None else f"  specificity {self.specificity:.1%}"
        return (f"{self.detector.name:<16} {self.events:>6} {self.found:>6} {recall:>8.1%} {self.alerts:>7} "
                f"{self.true:>5} {precision:>9.1%} {delay_text:>13}  {self.detector.target}{extra}")


HEADER = (f"{'detector':<16} {'events':>6} {'found':>6} {'recall':>8} {'alerts':>7} {'true':>5} {'precision':>9} "
          f"{'median delay':>13}")


def _source(event: herd.Event, farm: int) -> str:
    if event.kind == "heat_stress":
        return f"zone:{herd.zone_id(farm, event.zone)}"
    if event.kind == "device_failure":
        return f"device:{herd.collar_uid(farm, event.cow)}"
    return f"animal:{herd.animal_id(farm, event.cow)}"


def _matches(alert: asyncpg.Record, by_source: dict[tuple[str, str], list[herd.Event]],
             kinds: Sequence[str], grace: dict[str, timedelta], end: datetime) -> list[herd.Event]:
    """Events of `kinds` at the alert's source that its episode overlaps (an event of kind k counts
    until its end plus grace[k])."""
    source = f"{alert['source_type']}:{alert['source_id']}"
    until = alert["resolved_at"] or end
    return [e for k in kinds for e in by_source.get((k, source), ())
            if alert["time"] <= e.end + grace[k] and until >= e.start - timedelta(minutes=30)]


def _by_source(events: Sequence[herd.Event], farm: int) -> dict[tuple[str, str], list[herd.Event]]:
    by_source: dict[tuple[str, str], list[herd.Event]] = defaultdict(list)
    for e in events:
        by_source[(e.kind, _source(e, farm))].append(e)
    return by_source


@dataclass
class Burden:
    """False individual-health alerts over the cow-days scored."""

    cow_days: float
    false: dict[str, int]  # per detector (or rule without one), in DETECTORS order, then anomaly, then others
    alerts: int = 0  # individual-health alerts scored

    @property
    def total(self) -> int:
        return sum(self.false.values())

    def per_100(self, n: int) -> float:
        return 100 * n / self.cow_days if self.cow_days > 0 else float("nan")

    def line(self) -> str:
        rate = self.per_100(self.total)
        verdict = "meets" if rate <= BURDEN_TARGET else "MISSES"  # nan (no cow-days) misses
        parts = ", ".join(f"{name} {n} ({self.per_100(n):.2f})" for name, n in self.false.items())
        return (f"false individual-health alerts: {rate:.2f} per 100 cow-days ({self.total} of {self.alerts} cow "
                f"alerts over {self.cow_days:,.0f} cow-days; per detector, count (per 100 cow-days): {parts})  "
                f"target <= {BURDEN_TARGET:g}: {verdict}")


def burden(events: Sequence[herd.Event], alerts: Sequence[asyncpg.Record], farm: int, cows: int,
           start: datetime, end: datetime) -> Burden:
    """False individual-health alerts per 100 cow-days.

    An alert counts when it is about a cow (source_type animal), its category is in
    INDIVIDUAL_CATEGORIES and its episode began in the scoring window (after the warm-up day, before
    the end); it is false when it matches no event its detector answers to (the same matching as
    precision). Rules without a detector (anomaly, a farm's own rules) answer to any health event of
    the cow. The denominator is cows x days of that window.
    """
    by_source = _by_source(events, farm)
    detector_of = {rule: d for d in DETECTORS for rule in d.rules}
    grace = {k: max((d.grace for d in DETECTORS if k in d.events), default=timedelta(0))
             for k in herd.EVENT_KINDS}
    window = start + WARM_UP
    false: dict[str, int] = {d.name: 0 for d in DETECTORS
                             if any(k in COW_EVENT_KINDS for k in d.events)}
    false["anomaly"] = 0
    scored = 0
    for a in alerts:
        if a["source_type"] != "animal" or a["category"] not in INDIVIDUAL_CATEGORIES or not (
                window <= a["time"] <= end):
            continue
        scored += 1
        d = detector_of.get(a["rule_code"])
        name = d.name if d else a["rule_code"]
        kinds = d.events if d else COW_EVENT_KINDS
        if not _matches(a, by_source, kinds, grace if d is None else dict.fromkeys(kinds, d.grace), end):
            false[name] = false.get(name, 0) + 1
    days = max((end - window).total_seconds() / 86_400, 0.0)
    return Burden(cows * days, false, scored)


def score(events: Sequence[herd.Event], alerts: Sequence[asyncpg.Record], farm: int, cows: int,
          start: datetime, end: datetime) -> list[Score]:
    """Recall, precision and median delay per detector; specificity per cow-day for mastitis."""
    by_source = _by_source(events, farm)
    scores = []
    for d in DETECTORS:
        mine = [a for a in alerts if a["rule_code"] in d.rules]
        s = Score(d, delays=[])
        grace = dict.fromkeys(d.events, d.grace)
        scored = [e for e in events if e.kind == d.events[0] and start + WARM_UP <= e.start <= end - d.grace]
        wanted = set(scored)
        found: dict[herd.Event, float] = {}
        for a in mine:
            hits = _matches(a, by_source, d.events, grace, end)
            s.true += bool(hits)
            raised = datetime.fromisoformat(msgspec.json.decode(a["details"])["raised_at"])
            for e in hits:
                if e in wanted:
                    delay = max((raised - e.start).total_seconds(), 0.0)
                    found[e] = min(found.get(e, delay), delay)
        s.events, s.found, s.alerts, s.delays = len(scored), len(found), len(mine), list(found.values())
        if d.name == "mastitis":
            s.specificity = _specificity(events, mine, farm, cows, start, end, d)
        scores.append(s)
    return scores


def _specificity(events: Sequence[herd.Event], alerts: Sequence[asyncpg.Record], farm: int, cows: int,
                 start: datetime, end: datetime, d: Detector) -> float:
    """Share of healthy cow-days (no mastitis event, nor its grace) without a mastitis alert."""
    days = int((end - start).total_seconds() // 86_400)
    day = timedelta(days=1)
    sick = {(e.cow, k) for e in events if e.kind == "mastitis" for k in range(days)
            if e.start < start + (k + 1) * day and start + k * day < e.end + d.grace}
    alarmed = {(int(a["source_id"]) - herd.animal_id(farm, 0), int((a["time"] - start).total_seconds() // 86_400))
               for a in alerts if a["source_type"] == "animal"}
    healthy = [(c, k) for c in range(cows) for k in range(days) if (c, k) not in sick]
    return sum((c, k) not in alarmed for c, k in healthy) / len(healthy) if healthy else float("nan")


async def run(dsn: str, migrations: Path, *, cows: int, days: float, zones: int, interval_s: float, seed: int,
              profile: str | None, ground_truth: Path | None, keep: bool, farm: int = 1,
              events_per_cow_day: float = 0.02) -> list[str]:
    """Simulate, ingest, score; return the printed lines."""
    await storage.drop_database(dsn)
    result = await storage.migrate(dsn, migrations, profile)
    rng = np.random.default_rng(seed)
    end = utc_floor(datetime.now(UTC) - timedelta(minutes=10), int(interval_s))
    start = end - timedelta(days=days)
    state = herd.HerdState(farm, cows, zones, rng)
    events = herd.plan_events(cows, zones, start, end, per_cow_day=events_per_cow_day, rng=rng)
    if ground_truth is not None:
        ground_truth.write_text("".join(msgspec.json.encode(e.as_json(farm)).decode() + "\n" for e in events))
    conn = await asyncpg.connect(dsn)
    try:
        for table, rows in herd.registry_rows(farm, cows, zones, int(interval_s)).items():
            await conn.executemany(herd.REGISTER_SQL[table], rows)
    finally:
        await conn.close()
    pipeline = Pipeline(Settings(dsn=dsn, mqtt_enabled=False), background=False)
    await pipeline.start()
    latencies: list[float] = []
    ticks = int((end - start).total_seconds() // interval_s)
    began = time.perf_counter()
    try:
        in_flight: set[asyncio.Task[None]] = set()
        for first in tqdm(range(1, ticks + 1, TICKS_PER_SUBMISSION), desc="evaluate", unit="submission"):
            messages = [m for k in range(first, min(first + TICKS_PER_SUBMISSION, ticks + 1))
                        for m in herd.messages(state, start + timedelta(seconds=k * interval_s), interval_s, events)]
            if len(in_flight) >= 2:  # two submissions in flight keep the writer busy without a backlog
                _, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            in_flight.add(asyncio.create_task(_submit(pipeline, messages, latencies)))
        await asyncio.gather(*in_flight)
        elapsed = time.perf_counter() - began
        async with pipeline.pool.acquire() as c:
            alerts = await c.fetch("SELECT * FROM iot.alerts ORDER BY time")
            readings = await c.fetchval("SELECT count(*) FROM iot.sensor_data")
    finally:
        await pipeline.stop()
        if not keep:
            await storage.drop_database(dsn)
    lines = [f"{cows} cows, {zones} zones, {days:g} days every {interval_s:g} s, profile {result.profile}: "
             f"{readings:,} readings and {len(events)} labelled events through the pipeline in {elapsed:.0f} s; "
             f"{len(alerts)} alerts",
             f"(events scored: those that begin after the first {WARM_UP.days} day, while baselines settle, and "
             f"early enough to be found before the run ends)", HEADER]
    lines += [s.line() for s in score(events, alerts, farm, cows, start, end)]
    lines.append(burden(events, alerts, farm, cows, start, end).line())
    lines.append(_busiest_hours(alerts, pipeline))
    if latencies:
        latencies.sort()
        lines.append(f"alert latency, submission -> alerts committed (in-process, under this flood), over "
                     f"{len(latencies)} submissions that raised alerts: p50 {_ms(latencies, 0.5)} ms, "
                     f"p99 {_ms(latencies, 0.99)} ms")
    return lines


def _ms(values: list[float], q: float) -> int:
    return round(values[min(int(q * len(values)), len(values) - 1)] * 1000)


def _busiest_hours(alerts: Sequence[asyncpg.Record], pipeline: Pipeline) -> str:
    """Per rule, the most alerts raised in one hour of one farm, against the rule's cap."""
    caps = {r.code: r.max_per_hour for r in pipeline.alerting.rules}
    counts: dict[tuple[str, int, datetime], int] = defaultdict(int)
    for a in alerts:
        raised = datetime.fromisoformat(msgspec.json.decode(a["details"])["raised_at"])
        counts[(a["rule_code"], a["farm_id"], raised.replace(minute=0, second=0, microsecond=0))] += 1
    busiest: dict[str, int] = defaultdict(int)
    for (rule, _, _), n in counts.items():
        busiest[rule] = max(busiest[rule], n)
    return "busiest hour per rule (cap): " + ", ".join(f"{r} {n}/{caps.get(r, '?')}"
                                                      for r, n in sorted(busiest.items()))


EVALUATE = Origin("evaluate", b"")  # the simulator's messages are all valid: nothing to keep of them


async def _submit(pipeline: Pipeline, messages: list[tuple[str, bytes]], latencies: list[float]) -> None:
    """Map and ingest one submission's messages as the MQTT subscriber does; judge silent devices at
    the farm's clock."""
    kinds: dict[str, list] = defaultdict(list)
    for topic, payload in messages:
        mapped = decode_message(topic, payload)
        kinds["sensor"].extend(mapped.readings)
        kinds["milk"].extend(mapped.milk)
        kinds["rfid"].extend(mapped.rfid)
    before = _raised(pipeline)
    started = time.perf_counter()
    await asyncio.gather(*(pipeline.ingest(kind, items, channel="mqtt", origin=EVALUATE)
                           for kind, items in kinds.items() if items))
    silence = pipeline.alerting.check_devices(None, pipeline.registry.current)
    if silence:
        await pipeline.store_alerts(silence)
    if _raised(pipeline) > before:
        latencies.append(time.perf_counter() - started)


def _raised(pipeline: Pipeline) -> float:
    return sum(s.value for s in pipeline.metrics.alerts.collect()[0].samples
               if s.name.endswith("_total") and s.labels["event"] == "raised")
