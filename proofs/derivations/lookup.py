"""Derivation 7: softmax attention is a soft lookup that tends to the hard argmax lookup.

With scores z_1 > z_j (j >= 2) and scale beta -> oo, the weights tend to (1, 0, ..., 0)
and the output to v_1. Written with the gaps g_j = z_1 - z_j > 0 the weights are
1 / (1 + sum_j e^{-beta g_j}) and e^{-beta g_j} / (1 + ...), whose limits SymPy computes
(the limit of the original form needs the sign of z_1, which SymPy does not know). When
the maximum is attained m times, the output tends to the average of the m tied values.
"""

from __future__ import annotations

import sympy as sp

from ..derivation import AtSizes, Custom, Derivation, NonNegative, Step, canonical_sums, is_zero, split_sums
from ._registry import register

__all__ = ["soft_lookup"]

BETA = sp.Symbol("beta", positive=True)
SIZES = range(2, 5)
TIES = [(2, 2), (3, 2), (3, 3), (4, 2), (4, 3)]


def _weights(n: int, tied: int = 1) -> tuple[list, list, sp.Symbol, list]:
    """Weights written with the original scores, and the substitution to gaps.

    z_1 = ... = z_tied is the maximum; g_j = z_1 - z_j > 0 for the others.
    """
    z = list(sp.symbols(f"z_1:{n + 1}", real=True))
    g = list(sp.symbols(f"g_{tied + 1}:{n + 1}", positive=True))
    e = [sp.exp(BETA * v) for v in z]
    total = sum(e)
    weights = [x / total for x in e]
    sub = {z[j]: z[0] for j in range(1, tied)}
    sub.update({z[j]: z[0] - g[j - tied] for j in range(tied, n)})
    return weights, z, sub, g


def _gap_form(n: int) -> list:
    """softmax(beta z) - the gap form, zero after substituting z_j = z_1 - g_j."""
    weights, z, sub, g = _weights(n)
    rest = sum(sp.exp(-BETA * x) for x in g)
    gap = [1 / (1 + rest)] + [sp.exp(-BETA * x) / (1 + rest) for x in g]
    return [w.subs(sub) - gw for w, gw in zip(weights, gap)]


def _gap_weights(n: int, tied: int = 1) -> list:
    g = list(sp.symbols(f"g_{tied + 1}:{n + 1}", positive=True))
    rest = sum(sp.exp(-BETA * x) for x in g)
    return [1 / (tied + rest)] * tied + [sp.exp(-BETA * x) / (tied + rest) for x in g]


def _weight_limits(n: int) -> list:
    w = _gap_weights(n)
    target = [1] + [0] * (n - 1)
    return [sp.limit(x, BETA, sp.oo) - t for x, t in zip(w, target)]


def _output_limit(n: int) -> sp.Expr:
    v = sp.symbols(f"v_1:{n + 1}", real=True)
    out = sum(wj * vj for wj, vj in zip(_gap_weights(n), v))
    return sp.limit(out, BETA, sp.oo) - v[0]


def _tied_gap_form(n: int, tied: int) -> list:
    weights, z, sub, g = _weights(n, tied)
    return [w.subs(sub) - gw
            for w, gw in zip(weights, _gap_weights(n, tied))]


def _tied_limit(n: int, tied: int) -> sp.Expr:
    v = sp.symbols(f"v_1:{n + 1}", real=True)
    out = sum(wj * vj for wj, vj in zip(_gap_weights(n, tied), v))
    return sp.limit(out, BETA, sp.oo) - sum(v[:tied]) / tied


TIED = sp.Symbol("m", integer=True, positive=True)  # how many scores share the maximum


def _gap_form_symbolic(tied: sp.Expr = sp.Integer(1)) -> tuple[bool, str]:
    """w_i (i <= m) and w_j (j > m) in gap form for symbolic n (and m): z_1 = ... = z_m is the maximum,
    so the normaliser is m e^{beta z_1} + sum_{k=m+1}^n e^{beta z_k}."""
    z = sp.IndexedBase("z", real=True)
    j, k, n = sp.symbols("j k n", integer=True, positive=True)
    total = tied * sp.exp(BETA * z[1]) + sp.Sum(sp.exp(BETA * z[k]), (k, tied + 1, n))
    gaps = tied + sp.Sum(sp.exp(-BETA * (z[1] - z[k])), (k, tied + 1, n))
    notes = []
    for name, weight, gap in (("w_i, i <= m", sp.exp(BETA * z[1]) / total, 1 / gaps),
                              ("w_j, j > m", sp.exp(BETA * z[j]) / total, sp.exp(-BETA * (z[1] - z[j])) / gaps)):
        ok, note = is_zero(sp.together(split_sums(sp.expand(weight - gap, power_exp=True))))
        if not ok:
            return False, f"{name}: {note}"
        notes.append(f"{name}: {note}")
    return True, "; ".join(notes) + f" (symbolic n, m = {tied})"


def _tail_sum_bound(tied: sp.Expr = sp.Integer(1)) -> tuple[bool, str]:
    """sum_{j=m+1}^n e^{-beta g_j} <= (n-m) e^{-beta g}, g = min_j g_j, for symbolic n (and m).

    With g_j = g + h_j (h_j >= 0) the difference is sum_j e^{-beta g}(1 - e^{-beta h_j}) (checked
    by splitting the sums), and each summand is >= 0: e^{-beta g} > 0, and 1 - e^{-t} is 0 at
    t = 0 with derivative e^{-t} > 0, so it is >= 0 for t = beta h_j >= 0.
    """
    g, t = sp.Symbol("g", positive=True), sp.Symbol("t", nonnegative=True)
    h = sp.IndexedBase("h", nonnegative=True)
    j, n = sp.symbols("j n", integer=True, positive=True)
    bound_minus_sum = (n - tied) * sp.exp(-BETA * g) - sp.Sum(sp.exp(-BETA * (g + h[j])), (j, tied + 1, n))
    witness = sp.Sum(sp.exp(-BETA * g) * (1 - sp.exp(-BETA * h[j])), (j, tied + 1, n))
    difference = canonical_sums(sp.expand(split_sums(bound_minus_sum - witness).doit()))
    one_minus = 1 - sp.exp(-t)
    facts = {"identity": difference == 0, "e^{-beta g} > 0": sp.exp(-BETA * g).is_positive is True,
             "1 - e^{-t} = 0 at t = 0": one_minus.subs(t, 0) == 0,
             "d/dt (1 - e^{-t}) > 0": sp.diff(one_minus, t).is_positive is True}
    failed = [k for k, ok in facts.items() if not ok]
    return not failed, (f"bound - sum = sum_j e^{{-beta g}}(1 - e^{{-beta h_j}}) for symbolic n, m = {tied}; "
                        + ("; ".join(f"{k}: ok" for k in facts) if not failed else f"failed: {failed}"))


def _rate_limit(tied: sp.Expr = sp.Integer(1)) -> tuple[bool, str]:
    """(n - m) e^{-beta g} -> 0 as beta -> oo, for symbolic n (and m) and g > 0."""
    g = sp.Symbol("g", positive=True)
    n = sp.Symbol("n", integer=True, positive=True)
    value = sp.limit((n - tied) * sp.exp(-BETA * g), BETA, sp.oo)
    return value == 0, f"SymPy: lim (n - {tied}) e^(-beta g) = {value} (symbolic n, g > 0)"


def _tied_general() -> tuple[bool, str]:
    """The three facts above for m tied maxima, m symbolic."""
    parts = [f(TIED) for f in (_gap_form_symbolic, _tail_sum_bound, _rate_limit)]
    return all(ok for ok, _ in parts), " | ".join(note for _, note in parts)


@register("soft-lookup", "Softmax attention tends to the hard argmax lookup")
def soft_lookup() -> Derivation:
    """beta -> oo, unique maximum: weights -> e_1 (symbolic n); output -> v_1 (limits checked at n = 2..4); ties average."""
    s = sp.Symbol("S", nonnegative=True)
    w1 = 1 / (1 + s)
    steps = [
        Step.define(r"w_j(\beta)", r"\frac{e^{\beta z_j}}{\sum_{k=1}^{n} e^{\beta z_k}},\quad a(\beta) = \sum_j w_j(\beta)\, v_j",
                    r"attention with scores $\beta z$, $\beta > 0$ the scale (inverse temperature)"),
        Step.assume(r"z_1", r"z_j \quad (j \ge 2)", r"a unique maximum; write $g_j = z_1 - z_j > 0$", rel=">"),
        Step(r"w_1(\beta)", r"\frac{1}{1 + \sum_{j \ge 2} e^{-\beta g_j}},\quad "
                            r"w_j(\beta) = \frac{e^{-\beta g_j}}{1 + \sum_{k \ge 2} e^{-\beta g_k}}",
             r"divide by $e^{\beta z_1}$ (symbolic $n$)", Custom(_gap_form_symbolic, "symbolic (symbolic n)")),
        Step(r"\operatorname{softmax}(\beta z)", r"\text{the gap form above}",
             r"cross-check: the explicit softmax with $z_j = z_1 - g_j$", AtSizes(_gap_form, SIZES)),
        Step(r"1 - w_1(\beta)", r"\frac{S}{1 + S} \le S = \sum_{j \ge 2} e^{-\beta g_j}",
             r"$S - S/(1+S) = S^2/(1+S) \ge 0$",
             NonNegative(s - (1 - w1), s**2 / (1 + s))),
        Step(None, r"(n-1)\, e^{-\beta \min_j g_j}", rel=r"\le",
             reason=r"each $g_j \ge \min_j g_j$ and $e^{-t}$ decreases (symbolic $n$): exponentially fast",
             check=Custom(_tail_sum_bound, "symbolic (symbolic n, witness and monotonicity of exp(-t))")),
        Step(r"(n-1)\, e^{-\beta \min_j g_j}", sp.Integer(0), rel=r"\to",
             reason=r"$\beta \to \infty$, every $n$: so $1 - w_1 \to 0$ and each $w_j \le 1 - w_1 \to 0$ ($j \ge 2$) "
                    r"by the bounds above",
             check=Custom(_rate_limit, "symbolic (SymPy limit, symbolic n)")),
        Step(r"\lim_{\beta \to \infty} \left(w_1, w_2, \dots, w_n\right)", r"(1, 0, \dots, 0)",
             r"cross-check: the limits computed by SymPy ($g_j > 0$) at $n = 2..4$ only", AtSizes(_weight_limits, SIZES)),
        Step(r"\lim_{\beta \to \infty} a(\beta)", r"v_1",
             r"the hard lookup of the value at the argmax: SymPy's limit checked at $n = 2..4$ only (for other $n$ "
             r"it is the finite sum of the weight limits above, an argument not checked here)",
             AtSizes(_output_limit, SIZES)),
        Step.assume(r"z_1 = \dots = z_m", r"z_j \quad (j > m)", r"a maximum attained $m$ times", rel=">"),
        Step(r"w_i(\beta)", r"\frac{1}{m + \sum_{j > m} e^{-\beta g_j}} \ (i \le m)",
             r"divide by $e^{\beta z_1}$ (symbolic $n$, $m$); "
             r"$0 \le \sum_{j > m} e^{-\beta g_j} \le (n - m) e^{-\beta \min_j g_j} \to 0$ as above, "
             r"so $w_i \to 1/m$ ($i \le m$) and $w_j \to 0$ ($j > m$)",
             Custom(_tied_general, "symbolic (symbolic n and m: gap form, witness, SymPy limit)")),
        Step(r"w_i(\beta)", r"\text{the tied gap form above}", r"cross-check: the explicit softmax",
             AtSizes(_tied_gap_form, TIES, "(n,m)")),
        Step(r"\lim_{\beta \to \infty} a(\beta)", r"\frac{1}{m} \sum_{i=1}^{m} v_i",
             r"ties: the average of the tied values, not a lookup; for every $n$, $m$ a finite sum of the limits "
             r"above (not checked here); SymPy's limits checked only at", AtSizes(_tied_limit, TIES, "(n,m)")),
    ]
    return Derivation(
        name="soft-lookup",
        title="Softmax attention tends to the hard argmax lookup",
        statement=(r"If $z_1 > z_j$ for all $j \ge 2$, then $\operatorname{softmax}(\beta z) \to e_1$ and "
                   r"$\sum_j \operatorname{softmax}(\beta z)_j v_j \to v_1$ as $\beta \to \infty$, with "
                   r"$1 - w_1 \le (n-1)e^{-\beta \min_j (z_1 - z_j)}$; if the maximum is attained $m$ times the "
                   r"output tends to the average of the $m$ tied values."),
        steps=steps,
        assumptions=["finite real scores z and values v; weights and rates for symbolic n (and m); the limits "
                     "themselves computed by SymPy at n = 2..4 (ties at (n, m) = " + ", ".join(map(str, TIES))
                     + "); vector values follow coordinatewise"],
        results={"unique_max_limit": "v_argmax", "tie_limit": "mean of tied values",
                 "rate": "1 - w_1 <= (n-1) exp(-beta * min gap)"},
    )
