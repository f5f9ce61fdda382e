"""Log lines a hostile or faulty client could otherwise repeat thousands of times a second."""

from __future__ import annotations

import logging
import time
from typing import Any


class Throttled:
    """Logs through `logger` at most once per `every_s` seconds, saying how many lines it held back."""

    def __init__(self, logger: logging.Logger, every_s: float = 60.0) -> None:
        self.logger, self.every_s = logger, every_s
        self._last = -float("inf")
        self._held = 0

    def warning(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            self._held += 1
            return
        if self._held:
            message += f" (and {self._held} more like it since the last such line)"
        self._last, self._held = now, 0
        self.logger.warning(message, *args)
