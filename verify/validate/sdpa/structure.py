"""Properties of attention's structure: returned weights, invariance to a row shift of the scores,
batch independence, permutation equivariance, determinism."""

from __future__ import annotations

import numpy as np

from verify.validate.context import PropertyContext
from verify.validate.registry import register
from verify.validate.repeats import BATCH_MIXED, NONDETERMINISTIC, batch_verdict, repeat_verdict
from verify.validate.result import Measurement
from verify.validate.sdpa.checks import difference, judged, judged_runs, worst
from verify.validate.sdpa.common import bound, fmt
from verify.validate.sdpa.problem import Problem, draw, mask_with_keys
from verify.validate.tolerance import UNIT_ROUNDOFF, floor, relative_error


@register("sdpa", "weights", needs=("weights",), title="weights non-negative, rows sum to 1")
def weights(ctx: PropertyContext):
    """Returned weights are non-negative, each row sums to 1, and they match ours."""
    ms = []
    for dtype in ctx.dtypes():
        q, k, v = draw(ctx.rng, (2,), 2, 7, 12, 8, 5)
        mask = mask_with_keys(ctx.rng, (2, 2, 7, 12)) if ctx.candidate.supports("mask") else None
        p = Problem(q, k, v, mask=mask).rounded(dtype)
        outcome = ctx.call(p.q, p.k, p.v, dtype=dtype, **p.options())
        w = outcome.weights
        ref = p.reference_weights()
        if w is None or w.shape != ref.shape:
            return ctx.failed(f"weights of shape {None if w is None else w.shape}, expected {ref.shape}", ms,
                              p.describe(dtype), "weights:shape")
        tol = 4 * p.k.shape[-2] * UNIT_ROUNDOFF[dtype] + floor(dtype)
        low = float(-np.min(w))
        sums = float(np.max(np.abs(w.sum(-1) - 1)))
        ms += [Measurement(f"-min weight ({dtype})", max(low, 0.0), tol),
               Measurement(f"|row sum - 1| ({dtype})", sums, tol),
               Measurement(f"weights vs ours ({dtype})", relative_error(w, ref), tol)]
        if low > tol:
            return ctx.failed(f"negative weights (min {fmt(-low)})", ms, p.describe(dtype), "weights:negative")
        if sums > tol:
            return ctx.failed(f"rows of the weights do not sum to 1 (off by up to {fmt(sums)})", ms, p.describe(dtype),
                              "weights:row_sum")
        if not ms[-1].ok:
            return ctx.failed(f"weights differ from ours by {fmt(ms[-1].error)}", ms, p.describe(dtype),
                              "weights:values")
    return ctx.passed("non-negative, rows sum to 1, equal to ours" + worst(ms), ms)


@register("sdpa", "shift_invariance", title="adding a constant to a row of scores changes nothing")
def shift_invariance(ctx: PropertyContext):
    """k + w for one vector w adds scale q_i . w to every score of row i: the output must not change."""
    runs, fail = judged_runs(ctx, lambda: Problem(*draw(ctx.rng, (2,), 2, 9, 13, 8, 6)))
    if fail:
        return fail
    ms = []
    for run in runs:
        p = run.problem
        w = ctx.rng.standard_normal(8)
        w *= 40.0 / np.max(np.abs(p.q @ w))  # row shifts up to 40 scale = 14 (d_k = 8): far past exp's own range
        shifted, fail = judged(ctx, p.with_(k=p.k + w), run.dtype, what="shifted rows")
        if fail:
            return ctx.failed("not invariant to a constant added to a row of scores: " + fail.diagnosis,
                              fail.measurements, fail.example, fail.fault or "softmax:not_shift_invariant")
        ms += [run.measurement, shifted.measurement]
    return ctx.passed("a row shift of the scores (up to 14) leaves the output unchanged" + worst(ms), ms)


@register("sdpa", "batch_independence", title="one sample's output ignores the others")
def batch_independence(ctx: PropertyContext):
    """Changing samples 1.. of the batch leaves sample 0's output as it was."""
    runs, fail = judged_runs(ctx, lambda: Problem(*draw(ctx.rng, (3,), 2, 6, 9, 8, 5)))
    if fail:
        return fail
    ms = []
    for run in runs:
        changed = [a.copy() for a in (run.problem.q, run.problem.k, run.problem.v)]
        for a in changed:
            a[1:] = ctx.rng.standard_normal(a[1:].shape) * 3
        other = ctx.call(*changed, dtype=run.dtype).out
        m, words = batch_verdict(run.outcome.out[:1], other[:1], run.measurement.bound, run.dtype)
        ms.append(m)
        if words:
            return ctx.failed(words, ms, run.problem.describe(run.dtype), BATCH_MIXED)
    return ctx.passed("sample 0's output unchanged when the other samples change" + worst(ms), ms)


@register("sdpa", "permutation_equivariance", title="permuting queries permutes outputs; keys+values: no change")
def permutation_equivariance(ctx: PropertyContext):
    """Unmasked attention: permuted queries give permuted output rows; keys and values permuted
    together give the same output."""
    runs, fail = judged_runs(ctx, lambda: Problem(*draw(ctx.rng, (2,), 2, 8, 8, 8, 6)))
    if fail:
        return fail
    ms = []
    for run in runs:
        p, dtype = run.problem, run.dtype
        rows, keys = ctx.rng.permutation(8), ctx.rng.permutation(8)
        out_q = ctx.call(p.q[..., rows, :], p.k, p.v, dtype=dtype).out
        out_k = ctx.call(p.q, p.k[..., keys, :], p.v[..., keys, :], dtype=dtype).out
        mq = difference(f"queries permuted ({dtype})", out_q, run.outcome.out[..., rows, :], run)
        mk = difference(f"keys and values permuted ({dtype})", out_k, run.outcome.out, run)
        ms += [mq, mk]
        if not mq.ok:
            return ctx.failed(f"permuting the queries does not just permute the output rows (off by {fmt(mq.error)}): "
                              f"the output depends on the query's position", ms, p.describe(dtype),
                              "permutation:queries")
        if not mk.ok:
            return ctx.failed(f"permuting keys and values together changes the output (by {fmt(mk.error)}): "
                              f"the output depends on the keys' positions", ms, p.describe(dtype), "permutation:keys")
    return ctx.passed("equivariant to query permutations, invariant to key/value permutations" + worst(ms), ms)


@register("sdpa", "determinism", title="two calls on the same input agree")
def determinism(ctx: PropertyContext):
    """Two calls on the same input: bitwise equal, or the spread is reported (a FAIL beyond the
    rule's bound: random, such as dropout left on). Agreement with ours is the other properties' job:
    a wrong but repeatable output passes here."""
    notes, ms = [], []
    for dtype in ctx.dtypes():
        p = Problem(*draw(ctx.rng, (2,), 2, 17, 23, 8, 8)).rounded(dtype)
        first = ctx.call(p.q, p.k, p.v, dtype=dtype).out
        second = ctx.call(p.q, p.k, p.v, dtype=dtype).out
        m, note, ok = repeat_verdict(first, second, bound(p, dtype), dtype)
        ms.append(m)
        if not ok:
            return ctx.failed(f"{note}: the output is random (dropout left on?)", ms, p.describe(dtype),
                              NONDETERMINISTIC)
        notes.append(note)
    return ctx.passed("; ".join(notes), ms)
