"""Test-wide set-up: the hypothesis profile (``adapters/profiles.py``): ``dev`` by default,
``ci`` (derandomised) under ``CI=true``, ``quick`` or ``thorough`` through
``HYPOTHESIS_PROFILE``."""

from __future__ import annotations

from adapters.profiles import load

PROFILE = load()


def pytest_report_header() -> str:
    return f"hypothesis profile: {PROFILE} (HYPOTHESIS_PROFILE=quick|dev|ci|thorough)"
