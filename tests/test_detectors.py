"""The built-in detectors (the rules the migrations seed) on hand-made series that must fire, and on
near misses that must not."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np

from ingestor.alerts import Alerting, Decisions, Rule
from ingestor.registry import Device, Registry
from ingestor.topics import decode_message
from ingestor.validation import Context, validate_readings

START = datetime(2026, 1, 1, tzinfo=UTC)
REGISTRY = Registry(devices={"COL-1": Device(1, "collar", 1, None, 1.0, 0.0, 900),
                             "COL-2": Device(1, "collar", 2, None, 1.0, 0.0, 900)},
                    animal_names={1: "COW-00001", 2: "COW-00002"})


def sensor(t: datetime, metric: str, value: float, *, device: str = "COL-1", animal: int | None = 1,
           zone: int | None = None, device_type: str = "collar", battery: int | None = None) -> tuple:
    return (t, device, device_type, 1, metric, value, None, "valid", False, animal, zone, None, battery, None, "{}")


def milk(t: datetime, yield_kg: float, conductivity: float = 4.8, *, animal: int = 1, scc: int | None = None,
         blood: bool = False) -> tuple:
    return (t, "MM-1", animal, 1, f"S-{animal}-{t:%Y%m%d%H}", yield_kg, 420, yield_kg / 7, conductivity, 37.0, blood,
            None, None, None, scc, None, t, t, None, "ok", "{}")


def every(minutes: float, hours: float, start: datetime = START) -> Iterator[datetime]:
    for k in range(int(hours * 60 / minutes)):
        yield start + timedelta(minutes=k * minutes)


def raised(decisions: list[Decisions], *, anomaly: bool = False) -> list[str]:
    """The rules raised; the anomaly detector (which any large deviation also fires) only if asked."""
    return [row[2] for d in decisions for row in d.raised if anomaly or row[2] != "anomaly"]


def collar_days(alerting: Alerting, metric: str, mean: float, sd: float, days: float = 2, *, animal: int = 1,
                device: str = "COL-1") -> list[Decisions]:
    """A normal baseline: a reading every 15 minutes for `days`."""
    rng = np.random.default_rng(animal)
    rows = [sensor(t, metric, mean + rng.normal(0, sd), device=device, animal=animal) for t in every(15, days * 24)]
    return [alerting.observe_readings(rows, REGISTRY)]


def after(days: float, minutes: float = 0) -> datetime:
    return START + timedelta(days=days, minutes=minutes)


def feed(alerting: Alerting, rows: list[tuple]) -> list[Decisions]:
    return [alerting.observe_readings([r], REGISTRY) for r in rows]


def test_heat_stress_needs_thi_over_72_for_30_minutes(rules: list[Rule]) -> None:
    alerting = Alerting(rules)
    env = {"device": "ENV-1", "animal": None, "zone": 3, "device_type": "env_sensor"}
    cool = [r for t in every(5, 2) for r in (sensor(t, "temperature_c", 20, **env),
                                             sensor(t, "humidity_percent", 60, **env))]
    assert raised(feed(alerting, cool)) == []
    hot = [r for t in every(5, 1, after(0, 120)) for r in (sensor(t, "temperature_c", 30, **env),
                                                          sensor(t, "humidity_percent", 70, **env))]
    decided = feed(alerting, hot)
    assert raised(decided) == ["heat_stress"]
    first = next(d.raised[0] for d in decided if d.raised)
    assert first[0] == after(0, 120) and first[6:8] == ("zone", "3")  # the episode began with the first hot reading
    assert first[10] == "Heat stress (THI): zone 3: thi 81.38 >= 72"


def test_oestrus_is_activity_at_twice_her_own_baseline(rules: list[Rule]) -> None:
    alerting = Alerting(rules)
    collar_days(alerting, "activity_index", 50, 5)
    collar_days(alerting, "activity_index", 50, 5, animal=2, device="COL-2")
    restless = [sensor(t, "activity_index", 70, device="COL-2", animal=2) for t in every(15, 3, after(2))]
    assert raised(feed(alerting, restless)) == []  # 1.4x: restless, not in heat
    heat = [sensor(t, "activity_index", 140) for t in every(15, 3, after(2))]
    decided = feed(alerting, heat)
    assert raised(decided) == ["oestrus"] and "COW-00001" in next(d.raised[0][10] for d in decided if d.raised)


def test_fever_needs_39_5_degrees_for_30_minutes(rules: list[Rule]) -> None:
    alerting = Alerting(rules)
    spike = [sensor(after(0, 0), "body_temperature_c", 40.2), sensor(after(0, 15), "body_temperature_c", 38.7)]
    warm = [sensor(t, "body_temperature_c", 39.3) for t in every(15, 2, after(0, 30))]
    assert raised(feed(alerting, spike + warm)) == []
    fever = [sensor(t, "body_temperature_c", 40.1) for t in every(15, 1, after(0, 180))]
    assert raised(feed(alerting, fever)) == ["fever"]


def test_rumination_drop_against_her_baseline_and_the_absolute_floor(rules: list[Rule]) -> None:
    alerting = Alerting(rules)
    collar_days(alerting, "rumination_minutes", 500, 12)
    dip = [sensor(t, "rumination_minutes", 430) for t in every(15, 3, after(2))]  # 0.86x
    assert raised(feed(alerting, dip)) == []
    drop = [sensor(t, "rumination_minutes", 330) for t in every(15, 3, after(2, 180))]  # 0.66x for 3 h
    assert raised(feed(alerting, drop)) == ["rumination_drop"]
    new_cow = Alerting(rules)  # no baseline yet: the floor alone
    assert raised(feed(new_cow, [sensor(t, "rumination_minutes", 250) for t in every(15, 3)])) == ["rumination_drop"]


def milkings(alerting: Alerting, days: int = 3, yield_kg: float = 15.0) -> None:
    rng = np.random.default_rng(3)
    rows = [milk(START + timedelta(days=d, hours=h), yield_kg * rng.normal(1, 0.02), 4.8 * rng.normal(1, 0.02))
            for d in range(days) for h in (5, 16)]
    assert not alerting.observe_milk(rows, REGISTRY)


def test_mastitis_from_conductivity_scc_or_blood(rules: list[Rule]) -> None:
    for session, expected in ((milk(after(3, 300), 15.0, 4.9), []),
                              (milk(after(3, 300), 14.5, 6.4), ["mastitis"]),
                              (milk(after(3, 300), 15.0, 4.8, scc=250_000), ["mastitis"]),
                              (milk(after(3, 300), 15.0, 4.8, blood=True), ["mastitis"]),
                              (milk(after(3, 300), 13.0, 5.7), ["mastitis_yield"])):  # 1.19x and 0.87x together
        alerting = Alerting(rules)
        milkings(alerting)
        assert raised([alerting.observe_milk([session], REGISTRY)]) == expected, session


def test_blood_in_a_fresh_cows_first_days_is_colostrum_not_mastitis(rules: list[Rule]) -> None:
    calved = START.timestamp() + 2 * 86_400  # her milkings baseline began before: a cow in her 2nd lactation
    fresh = Registry(devices=REGISTRY.devices, animal_names=REGISTRY.animal_names, calvings={1: calved})
    for day, expected in ((3, []), (6.5, []), (7.5, ["mastitis"])):  # 1, 4.5 and 5.5 days after calving
        alerting = Alerting(rules)
        milkings(alerting)
        session = milk(after(day), 15.0, 4.8, blood=True)
        assert raised([alerting.observe_milk([session], fresh)]) == expected, day
    alerting = Alerting(rules)
    milkings(alerting)  # conductivity still tells, fresh or not
    assert raised([alerting.observe_milk([milk(after(3), 14.5, 6.4, blood=True)], fresh)]) == ["mastitis"]


def test_yield_drop_needs_two_low_milkings_in_a_row(rules: list[Rule]) -> None:
    alerting = Alerting(rules)
    milkings(alerting)
    one_low = [milk(after(3, 300), 12.5), milk(after(3, 960), 15.0), milk(after(4, 300), 12.6)]
    assert raised([alerting.observe_milk([m], REGISTRY) for m in one_low]) == []
    two_low = [milk(after(4, 960), 12.4), milk(after(5, 300), 12.5)]
    assert raised([alerting.observe_milk([m], REGISTRY) for m in two_low]) == ["yield_drop"]


def test_device_offline_after_four_missed_intervals_and_back_online(rules: list[Rule]) -> None:
    alerting = Alerting(rules)
    feed(alerting, [sensor(after(0), "activity_index", 50), sensor(after(0), "activity_index", 50, device="COL-2",
                                                                    animal=2)])
    feed(alerting, [sensor(after(0, 45), "activity_index", 50, device="COL-2", animal=2)])  # COL-1 silent 45 min
    assert not alerting.check_devices(None, REGISTRY)  # 3 intervals of 15 minutes
    feed(alerting, [sensor(after(0, 60), "activity_index", 50, device="COL-2", animal=2)])
    offline = alerting.check_devices(None, REGISTRY)
    assert [(r[2], r[7]) for r in offline.raised] == [("device_offline", "COL-1")]
    back = feed(alerting, [sensor(after(0, 75), "activity_index", 50)])  # resolved by the reading itself
    assert [(r[0], r[2]) for d in back for r in d.resolved] == [(offline.raised[0][1], after(0, 75))]
    assert not alerting.check_devices(None, REGISTRY)


def test_low_battery_is_judged_when_it_changes(rules: list[Rule]) -> None:
    alerting = Alerting(rules)
    fine = [sensor(t, "activity_index", 50, battery=60) for t in every(15, 1)]
    assert raised(feed(alerting, fine)) == []
    low = [sensor(t, "activity_index", 50, battery=18) for t in every(15, 1, after(0, 60))]
    decided = feed(alerting, low)
    assert raised(decided) == ["low_battery"]
    assert next(d.raised[0] for d in decided if d.raised)[6:8] == ("device", "COL-1")


def test_anomaly_is_five_standard_deviations_from_the_series_baseline(rules: list[Rule]) -> None:
    alerting = Alerting(rules)
    collar_days(alerting, "eating_minutes", 280, 10)
    near = feed(alerting, [sensor(after(2), "eating_minutes", 315)])  # 3.5 sd
    assert raised(near, anomaly=True) == []
    far = feed(alerting, [sensor(after(2, 15), "eating_minutes", 400)])  # 12 sd
    assert raised(far, anomaly=True) == ["anomaly"]
    assert far[0].raised[0][1].startswith("anomaly:animal:1:1:eating_minutes:")  # rule:source (farm 1, cow 1):metric


def test_heat_stress_of_a_sensor_whose_payload_calls_itself_environmental(rules: list[Rule]) -> None:
    """Seed 003 §11.2's climate payload says "sensor_type": "environmental"; the heat-stress rule is
    scoped to env_sensor. The type comes from the topic and the registry, never the payload."""
    registry = Registry(devices={"ENV-Z3": Device(1, "env_sensor", None, 3, 1.0, 0.0, 300)}, zones={3: 1})
    topic, rows = "dairy/farm/1/barn/1/zone/3/sensor/ENV-Z3/telemetry", []
    for t in every(5, 1):
        payload = msgspec.json.encode({"timestamp": t.isoformat(), "device_id": "ENV-Z3",
                                       "sensor_type": "environmental",
                                       "readings": {"temperature_c": 30.0, "humidity_percent": 70.0}})
        rows += validate_readings(decode_message(topic, payload).readings, Context(registry, now=t)).rows
    assert {r[2] for r in rows} == {"env_sensor"}
    assert raised([Alerting(rules).observe_readings(rows, registry)]) == ["heat_stress"]
