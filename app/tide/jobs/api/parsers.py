"""The API's JSON parser: strict about what no job can carry.

Python's ``json`` accepts documents that break later: nesting deep enough to exhaust the
stack of whatever walks it next (a ``RecursionError``, a 500), ``\\u0000`` that
PostgreSQL refuses in ``jsonb`` and text, and lone surrogates (``\\ud800``) that cannot
be encoded as UTF-8 anywhere. They are refused here, at the door, with a 400 that names
the reason and where in the document it is (a JSON-pointer-like path).
"""

from __future__ import annotations

import json
import re
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

# Deeper than any argument list a task needs, far below Python's recursion limit.
MAX_DEPTH = 64


class HostileJSON(ParseError):
    """A body refused by the checks here (``parse_error``, like any malformed JSON)."""


def _path(parts: list[str | int]) -> str:
    return "/" + "/".join(str(part) for part in parts) if parts else "/"


_SUSPECT = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_BAD = re.compile("[\x00\ud800-\udfff]")


def _bad_text(text: str) -> str | None:
    # A surrogate left in a decoded str is a lone one: json pairs valid ones up.
    found = _BAD.search(text)
    if found is None:
        return None
    char = found.group()
    return (
        "a NUL character (\\u0000)" if char == "\x00" else f"a lone surrogate (\\u{ord(char):04x})"
    )


def check(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise ``HostileJSON`` for nesting deeper than ``max_depth``, a NUL or a lone
    surrogate in any key or string. Iterative: the check itself cannot overflow."""
    stack: list[tuple[Any, list[str | int]]] = [(value, [])]
    while stack:
        item, path = stack.pop()
        if len(path) > max_depth:
            raise HostileJSON(
                f"JSON nested deeper than {max_depth} levels at {_path(path[: max_depth + 1])}."
            )
        if isinstance(item, str):
            if (bad := _bad_text(item)) is not None:
                raise HostileJSON(f"JSON string at {_path(path)} contains {bad}.")
        elif isinstance(item, dict):
            for key, child in item.items():
                if (bad := _bad_text(key)) is not None:
                    raise HostileJSON(f"JSON key at {_path([*path, key])!r} contains {bad}.")
                stack.append((child, [*path, key]))
        elif isinstance(item, list):
            stack.extend((child, [*path, index]) for index, child in enumerate(item))


def _depth_guard(text: str, max_depth: int) -> None:
    # Python's decoder recurses once per level: a document 100,000 levels deep raises
    # RecursionError before any check of the parsed value can run. Count brackets
    # outside strings first (linear, no recursion).
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                raise HostileJSON(f"JSON nested deeper than {max_depth} levels.")
        elif char in "]}":
            depth -= 1


class StrictJSONParser(JSONParser):
    """DRF's JSON parser with the checks above; ``NaN`` and ``Infinity`` refused too."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", "utf-8")
        raw = stream.read() if stream is not None else b""
        try:
            text = raw.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            raise HostileJSON(f"The body is not valid {encoding}.") from None
        if text.count("[") + text.count("{") > MAX_DEPTH:  # C-speed: most bodies skip
            _depth_guard(text, MAX_DEPTH)
        try:
            data = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise HostileJSON(f"JSON parse error - {exc}") from None
        # A NUL or a surrogate reaches a decoded string only through a \u escape (raw
        # control characters are refused by the decoder, and UTF-8 has no surrogates): a
        # body without one needs no walk (a 200 KB body of numbers: 60 ms walked, 5 ms not).
        if _SUSPECT.search(text):
            check(data)
        return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON; send a number or null")
