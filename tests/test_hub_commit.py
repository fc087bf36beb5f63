"""Issue 7 section 2: nothing may fail after the hub commits.

Everything a delivery will send is checked when it is *sent* (JSON, the protocol's
``MAX_DEPTH``, ``max_frame``, UTF-8, room in the target's outbox, reserved then); once the
store's commit returned, messages are held as the committed text and frames are
formatted around it. The regressions: a message that committed and then failed to
encode again wedged its session for good (``delivery of seq 1, but last_in is 1``); a
handler's send to a session that filled up meanwhile failed the *commit*, closing the
sender's connection although its handler had done nothing wrong.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from adapters.hub import Limits, Session
from adapters.stores import MemoryStore
from fsm import Heartbeat, protocol
from fsm.errors import OutboxFull
from fsm.protocol import MAX_DEPTH, Ack, Frame, Msg
from tests.test_hub import Peer, hub_with, msgs, run

pytestmark = pytest.mark.realsocket


def nested(depth: int) -> Any:
    """``depth`` levels of lists around 0 (``nested(1) == [0]``)."""
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def _deepest_encodable(limit: int = sys.getrecursionlimit()) -> int:
    """The deepest nesting ``json.dumps`` takes from two frames below the caller (where
    ``session.send`` encodes): anything deeper cannot be encoded there, and the old hub
    encoded again further down its stack, after the commit."""
    def at_send_depth(depth: int) -> bool:
        try:
            json.dumps(nested(depth))
        except RecursionError:
            return False
        return True

    low, high = 1, limit
    while low < high:
        middle = (low + high + 1) // 2
        if at_send_depth(middle):
            low = middle
        else:
            high = middle - 1
    return low


async def _reply_or_close(peer: Peer, timeout: float = 2.0) -> Msg | None:
    """The next msg from the hub, or None if it closed the connection first."""
    try:
        frames = await peer.recv_until(lambda f: isinstance(f, Msg), timeout=timeout)
    except ConnectionClosed:
        return None
    reply = frames[-1]
    assert isinstance(reply, Msg)
    return reply


def test_a_message_that_cannot_be_encoded_again_never_wedges_its_session() -> None:
    """The repro of issue 7: a handler sends data nested a little less deeply than the
    encoder's own limit. The old hub accepted it, committed, and failed to encode it again
    (deeper in its stack): memory rolled back, the store did not, and every resume after
    failed with ``delivery of seq 1, but last_in is 1``. Now the send itself refuses it
    (deeper than MAX_DEPTH) and the handler can answer something else."""
    async def main() -> None:
        def handler(session: Session, data: Any) -> None:
            if data == "deep":
                try:
                    session.send(nested(_deepest_encodable()))
                except ValueError as error:
                    session.send({"refused": str(error)})
            else:
                session.send(data)

        async with hub_with(handler) as (hub, _):
            peer = await Peer.open(hub.port)
            welcome = await peer.hello()
            session, token = peer.session, peer.token
            reply: Msg | None = None
            for _attempt in range(3):  # each failure: resume and replay, as a client does
                await peer.send(Msg(seq=1, ack=0, data="deep"))
                reply = await _reply_or_close(peer)
                if reply is not None:
                    break
                peer = await Peer.open(hub.port)
                await peer.hello(session, token)
            assert reply is not None, "wedged: every replay of msg 1 failed"
            assert "MAX_DEPTH" in reply.data["refused"], reply
            assert hub.sessions[welcome.session].last_in == 1
            await peer.send(Msg(seq=2, ack=reply.seq, data="after"))
            assert msgs([await peer.recv()]) == [(2, "after")]
            await peer.close()

    run(main())


def test_send_refuses_data_deeper_than_max_depth_and_delivers_max_depth() -> None:
    """The same limit as the client's decoder, named in the error, checked at send()."""
    from adapters.websocket import connect

    async def main() -> None:
        async with hub_with() as (hub, _), \
                connect(f"ws://127.0.0.1:{hub.port}/", session=True,
                        heartbeat=Heartbeat(interval=1, timeout=1)) as link:
            await link.send("hello")
            while not hub.sessions:
                await asyncio.sleep(0.01)
            (sid,) = hub.sessions
            with pytest.raises(ValueError, match=f"deeper than {MAX_DEPTH} levels.*"
                                                 f"MAX_DEPTH"):
                hub.send(sid, nested(MAX_DEPTH + 1))
            with pytest.raises(ValueError, match="MAX_DEPTH"):
                hub.sessions[sid].send({"a": nested(MAX_DEPTH)})  # 65 with the dict
            assert hub.sessions[sid].unacked == 0  # nothing was reserved or sent
            await hub.send(sid, nested(MAX_DEPTH))
            assert await asyncio.wait_for(link.receive(), 5) == nested(MAX_DEPTH)

    run(main())


def test_send_refuses_text_that_is_not_utf8_before_the_commit() -> None:
    """A lone surrogate is a str json.dumps writes but UTF-8 cannot carry: found when
    the frame was written, after the commit, before."""
    async def main() -> None:
        async with hub_with() as (hub, _):
            peer = await Peer.open(hub.port)
            sid = (await peer.hello()).session
            with pytest.raises(ValueError, match="UTF-8"):
                hub.send(sid, "\ud800")
            assert hub.sessions[sid].unacked == 0
            await peer.close()

    run(main())


def test_a_full_target_is_refused_at_send_and_never_fails_the_commit() -> None:
    """Two handlers (sessions A and C) send to B at the same time, B has room for one.
    The old hub let both sends through and failed C's *commit* with OutboxFull: C's
    connection closed (1011) though its handler had done nothing wrong. Now the room is
    reserved at send(): C's handler gets OutboxFull, catches it, and answers."""
    async def main() -> None:
        both = asyncio.Event()
        arrived: list[str] = []
        target: list[str] = []

        async def handler(session: Session, data: Any) -> None:
            if data == "to b":
                try:
                    session._hub.send(target[0], f"from {session.id}")
                except OutboxFull:
                    session.send("b is full")
                arrived.append(session.id)
                if len(arrived) == 2:
                    both.set()
                await both.wait()  # A and C are both mid-delivery here

        async with hub_with(handler, limits=Limits(outbox=1)) as (hub, _):
            b = await Peer.open(hub.port)
            target.append((await b.hello()).session)
            a, c = await Peer.open(hub.port), await Peer.open(hub.port)
            a_id, c_id = (await a.hello()).session, (await c.hello()).session
            await a.send(Msg(seq=1, ack=0, data="to b"))
            while not arrived:
                await asyncio.sleep(0.005)
            await c.send(Msg(seq=1, ack=0, data="to b"))
            reply = await _reply_or_close(c)
            assert reply is not None, f"C's connection closed: code {c.ws.close_code}"
            assert reply.data == "b is full" and reply.ack == 1
            assert await a.recv() == Ack(ack=1)
            assert msgs([await b.recv()]) == [(1, f"from {a_id}")]
            assert hub.sessions[c_id].last_in == 1 and hub.sessions[a_id].last_in == 1
            for peer in (a, b, c):
                await peer.close()

    run(main())


def test_the_outbox_is_bounded_in_bytes_too() -> None:
    async def main() -> None:
        limits = Limits(max_frame=1024, outbox=100, outbox_bytes=2048)
        async with hub_with(limits=limits) as (hub, _):
            peer = await Peer.open(hub.port)
            sid = (await peer.hello()).session
            hub.send(sid, "x" * 900)
            hub.send(sid, "y" * 900)
            with pytest.raises(OutboxFull, match="2048 bytes"):
                hub.send(sid, "z" * 900)  # 3 messages of 100 fit, 2.7 KB do not
            hub.send(sid, "small")  # ... but this fits
            frames = await peer.recv_until(lambda f: isinstance(f, Msg) and f.seq == 3)
            assert [len(m) for _, m in msgs(frames)] == [900, 900, 5]
            await peer.send(Ack(ack=3))
            await asyncio.sleep(0.05)
            await hub.send(sid, "z" * 900)  # room again once acknowledged
            await peer.close()

    run(main())


def test_each_message_is_held_once_as_the_committed_text() -> None:
    """What the store committed is what the session holds (the same string), and the
    frame written is that text with the envelope around it."""
    async def main() -> None:
        store = MemoryStore()
        async with hub_with(store=store) as (hub, _):
            peer = await Peer.open(hub.port)
            sid = (await peer.hello()).session
            await hub.send(sid, {"k": ["v", 1, None]})
            held = hub.sessions[sid]._ledger[0][1]
            assert held is store._entries[sid].outbound[1]  # one object, not copies
            text = await asyncio.wait_for(peer.ws.recv(), 2)
            assert text == '{"type":"msg","seq":1,"ack":0,"data":' + held + "}"
            frame: Frame = protocol.decode(text)
            assert frame == Msg(seq=1, ack=0, data={"k": ["v", 1, None]})
            await peer.close()

    run(main())


def test_sends_outside_handlers_resolve_when_committed_and_keep_their_order() -> None:
    async def main() -> None:
        async with hub_with() as (hub, _):
            peer = await Peer.open(hub.port)
            sid = (await peer.hello()).session
            futures = [hub.send(sid, n) for n in range(50)]  # not awaited one by one
            assert not futures[0].done()  # committed soon, not now
            await asyncio.gather(*futures)
            assert hub.sessions[sid].unacked == 50
            frames = await peer.recv_until(lambda f: isinstance(f, Msg) and f.seq == 50)
            assert msgs(frames) == [(n + 1, n) for n in range(50)]
            await hub.close()
            with pytest.raises(RuntimeError, match=r"after hub\.close"):
                hub.send(sid, "late")

    run(main())


def test_room_reserved_by_a_handler_that_fails_is_given_back() -> None:
    """A send reserves room in its target's outbox; a delivery that is not committed
    (the handler raised afterwards) gives the room back, or the target would be full
    for good."""
    async def main() -> None:
        def handler(session: Session, data: Any) -> None:
            session.send("reserved")
            raise RuntimeError("the handler fails after sending")

        async with hub_with(handler, limits=Limits(outbox=1)) as (hub, _):
            peer = await Peer.open(hub.port)
            sid = (await peer.hello()).session
            await peer.send(Msg(seq=1, ack=0, data="x"))
            await peer.closed()  # 1011: not delivered
            session = hub.sessions[sid]
            assert (session.unacked, session._reserved, session._reserved_bytes) == (0, 0, 0)
            await hub.send(sid, "room again")
            assert session.unacked == 1

    run(main())
