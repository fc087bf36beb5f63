"""``tether demo``: the studio-restart bug, and tether fixing it, on loopback.

A studio (a real subprocess) knows an agent only after it registers, and answers the
agent's question ("ask") after a short delay, as a user would. Two agents connect:

* a **naive** client, as AgentScope 0.x had it: websockets' own reconnect loop, which
  re-registers after a reconnect, but whose pending question lived only in the studio
  that died;
* **tether**: ``connect(..., on_rebuild=register)`` with ``link.request(...)``.

The studio hangs (SIGSTOP: the socket stays open, nothing answers, a half-open peer)
while both questions are pending, is killed with SIGKILL, then restarted knowing
nothing. The demo prints the timeline and checks the outcome: tether notices,
reconnects, re-registers, re-sends its question, gets the answer, and delivers the chat
message sent during the outage exactly once; the naive agent is still waiting.
Exit status 0 when every check holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from adapters.link import Link
from adapters.websocket import connect
from fsm import Backoff, Heartbeat, State, StateChange

HEARTBEAT = Heartbeat(interval=0.5, timeout=0.5)
BACKOFF = Backoff(initial=0.05, cap=0.5, grace=2.0)
ANSWER_AFTER = 1.0  # the "user" takes a second to answer


# -- the studio (runs in a subprocess) ---------------------------------------------------


async def _studio(port: int) -> None:
    agents: set[str] = set()

    async def handler(ws: ServerConnection) -> None:
        async for raw in ws:
            message = json.loads(raw)
            kind = message.get("type")
            if kind == "register":
                agents.add(message["agent"])
                await ws.send(json.dumps({"type": "registered", "agent": message["agent"]}))
            elif kind == "chat":
                await ws.send(json.dumps({"type": "chat-received", "n": message["n"]}))
            elif kind == "ask" and message.get("agent") in agents:
                answers.add(asyncio.ensure_future(_answer(ws, message)))

    async def _answer(ws: ServerConnection, message: dict[str, Any]) -> None:
        await asyncio.sleep(ANSWER_AFTER)
        with contextlib.suppress(ConnectionClosed):
            await ws.send(json.dumps({"reply_to": message["id"], "text": "yes, go on"}))

    answers: set[asyncio.Future[None]] = set()

    async with serve(handler, "127.0.0.1", port, ping_interval=None):
        print("listening", flush=True)
        await asyncio.Future()


class Studio:
    """The studio subprocess: start, SIGKILL, restart on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> int:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "adapters.demo", "--studio", str(self.port),
            stdout=asyncio.subprocess.PIPE)
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 10)
        if line.strip() != b"listening":
            raise RuntimeError(f"studio did not start: {line!r}")
        return self.process.pid

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()


# -- the agents -----------------------------------------------------------------------------


class Timeline:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def at(self) -> float:
        return time.monotonic() - self.start

    def say(self, who: str, what: str) -> None:
        print(f"  {self.at():6.2f}s  {who:<8} {what}", flush=True)


async def _naive(url: str, timeline: Timeline, outcome: dict[str, Any]) -> None:
    """AgentScope 0.x style: reconnects and re-registers; the question is asked once."""
    asked = False
    async for ws in ws_connect(url, open_timeout=2):
        try:
            await ws.send(json.dumps({"type": "register", "agent": "naive"}))
            if not asked:
                asked = True
                await ws.send(json.dumps({"type": "ask", "agent": "naive", "id": "n1"}))
                timeline.say("naive", "asked the user a question; waiting for the answer")
            async for raw in ws:
                if json.loads(raw).get("reply_to") == "n1":
                    outcome["naive_answer"] = timeline.at()
                    return
        except ConnectionClosed:
            timeline.say("naive", "connection lost; websockets reconnects on its own")
            continue


async def _agent(url: str, timeline: Timeline, outcome: dict[str, Any]) -> Link:
    rebuilds = 0

    async def register(link: Link) -> None:
        nonlocal rebuilds
        rebuilds += 1
        await link.send({"type": "register", "agent": "alice"})
        timeline.say("tether", f"rebuild #{rebuilds}: registered alice with this studio")

    def changed(change: StateChange) -> None:
        retry = f"; next dial in {change.retry_in:.2f} s" if change.retry_in is not None else ""
        if change.old == change.new:  # a failed redial while recovering
            timeline.say("tether", f"redial failed ({change.reason.split(':')[1].strip()})"
                                   f"{retry}")
            return
        timeline.say("tether", f"{change.old} -> {change.new}: {change.reason}{retry}")
        if change.new == State.STALE:
            outcome.setdefault("stale_at", timeline.at())
        if change.new == State.ONLINE and "stale_at" in outcome:
            outcome.setdefault("online_again_at", timeline.at())

    link = connect(url, heartbeat=HEARTBEAT, backoff=BACKOFF, on_rebuild=register)
    link.on_state_change(changed)
    outcome["rebuilds"] = lambda: rebuilds
    return link


async def _demo() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/agents"
    timeline = Timeline()
    studio = Studio(port)
    outcome: dict[str, Any] = {}
    received: list[Any] = []
    print("tether demo: the studio dies while an agent waits for the user's answer\n")
    timeline.say("studio", f"started (pid {await studio.start()}) on {url}")

    naive = asyncio.ensure_future(_naive(url, timeline, outcome))
    link = await _agent(url, timeline, outcome)
    try:
        async with link:
            await link.wait_for(State.ONLINE, timeout=5)

            async def read() -> None:
                async for message in link:
                    received.append(message)

            reader = asyncio.ensure_future(read())
            await link.send({"type": "chat", "n": 1})
            question = asyncio.ensure_future(
                link.request({"type": "ask", "agent": "alice"}, id="q1", timeout=20))
            timeline.say("tether", "asked the user a question; waiting for the answer")
            await asyncio.sleep(0.3)

            studio.freeze()
            frozen_at = timeline.at()
            timeline.say("studio", "SIGSTOP: the studio hangs with both questions pending")
            await link.wait_for(State.STALE, timeout=5)
            await studio.kill()
            timeline.say("studio", "SIGKILL: the hung studio is killed")
            await link.send({"type": "chat", "n": 2})
            timeline.say("tether", f"sent chat #2 during the outage (link is {link.state})")
            await asyncio.sleep(1.0)
            restarted_at = timeline.at()
            timeline.say("studio", f"restarted (pid {await studio.start()}): it knows no agents")

            answer = await question
            timeline.say("tether", f"the user answered: {answer['text']!r}")
            await asyncio.sleep(0.3)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            naive_waiting = not naive.done()
            timeline.say("naive", "still waiting for its answer: the new studio never got "
                         "the question" if naive_waiting else "got an answer")
    finally:
        naive.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await naive
        await studio.kill()

    return _report(outcome, received, link, answer, naive_waiting,
                   frozen_at=frozen_at, restarted_at=restarted_at)


def _report(outcome: dict[str, Any], received: list[Any], link: Link, answer: Any,
            naive_waiting: bool, *, frozen_at: float, restarted_at: float) -> int:
    chats = [m["n"] for m in received if isinstance(m, dict) and m.get("type") == "chat-received"]
    stats = link.statistics()
    checks = [
        ("tether noticed the hung studio", "stale_at" in outcome,
         f"{outcome.get('stale_at', 0) - frozen_at:.2f} s after it froze (bound: "
         f"interval + timeout = {HEARTBEAT.bound:.1f} s after the last frame)"),
        ("tether was online again after the restart", "online_again_at" in outcome,
         f"{outcome.get('online_again_at', 0) - restarted_at:.2f} s after the restart"),
        ("the agent re-registered with the new studio", outcome["rebuilds"]() == 2,
         f"{outcome['rebuilds']()} rebuilds"),
        ("the pending question was answered", answer.get("reply_to") == "q1", "request q1"),
        ("chat messages delivered once each, in order", chats == [1, 2], f"studio saw {chats}"),
        ("the naive agent is stuck (the bug tether fixes)", naive_waiting,
         "waiting forever" if naive_waiting else "not stuck"),
    ]
    print("\nOutcome")
    for label, ok, detail in checks:
        print(f"  [{'ok' if ok else 'FAIL'}] {label}: {detail}")
    print(f"\n  link statistics: reconnects={stats['reconnects']}, attempts={stats['attempts']}, "
          f"undelivered={stats['undelivered']}, final state={link.state}")
    return 0 if all(ok for _, ok, _ in checks) else 1




# -- tether demo agentscope: the seed scenario against the stand-in AgentScope Studio ------


async def _agentscope_demo() -> int:
    """A stock AgentScope client and tether each wait for the user's answer; the Studio
    is restarted gracefully (SIGTERM, as a user upgrading it would); the user answers
    whatever the restarted Studio shows. Needs node and the stand-in's npm packages."""
    repo = Path(__file__).resolve().parent.parent
    if not (repo / "tests" / "studio" / "studio.js").exists():
        print("tether demo agentscope: run it from a source checkout (make demo-agentscope)")
        return 2
    sys.path.insert(0, str(repo))
    from adapters.agentscope import StudioClient
    from tests.stock_agentscope import StockStudio
    from tests.studio import SKIP_REASON, NodeStudio

    if SKIP_REASON is not None:
        print(f"tether demo agentscope: {SKIP_REASON}")
        return 2
    timeline = Timeline()
    print("tether demo agentscope: the Studio restarts while two agents wait for the user\n")
    with tempfile.TemporaryDirectory() as folder:
        node = NodeStudio("studio", state=Path(folder) / "studio.json")
        await node.start()
        timeline.say("studio", f"started (pid {node.pid}) on {node.url}")
        stock = StockStudio(node.url, "stock-run")
        await asyncio.to_thread(stock.start)
        tether = StudioClient(node.url, run_id="tether-run", project="demo", name="tether",
                              heartbeat=HEARTBEAT, backoff=BACKOFF)
        await tether.start()
        await tether.wait_online(5)
        stock_ask = asyncio.ensure_future(asyncio.to_thread(stock.ask, "stock-q"))
        tether_ask = asyncio.ensure_future(tether.request_user_input("agent", "user",
                                                                     request_id="tether-q"))
        timeline.say("stock", "AgentScope's own client asked the user (requestId stock-q)")
        timeline.say("tether", "asked the user (requestId tether-q)")
        try:
            await asyncio.sleep(1.0)
            await node.terminate()
            timeline.say("studio", "SIGTERM: graceful shutdown; it drops both requests and "
                                   "marks both runs done")
            await asyncio.sleep(2.0)
            await node.start()
            timeline.say("studio", f"restarted (pid {node.pid})")
            await _user_answers(node, tether_ask, timeline)
            tether_ok = tether_ask.done() and not tether_ask.exception()
            timeline.say("tether", f"got the answer: {tether_ask.result().blocks[0]['text']!r}"
                                   f" ({tether.registrations} registrations)" if tether_ok
                         else "no answer")
            await asyncio.sleep(1.0)
            stock_stuck = not stock_ask.done()
            final = await node.state()
            shown = [r for r in final["inputRequests"].values() if r["runId"] == "stock-run"]
            timeline.say("stock", f"still waiting; the Studio shows its run as "
                                  f"{final['runs']['stock-run']['status']!r} and "
                                  f"{len(shown)} input box for it" if stock_stuck
                         else "got an answer")
        finally:
            await asyncio.to_thread(stock.abandon)
            with contextlib.suppress(BaseException):
                await stock_ask
            await tether.close()
            await node.aclose()
    checks = [("tether: the answer reached the agent after the restart", tether_ok),
              ("stock AgentScope client: stuck (the bug tether fixes)", stock_stuck)]
    print("\nOutcome")
    for label, ok in checks:
        print(f"  [{'ok' if ok else 'FAIL'}] {label}")
    return 0 if all(ok for _, ok in checks) else 1


async def _user_answers(node: Any, waiting: asyncio.Future[Any], timeline: Timeline) -> None:
    """The user: answers every input box the Studio shows, until tether got its answer."""
    from adapters.socketio import SocketIODialer, emit

    answered: set[str] = set()
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline and not waiting.done():
        shown = (await node.state())["inputRequests"]
        for request_id in set(shown) - answered:
            ui = await SocketIODialer(node.url, namespace="/client").dial({})
            await ui.send(emit("sendUserInputToServer", request_id,
                               [{"type": "text", "text": "go on"}], None, ack=1))
            await asyncio.sleep(0.2)  # the Studio drops an event that comes with a close
            await ui.close()
            answered.add(request_id)
            timeline.say("user", f"answered {request_id}, the one input box the Studio shows")
        await asyncio.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tether demo", description=__doc__.split("\n")[0])
    parser.add_argument("scenario", nargs="?", choices=["agentscope"],
                        help="agentscope: the Studio-restart bug against a stand-in "
                             "AgentScope Studio (Socket.IO), stock client and tether")
    parser.add_argument("--studio", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.scenario == "agentscope":
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        logging.getLogger("tether").setLevel(logging.CRITICAL)
        return asyncio.run(_agentscope_demo())
    if args.studio is not None:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_studio(args.studio))
        return 0
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    logging.getLogger("tether").setLevel(logging.ERROR)  # the timeline says it all
    return asyncio.run(_demo())


if __name__ == "__main__":
    sys.exit(main())
