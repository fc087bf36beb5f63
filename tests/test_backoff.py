"""Backoff policy: capped exponential ceiling, full jitter after the cap, Retry-After,
budget, and argument validation."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fsm.backoff import Backoff

ALMOST_ONE = math.nextafter(1.0, 0.0)
DRAWS = [0.0, 1e-9, 0.25, 0.5, 0.75, 0.999, ALMOST_ONE]


def test_ceiling_grows_by_factor_until_cap() -> None:
    backoff = Backoff(initial=0.1, factor=2.0, cap=1.0)
    assert [backoff.ceiling(n) for n in range(6)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_ceiling_uses_the_factor() -> None:
    backoff = Backoff(initial=1.0, factor=3.0, cap=100.0)
    assert [backoff.ceiling(n) for n in range(6)] == pytest.approx(
        [1.0, 3.0, 9.0, 27.0, 81.0, 100.0])


def test_ceiling_reaches_cap_exactly_and_never_exceeds_it() -> None:
    backoff = Backoff(initial=0.3, factor=1.7, cap=10.0)
    ceilings = [backoff.ceiling(n) for n in range(60)]
    assert all(c <= backoff.cap for c in ceilings)
    assert ceilings == sorted(ceilings)
    assert ceilings[-1] == backoff.cap


def test_ceiling_at_huge_attempt_does_not_overflow() -> None:
    backoff = Backoff(initial=0.1, factor=2.0, cap=10.0)
    assert backoff.ceiling(10_000) == 10.0
    assert backoff.delay(10_000, 0.5) == pytest.approx(5.0)


def test_factor_one_is_constant() -> None:
    backoff = Backoff(initial=0.5, factor=1.0, cap=10.0)
    assert {backoff.ceiling(n) for n in (0, 1, 5, 100)} == {0.5}


@pytest.mark.parametrize("attempt", [0, 1, 2, 5, 10, 50, 10_000])
@pytest.mark.parametrize("u", DRAWS)
def test_delay_within_zero_and_cap(attempt: int, u: float) -> None:
    backoff = Backoff(initial=0.1, factor=2.0, cap=2.0)
    delay = backoff.delay(attempt, u)
    assert 0.0 <= delay <= backoff.cap
    assert delay <= backoff.ceiling(attempt)
    assert delay == pytest.approx(u * backoff.ceiling(attempt))


def test_full_jitter_spreads_over_the_whole_range() -> None:
    backoff = Backoff(initial=1.0, factor=2.0, cap=8.0)
    assert backoff.delay(10, 0.0) == 0.0
    assert backoff.delay(10, ALMOST_ONE) == pytest.approx(8.0)
    assert backoff.delay(10, ALMOST_ONE) < 8.0
    assert backoff.delay(10, 0.5) == pytest.approx(4.0)
    # Jitter is applied after the cap: at the cap, draws spread over [0, cap), not a
    # band just under it.
    delays = [backoff.delay(20, i / 10) for i in range(10)]
    assert delays == pytest.approx([0.8 * i for i in range(10)])


def test_retry_after_is_a_floor_with_the_attempts_jitter_on_top() -> None:
    backoff = Backoff(initial=1.0, factor=2.0, cap=8.0)
    assert backoff.delay(0, 0.0, retry_after=7.0) == 7.0
    assert backoff.delay(0, 0.5, retry_after=7.0) == pytest.approx(7.5)
    # A hint never shortens the jittered delay.
    assert backoff.delay(3, 0.5, retry_after=1.0) == pytest.approx(5.0)
    # A hint may exceed the cap: the server asked for it.
    assert backoff.delay(3, 0.5, retry_after=30.0) == pytest.approx(34.0)


def test_clients_refused_with_the_same_hint_come_back_spread_out() -> None:
    """Issue 7: 150 clients refused with ``retry_after: 1`` returned in waves exactly 1 s
    later. With the jitter on top of the hint, their delays spread over the attempt's
    whole jitter range above the hint."""
    backoff = Backoff(initial=0.1, cap=10.0)
    delays = sorted(backoff.delay(3, i / 150, retry_after=1.0) for i in range(150))
    assert delays[0] == 1.0
    assert delays[-1] - delays[0] > 0.75 * backoff.ceiling(3)
    assert len({round(d, 6) for d in delays}) == 150


def test_retry_after_capped_by_max_retry_after() -> None:
    backoff = Backoff(max_retry_after=60.0)
    assert backoff.delay(0, 0.0, retry_after=86_400.0) == 60.0
    assert Backoff().delay(0, 0.0, retry_after=86_400.0) == 300.0


@pytest.mark.parametrize("hint", [None, 0.0, -5.0])
def test_absent_or_non_positive_retry_after_is_ignored(hint: float | None) -> None:
    backoff = Backoff(initial=1.0, factor=2.0, cap=8.0)
    assert backoff.delay(2, 0.5, retry_after=hint) == pytest.approx(2.0)


def test_budget_none_never_exhausted() -> None:
    assert not Backoff().exhausted(10**9)


def test_budget_counts_failed_attempts() -> None:
    backoff = Backoff(budget=3)
    assert [backoff.exhausted(n) for n in range(6)] == [False, False, False, True, True, True]


def test_budget_of_one_gives_up_after_the_first_failure() -> None:
    backoff = Backoff(budget=1)
    assert not backoff.exhausted(0)
    assert backoff.exhausted(1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial": 0.0}, "Backoff.initial"),
        ({"initial": -1.0}, "Backoff.initial"),
        ({"initial": math.nan}, "Backoff.initial"),
        ({"factor": 0.5}, "Backoff.factor"),
        ({"factor": math.nan}, "Backoff.factor"),
        ({"cap": 0.05}, "Backoff.cap"),
        ({"initial": 2.0, "cap": 1.0}, "Backoff.cap"),
        ({"cap": math.nan}, "Backoff.cap"),
        ({"grace": -0.1}, "Backoff.grace"),
        ({"budget": 0}, "Backoff.budget"),
        ({"budget": -3}, "Backoff.budget"),
        ({"max_retry_after": -1.0}, "Backoff.max_retry_after"),
        ({"initial": math.inf, "cap": math.inf}, "Backoff.initial"),
        ({"cap": math.inf}, "Backoff.cap"),
        ({"factor": math.inf}, "Backoff.factor"),
        ({"grace": math.inf}, "Backoff.grace"),
        ({"max_retry_after": math.inf}, "Backoff.max_retry_after"),
    ],
)
def test_invalid_arguments_raise_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        Backoff(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"budget": 2.5}, "Backoff.budget"),
        ({"budget": True}, "Backoff.budget"),
        ({"initial": "0.1"}, "Backoff.initial"),
        ({"cap": None}, "Backoff.cap"),
    ],
)
def test_arguments_of_the_wrong_type_raise_naming_the_field(kwargs: dict[str, Any],
                                                            field: str) -> None:
    """Issue 7: ``Backoff(budget=2.5)`` was accepted silently."""
    with pytest.raises(TypeError, match=field.replace(".", r"\.")):
        Backoff(**kwargs)


@pytest.mark.parametrize("u", [-0.1, 1.0, 1.5, math.nan])
def test_delay_rejects_a_draw_outside_unit_interval(u: float) -> None:
    with pytest.raises(ValueError, match=r"Backoff\.delay.*uniform draw in \[0, 1\)"):
        Backoff().delay(0, u)


@pytest.mark.parametrize("field", ["grace", "max_retry_after"])
def test_nan_grace_and_max_retry_after_are_rejected(field: str) -> None:
    kwargs: dict[str, Any] = {field: math.nan}
    with pytest.raises(ValueError, match=f"Backoff.{field}"):
        Backoff(**kwargs)


def test_valid_edge_values_are_accepted() -> None:
    backoff = Backoff(initial=1.0, factor=1.0, cap=1.0, grace=0.0, budget=1,
                      max_retry_after=0.0)
    assert backoff.delay(5, 0.5, retry_after=10.0) == pytest.approx(0.5)
    assert Backoff(budget=10**9).budget == 10**9
