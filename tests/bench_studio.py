"""AgentScope Studio scenarios at real scale: tether against AgentScope's own client.

``python -m tests.bench studio`` (part of ``make bench``; needs node and the stand-in's
npm packages, else it says so and is skipped). Both clients wait on one stand-in Studio
(``tests/studio``, real Node socket.io 4) with their own run, at their default settings:
AgentScope 1.0.21's client (reconnection_attempts=3, delays 1-5 s) replicated in
:mod:`tests.stock_agentscope` at scale 1, and :class:`adapters.agentscope.StudioClient`
with tether's default heartbeat (5 s / 5 s) and backoff (0.1 s doubling to 10 s, full
jitter). A user answers every input box the Studio shows, as soon as it shows it.

Per scenario it prints when each agent got its answer, counted from the moment the
fault ended (the Studio back, the blip over), or that it is still waiting when the
scenario gives up (``PATIENCE`` s after that moment). For the frozen Studio it prints how
long each client took to notice, from the SIGSTOP (the stock one is given 60 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.agentscope import StudioClient
from adapters.proxy import FaultProxy
from adapters.socketio import SocketIODialer, emit
from fsm import Heartbeat, State
from tests.stock_agentscope import StockStudio
from tests.studio import SKIP_REASON, NodeStudio, hold_port

PATIENCE = 15.0  # seconds after the fault ended before an agent counts as stuck


@dataclass
class Outcome:
    scenario: str
    tether: str
    stock: str


class User:
    """Answers every input box the Studio shows, once per box shown."""

    def __init__(self, node: NodeStudio) -> None:
        self.node = node
        self.answers = 0
        self._seen: set[tuple[int, str]] = set()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            with contextlib.suppress(Exception):
                state = await self.node.state()
                for request_id in state["inputRequests"]:
                    key = (state["calls"].get("requestUserInput", 0), request_id)
                    if key in self._seen:
                        continue
                    self._seen.add(key)
                    ui = await SocketIODialer(self.node.url, namespace="/client").dial({})
                    await ui.send(emit("sendUserInputToServer", request_id,
                                       [{"type": "text", "text": "ok"}], None, ack=1))
                    await asyncio.sleep(0.1)
                    await ui.close()
                    self.answers += 1

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def _when_done(future: asyncio.Future[Any], since: float) -> str:
    try:
        await asyncio.wait_for(asyncio.shield(future), max(0.1, since + PATIENCE
                                                             - time.monotonic()))
    except TimeoutError:
        return f"still waiting after {PATIENCE:.0f} s"
    except Exception as error:
        return f"failed: {type(error).__name__}: {error}"
    return f"answered {time.monotonic() - since:5.2f} s after"


Fault = Callable[[NodeStudio, Any], Awaitable[float]]


async def _scenario(name: str, fault: Fault, *, proxy: bool = False) -> Outcome:
    with tempfile.TemporaryDirectory() as folder:
        node = NodeStudio("studio", state=Path(folder) / "s.json", fallback=True,
                          port_file=Path(folder) / "port.json")
        await node.start()
        port_file = Path(folder) / "port.json"

        def discover() -> list[str]:
            return [f"http://127.0.0.1:{json.loads(port_file.read_text())['port']}"]

        async with contextlib.AsyncExitStack() as stack:
            target: Any = None
            url = node.url
            if proxy:
                target = await stack.enter_async_context(FaultProxy(("127.0.0.1", node.port)))
                url = f"http://127.0.0.1:{target.port}"
            stock = StockStudio(url, "stock")
            await asyncio.to_thread(stock.start)
            stack.push_async_callback(asyncio.to_thread, stock.abandon)
            tether = StudioClient(discover if not proxy else url, run_id="tether",
                                  project="bench", name="tether")
            await tether.start()
            stack.push_async_callback(tether.close)
            await tether.wait_online(10)
            stock_ask: asyncio.Future[Any] = asyncio.ensure_future(
                asyncio.to_thread(stock.ask, "stock-q"))
            tether_ask = asyncio.ensure_future(tether.request_user_input(
                "a", "u", request_id="tether-q"))
            await asyncio.sleep(1.0)
            ended = await fault(node, target)
            user = User(node)
            stack.push_async_callback(user.stop)
            tether_result, stock_result = await asyncio.gather(
                _when_done(tether_ask, ended), _when_done(stock_ask, ended))
            if not stock_ask.done():
                if stock.reconnected_at:
                    back = stock.reconnected_at[0] - ended
                    stock_result += f" (reconnected {back:+.2f} s; its request is gone)"
                else:
                    stock_result += " (gave up reconnecting)" if stock.gave_up() \
                        else " (not reconnected)"
            await asyncio.to_thread(stock.abandon)  # frees its thread: then it can end
            await _quietly(stock_ask)
        await node.aclose()
    return Outcome(name, tether_result, stock_result)


async def _quietly(future: asyncio.Future[Any]) -> None:
    with contextlib.suppress(BaseException):
        await future


def _kill_restart(after: float) -> Fault:
    async def fault(node: NodeStudio, _: Any) -> float:
        await node.kill()
        await asyncio.sleep(after)
        await node.restart()
        return time.monotonic()

    return fault


async def _graceful(node: NodeStudio, _: Any) -> float:
    await node.terminate()
    await asyncio.sleep(2.0)
    await node.restart()
    return time.monotonic()


async def _blip(_: NodeStudio, proxy: FaultProxy) -> float:
    proxy.down()
    await asyncio.sleep(0.7)
    proxy.up()
    return time.monotonic()


async def _other_port(node: NodeStudio, _: Any) -> float:
    old = node.port
    await node.kill()
    with hold_port(old):
        await node.restart()
    return time.monotonic()


async def _frozen() -> Outcome:
    """Time from SIGSTOP to each client noticing, default settings on every side."""
    async with NodeStudio("studio") as node:
        stock = StockStudio(node.url, "stock")
        await asyncio.to_thread(stock.start)
        tether = StudioClient(node.url, run_id="tether", project="bench", name="tether")
        await tether.start()
        await tether.wait_online(10)
        stale: list[float] = []
        tether.link.on_state_change(
            lambda change: stale.append(time.monotonic()) if change.new == State.STALE
            else None)
        await asyncio.sleep(1.0)
        node.freeze()
        frozen = time.monotonic()
        deadline = frozen + 60
        while time.monotonic() < deadline and not (stale and stock.disconnected_at):
            await asyncio.sleep(0.05)
        node.thaw()
        bound = Heartbeat().bound
        tether_result = f"stale {stale[0] - frozen:5.2f} s after (bound {bound:.0f} s)" \
            if stale else "not noticed"
        stock_result = f"noticed {stock.disconnected_at[0] - frozen:5.2f} s after" \
            if stock.disconnected_at else "not noticed in 60 s"
        await asyncio.to_thread(stock.abandon)
        await tether.close()
    return Outcome("Studio frozen (SIGSTOP), default settings", tether_result, stock_result)


async def _all() -> list[Outcome]:
    outcomes = [
        await _scenario("hard kill, restart after 2 s", _kill_restart(2.0)),
        await _scenario("hard kill, restart after 15 s", _kill_restart(15.0)),
        await _scenario("graceful restart (SIGTERM), back after 2 s", _graceful),
        await _scenario("0.7 s network blip, no restart", _blip, proxy=True),
        await _scenario("hard kill, restart on another port", _other_port),
        await _frozen(),
    ]
    return outcomes


def main() -> int:
    if SKIP_REASON is not None:
        print(f"skipped: {SKIP_REASON}")
        return 0
    started = time.monotonic()
    outcomes = asyncio.run(_all())
    width = max(len(o.scenario) for o in outcomes)
    print(f"{'scenario':<{width}}  {'tether (defaults)':<40}  AgentScope 1.0.21's client")
    for outcome in outcomes:
        print(f"{outcome.scenario:<{width}}  {outcome.tether:<40}  {outcome.stock}")
    print(f"\n(times from the end of the fault; {time.monotonic() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
