"""The MQTT subscriber: contract section 4's topics into the pipeline, each message acknowledged only
once what it became is committed (or dead-lettered).

paho-mqtt runs its network loop in its own thread and only appends messages to a buffer there;
the asyncio side takes the whole buffer at once, decodes and validates it as a batch and hands it
to the writers, so a message costs no round trip of its own. The session is persistent (MQTT 5,
clean start off, a session expiry, a fixed client id): after a crash or a broker restart the broker
re-sends whatever was not acknowledged, and the tables' unique keys store it once.

Memory is bounded three ways: the number of unacknowledged messages the broker may send at once
(Receive Maximum), the largest packet it may send us (Maximum Packet Size: it drops bigger messages
for us), and the bytes waiting in the buffer (past the limit paho's thread leaves the socket unread,
so the broker's sends back up through TCP, until the asyncio side takes the buffer).

Nothing a client sends stops the subscriber: any failure to decode a message dead-letters it, and
the processing loop is supervised: when it fails (a bug, a broken writer) the failure is logged and
reported on /health, and the loop restarts and processes the interrupted batch again, message by
message, so that one message that makes processing fail is dead-lettered instead of stopping the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.client import PUBACK
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .alerts import Decisions, as_messages
from .config import Settings
from .logs import Throttled
from .pipeline import Origin, Pipeline
from .storage import RETRYABLE_ERRORS
from .topics import TopicError, decode_message, parse_topic, subscriptions
from .validation import decode_error
from .writer import WriterBusy, WriterClosed

log = logging.getLogger(__name__)

_PUBACK = struct.Struct("!BBH")  # fixed header (PUBACK, remaining length 2), packet id
_U16 = struct.Struct("!H")
# Alerts waiting to be published while the broker is away (each is in iot.alerts already).
ALERT_QUEUE = 10_000
SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps our session (and queues for it) a week while we are away
MESSAGE_OVERHEAD = 200  # bytes a buffered message costs besides its topic and payload (objects, list slot)
# Failures of the pipeline rather than of a message: the batch is kept and processed again later,
# never dead-lettered for them.
PIPELINE_FAULTS = (WriterClosed, WriterBusy, *RETRYABLE_ERRORS)
RESTART_DELAY_S = (0.2, 10.0)  # a failed processing loop restarts after this, doubling up to the maximum


class _BufferedClient(paho.Client):
    """paho-mqtt, made fast enough for one reading per message.

    paho reads a packet's header a byte at a time and one packet per select() wake-up, builds a
    message object and an MQTT 5 properties object for every PUBLISH, walks its topic-callback
    matcher, and queues each PUBACK as its own packet with a wake-up of its thread. This reads the
    socket 256 KiB at a time and handles every complete packet in the buffer per wake-up, parses a
    QoS 0/1 PUBLISH itself and hands (packet id, QoS, topic, payload) to `deliver`, and sends a
    batch's PUBACKs in one write: 19k -> 29k one-reading messages a second, measured. It relies on
    paho's private `_sock_recv`, `_packet_read`, `_in_packet`, `_handle_publish` and `_packet_queue`,
    and for backpressure and supervision on `_thread_main`, `_thread_terminate`, `_keepalive`,
    `_ping_t`, `_last_bytes_received`, `_msgtime_mutex`, `_sock_close`, `_do_on_disconnect` and
    `_reconnect_wait`, so paho-mqtt is pinned to 2.x; the MQTT tests cover every path.

    Its network thread is supervised: an exception escaping paho's loop drops the connection and
    makes a new one instead of ending the thread (and MQTT ingestion with it).

    Backpressure: while `full()` says the subscriber's buffer is full, `loop_read` leaves the socket
    unread and waits (at most a second, woken by `wake()`) instead; PUBACKs queued meanwhile are
    still written, and the keepalive does not count the PINGRESPs we are not reading as missing."""

    _rbuf: bytes = b""
    _rpos: int = 0
    _rsock: object = None
    paused_since: float | None = None  # when the network thread stopped reading, while it holds off
    deliver: Callable[[int, int, str, bytes], None]
    full: Callable[[], bool] = staticmethod(lambda: False)
    on_pause: Callable[[bool], None] = staticmethod(lambda paused: None)  # told when reading stops and resumes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._room = threading.Event()  # set when the buffer was taken or a PUBACK queued

    def wake(self) -> None:
        """Tell a network thread holding off reading to look again (the buffer was taken, or stopping)."""
        self._room.set()

    def _thread_main(self) -> None:
        """loop_start's thread: paho's network loop, restarted should it raise (our code runs in it):
        the connection is dropped and made again, and the broker re-sends what was not acknowledged."""
        try:
            while not self._thread_terminate:
                try:
                    self.loop_forever(retry_first_connection=True)
                    return
                except Exception:
                    log.exception("MQTT network loop failed; reconnecting")
                    self._sock_close()
                    self._do_on_disconnect(packet_from_broker=False, v1_rc=paho.MQTTErrorCode.MQTT_ERR_CONN_LOST)
                    self._reconnect_wait()
        finally:
            self._thread = None

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rsock is not self._sock:  # a new connection: nothing buffered belongs to it
            self._rbuf, self._rpos, self._rsock = b"", 0, self._sock
        if self._rpos >= len(self._rbuf):
            if self.full():  # leave the socket unread: paho keeps a partial packet and loop_read holds off
                raise BlockingIOError
            data = super()._sock_recv(1 << 18)  # BlockingIOError when there is nothing: paho waits
            if not data:
                return data  # connection closed
            self._rbuf, self._rpos = data, 0
        chunk = self._rbuf[self._rpos:self._rpos + bufsize]
        self._rpos += len(chunk)
        return chunk

    def loop_read(self, max_packets: int = 1) -> paho.MQTTErrorCode:
        if self.full():
            return self._hold_off()
        if self.paused_since is not None:
            self.paused_since = None
            self.on_pause(False)
        rc = super().loop_read(max_packets)
        while (rc == paho.MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None
               and self._rsock is self._sock and self._rpos < len(self._rbuf)):
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == paho.MQTTErrorCode.MQTT_ERR_AGAIN:  # a partial packet: the rest is still to come
                return paho.MQTTErrorCode.MQTT_ERR_SUCCESS
        return rc

    def _hold_off(self) -> paho.MQTTErrorCode:
        """Leave the socket unread until the buffer is taken; write what is queued (PUBACKs) meanwhile."""
        if self.paused_since is None:
            self.paused_since = paho.time_func()
            self.on_pause(True)
        self._room.clear()
        rc = self._write_queued()
        if rc == paho.MQTTErrorCode.MQTT_ERR_SUCCESS and self.full():
            # Then paho's loop runs its keepalive, and sees a disconnect or a stop.
            self._room.wait(min(1.0, self._keepalive / 4))
            rc = self._write_queued()
        return rc

    def _write_queued(self) -> paho.MQTTErrorCode:
        if self._sock is None or not self.want_write():
            return paho.MQTTErrorCode.MQTT_ERR_SUCCESS
        return self.loop_write()

    def loop_misc(self) -> paho.MQTTErrorCode:
        if self.paused_since is not None and self._sock is not None:
            # Not reading on purpose: a PINGRESP may be waiting unread, so the broker is not taken
            # for dead; PINGREQs still go out every keepalive, and a dead broker fails the writes.
            with self._msgtime_mutex:
                self._last_bytes_received = paho.time_func()
            self._ping_t = 0
        return super().loop_misc()

    def _handle_publish(self) -> paho.MQTTErrorCode:
        try:
            return self._take_publish()
        except (IndexError, struct.error):  # a truncated packet: a protocol error, paho reconnects
            return paho.MQTTErrorCode.MQTT_ERR_PROTOCOL

    def _take_publish(self) -> paho.MQTTErrorCode:
        qos = (self._in_packet["command"] & 0x06) >> 1
        if qos == 2:
            return super()._handle_publish()  # never subscribed to: paho's own state machine
        packet = self._in_packet["packet"]
        (length,) = _U16.unpack_from(packet, 0)
        pos = 2 + length
        topic = bytes(packet[2:pos]).decode("utf-8", "replace")  # a bad topic is dead-lettered, not dropped
        mid = 0
        if qos:
            (mid,) = _U16.unpack_from(packet, pos)
            pos += 2
        if self._protocol == paho.MQTTv5:  # skip the properties: a variable-length size, then the bytes
            size = shift = 0
            while True:
                byte = packet[pos]
                pos += 1
                size |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            pos += size
        with self._in_callback_mutex:
            self.deliver(mid, qos, topic, bytes(packet[pos:]))
        return paho.MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_on_message(self, message: paho.MQTTMessage) -> None:
        with self._in_callback_mutex:
            self.deliver(message.mid, message.qos, message.topic, message.payload)

    def ack_all(self, mids: list[int]) -> None:
        """PUBACK (success, no properties: the same 4 bytes in MQTT 3.1.1 and 5) for QoS 1 `mids`."""
        if mids:
            pack = _PUBACK.pack
            self._packet_queue(PUBACK, b"".join([pack(PUBACK, 2, mid) for mid in mids]), 0, 1)
            self._room.set()  # a network thread holding off reading writes them now


def _farm_of(topic: str) -> int | None:
    try:
        return parse_topic(topic)[1]["farm_id"]
    except TopicError:
        return None


@dataclass
class _Message:
    generation: int  # which connection delivered it: acks on a later connection would be wrong
    mid: int
    qos: int
    topic: str
    payload: bytes


@dataclass
class MqttStatus:
    connected: bool = False
    connects: int = 0
    last_error: str | None = None
    received: int = 0
    acknowledged: int = 0
    failure: str | None = None  # why the processing loop is down (it is restarting), else None
    restarts: int = 0
    buffered_bytes: int = 0
    reading_paused: bool = False  # the buffer is full: the socket is left unread until it is taken

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.connected, "connects": self.connects, "last_error": self.last_error,
                "received": self.received, "acknowledged": self.acknowledged, "failure": self.failure,
                "restarts": self.restarts, "buffered_bytes": self.buffered_bytes,
                "reading_paused": self.reading_paused}


class Subscriber:
    """Subscribes to every topic of contract section 4 and feeds the pipeline."""

    def __init__(self, pipeline: Pipeline, settings: Settings, *, client_id: str | None = None) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.status = MqttStatus()
        self._client_id = client_id or settings.mqtt_client_id
        self._lock = threading.Lock()
        self._buffer: list[_Message] = []
        self._max_buffer = settings.mqtt_max_buffer_bytes
        self._retry: list[_Message] = []  # what a failed processing loop had not finished
        self._log = Throttled(log)
        self._generation = 0
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: _BufferedClient | None = None
        self._stopping = False
        pipeline.alert_listeners.append(self.publish_alerts)

    # --- paho's thread ----------------------------------------------------------------------

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.status.last_error = f"connect refused: {reason}"
            return
        with self._lock:
            self._generation += 1
        self.status.connects += 1
        client.subscribe([(f, 1) for f in subscriptions(self.settings.mqtt_group)])

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reasons: list, _p: Any) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            self.status.last_error = f"subscription refused: {failed}"
            log.error("MQTT subscription refused: %s", failed)
            return
        self.status.connected = True  # connected and subscribed: what /health reports as ok
        log.info("MQTT connected to %s:%d and subscribed to %d filters", self.settings.mqtt_host,
                 self.settings.mqtt_port, len(reasons))

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.status.connected = False
        if self._stopping:
            return
        self.status.last_error = f"disconnected: {reason}"
        log.warning("MQTT disconnected (%s); reconnecting", reason)

    def _deliver(self, mid: int, qos: int, topic: str, payload: bytes) -> None:
        with self._lock:
            first = not self._buffer
            self._buffer.append(_Message(self._generation, mid, qos, topic, payload))
            self.status.buffered_bytes += len(payload) + len(topic) + MESSAGE_OVERHEAD
        if first and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def _full(self) -> bool:
        return self.status.buffered_bytes >= self._max_buffer

    def _on_pause(self, paused: bool) -> None:
        self.status.reading_paused = paused
        if paused:
            log.debug("MQTT buffer full (%d bytes): not reading from the broker until it is taken",
                     self.status.buffered_bytes)

    # --- the asyncio side -------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        client = _BufferedClient(paho.CallbackAPIVersion.VERSION2, client_id=self._client_id,
                                 protocol=paho.MQTTv5, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.deliver = self._deliver
        client.full = self._full
        client.on_pause = self._on_pause
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.max_queued_messages_set(ALERT_QUEUE)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = self.settings.mqtt_receive_maximum
        props.MaximumPacketSize = self.settings.mqtt_max_packet_bytes  # the broker drops bigger ones for us
        client.connect_async(self.settings.mqtt_host, self.settings.mqtt_port, keepalive=self.settings.mqtt_keepalive,
                             clean_start=False, properties=props)
        client.loop_start()
        self._client = client

    async def run(self, stop: asyncio.Event) -> None:
        """Process delivered messages until `stop`; then process what was delivered and disconnect.
        A failure of the processing loop is logged and reported (`status.failure`, /health) and the
        loop restarts after a backoff; it is reported until the interrupted batch has gone through."""
        self.start()
        delay = RESTART_DELAY_S[0]
        try:
            while True:
                try:
                    await self._consume(stop)
                    return
                except Exception as exc:  # a bug or a broken pipeline: never the end of MQTT ingestion
                    self.status.failure = f"processing failed: {type(exc).__name__}: {exc}"
                    self.status.restarts += 1
                    log.exception("MQTT processing loop failed (%d messages kept); restarting in %.1f s",
                                  len(self._retry), delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)  # a backoff that stopping cuts short
                if stop.is_set():
                    return  # what was not acknowledged is re-sent by the broker on our next session
                delay = min(delay * 2, RESTART_DELAY_S[1])
        finally:
            if not stop.is_set():
                self.status.failure = self.status.failure or "the subscriber stopped"
            client = self._client
            if client is not None:
                self._stopping = True
                client.wake()
                client.disconnect()
                client.loop_stop()

    async def _consume(self, stop: asyncio.Event) -> None:
        if self._retry or self.status.failure:  # restarted: what was interrupted first, one by one
            await self._process_alone(self._retry + self._take())
            self.status.failure = None
            log.info("MQTT processing loop restarted")
        while True:
            waiter = asyncio.create_task(self._wake.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            self._wake.clear()
            batch = self._take()
            if batch:
                self._retry = batch  # until it is processed: a failure keeps it
                await self.process(batch)
                self._retry = []
            if stop.is_set():
                return

    def _take(self) -> list[_Message]:
        """The buffer, emptied: the network thread may read again."""
        with self._lock:
            batch, self._buffer = self._buffer, []
            self.status.buffered_bytes = 0
        if self._client is not None:
            self._client.wake()
        return batch

    async def _process_alone(self, batch: list[_Message]) -> None:
        """Process each message of `batch` on its own (at once: the writers still group-commit them).
        A message that fails alone while others succeed is dead-lettered and acknowledged: whatever
        it does to the ingestor, it cannot stop the rest. When all fail, or the pipeline itself fails
        (PIPELINE_FAULTS), the failed ones are kept and the failure raised: they are tried again."""
        outcomes = await asyncio.gather(*(self.process([m]) for m in batch), return_exceptions=True)
        failed = [(m, exc) for m, exc in zip(batch, outcomes, strict=True) if exc is not None]
        self._retry = [m for m, _ in failed]
        if not failed:
            return
        for _, exc in failed:
            if not isinstance(exc, Exception) or isinstance(exc, PIPELINE_FAULTS):
                raise exc
        if len(failed) == len(batch):
            raise failed[0][1]
        log.error("%d MQTT message(s) make processing fail alone while %d others succeed: dead-lettered; the "
                  "first on %r", len(failed), len(batch) - len(failed), failed[0][0].topic[:200], exc_info=failed[0][1])
        await asyncio.gather(*(self.pipeline.reject(
            channel="mqtt", source=m.topic, payload=m.payload, farm_id=_farm_of(m.topic),
            reason=f"the ingestor failed processing this message: {type(exc).__name__}: {exc}")
            for m, exc in failed))
        self._acknowledge([m for m, _ in failed])
        self._retry = []

    async def process(self, batch: list[_Message]) -> None:
        """Decode, validate and store a batch of messages, then acknowledge them."""
        kinds: dict[str, list] = defaultdict(list)
        origins: dict[str, list[Origin]] = defaultdict(list)  # the message each item came from
        rejected: list[tuple[_Message, str, str | None]] = []
        for m in batch:
            try:
                mapped = decode_message(m.topic, m.payload)
            except TopicError as exc:
                rejected.append((m, str(exc), "topic"))
                continue
            except msgspec.ValidationError as exc:
                e = decode_error(0, exc)
                rejected.append((m, str(e), f"payload.{e.field}" if e.field else "payload"))
                continue
            except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
                rejected.append((m, f"payload is not valid JSON: {exc}", "payload"))
                continue
            except Exception as exc:  # a message that trips a bug is dead-lettered, never a stopped subscriber
                self._log.warning("decoding an MQTT message on %r failed: %s: %s", m.topic[:200],
                                  type(exc).__name__, exc)
                rejected.append((m, f"the message could not be decoded: {type(exc).__name__}: {exc}", None))
                continue
            for kind, items in (("sensor", mapped.readings), ("milk", mapped.milk), ("rfid", mapped.rfid)):
                if items:
                    kinds[kind].extend(items)
                    origins[kind].extend([Origin(m.topic, m.payload, items[0].farm_id)] * len(items))
            if not (mapped.readings or mapped.milk or mapped.rfid):
                rejected.append((m, "the message holds no reading", "payload"))
        work = [self.pipeline.ingest(kind, items, channel="mqtt", origin=origins[kind])
                for kind, items in kinds.items()]
        work += [self.pipeline.reject(channel="mqtt", source=m.topic, payload=m.payload, reason=reason,
                                      field_name=name, farm_id=_farm_of(m.topic)) for m, reason, name in rejected]
        await asyncio.gather(*work)  # committed, or retried by the writers until it is
        self.status.received += len(batch)
        self._acknowledge(batch)

    def publish_alerts(self, decisions: Decisions) -> None:
        """Publish stored alerts (QoS 1). iot.alerts is their record; while the broker is away paho
        keeps a bounded queue of them."""
        client = self._client
        if client is None:
            return
        for topic, payload in as_messages(decisions):
            try:
                client.publish(topic, payload, qos=1)
            except ValueError as exc:  # a rule whose category makes no valid topic ('+', '#'): still stored
                log.warning("alert not published on %r: %s", topic, exc)

    def _acknowledge(self, batch: list[_Message]) -> None:
        client = self._client
        if client is None:
            return
        with self._lock:
            current = self._generation
        # A message from an earlier connection is re-sent by the broker on this one (with the same
        # packet id, or as a new delivery): it is acknowledged when that copy is processed.
        mids = [m.mid for m in batch if m.qos == 1 and m.generation == current]
        client.ack_all(mids)
        self.status.acknowledged += len(mids)
