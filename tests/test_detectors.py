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


def collar_days(alerting: Alerting, metric: str, mean: float, sd: float, days: float = 4, *, animal: int = 1,
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
    restless = [sensor(t, "activity_index", 70, device="COL-2", animal=2) for t in every(15, 3, after(4))]
    assert raised(feed(alerting, restless)) == []  # 1.4x: restless, not in heat
    heat = [sensor(t, "activity_index", 140) for t in every(15, 3, after(4))]
    decided = feed(alerting, heat)
    assert raised(decided) == ["oestrus"] and "COW-00001" in next(d.raised[0][10] for d in decided if d.raised)


def test_fever_needs_39_5_degrees_for_30_minutes(rules: list[Rule]) -> None:
    alerting = Alerting(rules)
    collar_days(alerting, "body_temperature_c", 38.6, 0.1)
    spike = [sensor(after(4, 0), "body_temperature_c", 40.2), sensor(after(4, 15), "body_temperature_c", 38.7)]
    warm = [sensor(t, "body_temperature_c", 39.3) for t in every(15, 2, after(4, 30))]
    assert raised(feed(alerting, spike + warm)) == []
    fever = [sensor(t, "body_temperature_c", 40.1) for t in every(15, 1, after(4, 180))]
    assert raised(feed(alerting, fever)) == ["fever"]


def test_rumination_drop_is_a_day_of_less_rumination(rules: list[Rule]) -> None:
    alerting = Alerting(rules)
    collar_days(alerting, "rumination_minutes", 500, 12)
    rng = np.random.default_rng(11)
    dip = [sensor(t, "rumination_minutes", 330 + rng.normal(0, 10)) for t in every(15, 4, after(4))]  # 0.66x, 4 h
    assert raised(feed(alerting, dip)) == []
    back = [sensor(t, "rumination_minutes", 500 + rng.normal(0, 10)) for t in every(15, 8, after(4, 240))]
    drop = [sensor(t, "rumination_minutes", 330 + rng.normal(0, 10)) for t in every(15, 16, after(4, 720))]  # ill
    assert raised(feed(alerting, back + drop)) == ["rumination_drop"]


RATE = 15.0 / 13  # kg an hour she secretes: 15 kg at 05:00 after 13 h, 12.7 kg at 16:00 after 11 h


def hours_before(hour: int) -> int:
    return 13 if hour == 5 else 11


def milkings(alerting: Alerting, days: int = 3) -> None:
    """Twice a day at 05:00 and 16:00, each session's yield as the hours since the last one make it."""
    rng = np.random.default_rng(3)
    rows = [milk(START + timedelta(days=d, hours=h), RATE * hours_before(h) * rng.normal(1, 0.02),
                 4.8 * rng.normal(1, 0.02)) for d in range(days) for h in (5, 16)]
    assert not alerting.observe_milk(rows, REGISTRY)


def test_mastitis_from_conductivity_scc_or_blood(rules: list[Rule]) -> None:
    for sessions, expected in (([milk(after(3, 300), 15.0, 4.9)], []),
                               ([milk(after(3, 300), 14.5, 6.4)], ["mastitis"]),
                               ([milk(after(3, 300), 15.0, 4.8, scc=250_000)], ["mastitis"]),
                               ([milk(after(3, 300), 15.0, 4.8, blood=True)], ["mastitis"]),
                               # 1.19x and 0.87x together, over two milkings
                               ([milk(after(3, 300), 13.0, 5.7), milk(after(3, 960), 11.0, 5.7)], ["mastitis_yield"])):
        alerting = Alerting(rules)
        milkings(alerting)
        assert raised([alerting.observe_milk([m], REGISTRY) for m in sessions]) == expected, sessions


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


def test_yield_drop_needs_her_milk_an_hour_low_at_two_milkings_in_a_row(rules: list[Rule]) -> None:
    """Her kilograms an hour over her last two milkings: one low session is half a dip, and one pair
    is not a trend."""
    alerting = Alerting(rules)
    milkings(alerting, days=5)

    def session(day: int, hour: int, share: float) -> tuple:
        return milk(after(day, hour * 60), RATE * hours_before(hour) * share)
    one_low = [session(5, 5, 0.75), session(5, 16, 1.0), session(6, 5, 1.0)]
    assert raised([alerting.observe_milk([m], REGISTRY) for m in one_low]) == []
    two_low = [session(6, 16, 0.75), session(7, 5, 0.75), session(7, 16, 0.75)]
    assert raised([alerting.observe_milk([m], REGISTRY) for m in two_low]) == ["yield_drop"]


def test_yield_is_judged_per_hour_since_her_last_milking(rules: list[Rule]) -> None:
    """A robot milks when she comes: 9 kg after 8 h is as much as 15 kg after 13 h; a session's
    kilograms alone would call it a drop."""
    alerting = Alerting(rules)
    milkings(alerting)
    robot = [milk(after(2, 16 * 60 + 8 * 60 * k), RATE * 8 * (0.99 + 0.01 * (k % 2))) for k in range(1, 8)]
    decided = [alerting.observe_milk(robot[:1], REGISTRY)]
    signals = alerting.signals.current["animal:1:1"]
    assert signals[("ratio", "yield_kg")] < 0.75 and 0.93 < signals[("ratio", "yield_kg_per_hour")] < 1.05
    decided += [alerting.observe_milk([m], REGISTRY) for m in robot[1:]]
    assert raised(decided) == []


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


def test_anomaly_is_five_standard_deviations_from_a_climate_series_baseline(rules: list[Rule]) -> None:
    alerting = Alerting(rules)
    env = {"device": "ENV-1", "animal": None, "zone": 3, "device_type": "env_sensor"}
    rng = np.random.default_rng(5)
    feed(alerting, [sensor(t, "co2_ppm", 900 + rng.normal(0, 20), **env) for t in every(15, 48)])
    near = feed(alerting, [sensor(after(2), "co2_ppm", 970, **env)])  # 3.5 sd
    assert raised(near, anomaly=True) == []
    far = feed(alerting, [sensor(after(2, 15), "co2_ppm", 1200, **env)])  # 15 sd
    assert raised(far, anomaly=True) == ["anomaly"]
    assert far[0].raised[0][1].startswith("anomaly:zone:1:3:co2_ppm:")  # rule:source (farm 1, zone 3):metric
    cow = Alerting(rules)  # a cow's series have their own detectors, judged against her rhythm and group
    collar_days(cow, "eating_minutes", 280, 10)
    assert raised(feed(cow, [sensor(after(4, 15), "eating_minutes", 400)]), anomaly=True) == []


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


# --- her own rhythm, her group, a decline over days, a stuck sensor ----------------------------------

PEN = Registry(devices={f"COL-{c}": Device(1, "collar", c, None, 1.0, 0.0, 900) for c in range(1, 13)},
               animal_names={c: f"COW-{c:05d}" for c in range(1, 13)}, groups={c: "Pen 1" for c in range(1, 13)})


def pen_rows(start: datetime, hours: float, metric: str, level: float, *, cows: range = range(1, 13),
             shape: dict[int, float] | None = None, seed: int = 1, rhythm: bool = True,
             noise: float = 0.05) -> list[tuple]:
    """A pen of cows reporting every 15 minutes, all following one daily rhythm (unless not
    `rhythm`): `level` x 1.8 during the milking walk and feed delivery (05-07 and 16-18 h), x 0.6 at
    night (00-04 h), with `shape` (cow -> factor) on top, and `noise` (5 %)."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in every(15, hours, start):
        rhythm_now = (1.8 if t.hour in (5, 6, 16, 17) else 0.6 if t.hour < 4 else 1.0) if rhythm else 1.0
        for c in cows:
            value = level * rhythm_now * (shape or {}).get(c, 1.0) * rng.normal(1, noise)
            rows.append(sensor(t, metric, value, device=f"COL-{c}", animal=c))
    return rows


def judge(alerting: Alerting, rows: list[tuple], registry: Registry = PEN, per: int = 12) -> list[str]:
    """Feed `rows` a tick (`per` rows) at a time; the rules raised (but anomaly)."""
    return raised([alerting.observe_readings(rows[k:k + per], registry) for k in range(0, len(rows), per)])


def test_her_milking_and_feeding_peaks_are_her_normal_a_heat_is_not(rules: list[Rule]) -> None:
    alerting = Alerting(rules)
    assert judge(alerting, pen_rows(START, 4 * 24, "activity_index", 50)) == []  # four days of her rhythm
    heat = pen_rows(after(4), 12, "activity_index", 50, shape={3: 2.0}, seed=2)  # cow 3 in heat at 2x
    decided, peak = [], 0.0
    for k in range(0, len(heat), 12):
        decided.append(alerting.observe_readings(heat[k:k + 12], PEN))
        peak = max(peak, alerting.signals.current["animal:1:1"][("ratio", "activity_index")])
    assert peak > 1.3  # against a flat baseline, her walk to the parlour would look like a heat
    assert [(r[2], r[8]) for d in decided for r in d.raised if r[2] != "anomaly"] == [("oestrus", 3)]
    cow3 = alerting.signals.current["animal:1:3"]
    assert cow3[("vs_group", "activity_index")] >= 1.35 and cow3[("hour_zscore", "activity_index")] >= 3
    weak = pen_rows(after(4, 12 * 60), 10, "activity_index", 50, shape={5: 1.5}, seed=3)  # a weak heat at 1.5x
    assert judge(alerting, weak) == ["oestrus"]


def test_what_her_whole_group_does_is_context_not_an_alert(rules: list[Rule]) -> None:
    alerting = Alerting(rules)
    judge(alerting, pen_rows(START, 4 * 24, "activity_index", 50))
    judge(alerting, pen_rows(START, 4 * 24, "rumination_minutes", 600, seed=4, rhythm=False))
    regrouped = pen_rows(after(4), 24, "activity_index", 50 * 1.6, seed=5)  # the pen moved: restless for a day
    assert judge(alerting, regrouped) == []
    ration = pen_rows(after(4), 24, "rumination_minutes", 600 * 0.75, seed=6, rhythm=False)  # a ration change
    assert judge(alerting, ration) == []
    group = alerting.signals.current["animal:1:7"]
    assert group[("group_ratio", "rumination_minutes")] < 0.8 and group[("vs_group", "rumination_minutes")] > 0.9
    sick = pen_rows(after(5), 16, "rumination_minutes", 600 * 0.75, shape={7: 0.6}, seed=7, rhythm=False)  # 7: less
    assert judge(alerting, sick) == ["rumination_drop"]


def test_a_heat_wave_warms_the_herd_a_fever_warms_one_cow(rules: list[Rule]) -> None:
    alerting = Alerting(rules)
    warm = {"metric": "body_temperature_c", "rhythm": False, "noise": 0.003}  # 0.12 degC
    judge(alerting, pen_rows(START, 4 * 24, level=39.0, seed=8, **warm))
    hot = pen_rows(after(4), 12, level=39.0 * 1.018, seed=9, **warm)  # all +0.7 degC
    assert judge(alerting, hot) == []
    fever = pen_rows(after(4, 720), 6, level=39.0 * 1.018, shape={2: 1.02}, seed=10, **warm)
    assert judge(alerting, fever) == ["fever"]  # and one cow 0.8 degC over that


def test_a_cows_group_follows_the_registry(rules: list[Rule]) -> None:
    """Moved to another pen in Odoo, she is judged with her new group from her next reading."""
    alerting = Alerting(rules)
    judge(alerting, pen_rows(START, 26, "activity_index", 50))
    moved = Registry(devices=PEN.devices, animal_names=PEN.animal_names,
                     groups={c: "Pen 1" if c > 1 else "Pen 2" for c in range(1, 13)})
    judge(alerting, pen_rows(after(1, 120), 1, "activity_index", 50), moved)
    assert alerting._devices["COL-1"].group == (1, "Pen 2") and alerting._devices["COL-2"].group == (1, "Pen 1")


def test_lameness_is_less_walking_and_more_lying_over_days(rules: list[Rule]) -> None:
    alerting = Alerting(rules)
    for metric, level, seed in (("activity_index", 50, 1), ("resting_minutes", 720, 2)):
        judge(alerting, pen_rows(START, 7 * 24, metric, level, seed=seed))
    lame: list[str] = []
    for day in range(7, 12):  # cow 4 walks a little less and lies a little longer each day
        worse = 1 - 0.08 * (day - 6)
        for metric, level, shape, seed in (("activity_index", 50, worse, day), ("resting_minutes", 720,
                                                                                2 - worse, day + 50)):
            lame += judge(alerting, pen_rows(after(day), 24, metric, level, shape={4: shape}, seed=seed))
    assert lame == ["lameness"]
    day = alerting.signals.current["animal:1:4"]
    assert day[("day_vs_group", "activity_index")] <= 0.8 and day[("day_vs_group", "resting_minutes")] >= 1.05


def test_a_sensor_repeating_its_readings_for_hours_is_stuck(rules: list[Rule]) -> None:
    alerting = Alerting(rules)
    env = {"device": "ENV-1", "animal": None, "zone": 3, "device_type": "env_sensor"}
    rng = np.random.default_rng(9)

    def climate(start: datetime, hours: float, frozen: bool = False) -> list[tuple]:
        rows = []
        for t in every(15, hours, start):
            air, humidity = (18.4, 71.0) if frozen else (18 + rng.normal(0, 0.5), 70 + rng.normal(0, 2))
            rows += [sensor(t, "temperature_c", air, **env), sensor(t, "humidity_percent", humidity, **env),
                     sensor(t, "nh3_ppm", 0.0, **env)]  # no ammonia at all: one value can stay the same
        return rows
    assert judge(alerting, climate(START, 24), per=3) == []
    decided = [alerting.observe_readings([r], PEN) for r in climate(after(1), 8, frozen=True)]
    stuck = [r for d in decided for r in d.raised]
    assert [(r[2], r[6], r[7]) for r in stuck] == [("stuck_sensor", "device", "ENV-1")]
    assert stuck[0][0] == after(1, 6 * 60 + 15)  # the first reading after six hours the same
    back = [alerting.observe_readings([r], PEN) for r in climate(after(1, 8 * 60), 1)]
    assert [r[0] for d in back for r in d.resolved] == [stuck[0][1]]


def test_odoo_offers_every_signal_the_ingestor_judges() -> None:
    """The rule form's signal list (addons/.../sd_alert_rule.py) is the ingestor's: a signal missing
    there would be read back as "value" when Odoo imports the built-in rules."""
    import ast
    from pathlib import Path

    from ingestor.analytics import SIGNALS
    source = Path(__file__).parents[1] / "addons/smart_dairy_iot/models/sd_alert_rule.py"
    tree = ast.parse(source.read_text())
    [listed] = [ast.literal_eval(n.value) for n in tree.body
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "SIGNALS"]
    assert [code for code, _ in listed] == list(SIGNALS)


def test_fresh_cows_are_judged_beside_the_other_fresh_cows(rules: list[Rule]) -> None:
    """After calving a cow ruminates a third less for days: normal beside the farm's other fresh cows,
    not against her dry days; one with ketosis ruminates less than they do."""
    calved = after(4).timestamp()
    fresh = Registry(devices=PEN.devices, animal_names=PEN.animal_names, groups=PEN.groups,
                     calvings=dict.fromkeys(range(1, 7), calved))  # cows 1-6 calved, 7-12 did not
    alerting = Alerting(rules)
    quiet = {"metric": "rumination_minutes", "rhythm": False}
    judge(alerting, pen_rows(START, 4 * 24, level=550, **quiet), fresh)
    after_calving = pen_rows(after(4), 36, level=550, shape=dict.fromkeys(range(1, 7), 0.65), seed=12, **quiet)
    assert judge(alerting, after_calving, fresh) == []
    assert alerting._devices["COL-1"].group == (1, "fresh cows") and alerting._devices["COL-9"].group == (1, "Pen 1")
    ketosis = pen_rows(after(5, 720), 24, level=550, shape={**dict.fromkeys(range(1, 7), 0.65), 3: 0.35}, seed=13,
                       **quiet)
    cow1 = alerting.signals.current["animal:1:1"]
    assert cow1[("group_ratio", "rumination_minutes")] < 0.75 and cow1[("vs_group", "rumination_minutes")] > 0.9
    assert judge(alerting, ketosis, fresh) == ["rumination_drop"]
