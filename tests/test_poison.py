"""Values cannot poison shared work (issue 13, invariant 5).

Two readings of an unranged metric, 1e300 and 0, overflowed avg/stddev in the rollups: every refresh
then failed for every farm. Now every value has a finite bound, checked by validation and enforced
by the database for whoever writes the rows; and a rollup bucket that still fails is dead-lettered
and skipped while the others refresh.
"""

from __future__ import annotations

import json
import math
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec
import pytest

from ingestor import maintenance, storage
from ingestor.registry import Device, Registry
from ingestor.tables import MILK_PRODUCTION, RFID_EVENTS, SENSOR_DATA
from ingestor.validation import (
    MAX_MAGNITUDE,
    METRICS,
    MILK_RANGES,
    Context,
    MilkSession,
    RfidRead,
    decode_batch,
    validate_readings,
)
from ingestor.writer import Writer

from .conftest import MIGRATIONS
from .factories import NOW, reading

ABOVE = math.nextafter(MAX_MAGNITUDE, math.inf)  # the smallest value past the bound

# Every float column of the raw tables: each has a CHECK constraint of migration 0009.
BOUNDED_COLUMNS = {
    "sensor_data": ["metric_value"],
    "milk_production_realtime": ["yield_kg", "flow_rate_kg_min", "conductivity_ms", "temperature_c",
                                 "fat_percent", "protein_percent", "lactose_percent", "mastitis_risk_score"],
    "rfid_events": ["rssi"],
}


# --- validation -------------------------------------------------------------------------------------


def _validate(*readings: dict, registry: Registry | None = None):
    body = json.dumps({"readings": [{"device_uid": "W-1", "device_type": "probe", "farm_id": 1,
                                     "metric_name": "weird", "timestamp": NOW.isoformat(), **r}
                                    for r in readings]}).encode()
    items, errors = decode_batch(body)
    assert errors == []
    return validate_readings(items, Context(registry or Registry(), now=NOW))


def test_the_1e300_and_0_pair_is_refused_naming_metric_value() -> None:
    out = _validate({"metric_value": 1e300}, {"metric_value": 0})
    assert out.indexes == [1] and out.rows[0][SENSOR_DATA.index("metric_value")] == 0
    assert [(e.index, e.field) for e in out.errors] == [(0, "metric_value")]
    assert "1e+300" in out.errors[0].reason


def test_an_unranged_metric_is_bounded_on_both_sides_at_max_magnitude() -> None:
    out = _validate(*({"metric_value": v} for v in (MAX_MAGNITUDE, -MAX_MAGNITUDE, ABOVE, -ABOVE, -1e300)))
    assert out.indexes == [0, 1]
    assert [(e.index, e.field) for e in out.errors] == [(2, "metric_value"), (3, "metric_value"), (4, "metric_value")]


def test_the_bound_applies_to_the_calibrated_value() -> None:
    registry = Registry(devices={"W-1": Device(1, "probe", None, None, 1e6, 0.0)})
    out = _validate({"metric_value": 999.0}, {"metric_value": 1001.0}, registry=registry)
    assert out.indexes == [0]
    assert [(e.index, e.field) for e in out.errors] == [(1, "metric_value")]


def _numeric_fields(struct: type[msgspec.Struct]) -> dict[str, tuple[bool, float | None, float | None]]:
    """(is float, low, high) of every int/float field of a struct, from its msgspec constraints."""
    found = {}
    for f in msgspec.inspect.type_info(struct).fields:
        kinds = f.type.types if isinstance(f.type, msgspec.inspect.UnionType) else (f.type,)
        if any(isinstance(kind, msgspec.inspect.DateTimeType) for kind in kinds):
            continue  # a time, as a date or epoch seconds: checked against the accepted window
        for kind in kinds:
            if isinstance(kind, msgspec.inspect.IntType | msgspec.inspect.FloatType):
                low = kind.ge if kind.ge is not None else kind.gt
                high = kind.le if kind.le is not None else kind.lt
                found[f.name] = (isinstance(kind, msgspec.inspect.FloatType), low, high)
    return found


@pytest.mark.parametrize("struct", [MilkSession, RfidRead])
def test_every_number_of_milk_sessions_and_rfid_reads_is_ranged_within_the_bound(struct) -> None:
    """Floats (the float8 columns rollups aggregate) within MAX_MAGNITUDE; integers (ids, counts:
    avg of integers is numeric in PostgreSQL, it cannot overflow) ranged."""
    fields = _numeric_fields(struct)
    assert any(is_float for is_float, _, _ in fields.values()), struct
    for name, (is_float, low, high) in fields.items():
        if struct is MilkSession and name in MILK_RANGES:  # checked by validate_milk
            low, high = MILK_RANGES[name].low, MILK_RANGES[name].high
        assert low is not None and high is not None, f"{struct.__name__}.{name} is not ranged"
        if is_float:
            assert -MAX_MAGNITUDE <= low <= high <= MAX_MAGNITUDE, f"{struct.__name__}.{name}"


def test_every_metric_range_lies_within_the_bound() -> None:
    for name, spec in {**METRICS, **MILK_RANGES}.items():
        assert -MAX_MAGNITUDE <= spec.low <= spec.high <= MAX_MAGNITUDE, name
    # The bound keeps a rollup's sums finite: a billion squares of it.
    assert math.isfinite(1e9 * MAX_MAGNITUDE ** 2)


# --- the database ------------------------------------------------------------------------------------


# (columns, values) of a one-row INSERT that leaves one float column free: $1 time, $2 a unique id.
_REQUIRED = {
    "sensor_data": ("time, device_uid, device_type, farm_id, metric_name", "$1, $2, 'probe', 1, 'weird'"),
    "milk_production_realtime": ("time, milk_meter_id, farm_id, session_id", "$1, 'M-1', 1, $2"),
    "rfid_events": ("time, reader_id, tag_epc, farm_id", "$1, 'R-1', $2, 1"),
}


def _insert_sql(table: str, column: str) -> str:
    """INSERT of one row with `column` = $3 (names from the fixed tables above, values as parameters)."""
    columns, values = _REQUIRED[table]
    if table == "milk_production_realtime" and column != "yield_kg":
        columns, values = columns + ", yield_kg", values + ", 10"
    return f"INSERT INTO iot.{table} ({columns}, {column}) VALUES ({values}, $3)"  # noqa: S608


async def test_the_database_enforces_the_same_bound_on_every_float_column(db: str, profile: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        n = 0
        for table, cols in BOUNDED_COLUMNS.items():
            for column in cols:
                sql = _insert_sql(table, column)
                for value in (MAX_MAGNITUDE, -MAX_MAGNITUDE, 0.0):
                    n += 1
                    await conn.execute(sql, NOW - timedelta(seconds=n), f"AB{n:08d}", value)
                for value in (ABOVE, -ABOVE, 1e300, -1e300, math.nan, math.inf, -math.inf):
                    n += 1
                    with pytest.raises(asyncpg.CheckViolationError, match=f"{column}_bounded"):
                        await conn.execute(sql, NOW - timedelta(seconds=n), f"AB{n:08d}", value)
        assert await conn.fetchval("SELECT count(*) FROM iot.sensor_data WHERE metric_name = 'weird'") == 3
    finally:
        await conn.close()


def _milk_row(session: str, yield_kg: float, **columns: object) -> tuple:
    values = {"time": NOW, "milk_meter_id": "M-1", "farm_id": 1, "session_id": session, "yield_kg": yield_kg,
              "blood_detected": False, "metadata": "{}", **columns}
    return tuple(values.get(c) for c in MILK_PRODUCTION.columns)


def _rfid_row(tag: str, rssi: float) -> tuple:
    values = {"time": NOW, "reader_id": "R-1", "tag_epc": tag, "farm_id": 1, "rssi": rssi, "read_count": 1}
    return tuple(values.get(c) for c in RFID_EVENTS.columns)


@pytest.mark.parametrize(("table", "rows"), [
    (SENSOR_DATA, [reading("W-1", "weird", v, NOW - timedelta(seconds=i))
                   for i, v in enumerate([1.0, 1e300, math.nan, 2.0])]),
    (MILK_PRODUCTION, [_milk_row(f"S{i}", v) for i, v in enumerate([10.0, math.inf, -1e300, 12.0])]),
    (RFID_EVENTS, [_rfid_row(f"ABCDEF0{i}", v) for i, v in enumerate([-50.0, math.nan, 1e12, -60.0])]),
], ids=["sensor_data", "milk", "rfid"])
async def test_the_writer_dead_letters_a_row_beyond_the_bound_and_stores_its_batch(
        pool: asyncpg.Pool, profile: str, table, rows: list[tuple]) -> None:
    writer = Writer(pool, table, batch_rows=100, batch_delay=0.001)
    try:
        result = await writer.write(rows, channel="http", source="/test")
    finally:
        await writer.close()
    assert result.stored == 2 and [i for i, _ in result.rejected] == [1, 2]
    assert all("_bounded" in reason for _, reason in result.rejected)
    assert await pool.fetchval(f"SELECT count(*) FROM iot.{table.name}") == 2  # noqa: S608 (fixed table name)
    letters = await pool.fetch("SELECT channel, errors FROM iot.dead_letters ORDER BY id")
    assert [r["channel"] for r in letters] == ["http", "http"]
    assert all("_bounded" in r["errors"] for r in letters)


# --- rollups ------------------------------------------------------------------------------------------


async def _materialized(conn: asyncpg.Connection, profile: str, view: str) -> str:
    """The table holding a rollup's materialized buckets (names from the catalog, not from input)."""
    if profile == "postgres":
        return f"iot.{view}_mat"
    return await conn.fetchval(
        """SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name)
           FROM timescaledb_information.continuous_aggregates WHERE view_schema = 'iot' AND view_name = $1""", view)


async def _buckets(conn: asyncpg.Connection, table: str, device: str) -> dict[datetime, float]:
    rows = await conn.fetch(f"SELECT bucket, avg_value FROM {table} WHERE device_uid = $1", device)  # noqa: S608
    return {r["bucket"]: r["avg_value"] for r in rows}


async def test_a_bucket_that_fails_to_refresh_is_dead_lettered_and_skipped(db: str, profile: str) -> None:
    hour = NOW.replace(minute=0, second=0)
    poisoned = hour - timedelta(hours=49)      # two days back: inside every refresh window
    other_day = hour - timedelta(hours=97)     # another day, another farm
    recent = hour - timedelta(hours=3)         # the other farm keeps sending
    conn = await asyncpg.connect(db)
    try:
        # What an operator's hand could still do: the bound dropped, a pair that overflows stored.
        await conn.execute("ALTER TABLE iot.sensor_data DROP CONSTRAINT sensor_data_metric_value_bounded")
        rows = [reading("POISON", "weird", 1e300, poisoned + timedelta(minutes=1), farm=1),
                reading("POISON", "weird", 0.0, poisoned + timedelta(minutes=2), farm=1),
                reading("OTHER", "weird", 5.0, poisoned + timedelta(minutes=3), farm=2),
                reading("OTHER", "weird", 7.0, other_day + timedelta(minutes=1), farm=2),
                reading("OTHER", "weird", 6.0, recent + timedelta(minutes=1), farm=2)]
        await conn.copy_records_to_table("sensor_data", schema_name="iot", records=rows, columns=SENSOR_DATA.columns)
        state = maintenance.MaintenanceState()
        await maintenance.run_once(conn, state=state)

        table = await _materialized(conn, profile, "sensor_data_hourly")
        other = await _buckets(conn, table, "OTHER")
        assert other.get(other_day) == 7.0 and other.get(recent) == 6.0  # the other farm's buckets: materialized
        if profile == "postgres":  # farm by farm: the other farm's bucket in the poisoned hour too
            assert other.get(poisoned) == 5.0
        assert await _buckets(conn, table, "POISON") == {}
        # The watermark moved past the poisoned bucket: a query of that device answers (no real-time
        # aggregate of the poison), without it.
        assert await conn.fetch("SELECT * FROM iot.sensor_data_hourly WHERE device_uid = 'POISON'") == []

        letters = await conn.fetch("SELECT payload, errors FROM iot.dead_letters "
                                   "WHERE channel = 'maintenance' AND topic_or_path = 'rollup:sensor_data_hourly'")
        assert letters, "the failing bucket was not dead-lettered"
        for letter in letters:
            payload, errors = json.loads(letter["payload"]), json.loads(letter["errors"])
            assert payload["rollup"] == "sensor_data_hourly"
            start, end = (datetime.fromisoformat(payload[k]) for k in ("bucket_start", "bucket_end"))
            assert start <= poisoned < end
            assert errors[0]["sqlstate"] == "22003" and "overflow" in errors[0]["error"]
        if profile == "postgres":
            assert [json.loads(r["payload"])["farm_id"] for r in letters] == [1]

        # Late data of the other farm, in a bucket already materialized, still reaches the rollup.
        late = reading("OTHER", "weird", 9.0, other_day + timedelta(minutes=2), farm=2)
        await conn.copy_records_to_table("sensor_data", schema_name="iot", records=[late], columns=SENSOR_DATA.columns)
        await maintenance.run_once(conn, state=state)
        assert (await _buckets(conn, table, "OTHER")).get(other_day) == 8.0
        # The skipped bucket is reported once, not on every pass.
        assert await conn.fetchval("SELECT count(*) FROM iot.dead_letters WHERE topic_or_path = "
                                   "'rollup:sensor_data_hourly'") == len(letters)
    finally:
        await conn.close()


# --- the migration ------------------------------------------------------------------------------------


def copy_migrations(dest: Path, *, upto: int) -> None:
    """Copy the migrations of versions up to `upto` into `dest`, to migrate a database step by step."""
    for path in MIGRATIONS.glob("*.sql"):
        if int(path.name[:4]) <= upto:
            shutil.copy(path, dest / path.name)


async def test_the_migration_moves_stored_poison_to_dead_letters(empty_db: str, profile: str, tmp_path: Path) -> None:
    copy_migrations(tmp_path, upto=8)
    await storage.migrate(empty_db, tmp_path, profile)
    old = NOW - timedelta(days=10)
    conn = await asyncpg.connect(empty_db)
    try:
        sensor = [reading("P-1", "weird", v, old + timedelta(seconds=i)) for i, v in enumerate([1e300, 0.0, math.nan])]
        sensor += [reading("P-1", "weird", v, NOW - timedelta(seconds=i)) for i, v in enumerate([-math.inf, 3.0])]
        await conn.copy_records_to_table("sensor_data", schema_name="iot", records=sensor, columns=SENSOR_DATA.columns)
        milk = [_milk_row("S1", math.nan, fat_percent=1e300), _milk_row("S2", 11.0, fat_percent=4.0)]
        await conn.copy_records_to_table("milk_production_realtime", schema_name="iot", records=milk,
                                         columns=MILK_PRODUCTION.columns)
        rfid = [_rfid_row("ABCDEF01", -1e10), _rfid_row("ABCDEF02", -40.0)]
        await conn.copy_records_to_table("rfid_events", schema_name="iot", records=rfid, columns=RFID_EVENTS.columns)
        if profile == "timescale":  # poison inside a compressed chunk too
            compressed = await conn.fetchval(
                "SELECT count(compress_chunk(c)) FROM show_chunks('iot.sensor_data', older_than => $1::timestamptz) c",
                old + timedelta(days=1))
            assert compressed >= 1
    finally:
        await conn.close()

    copy_migrations(tmp_path, upto=9)
    result = await storage.migrate(empty_db, tmp_path)
    assert [a.split("_")[0] for a in result.applied] == ["0009"]

    conn = await asyncpg.connect(empty_db)
    try:
        assert [r["metric_value"] for r in await conn.fetch("SELECT metric_value FROM iot.sensor_data ORDER BY time")] \
            == [0.0, 3.0]
        assert await conn.fetchval("SELECT array_agg(session_id) FROM iot.milk_production_realtime") == ["S2"]
        assert await conn.fetchval("SELECT array_agg(tag_epc) FROM iot.rfid_events") == ["ABCDEF02"]
        letters = await conn.fetch("SELECT topic_or_path, payload, errors FROM iot.dead_letters "
                                   "WHERE channel = 'migration' ORDER BY id")
        moved = sorted(
            (r["topic_or_path"], str(p.get("metric_value", p.get("rssi", p.get("session_id")))),
             tuple(e["field"] for e in json.loads(r["errors"])))
            for r in letters for p in [json.loads(r["payload"])])
        assert moved == sorted([
            ("iot.sensor_data", "1e+300", ("metric_value",)),
            ("iot.sensor_data", "NaN", ("metric_value",)),
            ("iot.sensor_data", "-Infinity", ("metric_value",)),
            ("iot.milk_production_realtime", "S1", ("yield_kg", "fat_percent")),
            ("iot.rfid_events", "-10000000000", ("rssi",)),
        ])
        names = {r["conname"] for r in await conn.fetch(
            "SELECT conname FROM pg_constraint WHERE conrelid = ANY($1::regclass[]) AND contype = 'c'",
            [f"iot.{t}" for t in BOUNDED_COLUMNS])}
        prefix = {"sensor_data": "sensor_data", "milk_production_realtime": "milk_production",
                  "rfid_events": "rfid_events"}
        assert {f"{prefix[t]}_{c}_bounded" for t, cols in BOUNDED_COLUMNS.items() for c in cols} <= names
        # The constraint holds in old (on timescale: compressed) chunks as in new ones.
        for at in (old + timedelta(seconds=30), NOW + timedelta(seconds=1)):
            with pytest.raises(asyncpg.CheckViolationError, match="sensor_data_metric_value_bounded"):
                await conn.execute("INSERT INTO iot.sensor_data (time, device_uid, device_type, farm_id, metric_name, "
                                   "metric_value) VALUES ($1, 'P-2', 'probe', 1, 'weird', 1e300)", at)
    finally:
        await conn.close()
