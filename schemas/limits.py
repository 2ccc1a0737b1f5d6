"""Request rates as a deployment writes them: ``20/s burst=60``, ``600/m``, ``off``.

A `Rate` is a token bucket's two numbers: how fast tokens come back (`per_s`) and how
many the bucket holds (`burst`, the most requests let through at once after a quiet
spell). ``N/unit`` alone lets N through at once, then N per unit: the burst is one
unit's worth, so ``600/m`` is 600 at once or 10 a second, never more than 600 in the
first minute. ``burst=B`` sets it apart: ``20/s burst=60`` lets a page load through
and holds a loop to 20 a second.

Pure (no I/O): the settings parse it, the gateway's limiter (``redis_ratelimit``) uses it
and answers a `Verdict`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["OFF", "Rate", "Verdict", "parse_rate", "retry_after_s"]

OFF = "off"
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(
    r"(?P<count>\d+(?:\.\d+)?)\s*/\s*(?P<unit>[smh])(?:[\s,]+burst\s*=\s*(?P<burst>\d+))?"
)
_FORM = "write N/s, N/m or N/h, optionally with burst=B (20/s burst=60), or off"
# A bucket larger than this is no limit; a typo such as 20/s burst=6000000 is refused.
_MAX_BURST = 1_000_000


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket: `burst` tokens at most, `count` back every `unit` (s, m or h)."""

    count: float
    unit: str
    burst: int

    def __post_init__(self) -> None:
        if self.unit not in _UNITS:
            raise ValueError(f"unit {self.unit!r} is none of s, m, h: {_FORM}")
        if not (self.count > 0 and math.isfinite(self.count)):
            raise ValueError(f"a rate must be above 0, not {self.count!r}: {_FORM}")
        if not 1 <= self.burst <= _MAX_BURST:
            raise ValueError(
                f"burst={self.burst} must be between 1 and {_MAX_BURST}: it is how many "
                f"requests are let through at once"
            )

    @property
    def per_s(self) -> float:
        """Tokens back per second."""
        return self.count / _UNITS[self.unit]

    @property
    def per_ms(self) -> float:
        """Tokens back per millisecond (the unit of Redis's clock in the limiter)."""
        return self.per_s / 1000.0

    def __str__(self) -> str:
        # Read back by `parse_rate` as the same rate (`chatlog config`, child processes).
        count = f"{self.count:.0f}" if float(self.count).is_integer() else repr(float(self.count))
        return f"{count}/{self.unit} burst={self.burst}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """A limiter's answer to one request: whether it may pass; if not, how long until it
    would (ms) and whose bucket is empty (``user`` or ``tenant``)."""

    allowed: bool
    retry_after_ms: int = 0
    scope: str | None = None


def parse_rate(value: object) -> Rate | None:
    """A `Rate` from ``N/unit [burst=B]``; None (no limit) from ``off`` or ``0``.

    Raises `ValueError` naming the accepted forms; a `Rate` (or None) is taken as it is.
    """
    if value is None or isinstance(value, Rate):
        return value
    text = str(value).strip().lower()
    if text in (OFF, "0", "none"):
        return None
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError(f"{value!r} is not a rate: {_FORM}")
    count = float(match["count"])
    if count == 0:
        return None
    burst = int(match["burst"]) if match["burst"] else max(1, math.floor(count))
    return Rate(count=count, unit=match["unit"], burst=burst)


def retry_after_s(wait_ms: int) -> int:
    """What ``Retry-After`` says for a wait of `wait_ms`: whole seconds, rounded up, at
    least 1 (the header has no fractions, and a client told 0 would retry at once)."""
    return max(1, math.ceil(wait_ms / 1000))
