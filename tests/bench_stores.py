"""The session stores and the many-hubs path (issue 12): ``python -m tests.bench stores``.

* **deliveries/s per store**: one delivery is what the hub commits for a client message
  whose handler sent one reply: ``last_in`` advanced, the reply appended (numbered by
  the store), the client's previous acknowledgement trimmed, with the checks the hub
  asks of that store (a Redis commit carries the fencing generation, the epoch, the
  floors, the outbox bounds and a commit id). Measured with 1 session at a time and
  with 16 sessions in flight (16 tasks, each committing its session's deliveries in
  order), for :class:`MemoryStore`, :class:`SQLiteStore` (``synchronous=FULL``, WAL) and
  :class:`RedisStore` (a local ``redis-server`` with the append-only file, fsync
  ``everysec`` and ``always``).
* **cross-hub send latency**: two hubs on one Redis (``everysec``), in this process; a
  client holds its session on hub A; hub B calls ``await hub.send(sid, ...)`` 400 times,
  10 ms apart; latency is from the call to the client's receipt of the frame (p50,
  p99), with the poke on (the normal path) and off (the holder's polling read only:
  what a lost poke costs).

Skips the Redis rows, saying why, without ``redis-server`` or redis-py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from adapters.hub import Hub, serve
from adapters.stores import Commit, MemoryStore, SessionStore, SQLiteStore
from fsm import protocol
from fsm.protocol import Hello, Msg, Welcome
from tests.cluster import CLUSTER_HB
from tests.redis_server import REDIS_SERVER, RedisServer

REPLY = json.dumps({"echo": "x" * 200})


async def deliveries(store: SessionStore, in_flight: int, seconds: float) -> float:
    """Deliveries per second with ``in_flight`` sessions committing concurrently."""
    shared = getattr(store, "shared", False)
    sessions = [(await store.create(time.time()))[0] for _ in range(in_flight)]
    done = 0
    stop = time.perf_counter() + seconds

    async def one(record: Any) -> None:
        nonlocal done
        sid, seq = record.session_id, 0
        while time.perf_counter() < stop:
            seq += 1
            await store.commit(Commit(
                now=time.time(), inbound=(sid, seq), sends=[(sid, REPLY)],
                acked={sid: seq - 1} if seq > 1 else {}, generation=record.generation,
                epoch=store.epoch, floors={sid: seq} if shared else {},
                limits=(1000, 16 * 2**20) if shared else None,
                commit_id=f"{sid}-{seq}" if shared else None))
            done += 1

    began = time.perf_counter()
    await asyncio.gather(*(one(r) for r in sessions))
    return done / (time.perf_counter() - began)


async def _stores(directory: Path, seconds: float) -> list[tuple[str, int, float]]:
    rows: list[tuple[str, int, float]] = []
    for in_flight in (1, 16):
        memory = MemoryStore()
        rows.append(("memory", in_flight, await deliveries(memory, in_flight, seconds)))
        sqlite = SQLiteStore(directory / f"bench-{in_flight}.sqlite")
        try:
            rows.append(("sqlite FULL", in_flight, await deliveries(sqlite, in_flight,
                                                                    seconds)))
        finally:
            await sqlite.aclose()
    if REDIS_SERVER is None:
        print("  (redis rows skipped: redis-server is not installed)")
        return rows
    from adapters.stores.redis import RedisStore

    for fsync in ("everysec", "always"):
        server = RedisServer(directory / f"redis-{fsync}", persistence=fsync)
        server.start()
        try:
            for in_flight in (1, 16):
                store = await RedisStore.connect(server.url, connections=32)
                try:
                    rows.append((f"redis AOF {fsync}", in_flight,
                                 await deliveries(store, in_flight, seconds)))
                finally:
                    await store.aclose()
        finally:
            server.kill()
    return rows


async def cross_hub(url: str, count: int, *, poke: bool) -> list[float]:
    """Latency (seconds) of ``await hub_b.send(sid)`` to the frame at a client of A."""
    from adapters.stores.redis import RedisStore

    prefix = f"bench-{'poke' if poke else 'poll'}"
    stores = [await RedisStore.connect(url, prefix=prefix, liveness=0.6)
              for _ in range(2)]
    if not poke:  # the holder learns only from its polling read
        for store in stores:
            store._tell = lambda event: None  # type: ignore[method-assign]
    hubs: list[Hub] = [await serve(lambda session, data: None, store=s,
                                   heartbeat=CLUSTER_HB) for s in stores]
    a, b = hubs
    latencies: list[float] = []
    try:
        async with connect(f"ws://127.0.0.1:{a.port}/", ping_interval=None) as ws:
            await ws.send(protocol.encode(Hello(ack=0)))
            welcome = protocol.decode(await ws.recv())
            assert isinstance(welcome, Welcome)
            sent_at: dict[int, float] = {}

            async def read() -> None:
                while len(latencies) < count:
                    frame = protocol.decode(await ws.recv())
                    if isinstance(frame, Msg):
                        latencies.append(time.perf_counter() - sent_at[frame.data])
                        await ws.send(f'{{"type":"ack","ack":{frame.seq}}}')

            reader = asyncio.create_task(read())
            for k in range(count):
                sent_at[k] = time.perf_counter()
                await b.send(welcome.session, k)
                await asyncio.sleep(0.01)
            await asyncio.wait_for(reader, 10)
    finally:
        for hub in hubs:
            await hub.close()
        for store in stores:
            await store.aclose()
    return latencies


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def _all(seconds: float, count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="tether-bench-stores-") as name:
        directory = Path(name)
        print(f"deliveries/s ({seconds:g} s each; a delivery: last_in, one 214-byte reply "
              f"numbered by the store, the previous ack trimmed):")
        print(f"  {'store':<20} {'1 session':>12} {'16 in flight':>14}")
        rows = await _stores(directory, seconds)
        for name_ in dict.fromkeys(n for n, _, _ in rows):
            one = next(r for n, k, r in rows if n == name_ and k == 1)
            many = next(r for n, k, r in rows if n == name_ and k == 16)
            print(f"  {name_:<20} {one:>12,.0f} {many:>14,.0f}")
        if REDIS_SERVER is None:
            return
        server = RedisServer(directory / "redis-hubs", persistence="everysec")
        server.start()
        try:
            print(f"cross-hub hub.send latency, two hubs in this process, {count} sends "
                  f"10 ms apart (AOF everysec):")
            for poke in (True, False):
                latencies = await cross_hub(server.url, count, poke=poke)
                print(f"  {'poke (normal)' if poke else 'no poke (polling read)':<24} "
                      f"p50 {1000 * statistics.median(latencies):6.2f} ms   "
                      f"p99 {1000 * _percentile(latencies, 99):6.2f} ms   "
                      f"max {1000 * max(latencies):6.2f} ms")
        finally:
            server.kill()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench_stores", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--count", type=int, default=400)
    args = parser.parse_args([] if argv is None else list(argv))
    asyncio.run(_all(args.seconds, args.count))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
