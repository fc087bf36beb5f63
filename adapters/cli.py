"""The ``tether`` command: ``demo``, ``diagram``, ``hub``, ``proxy``, ``verify``."""

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


def _verify(argv: Sequence[str]) -> int:
    from models.verify import main as verify_main

    return verify_main(argv)


def _proxy(argv: Sequence[str]) -> int:
    from adapters.proxy import main as proxy_main

    return proxy_main(argv)


def _demo(argv: Sequence[str]) -> int:
    from adapters.demo import main as demo_main

    return demo_main(argv)


#: Subcommands with a parser of their own: they get the rest of the command line as is.
_DELEGATED = {"proxy": _proxy, "demo": _demo, "verify": _verify}


def _hub(args: argparse.Namespace) -> int:
    from adapters.hub import run_command

    return run_command(args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _DELEGATED:
        return _DELEGATED[argv[0]](argv[1:])
    parser = argparse.ArgumentParser(prog="tether", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    diagram = commands.add_parser("diagram", help="print a lifecycle as Mermaid stateDiagram-v2")
    diagram.add_argument("spec", nargs="?", help="module:attribute of a custom Spec")
    diagram.set_defaults(run=_diagram)
    commands.add_parser("verify", help="model-check a spec and the session protocol with spin "
                                       "(tether verify --help)")
    commands.add_parser("proxy", help="TCP fault proxy (tether proxy --help)")
    commands.add_parser("demo", help="the studio-restart demo")
    hub = commands.add_parser("hub", help="the reference session-mode server")
    hub.add_argument("--host", default="127.0.0.1")
    hub.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    stores = hub.add_mutually_exclusive_group()
    stores.add_argument("--store", metavar="PATH.sqlite", default=None,
                        help="durable SQLite session store (default: in memory)")
    stores.add_argument("--redis", metavar="redis://HOST:PORT/DB", default=None,
                        help="sessions in Redis, shared by every hub started with the same "
                             "URL: a cluster (needs tether[redis]; see README, many hubs)")
    hub.add_argument("--redis-prefix", default="tether", metavar="PREFIX",
                     help="key prefix in Redis (one cluster per prefix)")
    hub.add_argument("--echo", action="store_true", help="send every message back to its session")
    hub.add_argument("--expire-after", type=float, default=300.0, metavar="SECONDS",
                     help="forget sessions stale this long")
    hub.add_argument("--token-file", metavar="PATH", default=None,
                     help="authenticate clients: lines 'PRINCIPAL TOKEN'; clients send "
                          "'Authorization: Bearer TOKEN' (see README, trust model)")
    hub.add_argument("--log-level", default="WARNING")
    hub.set_defaults(run=_hub)
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
