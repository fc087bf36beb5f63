"""Issue 7 section 6: what the hub holds for a client is bounded in bytes.

The per-connection write queue was unbounded: a client that floods pings and never
reads grew the hub (31 to 63 MB in 21 s), and every message was held three times. Now a
connection holds no message (frames are formatted from the session's one copy when the
socket takes them), control answers are coalesced flags, and a client that does not
read is dropped (its session kept for a resume): when it takes no frame for the
heartbeat's bound, or when websockets' own answers (RFC 6455 pongs) pile up in its
socket buffer beyond ``limits.write_buffer``.

The clients here are raw sockets with a small receive buffer that never read: the
cheapest hostile peer there is.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import struct
from typing import Any

import pytest

from adapters.hub import Limits, serve
from fsm import Heartbeat
from fsm.protocol import Msg
from tests.test_hub import Peer, msgs, run

pytestmark = pytest.mark.realsocket


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked client-to-server WebSocket frame (RFC 6455 5.2)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 2**16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class DeafClient:
    """A WebSocket client on a raw socket that reads the handshake answer and the
    ``welcome``, then never reads again (receive buffer: 4 KiB)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> tuple[DeafClient, dict[str, Any]]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        client = cls(reader, writer)
        client.writer.write(client_frame(0x1, b'{"type":"hello","v":1,"ack":0}'))
        _, second = await reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        welcome = json.loads(await reader.readexactly(length))
        return client, welcome

    async def flood(self, frame: bytes, seconds: float, until: Any) -> bool:
        """Write ``frame`` again and again for at most ``seconds``; True if ``until()``
        became true meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        batch = frame * max(1, 65536 // len(frame))
        try:
            while loop.time() < deadline:
                if until():
                    return True
                self.writer.write(batch)
                await asyncio.wait_for(self.writer.drain(), 1.0)
                await asyncio.sleep(0.005)
        except (ConnectionError, TimeoutError):
            pass
        return bool(until())

    def close(self) -> None:
        self.writer.transport.abort()


def test_a_client_that_pings_but_never_reads_is_dropped_and_its_session_kept(
        caplog: pytest.LogCaptureFixture) -> None:
    """It floods session pings (so it is not silent) while the hub has 12 MB of
    messages for it: the hub's writer waits for the socket, and after the heartbeat's
    bound without taking a frame the client is dropped. The session stays; a resume
    replays what was not acknowledged."""
    caplog.set_level(logging.WARNING, logger="tether.hub")

    async def main() -> None:
        heartbeat = Heartbeat(interval=0.3, timeout=0.3)
        limits = Limits(max_frame=256 * 1024)
        hub = await serve(lambda session, data: None, heartbeat=heartbeat, limits=limits)
        try:
            deaf, welcome = await DeafClient.open(hub.port)
            sid = welcome["session"]
            for n in range(60):
                hub.send(sid, {"n": n, "pad": "x" * 200_000})
            session = hub.sessions[sid]
            dropped = await deaf.flood(client_frame(0x1, b'{"type":"ping","ack":0}'), 10,
                                       lambda: not session.connected)
            deaf.close()
            assert dropped, "the deaf client was never dropped"
            assert any("took no frame" in r.getMessage() for r in caplog.records)
            assert hub.sessions[sid] is session and session.unacked == 60
            again = await Peer.open(hub.port)
            resumed = await again.hello(sid, welcome["token"])
            assert resumed.resumed
            first = await again.recv()
            assert isinstance(first, Msg) and first.seq == 1 and first.data["n"] == 0
            await again.close()
        finally:
            await hub.close()

    run(main(), timeout=20)


def test_a_flood_of_rfc6455_pings_never_read_is_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    """websockets answers protocol pings itself, straight into the socket buffer; a
    client that sends them and never reads would grow it without end."""
    caplog.set_level(logging.WARNING, logger="tether.hub")

    async def main() -> None:
        limits = Limits(max_frame=1024, write_buffer=64 * 1024)
        hub = await serve(lambda session, data: None, limits=limits)
        try:
            deaf, welcome = await DeafClient.open(hub.port)
            session = hub.sessions[welcome["session"]]
            ping = client_frame(0x9, b"p" * 125)
            dropped = await deaf.flood(ping, 10, lambda: not session.connected)
            deaf.close()
            assert dropped, "the deaf client was never dropped"
            assert any("does not read" in r.getMessage() for r in caplog.records)
            assert welcome["session"] in hub.sessions  # the session is kept
        finally:
            await hub.close()

    run(main(), timeout=20)


def test_a_ping_flood_costs_one_pong_each_time_the_socket_takes_one() -> None:
    """Pings the hub has not answered yet are answered together: one pong with the
    latest ack (any frame proves life; acks are cumulative)."""
    async def main() -> None:
        hub = await serve(lambda session, data: None)
        try:
            peer = await Peer.open(hub.port)
            await peer.hello()
            flood = '{"type":"ping","ack":0}'
            for _ in range(2000):
                await peer.ws.send(flood)
            await peer.send(Msg(seq=1, ack=0, data="marker"))
            pongs = 0
            while True:
                frame = await peer.recv()
                if not isinstance(frame, Msg) and getattr(frame, "ack", None) == 1:
                    break
                pongs += 1
            assert 1 <= pongs < 2000, pongs  # coalesced, never more than asked
            await peer.close()
        finally:
            await hub.close()

    run(main())


def test_replays_stream_from_the_one_copy_in_order() -> None:
    """A resume with 300 unacknowledged messages: they go out in order, formatted when
    the socket takes them; nothing is copied per connection."""
    async def main() -> None:
        hub = await serve(lambda session, data: None)
        try:
            peer = await Peer.open(hub.port)
            sid = (await peer.hello()).session
            await asyncio.gather(*(hub.send(sid, n) for n in range(300)))
            await peer.close()
            again = await Peer.open(hub.port)
            await again.hello(sid, peer.token, ack=100)
            frames = await again.recv_until(lambda f: isinstance(f, Msg) and f.seq == 300)
            assert msgs(frames) == [(n + 1, n) for n in range(100, 300)]
            await again.close()
        finally:
            await hub.close()

    run(main())


def test_the_hub_honours_the_clients_window_end_to_end() -> None:
    """A client whose application does not read announces its window (``inbound_limit``)
    in hello and acknowledges only what the application took: the hub keeps the rest,
    the client holds no more than the window, no connection flaps while it waits, and
    everything arrives once, in order, when it reads."""
    from adapters.websocket import connect
    from fsm import Backoff, State

    async def main() -> None:
        hub = await serve(lambda session, data: None, heartbeat=Heartbeat(0.3, 0.3))
        try:
            link = connect(f"ws://127.0.0.1:{hub.port}/", session=True, inbound_limit=10,
                           heartbeat=Heartbeat(0.3, 0.3), backoff=Backoff(0.05, cap=0.2))
            async with link:
                await link.wait_for(State.ONLINE, timeout=5)
                session_id = link.session_id
                assert session_id is not None
                for n in range(100):
                    await hub.send(session_id, n)
                await asyncio.sleep(2.0)  # several heartbeats with nobody reading
                assert link.statistics()["inbound_depth"] == 10
                assert link.statistics()["reconnects"] == 0
                assert hub.sessions[session_id].unacked == 100
                got = [await asyncio.wait_for(link.receive(), 5) for _ in range(100)]
                assert got == list(range(100))
                await asyncio.sleep(0.3)
                assert hub.sessions[session_id].unacked == 0
        finally:
            await hub.close()

    run(main())
