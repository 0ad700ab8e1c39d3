"""Derivation 6: each attention output row is a convex combination of the value rows.

The weights w_j = softmax(z)_j are positive and sum to 1 (symbolic n). The norm bound
||a|| <= max_j ||v_j|| follows from the exact weighted-variance identity

    sum_j w_j ||v_j||^2 - ||a||^2 = sum_j w_j ||v_j - a||^2 >= 0      (a = sum_j w_j v_j, sum_j w_j = 1)

so ||a||^2 <= sum_j w_j ||v_j||^2 <= max_j ||v_j||^2. (The triangle inequality
||sum_j w_j v_j|| <= sum_j w_j ||v_j|| gives the same bound; the identity above has the
advantage of being an equation SymPy can check.)
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..derivation import (AtSizes, Custom, Derivation, NonNegative, Step, Symbolic, canonical_sums,
                          split_sums, unfold_indexed)
from ._registry import register

__all__ = ["convex_combination"]

SIZES = [(n, d) for n in (2, 3, 4) for d in (1, 2, 3)]


def _variance_identity(n: int, d: int) -> list:
    """sum_j w_j |v_j|^2 - |a|^2 - sum_j w_j |v_j - a|^2 = 0 with w_n = 1 - sum of the others."""
    w = list(sp.symbols(f"w_1:{n + 1}", nonnegative=True))
    v = [[sp.Symbol(f"v_{j + 1}{c + 1}", real=True) for c in range(d)] for j in range(n)]
    a = [sum(w[j] * v[j][c] for j in range(n)) for c in range(d)]
    lhs = sum(w[j] * v[j][c] ** 2 for j in range(n) for c in range(d)) - sum(x**2 for x in a)
    rhs = sum(w[j] * (v[j][c] - a[c]) ** 2 for j in range(n) for c in range(d))
    return [sp.expand((lhs - rhs).subs(w[-1], 1 - sum(w[:-1])))]


def _max_bound_cases(n: int) -> tuple:
    """M^2 - sum_j w_j |v_j|^2 = sum_j w_j t_j >= 0, at size n.

    The weights are written as softmax makes them, w_j = u_j / (u_1 + ... + u_n) with u_j > 0
    (so w_j >= 0 and sum_j w_j = 1 hold by construction, nothing substituted on trust), and
    |v_j|^2 = M^2 - t_j with t_j >= 0: that is what M^2 = max_j |v_j|^2 means.
    """
    u = list(sp.symbols(f"u_1:{n + 1}", positive=True))
    t = list(sp.symbols(f"t_1:{n + 1}", nonnegative=True))
    big_m = sp.Symbol("M2", nonnegative=True)  # M^2 = max_j |v_j|^2
    total = sum(u)
    w = [uj / total for uj in u]
    expr = big_m - sum(w[j] * (big_m - t[j]) for j in range(n))
    witness = sum(u[j] * t[j] for j in range(n)) / total
    return expr, witness, None


def _max_bound_symbolic() -> tuple[bool, str]:
    """M^2 - sum_j w_j nu_j = sum_j w_j (M^2 - nu_j) for symbolic n (sum_j w_j = 1), each summand >= 0.

    nu_j = |v_j|^2 and t_j = M^2 - nu_j >= 0 (M is the maximum of the norms); w_j >= 0.
    """
    w = sp.IndexedBase("w", nonnegative=True)
    nu, t = sp.IndexedBase("nu", nonnegative=True), sp.IndexedBase("t", nonnegative=True)
    j, n = sp.symbols("j n", integer=True, positive=True)
    m2 = sp.Symbol("M2", nonnegative=True)
    gap = m2 - sp.Sum(w[j] * nu[j], (j, 1, n))
    witness = sp.Sum(w[j] * (m2 - nu[j]), (j, 1, n))
    difference = canonical_sums(sp.expand(split_sums(gap - witness).xreplace({sp.Sum(w[j], (j, 1, n)): 1})))
    summand = (w[j] * t[j]).is_nonnegative
    ok = difference == 0 and summand is True
    return ok, (f"M^2 - sum_j w_j |v_j|^2 - sum_j w_j (M^2 - |v_j|^2) = {difference} for symbolic n using sum_j w_j = 1; "
                f"summand w_j (M^2 - |v_j|^2) >= 0: {summand}")


def _numeric() -> tuple[bool, str]:
    from numerics import scaled_dot_product_attention

    rng = np.random.default_rng(11)
    q, k = rng.standard_normal((6, 4)), rng.standard_normal((9, 4))
    v = rng.standard_normal((9, 5))
    out, weights = scaled_dot_product_attention(q, k, v, return_weights=True)
    sums = float(np.max(np.abs(weights.sum(axis=-1) - 1)))
    ratio = float(np.max(np.linalg.norm(out, axis=-1)) / np.max(np.linalg.norm(v, axis=-1)))
    ok = bool(np.all(weights >= 0)) and sums < 1e-14 and ratio <= 1.0
    return ok, f"weights >= 0, max |row sum - 1| = {sums:.1e}, max ||a_i|| / max ||v_j|| = {ratio:.3f}"


@register("convex-combination", "Attention outputs are convex combinations of the values")
def convex_combination() -> Derivation:
    """w_j > 0, sum_j w_j = 1, and ||a|| <= max_j ||v_j||."""
    z = sp.IndexedBase("z", real=True)
    w = sp.IndexedBase("w")
    v = sp.IndexedBase("v", real=True)
    j, k, n, c = sp.symbols("j k n c", integer=True, positive=True)
    total = sp.Sum(sp.exp(z[k]), (k, 1, n))
    unfold = unfold_indexed({w: lambda a: sp.exp(z[a]) / total})
    in_range = sp.Q.ge(j, 1) & sp.Q.le(j, n)
    a_c = sp.Sum(w[k] * v[k], (k, 1, n))
    big_m, p_norm, u_gap = sp.Symbol("M", positive=True), sp.Symbol("p", nonnegative=True), sp.Symbol("u", nonnegative=True)
    expr_m, witness_m, subs_m = zip(*[_max_bound_cases(m) for m in (2, 3, 4, 5)])

    a_jc = sp.Sum(w[k] * v[k, c], (k, 1, n))
    per_coordinate = (sp.Sum(w[j] * v[j, c] ** 2, (j, 1, n)) - a_jc**2
                      - sp.Sum(w[j] * (v[j, c] - a_jc) ** 2, (j, 1, n)))

    def summed_over_coordinates() -> tuple[bool, str]:
        """The summand for coordinate c is the line above with v_j -> v_jc (for every c), so it
        vanishes and so does the sum over c = 1..d; the identity itself is checked once, above."""
        one = sp.Sum(w[j] * v[j] ** 2, (j, 1, n)) - a_c**2 - sp.Sum(w[j] * (v[j] - a_c) ** 2, (j, 1, n))
        instance = one.replace(lambda e: isinstance(e, sp.Indexed) and e.base == v,
                               lambda e: sp.Indexed(v, *e.indices, c))
        ok = instance == per_coordinate
        return ok, f"the summand for coordinate c is the line above with v_j -> v_jc: {ok}; a sum of zeros is 0"

    def witness_nonnegative() -> tuple[bool, str]:
        summand = unfold(w[j] * (v[j, c] - a_jc) ** 2)
        ok = summand.is_nonnegative is True
        return ok, f"each summand w_j (v_jc - a_c)^2 >= 0 (w_j > 0, real square): {summand.is_nonnegative}"

    def positive() -> tuple[bool, str]:
        weight = sp.exp(z[j]) / total
        return weight.is_positive is True, f"({weight}).is_positive = {weight.is_positive} (z real, n >= 1)"

    steps = [
        Step.define(w[j], sp.exp(z[j]) / total, r"attention weights of one query row, scores $z \in \mathbb{R}^n$"),
        Step.define(r"a", sp.Sum(w[j] * v[j], (j, 1, n)), r"output row; $v_j \in \mathbb{R}^{d}$ the value rows"),
        Step(r"w_j", r"0", rel=">", reason=r"positive: $e^{z_j} > 0$ over a sum of positive terms",
             check=Custom(positive, "symbolic (SymPy assumptions)")),
        Step(sp.Sum(w[j], (j, 1, n)), sp.Integer(1), r"the weights sum to 1 (symbolic $n$)",
             Symbolic(assumptions=in_range)),
        Step(r"\sum_j w_j v_{jc}^2 - a_c^2", r"\sum_j w_j (v_{jc} - a_c)^2",
             r"weighted-variance identity for one coordinate $c$, $a_c = \sum_k w_k v_{kc}$, "
             r"using $\sum_j w_j = 1$; symbolic $n$, any real $v_{1c}, \dots, v_{nc}$",
             Symbolic(sp.Sum(w[j] * v[j] ** 2, (j, 1, n)) - a_c**2 - sp.Sum(w[j] * (v[j] - a_c) ** 2, (j, 1, n)))),
        Step(r"\sum_j w_j \|v_j\|^2 - \|a\|^2", r"\sum_j w_j \|v_j - a\|^2",
             r"the line above summed over the coordinates $c = 1..d$ (symbolic $n$, $d$)",
             Custom(summed_over_coordinates, "symbolic (symbolic n, d)")),
        Step(r"\sum_j w_j \|v_j\|^2 - \|a\|^2", r"\sum_j w_j \|v_j - a\|^2",
             r"cross-check with explicit vectors", AtSizes(_variance_identity, SIZES, "(n,d)")),
        Step(r"\|a\|^2", r"\sum_j w_j \|v_j\|^2 - \sum_j w_j \|v_j - a\|^2 \le \sum_j w_j \|v_j\|^2",
             r"$w_j \ge 0$: the subtracted sum is a witness of nonnegativity (symbolic $n$, $d$)",
             Custom(witness_nonnegative, "symbolic (symbolic n, d, nonnegative summands)")),
        Step(r"\sum_j w_j \|v_j - a\|^2", r"0", rel=r"\ge", reason=r"cross-check at explicit sizes",
             check=NonNegative.many([(_variance_witness(m, dd), _variance_witness(m, dd), None)
                               for m, dd in SIZES], "(n,d)=" + ", ".join(f"({a},{b})" for a, b in SIZES))),
        Step(r"\sum_j w_j \|v_j\|^2", r"\max_j \|v_j\|^2 = M^2", rel=r"\le", reason=
             r"$M^2 - \sum_j w_j \|v_j\|^2 = \sum_j w_j (M^2 - \|v_j\|^2) \ge 0$ as $\sum_j w_j = 1$",
             check=Custom(_max_bound_symbolic, "symbolic (symbolic n, nonnegative summands)")),
        Step(r"\sum_j w_j \|v_j\|^2", r"M^2", rel=r"\le", reason=r"cross-check at explicit sizes",
             check=NonNegative.many(list(zip(expr_m, witness_m, subs_m)), "n=2..5")),
        Step(r"\|a\|", r"\max_j \|v_j\| = M", rel=r"\le",
             reason=r"$M - \|a\| = (M^2 - \|a\|^2)/(M + \|a\|) \ge 0$ (for $M > 0$; $M = 0$ forces $a = 0$)",
             check=NonNegative(big_m - p_norm, u_gap / (big_m + p_norm), {u_gap: big_m**2 - p_norm**2},
                               premises={u_gap: "M^2 - ||a||^2 >= 0: the two inequalities above"})),
        Step(r"\text{weights},\ \|a_i\|", r"\text{as above}",
             "cross-check on numerics.scaled_dot_product_attention",
             Custom(_numeric, "numeric cross-check")),
    ]
    return Derivation(
        name="convex-combination",
        title="Attention outputs are convex combinations of the values",
        statement=(r"Each output row $a_i = \sum_j w_{ij} v_j$ has weights $w_{ij} > 0$ with $\sum_j w_{ij} = 1$, "
                   r"so it lies in the convex hull of the value rows and $\|a_i\| \le \max_j \|v_j\|$."),
        steps=steps,
        assumptions=["finite real scores; Euclidean norm; no mask (a fully masked row has output 0, which also "
                     "satisfies the bound)"],
        unfold=unfold,
        results={"norm_bound": "||a_i|| <= max_j ||v_j||"},
    )


def _variance_witness(n: int, d: int) -> sp.Expr:
    """sum_j w_j |v_j - a|^2 at explicit sizes: nonnegative by the symbols' assumptions."""
    w = list(sp.symbols(f"w_1:{n + 1}", nonnegative=True))
    v = [[sp.Symbol(f"v_{j + 1}{c + 1}", real=True) for c in range(d)] for j in range(n)]
    a = [sum(w[j] * v[j][c] for j in range(n)) for c in range(d)]
    return sum(w[j] * (v[j][c] - a[c]) ** 2 for j in range(n) for c in range(d))
