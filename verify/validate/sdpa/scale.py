"""The scale the candidate really uses, estimated by fitting and named."""

from __future__ import annotations

from verify.validate.context import PropertyContext
from verify.validate.registry import register
from verify.validate.result import Measurement
from verify.validate.sdpa import scale_fit
from verify.validate.sdpa.checks import delivered
from verify.validate.sdpa.common import bound, fmt
from verify.validate.sdpa.problem import Problem, draw

#: Widths chosen so the usual wrong scales all differ: d_k = 16, d_v = 9, H = 4 (d_model = 64).
HEADS, N, M, DK, DV = 4, 6, 11, 16, 9


@register("sdpa", "scale", title="the scale is 1/sqrt(d_k) (or the one passed)")
def scale(ctx: PropertyContext):
    """Fit the scale s for which our attention reproduces the candidate's output; name it."""
    dtype = "float64" if "float64" in ctx.dtypes() else ctx.dtypes()[0]
    q, k, v = draw(ctx.rng, (2,), HEADS, N, M, DK, DV)
    problems = [Problem(q, k, v)]
    if ctx.candidate.supports("scale"):
        problems.append(Problem(q, k, v, scale=0.3))
    found, measurements = [], []
    low = delivered(ctx, dtype)  # a candidate computing in lower precision is fitted by that precision's rule
    for p in problems:
        p = p.rounded(dtype)
        out = ctx.call(p.q, p.k, p.v, dtype=dtype, **p.options()).out
        tol = max(4 * bound(p, low), 1e-6)
        if out.shape != p.reference().shape:
            return ctx.failed(f"the output has shape {out.shape}, expected {p.reference().shape}", (), p.describe(dtype),
                              "output:shape")
        s, residual = scale_fit.fit(p, out)
        named = scale_fit.name_scale(p, s, residual, scale_fit.match_bound(p, low))
        passed_as = "default" if p.scale is None else f"scale={p.scale}"
        m = Measurement(f"scale ({passed_as}) / expected - 1", abs(named.ratio - 1), named.match)
        measurements.append(m)
        if residual > tol:
            return ctx.failed(f"no single scale reproduces the output ({passed_as}: best fit {s:.4g} leaves a relative "
                              f"error {fmt(residual)} > {fmt(tol)}): the fault is not (only) the scale",
                              measurements, p.describe(dtype), None)
        if not named.correct:
            words = named.words() + ("" if p.scale is None else f" (with scale={p.scale} passed)")
            code = named.code if p.scale is None else "scale:ignores_argument"
            if p.scale is not None and abs(s * DK ** 0.5 - 1) <= named.match:
                words = f"scale={p.scale} is ignored: the function uses 1/sqrt(d_k) = {s:.6g} regardless"
            return ctx.failed(words, measurements, p.describe(dtype), code)
        found.append(f"{passed_as}: {s:.6g}")
    return ctx.passed("fitted scale " + ", ".join(found) + f" (d_k = {DK}, d_v = {DV}, H = {HEADS})", measurements)
