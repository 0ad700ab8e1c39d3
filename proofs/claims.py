"""The Claim model: a statement about attention, its source, and checks that compute a verdict.

A :class:`Claim` holds one statement (LaTeX), where it comes from (a seed file and the
document's own label), the assumptions it is checked under, and one or more checks. A
check is a function that *computes* a :class:`CheckOutcome` when it runs: a verdict plus
the evidence for it. Running a claim runs every check, times them, catches crashes, and
combines the outcomes into one :class:`ClaimResult`.

Verdicts:

========== ============================================== =======================================
verdict    meaning                                        evidence it must carry
========== ============================================== =======================================
PROVED     exact symbolic proof under stated assumptions  the derivation steps, each checked
REFUTED    the statement is false                         a counterexample, or estimate with CI
CORRECTED  false as written, a nearby statement is proved both statements, what differs, proof
SUPPORTED  statistical evidence at a stated error rate    estimate, CI, samples, seed, alpha
INCONCLUS. evidence too weak to decide either way         the interval, and what would settle it
INFORMAL   not a mathematical statement                   why, and what proxy was checked if any
========== ============================================== =======================================

How verdicts are assigned (a referee's rules; every check in the catalogue follows them):

(a) A valid but loose bound is not false: O(h n d^2) for a cost of 8nd^2 - 4nd is an upper bound,
    only a poor one. A big-O is judged by limits, never by one instance.
(b) Modal and quantifier words (necessary, only, always, every, in some) are read literally and
    checked: a family of alternatives that also works refutes "necessary"; one counterexample
    refutes "every"; one instance proves "in some" or "may".
(c) Every correction we propose (a ``corrected_statement``, a "what is true instead" in the
    evidence) is itself checked by code before it is printed; what no code checked is not said.
(d) Every number in evidence comes from an exact computation (rational, symbolic, or a
    deterministic float64 / mpmath computation printed to fewer digits than its rounding error
    could change) or carries its interval, rounded outwards; a random estimate never appears bare.
(e) The same kind of statement gets the same verdict in every document: a precise false
    sub-claim inside an otherwise informal statement makes it CORRECTED wherever it occurs; a
    "special case of" identity that is checked exactly is PROVED wherever it occurs; "the
    document's code computes X", checked by running it on finitely many inputs against a
    high-precision reference, is SUPPORTED wherever it occurs (its evidence states the inputs,
    the reference, the tolerance and what a pass can miss), never PROVED, and REFUTED when it
    crashes or disagrees.
(f) PROVED means under the document's own assumptions (its statement and its proof). Any
    assumption or reading we add is printed in the claim's assumptions, marked "added:".
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

__all__ = [
    "Verdict",
    "Method",
    "Source",
    "Evidence",
    "CheckOutcome",
    "Claim",
    "ClaimResult",
    "combine_verdicts",
]


class Verdict(str, Enum):
    PROVED = "PROVED"
    REFUTED = "REFUTED"
    CORRECTED = "CORRECTED"
    SUPPORTED = "SUPPORTED"
    INCONCLUSIVE = "INCONCLUSIVE"
    INFORMAL = "INFORMAL"


class Method(str, Enum):
    SYMBOLIC = "symbolic"
    STATISTICAL = "statistical"
    NUMERIC = "numeric"
    INFORMAL = "informal"


@dataclass(frozen=True)
class Source:
    """Where a claim comes from: a seed file name and the document's own label."""

    document: str  # e.g. "003_ea119736e090508e.txt"
    label: str  # e.g. "Teorema 6", or "Teorema 6 (line 519)" when the document repeats a label
    line: int | None = None  # 1-based line of the label in the document

    def __str__(self) -> str:
        return f"{self.document}, {self.label}"


@dataclass
class Evidence:
    """One piece of evidence: a one-line summary, structured data, optional LaTeX and figures."""

    kind: str  # "derivation", "counterexample", "statistic", "numeric", "note"
    summary: str
    data: dict[str, Any] = field(default_factory=dict)
    latex: str | None = None
    figures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "summary": self.summary, "data": _jsonable(self.data),
                "latex": self.latex, "figures": list(self.figures)}


@dataclass
class CheckOutcome:
    """What one check computed. ``corrected_statement`` is required for CORRECTED."""

    verdict: Verdict
    method: Method
    evidence: list[Evidence]
    corrected_statement: str | None = None

    def __post_init__(self) -> None:
        self.verdict, self.method = Verdict(self.verdict), Method(self.method)
        if not self.evidence:
            raise ValueError(f"a {self.verdict.value} outcome must carry evidence, got none")
        if self.verdict is Verdict.CORRECTED and not self.corrected_statement:
            raise ValueError("a CORRECTED outcome must state the corrected statement")


Check = Callable[[], CheckOutcome]


@dataclass
class Claim:
    """A checkable statement with its source, assumptions and checks."""

    id: str
    title: str
    source: Source
    statement: str  # LaTeX, as the document means it (translated), not as we wish it were
    checks: list[Check]
    assumptions: list[str] = field(default_factory=list)
    original: str | None = None  # the document's own words, for the report

    def run(self) -> "ClaimResult":
        """Run every check; a crash is recorded as an error, never as a verdict."""
        start = time.perf_counter()
        outcomes: list[CheckOutcome] = []
        try:
            if not self.checks:
                raise RuntimeError(f"claim {self.id} has no check")
            for check in self.checks:
                outcome = check()
                if not isinstance(outcome, CheckOutcome):
                    raise TypeError(f"check {check!r} returned {type(outcome).__name__}, not CheckOutcome")
                outcomes.append(outcome)
            verdict = combine_verdicts([o.verdict for o in outcomes])
            error = None
        except Exception:  # a crashed check is reported, and the run goes on to the next claim
            verdict, error = None, traceback.format_exc()
        return ClaimResult(self, verdict, outcomes, time.perf_counter() - start, error)


def combine_verdicts(verdicts: list[Verdict]) -> Verdict:
    """One verdict from several checks of one claim.

    A refutation or correction wins (a counterexample outweighs any support); then an exact
    proof; then statistical support; then INCONCLUSIVE (a check that could not decide adds
    nothing to a proof or to support, and is never read as support); INFORMAL only when nothing
    mathematical was checked. A proof together with a refutation means a defect in a check: raise.
    """
    found = set(verdicts)
    if not found:
        raise ValueError("no verdicts to combine")
    if Verdict.PROVED in found and Verdict.REFUTED in found:
        raise RuntimeError("checks disagree: one PROVED the statement and another REFUTED it")
    for verdict in (Verdict.REFUTED, Verdict.CORRECTED, Verdict.PROVED, Verdict.SUPPORTED, Verdict.INCONCLUSIVE,
                    Verdict.INFORMAL):
        if verdict in found:
            return verdict
    raise AssertionError("unreachable")


@dataclass
class ClaimResult:
    """The outcome of running one claim: verdict (None if a check crashed), evidence, time."""

    claim: Claim
    verdict: Verdict | None
    outcomes: list[CheckOutcome]
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def methods(self) -> list[str]:
        return sorted({o.method.value for o in self.outcomes})

    @property
    def summary(self) -> str:
        """One line of evidence for the table."""
        if self.error:
            return "check crashed: " + self.error.strip().splitlines()[-1]
        deciding = [o for o in self.outcomes if o.verdict is self.verdict]
        return deciding[0].evidence[0].summary if deciding else ""

    def to_dict(self) -> dict[str, Any]:
        c = self.claim
        return {
            "id": c.id,
            "title": c.title,
            "source": {"document": c.source.document, "label": c.source.label, "line": c.source.line},
            "statement": c.statement,
            "assumptions": list(c.assumptions),
            "verdict": None if self.verdict is None else self.verdict.value,
            "methods": self.methods,
            "seconds": self.seconds,
            "error": self.error,
            "checks": [
                {
                    "verdict": o.verdict.value,
                    "method": o.method.value,
                    "corrected_statement": o.corrected_statement,
                    "evidence": [e.to_dict() for e in o.evidence],
                }
                for o in self.outcomes
            ],
        }


def _jsonable(value: Any) -> Any:
    """Plain JSON types from numbers, arrays, SymPy objects and dataclass results."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)
