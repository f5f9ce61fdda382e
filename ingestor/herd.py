"""A live simulated farm for demos, tests and benchmarks: the messages its devices publish (contract
section 4), with labelled health and device events and their ground truth.

Per tick, every collar reports activity, rumination, eating, resting and body temperature; every barn
zone reports climate; at milking times (05:00 and 16:00, two sessions a day) each cow passes the
parlour's RFID gate and gets a milking session; devices report their status hourly. Injected events
change those signals the way the seeds describe them and are written to a ground-truth list.

Numbers and their sources: Wood's lactation curve y = a t^b e^(-ct) with a=20, b=0.2, c=0.004
(kg/day; Wood 1967, Holstein-like parameters); rumination 450-550 min/day, a drop of 30-50 % when
sick; body temperature 38.3-39.0 degC, fever above 39.5 (seed 000 section 3.1); oestrus: activity
two to four times baseline for 8-18 h; mastitis: conductivity up 20-40 %, yield down 10-20 %, SCC
over 200,000 (seed 000 section 3.1); heat stress: THI over 72 from barn temperature and humidity (a
normal day peaks at 21 degC, THI ~67; a heat wave holds the zone at 27 degC or more).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta

import msgspec
import numpy as np

EVENT_KINDS = ("oestrus", "fever", "mastitis", "heat_stress", "rumination_drop", "yield_drop", "device_failure")
# How long each event lasts (hours).
EVENT_HOURS = {"oestrus": 12, "fever": 24, "mastitis": 48, "heat_stress": 6, "rumination_drop": 24,
               "yield_drop": 48, "device_failure": 6}
MILKING_HOURS = (5, 16)


@dataclass(frozen=True)
class Event:
    kind: str
    start: datetime
    end: datetime
    cow: int | None = None  # index in the herd
    zone: int | None = None

    def active(self, t: datetime) -> bool:
        return self.start <= t < self.end

    def as_json(self, farm_id: int) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        d["farm_id"] = farm_id
        if self.cow is not None:
            d["animal_code"] = cow_code(self.cow)
            d["device_uid"] = collar_uid(farm_id, self.cow)
        return d


def cow_code(cow: int) -> str:
    return f"COW-{cow + 1:05d}"


def collar_uid(farm_id: int, cow: int) -> str:
    return f"COL-F{farm_id:02d}-{cow:05d}"


def zone_uid(farm_id: int, zone: int) -> str:
    return f"ENV-F{farm_id:02d}-Z{zone + 1:02d}"


@dataclass
class HerdState:
    """Per-cow and per-device state carried from tick to tick."""

    farm_id: int
    cows: int
    zones: int
    rng: np.random.Generator
    days_in_milk: np.ndarray = field(init=False)
    activity_level: np.ndarray = field(init=False)
    rumination_level: np.ndarray = field(init=False)
    temperature_level: np.ndarray = field(init=False)
    battery: np.ndarray = field(init=False)
    origin: datetime | None = None  # the first tick: days in milk advance from it

    def __post_init__(self) -> None:
        n = self.cows
        self.days_in_milk = self.rng.integers(5, 300, n).astype(float)
        self.activity_level = self.rng.normal(50, 8, n).clip(25, 90)
        self.rumination_level = self.rng.normal(500, 30, n).clip(400, 600)
        self.temperature_level = self.rng.normal(38.6, 0.15, n).clip(38.2, 39.0)
        self.battery = self.rng.uniform(40, 100, n + self.zones)


def plan_events(cows: int, zones: int, start: datetime, end: datetime, *, per_cow_day: float = 0.02,
                rng: np.random.Generator) -> list[Event]:
    """Random events over [start, end): each cow gets each kind with probability per_cow_day a day."""
    days = max((end - start).total_seconds() / 86_400, 1 / 24)
    events = []
    for kind in EVENT_KINDS:
        if kind == "heat_stress":
            count = rng.poisson(days * 0.3 * zones)
            targets = [("zone", int(z)) for z in rng.integers(0, zones, count)]
        else:
            count = rng.poisson(days * per_cow_day * cows)
            targets = [("cow", int(c)) for c in rng.integers(0, cows, count)]
        for what, index in targets:
            begin = start + timedelta(seconds=float(rng.uniform(0, (end - start).total_seconds())))
            events.append(Event(kind, begin, begin + timedelta(hours=EVENT_HOURS[kind]),
                                cow=index if what == "cow" else None, zone=index if what == "zone" else None))
    return sorted(events, key=lambda e: e.start)


def wood_yield(days_in_milk: np.ndarray) -> np.ndarray:
    """Daily yield (kg) on Wood's lactation curve."""
    t = np.maximum(days_in_milk, 1.0)
    return 20.0 * t ** 0.2 * np.exp(-0.004 * t)


def _diurnal(t: datetime, peak_hour: float) -> float:
    hour = t.hour + t.minute / 60
    return math.cos((hour - peak_hour) / 24 * 2 * math.pi)


def messages(state: HerdState, t: datetime, interval_s: float, events: list[Event]) -> Iterator[tuple[str, bytes]]:
    """The (topic, payload) of everything the farm publishes in the tick ending at `t`."""
    farm, rng, n = state.farm_id, state.rng, state.cows
    if state.origin is None:
        state.origin = t
    active = [e for e in events if e.active(t)]
    by_kind: dict[str, set[int]] = {k: {e.cow for e in active if e.kind == k and e.cow is not None}
                                    for k in EVENT_KINDS}
    hot_zones = {e.zone for e in active if e.kind == "heat_stress"}
    stamp = t.isoformat()

    activity = state.activity_level * (1 + 0.35 * _diurnal(t, 14)) + rng.normal(0, 5, n)
    rumination = state.rumination_level + rng.normal(0, 12, n)
    temperature = state.temperature_level + 0.15 * _diurnal(t, 17) + rng.normal(0, 0.05, n)
    for c in by_kind["oestrus"]:
        activity[c] *= 3.0
    for c in by_kind["fever"]:
        temperature[c] += 1.4
    for c in by_kind["rumination_drop"] | by_kind["fever"]:
        rumination[c] *= 0.6
    state.battery[:n] -= interval_s / 86_400 * 0.2  # collars lose ~0.2 % a day
    for c in range(n):
        if c in by_kind["device_failure"]:
            continue  # a failed collar is silent
        yield (f"dairy/farm/{farm}/animal/{cow_code(c)}/activity/telemetry", msgspec.json.encode({
            "timestamp": stamp, "device_id": collar_uid(farm, c), "animal_id": cow_code(c),
            "activity_index": round(float(max(activity[c], 0.0)), 2),
            "rumination_minutes": round(float(rumination[c]), 1),
            "eating_minutes": round(float(rumination[c] * 0.55), 1),
            "resting_minutes": round(float(720 + rng.normal(0, 20)), 1),
            "temperature_c": round(float(temperature[c]), 2), "battery_level": int(state.battery[c])}))
    for z in range(state.zones):
        air = 15 + 6 * _diurnal(t, 15) + rng.normal(0, 0.3)
        humidity = 65 - 12 * _diurnal(t, 15) + rng.normal(0, 1.5)
        if z in hot_zones:  # a heat wave in this zone: at least 27 degC, and muggier (THI well over 72)
            air, humidity = max(air + 9, 27 + rng.normal(0, 0.3)), humidity + 10
        topic = f"dairy/farm/{farm}/barn/1/zone/{zone_id(farm, z)}/sensor/{zone_uid(farm, z)}/telemetry"
        yield (topic, msgspec.json.encode({
            "timestamp": stamp, "device_id": zone_uid(farm, z), "readings": {
                "temperature_c": round(air, 2), "humidity_percent": round(min(max(humidity, 5.0), 99.0), 1),
                "nh3_ppm": round(max(6 + rng.normal(0, 1), 0.0), 2), "co2_ppm": round(900 + rng.normal(0, 40))},
            "battery_level": int(state.battery[n + z]), "signal_strength": int(rng.integers(-85, -55))}))
    if t.minute == 0 and t.second < interval_s:  # hourly device status
        for c in range(n):
            if c not in by_kind["device_failure"]:
                yield (f"system/farm/{farm}/device/{collar_uid(farm, c)}/status", msgspec.json.encode({
                    "timestamp": stamp, "device_type": "collar", "battery_level": int(state.battery[c]),
                    "signal_strength": int(rng.integers(-90, -60)), "firmware_version": "2.1.0"}))
    yield from _milkings(state, t, interval_s, by_kind, stamp)


def _milkings(state: HerdState, t: datetime, interval_s: float, by_kind: dict[str, set[int]],
              stamp: str) -> Iterator[tuple[str, bytes]]:
    """Cows milked in this tick: the parlour milks the herd over 90 minutes from each milking hour."""
    farm, rng = state.farm_id, state.rng
    for hour in MILKING_HOURS:
        begin = t.replace(hour=hour, minute=0, second=0, microsecond=0)
        offset = (t - begin).total_seconds()
        if not 0 <= offset < 90 * 60:
            continue
        per_second = state.cows / (90 * 60)
        first, last = int(offset * per_second), int(min((offset + interval_s) * per_second, state.cows))
        days = state.days_in_milk + (t - state.origin).total_seconds() / 86_400
        session_yield = wood_yield(days) / len(MILKING_HOURS)
        for c in range(first, last):
            kg = float(session_yield[c]) * (0.8 if c in by_kind["yield_drop"] else 1.0) * rng.normal(1, 0.05)
            conductivity = rng.normal(4.8, 0.3)
            if c in by_kind["mastitis"]:
                kg *= 0.85
                conductivity *= 1.35
            stall = c % 24 + 1
            yield (f"dairy/farm/{farm}/rfid/gate/1/tag/read", msgspec.json.encode({
                "timestamp": stamp, "reader_id": f"RFID-F{farm:02d}-GATE-01", "antenna_id": 1,
                "tag_epc": f"E2003415{farm:04X}{c:08X}", "animal_id": cow_code(c), "rssi": round(rng.normal(-55, 5), 1),
                "read_count": int(rng.integers(1, 6)), "direction": "inbound"}))
            duration = int(rng.normal(480, 60))
            yield (f"dairy/farm/{farm}/milking/parlor/1/stall/{stall}/session/end", msgspec.json.encode({
                "timestamp": stamp, "session_id": f"SES-F{farm}-{c:05d}-{t:%Y%m%d}-{hour:02d}",
                "animal_id": cow_code(c), "device_id": f"MM-F{farm:02d}-S{stall:02d}",
                "session_data": {"start_time": (t - timedelta(seconds=duration)).isoformat(), "end_time": stamp,
                                 "duration_seconds": duration},
                "milk_data": {"total_volume_liters": round(kg / 1.03, 2),
                              "average_flow_lpm": round(kg / 1.03 / (duration / 60), 2),
                              "peak_flow_lpm": round(kg / 1.03 / (duration / 60) * 1.5, 2),
                              "temperature_celsius": round(rng.normal(37.0, 0.3), 1),
                              "conductivity_ms_cm": round(float(conductivity), 2)},
                "quality_flags": {"blood_detected": bool(c in by_kind["mastitis"] and rng.random() < 0.3)}}))


def animal_id(farm_id: int, cow: int) -> int:
    return farm_id * 100_000 + cow + 1


def zone_id(farm_id: int, zone: int) -> int:
    return farm_id * 100 + zone + 1


REGISTER_SQL = {
    "farms": "INSERT INTO iot.farms (id, name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
    "zones": "INSERT INTO iot.zones (id, farm_id, barn_id, barn_name, name) VALUES ($1, $2, $3, $4, $5) "
             "ON CONFLICT (id) DO NOTHING",
    "animals": "INSERT INTO iot.animals (id, farm_id, code, rfid_epc) VALUES ($1, $2, $3, $4) "
               "ON CONFLICT (id) DO NOTHING",
    "devices": "INSERT INTO iot.devices (device_uid, farm_id, device_type, animal_id, zone_id, expected_interval_s) "
               "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (device_uid) DO NOTHING",
}


def registry_rows(farm_id: int, cows: int, zones: int, interval_s: int) -> dict[str, list[tuple]]:
    """The farm as Odoo would push it (for a demo without Odoo): farm, zones, animals, devices."""
    return {
        "farms": [(farm_id, f"Simulated farm {farm_id}")],
        "zones": [(zone_id(farm_id, z), farm_id, 1, "Barn 1", f"Zone {z + 1}") for z in range(zones)],
        "animals": [(animal_id(farm_id, c), farm_id, cow_code(c), f"E2003415{farm_id:04X}{c:08X}")
                    for c in range(cows)],
        "devices": [(collar_uid(farm_id, c), farm_id, "collar", animal_id(farm_id, c), None, interval_s)
                    for c in range(cows)]
                   + [(zone_uid(farm_id, z), farm_id, "env_sensor", None, zone_id(farm_id, z), interval_s)
                      for z in range(zones)],
    }
