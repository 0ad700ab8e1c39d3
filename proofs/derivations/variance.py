"""Derivation 3: the variance of the dot product q.k of independent components.

Per term, sympy.stats computes Var(q_l k_l) for independent Normal factors; the same
value follows for *any* independent factors from E[q^2] = s^2 + mu^2 (only the first two
moments enter), so the Normal choice loses nothing. Independence across terms is an
explicit assumption (sympy.stats treats distinct random symbols as independent silently,
sympy #20111), after which the variance of the sum is the sum of the variances, summed
over a symbolic d_k with ``Sum(...).doit()``. Cross-checks at d_k = 1..4 expand the
explicit sum's second moment monomial by monomial.
"""

from __future__ import annotations

import functools

import sympy as sp
from sympy import stats

from ..derivation import AtSizes, Custom, Derivation, Step, Symbolic
from ._registry import register

__all__ = ["qk_variance", "variance_formula"]

MU_Q, MU_K = sp.symbols("mu_q mu_k", real=True)
S_Q, S_K = sp.symbols("sigma_q sigma_k", positive=True)
D = sp.Symbol("d_k", integer=True, positive=True)
L_IDX = sp.Symbol("l", integer=True, positive=True)
CROSS_SIZES = range(1, 5)


def variance_formula(d=D, mu_q=MU_Q, mu_k=MU_K, s_q=S_Q, s_k=S_K):
    """d (s_q^2 s_k^2 + mu_q^2 s_k^2 + mu_k^2 s_q^2)."""
    return d * (s_q**2 * s_k**2 + mu_q**2 * s_k**2 + mu_k**2 * s_q**2)


@functools.lru_cache(maxsize=None)
def _per_term_stats() -> sp.Expr:
    q = stats.Normal("q", MU_Q, S_Q)
    k = stats.Normal("k", MU_K, S_K)
    return sp.expand(stats.variance(q * k))


@functools.lru_cache(maxsize=None)
def _moments() -> tuple[sp.Expr, sp.Expr, sp.Expr, sp.Expr]:
    """E[q], E[q^2], E[k], E[k^2] from sympy.stats (Normal factors)."""
    q = stats.Normal("q", MU_Q, S_Q)
    k = stats.Normal("k", MU_K, S_K)
    return (sp.simplify(stats.E(q)), sp.expand(stats.E(q**2)), sp.simplify(stats.E(k)), sp.expand(stats.E(k**2)))


def _moment_expansion_difference(d: int) -> sp.Expr:
    """Var(sum_l q_l k_l) by expanding E[(sum)^2] - E[sum]^2 monomial by monomial.

    Every monomial of the expanded square is a product of distinct independent variables
    (or squares of one), so its expectation is the product of their moments.
    """
    m1q, m2q, m1k, m2k = _moments()
    qs = sp.symbols(f"q_1:{d + 1}", real=True)
    ks = sp.symbols(f"k_1:{d + 1}", real=True)
    total = sum(a * b for a, b in zip(qs, ks))
    moment = {}
    for var in qs:
        moment[var] = (m1q, m2q)
    for var in ks:
        moment[var] = (m1k, m2k)

    def expectation(poly: sp.Expr) -> sp.Expr:
        out = sp.Integer(0)
        for mono, coeff in sp.Poly(poly, *qs, *ks).terms():
            term = sp.Integer(coeff)
            for var, power in zip((*qs, *ks), mono):
                if power:
                    term *= moment[var][power - 1]
            out += term
        return out

    var = sp.expand(expectation(sp.expand(total**2)) - expectation(total) ** 2)
    return var - variance_formula(d)


def _stats_explicit_difference(d: int) -> sp.Expr:
    qs = [stats.Normal(f"q{l}", 0, 1) for l in range(1, d + 1)]
    ks = [stats.Normal(f"k{l}", 0, 1) for l in range(1, d + 1)]
    return stats.variance(sum(a * b for a, b in zip(qs, ks))) - d


@register("qk-variance", "Variance of the dot product q.k")
def qk_variance() -> Derivation:
    """Var(q.k) = d_k (s_q^2 s_k^2 + mu_q^2 s_k^2 + mu_k^2 s_q^2); = d_k for N(0,1); Var(q.k/sqrt(d_k)) = 1."""
    # Unevaluated forms keep the display in the reading order (rendered with order='none').
    per_term = sp.Add(sp.Mul(S_Q**2, S_K**2, evaluate=False), sp.Mul(MU_Q**2, S_K**2, evaluate=False),
                      sp.Mul(MU_K**2, S_Q**2, evaluate=False), evaluate=False)
    moments_form = sp.Add(sp.Mul(S_Q**2 + MU_Q**2, S_K**2 + MU_K**2, evaluate=False),
                          sp.Mul(-1, MU_Q**2, MU_K**2, evaluate=False), evaluate=False)
    summed = sp.Sum(per_term, (L_IDX, 1, D))
    full = sp.Mul(D, per_term, evaluate=False)
    standard = {MU_Q: 0, MU_K: 0, S_Q: 1, S_K: 1}

    def stats_term() -> tuple[bool, str]:
        value = _per_term_stats()
        ok = sp.expand(value - sp.expand(per_term)) == 0
        return ok, f"sympy.stats.variance(q*k) = {value}"

    steps = [
        Step.define(r"q \cdot k", sp.Sum(sp.Mul(sp.Indexed("q", L_IDX), sp.Indexed("k", L_IDX), evaluate=False), (L_IDX, 1, D)),
                    r"dot product of $q, k \in \mathbb{R}^{d_k}$"),
        Step.assume(r"\operatorname{Var}(q_l k_l)",
                    r"\mathbb{E}[q_l^2]\,\mathbb{E}[k_l^2] - \mathbb{E}[q_l]^2\,\mathbb{E}[k_l]^2",
                    r"$q_l$ and $k_l$ independent: $\mathbb{E}[q_l k_l] = \mathbb{E}[q_l]\mathbb{E}[k_l]$, "
                    r"$\mathbb{E}[q_l^2 k_l^2] = \mathbb{E}[q_l^2]\mathbb{E}[k_l^2]$"),
        Step.define(r"", moments_form, r"$\mathbb{E}[q_l^2] = \sigma_q^2 + \mu_q^2$, "
                    r"$\mathbb{E}[k_l^2] = \sigma_k^2 + \mu_k^2$ (definition of the variance)"),
        Step(None, per_term, r"expand: only the first two moments of each factor enter"),
        Step(r"\operatorname{Var}(q_l k_l)", per_term,
             r"sympy.stats, $q_l \sim \mathcal{N}(\mu_q, \sigma_q^2)$, $k_l \sim \mathcal{N}(\mu_k, \sigma_k^2)$ "
             r"independent: the same value", Custom(stats_term, "symbolic (sympy.stats)")),
        Step.assume(r"\operatorname{Var}(q \cdot k)", summed,
                    r"the $d_k$ terms are independent, so their covariances vanish (assumption)"),
        Step(None, full, r"the summand does not depend on $l$"),
        Step(r"\operatorname{Var}(q \cdot k)", full, r"cross-check: $\mathbb{E}[(q\cdot k)^2] - \mathbb{E}[q \cdot k]^2$ "
             r"expanded monomial by monomial", AtSizes(_moment_expansion_difference, CROSS_SIZES, "d_k")),
        Step(r"\operatorname{Var}(q \cdot k)\big|_{\mu = 0,\ \sigma = 1}", full.subs(standard),
             r"means 0, variances 1 (Vaswani et al. 2017, footnote 4)", Symbolic(full.subs(standard) - D)),
        Step(r"\operatorname{Var}(q \cdot k)\big|_{\mu = 0,\ \sigma = 1}", sp.Integer(1) * D,
             r"cross-check with sympy.stats on the explicit sum, standard Normal components",
             AtSizes(_stats_explicit_difference, range(1, 3), "d_k")),
        Step(r"\operatorname{Var}\!\left(\frac{q \cdot k}{\sqrt{d_k}}\right)", sp.Integer(1),
             r"$\operatorname{Var}(cX) = c^2 \operatorname{Var}(X)$ with $c = 1/\sqrt{d_k}$",
             Symbolic((1 / sp.sqrt(D)) ** 2 * full.subs(standard) - 1)),
    ]
    return Derivation(
        name="qk-variance",
        title="Variance of the dot product q.k",
        statement=(r"If the components $q_l, k_l$ ($l = 1..d_k$) are independent with means $\mu_q, \mu_k$ and "
                   r"variances $\sigma_q^2, \sigma_k^2$, then $\operatorname{Var}(q \cdot k) = d_k(\sigma_q^2\sigma_k^2 + "
                   r"\mu_q^2\sigma_k^2 + \mu_k^2\sigma_q^2)$; with means 0 and variances 1 it is $d_k$, and "
                   r"$\operatorname{Var}(q \cdot k/\sqrt{d_k}) = 1$."),
        steps=steps,
        assumptions=[
            "all 2 d_k components q_l, k_l are mutually independent (stated, not proved: sympy.stats "
            "treats distinct random symbols as independent)",
            "q_1..q_dk share mean mu_q and variance sigma_q^2; k_1..k_dk share mu_k, sigma_k^2; finite second moments",
            "the per-term value depends only on the first two moments, so no distributional family is assumed",
        ],
        latex_options={"order": "none"},
        results={"variance": str(variance_formula()), "standard_case": "d_k", "scaled_variance": 1,
                 "cross_check_sizes": list(CROSS_SIZES)},
    )
