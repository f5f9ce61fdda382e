"""`smart-dairy bench`: each ingest path against the machine's ceiling, a raw binary COPY of the
same rows into the same table with the same indexes, measured in the same run just before it."""

from __future__ import annotations

import asyncio
import contextlib
import math
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import msgspec
import pydantic
from tqdm import tqdm

from . import apikeys, storage
from .config import Settings
from .device_state import DeviceStates
from .loadgen import Broker, Message, Publisher, publish_in_processes, running_server, wait_subscribed
from .mqtt import Subscriber
from .pipeline import Pipeline
from .registry import Registry
from .simulator import BARN_METRICS, COLLAR_METRICS, Farm, sensor_rows, utc_floor
from .tables import SENSOR_DATA
from .validation import Context, decode_batch, validate_readings
from .writer import Writer

WRITER_TARGET = 0.8  # contract section 6
# The verdict's shape is what the ingestor hands the writer (HTTP batches and MQTT bursts of up to
# 10,000 readings, a few at a time); many tiny submissions that each wait for their commit are
# measured too, as a stress line: they keep few rows in flight, so batches, and COPYs, stay small.
SMALL_PRODUCERS, SMALL_CHUNK = 8, 1_000
HTTP_TARGET, HTTP_MIN_RATE = 0.6, 100_000
HTTP_BATCH = 10_000
MQTT_MIN_RATE, LATENCY_RATE, LATENCY_P99 = 30_000, 20_000, 1.0
ALERT_P99 = 2.0  # contract section 6: triggering reading -> row in iot.alerts and alert published
# A rule each alert probe trips at once: every probe is a new device reporting a flat battery, so a
# new episode and alert.
_PROBE_RULE = """
    INSERT INTO iot.alert_rules (code, name, category, severity, conditions, suppression_s, max_per_hour)
    VALUES ('bench_probe', 'Bench alert probe', 'bench', 'info',
            '[{"signal": "battery", "metric": null, "op": "<=", "value": 1}]', 0, 1000000)
    ON CONFLICT (code) DO NOTHING
"""
_READING_KEYS = ("timestamp", "device_uid", "device_type", "farm_id", "metric_name", "metric_value", "metric_unit")


@dataclass
class Figure:
    label: str
    rows: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds

    def line(self, ceiling: Figure | None) -> str:
        ratio = "1.00x (ceiling)" if ceiling is None else f"{self.rate / ceiling.rate:.2f}x raw COPY"
        return f"{self.label:<44} {self.rows:>10,} rows {self.seconds:>7.2f} s {self.rate:>10,.0f} rows/s  {ratio}"


def bench_rows(count: int, *, seed: int = 7) -> list[tuple]:
    """`count` readings shaped like a farm: 1,000 collars and 8 barn sensors every 5 seconds."""
    farm = Farm(cows=1000, zones=8)
    series = farm.cows * len(COLLAR_METRICS) + farm.zones * len(BARN_METRICS)
    ticks = math.ceil(count / series)
    start = utc_floor(datetime.now(UTC) - timedelta(seconds=ticks * 5 + 120), 60)
    return sensor_rows(farm, start, ticks, 5.0, seed=seed)[:count]


async def _reset(conn: asyncpg.Connection, profile: str) -> None:
    await conn.execute("TRUNCATE iot.sensor_data, iot.device_state, iot.dead_letters")
    if profile == "postgres":
        await conn.execute("TRUNCATE iot.rollup_invalidations")
    await conn.execute("CHECKPOINT")


async def _raw_copy(conn: asyncpg.Connection, rows: list[tuple]) -> Figure:
    started = time.perf_counter()
    await conn.copy_records_to_table(SENSOR_DATA.name, schema_name="iot", records=rows, columns=SENSOR_DATA.columns)
    return Figure("raw COPY (binary, one statement)", len(rows), time.perf_counter() - started)


async def _through_writer(pool: asyncpg.Pool, chunks: list[list[tuple]], *, label: str, batch_rows: int,
                          producers: int) -> Figure:
    states = DeviceStates()
    stop = asyncio.Event()
    flusher = asyncio.create_task(states.run(pool, 1.0, stop))
    writer = Writer(pool, SENSOR_DATA, batch_rows=batch_rows, batch_delay=0.02,
                    max_pending_rows=batch_rows * 4, on_commit=states.note)
    queue = list(reversed(chunks))
    progress = tqdm(total=sum(map(len, chunks)), desc=label, unit="row", unit_scale=True, leave=False)

    async def produce() -> None:
        while queue:
            chunk = queue.pop()
            await writer.write(chunk)
            progress.update(len(chunk))

    started = time.perf_counter()
    await asyncio.gather(*(produce() for _ in range(producers)))
    seconds = time.perf_counter() - started
    await writer.close()
    stop.set()
    await flusher
    progress.close()
    return Figure(label, sum(map(len, chunks)), seconds)


def http_bodies(rows: list[tuple], batch: int = HTTP_BATCH) -> list[bytes]:
    """The rows as the JSON batches a farm's scripts would post."""
    c = SENSOR_DATA.columns
    pick = [c.index("time"), *(c.index(k) for k in _READING_KEYS[1:])]
    optional = [(k, c.index(k)) for k in ("animal_id", "zone_id", "battery_level", "signal_strength")]
    bodies = []
    for i in range(0, len(rows), batch):
        readings = []
        for r in rows[i:i + batch]:
            item = dict(zip(_READING_KEYS, (r[j] for j in pick), strict=True))
            item.update((k, r[j]) for k, j in optional if r[j] is not None)
            readings.append(item)
        bodies.append(msgspec.json.encode({"readings": readings}))
    return bodies


async def _through_http(dsn: str, bodies: list[bytes], rows: int, *, clients: int,
                        alerts: bool = True) -> tuple[Figure, list[float]]:
    async with _connect(dsn) as conn:
        key = await apikeys.create(conn, [1], name="bench")
    latencies: list[float] = []
    queue = list(reversed(bodies))
    progress = tqdm(total=rows, desc="HTTP batches", unit="row", unit_scale=True, leave=False)
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    env = {"SMART_DAIRY_MQTT_ENABLED": "false", **({} if alerts else {"SMART_DAIRY_ALERTS_ENABLED": "false"})}
    async with (running_server(dsn, env) as (url, _),
                httpx.AsyncClient(base_url=url, timeout=60, headers=headers) as client):

        async def post() -> None:
            while queue:
                body = queue.pop()
                sent = time.perf_counter()
                response = await client.post("/api/v1/ingest/sensor/batch", content=body)
                latencies.append(time.perf_counter() - sent)
                answer = response.json()
                if response.status_code != 200 or answer["rejected"]:
                    raise RuntimeError(f"HTTP {response.status_code}: {str(answer)[:300]}")
                progress.update(answer["accepted"])

        started = time.perf_counter()
        await asyncio.gather(*(post() for _ in range(clients)))
        seconds = time.perf_counter() - started
    progress.close()
    label = f"HTTP batches of {HTTP_BATCH:,}, {clients} clients, to commit{'' if alerts else ', alerts off'}"
    return Figure(label, rows, seconds), latencies


@contextlib.asynccontextmanager
async def _connect(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


class _PydanticReading(pydantic.BaseModel):
    """The Reading struct as a pydantic v2 model, only to measure the alternative decoder."""

    device_uid: str
    device_type: str
    farm_id: int
    metric_name: str
    metric_value: float
    metric_unit: str | None = None
    timestamp: datetime | float | None = None
    animal_id: int | str | None = None
    zone_id: int | None = None
    battery_level: int | None = None
    signal_strength: int | None = None


class _PydanticBatch(pydantic.BaseModel):
    readings: list[_PydanticReading]


def _decode_figures(bodies: list[bytes], rows: int) -> list[Figure]:
    """In-process cost of turning the HTTP bodies into rows, and of decoding alone with each library."""
    ctx = Context(Registry())
    started = time.perf_counter()
    for body in bodies:
        items, _ = decode_batch(body)
        validate_readings(items, ctx)
    figures = [Figure("decode + validate (msgspec, in process)", rows, time.perf_counter() - started)]
    for label, decode in (("decode only: msgspec", lambda b: decode_batch(b)),
                          ("decode only: pydantic v2", _PydanticBatch.model_validate_json)):
        started = time.perf_counter()
        for body in bodies:
            decode(body)
        figures.append(Figure(label, rows, time.perf_counter() - started))
    return figures


def mqtt_messages(rows: Sequence[tuple]) -> list[Message]:
    """Each row as its own environmental telemetry message (one reading per message)."""
    c = {name: i for i, name in enumerate(SENSOR_DATA.columns)}
    return [(f"dairy/farm/{r[c['farm_id']]}/barn/1/zone/{r[c['zone_id']] or 1}/sensor/{r[c['device_uid']]}/telemetry",
             msgspec.json.encode({"timestamp": r[c["time"]], "readings": {r[c["metric_name"]]: r[c["metric_value"]]},
                                  "battery_level": r[c["battery_level"]], "signal_strength": r[c["signal_strength"]]}))
            for r in rows]


async def _mqtt_drain(dsn: str, broker: Broker, messages: list[Message]) -> Figure:
    """The ingestor's own rate: a backlog published while it was away, drained at QoS 1, acked after commit."""
    settings = Settings(dsn=dsn, mqtt_port=broker.port, mqtt_client_id="bench-drain")
    pipeline = Pipeline(settings, background=False)
    await pipeline.start()
    try:
        for phase in ("subscribe", "drain"):
            subscriber = Subscriber(pipeline, settings)
            stop = asyncio.Event()
            started = time.perf_counter()
            task = asyncio.create_task(subscriber.run(stop))
            if phase == "subscribe":  # leave the session on the broker, then queue the load for it
                while not subscriber.status.connected:
                    await asyncio.sleep(0.01)
                stop.set()
                await task
                await asyncio.to_thread(publish_in_processes, broker.port, messages, name="bench-backlog")
                continue
            with tqdm(total=len(messages), desc="MQTT drain", unit="msg", unit_scale=True, leave=False) as bar:
                while subscriber.status.acknowledged < len(messages):
                    bar.update(subscriber.status.acknowledged - bar.n)
                    await asyncio.sleep(0.01)
            seconds = time.perf_counter() - started
            stop.set()
            await task
    finally:
        await pipeline.stop()
    return Figure(f"MQTT, {len(messages):,}-message backlog drained, QoS 1", len(messages), seconds)


async def _mqtt_latency(dsn: str, broker: Broker, messages: list[Message],
                        rate: float) -> tuple[float, list[float], list[float]]:
    """Publish `messages` at `rate` to `serve` while probing publish -> queryable and publish -> alert
    stored and published; (achieved rate, row samples, alert samples)."""
    samples: list[float] = []
    alert_samples: list[float] = []
    alerts_on = Settings().alerts_enabled  # SMART_DAIRY_ALERTS_ENABLED=false measures the cost of judging rules
    env = {"SMART_DAIRY_MQTT_PORT": str(broker.port), "SMART_DAIRY_MQTT_CLIENT_ID": "bench-live"}
    async with _connect(dsn) as conn:
        await conn.execute(_PROBE_RULE)
    async with running_server(dsn, env) as (url, _), _connect(dsn) as conn:
        await wait_subscribed(url)
        prober = await asyncio.to_thread(Publisher, broker.port, "bench-probe")
        heard: dict[str, asyncio.Event] = {}
        loop = asyncio.get_running_loop()

        def on_alert(_c: object, _u: object, message: object) -> None:
            alert = msgspec.json.decode(message.payload)
            if alert.get("rule_code") == "bench_probe" and alert.get("source_id") in heard:
                loop.call_soon_threadsafe(heard[alert["source_id"]].set)

        listener = await asyncio.to_thread(Publisher, broker.port, "bench-alert-listener")
        listener.client.on_message = on_alert
        subscribed = threading.Event()
        listener.client.on_subscribe = lambda *_: subscribed.set()
        listener.client.subscribe("dairy/farm/+/alert/#", qos=1)
        if not await asyncio.to_thread(subscribed.wait, 10):
            raise RuntimeError("the alert listener could not subscribe")
        load = asyncio.create_task(asyncio.to_thread(publish_in_processes, broker.port, messages, rate=rate,
                                                     name="bench-live"))
        try:
            k = 0
            while not load.done():
                at = datetime.now(UTC)
                sent = time.perf_counter()
                prober.client.publish("system/farm/1/device/LATENCY-PROBE/status",
                                      msgspec.json.encode({"timestamp": at, "battery_level": 50}), qos=1)
                while not await conn.fetchval("SELECT 1 FROM iot.sensor_data WHERE device_uid = 'LATENCY-PROBE' "
                                              "AND metric_name = 'battery_level' AND time = $1", at):
                    await asyncio.sleep(0.002)
                samples.append(time.perf_counter() - sent)
                k += 1
                if not alerts_on:
                    await asyncio.sleep(0.1)
                    continue
                probe = f"ALERT-PROBE-{k}"
                heard[probe] = asyncio.Event()
                sent = time.perf_counter()
                prober.client.publish(f"system/farm/1/device/{probe}/status", msgspec.json.encode(
                    {"timestamp": datetime.now(UTC), "battery_level": 1}), qos=1)
                await asyncio.wait_for(heard[probe].wait(), 30)
                while not await conn.fetchval("SELECT 1 FROM iot.alerts WHERE rule_code = 'bench_probe' "
                                              "AND source_id = $1", probe):
                    await asyncio.sleep(0.002)
                alert_samples.append(time.perf_counter() - sent)
                await asyncio.sleep(0.1)
            achieved = len(messages) / await load
        finally:
            await asyncio.to_thread(prober.close)
            await asyncio.to_thread(listener.close)
    return achieved, samples, alert_samples


async def _compression(pool: asyncpg.Pool, profile: str, days: int) -> str:
    """Compression ratio of `days` of a simulated 100-cow farm (a reading a minute per series) in
    iot.sensor_data, every chunk but today's compressed: the contract's 30-day figure."""
    if profile != "timescale":
        return f"compression: not applicable to the {profile} profile (no TimescaleDB)"
    farm = Farm(cows=100, zones=4)
    end = utc_floor(datetime.now(UTC), 86_400)
    async with pool.acquire() as conn:
        await _reset(conn, profile)
        total = 0
        with tqdm(total=days, desc="compression: backfill", unit="day", leave=False) as bar:
            for day in range(days, 0, -1):  # a day at a time: memory stays flat
                rows = sensor_rows(farm, end - timedelta(days=day), 1440, 60.0, seed=day)
                await conn.copy_records_to_table(SENSOR_DATA.name, schema_name="iot", records=rows,
                                                 columns=SENSOR_DATA.columns)
                total += len(rows)
                bar.update()
        started = time.perf_counter()
        await conn.execute("SELECT compress_chunk(c, if_not_compressed => true) "
                           "FROM show_chunks('iot.sensor_data', older_than => $1::timestamptz) c", end)
        seconds = time.perf_counter() - started
        before, after = await conn.fetchrow(
            "SELECT sum(before_compression_total_bytes), sum(after_compression_total_bytes) "
            "FROM hypertable_compression_stats('iot.sensor_data')")
    return (f"compression: {days} days of a 100-cow farm, {total:,} readings, {before / 2**20:,.0f} MiB -> "
            f"{after / 2**20:,.1f} MiB, {before / after:.1f}:1 (compressed in {seconds:.1f} s)")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(dsn: str, migrations: Path, *, rows: int, profile: str | None, batch_rows: int,
              chunk: int, producers: int, http_clients: int = 4, mqtt_messages_count: int = 200_000,
              latency_seconds: float = 10.0, compression_days: int = 0) -> list[str]:
    """Run the benchmark in a scratch database (dropped and re-made) and return the printed lines."""
    await storage.drop_database(dsn)
    result = await storage.migrate(dsn, migrations, profile)
    data = bench_rows(rows)
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    resent = [c for i, c in enumerate(chunks) for _ in range(2 if i % 100 == 0 else 1)]
    small = [data[i:i + SMALL_CHUNK] for i in range(0, len(data), SMALL_CHUNK)]
    lines = [f"bench: {rows:,} sensor rows, profile {result.profile}, writer batches of {batch_rows:,}, "
             f"{producers} producers submitting {chunk:,} rows each"]
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    try:
        async with pool.acquire() as conn:
            await _reset(conn, result.profile)
            ceiling = await _raw_copy(conn, data)
            lines.append(ceiling.line(None))
        figures = []
        for label, submissions, submitters in (
                ("writer (group commit, dedup, device state)", chunks, producers),
                ("writer, 1% of submissions re-sent", resent, producers),
                (f"writer, {SMALL_PRODUCERS} producers x {SMALL_CHUNK:,} rows", small, SMALL_PRODUCERS)):
            async with pool.acquire() as conn:
                await _reset(conn, result.profile)
            figures.append(await _through_writer(pool, submissions, label=label, batch_rows=batch_rows,
                                                 producers=submitters))
            lines.append(figures[-1].line(ceiling))
            stored = await pool.fetchval("SELECT count(*) FROM iot.sensor_data")
            assert stored == rows, f"{label}: stored {stored} of {rows} rows"
        writer, dup, tiny = figures
        bodies = http_bodies(data)
        for figure in _decode_figures(bodies, rows):
            lines.append(figure.line(ceiling))
        # The cost of judging the rules: HTTP with alerts off and on, in the same run, each twice in
        # turn (the later runs meet the earlier ones' checkpoints and vacuum), the faster of each kept.
        judged: dict[bool, tuple[Figure, list[float]]] = {}
        modes = (True, False) * 2 if Settings().alerts_enabled else (False,)
        for alerts_on in modes:
            async with pool.acquire() as conn:
                await _reset(conn, result.profile)
            figure, latencies = await _through_http(dsn, bodies, rows, clients=http_clients, alerts=alerts_on)
            stored = await pool.fetchval("SELECT count(*) FROM iot.sensor_data")
            assert stored == rows, f"HTTP: stored {stored} of {rows} rows"
            if alerts_on not in judged or figure.rate > judged[alerts_on][0].rate:
                judged[alerts_on] = figure, latencies
        for figure, latencies in judged.values():
            lines.append(f"{figure.line(ceiling)}  request p50 {_percentile(latencies, .5) * 1000:.0f} ms, "
                         f"p99 {_percentile(latencies, .99) * 1000:.0f} ms")
        http = judged[True][0] if True in judged else judged[False][0]
        if True in judged:
            off = judged[False][0]
            cost = (1 / http.rate - 1 / off.rate) * 1e6
            lines.append(f"judging every built-in rule costs {cost:.2f} us a reading over HTTP "
                         f"({http.rate / off.rate:.2f}x the rate with alerts off; the faster of two runs each)")
        if compression_days:
            lines.append(await _compression(pool, result.profile, compression_days))
        if Broker.available():
            mqtt_lines, mqtt_summary = await _mqtt_figures(dsn, pool, result.profile, data[:mqtt_messages_count],
                                                           ceiling, latency_seconds)
            lines += mqtt_lines
        else:
            mqtt_summary = "MQTT NOT MEASURED (no mosquitto binary here)"
            lines.append(mqtt_summary)
    finally:
        await pool.close()
    ratio = writer.rate / ceiling.rate
    http_ratio = http.rate / ceiling.rate
    lines.append(
        f"summary: writer {ratio:.2f}x raw COPY ({writer.rate:,.0f} rows/s), "
        f"{'meets' if ratio >= WRITER_TARGET else 'MISSES'} {WRITER_TARGET}x; with re-sends "
        f"{dup.rate / ceiling.rate:.2f}x, small submissions {tiny.rate / ceiling.rate:.2f}x; "
        f"HTTP {http_ratio:.2f}x ({http.rate:,.0f} readings/s), "
        f"{'meets' if http_ratio >= HTTP_TARGET and http.rate >= HTTP_MIN_RATE else 'MISSES'} "
        f"{HTTP_TARGET}x and {HTTP_MIN_RATE:,}/s; {mqtt_summary}; profile {result.profile}")
    return lines


async def _mqtt_figures(dsn: str, pool: asyncpg.Pool, profile: str, rows: list[tuple], ceiling: Figure,
                        latency_seconds: float) -> tuple[list[str], str]:
    """The MQTT lines (drain rate; latency at a sustained rate) on a Mosquitto of our own."""
    with tempfile.TemporaryDirectory() as workdir:
        broker = Broker(Path(workdir))
        broker.start()
        try:
            async with pool.acquire() as conn:
                await _reset(conn, profile)
            drain = await _mqtt_drain(dsn, broker, mqtt_messages(rows))
            stored = await pool.fetchval("SELECT count(*) FROM iot.sensor_data")
            assert stored == len(rows), f"MQTT: stored {stored} of {len(rows)} rows"
            async with pool.acquire() as conn:
                await _reset(conn, profile)
            live = bench_rows(int(LATENCY_RATE * latency_seconds), seed=11)
            achieved, samples, alert_samples = await _mqtt_latency(dsn, broker, mqtt_messages(live), LATENCY_RATE)
        finally:
            broker.stop()
    p50, p99 = _percentile(samples, .5), _percentile(samples, .99)
    lines = [drain.line(ceiling),
             f"MQTT at {LATENCY_RATE:,}/s for {latency_seconds:g} s (achieved {achieved:,.0f}/s), "
             f"publish -> queryable over {len(samples)} probes: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"]
    summary = (f"MQTT {drain.rate:,.0f} msg/s {'meets' if drain.rate >= MQTT_MIN_RATE else 'MISSES'} "
               f"{MQTT_MIN_RATE:,}/s, p99 {p99 * 1000:.0f} ms at {achieved:,.0f}/s "
               f"{'meets' if p99 < LATENCY_P99 and achieved >= 0.95 * LATENCY_RATE else 'MISSES'} "
               f"< {LATENCY_P99 * 1000:.0f} ms at {LATENCY_RATE:,}/s")
    if not alert_samples:
        lines.append("alerts: NOT MEASURED (SMART_DAIRY_ALERTS_ENABLED=false: no rule judged)")
        return lines, summary + "; alerts disabled"
    a50, a99 = _percentile(alert_samples, .5), _percentile(alert_samples, .99)
    lines.append(f"alerts at the same time, publish -> alert stored and published over {len(alert_samples)} probes: "
                 f"p50 {a50 * 1000:.0f} ms, p99 {a99 * 1000:.0f} ms")
    summary += (f"; alerts p99 {a99 * 1000:.0f} ms {'meets' if a99 < ALERT_P99 else 'MISSES'} "
                f"< {ALERT_P99 * 1000:.0f} ms")
    return lines, summary
