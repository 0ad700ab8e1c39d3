"""Agreement with our float64 attention over random problems, by the tolerance rule, with the
smallest failing problem (hypothesis shrinking) and the fault named when a known one reproduces it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from verify.validate.context import CandidateError, PropertyContext
from verify.validate.registry import register
from verify.validate.result import Status
from verify.validate.sdpa import faults, scale_fit
from verify.validate.sdpa.common import bound as rule_bound, fmt, measure, rows_with_keys
from verify.validate.sdpa.problem import Problem, draw
from verify.validate.search import CaseResult, _ratio, search
from verify.validate.tolerance import UNIT_ROUNDOFF, rule


@dataclass(frozen=True)
class Case:
    """One random problem, as hypothesis draws and shrinks it (small ints and flags, a data seed)."""

    dtype: str
    batch: tuple[int, ...]
    kv_heads: int
    group: int
    n: int
    m: int
    dk: int
    dv: int
    mask: bool
    causal: str | None
    bias: bool
    window: tuple[int | None, int | None] | None
    softcap: float | None
    scale: float | None
    seed: int

    @property
    def size(self) -> int:
        return (math.prod(self.batch) * self.kv_heads * self.group * (self.n + self.m) * (self.dk + self.dv)
                + 1000 * sum(x is not None and x is not False for x in (self.mask, self.causal, self.bias,
                                                                         self.window, self.softcap, self.scale)))

    def problem(self, ctx: PropertyContext) -> Problem:
        rng = ctx.generator(self.seed)
        heads = self.kv_heads * self.group
        q, k, v = draw(rng, self.batch, heads, self.n, self.m, self.dk, self.dv, kv_heads=self.kv_heads)
        lead = (*self.batch, heads)
        mask = rng.random((*lead, self.n, self.m)) < 0.7 if self.mask else None
        bias = rng.standard_normal((*lead, self.n, self.m)) if self.bias else None
        return Problem(q, k, v, mask=mask, causal=self.causal, bias=bias, window=self.window,
                       softcap=self.softcap, scale=self.scale, enable_gqa=self.group > 1)


#: Sequence lengths up to past common tile sizes (64, 128); one range, so that shrinking goes straight to 1
#: (a union of ranges would stop at the second range's lower end).
_lengths = st.integers(1, 160)


def cases(ctx: PropertyContext) -> st.SearchStrategy:
    """Random cases over the candidate's dtypes and the options it accepts."""
    c = ctx.candidate
    flag = (lambda feature: st.booleans() if c.supports(feature) else st.just(False))
    windows = st.none()
    if c.supports("window"):
        side = st.none() | st.integers(0, 6)
        windows = st.none() | st.tuples(side, side)
    return st.builds(
        Case,
        dtype=st.sampled_from(ctx.dtypes()),
        batch=st.lists(st.integers(1, 3), max_size=2).map(tuple),
        kv_heads=st.integers(1, 3),
        group=st.integers(1, 3) if c.supports("enable_gqa") else st.just(1),
        n=_lengths, m=_lengths, dk=st.integers(1, 80), dv=st.integers(1, 80),
        mask=flag("mask"),
        causal=st.sampled_from((None,) + tuple(c.causal_alignments)),
        bias=flag("bias"),
        window=windows,
        softcap=(st.none() | st.sampled_from((2.0, 20.0))) if c.supports("softcap") else st.none(),
        scale=(st.none() | st.floats(0.05, 2.0)) if c.supports("scale") else st.none(),
        seed=st.integers(0, 2**16),
    )


def explicit_cases(ctx: PropertyContext) -> tuple[Case, ...]:
    """Sizes that break tiling (113 x 203) with N != M and d_v != d_k, in every dtype."""
    c = ctx.candidate
    causal = c.causal_alignments[-1] if c.causal_alignments else None
    return tuple(Case(dtype, (2,), 1, 1, 113, 203, 24, 17, c.supports("mask"), causal, False, None, None, None, 1)
                 for dtype in ctx.dtypes())


#: A one-parameter scale fit needs this many output values to mean anything (one value can be
#: matched by some scale whatever the fault).
MIN_FIT_VALUES = 8
#: The largest |score| at which a float64 output meeting float32's rule is called float32 before any
#: fault model is tried (the rule's floor grows with the logits; past this, faults are tried first).
WELL_CONDITIONED = 30.0
#: Calls on the same input that :func:`diagnose` compares with the first (dropout can spare a tiny example once).
RERUNS = 3


def rerunner(ctx: PropertyContext, dtype: str):
    """``rerun(problem) -> (problem rounded, candidate's output)`` for :func:`diagnose`."""
    def rerun(p: Problem):
        p = p.rounded(dtype)
        return p, ctx.call(p.q, p.k, p.v, dtype=dtype, **p.options()).out
    return rerun


def _random(p: Problem, out: np.ndarray, bound: float, rerun) -> bool:
    """Whether calls on the same input differ: on ``p`` (whose output was ``out``) and on a larger
    problem (dropout can spare a one-key example several times running)."""
    try:
        for probe, first in ((p, out), (p.enlarged(np.random.default_rng(0)), None)):
            if first is None:
                probe, first = rerun(probe)
            for _ in range(RERUNS):
                again = rerun(probe)[1]
                if again.shape == first.shape and faults.relative_error(again, first) > 2 * max(bound, 1e-15):
                    return True
    except CandidateError:
        return False
    return False


def float32_level(p: Problem, dtype: str, out: np.ndarray):
    """The Measurement of a float64 ``out`` by float32's rule when it meets that rule (it is as
    accurate as float32 code, no more); None otherwise or when ``dtype`` is not float64."""
    if dtype != "float64" or out.shape != p.reference().shape or p.score_magnitude() > WELL_CONDITIONED:
        return None  # on large logits float32's rule allows errors that real faults (a wrong scale) also make
    rows = np.broadcast_to(rows_with_keys(p, out.shape), out.shape[:-1])
    m = rule(out[rows], p.plain("float32")[rows], p.reference()[rows], dtype="float32",
             magnitude=p.score_magnitude(), what="output (float64) by float32's rule")
    return m if m.ok else None


def _on_a_square_problem(p: Problem, dtype: str, out: np.ndarray, slack: float, rerun) -> faults.Fault | None:
    """Tell apart causal faults that coincide when N != M (top-left seeing one future key is
    bottom-right at N = 1, M = 2): with N = M both alignments agree, so a candidate right there has
    only its alignment wrong; one wrong there is named on the square problem (a leak, causal ignored)."""
    try:
        sq, sq_out = rerun(p.enlarged(np.random.default_rng(0), square=True))
    except CandidateError:
        return None
    reference = sq.reference()
    if sq_out.shape != reference.shape:
        return None
    sq_slack = max(slack, 4 * rule_bound(sq, dtype))
    if faults.relative_error(sq_out, reference) <= sq_slack:
        return faults.identify(p, out, slack, codes=("causal:alignment",))
    return faults.identify(sq, sq_out, sq_slack)


def diagnose(p: Problem, dtype: str, out: np.ndarray, bound: float, rerun=None) -> tuple[str, str | None]:
    """(words, code) for a wrong output: a known fault, a wrong scale, low precision, or unknown.

    The scale is fitted on the example itself when it has MIN_FIT_VALUES output values at least,
    else (with ``rerun``, see :func:`rerunner`) on the candidate's output for a larger problem with
    the same options and d_k."""
    if not np.all(np.isfinite(out)):
        return "the output has NaN or inf where ours is finite", "output:non_finite"
    if rerun is not None and _random(p, out, bound, rerun):  # named before any model is fitted to one draw
        return "two calls on the same input differ: the output is random (dropout left on?)", "nondeterministic"
    low32 = float32_level(p, dtype, out)
    if low32 is not None:  # no fault model is told apart from rounding at 1e-7: precision first
        return (f"float64 output has float32-level error ({fmt(low32.error)}, within float32's rule "
                f"{fmt(low32.bound)}): part of the computation runs in float32"), "precision:float32"
    slack = max(bound * 4, 1e-9)
    fault = faults.identify(p, out, slack)
    if fault is not None and fault.code in faults.CAUSAL_AMBIGUOUS and p.q.shape[-2] != p.k.shape[-2] and rerun:
        fault = _on_a_square_problem(p, dtype, out, slack, rerun) or fault
    if fault is not None:
        return f"{fault.words}", fault.code
    fit_p, fit_out = p, out
    if out.size < MIN_FIT_VALUES and rerun is not None:
        try:
            fit_p, fit_out = rerun(p.enlarged(np.random.default_rng(0)))
        except CandidateError:
            fit_p = None
    s, residual = scale_fit.fit(fit_p, fit_out) if fit_p is not None and fit_out.size >= MIN_FIT_VALUES \
        and fit_out.shape == fit_p.reference().shape else (float("nan"), float("inf"))
    if residual <= max(slack, 1e-6):
        named = scale_fit.name_scale(fit_p, s, residual, scale_fit.match_bound(fit_p, dtype))
        if not named.correct:
            return named.words(), named.code
    err = faults.relative_error(out, p.reference())
    for low in ("float16", "bfloat16"):
        u = UNIT_ROUNDOFF[low]
        if UNIT_ROUNDOFF[dtype] < u and u / 8 <= err <= 8 * u:
            return (f"error {fmt(err)} in {dtype} is the size of {low} rounding (u = {fmt(u)}): part of the "
                    f"computation (such as the softmax's sum) runs in {low}"), f"precision:{low}"
    return "no known fault reproduces the output", None


@register("sdpa", "agreement", title="agrees with float64 attention by the tolerance rule")
def agreement(ctx: PropertyContext):
    """Agreement with float64 attention over random shapes, dtypes and options."""

    def check(case: Case) -> CaseResult:
        p = case.problem(ctx)
        run = measure(ctx, p, case.dtype)
        if run.shape_error:
            return CaseResult(Status.FAIL, (run.measurement,), run.shape_error, "output:shape")
        if run.ok:
            return CaseResult(Status.PASS, (run.measurement,))
        return CaseResult(Status.FAIL, (run.measurement,), explain=lambda: diagnose(
            run.problem, case.dtype, run.outcome.out, run.measurement.bound, rerunner(ctx, case.dtype)))

    found = search(ctx, cases(ctx), check)
    if found.failure is None and not found.skipped:  # then the large sizes, after the random (shrinkable) ones
        for case in explicit_cases(ctx):
            result = check(case)
            found.examples += 1
            if result.status is not Status.PASS:
                found.failure, found.shrunk = (case, result.explained()), False  # a fixed large size
                break
            found.worst = max((found.worst, *result.measurements), key=_ratio) if found.worst else result.measurements[0]
    return conclude(ctx, found, "agrees with float64 attention")


def conclude(ctx: PropertyContext, found, what: str):
    """The PropertyResult of a search (shared by the properties that search)."""
    if found.failure is None:
        worst = found.worst
        detail = f"; worst error {fmt(worst.error)} vs bound {fmt(worst.bound)}" if worst else ""
        return ctx.passed(f"{what} on {found.examples} random problems{found.time_note()}{detail}",
                          (worst,) if worst else ())
    case, result = found.failure
    example = case.problem(ctx).describe(case.dtype) if hasattr(case, "problem") else {"case": repr(case)}
    m = result.measurements
    if result.status is Status.ERROR:
        return ctx.error(f"the candidate {result.diagnosis}", example=example, shrunk=found.shrunk)
    detail = f" (error {fmt(m[0].error)} vs bound {fmt(m[0].bound)})" if m and math.isfinite(m[0].error) else ""
    return ctx.failed(f"{result.diagnosis}{detail}", m, example, result.fault, shrunk=found.shrunk)
