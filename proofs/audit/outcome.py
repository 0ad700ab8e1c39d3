"""A worked example's claim computed by the audit engine: the bridge to the catalogue.

:func:`example_outcome` audits a document and turns the findings on a range of lines into a
:class:`proofs.claims.CheckOutcome`, with the same evidence keys as
:meth:`proofs.catalogue._worked.WorkedExample.check` (``wrong``, ``quantities_wrong``,
``arithmetic_slips``, ``carried_over``, ``rule``). The verdict:

* REFUTED when a printed number in the range is WRONG (the counterexample lists each);
* PROVED when every numeric statement in the range HOLDS and none is UNCHECKED;
* INCONCLUSIVE when nothing is WRONG but some statement is UNCHECKED (never PROVED with an
  unchecked part), with the reasons.

``tests/proofs/test_audit_outcome.py`` checks that these verdicts and their lists of wrong
quantities agree with the catalogue's hand-written worked examples.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..catalogue._worked import wrong_in_words
from ..claims import CheckOutcome, Evidence, Method, Verdict
from .engine import Audit, audit_document
from .judge import HOLDS, UNCHECKED, WRONG
from .source import Document

RULE = "|exact - printed| <= 0.5e-(decimals printed); exact rationals, exp and sqrt at 50 digits"


@lru_cache(maxsize=None)
def _audit(path: str) -> Audit:
    return audit_document(Document.read(path))


def example_outcome(path: str | Path, first_line: int, last_line: int, title: str) -> CheckOutcome:
    """The verdict on every numeric statement of ``path`` on lines ``first_line..last_line``."""
    if first_line > last_line:
        raise ValueError(f"first_line must be <= last_line, got {first_line} > {last_line}")
    findings = [f for f in _audit(str(path)).findings if first_line <= f.line <= last_line]
    if not findings:
        raise ValueError(f"no numeric statement on lines {first_line}-{last_line} of {Path(path).name}")
    wrong = [f for f in findings if f.outcome == WRONG]
    unchecked = [f for f in findings if f.outcome == UNCHECKED]
    entries = sum(len(f.entries) for f in findings)
    if wrong:
        # a quantity the document restates counts once; it is a slip if any statement of it is new
        names = list(dict.fromkeys(f.name or f.label for f in wrong))
        slips = list(dict.fromkeys(f.name or f.label for f in wrong
                                   if any(e.get("origin") == "new" for e in f.entries) or not f.entries))
        first = wrong[0]
        # each quantity counted once, where it is first printed; restatements are listed apart
        rows = [{"quantity": f.name or f.label, "ok": e["ok"]} for f in findings if not f.restated for e in f.entries]
        summary = f"{title}: {wrong_in_words(rows)}; e.g. {first.name or first.label} should be {first.correct}"
        restated = [f for f in wrong if f.restated]
        if restated:
            summary += ("; restated later with the same wrong values" if all(f.origin == "carried" for f in restated)
                        else "; restated later, some with new errors") + ": " + \
                ", ".join(f"{f.name} (line {f.line})" for f in restated)
        data = {"wrong": [f.to_dict() for f in wrong], "quantities_wrong": names, "arithmetic_slips": slips,
                "carried_over": [n for n in names if n not in slips], "rule": RULE,
                "unchecked": [f.to_dict() for f in unchecked]}
        return CheckOutcome(Verdict.REFUTED, Method.SYMBOLIC, [Evidence("counterexample", summary, data)])
    if unchecked:
        reasons = "; ".join(f"line {f.line} {f.label}: {f.reason}" for f in unchecked)
        return CheckOutcome(Verdict.INCONCLUSIVE, Method.SYMBOLIC, [Evidence(
            "note", f"{title}: nothing wrong among the numbers checked, but {len(unchecked)} statement(s) "
                    f"could not be checked: {reasons}",
            {"unchecked": [f.to_dict() for f in unchecked], "rule": RULE})])
    assert all(f.outcome == HOLDS for f in findings)
    return CheckOutcome(Verdict.PROVED, Method.SYMBOLIC, [Evidence(
        "derivation", f"{title}: all {entries} printed numbers recomputed exactly agree to the printed rounding",
        {"entries": [f.to_dict() for f in findings], "rule": RULE})])
