"""The alert rule engine: when a rule's conditions hold for a source (a cow, a zone, a device), for
long enough, an alert is raised; when they clear, it resolves. Suppression and a cap per hour keep
one noisy source or rule from flooding the farm manager.

Pure state machine: the caller supplies each source's current signals (value, z-score, ratio to
baseline, THI ...) as they arrive, and stores and publishes what comes back. Alert ids are derived
from the rule, the source and the time the episode began, so re-evaluating the same readings after a
restart yields the same ids, which the alerts table's unique key stores once.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

OPERATORS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
Signals = Mapping[tuple[str, str | None], float]  # (signal, metric) -> value, e.g. ("zscore", "activity_index")


@dataclass(frozen=True)
class Condition:
    signal: str  # value, zscore, ratio, thi ...
    metric: str | None
    op: str
    threshold: float

    def holds(self, signals: Signals) -> bool | None:
        """Whether the condition holds; None when its signal is not known yet."""
        value = signals.get((self.signal, self.metric))
        return None if value is None else OPERATORS[self.op](value, self.threshold)


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

    def holds(self, signals: Signals) -> bool:
        results = [c.holds(signals) for c in self.conditions]
        if self.combine == "or":
            return any(r is True for r in results)
        return bool(results) and all(r is True for r in results)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Rule:
        """A rule as stored in iot.alert_rules (conditions: [{"signal", "metric", "op", "value"}])."""
        conditions = tuple(Condition(c["signal"], c.get("metric"), c["op"], float(c["value"]))
                           for c in row["conditions"])
        return cls(row["code"], row["category"], row["severity"], conditions, row["combine"],
                   row["duration_s"], row["suppression_s"], row["max_per_hour"], row["auto_resolve"])


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
    time: float


@dataclass
class _Episode:
    since: float | None = None  # when the conditions started to hold, while they do
    alert_id: str | None = None  # the open alert, if one was raised
    ended: float | None = None  # when the last alert of this source resolved


@dataclass
class Engine:
    """Evaluates rules per source; remembers episodes, suppression and each rule's hourly count."""

    _episodes: dict[tuple[str, str], _Episode] = field(default_factory=dict)
    _raised: dict[str, deque[float]] = field(default_factory=dict)
    suppressed: int = 0  # alerts not raised because of a rule's cap

    def evaluate(self, rule: Rule, source: str, t: float, signals: Signals) -> list[Raised | Resolved]:
        episode = self._episodes.setdefault((rule.code, source), _Episode())
        if not rule.holds(signals):
            episode.since = None
            if episode.alert_id is not None and rule.auto_resolve:
                resolved = Resolved(episode.alert_id, rule, source, t)
                episode.alert_id, episode.ended = None, t
                return [resolved]
            return []
        if episode.since is None:
            episode.since = t
        if (episode.alert_id is not None or t - episode.since < rule.duration_s
                or (episode.ended is not None and t - episode.ended < rule.suppression_s)):
            return []
        recent = self._raised.setdefault(rule.code, deque())
        while recent and recent[0] <= t - 3600:
            recent.popleft()
        if len(recent) >= rule.max_per_hour:
            self.suppressed += 1
            return []
        recent.append(t)
        episode.alert_id = f"{rule.code}:{source}:{int(episode.since)}"
        return [Raised(episode.alert_id, rule, source, episode.since, t)]

    def resolved_elsewhere(self, rule_code: str, source: str, t: float) -> None:
        """An alert resolved by a person (in Odoo): no new one for this source within the suppression,
        and a later one is a new episode (with a new id)."""
        episode = self._episodes.setdefault((rule_code, source), _Episode())
        episode.alert_id, episode.ended, episode.since = None, t, None
