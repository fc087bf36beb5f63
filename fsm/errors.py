"""Every error tether raises, and the classifier that sorts transport failures.

The hierarchy, in the manner of websockets' ``exceptions.py``::

    TetherError
    ├── LocalProtocolError        our caller misused the API (their fault)
    │   ├── LinkClosedError       send()/request() on a CLOSED or FAILED link
    │   └── OutboxFull            the bounded outbox is full and the policy is "raise"
    ├── SpecError                 a lifecycle spec is inconsistent (the spec author's fault)
    ├── RequestTimeout            a request() got no response in time
    ├── RebuildError              a rebuild hook raised
    ├── LinkCorrupt               the core raised on a driver's report (a bug): fatal
    └── TransportError            the link to the peer failed (nobody's fault, or the peer's)
        ├── Refused               the peer would not accept us (TCP refused, HTTP status)
        ├── Closed                the peer closed the connection (with a close code)
        ├── Broken                the connection broke (reset, EOF, write on a dead socket)
        ├── TimedOut              an open or handshake took too long
        └── RemoteProtocolError   the peer sent something we cannot accept (its fault)

Each message says what happened; :class:`TransportError` carries the fields the
classifier needs (status, close code, retry-after), so the classifier never parses text.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Broken",
    "Closed",
    "LinkClosedError",
    "LinkCorrupt",
    "LocalProtocolError",
    "OutboxFull",
    "RebuildError",
    "Refused",
    "RemoteProtocolError",
    "RequestTimeout",
    "SpecError",
    "TetherError",
    "TimedOut",
    "TransportError",
    "Verdict",
    "classify",
]


class TetherError(Exception):
    """Base class of every error tether raises."""


class LocalProtocolError(TetherError):
    """The caller used the API in a way the link cannot honour."""


class LinkClosedError(LocalProtocolError):
    """The link is CLOSED or FAILED and accepts no more sends."""


class OutboxFull(LocalProtocolError):
    """The outbox holds ``limit`` messages and its overflow policy is ``raise``."""


class SpecError(TetherError):
    """A lifecycle spec failed validation; the message says how to fix it."""


class RequestTimeout(TetherError, TimeoutError):
    """A ``request()`` got no response carrying its id within its timeout."""


class RebuildError(TetherError):
    """A rebuild hook raised; the link treats the new session as unusable and retries."""


class LinkCorrupt(TetherError):
    """The lifecycle core raised on an event the driver reported: a custom spec's
    callback, an action handler's event, or a bug in tether. The link fails with it."""


class TransportError(TetherError):
    """The transport failed. ``fatal`` overrides the classifier when the transport knows."""

    fatal: bool | None = None

    def __init__(self, message: str, *, fatal: bool | None = None) -> None:
        super().__init__(message)
        if fatal is not None:
            self.fatal = fatal


class Refused(TransportError):
    """The peer refused the connection: TCP refused (``status`` None) or an HTTP status."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        fatal: bool | None = None,
    ) -> None:
        super().__init__(message, fatal=fatal)
        self.status = status
        self.retry_after = retry_after


class Closed(TransportError):
    """The peer closed the connection, with a WebSocket close ``code`` when it sent one."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        retry_after: float | None = None,
        fatal: bool | None = None,
    ) -> None:
        super().__init__(message, fatal=fatal)
        self.code = code
        self.retry_after = retry_after


class Broken(TransportError):
    """The connection broke without a close handshake (reset, EOF, dead socket)."""


class TimedOut(TransportError):
    """Opening the transport or its handshake did not finish in time."""


class RemoteProtocolError(TransportError):
    """The peer sent a frame we cannot accept (malformed, oversize, wrong version)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do about a failure: retry (after at least ``retry_after`` s) or give up."""

    retry: bool
    reason: str
    retry_after: float | None = None


# HTTP statuses at the opening handshake that mean "come back later". 429 and 503 are
# retryable with Retry-After (websockets 17 treats 429 as fatal and ignores Retry-After).
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# Close codes that mean the server will not take us back as we are: 1008 policy violation
# (e.g. a revoked token), 4401/4403 (the application's unauthorized/forbidden).
FATAL_CLOSE_CODES = frozenset({1008, 4401, 4403})


def classify(error: BaseException) -> Verdict:
    """Sort a failure into retryable or fatal; the default classifier.

    Retryable: everything network-shaped (refused TCP, resets, timeouts, closes), HTTP
    408/425/429/5xx at the handshake, and a peer's protocol error (a new connection may
    meet a healthy server). Fatal: other 4xx statuses (credentials, wrong path), the close
    codes in :data:`FATAL_CLOSE_CODES`, and any :class:`TransportError` created with
    ``fatal=True`` (a protocol version mismatch). Errors that are not transport errors are
    bugs in a hook or in the driver; they are retried, so one bad callback cannot kill
    the link, and the driver logs them.
    """
    what = f"{type(error).__name__}: {error}"
    if isinstance(error, LinkCorrupt):
        return Verdict(retry=False, reason=what)
    if isinstance(error, TransportError) and error.fatal is not None:
        retry_after = None if error.fatal else getattr(error, "retry_after", None)
        return Verdict(retry=not error.fatal, reason=what, retry_after=retry_after)
    if isinstance(error, Refused) and error.status is not None:
        if error.status in RETRYABLE_STATUSES:
            return Verdict(retry=True, reason=what, retry_after=error.retry_after)
        return Verdict(retry=False, reason=f"{what} (HTTP {error.status} is not retryable)")
    if isinstance(error, Closed):
        if error.code in FATAL_CLOSE_CODES:
            return Verdict(retry=False, reason=f"{what} (close code {error.code} is final)")
        return Verdict(retry=True, reason=what, retry_after=error.retry_after)
    return Verdict(retry=True, reason=what)
