"""Session stores: both implementations behind one asynchronous interface
(``adapters/stores/``), and what only SQLite has (its thread, busy files, migration)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from adapters.stores import (
    Commit,
    Dropped,
    EpochChanged,
    Fenced,
    MemoryStore,
    SessionStore,
    SQLiteStore,
    StoreBusy,
    StoreLost,
    Unauthorized,
    hash_token,
)
from tests.redis_server import redis_prefix, shared_redis

REPO = Path(__file__).resolve().parent.parent
FIXTURES = (redis_prefix, shared_redis)
T = TypeVar("T")
Factory = Callable[[], SessionStore]


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(10):
            return await coro

    return asyncio.run(bounded())


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tether-stores-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, workdir: Path) -> Iterator[Factory]:
    """A factory: MemoryStore gives the same instance each call (the process lives on),
    SQLiteStore reopens the same file (a restarted process), RedisStore connects anew
    to the same Redis (another hub, or a restarted one)."""
    opened: list[SQLiteStore] = []
    memory = MemoryStore()
    if request.param == "redis":
        from adapters.stores.redis import RedisStore

        server = request.getfixturevalue("shared_redis")
        prefix = request.getfixturevalue("redis_prefix")

    def make() -> SessionStore:
        if request.param == "memory":
            return memory
        if request.param == "redis":
            return RedisStore(server.url, prefix=prefix)
        store = SQLiteStore(workdir / "sessions.sqlite")
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def test_create_resume_and_wrong_token(make_store: Factory) -> None:
    async def main() -> None:
        store = make_store()
        record, token = await store.create(100.0)
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", record.session_id)
        assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", token)  # >= 128 bits, URL-safe base64
        assert (record.last_in, record.next_wire, record.acked_out) == (0, 1, 0)
        assert record.principal is None
        assert await store.get(record.session_id) == record

        assert await store.resume(record.session_id, token) == record  # a read
        assert await store.resume("no-such-session", token) is None
        with pytest.raises(Unauthorized):
            await store.resume(record.session_id, token + "x")
        with pytest.raises(Unauthorized):
            await store.resume(record.session_id, "")
        assert await store.get(record.session_id) == record  # untouched by the refusals

        other, other_token = await store.create(108.0, "alice")
        assert other.session_id != record.session_id and other_token != token
        assert other.principal == "alice"
        assert (await store.get(other.session_id)) == other
        with pytest.raises(Unauthorized):  # one session's token opens no other
            await store.resume(other.session_id, token)

    run(main())


def test_tokens_are_stored_hashed_never_in_clear(workdir: Path) -> None:
    path = workdir / "sessions.sqlite"

    async def main() -> None:
        store = SQLiteStore(path)
        tokens = [(await store.create(float(i)))[1] for i in range(3)]
        record = (await store.sessions())[0]
        assert "token" not in repr(record) and repr(record.token_hash) not in repr(record)
        # Read every byte SQLite wrote (main file and WAL), before and after a checkpoint.
        for checkpoint in (False, True):
            if checkpoint:
                await store.aclose()
                with contextlib.closing(sqlite3.connect(path)) as db:
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                store = SQLiteStore(path)
            raw = b"".join(p.read_bytes() for p in workdir.iterdir() if p.is_file())
            for token in tokens:
                assert token.encode() not in raw
            assert hash_token(tokens[0]) in raw  # we did read the right bytes
        await store.aclose()

    run(main())


def test_memory_store_keeps_no_token_either() -> None:
    async def main() -> None:
        store = MemoryStore()
        record, token = await store.create(1.0)
        assert record.token_hash == hash_token(token)
        assert token not in repr(store) and token not in repr(record)
        assert token not in repr(store._entries)

    run(main())


def test_epoch_persists_with_sqlite_and_is_fresh_for_memory(workdir: Path) -> None:
    first = SQLiteStore(workdir / "a.sqlite")
    epoch = first.epoch
    first.close()
    again = SQLiteStore(workdir / "a.sqlite")
    assert again.epoch == epoch  # a restart on the same file keeps the epoch
    again.close()
    other = SQLiteStore(workdir / "b.sqlite")
    assert other.epoch != epoch  # a new database is a new epoch
    other.close()
    assert MemoryStore().epoch != MemoryStore().epoch  # a new process is a new epoch


def test_the_store_numbers_sends_and_keeps_them_until_acknowledged(
        make_store: Factory) -> None:
    async def main() -> None:
        store = make_store()
        record, _ = await store.create(1.0)
        sid = record.session_id
        wires = await store.commit(Commit(now=2.0, sends=[(sid, '{"a":1}'), (sid, "[1,2]")]))
        assert wires == [1, 2]
        assert await store.commit(Commit(now=2.0, sends=[(sid, "null"), ("gone", "1")])) \
            == [3, Dropped.GONE]  # a send to a session the store no longer has is dropped
        assert [(o.wire, o.data) for o in await store.unacked(sid)] == \
            [(1, {"a": 1}), (2, [1, 2]), (3, None)]
        await store.commit(Commit(now=3.0, acked={sid: 2}))
        await store.commit(Commit(now=3.0, acked={sid: 1}))  # backwards: ignored
        store = make_store()  # SQLite: reopened; memory: the same store
        assert [(o.wire, o.data) for o in await store.unacked(sid)] == [(3, None)]
        after = await store.get(sid)
        assert after is not None and (after.next_wire, after.acked_out) == (4, 2)

    run(main())


def test_commit_is_atomic_and_checked(make_store: Factory) -> None:
    async def main() -> None:
        store = make_store()
        a, _ = await store.create(1.0)
        b, _ = await store.create(1.0)
        await store.commit(Commit(now=2.0, inbound=(a.session_id, 1),
                                  sends=[(a.session_id, '"x"'), (b.session_id, '"y"')]))
        before = (await store.get(a.session_id), await store.get(b.session_id))
        bad = [
            Commit(now=3.0, inbound=(a.session_id, 3)),  # gap in the inbound sequence
            Commit(now=3.0, inbound=(a.session_id, 1)),  # already delivered
            Commit(now=3.0, inbound=("nobody", 1), sends=[(b.session_id, "1")]),
        ]
        for commit in bad:
            with pytest.raises((ValueError, KeyError)):
                await store.commit(commit)
        assert (await store.get(a.session_id), await store.get(b.session_id)) == before
        assert [o.wire for o in await store.unacked(b.session_id)] == [1]

        def boom(_: sqlite3.Connection | None) -> None:
            raise RuntimeError("effect failed")

        with pytest.raises(RuntimeError):
            await store.commit(Commit(now=3.0, inbound=(a.session_id, 2),
                                      sends=[(b.session_id, "2")], effects=[boom]))
        # All or nothing.
        assert (await store.get(a.session_id), await store.get(b.session_id)) == before
        assert [o.wire for o in await store.unacked(b.session_id)] == [1]

    run(main())


def test_effects_share_the_sqlite_transaction_on_the_store_thread(workdir: Path) -> None:
    async def main() -> None:
        store = SQLiteStore(workdir / "s.sqlite")
        await store.run(lambda db: db.execute("CREATE TABLE effects (seq INTEGER PRIMARY KEY)"))
        record, _ = await store.create(1.0)
        seen: list[tuple[bool, str]] = []

        def effect(db: sqlite3.Connection | None) -> None:
            assert db is not None
            seen.append((db.in_transaction, threading.current_thread().name))
            db.execute("INSERT INTO effects VALUES (1)")

        await store.commit(Commit(now=2.0, inbound=(record.session_id, 1), effects=[effect]))
        assert seen == [(True, "tether-sqlite:s.sqlite")]  # not the loop's thread
        with pytest.raises(sqlite3.IntegrityError):  # the effect fails: the delivery too
            await store.commit(Commit(now=3.0, inbound=(record.session_id, 2),
                                      effects=[effect]))
        after = await store.get(record.session_id)
        assert after is not None and after.last_in == 1
        count = await store.run(lambda db: db.execute("SELECT count(*) FROM effects").fetchone())
        assert count == (1,)
        await store.aclose()

        memory = MemoryStore()
        rec, _ = await memory.create(1.0)
        got: list[object] = []
        await memory.commit(Commit(now=2.0, inbound=(rec.session_id, 1), effects=[got.append]))
        assert got == [None]

    run(main())


def test_expire_touch_and_drop(make_store: Factory) -> None:
    async def main() -> None:
        store = make_store()
        old, _ = await store.create(10.0)
        new, _ = await store.create(20.0)
        kept, _ = await store.create(10.0)
        await store.commit(Commit(now=10.0, sends=[(old.session_id, "1")]))
        await store.touch({kept.session_id: 30.0})
        assert await store.expire(before=15.0) == [old.session_id]
        assert await store.get(old.session_id) is None
        assert await store.unacked(old.session_id) == []
        assert {r.session_id for r in await store.sessions()} == \
            {new.session_id, kept.session_id}
        await store.drop([new.session_id])
        store = make_store()
        assert [r.session_id for r in await store.sessions()] == [kept.session_id]

    run(main())


_CHILD = """
import asyncio, sys
from adapters.stores import Commit, SQLiteStore
async def main():
    store = SQLiteStore(sys.argv[1])
    record, token = await store.create(1.0)
    await store.commit(Commit(now=2.0, inbound=(record.session_id, 1),
                              sends=[(record.session_id, '"reply"')]))
    print(record.session_id, token, flush=True)
    sys.stdin.read()  # wait here to be killed
asyncio.run(main())
"""


def test_sqlite_commit_survives_sigkill(workdir: Path) -> None:
    path = workdir / "s.sqlite"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        session_id, token = child.stdout.readline().split()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(5)
    assert child.returncode == -signal.SIGKILL

    async def main() -> None:
        store = SQLiteStore(path)
        record = await store.resume(session_id, token)
        assert record is not None and (record.last_in, record.next_wire) == (1, 2)
        assert [(o.wire, o.data) for o in await store.unacked(session_id)] == [(1, "reply")]
        await store.aclose()

    run(main())


def test_bad_arguments_are_refused(workdir: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(workdir / "s.sqlite", synchronous="OFF")  # type: ignore[arg-type]
    for bad in (-1, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="busy_timeout"):
            SQLiteStore(workdir / "s.sqlite", busy_timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="path"):
        SQLiteStore(42)  # type: ignore[arg-type]


def test_a_closed_sqlite_store_says_so(workdir: Path) -> None:
    async def main() -> None:
        store = SQLiteStore(workdir / "s.sqlite")
        await store.aclose()
        await store.aclose()  # twice is fine
        with pytest.raises(RuntimeError, match="closed"):
            await store.create(1.0)

    run(main())


def test_a_locked_sqlite_file_makes_writes_busy_fast_and_reads_work(workdir: Path) -> None:
    """Another connection (a backup, the sqlite3 shell) holds the file: a write fails
    with StoreBusy after busy_timeout instead of waiting sqlite's 5 s, reads go on (WAL),
    and nothing was changed. Once the lock is gone the same write succeeds."""
    path = workdir / "s.sqlite"

    async def main() -> None:
        store = SQLiteStore(path, busy_timeout=0.05)
        record, token = await store.create(1.0)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            loop = asyncio.get_running_loop()
            ticks = 0

            async def tick() -> None:  # the loop keeps running meanwhile
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.005)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            started = loop.time()
            with pytest.raises(StoreBusy, match="locked"):
                await store.commit(Commit(now=2.0, inbound=(record.session_id, 1)))
            with pytest.raises(StoreBusy):
                await store.create(2.0)
            assert loop.time() - started < 2.0  # not sqlite's 5 s per call
            assert ticks > 0
            ticker.cancel()
            assert await store.resume(record.session_id, token) == record  # a read works
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        await store.commit(Commit(now=2.0, inbound=(record.session_id, 1)))
        after = await store.get(record.session_id)
        assert after is not None and after.last_in == 1
        await store.aclose()

    run(main())


def test_an_old_sqlite_file_is_migrated(workdir: Path) -> None:
    """A file written before sessions had a principal: opened, migrated, kept."""
    path = workdir / "old.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript("""
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            INSERT INTO meta VALUES ('epoch', 'old-epoch');
            CREATE TABLE sessions (id TEXT PRIMARY KEY, token_hash BLOB NOT NULL,
                last_in INTEGER NOT NULL, next_wire INTEGER NOT NULL,
                acked_out INTEGER NOT NULL, created REAL NOT NULL, last_seen REAL NOT NULL);
            CREATE TABLE outbound (session TEXT NOT NULL REFERENCES sessions(id)
                ON DELETE CASCADE, wire INTEGER NOT NULL, data TEXT NOT NULL,
                PRIMARY KEY (session, wire)) WITHOUT ROWID;
        """)
        db.execute("INSERT INTO sessions VALUES ('s1', ?, 3, 2, 0, 1.0, 2.0)",
                   (hash_token("t" * 32),))
        db.execute("INSERT INTO outbound VALUES ('s1', 1, '\"kept\"')")
        db.commit()

    async def main() -> None:
        store = SQLiteStore(path)
        assert store.epoch == "old-epoch"
        record = await store.resume("s1", "t" * 32)
        assert record is not None and (record.last_in, record.principal) == (3, None)
        assert [o.data for o in await store.unacked("s1")] == ["kept"]
        new, _ = await store.create(3.0, "bob")
        assert (await store.get(new.session_id)) == new
        await store.aclose()

    run(main())


def test_a_commit_refuses_a_stale_holder_an_old_epoch_and_a_store_behind_the_hub(
        make_store: Factory) -> None:
    """The checks a hub's commit carries (``Commit.generation``, ``epoch``, ``floors``,
    and acknowledgements): each refusal names what is wrong and changes nothing."""
    async def main() -> None:
        store = make_store()
        record, _ = await store.create(1.0)
        sid = record.session_id
        assert await store.commit(Commit(now=2.0, inbound=(sid, 1), sends=[(sid, "1")],
                                         generation=record.generation,
                                         epoch=store.epoch)) == [1]
        claimed = await store.claim(sid, 3.0)
        assert claimed is not None
        taken, unacked = claimed
        assert taken.generation == record.generation + 1 and taken.last_in == 1
        assert [(o.wire, o.data) for o in unacked] == [(1, 1)]
        before = (await store.get(sid), await store.unacked(sid))
        refused = [
            (Commit(now=4.0, inbound=(sid, 2), generation=record.generation), Fenced),
            (Commit(now=4.0, inbound=(sid, 2), epoch="another epoch"), EpochChanged),
            (Commit(now=4.0, sends=[(sid, "2")], floors={sid: 3}), StoreLost),
            (Commit(now=4.0, acked={sid: 2}), StoreLost),
        ]
        for commit, error in refused:
            with pytest.raises(error):
                await store.commit(commit)
            assert (await store.get(sid), await store.unacked(sid)) == before, error
        assert await store.claim("nobody", 4.0) is None

    run(main())
