"""The hub's trust boundary: who may connect, how many, how fast; and calm logs.

* :class:`HandshakeRequest` is what ``serve(authenticate=...)`` sees of the opening
  handshake; :class:`Refuse` is how it says 401 or 403 with a reason.
* :class:`Guard` counts sockets (all, and per remote address; open, and half-open: not
  yet answered ``welcome``) and hellos (per principal, or per address on an anonymous
  hub), and says which cap a newcomer would break.
* :func:`connection_cap` keeps the socket cap below the process's file descriptor
  limit, so a flood meets our cap (one cheap refusal) instead of ``EMFILE``.
* :class:`RateLimitedLog` (a filter) and :class:`CalmLog` (a hub's own logger) keep
  repeated log lines (a refusal per flooding socket) to a few per period, with a count
  of what was held back.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adapters.hub.limits import Limits

__all__ = ["FD_RESERVE", "CalmLog", "Guard", "HandshakeRequest", "RateLimitedLog", "Refuse",
           "calm_accept_errors", "connection_cap"]

#: File descriptors kept for everything that is not a client socket (listening sockets,
#: the store's files, the loop's own, logs): an eighth of the limit, at least 16.
FD_RESERVE = 16


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """The opening handshake as ``authenticate`` sees it. ``headers`` is websockets'
    case-insensitive mapping (``headers.get("Authorization")``); ``address`` and
    ``port`` are the peer's. Its ``repr`` shows no header values."""

    path: str
    headers: Mapping[str, str] = field(repr=False)
    address: str
    port: int

    def bearer(self) -> str | None:
        """The token of an ``Authorization: Bearer TOKEN`` header, if there is one."""
        value = self.headers.get("Authorization", "")
        scheme, _, token = value.strip().partition(" ")
        return token.strip() or None if scheme.lower() == "bearer" else None


class Refuse(Exception):
    """Raised by ``authenticate`` to refuse a handshake with HTTP ``status`` (401: who
    are you?, 403: not you) and a short ``reason`` for the body (never a secret). The
    client treats both as fatal, naming the status."""

    def __init__(self, status: int = 401, reason: str = "") -> None:
        if status not in (401, 403):
            raise ValueError(f"Refuse status must be 401 or 403, got {status!r}")
        super().__init__(f"HTTP {status}: {reason}" if reason else f"HTTP {status}")
        self.status = status
        self.reason = reason


def connection_cap(wanted: int) -> int:
    """``wanted``, lowered to stay clear of RLIMIT_NOFILE (minus a reserve)."""
    try:
        import resource  # noqa: PLC0415 (POSIX only)
    except ImportError:  # pragma: no cover
        return wanted
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return wanted
    room = soft - max(FD_RESERVE, soft // 8)
    if room < 1:
        raise RuntimeError(f"the file descriptor limit ({soft}) leaves no room for "
                           f"connections; raise it (ulimit -n)")
    return min(wanted, room)


class Guard:
    """Socket and hello accounting. Not thread-safe: the hub's loop only."""

    def __init__(self, limits: Limits, max_connections: int) -> None:
        self.limits = limits
        self.max_connections = max_connections
        self.open = 0
        self.half_open = 0
        self._open_at: Counter[str] = Counter()
        self._half_open_at: Counter[str] = Counter()
        self._hellos: dict[str, deque[float]] = {}

    def __repr__(self) -> str:
        return f"Guard(open={self.open}, half_open={self.half_open})"

    def admit(self, address: str) -> str | None:
        """Count a new socket from ``address`` (half-open), or say which cap it breaks."""
        limits = self.limits
        if self.open >= self.max_connections:
            return f"{self.open} connections, the cap"
        if self._open_at[address] >= limits.connections_per_address:
            return f"{self._open_at[address]} connections from {address}, the cap per address"
        if self.half_open >= limits.max_half_open:
            return f"{self.half_open} connections waiting for their hello, the cap"
        if self._half_open_at[address] >= limits.half_open_per_address:
            return (f"{self._half_open_at[address]} connections from {address} waiting for "
                    f"their hello, the cap per address")
        self.open += 1
        self.half_open += 1
        self._open_at[address] += 1
        self._half_open_at[address] += 1
        return None

    def answered(self, address: str) -> None:
        """The socket's hello was answered: it is no longer half-open."""
        self.half_open -= 1
        self._decrement(self._half_open_at, address)

    def release(self, address: str, *, half_open: bool) -> None:
        """The socket closed."""
        self.open -= 1
        self._decrement(self._open_at, address)
        if half_open:
            self.answered(address)

    @staticmethod
    def _decrement(counter: Counter[str], key: str) -> None:
        counter[key] -= 1
        if counter[key] <= 0:
            del counter[key]

    def hello(self, key: str, now: float) -> bool:
        """Count a hello from ``key`` (a principal or an address): False if it exceeds
        ``hello_rate`` in the last second."""
        recent = self._hellos.setdefault(key, deque())
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        if len(recent) >= self.limits.hello_rate:
            return False
        recent.append(now)
        return True

    def forget_quiet(self, now: float) -> None:
        """Drop the hello counts of keys quiet for a second (housekeeping)."""
        for key in [k for k, t in self._hellos.items() if not t or t[-1] <= now - 1.0]:
            del self._hellos[key]


class RateLimitedLog(logging.Filter):
    """At most ``burst`` records per message template per ``period`` seconds, for records
    at ``level`` or above (DEBUG lines pass: whoever turns them on wants them all); the
    first record let through after a quiet spell says how many were held back."""

    def __init__(self, burst: int = 20, period: float = 10.0,
                 level: int = logging.INFO) -> None:
        super().__init__()
        self.burst, self.period, self.level = burst, period, level
        self._windows: dict[Any, tuple[float, int, int]] = {}  # start, passed, held

    def admit(self, key: Any) -> int | None:
        """``None``: hold this line back; else let it through, with the number of lines
        like it that were held back since the last one that passed."""
        now = time.monotonic()
        start, passed, held = self._windows.get(key, (now, 0, 0))
        if now - start >= self.period:
            self._windows[key] = (now, 1, 0)
            return held
        if passed < self.burst:
            self._windows[key] = (start, passed + 1, held)
            return 0
        self._windows[key] = (start, passed, held + 1)
        if len(self._windows) > 1000:  # templates are few; keep the map small anyway
            self._windows = {k: v for k, v in self._windows.items()
                             if now - v[0] < self.period}
        return None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level:
            return True
        held = self.admit((record.name, record.msg))
        if held is None:
            return False
        if held:
            record.msg = f"{record.msg} [{held} more like this held back]"
        return True


class CalmLog:
    """A logger whose INFO-and-above lines go through a :class:`RateLimitedLog` of this
    object's own: each hub keeps its own count, so one hub's flood never hides another
    hub's lines (nor one test's from the next)."""

    def __init__(self, logger: logging.Logger, burst: int = 20, period: float = 10.0) -> None:
        self.logger = logger
        self._limit = RateLimitedLog(burst, period)

    def _log(self, level: int, msg: str, args: tuple[Any, ...], exc_info: Any) -> None:
        if not self.logger.isEnabledFor(level):
            return
        if level >= self._limit.level:
            held = self._limit.admit(msg)
            if held is None:
                return
            if held:
                msg = f"{msg} [{held} more like this held back]"
        self.logger.log(level, msg, *args, exc_info=exc_info, stacklevel=3)

    def debug(self, msg: str, *args: Any) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(msg, *args, stacklevel=2)

    def info(self, msg: str, *args: Any) -> None:
        self._log(logging.INFO, msg, args, None)

    def warning(self, msg: str, *args: Any) -> None:
        self._log(logging.WARNING, msg, args, None)

    def error(self, msg: str, *args: Any, exc_info: Any = None) -> None:
        self._log(logging.ERROR, msg, args, exc_info)

    def exception(self, msg: str, *args: Any) -> None:
        self._log(logging.ERROR, msg, args, True)


class _AcceptErrors(logging.Filter):
    """asyncio logs "socket.accept() out of system resource" for *every* failed accept
    of a readiness event (up to the listen backlog, about a hundred, each second while
    out of file descriptors): thousands of lines a minute. Only those lines are
    rate-limited; every other asyncio record passes."""

    def __init__(self) -> None:
        super().__init__()
        self.calm = RateLimitedLog(burst=3, period=10.0, level=logging.DEBUG)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and \
                record.msg.startswith("socket.accept() out of system resource"):
            return self.calm.filter(record)
        return True


def calm_accept_errors() -> None:
    """Install the filter on the ``asyncio`` logger (once per process)."""
    target = logging.getLogger("asyncio")
    if not any(isinstance(f, _AcceptErrors) for f in target.filters):
        target.addFilter(_AcceptErrors())
