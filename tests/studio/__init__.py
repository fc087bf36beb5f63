"""The stand-in AgentScope Studio (``studio.js``, Node) as a subprocess the tests steer.

``studio.js`` runs the real ``socket.io`` 4 server and tRPC 11 (see its header for what it
keeps of the Studio). :class:`NodeStudio` starts it on a free port (or a given one),
kills it (SIGKILL: state kept on disk), terminates it (SIGTERM: the graceful shutdown
that runs every ``/python`` disconnect handler), freezes and thaws it (SIGSTOP/SIGCONT),
restarts it on the same port or, with the old port held busy, on another one, sends it
commands on stdin, and reads its state (``GET /_test/state``).

:data:`SKIP_REASON` is None when Node and the npm dependencies are there; tests that need
the stand-in skip with it otherwise (``make test`` installs the dependencies; CI installs
Node).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import httpx

__all__ = ["HERE", "SKIP_REASON", "NodeStudio", "hold_port"]

HERE = Path(__file__).resolve().parent
NODE = shutil.which("node")
HOST = "127.0.0.1"


def _skip_reason() -> str | None:
    if NODE is None:
        return ("Node.js is not installed: the stand-in Studio runs on node "
                "(apt-get install nodejs npm; .ci/run does it)")
    if not (HERE / "node_modules" / "socket.io").is_dir():
        return ("the stand-in Studio's npm dependencies are missing: run `make test` "
                "(npm ci in tests/studio)")
    return None


SKIP_REASON = _skip_reason()

_LIVE: dict[int, asyncio.subprocess.Process] = {}


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_LIVE):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def hold_port(port: int) -> Any:
    """Keep ``port`` busy (listening, never accepting) while the block runs."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind((HOST, port))
        holder.listen(1)
        yield holder


class NodeStudio:
    """``node studio.js`` steered from the test's event loop; always reaped."""

    def __init__(self, mode: Literal["studio", "echo"] = "studio", *, port: int = 0,
                 state: Path | None = None, port_file: Path | None = None,
                 fallback: bool = False, ping_interval: int | None = None,
                 ping_timeout: int | None = None, token: str | None = None,
                 ready_timeout: float = 15.0) -> None:
        self.mode = mode
        self.port = port
        self.state_file = state
        self.port_file = port_file
        self.fallback = fallback
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.token = token
        self.ready_timeout = ready_timeout
        self.starts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._lines: asyncio.Queue[str] = asyncio.Queue(256)
        self._reader: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"NodeStudio({self.mode!r}, port={self.port}, pid={self.pid})"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    def _command(self) -> list[str]:
        assert NODE is not None, SKIP_REASON
        command = [NODE, str(HERE / "studio.js"), "--port", str(self.port), "--mode", self.mode]
        if self.state_file is not None:
            command += ["--state", str(self.state_file)]
        if self.port_file is not None:
            command += ["--port-file", str(self.port_file)]
        if self.fallback:
            command.append("--fallback")
        if self.ping_interval is not None:
            command += ["--ping-interval", str(self.ping_interval)]
        if self.ping_timeout is not None:
            command += ["--ping-timeout", str(self.ping_timeout)]
        if self.token is not None:
            command += ["--token", self.token]
        return command

    async def start(self) -> None:
        """Start and wait until it listens; on a fixed port, retry while it is busy (a
        restart right after a kill) unless ``fallback`` lets it pick another."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        deadline = time.monotonic() + self.ready_timeout
        while True:
            line = await self._spawn(deadline)
            if line.startswith("listening "):
                self.port = int(line.split()[1])
                self.starts += 1
                return
            await self._reap()
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{self!r} did not start: {line!r}")
            await asyncio.sleep(0.05)

    async def _spawn(self, deadline: float) -> str:
        # STUDIO_TRACE=FILE: studio.js traces connects, disconnects, wipes, requests and
        # answers there (for debugging a scenario); otherwise its stderr goes nowhere.
        trace = os.environ.get("STUDIO_TRACE")
        with open(trace or os.devnull, "ab") as stderr:
            process = await asyncio.create_subprocess_exec(
                *self._command(), cwd=HERE, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=stderr)
        self._process = process
        _LIVE[process.pid] = process
        self._lines = asyncio.Queue(256)
        self._reader = asyncio.ensure_future(self._read(process))
        try:
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                return await self._lines.get()
        except BaseException:
            await self._reap()
            raise

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            await self._lines.put(line.decode().strip())  # bounded: stdout waits for us
        await self._lines.put("exited")

    async def command(self, line: str, timeout: float = 5.0) -> None:
        """Send a stdin command (see studio.js) and wait for its ``ok``."""
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write(line.encode() + b"\n")
        await self._process.stdin.drain()
        name = line.split(" ", 1)[0]
        async with asyncio.timeout(timeout):
            while (answer := await self._lines.get()) != f"ok {name}":
                if answer.startswith("error") or answer == "exited":
                    raise RuntimeError(f"{self!r}: {line!r} -> {answer!r}")

    async def expect(self, prefix: str, timeout: float = 5.0) -> str:
        """The next stdout line starting with ``prefix`` (others are skipped)."""
        async with asyncio.timeout(timeout):
            while not (line := await self._lines.get()).startswith(prefix):
                if line == "exited":
                    raise RuntimeError(f"{self!r} exited while we waited for {prefix!r}")
        return line

    def _signal(self, signum: int) -> None:
        if not self.running:
            raise RuntimeError(f"{self!r} is not running")
        assert self._process is not None
        self._process.send_signal(signum)

    async def kill(self) -> None:
        """SIGKILL, reaped: no handler runs; the state on disk is kept."""
        self._signal(signal.SIGKILL)
        await self._reap()

    async def terminate(self) -> None:
        """SIGTERM, reaped: the graceful shutdown, every /python disconnect handler runs."""
        self._signal(signal.SIGTERM)
        assert self._process is not None
        try:
            async with asyncio.timeout(5):
                await self._process.wait()
        finally:
            await self._reap()

    def freeze(self) -> None:
        """SIGSTOP: the sockets stay open, nothing answers (not even WebSocket pings)."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    async def restart(self, *, port: int | None = None) -> None:
        """Kill it if it runs, start a fresh one (on ``port`` if given, else the same)."""
        await self._reap()
        if port is not None:
            self.port = port
        await self.start()

    async def _reap(self) -> None:
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
                process.send_signal(signal.SIGCONT)
        await process.wait()
        _LIVE.pop(process.pid, None)
        if self._reader is not None:
            with contextlib.suppress(BaseException):
                await self._reader
            self._reader = None
        if process.stdin is not None:
            process.stdin.close()

    async def state(self) -> dict[str, Any]:
        """The stand-in's state: runs, inputRequests, messages, calls, connected runs."""
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.get(f"{self.url}/_test/state")
            response.raise_for_status()
            state: dict[str, Any] = json.loads(response.text)
            return state

    async def aclose(self) -> None:
        await self._reap()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
