"""A Mosquitto of the tests' own, started from the project's docker/mosquitto.conf, and a publisher."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import paho.mqtt.client as paho

CONFIG = Path(__file__).resolve().parent.parent / "docker" / "mosquitto.conf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.port = free_port()
        self.data = workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        conf = CONFIG.read_text().replace("listener 1883", f"listener {self.port} 127.0.0.1")
        conf = conf.replace("/mosquitto/data/", f"{self.data}/")
        conf += f"\nuser {getpass.getuser()}\nlog_dest file {workdir / 'mosquitto.log'}\n"
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.config)])
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
    """A device gateway publishing at QoS 1 with a persistent session; `publish_all` returns once the
    broker acknowledged every message."""

    def __init__(self, port: int, client_id: str = "test-publisher") -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.05, 1)
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not connected.wait(10):
            raise RuntimeError("publisher could not connect")

    def publish_all(self, messages: Iterable[tuple[str, bytes]], timeout: float = 60) -> int:
        infos = [self.client.publish(topic, payload, qos=1) for topic, payload in messages]
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError("the broker did not acknowledge every message")
        return len(infos)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(predicate, timeout: float = 30, what: str = "condition") -> None:
    """Poll `predicate` (a readiness check, not a delay) until true or `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout} s")
        time.sleep(0.02)


__all__ = ["Broker", "Publisher", "free_port", "wait_until", "os"]
