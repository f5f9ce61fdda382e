"""How good the alerts are: labelled simulated farms through the pipeline, scored against their
ground truth.

Each farm's messages (ingestor/herd.py: a parlour, robots or both, with the confounders and transport
faults of a real farm) go through the same path as over MQTT (topic mapping, validation, alert rules,
the writer) into a scratch database, tick by tick in simulated time; then every alert in iot.alerts
is matched to the labelled events of the same cow, zone or device. An event is found when an alert of
its detector began between the event's start and its end plus the detector's grace (milk detectors
wait for the next milkings); an alert is true when it matches an event its detector answers to (a
fever also lowers rumination and yield). Context events (heat waves, feed changes, regrouping,
breakdowns, fresh cows) are never truths: alerts they cause are false, and counted per context.

`run_matrix` runs several seeds on each farm shape and pools the counts: a detector's figures over
a few hundred events, not one farm's handful.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
from .validation import decode_batch


@dataclass(frozen=True)
class Detector:
    name: str
    rules: tuple[str, ...]
    events: tuple[str, ...]  # event kinds the detector answers to; the first is the one it is scored on
    grace: timedelta  # how long after an event ends an alert still counts as finding it
    target: str = ""  # the bar, printed beside the figures
    min_recall: float | None = None
    min_precision: float | None = None
    min_specificity: float | None = None


MILK_WAIT = timedelta(hours=18)  # a robot cow may come 16 h after her last milking
DETECTORS = (
    Detector("oestrus", ("oestrus",), ("oestrus",), timedelta(hours=2), "SN >= 85 % at PPV >= 85 %", 0.85, 0.85),
    Detector("mastitis", ("mastitis", "mastitis_yield"), ("mastitis",), MILK_WAIT,
             "SN >= 80 % at SP >= 99 % per cow-day", 0.80, None, 0.99),
    Detector("subclinical_mastitis", ("mastitis", "mastitis_yield"), ("subclinical_mastitis", "mastitis"), MILK_WAIT),
    Detector("fever", ("fever",), ("fever",), timedelta(hours=2), "recall >= 95 %", 0.95),
    Detector("heat_stress", ("heat_stress",), ("heat_stress",), timedelta(hours=1), "recall >= 95 %", 0.95),
    Detector("rumination", ("rumination_drop",), ("rumination_drop", "fever"), timedelta(hours=3)),
    Detector("milk_yield", ("yield_drop",), ("yield_drop", "mastitis", "fever", "rumination_drop", "lameness"),
             timedelta(hours=26)),
    Detector("lameness", ("lameness",), ("lameness",), timedelta(days=3), "SN >= 60 %", 0.60),
    Detector("device_offline", ("device_offline",), ("device_failure",), timedelta(hours=2)),
    Detector("stuck_sensor", ("stuck_sensor",), ("stuck_sensor",), timedelta(hours=2)),
)
# Individual-health alerts (the alert burden, contract section 7: target <= 2 false per 100 cow-days):
# alerts about a cow in the categories of 0007_builtin_alert_rules.sql that concern her health,
# reproduction or milk. Device (offline, battery, signal) and heat-stress (zone) alerts are not.
INDIVIDUAL_CATEGORIES = frozenset({"reproduction", "health", "mastitis", "production", "anomaly"})
COW_EVENT_KINDS = ("oestrus", "fever", "mastitis", "subclinical_mastitis", "rumination_drop", "yield_drop",
                   "lameness")  # what is wrong with a cow
BURDEN_TARGET = 2.0  # false individual-health alerts per 100 cow-days
CONTEXT_AFTER = timedelta(days=1)  # a false alert up to a day after a context event is counted in it
# Baselines settle over a cow's first day on the farm (analytics.SETTLED_SPAN_S): events that begin
# then are not scored, as a farm would not expect its first day judged against a baseline.
WARM_UP = timedelta(days=1)
TICKS_PER_SUBMISSION = 4  # ticks handed to the pipeline at once (about 5,000 readings for 200 cows)
DEFAULT_SEEDS = (7, 8, 9)
DEFAULT_SHAPES = ("parlour", "robots")


def _rate(n: int, d: int) -> float:
    return n / d if d else float("nan")


@dataclass
class Score:
    detector: Detector
    events: int = 0
    found: int = 0
    alerts: int = 0
    true: int = 0
    delays: list[float] = field(default_factory=list)
    healthy_days: int = 0  # cow-days without the event (specificity's denominator) ...
    quiet_days: int = 0  # ... and of those, the days without an alert
    weak: int = 0  # oestrus: weak heats scored, and found
    weak_found: int = 0

    @property
    def recall(self) -> float:
        return _rate(self.found, self.events)

    @property
    def precision(self) -> float:
        return _rate(self.true, self.alerts)

    @property
    def specificity(self) -> float | None:
        return _rate(self.quiet_days, self.healthy_days) if self.healthy_days else None

    def verdict(self) -> str:
        """'meets' or 'MISSES' against the detector's bar (nothing when it has none)."""
        d = self.detector
        checks = [(d.min_recall, self.recall), (d.min_precision, self.precision),
                  (d.min_specificity, self.specificity)]
        checks = [(bar, value) for bar, value in checks if bar is not None]
        if not checks:
            return ""
        ok = all(value is not None and value == value and value >= bar for bar, value in checks)
        return "meets" if ok else "MISSES"

    def line(self) -> str:
        delay = statistics.median(self.delays) if self.delays else float("nan")
        delay_text = "-" if delay != delay else f"{int(delay // 3600)}h{int(delay % 3600 // 60):02d}"
        spec = self.specificity
        extra = "" if spec is None else f"  specificity {spec:.2%} per cow-day"
        target = f"  {self.detector.target}: {self.verdict()}" if self.detector.target else ""
        return (f"{self.detector.name:<20} {self.events:>6} {self.found:>6} {self.recall:>8.1%} {self.alerts:>7} "
                f"{self.true:>5} {self.precision:>9.1%} {delay_text:>13}{target}{extra}").rstrip()

    def weak_line(self) -> str:
        return (f"weak heats (activity < {herd.WEAK_HEAT:g}x): found {self.weak_found} of {self.weak} "
                f"({_rate(self.weak_found, self.weak):.1%}); strong heats: found {self.found - self.weak_found} of "
                f"{self.events - self.weak} ({_rate(self.found - self.weak_found, self.events - self.weak):.1%})")

    def add(self, other: Score) -> None:
        for name in ("events", "found", "alerts", "true", "healthy_days", "quiet_days", "weak", "weak_found"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.delays += other.delays


HEADER = (f"{'detector':<20} {'events':>6} {'found':>6} {'recall':>8} {'alerts':>7} {'true':>5} {'precision':>9} "
          f"{'median delay':>13}")


def _source(event: herd.Event, farm: int) -> str:
    if event.kind == "heat_stress":
        return f"zone:{herd.zone_id(farm, event.zone)}"
    if event.kind == "stuck_sensor":
        return f"device:{herd.zone_uid(farm, event.zone)}"
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


def _rule_kinds() -> dict[str, tuple[str, tuple[str, ...], timedelta]]:
    """Per rule: the first detector's name, every kind a detector of the rule answers to, the longest grace."""
    out: dict[str, tuple[str, tuple[str, ...], timedelta]] = {}
    for d in DETECTORS:
        for rule in d.rules:
            name, kinds, grace = out.get(rule, (d.name, (), timedelta(0)))
            out[rule] = (name, tuple(dict.fromkeys((*kinds, *d.events))), max(grace, d.grace))
    return out


@dataclass
class Burden:
    """False individual-health alerts over the cow-days scored."""

    cow_days: float
    false: dict[str, int]  # per detector (or rule without one), in DETECTORS order, then anomaly, then others
    alerts: int = 0  # individual-health alerts scored
    false_at: list[tuple[int, datetime, str]] = field(default_factory=list)  # (cow, began, detector) of each

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

    def add(self, other: Burden) -> None:
        self.cow_days += other.cow_days
        self.alerts += other.alerts
        for name, n in other.false.items():
            self.false[name] = self.false.get(name, 0) + n


def burden(events: Sequence[herd.Event], alerts: Sequence[asyncpg.Record], farm: int, cows: int,
           start: datetime, end: datetime) -> Burden:
    """False individual-health alerts per 100 cow-days.

    An alert counts when it is about a cow (source_type animal), its category is in
    INDIVIDUAL_CATEGORIES and its episode began in the scoring window (after the warm-up day, before
    the end); it is false when it matches no event its detector answers to (the same matching as
    precision; a rule two detectors share answers to both's events). Rules without a detector
    (anomaly, a farm's own rules) answer to any health event of the cow. The denominator is cows x
    days of that window.
    """
    by_source = _by_source(events, farm)
    rules = _rule_kinds()
    grace = {k: max((d.grace for d in DETECTORS if k in d.events), default=timedelta(0))
             for k in herd.EVENT_KINDS}
    window = start + WARM_UP
    false: dict[str, int] = {d.name: 0 for d in DETECTORS
                             if any(k in COW_EVENT_KINDS for k in d.events) and d.name == rules[d.rules[0]][0]}
    false["anomaly"] = 0
    false_at = []
    scored = 0
    for a in alerts:
        if a["source_type"] != "animal" or a["category"] not in INDIVIDUAL_CATEGORIES or not (
                window <= a["time"] <= end):
            continue
        scored += 1
        rule = rules.get(a["rule_code"])
        name, kinds = (rule[0], rule[1]) if rule else (a["rule_code"], COW_EVENT_KINDS)
        if not _matches(a, by_source, kinds, grace if rule is None else dict.fromkeys(kinds, rule[2]), end):
            false[name] = false.get(name, 0) + 1
            false_at.append((int(a["source_id"]) - herd.animal_id(farm, 0), a["time"], name))
    days = max((end - window).total_seconds() / 86_400, 0.0)
    return Burden(cows * days, false, scored, false_at)


def score(events: Sequence[herd.Event], alerts: Sequence[asyncpg.Record], farm: int, cows: int,
          start: datetime, end: datetime, context: Sequence[herd.Event] = ()) -> list[Score]:
    """Recall, precision and median delay per detector; specificity per cow-day for mastitis; weak
    heats apart. `context`'s calvings mark the cow-days a cow was dry (not milked: not scored for
    specificity)."""
    by_source = _by_source(events, farm)
    scores = []
    for d in DETECTORS:
        mine = [a for a in alerts if a["rule_code"] in d.rules]
        s = Score(d)
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
        if d.name == "oestrus":
            weak = [e for e in scored if e.intensity is not None and e.intensity < herd.WEAK_HEAT]
            s.weak, s.weak_found = len(weak), sum(e in found for e in weak)
        if d.min_specificity is not None:
            s.healthy_days, s.quiet_days = _specificity(events, mine, farm, cows, start, end, d, context)
        scores.append(s)
    return scores


def _specificity(events: Sequence[herd.Event], alerts: Sequence[asyncpg.Record], farm: int, cows: int,
                 start: datetime, end: datetime, d: Detector, context: Sequence[herd.Event]) -> tuple[int, int]:
    """(cow-days after the warm-up without the detector's event nor its grace while the cow was milked,
    those of them without an alert of the detector)."""
    days = int((end - start).total_seconds() // 86_400)
    day = timedelta(days=1)
    first = -(-WARM_UP // day)
    sick = {(e.cow, k) for e in events if e.kind == d.events[0] for k in range(days)
            if e.start < start + (k + 1) * day and start + k * day < e.end + d.grace}
    dry = {(e.cow, k) for e in context if e.kind == "fresh_cow" for k in range(days)
           if start + (k + 1) * day <= e.start}
    alarmed = {(int(a["source_id"]) - herd.animal_id(farm, 0), int((a["time"] - start).total_seconds() // 86_400))
               for a in alerts if a["source_type"] == "animal"}
    healthy = [(c, k) for c in range(cows) for k in range(first, days) if (c, k) not in sick and (c, k) not in dry]
    return len(healthy), sum((c, k) not in alarmed for c, k in healthy)


@dataclass
class ContextBurden:
    """False individual-health alerts during each kind of context event (or the day after it), and the
    cow-days those covered; and outside any."""

    false: dict[str, int] = field(default_factory=lambda: dict.fromkeys((*herd.CONTEXT_KINDS, "none"), 0))
    cow_days: dict[str, float] = field(default_factory=lambda: dict.fromkeys((*herd.CONTEXT_KINDS, "none"), 0.0))
    detectors: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))  # context -> by detector

    def line(self) -> str:
        parts = []
        for kind in (*herd.CONTEXT_KINDS, "none"):
            days = self.cow_days[kind]
            rate = 100 * self.false[kind] / days if days else float("nan")
            which = ", ".join(f"{name} {n}" for name, n in self.detectors[kind].most_common())
            parts.append(f"{'outside any' if kind == 'none' else kind} {self.false[kind]} over {days:,.0f} cow-days "
                         f"({rate:.2f} per 100{': ' + which if which else ''})")
        return "false individual-health alerts by context (during it or the day after): " + ", ".join(parts)

    def add(self, other: ContextBurden) -> None:
        for kind in self.false:
            self.false[kind] += other.false[kind]
            self.cow_days[kind] += other.cow_days[kind]
            self.detectors[kind].update(other.detectors[kind])


def _affected(e: herd.Event, state: herd.HerdState) -> np.ndarray:
    """The cows a context event is about."""
    if e.cow is not None:
        return np.array([e.cow])
    if e.kind == "breakdown":
        return np.flatnonzero(state.robot == e.robot) if e.robot is not None else np.flatnonzero(state.in_parlour)
    if e.pen is not None:
        return np.flatnonzero(state.pen == e.pen)
    return np.arange(state.cows)


def context_burden(b: Burden, context: Sequence[herd.Event], state: herd.HerdState, start: datetime,
                   end: datetime) -> ContextBurden:
    """Which context each false alert fell in (a cow's alert in a context that concerns her), and the
    cow-days each context covered in the scoring window."""
    window = start + WARM_UP
    spans: dict[str, dict[int, list[tuple[datetime, datetime]]]] = defaultdict(lambda: defaultdict(list))
    for e in context:
        begin = e.start - timedelta(days=1) if e.kind == "fresh_cow" else e.start  # the day before calving
        a, b2 = max(begin, window), min(e.end + CONTEXT_AFTER, end)
        if a < b2:
            for c in _affected(e, state).tolist():
                spans[e.kind][c].append((a, b2))
    out = ContextBurden()
    covered: dict[int, list[tuple[datetime, datetime]]] = defaultdict(list)
    for kind, by_cow in spans.items():
        for c, intervals in by_cow.items():
            merged = _merge(intervals)
            out.cow_days[kind] += sum((y - x).total_seconds() for x, y in merged) / 86_400
            covered[c] += merged
    total = state.cows * max((end - window).total_seconds(), 0.0) / 86_400
    out.cow_days["none"] = total - sum(sum((y - x).total_seconds() for x, y in _merge(v)) / 86_400
                                       for v in covered.values())
    for cow, at, detector in b.false_at:
        kinds = [k for k, by_cow in spans.items() if any(x <= at <= y for x, y in by_cow.get(cow, ()))]
        for k in kinds or ["none"]:
            out.false[k] += 1
            out.detectors[k][detector] += 1
    return out


def _merge(intervals: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for a, b in sorted(intervals):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


@dataclass
class RunResult:
    shape: str
    seed: int
    lines: list[str]
    scores: list[Score]
    burden: Burden
    context: ContextBurden
    seconds: float


def _describe(state: herd.HerdState) -> str:
    parlour = int(state.in_parlour.sum())
    parts = []
    if parlour:
        parts.append(f"{parlour} cows in a parlour {state.milkings}x a day")
    if state.robots:
        parts.append(f"{state.cows - parlour} on {state.robots} robots")
    return f"{state.shape}: " + " and ".join(parts) + f", {state.pens} pens"


async def run(dsn: str, migrations: Path, *, cows: int, days: float, zones: int, interval_s: float, seed: int,
              profile: str | None, ground_truth: Path | None, keep: bool, shape: str = "parlour", farm: int = 1,
              events_per_cow_day: float | None = None, fahrenheit: int = 2) -> RunResult:
    """Simulate one farm, ingest, score. `events_per_cow_day` replaces the literature's rates of the
    health and device events (herd.HerdState.plan); ground truth is appended to `ground_truth`."""
    began = time.perf_counter()
    await storage.drop_database(dsn)
    result = await storage.migrate(dsn, migrations, profile)
    rng = np.random.default_rng((seed, herd.SHAPES.index(shape)))  # each shape its own farm and year
    end = utc_floor(datetime.now(UTC) - timedelta(minutes=10), int(interval_s))
    start = end - timedelta(days=days)
    state = herd.HerdState(farm, cows, zones, rng, shape=shape, milkings=None, fahrenheit=fahrenheit)
    plan = state.plan(start, end, per_cow_day=events_per_cow_day)
    truth, context = plan.truth, plan.context
    if ground_truth is not None:
        with ground_truth.open("a") as out:
            for e in plan.everything():
                row = {**e.as_json(farm), "seed": seed, "shape": shape, "context": e.kind in herd.CONTEXT_KINDS}
                out.write(msgspec.json.encode(row).decode() + "\n")
    conn = await asyncpg.connect(dsn)
    try:
        for table, rows in herd.registry_rows(farm, cows, zones, int(interval_s), state).items():
            await conn.executemany(herd.REGISTER_SQL[table], rows)
    finally:
        await conn.close()
    pipeline = Pipeline(Settings(dsn=dsn, mqtt_enabled=False), background=False)
    await pipeline.start()
    latencies: list[float] = []
    ticks = int((end - start).total_seconds() // interval_s)
    messages_sent = 0
    # Calvings during the run reach the registry as a farmer records them in Odoo, a few hours after.
    calvings = sorted((e.start + CALVING_RECORDED, e.cow) for e in context if e.kind == "fresh_cow" and e.start > start)
    try:
        in_flight: set[asyncio.Task[None]] = set()
        for first in tqdm(range(1, ticks + 1, TICKS_PER_SUBMISSION), desc=f"evaluate {shape} seed {seed}",
                          unit="submission", leave=False):
            now = start + timedelta(seconds=first * interval_s)
            if calvings and calvings[0][0] <= now:
                await asyncio.gather(*in_flight)  # what was sent before the calving was recorded is judged so
                in_flight.clear()
                await _record_calvings(pipeline, farm, [c for at, c in calvings if at <= now], plan)
                calvings = [(at, c) for at, c in calvings if at > now]
            messages = [m for k in range(first, min(first + TICKS_PER_SUBMISSION, ticks + 1))
                        for m in state.messages(start + timedelta(seconds=k * interval_s), interval_s, plan)]
            messages_sent += len(messages)
            if len(in_flight) >= 2:  # two submissions in flight keep the writer busy without a backlog
                _, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            in_flight.add(asyncio.create_task(_submit(pipeline, messages, latencies)))
        await asyncio.gather(*in_flight)
        ingested = time.perf_counter() - began
        async with pipeline.pool.acquire() as c:
            alerts = await c.fetch("SELECT * FROM iot.alerts ORDER BY time")
            readings = await c.fetchval("SELECT count(*) FROM iot.sensor_data")
    finally:
        await pipeline.stop()
        if not keep:
            await storage.drop_database(dsn)
    scores = score(truth, alerts, farm, cows, start, end, context)
    b = burden(truth, alerts, farm, cows, start, end)
    ctx = context_burden(b, context, state, start, end)
    skewed = int((state.skew_s != 0).sum())
    lines = [f"seed {seed}, {cows} cows ({_describe(state)}), {zones} zones, {days:g} days every {interval_s:g} s, "
             f"profile {result.profile}: {messages_sent:,} messages, {readings:,} readings stored, "
             f"{len(plan) + len(plan.ongoing)} labelled events and {len(context)} context events; {len(alerts)} alerts",
             f"network: {state.delayed:,} messages delivered 1-6 h late, {state.duplicated:,} twice, {skewed} collar "
             f"clocks 1-10 min off, {int(state.fahrenheit.sum())} collars in degF over HTTP",
             f"(events scored: those that begin after the first {WARM_UP.days} day, while baselines settle, and "
             f"early enough to be found before the run ends)", HEADER]
    lines += [s.line() for s in scores]
    lines += [s.weak_line() for s in scores if s.detector.name == "oestrus"]
    lines += [b.line(), ctx.line(), _busiest_hours(alerts, pipeline)]
    if latencies:
        latencies.sort()
        lines.append(f"alert latency, submission -> alerts committed (in-process, under this flood), over "
                     f"{len(latencies)} submissions that raised alerts: p50 {_ms(latencies, 0.5)} ms, "
                     f"p99 {_ms(latencies, 0.99)} ms")
    seconds = time.perf_counter() - began
    lines.append(f"elapsed: {seconds:.0f} s ({ingested:.0f} s to simulate and ingest)")
    return RunResult(shape, seed, lines, scores, b, ctx, seconds)


def pooled(results: Sequence[RunResult]) -> list[str]:
    """One table over runs: events, found, alerts and true summed per detector, burden over all cow-days."""
    scores = [Score(d) for d in DETECTORS]
    b = Burden(0.0, {})
    ctx = ContextBurden()
    for r in results:
        for total, s in zip(scores, r.scores, strict=True):
            total.add(s)
        b.add(r.burden)
        ctx.add(r.context)
    runs = ", ".join(f"{r.shape} {r.seed}" for r in results)
    seconds = sum(r.seconds for r in results)
    lines = [f"pooled over {len(results)} runs ({runs}) in {seconds:.0f} s:", HEADER]
    lines += [s.line() for s in scores]
    lines += [s.weak_line() for s in scores if s.detector.name == "oestrus"]
    lines += [b.line(), ctx.line()]
    return lines


async def run_matrix(dsn: str, migrations: Path, *, seeds: Sequence[int] = DEFAULT_SEEDS,
                     shapes: Sequence[str] = DEFAULT_SHAPES, echo: Callable[[list[str]], None] | None = None,
                     ground_truth: Path | None = None, **kwargs) -> list[str]:
    """Every seed on every shape (`run`'s keyword arguments otherwise); each run's lines to `echo` as
    it ends; return the pooled table's lines."""
    if ground_truth is not None:
        ground_truth.write_text("")
    results = []
    for shape in shapes:
        for seed in seeds:
            r = await run(dsn, migrations, seed=seed, shape=shape, ground_truth=ground_truth, **kwargs)
            results.append(r)
            if echo is not None:
                echo(r.lines)
    return pooled(results)


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


CALVING_RECORDED = timedelta(hours=6)


async def _record_calvings(pipeline: Pipeline, farm: int, cows: list[int], plan: herd.Plan) -> None:
    """The calving dates of `cows` into iot.animals, as Odoo's push writes them, and the registry
    reloaded (the running ingestor's listener would do that within a second)."""
    wanted = set(cows)
    calved = {e.cow: e.start.date() for e in plan.context if e.kind == "fresh_cow" and e.cow in wanted}
    async with pipeline.pool.acquire() as conn:
        await conn.executemany("UPDATE iot.animals SET calving_date = $2, updated_at = now() WHERE id = $1",
                               [(herd.animal_id(farm, c), day) for c, day in calved.items()])
        await pipeline.registry.refresh(conn)


EVALUATE = Origin("evaluate", b"")  # the simulator's messages are all valid: nothing to keep of them


async def _submit(pipeline: Pipeline, messages: list[tuple[str, bytes]], latencies: list[float]) -> None:
    """Map and ingest one submission's messages as the MQTT subscriber (and, for a reading batch, the
    HTTP endpoint) does; judge silent devices at the farm's clock."""
    kinds: dict[str, list] = defaultdict(list)
    for topic, payload in messages:
        if topic == herd.SENSOR_BATCH:
            items, _ = decode_batch(payload)
            kinds["sensor"].extend(items)
            continue
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
