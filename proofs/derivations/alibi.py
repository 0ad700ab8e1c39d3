"""Derivation: ALiBi is a bias linear in the query-key distance, with the paper's head slopes.

ALiBi (Press, Smith and Lewis, arXiv 2108.12409) adds ``-slope_h |j - i - delta|`` to head
h's score of query i and key j (delta = M - N under bottom-right alignment, else 0). The
slopes come from the paper's reference code ``get_slopes``::

    def get_slopes(n):
        def get_slopes_power_of_2(n):
            start = 2 ** (-2 ** -(math.log2(n) - 3))
            ratio = start
            return [start * ratio**i for i in range(n)]
        if math.log2(n).is_integer():
            return get_slopes_power_of_2(n)
        closest_power_of_2 = 2 ** math.floor(math.log2(n))
        return (get_slopes_power_of_2(closest_power_of_2)
                + get_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2])

The derivation puts them in closed form (symbolic in the exponent k of H = 2^k, and in the
head index), shows that the extra heads' slopes are geometric midpoints of consecutive
power-of-two slopes, that the bias depends on (i, j) only through j - i and is linear in
the distance, and that under the causal mask it is equivalent (softmax shift invariance) to
the paper's implementation ``slope_h * j``; without the mask it is not (a counterexample).
A last step compares :func:`numerics.alibi_slopes`, :func:`numerics.alibi_bias` and attention
with the bias against these forms.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import sympy as sp

from ..derivation import AtSizes, Custom, Derivation, Step, Symbolic
from ._registry import register

__all__ = ["alibi_bias_derivation", "build_alibi_derivation", "paper_get_slopes", "slopes_closed_form",
           "numeric_comparison"]

#: head counts H of the exact slope checks and of the numeric comparison.
HEADS = list(range(1, 65))
#: (N, M) of the explicit softmax checks (row by row).
SIZES = [(1, 1), (2, 2), (3, 3), (2, 4), (4, 3)]
NUMERIC_TOL = 1e-12

Slopes = Callable[[int], list[sp.Expr]]


def paper_get_slopes(n: int) -> list[float]:
    """The ALiBi paper's ``get_slopes`` (ofirpress/attention_with_linear_biases), transcribed as is."""

    def power_of_2(n: int) -> list[float]:
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return power_of_2(n)
    closest = 2 ** math.floor(math.log2(n))
    return power_of_2(closest) + paper_get_slopes(2 * closest)[0::2][: n - closest]


def slopes_closed_form(h: int) -> list[sp.Expr]:
    """Exact slopes for H heads: ``2^(-8 j / P)``, j = 1..P, then ``2^(-4 (2 m + 1) / P)``, m = 0..H-P-1,
    with P the largest power of 2 not above H (P = H for a power of 2)."""
    p = 1 << (h.bit_length() - 1)
    return ([sp.Integer(2) ** sp.Rational(-8 * j, p) for j in range(1, p + 1)]
            + [sp.Integer(2) ** sp.Rational(-4 * (2 * m + 1), p) for m in range(h - p)])


def numeric_comparison(slopes: Slopes = slopes_closed_form, seed: int = 20261129) -> dict[str, float]:
    """Max differences between numerics' ALiBi and the closed forms.

    ``slopes_vs_numerics`` and ``slopes_vs_paper`` are relative, in units of 2^-52; the others
    absolute: ``bias`` (numerics.alibi_bias against -slope |j - i - delta|, three alignments)
    and ``attention_shift`` (causal attention with the ALiBi bias against the bias slope * j).
    """
    from numerics import alibi_bias, alibi_slopes, scaled_dot_product_attention

    ulp = 2.0**-52
    worst = {"slopes_vs_numerics_ulp": 0.0, "slopes_vs_paper_ulp": 0.0, "bias": 0.0, "attention_shift": 0.0}
    for h in HEADS:
        exact = np.array([float(s) for s in slopes(h)])
        num, paper = np.asarray(alibi_slopes(h)), np.asarray(paper_get_slopes(h))
        if exact.shape != num.shape:
            return {**worst, "slopes_vs_numerics_ulp": math.inf}
        worst["slopes_vs_numerics_ulp"] = max(worst["slopes_vs_numerics_ulp"], float(np.max(np.abs(num / exact - 1))) / ulp)
        worst["slopes_vs_paper_ulp"] = max(worst["slopes_vs_paper_ulp"], float(np.max(np.abs(paper / exact - 1))) / ulp)
    rng = np.random.default_rng(seed)
    for h, n, m in ((3, 4, 6), (8, 5, 5), (5, 6, 3)):
        exact = np.array([float(s) for s in slopes(h)])[:, None, None]
        i, j = np.arange(n)[:, None], np.arange(m)[None, :]
        for causal in (False, "top_left", "bottom_right"):
            delta = m - n if causal == "bottom_right" else 0
            got = np.asarray(alibi_bias(h, n, m, causal=causal))
            worst["bias"] = max(worst["bias"], float(np.max(np.abs(got + exact * np.abs(j - i - delta)))))
            if not causal:
                continue
            q, k, v = rng.standard_normal((h, n, 4)), rng.standard_normal((h, m, 4)), rng.standard_normal((h, m, 2))
            plain = scaled_dot_product_attention(q, k, v, bias=got, causal=causal)
            shifted = scaled_dot_product_attention(q, k, v, bias=np.broadcast_to(exact * j, (h, n, m)), causal=causal)
            worst["attention_shift"] = max(worst["attention_shift"], float(np.max(np.abs(plain - shifted))))
    return worst


def _softmax(row: list[sp.Expr]) -> list[sp.Expr]:
    total = sum(sp.exp(x) for x in row)
    return [sp.exp(x) / total for x in row]


def _causal_rows(n: int, m: int) -> list:
    """Row by row, keys j <= i + M - N (bottom-right; = top-left when N = M): softmax(s - a |j - i - delta|)
    minus softmax(s + a j), symbolic scores s and slope a."""
    a = sp.Symbol("a", positive=True)
    s = sp.symbols(f"s_1:{m + 1}", real=True)
    delta = m - n
    out = []
    for i in range(n):
        keys = [j for j in range(m) if j <= i + delta]
        if not keys:
            continue
        alibi = _softmax([s[j] - a * abs(j - i - delta) for j in keys])
        linear = _softmax([s[j] + a * j for j in keys])
        out += [sp.expand(x - y) for x, y in zip(alibi, linear)]
    return out


def _bidirectional_counterexample() -> tuple[bool, str]:
    """Without the mask (N = M = 3, row i = 1, scores 0, slope 1): -|j - i| and j give different softmaxes."""
    alibi = _softmax([-sp.Integer(abs(j - 1)) for j in range(3)])
    linear = _softmax([sp.Integer(j) for j in range(3)])
    differ = [sp.N(x - y, 10) for x, y in zip(alibi, linear)]
    ok = any(abs(d) > sp.Float("1e-3") for d in differ)
    return ok, f"weights differ by {differ}"


def build_alibi_derivation(slopes: Slopes = slopes_closed_form) -> Derivation:
    """The derivation for the slope rule ``slopes(H)`` (the registered one: :func:`slopes_closed_form`).

    Tests pass a wrong rule (e.g. a geometric sequence for every H, or the wrong interpolation)
    and see the slope lines fail.
    """
    results: dict = {"heads": [HEADS[0], HEADS[-1]], "explicit sizes (N, M)": [list(s) for s in SIZES],
                     "tolerance": NUMERIC_TOL}
    k, h, m, p = sp.symbols("k h m P", integer=True, positive=True)
    i, j, t, delta = sp.symbols("i j t delta", integer=True)
    a = sp.Symbol("a", positive=True)
    before = sp.Symbol("x", nonpositive=True, integer=True)  # j - i - delta <= 0: the keys a causal mask allows
    two = sp.Integer(2)
    start = two ** (-two ** -(k - 3))  # the code's start for n = 2^k (log2 n = k)

    def bias(x: sp.Expr, y: sp.Expr) -> sp.Expr:
        return -a * sp.Abs(y - x - delta)

    def paper_match() -> tuple[bool, str]:
        """slopes(H) against the paper's get_slopes evaluated in exact arithmetic (log2 exact for powers of 2)."""
        for heads in HEADS:
            closest = 1 << (heads.bit_length() - 1)

            def geometric(n: int) -> list[sp.Expr]:
                st = two ** (-two ** -(sp.Integer(n.bit_length() - 1) - 3))
                return [st * st**e for e in range(n)]

            reference = geometric(closest) + (geometric(2 * closest)[0::2][: heads - closest] if heads != closest else [])
            got = slopes(heads)
            if len(got) != heads or any(sp.simplify(x - y) != 0 for x, y in zip(got, reference)):
                return False, f"differs from get_slopes at H = {heads}: {got[:4]}... vs {reference[:4]}..."
        return True, f"equal, exactly, for H = {HEADS[0]}..{HEADS[-1]}"

    def midpoints() -> tuple[bool, str]:
        """The extra heads' slopes are geometric means of consecutive slopes of P heads (slope_0 = 1)."""
        for heads in HEADS:
            pw = 1 << (heads.bit_length() - 1)
            base = [sp.Integer(1), *slopes(heads)[:pw]]
            extra = slopes(heads)[pw:]
            for mm, s in enumerate(extra):
                if sp.simplify(s**2 - base[mm] * base[mm + 1]) != 0:
                    return False, f"H = {heads}, extra slope {mm}: {s} is not sqrt({base[mm]} * {base[mm + 1]})"
        return True, f"H = {HEADS[0]}..{HEADS[-1]}"

    def numeric() -> tuple[bool, str]:
        worst = numeric_comparison(slopes)
        results["max_difference"] = worst
        ok = (worst["slopes_vs_numerics_ulp"] <= 1 and worst["slopes_vs_paper_ulp"] <= 16
              and worst["bias"] <= NUMERIC_TOL and worst["attention_shift"] <= NUMERIC_TOL)
        return ok, (", ".join(f"{key} {v:.2g}" for key, v in worst.items())
                    + f" (required: numerics <= 1 ulp, paper's float code <= 16 ulp, others <= {NUMERIC_TOL:g})")

    steps = [
        Step.define(r"b_h(i, j)", r"-\mathrm{slope}_h\, \lvert j - i - \delta \rvert",
                    r"query $i$, key $j$, head $h$; $\delta = M - N$ under bottom-right alignment, else 0; added "
                    r"to the scores as a bias"),
        Step(r"\mathrm{start} = 2^{-2^{-(k - 3)}}", r"2^{-8/2^k} = 2^{-8/H}",
             r"the code's first slope for $H = 2^k$ heads: $-2^{-(\log_2 H - 3)} = -8/H$ (symbolic $k$)",
             Symbolic(expr=start - two ** (-8 / two**k))),
        Step(r"\mathrm{slope}_h = \mathrm{start} \cdot \mathrm{ratio}^{h-1}", r"2^{-8h/H}",
             r"ratio = start: a geometric sequence, $\mathrm{slope}_h = 2^{-8h/H}$, $h = 1, \dots, H$ (symbolic "
             r"$h$, $k$)", Symbolic(expr=two ** (-8 / two**k) * (two ** (-8 / two**k)) ** (h - 1)
                                    - two ** (-8 * h / two**k))),
        Step(r"\text{get\_slopes}(2P)[2m]", r"2^{-8(2m+1)/(2P)} = 2^{-4(2m+1)/P}",
             r"$H$ not a power of 2, $P$ the largest power of 2 below: the first $P$ slopes of $P$ heads, then "
             r"every other slope of $2P$ heads, $m = 0, \dots, H - P - 1$ (0-based index $2m$; symbolic $m$, $P$)",
             Symbolic(expr=two ** (-8 * (2 * m + 1) / (2 * p)) - two ** (-4 * (2 * m + 1) / p))),
        Step(r"2^{-4(2m+1)/P}", r"\sqrt{2^{-8m/P}\, 2^{-8(m+1)/P}}",
             r"the interpolation: each extra slope is the geometric mean of two consecutive slopes of $P$ heads "
             r"($2^{-8m/P}$, with $2^0 = 1$ for $m = 0$), so it falls between them (symbolic $m$, $P$)",
             Symbolic(expr=two ** (-4 * (2 * m + 1) / p) - sp.sqrt(two ** (-8 * m / p) * two ** (-8 * (m + 1) / p)),
                      prepare=lambda e: sp.powsimp(sp.expand_power_base(e, force=True), force=True))),
        Step(r"\mathrm{slopes}(H)", r"\text{get\_slopes}(H)",
             r"the closed forms above against the paper's code evaluated exactly", rel=r"=",
             check=Custom(paper_match, f"exact, H={HEADS[0]}..{HEADS[-1]}")),
        Step(r"\mathrm{slope}_{P+m+1}^2", r"\mathrm{slope}_{m}\, \mathrm{slope}_{m+1}",
             r"the midpoint property on the slope lists themselves ($\mathrm{slope}_0 = 1$)",
             Custom(midpoints, f"exact, H={HEADS[0]}..{HEADS[-1]}")),
        Step(r"b_h(i + t, j + t)", r"b_h(i, j)", r"a common shift of query and key positions changes nothing: "
             r"the bias depends on $(i, j)$ only through $j - i$ (symbolic)",
             Symbolic(expr=bias(i + t, j + t) - bias(i, j))),
        Step(r"b_h(i, j) \text{ for } j \le i + \delta", r"\mathrm{slope}_h\, (j - i - \delta)",
             r"on the keys a causal mask allows, the bias is linear in $j$ with slope $\mathrm{slope}_h$ "
             r"($a = \mathrm{slope}_h$; on the other side of the diagonal, the slope is $-a$)",
             Symbolic(expr=(bias(i, j) - a * (j - i - delta)).subs(j, i + delta + before))),
        Step(r"\operatorname{softmax}_j\bigl(s_j + b_h(i, j)\bigr)", r"\operatorname{softmax}_j(s_j + a\, j)",
             r"the two differ by $-a(i + \delta)$, constant along the row: with the causal mask, ALiBi equals the "
             r"paper's implementation $a j$ (softmax shift invariance); explicit rows, symbolic $s$, $a$",
             AtSizes(_causal_rows, SIZES, "(N,M)")),
        Step(r"\operatorname{softmax}_j\bigl(-a \lvert j - i \rvert\bigr)", r"\operatorname{softmax}_j(a\, j)",
             r"without the mask the bias is not linear in $j$ and the two differ (counterexample)", rel=r"\ne",
             check=Custom(_bidirectional_counterexample, "exact counterexample")),
        Step(r"\text{\ttfamily numerics.alibi\_slopes, alibi\_bias}", r"\text{the forms above}",
             r"slopes for $H$ = 1..64 against the exact forms (and the paper's float code); biases for three "
             r"alignments; causal attention with the ALiBi bias against the bias $a j$ (top-left and bottom-right)",
             Custom(numeric, "numeric cross-check (float64)")),
    ]
    return Derivation(
        name="alibi-bias",
        title="ALiBi: a bias linear in distance, and the paper's slopes",
        statement=(r"For $H = 2^k$ heads the paper's slopes are $2^{-8h/H}$, $h = 1..H$ (symbolic $k$, $h$); "
                   r"otherwise the $P$ slopes of $P = 2^{\lfloor \log_2 H \rfloor}$ heads followed by "
                   r"$2^{-4(2m+1)/P}$, $m = 0..H-P-1$, geometric midpoints of consecutive slopes (closed forms "
                   r"symbolic; equal to the code at $H$ = 1..64). The bias $-\mathrm{slope}_h |j - i - \delta|$ "
                   r"depends only on $j - i$, is linear in $j$ on each side of the diagonal, and under the causal "
                   r"mask gives the same attention as $\mathrm{slope}_h\, j$."),
        steps=steps,
        assumptions=["slopes positive; integer positions",
                     "the slope lists are compared with the paper's code at H = 1..64 only (the closed forms are "
                     "symbolic); softmax equivalence checked on explicit rows (N, M) = "
                     + ", ".join(str(s) for s in SIZES)],
        results=results,
    )


@register("alibi-bias", "ALiBi: a bias linear in distance, and the paper's slopes")
def alibi_bias_derivation() -> Derivation:
    """ALiBi's bias depends only on j - i, is linear in distance; the paper's slopes in closed form."""
    return build_alibi_derivation()
