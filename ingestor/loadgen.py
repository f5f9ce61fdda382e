"""Load for the benchmark and the fault tests: `smart-dairy serve` in its own process, a Mosquitto of
our own started from the project's broker configuration, and QoS 1 publishers (paho, with a
persistent session that survives broker restarts, for the tests; raw MQTT 3.1.1 processes that
cost next to no CPU, for the benchmark)."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import multiprocessing
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho

BROKER_CONFIG = Path(__file__).resolve().parent.parent / "docker" / "mosquitto.conf"
Message = tuple[str, bytes]


def peak_rss_mb(pid: int) -> float:
    """The highest resident set size a running process has reached (VmHWM), in MB: what a flood cost it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def running_server(dsn: str, env: dict[str, str] | None = None
                         ) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """`smart-dairy serve` in its own process, as deployed; yields (base URL, process) once it is healthy."""
    port = free_port()
    env = {**os.environ, "SMART_DAIRY_DSN": dsn, "SMART_DAIRY_MAINTENANCE_INTERVAL": "3600", **(env or {})}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "ingestor.cli", "serve", "--port", str(port),
                                                env=env, stdout=asyncio.subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(200):  # readiness: the server answers /health once its pool and writers are up
                try:
                    if (await client.get(f"{url}/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.returncode is not None:
                    raise RuntimeError(f"the server exited with {proc.returncode}")
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the server did not become healthy in 10 s")
        yield url, proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


async def wait_subscribed(url: str, timeout: float = 30) -> None:
    """Until a `serve` process reports its MQTT session connected and subscribed."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while not (await client.get(f"{url}/health")).json()["broker"]["ok"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not subscribe in {timeout} s")
            await asyncio.sleep(0.05)


class Broker:
    """A Mosquitto of our own from docker/mosquitto.conf, with its port and data directory replaced."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.port = free_port()
        data = workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        conf = BROKER_CONFIG.read_text().replace("listener 1883", f"listener {self.port} 127.0.0.1")
        conf = conf.replace("/mosquitto/data/", f"{data}/")
        conf += f"\nuser {getpass.getuser()}\nlog_dest file {workdir / 'mosquitto.log'}\n"
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.config)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # readiness: the listener accepts connections
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited with {self.proc.returncode}") from None
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        """A clean shutdown: the broker saves its sessions and queues."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()


class Publisher:
    """A device gateway publishing at QoS 1 with a persistent session (MQTT 3.1.1, no client-side
    window: paho rescans its whole queue on every PUBACK when it has one)."""

    def __init__(self, port: int, client_id: str = "publisher", host: str = "127.0.0.1") -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.05, 1)
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect(host, port)
        self.client.loop_start()
        if not connected.wait(10):
            raise RuntimeError("publisher could not connect")

    def publish_all(self, messages: Sequence[Message], *, rate: float | None = None, timeout: float = 120) -> int:
        """Publish (at `rate` messages/s when given) and return once the broker acknowledged all."""
        started = time.monotonic()
        for begin in range(0, len(messages), 20_000):  # packet ids are 16 bits: keep fewer in flight
            infos = []
            for i, (topic, payload) in enumerate(messages[begin:begin + 20_000], begin):
                if rate and i % 500 == 0 and (ahead := started + i / rate - time.monotonic()) > 0:
                    time.sleep(ahead)  # pacing to the requested rate
                infos.append(self.client.publish(topic, payload, qos=1))
            for info in infos:
                info.wait_for_publish(max(0.0, started + timeout - time.monotonic()))
                if not info.is_published():
                    raise TimeoutError("the broker did not acknowledge every message")
        return len(messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _publish_packet(topic: bytes, payload: bytes, packet_id: int) -> bytes:
    body = struct.pack("!H", len(topic)) + topic + struct.pack("!H", packet_id) + payload
    return b"\x32" + _varint(len(body)) + body  # PUBLISH, QoS 1


def raw_publish(port: int, messages: Sequence[Message], rate: float | None, client_id: str,
                ready: Any = None, go: Any = None, window: int = 20_000) -> None:
    """Publish at QoS 1 over a plain MQTT 3.1.1 connection, packets encoded up front and written in
    chunks, PUBACKs counted in bulk: a load generator that leaves the CPU to the system under test.
    Returns once the broker acknowledged every message. With `ready`/`go` (multiprocessing events)
    it reports when connected and encoded, and starts sending when told."""
    packets = [_publish_packet(t.encode(), p, i % 65_535 + 1) for i, (t, p) in enumerate(messages)]
    ident = client_id.encode()
    connect = b"\x00\x04MQTT\x04\x02" + struct.pack("!H", 60) + struct.pack("!H", len(ident)) + ident
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"\x10" + _varint(len(connect)) + connect)
        if sock.recv(4) != b"\x20\x02\x00\x00":
            raise RuntimeError("the broker refused the connection")
        if ready is not None:
            ready.set()
            go.wait()
        started, sent, acked, pending = time.monotonic(), 0, 0, b""
        while acked < len(packets):
            due = len(packets) if rate is None else min(len(packets), int((time.monotonic() - started) * rate) + 1)
            count = min(due - sent, window - (sent - acked), 1000)
            if count > 0:
                sock.sendall(b"".join(packets[sent:sent + count]))
                sent += count
            if select.select([sock], [], [], 0.001)[0]:
                data = sock.recv(1 << 16)
                if not data:
                    raise ConnectionError("the broker closed the connection")
                pending += data  # nothing but 4-byte PUBACKs comes back on this connection
                acked += len(pending) // 4
                pending = pending[len(pending) // 4 * 4:]
        sock.sendall(b"\xe0\x00")  # DISCONNECT


def publish_in_processes(port: int, messages: Sequence[Message], *, processes: int = 2,
                         rate: float | None = None, name: str = "load") -> float:
    """Publish `messages` from `processes` raw publisher processes (at `rate` in total when given),
    all starting at once when every one is connected and has encoded its share; return the seconds
    from that start until the broker acknowledged the last message."""
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    readies = [ctx.Event() for _ in range(processes)]
    workers = [ctx.Process(target=raw_publish, args=(port, messages[i::processes], rate / processes if rate else None,
                                                     f"{name}-{i}", readies[i], go))
               for i in range(processes)]
    for w in workers:
        w.start()
    for ready, w in zip(readies, workers, strict=True):
        while not ready.wait(0.1):
            if not w.is_alive():
                raise RuntimeError(f"a publisher process failed ({w.exitcode})")
    started = time.monotonic()
    go.set()
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise RuntimeError(f"a publisher process failed ({w.exitcode})")
    return time.monotonic() - started
