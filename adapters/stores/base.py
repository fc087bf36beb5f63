"""What every session store keeps, and the interface the hub drives (``SessionStore``).

A store keeps, per session: the id; the SHA-256 of the resume token (never the token);
the ``principal`` that opened it (``None`` on a hub without authentication); ``last_in``,
the highest client ``seq`` whose delivery was committed; ``next_wire``, the number the
next server-to-client message gets; the server-to-client messages the client has not
acknowledged yet (wire number and JSON text), for replay after a hub restart; and the
created / last-seen wall-clock times for expiry. It also keeps the server's ``epoch``.

**One transaction per delivery.** :meth:`SessionStore.commit` records, atomically, that a
client message was delivered (``last_in = seq``), every message the handler sent while
handling it (to any session; **the store numbers them**, each session's from its
``next_wire``), acknowledgements to trim, and the handler's own effects. The hub
acknowledges a client message only after this commit returned, so what it records
happens exactly once across a SIGKILL. See :mod:`adapters.hub` for the whole guarantee.

**Asynchronous on purpose.** Every method is a coroutine: a store must never block the
hub's event loop (heartbeats, pongs and every other session run on it).
:class:`~adapters.stores.MemoryStore` answers at once, in the loop;
:class:`~adapters.stores.SQLiteStore` runs each call on its own thread;
:class:`~adapters.stores.RedisStore` is shared by many hubs: calls are independent
requests, wire numbers are assigned by the store inside the commit, a resume
claims the session (:meth:`~SessionStore.claim`: fencing), every commit carries the checks of
:class:`Commit`, and a store that cannot answer now raises :class:`StoreBusy` (the hub
turns it into a retryable ``busy``), never blocks.

A store executes the calls of one hub in the order they were made. A store whose
coroutines never suspend (they answer in the loop, like ``MemoryStore``) may say so with
a class attribute ``immediate = True``; the hub then awaits its commits directly instead
of running each as a shielded task (that only protects an answer that arrives later).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Protocol

__all__ = [
    "ID_BYTES",
    "TOKEN_BYTES",
    "Commit",
    "CommitRefused",
    "Dropped",
    "Duplicate",
    "Effect",
    "EpochChanged",
    "Fenced",
    "Gap",
    "Outbound",
    "SessionGone",
    "SessionRecord",
    "SessionStore",
    "StoreBusy",
    "StoreLost",
    "Unauthorized",
    "Wire",
    "check_commit",
    "hash_token",
    "new_secrets",
]

#: Session ids: 12 random bytes, 16 URL-safe characters (the protocol allows 1-64).
ID_BYTES = 12
#: Resume tokens: 24 random bytes (192 bits; the protocol asks for at least 128), 32
#: URL-safe characters.
TOKEN_BYTES = 24

#: A handler's own effect, run inside the delivery's transaction: an
#: :class:`~adapters.stores.SQLiteStore` passes its connection (execute on it, never
#: commit or roll back; it runs **on the store's thread**, so it must not touch asyncio
#: objects); a :class:`~adapters.stores.MemoryStore` has no transaction to share and
#: passes ``None`` (in the loop). The result is ignored.
Effect = Callable[[sqlite3.Connection | None], object]


class Unauthorized(Exception):
    """The session exists but the token does not match; the session was not touched."""


class CommitRefused(Exception):
    """The store refused a commit and changed nothing: the hub's view of the session is
    out of date (another hub took it over, the store lost data, a new epoch began)."""


class Fenced(CommitRefused):
    """The session was taken over by another hub (its fencing ``generation`` is higher
    than the commit's): this hub must let go of it; its late commit changed nothing."""

    def __init__(self, session_id: str, mine: int, current: int) -> None:
        super().__init__(f"session {session_id} was taken over by another hub "
                         f"(generation {current}, this hub holds {mine}): commit refused")
        self.session_id = session_id


class EpochChanged(CommitRefused):
    """The store is in another epoch than the commit says (it lost its data and began
    anew, or a partial loss moved it on): every session of the old epoch is gone."""

    def __init__(self, expected: str, current: str) -> None:
        super().__init__(f"the store's epoch is {current!r}, the commit was made in "
                         f"{expected!r}: sessions of the old epoch are gone")
        self.expected = expected
        self.current = current


class StoreLost(CommitRefused):
    """The store is behind what it once acknowledged (a client acknowledged a message
    the store never sent, a wire number or ``last_in`` went backwards): it lost writes
    (no fsync, a failover to a lagging replica). The hub moves the store to a new epoch
    so that every client rebuilds."""


class SessionGone(CommitRefused, KeyError):
    """The commit's inbound session is not in the store (expired, or of an old epoch)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "session gone"


class Duplicate(CommitRefused, ValueError):
    """The inbound ``seq`` is already delivered (``seq <= last_in``)."""

    def __init__(self, message: str, last_in: int) -> None:
        super().__init__(message)
        self.last_in = last_in


class Gap(CommitRefused, ValueError):
    """The inbound ``seq`` is beyond ``last_in + 1``: the store is behind the hub."""

    def __init__(self, message: str, last_in: int) -> None:
        super().__init__(message)
        self.last_in = last_in


class Dropped(StrEnum):
    """A send the store did not take: its session is ``GONE`` (expired, or of an old
    epoch), or its outbox is ``FULL`` (a store shared by many hubs checks the bounds
    itself: sends from other hubs count too)."""

    GONE = "gone"
    FULL = "full"


#: What a commit gives each send: its wire number, or why it was dropped (``None`` is
#: accepted from stores written before :class:`Dropped` and read as ``GONE``).
Wire = int | Dropped | None


class StoreBusy(Exception):
    """The store cannot take the call now (an SQLite file locked by another process, a
    store that is unreachable): nothing was changed; the same call may succeed later.
    The hub answers ``error busy`` with ``retry_after`` and never acknowledges what was
    not committed."""


def hash_token(token: str) -> bytes:
    """What a store keeps instead of the token: its SHA-256 digest."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def new_secrets() -> tuple[str, str, bytes]:
    """A new session id, resume token, and the token's hash."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return secrets.token_urlsafe(ID_BYTES), token, hash_token(token)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A session as stored. ``token_hash`` stays out of ``repr``."""

    session_id: str
    token_hash: bytes = field(repr=False)
    last_in: int = 0
    next_wire: int = 1
    acked_out: int = 0
    created: float = 0.0
    last_seen: float = 0.0
    principal: str | None = None
    #: Fencing: raised by every :meth:`SessionStore.claim` (a hub taking the session
    #: over); a commit made under an older generation is refused (:class:`Fenced`).
    generation: int = 0
    #: The hub (``store.node``) that claimed it last; ``None`` for a session never held.
    node: str | None = None

    def matches(self, token: str) -> bool:
        """Constant-time comparison of ``token`` with the stored hash."""
        return hmac.compare_digest(self.token_hash, hash_token(token))


@dataclass(frozen=True, slots=True)
class Outbound:
    """One server-to-client message not yet acknowledged: wire number and JSON text."""

    wire: int
    text: str

    @property
    def data(self) -> Any:
        return json.loads(self.text)


@dataclass(frozen=True, slots=True)
class Commit:
    """What one store transaction records; see :meth:`SessionStore.commit`.

    ``inbound``: ``(session_id, seq)`` of the client message just delivered, or ``None``
    for sends made outside any delivery. ``sends``: ``(session_id, json_text)`` per
    message for a client, in order; the store gives each the next wire number of its
    session. ``acked``: ``{session_id: upto}``, acknowledged messages to forget.
    ``effects``: the handler's effects.

    The checks that keep many hubs honest (each optional; ``None`` skips it):
    ``generation``, the inbound session's fencing generation as this hub claimed it
    (:class:`Fenced` when another hub claimed it since); ``epoch``, the store's epoch as
    the hub knows it (:class:`EpochChanged`); ``floors``, ``{session_id: next_wire}``
    as the hub holds it: a store whose ``next_wire`` is lower forgot messages
    (:class:`StoreLost`). ``limits``: ``(messages, bytes)`` a session's unacknowledged
    outbox may hold; a send beyond them is :attr:`Dropped.FULL`. ``commit_id`` makes a
    retry of the same commit (the answer was lost with a connection) answer what the
    first attempt did instead of committing twice.
    """

    now: float
    inbound: tuple[str, int] | None = None
    sends: Sequence[tuple[str, str]] = ()
    acked: Mapping[str, int] = field(default_factory=dict)
    effects: Sequence[Effect] = ()
    generation: int | None = None
    epoch: str | None = None
    floors: Mapping[str, int] = field(default_factory=dict)
    limits: tuple[int, int] | None = None
    commit_id: str | None = None


class SessionStore(Protocol):
    """What the hub needs from a store. Every call is a coroutine and atomic: it does
    all it says or nothing (and raises). :class:`StoreBusy` means "nothing done, try
    again later"; any other exception is a failure the hub logs."""

    #: True for a store many hubs share (:class:`~adapters.stores.RedisStore`): the hub
    #: then loads sessions on resume, fences, and hears the other hubs.
    shared: ClassVar[bool]

    @property
    def epoch(self) -> str:
        """Changes exactly when the store lost its sessions."""
        ...

    @property
    def node(self) -> str:
        """This hub's name in the store (what :meth:`claim` records)."""
        ...

    async def create(self, now: float, principal: str | None = None
                     ) -> tuple[SessionRecord, str]:
        """A new session and its resume token (the only time the token exists in clear)."""
        ...

    async def resume(self, session_id: str, token: str) -> SessionRecord | None:
        """The session if the token matches; ``None`` if unknown; :class:`Unauthorized`
        if the token is wrong. Changes nothing (a read: it works while writers wait)."""
        ...

    async def claim(self, session_id: str, now: float
                    ) -> tuple[SessionRecord, list[Outbound]] | None:
        """Take the session over for this hub: raise its fencing generation, record
        :attr:`node` as its holder (a shared store tells the previous holder), and
        return the record and its unacknowledged messages; ``None`` if it is gone."""
        ...

    async def get(self, session_id: str) -> SessionRecord | None: ...

    async def sessions(self) -> list[SessionRecord]: ...

    async def unacked(self, session_id: str) -> list[Outbound]:
        """The session's messages the client has not acknowledged, by wire number."""
        ...

    async def commit(self, commit: Commit) -> list[Wire]:
        """Record ``commit`` atomically, or nothing (and raise) if any part fails.
        Returns the wire number given to each send, in order, or :class:`Dropped` for a
        send to a session the store no longer has (it expired meanwhile) or whose outbox
        is full (stores that check ``commit.limits``).

        ``inbound`` must be the next ``seq`` (``last_in + 1``) of a session the store
        has: else :class:`SessionGone` (a ``KeyError``), :class:`Duplicate` or
        :class:`Gap` (``ValueError``); the checks of :class:`Commit` raise
        :class:`Fenced`, :class:`EpochChanged`, :class:`StoreLost`."""
        ...

    async def touch(self, seen: Mapping[str, float]) -> None:
        """Record when each session was last heard from (wall-clock seconds)."""
        ...

    async def drop(self, session_ids: Sequence[str]) -> None: ...

    async def expire(self, before: float) -> list[str]:
        """Drop the sessions last seen before ``before``; return their ids."""
        ...

    async def aclose(self) -> None:
        """Release what the store holds; later calls raise ``RuntimeError``."""
        ...


def check_commit(commit: Commit, get: Callable[[str], SessionRecord | None],
                 epoch: str) -> None:
    """The invariants every store enforces before writing anything."""
    if commit.epoch is not None and commit.epoch != epoch:
        raise EpochChanged(commit.epoch, epoch)
    if commit.inbound is not None:
        session_id, seq = commit.inbound
        record = get(session_id)
        if record is None:
            raise SessionGone(f"no session {session_id!r}")
        if commit.generation is not None and commit.generation != record.generation:
            raise Fenced(session_id, commit.generation, record.generation)
        if seq <= record.last_in:
            raise Duplicate(f"session {session_id}: delivery of seq {seq}, but last_in is "
                            f"{record.last_in}", record.last_in)
        if seq != record.last_in + 1:
            raise Gap(f"session {session_id}: delivery of seq {seq}, but last_in is "
                      f"{record.last_in}", record.last_in)
    for session_id, floor in commit.floors.items():
        record = get(session_id)
        if record is not None and record.next_wire < floor:
            raise StoreLost(f"session {session_id}: the store's next wire number is "
                            f"{record.next_wire}, the hub already holds up to {floor - 1}")
    for session_id, upto in commit.acked.items():
        record = get(session_id)
        if record is not None and upto >= record.next_wire:
            raise StoreLost(f"session {session_id}: the client acknowledged {upto}, the "
                            f"store sent only up to {record.next_wire - 1}")
