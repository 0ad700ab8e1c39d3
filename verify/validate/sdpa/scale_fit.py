"""Estimating the scale a candidate really uses, and naming it.

The fit: the scale s that makes our attention with ``scale=s`` closest to the candidate's output
(relative error), found by a scan over s in [1e-4, 1e2] on a log grid and refined with
``scipy.optimize.minimize_scalar`` (bounded, in log s) around the best grid point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from verify.validate.sdpa.problem import Problem
from verify.validate.tolerance import K_OUTPUT, UNIT_ROUNDOFF, relative_error

#: A fitted scale within this relative distance of a named one is that one (in float64 and float32;
#: lower precisions widen it, see :func:`match_bound`).
MATCH = 2e-3


@dataclass(frozen=True)
class ScaleFit:
    """The fitted scale, its residual, and the name it matched (None: a stray factor)."""

    scale: float
    residual: float
    expected: float
    name: str | None
    code: str | None
    match: float = MATCH

    @property
    def ratio(self) -> float:
        return self.scale / self.expected

    @property
    def correct(self) -> bool:
        return abs(self.ratio - 1) <= self.match

    def words(self) -> str:
        if self.correct:
            return f"scale {self.scale:.6g} = the expected {self.expected:.6g}"
        if self.name:
            return f"the scale is {self.name}: fitted {self.scale:.6g}, expected {self.expected:.6g}"
        return (f"a stray factor {self.ratio:.4g} on the scale: {self.scale:.6g} where {self.expected:.6g} "
                f"was expected")


def fit(p: Problem, out: np.ndarray) -> tuple[float, float]:
    """(scale, residual): the scale whose attention is closest to ``out``; residual is the relative error."""
    rows = np.all(np.isfinite(out), axis=-1)
    if not rows.any():
        return float("nan"), float("inf")

    def err(log_s: float) -> float:
        return relative_error(out[rows], p.reference(scale=math.exp(log_s))[rows])

    grid = np.linspace(math.log(1e-4), math.log(1e2), 121)
    errors = [err(g) for g in grid]
    i = int(np.argmin(errors))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    best = minimize_scalar(err, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
    s, e = (float(math.exp(best.x)), float(best.fun)) if best.fun <= errors[i] else (float(math.exp(grid[i])), errors[i])
    # The bounded search stops near 1e-9; a named scale within MATCH is tried exactly.
    expected = p.scale if p.scale is not None else 1 / math.sqrt(p.q.shape[-1])
    for value in (expected, *(v for _, v in named_scales(p).values())):
        if abs(s / value - 1) <= MATCH:
            e_named = err(math.log(value))
            if e_named <= e:
                s, e = value, e_named
    return s, float(e)


def named_scales(p: Problem) -> dict[str, tuple[str, float]]:
    """The usual wrong scales for the problem's widths: code -> (words, value)."""
    dk, dv = p.q.shape[-1], p.v.shape[-1]
    heads = p.q.shape[-3] if p.q.ndim >= 3 else 1
    return {
        "scale:none": ("none (scale 1: the 1/sqrt(d_k) is missing)", 1.0),
        "scale:1/d_k": (f"1/d_k = 1/{dk}", 1.0 / dk),
        "scale:1/sqrt(d_model)": (f"1/sqrt(d_model) = 1/sqrt(H d_k) = 1/sqrt({heads * dk})", 1 / math.sqrt(heads * dk)),
        "scale:1/sqrt(H)": (f"1/sqrt(H) = 1/sqrt({heads})", 1 / math.sqrt(heads)),
        "scale:1/sqrt(d_v)": (f"1/sqrt(d_v) = 1/sqrt({dv})", 1 / math.sqrt(dv)),
        "scale:inverted": (f"inverted: sqrt(d_k) = sqrt({dk}) instead of 1/sqrt(d_k)", math.sqrt(dk)),
    }


def match_bound(p: Problem, dtype: str) -> float:
    """How far a correct implementation's fitted scale may sit from the true one in ``dtype`` (relative):
    the tolerance rule applied to the fit, k (|fit(plain) / expected - 1| + u(dtype)), at least MATCH.

    ``p`` is the problem rounded to ``dtype``. Rounding the output moves the fitted scale by about u
    (bfloat16's 2^-8 = 0.0039, far above MATCH), so a fixed MATCH fails correct low-precision code.
    """
    if dtype == "float64":
        return MATCH
    expected = p.scale if p.scale is not None else 1 / math.sqrt(p.q.shape[-1])
    s_plain, _ = fit(p, p.plain(dtype))
    return max(MATCH, K_OUTPUT * (abs(s_plain / expected - 1) + UNIT_ROUNDOFF[dtype]))


def name_scale(p: Problem, scale: float, residual: float, match: float = MATCH) -> ScaleFit:
    """Name the fitted ``scale`` against the expected one (``p.scale``, else 1/sqrt(d_k)); ``match``
    is the relative distance within which two scales are the same (see :func:`match_bound`)."""
    expected = p.scale if p.scale is not None else 1 / math.sqrt(p.q.shape[-1])
    if abs(scale / expected - 1) <= match:
        return ScaleFit(scale, residual, expected, None, None, match)
    for code, (words, value) in named_scales(p).items():
        if abs(scale / value - 1) <= match and abs(value / expected - 1) > match:
            return ScaleFit(scale, residual, expected, words, code, match)
    return ScaleFit(scale, residual, expected, None, "scale:stray_factor", match)
