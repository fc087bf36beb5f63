"""The README is the front door: what it shows must be what the code does."""

from __future__ import annotations

import re
from pathlib import Path

from fsm import DEFAULT_SPEC, State
from fsm.mermaid import to_mermaid

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def test_the_diagram_is_the_table_the_links_run() -> None:
    block = re.search(r"```mermaid\n(.*?)```", README, re.S)
    assert block is not None, "README lost its Mermaid diagram"
    assert block.group(1) == to_mermaid(DEFAULT_SPEC), "regenerate it with `tether diagram`"


def test_the_lifecycle_table_names_every_state() -> None:
    for state in State:
        assert f"| `{state.value}` |" in README, state


def test_the_two_commands_are_there() -> None:
    assert "make demo" in README and "make test" in README
