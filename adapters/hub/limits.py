"""The hub's bounds (:class:`Limits`), each checked as given (with :mod:`fsm.checks`).

Every bound has a default with its reason, and every argument is checked when it is
given, with an error that names it and says what is allowed: a hub that silently accepts
``ack_every=0`` or ``max_frame=10`` fails much later, far from the mistake.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from fsm.checks import count, seconds
from fsm.protocol import DEFAULT_MAX_FRAME

__all__ = ["MIN_FRAME", "Limits"]

#: The smallest ``max_frame`` that carries a ``welcome`` (session id, token, epoch and
#: limits take about 200 bytes) and an ``error`` with a useful message.
MIN_FRAME = 512
KiB, MiB = 2**10, 2**20


@dataclass(frozen=True, slots=True)
class Limits:
    """What the hub accepts and holds. Defaults, with their reasons:

    Frames and flow (protocol section 4.9):

    * ``max_frame`` (1 MiB, at least 512): every frame, both ways; ``hub.send`` refuses
      data that would not fit. Frames up to twice that are read and answered ``error
      too_big``; larger ones are cut off by websockets (close 1009) unbuffered.
    * ``max_inflight`` (1000): unacknowledged client messages, announced in ``welcome``.
    * ``read_ahead`` (4 MiB): characters of client messages read but not yet delivered,
      per connection; beyond it the hub stops reading until the handler catches up (the
      session still counts as heard: rule 2 of :mod:`fsm.presence`).
    * ``outbox`` (1000 messages) and ``outbox_bytes`` (16 MiB): each session's
      unacknowledged server messages; a send beyond either raises ``OutboxFull``.
    * ``write_buffer`` (1 MiB): bytes a connection may have waiting in its socket buffer
      (websockets answers RFC 6455 pings on its own); beyond it the client is not
      reading: the connection is dropped, the session kept.

    Trust (who may hold what; see the README's trust model):

    * ``max_sessions`` (10,000): sessions in all. ``sessions_per_owner`` (100): per
      principal on an authenticating hub, per remote address on an anonymous one. At a
      cap, a disconnected session that never delivered anything gives way; if there is
      none, ``error busy``.
    * ``expire_empty`` (10 s): a session that never delivered anything is forgotten this
      long after it went stale (others after ``serve(expire_after=...)``).
    * ``hello_rate`` (20 a second): per principal when authenticating, else per remote
      address; beyond it ``error busy`` with ``retry_after``.
    * ``max_connections`` (10,000; lowered at start to stay clear of the process's file
      descriptor limit) and ``connections_per_address`` (256): open sockets.
      ``max_half_open`` (1024) and ``half_open_per_address`` (16): sockets whose
      ``hello`` has not been answered yet. A socket over a cap is dropped on accept.
    * ``handshake_timeout`` (5 s): TCP accept to WebSocket open (TLS and HTTP included).
      ``hello_timeout`` (5 s): WebSocket open to ``hello``.
    * ``retry_after`` (1 s): the hint sent with every ``busy``; also how long a delivery
      retries a busy store before it answers ``busy``.
    """

    max_frame: int = DEFAULT_MAX_FRAME
    max_inflight: int = 1000
    read_ahead: int = 4 * MiB
    outbox: int = 1000
    outbox_bytes: int = 16 * MiB
    write_buffer: int = 1 * MiB
    max_sessions: int = 10_000
    sessions_per_owner: int = 100
    expire_empty: float = 10.0
    hello_rate: int = 20
    max_connections: int = 10_000
    connections_per_address: int = 256
    max_half_open: int = 1024
    half_open_per_address: int = 16
    handshake_timeout: float = 5.0
    hello_timeout: float = 5.0
    retry_after: float = 1.0

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.type == "int":
                count(f"Limits.{spec.name}", value,
                            minimum=MIN_FRAME if spec.name == "max_frame" else 1)
            else:
                seconds(f"Limits.{spec.name}", value)
        for name in ("read_ahead", "outbox_bytes"):
            if getattr(self, name) < self.max_frame:
                raise ValueError(f"Limits.{name} ({getattr(self, name)}) must be at least "
                                 f"max_frame ({self.max_frame}): one message must fit")
