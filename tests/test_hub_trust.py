"""Issue 7 section 3: the hub's trust boundary.

Before, ``serve()`` never saw the opening handshake, so nobody could be authenticated,
and an anonymous client filled every session slot from a few loopback addresses within
the hello rate; a real client then got ``busy`` for minutes. Now:

* ``serve(authenticate=...)`` sees the handshake (path, headers, address) and returns a
  principal or refuses with HTTP 401/403; sessions belong to their principal, and a
  resume must come from it; ``tether hub --token-file`` does this from a file;
* quotas per principal (per address when anonymous), empty sessions give way first and
  expire fast; caps on open and half-open sockets, in all and per address, enforced on
  accept; short handshake and hello timeouts; hellos rate-limited per principal;
* repeated log lines are rate-limited, so a flood (or running out of file descriptors)
  is not a log flood.

The two-client test runs an attacker at full rate in another process (many sockets
from 127.0.0.2-9, half with a valid token of its own) against an authenticated client.

``python -m tests.test_hub_trust attack PORT SECONDS`` runs that attacker alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import resource
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from adapters.hub import HandshakeRequest, Hub, Limits, Presence, Refuse, serve
from adapters.hub.guard import RateLimitedLog
from adapters.stores import SQLiteStore
from fsm import Backoff, Heartbeat, State
from fsm.protocol import Ack, Hello, Msg
from tests.test_hub import REPO, Peer, run

pytestmark = pytest.mark.realsocket

ALICE = "alice-token-0123456789abcdef"
MALLORY = "mallory-token-0123456789abcdef"
TOKENS = {ALICE: "alice", MALLORY: "mallory"}


def by_token(request: HandshakeRequest) -> str | None:
    token = request.bearer()
    return TOKENS.get(token) if token is not None else None


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tether-hub-trust-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def open_peer(port: int, token: str | None = None, local: str | None = None) -> Peer:
    options: dict[str, Any] = {}
    if local is not None:
        options["local_addr"] = (local, 0)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else None
    ws = await ws_connect(f"ws://127.0.0.1:{port}/", ping_interval=None, open_timeout=2,
                          close_timeout=0.5, additional_headers=headers, **options)
    return Peer(ws)


# -- authenticate ----------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_authenticate_sees_the_handshake_and_names_the_principal(flavour: str) -> None:
    seen: list[HandshakeRequest] = []

    def check(request: HandshakeRequest) -> str | None:
        seen.append(request)
        if request.path == "/forbidden":
            raise Refuse(403, "not on this path")
        return by_token(request)

    async def acheck(request: HandshakeRequest) -> str | None:
        await asyncio.sleep(0)
        return check(request)

    async def main() -> None:
        hub = await serve(lambda session, data: session.send(session.principal),
                          authenticate=check if flavour == "sync" else acheck)
        try:
            peer = await open_peer(hub.port, ALICE)
            welcome = await peer.hello()
            assert hub.sessions[welcome.session].principal == "alice"
            await peer.send(Msg(seq=1, ack=0, data="who am i"))
            assert (await peer.recv()) == Msg(seq=1, ack=1, data="alice")
            assert seen[-1].path == "/" and seen[-1].address == "127.0.0.1"
            assert ALICE not in repr(seen[-1])  # headers stay out of the repr
            await peer.close()
            with pytest.raises(InvalidStatus) as refused:
                await open_peer(hub.port, "wrong-token-0123456789")
            assert refused.value.response.status_code == 401
            assert "Bearer" in refused.value.response.headers.get("WWW-Authenticate", "")
            with pytest.raises(InvalidStatus) as refused:
                await open_peer(hub.port)  # no token at all
            assert refused.value.response.status_code == 401
            with pytest.raises(InvalidStatus) as refused:
                await ws_connect(f"ws://127.0.0.1:{hub.port}/forbidden",
                                 additional_headers={"Authorization": f"Bearer {ALICE}"})
            assert refused.value.response.status_code == 403
            assert b"not on this path" in refused.value.response.body
            assert len(hub.sessions) == 1
        finally:
            await hub.close()

    run(main())


def test_the_client_fails_on_401_naming_it() -> None:
    from adapters.websocket import connect

    async def main() -> None:
        hub = await serve(lambda session, data: None, authenticate=by_token)
        try:
            link = connect(f"ws://127.0.0.1:{hub.port}/", session=True,
                           headers={"Authorization": "Bearer stolen-0123456789abcdef"},
                           backoff=Backoff(initial=0.05, cap=0.1))
            async with link:
                await link.wait_for(State.FAILED, timeout=5)
                assert "401" in (link.reason or ""), link.reason
        finally:
            await hub.close()

    run(main())


def test_a_broken_authenticate_is_a_500_and_the_hub_serves_on(
        caplog: pytest.LogCaptureFixture) -> None:
    calls = Counter[str]()

    def flaky(request: HandshakeRequest) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyError("the user database")
        if calls["n"] == 2:
            return 42  # not a principal
        return "bob"

    async def main() -> None:
        hub = await serve(lambda session, data: None, authenticate=flaky)
        try:
            for _ in range(2):
                with pytest.raises(InvalidStatus) as refused:
                    await open_peer(hub.port)
                assert refused.value.response.status_code == 500
            peer = await open_peer(hub.port)
            assert not (await peer.hello()).resumed
            await peer.close()
        finally:
            await hub.close()

    with caplog.at_level(logging.ERROR, logger="tether.hub"):
        run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert any("authenticate raised" in m for m in messages), messages
    assert any("returned int, not a principal" in m for m in messages), messages


def test_a_session_resumes_only_for_its_principal_and_the_principal_persists(
        workdir: Path) -> None:
    path = workdir / "hub.sqlite"

    async def main() -> None:
        store = SQLiteStore(path)
        hub = await serve(lambda session, data: None, store=store, authenticate=by_token)
        alice = await open_peer(hub.port, ALICE)
        welcome = await alice.hello()
        await alice.send(Msg(seq=1, ack=0, data="mine"))
        assert await alice.recv() == Ack(ack=1)
        # Mallory has a valid token of her own and Alice's session id and resume token.
        thief = await open_peer(hub.port, MALLORY)
        await thief.send(Hello(ack=0, session=alice.session, token=alice.token))
        error = await thief.error()
        assert error.code == "unauthorized" and "another principal" in error.message
        assert hub.sessions[welcome.session].connected  # untouched
        await alice.close()
        await hub.close()
        await store.aclose()

        store = SQLiteStore(path)  # a restart: the principal came back from the file
        hub = await serve(lambda session, data: None, store=store, authenticate=by_token)
        assert hub.sessions[welcome.session].principal == "alice"
        thief = await open_peer(hub.port, MALLORY)
        await thief.send(Hello(ack=1, session=alice.session, token=alice.token))
        assert (await thief.error()).code == "unauthorized"
        again = await open_peer(hub.port, ALICE)
        assert (await again.hello(alice.session, alice.token, ack=0)).resumed
        await again.close()
        await hub.close()
        await store.aclose()

    run(main())


# -- quotas ------------------------------------------------------------------------------------


def test_sessions_per_principal_empty_ones_give_way_first() -> None:
    async def main() -> None:
        limits = Limits(sessions_per_owner=2, hello_rate=1000)
        hub = await serve(lambda session, data: None, authenticate=by_token, limits=limits)
        try:
            busy = await open_peer(hub.port, MALLORY)  # delivers: not forgettable
            kept = (await busy.hello()).session
            await busy.send(Msg(seq=1, ack=0, data="x"))
            assert await busy.recv() == Ack(ack=1)
            await busy.close()
            empty = await open_peer(hub.port, MALLORY)
            forgettable = (await empty.hello()).session
            await empty.close()
            while hub.sessions[forgettable].connected:
                await asyncio.sleep(0.01)
            third = await open_peer(hub.port, MALLORY)  # at the cap: the empty one goes
            newest = (await third.hello()).session
            assert set(hub.sessions) == {kept, newest}
            fourth = await open_peer(hub.port, MALLORY)  # both held: busy
            await fourth.send(Hello(ack=0))
            error = await fourth.error()
            assert error.code == "busy" and "principal mallory" in error.message
            alice = await open_peer(hub.port, ALICE)  # another principal is not affected
            await alice.hello()
            await alice.close()
            await third.close()
        finally:
            await hub.close()

    run(main())


def test_anonymous_hubs_count_sessions_per_address() -> None:
    async def main() -> None:
        hub = await serve(lambda session, data: None,
                          limits=Limits(sessions_per_owner=1, hello_rate=1000))
        try:
            first = await open_peer(hub.port)
            await first.hello()
            second = await open_peer(hub.port)
            await second.send(Hello(ack=0))
            error = await second.error()
            assert error.code == "busy" and "address 127.0.0.1" in error.message
            other = await open_peer(hub.port, local="127.0.0.2")
            await other.hello()
            await other.close()
            await first.close()
        finally:
            await hub.close()

    run(main())


def test_a_session_holding_a_message_is_never_forgotten_to_make_room() -> None:
    """Empty means nothing delivered either way: a message sent to the session (outside
    any handler) while its client is away makes it worth keeping."""
    async def main() -> None:
        hub = await serve(lambda session, data: None,
                          limits=Limits(sessions_per_owner=1, hello_rate=1000))
        try:
            first = await open_peer(hub.port)
            sid = (await first.hello()).session
            await first.close()
            while hub.sessions[sid].connected:
                await asyncio.sleep(0.01)
            await hub.send(sid, "for when you are back")
            second = await open_peer(hub.port)
            await second.send(Hello(ack=0))
            assert (await second.error()).code == "busy"
            again = await open_peer(hub.port)
            assert (await again.hello(sid, first.token)).resumed
            assert (await again.recv()) == Msg(seq=1, ack=0, data="for when you are back")
            await again.close()
        finally:
            await hub.close()

    run(main())


def test_a_session_that_never_delivered_anything_expires_fast() -> None:
    async def main() -> None:
        heartbeat = Heartbeat(interval=0.1, timeout=0.1)
        hub = await serve(lambda session, data: None, heartbeat=heartbeat,
                          expire_after=60.0, limits=Limits(expire_empty=0.2))
        changes: list[tuple[str, Presence, Presence]] = []
        hub.on_presence(lambda sid, old, new: changes.append((sid, old, new)))
        try:
            idle, worked = await Peer.open(hub.port), await Peer.open(hub.port)
            idle_id, worked_id = (await idle.hello()).session, (await worked.hello()).session
            await worked.send(Msg(seq=1, ack=0, data="x"))
            await worked.recv_until(lambda f: getattr(f, "ack", 0) == 1)
            await idle.close()
            await worked.close()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3
            while idle_id in hub.sessions:
                assert loop.time() < deadline
                await asyncio.sleep(0.02)
            assert (idle_id, Presence.STALE, Presence.GONE) in changes
            assert hub.presence[worked_id] is Presence.STALE  # kept for expire_after
        finally:
            await hub.close()

    run(main())


def test_hellos_are_rate_limited_per_principal_when_authenticating() -> None:
    async def main() -> None:
        hub = await serve(lambda session, data: None, authenticate=by_token,
                          limits=Limits(hello_rate=2))
        try:
            for _ in range(2):
                peer = await open_peer(hub.port, MALLORY)
                await peer.hello()
                await peer.close()
            flood = await open_peer(hub.port, MALLORY)
            await flood.send(Hello(ack=0))
            error = await flood.error()
            assert error.code == "busy" and "principal mallory" in error.message
            alice = await open_peer(hub.port, ALICE)  # same address, another principal
            await alice.hello()
            await alice.close()
        finally:
            await hub.close()

    run(main())


# -- sockets -----------------------------------------------------------------------------------


async def raw_socket(port: int, local: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((local, 0))
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            data = await loop.sock_recv(sock, 1024)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return data == b""


def test_half_open_sockets_are_capped_per_address_and_time_out() -> None:
    """Sockets that never send a request hold a half-open slot until the handshake
    timeout; over the per-address cap they are dropped on accept; another address and
    a socket that completes its hello are not affected."""
    async def main() -> None:
        limits = Limits(half_open_per_address=3, handshake_timeout=0.5)
        hub = await serve(lambda session, data: None, limits=limits)
        try:
            silent = [await raw_socket(hub.port) for _ in range(3)]
            await asyncio.sleep(0.05)
            assert hub._guard.half_open == 3
            extra = await raw_socket(hub.port)
            assert await closed_by_peer(extra, 1.0)  # dropped on accept
            other = await open_peer(hub.port, local="127.0.0.2")
            await other.hello()
            assert hub._guard.half_open == 3  # answered: no longer half-open
            for sock in silent:  # the handshake timeout ends them
                assert await closed_by_peer(sock, 2.0)
            await asyncio.sleep(0.05)
            assert hub._guard.half_open == 0
            again = await open_peer(hub.port)
            await again.hello()
            await again.close()
            await other.close()
            for sock in [*silent, extra]:
                sock.close()
        finally:
            await hub.close()

    run(main())


def test_open_sockets_are_capped_in_all_and_per_address() -> None:
    async def main() -> None:
        limits = Limits(max_connections=4, connections_per_address=2)
        hub = await serve(lambda session, data: None, limits=limits)
        try:
            assert hub.max_connections == 4
            held = [await open_peer(hub.port) for _ in range(2)]
            for peer in held:
                await peer.hello()
            with pytest.raises((InvalidHandshake, OSError, TimeoutError)):
                await open_peer(hub.port)  # a third from 127.0.0.1
            others = [await open_peer(hub.port, local=f"127.0.0.{n}") for n in (2, 3)]
            with pytest.raises((InvalidHandshake, OSError, TimeoutError)):
                await open_peer(hub.port, local="127.0.0.4")  # five in all
            for peer in [*held, *others]:
                await peer.close()
            await asyncio.sleep(0.05)
            assert hub._guard.open == 0
        finally:
            await hub.close()

    run(main())


def test_the_connection_cap_stays_below_the_file_descriptor_limit() -> None:
    from adapters.hub.guard import connection_cap

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        assert connection_cap(10_000) == 256 - 32
        assert connection_cap(100) == 100
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_repeated_log_lines_are_rate_limited() -> None:
    log = logging.getLogger("tether.test.calm")
    log.propagate = False
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    log.addHandler(handler)
    calm = RateLimitedLog(burst=3, period=0.2)
    log.addFilter(calm)
    try:
        for n in range(100):
            log.warning("! %s: dropped", n)
        log.warning("! another template")
        assert [r.getMessage() for r in records] == [
            "! 0: dropped", "! 1: dropped", "! 2: dropped", "! another template"]
        time.sleep(0.25)
        log.warning("! %s: dropped", "late")
        assert records[-1].getMessage() == "! late: dropped [97 more like this held back]"
    finally:
        log.removeHandler(handler)
        log.removeFilter(calm)


def test_the_hubs_websockets_lines_keep_the_clients_secret_filters() -> None:
    """websockets logs the hub's handshakes on ``tether.wire.hub``: every filter of the
    shared ``tether.wire`` logger (no frame contents, no credentials) applies there too,
    plus the hub's rate limit."""
    from adapters.hub.server import hub_wire_logger
    from adapters.websocket import wire_logger

    assert wire_logger.filters
    assert all(f in hub_wire_logger.filters for f in wire_logger.filters)
    assert any(isinstance(f, RateLimitedLog) for f in hub_wire_logger.filters)


def test_running_out_of_file_descriptors_is_not_a_log_flood(workdir: Path) -> None:
    """A hub whose file descriptor limit is cut to 40 under it (prlimit) while sockets
    pour in from eight addresses: asyncio's accept errors and the hub's refusals come a
    few lines at a time, and the hub serves again once the flood is over."""
    if not hasattr(resource, "prlimit"):
        pytest.skip("needs resource.prlimit (Linux)")
    err = workdir / "hub.err"

    async def main() -> None:
        with err.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "adapters.cli", "hub", "--port", "0",
                "--log-level", "INFO", cwd=REPO, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=stderr)
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 10)
            port = int(line.split()[1])
            resource.prlimit(process.pid, resource.RLIMIT_NOFILE, (40, 4096))
            started = err.stat().st_size
            socks: list[socket.socket] = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 2.0
            while loop.time() < deadline:
                for n in range(8):
                    with contextlib.suppress(OSError):
                        socks.append(await raw_socket(port, f"127.0.0.{2 + n}"))
                await asyncio.sleep(0.01)
            lines = err.read_bytes()[started:].decode().splitlines()
            records = [x for x in lines if x.startswith("hub ")]
            assert len(socks) > 80  # the flood happened
            print(f"\n{len(socks)} sockets, {len(records)} log records:", *records, sep="\n")
            assert len(records) < 60, "\n".join(records[:80])
            for sock in socks:
                sock.close()
            resource.prlimit(process.pid, resource.RLIMIT_NOFILE, (1024, 4096))
            await asyncio.sleep(1.2)  # asyncio pauses accepting 1 s after EMFILE
            peer = await Peer.open(port)
            await peer.hello()
            await peer.close()
        finally:
            process.kill()
            await process.wait()

    run(main(), timeout=30)


# -- the two-client test -------------------------------------------------------------------------


async def attack(port: int, seconds: float) -> Counter[str]:
    """Full rate from 127.0.0.2-9: wrong tokens (401), Mallory's valid token (hello,
    then drop or hold the connection), and sockets that never speak (slowloris)."""
    counts: Counter[str] = Counter()
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds
    held: list[Any] = []

    async def worker(index: int) -> None:
        rng = random.Random(index)
        local = f"127.0.0.{2 + index % 8}"
        while loop.time() < stop:
            mode = ("wrong", "mallory", "mallory", "slow")[index % 4]
            try:
                if mode == "slow":
                    sock = await raw_socket(port, local)
                    held.append(sock)
                    counts["slow"] += 1
                    await asyncio.sleep(0.5)
                    continue
                token = MALLORY if mode == "mallory" else f"wrong-{rng.random()}"
                peer = await open_peer(port, token, local)
                await peer.send(Hello(ack=0))
                frame = await peer.recv()
                counts[f"{mode} {type(frame).__name__.lower()}"] += 1
                if rng.random() < 0.2:
                    held.append(peer.ws)  # keep it open
                else:
                    peer.ws.transport.abort()
            except InvalidStatus as error:
                counts[f"{mode} http {error.response.status_code}"] += 1
            except (OSError, ConnectionClosed, TimeoutError) as error:
                counts[f"{mode} {type(error).__name__}"] += 1
                await asyncio.sleep(0.01)

    await asyncio.gather(*(worker(i) for i in range(48)))
    return counts


async def _attack_main(port: int, seconds: float) -> None:
    print("attacking", flush=True)
    counts = await attack(port, seconds)
    print(json.dumps(counts), flush=True)


def test_an_attacker_at_full_rate_cannot_keep_an_authenticated_client_out() -> None:
    """Every time the honest client connects during the attack it is online within one
    backoff cycle: at most two dials, and its messages go through."""
    from adapters.websocket import connect

    async def main() -> None:
        hub: Hub = await serve(lambda session, data: session.send(data),
                               authenticate=by_token)
        attacker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.test_hub_trust", "attack", str(hub.port), "4",
            cwd=REPO, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE)
        try:
            assert attacker.stdout is not None
            assert (await asyncio.wait_for(attacker.stdout.readline(), 10)) == b"attacking\n"
            await asyncio.sleep(1.0)  # under way
            timings: list[tuple[float, int]] = []
            for round_ in range(3):
                began = time.monotonic()
                link = connect(f"ws://127.0.0.1:{hub.port}/", session=True,
                               headers={"Authorization": f"Bearer {ALICE}"},
                               heartbeat=Heartbeat(interval=1.0, timeout=1.0),
                               backoff=Backoff(initial=0.2, cap=1.0), handshake_timeout=2.0)
                async with link:
                    await link.wait_for(State.ONLINE, timeout=10)
                    online = time.monotonic() - began
                    await link.send({"round": round_})
                    assert await asyncio.wait_for(link.receive(), 5) == {"round": round_}
                    attempts = link.statistics()["attempts"]
                    timings.append((online, attempts))
                    assert attempts <= 2, (round_, attempts, link.reason)
                await asyncio.sleep(0.3)
            output = await asyncio.wait_for(attacker.stdout.read(), 15)
            counts = json.loads(output.splitlines()[-1])
            print(f"\nhonest client online after (s, dials): {timings}; attacker: {counts}")
            assert sum(counts.values()) > 500  # it did attack
            assert counts.get("wrong http 401", 0) > 0
            alice = [s for s in hub.sessions.values() if s.principal == "alice"]
            mallory = [s for s in hub.sessions.values() if s.principal == "mallory"]
            assert len(alice) == 3 and len(mallory) <= hub.limits.sessions_per_owner
        finally:
            with contextlib.suppress(ProcessLookupError):
                attacker.kill()
            await attacker.wait()
            await hub.close()

    run(main(), timeout=40)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 3 or args[0] != "attack":
        print("usage: python -m tests.test_hub_trust attack PORT SECONDS", file=sys.stderr)
        return 2
    asyncio.run(_attack_main(int(args[1]), float(args[2])))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
