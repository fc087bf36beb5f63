"""tether's pure core: the lifecycle table, policies, outbox and spec tools. No I/O here.

``fsm`` never imports asyncio, socket, time or random: time is an input (``now``) and
deadlines are outputs. See :mod:`fsm.lifecycle` for the theory of operation.
"""

from fsm.actions import (
    AbortTransport,
    Action,
    CloseTransport,
    Deliver,
    HandBack,
    NotifyStateChange,
    OpenTransport,
    RunRebuild,
    SendPing,
    StateChange,
    Transmit,
)
from fsm.backoff import Backoff
from fsm.errors import TetherError, Verdict, classify
from fsm.heartbeat import Heartbeat
from fsm.lifecycle import Lifecycle
from fsm.outbox import Envelope, Outbox, Overflow
from fsm.spec import DEFAULT_SPEC, Spec, emit
from fsm.states import State, Tags

__all__ = [
    "DEFAULT_SPEC",
    "AbortTransport",
    "Action",
    "Backoff",
    "CloseTransport",
    "Deliver",
    "Envelope",
    "HandBack",
    "Heartbeat",
    "Lifecycle",
    "NotifyStateChange",
    "OpenTransport",
    "Outbox",
    "Overflow",
    "RunRebuild",
    "SendPing",
    "Spec",
    "State",
    "StateChange",
    "Tags",
    "TetherError",
    "Transmit",
    "Verdict",
    "classify",
    "emit",
]
