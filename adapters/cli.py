"""The ``tether`` command: ``demo``, ``diagram``, ``proxy``, ``verify``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fsm.errors import SpecError
from fsm.mermaid import to_mermaid
from fsm.spec import DEFAULT_SPEC, Spec


def load_spec(target: str | None) -> Spec:
    """``None`` for the default spec, or ``module:attribute`` naming a user's Spec."""
    if target is None:
        return DEFAULT_SPEC
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise SystemExit(f"tether diagram: expected module:attribute, got {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SystemExit(f"tether diagram: cannot import {module_name!r}: {error}") from None
    spec = getattr(module, attribute, None)
    if not isinstance(spec, Spec):
        raise SystemExit(
            f"tether diagram: {target} is {type(spec).__name__}, not a fsm.Spec "
            f"(build one with DEFAULT_SPEC.derive(...))"
        )
    return spec


def _diagram(args: argparse.Namespace) -> int:
    try:
        sys.stdout.write(to_mermaid(load_spec(args.spec)))
    except SpecError as error:
        print(f"tether diagram: {error}", file=sys.stderr)
        return 2
    return 0


def _verify(_: argparse.Namespace) -> int:
    print("tether verify: the spin model is not built yet; nothing was checked.", file=sys.stderr)
    return 1


def _proxy(args: argparse.Namespace) -> int:
    from adapters.proxy import main as proxy_main

    return proxy_main(args.rest)


def _demo(args: argparse.Namespace) -> int:
    from adapters.demo import main as demo_main

    return demo_main(args.rest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tether", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    diagram = commands.add_parser("diagram", help="print a lifecycle as Mermaid stateDiagram-v2")
    diagram.add_argument("spec", nargs="?", help="module:attribute of a custom Spec")
    diagram.set_defaults(run=_diagram)
    commands.add_parser("verify", help="model-check models/ with spin").set_defaults(run=_verify)
    for name, run, text in (("proxy", _proxy, "TCP fault proxy"),
                            ("demo", _demo, "the studio-restart demo")):
        sub = commands.add_parser(name, help=text, add_help=False)
        sub.add_argument("rest", nargs=argparse.REMAINDER)
        sub.set_defaults(run=run)
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
