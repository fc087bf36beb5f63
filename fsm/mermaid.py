"""Render a spec as a Mermaid ``stateDiagram-v2``, straight from the table.

Written from :class:`fsm.spec.Spec` rather than ``transitions``' diagram extensions, so
the picture is exactly the table the links run: internal transitions (``dest: None``)
are left out, conditional rows are labelled ``Trigger [condition]``, and each state is
annotated with its tags.
"""

from __future__ import annotations

from collections import defaultdict

from fsm.spec import Spec, _listify

__all__ = ["to_mermaid"]


def _label(row: dict[str, object]) -> str:
    guards = [str(c) for c in _listify(row.get("conditions"))]
    guards += [f"not {c}" for c in _listify(row.get("unless"))]
    return f"{row['trigger']} [{' and '.join(guards)}]" if guards else str(row["trigger"])


def to_mermaid(spec: Spec) -> str:
    """The Mermaid source for ``spec``: one line per external transition."""
    lines = ["stateDiagram-v2", f"    [*] --> {spec.initial}"]
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for row in spec.transitions:
        if row["dest"] is None:
            continue
        for source in _listify(row["source"]):
            label = _label(row)
            if label not in edges[source, row["dest"]]:
                edges[source, row["dest"]].append(label)
    for (source, dest), labels in edges.items():
        lines.append(f"    {source} --> {dest}: {', '.join(labels)}")
    for state in spec.state_names:
        tags = spec.tags[state]
        if tags.final:
            lines.append(f"    {state} --> [*]")
        lines.append(f"    note right of {state}: {', '.join(tags.names()) or 'no tags'}")
    return "\n".join(lines) + "\n"
