"""Heartbeat policy: how long a live link may stay silent, as deadlines only.

Two numbers bound detection of a dead or half-open peer. After ``interval`` s without
*any* frame (data, pong, anything), the link probes (``ONLINE -> WAITING``); after
``timeout`` s more without a frame, the peer is declared dead (``WAITING -> STALE``) and
the transport is aborted at once, with no closing handshake to wait for. So a frozen peer
is detected at most ``interval + timeout`` after it was last heard, plus one scheduling
tick. (websockets counts only the matching pong and then waits ``close_timeout`` for a
close handshake a dead peer will never answer: at 1 s / 1 s a frozen peer took it a median
11.58 s from the freeze against tether's 1.57 s, ``make bench`` ``detect``.)

A timer that fires late is not evidence against the peer: when the deadline is noticed
more than ``stall_grace`` s after it passed, the local event loop was stalled (agent
runtimes block it), the peer may have been talking all along, and its pong to a probe we
never sent cannot exist. The link then sends a fresh probe and waits ``timeout`` again.
"""

from __future__ import annotations

from dataclasses import dataclass

from fsm.checks import seconds

__all__ = ["Heartbeat"]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """``Heartbeat(interval=5.0, timeout=5.0)``.

    Defaults: 5 s / 5 s detects a dead studio within 10 s, far inside a human's patience
    and Engine.IO's 45 s, while a probe every 5 s of silence costs nothing on loopback or
    a LAN. ``stall_grace`` defaults to a quarter of ``timeout``: a timer later than that
    was held up by our own loop, not by the peer.
    """

    interval: float = 5.0
    timeout: float = 5.0
    stall_grace: float | None = None

    def __post_init__(self) -> None:
        seconds("Heartbeat.interval", self.interval)
        seconds("Heartbeat.timeout", self.timeout)
        if self.stall_grace is not None:
            seconds("Heartbeat.stall_grace", self.stall_grace)

    @property
    def grace(self) -> float:
        """How late a timer may fire before the core calls it a local stall."""
        return self.stall_grace if self.stall_grace is not None else self.timeout / 4

    @property
    def bound(self) -> float:
        """Longest silence a live state tolerates: ``interval + timeout``."""
        return self.interval + self.timeout

    def silence_deadline(self, last_heard: float) -> float:
        """When ONLINE turns WAITING if nothing more is heard."""
        return last_heard + self.interval

    def probe_deadline(self, probe_base: float) -> float:
        """When WAITING turns STALE: ``timeout`` after the probe's base time. On time, the
        base is the silence deadline itself, so the bound is exactly ``interval + timeout``
        after the peer was last heard; after a stall, the base is the moment we woke."""
        return probe_base + self.timeout
