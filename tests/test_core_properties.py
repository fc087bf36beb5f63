"""Property tests of the pure core: random events and time steps against the invariants.

A tiny simulated driver performs the core's actions the way ``adapters.link`` does (dial,
abort, transmit, hand back) and feeds back only events a real transport could produce,
plus deliberately stray ones. After every step we check what users rely on:

* the state is declared, and every change is a declared edge of the table;
* **no false online**: in a live state, ``now - last_heard <= interval + timeout`` (plus
  time forgiven after a stall of our own loop, reported as ``excused``);
* **one transport**: the core never dials while another transport is not released;
* **nothing lost, nothing doubled** (plain mode): each sent payload is written to a socket
  at most once, in order, and handed back at most once, never both; every payload is
  accounted for at every step: written, handed back, or still held by the outbox (frames
  queued for a socket that died were never written and must come back);
* **calm retries**: every backoff delay is within ``[0, cap]``.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from adapters.profiles import examples
from fsm import (
    DEFAULT_SPEC,
    AbortTransport,
    Backoff,
    CloseTransport,
    Envelope,
    HandBack,
    Heartbeat,
    Lifecycle,
    NotifyStateChange,
    OpenTransport,
    Transmit,
)
from fsm.errors import Broken, Closed, LinkClosedError, Refused
from fsm.events import (
    CloseRequested,
    Connected,
    ConnectFailed,
    DeadlineReached,
    Event,
    MessageReceived,
    MessagesWritten,
    PongReceived,
    RebuildFailed,
    Rebuilt,
    SendRequested,
    Started,
    TransportLost,
    TransportReleased,
)

HEARTBEAT = Heartbeat(interval=1.0, timeout=1.0)
BACKOFF = Backoff(initial=0.1, cap=2.0, grace=3.0)
EDGES = {(row["source"], row["dest"]) for row in DEFAULT_SPEC.rows if row["dest"] is not None}
EPSILON = 1e-9
LATE = 20.0  # seconds of virtual time before closing or fatal errors may end a run


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.seed = 0
        self.lc = Lifecycle(rand=self._rand, heartbeat=HEARTBEAT, backoff=BACKOFF)
        self.now = 0.0
        self.transports = 0  # opened and not yet released, as the driver sees it
        self.dialing = False
        self.rebuilding = False
        self.aborting = False
        self.sent: list[int] = []
        self.socket_buffer: list[Envelope] = []
        self.transmitted: list[int] = []
        self.handed_back: list[int] = []

    def _rand(self) -> float:
        self.seed = (self.seed * 1103515245 + 12345) % 2**31
        return self.seed / 2**31

    def feed(self, event: Event) -> None:
        state_before = self.lc.state
        actions = self.lc.handle(event, self.now)
        for action in actions:
            if isinstance(action, OpenTransport):
                assert self.transports == 0, f"dialed with {self.transports} transport(s) open"
                self.transports, self.dialing = 1, True
            elif isinstance(action, AbortTransport | CloseTransport):
                self.dialing = self.rebuilding = False
                self.aborting = self.transports == 1
                self.socket_buffer.clear()  # unwritten frames die with the socket
            elif isinstance(action, Transmit):
                assert self.transports == 1 and not self.aborting, "transmit with no transport"
                self.socket_buffer += action.envelopes
            elif isinstance(action, HandBack):
                self.handed_back += [e.payload for e in action.envelopes]
            elif isinstance(action, NotifyStateChange):
                change = action.change
                assert (change.old, change.new) in EDGES, f"undeclared edge {change}"
        assert self.lc.state in DEFAULT_SPEC.state_names, (state_before, event)
        if self.lc.state == "recovering" and self.lc.transport == "none":
            dial_at = self.lc.next_deadline()
            assert dial_at is not None, "recovering without a retry scheduled"
            delay = dial_at - self.now
            assert -EPSILON <= delay <= BACKOFF.cap + EPSILON, f"backoff delay {delay} > cap"

    # -- time ------------------------------------------------------------------------

    @rule(dt=st.floats(min_value=0.0, max_value=1.5))
    def tick(self, dt: float) -> None:
        """The driver's timer: it wakes at (or a little after) the deadline."""
        deadline = self.lc.next_deadline()
        if deadline is not None and deadline > self.now:
            self.now = min(self.now + dt, deadline + 0.01)
        self.feed(DeadlineReached())

    @rule(stall=st.floats(min_value=0.5, max_value=30.0))
    def stall(self, stall: float) -> None:
        """Our own loop was blocked (an agent runtime doing sync work)."""
        self.now += stall
        self.feed(DeadlineReached())

    # -- the user ----------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        self.feed(Started())

    @rule()
    def send(self) -> None:
        payload = len(self.sent)
        try:
            self.feed(SendRequested(payload))
        except LinkClosedError:
            assert self.lc.tags.final
            return
        self.sent.append(payload)

    @precondition(lambda self: self.now > LATE)
    @rule()
    def close(self) -> None:
        self.feed(CloseRequested())

    # -- the transport ----------------------------------------------------------------------

    @precondition(lambda self: self.dialing)
    @rule()
    def connected(self) -> None:
        self.dialing, self.rebuilding = False, True
        self.feed(Connected())

    @precondition(lambda self: self.dialing)
    @rule()
    def comes_online(self) -> None:
        """The common case in one step: the dial succeeds and the rebuild finishes."""
        self.connected()
        self.rebuild_done(ok=True)

    @precondition(lambda self: self.dialing)
    @rule(status=st.sampled_from([None, 503]))
    def connect_failed(self, status: int | None) -> None:
        self.dialing, self.transports = False, 0
        self.feed(ConnectFailed(Refused("refused", status=status)))

    @precondition(lambda self: self.dialing and self.now > LATE)
    @rule()
    def credentials_refused(self) -> None:
        self.dialing, self.transports = False, 0
        self.feed(ConnectFailed(Refused("bad token", status=401)))

    @precondition(lambda self: self.rebuilding)
    @rule(ok=st.booleans())
    def rebuild_done(self, ok: bool) -> None:
        self.rebuilding = False
        self.feed(Rebuilt() if ok else RebuildFailed(RuntimeError("hook raised")))

    @precondition(lambda self: self.transports == 1 and not self.aborting and not self.dialing)
    @rule(code=st.sampled_from([None, 1001, 1008]))
    def lost(self, code: int | None) -> None:
        if code == 1008 and self.now <= LATE:
            code = 1001  # a revoked token ends the run: keep it for late in the run
        self.rebuilding = False
        error = Broken("reset") if code is None else Closed("closed", code=code)
        self.feed(TransportLost(error))

    @precondition(lambda self: self.aborting)
    @rule()
    def released(self) -> None:
        self.aborting, self.transports = False, 0
        self.feed(TransportReleased())

    @precondition(lambda self: self.transports == 1 and not self.dialing and not self.aborting)
    @rule(pong=st.booleans())
    def heard(self, pong: bool) -> None:
        self.feed(PongReceived(rtt=0.01) if pong else MessageReceived("from server"))

    @precondition(lambda self: self.socket_buffer)
    @rule(count=st.integers(min_value=1, max_value=5))
    def written(self, count: int) -> None:
        """The writer task hands ``count`` queued frames to the socket."""
        done, self.socket_buffer = self.socket_buffer[:count], self.socket_buffer[count:]
        self.transmitted += [e.payload for e in done]
        wire = done[-1].wire
        assert wire is not None, "transmitted without a wire number"
        self.feed(MessagesWritten(upto=wire))

    @rule(event=st.sampled_from([Connected(), Rebuilt(), TransportReleased(), PongReceived()]))
    def stray(self, event: Event) -> None:
        """An event from a transport the core already gave up on; must change nothing bad."""
        if isinstance(event, Connected) and self.dialing:
            return
        if isinstance(event, TransportReleased) and self.aborting:
            return
        if isinstance(event, Rebuilt) and self.rebuilding:
            return
        if isinstance(event, PongReceived) and self.transports == 1 and not self.aborting:
            return
        self.feed(event)

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def no_false_online(self) -> None:
        if self.lc.tags.live:
            silence = self.now - self.lc.last_heard
            assert silence <= HEARTBEAT.bound + self.lc.excused + EPSILON, (
                f"{self.lc.state} after {silence:.3f} s of silence "
                f"(bound {HEARTBEAT.bound}, excused {self.lc.excused:.3f})"
            )

    @invariant()
    def live_deadline_within_bound(self) -> None:
        """The deadline a live state promises is never later than the bound allows."""
        deadline = self.lc.next_deadline()
        if self.lc.tags.live:
            assert deadline is not None, f"{self.lc.state} has no heartbeat deadline"
            limit = self.lc.last_heard + HEARTBEAT.bound + self.lc.excused
            assert deadline <= limit + EPSILON, f"deadline {deadline} past {limit}"

    @invariant()
    def one_transport_and_none_when_idle(self) -> None:
        assert self.transports <= 1
        if self.lc.state in ("idle", "closed", "failed") and not self.aborting:
            assert self.transports == 0, f"transport open in {self.lc.state}"

    @invariant()
    def nothing_lost_nothing_doubled(self) -> None:
        assert len(set(self.transmitted)) == len(self.transmitted), "a message was sent twice"
        assert len(set(self.handed_back)) == len(self.handed_back), "handed back twice"
        assert not set(self.transmitted) & set(self.handed_back), "sent and handed back"
        held = {e.payload for e in self.lc.outbox.peek()}
        accounted = set(self.transmitted) | set(self.handed_back) | held
        assert accounted == set(self.sent), f"lost: {set(self.sent) - accounted}"
        assert self.transmitted == sorted(self.transmitted), "sent out of order"


LifecycleMachine.TestCase.settings = settings(max_examples=examples(300), stateful_step_count=60,
                                              deadline=None)
TestLifecycleProperties = LifecycleMachine.TestCase
