"""Benchmark: how long until a frozen (half-open) peer is noticed, tether against websockets.

Run it with ``.venv/bin/python -m tests.bench_detect`` (about two and a half minutes;
``--trials N`` and ``--seed S`` change the defaults). Every figure in the table is
measured in the same run; nothing is quoted from elsewhere.

The peer is a real server process: a tiny ``websockets`` echo server started with
``python -c`` for each trial, which sends nothing of its own (no keepalive) and only
answers pings. The client connects, lets the link run healthy for ``SETTLE`` s plus a
uniform random draw in ``[0, interval)``, so that the freeze falls at a random phase of
the ping schedule, and then freezes the server with ``SIGSTOP``. The draw is seeded and
shared by the three variants of a round, so their trials are paired. A stopped process is a
half-open peer: its kernel keeps the TCP connection open and ACKs everything the client
writes (pings, a close frame), but nothing ever comes back. After detection the server
is resumed (``SIGCONT``) and terminated, and the next trial gets a fresh one. The three
variants take turns within each round, so that a change in the machine's load hits them
all alike. Settings: ``interval`` = ``timeout`` = 1 s everywhere.

* **tether**: ``connect(url, heartbeat=Heartbeat(interval=1.0, timeout=1.0), ...)`` in
  plain mode. Detection is the moment the link's state becomes ``stale``
  (``link.on_state_change``). The heartbeat bounds it by ``interval + timeout`` = 2 s
  after the last frame heard; the server only answers probes, so the last frame heard is
  the last pong, read from ``link.lifecycle.last_heard``. Measured from the freeze it
  lies between ~1 and ~2 s, depending on the phase.
* **websockets**: ``websockets.asyncio.client.connect(url, ping_interval=1.0,
  ping_timeout=1.0)``, with the default ``close_timeout`` (10 s) and with
  ``close_timeout=0.5``. Detection is the moment a pending ``recv()`` raises
  ``ConnectionClosed``. Its keepalive sends a ping ``interval`` after the previous pong,
  fails the connection ``timeout`` later, sends a close frame and waits ``close_timeout``
  for a closing handshake the frozen peer never answers before it aborts. The last pong
  is timestamped by a ``ClientConnection`` subclass (``create_connection=``) that wraps
  ``acknowledge_pings``; the keepalive itself is untouched.

Columns: "from the freeze" is from just before ``os.kill(pid, SIGSTOP)`` to detection;
"from the last pong" is from the last frame the client heard to detection (a pong in
flight at the freeze can land just after it). Times are ``loop.time()`` (monotonic);
the server's stop is confirmed in ``/proc/<pid>/stat`` (state ``T``) where available.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import logging
import math
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from adapters.websocket import connect
from fsm import Backoff, Heartbeat, State
from fsm.actions import StateChange

INTERVAL = 1.0  #: s, heartbeat interval / ping_interval
TIMEOUT = 1.0  #: s, heartbeat timeout / ping_timeout
TRIALS = 7  #: per variant
SEED = 20_240_501
SETTLE = 1.5  #: s of healthy link before the random phase (at least one pong heard)
SHORT_CLOSE = 0.5  #: s, the shortened close_timeout variant
DETECT_LIMIT = 30.0  #: s; a trial that has not detected the freeze by then fails
START_LIMIT = 10.0  #: s for the server to start and the client to connect

#: The frozen peer: echoes messages, never pings, answers pings (websockets does that
#: itself), prints its port once listening, and exits when its stdin closes.
SERVER = """\
import asyncio, sys
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

async def echo(ws):
    try:
        async for message in ws:
            await ws.send(message)
    except ConnectionClosed:
        pass

async def main():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: done.done() or done.set_result(None))
    async with serve(echo, "127.0.0.1", 0, ping_interval=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await done

asyncio.run(main())
"""

TETHER = "tether connect()"
WS_SHORT = "websockets, close_timeout=0.5 s"
WS_DEFAULT = "websockets, close_timeout default"  #: labelled with the value it had


class BenchError(Exception):
    """A trial did not behave as the benchmark expects; the run fails."""


@dataclass(frozen=True)
class Trial:
    detect: float  #: s from the freeze to detection
    since_heard: float  #: s from the last frame heard (the last pong) to detection
    phase: float  #: s from the last frame heard to the freeze
    stop_lag: float  #: s from kill(SIGSTOP) to the process seen stopped; nan if unknown
    detail: str  #: how it was detected (the STALE reason, the close codes)
    close_timeout: float | None = None  #: websockets: the connection's close_timeout


# -- the frozen server -------------------------------------------------------------------------


class FrozenServer:
    """One echo server process for one trial: ``freeze()``, ``thaw()``, then closed."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.close()
            raise BenchError(f"echo server did not start (printed {line!r})")
        self.port = int(line)
        self.frozen = False

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def freeze(self) -> tuple[float, float]:
        """SIGSTOP the server; returns (loop time just before the signal, stop lag in s)."""
        loop = asyncio.get_running_loop()
        at = loop.time()
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True
        return at, self._stop_lag(at, loop)

    def _stop_lag(self, at: float, loop: asyncio.AbstractEventLoop) -> float:
        stat = Path(f"/proc/{self.proc.pid}/stat")
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:  # blocks the loop for well under 1 ms
            try:
                state = stat.read_text().rpartition(")")[2].split()[0]
            except (OSError, IndexError):
                return math.nan
            if state in ("T", "t"):
                return loop.time() - at
            time.sleep(0.0001)
        raise BenchError(f"server {self.proc.pid} not stopped 0.2 s after SIGSTOP")

    def thaw(self) -> None:
        if self.frozen and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def close(self) -> None:
        self.thaw()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(2.0)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# -- one trial per variant ---------------------------------------------------------------------


async def tether_trial(delay: float) -> Trial:
    """tether plain mode: freeze, then time until the link's state becomes STALE."""
    loop = asyncio.get_running_loop()
    with FrozenServer() as server:
        stale: asyncio.Future[tuple[float, float, str]] = loop.create_future()
        # Backoff: the frozen server would only make the redial hang; keep it late.
        link = connect(server.url, heartbeat=Heartbeat(interval=INTERVAL, timeout=TIMEOUT),
                       backoff=Backoff(initial=5.0, cap=5.0), name="bench-detect")

        def changed(change: StateChange) -> None:
            if change.new == State.STALE and not stale.done():
                stale.set_result((loop.time(), link.lifecycle.last_heard, change.reason))

        link.on_state_change(changed)
        async with link:
            await link.wait_for(State.ONLINE, timeout=START_LIMIT)
            await asyncio.sleep(delay)
            if stale.done():
                raise BenchError(f"tether went stale before the freeze: {link.reason}")
            heard_before = link.lifecycle.last_heard
            frozen_at, lag = server.freeze()
            try:
                detected_at, heard, reason = await asyncio.wait_for(stale, DETECT_LIMIT)
            except TimeoutError:
                raise BenchError(f"tether: no STALE {DETECT_LIMIT} s after the freeze; "
                                 f"state {link.state} ({link.reason})") from None
            finally:
                server.thaw()
        if not reason.startswith("no frame from the peer"):
            raise BenchError(f"tether went stale for another reason: {reason}")
        return Trial(detect=detected_at - frozen_at, since_heard=detected_at - heard,
                     phase=frozen_at - heard_before, stop_lag=lag, detail=reason)


class TimedConnection(ClientConnection):
    """websockets' client connection, plus the loop time of the last pong that
    acknowledged a ping; the keepalive is websockets' own, unchanged."""

    last_pong = math.nan

    def acknowledge_pings(self, data: bytes) -> None:
        pending = len(self.pending_pings)
        super().acknowledge_pings(data)
        if len(self.pending_pings) < pending:
            self.last_pong = self.loop.time()


async def _until_closed(ws: ClientConnection) -> tuple[float, ConnectionClosed]:
    """recv() until it raises; the loop time it raised at, and the exception."""
    while True:
        try:
            await ws.recv()
        except ConnectionClosed as error:
            return asyncio.get_running_loop().time(), error


async def websockets_trial(delay: float, close_timeout: float | None) -> Trial:
    """websockets' keepalive: freeze, then time until a pending recv() raises.
    ``close_timeout`` None keeps websockets' default."""
    options: dict[str, Any] = {} if close_timeout is None else {"close_timeout": close_timeout}
    with FrozenServer() as server:
        ws = await asyncio.wait_for(
            ws_connect(server.url, ping_interval=INTERVAL, ping_timeout=TIMEOUT,
                       create_connection=TimedConnection, **options),
            START_LIMIT,
        )
        assert isinstance(ws, TimedConnection)
        reader = asyncio.ensure_future(_until_closed(ws))
        try:
            await asyncio.sleep(delay)
            if reader.done():
                raise BenchError(f"websockets closed before the freeze: {reader.result()[1]}")
            heard_before = ws.last_pong
            frozen_at, lag = server.freeze()
            try:
                detected_at, error = await asyncio.wait_for(asyncio.shield(reader),
                                                            DETECT_LIMIT)
            except TimeoutError:
                raise BenchError(f"websockets: recv() still waiting {DETECT_LIMIT} s after "
                                 f"the freeze") from None
            finally:
                server.thaw()
        finally:
            reader.cancel()
            await ws.close()
            await asyncio.gather(reader, return_exceptions=True)
        if error.sent is None or error.sent.code != 1011:
            raise BenchError(f"websockets closed for another reason: {error}")
        return Trial(detect=detected_at - frozen_at, since_heard=detected_at - ws.last_pong,
                     phase=frozen_at - heard_before, stop_lag=lag, detail=str(error),
                     close_timeout=ws.close_timeout)


# -- running and reporting ---------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_tether_logs() -> Iterator[None]:
    """The link logs STALE as a warning; with logging unconfigured Python's last-resort
    handler would print one line per trial into the table. Silence it for the run."""
    tether = logging.getLogger("tether")
    handler = logging.NullHandler()
    unconfigured = not logging.getLogger().handlers
    if unconfigured:
        tether.addHandler(handler)
    try:
        yield
    finally:
        if unconfigured:
            tether.removeHandler(handler)


async def run(trials: int, rng: random.Random,
              progress: Callable[[str], None]) -> dict[str, list[Trial]]:
    """``trials`` rounds; in each, every variant once, in turn, each with a fresh server,
    all three frozen after the same delay (one random draw per round: paired trials)."""
    variants: dict[str, Callable[[float], Awaitable[Trial]]] = {
        TETHER: tether_trial,
        WS_SHORT: lambda delay: websockets_trial(delay, SHORT_CLOSE),
        WS_DEFAULT: lambda delay: websockets_trial(delay, None),
    }
    results: dict[str, list[Trial]] = {name: [] for name in variants}
    for round_ in range(trials):
        delay = SETTLE + rng.uniform(0.0, INTERVAL)
        for name, trial in variants.items():
            results[name].append(await trial(delay))
        progress(f"  round {round_ + 1}/{trials}, freeze {delay:.3f} s after connecting; "
                 "detected after " + ", ".join(
                     f"{results[name][-1].detect:.2f} s" for name in variants))
    default = results.pop(WS_DEFAULT)
    results[f"websockets, close_timeout={default[0].close_timeout:g} s (default)"] = default
    return results


def _row(label: str, *cells: str) -> str:
    return f"  {label:<42}" + "".join(f"{cell:>11}" for cell in cells)


def _seconds(value: float) -> str:
    return f"{value:.3f} s"


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x"


def _table(title: str, results: dict[str, list[Trial]],
           pick: Callable[[Trial], float]) -> None:
    print(title)
    print(_row("", "", "", "", "--------", "vs tether", "--------"))
    print(_row("variant", "median", "min", "max", "median", "min", "max"))
    base = [pick(t) for t in results[TETHER]]
    for name, trials in results.items():
        values = [pick(t) for t in trials]
        print(_row(name, _seconds(statistics.median(values)), _seconds(min(values)),
                   _seconds(max(values)),
                   _ratio(statistics.median(values), statistics.median(base)),
                   _ratio(min(values), min(base)), _ratio(max(values), max(base))))


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench_detect",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=TRIALS, help="trials per variant")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the freeze phases")
    args = parser.parse_args(list(argv))
    if args.trials < 1:
        parser.error("--trials must be at least 1")

    started = time.monotonic()
    rng = random.Random(args.seed)
    print(f"tether frozen-peer benchmark: Python {platform.python_version()} "
          f"({platform.python_implementation()}, {sys.platform}), "
          f"websockets {importlib.metadata.version('websockets')}, {os.cpu_count()} CPUs")
    print(f"interval {INTERVAL:g} s, timeout {TIMEOUT:g} s; {args.trials} trials per variant, "
          f"variants in turn; server frozen with SIGSTOP {SETTLE:g} s + U[0, {INTERVAL:g}) s "
          f"after connecting, one draw per round for all variants (seed {args.seed})",
          flush=True)

    def progress(line: str) -> None:
        print(line, flush=True)

    try:
        with _quiet_tether_logs():
            results = asyncio.run(run(args.trials, rng, progress))
    except BenchError as error:
        print(f"FAILED: {error}", file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started

    print()
    _table("Detection time from the freeze (SIGSTOP) to detection", results,
           lambda t: t.detect)
    print()
    _table("Detection time from the last pong heard to detection", results,
           lambda t: t.since_heard)
    print()
    tether = results[TETHER]
    bound = INTERVAL + TIMEOUT
    over = max(t.since_heard for t in tether) - bound
    print(f"  tether: STALE at most {over * 1e3:.1f} ms past its bound interval + timeout = "
          f"{bound:g} s after the last pong")
    phases = [t.phase for trials in results.values() for t in trials]
    print(f"  freeze phase (last pong to SIGSTOP): {min(phases):.3f} .. {max(phases):.3f} s")
    lags = [t.stop_lag for trials in results.values() for t in trials
            if not math.isnan(t.stop_lag)]
    if lags:
        print(f"  server seen stopped (/proc state T) at most {max(lags) * 1e3:.2f} ms "
              f"after kill(SIGSTOP)")
    for name, trials in results.items():
        if name != TETHER:
            ratios = [w.detect / t.detect for w, t in zip(trials, tether, strict=True)]
            print(f"  paired per round, from the freeze, {name} / tether: median "
                  f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}x .. {max(ratios):.2f}x)")
    print(f"  tether detected by: {tether[0].detail}")
    print(f"  websockets detected by: {results[WS_SHORT][0].detail}")
    print(f"total run time: {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
