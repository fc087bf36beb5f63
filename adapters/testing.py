"""The property-test kit: drive a real :class:`~adapters.link.Link` through random faults.

:class:`LinkUnderFaults` is a hypothesis ``RuleBasedStateMachine``. Each example gets a
fresh virtual-time event loop (``async_solipsism``), an in-memory server
(:mod:`adapters.memory`) and a link built from :attr:`LinkUnderFaults.spec`; rules send
messages, let virtual time pass, and switch faults on and off (reset, freeze, crash with
state kept or lost, refuse, latency); after every step the invariants users rely on are
checked, and a failing run is printed as a short program to paste back as a regression
test. Use it to verify a custom lifecycle::

    from adapters.testing import LinkUnderFaults

    class MySpecUnderFaults(LinkUnderFaults):
        spec = MY_SPEC
        on_action = {Authenticate: authenticate}

    TestMySpec = MySpecUnderFaults.TestCase

Invariants (plain mode, which is what any server gives):

* the state is always a declared state of the spec;
* **no false online**: in a live state, the peer was heard within
  ``interval + timeout`` (plus time forgiven after a stall, plus one scheduling tick);
* **one transport**: never more than one transport open or opening;
* **nothing doubled, order kept**: the server reads each message at most once, in send
  order (plain mode may lose a message written into a socket that died; it never
  duplicates one);
* **liveness**: once every fault is cleared, the link is live again within
  ``backoff.cap + handshake_timeout + interval + timeout``;
* **no leaks**: after ``close()``, no transport is open and no task is left.

Needs the ``testing`` extra (hypothesis, async-solipsism).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import async_solipsism
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from adapters.link import ActionHandler, Link
from adapters.memory import MemoryDialer, MemoryServer, ServerConnection
from fsm import DEFAULT_SPEC, Backoff, Heartbeat, Spec
from fsm.actions import Action
from fsm.errors import LinkClosedError, OutboxFull

__all__ = ["LinkUnderFaults"]

#: Slack for "one scheduling tick" on the virtual clock.
TICK = 0.01


class LinkUnderFaults(RuleBasedStateMachine):
    """Subclass and set :attr:`spec` (and :attr:`on_action`) to check your own lifecycle."""

    spec: ClassVar[Spec] = DEFAULT_SPEC
    on_action: ClassVar[Mapping[type[Action], ActionHandler]] = {}
    heartbeat: ClassVar[Heartbeat] = Heartbeat(interval=1.0, timeout=1.0)
    backoff: ClassVar[Backoff] = Backoff(initial=0.05, cap=1.0, grace=2.0)
    handshake_timeout: ClassVar[float] = 2.0

    def __init__(self) -> None:
        super().__init__()
        self.loop = async_solipsism.EventLoop()
        asyncio.set_event_loop(self.loop)
        self.read: list[Any] = []  # what the server read, in order
        self.server = MemoryServer(self._record, rng=random.Random(0))
        self.dialer = MemoryDialer(self.server, open_timeout=None)
        self.link = Link(self.dialer, heartbeat=self.heartbeat, backoff=self.backoff,
                         spec=self.spec, on_action=dict(self.on_action),
                         handshake_timeout=self.handshake_timeout, rng=random.Random(1))
        self.sent: list[int] = []
        self.faults: set[str] = set()
        self._run(self.link.start())

    async def _record(self, conn: ServerConnection) -> None:
        while True:
            self.read.append(await conn.receive())

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def _advance(self, seconds: float) -> None:
        self._run(asyncio.sleep(seconds))

    def _do(self, fault: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Switch a fault from inside the loop, as the memory server expects."""
        async def switch() -> None:
            fault(*args, **kwargs)

        self._run(switch())

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

    def _heal(self) -> None:
        if "frozen" in self.faults:
            self._do(self.server.thaw)
        if "crashed" in self.faults:
            self._do(self.server.restart)
        if "refused" in self.faults:
            self._do(self.server.accept)
        self._do(self.server.clear)
        self.faults.clear()

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
    def one_transport(self) -> None:
        assert self.dialer.open_transports <= 1, self.dialer.open_transports

    @invariant()
    def nothing_doubled_order_kept(self) -> None:
        numbers = [int(frame) for frame in self.read if isinstance(frame, str)
                   and frame.isdigit()]
        assert len(numbers) == len(set(numbers)), f"read twice: {numbers}"
        assert numbers == sorted(numbers), f"out of order: {numbers}"

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


LinkUnderFaults.TestCase.settings = settings(max_examples=60, stateful_step_count=30,
                                             deadline=None)
