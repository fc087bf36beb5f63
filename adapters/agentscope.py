"""The AgentScope Studio client: an AgentScope 1.x runtime that survives Studio restarts.

One call wires a runtime to a stock, unmodified Studio through tether::

    import agentscope
    from adapters.agentscope import attach

    agentscope.init(project="demo", name="run-1")       # no studio_url: tether talks to it
    studio = await attach("http://127.0.0.1:3000")       # or several URLs, or a callable
    ...                                                  # UserAgent asks through the Studio
    await studio.close()

``attach`` replaces AgentScope's Studio user-input method (``UserAgent``'s class input
method) and its message-forwarding ``pre_print`` hook with ones that go through a
:class:`StudioClient`. Importing this module does not import AgentScope; ``attach`` does.

What the Studio does (agentscope-studio 1.0.x, read from its source): the runtime talks
HTTP to tRPC procedures (``registerRun`` and ``requestUserInput`` are upserts by id;
``pushMessage`` upserts by message id and answers 400 for an unknown run) and listens on
the Socket.IO namespace ``/python`` for ``forwardUserInput(requestId, blocksInput,
structuredInput)``, broadcast to every runtime, without an ack. On *any* ``/python``
disconnect, and on a graceful shutdown, the Studio deletes the run's pending input
requests and marks the run done. AgentScope's own client gives up reconnecting after
about 7 s, and never re-posts what the Studio dropped: the agent waits forever.

How this client keeps it honest. The Socket.IO connection and the HTTP calls are one
tether :class:`~adapters.link.Link` (plain mode, :mod:`adapters.socketio`): the link's
transport is the ``/python`` socket, and the tRPC calls are its outgoing messages, so
they get the link's outbox (bounded, in order, handed back on close), its backoff and its
rebuild hooks for free:

* on every new connection the rebuild hook re-registers the run (an upsert: the run is
  ``running`` again), then every pending user-input request is re-posted with its
  original ``requestId`` (the link's requests are re-sent after each rebuild);
* a user-input request is a ``link.request()`` whose answer is the ``forwardUserInput``
  event naming its ``requestId``: answers meant for other runs are ignored; it awaits
  (the event loop runs on) with an optional deadline, across restarts, blips and port
  changes;
* messages the agents print while the Studio is away wait in the outbox and are posted
  once it is back, in order (a streamed message's chunks share one id and the Studio
  keeps the last, so an unsent chunk is replaced by its successor rather than queued
  twice);
* an HTTP call is written once it got a 2xx: a timeout, a refused connection or a 5xx
  fails the connection, the link reconnects with its backoff and posts it again (the
  calls are upserts, so a retry after a lost response duplicates nothing); a 400 saying
  the run does not exist is retried after a rebuild (which registers the run again), with
  that reason on the link; any other refusal of a message is reported
  (:meth:`StudioClient.rejected`, a warning in the log) instead of being retried forever,
  and a refused input request raises in the agent.

What the Studio still gets wrong, and no client can fix: an answer given while the
runtime is disconnected is lost (the Studio broadcasts it to nobody and deletes the
request; tether re-posts the request, so the user is asked again); a graceful restart
marks the run done until the runtime is back. And one race: after a restart that kept
the request (SIGKILL), an answer given while tether's re-post of it is on its way (one
HTTP round trip after the reconnect) reaches the agent, but the re-post then lands and
leaves an input box for a request already answered; answering it again does no harm (no
runtime waits for that id any more).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import secrets
import ssl as ssl_module
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from adapters.link import Link, LinkFailed, Undelivered
from adapters.socketio import SocketIODialer, SocketIOTransport, Urls
from adapters.transport import Frame
from fsm import Backoff, Heartbeat, Overflow, State
from fsm.errors import (
    Broken,
    LinkClosedError,
    Refused,
    RemoteProtocolError,
    TetherError,
    TimedOut,
)
from fsm.lifecycle import DEFAULT_HANDSHAKE_TIMEOUT
from fsm.outbox import DEFAULT_LIMIT

__all__ = [
    "DEFAULT_HTTP_TIMEOUT",
    "Rejected",
    "StudioClient",
    "StudioRejected",
    "StudioTransport",
    "UserInput",
    "attach",
]

logger = logging.getLogger("tether.agentscope")

#: Seconds an HTTP call to the Studio may take; past it the connection is deemed broken
#: and the call is made again on the next one (tRPC's procedures answer in milliseconds).
DEFAULT_HTTP_TIMEOUT = 10.0
#: Seconds between re-posts of pending input requests (see ``_reassert_forever``): below
#: Engine.IO's default 45 s, so a late wipe is healed before the Studio's own timeout.
DEFAULT_REASSERT = 30.0
#: The Studio's hook name in AgentScope 1.x: registering ours under it replaces theirs.
HOOK_NAME = "as_studio_forward_message_pre_print_hook"
NAMESPACE = "/python"
#: Refused calls kept for :meth:`StudioClient.rejected` (older ones are only in the log).
MAX_REJECTED = 100
FORWARD_USER_INPUT = "forwardUserInput"


class StudioRejected(TetherError):
    """The Studio refused a call for good (HTTP 4xx other than an unknown run)."""

    def __init__(self, procedure: str, status: int, message: str) -> None:
        super().__init__(f"the Studio refused {procedure}: HTTP {status}: {message}")
        self.procedure, self.status, self.message = procedure, status, message


@dataclass(frozen=True, slots=True)
class Rejected:
    """A call the Studio refused for good, with its input and the Studio's reason."""

    procedure: str
    input: Any
    error: StudioRejected


@dataclass(frozen=True, slots=True)
class UserInput:
    """The user's answer: content blocks and the structured input (if one was asked)."""

    request_id: str
    blocks: list[Any]
    structured: dict[str, Any] | None


# -- the transport: the /python socket, plus HTTP to tRPC for outgoing calls --------------


def _tRPC_message(response: httpx.Response) -> str:  # noqa: N802 (tRPC's spelling)
    """The error message of a tRPC error response, or the start of its body."""
    try:
        body = response.json()
        message = body["error"]["message"]
        if isinstance(message, str):
            return message
    except (ValueError, KeyError, TypeError):
        pass
    return response.text[:200] or response.reason_phrase


def _unknown_run(message: str) -> bool:
    """The Studio's 400 for a run it does not know (``Run with id X does not exist``)."""
    return "does not exist" in message


class StudioTransport:
    """A :class:`SocketIOTransport` on ``/python`` whose outgoing tRPC calls go by HTTP.

    An outgoing frame that is a JSON object ``{"trpc": procedure, "input": {...}}`` is
    POSTed to ``<base>/trpc/<procedure>`` on the Studio this socket reached; anything
    else goes over the socket. ``send`` returns once the Studio answered 2xx: only then
    does the link count the call written.
    """

    def __init__(self, socket: SocketIOTransport, http: httpx.AsyncClient, base_url: str,
                 client: StudioClient) -> None:
        self.socket = socket
        self.base_url = base_url.rstrip("/")
        self._http = http
        self._client = client

    def __repr__(self) -> str:
        return f"StudioTransport({self.base_url!r})"

    async def send(self, frame: Frame) -> None:
        call = _as_call(frame)
        if call is None:
            await self.socket.send(frame)
            return
        procedure, payload, key = call
        if not self._client._still_wanted(procedure, payload):
            return  # an input request answered meanwhile: posting it again would show a ghost
        if key is not None:
            payload = self._client._take_latest(key, payload)
        await self._post(procedure, payload)
        if key is not None:
            self._client._posted(key, payload)

    async def _post(self, procedure: str, payload: Any) -> None:
        url = f"{self.base_url}/trpc/{procedure}"
        try:
            response = await self._http.post(url, json=payload)
        except httpx.TimeoutException:
            raise TimedOut(f"the Studio did not answer {procedure} within "
                           f"{self._client.http_timeout} s") from None
        except httpx.HTTPError as error:
            raise Broken(f"{procedure} to the Studio failed: {type(error).__name__}: "
                         f"{error}") from None
        if response.is_success:
            return
        message = _tRPC_message(response)
        status = response.status_code
        if status == 400 and _unknown_run(message):
            # The Studio lost or deleted the run: reconnect, re-register, post it again.
            raise Refused(f"the Studio refused {procedure}: HTTP 400: {message} (the run "
                          f"is registered again on the next connection)", status=400,
                          fatal=False)
        if status == 400 and procedure != "registerRun":
            self._client._rejected(Rejected(procedure, payload,
                                            StudioRejected(procedure, status, message)))
            return  # written: it can never be accepted, and it must not block the rest
        # registerRun refused, or 404/405 (not a Studio), 401/403, 5xx: the classifier
        # decides (5xx and 429 retry; the others fail the link with this reason).
        raise Refused(f"the Studio answered {procedure} with HTTP {status}: {message}",
                      status=status)

    async def receive(self) -> Frame:
        return await self.socket.receive()

    def receive_nowait(self) -> Frame | None:
        return self.socket.receive_nowait()

    async def ping(self) -> Awaitable[float]:
        return await self.socket.ping()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self.socket.close(code, reason)

    def abort(self) -> None:
        self.socket.abort()

    @property
    def closed(self) -> bool:
        return self.socket.closed


def _as_call(frame: Frame) -> tuple[str, Any, str | None] | None:
    """``(procedure, input, coalescing key)`` of a tRPC call frame, else None."""
    if not isinstance(frame, str) or not frame.startswith('{"trpc":'):
        return None
    try:
        call = json.loads(frame)
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("trpc"), str):
        return None
    key = call.get("key")
    return call["trpc"], call.get("input"), key if isinstance(key, str) else None


class StudioDialer:
    """Dials ``/python`` with ``auth {run_id}`` and wraps the socket for HTTP calls."""

    def __init__(self, socket: SocketIODialer, client: StudioClient) -> None:
        self.socket = socket
        self._client = client

    def __repr__(self) -> str:
        return f"StudioDialer({self.socket!r})"

    async def dial(self, headers: Mapping[str, str]) -> StudioTransport:
        socket = await self.socket.dial(headers)
        assert self.socket.url is not None
        return StudioTransport(socket, self._client._http_client(), self.socket.url,
                               self._client)


# -- the client ------------------------------------------------------------------------------


def _forwarded_request_id(message: Any) -> str | None:
    """Correlation: ``forwardUserInput`` names its request in its first argument."""
    if isinstance(message, dict) and message.get("event") == FORWARD_USER_INPUT:
        args = message.get("args")
        if isinstance(args, list) and args and isinstance(args[0], str):
            return args[0]
    return None


def _user_input(request_id: str, message: Any) -> UserInput:
    """The answer's arguments, checked: a Studio that sends garbage is named as such."""
    args = message.get("args") if isinstance(message, dict) else None
    if not isinstance(args, list) or len(args) < 2:
        raise RemoteProtocolError(f"the Studio answered request {request_id!r} with "
                                  f"{args!r}; expected (requestId, blocksInput, "
                                  f"structuredInput)")
    blocks, structured = args[1], args[2] if len(args) > 2 else None
    if isinstance(blocks, str):
        blocks = [{"type": "text", "text": blocks}]
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise RemoteProtocolError(f"the Studio answered request {request_id!r} with "
                                  f"blocksInput {blocks!r}; expected a list of content "
                                  f"blocks")
    if structured is not None and not isinstance(structured, dict):
        raise RemoteProtocolError(f"the Studio answered request {request_id!r} with "
                                  f"structuredInput {structured!r}; expected an object")
    return UserInput(request_id, blocks, structured)


class StudioClient:
    """One AgentScope run's link to a Studio. Use :func:`attach`, or on its own::

        async with StudioClient("http://127.0.0.1:3000", run_id="r1", project="p",
                                name="n") as studio:
            await studio.push_message(msg.to_dict(), reply_id=..., reply_name=...,
                                      reply_role="assistant")
            answer = await studio.request_user_input(agent.id, agent.name)

    ``urls``: the Studio's base URL, several to try in turn, or a callable (sync or
    async) returning them, asked on every dial (a Studio restarted on another port is
    found again). ``timeout``: the default deadline of a user-input request (None: wait
    as long as it takes). ``outbox_limit`` bounds the calls waiting for the Studio;
    ``overflow`` says what one more does (default: the oldest is handed back and logged).
    """

    def __init__(
        self,
        urls: Urls,
        *,
        run_id: str,
        project: str,
        name: str,
        created_at: str | None = None,
        pid: int | None = None,
        timeout: float | None = None,
        heartbeat: Heartbeat | None = None,
        backoff: Backoff | None = None,
        http_timeout: float = DEFAULT_HTTP_TIMEOUT,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        close_timeout: float = 2.0,
        outbox_limit: int = DEFAULT_LIMIT,
        overflow: Overflow = Overflow.HAND_BACK,
        reassert: float | None = DEFAULT_REASSERT,
        ssl: ssl_module.SSLContext | None = None,
        link_name: str = "studio",
    ) -> None:
        self.run_id = run_id
        self.run = {
            "id": run_id, "project": project, "name": name,
            "timestamp": created_at or datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            "pid": os.getpid() if pid is None else pid, "status": "running", "run_dir": "",
        }
        self.timeout = timeout
        self.http_timeout = http_timeout
        self.reassert = reassert
        self._ssl = ssl
        self._http: httpx.AsyncClient | None = None
        self.socket_dialer = SocketIODialer(urls, namespace=NAMESPACE,
                                            auth={"run_id": run_id},
                                            open_timeout=handshake_timeout,
                                            close_timeout=close_timeout, ssl=ssl)
        self.link = Link(StudioDialer(self.socket_dialer, self), heartbeat=heartbeat,
                         backoff=backoff, on_rebuild=self._register,
                         outbox_limit=outbox_limit, overflow=overflow,
                         handshake_timeout=handshake_timeout, close_timeout=close_timeout,
                         correlate=_forwarded_request_id, name=link_name)
        self.link.on_undelivered(self._handed_back)
        self._asks: dict[str, asyncio.Future[None]] = {}  # request id -> its refusal
        self._ask_calls: dict[str, dict[str, Any]] = {}  # request id -> its call
        self._latest: dict[str, Any] = {}  # message id -> newest input not yet posted
        self._unsent: set[str] = set()  # message ids with a call waiting in the outbox
        self._rejected_calls: deque[Rejected] = deque(maxlen=MAX_REJECTED)
        self._drain: asyncio.Task[None] | None = None
        self._reasserter: asyncio.Task[None] | None = None
        self._detachers: list[Callable[[], None]] = []  # run on close (attach's undo)
        self.registrations = 0  # how many times the run was (re-)registered

    def __repr__(self) -> str:
        return f"StudioClient(run_id={self.run_id!r}, state={self.link.state!r})"

    # -- reading ---------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self.link.state

    @property
    def url(self) -> str | None:
        """The base URL of the Studio last reached (None before the first connection)."""
        return self.socket_dialer.url

    def rejected(self) -> list[Rejected]:
        """Calls the Studio refused for good, the last ``MAX_REJECTED`` (each is also
        logged as a warning)."""
        return list(self._rejected_calls)

    def undelivered(self) -> list[Undelivered]:
        """Calls handed back: outbox overflow, or still queued at close/failure."""
        return self.link.undelivered()

    def pending(self) -> list[str]:
        """Request ids of the user-input requests waiting for an answer."""
        return list(self._asks)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting (returns at once; the Studio may still be down)."""
        await self.link.start()
        self._drain = asyncio.ensure_future(self._drain_inbound())
        self._drain.add_done_callback(self._task_ended)
        if self.reassert is not None:
            self._reasserter = asyncio.ensure_future(self._reassert_forever(self.reassert))
            self._reasserter.add_done_callback(self._task_ended)

    async def close(self, *, drain: float | bool = True) -> list[Undelivered]:
        """Close the link (waiting ``drain`` s, by default ``close_timeout``, for queued
        calls) and return what was not delivered."""
        try:
            undelivered = await self.link.close(drain=drain)
            for task in (self._drain, self._reasserter):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if self._http is not None:
                await self._http.aclose()
                self._http = None
        finally:
            while self._detachers:
                self._detachers.pop()()
        return undelivered

    async def __aenter__(self) -> StudioClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_online(self, timeout: float | None = None) -> None:
        await self.link.wait_for(State.ONLINE, timeout)

    # -- what the runtime calls ---------------------------------------------------------

    async def request_user_input(self, agent_id: str, agent_name: str,
                                 structured_input: dict[str, Any] | None = None, *,
                                 request_id: str | None = None,
                                 timeout: float | None = None) -> UserInput:
        """Ask the user through the Studio and wait for the answer, however long the
        Studio is away (``timeout``, else the client's default: None waits forever;
        :class:`~fsm.errors.RequestTimeout` after it). The request is re-posted with the
        same ``requestId`` after every reconnect."""
        request_id = request_id or secrets.token_hex(11)
        if request_id in self._asks:
            raise ValueError(f"user-input request {request_id!r} is already pending")
        deadline = timeout if timeout is not None else self.timeout
        payload = {"trpc": "requestUserInput", "input": {
            "requestId": request_id, "runId": self.run_id, "agentId": agent_id,
            "agentName": agent_name, "structuredInput": structured_input}}
        refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._asks[request_id] = refused
        self._ask_calls[request_id] = payload
        asking = asyncio.ensure_future(self.link.request(
            payload, id=request_id, timeout=math.inf if deadline is None else deadline))
        try:
            await asyncio.wait({asking, refused}, return_when=asyncio.FIRST_COMPLETED)
            if refused.done():
                asking.cancel()
                with contextlib.suppress(asyncio.CancelledError, TetherError):
                    await asking
                refused.result()  # raises StudioRejected
            message = asking.result()
        finally:
            self._asks.pop(request_id, None)
            self._ask_calls.pop(request_id, None)
            if not asking.done():
                asking.cancel()
                with contextlib.suppress(asyncio.CancelledError, TetherError):
                    await asking
        return _user_input(request_id, message)

    async def push_message(self, msg: Mapping[str, Any], *, reply_id: str,
                           reply_name: str, reply_role: str) -> None:
        """Queue a message for the Studio (``msg``: AgentScope's ``Msg.to_dict()``).
        Returns at once; it is posted in order once the Studio is reachable."""
        message_id = msg.get("id")
        payload = {"runId": self.run_id, "replyId": reply_id, "replyName": reply_name,
                   "replyRole": reply_role, "msg": dict(msg)}
        if isinstance(message_id, str):
            self._latest[message_id] = payload
            if message_id in self._unsent:
                return  # its call is still queued: it will post this newest version
            self._unsent.add(message_id)
            await self.link.send({"trpc": "pushMessage", "input": payload,
                                  "key": message_id})
        else:
            await self.link.send({"trpc": "pushMessage", "input": payload})

    # -- the link's side -------------------------------------------------------------------

    async def _register(self, link: Link) -> None:
        """Rebuild hook, on every new connection: register the run (an upsert). The
        link then re-posts every pending user-input request with its requestId."""
        self.registrations += 1
        await link.send({"trpc": "registerRun", "input": self.run})

    def _http_client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.http_timeout,
                                           verify=self._ssl if self._ssl is not None else True)
        return self._http

    def _still_wanted(self, procedure: str, payload: Any) -> bool:
        if procedure != "requestUserInput" or not isinstance(payload, dict):
            return True
        return payload.get("requestId") in self._asks

    def _take_latest(self, key: str, payload: Any) -> Any:
        self._unsent.discard(key)
        return self._latest.get(key, payload)

    def _posted(self, key: str, payload: Any) -> None:
        if self._latest.get(key) is payload:
            del self._latest[key]

    def _rejected(self, item: Rejected) -> None:
        logger.warning("! %s: %s; not retried (input %.200r)", self.link.name, item.error,
                       item.input)
        self._rejected_calls.append(item)
        if item.procedure == "requestUserInput" and isinstance(item.input, dict):
            refused = self._asks.get(item.input.get("requestId", ""))
            if refused is not None and not refused.done():
                refused.set_exception(item.error)

    def _handed_back(self, item: Undelivered) -> None:
        logger.warning("! %s: a call to the Studio was handed back (%s): %.200r",
                       self.link.name, item.reason, item.payload)

    async def _drain_inbound(self) -> None:
        """Messages no request claimed: answers for other runs' requests (the Studio
        broadcasts them to every runtime) and anything else the Studio emits."""
        with contextlib.suppress(LinkClosedError, LinkFailed):
            async for message in self.link:
                request_id = _forwarded_request_id(message)
                if request_id is not None:
                    logger.debug("< %s: answer for request %r, not ours (or answered)",
                                 self.link.name, request_id)
                else:
                    logger.debug("< %s: unclaimed %.200r", self.link.name, message)

    async def _reassert_forever(self, every: float) -> None:
        """While input requests are pending, register the run and re-post them every
        ``every`` s. The Studio wipes a run's requests whenever *any* of its sockets
        disconnects, and notices a socket that died half-open only after its ping
        timeout (45 s by default), possibly long after we reconnected on a new one and
        re-posted: no event tells us, so we say it again (upserts: nothing doubles)."""
        while True:
            await asyncio.sleep(every)
            if not self._asks or self.link.state not in (State.ONLINE, State.WAITING):
                continue
            await self.link.send({"trpc": "registerRun", "input": self.run})
            for call in list(self._ask_calls.values()):
                await self.link.send(call)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            logger.error("! %s: a studio client task crashed", self.link.name,
                         exc_info=task.exception())


# -- AgentScope ------------------------------------------------------------------------------


def _agentscope_user_input(client: StudioClient) -> Any:
    """An instance of AgentScope's ``UserInputBase`` asking through ``client``."""
    from agentscope.agent import UserInputBase, UserInputData

    class TetherStudioUserInput(UserInputBase):  # type: ignore[misc,no-any-unimported]
        """AgentScope's Studio user input, through tether: survives Studio restarts and
        never blocks the event loop."""

        def __init__(self) -> None:
            self.client = client

        async def __call__(self, agent_id: str, agent_name: str, *args: Any,
                           structured_model: Any = None, **kwargs: Any) -> Any:
            schema = structured_model.model_json_schema() if structured_model else None
            answer = await client.request_user_input(agent_id, agent_name, schema)
            return UserInputData(blocks_input=answer.blocks,
                                 structured_input=answer.structured)

    return TetherStudioUserInput()


def _forward_hook(client: StudioClient) -> Any:
    """AgentScope's ``pre_print`` hook, through tether: queues and returns at once."""
    from agentscope.agent import UserAgent

    async def forward(agent: Any, kwargs: dict[str, Any]) -> None:
        msg = kwargs["msg"]
        reply_id = getattr(agent, "_reply_id", None) or msg.id
        await client.push_message(
            msg.to_dict(), reply_id=reply_id, reply_name=getattr(agent, "name", msg.name),
            reply_role="user" if isinstance(agent, UserAgent) else "assistant")

    return forward


async def attach(
    studio_url: Urls,
    *,
    run_id: str | None = None,
    project: str | None = None,
    name: str | None = None,
    timeout: float | None = None,
    **options: Any,
) -> StudioClient:
    """Wire this AgentScope 1.x runtime to a Studio through tether; return the client.

    ``run_id``, ``project`` and ``name`` default to AgentScope's (``agentscope.init``).
    Replaces ``UserAgent``'s class input method and the Studio message-forwarding hook,
    starts connecting (the Studio may be down: everything waits for it), and returns.
    ``timeout`` is the default deadline of a user-input request (None: no deadline);
    other ``options`` go to :class:`StudioClient`. ``await client.close()`` puts
    AgentScope's own input method and hook back.
    """
    import agentscope
    from agentscope.agent import AgentBase, UserAgent

    config = agentscope._config
    client = StudioClient(studio_url, run_id=run_id or config.run_id,
                          project=project or config.project, name=name or config.name,
                          created_at=config.created_at, timeout=timeout, **options)
    hooks = AgentBase._class_pre_print_hooks
    previous_method, previous_hook = UserAgent._input_method, hooks.get(HOOK_NAME)
    UserAgent.override_class_input_method(_agentscope_user_input(client))
    AgentBase.register_class_hook("pre_print", HOOK_NAME, _forward_hook(client))

    def detach() -> None:
        UserAgent._input_method = previous_method
        if previous_hook is not None:
            hooks[HOOK_NAME] = previous_hook
        else:
            hooks.pop(HOOK_NAME, None)

    client._detachers.append(detach)
    await client.start()
    return client
