"""The verdict rule, Bonferroni across a sweep, and ordering comparisons.

Equality: "theta = theta0" is SUPPORTED when theta0 lies in the ``1 - alpha`` interval, REFUTED
otherwise (with the estimate and the interval as evidence). Across a sweep of ``m`` checks, each
uses ``alpha / m`` (Bonferroni), so the chance of refuting any true claim is at most ``alpha``.

Ordering: "theta_a < theta_b" (or ``>``) is SUPPORTED when the two ``1 - alpha/2`` intervals are
disjoint in the claimed direction, REFUTED when they are disjoint the other way round, and
INCONCLUSIVE when they overlap (the equality rule never needs that third outcome; an ordering can).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._checks import check_alpha, check_choice, check_int, check_real
from .results import Estimate, MCResult, _jsonable, format_number

__all__ = [
    "SUPPORTED",
    "REFUTED",
    "INCONCLUSIVE",
    "DEFAULT_ALPHA",
    "Check",
    "Comparison",
    "check_equal",
    "compare",
    "bonferroni",
]

SUPPORTED = "SUPPORTED"
REFUTED = "REFUTED"
INCONCLUSIVE = "INCONCLUSIVE"
#: Default family error rate.
DEFAULT_ALPHA = 1e-6


def bonferroni(alpha: float, m: int) -> float:
    """Per-test error rate ``alpha / m`` for a family of ``m`` tests."""
    return check_alpha(alpha) / check_int("m", m, minimum=1)


@dataclass(frozen=True)
class Check:
    """Verdict on ``theta = theta0`` from one estimate.

    Attributes
    ----------
    claim : str
        The statement checked, e.g. ``"Var(q·k) = d_k = 64"``.
    theta0 : float
        The claimed value.
    estimate : Estimate
        Evidence, with its interval at the per-test ``alpha``.
    verdict : str
        ``"SUPPORTED"`` or ``"REFUTED"``.
    family_alpha : float
        Error rate of the whole family (sweep).
    tests : int
        Family size m (the estimate's interval is at ``family_alpha / m``).
    source : str
        Where the claim comes from (e.g. ``"Vaswani et al. 2017, footnote 4"``), optional.
    """

    claim: str
    theta0: float
    estimate: Estimate
    verdict: str
    family_alpha: float
    tests: int = 1
    source: str = ""
    note: str = ""

    @property
    def alpha(self) -> float:
        return self.estimate.alpha

    @property
    def passed(self) -> bool:
        return self.verdict == SUPPORTED

    def to_dict(self) -> dict:
        return _jsonable({
            "claim": self.claim, "theta0": self.theta0, "verdict": self.verdict,
            "alpha": self.alpha, "family_alpha": self.family_alpha, "tests": self.tests,
            "source": self.source, "note": self.note, "estimate": self.estimate.to_dict(),
        })

    def summary(self) -> str:
        e = self.estimate
        where = "inside" if self.verdict == SUPPORTED else "outside"
        fam = f", Bonferroni over {self.tests} from {self.family_alpha:g}" if self.tests > 1 else ""
        return (
            f"{self.verdict}: {self.claim} — {format_number(self.theta0)} {where} "
            f"[{format_number(e.low)}, {format_number(e.high)}], estimate {format_number(e.estimate)} "
            f"(alpha={e.alpha:.3g}{fam}; {e.method}; n={e.samples:,}, seed={e.seed}"
            f"{' key=' + str(list(e.spawn_key)) if e.spawn_key else ''})"
            f"{' INCOMPLETE' if e.incomplete else ''}"
            f"{' [' + self.note + ']' if self.note else ''}"
        )

    def __str__(self) -> str:
        return self.summary()


def check_equal(
    evidence: MCResult | Estimate,
    theta0: float,
    *,
    output: str | None = None,
    statistic: str = "variance",
    alpha: float = DEFAULT_ALPHA,
    tests: int = 1,
    claim: str | None = None,
    source: str = "",
    note: str = "",
) -> Check:
    """Apply the verdict rule to ``theta = theta0``.

    Parameters
    ----------
    evidence : MCResult or Estimate
        A run (its ``statistic`` of ``output`` is re-estimated at ``alpha / tests``) or a ready
        Estimate (used as is: its own alpha is the per-test rate, ``tests`` is only recorded).
    theta0 : float
        Claimed value.
    statistic : {"mean", "variance", "fraction", "quantile"}
    alpha : float
        Family error rate, in (0, 1).
    tests : int
        Family size for Bonferroni.
    """
    theta0 = check_real("theta0", theta0)
    alpha = check_alpha(alpha)
    tests = check_int("tests", tests, minimum=1)
    if isinstance(evidence, MCResult):
        est = evidence.estimate(output or evidence.target[0], statistic, alpha / tests)
    elif isinstance(evidence, Estimate):
        est = evidence
    else:
        raise TypeError(f"evidence must be an MCResult or an Estimate, got {type(evidence).__name__}")
    if not (math.isfinite(est.low) and math.isfinite(est.high)) and not est.contains(theta0):
        raise ValueError(f"the interval of {est.quantity} is undefined ({est.low}, {est.high}); too few samples ({est.samples})")
    verdict = SUPPORTED if est.contains(theta0) else REFUTED
    claim = claim or f"{est.quantity} = {format_number(theta0)}"
    return Check(claim, theta0, est, verdict, alpha, tests, source, note)


@dataclass(frozen=True)
class Comparison:
    """Verdict on an ordering ``a < b`` or ``a > b`` between two estimates.

    The intervals of ``a`` and ``b`` are each at ``alpha / 2`` of the comparison's share of the
    family error rate, so the chance of a wrong SUPPORTED or REFUTED is at most that share.
    """

    claim: str
    relation: str
    a: Estimate
    b: Estimate
    verdict: str
    family_alpha: float
    tests: int = 1
    source: str = ""

    def to_dict(self) -> dict:
        return _jsonable({
            "claim": self.claim, "relation": self.relation, "verdict": self.verdict,
            "family_alpha": self.family_alpha, "tests": self.tests, "source": self.source,
            "a": self.a.to_dict(), "b": self.b.to_dict(),
        })

    def evidence(self) -> str:
        """The numbers behind the verdict, without the claim."""
        a, b = self.a, self.b
        return (
            f"{a.quantity}: {format_number(a.estimate)} [{format_number(a.low)}, {format_number(a.high)}] "
            f"{self.relation}? {format_number(b.estimate)} [{format_number(b.low)}, {format_number(b.high)}] "
            f"(intervals at alpha={a.alpha:.3g} each, {a.method}; n={a.samples:,} and {b.samples:,})"
        )

    def summary(self) -> str:
        return f"{self.verdict}: {self.claim} — {self.evidence()}"

    def __str__(self) -> str:
        return self.summary()


def compare(
    a: MCResult,
    b: MCResult,
    relation: str,
    *,
    output: str,
    output_b: str | None = None,
    statistic: str = "mean",
    alpha: float = DEFAULT_ALPHA,
    tests: int = 1,
    claim: str = "",
    source: str = "",
) -> Comparison:
    """Verdict on ``stat(a[output]) <relation> stat(b[output_b])``.

    ``a`` and ``b`` may be the same run (two outputs of the same draws) or two runs: the rule
    needs no independence, only that each interval holds. ``relation`` is ``"<"`` or ``">"``.
    Each interval is at ``alpha / (2 tests)``.
    """
    relation = check_choice("relation", relation, ("<", ">"))
    alpha = check_alpha(alpha)
    tests = check_int("tests", tests, minimum=1)
    per = alpha / (2 * tests)
    ea = a.estimate(output, statistic, per)
    eb = b.estimate(output_b or output, statistic, per)
    lower, upper = (ea, eb) if relation == "<" else (eb, ea)
    if lower.high < upper.low:
        verdict = SUPPORTED
    elif upper.high < lower.low:
        verdict = REFUTED
    else:
        verdict = INCONCLUSIVE
    claim = claim or f"{ea.quantity} ({a.params}) {relation} ({b.params})"
    return Comparison(claim, relation, ea, eb, verdict, alpha, tests, source)
