"""Many hub processes on one Redis, end to end: real clients (``Link``, session mode)
through a round-robin balancer, hubs SIGKILLed, Redis SIGKILLed.

* two hubs: clients spread over both; messages both ways, ``hub.send`` across hubs (in
  a handler and outside one); one hub is SIGKILLed mid-stream and its clients resume
  on the other: every message once and in order both ways, one rebuild per client;
* Redis SIGKILLed with the append-only file (fsync ``always``): the same epoch, nothing
  lost, nothing doubled;
* Redis SIGKILLed without persistence: a new epoch, each client rebuilds once, and what
  was not acknowledged before the crash arrives again (at-least-once), nothing lost;
* presence: the other hub shows a dead hub's sessions ``stale``, then ``gone``.

The hubs are ``python -m tests.cluster`` processes (:class:`tests.cluster.ClusterHub`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.link import Link
from fsm import State
from tests.cluster import Balancer, ClusterHub
from tests.redis_server import RedisServer, free_port, redis_server
from tests.test_realsocket import make_link, run
from tests.test_session_faults import Inbox, field, numbered, until

pytestmark = [pytest.mark.realsocket, pytest.mark.timeout(60)]
FIXTURES = (redis_server,)


def calls(path: Path) -> list[tuple[str, str, str, Any]]:
    """The handler calls logged by every hub: ``(node, epoch, session, data)``."""
    if not path.exists():
        return []
    return [tuple(json.loads(line)) for line in
            path.read_text(encoding="utf-8").splitlines()]


def once_each(values: list[Any]) -> list[Any]:
    """Calls are at-least-once across a kill (a call cut short is made again, next);
    collapse those repeats to compare with what was sent."""
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


class Client:
    """A session-mode link through the balancer, its inbox and its rebuild epochs."""

    def __init__(self, url: str, index: int) -> None:
        self.index = index
        self.epochs: list[str | None] = []

        async def register(link: Link) -> None:
            self.epochs.append(link.lifecycle.epoch)
            await link.send({"register": index})

        self.link, self.dialer, _ = make_link(url, session=True, on_rebuild=register,
                                              seed=index)
        self.inbox: Inbox | None = None

    async def start(self) -> str:
        await self.link.start()
        await self.link.wait_for(State.ONLINE, timeout=5)
        self.inbox = Inbox(self.link)
        assert self.link._session is not None and self.link._session.session_id
        return self.link._session.session_id

    @property
    def got(self) -> list[Any]:
        assert self.inbox is not None
        return self.inbox.got

    async def stop(self) -> None:
        """Close the link: nothing undelivered, no transport left open."""
        assert self.inbox is not None
        await self.inbox.stop()
        assert await self.link.close() == []
        assert self.dialer.open_transports == []


def test_two_hubs_spread_clients_and_a_killed_hubs_clients_resume_on_the_other(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """Four clients over two hubs. Each sends numbered messages (echoed); client 1's
    are relays to client 0's session (``hub.send`` in a handler, across hubs); hub B
    pushes numbered messages to client 0 (``hub.send`` outside handlers, across hubs).
    Hub A (holding clients 0 and 2) is SIGKILLed mid-stream; they resume on B."""
    redis_server.persistence = "everysec"
    redis_server.start()
    log = tmp_path / "calls.jsonl"
    count, pushes = 40, 30

    async def main() -> None:
        a = ClusterHub(free_port(), redis_server.url, "--log", str(log))
        b = ClusterHub(free_port(), redis_server.url, "--log", str(log))
        await a.start()
        await b.start()
        try:
            async with Balancer([a.port, b.port]) as balancer:
                clients = [Client(balancer.url, i) for i in range(4)]
                sids = [await c.start() for c in clients]
                assert balancer.routed == [a.port, b.port, a.port, b.port]  # spread

                async def stream(i: int) -> None:
                    for k in range(count):
                        if i == 1:
                            await clients[1].link.send({"to": sids[0], "body": {"r": k}})
                        else:
                            await clients[i].link.send({"up": k})
                        await asyncio.sleep(0.005)

                streams = [asyncio.create_task(stream(i)) for i in range(4)]
                pushed = asyncio.create_task(b.push(sids[0], pushes, "push", timeout=20))
                await until(lambda: len(numbered(clients[0].got)) >= count // 3,
                            what="client 0 half-way")
                await a.kill()  # SIGKILL: clients 0 and 2 must resume on B
                await asyncio.gather(*streams)
                assert await pushed == f"pushed {pushes}"

                def complete(i: int) -> Callable[[], bool]:
                    expected = {0: 1 + 2 * count + pushes, 1: 1 + count}.get(i, 1 + count)
                    return lambda: len(clients[i].got) >= expected

                for i in range(4):
                    await until(complete(i), timeout=15, what=f"client {i} complete")
                await asyncio.sleep(0.3)  # a duplicate would arrive meanwhile
                for client in clients:
                    await client.stop()
        finally:
            await a.kill()
            await b.kill()

        zero, one = clients[0].got, clients[1].got
        assert numbered(zero) == list(range(count))  # its echoes, once, in order
        assert numbered(zero, "push") == list(range(pushes))  # B's pushes, across hubs
        assert [m["r"] for m in zero if isinstance(m, dict) and "r" in m] == \
            list(range(count))  # client 1's relays, across hubs
        assert field(one, "relayed") == [{"r": k} for k in range(count)]
        for client in clients[2:]:
            assert numbered(client.got) == list(range(count))
        for client in clients:
            assert field(client.got, "register") == [client.index]  # one rebuild
            assert len(client.epochs) == 1
        assert [c.link.statistics()["reconnects"] >= 1 for c in clients] == \
            [True, False, True, False]  # A's clients moved, B's did not
        # Every hub's handler calls: per session, each message once and in order
        # (a call cut short by the kill is made again, next).
        by_session: dict[str, list[Any]] = {}
        nodes: dict[str, set[str]] = {}
        for node, _, sid, data in calls(log):
            by_session.setdefault(sid, []).append(data)
            nodes.setdefault(sid, set()).add(node)
        for i in (0, 2):
            assert once_each(by_session[sids[i]]) == \
                [{"register": i}] + [{"up": k} for k in range(count)]
            assert nodes[sids[i]] == {a.node, b.node}  # handled on both hubs
        assert once_each(by_session[sids[1]]) == \
            [{"register": 1}] + [{"to": sids[0], "body": {"r": k}} for k in range(count)]

    run(main, timeout=50)


def _redis_killed(redis_server: RedisServer, tmp_path: Path, persistence: str
                  ) -> tuple[list[Client], list[int], int, list[tuple[str, str, str, Any]]]:
    """Two hubs, two clients (one on each) sending numbered messages, echoed; Redis
    SIGKILLed and restarted mid-stream with ``persistence``. Returns the clients, the
    numbers the first client held unacknowledged at the kill, the count, and the
    handler calls."""
    redis_server.persistence = persistence
    redis_server.start()
    log = tmp_path / "calls.jsonl"
    count = 40
    held: list[int] = []

    async def main() -> list[Client]:
        a = ClusterHub(free_port(), redis_server.url, "--log", str(log))
        b = ClusterHub(free_port(), redis_server.url, "--log", str(log))
        await a.start()
        await b.start()
        try:
            async with Balancer([a.port, b.port]) as balancer:
                clients = [Client(balancer.url, i) for i in range(2)]
                for c in clients:
                    await c.start()
                for k in range(count):
                    for c in clients:
                        await c.link.send({"up": k})
                    await asyncio.sleep(0.01)
                    if k == count // 2:
                        held.extend(p["up"] for p in clients[0].link.held()
                                    if isinstance(p, dict) and "up" in p)
                        redis_server.kill()
                        await asyncio.sleep(0.2)  # the hubs find Redis gone: busy
                        redis_server.start()
                for c in clients:
                    await until(lambda c=c: numbered(c.got)[-1:] == [count - 1],  # type: ignore[misc]
                                timeout=15, what=f"client {c.index} complete")
                    await until(lambda c=c: c.link.statistics()["outbox_depth"] == 0,  # type: ignore[misc]
                                timeout=5, what="all acknowledged")
                await asyncio.sleep(0.3)
                for c in clients:
                    await c.stop()
                return clients
        finally:
            await a.kill()
            await b.kill()

    clients = run(main, timeout=50)
    return clients, held, count, calls(log)


def test_redis_killed_with_aof_keeps_the_epoch_and_loses_nothing(
        redis_server: RedisServer, tmp_path: Path) -> None:
    clients, _, count, logged = _redis_killed(redis_server, tmp_path, "always")
    for client in clients:
        assert numbered(client.got) == list(range(count))  # once each, in order
        assert len(client.epochs) == 1  # the same epoch: no second rebuild
    assert len({epoch for _, epoch, _, _ in logged}) == 1


def test_redis_killed_without_persistence_is_a_new_epoch_rebuilt_once(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """PROTOCOL.md section 5, store lost: a new epoch, the rebuild once before anything
    else, what was unacknowledged at the crash may come twice, nothing is lost."""
    clients, held, count, logged = _redis_killed(redis_server, tmp_path, "none")
    epochs = list(dict.fromkeys(epoch for _, epoch, _, _ in logged))
    assert len(epochs) == 2, epochs
    for client in clients:
        assert len(client.epochs) == 2 and client.epochs[0] != client.epochs[1]
        assert field(client.got, "register") == [client.index, client.index]
    got = numbered(clients[0].got)
    assert set(got) == set(range(count))  # nothing lost
    doubled = {n for n in got if got.count(n) > 1}
    assert doubled <= set(held), (doubled, held)  # only the unacknowledged twice
    # In the new epoch each session's first handler call is its client's register.
    first: dict[str, Any] = {}
    for _, epoch, sid, data in logged:
        if epoch == epochs[1]:
            first.setdefault(sid, data)
    assert sorted(d["register"] for d in first.values()) == [0, 1]


def test_a_dead_hubs_sessions_are_stale_then_gone_on_the_other_hub(
        redis_server: RedisServer) -> None:
    redis_server.start()

    async def main() -> None:
        a = ClusterHub(free_port(), redis_server.url, "--expire-after", "1.0")
        b = ClusterHub(free_port(), redis_server.url, "--expire-after", "1.0")
        await a.start()
        await b.start()
        try:
            async with Balancer([a.port]) as balancer:  # the client can reach A only
                client = Client(balancer.url, 0)
                sid = await client.start()
                await until(lambda: b.presence_of(sid) == ["present"],
                            what="B hears that A's client is present")
                await until(lambda: client.link.statistics()["outbox_depth"] == 0,
                            what="A acknowledged the register")
                await a.kill()
                await until(lambda: b.presence_of(sid) == ["present", "stale", "gone"],
                            timeout=8, what="B shows it stale, then gone")
                await client.stop()
        finally:
            await a.kill()
            await b.kill()

    run(main, timeout=20)
