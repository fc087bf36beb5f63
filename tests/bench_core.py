"""Benchmark: what one link costs, in memory and per event, against plain ``transitions`` use.

Run it with ``.venv/bin/python -m tests.bench_core`` (well under a minute). Every figure in
the table is measured in the same run; nothing is quoted from elsewhere.

Three ways to give 10,000 links the same lifecycle table (:mod:`fsm.table`, as normalised
by :data:`fsm.spec.DEFAULT_SPEC`: 8 states, the transition rows, and the ``IGNORED`` pairs
as internal no-op rows, exactly what :attr:`fsm.spec.Spec.machine` is built from):

* **tether**: :class:`fsm.lifecycle.Lifecycle`. One machine per spec, built once, with
  ``model_override=True`` and ``model=None``; a link is a model of it but never
  registered, so nothing is bound onto the link. Driven through ``handle(event, now)``.
* **plain, per object**: the ``transitions`` tutorial way. Each link builds its own
  ``Machine(model=self, states=..., transitions=..., initial=...)`` with the tutorial's
  defaults (``auto_transitions=True``, ``model_override=False``), plus the two settings
  the table's callbacks need (``send_event=True``, ``after_state_change``). Driven by
  the trigger methods the machine binds onto the link (``link.PongReceived(event)``).
* **plain, add_model**: one shared machine with those same settings and ``model=None``;
  each link is registered with ``machine.add_model(link)``, which binds the trigger
  methods onto the link and scans ``machine.models`` (a list) before appending.

The plain links are a subclass of ``Lifecycle`` (so they have a ``__dict__`` for the
bound methods) with the same fields and the same callbacks and conditions: only the
arrangement of the machine differs, which is what this benchmark is about. After each
plain trigger the bench takes the queued actions off the link, as ``handle()`` does.
The plain state dicts drop the ``tags`` key: tags are tether's, and a stock ``Machine``
rejects them (tether reads tags from the spec, not from the machine).

Memory: the 10,000 links of a variant are built and driven to ONLINE (``Started``,
``Connected``, ``Rebuilt``) with the cyclic GC paused, and kept alive; then 1,000 more
are built under :mod:`tracemalloc` and ``bytes/link`` is what those 1,000 still hold
after a ``gc.collect()`` (the marginal cost of a link when 10,000 exist; it includes the
~8 bytes of the list slot that holds it): tracing all 10,000 plain links would more than
double the run time. A shared machine is built before the measurement and not counted.
Alongside: the build time per link (GC paused, so it is the work itself), the objects per
link the cyclic GC must track, and the time of one full ``gc.collect()`` with the 10,000
links alive (what each of the GC's own full passes costs such a process).

Time per event: ``perf_counter_ns`` around loops of ``STEADY`` events or ``CYCLES`` cycles,
median of ``ROUNDS`` rounds, after a warm-up; within a round the variants take turns, so
that a change in the machine's load hits them all alike. "tether handle()" is the full
core (clock check, deadline bookkeeping, reason text, actions returned); "tether raw
trigger" is the same shared machine triggered directly
(``spec.machine.events[name].trigger(link, event)``) with the same callbacks, to
separate the engine from ``handle()``'s own work.
"""

from __future__ import annotations

import gc
import importlib.metadata
import platform
import random
import statistics
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from time import perf_counter_ns
from typing import Any

from transitions import Machine

from fsm import table
from fsm.actions import Action
from fsm.events import (
    Connected,
    DeadlineReached,
    Event,
    MessageReceived,
    PongReceived,
    Rebuilt,
    SilenceNoticed,
    Started,
)
from fsm.heartbeat import Heartbeat
from fsm.lifecycle import Lifecycle
from fsm.spec import DEFAULT_SPEC, Spec
from fsm.states import State

__all__ = ["main"]

LINKS = 10_000  #: links alive in each population
TRACED = 1_000  #: extra links built under tracemalloc to read bytes/link
STEADY = 10_000  #: steady events per timed round
CYCLES = 5_000  #: ONLINE -> WAITING -> ONLINE cycles per timed round
ROUNDS = 10  #: timed rounds per figure (100,000 events each); the median is reported

#: The table exactly as :attr:`Spec.machine` receives it, minus tether's state tags.
PLAIN_STATES: list[dict[str, Any]] = [
    {key: value for key, value in row.items() if key != "tags"} for row in DEFAULT_SPEC.states
]
PLAIN_TRANSITIONS: list[dict[str, Any]] = [dict(row) for row in DEFAULT_SPEC.transitions] + [
    {"trigger": trigger, "source": state, "dest": None}
    for state, triggers in DEFAULT_SPEC.ignored.items()
    for trigger in triggers
]
#: What the table's callbacks need from any machine; the rest are the tutorial's defaults.
PLAIN_SETTINGS: dict[str, Any] = {"send_event": True, "after_state_change": "record_change"}


def _plain_machine(model: object | None) -> Machine:
    return Machine(model=model, states=PLAIN_STATES, transitions=PLAIN_TRANSITIONS,
                   initial=DEFAULT_SPEC.initial, **PLAIN_SETTINGS)


class PlainLink(Lifecycle):
    """A link with the tutorial's own machine: ``self.machine = Machine(model=self, ...)``."""

    def __init__(self, *, rand: Callable[[], float], heartbeat: Heartbeat) -> None:
        super().__init__(rand=rand, heartbeat=heartbeat)
        self.machine = _plain_machine(self)


class SharedLink(Lifecycle):
    """A link for a shared plain machine: it gets a ``__dict__`` for ``add_model`` to bind on."""


# -- driving ------------------------------------------------------------------------------


def _drain(link: Lifecycle) -> list[Action]:
    """Take the queued actions off a link triggered without ``handle()``, as handle() does."""
    actions, link._actions = link._actions, []
    return actions


def _bound(link: Lifecycle, trigger: str) -> Callable[[Event], bool]:
    """The trigger method a plain machine bound onto ``link`` (invisible to mypy)."""
    method: Callable[[Event], bool] = getattr(link, trigger)
    return method


def _raw(trigger: str) -> Callable[[Lifecycle, Event], bool]:
    """The shared tether machine's trigger for ``trigger``, as ``Lifecycle`` calls it."""
    return DEFAULT_SPEC.machine.events[trigger].trigger


def _online_by_handle(link: Lifecycle) -> Lifecycle:
    for now, event in ((1.0, Started()), (2.0, Connected()), (3.0, Rebuilt())):
        link.handle(event, now)
    return link


def _online_by_trigger(link: Lifecycle) -> Lifecycle:
    for event in (Started(), Connected(), Rebuilt()):
        _bound(link, event.trigger())(event)
        _drain(link)
    return link


def _expect(link: Lifecycle, state: str, what: str) -> None:
    if link.state != state:
        raise AssertionError(f"{what}: link is {link.state!r}, expected {state!r}")


# -- memory ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Population:
    """What ``LINKS`` links of one variant cost."""

    build_us: float  #: build + drive to ONLINE, per link, GC paused
    bytes_per_link: float  #: retained, tracemalloc, marginal at LINKS links
    gc_objects_per_link: float  #: objects the cyclic GC tracks, per link
    collect_ms: float  #: one full gc.collect() with LINKS links alive
    add_first_ms: float | None = None  #: add_model time of the first 1,000 links
    add_last_ms: float | None = None  #: add_model time of the last 1,000 links
    add_total_ms: float | None = None  #: add_model time of all LINKS links


def _population(make: Callable[[], Lifecycle]) -> Population:
    """Build ``LINKS`` links, then ``TRACED`` more under tracemalloc; see the module doc.

    ``gc.freeze()`` keeps the population out of the collections that are not being
    measured: the one that clears the traced links' garbage, and the next population's.
    A population is left frozen when measured and freed (untimed) by the next one; the
    last one is left to the process's exit, which does not traverse frozen objects
    (freeing 10,000 plain machines costs a full collection, seconds).
    """
    gc.unfreeze()
    gc.collect()  # frees the previous population, untimed
    gc.disable()
    try:
        gc.freeze()
        frozen = gc.get_freeze_count()
        start = perf_counter_ns()
        links = [make() for _ in range(LINKS)]
        build_ns = perf_counter_ns() - start
        gc.freeze()
        objects = gc.get_freeze_count() - frozen
        for link in links[:: LINKS // 10]:
            _expect(link, State.ONLINE, "population")
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            extra = [make() for _ in range(TRACED)]
            gc.collect()  # only the traced links are not frozen
            retained = tracemalloc.get_traced_memory()[0] - baseline
        finally:
            tracemalloc.stop()
        gc.unfreeze()
    finally:
        gc.enable()
    start = perf_counter_ns()
    gc.collect()  # a full pass over everything alive, as the GC's own gen-2 passes are
    collect_ns = perf_counter_ns() - start
    gc.freeze()
    del links, extra
    return Population(build_us=build_ns / LINKS / 1e3, bytes_per_link=retained / TRACED,
                      gc_objects_per_link=objects / LINKS, collect_ms=collect_ns / 1e6)


def _memory(rand: Callable[[], float]) -> dict[str, Population]:
    def tether() -> Lifecycle:
        return _online_by_handle(Lifecycle(rand=rand, heartbeat=Heartbeat(1, 1)))

    def plain() -> Lifecycle:
        return _online_by_trigger(PlainLink(rand=rand, heartbeat=Heartbeat(1, 1)))

    shared = _plain_machine(None)
    add_ns: list[int] = []

    def added() -> Lifecycle:
        link = SharedLink(rand=rand, heartbeat=Heartbeat(1, 1))
        start = perf_counter_ns()
        shared.add_model(link)
        add_ns.append(perf_counter_ns() - start)
        return _online_by_trigger(link)

    results = {"tether": _population(tether)}
    population = _population(added)
    timed = add_ns[:LINKS]  # the rest were added under tracemalloc
    results["plain, add_model"] = Population(
        **{**vars(population), "add_first_ms": sum(timed[:1_000]) / 1e6,
           "add_last_ms": sum(timed[-1_000:]) / 1e6, "add_total_ms": sum(timed) / 1e6})
    results["plain, per object"] = _population(plain)  # last: it is left to the exit
    return results


# -- time per event -------------------------------------------------------------------------

Fire = Callable[[Event], bool]  #: one bound trigger: ``fire(event)``
#: Run ``n`` steady events, or ``n`` cycles; returns the actions of the last pair or cycle.
Run = Callable[[int], list[Action]]


@dataclass
class _Variant:
    """One way of driving a link, as steady-event and cycle loops."""

    steady: Run
    cycle: Run


def _by_handle(link: Lifecycle) -> _Variant:
    """``handle(event, now)`` with a clock that only moves forward, as a driver calls it."""
    pong, message, tick = PongReceived(rtt=0.001), MessageReceived(payload="x"), DeadlineReached()
    handle, next_deadline = link.handle, link.next_deadline
    clock = [10.0]

    def steady(n: int) -> list[Action]:
        now, first, second = clock[0], [], []
        for _ in range(n // 2):
            now += 0.001
            first = handle(pong, now)
            now += 0.001
            second = handle(message, now)
        clock[0] = now
        return first + second

    def cycle(n: int) -> list[Action]:
        now, first, second = clock[0], [], []
        for _ in range(n):
            deadline = next_deadline()
            assert deadline is not None
            now = deadline
            first = handle(tick, now)  # fires SilenceNoticed: ONLINE -> WAITING, SendPing
            now += 0.01
            second = handle(pong, now)  # WAITING -> ONLINE
        clock[0] = now
        return first + second

    return _Variant(steady, cycle)


def _by_trigger(link: Lifecycle, pong_fire: Fire, message_fire: Fire,
                silence_fire: Fire) -> _Variant:
    """Trigger calls straight into a machine; the queued actions are taken off each time."""
    pong, message, silence = PongReceived(rtt=0.001), MessageReceived(payload="x"), \
        SilenceNoticed()

    def steady(n: int) -> list[Action]:
        first: list[Action] = []
        second: list[Action] = []
        for _ in range(n // 2):
            pong_fire(pong)
            first = _drain(link)
            message_fire(message)
            second = _drain(link)
        return first + second

    def cycle(n: int) -> list[Action]:
        first: list[Action] = []
        second: list[Action] = []
        for _ in range(n):
            silence_fire(silence)  # ONLINE -> WAITING, SendPing
            first = _drain(link)
            pong_fire(pong)  # WAITING -> ONLINE
            second = _drain(link)
        return first + second

    return _Variant(steady, cycle)


def _check(name: str, link: Lifecycle, variant: _Variant) -> None:
    """One steady pair delivers, one cycle goes ONLINE -> WAITING -> ONLINE and probes."""
    steady = sorted(type(action).__name__ for action in variant.steady(2))
    cycle = sorted(type(action).__name__ for action in variant.cycle(1))
    _expect(link, State.ONLINE, f"{name}, after one cycle")
    if steady != ["Deliver"] or cycle != ["NotifyStateChange", "NotifyStateChange", "SendPing"]:
        raise AssertionError(f"{name}: a steady pair performed {steady}, a cycle {cycle}")


def _events(rand: Callable[[], float]) -> dict[str, tuple[float, float]]:
    """Median ns per steady event and per cycle, for each variant, rounds interleaved."""
    tether = _online_by_handle(Lifecycle(rand=rand, heartbeat=Heartbeat(1, 1)))
    raw = _online_by_handle(Lifecycle(rand=rand, heartbeat=Heartbeat(1, 1)))
    plain = _online_by_trigger(PlainLink(rand=rand, heartbeat=Heartbeat(1, 1)))
    shared = _plain_machine(None)
    added = SharedLink(rand=rand, heartbeat=Heartbeat(1, 1))
    shared.add_model(added)
    _online_by_trigger(added)

    def bound(link: Lifecycle) -> _Variant:
        return _by_trigger(link, _bound(link, "PongReceived"), _bound(link, "MessageReceived"),
                           _bound(link, "SilenceNoticed"))

    variants = {
        "tether handle()": _by_handle(tether),
        # the same shared machine and callbacks, without handle(); partial, as transitions
        # binds trigger methods
        "tether raw trigger": _by_trigger(raw, partial(_raw("PongReceived"), raw),
                                          partial(_raw("MessageReceived"), raw),
                                          partial(_raw("SilenceNoticed"), raw)),
        "plain, per object": bound(plain),
        "plain, add_model": bound(added),
    }
    links = {"tether handle()": tether, "tether raw trigger": raw,
             "plain, per object": plain, "plain, add_model": added}
    for name, variant in variants.items():
        _check(name, links[name], variant)
    steady = _interleaved({name: v.steady for name, v in variants.items()}, STEADY)
    cycle = _interleaved({name: v.cycle for name, v in variants.items()}, CYCLES)
    for name, link in links.items():
        _expect(link, State.ONLINE, f"{name}, after the timed loops")
    return {name: (steady[name], cycle[name]) for name in variants}


def _interleaved(runs: dict[str, Run], n: int) -> dict[str, float]:
    """Median ns per unit of each run over ``ROUNDS`` rounds, the variants taking turns
    within each round so that a change in the machine's load hits them all alike."""
    for run in runs.values():
        run(n // 10)  # warm-up
    times: dict[str, list[int]] = {name: [] for name in runs}
    for _ in range(ROUNDS):
        for name, run in runs.items():
            start = perf_counter_ns()
            run(n)
            times[name].append(perf_counter_ns() - start)
    return {name: statistics.median(ns) / n for name, ns in times.items()}


# -- building the machine once ---------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    first_machine_us: float | None  #: DEFAULT_SPEC.machine, the process's first build
    spec_us: float  #: Spec(...) from fsm.table: normalising and validating
    machine_us: float  #: that spec's machine, built on first use
    plain_machine_us: float  #: one tutorial Machine(model=None, ...) of the same table
    transitions: int  #: Transition objects in the tether machine
    plain_transitions: int  #: Transition objects in a plain machine (auto_transitions)
    events: int  #: events (triggers) in the tether machine


def _transitions(machine: Machine) -> int:
    return sum(len(rows) for event in machine.events.values()
               for rows in event.transitions.values())


def _build() -> Build:
    first = None
    if "machine" not in vars(DEFAULT_SPEC):  # a cached_property, not built yet
        start = perf_counter_ns()
        DEFAULT_SPEC.machine  # noqa: B018
        first = (perf_counter_ns() - start) / 1e3
    start = perf_counter_ns()
    spec = Spec(states=tuple(table.STATES), transitions=tuple(table.TRANSITIONS),
                ignored={state: tuple(t) for state, t in table.IGNORED.items()}, name="bench")
    spec_ns = perf_counter_ns() - start
    start = perf_counter_ns()
    machine = spec.machine
    machine_ns = perf_counter_ns() - start
    start = perf_counter_ns()
    plain = _plain_machine(None)
    plain_ns = perf_counter_ns() - start
    return Build(first_machine_us=first, spec_us=spec_ns / 1e3, machine_us=machine_ns / 1e3,
                 plain_machine_us=plain_ns / 1e3, transitions=_transitions(machine),
                 plain_transitions=_transitions(plain), events=len(machine.events))


# -- report -----------------------------------------------------------------------------------


def _row(label: str, *cells: str) -> str:
    return f"  {label:<34}" + "".join(f"{cell:>14}" for cell in cells)


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x"


def main() -> int:
    started = perf_counter_ns()
    build = _build()  # first, so that the first machine build is really the first
    rand = random.Random(20_240_501).random
    events = _events(rand)
    memory = _memory(rand)
    elapsed = (perf_counter_ns() - started) / 1e9

    print(f"tether core benchmark: Python {platform.python_version()} "
          f"({platform.python_implementation()}, {sys.platform}), "
          f"transitions {importlib.metadata.version('transitions')}")
    print(f"table: {len(PLAIN_STATES)} states, {build.events} events; Transition objects: "
          f"{build.transitions} in tether's machine, {build.plain_transitions} in a plain one "
          f"(auto_transitions)")
    print()
    print("Building one machine, once")
    if build.first_machine_us is not None:
        print(_row("first machine, DEFAULT_SPEC.machine", f"{build.first_machine_us:,.0f} us"))
    print(_row("Spec(...) from fsm.table (validate)", f"{build.spec_us:,.0f} us"))
    print(_row("its Spec.machine (second build)", f"{build.machine_us:,.0f} us"))
    print(_row("plain Machine(model=None, ...)", f"{build.plain_machine_us:,.0f} us"))
    print()
    print(f"Memory per link, {LINKS:,} links alive, each driven to ONLINE")
    print(_row("variant", "bytes/link", "vs tether", "build/link", "GC objs/link",
               "full gc pass"))
    base = memory["tether"]
    for name in ("tether", "plain, per object", "plain, add_model"):
        pop = memory[name]
        print(_row(name, f"{pop.bytes_per_link:,.0f} B",
                   _ratio(pop.bytes_per_link, base.bytes_per_link),
                   f"{pop.build_us:,.1f} us", f"{pop.gc_objects_per_link:,.1f}",
                   f"{pop.collect_ms:,.1f} ms"))
    added = memory["plain, add_model"]
    assert added.add_total_ms is not None and added.add_first_ms is not None
    assert added.add_last_ms is not None
    print(f"  add_model of {LINKS:,} models into one machine: {added.add_total_ms:,.0f} ms "
          f"({added.add_total_ms * 1e3 / LINKS:,.0f} us/model); first 1,000: "
          f"{added.add_first_ms:,.0f} ms, last 1,000: {added.add_last_ms:,.0f} ms")
    print(f"  bytes/link: tracemalloc, retained by {TRACED:,} more links built with "
          f"{LINKS:,} alive")
    print("  build/link: construct + drive to ONLINE, GC paused; full gc pass: one "
          "gc.collect() with the links alive")
    print()
    print(f"Time per event, median of {ROUNDS} rounds of {STEADY:,} steady events and of "
          f"{CYCLES:,} cycles, variants interleaved")
    print(_row("variant", "steady/event", "vs handle()", "cycle", "vs handle()"))
    steady_base, cycle_base = events["tether handle()"]
    for name, (steady, cycle) in events.items():
        print(_row(name, f"{steady:,.0f} ns", _ratio(steady, steady_base),
                   f"{cycle:,.0f} ns", _ratio(cycle, cycle_base)))
    print("  steady: PongReceived and MessageReceived in turn, in ONLINE (internal "
          "transitions)")
    print("  cycle: ONLINE -> WAITING -> ONLINE. handle(): next_deadline(), "
          "handle(DeadlineReached), which fires")
    print("         SilenceNoticed, then handle(PongReceived); the others trigger "
          "SilenceNoticed then PongReceived")
    print()
    print("Ratios, plain / tether")
    for name in ("plain, per object", "plain, add_model"):
        pop = memory[name]
        steady, cycle = events[name]
        print(f"  {name:<19} memory/link {_ratio(pop.bytes_per_link, base.bytes_per_link)}, "
              f"build/link {_ratio(pop.build_us, base.build_us)}, "
              f"steady event {_ratio(steady, steady_base)}, cycle {_ratio(cycle, cycle_base)}")
    print(f"total run time: {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
