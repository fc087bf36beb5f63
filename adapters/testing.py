"""The property-test kit: drive a real :class:`~adapters.link.Link` through random faults.

:class:`LinkUnderFaults` is a hypothesis ``RuleBasedStateMachine``. Each example gets a
fresh virtual-time event loop (``async_solipsism``), an in-memory server
(:mod:`adapters.memory`) and a link built from :attr:`LinkUnderFaults.spec`; rules send
messages, let virtual time pass, switch faults on and off (reset, freeze, crash with
state kept or lost, refuse, latency), make the server hostile (frames nested 50,000
deep, invalid UTF-8, oversize, random bytes) and make the user's callbacks raise; after
every step the invariants users rely on are checked, and a failing run is printed as a
short program to paste back as a regression test. Use it to verify a custom lifecycle::

    from adapters.testing import LinkUnderFaults

    class MySpecUnderFaults(LinkUnderFaults):
        spec = MY_SPEC
        on_action = {Authenticate: authenticate}

    TestMySpec = MySpecUnderFaults.TestCase

Set ``session = True`` to run the same machine in session mode, against an in-memory
session server (:class:`adapters.session_peer.SessionPeer`) that also sends messages to
the client.

Invariants, in both modes:

* the state is always a declared state of the spec;
* **no false online**: in a live state, the peer was heard within
  ``interval + timeout`` (plus time forgiven after a stall, plus one scheduling tick);
* **a live state always has its deadline armed**: the driver's timer (or the timer task
  handling it) is set no later than the core's next deadline. A driver task that dies
  silently would break exactly this, and the link would show a frozen peer online;
* **one transport**: never more than one transport open or opening;
* **liveness**: once every fault is cleared, the link is live again within
  ``backoff.cap + handshake_timeout + interval + timeout``;
* **no leaks**: after ``close()``, no transport is open and no task is left.

Plain mode (what any server gives): **nothing doubled, order kept**: the server reads
each message at most once, in send order (plain mode may lose a message written into a
socket that died; it never duplicates one).

Session mode: **exactly once, in order, while the server keeps its state**: within each
server epoch, the server delivers each message at most once and in send order, and the
client's application takes each server message at most once and in order; **nothing
lost**: once the faults are healed, every message ``send()`` accepted and did not hand
back has been delivered (across epochs: a lost server state makes it at-least-once);
the client never breaks the protocol.

Needs the ``testing`` extra (hypothesis, async-solipsism).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import async_solipsism
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from adapters.link import ActionHandler, Link, Undelivered
from adapters.memory import MemoryDialer, MemoryServer, ServerConnection
from adapters.profiles import examples
from adapters.session_peer import SessionPeer
from fsm import DEFAULT_SPEC, Backoff, Heartbeat, Spec, StateChange
from fsm.actions import Action
from fsm.errors import LinkClosedError, OutboxFull
from fsm.events import Event

__all__ = ["HOSTILE_FRAMES", "LinkUnderFaults", "check_spec"]

#: Slack for "one scheduling tick" on the virtual clock.
TICK = 0.01
#: The kit's transport frame limit (websockets' default is 1 MiB; smaller keeps it fast).
MAX_SIZE = 64 * 1024

#: Frames a hostile or broken server sends, by name. Plain mode delivers what it cannot
#: decode raw (deep nesting, bytes) and drops the connection on what the transport
#: refuses (invalid UTF-8: 1007, oversize: 1009); session mode treats all of them as the
#: server breaking the protocol and resumes on a new connection.
HOSTILE_FRAMES: dict[str, Callable[[random.Random], str | bytes]] = {
    "deep": lambda rng: "[" * 50_000,
    "invalid_utf8": lambda rng: '{"type":"msg","data":"\udcff\udcfe"}',
    "oversize": lambda rng: "x" * (MAX_SIZE + 1),
    "random_bytes": lambda rng: rng.randbytes(rng.randrange(1, 64)),
}


class CallbackRaised(Exception):
    """What the kit's raising callbacks raise."""


class LinkUnderFaults(RuleBasedStateMachine):
    """Subclass and set :attr:`spec` (and :attr:`on_action`) to check your own lifecycle."""

    spec: ClassVar[Spec] = DEFAULT_SPEC
    on_action: ClassVar[Mapping[type[Action], ActionHandler]] = {}
    heartbeat: ClassVar[Heartbeat] = Heartbeat(interval=1.0, timeout=1.0)
    backoff: ClassVar[Backoff] = Backoff(initial=0.05, cap=1.0, grace=2.0)
    handshake_timeout: ClassVar[float] = 2.0
    session: ClassVar[bool] = False
    #: Events of your spec the user may report at any moment (``PauseRequested()``, ...),
    #: through :meth:`adapters.link.Link.fire`.
    user_events: ClassVar[Sequence[Event]] = ()
    #: Events the user reports when the faults are healed, before liveness is checked
    #: (``ResumeRequested()``): a state the user parks the link in is not a failure to
    #: come back, but a parked link that does not come back once resumed is.
    resume_events: ClassVar[Sequence[Event]] = ()

    def __init__(self) -> None:
        super().__init__()
        self.loop = async_solipsism.EventLoop()
        asyncio.set_event_loop(self.loop)
        self.rng = random.Random(0)
        self.read: list[Any] = []  # what the server read, in order (plain mode)
        self.peer = SessionPeer() if self.session else None
        self.server = MemoryServer(self.peer or self._record, rng=random.Random(0))
        if self.peer is not None:
            self.peer.attach(self.server)
        self.dialer = MemoryDialer(self.server, open_timeout=None, max_size=MAX_SIZE)
        self.callbacks_raise = False
        self.link = Link(self.dialer, heartbeat=self.heartbeat, backoff=self.backoff,
                         spec=self.spec, on_action=dict(self.on_action), session=self.session,
                         handshake_timeout=self.handshake_timeout, rng=random.Random(1),
                         correlate=self._correlate)
        self.link.on_state_change(self._changed)
        self.link.on_undelivered(self._handed_back)
        self.sent: list[int] = []
        self.handed_back: set[int] = set()
        self.server_sent = 0
        self.sent_by_server: dict[tuple[str, str], list[int]] = {}  # by (epoch, session)
        self.taken: list[tuple[str, int]] = []  # (epoch, n) the application took
        self.faults: set[str] = set()
        self._run(self.link.start())

    async def _record(self, conn: ServerConnection) -> None:
        while True:
            self.read.append(await conn.receive())

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def _advance(self, seconds: float) -> None:
        self._run(asyncio.sleep(seconds))

    def _do(self, fault: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Switch a fault (or run a coroutine function) inside the loop."""
        async def switch() -> None:
            result = fault(*args, **kwargs)
            if asyncio.iscoroutine(result):
                await result

        self._run(switch())

    # -- the user's callbacks, raising on demand ------------------------------------------

    def _correlate(self, message: Any) -> str | None:
        if self.callbacks_raise:
            raise CallbackRaised("correlate")
        return None

    def _changed(self, change: StateChange) -> None:
        if self.callbacks_raise:
            raise CallbackRaised("on_state_change")

    def _handed_back(self, item: Undelivered) -> None:
        if isinstance(item.payload, str) and item.payload.isdigit():
            self.handed_back.add(int(item.payload))
        if self.callbacks_raise:
            raise CallbackRaised("on_undelivered")

    # -- the user --------------------------------------------------------------------

    @rule()
    def send(self) -> None:
        n = len(self.sent)
        try:
            self._run(self.link.send(str(n)))
        except (LinkClosedError, OutboxFull):
            return
        self.sent.append(n)

    @rule(seconds=st.sampled_from([0.05, 0.3, 1.0, 2.5]))
    def time_passes(self, seconds: float) -> None:
        self._advance(seconds)

    @precondition(lambda self: not self.callbacks_raise)
    @rule()
    def callbacks_start_raising(self) -> None:
        """``correlate``, ``on_state_change`` and ``on_undelivered`` raise from now on:
        the link must log them and carry on, every invariant intact."""
        self.callbacks_raise = True

    @precondition(lambda self: bool(self.user_events))
    @rule(pick=st.integers(0, 15))
    def user_acts(self, pick: int) -> None:
        """The user reports one of the spec's own events (pause, resume, ...)."""
        event = self.user_events[pick % len(self.user_events)]
        self._run(self._fire(event))
        self.faults.add("user")  # heal resumes it

    async def _fire(self, event: Event) -> None:
        state = self.link.state
        try:
            self.link.fire(event)
        except Exception as error:
            raise AssertionError(f"{event!r} in state {state!r}: the spec's code raised "
                                 f"{error!r}") from error

    # -- faults ------------------------------------------------------------------------

    @rule()
    def reset(self) -> None:
        self._do(self.server.reset)

    @precondition(lambda self: "frozen" not in self.faults)
    @rule()
    def freeze(self) -> None:
        self._do(self.server.freeze)
        self.faults.add("frozen")

    @precondition(lambda self: "crashed" not in self.faults)
    @rule(keep_state=st.booleans())
    def crash(self, keep_state: bool) -> None:
        self._do(self.server.crash, keep_state=keep_state)
        self.faults.add("crashed")

    @precondition(lambda self: "refused" not in self.faults)
    @rule(status=st.sampled_from([None, 503]))
    def refuse(self, status: int | None) -> None:
        self._do(self.server.refuse, status=status)
        self.faults.add("refused")

    @rule(seconds=st.sampled_from([0.1, 0.5]))
    def latency(self, seconds: float) -> None:
        self._do(self.server.delay, seconds)
        self.faults.add("latency")

    @precondition(lambda self: "frozen" not in self.faults)
    @rule(kind=st.sampled_from(sorted(HOSTILE_FRAMES)), count=st.integers(1, 3))
    def hostile_frames(self, kind: str, count: int) -> None:
        """The server sends frames nobody should have to accept (``HOSTILE_FRAMES``), in
        a burst: a frame that kills the reader leaves the next one buffered for the
        deadline path, where the seed bug of issue 7 lost the timer."""
        frames = [HOSTILE_FRAMES[kind](self.rng) for _ in range(count)]

        async def send_to_all() -> None:
            for conn in self.server.connections:
                for frame in frames:
                    if not conn.closed:
                        await conn.send(frame)

        self._run(send_to_all())

    @precondition(lambda self: bool(self.faults))
    @rule()
    def heal(self) -> None:
        """Every fault cleared: the link must be live again within the liveness bound."""
        self._heal()
        bound = self.backoff.cap + self.handshake_timeout + self.heartbeat.bound
        self._advance(bound)
        if not self.link.lifecycle.tags.final:
            assert self.link.lifecycle.tags.live, (
                f"still {self.link.state} ({self.link.reason}) {bound:.1f} s after healing")
            if self.peer is not None:
                self._advance(self.heartbeat.interval)  # room for the outbox to flow
                self._check_nothing_lost()

    def _heal(self) -> None:
        if "frozen" in self.faults:
            self._do(self.server.thaw)
        if "crashed" in self.faults:
            self._do(self.server.restart)
        if "refused" in self.faults:
            self._do(self.server.accept)
        self._do(self.server.clear)
        if "user" in self.faults:
            for event in self.resume_events:
                self._run(self._fire(event))
        self.faults.clear()

    # -- session mode: the server talks back ----------------------------------------------

    def _peer_session(self) -> str | None:
        """The client's session, if the server (still) holds it."""
        assert self.peer is not None
        session_id = self.link.session_id
        return session_id if session_id in self.peer.sessions else None

    @precondition(lambda self: self.peer is not None and self._peer_session() is not None
                  and "frozen" not in self.faults)  # a frozen server sends nothing
    @rule()
    def server_sends(self) -> None:
        """The server sends a message to the client's session."""
        assert self.peer is not None
        session_id = self._peer_session()
        assert session_id is not None
        self.server_sent += 1
        self._do(self.peer.send, session_id, {"n": self.server_sent,
                                             "epoch": self.peer.epoch})
        self.sent_by_server.setdefault((self.peer.epoch, session_id), []).append(
            self.server_sent)

    @precondition(lambda self: self.peer is not None)
    @rule()
    def application_reads(self) -> None:
        """The application takes every message waiting for it."""
        self._read_everything()

    def _read_everything(self) -> None:
        async def drain() -> None:
            while self.link.statistics()["inbound_depth"]:
                message = await self.link.receive()
                if isinstance(message, dict) and "n" in message:
                    self.taken.append((message["epoch"], message["n"]))

        self._run(drain())

    def _check_nothing_lost(self) -> None:
        assert self.peer is not None
        delivered = {int(d) for ds in self.peer.delivered.values() for d in ds
                     if isinstance(d, str) and d.isdigit()}
        missing = set(self.sent) - self.handed_back - delivered
        assert not missing, f"accepted by send(), never delivered nor handed back: {missing}"
        # And the other way: what the server sent to the session the client holds
        # reaches the application (a server that lost its state lost its messages).
        self._read_everything()
        epoch, session_id = self.peer.epoch, self.link.session_id
        taken = {n for e, n in self.taken if e == epoch}
        lost = set(self.sent_by_server.get((epoch, session_id or ""), ())) - taken
        assert not lost, f"server messages to session {session_id} (epoch {epoch}) never " \
                         f"reached the application: {sorted(lost)}"

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def declared_state(self) -> None:
        assert self.link.lifecycle.state in self.spec.state_names, self.link.state

    @invariant()
    def no_false_online(self) -> None:
        core = self.link.lifecycle
        if core.tags.live:
            silence = self.loop.time() - core.last_heard
            assert silence <= self.heartbeat.bound + core.excused + TICK, (
                f"{core.state} after {silence:.3f} s of silence")

    @invariant()
    def deadline_armed(self) -> None:
        core = self.link.lifecycle
        if core.tags.live:
            armed, due = self.link.armed_deadline, core.next_deadline()
            assert armed is not None, f"{core.state} with no deadline armed ({core.reason})"
            assert due is not None and armed <= due + TICK, (
                f"{core.state}: the timer is armed for {armed:.3f}, the core's deadline "
                f"is {due}")

    @invariant()
    def transport_watched(self) -> None:
        """A state that keeps an open transport is watched: live (heartbeat deadlines), or
        with a deadline of its own (handshake, rebuild). Otherwise a peer that dies while
        the link sits there is never noticed: a state live in all but its tag."""
        core = self.link.lifecycle
        if core.transport == "open" and not core.tags.live and not core.tags.final:
            assert core.next_deadline() is not None, (
                f"{core.state!r} holds an open transport and nothing watches it: no "
                f"heartbeat, no deadline (tag it 'live', or drop the transport on entering "
                f"it, as paused does with abort_transport)")

    @invariant()
    def spec_code_never_raised(self) -> None:
        """The spec's callbacks and conditions never raise (the driver would fail the link
        with "the core raised ...")."""
        assert "the core raised" not in self.link.reason, self.link.reason

    @invariant()
    def one_transport(self) -> None:
        assert self.dialer.open_transports <= 1, self.dialer.open_transports

    @invariant()
    def nothing_doubled_order_kept(self) -> None:
        if self.peer is None:
            numbers = [int(frame) for frame in self.read if isinstance(frame, str)
                       and frame.isdigit()]
            assert len(numbers) == len(set(numbers)), f"read twice: {numbers}"
            assert numbers == sorted(numbers), f"out of order: {numbers}"
            return
        for epoch, data in self.peer.delivered.items():
            numbers = [int(d) for d in data if isinstance(d, str) and d.isdigit()]
            assert numbers == sorted(set(numbers)), f"epoch {epoch}: delivered {numbers}"
        by_epoch: dict[str, list[int]] = {}
        for epoch, n in self.taken:
            by_epoch.setdefault(epoch, []).append(n)
        for epoch, numbers in by_epoch.items():
            assert numbers == sorted(set(numbers)), f"epoch {epoch}: taken {numbers}"
        assert not self.peer.violations, f"the client broke the protocol: {self.peer.violations}"

    def teardown(self) -> None:
        try:
            self._heal()
            self._run(self.link.close())
            self._run(self.server.aclose())
            assert self.dialer.open_transports == 0, "a transport was left open"
            leftover = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            assert not leftover, f"tasks leaked: {leftover}"
        finally:
            asyncio.set_event_loop(None)
            self.loop.close()


LinkUnderFaults.TestCase.settings = settings(max_examples=examples(60), stateful_step_count=30,
                                             deadline=None)


def check_spec(spec: Spec, *, on_action: Mapping[type[Action], ActionHandler] | None = None,
               session: bool = False, user_events: Sequence[Event] = (),
               resume_events: Sequence[Event] = (), max_examples: int | None = None,
               **overrides: Any) -> None:
    """Run :class:`LinkUnderFaults` on ``spec`` now: one call instead of a subclass.

    Raises the failing invariant's ``AssertionError``, after hypothesis shrank the run;
    the steps of the shrunk run are printed and attached as the error's notes. The
    state tags decide which invariants apply to each custom state. ``overrides`` set
    other class attributes (``heartbeat``, ``backoff``, ``handshake_timeout``)."""
    attributes: dict[str, Any] = {
        "spec": spec, "on_action": dict(on_action or {}), "session": session,
        "user_events": tuple(user_events), "resume_events": tuple(resume_events),
        **overrides}
    machine = type(f"{spec.name.title().replace('-', '')}UnderFaults", (LinkUnderFaults,),
                   attributes)
    run_state_machine_as_test(machine, settings=settings(
        LinkUnderFaults.TestCase.settings,
        max_examples=max_examples or examples(60)))
