"""The asyncio Link over the in-memory transport, on a virtual clock.

Each test drives a real :class:`adapters.link.Link` against a :class:`MemoryServer` with a
fault, and checks what a user sees: the states in order, timing bounds in virtual
seconds, every message accounted for, at most one transport, nothing leaked.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping
from typing import Any

import pytest

from adapters.link import Link, LinkFailed, Undelivered
from adapters.memory import MemoryDialer, MemoryServer, MemoryTransport, ServerConnection, echo
from adapters.transport import Frame
from fsm import Backoff, Heartbeat, Overflow, State, StateChange
from fsm.errors import LinkClosedError, OutboxFull, RequestTimeout
from tests.virtual import now, run

pytestmark = pytest.mark.timeout(20)

HB = Heartbeat(interval=1.0, timeout=1.0)
FAST = Backoff(initial=0.05, cap=1.0, grace=2.0)


class Recorder:
    """Remembers every state change and checks the one-transport invariant at each."""

    def __init__(self, link: Link, dialer: MemoryDialer) -> None:
        self.changes: list[StateChange] = []
        self.dialer = dialer
        self.max_open = 0
        link.on_state_change(self.changed)

    def changed(self, change: StateChange) -> None:
        self.changes.append(change)
        self.max_open = max(self.max_open, self.dialer.open_transports)

    @property
    def states(self) -> list[str]:
        return [c.new for c in self.changes]


def make(server: MemoryServer, **options: Any) -> tuple[Link, MemoryDialer, Recorder]:
    dialer = MemoryDialer(server, open_timeout=None)
    options.setdefault("heartbeat", HB)
    options.setdefault("backoff", FAST)
    options.setdefault("rng", random.Random(7))
    link = Link(dialer, **options)
    return link, dialer, Recorder(link, dialer)


def test_first_connection_rebuilds_before_queued_messages_flow() -> None:
    async def main() -> None:
        server = MemoryServer(echo)

        async def register(link: Link) -> None:
            await link.send({"type": "register", "agent": "alice"})

        link, dialer, rec = make(server, on_rebuild=register)
        await link.send({"n": 1})  # queued before start: waits for the rebuild
        await link.start()
        await link.send({"n": 2})
        await link.wait_for(State.ONLINE, timeout=5)
        got = [await link.receive() for _ in range(3)]
        assert got == [{"type": "register", "agent": "alice"}, {"n": 1}, {"n": 2}]
        assert rec.states == ["connecting", "online"]
        assert await link.close() == []
        assert dialer.open_transports == 0
        await server.aclose()

    run(main)


def test_frozen_peer_is_declared_stale_within_interval_plus_timeout() -> None:
    async def main() -> None:
        server = MemoryServer(echo)
        link, dialer, rec = make(server)
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        heard = now()
        server.freeze()  # half-open: the socket stays up, nothing comes back
        await link.wait_for(State.STALE, timeout=10)
        detected = now() - heard
        assert HB.bound <= detected <= HB.bound + 0.05, detected
        assert rec.states[-2:] == ["waiting", "stale"]
        assert "interval 1.0 s + timeout 1.0 s" in link.reason
        server.thaw()
        await link.wait_for(State.ONLINE, timeout=5)
        assert rec.max_open <= 1
        await link.close()
        assert dialer.open_transports == 0
        await server.aclose()

    run(main)


def test_any_frame_is_proof_of_life_latency_below_timeout_does_not_flap() -> None:
    async def main() -> None:
        server = MemoryServer(echo)
        server.delay(0.4, direction="down")  # pongs take 0.4 s: below the 1 s timeout
        link, _, rec = make(server)
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        await asyncio.sleep(30)
        assert State.STALE not in rec.states
        assert link.statistics()["reconnects"] == 0
        assert link.statistics()["last_rtt"] == pytest.approx(0.4, abs=0.01)
        await link.close()
        await server.aclose()

    run(main)


def test_server_crash_with_state_lost_reconnects_rebuilds_and_delivers_queued() -> None:
    async def main() -> None:
        server = MemoryServer(echo)
        rebuilds: list[float] = []

        async def register(link: Link) -> None:
            rebuilds.append(now())
            await link.send({"type": "register"})

        link, dialer, rec = make(server, on_rebuild=register)
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        assert await link.receive() == {"type": "register"}
        server.crash(keep_state=False)
        await link.wait_for(State.RECOVERING, timeout=5)
        await link.send({"text": "sent during the outage"})
        await asyncio.sleep(3)
        server.restart()
        restarted = now()
        await link.wait_for(State.ONLINE, timeout=10)
        # Liveness: back within cap + handshake after the server is healthy again.
        assert now() - restarted <= FAST.cap + 0.1
        assert len(rebuilds) == 2
        assert [await link.receive(), await link.receive()] == [
            {"type": "register"}, {"text": "sent during the outage"}]
        assert rec.max_open <= 1
        assert link.statistics()["reconnects"] == 1
        await link.close()
        assert dialer.open_transports == 0
        await server.aclose()

    run(main)


def test_accept_then_close_server_causes_no_reconnect_storm() -> None:
    async def main() -> None:
        async def slam(conn: ServerConnection) -> None:
            await conn.close(1011, "going away at once")

        server = MemoryServer(slam)
        link, dialer, _ = make(server, backoff=Backoff(initial=0.05, cap=2.0, grace=5.0))
        await link.start()
        await asyncio.sleep(60)
        # Full jitter on a growing ceiling capped at 2 s averages ~1 s per attempt once
        # capped; websockets' reset-on-handshake made 2,407 attempts in 3.5 s.
        assert dialer.opened <= 120, dialer.opened
        assert dialer.opened >= 20, dialer.opened  # and it keeps trying
        await link.close()
        assert dialer.open_transports == 0
        await server.aclose()

    run(main)


def test_credentials_refused_fails_with_clear_reason_and_hands_back() -> None:
    async def main() -> None:
        server = MemoryServer(echo)
        server.refuse(status=401)
        link, _, rec = make(server)
        await link.send({"n": 1})
        await link.start()
        with pytest.raises(LinkFailed, match="401"):
            await link.wait_for(State.ONLINE, timeout=5)
        assert rec.states == ["connecting", "failed"]
        assert link.undelivered() == [Undelivered({"n": 1}, link.undelivered()[0].reason)]
        with pytest.raises(LinkClosedError):
            await link.send({"n": 2})
        await link.close()
        await server.aclose()

    run(main)


def test_retry_after_is_honoured() -> None:
    async def main() -> None:
        server = MemoryServer(echo)
        server.refuse(status=503, retry_after=5.0)
        link, dialer, _ = make(server)
        await link.start()
        await asyncio.sleep(4.9)
        assert dialer.server.statistics().dials == 1
        server.accept()
        await link.wait_for(State.ONLINE, timeout=5)
        assert now() >= 5.0
        await link.close()
        await server.aclose()

    run(main)


def test_pending_request_survives_a_restart_and_is_answered() -> None:
    async def main() -> None:
        answered = False

        async def studio(conn: ServerConnection) -> None:
            # Answers a request only when told to: the first studio dies before it does.
            while True:
                frame = await conn.receive()
                if answered and '"ask"' in str(frame):
                    request = json.loads(frame)
                    await conn.send(json.dumps({"reply_to": request["id"], "text": "yes"}))

        server = MemoryServer(studio)
        link, _, _ = make(server)
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        request = asyncio.ensure_future(
            link.request({"type": "ask", "prompt": "continue?"}, id="q1", timeout=60))
        await asyncio.sleep(1)
        server.crash(keep_state=False)
        await asyncio.sleep(2)
        answered = True
        server.restart()
        assert await request == {"reply_to": "q1", "text": "yes"}
        await link.close()
        await server.aclose()

    run(main)


def test_request_times_out_with_a_clear_error() -> None:
    async def main() -> None:
        async def mute(conn: ServerConnection) -> None:
            while True:
                await conn.receive()

        server = MemoryServer(mute)
        link, _, _ = make(server)
        await link.start()
        with pytest.raises(RequestTimeout, match="'q2' got no response in 3"):
            await link.request({"type": "ask"}, id="q2", timeout=3)
        await link.close()
        await server.aclose()

    run(main)


def test_headers_callable_is_evaluated_on_every_attempt() -> None:
    async def main() -> None:
        server = MemoryServer(echo)
        tokens = iter(range(100))

        async def fresh_token() -> dict[str, str]:
            return {"authorization": f"Bearer t{next(tokens)}"}

        link, dialer, _ = make(server, headers=fresh_token)
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        server.reset()
        await link.wait_for(State.RECOVERING, timeout=5)
        await link.wait_for(State.ONLINE, timeout=5)
        assert [d["authorization"] for d in dialer.dials] == ["Bearer t0", "Bearer t1"]
        await link.close()
        await server.aclose()

    run(main)


def test_callbacks_that_raise_do_not_break_the_link() -> None:
    async def main() -> None:
        server = MemoryServer(echo)
        link, _, rec = make(server)

        def broken(change: StateChange) -> None:
            raise RuntimeError("a bug in user code")

        link.on_state_change(broken)
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        await link.send("still works")
        assert await link.receive() == "still works"
        assert rec.states == ["connecting", "online"]
        await link.close()
        await server.aclose()

    run(main)


def test_rebuild_hook_that_raises_is_retried_on_a_new_connection() -> None:
    async def main() -> None:
        server = MemoryServer(echo)
        calls = 0

        async def flaky(link: Link) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("studio not ready")

        link, dialer, rec = make(server, on_rebuild=flaky)
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        assert calls == 2
        assert "stale" in rec.states
        assert dialer.opened == 2 and dialer.open_transports == 1
        await link.close()
        await server.aclose()

    run(main)


def test_outbox_overflow_raises_or_hands_back() -> None:
    async def main() -> None:
        server = MemoryServer(echo)
        link, _, _ = make(server, outbox_limit=2)
        await link.send(1)
        await link.send(2)
        with pytest.raises(OutboxFull, match="2 of 2"):
            await link.send(3)
        await link.close()
        assert [u.payload for u in link.undelivered()] == [1, 2]

        handed: list[Undelivered] = []
        link2, _, _ = make(server, outbox_limit=2, overflow=Overflow.HAND_BACK)
        link2.on_undelivered(handed.append)
        for n in (1, 2, 3):
            await link2.send(n)
        assert [u.payload for u in handed] == [1]
        await link2.start()
        await link2.wait_for(State.ONLINE, timeout=5)
        assert [await link2.receive(), await link2.receive()] == [2, 3]
        await link2.close()
        await server.aclose()

    run(main)


def test_garbage_frames_are_delivered_raw_not_dropped() -> None:
    async def main() -> None:
        server = MemoryServer(echo)
        link, _, _ = make(server)
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        server.garbage(1.0, direction="down")
        await link.send({"n": 1})
        got = await link.receive()
        assert got != {"n": 1}  # garbled on the way back, but delivered, not dropped
        server.clear()
        await link.send({"n": 2})
        assert await link.receive() == {"n": 2}
        await link.close()
        await server.aclose()

    run(main)


def test_close_while_recovering_leaves_nothing_behind() -> None:
    async def main() -> None:
        server = MemoryServer(echo)
        link, dialer, _ = make(server)
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        server.crash()
        await link.send("never delivered")
        await link.wait_for(State.RECOVERING, timeout=5)
        undelivered = await link.close()
        assert [u.payload for u in undelivered] == ["never delivered"]
        assert link.state == State.CLOSED
        assert dialer.open_transports == 0
        messages = [m async for m in link]
        assert messages == []
        await server.aclose()

    run(main)


def test_custom_spec_authenticating_runs_its_action_through_the_link() -> None:
    from fsm.actions import Action
    from fsm.events import Event
    from fsm.examples.authenticating import (
        AUTH_SPEC,
        Authenticate,
        Authenticated,
        AuthenticationRejected,
    )

    async def main() -> None:
        server = MemoryServer(echo)
        verdicts = iter([True, False])

        async def authenticate(link: Link, action: Action) -> Event:
            assert isinstance(action, Authenticate)
            await link.send({"type": "auth", "token": "t"})  # the auth lane: goes out now
            return Authenticated() if next(verdicts) else AuthenticationRejected("expired")

        link, _, rec = make(server, spec=AUTH_SPEC, on_action={Authenticate: authenticate})
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        assert rec.states == ["connecting", "authenticating", "online"]
        server.reset()
        await link.wait_for(State.STALE, timeout=5)
        with pytest.raises(LinkFailed, match="expired"):
            await link.wait_for(State.ONLINE, timeout=5)
        assert rec.states[-2:] == ["authenticating", "failed"]
        assert link.reason == "AuthenticationRejected(reason='expired')"
        await link.close()
        await server.aclose()

    run(main)


def test_close_with_drain_waits_for_queued_messages_to_be_written() -> None:
    async def main() -> None:
        server = MemoryServer(echo)
        server.slow_handshake(0.5)
        link, dialer, _ = make(server)
        await link.start()
        for n in range(3):
            await link.send(n)  # queued: the handshake takes 0.5 s
        assert await link.close(drain=2.0) == []  # waited for them to be written
        assert [f for f in server.received] == ["0", "1", "2"]

        link2, _, _ = make(server)
        await link2.start()
        await link2.send("never written")
        undelivered = await link2.close()  # no drain: handed back at once
        assert [u.payload for u in undelivered] == ["never written"]
        assert dialer.open_transports == 0
        await server.aclose()

    run(main)


# -- regressions found in review ---------------------------------------------------------


def test_close_inside_a_rebuild_hook_returns() -> None:
    async def main() -> None:
        server = MemoryServer(echo)

        async def give_up(link: Link) -> None:
            await link.send({"type": "register"})
            await link.close()  # e.g. the registration was refused

        link, dialer, _ = make(server, on_rebuild=give_up)
        await link.start()
        await link.wait_for(State.CLOSED, timeout=5)
        await asyncio.wait_for(link.close(), 5)  # used to deadlock
        assert dialer.open_transports == 0
        await server.aclose()

    run(main)


def test_request_inside_a_rebuild_hook_completes() -> None:
    async def main() -> None:
        async def answering(conn: ServerConnection) -> None:
            while True:
                message = json.loads(await conn.receive())
                if "id" in message:
                    await conn.send(json.dumps({"reply_to": message["id"], "ok": True}))

        server = MemoryServer(answering)
        answers: list[Any] = []

        async def register(link: Link) -> None:
            answers.append(await link.request({"type": "register"}, id="reg", timeout=5))

        link, _, _ = make(server, on_rebuild=register)
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)  # used to time out in the hook
        assert answers == [{"reply_to": "reg", "ok": True}]
        await link.close()
        await server.aclose()

    run(main)


def test_a_write_that_ends_at_a_deadline_does_not_wedge_the_link() -> None:
    """The writer's own report fires the probe deadline and drops the transport it is
    serving: it must end, the link must recover, and close() must return."""

    async def main() -> None:
        server = MemoryServer(echo)
        slow_until: list[float] = []

        class SlowDialer(MemoryDialer):
            async def dial(self, headers: Mapping[str, str]) -> MemoryTransport:
                transport = await super().dial(headers)
                send = transport.send

                async def slow_send(frame: Frame) -> None:
                    if slow_until:
                        await asyncio.sleep(slow_until[0] - now())  # backpressure
                    await send(frame)

                transport.send = slow_send  # type: ignore[method-assign]
                return transport

        dialer = SlowDialer(server, open_timeout=None)
        link = Link(dialer, heartbeat=HB, backoff=FAST, rng=random.Random(1))
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        server.freeze()
        await link.wait_for(State.WAITING, timeout=5)
        deadline = link.lifecycle.next_deadline()
        assert deadline is not None
        await asyncio.sleep(deadline - 0.5 - now())
        slow_until.append(deadline)  # the write finishes exactly at the probe deadline
        await link.send({"n": 1})
        await asyncio.sleep(deadline + 0.1 - now())
        slow_until.clear()
        server.thaw()
        await link.wait_for(State.ONLINE, timeout=10)
        await asyncio.wait_for(link.close(), 5)
        assert dialer.open_transports == 0
        await server.aclose()

    run(main)


def test_session_mode_refuses_a_message_the_server_could_never_take() -> None:
    async def main() -> None:
        link = Link(MemoryDialer(MemoryServer(echo)), session=True)
        with pytest.raises(ValueError, match="exceeds the server's max_frame"):
            await link.send("x" * (2**20 + 1))
        with pytest.raises(ValueError, match="JSON"):
            await link.send(float("nan"))
        with pytest.raises(TypeError, match="JSON"):
            await link.send(object())
        assert len(link.lifecycle.outbox) == 0  # refused, not queued
        await link.close()

    run(main)
