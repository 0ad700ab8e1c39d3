"""Random examples with hypothesis, shrunk to the smallest failing one.

A property describes its examples with a hypothesis strategy of *cases* (small hashable values:
shapes, dtype, options, a data seed) and a ``check(case) -> CaseResult``; :func:`search` runs
hypothesis with ``database=None``, ``deadline=None``, seeded from the run's seed (the same seed gives
the same examples), at most ``max_examples`` examples, then lets hypothesis shrink a failure.

Results are memoised by case, so a candidate that answers differently on a repeat call (a
nondeterministic kernel) does not make hypothesis raise Flaky. Once SHRINK_SHARE of the property's
time is spent, new cases are not run and count as passing: shrinking ends with the smallest failure
found so far, and a slow candidate with no failure yet gets fewer examples (counted in ``skipped``
and reported), not a TIMEOUT, which is kept for a call that does not return.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import hypothesis
from hypothesis import HealthCheck, Phase, strategies as st

from verify.validate.context import CandidateError, PropertyContext
from verify.validate.result import Measurement, Status

#: Fraction of the property's time after which shrinking stops trying new cases.
SHRINK_SHARE = 0.8


@dataclass(frozen=True)
class CaseResult:
    """The verdict on one case: ``status`` PASS, FAIL or ERROR, with what was measured.

    ``fault`` and ``diagnosis`` name the fault when the check could (else the property does);
    ``explain``, when given, computes ``(diagnosis, fault)`` later: the search calls it once, for
    the smallest failure, not for every failing case hypothesis tries while shrinking."""

    status: Status
    measurements: tuple[Measurement, ...] = ()
    diagnosis: str = ""
    fault: str | None = None
    explain: Callable[[], tuple[str, str | None]] | None = field(default=None, compare=False, repr=False)

    def explained(self) -> "CaseResult":
        if self.explain is None:
            return self
        diagnosis, fault = self.explain()
        return CaseResult(self.status, self.measurements, diagnosis, fault)


@dataclass
class SearchOutcome:
    """What a search found.

    Attributes
    ----------
    failure : (case, CaseResult) or None
        The smallest failing case hypothesis reached, with its result.
    shrunk : bool
        Whether ``failure`` came out of hypothesis's shrinking (False for an explicit case, which
        hypothesis does not shrink, or one a property set itself).
    examples : int
        Distinct cases checked.
    worst : Measurement or None
        Among passing cases, the measurement closest to its bound (error / bound largest).
    """

    failure: tuple[Any, CaseResult] | None = None
    examples: int = 0
    worst: Measurement | None = None
    seen: dict = field(default_factory=dict)
    #: Cases not run because the property's time was nearly spent (a slow candidate: each new shape
    #: costs jax a compilation); the result says how many ran.
    skipped: int = 0
    shrunk: bool = False

    def time_note(self) -> str:
        return f" (time limit: {self.skipped} more not run)" if self.skipped else ""


class _CaseFailed(Exception):
    def __init__(self, case):
        super().__init__(repr(case))
        self.case = case


def search(ctx: PropertyContext, cases: st.SearchStrategy, check: Callable[[Any], CaseResult], *,
           max_examples: int | None = None, explicit: tuple = ()) -> SearchOutcome:
    """Check random ``cases`` (plus ``explicit`` ones first) and shrink a failure.

    A :class:`CandidateError` raised by ``check`` is the candidate's ERROR on that case (shrunk like a
    failure); anything else (the battery's own bug, :class:`TimeLimitReached`) passes through to the runner.
    """
    outcome = SearchOutcome()
    start = time.monotonic()
    soft_deadline = start + SHRINK_SHARE * max(ctx.time_left(), 0.0)

    def run(case) -> CaseResult:
        if case in outcome.seen:
            return outcome.seen[case]
        if time.monotonic() > soft_deadline:
            # out of time: keep the smallest failure found, or stop looking for one
            outcome.skipped += outcome.failure is None
            return CaseResult(Status.PASS)
        try:
            result = check(case)
        except CandidateError as exc:  # the candidate raised: an ERROR on this case, shrunk like a failure
            said = str(exc.original)  # a wrong return type is said as it is, not as "raised"
            result = CaseResult(Status.ERROR, diagnosis=said.removeprefix("the candidate ")
                                if isinstance(exc.original, TypeError) and said.startswith("the candidate returned")
                                else f"raised {exc}")
        outcome.seen[case] = result
        outcome.examples += 1
        if result.status is Status.PASS:
            for m in result.measurements:
                if outcome.worst is None or _ratio(m) > _ratio(outcome.worst):
                    outcome.worst = m
        return result

    def test(case):
        result = run(case)
        if result.status is not Status.PASS:
            if outcome.failure is None or _smaller(case, outcome.failure[0]):
                outcome.failure = (case, result)
            raise _CaseFailed(case)

    for case in explicit:
        test = hypothesis.example(case)(test)
    n = max_examples or ctx.settings.max_examples
    settings = hypothesis.settings(
        database=None, deadline=None, derandomize=True, max_examples=n, report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.generate, Phase.shrink),
        print_blob=False, verbosity=hypothesis.Verbosity.quiet)
    wrapped = hypothesis.seed(ctx.settings.seed * 1_000_003 + ctx.entropy[1])(settings(hypothesis.given(cases)(test)))
    try:
        wrapped()
    except _CaseFailed as exc:
        outcome.failure = (exc.case, outcome.seen[exc.case])
    except hypothesis.errors.HypothesisException:
        pass  # hypothesis's own complaint (flaky, unsatisfiable): keep what was found
    if outcome.failure is not None:
        case, result = outcome.failure
        outcome.failure = (case, result.explained())
        outcome.shrunk = case not in explicit
    return outcome


def _ratio(m: Measurement) -> float:
    if m.bound > 0:
        return m.error / m.bound
    return float("inf") if m.error > 0 else 0.0


def _smaller(a, b) -> bool:
    size = getattr(a, "size", None)
    return size is not None and getattr(b, "size", None) is not None and a.size < b.size
