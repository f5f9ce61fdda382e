"""Load for the benchmark and the fault tests: `smart-dairy serve` in its own process, a Mosquitto of
our own started from the project's broker configuration, and QoS 1 publisher processes."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import httpx
import paho.mqtt.client as paho

BROKER_CONFIG = Path(__file__).resolve().parent.parent / "docker" / "mosquitto.conf"
Message = tuple[str, bytes]


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

    def __init__(self, port: int, client_id: str = "publisher") -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.05, 1)
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect("127.0.0.1", port)
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


def _publish_process(port: int, messages: Sequence[Message], rate: float | None, client_id: str) -> None:
    publisher = Publisher(port, client_id)
    try:
        publisher.publish_all(messages, rate=rate)
    finally:
        publisher.close()


def publish_in_processes(port: int, messages: Sequence[Message], *, processes: int = 2,
                         rate: float | None = None, name: str = "load") -> None:
    """Publish `messages` from `processes` publisher processes (at `rate` in total when given)."""
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_publish_process,
                           args=(port, messages[i::processes], rate / processes if rate else None, f"{name}-{i}"))
               for i in range(processes)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise RuntimeError(f"a publisher process failed ({w.exitcode})")
