"""Write a copy of an audited document with each WRONG value marked and corrected.

In the copy, every wrong printed number becomes ``{\\color{red}{printed}\\to correct}`` inside
its own formula (KaTeX and MathJax render ``\\color``), and a line starting ``**attnverify
audit:**`` follows the statement with the finding in words (inside the same ``>`` quote when
the statement was quoted). Everything else is copied as read, encoding damage included.
"""

from __future__ import annotations

import re

from .engine import Audit
from .judge import WRONG, Finding
from .source import Document

_QUOTE = re.compile(r"^(\s*>\s?)+")
MARK = "**attnverify audit:**"


def _marked_entry(entry: dict) -> str:
    if entry["ok"]:
        return entry["printed"]
    return f"{{\\color{{red}}{{{entry['printed']}}}\\to {entry['correct']}}}"


def _replace_literal(raw: str, finding: Finding) -> str:
    """The printed literal ``raw`` (a matrix or a number) with its wrong entries marked."""
    if len(finding.entries) == 1 and "begin" not in raw:
        return _marked_entry(finding.entries[0])
    env = re.match(r"\\begin\{([a-zA-Z]*)\}(\{[lcr|]*\})?", raw)
    name = env.group(1) if env else "bmatrix"
    header = env.group(0) if env else "\\begin{bmatrix}"
    body = raw[env.end():raw.rfind("\\end")] if env else raw
    rows = [r for r in re.split(r"\\\\", body) if r.strip()]
    cols = len(rows[0].split("&")) if rows else 1
    marked = [_marked_entry(e) for e in finding.entries]
    lines = [" & ".join(marked[r * cols:(r + 1) * cols]) for r in range(len(marked) // cols)]
    return f"{header} " + r" \\ ".join(lines) + f" \\end{{{name}}}"


def annotated_text(doc: Document, audit: Audit) -> str:
    """The document's text with every WRONG finding marked in place and explained below it."""
    by_line: dict[int, list[Finding]] = {}
    for f in audit.findings:
        if f.outcome == WRONG:
            by_line.setdefault(f.line, []).append(f)
    out = []
    for number, line in enumerate(doc.lines, start=1):
        findings = by_line.get(number, [])
        edits = sorted((f for f in findings if f.span and f.entries), key=lambda f: f.span[0], reverse=True)
        for f in edits:
            a, b = f.span
            line = line[:a] + _replace_literal(line[a:b], f) + line[b:]
        out.append(line)
        prefix = _QUOTE.match(line).group(0) if _QUOTE.match(line) else ""
        for f in findings:
            out.append(f"{prefix}")
            out.append(f"{prefix}{MARK} {f.label} (line {number}) is WRONG: {f.summary()}")
    return "\n".join(out) + "\n"
