"""Session-protocol frames (``models/PROTOCOL.md``): dataclasses and a strict JSON codec.

:func:`decode` never trusts the peer: every member is checked for presence and type,
and whatever is wrong raises :class:`fsm.errors.RemoteProtocolError` with the error
``code`` of the protocol and a message that names the frame and the member. Tokens are
kept out of ``repr`` so that logging a frame never leaks a secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fsm.errors import RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "MAX_DEPTH",
    "VERSION",
    "Ack",
    "Error",
    "Frame",
    "Hello",
    "Msg",
    "Ping",
    "Pong",
    "ProtocolViolation",
    "Welcome",
    "decode",
    "encode",
    "encode_data",
    "msg_text",
    "too_deep",
]

VERSION = 1
DEFAULT_MAX_FRAME = 2**20
#: Deepest nesting of arrays and objects a message's ``data`` may have (PROTOCOL.md 1).
#: Far below where Python's JSON codec gives up (about 1,000 levels, less when called
#: deep in a stack), so a message accepted at one end can always be re-encoded at the
#: other: both ends refuse deeper data, the sender at ``send()`` with a clear error.
MAX_DEPTH = 64
_MAX_INT = 2**53 - 1


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """True if ``value`` nests lists, tuples or dicts more than ``limit`` levels deep
    (a scalar is depth 0, ``[]`` depth 1). Iterative: any depth is safe to ask about."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, dict | list | tuple))
    return False


class ProtocolViolation(RemoteProtocolError):
    """The peer broke the session protocol; ``code`` is the protocol's error code."""

    def __init__(self, code: str, message: str, *, fatal: bool = False) -> None:
        super().__init__(f"{code}: {message}", fatal=fatal)
        self.code = code
        self.detail = message


@dataclass(frozen=True, slots=True)
class Frame:
    """Base class of the seven frames."""


@dataclass(frozen=True, slots=True)
class Hello(Frame):
    ack: int
    session: str | None = None
    token: str | None = field(default=None, repr=False)
    v: int = VERSION
    limits: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Welcome(Frame):
    session: str
    epoch: str
    resumed: bool
    ack: int
    token: str | None = field(default=None, repr=False)
    limits: dict[str, int] = field(default_factory=dict)
    v: int = VERSION


@dataclass(frozen=True, slots=True)
class Msg(Frame):
    seq: int
    ack: int
    data: Any = None


@dataclass(frozen=True, slots=True)
class Ack(Frame):
    ack: int


@dataclass(frozen=True, slots=True)
class Ping(Frame):
    ack: int


@dataclass(frozen=True, slots=True)
class Pong(Frame):
    ack: int


@dataclass(frozen=True, slots=True)
class Error(Frame):
    code: str
    message: str
    fatal: bool = False
    retry_after: float | None = None


_TYPES: dict[str, type[Frame]] = {
    "hello": Hello, "welcome": Welcome, "msg": Msg, "ack": Ack,
    "ping": Ping, "pong": Pong, "error": Error,
}
_NAMES = {cls: name for name, cls in _TYPES.items()}


def encode(frame: Frame) -> str:
    """The JSON text of ``frame``. Optional members that are ``None`` are left out; a
    message's ``data`` is always written, ``null`` included. Raises ``ValueError`` for a
    payload that is not JSON (NaN and infinities are not)."""
    body: dict[str, Any] = {"type": _NAMES[type(frame)]}
    for name in frame.__dataclass_fields__:
        value = getattr(frame, name)
        if value is not None or (name == "data" and isinstance(frame, Msg)):
            body[name] = value
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_data(data: Any) -> str:
    """The JSON text of a message's ``data``, exactly as :func:`encode` writes it inside a
    ``msg`` frame; the sending side calls it once, when the application hands the message
    over, so that everything that can be wrong with it is said then and there.

    Raises ``TypeError`` for a value JSON cannot carry and ``ValueError`` for NaN or an
    infinity, for data nested deeper than :data:`MAX_DEPTH`, and for a string that is not
    valid Unicode (a lone surrogate cannot be sent as UTF-8)."""
    if too_deep(data):
        raise ValueError(f"message data nested deeper than {MAX_DEPTH} levels "
                         f"(the protocol's MAX_DEPTH)")
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"message data is not valid Unicode: {error.reason} at "
                         f"character {error.start}") from None
    return text


def msg_text(seq: int, ack: int, data_text: str) -> str:
    """A ``msg`` frame around data already encoded by :func:`encode_data`: the same text
    :func:`encode` gives for ``Msg(seq, ack, data)``, without encoding the data again."""
    return f'{{"type":"msg","seq":{seq:d},"ack":{ack:d},"data":{data_text}}}'


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _member(body: dict[str, Any], kind: str, name: str, types: tuple[type, ...],
            *, required: bool = True) -> Any:
    if name not in body or body[name] is None:
        if required:
            raise ProtocolViolation("malformed", f"{kind} frame lacks {name!r}")
        return None
    value = body[name]
    # bool is an int in Python; the protocol keeps them apart.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        wanted = " or ".join(t.__name__ for t in types)
        raise ProtocolViolation(
            "malformed", f"{kind} frame member {name!r} must be {wanted}, "
                         f"got {type(value).__name__}")
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= _MAX_INT:
        raise ProtocolViolation("malformed", f"{kind} frame member {name!r} out of range: "
                                             f"{value}")
    return value


def _limits(body: dict[str, Any], kind: str) -> dict[str, int]:
    """A ``limits`` member: the entries that are non-negative integers (others ignored,
    for forward compatibility)."""
    limits = _member(body, kind, "limits", (dict,), required=False) or {}
    return {k: v for k, v in limits.items()
            if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            and 0 <= v <= _MAX_INT}


def decode(text: str | bytes, *, max_frame: int = DEFAULT_MAX_FRAME) -> Frame:
    """Parse one frame; raise :class:`ProtocolViolation` naming what is wrong."""
    if isinstance(text, bytes):
        raise ProtocolViolation("malformed", "binary frame; the protocol uses text frames")
    if len(text) > max_frame:  # characters <= bytes: a cheap first bound
        raise ProtocolViolation("too_big", f"frame of {len(text)} characters exceeds "
                                           f"max_frame {max_frame}")
    if len(text.encode("utf-8", "surrogatepass")) > max_frame:
        raise ProtocolViolation("too_big", f"frame exceeds max_frame {max_frame} bytes")
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except ValueError as error:
        raise ProtocolViolation("malformed", f"not JSON: {error}") from None
    except RecursionError:
        raise ProtocolViolation("malformed", "JSON nested too deeply") from None
    if not isinstance(body, dict):
        raise ProtocolViolation("malformed", f"frame is a JSON {type(body).__name__}, "
                                             f"not an object")
    kind = body.get("type")
    if not isinstance(kind, str):
        raise ProtocolViolation("malformed", "frame lacks a string 'type'")
    if kind not in _TYPES:
        raise ProtocolViolation("type", f"unknown frame type {kind!r}")
    if kind == "hello":
        version = _member(body, kind, "v", (int,))
        if version != VERSION:
            raise ProtocolViolation("version", f"client speaks version {version}, this "
                                               f"server speaks {VERSION}", fatal=True)
        return Hello(ack=_member(body, kind, "ack", (int,)),
                     session=_member(body, kind, "session", (str,), required=False),
                     token=_member(body, kind, "token", (str,), required=False),
                     limits=_limits(body, kind))
    if kind == "welcome":
        version = _member(body, kind, "v", (int,))
        if version != VERSION:
            raise ProtocolViolation("version", f"server speaks version {version}, this "
                                               f"client speaks {VERSION}", fatal=True)
        return Welcome(session=_member(body, kind, "session", (str,)),
                       epoch=_member(body, kind, "epoch", (str,)),
                       resumed=_member(body, kind, "resumed", (bool,)),
                       ack=_member(body, kind, "ack", (int,)),
                       token=_member(body, kind, "token", (str,), required=False),
                       limits=_limits(body, kind))
    if kind == "msg":
        if "data" not in body:
            raise ProtocolViolation("malformed", "msg frame lacks 'data'")
        if too_deep(body["data"]):
            raise ProtocolViolation("malformed", f"msg data nested deeper than "
                                                 f"{MAX_DEPTH} levels")
        return Msg(seq=_member(body, kind, "seq", (int,)), ack=_member(body, kind, "ack", (int,)),
                   data=body["data"])
    if kind == "error":
        retry_after = _member(body, kind, "retry_after", (int, float), required=False)
        return Error(code=_member(body, kind, "code", (str,)),
                     message=_member(body, kind, "message", (str,)),
                     fatal=bool(_member(body, kind, "fatal", (bool,), required=False)),
                     retry_after=float(retry_after) if retry_after is not None else None)
    frame_cls = _TYPES[kind]
    ack: int = _member(body, kind, "ack", (int,))
    frame: Frame = frame_cls(ack=ack)  # type: ignore[call-arg]
    return frame
