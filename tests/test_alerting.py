"""Alert rules judged as readings flow through the real HTTP API and MQTT into the real PostgreSQL:
AND/OR, duration, auto-resolve, suppression, the hourly cap, rules reloaded without a restart,
resolutions written back by Odoo, publication over MQTT, and a restart in the middle of an episode."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import paho.mqtt.client as paho
import pytest

from ingestor import apikeys, maintenance
from ingestor.alerts import alert_id, source_of
from ingestor.config import Settings
from ingestor.loadgen import Broker

from .conftest import FEVERISH, Api, add_feverish_rule, eventually, start_api
from .test_mqtt import publish

FAST = pytest.mark.api_settings(registry_interval=0.1)
NOW = datetime.now(UTC).replace(microsecond=0)
HOT_AND_HUMID = [{"signal": "value", "metric": "temperature_c", "op": ">", "value": 30},
                 {"signal": "value", "metric": "humidity_percent", "op": ">", "value": 80}]


async def add_rule(api: Api, code: str, conditions: list[dict], **fields: object) -> None:
    """Insert a rule as Odoo's push would, and wait until the running ingestor has taken it up."""
    row = {"combine": "and", "duration_s": 0, "suppression_s": 0, "max_per_hour": 100, **fields}
    await api.pipeline.pool.execute(
        "INSERT INTO iot.alert_rules (code, name, category, severity, combine, conditions, duration_s, suppression_s, "
        "max_per_hour) VALUES ($1, $1, 'environment', 'warning', $2, $3, $4, $5, $6)",
        code, row["combine"], json.dumps(conditions), row["duration_s"], row["suppression_s"], row["max_per_hour"])
    await eventually(lambda: any(r.code == code for r in api.pipeline.alerting.rules), 10, f"rule {code} loaded")


def climate(device: str, minutes_ago: float, temperature: float, humidity: float) -> list[dict]:
    at = (NOW - timedelta(minutes=minutes_ago)).isoformat()
    return [{"device_uid": device, "device_type": "env_sensor", "farm_id": 1, "metric_name": name,
             "metric_value": value, "timestamp": at} for name, value in (("temperature_c", temperature),
                                                                        ("humidity_percent", humidity))]


async def send(api: Api, readings: list[dict]) -> None:
    async with api.client() as c:
        r = await c.post("/api/v1/ingest/sensor/batch", json={"readings": readings})
        assert r.status_code == 200 and r.json()["rejected"] == 0, r.text


async def alerts_of(api: Api, rule: str) -> list[asyncpg.Record]:
    return await api.pipeline.pool.fetch("SELECT * FROM iot.alerts WHERE rule_code = $1 ORDER BY time, source_id",
                                         rule)


@FAST
async def test_and_with_duration_raises_once_then_resolves_when_it_clears(api: Api) -> None:
    await add_rule(api, "HOT_AND_HUMID", HOT_AND_HUMID, duration_s=600)
    await send(api, climate("ENV-A", 60, 31, 70))  # hot but dry: AND does not hold
    await send(api, climate("ENV-A", 50, 31, 85))
    await send(api, climate("ENV-A", 45, 32, 86))
    assert await alerts_of(api, "HOT_AND_HUMID") == []  # 5 minutes: not yet for 10
    await send(api, climate("ENV-A", 40, 32, 86))
    await send(api, climate("ENV-A", 35, 33, 87))  # still the same episode: no second alert
    [alert] = await alerts_of(api, "HOT_AND_HUMID")
    assert (alert["time"], alert["source_type"], alert["source_id"], alert["status"]) == (
        NOW - timedelta(minutes=50), "device", "ENV-A", "open")  # the alert dates from when it began
    signals = json.loads(alert["details"])["signals"]
    assert (signals["value:temperature_c"], signals["value:humidity_percent"]) == (32.0, 86.0)
    await send(api, climate("ENV-A", 30, 25, 60))
    [alert] = await alerts_of(api, "HOT_AND_HUMID")
    assert alert["status"] == "resolved" and alert["resolved_at"] == NOW - timedelta(minutes=30)


@FAST
async def test_or_needs_one_condition(api: Api) -> None:
    await add_rule(api, "HOT_OR_HUMID", HOT_AND_HUMID, combine="or")
    await send(api, climate("ENV-B", 20, 25, 60) + climate("ENV-C", 20, 25, 90))
    assert [a["source_id"] for a in await alerts_of(api, "HOT_OR_HUMID")] == ["ENV-C"]


@FAST
async def test_suppression_after_a_resolve_and_the_cap_per_hour(api: Api) -> None:
    await add_rule(api, "SUPPRESSED", HOT_AND_HUMID[:1], suppression_s=3600)
    for minutes_ago, temperature in ((60, 31), (55, 25), (50, 31), (45, 31)):  # hot, cool, hot again: suppressed
        await send(api, climate("ENV-D", minutes_ago, temperature, 50))
    [alert] = await alerts_of(api, "SUPPRESSED")
    assert alert["status"] == "resolved"
    await add_rule(api, "CAPPED", HOT_AND_HUMID[:1], max_per_hour=3)
    await send(api, [r for k in range(8) for r in climate(f"ENV-CAP-{k}", 10, 31, 50)])
    assert len(await alerts_of(api, "CAPPED")) == 3
    assert api.pipeline.alerting.engine.suppressed >= 5


@FAST
async def test_rules_edited_in_the_table_apply_without_a_restart(api: Api) -> None:
    await send(api, climate("ENV-E", 30, 31, 50))
    assert await alerts_of(api, "LATE_RULE") == []
    await add_rule(api, "LATE_RULE", HOT_AND_HUMID[:1])
    await send(api, climate("ENV-E", 25, 31, 50))
    assert len(await alerts_of(api, "LATE_RULE")) == 1
    await api.pipeline.pool.execute("UPDATE iot.alert_rules SET active = false, updated_at = now() "
                                    "WHERE code = 'LATE_RULE'")
    await eventually(lambda: all(r.code != "LATE_RULE" for r in api.pipeline.alerting.rules), 10, "rule dropped")
    await api.pipeline.pool.execute(  # a broken rule is skipped, the others still judged
        "INSERT INTO iot.alert_rules (code, name, category, severity, conditions) VALUES ('BROKEN', 'b', 'x', "
        "'info', '[{\"signal\": \"vibes\", \"op\": \">\", \"value\": 1}]')")
    await add_rule(api, "AFTER_BROKEN", HOT_AND_HUMID[:1])
    await send(api, climate("ENV-F", 20, 31, 50))
    assert len(await alerts_of(api, "AFTER_BROKEN")) == 1 and await alerts_of(api, "LATE_RULE") != []


@FAST
async def test_an_alert_resolved_in_odoo_is_not_raised_again_within_its_suppression(api: Api) -> None:
    await add_rule(api, "ODOO_RESOLVED", HOT_AND_HUMID[:1], suppression_s=3600)
    await send(api, climate("ENV-G", 40, 31, 50))
    [alert] = await alerts_of(api, "ODOO_RESOLVED")
    await api.pipeline.pool.execute("UPDATE iot.alerts SET status = 'resolved', resolved_at = now(), "
                                    "updated_at = now() WHERE alert_id = $1", alert["alert_id"])
    await eventually(lambda: api.pipeline.alerting.engine.open_alert("ODOO_RESOLVED", "device:1:ENV-G") is None, 10,
                     "resolution taken up")
    await send(api, climate("ENV-G", 35, 32, 50))  # still hot, but a person said it is dealt with
    await send(api, climate("ENV-G", 0, 32, 50))
    assert [a["alert_id"] for a in await alerts_of(api, "ODOO_RESOLVED")] == [alert["alert_id"]]


async def test_restart_in_the_middle_of_an_episode_raises_no_duplicate_and_restores_baselines(
        profile: str, db: str) -> None:
    settings = {"registry_interval": 0.1}
    conn = await asyncpg.connect(db)
    try:
        key = await apikeys.create(conn, [1])
        await add_feverish_rule(conn)
    finally:
        await conn.close()
    server, task, url, pipeline = await start_api(db, **settings)
    api = Api(url, pipeline, db, key, "", "")

    def collar(minutes_ago: float, metric: str, value: float) -> dict:
        return {"device_uid": "COL-R", "device_type": "collar", "farm_id": 1, "metric_name": metric,
                "metric_value": value, "timestamp": (NOW - timedelta(minutes=minutes_ago)).isoformat()}

    history = [collar(m, "activity_index", 50.0 + (m % 7)) for m in range(3 * 24 * 60, 180, -30)]
    await send(api, history)
    await send(api, [collar(m, "body_temperature_c", 40.2) for m in (170, 160, 150, 140)])  # fever for 30 min
    [before] = await alerts_of(api, FEVERISH)
    server.should_exit = True
    await task
    conn = await asyncpg.connect(db)
    try:  # what the maintenance loop does within its interval: the history is in the rollups
        await maintenance.run_once(conn)
    finally:
        await conn.close()

    server, task, url, pipeline = await start_api(db, **settings)
    api.url, api.pipeline = url, pipeline
    try:
        series = ("device:1:COL-R", "activity_index")
        assert pipeline.alerting.signals.baselines.get(series) is None  # not read at start: on first use
        await send(api, [collar(m, "body_temperature_c", 40.3) for m in (130, 120)])  # the same episode goes on
        assert [a["alert_id"] for a in await alerts_of(api, FEVERISH)] == [before["alert_id"]]
        base = pipeline.alerting.signals.baselines.get(series)  # read when its device reported again
        assert base is not None and base.settled and base.mean == pytest.approx(53, abs=0.5)
        await send(api, [collar(110, "body_temperature_c", 38.6)])
        [after] = await alerts_of(api, FEVERISH)
        assert after["alert_id"] == before["alert_id"] and after["status"] == "resolved"
        await send(api, [collar(100, "activity_index", 160.0)])  # judged against the restored baseline
        [oestrus_signal] = [v for k, v in pipeline.alerting.signals.current["device:1:COL-R"].items()
                            if k == ("ratio", "activity_index")]
        assert oestrus_signal == pytest.approx(160 / base.mean)
    finally:
        server.should_exit = True
        await task


async def test_alerts_are_published_over_mqtt_as_stored(ingest, broker: Broker) -> None:  # noqa: F811
    received: list[tuple[str, dict]] = []
    subscribed = threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="alert-listener")
    client.on_message = lambda _c, _u, m: received.append((m.topic, json.loads(m.payload)))
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_connect = lambda c, *_: c.subscribe("dairy/farm/+/alert/#", qos=1)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        assert await asyncio.to_thread(subscribed.wait, 10)
        await add_feverish_rule(ingest.pipeline.pool)
        await eventually(lambda: any(r.code == FEVERISH for r in ingest.pipeline.alerting.rules), 10, "rule loaded")
        fever = [("dairy/farm/1/animal/COW-7/activity/telemetry", msgspec.json.encode(
            {"device_id": "COL-7", "temperature_c": 40.4, "timestamp": (NOW - timedelta(minutes=m)).isoformat()}))
            for m in (45, 30, 15)]
        await publish(broker, fever)
        await eventually(lambda: any(t == "dairy/farm/1/alert/critical/health" for t, _ in received), 30,
                         "fever alert published")
        stored = await ingest.pipeline.pool.fetchrow("SELECT * FROM iot.alerts WHERE rule_code = 'FEVERISH'")
        topic, message = next((t, m) for t, m in received if m.get("rule_code") == FEVERISH)
        assert message["alert_id"] == stored["alert_id"] and message["source_id"] == "COL-7"
        assert message["message"] == stored["message"] and message["status"] == "open"
    finally:
        client.loop_stop()
        client.disconnect()


def test_alert_ids_name_their_source() -> None:
    key = alert_id("anomaly", "animal:1:3:eating_minutes", 1_700_000_000.9)  # farm 1's cow 3, a metric
    assert key == "anomaly:animal:1:3:eating_minutes:1700000000.900000"  # a fraction of a second kept
    assert source_of("anomaly", key) == "animal:1:3:eating_minutes"
    assert alert_id("fever", "animal:1:3", 1_700_000_000.0) == "fever:animal:1:3:1700000000"
    assert Settings().alerts_enabled
