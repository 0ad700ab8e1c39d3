"""Derivation 8: two linear layers without a nonlinearity collapse to one affine map."""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..derivation import AtSizes, Cited, Custom, Derivation, Step, Symbolic
from ._registry import register

__all__ = ["linear_collapse"]

SIZES = [(1, 2, 3, 2), (2, 3, 2, 4), (3, 2, 4, 3)]


def _mat(name: str, rows: int, cols: int) -> sp.Matrix:
    return sp.Matrix(rows, cols, lambda a, b: sp.Symbol(f"{name}_{a + 1}{b + 1}", real=True))


def _explicit(n: int, d: int, f: int, e: int) -> sp.Matrix:
    x, w1, b1, w2, b2 = _mat("x", n, d), _mat("w", d, f), _mat("b", 1, f), _mat("u", f, e), _mat("c", 1, e)
    ones = sp.ones(n, 1)
    lhs = (x * w1 + ones * b1) * w2 + ones * b2
    rhs = x * (w1 * w2) + ones * (b1 * w2 + b2)
    return lhs - rhs


RANK_SIZES = [(2, 3, 2), (4, 2, 5), (3, 4, 3), (5, 1, 4)]  # (d, f, e), some with f the smallest


def _rank_spot_check() -> tuple[bool, str]:
    """rank(W_1 W_2) <= min(d, f, e), exactly, for seeded random integer matrices (and a rank-deficient W_1)."""
    rng = np.random.default_rng(np.random.SeedSequence(8))
    seen = []
    for d, f, e in RANK_SIZES:
        for deficient in (False, True):
            w1 = rng.integers(-5, 6, size=(d, f))
            if deficient:
                w1[:, -1] = w1[:, 0]  # repeat a column: rank W_1 < f when f > 1
            w2 = rng.integers(-5, 6, size=(f, e))
            r1, r2 = sp.Matrix(w1).rank(), sp.Matrix(w2).rank()
            rank = sp.Matrix(w1 @ w2).rank()
            if rank > min(r1, r2) or rank > min(d, f, e):
                return False, f"(d,f,e)=({d},{f},{e}): rank(W_1 W_2) = {rank} > min(rank W_1, rank W_2, d, f, e)"
            seen.append(rank)
    return True, (f"rank(W_1 W_2) <= min(rank W_1, rank W_2) <= min(d, f, e) for seeded integer matrices at "
                  f"(d,f,e) = {', '.join(map(str, RANK_SIZES))}, full and rank-deficient W_1 (exact ranks {seen})")


def _gelu_not_affine() -> tuple[bool, str]:
    x = sp.Symbol("x", real=True)
    gelu = x * (1 + sp.erf(x / sp.sqrt(2))) / 2
    second = sp.simplify(sp.diff(gelu, x, 2).subs(x, 0))
    ok = second == sp.sqrt(2) / sp.sqrt(sp.pi)
    return ok, f"GELU''(0) = {second} != 0, so x -> GELU(x w_1) w_2 is not affine"


@register("linear-collapse", "Two linear layers without a nonlinearity are one affine map")
def linear_collapse() -> Derivation:
    """(X W1 + 1 b1) W2 + 1 b2 = X (W1 W2) + 1 (b1 W2 + b2)."""
    n, d, f, e = sp.symbols("n d f e", integer=True, positive=True)
    x = sp.MatrixSymbol("X", n, d)
    w1, b1 = sp.MatrixSymbol("W_1", d, f), sp.MatrixSymbol("b_1", 1, f)
    w2, b2 = sp.MatrixSymbol("W_2", f, e), sp.MatrixSymbol("b_2", 1, e)
    ones = sp.OneMatrix(n, 1)
    lhs = (x * w1 + ones * b1) * w2 + ones * b2
    rhs = x * (w1 * w2) + ones * (b1 * w2 + b2)
    steps = [
        Step.define(r"f(X)", r"(X W_1 + \mathbf{1} b_1) W_2 + \mathbf{1} b_2",
                    r"two linear layers, no nonlinearity; $X \in \mathbb{R}^{n \times d}$, rows are tokens"),
        Step(lhs, rhs, r"distributivity and associativity of matrix products (symbolic sizes $n, d, f, e$)",
             Symbolic(lhs - rhs)),
        Step(r"f(X)", r"X W + \mathbf{1} b,\quad W = W_1 W_2,\ b = b_1 W_2 + b_2",
             r"one affine map; explicit entries", AtSizes(_explicit, SIZES, "(n,d,f,e)")),
        Step(r"\operatorname{rank} W", r"\min(d, f, e)", rel=r"\le",
             reason=r"rank of a product; the hidden width $f$ bounds the collapsed map",
             check=Cited(r"rank of a product: rank(AB) <= min(rank A, rank B)",
                         spot_check=Custom(_rank_spot_check, "exact ranks, seeded integer matrices"))),
        Step(r"\frac{\mathrm{d}^2}{\mathrm{d}x^2}\, x\,\Phi(x)\Big|_{x=0}", r"\sqrt{2/\pi} \ne 0",
             r"with a GELU in between the map is not affine (its second derivative does not vanish)",
             Custom(_gelu_not_affine, "symbolic")),
    ]
    return Derivation(
        name="linear-collapse",
        title="Two linear layers without a nonlinearity are one affine map",
        statement=(r"$(X W_1 + \mathbf{1} b_1) W_2 + \mathbf{1} b_2 = X (W_1 W_2) + \mathbf{1}(b_1 W_2 + b_2)$: "
                   r"stacking linear layers adds no expressive power without a nonlinearity."),
        steps=steps,
        assumptions=["real matrices of compatible sizes (symbolic sizes via MatrixSymbol, explicit entries at "
                     + ", ".join(map(str, SIZES)) + ")"],
        results={"W": "W_1 W_2", "b": "b_1 W_2 + b_2"},
    )
