"""The hub at its edges (issue 7): memory under hostile clients, pongs with the store
locked, an attacker against an authenticated client. ``python -m tests.bench hub`` runs
every scenario at a short length; ``python -m tests.bench_hub SCENARIO [--seconds N]``
runs one (``flood``, ``bigecho``, ``locked``, ``attack``).

Each scenario runs the hub as a subprocess (``python -m adapters.cli hub``, or a small
program on :func:`adapters.hub.serve`) and reads its memory from ``/proc/PID/status``
(``VmRSS`` now, ``VmHWM`` the peak), so the figures are the hub's alone. The clients
speak the session protocol by hand over ``websockets``; only public names are used, so
the same script measures an older checkout (``PYTHONPATH=/path/to/old python
tests/bench_hub.py flood``), which is how the "before" figures of issue 7 were taken.

* ``flood``: one client sends session ``ping`` frames as fast as it can and never reads
  (its ``websockets`` reader stops after one queued frame, so TCP backs up to the hub).
* ``bigecho``: an echo hub; one client sends 400 messages of 1 MiB and reads the echoes
  without acknowledging any (the hub must hold what is unacknowledged), then the same
  with an ``ack`` for every echo and at most 8 echoes outstanding.
* ``locked``: an echo hub on SQLite; a second ``sqlite3`` connection holds ``BEGIN
  EXCLUSIVE`` on the file for a few seconds while one client pings every 20 ms and
  another keeps sending messages; the worst delay of a pong is reported.
* ``attack``: an authenticating hub (when the checkout has ``authenticate=``; with
  ``--anonymous``, a hub without); an attacker opens connections at full rate from
  127.0.0.2-9, half with a valid token of its own, sends hellos and never anything else;
  an honest client (own token) connects again and again; reported: how many of its
  connects got a ``welcome`` and how long they took.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

REPO = Path(__file__).resolve().parent.parent
MiB = 2**20


def _env() -> dict[str, str]:
    env = dict(os.environ)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = path if path else str(REPO)
    return env


def memory(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


@contextlib.asynccontextmanager
async def hub_process(*argv: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """A hub subprocess printing ``listening PORT``; killed on exit."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, *argv, cwd=tempfile.gettempdir(), env=_env(),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        async with asyncio.timeout(10):
            line = await process.stdout.readline()
        if not line.startswith(b"listening "):
            raise RuntimeError(f"the hub did not start: {line!r}")
        yield process, int(line.split()[1])
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def open_session(port: int, *, max_queue: int = 16, local: str | None = None,
                       token: str | None = None) -> tuple[ClientConnection, dict[str, Any]]:
    options: dict[str, Any] = {}
    if local is not None:
        options["local_addr"] = (local, 0)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    ws = await connect(f"ws://127.0.0.1:{port}/", ping_interval=None, max_queue=max_queue,
                       max_size=4 * MiB, open_timeout=5, close_timeout=0.5,
                       additional_headers=headers, **options)
    await ws.send(json.dumps({"type": "hello", "v": 1, "ack": 0}))
    welcome = json.loads(await ws.recv())
    return ws, welcome


# -- flood ---------------------------------------------------------------------------------------


async def flood(seconds: float) -> dict[str, Any]:
    async with hub_process("-m", "adapters.cli", "hub", "--port", "0") as (process, port):
        await asyncio.sleep(0.5)
        start_rss, _ = memory(process.pid)
        ws, welcome = await open_session(port, max_queue=1)
        assert welcome["type"] == "welcome", welcome
        ping = json.dumps({"type": "ping", "ack": 0})
        sent, samples, closed = 0, [], None
        began = time.monotonic()
        next_sample = began + 1
        try:
            while time.monotonic() - began < seconds:
                await ws.send(ping)
                sent += 1
                if sent % 64 == 0:
                    await asyncio.sleep(0)
                if time.monotonic() >= next_sample:
                    samples.append(memory(process.pid)[0])
                    next_sample += 1
        except ConnectionClosed as error:
            closed = f"after {time.monotonic() - began:.1f} s: {error}"
        rss, peak = memory(process.pid)
        ws.transport.abort()
        return {"seconds": seconds, "pings sent": sent, "hub rss start MB": round(start_rss, 1),
                "hub rss end MB": round(rss, 1), "hub peak MB": round(peak, 1),
                "hub rss max sampled MB": round(max(samples, default=rss), 1),
                "connection": closed or "still open"}


# -- bigecho -------------------------------------------------------------------------------------


async def bigecho(count: int, *, ack: bool) -> dict[str, Any]:
    async with hub_process("-m", "adapters.cli", "hub", "--port", "0", "--echo") as (
            process, port):
        await asyncio.sleep(0.5)
        start_rss, _ = memory(process.pid)
        ws, welcome = await open_session(port)
        inflight = welcome.get("limits", {}).get("max_inflight", 1000)
        body = "x" * (MiB - 100)
        echoed, acked_by_hub, refused = 0, 0, None
        began = time.monotonic()

        async def reader() -> None:
            nonlocal echoed, acked_by_hub
            while True:
                frame = json.loads(await ws.recv())
                acked_by_hub = max(acked_by_hub, frame.get("ack", 0))
                if frame["type"] == "msg":
                    echoed += 1
                    if ack:
                        await ws.send(json.dumps({"type": "ack", "ack": frame["seq"]}))
                if frame["type"] == "error":
                    raise RuntimeError(f"{frame['code']}: {frame['message']}")

        task = asyncio.create_task(reader())
        try:
            for seq in range(1, count + 1):
                while (seq - acked_by_hub > inflight or (ack and seq - echoed > 8)) \
                        and not task.done():
                    await asyncio.sleep(0.001)
                if task.done():
                    break
                await ws.send(f'{{"type":"msg","seq":{seq},"ack":0,"data":"{body}"}}')
            async with asyncio.timeout(60):
                while echoed < count and not task.done():
                    await asyncio.sleep(0.01)
        except (ConnectionClosed, TimeoutError) as error:
            refused = repr(error)
        if task.done() and task.exception() is not None:
            refused = repr(task.exception())
        task.cancel()
        rss, peak = memory(process.pid)
        ws.transport.abort()
        return {"messages": count, "client acks": ack, "echoed": echoed,
                "seconds": round(time.monotonic() - began, 1),
                "hub rss start MB": round(start_rss, 1), "hub rss end MB": round(rss, 1),
                "hub peak MB": round(peak, 1), "ended": refused or "complete"}


# -- locked --------------------------------------------------------------------------------------


async def locked(seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tether-bench-hub-") as tmp:
        path = Path(tmp) / "hub.sqlite"
        async with hub_process("-m", "adapters.cli", "hub", "--port", "0", "--echo",
                               "--store", str(path)) as (_, port):
            pinger, _ = await open_session(port)
            sender, _ = await open_session(port)
            delays: list[float] = []
            sender_events: list[str] = []
            stop = asyncio.Event()

            async def ping() -> None:
                while not stop.is_set():
                    sent = time.monotonic()
                    await pinger.send('{"type":"ping","ack":0}')
                    while True:
                        frame = json.loads(await pinger.recv())
                        if frame["type"] == "pong":
                            break
                    delays.append(time.monotonic() - sent)
                    await asyncio.sleep(0.02)

            async def send() -> None:
                seq = 0
                with contextlib.suppress(ConnectionClosed):
                    while not stop.is_set():
                        seq += 1
                        await sender.send(json.dumps({"type": "msg", "seq": seq, "ack": 0,
                                                      "data": seq}))
                        while True:
                            frame = json.loads(await sender.recv())
                            if frame["type"] == "error":
                                sender_events.append(f"error {frame['code']} retry_after "
                                                     f"{frame.get('retry_after')}")
                                return
                            if frame.get("ack", 0) >= seq:
                                break
                        await sender.send(json.dumps({"type": "ack", "ack": seq}))
                        await asyncio.sleep(0.05)

            tasks = [asyncio.create_task(ping()), asyncio.create_task(send())]
            await asyncio.sleep(0.5)
            unlocked_delays = len(delays)
            holder = sqlite3.connect(path, isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")
            locked_at = time.monotonic()
            await asyncio.sleep(seconds)
            holder.execute("ROLLBACK")
            holder.close()
            held = time.monotonic() - locked_at
            await asyncio.sleep(0.5)
            stop.set()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(6):
                    await asyncio.gather(*tasks, return_exceptions=True)
            for task in tasks:
                task.cancel()
            during = delays[unlocked_delays:]
            return {"lock held s": round(held, 2), "pongs during/after lock": len(during),
                    "worst pong delay ms": round(1000 * max(during, default=float("nan")), 1),
                    "median pong delay ms": round(1000 * statistics.median(during), 2)
                    if during else None,
                    "sender": sender_events or ["no error frame"]}


# -- attack --------------------------------------------------------------------------------------

_ATTACK_HUB = textwrap.dedent("""
    import asyncio, inspect, sys
    from adapters.hub import Limits, serve
    TOKENS = {"honest-token-0123456789": "alice", "attacker-token-0123456789": "mallory"}
    def authenticate(request):
        value = request.headers.get("Authorization", "")
        return TOKENS.get(value.removeprefix("Bearer "))
    async def main():
        options = {}
        if "authenticate" in inspect.signature(serve).parameters and sys.argv[2] == "auth":
            options["authenticate"] = authenticate
        limits = {"max_sessions": int(sys.argv[1])}
        hub = await serve(lambda session, data: None, limits=Limits(**limits), **options)
        print("listening", hub.port, "auth" if options else "anonymous", flush=True)
        await asyncio.Future()
    asyncio.run(main())
""")


async def attack(seconds: float, *, max_sessions: int = 10_000,
                 anonymous: bool = False) -> dict[str, Any]:
    mode = "anonymous" if anonymous else "auth"
    async with hub_process("-c", _ATTACK_HUB, str(max_sessions), mode) as (_, port):
        stop = asyncio.Event()
        attempts = {"opened": 0, "refused": 0, "welcomed": 0, "busy": 0, "other": 0}

        async def attacker(index: int) -> None:
            local = f"127.0.0.{2 + index % 8}"
            token = "attacker-token-0123456789" if index % 2 else "wrong-token"
            while not stop.is_set():
                try:
                    ws, welcome = await open_session(port, local=local, token=token)
                    attempts["opened"] += 1
                    kind = welcome.get("type")
                    if kind == "welcome":
                        attempts["welcomed"] += 1
                    elif welcome.get("code") == "busy":
                        attempts["busy"] += 1
                    ws.transport.abort()
                except InvalidStatus:
                    attempts["refused"] += 1
                except (OSError, ConnectionClosed, TimeoutError):
                    attempts["other"] += 1
                    await asyncio.sleep(0.01)

        workers = [asyncio.create_task(attacker(i)) for i in range(32)]
        waits: list[float] = []
        outcomes: list[str] = []
        began = time.monotonic()
        await asyncio.sleep(1.0)  # the attack is under way
        while time.monotonic() - began < seconds:
            tried = time.monotonic()
            outcome: str
            try:
                async with asyncio.timeout(5):
                    ws, welcome = await open_session(port, token="honest-token-0123456789")
                outcome = "welcome" if welcome.get("type") == "welcome" else \
                    f"error {welcome.get('code')}"
                ws.transport.abort()
            except (OSError, ConnectionClosed, TimeoutError, InvalidStatus) as error:
                outcome = type(error).__name__
            waits.append(time.monotonic() - tried)
            outcomes.append(outcome)
            await asyncio.sleep(0.2)
        stop.set()
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        welcomed = outcomes.count("welcome")
        return {"attack seconds": seconds, "attacker": attempts,
                "honest connects": len(outcomes), "honest welcomed": welcomed,
                "honest refusals": sorted(set(o for o in outcomes if o != "welcome")),
                "honest connect p50 ms": round(1000 * statistics.median(waits), 1),
                "honest connect max ms": round(1000 * max(waits), 1)}


# -- the command ---------------------------------------------------------------------------------


def _print(name: str, result: dict[str, Any]) -> None:
    print(f"{name}:")
    for key, value in result.items():
        print(f"  {key:<28} {value}")
    sys.stdout.flush()


async def _all(seconds: float) -> None:
    _print("flood (non-reading ping flood)", await flood(seconds))
    _print("bigecho, no acks", await bigecho(400, ack=False))
    _print("bigecho, acks", await bigecho(400, ack=True))
    _print("locked (BEGIN EXCLUSIVE by another connection)", await locked(min(seconds, 6)))
    _print("attack", await attack(seconds))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench_hub", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="?", default="all",
                        choices=["all", "flood", "bigecho", "locked", "attack"])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--max-sessions", type=int, default=10_000)
    parser.add_argument("--anonymous", action="store_true",
                        help="attack: a hub without authenticate (tokens are ignored)")
    args = parser.parse_args([] if argv is None else list(argv))  # tests.bench: all
    if args.scenario == "all":
        asyncio.run(_all(args.seconds))
    elif args.scenario == "flood":
        _print("flood", asyncio.run(flood(args.seconds)))
    elif args.scenario == "bigecho":
        _print("bigecho, no acks", asyncio.run(bigecho(args.count, ack=False)))
        _print("bigecho, acks", asyncio.run(bigecho(args.count, ack=True)))
    elif args.scenario == "locked":
        _print("locked", asyncio.run(locked(args.seconds)))
    else:
        _print("attack", asyncio.run(attack(args.seconds, max_sessions=args.max_sessions,
                                            anonymous=args.anonymous)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
