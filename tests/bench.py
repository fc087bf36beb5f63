"""Run tether's benchmarks in turn: ``.venv/bin/python -m tests.bench`` (``make bench``).

Every module ``tests/bench_<name>.py`` is a benchmark exposing ``main() -> int``; they are
found by name with :mod:`pkgutil`, so a new one runs without touching this file. ``core``
and ``detect`` come first, the others follow in alphabetical order. Name some to run a
subset (``python -m tests.bench detect``; ``bench_detect`` and ``tests.bench_detect``
work too); ``--list`` prints the names. Each benchmark gets a header and its exit
status; a benchmark that returns non-zero or raises fails the run, and the rest still
run. The exit status is 0 if every benchmark passed, 1 if any failed, 2 for a bad name.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback
from collections.abc import Sequence

import tests

PREFIX = "bench_"
FIRST = ("core", "detect")  #: run first, in this order; then the rest by name
RULE = "=" * 100


def discover() -> list[str]:
    """The benchmark names (``bench_detect`` -> ``detect``) in run order."""
    found = {info.name.removeprefix(PREFIX) for info in pkgutil.iter_modules(tests.__path__)
             if info.name.startswith(PREFIX) and not info.ispkg}
    return [name for name in FIRST if name in found] + sorted(found - set(FIRST))


def _name(argument: str) -> str:
    return argument.removeprefix(f"{tests.__name__}.").removeprefix(PREFIX)


def run_one(name: str) -> int:
    """Import ``tests.bench_<name>`` and return what its ``main()`` returns (1 if it
    raises, has no ``main`` or returns something other than an int)."""
    module_name = f"{tests.__name__}.{PREFIX}{name}"
    try:
        module = importlib.import_module(module_name)
        entry = getattr(module, "main", None)
        if not callable(entry):
            print(f"{module_name} has no main()", file=sys.stderr)
            return 1
        status = entry()
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
    if not isinstance(status, int):
        print(f"{module_name}.main() returned {status!r}, not an int", file=sys.stderr)
        return 1
    return status


def main(argv: Sequence[str] | None = None) -> int:
    available = discover()
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description="Run tether's benchmarks (tests/bench_*.py), all or the ones named.",
    )
    parser.add_argument("names", nargs="*", metavar="name",
                        help=f"benchmarks to run (default: all of {', '.join(available)})")
    parser.add_argument("--list", action="store_true", help="print the benchmark names")
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if args.list:
        print("\n".join(available))
        return 0
    names = [_name(argument) for argument in args.names] or available
    unknown = [name for name in names if name not in available]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; "
              f"available: {', '.join(available)}", file=sys.stderr)
        return 2

    outcomes: list[tuple[str, int, float]] = []
    for index, name in enumerate(names, 1):
        print(RULE)
        print(f"benchmark {index}/{len(names)}: {tests.__name__}.{PREFIX}{name}")
        print(RULE, flush=True)
        started = time.monotonic()
        status = run_one(name)
        outcomes.append((name, status, time.monotonic() - started))
        print()

    print(RULE)
    print("summary")
    for name, status, elapsed in outcomes:
        verdict = "ok" if status == 0 else f"FAILED (exit {status})"
        print(f"  {name:<20} {verdict:<20} {elapsed:>8.1f} s")
    failed = [name for name, status, _ in outcomes if status != 0]
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} benchmarks passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
