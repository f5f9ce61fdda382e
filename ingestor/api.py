"""The HTTP API of contract section 3 (FastAPI).

Ingest endpoints check the API key before reading a byte of the body, then read it themselves
(bounded in size and time, its bytes counted as they arrive against an in-flight budget per key
and in total) and decode it with msgspec, which is several times faster than FastAPI's pydantic
body parsing and lets a batch keep its valid items; their OpenAPI schemas are msgspec's. A 200/202
is sent only after the rows are committed. Client input never reaches a 500: every failure below
is an ApiError with its status, and every rejected message of an authenticated client is
dead-lettered (unauthenticated input is counted, never stored).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from . import apikeys
from .config import Settings
from .logs import Throttled
from .mqtt import Subscriber
from .pipeline import IngestResult, Origin, Pipeline
from .registry import ApiKey
from .topics import TopicError, decode_message
from .validation import MilkSession, Reading, ReadingBatch, decode_batch, decode_error
from .writer import WriterBusy, WriterClosed

log = logging.getLogger(__name__)

MAX_BATCH = 10_000
RETRY_AFTER = "1"
# A body costs about this many times its size while it is decoded and validated (structs, then
# rows; measured with tracemalloc on 10,000-reading batches: 3.1-3.5x): the in-flight budget charges
# each byte received this much, so the budget bounds memory, not just bytes on the wire.
DECODED_COST = 4
# Query text: printable, as stored ids are (a NUL cannot even be sent to PostgreSQL).
_PRINTABLE = r"^[^\x00-\x1f\x7f]{1,64}$"


class ApiError(Exception):
    def __init__(self, status: int, detail: str, *, errors: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None, dead_letter: bool = True) -> None:
        super().__init__(detail)
        self.status, self.detail, self.errors, self.headers = status, detail, errors, headers
        self.dead_letter = dead_letter  # overload is "come back later", not a rejection


class TelemetryMessage(msgspec.Struct):
    """An MQTT message of contract section 4 posted over HTTP."""

    topic: str
    payload: msgspec.Raw


class InflightBudget:
    """What request bodies being read and decoded cost at once, per client (API key) and in total,
    counted as bytes arrive; a request whose next chunk does not fit is turned away (503)."""

    def __init__(self, limit: int, per_client: int, gauge: Gauge) -> None:
        self.limit, self.per_client, self.used, self.gauge = limit, per_client, 0, gauge
        self.by_client: dict[str, int] = {}

    @asynccontextmanager
    async def account(self, client: str) -> AsyncIterator[Callable[[int], None]]:
        """A `take(n)` for one request; everything it took is given back when the request ends."""
        held = 0

        def take(n: int) -> None:
            nonlocal held
            mine = self.by_client.get(client, 0)
            if self.used + n > self.limit or mine + n > self.per_client:
                raise ApiError(503, "the server is busy reading other requests; retry shortly",
                               headers={"Retry-After": RETRY_AFTER}, dead_letter=False)
            self.used += n
            self.by_client[client] = mine + n
            held += n
            self.gauge.set(self.used)

        try:
            yield take
        finally:
            self.used -= held
            self.gauge.set(self.used)
            left = self.by_client.get(client, 0) - held
            if left:
                self.by_client[client] = left
            else:
                self.by_client.pop(client, None)


def _json(status: int, content: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(content), status_code=status, media_type="application/json",
                    headers=headers)


def _item_errors(errors: list) -> list[dict[str, Any]]:
    return [e.as_json() for e in errors]


def create_app(settings: Settings, pipeline: Pipeline | None = None) -> FastAPI:
    """The API over `pipeline` (started and stopped with the app when it is created here)."""
    owned = pipeline is None
    pipe = pipeline or Pipeline(settings)
    budget = InflightBudget(settings.max_inflight_bytes, settings.max_client_inflight_bytes,
                            pipe.metrics.inflight_bytes)
    quiet = Throttled(log)

    subscriber = Subscriber(pipe, settings) if owned and settings.mqtt_enabled else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not owned:
            yield
            return
        await pipe.start()
        stop = asyncio.Event()
        listening = asyncio.create_task(subscriber.run(stop)) if subscriber else None
        try:
            yield
        finally:
            stop.set()
            if listening is not None:
                await listening  # what was delivered is committed and acknowledged first
            await pipe.stop()

    app = FastAPI(title="Smart Dairy IoT ingestor", version="1.0",
                  description="Ingest and query a dairy farm's sensor readings. Send `X-API-Key`.",
                  lifespan=lifespan)
    app.state.pipeline = pipe
    app.state.subscriber = subscriber

    # --- plumbing ---------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        body: dict[str, Any] = {"detail": exc.detail}
        if exc.errors:
            body["errors"] = exc.errors
        if exc.status == 401:  # never stored: a flood of anonymous bodies must not fill the disk
            pipe.metrics.input_not_stored.labels(channel="http", reason="unauthenticated").inc()
            quiet.warning("unauthenticated requests refused (counted in smart_dairy_input_not_stored), e.g. %s %s "
                          "from %s", request.method, request.url.path, request.client.host if request.client else "?")
        elif exc.dead_letter and request.method == "POST":
            payload = getattr(request.state, "body", b"")
            field = exc.errors[0].get("field") if exc.errors else None
            try:
                await pipe.reject(channel="http", source=request.url.path, payload=payload,
                                  reason=f"{exc.status}: {exc.detail}", field_name=field,
                                  farm_id=getattr(request.state, "farm", None))
            except (WriterClosed, OSError) as err:  # shutting down: the client is told anyway
                log.warning("could not dead-letter a rejected request: %s", err)
        return _json(exc.status, body, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_params(_: Request, exc: RequestValidationError) -> Response:
        errors = [{"field": ".".join(str(p) for p in e.get("loc", ())[1:]) or None, "error": e.get("msg", "")}
                  for e in exc.errors()]
        return _json(422, {"detail": "; ".join(f"{e['field']}: {e['error']}" for e in errors), "errors": errors})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return _json(exc.status_code, {"detail": exc.detail}, getattr(exc, "headers", None))

    @app.middleware("http")
    async def _measure(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception:  # a bug, never client input: logged with its traceback, answered as 500
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            response = _json(500, {"detail": "internal error; it has been logged"})
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        pipe.metrics.http_requests.labels(route=path, status=str(response.status_code)).inc()
        pipe.metrics.http_seconds.labels(route=path).observe(time.perf_counter() - started)
        return response

    async def authorise(request: Request, scope: str) -> ApiKey:
        """The request's key, checked before anything else is done for it (401/403)."""
        key = request.headers.get("x-api-key")
        if not key:
            raise ApiError(401, "missing X-API-Key header", headers={"WWW-Authenticate": "X-API-Key"})
        record = await apikeys.authenticate(key, pipe.registry, pipe.pool)
        if record is None:
            raise ApiError(401, "invalid or revoked API key", headers={"WWW-Authenticate": "X-API-Key"})
        if len(record.farm_ids) == 1:
            (request.state.farm,) = record.farm_ids  # whose dead letters these are
        if scope not in record.scopes:
            raise ApiError(403, f"this API key has no {scope} scope")
        return record

    def farms_allowed(request: Request, key: ApiKey, farms: set[int]) -> None:
        if len(farms) == 1:
            (request.state.farm,) = farms
        if not farms <= key.farm_ids:
            raise ApiError(403, f"this API key may not write farm(s) {sorted(farms - key.farm_ids)}")

    @asynccontextmanager
    async def ingesting(request: Request) -> AsyncIterator[tuple[ApiKey, bytes]]:
        """Authenticate, then read the body: refused with 415/413/400 before it is read whenever the
        headers allow, 413 past the size limit, 408 past the time limit, 503 past the budget."""
        key = await authorise(request, "write")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json" and not kind.endswith("+json"):
            raise ApiError(415, f"content type must be application/json, not {kind or 'missing'!r}")
        limit = settings.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            raise ApiError(413 if length.isdigit() else 400,
                           f"body of {length} bytes is over the {limit}-byte limit" if length.isdigit()
                           else "invalid Content-Length")
        async with budget.account(f"key:{key.id}") as take:
            chunks: list[bytes] = []
            size = 0
            try:
                async with asyncio.timeout(settings.body_timeout):
                    async for chunk in request.stream():
                        size += len(chunk)
                        if size > limit:
                            raise ApiError(413, f"body is over the {limit}-byte limit")
                        take(len(chunk) * DECODED_COST)
                        chunks.append(chunk)
            except TimeoutError:
                raise ApiError(408, f"the body did not arrive within {settings.body_timeout:g} s") from None
            except ClientDisconnect:
                raise ApiError(499, "the client went away", dead_letter=False) from None
            finally:
                request.state.body = b"".join(chunks)
            yield key, request.state.body

    async def ingest(kind: str, items: list, **kw: Any) -> IngestResult:
        try:
            return await pipe.ingest(kind, items, channel="http", admit_timeout=settings.admit_timeout, **kw)
        except (WriterBusy, WriterClosed) as exc:
            raise ApiError(503, f"overloaded, retry later ({exc})", headers={"Retry-After": RETRY_AFTER},
                           dead_letter=False) from None

    def origin(request: Request, body: bytes) -> Origin:
        return Origin(request.url.path, body, getattr(request.state, "farm", None))

    def decode_one(body: bytes, kind: type) -> Any:
        with _decoding():
            return msgspec.json.decode(body, type=kind)

    async def ingest_one(request: Request, kind: str, struct: type) -> Response:
        """One item: 202 once committed, else 422 naming the field (dead-lettered by the pipeline)."""
        async with ingesting(request) as (key, body):
            item = decode_one(body, struct)
            farms_allowed(request, key, {item.farm_id})
            result = await ingest(kind, [item], origin=origin(request, body))
        if result.errors:
            e = result.errors[0]
            raise ApiError(422, str(e), errors=[{"field": e.field, "error": str(e)}], dead_letter=False)
        return _json(202, {"status": "accepted", "accepted": result.accepted})

    schema = {name: {"$ref": f"#/components/schemas/{name}"}
              for name in ("Reading", "ReadingBatch", "MilkSession", "TelemetryMessage")}

    def body_doc(name: str, example: Any) -> dict[str, Any]:
        return {"requestBody": {"required": True, "content": {"application/json": {
            "schema": schema[name], "example": example}}}}

    now = datetime(2026, 2, 2, 12, 55, 10, tzinfo=UTC).isoformat()
    reading_example = {"device_uid": "ENV-FARM01-BARN01-Z01", "device_type": "env_sensor", "farm_id": 1,
                       "metric_name": "temperature_c", "metric_value": 22.5, "metric_unit": "degC",
                       "timestamp": now, "zone_id": 1}
    errors_doc = {c: {"description": d} for c, d in {
        400: "unparsable body", 401: "missing or invalid API key", 403: "the key may not use this farm",
        413: "body over the limit", 415: "not JSON", 422: "invalid item, the field named",
        503: "overloaded: retry after Retry-After seconds"}.items()}

    # --- ingest ------------------------------------------------------------------------------

    @app.post("/api/v1/ingest/sensor", status_code=202, tags=["ingest"], responses=errors_doc,
              openapi_extra=body_doc("Reading", reading_example))
    async def ingest_sensor(request: Request) -> Response:
        """Store one reading; 202 once it is committed."""
        return await ingest_one(request, "sensor", Reading)

    @app.post("/api/v1/ingest/sensor/batch", tags=["ingest"], responses=errors_doc,
              openapi_extra=body_doc("ReadingBatch", {"readings": [reading_example]}))
    async def ingest_batch(request: Request) -> Response:
        """Store up to 10,000 readings; valid ones are kept, each invalid one is reported by index."""
        async with ingesting(request) as (key, body):
            with _decoding():
                items, decode_errors = decode_batch(body)
            if len(items) > MAX_BATCH:
                raise ApiError(413, f"{len(items)} readings in one batch; at most {MAX_BATCH}")
            farms_allowed(request, key, {r.farm_id for r in items if r is not None})
            result = await ingest("sensor", items, decode_errors=decode_errors, origin=origin(request, body))
            return _json(200, {"accepted": result.accepted, "rejected": len(result.errors),
                               "errors": _item_errors(result.errors)})

    @app.post("/api/v1/ingest/milk-production", status_code=202, tags=["ingest"], responses=errors_doc,
              openapi_extra=body_doc("MilkSession", {
                  "milk_meter_id": "MM-01-03", "farm_id": 1, "session_id": "SES-20260202-001-001",
                  "animal_id": "COW-12345", "yield_kg": 14.2, "conductivity_ms": 4.5, "timestamp": now}))
    async def ingest_milk(request: Request) -> Response:
        """Store one milking session; 202 once it is committed."""
        return await ingest_one(request, "milk", MilkSession)

    @app.post("/api/v1/ingest/telemetry", tags=["ingest"], responses=errors_doc,
              openapi_extra=body_doc("TelemetryMessage", {
                  "topic": "dairy/farm/1/barn/1/zone/1/sensor/ENV-FARM01-BARN01-Z01/telemetry",
                  "payload": {"timestamp": now, "readings": {"temperature_c": 22.5, "humidity_percent": 65.0}}}))
    async def ingest_telemetry(request: Request) -> Response:
        """An MQTT payload of contract section 4 with its topic, stored as it would be over MQTT."""
        async with ingesting(request) as (key, body):
            message = decode_one(body, TelemetryMessage)
            try:
                with _decoding("payload."):
                    mapped = decode_message(message.topic, bytes(message.payload))
            except TopicError as exc:
                raise ApiError(422, f"topic: {exc}", errors=[{"field": "topic", "error": str(exc)}]) from None
            farms_allowed(request, key, {x.farm_id for x in (*mapped.readings, *mapped.milk, *mapped.rfid)})
            accepted, errors = 0, []
            for kind, items in (("sensor", mapped.readings), ("milk", mapped.milk), ("rfid", mapped.rfid)):
                if items:
                    result = await ingest(kind, items, origin=origin(request, body))
                    accepted += result.accepted
                    errors += result.errors
            return _json(200, {"accepted": accepted, "rejected": len(errors), "errors": _item_errors(errors)})

    # --- queries -----------------------------------------------------------------------------

    # A key reads its own farms' rows only: another farm's device is as unknown as one that never
    # existed (the same 404, the same empty range), so no key can list another farm's device ids.

    @app.get("/api/v1/query/sensor/latest/{device_uid}", tags=["query"],
             responses={404: {"description": "unknown device"}})
    async def latest(request: Request, device_uid: Annotated[str, Path(pattern=_PRINTABLE)]) -> Response:
        """The newest reading of each metric of a device."""
        key = await authorise(request, "read")
        farms = list(key.farm_ids)
        async with pipe.pool.acquire() as conn:
            rows = (await conn.fetch(LATEST_SQL, device_uid, farms)
                    or await conn.fetch(LATEST_SCAN_SQL, device_uid, farms))
        device = pipe.registry.current.devices.get(device_uid)
        if not rows and (device is None or device.farm_id not in key.farm_ids):
            raise ApiError(404, f"unknown device {device_uid!r}", dead_letter=False)
        return _json(200, {"device_uid": device_uid, "readings": [
            {**dict(r), "time": r["time"].isoformat()} for r in rows]})

    @app.get("/api/v1/query/sensor/range", tags=["query"])
    async def sensor_range(
        request: Request,
        device_uid: Annotated[str, Query(pattern=_PRINTABLE)],
        metric_name: Annotated[str, Query(pattern=_PRINTABLE)],
        start_time: datetime,
        end_time: datetime,
        aggregation: Literal["raw", "15min", "hourly", "daily"] = "raw",
        limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    ) -> Response:
        """A metric of a device over [start_time, end_time): raw readings or rollup buckets."""
        key = await authorise(request, "read")
        start, end = _utc("start_time", start_time), _utc("end_time", end_time)
        if end <= start:
            raise ApiError(422, "end_time must be after start_time", dead_letter=False)
        async with pipe.pool.acquire() as conn:
            rows = await conn.fetch(RANGE_SQL[aggregation], device_uid, metric_name, start, end, limit,
                                    list(key.farm_ids))
        return _json(200, {"device_uid": device_uid, "metric_name": metric_name, "aggregation": aggregation,
                           "data": [{**{k: v for k, v in r.items() if k != "farm_id"}, "time": r["time"].isoformat()}
                                    for r in rows]})

    @app.get("/api/v1/stats/ingestion", tags=["query"])
    async def stats(request: Request) -> Response:
        """Readings in the last hour and 24 hours, active devices, queue depth, storage profile (the key's farms)."""
        key = await authorise(request, "read")
        farms = sorted(key.farm_ids)
        async with pipe.pool.acquire() as conn:
            row = await conn.fetchrow(STATS_SQL, farms)
        return _json(200, {**dict(row), "farms": farms, "queue_depth": pipe.pending_rows,
                           "storage_profile": pipe.profile})

    # --- operations --------------------------------------------------------------------------

    @app.get("/health", tags=["operations"])
    async def health() -> Response:
        """Database and broker state, storage profile, queue depth and writer lag; 503 with the reason when
        the database is down or the MQTT subscriber's processing loop has failed (until it is back)."""
        started = time.perf_counter()
        try:
            async with asyncio.timeout(1.0):
                async with pipe.pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
            database = {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2)}
        except Exception as exc:  # any failure means "not healthy", which is what this endpoint reports
            database = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        broker = (subscriber.status.as_json() if subscriber is not None
                  else await _probe_broker(settings.mqtt_host, settings.mqtt_port))
        # The broker being away is reported, not unhealthy (the subscriber reconnects by itself); its
        # processing loop failing is: MQTT ingestion stops until the restarted loop is back.
        reasons = [f"database: {database['error']}"] if not database["ok"] else []
        if subscriber is not None and subscriber.status.failure:
            reasons.append(f"MQTT subscriber: {subscriber.status.failure}")
        body = {"status": "unavailable" if reasons else "ok", "database": database, "broker": broker,
                "storage_profile": pipe.profile, "queue_depth": pipe.pending_rows,
                "writer_lag_seconds": round(pipe.lag_seconds, 3)}
        if reasons:
            body["reason"] = "; ".join(reasons)
        return _json(503 if reasons else 200, body)

    @app.get("/metrics", tags=["operations"])
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(generate_latest(pipe.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            _, components = msgspec.json.schema_components(
                (Reading, ReadingBatch, MilkSession, TelemetryMessage), ref_template="#/components/schemas/{name}")
            spec.setdefault("components", {}).setdefault("schemas", {}).update(components)
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _utc(name: str, t: datetime) -> datetime:
    """A query's time in UTC (naive: taken as UTC); 422 where UTC has no such time (year 1 at +14:00)."""
    try:
        return t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)
    except (OverflowError, ValueError):
        raise ApiError(422, f"{name} {t.isoformat()} is out of range", dead_letter=False) from None


@contextmanager
def _decoding(prefix: str = "") -> Iterator[None]:
    """Decoding failures as client errors: 422 naming the field for JSON of the wrong shape, else 400."""
    try:
        yield
    except msgspec.ValidationError as exc:  # a subclass of DecodeError: first
        e = decode_error(0, exc)
        field = f"{prefix}{e.field}" if e.field else prefix.rstrip(".") or None
        detail = f"{field}: {e.reason}" if field else e.reason
        raise ApiError(422, detail, errors=[{"field": field, "error": detail}]) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"{prefix.rstrip('.') or 'body'} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, f"{prefix.rstrip('.') or 'body'} is nested too deeply") from None


async def _probe_broker(host: str, port: int) -> dict[str, Any]:
    """Whether the broker accepts TCP connections (the subscriber reports its own session state)."""
    try:
        async with asyncio.timeout(0.5):
            _, writer = await asyncio.open_connection(host, port)
        writer.close()
        return {"ok": True, "host": host, "port": port}
    except (OSError, TimeoutError) as exc:
        return {"ok": False, "host": host, "port": port, "error": str(exc) or type(exc).__name__}


# The newest row of each metric of a device, each index probe starting at the metric's newest time
# noted in iot.device_state, so only the newest partitions are opened (runtime partition pruning).
LATEST_SQL = """
SELECT l.* FROM iot.device_state d
CROSS JOIN LATERAL jsonb_each_text(d.metric_times) AS m(name, seen)
CROSS JOIN LATERAL (
    SELECT s.metric_name, s.time, s.metric_value AS value, s.metric_unit AS unit, s.data_quality, s.farm_id,
           s.device_type, s.animal_id, s.zone_id, s.battery_level, s.signal_strength
    FROM iot.sensor_data s
    WHERE s.device_uid = d.device_uid AND s.metric_name = m.name AND s.time >= m.seen::timestamptz
      AND s.farm_id = ANY($2::integer[])
    ORDER BY s.time DESC LIMIT 1) l
WHERE d.device_uid = $1 AND d.farm_id = ANY($2::integer[])
ORDER BY l.metric_name
"""
# Until a device's state is first flushed (within a second of its first rows): a skip scan over the
# (device_uid, metric_name, time) key, one probe of every partition per metric.
LATEST_SCAN_SQL = """
WITH RECURSIVE metrics(name) AS (
    (SELECT metric_name FROM iot.sensor_data WHERE device_uid = $1 ORDER BY metric_name LIMIT 1)
    UNION ALL
    SELECT (SELECT s.metric_name FROM iot.sensor_data s
            WHERE s.device_uid = $1 AND s.metric_name > m.name ORDER BY s.metric_name LIMIT 1)
    FROM metrics m WHERE m.name IS NOT NULL
)
SELECT l.* FROM metrics m CROSS JOIN LATERAL (
    SELECT s.metric_name, s.time, s.metric_value AS value, s.metric_unit AS unit, s.data_quality, s.farm_id,
           s.device_type, s.animal_id, s.zone_id, s.battery_level, s.signal_strength
    FROM iot.sensor_data s WHERE s.device_uid = $1 AND s.metric_name = m.name AND s.farm_id = ANY($2::integer[])
    ORDER BY s.time DESC LIMIT 1) l
WHERE m.name IS NOT NULL
ORDER BY l.metric_name
"""

_RANGE_AGG = """
SELECT bucket AS time, avg_value AS value, min_value, max_value, stddev_value, sample_count, farm_id
FROM iot.{view} WHERE device_uid = $1 AND metric_name = $2 AND bucket >= $3 AND bucket < $4
  AND farm_id = ANY($6::integer[])
ORDER BY bucket LIMIT $5
"""
# One fixed statement per aggregation: the client picks among them, never writes SQL.
RANGE_SQL = {
    "raw": """
SELECT time, metric_value AS value, metric_unit AS unit, data_quality, farm_id
FROM iot.sensor_data WHERE device_uid = $1 AND metric_name = $2 AND time >= $3 AND time < $4
  AND farm_id = ANY($6::integer[])
ORDER BY time LIMIT $5
""",
    **{name: _RANGE_AGG.replace("{view}", view) for name, view in
       (("15min", "sensor_data_15min"), ("hourly", "sensor_data_hourly"), ("daily", "sensor_data_daily"))},
}

# Counts from the 15-minute rollup (whole buckets), never by counting raw rows.
STATS_SQL = """
SELECT coalesce(sum(sample_count) FILTER (WHERE bucket >= now() - interval '1 hour'), 0)::bigint AS readings_last_hour,
       coalesce(sum(sample_count), 0)::bigint AS readings_last_24h,
       (SELECT count(*) FROM iot.device_state
        WHERE farm_id = ANY($1) AND last_seen > now() - interval '1 hour') AS active_devices
FROM iot.sensor_data_15min
WHERE bucket >= now() - interval '24 hours' AND farm_id = ANY($1)
"""

