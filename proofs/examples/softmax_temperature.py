r"""The Jacobian of a temperature-scaled softmax, sigma = softmax(s / T).

    d sigma_i / d s_j = sigma_i (delta_ij - sigma_j) / T

for every length n and every temperature T > 0: proved at index level for a symbolic n, the
matrix form (diag(sigma) - sigma sigma^T) / T at explicit sizes, its rows summing to 0, the
entry bound 1/(4T), the norm bound 1/(2T) (cited from the softmax-jacobian derivation, shown
as not checked, spot-checked numerically), and a numeric cross-check against numerics.softmax
by finite differences.

Run it with ``attnverify prove proofs/examples/softmax_temperature.py``.
"""

import numpy as np
import sympy as sp

from proofs import AtSizes, Cited, Custom, Derivation, NonNegative, Step, Symbolic
from proofs.attention import exp_prepare, index_range, jacobian, softmax_indexed, softmax_vector
from proofs.derivation import unfold_indexed

s = sp.IndexedBase("s", real=True)  # the scores
sigma = sp.IndexedBase("sigma")  # displayed notation for the weights
i, j, n = sp.symbols("i j n", integer=True, positive=True)
k = sp.Symbol("k", integer=True)
T = sp.Symbol("T", positive=True)
delta = sp.KroneckerDelta(i, j)
in_range = index_range(n, i, j)

# Before a symbolic check, sigma[a] is replaced by its definition.
unfold = unfold_indexed({sigma: lambda a: softmax_indexed(s, a, n, k=k, temperature=T)})


def matrix_form(size):
    """The Jacobian of the explicit softmax of s / T minus (diag(sigma) - sigma sigma^T) / T."""
    logits, weights = softmax_vector(size, "s", temperature=T)
    difference = jacobian(weights, logits) - (sp.diag(*weights) - weights * weights.T) / T
    return exp_prepare([v / T for v in logits])(difference)


def finite_differences():
    """The closed form against central differences of numerics.softmax, n = 5, T = 0.7."""
    from numerics.softmax import softmax

    rng = np.random.default_rng(0)
    scores, temp, h = rng.normal(size=5), 0.7, 1e-6
    weights = softmax(scores / temp)
    closed = (np.diag(weights) - np.outer(weights, weights)) / temp
    numeric = np.empty((5, 5))
    for col in range(5):
        e = np.zeros(5)
        e[col] = h
        numeric[:, col] = (softmax((scores + e) / temp) - softmax((scores - e) / temp)) / (2 * h)
    err = float(np.max(np.abs(numeric - closed)))
    return err < 1e-8, f"max |finite difference - closed form| = {err:.1e} (central differences, h = 1e-6)"


def spectral_norms():
    """||J||_2 <= 1/(2T) at 500 random (n, s, T), n = 2..8, with numpy's eigenvalues."""
    from numerics.softmax import softmax

    rng = np.random.default_rng(1)
    worst = 0.0
    for _ in range(500):
        size, temp = int(rng.integers(2, 9)), float(rng.uniform(0.05, 5.0))
        weights = softmax(rng.normal(scale=3.0, size=size) / temp)
        jac = (np.diag(weights) - np.outer(weights, weights)) / temp
        worst = max(worst, float(np.linalg.norm(jac, 2)) * 2 * temp)
    return worst <= 1 + 1e-12, f"max of 2T ||J||_2 over 500 draws: {worst:.4f} (<= 1)"


sigma_i, sigma_j = sp.symbols("sigma_i sigma_j", nonnegative=True)

temperature_jacobian = Derivation(
    name="softmax-temperature-jacobian",
    title="Jacobian of softmax(s / T)",
    statement=r"For $\sigma = \operatorname{softmax}(s / T)$, $s \in \mathbb{R}^n$, $T > 0$: "
              r"$\partial \sigma_i / \partial s_j = \sigma_i (\delta_{ij} - \sigma_j) / T$.",
    assumptions=["s real, T > 0, n >= 1 (symbolic n); the matrix form at n = 1..5"],
    unfold=unfold,
    steps=[
        Step.define(sigma[i], softmax_indexed(s, i, n, k=k, temperature=T),
                    r"softmax of the scaled scores, $1 \le i \le n$"),
        Step(sp.Derivative(sigma[i], s[j]), sigma[i] * (delta - sigma[j]) / T,
             "quotient rule and chain rule (factor 1/T), for every n",
             Symbolic(assumptions=in_range)),
        Step(r"J", r"\left(\operatorname{diag}(\sigma) - \sigma\sigma^{\top}\right) / T",
             "the same Jacobian as a matrix, differentiating the explicit softmax",
             AtSizes(matrix_form, range(1, 6))),
        Step(sp.Sum(sigma[i] * (delta - sigma[j]) / T, (j, 1, n)), sp.Integer(0),
             "each row of J sums to 0 (adding a constant to every score changes nothing)",
             Symbolic(assumptions=in_range)),
        Step(r"J_{ii} = \sigma_i (1 - \sigma_i) / T", r"\frac{1}{4T} - \frac{(\sigma_i - 1/2)^2}{T} \le \frac{1}{4T}",
             "a higher temperature flattens the weights and shrinks the Jacobian",
             NonNegative(1 / (4 * T) - sigma_i * (1 - sigma_i) / T, (sigma_i - sp.Rational(1, 2)) ** 2 / T)),
        Step(r"\|J\|_2", r"\frac{1}{2T}", "the Jacobian of softmax(s) has spectral norm at most 1/2; divide by T",
             Cited("softmax Jacobian norm bound (attnverify derive softmax-jacobian)",
                   spot_check=Custom(spectral_norms, "numeric (random n, s, T)")), rel=r"\le"),
        Step(r"J", r"\left(\operatorname{diag}(\sigma) - \sigma\sigma^{\top}\right) / T",
             "numeric cross-check against numerics.softmax",
             Custom(finite_differences, "numeric (finite differences)")),
    ],
)
