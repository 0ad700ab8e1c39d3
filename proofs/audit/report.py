"""The audit's results as a JSON document and as rows for the terminal table."""

from __future__ import annotations

from .engine import Audit
from .judge import OUTCOMES, UNCHECKED


def totals(audits: list[Audit]) -> dict:
    """Counts over every document and the share checked (HOLDS or WRONG over all statements)."""
    counts = {o: sum(a.counts()[o] for a in audits) for o in OUTCOMES}
    statements = sum(counts.values())
    checked = statements - counts[UNCHECKED]
    return {"statements": statements, **counts, "checked": checked,
            "share_checked": (checked / statements) if statements else None,
            "inputs": sum(len(a.inputs) for a in audits)}


def audit_json(audits: list[Audit], *, version: str = "") -> dict:
    """Every finding of every document, with the totals."""
    return {
        "tool": "attnverify audit",
        "version": version,
        "rule": "a number printed with k decimals holds when |exact - printed| <= 0.5e-k",
        "totals": totals(audits),
        "documents": [{"document": a.document, "counts": a.counts(), "inputs": a.inputs,
                       "findings": [f.to_dict() for f in a.findings]} for a in audits],
    }


def table_rows(audits: list[Audit]) -> list[tuple[str, str, str, str, str]]:
    """(document, line, statement, outcome, finding) for each numeric statement."""
    return [(a.document[:12], str(f.line), f.label, f.outcome, f.summary()) for a in audits for f in a.findings]


def totals_line(audits: list[Audit]) -> str:
    t = totals(audits)
    if not t["statements"]:
        return f"no numeric statements found ({t['inputs']} input values read)"
    return (f"{t['statements']} numeric statements: HOLDS {t['HOLDS']}, WRONG {t['WRONG']}, "
            f"UNCHECKED {t['UNCHECKED']}; checked {t['checked']}/{t['statements']} "
            f"({100 * t['share_checked']:.1f}%); {t['inputs']} input values read")
