"""Property tests of session mode in the pure core, against a simulated session server.

The simulated server follows ``models/PROTOCOL.md``: it delivers a ``msg`` only when
``seq == last + 1``, drops duplicates, treats a gap as a protocol violation, and
acknowledges cumulatively. Connections drop at random; the server either keeps the
session (the client resumes and replays with the same wire numbers) or loses it with a
new epoch (the client rebuilds once for that epoch, then re-sends what it holds). The
rebuild hook sends an urgent ``register`` message on the connection being rebuilt.

The same machine runs with the server's side in a real Redis store
(:class:`RedisSessionMachine`): a resume is a claim, a delivery the store's commit
script, a lost store Redis losing its data.

Invariants users rely on:

* **no gap, ever**: every frame the server reads is a duplicate or the next in order;
* **exactly once within an epoch**: while the server keeps its store, each message is
  delivered at most once, in send order; across a lost store, at least once;
* **nothing lost**: every message is delivered, handed back, or still held;
* **rebuild once per epoch**: the register message opens every new session first, and
  a resume into an epoch whose rebuild finished runs no rebuild.
"""

from __future__ import annotations

import asyncio

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from adapters.profiles import examples
from adapters.stores import Commit, Duplicate, Fenced, Gap
from fsm import (
    AbortTransport,
    Backoff,
    CloseTransport,
    Envelope,
    HandBack,
    Heartbeat,
    Lifecycle,
    RunRebuild,
    Transmit,
)
from fsm.errors import Broken, LinkClosedError
from fsm.events import (
    CloseRequested,
    Connected,
    DeadlineReached,
    Event,
    MessagesAcked,
    PongReceived,
    Rebuilt,
    SendRequested,
    Started,
    TransportLost,
    TransportReleased,
)
from tests.redis_server import RedisServer, redis_server

FIXTURES = (redis_server,)
REGISTER = "register"
MAX_INFLIGHT = 3  # the server's flow limit, announced in its welcome


class SessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.lc = Lifecycle(rand=lambda: 0.5, heartbeat=Heartbeat(1.0, 1.0),
                            backoff=Backoff(initial=0.1, cap=1.0), session=True)
        self.now = 0.0
        # the transport, as a driver sees it
        self.open = False
        self.dialing = False
        self.aborting = False
        self.rebuilding = False
        self.wire: list[Envelope] = []  # frames written, not yet read by the server
        # the server
        self.epoch = 0
        self.has_session = False  # a session can be resumed only once one was welcomed
        self.server_last = 0  # highest client wire number delivered in this session
        self.delivered: list[tuple[int, object]] = []  # (epoch, payload)
        self.rebuilds: list[int] = []  # epochs a rebuild started in
        # the user
        self.sent: list[int] = []
        self.handed_back: list[object] = []

    def feed(self, event: Event) -> None:
        for action in self.lc.handle(event, self.now):
            if isinstance(action, Transmit):
                assert self.open and not self.aborting, "transmit without a transport"
                self.wire += action.envelopes
            elif isinstance(action, AbortTransport | CloseTransport):
                self.wire.clear()  # unread frames die with the connection
                self.aborting, self.dialing, self.rebuilding = self.open, False, False
            elif isinstance(action, RunRebuild):
                self.rebuilding = True
                self.rebuilds.append(self.epoch)
            elif isinstance(action, HandBack):
                self.handed_back += [e.payload for e in action.envelopes]
        if self.lc.transport == "opening" and not self.open:
            self.dialing = True

    def advance(self) -> None:
        deadline = self.lc.next_deadline()
        if deadline is not None:
            self.now = max(self.now, deadline)
        self.feed(DeadlineReached())

    @initialize()
    def start(self) -> None:
        self.feed(Started())

    # -- the client side -------------------------------------------------------------

    @rule()
    def send(self) -> None:
        payload = len(self.sent)
        try:
            self.feed(SendRequested(payload))
        except LinkClosedError:
            return
        self.sent.append(payload)

    @precondition(lambda self: self.rebuilding)
    @rule()
    def rebuild_finishes(self) -> None:
        self.feed(SendRequested(REGISTER, urgent=True))
        self.rebuilding = False
        self.feed(Rebuilt())

    @rule()
    def time_passes(self) -> None:
        self.advance()

    # -- the connection -----------------------------------------------------------------

    # -- the server's store (a subclass puts it in a real store) -------------------------

    def server_session(self, keep: bool) -> tuple[bool, str, int]:
        """The server's answer to a hello: ``(resumed, epoch, acked)``. ``keep``: the
        server still has the session; else it lost its store (a new epoch)."""
        if keep and self.has_session:
            return True, f"e{self.epoch}", self.server_last
        self.epoch += 1
        self.server_last = 0
        self.has_session = True
        return False, f"e{self.epoch}", 0

    def server_delivers(self, wire: int) -> bool:
        """The server reads client message ``wire``: True if it is delivered now."""
        assert wire <= self.server_last + 1, (
            f"gap: server expected {self.server_last + 1}, got {wire}")
        if wire == self.server_last + 1:
            self.server_last = wire
            return True
        return False

    @precondition(lambda self: self.dialing)
    @rule(keep=st.booleans())
    def server_answers(self, keep: bool) -> None:
        """The handshake: the server resumes the session, or lost it (new epoch)."""
        self.dialing, self.open = False, True
        resumed, epoch, acked = self.server_session(keep)
        if resumed:
            self.feed(Connected(resumed=True, epoch=epoch, acked=acked,
                                max_inflight=MAX_INFLIGHT))
        else:
            self.feed(Connected(resumed=False, epoch=epoch, max_inflight=MAX_INFLIGHT))

    @precondition(lambda self: self.open and self.wire)
    @rule(count=st.integers(min_value=1, max_value=4), ack=st.booleans())
    def server_reads(self, count: int, ack: bool) -> None:
        frames, self.wire = self.wire[:count], self.wire[count:]
        for envelope in frames:
            assert envelope.wire is not None
            if self.server_delivers(envelope.wire):
                self.delivered.append((self.epoch, envelope.payload))
        if ack:
            self.feed(MessagesAcked(upto=self.server_last))
        else:
            self.feed(PongReceived())

    @precondition(lambda self: self.open and not self.aborting)
    @rule()
    def connection_drops(self) -> None:
        self.feed(TransportLost(Broken("reset")))

    @precondition(lambda self: self.aborting)
    @rule()
    def released(self) -> None:
        self.aborting = self.open = False
        self.feed(TransportReleased())

    @precondition(lambda self: self.open and not self.aborting and self.has_session)
    @rule(keep=st.booleans())
    def reconnect(self, keep: bool) -> None:
        """The common fault in one step: the connection drops, the backoff runs out, the
        client dials again and the server resumes (or lost the session)."""
        self.connection_drops()
        self.released()
        for _ in range(3):
            if self.dialing:
                break
            self.advance()
        if self.dialing:
            self.server_answers(keep)

    @precondition(lambda self: len(self.sent) > 15)
    @rule()
    def close(self) -> None:
        self.feed(CloseRequested())

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def exactly_once_within_an_epoch_and_in_order(self) -> None:
        for epoch in {e for e, _ in self.delivered}:
            user = [p for e, p in self.delivered if e == epoch and isinstance(p, int)]
            assert len(user) == len(set(user)), f"duplicate delivery in epoch {epoch}"
            assert user == sorted(user), f"out of order in epoch {epoch}: {user}"

    @invariant()
    def register_opens_every_new_session(self) -> None:
        for epoch in {e for e, _ in self.delivered}:
            first = next(p for e, p in self.delivered if e == epoch)
            if epoch > 1 or self.rebuilds:
                assert first == REGISTER, f"epoch {epoch} began with {first!r}"

    @invariant()
    def rebuild_messages_never_outlive_their_rebuild(self) -> None:
        """Each register the server sees came from a rebuild run in that epoch: the
        rebuild messages of an earlier session are not replayed into a new one."""
        for epoch in {e for e, _ in self.delivered}:
            registered = sum(1 for e, p in self.delivered if e == epoch and p == REGISTER)
            assert registered <= self.rebuilds.count(epoch), (
                f"epoch {epoch}: {registered} registers from "
                f"{self.rebuilds.count(epoch)} rebuilds")

    @invariant()
    def flow_limit_kept(self) -> None:
        """Never more unacknowledged messages than the server's max_inflight (the rebuild's
        own messages ride ahead of the limit)."""
        user = [e for e in self.lc.outbox.peek() if e.wire is not None and not e.urgent]
        in_flight = [e for e in user if e.wire is not None and e.wire > self.server_last]
        assert len(in_flight) <= MAX_INFLIGHT, in_flight

    @invariant()
    def nothing_lost(self) -> None:
        delivered = {p for _, p in self.delivered if p != REGISTER}
        held = {e.payload for e in self.lc.outbox.peek()}
        handed = set(self.handed_back)
        assert set(self.sent) <= delivered | held | handed, (
            f"lost: {set(self.sent) - delivered - held - handed}")


SessionMachine.TestCase.settings = settings(max_examples=examples(300), stateful_step_count=60,
                                            deadline=None)
TestSessionProperties = SessionMachine.TestCase


class RedisSessionMachine(SessionMachine):
    """The same machine with the server's side in a real :class:`RedisStore`: a resume
    is a ``claim`` (fencing generation raised), each delivery a commit of the store's
    one script (its duplicate and gap answers decide), and a lost store is Redis losing
    its data (``FLUSHALL``): the epoch key is gone, the store makes a new one."""

    url = ""

    def __init__(self) -> None:
        super().__init__()
        from adapters.stores.redis import RedisStore

        self.runner = asyncio.Runner()
        self.store = self.runner.run(RedisStore.connect(self.url, liveness=5.0))
        self.runner.run(self.flush())
        self.store_epoch = self.runner.run(self.store.new_epoch(""))
        self.sid = ""
        self.generation = 0

    async def flush(self) -> None:
        await self.store._r.flushall()

    def teardown(self) -> None:
        self.runner.run(self.store.aclose())
        self.runner.close()

    def server_session(self, keep: bool) -> tuple[bool, str, int]:
        store = self.store
        if keep and self.has_session:
            claimed = self.runner.run(store.claim(self.sid, self.now))
            assert claimed is not None, "the store lost a session it should keep"
            record, _ = claimed
            assert record.last_in == self.server_last
            self.generation = record.generation
            return True, store.epoch, record.last_in
        if self.has_session:
            self.runner.run(self.flush())  # Redis lost everything
        record, _ = self.runner.run(store.create(self.now))
        assert store.epoch not in self.epochs_seen, "a lost store kept its epoch"
        self.epochs_seen.add(store.epoch)
        self.sid, self.generation = record.session_id, record.generation
        self.epoch += 1
        self.server_last = 0
        self.has_session = True
        return False, store.epoch, 0

    def server_delivers(self, wire: int) -> bool:
        commit = Commit(now=self.now, inbound=(self.sid, wire), generation=self.generation,
                        epoch=self.store.epoch)
        try:
            self.runner.run(self.store.commit(commit))
        except Duplicate:
            assert wire <= self.server_last
            return False
        except Gap as gap:
            raise AssertionError(f"gap: the store has {gap.last_in}, got {wire}") from None
        assert wire == self.server_last + 1
        self.server_last = wire
        return True

    @precondition(lambda self: self.has_session)
    @rule(back=st.integers(min_value=-1, max_value=2), stale=st.booleans())
    def a_late_commit_is_refused(self, back: int, stale: bool) -> None:
        """A commit the store must refuse, changing nothing: a message already
        delivered (a retry whose answer was lost, a hub that missed a delivery), or one
        from a hub whose hold on the session was taken over (an older generation)."""
        wire = self.server_last - back  # back -1: the next message, from a stale hub
        generation = self.generation - 1 if stale else self.generation
        if wire < 1 or (stale and generation < 1) or (back < 0 and not stale):
            return
        commit = Commit(now=self.now, inbound=(self.sid, wire), generation=generation,
                        epoch=self.store.epoch, sends=[(self.sid, '"late"')])
        try:
            self.runner.run(self.store.commit(commit))
        except (Duplicate, Fenced):
            pass
        else:
            raise AssertionError(f"the store took a late commit of {wire} (generation "
                                 f"{generation}, holder's {self.generation})")
        record = self.runner.run(self.store.get(self.sid))
        assert record is not None and (record.last_in, record.next_wire) == \
            (self.server_last, 1), record

    @property
    def epochs_seen(self) -> set[str]:
        seen: set[str] = self.__dict__.setdefault("_epochs_seen", set())
        return seen


def test_session_properties_against_the_redis_store(redis_server: RedisServer) -> None:
    redis_server.start()
    RedisSessionMachine.url = redis_server.url
    run_state_machine_as_test(RedisSessionMachine, settings=settings(
        max_examples=examples(60), stateful_step_count=50, deadline=None))
