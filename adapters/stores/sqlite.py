""":class:`SQLiteStore`: sessions in an SQLite file (WAL journal) that survive the process.

**One thread owns the connection.** The ``sqlite3`` connection is created in, and used
only by, the store's own thread; every call is a job queued to it, answered through a
future the caller awaits. The hub's event loop therefore never waits on the disk or on a
lock: a backup or an ``sqlite3`` shell holding the file makes calls *fail fast* with
:class:`~adapters.stores.StoreBusy` after ``busy_timeout`` (default 0.1 s, against
sqlite's 5 s), and the hub answers pings all the while. Jobs run one at a time in the
order they were queued, so commits are numbered in the order the hub made them.

Durability: every call commits before it answers, and the hub acknowledges only after
that. In WAL mode a committed transaction is in the WAL file, that is in the kernel, the
moment ``COMMIT`` returns, so it survives SIGKILL of the process with ``synchronous``
FULL *or* NORMAL. They differ on power loss or a kernel crash: FULL (the default)
``fsync``s the WAL on every commit and keeps every acknowledged transaction; NORMAL
syncs only at checkpoints and may lose the last transactions, which then breaks
exactly-once for the messages they covered. Choose NORMAL only where the hub is the
thing that crashes, not the machine.

The epoch is created with the database and stored in it: a hub restarted on the same
file keeps its epoch; a new file (the old one lost) gets a new one. A file written by an
older tether (no ``principal`` column) is migrated when opened.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import queue
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from adapters.stores.base import (
    Commit,
    Dropped,
    Outbound,
    SessionRecord,
    StoreBusy,
    StoreLost,
    Unauthorized,
    Wire,
    check_commit,
    new_secrets,
)

__all__ = ["DEFAULT_BUSY_TIMEOUT", "SQLiteStore"]

T = TypeVar("T")

#: How long one call waits for a lock held by another connection before it fails with
#: StoreBusy: short, because the hub would rather answer "busy, retry" than hold a
#: delivery (sqlite's own default is 5 s).
DEFAULT_BUSY_TIMEOUT = 0.1
#: Opening (schema, migration) may wait longer: nothing is being served yet.
_OPEN_TIMEOUT = 5.0

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
    last_seen  REAL NOT NULL,
    principal  TEXT,
    generation INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbound (
    session TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    wire    INTEGER NOT NULL,
    data    TEXT NOT NULL,
    PRIMARY KEY (session, wire)
) WITHOUT ROWID;
"""
_COLUMNS = ("id, token_hash, last_in, next_wire, acked_out, created, last_seen, principal, "
            "generation")

_Job = tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None


def _busy(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    text = str(error)
    return "locked" in text or "busy" in text


_NODE = "local"


class SQLiteStore:
    """Sessions in an SQLite file, served by one thread; see the module docstring.

    ``busy_timeout`` (seconds) is how long a call waits for another connection's lock
    before failing with :class:`~adapters.stores.StoreBusy`. :meth:`run` runs your own
    function on the store's connection (create the tables your effects write to).
    """

    #: One hub per file (SessionStore.shared).
    shared: ClassVar[bool] = False

    def __init__(self, path: str | Path, *,
                 synchronous: Literal["FULL", "NORMAL"] = "FULL",
                 busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        given: object = path
        if not isinstance(given, str | Path):
            raise TypeError(f"SQLiteStore path must be a str or Path, got "
                            f"{type(path).__name__}")
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        timeout: object = busy_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or \
                not math.isfinite(timeout) or timeout < 0:
            raise ValueError(f"SQLiteStore busy_timeout must be a finite number of seconds "
                             f">= 0, got {busy_timeout!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.busy_timeout = float(busy_timeout)
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._db: sqlite3.Connection | None = None  # touched by the store thread only
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name=f"tether-sqlite:{self.path.name}")
        self._thread.start()
        try:
            self._epoch: str = self._submit(self._open).result()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}, epoch={self._epoch!r})"

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def node(self) -> str:
        return _NODE

    # -- the thread ------------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                function, future = job
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    result = function()
                except BaseException as error:
                    future.set_exception(error)
                else:
                    future.set_result(result)
        finally:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _submit(self, function: Callable[[], T]) -> concurrent.futures.Future[T]:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((function, future))
        return future

    async def _call(self, function: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self._submit(function))

    def _open(self) -> str:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=_OPEN_TIMEOUT)
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.execute("PRAGMA foreign_keys=ON")
        with self._transaction() as tx:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    tx.execute(statement)
            columns = {row[1] for row in tx.execute("PRAGMA table_info(sessions)")}
            if "principal" not in columns:  # a file from before authentication
                tx.execute("ALTER TABLE sessions ADD COLUMN principal TEXT")
            if "generation" not in columns:  # a file from before fencing (issue 12)
                tx.execute("ALTER TABLE sessions ADD COLUMN generation INTEGER NOT NULL "
                           "DEFAULT 0")
            tx.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', ?)",
                       (secrets.token_urlsafe(9),))
        row = db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
        db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        return str(row[0])

    @property
    def _connection(self) -> sqlite3.Connection:
        assert self._db is not None and threading.current_thread() is self._thread, \
            "the SQLite connection is used on the store's thread only"
        return self._db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as error:
            if _busy(error):
                raise StoreBusy(f"{self.path.name} is locked by another connection "
                                f"(waited {self.busy_timeout} s)") from error
            raise
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.OperationalError as error:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            if _busy(error):
                raise StoreBusy(f"{self.path.name}: commit could not take the lock") \
                    from error
            raise

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        try:
            return self._connection.execute(sql, args).fetchall()
        except sqlite3.OperationalError as error:
            if _busy(error):
                raise StoreBusy(f"{self.path.name} is locked by another connection") \
                    from error
            raise

    @staticmethod
    def _record(row: tuple[Any, ...]) -> SessionRecord:
        return SessionRecord(row[0], bytes(row[1]), int(row[2]), int(row[3]), int(row[4]),
                             float(row[5]), float(row[6]),
                             None if row[7] is None else str(row[7]), int(row[8]), _NODE)

    def _get(self, session_id: str) -> SessionRecord | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM sessions WHERE id=?", (session_id,))
        return self._record(rows[0]) if rows else None

    # -- the interface ---------------------------------------------------------------------------

    async def create(self, now: float, principal: str | None = None
                     ) -> tuple[SessionRecord, str]:
        session_id, token, digest = new_secrets()
        record = SessionRecord(session_id, digest, created=now, last_seen=now,
                               principal=principal, generation=1, node=_NODE)

        def create() -> None:
            with self._transaction() as db:
                db.execute(f"INSERT INTO sessions ({_COLUMNS}) "
                           f"VALUES (?, ?, 0, 1, 0, ?, ?, ?, 1)",
                           (session_id, digest, now, now, principal))

        await self._call(create)
        return record, token

    async def resume(self, session_id: str, token: str) -> SessionRecord | None:
        record = await self._call(lambda: self._get(session_id))
        if record is None:
            return None
        if not record.matches(token):
            raise Unauthorized(f"wrong token for session {session_id}")
        return record

    async def get(self, session_id: str) -> SessionRecord | None:
        return await self._call(lambda: self._get(session_id))

    async def claim(self, session_id: str, now: float
                    ) -> tuple[SessionRecord, list[Outbound]] | None:
        def claim() -> tuple[SessionRecord, list[Outbound]] | None:
            with self._transaction() as db:
                moved = db.execute("UPDATE sessions SET generation=generation+1, last_seen=? "
                                   "WHERE id=?", (now, session_id)).rowcount
                if not moved:
                    return None
                record = self._get(session_id)
                rows = db.execute("SELECT wire, data FROM outbound WHERE session=? "
                                  "ORDER BY wire", (session_id,)).fetchall()
            assert record is not None
            return record, [Outbound(int(wire), str(data)) for wire, data in rows]

        return await self._call(claim)

    async def sessions(self) -> list[SessionRecord]:
        rows = await self._call(
            lambda: self._read(f"SELECT {_COLUMNS} FROM sessions ORDER BY created"))
        return [self._record(row) for row in rows]

    async def unacked(self, session_id: str) -> list[Outbound]:
        rows = await self._call(lambda: self._read(
            "SELECT wire, data FROM outbound WHERE session=? ORDER BY wire", (session_id,)))
        return [Outbound(int(wire), str(data)) for wire, data in rows]

    def _commit(self, commit: Commit) -> list[Wire]:
        with self._transaction() as db:
            if commit.floors or (commit.epoch is not None and commit.epoch != self._epoch):
                check_commit(commit, self._get, self._epoch)
            if commit.inbound is not None:
                session_id, seq = commit.inbound
                # One statement checks and advances (every statement is a round trip
                # for the GIL between this thread and the loop's).
                fence = "" if commit.generation is None else \
                    f" AND generation={int(commit.generation)}"
                moved = db.execute("UPDATE sessions SET last_in=?, last_seen=? "
                                   f"WHERE id=? AND last_in=?{fence}",
                                   (seq, commit.now, session_id, seq - 1)).rowcount
                if moved != 1:
                    check_commit(commit, self._get, self._epoch)  # raises, naming it
                    raise AssertionError("unreachable")  # pragma: no cover
            wires: list[Wire] = []
            next_wire: dict[str, int | None] = {}
            for session_id, text in commit.sends:
                if session_id not in next_wire:
                    row = db.execute("SELECT next_wire FROM sessions WHERE id=?",
                                     (session_id,)).fetchone()
                    next_wire[session_id] = None if row is None else int(row[0])
                wire = next_wire[session_id]
                wires.append(Dropped.GONE if wire is None else wire)
                if wire is None:
                    continue
                db.execute("INSERT INTO outbound (session, wire, data) VALUES (?, ?, ?)",
                           (session_id, wire, text))
                next_wire[session_id] = wire + 1
            for session_id, wire in next_wire.items():
                if wire is not None:
                    db.execute("UPDATE sessions SET next_wire=? WHERE id=?", (wire, session_id))
            for session_id, upto in commit.acked.items():
                row = db.execute("SELECT next_wire FROM sessions WHERE id=?",
                                 (session_id,)).fetchone()
                if row is not None and upto >= int(row[0]):
                    raise StoreLost(f"session {session_id}: the client acknowledged "
                                    f"{upto}, the store sent only up to {int(row[0]) - 1}")
                db.execute("DELETE FROM outbound WHERE session=? AND wire<=?",
                           (session_id, upto))
                db.execute("UPDATE sessions SET acked_out=? WHERE id=? AND acked_out<?",
                           (upto, session_id, upto))
            for effect in commit.effects:
                effect(db)
        return wires

    async def commit(self, commit: Commit) -> list[Wire]:
        return await self._call(lambda: self._commit(commit))

    async def touch(self, seen: Mapping[str, float]) -> None:
        if not seen:
            return
        rows = [(when, sid) for sid, when in seen.items()]

        def touch() -> None:
            with self._transaction() as db:
                db.executemany("UPDATE sessions SET last_seen=? WHERE id=?", rows)

        await self._call(touch)

    async def drop(self, session_ids: Sequence[str]) -> None:
        if not session_ids:
            return
        rows = [(sid,) for sid in session_ids]

        def drop() -> None:
            with self._transaction() as db:
                db.executemany("DELETE FROM sessions WHERE id=?", rows)

        await self._call(drop)

    async def expire(self, before: float) -> list[str]:
        def expire() -> list[str]:
            with self._transaction() as db:
                gone = [str(row[0]) for row in
                        db.execute("SELECT id FROM sessions WHERE last_seen<?", (before,))]
                db.executemany("DELETE FROM sessions WHERE id=?", [(sid,) for sid in gone])
            return gone

        return await self._call(expire)

    async def run(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """``function(connection)`` on the store's thread, inside a transaction (commit
        on return, rollback if it raises): your own tables, next to the sessions."""
        def run() -> T:
            with self._transaction() as db:
                return function(db)

        return await self._call(run)

    async def aclose(self) -> None:
        """Finish the queued calls, close the connection and end the thread."""
        if self._closed:
            return
        done = self._submit(lambda: None)
        self._closed = True
        self._jobs.put(None)
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(done)
        await asyncio.to_thread(self._thread.join)

    def close(self) -> None:
        """The blocking twin of :meth:`aclose` (for code outside an event loop)."""
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()
