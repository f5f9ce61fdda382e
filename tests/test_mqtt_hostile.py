"""Issue 13 on the MQTT path, invariants 1 ("nothing a client sends stops the ingestor") and 4 ("flat
memory"), against a real Mosquitto and the real PostgreSQL: hostile topics (property-based, then end
to end), a processing loop that fails (supervised, reported on /health, restarted), a poisonous
message, a stalled database under backpressure, and a flood of big messages against `serve`'s RSS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct
import sys
import time
import unicodedata
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import httpx
import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingestor.config import Settings
from ingestor.loadgen import Broker, Publisher, _publish_packet, _varint, peak_rss_mb, running_server, wait_subscribed
from ingestor.mqtt import Subscriber
from ingestor.pipeline import Pipeline
from ingestor.tables import SENSOR_DATA
from ingestor.topics import INT_LEVELS, TOPICS, TopicError, decode_message, parse_topic
from ingestor.writer import Writer

from .conftest import eventually, start_api
from .test_mqtt import NOW, collar_messages, publish

INT_MAX = 2**31 - 1
ND_DIGITS = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == "Nd"]
COLLAR = "dairy/farm/{farm_id}/animal/{animal_id}/activity/telemetry"


# --- parse_topic, property-based -------------------------------------------------------------------

def check_topic(topic: str) -> tuple[str, dict] | None:
    """parse_topic's contract: canonical values (formatting them gives the topic back), or TopicError.
    Any other exception escapes and fails the test."""
    try:
        kind, ids = parse_topic(topic)
    except TopicError:
        return None
    assert TOPICS[kind].format(**ids) == topic
    for name, value in ids.items():
        if name in INT_LEVELS:
            assert type(value) is int and 1 <= value <= INT_MAX, (name, value)
        else:
            assert re.fullmatch(r"[\x21-\x7e]{1,64}", value) and not set(value) & set("+#/"), (name, value)
    return kind, ids


def test_every_unicode_digit_but_ascii_is_refused_in_an_integer_level() -> None:
    assert "¹".isdigit() and int("١") == 1 and int("１") == 1  # what the old check let through
    assert len(ND_DIGITS) > 600  # every decimal digit of every script (Unicode category Nd)
    for d in ND_DIGITS:
        for level in (d, f"1{d}", f"{d}1", d * 3):
            parsed = check_topic(COLLAR.format(farm_id=level, animal_id="COW-1"))
            assert (parsed is not None) == (level.isascii() and level[0] != "0"), level
    for other in ("¹", "²", "½", "Ⅻ", "௰", "𝟙", "①"):  # digits that are not decimal (isdigit() takes some)
        assert check_topic(COLLAR.format(farm_id=other, animal_id="COW-1")) is None


INT_LEVEL_TEXT = st.one_of(
    st.text(st.characters(categories=("Nd",)), min_size=1, max_size=12),     # any script's digits
    st.text(st.characters(categories=("Nd", "No", "Nl", "Zs", "Pd")), max_size=6),
    st.integers(-(10**40), 10**40).map(str),                                  # signs, zero, huge
    st.tuples(st.integers(1, 4), st.integers(0, 2**32)).map(lambda t: "0" * t[0] + str(t[1])),  # leading zeros
    st.integers(0, 2**32).map(lambda n: f"+{n}"),
    st.integers(1, INT_MAX).map(str),                                         # valid
    st.sampled_from(["", " 1", "1 ", "1\n", "1_000", "0x1", "1e3", "+", "#", "1/2", "2147483647", "2147483648"]),
)
ID_LEVEL_TEXT = st.one_of(
    st.text(max_size=70),
    st.text(st.characters(codec="ascii"), min_size=1, max_size=70),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=66),  # mostly valid
    st.sampled_from(["a+b", "+", "#", "a#", "COW 1", "x" * 64, "x" * 65, "", "COW-é", "\x00", "a\n", "COW-\u200b"]),
)


@st.composite
def topics(draw: st.DrawFn) -> str:
    """A topic of one of contract section 4's shapes, its levels hostile or not, sometimes mangled."""
    kind = draw(st.sampled_from(sorted(TOPICS)))
    names = re.findall(r"\{(\w+)\}", TOPICS[kind])
    topic = TOPICS[kind].format(**{n: draw(INT_LEVEL_TEXT if n in INT_LEVELS else ID_LEVEL_TEXT) for n in names})
    mangle = draw(st.sampled_from(["none", "insert", "truncate", "wildcard"]))
    if mangle != "none" and topic:
        at = draw(st.integers(0, len(topic)))
        if mangle == "insert":
            topic = topic[:at] + draw(st.sampled_from(["/", "//", "+", "#", "/+/", "$", "\x00", " "])) + topic[at:]
        elif mangle == "truncate":
            topic = topic[:at]
        else:
            levels = topic.split("/")
            levels[draw(st.integers(0, len(levels) - 1))] = draw(st.sampled_from(["+", "#"]))
            topic = "/".join(levels)
    return topic


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topics())
@example("dairy/farm/¹/animal/COW-1/activity/telemetry")
@example("dairy/farm/١/animal/COW-1/activity/telemetry")
@example("dairy/farm/１/animal/COW-1/activity/telemetry")
@example("dairy/farm/01/animal/COW-1/activity/telemetry")
@example("dairy/farm/1/animal/+/activity/telemetry")
@example("dairy/farm/1/animal/a+b/activity/telemetry")
@example("dairy/farm/99999999999999999999999/animal/COW-1/activity/telemetry")
def test_parse_topic_gives_canonical_values_or_topic_error(topic: str) -> None:
    check_topic(topic)


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=300))
def test_parse_topic_of_any_text_gives_canonical_values_or_topic_error(topic: str) -> None:
    check_topic(topic)


@settings(max_examples=1000, deadline=None)
@given(farm=st.integers(1, INT_MAX), barn=st.integers(1, INT_MAX), zone=st.integers(1, INT_MAX),
       sensor=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="+#/"),
                      min_size=1, max_size=64))
def test_valid_topics_parse_to_their_values(farm: int, barn: int, zone: int, sensor: str) -> None:
    topic = TOPICS["environment"].format(farm_id=farm, barn_id=barn, zone_id=zone, sensor_id=sensor)
    assert check_topic(topic) == ("environment", {"farm_id": farm, "barn_id": barn, "zone_id": zone,
                                                  "sensor_id": sensor})


JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4),
    max_leaves=12)
PAYLOAD_KEYS = ["timestamp", "device_id", "animal_id", "farm_id", "readings", "activity_index", "temperature_c",
                "battery_level", "signal_strength", "session_id", "milk_data", "session_data", "quality_flags",
                "total_volume_liters", "reader_id", "tag_epc", "rssi", "read_count", "direction", "antenna_id",
                "device_type", "firmware_version", "zone_id", "sensor_type"]


@settings(max_examples=2000, deadline=None)
@given(topic=st.one_of(topics(), st.sampled_from([p.format(farm_id=1, barn_id=1, zone_id=1, sensor_id="S",
                                                           animal_id="A", parlor_id=1, stall_id=1, gate_id="G",
                                                           device_id="D") for p in TOPICS.values()])),
       payload=st.one_of(st.binary(max_size=64),
                         st.dictionaries(st.sampled_from(PAYLOAD_KEYS), JSON, max_size=8).map(msgspec.json.encode),
                         JSON.map(msgspec.json.encode)))
def test_decode_message_raises_only_what_the_subscriber_names(topic: str, payload: bytes) -> None:
    """The subscriber dead-letters any exception of decode_message; these are the expected ones (and
    name the problem): another type would be a bug worth knowing about."""
    try:
        decode_message(topic, payload)
    except (TopicError, msgspec.MsgspecError):
        pass


@contextlib.asynccontextmanager
async def subscribed(pipeline: Pipeline, settings_: Settings, kind: type[Subscriber] = Subscriber
                     ) -> AsyncIterator[Subscriber]:
    """A subscriber running on `pipeline`, connected and subscribed; stopped cleanly on exit (what it
    took is committed and acknowledged, the PUBACKs written before its DISCONNECT)."""
    subscriber = kind(pipeline, settings_)
    stop = asyncio.Event()
    task = asyncio.create_task(subscriber.run(stop))
    try:
        await eventually(lambda: subscriber.status.connected, 10, "subscriber connected")
        yield subscriber
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def started(db: str, broker: Broker, client_id: str, **settings: object
                  ) -> AsyncIterator[tuple[Pipeline, Settings]]:
    settings_ = Settings(dsn=db, mqtt_port=broker.port, mqtt_client_id=client_id, **settings)
    pipeline = Pipeline(settings_, background=False)
    await pipeline.start()
    try:
        yield pipeline, settings_
    finally:
        await pipeline.stop()


async def count(pipeline: Pipeline, table: str = "sensor_data") -> int:
    return await pipeline.pool.fetchval(f"SELECT count(*) FROM iot.{table}")  # noqa: S608 (fixed names)


# --- hostile topics end to end -----------------------------------------------------------------------

HOSTILE_TOPICS = [
    "dairy/farm/¹/animal/COW-1/activity/telemetry",
    "dairy/farm/١/animal/COW-1/activity/telemetry",
    "dairy/farm/１/animal/COW-1/activity/telemetry",
    "dairy/farm/01/animal/COW-1/activity/telemetry",
    "dairy/farm/0/animal/COW-1/activity/telemetry",
    "dairy/farm/-1/animal/COW-1/activity/telemetry",
    "dairy/farm/2147483648/animal/COW-1/activity/telemetry",
    "dairy/farm/99999999999999999999999999/animal/COW-1/activity/telemetry",
    "dairy/farm//animal/COW-1/activity/telemetry",
    "dairy/farm/1/animal//activity/telemetry",
    "dairy/farm/1/animal/COW 1/activity/telemetry",
    "dairy/farm/1/animal/COW-é/activity/telemetry",
    "dairy/farm/1/animal/COW-\u200b1/activity/telemetry",
    f"dairy/farm/1/animal/{'C' * 65}/activity/telemetry",
    "dairy/farm/1/barn/²/zone/3/sensor/ENV-1/telemetry",
    "dairy/farm/1/barn/2/zone/٣/sensor/ENV-1/telemetry",
    "dairy/farm/1/milking/parlor/00/stall/1/session/end",
    "system/farm/1/device/dev ice/status",
    f"dairy/farm/1/animal/{'C' * 5000}/activity/telemetry",
]  # each matches a subscription (a topic that matches none is never delivered: the property tests cover it)


def publish_raw_311(port: int, topic: bytes, payload: bytes) -> bytes:
    """Publish one QoS 1 message over a bare MQTT 3.1.1 connection; returns what the broker answered
    (b"" when it closed the connection instead of acknowledging)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        ident = b"raw-hostile"
        connect = b"\x00\x04MQTT\x04\x02" + struct.pack("!H", 60) + struct.pack("!H", len(ident)) + ident
        sock.sendall(b"\x10" + _varint(len(connect)) + connect)
        assert sock.recv(4) == b"\x20\x02\x00\x00"
        sock.sendall(_publish_packet(topic, payload, 1))
        return sock.recv(4)


async def dead_letters(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT topic_or_path, payload, errors FROM iot.dead_letters ORDER BY id")


async def test_hostile_topics_are_dead_lettered_and_acknowledged_and_valid_ones_stored(
        db: str, broker: Broker) -> None:
    payload = msgspec.json.encode({"activity_index": 5.0, "battery_level": 50, "timestamp": NOW.isoformat()})
    valid = collar_messages(60)
    messages = []
    for i, topic in enumerate(HOSTILE_TOPICS):  # each hostile message between valid ones
        messages += [*valid[3 * i:3 * i + 3], (topic, payload)]
    messages += valid[3 * len(HOSTILE_TOPICS):]
    async with started(db, broker, "test-hostile") as (pipeline, settings_):
        async with subscribed(pipeline, settings_) as subscriber:
            await publish(broker, messages)
            await eventually(lambda: subscriber.status.acknowledged == len(messages), 30, "all acknowledged")
            assert await count(pipeline) == len(valid)
            letters = await dead_letters(pipeline.pool)
            assert sorted(d["topic_or_path"] for d in letters) == sorted(HOSTILE_TOPICS)
            assert all(json.loads(d["errors"])[0]["field"] == "topic" for d in letters)
            assert subscriber.status.connected and subscriber.status.connects == 1
            assert subscriber.status.failure is None and subscriber.status.restarts == 0

            # A topic with a wildcard cannot be published at all: the broker closes the publisher's
            # connection ('a+b' is refused like '+': Mosquitto takes '+' and '#' nowhere in a topic name).
            for topic in ("dairy/farm/1/animal/+/activity/telemetry", "dairy/farm/1/animal/a+b/activity/telemetry",
                          "system/farm/1/device/a#b/status"):
                assert await asyncio.to_thread(publish_raw_311, broker.port, topic.encode(), payload) == b"", topic

        # Acknowledged, so not re-sent when the session resumes on a new connection: only the new
        # message arrives.
        async with subscribed(pipeline, settings_) as subscriber:
            await publish(broker, collar_messages(1, prefix="AFTER"), client_id="test-publisher-2")
            await eventually(lambda: subscriber.status.acknowledged == 1, 30, "the new message acknowledged")
            assert subscriber.status.received == 1
        assert len(await dead_letters(pipeline.pool)) == len(HOSTILE_TOPICS)
        assert await count(pipeline) == len(valid) + 1


# --- a failing processing loop --------------------------------------------------------------------------

async def _health(client: httpx.AsyncClient) -> tuple[int, dict]:
    r = await client.get("/health")
    return r.status_code, r.json()


async def test_a_failing_processing_loop_is_restarted_and_reported_on_health_until_it_is_back(
        db: str, broker: Broker) -> None:
    server, task, url, pipeline = await start_api(db, mqtt_enabled=True, mqtt_port=broker.port,
                                                  mqtt_client_id="test-loop-failure")
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            await wait_subscribed(url)
            assert (await _health(client))[0] == 200
            # The fault: the readings' writer is closed under the running subscriber (as a bug might);
            # every ingest of a reading raises WriterClosed.
            closed = pipeline.writers["sensor"]
            await closed.close()
            await publish(broker, collar_messages(20, prefix="F"))

            async def failing() -> bool:
                status, body = await _health(client)
                return status == 503 and "WriterClosed" in body.get("reason", "")

            await eventually(failing, 30, "/health answers 503 naming the failure")
            status, body = await _health(client)
            assert body["status"] == "unavailable" and body["database"]["ok"] and body["broker"]["ok"]
            assert body["broker"]["restarts"] >= 1 and "MQTT subscriber" in body["reason"]
            assert await pipeline.pool.fetchval("SELECT count(*) FROM iot.sensor_data") == 0
            assert await pipeline.pool.fetchval("SELECT count(*) FROM iot.dead_letters") == 0  # kept, not rejected

            # The writer is back: the restarted loop stores what was kept, and /health is ok again.
            pipeline.writers["sensor"] = Writer(pipeline.pool, SENSOR_DATA, metrics=pipeline.metrics,
                                                on_commit=pipeline.device_states.note)
            await eventually(lambda: _is(_health(client), 200), 60, "/health back to 200")
            assert await pipeline.pool.fetchval("SELECT count(*) FROM iot.sensor_data") == 20
            status, body = await _health(client)
            assert body["status"] == "ok" and body["broker"]["failure"] is None and "reason" not in body
            assert body["broker"]["acknowledged"] == 20
            await publish(broker, collar_messages(5, prefix="G"), client_id="test-publisher-2")
            await eventually(lambda: _rows(pipeline, 25), 30, "later messages stored")
    finally:
        server.should_exit = True
        await task


async def _is(health: asyncio.Future | object, status: int) -> bool:
    return (await health)[0] == status


async def _rows(pipeline: Pipeline, n: int) -> bool:
    return await pipeline.pool.fetchval("SELECT count(*) FROM iot.sensor_data") == n


class _PoisonedSubscriber(Subscriber):
    """The fault: processing raises for any batch holding a message to device POISON-1 (a stand-in for
    a bug that one message trips). Everything else is the real subscriber."""

    async def process(self, batch: list) -> None:
        if any("POISON" in m.topic for m in batch):
            raise RuntimeError("a bug tripped by one message")
        await super().process(batch)


async def test_a_message_that_makes_processing_fail_is_dead_lettered_and_the_rest_stored(
        db: str, broker: Broker) -> None:
    poison = ("dairy/farm/1/animal/POISON-1/activity/telemetry",
              msgspec.json.encode({"activity_index": 1.0, "timestamp": NOW.isoformat()}))
    async with (started(db, broker, "test-poison") as (pipeline, settings_),
                subscribed(pipeline, settings_, _PoisonedSubscriber) as subscriber):
        # Alone, it fails every time: the loop cannot tell it from a broken pipeline, and says so.
        await publish(broker, [poison])
        await eventually(lambda: subscriber.status.failure is not None, 30, "failure reported")
        assert "a bug tripped by one message" in subscriber.status.failure
        # With others beside it, it is the one that fails: dead-lettered and acknowledged, the rest stored.
        messages = collar_messages(30)
        await publish(broker, [*messages[:15], poison, *messages[15:]], client_id="test-publisher-2")
        await eventually(lambda: subscriber.status.failure is None and subscriber.status.acknowledged == 32, 60,
                         "back, everything acknowledged")
        assert await count(pipeline) == 30
        letters = await dead_letters(pipeline.pool)
        assert [d["topic_or_path"] for d in letters] == [poison[0]] * 2  # it was sent twice
        assert "a bug tripped by one message" in json.loads(letters[0]["errors"])[0]["error"]
        assert subscriber.status.connected and subscriber.status.restarts >= 1


class _FaultyDelivery(Subscriber):
    """The fault: handing the 5th message over raises in paho's network thread (a stand-in for a bug
    in the code that runs there)."""

    calls = 0

    def _deliver(self, *args: object) -> None:
        self.calls += 1
        if self.calls == 5:
            raise RuntimeError("a bug in the network thread")
        super()._deliver(*args)


async def test_a_failing_network_thread_reconnects_and_loses_nothing(db: str, broker: Broker) -> None:
    async with (started(db, broker, "test-network-fault") as (pipeline, settings_),
                subscribed(pipeline, settings_, _FaultyDelivery) as subscriber):
        await publish(broker, collar_messages(20))
        await eventually(lambda: _rows(pipeline, 20), 30, "every message stored")
        assert subscriber.status.connects == 2 and "a bug" not in (subscriber.status.failure or "")
        await eventually(lambda: subscriber.status.connected, 30, "connected again")
        await publish(broker, collar_messages(5, prefix="AFTER"), client_id="test-publisher-2")
        await eventually(lambda: _rows(pipeline, 25), 30, "later messages stored")


# --- backpressure ---------------------------------------------------------------------------------------

async def test_a_stalled_database_stops_reading_without_losing_the_connection(db: str, broker: Broker) -> None:
    """The buffer bound (64 KiB here) is reached while the database stalls (a lock on the table): paho
    stops reading the socket, for several keepalive periods (1 s here) without being disconnected;
    then everything is stored and acknowledged."""
    async with (started(db, broker, "test-stall", mqtt_keepalive=1, mqtt_max_buffer_bytes=64 << 10)
                as (pipeline, settings_), subscribed(pipeline, settings_) as subscriber):
        lock = await asyncpg.connect(db)
        try:  # closed (the lock released) before the subscriber is stopped, even when the test fails
            tx = lock.transaction()
            await tx.start()
            await lock.execute("LOCK TABLE iot.sensor_data IN EXCLUSIVE MODE")  # writes wait
            sending = asyncio.create_task(publish(broker, collar_messages(5000)))
            client = subscriber._client
            await eventually(lambda: client.paused_since is not None, 30, "reading paused")
            held = subscriber.status.buffered_bytes
            assert held < (64 << 10) + (256 << 10) + 4096  # the bound, overshot by at most one read of the socket
            # Paused for four keepalive periods: PINGREQs go out, the unread PINGRESPs are not held
            # against the broker, and the broker hears from us.
            await eventually(lambda: time.monotonic() - client.paused_since >= 4, 30, "paused for 4 keepalives")
            assert subscriber.status.connects == 1 and subscriber.status.connected
            assert subscriber.status.buffered_bytes == held and subscriber.status.reading_paused  # nothing read
            await tx.rollback()
            await sending
            await eventually(lambda: subscriber.status.acknowledged == 5000, 60, "all acknowledged")
            assert await count(pipeline) == 5000
            assert subscriber.status.connects == 1 and subscriber.status.connected
            assert not subscriber.status.reading_paused
        finally:
            await lock.close()


# --- flat memory: a flood of big messages against `serve` -----------------------------------------------

BIG, MID = 1_000_000, 200_000  # above our Maximum Packet Size (256 KiB) / below it; both below the broker's


def _flood(rounds: range) -> Iterator[list[tuple[str, bytes]]]:
    """Rounds of 2 messages of 1 MB and 10 of 200 KB (valid readings padded with a field nobody reads)."""
    big_pad, mid_pad = "x" * BIG, "y" * MID
    for r in rounds:
        chunk = []
        for i in range(12):
            when = (NOW - timedelta(seconds=r * 12 + i)).isoformat()
            pad = big_pad if i < 2 else mid_pad
            chunk.append((f"dairy/farm/1/animal/COW-{i}/activity/telemetry",
                          msgspec.json.encode({"device_id": f"FLOOD-{i}", "activity_index": 1.0, "timestamp": when,
                                               "padding": pad})))
        yield chunk


def _broker_dropped(broker: Broker) -> int:
    log = Path(broker.config).parent / "mosquitto.log"
    return log.read_text(errors="replace").count("Dropping too large outgoing PUBLISH") if log.exists() else 0


async def _publish_flood(broker: Broker, rounds: range) -> None:
    publisher = await asyncio.to_thread(Publisher, broker.port, "test-flood-publisher")
    try:
        for chunk in _flood(rounds):
            await asyncio.to_thread(publisher.publish_all, chunk)
    finally:
        await asyncio.to_thread(publisher.close)


async def test_a_flood_of_big_messages_keeps_memory_flat(db: str, broker: Broker) -> None:
    """Most of the flood waits on the broker while `serve` is away, then comes at once (up to Receive
    Maximum messages in flight: 2 GB of 200 KB messages) while the database refuses writes (a lock):
    `serve` must stop reading at its buffer bound rather than take it all in. The rest arrives live."""
    queued, live = 300, 50  # rounds of 2 x 1 MB (the broker drops them for us) and 10 x 200 KB
    rounds = queued + live
    env = {"SMART_DAIRY_MQTT_PORT": str(broker.port), "SMART_DAIRY_MQTT_CLIENT_ID": "test-flood"}
    conn, locker = await asyncpg.connect(db), await asyncpg.connect(db)
    try:
        async with running_server(db, env) as (url, _):
            await wait_subscribed(url)  # the session (and its subscriptions) now lives on the broker
        await _publish_flood(broker, range(queued))
        # Should the test fail while the table is locked, the server's shutdown (which commits what it
        # took) must not wait forever: the server ends the locking session after a minute.
        await locker.execute("SET idle_in_transaction_session_timeout = '60s'")
        lock = locker.transaction()
        await lock.start()
        await locker.execute("LOCK TABLE iot.sensor_data IN EXCLUSIVE MODE")  # reads go on, writes wait
        async with running_server(db, env) as (url, proc), httpx.AsyncClient(base_url=url) as client:
            at_start = peak_rss_mb(proc.pid)

            async def paused() -> bool:
                assert peak_rss_mb(proc.pid) < 500, f"peak RSS {peak_rss_mb(proc.pid):.0f} MB before the bound held"
                return (await client.get("/health")).json()["broker"]["reading_paused"]

            await eventually(paused, 60, "reading paused at the buffer bound")
            while_stalled = peak_rss_mb(proc.pid)
            await lock.rollback()
            await _publish_flood(broker, range(queued, rounds))
            await publish(broker, collar_messages(1, prefix="LAST"), client_id="test-publisher-2")
            await eventually(lambda: _eq(conn.fetchval("SELECT count(*) FROM iot.sensor_data"), rounds * 10 + 1),
                             300, "every 200 KB message and the last one stored")
            peak = peak_rss_mb(proc.pid)
            broker_status = (await client.get("/health")).json()["broker"]
        print(f"\nflood: {rounds * 2} x 1 MB (dropped by the broker) + {rounds * 10} x 200 KB (stored), "
              f"{queued * 12} of them queued while serve was away: serve's peak RSS {peak:.0f} MB "
              f"(when healthy {at_start:.0f} MB, paused by a stalled database {while_stalled:.0f} MB)")
        assert peak < 500, f"peak RSS {peak:.0f} MB (when healthy {at_start:.0f} MB, stalled {while_stalled:.0f} MB)"
        assert broker_status["received"] == rounds * 10 + 1  # the 1 MB ones never reached us
        assert await conn.fetchval("SELECT count(*) FROM iot.dead_letters") == 0
        await eventually(lambda: _broker_dropped(broker) == rounds * 2, 10, "the broker logged every drop")
    finally:
        await conn.close()
        await locker.close()


async def _eq(value: asyncio.Future | object, expected: int) -> bool:
    return await value == expected
