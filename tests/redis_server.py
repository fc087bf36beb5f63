"""A real ``redis-server`` for the tests: a free loopback port, data in a temporary
directory, stopped by PID (SIGKILL to crash it, SIGTERM to stop it).

``REDIS_SERVER`` is the binary (``None`` when it is not installed: the tests that need it
skip, saying so; ``.ci/run`` installs it). :func:`redis_or_skip` is the pytest side.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["REDIS_SERVER", "RedisServer", "free_port", "redis_or_skip", "redis_prefix",
           "redis_server", "shared_redis"]

_PREFIXES = itertools.count()

REDIS_SERVER = shutil.which("redis-server")
SKIP_REASON = ("redis-server is not installed (apt-get install -y redis-server; .ci/run "
               "installs it)")


def redis_or_skip() -> None:
    """Skip the calling test when redis-server or redis-py is missing."""
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.skip("redis-py is not installed (pip install 'tether[redis]')")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process. ``persistence``: ``"none"`` (no RDB, no AOF: a restart
    is empty), ``"everysec"`` or ``"always"`` (AOF with that fsync policy)."""

    def __init__(self, directory: Path, *, persistence: str = "none",
                 policy: str = "noeviction", port: int | None = None) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError(SKIP_REASON)
        self.directory = directory
        self.persistence = persistence
        self.policy = policy
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __repr__(self) -> str:
        pid = self.process.pid if self.process else None
        return f"RedisServer(port={self.port}, persistence={self.persistence!r}, pid={pid})"

    def start(self, timeout: float = 5.0) -> None:
        assert REDIS_SERVER is not None
        self.kill()  # never two of ours on one directory
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--daemonize", "no",
                "--maxmemory-policy", self.policy, "--logfile", "redis.log",
                "--protected-mode", "no"]
        if self.persistence == "none":
            args += ["--appendonly", "no"]
        else:
            args += ["--appendonly", "yes", "--appendfsync", self.persistence]
        deadline = time.monotonic() + timeout
        while True:
            self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    break  # the port was taken meanwhile: try again
                if self._answers():
                    return
                time.sleep(0.02)
            else:
                self.kill()
                raise RuntimeError(f"{self!r} did not answer within {timeout} s; see "
                                   f"{self.directory / 'redis.log'}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as conn:
                conn.sendall(b"PING\r\n")
                reply = conn.recv(64)
        except OSError:
            return False
        return reply.startswith(b"+PONG")  # not -LOADING while it reads its AOF

    def command(self, *words: str) -> bytes:
        """One command, inline, on a fresh connection (for CONFIG, FLUSHALL, DEBUG)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as conn:
            conn.sendall((" ".join(words) + "\r\n").encode())
            return conn.recv(65536)

    def kill(self) -> None:
        """SIGKILL, by PID: Redis dies without writing anything more."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, which: int) -> None:
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, which)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server (no persistence) for the tests that do not kill it; each test
    keeps to its own key prefix (:func:`redis_prefix`)."""
    redis_or_skip()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own on :func:`shared_redis`."""
    return f"t{next(_PREFIXES)}-{request.node.name[:40]}".replace("[", "-").replace("]", "")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (not started: pick its persistence first),
    data in the test's temporary directory, killed at the end."""
    redis_or_skip()
    server = RedisServer(tmp_path / "redis")
    yield server
    server.kill()
