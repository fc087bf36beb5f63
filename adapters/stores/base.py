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
:class:`~adapters.stores.SQLiteStore` runs each call on its own thread. The interface is
shaped for a store shared by many hubs (a Redis store, issue 12): calls are independent
requests, wire numbers are assigned by the store inside the commit, and a store that
cannot answer now raises :class:`StoreBusy` (the hub turns it into a retryable ``busy``),
never blocks.

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
from typing import Any, Protocol

__all__ = [
    "ID_BYTES",
    "TOKEN_BYTES",
    "Commit",
    "Effect",
    "Outbound",
    "SessionRecord",
    "SessionStore",
    "StoreBusy",
    "Unauthorized",
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
    """

    now: float
    inbound: tuple[str, int] | None = None
    sends: Sequence[tuple[str, str]] = ()
    acked: Mapping[str, int] = field(default_factory=dict)
    effects: Sequence[Effect] = ()


class SessionStore(Protocol):
    """What the hub needs from a store. Every call is a coroutine and atomic: it does
    all it says or nothing (and raises). :class:`StoreBusy` means "nothing done, try
    again later"; any other exception is a failure the hub logs."""

    @property
    def epoch(self) -> str:
        """Changes exactly when the store lost its sessions."""
        ...

    async def create(self, now: float, principal: str | None = None
                     ) -> tuple[SessionRecord, str]:
        """A new session and its resume token (the only time the token exists in clear)."""
        ...

    async def resume(self, session_id: str, token: str) -> SessionRecord | None:
        """The session if the token matches; ``None`` if unknown; :class:`Unauthorized`
        if the token is wrong. Changes nothing (a read: it works while writers wait)."""
        ...

    async def get(self, session_id: str) -> SessionRecord | None: ...

    async def sessions(self) -> list[SessionRecord]: ...

    async def unacked(self, session_id: str) -> list[Outbound]:
        """The session's messages the client has not acknowledged, by wire number."""
        ...

    async def commit(self, commit: Commit) -> list[int | None]:
        """Record ``commit`` atomically, or nothing (and raise) if any part fails.
        Returns the wire number given to each send, in order; ``None`` for a send to a
        session the store no longer has (it expired meanwhile: the send is dropped).

        ``inbound`` must be the next ``seq`` (``last_in + 1``) of a session the store
        has; anything else is a bug in the caller (``ValueError``/``KeyError``)."""
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


def check_commit(commit: Commit, get: Callable[[str], SessionRecord | None]) -> None:
    """The invariants every store enforces before writing anything."""
    if commit.inbound is not None:
        session_id, seq = commit.inbound
        record = get(session_id)
        if record is None:
            raise KeyError(f"no session {session_id!r}")
        if seq != record.last_in + 1:
            raise ValueError(f"session {session_id}: delivery of seq {seq}, but last_in is "
                             f"{record.last_in}")
