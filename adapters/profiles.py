"""Hypothesis profiles for tether's property tests and for the kit users run on their specs.

==============  ==========================================================================
``quick``       development: a fifth of the examples, random; a failure still shrinks
``dev``         the default on a developer's machine: the full count, random (new
                examples every run, failures remembered in ``.hypothesis/``)
``ci``          derandomised: the same examples every run, so a red CI is reproducible;
                the default under ``CI=true`` (``make test`` in CI)
``thorough``    a long run: ten times the examples
==============  ==========================================================================

Pick one with ``HYPOTHESIS_PROFILE=quick make test`` (or ``pytest --hypothesis-profile
quick``). Test modules write their example counts through :func:`examples`, which scales a
count written for the ``ci`` profile by the loaded profile's ``max_examples``: the ratios
between tests stay as written, and ``quick`` and ``thorough`` reach every test, including
those that set their own count.

``tests/conftest.py`` calls :func:`load`; a user's conftest may do the same.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

__all__ = ["PROFILES", "examples", "load", "register"]

_BASE = 100  # max_examples of the ci profile: the counts written in the tests are for it

PROFILES: dict[str, settings] = {
    "quick": settings(max_examples=_BASE // 5, deadline=None),
    "dev": settings(max_examples=_BASE, deadline=None),
    "ci": settings(max_examples=_BASE, deadline=None, derandomize=True, database=None,
                   print_blob=True, suppress_health_check=[HealthCheck.too_slow]),
    "thorough": settings(max_examples=_BASE * 10, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow]),
}


def register() -> None:
    """Register every profile of :data:`PROFILES` with hypothesis."""
    for name, profile in PROFILES.items():
        settings.register_profile(name, profile)


def load(name: str | None = None) -> str:
    """Register the profiles and load ``name``; by default ``$HYPOTHESIS_PROFILE``, else
    ``ci`` under ``CI=true``, else ``dev``. Returns the name loaded."""
    register()
    if name is None:
        name = os.environ.get("HYPOTHESIS_PROFILE") or (
            "ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev")
    if name not in PROFILES:
        raise ValueError(f"unknown hypothesis profile {name!r}; use one of "
                         f"{', '.join(PROFILES)}")
    settings.load_profile(name)
    return name


def examples(count: int) -> int:
    """``count`` examples as written for the ``ci`` profile, scaled to the loaded one."""
    current = settings.default
    loaded = current.max_examples if current is not None else _BASE
    return max(1, round(count * loaded / _BASE))
