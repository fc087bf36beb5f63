"""Session stores: both implementations behind one interface (``adapters/stores.py``)."""

from __future__ import annotations

import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adapters.stores import (
    Commit,
    MemoryStore,
    SessionStore,
    SQLiteStore,
    Unauthorized,
    hash_token,
)

REPO = Path(__file__).resolve().parent.parent
Factory = Callable[[], SessionStore]


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tether-stores-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, workdir: Path) -> Iterator[Factory]:
    """A factory: MemoryStore gives the same instance each call (the process lives on),
    SQLiteStore reopens the same file (a restarted process)."""
    opened: list[SessionStore] = []
    memory = MemoryStore()

    def make() -> SessionStore:
        store: SessionStore = memory if request.param == "memory" else \
            SQLiteStore(workdir / "sessions.sqlite")
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def test_create_resume_and_wrong_token(make_store: Factory) -> None:
    store = make_store()
    record, token = store.create(100.0)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", record.session_id)
    assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", token)  # >= 128 bits, URL-safe base64
    assert (record.last_in, record.next_wire, record.acked_out) == (0, 1, 0)
    assert store.get(record.session_id) == record

    resumed = store.resume(record.session_id, token, 105.0)
    assert resumed is not None and resumed.last_seen == 105.0
    assert store.resume("no-such-session", token, 106.0) is None

    with pytest.raises(Unauthorized):
        store.resume(record.session_id, token + "x", 107.0)
    with pytest.raises(Unauthorized):
        store.resume(record.session_id, "", 107.0)
    after = store.get(record.session_id)
    assert after is not None and after.last_seen == 105.0  # untouched by the refusals

    other, other_token = store.create(108.0)
    assert other.session_id != record.session_id and other_token != token
    with pytest.raises(Unauthorized):  # one session's token opens no other
        store.resume(other.session_id, token, 109.0)


def test_tokens_are_stored_hashed_never_in_clear(workdir: Path) -> None:
    path = workdir / "sessions.sqlite"
    store = SQLiteStore(path)
    tokens = [store.create(float(i))[1] for i in range(3)]
    record = store.sessions()[0]
    assert "token" not in repr(record) and repr(record.token_hash) not in repr(record)
    # Read every byte SQLite wrote (main file and WAL), before and after a checkpoint.
    for checkpoint in (False, True):
        if checkpoint:
            store.close()
            store = SQLiteStore(path)
            store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        raw = b"".join(p.read_bytes() for p in workdir.iterdir() if p.is_file())
        for token in tokens:
            assert token.encode() not in raw
        assert hash_token(tokens[0]) in raw  # we did read the right bytes
    store.close()


def test_memory_store_keeps_no_token_either() -> None:
    store = MemoryStore()
    record, token = store.create(1.0)
    assert record.token_hash == hash_token(token)
    assert token not in repr(store) and token not in repr(record)
    assert token not in repr(store._entries)


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


def test_outbound_persists_until_acknowledged(make_store: Factory) -> None:
    store = make_store()
    record, _ = store.create(1.0)
    sid = record.session_id
    store.commit(Commit(now=2.0, sends=[(sid, 1, '{"a":1}'), (sid, 2, "[1,2]"),
                                        (sid, 3, "null")]))
    assert [(o.wire, o.data) for o in store.unacked(sid)] == [(1, {"a": 1}), (2, [1, 2]),
                                                              (3, None)]
    store.ack(sid, 2)
    store.ack(sid, 1)  # backwards: ignored
    store = make_store()  # SQLite: reopened; memory: the same store
    assert [(o.wire, o.data) for o in store.unacked(sid)] == [(3, None)]
    after = store.get(sid)
    assert after is not None and (after.next_wire, after.acked_out) == (4, 2)


def test_commit_is_atomic_and_checked(make_store: Factory) -> None:
    store = make_store()
    a, _ = store.create(1.0)
    b, _ = store.create(1.0)
    store.commit(Commit(now=2.0, inbound=(a.session_id, 1),
                        sends=[(a.session_id, 1, '"x"'), (b.session_id, 1, '"y"')]))
    before = (store.get(a.session_id), store.get(b.session_id))
    bad = [
        Commit(now=3.0, inbound=(a.session_id, 3)),  # gap in the inbound sequence
        Commit(now=3.0, inbound=(a.session_id, 1)),  # already delivered
        Commit(now=3.0, inbound=(a.session_id, 2), sends=[(b.session_id, 3, "1")]),
        Commit(now=3.0, inbound=(a.session_id, 2), sends=[("nobody", 1, "1")]),
    ]
    for commit in bad:
        with pytest.raises((ValueError, KeyError)):
            store.commit(commit)
    assert (store.get(a.session_id), store.get(b.session_id)) == before
    assert [o.wire for o in store.unacked(b.session_id)] == [1]

    def boom(_: sqlite3.Connection | None) -> None:
        raise RuntimeError("effect failed")

    with pytest.raises(RuntimeError):
        store.commit(Commit(now=3.0, inbound=(a.session_id, 2),
                            sends=[(b.session_id, 2, "2")], effects=[boom]))
    assert (store.get(a.session_id), store.get(b.session_id)) == before  # all or nothing
    assert [o.wire for o in store.unacked(b.session_id)] == [1]


def test_effects_share_the_sqlite_transaction(workdir: Path) -> None:
    store = SQLiteStore(workdir / "s.sqlite")
    store._db.execute("CREATE TABLE effects (seq INTEGER PRIMARY KEY)")
    record, _ = store.create(1.0)
    seen: list[bool] = []

    def effect(db: sqlite3.Connection | None) -> None:
        assert db is not None
        seen.append(db.in_transaction)
        db.execute("INSERT INTO effects VALUES (1)")

    store.commit(Commit(now=2.0, inbound=(record.session_id, 1), effects=[effect]))
    assert seen == [True]
    with pytest.raises(sqlite3.IntegrityError):  # the effect fails: the delivery too
        store.commit(Commit(now=3.0, inbound=(record.session_id, 2), effects=[effect]))
    after = store.get(record.session_id)
    assert after is not None and after.last_in == 1
    assert store._db.execute("SELECT count(*) FROM effects").fetchone() == (1,)
    store.close()

    memory = MemoryStore()
    rec, _ = memory.create(1.0)
    got: list[object] = []
    memory.commit(Commit(now=2.0, inbound=(rec.session_id, 1), effects=[got.append]))
    assert got == [None]


def test_expire_touch_and_drop(make_store: Factory) -> None:
    store = make_store()
    old, _ = store.create(10.0)
    new, _ = store.create(20.0)
    kept, _ = store.create(10.0)
    store.commit(Commit(now=10.0, sends=[(old.session_id, 1, "1")]))
    store.touch({kept.session_id: 30.0})
    assert store.expire(before=15.0) == [old.session_id]
    assert store.get(old.session_id) is None and store.unacked(old.session_id) == []
    assert {r.session_id for r in store.sessions()} == {new.session_id, kept.session_id}
    store.drop([new.session_id])
    store = make_store()
    assert [r.session_id for r in store.sessions()] == [kept.session_id]


_CHILD = """
import sys
from adapters.stores import Commit, SQLiteStore
store = SQLiteStore(sys.argv[1])
record, token = store.create(1.0)
store.commit(Commit(now=2.0, inbound=(record.session_id, 1),
                    sends=[(record.session_id, 1, '"reply"')]))
print(record.session_id, token, flush=True)
sys.stdin.read()  # wait here to be killed
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
    store = SQLiteStore(path)
    record = store.resume(session_id, token, 3.0)
    assert record is not None and (record.last_in, record.next_wire) == (1, 2)
    assert [(o.wire, o.data) for o in store.unacked(session_id)] == [(1, "reply")]
    store.close()


def test_bad_synchronous_mode_is_refused(workdir: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(workdir / "s.sqlite", synchronous="OFF")  # type: ignore[arg-type]
