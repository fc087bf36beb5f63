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
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from adapters.stores import Effect
from fsm.errors import OutboxFull
from fsm.presence import Presence, PresenceWatch
from fsm.protocol import Msg

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
        # inbound
        self._committed = record.last_in
        self._read = record.last_in
        self._inbox: deque[tuple[Msg, int]] = deque()
        self._inbox_size = 0
        self._duplicates = 0
        # outbound: (wire, text, bytes), contiguous by wire
        self._ledger: deque[tuple[int, str, int]] = deque()
        self._ledger_bytes = 0
        self._next_wire = record.next_wire  # the next wire number to arrive, in order
        self._early: dict[int, tuple[str, int]] = {}
        self._reserved = 0
        self._reserved_bytes = 0
        self._store_acked = record.acked_out
        for message in outbound:
            size = len(message.text.encode("utf-8"))
            self._ledger.append((message.wire, message.text, size))
            self._ledger_bytes += size
        # acknowledgements owed to the client
        self._ack_owed_since: float | None = None
        self._ack_forced = False
        self._ack_timer: asyncio.TimerHandle | None = None
        # the presence timer
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def __repr__(self) -> str:
        return (f"Session({self.id!r}, presence={self.presence.value!r}, "
                f"connected={self.connected}, last_in={self._committed}, "
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
        return self._committed

    @property
    def unacked(self) -> int:
        """Server messages committed for the client and not acknowledged yet."""
        return len(self._ledger) + len(self._early)

    @property
    def duplicates(self) -> int:
        """Replayed client messages dropped by ``seq`` (on this hub's watch)."""
        return self._duplicates

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
        return (self._committed == 0 and self._next_wire == 1 and not self._reserved
                and not self._early)

    @property
    def _busy(self) -> bool:
        """Client messages read and not yet delivered (rule 2 of fsm.presence)."""
        return bool(self._inbox)

    @property
    def _highest_wire(self) -> int:
        """The highest wire number the client can have seen: every lower one arrived."""
        return self._next_wire - 1

    def _reserve(self, size: int) -> None:
        """Room for one more message of ``size`` bytes, or ``OutboxFull``."""
        limits = self._hub.limits
        count = len(self._ledger) + len(self._early) + self._reserved + 1
        held = self._ledger_bytes + self._reserved_bytes + size
        if count > limits.outbox or held > limits.outbox_bytes:
            raise OutboxFull(
                f"session {self.id} holds {count - 1} unacknowledged or pending messages "
                f"({held - size} bytes); limits are {limits.outbox} messages and "
                f"{limits.outbox_bytes} bytes: message not accepted")
        self._reserved += 1
        self._reserved_bytes += size

    def _unreserve(self, size: int) -> None:
        self._reserved -= 1
        self._reserved_bytes -= size

    def _arrive(self, wire: int, text: str, size: int) -> None:
        """The store committed a message with ``wire``: hold it (in wire order) and let
        the connection write it. Cannot fail."""
        self._unreserve(size)
        if wire < self._next_wire:  # pragma: no cover (the store numbers each once)
            return
        self._early[wire] = (text, size)
        while self._next_wire in self._early:
            text, size = self._early.pop(self._next_wire)
            self._ledger.append((self._next_wire, text, size))
            self._ledger_bytes += size
            self._next_wire += 1
        if self._channel is not None:
            self._channel.poke()

    def _arrive_fetched(self, wire: int, text: str) -> None:
        """A message another hub committed for this client (read from a shared store):
        hold it like one of ours; one this hub has already is ignored."""
        if wire < self._next_wire or wire in self._early:
            return
        size = len(text.encode("utf-8"))
        self._reserved += 1  # _arrive gives back a reservation
        self._reserved_bytes += size
        self._arrive(wire, text, size)

    def _acknowledged(self, upto: int) -> None:
        """The client has every message up to ``upto``: forget them (memory now, the
        store with the next commit)."""
        while self._ledger and self._ledger[0][0] <= upto:
            _, _, size = self._ledger.popleft()
            self._ledger_bytes -= size
        if upto > self._store_acked:
            self._hub._ack_to_store(self, upto)
        if self._channel is not None and self._channel.window is not None:
            self._channel.poke()  # room in the client's window: more may flow

    @property
    def _client_acked(self) -> int:
        """The highest wire number the client acknowledged (everything below the first
        message still held)."""
        return self._ledger[0][0] - 1 if self._ledger else self._next_wire - 1

    def _message_after(self, sent: int) -> tuple[int, str] | None:
        """The first held message with a wire number above ``sent``."""
        if not self._ledger:
            return None
        index = max(0, sent + 1 - self._ledger[0][0])
        if index >= len(self._ledger):
            return None
        wire, text, _ = self._ledger[index]
        return wire, text

    def _ack_carried(self, ack: int) -> None:
        """A frame carrying ``ack`` was written: no standalone ack is owed up to it."""
        if ack >= self._committed:
            self._ack_owed_since = None
            self._ack_forced = False
            if self._ack_timer is not None:
                self._ack_timer.cancel()
                self._ack_timer = None

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._ack_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._ack_timer = None
        self._timer_at = float("inf")
