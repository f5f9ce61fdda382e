"""Farm isolation: no identifier a reading, milking or tag read carries lets one farm write, shadow or
read another's data; "not yours" answers as "unknown" does. Two farms' keys against the real server."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from .conftest import Api, Ingest, eventually
from .test_mqtt import publish

NOW = datetime.now(UTC).replace(microsecond=0)
A, B = 1, 2  # the api fixture's farm1 key is A's, farm2_key is B's
B_EPC = "E2000017221101441890AB12"

# Farm B's registry, as Odoo pushes it.
REGISTRY_SQL = f"""
INSERT INTO iot.zones (id, farm_id, name) VALUES (20, {B}, 'B pen');
INSERT INTO iot.animals (id, farm_id, code, rfid_epc) VALUES (200, {B}, 'COW-B', '{B_EPC}');
INSERT INTO iot.devices (device_uid, farm_id, device_type, zone_id) VALUES
    ('B-ENV', {B}, 'env_sensor', 20), ('B-MM', {B}, 'milk_meter', NULL), ('B-RD', {B}, 'rfid_reader', NULL);
"""


def reading(**fields: object) -> dict:
    return {"device_uid": "A-COL", "device_type": "collar", "farm_id": A, "metric_name": "activity_index",
            "metric_value": 40.0, "timestamp": NOW.isoformat(), **fields}


def milk(**fields: object) -> dict:
    return {"milk_meter_id": "A-MM", "farm_id": A, "session_id": "S-1", "yield_kg": 12.0,
            "timestamp": NOW.isoformat(), **fields}


def telemetry(topic: str, payload: dict) -> dict:
    return {"topic": topic, "payload": {"timestamp": NOW.isoformat(), **payload}}


# Farm A's attempts to use farm B's identifiers: (channel, id kind, path, body, field named).
ENV = f"dairy/farm/{A}/barn/1/zone/{{zone}}/sensor/{{sensor}}/telemetry"
RFID = f"dairy/farm/{A}/rfid/gate/1/tag/read"
ATTEMPTS: list[tuple[str, str, str, dict, str]] = [
    ("sensor", "device", "/api/v1/ingest/sensor", reading(device_uid="B-ENV"), "device_uid"),
    ("sensor", "device (unregistered, first sent by B)", "/api/v1/ingest/sensor", reading(device_uid="B-LOOSE"),
     "device_uid"),
    ("sensor", "zone", "/api/v1/ingest/sensor", reading(zone_id=20), "zone_id"),
    ("sensor", "animal id", "/api/v1/ingest/sensor", reading(animal_id=200), "animal_id"),
    ("batch", "device", "/api/v1/ingest/sensor/batch", {"readings": [reading(device_uid="B-ENV")]}, "device_uid"),
    ("batch", "zone", "/api/v1/ingest/sensor/batch", {"readings": [reading(zone_id=20)]}, "zone_id"),
    ("batch", "animal id", "/api/v1/ingest/sensor/batch", {"readings": [reading(animal_id=200)]}, "animal_id"),
    ("milk", "milk meter", "/api/v1/ingest/milk-production", milk(milk_meter_id="B-MM"), "milk_meter_id"),
    ("milk", "animal id", "/api/v1/ingest/milk-production", milk(animal_id=200), "animal_id"),
    ("telemetry", "device", "/api/v1/ingest/telemetry",
     telemetry(ENV.format(zone=1, sensor="B-ENV"), {"readings": {"temperature_c": 20.0}}), "device_uid"),
    ("telemetry", "zone", "/api/v1/ingest/telemetry",
     telemetry(ENV.format(zone=20, sensor="A-ENV"), {"readings": {"temperature_c": 20.0}}), "zone_id"),
    ("telemetry", "reader", "/api/v1/ingest/telemetry",
     telemetry(RFID, {"reader_id": "B-RD", "tag_epc": "AAAA0000"}), "reader_id"),
    ("telemetry", "tag", "/api/v1/ingest/telemetry",
     telemetry(RFID, {"reader_id": "A-RD", "tag_epc": B_EPC.lower()}), "tag_epc"),
    ("telemetry", "milk meter", "/api/v1/ingest/telemetry",
     telemetry(f"dairy/farm/{A}/milking/parlor/1/stall/2/session/end",
               {"session_id": "S-9", "device_id": "B-MM", "milk_data": {"total_volume_liters": 11.0}}),
     "milk_meter_id"),
]


async def registered(api: Api) -> None:
    async with api.pipeline.pool.acquire() as conn:
        await conn.execute(REGISTRY_SQL)
        await api.pipeline.registry.refresh(conn)


async def test_cross_farm_matrix_every_id_kind_through_every_channel_is_refused(api: Api) -> None:
    await registered(api)
    async with api.client(api.farm2_key) as b:  # B's own devices, and an id the registry does not know
        r = await b.post("/api/v1/ingest/sensor/batch", json={"readings": [
            reading(device_uid="B-ENV", farm_id=B, metric_name="temperature_c", metric_value=21.0),
            reading(device_uid="B-LOOSE", farm_id=B, metric_value=7.0)]})
        assert r.json()["accepted"] == 2
    before = await api.pipeline.pool.fetchval("SELECT count(*) FROM iot.sensor_data WHERE farm_id = $1", B)
    refused: Counter[str] = Counter()
    async with api.client() as a:
        for channel, kind, path, body, field in ATTEMPTS:
            r = await a.post(path, json=body)
            answer = r.json()
            errors = answer.get("errors", [])
            assert r.status_code in (200, 422), (channel, kind, r.status_code, answer)
            assert r.status_code == 422 or answer["accepted"] == 0, (channel, kind, answer)
            assert [e["field"] for e in errors] == [field], (channel, kind, errors)
            assert "another farm" in errors[0]["error"] and f"farm {B}" not in errors[0]["error"]
            refused[channel] += 1
        # Reads: B's device is as unknown to A as a device that never existed.
        unknown = await a.get("/api/v1/query/sensor/latest/NO-SUCH-DEVICE")
        for uid in ("B-ENV", "B-LOOSE"):
            r = await a.get(f"/api/v1/query/sensor/latest/{uid}")
            answer = (r.status_code, r.json()["detail"].replace(uid, "?"))
            assert answer == (unknown.status_code, unknown.json()["detail"].replace("NO-SUCH-DEVICE", "?"))
            assert answer == (404, "unknown device '?'")
            for aggregation in ("raw", "hourly"):
                r = await a.get("/api/v1/query/sensor/range", params={
                    "device_uid": uid, "metric_name": "temperature_c", "aggregation": aggregation,
                    "start_time": (NOW - timedelta(days=1)).isoformat(),
                    "end_time": (NOW + timedelta(hours=1)).isoformat()})
                assert r.status_code == 200 and r.json()["data"] == []
            refused["read"] += 1
    after = await api.pipeline.pool.fetchval("SELECT count(*) FROM iot.sensor_data WHERE farm_id = $1", B)
    assert after == before  # nothing of B's was overwritten or shadowed
    assert await api.pipeline.pool.fetchval("SELECT count(*) FROM iot.sensor_data WHERE farm_id = $1", A) == 0
    assert await api.pipeline.pool.fetchval("SELECT count(*) FROM iot.milk_production_realtime") == 0
    assert await api.pipeline.pool.fetchval("SELECT count(*) FROM iot.rfid_events") == 0
    attempted = len(ATTEMPTS) + 2
    print(f"cross-farm matrix: {attempted} attempted, {sum(refused.values())} refused: {dict(refused)}")
    assert sum(refused.values()) == attempted
    # B still reads its own
    async with api.client(api.farm2_key) as b:
        assert (await b.get("/api/v1/query/sensor/latest/B-LOOSE")).status_code == 200


async def test_an_unregistered_device_id_belongs_to_the_first_farm_that_sends_it(api: Api) -> None:
    async with api.client(api.farm2_key) as b, api.client() as a:
        assert (await b.post("/api/v1/ingest/sensor", json=reading(device_uid="SHARED", farm_id=B))).status_code == 202
        r = await a.post("/api/v1/ingest/sensor", json=reading(device_uid="SHARED", metric_value=99.0))
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "device_uid"
        # B's reading is neither overwritten nor taken: B reads it, A does not see it
        latest = (await b.get("/api/v1/query/sensor/latest/SHARED")).json()["readings"]
        assert [x["value"] for x in latest] == [40.0]
        assert (await a.get("/api/v1/query/sensor/latest/SHARED")).status_code == 404
    # the claim is the database's, not one process's memory: a fresh ingestor refuses A too
    api.pipeline.owners.known.clear()
    async with api.client() as a:
        r = await a.post("/api/v1/ingest/sensor", json=reading(device_uid="SHARED", metric_value=99.0))
        assert r.status_code == 422


async def test_two_farms_may_number_their_milking_sessions_alike(api: Api) -> None:
    async with api.client() as a, api.client(api.farm2_key) as b:
        assert (await a.post("/api/v1/ingest/milk-production", json=milk())).status_code == 202
        assert (await b.post("/api/v1/ingest/milk-production",
                             json=milk(farm_id=B, milk_meter_id="B-MM2"))).status_code == 202
    rows = await api.pipeline.pool.fetch("SELECT farm_id, session_id FROM iot.milk_production_realtime ORDER BY 1")
    assert [tuple(r) for r in rows] == [(A, "S-1"), (B, "S-1")]


async def test_cross_farm_matrix_over_mqtt(ingest: Ingest, broker: object) -> None:
    """The same identifiers of farm B in messages published under farm A's topics: each message is
    dead-lettered naming the field, acknowledged, and nothing of it stored."""
    async with ingest.pipeline.pool.acquire() as conn:
        await conn.execute(REGISTRY_SQL)
        await ingest.pipeline.registry.refresh(conn)
    messages = [(t["topic"], json.dumps(t["payload"]).encode()) for channel, _, _, t, _ in ATTEMPTS
                if channel == "telemetry"]
    messages.append((f"dairy/farm/{A}/animal/COW-A/activity/telemetry",
                     json.dumps({"device_id": "B-ENV", "activity_index": 5.0, "timestamp": NOW.isoformat()}).encode()))
    await publish(broker, messages)  # type: ignore[arg-type]
    pool = ingest.pipeline.pool
    await eventually(lambda: ingest.subscriber.status.acknowledged >= len(messages), 30, "messages acknowledged")
    letters = await pool.fetch("SELECT topic_or_path, errors FROM iot.dead_letters")
    fields = sorted(json.loads(d["errors"])[0]["field"] for d in letters)
    print(f"cross-farm matrix over MQTT: {len(messages)} attempted, {len(letters)} refused")
    assert fields == sorted([field for channel, _, _, _, field in ATTEMPTS if channel == "telemetry"] + ["device_uid"])
    for table in ("sensor_data", "milk_production_realtime", "rfid_events"):
        assert await pool.fetchval(f"SELECT count(*) FROM iot.{table}") == 0  # noqa: S608 (fixed names)


# --- revocation -----------------------------------------------------------------------------------


async def _refused_within(api: Api, key: str, seconds: float) -> float:
    """How long after now until `key` gets 401 (fails past `seconds`)."""
    started = time.monotonic()
    async with api.client(key) as c:
        while (await c.get("/api/v1/stats/ingestion")).status_code != 401:
            assert time.monotonic() - started < seconds, f"key still accepted after {seconds} s"
            await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.api_settings(registry_interval=3600.0)  # no polling to fall back on: the notification must do it
async def test_a_revoked_key_is_refused_within_a_second_of_the_commit(api: Api) -> None:
    async with api.client() as c:
        assert (await c.get("/api/v1/stats/ingestion")).status_code == 200
    prefix = api.key.split("_")[1]
    await api.pipeline.pool.execute("UPDATE iot.api_keys SET revoked_at = now() WHERE key_prefix = $1", prefix)
    took = await _refused_within(api, api.key, 1.0)
    print(f"revoked key refused {took * 1000:.0f} ms after the commit")


async def test_a_revocation_committed_after_a_reload_began_is_not_missed(api: Api) -> None:
    """updated_at := now() is the transaction's start: a revocation whose transaction began before a
    registry reload and committed after it looked unchanged to a max(updated_at) fingerprint."""
    conn = await asyncpg.connect(api.dsn)
    try:
        prefix = api.farm2_key.split("_")[1]
        async with conn.transaction():
            await conn.execute("UPDATE iot.api_keys SET revoked_at = now() WHERE key_prefix = $1", prefix)
            async with api.pipeline.pool.acquire() as other:  # a reload in between sees nothing yet
                await api.pipeline.registry.refresh(other)
        await _refused_within(api, api.farm2_key, 5.0)
    finally:
        await conn.close()


# --- dead letters ---------------------------------------------------------------------------------


async def test_a_message_of_6000_bad_items_is_one_bounded_dead_letter(api: Api) -> None:
    body = json.dumps({"readings": [reading(metric_value=5000.0 + i) for i in range(6000)]}).encode()
    async with api.client() as c:
        r = await c.post("/api/v1/ingest/sensor/batch", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["rejected"] == 6000
    letters = await api.dead_letters()
    stored = sum(len(d["payload"]) + len(d["errors"]) for d in letters)
    print(f"6,000-item message of {len(body):,} bytes: {len(letters)} dead letter, {stored:,} bytes stored")
    assert len(letters) == 1 and letters[0]["payload_bytes"] == len(body)
    assert stored < 100_000
    errors = json.loads(letters[0]["errors"])
    assert errors[-1]["error"] == "...and 5900 more errors" and errors[0]["field"] == "metric_value"


async def test_unauthenticated_input_is_never_stored(api: Api) -> None:
    big = json.dumps({"readings": [reading()] * 5000}).encode()
    async with api.client(None) as anonymous, api.client("sdk_00000000_forged") as forged:
        for c in (anonymous, forged):
            for path in ("/api/v1/ingest/sensor", "/api/v1/ingest/sensor/batch", "/api/v1/ingest/telemetry"):
                r = await c.post(path, content=big, headers={"Content-Type": "application/json"})
                assert r.status_code == 401
    assert await api.dead_letters() == []
    assert api.pipeline.metrics.input_not_stored.labels(channel="http", reason="unauthenticated")._value.get() == 6


@pytest.mark.api_settings(dead_letter_bytes_per_farm_hour=200_000)
async def test_a_farm_cannot_fill_the_disk_with_rejections(api: Api) -> None:
    bad = json.dumps({"readings": [reading(metric_value=5000.0)] * 1000}).encode()
    async with api.client() as a, api.client(api.farm2_key) as b:
        for _ in range(20):
            r = await a.post("/api/v1/ingest/sensor/batch", content=bad, headers={"Content-Type": "application/json"})
            assert r.status_code == 200 and r.json()["rejected"] == 1000  # the client is still told
        r = await b.post("/api/v1/ingest/sensor", json=reading(farm_id=B, metric_value=5000.0))
        assert r.status_code == 422
    per_farm = dict(await api.pipeline.pool.fetch(
        "SELECT farm_id, sum(length(payload) + length(errors::text)) FROM iot.dead_letters GROUP BY 1"))
    assert per_farm[A] <= 200_000 and B in per_farm  # A's flood did not use up B's allowance
    dropped = api.pipeline.metrics.input_not_stored.labels(channel="http", reason="farm_hourly_cap")._value.get()
    assert dropped > 0


async def test_concurrent_claims_of_the_same_new_ids_never_deadlock(api: Api) -> None:
    """Batches bringing the same new device ids in different orders claim them at once."""
    for round_ in range(5):
        ids = [f"NEW-{round_}-{i}" for i in range(300)]
        orders = (ids, ids[::-1], ids[150:] + ids[:150])
        bodies = [{"readings": [reading(device_uid=uid) for uid in order]} for order in orders]
        async with api.client() as c:
            answers = await asyncio.gather(*(c.post("/api/v1/ingest/sensor/batch", json=b) for b in bodies))
        assert [r.status_code for r in answers] == [200, 200, 200], [r.text[:200] for r in answers]
        assert all(r.json()["accepted"] == 300 for r in answers)
