"""One client session as the hub holds it; the handler's view of its peer.

A :class:`Session` keeps, for its client:

* **inbound**: ``last_in`` (the highest ``seq`` whose delivery is committed), the highest
  ``seq`` read on the current connection, and the messages read but not yet delivered
  (bounded by ``Limits.read_ahead``);
* **outbound**: every message the client has not acknowledged, *once*, as the JSON text
  the store committed, with its wire number; frames are built around that text when
  the socket can take them (:class:`adapters.hub.wire.Channel`). Room is reserved when a
  message is *sent* (``OutboxFull`` is raised to the sender, never at the commit), and
  the store's answers may come back in any order: a message is held until every lower
  wire number arrived, so the client sees them in order;
* **presence**: a :class:`fsm.presence.PresenceWatch`, driven by the hub.

The decisions are the pure pieces of :mod:`fsm.serving` (:class:`~fsm.serving.Intake`,
:class:`~fsm.serving.Ledger`, :class:`~fsm.serving.AckClock`); this class holds them
with what only the driver has (the connection, the timers, the lock).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from adapters.stores import Effect
from fsm.presence import Presence, PresenceWatch
from fsm.protocol import Msg
from fsm.serving import AckClock, Intake, Ledger

if TYPE_CHECKING:
    from adapters.hub.server import Hub
    from adapters.hub.wire import Channel
    from adapters.stores import Outbound, SessionRecord

__all__ = ["Session"]


class Session:
    """One client session held by the hub (see the module docstring).

    ``send(data)`` sends a message to this client (:meth:`Hub.send`); ``record(effect)``
    adds an effect to the transaction that will record the delivery being handled. The
    ``repr`` shows no secret (the hub never holds the token after the ``welcome``).
    """

    def __init__(self, hub: Hub, record: SessionRecord, watch: PresenceWatch,
                 outbound: list[Outbound], owner: str) -> None:
        self.id = record.session_id
        self.created = record.created
        #: Who opened the session (what ``authenticate`` returned; ``None``: anonymous).
        self.principal = record.principal
        #: Client messages delivered by this hub (committed).
        self.delivered = 0
        self._hub = hub
        self._generation = record.generation  # fencing: what this hub's commits carry
        self._epoch = hub.epoch  # the store's epoch when this hub took the session
        self._fetching = self._fetch_again = False  # reading other hubs' sends (shared)
        self._owner = owner  # quota key: "principal:..." or "address:..." ("" unknown)
        self._watch = watch
        self._channel: Channel | None = None
        self._lock = asyncio.Lock()  # one delivery (or resume) at a time
        # inbound: the protocol's decisions, and the messages read, not yet delivered
        self._intake = Intake(committed=record.last_in, read=record.last_in)
        self._inbox: deque[tuple[Msg, int]] = deque()
        self._inbox_size = 0
        # outbound: every message the client has not acknowledged, held once
        self._out = Ledger.load((hub.limits.outbox, hub.limits.outbox_bytes),
                                record.next_wire, [(m.wire, m.text) for m in outbound])
        self._store_acked = record.acked_out
        # acknowledgements owed to the client
        self._acks = AckClock(hub.ack_delay, hub.ack_every)
        self._ack_timer: asyncio.TimerHandle | None = None
        # the presence timer
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def __repr__(self) -> str:
        return (f"Session({self.id!r}, presence={self.presence.value!r}, "
                f"connected={self.connected}, last_in={self.last_in}, "
                f"unacked={self.unacked})")

    # -- the handler's view ----------------------------------------------------------------------

    @property
    def presence(self) -> Presence:
        return self._watch.presence

    @property
    def connected(self) -> bool:
        return self._channel is not None

    @property
    def last_in(self) -> int:
        """Highest client ``seq`` whose delivery is committed."""
        return self._intake.committed

    @property
    def unacked(self) -> int:
        """Server messages committed for the client and not acknowledged yet."""
        return self._out.unacked

    @property
    def duplicates(self) -> int:
        """Replayed client messages dropped by ``seq`` (on this hub's watch)."""
        return self._intake.duplicates

    def send(self, data: Any) -> asyncio.Future[None]:
        """Send ``data`` (any JSON value) to this client; see :meth:`Hub.send`."""
        return self._hub.send(self.id, data)

    def record(self, effect: Effect) -> None:
        """Run ``effect`` inside the transaction that records the delivery being handled
        (the message whose handler is running in this task). With :class:`SQLiteStore` it
        gets the ``sqlite3.Connection``, **on the store's thread** (execute; never commit;
        touch no asyncio object); with :class:`MemoryStore`, ``None``, in the loop.
        Raises ``RuntimeError`` outside a handler."""
        self._hub._record(effect)

    # -- what the hub uses -------------------------------------------------------------------------

    @property
    def _empty(self) -> bool:
        """Nothing delivered either way, ever: nothing to lose if it is forgotten."""
        return self.last_in == 0 and self._out.next_wire == 1 and not self._out.pending

    @property
    def _busy(self) -> bool:
        """Client messages read and not yet delivered (rule 2 of fsm.presence)."""
        return bool(self._inbox)

    @property
    def _next_wire(self) -> int:
        return self._out.next_wire

    @property
    def _ledger(self) -> deque[tuple[int, str, int]]:
        return self._out.held

    @property
    def _reserved(self) -> int:
        return self._out.reserved

    @property
    def _reserved_bytes(self) -> int:
        return self._out.reserved_bytes

    def _reserve(self, size: int) -> None:
        """Room for one more message of ``size`` bytes, or ``OutboxFull``."""
        self._out.reserve(size, self.id)

    def _unreserve(self, size: int) -> None:
        self._out.unreserve(size)

    def _arrive(self, wire: int, text: str, size: int) -> None:
        """The store committed a message with ``wire``: hold it (in wire order) and let
        the connection write it. Cannot fail."""
        if self._out.arrive(wire, text, size) and self._channel is not None:
            self._channel.poke()

    def _arrive_fetched(self, wire: int, text: str) -> None:
        """A message another hub committed for this client (read from a shared store):
        hold it like one of ours; one this hub has already is ignored."""
        if self._out.found(wire, text) and self._channel is not None:
            self._channel.poke()

    def _acknowledged(self, upto: int) -> None:
        """The client has every message up to ``upto`` (checked): forget them (memory
        now, the store with the next commit)."""
        self._out.acknowledge(upto)
        if upto > self._store_acked:
            self._hub._ack_to_store(self, upto)
        if self._channel is not None and self._channel.window is not None:
            self._channel.poke()  # room in the client's window: more may flow

    def _message_after(self, sent: int) -> tuple[int, str] | None:
        """The first held message above ``sent`` the client's window lets out now."""
        window = self._channel.window if self._channel is not None else None
        return self._out.message_after(sent, window)

    def _ack_carried(self, ack: int) -> None:
        """A frame carrying ``ack`` was written: no standalone ack is owed up to it."""
        if self._acks.carried(ack, self.last_in) and self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._ack_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._ack_timer = None
        self._timer_at = float("inf")
