"""Many hubs on one Redis, in one process (``adapters/stores/redis.py``, the shared-store
paths of ``adapters/hub/server.py``): each hub has its own :class:`RedisStore`
connection and node name, as separate processes would.

* the store: a late commit from a hub whose session was taken over is refused (fencing),
  a commit in an old epoch is refused, a restart keeps the epoch with the append-only
  file and loses it without persistence; ``maxmemory-policy`` must be ``noeviction``;
* the hub: a client resumes on another hub and the old hub lets go; that hub's handler,
  still running, cannot commit; ``hub.send`` reaches a session another hub holds, in a
  handler and outside; a client acknowledging more than the store ever sent moves the
  store to a new epoch; an unreachable Redis is ``busy`` and ``hub.send`` raises.

The process-level scenarios (SIGKILL of a hub, of Redis) are in ``test_hub_cluster.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from adapters.hub import Hub, Limits, Session, serve
from adapters.stores import Commit, EpochChanged, Fenced, StoreBusy
from fsm.protocol import Msg
from tests.cluster import CLUSTER_HB
from tests.redis_server import RedisServer, redis_prefix, redis_server, shared_redis
from tests.test_hub import Peer, msgs

pytestmark = [pytest.mark.realsocket, pytest.mark.timeout(30)]
FIXTURES = (redis_prefix, redis_server, shared_redis)
REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")

with contextlib.suppress(ImportError):  # an extra: the fixtures skip without it
    from adapters.stores.redis import RedisStore


def run(main: Awaitable[T], timeout: float = 20.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await main

    return asyncio.run(bounded())


async def until(done: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not done():
            await asyncio.sleep(0.01)
    assert done(), what


@contextlib.asynccontextmanager
async def hubs(url: str, prefix: str, handler: Any = None, count: int = 2,
               **options: Any) -> AsyncIterator[list[Hub]]:
    """``count`` hubs on one Redis (each its own store connection and node)."""
    stores = [await RedisStore.connect(url, prefix=prefix, liveness=0.6, timeout=0.5)
              for _ in range(count)]
    started: list[Hub] = []
    try:
        for store in stores:
            started.append(await serve(handler or (lambda session, data: session.send(data)),
                                       store=store, heartbeat=CLUSTER_HB, **options))
        yield started
    finally:
        for hub in started:
            await hub.close()
        for store in stores:
            await store.aclose()


# -- the store ---------------------------------------------------------------------------------


def test_a_late_commit_of_a_hub_whose_session_was_taken_over_is_refused(
        shared_redis: RedisServer, redis_prefix: str) -> None:
    async def main() -> None:
        a = await RedisStore.connect(shared_redis.url, prefix=redis_prefix)
        b = await RedisStore.connect(shared_redis.url, prefix=redis_prefix)
        try:
            record, _ = await a.create(1.0)
            sid = record.session_id
            claimed = await b.claim(sid, 2.0)
            assert claimed is not None
            taken, _ = claimed
            assert taken.generation == record.generation + 1 and taken.node == b.node
            before = (await a.get(sid), await a.unacked(sid))
            with pytest.raises(Fenced, match="taken over"):
                await a.commit(Commit(now=3.0, inbound=(sid, 1), sends=[(sid, '"late"')],
                                      generation=record.generation, epoch=a.epoch))
            assert (await a.get(sid), await a.unacked(sid)) == before  # nothing changed
            assert await b.commit(Commit(now=3.0, inbound=(sid, 1), sends=[(sid, '"ok"')],
                                         generation=taken.generation, epoch=b.epoch)) == [1]
        finally:
            await a.aclose()
            await b.aclose()

    run(main())


def test_the_epoch_survives_a_redis_kill_with_aof_and_not_without(
        redis_server: RedisServer) -> None:
    async def session_in(store: RedisStore) -> str:
        record, _ = await store.create(1.0)
        await store.commit(Commit(now=2.0, inbound=(record.session_id, 1),
                                  sends=[(record.session_id, '"kept?"')], epoch=store.epoch))
        return record.session_id

    async def main() -> None:
        for persistence in ("always", "everysec", "none"):
            redis_server.persistence = persistence
            redis_server.start()
            store = await RedisStore.connect(redis_server.url)
            epoch, sid = store.epoch, await session_in(store)
            await store.aclose()
            redis_server.kill()  # SIGKILL: no shutdown save, no last fsync
            redis_server.start()
            store = await RedisStore.connect(redis_server.url)
            try:
                record = await store.get(sid)
                if persistence == "none":
                    assert store.epoch != epoch and record is None
                    with pytest.raises(EpochChanged):
                        await store.commit(Commit(now=3.0, sends=[(sid, "1")], epoch=epoch))
                else:
                    assert store.epoch == epoch, persistence
                    assert record is not None and record.last_in == 1
                    assert [o.data for o in await store.unacked(sid)] == ["kept?"]
                await store.commit(Commit(now=4.0))  # (the store works either way)
            finally:
                await store.aclose()
            redis_server.kill()
            for path in redis_server.directory.glob("appendonly*"):
                if path.is_dir():
                    for file in path.iterdir():
                        file.unlink()

    run(main(), timeout=25)


def test_redis_that_may_evict_is_refused_with_a_clear_message(
        redis_server: RedisServer) -> None:
    redis_server.policy = "allkeys-lru"
    redis_server.start()
    with pytest.raises(ValueError, match=r"maxmemory-policy 'allkeys-lru'.*noeviction"):
        run(RedisStore.connect(redis_server.url))


# -- the hubs ----------------------------------------------------------------------------------


def test_a_client_resumes_on_another_hub_which_takes_the_session_over(
        shared_redis: RedisServer, redis_prefix: str) -> None:
    async def main() -> None:
        async with hubs(shared_redis.url, redis_prefix) as (a, b):
            first = await Peer.open(a.port)
            welcome = await first.hello()
            sid = welcome.session
            assert list(a.sessions) == [sid] and not b.sessions
            await a.send(sid, "from a")
            await first.send(Msg(seq=1, ack=0, data="up 1"))
            got = await first.recv_until(lambda f: isinstance(f, Msg) and f.data == "up 1")
            assert msgs(got) == [(1, "from a"), (2, "up 1")]

            second = await Peer.open(b.port)  # the client comes back on the other hub
            resumed = await second.hello(sid, first.token, ack=1)
            assert resumed.resumed and resumed.session == sid and resumed.ack == 1
            assert resumed.epoch == welcome.epoch
            assert msgs(await second.recv_until(lambda f: isinstance(f, Msg))) == \
                [(2, "up 1")]  # the unacknowledged one is replayed by the new hub
            await first.closed()  # the old hub let go of it, and closed its socket
            await until(lambda: sid not in a.sessions, "the old hub forgets the session")
            await second.send(Msg(seq=2, ack=2, data="up 2"))
            assert msgs(await second.recv_until(lambda f: isinstance(f, Msg))) == \
                [(3, "up 2")]
            await a.send(sid, "from a again")  # a hub that does not hold it can send
            assert msgs(await second.recv_until(lambda f: isinstance(f, Msg))) == \
                [(4, "from a again")]
            await second.close()

    run(main())


def test_the_old_hubs_handler_still_running_cannot_commit(
        shared_redis: RedisServer, redis_prefix: str) -> None:
    """Hub A's handler is still running when the client resumes on hub B; when it
    returns, A's commit carries the old fencing generation and is refused: the
    delivery happens once, on B."""
    gate = asyncio.Event()
    calls: list[tuple[int, Any]] = []

    async def main() -> None:
        async def handler(session: Session, data: Any) -> None:
            calls.append((session._generation, data))
            if len(calls) == 1:
                await gate.wait()  # A's call: held until B took the session over
            session.send({"echo": data})

        async with hubs(shared_redis.url, redis_prefix, handler) as (a, b):
            first = await Peer.open(a.port)
            sid = (await first.hello()).session
            await first.send(Msg(seq=1, ack=0, data="once"))
            await until(lambda: len(calls) == 1, "A's handler runs")
            second = await Peer.open(b.port)
            assert (await second.hello(sid, first.token, ack=0)).resumed
            await until(lambda: sid not in a.sessions, "A lets go")
            gate.set()  # A's handler returns; its commit must be refused
            await second.send(Msg(seq=1, ack=0, data="once"))  # the client replays it
            got = await second.recv_until(lambda f: isinstance(f, Msg))
            assert msgs(got) == [(1, {"echo": "once"})]
            await asyncio.sleep(0.2)  # a second echo (A's) would come through the store
            record = await b.store.get(sid)
            assert record is not None and record.last_in == 1
            assert [o.data for o in await b.store.unacked(sid)] == [{"echo": "once"}]
            assert [g for g, _ in calls] == [1, 2]  # called on both, committed on B
            await second.close()

    run(main())


def test_hub_send_reaches_a_session_another_hub_holds(
        shared_redis: RedisServer, redis_prefix: str) -> None:
    """Outside a handler (``await hub.send``) and inside one (a relay committed with the
    delivery), in order, once each; a session no hub has fails the future."""
    async def main() -> None:
        async def handler(session: Session, data: Any) -> None:
            if isinstance(data, dict):
                hub_of[session.id].send(data["to"], data["body"])

        hub_of: dict[str, Hub] = {}
        async with hubs(shared_redis.url, redis_prefix, handler) as (a, b):
            on_a, on_b = await Peer.open(a.port), await Peer.open(b.port)
            sid_a, sid_b = (await on_a.hello()).session, (await on_b.hello()).session
            hub_of.update({sid_a: a, sid_b: b})
            for k in range(5):
                await b.send(sid_a, {"push": k})
            for k in range(5):
                await on_b.send(Msg(seq=k + 1, ack=0, data={"to": sid_a, "body": {"r": k}}))
            got = await on_a.recv_until(lambda f: isinstance(f, Msg) and f.seq == 10,
                                        timeout=5)
            assert msgs(got) == [(k + 1, {"push": k}) for k in range(5)] + \
                [(k + 6, {"r": k}) for k in range(5)]
            with pytest.raises(LookupError, match="no session 'nobody'"):
                await b.send("nobody", 1)
            await on_a.close()
            await on_b.close()

    run(main())


def test_a_client_that_acknowledges_more_than_the_store_sent_gets_a_new_epoch(
        shared_redis: RedisServer, redis_prefix: str) -> None:
    """The store forgot messages it had sent (an fsync window, a lagging replica): the
    client acknowledges beyond the store's last wire number. The hub does not resume on
    a store that forgot; it moves it to a new epoch and the client starts anew."""
    async def main() -> None:
        async with hubs(shared_redis.url, redis_prefix) as (a, b):
            peer = await Peer.open(a.port)
            welcome = await peer.hello()
            await a.send(welcome.session, "m1")
            await peer.recv_until(lambda f: isinstance(f, Msg))
            await peer.close()
            again = await Peer.open(b.port)
            fresh = await again.hello(welcome.session, peer.token, ack=5)  # beyond 1
            assert not fresh.resumed and fresh.session != welcome.session
            assert fresh.epoch != welcome.epoch
            await until(lambda: a.epoch == fresh.epoch, "the other hub hears of it")
            await again.close()

    run(main())


def test_unreachable_redis_is_busy_and_hub_send_raises(redis_server: RedisServer) -> None:
    redis_server.start()

    async def main() -> None:
        store = await RedisStore.connect(redis_server.url, liveness=0.6, timeout=0.3)
        hub = await serve(lambda session, data: session.send(data), store=store,
                          heartbeat=CLUSTER_HB, limits=Limits(retry_after=0.3))
        try:
            peer = await Peer.open(hub.port)
            sid = (await peer.hello()).session
            store_epoch = store.epoch
            redis_server.kill()
            await peer.send(Msg(seq=1, ack=0, data="not stored"))
            error = await peer.error()  # nothing acknowledged: the client replays it
            assert error.code == "busy" and error.retry_after == 0.3
            with pytest.raises(StoreBusy):
                hub.send(sid, "refused at once")
            newcomer = await Peer.open(hub.port)
            await newcomer.send('{"type":"hello","v":1,"ack":0}')
            refused = await newcomer.error()
            assert refused.code == "busy" and refused.retry_after == 0.3
            redis_server.start()  # back (no persistence: a new epoch)
            await until(lambda: store.available, "the store answers again", timeout=5)
            late = await Peer.open(hub.port)
            welcome = await late.hello()
            assert welcome.epoch != store_epoch  # no persistence: the data is gone
            await late.close()
        finally:
            await hub.close()
            await store.aclose()

    run(main())


# -- the command ---------------------------------------------------------------------------------


async def _tether_hub(url: str, *more: str) -> tuple[asyncio.subprocess.Process, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adapters.hub", "--port", "0", "--redis", url, *more,
        cwd=REPO, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    async with asyncio.timeout(8):
        line = await process.stdout.readline()
    assert line.startswith(b"listening "), line
    return process, int(line.split()[1])


def test_two_tether_hub_commands_on_one_redis_are_a_cluster(
        shared_redis: RedisServer, redis_prefix: str) -> None:
    async def main() -> None:
        first, port_a = await _tether_hub(shared_redis.url, "--echo",
                                          "--redis-prefix", redis_prefix)
        second, port_b = await _tether_hub(shared_redis.url, "--echo",
                                           "--redis-prefix", redis_prefix)
        try:
            peer = await Peer.open(port_a)
            welcome = await peer.hello()
            await peer.send(Msg(seq=1, ack=0, data="to a"))
            assert msgs(await peer.recv_until(lambda f: isinstance(f, Msg))) == [(1, "to a")]
            await peer.close()
            again = await Peer.open(port_b)
            resumed = await again.hello(welcome.session, peer.token, ack=1)
            assert resumed.resumed and resumed.epoch == welcome.epoch and resumed.ack == 1
            await again.send(Msg(seq=2, ack=1, data="to b"))
            assert msgs(await again.recv_until(lambda f: isinstance(f, Msg))) == [(2, "to b")]
            await again.close()
        finally:
            for process in (first, second):
                process.kill()
                await process.wait()

    run(main())


def test_tether_hub_refuses_a_redis_that_may_evict(redis_server: RedisServer) -> None:
    redis_server.policy = "volatile-lru"
    redis_server.start()
    done = subprocess.run([sys.executable, "-m", "adapters.hub", "--port", "0", "--redis",
                           redis_server.url], cwd=REPO, capture_output=True, text=True,
                          timeout=20, check=False)
    assert done.returncode == 2
    assert "maxmemory-policy 'volatile-lru'" in done.stderr
    assert "Set maxmemory-policy noeviction" in done.stderr


def test_a_client_sending_past_what_the_store_delivered_gets_a_new_epoch(
        shared_redis: RedisServer, redis_prefix: str) -> None:
    """The store forgot a delivery it had acknowledged (here: ``last_in`` set back by
    hand, as a failover to a lagging replica would): the client's next message leaves a
    gap. Not the client's fault: the store moves to a new epoch, the client starts anew
    (and rebuilds) instead of being refused forever."""
    async def main() -> None:
        async with hubs(shared_redis.url, redis_prefix) as (a, b):
            peer = await Peer.open(a.port)
            welcome = await peer.hello()
            await peer.send(Msg(seq=1, ack=0, data="delivered"))
            await peer.recv_until(lambda f: isinstance(f, Msg))  # its echo: acked too
            await peer.close()
            store = cast(RedisStore, b.store)
            await store._r.hset(f"{redis_prefix}:{{{welcome.session}}}:s", "li", "0")
            again = await Peer.open(b.port)
            resumed = await again.hello(welcome.session, peer.token, ack=1)
            assert resumed.resumed and resumed.ack == 0  # the store's (wrong) view
            await again.send(Msg(seq=2, ack=1, data="next"))
            await again.closed()  # the session is gone with its epoch: dropped
            assert b.epoch != welcome.epoch  # a new epoch: every client rebuilds
            third = await Peer.open(b.port)
            fresh = await third.hello(welcome.session, peer.token, ack=1)
            assert not fresh.resumed and fresh.epoch == b.epoch
            await third.close()

    run(main())


def test_presence_follows_a_session_to_the_hub_that_took_it_over(
        shared_redis: RedisServer, redis_prefix: str) -> None:
    """A client moves from hub A to hub B; B then stops (its liveness key goes): A,
    which held the session once, shows it stale, then gone, because it learned that B
    holds it now."""
    async def main() -> None:
        stores = [await RedisStore.connect(shared_redis.url, prefix=redis_prefix,
                                           liveness=0.6) for _ in range(2)]
        a, b = [await serve(lambda session, data: None, store=s, heartbeat=CLUSTER_HB,
                            expire_after=0.5) for s in stores]
        seen: list[tuple[str, str]] = []
        a.on_presence(lambda sid, old, new: seen.append((old.value, new.value)))
        try:
            first = await Peer.open(a.port)
            welcome = await first.hello()
            second = await Peer.open(b.port)
            assert (await second.hello(welcome.session, first.token)).resumed
            await until(lambda: welcome.session not in a.sessions, "A lets go")
            await asyncio.sleep(0.1)  # B's announcement reaches A
            await b.close()
            await stores[1].aclose()  # B is gone: its liveness key with it
            await until(lambda: welcome.session not in a.presence, "A shows it gone",
                        timeout=5)
            assert seen == [("gone", "present"), ("present", "stale"), ("stale", "gone")]
            await first.close()
            await second.close()
        finally:
            await a.close()
            await b.close()
            for store in stores:
                await store.aclose()

    run(main())
