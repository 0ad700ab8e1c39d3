"""Derivation 1: the softmax Jacobian, shift invariance, and its bounds (entries 1/4, norm 1/2)."""

from __future__ import annotations

import sympy as sp

from ..derivation import AtSizes, Chain, Custom, Definition, Derivation, NonNegative, Step, Symbolic, exp_to_symbols, unfold_indexed
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


def _quadratic_form_case(n: int) -> tuple:
    """(x^T J x, sum_{a<b} s_a s_b (x_a - x_b)^2, {s_n: 1 - s_1 - ... - s_{n-1}}) for a NonNegative check."""
    s = list(sp.symbols(f"s_1:{n + 1}", nonnegative=True))
    x = list(sp.symbols(f"x_1:{n + 1}", real=True))
    sv, xv = sp.Matrix(s), sp.Matrix(x)
    jac = sp.diag(*s) - sv * sv.T
    last = {s[-1]: 1 - sum(s[:-1])}
    form = sp.expand((xv.T * jac * xv)[0, 0].subs(last))
    witness = sum(s[a] * s[b] * (x[a] - x[b]) ** 2 for a in range(n) for b in range(a + 1, n))
    return form, witness, last


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

    steps = [
        Step.define(sigma[i], sp.exp(z[i]) / total, r"softmax, $1 \le i \le n$, $z \in \mathbb{R}^n$"),
        Step(sp.Derivative(sigma[i], z[j]), quotient,
             r"quotient rule, $\partial e^{z_k} / \partial z_j = \delta_{jk} e^{z_k}$"),
        Step(None, collapsed, r"the sum over $k$ keeps $k = j$ ($1 \le j \le n$)",
             check=Chain(assumptions=in_range)),
        Step(None, jac, r"substitute $\sigma_i$, $\sigma_j$ back"),
        Step(r"J(z)", r"\operatorname{diag}(\sigma) - \sigma\sigma^{\top}",
             r"the same Jacobian as a matrix, differentiating the explicit softmax",
             AtSizes(_jacobian_difference, SIZES)),
        Step(sp.exp(z[i] + c) / sp.Sum(sp.exp(z[k] + c), (k, 1, n)), sigma[i],
             r"shift invariance: $e^{c}$ cancels, for every $c \in \mathbb{R}$"),
        Step(r"\sigma(z + c\mathbf{1})", r"\sigma(z)", r"shift invariance, explicit vectors",
             AtSizes(_shift_difference, SIZES)),
        Step(sp.Sum(jac, (j, 1, n)), sp.Integer(0),
             r"rows of $J$ sum to 0 ($J\mathbf{1} = 0$, the derivative along a shift)",
             Symbolic(assumptions=in_range)),
        Step(r"J_{ii} = \sigma_i (1 - \sigma_i)", r"\tfrac14 - \left(\sigma_i - \tfrac12\right)^2 \le \tfrac14",
             r"diagonal entries; equality at $\sigma_i = 1/2$",
             NonNegative(quarter - si * (1 - si), (si - half) ** 2)),
        Step(r"|J_{ij}| = \sigma_i \sigma_j", r"\tfrac14 - \tfrac14\bigl[(\sigma_i - \sigma_j)^2 + r^2 + 2r(\sigma_i + \sigma_j)\bigr] \le \tfrac14",
             r"off-diagonal, $i \ne j$, with $r = 1 - \sigma_i - \sigma_j \ge 0$",
             NonNegative(quarter - si * sj, ((si - sj) ** 2 + r**2 + 2 * r * (si + sj)) / 4, {r: 1 - si - sj})),
        Step(r"J - J^{\top}", r"0", r"$J$ is symmetric", AtSizes(_symmetric_difference, SIZES)),
        Step(r"x^{\top} J x", r"\sum_{a<b} \sigma_a \sigma_b (x_a - x_b)^2 \ge 0",
             r"$J$ is positive semidefinite: eigenvalues $\ge 0$",
             NonNegative.many([_quadratic_form_case(m) for m in range(2, 6)], "n=2..5")),
        Step(r"R_i = \sum_j |J_{ij}|", r"\sigma_i(1-\sigma_i) + \sigma_i \sum_{j \ne i} \sigma_j = 2\sigma_i(1 - \sigma_i)",
             r"row sums of $|J|$; the weights sum to 1, so $\sum_{j \ne i} \sigma_j = 1 - \sigma_i$",
             Symbolic(sigma[i] * (1 - sigma[i]) + sigma[i] * (sp.Sum(sigma[j], (j, 1, n)) - sigma[i])
                      - 2 * sigma[i] * (1 - sigma[i]))),
        Step(r"2\sigma_i(1 - \sigma_i)", r"\tfrac12 - 2\left(\sigma_i - \tfrac12\right)^2 \le \tfrac12",
             r"each row sum is at most 1/2", NonNegative(half - 2 * si * (1 - si), 2 * (si - half) ** 2)),
        Step(r"\|J\|_2 = \max_{\lambda} |\lambda|", r"\max_i R_i \le \tfrac12",
             r"Gershgorin: every eigenvalue lies in a disc $|\lambda - J_{ii}| \le \sum_{j\ne i} |J_{ij}|$; $J$ symmetric",
             Definition("cited")),
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
        assumptions=["z real, n >= 1 (symbolic n); explicit checks at n = 2..6"],
        unfold=unfold,
        results={"entry_bound": "1/4", "spectral_norm_bound": "1/2", "bound_attained": "n=2, z=(0,0)",
                 "explicit_sizes": list(SIZES)},
    )
