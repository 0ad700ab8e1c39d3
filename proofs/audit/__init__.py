"""Audit the worked numbers of any Markdown document with LaTeX math.

The engine reads the document (:mod:`~proofs.audit.source`: encoding repaired, ``>`` quotes
and code blocks handled), parses each ``=`` chain (:mod:`~proofs.audit.parse`: bmatrix,
pmatrix, inline ``[1, 0, 2]`` vectors, products, transposes, ``Concat``, dot products,
``\\frac``, ``\\sqrt``, ``e^{...}``, softmax), recomputes it exactly
(:mod:`~proofs.audit.evaluate`: SymPy rationals from the decimals as written) and judges every
printed number at the precision the document prints (:mod:`~proofs.audit.judge`):

* HOLDS: the exact value rounds to the printed one (or the document's own rounding of an
  earlier value, carried correctly, explains it);
* WRONG: with the correct value, the largest deviation, and whether the error is *new* in
  this step or *carried* from an earlier WRONG value;
* UNCHECKED: with the reason (a name with no value, a malformed matrix, a formula over
  symbols).

Public API
----------
audit_file(path) -> Audit         audit one file
audit_text(text, name) -> Audit   audit a string (tests, other tools)
annotated_text(doc, audit)        the document with wrong values marked and corrected
audit_json(audits), totals(audits)
"""

from __future__ import annotations

from pathlib import Path

from .annotate import annotated_text
from .engine import Audit, Engine, audit_document
from .judge import HOLDS, OUTCOMES, UNCHECKED, WRONG, Finding
from .report import audit_json, table_rows, totals, totals_line
from .source import Document


def audit_file(path: str | Path) -> Audit:
    """Audit the document at ``path`` (UTF-8; Latin-1 when it is not)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FILE: expected a readable text file; {str(path)!r} is not a file")
    return audit_document(Document.read(path))


def audit_text(text: str, name: str = "<text>") -> Audit:
    """Audit a document given as a string."""
    return audit_document(Document.from_text(text, name))


__all__ = ["Audit", "Document", "Engine", "Finding", "HOLDS", "WRONG", "UNCHECKED", "OUTCOMES", "audit_file",
           "audit_text", "audit_document", "annotated_text", "audit_json", "table_rows", "totals", "totals_line"]
