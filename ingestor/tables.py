"""Column lists of the tables the writer fills: the one place Python names them, in COPY order."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]  # the unique key that makes a re-sent row a duplicate

    def index(self, column: str) -> int:
        return self.columns.index(column)


SENSOR_DATA = Table(
    "sensor_data",
    ("time", "device_uid", "device_type", "farm_id", "metric_name", "metric_value", "metric_unit",
     "data_quality", "is_interpolated", "animal_id", "zone_id", "session_id", "battery_level",
     "signal_strength", "metadata"),
    ("device_uid", "metric_name", "time"),
)

MILK_PRODUCTION = Table(
    "milk_production_realtime",
    ("time", "milk_meter_id", "animal_id", "farm_id", "session_id", "yield_kg", "duration_seconds",
     "flow_rate_kg_min", "conductivity_ms", "temperature_c", "blood_detected", "fat_percent",
     "protein_percent", "lactose_percent", "somatic_cell_count", "mastitis_risk_score", "session_start",
     "session_end", "milking_type", "meter_status", "metadata"),
    ("farm_id", "session_id", "time"),  # farms number their sessions independently
)

RFID_EVENTS = Table(
    "rfid_events",
    ("time", "reader_id", "antenna_id", "tag_epc", "animal_id", "farm_id", "rssi", "direction", "read_count"),
    ("tag_epc", "reader_id", "time"),
)

DEAD_LETTERS = Table(
    "dead_letters",
    ("received_at", "channel", "topic_or_path", "payload", "errors", "payload_bytes", "payload_sha256", "farm_id"),
    (),
)

TABLES = {t.name: t for t in (SENSOR_DATA, MILK_PRODUCTION, RFID_EVENTS)}
