"""Tests of adapters.proxy.FaultProxy on loopback, through a tiny asyncio echo server."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import pytest

from adapters.proxy import FaultProxy, ProxyStats, control

pytestmark = pytest.mark.realsocket

T = TypeVar("T")
EPS = 0.005  # timers may fire this much early on a coarse clock


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 5))


def now() -> float:
    return asyncio.get_running_loop().time()


class Echo:
    """An echo server on 127.0.0.1, port 0, that remembers its handler tasks."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    async def __aenter__(self) -> Echo:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


class Net:
    """An echo server behind a FaultProxy, and the clients a test opened."""

    def __init__(self, proxy: FaultProxy, echo: Echo) -> None:
        self.proxy, self.echo = proxy, echo
        self.clients: list[asyncio.StreamWriter] = []

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.proxy.port)
        self.clients.append(writer)
        return reader, writer


@contextlib.asynccontextmanager
async def network(rng: random.Random | None = None) -> AsyncIterator[Net]:
    async with Echo() as echo:
        proxy = FaultProxy(upstream=("127.0.0.1", echo.port), rng=rng or random.Random(1))
        async with proxy:
            net = Net(proxy, echo)
            try:
                yield net
            finally:
                for writer in net.clients:
                    writer.transport.abort()


async def roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes = b"ping"
) -> float:
    """Send payload, read its echo, return the time it took."""
    start = now()
    writer.write(payload)
    assert await reader.readexactly(len(payload)) == payload
    return now() - start


async def silent(reader: asyncio.StreamReader, seconds: float = 0.2) -> bool:
    """True if nothing (no data, no EOF) arrives for that long."""
    try:
        await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        return True
    return False


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    data = b""
    while chunk := await reader.read(65536):
        data += chunk
    return data


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True if the next read sees EOF or a reset."""
    try:
        return await reader.read(65536) == b""
    except ConnectionResetError:
        return True


def test_clear_proxy_forwards_and_counts() -> None:
    async def main() -> None:
        async with network() as net:
            assert net.proxy.port != 0
            assert net.proxy.address == ("127.0.0.1", net.proxy.port)
            reader, writer = await net.connect()
            await roundtrip(reader, writer, b"hello")
            await roundtrip(reader, writer, b"x" * 200_000)
            assert net.proxy.statistics() == ProxyStats(1, 1, 200_005, 200_005)

    run(main())


def test_latency_delays_each_direction() -> None:
    async def main() -> None:
        async with network() as net:
            reader, writer = await net.connect()
            net.proxy.latency(60)
            assert await roundtrip(reader, writer) >= 0.12 - EPS
            net.proxy.latency(80, direction="downstream")
            assert await roundtrip(reader, writer) >= 0.14 - EPS  # 60 up + 80 down

    run(main())


def test_latency_jitter_keeps_order_and_uses_the_injected_rng() -> None:
    async def main() -> None:
        rng = random.Random(42)
        async with network(rng) as net:
            reader, writer = await net.connect()
            net.proxy.latency(5, jitter_ms=5, direction="upstream")
            state = rng.getstate()
            lines = [f"{i}\n".encode() for i in range(40)]
            for line in lines:
                writer.write(line)
                await writer.drain()
                await asyncio.sleep(0.001)
            assert [await reader.readline() for _ in lines] == lines
            assert rng.getstate() != state

    run(main())


def test_fault_switched_while_connection_is_open_applies_to_it() -> None:
    async def main() -> None:
        async with network() as net:
            reader, writer = await net.connect()
            await roundtrip(reader, writer)
            net.proxy.latency(100, direction="upstream")
            assert await roundtrip(reader, writer) >= 0.1 - EPS
            net.proxy.clear()
            await roundtrip(reader, writer)
            net.proxy.blackhole()
            writer.write(b"held")
            assert await silent(reader)
            net.proxy.clear()
            assert await reader.readexactly(4) == b"held"

    run(main())


def test_blackhole_stops_data_but_keeps_connections_open() -> None:
    async def main() -> None:
        async with network() as net:
            old_reader, old_writer = await net.connect()
            await roundtrip(old_reader, old_writer)
            net.proxy.blackhole()
            new_reader, new_writer = await net.connect()  # the handshake still completes
            old_writer.write(b"old")
            new_writer.write(b"new")
            assert await silent(old_reader)
            assert await silent(new_reader, 0.05)
            assert not old_reader.at_eof() and not old_writer.is_closing()
            assert net.proxy.statistics().open == 2
            net.proxy.clear()  # the data was held, not dropped
            assert await old_reader.readexactly(3) == b"old"
            assert await new_reader.readexactly(3) == b"new"

    run(main())


def test_timeout_closes_connection_after_ms_without_data() -> None:
    async def main() -> None:
        async with network() as net:
            reader, writer = await net.connect()
            start = now()
            net.proxy.timeout(100)
            writer.write(b"lost")
            assert await read_to_eof(reader) == b""
            assert now() - start >= 0.1 - EPS

    run(main())


def test_reset_peer_now_and_after_ms() -> None:
    async def main() -> None:
        async with network() as net:
            reader, writer = await net.connect()
            await roundtrip(reader, writer)
            net.proxy.reset_peer()
            with pytest.raises(ConnectionResetError):
                await reader.read(1)
            net.proxy.clear()
            reader, writer = await net.connect()
            await roundtrip(reader, writer)
            start = now()
            net.proxy.reset_peer(100)
            with pytest.raises(ConnectionResetError):
                await reader.read(1)
            assert now() - start >= 0.1 - EPS

    run(main())


def test_limit_data_closes_after_n_bytes() -> None:
    async def main() -> None:
        async with network() as net:
            reader, writer = await net.connect()
            net.proxy.limit_data(10, direction="downstream")
            payload = bytes(range(100))
            writer.write(payload)
            assert await read_to_eof(reader) == payload[:10]
            assert net.proxy.statistics().bytes_down == 10

    run(main())


def test_slicer_delivers_all_bytes_in_order_in_pieces() -> None:
    async def main() -> None:
        async with network(random.Random(7)) as net:
            reader, writer = await net.connect()
            net.proxy.slicer(7, size_variation=3, delay_us=500, direction="downstream")
            payload = bytes(range(256)) * 4
            writer.write(payload)
            received, reads = b"", 0
            while len(received) < len(payload):
                received += await reader.read(65536)
                reads += 1
            assert received == payload
            assert reads >= 10  # ~146 pieces of 4..10 bytes, 0.5 ms apart

    run(main())


def test_bandwidth_paces_data() -> None:
    async def main() -> None:
        async with network() as net:
            reader, writer = await net.connect()
            net.proxy.bandwidth(20, direction="downstream")  # 20 kB/s: 4000 bytes take 0.2 s
            assert await roundtrip(reader, writer, b"b" * 4000) >= 0.2 - EPS

    run(main())


def test_down_refuses_and_closes_then_up_restores() -> None:
    async def main() -> None:
        async with network() as net:
            reader, writer = await net.connect()
            await roundtrip(reader, writer)
            port = net.proxy.port
            net.proxy.down()
            assert await closed_by_peer(reader)
            with pytest.raises(ConnectionRefusedError):
                await net.connect()
            assert net.proxy.statistics().open == 0
            net.proxy.up()
            assert net.proxy.port == port
            await roundtrip(*await net.connect())

    run(main())


def test_close_leaves_no_tasks_and_no_listener() -> None:
    async def main() -> None:
        before = asyncio.all_tasks()  # this test's own
        async with Echo() as echo:
            proxy = FaultProxy(upstream=("127.0.0.1", echo.port))
            await proxy.start()
            net = Net(proxy, echo)
            clients = [await net.connect() for _ in range(3)]
            await roundtrip(*clients[0])
            proxy.latency(1000)
            clients[1][1].write(b"queued behind the latency")
            proxy.timeout(10_000)
            proxy.reset_peer(10_000)
            await asyncio.sleep(0.05)
            assert proxy.statistics().open == 3
            await proxy.close()
            assert asyncio.all_tasks() - echo.tasks - before == set()
            assert proxy.statistics().open == 0
            for reader, _ in clients:
                assert await closed_by_peer(reader)
            with pytest.raises(ConnectionRefusedError):
                await net.connect()
            for _, writer in clients:
                writer.close()

    run(main())


def test_control_commands() -> None:
    proxy = FaultProxy(upstream=("127.0.0.1", 9))
    assert control(proxy, "latency 200 20 downstream") == "ok latency 200 20 downstream"
    assert control(proxy, "slicer 8") == "ok slicer 8"
    assert control(proxy, "stats") == "stats 0 0 0 0"
    assert control(proxy, "latency").startswith("error")
    assert control(proxy, "latency fast").startswith("error")
    assert control(proxy, "fly").startswith("error")


def test_cli_switches_faults_from_stdin() -> None:
    async def main() -> None:
        async with Echo() as echo:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "adapters.proxy", "--upstream", f"127.0.0.1:{echo.port}",
                "--control", "stdin",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            assert proc.stdin is not None and proc.stdout is not None
            try:
                banner = (await proc.stdout.readline()).decode().split()
                assert banner[0] == "listening"
                port = int(banner[1].rpartition(":")[2])
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                await roundtrip(reader, writer)
                proc.stdin.write(b"latency 100 upstream\n")
                assert await proc.stdout.readline() == b"ok latency 100 upstream\n"
                assert await roundtrip(reader, writer) >= 0.1 - EPS
                proc.stdin.write(b"down\n")
                assert await proc.stdout.readline() == b"ok down\n"
                assert await closed_by_peer(reader)
                writer.close()
                proc.send_signal(signal.SIGINT)
                assert await proc.wait() == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    run(main())
