"""Derivation: the chain rule through the logit softcap ``s -> c tanh(s / c)`` (Gemma 2).

The scores go ``R = scale Q K^T -> T = c tanh(R / c) -> Z = T + bias -> masks -> softmax``.
The softcap is elementwise, so the backward multiplies the gradient of Z entry by entry by
its slope, written from the saved T as numerics does::

    dR = dZ * (1 - (T / c)^2),    dQ = scale dR K,    dK = scale dR^T Q

The derivation checks the slope, its range (0, 1], |T| < c, the chain rule at index level
for symbolic N and M, the whole gradient by differentiating explicit symbolic attention,
and the limit c -> oo (pointwise: T -> s, slope -> 1, error s^3 / (3 c^2) to leading
order). A last step compares :func:`numerics.attention_backward` with ``softcap=c`` against
the lambdified SymPy gradients and against numerics run on the capped scores given as a bias.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import sympy as sp

from ..derivation import AtSizes, Custom, Derivation, Step, Symbolic, exp_to_symbols, is_zero
from ._crosscheck import max_difference_check
from ._registry import register

__all__ = ["softcap_chain_rule", "build_softcap_derivation", "softcap_slope", "numeric_comparison"]

#: (N, M, d_k, d_v) of the explicit symbolic cross-check.
SIZES = [(1, 2, 1, 1), (2, 2, 1, 1), (2, 3, 2, 1)]
#: (N, M, K, V, c) of the numeric cross-check.
NUMERIC_CASES = [(2, 3, 2, 2, 0.7), (3, 4, 3, 2, 2.0), (4, 5, 2, 3, 30.0)]
NUMERIC_TOL = 1e-12

_s, _x = sp.Symbol("s", real=True), sp.Symbol("x", real=True)
_c = sp.Symbol("c", positive=True)
_u = sp.Symbol("u", positive=True)  # 1 / c
_T = sp.Symbol("T", real=True)


def softcap_slope(t: Any, c: Any) -> Any:
    """dT/ds written from the capped value t = c tanh(s / c): ``1 - (t / c)^2``."""
    return 1 - (t / c) ** 2


def _mat(name: str, rows: int, cols: int) -> sp.Matrix:
    return sp.Matrix(rows, cols, lambda a, b: sp.Symbol(f"{name}_{a + 1}{b + 1}", real=True))


def _problem(n: int, m: int, d_k: int, d_v: int, slope: Callable[[Any, Any], Any]):
    """Explicit symbolic attention with a softcap: SymPy's gradients and the closed forms."""
    q, k, v, g = _mat("q", n, d_k), _mat("k", m, d_k), _mat("v", m, d_v), _mat("g", n, d_v)
    scale = 1 / sp.sqrt(d_k)
    r = q * k.T * scale
    t = r.applyfunc(lambda x: _c * sp.tanh(x / _c))
    e = t.applyfunc(sp.exp)
    a = sp.Matrix(n, m, lambda i, j: e[i, j] / sum(e[i, x] for x in range(m)))
    out = a * v
    loss = sum(g[i, j] * out[i, j] for i in range(n) for j in range(d_v))
    dp = g * v.T
    d = [sum(g[i, j] * out[i, j] for j in range(d_v)) for i in range(n)]
    dz = sp.Matrix(n, m, lambda i, j: a[i, j] * (dp[i, j] - d[i]))
    dr = sp.Matrix(n, m, lambda i, j: dz[i, j] * slope(t[i, j], _c))
    grads = {"dq": q.applyfunc(lambda x: sp.diff(loss, x)), "dk": k.applyfunc(lambda x: sp.diff(loss, x))}
    formulas = {"dq": dr * k * scale, "dk": dr.T * q * scale}
    return (q, k, v, g), r, t, grads, formulas


def _explicit_difference(slope: Callable[[Any, Any], Any]) -> Callable[..., list]:
    def build(n: int, m: int, d_k: int, d_v: int) -> list:
        _, r, t, grads, formulas = _problem(n, m, d_k, d_v, slope)
        diff = [grads[x] - formulas[x] for x in ("dq", "dk")]
        exps = {t[i, j]: sp.Symbol(f"e_{i + 1}{j + 1}", positive=True) for i in range(n) for j in range(m)}
        tanhs = {sp.tanh(r[i, j] / _c): sp.Symbol(f"t_{i + 1}{j + 1}", real=True) for i in range(n) for j in range(m)}
        return [exp_to_symbols(x, exps).xreplace(tanhs) for x in diff]

    return build


def numeric_comparison(slope: Callable[[Any, Any], Any] = softcap_slope, seed: int = 20261129) -> dict[str, float]:
    """Max |difference|: numerics with ``softcap=c`` against (a) the lambdified SymPy gradients at
    :data:`SIZES` and (b) numerics with q = 0 and the capped scores as a bias, whose bias gradient
    dZ gives ``dQ = scale (dZ * slope) K`` and ``dK = scale (dZ * slope)^T Q``."""
    from numerics import attention_backward, scaled_dot_product_attention

    rng = np.random.default_rng(seed)
    worst = {"sympy_vs_numerics": 0.0, "output_vs_capped_bias": 0.0, "grads_vs_capped_bias": 0.0}
    for size in SIZES:
        (q, k, v, g), _, _, grads, _ = _problem(*size, slope=softcap_slope)
        args = [*q, *k, *v, *g, _c]
        f = sp.lambdify(args, [grads["dq"], grads["dk"]], "numpy")
        for cap in (0.5, 3.0):
            x = [2 * rng.standard_normal(a.shape) for a in (q, k, v, g)]
            sym = f(*[float(e) for a in x for e in a.ravel()], cap)
            num = attention_backward(*x, softcap=cap)
            for a, b in zip(sym, (num.q, num.k)):
                worst["sympy_vs_numerics"] = max(worst["sympy_vs_numerics"], float(np.max(np.abs(np.asarray(a, float) - b))))
    for n, m, k_dim, v_dim, cap in NUMERIC_CASES:
        q, k = 3 * rng.standard_normal((n, k_dim)), 3 * rng.standard_normal((m, k_dim))
        v, g = rng.standard_normal((m, v_dim)), rng.standard_normal((n, v_dim))
        scale = 1 / np.sqrt(k_dim)
        t = cap * np.tanh(scale * q @ k.T / cap)
        zero = np.zeros_like(q)
        out = scaled_dot_product_attention(q, k, v, softcap=cap)
        ref_out = scaled_dot_product_attention(zero, k, v, bias=t)
        worst["output_vs_capped_bias"] = max(worst["output_vs_capped_bias"], float(np.max(np.abs(out - ref_out))))
        dz = attention_backward(zero, k, v, g, bias=t).bias
        dr = dz * slope(t, cap)
        num = attention_backward(q, k, v, g, softcap=cap)
        for a, b in ((scale * dr @ k, num.q), (scale * dr.T @ q, num.k)):
            worst["grads_vs_capped_bias"] = max(worst["grads_vs_capped_bias"], float(np.max(np.abs(a - b))))
    return worst


def _slope_range() -> tuple[bool, str]:
    """1 - tanh^2 x = sech^2 x > 0, and 1 - (1 - tanh^2 x) = tanh^2 x >= 0 (x real)."""
    ok1, note1 = is_zero(1 - sp.tanh(_x) ** 2 - 1 / sp.cosh(_x) ** 2)
    positive = (1 / sp.cosh(_x) ** 2).is_positive is True
    below_one = (sp.tanh(_x) ** 2).is_nonnegative is True
    return ok1 and positive and below_one, (f"1 - tanh^2 x - sech^2 x: {note1}; sech^2 x > 0: {positive}; "
                                            f"tanh^2 x >= 0: {below_one} (SymPy assumptions, x real)")


def _bounded() -> tuple[bool, str]:
    """c^2 - T^2 = c^2 sech^2(s / c) > 0."""
    t = _c * sp.tanh(_s / _c)
    witness = _c**2 / sp.cosh(_s / _c) ** 2
    ok, note = is_zero(_c**2 - t**2 - witness)
    positive = witness.is_positive is True
    return ok and positive, f"c^2 - T^2 - c^2 sech^2(s/c): {note}; c^2 sech^2(s/c) > 0: {positive}"


def _limit(expr: sp.Expr, expected: sp.Expr) -> Callable[[], tuple[bool, str]]:
    def run() -> tuple[bool, str]:
        value = sp.limit(expr, _c, sp.oo)
        return sp.simplify(value - expected) == 0, f"limit as c -> oo of {expr} = {value} (s fixed)"

    return run


def _series() -> tuple[bool, str]:
    """tanh(s u) / u = s - s^3 u^2 / 3 + O(u^4) with u = 1 / c."""
    expansion = sp.series(sp.tanh(_s * _u) / _u, _u, 0, 4)
    ok = sp.expand(expansion.removeO() - (_s - _s**3 * _u**2 / 3)) == 0 and expansion.getO() is not None
    return ok, f"series in u = 1/c: {expansion}"


def build_softcap_derivation(slope: Callable[[Any, Any], Any] = softcap_slope) -> Derivation:
    """The derivation for the backward slope ``slope(T, c)`` (the registered one: 1 - (T/c)^2).

    Tests pass a wrong slope (e.g. 1, the derivative without the tanh^2 term) and see the
    explicit and numeric steps fail.
    """
    results: dict = {"explicit sizes (N, M, d_k, d_v)": [list(s) for s in SIZES], "tolerance": NUMERIC_TOL,
                     "numeric cases (N, M, K, V, c)": [list(c) for c in NUMERIC_CASES]}
    capped = _c * sp.tanh(_s / _c)
    R, dZ = sp.IndexedBase("R", real=True), sp.IndexedBase("dZ", real=True)
    i, j, a, b = sp.symbols("i j a b", integer=True, positive=True)
    n, m = sp.symbols("N M", integer=True, positive=True)
    in_range = sp.Q.ge(i, 1) & sp.Q.le(i, n) & sp.Q.ge(j, 1) & sp.Q.le(j, m)
    chain = sp.Sum(dZ[a, b] * sp.diff(_c * sp.tanh(R[a, b] / _c), R[i, j]), (b, 1, m), (a, 1, n))

    def unfold(expr: Any) -> Any:
        return expr.xreplace({_T: capped}) if isinstance(expr, sp.Basic) else expr

    steps = [
        Step.define(_T, capped, r"the softcap, $c > 0$, applied to each scaled score $s = R_{ij}$ of "
                    r"$R = \mathrm{scale}\, Q K^{\top}$, before the bias and the masks: $Z = T + \mathrm{bias}$"),
        Step(sp.Derivative(_T, _s), 1 - sp.tanh(_s / _c) ** 2, r"derivative of $\tanh$",
             Symbolic(expr=sp.diff(capped, _s) - (1 - sp.tanh(_s / _c) ** 2))),
        Step(None, sp.sympify(slope(_T, _c)), r"written from the saved value $T$ (what the backward uses)"),
        Step(None, r"\operatorname{sech}^2(s / c) \in (0, 1]", r"so the cap never reverses or amplifies a gradient",
             Custom(_slope_range, "symbolic (identity, and SymPy assumptions for the signs)")),
        Step(r"c^2 - T^2", r"c^2 \operatorname{sech}^2(s / c) > 0",
             r"the capped scores lie in $(-c, c)$", Custom(_bounded, "symbolic (identity and sign)")),
        Step(r"\frac{\partial L}{\partial R_{ij}}", dZ[i, j] * (1 - sp.tanh(R[i, j] / _c) ** 2),
             r"chain rule: $\partial L / \partial R_{ij} = \sum_{a,b} \mathrm{d}Z_{ab}\, \partial T_{ab} / "
             r"\partial R_{ij}$ and $T_{ab}$ depends on $R_{ij}$ only when $(a, b) = (i, j)$ (symbolic $N$, $M$)",
             Symbolic(expr=chain - dZ[i, j] * (1 - sp.tanh(R[i, j] / _c) ** 2), assumptions=in_range)),
        Step(r"\mathrm{d}Q,\ \mathrm{d}K",
             r"\mathrm{scale}\, \mathrm{d}R\, K,\ \ \mathrm{scale}\, \mathrm{d}R^{\top} Q, \quad "
             r"\mathrm{d}R = \mathrm{d}Z \circ \bigl(1 - (T / c)^2\bigr)",
             r"cross-check: attention with a softcap differentiated entry by entry, against the closed forms "
             r"($\mathrm{d}Z = P \circ (\mathrm{d}O V^{\top} - \operatorname{rowsum}(\mathrm{d}O \circ O))$)",
             AtSizes(_explicit_difference(slope), SIZES, "(N,M,d_k,d_v)")),
        Step(capped, _s, r"for each fixed $s$, as $c \to \infty$: the cap disappears", rel=r"\to",
             check=Custom(_limit(capped, _s), "symbolic (SymPy limit)")),
        Step(sp.Derivative(_T, _s), sp.Integer(1), r"for each fixed $s$, as $c \to \infty$: "
             r"$\mathrm{d}R \to \mathrm{d}Z$, the backward without a cap", rel=r"\to",
             check=Custom(_limit(1 - sp.tanh(_s / _c) ** 2, sp.Integer(1)), "symbolic (SymPy limit)")),
        Step(capped, _s - _s**3 / (3 * _c**2) + sp.O(_c**-4, (_c, sp.oo)),
             r"how fast, for fixed $s$: the error is $s^3 / (3c^2)$ to leading order (not a bound uniform in $s$)",
             Custom(_series, "symbolic (SymPy series in 1/c)")),
        Step(r"\text{numerics' gradients}", r"\text{SymPy's, and those with bias } T",
             r"numerics.attention_backward(softcap=c) in float64: against the lambdified gradients at the explicit sizes ($c$ = 0.5, 3), and against numerics "
             r"run with $q = 0$ and bias $T$ (forward, and $\mathrm{d}Q$, $\mathrm{d}K$ from its bias gradient), "
             r"$c$ = 0.7, 2, 30",
             max_difference_check(lambda: numeric_comparison(slope), results, NUMERIC_TOL)),
    ]
    return Derivation(
        name="softcap-chain-rule",
        title="Chain rule through the logit softcap",
        statement=(r"For $T = c \tanh(R / c)$ applied entrywise ($c > 0$): $\mathrm{d}R = \mathrm{d}Z \circ "
                   r"(1 - (T/c)^2)$ with slope $\operatorname{sech}^2(R / c) \in (0, 1]$, $|T| < c$, "
                   r"$\mathrm{d}Q = \mathrm{scale}\, \mathrm{d}R K$, $\mathrm{d}K = \mathrm{scale}\, \mathrm{d}R^{\top} Q$; "
                   r"as $c \to \infty$, $T \to R$ and the slope $\to 1$ entrywise."),
        steps=steps,
        assumptions=["c > 0; real scores; the chain rule at index level for symbolic N, M; the whole gradient "
                     "cross-checked with explicit matrices at (N, M, d_k, d_v) = " + ", ".join(str(s) for s in SIZES),
                     "the limits are pointwise (s fixed), not uniform over all scores"],
        unfold=unfold,
        results=results,
    )


@register("softcap-chain-rule", "Chain rule through the logit softcap")
def softcap_chain_rule() -> Derivation:
    """dR = dZ * (1 - (T/c)^2) through T = c tanh(R/c); slope in (0, 1]; T -> R as c -> oo."""
    return build_softcap_derivation()
