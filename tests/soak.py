"""The chaos soak: many session-mode links against real hub processes, under random faults.

    python -m tests.soak --links 100 --messages 1000 --seconds 60     # make soak
    python -m tests.soak --links 10 --messages 100 --seconds 10       # the short one

``--hubs`` hub processes (``tether hub --store FILE --echo``, SQLite: a killed hub keeps
its sessions) each sit behind a TCP fault proxy (:mod:`adapters.proxy`); the links are
spread over them, each sends its messages evenly over the run and reads every echo. For
``--seconds`` a random schedule hits the hubs and the network: SIGKILL and restart,
SIGSTOP freezes, blackholes, resets, latency. A live progress line shows what was
delivered, what is in flight, the faults so far and the links' states. Then every fault
is healed and the soak waits for the last echoes.

It counts, per message: **lost** (sent, never echoed), **duplicated** (echoed twice),
**reordered** (echoed after a later one); **false online** samples (every 100 ms, a link
still live while the hub it talks to has been frozen longer than the heartbeat bound
plus slack); **file descriptors and tasks** before the links and after they closed.
Exit status 0 only when all of these are zero (and equal, for descriptors and tasks).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.link import Link
from adapters.proxy import FaultProxy
from adapters.websocket import connect
from fsm import Backoff, Heartbeat
from fsm.errors import OutboxFull

HB = Heartbeat(interval=1.0, timeout=1.0)
BACKOFF = Backoff(initial=0.05, cap=1.0, grace=2.0)
SLACK = 0.5  # beyond the bound: latency up to 0.2 s, a loaded loop's tick
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Hub:
    """One ``tether hub`` process with its SQLite file, on a fixed port, behind a proxy."""

    def __init__(self, index: int, workdir: Path) -> None:
        self.index, self.port = index, _free_port()
        self.store = workdir / f"hub{index}.sqlite"
        self.process: asyncio.subprocess.Process | None = None
        self.proxy = FaultProxy(("127.0.0.1", self.port), rng=random.Random(index))
        self.frozen_since: float | None = None
        self.dead = False
        self.busy = False  # a fault is running on it

    async def start(self) -> None:
        for _ in range(50):
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "adapters.hub", "--port", str(self.port),
                "--store", str(self.store), "--echo", "--log-level", "error", cwd=REPO,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL)
            assert process.stdout is not None
            try:
                async with asyncio.timeout(10):
                    line = await process.stdout.readline()
            except TimeoutError:
                line = b""
            if line.startswith(b"listening "):
                self.process, self.dead = process, False
                return
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            await asyncio.sleep(0.1)  # the port may still be held
        raise RuntimeError(f"hub {self.index} did not start on port {self.port}")

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    async def kill(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        if self.process is not None:
            await self.process.wait()
        self.dead, self.frozen_since = True, None


@dataclass
class Tally:
    sent: list[int] = field(default_factory=list)
    got: list[int] = field(default_factory=list)


@dataclass
class Soak:
    links: int
    messages: int
    seconds: float
    hubs: int
    seed: int
    faults: Counter[str] = field(default_factory=Counter)
    false_online: int = 0
    tallies: list[Tally] = field(default_factory=list)

    async def run(self) -> dict[str, Any]:
        rng = random.Random(self.seed)
        loop = asyncio.get_running_loop()
        with tempfile.TemporaryDirectory(prefix="tether-soak-") as tmp:
            hubs = [Hub(i, Path(tmp)) for i in range(self.hubs)]
            for hub in hubs:
                await hub.start()
                await hub.proxy.start()
            fds_before, tasks_before = _fds(), len(asyncio.all_tasks())
            links: list[Link] = []
            for i in range(self.links):
                hub = hubs[i % self.hubs]
                link = connect(f"ws://127.0.0.1:{hub.proxy.port}/", session=True,
                               heartbeat=HB, backoff=BACKOFF, handshake_timeout=3.0,
                               rng=random.Random(self.seed * 1000 + i), name=f"soak{i}")
                links.append(link)
                self.tallies.append(Tally())
                await link.start()
            started = loop.time()
            workers = [loop.create_task(self._sender(i, link, started))
                       for i, link in enumerate(links)]
            workers += [loop.create_task(self._reader(i, link)) for i, link in enumerate(links)]
            chaos = loop.create_task(self._chaos(hubs, rng, started))
            sampler = loop.create_task(self._sample(hubs, links))
            display = loop.create_task(self._display(links, started))
            await chaos
            await self._heal(hubs)
            drained = await self._drain(links, deadline=loop.time() + 60 + self.links * 0.2)
            for task in (sampler, display, *workers):
                task.cancel()
            await asyncio.gather(sampler, display, *workers, return_exceptions=True)
            for link in links:
                await link.close()
            await asyncio.sleep(0.2)  # the transports' own close callbacks
            fds_after, tasks_after = _fds(), len(asyncio.all_tasks())
            for hub in hubs:
                await hub.proxy.close()
                await hub.kill()
            print(file=sys.stderr)
        lost = duplicated = reordered = 0
        for tally in self.tallies:
            got = Counter(tally.got)
            lost += len(set(tally.sent) - set(got))
            duplicated += sum(n - 1 for n in got.values() if n > 1)
            highest = 0
            for n in tally.got:
                reordered += n < highest
                highest = max(highest, n)
        delivered = sum(len(set(t.got)) for t in self.tallies)
        return {"links": self.links, "messages_per_link": self.messages,
                "seconds": self.seconds, "sent": sum(len(t.sent) for t in self.tallies),
                "delivered": delivered, "lost": lost, "duplicated": duplicated,
                "reordered": reordered, "false_online_samples": self.false_online,
                "faults": dict(self.faults), "drained": drained,
                "fds_before": fds_before, "fds_after": fds_after,
                "tasks_before": tasks_before, "tasks_after": tasks_after}

    async def _sender(self, i: int, link: Link, started: float) -> None:
        pace = self.seconds * 0.8 / self.messages
        tally = self.tallies[i]
        for n in range(1, self.messages + 1):
            await asyncio.sleep(max(0.0, started + n * pace - asyncio.get_running_loop().time()))
            while True:
                try:
                    await link.send({"n": n})
                    break
                except OutboxFull:
                    await asyncio.sleep(0.1)
            tally.sent.append(n)

    async def _reader(self, i: int, link: Link) -> None:
        tally = self.tallies[i]
        async for message in link:
            if isinstance(message, dict) and isinstance(message.get("n"), int):
                tally.got.append(message["n"])

    async def _chaos(self, hubs: list[Hub], rng: random.Random, started: float) -> None:
        loop = asyncio.get_running_loop()
        running: set[asyncio.Task[None]] = set()
        kinds = ["kill", "freeze", "blackhole", "reset", "latency"]
        rng.shuffle(kinds)  # every kind early on, then at random
        order = iter(kinds)
        while loop.time() - started < self.seconds:
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            idle = [h for h in hubs if not h.busy]
            if not idle or loop.time() - started > self.seconds - 3:
                continue
            hub = rng.choice(idle)
            kind = next(order, None) or rng.choice(kinds)
            hub.busy = True
            self.faults[kind] += 1
            task = loop.create_task(self._fault(hub, kind, rng.uniform(1.0, 3.0), rng))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.gather(*running)

    async def _fault(self, hub: Hub, kind: str, lasts: float, rng: random.Random) -> None:
        loop = asyncio.get_running_loop()
        try:
            if kind == "kill":
                await hub.kill()
                await asyncio.sleep(lasts / 2)
                await hub.start()
            elif kind == "freeze":
                hub.signal(signal.SIGSTOP)
                hub.frozen_since = loop.time()
                await asyncio.sleep(lasts)
                hub.frozen_since = None
                hub.signal(signal.SIGCONT)
            elif kind == "blackhole":
                hub.proxy.blackhole()
                await asyncio.sleep(lasts)
                hub.proxy.clear()
            elif kind == "reset":
                hub.proxy.reset_peer()
                await asyncio.sleep(0.2)
                hub.proxy.clear()
            else:
                hub.proxy.latency(rng.uniform(50, 200))
                await asyncio.sleep(lasts)
                hub.proxy.clear()
        finally:
            hub.busy = False

    async def _heal(self, hubs: list[Hub]) -> None:
        for hub in hubs:
            hub.proxy.clear()
            if hub.frozen_since is not None:
                hub.signal(signal.SIGCONT)
                hub.frozen_since = None
            if hub.dead:
                await hub.start()

    async def _drain(self, links: list[Link], deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            if all(len(t.sent) == self.messages and set(t.got) >= set(t.sent)
                   for t in self.tallies):
                return True
            await asyncio.sleep(0.2)
        return False

    async def _sample(self, hubs: list[Hub], links: list[Link]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.1)
            for i, link in enumerate(links):
                hub = hubs[i % self.hubs]
                frozen = hub.frozen_since
                core = link.lifecycle
                if frozen is not None and core.tags.live and \
                        loop.time() - frozen > HB.bound + core.excused + SLACK and \
                        core.last_heard < frozen + SLACK:
                    self.false_online += 1

    async def _display(self, links: list[Link], started: float) -> None:
        loop, tty = asyncio.get_running_loop(), sys.stderr.isatty()
        last_line = 0.0
        while True:
            await asyncio.sleep(0.5)
            now = loop.time() - started
            if not tty and now - last_line < 5:
                continue
            last_line = now
            sent = sum(len(t.sent) for t in self.tallies)
            delivered = sum(len(set(t.got)) for t in self.tallies)
            states = Counter(str(link.state) for link in links)
            faults = " ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
            line = (f"t={now:5.1f}s delivered {delivered}/{self.links * self.messages} "
                    f"in flight {sent - delivered} faults {sum(self.faults.values())} "
                    f"({faults}) links "
                    + " ".join(f"{s} {n}" for s, n in sorted(states.items()))
                    + (f" false-online {self.false_online}" if self.false_online else ""))
            print(("\r\x1b[2K" if tty else "") + line, end="" if tty else "\n",
                  file=sys.stderr, flush=True)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


def verdict(result: dict[str, Any]) -> list[str]:
    """What is wrong with a soak's result; empty when it passed."""
    problems = [f"{key}: {result[key]}" for key in ("lost", "duplicated", "reordered",
                                                    "false_online_samples") if result[key]]
    if result["fds_after"] != result["fds_before"]:
        problems.append(f"file descriptors: {result['fds_before']} before, "
                        f"{result['fds_after']} after")
    if result["tasks_after"] != result["tasks_before"]:
        problems.append(f"tasks: {result['tasks_before']} before, {result['tasks_after']} "
                        f"after")
    if not result["drained"]:
        problems.append("not every echo arrived before the drain deadline")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--links", type=int, default=100)
    parser.add_argument("--messages", type=int, default=1000, help="per link")
    parser.add_argument("--seconds", type=float, default=60.0, help="of faults")
    parser.add_argument("--hubs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--verbose", action="store_true", help="the links' warnings too")
    args = parser.parse_args(argv)
    if not args.verbose:  # the progress line says it all; state changes would drown it
        logging.getLogger("tether").setLevel(logging.ERROR)
    print(f"soak: {args.links} links x {args.messages} messages, {args.hubs} hubs, "
          f"{args.seconds:.0f} s of faults, seed {args.seed}", file=sys.stderr)
    started = time.monotonic()
    result = asyncio.run(Soak(args.links, args.messages, args.seconds, args.hubs,
                              args.seed).run())
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result, indent=2))
    problems = verdict(result)
    for problem in problems:
        print(f"soak FAILED: {problem}", file=sys.stderr)
    if not problems:
        print("soak passed: nothing lost, duplicated or reordered, no false online, no "
              "leak", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
