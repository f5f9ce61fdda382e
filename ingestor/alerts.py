"""Alert rules and the engine that judges them: when a rule's conditions hold for a source (a cow, a
zone, a device), for long enough, an alert is raised; when they clear, it resolves. Suppression and
a cap per rule, farm and hour keep one noisy source or rule from flooding the farm manager.

`Engine` is a pure state machine over signals; `Alerting` feeds it from validated rows (signals
from `analytics.Signals`) and turns what it decides into `iot.alerts` rows. Alert ids are derived
from the rule, the source and the time the episode began, so judging the same readings again after
a restart yields the same ids, which the alerts table's unique key stores once.
"""

from __future__ import annotations

import logging
import operator
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import msgspec

from .analytics import SIGNALS, Signals
from .registry import Registry
from .tables import MILK_PRODUCTION, SENSOR_DATA
from .topics import ALERT_TOPIC

log = logging.getLogger(__name__)

OPERATORS: dict[str, Callable[[float, float], bool]] = {">": operator.gt, ">=": operator.ge, "<": operator.lt,
                                                        "<=": operator.le}
ANY_METRIC = "*"  # a condition on every metric: one episode per (source, metric)
DEVICE_SIGNALS = frozenset({"battery", "signal_strength", "missed_intervals"})
# Status messages store battery and signal as readings too: they are the device's state (judged by
# the device rules), not a series with a baseline (a battery losing 1 % would look like a jump).
DEVICE_METRICS = frozenset({"battery_level", "signal_strength"})
SignalMap = Mapping[tuple[str, str | None], float]  # (signal, metric) -> value, e.g. ("zscore", "activity_index")


@dataclass(frozen=True)
class Condition:
    signal: str  # one of analytics.SIGNALS
    metric: str | None  # None for source-level signals (thi, battery ...), "*" for every metric
    op: str
    threshold: float

    def holds(self, signals: SignalMap, metric: str | None = None) -> bool:
        """Whether the condition holds (not while its signal is unknown); `metric` stands in for "*"."""
        return _check(self)(signals, metric)

    def describe(self, signals: SignalMap, metric: str | None = None) -> str:
        name = metric if self.metric == ANY_METRIC else self.metric
        value = signals.get((self.signal, name))
        what = self.signal if name is None else (name if self.signal == "value" else f"{name} {self.signal}")
        return f"{what} {'?' if value is None else f'{value:.4g}'} {self.op} {self.threshold:g}"


@dataclass(frozen=True)
class Rule:
    code: str
    category: str
    severity: str
    conditions: tuple[Condition, ...]
    combine: str = "and"
    duration_s: float = 0.0
    suppression_s: float = 3600.0
    max_per_hour: int = 10
    auto_resolve: bool = True
    name: str = ""
    farm_id: int | None = None
    zone_id: int | None = None
    animal_id: int | None = None
    device_type: str | None = None

    # holds(signals, metric=None): the verdict, compiled from the conditions (rules run for every reading)
    holds: Callable[..., bool] = field(init=False, repr=False, compare=False)
    scoped: bool = field(init=False, repr=False, compare=False)  # limited to a farm, zone, animal or device type

    def __post_init__(self) -> None:
        object.__setattr__(self, "holds", _compile(self.conditions, self.combine))
        object.__setattr__(self, "scoped", any(x is not None for x in (self.farm_id, self.zone_id, self.animal_id,
                                                                       self.device_type)))

    @property
    def on_device(self) -> bool:
        """Judged per device (battery, signal, silence) rather than per cow or zone."""
        return any(c.signal in DEVICE_SIGNALS for c in self.conditions)

    @property
    def any_metric(self) -> bool:
        return any(c.metric == ANY_METRIC for c in self.conditions)

    @property
    def metrics(self) -> frozenset[str]:
        """The metrics whose readings can change the rule's verdict (THI follows its inputs)."""
        names = {c.metric for c in self.conditions if c.metric not in (None, ANY_METRIC)}
        if any(c.signal == "thi" for c in self.conditions):
            names |= {"temperature_c", "humidity_percent"}
        return frozenset(names)

    def applies(self, farm_id: int, zone_id: int | None, animal_id: int | None, device_type: str | None) -> bool:
        return ((self.farm_id is None or self.farm_id == farm_id) and (self.zone_id is None or self.zone_id == zone_id)
                and (self.animal_id is None or self.animal_id == animal_id)
                and (self.device_type is None or self.device_type == device_type))

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Rule:
        """A rule as stored in iot.alert_rules; ValueError naming what is wrong with a bad one."""
        conditions = row["conditions"]
        if isinstance(conditions, str):
            conditions = msgspec.json.decode(conditions)
        if not conditions:
            raise ValueError("a rule needs at least one condition")
        parsed = []
        for c in conditions:
            if c.get("signal") not in SIGNALS:
                raise ValueError(f"unknown signal {c.get('signal')!r} (one of {', '.join(SIGNALS)})")
            if c.get("op") not in OPERATORS:
                raise ValueError(f"unknown operator {c.get('op')!r} (one of {' '.join(OPERATORS)})")
            parsed.append(Condition(c["signal"], c.get("metric") or None, c["op"], float(c["value"])))
        if row["combine"] not in ("and", "or"):
            raise ValueError(f"combine must be 'and' or 'or', not {row['combine']!r}")
        return cls(row["code"], row["category"], row["severity"], tuple(parsed), row["combine"],
                   float(row["duration_s"]), float(row["suppression_s"]), int(row["max_per_hour"]),
                   bool(row["auto_resolve"]), row.get("name") or row["code"], row.get("farm_id"), row.get("zone_id"),
                   row.get("animal_id"), row.get("device_type"))


def _check(c: Condition) -> Callable[..., bool]:
    """One condition as a closure over its key, operator and threshold: rules run for every reading."""
    op, threshold = OPERATORS[c.op], c.threshold
    if c.metric == ANY_METRIC:
        signal = c.signal

        def any_metric(signals: SignalMap, metric: str | None = None) -> bool:
            value = signals.get((signal, metric))
            return value is not None and op(value, threshold)
        return any_metric
    key = (c.signal, c.metric)

    def fixed(signals: SignalMap, metric: str | None = None) -> bool:  # metric: one signature for all checks
        value = signals.get(key)
        return value is not None and op(value, threshold)
    return fixed


def _compile(conditions: tuple[Condition, ...], combine: str) -> Callable[..., bool]:
    """A rule's verdict over its conditions (a condition whose signal is not known yet does not hold)."""
    if len(conditions) > 1 and len({(c.signal, c.metric) for c in conditions}) == 1:
        return _band(conditions, combine)
    checks = tuple(_check(c) for c in conditions)
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:  # the common pair, without a generator per call
        a, b = checks
        if combine == "or":
            return lambda signals, metric=None: a(signals, metric) or b(signals, metric)
        return lambda signals, metric=None: a(signals, metric) and b(signals, metric)
    if combine == "or":
        return lambda signals, metric=None: any(check(signals, metric) for check in checks)
    return lambda signals, metric=None: all(check(signals, metric) for check in checks)


def _band(conditions: tuple[Condition, ...], combine: str) -> Callable[..., bool]:
    """Conditions on one signal (z <= -5 or z >= 5): the signal is looked up once."""
    signal, fixed = conditions[0].signal, conditions[0].metric
    tests = tuple((OPERATORS[c.op], c.threshold) for c in conditions)
    join = any if combine == "or" else all
    if len(tests) == 2 and combine == "or":  # the usual band, outside or inside two thresholds
        (op1, t1), (op2, t2) = tests

        def either(signals: SignalMap, metric: str | None = None) -> bool:
            value = signals.get((signal, metric if fixed == ANY_METRIC else fixed))
            return value is not None and (op1(value, t1) or op2(value, t2))
        return either

    def band(signals: SignalMap, metric: str | None = None) -> bool:
        value = signals.get((signal, metric if fixed == ANY_METRIC else fixed))
        return value is not None and join(op(value, threshold) for op, threshold in tests)
    return band


@dataclass(frozen=True)
class Raised:
    alert_id: str
    rule: Rule
    source: str
    time: float  # when the episode began (the conditions first held)
    raised_at: float


@dataclass(frozen=True)
class Resolved:
    alert_id: str
    rule: Rule
    source: str
    time: float  # when the episode began: with alert_id, the alert row's key
    resolved_at: float


@dataclass
class _Episode:
    since: float | None = None  # when the conditions started to hold, while they do
    alert_id: str | None = None  # the open alert, if one was raised
    ended: float | None = None  # when the last alert of this source resolved


def alert_id(rule_code: str, source: str, since: float) -> str:
    return f"{rule_code}:{source}:{int(since)}"


def source_of(rule_code: str, alert: str) -> str:
    """The source part of an alert id (sources themselves contain ':')."""
    return alert[len(rule_code) + 1:alert.rindex(":")]


@dataclass
class Engine:
    """Judges rules per source; remembers episodes, suppression and each cap's hourly count."""

    episodes: dict[tuple[str, str], _Episode] = field(default_factory=dict)
    _raised: dict[object, deque[float]] = field(default_factory=dict)
    suppressed: int = 0  # alerts not raised because of a cap

    def evaluate(self, rule: Rule, source: str, t: float, signals: SignalMap, *, metric: str | None = None,
                 cap: object = None) -> list[Raised | Resolved]:
        """Judge `rule` for `source` at `t`; `cap` names the group sharing the rule's hourly cap
        (default: the rule)."""
        key = (rule.code, source)
        episode = self.episodes.get(key)
        if not rule.holds(signals, metric):
            if episode is None:
                return []  # the common case: nothing holds, nothing open, nothing to remember
            episode.since = None
            if episode.alert_id is not None and rule.auto_resolve:
                resolved = Resolved(episode.alert_id, rule, source, _since_of(episode.alert_id), t)
                episode.alert_id, episode.ended = None, t
                return [resolved]
            return []
        if episode is None:
            episode = self.episodes[key] = _Episode()
        if episode.since is None:
            episode.since = t
        if (episode.alert_id is not None or t - episode.since < rule.duration_s
                or (episode.ended is not None and t - episode.ended < rule.suppression_s)):
            return []
        recent = self._raised.setdefault(rule.code if cap is None else cap, deque())
        while recent and recent[0] <= t - 3600:
            recent.popleft()
        if len(recent) >= rule.max_per_hour:
            self.suppressed += 1
            return []
        recent.append(t)
        episode.alert_id = alert_id(rule.code, source, episode.since)
        return [Raised(episode.alert_id, rule, source, episode.since, t)]

    def resolved_elsewhere(self, rule_code: str, source: str, t: float) -> None:
        """An alert resolved by a person (in Odoo): no new one for this source within the suppression,
        and a later one is a new episode (with a new id)."""
        episode = self.episodes.setdefault((rule_code, source), _Episode())
        episode.alert_id, episode.ended, episode.since = None, t, None

    def restore(self, rule_code: str, source: str, since: float, open_id: str | None, ended: float | None) -> None:
        """Take up an episode stored before a restart: an open alert, or the end of a resolved one."""
        episode = self.episodes.setdefault((rule_code, source), _Episode())
        if open_id is not None:
            episode.since, episode.alert_id = since, open_id
        elif ended is not None and (episode.ended is None or ended > episode.ended):
            episode.ended = ended

    def open_alert(self, rule_code: str, source: str) -> str | None:
        episode = self.episodes.get((rule_code, source))
        return None if episode is None else episode.alert_id

    def prune(self, t: float, longest_suppression_s: float) -> None:
        """Forget episodes that hold nothing any more: no open alert, not holding, suppression over."""
        stale = [k for k, e in self.episodes.items() if e.alert_id is None and e.since is None
                 and (e.ended is None or t - e.ended > longest_suppression_s)]
        for k in stale:
            del self.episodes[k]


def _since_of(alert: str) -> float:
    return float(alert.rsplit(":", 1)[1])


# --- from validated rows to alerts --------------------------------------------------------------

ALERT_COLUMNS = ("time", "alert_id", "rule_code", "farm_id", "severity", "category", "source_type", "source_id",
                 "animal_id", "zone_id", "message", "details", "status")

_S = {c: SENSOR_DATA.index(c) for c in ("time", "device_uid", "device_type", "farm_id", "metric_name",
                                         "metric_value", "animal_id", "zone_id", "battery_level", "signal_strength")}
_M = {c: MILK_PRODUCTION.index(c) for c in ("time", "milk_meter_id", "animal_id", "farm_id")}
# What a milking session says about the cow, as metrics the rules can name.
MILK_METRICS = {c: MILK_PRODUCTION.index(c) for c in ("yield_kg", "conductivity_ms", "somatic_cell_count",
                                                     "blood_detected", "mastitis_risk_score", "flow_rate_kg_min")}
_time_of, _uid_of = itemgetter(_S["time"]), itemgetter(_S["device_uid"])


@dataclass(frozen=True)
class _Subject:
    """Who a source is, for the alert row and its message."""

    farm_id: int
    source_type: str  # animal, zone, device
    source_id: str
    animal_id: int | None
    zone_id: int | None
    device_uid: str
    device_type: str | None


@dataclass
class Decisions:
    """What one batch changed: alert rows to insert, and alerts to resolve as (alert_id, time,
    resolved_at, farm_id, severity, category)."""

    raised: list[tuple] = field(default_factory=list)
    resolved: list[tuple] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.raised or self.resolved)


class Alerting:
    """Rules judged on every validated batch as it flows, with each source's signals in memory.

    Readings are folded into signals in arrival order; only rules that name a reading's metric (or
    every metric) are judged on it, and a device's battery and signal rules only when either changed.
    """

    def __init__(self, rules: Iterable[Rule] = ()) -> None:
        self.signals = Signals()
        self.engine = Engine()
        self.rules: tuple[Rule, ...] = ()
        self._subjects: dict[str, _Subject] = {}
        self._device_state: dict[str, tuple[int | None, int | None]] = {}  # uid -> (battery, signal)
        self._names: dict[str, dict[object, str]] = {"animal": {}, "zone": {}, "device": {}}
        self._any_sources: set[str] = set()  # sources with an episode of an every-metric rule going
        self.last_seen: dict[str, tuple[float, int]] = {}  # device uid -> (newest reading time, farm)
        self.clock: dict[int, float] = {}  # farm -> newest reading time: "now" in the farm's data
        self._received: dict[int, float] = {}  # farm -> wall time its clock last moved
        self.set_rules(rules)

    def set_rules(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)
        self._by_metric: dict[str, list[Rule]] = {}
        for rule in self.rules:
            if rule.on_device:
                continue
            for metric in rule.metrics:
                self._by_metric.setdefault(metric, []).append(rule)
        self._any_metric = tuple(r for r in self.rules if r.any_metric and not r.on_device)
        self._device_rules = tuple(r for r in self.rules if r.on_device and not any(
            c.signal == "missed_intervals" for c in r.conditions))
        self._silence_rules = tuple(r for r in self.rules if any(c.signal == "missed_intervals" for c in r.conditions))
        self.signals.wanted = frozenset(c.signal for r in self.rules for c in r.conditions)
        self.longest_suppression_s = max((r.suppression_s for r in self.rules), default=3600.0)

    # --- sources ------------------------------------------------------------------------------

    def _subject(self, source: str, farm: int, animal: int | None, zone: int | None, uid: str,
                 device_type: str | None) -> _Subject:
        subject = self._subjects.get(source)
        if subject is None:
            kind, _, ident = source.partition(":")
            subject = self._subjects[source] = _Subject(farm, kind, ident, animal, zone, uid, device_type)
        return subject

    # --- judging --------------------------------------------------------------------------------

    def observe_readings(self, rows: Sequence[tuple], registry: Registry) -> Decisions:
        """Fold a batch of sensor_data rows into the signals and judge the rules they touch.

        The loop runs for every reading that arrives: a rule is judged only when it holds or has an
        episode going, and a device's battery and signal rules only when either changed."""
        out = Decisions()
        if not self.rules:
            return out
        by_metric, any_metric, fold = self._by_metric, self._any_metric, self.signals.fold
        episodes, any_open = self.engine.episodes, self._any_sources
        animals, zones, devices = self._names["animal"], self._names["zone"], self._names["device"]
        ui, ki, mi, vi, ai, zi = (_S[c] for c in ("device_uid", "device_type", "metric_name", "metric_value",
                                                   "animal_id", "zone_id"))
        for row, t in zip(rows, map(datetime.timestamp, map(_time_of, rows)), strict=True):
            animal, zone, uid = row[ai], row[zi], row[ui]
            source = (animals.get(animal) if animal is not None else zones.get(zone) if zone is not None
                      else devices.get(uid))
            if source is None:
                source = self._new_source(animal, zone, uid, row)
            metric = row[mi]
            if metric in DEVICE_METRICS:
                continue
            signals = fold(source, t, metric, row[vi])
            for rule in by_metric.get(metric, ()):
                if rule.holds(signals) or (rule.code, source) in episodes:
                    self._judge(rule, source, t, signals, None, out, row[ki], registry)
            for rule in any_metric:
                if rule.holds(signals, metric) or source in any_open:
                    self._judge(rule, f"{source}:{metric}", t, signals, metric, out, row[ki], registry,
                                subject_of=source)
        self._note_devices(rows, out, registry)
        return out

    def _new_source(self, animal: int | None, zone: int | None, uid: str, row: tuple) -> str:
        """Name the source a reading tells about (its cow, else its zone, else its device) once."""
        kind, ident = ("animal", animal) if animal is not None else ("zone", zone) if zone is not None else (
            "device", uid)
        source = self._names[kind][ident] = f"{kind}:{ident}"
        self._subject(source, row[_S["farm_id"]], animal, zone, uid, row[_S["device_type"]])
        return source

    def observe_milk(self, rows: Sequence[tuple], registry: Registry) -> Decisions:
        """Fold milking sessions (yield, conductivity, SCC, blood ...) per cow and judge their rules."""
        out = Decisions()
        if not self.rules:
            return out
        ti, mi, ai, fi = _M.values()
        for row in rows:
            animal, meter, farm = row[ai], row[mi], row[fi]
            source = f"animal:{animal}" if animal is not None else f"device:{meter}"
            self._subject(source, farm, animal, None, meter, "milk_meter")
            t = row[ti].timestamp()
            touched: dict[str, Rule] = {}
            signals: SignalMap = {}
            for metric, index in MILK_METRICS.items():
                value = row[index]
                if value is None:
                    continue
                signals = self.signals.fold(source, t, metric, float(value))
                touched.update((r.code, r) for r in self._by_metric.get(metric, ()))
            for rule in touched.values():
                self._judge(rule, source, t, signals, None, out, "milk_meter", registry)
        return out

    def check_devices(self, now: float | None, registry: Registry) -> Decisions:
        """Judge every device seen so far at its farm's clock: silence (missed intervals), and the
        battery and signal rules that need time to pass (a duration). The farm's clock is its newest
        reading, moved on by the wall clock (`now`) since that reading arrived, so that a farm gone
        silent as a whole still has its devices found offline."""
        out = Decisions()
        for uid, (seen, farm) in self.last_seen.items():
            clock = self.clock.get(farm, seen)
            if now is not None:
                clock += max(0.0, now - self._received.get(farm, now))
            device = registry.devices.get(uid)
            interval = device.expected_interval_s if device is not None else 300
            source = f"device:{uid}"
            signals = self.signals.set(source, "missed_intervals", (clock - seen) / interval)
            subject = self._subject(source, farm, device and device.animal_id, device and device.zone_id, uid,
                                    device and device.device_type)
            for rule in self._silence_rules + self._device_rules:
                if rule.applies(farm, subject.zone_id, subject.animal_id, subject.device_type):
                    self._decide(self.engine.evaluate(rule, source, clock, signals, cap=(rule.code, farm)),
                                 signals, None, out, registry)
        return out

    def prune(self) -> None:
        """Forget what no longer matters: episodes over and out of their suppression."""
        self.engine.prune(self.horizon, self.longest_suppression_s)
        codes = {r.code for r in self._any_metric}
        self._any_sources = {source.rsplit(":", 1)[0] for code, source in self.engine.episodes if code in codes}

    @property
    def horizon(self) -> float:
        """The newest data time seen from any farm: what "now" is for forgetting old episodes."""
        return max(self.clock.values(), default=0.0)

    def _note_devices(self, rows: Sequence[tuple], out: Decisions, registry: Registry) -> None:
        """Per device, its newest row of the batch: when it was last seen, the farm's clock, and its
        battery and signal, judged by the device rules when either changed."""
        newest = dict(zip(map(_uid_of, rows), rows, strict=True))  # rows of a device arrive in time order
        seen, clock, wall, states = self.last_seen, self.clock, time.time(), self._device_state
        ti, fi, ki, ai, zi, bi, si = (_S[c] for c in ("time", "farm_id", "device_type", "animal_id", "zone_id",
                                                      "battery_level", "signal_strength"))
        for uid, row in newest.items():
            t, farm = row[ti].timestamp(), row[fi]
            before = seen.get(uid)
            if before is None or t > before[0]:
                seen[uid] = (t, farm)
            if t > clock.get(farm, 0.0):
                clock[farm] = t
                self._received[farm] = wall
            state = (row[bi], row[si])
            if state != (None, None) and states.get(uid) != state and self._device_rules:
                states[uid] = state
                self._judge_device(uid, farm, row[ki], row[ai], row[zi], t, *state, out, registry)

    def _judge_device(self, uid: str, farm: int, device_type: str, animal: int | None, zone: int | None, t: float,
                      battery: int | None, signal: int | None, out: Decisions, registry: Registry) -> None:
        source = f"device:{uid}"
        self._subject(source, farm, animal, zone, uid, device_type)
        signals: SignalMap = {}
        if battery is not None:
            signals = self.signals.set(source, "battery", battery)
        if signal is not None:
            signals = self.signals.set(source, "signal_strength", signal)
        for rule in self._device_rules:
            self._judge(rule, source, t, signals, None, out, device_type, registry)

    def _judge(self, rule: Rule, source: str, t: float, signals: SignalMap, metric: str | None, out: Decisions,
               device_type: str | None, registry: Registry, *, subject_of: str | None = None) -> None:
        subject = self._subjects[subject_of or source]
        if rule.scoped and not rule.applies(subject.farm_id, subject.zone_id, subject.animal_id, device_type):
            return
        decided = self.engine.evaluate(rule, source, t, signals, metric=metric, cap=(rule.code, subject.farm_id))
        if subject_of is not None and (rule.code, source) in self.engine.episodes:
            self._any_sources.add(subject_of)
            self._subjects.setdefault(source, subject)
        if decided:
            self._decide(decided, signals, metric, out, registry)

    def _decide(self, decided: list[Raised | Resolved], signals: SignalMap, metric: str | None, out: Decisions,
                registry: Registry) -> None:
        for d in decided:
            subject, rule = self._subjects[d.source], d.rule
            if isinstance(d, Resolved):
                out.resolved.append((d.alert_id, _at(d.time), _at(d.resolved_at), subject.farm_id, rule.severity,
                                     rule.category))
                continue
            who = (registry.animal_names.get(subject.animal_id, f"animal {subject.animal_id}")
                   if subject.source_type == "animal" else f"{subject.source_type} {subject.source_id}")
            holding = [c.describe(signals, metric) for c in rule.conditions if c.holds(signals, metric)]
            details = {"device_uid": subject.device_uid, "conditions": holding,
                       "raised_at": _at(d.raised_at).isoformat(),
                       "signals": _relevant(signals, rule, metric)}
            if metric is not None:
                details["metric"] = metric
            out.raised.append((_at(d.time), d.alert_id, rule.code, subject.farm_id, rule.severity, rule.category,
                               subject.source_type, subject.source_id, subject.animal_id, subject.zone_id,
                               f"{rule.name}: {who}: {'; '.join(holding)}", msgspec.json.encode(details).decode(),
                               "open"))


def _relevant(signals: SignalMap, rule: Rule, metric: str | None) -> dict[str, float]:
    """The signals an alert's reader needs: those of the metric judged, or of the rule's metrics."""
    wanted = {metric} if metric is not None else {None, *rule.metrics}
    return {f"{s}:{m}" if m else s: round(v, 4) for (s, m), v in signals.items() if m in wanted}


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


# --- iot.alerts and iot.alert_rules -------------------------------------------------------------

RULE_COLUMNS = ("code, name, farm_id, zone_id, animal_id, device_type, category, severity, combine, conditions, "
                "duration_s, suppression_s, max_per_hour, auto_resolve")
RULES_FINGERPRINT = "SELECT (count(*), max(updated_at))::text FROM iot.alert_rules"

_INSERT = """
    INSERT INTO iot.alerts (time, alert_id, rule_code, farm_id, severity, category, source_type, source_id, animal_id,
                            zone_id, message, details, status)
    SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::integer[], $5::text[], $6::text[], $7::text[],
                         $8::text[], $9::integer[], $10::integer[], $11::text[], $12::jsonb[], $13::text[])
    ON CONFLICT (alert_id, time) DO NOTHING
"""
# A person may have resolved it first (in Odoo): their resolution stands.
_RESOLVE = """
    UPDATE iot.alerts AS a SET status = 'resolved', resolved_at = r.at, updated_at = now()
    FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[]) AS r(alert_id, time, at)
    WHERE a.alert_id = r.alert_id AND a.time = r.time AND a.status <> 'resolved'
"""


async def load_rules(conn: Any) -> list[Rule]:
    """The active rules; a rule that cannot be judged is logged and skipped, not fatal."""
    rules = []
    for row in await conn.fetch(f"SELECT {RULE_COLUMNS} FROM iot.alert_rules WHERE active ORDER BY code"):
        try:
            rules.append(Rule.from_row(dict(row)))
        except (ValueError, KeyError, TypeError, msgspec.DecodeError) as exc:
            log.error("alert rule %r skipped: %s", row["code"], exc)
    return rules


async def store(conn: Any, decisions: Decisions) -> None:
    """Insert raised alerts and resolve ended ones, in one transaction."""
    async with conn.transaction():
        if decisions.raised:
            await conn.execute(_INSERT, *(list(column) for column in zip(*decisions.raised, strict=True)))
        if decisions.resolved:
            columns = list(zip(*decisions.resolved, strict=True))[:3]
            await conn.execute(_RESOLVE, *(list(column) for column in columns))


async def restore(conn: Any, alerting: Alerting, registry: Registry) -> tuple[int, int]:
    """After a restart: take up open and recently resolved alerts (no duplicates, suppression holds)
    and seed baselines from the aggregates. Returns (episodes, baselines) restored."""
    episodes = await conn.fetch(
        "SELECT alert_id, rule_code, time, status, coalesce(resolved_at, updated_at) AS ended FROM iot.alerts "
        "WHERE status <> 'resolved' OR updated_at > now() - make_interval(secs => $1)", alerting.longest_suppression_s)
    for r in episodes:
        source = source_of(r["rule_code"], r["alert_id"])
        is_open = r["status"] != "resolved"
        alerting.engine.restore(r["rule_code"], source, r["time"].timestamp(), r["alert_id"] if is_open else None,
                                None if is_open else r["ended"].timestamp())
    baselines = alerting.signals.baselines
    series = await conn.fetch(_SENSOR_BASELINES)
    for r in series:
        device = registry.devices.get(r["device_uid"])
        source = (f"animal:{device.animal_id}" if device is not None and device.animal_id is not None
                  else f"zone:{device.zone_id}" if device is not None and device.zone_id is not None
                  else f"device:{r['device_uid']}")
        baselines.restore((source, r["metric_name"]), r["until"].timestamp(), r["mean"], r["std"] or 0.0, r["n"],
                          r["span_s"])
    milk = await conn.fetch(_MILK_BASELINES)
    for r in milk:
        for metric in ("yield_kg", "conductivity_ms"):
            if r[metric] is not None:
                baselines.restore((f"animal:{r['animal_id']}", metric), r["until"].timestamp(), r[metric],
                                  r[f"{metric}_std"] or 0.0, r["n"], r["span_s"])
    alerting.prune()
    return len(episodes), len(series) + len(milk)


# The last week of each series before its newest hour, pooled from hourly buckets: mean, and the
# spread within and between hours.
_SENSOR_BASELINES = """
    WITH h AS (
        SELECT device_uid, metric_name, bucket, avg_value, coalesce(stddev_value, 0) AS sd, sample_count,
               max(bucket) OVER (PARTITION BY device_uid, metric_name) AS newest
        FROM iot.sensor_data_hourly
        WHERE bucket > (SELECT max(bucket) FROM iot.sensor_data_hourly) - interval '7 days'
    ), s AS (
        SELECT device_uid, metric_name, (sum(avg_value * sample_count) / sum(sample_count))::float8 AS mean,
               (sum(sample_count * (sd * sd + avg_value * avg_value)) / sum(sample_count))::float8 AS square,
               sum(sample_count)::integer AS n, max(newest) + interval '1 hour' AS until,
               extract(epoch FROM max(newest) + interval '1 hour' - min(bucket))::float8 AS span_s
        FROM h WHERE bucket > newest - interval '7 days' GROUP BY device_uid, metric_name
    )
    SELECT device_uid, metric_name, mean, sqrt(greatest(square - mean * mean, 0)) AS std, n, until, span_s FROM s
"""
# Sessions a day are few: a cow's milk baseline is her last week's mean per session; its spread
# is that of her daily means.
_MILK_BASELINES = """
    SELECT animal_id, avg(avg_yield_per_session)::float8 AS yield_kg,
           stddev_samp(avg_yield_per_session)::float8 AS yield_kg_std, avg(avg_conductivity)::float8 AS conductivity_ms,
           stddev_samp(avg_conductivity)::float8 AS conductivity_ms_std,
           sum(milking_count)::integer AS n, max(bucket) + interval '1 day' AS until,
           extract(epoch FROM max(bucket) + interval '1 day' - min(bucket))::float8 AS span_s
    FROM iot.milk_production_daily
    WHERE animal_id IS NOT NULL AND bucket > (SELECT max(bucket) FROM iot.milk_production_daily) - interval '7 days'
    GROUP BY animal_id
"""


async def pull_resolutions(conn: Any, alerting: Alerting, since: datetime) -> datetime:
    """Alerts resolved by a person since `since` (Odoo writes the status back): end their episodes
    so they are not raised again inside the rule's suppression. Returns the new watermark."""
    rows = await conn.fetch("SELECT alert_id, rule_code, coalesce(resolved_at, updated_at) AS at, updated_at "
                            "FROM iot.alerts WHERE status = 'resolved' AND updated_at > $1 ORDER BY updated_at "
                            "LIMIT 10000", since)
    for r in rows:
        source = source_of(r["rule_code"], r["alert_id"])
        if alerting.engine.open_alert(r["rule_code"], source) == r["alert_id"]:
            alerting.engine.resolved_elsewhere(r["rule_code"], source, r["at"].timestamp())
    return rows[-1]["updated_at"] if rows else since


def as_messages(decisions: Decisions) -> list[tuple[str, bytes]]:
    """(topic, payload) of each raised or resolved alert, as stored in iot.alerts (contract section 4)."""
    out = []
    for row in decisions.raised:
        alert = dict(zip(ALERT_COLUMNS, row, strict=True))
        alert["details"] = msgspec.json.decode(alert["details"])
        out.append((ALERT_TOPIC.format(farm_id=alert["farm_id"], severity=alert["severity"],
                                       category=alert["category"]), msgspec.json.encode(alert)))
    for key, began, at, farm, severity, category in decisions.resolved:
        out.append((ALERT_TOPIC.format(farm_id=farm, severity=severity, category=category), msgspec.json.encode(
            {"alert_id": key, "time": began, "farm_id": farm, "severity": severity, "category": category,
             "status": "resolved", "resolved_at": at})))
    return out
