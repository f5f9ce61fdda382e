"""The `smart-dairy` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from . import apikeys, bench, maintenance, storage
from .config import Settings, load_settings
from .device_state import DeviceStates
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
                            latency_seconds=args.latency_seconds)
    print("\n".join(lines))
    return 0


async def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    if not args.backfill:
        print("live MQTT/HTTP simulation is not built yet; use --backfill DAYS", file=sys.stderr)
        return 2
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
    p.add_argument("--chunk", type=int, default=1_000, help="rows per submission (an HTTP batch, say)")
    p.add_argument("--producers", type=int, default=8, help="concurrent submitters")
    p.add_argument("--http-clients", type=int, default=4, help="concurrent HTTP clients")
    p.add_argument("--mqtt-messages", type=int, default=200_000, help="backlog drained over MQTT")
    p.add_argument("--latency-seconds", type=float, default=10.0, help="duration of the 20,000/s MQTT run")
    p.add_argument("--dsn", help="scratch database, dropped and re-made (default: smart_dairy_bench)")
    p.set_defaults(run=_bench)

    p = sub.add_parser("simulate", help="a simulated farm's data")
    p.add_argument("--backfill", type=int, metavar="DAYS", help="write DAYS of history directly")
    p.add_argument("--farm", type=int, default=1)
    p.add_argument("--cows", type=int, default=100)
    p.add_argument("--zones", type=int, default=4)
    p.add_argument("--interval", type=float, default=60.0, help="seconds between readings")
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(run=_simulate)

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
