"""Client memory with an application that does not read (issue 7): ``python -m tests.bench
memory``.

A server in another process offers 150,000 messages of 1 KB as fast as TCP lets it; the
client's application never reads. Before issue 7 the link read everything into an
unbounded queue (plain mode) and, in session mode, acknowledged it on arrival: +208 MB
for 155,393 unread messages. Now the inbound queue is bounded and the reader stops, so
the client grows by about its bound (``inbound_bytes`` 16 MiB by default, here also shown
with 1 MiB) and the server is held back by TCP. Printed: the client's resident memory
before and after, and how many messages the server managed to write.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from adapters.websocket import connect
from fsm import Heartbeat, State

COUNT = 150_000
SIZE = 1024
SETTLE = 8.0  # seconds of flood with nobody reading

SERVER = textwrap.dedent(f"""
    import asyncio, sys
    from websockets.asyncio.server import serve

    async def flood(ws):
        payload = "x" * {SIZE}
        for n in range({COUNT}):
            await ws.send(payload)
            if n % 1000 == 0:
                print("sent", n, flush=True)
        print("sent", {COUNT}, flush=True)
        await ws.wait_closed()

    async def main():
        async with serve(flood, "127.0.0.1", 0, ping_interval=None, max_queue=16) as server:
            print("port", server.sockets[0].getsockname()[1], flush=True)
            await asyncio.Future()

    asyncio.run(main())
""")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def measure(inbound_bytes: int | None) -> tuple[float, float, int, int, str]:
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[1])
        sent = 0

        async def follow() -> None:
            nonlocal sent
            assert server.stdout is not None
            loop = asyncio.get_running_loop()
            while True:
                line = await loop.run_in_executor(None, server.stdout.readline)
                if not line:
                    return
                sent = int(line.split()[1])

        follower = asyncio.ensure_future(follow())
        options: dict[str, Any] = {} if inbound_bytes is None else {
            "inbound_bytes": inbound_bytes}
        before = rss_mb()
        async with connect(f"ws://127.0.0.1:{port}/", heartbeat=Heartbeat(30, 30),
                           **options) as link:
            await link.wait_for(State.ONLINE, timeout=5)
            await asyncio.sleep(SETTLE)
            after = rss_mb()
            stats = link.statistics()
            held, state = stats.get("inbound_depth", -1), link.state
        follower.cancel()
        return before, after, sent, held, str(state)
    finally:
        server.kill()
        with contextlib.suppress(Exception):
            server.wait(5)


def main() -> int:
    print(f"server offers {COUNT:,} messages of {SIZE} B; the application reads none for "
          f"{SETTLE:.0f} s")
    print(f"{'inbound_bytes':>14} {'RSS before':>11} {'RSS after':>10} {'growth':>8} "
          f"{'queued':>7} {'state':>7} {'server send() calls done':>25}")
    for bound in (None, 2**20):
        before, after, sent, held, state = asyncio.run(measure(bound))
        label = "16 MiB (dflt)" if bound is None else f"{bound // 2**20} MiB"
        print(f"{label:>14} {before:>9.1f} MB {after:>8.1f} MB {after - before:>+6.1f} MB "
              f"{held:>7,} {state:>7} {sent:>25,}")
    print("(the server's send() returns once websockets buffered the frame in the server "
          "process; the client holds only its queue)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
