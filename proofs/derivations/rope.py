"""Derivation: rotary position embedding is a rotation, and q.k after it depends on n - m only.

RoPE (Su et al., RoFormer, arXiv 2104.09864) turns pair i of the K coordinates of a query or
key at position ``pos`` by the angle ``pos * omega_i``, ``omega_i = theta^(-2i/K)``,
i = 0 .. K/2 - 1. Two coordinate layouts are in use (numerics' ``style``):

* ``"half"`` (rotate-half: GPT-NeoX, Llama in HF transformers): pair i is (i, i + K/2);
* ``"interleaved"`` (RoFormer, GPT-J, Meta's Llama code): pair i is (2i, 2i + 1).

The derivation proves the two properties pair by pair for any number of pairs (symbolic
angles), shows that each layout is a permutation of the pair basis (exactly, K = 2..16), so
the properties carry over, cross-checks them with explicit K x K matrices (K = 2, 4, 6), and
shows that the layouts differ from K = 4 on and that mixing them between q and k destroys
the relative-position property. A last step compares :func:`numerics.rotary_embedding` and
its backward with the matrices.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import sympy as sp

from ..derivation import AtSizes, Custom, Derivation, Step, is_zero
from ._crosscheck import max_difference_check
from ._registry import register

__all__ = ["rotary_embedding_derivation", "build_rope_derivation", "pairs", "rope_matrix", "numeric_comparison"]

STYLES = ("half", "interleaved")
#: widths K of the explicit symbolic matrices (trigonometric identities) ...
SIZES = [2, 4, 6]
#: ... and of the exact structural checks (permutations, no trigonometry).
LAYOUT_SIZES = list(range(2, 17, 2))
NUMERIC_TOL = 1e-12

Pairing = Callable[[int, str], list[tuple[int, int]]]

_theta = sp.Symbol("theta", positive=True)
_m, _n, _t, _pos = sp.symbols("m n t pos", real=True)


def pairs(k: int, style: str) -> list[tuple[int, int]]:
    """The coordinate pairs (a_i, b_i), i = 0 .. K/2 - 1, of a layout (0-based)."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if k % 2:
        raise ValueError(f"K must be even, got {k}")
    h = k // 2
    return [(i, i + h) for i in range(h)] if style == "half" else [(2 * i, 2 * i + 1) for i in range(h)]


def _rot(angle: Any) -> sp.Matrix:
    return sp.Matrix([[sp.cos(angle), -sp.sin(angle)], [sp.sin(angle), sp.cos(angle)]])


def rope_matrix(k: int, pos: Any, style: str, theta: Any = _theta, pairing: Pairing = pairs) -> sp.Matrix:
    """The K x K matrix R with ``rope(x) = R x`` for a column x at position ``pos``:
    pair (a, b) becomes (x_a cos - x_b sin, x_a sin + x_b cos), angle pos * theta^(-2i/K)."""
    r = sp.zeros(k, k)
    for i, (a, b) in enumerate(pairing(k, style)):
        angle = pos * theta ** (-sp.Rational(2 * i, k))
        r[a, a], r[a, b], r[b, a], r[b, b] = sp.cos(angle), -sp.sin(angle), sp.sin(angle), sp.cos(angle)
    return r


def _permutation(k: int, style: str, pairing: Pairing) -> sp.Matrix:
    """Pi with (Pi x)_{2i} = x_{a_i}, (Pi x)_{2i+1} = x_{b_i}: the layout's coordinates in pair order."""
    p = sp.zeros(k, k)
    for i, (a, b) in enumerate(pairing(k, style)):
        p[2 * i, a], p[2 * i + 1, b] = 1, 1
    return p


def _block_rotation(k: int, pos: Any) -> sp.Matrix:
    return sp.diag(*[_rot(pos * _theta ** (-sp.Rational(2 * i, k))) for i in range(k // 2)])


def trig_reduce(expr: Any) -> Any:
    """``expand_trig`` and ``expand``, then sin(x)^2 -> 1 - cos(x)^2: exact, and fast on these entries."""
    e = sp.expand(sp.expand_trig(expr))
    e = e.replace(lambda z: z.is_Pow and isinstance(z.base, sp.sin) and z.exp.is_Integer and z.exp >= 2,
                  lambda z: (1 - sp.cos(z.base.args[0]) ** 2) * sp.sin(z.base.args[0]) ** (z.exp - 2))
    return sp.expand(e)


def numeric_comparison(pairing: Pairing = pairs, seed: int = 20261129) -> dict[str, float]:
    """Max |difference| between :func:`numerics.rotary_embedding` (and its backward) and the matrices.

    K = 2..8, both styles, theta = 10000 and 100, integer and fractional positions; also the
    relative error of the norms and of q.k under a common shift of positions, from numerics'
    own outputs.
    """
    from numerics import rotary_embedding, rotary_embedding_backward

    rng = np.random.default_rng(seed)
    worst = {"forward": 0.0, "backward": 0.0, "norm": 0.0, "shifted_scores": 0.0}
    for k in range(2, 9, 2):
        for style in STYLES:
            f = sp.lambdify((_pos, _theta), rope_matrix(k, _pos, style, pairing=pairing), "numpy")
            for theta in (10000.0, 100.0):
                positions = np.array([0.0, 1.0, 5.0, 2.5, 37.0])
                x, g = rng.standard_normal((5, k)), rng.standard_normal((5, k))
                got = np.asarray(rotary_embedding(x, positions, theta=theta, style=style))
                back = np.asarray(rotary_embedding_backward(g, positions, theta=theta, style=style))
                mats = [np.asarray(f(p, theta), dtype=float) for p in positions]
                want = np.stack([r @ row for r, row in zip(mats, x)])
                want_back = np.stack([r.T @ row for r, row in zip(mats, g)])
                worst["forward"] = max(worst["forward"], float(np.max(np.abs(got - want))))
                worst["backward"] = max(worst["backward"], float(np.max(np.abs(back - want_back))))
                norms = np.linalg.norm(got, axis=1) / np.linalg.norm(x, axis=1)
                worst["norm"] = max(worst["norm"], float(np.max(np.abs(norms - 1))))
                q, kk = rng.standard_normal((1, k)), rng.standard_normal((1, k))
                m, n, shift = 3.0, 11.0, 17.0
                s0 = (np.asarray(rotary_embedding(q, np.array([m]), theta=theta, style=style))
                      @ np.asarray(rotary_embedding(kk, np.array([n]), theta=theta, style=style)).T)
                s1 = (np.asarray(rotary_embedding(q, np.array([m + shift]), theta=theta, style=style))
                      @ np.asarray(rotary_embedding(kk, np.array([n + shift]), theta=theta, style=style)).T)
                worst["shifted_scores"] = max(worst["shifted_scores"], float(abs(s0 - s1).item()))
    return worst


def _pairwise_norm() -> tuple[bool, str]:
    """Summand of sum_i ||rot(phi_i) u_i||^2 - ||u_i||^2, symbolic phi_i: 0, so the sums agree for any count."""
    phi, x, y = sp.symbols("phi x y", real=True)
    u = sp.Matrix([x, y])
    ok, note = is_zero(trig_reduce(((_rot(phi) * u).T * (_rot(phi) * u))[0] - (u.T * u)[0]))
    return ok, f"per pair, symbolic angle: {note}"


def _pairwise_relative() -> tuple[bool, str]:
    """Summand of sum_i (rot(m w_i) u_i).(rot(n w_i) w_i) - u_i.(rot((n - m) w_i) w_i): 0 for symbolic m, n, w."""
    w, a, b, c, d = sp.symbols("omega a b c d", real=True)
    u, v = sp.Matrix([a, b]), sp.Matrix([c, d])
    diff = ((_rot(_m * w) * u).T * (_rot(_n * w) * v))[0] - (u.T * _rot((_n - _m) * w) * v)[0]
    ok, note = is_zero(trig_reduce(diff))
    return ok, f"per pair, symbolic m, n, omega: {note}"


def _layout(pairing: Pairing) -> Callable[[int], list]:
    def build(k: int) -> list:
        out = []
        for style in STYLES:
            p = _permutation(k, style, pairing)
            out += [rope_matrix(k, _pos, style, pairing=pairing) - p.T * _block_rotation(k, _pos) * p,
                    p.T * p - sp.eye(k)]
        return out

    return build


def _explicit(pairing: Pairing) -> Callable[[int], list]:
    def build(k: int) -> list:
        out = []
        for style in STYLES:
            r_m = rope_matrix(k, _m, style, pairing=pairing)
            r_n = rope_matrix(k, _n, style, pairing=pairing)
            out += [(r_m.T * r_m - sp.eye(k)).applyfunc(trig_reduce),
                    (r_m.T * r_n - rope_matrix(k, _n - _m, style, pairing=pairing)).applyfunc(trig_reduce)]
        return out

    return build


def _inverse(pairing: Pairing) -> Callable[[int], list]:
    def build(k: int) -> list:
        return [rope_matrix(k, _pos, s, pairing=pairing).T - rope_matrix(k, -_pos, s, pairing=pairing) for s in STYLES]

    return build


def _layouts_differ(pairing: Pairing) -> Callable[[], tuple[bool, str]]:
    def run() -> tuple[bool, str]:
        same_at_2 = rope_matrix(2, _pos, "half", pairing=pairing) == rope_matrix(2, _pos, "interleaved", pairing=pairing)
        differ = [k for k in LAYOUT_SIZES[1:]
                  if rope_matrix(k, _pos, "half", pairing=pairing) != rope_matrix(k, _pos, "interleaved", pairing=pairing)]
        ok = same_at_2 and differ == LAYOUT_SIZES[1:]
        return ok, f"equal at K=2: {same_at_2}; different at K = {differ}"

    return run


def _mixed_layouts() -> tuple[bool, str]:
    """q rotated with "half", k with "interleaved" (K = 4, theta = 10): q.k changes under a common shift."""
    theta = sp.Integer(10)
    q, k = sp.Matrix([1, 2, -1, sp.Rational(1, 2)]), sp.Matrix([2, -1, 1, 3])

    def score(m: int, n: int) -> sp.Expr:
        return ((rope_matrix(4, m, "half", theta) * q).T * (rope_matrix(4, n, "interleaved", theta) * k))[0]

    a, b = sp.N(score(0, 1), 20), sp.N(score(5, 6), 20)
    ok = abs(a - b) > sp.Float("1e-3")
    return ok, f"K=4, theta=10: q.k at (m, n) = (0, 1) is {sp.N(a, 8)}, at (5, 6) is {sp.N(b, 8)}"


def build_rope_derivation(pairing: Pairing = pairs) -> Derivation:
    """The derivation for the coordinate pairing ``pairing(K, style)`` (the registered one: :func:`pairs`).

    Any perfect pairing is a rotation with the relative-position property: a wrong pairing
    passes the symbolic steps and is caught only by the layout lines and the numeric
    comparison with numerics, which pins what each style name means.
    """
    results: dict = {"explicit K": SIZES, "layout K": LAYOUT_SIZES, "tolerance": NUMERIC_TOL}

    rot = r"\begin{pmatrix} \cos\varphi & -\sin\varphi \\ \sin\varphi & \cos\varphi \end{pmatrix}"
    steps = [
        Step.define(r"\operatorname{rot}(\varphi)", rot,
                    r"pair $i$ of a row at position $p$ turns by $\varphi = p\, \omega_i$, $\omega_i = "
                    r"\theta^{-2i/K}$, $i = 0, \dots, K/2 - 1$; pairs $(i, i + K/2)$ (half) or $(2i, 2i + 1)$ "
                    r"(interleaved), 0-based"),
        Step(r"\sum_{i} \lVert \operatorname{rot}(p\,\omega_i)\, u_i \rVert^2", r"\sum_i \lVert u_i \rVert^2",
             r"a rotation keeps the length of each pair $u_i$; the summands agree for every $i$, so the sums "
             r"agree for any number of pairs", Custom(_pairwise_norm, "symbolic (per pair, symbolic angle)")),
        Step(r"\sum_i \operatorname{rot}(m\,\omega_i) u_i \cdot \operatorname{rot}(n\,\omega_i) w_i",
             r"\sum_i u_i \cdot \operatorname{rot}\bigl((n - m)\,\omega_i\bigr) w_i",
             r"$\operatorname{rot}(m\omega)^{\top} \operatorname{rot}(n\omega) = \operatorname{rot}((n-m)\omega)$, "
             r"summand by summand, any number of pairs",
             Custom(_pairwise_relative, "symbolic (per pair, symbolic m, n, omega)")),
        Step(r"R_{\mathrm{style}}(p)", r"\Pi^{\top} \operatorname{diag}\bigl(\operatorname{rot}(p\,\omega_0), \dots"
             r"\bigr)\, \Pi, \quad \Pi^{\top}\Pi = I",
             r"each layout is a permutation $\Pi$ of the pair basis, so the two lines above hold for "
             r"$R_{\mathrm{style}}$: $\lVert R x \rVert = \lVert x \rVert$ and $(R(m) q) \cdot (R(n) k) = "
             r"q^{\top} R(n - m) k$", AtSizes(_layout(pairing), LAYOUT_SIZES, "K")),
        Step(r"R^{\top} R - I,\ \ R(m)^{\top} R(n) - R(n - m)", r"0",
             r"cross-check with the explicit matrices of both layouts, symbolic $m$, $n$, $\theta$: a rotation, "
             r"and $q \cdot k$ after RoPE depends on the positions only through $n - m$",
             AtSizes(_explicit(pairing), SIZES, "K")),
        Step(r"R(p)^{\top}", r"R(-p) = R(p)^{-1}",
             r"the backward of $x \mapsto R x$ is $\mathrm{d}x = R^{\top} \mathrm{d}y$: the opposite rotation",
             AtSizes(_inverse(pairing), LAYOUT_SIZES, "K")),
        Step(r"R_{\mathrm{half}} = R_{\mathrm{interleaved}}", r"K = 2 \quad (\text{among } K = 2, 4, \dots, 16)",
             r"the layouts are different maps from $K = 4$ on: weights trained with one need their q and k "
             r"columns permuted by $\Pi$ to be used with the other", rel=r"\iff",
             check=Custom(_layouts_differ(pairing), "exact (explicit matrices, K=2..16)")),
        Step(r"R_{\mathrm{half}}(m) q \cdot R_{\mathrm{interleaved}}(n) k", r"\text{not a function of } n - m",
             r"mixing the layouts between q and k loses the relative-position property (counterexample)",
             rel=r"\ \text{is}\ ", check=Custom(_mixed_layouts, "exact counterexample (20 digits)")),
        Step(r"\text{\ttfamily numerics.rotary\_embedding}", r"R(p)\, x", r"float64, both styles, $K$ = 2..8, "
             r"$\theta$ = 10000 and 100, integer and fractional positions; its backward against $R^{\top}$; norms "
             r"and $q \cdot k$ under a common shift of positions, from numerics' outputs",
             max_difference_check(lambda: numeric_comparison(pairing), results, NUMERIC_TOL)),
    ]
    return Derivation(
        name="rotary-embedding",
        title="Rotary position embedding: a rotation, relative positions",
        statement=(r"For both layouts (half: pairs $(i, i + K/2)$; interleaved: $(2i, 2i+1)$), the rotary "
                   r"embedding $R(p)$ is orthogonal, so $\lVert R(p) x \rVert = \lVert x \rVert$, and "
                   r"$(R(m) q) \cdot (R(n) k) = q^{\top} R(n - m) k$: the score depends on the positions only "
                   r"through $n - m$. Pair by pair for any number of pairs; the layouts checked exactly at "
                   r"$K$ = 2..16 and with trigonometry at $K$ = 2, 4, 6."),
        steps=steps,
        assumptions=["real positions and theta > 0; the identities hold for any frequencies",
                     "the pairwise steps are symbolic (any number of pairs); the coordinate layouts are checked at "
                     "K = 2..16 (exact) and K = 2, 4, 6 (explicit matrices), not for every K"],
        results=results,
    )


@register("rotary-embedding", "Rotary position embedding: a rotation, relative positions")
def rotary_embedding_derivation() -> Derivation:
    """RoPE (half and interleaved) is a rotation and q.k after it depends only on n - m."""
    return build_rope_derivation()
