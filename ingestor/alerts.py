"""Alert rules and the engine that judges them: when a rule's conditions hold for a source (a cow, a
zone, a device), for long enough, an alert is raised; when they clear, it resolves. Suppression and
a cap per rule, farm and hour keep one noisy source or rule from flooding the farm manager.

`Engine` is a pure state machine over signals; `Alerting` feeds it from validated rows (signals
from `analytics.Signals`) and turns what it decides into `iot.alerts` rows. Alert ids are derived
from the rule, the source and the time the episode began, so judging the same readings again after
a restart yields the same ids, which the alerts table's unique key stores once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import operator
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .analytics import CONTEXT_SIGNALS, SIGNALS, Signals
from .registry import Registry
from .storage import RETRYABLE_ERRORS
from .tables import MILK_PRODUCTION, SENSOR_DATA
from .topics import ALERT_TOPIC

log = logging.getLogger(__name__)

OPERATORS: dict[str, Callable[[float, float], bool]] = {">": operator.gt, ">=": operator.ge, "<": operator.lt,
                                                        "<=": operator.le}
ANY_METRIC = "*"  # a condition on every metric: one episode per (source, metric)
DEVICE_SIGNALS = frozenset({"battery", "signal_strength", "missed_intervals", "unchanged_h"})
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
    if len(conditions) == 2 and ANY_METRIC not in (conditions[0].metric, conditions[1].metric):
        return _pair(*conditions, combine)
    if len(checks) == 2:  # the common pair, without a generator per call
        a, b = checks
        if combine == "or":
            return lambda signals, metric=None: a(signals, metric) or b(signals, metric)
        return lambda signals, metric=None: a(signals, metric) and b(signals, metric)
    if combine == "or":
        return lambda signals, metric=None: any(check(signals, metric) for check in checks)
    return lambda signals, metric=None: all(check(signals, metric) for check in checks)


def _pair(c1: Condition, c2: Condition, combine: str) -> Callable[..., bool]:
    """Two conditions on named signals in one closure: most built-in rules are a pair, judged on
    every reading of their metrics."""
    k1, op1, t1 = (c1.signal, c1.metric), OPERATORS[c1.op], c1.threshold
    k2, op2, t2 = (c2.signal, c2.metric), OPERATORS[c2.op], c2.threshold
    if combine == "or":
        def either(signals: SignalMap, metric: str | None = None) -> bool:
            v = signals.get(k1)
            if v is not None and op1(v, t1):
                return True
            w = signals.get(k2)
            return w is not None and op2(w, t2)
        return either

    def both(signals: SignalMap, metric: str | None = None) -> bool:
        v = signals.get(k1)
        if v is None or not op1(v, t1):
            return False
        w = signals.get(k2)
        return w is not None and op2(w, t2)
    return both


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


@dataclass(slots=True)
class _Episode:
    since: float | None = None  # when the conditions started to hold, while they do
    alert_id: str | None = None  # the open alert, if one was raised
    began: float | None = None  # when the open alert's episode began, exactly: with alert_id, its row's key
    ended: float | None = None  # when the last alert of this source resolved


def alert_id(rule_code: str, source: str, since: float) -> str:
    """`rule:source:start`, the start in whole epoch seconds, or to the microsecond when it has a
    fraction (two episodes within one second are two alerts)."""
    start = int(since)
    return f"{rule_code}:{source}:{start if start == since else format(since, '.6f')}"


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
                 cap: object = None, began: float | None = None) -> list[Raised | Resolved]:
        """Judge `rule` for `source` at `t`; `cap` names the group sharing the rule's hourly cap
        (default: the rule); `began`, when the conditions started to hold if that is known to be
        before `t` (a silence began when the device missed its intervals, not when it is noticed).
        A judgement older than the episode going (or the end of the last) changes nothing."""
        key = (rule.code, source)
        episode = self.episodes.get(key)
        if not rule.holds(signals, metric):
            if episode is None:
                return []  # the common case: nothing holds, nothing open, nothing to remember
            if episode.since is not None and t < episode.since:
                return []
            episode.since = None
            if episode.alert_id is not None and rule.auto_resolve:
                start = episode.began if episode.began is not None else _since_of(episode.alert_id)
                resolved = Resolved(episode.alert_id, rule, source, start, t)
                episode.alert_id, episode.began, episode.ended = None, None, t
                return [resolved]
            return []
        if episode is None:
            episode = self.episodes[key] = _Episode()
        elif t < (episode.since if episode.since is not None
                  else episode.ended if episode.ended is not None else -math.inf):
            return []
        if episode.since is None:
            episode.since = t if began is None or began > t else began
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
        episode.alert_id, episode.began = alert_id(rule.code, source, episode.since), episode.since
        return [Raised(episode.alert_id, rule, source, episode.since, t)]

    def resolved_elsewhere(self, rule_code: str, source: str, t: float) -> None:
        """An alert resolved by a person (in Odoo): no new one for this source within the suppression,
        and a later one is a new episode (with a new id)."""
        episode = self.episodes.setdefault((rule_code, source), _Episode())
        episode.alert_id, episode.began, episode.ended, episode.since = None, None, t, None

    def restore(self, rule_code: str, source: str, since: float, open_id: str | None, ended: float | None) -> None:
        """Take up an episode stored before a restart: an open alert, or the end of a resolved one."""
        episode = self.episodes.setdefault((rule_code, source), _Episode())
        if open_id is not None:
            episode.since, episode.alert_id, episode.began = since, open_id, since
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
# Blood in a cow's first milkings after calving is colostrum and udder oedema (capillaries breaking as
# the udder fills), common in fresh heifers, not mastitis; that milk stays out of the tank anyway
# (colostrum and transition milk, about the first 4-5 days). Blood within this long of the calving
# date Odoo pushes is not a mastitis signal; conductivity and SCC still are.
COLOSTRUM_S = 5 * 86_400.0
# Her milk as kilograms an hour over her last two milkings: what a cow secretes, comparable whether
# she is milked at fixed hours or by a robot at irregular intervals (a session's yield grows with
# the interval before it); two sessions, so that a parlour's unequal intervals (10 and 14 h) cancel.
# Only when both intervals lie within MILK_RATE_GAP_S: not after a missed session, nor for a
# cluster re-attached an hour later.
MILK_RATE = "yield_kg_per_hour"
MILK_RATE_GAP_S = (3 * 3_600.0, 24 * 3_600.0)
_time_of, _uid_of = itemgetter(_S["time"]), itemgetter(_S["device_uid"])
_BATTERY, _SIGNAL = _S["battery_level"], _S["signal_strength"]
_NEVER = -math.inf
_DEVICE_SIGNALS = (("battery", None), ("signal_strength", None), ("missed_intervals", None), ("unchanged_h", None))
DEFAULT_INTERVAL_S = 300


# Around calving a cow ruminates about a third less and recovers over 10 days or so (Schirmann et al.
# 2013, J Dairy Sci 96:7088), walks and eats differently and climbs in milk: her own previous days
# (dry) are not her normal. For FRESH_S after the calving date Odoo pushes she is judged beside the
# farm's other fresh cows (their group, FRESH), whatever her pen: a fresh cow with ketosis or a
# displaced abomasum still stands out from them.
FRESH_S = 14 * 86_400.0
FRESH = "fresh cows"


def cow_group(registry: Registry, farm: int, animal: int, t: float) -> tuple[tuple[int, str | None], float]:
    """Her group at data time `t` (her pen, or the fresh cows), and when that changes."""
    calved = registry.calvings.get(animal)
    if calved is not None and t < calved + FRESH_S:
        if t >= calved:
            return (farm, FRESH), calved + FRESH_S
        return (farm, registry.groups.get(animal)), calved
    return (farm, registry.groups.get(animal)), math.inf


def source_key(farm: int, animal: int | None, zone: int | None, uid: str) -> str:
    """The source a reading tells about, within its farm: its cow, else its barn zone, else its device.
    Ids are only unique within a farm (another farm may send an id it has not registered)."""
    if animal is not None:
        return f"animal:{farm}:{animal}"
    if zone is not None:
        return f"zone:{farm}:{zone}"
    return f"device:{farm}:{uid}"


@dataclass(frozen=True, slots=True)
class _Subject:
    """Who a source is, for the alert row and its message."""

    farm_id: int
    source_type: str  # animal, zone, device
    source_id: str
    animal_id: int | None
    zone_id: int | None
    device_uid: str
    device_type: str | None


class _Device:
    """What is known of a device that reports: where its readings go, when it last reported (data
    time), its battery and signal, and whether one of its device rules has an episode going."""

    __slots__ = ("active", "animal", "battery", "changed", "device_source", "device_type", "farm", "group", "interval",
                 "last", "regroup_at", "signal", "source", "uid", "values", "zone")

    def __init__(self, uid: str, farm: int, device_type: str | None, interval: float) -> None:
        self.uid, self.farm, self.device_type, self.interval = uid, farm, device_type, interval
        self.animal: int | None = None
        self.zone: int | None = None
        self.source = self.device_source = f"device:{farm}:{uid}"
        self.last = _NEVER  # the newest reading's time
        self.battery: int | None = None
        self.signal: int | None = None
        self.active = False
        self.group: tuple[int, str | None] | None = None  # her farm and pen, for a collar on a cow
        self.regroup_at = math.inf  # data time her group changes (her fresh days end)
        self.values: dict[str, float] | None = None  # each metric's last value, while a stuck rule is judged
        self.changed = _NEVER  # when one of them last changed


@dataclass
class Decisions:
    """What one batch changed: alert rows to insert, and alerts to resolve as (alert_id, time,
    resolved_at, farm_id, severity, category)."""

    raised: list[tuple] = field(default_factory=list)
    resolved: list[tuple] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.raised or self.resolved)


def _onset(rule: Rule) -> float | None:
    """How many missed intervals a silence rule needs before it can hold (its episode begins when a
    device has been silent that long, however late that is noticed); None if it is not that simple."""
    bounds = [c.threshold for c in rule.conditions if c.signal == "missed_intervals" and c.op in (">", ">=")]
    if not bounds or (rule.combine == "or" and len(bounds) < len(rule.conditions)):
        return None
    return max(bounds) if rule.combine == "and" else min(bounds)


class _Generations:
    """A bounded set of recently seen keys: two generations, the older dropped whole when the newer
    fills (a key seen in the older one moves up), so memory stays under `size` keys at O(1) a key."""

    def __init__(self, size: int) -> None:
        self.half = max(1, size // 2)
        self.new: set[object] = set()
        self.old: set[object] = set()

    def add(self, key: object) -> bool:
        """Remember `key`; False if it was remembered already."""
        if key in self.new:
            return False
        seen = key in self.old
        if len(self.new) >= self.half:
            self.old, self.new = self.new, set()
        self.new.add(key)
        return not seen

    def discard(self, key: object) -> None:
        self.new.discard(key)
        self.old.discard(key)


class Alerting:
    """Rules judged on every validated batch as it flows, with each source's signals in memory.

    Readings are folded into signals in data-time order per series: a reading not newer than the
    newest one of its series already judged is late (stored, not judged: it neither ends nor extends
    an episode, nor becomes the current value). Only rules that name a reading's metric (or every
    metric) are judged on it, and a device's battery and signal rules only when either changed or
    while one has an episode going; a device's silence is judged at data time too, when it reports
    again after missing its intervals, and by `check_devices` while it stays silent.

    State is bounded: series and devices per farm and in all (`max_series`, `max_series_per_farm`),
    and what is idle for `idle_half_lives` baseline half-lives of its farm's clock is forgotten.
    """

    def __init__(self, rules: Iterable[Rule] = (), *, max_series: int = 200_000, max_series_per_farm: int = 50_000,
                 idle_half_lives: float = 3.0, evict_interval_s: float = 60.0) -> None:
        self.signals = Signals(max_series=max_series, max_series_per_farm=max_series_per_farm)
        self.engine = Engine()
        self.rules: tuple[Rule, ...] = ()
        self._subjects: dict[str, _Subject] = {}
        self._devices: dict[object, _Device] = {}  # device uid (or (farm, uid) for a uid two farms send)
        self._devices_per_farm: dict[int, int] = {}
        self._any_sources: set[str] = set()  # sources with an episode of an every-metric rule going
        self.clock: dict[int, float] = {}  # farm -> newest reading time: "now" in the farm's data
        self._received: dict[int, float] = {}  # farm -> wall time its clock last moved
        self.idle_s = idle_half_lives * self.signals.baselines.half_life_s
        self.evict_interval_s = evict_interval_s
        self._evicted_at = time.monotonic()
        # Devices and cows whose baselines were looked up in the aggregates (bounded), and lookups under way.
        self.restored = _Generations(max_series)
        self.restoring: dict[object, asyncio.Future[None]] = {}
        self._grouped_by: Registry | None = None  # the registry the devices' groups were read from
        self._milked: dict[str, tuple[float, float, float]] = {}  # cow -> her milking before last, last, its kg
        self.set_rules(rules)

    @classmethod
    def from_settings(cls, settings: Any) -> Alerting:
        return cls(max_series=settings.alert_max_series, max_series_per_farm=settings.alert_max_series_per_farm,
                   idle_half_lives=settings.alert_idle_half_lives, evict_interval_s=settings.alert_evict_interval)

    def set_rules(self, rules: Iterable[Rule]) -> None:
        self.rules = tuple(rules)
        self._by_metric: dict[str, list[Rule]] = {}
        for rule in self.rules:
            if rule.on_device:
                continue
            for metric in rule.metrics:
                self._by_metric.setdefault(metric, []).append(rule)
        self._any_metric = tuple(r for r in self.rules if r.any_metric and not r.on_device)
        self._tables: dict[tuple[str, str | None], tuple[tuple[Rule, ...], tuple[Rule, ...]]] = {}
        self._device_rules = tuple(r for r in self.rules if r.on_device and not any(
            c.signal == "missed_intervals" for c in r.conditions))
        self._silence_rules = tuple(r for r in self.rules if any(c.signal == "missed_intervals" for c in r.conditions))
        self._onsets = {r.code: _onset(r) for r in self._silence_rules}
        # A gap between two readings of a device longer than this many intervals may be a silence.
        self._silence_gap = min((o or 0.0 for o in self._onsets.values()), default=math.inf)
        self.signals.wanted = frozenset(c.signal for r in self.rules for c in r.conditions)
        self._stuck_rules = tuple(r for r in self._device_rules if any(c.signal == "unchanged_h" for c in r.conditions))
        self._stuck = bool(self._stuck_rules)
        # Below this many hours unchanged no stuck rule can hold (0: one asks for fewer hours, or `<`).
        self._stuck_from = min((c.threshold if c.op in (">", ">=") else 0.0 for r in self._stuck_rules
                                for c in r.conditions if c.signal == "unchanged_h"), default=math.inf)
        # Her rhythm and group are kept for the metrics some rule asks about so (and what they derive from).
        contextual = {c.metric for r in self.rules for c in r.conditions if c.signal in CONTEXT_SIGNALS}
        self.signals.contextual = None if ANY_METRIC in contextual else frozenset(contextual)
        self.signals.sessions = frozenset(MILK_METRICS) | {MILK_RATE}
        self.longest_suppression_s = max((r.suppression_s for r in self.rules), default=3600.0)

    def _table(self, metric: str, device_type: str | None) -> tuple[tuple[Rule, ...], tuple[Rule, ...]]:
        """The rules a reading of `metric` from a device of `device_type` can change: those naming the
        metric, and those on every metric; a rule scoped to another device type is not among them."""
        def fits(rule: Rule) -> bool:
            return rule.device_type is None or rule.device_type == device_type
        table = (tuple(filter(fits, self._by_metric.get(metric, ()))), tuple(filter(fits, self._any_metric)))
        if len(self._tables) < 10_000:  # metric names and device types come from devices: keep a bound
            self._tables[(metric, device_type)] = table
        return table

    def _regroup(self, registry: Registry) -> None:
        """Each collar's cow in her group as the registry says now."""
        self._grouped_by = registry
        for device in self._devices.values():
            if device.animal is not None and device.animal != -1:
                device.group, device.regroup_at = cow_group(registry, device.farm, device.animal, device.last)

    # --- sources ------------------------------------------------------------------------------

    def _subject(self, source: str, farm: int, animal: int | None, zone: int | None, uid: str,
                 device_type: str | None) -> _Subject:
        subject = self._subjects.get(source)
        if subject is None:
            kind, _, ident = source.partition(":")
            subject = self._subjects[source] = _Subject(farm, kind, ident.partition(":")[2], animal, zone, uid,
                                                        device_type)
        return subject

    def _device(self, uid: str, farm: int, animal: int | None, zone: int | None, device_type: str | None,
                registry: Registry) -> _Device | None:
        """The device a reading comes from, made on its first reading (None beyond the caps), and
        where its readings go now (a collar moved to another cow takes its readings along)."""
        devices = self._devices
        device = devices.get(uid)
        if device is None or device.farm != farm:
            other = devices.get((farm, uid))
            if other is not None:
                device = other
            else:
                n = self._devices_per_farm.get(farm, 0)
                if n >= self.signals.max_series_per_farm or len(devices) >= self.signals.max_series:
                    self.signals.untracked += 1
                    return None
                self._devices_per_farm[farm] = n + 1
                known = registry.devices.get(uid)
                interval = known.expected_interval_s if known is not None and known.farm_id == farm else None
                new = _Device(uid, farm, device_type, interval or DEFAULT_INTERVAL_S)
                devices[uid if device is None else (farm, uid)] = device = new
                device.animal = device.zone = -1  # set below
                self._note_active(device)  # an episode of its own may be going (taken up at a restart)
        if device.animal != animal or device.zone != zone:
            device.animal, device.zone = animal, zone
            device.source = source_key(farm, animal, zone, uid)  # its subject is made when a rule is judged
            device.group, device.regroup_at = (None, math.inf) if animal is None else cow_group(registry, farm, animal,
                                                                                             device.last)
            self._subjects[device.device_source] = _Subject(farm, "device", uid, animal, zone, uid, device_type)
        return device

    # --- judging --------------------------------------------------------------------------------

    def observe_readings(self, rows: Sequence[tuple], registry: Registry) -> Decisions:
        """Fold a batch of sensor_data rows into the signals and judge the rules they touch.

        The loop runs for every reading that arrives: a rule is judged only when it holds or has an
        episode going, and a device's battery and signal rules only when either changed."""
        out = Decisions()
        if not self.rules:
            return out
        tables, fold = self._tables, self.signals.fold
        episodes, any_open, devices, stuck = self.engine.episodes, self._any_sources, self._devices, self._stuck
        wall = time.time()
        if registry is not self._grouped_by:  # cows may have moved to another pen
            self._regroup(registry)
        ui, ki, fi, mi, vi, ai, zi = (_S[c] for c in ("device_uid", "device_type", "farm_id", "metric_name",
                                                       "metric_value", "animal_id", "zone_id"))
        for row, t in zip(rows, map(datetime.timestamp, map(_time_of, rows)), strict=True):
            uid, farm, animal, zone = row[ui], row[fi], row[ai], row[zi]
            device = devices.get(uid)
            if device is None or device.farm != farm or device.animal != animal or device.zone != zone:
                device = self._device(uid, farm, animal, zone, row[ki], registry)
                if device is None:
                    continue  # beyond the caps: stored, not judged
            if t > device.last:
                self._reported(device, t, row, wall, out, registry)
            metric = row[mi]
            if metric in DEVICE_METRICS:
                continue
            source, value = device.source, row[vi]
            if t >= device.regroup_at:  # in or out of the fresh cows' group
                device.group, device.regroup_at = cow_group(registry, farm, animal, t)
            signals = fold(source, farm, t, metric, value, device.group)
            if signals is None:
                continue  # late, or a new series beyond the caps
            if stuck:
                values = device.values
                if values is None:
                    values = device.values = {}
                if values.get(metric) != value:
                    values[metric], device.changed = value, t
            kind = row[ki]
            table = tables.get((metric, kind))
            if table is None:
                table = self._table(metric, kind)
            fixed, every = table
            for rule in fixed:
                if rule.holds(signals) or (rule.code, source) in episodes:
                    self._judge(rule, source, t, signals, None, out, kind, registry, device=device)
            for rule in every:
                if rule.holds(signals, metric) or source in any_open:
                    self._judge(rule, f"{source}:{metric}", t, signals, metric, out, kind, registry,
                                subject_of=source, device=device)
        return out

    def _reported(self, device: _Device, t: float, row: tuple, wall: float, out: Decisions,
                  registry: Registry) -> None:
        """A device's first reading at `t`, newer than any before: the farm's clock, the end of a
        silence, and its battery and signal, judged when either changed or an episode is going."""
        farm = device.farm
        if t > self.clock.get(farm, _NEVER):
            self.clock[farm] = t
            self._received[farm] = wall
        held = 0.0
        if device.values:  # how long its readings up to the last one have all stayed the same
            held = max(device.last - device.changed, 0.0) / 3600.0
            if held >= self._stuck_from or device.active:
                self.signals.set(device.device_source, "unchanged_h", held)
        first = device.last == _NEVER
        if not first and t - device.last >= self._silence_gap * device.interval:
            self._judge_silence(device, t, out, registry)  # as it stood just before this reading
            device.last = t
            self._judge_silence(device, t, out, registry)
        else:
            device.last = t
            if first and device.active and self._silence_rules:  # an offline alert from before a restart
                self._judge_silence(device, t, out, registry)
        battery, signal = row[_BATTERY], row[_SIGNAL]
        changed = (battery is not None or signal is not None) and (battery != device.battery
                                                                   or signal != device.signal)
        if changed:
            device.battery, device.signal = battery, signal
        if (changed or device.active) and self._device_rules:
            self._judge_device(device, t, out, registry)
        elif held >= self._stuck_from and device.values:  # the stuck rules, once they may hold
            source, episodes = device.device_source, self.engine.episodes
            signals = self.signals.current.get(source, {})
            for rule in self._stuck_rules:
                if rule.holds(signals) or (rule.code, source) in episodes:
                    self._judge(rule, source, t, signals, None, out, device.device_type, registry)
                    self._note_active(device)

    def observe_milk(self, rows: Sequence[tuple], registry: Registry) -> Decisions:
        """Fold milking sessions (yield, conductivity, SCC, blood ...) per cow and judge their rules;
        a session not newer than the cow's newest one judged is late: stored, not judged."""
        out = Decisions()
        if not self.rules:
            return out
        ti, mi, ai, fi = _M.values()
        fold, yield_index = self.signals.fold, MILK_METRICS["yield_kg"]
        for row in rows:
            animal, meter, farm = row[ai], row[mi], row[fi]
            source = f"animal:{farm}:{animal}" if animal is not None else f"device:{farm}:{meter}"
            t = row[ti].timestamp()
            group = None if animal is None else cow_group(registry, farm, animal, t)[0]
            calved = registry.calvings.get(animal)
            fresh = calved is not None and 0 <= t - calved < COLOSTRUM_S
            touched: dict[str, Rule] = {}
            signals: SignalMap | None = None
            values = [(metric, row[index]) for metric, index in MILK_METRICS.items()]
            kg, last = row[yield_index], self._milked.get(source)
            if kg is not None and (last is None or t > last[1]) and (
                    last is not None or len(self._milked) < self.signals.max_series):
                self._milked[source] = (_NEVER if last is None else last[1], t, kg)
                rate = None if last is None else _rate(kg, t, *last)
                if rate is not None:
                    values.append((MILK_RATE, rate))
            for metric, value in values:
                if value is None:
                    continue
                if fresh and metric == "blood_detected":
                    value = False  # colostrum: the row keeps what the meter saw
                folded = fold(source, farm, t, metric, float(value), group)
                if folded is not None:
                    signals = folded
                    touched.update((r.code, r) for r in self._by_metric.get(metric, ()))
            if signals is None:
                continue
            self._subject(source, farm, animal, None, meter, "milk_meter")
            for rule in touched.values():
                self._judge(rule, source, t, signals, None, out, "milk_meter", registry)
        return out

    def check_devices(self, now: float | None, registry: Registry) -> Decisions:
        """Judge the devices that may be silent (or have a device rule's episode going) at their
        farm's clock: silence (missed intervals), and the battery and signal rules that need time to
        pass (a duration). The farm's clock is its newest reading, moved on by the wall clock (`now`)
        since that reading arrived, so that a farm gone silent as a whole still has its devices found
        offline. A silence's episode begins when the device had missed the rule's intervals."""
        out = Decisions()
        if not (self._silence_rules or self._device_rules):
            return out
        clocks = self._clocks(now)
        for device in list(self._devices.values()):
            known = registry.devices.get(device.uid)
            if known is not None and known.farm_id == device.farm:
                device.interval = known.expected_interval_s or DEFAULT_INTERVAL_S
            clock = clocks.get(device.farm, device.last)
            if clock - device.last >= self._silence_gap * device.interval or device.active:
                self._judge_silence(device, clock, out, registry)
                if self._device_rules:
                    self._judge_device(device, clock, out, registry)
        return out

    def _clocks(self, now: float | None) -> dict[int, float]:
        """Each farm's clock, moved on by the wall clock since it last moved (when `now` is given)."""
        if now is None:
            return dict(self.clock)
        return {farm: t + max(0.0, now - self._received.get(farm, now)) for farm, t in self.clock.items()}

    def _judge_silence(self, device: _Device, clock: float, out: Decisions, registry: Registry) -> None:
        source = device.device_source
        signals = self.signals.set(source, "missed_intervals", (clock - device.last) / device.interval)
        for rule in self._silence_rules:
            onset = self._onsets[rule.code]
            self._judge(rule, source, clock, signals, None, out, device.device_type, registry,
                        began=None if onset is None else device.last + onset * device.interval)
        self._note_active(device)

    def _judge_device(self, device: _Device, t: float, out: Decisions, registry: Registry) -> None:
        source = device.device_source
        signals: SignalMap = self.signals.current.get(source, {})
        if device.battery is not None:
            signals = self.signals.set(source, "battery", device.battery)
        if device.signal is not None:
            signals = self.signals.set(source, "signal_strength", device.signal)
        for rule in self._device_rules:
            self._judge(rule, source, t, signals, None, out, device.device_type, registry)
        self._note_active(device)

    def _note_active(self, device: _Device) -> None:
        episodes, source = self.engine.episodes, device.device_source
        device.active = any((r.code, source) in episodes for r in (*self._silence_rules, *self._device_rules))

    def _judge(self, rule: Rule, source: str, t: float, signals: SignalMap, metric: str | None, out: Decisions,
               device_type: str | None, registry: Registry, *, subject_of: str | None = None,
               began: float | None = None, device: _Device | None = None) -> None:
        subject = self._subjects.get(subject_of or source)
        if subject is None:  # the first rule judged for a source a device's readings go to
            subject = self._subject(subject_of or source, device.farm, device.animal, device.zone, device.uid,
                                    device.device_type)
        if rule.scoped and not rule.applies(subject.farm_id, subject.zone_id, subject.animal_id, device_type):
            return
        decided = self.engine.evaluate(rule, source, t, signals, metric=metric, cap=(rule.code, subject.farm_id),
                                       began=began)
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

    # --- bounded state -------------------------------------------------------------------------------

    def prune(self, now: float | None = None) -> None:
        """Forget what no longer matters: episodes over and out of their suppression; and, at most
        every `evict_interval_s` of wall time, idle series and devices (`evict`)."""
        self.engine.prune(self.horizon, self.longest_suppression_s)
        codes = {r.code for r in self._any_metric}
        self._any_sources = {source.rsplit(":", 1)[0] for code, source in self.engine.episodes if code in codes}
        if time.monotonic() - self._evicted_at >= self.evict_interval_s:
            self.evict(time.time() if now is None else now)

    def evict(self, now: float | None = None) -> None:
        """Forget series and devices without a reading for `idle_s` of their farm's clock (moved on by
        the wall clock `now` while the farm is silent), unless an episode of theirs is going, and the
        subjects nothing refers to any more."""
        self._evicted_at = time.monotonic()
        clocks = self._clocks(now)
        current = self.signals.current
        for source in self.signals.evict(clocks, self.idle_s):
            self._milked.pop(source, None)
            if not current.get(source):
                current.pop(source, None)
            kind, farm, ident = source.split(":", 2)
            if kind == "animal" and ident.isdigit():  # her milk baselines are read again when she comes back
                self.restored.discard((int(farm), int(ident)))
        episodes = self.engine.episodes
        busy = {source for (_, source), e in episodes.items() if e.alert_id is not None}  # open alerts stay
        for key, device in list(self._devices.items()):
            if clocks.get(device.farm, -math.inf) - device.last > self.idle_s and device.device_source not in busy:
                del self._devices[key]
                self._devices_per_farm[device.farm] -= 1
                self.restored.discard(device.uid)  # its baselines are read again when it comes back
                signals = current.get(device.device_source)
                if signals is not None:
                    for k in _DEVICE_SIGNALS:
                        signals.pop(k, None)
                    if not signals:
                        del current[device.device_source]
        for farm in [f for f, n in self._devices_per_farm.items() if n <= 0]:
            del self._devices_per_farm[farm]
        live = busy | current.keys()
        for device in self._devices.values():
            live.add(device.source)
            live.add(device.device_source)
        # An episode without an open alert (holding, or in its suppression) goes with its source.
        for key in [k for k, e in episodes.items() if e.alert_id is None and k[1] not in live
                    and k[1].rsplit(":", 1)[0] not in live]:
            del episodes[key]
        live.update(source for _, source in episodes)
        self._subjects = {k: v for k, v in self._subjects.items() if k in live}

    def state_size(self) -> dict[str, int]:
        """How much is held: series, devices, sources with signals, subjects, episodes."""
        return {"series": len(self.signals.baselines), "devices": len(self._devices),
                "sources": len(self.signals.current), "subjects": len(self._subjects),
                "episodes": len(self.engine.episodes)}

    @property
    def horizon(self) -> float:
        """The newest data time seen from any farm: what "now" is for forgetting old episodes."""
        return max(self.clock.values(), default=0.0)

    # --- baselines from the aggregates, on first use -------------------------------------------------

    def unseen(self, kind: str, rows: Sequence[tuple]) -> tuple[dict[tuple[int, object], str], list[asyncio.Future]]:
        """The (farm, device uid) of a sensor batch, or (farm, animal id) of a milk batch, whose
        baselines were not looked up since start (or long ago), each with its source, now marked as
        looked up; and the lookups under way that the batch must wait for."""
        wanted: dict[tuple[int, object], str] = {}
        restoring = self.restoring
        if kind == "sensor":
            keys: set[object] = set(map(_uid_of, rows))
            fresh = {uid for uid in keys if self.restored.add(uid)}
            if fresh:
                ui, fi, ai, zi = _S["device_uid"], _S["farm_id"], _S["animal_id"], _S["zone_id"]
                for row in rows:
                    uid, farm = row[ui], row[fi]
                    if uid in fresh and (farm, uid) not in wanted:
                        wanted[(farm, uid)] = source_key(farm, row[ai], row[zi], uid)
        else:
            fi, ai = _M["farm_id"], _M["animal_id"]
            keys = {(row[fi], row[ai]) for row in rows if row[ai] is not None}
            for farm, animal in keys:
                if self.restored.add((farm, animal)):
                    wanted[(farm, animal)] = f"animal:{farm}:{animal}"
        pending = [restoring[k] for k in keys if k in restoring] if restoring else []
        return wanted, pending

def _rate(kg: float, t: float, before_last: float, last: float, last_kg: float) -> float | None:
    """Kilograms an hour over this session and her last, when both intervals are plausible ones."""
    low, high = MILK_RATE_GAP_S
    if not (low <= t - last <= high and low <= last - before_last <= high):
        return None
    return (kg + last_kg) * 3_600.0 / (t - before_last)


def _relevant(signals: SignalMap, rule: Rule, metric: str | None) -> dict[str, float]:
    """The signals an alert's reader needs: those of the metric judged, or of the rule's metrics."""
    wanted = {metric} if metric is not None else {None, *rule.metrics}
    return {f"{s}:{m}" if m else s: round(v, 4) for (s, m), v in signals.items() if m in wanted}


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


# --- iot.alerts and iot.alert_rules -------------------------------------------------------------

RULE_COLUMNS = ("code, name, farm_id, zone_id, animal_id, device_type, category, severity, combine, conditions, "
                "duration_s, suppression_s, max_per_hour, auto_resolve")

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


_EPISODE_COLUMNS = ("alert_id, rule_code, time, status, coalesce(resolved_at, updated_at) AS ended, farm_id, "
                    "source_type, source_id, updated_at")


def stored_source(row: Mapping[str, Any]) -> str | None:
    """The source (as `Alerting` keys it, with its farm) of a stored alert, from its id checked
    against its row: ids stored before sources named their farm (`rule:animal:7:start`) are read
    too; None for an id that matches neither."""
    try:
        part = source_of(row["rule_code"], row["alert_id"])
    except ValueError:
        return None
    if not row["alert_id"].startswith(f"{row['rule_code']}:"):
        return None
    kind, farm, ident = row["source_type"], row["farm_id"], row["source_id"]
    for named in (f"{kind}:{farm}:{ident}", f"{kind}:{ident}"):  # the farm's own; then the older form
        if part == named or part.startswith(f"{named}:"):  # (":metric" follows for an every-metric rule)
            return f"{kind}:{farm}:{ident}{part[len(named):]}"
    return None


async def restore(conn: Any, alerting: Alerting, registry: Registry) -> tuple[int, int]:  # noqa: ARG001
    """After a restart: take up open and recently resolved alerts (no duplicates, suppression holds).
    Baselines are not read here but on first use (`restore_baselines`). Returns (episodes, 0)."""
    rows = await conn.fetch(
        f"SELECT {_EPISODE_COLUMNS} FROM iot.alerts "
        "WHERE status <> 'resolved' OR updated_at > now() - make_interval(secs => $1)", alerting.longest_suppression_s)
    taken = 0
    for r in rows:
        source = stored_source(r)
        if source is None:
            log.warning("alert %r: its id does not name its source; not taken up", r["alert_id"])
            continue
        is_open = r["status"] != "resolved"
        alerting.engine.restore(r["rule_code"], source, r["time"].timestamp(), r["alert_id"] if is_open else None,
                                None if is_open else r["ended"].timestamp())
        taken += 1
    alerting.prune()
    return taken, 0


async def restore_baselines(pool: Any, alerting: Alerting, kind: str, rows: Sequence[tuple], *,
                            timeout: float | None = None) -> int:
    """Seed the baselines of a batch's devices (sensor rows) or cows (milk rows) not looked up since
    start from the aggregates, in one query, before the batch is judged; wait for those another batch
    is looking up. A lookup that fails or takes longer than `timeout` (the aggregates locked, say) is
    logged, and tried again with their next batch: this one is judged without. Returns the series
    seeded."""
    if kind not in ("sensor", "milk") or not rows or not alerting.rules:
        return 0
    wanted, pending = alerting.unseen(kind, rows)
    seeded = 0
    if wanted:
        done = asyncio.get_running_loop().create_future()
        keys = [uid for _, uid in wanted] if kind == "sensor" else list(wanted)
        for key in keys:
            alerting.restoring[key] = done
        try:
            async with asyncio.timeout(timeout):
                seeded = await _seed(pool, alerting, kind, rows, wanted)
        except (*RETRYABLE_ERRORS, TimeoutError) as exc:
            log.warning("baselines of %d %s could not be read (%s); tried again with their next readings",
                        len(wanted), "devices" if kind == "sensor" else "cows", exc or f"not within {timeout} s")
            for key in keys:
                alerting.restored.discard(key)
        finally:
            for key in keys:
                if alerting.restoring.get(key) is done:
                    del alerting.restoring[key]
            done.set_result(None)
    if pending:
        await asyncio.gather(*pending)
    return seeded


async def _seed(pool: Any, alerting: Alerting, kind: str, rows: Sequence[tuple],
                wanted: dict[tuple[int, object], str]) -> int:
    signals, seeded = alerting.signals, 0
    ids = list({ident for _, ident in wanted})
    async with pool.acquire() as conn:
        if kind == "sensor":
            newest = max(map(_time_of, rows))
            for r in await conn.fetch(_SENSOR_BASELINES, ids, newest):
                source = wanted.get((r["farm_id"], r["device_uid"]))
                if source is not None:
                    seeded += signals.restore(source, r["farm_id"], r["metric_name"], r["until"].timestamp(),
                                              r["mean"], r["std"] or 0.0, r["n"], r["span_s"])
            if signals.contextual != frozenset():
                contextual = None if signals.contextual is None else list(signals.contextual)
                for r in await conn.fetch(_SENSOR_WINDOWS, ids, newest, contextual):
                    source = wanted.get((r["farm_id"], r["device_uid"]))
                    if source is not None:
                        signals.restore_window(source, r["metric_name"], r["window"], r["mean"], r["std"], r["days"])
            return seeded
        newest = max(row[_M["time"]] for row in rows)
        for r in await conn.fetch(_MILK_BASELINES, ids, newest):
            source = wanted.get((r["farm_id"], r["animal_id"]))
            if source is None:
                continue
            for metric in ("yield_kg", MILK_RATE, "conductivity_ms"):
                if r[metric] is not None:
                    seeded += signals.restore(source, r["farm_id"], metric, r["until"].timestamp(), r[metric],
                                              r[f"{metric}_std"] or 0.0, r["n"], r["span_s"])
    return seeded


# The last week of each series of the devices asked for ($1) before its newest hour, within the week
# before the batch's newest reading ($2), pooled from hourly buckets: mean, and the spread within and
# between hours.
_SENSOR_BASELINES = """
    WITH h AS (
        SELECT farm_id, device_uid, metric_name, bucket, avg_value, coalesce(stddev_value, 0) AS sd, sample_count,
               max(bucket) OVER (PARTITION BY farm_id, device_uid, metric_name) AS newest
        FROM iot.sensor_data_hourly
        WHERE device_uid = ANY($1::text[]) AND bucket > $2::timestamptz - interval '7 days'
    ), s AS (
        SELECT farm_id, device_uid, metric_name, (sum(avg_value * sample_count) / sum(sample_count))::float8 AS mean,
               (sum(sample_count * (sd * sd + avg_value * avg_value)) / sum(sample_count))::float8 AS square,
               sum(sample_count)::integer AS n, max(newest) + interval '1 hour' AS until,
               extract(epoch FROM max(newest) + interval '1 hour' - min(bucket))::float8 AS span_s
        FROM h WHERE bucket > newest - interval '7 days' GROUP BY farm_id, device_uid, metric_name
    )
    SELECT farm_id, device_uid, metric_name, mean, sqrt(greatest(square - mean * mean, 0)) AS std, n, until, span_s
    FROM s
"""
# Her same hours (analytics.WINDOW_S, in UTC) over the week before, from the hourly buckets: the
# windows' mean and spread, and on how many days each was seen.
_SENSOR_WINDOWS = """
    SELECT farm_id, device_uid, metric_name, extract(hour FROM bucket AT TIME ZONE 'UTC')::integer / 2 AS window,
           avg(avg_value)::float8 AS mean, coalesce(stddev_samp(avg_value), 0)::float8 AS std,
           count(DISTINCT (bucket AT TIME ZONE 'UTC')::date)::float8 AS days
    FROM iot.sensor_data_hourly
    WHERE device_uid = ANY($1::text[]) AND bucket > $2::timestamptz - interval '7 days' AND bucket < $2::timestamptz
      AND ($3::text[] IS NULL OR metric_name = ANY($3::text[]))
    GROUP BY 1, 2, 3, 4
"""
# Sessions a day are few: a cow's milk baseline is her last week's mean per session; its spread
# is that of her daily means. Her kilograms an hour: her whole days' yield over 24 h.
_MILK_BASELINES = """
    SELECT farm_id, animal_id, avg(avg_yield_per_session)::float8 AS yield_kg,
           stddev_samp(avg_yield_per_session)::float8 AS yield_kg_std,
           (avg(total_yield_kg) FILTER (WHERE bucket < date_trunc('day', $2::timestamptz)) / 24)::float8
               AS yield_kg_per_hour,
           (stddev_samp(total_yield_kg) FILTER (WHERE bucket < date_trunc('day', $2::timestamptz)) / 24)::float8
               AS yield_kg_per_hour_std,
           avg(avg_conductivity)::float8 AS conductivity_ms,
           stddev_samp(avg_conductivity)::float8 AS conductivity_ms_std,
           sum(milking_count)::integer AS n, max(bucket) + interval '1 day' AS until,
           extract(epoch FROM max(bucket) + interval '1 day' - min(bucket))::float8 AS span_s
    FROM iot.milk_production_daily
    WHERE animal_id = ANY($1::integer[]) AND bucket > $2::timestamptz - interval '7 days'
    GROUP BY farm_id, animal_id
"""


async def pull_resolutions(conn: Any, alerting: Alerting, since: datetime) -> datetime:
    """Alerts resolved by a person since `since` (Odoo writes the status back): end their episodes
    so they are not raised again inside the rule's suppression. Returns the new watermark."""
    rows = await conn.fetch(f"SELECT {_EPISODE_COLUMNS} FROM iot.alerts WHERE status = 'resolved' AND updated_at > $1 "
                            "ORDER BY updated_at LIMIT 10000", since)
    for r in rows:
        source = stored_source(r)
        if source is not None and alerting.engine.open_alert(r["rule_code"], source) == r["alert_id"]:
            alerting.engine.resolved_elsewhere(r["rule_code"], source, r["ended"].timestamp())
    return rows[-1]["updated_at"] if rows else since


class StateCollector:
    """Prometheus view of the alert state: what is held, and readings of series not tracked (caps)."""

    def __init__(self, alerting: Alerting) -> None:
        self.alerting = alerting

    def collect(self) -> Iterator[Metric]:
        held = GaugeMetricFamily("smart_dairy_alert_state", "Alert state held in memory, by kind", labels=["kind"])
        for kind, n in self.alerting.state_size().items():
            held.add_metric([kind], n)
        yield held
        yield CounterMetricFamily("smart_dairy_alert_series_untracked",
                                  "Readings of new series or devices not tracked for alerts: beyond the caps "
                                  "per farm or in all (stored, not judged)", value=self.alerting.signals.untracked)


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
