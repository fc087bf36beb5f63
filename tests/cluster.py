"""Pieces for the many-hubs tests and bench: a hub program on a Redis store that can be
SIGKILLed, and a round-robin TCP balancer in front of several hubs.

``python -m tests.cluster --port N --redis URL [--log PATH.jsonl]`` runs an echo hub on
a :class:`~adapters.stores.RedisStore`. Its handler appends every call to the log as
``[node, epoch, session, data]`` (one line, written at once: it survives SIGKILL) and
echoes ``data``; a message ``{"to": SID, "body": X}`` is relayed instead: the handler
calls ``hub.send(SID, X)`` (SID may be held by another hub), and the sender gets
``{"relayed": X}``. On standard input it takes ``push SID N TAG``: ``hub.send(SID,
{TAG: k})`` for k in 0..N-1 outside any handler, each awaited, answering ``pushed N``
or ``push failed: ERROR`` on standard output (``listening PORT`` comes first, then
``presence SID OLD NEW`` for every change it sees, its own and other hubs').
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adapters.hub import Hub, Session, serve
from fsm import Heartbeat

REPO = Path(__file__).resolve().parent.parent
#: The cluster tests' heartbeat: a silent client is stale within 0.6 s.
CLUSTER_HB = Heartbeat(interval=0.3, timeout=0.3)


async def _run_hub(args: argparse.Namespace) -> None:
    from adapters.stores.redis import RedisStore

    store = await RedisStore.connect(args.redis, liveness=args.liveness, timeout=0.5)
    log = open(args.log, "a", buffering=1, encoding="utf-8") if args.log else None  # noqa: SIM115
    hub: Hub | None = None

    def write(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def handler(session: Session, data: Any) -> None:
        if log is not None:
            log.write(json.dumps([store.node, store.epoch, session.id, data]) + "\n")
        if args.handler_delay:
            await asyncio.sleep(args.handler_delay)
        assert hub is not None
        if isinstance(data, dict) and "to" in data:
            hub.send(data["to"], data["body"])
            session.send({"relayed": data["body"]})
        else:
            session.send(data)

    async def commands() -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            words = line.decode().split()
            if len(words) == 4 and words[0] == "push":
                _, sid, count, tag = words
                assert hub is not None
                try:
                    for k in range(int(count)):
                        await hub.send(sid, {tag: k})
                except Exception as error:
                    write(f"push failed: {type(error).__name__}: {error}")
                else:
                    write(f"pushed {count}")

    try:
        hub = await serve(handler, port=args.port, store=store, heartbeat=CLUSTER_HB,
                          expire_after=args.expire_after)
        hub.on_presence(lambda sid, old, new: write(f"presence {sid} {old.value} {new.value}"))
        async with hub:
            write(f"listening {hub.port} {store.node}")
            await commands()
            await asyncio.Future()
    finally:
        await store.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster",
                                     description="an echo hub on Redis, for the cluster tests")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--log", default=None)
    parser.add_argument("--liveness", type=float, default=0.6)
    parser.add_argument("--expire-after", type=float, default=300.0)
    parser.add_argument("--handler-delay", type=float, default=0.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="hub %(name)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run_hub(args))
    return 0


class ClusterHub:
    """One hub of :func:`main` in a subprocess: ``start``, ``kill`` (SIGKILL),
    ``push(sid, n, tag)``, and the presence lines it printed (``presence``)."""

    def __init__(self, port: int, redis_url: str, *args: str) -> None:
        self.port, self.redis_url, self.args = port, redis_url, args
        self.process: asyncio.subprocess.Process | None = None
        self.node = ""
        self.presence: list[tuple[str, str, str]] = []
        self._answers: asyncio.Queue[str] = asyncio.Queue(maxsize=64)
        self._reader: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"ClusterHub(port={self.port}, node={self.node!r})"

    async def start(self) -> None:
        deadline = time.monotonic() + 8
        while True:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.cluster", "--port", str(self.port),
                "--redis", self.redis_url, *self.args, cwd=REPO,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
            self.process = process
            assert process.stdout is not None
            try:
                async with asyncio.timeout(8):
                    line = await process.stdout.readline()
            except BaseException:
                await self.kill()
                raise
            if line.startswith(b"listening "):
                self.node = line.split()[2].decode()
                self._reader = asyncio.create_task(self._read(process))
                return
            await self.kill()
            assert time.monotonic() < deadline, f"the hub did not start: {line!r}"
            await asyncio.sleep(0.05)

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := (await process.stdout.readline()).decode().strip():
            if line.startswith("presence "):
                _, sid, _, new = line.split()
                self.presence.append((sid, new, self.node))
            else:
                await self._answers.put(line)

    def presence_of(self, sid: str) -> list[str]:
        return [new for s, new, _ in self.presence if s == sid]

    async def push(self, sid: str, count: int, tag: str, timeout: float = 10.0) -> str:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(f"push {sid} {count} {tag}\n".encode())
        await self.process.stdin.drain()
        async with asyncio.timeout(timeout):
            return await self._answers.get()

    async def kill(self) -> None:
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        await process.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        self.process = None


class Balancer:
    """A round-robin TCP balancer on 127.0.0.1: each new connection goes to the next
    upstream that accepts it (a dead hub is skipped), bytes are piped both ways. What a
    load balancer in front of many hubs does, minus health checks."""

    def __init__(self, upstreams: Sequence[int]) -> None:
        self.upstreams = list(upstreams)
        self.port = 0
        self.routed: list[int] = []  # the upstream port of each connection, in order
        self._next = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Balancer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for _ in range(len(self.upstreams)):
            port = self.upstreams[self._next % len(self.upstreams)]
            self._next += 1
            try:
                upstream = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            self.routed.append(port)
            break
        if upstream is None:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        up_reader, up_writer = upstream
        self._writers.add(up_writer)
        pipes = [asyncio.create_task(self._pipe(reader, up_writer)),
                 asyncio.create_task(self._pipe(up_reader, writer))]
        self._tasks.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pipe in pipes:
                pipe.cancel()
                self._tasks.discard(pipe)
            for w in (writer, up_writer):
                w.transport.abort()
                self._writers.discard(w)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


if __name__ == "__main__":
    sys.exit(main())
