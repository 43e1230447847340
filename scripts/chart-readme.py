"""Generate the values table of charts/tide/README.md from the `# --` comments in values.yaml.

A comment line starting with ``# --`` documents the key on the next line (further ``#``
lines continue it). The table sits between the ``<!-- values:start -->`` and
``<!-- values:end -->`` markers of the README; everything else there is written by hand.

    python scripts/chart-readme.py          # rewrite the table
    python scripts/chart-readme.py --check  # exit 1 when the README is out of date
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parent.parent / "charts" / "tide"
START, END = "<!-- values:start -->", "<!-- values:end -->"
KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z0-9_.-]+):(\s|$)")


def documented(values_text: str) -> dict[str, str]:
    """Dotted key path -> description, in file order."""
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in values_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if pending is not None and stripped.startswith("#"):
            pending.append(stripped[1:].strip())
            continue
        if stripped.startswith("-") or not stripped or stripped.startswith("#"):
            # List items (example pools) are values, not keys to document.
            if stripped.startswith("-"):
                pending = None
            continue
        match = KEY.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        if pending is not None:
            docs[".".join(k for _, k in stack)] = " ".join(pending)
            pending = None
    return docs


def lookup(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for part in path.split("."):
        node = node[part]
    return node


def leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        out: list[str] = []
        for key, value in node.items():
            out += leaves(value, f"{prefix}.{key}" if prefix else key)
        return out
    return [prefix]


def type_name(value: Any) -> str:
    return {
        bool: "bool",
        int: "int",
        float: "float",
        str: "string",
        list: "list",
        dict: "object",
        type(None): "null",
    }[type(value)]


def table(values_text: str) -> str:
    values = yaml.safe_load(values_text)
    rows = ["| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for path, description in documented(values_text).items():
        value = lookup(values, path)
        default = json.dumps(value, separators=(",", ":"))
        if len(default) > 60:
            default = "see values.yaml"
        cell = default.replace("|", "\\|")
        text = description.replace("|", "\\|")
        rows.append(f"| `{path}` | {type_name(value)} | `{cell}` | {text} |")
    return "\n".join(rows)


def undocumented(values_text: str) -> list[str]:
    """Leaf keys with no documented key on their path."""
    docs = documented(values_text)
    values = yaml.safe_load(values_text)
    missing = []
    for leaf in leaves(values):
        parts = leaf.split(".")
        if not any(".".join(parts[:i]) in docs for i in range(1, len(parts) + 1)):
            missing.append(leaf)
    return missing


def render(readme: str, values_text: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table(values_text)}\n{END}{tail}"


def main() -> int:
    values_text = (CHART / "values.yaml").read_text()
    readme_path = CHART / "README.md"
    readme = readme_path.read_text()
    fresh = render(readme, values_text)
    if "--check" in sys.argv[1:]:
        if fresh != readme:
            print("charts/tide/README.md is out of date: run scripts/chart-readme.py")
            return 1
        return 0
    readme_path.write_text(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
