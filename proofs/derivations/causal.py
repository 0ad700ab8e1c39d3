"""Derivation 5: causality. With the causal mask, d a_i / d x_j = 0 for j > i; without it, not.

Self-attention on explicit symbolic inputs X (n x d) with symbolic projections. The mask
is applied literally: masked scores are -oo and SymPy's exp(-oo) = 0, so the masked
output a_i is built exactly as the definition says and then differentiated.
"""

from __future__ import annotations

import functools

import numpy as np
import sympy as sp

from ..derivation import AtSizes, Custom, Derivation, Step
from ._registry import register

__all__ = ["causality", "self_attention_outputs"]

SIZES = [(3, 1), (3, 2), (4, 1)]


def _mat(name: str, rows: int, cols: int) -> sp.Matrix:
    return sp.Matrix(rows, cols, lambda a, b: sp.Symbol(f"{name}_{a + 1}{b + 1}", real=True))


@functools.lru_cache(maxsize=None)
def self_attention_outputs(n: int, d: int, causal: bool) -> tuple[sp.Matrix, sp.Matrix, tuple]:
    """``(X, out, params)``: out = softmax(mask(X W_q (X W_k)^T / sqrt(d))) X W_v, symbolic."""
    x = _mat("x", n, d)
    w_q, w_k, w_v = _mat("wq", d, d), _mat("wk", d, d), _mat("wv", d, d)
    q, k, v = x * w_q, x * w_k, x * w_v
    scores = q * k.T / sp.sqrt(d)
    if causal:
        scores = sp.Matrix(n, n, lambda r, c: scores[r, c] if c <= r else -sp.oo)
    e = scores.applyfunc(sp.exp)  # exp(-oo) = 0 exactly
    a = sp.Matrix(n, n, lambda r, c: e[r, c] / sum(e[r, t] for t in range(n)))
    return x, a * v, (w_q, w_k, w_v)


def _future_derivatives(n: int, d: int) -> list:
    """Every d out[i, c] / d x[j, b] with j > i, under the causal mask."""
    x, out, _ = self_attention_outputs(n, d, True)
    return [sp.diff(out[i, c], x[j, b]) for i in range(n) for j in range(i + 1, n)
            for c in range(d) for b in range(d)]


def _unmasked_witness() -> tuple[bool, str]:
    """d a_1 / d x_2 without the mask at an explicit rational point: nonzero."""
    x, out, (w_q, w_k, w_v) = self_attention_outputs(3, 1, False)
    deriv = sp.diff(out[0, 0], x[1, 0])
    point = {x[0, 0]: 1, x[1, 0]: 2, x[2, 0]: -1, w_q[0, 0]: 1, w_k[0, 0]: 1, w_v[0, 0]: 1}
    exact = sp.nsimplify(deriv.subs(point))
    value = sp.N(exact, 30)
    ok = bool(abs(value) > sp.Float("1e-6"))
    return ok, (f"n=3, d=1, x=(1,2,-1), W_q=W_k=W_v=1: da_1/dx_2 = {sp.sstr(sp.simplify(exact))} = {sp.N(value, 12)}")


def _masked_sums_truncate() -> tuple[bool, str]:
    """For symbolic n and 1 <= i <= n: the masked sums over j = 1..n, split at i, keep j <= i only.

    The masked score is Piecewise((s_ij, j <= i), (-oo, True)); refined with j <= i it is s_ij,
    refined with j > i it is -oo and exp(-oo) = 0, in the numerator and in the normaliser.
    """
    s_, v_ = sp.IndexedBase("s", real=True), sp.IndexedBase("v", real=True)
    i, j = sp.symbols("i j", integer=True, positive=True)
    masked = sp.exp(sp.Piecewise((s_[i, j], j <= i), (-sp.oo, True)))
    notes = []
    for name, term in (("numerator", masked * v_[j]), ("normaliser", masked)):
        low, high = sp.refine(term, sp.Q.le(j, i)), sp.refine(term, sp.Q.gt(j, i))
        unmasked = term.subs(masked, sp.exp(s_[i, j]))
        if high != 0 or sp.simplify(low - unmasked) != 0:
            return False, f"{name}: j <= i gives {low}, j > i gives {high}"
        notes.append(f"{name}: j <= i -> {low}, j > i -> {high}")
    return True, "; ".join(notes)


def _numeric_gradients() -> tuple[bool, str]:
    """numerics.attention_backward(causal=True) with upstream gradient on row i only: rows j > i of dK, dV are 0."""
    from numerics import attention_backward

    rng = np.random.default_rng(7)
    n, dim = 5, 3
    worst_causal, smallest_plain = 0.0, np.inf
    for i in range(n - 1):
        q, k, v = (rng.standard_normal((n, dim)) for _ in range(3))
        g = np.zeros((n, dim))
        g[i] = rng.standard_normal(dim)
        _, dk, dv = attention_backward(q, k, v, g, causal=True)
        worst_causal = max(worst_causal, float(np.max(np.abs(dk[i + 1:]))), float(np.max(np.abs(dv[i + 1:]))))
        _, dk0, dv0 = attention_backward(q, k, v, g)
        smallest_plain = min(smallest_plain, float(np.max(np.abs(dv0[i + 1:]))))
    ok = worst_causal == 0.0 and smallest_plain > 0.0
    return ok, (f"n={n}: causal max |dK, dV rows j > i| = {worst_causal:g} (exactly 0); "
                f"without the mask the smallest such max is {smallest_plain:.3g}")


@register("causality", "Causal masking: no output depends on a later input")
def causality() -> Derivation:
    """Causal mask: a_i depends on x_1..x_i only (symbolic n, i); d a_i / d x_j = 0 (j > i) differentiated at (n, d) = (3,1), (3,2), (4,1); without the mask d a_1 / d x_2 != 0."""
    steps = [
        Step.define(r"S_{ij}", r"\begin{cases} q_i \cdot k_j / \sqrt{d} & j \le i \\ -\infty & j > i \end{cases}",
                    r"causal mask; $q_i = x_i W^Q$, $k_j = x_j W^K$, $v_j = x_j W^V$"),
        Step.define(r"a_i", r"\sum_{j=1}^{n} \frac{e^{S_{ij}}}{\sum_{t=1}^{n} e^{S_{it}}}\, v_j",
                    r"masked self-attention output, row $i$"),
        Step(None, r"\sum_{j \le i} \frac{e^{S_{ij}}}{\sum_{t \le i} e^{S_{it}}}\, v_j",
             r"split the sums at $i$; $e^{-\infty} = 0$ removes $j > i$ (symbolic $n$, $i$): $a_i$ is a function "
             r"of $x_1, \dots, x_i$ only",
             Custom(_masked_sums_truncate, "symbolic (symbolic n and i, the sums split at i)")),
        Step(r"\frac{\partial a_i}{\partial x_j}", sp.Integer(0),
             r"every entry, every $j > i$, differentiating the masked expression at $(n, d) = (3,1), (3,2), (4,1)$ "
             r"only (for other sizes it follows from the line above, which is symbolic: no $x_j$ with $j > i$ appears)",
             AtSizes(_future_derivatives, SIZES, "(n,d)")),
        Step(r"\frac{\partial a_1}{\partial x_2}\Big|_{\text{no mask}}", sp.Integer(0), rel=r"\ne",
             reason=r"without the mask, an exact evaluation at a point",
             check=Custom(_unmasked_witness, "symbolic (exact value at a point, 30 digits)")),
        Step(r"\mathrm{d}K_{j>i},\ \mathrm{d}V_{j>i}", r"0",
             "cross-check: numerics.attention_backward with causal=True, upstream gradient on row $i$ only",
             Custom(_numeric_gradients, "numeric cross-check (numerics.attention_backward)")),
    ]
    return Derivation(
        name="causality",
        title="Causal masking: no output depends on a later input",
        statement=(r"With the causal mask, $\partial a_i / \partial x_j = 0$ for every $j > i$ (the Jacobian "
                   r"$\partial a / \partial x$ is block lower triangular); without the mask, $a_1$ depends on $x_2$."),
        steps=steps,
        assumptions=["self-attention a = softmax(mask(X W^Q (X W^K)^T / sqrt(d))) X W^V, masked scores -inf",
                     "checked on explicit symbolic X and weights at (n, d) = " + ", ".join(map(str, SIZES))],
        results={"sizes (n, d)": [list(s) for s in SIZES]},
    )
