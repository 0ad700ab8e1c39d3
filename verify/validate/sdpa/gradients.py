"""Gradients through the candidate's own autograd (torch) against our analytic backward:
dq, dk, dv and d_bias separately, each by the rule with K_GRADIENT."""

from __future__ import annotations

import numpy as np

import numerics
from verify.validate.context import PropertyContext
from verify.validate.registry import register
from verify.validate.sdpa.checks import delivered, judged, worst
from verify.validate.sdpa.common import fmt, judge
from verify.validate.sdpa.problem import Problem, draw, mask_with_keys, round_to
from verify.validate.tolerance import K_GRADIENT


def _ours(p: Problem, d_out: np.ndarray, dtype: str) -> dict[str, np.ndarray]:
    work = "float32" if dtype in ("float16", "bfloat16") else dtype
    cast = (lambda a: None if a is None else np.asarray(a, dtype=work))
    g = numerics.attention_backward(cast(p.q), cast(p.k), cast(p.v), cast(d_out), mask=p.mask, bias=cast(p.bias),
                                    causal=p.causal or False, scale=p.scale, enable_gqa=p.enable_gqa)
    out = {"q": g.q, "k": g.k, "v": g.v}
    if p.bias is not None:
        out["bias"] = g.bias
    return {key: round_to(np.asarray(val, dtype=np.float64), dtype) for key, val in out.items()}


@register("sdpa", "gradients", needs=("gradients",), title="dq, dk, dv, d_bias as our backward")
def gradients(ctx: PropertyContext):
    """Autograd gradients of sum(d_out * out) against numerics.attention_backward in float64."""
    c = ctx.candidate
    ms = []
    for dtype in ctx.dtypes():
        q, k, v = draw(ctx.rng, (2,), 2, 7, 10, 8, 5)
        mask = mask_with_keys(ctx.rng, (2, 2, 7, 10)) if c.supports("mask") else None
        if mask is not None and c.supports("causal"):
            mask[..., 0] = True  # with causal, every row keeps key 0: no empty rows (their convention varies)
        p = Problem(q, k, v,
                    mask=mask,
                    bias=ctx.rng.standard_normal((2, 2, 7, 10)) if c.supports("bias") else None,
                    causal="top_left" if c.supports("causal") else None).rounded(dtype)
        d_out = round_to(ctx.rng.standard_normal((2, 2, 7, 5)), dtype)
        forward, wrong = judged(ctx, p, dtype)
        if wrong:  # a backward of a different function is not judged against ours
            return ctx.not_applicable(f"not judged: the forward differs from ours ({dtype}: {wrong.diagnosis}); "
                                      f"see the other properties")
        low = delivered(ctx, dtype)  # the precision the forward delivers: the gradients are judged by its rule
        got = ctx.gradients(p.q, p.k, p.v, d_out=d_out, dtype=dtype, **p.options())
        exact = _ours(p, d_out, "float64")
        plain = _ours(p, d_out, low)
        for name in exact:
            g = got.get(name)
            if g is None or g.shape != exact[name].shape:
                return ctx.failed(f"d{name} has shape {None if g is None else g.shape}, expected {exact[name].shape}",
                                  ms, p.describe(dtype), f"gradient:d{name}")
            label = f"d{name} ({dtype})" if low == dtype else f"d{name} ({dtype}, judged as the {low} it delivers)"
            m = judge(label, g, plain[name], exact[name], low, K_GRADIENT, p.score_magnitude())
            ms.append(m)
            if not m.ok and not np.any(g) and np.any(exact[name]):
                return ctx.failed(f"d{name} is zero: no gradient reaches {name} (a .detach() or a computation "
                                  f"outside autograd on its path?)", ms, p.describe(dtype), f"gradient:d{name}_zero")
            if not m.ok:
                what = "NaN or inf in " if not np.all(np.isfinite(g)) else ""
                return ctx.failed(f"{what}d{name} differs from our backward (error {fmt(m.error)} vs bound "
                                  f"{fmt(m.bound)})", ms, p.describe(dtype), f"gradient:d{name}")
    return ctx.passed("dq, dk, dv" + (", d_bias" if c.supports("bias") else "") + " as ours" + worst(ms), ms)
