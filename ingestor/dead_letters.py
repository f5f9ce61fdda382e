"""Dead letters: what was rejected and why, at a bounded cost whatever is sent.

One letter per message (an HTTP request, an MQTT message), with the errors of all its rejected
items inside: a message of 6,000 bad readings is one row, not 6,000 copies of itself. The payload
is kept up to MAX_PAYLOAD_BYTES, with the whole payload's size and SHA-256, and a farm may fill at
most `bytes_per_hour` of dead letters an hour: past that its letters are counted, not stored.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from .logs import Throttled

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 64 << 10  # enough to see what was wrong
MAX_ERRORS = 100  # item errors kept per letter; the rest are counted
# Farms whose hourly spend is tracked at once; beyond it (an attacker inventing farm ids over
# anonymous MQTT) further farms share the unknown farm's allowance.
MAX_TRACKED_FARMS = 10_000

Letter = tuple  # in DEAD_LETTERS column order


def letter(channel: str, source: str, payload: bytes | str, errors: Sequence[dict[str, Any]],
           farm_id: int | None = None) -> Letter:
    """A dead-letter row: the payload's bounded prefix as text (bad bytes escaped, NUL spelled
    out), its full size and hash, and at most MAX_ERRORS errors (with how many more there were)."""
    data = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else bytes(payload)
    text = data[:MAX_PAYLOAD_BYTES].decode("utf-8", "backslashreplace").replace("\x00", "\\x00")
    if len(data) > MAX_PAYLOAD_BYTES:
        text += f"...[{len(data) - MAX_PAYLOAD_BYTES} more bytes]"
    kept = list(errors[:MAX_ERRORS])
    if len(errors) > MAX_ERRORS:
        kept.append({"field": None, "error": f"...and {len(errors) - MAX_ERRORS} more errors"})
    return (datetime.now(UTC), channel, source, text, msgspec.json.encode(kept).decode(), len(data),
            hashlib.sha256(data).hexdigest(), farm_id)


def cost(row: Letter) -> int:
    """What a letter costs the farm's hourly allowance: the text stored."""
    return len(row[3]) + len(row[4])


class Allowance:
    """Dead-letter bytes per farm per clock hour; a letter past its farm's allowance is dropped."""

    def __init__(self, bytes_per_hour: int) -> None:
        self.bytes_per_hour = bytes_per_hour
        self._hour = -1
        self._spent: dict[int | None, int] = {}
        self._log = Throttled(log)

    def admit(self, row: Letter) -> bool:
        hour = int(time.time() // 3600)
        if hour != self._hour:
            self._hour, self._spent = hour, {}
        farm = row[7] if row[7] in self._spent or len(self._spent) < MAX_TRACKED_FARMS else None
        spent = self._spent.get(farm, 0) + cost(row)
        if spent > self.bytes_per_hour:
            self._log.warning("farm %s sent more than %d bytes of rejected input this hour: its dead letters are "
                              "counted, not stored, until the hour ends", farm, self.bytes_per_hour)
            return False
        self._spent[farm] = spent
        return True
