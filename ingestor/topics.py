"""The MQTT topic tree of contract section 4 and its payloads, mapped to the structs validation takes.

One table of patterns serves the MQTT subscriber (its subscriptions are derived from it) and the
HTTP telemetry endpoint, so a device's message means the same on both paths. Identifiers in the
topic win over the payload's; a disagreement is recorded in the rows' metadata.
"""

from __future__ import annotations

import functools
import re
import typing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import msgspec

from .validation import EPC, ID, MILK_KG_PER_L, NAME, READ_COUNT, RSSI, SHORT, TEXT, MilkSession, Reading, RfidRead

# kind -> pattern; {name} is one topic level, an integer where the name is in INT_LEVELS.
TOPICS: dict[str, str] = {
    "environment": "dairy/farm/{farm_id}/barn/{barn_id}/zone/{zone_id}/sensor/{sensor_id}/telemetry",
    "collar": "dairy/farm/{farm_id}/animal/{animal_id}/activity/telemetry",
    "milking": "dairy/farm/{farm_id}/milking/parlor/{parlor_id}/stall/{stall_id}/session/end",
    "rfid": "dairy/farm/{farm_id}/rfid/gate/{gate_id}/tag/read",
    "status": "system/farm/{farm_id}/device/{device_id}/status",
}
ALERT_TOPIC = "dairy/farm/{farm_id}/alert/{severity}/{category}"
ENV_SENSOR = "env_sensor"  # the device type of every environment topic's sender (built-in rules scope on it)
INT_LEVELS = frozenset({"farm_id", "barn_id", "zone_id", "parlor_id", "stall_id"})
_PATTERNS = {kind: pattern.split("/") for kind, pattern in TOPICS.items()}
# Integer levels: canonical ASCII decimal, 1 to 2**31 - 1 (the int4 ids of the tables). No sign, no
# leading zero, no other digits: str.isdigit() and int() also take '¹', '١' or '１', and '01' is not
# the same topic as '1' to a broker's ACL.
_INT_LEVEL = re.compile(r"[1-9][0-9]{0,9}")
INT_MAX = 2**31 - 1
# String id levels (device, sensor, animal, gate ids): validation's ID (printable ASCII, no space,
# 1-64 characters), matched whole, and without MQTT's wildcards '+' and '#' ('/' separates levels).
_ID_LEVEL = re.compile(typing.get_args(ID)[1].pattern)
_WILDCARDS = frozenset("+#")
MAX_TOPIC_CHARS = 1024  # far above the longest valid topic; longer ones are refused before splitting


def subscriptions(group: str = "") -> list[str]:
    """MQTT filters for every topic kind; with a group, shared subscriptions ($share/group/...)."""
    filters = ["/".join("+" if p.startswith("{") else p for p in parts) for parts in _PATTERNS.values()]
    return [f"$share/{group}/{f}" for f in filters] if group else filters


class TopicError(ValueError):
    """The topic is not one of contract section 4's."""


def _show(value: str, limit: int = 80) -> str:
    """A level or topic as quoted in an error, bounded whatever was sent."""
    return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value)} characters)"


def parse_int_level(name: str, value: str) -> int:
    """A topic's integer level; raises TopicError unless `value` is a canonical ASCII integer in int32 > 0."""
    if _INT_LEVEL.fullmatch(value) is None or int(value) > INT_MAX:
        raise TopicError(f"topic level {name} must be a positive integer (ASCII digits, no sign or leading zero, "
                         f"at most {INT_MAX}), got {_show(value)}")
    return int(value)


def parse_id_level(name: str, value: str) -> str:
    """A topic's string id level; raises TopicError unless it is printable ASCII without space, '+' or
    '#', 1-64 characters (validation's ID)."""
    if _ID_LEVEL.fullmatch(value) is None or not _WILDCARDS.isdisjoint(value):
        raise TopicError(f"topic level {name} must be 1-64 printable ASCII characters without space, '+' or '#', "
                         f"got {_show(value)}")
    return value


@functools.lru_cache(maxsize=65_536)  # a farm's devices publish to the same few thousand topics
def parse_topic(topic: str) -> tuple[str, dict[str, Any]]:
    """(kind, identifiers) of a topic; raises TopicError (and nothing else) naming what does not
    match. The identifiers are shared between calls: read them, never change them."""
    if not isinstance(topic, str):
        raise TopicError(f"a topic is text, got {type(topic).__name__}")
    if len(topic) > MAX_TOPIC_CHARS:
        raise TopicError(f"topic of {len(topic)} characters; no valid topic has more than {MAX_TOPIC_CHARS}")
    levels = topic.split("/")
    for kind, parts in _PATTERNS.items():
        if len(parts) != len(levels) or any(p != v for p, v in zip(parts, levels, strict=True) if p[0] != "{"):
            continue
        ids: dict[str, Any] = {}
        for p, v in zip(parts, levels, strict=True):
            if p[0] == "{":
                name = p[1:-1]
                ids[name] = parse_int_level(name, v) if name in INT_LEVELS else parse_id_level(name, v)
        return kind, ids
    raise TopicError(f"unknown topic {_show(topic)}: expected one of {', '.join(TOPICS.values())}")


_WHEN = datetime | float | None
_LEVEL = Annotated[int, msgspec.Meta(ge=0, le=100)] | None
_SIGNAL = Annotated[int, msgspec.Meta(ge=-200, le=100)] | None


class EnvironmentPayload(msgspec.Struct, kw_only=True):
    readings: dict[TEXT, float]  # names checked by validate_readings, as metric_name
    timestamp: _WHEN = None
    device_id: ID | None = None
    farm_id: int | None = None
    zone_id: int | None = None
    sensor_type: TEXT | None = None
    battery_level: _LEVEL = None
    signal_strength: _SIGNAL = None


# Collar payload keys stored as readings, and the metric each becomes (the collar's temperature is the cow's).
COLLAR_METRICS = {"activity_index": "activity_index", "activity_score": "activity_score",
                  "rumination_minutes": "rumination_minutes", "eating_minutes": "eating_minutes",
                  "resting_minutes": "resting_minutes", "temperature_c": "body_temperature_c"}


class CollarPayload(msgspec.Struct, kw_only=True):
    timestamp: _WHEN = None
    device_id: ID | None = None
    animal_id: ID | None = None
    farm_id: int | None = None
    activity_index: float | None = None
    activity_score: float | None = None
    rumination_minutes: float | None = None
    eating_minutes: float | None = None
    resting_minutes: float | None = None
    temperature_c: float | None = None
    battery_level: _LEVEL = None
    signal_strength: _SIGNAL = None


class SessionTimes(msgspec.Struct):
    start_time: _WHEN = None
    end_time: _WHEN = None
    duration_seconds: Annotated[int, msgspec.Meta(ge=0, le=86_400)] | None = None


class MilkData(msgspec.Struct):
    total_volume_liters: float
    average_flow_lpm: float | None = None
    peak_flow_lpm: float | None = None
    temperature_celsius: float | None = None
    conductivity_ms_cm: float | None = None


class QualityFlags(msgspec.Struct):
    blood_detected: bool = False


class MilkingPayload(msgspec.Struct, kw_only=True):
    session_id: ID
    milk_data: MilkData
    timestamp: _WHEN = None
    animal_id: ID | None = None
    device_id: ID | None = None
    session_data: SessionTimes = msgspec.field(default_factory=SessionTimes)
    quality_flags: QualityFlags = msgspec.field(default_factory=QualityFlags)
    quality_score: float | None = None


class RfidPayload(msgspec.Struct, kw_only=True):
    reader_id: ID
    tag_epc: EPC
    timestamp: _WHEN = None
    antenna_id: Annotated[int, msgspec.Meta(ge=0, le=65_535)] | None = None
    animal_id: ID | None = None
    rssi: RSSI | None = None
    read_count: READ_COUNT = 1
    direction: SHORT | None = None


class StatusPayload(msgspec.Struct, kw_only=True):
    timestamp: _WHEN = None
    device_type: NAME = "unknown"
    battery_level: _LEVEL = None
    signal_strength: _SIGNAL = None
    firmware_version: SHORT | None = None


PAYLOADS: dict[str, type[msgspec.Struct]] = {
    "environment": EnvironmentPayload, "collar": CollarPayload, "milking": MilkingPayload,
    "rfid": RfidPayload, "status": StatusPayload,
}
_DECODERS = {kind: msgspec.json.Decoder(t) for kind, t in PAYLOADS.items()}


@dataclass
class Mapped:
    """What one message becomes: readings, milking sessions and RFID reads, ready for validation."""

    readings: list[Reading] = field(default_factory=list)
    milk: list[MilkSession] = field(default_factory=list)
    rfid: list[RfidRead] = field(default_factory=list)


def _meta(disagreements: tuple[tuple[str, Any, Any], ...] = (), **extra: Any) -> dict[str, Any] | None:
    """Metadata for a message's rows: `extra` values that are set, and the payload identifiers that
    disagree with the topic's, (name, topic's value, payload's value) each (the topic's are used)."""
    meta = {k: v for k, v in extra.items() if v is not None}
    differ = {name: sent for name, used, sent in disagreements if sent is not None and sent != used}
    if differ:
        meta["payload_disagrees_with_topic"] = differ
    return meta or None


def decode_message(topic: str, payload: bytes) -> Mapped:
    """Map a message to rows; raises TopicError or msgspec errors naming what is wrong. (Callers
    taking untrusted messages also catch anything else: a message must never stop them.)"""
    kind, ids = parse_topic(topic)
    p = _DECODERS[kind].decode(payload)
    farm = ids["farm_id"]
    out = Mapped()
    if kind == "environment":
        uid = ids["sensor_id"]
        # The topic says what the device is (a zone's climate sensor); the barn follows from the zone.
        meta = _meta((("device_id", uid, p.device_id), ("farm_id", farm, p.farm_id),
                      ("zone_id", ids["zone_id"], p.zone_id), ("sensor_type", ENV_SENSOR, p.sensor_type)))
        out.readings = [Reading(device_uid=uid, device_type=ENV_SENSOR, farm_id=farm,
                                metric_name=name, metric_value=value, timestamp=p.timestamp, zone_id=ids["zone_id"],
                                battery_level=p.battery_level, signal_strength=p.signal_strength, metadata=meta)
                        for name, value in p.readings.items()]
    elif kind == "collar":
        uid = p.device_id or f"COLLAR-{farm}-{ids['animal_id']}"
        meta = _meta((("animal_id", ids["animal_id"], p.animal_id), ("farm_id", farm, p.farm_id)))
        out.readings = [Reading(device_uid=uid, device_type="collar", farm_id=farm, metric_name=metric,
                                metric_value=value, timestamp=p.timestamp, animal_id=ids["animal_id"],
                                battery_level=p.battery_level, signal_strength=p.signal_strength, metadata=meta)
                        for key, metric in COLLAR_METRICS.items() if (value := getattr(p, key)) is not None]
    elif kind == "milking":
        m, s = p.milk_data, p.session_data
        meta = _meta(parlor_id=ids["parlor_id"],
                     stall_id=ids["stall_id"], volume_liters=m.total_volume_liters, peak_flow_lpm=m.peak_flow_lpm,
                     quality_score=p.quality_score)
        out.milk = [MilkSession(
            milk_meter_id=p.device_id or f"STALL-{farm}-{ids['parlor_id']}-{ids['stall_id']}", farm_id=farm,
            session_id=p.session_id, yield_kg=m.total_volume_liters * MILK_KG_PER_L, animal_id=p.animal_id,
            timestamp=p.timestamp or s.end_time, duration_seconds=s.duration_seconds,
            flow_rate_kg_min=None if m.average_flow_lpm is None else m.average_flow_lpm * MILK_KG_PER_L,
            conductivity_ms=m.conductivity_ms_cm, temperature_c=m.temperature_celsius,
            blood_detected=p.quality_flags.blood_detected, session_start=s.start_time, session_end=s.end_time,
            meter_status="ok", metadata=meta)]
    elif kind == "rfid":
        out.rfid = [RfidRead(reader_id=p.reader_id, farm_id=farm, tag_epc=p.tag_epc, antenna_id=p.antenna_id,
                             animal_id=p.animal_id, rssi=p.rssi, direction=p.direction, read_count=p.read_count,
                             timestamp=p.timestamp)]
    else:  # status: battery and signal are stored as readings, so they have a history and alerts
        uid = ids["device_id"]
        meta = _meta(firmware_version=p.firmware_version)
        out.readings = [Reading(device_uid=uid, device_type=p.device_type, farm_id=farm, metric_name=name,
                                metric_value=float(value), timestamp=p.timestamp, battery_level=p.battery_level,
                                signal_strength=p.signal_strength, metadata=meta)
                        for name, value in (("battery_level", p.battery_level),
                                            ("signal_strength", p.signal_strength)) if value is not None]
    return out
