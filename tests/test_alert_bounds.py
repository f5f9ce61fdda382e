"""Alert state keyed by farm, exact episodes, and bounded memory (issue 13's invariants 4, 6 and 7):
one farm's readings never touch another farm's episodes; an episode begun at a fraction of a second
still resolves in iot.alerts; a late reading neither ends an episode nor becomes the current value; a
backlog gives the alerts live readings gave; series are capped, evicted when idle, and their
baselines read from the aggregates on first use rather than all at start."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import msgspec
import pytest

from ingestor import alerts, analytics, apikeys
from ingestor.alerts import Alerting, Decisions, Rule
from ingestor.loadgen import peak_rss_mb, running_server
from ingestor.registry import Registry
from ingestor.tables import SENSOR_DATA

from .conftest import FEVERISH, Api, add_feverish_rule, eventually, start_api
from .test_detectors import REGISTRY, START

FAST = pytest.mark.api_settings(registry_interval=0.1)
NOW = datetime.now(UTC).replace(microsecond=0)
HOT = [{"signal": "value", "metric": "temperature_c", "op": ">", "value": 30}]


async def add_rule(api: Api, code: str, conditions: list[dict]) -> None:
    """A rule as Odoo's push stores it (no duration, no suppression), once the ingestor has it."""
    await api.pipeline.pool.execute(
        "INSERT INTO iot.alert_rules (code, name, category, severity, conditions, duration_s, suppression_s, "
        "max_per_hour) VALUES ($1, $1, 'environment', 'warning', $2, 0, 0, 100)", code, json.dumps(conditions))
    await eventually(lambda: any(r.code == code for r in api.pipeline.alerting.rules), 10, f"rule {code} loaded")


def reading(device: str, farm: int, metric: str, value: float, at: datetime, **fields: object) -> dict:
    return {"device_uid": device, "device_type": "collar" if metric == "body_temperature_c" else "env_sensor",
            "farm_id": farm, "metric_name": metric, "metric_value": value, "timestamp": at.isoformat(), **fields}


def ago(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


async def add_feverish(api: Api) -> None:
    await add_feverish_rule(api.pipeline.pool)
    await eventually(lambda: any(r.code == FEVERISH for r in api.pipeline.alerting.rules), 10, "rule loaded")


async def send(api: Api, readings: list[dict], key: str = "default") -> None:
    async with api.client(key) as c:
        r = await c.post("/api/v1/ingest/sensor/batch", json={"readings": readings})
        assert r.status_code == 200 and r.json()["rejected"] == 0, r.text


async def alerts_of(api: Api, rule: str) -> list[asyncpg.Record]:
    return await api.pipeline.pool.fetch("SELECT * FROM iot.alerts WHERE rule_code = $1 ORDER BY farm_id, time", rule)


# --- A: sources keyed by farm ----------------------------------------------------------------------

@FAST
async def test_a_farm_naming_another_farms_unregistered_zone_or_cow_never_touches_its_episodes(
        profile: str, api: Api) -> None:
    await add_rule(api, "HOT_ZONE", HOT)
    await add_feverish(api)
    # Farm 2's barn zone 77 is hot and its cow 555 has a fever (neither id is registered anywhere).
    await send(api, [reading("ENV-F2", 2, "temperature_c", 33, ago(40), zone_id=77)], api.farm2_key)
    await send(api, [reading("COL-F2", 2, "body_temperature_c", 40.4, ago(m), animal_id=555) for m in (60, 45, 30)],
               api.farm2_key)
    [hot] = await alerts_of(api, "HOT_ZONE")
    [fever] = await alerts_of(api, FEVERISH)
    assert (hot["farm_id"], hot["source_id"], fever["farm_id"], fever["source_id"]) == (2, "77", 2, "555")
    # Farm 1 names the same ids: its zone 77 is cool and its cow 555 well, which says nothing of farm 2's.
    await send(api, [reading("ENV-F1", 1, "temperature_c", 20, ago(30), zone_id=77),
                     reading("COL-F1", 1, "body_temperature_c", 38.6, ago(20), animal_id=555)])
    assert [(a["farm_id"], a["status"]) for a in await alerts_of(api, "HOT_ZONE")] == [(2, "open")]
    assert [(a["farm_id"], a["status"]) for a in await alerts_of(api, FEVERISH)] == [(2, "open")]
    # Farm 1's zone 77 turning hot is farm 1's alert, beside farm 2's open one.
    await send(api, [reading("ENV-F1", 1, "temperature_c", 34, ago(20), zone_id=77)])
    rows = await alerts_of(api, "HOT_ZONE")
    assert [(a["farm_id"], a["source_id"], a["status"], a["time"]) for a in rows] == [
        (1, "77", "open", ago(20)), (2, "77", "open", ago(40))]
    assert [a["alert_id"].split(":")[1:4] for a in rows] == [["zone", "1", "77"], ["zone", "2", "77"]]


# --- B: exact episodes -------------------------------------------------------------------------------

@FAST
async def test_an_episode_begun_at_a_fraction_of_a_second_is_resolved_in_the_table(profile: str, api: Api) -> None:
    await add_rule(api, "HOT_FRACTION", HOT)
    began = ago(10) + timedelta(microseconds=250_000)
    await send(api, [reading("ENV-FR", 1, "temperature_c", 33, began)])
    [alert] = await alerts_of(api, "HOT_FRACTION")
    assert (alert["time"], alert["status"]) == (began, "open") and alert["alert_id"].endswith(".250000")
    await send(api, [reading("ENV-FR", 1, "temperature_c", 21, ago(5))])
    [alert] = await alerts_of(api, "HOT_FRACTION")
    assert (alert["time"], alert["status"], alert["resolved_at"]) == (began, "resolved", ago(5))


@FAST
async def test_a_reading_three_hours_late_neither_ends_a_fever_nor_becomes_the_current_value(
        profile: str, api: Api) -> None:
    def temperature(minutes_ago: float, value: float) -> dict:
        return reading("COL-L", 1, "body_temperature_c", value, ago(minutes_ago), animal_id=9)

    await add_feverish(api)
    await send(api, [temperature(m, 40.3) for m in (60, 45, 30)])  # fever for 30 minutes
    [fever] = await alerts_of(api, FEVERISH)
    await send(api, [temperature(180, 38.4)])  # a reading held back 3 hours: stored, not judged
    assert await api.pipeline.pool.fetchval("SELECT count(*) FROM iot.sensor_data WHERE device_uid = 'COL-L'") == 4
    [still] = await alerts_of(api, FEVERISH)
    assert (still["alert_id"], still["status"]) == (fever["alert_id"], "open")
    current = api.pipeline.alerting.signals.current["animal:1:9"]
    assert current[("value", "body_temperature_c")] == 40.3
    await send(api, [temperature(30, 38.5)])  # as old as the newest judged: late too
    assert (await alerts_of(api, FEVERISH))[0]["status"] == "open"
    await send(api, [temperature(15, 38.5)])  # the fever ends when a newer reading says so
    [ended] = await alerts_of(api, FEVERISH)
    assert (ended["alert_id"], ended["status"], ended["resolved_at"]) == (fever["alert_id"], "resolved", ago(15))




def sensor(t: datetime, device: str, animal: int, metric: str, value: float, battery: int, signal: int) -> tuple:
    return (t, device, "collar", 1, metric, value, None, "valid", False, animal, None, None, battery, signal, "{}")


def stream() -> Iterator[list[tuple]]:
    """Eight hours of two collars every 15 minutes, tick by tick. Cow 1: a fever from 2 h to 3 h, a
    weak signal from 1 h to 2 h 30, a flat battery from 4 h, and her collar silent from 4 h 45 to 6 h 30."""
    for k in range(33):
        t, hours = START + timedelta(minutes=15 * k), k / 4
        tick = []
        if not 4.75 < hours < 6.5:
            tick += [sensor(t, "COL-1", 1, "body_temperature_c", 40.3 if 2 <= hours <= 3 else 38.6 + 0.01 * (k % 3),
                            60 if hours < 4 else 18, -105 if 1 <= hours < 2.5 else -70),
                     sensor(t, "COL-1", 1, "activity_index", 50 + k % 5, 60 if hours < 4 else 18,
                            -105 if 1 <= hours < 2.5 else -70)]
        tick += [sensor(t, "COL-2", 2, metric, value, 70, -60)
                 for metric, value in (("body_temperature_c", 38.7 + 0.01 * (k % 4)), ("activity_index", 48 + k % 3))]
        yield tick


def outcome(decisions: list[Decisions]) -> tuple[set, set]:
    raised = {(r[1], r[0]) for d in decisions for r in d.raised}
    resolved = {(r[0], r[1], r[2]) for d in decisions for r in d.resolved}
    return raised, resolved


async def test_a_backlog_replayed_gives_the_alerts_live_readings_gave(profile: str, rules: list[Rule]) -> None:
    feverish = alerts.Condition("value", "body_temperature_c", ">=", 39.5)
    rules = [*rules, Rule(FEVERISH, "health", "critical", (feverish,), duration_s=1800)]
    live, decided = Alerting(rules), []
    for tick in stream():  # as they happen: each reading on its own, silence checked in between
        decided += [live.observe_readings([row], REGISTRY) for row in tick]
        decided.append(live.check_devices(time.time(), REGISTRY))
    expected = outcome(decided)
    backlog, rows = Alerting(rules), [row for tick in stream() for row in tick]
    decided = [backlog.observe_readings(rows[i:i + 50], REGISTRY) for i in range(0, len(rows), 50)]
    decided.append(backlog.check_devices(time.time(), REGISTRY))  # hours later in wall-clock terms
    assert outcome(decided) == expected
    raised, resolved = expected
    assert {a.split(":")[0] for a, _ in raised} == {FEVERISH, "low_battery", "weak_signal", "device_offline"}
    offline = {a: t for a, t in raised if a.startswith("device_offline:")}
    assert offline == {"device_offline:device:1:COL-1:" + str(int((START + timedelta(hours=5.75)).timestamp())):
                       START + timedelta(hours=5.75)}  # began when the 4th interval was missed
    assert {(a, at) for a, _, at in resolved if a in offline} == {(a, START + timedelta(hours=6.5)) for a in offline}


# --- C: bounded state --------------------------------------------------------------------------------

def collar(uid: str, farm: int, animal: int, t: datetime, metric: str = "activity_index", value: float = 50.0) -> tuple:
    return (t, uid, "collar", farm, metric, value, None, "valid", False, animal, None, None, None, None, "{}")


def test_series_and_devices_are_capped_per_farm_and_in_all() -> None:
    fever = Rule("FEVERISH", "health", "critical", (alerts.Condition("value", "temp", ">=", 39.5),),
                 suppression_s=0.0, max_per_hour=1000)
    alerting = Alerting([fever], max_series=10, max_series_per_farm=6)
    farm_1 = [collar(f"A{k}", 1, k, START, "temp", 40.0) for k in range(9)]
    farm_2 = [collar(f"B{k}", 2, k, START, "temp", 40.0) for k in range(9)]
    raised = alerting.observe_readings(farm_1 + farm_2, Registry()).raised
    sizes = alerting.state_size()
    assert sizes["series"] == 10 and sizes["devices"] == 10 and alerting.signals.per_farm == {1: 6, 2: 4}
    assert [r[3] for r in raised].count(1) == 6 and [r[3] for r in raised].count(2) == 4  # tracked ones judged
    assert alerting.signals.untracked == 8  # the 8 readings of devices beyond the caps


def test_idle_series_and_devices_are_forgotten_but_not_an_open_episode() -> None:
    fever = Rule("FEVERISH", "health", "critical", (alerts.Condition("value", "temp", ">=", 39.5),),
                 suppression_s=0.0)
    warm = Rule("WARM_FOR_A_DAY", "health", "info", (alerts.Condition("value", "temp", ">=", 39.0),),
                duration_s=86_400.0)
    alerting = Alerting([fever, warm], idle_half_lives=1.0)  # a half-life of the farm's clock: 3 days
    alerting.observe_readings([collar("IDLE", 1, 1, START), collar("SICK", 1, 2, START, "temp", 40.0),
                               collar("BUSY", 1, 3, START), collar("WARM", 1, 4, START, "temp", 39.2)], Registry())
    alerting.observe_readings([collar("BUSY", 1, 3, START + timedelta(days=2))], Registry())
    alerting.evict()
    assert alerting.state_size()["series"] == 4  # two days idle: kept
    alerting.observe_readings([collar("BUSY", 1, 3, START + timedelta(days=4))], Registry())
    alerting.evict()
    assert set(alerting.signals.baselines._state) == {("animal:1:3", "activity_index")}
    assert set(alerting.signals.current) == {"animal:1:3"}
    # The warm cow's episode, which raised nothing, went with her series; the sick cow's open alert
    # stays (and what it needs): it still resolves when she reports again.
    assert ("WARM_FOR_A_DAY", "animal:1:4") not in alerting.engine.episodes
    assert alerting.engine.open_alert("FEVERISH", "animal:1:2") is not None
    assert set(alerting._subjects) == {"animal:1:2", "device:1:BUSY"}
    back = alerting.observe_readings([collar("SICK", 1, 2, START + timedelta(days=4, hours=1), "temp", 38.6)],
                                     Registry())
    assert [r[2] for r in back.resolved] == [START + timedelta(days=4, hours=1)]
    assert alerting.state_size()["devices"] == 2


HISTORY_ENDS_H = 2  # hours ago: the restored baselines end at the top of an hour, a minute may be all since


async def history(conn: asyncpg.Connection, devices: int, hours: int = 48) -> None:
    """`hours` of hourly readings (two metrics) for `devices` collars of farm 1, the last
    HISTORY_ENDS_H hours ago."""
    rows = [(NOW - timedelta(hours=h + HISTORY_ENDS_H), f"H{d}", "collar", 1, metric, base + (h % 5), None, "valid",
             False,
             10_000 + d, None, None, None, None, "{}")
            for d in range(devices) for h in range(hours)
            for metric, base in (("activity_index", 50.0), ("rumination_minutes", 480.0))]
    await conn.copy_records_to_table("sensor_data", schema_name="iot", records=rows, columns=SENSOR_DATA.columns)


async def test_a_restart_reads_no_baseline_at_start_and_a_device_gets_its_own_on_first_use(profile: str,
                                                                                           db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        await history(conn, 2_000)  # 4,000 series stored
        key = await apikeys.create(conn, [1])
    finally:
        await conn.close()
    server, task, url, pipeline = await start_api(db)
    api = Api(url, pipeline, db, key, "", "")
    try:
        assert len(pipeline.alerting.signals.baselines) == 0  # nothing read at start
        await send(api, [reading("H7", 1, "activity_index", 51.0, ago(0), device_type="collar", animal_id=10_007)])
        base = pipeline.alerting.signals.baselines.get(("animal:1:10007", "activity_index"))
        rumination = pipeline.alerting.signals.baselines.get(("animal:1:10007", "rumination_minutes"))
        assert base is not None and base.settled and base.mean == pytest.approx(52.0, abs=0.1)
        assert rumination is not None and rumination.mean == pytest.approx(482.0, abs=0.1)
        assert len(pipeline.alerting.signals.baselines) == 2  # that cow's series, no other
        current = pipeline.alerting.signals.current["animal:1:10007"]
        # judged against the week in the aggregates: 48 hourly values 50 + (h % 5), mean 50 + 93 / 48
        assert current[("ratio", "activity_index")] == pytest.approx(51.0 / (50 + 93 / 48))
        # and against her same hours of those two days (the 2-hour window the reading falls in)
        hours = [h for h in range(48) if (NOW - timedelta(hours=h + HISTORY_ENDS_H)).hour // 2 == NOW.hour // 2]
        assert len(hours) in (2, 4)
        same_hours = 50 + sum(h % 5 for h in hours) / len(hours)
        average = pipeline.alerting.signals.baselines._state[("animal:1:10007", "activity_index")][analytics._AVG]
        assert current[("hour_ratio", "activity_index")] == pytest.approx(average / same_hours, rel=1e-3)
    finally:
        server.should_exit = True
        await task


async def test_old_and_foreign_alert_ids_in_the_table_do_not_stop_a_restart(profile: str, db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        key = await apikeys.create(conn, [1])
        started = int(ago(60).timestamp())
        for alert_id, kind, ident in (("fever:animal:7:1700000000", "animal", "7"),  # before sources named farms
                                      (f"fever:animal:1:8:{started}", "animal", "8"),
                                      ("imported-from-the-old-system", "animal", "9"),
                                      (f"device_offline:device:1:COL-O10:{started}", "device", "COL-O10")):
            await conn.execute(
                "INSERT INTO iot.alerts (time, alert_id, rule_code, farm_id, severity, category, source_type, "
                "source_id, message) VALUES ($1, $2, $3, 1, 'critical', 'health', $4, $5, 'x')",
                ago(60), alert_id, alert_id.split(":")[0] if kind == "device" else "fever", kind, ident)
    finally:
        await conn.close()
    server, task, url, pipeline = await start_api(db)
    api = Api(url, pipeline, db, key, "", "")
    try:
        await send(api, [reading("COL-O7", 1, "body_temperature_c", 38.6, ago(5), animal_id=7),
                         reading("COL-O8", 1, "body_temperature_c", 38.6, ago(5), animal_id=8),
                         reading("COL-O10", 1, "body_temperature_c", 38.6, ago(5))])  # the device is back
        status = dict(await pipeline.pool.fetch("SELECT alert_id, status FROM iot.alerts"))
        assert status == {"fever:animal:7:1700000000": "resolved", f"fever:animal:1:8:{started}": "resolved",
                          "imported-from-the-old-system": "open",
                          f"device_offline:device:1:COL-O10:{started}": "resolved"}
    finally:
        server.should_exit = True
        await task


FLOOD, FLOOD_BATCH = 600_000, 10_000
CAPS = {"SMART_DAIRY_ALERT_MAX_SERIES": "200000", "SMART_DAIRY_ALERT_MAX_SERIES_PER_FARM": "150000",
        "SMART_DAIRY_MQTT_ENABLED": "false"}


def flood_batch(n: int) -> bytes:
    """10,000 readings, each of a cow no one has seen (a new series), from 1,000 collars of farm 1 or 2."""
    farm, at = 1 + n % 2, ago(30).isoformat()
    return msgspec.json.encode({"readings": [
        {"device_uid": f"FLOOD-{farm}-{k % 1000}", "device_type": "collar", "farm_id": farm,
         "metric_name": "activity_index", "metric_value": float(k % 90), "timestamp": at,
         "animal_id": 1_000_000 + n * FLOOD_BATCH + k} for k in range(FLOOD_BATCH)]})


def metric(text: str, name: str) -> float:
    return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))


async def test_a_flood_of_new_series_keeps_serve_under_500_mb_and_state_within_the_caps(profile: str,
                                                                                            db: str) -> None:
    conn = await asyncpg.connect(db)
    try:
        key = await apikeys.create(conn, [1, 2])
    finally:
        await conn.close()
    batches = list(range(FLOOD // FLOOD_BATCH))
    async with running_server(db, CAPS) as (url, proc), httpx.AsyncClient(
            base_url=url, headers={"X-API-Key": key, "Content-Type": "application/json"}, timeout=60) as client:

        async def post(worker: int) -> None:
            for n in batches[worker::4]:
                r = await client.post("/api/v1/ingest/sensor/batch", content=flood_batch(n))
                assert r.status_code == 200 and r.json()["accepted"] == FLOOD_BATCH, r.text

        await asyncio.gather(*(post(w) for w in range(4)))
        text = (await client.get("/metrics")).text
        peak = peak_rss_mb(proc.pid)
    print(f"\nflood of {FLOOD:,} new series through serve ({profile}): peak RSS {peak:.0f} MB")
    series, devices = metric(text, 'smart_dairy_alert_state{kind="series"}'), metric(
        text, 'smart_dairy_alert_state{kind="devices"}')
    untracked = metric(text, "smart_dairy_alert_series_untracked_total")
    assert peak < 500, f"peak RSS {peak:.0f} MB"
    assert (series, devices, untracked) == (200_000, 2_000, FLOOD - 200_000), f"peak RSS {peak:.0f} MB"
    assert metric(text, 'smart_dairy_alert_state{kind="sources"}') <= 200_000
    assert metric(text, 'smart_dairy_alert_state{kind="subjects"}') <= 200_000 + 2_000
