"""Tests of adapters.memory: the conformance suite, then each fault's observable effect.

Every test runs on a fresh ``async_solipsism`` loop, so time is virtual: waiting a
minute costs nothing and every run is the same.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from adapters.memory import MemoryDialer, MemoryServer, ServerConnection, echo
from adapters.transport import Broken, Closed, Dialer, Frame, Refused, TimedOut, Transport
from tests.conformance import CHECKS, Check, check_transport
from tests.virtual import now, run

T = TypeVar("T")
pytestmark = pytest.mark.timeout(5)


class MemoryFixture:
    """The conformance suite's EchoFixture for a MemoryServer running ``echo``."""

    def __init__(self, server: MemoryServer | None = None) -> None:
        self.server = server or MemoryServer(echo)
        self.memory_dialer = MemoryDialer(self.server)

    @property
    def dialer(self) -> Dialer:
        return self.memory_dialer

    async def close_all(self, code: int) -> None:
        self.server.close_all(code)

    async def stop(self) -> None:
        self.server.refuse()

    async def start(self) -> None:
        self.server.accept()


def conformance(check: Check) -> None:
    async def main() -> None:
        fixture = MemoryFixture()
        await check(fixture)
        assert fixture.memory_dialer.open_transports == 0, "the suite leaked a transport"
        assert fixture.server.connections == []
        await fixture.server.aclose()
        assert fixture.server.errors == []

    run(main)


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_conformance(check: Check) -> None:
    conformance(check)


def test_conformance_whole_suite_on_one_fixture() -> None:
    conformance(check_transport)


# -- helpers ------------------------------------------------------------------------------


async def dial(server: MemoryServer, **headers: str) -> tuple[MemoryDialer, Transport]:
    dialer = MemoryDialer(server)
    return dialer, await dialer.dial(headers)


async def silent(awaitable: Awaitable[object], seconds: float) -> bool:
    """True if ``awaitable`` did not finish within ``seconds`` (virtual). A future is left
    pending, never cancelled; a coroutine's task is cancelled."""
    future = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({future}, timeout=seconds)
    if future is not awaitable:
        future.cancel()
    return not done


async def receive_within(transport: Transport, seconds: float) -> Frame | None:
    """The next frame, or None if none arrives within ``seconds``."""
    try:
        async with asyncio.timeout(seconds):
            return await transport.receive()
    except TimeoutError:
        return None


# -- dialing ------------------------------------------------------------------------------


def test_dialer_records_headers_and_open_transports() -> None:
    async def main() -> None:
        server = MemoryServer()
        dialer = MemoryDialer(server)
        first = await dialer.dial({"Authorization": "Bearer a"})
        second = await dialer.dial({"Authorization": "Bearer b"})
        assert dialer.dials == [{"Authorization": "Bearer a"}, {"Authorization": "Bearer b"}]
        assert (dialer.opened, dialer.open_transports) == (2, 2)
        assert [c.headers for c in server.connections] == dialer.dials
        server.close_all()
        await asyncio.sleep(0)
        assert first.closed and dialer.open_transports == 2  # closed by peer, not released
        await first.close()
        second.abort()
        assert (dialer.opened, dialer.open_transports) == (2, 0)
        await server.aclose()

    run(main)


def test_refuse_carries_status_and_retry_after() -> None:
    async def main() -> None:
        server = MemoryServer()
        _, kept = await dial(server)
        server.refuse(503, retry_after=2.5)
        with pytest.raises(Refused) as info:
            await MemoryDialer(server).dial({})
        assert (info.value.status, info.value.retry_after) == (503, 2.5)
        server.refuse()
        with pytest.raises(Refused) as info:
            await MemoryDialer(server).dial({})
        assert (info.value.status, info.value.retry_after) == (None, None)
        await kept.send("still open")  # refusing new dials leaves open connections alone
        assert await kept.receive() == "still open"
        server.accept()
        await MemoryDialer(server).dial({})
        assert server.statistics().refused == 2
        await server.aclose()

    run(main)


def test_slow_handshake_takes_virtual_time_and_can_time_out() -> None:
    async def main() -> None:
        server = MemoryServer()
        server.slow_handshake(3.0)
        start = now()
        await MemoryDialer(server).dial({})
        assert now() - start == pytest.approx(3.0)
        with pytest.raises(TimedOut):
            await MemoryDialer(server, open_timeout=1.0).dial({})
        assert now() - start == pytest.approx(4.0)
        server.slow_handshake(0.0)
        start = now()
        await MemoryDialer(server).dial({})
        assert now() == start
        await server.aclose()

    run(main)


# -- process faults -----------------------------------------------------------------------


def test_freeze_stops_pongs_and_reads_and_thaw_delivers_what_was_buffered() -> None:
    async def main() -> None:
        server = MemoryServer()
        _, transport = await dial(server)
        server.freeze()
        pong = await transport.ping()
        assert await silent(pong, 30.0), "a frozen server answered a ping"
        await transport.send("a")
        await transport.send(b"b")
        assert await receive_within(transport, 30.0) is None
        assert server.received == []
        assert not transport.closed and len(server.connections) == 1  # half-open
        server.thaw()
        assert server.received == ["a", b"b"]
        assert [await transport.receive(), await transport.receive()] == ["a", b"b"]
        assert await pong == pytest.approx(60.0)  # answered on thaw, 60 virtual s late
        await transport.close()
        await server.aclose()

    run(main)


def test_frozen_server_completes_no_handshake() -> None:
    async def main() -> None:
        server = MemoryServer()
        server.freeze()
        with pytest.raises(TimedOut):
            await MemoryDialer(server, open_timeout=5.0).dial({})
        start = now()
        dialing = asyncio.ensure_future(MemoryDialer(server).dial({}))
        await asyncio.sleep(2.0)
        server.thaw()
        await dialing
        assert now() - start == pytest.approx(2.0)
        (await dialing).abort()
        await server.aclose()

    run(main)


def test_close_against_a_frozen_server_gives_up_after_close_timeout() -> None:
    async def main() -> None:
        server = MemoryServer()
        dialer = MemoryDialer(server, close_timeout=3.0)
        transport = await dialer.dial({})
        server.freeze()
        start = now()
        await transport.close()
        assert now() - start == pytest.approx(3.0)
        assert transport.closed and dialer.open_transports == 0
        assert server.connections == []
        await server.aclose()

    run(main)


def test_crash_breaks_clients_and_refuses_dials_until_restart() -> None:
    async def main() -> None:
        server = MemoryServer()
        _, first = await dial(server)
        _, second = await dial(server)
        pending = asyncio.ensure_future(first.receive())
        await asyncio.sleep(0)
        server.crash()
        with pytest.raises(Broken):
            await pending
        with pytest.raises(Broken):
            await second.send("x")
        with pytest.raises(Broken):
            await second.receive()
        assert first.closed and second.closed and server.connections == []
        with pytest.raises(Refused) as info:
            await MemoryDialer(server).dial({})
        assert info.value.status is None
        server.restart()
        _, third = await dial(server)
        await third.send("back")
        assert await third.receive() == "back"
        await server.aclose()

    run(main)


def test_epoch_increments_only_when_state_is_lost() -> None:
    async def main() -> None:
        server = MemoryServer()
        assert server.epoch == 0
        server.crash(keep_state=True)
        server.restart()
        assert server.epoch == 0
        server.crash(keep_state=False)
        assert server.epoch == 1
        server.restart()
        server.reset()
        server.close_all()
        assert server.epoch == 1
        await server.aclose()

    run(main)


def test_close_all_gives_closed_with_code_after_earlier_frames() -> None:
    async def main() -> None:
        conns: list[ServerConnection] = []

        async def hold(conn: ServerConnection) -> None:
            conns.append(conn)
            await conn.receive()

        server = MemoryServer(hold)
        _, transport = await dial(server)
        await asyncio.sleep(0)
        await conns[0].send("before")
        server.close_all(4000, "bye")
        assert server.connections == []
        assert await transport.receive() == "before"
        with pytest.raises(Closed) as info:
            await transport.receive()
        assert info.value.code == 4000
        assert transport.closed
        await server.aclose()

    run(main)


def test_reset_breaks_connections_but_accepts_new_dials() -> None:
    async def main() -> None:
        server = MemoryServer()
        _, transport = await dial(server)
        server.reset()
        with pytest.raises(Broken):
            await transport.receive()
        assert server.connections == []
        _, again = await dial(server)
        await again.send("ok")
        assert await again.receive() == "ok"
        await server.aclose()

    run(main)


def test_client_abort_resets_the_server_side() -> None:
    async def main() -> None:
        server = MemoryServer()
        _, transport = await dial(server)
        (conn,) = server.connections
        transport.abort()
        assert conn.closed and server.connections == []
        with pytest.raises(Broken):
            await conn.receive()
        await asyncio.sleep(0)
        assert server.statistics().open == 0
        await server.aclose()

    run(main)


# -- wire faults --------------------------------------------------------------------------


def test_drop_with_a_seeded_random_drops_a_reproducible_subset() -> None:
    async def survivors(seed: int) -> list[Frame]:
        server = MemoryServer(rng=random.Random(seed))
        server.drop(0.5, "up")
        _, transport = await dial(server)
        for i in range(100):
            await transport.send(str(i))
        await asyncio.sleep(1.0)
        await server.aclose()
        assert server.statistics().dropped == 100 - len(server.received)
        return list(server.received)

    async def main() -> None:
        first, again, other = await survivors(7), await survivors(7), await survivors(8)
        assert first == again
        assert first != other
        assert 20 < len(first) < 80
        assert first == sorted(first, key=int)  # what survives keeps its order

    run(main)


def test_drop_down_loses_pongs() -> None:
    async def main() -> None:
        server = MemoryServer()
        _, transport = await dial(server)
        server.drop(1.0, "down")
        assert await silent(await transport.ping(), 30.0)
        server.clear()
        assert await (await transport.ping()) == 0.0
        await server.aclose()

    run(main)


def test_delay_adds_virtual_latency_and_keeps_order() -> None:
    async def main() -> None:
        server = MemoryServer(rng=random.Random(1))
        _, transport = await dial(server)
        server.delay(1.0, direction="both")
        assert await (await transport.ping()) == pytest.approx(2.0)
        server.clear()
        server.delay(2.0, jitter=1.0, direction="down")
        start = now()
        frames = [f"frame {i}" for i in range(50)]
        for frame in frames:
            await transport.send(frame)
        first = await transport.receive()
        assert 2.0 <= now() - start <= 3.0
        rest = [await transport.receive() for _ in frames[1:]]
        assert [first, *rest] == frames
        assert now() - start <= 3.0
        await server.aclose()

    run(main)


def test_delay_up_delays_what_the_server_reads() -> None:
    async def main() -> None:
        server = MemoryServer()
        _, transport = await dial(server)
        server.delay(5.0, direction="up")
        await transport.send("late")
        await asyncio.sleep(4.9)
        assert server.received == []
        await asyncio.sleep(0.2)
        assert server.received == ["late"]
        await server.aclose()

    run(main)


def test_blackhole_stops_delivery_and_keeps_the_connection_open() -> None:
    async def main() -> None:
        server = MemoryServer()
        _, transport = await dial(server)
        server.blackhole()
        await transport.send("lost")
        assert await receive_within(transport, 60.0) is None
        assert server.received == []
        assert await silent(await transport.ping(), 60.0)
        assert not transport.closed and len(server.connections) == 1
        assert server.statistics().blackholed == 2
        with pytest.raises(TimedOut):  # nor does a handshake get through
            await MemoryDialer(server, open_timeout=5.0).dial({})
        server.clear()
        await transport.send("found")
        assert await transport.receive() == "found"
        assert server.received == ["found"]
        await server.aclose()

    run(main)


def test_blackhole_down_only_lets_frames_up() -> None:
    async def main() -> None:
        server = MemoryServer()
        _, transport = await dial(server)
        server.blackhole("down")
        await transport.send("one way")
        assert await receive_within(transport, 10.0) is None
        assert server.received == ["one way"]
        await server.aclose()

    run(main)


def test_garbage_produces_frames_that_fail_to_parse() -> None:
    async def main() -> None:
        server = MemoryServer(rng=random.Random(3))
        _, transport = await dial(server)
        server.garbage(1.0, "down")
        sent: list[Frame] = [json.dumps({"seq": i}) for i in range(10)]
        sent += [json.dumps({"seq": i}).encode() for i in range(10)]
        for frame in sent:
            await transport.send(frame)
        received = [await transport.receive() for _ in sent]
        assert server.received == sent  # intact on the way up
        assert [type(f) for f in received] == [type(f) for f in sent]
        for frame in received:
            with pytest.raises(ValueError):
                json.loads(frame)
        assert server.statistics().garbled == 20
        server.clear()
        await transport.send('{"ok": true}')
        assert json.loads(await transport.receive()) == {"ok": True}
        await server.aclose()

    run(main)


def test_statistics_count_frames_and_connections() -> None:
    async def main() -> None:
        server = MemoryServer()
        _, transport = await dial(server)
        await transport.send("a")
        await transport.receive()
        stats = server.statistics()
        assert (stats.dials, stats.accepted, stats.open) == (1, 1, 1)
        assert (stats.frames_up, stats.frames_down) == (1, 1)
        await transport.close()
        assert server.statistics().open == 0
        await server.aclose()

    run(main)


def test_handler_bugs_are_recorded_and_the_connection_closes() -> None:
    async def broken(conn: ServerConnection) -> None:
        raise RuntimeError("handler bug")

    async def main() -> None:
        server = MemoryServer(broken)
        _, transport = await dial(server)
        with pytest.raises(Closed) as info:
            await transport.receive()
        assert info.value.code == 1000
        assert [str(e) for e in server.errors] == ["handler bug"]
        await server.aclose()

    run(main)
