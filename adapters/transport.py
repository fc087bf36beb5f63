"""The transport interface every adapter implements, and its error vocabulary.

A transport is one open, message-oriented connection to the peer. The driver
(:mod:`adapters.link`) never touches a socket; it asks a :class:`Dialer` for a
:class:`Transport` and uses these verbs:

========================  =============================================================
``await dial()``          open and handshake (Dialer); raise ``Refused``/``TimedOut``
``await send(frame)``     write one text or binary frame; raise on a dead transport
``await receive()``       next frame; raise ``Closed``/``Broken``/``RemoteProtocolError``
``receive_nowait()``      a frame already buffered, or ``None``: read before declaring a
                          peer dead after a loop stall
``await ping()``          send a probe; returns an awaitable that resolves to the round
                          trip time when the answer arrives
``await close()``         polite close with a closing handshake, bounded in time
``abort()``               drop the connection at once and release it; never raises
========================  =============================================================

Errors are those of :mod:`fsm.errors` (``Refused``, ``Closed``, ``Broken``, ``TimedOut``,
``RemoteProtocolError``): each adapter translates its library's exceptions into them, so
the core's classifier sees one vocabulary. Every transport passes the shared conformance
suite in ``tests/conformance.py``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import Protocol, runtime_checkable

from fsm.errors import Broken, Closed, Refused, RemoteProtocolError, TimedOut, TransportError

__all__ = [
    "Broken",
    "Closed",
    "Dialer",
    "Frame",
    "Refused",
    "RemoteProtocolError",
    "TimedOut",
    "Transport",
    "TransportError",
]

Frame = str | bytes


@runtime_checkable
class Transport(Protocol):
    """One open connection. Not reused after it closed or broke."""

    async def send(self, frame: Frame) -> None: ...

    async def receive(self) -> Frame: ...

    def receive_nowait(self) -> Frame | None: ...

    async def ping(self) -> Awaitable[float]: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...

    def abort(self) -> None: ...

    @property
    def closed(self) -> bool: ...


class Dialer(Protocol):
    """Opens transports to one peer. ``headers`` are evaluated per attempt by the link."""

    async def dial(self, headers: Mapping[str, str]) -> Transport: ...
