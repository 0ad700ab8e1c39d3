"""Derivation 1: the softmax Jacobian, shift invariance, and its bounds (entries 1/4, norm 1/2)."""

from __future__ import annotations

import mpmath
import numpy as np
import sympy as sp


from ..derivation import (AtSizes, Chain, Cited, Custom, Derivation, NonNegative, Step, Symbolic, canonical_sums,
                          exp_to_symbols, is_zero, split_sums, unfold_indexed)
from ._registry import register

__all__ = ["softmax_jacobian", "softmax_vector", "softmax_jacobian_matrix"]

SIZES = range(2, 7)


def softmax_vector(n: int, prefix: str = "z") -> tuple[list[sp.Symbol], sp.Matrix]:
    """Real symbols ``z_1..z_n`` and the explicit softmax column vector."""
    z = list(sp.symbols(f"{prefix}_1:{n + 1}", real=True))
    e = [sp.exp(v) for v in z]
    total = sum(e)
    return z, sp.Matrix([x / total for x in e])


def softmax_jacobian_matrix(n: int) -> sp.Matrix:
    """``diag(s) - s s^T`` for the explicit softmax ``s`` of size n."""
    _, s = softmax_vector(n)
    return sp.diag(*s) - s * s.T


def _positive_exp_table(z: list[sp.Symbol]) -> dict:
    return {v: sp.Symbol(f"e_{k + 1}", positive=True) for k, v in enumerate(z)}


def _jacobian_difference(n: int) -> sp.Matrix:
    z, s = softmax_vector(n)
    # Matrix.jacobian gives J[a, b] = d s_a / d z_b (derive_by_array would put b first).
    jac = s.jacobian(z)
    diff = jac - (sp.diag(*s) - s * s.T)
    return exp_to_symbols(diff, _positive_exp_table(z))


def _shift_difference(n: int) -> sp.Matrix:
    z, s = softmax_vector(n)
    c = sp.Symbol("c", real=True)
    shifted = s.subs({v: v + c for v in z}, simultaneous=True)
    return (shifted - s).applyfunc(sp.expand)


def _symmetric_difference(n: int) -> sp.Matrix:
    j = softmax_jacobian_matrix(n)
    return j - j.T


def _symmetric_symbolic() -> tuple[bool, str]:
    """J_ij - J_ji = (sigma_i - sigma_j) delta_ij vanishes for symbolic i, j: case i = j, case i != j."""
    sigma = sp.IndexedBase("sigma")
    i, j = sp.symbols("i j", integer=True)
    diff = sigma[i] * (sp.KroneckerDelta(i, j) - sigma[j]) - sigma[j] * (sp.KroneckerDelta(j, i) - sigma[i])
    same = diff.subs(j, i)
    apart = sp.refine(diff, sp.Q.ne(i, j)).replace(lambda e: isinstance(e, sp.KroneckerDelta), lambda e: sp.Integer(0))
    ok_same, note_same = is_zero(same)
    ok_apart, note_apart = is_zero(apart)
    return ok_same and ok_apart, f"i = j: {note_same}; i != j (delta_ij = 0): {note_apart}"


def _quadratic_form_symbolic() -> tuple[bool, str]:
    """x^T J x = sum_a sigma_a (x_a - xbar)^2 for symbolic n, and the summand is >= 0.

    The double sum with J_ab = sigma_a (delta_ab - sigma_b) is collapsed (doit, refine),
    both sides are split by linearity and Fubini (:func:`split_sums`), and the softmax's
    normalisation sum_a sigma_a = 1 is itself checked from its definition.
    """
    z = sp.IndexedBase("z", real=True)
    sig = sp.IndexedBase("sigma", nonnegative=True)
    x = sp.IndexedBase("x", real=True)
    a, b, k, n = sp.symbols("a b k n", integer=True, positive=True)
    xbar = sp.Symbol("xbar", real=True)
    in_range = sp.Q.ge(a, 1) & sp.Q.le(a, n) & sp.Q.ge(b, 1) & sp.Q.le(b, n)
    total = sp.Sum(sp.exp(z[k]), (k, 1, n))
    ok_norm, note_norm = is_zero(sp.Sum(sp.exp(z[a]) / total, (a, 1, n)) - 1)
    if not ok_norm:
        return False, f"sum_a sigma_a = 1: {note_norm}"
    form = sp.refine(split_sums(sp.Sum(x[a] * sig[a] * (sp.KroneckerDelta(a, b) - sig[b]) * x[b],
                                       (b, 1, n), (a, 1, n))).doit(), in_range)
    summand = sig[a] * (x[a] - xbar) ** 2
    witness = split_sums(sp.Sum(summand, (a, 1, n)))
    witness = witness.xreplace({sp.Sum(sig[a], (a, 1, n)): sp.Integer(1)}).subs(xbar, sp.Sum(sig[b] * x[b], (b, 1, n)))
    difference = canonical_sums(sp.expand(form - witness))
    if difference != 0:
        return False, f"x^T J x - sum_a sigma_a (x_a - xbar)^2 = {difference}"
    if summand.is_nonnegative is not True:
        return False, f"SymPy cannot show the summand {summand} is >= 0"
    return True, ("x^T J x - sum_a sigma_a (x_a - xbar)^2 reduces to 0 for symbolic n (sum_a sigma_a = 1: "
                  f"{note_norm}); each summand sigma_a (x_a - xbar)^2 >= 0 by the symbols' assumptions")


def _simplex_points(n: int, count: int = 3) -> list[list[sp.Rational]]:
    """Exact softmax outputs sigma (every point of the open simplex is softmax(log sigma)).

    Adversarial: the uniform point (z = 0), a two-way tie near 1/2 (where ||J||_2 nears 1/2),
    a near one-hot point and a geometric profile; then ``count`` seeded random points.
    """
    eps = sp.Rational(1, 10**9)
    pts = [[sp.Rational(1, n)] * n]
    rest = [2 * eps / (n - 2)] * (n - 2) if n > 2 else []
    pts.append([sp.Rational(1, 2) - eps, sp.Rational(1, 2) - eps, *rest] if n > 2 else [sp.Rational(1, 2)] * 2)
    pts.append([1 - eps, *[eps / (n - 1)] * (n - 1)])
    geo = [sp.Rational(1, 2**a) for a in range(1, n + 1)]
    pts.append([g / sum(geo) for g in geo])
    rng = np.random.default_rng(np.random.SeedSequence(13 + n))
    for _ in range(count):
        w = [sp.Integer(int(v)) for v in rng.integers(1, 1000, size=n)]
        pts.append([v / sum(w) for v in w])
    return pts


def _jacobian_at(sig: list) -> sp.Matrix:
    s = sp.Matrix(sig)
    return sp.diag(*sig) - s * s.T


def _row_sums(jac: sp.Matrix) -> list:
    return [sum(abs(v) for v in jac.row(r)) for r in range(jac.rows)]


def _norm_is_lambda_max() -> tuple[bool, str]:
    """||J||_2 (largest singular value) = largest eigenvalue, mpmath at 40 digits, n = 2..6."""
    worst = mpmath.mpf(0)
    with mpmath.workdps(40):
        for n in SIZES:
            for sig in _simplex_points(n):
                jac = mpmath.matrix([[mpmath.mpf(sp.Rational(v).p) / sp.Rational(v).q for v in row]
                                     for row in _jacobian_at(sig).tolist()])
                singular = mpmath.svd_r(jac, compute_uv=False)
                eigen = mpmath.eigsy(jac, eigvals_only=True)
                worst = max(worst, abs(max(singular) - max(eigen)))
        ok = worst < mpmath.mpf(10) ** -30
    return ok, f"max |sigma_max(J) - lambda_max(J)| = {mpmath.nstr(worst, 3)} (< 1e-30 required) over {_points_note()}"


def _points_note() -> str:
    return f"n={SIZES[0]}..{SIZES[-1]}, 7 points each (uniform, tie near 1/2, near one-hot, geometric, 3 random)"


def _gershgorin_holds(sig: list) -> tuple[sp.Expr, bool]:
    """``(max_i R_i, holds)``: ``holds`` says ``lambda_max(J) <= max_i R_i`` exactly, i.e.
    ``max_i R_i I - J`` is positive semidefinite (rational arithmetic)."""
    jac = _jacobian_at(sig)
    bound = max(_row_sums(jac))
    return bound, bool((bound * sp.eye(len(sig)) - jac).is_positive_semidefinite)


def _gershgorin_spot_check() -> tuple[bool, str]:
    for n in SIZES:
        for sig in _simplex_points(n):
            bound, holds = _gershgorin_holds(sig)
            if not holds:
                return False, f"lambda_max(J) > max_i R_i = {bound} at sigma = {sig}"
    return True, f"max_i R_i I - J is positive semidefinite (exact, rational sigma) at {_points_note()}"


def _not_equal_at_uniform3() -> tuple[bool, str]:
    jac = _jacobian_at([sp.Rational(1, 3)] * 3)
    eig = sorted(jac.eigenvals(multiple=True))
    rows = _row_sums(jac)
    ok = eig == [0, sp.Rational(1, 3), sp.Rational(1, 3)] and max(rows) == sp.Rational(4, 9)
    return ok, f"n=3, z=0: J = I/3 - 11^T/9, eigenvalues {eig}, so ||J||_2 = {max(eig)}; row sums R_i = {rows}"


def _sharpness() -> tuple[bool, str]:
    jac = softmax_jacobian_matrix(2).subs({sp.Symbol("z_1", real=True): 0, sp.Symbol("z_2", real=True): 0})
    eig = sorted(jac.eigenvals())
    return eig == [0, sp.Rational(1, 2)], f"n=2, z=(0,0): J = {jac.tolist()}, eigenvalues {eig}"


@register("softmax-jacobian", "Softmax Jacobian, shift invariance and its bounds")
def softmax_jacobian() -> Derivation:
    """d sigma_i / d z_j = sigma_i (delta_ij - sigma_j); shift invariance; |J_ij| <= 1/4; ||J||_2 <= 1/2."""
    z = sp.IndexedBase("z", real=True)
    sigma = sp.IndexedBase("sigma")
    i, j, k, n = sp.symbols("i j k n", integer=True, positive=True)
    c = sp.Symbol("c", real=True)
    total = sp.Sum(sp.exp(z[k]), (k, 1, n))
    unfold = unfold_indexed({sigma: lambda a: sp.exp(z[a]) / total})
    in_range = sp.Q.ge(j, 1) & sp.Q.le(j, n) & sp.Q.ge(i, 1) & sp.Q.le(i, n)
    delta = sp.KroneckerDelta(i, j)

    quotient = sp.exp(z[i]) * delta / total - sp.exp(z[i]) * sp.Sum(sp.exp(z[k]) * sp.KroneckerDelta(j, k), (k, 1, n)) / total**2
    collapsed = sp.exp(z[i]) * delta / total - sp.exp(z[i]) * sp.exp(z[j]) / total**2
    jac = sigma[i] * (delta - sigma[j])

    # Bounds, with sigma_i, sigma_j as nonnegative symbols (softmax weights are positive).
    si, sj, r = sp.symbols("sigma_i sigma_j r", nonnegative=True)
    half = sp.Rational(1, 2)
    quarter = sp.Rational(1, 4)
    # an off-diagonal pair as softmax makes it: e_i, e_j > 0 and the rest of the mass R >= 0, so
    # r = 1 - sigma_i - sigma_j = R / (e_i + e_j + R) is shown >= 0, not assumed
    e_i, e_j = sp.symbols("e_i e_j", positive=True)
    rest = sp.Symbol("R", nonnegative=True)
    pair = {si: e_i / (e_i + e_j + rest), sj: e_j / (e_i + e_j + rest)}

    steps = [
        Step.define(sigma[i], sp.exp(z[i]) / total, r"softmax, $1 \le i \le n$, $z \in \mathbb{R}^n$"),
        Step(sp.Derivative(sigma[i], z[j]), quotient,
             r"quotient rule, $\partial e^{z_k} / \partial z_j = \delta_{jk} e^{z_k}$"),
        Step(None, collapsed, r"the sum over $k$ keeps $k = j$ ($1 \le j \le n$)",
             check=Chain(assumptions=in_range)),
        Step(None, jac, r"substitute $\sigma_i$, $\sigma_j$ back"),
        Step(r"J(z)", r"\operatorname{diag}(\sigma) - \sigma\sigma^{\top}",
             r"the line above as a matrix; cross-check differentiating the explicit softmax",
             AtSizes(_jacobian_difference, SIZES)),
        Step(sp.exp(z[i] + c) / sp.Sum(sp.exp(z[k] + c), (k, 1, n)), sigma[i],
             r"shift invariance: $e^{c}$ cancels, for every $c \in \mathbb{R}$"),
        Step(r"\sigma(z + c\mathbf{1})", r"\sigma(z)", r"cross-check: shift invariance with explicit vectors",
             AtSizes(_shift_difference, SIZES)),
        Step(sp.Sum(jac, (j, 1, n)), sp.Integer(0),
             r"rows of $J$ sum to 0 ($J\mathbf{1} = 0$, the derivative along a shift)",
             Symbolic(assumptions=in_range)),
        Step(r"J_{ii} = \sigma_i (1 - \sigma_i)", r"\tfrac14 - \left(\sigma_i - \tfrac12\right)^2 \le \tfrac14",
             r"diagonal entries; equality at $\sigma_i = 1/2$",
             NonNegative(quarter - si * (1 - si), (si - half) ** 2)),
        Step(r"|J_{ij}| = \sigma_i \sigma_j", r"\tfrac14 - \tfrac14\bigl[(\sigma_i - \sigma_j)^2 + r^2 + 2r(\sigma_i + \sigma_j)\bigr] \le \tfrac14",
             r"off-diagonal, $i \ne j$, with $r = 1 - \sigma_i - \sigma_j = \sum_{k \ne i,j} \sigma_k \ge 0$ "
             r"($\sigma_a = e^{z_a} / (e^{z_i} + e^{z_j} + R)$, $R = \sum_{k \ne i,j} e^{z_k} \ge 0$)",
             NonNegative((quarter - si * sj).subs(pair),
                         (((si - sj) ** 2 + r**2 + 2 * r * (si + sj)) / 4).subs(pair),
                         {r: ((1 - si - sj).subs(pair), rest / (e_i + e_j + rest))})),
        Step(r"J_{ij} - J_{ji}", r"(\sigma_i - \sigma_j)\,\delta_{ij} = 0",
             r"$J$ is symmetric, for every $n$ (the two sides differ only where $i = j$)",
             Custom(_symmetric_symbolic, "symbolic (cases i = j, i != j)")),
        Step(r"J - J^{\top}", r"0", r"cross-check: $J$ of the explicit softmax is symmetric", AtSizes(_symmetric_difference, SIZES)),
        Step(r"x^{\top} J x", r"\sum_a \sigma_a x_a^2 - \Bigl(\sum_b \sigma_b x_b\Bigr)^2 = "
             r"\sum_a \sigma_a (x_a - \bar{x})^2 \ge 0",
             r"$J$ is positive semidefinite for every $n$: the weighted variance of $x$, "
             r"$\bar{x} = \sum_b \sigma_b x_b$, $\sigma_a \ge 0$, $\sum_a \sigma_a = 1$",
             Custom(_quadratic_form_symbolic, "symbolic (symbolic n, nonnegative summands)")),
        Step(r"R_i = \sum_j |J_{ij}|", r"\sigma_i(1-\sigma_i) + \sigma_i \sum_{j \ne i} \sigma_j = 2\sigma_i(1 - \sigma_i)",
             r"row sums of $|J|$; the weights sum to 1, so $\sum_{j \ne i} \sigma_j = 1 - \sigma_i$",
             Symbolic(sigma[i] * (1 - sigma[i]) + sigma[i] * (sp.Sum(sigma[j], (j, 1, n)) - sigma[i])
                      - 2 * sigma[i] * (1 - sigma[i]))),
        Step(r"2\sigma_i(1 - \sigma_i)", r"\tfrac12 - 2\left(\sigma_i - \tfrac12\right)^2 \le \tfrac12",
             r"each row sum is at most 1/2", NonNegative(half - 2 * si * (1 - si), 2 * (si - half) ** 2)),
        Step(r"\|J\|_2", r"\lambda_{\max}(J)",
             r"$J$ is symmetric and positive semidefinite (above): its singular values are its eigenvalues",
             Cited("spectral theorem for real symmetric matrices",
                   spot_check=Custom(_norm_is_lambda_max, "numeric, mpmath 40 digits, " + _points_note()))),
        Step(None, r"\max_i R_i", r"every eigenvalue lies in a disc $|\lambda - J_{ii}| \le \sum_{j \ne i} |J_{ij}|$, "
             r"so $\lambda \le J_{ii} + \sum_{j \ne i} |J_{ij}| = R_i$ for some $i$; it can be strict "
             r"(the $n = 3$ line below)",
             Cited("Gershgorin circle theorem",
                   spot_check=Custom(_gershgorin_spot_check, "exact, rational sigma, " + _points_note())), rel=r"\le"),
        Step(None, r"\tfrac12", r"each row sum is at most 1/2 (above), for every $i$", rel=r"\le",
             check=NonNegative(half - 2 * si * (1 - si), 2 * (si - half) ** 2)),
        Step(r"\|J\|_2 = \tfrac13 < \tfrac49", r"\max_i R_i \text{ at } n = 3,\ z = 0", rel=r"=",
             reason=r"$\|J\|_2 = \max_i R_i$ is false in general: $J = I/3 - \mathbf{1}\mathbf{1}^{\top}/9$ has "
                    r"eigenvalues $1/3, 1/3, 0$ while every $R_i = 4/9$",
             check=Custom(_not_equal_at_uniform3, "symbolic (explicit eigenvalues)")),
        Step(r"\|J\|_2", r"\tfrac12 \text{ at } n = 2,\ z = (0, 0)",
             r"the bound is attained (eigenvalues 0 and 1/2)", Custom(_sharpness, "symbolic (explicit eigenvalues)")),
    ]
    return Derivation(
        name="softmax-jacobian",
        title="Softmax Jacobian, shift invariance and its bounds",
        statement=(r"For $\sigma = \operatorname{softmax}(z)$, $z \in \mathbb{R}^n$: "
                   r"$\partial\sigma_i/\partial z_j = \sigma_i(\delta_{ij} - \sigma_j)$; "
                   r"$\sigma(z + c\mathbf{1}) = \sigma(z)$; $|J_{ij}| \le 1/4$; "
                   r"$0 \preceq J$ and $\|J\|_2 \le 1/2$ for every $z$ (attained)."),
        steps=steps,
        assumptions=["z real, n >= 1 (symbolic n); explicit checks at n = 2..6",
                     "the step ||J||_2 = lambda_max(J) <= max_i R_i cites the spectral theorem and Gershgorin's "
                     "circle theorem (not re-proved here; spot-checked at n = 2..6)"],
        unfold=unfold,
        results={"entry_bound": "1/4", "spectral_norm_bound": "1/2", "bound_attained": "n=2, z=(0,0)",
                 "explicit_sizes": list(SIZES)},
    )
