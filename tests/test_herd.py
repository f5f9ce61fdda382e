"""The live farm simulator: its messages are valid contract messages and its events show in them."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np

from ingestor import herd
from ingestor.registry import Registry
from ingestor.topics import decode_message
from ingestor.validation import Context, validate_milk, validate_readings, validate_rfid

START = datetime(2026, 6, 1, 4, 30, tzinfo=UTC)


def run(events: list[herd.Event], ticks: int, cows: int = 30) -> list[tuple[datetime, str, bytes]]:
    state = herd.HerdState(1, cows, 2, np.random.default_rng(3))
    out = []
    for k in range(1, ticks + 1):
        t = START + timedelta(minutes=k)
        out += [(t, topic, payload) for topic, payload in herd.messages(state, t, 60, events)]
    return out


def test_every_message_decodes_and_validates() -> None:
    messages = run([], 150)  # 04:31 to 07:00: collars, climate, hourly status, the 05:00 milking
    ctx = Context(Registry(), now=START + timedelta(hours=3))
    kinds: dict[str, int] = {}
    for _, topic, payload in messages:
        mapped = decode_message(topic, payload)
        for name, items, validate in (("sensor", mapped.readings, validate_readings),
                                      ("milk", mapped.milk, validate_milk), ("rfid", mapped.rfid, validate_rfid)):
            if items:
                result = validate(items, ctx)
                assert result.errors == [], (topic, result.errors)
                kinds[name] = kinds.get(name, 0) + len(result.rows)
    assert kinds["milk"] == 30 and kinds["rfid"] == 30  # every cow milked once in the window
    assert kinds["sensor"] > 30 * 150 * 5


def test_events_change_the_signals_they_are_about() -> None:
    oestrus = herd.Event("oestrus", START, START + timedelta(hours=12), cow=3)
    fever = herd.Event("fever", START, START + timedelta(hours=12), cow=4)
    failure = herd.Event("device_failure", START, START + timedelta(hours=12), cow=5)
    readings: dict[tuple[str, str], list[float]] = {}
    for _, topic, payload in run([oestrus, fever, failure], 30):
        if "/activity/" in topic:
            p = msgspec.json.decode(payload)
            for key in ("activity_index", "temperature_c"):
                readings.setdefault((p["device_id"], key), []).append(p[key])
    mean = {k: sum(v) / len(v) for k, v in readings.items()}
    others = [mean[(herd.collar_uid(1, c), "activity_index")] for c in range(6, 30)]
    # Against the herd's median: at 04:45 the pen walks to the parlour, and an active cow on that walk
    # can be as busy as a quiet one in heat.
    assert mean[(herd.collar_uid(1, 3), "activity_index")] > 2 * statistics.median(others)
    assert mean[(herd.collar_uid(1, 4), "temperature_c")] > 39.5
    assert (herd.collar_uid(1, 5), "activity_index") not in readings  # a failed collar is silent


def test_event_plan_is_reproducible_and_inside_the_window() -> None:
    end = START + timedelta(days=10)
    a = herd.plan_events(100, 4, START, end, rng=np.random.default_rng(1))
    b = herd.plan_events(100, 4, START, end, rng=np.random.default_rng(1))
    assert a == b and len(a) > 50
    assert all(START <= e.start < end and e.kind in herd.EVENT_KINDS for e in a)
    assert {e.kind for e in a} == set(herd.EVENT_KINDS)
