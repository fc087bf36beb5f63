"""Conformance: replay steps recorded from the Python core against the model's table.

:func:`recording` wraps :meth:`fsm.lifecycle.Lifecycle._trigger` (the one place where
an event reaches the ``transitions`` machine, timer events included) for as long as it
is active, without changing any source: every call is recorded as a :class:`Step` with
the event, the state before and after, and the abstract variables of the model
(:mod:`models.meanings`) read off the lifecycle before and after: the transport, the
rebuild flag, which deadlines are armed, the failure count, the epochs, and the actions
the step asked for. Anything that drives a real ``Lifecycle`` can be recorded: the core's
property tests, or whole links on the in-memory transport.

:func:`replay` checks every distinct step against the generated model, with spin: for
each step a harness sets the model's variables to the recorded "before", runs the
generated ``handle_event()`` (the same text ``make verify`` checks), and compares the
model's "after" with the recorded one, field by field; for a timer event it also checks
that the model's clock would have fired that event then (``DUE`` and ``TIMER_EVENT``).
A step the model does not allow is returned as a :class:`Mismatch` naming the step.

The mapping from the code's values to the model's is written once, in :func:`_snapshot`:
times become "armed or not" (and "due" for the deadline a timer event fired), the
silence becomes "heard just now or not", epochs become small numbers (equal stays equal).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fsm.actions import (
    AbortTransport,
    CloseTransport,
    Deliver,
    HandBack,
    NotifyStateChange,
    OpenTransport,
    RunRebuild,
    SendPing,
    Transmit,
)
from fsm.errors import LocalProtocolError
from fsm.events import TIMER_EVENTS, Connected, Event
from fsm.lifecycle import Lifecycle
from models.generate import Model
from models.verify import INSTALL, ToolMissing

__all__ = ["Mismatch", "Recorder", "Step", "recording", "replay"]

_TP = {"none": 0, "opening": 1, "open": 2, "closing": 3}
_UNSET = 255
_GRACE_TICKS = 3  # models/meanings.py GRACE
_BOUND_TICKS = 2  # INTERVAL + TIMEOUT
_TIMERS = {cls.__name__ for cls in TIMER_EVENTS}
#: Actions the lifecycle model tracks, as bits of the ``acts`` field.
_ACTION_BITS = ((OpenTransport, 1), (AbortTransport, 2), (CloseTransport, 4), (RunRebuild, 8),
                (SendPing, 16))
_UNTRACKED = (Transmit, Deliver, HandBack, NotifyStateChange)
_CUSTOM_BIT = 32

#: The fields of a step, in the order the harness reads them.
BEFORE = ("st", "ev", "ev_fatal", "ev_resumed", "ev_epoch", "tp", "rebuilding", "lh", "pd",
          "hd", "da", "late", "online_since", "up", "failures", "epoch", "rebuilt_epoch",
          "c_resumed", "c_epoch", "session", "budget_v")
AFTER = ("st", "tp", "rebuilding", "heard", "pd_armed", "hd_armed", "da_armed",
         "online_since", "failures", "rebuilt_epoch", "acts", "refused")


@dataclass(frozen=True)
class Step:
    """One recorded step: ``before`` and ``after`` in the model's terms, and where it
    came from."""

    spec: str
    trigger: str
    before: tuple[int, ...]
    after: tuple[int, ...]
    source: str = field(compare=False, default="")
    index: int = field(compare=False, default=0)  # the step's number in its trace
    event: str = field(compare=False, default="")
    states: tuple[str, str] = field(compare=False, default=("", ""))

    @property
    def key(self) -> tuple[object, ...]:
        return (self.spec, self.before, self.after)

    def describe(self) -> str:
        old, new = self.states
        return (f"step {self.index} of {self.source}: {self.event} in {old!r} "
                f"(the code went to {new!r})")


@dataclass
class Recorder:
    """Steps recorded while :func:`recording` is active, and the trace they belong to."""

    steps: list[Step] = field(default_factory=list)
    source: str = "trace"
    _epochs: dict[str, int] = field(default_factory=dict)
    #: every lifecycle seen (held, so that ids are not reused), its number and step count
    _links: dict[int, tuple[Lifecycle, int, int]] = field(default_factory=dict)

    def epoch(self, value: str | None) -> int:
        """A small number for an epoch string, the same one each time; None is UNSET."""
        if value is None:
            return _UNSET
        return self._epochs.setdefault(value, len(self._epochs) % 250)

    def trace(self, name: str) -> None:
        """Name the source of the next steps (each lifecycle is a trace of its own)."""
        self.source = name

    @property
    def traces(self) -> int:
        """How many lifecycles were recorded."""
        return len(self._links)

    def record(self, lc: Lifecycle, event: Event, run: Callable[[], None]) -> None:
        before = self._before(lc, event)
        state = str(lc.state)
        count = len(lc._actions)
        refused = 0
        try:
            run()
        except LocalProtocolError as error:
            # refuse_message raises LinkClosedError (a LocalProtocolError) by design;
            # open_transport raises while a transport is held: the model's refused_dial
            refused = int("refusing to dial" in str(error))
            raise
        finally:
            _, number, index = self._links.get(id(lc), (lc, len(self._links) + 1, 0))
            self._links[id(lc)] = (lc, number, index + 1)
            self.steps.append(Step(
                lc.spec.name, event.trigger(), before,
                self._after(lc, lc._actions[count:], refused),
                source=f"{self.source}, trace #{number}", index=index + 1,
                event=event.describe(), states=(state, str(lc.state))))

    # -- the mapping, code to model ----------------------------------------------------

    def _before(self, lc: Lifecycle, event: Event) -> tuple[int, ...]:
        spec = lc.spec
        trigger = event.trigger()
        now = lc._now
        timer = trigger in _TIMERS
        error = getattr(event, "error", None)
        fatal = int(error is not None and not lc.classify(error).retry)
        connected = event if isinstance(event, Connected) else None
        deadline = lc._next_timer() if timer else None
        late = int(timer and lc.tags.live and deadline is not None
                   and now - deadline > lc.heartbeat.grace)
        healthy = lc._online_since is not None and now - lc._online_since >= lc.backoff.grace
        budget = lc.backoff.budget or 0

        def armed(value: float | None) -> int:
            if value is None:
                return _UNSET
            return 0 if timer and deadline is not None and value <= now else 1

        heard_now = lc._last_heard == now
        return (
            spec.state_names.index(str(lc.state)),
            spec.triggers.index(trigger) + 1,
            fatal,
            int(bool(connected and connected.resumed)),
            self.epoch(connected.epoch) if connected else _UNSET,
            _TP[lc._transport],
            int(lc._rebuilding),
            0 if heard_now else _BOUND_TICKS,
            armed(lc._probe_deadline),
            armed(lc._handshake_deadline),
            armed(lc._dial_at),
            late,
            int(lc._online_since is not None),
            _GRACE_TICKS if healthy else 0,
            min(lc._failures, budget) if budget else 0,
            self.epoch(lc._epoch),
            self.epoch(lc._rebuilt_epoch),
            int(lc._connected.resumed),
            self.epoch(lc._connected.epoch),
            int(lc.session),
            budget,
        )

    def _after(self, lc: Lifecycle, actions: Sequence[object], refused: int) -> tuple[int, ...]:
        budget = lc.backoff.budget or 0
        acts = 0
        for action in actions:
            bits = [bit for kind, bit in _ACTION_BITS if isinstance(action, kind)]
            if bits:
                acts |= bits[0]
            elif not isinstance(action, _UNTRACKED):
                acts |= _CUSTOM_BIT  # an emit(...) action
        return (
            lc.spec.state_names.index(str(lc.state)),
            _TP[lc._transport],
            int(lc._rebuilding),
            int(lc._last_heard == lc._now),
            int(lc._probe_deadline is not None),
            int(lc._handshake_deadline is not None),
            int(lc._dial_at is not None),
            int(lc._online_since is not None),
            min(lc._failures, budget) if budget else 0,
            self.epoch(lc._rebuilt_epoch),
            acts,
            refused,
        )


@contextlib.contextmanager
def recording() -> Iterator[Recorder]:
    """Record every step of every :class:`Lifecycle` while the block runs."""
    recorder = Recorder()
    original = Lifecycle._trigger

    def trigger(self: Lifecycle, event: Event) -> None:
        recorder.record(self, event, lambda: original(self, event))

    Lifecycle._trigger = trigger  # type: ignore[method-assign]
    try:
        yield recorder
    finally:
        Lifecycle._trigger = original  # type: ignore[method-assign]


# -- replaying against the model ---------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    step: Step
    field: str
    model: int | str
    code: int | str

    def __str__(self) -> str:
        return (f"{self.step.describe()}: the model's table gives {self.field} = {self.model}, "
                f"the code gave {self.code}")


def distinct(steps: Sequence[Step]) -> list[Step]:
    """One step per distinct (spec, before, after): the first one recorded."""
    seen: dict[tuple[object, ...], Step] = {}
    for step in steps:
        seen.setdefault(step.key, step)
    return list(seen.values())


def _harness(model: Model, steps: Sequence[Step]) -> str:
    width = len(BEFORE) + len(AFTER)
    lines = [
        "/* Replay harness written by models/replay.py: each step's recorded 'before' is",
        "   loaded, the generated handle_event() runs, the 'after' is compared. */",
        "#define BUDGET budget_v",
        "byte budget_v;",
        model.text,
        f"#define N_STEPS {len(steps)}",
        f"#define W {width}",
        f"byte D[{len(steps) * width}];",
        "int i; int b;",
        "byte acts; byte want;",
        "#define EXPECT(k, got) \\",
        "  want = D[b + k]; \\",
        "  if \\",
        "  :: (got) != want -> printf(\"MISMATCH %d %d %d %d\\n\", i, k, got, want) \\",
        "  :: else \\",
        "  fi",
        "init {",
        "  d_step {",
    ]
    for n, step in enumerate(steps):
        values = (*step.before, *step.after)
        lines.append("    " + " ".join(f"D[{n * width + k}] = {v};" for k, v in enumerate(values)))
    lines += ["  };", "  i = 0;", "  do", "  :: i < N_STEPS ->", "     b = i * W;"]
    for k, name in enumerate(BEFORE):
        lines.append(f"     {name} = D[b + {k}];")
    lines += [
        "     a_open = 0; a_abort = 0; a_close = 0; a_rebuild = 0; a_ping = 0; a_custom = 0;",
        "     refused_dial = 0; no_outcome = 0;",
        "     if",
        "     :: IS_TIMER(ev) && !DUE -> printf(\"MISMATCH %d -1 0 1\\n\", i)",
        "     :: IS_TIMER(ev) && DUE && TIMER_EVENT != ev ->",
        "        printf(\"MISMATCH %d -2 %d %d\\n\", i, TIMER_EVENT, ev)",
        "     :: else",
        "     fi;",
        "     handle_event();",
        "     if",
        "     :: no_outcome -> printf(\"MISMATCH %d -3 1 0\\n\", i)",
        "     :: else",
        "     fi;",
        "     acts = a_open + 2 * a_abort + 4 * a_close + 8 * a_rebuild + 16 * a_ping"
        " + 32 * a_custom;",
    ]
    got = {"st": "st", "tp": "tp", "rebuilding": "rebuilding", "heard": "(lh == 0)",
           "pd_armed": "(pd != UNSET)", "hd_armed": "(hd != UNSET)", "da_armed": "(da != UNSET)",
           "online_since": "online_since", "failures": "failures",
           "rebuilt_epoch": "rebuilt_epoch", "acts": "acts", "refused": "refused_dial"}
    for k, name in enumerate(AFTER, start=len(BEFORE)):
        lines.append(f"     EXPECT({k}, {got[name]});  /* {name} */")
    lines += ["     i++", "  :: else -> break", "  od;", "  printf(\"REPLAYED %d\\n\", i)", "}"]
    return "\n".join(lines) + "\n"


def replay(model: Model, steps: Sequence[Step], *, timeout: float = 300) -> list[Mismatch]:
    """Every way the model's table disagrees with ``steps`` (steps of ``model``'s spec)."""
    spin = shutil.which("spin")
    if spin is None:
        raise ToolMissing(f"replaying traces against the model needs spin: {INSTALL}")
    steps = list(steps)
    if not steps:
        return []
    with tempfile.TemporaryDirectory(prefix="tether-replay-") as tmp:
        path = Path(tmp) / "replay.pml"
        path.write_text(_harness(model, steps), encoding="utf-8")
        proc = subprocess.run([spin, "-n1", path.name], cwd=tmp, capture_output=True, text=True,
                              timeout=timeout, check=False)
    out = proc.stdout + proc.stderr
    done = re.search(r"REPLAYED (\d+)", out)
    if proc.returncode != 0 or done is None or int(done.group(1)) != len(steps):
        raise RuntimeError(f"the replay harness did not run to the end: {out.strip()[-800:]}")
    mismatches = []
    names = {-1: "due (a deadline the code fired)", -2: "timer event",
             -3: "no_outcome", **{k: name for k, name in enumerate(AFTER, start=len(BEFORE))}}
    for hit in re.finditer(r"MISMATCH (\d+) (-?\d+) (-?\d+) (-?\d+)", out):
        number, k, got, want = (int(g) for g in hit.groups())
        name = names.get(k, str(k))
        if name == "st":
            mismatches.append(Mismatch(steps[number], name, model.state_name(got),
                                       model.state_name(want)))
        elif name == "timer event":
            mismatches.append(Mismatch(steps[number], name, model.event_name(got),
                                       model.event_name(want)))
        else:
            mismatches.append(Mismatch(steps[number], name, got, want))
    return mismatches


def by_spec(steps: Sequence[Step]) -> dict[str, list[Step]]:
    groups: dict[str, list[Step]] = {}
    for step in steps:
        groups.setdefault(step.spec, []).append(step)
    return groups

