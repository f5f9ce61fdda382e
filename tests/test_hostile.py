"""Hostile input through real HTTP: nothing a client sends yields a 500, crashes the server, or is
rejected without a dead letter."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import hypothesis
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode

from .conftest import Api

INGEST = ("/api/v1/ingest/sensor", "/api/v1/ingest/sensor/batch", "/api/v1/ingest/milk-production",
          "/api/v1/ingest/telemetry")
GOOD = {"device_uid": "ENV-1", "device_type": "env_sensor", "farm_id": 1, "metric_name": "temperature_c",
        "metric_value": 20.5}

CORPUS: list[bytes] = [
    b"", b"null", b"true", b"0", b"-1e999", b'"string"', b"[]", b"{}", b"{", b"}", b"\x00", b"\xff\xfe\xfd",
    b"\xef\xbb\xbf" + json.dumps(GOOD).encode(),  # a byte order mark
    b'{"readings": null}', b'{"readings": {}}', b'{"readings": [null, 1, "x", []]}',
    b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    json.dumps({**GOOD, "metadata": json.loads('{"a":' * 500 + "1" + "}" * 500)}).encode(),
    json.dumps({**GOOD, "metric_value": "NaN"}).encode(), b'{"metric_value": NaN}', b'{"metric_value": Infinity}',
    json.dumps({**GOOD, "metric_value": 1.7976931348623157e308}).encode(),
    json.dumps({**GOOD, "farm_id": 2**63}).encode(), json.dumps({**GOOD, "farm_id": True}).encode(),
    json.dumps({**GOOD, "farm_id": 1.5}).encode(), json.dumps({**GOOD, "farm_id": -1}).encode(),
    json.dumps({**GOOD, "device_uid": "A" * 100_000}).encode(), json.dumps({**GOOD, "device_uid": ""}).encode(),
    json.dumps({**GOOD, "device_uid": "\u202eevil\u200b"}).encode(),
    b'{"device_uid": "\\ud800", "device_type": "t", "farm_id": 1, "metric_name": "m", "metric_value": 1}',
    b'{"device_uid": "a\\u0000b", "device_type": "t", "farm_id": 1, "metric_name": "m", "metric_value": 1}',
    json.dumps({**GOOD, "metadata": {"note": "\u0000"}}).encode(),
    json.dumps({**GOOD, "metadata": {"\ud83d\udc04": "\U0001f404"}}, ensure_ascii=False).encode(
        "utf-8", "surrogatepass"),  # lone surrogates as raw bytes: not UTF-8
    json.dumps({**GOOD, "timestamp": "yesterday"}).encode(),
    json.dumps({**GOOD, "timestamp": "9999-12-31T23:59:59Z"}).encode(),
    json.dumps({**GOOD, "timestamp": -1e20}).encode(),
    json.dumps({**GOOD, "timestamp": "0001-01-01T00:00:00+14:00"}).encode(),
    json.dumps({"topic": "dairy/farm/1/barn/1/zone/1/sensor/S/telemetry", "payload": "not an object"}).encode(),
    json.dumps({"topic": "dairy/farm/99999999999/rfid/gate/1/tag/read", "payload": {}}).encode(),
    json.dumps({"topic": "../../etc/passwd", "payload": {}}).encode(),
    json.dumps({"topic": "dairy/farm/1/barn/1/zone/1/sensor/S/telemetry",
                "payload": {"readings": {"temperature_c": "warm", "x" * 100: 1}}}).encode(),
    json.dumps({"readings": [GOOD] * 3 + [{**GOOD, "metric_value": None}]}).encode(),
    json.dumps({**GOOD, "metric_value": 20.5, "metric_value ": 1, "extra": [1, 2, 3]}).encode(),
    b'{"device_uid": "x", "device_uid": "y"}',
]


async def test_hostile_corpus_never_yields_500_and_every_rejection_is_dead_lettered(api: Api) -> None:
    rejections = 0
    async with api.client() as c:
        for path in INGEST:
            for body in CORPUS:
                r = await c.post(path, content=body, headers={"Content-Type": "application/json"})
                assert r.status_code in (200, 202, 400, 403, 413, 422), (path, body[:80], r.status_code, r.text)
                answer = r.json()  # always JSON, always with a reason
                if r.status_code >= 400:
                    assert answer["detail"], (path, body[:80])
                    rejections += 1
                elif r.status_code == 200 and answer["rejected"]:
                    rejections += 1  # one letter per request, listing its rejected items
        health = await c.get("/health")
        assert health.status_code == 200  # still serving
    letters = await api.dead_letters()
    assert len(letters) == rejections
    assert all(json.loads(d["errors"])[0]["error"] for d in letters)


def _fuzz(url: str, key: str) -> list[str]:
    """Schemathesis cases for every operation, valid and invalid by the schema; returns the failures."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: list[str] = []

    def run(label: str, strategy: st.SearchStrategy) -> None:
        @hypothesis.settings(max_examples=40, deadline=None, database=None, derandomize=True,
                             suppress_health_check=list(hypothesis.HealthCheck))
        @hypothesis.given(case=strategy, auth=st.booleans())
        def check(case, auth: bool) -> None:
            response = case.call(base_url=url, headers={"X-API-Key": key} if auth else {})
            if response.status_code >= 500 and response.status_code != 503:
                failures.append(f"{label}: {response.status_code} {response.text[:200]}")

        check()

    for result in schema.get_all_operations():
        operation = result.ok()
        run(f"{operation.label} valid", operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
        try:
            run(f"{operation.label} invalid", operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
        except hypothesis.errors.Unsatisfiable:
            pass  # nothing in the operation can be made invalid (no parameters, no body)
    return failures


async def test_openapi_fuzzing_finds_no_server_error(api: Api) -> None:
    failures = await asyncio.to_thread(_fuzz, api.url, api.key)
    assert failures == []
    answered: Counter[str] = Counter()
    for metric in api.pipeline.metrics.http_requests.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                answered[sample.labels["status"]] += sample.value
    assert sum(answered.values()) > 400 and {"200", "401", "422"} <= set(answered), answered
    async with api.client() as c:
        assert (await c.get("/health")).status_code == 200
