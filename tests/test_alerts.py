"""The rule engine's features on hand-made signal sequences."""

from __future__ import annotations

from ingestor.alerts import Condition, Engine, Raised, Rule

HOT = Condition("value", "temperature_c", ">", 30.0)
HUMID = Condition("value", "humidity_percent", ">", 80.0)


def rule(**kw) -> Rule:
    return Rule(**{"code": "HOT", "category": "environment", "severity": "warning", "conditions": (HOT,),
                   "suppression_s": 0.0, **kw})


def signals(temp: float | None = None, humidity: float | None = None) -> dict:
    s = {}
    if temp is not None:
        s[("value", "temperature_c")] = temp
    if humidity is not None:
        s[("value", "humidity_percent")] = humidity
    return s


def run(r: Rule, series: list[tuple[float, dict]], source: str = "zone-1", engine: Engine | None = None) -> list:
    engine = engine or Engine()
    return [(t, type(a).__name__) for t, s in series for a in engine.evaluate(r, source, t, s)]


def test_raise_once_then_resolve_when_the_condition_clears() -> None:
    assert run(rule(), [(0, signals(31)), (60, signals(32)), (120, signals(25))]) == [(0, "Raised"), (120, "Resolved")]


def test_and_needs_every_condition_or_needs_one() -> None:
    both = rule(conditions=(HOT, HUMID))
    assert run(both, [(0, signals(31, 50)), (60, signals(31))]) == []  # humidity low, then unknown
    assert run(both, [(0, signals(31, 90))]) == [(0, "Raised")]
    either = rule(conditions=(HOT, HUMID), combine="or")
    assert run(either, [(0, signals(20, 90))]) == [(0, "Raised")]
    assert run(either, [(0, signals(20, 50))]) == []


def test_duration_must_be_met_without_a_break() -> None:
    r = rule(duration_s=600)
    series = [(0, signals(31)), (300, signals(31)), (400, signals(20)), (500, signals(31)), (1000, signals(31)),
              (1100, signals(31))]
    assert run(r, series) == [(1100, "Raised")]  # the clock restarted at 500


def test_suppression_after_a_resolve() -> None:
    r = rule(suppression_s=3600)
    series = [(0, signals(31)), (60, signals(20)), (120, signals(31)), (3000, signals(31)), (3700, signals(31))]
    assert run(r, series) == [(0, "Raised"), (60, "Resolved"), (3700, "Raised")]


def test_cap_per_hour_across_sources() -> None:
    engine, r = Engine(), rule(max_per_hour=3)
    raised = [a for k in range(10) for a in engine.evaluate(r, f"zone-{k}", k * 10.0, signals(31))]
    assert len(raised) == 3 and engine.suppressed == 7
    later = engine.evaluate(r, "zone-9", 3700.0, signals(31))  # an hour on, the cap has room again
    assert [type(a) for a in later] == [Raised]


def test_no_auto_resolve_keeps_the_alert_open() -> None:
    assert run(rule(auto_resolve=False), [(0, signals(31)), (60, signals(20)), (120, signals(31))]) == [(0, "Raised")]


def test_alert_ids_are_deterministic_and_new_per_episode() -> None:
    r = rule()
    first = Engine().evaluate(r, "zone-1", 100.0, signals(31))
    again = Engine().evaluate(r, "zone-1", 100.0, signals(31))  # the same readings after a restart
    assert first[0].alert_id == again[0].alert_id == "HOT:zone-1:100"
    engine = Engine()
    engine.evaluate(r, "zone-1", 100.0, signals(31))
    engine.resolved_elsewhere("HOT", "zone-1", 150.0)  # resolved in Odoo while still hot
    assert engine.evaluate(r, "zone-1", 200.0, signals(31))[0].alert_id == "HOT:zone-1:200"


def test_a_rule_from_its_table_row() -> None:
    row = {"code": "FEVER", "category": "health", "severity": "critical", "combine": "and", "duration_s": 1800,
           "suppression_s": 21600, "max_per_hour": 20, "auto_resolve": True,
           "conditions": [{"signal": "value", "metric": "body_temperature_c", "op": ">=", "value": 39.5}]}
    r = Rule.from_row(row)
    assert r.conditions == (Condition("value", "body_temperature_c", ">=", 39.5),) and r.duration_s == 1800
    engine, fever = Engine(), {("value", "body_temperature_c"): 39.6}
    assert engine.evaluate(r, "cow-1", 0, fever) == []
    raised = engine.evaluate(r, "cow-1", 1800, fever)
    assert [(a.alert_id, a.time, a.raised_at) for a in raised] == [("FEVER:cow-1:0", 0, 1800)]
