"""Heartbeat policy: deadlines, the stall grace, the detection bound, validation."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fsm.heartbeat import Heartbeat


def test_defaults() -> None:
    hb = Heartbeat()
    assert (hb.interval, hb.timeout, hb.stall_grace) == (5.0, 5.0, None)


def test_silence_deadline_is_interval_after_last_heard() -> None:
    hb = Heartbeat(interval=2.0, timeout=3.0)
    assert hb.silence_deadline(0.0) == 2.0
    assert hb.silence_deadline(100.25) == 102.25


def test_probe_deadline_is_timeout_after_its_base() -> None:
    hb = Heartbeat(interval=2.0, timeout=3.0)
    assert hb.probe_deadline(10.0) == 13.0


def test_on_time_probe_bounds_silence_at_interval_plus_timeout() -> None:
    hb = Heartbeat(interval=2.0, timeout=3.0)
    last_heard = 41.0
    assert hb.probe_deadline(hb.silence_deadline(last_heard)) - last_heard == hb.bound


def test_bound_is_interval_plus_timeout() -> None:
    assert Heartbeat(interval=1.5, timeout=2.5).bound == 4.0
    assert Heartbeat().bound == 10.0


def test_grace_defaults_to_a_quarter_of_timeout() -> None:
    assert Heartbeat(interval=1.0, timeout=2.0).grace == 0.5
    assert Heartbeat(interval=9.0, timeout=1.0).grace == 0.25


def test_explicit_stall_grace_wins() -> None:
    assert Heartbeat(interval=1.0, timeout=2.0, stall_grace=0.1).grace == 0.1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"interval": 0.0}, "Heartbeat.interval"),
        ({"interval": -1.0}, "Heartbeat.interval"),
        ({"interval": math.nan}, "Heartbeat.interval"),
        ({"timeout": 0.0}, "Heartbeat.timeout"),
        ({"timeout": -0.5}, "Heartbeat.timeout"),
        ({"timeout": math.nan}, "Heartbeat.timeout"),
        ({"stall_grace": 0.0}, "Heartbeat.stall_grace"),
        ({"stall_grace": -1.0}, "Heartbeat.stall_grace"),
        ({"stall_grace": math.nan}, "Heartbeat.stall_grace"),
        # Issue 7: an infinite interval was accepted and never probed.
        ({"interval": math.inf}, "Heartbeat.interval"),
        ({"timeout": math.inf}, "Heartbeat.timeout"),
        ({"stall_grace": math.inf}, "Heartbeat.stall_grace"),
    ],
)
def test_invalid_arguments_raise_naming_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        Heartbeat(**kwargs)


def test_is_immutable() -> None:
    hb = Heartbeat()
    with pytest.raises(AttributeError):
        hb.interval = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("kwargs", [{"interval": "1"}, {"timeout": None}, {"interval": True}])
def test_arguments_of_the_wrong_type_raise_naming_the_field(kwargs: dict[str, Any]) -> None:
    (name,) = kwargs
    with pytest.raises(TypeError, match=rf"Heartbeat\.{name} must be a finite number"):
        Heartbeat(**kwargs)
