#!/usr/bin/env python3
"""Draws a GetDependencyGraph response as a Graphviz DOT graph.

Reads the response as JSON on stdin (grpcurl's output, with proto field names; the
lowerCamelCase names of other JSON encoders work too) and writes DOT to stdout::

    grpcurl -plaintext -d '{"org": "acme-corp", "module": "billing", "version": "v0.1.0"}' \\
        127.0.0.1:50051 spoke.v1.ModuleService/GetDependencyGraph \\
        | python3 scripts/dependency_graph_dot.py | dot -Tsvg > billing.svg

Public versions are plain boxes, private ones dashed, deleted ones grey and marked so.
Standard library only.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def field(message: dict[str, Any], name: str) -> Any:
    """A field by its proto name or its lowerCamelCase JSON name."""
    parts = name.split("_")
    camel = parts[0] + "".join(p.title() for p in parts[1:])
    return message.get(name, message.get(camel))


def to_dot(response: dict[str, Any]) -> str:
    lines = [
        "digraph dependencies {",
        "  rankdir=LR;",
        '  node [shape=box, fontname="Helvetica"];',
    ]
    for node in response.get("nodes") or []:
        version = node.get("version") or {}
        attributes: list[str] = []
        label = node["id"]
        if version.get("deleted"):
            label += "\\n(deleted)"
            attributes += ["color=grey", "fontcolor=grey"]
        if not field(node, "is_public"):
            attributes.append("style=dashed")
        attributes.insert(0, f"label={quoted(label)}")
        lines.append(f"  {quoted(node['id'])} [{', '.join(attributes)}];")
    for edge in response.get("edges") or []:
        lines.append(f"  {quoted(edge['dependent'])} -> {quoted(edge['dependency'])};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> int:
    try:
        response = json.load(sys.stdin)
    except json.JSONDecodeError as exc:
        print(f"dependency_graph_dot: stdin is not JSON: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(to_dot(response))
    return 0


if __name__ == "__main__":
    sys.exit(main())
