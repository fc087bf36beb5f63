"""A TCP fault proxy for tests with real sockets on loopback.

``FaultProxy`` listens on a local port and forwards every accepted connection
to one upstream ``(host, port)``, through faults that can be switched on and
off at any time, while connections are open; a fault applies to the open
connections and to the new ones.  The vocabulary is Toxiproxy's: ``latency``,
``bandwidth``, ``timeout`` (``blackhole`` is ``timeout(0)``), ``reset_peer``,
``slicer``, ``limit_data``, plus ``down``/``up`` (a disabled proxy) and
``clear``.  Directions: "upstream" is client to server, "downstream" server to
client, "both" is both.  Randomness (jitter, slice sizes) comes from an injected
``random.Random``, so a seeded test is reproducible.

What it cannot simulate: the proxy ends TCP on both sides, so each peer's
kernel talks to the proxy's kernel on loopback: ACKs, windows, RTT estimates,
retransmissions and keepalives are loopback's, never the faulty link's.  No
packet is lost, duplicated or reordered; a black hole still completes the TCP
handshake; a host that vanishes (no FIN, no RST, SYNs unanswered), NAT or
firewall idle timeouts, MTU trouble and IP changes are beyond it.  It needs a
selector event loop (POSIX).  ``main`` is the ``tether proxy`` command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import socket
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self, cast

log = logging.getLogger("tether.proxy")

Direction = Literal["upstream", "downstream", "both"]
_Close = Literal["graceful", "abort", "reset"]
_DIRECTIONS = ("upstream", "downstream")
_CHUNK = 65536


@dataclass(frozen=True)
class ProxyStats:
    """Counters since start: connections accepted and open now, bytes forwarded each way."""

    accepted: int
    open: int
    bytes_up: int
    bytes_down: int


@dataclass
class _Link:
    """The faults of one direction."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    kb_per_s: float | None = None
    slicer: tuple[int, int, int] | None = None  # average size, variation, delay in µs
    limit: int | None = None


class _Conn:
    """One client connection and its upstream connection, handled by one task."""

    def __init__(self, task: asyncio.Task[None], client: asyncio.StreamWriter) -> None:
        self.task = task
        self.writers = {"downstream": client}  # the writer that data of a direction goes to
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.sent = dict.fromkeys(_DIRECTIONS, 0)  # bytes since limit_data() was called
        self.free_at = dict.fromkeys(_DIRECTIONS, 0.0)  # bandwidth: when the link is free
        self.closing = False

    def close(self, how: _Close = "graceful") -> None:
        """Close both sockets (FIN, abort, or RST via SO_LINGER 0) and stop the task."""
        if self.closing:
            return
        self.closing = True
        for timer in self.timers.values():
            timer.cancel()
        for writer in self.writers.values():
            sock = writer.get_extra_info("socket")
            if how == "reset" and sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            if how == "graceful":
                writer.close()
            else:
                writer.transport.abort()
        if self.task is not asyncio.current_task():
            self.task.cancel()


class FaultProxy:
    """Forward connections from ``listen`` to ``upstream`` through switchable faults."""

    def __init__(
        self, upstream: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0), *,
        rng: random.Random | None = None,
    ) -> None:
        self.upstream = upstream
        self._host, self._port = listen
        self._rng = rng if rng is not None else random.Random()
        self._links = {d: _Link() for d in _DIRECTIONS}
        self._flowing = asyncio.Event()  # cleared while data is held (timeout, blackhole)
        self._flowing.set()
        self._timers: dict[str, tuple[float, _Close]] = {}  # "timeout"/"reset" -> (ms, how)
        self._down = False
        self._started = False
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._conns: set[_Conn] = set()
        self._accepted = 0
        self._bytes = dict.fromkeys(_DIRECTIONS, 0)

    @property
    def port(self) -> int:
        """The listening port (the one picked by the system once started with port 0)."""
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return self._host, self._port

    async def start(self) -> None:
        self._started = True
        if not self._down:
            self._listen()

    async def close(self) -> None:
        """Stop listening, abort every connection and wait for all of the proxy's tasks."""
        self._started = False
        self._unlisten()
        for conn in list(self._conns):
            conn.close("abort")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.sleep(0)  # let the transports' scheduled socket closes run
        log.info("proxy %s:%d closed", self._host, self._port)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def statistics(self) -> ProxyStats:
        up, down = self._bytes["upstream"], self._bytes["downstream"]
        return ProxyStats(self._accepted, len(self._conns), up, down)

    # -- faults -------------------------------------------------------------

    def latency(self, ms: float, jitter_ms: float = 0, direction: Direction = "both") -> None:
        """Deliver every chunk ``ms`` ± ``jitter_ms`` (uniform) after the proxy read it.

        Order is kept: a chunk never overtakes the one before it, so jitter bunches
        chunks rather than reordering them. Unrealistic: the delay is per read
        chunk, not per segment, and the sender's kernel gets its ACKs at once from
        the proxy's, so its TCP never sees the long round trip.
        """
        for d in self._directions(direction):
            self._links[d].latency_ms, self._links[d].jitter_ms = ms, jitter_ms
        log.info("latency %s ms ± %s ms (%s)", ms, jitter_ms, direction)

    def bandwidth(self, kb_per_s: float, direction: Direction = "both") -> None:
        """Pace each connection to ``kb_per_s`` (1 kB = 1000 bytes), writing ≤ 50 ms at a time.

        Unrealistic: the kernel buffers before the proxy absorb megabytes, so the
        sender's writes succeed long before the data could have crossed the link.
        """
        for d in self._directions(direction):
            self._links[d].kb_per_s = kb_per_s
        log.info("bandwidth %s kB/s (%s)", kb_per_s, direction)

    def timeout(self, ms: float = 0) -> None:
        """Stop forwarding data both ways; with ``ms`` > 0, close each connection (FIN) after ms.

        Data and EOF are held, not dropped (TCP is reliable): clearing the fault
        delivers them in order, as after a healed partition. ``ms`` = 0 leaves the
        connections open forever: a half-open peer. The timer runs from the call,
        or from the accept for new connections. Unrealistic: new connections still
        complete the handshake, the proxy's kernel keeps ACKing (so TCP keepalive
        and retransmission timeouts never fire), and the close after ``ms`` is a
        FIN a dead peer would never send.
        """
        self._flowing.clear()
        self._set_timer("timeout", ms or None, "graceful")
        log.info("timeout %s ms", ms)

    def blackhole(self) -> None:
        """``timeout(0)``: connections stay open and no data passes, until cleared."""
        self.timeout(0)

    def reset_peer(self, ms: float = 0) -> None:
        """Reset every connection (RST via SO_LINGER 0 to client and upstream) now or after ms.

        Stays on: new connections are reset ``ms`` after their accept. Unrealistic:
        both sides get the RST at once, from the proxy; a real one may reach only one.
        """
        self._set_timer("reset", ms, "reset")
        log.info("reset_peer after %s ms", ms)

    def slicer(
        self, avg_size: int, size_variation: int = 0, delay_us: int = 0,
        direction: Direction = "both",
    ) -> None:
        """Write chunks as pieces of ``avg_size`` ± ``size_variation`` bytes, ``delay_us`` apart.

        Bytes and order are never changed. Unrealistic: without a delay the
        receiver's kernel and a slow reader merge the pieces again.
        """
        for d in self._directions(direction):
            self._links[d].slicer = (max(1, avg_size), max(0, size_variation), max(0, delay_us))
        log.info("slicer %s ± %s bytes, %s µs (%s)", avg_size, size_variation, delay_us, direction)

    def limit_data(self, nbytes: int, direction: Direction = "both") -> None:
        """Close a connection (FIN) once ``nbytes`` were forwarded in a direction since this call.

        Each selected direction counts on its own. Unrealistic: the cut is exact
        and clean, where a real link dies mid-segment, usually without a FIN.
        """
        for d in self._directions(direction):
            self._links[d].limit = nbytes
            for conn in self._conns:
                conn.sent[d] = 0
        log.info("limit_data %d bytes (%s)", nbytes, direction)

    def down(self) -> None:
        """Switch the proxy off: stop listening (new connects are refused) and abort connections.

        Unrealistic: the refusal (RST to the SYN) comes at once, where a vanished
        host leaves SYNs unanswered. ``up()`` listens again on the same port.
        """
        self._down = True
        self._unlisten()
        for conn in list(self._conns):
            conn.close("abort")
        log.info("proxy down")

    def up(self) -> None:
        """Listen again after ``down()``; raises OSError if another socket took the port."""
        if self._down and self._started:
            self._listen()
        self._down = False
        log.info("proxy up")

    def clear(self) -> None:
        """Remove every fault except ``down`` (see ``up``), cancel pending timeouts and resets."""
        self._links = {d: _Link() for d in _DIRECTIONS}
        self._flowing.set()
        for kind in ("timeout", "reset"):
            self._set_timer(kind, None, "graceful")
        log.info("faults cleared")

    # -- internals ----------------------------------------------------------

    def _directions(self, direction: Direction) -> tuple[str, ...]:
        if direction not in ("upstream", "downstream", "both"):
            raise ValueError(f"direction must be upstream, downstream or both: {direction!r}")
        return _DIRECTIONS if direction == "both" else (direction,)

    def _set_timer(self, kind: str, ms: float | None, how: _Close) -> None:
        self._timers.pop(kind, None)
        if ms is not None:
            self._timers[kind] = (ms, how)
        for conn in self._conns:
            timer = conn.timers.pop(kind, None)
            if timer is not None:
                timer.cancel()
            self._arm(conn)

    def _arm(self, conn: _Conn) -> None:
        loop = asyncio.get_running_loop()
        for kind, (ms, how) in self._timers.items():
            if kind not in conn.timers:
                conn.timers[kind] = loop.call_later(ms / 1000, conn.close, how)

    def _listen(self) -> None:
        sock = socket.create_server((self._host, self._port))
        sock.setblocking(False)
        self._port = sock.getsockname()[1]
        self._listener = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)
        log.info("listening on %s:%d, upstream %s:%d", self._host, self._port, *self.upstream)

    def _unlisten(self) -> None:
        if self._listener is not None:
            asyncio.get_running_loop().remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, peer = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("accept failed: %s", exc)
            return
        self._accepted += 1
        log.debug("accepted %s", peer)
        task = asyncio.get_running_loop().create_task(self._serve(sock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, sock: socket.socket) -> None:
        try:
            sock.setblocking(False)
            client_r, client_w = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        task = asyncio.current_task()
        assert task is not None
        conn = _Conn(task, client_w)
        self._conns.add(conn)
        try:
            if self._down:  # accepted just before down()
                return
            try:
                upstream_r, conn.writers["upstream"] = await asyncio.open_connection(*self.upstream)
            except OSError as exc:
                log.warning("upstream %s:%d unreachable: %s", *self.upstream, exc)
                return
            self._arm(conn)
            async with asyncio.TaskGroup() as group:
                for d, reader in (("upstream", client_r), ("downstream", upstream_r)):
                    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(16)
                    group.create_task(self._read(conn, reader, queue, d))
                    group.create_task(self._write(conn, queue, d))
        finally:
            self._conns.discard(conn)
            conn.close()

    async def _read(
        self, conn: _Conn, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]],
        d: str,
    ) -> None:
        """Read chunks (b"" is EOF) and queue them with the time they are due."""
        while True:
            try:
                data = await reader.read(_CHUNK)
            except OSError:
                conn.close("abort")
                return
            link = self._links[d]
            delay = link.latency_ms
            if link.jitter_ms:
                delay += self._rng.uniform(-link.jitter_ms, link.jitter_ms)
            due = asyncio.get_running_loop().time() + max(delay, 0.0) / 1000
            await queue.put((due, data))
            if not data:
                return

    async def _write(self, conn: _Conn, queue: asyncio.Queue[tuple[float, bytes]], d: str) -> None:
        """Deliver queued chunks in order, when due and while data flows; pass EOF on."""
        loop = asyncio.get_running_loop()
        writer, last_due = conn.writers[d], 0.0
        while True:
            due, data = await queue.get()
            last_due = max(last_due, due)
            await asyncio.sleep(max(0.0, last_due - loop.time()))
            await self._flowing.wait()
            try:
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                await self._send(conn, writer, data, d)
            except OSError:
                conn.close("abort")
                return

    async def _send(self, conn: _Conn, writer: asyncio.StreamWriter, data: bytes, d: str) -> None:
        link, loop = self._links[d], asyncio.get_running_loop()
        cut = link.limit is not None and len(data) >= link.limit - conn.sent[d]
        if link.limit is not None:
            data = data[: max(0, link.limit - conn.sent[d])]
        for piece in self._pieces(data, link):
            await self._flowing.wait()
            link = self._links[d]  # clear() may have replaced it meanwhile
            if link.kb_per_s:
                now = loop.time()
                conn.free_at[d] = max(now, conn.free_at[d]) + len(piece) / (link.kb_per_s * 1000)
                await asyncio.sleep(conn.free_at[d] - now)
            writer.write(piece)
            await writer.drain()
            conn.sent[d] += len(piece)
            self._bytes[d] += len(piece)
            if link.slicer and link.slicer[2]:
                await asyncio.sleep(link.slicer[2] / 1e6)
        if cut:
            log.info("limit_data reached (%s): closing", d)
            conn.close()

    def _pieces(self, data: bytes, link: _Link) -> list[bytes]:
        pieces, i = [], 0
        while i < len(data):
            n = len(data) - i
            if link.slicer:
                avg, var, _ = link.slicer
                n = min(n, max(1, avg + self._rng.randint(-var, var)))
            if link.kb_per_s:
                n = min(n, max(1, int(link.kb_per_s * 50)))
            pieces.append(data[i : i + n])
            i += n
        return pieces


# -- command line -------------------------------------------------------------


def control(proxy: FaultProxy, line: str) -> str:
    """Apply one command line, e.g. "latency 200 [JITTER] [DIRECTION]"; return the reply.

    Commands: latency MS [JITTER], bandwidth KBPS, slicer AVG [VAR [US]], limit BYTES
    (each with an optional trailing direction), timeout MS, blackhole, reset [MS],
    clear, down, up, stats.
    """
    words = line.split()
    direction: Direction = "both"
    if words and words[-1] in ("upstream", "downstream", "both"):
        direction = cast(Direction, words.pop())
    cmd, args = (words[0], words[1:]) if words else ("", [])
    commands: dict[str, Callable[[list[float]], object]] = {
        "latency": lambda n: proxy.latency(n[0], ([*n, 0])[1], direction),
        "bandwidth": lambda n: proxy.bandwidth(n[0], direction),
        "slicer": lambda n: proxy.slicer(int(n[0]), int([*n, 0][1]), int([*n, 0, 0][2]), direction),
        "limit": lambda n: proxy.limit_data(int(n[0]), direction),
        "timeout": lambda n: proxy.timeout(n[0]),
        "blackhole": lambda n: proxy.blackhole(),
        "reset": lambda n: proxy.reset_peer([*n, 0][0]),
        "clear": lambda n: proxy.clear(),
        "down": lambda n: proxy.down(),
        "up": lambda n: proxy.up(),
    }
    if cmd == "stats":
        st = proxy.statistics()
        return f"stats {st.accepted} {st.open} {st.bytes_up} {st.bytes_down}"
    if cmd not in commands:
        return f"error unknown command {cmd!r}"
    try:
        commands[cmd]([float(a) for a in args])
    except (ValueError, IndexError, TypeError, OSError) as exc:
        return f"error {exc}"
    return f"ok {line.strip()}"


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def _run(args: argparse.Namespace) -> None:
    async with FaultProxy(args.upstream, args.listen) as proxy:
        if args.latency or args.jitter:
            proxy.latency(args.latency, args.jitter)
        if args.blackhole:
            proxy.blackhole()
        if args.down:
            proxy.down()
        sys.stdout.write(f"listening {proxy.address[0]}:{proxy.port}\n")
        sys.stdout.flush()
        if args.control == "stdin":
            loop, reader = asyncio.get_running_loop(), asyncio.StreamReader()
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
            )
            try:
                while line := await reader.readline():
                    sys.stdout.write(control(proxy, line.decode()) + "\n")
                    sys.stdout.flush()
            finally:
                transport.close()
        await asyncio.Event().wait()  # until Ctrl-C (stdin's EOF does not stop the proxy)


def main(argv: Sequence[str] | None = None) -> int:
    """``tether proxy --listen H:P --upstream H:P [--latency MS] [--jitter MS] [--blackhole]
    [--down] [--control stdin]``: run a fault proxy until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="tether proxy", description="TCP fault proxy")
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 0), metavar="HOST:PORT")
    parser.add_argument("--upstream", type=_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--latency", type=float, default=0.0, metavar="MS")
    parser.add_argument("--jitter", type=float, default=0.0, metavar="MS")
    parser.add_argument("--blackhole", action="store_true")
    parser.add_argument("--down", action="store_true")
    parser.add_argument("--control", choices=["stdin"], help="read fault commands line by line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
