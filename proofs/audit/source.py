"""Read a Markdown document for the audit: repaired text, quote markers off, code skipped,
and every math segment (``$...$`` or ``$$...$$``) with where it sits.

A :class:`Segment` keeps the raw line it came from and its character span in that line, so
:mod:`proofs.audit.annotate` can rewrite a printed value in place. Segments inside fenced
code blocks are not read: code computes values, it does not print them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..catalogue._doc import repair

_QUOTE = re.compile(r"^(\s*>\s?)+")
_FENCE = re.compile(r"^\s*(```|~~~)")
# $$...$$ first, then $...$ (not \$); a segment never crosses a line except $$ blocks.
_MATH = re.compile(r"(?<!\\)\$\$(.+?)(?<!\\)\$\$|(?<![\\$])\$(?!\$)(.+?)(?<!\\)\$", re.S)


@dataclass(frozen=True)
class Segment:
    """One math segment: ``text`` (repaired LaTeX), ``line`` (1-based, where it starts),
    ``start``/``end`` (character span of ``text`` in ``lines[line - 1]`` of the document as
    read; None when the segment spans lines)."""

    text: str
    line: int
    start: int | None
    end: int | None


@dataclass
class Document:
    """A document as read: ``name``, its ``lines`` (as read, encoding damage and all), the
    repaired, unquoted ``content`` lines, and which lines are code."""

    name: str
    lines: list[str]
    content: list[str]
    code: list[bool]

    @classmethod
    def read(cls, path: str | Path) -> "Document":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            text = path.read_text(encoding="latin-1")
        return cls.from_text(text, path.name)

    @classmethod
    def from_text(cls, text: str, name: str = "<text>") -> "Document":
        lines = text.splitlines()
        content, code, fenced = [], [], False
        for line in lines:
            body = _QUOTE.sub("", line)
            if _FENCE.match(body):
                fenced = not fenced
                content.append(body)
                code.append(True)
                continue
            content.append(body)
            code.append(fenced)
        return cls(name, lines, content, code)

    def segments(self) -> list[Segment]:
        """Every math segment outside code, in document order."""
        out: list[Segment] = []
        i = 0
        while i < len(self.lines):
            if self.code[i]:
                i += 1
                continue
            line = self.lines[i]
            prefix = len(line) - len(_QUOTE.sub("", line))
            body = line[prefix:]
            # a $$ block opened on this line and closed on a later one
            if body.count("$$") % 2 == 1:
                j, block = i + 1, [body]
                while j < len(self.lines) and "$$" not in self.lines[j]:
                    block.append(self.content[j])
                    j += 1
                if j < len(self.lines):
                    block.append(self.content[j])
                    joined = " ".join(block)
                    for m in _MATH.finditer(joined):
                        out.append(Segment(repair(m.group(1) or m.group(2)), i + 1, None, None))
                    i = j + 1
                    continue
            for m in _MATH.finditer(body):
                g = 1 if m.group(1) is not None else 2
                out.append(Segment(repair(m.group(g)), i + 1, prefix + m.start(g), prefix + m.end(g)))
            i += 1
        return out

    def text_near(self, line: int) -> str:
        """The repaired prose of line ``line`` (1-based), for findings and notes."""
        return repair(self.content[line - 1]) if 1 <= line <= len(self.content) else ""
