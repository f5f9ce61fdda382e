"""Typed settings read from the environment (SMART_DAIRY_*) and validated at start-up."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MIGRATIONS = Path(__file__).resolve().parent.parent / "timescale"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SMART_DAIRY_", env_file=".env", extra="ignore")

    dsn: str = "postgresql://localhost/smart_dairy"
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(1883, ge=1, le=65535)
    mqtt_group: str = ""
    # A fixed id makes the broker keep our session (and the messages we have not acknowledged) while
    # we are away; ingestor processes sharing a group need distinct ids.
    mqtt_client_id: str = "smart-dairy-ingestor"
    # Unacknowledged messages the broker may send at once (MQTT 5 Receive Maximum): the largest batch
    # a burst can form while the previous one commits. It bounds messages; the two below bound bytes.
    mqtt_receive_maximum: int = Field(10_000, ge=1, le=65_535)
    # The largest MQTT packet we take (MQTT 5 Maximum Packet Size, sent in CONNECT): the broker drops
    # bigger messages for us instead of sending them. A telemetry message is well under 1 KiB.
    mqtt_max_packet_bytes: int = Field(256 << 10, ge=1024, le=268_435_455)
    # Bytes of received messages waiting for the asyncio side; past it paho's thread stops reading the
    # socket (TCP backpressure to the broker) until the batch is taken. At most twice this is held:
    # one batch being stored, one gathering.
    mqtt_max_buffer_bytes: int = Field(32 << 20, ge=64 << 10)
    # Seconds between PINGREQs on a quiet connection; the broker drops us after 1.5 times this unheard.
    mqtt_keepalive: int = Field(30, ge=1, le=65_535)
    mqtt_enabled: bool = True
    migrations_dir: Path = DEFAULT_MIGRATIONS
    # Writer: a batch is flushed when it holds batch_rows rows or its oldest row waited batch_delay s.
    batch_rows: int = Field(20_000, ge=1)
    batch_delay: float = Field(0.05, gt=0)
    # Rows accepted but not yet committed; producers wait beyond this (backpressure, bounded memory).
    max_pending_rows: int = Field(200_000, ge=1)
    pool_size: int = Field(4, ge=1)
    maintenance_interval: float = Field(30.0, gt=0)
    # How often the registry (devices, animals, zones, API keys pushed by Odoo) is checked for changes.
    registry_interval: float = Field(5.0, gt=0)
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=1, le=65535)
    # A 10,000-reading batch is ~3 MB of JSON; larger bodies get 413 before they are read.
    max_body_bytes: int = Field(16 << 20, ge=1024)
    # What request bodies being read and decoded may cost at once (each byte received counts
    # api.DECODED_COST times), in total and per API key; past either a request gets 503 (bounded memory,
    # and one key cannot take it all).
    max_inflight_bytes: int = Field(128 << 20, ge=1 << 20)
    max_client_inflight_bytes: int = Field(64 << 20, ge=1 << 20)
    # A body must arrive within this many seconds (408): slow senders do not hold connections and budget.
    body_timeout: float = Field(30.0, gt=0)
    # How long a request waits for room in a full writer before it gets 503 and Retry-After.
    admit_timeout: float = Field(2.0, gt=0)
    # Dead-letter text one farm may add an hour (bounded disk whatever a farm's devices send); past
    # it rejections are counted in /metrics, not stored.
    dead_letter_bytes_per_farm_hour: int = Field(16 << 20, ge=1 << 16)
    # Judge the alert rules of iot.alert_rules on every validated batch (contract section 7).
    alerts_enabled: bool = True
    # Alert state is bounded (contract section 6): series (a source's metric) and devices tracked at most,
    # per farm and in all; a new one beyond is stored but not judged (counted in /metrics). A series or
    # device with no reading for this many baseline half-lives (3 days) of its farm's clock is forgotten,
    # looked for every `alert_evict_interval` seconds; its baseline comes back from the aggregates.
    alert_max_series: int = Field(200_000, ge=1)
    alert_max_series_per_farm: int = Field(50_000, ge=1)
    alert_idle_half_lives: float = Field(3.0, gt=0)
    alert_evict_interval: float = Field(60.0, gt=0)


def load_settings(**overrides: object) -> Settings:
    """Return settings from the environment, with explicit overrides (command-line options) on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
