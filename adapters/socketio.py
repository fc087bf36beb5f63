"""Socket.IO 5 over Engine.IO 4 over one WebSocket, behind the :class:`Transport` interface.

A Socket.IO server (Node's ``socket.io`` 4, python-socketio 5) is one more peer the
:class:`~adapters.link.Link` can keep honest: the link owns the lifecycle, heartbeat,
backoff, rebuild hooks, outbox and requests, exactly as with a plain WebSocket. Nothing of
a Socket.IO client's own reconnection logic is used; python-engineio's and
python-socketio's packet classes are the codec (``pip install tether[socketio]``), and
every packet they decode is checked again here, since a hostile or broken server can send
anything.

The dial is the websocket-only handshake (``/socket.io/?EIO=4&transport=websocket``, no
long-polling, no upgrade): the server's Engine.IO ``open`` packet, then our Socket.IO
``connect`` to the namespace with the ``auth`` payload, then the server's ``connect``
(or ``connect_error``, which refuses the dial for good: it is an authentication or
namespace decision, not an outage). Only then does the link see a transport.

Liveness, within the link's ``interval + timeout`` rather than Engine.IO's 25 + 20 s:

* any inbound frame counts (every event reaches the link; Engine.IO pings and other
  control packets answer a probe that is out);
* Engine.IO pings are answered with pongs at once, by the transport, so the server keeps
  us even while the link is busy;
* the link's probe is an RFC 6455 ping at the WebSocket layer, which Node's ``ws`` (under
  ``socket.io``) answers by itself: a frozen or silent server is declared dead after
  ``interval + timeout`` whatever its ``pingInterval``.

Frames, both ways (the link speaks ``str`` and ``bytes``):

======================================  ===============================================
link frame                              Socket.IO packet on the namespace
======================================  ===============================================
``str`` / ``bytes`` sent                event ``"message"`` with it as the one argument
                                        (``socket.send(x)`` in Socket.IO's own words;
                                        bytes travel as a binary attachment)
:func:`emit` ``(event, *args, ack=n)``  that event; ``ack`` asks the server to answer
:func:`answer` ``(n, *args)``           the ack the server asked for in event ``n``
``str`` / ``bytes`` received            event ``"message"`` with one ``str``/``bytes``
text ``{"event", "args"[, "ack"]}``     any other event (``"ack"``: the server waits
                                        for :func:`answer`)
text ``{"ack": n, "args": [...]}``      the server's answer to ``emit(..., ack=n)``
======================================  ===============================================

Bytes inside a JSON-delivered event are ``{"$bytes": "<base64>"}``. A Socket.IO
``disconnect`` from the server, an Engine.IO ``close`` and a WebSocket close all end the
transport with :class:`~fsm.errors.Closed` (retryable: the link reconnects); a packet
that breaks the protocol ends it with :class:`~fsm.errors.RemoteProtocolError` naming
what was wrong.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeGuard
from urllib.parse import urlsplit, urlunsplit

from engineio import packet as eio
from socketio import packet as sio
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from adapters.link import Headers, Link, RebuildHook
from adapters.transport import Frame
from adapters.websocket import DEFAULT_MAX_SIZE, translate, wire_logger
from fsm import Backoff, Heartbeat, Overflow
from fsm.errors import (
    Broken,
    Closed,
    Refused,
    RemoteProtocolError,
    TimedOut,
    TransportError,
    classify,
)
from fsm.lifecycle import DEFAULT_HANDSHAKE_TIMEOUT
from fsm.outbox import DEFAULT_LIMIT

__all__ = [
    "MESSAGE_EVENT",
    "Auth",
    "Emit",
    "Handshake",
    "SocketIODialer",
    "SocketIOTransport",
    "Urls",
    "answer",
    "connect",
    "emit",
    "engineio_url",
]

logger = logging.getLogger("tether.socketio")

#: The event a plain ``str``/``bytes`` frame travels as (``socket.send()`` in Socket.IO).
MESSAGE_EVENT = "message"
#: Frames buffered between the WebSocket and the link; past it the WebSocket's own flow
#: control holds the server back.
DEFAULT_MAX_QUEUE = 1024
#: Binary attachments one packet may announce (the Node server's parser allows more;
#: nothing legitimate sends this many with one event).
MAX_ATTACHMENTS = 64

Auth: TypeAlias = (
    Mapping[str, Any] | Callable[[], Mapping[str, Any] | None]
    | Callable[[], Awaitable[Mapping[str, Any] | None]] | None
)
Urls: TypeAlias = (
    str | Sequence[str] | Callable[[], Sequence[str]] | Callable[[], Awaitable[Sequence[str]]]
)

_EOF = object()


# -- frames the link sends -----------------------------------------------------------------


class Emit(str):
    """An outbound Socket.IO event (or ack answer) as a link payload.

    A ``str`` subclass, so the link queues and writes it like any text frame and hands
    it back as it is; its text is the packet's JSON, for logs. Build it with :func:`emit`
    or :func:`answer`.
    """

    event: str | None
    args: tuple[Any, ...]
    ack: int | None

    def __new__(cls, event: str | None, args: tuple[Any, ...], ack: int | None) -> Emit:
        def only_bytes(value: Any) -> str:
            if isinstance(value, bytes | bytearray):
                return f"<{len(value)} bytes>"
            raise TypeError(f"a Socket.IO argument is JSON or bytes, not "
                            f"{type(value).__name__}")

        text = json.dumps([event, *args] if event is not None else list(args),
                          default=only_bytes, separators=(",", ":"))
        self = super().__new__(cls, text)
        self.event, self.args, self.ack = event, args, ack
        return self

    def __repr__(self) -> str:
        if self.event is None:
            return f"answer({self.ack!r}, *{self.args!r})"
        return f"emit({self.event!r}, *{self.args!r}, ack={self.ack!r})"


def emit(event: str, *args: Any, ack: int | None = None) -> Emit:
    """The payload for ``link.send()`` that emits ``event`` with ``args``. With ``ack=n``
    the server's answer arrives as ``{"ack": n, "args": [...]}``."""
    if not _nonempty_str(event):
        raise ValueError(f"a Socket.IO event name is a non-empty str, got {event!r}")
    if ack is not None and not _ack_id(ack):
        raise ValueError(f"ack must be an int >= 0, got {ack!r}")
    return Emit(event, args, ack)


def answer(ack: int, *args: Any) -> Emit:
    """The payload for ``link.send()`` that answers the server's event carrying ``ack``."""
    if not _ack_id(ack):
        raise ValueError(f"ack must be an int >= 0, got {ack!r}")
    return Emit(None, args, ack)


def _nonempty_str(value: object) -> bool:
    return isinstance(value, str) and bool(value)


def _ack_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# -- the codec, strict ---------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Event arguments for the link's JSON text: bytes become ``{"$bytes": base64}``."""
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return value


def engineio_url(url: str, path: str = "socket.io") -> str:
    """``http://host:port`` (or ``ws://``) to the websocket-only Engine.IO 4 endpoint."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise Refused(f"invalid Socket.IO server URL {url!r}: expected http(s):// or "
                      f"ws(s):// with a host", fatal=True)
    return urlunsplit((scheme, parts.netloc, f"/{path.strip('/')}/",
                       "EIO=4&transport=websocket", ""))


def _violation(what: str, frame: Frame) -> RemoteProtocolError:
    shown = frame[:80] if isinstance(frame, str) else f"<{len(frame)} bytes>"
    return RemoteProtocolError(f"the Socket.IO server broke the protocol: {what} "
                               f"(frame {shown!r})")


def decode_engineio(frame: str) -> tuple[int, Any]:
    """An Engine.IO text packet: ``(type, data)``; raises ``RemoteProtocolError``."""
    if not frame or frame[0] not in "0123456":
        raise _violation("not an Engine.IO packet", frame)
    try:
        packet = eio.Packet(encoded_packet=frame)
    except (ValueError, TypeError, IndexError, RecursionError) as error:
        raise _violation(f"undecodable Engine.IO packet: {error}", frame) from None
    return int(packet.packet_type), packet.data


class _Decoded:
    """One Socket.IO packet, checked: type, namespace, ack id, data, attachments due."""

    __slots__ = ("attachments", "data", "id", "namespace", "packet", "type")

    def __init__(self, payload: str) -> None:
        try:
            packet: Any = sio.Packet(encoded_packet=payload)
        except (ValueError, TypeError, IndexError, RecursionError) as error:
            raise _violation(f"undecodable Socket.IO packet: {error}", payload) from None
        if not isinstance(packet.packet_type, int) or not 0 <= packet.packet_type <= 6:
            raise _violation("unknown Socket.IO packet type", payload)
        self.packet = packet
        self.type: int = packet.packet_type
        self.namespace: str = packet.namespace or "/"
        self.id: int | None = packet.id
        self.data: Any = packet.data
        self.attachments: int = packet.attachment_count
        if self.attachments > MAX_ATTACHMENTS:
            raise _violation(f"{self.attachments} binary attachments announced "
                             f"(at most {MAX_ATTACHMENTS})", payload)
        if self.attachments and self.type not in (sio.BINARY_EVENT, sio.BINARY_ACK):
            raise _violation("binary attachments on a packet that carries none", payload)
        if self.type in (sio.EVENT, sio.BINARY_EVENT) and not (
                isinstance(self.data, list) and self.data and isinstance(self.data[0], str)):
            raise _violation("an event is a JSON array whose first item is its name", payload)
        if self.type in (sio.ACK, sio.BINARY_ACK) and not (
                isinstance(self.data, list) and self.id is not None):
            raise _violation("an ack is a JSON array with an ack id", payload)

    def attach(self, blob: bytes) -> bool:
        """Add one binary attachment; True when the packet is complete."""
        try:
            done: bool = self.packet.add_attachment(blob)
        except (ValueError, IndexError, KeyError, TypeError) as error:
            raise _violation(f"bad binary attachment: {error}", blob) from None
        if done:
            self.data = self.packet.data
        return done


def _encode(packet_type: int, namespace: str, data: Any, ack: int | None) -> list[Frame]:
    """A Socket.IO packet as WebSocket frames: the Engine.IO message, then attachments."""
    encoded: Any = sio.Packet(packet_type, data=data, namespace=namespace, id=ack).encode()
    if isinstance(encoded, list):
        head, *attachments = encoded
        return [f"4{head}", *(bytes(blob) for blob in attachments)]
    return [f"4{encoded}"]


def encode_frame(frame: Frame, namespace: str) -> list[Frame]:
    """What :meth:`SocketIOTransport.send` writes for one link frame."""
    if isinstance(frame, Emit):
        if frame.event is None:
            assert frame.ack is not None
            return _encode(sio.ACK, namespace, list(frame.args), frame.ack)
        return _encode(sio.EVENT, namespace, [frame.event, *frame.args], frame.ack)
    return _encode(sio.EVENT, namespace, [MESSAGE_EVENT, frame], None)


# -- the transport -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Handshake:
    """What the server said when we connected: its Engine.IO session id and ping
    settings (seconds), its ``maxPayload`` (None: unlimited), and our namespace's
    socket id."""

    sid: str
    ping_interval: float
    ping_timeout: float
    max_payload: int | None
    namespace: str
    socket_id: str | None


class SocketIOTransport:
    """One Socket.IO namespace connection behind the :class:`Transport` interface.

    A pump task reads the WebSocket, answers Engine.IO pings, reassembles binary
    packets and queues what the link should see (bounded: a full queue stops the pump,
    and the WebSocket's flow control holds the server back). It ends with the connection.
    """

    def __init__(self, connection: ClientConnection, handshake: Handshake, *,
                 max_queue: int = DEFAULT_MAX_QUEUE,
                 max_size: int | None = DEFAULT_MAX_SIZE) -> None:
        self._ws = connection
        self.handshake = handshake
        self.namespace = handshake.namespace
        self._max_size = max_size
        self._queue: asyncio.Queue[Any] = asyncio.Queue(max_queue)
        self._error: TransportError | None = None
        self._aborted = False
        self._closing = False
        self._probes: list[tuple[asyncio.Future[float], float]] = []
        self._partial: _Decoded | None = None  # a binary packet waiting for attachments
        self._partial_size = 0
        self._pump = asyncio.ensure_future(self._run_pump())

    def __repr__(self) -> str:
        return f"SocketIOTransport(namespace={self.namespace!r}, closed={self.closed})"

    # -- the pump --------------------------------------------------------------------------

    async def _run_pump(self) -> None:
        try:
            async for raw in self._ws:
                await self._on_frame(raw)
            await self._ws.wait_closed()
            self._error = translate(self._ws.protocol.close_exc)
        except ConnectionClosed as error:
            self._error = translate(error)
        except TransportError as error:  # the server broke the protocol, or closed
            self._error = error
            logger.warning("! %s: %s", self, error)
            self._ws.transport.abort()
        except Exception as error:
            self._error = translate(error)
        self._settle_probes()
        await self._queue.put(_EOF)

    def _heard(self) -> None:
        """Any frame from the server proves it alive: answer the probes that are out."""
        now = time.monotonic()
        for future, sent in self._probes:
            if not future.done():
                future.set_result(now - sent)
        self._probes.clear()

    async def _on_frame(self, raw: str | bytes) -> None:
        self._heard()
        if isinstance(raw, bytes):
            await self._on_attachment(raw)
            return
        if self._partial is not None:
            raise _violation(f"a text frame while {self._partial.attachments} binary "
                             f"attachments were due", raw)
        kind, data = decode_engineio(raw)
        if kind == eio.PING:
            await self._ws.send(f"3{data}" if isinstance(data, str) else "3")
        elif kind in (eio.PONG, eio.NOOP):
            pass
        elif kind == eio.CLOSE:
            raise Closed("the Socket.IO server closed the Engine.IO session")
        elif kind == eio.MESSAGE:
            if not isinstance(data, str):
                raise _violation("an Engine.IO message carrying no Socket.IO packet", raw)
            await self._on_packet(_Decoded(data), raw)
        else:
            raise _violation(f"unexpected Engine.IO {eio.packet_names[kind].lower()} "
                             f"packet after the handshake", raw)

    async def _on_attachment(self, blob: bytes) -> None:
        partial = self._partial
        if partial is None:
            raise _violation("a binary frame with no binary packet announcing it", blob)
        self._partial_size += len(blob)
        if self._max_size is not None and self._partial_size > self._max_size:
            raise _violation(f"binary attachments over max_size ({self._max_size} bytes)",
                             blob)
        if partial.attach(blob):
            self._partial, self._partial_size = None, 0
            await self._deliver(partial)

    async def _on_packet(self, packet: _Decoded, raw: str) -> None:
        if packet.namespace != self.namespace:
            raise _violation(f"a packet for namespace {packet.namespace!r}; we joined "
                             f"{self.namespace!r} only", raw)
        if packet.type == sio.DISCONNECT:
            raise Closed(f"the Socket.IO server disconnected us from namespace "
                         f"{self.namespace!r}")
        if packet.type in (sio.CONNECT, sio.CONNECT_ERROR):
            raise _violation(f"a {sio.packet_names[packet.type].lower()} packet after the "
                             f"namespace was joined", raw)
        if packet.attachments:
            self._partial = packet
            return
        await self._deliver(packet)

    async def _deliver(self, packet: _Decoded) -> None:
        data: list[Any] = packet.data
        if packet.type in (sio.ACK, sio.BINARY_ACK):
            frame: Frame = json.dumps({"ack": packet.id, "args": _jsonable(data)})
        elif data[0] == MESSAGE_EVENT and len(data) == 2 and packet.id is None \
                and isinstance(data[1], str | bytes):
            frame = data[1]
        else:
            event: dict[str, Any] = {"event": data[0], "args": _jsonable(data[1:])}
            if packet.id is not None:
                event["ack"] = packet.id
            frame = json.dumps(event)
        await self._queue.put(frame)

    def _settle_probes(self) -> None:
        for future, _ in self._probes:
            if not future.done():
                future.set_exception(self._error or Broken("transport was aborted"))
                future.exception()  # retrieved: nobody may be waiting any more
        self._probes.clear()

    # -- the Transport verbs ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._aborted or self._closing or self._error is not None \
            or self._ws.close_code is not None

    def _check_open(self) -> None:
        if self._aborted:
            raise Broken("transport was aborted")
        if self._closing:
            raise Closed("transport was closed", code=1000)
        if self._error is not None:
            raise self._error

    async def send(self, frame: Frame) -> None:
        self._check_open()
        try:
            for part in encode_frame(frame, self.namespace):
                await self._ws.send(part)
        except Exception as error:
            raise translate(error) from error

    async def receive(self) -> Frame:
        if self._aborted:
            raise Broken("transport was aborted")
        return self._unpack(await self._queue.get())

    def receive_nowait(self) -> Frame | None:
        if self._aborted:
            raise Broken("transport was aborted")
        try:
            item = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        return self._unpack(item)

    def _unpack(self, item: Any) -> Frame:
        if item is _EOF:
            self._queue.put_nowait(_EOF)  # every later receive fails the same way
            assert self._error is not None
            raise self._error
        frame: Frame = item
        return frame

    async def ping(self) -> Awaitable[float]:
        """An RFC 6455 ping. The awaitable resolves on its pong, or on any frame from the
        server that comes first (an Engine.IO ping, an event): to the time until then."""
        self._check_open()
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        sent = time.monotonic()
        self._probes.append((future, sent))
        try:
            pong = await self._ws.ping()
        except Exception as error:
            self._probes.remove((future, sent))
            raise translate(error) from error

        def ponged(waiter: asyncio.Future[float]) -> None:
            if not future.done() and not waiter.cancelled() and waiter.exception() is None:
                future.set_result(waiter.result())

        asyncio.ensure_future(pong).add_done_callback(ponged)
        return future

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Leave the namespace (Socket.IO ``disconnect``), then close the WebSocket."""
        if self._aborted:
            return
        if not self.closed:
            self._closing = True
            with contextlib.suppress(Exception):
                await self._ws.send(f"41{self.namespace},"
                                    if self.namespace != "/" else "41")
        self._closing = True
        with contextlib.suppress(Exception):
            await self._ws.close(code, reason)
        with contextlib.suppress(BaseException):
            await self._pump

    def abort(self) -> None:
        if self._aborted:
            return
        self._aborted = True
        self._ws.transport.abort()
        self._pump.cancel()
        self._settle_probes()


# -- the dialer ----------------------------------------------------------------------------


async def _resolve(value: Any) -> Any:
    if callable(value):
        value = value()
        if isinstance(value, Awaitable):
            value = await value
    return value


class SocketIODialer:
    """Dials a Socket.IO server's ``namespace`` over a websocket-only Engine.IO session.

    ``urls``: one base URL (``http://127.0.0.1:3000``), several to try in turn, or a
    callable (sync or async) returning them, asked on every dial: a server that came
    back on another port is found again. The one that answered last is tried first.
    ``auth`` is the ``connect`` payload (a mapping, or a callable evaluated per dial).
    """

    def __init__(
        self,
        urls: Urls,
        *,
        namespace: str = "/",
        auth: Auth = None,
        path: str = "socket.io",
        open_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        close_timeout: float = 2.0,
        max_size: int | None = DEFAULT_MAX_SIZE,
        max_queue: int = DEFAULT_MAX_QUEUE,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        if not namespace.startswith("/"):
            raise ValueError(f"a Socket.IO namespace starts with '/', got {namespace!r}")
        self._urls = urls
        self.namespace = namespace
        self.auth = auth
        self.path = path
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.max_size = max_size
        self.max_queue = max_queue
        self.ssl = ssl
        #: The base URL of the last successful dial (None before the first).
        self.url: str | None = None

    def __repr__(self) -> str:
        return f"SocketIODialer({self._urls!r}, namespace={self.namespace!r})"

    async def candidates(self) -> list[str]:
        """The base URLs to try on this dial, the last good one first."""
        urls = await _resolve(self._urls)
        found = [urls] if isinstance(urls, str) else list(urls)
        if not found or not all(isinstance(url, str) for url in found):
            raise Refused(f"no Socket.IO server URL to dial: got {urls!r}")
        if self.url in found:
            found.remove(self.url)
            found.insert(0, self.url)
        return found

    async def dial(self, headers: Mapping[str, str]) -> SocketIOTransport:
        try:
            urls = await self.candidates()
            auth = await _resolve(self.auth)
        except TransportError:
            raise
        except Exception as error:  # a bug in the user's callable: say so, and retry
            raise Refused(f"the Socket.IO URL or auth callable raised {error!r}") from error
        if auth is not None and not isinstance(auth, Mapping):
            raise Refused(f"Socket.IO auth must be a mapping, got {type(auth).__name__}",
                          fatal=True)
        failures: list[TransportError] = []
        for url in urls:
            try:
                transport = await self._dial_one(url, headers, auth)
            except TransportError as error:
                failures.append(error)
                continue
            self.url = url
            return transport
        if len(failures) == 1:
            raise failures[0]
        reasons = "; ".join(f"{url}: {error}" for url, error in zip(urls, failures,
                                                                    strict=True))
        raise Refused(f"no Socket.IO server answered: {reasons}",
                      fatal=all(classify_fatal(error) for error in failures))

    async def _dial_one(self, url: str, headers: Mapping[str, str],
                        auth: Mapping[str, Any] | None) -> SocketIOTransport:
        endpoint = engineio_url(url, self.path)
        options: dict[str, Any] = {}
        if self.ssl is not None:
            options["ssl"] = self.ssl
        try:
            async with asyncio.timeout(self.open_timeout):
                connection = await ws_connect(
                    endpoint, additional_headers=dict(headers), open_timeout=None,
                    close_timeout=self.close_timeout, ping_interval=None, ping_timeout=None,
                    max_size=self.max_size, logger=wire_logger, **options)
        except TimeoutError:
            raise TimedOut(f"opening the WebSocket to {endpoint} timed out") from None
        except Exception as error:
            raise translate(error) from error
        try:
            async with asyncio.timeout(self.open_timeout):
                handshake = await self._handshake(connection, auth)
        except TimeoutError:
            connection.transport.abort()
            raise TimedOut(f"the Socket.IO handshake with {url} (namespace "
                           f"{self.namespace!r}) timed out") from None
        except TransportError:
            connection.transport.abort()
            raise
        except Exception as error:
            connection.transport.abort()
            raise translate(error) from error
        return SocketIOTransport(connection, handshake, max_queue=self.max_queue,
                                 max_size=self.max_size)

    async def _handshake(self, connection: ClientConnection,
                         auth: Mapping[str, Any] | None) -> Handshake:
        """Engine.IO ``open`` in, Socket.IO ``connect`` out and back."""
        first = await connection.recv()
        if not isinstance(first, str):
            raise _violation("a binary frame instead of the Engine.IO open packet", first)
        kind, info = decode_engineio(first)
        if kind != eio.OPEN or not isinstance(info, dict):
            raise _violation("expected the Engine.IO open packet", first)
        sid, interval, timeout = info.get("sid"), info.get("pingInterval"), \
            info.get("pingTimeout")
        max_payload = info.get("maxPayload")
        if not isinstance(sid, str) or not _positive_int(interval) \
                or not _positive_int(timeout) \
                or not (max_payload is None or _positive_int(max_payload)):
            raise _violation("the open packet lacks a valid sid, pingInterval, pingTimeout "
                             "or maxPayload", first)
        connect = _encode(sio.CONNECT, self.namespace, dict(auth) if auth else None, None)
        await connection.send(connect[0])
        while True:
            raw = await connection.recv()
            if isinstance(raw, str) and raw.startswith("2"):  # an early Engine.IO ping
                await connection.send("3" + raw[1:])
                continue
            if not isinstance(raw, str) or not raw.startswith("4"):
                raise _violation("expected the Socket.IO connect answer", raw)
            packet = _Decoded(raw[1:])
            if packet.namespace != self.namespace:
                raise _violation(f"a packet for namespace {packet.namespace!r} before the "
                                 f"connect answer for {self.namespace!r}", raw)
            if packet.type == sio.CONNECT_ERROR:
                message = packet.data.get("message") if isinstance(packet.data, dict) \
                    else packet.data
                raise Refused(f"the Socket.IO server refused namespace {self.namespace!r}: "
                              f"{message}", fatal=True)
            if packet.type != sio.CONNECT:
                raise _violation("expected the Socket.IO connect answer", raw)
            socket_id = packet.data.get("sid") if isinstance(packet.data, dict) else None
            return Handshake(sid=sid, ping_interval=interval / 1000,
                             ping_timeout=timeout / 1000, max_payload=max_payload,
                             namespace=self.namespace, socket_id=socket_id)


def _positive_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def classify_fatal(error: TransportError) -> bool:
    """True if retrying ``error`` cannot help (see :func:`fsm.errors.classify`)."""
    return not classify(error).retry


def connect(
    urls: Urls,
    *,
    namespace: str = "/",
    auth: Auth = None,
    path: str = "socket.io",
    heartbeat: Heartbeat | None = None,
    backoff: Backoff | None = None,
    on_rebuild: RebuildHook | Sequence[RebuildHook] | None = None,
    headers: Headers | None = None,
    outbox_limit: int = DEFAULT_LIMIT,
    overflow: Overflow = Overflow.RAISE,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    close_timeout: float = 2.0,
    max_size: int | None = DEFAULT_MAX_SIZE,
    ssl: ssl_module.SSLContext | None = None,
    **options: Any,
) -> Link:
    """A plain-mode :class:`~adapters.link.Link` to a Socket.IO server's ``namespace``.

    ``urls`` is a base URL, a list of them, or a callable returning them (see
    :class:`SocketIODialer`). Use it as ``async with connect(...) as link``; send with
    ``link.send(text_or_bytes)`` (the ``"message"`` event) or ``link.send(emit(...))``.
    Other ``options`` go to :class:`~adapters.link.Link`.
    """
    dialer = SocketIODialer(urls, namespace=namespace, auth=auth, path=path,
                            open_timeout=handshake_timeout, close_timeout=close_timeout,
                            max_size=max_size, ssl=ssl)
    return Link(dialer, heartbeat=heartbeat, backoff=backoff, session=False,
                on_rebuild=on_rebuild, headers=headers, outbox_limit=outbox_limit,
                overflow=overflow, handshake_timeout=handshake_timeout,
                close_timeout=close_timeout, **options)
