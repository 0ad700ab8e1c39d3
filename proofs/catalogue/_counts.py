"""Exact floating-point operation counts of attention, as SymPy polynomials.

The model (stated so every count can be re-derived by hand):

* one flop = one scalar addition, multiplication, division or exponential;
* a matrix product (a x b)(b x c) costs ``a c (2b - 1)`` (b products and b - 1 sums per entry);
* scaling the n x m score matrix costs ``n m``;
* a softmax over a row of length m costs ``3m - 1`` (m exponentials, m - 1 sums, m
  divisions; the max-subtraction that makes it stable is left out, it adds 2m - 1);
* splitting into heads and concatenating move data and cost nothing; biases are left out.

Multi-head self-attention of an n x d input with h heads of widths d_k, d_v: the three
input projections X W (W of d x h d_k, d x h d_k, d x h d_v), per head the scores, the
scaling, the softmax and A V, and the output projection (n x h d_v)(h d_v x d).
"""

from __future__ import annotations

import sympy as sp

n, d, h = sp.symbols("n d h", positive=True, integer=True)
d_sym = d
d_k, d_v = sp.symbols("d_k d_v", positive=True, integer=True)


def matmul(a, b, c):
    return a * c * (2 * b - 1)


def attention_core(n_, m_, dk_, dv_):
    """Scores, scaling, softmax and the product with V for one head: Q (n x dk), K (m x dk), V (m x dv)."""
    return matmul(n_, dk_, m_) + n_ * m_ + n_ * (3 * m_ - 1) + matmul(n_, m_, dv_)


def mha_terms(n_=n, d_=d, h_=h, dk_=None, dv_=None) -> dict[str, sp.Expr]:
    """The cost of each stage of multi-head self-attention (default d_k = d_v = d / h)."""
    n_, d_, h_ = (sp.sympify(v) for v in (n_, d_, h_))
    dk_ = d_ / h_ if dk_ is None else dk_
    dv_ = d_ / h_ if dv_ is None else dv_
    return {
        "projections Q, K, V": sp.expand(2 * matmul(n_, d_, h_ * dk_) + matmul(n_, d_, h_ * dv_)),
        "scores Q_i K_i^T (all heads)": sp.expand(h_ * matmul(n_, dk_, n_)),
        "scaling (all heads)": sp.expand(h_ * n_ * n_),
        "softmax (all heads)": sp.expand(h_ * n_ * (3 * n_ - 1)),
        "A_i V_i (all heads)": sp.expand(h_ * matmul(n_, n_, dv_)),
        "output projection": sp.expand(matmul(n_, h_ * dv_, d_)),
    }


def mha_flops(n_=n, d_=d, h_=h, dk_=None, dv_=None, *, projections: bool = True) -> sp.Expr:
    terms = mha_terms(n_, d_, h_, dk_, dv_)
    if not projections:
        terms = {k: v for k, v in terms.items() if "projection" not in k}
    return sp.expand(sum(terms.values()))


def single_head_flops(n_=n, d_=d, *, output_projection: bool, projections: bool = True) -> sp.Expr:
    """Single-head self-attention of width d (d_k = d_v = d): its three d x d input projections
    (when ``projections``), scores, scaling, softmax, A V, and a d x d output projection only when
    ``output_projection`` (Vaswani et al.'s h = 1; the textbook single head has none)."""
    terms = mha_terms(n_, d_, 1)
    if not output_projection:
        terms.pop("output projection")
    if not projections:
        terms = {k: v for k, v in terms.items() if "projection" not in k}
    return sp.expand(sum(terms.values()))


def h_dependent_part(expr: sp.Expr) -> sp.Expr:
    """The terms of a polynomial in n, d, h that contain h."""
    poly = sp.Poly(sp.expand(expr), h)
    return sp.expand(expr - poly.coeff_monomial(1))


def text(expr: sp.Expr) -> str:
    """A count as plain text for one-line summaries: ``8d^2n - 4dn`` (not Python's ``8*d**2*n``)."""
    return str(sp.expand(expr)).replace("**", "^").replace("*", "")


def nonnegative_for(expr: sp.Expr, lower: dict) -> bool:
    """A sufficient test that ``expr >= 0`` whenever every symbol ``v`` of ``lower`` is ``>= lower[v]``:
    substitute ``v = lower[v] + r_v`` with ``r_v >= 0`` and require every coefficient of the expanded
    polynomial in the ``r_v`` to be nonnegative. True proves the inequality; False proves nothing."""
    shifts = {v: sp.Symbol(f"r_{v}", nonnegative=True) for v in lower}
    poly = sp.Poly(sp.expand(expr.subs({v: lower[v] + shifts[v] for v in lower}, simultaneous=True)),
                   *shifts.values())
    return all(c >= 0 for c in poly.coeffs())


def terms_table(n_: int, d_: int, h_: int) -> dict[str, int]:
    return {k: int(v) for k, v in mha_terms(n_, d_, h_).items()}


def compare_with_derivation(total: sp.Expr):
    """A note comparing ``total`` with the multihead derivation's own count, or None.

    Two counts written independently (here and in ``proofs.derivations``) agreeing is
    evidence that neither has a slip; a disagreement is reported, not hidden.
    """
    from ..claims import Evidence
    from ._derivations import derivation_object

    d = derivation_object("multihead")
    if d is None or "total_operations" not in d.results:
        return None
    theirs = sp.sympify(str(d.results["total_operations"]), locals={"n": n, "d": d_sym, "h": h})
    agree = sp.expand(theirs - total) == 0
    return Evidence("note", ("the multihead derivation's independent operation count agrees: " if agree else
                             "the multihead derivation counts differently: ") + str(theirs),
                    {"ours": str(total), "derivation": str(theirs), "agree": bool(agree)})
