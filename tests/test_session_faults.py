"""Session mode under faults, end to end: the real client (``Link``, ``session=True``)
against the reference hub, on 127.0.0.1.

Every scenario streams numbered messages both ways and then checks the exact sequences
at both ends (nothing lost, nothing doubled, in order), the rebuild hook's runs, and the
session the hub holds:

* a :class:`~adapters.proxy.FaultProxy` resets the connection again and again mid-stream;
* the proxy black-holes the connection (a half-open peer): the client's heartbeat
  declares the hub dead, and after ``clear()`` the session resumes without a rebuild;
* the hub is SIGKILLed and restarted on its SQLite file: same epoch, exactly once, and
  the handler's recorded effects (``Session.record``) happen once each;
* the hub is SIGKILLed and restarted with an in-memory store: a new epoch, the rebuild
  hook runs once for it before anything else reaches the new hub, and PROTOCOL.md's
  at-least-once holds: nothing lost, duplicates only among what was unacknowledged;
* presence: a black-holed client is ``stale``, then ``gone`` after ``expire_after``;
* the resume token never reaches a log record (any logger) or a ``repr``; nor do the
  credentials of ``headers``;
* the client keeps within the hub's ``max_inflight``.

The hub that can be killed runs this module as a program (``python -m
tests.test_session_faults --port N [--store PATH.sqlite] [--log PATH.jsonl] ...``): an
echo hub whose handler appends each call to a JSON-lines log (``[epoch, session, data]``)
and, with ``--store``, records each delivery in the SQLite file's ``delivered`` table
inside the delivery's transaction.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import re
import signal
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from adapters.hub import Limits, Presence, Session, serve
from adapters.link import Link
from adapters.proxy import FaultProxy
from adapters.stores import MemoryStore, SQLiteStore
from fsm import Heartbeat, State
from tests.test_hub import _free_port, workdir
from tests.test_realsocket import (
    EARLY,
    HB,
    TOL,
    check_heartbeat_stale,
    finish,
    make_link,
    now,
    run,
)

pytestmark = [pytest.mark.realsocket, pytest.mark.timeout(30)]
FIXTURES = (workdir,)  # tests/test_hub.py's private mkdtemp directory, reused here

REPO = Path(__file__).resolve().parent.parent
Received = list[Any]


# -- helpers ---------------------------------------------------------------------------------


class Inbox:
    """Everything the link delivers (``async for``), collected by a task."""

    def __init__(self, link: Link) -> None:
        self.got: Received = []
        self._task = asyncio.create_task(self._collect(link))

    async def _collect(self, link: Link) -> None:
        async for message in link:
            self.got.append(message)

    async def until(self, done: Callable[[Received], bool], timeout: float = 10.0) -> None:
        deadline = now() + timeout
        while not done(self.got):
            assert now() < deadline, f"inbox still incomplete after {timeout} s: {self.got}"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def until(done: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = now() + timeout
    while not done():
        assert now() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.01)


def field(messages: Received, key: str) -> list[Any]:
    """The ``key`` member of every dict message that has one, in order."""
    return [m[key] for m in messages if isinstance(m, dict) and key in m]


def numbered(messages: Received, key: str = "up") -> list[int]:
    values = field(messages, key)
    assert all(isinstance(v, int) for v in values), values
    return values


# -- the hub as a program we can SIGKILL -------------------------------------------------------


def _create_delivered_table(path: str) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE IF NOT EXISTS delivered "
                   "(id INTEGER PRIMARY KEY, session TEXT NOT NULL, data TEXT NOT NULL)")
        db.commit()


async def _run_hub(args: argparse.Namespace) -> None:
    if args.store:
        _create_delivered_table(args.store)
    store = SQLiteStore(args.store) if args.store else MemoryStore()
    log = open(args.log, "a", buffering=1, encoding="utf-8") if args.log else None  # noqa: SIM115
    epoch = store.epoch

    async def handler(session: Session, data: Any) -> None:
        if log is not None:  # one line per call, written at once: survives SIGKILL
            log.write(json.dumps([epoch, session.id, data]) + "\n")
        if args.handler_delay:
            await asyncio.sleep(args.handler_delay)  # a kill lands mid-call, uncommitted
        if args.store:
            text = json.dumps(data)

            def effect(db: sqlite3.Connection | None) -> None:
                assert db is not None
                db.execute("INSERT INTO delivered (session, data) VALUES (?, ?)",
                           (session.id, text))

            session.record(effect)
        if not args.no_echo:  # (an echo carries the hub's ack with it)
            session.send(data)

    try:
        hub = await serve(handler, port=args.port, store=store, ack_delay=args.ack_delay)
        async with hub:
            sys.stdout.write(f"listening {hub.port}\n")
            sys.stdout.flush()
            await asyncio.Future()
    finally:
        await store.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.test_session_faults",
                                     description="an echo hub for the kill tests")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", default=None, help="SQLite file (default: in memory)")
    parser.add_argument("--log", default=None, help="append every handler call here")
    parser.add_argument("--handler-delay", type=float, default=0.0,
                        help="seconds each handler call takes")
    parser.add_argument("--no-echo", action="store_true", help="only acknowledge")
    parser.add_argument("--ack-delay", type=float, default=0.05,
                        help="the hub's standalone-ack delay")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="hub %(name)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_hub(args))
    return 0


class HubProcess:
    """This module's hub in a subprocess on a fixed port: ``start``, ``kill``, ``restart``."""

    def __init__(self, port: int, *args: str) -> None:
        self.port, self.args = port, args
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        """Start and wait until it listens; retry while the port is still held."""
        deadline = now() + 5
        while True:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.test_session_faults", "--port", str(self.port),
                *self.args, cwd=REPO, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE)
            self.process = process
            assert process.stdout is not None
            try:
                async with asyncio.timeout(5):
                    line = await process.stdout.readline()
            except BaseException:
                await self.kill()
                raise
            if line.startswith(b"listening "):
                return
            await self.kill()
            assert now() < deadline, f"the hub did not start: {line!r}"
            await asyncio.sleep(0.05)

    async def kill(self) -> None:
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        await process.wait()

    async def restart(self) -> None:
        await self.kill()
        await self.start()


def log_lines(path: Path) -> list[tuple[str, str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(epoch, session, data) for epoch, session, data in map(json.loads, lines)]


# -- the connection drops ----------------------------------------------------------------------


def test_exactly_once_both_ways_across_repeated_resets() -> None:
    """Four resets of a live connection (20 ms latency each way, so frames are in flight)
    while messages flow both ways, every 10 ms: client to hub (the handler records and
    echoes each) and hub to client (pushed with ``Hub.send``). Each end gets every
    message once, in order; the session resumes each time and is rebuilt once."""
    count, pace, resets = 60, 0.01, 4

    async def main() -> None:
        up: Received = []

        def handler(session: Session, data: Any) -> None:
            up.append(data)
            session.send({"echo": data})

        hub = await serve(handler)
        try:
            async with FaultProxy(("127.0.0.1", hub.port), rng=random.Random(5)) as proxy:
                proxy.latency(20)
                epochs: list[str | None] = []

                async def register(link: Link) -> None:
                    epochs.append(link.lifecycle.epoch)
                    await link.send({"register": len(epochs)})

                link, dialer, watch = make_link(f"ws://127.0.0.1:{proxy.port}/",
                                                session=True, on_rebuild=register)
                await link.start()
                await link.wait_for(State.ONLINE, timeout=5)
                inbox = Inbox(link)
                (sid,) = hub.sessions

                async def cut() -> None:
                    for _ in range(resets):
                        await link.wait_for(State.ONLINE, timeout=5)
                        await asyncio.sleep(0.15)  # traffic both ways, some in flight
                        proxy.reset_peer()
                        await asyncio.sleep(0.02)  # the reset fires, then new dials pass
                        proxy.clear()
                        proxy.latency(20)

                cutter = asyncio.create_task(cut())

                async def push() -> int:
                    k = 0
                    while k < count or not cutter.done():
                        hub.send(sid, {"push": k})
                        k += 1
                        await asyncio.sleep(pace)
                    return k

                pusher = asyncio.create_task(push())
                sent = 0
                while sent < count or not cutter.done():
                    await link.send({"up": sent})
                    sent += 1
                    await asyncio.sleep(pace)
                pushed = await pusher
                await cutter
                await inbox.until(lambda got: len(got) >= 1 + sent + pushed)
                await asyncio.sleep(0.3)  # a duplicate would arrive about now
                await inbox.stop()

                # Client to hub: the handler saw each message once, in order.
                assert up == [{"register": 1}] + [{"up": n} for n in range(sent)]
                # Hub to client: every echo and every push once, each stream in order.
                assert field(inbox.got, "echo") == up
                assert field(inbox.got, "push") == list(range(pushed))
                assert len(inbox.got) == 1 + sent + pushed
                # One session all along: resumed after each reset, rebuilt once.
                assert epochs == [hub.epoch]
                assert list(hub.sessions) == [sid] and hub.sessions[sid].unacked == 0
                assert link.statistics()["reconnects"] == resets
                assert link.statistics()["outbox_depth"] == 0
                assert await finish(link, dialer) == []
                assert watch.max_open <= 1
        finally:
            await hub.close()

    run(main)


def test_blackhole_is_detected_and_the_session_resumes_without_a_rebuild() -> None:
    """Half-open: nothing passes, nothing closes. The client's heartbeat declares the hub
    dead; messages sent meanwhile wait; after ``clear()`` the client resumes the same
    session (no rebuild) and both streams complete exactly once."""
    batch = 20

    async def main() -> None:
        up: Received = []

        def handler(session: Session, data: Any) -> None:
            up.append(data)
            session.send({"echo": data})

        hub = await serve(handler)
        try:
            async with FaultProxy(("127.0.0.1", hub.port), rng=random.Random(6)) as proxy:
                epochs: list[str | None] = []

                async def register(link: Link) -> None:
                    epochs.append(link.lifecycle.epoch)
                    await link.send({"register": len(epochs)})

                link, dialer, watch = make_link(f"ws://127.0.0.1:{proxy.port}/",
                                                session=True, on_rebuild=register)
                await link.start()
                await link.wait_for(State.ONLINE, timeout=5)
                assert link._session is not None
                sid = link._session.session_id
                assert sid is not None and list(hub.sessions) == [sid]
                inbox = Inbox(link)
                sent = 0

                async def both_ways(n: int) -> None:
                    nonlocal sent
                    for _ in range(n):
                        await link.send({"up": sent})
                        hub.send(sid, {"push": sent})
                        sent += 1
                        await asyncio.sleep(0.002)

                await both_ways(batch)  # and at once, with frames in flight both ways:
                holed = now()
                proxy.blackhole()
                await both_ways(batch)
                await link.wait_for(State.STALE, timeout=HB.bound + 5)
                stale, heard = watch.first(State.STALE, after=holed)
                check_heartbeat_stale(stale, heard)
                await both_ways(batch)  # while the link is down: they wait in outboxes
                await asyncio.sleep(0.5)  # dials into the hole time out meanwhile
                assert link.state in (State.STALE, State.RECOVERING, State.CONNECTING)

                cleared = now()
                proxy.clear()
                await link.wait_for(State.ONLINE, timeout=5)
                assert State.ONLINE not in watch.between(holed + HB.bound, cleared)
                await both_ways(batch)
                await inbox.until(lambda got: len(got) >= 1 + 2 * sent)
                await asyncio.sleep(0.3)
                await inbox.stop()

                assert up == [{"register": 1}] + [{"up": n} for n in range(sent)]
                assert field(inbox.got, "echo") == up
                assert field(inbox.got, "push") == list(range(sent))
                assert len(inbox.got) == 1 + 2 * sent
                # Resumed: the same session, the same epoch, and no second rebuild.
                assert link._session.session_id == sid and list(hub.sessions) == [sid]
                assert epochs == [hub.epoch] and link.lifecycle.epoch == hub.epoch
                assert link.statistics()["reconnects"] == 1
                assert await finish(link, dialer) == []
        finally:
            await hub.close()

    run(main)


# -- the hub dies ------------------------------------------------------------------------------


def test_sqlite_hub_killed_twice_delivers_and_records_exactly_once(workdir: Path) -> None:
    """SIGKILL mid-stream, twice, restarted on the same SQLite file and port. The handler
    is slower than the client (10 ms a call), so each kill finds messages written but not
    handled, or a call under way whose commit never happens. The same epoch (one
    rebuild), each delivery recorded once, each echo once, all in order."""
    store, log = workdir / "hub.sqlite", workdir / "calls.jsonl"
    count = 60

    async def main() -> None:
        hub = HubProcess(_free_port(), "--store", str(store), "--log", str(log),
                         "--handler-delay", "0.01")
        await hub.start()
        held_at_kills: list[int] = []
        try:
            epochs: list[str | None] = []

            async def register(link: Link) -> None:
                epochs.append(link.lifecycle.epoch)
                await link.send({"register": len(epochs)})

            link, dialer, _ = make_link(hub.url, session=True, on_rebuild=register)
            await link.start()
            await link.wait_for(State.ONLINE, timeout=5)
            inbox = Inbox(link)
            for n in range(count):
                await link.send({"up": n})
                await asyncio.sleep(0.004)
                if n in (20, 45):
                    held_at_kills.append(len(list(link.lifecycle.outbox.peek())))
                    await hub.restart()  # SIGKILL, then a fresh process on the file
            await inbox.until(lambda got: len(got) >= 1 + count)
            await asyncio.sleep(0.3)
            await inbox.stop()
            assert await finish(link, dialer) == []
        finally:
            await hub.kill()

        expected = [{"register": 1}] + [{"up": n} for n in range(count)]
        # Each kill found unacknowledged messages: they had to be replayed.
        assert len(held_at_kills) == 2 and min(held_at_kills) > 0, held_at_kills
        assert inbox.got == expected  # every echo once, in order
        assert len(epochs) == 1  # the epoch survived both kills: no second rebuild
        with contextlib.closing(sqlite3.connect(store)) as db:
            rows = db.execute("SELECT session, data FROM delivered ORDER BY id").fetchall()
            stored_epoch = db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
        assert [json.loads(data) for _, data in rows] == expected  # recorded once each
        assert len({session for session, _ in rows}) == 1
        assert epochs == [stored_epoch[0]]
        # Calls are at-least-once across a kill: a call cut short is made again, right
        # away; otherwise once each and in order.
        calls = [data for _, _, data in log_lines(log)]
        assert [c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c] == expected

    run(main, timeout=25)


def test_memory_hub_killed_is_a_new_epoch_rebuilt_once_and_loses_nothing(
        workdir: Path) -> None:
    """The store dies with the hub: the client sees a new epoch, runs its rebuild hook
    once for it, and the register message is the first thing the new hub handles; then
    the held messages follow. The hub acknowledges every 32 messages (ack_every; its ack
    delay is 1 s and it does not echo), so the kill finds messages handled but not
    acknowledged. PROTOCOL.md section 5: those arrive again (at-least-once); what was
    acknowledged does not; nothing is lost."""
    log = workdir / "calls.jsonl"
    count, kill_at = 60, 40

    async def main() -> None:
        hub = HubProcess(_free_port(), "--log", str(log), "--no-echo", "--ack-delay", "1.0")
        await hub.start()
        try:
            epochs: list[str | None] = []

            async def register(link: Link) -> None:
                epochs.append(link.lifecycle.epoch)
                await link.send({"register": len(epochs)})

            link, dialer, _ = make_link(hub.url, session=True, on_rebuild=register)
            await link.start()
            await link.wait_for(State.ONLINE, timeout=5)
            unacked: set[int] = set()
            for n in range(count):
                await link.send({"up": n})
                await asyncio.sleep(0.01)
                if n == kill_at:
                    # What the client holds unacknowledged now: a superset of what the
                    # dying hub never acknowledged (acks still on the wire may land).
                    unacked = {p["up"] for p in link.held()
                               if isinstance(p, dict) and "up" in p}
                    await hub.restart()

            def done() -> bool:
                calls = log_lines(log)
                return bool(calls) and calls[-1][2] == {"up": count - 1}

            await until(done, what="the new hub handles the last message")
            # Its ack comes within its 1 s ack delay; a duplicate would arrive meanwhile.
            await until(lambda: link.statistics()["outbox_depth"] == 0, timeout=5,
                        what="the new hub acknowledges everything")
            assert await finish(link, dialer) == []
        finally:
            await hub.kill()
        assert len(epochs) == 2 and epochs[0] != epochs[1], epochs

        calls = log_lines(log)
        by_epoch: dict[str, list[Any]] = {}
        for epoch, _, data in calls:
            by_epoch.setdefault(epoch, []).append(data)
        assert list(by_epoch) == epochs  # exactly two hubs, one epoch each
        first, second = by_epoch.values()
        # Each hub's first call is the rebuild's register, for its own epoch: once each.
        assert first[0] == {"register": 1} and field(first, "register") == [1]
        assert second[0] == {"register": 2} and field(second, "register") == [2]
        old, new = numbered(first), numbered(second)
        # Each hub saw its messages once and in order, with no hole ...
        assert old == list(range(len(old)))
        assert new == list(range(new[0], count)), new
        # ... together nothing is lost, and only what was unacknowledged at the crash came
        # twice (here there was some: the at-least-once case happened).
        assert new[0] <= len(old), (old, new)
        doubled = set(old) & set(new)
        assert doubled and doubled <= unacked, (doubled, unacked)
        assert unacked < set(old)  # the first ones were acknowledged: never sent again

    run(main, timeout=25)


# -- refusals ----------------------------------------------------------------------------------


def test_wrong_resume_token_leaves_the_session_alone_and_the_client_starts_anew() -> None:
    """PROTOCOL.md section 5: ``error unauthorized``; the hub's session is untouched, the
    client drops its id and token, opens a new session, rebuilds, and sends what it holds."""
    async def main() -> None:
        received: list[tuple[str, Any]] = []
        hub = await serve(lambda session, data: received.append((session.id, data)))
        try:
            async with FaultProxy(("127.0.0.1", hub.port), rng=random.Random(10)) as proxy:
                async def register(link: Link) -> None:
                    await link.send("register")

                link, dialer, watch = make_link(f"ws://127.0.0.1:{proxy.port}/",
                                                session=True, on_rebuild=register)
                await link.start()
                await link.wait_for(State.ONLINE, timeout=5)
                await link.send("one")
                (sid,) = hub.sessions
                await until(lambda: (sid, "one") in received)
                await until(lambda: link.statistics()["outbox_depth"] == 0)
                before = await hub.store.get(sid)
                assert link._session is not None and link._session.session_id == sid
                link._session.token = "A" * 32  # as if the token were stolen and replaced

                proxy.reset_peer()
                await asyncio.sleep(0.05)
                proxy.clear()
                await link.send("two")  # held while the link is away
                await until(lambda: len(hub.sessions) == 2, timeout=5, what="a new session")
                await link.wait_for(State.ONLINE, timeout=5)
                (new_sid,) = set(hub.sessions) - {sid}
                await until(lambda: (new_sid, "two") in received)
                assert [d for s, d in received if s == sid] == ["register", "one"]
                assert [d for s, d in received if s == new_sid] == ["register", "two"]
                assert await hub.store.get(sid) == before  # untouched, not even last_seen
                assert link._session.session_id == new_sid
                assert any("unauthorized" in c.reason for c in watch.changes), \
                    [c.reason for c in watch.changes]
                await finish(link, dialer)
        finally:
            await hub.close()

    run(main)


def test_busy_hub_is_retried_no_sooner_than_retry_after(
        caplog: pytest.LogCaptureFixture) -> None:
    """``error busy`` (one hello a second) with ``retry_after``: each dial after a busy
    refusal comes at least ``retry_after`` later, and the link gets in once allowed.
    (Found here: classify dropped the hint of an explicitly retryable error.)"""
    retry_after = 0.4
    caplog.set_level(logging.INFO, logger="tether.link")

    async def main() -> tuple[list[float], set[int]]:
        hub = await serve(lambda session, data: session.send(data),
                          limits=Limits(hello_rate=1, retry_after=retry_after))
        try:
            async with FaultProxy(("127.0.0.1", hub.port), rng=random.Random(11)) as proxy:
                link, dialer, watch = make_link(f"ws://127.0.0.1:{proxy.port}/",
                                                session=True)
                await link.start()
                await link.wait_for(State.ONLINE, timeout=5)
                proxy.reset_peer()
                await asyncio.sleep(0.02)
                proxy.clear()
                cut = now()
                await until(lambda: link.statistics()["reconnects"] == 1, timeout=5,
                            what="back online")
                back, _ = watch.first(State.ONLINE, after=cut)
                assert back.at - cut >= 1.0 - 0.1  # one hello a second
                await link.send("in")
                assert await asyncio.wait_for(link.receive(), 5) == "in"
                assert len(hub.sessions) == 1  # resumed, busy or not
                await finish(link, dialer)
                busy = {int(m.group(1)) for r in caplog.records
                        if (m := re.search(r"handshake #(\d+) failed: .*: busy:",
                                           r.getMessage()))}
                return dialer.dials, busy
        finally:
            await hub.close()

    dials, busy = run(main)
    assert busy, "no busy refusal: the scenario did not happen"
    # Attempt k is dials[k - 1]; the one after a busy refusal waits retry_after at least.
    waits = {k: dials[k] - dials[k - 1] for k in sorted(busy) if k < len(dials)}
    assert waits and min(waits.values()) >= retry_after - EARLY, waits


# -- presence ----------------------------------------------------------------------------------


def test_presence_of_a_blackholed_client_goes_stale_then_gone() -> None:
    heartbeat = Heartbeat(interval=0.2, timeout=0.2)
    expire = 0.5

    async def main() -> None:
        received: list[tuple[str, Any]] = []

        def handler(session: Session, data: Any) -> None:
            received.append((session.id, data))

        hub = await serve(handler, heartbeat=heartbeat, expire_after=expire)
        changes: list[tuple[str, Presence, Presence, float]] = []
        hub.on_presence(lambda sid, old, new: changes.append((sid, old, new, now())))
        try:
            async with FaultProxy(("127.0.0.1", hub.port), rng=random.Random(7)) as proxy:
                registered: list[str | None] = []

                async def register(link: Link) -> None:
                    registered.append(link.lifecycle.epoch)
                    await link.send("register")

                link, dialer, watch = make_link(f"ws://127.0.0.1:{proxy.port}/",
                                                session=True, on_rebuild=register)
                await link.start()
                await link.wait_for(State.ONLINE, timeout=5)
                (sid,) = hub.sessions
                assert hub.presence[sid] is Presence.PRESENT
                sent = now()  # the hub hears this message after now: last heard >= sent
                await link.send("before")
                await until(lambda: (sid, "before") in received)
                holed = now()
                proxy.blackhole()
                await until(lambda: sid not in hub.sessions, timeout=5, what="gone")
                mine = [(old, new, at) for s, old, new, at in changes if s == sid]
                assert [(old, new) for old, new, _ in mine] == [
                    (Presence.GONE, Presence.PRESENT),
                    (Presence.PRESENT, Presence.STALE),
                    (Presence.STALE, Presence.GONE)]
                stale_at, gone_at = mine[1][2], mine[2][2]
                # Firm lower bounds: silent for the whole bound, stale for expire_after.
                assert stale_at - sent >= heartbeat.bound - EARLY
                assert stale_at - holed <= heartbeat.bound + TOL
                assert gone_at - stale_at >= expire - EARLY
                assert gone_at - stale_at <= expire + TOL
                await asyncio.sleep(0.01)  # forgotten by the store as soon as it answers
                assert sid not in hub.presence and await hub.store.get(sid) is None
                assert State.STALE in watch.states  # the client noticed too
                # What the client still holds: the hub's ack may be caught in the hole. A
                # new session re-sends all but the old rebuild's messages.
                held = [e.payload.payload for e in link.lifecycle.outbox.peek()
                        if not e.urgent]
                assert held in ([], ["before"]), held

                # The client comes back to a new session (its old one is gone), rebuilds,
                # re-sends what it held (at-least-once: the hub lost the session), and is
                # present again.
                proxy.clear()
                await link.wait_for(State.ONLINE, timeout=5)
                await link.send("after")
                await until(lambda: any(data == "after" for _, data in received))
                (new_sid,) = hub.sessions
                assert new_sid != sid and hub.presence[new_sid] is Presence.PRESENT
                assert [data for s, data in received if s == new_sid] == \
                    ["register", *held, "after"]
                assert [data for s, data in received if s == sid] == ["register", "before"]
                assert changes[-1][:3] == (new_sid, Presence.GONE, Presence.PRESENT)
                assert registered == [hub.epoch, hub.epoch]
                await finish(link, dialer)
        finally:
            await hub.close()

    run(main)


# -- secrets -----------------------------------------------------------------------------------


def _windows(token: str, size: int = 12) -> list[str]:
    """Every ``size``-character piece of ``token``: a log must not show part of it either."""
    return [token[i:i + size] for i in range(len(token) - size + 1)]


def _resume_scenario() -> tuple[str, str]:
    """A session opened, cut (proxy reset), resumed, and a thief's hello refused; returns
    the resume token and the reprs of every object involved."""
    async def main() -> tuple[str, str]:
        hub = await serve(lambda session, data: session.send(data))
        try:
            async with FaultProxy(("127.0.0.1", hub.port), rng=random.Random(8)) as proxy:
                link, dialer, _ = make_link(f"ws://127.0.0.1:{proxy.port}/", session=True)
                await link.start()
                await link.wait_for(State.ONLINE, timeout=5)
                await link.send("one")
                assert await asyncio.wait_for(link.receive(), 5) == "one"
                assert link._session is not None and link._session.token is not None
                token, sid = link._session.token, link._session.session_id
                assert sid is not None
                proxy.reset_peer()
                await asyncio.sleep(0.05)
                proxy.clear()
                await link.wait_for(State.ONLINE, timeout=5)
                await link.send("two")
                assert await asyncio.wait_for(link.receive(), 5) == "two"
                assert link._session.session_id == sid  # resumed with the token
                session = hub.sessions[sid]
                reprs = " ".join([
                    repr(link), str(link), repr(link._session), repr(link.lifecycle),
                    repr(link.statistics()), repr(dialer), repr(hub), repr(session),
                    str(session), repr(hub.store), repr(await hub.store.get(sid)),
                    repr(dict(hub.sessions)), repr(proxy)])
                await finish(link, dialer)
                return token, reprs
        finally:
            await hub.close()

    return run(main)


def test_resume_token_stays_out_of_tether_logs_and_reprs(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token, reprs = _resume_scenario()
    ours = [r for r in caplog.records if r.name.startswith("tether")]
    assert any(r.name == "tether.hub" and "resumed" in r.getMessage() for r in ours)
    assert any(r.name == "tether.link" and r.levelno == logging.DEBUG for r in ours)
    for record in ours:
        text = record.getMessage() + repr(record.args) + str(record.exc_info)
        leaked = [piece for piece in _windows(token) if piece in text]
        assert not leaked, (record.name, record.getMessage())
    assert not [piece for piece in _windows(token) if piece in reprs], reprs


def test_resume_token_stays_out_of_every_log_record(caplog: pytest.LogCaptureFixture) -> None:
    """Every logger, websockets' included: its frame lines (DEBUG) showed the hello's
    tail, token included, and carried the whole frame in ``record.args`` (found here)."""
    caplog.set_level(logging.DEBUG)
    token, _ = _resume_scenario()
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        leaked = [piece for piece in _windows(token) if piece in text]
        assert not leaked, (record.name, record.getMessage())


def test_credentials_in_headers_stay_out_of_every_log_record(
        caplog: pytest.LogCaptureFixture) -> None:
    """The other secret a link carries: ``headers`` (a bearer token) on every dial.
    websockets logs every handshake header at DEBUG, on both ends (found here)."""
    secret = "s3cret-bearer-" + "q" * 24
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        hub = await serve(lambda session, data: session.send(data))
        try:
            link, dialer, _ = make_link(f"ws://127.0.0.1:{hub.port}/", session=True,
                                        headers={"Authorization": f"Bearer {secret}"})
            await link.start()
            await link.wait_for(State.ONLINE, timeout=5)
            await link.send("x")
            assert await asyncio.wait_for(link.receive(), 5) == "x"
            await finish(link, dialer)
        finally:
            await hub.close()

    run(main)
    assert any(r.name.startswith("tether") for r in caplog.records)
    for record in caplog.records:
        text = record.getMessage() + repr(record.args)
        assert secret not in text, (record.name, record.getMessage())


# -- limits ------------------------------------------------------------------------------------


def test_client_honours_the_hubs_max_inflight() -> None:
    """PROTOCOL.md 3: no more than ``max_inflight`` unacknowledged messages; a burst ten
    times that goes through without one ``overflow`` error or reconnect."""
    async def main() -> None:
        got: list[Any] = []
        hub = await serve(lambda session, data: got.append(data),
                          limits=Limits(max_inflight=4))
        try:
            link, dialer, watch = make_link(f"ws://127.0.0.1:{hub.port}/", session=True)
            await link.start()
            await link.wait_for(State.ONLINE, timeout=5)
            for n in range(40):
                await link.send(n)
            await until(lambda: len(got) >= 40, timeout=10)
            assert got == list(range(40))
            overflows = [c.reason for c in watch.changes if "overflow" in c.reason]
            assert overflows == [] and link.statistics()["reconnects"] == 0, overflows
            await finish(link, dialer)
        finally:
            await hub.close()

    run(main)


if __name__ == "__main__":
    sys.exit(main())

