"""Issue 7 section 7 (the hub's part): arguments accepted silently before now fail at
once, naming the argument and what is allowed; and ``tether hub --token-file``.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from adapters.hub import HandshakeRequest, Limits, Refuse, TokenFile, serve
from adapters.stores import MemoryStore
from fsm import Heartbeat
from tests.test_hub import REPO, Peer, _kill, run

pytestmark = pytest.mark.realsocket


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tether-hub-args-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize(("options", "error", "words"), [
    ({"max_frame": 10}, ValueError, "Limits.max_frame must be an int >= 512, got 10"),
    ({"max_frame": 2.5e6}, TypeError, "Limits.max_frame must be an int"),
    ({"max_inflight": True}, TypeError, "Limits.max_inflight must be an int >= 1, got bool"),
    ({"outbox": 0}, ValueError, "Limits.outbox must be an int >= 1, got 0"),
    ({"hello_timeout": math.nan}, ValueError, "Limits.hello_timeout must be a finite number"),
    ({"retry_after": math.inf}, ValueError, "Limits.retry_after must be a finite number"),
    ({"handshake_timeout": 0}, ValueError, "Limits.handshake_timeout must be a finite"),
    ({"expire_empty": "10"}, TypeError, "Limits.expire_empty must be a finite number"),
    ({"outbox_bytes": 1000}, ValueError, "Limits.outbox_bytes (1000) must be at least "
                                         "max_frame"),
    ({"read_ahead": 1000}, ValueError, "Limits.read_ahead (1000) must be at least max_frame"),
])
def test_limits_refuse_what_cannot_work(options: dict[str, Any], error: type[Exception],
                                        words: str) -> None:
    with pytest.raises(error) as caught:
        Limits(**options)
    assert words in str(caught.value)


def _noop(session: Any, data: Any) -> None:
    pass


@pytest.mark.parametrize(("options", "error", "words"), [
    ({"handler": None}, TypeError, "serve(handler=...) must be callable"),
    ({"ack_every": 0}, ValueError, "serve(ack_every=...) must be an int >= 1, got 0"),
    ({"ack_every": 2.0}, TypeError, "serve(ack_every=...) must be an int"),
    ({"ack_delay": -1}, ValueError, "serve(ack_delay=...) must be a finite number of seconds "
                                    ">= 0, got -1"),
    ({"ack_delay": math.nan}, ValueError, "serve(ack_delay=...)"),
    ({"expire_after": math.inf}, ValueError, "serve(expire_after=...) must be a finite"),
    ({"expire_after": 0}, ValueError, "serve(expire_after=...)"),
    ({"port": -1}, ValueError, "serve(port=...) must be an int in 0..65535"),
    ({"port": True}, ValueError, "serve(port=...)"),
    ({"host": 127}, TypeError, "serve(host=...) must be a str"),
    ({"heartbeat": (1, 1)}, TypeError, "serve(heartbeat=...) must be a fsm.Heartbeat"),
    ({"limits": {"max_frame": 1024}}, TypeError, "serve(limits=...) must be an "
                                                 "adapters.hub.Limits"),
    ({"ssl": True}, TypeError, "serve(ssl=...) must be an ssl.SSLContext"),
    ({"authenticate": "tokens.txt"}, TypeError, "serve(authenticate=...) must be callable"),
    ({"store": object()}, TypeError, "serve(store=...): object.create must be an async"),
])
def test_serve_refuses_bad_arguments_naming_them(options: dict[str, Any],
                                                 error: type[Exception], words: str) -> None:
    handler = options.pop("handler", _noop)

    async def main() -> None:
        with pytest.raises(error) as caught:
            await serve(handler, **options)
        assert words in str(caught.value)

    run(main())


def test_a_store_of_the_old_synchronous_interface_is_refused_with_a_pointer() -> None:
    class OldStore(MemoryStore):
        def commit(self, commit: Any) -> None:  # type: ignore[override]
            pass

    async def main() -> None:
        with pytest.raises(TypeError, match=r"OldStore.commit must be an async method "
                                            r"\(the store interface is asynchronous"):
            await serve(_noop, store=OldStore())  # type: ignore[arg-type]

    run(main())


def test_send_after_close_and_on_presence_with_a_non_callable() -> None:
    async def main() -> None:
        hub = await serve(_noop, heartbeat=Heartbeat(interval=1, timeout=1))
        with pytest.raises(TypeError, match="on_presence"):
            hub.on_presence("print")  # type: ignore[arg-type]
        await hub.close()
        with pytest.raises(RuntimeError, match=r"hub.send\(\) after hub.close\(\)"):
            hub.send("any", 1)
        await hub.close()  # twice is fine

    run(main())


def test_refuse_takes_401_or_403_only() -> None:
    assert Refuse(403, "no").status == 403
    with pytest.raises(ValueError, match="401 or 403"):
        Refuse(500)


# -- the token file ----------------------------------------------------------------------------


def _request(headers: dict[str, str]) -> HandshakeRequest:
    return HandshakeRequest(path="/", headers=headers, address="127.0.0.1", port=1)


def test_token_file_format_and_lookup(workdir: Path) -> None:
    path = workdir / "tokens"
    path.write_text("# who  token\nalice  aaaaaaaaaaaaaaaa1111  # laptop\n"
                    "alice\tbbbbbbbbbbbbbbbb2222\n\nbob cccccccccccccccc3333\n")
    tokens = TokenFile(path)
    assert tokens.principals == {"alice", "bob"}
    assert tokens(_request({"Authorization": "Bearer bbbbbbbbbbbbbbbb2222"})) == "alice"
    assert tokens(_request({"Authorization": "bearer cccccccccccccccc3333"})) == "bob"
    assert tokens(_request({"Authorization": "Bearer cccccccccccccccc333"})) is None
    assert tokens(_request({"Authorization": "Basic cccccccccccccccc3333"})) is None
    assert tokens(_request({})) is None
    assert "aaaa" not in repr(tokens) and "alice" in repr(tokens)


@pytest.mark.parametrize(("text", "words"), [
    ("", "no tokens"),
    ("alice\n", "line 1: expected 'PRINCIPAL TOKEN', got 1 fields"),
    ("alice short\n", "line 1: the token of alice is shorter than 16 characters"),
    ("al ice aaaaaaaaaaaaaaaaaaaa\n", "line 1: expected 'PRINCIPAL TOKEN', got 3 fields"),
    ("a/b aaaaaaaaaaaaaaaaaaaa\n", "line 1: principal must be"),
    ("a aaaaaaaaaaaaaaaaaaaa\nb aaaaaaaaaaaaaaaaaaaa\n", "line 2: this token is already"),
])
def test_token_file_mistakes_are_named_without_the_token(workdir: Path, text: str,
                                                         words: str) -> None:
    path = workdir / "tokens"
    path.write_text(text)
    with pytest.raises(ValueError) as caught:
        TokenFile(path)
    assert words in str(caught.value)
    assert "aaaaaaaaaaaaaaaaaaaa" not in str(caught.value)


def test_token_file_that_cannot_be_read(workdir: Path) -> None:
    with pytest.raises(ValueError, match="cannot read it"):
        TokenFile(workdir / "missing")


def test_tether_hub_token_file_authenticates_and_never_logs_a_token(workdir: Path) -> None:
    secret = "s3cret-0123456789abcdefghij"
    path = workdir / "tokens"
    path.write_text(f"alice {secret}\n")
    err = workdir / "hub.err"

    async def main() -> None:
        with err.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "adapters.cli", "hub", "--port", "0", "--echo",
                "--token-file", str(path), "--log-level", "DEBUG", cwd=REPO,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=stderr)
        try:
            assert process.stdout is not None
            port = int((await asyncio.wait_for(process.stdout.readline(), 10)).split()[1])
            from websockets.asyncio.client import connect

            with pytest.raises(InvalidStatus) as refused:
                await connect(f"ws://127.0.0.1:{port}/?access_token=x",
                              additional_headers={"Authorization": "Bearer wrong-token-123456"})
            assert refused.value.response.status_code == 401
            ws = await connect(f"ws://127.0.0.1:{port}/",
                               additional_headers={"Authorization": f"Bearer {secret}"})
            peer = Peer(ws)
            await peer.hello()
            await peer.close()
        finally:
            await _kill(process)

    run(main())
    log = err.read_text()
    assert "1 principals from" in log and "new session" in log  # we did log, at DEBUG
    assert secret not in log and secret[:12] not in log


def test_tether_hub_refuses_a_bad_token_file(workdir: Path) -> None:
    path = workdir / "tokens"
    path.write_text("alice short\n")
    result = subprocess.run(
        [sys.executable, "-m", "adapters.cli", "hub", "--port", "0", "--token-file",
         str(path)], check=False, cwd=REPO, capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert "tether hub: token file" in result.stderr and "shorter than 16" in result.stderr


def test_tether_hub_names_a_bad_argument_and_a_busy_port() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        for argv, words in ((["--expire-after", "nan"], "serve(expire_after=...) must be"),
                            (["--port", str(port)], "address already in use")):
            result = subprocess.run(
                [sys.executable, "-m", "adapters.cli", "hub", *argv], check=False,
                cwd=REPO, capture_output=True, text=True, timeout=20)
            assert result.returncode == 2, result.stderr
            assert result.stderr.startswith("tether hub: ") and words in result.stderr
