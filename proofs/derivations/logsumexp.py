"""Derivation: the attention backward from the saved logsumexp (FlashAttention-2's recomputation).

The tiled forward keeps only the output O and the logsumexp ``lse_i = log sum_t exp(S_it)`` of
each query row. The backward recomputes the weights of a tile from its scores and the row's
lse, ``P_ij = exp(S_ij - lse_i)``, and forms::

    dP = dO V^T
    D_i = rowsum(dO * O)_i
    dS = P * (dP - D)            (= d bias; through the scale and softcap to dQ and dK)

Every entry needs only its own tile (S_ij, dP_ij) and per-row vectors (lse_i, D_i), so dQ,
dK and dV accumulate tile by tile. The derivation proves these identities at index level
for a symbolic key length M, cross-checks them by differentiating explicit symbolic matrices,
and recomputes the gradients tile by tile in NumPy from numerics' own ``return_lse``,
against :func:`numerics.attention_backward` (with a bias, a mask with an empty row, causal
alignments and a window).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import sympy as sp

from ..derivation import AtSizes, Custom, Derivation, Step, Symbolic, exp_to_symbols, unfold_indexed
from ._crosscheck import max_difference_check
from ._registry import register
from .backward import _rowsum_symbolic

__all__ = ["lse_backward", "build_lse_backward_derivation", "tiled_backward", "numeric_comparison", "allowed_keys"]

#: (N, M, d_v) of the explicit symbolic cross-check.
SIZES = [(1, 3, 2), (2, 2, 1), (2, 3, 2)]
#: (N, M, K, V), query-block and key-block sizes, options of the numeric cross-check.
NUMERIC_CASES: list[tuple[tuple[int, int, int, int], tuple[int, ...], tuple[int, ...], dict]] = [
    ((4, 6, 3, 2), (2, 2), (3, 3), {}),
    ((3, 7, 4, 3), (1, 2), (2, 4, 1), {"causal": "bottom_right"}),
    ((5, 5, 2, 2), (3, 2), (2, 3), {"causal": "top_left"}),
    ((4, 8, 3, 2), (4,), (3, 3, 2), {"window": (1, 2)}),
    ((6, 4, 2, 3), (2, 2, 2), (1, 3), {"causal": "bottom_right", "window": (1, None)}),
]
NUMERIC_TOL = 1e-12


def allowed_keys(n: int, m: int, causal: bool | str = False, window: tuple | None = None) -> np.ndarray:
    """(N, M) boolean: key j allowed for query i under the issue's alignment and window rules.

    Bottom-right causal: j <= i + M - N; top-left: j <= i; window (left, right): -left <=
    j - i - delta <= right, delta = M - N under bottom-right alignment and 0 otherwise.
    """
    i, j = np.arange(n)[:, None], np.arange(m)[None, :]
    delta = m - n if causal == "bottom_right" else 0
    ok = np.ones((n, m), dtype=bool)
    if causal:
        ok &= j <= i + delta
    if window is not None:
        left, right = window
        if left is not None:
            ok &= j - i - delta >= -left
        if right is not None:
            ok &= j - i - delta <= right
    return ok


def tiled_backward(q: np.ndarray, k: np.ndarray, v: np.ndarray, d_out: np.ndarray, out: np.ndarray,
                   lse: np.ndarray, z: np.ndarray, rows: Sequence[int], cols: Sequence[int],
                   scale: float) -> dict[str, np.ndarray]:
    """dq, dk, dv and dz from the saved lse, accumulated over (query block, key block) tiles.

    ``z`` (N, M) are the final scores (-inf where excluded), ``lse`` (N,) from the forward
    (-inf for a row with no allowed key, whose weights are taken as 0). Uses only
    ``P = exp(z - lse)`` per tile, ``D = rowsum(d_out * out)`` and ``dS = P * (dP - D)``.
    """
    d = np.sum(d_out * out, axis=1)
    grads = {"q": np.zeros_like(q), "k": np.zeros_like(k), "v": np.zeros_like(v), "z": np.zeros_like(z)}
    r_edges, c_edges = np.cumsum([0, *rows]), np.cumsum([0, *cols])
    safe_lse = np.where(np.isfinite(lse), lse, 0.0)  # exp(-inf - 0) = 0: the guard for empty rows
    for r0, r1 in zip(r_edges[:-1], r_edges[1:]):
        for c0, c1 in zip(c_edges[:-1], c_edges[1:]):
            p = np.exp(z[r0:r1, c0:c1] - safe_lse[r0:r1, None])
            dp = d_out[r0:r1] @ v[c0:c1].T
            ds = p * (dp - d[r0:r1, None])
            grads["z"][r0:r1, c0:c1] = ds
            grads["q"][r0:r1] += scale * ds @ k[c0:c1]
            grads["k"][c0:c1] += scale * ds.T @ q[r0:r1]
            grads["v"][c0:c1] += p.T @ d_out[r0:r1]
    return grads


def numeric_comparison(seed: int = 20261129) -> dict[str, float]:
    """Max |difference| between :func:`tiled_backward` and ``numerics.attention_backward``.

    For each case of :data:`NUMERIC_CASES`: random float64 q, k, v, d_out, a full (N, M) bias
    and a mask emptying the first row; numerics' forward gives out and lse
    (``return_lse=True``); its backward's bias gradient is compared with dS.
    """
    from numerics import attention_backward, scaled_dot_product_attention

    rng = np.random.default_rng(seed)
    worst = {"dq": 0.0, "dk": 0.0, "dv": 0.0, "dS_vs_dbias": 0.0}
    for (n, m, k_dim, v_dim), rows, cols, options in NUMERIC_CASES:
        q, k = 1.5 * rng.standard_normal((n, k_dim)), 1.5 * rng.standard_normal((m, k_dim))
        v, g = rng.standard_normal((m, v_dim)), rng.standard_normal((n, v_dim))
        bias = rng.standard_normal((n, m))
        mask = rng.random((n, m)) > 0.2
        mask[0] = False
        scale = 1 / np.sqrt(k_dim)
        allowed = mask & allowed_keys(n, m, options.get("causal", False), options.get("window"))
        z = np.where(allowed, scale * q @ k.T + bias, -np.inf)
        out, lse = scaled_dot_product_attention(q, k, v, mask=mask, bias=bias, return_lse=True, **options)
        got = tiled_backward(q, k, v, g, np.asarray(out), np.asarray(lse), z, rows, cols, scale)
        ref = attention_backward(q, k, v, g, mask=mask, bias=bias, **options)
        for name, a, b in (("dq", got["q"], ref.q), ("dk", got["k"], ref.k), ("dv", got["v"], ref.v),
                           ("dS_vs_dbias", got["z"], ref.bias)):
            worst[name] = max(worst[name], float(np.max(np.abs(a - np.asarray(b)))))
    return worst


# --------------------------------------------------------------------------- symbolic pieces

_S, _P = sp.IndexedBase("S", real=True), sp.IndexedBase("P", real=True)
_dP, _lse = sp.IndexedBase("dP", real=True), sp.IndexedBase("lse", real=True)
_i, _j, _k, _t = sp.symbols("i j k t", integer=True, positive=True)
_M = sp.Symbol("M", integer=True, positive=True)
_IN_RANGE = sp.Q.ge(_j, 1) & sp.Q.le(_j, _M)


def _row_lse(row: Any) -> sp.Expr:
    return sp.log(sp.Sum(sp.exp(_S[row, _t]), (_t, 1, _M)))


def _weights_from_lse(n: int, m: int, scores: sp.Matrix) -> sp.Matrix:
    lse = [sp.log(sum(sp.exp(scores[r, c]) for c in range(m))) for r in range(n)]
    return sp.Matrix(n, m, lambda r, c: sp.exp(scores[r, c] - lse[r]))


def _mat(name: str, rows: int, cols: int) -> sp.Matrix:
    return sp.Matrix(rows, cols, lambda a, b: sp.Symbol(f"{name}_{a + 1}{b + 1}", real=True))


def _explicit_difference(weights_from_lse):
    """dL/dS (L = <dO, P V>, P from the lse, differentiated entry by entry) minus P * (dP - rowsum(dO * O))."""

    def build(n: int, m: int, d_v: int) -> sp.Matrix:
        s, g, v = _mat("s", n, m), _mat("g", n, d_v), _mat("v", m, d_v)
        p = weights_from_lse(n, m, s)
        out = p * v
        loss = sum(g[r, c] * out[r, c] for r in range(n) for c in range(d_v))
        dp = g * v.T
        d = [sum(g[r, c] * out[r, c] for c in range(d_v)) for r in range(n)]
        ds = sp.Matrix(n, m, lambda r, c: p[r, c] * (dp[r, c] - d[r]))
        diff = (s.applyfunc(lambda x: sp.diff(loss, x)) - ds).applyfunc(sp.expand)
        return exp_to_symbols(diff, {s[r, c]: sp.Symbol(f"e_{r + 1}{c + 1}", positive=True)
                                     for r in range(n) for c in range(m)})

    return build


def build_lse_backward_derivation(weights_from_lse=_weights_from_lse) -> Derivation:
    """The derivation; ``weights_from_lse(n, m, S)`` builds the explicit weights for the cross-check
    (tests pass a wrong one, e.g. ``exp(S)`` without the lse, and see that step fail)."""
    results: dict = {"explicit sizes (N, M, d_v)": [list(s) for s in SIZES], "tolerance": NUMERIC_TOL,
                     "numeric cases": [[list(c), list(r), list(b), dict(o)] for c, r, b, o in NUMERIC_CASES]}
    unfold = unfold_indexed({_lse: lambda a: _row_lse(a), _P: lambda a, b: sp.exp(_S[a, b] - _row_lse(a))})
    softmax = sp.exp(_S[_i, _j]) / sp.Sum(sp.exp(_S[_i, _t]), (_t, 1, _M))
    delta = sp.KroneckerDelta(_j, _k)
    d_row = sp.Sum(_dP[_i, _k] * _P[_i, _k], (_k, 1, _M))
    ds_direct = sp.Sum(_dP[_i, _k] * sp.diff(sp.exp(_S[_i, _k] - _row_lse(_i)), _S[_i, _j]), (_k, 1, _M))
    ds_rhs = _P[_i, _j] * (_dP[_i, _j] - sp.Sum(_dP[_i, _k] * _P[_i, _k], (_k, 1, _M)))
    f = sp.IndexedBase("f")
    p_, q_ = sp.symbols("p q", integer=True, positive=True)
    split = sp.Sum(f[_j], (_j, 1, p_)) + sp.Sum(f[_j], (_j, p_ + 1, p_ + q_))
    lse_val = sp.Symbol("L", real=True)

    def excluded() -> tuple[bool, str]:
        value = sp.exp(-sp.oo - lse_val)
        return value == 0, f"exp(-oo - L) = {value} for real L"

    steps = [
        Step.define(_lse[_i], sp.log(sp.Sum(sp.exp(_S[_i, _t]), (_t, 1, _M))),
                    r"saved by the forward, one number per query row; $S$ ($N \times M$) the final scores "
                    r"(after scale, softcap, bias, masks), $O = \operatorname{softmax}(S) V$"),
        Step.define(_P[_i, _j], sp.exp(_S[_i, _j] - _lse[_i]),
                    r"the weights recomputed in the backward from one score and the row's lse"),
        Step(_P[_i, _j], softmax, r"they are the forward's softmax weights (symbolic $M$)"),
        Step(sp.Derivative(_lse[_i], _S[_i, _j]), _P[_i, _j],
             r"the gradient of the logsumexp is the softmax ($1 \le j \le M$, symbolic $M$); an upstream "
             r"gradient $\mathrm{d}\,\mathrm{lse}_i$ of a returned lse adds $P_{ij}\, \mathrm{d}\,\mathrm{lse}_i$ to "
             r"$\mathrm{d}S_{ij}$", Symbolic(assumptions=_IN_RANGE)),
        Step(sp.Derivative(_P[_i, _k], _S[_i, _j]), _P[_i, _k] * (delta - _P[_i, _j]),
             r"differentiating $e^{S_{ik} - \mathrm{lse}_i}$ through the lse (symbolic $M$)",
             Symbolic(assumptions=_IN_RANGE)),
        Step(r"\mathrm{d}S_{ij} = \sum_{k=1}^{M} \mathrm{d}P_{ik} \frac{\partial P_{ik}}{\partial S_{ij}}", ds_rhs,
             r"chain rule over row $i$, $\mathrm{d}P = \mathrm{d}O\, V^{\top}$ the gradient of $L = \langle "
             r"\mathrm{d}O, P V\rangle$ with respect to $P$ (symbolic $M$)",
             Symbolic(expr=ds_direct - ds_rhs, assumptions=_IN_RANGE)),
        Step(r"D_i = \sum_{k} \mathrm{d}P_{ik} P_{ik}", r"\operatorname{rowsum}(\mathrm{d}O \circ O)_i",
             r"$\operatorname{rowsum}(X \circ Y) = \operatorname{diag}(X Y^{\top})$ and $\mathrm{d}O\, V^{\top} "
             r"P^{\top} = \mathrm{d}O\, (P V)^{\top}$ (symbolic sizes): $D$ comes from the output rows alone",
             Custom(_rowsum_symbolic, "symbolic sizes (SymPy matrix expressions)")),
        Step(r"\mathrm{d}S_{ij}", r"e^{S_{ij} - \mathrm{lse}_i} \bigl(\mathrm{d}O_i \cdot v_j - D_i\bigr)",
             r"the two lines above: entry $(i, j)$ needs its score, the row's $\mathrm{lse}_i$ and $D_i$, "
             r"$\mathrm{d}O_i$ and $v_j$, nothing of other tiles",
             Symbolic(expr=ds_direct - sp.exp(_S[_i, _j] - _lse[_i]) * (_dP[_i, _j] - d_row), assumptions=_IN_RANGE)),
        Step(r"\mathrm{d}Q_i = s \sum_{j=1}^{p+q} \mathrm{d}R_{ij} k_j",
             r"s \sum_{j=1}^{p} \mathrm{d}R_{ij} k_j + s \sum_{j=p+1}^{p+q} \mathrm{d}R_{ij} k_j",
             r"the gradients are sums over the other axis, so they accumulate over key blocks ($\mathrm{d}Q$) and "
             r"query blocks ($\mathrm{d}K$, $\mathrm{d}V$); $s$ the scale, $\mathrm{d}R$ = $\mathrm{d}S$ "
             r"(times the softcap's slope); symbolic block sizes $p$, $q$",
             Symbolic(expr=split - sp.Sum(f[_j], (_j, 1, p_ + q_)))),
        Step(r"P_{ij},\ \mathrm{d}S_{ij} \text{ at } S_{ij} = -\infty", r"0",
             r"an excluded key (finite $\mathrm{lse}_i$) gets weight 0 and gradient 0; a row with no allowed key "
             r"has $\mathrm{lse}_i = -\infty$ and needs the guard of the forward's merge (weights taken as 0)",
             Custom(excluded, "symbolic")),
        Step(r"\partial L / \partial S", r"P \circ (\mathrm{d}P - \operatorname{rowsum}(\mathrm{d}O \circ O))",
             r"cross-check: $L = \langle \mathrm{d}O, P V \rangle$ with $P$ built from the lse, "
             r"differentiated entry by entry", AtSizes(_explicit_difference(weights_from_lse), SIZES, "(N,M,d_v)")),
        Step(r"\text{tiles from numerics' lse}", r"\text{\ttfamily numerics.attention\_backward}",
             r"float64: dQ, dK, dV accumulated tile by tile from $\mathrm{lse}$ (return_lse) and $D$, and dS "
             r"against the bias gradient; random inputs, a full bias, a mask with an empty row, causal top-left "
             r"and bottom-right, windows (1, 2) and (1, None)",
             max_difference_check(lambda: numeric_comparison(), results, NUMERIC_TOL)),
    ]
    return Derivation(
        name="lse-backward",
        title="Attention backward from the saved logsumexp",
        statement=(r"With $\mathrm{lse}_i = \log \sum_t e^{S_{it}}$ and $P = e^{S - \mathrm{lse}}$: $P = "
                   r"\operatorname{softmax}(S)$, $\partial\,\mathrm{lse}_i / \partial S_{ij} = P_{ij}$ and "
                   r"$\mathrm{d}S = P \circ (\mathrm{d}P - \operatorname{rowsum}(\mathrm{d}O \circ O))$, "
                   r"$\mathrm{d}P = \mathrm{d}O\, V^{\top}$ (symbolic $M$); each entry needs only its tile and the "
                   r"row vectors $\mathrm{lse}$ and $D = \operatorname{rowsum}(\mathrm{d}O \circ O)$."),
        steps=steps,
        assumptions=["finite scores in the symbolic steps (an excluded key is S = -inf, treated separately)",
                     "symbolic key length M and value width (index level and SymPy matrix expressions); "
                     "cross-checked with explicit matrices at (N, M, d_v) = " + ", ".join(str(s) for s in SIZES)],
        unfold=unfold,
        results=results,
    )


@register("lse-backward", "Attention backward from the saved logsumexp")
def lse_backward() -> Derivation:
    """dS = P * (dP - rowsum(dO * O)) with P = exp(S - lse): the backward needs only tiles and row vectors."""
    return build_lse_backward_derivation()
