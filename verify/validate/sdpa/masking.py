"""Masks, causality and grouped-query heads: polarity, leaks, alignment, empty rows, head mapping."""

from __future__ import annotations

import numpy as np

from verify.validate.context import PropertyContext
from verify.validate.registry import register
from verify.validate.result import Measurement
from verify.validate.sdpa.checks import difference, judged, judged_runs, worst
from verify.validate.sdpa.common import fmt, rows_with_keys
from verify.validate.sdpa.problem import Problem, draw, mask_with_keys


@register("sdpa", "mask_polarity", needs=("mask",), title="mask True = may attend")
def mask_polarity(ctx: PropertyContext):
    """A random mask (every row keeps a key and blocks one): the output is ours; an inverted
    polarity, a mask applied after the softmax or an ignored mask is named."""
    runs, fail = judged_runs(ctx, lambda: Problem(*draw(ctx.rng, (2,), 2, 7, 10, 8, 6),
                                                  mask=mask_with_keys(ctx.rng, (2, 2, 7, 10), 0.5)))
    if fail:
        return fail
    ms = [run.measurement for run in runs]
    return ctx.passed("True = may attend, as asked" + worst(ms), ms)


def _huge_at_blocked_keys(ctx: PropertyContext) -> Problem:
    """Blocked keys 1, 4, 7, 8 with scores about +1e4 for every query, and values 1e4."""
    q, k, v = draw(ctx.rng, (2,), 2, 6, 10, 8, 5)
    q = np.abs(q) + 0.1
    blocked = np.zeros(10, dtype=bool)
    blocked[[1, 4, 7, 8]] = True
    k[..., blocked, :] = 1e4 / np.mean(q) / np.sqrt(8)  # scale * q . k about +1e4
    v[..., blocked, :] = 1e4
    return Problem(q, k, v, mask=np.broadcast_to(~blocked, (2, 2, 6, 10)).copy())


@register("sdpa", "masked_values", needs=("mask",), title="huge scores and values at masked keys do not leak")
def masked_values(ctx: PropertyContext):
    """Blocked keys whose scores are about +1e4 and values 1e4 must leave the output as ours.

    Huge finite values, not NaN: a NaN in V at a blocked key reaches the output through 0 * NaN in
    any matrix product (torch's SDPA's too), and numerics refuses NaN input by design."""
    runs, fail = judged_runs(ctx, lambda: _huge_at_blocked_keys(ctx))
    if fail:
        return ctx.failed("values at masked keys leak into the output: " + fail.diagnosis, fail.measurements,
                          fail.example, fail.fault or "mask:leak")
    ms = [run.measurement for run in runs]
    return ctx.passed("scores ~1e4 and values 1e4 at blocked keys leave the output unchanged" + worst(ms), ms)


@register("sdpa", "causality", needs=("causal",), title="later keys never reach earlier queries; alignment")
def causality(ctx: PropertyContext):
    """For each alignment the candidate takes, with N != M both ways: the output is ours (a
    diagonal left out, the other alignment or causal ignored is named), and changing the keys and
    values a query may not see leaves its output unchanged."""
    ms, seen = [], []
    for alignment in ctx.candidate.causal_alignments:
        for n, m in ((6, 11), (11, 6), (7, 7)):
            for dtype in ctx.dtypes():
                q, k, v = draw(ctx.rng, (2,), 2, n, m, 8, 5)
                p = Problem(q, k, v, causal=alignment)
                run, fail = judged(ctx, p, dtype)
                if fail:
                    return fail
                ms.append(run.measurement)
                offset = m - n if alignment == "bottom_right" else 0
                t = max(min(n // 2 + offset, m - 1), 1)  # keys >= t are future for rows i < t - offset
                rows = np.arange(n) + offset < t
                if not rows.any():
                    continue
                k2, v2 = run.problem.k.copy(), run.problem.v.copy()
                k2[..., t:, :] = ctx.rng.standard_normal(k2[..., t:, :].shape) * 3
                v2[..., t:, :] = ctx.rng.standard_normal(v2[..., t:, :].shape) * 3
                other = ctx.call(run.problem.q, k2, v2, dtype=dtype, causal=alignment).out
                d = difference(f"rows before key {t} when later keys change ({alignment}, {dtype})",
                               other[..., rows, :], run.outcome.out[..., rows, :], run)
                ms.append(d)
                if not d.ok:
                    return ctx.failed(f"later keys and values change earlier outputs (by {fmt(d.error)}): causality "
                                      f"leaks the future", ms, p.describe(dtype), "causal:leak")
        seen.append(alignment.replace("_", "-"))
    return ctx.passed(f"causal ({', '.join(seen)}) with N < M, N > M, N = M as ours; the future does not leak"
                      + worst(ms), ms)


@register("sdpa", "empty_rows", needs=("mask",), title="rows with no allowed key: finite, convention reported")
def empty_rows(ctx: PropertyContext):
    """Rows whose mask allows no key: the convention (zeros, mean of V, other) is reported; NaN or
    inf in the output, or NaN gradients (torch), fail."""
    dtype = ctx.dtypes()[-1]
    q, k, v = draw(ctx.rng, (2,), 2, 5, 8, 8, 4)
    mask = mask_with_keys(ctx.rng, (2, 2, 5, 8))
    mask[..., [0, 3], :] = False
    p = Problem(q, k, v, mask=mask).rounded(dtype)
    out = ctx.call(p.q, p.k, p.v, dtype=dtype, mask=p.mask).out
    empty = ~rows_with_keys(p, out.shape)
    rows = out[empty]
    mean_v = np.broadcast_to(p.v.mean(axis=-2, keepdims=True), out.shape)[empty]
    example = p.describe(dtype)
    if not np.all(np.isfinite(rows)):
        return ctx.failed("rows with no allowed key give NaN or inf (softmax of all -inf); PyTorch returns 0 there "
                          "(_safe_softmax), JAX the mean of V", (), example, "empty_rows:nan")
    scale = float(np.max(np.abs(p.v)))
    if np.max(np.abs(rows), initial=0.0) <= 1e-6 * scale:
        convention = "zeros (PyTorch's _safe_softmax, ours)"
    elif np.max(np.abs(rows - mean_v), initial=0.0) <= 1e-3 * scale:
        convention = "the mean of V (uniform weights: a large finite negative mask, JAX's)"
    else:
        return ctx.failed("rows with no allowed key give neither 0 nor the mean of V", (), example,
                          "empty_rows:other")
    ms = []
    if ctx.candidate.differentiable:
        d_out = ctx.rng.standard_normal(out.shape)
        grads = ctx.gradients(p.q, p.k, p.v, d_out=d_out, dtype=dtype, mask=p.mask)
        bad = [name for name, g in grads.items() if not np.all(np.isfinite(g))]
        ms.append(Measurement("non-finite gradient entries", float(sum(np.sum(~np.isfinite(g)) for g in grads.values())),
                              0.0))
        if bad:
            return ctx.failed(f"output {convention.split(' (')[0]}, but the gradients {', '.join('d' + b for b in bad)} "
                              f"are NaN (the backward of a softmax of all -inf)", ms, example, "empty_rows:nan_gradients")
        convention += "; gradients finite"
    else:
        convention += "; gradients not checked (not differentiable in its library)"
    return ctx.passed(f"rows with no allowed key give {convention}", ms)


@register("sdpa", "gqa", needs=("enable_gqa",), title="GQA: query head h uses key/value head h // G")
def gqa(ctx: PropertyContext):
    """Hq = 6 query heads on Hkv = 2 key/value heads: interleaved (h // 3, torch's enable_gqa), not tiled (h % 2)."""
    runs, fail = judged_runs(ctx, lambda: Problem(*draw(ctx.rng, (2,), 6, 5, 7, 8, 4, kv_heads=2), enable_gqa=True))
    if fail:
        return fail
    ms = [run.measurement for run in runs]
    return ctx.passed("query head h uses key/value head h // G (interleaved)" + worst(ms), ms)


def _large_logits(ctx: PropertyContext) -> Problem:
    q, k, v = draw(ctx.rng, (2,), 2, 6, 9, 8, 5)
    return Problem(q * 100 / 8 ** 0.25, k * 100 / 8 ** 0.25, v)  # scale q.k ~ N(0, 1e4^2)


@register("sdpa", "large_logits", title="logits of 1e4 give finite, accurate outputs")
def large_logits(ctx: PropertyContext):
    """Scores of magnitude ~1e4 (float32/float64 only: float16 cannot hold the products)."""
    dtypes = [d for d in ctx.dtypes() if d in ("float32", "float64")]
    if not dtypes:
        return ctx.not_applicable("logits of 1e4 need float32 or float64 among the dtypes")
    runs, fail = judged_runs(ctx, lambda: _large_logits(ctx), dtypes)
    if fail:
        if fail.fault == "output:non_finite":
            return ctx.failed("logits of 1e4 overflow: NaN or inf in the output (exp without subtracting the "
                              "row maximum)", fail.measurements, fail.example, "softmax:no_max_subtraction")
        return fail
    ms = [run.measurement for run in runs]
    return ctx.passed("finite and as ours with scores ~1e4" + worst(ms), ms)
