"""Migrations: empty database, twice, concurrently; the contract's tables and columns on both profiles."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from ingestor import storage

from .conftest import MIGRATIONS

CONTRACT_COLUMNS = {
    "sensor_data": ["time", "device_uid", "device_type", "farm_id", "metric_name", "metric_value", "metric_unit",
                    "data_quality", "is_interpolated", "animal_id", "zone_id", "session_id", "battery_level",
                    "signal_strength", "metadata"],
    "milk_production_realtime": ["time", "milk_meter_id", "animal_id", "farm_id", "session_id", "yield_kg",
                                 "duration_seconds", "flow_rate_kg_min", "conductivity_ms", "temperature_c",
                                 "blood_detected", "fat_percent", "protein_percent", "lactose_percent",
                                 "somatic_cell_count", "mastitis_risk_score", "session_start", "session_end",
                                 "milking_type", "meter_status"],
    "rfid_events": ["time", "reader_id", "antenna_id", "tag_epc", "animal_id", "farm_id", "rssi", "direction",
                    "read_count"],
    "alerts": ["time", "alert_id", "rule_code", "farm_id", "severity", "category", "source_type", "source_id",
               "animal_id", "zone_id", "message", "details", "status"],
    "dead_letters": ["received_at", "channel", "topic_or_path", "payload", "errors"],
    "devices": ["device_uid", "farm_id", "device_type", "animal_id", "zone_id", "calibration_offset",
                "calibration_gain", "status"],
    "animals": ["id", "farm_id", "code"],
    "zones": ["id", "farm_id"],
    "alert_rules": ["code", "farm_id", "severity", "category", "conditions", "duration_s", "suppression_s",
                    "max_per_hour"],
    "api_keys": ["key_hash", "farm_ids", "scopes"],
    "sensor_data_15min": ["bucket", "device_uid", "device_type", "farm_id", "metric_name", "avg_value",
                          "min_value", "max_value", "stddev_value", "sample_count"],
    "sensor_data_hourly": ["bucket", "device_uid", "device_type", "farm_id", "metric_name", "avg_value",
                           "min_value", "max_value", "stddev_value", "sample_count", "median_value", "p95_value",
                           "valid_count"],
    "sensor_data_daily": ["bucket", "device_uid", "device_type", "farm_id", "metric_name", "avg_value",
                          "min_value", "max_value", "stddev_value", "sample_count", "median_value", "error_count"],
    "milk_production_daily": ["bucket", "animal_id", "farm_id", "total_yield_kg", "avg_yield_per_session",
                              "milking_count", "avg_conductivity", "avg_scc", "max_mastitis_risk", "avg_fat",
                              "avg_protein"],
    "device_current_status": ["device_uid", "device_type", "farm_id", "last_seen", "battery_level",
                              "signal_strength", "status"],
}


async def columns(conn: asyncpg.Connection) -> dict[str, list[str]]:
    rows = await conn.fetch("""SELECT table_name, column_name, data_type FROM information_schema.columns
                               WHERE table_schema = 'iot' ORDER BY table_name, ordinal_position""")
    result: dict[str, list[str]] = {}
    for r in rows:
        result.setdefault(r["table_name"], []).append(r["column_name"])
    return result


async def test_empty_database_twice(empty_db: str, profile: str) -> None:
    first = await storage.migrate(empty_db, MIGRATIONS, profile)
    assert first.profile == profile
    versions = [f"{m.version:04d}" for m in storage.load_migrations(MIGRATIONS, profile)]
    assert versions[:6] == ["0001", "0002", "0003", "0004", "0005", "0006"]
    assert [a.split("_")[0] for a in first.applied] == versions
    second = await storage.migrate(empty_db, MIGRATIONS)
    assert second.applied == [] and second.profile == profile
    conn = await asyncpg.connect(empty_db)
    try:
        found = await columns(conn)
        for table, expected in CONTRACT_COLUMNS.items():
            assert table in found, f"iot.{table} missing"
            assert set(expected) <= set(found[table]), f"iot.{table} lacks {set(expected) - set(found[table])}"
        assert await storage.stored_profile(conn) == profile
        assert await conn.fetchval("SELECT count(*) FROM iot.schema_migrations") == len(versions)
    finally:
        await conn.close()


async def test_concurrent_migrations_apply_once(empty_db: str) -> None:
    results = await asyncio.gather(*(storage.migrate(empty_db, MIGRATIONS, "postgres") for _ in range(4)))
    applied = [r.applied for r in results]
    total = len(storage.load_migrations(MIGRATIONS, "postgres"))
    assert sorted(len(a) for a in applied) == [0, 0, 0, total]
    conn = await asyncpg.connect(empty_db)
    try:
        assert await conn.fetchval("SELECT count(*) FROM iot.schema_migrations") == total
    finally:
        await conn.close()


async def test_same_columns_on_both_profiles(empty_db: str, timescale_available: bool) -> None:
    if not timescale_available:
        pytest.skip("TimescaleDB is not installed on this PostgreSQL server: the timescale profile was NOT tested")
    other = empty_db + "_ts"
    try:
        await storage.migrate(empty_db, MIGRATIONS, "postgres")
        await storage.migrate(other, MIGRATIONS, "timescale")
        a, b = await asyncpg.connect(empty_db), await asyncpg.connect(other)
        try:
            pg, ts = await columns(a), await columns(b)
        finally:
            await a.close()
            await b.close()
        for name in CONTRACT_COLUMNS:
            assert pg[name] == ts[name], name
    finally:
        from .conftest import drop_database
        await drop_database(other.rpartition("/")[2])


async def test_changed_migration_is_refused(empty_db: str, tmp_path) -> None:
    for f in MIGRATIONS.glob("*.sql"):
        (tmp_path / f.name).write_text(f.read_text())
    await storage.migrate(empty_db, tmp_path, "postgres")
    first = sorted(tmp_path.glob("0001_*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(storage.MigrationError, match="changed after it was applied"):
        await storage.migrate(empty_db, tmp_path)


async def test_profile_cannot_be_switched(db: str) -> None:
    with pytest.raises(storage.MigrationError, match="already uses the postgres profile"):
        await storage.migrate(db, MIGRATIONS, "timescale")


def test_migration_files_pair_by_version() -> None:
    pg = storage.load_migrations(MIGRATIONS, "postgres")
    ts = storage.load_migrations(MIGRATIONS, "timescale")
    assert [m.version for m in pg] == [m.version for m in ts]
    assert all(".timescale." not in p.name for m in pg for p in m.files)
    assert all(".postgres." not in p.name for m in ts for p in m.files)
