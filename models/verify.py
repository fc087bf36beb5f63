"""``make verify`` / ``tether verify``: model-check a spec and the session protocol with spin.

For each build: generate the lifecycle model from the spec (:mod:`models.generate`),
compose it with the hand-written environment (``env.pml``) into a self-contained
``model.pml``, let ``spin -a`` write the verifier's C source, compile it (``gcc -O0``:
compiling is most of the time) into ``pan``, and run ``pan``. The safety properties are
assertions checked after every step, so one depth-first search checks them all; liveness
is an LTL property, searched for acceptance cycles under weak fairness (``pan -a -f``).
The session protocol (``session.pml``) is one search over its four properties.

Every check has an expected outcome. Most must hold; a few must be violated: liveness
with a retry budget (the trade-off ``models/README.md`` explains), a known finding
(:data:`KNOWN`), and every seeded bug (a mutated table row or environment step, checked
for its own property only) that shows its property bites. A check that holds must have
explored at least :data:`MIN_STATES` states, or it is reported as vacuous. A violation
is searched again with growing depth bounds, for a short counterexample, and printed as
a timeline of events, not as a raw trail.

The dead-row report: pan lists the statements no search reached; each generated row
starts with its own ``row = K`` statement (kept apart by ``spin -o3``), so the rows
taken by neither budget's search are named.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from fsm.spec import DEFAULT_SPEC, Row, Spec
from models.generate import MODELS, Model, ModelError, generate, load
from models.meanings import BUILTIN, Meanings

__all__ = [
    "INSTALL",
    "KNOWN",
    "MIN_STATES",
    "Check",
    "Result",
    "ToolMissing",
    "checks_for",
    "main",
    "run_checks",
    "tools",
]

#: What to do when spin or a C compiler is missing.
INSTALL = ("install them with `sudo apt-get install -y spin gcc` (Debian, Ubuntu; spin 6.5 "
           "or later), or build spin from https://spinroot.com and put `spin` and `gcc` "
           "(or `cc`) on PATH")

#: A check that holds after fewer stored states is reported as vacuous.
MIN_STATES = 1000

#: Known violations of properties the code does not keep today, and why.
KNOWN = {
    "no_false_online_strict": (
        "core finding: the silence clock restarts when a rebuild finishes (flush_outbox "
        "sets last_heard on entering online), so a peer silent since the welcome can be "
        "reported live for up to handshake_timeout + interval + timeout; "
        "tests/test_model_findings.py holds the failing test"),
}

#: Bounds of the lifecycle model (macros of models/meanings.py and env.pml).
BOUNDS = {"INTERVAL": 1, "TIMEOUT": 1, "HANDSHAKE": 2, "BACKOFF_CAP": 1, "GRACE": 3,
          "MAX_LOST": 2}
#: The retry budget of the budgeted safety runs: 1 lets every `gives_up` row fire, even
#: on the first connection.
BUDGET = 1
#: The retry budget of the budgeted liveness run (its counterexample is in the README).
LIVE_BUDGET = 2
#: Bounds of the session model (session.pml).
SESSION_BOUNDS = {"N_USER": 2, "K_SERVER": 1, "MAX_CUTS": 2, "MAX_CRASH": 2, "MAX_FAULTS": 2}

_MEMLIM_MB = 1024
_PAN_DEPTH = 200_000
_PAN_HASH = 22
#: Depth bounds tried in turn for an expected violation (about x1.3 each).
_BOUNDS_TRIED = (20, 26, 34, 44, 57, 74, 96, 125, 162, 211, 274, 356, 463, 602, 783, 1018)


class ToolMissing(RuntimeError):
    """spin or a C compiler is not installed."""


def tools() -> tuple[str, str]:
    """The paths of ``spin`` and of a C compiler, or :class:`ToolMissing` saying how to
    install them."""
    spin = shutil.which("spin")
    cc = shutil.which("gcc") or shutil.which("cc")
    missing = [name for name, path in (("spin", spin), ("gcc", cc)) if path is None]
    if missing or spin is None or cc is None:
        raise ToolMissing(f"model checking needs {' and '.join(missing)}, not found on PATH: "
                          f"{INSTALL}")
    return spin, cc


# -- what to check ---------------------------------------------------------------------------

Search = Literal["safety", "liveness"]


@dataclass(frozen=True)
class Build:
    """One ``pan`` binary: the model, its defines (written into ``model.pml``), and the
    search it does.

    ``safety`` checks the safety properties, written as assertions checked after every
    step: one search checks them all. ``liveness`` looks for acceptance cycles of
    the ``liveness`` claim under weak fairness. ``rows``: keep every statement a state of
    its own (``spin -o3``) and read pan's unreached-code report.
    """

    key: str
    kind: Literal["lifecycle", "session"]
    core: str  # the generated core (lifecycle) or "" (session)
    defines: tuple[str, ...]
    search: Search
    rows: bool = False
    spec: str = "default"

    @property
    def where(self) -> str:
        """A directory name unique to this build."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.spec}.{self.key}")

    def cflags(self) -> list[str]:
        flags = ["-O0", "-w", f"-DMEMLIM={_MEMLIM_MB}"]
        if self.search == "liveness":
            return [*flags, "-DNFAIR=3"]
        return [*flags, "-DSAFETY", "-DNOCLAIM"]


@dataclass(frozen=True)
class Check:
    """One property checked on one build, and what must come out."""

    name: str  # the property
    label: str  # what distinguishes this check: the budget, the seeded bug
    build: Build
    expect: Literal["holds", "violated"]
    why: str = ""
    dead_row: int | None = None  # a seeded dead row the report must name

    @property
    def claim(self) -> str | None:
        return "liveness" if self.build.search == "liveness" else None

    @property
    def seeded(self) -> bool:
        return self.label.startswith("bug ")


@dataclass
class Result:
    check: Check
    verdict: Literal["holds", "violated", "incomplete", "error"]
    states: int = 0
    depth: int = 0
    seconds: float = 0.0
    message: str = ""
    timeline: list[str] = field(default_factory=list)
    unreached: set[int] = field(default_factory=set)  # lines of the core not reached
    violated: str = ""  # the property the counterexample violates
    dead_row_named: bool = False  # for a seeded dead row: the report named it

    @property
    def ok(self) -> bool:
        check = self.check
        if self.verdict in ("incomplete", "error"):
            return False
        if check.dead_row is not None:
            return self.verdict == "holds" and self.dead_row_named
        if check.expect == "holds":
            return self.verdict == "holds" and self.states >= MIN_STATES
        return self.verdict == "violated" and self.violated == check.name

    def summary(self) -> str:
        check = self.check
        if self.verdict in ("incomplete", "error"):
            return self.verdict.upper()
        if check.dead_row is not None:
            return "dead row named" if self.dead_row_named else "DEAD ROW NOT NAMED"
        if check.expect == "holds":
            if self.verdict == "violated":
                return "VIOLATED" if self.violated in ("", check.name) else \
                    f"VIOLATED ({self.violated})"
            return "holds" if self.states >= MIN_STATES else f"VACUOUS (< {MIN_STATES})"
        if self.verdict == "holds":
            return "NOT CAUGHT" if check.seeded else "UNEXPECTEDLY HOLDS"
        if self.violated != check.name:
            return f"WRONG PROPERTY ({self.violated or 'none named'})"
        return "caught" if check.seeded else "violated (expected)"


# -- seeded bugs -------------------------------------------------------------------------------


def _retarget(trigger: str, source: str, dest: str | None, *, after: str | None = None
              ) -> Callable[[list[Row]], None]:
    """A mutation: the unconditional row for (trigger, source) gets another dest."""

    def mutate(rows: list[Row]) -> None:
        for index, row in enumerate(rows):
            sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
            if row["trigger"] == trigger and source in [str(s) for s in sources] \
                    and not row.get("conditions") and not row.get("unless"):
                rest = [s for s in sources if str(s) != source]
                new = {**row, "source": [source], "dest": dest}
                if after is not None:
                    new["after"] = after
                rows[index:index + 1] = [new, {**row, "source": rest}] if rest else [new]
                return
        raise ModelError(f"seeded bug: no unconditional {trigger} row from {source!r}")

    return mutate


def _drop(trigger: str, unconditional_only: bool = True) -> Callable[[list[Row]], None]:
    def mutate(rows: list[Row]) -> None:
        rows[:] = [r for r in rows if not (r["trigger"] == trigger and (
            not unconditional_only or not (r.get("conditions") or r.get("unless"))))]

    return mutate


def _typo(trigger: str, dest: str, conditions: list[str]) -> Callable[[list[Row]], None]:
    def mutate(rows: list[Row]) -> None:
        for index, row in enumerate(rows):
            if row["trigger"] == trigger and row.get("dest") == dest and row.get("conditions"):
                rows[index] = {**row, "conditions": conditions}
                return
        raise ModelError(f"seeded bug: no conditional {trigger} row to {dest!r}")

    return mutate


@dataclass(frozen=True)
class SeededBug:
    name: str
    prop: str
    what: str
    mutate: Callable[[list[Row]], None] | None = None
    define: str | None = None  # an env.pml or session.pml #ifdef
    session: bool = False
    dead_row: bool = False  # the bug is a dead row the unreached report must name


SEEDED: tuple[SeededBug, ...] = (
    SeededBug("silence-restarts-clock", "no_false_online",
              "table: online --SilenceNoticed--> online (re-entering online restarts the "
              "silence clock instead of probing)",
              mutate=_retarget("SilenceNoticed", "online", "online")),
    SeededBug("probe-skips-abort", "one_transport",
              "table: waiting --ProbeUnanswered--> recovering (skips stale: the dead "
              "transport is never aborted)",
              mutate=_retarget("ProbeUnanswered", "waiting", "recovering")),
    SeededBug("early-release", "one_transport",
              "driver: TransportReleased is reported before the old transport's tasks "
              "are gone", define="BUG_EARLY_RELEASE"),
    SeededBug("rebuilt-fallback-dropped", "declared_transitions",
              "table: the unconditional Rebuilt row of connecting/recovering is deleted "
              "(a stray Rebuilt has no outcome)",
              mutate=_drop("Rebuilt")),
    SeededBug("typo-in-condition", "declared_transitions",
              "table: waiting --ProbeUnanswered--> failed guarded [is_dialing and gives_up] "
              "instead of [gives_up]: a row that can never fire",
              mutate=_typo("ProbeUnanswered", "failed", ["is_dialing", "gives_up"]),
              dead_row=True),
    SeededBug("stale-forever", "liveness",
              "table: stale --TransportReleased--> (stays) instead of recovering",
              mutate=_retarget("TransportReleased", "stale", None, after="note_released")),
    SeededBug("drop-inflight", "session_no_loss",
              "client: rewind() drops the unsettled messages instead of replaying them",
              define="BUG_DROP_INFLIGHT", session=True),
    SeededBug("no-dedupe", "session_no_dup",
              "server: a msg with seq <= last is delivered again",
              define="BUG_NO_DEDUPE", session=True),
    SeededBug("rewind-behind", "session_in_order",
              "client: rewind() puts unsettled messages behind the pending ones",
              define="BUG_REWIND_BEHIND", session=True),
    SeededBug("flow-during-rebuild", "rebuild_once_first",
              "client: held messages flow while the rebuild runs",
              define="BUG_FLOW_DURING_REBUILD", session=True),
    SeededBug("rebuild-on-resume", "rebuild_once_first",
              "client: a resume into an epoch whose rebuild finished rebuilds again",
              define="BUG_REBUILD_ON_RESUME", session=True),
)


#: The CHECKING bit of each safety property (env.pml, session.pml).
CHECKING = {"no_false_online": 1, "one_transport": 2, "declared_transitions": 4,
            "no_false_online_strict": 8, "session_no_loss": 1, "session_no_dup": 2,
            "session_in_order": 4, "rebuild_once_first": 8}


def _defines(values: dict[str, int]) -> tuple[str, ...]:
    return tuple(f"{k}={v}" for k, v in values.items())


def checks_for(spec: Spec, meanings: Meanings = BUILTIN, *, session: bool = True,
               seeded: bool = True, deep: bool = False) -> tuple[Model, list[Check]]:
    """The generated model of ``spec`` and every check ``make verify`` runs on it."""
    model = generate(spec, meanings)
    base = _defines(BOUNDS)
    checks: list[Check] = []
    for budget in (0, BUDGET):
        label = "budget none" if budget == 0 else f"budget {budget}"
        defines = (*base, f"BUDGET={budget}")
        build = Build(f"safety-b{budget}", "lifecycle", model.text, defines, "safety",
                      rows=True, spec=spec.name)
        for prop in ("no_false_online", "one_transport", "declared_transitions"):
            checks.append(Check(prop, label, build, "holds"))
    strict = Build("strict", "lifecycle", model.text, (*base, "BUDGET=0", "CHECKING=8"),
                   "safety", spec=spec.name)
    checks.append(Check("no_false_online_strict", "budget none", strict, "violated",
                        why=KNOWN["no_false_online_strict"]))
    for budget in (0, LIVE_BUDGET):
        label = "budget none" if budget == 0 else f"budget {budget}"
        # The budget's counterexample reads better without stray reports (they only come
        # before calm, and the budget-free run keeps them).
        live = Build(f"liveness-b{budget}", "lifecycle", model.text,
                     (*base, f"BUDGET={budget}", "CHECKING=0",
                      *(["STRAYS=0"] if budget else [])), "liveness", spec=spec.name)
        checks.append(Check("liveness", label, live, "holds" if budget == 0 else "violated",
                            why="" if budget == 0 else
                            "a retry budget ends in FAILED if the server stays away long "
                            "enough: the trade-off in models/README.md"))
    if session:
        sbounds = {**SESSION_BOUNDS, **({"MAX_FAULTS": 3} if deep else {})}
        build = Build("session", "session", "", _defines(sbounds), "safety", spec=spec.name)
        for prop in ("session_no_loss", "session_no_dup", "session_in_order",
                     "rebuild_once_first"):
            checks.append(Check(prop, "one search", build, "holds"))
    if seeded:
        checks += _seeded_checks(spec, meanings, base, session)
    return model, checks


def _seeded_checks(spec: Spec, meanings: Meanings, base: tuple[str, ...],
                   session: bool) -> list[Check]:
    checks: list[Check] = []
    for bug in SEEDED:
        label = f"bug {bug.name}"
        if bug.session:
            if session:
                build = Build(f"bug-{bug.name}", "session", "",
                              (*_defines(SESSION_BOUNDS), bug.define or "",
                               f"CHECKING={CHECKING[bug.prop]}"), "safety", spec=spec.name)
                checks.append(Check(bug.prop, label, build, "violated", why=bug.what))
            continue
        text, dead = generate(spec, meanings).text, None
        if bug.mutate is not None:
            mutated = generate(spec, meanings, mutate=bug.mutate)
            text = mutated.text
            if bug.dead_row:
                dead = next(n for n, r in mutated.rows.items() if r.trigger == "ProbeUnanswered"
                            and r.dest == "failed" and "is_dialing" in r.label)
        defines = (*base, f"BUDGET={BUDGET if bug.dead_row else 0}",
                   *([bug.define] if bug.define else []),
                   *([f"CHECKING={CHECKING[bug.prop]}"] if bug.prop in CHECKING else []))
        search: Search = "liveness" if bug.prop == "liveness" else "safety"
        build = Build(f"bug-{bug.name}", "lifecycle", text, defines, search,
                      rows=bug.dead_row, spec=spec.name)
        checks.append(Check(bug.prop, label, build, "holds" if bug.dead_row else "violated",
                            why=bug.what, dead_row=dead))
    return checks


# -- running -----------------------------------------------------------------------------------

_STORED = re.compile(r"^\s*(\d+) states, stored", re.M)
_DEPTH = re.compile(r"depth reached (\d+)")
_ERRORS = re.compile(r"errors: (\d+)")
_UNREACHED = re.compile(r"^\s*(\S+?):(\d+), state \d+, \"(.*)\"$")


def _run(argv: Sequence[str], cwd: Path, timeout: float = 300) -> tuple[int, str]:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)
    return proc.returncode, proc.stdout + proc.stderr


def _top(build: Build, where: Path) -> Path:
    """The model spin reads: the build's defines, then the generated core and the
    environment (or the session model). Self-contained, so that ``spin -t -p model.pml``
    in ``where`` replays a trail of this build exactly."""
    top = where / "model.pml"
    lines = [f"/* {build.spec}: {build.key}, composed by models/verify.py */"]
    for define in build.defines:
        if define:
            name, _, value = define.partition("=")
            lines.append(f"#define {name} {value or 1}")
    if build.kind == "lifecycle":
        (where / "core.pml").write_text(build.core, encoding="utf-8")
        lines += [f'#include "{where / "core.pml"}"', f'#include "{MODELS / "env.pml"}"']
    else:
        lines.append(f'#include "{MODELS / "session.pml"}"')
    top.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return top


def _job(build: Build, checks: list[Check], root: Path) -> list[Result]:
    try:
        return _build_and_check(build, checks, root)
    except subprocess.TimeoutExpired as timeout:
        return [Result(c, "error", message=f"{' '.join(map(str, timeout.cmd))} took longer "
                                           f"than {timeout.timeout:.0f} s") for c in checks]


def _build_and_check(build: Build, checks: list[Check], root: Path) -> list[Result]:
    spin, cc = tools()
    where = root / build.where
    where.mkdir()
    top = _top(build, where)
    # -o3: no statement merging, so each row's `row = K` is a state of its own and pan's
    # unreached-code report can name it
    code, out = _run([spin, *(["-o3"] if build.rows else []), "-a", top.name], where)
    if code != 0 or not (where / "pan.c").exists():
        return [Result(c, "error", message=f"spin -a failed: {out.strip()[-400:]}")
                for c in checks]
    code, out = _run([cc, *build.cflags(), "-o", "pan", "pan.c"], where)
    if code != 0:
        return [Result(c, "error", message=f"{cc} failed: {out.strip()[-400:]}") for c in checks]
    # One search per build: it checks every property the build has.
    first = _pan(checks[0], where)
    return [first, *(replace(first, check=c) for c in checks[1:])]


def _pan(check: Check, where: Path) -> Result:
    build = check.build
    args = ["./pan", f"-w{_PAN_HASH}", *([] if build.rows else ["-n"])]
    if check.claim:
        args += ["-a", "-f", "-N", check.claim]
    started = time.monotonic()
    if check.expect == "violated":
        out = _shortest(args, where)
    else:
        _, out = _run([*args, f"-m{_PAN_DEPTH}"], where)
    seconds = time.monotonic() - started
    stored, depth, errors = _STORED.search(out), _DEPTH.search(out), _ERRORS.search(out)
    if stored is None or errors is None:
        return Result(check, "error", seconds=seconds, message=out.strip()[-400:])
    result = Result(check, "violated" if int(errors.group(1)) else "holds",
                    states=int(stored.group(1)), depth=int(depth.group(1)) if depth else 0,
                    seconds=seconds)
    if result.verdict == "holds" and ("out of memory" in out or "reached -DMEMLIM" in out
                                      or "max search depth too small" in out):
        result.verdict = "incomplete"
        result.message = "the search did not finish (memory or depth): counts are a lower bound"
    if result.verdict == "violated":
        if check.expect == "holds":  # unexpected: search again for a short timeline
            _shortest(args, where)
        _, trail = _run(["./pan", "-r", "-S", *(["-N", check.claim] if check.claim else [])],
                        where)
        result.timeline = trail.splitlines()
        named = re.search(r"^VIOLATED (\w+)", trail, re.M)
        result.violated = named.group(1) if named else (check.claim or "")
    if build.rows:
        section = out.split("unreached in proctype Core", 1)
        if len(section) == 2:
            for line in section[1].split("unreached in", 1)[0].splitlines():
                hit = _UNREACHED.match(line)
                if hit and hit.group(1).endswith("core.pml"):
                    result.unreached.add(int(hit.group(2)))
    return result


def _shortest(args: list[str], where: Path) -> str:
    """A depth-first counterexample can be thousands of steps long; searches bounded to a
    growing depth find a short one first, and cheaply. pan's output of the last run."""
    out = ""
    for bound in (*_BOUNDS_TRIED, _PAN_DEPTH):
        _, out = _run([*args, f"-m{bound}"], where)
        if not re.search(r"errors: 0\b", out):
            break
    return out


def run_checks(checks: Sequence[Check], *, jobs: int = 2, keep: Path | None = None
               ) -> list[Result]:
    """Run ``checks`` (one compile per distinct build), ``jobs`` builds at a time. With
    ``keep``, each build's model, ``pan`` and trail stay in a directory of their own
    under it (``spin -t -p model.pml`` there replays a counterexample)."""
    tools()
    groups: dict[str, list[Check]] = {}
    for check in checks:
        groups.setdefault(check.build.where, []).append(check)
    with contextlib.ExitStack() as stack:
        if keep is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tether-verify-")))
        else:
            root = keep
            root.mkdir(parents=True, exist_ok=True)
            for where in groups:
                shutil.rmtree(root / where, ignore_errors=True)
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=max(1, jobs)))
        futures = [pool.submit(_job, group[0].build, group, root) for group in groups.values()]
        by_check = {id(r.check): r for f in futures for r in f.result()}
    return [by_check[id(c)] for c in checks]


def dead_rows(model: Model, results: Sequence[Result]) -> list[int]:
    """Rows of ``model`` (not IGNORED pairs, not rows the model skips by design) that no
    ``declared_transitions`` search reached."""
    searches = {r.check.build.key: r for r in results if r.check.build.rows
                and r.check.dead_row is None and r.verdict == "holds"}.values()
    if not searches:
        return []
    unreached = set.intersection(*(r.unreached for r in searches))
    return [n for n, line in sorted(model.lines.items())
            if line in unreached and not model.rows[n].ignored and n not in model.skipped]


def _mark_seeded_dead_rows(results: Sequence[Result]) -> None:
    for result in results:
        if result.check.dead_row is not None:
            line = _line_of(result.check)
            result.dead_row_named = line in result.unreached


def _line_of(check: Check) -> int:
    """The line of the seeded dead row's ``row = K`` statement in its build's core."""
    pattern = re.compile(rf"^\s*row = {check.dead_row}[;\s]")
    for number, line in enumerate(check.build.core.splitlines(), start=1):
        if pattern.match(line):
            return number
    return -1


# -- printing ----------------------------------------------------------------------------------

_STEP = re.compile(r"^STEP (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$")
_GLOBAL = re.compile(r"^\s*(?:bit|byte|short|int)\s+(\w+):\s*(-?\d+)$")


def lifecycle_timeline(model: Model, lines: Sequence[str]) -> list[str]:
    """A trail's printed steps as a numbered timeline of events and state changes."""
    out: list[str] = []
    ticks = 0
    final: dict[str, int] = {}

    def flush_ticks() -> None:
        nonlocal ticks
        if ticks:
            out.append("time passes: " + ("1 tick" if ticks == 1 else f"{ticks} ticks"))
            ticks = 0

    for line in lines:
        if line == "TICK":
            ticks += 1
            continue
        hit = _STEP.match(line)
        if hit:
            flush_ticks()
            ev, src, st, row, flags, epoch = (int(g) for g in hit.groups())
            event = model.event_name(ev)
            notes = []
            if flags & 1:
                notes.append("fatal")
            if event == "Connected":
                notes.append("resumed" if flags & 2 else "new session")
                if epoch != 255:
                    notes.append(f"epoch {epoch}")
            head = f"{event}" + (f" ({', '.join(notes)})" if notes else "")
            if st != src:
                move = f"{model.state_name(src)} -> {model.state_name(st)}"
            else:
                move = f"stays {model.state_name(src)}"
            info = model.rows.get(row)
            why = f"   [{info.label}]" if info is not None and not info.ignored else ""
            out.append(f"{head}: {move}{why}")
            continue
        if line.startswith("ENV "):
            flush_ticks()
            out.append(f"environment: {line[4:]}")
            continue
        glob = _GLOBAL.match(line)
        if glob:
            final[glob.group(1)] = int(glob.group(2))
    flush_ticks()
    numbered = [f"{i:>3}. {text}" for i, text in enumerate(out, start=1)]
    if final:
        state = model.state_name(final.get("st", -1))
        phys = {0: "none", 1: "dialing", 2: "open"}.get(final.get("phys", 0), "?")
        alarms = [text for flag, text in (
            ("no_outcome", "the last event had no row and was not IGNORED"),
            ("timer_stuck", "the fired deadline was still due (the core would raise)"),
            ("refused_dial", "the core dialed while holding a transport (it would raise)"),
            ("two_transports", "a second transport was opened while one existed"))
            if final.get(flag)]
        numbered.append(
            f"     then: state {state}; peer silent {final.get('silent', '?')} ticks "
            f"({final.get('quiet', '?')} since contact; bound interval + timeout = "
            f"{BOUNDS['INTERVAL'] + BOUNDS['TIMEOUT']}); transport {phys}"
            + (", an old one still closing" if final.get("closing") else "")
            + "".join(f"; {text}" for text in alarms))
    return numbered


def session_timeline(lines: Sequence[str]) -> list[str]:
    steps = [line for line in lines if re.match(r"^(C|S|ENV|VIOLATED|GAP|DISORDER)\b", line)]
    return [f"{i:>3}. {text}" for i, text in enumerate(steps, start=1)]


def chain(timeline: Sequence[str]) -> str:
    """The timeline in one line: ``Started -> Connected -> 2 ticks -> ...``."""
    words = []
    for line in timeline:
        text = line.split(". ", 1)[-1].strip()
        if text.startswith("then:"):
            continue
        text = text.removeprefix("environment: ").removeprefix("time passes: ")
        words.append(re.sub(r"(:\s.*|\s\(.*|\s+\[.*)$", "", text).strip())
    return " -> ".join(words)


def report(spec: Spec, model: Model, results: Sequence[Result], *, wall: float,
           timelines: bool = True, out: Callable[[str], None] = print) -> bool:
    """Print the result table (and the timelines); True if every check came out as
    expected."""
    _mark_seeded_dead_rows(results)
    ok = all(r.ok for r in results)
    out(f"tether verify: spec {spec.name!r}, {len(model.rows)} generated rows "
        f"({sum(1 for r in model.rows.values() if not r.ignored)} table rows, "
        f"{sum(1 for r in model.rows.values() if r.ignored)} IGNORED pairs)")
    out("bounds: " + ", ".join(f"{k.lower()} {v}" for k, v in BOUNDS.items())
        + f"; budgeted runs: safety {BUDGET}, liveness {LIVE_BUDGET}; session: "
        + ", ".join(f"{k.lower()} {v}" for k, v in SESSION_BOUNDS.items()))
    out("")
    header = (f"{'property':<24} {'run':<28} {'result':<24} {'states':>10} {'depth':>7} "
              f"{'seconds':>8}")
    out(header)
    out("-" * len(header))
    for r in results:
        out(f"{r.check.name:<24} {r.check.label:<28} {r.summary():<24} {r.states:>10,} "
            f"{r.depth:>7,} {r.seconds:>8.2f}")
    out("-" * len(header))
    dead = dead_rows(model, results)
    live_rows = [n for n, r in model.rows.items() if not r.ignored and n not in model.skipped]
    if any(r.check.build.rows and r.check.dead_row is None for r in results):
        if dead:
            out(f"rows reachable: {len(live_rows) - len(dead)} of {len(live_rows)}; "
                f"dead rows (no run took them):")
            for n in dead:
                out(f"  - {model.rows[n].label}")
        else:
            out(f"rows reachable: all {len(live_rows)} table rows were taken by some run")
        skipped = sorted({model.rows[n].trigger for n in model.skipped})
        if skipped:
            out(f"  (rows of {', '.join(skipped)} are not checked: "
                f"{BUILTIN.events[skipped[0]].why})")
    out(f"{sum(r.ok for r in results)} of {len(results)} checks as expected; "
        f"{sum({r.check.build.where: r.seconds for r in results}.values()):.1f} s in pan, "
        f"{wall:.1f} s wall time for the whole run (compiles included)")
    if timelines:
        for r in results:
            if r.verdict != "violated" or not r.timeline:
                continue
            out("")
            kind = "seeded " + r.check.label[4:] if r.check.label.startswith("bug") else \
                r.check.name
            out(f"== {kind}: {r.check.name} ({r.check.label}) {r.summary()}")
            if r.check.why:
                out(f"   {r.check.why}")
            steps = session_timeline(r.timeline) if r.check.build.kind == "session" else \
                lifecycle_timeline(model if not r.check.label.startswith("bug") else
                                   _model_of(spec, r.check), r.timeline)
            out("   " + chain(steps))
            for step in steps:
                out("   " + step)
    for r in results:
        if not r.ok:
            out(f"NOT AS EXPECTED: {r.check.name} ({r.check.label}): {r.summary()}"
                + (f": {r.message}" if r.message else ""))
    return ok


def _model_of(spec: Spec, check: Check) -> Model:
    bug = next((b for b in SEEDED if f"bug {b.name}" == check.label), None)
    return generate(spec, mutate=bug.mutate if bug else None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tether verify",
        description="Model-check lifecycle specs (and the session protocol) with spin. With "
                    "the built-in spec, also the session protocol and the seeded bugs.")
    parser.add_argument("specs", nargs="*", metavar="module:SPEC",
                        help="Specs to check (default: the built-in lifecycle, "
                             "fsm.spec:DEFAULT_SPEC); a module may define MODEL_MEANINGS")
    parser.add_argument("--no-seeded", action="store_true",
                        help="skip the seeded bugs (they show each property bites)")
    parser.add_argument("--session", action=argparse.BooleanOptionalAction, default=None,
                        help="also check the session protocol (default: only with the "
                             "built-in spec)")
    parser.add_argument("--deep", action="store_true",
                        help="larger session bounds (3 faults instead of 2; slower)")
    parser.add_argument("--jobs", type=int, default=2, help="builds compiled and checked at "
                                                            "a time (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no timelines")
    parser.add_argument("--keep", metavar="DIR", type=Path,
                        help="keep each build's model, pan and trail under DIR")
    args = parser.parse_args(argv)
    try:
        tools()
    except ToolMissing as error:
        print(f"tether verify: {error}", file=sys.stderr)
        return 3
    started = time.monotonic()
    plans: list[tuple[Spec, Model, list[Check]]] = []
    try:
        for target in args.specs or ["fsm.spec:DEFAULT_SPEC"]:
            spec, meanings = load(target)
            builtin = spec is DEFAULT_SPEC
            session = builtin if args.session is None else args.session
            model, checks = checks_for(spec, meanings, session=session,
                                       seeded=not args.no_seeded and builtin, deep=args.deep)
            plans.append((spec, model, checks))
        results = run_checks([c for _, _, checks in plans for c in checks], jobs=args.jobs,
                             keep=args.keep)
    except (ModelError, ImportError, AttributeError) as error:
        print(f"tether verify: {error}", file=sys.stderr)
        return 2
    wall = time.monotonic() - started
    ok = True
    for number, (spec, model, _) in enumerate(plans):
        if number:
            print("\n")
        mine = [r for r in results if r.check.build.spec == spec.name]
        ok = report(spec, model, mine, wall=wall, timelines=not args.quiet) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
