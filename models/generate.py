"""Generate the lifecycle model from a spec: a :class:`fsm.spec.Spec` to Promela.

The output is the core's half of the model: the states, events and tags as macros, the
core's abstract variables (:data:`models.meanings.CORE_DECLS`), each condition as a
macro and each callback as an inline, both from :mod:`models.meanings`, and
``handle_event()``: for the state and the event being handled, the table's rows for that
pair in the table's order, one guarded alternative per row, guarded by its conditions
and by the negation of every earlier row's (the first row whose conditions hold wins,
as in ``transitions``); the ``IGNORED`` pairs as explicit no-ops; a pair with neither
sets ``no_outcome``. Each alternative starts with ``row = K``: a statement unique to
that row, so pan's unreached-code report names every row no run ever took.

The environment, the processes and the properties are hand-written (``env.pml``) and
work for any spec through the tag macros (``LIVE(s)``, ``TRANSPORT(s)``, ``SENDS(s)``,
``FINAL(s)``), so a user's spec is checked against the same generic properties.

A name with no meaning fails generation with a :class:`ModelError` that names it and
the row that uses it. ``python -m models.generate`` rewrites the checked-in files
(:data:`CHECKED_IN`); ``tests/test_model_generate.py`` fails when they drift from the
table.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fsm.spec import Row, Spec
from models.meanings import BUILTIN, CORE_DECLS, EMIT_MEANING, EMIT_PREFIX, TIMER_LOGIC, Meanings

__all__ = ["CHECKED_IN", "MODELS", "Model", "ModelError", "generate", "main"]

MODELS = Path(__file__).parent

#: The checked-in generated models: file name -> ``module:attribute`` of the spec.
CHECKED_IN = {
    "default.pml": "fsm.spec:DEFAULT_SPEC",
    "authenticating.pml": "fsm.examples.authenticating:AUTH_SPEC",
    "paused.pml": "fsm.examples.paused:PAUSED_SPEC",
}

#: Keys of a transition row the generator understands.
_ROW_KEYS = {"trigger", "source", "dest", "conditions", "unless", "before", "after"}
_STATE_KEYS = {"name", "tags", "on_enter", "on_exit"}


class ModelError(Exception):
    """The spec uses something the model cannot give a meaning to."""


@dataclass(frozen=True)
class RowInfo:
    """One generated row: what the ``row = K`` statement stands for."""

    number: int
    index: int | None  # the transition's index in the spec, None for an IGNORED pair
    trigger: str
    source: str
    dest: str | None
    label: str

    @property
    def ignored(self) -> bool:
        return self.index is None


@dataclass
class Model:
    """The generated Promela and the map from ``row`` numbers back to the table."""

    spec_name: str
    text: str
    states: list[str]
    events: list[str]
    rows: dict[int, RowInfo] = field(default_factory=dict)
    lines: dict[int, int] = field(default_factory=dict)  # row number -> line in text
    #: rows the model never takes by design (DeadlineReached), with the reason
    skipped: dict[int, str] = field(default_factory=dict)

    def state_name(self, number: int) -> str:
        return self.states[number] if 0 <= number < len(self.states) else f"?{number}"

    def event_name(self, number: int) -> str:
        return self.events[number - 1] if 1 <= number <= len(self.events) else f"?{number}"


def _listify(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _name(callback: Any) -> str:
    return callback if isinstance(callback, str) else getattr(callback, "__name__", repr(callback))


def _ident(name: str) -> str:
    """A Promela identifier for a state, event or callback name."""
    ident = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_")
    if not ident or ident[0].isdigit():
        ident = f"x_{ident}"
    return ident


def _state(name: str) -> str:
    return f"S_{_ident(name)}"


def _event(name: str) -> str:
    return f"E_{_ident(name)}"


class _Generator:
    def __init__(self, spec: Spec, meanings: Meanings, mutate: Callable[[list[Row]], None] | None,
                 ignored: dict[str, tuple[str, ...]] | None) -> None:
        self.spec = spec
        self.meanings = meanings
        self.rows: list[Row] = [dict(r) for r in spec.transitions]
        if mutate is not None:
            mutate(self.rows)
        self.ignored = dict(spec.ignored) if ignored is None else ignored
        self.states = spec.state_names
        self.events = spec.triggers
        self.callbacks: dict[str, str] = {}  # name -> inline identifier
        self.out: list[str] = []
        self.model = Model(spec.name, "", list(self.states), list(self.events))

    # -- checks ----------------------------------------------------------------------

    def _where(self, index: int, row: Row) -> str:
        return f"transition #{index} ({row.get('trigger')} from {row.get('source')!r})"

    def _fail(self, what: str, fix: str) -> None:
        raise ModelError(f"spec {self.spec.name!r}: {what}. Fix: {fix}.")

    def _condition(self, name: Any, where: str) -> str:
        text = _name(name)
        if not isinstance(name, str):
            self._fail(f"{where} uses a callable condition {text!r}",
                       "name conditions by Lifecycle method name, so the model can give "
                       "them a meaning")
        if text not in self.meanings.conditions:
            self._fail(f"condition {text!r} used by {where} has no model meaning",
                       "add it to models/meanings.py CONDITIONS (or MODEL_MEANINGS next to "
                       "your spec) as a Promela expression over the core's variables")
        return text

    def _callback(self, callback: Any, where: str) -> str:
        name = _name(callback)
        if name in self.callbacks:
            return self.callbacks[name]
        if name not in self.meanings.callbacks and not name.startswith(EMIT_PREFIX):
            self._fail(f"callback {name!r} used by {where} has no model meaning",
                       "add it to models/meanings.py CALLBACKS (or MODEL_MEANINGS next to "
                       "your spec) as Promela statements over the core's variables, or "
                       "'skip' if no property depends on it")
        ident = _ident(name)
        self.callbacks[name] = ident
        return ident

    def _check(self) -> None:
        for event in self.events:
            if event not in self.meanings.events:
                self._fail(f"event {event!r} has no model meaning (who produces it?)",
                           "add an EventMeaning to models/meanings.py EVENTS (or "
                           "MODEL_MEANINGS next to your spec): role 'user' for a user call, "
                           "'reply' for the answer to an emitted action")
        for row in self.spec.states:
            unknown = set(row) - _STATE_KEYS
            if unknown:
                self._fail(f"state {row['name']!r} uses {sorted(unknown)}",
                           "the model knows name, tags, on_enter and on_exit")
            for key in ("on_enter", "on_exit"):
                for callback in _listify(row.get(key)):
                    self._callback(callback, f"{key} of state {row['name']!r}")
        for index, row in enumerate(self.rows):
            unknown = set(row) - _ROW_KEYS
            if unknown:
                self._fail(f"{self._where(index, row)} uses {sorted(unknown)}",
                           f"the model knows {', '.join(sorted(_ROW_KEYS))}")
            for key in ("conditions", "unless"):
                for condition in _listify(row.get(key)):
                    self._condition(condition, self._where(index, row))
            for key in ("before", "after"):
                for callback in _listify(row.get(key)):
                    self._callback(callback, self._where(index, row))

    # -- output -----------------------------------------------------------------------

    def emit(self, text: str = "") -> None:
        self.out.extend(text.split("\n"))

    def _set(self, names: Iterable[str], fn: Callable[[str], str]) -> str:
        terms = [f"(s) == {fn(n)}" for n in names]
        return "(" + " || ".join(terms) + ")" if terms else "(0)"

    def _events_set(self, names: Iterable[str]) -> str:
        terms = [f"(e) == {_event(n)}" for n in names]
        return "(" + " || ".join(terms) + ")" if terms else "(0)"

    def _parked(self) -> list[str]:
        """States from which no row of a non-user event leads back to online."""
        user = {e for e in self.events if self.meanings.events[e].role == "user"}
        edges: dict[str, set[str]] = {s: set() for s in self.states}
        for row in self.rows:
            if row["trigger"] in user or row.get("dest") is None:
                continue
            for source in _listify(row["source"]):
                edges[str(source)].add(str(row["dest"]))
        parked = []
        for state in self.states:
            seen, todo = {state}, [state]
            while todo:
                for nxt in edges[todo.pop()]:
                    if nxt not in seen:
                        seen.add(nxt)
                        todo.append(nxt)
            if "online" not in seen:
                parked.append(state)
        return parked

    def header(self) -> None:
        self.emit(f"/* GENERATED by `python -m models.generate` from spec {self.spec.name!r}.")
        self.emit("   Do not edit: change the table (or models/meanings.py) and regenerate;")
        self.emit("   tests/test_model_generate.py fails when this file and the table differ.")
        self.emit("   The environment and the properties are in models/env.pml. */")
        self.emit()
        self.emit("/* -- states ------------------------------------------------------------- */")
        for number, state in enumerate(self.states):
            self.emit(f"#define {_state(state)} {number}")
        self.emit(f"#define N_STATES {len(self.states)}")
        self.emit(f"#define INITIAL {_state(self.spec.initial)}")
        self.emit()
        self.emit("/* -- events (trigger names) --------------------------------------------- */")
        self.emit("#define E_NONE 0")
        for number, event in enumerate(self.events, start=1):
            self.emit(f"#define {_event(event)} {number}")
        self.emit(f"#define N_EVENTS {len(self.events)}")
        self.emit()
        self.emit("/* -- tags (fsm.states.Tags): the generic properties read these --------- */")
        tags = self.spec.tags
        for tag, macro in (("live", "LIVE"), ("transport", "TRANSPORT"), ("sends", "SENDS"),
                           ("final", "FINAL")):
            chosen = [s for s in self.states if getattr(tags[s], tag)]
            self.emit(f"#define {macro}(s) {self._set(chosen, _state)}")
        roles = {e: self.meanings.events[e] for e in self.events}
        self.emit("/* events the user causes; timer events the core raises itself */")
        self.emit(f"#define USER_EVENT(e) "
                  f"{self._events_set(e for e in self.events if roles[e].role == 'user')}")
        self.emit(f"#define IS_TIMER(e) "
                  f"{self._events_set(e for e in self.events if roles[e].role == 'timer')}")
        self.emit("/* states from which only a user event leads back to online */")
        self.emit(f"#define PARKED(s) {self._set(self._parked(), _state)}")
        self.emit()
        self.emit("/* -- the spec's own events, for the environment (env.pml) ---------------- */")
        builtin_user = {"Started", "SendRequested", "CloseRequested"}
        custom_user = [e for e in self.events if roles[e].role == "user" and e not in builtin_user]
        ok = [e for e in self.events if roles[e].role == "reply" and not roles[e].fatal]
        fatal = [e for e in self.events if roles[e].role == "reply" and roles[e].fatal]
        crash = [e for e in self.events if roles[e].role == "crash"]
        for macro, inline, names in (("HAS_USER_CUSTOM", "user_custom_event", custom_user),
                                     ("HAS_REPLY_OK", "reply_ok_event", ok),
                                     ("HAS_REPLY_FATAL", "reply_fatal_event", fatal),
                                     ("HAS_CRASH", "crash_event", crash)):
            self.emit(f"#define {macro} {1 if names else 0}")
            choices = " ".join(f":: ev = {_event(n)}" for n in names) or ":: skip"
            self.emit(f"inline {inline}() {{ if {choices} fi }}")
        self.emit()
        self.emit("/* -- the core's abstract variables (models/meanings.py) ------------------ */")
        self.emit(CORE_DECLS.rstrip("\n"))
        self.emit()
        self.emit(TIMER_LOGIC.rstrip("\n"))

    def conditions_and_callbacks(self) -> None:
        used = sorted({_name(c) for r in self.rows for k in ("conditions", "unless")
                       for c in _listify(r.get(k))})
        self.emit()
        self.emit("/* -- conditions (models/meanings.py) ----------------------------------- */")
        for name in used:
            meaning = self.meanings.conditions[name]
            self.emit(f"/* {meaning.why} */")
            self.emit(f"#define {name} {meaning.promela}")
        self.emit()
        self.emit("/* -- callbacks (models/meanings.py) ------------------------------------ */")
        for name in sorted(self.callbacks):
            meaning = self.meanings.callbacks.get(name) or EMIT_MEANING  # or emit(...)
            self.emit(f"/* {name}: {meaning.why} */")
            body = "\n".join("  " + line for line in meaning.promela.split("\n"))
            self.emit(f"inline {self.callbacks[name]}() {{")
            self.emit(body)
            self.emit("}")

    def _label(self, index: int, row: Row, source: str) -> str:
        dest = row.get("dest")
        parts = [f"#{index} {row['trigger']}: {source} -> "
                 f"{dest if dest is not None else '(internal)'}"]
        conditions = [_name(c) for c in _listify(row.get("conditions"))]
        unless = [_name(c) for c in _listify(row.get("unless"))]
        if conditions:
            parts.append(f"[{' and '.join(conditions)}]")
        if unless:
            parts.append(f"unless [{' or '.join(unless)}]")
        return " ".join(parts)

    def _guard(self, row: Row) -> str:
        terms = [f"({_name(c)})" for c in _listify(row.get("conditions"))]
        terms += [f"!({_name(c)})" for c in _listify(row.get("unless"))]
        return " && ".join(terms) if terms else "true"

    def _calls(self, names: Sequence[Any]) -> list[str]:
        return [f"{self.callbacks[_name(c)]}()" for c in names]

    def table(self) -> None:
        self.emit()
        self.emit("/* -- the table: handle_event() is one step of the core --------------------")
        self.emit("   For (st, ev): the rows of that pair in table order, each guarded by its")
        self.emit("   conditions and the negation of every earlier row's: the first row whose")
        self.emit("   conditions hold wins, as in `transitions`. `row = K` names the row. */")
        self.emit("inline handle_event() {")
        self.emit("  src = st;")
        self.emit("  if")
        for state in self.states:
            self.emit(f"  :: st == {_state(state)} ->")
            self.emit("     if")
            for event in self.events:
                pair = [(i, r) for i, r in enumerate(self.rows) if r["trigger"] == event
                        and state in [str(s) for s in _listify(r["source"])]]
                if pair:
                    self._pair(state, event, pair)
                elif event in self.ignored.get(state, ()):
                    number = self._number(RowInfo(0, None, event, state, None,
                                                  f"{event} in {state}: ignored (IGNORED)"))
                    self.emit(f"     :: ev == {_event(event)} ->")
                    self.model.lines[number] = len(self.out) + 1
                    self.emit(f"        row = {number}  /* ignored: an explicit no-op */")
                # else: no outcome, caught by the else below
            self.emit("     :: else -> no_outcome = 1  /* neither a row nor IGNORED */")
            self.emit("     fi")
        self.emit("  fi")
        self.emit("}")

    def _number(self, info: RowInfo) -> int:
        number = len(self.model.rows) + 1
        self.model.rows[number] = replace(info, number=number)
        return number

    def _pair(self, state: str, event: str, pair: list[tuple[int, Row]]) -> None:
        """The rows of one (state, event) pair, first match wins."""
        state_rows = {row["name"]: row for row in self.spec.states}
        self.emit(f"     :: ev == {_event(event)} ->")
        single = len(pair) == 1 and self._guard(pair[0][1]) == "true"
        indent = "        " if single else "           "
        if not single:
            self.emit("        if")
        earlier: list[str] = []
        for index, row in pair:
            dest = row.get("dest")
            label = self._label(index, row, state)
            number = self._number(RowInfo(0, index, event, state,
                                          None if dest is None else str(dest), label))
            if self.meanings.events[event].role == "skipped":
                self.model.skipped[number] = self.meanings.events[event].why
            guard = self._guard(row)
            if not single:
                terms = [*(f"!({g})" for g in earlier), *([] if guard == "true" else [guard])]
                self.emit(f"        :: {' && '.join(terms) or 'true'} ->")
            earlier.append(guard)
            steps = [f"row = {number}", *self._calls(_listify(row.get("before")))]
            if dest is not None:
                steps += self._calls(_listify(state_rows[state].get("on_exit")))
                steps.append(f"st = {_state(str(dest))}")
                steps += self._calls(_listify(state_rows[str(dest)].get("on_enter")))
            steps += self._calls(_listify(row.get("after")))
            self.emit(f"{indent}/* {label} */")
            self.model.lines[number] = len(self.out) + 1
            self.emit(indent + (";\n" + indent).join(steps))
        if not single:
            if earlier[-1] != "true":
                self.emit("        :: else -> no_outcome = 1  /* every row's conditions failed */")
            self.emit("        fi")

    def run(self) -> Model:
        self._check()
        self.header()
        self.conditions_and_callbacks()
        self.table()
        self.model.text = "\n".join(self.out) + "\n"
        return self.model


def generate(spec: Spec, meanings: Meanings = BUILTIN, *,
             mutate: Callable[[list[Row]], None] | None = None,
             ignored: dict[str, tuple[str, ...]] | None = None) -> Model:
    """The Promela model of ``spec``. ``mutate`` edits a copy of the rows first, and
    ``ignored`` replaces the IGNORED pairs (for seeded bugs; the spec is not revalidated).
    Raises :class:`ModelError` naming any condition, callback or event with no meaning."""
    return _Generator(spec, meanings, mutate, ignored).run()


def load(target: str) -> tuple[Spec, Meanings]:
    """``module:attribute`` to its spec, plus the module's ``MODEL_MEANINGS`` if any."""
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    spec = getattr(module, attribute)
    if not isinstance(spec, Spec):
        raise ModelError(f"{target} is {type(spec).__name__}, not a fsm.Spec")
    extra = getattr(module, "MODEL_MEANINGS", None)
    return spec, BUILTIN | extra if isinstance(extra, Meanings) else BUILTIN


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.generate",
        description="Rewrite the checked-in generated models (models/*.pml) from their specs, "
                    "or print the model of one spec.")
    parser.add_argument("spec", nargs="?", help="module:attribute of a Spec: print its model")
    args = parser.parse_args(argv)
    if args.spec:
        sys.stdout.write(generate(*load(args.spec)).text)
        return 0
    for filename, target in CHECKED_IN.items():
        (MODELS / filename).write_text(generate(*load(target)).text, encoding="utf-8")
        print(f"wrote models/{filename} from {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
