"""Rows for tests, in the writer's column order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

NOW = datetime.now(UTC).replace(microsecond=0)


def reading(device: str = "COL-1", metric: str = "activity", value: float = 1.0,
            at: datetime | None = None, *, farm: int = 1, quality: str = "valid",
            battery: int | None = 90, signal: int | None = -60) -> tuple:
    return (at or NOW, device, "collar", farm, metric, value, None, quality, False, None, None, None,
            battery, signal, "{}")


def readings(n: int, *, start: datetime | None = None, devices: int = 10, step: float = 1.0) -> list[tuple]:
    start = start or NOW - timedelta(seconds=n * step)
    return [reading(f"COL-{i % devices}", "activity", float(i), start + timedelta(seconds=(i // devices) * step))
            for i in range(n)]
