"""Plain-mode WebSocket servers for the tests, in-process or as a subprocess.

Run one as a subprocess (a peer the tests can SIGKILL, SIGSTOP and restart)::

    python -m tests.servers --port N [--mode echo|studio|slam] [--token SECRET]

It prints ``listening PORT`` (flushed) once it accepts connections; ``--port 0`` picks a
free port and prints the one it got. Modes:

* ``echo``: sends every message back, as it came (text stays text).
* ``studio``: a studio answering pending user-input requests: a JSON message
  ``{"type": "ask", "id": X}`` is answered with ``{"reply_to": X, "text": "answer"}``;
  everything else is echoed.
* ``slam``: accepts the WebSocket handshake, then closes at once with code 1011 (an
  accept-then-drop server: the reconnect-storm trigger).

``--token SECRET`` rejects every handshake without the header
``Authorization: Bearer SECRET`` with HTTP 401, before the upgrade.

For the tests: :class:`ServerProcess` runs that subprocess (start on a given or free
port, ``kill()``/``stop()``/``cont()``, ``restart()`` on the same port, always cleaned
up); :class:`LoopbackServer` is the same server inside the test's event loop (the
conformance suite's echo server), which can stop listening and start again on its port;
:class:`RecordingDialer` is a :class:`~adapters.websocket.WebSocketDialer` that remembers
every dial and transport, so a test can check that none was left open.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State as ProtocolState

from adapters.websocket import DEFAULT_MAX_SIZE, WebSocketDialer, WebSocketTransport

__all__ = [
    "MODES",
    "LoopbackServer",
    "Mode",
    "RecordingDialer",
    "ServerProcess",
    "handler_for",
    "main",
    "serve_plain",
]

Mode = Literal["echo", "studio", "slam"]
MODES: tuple[Mode, ...] = ("echo", "studio", "slam")
Handler = Callable[[ServerConnection], Awaitable[None]]
ProcessRequest = Callable[[ServerConnection, Request], Response | None]

ANSWER = "answer"
SLAM_CODE = 1011
REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

log = logging.getLogger("tests.servers")


# -- the server ----------------------------------------------------------------------------


async def _echo(connection: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in connection:
            await connection.send(message)


def _ask_id(message: str | bytes) -> Any:
    """The id of an ``{"type": "ask", "id": X}`` message, or None for anything else."""
    if not isinstance(message, str):
        return None
    try:
        decoded = json.loads(message)
    except ValueError:
        return None
    if isinstance(decoded, dict) and decoded.get("type") == "ask" and "id" in decoded:
        return decoded["id"]
    return None


async def _studio(connection: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in connection:
            ask = _ask_id(message)
            if ask is None:
                await connection.send(message)
            else:
                await connection.send(json.dumps({"reply_to": ask, "text": ANSWER}))


async def _slam(connection: ServerConnection) -> None:
    await connection.close(SLAM_CODE, "accept-then-drop")


def handler_for(mode: Mode) -> Handler:
    """The connection handler of ``mode``."""
    handlers: dict[str, Handler] = {"echo": _echo, "studio": _studio, "slam": _slam}
    try:
        return handlers[mode]
    except KeyError:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}") from None


def _require_token(token: str) -> ProcessRequest:
    expected = f"Bearer {token}"

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Authorization") != expected:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token\n")
        return None

    return process_request


async def serve_plain(
    mode: Mode = "echo",
    *,
    host: str = HOST,
    port: int = 0,
    token: str | None = None,
    max_size: int | None = DEFAULT_MAX_SIZE,
) -> Server:
    """Start a plain-mode server; it owns no keepalive (the client's heartbeat decides)."""
    return await serve(
        handler_for(mode), host, port,
        process_request=_require_token(token) if token is not None else None,
        ping_interval=None, ping_timeout=None, max_size=max_size, close_timeout=1.0,
    )


def bound_port(server: Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


async def _run(args: argparse.Namespace) -> None:
    server = await serve_plain(args.mode, host=args.host, port=args.port, token=args.token)
    sys.stdout.write(f"listening {bound_port(server)}\n")
    sys.stdout.flush()
    async with server:
        await server.serve_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.servers",
                                     description="a plain-mode WebSocket test server")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--host", default=HOST)
    parser.add_argument("--mode", choices=MODES, default="echo")
    parser.add_argument("--token", default=None, help="require Authorization: Bearer TOKEN")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format=f"server[{os.getpid()}] %(name)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args))
    return 0


# -- the server as a subprocess --------------------------------------------------------------

_LIVE: dict[int, ServerProcess] = {}  # pid -> process not yet reaped, killed at exit


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_LIVE):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


class ServerProcess:
    """``python -m tests.servers`` in a subprocess, steered from the test's event loop.

    ``async with ServerProcess("echo") as server:`` starts it on a free port (or
    ``port=N``) and returns once it listens; on the way out it is killed and reaped,
    frozen or not. ``kill()`` is SIGKILL (sockets die with the process), ``stop()`` is
    SIGSTOP (a half-open peer: the kernel keeps the sockets and keeps ACKing, nothing
    answers), ``cont()`` is SIGCONT, ``restart()`` kills it if needed and starts a fresh
    one on the same port.
    """

    def __init__(self, mode: Mode = "echo", *, port: int = 0, token: str | None = None,
                 ready_timeout: float = 10.0) -> None:
        handler_for(mode)  # validates
        self.mode = mode
        self.port = port
        self.token = token
        self.ready_timeout = ready_timeout
        self.starts = 0
        self._process: asyncio.subprocess.Process | None = None

    def __repr__(self) -> str:
        return f"ServerProcess({self.mode!r}, port={self.port}, pid={self.pid})"

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Started and not yet reaped (a stopped process counts as running)."""
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Start the server and wait until it listens. On port N, retry while N is busy
        (a restart right after a kill) until ``ready_timeout``."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        deadline = time.monotonic() + self.ready_timeout
        while True:
            line = await self._spawn(deadline)
            if line.startswith(b"listening "):
                self.port = int(line.split()[1])
                self.starts += 1
                return
            returncode = await self._reap()
            if time.monotonic() >= deadline or self.port == 0:
                raise RuntimeError(f"server {self.mode} on port {self.port} did not start: "
                                   f"{line!r}, exit status {returncode}")
            await asyncio.sleep(0.05)  # the port may still be held: try again

    async def _spawn(self, deadline: float) -> bytes:
        command = [sys.executable, "-m", "tests.servers", "--port", str(self.port),
                   "--mode", self.mode]
        if self.token is not None:
            command += ["--token", self.token]
        process = await asyncio.create_subprocess_exec(
            *command, cwd=REPO, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE)
        self._process = process
        _LIVE[process.pid] = self
        assert process.stdout is not None
        try:
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                return await process.stdout.readline()
        except BaseException:
            await self._reap()
            raise

    def _signal(self, signum: int) -> None:
        if not self.running:
            raise RuntimeError(f"{self!r} is not running")
        assert self._process is not None
        self._process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL: the process dies at once; its sockets are closed by the kernel."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGSTOP: the process freezes; its sockets stay open and nothing answers."""
        self._signal(signal.SIGSTOP)

    def cont(self) -> None:
        """SIGCONT: a stopped process runs again."""
        self._signal(signal.SIGCONT)

    async def _reap(self) -> int | None:
        """Kill (if alive) and wait for the process; return its exit status."""
        process = self._process
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
        returncode = await process.wait()
        _LIVE.pop(process.pid, None)
        return returncode

    async def wait_dead(self) -> None:
        """Wait until a killed process is reaped (its port is then free again)."""
        process = self._process
        if process is not None:
            await process.wait()
            _LIVE.pop(process.pid, None)

    async def restart(self) -> None:
        """Kill the server if it still runs, and start a fresh one on the same port."""
        await self._reap()
        await self.start()

    async def aclose(self) -> None:
        await self._reap()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


# -- the server in the test's own event loop ---------------------------------------------------


class LoopbackServer:
    """:func:`serve_plain` on 127.0.0.1 in the running loop, with the controls the
    conformance suite's :class:`~tests.conformance.EchoFixture` needs.

    ``stop()`` only stops listening (dials are refused; open connections carry on);
    ``start()`` listens again on the same port. ``aclose()`` closes everything and waits
    for every connection handler to return.
    """

    def __init__(self, mode: Mode = "echo", *, token: str | None = None,
                 max_size: int | None = DEFAULT_MAX_SIZE) -> None:
        self.mode = mode
        self.token = token
        self.max_size = max_size
        self.port = 0
        self._current: Server | None = None
        self._servers: list[Server] = []  # every server started, for their connections

    @property
    def url(self) -> str:
        return f"ws://{HOST}:{self.port}/"

    @property
    def connections(self) -> list[ServerConnection]:
        """Connections not yet closed, on this and earlier listeners."""
        return [c for server in self._servers for c in server.all_connections
                if c.state is not ProtocolState.CLOSED]

    async def start(self) -> None:
        if self._current is not None:
            return
        server = await serve_plain(self.mode, port=self.port, token=self.token,
                                   max_size=self.max_size)
        self.port = bound_port(server)
        self._current = server
        self._servers.append(server)

    async def stop(self) -> None:
        if self._current is not None:
            self._current.server.close()  # the listening socket only
            self._current = None

    async def close_all(self, code: int, reason: str = "") -> None:
        connections = [c for s in self._servers for c in s.connections]
        await asyncio.gather(*(c.close(code, reason) for c in connections))

    async def aclose(self) -> None:
        self._current = None
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


# -- the client side's bookkeeping ----------------------------------------------------------


class RecordingDialer(WebSocketDialer):
    """A :class:`WebSocketDialer` that remembers when it dialed and what it opened."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.dials: list[float] = []  # loop time of each dial
        self.headers: list[dict[str, str]] = []
        self.transports: list[WebSocketTransport] = []

    async def dial(self, headers: Mapping[str, str]) -> WebSocketTransport:
        self.dials.append(asyncio.get_running_loop().time())
        self.headers.append(dict(headers))
        transport = await super().dial(headers)
        self.transports.append(transport)
        return transport

    @property
    def open_transports(self) -> list[WebSocketTransport]:
        """Transports not closed, or whose socket is still open underneath."""
        return [t for t in self.transports if not t.closed or not _socket_closing(t)]


def _socket_closing(transport: WebSocketTransport) -> bool:
    closing: bool = transport._ws.transport.is_closing()
    return closing


if __name__ == "__main__":
    sys.exit(main())
