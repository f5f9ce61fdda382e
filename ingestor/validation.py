"""Validation and normalisation of readings: the one place that decides what is stored, shared by
the HTTP API and the MQTT subscriber.

Decoding (types, required fields, string shapes) is msgspec's, in C; the checks that need the data
(ranges, units, the timestamp window, the registry) are one tight loop over decoded structs, and
every rule is data in the tables below. Each rejection names the field and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec

from .registry import Registry

# --- the rules, as data -------------------------------------------------------------------------

RAW_RETENTION = timedelta(days=90)  # contract section 2: raw readings are kept 90 days
MAX_FUTURE = timedelta(minutes=5)  # contract section 5: device clocks may run a little ahead
SUSPECT_MARGIN = 0.02  # a value within 2% of the range's span from an edge is stored as `suspect`
# A row's metadata, as stored (JSON): notes of a device, not a payload of its own. Bounded so that the
# rows a writer holds (max_pending_rows) bound its memory.
MAX_METADATA_BYTES = 1024
# Every stored value, ranged metric or not, has |value| <= MAX_MAGNITUDE. Rollups sum values and
# their squares (avg, stddev) over many rows in float8: bounded so, a bucket of even a billion rows
# stays far inside float8's 1.8e308 (1e18 per square), where 1e300 and 0 in one bucket overflow and
# fail every refresh. The database enforces the same bound on every row, whoever writes it: the
# CHECK constraints of timescale/0009_value_bounds.sql repeat this number (tests/test_poison.py
# asserts that they agree).
MAX_MAGNITUDE = 1e9


@dataclass(frozen=True)
class MetricSpec:
    unit: str  # the canonical unit the value is stored in
    low: float
    high: float


_AIR_TEMP = MetricSpec("degC", -50.0, 60.0)
_PERCENT = MetricSpec("%", 0.0, 100.0)
_DAY_MINUTES = MetricSpec("min/day", 0.0, 1440.0)
_ACTIVITY = MetricSpec("index", 0.0, 1000.0)

# Contract section 5 ranges; CO2, pressure and SCC from the sensors' datasheet ranges (seed 003 §11).
METRICS: dict[str, MetricSpec] = {
    "temperature_c": _AIR_TEMP,
    "temperature": _AIR_TEMP,
    "humidity_percent": _PERCENT,
    "humidity": _PERCENT,
    "nh3_ppm": MetricSpec("ppm", 0.0, 100.0),
    "co2_ppm": MetricSpec("ppm", 0.0, 10_000.0),
    "pressure_hpa": MetricSpec("hPa", 800.0, 1100.0),
    "activity_index": _ACTIVITY,
    "activity": _ACTIVITY,
    "rumination_minutes": _DAY_MINUTES,
    "eating_minutes": _DAY_MINUTES,
    "resting_minutes": _DAY_MINUTES,
    "body_temperature_c": MetricSpec("degC", 35.0, 42.0),
    "milk_yield_kg": MetricSpec("kg", 0.0, 100.0),
    "conductivity_ms": MetricSpec("mS/cm", 0.0, 20.0),
    "battery_level": _PERCENT,
}

# Spellings devices use for a unit -> the canonical spelling.
UNIT_ALIASES: dict[str, str] = {
    "degc": "degC", "c": "degC", "°c": "degC", "celsius": "degC",
    "degf": "degF", "f": "degF", "°f": "degF", "fahrenheit": "degF",
    "kg": "kg", "kilograms": "kg", "lb": "lb", "lbs": "lb", "pounds": "lb",
    "l": "L", "liters": "L", "litres": "L",
    "%": "%", "percent": "%", "ppm": "ppm", "hpa": "hPa", "index": "index",
    "min/day": "min/day", "minutes": "min/day", "min": "min/day",
    "ms/cm": "mS/cm", "ms": "mS/cm",
}
MILK_KG_PER_L = 1.03  # contract section 5: density of whole milk
# (from, to) -> (scale, offset): stored = original * scale + offset.
CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {
    ("degF", "degC"): (5.0 / 9.0, -32.0 * 5.0 / 9.0),
    ("L", "kg"): (MILK_KG_PER_L, 0.0),
    ("lb", "kg"): (0.45359237, 0.0),
}

# data_quality values, strongest first: a row carries the first that applies.
QUALITY_SUSPECT = "suspect"
QUALITY_UNKNOWN_DEVICE = "unknown_device"
QUALITY_UNKNOWN_ANIMAL = "unknown_animal"
QUALITY_VALID = "valid"

# --- the wire shape -----------------------------------------------------------------------------

# msgspec searches with Python's re, where `$` also matches before a final newline: `(?!\n)` refuses
# "COW-1\n" in both Python's and JSON Schema's regex dialects (\Z is Python's alone).
ID = Annotated[str, msgspec.Meta(pattern=r"^[\x21-\x7e]{1,64}(?!\n)$", description="printable ASCII, 1-64 chars")]
NAME = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.\-]{1,64}(?!\n)$")]
EPC = Annotated[str, msgspec.Meta(pattern=r"^[0-9A-Fa-f]{8,64}(?!\n)$")]
_SHORT = Annotated[str, msgspec.Meta(min_length=1, max_length=32, pattern=r"^[^\x00]*$")]
_INT32 = Annotated[int, msgspec.Meta(ge=1, le=2_147_483_647)]


# The hot path's strings are checked for length by msgspec and for printability by one C call each
# in validate_readings: a regex per field (as ID/NAME) costs three times the whole decode.
TEXT = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
_TEXT_FIELDS = ("device_uid", "device_type", "metric_name", "metric_unit", "session_id")


class Reading(msgspec.Struct, kw_only=True, gc=False):
    """One sensor reading as devices and scripts send it (contract section 3)."""

    device_uid: TEXT
    device_type: TEXT
    farm_id: _INT32
    metric_name: TEXT
    metric_value: float
    metric_unit: Annotated[str, msgspec.Meta(min_length=1, max_length=32)] | None = None
    # ISO 8601 with a zone, or seconds since the epoch (milliseconds when above 1e11); default: now.
    timestamp: datetime | float | None = None
    # The animal's id in the registry, or its code (ear tag) as collars send it.
    animal_id: _INT32 | TEXT | None = None
    zone_id: _INT32 | None = None
    session_id: TEXT | None = None
    battery_level: Annotated[int, msgspec.Meta(ge=0, le=100)] | None = None
    signal_strength: Annotated[int, msgspec.Meta(ge=-200, le=100)] | None = None
    metadata: dict[str, Any] | None = None


class ReadingBatch(msgspec.Struct):
    readings: list[Reading]


class RawBatch(msgspec.Struct):
    readings: list[msgspec.Raw]


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemError:
    index: int
    field: str | None
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason

    def as_json(self) -> dict[str, object]:
        return {"index": self.index, "field": self.field, "error": str(self)}


@dataclass
class Validated:
    rows: list[tuple] = field(default_factory=list)  # in SENSOR_DATA column order
    indexes: list[int] = field(default_factory=list)  # the input index of each row
    errors: list[ItemError] = field(default_factory=list)


@dataclass(frozen=True)
class Context:
    """What validation of one batch depends on besides the readings: the registry, and the farm that
    claimed each device id the registry does not know (registry.DeviceOwners)."""

    registry: Registry
    owners: Mapping[str, int] = field(default_factory=dict)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))


def not_yours(kind: str, ident: object) -> str:
    """The refusal of an id another farm has: it names neither that farm nor whether the id is registered."""
    return f"{kind} {ident} belongs to another farm"


def device_farm(uid: str, ctx: Context) -> int | None:
    """The farm a device id belongs to: the registry's, else the farm that first sent it."""
    device = ctx.registry.devices.get(uid)
    return device.farm_id if device is not None else ctx.owners.get(uid)


def decode_error(index: int, exc: msgspec.MsgspecError) -> ItemError:
    """Turn msgspec's "Expected `int`, got `str` - at `$.farm_id`" into (field, reason)."""
    message = str(exc)
    reason, _, path = message.partition(" - at `")
    name = path.rstrip("`").removeprefix("$.").removeprefix("$") or None
    if name is None and reason.startswith("Object missing required field `"):
        name = reason.split("`")[1]
    return ItemError(index, name, reason)


def decode_batch(body: bytes) -> tuple[list[Reading | None], list[ItemError]]:
    """Decode `{"readings": [...]}`; an item that does not decode is None with an error naming it.

    The whole batch is decoded in one C call; only when that fails is it decoded item by item to
    find which items are bad. Raises msgspec.DecodeError/ValidationError when the body itself is
    not such an object.
    """
    try:
        return list(msgspec.json.decode(body, type=ReadingBatch).readings), []
    except msgspec.ValidationError:
        raw = msgspec.json.decode(body, type=RawBatch).readings
    items: list[Reading | None] = []
    errors: list[ItemError] = []
    decode = msgspec.json.Decoder(Reading).decode
    for i, item in enumerate(raw):
        try:
            items.append(decode(item))
        except msgspec.ValidationError as exc:
            items.append(None)
            errors.append(decode_error(i, exc))
        except (RecursionError, UnicodeDecodeError) as exc:
            items.append(None)
            errors.append(ItemError(i, None, "nested too deeply" if isinstance(exc, RecursionError)
                                    else f"not UTF-8: {exc}"))
    return items, errors


def parse_time(value: datetime | float | None, now: datetime) -> datetime:
    """A reading's time from ISO 8601 (with zone) or epoch seconds/milliseconds; raises ValueError."""
    if value is None:
        return now
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("has no time zone (send ISO 8601 with Z or an offset, or epoch seconds)")
        return value
    if not math.isfinite(value):
        raise ValueError("is not a finite number")
    seconds = value / 1000.0 if value > 1e11 else value
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"epoch {value!r} is out of range") from None


def normalise_unit(metric: str, value: float, unit: str | None, spec: MetricSpec | None
                   ) -> tuple[float, str | None, str | None]:
    """(value in the canonical unit, canonical unit, the original unit when converted); raises ValueError."""
    if unit is None:
        return value, spec.unit if spec else None, None
    canonical = UNIT_ALIASES.get(unit.lower(), unit)
    if spec is None or canonical == spec.unit:
        return value, canonical, None
    conversion = CONVERSIONS.get((canonical, spec.unit))
    if conversion is None:
        raise ValueError(f"{unit!r} cannot be converted to {spec.unit} for {metric}")
    scale, offset = conversion
    return value * scale + offset, spec.unit, unit


def validate_readings(items: Sequence[Reading | None], ctx: Context) -> Validated:
    """Check and normalise decoded readings; None items (failed decoding) are skipped.

    Rows come out in SENSOR_DATA's column order, ready for the writer.
    """
    out = Validated()
    rows, indexes, errors = out.rows, out.indexes, out.errors
    now = ctx.now
    oldest, newest = now - RAW_RETENTION, now + MAX_FUTURE
    devices, animal_ids, animal_codes = ctx.registry.devices, ctx.registry.animals, ctx.registry.animal_codes
    zones, owners = ctx.registry.zones, ctx.owners
    encode = msgspec.json.encode
    for i, r in enumerate(items):
        if r is None:
            continue
        if not (r.device_uid.isprintable() and r.device_type.isprintable() and r.metric_name.isprintable()
                and (r.metric_unit is None or r.metric_unit.isprintable())
                and (r.session_id is None or r.session_id.isprintable())):
            name = next(n for n in _TEXT_FIELDS if not (getattr(r, n) or "").isprintable())
            errors.append(ItemError(i, name, "contains control or unprintable characters"))
            continue
        value = r.metric_value
        if not math.isfinite(value):
            errors.append(ItemError(i, "metric_value", f"{value} is not a finite number"))
            continue
        try:
            t = parse_time(r.timestamp, now)
        except ValueError as exc:
            errors.append(ItemError(i, "timestamp", str(exc)))
            continue
        if t > newest or t < oldest:
            errors.append(ItemError(i, "timestamp", f"{t.isoformat()} is outside the accepted window "
                                                    "(raw retention in the past, 5 minutes ahead)"))
            continue
        meta = r.metadata
        quality = QUALITY_VALID
        animal, zone, device_type = r.animal_id, r.zone_id, r.device_type
        device = devices.get(r.device_uid)
        if device is None:
            if owners.get(r.device_uid, r.farm_id) != r.farm_id:
                errors.append(ItemError(i, "device_uid", not_yours("device", r.device_uid)))
                continue
            quality = QUALITY_UNKNOWN_DEVICE
        else:
            if device.farm_id != r.farm_id:
                errors.append(ItemError(i, "device_uid", not_yours("device", r.device_uid)))
                continue
            if device.gain != 1.0 or device.offset != 0.0:
                meta = {**(meta or {}), "uncalibrated_value": value}
                value = value * device.gain + device.offset
            animal = animal if animal is not None else device.animal_id
            zone = zone if zone is not None else device.zone_id
            device_type = device.device_type  # the registry's, whatever a payload calls itself
        if zone is not None and zones.get(zone, r.farm_id) != r.farm_id:
            errors.append(ItemError(i, "zone_id", not_yours("zone", zone)))
            continue
        if isinstance(animal, str):
            if not animal.isprintable():
                errors.append(ItemError(i, "animal_id", "contains control or unprintable characters"))
                continue
            code, animal = animal, animal_codes.get((r.farm_id, animal))
            if animal is None:
                meta = {**(meta or {}), "animal_code": code}
                quality = quality if quality != QUALITY_VALID else QUALITY_UNKNOWN_ANIMAL
        elif animal is not None and animal_ids.get(animal, r.farm_id) != r.farm_id:
            errors.append(ItemError(i, "animal_id", not_yours("animal", animal)))
            continue
        spec = METRICS.get(r.metric_name)
        try:
            value, unit, original = normalise_unit(r.metric_name, value, r.metric_unit, spec)
        except ValueError as exc:
            errors.append(ItemError(i, "metric_unit", str(exc)))
            continue
        if original is not None:
            meta = {**(meta or {}), "original_value": r.metric_value, "original_unit": original}
        if spec is not None:
            low, high = spec.low, spec.high
            if not low <= value <= high:
                errors.append(ItemError(i, "metric_value", f"{value:g} {spec.unit} is outside {r.metric_name}'s "
                                                           f"range {low:g}..{high:g}"))
                continue
            margin = (high - low) * SUSPECT_MARGIN
            if value < low + margin or value > high - margin:
                quality = QUALITY_SUSPECT
        elif not abs(value) <= MAX_MAGNITUDE:  # an unranged metric; NaN (after calibration) fails too
            errors.append(ItemError(i, "metric_value", f"{value:g} is outside the bound of every value, "
                                                       f"-{MAX_MAGNITUDE:g}..{MAX_MAGNITUDE:g}"))
            continue
        metadata = "{}" if not meta else encode(meta).decode()
        if len(metadata) > MAX_METADATA_BYTES or "\\u0000" in metadata:
            errors.append(ItemError(i, "metadata", f"is over {MAX_METADATA_BYTES} bytes as JSON"
                                    if len(metadata) > MAX_METADATA_BYTES
                                    else "contains a NUL character, which cannot be stored"))
            continue
        rows.append((t, r.device_uid, device_type, r.farm_id, r.metric_name, value, unit, quality, False,
                     animal, zone, r.session_id, r.battery_level, r.signal_strength, metadata))
        indexes.append(i)
    return out


# --- milking sessions and RFID reads --------------------------------------------------------------

_FRACTION = Annotated[float, msgspec.Meta(ge=0, le=1)]
_PERCENT_OF = Annotated[float, msgspec.Meta(ge=0, le=100)]


class MilkSession(msgspec.Struct, kw_only=True):
    """One milking session (the columns of iot.milk_production_realtime)."""

    milk_meter_id: ID
    farm_id: _INT32
    session_id: ID
    yield_kg: float
    animal_id: _INT32 | ID | None = None
    timestamp: datetime | float | None = None  # default: session_end, else now
    duration_seconds: Annotated[int, msgspec.Meta(ge=0, le=86_400)] | None = None
    flow_rate_kg_min: float | None = None
    conductivity_ms: float | None = None
    temperature_c: float | None = None
    blood_detected: bool = False
    fat_percent: _PERCENT_OF | None = None
    protein_percent: _PERCENT_OF | None = None
    lactose_percent: _PERCENT_OF | None = None
    somatic_cell_count: Annotated[int, msgspec.Meta(ge=0, le=100_000_000)] | None = None
    mastitis_risk_score: _FRACTION | None = None
    session_start: datetime | float | None = None
    session_end: datetime | float | None = None
    milking_type: _SHORT | None = None
    meter_status: _SHORT | None = None
    metadata: dict[str, Any] | None = None


# Milk fields checked against the sensor metrics' ranges, so one table holds each range.
MILK_RANGES = {"yield_kg": METRICS["milk_yield_kg"], "conductivity_ms": METRICS["conductivity_ms"],
               "temperature_c": _AIR_TEMP, "flow_rate_kg_min": MetricSpec("kg/min", 0.0, 20.0)}


RSSI = Annotated[float, msgspec.Meta(ge=-200, le=50)]
READ_COUNT = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
SHORT = _SHORT


class RfidRead(msgspec.Struct, kw_only=True):
    """One tag read at a gate (the columns of iot.rfid_events)."""

    reader_id: ID
    farm_id: _INT32
    tag_epc: EPC
    antenna_id: Annotated[int, msgspec.Meta(ge=0, le=65_535)] | None = None
    animal_id: _INT32 | ID | None = None
    rssi: RSSI | None = None
    direction: _SHORT | None = None
    read_count: READ_COUNT = 1
    timestamp: datetime | float | None = None


class _Rejected(Exception):
    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(field_name, reason)
        self.field_name, self.reason = field_name, reason


def _time_in_window(name: str, value: datetime | float | None, ctx: Context, default: datetime) -> datetime:
    try:
        t = parse_time(value, default)
    except ValueError as exc:
        raise _Rejected(name, str(exc)) from None
    if t > ctx.now + MAX_FUTURE or t < ctx.now - RAW_RETENTION:
        raise _Rejected(name, f"{t.isoformat()} is outside the accepted window "
                              "(raw retention in the past, 5 minutes ahead)")
    return t


def _resolve_animal(animal: int | str | None, farm_id: int, registry: Registry, meta: dict) -> int | None:
    """The registry id of an animal named by id or ear tag at `farm_id`; an id of another farm's animal is refused."""
    if isinstance(animal, str):
        found = registry.animal_codes.get((farm_id, animal))
        if found is None:
            meta["animal_code"] = animal
        return found
    if animal is not None and registry.animals.get(animal, farm_id) != farm_id:
        raise _Rejected("animal_id", not_yours("animal", animal))
    return animal


def _check_device(name: str, kind: str, uid: str, farm_id: int, ctx: Context) -> None:
    if device_farm(uid, ctx) not in (None, farm_id):
        raise _Rejected(name, not_yours(kind, uid))


def validate_milk(items: Sequence[MilkSession | None], ctx: Context) -> Validated:
    """Check milking sessions; rows come out in MILK_PRODUCTION's column order."""
    out = Validated()
    for i, m in enumerate(items):
        if m is None:
            continue
        try:
            for name, spec in MILK_RANGES.items():
                value = getattr(m, name)
                if value is not None and not spec.low <= value <= spec.high:  # NaN fails too
                    raise _Rejected(name, f"{value:g} is outside {spec.low:g}..{spec.high:g} {spec.unit}")
            start = None if m.session_start is None else _time_in_window("session_start", m.session_start, ctx, ctx.now)
            end = None if m.session_end is None else _time_in_window("session_end", m.session_end, ctx, ctx.now)
            t = _time_in_window("timestamp", m.timestamp, ctx, end or ctx.now)
            _check_device("milk_meter_id", "milk meter", m.milk_meter_id, m.farm_id, ctx)
            meta = dict(m.metadata or {})
            animal = _resolve_animal(m.animal_id, m.farm_id, ctx.registry, meta)
            metadata = msgspec.json.encode(meta).decode()
            if len(metadata) > MAX_METADATA_BYTES:
                raise _Rejected("metadata", f"is over {MAX_METADATA_BYTES} bytes as JSON")
        except _Rejected as r:
            out.errors.append(ItemError(i, r.field_name, r.reason))
            continue
        out.rows.append((t, m.milk_meter_id, animal, m.farm_id, m.session_id, m.yield_kg, m.duration_seconds,
                         m.flow_rate_kg_min, m.conductivity_ms, m.temperature_c, m.blood_detected, m.fat_percent,
                         m.protein_percent, m.lactose_percent, m.somatic_cell_count, m.mastitis_risk_score,
                         start, end, m.milking_type, m.meter_status, metadata))
        out.indexes.append(i)
    return out


def validate_rfid(items: Sequence[RfidRead | None], ctx: Context) -> Validated:
    """Check tag reads; rows come out in RFID_EVENTS's column order."""
    out = Validated()
    for i, r in enumerate(items):
        if r is None:
            continue
        epc = r.tag_epc.upper()
        try:
            t = _time_in_window("timestamp", r.timestamp, ctx, ctx.now)
            _check_device("reader_id", "reader", r.reader_id, r.farm_id, ctx)
            tagged = ctx.registry.animal_tags.get(epc)
            if tagged is not None and tagged[0] != r.farm_id:
                raise _Rejected("tag_epc", not_yours("tag", epc))
            animal = _resolve_animal(r.animal_id, r.farm_id, ctx.registry, {}) or (tagged and tagged[1])
        except _Rejected as e:
            out.errors.append(ItemError(i, e.field_name, e.reason))
            continue
        out.rows.append((t, r.reader_id, r.antenna_id, epc, animal, r.farm_id, r.rssi, r.direction, r.read_count))
        out.indexes.append(i)
    return out
