"""A simulated farm's readings: the shape of real data for the benchmark and the demo.

Values are computed for whole arrays at once with numpy (diurnal cycles, per-animal offsets,
noise); only the final tuples the writer needs are built per row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

# metric -> (unit, daily mean, diurnal amplitude, noise sd); sources: seed 003 section 11 examples.
COLLAR_METRICS = {
    "activity_index": ("index", 55.0, 25.0, 8.0),
    "rumination_minutes": ("min/day", 480.0, 30.0, 15.0),
    "eating_minutes": ("min/day", 280.0, 20.0, 10.0),
    "resting_minutes": ("min/day", 720.0, 40.0, 20.0),
    "body_temperature_c": ("degC", 38.6, 0.3, 0.1),
}
BARN_METRICS = {
    "temperature_c": ("degC", 18.0, 6.0, 0.4),
    "humidity_percent": ("%", 65.0, 12.0, 2.0),
    "nh3_ppm": ("ppm", 8.0, 3.0, 1.0),
    "co2_ppm": ("ppm", 900.0, 200.0, 40.0),
    "pressure_hpa": ("hPa", 1013.0, 2.0, 0.5),
}


@dataclass(frozen=True)
class Farm:
    farm_id: int = 1
    cows: int = 200
    zones: int = 4

    def devices(self) -> list[tuple[str, str, dict, int | None, int | None]]:
        """(device_uid, device_type, metrics, animal_id, zone_id) for every sensor on the farm."""
        collars = [(f"COL-F{self.farm_id:02d}-{c:05d}", "collar", COLLAR_METRICS, c + 1, None)
                   for c in range(self.cows)]
        barns = [(f"ENV-F{self.farm_id:02d}-Z{z + 1:02d}", "env_sensor", BARN_METRICS, None, z + 1)
                 for z in range(self.zones)]
        return collars + barns


def sensor_rows(farm: Farm, start: datetime, ticks: int, interval_s: float, *, seed: int = 7) -> list[tuple]:
    """Every device of `farm` reporting every metric each `interval_s` seconds for `ticks` ticks."""
    rng = np.random.default_rng(seed)
    times = [start + timedelta(seconds=k * interval_s) for k in range(ticks)]
    hours = (np.arange(ticks) * interval_s / 3600.0 + start.hour + start.minute / 60.0) % 24.0
    diurnal = np.sin((hours - 9.0) / 24.0 * 2 * np.pi)  # warmest and busiest mid-afternoon
    rows: list[tuple] = []
    for uid, kind, metrics, animal, zone in farm.devices():
        battery = int(rng.integers(40, 100))
        signal = int(rng.integers(-90, -50))
        for name, (unit, mean, amplitude, sd) in metrics.items():
            own = mean + rng.normal(0, 2 * sd)  # each animal and zone has its own level
            values = own + amplitude * diurnal + rng.normal(0, sd, ticks)
            if name != "temperature_c":  # only air temperature goes below zero
                values = np.maximum(values, 0.0)
            values = np.round(values, 3).tolist()
            rows.extend((t, uid, kind, farm.farm_id, name, v, unit, "valid", False, animal, zone, None,
                         battery, signal, "{}") for t, v in zip(times, values, strict=True))
    rows.sort(key=lambda r: r[0])  # devices report concurrently: interleave them as a broker would
    return rows


def milk_rows(farm: Farm, start: datetime, days: int, *, seed: int = 7) -> list[tuple]:
    """Two milkings a day per cow, yields around a per-cow level (lactation curves come later)."""
    rng = np.random.default_rng(seed)
    level = rng.normal(14.0, 2.5, farm.cows).clip(6, 25)  # kg per session
    rows = []
    for day in range(days):
        for session, hour in enumerate((5, 16)):
            yields = (level + rng.normal(0, 1.0, farm.cows)).clip(0.5, 40).round(2).tolist()
            cond = rng.normal(5.0, 0.4, farm.cows).round(2).tolist()
            for cow in range(farm.cows):
                t = start + timedelta(days=day, hours=hour, minutes=cow % 90)
                rows.append((t, f"MM-F{farm.farm_id:02d}-{cow % 24:02d}", cow + 1, farm.farm_id,
                             f"S-{farm.farm_id}-{cow + 1}-{t:%Y%m%d}-{session}", yields[cow], 420,
                             yields[cow] / 7.0, cond[cow], 37.0, False, 4.0, 3.3, 4.8, 150_000, 0.05,
                             t - timedelta(minutes=7), t, ("morning", "evening")[session], "ok",
                             json.dumps({"simulated": True})))
    return rows


def utc_floor(dt: datetime, seconds: int) -> datetime:
    """Round `dt` down to a multiple of `seconds` since the epoch, in UTC."""
    ts = int(dt.timestamp()) // seconds * seconds
    return datetime.fromtimestamp(ts, tz=UTC)
