"""The HTTP API through real HTTP against the real PostgreSQL: every endpoint and error code."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest

from ingestor import maintenance

from .conftest import Api

NOW = datetime.now(UTC).replace(microsecond=0)


def reading(i: int = 0, **fields: object) -> dict:
    return {"device_uid": f"ENV-{i % 5}", "device_type": "env_sensor", "farm_id": 1, "metric_name": "temperature_c",
            "metric_value": 20.0 + i % 10, "timestamp": (NOW - timedelta(seconds=i)).isoformat(), **fields}


async def stored(api: Api, sql: str = "SELECT count(*) FROM iot.sensor_data", *args: object) -> int:
    return await api.pipeline.pool.fetchval(sql, *args)


async def test_single_reading_is_committed_before_202_and_stored_once(api: Api) -> None:
    async with api.client() as c:
        for _ in range(2):
            r = await c.post("/api/v1/ingest/sensor", json=reading())
            assert r.status_code == 202 and r.json() == {"status": "accepted", "accepted": 1}
            assert await stored(api) == 1  # committed before the answer, and a re-send is a no-op


async def test_invalid_single_reading_is_422_naming_the_field_and_dead_lettered(api: Api) -> None:
    async with api.client() as c:
        r = await c.post("/api/v1/ingest/sensor", json=reading(metric_value="hot"))
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "metric_value"
        r = await c.post("/api/v1/ingest/sensor", json=reading(metric_value=75.0))
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "metric_value"
        assert "outside" in r.json()["detail"]
        r = await c.post("/api/v1/ingest/sensor", json={k: v for k, v in reading().items() if k != "farm_id"})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "farm_id"
    letters = await api.dead_letters()
    assert len(letters) == 3 and all(d["channel"] == "http" for d in letters)
    assert json.loads(letters[1]["payload"])["metric_value"] == 75.0
    assert await stored(api) == 0


async def test_batch_keeps_valid_items_and_reports_each_bad_one(api: Api) -> None:
    items = [reading(i) for i in range(10)]
    items[2]["metric_value"] = 500.0  # out of range
    items[5]["timestamp"] = (NOW + timedelta(hours=1)).isoformat()  # in the future
    items[7] = {"device_uid": "X"}  # missing fields
    async with api.client() as c:
        r = await c.post("/api/v1/ingest/sensor/batch", json={"readings": items})
    body = r.json()
    assert r.status_code == 200 and body["accepted"] == 7 and body["rejected"] == 3
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(2, "metric_value"), (5, "timestamp"),
                                                                   (7, "device_type")]
    assert await stored(api) == 7
    letters = await api.dead_letters()
    assert len(letters) == 1  # one letter for the request, listing its bad items
    assert [e["index"] for e in json.loads(letters[0]["errors"])] == [2, 5, 7]
    assert json.loads(letters[0]["payload"]) == {"readings": items}  # the request, kept as sent
    sent = letters[0]["payload"].encode()
    assert letters[0]["payload_bytes"] == len(sent) and letters[0]["payload_sha256"] == hashlib.sha256(sent).hexdigest()
    assert letters[0]["farm_id"] == 1


async def test_resent_batch_is_stored_once_and_units_converted(api: Api) -> None:
    items = [reading(i, metric_value=68.0 + i % 10, metric_unit="degF") for i in range(100)]
    async with api.client() as c:
        for _ in range(2):
            r = await c.post("/api/v1/ingest/sensor/batch", json={"readings": items})
            assert r.status_code == 200 and r.json()["accepted"] == 100
    assert await stored(api) == 100
    row = await api.pipeline.pool.fetchrow(
        "SELECT metric_value, metric_unit, metadata FROM iot.sensor_data WHERE device_uid = 'ENV-0' ORDER BY time DESC "
        "LIMIT 1")
    assert row["metric_unit"] == "degC" and abs(row["metric_value"] - 20.0) < 1e-9
    assert json.loads(row["metadata"])["original_unit"] == "degF"


async def test_batch_limits(api: Api) -> None:
    async with api.client() as c:
        r = await c.post("/api/v1/ingest/sensor/batch", json={"readings": [reading(0)] * 10_001})
        assert r.status_code == 413 and "10000" in r.json()["detail"].replace(",", "")
        r = await c.post("/api/v1/ingest/sensor/batch", json={"readings": "all of them"})
        assert r.status_code == 422


async def test_keys_are_scoped_to_farms_and_to_read_or_write(api: Api) -> None:
    async with api.client(None) as c:
        r = await c.post("/api/v1/ingest/sensor", json=reading())
        assert r.status_code == 401
    async with api.client("sdk_00000000_not-a-real-key") as c:
        assert (await c.post("/api/v1/ingest/sensor", json=reading())).status_code == 401
    async with api.client(api.farm2_key) as c:
        assert (await c.post("/api/v1/ingest/sensor", json=reading())).status_code == 403
        r = await c.post("/api/v1/ingest/sensor/batch", json={"readings": [reading(0, farm_id=2), reading(1)]})
        assert r.status_code == 403
        assert (await c.post("/api/v1/ingest/sensor", json=reading(farm_id=2, device_uid="F2"))).status_code == 202
    async with api.client(api.read_only_key) as c:
        assert (await c.post("/api/v1/ingest/sensor", json=reading())).status_code == 403
        assert (await c.get("/api/v1/query/sensor/latest/F2")).status_code == 404  # farm 2's: as if unknown
    async with api.client() as c:
        assert (await c.post("/api/v1/ingest/sensor", json=reading())).status_code == 202
        assert (await c.get("/api/v1/query/sensor/latest/ENV-0")).status_code == 200
    async with api.client(api.farm2_key) as c:
        assert (await c.get("/api/v1/query/sensor/latest/ENV-0")).status_code == 404
    # a key's farms changed in place (as Odoo's push does): the registry sees it at its next refresh
    # (or at once, on the change's notification)
    await api.pipeline.pool.execute("UPDATE iot.api_keys SET farm_ids = '{1,2}' WHERE farm_ids = '{2}'")
    async with api.pipeline.pool.acquire() as conn:
        await api.pipeline.registry.refresh(conn)
    async with api.client(api.farm2_key) as c:
        assert (await c.get("/api/v1/query/sensor/latest/ENV-0")).status_code == 200
    await api.pipeline.pool.execute("UPDATE iot.api_keys SET revoked_at = now()")
    async with api.pipeline.pool.acquire() as conn:
        await api.pipeline.registry.refresh(conn)
    async with api.client() as c:
        assert (await c.post("/api/v1/ingest/sensor", json=reading())).status_code == 401
    assert await stored(api, "SELECT count(*) FROM iot.sensor_data WHERE farm_id = 2") == 1
    # every refused write of a known key left a dead letter: 403 x3 (farm 2 key x2, read-only); the
    # three 401s (no key, a made-up key, a revoked key) are counted, never stored
    assert len(await api.dead_letters()) == 3
    assert api.pipeline.metrics.input_not_stored.labels(channel="http", reason="unauthenticated")._value.get() == 3


async def test_transport_errors(api: Api) -> None:
    async with api.client() as c:
        as_json = {"Content-Type": "application/json"}
        r = await c.post("/api/v1/ingest/sensor", content=b"\xff\xfe garbage", headers=as_json)
        assert r.status_code == 400
        r = await c.post("/api/v1/ingest/sensor", content=json.dumps(reading()),
                         headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
        r = await c.post("/api/v1/ingest/sensor", content=b"[" * 50_000 + b"]" * 50_000,
                         headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 422)
    assert len(await api.dead_letters()) == 3


@pytest.mark.api_settings(max_body_bytes=4096)
async def test_a_body_over_the_limit_is_refused_before_it_is_read(api: Api) -> None:
    big = msgspec.json.encode({"readings": [reading(i) for i in range(200)]})
    async with api.client() as c:
        r = await c.post("/api/v1/ingest/sensor/batch", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413

        async def chunks():  # no Content-Length: the limit is enforced while reading
            for i in range(0, len(big), 1000):
                yield big[i:i + 1000]

        r = await c.post("/api/v1/ingest/sensor/batch", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
    assert len(await api.dead_letters()) == 2


@pytest.mark.api_settings(batch_rows=10, max_pending_rows=10, admit_timeout=0.3)
async def test_overload_gives_503_with_retry_after_and_nothing_is_lost(api: Api) -> None:
    blocker = await asyncpg.connect(api.dsn)
    try:
        await blocker.execute("BEGIN; LOCK TABLE iot.sensor_data IN ACCESS EXCLUSIVE MODE")
        async with api.client() as c:
            first = asyncio.create_task(c.post("/api/v1/ingest/sensor/batch",
                                               json={"readings": [reading(i) for i in range(10)]}))
            while api.pipeline.pending_rows < 10:  # the first batch is admitted and stuck behind the lock
                await asyncio.sleep(0.01)
            second = await c.post("/api/v1/ingest/sensor/batch", json={"readings": [reading(i) for i in range(10, 20)]})
            assert second.status_code == 503 and second.headers["Retry-After"]
            await blocker.execute("COMMIT")
            assert (await first).status_code == 200
    finally:
        await blocker.close()
    assert await stored(api) == 10


@pytest.mark.api_settings(max_inflight_bytes=1 << 20)
async def test_bodies_beyond_the_inflight_budget_get_503(api: Api) -> None:
    big = msgspec.json.encode({"readings": [reading(i) for i in range(8000)]})
    assert len(big) > 1 << 20
    async with api.client() as c:
        r = await c.post("/api/v1/ingest/sensor/batch", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 503 and r.headers["Retry-After"]


async def test_milk_production_and_telemetry(api: Api) -> None:
    await api.pipeline.pool.execute("INSERT INTO iot.animals (id, farm_id, code) VALUES (42, 1, 'COW-42')")
    async with api.pipeline.pool.acquire() as conn:
        await api.pipeline.registry.refresh(conn)
    session = {"milk_meter_id": "MM-1", "farm_id": 1, "session_id": "S-1", "animal_id": "COW-42", "yield_kg": 14.5,
               "conductivity_ms": 4.4, "session_end": NOW.isoformat()}
    async with api.client() as c:
        assert (await c.post("/api/v1/ingest/milk-production", json=session)).status_code == 202
        assert (await c.post("/api/v1/ingest/milk-production", json={**session, "yield_kg": 150})).status_code == 422
        r = await c.post("/api/v1/ingest/telemetry", json={
            "topic": "dairy/farm/1/barn/1/zone/2/sensor/ENV-Z2/telemetry",
            "payload": {"timestamp": NOW.isoformat(), "readings": {"temperature_c": 25.0, "humidity_percent": 140}}})
        assert r.status_code == 200 and r.json()["accepted"] == 1 and r.json()["errors"][0]["field"] == "metric_value"
        r = await c.post("/api/v1/ingest/telemetry", json={
            "topic": "dairy/farm/1/rfid/gate/1/tag/read",
            "payload": {"reader_id": "RFID-1", "tag_epc": "e200341502001080", "animal_id": "COW-42"}})
        assert r.status_code == 200 and r.json()["accepted"] == 1
        r = await c.post("/api/v1/ingest/telemetry", json={"topic": "dairy/farm/1/nowhere", "payload": {}})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "topic"
        r = await c.post("/api/v1/ingest/telemetry", json={"topic": "dairy/farm/2/rfid/gate/1/tag/read",
                                                            "payload": {"reader_id": "R", "tag_epc": "E2003415"}})
        assert r.status_code == 403
    milk = await api.pipeline.pool.fetchrow("SELECT animal_id, yield_kg, time FROM iot.milk_production_realtime")
    assert milk["animal_id"] == 42 and milk["yield_kg"] == 14.5 and milk["time"] == NOW
    assert await stored(api, "SELECT animal_id FROM iot.rfid_events WHERE tag_epc = 'E200341502001080'") == 42
    assert await stored(api, "SELECT zone_id FROM iot.sensor_data WHERE device_uid = 'ENV-Z2'") == 2


async def test_queries(api: Api) -> None:
    items = [reading(0, device_uid="Q-1", metric_name=m, metric_value=v,
                     timestamp=(NOW - timedelta(minutes=k)).isoformat())
             for k in range(120) for m, v in (("temperature_c", 10.0 + k % 3), ("humidity_percent", 50.0))]
    async with api.client() as c:
        assert (await c.post("/api/v1/ingest/sensor/batch", json={"readings": items})).json()["accepted"] == 240
        r = await c.get("/api/v1/query/sensor/latest/Q-1")
        assert r.status_code == 200
        latest = {x["metric_name"]: x for x in r.json()["readings"]}
        assert set(latest) == {"temperature_c", "humidity_percent"}
        assert latest["temperature_c"]["time"] == NOW.isoformat() and latest["temperature_c"]["value"] == 10.0
        assert (await c.get("/api/v1/query/sensor/latest/NOBODY")).status_code == 404
        # Once the device's state is flushed, latest starts from each metric's noted time and still
        # finds rows committed after the flush.
        async with api.pipeline.pool.acquire() as conn:
            await api.pipeline.device_states.flush(conn)
        newer = reading(0, device_uid="Q-1", metric_value=30.0, timestamp=(NOW + timedelta(seconds=1)).isoformat())
        assert (await c.post("/api/v1/ingest/sensor", json=newer)).status_code == 202
        latest = {x["metric_name"]: x for x in (await c.get("/api/v1/query/sensor/latest/Q-1")).json()["readings"]}
        assert latest["temperature_c"]["value"] == 30.0 and latest["humidity_percent"]["value"] == 50.0
        params = {"device_uid": "Q-1", "metric_name": "temperature_c",
                  "start_time": (NOW - timedelta(hours=3)).isoformat(),
                  "end_time": (NOW + timedelta(minutes=1)).isoformat()}
        raw = (await c.get("/api/v1/query/sensor/range", params=params)).json()
        # Rows older than a rollup's watermark (here: two hours of history sent at once) show in the
        # aggregates after the next maintenance pass, as on TimescaleDB after the next refresh.
        async with api.pipeline.pool.acquire() as conn:
            await maintenance.run_once(conn)
        assert raw["aggregation"] == "raw" and len(raw["data"]) == 121
        hourly = (await c.get("/api/v1/query/sensor/range", params={**params, "aggregation": "hourly"})).json()
        assert sum(b["sample_count"] for b in hourly["data"]) == 121
        total = sum(b["value"] * b["sample_count"] for b in hourly["data"])
        assert abs(total - sum(10.0 + k % 3 for k in range(120)) - 30.0) < 1e-6
        weekly = await c.get("/api/v1/query/sensor/range", params={**params, "aggregation": "weekly"})
        assert weekly.status_code == 422
        assert (await c.get("/api/v1/query/sensor/range",
                            params={**params, "end_time": params["start_time"]})).status_code == 422
        assert (await c.get("/api/v1/query/sensor/range", params={"device_uid": "Q-1"})).status_code == 422
        stats = (await c.get("/api/v1/stats/ingestion")).json()
        assert stats["readings_last_24h"] == 241 and stats["storage_profile"] == "postgres"
        assert stats["queue_depth"] == 0


async def test_health_metrics_and_docs(api: Api) -> None:
    async with api.client(None) as c:
        health = (await c.get("/health")).json()
        assert health["database"]["ok"] and health["storage_profile"] == "postgres"
        assert health["broker"]["ok"] and {"queue_depth", "writer_lag_seconds"} <= set(health)
        async with api.client() as k:
            await k.post("/api/v1/ingest/sensor/batch", json={"readings": [reading(1), reading(2, metric_value=-99)]})
        text = (await c.get("/metrics")).text
        assert 'smart_dairy_items_accepted_total{channel="http",table="sensor_data"} 1.0' in text
        assert 'smart_dairy_items_rejected_total{channel="http",reason="metric_value"} 1.0' in text
        assert "smart_dairy_commit_seconds_bucket" in text and "smart_dairy_pending_rows" in text
        spec = (await c.get("/openapi.json")).json()
        assert spec["components"]["schemas"]["Reading"]["required"] == [
            "device_uid", "device_type", "farm_id", "metric_name", "metric_value"]
        assert (await c.get("/docs")).status_code == 200
