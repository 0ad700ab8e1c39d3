r"""Var(q.k) when each q_l is correlated with its k_l: d_k (1 + rho^2) for unit variances.

The components come in pairs (q_l, k_l), l = 1..d_k, independent across l; each pair is a
standard bivariate Normal with correlation rho (means 0, variances 1, Cov(q_l, k_l) = rho).
Then

    Var(q.k) = d_k (1 + rho^2),

which is d_k (Vaswani et al. 2017, footnote 4) at rho = 0 and 2 d_k when q = k. The
derivation uses an expectation operator that knows only linearity, the stated independence
and stated moments (proofs.expectation); the one fourth moment that matters,
E[q_l^2 k_l^2] = 1 + 2 rho^2, is itself derived from two independent standard Normals. A
Monte Carlo run of the project's engine (verify.montecarlo) cross-checks d_k = 8, rho = 0.6.

Run it with ``attnverify prove proofs/examples/correlated_qk.py``.
"""

import math

import sympy as sp
from sympy import stats

from proofs import AtSizes, Custom, Derivation, Step, Symbolic
from proofs.attention import gaussian_pair_moments, normal_moments
from proofs.expectation import ByExpectation, Expect, ExpectationOperator, Family

q, k = sp.IndexedBase("q", real=True), sp.IndexedBase("k", real=True)
l = sp.Symbol("l", integer=True, positive=True)
d = sp.Symbol("d_k", integer=True, positive=True)
rho = sp.Symbol("rho", real=True)
z1, z2 = sp.symbols("z_1 z_2", real=True)
dot = sp.Sum(q[l] * k[l], (l, 1, d))

#: The pairs (q_l, k_l): independent across l, each with the moments of a correlated Normal pair.
pair_moments = gaussian_pair_moments(q[l], k[l], rho)
E = ExpectationOperator(families=[Family((q, k), l)], moments=pair_moments)
#: Two independent standard Normals, the building blocks of one pair.
E_z = ExpectationOperator(groups=[[z1], [z2]],
                          moments={z**p: m for z in (z1, z2) for p, m in normal_moments(4).items()})
k_from_z = rho * z1 + sp.sqrt(1 - rho**2) * z2


def variance_form(x):
    """An expression whose expectation is Var(x): E[x^2 - x E[x]] = E[x^2] - E[x]^2."""
    return x**2 - x * Expect(x)


def explicit_variance_minus_formula(size):
    """The same variance with the sum written out at an explicit d_k (the explicit-size path)."""
    explicit = ExpectationOperator(families=[Family((q, k), l)], moments=pair_moments, explicit_sums=True)
    return explicit.variance(sp.Sum(q[l] * k[l], (l, 1, size))) - size * (1 + rho**2)


def monte_carlo():
    """Var(q.k) at d_k = 8, rho = 0.6 by the project's Monte Carlo engine; predicted 8 (1 + 0.36)."""
    from verify.montecarlo import FunctionSampler, check_equal, get_distribution, run_mc

    width, r = 8, 0.6
    normal = get_distribution("normal")

    def correlated_dot(xp, rng, n):
        z_a, z_b = normal.draw(xp, rng, (n, width)), normal.draw(xp, rng, (n, width))
        return xp.sum(z_a * (r * z_a + math.sqrt(1 - r * r) * z_b), axis=1)  # (n,)

    result = run_mc(FunctionSampler(correlated_dot, name="correlated q.k"), 400_000, seed=12, progress=False)
    verdict = check_equal(result, width * (1 + r * r), claim="Var(q.k) = 8 (1 + 0.6^2) = 10.88")
    return verdict.verdict == "SUPPORTED", verdict.summary()


correlated_qk_variance = Derivation(
    name="correlated-qk-variance",
    title="Variance of q.k when Cov(q_l, k_l) = rho",
    statement=r"If the pairs $(q_l, k_l)$, $l = 1..d_k$, are independent and each is a standard bivariate "
              r"Normal with correlation $\rho$, then $\operatorname{Var}(q \cdot k) = d_k (1 + \rho^2)$.",
    assumptions=[
        "the pairs (q_l, k_l) are mutually independent across l and identically distributed (stated)",
        "each pair is jointly Normal with means 0, variances 1 and correlation rho, -1 <= rho <= 1 (stated)",
    ],
    steps=[
        Step.define(r"q \cdot k", dot, r"dot product of $q, k \in \mathbb{R}^{d_k}$"),
        Step(r"(\mathbb{E}Z, \mathbb{E}Z^2, \mathbb{E}Z^3, \mathbb{E}Z^4)", r"(0, 1, 0, 3)",
             r"moments of $Z \sim \mathcal{N}(0, 1)$ (sympy.stats)",
             Symbolic(sp.Matrix([stats.E(stats.Normal("Z", 0, 1) ** p) for p in range(1, 5)])
                      - sp.Matrix([0, 1, 0, 3]))),
        Step(r"(q_l, k_l)", r"\left(z_1,\ \rho z_1 + \sqrt{1 - \rho^2}\, z_2\right)",
             r"same law: both are Normal vectors with means 0, variances 1 and covariance $\rho$ "
             r"($z_1, z_2$ independent standard Normals)",
             Symbolic(sp.Matrix([E_z(z1), E_z(z1**2) - 1, E_z(k_from_z), E_z(k_from_z**2) - 1,
                                 E_z(z1 * k_from_z) - rho]))),
        Step(sp.Symbol(r"\mathbb{E}[q_l^2 k_l^2]"), 1 + 2 * rho**2,
             r"expand $z_1^2 (\rho z_1 + \sqrt{1-\rho^2} z_2)^2$; $\mathbb{E} z^4 = 3$, independence of $z_1, z_2$",
             ByExpectation(E_z, z1**2 * k_from_z**2, 1 + 2 * rho**2,
                           uses="independence of z_1, z_2, their stated moments")),
        Step(sp.Symbol(r"\operatorname{Var}(q_l k_l)"), 1 + rho**2,
             r"$\mathbb{E}[q_l^2 k_l^2] - \mathbb{E}[q_l k_l]^2 = 1 + 2\rho^2 - \rho^2$",
             ByExpectation(E, variance_form(q[l] * k[l]), 1 + rho**2, uses="the pair's moments")),
        Step(sp.Symbol(r"\operatorname{Var}(q \cdot k)"), d * (1 + rho**2),
             r"the $d_k$ pairs are independent: the cross terms $l \ne m$ give $\rho^2$ and cancel "
             r"against $\mathbb{E}[q \cdot k]^2$, for a symbolic $d_k$",
             ByExpectation(E, variance_form(dot), d * (1 + rho**2),
                           uses="independence across l, the pair's moments, symbolic d_k")),
        Step(sp.Symbol(r"\operatorname{Var}(q \cdot k)"), d * (1 + rho**2),
             "cross-check: the sum written out at explicit sizes",
             AtSizes(explicit_variance_minus_formula, range(1, 5), "d_k")),
        Step(r"\operatorname{Var}(q \cdot k)\big|_{\rho = 0}", d,
             "uncorrelated components: the formula above at rho = 0, Vaswani et al. (2017), footnote 4",
             Symbolic((d * (1 + rho**2)).subs(rho, 0) - d)),
        Step(sp.Symbol(r"\operatorname{Var}(q \cdot k)\big|_{d_k = 8,\ \rho = 0.6}"), sp.Float(10.88, 4),
             "Monte Carlo, 400,000 draws (verify.montecarlo, alpha = 1e-6, margin 5%)",
             Custom(monte_carlo, "Monte Carlo (verify.montecarlo)")),
    ],
)
