"""The `smart-dairy` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import msgspec
import numpy as np
from tqdm import tqdm

from . import apikeys, bench, evaluate, herd, maintenance, storage
from .config import Settings, load_settings
from .device_state import DeviceStates
from .loadgen import Publisher
from .simulator import Farm, milk_rows, sensor_rows, utc_floor
from .tables import MILK_PRODUCTION, SENSOR_DATA
from .writer import Writer


def _with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    result = await storage.migrate(settings.dsn, settings.migrations_dir, args.profile)
    applied = ", ".join(result.applied) or "nothing (up to date)"
    print(f"storage profile: {result.profile}; applied: {applied}; partitions created: {result.partitions_created}")
    return 0


async def _maintain(settings: Settings, args: argparse.Namespace) -> int:
    if not args.once:
        await maintenance.run_forever(settings.dsn, settings.maintenance_interval)
        return 0
    conn = await asyncpg.connect(settings.dsn)
    try:
        for step in await maintenance.run_once(conn):
            print(f"{step.step:<40} {step.detail} ({step.seconds:.3f}s)")
    finally:
        await conn.close()
    return 0


async def _bench(settings: Settings, args: argparse.Namespace) -> int:
    dsn = args.dsn or _with_database(settings.dsn, "smart_dairy_bench")
    lines = await bench.run(dsn, settings.migrations_dir, rows=args.rows, profile=args.profile,
                            batch_rows=args.batch_rows, chunk=args.chunk, producers=args.producers,
                            http_clients=args.http_clients, mqtt_messages_count=args.mqtt_messages,
                            latency_seconds=args.latency_seconds, compression_days=args.compression_days)
    print("\n".join(lines))
    return 0


async def _evaluate(settings: Settings, args: argparse.Namespace) -> int:
    dsn = args.dsn or _with_database(settings.dsn, "smart_dairy_evaluate")
    try:
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"smart-dairy evaluate: --seeds takes comma-separated integers, got {args.seeds!r}") from None
    shapes = [v.strip() for v in args.shapes.split(",") if v.strip()]
    if not seeds or not shapes or set(shapes) - set(herd.SHAPES):
        raise SystemExit(f"smart-dairy evaluate: --seeds and --shapes need at least one each; shapes are "
                         f"{', '.join(herd.SHAPES)}")

    def echo(lines: list[str]) -> None:
        print("\n".join(lines) + "\n", flush=True)

    lines = await evaluate.run_matrix(dsn, settings.migrations_dir, seeds=seeds, shapes=shapes, echo=echo,
                                      cows=args.cows, days=args.days, zones=args.zones, interval_s=args.interval,
                                      profile=args.profile, ground_truth=args.ground_truth, keep=args.keep,
                                      events_per_cow_day=args.events_per_cow_day)
    print("\n".join(lines))
    return 0


async def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    if not args.backfill:
        return await _simulate_live(settings, args)
    farm = Farm(farm_id=args.farm, cows=args.cows, zones=args.zones)
    end = utc_floor(datetime.now(UTC), 60)
    start = end - timedelta(days=args.backfill)
    pool = await asyncpg.create_pool(settings.dsn, min_size=1, max_size=2)
    try:
        states = DeviceStates()
        sensors = Writer(pool, SENSOR_DATA, batch_rows=settings.batch_rows, on_commit=states.note)
        milk = Writer(pool, MILK_PRODUCTION)
        total = 0
        day = start
        while day < end:  # a day at a time keeps memory flat whatever the history asked for
            ticks = int(min(timedelta(days=1), end - day).total_seconds() // args.interval)
            rows = sensor_rows(farm, day, ticks, args.interval, seed=args.seed + total)
            total += (await sensors.write(rows, channel="simulator")).stored
            day += timedelta(days=1)
        sessions = (await milk.write(milk_rows(farm, start, args.backfill, seed=args.seed))).stored
        await sensors.close()
        await milk.close()
        async with pool.acquire() as conn:
            await states.flush(conn)
    finally:
        await pool.close()
    print(f"backfilled farm {farm.farm_id}: {farm.cows} cows, {farm.zones} barn zones, {args.backfill} days: "
          f"{total:,} sensor readings, {sessions:,} milking sessions")
    return 0


async def _simulate_live(settings: Settings, args: argparse.Namespace) -> int:
    """The farm's devices publishing over MQTT (or HTTP) from `--hours` ago up to now, `--speed` times
    faster than real time; labelled events to `--ground-truth`."""
    rng = np.random.default_rng(args.seed)
    end = datetime.now(UTC).replace(microsecond=0)
    start = end - timedelta(hours=args.hours)
    state = herd.HerdState(args.farm, args.cows, args.zones, rng)
    events = herd.plan_events(args.cows, args.zones, start, end, per_cow_day=args.events_per_cow_day, rng=rng)
    if args.ground_truth:
        with open(args.ground_truth, "w") as out:
            for e in events:
                out.write(msgspec.json.encode(e.as_json(args.farm)).decode() + "\n")
    if args.register:
        conn = await asyncpg.connect(settings.dsn)
        try:
            for table, rows in herd.registry_rows(args.farm, args.cows, args.zones, int(args.interval)).items():
                await conn.executemany(herd.REGISTER_SQL[table], rows)
        finally:
            await conn.close()
    send = await _transport(settings, args)
    ticks = int((end - start).total_seconds() // args.interval)
    began, sent = time.monotonic(), 0
    try:
        with tqdm(total=ticks, desc=f"farm {args.farm} via {args.transport}", unit="tick") as bar:
            for k in range(1, ticks + 1):
                t = start + timedelta(seconds=k * args.interval)
                if (ahead := began + k * args.interval / args.speed - time.monotonic()) > 0:
                    await asyncio.sleep(ahead)  # pacing: the simulated clock runs `speed` times real time
                sent += await send(list(herd.messages(state, t, args.interval, events)))
                bar.update()
                bar.set_postfix(messages=sent, sim=f"{t:%H:%M}")
    finally:
        await send(None)
    print(f"farm {args.farm}: {args.cows} cows, {args.zones} zones, {args.hours:g} h simulated up to {end:%H:%M} UTC: "
          f"{sent:,} messages over {args.transport}, {len(events)} labelled events"
          + (f" in {args.ground_truth}" if args.ground_truth else ""))
    return 0


async def _transport(settings: Settings, args: argparse.Namespace):
    """A send(messages) coroutine over MQTT (QoS 1, waits for the broker) or HTTP; send(None) closes."""
    if args.transport == "mqtt":
        publisher = await asyncio.to_thread(Publisher, settings.mqtt_port, f"simulator-farm-{args.farm}",
                                            settings.mqtt_host)

        async def send_mqtt(batch: list | None) -> int:
            if batch is None:
                await asyncio.to_thread(publisher.close)
                return 0
            return await asyncio.to_thread(publisher.publish_all, batch)
        return send_mqtt
    key = args.api_key or os.environ.get("SMART_DAIRY_API_KEY")
    if not key:
        raise SystemExit("simulate --transport http needs --api-key or $SMART_DAIRY_API_KEY")
    client = httpx.AsyncClient(base_url=args.url, headers={"X-API-Key": key}, timeout=30)

    async def send_http(batch: list | None) -> int:
        if batch is None:
            await client.aclose()
            return 0
        for topic, payload in batch:
            r = await client.post("/api/v1/ingest/telemetry", content=b'{"topic":' + msgspec.json.encode(topic)
                                  + b',"payload":' + payload + b"}", headers={"Content-Type": "application/json"})
            r.raise_for_status()
        return len(batch)
    return send_http


async def _show(settings: Settings, args: argparse.Namespace) -> int:  # noqa: ARG001
    conn = await asyncpg.connect(settings.dsn)
    try:
        profile = await storage.stored_profile(conn)
        print(f"database {storage.database_name(settings.dsn)}, storage profile {profile}")
        print("\nmilk per day (iot.milk_production_daily), last 7 days:")
        for r in await conn.fetch("""
                SELECT bucket::date AS day, farm_id, count(*) AS cows, sum(total_yield_kg) AS kg,
                       avg(total_yield_kg) AS per_cow, max(max_mastitis_risk) AS risk
                FROM iot.milk_production_daily WHERE bucket >= now() - interval '7 days'
                GROUP BY 1, 2 ORDER BY 1, 2"""):
            print(f"  {r['day']}  farm {r['farm_id']}  {r['cows']:>5} cows  {r['kg']:>10,.1f} kg  "
                  f"{r['per_cow']:>5.1f} kg/cow")
        print("\nbarn climate and herd, last 24 h (iot.sensor_data_hourly):")
        for r in await conn.fetch("""
                SELECT metric_name, device_type, count(DISTINCT device_uid) AS devices, sum(sample_count) AS n,
                       sum(avg_value * sample_count) / sum(sample_count) AS mean, min(min_value) AS lo,
                       max(max_value) AS hi
                FROM iot.sensor_data_hourly WHERE bucket >= now() - interval '24 hours'
                GROUP BY 1, 2 ORDER BY 2, 1"""):
            print(f"  {r['device_type']:<11} {r['metric_name']:<20} {r['devices']:>5} devices {r['n']:>9,} readings  "
                  f"mean {r['mean']:>8.2f}  range {r['lo']:.2f} .. {r['hi']:.2f}")
        print("\nalerts raised in the last 24 h of data (iot.alerts), by rule:")
        for r in await conn.fetch("""
                SELECT rule_code, severity, count(*) AS n, count(*) FILTER (WHERE status <> 'resolved') AS still_open
                FROM iot.alerts WHERE time >= (SELECT max(time) FROM iot.alerts) - interval '24 hours'
                GROUP BY 1, 2 ORDER BY 3 DESC"""):
            print(f"  {r['rule_code']:<16} {r['severity']:<8} {r['n']:>5} raised, {r['still_open']:>4} open")
        for r in await conn.fetch("SELECT time, message FROM iot.alerts ORDER BY time DESC LIMIT 5"):
            print(f"  {r['time']:%m-%d %H:%M}  {r['message']}")
        print("\ndevices (iot.device_current_status):")
        for r in await conn.fetch("SELECT status, count(*) FROM iot.device_current_status GROUP BY 1 ORDER BY 1"):
            print(f"  {r['status']:<9} {r['count']:>6}")
        print("\nrollups:")
        if profile == "postgres":
            for r in await conn.fetch("SELECT name, watermark, refreshed_at FROM iot.rollups ORDER BY name"):
                print(f"  {r['name']:<24} materialized up to {r['watermark']:%Y-%m-%d %H:%M} UTC, newer rows "
                      f"aggregated at query time")
        else:
            for r in await conn.fetch("SELECT view_name FROM timescaledb_information.continuous_aggregates "
                                      "WHERE view_schema = 'iot' ORDER BY 1"):
                print(f"  {r['view_name']:<24} continuous aggregate, real-time")
    finally:
        await conn.close()
    return 0


async def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn  # only `serve` needs the server

    from .api import create_app

    settings = settings.model_copy(update={k: v for k, v in (("http_host", args.host), ("http_port", args.port))
                                           if v is not None})
    config = uvicorn.Config(create_app(settings), host=settings.http_host, port=settings.http_port,
                            loop="none", http="httptools", lifespan="on", access_log=args.verbose,
                            log_level="info" if args.verbose else "warning", timeout_graceful_shutdown=10)
    print(f"serving http://{settings.http_host}:{settings.http_port} (docs at /docs)", flush=True)
    await uvicorn.Server(config).serve()
    return 0


async def _apikey(settings: Settings, args: argparse.Namespace) -> int:
    conn = await asyncpg.connect(settings.dsn)
    try:
        key = await apikeys.create(conn, args.farm, read_only=args.read_only, name=args.name)
    finally:
        await conn.close()
    scope = "read" if args.read_only else "read, write"
    print(key)
    print(f"(farms {', '.join(map(str, args.farm))}; {scope}; shown once, stored hashed)", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smart-dairy", description="Smart Dairy IoT ingestor")
    parser.add_argument("--dsn", dest="global_dsn", help="database (default $SMART_DAIRY_DSN)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="create or upgrade schema iot (and the database)")
    p.add_argument("--profile", choices=["auto", *storage.PROFILES], default="auto")
    p.set_defaults(run=_migrate)

    p = sub.add_parser("maintain", help="partitions, rollup refresh, retention, compression")
    p.add_argument("--once", action="store_true", help="one pass now, then exit")
    p.set_defaults(run=_maintain)

    p = sub.add_parser("bench", help="ingest paths as a ratio to raw COPY")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--profile", choices=["auto", *storage.PROFILES], default="auto")
    p.add_argument("--batch-rows", type=int, default=20_000, help="writer batch size")
    p.add_argument("--chunk", type=int, default=10_000, help="rows per submission (an HTTP batch, say)")
    p.add_argument("--producers", type=int, default=4, help="concurrent submitters")
    p.add_argument("--http-clients", type=int, default=4, help="concurrent HTTP clients")
    p.add_argument("--mqtt-messages", type=int, default=200_000, help="backlog drained over MQTT")
    p.add_argument("--latency-seconds", type=float, default=10.0, help="duration of the 20,000/s MQTT run")
    p.add_argument("--compression-days", type=int, default=0,
                   help="timescale: backfill this many days of a 100-cow farm and report the compression ratio")
    p.add_argument("--dsn", help="scratch database, dropped and re-made (default: smart_dairy_bench)")
    p.set_defaults(run=_bench)

    p = sub.add_parser("simulate", help="a simulated farm: live over MQTT/HTTP, or --backfill history")
    p.add_argument("--backfill", type=int, metavar="DAYS", help="write DAYS of history directly to the database")
    p.add_argument("--hours", type=float, default=1.0, help="live: simulated hours, ending now")
    p.add_argument("--speed", type=float, default=60.0, help="live: simulated seconds per real second")
    p.add_argument("--transport", choices=["mqtt", "http"], default="mqtt")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="live over HTTP: the API")
    p.add_argument("--api-key", help="live over HTTP (default $SMART_DAIRY_API_KEY)")
    p.add_argument("--register", action="store_true", help="live: put the farm in the registry, as Odoo would")
    p.add_argument("--ground-truth", metavar="FILE", help="live: write the labelled events here (JSON lines)")
    p.add_argument("--events-per-cow-day", type=float, default=0.02, help="live: rate of each event kind")
    p.add_argument("--farm", type=int, default=1)
    p.add_argument("--cows", type=int, default=100)
    p.add_argument("--zones", type=int, default=4)
    p.add_argument("--interval", type=float, default=60.0, help="seconds between readings")
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(run=_simulate)

    p = sub.add_parser("evaluate", help="labelled simulated farms through the pipeline: alert precision and recall "
                                        "per run and pooled over seeds and farm shapes")
    p.add_argument("--cows", type=int, default=200)
    p.add_argument("--days", type=float, default=28.0)
    p.add_argument("--zones", type=int, default=4)
    p.add_argument("--interval", type=float, default=900.0, help="seconds between collar and climate readings")
    p.add_argument("--seeds", default=",".join(map(str, evaluate.DEFAULT_SEEDS)),
                   help="comma-separated seeds, each run on every shape (default %(default)s)")
    p.add_argument("--shapes", default=",".join(evaluate.DEFAULT_SHAPES),
                   help=f"comma-separated farm shapes of {', '.join(herd.SHAPES)} (default %(default)s)")
    p.add_argument("--events-per-cow-day", type=float, default=None,
                   help="replace the literature's rates of health and device events (a stress test)")
    p.add_argument("--profile", choices=["auto", *storage.PROFILES], default="auto")
    p.add_argument("--ground-truth", type=Path, metavar="FILE",
                   help="also write every run's labelled and context events here (JSON lines with seed and shape)")
    p.add_argument("--keep", action="store_true", help="keep the last run's scratch database to look at")
    p.add_argument("--dsn", help="scratch database, dropped and re-made (default: smart_dairy_evaluate)")
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("serve", help="HTTP API, MQTT subscriber, alerts and maintenance loop")
    p.add_argument("--host", help="default $SMART_DAIRY_HTTP_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, help="default $SMART_DAIRY_HTTP_PORT or 8000")
    p.set_defaults(run=_serve)

    p = sub.add_parser("apikey", help="API keys for devices and scripts")
    keys = p.add_subparsers(dest="action", required=True)
    k = keys.add_parser("create", help="print a new key once")
    k.add_argument("--farm", type=int, action="append", required=True, help="a farm the key may use (repeat)")
    k.add_argument("--read-only", action="store_true")
    k.add_argument("--name", default="", help="what the key is for")
    k.set_defaults(run=_apikey)

    p = sub.add_parser("show", help="what the database holds, from the rollups")
    p.set_defaults(run=_show)
    return parser


def _run(main: Any) -> int:
    try:
        import uvloop  # faster event loop where installed (it is a dependency of uvicorn[standard])
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(dsn=args.global_dsn)
    try:
        return _run(args.run(settings, args))
    except (storage.MigrationError, OSError, asyncpg.PostgresError) as exc:
        print(f"smart-dairy {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
