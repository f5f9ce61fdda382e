"""Smart Dairy IoT ingestor: farm sensors over MQTT/HTTP into PostgreSQL/TimescaleDB."""

__version__ = "0.1.0"
