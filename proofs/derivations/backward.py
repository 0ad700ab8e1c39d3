"""Derivation 2: the backward pass of scaled dot-product attention.

The gradients are obtained by differentiating explicit symbolic matrices (every entry a
Symbol) with SymPy and compared, entry by entry, with the closed forms that
:func:`numerics.attention_backward` implements::

    dV = A^T dO
    dS = A * (dO V^T - rowsum(dO V^T * A))     ( = A * (dO V^T - rowsum(dO * O)) )
    dQ = dS K / sqrt(d_k)
    dK = dS^T Q / sqrt(d_k)

A last step lambdifies the SymPy gradients and the closed forms and evaluates them, and
``numerics.attention_backward`` itself, on the same random float64 inputs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import math

import numpy as np
import sympy as sp

from ..derivation import AtSizes, Custom, Derivation, Step, canonical_sums, exp_to_symbols, is_zero
from ._registry import register

__all__ = ["attention_backward", "AttentionProblem", "attention_problem"]

#: (N, M, d_k, d_v) at which the symbolic differentiation is carried out.
SIZES = [(2, 3, 2, 2), (3, 2, 1, 2)]
NUMERIC_TOL = 1e-12


def _mat(name: str, rows: int, cols: int) -> sp.Matrix:
    return sp.Matrix(rows, cols, lambda a, b: sp.Symbol(f"{name}_{a + 1}{b + 1}", real=True))


def _row_softmax(scores: sp.Matrix) -> sp.Matrix:
    e = scores.applyfunc(sp.exp)
    return sp.Matrix(e.rows, e.cols, lambda a, b: e[a, b] / sum(e[a, c] for c in range(e.cols)))


@dataclass(frozen=True)
class AttentionProblem:
    """Explicit symbolic attention at one size, its SymPy gradients and the closed forms."""

    n: int
    m: int
    d_k: int
    d_v: int
    q: sp.Matrix
    k: sp.Matrix
    v: sp.Matrix
    d_out: sp.Matrix
    scores: sp.Matrix
    weights: sp.Matrix
    loss: sp.Expr
    grads: dict[str, sp.Matrix]  # "dq", "dk", "dv": by differentiating `loss`
    formulas: dict[str, sp.Matrix]  # the closed forms, in the same symbols

    def exp_table(self) -> dict:
        return {self.scores[a, b]: sp.Symbol(f"e_{a + 1}{b + 1}", positive=True)
                for a in range(self.n) for b in range(self.m)}


@functools.lru_cache(maxsize=None)
def attention_problem(n: int, m: int, d_k: int, d_v: int) -> AttentionProblem:
    """Build ``L = <dO, softmax(Q K^T / sqrt(d_k)) V>`` and its gradients by differentiation."""
    q, k, v, g = _mat("q", n, d_k), _mat("k", m, d_k), _mat("v", m, d_v), _mat("g", n, d_v)
    scores = q * k.T / sp.sqrt(d_k)
    a = _row_softmax(scores)
    out = a * v
    loss = sum(g[r, c] * out[r, c] for r in range(n) for c in range(d_v))
    grads = {
        "dq": q.applyfunc(lambda x: sp.diff(loss, x)),
        "dk": k.applyfunc(lambda x: sp.diff(loss, x)),
        "dv": v.applyfunc(lambda x: sp.diff(loss, x)),
    }
    dp = g * v.T
    rowsum = sp.Matrix(n, 1, lambda r, _: sum(dp[r, c] * a[r, c] for c in range(m)))
    ds = sp.Matrix(n, m, lambda r, c: a[r, c] * (dp[r, c] - rowsum[r]))
    formulas = {"dv": a.T * g, "ds": ds, "dq": ds * k / sp.sqrt(d_k), "dk": ds.T * q / sp.sqrt(d_k)}
    return AttentionProblem(n, m, d_k, d_v, q, k, v, g, scores, a, loss, grads, formulas)


def _rational(p: AttentionProblem, expr: sp.Matrix) -> sp.Matrix:
    return exp_to_symbols(expr, p.exp_table())


def _dv_difference(n, m, d_k, d_v):
    p = attention_problem(n, m, d_k, d_v)
    return _rational(p, p.grads["dv"] - p.formulas["dv"])


def _da_difference(n, m, d_k, d_v):
    """dL/dA with A's entries free: dO V^T."""
    a = _mat("a", n, m)
    g, v = _mat("g", n, d_v), _mat("v", m, d_v)
    out = a * v
    loss = sum(g[r, c] * out[r, c] for r in range(n) for c in range(d_v))
    return a.applyfunc(lambda x: sp.diff(loss, x)) - g * v.T


def _ds_difference(n, m, d_k, d_v):
    """dL/dS with S's entries free: A * (dP - rowsum(dP * A))."""
    s = _mat("s", n, m)
    g, v = _mat("g", n, d_v), _mat("v", m, d_v)
    a = _row_softmax(s)
    out = a * v
    loss = sum(g[r, c] * out[r, c] for r in range(n) for c in range(d_v))
    dp = g * v.T
    ds = sp.Matrix(n, m, lambda r, c: a[r, c] * (dp[r, c] - sum(dp[r, x] * a[r, x] for x in range(m))))
    diff = s.applyfunc(lambda x: sp.diff(loss, x)) - ds
    return exp_to_symbols(diff, {s[r, c]: sp.Symbol(f"e_{r + 1}{c + 1}", positive=True)
                                 for r in range(n) for c in range(m)})


def _delta_difference(n, m, d_k, d_v):
    """rowsum(dP * A) = rowsum(dO * O) for any A (the form numerics computes)."""
    a = _mat("a", n, m)
    g, v = _mat("g", n, d_v), _mat("v", m, d_v)
    dp, out = g * v.T, a * v
    return [sum(dp[r, c] * a[r, c] for c in range(m)) - sum(g[r, c] * out[r, c] for c in range(d_v))
            for r in range(n)]


def _dq_difference(n, m, d_k, d_v):
    p = attention_problem(n, m, d_k, d_v)
    return _rational(p, p.grads["dq"] - p.formulas["dq"])


def _dk_difference(n, m, d_k, d_v):
    p = attention_problem(n, m, d_k, d_v)
    return _rational(p, p.grads["dk"] - p.formulas["dk"])


def numeric_comparison(sizes=SIZES, trials: int = 3, seed: int = 20240603) -> dict[str, float]:
    """Max |difference| between SymPy gradients, closed forms and ``numerics.attention_backward``.

    Both SymPy sets are lambdified (NumPy) and evaluated on the same random float64 inputs
    that are handed to :func:`numerics.attention_backward`.
    """
    from numerics import attention_backward as numeric_backward

    rng = np.random.default_rng(seed)
    worst = {"sympy_vs_formula": 0.0, "sympy_vs_numerics": 0.0, "formula_vs_numerics": 0.0}
    for size in sizes:
        p = attention_problem(*size)
        args = [*p.q, *p.k, *p.v, *p.d_out]
        names = ("dq", "dk", "dv")
        f_sym = sp.lambdify(args, [p.grads[x] for x in names], "numpy")
        f_for = sp.lambdify(args, [p.formulas[x] for x in names], "numpy")
        for _ in range(trials):
            q = rng.standard_normal((p.n, p.d_k))
            k = rng.standard_normal((p.m, p.d_k))
            v = rng.standard_normal((p.m, p.d_v))
            g = rng.standard_normal((p.n, p.d_v))
            vals = [*q.ravel(), *k.ravel(), *v.ravel(), *g.ravel()]
            sym = [np.asarray(x, dtype=float) for x in f_sym(*vals)]
            form = [np.asarray(x, dtype=float) for x in f_for(*vals)]
            num = numeric_backward(q, k, v, g)
            for s_, f_, n_ in zip(sym, form, num):
                worst["sympy_vs_formula"] = max(worst["sympy_vs_formula"], float(np.max(np.abs(s_ - f_))))
                worst["sympy_vs_numerics"] = max(worst["sympy_vs_numerics"], float(np.max(np.abs(s_ - np.asarray(n_)))))
                worst["formula_vs_numerics"] = max(worst["formula_vs_numerics"], float(np.max(np.abs(f_ - np.asarray(n_)))))
    return worst


# ------------------------------------------------------------------ symbolic sizes

_N, _M, _DK, _DV = sp.symbols("N M d_k d_v", integer=True, positive=True)
_Q, _K = sp.MatrixSymbol("Q", _N, _DK), sp.MatrixSymbol("K", _M, _DK)
_V, _A = sp.MatrixSymbol("V", _M, _DV), sp.MatrixSymbol("A", _N, _M)
_DO, _DS = sp.MatrixSymbol("dO", _N, _DV), sp.MatrixSymbol("dS", _N, _M)
_SCALE = 1 / sp.sqrt(_DK)


def _matrix_gradient(loss, wrt, expected) -> tuple[bool, str]:
    """SymPy's matrix calculus at symbolic sizes: d loss / d wrt - expected is the zero matrix."""
    grad = sp.diff(loss, wrt)
    ok, note = is_zero(grad - expected)
    return ok, f"d/d{wrt} {loss} = {grad} (symbolic N, M, d_k, d_v): {note}"


def _dv_symbolic() -> tuple[bool, str]:
    return _matrix_gradient(sp.Trace(_DO.T * _A * _V), _V, _A.T * _DO)


def _da_symbolic() -> tuple[bool, str]:
    return _matrix_gradient(sp.Trace(_DO.T * _A * _V), _A, _DO * _V.T)


def _dq_symbolic() -> tuple[bool, str]:
    """L depends on Q through S = Q K^T / sqrt(d_k): first order, L ~ <dS, S>."""
    return _matrix_gradient(sp.Trace(_DS.T * _Q * _K.T) * _SCALE, _Q, _DS * _K * _SCALE)


def _dk_symbolic() -> tuple[bool, str]:
    return _matrix_gradient(sp.Trace(_DS.T * _Q * _K.T) * _SCALE, _K, _DS.T * _Q * _SCALE)


def _ds_symbolic() -> tuple[bool, str]:
    """dS_ij = sum_k dA_ik d A_ik / d S_ij for a row softmax of symbolic width M (row i only)."""
    s_, g_ = sp.IndexedBase("S", real=True), sp.IndexedBase("dA", real=True)
    i, j, k, t = sp.symbols("i j k t", integer=True, positive=True)

    def soft(a, b):
        return sp.exp(s_[a, b]) / sp.Sum(sp.exp(s_[a, t]), (t, 1, _M))

    lhs = sp.Sum(g_[i, k] * sp.diff(soft(i, k), s_[i, j]), (k, 1, _M))
    rhs = soft(i, j) * (g_[i, j] - sp.Sum(g_[i, k] * soft(i, k), (k, 1, _M)))
    ok, note = is_zero(lhs - rhs, sp.Q.ge(j, 1) & sp.Q.le(j, _M))
    return ok, f"index level, symbolic M: {note}"


def _rowsum_symbolic() -> tuple[bool, str]:
    """rowsum(X o Y)_i = (X Y^T)_ii, and dO V^T A^T = dO (A V)^T at symbolic sizes."""
    i, j = sp.symbols("i j", integer=True)
    x, y = sp.MatrixSymbol("X", _N, _M), sp.MatrixSymbol("Y", _N, _M)
    same = canonical_sums((x * y.T)[i, i]) == canonical_sums(sp.Sum(x[i, j] * y[i, j], (j, 0, _M - 1)))
    ok, note = is_zero(_DO * _V.T * _A.T - _DO * (_A * _V).T)
    return same and ok, f"rowsum(X o Y)_i = (X Y^T)_ii: {same}; dO V^T A^T - dO (A V)^T: {note}"


def _all_explicit(n, m, d_k, d_v) -> list:
    return [f(n, m, d_k, d_v) for f in (_dv_difference, _da_difference, _ds_difference, _delta_difference,
                                        _dq_difference, _dk_difference)]


@register("attention-backward", "Backward pass of scaled dot-product attention")
def attention_backward() -> Derivation:
    """dV = A^T dO, dS = A * (dO V^T - rowsum(dO V^T * A)), dQ = dS K / sqrt(d_k), dK = dS^T Q / sqrt(d_k)."""
    results: dict = {"sizes (N, M, d_k, d_v)": [list(s) for s in SIZES], "tolerance": NUMERIC_TOL}

    def numeric() -> tuple[bool, str]:
        worst = numeric_comparison()
        results["max_abs_difference"] = worst
        ok = all(v <= NUMERIC_TOL for v in worst.values())
        return ok, ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) + f" (tolerance {NUMERIC_TOL:g})"

    label = "(N,M,d_k,d_v)"
    steps = [
        Step.define(r"S = \frac{Q K^{\top}}{\sqrt{d_k}},\quad A = \operatorname{softmax}_{\text{row}}(S),\quad O",
                    r"A V", r"forward pass; $Q \in \mathbb{R}^{N \times d_k}$, $K \in \mathbb{R}^{M \times d_k}$, "
                    r"$V \in \mathbb{R}^{M \times d_v}$"),
        Step.define(r"L", r"\langle \mathrm{d}O, O \rangle = \textstyle\sum_{r,c} \mathrm{d}O_{rc} O_{rc}",
                    r"the gradients of $L$ are the vector-Jacobian products for an upstream gradient $\mathrm{d}O$"),
        Step(r"\mathrm{d}V = \partial L / \partial V", r"A^{\top} \mathrm{d}O",
             r"$L = \operatorname{tr}(\mathrm{d}O^{\top} A V)$ and $A$ does not depend on $V$ (symbolic sizes)",
             Custom(_dv_symbolic, "symbolic sizes (SymPy matrix calculus)")),
        Step(r"\mathrm{d}A = \partial L / \partial A", r"\mathrm{d}O\, V^{\top}",
             r"$L$ is linear in $A$ (symbolic sizes)", Custom(_da_symbolic, "symbolic sizes (SymPy matrix calculus)")),
        Step(r"\mathrm{d}S = \partial L / \partial S",
             r"A \circ \left(\mathrm{d}O\, V^{\top} - \operatorname{rowsum}(\mathrm{d}O\, V^{\top} \circ A)\right)",
             r"softmax Jacobian $\sigma_i(\delta_{ij} - \sigma_j)$ applied row by row: "
             r"$\mathrm{d}S_{ij} = \sum_k \mathrm{d}A_{ik}\, \partial A_{ik} / \partial S_{ij}$ (symbolic $M$)",
             Custom(_ds_symbolic, "symbolic (index level, symbolic M)")),
        Step(r"\operatorname{rowsum}(\mathrm{d}O\, V^{\top} \circ A)", r"\operatorname{rowsum}(\mathrm{d}O \circ O)",
             r"the cheaper form numerics computes ($O = AV$): $\operatorname{rowsum}(X \circ Y) = "
             r"\operatorname{diag}(X Y^{\top})$ (symbolic sizes)",
             Custom(_rowsum_symbolic, "symbolic sizes (SymPy matrix expressions)")),
        Step(r"\mathrm{d}Q = \partial L / \partial Q", r"\frac{\mathrm{d}S\, K}{\sqrt{d_k}}",
             r"chain rule through $S = Q K^{\top} / \sqrt{d_k}$, linear in $Q$ (symbolic sizes)",
             Custom(_dq_symbolic, "symbolic sizes (SymPy matrix calculus)")),
        Step(r"\mathrm{d}K = \partial L / \partial K", r"\frac{\mathrm{d}S^{\top} Q}{\sqrt{d_k}}",
             r"chain rule through $S$, linear in $K$ (symbolic sizes)",
             Custom(_dk_symbolic, "symbolic sizes (SymPy matrix calculus)")),
        Step(r"\mathrm{d}V, \mathrm{d}A, \mathrm{d}S, \operatorname{rowsum}, \mathrm{d}Q, \mathrm{d}K", r"\text{as above}",
             r"cross-check: $L(Q, K, V)$ differentiated directly, entry by entry, through the explicit softmax",
             AtSizes(_all_explicit, SIZES, label)),
        Step(r"\text{SymPy gradients, closed forms}",
             r"\text{\ttfamily numerics.attention\_backward} \quad (\text{max abs difference} \le "
             + f"10^{{{round(math.log10(NUMERIC_TOL))}}})", rel=r"\approx",
             reason=r"lambdified and evaluated on the same random float64 inputs, 3 per size: close, not equal",
             check=Custom(numeric, f"numeric cross-check (float64, max abs difference <= {NUMERIC_TOL:g})")),
    ]
    return Derivation(
        name="attention-backward",
        title="Backward pass of scaled dot-product attention",
        statement=(r"For $O = \operatorname{softmax}(QK^{\top}/\sqrt{d_k})V$ and upstream gradient $\mathrm{d}O$: "
                   r"$\mathrm{d}V = A^{\top}\mathrm{d}O$, "
                   r"$\mathrm{d}S = A \circ (\mathrm{d}O V^{\top} - \operatorname{rowsum}(\mathrm{d}O V^{\top} \circ A))$, "
                   r"$\mathrm{d}Q = \mathrm{d}S K/\sqrt{d_k}$, $\mathrm{d}K = \mathrm{d}S^{\top} Q/\sqrt{d_k}$."),
        steps=steps,
        assumptions=["symbolic sizes N, M, d_k, d_v (SymPy matrix calculus, and index level for the row softmax); "
                     "cross-checked by differentiating explicit symbolic matrices at (N, M, d_k, d_v) = "
                     + ", ".join(str(s) for s in SIZES)],
        results=results,
    )
