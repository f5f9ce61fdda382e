"""`smart-dairy evaluate`: the scoring against ground truth, and a small herd through the real pipeline."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from ingestor import evaluate, herd

from .conftest import MIGRATIONS

START = datetime(2026, 3, 1, tzinfo=UTC)


def alert(rule: str, source: str, began: datetime, raised: datetime, resolved: datetime | None = None) -> dict:
    kind, _, ident = source.partition(":")
    return {"rule_code": rule, "source_type": kind, "source_id": ident, "time": began, "resolved_at": resolved,
            "farm_id": 1, "details": json.dumps({"raised_at": raised.isoformat()})}


def test_recall_precision_and_delay_against_the_events() -> None:
    day = timedelta(days=1)
    found = herd.Event("oestrus", START + 2 * day, START + 2 * day + timedelta(hours=12), cow=3)
    missed = herd.Event("oestrus", START + 3 * day, START + 3 * day + timedelta(hours=12), cow=4)
    warm_up = herd.Event("oestrus", START + timedelta(hours=2), START + timedelta(hours=14), cow=5)  # not scored
    cow3, cow7 = f"animal:{herd.animal_id(1, 3)}", f"animal:{herd.animal_id(1, 7)}"
    alerts = [alert("oestrus", cow3, found.start + timedelta(minutes=10), found.start + timedelta(minutes=40)),
              alert("oestrus", cow7, START + 4 * day, START + 4 * day)]  # no event for cow 7: false
    [oestrus] = [s for s in evaluate.score([found, missed, warm_up], alerts, 1, 10, START, START + 10 * day)
                 if s.detector.name == "oestrus"]
    assert (oestrus.events, oestrus.found, oestrus.alerts, oestrus.true) == (2, 1, 2, 1)
    assert oestrus.delays == [40 * 60.0]
    assert "50.0%" in oestrus.line() and "0h40" in oestrus.line()


def test_an_alert_open_across_an_event_finds_it() -> None:
    event = herd.Event("heat_stress", START + timedelta(days=2), START + timedelta(days=2, hours=6), zone=0)
    zone = f"zone:{herd.zone_id(1, 0)}"
    began = event.start - timedelta(hours=3)  # an earlier heat wave's alert, still open when this one began
    scores = evaluate.score([event], [alert("heat_stress", zone, began, began, event.end)], 1, 10, START,
                            START + timedelta(days=5))
    [heat] = [s for s in scores if s.detector.name == "heat_stress"]
    assert (heat.found, heat.true) == (1, 1) and heat.delays == [0.0]


async def test_a_small_herd_through_the_pipeline(empty_db: str) -> None:
    lines = await evaluate.run(empty_db, MIGRATIONS, cows=20, days=2.5, zones=2, interval_s=900, seed=3,
                               profile="postgres", ground_truth=None, keep=True, events_per_cow_day=0.2)
    print("\n".join(lines))
    assert lines[0].startswith("20 cows, 2 zones, 2.5 days every 900 s, profile postgres:")
    by_name = {line.split()[0]: line.split() for line in lines[3:10]}
    assert set(by_name) == {d.name for d in evaluate.DETECTORS}
    assert int(by_name["fever"][1]) > 0 and by_name["fever"][3] == "100.0%"  # fever needs no baseline
    assert any(line.startswith("busiest hour per rule (cap):") for line in lines)
