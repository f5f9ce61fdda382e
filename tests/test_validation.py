"""Validation and topic mapping: the rules of contract sections 4 and 5, without a database."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingestor.registry import Device, Registry
from ingestor.tables import MILK_PRODUCTION, SENSOR_DATA
from ingestor.topics import TopicError, decode_message, parse_topic, subscriptions
from ingestor.validation import (
    METRICS,
    Context,
    MilkSession,
    Reading,
    decode_batch,
    validate_milk,
    validate_readings,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
REGISTRY = Registry(
    devices={"COL-1": Device(1, "collar", 7, None, 1.0, 0.0), "ENV-1": Device(1, "env_sensor", None, 3, 1.1, -0.5),
             "ENV-2": Device(2, "env_sensor", None, 9, 1.0, 0.0)},
    animals={7: 1, 8: 2},
    animal_codes={(1, "COW-7"): 7},
    zones={3: 1},
)
CTX = Context(REGISTRY, now=NOW)
COL = {c: i for i, c in enumerate(SENSOR_DATA.columns)}


def one(**fields) -> tuple[list[tuple], list]:
    base = {"device_uid": "COL-1", "device_type": "collar", "farm_id": 1, "metric_name": "activity_index",
            "metric_value": 50.0, "timestamp": NOW.isoformat()}
    reading = msgspec.convert({**base, **fields}, Reading)
    out = validate_readings([reading], CTX)
    return out.rows, out.errors


def test_a_valid_reading_becomes_a_row_in_column_order_enriched_from_the_registry() -> None:
    rows, errors = one()
    assert errors == [] and len(rows) == 1 and len(rows[0]) == len(SENSOR_DATA.columns)
    row = rows[0]
    assert row[COL["time"]] == NOW and row[COL["animal_id"]] == 7 and row[COL["data_quality"]] == "valid"
    assert row[COL["metric_unit"]] == "index" and row[COL["metadata"]] == "{}"


@pytest.mark.parametrize(("metric", "low", "high"), [
    ("temperature_c", -50, 60), ("humidity_percent", 0, 100), ("nh3_ppm", 0, 100), ("activity_index", 0, 1000),
    ("rumination_minutes", 0, 1440), ("body_temperature_c", 35, 42), ("milk_yield_kg", 0, 100),
    ("conductivity_ms", 0, 20)])
def test_contract_ranges_reject_outside_and_flag_the_edges(metric: str, low: float, high: float) -> None:
    assert (METRICS[metric].low, METRICS[metric].high) == (low, high)
    span = high - low
    for value, expected in ((low - 0.01 * span, None), (high + 0.01 * span, None), (low, "suspect"),
                            (high - 0.001 * span, "suspect"), (low + span / 2, "valid")):
        rows, errors = one(metric_name=metric, metric_value=value)
        if expected is None:
            assert rows == [] and errors[0].field == "metric_value" and "outside" in errors[0].reason
        else:
            assert errors == [] and rows[0][COL["data_quality"]] == expected, (metric, value)


def test_units_are_normalised_and_the_original_kept() -> None:
    rows, errors = one(device_uid="X-1", metric_name="temperature_c", metric_value=98.6, metric_unit="°F")
    assert errors == []
    assert math.isclose(rows[0][COL["metric_value"]], 37.0) and rows[0][COL["metric_unit"]] == "degC"
    meta = msgspec.json.decode(rows[0][COL["metadata"]])
    assert meta["original_value"] == 98.6 and meta["original_unit"] == "°F"
    rows, _ = one(device_uid="X-1", metric_name="milk_yield_kg", metric_value=10, metric_unit="L")
    assert math.isclose(rows[0][COL["metric_value"]], 10.3)
    rows, _ = one(device_uid="X-1", metric_name="milk_yield_kg", metric_value=10, metric_unit="lb")
    assert math.isclose(rows[0][COL["metric_value"]], 4.5359237)
    rows, errors = one(metric_name="temperature_c", metric_unit="ppm", metric_value=1)
    assert rows == [] and errors[0].field == "metric_unit" and "cannot be converted" in errors[0].reason


def test_calibration_of_a_registered_device_is_applied() -> None:
    rows, errors = one(device_uid="ENV-1", device_type="env_sensor", metric_name="temperature_c", metric_value=20.0)
    assert errors == [] and math.isclose(rows[0][COL["metric_value"]], 21.5)
    assert rows[0][COL["zone_id"]] == 3
    assert msgspec.json.decode(rows[0][COL["metadata"]])["uncalibrated_value"] == 20.0


@pytest.mark.parametrize(("stamp", "ok"), [
    (NOW.isoformat(), True), (NOW.timestamp(), True), (NOW.timestamp() * 1000, True),
    ((NOW + timedelta(minutes=4)).isoformat(), True), ((NOW + timedelta(minutes=6)).isoformat(), False),
    ((NOW - timedelta(days=89)).isoformat(), True), ((NOW - timedelta(days=91)).isoformat(), False),
    ("2026-06-01T12:00:00", False), (1e300, False)])
def test_timestamp_window_and_forms(stamp: object, ok: bool) -> None:
    rows, errors = one(timestamp=stamp)
    assert bool(rows) is ok
    if not ok:
        assert errors[0].field == "timestamp"


def test_unknown_device_and_animal_are_kept_and_labelled() -> None:
    rows, errors = one(device_uid="NEW-1", animal_id="COW-404")
    assert errors == [] and rows[0][COL["data_quality"]] == "unknown_device" and rows[0][COL["animal_id"]] is None
    assert msgspec.json.decode(rows[0][COL["metadata"]])["animal_code"] == "COW-404"
    rows, _ = one(device_uid="NEW-1", animal_id="COW-7")
    assert rows[0][COL["animal_id"]] == 7


def test_registry_disagreements_are_rejected_with_the_field() -> None:
    _, errors = one(device_uid="ENV-2", device_type="env_sensor", metric_name="temperature_c")
    assert errors[0].field == "device_uid" and errors[0].reason == "device ENV-2 belongs to another farm"
    _, errors = one(device_uid="NEW-1", animal_id=8)
    assert errors[0].field == "animal_id"


@pytest.mark.parametrize(("field", "value"), [
    ("device_uid", "bad\x00id"), ("metric_name", "tab\tname"), ("animal_id", "COW\n1")])
def test_control_characters_are_rejected(field: str, value: str) -> None:
    _, errors = one(**{field: value})
    assert errors[0].field == field


def test_batch_decoding_reports_each_bad_item_by_index_and_field() -> None:
    good = {"device_uid": "A", "device_type": "t", "farm_id": 1, "metric_name": "m", "metric_value": 1}
    body = msgspec.json.encode({"readings": [good, {**good, "farm_id": "one"}, {**good, "metric_value": None},
                                             {k: v for k, v in good.items() if k != "device_uid"}, good]})
    items, errors = decode_batch(body)
    assert [i is None for i in items] == [False, True, True, True, False]
    assert [(e.index, e.field) for e in errors] == [(1, "farm_id"), (2, "metric_value"), (3, "device_uid")]
    with pytest.raises(msgspec.DecodeError):
        decode_batch(b'{"readings": [')


@given(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(sorted(METRICS)))
def test_no_value_outside_its_range_or_non_finite_is_ever_stored(value: float, metric: str) -> None:
    reading = Reading(device_uid="X", device_type="t", farm_id=1, metric_name=metric, metric_value=value,
                      timestamp=NOW)
    out = validate_readings([reading], CTX)
    spec = METRICS[metric]
    stored = [r[COL["metric_value"]] for r in out.rows]
    assert all(math.isfinite(v) and spec.low <= v <= spec.high for v in stored)
    assert len(out.rows) + len(out.errors) == 1


def test_milk_sessions_are_checked_against_the_same_ranges() -> None:
    ok = MilkSession(milk_meter_id="M1", farm_id=1, session_id="S1", yield_kg=14.0, animal_id="COW-7",
                     session_end=NOW)
    out = validate_milk([ok, MilkSession(milk_meter_id="M1", farm_id=1, session_id="S2", yield_kg=140.0),
                         MilkSession(milk_meter_id="M1", farm_id=1, session_id="S3", yield_kg=1.0,
                                     conductivity_ms=float("nan"))], CTX)
    assert [(e.index, e.field) for e in out.errors] == [(1, "yield_kg"), (2, "conductivity_ms")]
    row = dict(zip(MILK_PRODUCTION.columns, out.rows[0], strict=True))
    assert row["time"] == NOW and row["animal_id"] == 7


def test_topics_parse_and_subscriptions_derive_from_one_table() -> None:
    assert parse_topic("dairy/farm/1/barn/2/zone/3/sensor/ENV-1/telemetry") == (
        "environment", {"farm_id": 1, "barn_id": 2, "zone_id": 3, "sensor_id": "ENV-1"})
    assert parse_topic("system/farm/4/device/COL-9/status") == ("status", {"farm_id": 4, "device_id": "COL-9"})
    assert "dairy/farm/+/animal/+/activity/telemetry" in subscriptions()
    assert all(s.startswith("$share/g/") for s in subscriptions("g"))
    for bad in ("dairy/farm/x/animal/1/activity/telemetry", "dairy/farm/1/unknown", "",
                "dairy/farm/-1/rfid/gate/1/tag/read"):
        with pytest.raises(TopicError):
            parse_topic(bad)


def test_environment_payload_gives_one_reading_per_key_and_records_disagreement() -> None:
    payload = msgspec.json.encode({"timestamp": NOW.isoformat(), "device_id": "OTHER", "farm_id": 1, "zone_id": 3,
                                   "readings": {"temperature_c": 22.5, "humidity_percent": 65.0}, "battery_level": 87})
    mapped = decode_message("dairy/farm/1/barn/1/zone/3/sensor/ENV-9/telemetry", payload)
    assert [(r.device_uid, r.metric_name, r.zone_id) for r in mapped.readings] == [
        ("ENV-9", "temperature_c", 3), ("ENV-9", "humidity_percent", 3)]
    assert mapped.readings[0].metadata["payload_disagrees_with_topic"] == {"device_id": "OTHER"}


def test_a_registered_device_has_the_registry_type_whatever_its_payload_says() -> None:
    rows, errors = one(device_type="environmental")  # COL-1 is a collar in the registry
    assert errors == [] and rows[0][COL["device_type"]] == "collar"
    rows, _ = one(device_uid="NEW-1", device_type="gadget")  # nothing else is known of an unregistered one
    assert rows[0][COL["device_type"]] == "gadget"
    env = decode_message("dairy/farm/1/barn/1/zone/3/sensor/ENV-9/telemetry", msgspec.json.encode(
        {"sensor_type": "environmental", "readings": {"temperature_c": 22.5}}))
    assert env.readings[0].device_type == "env_sensor"
    assert env.readings[0].metadata["payload_disagrees_with_topic"] == {"sensor_type": "environmental"}


def test_collar_milking_rfid_and_status_payloads() -> None:
    collar = decode_message("dairy/farm/1/animal/COW-7/activity/telemetry", msgspec.json.encode(
        {"device_id": "COL-1", "animal_id": "COW-8", "activity_index": 45, "rumination_minutes": 420,
         "temperature_c": 38.6}))
    assert {r.metric_name: r.metric_value for r in collar.readings} == {
        "activity_index": 45, "rumination_minutes": 420, "body_temperature_c": 38.6}
    assert collar.readings[0].animal_id == "COW-7"
    milk = decode_message("dairy/farm/1/milking/parlor/2/stall/5/session/end", msgspec.json.encode(
        {"session_id": "SES-1", "animal_id": "COW-7", "milk_data": {"total_volume_liters": 10.0,
                                                                    "conductivity_ms_cm": 4.5},
         "quality_flags": {"blood_detected": True}}))
    assert math.isclose(milk.milk[0].yield_kg, 10.3) and milk.milk[0].blood_detected
    assert milk.milk[0].metadata["volume_liters"] == 10.0
    rfid = decode_message("dairy/farm/1/rfid/gate/3/tag/read", msgspec.json.encode(
        {"reader_id": "RFID-GATE-01", "tag_epc": "E200341502001080", "rssi": -52}))
    assert rfid.rfid[0].tag_epc == "E200341502001080" and rfid.rfid[0].farm_id == 1
    status = decode_message("system/farm/1/device/COL-1/status", b'{"battery_level": 12, "signal_strength": -80}')
    assert {r.metric_name: r.metric_value for r in status.readings} == {"battery_level": 12, "signal_strength": -80}
    with pytest.raises(msgspec.ValidationError):
        decode_message("dairy/farm/1/rfid/gate/3/tag/read", b'{"reader_id": "R", "tag_epc": "not hex!"}')
