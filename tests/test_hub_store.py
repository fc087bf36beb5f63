"""Issue 7 section 4: the hub never freezes on its store.

Another connection holding the SQLite file (a backup, the ``sqlite3`` shell) froze the
whole hub for sqlite's 5 s busy timeout per write: no pong went out and healthy clients
were aborted. Now store calls run on the store's thread with a short busy timeout: pongs
keep flowing, a delivery the store cannot take is answered ``busy`` (the client replays
it), a new session waits for ``busy``'s ``retry_after``, and once the lock is gone
everything is delivered exactly once. A store that fails inside the presence timer
cannot keep a session from expiring either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from adapters.hub import Limits, Presence, Session, serve
from adapters.stores import MemoryStore, SQLiteStore
from fsm import Heartbeat
from fsm.protocol import Ack, Hello, Msg, Ping, Pong
from tests.test_hub import Peer, msgs, run

pytestmark = pytest.mark.realsocket


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tether-hub-store-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another connection holds the file: ``BEGIN EXCLUSIVE`` until the block ends."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_locked_sqlite_file_never_stops_the_pongs(workdir: Path) -> None:
    path = workdir / "hub.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:  # the handler's own table
        db.execute("CREATE TABLE delivered (data TEXT)")
        db.commit()
    calls: list[Any] = []

    def handler(session: Session, data: Any) -> None:
        calls.append(data)
        session.record(lambda db: None if db is None else db.execute(
            "INSERT INTO delivered VALUES (?)", (json.dumps(data),)))
        session.send(data)

    async def main() -> None:
        store = SQLiteStore(path)
        hub = await serve(handler, store=store, limits=Limits(retry_after=0.3))
        try:
            pinger, sender = await Peer.open(hub.port), await Peer.open(hub.port)
            await pinger.hello()
            await sender.hello()
            with locked(path):
                # A delivery: the handler runs, the commit cannot: busy, not acknowledged.
                await sender.send(Msg(seq=1, ack=0, data="while locked"))
                error = await sender.error()
                assert error.code == "busy" and error.retry_after == 0.3, error
                assert sender.ws.close_code == 1013
                # A new session needs a write too: busy, retry later.
                newcomer = await Peer.open(hub.port)
                await newcomer.send(Hello(ack=0))
                assert (await newcomer.error()).code == "busy"
                # All the while (well over sqlite's own 5 s of busy wait in all), every
                # ping is answered at once.
                for _ in range(40):
                    await pinger.send(Ping(ack=0))
                    assert await pinger.recv(timeout=1.0) == Pong(ack=0)
                    await asyncio.sleep(0.02)
                assert pinger.ws.close_code is None
            # The lock is gone: the client resumes and replays; delivered once.
            again = await Peer.open(hub.port)
            resumed = await again.hello(sender.session, sender.token)
            assert resumed.resumed and resumed.ack == 0
            await again.send(Msg(seq=1, ack=0, data="while locked"))
            assert msgs([await again.recv()]) == [(1, "while locked")]
            await again.close()
            await pinger.close()
        finally:
            await hub.close()
            await store.aclose()
        assert calls == ["while locked", "while locked"]  # at-least-once calls ...
        with contextlib.closing(sqlite3.connect(path)) as db:  # ... recorded once
            assert db.execute("SELECT data FROM delivered").fetchall() == \
                [('"while locked"',)]

    run(main(), timeout=20)


def test_sends_outside_handlers_wait_out_a_locked_store_in_order(workdir: Path) -> None:
    path = workdir / "hub.sqlite"

    async def main() -> None:
        store = SQLiteStore(path)
        hub = await serve(lambda session, data: None, store=store)
        try:
            peer = await Peer.open(hub.port)
            sid = (await peer.hello()).session
            with locked(path):
                futures = [hub.send(sid, n) for n in range(5)]
                await asyncio.sleep(0.5)
                assert not any(f.done() for f in futures)  # not committed, not lost
                await peer.send(Ping(ack=0))
                assert await peer.recv() == Pong(ack=0)
            await asyncio.wait_for(asyncio.gather(*futures), 5)
            frames = await peer.recv_until(lambda f: isinstance(f, Msg) and f.seq == 5)
            assert msgs(frames) == [(n + 1, n) for n in range(5)]
            await peer.close()
        finally:
            await hub.close()
            await store.aclose()

    run(main())


class FlakyStore(MemoryStore):
    """A memory store whose ``drop`` fails the first ``failures`` times."""

    failures = 2
    calls = 0

    async def drop(self, session_ids: Sequence[str]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError("the store's disk went away")
        await super().drop(session_ids)


def test_a_store_error_in_the_presence_timer_never_keeps_a_session_from_expiring() -> None:
    async def main() -> None:
        store = FlakyStore()
        hub = await serve(lambda session, data: None, store=store,
                          heartbeat=Heartbeat(interval=0.05, timeout=0.05),
                          expire_after=0.1)
        changes: list[tuple[str, Presence, Presence]] = []
        hub.on_presence(lambda sid, old, new: changes.append((sid, old, new)))
        try:
            peer = await Peer.open(hub.port)
            sid = (await peer.hello()).session
            await peer.send(Msg(seq=1, ack=0, data="not empty"))
            await peer.recv_until(lambda f: isinstance(f, Ack | Ping) and f.ack == 1)
            await peer.closed(timeout=2)  # it never answers the probe: aborted
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3
            while (sid, Presence.STALE, Presence.GONE) not in changes:
                assert loop.time() < deadline, changes
                await asyncio.sleep(0.01)
            assert sid not in hub.sessions and sid not in hub.presence
            # The store is told again until it takes it.
            while store._entries.get(sid) is not None:
                assert loop.time() < deadline + 60, "never dropped from the store"
                await asyncio.sleep(0.05)
                hub._flush_wake.set()  # (the housekeeper retries every minute)
            assert store.calls >= 3
            # The hub is fine: a new client is served.
            fresh = await Peer.open(hub.port)
            await fresh.hello()
            await fresh.send(Msg(seq=1, ack=0, data="x"))
            await fresh.recv_until(lambda f: isinstance(f, Ack | Ping) and f.ack == 1)
            await fresh.close()
        finally:
            await hub.close()

    run(main())


def test_a_store_error_in_a_hello_is_a_clear_hub_error_and_the_hub_serves_on() -> None:
    class BrokenCreate(MemoryStore):
        broken = True

        async def create(self, now: float, principal: str | None = None
                         ) -> tuple[Any, str]:
            if self.broken:
                self.broken = False
                raise OSError("no space left on device")
            return await super().create(now, principal)

    async def main() -> None:
        hub = await serve(lambda session, data: None, store=BrokenCreate())
        try:
            first = await Peer.open(hub.port)
            await first.send(Hello(ack=0))
            await first.closed()
            assert first.ws.close_code == 1011
            second = await Peer.open(hub.port)
            assert not (await second.hello()).resumed
            await second.close()
        finally:
            await hub.close()

    run(main())


def test_a_busy_store_error_frame_names_the_store() -> None:
    from adapters.stores import StoreBusy

    class BusyCommit(MemoryStore):
        async def commit(self, commit: Any) -> list[Any]:
            raise StoreBusy("sessions.sqlite is locked by another connection")

    async def main() -> None:
        hub = await serve(lambda session, data: None, store=BusyCommit(),
                          limits=Limits(retry_after=0.2))
        try:
            peer = await Peer.open(hub.port)
            await peer.hello()
            await peer.send(Msg(seq=1, ack=0, data="x"))
            error = await peer.error()
            assert error.code == "busy"
            assert "locked by another connection" in error.message
            assert error.retry_after == 0.2 and not error.fatal
        finally:
            await hub.close()

    run(main())
