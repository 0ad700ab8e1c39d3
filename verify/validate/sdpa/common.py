"""Running the candidate on a :class:`~.problem.Problem` and measuring it by the tolerance rule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from verify.validate.candidate import Outcome
from verify.validate.context import PropertyContext
from verify.validate.result import Measurement
from verify.validate.sdpa.problem import Problem, allowed
from verify.validate.tolerance import ABS64, K_OUTPUT, floor, relative_error, rule


@dataclass(frozen=True)
class Run:
    """One call measured: the candidate's outcome, the reference and the plain result (on the rows
    that have an allowed key), and the measurement; ``problem`` holds the inputs as rounded."""

    problem: Problem
    dtype: str
    outcome: Outcome
    measurement: Measurement
    shape_error: str = ""

    @property
    def ok(self) -> bool:
        return not self.shape_error and self.measurement.ok


def rows_with_keys(p: Problem, shape) -> np.ndarray:
    """(..., N) True where the query row has at least one allowed key (others are the empty-row
    convention, which libraries legitimately differ on: see the ``empty_rows`` property)."""
    scores_shape = np.broadcast_shapes(shape[:-1] + (p.k.shape[-2],),
                                       () if p.mask is None else p.mask.shape)
    return allowed(p, scores_shape).any(axis=-1)


def bound(p: Problem, dtype: str, plain: np.ndarray | None = None, reference: np.ndarray | None = None) -> float:
    """k err(plain, dtype) + floor(dtype, largest |score|) for the problem (already rounded to ``dtype``); ABS64 in float64."""
    if dtype == "float64":
        return ABS64
    reference = p.reference() if reference is None else reference
    plain = p.plain(dtype) if plain is None else plain
    return K_OUTPUT * relative_error(plain, reference) + floor(dtype, p.score_magnitude())


def measure(ctx: PropertyContext, p: Problem, dtype: str, *, what: str = "output", only_rows: bool = True) -> Run:
    """Run the candidate on ``p`` rounded to ``dtype`` and measure it against our float64 result
    by the rule (``only_rows``: leave out rows with no allowed key)."""
    p = p.rounded(dtype)
    outcome = ctx.call(p.q, p.k, p.v, dtype=dtype, **p.options())
    return judge_outcome(p, dtype, outcome, what=what, only_rows=only_rows)


def judge_outcome(p: Problem, dtype: str, outcome: Outcome, *, what: str = "output", only_rows: bool = True,
                  judged_as: str | None = None) -> Run:
    """The :class:`Run` of an ``outcome`` on ``p`` (rounded to ``dtype``); ``judged_as``: measure it by
    the rule of that (lower) precision instead, the one the candidate has been found to deliver."""
    reference = p.reference()
    rule_dtype = judged_as or dtype
    plain = p.plain(rule_dtype)
    if outcome.out.shape != reference.shape:
        m = Measurement(what, float("inf"), 0.0)
        return Run(p, dtype, outcome, m, f"the output has shape {outcome.out.shape}, expected {reference.shape} "
                                         f"(..., N, V) for q {p.q.shape}, k {p.k.shape}, v {p.v.shape}")
    if only_rows:
        rows = np.broadcast_to(rows_with_keys(p, reference.shape), reference.shape[:-1])
        cand, ref, pl = outcome.out[rows], reference[rows], plain[rows]
    else:
        cand, ref, pl = outcome.out, reference, plain
    label = f"{what} ({dtype})" if judged_as is None else f"{what} ({dtype}, judged as the {judged_as} it delivers)"
    m = judge(label, cand, pl, ref, rule_dtype, K_OUTPUT, p.score_magnitude())
    return Run(p, dtype, outcome, m)


def judge(what: str, candidate, plain, reference, dtype: str, k: float, magnitude: float = 1.0) -> Measurement:
    """The rule k err(plain) + floor(dtype, magnitude) (``magnitude``: the largest |score|); in
    float64, where our plain *is* the reference, the stated bound ABS64 (the plain error would be 0
    and the floor alone too strict for any other correct float64 code on ill-conditioned problems)."""
    if dtype == "float64":
        return Measurement(what, relative_error(candidate, reference), ABS64)
    return rule(candidate, plain, reference, dtype=dtype, k=k, what=what, magnitude=magnitude)


def fmt(x: float) -> str:
    return f"{x:.3g}"
