"""The fenced code blocks of a Markdown page, with their language and where they start."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    language: str
    text: str
    line: int

    def __str__(self) -> str:
        return f"{self.language} block at line {self.line}"


def blocks(path: Path, language: str | None = None) -> list[Block]:
    source = path.read_text()
    found = [
        Block(m.group(1), m.group(2), source.count("\n", 0, m.start()) + 1)
        for m in FENCE.finditer(source)
    ]
    return [b for b in found if language is None or b.language == language]
