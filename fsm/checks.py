"""Argument checks shared by every public constructor: one wording for every mistake.

A careless argument must fail where it is given, naming the argument, what is allowed
and what came instead: ``Heartbeat.interval must be a finite number of seconds > 0, got
inf``. Accepting it silently moves the failure to the worst place: an infinite interval
never probes, a fractional outbox limit compares oddly forever, a negative timeout
closes at once. Booleans are refused where numbers are meant (``True`` is an ``int`` in
Python, never what a caller meant).
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["count", "seconds"]


def seconds(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """``value`` as finite seconds, ``> 0`` (``>= 0`` with ``allow_zero``)."""
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a finite number of seconds {bound}, got "
                        f"{type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
    return float(value)


def count(name: str, value: Any, *, minimum: int = 1, what: str = "") -> int:
    """``value`` as an ``int >= minimum`` (``what`` names the unit, e.g. "messages")."""
    unit = f" ({what})" if what else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}{unit}, got "
                        f"{type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{unit}, got {value!r}")
    return value
