"""Lifecycle specs: the default table, user extensions, and validation at build time.

A :class:`Spec` is the table of :mod:`fsm.table` plus whatever a user derived from it:
custom states (each with explicit tags), custom events (frozen dataclasses subclassing
:class:`fsm.events.Event`), extra transitions, dropped rows and extra no-ops. Building a
spec validates it and fails with a :class:`fsm.errors.SpecError` that names the problem
and says how to fix it, the way hypothesis' ``InvalidDefinition`` does. A valid spec is
built once into a ``transitions.Machine`` that every link of that spec shares: a link is a
*model* of the machine and carries only its own fields (see :mod:`fsm.lifecycle`).

Checks, in order: every state has a name and explicit tags from :data:`TAG_NAMES`; the
eight built-in states are present; every row names declared states and known events;
final states have no way out; for each (state, event) pair, rows are not shadowed by an
earlier unconditional row, the last row is unconditional, and pairs without rows are
listed as ignored (and pairs with rows are not); every state is reachable from the
initial state; every non-final state can get back to ONLINE; every live state acts on
its heartbeat (``SilenceNoticed`` and ``ProbeUnanswered`` lead out of live states).
"""

from __future__ import annotations

import difflib
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NoReturn

from transitions import EventData, Machine
from transitions.extensions.states import Tags as _TaggedState

from fsm import table
from fsm.actions import Action
from fsm.errors import SpecError
from fsm.events import INPUT_EVENTS, TIMER_EVENTS, Event
from fsm.states import TAG_NAMES, State, Tags

__all__ = ["DEFAULT_SPEC", "Row", "Spec", "emit"]

Row = dict[str, Any]

# transitions logs every callback of every event at INFO: thousands of lines a second
# across many links. Keep it to warnings unless the user turns it back up.
if logging.getLogger("transitions").level == logging.NOTSET:
    logging.getLogger("transitions").setLevel(logging.WARNING)


class _Machine(Machine):
    """A ``transitions`` machine whose states carry tags."""

    state_cls = _TaggedState


def emit(action: Action) -> Callable[[EventData], None]:
    """A table callback that makes the link perform ``action``: ``"after": emit(X())``."""

    def callback(event_data: EventData) -> None:
        perform: Callable[[Action], None] = getattr(event_data.model, "perform")  # noqa: B009
        perform(action)

    callback.__name__ = f"emit({action!r})"
    return callback


def _listify(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _plain(name: Any) -> Any:
    return str(name) if isinstance(name, str) else name


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class Spec:
    """A validated lifecycle table. Build one with :meth:`derive` from :data:`DEFAULT_SPEC`."""

    states: tuple[Row, ...]
    transitions: tuple[Row, ...]
    ignored: Mapping[str, tuple[str, ...]]
    events: tuple[type[Event], ...] = INPUT_EVENTS + TIMER_EVENTS
    initial: str = table.INITIAL
    name: str = "default"
    _rows: tuple[Row, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # State members are StrEnums; keep plain strings so messages and the machine agree.
        plain = tuple({**row, "name": _plain(row.get("name"))} for row in self.states)
        object.__setattr__(self, "states", plain)
        object.__setattr__(self, "transitions", tuple(
            {**row, "source": [_plain(s) for s in _listify(row["source"])],
             **({"dest": _plain(row["dest"])} if "dest" in row else {})}
            if "source" in row else dict(row)
            for row in self.transitions))
        object.__setattr__(self, "ignored", {
            _plain(state): tuple(triggers) for state, triggers in self.ignored.items()})
        object.__setattr__(self, "initial", _plain(self.initial))
        object.__setattr__(self, "_rows", tuple(self._split_rows()))
        self.validate()

    # -- reading the spec ----------------------------------------------------------------

    @cached_property
    def tags(self) -> dict[str, Tags]:
        return {row["name"]: Tags.from_names(frozenset(row["tags"])) for row in self.states}

    @property
    def state_names(self) -> list[str]:
        return [row["name"] for row in self.states]

    @property
    def triggers(self) -> list[str]:
        return [event.trigger() for event in self.events]

    @property
    def rows(self) -> tuple[Row, ...]:
        """One row per (trigger, source) with its dest and whether it is conditional."""
        return self._rows

    def outcomes(self, state: str, trigger: str) -> list[Row]:
        """The rows for ``(state, trigger)`` in the order they are tried."""
        return [r for r in self._rows if r["source"] == state and r["trigger"] == trigger]

    def is_ignored(self, state: str, trigger: str) -> bool:
        return trigger in self.ignored.get(state, ())

    @cached_property
    def machine(self) -> Machine:
        """The ``transitions`` machine for this spec, shared by every link built from it."""
        states = [dict(row) for row in self.states]
        rows = [dict(row) for row in self.transitions]
        rows += [
            {"trigger": trigger, "source": state, "dest": None}
            for state, triggers in self.ignored.items()
            for trigger in triggers
        ]
        return _Machine(
            model=None,
            states=states,
            transitions=rows,
            initial=self.initial,
            send_event=True,
            auto_transitions=False,
            model_override=True,
            ignore_invalid_triggers=False,
            after_state_change="record_change",
            name=f"tether[{self.name}]",
        )

    # -- deriving ---------------------------------------------------------------------

    def derive(
        self,
        *,
        name: str,
        states: Sequence[Row] = (),
        events: Sequence[type[Event]] = (),
        transitions: Sequence[Row] = (),
        drop: Sequence[tuple[str, str]] = (),
        ignore: Mapping[str, Sequence[str]] | None = None,
    ) -> Spec:
        """A new spec: this one plus ``states``, ``events`` and ``transitions``, minus the
        rows ``drop`` names as ``(trigger, source)``, plus the no-ops in ``ignore``.

        New transitions are tried *before* the existing rows of the same pair, so a user
        row can take over a built-in pair only if the built-in fallback is dropped: a
        shadowed row is a spec error, not a silent override.
        """
        dropped = set(drop)
        kept: list[Row] = []
        for row in self.transitions:
            sources = [s for s in _listify(row["source"]) if (row["trigger"], s) not in dropped]
            if sources:
                kept.append({**row, "source": sources})
        ignored = {state: tuple(t for t in trig if (t, state) not in dropped)
                   for state, trig in self.ignored.items()}
        for state, triggers in (ignore or {}).items():
            ignored[state] = (*ignored.get(state, ()), *triggers)
        return Spec(
            states=(*self.states, *states),
            transitions=(*transitions, *kept),
            ignored=ignored,
            events=(*self.events, *events),
            initial=self.initial,
            name=name,
        )

    # -- validation -----------------------------------------------------------------------

    def _split_rows(self) -> Iterable[Row]:
        for index, row in enumerate(self.transitions):
            missing = {"trigger", "source", "dest"} - set(row)
            if missing:
                self._fail(f"transition #{index} {row!r} lacks {', '.join(sorted(missing))}",
                           "give every row a trigger, a source and a dest (dest None for an "
                           "internal transition)")
            conditional = bool(_listify(row.get("conditions")) or _listify(row.get("unless")))
            for source in _listify(row["source"]):
                yield {"trigger": row["trigger"], "source": source, "dest": row["dest"],
                       "conditional": conditional, "index": index}

    def validate(self) -> None:
        """Raise :class:`SpecError` on the first problem found, saying how to fix it."""
        self._check_states()
        self._check_rows()
        self._check_outcomes()
        self._check_reachability()
        self._check_heartbeat()

    def _fail(self, problem: str, fix: str) -> NoReturn:
        raise SpecError(f"spec {self.name!r}: {problem}. Fix: {fix}.")

    def _check_states(self) -> None:
        seen: set[str] = set()
        for row in self.states:
            name = row.get("name")
            if not isinstance(name, str) or not name:
                self._fail(f"state {row!r} has no name", "give every state a 'name' string")
            if name in seen:
                self._fail(f"state {name!r} is declared twice", "declare each state once")
            seen.add(name)
            if "tags" not in row:
                self._fail(
                    f"state {name!r} has no tags",
                    f"say which of {', '.join(TAG_NAMES)} apply, e.g. "
                    f"{{'name': {name!r}, 'tags': ['transport', 'sends']}}",
                )
            for tag in row["tags"]:
                if tag not in TAG_NAMES:
                    self._fail(f"state {name!r} has unknown tag {tag!r}{_suggest(tag, TAG_NAMES)}",
                               f"use only {', '.join(TAG_NAMES)}")
            tags = frozenset(row["tags"])
            if "final" in tags and tags & {"live", "transport", "sends"}:
                self._fail(f"final state {name!r} is also tagged "
                           f"{sorted(tags & {'live', 'transport', 'sends'})}",
                           "a final state holds no transport and accepts no sends")
            if "live" in tags and "transport" not in tags:
                self._fail(f"live state {name!r} is not tagged 'transport'",
                           "a live state talks over a transport: add the 'transport' tag")
        for builtin in State:
            if builtin.value not in seen:
                self._fail(f"built-in state {builtin.value!r} is missing",
                           "derive custom specs from DEFAULT_SPEC with Spec.derive()")
        if self.initial not in seen:
            self._fail(f"initial state {self.initial!r} is not declared", "declare it")

    def _check_rows(self) -> None:
        states, triggers = set(self.state_names), set(self.triggers)
        for row in self._rows:
            where = f"transition #{row['index']} ({row['trigger']} from {row['source']!r})"
            if row["trigger"] not in triggers:
                self._fail(f"{where} uses unknown event {row['trigger']!r}"
                           f"{_suggest(row['trigger'], triggers)}",
                           "pass the Event subclass in derive(events=[...])")
            for end in ("source", "dest"):
                if row[end] is not None and row[end] not in states:
                    self._fail(f"{where} names undeclared {end} state {row[end]!r}"
                               f"{_suggest(row[end], states)}",
                               "declare it in derive(states=[...]) with its tags")
            if self.tags[row["source"]].final and row["dest"] not in (None, row["source"]):
                self._fail(f"{where} leaves final state {row['source']!r}",
                           "final states are terminal; drop the row or untag 'final'")
        for state, ignored in self.ignored.items():
            if state not in states:
                self._fail(f"ignore names undeclared state {state!r}", "declare it first")
            for trigger in ignored:
                if trigger not in triggers:
                    self._fail(f"ignore lists unknown event {trigger!r} for {state!r}"
                               f"{_suggest(trigger, triggers)}", "list only known events")

    def _check_outcomes(self) -> None:
        for state in self.state_names:
            for trigger in self.triggers:
                rows = self.outcomes(state, trigger)
                if self.is_ignored(state, trigger):
                    if rows:
                        self._fail(f"{trigger} in {state!r} is both ignored and handled by "
                                   f"transition #{rows[0]['index']}",
                                   "remove it from ignore, or drop the row")
                    continue
                if not rows:
                    self._fail(f"state {state!r} has no outcome for event {trigger}",
                               f"add a transition for {trigger} from {state!r}, or list it "
                               f"in ignore={{{state!r}: [{trigger!r}]}}")
                for earlier, later in itertools.pairwise(rows):
                    if not earlier["conditional"]:
                        self._fail(f"{trigger} in {state!r}: transition #{later['index']} can "
                                   f"never run, #{earlier['index']} has no conditions and "
                                   f"is tried first",
                                   f"drop one with drop=[({trigger!r}, {state!r})] or give "
                                   f"#{earlier['index']} conditions")
                if rows[-1]["conditional"]:
                    self._fail(f"{trigger} in {state!r}: every row has conditions, so some "
                               f"inputs would have no outcome",
                               "end with an unconditional row (dest None to stay put)")

    def _graph(self) -> dict[str, set[str]]:
        edges: dict[str, set[str]] = {name: set() for name in self.state_names}
        for row in self._rows:
            if row["dest"] is not None:
                edges[row["source"]].add(row["dest"])
        return edges

    @staticmethod
    def _reach(edges: Mapping[str, set[str]], start: str) -> set[str]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in edges[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def _check_reachability(self) -> None:
        edges = self._graph()
        reachable = self._reach(edges, self.initial)
        for state in self.state_names:
            if state not in reachable:
                self._fail(f"state {state!r} is unreachable from {self.initial!r}",
                           f"add a transition into {state!r}")
        for state in self.state_names:
            if self.tags[state].final:
                continue
            if State.ONLINE not in self._reach(edges, state):
                self._fail(f"state {state!r} has no path back to 'online'",
                           f"add a transition from {state!r} that leads to 'online' "
                           f"(directly or through 'recovering'), or tag it 'final'")

    def _check_heartbeat(self) -> None:
        on_enter = {row["name"]: _listify(row.get("on_enter")) for row in self.states}
        for state in self.state_names:
            if not self.tags[state].live:
                continue
            if "send_probe" in on_enter[state]:
                if not any(r["dest"] is not None and not self.tags[r["dest"]].live
                           for r in self.outcomes(state, "ProbeUnanswered")):
                    self._fail(f"live state {state!r} probes but never gives up on a silent "
                               f"peer", f"route ProbeUnanswered from {state!r} to 'stale'")
            elif not any(r["dest"] is not None for r in self.outcomes(state, "SilenceNoticed")):
                self._fail(f"live state {state!r} has no heartbeat deadline: it neither probes "
                           f"on entry nor leaves on SilenceNoticed",
                           f"route SilenceNoticed from {state!r} to 'waiting', which probes")


#: The built-in lifecycle.
DEFAULT_SPEC = Spec(
    states=tuple(table.STATES),
    transitions=tuple(table.TRANSITIONS),
    ignored={state: tuple(triggers) for state, triggers in table.IGNORED.items()},
)
