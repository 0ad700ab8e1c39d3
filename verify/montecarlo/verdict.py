"""The verdict rule, Bonferroni across a sweep, and ordering comparisons.

Equality, ``theta = theta0`` with the ``1 - alpha`` interval ``[low, high]`` and an equivalence
margin ``delta`` (``margin * |theta0|``, or ``abs_margin`` when given):

* REFUTED when theta0 lies outside ``[low, high]``;
* SUPPORTED when theta0 lies inside *and* the interval lies strictly inside
  ``(theta0 - delta, theta0 + delta)``, i.e. the same interval would have refuted both
  ``theta = theta0 - delta`` and ``theta = theta0 + delta``: the data can tell theta0 from a
  deviation of the stated size, so absence of a refutation is evidence;
* INCONCLUSIVE otherwise, with the reason (interval wider than the margin, undefined interval,
  too few batches ...) and, where the interval is finite, roughly how many samples would settle
  it: a full width below ``delta`` forces SUPPORTED or REFUTED, and widths shrink as
  ``1/sqrt(n)``, so ``n * (width / delta)^2`` samples would do if the spread stays as measured.

An interval that cannot vouch for its own tail at the alpha asked for is undefined (NaN), so the
check is INCONCLUSIVE with that reason, never SUPPORTED or REFUTED: a variance interval of a
heavy-tailed quantity (an infinite eighth moment, e.g. q·k with Student t5 components) with too
few samples for its alpha (:func:`verify.montecarlo.stats.tail_limit`; measured by
benchmarks/bench_calibration.py), or a fourth-moment interval below 1000 samples.

The default margin is ``DEFAULT_MARGIN = 0.05`` (5% of the claimed value). It is far below the
deviations the documents' claims turn on (``d_k (1 + 2/D)`` against ``d_k`` is 12.5% at D = 16;
a non-zero component mean multiplies Var(q·k) by several), and budgets of 1e5 to 1e6 samples
reach it at alpha = 1e-6 for the variance of q·k (relative half-width about
``5.3 sqrt((kurtosis - 1) / n)``, kurtosis 3 to 9). theta0 = 0 has no relative scale: pass
``abs_margin`` (the experiments use 5% of the quantity's standard deviation for their means);
without it :func:`check_equal` raises ValueError.

Across a sweep of ``m`` checks, each uses ``alpha / m`` (Bonferroni), so the chance of refuting
any true claim is at most ``alpha``.

Ordering: "theta_a < theta_b" (or ``>``) is SUPPORTED when the two ``1 - alpha/2`` intervals are
disjoint in the claimed direction, REFUTED when they are disjoint the other way round, and
INCONCLUSIVE when they overlap or one is undefined. An ordering needs no margin: disjoint
intervals already exclude every value of the contrary claim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._checks import check_alpha, check_choice, check_int, check_margin, check_positive_float, check_real
from .results import Estimate, MCResult, _jsonable, format_number

__all__ = [
    "SUPPORTED",
    "REFUTED",
    "INCONCLUSIVE",
    "DEFAULT_ALPHA",
    "DEFAULT_MARGIN",
    "Check",
    "Comparison",
    "check_equal",
    "decide_equal",
    "compare",
    "bonferroni",
]

SUPPORTED = "SUPPORTED"
REFUTED = "REFUTED"
INCONCLUSIVE = "INCONCLUSIVE"
#: Default family error rate.
DEFAULT_ALPHA = 1e-6
#: Default relative equivalence margin (see the module docstring).
DEFAULT_MARGIN = 0.05


def bonferroni(alpha: float, m: int) -> float:
    """Per-test error rate ``alpha / m`` for a family of ``m`` tests."""
    return check_alpha(alpha) / check_int("m", m, minimum=1)


@dataclass(frozen=True)
class Check:
    """Verdict on ``theta = theta0`` from one estimate (the rule of the module docstring).

    Attributes
    ----------
    claim : str
        The statement checked, e.g. ``"Var(q·k) = d_k = 64"``.
    theta0 : float
        The claimed value.
    estimate : Estimate
        Evidence, with its interval at the per-test ``alpha``.
    verdict : str
        ``"SUPPORTED"`` (theta0 inside the interval, the interval inside theta0 +- tolerance),
        ``"REFUTED"`` (theta0 outside) or ``"INCONCLUSIVE"``.
    family_alpha : float
        Error rate of the whole family (sweep).
    tests : int
        Family size m (the estimate's interval is at ``family_alpha / m``).
    source : str
        Where the claim comes from (e.g. ``"Vaswani et al. 2017, footnote 4"``), optional.
    note : str
        A caveat printed with the verdict (e.g. heavy tails), optional.
    margin : float
        The relative equivalence margin asked for.
    tolerance : float
        The absolute half-width ``delta`` of the equivalence region actually used
        (``margin * |theta0|``, or the ``abs_margin`` given).
    reason : str
        Why the verdict is what it is, in one sentence.
    samples_needed : int or None
        For INCONCLUSIVE with a finite interval: about how many samples would settle it.
    """

    claim: str
    theta0: float
    estimate: Estimate
    verdict: str
    family_alpha: float
    tests: int = 1
    source: str = ""
    note: str = ""
    margin: float = DEFAULT_MARGIN
    tolerance: float = math.nan
    reason: str = ""
    samples_needed: int | None = None

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
            "margin": self.margin, "tolerance": self.tolerance, "reason": self.reason,
            "samples_needed": self.samples_needed,
        })

    def summary(self) -> str:
        e = self.estimate
        fam = f", Bonferroni over {self.tests} from {self.family_alpha:g}" if self.tests > 1 else ""
        method = "" if e.method in self.reason else f"; {e.method}"
        return (
            f"{self.verdict}: {self.claim} — {self.reason} "
            f"(estimate {format_number(e.estimate)}, alpha={e.alpha:.3g}{fam}{method}; n={e.samples:,}, seed={e.seed}"
            f"{' key=' + str(list(e.spawn_key)) if e.spawn_key else ''})"
            f"{' INCOMPLETE' if e.incomplete else ''}"
            f"{' [' + self.note + ']' if self.note else ''}"
        )

    def __str__(self) -> str:
        return self.summary()


def _samples_to_width(samples: int, width: float, target: float) -> int | None:
    """Samples for an interval of full ``width`` at ``samples`` to shrink below ``target`` (1/sqrt(n))."""
    if not (math.isfinite(width) and target > 0 and samples > 0):
        return None
    ratio = width / target
    needed = samples * ratio * ratio if 1.0 <= ratio < 1e150 else math.nan
    return max(samples + 1, math.ceil(needed)) if math.isfinite(needed) else None


def decide_equal(low: float, high: float, theta0: float, tolerance: float) -> str:
    """The bare rule: REFUTED, SUPPORTED or INCONCLUSIVE for ``theta0`` and ``[low, high]``.

    NaN bounds (an undefined interval) give INCONCLUSIVE; ``tolerance`` must be > 0.
    """
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    if not low <= theta0 <= high:
        return REFUTED
    if theta0 - tolerance < low and high < theta0 + tolerance:
        return SUPPORTED
    return INCONCLUSIVE


def check_equal(
    evidence: MCResult | Estimate,
    theta0: float,
    *,
    output: str | None = None,
    statistic: str = "variance",
    alpha: float = DEFAULT_ALPHA,
    tests: int = 1,
    margin: float = DEFAULT_MARGIN,
    abs_margin: float | None = None,
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
    margin : float
        Relative equivalence margin, in (0, 1) (default 0.05): SUPPORTED needs the interval inside
        ``theta0 (1 +- margin)``.
    abs_margin : float, optional
        Absolute margin, > 0, used instead of ``margin * |theta0|``; required when theta0 = 0.
    """
    theta0 = check_real("theta0", theta0)
    alpha = check_alpha(alpha)
    tests = check_int("tests", tests, minimum=1)
    margin = check_margin(margin)
    abs_margin = check_positive_float("abs_margin", abs_margin, allow_none=True)
    tolerance = abs_margin if abs_margin is not None else margin * abs(theta0)
    if not tolerance > 0:
        raise ValueError(
            f"theta0 = {theta0!r} has no relative margin: pass abs_margin= (the largest deviation from "
            "theta0 that still counts as equal, e.g. 0.05 times the quantity's standard deviation)"
        )
    if isinstance(evidence, MCResult):
        est = evidence.estimate(output or evidence.target[0], statistic, alpha / tests)
    elif isinstance(evidence, Estimate):
        est = evidence
    else:
        raise TypeError(f"evidence must be an MCResult or an Estimate, got {type(evidence).__name__}")
    verdict = decide_equal(est.low, est.high, theta0, tolerance)
    t0 = format_number(theta0)
    region = (f"{t0} ± {format_number(tolerance)}"
              + (f" (margin {margin:g} of theta0)" if abs_margin is None else " (absolute margin)"))
    interval = f"[{format_number(est.low)}, {format_number(est.high)}]"
    needed = None
    if verdict == REFUTED:
        reason = f"{t0} outside {interval}"
    elif verdict == SUPPORTED:
        reason = f"{t0} inside {interval}, which lies within {region}"
    elif math.isnan(est.low) or math.isnan(est.high):
        reason = f"no verdict: the interval is undefined ({est.method}; n={est.samples:,})"
    else:
        needed = _samples_to_width(est.samples, est.high - est.low, tolerance)
        reason = (f"no verdict: {t0} inside {interval}, but the interval is too wide for {region}, "
                  "so it could not have refuted a deviation of that size")
        if needed:
            reason += f"; about {needed:,} samples would settle it (width shrinks as 1/sqrt(n))"
        elif math.isinf(est.low) or math.isinf(est.high):
            reason += "; the interval is unbounded, so more samples alone cannot settle it"
        else:
            reason += "; the margin is too small for any number of samples float64 can count"
    claim = claim or f"{est.quantity} = {t0}"
    return Check(claim, theta0, est, verdict, alpha, tests, source, note, margin, tolerance, reason, needed)


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
    reason: str = ""
    samples_needed: int | None = None

    def to_dict(self) -> dict:
        return _jsonable({
            "claim": self.claim, "relation": self.relation, "verdict": self.verdict,
            "family_alpha": self.family_alpha, "tests": self.tests, "source": self.source,
            "a": self.a.to_dict(), "b": self.b.to_dict(), "reason": self.reason,
            "samples_needed": self.samples_needed,
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
        why = f"; {self.reason}" if self.verdict == INCONCLUSIVE and self.reason else ""
        return f"{self.verdict}: {self.claim} — {self.evidence()}{why}"

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
    needed = None
    if any(math.isnan(x) for x in (ea.low, ea.high, eb.low, eb.high)):
        verdict = INCONCLUSIVE
        reason = f"no verdict: an interval is undefined ({ea.method}; n={ea.samples:,} and {eb.samples:,})"
    elif lower.high < upper.low:
        verdict, reason = SUPPORTED, "the intervals are disjoint in the claimed direction"
    elif upper.high < lower.low:
        verdict, reason = REFUTED, "the intervals are disjoint the other way round"
    else:
        verdict = INCONCLUSIVE
        reason = "no verdict: the intervals overlap"
        gap = abs(ea.estimate - eb.estimate)
        widths = (ea.high - ea.low) + (eb.high - eb.low)
        needed = _samples_to_width(min(ea.samples, eb.samples), 0.5 * widths, gap) if gap > 0 else None
        reason += (f"; about {needed:,} samples each would separate them if the estimates stay "
                   "(widths shrink as 1/sqrt(n))" if needed else "; the estimates coincide or an interval is unbounded")
    claim = claim or f"{ea.quantity} ({a.params}) {relation} ({b.params})"
    return Comparison(claim, relation, ea, eb, verdict, alpha, tests, source, reason, needed)
