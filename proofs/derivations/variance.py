"""Derivation 3: the variance of the dot product q.k of independent components.

The expectation steps are checked with :class:`~proofs.expectation.ExpectationOperator`,
which knows only linearity, the stated independence (q_1..q_dk, k_1..k_dk mutually
independent) and, where a line says so, the stated moments: so the independence assumption
is the only thing taken on trust, and it is printed as an assumption line. The variance of
the sum is computed for a symbolic d_k (the d_k(d_k - 1) cross terms factor by independence
and cancel); the same operator at explicit sizes d_k = 1..4 and sympy.stats (Normal
components, d_k = 1, 2) cross-check it.
"""

from __future__ import annotations

import functools

import sympy as sp
from sympy import stats

from ..derivation import AtSizes, Custom, Definition, Derivation, Step, Symbolic
from ..expectation import ByExpectation, Expect, ExpectationOperator, Family
from ._registry import register

__all__ = ["qk_variance", "variance_formula", "component_operator"]

MU_Q, MU_K = sp.symbols("mu_q mu_k", real=True)
S_Q, S_K = sp.symbols("sigma_q sigma_k", positive=True)
D = sp.Symbol("d_k", integer=True, positive=True)
L_IDX = sp.Symbol("l", integer=True, positive=True)
Q, K = sp.IndexedBase("q"), sp.IndexedBase("k")
CROSS_SIZES = range(1, 5)
STANDARD = {MU_Q: 0, MU_K: 0, S_Q: 1, S_K: 1}


def variance_formula(d=D, mu_q=MU_Q, mu_k=MU_K, s_q=S_Q, s_k=S_K):
    """d (s_q^2 s_k^2 + mu_q^2 s_k^2 + mu_k^2 s_q^2)."""
    return d * (s_q**2 * s_k**2 + mu_q**2 * s_k**2 + mu_k**2 * s_q**2)


def component_operator(moments: bool = True, *, explicit_sums: bool = False, standard: bool = False,
                       independent: bool = True) -> ExpectationOperator:
    """The expectation operator of the derivation's assumptions.

    ``q_l`` (one group per l) and ``k_l`` (one group per l), all mutually independent
    (``independent=False`` puts ``q_l, k_l`` in one group instead: a wrong statement the
    tests use). With ``moments``, ``E[q_l] = mu_q``, ``E[q_l^2] = sigma_q^2 + mu_q^2`` and the
    same for k (the definitions of mean and variance); ``standard`` sets them to 0 and 1.
    """
    families = [Family((Q,), L_IDX), Family((K,), L_IDX)] if independent else [Family((Q, K), L_IDX)]
    stated = {}
    if moments:
        stated = {Q[L_IDX]: MU_Q, Q[L_IDX] ** 2: S_Q**2 + MU_Q**2, K[L_IDX]: MU_K, K[L_IDX] ** 2: S_K**2 + MU_K**2}
        if standard:
            stated = {key: sp.sympify(value).subs(STANDARD) for key, value in stated.items()}
    return ExpectationOperator(families=families, moments=stated, explicit_sums=explicit_sums)


@functools.lru_cache(maxsize=None)
def _per_term_stats() -> sp.Expr:
    q = stats.Normal("q", MU_Q, S_Q)
    k = stats.Normal("k", MU_K, S_K)
    return sp.expand(stats.variance(q * k))


def _dot(d=D) -> sp.Expr:
    return sp.Sum(Q[L_IDX] * K[L_IDX], (L_IDX, 1, d))


def _explicit_size_difference(d: int) -> sp.Expr:
    """Var(sum_{l=1}^d q_l k_l) by the operator, sums expanded term by term, minus the formula."""
    return component_operator(explicit_sums=True).variance(_dot(d)) - variance_formula(d)


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
    q, k = Q[L_IDX], K[L_IDX]
    dot = sp.Sum(sp.Mul(q, k, evaluate=False), (L_IDX, 1, D))
    def mul(*factors):
        return sp.Mul(*factors, evaluate=False)

    def minus(a, b):  # a - b, kept in this order for display
        return sp.Add(a, mul(-1, b), evaluate=False)

    var_term = minus(Expect(mul(q**2, k**2)), Expect(mul(q, k)) ** 2)
    factored = minus(mul(Expect(q**2), Expect(k**2)), mul(Expect(q) ** 2, Expect(k) ** 2))
    var_dot = minus(Expect(dot**2), Expect(dot) ** 2)
    independence = component_operator(moments=False)
    with_moments = component_operator()
    standard = component_operator(standard=True)

    def stats_term() -> tuple[bool, str]:
        value = _per_term_stats()
        ok = sp.expand(value - sp.expand(per_term)) == 0
        return ok, f"sympy.stats.variance(q*k) = {value}"

    steps = [
        Step.define(r"q \cdot k", dot,
                    r"dot product of $q, k \in \mathbb{R}^{d_k}$"),
        Step(latex=r"q_1, \dots, q_{d_k},\ k_1, \dots, k_{d_k} &\quad \text{mutually independent}",
             reason=r"the one assumption taken on trust; the $q_l$ share one distribution, the $k_l$ another "
                    r"(only their means and variances enter)",
             check=Definition("assumption")),
        Step(latex=r"\mathbb{E}[q_l] = \mu_q,\ \mathbb{E}[q_l^2] &= \sigma_q^2 + \mu_q^2,\quad "
                   r"\mathbb{E}[k_l] = \mu_k,\ \mathbb{E}[k_l^2] = \sigma_k^2 + \mu_k^2",
             reason=r"means $\mu$ and variances $\sigma^2$ ($\operatorname{Var} X = \mathbb{E}[X^2] - \mathbb{E}[X]^2$)",
             check=Definition("definition")),
        Step(r"\operatorname{Var}(q_l k_l)", var_term, r"definition of the variance", Definition("definition")),
        Step(None, factored, r"independence of $q_l$ and $k_l$: the expectation of a product of independent "
             r"factors factors", ByExpectation(independence, var_term, factored, uses="stated independence")),
        Step(None, moments_form, r"the stated means and variances",
             ByExpectation(with_moments, factored, moments_form, uses="stated moments")),
        Step(None, per_term, r"expand: only the first two moments of each factor enter"),
        Step(r"\operatorname{Var}(q_l k_l)", per_term,
             r"cross-check: sympy.stats, $q_l \sim \mathcal{N}(\mu_q, \sigma_q^2)$, $k_l \sim \mathcal{N}(\mu_k, \sigma_k^2)$ "
             r"independent", Custom(stats_term, "symbolic (sympy.stats)")),
        Step(r"\operatorname{Var}(q \cdot k)", var_dot, r"definition of the variance", Definition("definition")),
        Step(None, r"\sum_{l=1}^{d_k} \operatorname{Var}(q_l k_l)",
             r"the $d_k(d_k - 1)$ cross terms $l \ne m$ factor by independence and cancel (symbolic $d_k$)",
             ByExpectation(independence, var_dot, sp.Sum(var_term, (L_IDX, 1, D)),
                           uses="stated independence, symbolic d_k")),
        Step(None, summed, r"each term as above",
             ByExpectation(with_moments, sp.Sum(var_term, (L_IDX, 1, D)), summed, uses="stated moments, symbolic d_k")),
        Step(None, full, r"the summand does not depend on $l$"),
        Step(r"\operatorname{Var}(q \cdot k)", full, r"cross-check: the operator with the sums expanded term by term",
             AtSizes(_explicit_size_difference, CROSS_SIZES, "d_k")),
        Step(r"\operatorname{Var}(q \cdot k)\big|_{\mu = 0,\ \sigma = 1}", full.subs(STANDARD),
             r"means 0, variances 1 (Vaswani et al. 2017, footnote 4)", Symbolic(full.subs(STANDARD) - D)),
        Step(r"\operatorname{Var}(q \cdot k)\big|_{\mu = 0,\ \sigma = 1}", sp.Integer(1) * D,
             r"cross-check with sympy.stats on the explicit sum, standard Normal components",
             AtSizes(_stats_explicit_difference, range(1, 3), "d_k")),
        Step(r"\operatorname{Var}\!\left(\frac{q \cdot k}{\sqrt{d_k}}\right)", sp.Integer(1),
             r"$\operatorname{Var}(cX) = c^2 \operatorname{Var}(X)$ with $c = 1/\sqrt{d_k}$; here the operator on "
             r"$(q \cdot k)/\sqrt{d_k}$ directly",
             ByExpectation(standard, Expect((dot / sp.sqrt(D)) ** 2) - Expect(dot / sp.sqrt(D)) ** 2, sp.Integer(1),
                           uses="stated independence and moments 0, 1, symbolic d_k")),
    ]
    return Derivation(
        name="qk-variance",
        title="Variance of the dot product q.k",
        statement=(r"If the components $q_l, k_l$ ($l = 1..d_k$) are mutually independent, the $q_l$ with mean "
                   r"$\mu_q$ and variance $\sigma_q^2$ and the $k_l$ with $\mu_k, \sigma_k^2$, then "
                   r"$\operatorname{Var}(q \cdot k) = d_k(\sigma_q^2\sigma_k^2 + "
                   r"\mu_q^2\sigma_k^2 + \mu_k^2\sigma_q^2)$ for every $d_k \ge 1$; with means 0 and variances 1 it is "
                   r"$d_k$, and $\operatorname{Var}(q \cdot k/\sqrt{d_k}) = 1$."),
        steps=steps,
        assumptions=[
            "all 2 d_k components q_l, k_l are mutually independent: stated, not proved (the expectation operator "
            "uses exactly this and linearity, nothing else)",
            "the q_l share one distribution with mean mu_q and variance sigma_q^2, the k_l one with mu_k, sigma_k^2; "
            "only these first two moments enter, so no distributional family is assumed",
        ],
        latex_options={"order": "none"},
        results={"variance": str(variance_formula()), "standard_case": "d_k", "scaled_variance": 1,
                 "cross_check_sizes": list(CROSS_SIZES)},
    )
