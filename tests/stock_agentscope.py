"""AgentScope 1.0.21's own Studio client, replicated for contrast (without AgentScope).

:class:`StockStudio` does what ``agentscope.init(studio_url=...)``,
``StudioUserInput`` and ``as_studio_forward_message_pre_print_hook`` do in AgentScope
1.0.21 (``agentscope/__init__.py``, ``agent/_user_input.py``, ``hooks/_studio_hooks.py``):
``requests.post`` to ``/trpc/registerRun`` once; a ``socketio.Client(reconnection=True,
reconnection_attempts=3, reconnection_delay=1, reconnection_delay_max=5)`` connected to
``/python`` with ``auth {run_id}``; a user-input request that raises ``RuntimeError`` when
not connected, posts ``/trpc/requestUserInput`` (3 immediate retries) and blocks on a
``threading.Event`` until ``forwardUserInput`` names it; messages posted with 3 immediate
retries, then dropped with a warning.

Two departures, both for the test harness and neither changing what the Studio sees:
``scale`` multiplies the reconnection delays (and the +-0.5 s jitter) so that a test can
replay the 7 s retry window in 0.7 s (``scale=0.1``); and the blocking wait polls every
50 ms so that :meth:`abandon` can free the thread at teardown (AgentScope waits forever).
Run :meth:`ask` in a thread: it blocks like the original (which blocks the event loop).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import requests
import socketio

__all__ = ["Abandoned", "StockStudio"]


class Abandoned(Exception):
    """The test gave up on a request the stock client would wait for forever."""


class StockStudio:
    def __init__(self, studio_url: str, run_id: str, *, project: str = "p",
                 name: str = "stock", scale: float = 1.0, max_retries: int = 3) -> None:
        self.studio_url = studio_url
        self.run_id = run_id
        self.project = project
        self.name = name
        self.max_retries = max_retries
        self.connected = False
        self.reconnecting = False
        self.gave_up_at: float | None = None
        self.reconnected_at: list[float] = []
        self.disconnected_at: list[float] = []
        self._abandoned = threading.Event()
        self._answers: dict[str, Any] = {}
        self._events: dict[str, threading.Event] = {}
        self.sio = socketio.Client(reconnection=True, reconnection_attempts=3,
                                   reconnection_delay=1 * scale,
                                   reconnection_delay_max=5 * scale,
                                   randomization_factor=0.5 * scale)
        self.sio.on("connect", self._on_connect, namespace="/python")
        self.sio.on("disconnect", self._on_disconnect, namespace="/python")
        self.sio.on("forwardUserInput", self._on_input, namespace="/python")

    # -- socketio.Client callbacks, as StudioUserInput's ------------------------------------

    def _on_connect(self) -> None:
        if self.disconnected_at:
            self.reconnected_at.append(time.monotonic())
        self.connected = True

    def _on_disconnect(self, *reason: Any) -> None:
        self.connected = False
        self.disconnected_at.append(time.monotonic())

    def _on_input(self, request_id: str, blocks: Any, structured: Any) -> None:
        if request_id in self._events:
            self._answers[request_id] = (blocks, structured)
            self._events[request_id].set()

    # -- agentscope.init(studio_url=...) ---------------------------------------------------

    def start(self) -> None:
        response = requests.post(f"{self.studio_url}/trpc/registerRun", json={
            "id": self.run_id, "project": self.project, "name": self.name,
            "timestamp": "2026-01-01 00:00:00.000", "pid": _pid(), "status": "running",
            "run_dir": ""}, timeout=10)
        response.raise_for_status()
        self.sio.connect(self.studio_url, namespaces=["/python"], auth={"run_id": self.run_id})

    def gave_up(self) -> bool:
        """True once socketio.Client stopped reconnecting for good (its reconnection
        thread ended without a connection; it never starts another one)."""
        task = self.sio._reconnect_task
        return not self.sio.connected and task is not None and not task.is_alive()

    # -- StudioUserInput.__call__ ----------------------------------------------------------

    def ask(self, request_id: str, agent_id: str = "agent", agent_name: str = "user") -> Any:
        if not self.sio.connected:
            raise RuntimeError(f"Not connected to AgentScope Studio at {self.studio_url}.")
        self._events[request_id] = threading.Event()
        retries = 0
        while True:
            try:
                response = requests.post(f"{self.studio_url}/trpc/requestUserInput", json={
                    "requestId": request_id, "runId": self.run_id, "agentId": agent_id,
                    "agentName": agent_name, "structuredInput": None}, timeout=10)
                response.raise_for_status()
                break
            except Exception as error:
                if retries < self.max_retries:
                    retries += 1
                    continue
                raise RuntimeError("Failed to get user input from AgentScope Studio") \
                    from error
        try:
            while not self._events[request_id].wait(0.05):  # AgentScope: .wait()
                if self._abandoned.is_set():
                    raise Abandoned(request_id)
            return self._answers.pop(request_id)
        finally:
            self._events.pop(request_id, None)

    # -- as_studio_forward_message_pre_print_hook -------------------------------------------

    def push(self, msg: dict[str, Any], reply_id: str) -> bool:
        """True if posted; False when it was dropped after 3 retries (as AgentScope)."""
        for _ in range(4):
            try:
                response = requests.post(f"{self.studio_url}/trpc/pushMessage", json={
                    "runId": self.run_id, "replyId": reply_id, "replyName": "agent",
                    "replyRole": "assistant", "msg": msg}, timeout=10)
                response.raise_for_status()
                return True
            except Exception:
                continue
        return False

    def abandon(self) -> None:
        """Free the threads: stop waiting, stop reconnecting."""
        self._abandoned.set()
        self.sio.disconnect()


def _pid() -> int:
    import os

    return os.getpid()
