"""The AgentScope Studio client against the stand-in Studio (real Node socket.io 4 and
tRPC 11, ``tests/studio``), scenario by scenario, and AgentScope's own client in the
same scenarios for contrast.

Every tether scenario ends with the user's answer reaching the agent, nothing lost and
nothing doubled: the Studio holds each pushed message once, with its latest content; no
input request is left behind; the run is ``running``.

The stock client (:mod:`tests.stock_agentscope`) gives up after 3 reconnection attempts
with delays of 1, 2, 4 s (each +-0.5 s): about 7 s. Where its outcome depends on that
window, its contrast tests run it with every delay scaled by 0.1 (``SCALE``): a 0.7 s
window (0.55-0.85 s), so a restart 1.5 s after the kill stands for one after 15 s. The
quick restart ("within 7 s") and the 0.7 s blip run at real scale, being cheap. The
tether tests restart after 0.2 s and 1.5 s: tether retries forever, the outage's length
changes only how long it takes. ``make bench`` measures both clients at real scale.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from adapters.agentscope import StudioClient, UserInput
from adapters.proxy import FaultProxy
from adapters.socketio import SocketIODialer, emit
from fsm import Backoff, Heartbeat, State, StateChange
from fsm.errors import RequestTimeout
from tests.stock_agentscope import Abandoned, StockStudio
from tests.studio import SKIP_REASON, NodeStudio, hold_port

T = TypeVar("T")
pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.realsocket,
    pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or ""),
]

HB = Heartbeat(interval=0.5, timeout=0.5)
FAST = Backoff(initial=0.05, cap=0.3, grace=1.0)
TOL = 1.5  # slack on upper time bounds only
SCALE = 0.1  # the stock client's reconnection delays, scaled (see the module docstring)
RUN = "run-1"


def run(main: Callable[[], Coroutine[Any, Any, T]], timeout: float = 40.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await main()

    return asyncio.run(bounded())


async def until(predicate: Callable[[], Awaitable[bool]], within: float = 10.0,
                what: str = "condition") -> None:
    async with asyncio.timeout(within):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if await predicate():
                    return
            await asyncio.sleep(0.02)


def client(urls: Any, run_id: str = RUN, **options: Any) -> StudioClient:
    settings: dict[str, Any] = {"heartbeat": HB, "backoff": FAST, "handshake_timeout": 1.0,
                                "http_timeout": 1.0, "close_timeout": 0.5, "reassert": None}
    settings.update(options)
    return StudioClient(urls, run_id=run_id, project="p", name="n", **settings)


@contextlib.asynccontextmanager
async def studio(tmp_path: Path, **options: Any) -> AsyncIterator[NodeStudio]:
    async with NodeStudio("studio", state=tmp_path / "studio.json",
                          port_file=tmp_path / "port.json", **options) as node:
        yield node


async def pending_in(node: NodeStudio, request_id: str) -> bool:
    state = await node.state()
    return request_id in state["inputRequests"] and RUN in state["connected"]


async def answer(node: NodeStudio, request_id: str, text: str, *, posts: int = 1,
                 within: float = 10.0) -> None:
    """The user, in the Studio's UI: once the input box for ``request_id`` is there, the
    run's socket is up and the Studio took ``posts`` requestUserInput calls in all (so a
    re-post after a reconnect is in: an answer given while it is on its way is a race
    the Studio's protocol cannot close, see the module docstring of
    adapters.agentscope), answers it through the ``/client`` namespace."""

    async def ready() -> bool:
        state = await node.state()
        return request_id in state["inputRequests"] and RUN in state["connected"] \
            and state["calls"].get("requestUserInput", 0) >= posts

    await until(ready, within, f"request {request_id}")
    await send_answer(node, request_id, text)


async def send_answer(node: NodeStudio, request_id: str, text: str) -> None:
    """Emit the UI's ``sendUserInputToServer`` and stay until the Studio took it (it
    answers only failures, and drops an event that arrives with the disconnect)."""
    transport = await SocketIODialer(node.url, namespace="/client").dial({})
    try:
        await transport.send(emit("sendUserInputToServer", request_id,
                                  [{"type": "text", "text": text}], None, ack=1))
        await until(lambda: _gone(node, request_id), 5)
    finally:
        await transport.close()


async def _gone(node: NodeStudio, request_id: str) -> bool:
    return request_id not in (await node.state())["inputRequests"]


def text_of(user_input: UserInput) -> str:
    text: str = user_input.blocks[0]["text"]
    return text


def message(n: int, text: str | None = None) -> dict[str, Any]:
    return {"id": f"m{n}", "name": "agent", "role": "assistant",
            "content": text if text is not None else f"message {n}", "metadata": None,
            "timestamp": f"2026-01-01 00:00:{n:02d}.000"}


async def push(studio_client: StudioClient, n: int, text: str | None = None) -> None:
    await studio_client.push_message(message(n, text), reply_id=f"reply-{n}",
                                     reply_name="agent", reply_role="assistant")


async def settled_studio(node: NodeStudio, messages: dict[str, str]) -> dict[str, Any]:
    """Wait until the Studio holds exactly ``messages`` (id -> content) and no request;
    return its state. Checks each message is held once, in push order."""
    async def done() -> bool:
        state = await node.state()
        held = {m: v["msg"]["content"] for m, v in state["messages"].items()}
        return held == messages and not state["inputRequests"] \
            and state["runs"][RUN]["status"] == "running"

    await until(done, 10, "the Studio to settle")
    state = await node.state()
    order = sorted(state["messages"], key=lambda m: state["messages"][m]["order"])
    assert order == list(messages), order
    return state


# -- tether, scenario by scenario ------------------------------------------------------------


@pytest.mark.parametrize("outage", [0.2, 1.5], ids=["restart-within-window",
                                                      "restart-after-window"])
def test_hard_kill_then_restart_the_answer_reaches_the_agent(tmp_path: Path,
                                                            outage: float) -> None:
    async def main() -> None:
        async with studio(tmp_path) as node, client(node.url) as tether:
            await tether.wait_online(5)
            await push(tether, 1)
            asking = asyncio.ensure_future(tether.request_user_input("a1", "user",
                                                                     request_id="q1"))
            await until(lambda: pending_in(node, "q1"))
            await node.kill()  # SIGKILL: state kept on disk
            await push(tether, 2)  # while the Studio is away
            await asyncio.sleep(outage)
            await node.restart()
            await answer(node, "q1", "yes", posts=2)
            assert text_of(await asyncio.wait_for(asking, 10)) == "yes"
            await settled_studio(node, {"m1": "message 1", "m2": "message 2"})
            assert tether.registrations >= 2 and tether.pending() == []

    run(main)


def test_graceful_restart_wipes_the_request_and_tether_puts_it_back(tmp_path: Path) -> None:
    async def main() -> None:
        async with studio(tmp_path) as node, client(node.url) as tether:
            await tether.wait_online(5)
            asking = asyncio.ensure_future(tether.request_user_input("a1", "user",
                                                                     request_id="q1"))
            await until(lambda: pending_in(node, "q1"))
            await node.terminate()  # SIGTERM: every /python disconnect handler runs
            wiped = json.loads((tmp_path / "studio.json").read_text())
            assert wiped["inputRequests"] == {}  # the Studio's own doing
            assert wiped["runs"][RUN]["status"] == "done"
            await node.restart()
            await answer(node, "q1", "after the restart", posts=2)
            assert text_of(await asyncio.wait_for(asking, 10)) == "after the restart"
            await settled_studio(node, {})

    run(main)


def test_a_short_blip_without_restart(tmp_path: Path) -> None:
    async def main() -> None:
        async with studio(tmp_path) as node, \
                FaultProxy(("127.0.0.1", node.port)) as proxy, \
                client(f"http://127.0.0.1:{proxy.port}") as tether:
            await tether.wait_online(5)
            asking = asyncio.ensure_future(tether.request_user_input("a1", "user",
                                                                     request_id="q1"))
            await until(lambda: pending_in(node, "q1"))
            proxy.down()
            await until(lambda: _not(pending_in(node, "q1")))  # the Studio wiped it
            await push(tether, 1)
            await asyncio.sleep(0.7)
            proxy.up()
            await answer(node, "q1", "still here", posts=2)
            assert text_of(await asyncio.wait_for(asking, 10)) == "still here"
            await settled_studio(node, {"m1": "message 1"})

    run(main)


async def _not(check: Awaitable[bool]) -> bool:
    return not await check


def test_kill_between_two_turns(tmp_path: Path) -> None:
    async def main() -> None:
        async with studio(tmp_path) as node, client(node.url) as tether:
            await tether.wait_online(5)
            first = asyncio.ensure_future(tether.request_user_input("a1", "user",
                                                                    request_id="q1"))
            await answer(node, "q1", "one")
            assert text_of(await asyncio.wait_for(first, 10)) == "one"
            await push(tether, 1)
            await until(lambda: _has_message(node, "m1"))
            await node.kill()
            await push(tether, 2)
            second = asyncio.ensure_future(tether.request_user_input("a1", "user",
                                                                     request_id="q2"))
            await asyncio.sleep(0.5)
            await node.restart()
            await answer(node, "q2", "two", posts=2)
            assert text_of(await asyncio.wait_for(second, 10)) == "two"
            await settled_studio(node, {"m1": "message 1", "m2": "message 2"})

    run(main)


async def _has_message(node: NodeStudio, message_id: str) -> bool:
    return message_id in (await node.state())["messages"]


def test_restart_on_another_port_found_by_a_discovery_callback(tmp_path: Path) -> None:
    async def main() -> None:
        port_file = tmp_path / "port.json"

        def discover() -> list[str]:  # where the Studio says it listens (its config file)
            return [f"http://127.0.0.1:{json.loads(port_file.read_text())['port']}"]

        async with studio(tmp_path, fallback=True) as node, client(discover) as tether:
            await tether.wait_online(5)
            first_url = tether.url
            asking = asyncio.ensure_future(tether.request_user_input("a1", "user",
                                                                     request_id="q1"))
            await until(lambda: pending_in(node, "q1"))
            old_port = node.port
            await node.kill()
            with hold_port(old_port):  # the old port is busy: the Studio picks another
                await node.restart()
                assert node.port != old_port
                await answer(node, "q1", "found you", posts=2)
                assert text_of(await asyncio.wait_for(asking, 10)) == "found you"
            assert tether.url != first_url and tether.url == node.url
            await settled_studio(node, {})

    run(main)


def test_frozen_studio_is_detected_within_the_bound_then_recovered(tmp_path: Path) -> None:
    async def main() -> None:
        async with studio(tmp_path) as node, client(node.url) as tether:
            changes: list[StateChange] = []
            tether.link.on_state_change(changes.append)
            await tether.wait_online(5)
            asking = asyncio.ensure_future(tether.request_user_input("a1", "user",
                                                                     request_id="q1"))
            await until(lambda: pending_in(node, "q1"))
            loop = asyncio.get_running_loop()
            node.freeze()
            frozen = loop.time()
            try:
                await tether.link.wait_for(State.STALE, timeout=HB.bound + 5)
                stale = next(c for c in changes if c.new == State.STALE)
                assert stale.at - frozen <= HB.bound + TOL, stale.at - frozen
            finally:
                node.thaw()
            await answer(node, "q1", "thawed", posts=2)
            assert text_of(await asyncio.wait_for(asking, 10)) == "thawed"
            await settled_studio(node, {})

    run(main)


def test_a_run_deleted_in_the_studio_is_a_clear_reason_then_registered_again(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with studio(tmp_path) as node, client(node.url) as tether:
            changes: list[StateChange] = []
            tether.link.on_state_change(changes.append)
            await tether.wait_online(5)
            await push(tether, 1)
            await until(lambda: _has_message(node, "m1"))
            ui = await SocketIODialer(node.url, namespace="/client").dial({})
            await ui.send(emit("deleteRuns", [RUN], ack=1))
            assert json.loads(await asyncio.wait_for(ui.receive(), 5))["args"][0]["success"]
            await ui.close()
            await push(tether, 2)  # 400: Run with id run-1 does not exist
            await until(lambda: _has_message(node, "m2"))
            reasons = [c.reason for c in changes if c.new == State.STALE]
            assert any("HTTP 400: Run with id run-1 does not exist" in r for r in reasons), \
                reasons
            state = await node.state()
            assert state["runs"][RUN]["status"] == "running"
            assert tether.rejected() == [] and tether.undelivered() == []

    run(main)


def test_a_message_the_studio_can_never_accept_is_reported_not_retried(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with studio(tmp_path) as node, client(node.url) as tether:
            await tether.wait_online(5)
            bad = message(1) | {"content": 5}  # zod: a string or content blocks
            await tether.push_message(bad, reply_id="r", reply_name="a", reply_role="assistant")
            await push(tether, 2)
            await until(lambda: _has_message(node, "m2"))
            [rejected] = tether.rejected()
            assert rejected.procedure == "pushMessage" and rejected.error.status == 400
            assert "Expected string" in str(rejected.error), str(rejected.error)
            assert tether.state == State.ONLINE
            assert tether.link.statistics()["reconnects"] == 0

    run(main)


def test_messages_while_away_are_delivered_in_order_and_chunks_coalesced(
        tmp_path: Path) -> None:
    async def main() -> None:
        async with studio(tmp_path) as node, client(node.url) as tether:
            await tether.wait_online(5)
            await node.kill()
            for n in range(1, 4):
                await push(tether, n)
            for chunk in ("str", "strea", "streamed"):  # one message, streamed
                await push(tether, 4, chunk)
            await push(tether, 5)
            await node.restart()
            state = await settled_studio(node, {"m1": "message 1", "m2": "message 2",
                                                "m3": "message 3", "m4": "streamed",
                                                "m5": "message 5"})
            assert state["messages"]["m4"]["writes"] == 1  # queued once, latest posted

    run(main)


def test_answers_for_another_run_are_not_taken(tmp_path: Path) -> None:
    async def main() -> None:
        async with studio(tmp_path) as node, client(node.url) as one, \
                client(node.url, run_id="run-2") as two:
            await one.wait_online(5)
            await two.wait_online(5)
            mine = asyncio.ensure_future(one.request_user_input("a", "u", request_id="q1"))
            theirs = asyncio.ensure_future(two.request_user_input("a", "u", request_id="q2"))
            await until(lambda: _requests(node, {"q1", "q2"}))
            await answer(node, "q2", "for run 2")  # broadcast to both runtimes
            assert text_of(await asyncio.wait_for(theirs, 10)) == "for run 2"
            await asyncio.sleep(0.2)
            assert not mine.done() and one.pending() == ["q1"]
            await answer(node, "q1", "for run 1")
            assert text_of(await asyncio.wait_for(mine, 10)) == "for run 1"

    run(main)


async def _requests(node: NodeStudio, wanted: set[str]) -> bool:
    return set((await node.state())["inputRequests"]) == wanted


def test_a_deadline_while_the_studio_is_away_raises_request_timeout(tmp_path: Path) -> None:
    async def main() -> None:
        async with studio(tmp_path) as node, client(node.url) as tether:
            await tether.wait_online(5)
            await node.kill()
            with pytest.raises(RequestTimeout):
                await tether.request_user_input("a", "u", request_id="q1", timeout=0.3)
            assert tether.pending() == []

    run(main)


def test_a_late_wipe_by_the_studio_is_healed_by_the_periodic_reassert(
        tmp_path: Path) -> None:
    """The Studio wipes a run's requests when *any* of its sockets disconnects, and finds a
    half-open one only at its ping timeout, long after we reconnected: ``wipe`` does now
    what that late disconnect does."""

    async def main() -> None:
        async with studio(tmp_path) as node, client(node.url, reassert=0.3) as tether:
            await tether.wait_online(5)
            asking = asyncio.ensure_future(tether.request_user_input("a", "u",
                                                                     request_id="q1"))
            await until(lambda: pending_in(node, "q1"))
            await node.command(f"wipe {RUN}")
            await answer(node, "q1", "again", posts=2)  # waits for the request to be back
            assert text_of(await asyncio.wait_for(asking, 10)) == "again"
            assert tether.state == State.ONLINE  # no reconnect was needed

    run(main)


def test_importing_the_module_does_not_import_agentscope() -> None:
    code = ("import sys, adapters.agentscope; "
            "assert 'agentscope' not in sys.modules, 'imported agentscope'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


# -- the stock client, for contrast ------------------------------------------------------------


@contextlib.asynccontextmanager
async def stock_client(url: str, scale: float = SCALE) -> AsyncIterator[StockStudio]:
    stock = StockStudio(url, RUN, scale=scale)
    await asyncio.to_thread(stock.start)
    try:
        yield stock
    finally:
        await asyncio.to_thread(stock.abandon)


async def gave_up(stock: StockStudio, within: float = 10.0) -> None:
    async def check() -> bool:
        return stock.gave_up()

    await until(check, within)


def test_stock_client_survives_a_quick_hard_restart(tmp_path: Path) -> None:
    """Where the stock client works: SIGKILL keeps the request, and the Studio is back
    within its window (at real scale, restarted at once: back well inside its 7 s)."""

    async def main() -> None:
        async with studio(tmp_path) as node, stock_client(node.url, scale=1.0) as stock:
            asking = asyncio.ensure_future(asyncio.to_thread(stock.ask, "q1"))
            await until(lambda: pending_in(node, "q1"))
            await node.kill()
            await node.restart()
            await answer(node, "q1", "lucky")
            blocks, _ = await asyncio.wait_for(asking, 10)
            assert blocks[0]["text"] == "lucky"

    run(main)


def test_stock_client_loses_the_answer_when_the_restart_is_late(tmp_path: Path) -> None:
    """1.5 s scaled (15 s real): it gave up; the user's answer is broadcast to nobody;
    the agent waits forever, and its next request raises 'Not connected'."""

    async def main() -> None:
        async with studio(tmp_path) as node, stock_client(node.url) as stock:
            asking = asyncio.ensure_future(asyncio.to_thread(stock.ask, "q1"))
            await until(lambda: _requests(node, {"q1"}))
            await node.kill()
            await gave_up(stock)
            await node.restart()
            assert "q1" in (await node.state())["inputRequests"]  # the UI still asks
            await send_answer(node, "q1", "lost")  # answered, as far as the Studio knows
            await asyncio.sleep(0.5)
            assert not asking.done()  # the answer went to nobody
            with pytest.raises(RuntimeError, match="Not connected"):
                await asyncio.to_thread(stock.ask, "q2")
            stock.abandon()
            with pytest.raises(Abandoned):
                await asking

    run(main)


def test_stock_client_is_stuck_after_a_graceful_restart(tmp_path: Path) -> None:
    """The shutdown wiped the request and marked the run done; whether the stock client
    reconnects within its window or not, nothing asks the user again."""

    async def main() -> None:
        async with studio(tmp_path) as node, stock_client(node.url) as stock:
            asking = asyncio.ensure_future(asyncio.to_thread(stock.ask, "q1"))
            await until(lambda: pending_in(node, "q1"))
            await node.terminate()
            await node.restart()
            await asyncio.sleep(1.0)  # past its (scaled) 0.7 s window
            state = await node.state()
            assert stock.disconnected_at
            assert state["inputRequests"] == {}
            assert state["runs"][RUN]["status"] == "done"
            assert not asking.done()

    run(main)


async def _connected(node: NodeStudio) -> bool:
    return RUN in (await node.state())["connected"]


def test_stock_client_is_stuck_after_a_short_blip(tmp_path: Path) -> None:
    """At real scale: a 0.7 s blip, reconnected after 1 +- 0.5 s."""

    async def main() -> None:
        async with studio(tmp_path) as node, \
                FaultProxy(("127.0.0.1", node.port)) as proxy, \
                stock_client(f"http://127.0.0.1:{proxy.port}", scale=1.0) as stock:
            asking = asyncio.ensure_future(asyncio.to_thread(stock.ask, "q1"))
            await until(lambda: pending_in(node, "q1"))
            proxy.down()
            await asyncio.sleep(0.7)
            proxy.up()
            await until(lambda: _connected(node), within=5)
            state = await node.state()
            assert state["inputRequests"] == {} and state["runs"][RUN]["status"] == "done"
            await asyncio.sleep(0.5)
            assert not asking.done()

    run(main)


def test_stock_client_never_finds_a_studio_on_another_port(tmp_path: Path) -> None:
    async def main() -> None:
        async with studio(tmp_path, fallback=True) as node, stock_client(node.url) as stock:
            asking = asyncio.ensure_future(asyncio.to_thread(stock.ask, "q1"))
            await until(lambda: pending_in(node, "q1"))
            old_port = node.port
            await node.kill()
            with hold_port(old_port):  # busy: its dials hang there, the Studio moved
                await node.restart()
                await asyncio.sleep(1.0)  # past its (scaled) window
                assert node.port != old_port
                assert (await node.state())["connected"] == []
            assert not asking.done() and not stock.sio.connected

    run(main)


def test_stock_client_does_not_notice_a_frozen_studio_within_tethers_bound(
        tmp_path: Path) -> None:
    """Engine.IO's own detection takes pingInterval + pingTimeout (45 s by default)."""

    async def main() -> None:
        async with studio(tmp_path) as node, stock_client(node.url) as stock:
            node.freeze()
            try:
                await asyncio.sleep(HB.bound + 0.5)
                assert stock.sio.connected and not stock.disconnected_at
            finally:
                node.thaw()

    run(main)


def test_the_stock_window_is_what_the_scaled_tests_assume(tmp_path: Path) -> None:
    """Reconnection delays 0.1, 0.2, 0.4 s (+-0.05 s): it gives up 0.55-0.85 s (plus the
    dial attempts) after the kill; scaled back, AgentScope's 7 s."""

    async def main() -> None:
        async with studio(tmp_path) as node, stock_client(node.url) as stock:
            await node.kill()
            killed = time.monotonic()
            await gave_up(stock)
            assert 0.5 <= time.monotonic() - killed <= 0.85 + TOL

    run(main)
