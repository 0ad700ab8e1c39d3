"""Small problems in float64 against the mpmath reference (numerics.reference), bound ABS64."""

from __future__ import annotations

from numerics import reference as mp_reference

from verify.validate.context import PropertyContext
from verify.validate.registry import register
from verify.validate.sdpa.agreement import diagnose, rerunner
from verify.validate.sdpa.checks import worst
from verify.validate.sdpa.common import fmt
from verify.validate.sdpa.problem import Problem, draw, mask_with_keys
from verify.validate.tolerance import absolute


@register("sdpa", "mpmath", title="float64 output within 1e-12 of mpmath at small sizes")
def mpmath_agreement(ctx: PropertyContext):
    """float64 candidate on three small problems (plain, masked, causal when accepted) against mpmath."""
    if "float64" not in ctx.dtypes():
        return ctx.not_applicable("needs float64 among the dtypes")
    c = ctx.candidate
    q, k, v = draw(ctx.rng, (), 2, 3, 5, 4, 3)
    problems = [Problem(q, k, v)]
    if c.supports("mask"):
        problems.append(Problem(q, k, v, mask=mask_with_keys(ctx.rng, (2, 3, 5))))
    if c.supports("causal"):
        problems.append(Problem(q, k, v, causal="top_left"))
    ms = []
    for p in problems:
        out = ctx.call(p.q, p.k, p.v, dtype="float64", **p.options()).out
        exact = mp_reference.to_float64(mp_reference.attention(p.q, p.k, p.v, mask=p.mask, causal=p.causal or False))
        if out.shape != exact.shape:
            return ctx.failed(f"the output has shape {out.shape}, expected {exact.shape}", ms, p.describe("float64"),
                              "output:shape")
        m = absolute(out, exact, what="float64 vs mpmath")
        ms.append(m)
        if not m.ok:
            words, code = diagnose(p, "float64", out, m.bound, rerunner(ctx, "float64"))
            return ctx.failed(f"float64 output differs from mpmath by {fmt(m.error)} (bound {fmt(m.bound)}): {words}",
                              ms, p.describe("float64"), code)
    return ctx.passed(f"{len(problems)} small problems" + worst(ms), ms)
