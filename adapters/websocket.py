"""The real transport, on ``websockets``, and :func:`connect`, tether's entry point.

``websockets`` does the protocol; tether owns liveness. Its own keepalive is switched off
(``ping_interval=None``): the core probes and decides, counting any inbound frame as proof
of life, and aborts a dead peer at once instead of waiting ``close_timeout`` for a
closing handshake that will never come (websockets' weak spot, see ANCHORS.md).

Library exceptions become tether's vocabulary, so the classifier sees one language:

=====================================  =================================================
``InvalidStatus`` (HTTP at handshake)  ``Refused(status=..., retry_after=Retry-After)``
``ConnectionRefusedError``              ``Refused()`` (retryable)
other ``OSError``                      ``Broken`` (retryable)
``InvalidURI``, certificate failure    ``Refused(fatal=True)``: retrying cannot help
``TimeoutError`` on open               ``TimedOut``
other ``InvalidHandshake``             ``RemoteProtocolError``
``ConnectionClosed`` with a close      ``Closed(code=...)`` (1009: a frame over max_size)
``ConnectionClosed`` without one       ``Broken``
=====================================  =================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import re
import ssl as ssl_module
import time
import urllib.parse
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from adapters.link import Headers, Link, RebuildHook
from adapters.transport import Frame
from fsm import Backoff, Heartbeat, Overflow
from fsm.checks import count, seconds
from fsm.errors import Broken, Closed, Refused, RemoteProtocolError, TimedOut, TransportError
from fsm.lifecycle import DEFAULT_HANDSHAKE_TIMEOUT
from fsm.outbox import DEFAULT_LIMIT, DEFAULT_MAX_BYTES

__all__ = ["DEFAULT_MAX_SIZE", "WebSocketDialer", "WebSocketTransport", "connect", "redact_url",
           "wire_logger"]

#: Largest inbound message accepted: 1 MiB, websockets' default. Bigger frames close the
#: connection with 1009 and the link recovers on a new one.
DEFAULT_MAX_SIZE = 2**20

_EOF = object()


_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})
#: Query parameters that carry credentials by convention (OAuth's ``access_token``, API
#: keys, signed URLs): their values never reach a log line or a ``repr``.
_SECRET_PARAMETER = re.compile(
    r"(token|key|secret|password|passwd|pwd|auth|signature|sig|credential|session)",
    re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` (or a request path) with credentials replaced by ``***``: the password of
    the userinfo and the value of every query parameter whose name looks like a
    credential (``access_token``, ``api_key``, ``sig``, ...)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(
            f"{urllib.parse.quote(name, safe='')}="
            f"{'***' if _SECRET_PARAMETER.search(name) else urllib.parse.quote(value, safe='')}"
            for name, value in pairs)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class _NoSecrets(logging.Filter):
    """websockets logs every frame ("> %s", "< %s"), the request line ("> GET %s
    HTTP/1.1" on a client, "< %s %s %s" on a server) and every handshake header
    ("> %s: %s") at DEBUG. A session ``hello`` carries the secret resume token, headers
    and URLs carry credentials: frame contents never reach a log record, credential
    headers are redacted and so are credentials in request paths."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg in ("> %s", "< %s"):
            return False
        args = record.args
        if not isinstance(args, tuple) or not args:
            return True
        if record.msg in ("> %s: %s", "< %s: %s") and str(args[0]).lower() in _SECRET_HEADERS:
            record.args = (args[0], "<redacted>")
        elif record.msg == "> GET %s HTTP/1.1":
            record.args = (redact_url(str(args[0])), *args[1:])
        elif record.msg == "< %s %s %s" and len(args) == 3:
            record.args = (args[0], redact_url(str(args[1])), args[2])
        return True


#: The logger handed to websockets on both ends: its own lines, without frame contents.
wire_logger = logging.getLogger("tether.wire")
wire_logger.addFilter(_NoSecrets())


def _retry_after(value: str | None) -> float | None:
    """Parse ``Retry-After``: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def translate(error: BaseException) -> TransportError:
    """Map a ``websockets`` or OS exception to tether's transport vocabulary."""
    if isinstance(error, TransportError):
        return error
    if isinstance(error, InvalidStatus):
        response = error.response
        return Refused(
            f"server answered HTTP {response.status_code} {response.reason_phrase}".strip(),
            status=response.status_code,
            retry_after=_retry_after(response.headers.get("Retry-After")),
        )
    if isinstance(error, InvalidURI):
        return Refused(f"invalid URI {redact_url(error.uri)}: {error.msg}", fatal=True)
    if isinstance(error, ssl_module.SSLCertVerificationError):
        return Refused(f"TLS certificate verification failed: {error.verify_message}",
                       fatal=True)
    if isinstance(error, ConnectionClosed):
        # The peer's close frame if it sent one, else ours (1009 for a frame over max_size).
        close, who = (error.rcvd, "peer closed") if error.rcvd is not None else \
            (error.sent, "closed")
        if close is None:
            return Broken(f"connection broke without a closing handshake: {error}")
        reason = f" ({close.reason})" if close.reason else ""
        return Closed(f"{who} the connection with code {close.code}{reason}", code=close.code)
    if isinstance(error, TimeoutError):
        return TimedOut("opening handshake timed out")
    if isinstance(error, InvalidHandshake):
        return RemoteProtocolError(f"invalid opening handshake: {error}")
    if isinstance(error, ConnectionRefusedError):
        return Refused(f"connection refused: {error}")
    if isinstance(error, OSError):
        return Broken(f"{type(error).__name__}: {error}")
    return Broken(f"unexpected {type(error).__name__}: {error}")


#: Messages the transport's pump reads ahead of its reader. When they are not taken, the
#: pump stops, websockets' own buffer fills (``max_queue``, 16 frames) and it stops reading
#: the socket: TCP pushes back on the server, and memory stays bounded.
READ_AHEAD = 16


class WebSocketTransport:
    """One open ``websockets`` connection behind the :class:`Transport` interface.

    A small pump task moves incoming messages into a bounded queue (``READ_AHEAD``) so
    that :meth:`receive_nowait` can read what is buffered without waiting; it ends with
    the connection.
    """

    def __init__(self, connection: ClientConnection) -> None:
        self._ws = connection
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=READ_AHEAD)
        self._error: TransportError | None = None
        self._aborted = False
        self._pump = asyncio.ensure_future(self._run_pump())

    async def _run_pump(self) -> None:
        try:
            async for message in self._ws:
                await self._queue.put(message)
            await self._ws.wait_closed()
            self._error = translate(self._ws.protocol.close_exc)
        except ConnectionClosed as error:
            self._error = translate(error)
        except Exception as error:
            self._error = translate(error)
        await self._queue.put(_EOF)

    @property
    def closed(self) -> bool:
        return self._aborted or self._error is not None or self._ws.close_code is not None

    def _check_open(self) -> None:
        if self._aborted:
            raise Broken("transport was aborted")
        if self._error is not None:
            raise self._error

    async def send(self, frame: Frame) -> None:
        self._check_open()
        try:
            await self._ws.send(frame)
        except Exception as error:
            raise translate(error) from error

    async def receive(self) -> Frame:
        self._check_open_for_receive()
        item = await self._queue.get()
        return self._unpack(item)

    def receive_nowait(self) -> Frame | None:
        self._check_open_for_receive()
        try:
            item = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        return self._unpack(item)

    def _check_open_for_receive(self) -> None:
        if self._aborted:
            raise Broken("transport was aborted")

    def _unpack(self, item: Any) -> Frame:
        if item is _EOF:
            self._queue.put_nowait(_EOF)  # every later receive fails the same way (the
            # queue just gave up this item, so there is room)
            assert self._error is not None
            raise self._error
        frame: Frame = item
        return frame

    async def ping(self) -> Awaitable[float]:
        self._check_open()
        try:
            return await self._ws.ping()
        except Exception as error:
            raise translate(error) from error

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self._aborted:
            return
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


class WebSocketDialer:
    """Dials ``url`` with ``websockets``; the link's heartbeat replaces its keepalive."""

    def __init__(
        self,
        url: str,
        *,
        open_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        close_timeout: float = 2.0,
        max_size: int | None = DEFAULT_MAX_SIZE,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {type(url).__name__}")
        self.url = url
        self.open_timeout = seconds("open_timeout", open_timeout)
        self.close_timeout = seconds("close_timeout", close_timeout)
        if max_size is not None:
            count("max_size", max_size, what="bytes; None for no limit")
        self.max_size = max_size
        if ssl is not None and not isinstance(ssl, ssl_module.SSLContext):
            raise TypeError(f"ssl must be an ssl.SSLContext or None, got {type(ssl).__name__}")
        self.ssl = ssl

    def __repr__(self) -> str:
        return f"WebSocketDialer({redact_url(self.url)!r})"

    async def dial(self, headers: Mapping[str, str]) -> WebSocketTransport:
        options: dict[str, Any] = {}
        if self.ssl is not None:
            options["ssl"] = self.ssl
        try:
            connection = await ws_connect(
                self.url,
                additional_headers=dict(headers),
                open_timeout=self.open_timeout,
                close_timeout=self.close_timeout,
                ping_interval=None,
                ping_timeout=None,
                max_size=self.max_size,
                logger=wire_logger,
                **options,
            )
        except Exception as error:
            raise translate(error) from error
        return WebSocketTransport(connection)


def connect(
    url: str,
    *,
    heartbeat: Heartbeat | None = None,
    backoff: Backoff | None = None,
    session: bool = False,
    on_rebuild: RebuildHook | Sequence[RebuildHook] | None = None,
    headers: Headers | None = None,
    outbox_limit: int = DEFAULT_LIMIT,
    outbox_bytes: int = DEFAULT_MAX_BYTES,
    overflow: Overflow = Overflow.RAISE,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    close_timeout: float = 2.0,
    max_size: int | None = DEFAULT_MAX_SIZE,
    ssl: ssl_module.SSLContext | None = None,
    **options: Any,
) -> Link:
    """A :class:`~adapters.link.Link` to ``url``; use it as ``async with connect(...)``.

    ``headers`` may be a mapping, or a callable (sync or async) evaluated on every
    attempt, so a refreshed token is used on the next reconnect. ``wss://`` verifies
    certificates by default; pass ``ssl`` to trust a private CA. Other ``options`` go to
    :class:`~adapters.link.Link` (``spec``, ``on_action``, ``correlate``, ``rng``,
    ``name``, ``inbound_limit``, ``inbound_bytes``). The link's ``name`` (in every log
    line) defaults to the URL without its credentials.
    """
    dialer = WebSocketDialer(url, open_timeout=handshake_timeout, close_timeout=close_timeout,
                             max_size=max_size, ssl=ssl)
    options.setdefault("name", redact_url(url))
    return Link(dialer, heartbeat=heartbeat, backoff=backoff, session=session,
                on_rebuild=on_rebuild, headers=headers, outbox_limit=outbox_limit,
                outbox_bytes=outbox_bytes, overflow=overflow,
                handshake_timeout=handshake_timeout, close_timeout=close_timeout, **options)
