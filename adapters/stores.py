"""Session stores for the hub (``models/PROTOCOL.md`` section 2): what survives a restart.

A store keeps, per session: the id; the SHA-256 of the resume token (never the token);
``last_in``, the highest client ``seq`` whose delivery was committed; ``next_wire``, the
number the next server-to-client message gets; the server-to-client messages the client
has not acknowledged yet (wire number and JSON text), for replay after a hub restart; and
the created / last-seen wall-clock times for expiry. It also keeps the server's ``epoch``.

**One transaction per delivery.** :meth:`SessionStore.commit` records, atomically, that a
client message was delivered (``last_in = seq``), every message the handler sent while
handling it (to any session, with their wire numbers), and the handler's own effects
(callables run inside the same transaction; an :class:`SQLiteStore` hands them its
``sqlite3.Connection``). The hub acknowledges a client message only after this commit
returned, so what the commit records happens exactly once across a SIGKILL: before the
commit, nothing is recorded and the client replays the message; after it, the replay is a
duplicate by ``seq``. See :mod:`adapters.hub` for the guarantee as a whole.

**Sync on purpose.** Every method is one short transaction on a local file: the hub must
not acknowledge before the commit returns anyway, so running it in a thread would only
add a hop and let two commits race for the same ``next_wire``; and ``sqlite3`` connections
belong to one thread. The price: a commit blocks the event loop for one WAL append (plus
one ``fsync`` with ``synchronous=FULL``, about a millisecond on an SSD). A hub that needs
more than some hundreds of deliveries a second would group commits; this reference one
does not.

:class:`MemoryStore` lives and dies with the process: its epoch is fresh per instance, so
a restarted hub tells every client it lost their sessions. :class:`SQLiteStore` persists
everything, its epoch included, so a hub restarted on the same file resumes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = [
    "ID_BYTES",
    "TOKEN_BYTES",
    "Commit",
    "Effect",
    "MemoryStore",
    "Outbound",
    "SQLiteStore",
    "SessionRecord",
    "SessionStore",
    "Unauthorized",
    "hash_token",
]

#: Session ids: 12 random bytes, 16 URL-safe characters (the protocol allows 1-64).
ID_BYTES = 12
#: Resume tokens: 24 random bytes (192 bits; the protocol asks for at least 128), 32
#: URL-safe characters.
TOKEN_BYTES = 24

#: A handler's own effect, run inside the delivery's transaction: an :class:`SQLiteStore`
#: passes its connection (execute on it, never commit or roll back); a
#: :class:`MemoryStore` has no transaction to share and passes ``None``. The result is
#: ignored.
Effect = Callable[[sqlite3.Connection | None], object]


class Unauthorized(Exception):
    """The session exists but the token does not match; the session was not touched."""


def hash_token(token: str) -> bytes:
    """What a store keeps instead of the token: its SHA-256 digest."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def _new_secrets() -> tuple[str, str, bytes]:
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


@dataclass(slots=True)
class Commit:
    """What one store transaction records; see :meth:`SessionStore.commit`.

    ``inbound``: ``(session_id, seq)`` of the client message just delivered, or ``None``
    for a send made outside any delivery. ``sends``: ``(session_id, wire, json_text)``
    per message accepted for a client, wire numbers contiguous per session from its
    ``next_wire``. ``acked``: ``(session_id, upto)`` to trim acknowledged messages in the
    same transaction. ``effects``: the handler's effects.
    """

    now: float
    inbound: tuple[str, int] | None = None
    sends: Sequence[tuple[str, int, str]] = ()
    acked: tuple[str, int] | None = None
    effects: Sequence[Effect] = ()


class SessionStore(Protocol):
    """What the hub needs from a store. Every method is synchronous and atomic."""

    @property
    def epoch(self) -> str:
        """Changes exactly when the store lost its sessions."""
        ...

    def create(self, now: float) -> tuple[SessionRecord, str]:
        """A new session and its resume token (the only time the token exists in clear)."""
        ...

    def resume(self, session_id: str, token: str, now: float) -> SessionRecord | None:
        """The session if the token matches (``last_seen`` becomes ``now``); ``None`` if
        unknown; :class:`Unauthorized`, with nothing changed, if the token is wrong."""
        ...

    def get(self, session_id: str) -> SessionRecord | None: ...

    def sessions(self) -> list[SessionRecord]: ...

    def unacked(self, session_id: str) -> list[Outbound]:
        """The session's messages the client has not acknowledged, by wire number."""
        ...

    def commit(self, commit: Commit) -> None:
        """Record ``commit`` atomically, or nothing (and raise) if any part fails.

        ``inbound`` must be the next ``seq`` (``last_in + 1``) and each send the next wire
        number of its session; anything else is a bug in the caller (``ValueError``)."""
        ...

    def ack(self, session_id: str, upto: int) -> None:
        """The client has every message up to wire ``upto``: forget them."""
        ...

    def touch(self, seen: Mapping[str, float]) -> None:
        """Record when each session was last heard from (wall-clock seconds)."""
        ...

    def drop(self, session_ids: Sequence[str]) -> None: ...

    def expire(self, before: float) -> list[str]:
        """Drop the sessions last seen before ``before``; return their ids."""
        ...

    def close(self) -> None: ...


@dataclass(slots=True)
class _Entry:
    record: SessionRecord
    outbound: dict[int, str] = field(default_factory=dict)  # wire -> JSON text


def _check_commit(commit: Commit, get: Callable[[str], SessionRecord | None]) -> None:
    """The invariants both stores enforce before writing anything."""
    if commit.inbound is not None:
        session_id, seq = commit.inbound
        record = get(session_id)
        if record is None:
            raise KeyError(f"no session {session_id!r}")
        if seq != record.last_in + 1:
            raise ValueError(f"session {session_id}: delivery of seq {seq}, but last_in is "
                             f"{record.last_in}")
    expected: dict[str, int] = {}
    for session_id, wire, _ in commit.sends:
        if session_id not in expected:
            record = get(session_id)
            if record is None:
                raise KeyError(f"no session {session_id!r}")
            expected[session_id] = record.next_wire
        if wire != expected[session_id]:
            raise ValueError(f"session {session_id}: send with wire {wire}, expected "
                             f"{expected[session_id]}")
        expected[session_id] += 1


class MemoryStore:
    """Sessions in a dict: they live as long as this object. Fresh epoch per instance."""

    def __init__(self) -> None:
        self._epoch = secrets.token_urlsafe(9)
        self._entries: dict[str, _Entry] = {}

    def __repr__(self) -> str:
        return f"MemoryStore(epoch={self._epoch!r}, sessions={len(self._entries)})"

    @property
    def epoch(self) -> str:
        return self._epoch

    def create(self, now: float) -> tuple[SessionRecord, str]:
        session_id, token, digest = _new_secrets()
        record = SessionRecord(session_id, digest, created=now, last_seen=now)
        self._entries[session_id] = _Entry(record)
        return record, token

    def resume(self, session_id: str, token: str, now: float) -> SessionRecord | None:
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        if not entry.record.matches(token):
            raise Unauthorized(f"wrong token for session {session_id}")
        entry.record = replace(entry.record, last_seen=now)
        return entry.record

    def get(self, session_id: str) -> SessionRecord | None:
        entry = self._entries.get(session_id)
        return entry.record if entry is not None else None

    def sessions(self) -> list[SessionRecord]:
        return [entry.record for entry in self._entries.values()]

    def unacked(self, session_id: str) -> list[Outbound]:
        entry = self._entries.get(session_id)
        if entry is None:
            return []
        return [Outbound(wire, text) for wire, text in sorted(entry.outbound.items())]

    def commit(self, commit: Commit) -> None:
        _check_commit(commit, self.get)
        for effect in commit.effects:  # first: if one raises, nothing was changed
            effect(None)
        if commit.inbound is not None:
            session_id, seq = commit.inbound
            entry = self._entries[session_id]
            entry.record = replace(entry.record, last_in=seq, last_seen=commit.now)
        for session_id, wire, text in commit.sends:
            entry = self._entries[session_id]
            entry.outbound[wire] = text
            entry.record = replace(entry.record, next_wire=wire + 1)
        if commit.acked is not None:
            self.ack(*commit.acked)

    def ack(self, session_id: str, upto: int) -> None:
        entry = self._entries.get(session_id)
        if entry is None or upto <= entry.record.acked_out:
            return
        for wire in [w for w in entry.outbound if w <= upto]:
            del entry.outbound[wire]
        entry.record = replace(entry.record, acked_out=upto)

    def touch(self, seen: Mapping[str, float]) -> None:
        for session_id, when in seen.items():
            entry = self._entries.get(session_id)
            if entry is not None:
                entry.record = replace(entry.record, last_seen=when)

    def drop(self, session_ids: Sequence[str]) -> None:
        for session_id in session_ids:
            self._entries.pop(session_id, None)

    def expire(self, before: float) -> list[str]:
        gone = [sid for sid, e in self._entries.items() if e.record.last_seen < before]
        self.drop(gone)
        return gone

    def close(self) -> None:
        """Nothing to release; the sessions stay readable until the object goes."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id         TEXT PRIMARY KEY,
    token_hash BLOB NOT NULL,
    last_in    INTEGER NOT NULL,
    next_wire  INTEGER NOT NULL,
    acked_out  INTEGER NOT NULL,
    created    REAL NOT NULL,
    last_seen  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbound (
    session TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    wire    INTEGER NOT NULL,
    data    TEXT NOT NULL,
    PRIMARY KEY (session, wire)
) WITHOUT ROWID;
"""
_COLUMNS = "id, token_hash, last_in, next_wire, acked_out, created, last_seen"


class SQLiteStore:
    """Sessions in an SQLite file (WAL journal): they survive the process.

    Durability: every method commits before it returns, and the hub acknowledges only
    after that. In WAL mode a committed transaction is in the WAL file, that is in the
    kernel, the moment ``COMMIT`` returns, so it survives SIGKILL of the process with
    ``synchronous`` FULL *or* NORMAL. They differ on power loss or a kernel crash: FULL
    (the default) ``fsync``s the WAL on every commit and keeps every acknowledged
    transaction; NORMAL syncs only at checkpoints and may lose the last transactions,
    which then breaks exactly-once for the messages they covered (the client, told they
    were delivered, will not replay them). Choose NORMAL only where the hub is the thing
    that crashes, not the machine.

    The epoch is created with the database and stored in it: a hub restarted on the same
    file keeps its epoch; a new file (the old one lost) gets a new one.
    """

    def __init__(self, path: str | Path, *,
                 synchronous: Literal["FULL", "NORMAL"] = "FULL") -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        # Autocommit mode: every transaction is an explicit BEGIN IMMEDIATE ... COMMIT.
        self._db = sqlite3.connect(self.path, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA foreign_keys=ON")
            with self._transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', ?)",
                                 (secrets.token_urlsafe(9),))
            row = self._db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
        except BaseException:
            self._db.close()
            raise
        self._epoch: str = row[0]

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}, epoch={self._epoch!r})"

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    @property
    def epoch(self) -> str:
        return self._epoch

    @staticmethod
    def _record(row: tuple[Any, ...]) -> SessionRecord:
        return SessionRecord(row[0], bytes(row[1]), int(row[2]), int(row[3]), int(row[4]),
                             float(row[5]), float(row[6]))

    def create(self, now: float) -> tuple[SessionRecord, str]:
        session_id, token, digest = _new_secrets()
        record = SessionRecord(session_id, digest, created=now, last_seen=now)
        with self._transaction() as db:
            db.execute(f"INSERT INTO sessions ({_COLUMNS}) VALUES (?, ?, 0, 1, 0, ?, ?)",
                       (session_id, digest, now, now))
        return record, token

    def resume(self, session_id: str, token: str, now: float) -> SessionRecord | None:
        record = self.get(session_id)
        if record is None:
            return None
        if not record.matches(token):
            raise Unauthorized(f"wrong token for session {session_id}")
        with self._transaction() as db:
            db.execute("UPDATE sessions SET last_seen=? WHERE id=?", (now, session_id))
        return replace(record, last_seen=now)

    def get(self, session_id: str) -> SessionRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM sessions WHERE id=?",
                               (session_id,)).fetchone()
        return self._record(row) if row is not None else None

    def sessions(self) -> list[SessionRecord]:
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM sessions ORDER BY created").fetchall()
        return [self._record(row) for row in rows]

    def unacked(self, session_id: str) -> list[Outbound]:
        rows = self._db.execute("SELECT wire, data FROM outbound WHERE session=? ORDER BY wire",
                                (session_id,)).fetchall()
        return [Outbound(int(wire), str(data)) for wire, data in rows]

    def commit(self, commit: Commit) -> None:
        with self._transaction() as db:
            _check_commit(commit, self.get)
            if commit.inbound is not None:
                session_id, seq = commit.inbound
                db.execute("UPDATE sessions SET last_in=?, last_seen=? WHERE id=?",
                           (seq, commit.now, session_id))
            for session_id, wire, text in commit.sends:
                db.execute("INSERT INTO outbound (session, wire, data) VALUES (?, ?, ?)",
                           (session_id, wire, text))
                db.execute("UPDATE sessions SET next_wire=? WHERE id=?", (wire + 1, session_id))
            if commit.acked is not None:
                self._ack(db, *commit.acked)
            for effect in commit.effects:
                effect(db)

    @staticmethod
    def _ack(db: sqlite3.Connection, session_id: str, upto: int) -> None:
        db.execute("DELETE FROM outbound WHERE session=? AND wire<=?", (session_id, upto))
        db.execute("UPDATE sessions SET acked_out=? WHERE id=? AND acked_out<?",
                   (upto, session_id, upto))

    def ack(self, session_id: str, upto: int) -> None:
        with self._transaction() as db:
            self._ack(db, session_id, upto)

    def touch(self, seen: Mapping[str, float]) -> None:
        if not seen:
            return
        with self._transaction() as db:
            db.executemany("UPDATE sessions SET last_seen=? WHERE id=?",
                           [(when, sid) for sid, when in seen.items()])

    def drop(self, session_ids: Sequence[str]) -> None:
        if not session_ids:
            return
        with self._transaction() as db:
            db.executemany("DELETE FROM sessions WHERE id=?", [(sid,) for sid in session_ids])

    def expire(self, before: float) -> list[str]:
        with self._transaction() as db:
            gone = [str(row[0]) for row in
                    db.execute("SELECT id FROM sessions WHERE last_seen<?", (before,))]
            db.executemany("DELETE FROM sessions WHERE id=?", [(sid,) for sid in gone])
        return gone

    def close(self) -> None:
        self._db.close()
