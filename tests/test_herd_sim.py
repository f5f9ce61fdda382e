"""The simulated farm of ingestor/herd.py: farm shapes, rhythms, events, confounders and transport
faults, each seen in the messages it publishes."""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import pytest

from ingestor import herd
from ingestor.registry import Registry
from ingestor.validation import Context, decode_batch, validate_readings

START = datetime(2026, 7, 1, tzinfo=UTC)
DAY, HOUR = timedelta(days=1), timedelta(hours=1)


def simulate(state: herd.HerdState, events, days: float, interval: float = 900, start: datetime = START
             ) -> list[tuple[datetime, str, dict]]:
    """(tick, topic, payload) of every message over `days`."""
    out = []
    for k in range(1, int(days * 86_400 // interval) + 1):
        t = start + timedelta(seconds=k * interval)
        out += [(t, topic, msgspec.json.decode(payload)) for topic, payload in state.messages(t, interval, events)]
    return out


def farm(cows: int = 60, shape: str = "parlour", seed: int = 1, **kw) -> herd.HerdState:
    kw.setdefault("faults", False)
    return herd.HerdState(1, cows, 2, np.random.default_rng(seed), shape=shape, **kw)


_INDEXED: list = [None, {}]  # the message list last indexed (held, so it is that list), and its index


def collar(messages, cow: int, key: str) -> list[tuple[datetime, float]]:
    """(tick, value) of `key` in a cow's collar messages (indexed once per message list)."""
    if _INDEXED[0] is not messages:
        index: dict[str, list[tuple[datetime, dict]]] = defaultdict(list)
        for t, topic, p in messages:
            if topic.endswith("/activity/telemetry"):
                index[p["animal_id"]].append((t, p))
        _INDEXED[:] = [messages, index]
    return [(t, p[key]) for t, p in _INDEXED[1].get(herd.cow_code(cow), ()) if key in p]


def sessions(messages, cow: int | None = None) -> list[tuple[datetime, str, dict]]:
    return [(datetime.fromisoformat(p["timestamp"]), topic, p) for _, topic, p in messages
            if topic.endswith("/session/end") and (cow is None or p["animal_id"] == herd.cow_code(cow))]


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def between(series, a: datetime, b: datetime) -> float:
    return mean(v for t, v in series if a <= t < b)


# --- farm shapes ----------------------------------------------------------------------------------


def test_parlour_milks_everyone_at_fixed_hours_and_the_longer_interval_gives_more_milk() -> None:
    state = farm(shape="parlour", milkings=2)
    got = sessions(simulate(state, [], 3))
    assert {topic.split("/")[5] for _, topic, _ in got} == {str(herd.PARLOUR_ID)}
    hours = {t.hour for t, _, _ in got}
    assert hours <= {5, 6, 16, 17}  # 60 cows through the parlour in 45 minutes from 05:00 and 16:00
    morning = [p["milk_data"]["total_volume_liters"] for t, _, p in got if t.hour < 12 and t > START + DAY]
    evening = [p["milk_data"]["total_volume_liters"] for t, _, p in got if t.hour >= 12 and t > START + DAY]
    assert len(morning) == len(evening) == 2 * 60
    assert 1.08 < mean(morning) / mean(evening) < 1.3  # 13 h against 11 h of secretion


def test_robot_sessions_come_at_each_cows_own_intervals_and_yield_scales_with_the_interval() -> None:
    state = farm(cows=60, shape="robots")
    got = sessions(simulate(state, [], 5))
    assert {topic.split("/")[5] for _, topic, _ in got} == {str(herd.ROBOT_PARLOUR_ID)}
    by_cow: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for t, _, p in got:
        by_cow[p["animal_id"]].append((t, p["milk_data"]["total_volume_liters"]))
    intervals, ratios = [], []
    for visits in by_cow.values():
        pairs = [((b[0] - a[0]).total_seconds() / 3600, b[1]) for a, b in zip(visits, visits[1:], strict=False)]
        intervals += [h for h, _ in pairs]
        rate = statistics.median(kg / h for h, kg in pairs)  # her litres an hour
        ratios += [kg / (rate * h) for h, kg in pairs]
    assert 6.0 <= min(intervals) and max(intervals) <= 16.5
    per_day = [len(v) / 5 for v in by_cow.values()]
    assert 2.0 <= min(per_day) and max(per_day) <= 4.0 and statistics.pstdev(per_day) > 0.2  # each her own
    assert statistics.median(ratios) == pytest.approx(1.0, abs=0.03)
    assert np.mean(np.abs(np.array(ratios) - 1) < 0.15) > 0.9  # yield = her rate x the interval, with noise


def test_a_mixed_farm_milks_some_pens_in_the_parlour_and_the_others_on_robots() -> None:
    state = farm(cows=150, shape="mixed")
    got = sessions(simulate(state, [], 1.5))
    parlor = {p["animal_id"]: topic.split("/")[5] for _, topic, p in got}
    for c in range(state.cows):
        expected = herd.PARLOUR_ID if state.pen[c] % 2 == 0 else herd.ROBOT_PARLOUR_ID
        assert parlor.get(herd.cow_code(c), str(expected)) == str(expected)
    assert set(parlor.values()) == {"1", "2"}


def test_each_cow_has_her_own_diurnal_rhythm() -> None:
    state = farm(cows=40)
    messages = simulate(state, [], 3)
    night = lambda t: 1 <= t.hour < 5  # noqa: E731
    afternoon = lambda t: 12 <= t.hour < 16  # noqa: E731
    for key in ("rumination_minutes", "resting_minutes"):
        herd_night = mean(v for c in range(40) for t, v in collar(messages, c, key) if night(t))
        herd_day = mean(v for c in range(40) for t, v in collar(messages, c, key) if afternoon(t))
        assert herd_night > 1.3 * herd_day, key
    temps = [mean(v for t, v in collar(messages, c, "temperature_c") if 17 <= t.hour < 20)
             - mean(v for t, v in collar(messages, c, "temperature_c") if 5 <= t.hour < 8) for c in range(40)]
    assert 0.15 < statistics.median(temps) < 0.6  # warmest in the late afternoon
    levels = [mean(v for _, v in collar(messages, c, "rumination_minutes")) for c in range(40)]
    assert statistics.pstdev(levels) > 25  # cows differ in level


# --- events ---------------------------------------------------------------------------------------


def test_a_lame_cow_moves_less_lies_more_gives_less_and_visits_the_robot_less() -> None:
    state = farm(cows=30, shape="robots")
    lame = herd.Event("lameness", START + 3 * DAY, START + 20 * DAY, cow=4, intensity=0.65)
    messages = simulate(state, [lame], 9)
    before, during = (START + DAY, START + 3 * DAY), (START + 6 * DAY, START + 9 * DAY)

    def ratio(cow: int, key: str) -> float:
        series = collar(messages, cow, key)
        return between(series, *during) / between(series, *before)

    others = statistics.median(ratio(c, "activity_index") for c in range(5, 30))
    assert ratio(4, "activity_index") < 0.8 * others
    assert ratio(4, "resting_minutes") > 1.08 * statistics.median(ratio(c, "resting_minutes") for c in range(5, 30))
    visits = [t for t, _, _ in sessions(messages, 4)]
    assert sum(during[0] <= t for t in visits) / 3 < sum(before[0] <= t < before[1] for t in visits) / 2


def test_mastitis_raises_conductivity_and_lowers_yield_subclinical_only_a_little() -> None:
    state = farm(cows=20, milkings=2)
    clinical = herd.Event("mastitis", START + 3 * DAY, START + 6 * DAY, cow=1, intensity=1.35)
    subclinical = herd.Event("subclinical_mastitis", START + 3 * DAY, START + 40 * DAY, cow=2, intensity=1.08)
    messages = simulate(state, [clinical, subclinical], 6)

    def change(cow: int, field: str) -> float:
        got = [(t, p["milk_data"][field]) for t, _, p in sessions(messages, cow)]
        return between(got, START + 4 * DAY + 12 * HOUR, START + 6 * DAY) / between(got, START + DAY, START + 3 * DAY)

    assert change(1, "conductivity_ms_cm") > 1.25
    assert change(1, "total_volume_liters") < 0.9
    assert 1.03 < change(2, "conductivity_ms_cm") < 1.15
    assert not any(p["quality_flags"]["blood_detected"] for _, _, p in sessions(messages, 2))


def test_a_fever_is_the_period_over_39_5_degc() -> None:
    state = farm(cows=10)
    fever = herd.Event("fever", START + DAY, START + 2 * DAY, cow=3, intensity=40.2)
    temps = collar(simulate(state, [fever], 3), 3, "temperature_c")
    assert min(v for t, v in temps if fever.start <= t < fever.end) > 39.5
    assert max(v for t, v in temps if t < fever.start - 4 * HOUR or t > fever.end + 7 * HOUR) < 39.5


def test_oestrus_follows_the_cycle_of_open_cows_with_weak_and_strong_heats() -> None:
    state = herd.HerdState(1, 400, 4, np.random.default_rng(5))
    plan = state.plan(START, START + 60 * DAY)
    heats = [e for e in plan.truth if e.kind == "oestrus"]
    calving_in_run = {e.cow for e in plan.context if e.kind == "fresh_cow" and e.start > START}
    assert heats and not {e.cow for e in heats} & calving_in_run
    by_cow: dict[int, list[datetime]] = defaultdict(list)
    for e in heats:
        by_cow[e.cow].append(e.start)
        assert timedelta(hours=6) <= e.end - e.start <= timedelta(hours=24)
        assert 1.3 <= e.intensity <= 4.0
        assert state.dim0[e.cow] + (e.start - START) / DAY >= 18  # not early in lactation
    gaps = [(b - a) / DAY for starts in by_cow.values() for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps and all(18 <= g <= 24 for g in gaps)
    weak = sum(e.intensity < herd.WEAK_HEAT for e in heats) / len(heats)
    assert 0.15 < weak < 0.6
    assert len({e.start.hour for e in heats}) == 24  # onset at any hour
    open_cows = len(by_cow) / state.cows
    assert 0.2 < open_cows < 0.7  # pregnant, anoestrous and dry cows do not cycle


def test_plans_are_independent_per_seed_and_label_truths_and_context_apart() -> None:
    end = START + 28 * DAY
    a, b = (herd.HerdState(1, 200, 4, np.random.default_rng(s)).plan(START, end) for s in (1, 2))
    assert [e.start for e in a.truth] != [e.start for e in b.truth]
    for plan in (a, b):
        assert all(e.kind in herd.EVENT_KINDS for e in plan.truth)
        assert all(e.kind in herd.CONTEXT_KINDS for e in plan.context)
        assert all(START <= e.start < end for e in plan) and all(e.start < START for e in plan.ongoing)
    kinds = {e.kind for p in (a, b) for e in p.truth} | {e.kind for p in (a, b) for e in p.context}
    assert kinds >= {"oestrus", "lameness", "subclinical_mastitis", "device_failure", "fresh_cow", "regrouping"}


# --- confounders ----------------------------------------------------------------------------------


def test_a_heat_wave_raises_every_zones_thi_and_is_labelled_heat_stress_in_each() -> None:
    rng = np.random.default_rng(3)
    t0, t1 = START.timestamp(), (START + 6 * DAY).timestamp()
    weather = herd.Weather.draw(rng, t0 + 2 * 86_400, t1, 3, waves_per_day=5)
    wave_start, wave_end = (datetime.fromtimestamp(x, UTC) for x in weather.waves[0])
    spells = weather.heat_spells(t0, t1)
    heat = [herd.Event("heat_stress", datetime.fromtimestamp(a, UTC), datetime.fromtimestamp(b, UTC), zone=z)
            for z, a, b, _ in spells]
    plan = herd.Plan(heat, context=[herd.Event("heat_wave", wave_start, wave_end)], weather=weather)
    state = herd.HerdState(1, 10, 3, rng, faults=False)
    messages = simulate(state, plan, 6)
    for z in range(3):
        uid = herd.zone_uid(1, z)
        series = [(t, herd.thi(p["readings"]["temperature_c"], p["readings"]["humidity_percent"]))
                  for t, topic, p in messages if p.get("device_id") == uid]
        hottest = max(v for t, v in series if wave_start <= t < wave_end)
        assert hottest > 76
        assert between(series, wave_start, wave_end) > between(series, START, START + DAY) + 4
        assert any(e.zone == z and e.start < wave_end and wave_start < e.end for e in heat)
    # the cows: warmer, and ruminating less at the height of it
    temps = mean(v for c in range(10) for t, v in collar(messages, c, "temperature_c")
                 if wave_start + 12 * HOUR <= t < wave_end and 14 <= t.hour < 18)
    cool = mean(v for c in range(10) for t, v in collar(messages, c, "temperature_c")
                if t < START + DAY and 14 <= t.hour < 18)
    assert temps > cool + 0.3


def test_a_feed_change_lowers_rumination_in_its_pen() -> None:
    state = farm(cows=140)  # two pens
    change = herd.Event("feed_change", START + 2 * DAY, START + 4 * DAY, pen=1, intensity=0.78)
    messages = simulate(state, herd.Plan([], context=[change]), 4)

    def ratio(c: int) -> float:
        series = collar(messages, c, "rumination_minutes")
        return between(series, START + 2.5 * DAY, START + 4 * DAY) / between(series, START + DAY, START + 2 * DAY)

    pen0 = statistics.median(ratio(c) for c in np.flatnonzero(state.pen == 0))
    pen1 = statistics.median(ratio(c) for c in np.flatnonzero(state.pen == 1))
    assert pen1 < 0.88 * pen0


def test_regrouped_cows_are_restless() -> None:
    state = farm(cows=30)
    moved = [herd.Event("regrouping", START + DAY + 10 * HOUR, START + 2 * DAY + 10 * HOUR, cow=c, pen=0,
                        intensity=1.5) for c in (0, 1, 2)]
    messages = simulate(state, herd.Plan([], context=moved), 2.5)
    for c in (0, 1, 2):
        series = collar(messages, c, "activity_index")
        same_hours_before = between(series, START + 10 * HOUR, START + DAY + 10 * HOUR)
        assert between(series, START + DAY + 10 * HOUR, START + 2 * DAY + 10 * HOUR) > 1.25 * same_hours_before


def test_a_parlour_breakdown_delays_the_milking_and_the_next_one_is_bigger() -> None:
    state = farm(cows=40, milkings=2)
    scheduled = START + DAY + 16 * HOUR
    down = herd.Event("breakdown", scheduled, scheduled + 4 * HOUR)
    got = sessions(simulate(state, herd.Plan([], context=[down]), 2))
    evening = [(t, p["milk_data"]["total_volume_liters"]) for t, _, p in got if START + DAY + 12 * HOUR < t]
    normal = [p["milk_data"]["total_volume_liters"] for t, _, p in got if START + 12 * HOUR < t < START + DAY]
    assert len(evening) == 40 and min(t for t, _ in evening) >= scheduled + 4 * HOUR
    assert mean(v for _, v in evening) > 1.25 * mean(normal)


def test_a_robot_breakdown_makes_its_cows_wait() -> None:
    state = farm(cows=60, shape="robots")
    down = herd.Event("breakdown", START + DAY, START + DAY + 5 * HOUR, pen=0, robot=0)
    got = sessions(simulate(state, herd.Plan([], context=[down]), 2))
    assert not [t for t, topic, _ in got if topic.split("/")[7] == "1" and down.start < t < down.end]
    after = [t for t, topic, _ in got if topic.split("/")[7] == "1" and down.end <= t < down.end + 2 * HOUR]
    assert len(after) > 10  # the queue


def test_a_cow_calving_in_the_run_is_dry_until_then_and_fresh_after() -> None:
    state = farm(cows=20, milkings=2)
    calving = START + 2 * DAY + 3 * HOUR
    fresh = herd.Event("fresh_cow", calving, calving + 10 * DAY, cow=7)
    messages = simulate(state, herd.Plan([], context=[fresh]), 5)
    milked = [t for t, _, _ in sessions(messages, 7)]
    assert milked and min(milked) > calving
    first_days = [p["milk_data"]["total_volume_liters"] for _, _, p in sessions(messages, 7)]
    assert first_days[-1] > first_days[0]  # yield climbing
    rum = collar(messages, 7, "rumination_minutes")
    others = [collar(messages, c, "rumination_minutes") for c in range(8, 20)]
    own = between(rum, calving, calving + 2 * DAY) / between(rum, START, START + DAY)
    herd_ratio = statistics.median(between(s, calving, calving + 2 * DAY) / between(s, START, START + DAY)
                                   for s in others)
    assert own < 0.85 * herd_ratio


def test_a_stuck_sensor_repeats_exactly_the_same_readings() -> None:
    state = farm(cows=5)
    stuck = herd.Event("stuck_sensor", START + DAY, START + DAY + 18 * HOUR, zone=1)
    messages = simulate(state, [stuck], 3)
    uid = herd.zone_uid(1, 1)
    during = [p for t, _, p in messages if p.get("device_id") == uid and stuck.start < t < stuck.end]
    outside = [p for t, _, p in messages if p.get("device_id") == uid and not stuck.start <= t <= stuck.end]
    assert len(during) > 60 and all(p["readings"] == during[0]["readings"] for p in during)
    assert len({p["timestamp"] for p in during}) == len(during)  # its clock still runs
    assert len({msgspec.json.encode(p["readings"]) for p in outside}) == len(outside)
    other = [p["readings"] for t, _, p in messages if p.get("device_id") == herd.zone_uid(1, 0)
             and stuck.start < t < stuck.end]
    assert len({msgspec.json.encode(r) for r in other}) == len(other)


# --- transport ------------------------------------------------------------------------------------


def test_the_network_delivers_late_twice_and_with_skewed_clocks() -> None:
    state = herd.HerdState(1, 200, 2, np.random.default_rng(4), faults=True)
    state.skew_s[:] = 0
    state.skew_s[3] = 420.0
    seen: dict[tuple[str, bytes], int] = defaultdict(int)
    late = []
    skew = []
    for k in range(1, 4 * 96 + 1):
        t = START + timedelta(seconds=900 * k)
        for topic, payload in state.messages(t, 900, []):
            seen[(topic, payload)] += 1
            p = msgspec.json.decode(payload)
            if "timestamp" in p and topic.endswith("/telemetry"):
                age = (t - datetime.fromisoformat(p["timestamp"])).total_seconds()
                if age > 3000:
                    late.append(age)
                if p.get("animal_id") == herd.cow_code(3):
                    skew.append(age)
    assert state.delayed > 100 and len(late) >= 0.9 * state.delayed  # all but those still on their way
    assert all(3600 <= a <= 6 * 3600 + 900 for a in late)  # one to six hours late
    assert state.duplicated > 100 and sum(n == 2 for n in seen.values()) == state.duplicated
    assert statistics.median(skew) == -420.0  # her clock is 7 minutes fast


def test_fahrenheit_collars_send_their_temperature_as_a_degf_reading_batch() -> None:
    state = farm(cows=20, fahrenheit=2)
    batches = [payload for t in (START + HOUR, START + 2 * HOUR)
               for topic, payload in state.messages(t, 900, []) if topic == herd.SENSOR_BATCH]
    items, errors = decode_batch(batches[0])
    assert not errors and len(items) == 2 and {r.metric_unit for r in items} == {"degF"}
    checked = validate_readings(items, Context(Registry(), now=START + 3 * HOUR))
    assert not checked.errors and all(37.5 < row[5] < 40 for row in checked.rows)  # stored in degC
    messages = [msgspec.json.decode(p) for topic, p in state.messages(START + 3 * HOUR, 900, [])
                if topic.endswith("/activity/telemetry")]
    fahrenheit = {herd.cow_code(c) for c in np.flatnonzero(state.fahrenheit)}
    assert all(("temperature_c" in p) == (p["animal_id"] not in fahrenheit) for p in messages)


def test_registry_rows_carry_pens_calvings_and_lactations() -> None:
    state = herd.HerdState(1, 150, 2, np.random.default_rng(2))
    state.plan(START, START + 5 * DAY)
    rows = herd.registry_rows(1, 150, 2, 900, state)["animals"]
    assert {r[6] for r in rows} == {"Pen 1", "Pen 2", "Pen 3"}
    assert {r[4] for r in rows} == {1, 2, 3}
    assert all(r[5] <= (START + 5 * DAY).date() for r in rows)
    assert any(r[5] > START.date() for r in rows)  # a cow calving during the run
