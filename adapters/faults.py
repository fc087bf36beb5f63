"""Fault schedules: hypothesis strategies that shrink to a timeline a person can read.

A :class:`Schedule` is a short list of timed :class:`Fault` objects (``Fault(1.2,
"freeze", 2.5)``: 1.2 s after the link first came online the server freezes, for
2.5 s). :func:`run_schedule` plays one against a real :class:`~adapters.link.Link` and
an in-memory server on a virtual clock, sending a message every 0.25 s, checks the
invariants at every state change and every 50 ms, and after the last fault checks that
the link came back and lost nothing. When an invariant breaks it raises
:class:`ScheduleFailed`, whose message is the run as a timeline and as a regression
test to paste::

    invariant broken at t=2.05: waiting after 2.050 s of silence (bound 2.0 s + 0.000 s
    forgiven after a stall)
    t=0.00 connecting; t=0.00 online; t=0.00 freeze; t=1.00 waiting; t=2.05 BROKEN

    def test_regression() -> None:
        run_schedule(Schedule((Fault(0.0, 'freeze', 2.5),)))

With hypothesis, ``@given(schedules())`` draws schedules; a failure shrinks to the fewest,
earliest, simplest faults (kinds shrink toward the front of :data:`KINDS`, times toward
0, durations toward the shortest), and the shrunk schedule's message is what you read.

The vocabulary (Toxiproxy's names where they exist, plus process and user faults):

==================  ========================================================================
``freeze``          the server stops (SIGSTOP): connections stay open, nothing answers
``blackhole``       nothing is delivered either way; connections stay open, and reset
                    when it ends (Toxiproxy's ``timeout``: TCP does not skip frames)
``reset``           every open connection breaks (TCP RST); instant
``drop``            half of the frames and pings vanish (what no TCP connection does:
                    session mode sees gaps and resumes; the peer's gap reports are
                    then not held against the client)
``delay``           0.3 s of latency both ways, order kept
``refuse``          new dials are refused
``crash_kept``      the server dies and restarts after ``duration``, its state kept
``crash_lost``      the same, its state lost (a new epoch: the client rebuilds)
``slow_handshake``  every dial takes 1.5 s more
``garbage``         half of the data frames become bytes nobody can parse
``hostile``         a burst of hostile frames (50,000-deep nesting, random bytes); instant
``stall``           our own event loop is blocked for ``duration`` (an agent's sync call)
``close``           the user closes the link; the run ends there
==================  ========================================================================

Custom specs add their user events as faults: ``user_faults={"pause":
(PauseRequested(), ResumeRequested())}`` fires the first at ``at`` and the second
``duration`` later.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import async_solipsism
from hypothesis import strategies as st

from adapters.link import ActionHandler, Link, Undelivered
from adapters.memory import MemoryDialer, MemoryServer, ServerConnection
from adapters.session_peer import SessionPeer
from fsm import DEFAULT_SPEC, Backoff, Heartbeat, Spec, State, StateChange
from fsm.actions import Action
from fsm.errors import LinkClosedError, LocalProtocolError, OutboxFull
from fsm.events import Event

__all__ = ["DURATIONS", "KINDS", "Fault", "Schedule", "ScheduleFailed", "faults",
           "run_schedule", "schedules"]

#: Fault kinds, simplest first: a failing schedule shrinks toward the front.
KINDS = ("freeze", "blackhole", "reset", "drop", "delay", "refuse", "crash_kept",
         "crash_lost", "slow_handshake", "garbage", "hostile", "stall", "close")
#: How long a fault lasts, shortest first (``reset``, ``hostile``, ``close`` are instant).
DURATIONS = (0.5, 1.0, 2.5, 5.0)
_WIRE = {"blackhole", "drop", "delay", "garbage"}
TICK = 0.01  # one scheduling tick on the virtual clock
_HOSTILE: tuple[Callable[[random.Random], str | bytes], ...] = (
    lambda rng: "[" * 50_000,
    lambda rng: rng.randbytes(rng.randrange(1, 64)),
)


@dataclass(frozen=True, slots=True)
class Fault:
    """``kind`` starts ``at`` seconds after the link started and lasts ``duration``."""

    at: float
    kind: str
    duration: float = 0.0

    def __repr__(self) -> str:
        return f"Fault({self.at!r}, {self.kind!r}, {self.duration!r})"


@dataclass(frozen=True, slots=True)
class Schedule:
    """Faults in the order they start."""

    faults: tuple[Fault, ...] = ()

    def __repr__(self) -> str:
        inner = ", ".join(map(repr, self.faults)) + ("," if len(self.faults) == 1 else "")
        return f"Schedule(({inner}))"

    @property
    def end(self) -> float:
        """When the last fault is over."""
        return max((f.at + f.duration for f in self.faults), default=0.0)


def faults(kinds: tuple[str, ...] = KINDS, horizon: float = 10.0) -> st.SearchStrategy[Fault]:
    """One fault: a kind, a start in tenths of a second up to ``horizon``, a duration."""
    return st.builds(Fault, at=st.integers(0, round(horizon * 10)).map(lambda n: n / 10),
                     kind=st.sampled_from(kinds), duration=st.sampled_from(DURATIONS))


def schedules(kinds: tuple[str, ...] = KINDS, *, max_faults: int = 5,
              horizon: float = 10.0) -> st.SearchStrategy[Schedule]:
    """Schedules of up to ``max_faults`` faults starting within ``horizon`` seconds."""
    return st.lists(faults(kinds, horizon), max_size=max_faults).map(
        lambda drawn: Schedule(tuple(sorted(drawn, key=lambda f: (f.at, KINDS.index(f.kind)
                                                                   if f.kind in KINDS
                                                                   else len(KINDS))))))


class ScheduleFailed(AssertionError):
    """An invariant broke during a schedule; the message is the timeline and a test."""

    def __init__(self, problem: str, at: float, timeline: list[tuple[float, str]],
                 schedule: Schedule, call: str) -> None:
        self.problem, self.at, self.timeline, self.schedule = problem, at, timeline, schedule
        lines = [f"invariant broken at t={at:.2f}: {problem}",
                 "; ".join(f"t={t:.2f} {what.split(' (')[0]}" for t, what in timeline)
                 + f"; t={at:.2f} BROKEN", "", "timeline:"]
        lines += [f"  t={t:6.2f}  {what}" for t, what in timeline]
        lines += ["", "regression test to paste:", "", "    def test_regression() -> None:",
                  f"        {call}"]
        super().__init__("\n".join(lines))


@dataclass
class _Run:
    schedule: Schedule
    spec: Spec
    session: bool
    heartbeat: Heartbeat
    backoff: Backoff
    handshake_timeout: float
    on_action: Mapping[type[Action], ActionHandler]
    user_faults: Mapping[str, tuple[Event, Event]]
    call: str
    timeline: list[tuple[float, str]] = field(default_factory=list)
    failure: tuple[str, float] | None = None
    sent: list[int] = field(default_factory=list)
    handed_back: set[int] = field(default_factory=set)
    read: list[Any] = field(default_factory=list)

    def note(self, what: str) -> None:
        self.timeline.append((asyncio.get_running_loop().time(), what))

    def fail(self, problem: str) -> None:
        if self.failure is None:
            self.failure = (problem, asyncio.get_running_loop().time())

    async def _record(self, conn: ServerConnection) -> None:
        while True:
            self.read.append(await conn.receive())

    def check(self, link: Link, dialer: MemoryDialer) -> None:
        """The invariants that hold at every instant (tags decide which apply)."""
        core, now = link.lifecycle, asyncio.get_running_loop().time()
        if core.state not in self.spec.state_names:
            self.fail(f"undeclared state {core.state!r}")
        if dialer.open_transports > 1:
            self.fail(f"{dialer.open_transports} transports open at once")
        if "the core raised" in core.reason:
            self.fail(f"the spec's code raised: {core.reason}")
        if core.tags.live:
            silence = now - core.last_heard
            if silence > self.heartbeat.bound + core.excused + TICK:
                self.fail(f"{core.state} after {silence:.3f} s of silence (bound "
                          f"{self.heartbeat.bound} s + {core.excused:.3f} s forgiven after "
                          f"a stall)")
            armed, due = link.armed_deadline, core.next_deadline()
            if armed is None or due is None or armed > due + TICK:
                self.fail(f"{core.state} with no deadline armed (driver {armed}, core {due})")
        elif core.transport == "open" and not core.tags.final and core.next_deadline() is None:
            self.fail(f"{core.state!r} holds an open transport and nothing watches it: no "
                      f"heartbeat, no deadline (tag it 'live', or drop the transport on "
                      f"entering it)")

    async def main(self) -> None:  # noqa: PLR0915 (the whole run, one fault a branch)
        loop = asyncio.get_running_loop()
        peer = SessionPeer() if self.session else None
        server = MemoryServer(peer or self._record, rng=random.Random(0))
        if peer is not None:
            peer.attach(server)
        dialer = MemoryDialer(server, open_timeout=None)
        link = Link(dialer, heartbeat=self.heartbeat, backoff=self.backoff, spec=self.spec,
                    on_action=dict(self.on_action), session=self.session,
                    handshake_timeout=self.handshake_timeout, rng=random.Random(1))

        def changed(change: StateChange) -> None:
            self.note(f"{change.new} ({change.reason})")
            self.check(link, dialer)

        def handed(item: Undelivered) -> None:
            if isinstance(item.payload, str) and item.payload.isdigit():
                self.handed_back.add(int(item.payload))

        link.on_state_change(changed)
        link.on_undelivered(handed)
        closed = False

        async def sender() -> None:
            while True:
                await asyncio.sleep(0.25)
                try:
                    await link.send(str(len(self.sent)))
                except (LinkClosedError, OutboxFull):
                    continue
                self.sent.append(len(self.sent))

        async def watcher() -> None:
            while True:
                await asyncio.sleep(0.05)
                for _ in range(8):  # one scheduling tick: the driver's overdue timer and
                    await asyncio.sleep(0)  # deadline task run first (after a stall too)
                self.check(link, dialer)

        wire: set[str] = set()
        crashed = frozen = False

        def rewire() -> None:
            server.clear()
            for kind in wire:
                if kind == "blackhole":
                    server.blackhole()
                elif kind == "drop":
                    server.drop(0.5)
                elif kind == "delay":
                    server.delay(0.3)
                else:
                    server.garbage(0.5)

        async def play(fault: Fault) -> None:  # noqa: PLR0915 (one branch per kind)
            nonlocal crashed, frozen, closed
            await asyncio.sleep(max(0.0, t0 + fault.at - loop.time()))
            kind, lasts = fault.kind, fault.duration
            until = f" (until t={fault.at + lasts:.2f})" if lasts else ""
            if kind in self.user_faults:
                start, end = self.user_faults[kind]
                self.note(f"{kind}{until}")
                self._fire(link, start)
                await asyncio.sleep(lasts)
                self.note(f"{kind} over")
                self._fire(link, end)
                return
            if kind == "close":
                self.note("user closes the link")
                closed = True
                await link.close()
                return
            if kind == "reset":
                self.note("reset")
                server.reset()
                return
            if kind == "hostile":
                self.note("hostile frames")
                rng = random.Random(fault.at)
                for conn in server.connections:
                    for make in _HOSTILE:
                        if not conn.closed and not frozen:
                            await conn.send(make(rng))
                return
            if kind == "stall":
                self.note(f"our loop stalls{until}")
                loop._selector.clock.advance(lasts)  # type: ignore[attr-defined]
                return
            if kind in ("crash_kept", "crash_lost"):
                if crashed:
                    return
                crashed = True
                self.note(f"server crashes, state {kind[6:]}{until}")
                server.crash(keep_state=kind == "crash_kept")
                await asyncio.sleep(lasts)
                self.note("server restarts")
                server.restart()
                crashed = False
                return
            if kind == "freeze":
                if frozen:
                    return
                frozen = True
                self.note(f"freeze{until}")
                server.freeze()
                await asyncio.sleep(lasts)
                self.note("thaw")
                server.thaw()
                frozen = False
                return
            if kind == "refuse":
                self.note(f"refuse dials{until}")
                server.refuse()
                await asyncio.sleep(lasts)
                self.note("accept dials")
                server.accept()
                return
            if kind == "slow_handshake":
                self.note(f"slow handshakes{until}")
                server.slow_handshake(1.5)
                await asyncio.sleep(lasts)
                server.slow_handshake(0.0)
                self.note("handshakes fast again")
                return
            if kind in _WIRE:
                self.note(f"{kind}{until}")
                wire.add(kind)
                rewire()
                await asyncio.sleep(lasts)
                wire.discard(kind)
                rewire()
                self.note(f"{kind} over")
                if kind == "blackhole":  # over TCP the frames it swallowed are not
                    server.reset()       # silently skipped: the connection dies with them
                    self.note("the connections through the black hole reset")
                return
            raise ValueError(f"unknown fault kind {kind!r}; use one of {', '.join(KINDS)} "
                             f"or name it in user_faults")

        self.note("start")
        await link.start()
        try:
            await link.wait_for(State.ONLINE, timeout=self.handshake_timeout)
        except (TimeoutError, LinkClosedError) as error:
            self.fail(f"the link never came online: {error}")
        t0 = loop.time()  # faults are timed from the first online (0.0 for the default spec)
        helpers = [loop.create_task(sender()), loop.create_task(watcher())]
        players = [loop.create_task(play(fault)) for fault in self.schedule.faults]
        try:
            while not all(p.done() for p in players) and self.failure is None:
                await asyncio.sleep(0.05)
            for player in players:
                if player.done() and not player.cancelled() and player.exception():
                    raise player.exception()  # type: ignore[misc]
            if self.failure is None and not closed:
                bound = self.backoff.cap + self.handshake_timeout + self.heartbeat.bound
                await asyncio.sleep(bound)
                if not link.lifecycle.tags.final and not link.lifecycle.tags.live:
                    self.fail(f"still {link.state} ({link.reason}) {bound:.1f} s after the "
                              f"last fault ended")
                if self.failure is None:
                    await asyncio.sleep(self.heartbeat.interval)  # the outbox flows
                    self._check_delivery(link, peer)
        finally:
            for task in helpers + players:
                task.cancel()
            await asyncio.gather(*helpers, *players, return_exceptions=True)
            await link.close()
            await server.aclose()
        if self.failure is None and dialer.open_transports:
            self.fail("a transport was left open after close()")

    def _fire(self, link: Link, event: Event) -> None:
        try:
            link.fire(event)
        except LocalProtocolError as error:
            self.fail(f"{type(event).__name__}: {error}")

    def _check_delivery(self, link: Link, peer: SessionPeer | None) -> None:
        if peer is None:
            numbers = [int(f) for f in self.read if isinstance(f, str) and f.isdigit()]
            if len(numbers) != len(set(numbers)) or numbers != sorted(numbers):
                self.fail(f"the server read {numbers}: doubled or out of order")
            return
        for epoch, data in peer.delivered.items():
            numbers = [int(d) for d in data if isinstance(d, str) and d.isdigit()]
            if numbers != sorted(set(numbers)):
                self.fail(f"epoch {epoch}: delivered {numbers}")
        if link.lifecycle.tags.live:
            delivered = {int(d) for ds in peer.delivered.values() for d in ds
                         if isinstance(d, str) and d.isdigit()}
            held = {int(p) for p in link.held() if isinstance(p, str) and p.isdigit()}
            lost = set(self.sent) - delivered - self.handed_back - held
            if lost:
                self.fail(f"accepted by send(), never delivered nor handed back: "
                          f"{sorted(lost)}")
        lossy = {"drop", "garbage", "blackhole"} & {f.kind for f in self.schedule.faults}
        if peer.violations and not lossy:  # a lost or garbled frame looks like a gap
            self.fail(f"the client broke the protocol: {peer.violations}")


def run_schedule(schedule: Schedule, *, spec: Spec = DEFAULT_SPEC, session: bool = False,
                 heartbeat: Heartbeat | None = None, backoff: Backoff | None = None,
                 handshake_timeout: float = 2.0,
                 on_action: Mapping[type[Action], ActionHandler] | None = None,
                 user_faults: Mapping[str, tuple[Event, Event]] | None = None,
                 ) -> list[tuple[float, str]]:
    """Play ``schedule`` on a fresh virtual clock; return the timeline, or raise
    :class:`ScheduleFailed` with it. ``spec``, ``on_action`` and ``user_faults`` are the
    user's; ``session=True`` runs against an in-memory session server."""
    heartbeat = heartbeat or Heartbeat(interval=1.0, timeout=1.0)
    backoff = backoff or Backoff(initial=0.05, cap=1.0, grace=2.0)
    options = [] if not session else ["session=True"]
    if spec is not DEFAULT_SPEC:
        options.append(f"spec={spec.name}")
    call = f"run_schedule({schedule!r}{''.join(', ' + o for o in options)})"
    run = _Run(schedule, spec, session, heartbeat, backoff, handshake_timeout,
               on_action or {}, user_faults or {}, call)
    loop = async_solipsism.EventLoop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(run.main())
        leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]
        if leftover and run.failure is None:
            run.failure = (f"tasks left after close(): {leftover}", loop.time())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    if run.failure is not None:
        problem, at = run.failure
        raise ScheduleFailed(problem, at, [(t, w) for t, w in run.timeline if t <= at],
                             schedule, call)
    return run.timeline
