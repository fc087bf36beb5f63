"""The Link over real WebSockets on 127.0.0.1, against a server in a subprocess.

The scenarios of ``tests/test_link.py`` (virtual clock, in-memory transport), with real
faults: the server SIGKILLed and restarted on its port, frozen with SIGSTOP (a half-open
peer), a black hole, a reset or latency in a :class:`~adapters.proxy.FaultProxy`, an
accept-then-drop server, refused credentials, and a pending request outliving its studio.

Each test checks the states seen, timing bounds (lower bounds firm, upper bounds loose:
CI machines are slow), the messages, and after ``close()``: no transport left open and no
task left running. Heartbeat 0.3 s / 0.3 s and a fast backoff keep each test to seconds.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from adapters.link import Link, LinkFailed, Undelivered
from adapters.proxy import FaultProxy
from adapters.websocket import connect
from fsm import Backoff, Heartbeat, State, StateChange
from fsm.errors import Closed, LinkClosedError
from tests.servers import ANSWER, SLAM_CODE, RecordingDialer, ServerProcess

T = TypeVar("T")
pytestmark = [pytest.mark.realsocket, pytest.mark.timeout(30)]

HB = Heartbeat(interval=0.3, timeout=0.3)
FAST = Backoff(initial=0.05, cap=0.5, grace=1.0)
HANDSHAKE = 1.0  # handshake_timeout: a dial into a frozen server gives up after this
TOL = 1.5  # slack on upper bounds only
EARLY = 0.005  # a timer may fire up to a clock tick early; lower bounds allow this much
OWN_TASKS = ("Link.", "WebSocketTransport.")  # coroutines the link and transport run


def now() -> float:
    return asyncio.get_running_loop().time()


def qualname(task: asyncio.Task[Any]) -> str:
    """The qualified name of the coroutine a task runs (``Link._reader``, ...)."""
    name: str = getattr(task.get_coro(), "__qualname__", "")
    return name


async def settled(before: set[asyncio.Task[Any]], within: float,
                  only: tuple[str, ...] = ()) -> list[str]:
    """Tasks not in ``before`` (and, with ``only``, whose coroutine's qualified name starts
    with one of those) still running after ``within`` s; as reprs, for a message."""
    def alive() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t not in before and not t.done()
                and (not only or qualname(t).startswith(only))]

    deadline = now() + within
    while alive() and now() < deadline:
        await asyncio.sleep(0.01)
    return sorted(repr(t) for t in alive())


def run(main: Callable[[], Coroutine[Any, Any, T]], timeout: float = 20.0) -> T:
    """``asyncio.run(main())``; then no task other than this one may be left."""
    async def bounded() -> T:
        before = set(asyncio.all_tasks())
        async with asyncio.timeout(timeout):
            result = await main()
        leftover = await settled(before, within=1.0)
        assert not leftover, f"tasks leaked: {leftover}"
        return result

    return asyncio.run(bounded())


class Watch:
    """Every state change, when the peer was last heard at each, and the most transports
    ever open at once."""

    def __init__(self, link: Link, dialer: RecordingDialer | None) -> None:
        self.link, self.dialer = link, dialer
        self.changes: list[StateChange] = []
        self.heard: list[float] = []
        self.max_open = 0
        link.on_state_change(self.changed)

    def changed(self, change: StateChange) -> None:
        self.changes.append(change)
        self.heard.append(self.link.lifecycle.last_heard)
        if self.dialer is not None:
            live = [t for t in self.dialer.transports if not t.closed]
            self.max_open = max(self.max_open, len(live))

    @property
    def states(self) -> list[str]:
        return [c.new for c in self.changes]

    def first(self, state: str, after: float) -> tuple[StateChange, float]:
        """The first change into ``state`` at or after ``after``, and last_heard then."""
        for change, heard in zip(self.changes, self.heard, strict=True):
            if change.new == state and change.at >= after:
                return change, heard
        raise AssertionError(f"no {state} after {after:.3f}: {self.states}")

    def between(self, start: float, end: float) -> list[str]:
        return [c.new for c in self.changes if start <= c.at <= end]


def collapse(states: list[str]) -> list[str]:
    """States without the heartbeat's online <-> waiting round trips."""
    out: list[str] = []
    for state in states:
        if state != State.WAITING and (not out or out[-1] != state):
            out.append(state)
    return out


def make_link(url: str, *, seed: int = 7, **options: Any) -> tuple[Link, RecordingDialer, Watch]:
    dialer = RecordingDialer(url, open_timeout=HANDSHAKE, close_timeout=0.5)
    options.setdefault("heartbeat", HB)
    options.setdefault("backoff", FAST)
    link = Link(dialer, handshake_timeout=HANDSHAKE, close_timeout=0.5,
                rng=random.Random(seed), **options)
    return link, dialer, Watch(link, dialer)


async def finish(link: Link, dialer: RecordingDialer | None) -> list[Undelivered]:
    """Close the link; nothing of it may stay open or running."""
    before = {t for t in asyncio.all_tasks()
              if not qualname(t).startswith(OWN_TASKS)}
    undelivered = await link.close()
    assert link.state in (State.CLOSED, State.FAILED)
    leftover = await settled(before, within=0.5, only=OWN_TASKS)
    assert not leftover, f"link tasks alive after close(): {leftover}"
    if dialer is not None:
        assert dialer.open_transports == [], f"open after close(): {dialer.open_transports}"
    return undelivered


async def receive(link: Link, within: float = 5.0) -> Any:
    return await asyncio.wait_for(link.receive(), within)


async def nothing_more(link: Link, within: float) -> None:
    """No further message arrives within ``within`` s."""
    with pytest.raises(TimeoutError):
        extra = await asyncio.wait_for(link.receive(), within)
        raise AssertionError(f"unexpected extra message {extra!r}")


def check_heartbeat_stale(change: StateChange, heard: float) -> None:
    """A heartbeat verdict: after at least interval + timeout of silence (firm), and
    saying so."""
    assert change.at - heard >= HB.bound - EARLY, (change.at - heard, change)
    assert "interval 0.3 s + timeout 0.3 s" in change.reason, change.reason
    assert change.old == State.WAITING, change


# -- the server dies -----------------------------------------------------------------------


def test_server_killed_and_restarted_link_recovers_and_rebuilds_twice() -> None:
    async def main() -> None:
        async with ServerProcess("echo") as server:
            rebuilds: list[float] = []

            async def register(link: Link) -> None:
                rebuilds.append(now())
                await link.send({"type": "register", "n": len(rebuilds)})

            link, dialer, watch = make_link(server.url, on_rebuild=register)
            await link.start()
            await link.wait_for(State.ONLINE, timeout=5)
            assert await receive(link) == {"type": "register", "n": 1}

            killed = now()
            server.kill()
            await link.wait_for(State.RECOVERING, timeout=5)
            stale, _ = watch.first(State.STALE, after=killed)
            assert stale.at - killed <= HB.bound + TOL  # the EOF tells, or the heartbeat
            await server.wait_dead()
            await asyncio.sleep(0.6)  # dials are refused meanwhile
            assert link.state == State.RECOVERING
            assert link.statistics()["attempts"] >= 2

            await server.restart()
            restarted = now()
            await link.wait_for(State.ONLINE, timeout=5)
            back = now()
            assert back - restarted <= FAST.cap + HANDSHAKE + TOL  # liveness, loose
            assert await receive(link) == {"type": "register", "n": 2}
            assert len(rebuilds) == 2 and rebuilds[1] >= restarted
            assert State.ONLINE not in watch.between(killed, restarted)
            await link.send("after the restart")
            assert await receive(link) == "after the restart"

            assert collapse(watch.states) == [
                "connecting", "online", "stale", "recovering", "online"]
            stats = link.statistics()
            assert stats["reconnects"] == 1
            assert stats["attempts"] == len(dialer.dials) >= 3  # at least one refused
            assert len(dialer.transports) == 2 and watch.max_open <= 1
            assert await finish(link, dialer) == []

    run(main)


def test_server_frozen_is_declared_stale_by_the_heartbeat_and_recovers_after_sigcont() -> None:
    async def main() -> None:
        async with ServerProcess("echo") as server:
            link, dialer, watch = make_link(server.url)
            await link.start()
            await link.wait_for(State.ONLINE, timeout=5)
            await link.send("before")
            assert await receive(link) == "before"

            frozen = now()
            server.stop()  # half-open: sockets stay up, nothing answers
            await link.wait_for(State.STALE, timeout=HB.bound + 5)
            stale, heard = watch.first(State.STALE, after=frozen)
            check_heartbeat_stale(stale, heard)
            assert stale.at - frozen <= HB.bound + TOL  # detected in time (loose)
            await asyncio.sleep(0.5)  # dials now hang in the frozen server's backlog
            assert link.state in (State.STALE, State.RECOVERING)

            server.cont()
            resumed = now()
            await link.wait_for(State.ONLINE, timeout=HANDSHAKE + FAST.cap + 5)
            assert now() - resumed <= HANDSHAKE + FAST.cap + TOL
            # Never online for a peer silent longer than interval + timeout.
            assert State.ONLINE not in watch.between(frozen + HB.bound, resumed)
            await link.send("after")
            assert await receive(link) == "after"
            assert collapse(watch.states)[:4] == ["connecting", "online", "stale", "recovering"]
            assert collapse(watch.states)[-1] == "online"
            assert link.statistics()["reconnects"] == 1
            assert watch.max_open <= 1
            assert await finish(link, dialer) == []

    run(main)


# -- faults in the network: a proxy between link and server ----------------------------------


def test_blackhole_is_declared_stale_and_link_recovers_after_clear() -> None:
    async def main() -> None:
        async with ServerProcess("echo") as server, \
                FaultProxy(("127.0.0.1", server.port), rng=random.Random(1)) as proxy:
            link, dialer, watch = make_link(f"ws://127.0.0.1:{proxy.port}/")
            await link.start()
            await link.wait_for(State.ONLINE, timeout=5)
            await link.send("through the proxy")
            assert await receive(link) == "through the proxy"

            holed = now()
            proxy.blackhole()
            await link.wait_for(State.STALE, timeout=HB.bound + 5)
            stale, heard = watch.first(State.STALE, after=holed)
            check_heartbeat_stale(stale, heard)
            assert stale.at - holed <= HB.bound + TOL
            await asyncio.sleep(0.5)
            assert link.state in (State.STALE, State.RECOVERING)

            cleared = now()
            proxy.clear()
            await link.wait_for(State.ONLINE, timeout=HANDSHAKE + FAST.cap + 5)
            assert now() - cleared <= HANDSHAKE + FAST.cap + TOL
            assert State.ONLINE not in watch.between(holed + HB.bound, cleared)
            await link.send("after the hole")
            assert await receive(link) == "after the hole"
            assert link.statistics()["reconnects"] == 1
            assert watch.max_open <= 1
            assert await finish(link, dialer) == []

    run(main)


def test_reset_by_the_network_is_noticed_by_the_transport_and_link_recovers() -> None:
    async def main() -> None:
        async with ServerProcess("echo") as server, \
                FaultProxy(("127.0.0.1", server.port), rng=random.Random(1)) as proxy:
            link, dialer, watch = make_link(f"ws://127.0.0.1:{proxy.port}/")
            await link.start()
            await link.wait_for(State.ONLINE, timeout=5)

            reset = now()
            proxy.reset_peer()  # stays on: new connections are reset at once too
            await link.wait_for(State.STALE, timeout=5)
            stale, _ = watch.first(State.STALE, after=reset)
            # The RST is the evidence, not the heartbeat's silence.
            assert "Broken" in stale.reason and "interval" not in stale.reason, stale.reason
            await asyncio.sleep(0.5)
            assert link.state != State.ONLINE
            attempts = link.statistics()["attempts"]
            assert attempts >= 2  # it tried again, and was reset again

            proxy.clear()
            await link.wait_for(State.ONLINE, timeout=FAST.cap + HANDSHAKE + 5)
            await link.send("after the reset")
            assert await receive(link) == "after the reset"
            assert collapse(watch.states)[:4] == ["connecting", "online", "stale", "recovering"]
            assert link.statistics()["reconnects"] == 1
            assert proxy.statistics().accepted == link.statistics()["attempts"]
            assert watch.max_open <= 1
            assert await finish(link, dialer) == []

    run(main)


def test_latency_below_the_timeout_does_not_flap() -> None:
    async def main() -> None:
        latency = 0.06  # each way: a round trip of 0.12 s against a 0.3 s timeout
        async with ServerProcess("echo") as server, \
                FaultProxy(("127.0.0.1", server.port), rng=random.Random(1)) as proxy:
            proxy.latency(latency * 1000)
            link, dialer, watch = make_link(f"ws://127.0.0.1:{proxy.port}/")
            await link.start()
            await link.wait_for(State.ONLINE, timeout=5)
            await asyncio.sleep(2.5)  # about eight probe rounds
            for n in range(5):
                await link.send({"n": n})
            assert [await receive(link) for _ in range(5)] == [{"n": n} for n in range(5)]

            assert State.STALE not in watch.states, watch.states
            assert set(watch.states) == {"connecting", "online", "waiting"}
            assert watch.states.count(State.WAITING) >= 4  # probes went out and were answered
            stats = link.statistics()
            assert stats["reconnects"] == 0 and stats["attempts"] == 1
            assert stats["last_rtt"] >= 2 * latency - EARLY  # the pong crossed the latency
            assert stats["last_rtt"] < HB.timeout
            assert await finish(link, dialer) == []

    run(main)


# -- servers that will not have us ------------------------------------------------------------


def test_accept_then_close_server_causes_no_reconnect_storm() -> None:
    async def main() -> None:
        async with ServerProcess("slam") as server:
            link, dialer, watch = make_link(server.url)
            started = now()
            await link.start()
            await asyncio.sleep(2.0)
            elapsed = now() - started
            attempts = link.statistics()["attempts"]
            assert attempts - 1 <= len(dialer.dials) <= attempts  # one may be about to dial
            # websockets' own reconnect made 2,407 attempts in 3.5 s; full jitter under a
            # 0.5 s cap averages ~0.25 s per attempt once capped.
            assert attempts <= 50, attempts
            assert attempts / elapsed <= 25
            assert attempts >= 4, attempts  # and it keeps trying
            assert State.FAILED not in watch.states
            assert set(watch.states) <= {"connecting", "online", "waiting", "stale",
                                         "recovering"}
            error = link.lifecycle.last_error
            assert isinstance(error, Closed) and error.code == SLAM_CODE, repr(error)
            assert watch.max_open <= 1
            await finish(link, dialer)

    run(main)


def test_credentials_refused_fail_with_401_and_hand_back() -> None:
    async def main() -> None:
        async with ServerProcess("echo", token="s3cret") as server:
            link, dialer, watch = make_link(server.url,
                                            headers={"Authorization": "Bearer wrong"})
            await link.send({"n": 1})
            await link.start()
            with pytest.raises(LinkFailed, match="401"):
                await link.wait_for(State.ONLINE, timeout=5)
            assert watch.states == ["connecting", "failed"]
            assert "401" in link.reason
            await asyncio.sleep(0.3)
            assert link.statistics()["attempts"] == 1  # no retry: it cannot help
            assert dialer.headers == [{"Authorization": "Bearer wrong"}]
            assert [u.payload for u in link.undelivered()] == [{"n": 1}]
            with pytest.raises(LinkClosedError):
                await link.send({"n": 2})
            with pytest.raises(LinkFailed, match="401"):
                await link.wait_for(State.ONLINE, timeout=1)
            await finish(link, dialer)

            # The same server takes the right token, fetched per attempt.
            async def token() -> dict[str, str]:
                return {"Authorization": "Bearer s3cret"}

            good = connect(server.url, headers=token, heartbeat=HB, backoff=FAST,
                           handshake_timeout=HANDSHAKE, close_timeout=0.5)
            await good.start()
            await good.wait_for(State.ONLINE, timeout=5)
            await good.send("let in")
            assert await receive(good) == "let in"
            assert await finish(good, None) == []

    run(main)


# -- messages and requests across an outage ---------------------------------------------------


def test_message_sent_during_an_outage_arrives_after_recovery_exactly_once() -> None:
    async def main() -> None:
        async with ServerProcess("echo") as server:
            async def register(link: Link) -> None:
                await link.send({"type": "register"})

            link, dialer, watch = make_link(server.url, on_rebuild=register)
            await link.start()
            await link.wait_for(State.ONLINE, timeout=5)
            assert await receive(link) == {"type": "register"}

            server.kill()
            await link.wait_for(State.RECOVERING, timeout=5)
            await server.wait_dead()
            await link.send({"text": "one"})
            await link.send({"text": "two"})
            await asyncio.sleep(0.5)  # refused dials meanwhile: the messages wait
            assert link.state == State.RECOVERING
            assert link.statistics()["outbox_depth"] == 2
            assert link.undelivered() == []

            await server.restart()
            await link.wait_for(State.ONLINE, timeout=5)
            got = [await receive(link) for _ in range(3)]
            assert got == [{"type": "register"}, {"text": "one"}, {"text": "two"}]
            await nothing_more(link, within=2 * HB.bound)  # each came back once
            assert link.statistics()["outbox_depth"] == 0
            assert collapse(watch.states) == [
                "connecting", "online", "stale", "recovering", "online"]
            assert await finish(link, dialer) == []

    run(main)


def test_pending_request_is_answered_by_the_restarted_studio() -> None:
    async def main() -> None:
        async with ServerProcess("studio") as server:
            link, dialer, watch = make_link(server.url)
            await link.start()
            await link.wait_for(State.ONLINE, timeout=5)
            warm = await link.request({"type": "ask"}, id="warm-up", timeout=5)
            assert warm == {"reply_to": "warm-up", "text": ANSWER}

            server.stop()  # the studio hangs before it can answer
            frozen = now()
            request = asyncio.ensure_future(
                link.request({"type": "ask", "prompt": "continue?"}, id="q1", timeout=15))
            await link.wait_for(State.STALE, timeout=HB.bound + 5)
            stale, heard = watch.first(State.STALE, after=frozen)
            check_heartbeat_stale(stale, heard)
            server.kill()
            await server.wait_dead()
            await asyncio.sleep(0.3)
            assert not request.done()
            assert link.statistics()["pending_requests"] == 1

            await server.restart()
            restarted = now()
            answer = await asyncio.wait_for(request, 10)
            assert now() >= restarted
            assert answer == {"reply_to": "q1", "text": ANSWER}
            assert link.state in (State.ONLINE, State.WAITING)
            assert link.statistics()["pending_requests"] == 0
            assert link.statistics()["reconnects"] == 1
            assert collapse(watch.states)[:4] == ["connecting", "online", "stale", "recovering"]
            assert collapse(watch.states)[-1] == "online"
            await nothing_more(link, within=HB.bound)  # the answer went to the request
            assert await finish(link, dialer) == []

    run(main)
