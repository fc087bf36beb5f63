"""The model checker's driver: a fast part of ``make verify`` (which runs all of it).

Here: the default spec's safety searches (both budgets) hold, name exactly the known dead
rows and explore enough states to mean something; a sample of the seeded bugs is caught
with a readable timeline; the known violation is the rebuild window; the budget's
liveness counterexample ends in ``failed``; missing tools say how to install them.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest

from fsm.spec import DEFAULT_SPEC
from models import verify
from models.verify import (
    KNOWN,
    MIN_STATES,
    SEEDED,
    Check,
    Result,
    ToolMissing,
    checks_for,
    dead_rows,
    lifecycle_timeline,
    run_checks,
)

needs_spin = pytest.mark.skipif(
    shutil.which("spin") is None or (shutil.which("gcc") or shutil.which("cc")) is None,
    reason=f"needs spin and a C compiler: {verify.INSTALL}")

#: Rows the default table declares for uniformity that no run can take, and why.
EXPECTED_DEAD = {
    # connecting is only the first dial: its transport is always opening or open, and
    # no epoch has been rebuilt yet, so nothing can be resumed
    "#5 Connected: connecting -> (internal) unless [is_dialing]",
    "#6 Connected: connecting -> online [is_resumed]",
    "#30 TransportLost: connecting -> (internal) unless [holds_transport]",
    # a live state always holds its transport
    "#30 TransportLost: online -> (internal) unless [holds_transport]",
    "#30 TransportLost: waiting -> (internal) unless [holds_transport]",
}
#: The seeded bugs run here (make verify runs every one).
SAMPLE = {"silence-restarts-clock", "early-release", "rebuilt-fallback-dropped",
          "drop-inflight", "flow-during-rebuild"}


def _pick(checks: list[Check], keep: Callable[[Check], bool]) -> list[Check]:
    return [c for c in checks if keep(c)]


@pytest.fixture(scope="module")
def results() -> list[Result]:
    try:
        verify.tools()
    except ToolMissing as missing:
        pytest.skip(str(missing))
    _, checks = checks_for(DEFAULT_SPEC)
    chosen = _pick(checks, lambda c: c.build.key.startswith("safety") or c.build.key in (
        "strict", "liveness-b2") or c.label.removeprefix("bug ") in SAMPLE)
    return run_checks(chosen, jobs=2)


@needs_spin
def test_the_safety_properties_hold_on_enough_states(results: list[Result]) -> None:
    safety = [r for r in results if r.check.build.key.startswith("safety")]
    assert {r.check.name for r in safety} == {"no_false_online", "one_transport",
                                              "declared_transitions"}
    for result in safety:
        assert result.verdict == "holds", (result.check, result.summary(), result.timeline)
        assert result.states >= 50 * MIN_STATES and result.ok


@needs_spin
def test_the_dead_rows_are_exactly_the_known_ones(results: list[Result]) -> None:
    model = checks_for(DEFAULT_SPEC, session=False, seeded=False)[0]
    assert {model.rows[n].label for n in dead_rows(model, results)} == EXPECTED_DEAD


@needs_spin
@pytest.mark.parametrize("bug", sorted(SAMPLE))
def test_a_seeded_bug_is_caught_with_a_readable_timeline(results: list[Result],
                                                         bug: str) -> None:
    (result,) = [r for r in results if r.check.label == f"bug {bug}"]
    assert result.ok, (result.summary(), result.message)
    assert result.violated == result.check.name
    printed = [line for line in result.timeline if line.startswith(("STEP", "C ", "S "))]
    assert printed, "the counterexample printed no steps"


@needs_spin
def test_the_known_violation_is_the_rebuild_window(results: list[Result]) -> None:
    (strict,) = [r for r in results if r.check.name == "no_false_online_strict"]
    assert strict.ok and strict.check.why == KNOWN["no_false_online_strict"]
    model = checks_for(DEFAULT_SPEC, session=False, seeded=False)[0]
    timeline = "\n".join(lifecycle_timeline(model, strict.timeline))
    assert "Connected (new session" in timeline
    assert "Rebuilt: connecting -> online" in timeline
    assert "then: state online" in timeline or "then: state waiting" in timeline


@needs_spin
def test_a_retry_budget_has_a_liveness_counterexample(results: list[Result]) -> None:
    (budget,) = [r for r in results if r.check.build.key == "liveness-b2"]
    assert budget.ok and budget.verdict == "violated"
    model = checks_for(DEFAULT_SPEC, session=False, seeded=False)[0]
    timeline = lifecycle_timeline(model, budget.timeline)
    assert any("-> failed" in line for line in timeline), timeline
    assert any("calm" in line for line in timeline), timeline


def test_every_property_has_a_seeded_bug() -> None:
    _, checks = checks_for(DEFAULT_SPEC)
    must_hold = {c.name for c in checks if c.expect == "holds" and not c.seeded}
    assert must_hold <= {bug.prop for bug in SEEDED}


def test_missing_tools_say_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(shutil, "which", lambda _: None)
    with pytest.raises(ToolMissing, match=r"spin and gcc.*apt-get install -y spin gcc"):
        verify.tools()
    assert verify.main([]) == 3
    assert "apt-get install -y spin gcc" in capsys.readouterr().err


def test_a_spec_that_cannot_be_modelled_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("spin") is None:
        pytest.skip(f"needs spin: {verify.INSTALL}")
    assert verify.main(["fsm.spec:no_such_spec"]) == 2
    assert "no_such_spec" in capsys.readouterr().err
