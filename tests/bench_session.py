"""Benchmark: what session mode costs in throughput, and what it keeps through hub kills.

Run it with ``.venv/bin/python -m tests.bench_session`` (about 15 s). Every
figure is measured in the same run; nothing is quoted from elsewhere.

**Throughput, 1 KB messages on loopback.** One client sends ``N`` text messages of the same
1,024-character payload (random ASCII letters; compression is off on every server) as fast
as it can; the clock runs from the first send until the *server's
handler* has received the ``N``-th message (connection set-up and close are outside it).
Server and client share one process and one event loop, the same for every variant, so
every figure is the cost of both ends on one core. Variants, a fresh server and client per
run, ``ROUNDS`` runs each, the variants taking turns within each round; the median is
reported:

* **websockets (raw)**: ``websockets.asyncio.client.connect`` and ``await ws.send(payload)``
  in a loop, to a plain ``websockets`` server whose handler counts messages.
* **tether plain**: ``connect(url)`` (plain mode) to that same counting server.
* **tether session, MemoryStore**: ``connect(url, session=True)`` to the reference hub
  (``adapters.hub.serve``) with its in-memory store, the hub's handler counting.
* **tether session, SQLiteStore**: the same with an ``SQLiteStore`` (WAL,
  ``synchronous=FULL``): every delivery is a committed transaction with an ``fsync``
  before its acknowledgement. A fresh file per run, in a ``mkdtemp`` directory whose
  filesystem is printed. Time-boxed at ``TIME_BOX`` s (the rate is then what arrived by then).

tether's ``send()`` queues into the bounded outbox (1,000 messages by default); when it is
full the benchmark yields to the loop until there is room (``link.lifecycle.outbox``), so
the outbox is the window (its 1,000 equal the hub's ``max_inflight``). In session mode it
drains as the hub acknowledges (every 32 messages or 50 ms); in plain mode as frames are
written.

**Faults.** ``FAULT_MESSAGES`` messages ``{"id": i}`` from one session-mode client, at most
``WINDOW`` unacknowledged at a time, through ``KILLS`` SIGKILLs of the hub, a subprocess
(``adapters.hub.serve`` in a small script, ``HUB``) restarted each time on the same port
(and, for SQLite, the same file). The sender yields to the loop after every message. Kill
``k`` falls a seeded random ``U[0, KILL_DELAY)`` after message ``k * FAULT_MESSAGES / 6`` is
sent (or after the previous kill's reconnect, if that is later: every kill hits a hub the
client is connected to), while the stream flows, so the kills are spread over it and land
at random points of the hub's work (in a handler, in a commit, idle). Where each kill fell
(messages sent, messages held unacknowledged) is printed.

What the hub *delivered to its handler* is measured at the handler, durably:

* SQLite store: the handler registers ``session.record(effect)``, which inserts the id
  into a table of the session store's file *in the delivery's own transaction*: a row
  exists exactly when the hub committed that delivery (exactly-once expected: 0 lost,
  0 duplicated). The handler also appends each id to a log file with ``os.write`` before
  returning (it survives SIGKILL): those are handler *calls*, at-least-once across kills.
* Memory store (its state dies with each hub): the handler has no transaction to join,
  so the call log is the record: the hub acknowledges a message only after its handler
  returned, so an acknowledged message is in the log. Expected: 0 lost; duplicates
  possible only for messages the client held unacknowledged at a kill (at-least-once),
  so their count is bounded by the client's unacknowledged messages at the kills, which
  are printed alongside.

The client counts rebuilds with an ``on_rebuild`` hook (expected: 1 with SQLite, the epoch
survives; ``KILLS + 1`` with memory, one per epoch) and reads ``reconnects`` from
``link.statistics()``. Each hub process prints its epoch, so the number of distinct epochs
is a cross-check. Reconnect backoff is ``Backoff(initial=0.05, cap=0.5)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from adapters.hub import Session, serve
from adapters.link import Link
from adapters.stores import MemoryStore, SessionStore, SQLiteStore
from adapters.websocket import connect
from fsm import Backoff, State

__all__ = ["main"]

PAYLOAD_BYTES = 1024  #: characters (ASCII, so bytes) per throughput message
N = 5_000  #: messages per throughput run
ROUNDS = 3  #: runs per variant, interleaved; the median is reported
TIME_BOX = 8.0  #: s; a throughput run stops there and reports what arrived
FAULT_MESSAGES = 1_000
KILLS = 5
WINDOW = 100  #: fault runs: at most this many messages unacknowledged at the client
START_LIMIT = 10.0  #: s for a hub to print its port, or a link to go ONLINE
SETTLE_LIMIT = 60.0  #: s for a fault run's last message to be acknowledged
KILL_DELAY = 0.002  #: s; kill k falls U[0, KILL_DELAY) after message k * 1000 / 6 is sent
SEED = 20_240_501  #: of the kill delays
BACKOFF = Backoff(initial=0.05, cap=0.5)
ROOT = Path(__file__).resolve().parents[1]

RAW = "websockets (raw)"
PLAIN = "tether plain"
SESSION_MEMORY = "tether session, MemoryStore"
SESSION_SQLITE = "tether session, SQLiteStore"

#: The hub for the fault runs: argv is store kind (memory|sqlite), database path, call log
#: path, port. Prints ``listening PORT EPOCH`` once it accepts connections.
HUB = """\
import asyncio, contextlib, os, sqlite3, sys
from adapters.hub import serve
from adapters.stores import MemoryStore, SQLiteStore

kind, db_path, log_path, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

async def main():
    if kind == "sqlite":
        with contextlib.closing(sqlite3.connect(db_path)) as db:
            db.execute("CREATE TABLE IF NOT EXISTS received (id INTEGER NOT NULL)")
            db.commit()
        store = SQLiteStore(db_path)
    else:
        store = MemoryStore()
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def handler(session, data):
        ident = int(data["id"])
        os.write(log, b"%d\\n" % ident)  # every call, in the kernel before we return
        if kind == "sqlite":
            session.record(lambda db: db.execute("INSERT INTO received (id) VALUES (?)",
                                                 (ident,)))

    hub = await serve(handler, "127.0.0.1", port, store=store)
    async with hub:
        print(f"listening {hub.port} {hub.epoch}", flush=True)
        await asyncio.Future()

with contextlib.suppress(KeyboardInterrupt):
    asyncio.run(main())
"""


class BenchError(Exception):
    """The benchmark saw something it does not expect; the run fails."""


# -- throughput ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One throughput run: messages the server's handler received, and in how long."""

    received: int
    seconds: float
    target: int

    @property
    def rate(self) -> float:
        return self.received / self.seconds

    @property
    def boxed(self) -> bool:
        return self.received < self.target


class Arrivals:
    """Counts messages at the server; resolves ``done`` (with the loop time) at ``target``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[float] = self._loop.create_future()

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.target and not self.done.done():
            self.done.set_result(self._loop.time())


async def _timed(send_all: Callable[[], Awaitable[None]], arrivals: Arrivals) -> Run:
    """Run ``send_all`` and time it until ``arrivals`` is complete, at most ``TIME_BOX``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    sender = asyncio.ensure_future(send_all())
    try:
        pending: set[asyncio.Future[Any]] = {arrivals.done, sender}
        while not arrivals.done.done():
            left = start + TIME_BOX - loop.time()
            if left <= 0:
                break
            _, pending = await asyncio.wait(pending, timeout=left,
                                            return_when=asyncio.FIRST_COMPLETED)
            if sender.done() and sender.exception() is not None:
                raise BenchError(f"sender failed: {sender.exception()!r}")
        end = arrivals.done.result() if arrivals.done.done() else loop.time()
        return Run(received=arrivals.count, seconds=end - start, target=arrivals.target)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


async def _send_window(link: Link, payload: Any) -> None:
    """``link.send(payload)``, first yielding to the loop while the outbox is full."""
    outbox = link.lifecycle.outbox
    while len(outbox) >= outbox.limit:
        await asyncio.sleep(0)
    await link.send(payload)


async def _tether_run(url: str, arrivals: Arrivals, payload: str, *, session: bool) -> Run:
    link = connect(url, session=session, backoff=BACKOFF, name="bench-session")
    async with link:
        await link.wait_for(State.ONLINE, timeout=START_LIMIT)

        async def send_all() -> None:
            for _ in range(arrivals.target):
                await _send_window(link, payload)

        run = await _timed(send_all, arrivals)
        if link.statistics()["reconnects"]:
            raise BenchError(f"{link.name} reconnected during a throughput run")
    return run


async def _plain_server_run(payload: str, *, tether: bool) -> Run:
    """A plain ``websockets`` server counting messages; raw websockets or tether plain."""
    arrivals = Arrivals(N)

    async def count(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                arrivals.hit()

    async with ws_serve(count, "127.0.0.1", 0, compression=None, ping_interval=None) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        if tether:
            return await _tether_run(url, arrivals, payload, session=False)
        async with ws_connect(url) as ws:

            async def send_all() -> None:
                for _ in range(N):
                    await ws.send(payload)

            return await _timed(send_all, arrivals)


async def _hub_run(payload: str, store: SessionStore) -> Run:
    """The reference hub on ``store``, its handler counting."""
    arrivals = Arrivals(N)

    def count(session: Session, data: Any) -> None:
        arrivals.hit()

    hub = await serve(count, "127.0.0.1", 0, store=store)
    async with hub:
        return await _tether_run(f"ws://127.0.0.1:{hub.port}", arrivals, payload, session=True)


async def throughput(tmp: Path, progress: Callable[[str], None]) -> dict[str, list[Run]]:
    payload = "".join(random.Random(1024).choices(string.ascii_letters, k=PAYLOAD_BYTES))
    counter = [0]

    async def sqlite_run(text: str) -> Run:
        counter[0] += 1
        store = SQLiteStore(tmp / f"throughput-{counter[0]}.sqlite")
        try:
            return await _hub_run(text, store)
        finally:
            await store.aclose()

    variants: dict[str, Callable[[str], Awaitable[Run]]] = {
        RAW: lambda text: _plain_server_run(text, tether=False),
        PLAIN: lambda text: _plain_server_run(text, tether=True),
        SESSION_MEMORY: lambda text: _hub_run(text, MemoryStore()),
        SESSION_SQLITE: sqlite_run,
    }
    results: dict[str, list[Run]] = {name: [] for name in variants}
    for round_ in range(ROUNDS):
        for name, run in variants.items():
            results[name].append(await run(payload))
        progress(f"  round {round_ + 1}/{ROUNDS}: " + ", ".join(
            f"{name} {results[name][-1].rate:,.0f}/s" for name in variants))
    return results


# -- faults -------------------------------------------------------------------------------------


class HubProcess:
    """The fault runs' hub: a subprocess, killed and restarted on the same port and file."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.db = directory / f"faults-{kind}.sqlite"
        self.log = directory / f"faults-{kind}.calls"
        self.stderr = directory / f"faults-{kind}.stderr"
        self.port = 0
        self.epochs: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> None:
        with self.stderr.open("ab") as errors:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", HUB, self.kind, str(self.db), str(self.log),
                str(self.port), cwd=ROOT, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=errors)
        self._proc = proc
        assert proc.stdout is not None
        try:
            line = (await asyncio.wait_for(proc.stdout.readline(), START_LIMIT)).decode()
        except TimeoutError:
            line = ""
        words = line.split()
        if len(words) != 3 or words[0] != "listening" or not words[1].isdigit():
            await self.kill()
            raise BenchError(f"{self.kind} hub did not start (printed {line!r}; stderr in "
                             f"{self.stderr}: {self.stderr.read_text()[-500:]!r})")
        self.port = int(words[1])
        self.epochs.append(words[2])

    async def kill(self, sig: int = signal.SIGKILL) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def stop(self) -> None:
        """Graceful (SIGINT): the hub closes its store."""
        await self.kill(signal.SIGINT)


@dataclass
class Faults:
    """One fault run, as measured at the hub's handler and at the client."""

    kind: str
    seconds: float = 0.0
    lost: list[int] = field(default_factory=list)
    duplicated: int = 0  #: extra deliveries (records with SQLite, calls with memory)
    calls: int = 0  #: handler calls (the log), at-least-once
    records: int | None = None  #: rows committed with deliveries (SQLite only)
    in_order: bool | None = None  #: the rows are in id order (SQLite only)
    rebuilds: int = 0
    rebuild_epochs: int = 0
    hub_epochs: int = 0
    reconnects: int = 0
    attempts: int = 0
    kills: list[tuple[int, int]] = field(default_factory=list)  #: (sent, held) at each
    undelivered: int = 0  #: handed back by close()
    hub_stderr_lines: int = 0

    @property
    def held_at_kills(self) -> list[int]:
        """Messages the client held unacknowledged at each kill."""
        return [held for _, held in self.kills]


async def _run_faults(kind: str, directory: Path) -> Faults:
    loop = asyncio.get_running_loop()
    result = Faults(kind)
    hub = HubProcess(kind, directory)
    await hub.start()
    epochs: list[str | None] = []

    async def count_rebuild(link: Link) -> None:
        epochs.append(link.lifecycle.epoch)

    rng = random.Random(SEED + len(kind))
    killer: asyncio.Task[None] | None = None

    async def kill_and_restart(delay: float) -> None:
        """SIGKILL the hub ``delay`` s from now, restart it, and return once the link has
        reconnected to the new one (so that no kill hits a hub the client never saw)."""
        await asyncio.sleep(delay)
        outbox = link.lifecycle.outbox
        result.kills.append((outbox.next_seq - 1, len(outbox)))
        before = link.statistics()["reconnects"]
        await hub.kill()
        await hub.start()
        deadline = loop.time() + START_LIMIT
        while link.statistics()["reconnects"] == before:
            if loop.time() > deadline:
                raise BenchError(f"{kind}: no reconnect {START_LIMIT} s after the hub "
                                 f"restarted; link {link.state} ({link.reason})")
            await asyncio.sleep(0.002)

    def next_kill() -> asyncio.Task[None]:
        return asyncio.ensure_future(kill_and_restart(rng.uniform(0.0, KILL_DELAY)))

    link = connect(hub.url, session=True, on_rebuild=count_rebuild, backoff=BACKOFF,
                   name=f"bench-faults-{kind}")
    try:
        await link.start()
        await link.wait_for(State.ONLINE, timeout=START_LIMIT)
        outbox = link.lifecycle.outbox
        marks = [round(FAULT_MESSAGES * k / (KILLS + 1)) for k in range(1, KILLS + 1)]
        started_kills = 0
        start = loop.time()
        for ident in range(1, FAULT_MESSAGES + 1):
            while len(outbox) >= WINDOW:
                await asyncio.sleep(0.001)
            await link.send({"id": ident})
            await asyncio.sleep(0)  # a kill that is due runs now, not a window later
            if killer is not None and killer.done():
                killer.result()  # a hub that did not come back fails the run now
            if started_kills < KILLS and ident >= marks[started_kills] and \
                    (killer is None or killer.done()):
                killer = next_kill()
                started_kills += 1
        while started_kills < KILLS:  # only if the stream outran the restarts
            assert killer is not None
            await killer
            killer = next_kill()
            started_kills += 1
        if killer is not None:
            await killer
        deadline = loop.time() + SETTLE_LIMIT
        while len(outbox):
            if loop.time() > deadline:
                raise BenchError(f"{kind}: {len(outbox)} messages still unacknowledged "
                                 f"{SETTLE_LIMIT} s after the last send; link "
                                 f"{link.state} ({link.reason})")
            await asyncio.sleep(0.002)
        result.seconds = loop.time() - start
        stats = link.statistics()
        result.reconnects, result.attempts = stats["reconnects"], stats["attempts"]
    finally:
        result.undelivered = len(await link.close())
        if killer is not None:
            killer.cancel()
            await asyncio.gather(killer, return_exceptions=True)
        await hub.stop()

    result.rebuilds, result.rebuild_epochs = len(epochs), len(set(epochs))
    result.hub_epochs = len(set(hub.epochs))
    calls = [int(line) for line in hub.log.read_text().split()]
    result.calls = len(calls)
    if kind == "sqlite":
        with contextlib.closing(sqlite3.connect(hub.db)) as db:
            delivered = [int(row[0]) for row in
                         db.execute("SELECT id FROM received ORDER BY rowid")]
        result.records = len(delivered)
        result.in_order = delivered == sorted(delivered)
    else:
        delivered = calls
    seen = Counter(delivered)
    result.lost = [i for i in range(1, FAULT_MESSAGES + 1) if i not in seen]
    result.duplicated = sum(n - 1 for n in seen.values() if n > 1)
    strange = set(seen) - set(range(1, FAULT_MESSAGES + 1))
    if strange:
        raise BenchError(f"{kind}: the handler saw ids never sent: {sorted(strange)[:10]}")
    text = hub.stderr.read_text() if hub.stderr.exists() else ""
    result.hub_stderr_lines = len(text.splitlines())
    return result


# -- running and reporting -----------------------------------------------------------------------


class _Collect(logging.Handler):
    """Keeps tether's warnings and errors, so they are counted instead of printed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _collect_tether_logs() -> Iterator[_Collect]:
    tether = logging.getLogger("tether")
    handler = _Collect()
    tether.addHandler(handler)
    try:
        yield handler
    finally:
        tether.removeHandler(handler)


def _filesystem(path: Path) -> str:
    """The type of the filesystem holding ``path`` (from /proc/mounts), or "?"."""
    best, kind = "", "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 3 and str(path).startswith(fields[1]) and \
                    len(fields[1]) > len(best):
                best, kind = fields[1], fields[2]
    return kind


def _row(label: str, *cells: str) -> str:
    return f"  {label:<30}" + "".join(f"{cell:>13}" for cell in cells)


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x"


def _report_throughput(results: dict[str, list[Run]]) -> None:
    print(f"Throughput, {PAYLOAD_BYTES:,} B text messages on loopback, N = {N:,} per run, "
          f"median of {ROUNDS} runs, variants interleaved")
    print(_row("variant", "msgs/s", "min", "max", "MB/s", "vs raw", "time"))
    base = statistics.median(run.rate for run in results[RAW])
    for name, runs in results.items():
        rates = [run.rate for run in runs]
        median = statistics.median(rates)
        seconds = statistics.median(run.seconds for run in runs)
        boxed = [run for run in runs if run.boxed]
        note = (f"  time-boxed {TIME_BOX:g} s: {', '.join(f'{r.received:,}' for r in boxed)} "
                f"of {N:,}" if boxed else "")
        print(_row(name, f"{median:,.0f}", f"{min(rates):,.0f}", f"{max(rates):,.0f}",
                   f"{median * PAYLOAD_BYTES / 1e6:,.2f}", _ratio(median, base),
                   f"{seconds:.3f} s") + note)
    memory = statistics.median(run.rate for run in results[SESSION_MEMORY])
    sqlite = statistics.median(run.rate for run in results[SESSION_SQLITE])
    plain = statistics.median(run.rate for run in results[PLAIN])
    print(f"  tether session (MemoryStore) / raw websockets: {_ratio(memory, base)}; "
          f"tether plain / raw: {_ratio(plain, base)}; session / plain: "
          f"{_ratio(memory, plain)}")
    print(f"  tether session, SQLiteStore / MemoryStore: {_ratio(sqlite, memory)} "
          f"({1e6 / sqlite:,.0f} us per committed delivery)")
    print("  time: first send until the server's handler has the last message; server and "
          "client in one process, one loop")


STORES = {"sqlite": "SQLiteStore", "memory": "MemoryStore"}


def _report_faults(results: list[Faults]) -> None:
    print(f"Faults: {FAULT_MESSAGES:,} messages in session mode, at most {WINDOW} "
          f"unacknowledged, through {KILLS} SIGKILLs of the hub")
    print("(a subprocess restarted on the same port, and on the same file for SQLite)")
    print(_row("store", "lost", "duplicated", "rebuilds", "reconnects", "attempts", "time"))
    for faults in results:
        print(_row(STORES[faults.kind], f"{len(faults.lost)}", f"{faults.duplicated}",
                   f"{faults.rebuilds}", f"{faults.reconnects}", f"{faults.attempts}",
                   f"{faults.seconds:.2f} s"))
    print("  expected: SQLiteStore 0 lost, 0 duplicated, 1 rebuild (one epoch); MemoryStore "
          "0 lost, duplicates at most")
    print(f"  the messages held unacknowledged at the kills, {KILLS + 1} rebuilds (one per "
          f"epoch); {KILLS} reconnects each")
    for faults in results:
        name, pad = STORES[faults.kind], " " * len(STORES[faults.kind])
        if faults.kind == "sqlite":
            print(f"  {name}: measured by the rows session.record() committed with each "
                  f"delivery: {faults.records:,}, in id order: "
                  f"{'yes' if faults.in_order else 'NO'}")
            print(f"  {pad}  handler calls {faults.calls:,}: "
                  f"{faults.calls - (faults.records or 0)} made again after a kill cut "
                  f"their commit (calls at-least-once, records exactly once)")
        else:
            held = sum(faults.held_at_kills)
            print(f"  {name}: measured by the handler's call log (no transaction to join): "
                  f"{faults.calls:,} calls")
            print(f"  {pad}  duplicates {faults.duplicated} <= {held} held unacknowledged "
                  f"at the kills: {'yes' if faults.duplicated <= held else 'NO'}")
        print(f"  {pad}  kills at (messages sent, held unacknowledged): "
              + ", ".join(f"({sent}, {held})" for sent, held in faults.kills))
        print(f"  {pad}  epochs: {faults.rebuild_epochs} rebuilt for by the client, "
              f"{faults.hub_epochs} distinct over {KILLS + 1} hub processes; handed back "
              f"at close {faults.undelivered}; hub stderr lines {faults.hub_stderr_lines}")
        if faults.lost:
            print(f"  {pad}  LOST ids {faults.lost[:20]}"
                  f"{' ...' if len(faults.lost) > 20 else ''}")


def _verdicts(results: list[Faults]) -> list[str]:
    problems: list[str] = []
    for faults in results:
        expected_rebuilds = 1 if faults.kind == "sqlite" else KILLS + 1
        if faults.lost:
            problems.append(f"{faults.kind}: {len(faults.lost)} messages lost")
        if faults.kind == "sqlite" and faults.in_order is False:
            problems.append(f"{faults.kind}: deliveries out of order")
        if faults.kind == "sqlite" and faults.duplicated:
            problems.append(f"{faults.kind}: {faults.duplicated} duplicated deliveries")
        if faults.kind == "memory" and faults.duplicated > sum(faults.held_at_kills):
            problems.append(f"{faults.kind}: more duplicates than messages held at kills")
        if faults.rebuilds != expected_rebuilds:
            problems.append(f"{faults.kind}: {faults.rebuilds} rebuilds, expected "
                            f"{expected_rebuilds}")
        if faults.reconnects != KILLS:
            problems.append(f"{faults.kind}: {faults.reconnects} reconnects, expected {KILLS}")
    return problems


async def _run_all(tmp: Path, progress: Callable[[str], None]
                   ) -> tuple[dict[str, list[Run]], list[Faults]]:
    throughput_results = await throughput(tmp, progress)
    fault_results = []
    for kind in ("sqlite", "memory"):
        faults = await _run_faults(kind, tmp)
        fault_results.append(faults)
        progress(f"  faults, {kind}: {len(faults.lost)} lost, {faults.duplicated} duplicated, "
                 f"{faults.rebuilds} rebuilds, {faults.reconnects} reconnects, "
                 f"{faults.seconds:.2f} s")
    return throughput_results, fault_results


def main() -> int:
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-session-"))
    print(f"tether session benchmark: Python {platform.python_version()} "
          f"({platform.python_implementation()}, {sys.platform}), "
          f"websockets {importlib.metadata.version('websockets')}, "
          f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs")
    print(f"temporary files in {tmp} ({_filesystem(tmp)}); SQLiteStore synchronous=FULL "
          f"(WAL, fsync per commit)", flush=True)

    def progress(line: str) -> None:
        print(line, flush=True)

    try:
        with _collect_tether_logs() as logs:
            results, faults = asyncio.run(_run_all(tmp, progress))
    except BenchError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - started

    print()
    _report_throughput(results)
    print()
    _report_faults(faults)
    kills = [r for r in logs.records if "online -> stale" in r.getMessage()]
    others = Counter(f"{r.name} {r.levelname}: {r.getMessage()}" for r in logs.records
                     if r not in kills)
    print(f"  tether log records at WARNING or above: {len(kills)} 'online -> stale' (one per "
          f"kill: the link's report of the broken connection), {sum(others.values())} others")
    for text, count in others.most_common(5):
        print(f"    {count} x {text[:200]}")
    problems = _verdicts(faults)
    for problem in problems:
        print(f"UNEXPECTED: {problem}")
    print(f"total run time: {elapsed:.1f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
