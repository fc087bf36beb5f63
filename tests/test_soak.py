"""The short chaos soak (``tests/soak.py``; ``make soak`` is the long one): 10 session
links against two real ``tether hub`` processes behind fault proxies, 10 s of SIGKILLs,
SIGSTOPs, blackholes, resets and latency. Nothing lost, doubled or reordered, no link
live over a frozen hub past the bound, no descriptor or task left behind."""

from __future__ import annotations

import asyncio

import pytest

from tests.soak import Soak, verdict

pytestmark = [pytest.mark.realsocket, pytest.mark.timeout(110)]


def test_the_short_soak_loses_nothing_and_leaks_nothing() -> None:
    soak = Soak(links=10, messages=100, seconds=10.0, hubs=2, seed=9)
    result = asyncio.run(soak.run())
    assert verdict(result) == [], result
    assert result["delivered"] == 1000
    assert {"kill", "freeze"} <= set(result["faults"]), result["faults"]
