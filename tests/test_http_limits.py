"""What one HTTP client can cost the server: nothing before its key is checked, a bounded share of
the in-flight budget counted by bytes actually received, a bounded time to send its body; and
nothing it puts in a query string or does with its connection yields a 500."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote, urlsplit

import pytest

from .conftest import Api

MiB = 1 << 20
READING = (b'{"device_uid": "ENV-1", "device_type": "env_sensor", "farm_id": 1, '
           b'"metric_name": "temperature_c", "metric_value": 20.5}')


async def open_request(api: Api, key: str | None, length: int, sent: bytes = b"",
                       path: str = "/api/v1/ingest/sensor") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection that announces a body of `length` bytes and sends only `sent` of it."""
    url = urlsplit(api.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    headers = [f"POST {path} HTTP/1.1", f"Host: {url.netloc}", "Content-Type: application/json",
               f"Content-Length: {length}"] + ([f"X-API-Key: {key}"] if key else [])
    writer.write(("\r\n".join(headers) + "\r\n\r\n").encode() + sent)
    await writer.drain()
    return reader, writer


async def status_of(reader: asyncio.StreamReader, timeout: float = 10) -> int:
    line = await asyncio.wait_for(reader.readline(), timeout)
    return int(line.split()[1])


async def test_an_invalid_key_is_refused_before_the_body_is_read(api: Api) -> None:
    reader, writer = await open_request(api, "sdk_00000000_forged", 16 * MiB)  # and never send the body
    try:
        assert await status_of(reader, timeout=5) == 401
    finally:
        writer.close()


async def test_idle_connections_announcing_big_bodies_reserve_nothing(api: Api) -> None:
    """The budget counts bytes received: eight clients announcing 16 MiB and sending nothing hold none
    of it (before, each reserved its Content-Length and every other request got 503)."""
    idle = [await open_request(api, api.key, 16 * MiB) for _ in range(8)]
    try:
        async with api.client() as c:
            r = await c.post("/api/v1/ingest/sensor", content=READING, headers={"Content-Type": "application/json"})
            assert r.status_code == 202, r.text
        assert api.pipeline.metrics.http_requests.labels(route="/api/v1/ingest/sensor", status="503")._value.get() == 0
    finally:
        for _, writer in idle:
            writer.close()


@pytest.mark.api_settings(max_inflight_bytes=8 * MiB, max_client_inflight_bytes=4 * MiB)
async def test_one_key_cannot_take_the_whole_budget(api: Api) -> None:
    # A's slow body: 0.9 MiB received so far, charged 4 x (what decoding it will cost) against A's 4 MiB
    reader, writer = await open_request(api, api.key, 2 * MiB, b" " * (9 * MiB // 10))
    try:
        big = b'{"readings": [' + b",".join([READING] * 2000) + b"]}"  # ~250 KB, 1 MiB charged
        inflight = api.pipeline.metrics.inflight_bytes
        for _ in range(500):  # until the slow body's bytes are all counted
            if inflight._value.get() >= 4 * (9 * MiB // 10):
                break
            await asyncio.sleep(0.01)
        async with api.client() as a:
            r = await a.post("/api/v1/ingest/sensor/batch", content=big, headers={"Content-Type": "application/json"})
            assert r.status_code == 503 and r.headers["Retry-After"]
        async with api.client(api.farm2_key) as b:  # B has its own share
            r = await b.post("/api/v1/ingest/sensor/batch", content=big.replace(b'"farm_id": 1', b'"farm_id": 2'),
                             headers={"Content-Type": "application/json"})
            assert r.status_code == 200 and r.json()["accepted"] == 2000
    finally:
        writer.close()


@pytest.mark.api_settings(body_timeout=1.0)
async def test_a_body_that_does_not_arrive_in_time_gets_408(api: Api) -> None:
    reader, writer = await open_request(api, api.key, 1000, READING[:20])
    try:
        assert await status_of(reader, timeout=5) == 408
    finally:
        writer.close()
    letters = await api.dead_letters()
    assert len(letters) == 1 and letters[0]["payload"] == READING[:20].decode()  # what did arrive


@pytest.mark.parametrize("params", [
    {"device_uid": "ENV\x001"}, {"metric_name": "temp\x00"}, {"device_uid": "a\nb"},
    {"start_time": "0001-01-01T00:00:00+14:00"}, {"end_time": "9999-12-31T23:59:59-14:00"},
    {"start_time": "0001-01-01T00:00:00"}, {"aggregation": "weekly"}])
async def test_query_parameters_never_yield_500(api: Api, params: dict[str, str]) -> None:
    query = {"device_uid": "ENV-1", "metric_name": "temperature_c", "start_time": "2026-01-01T00:00:00Z",
             "end_time": "2026-01-02T00:00:00Z", **params}
    async with api.client() as c:
        r = await c.get("/api/v1/query/sensor/range", params=query)
        assert r.status_code in (200, 422), r.text
        if "device_uid" in params:
            r = await c.get(f"/api/v1/query/sensor/latest/{quote(params['device_uid'], safe='')}")
            assert r.status_code in (404, 422), r.text


async def test_a_client_that_goes_away_mid_body_is_not_an_error(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    disconnects = api.pipeline.metrics.http_requests.labels(route="/api/v1/ingest/sensor", status="499")
    _, writer = await open_request(api, api.key, 1000, READING[:10])
    writer.close()
    for _ in range(500):  # until the server has seen the client go
        if disconnects._value.get():
            break
        await asyncio.sleep(0.01)
    assert disconnects._value.get() == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert await api.dead_letters() == []  # nobody to tell, nothing rejected
