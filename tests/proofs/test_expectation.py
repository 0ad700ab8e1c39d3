"""The expectation operator: linearity, stated independence and stated moments, nothing more.

Cross-checked against sympy.stats at explicit distributions (where stats' own silent
independence is true by construction), including a correlated pair where a wrong independence
statement gives a different, detectably wrong answer.
"""

from __future__ import annotations

import random

import pytest
import sympy as sp
from sympy import stats

from proofs.expectation import Expect, ExpectationOperator, Family

q, k, x, w = (sp.IndexedBase(s) for s in "qkxw")
l = sp.Symbol("l", integer=True)
d = sp.Symbol("d", integer=True, positive=True)
MU_Q, MU_K, RHO = sp.symbols("mu_q mu_k rho", real=True)
S_Q, S_K = sp.symbols("sigma_q sigma_k", positive=True)


def _moments_of(rv, up_to: int) -> dict[int, sp.Expr]:
    return {p: sp.simplify(stats.E(rv**p)) for p in range(1, up_to + 1)}


# ---------------------------------------------------------------- explicit distributions


def test_random_polynomials_match_sympy_stats_for_independent_variables():
    rvs = [stats.Normal("a", sp.Rational(1, 2), 2), stats.Exponential("b", 3), stats.Die("c", 4)]
    plain = sp.symbols("a b c", real=True)
    moments = {}
    for sym, rv in zip(plain, rvs):
        for p, m in _moments_of(rv, 4).items():
            moments[sym**p] = m
    op = ExpectationOperator([[s] for s in plain], moments=moments)
    rng = random.Random(20261129)
    for _ in range(6):
        poly = sum(rng.randint(-3, 3) * plain[0] ** rng.randint(0, 2) * plain[1] ** rng.randint(0, 2)
                   * plain[2] ** rng.randint(0, 2) for _ in range(4))
        expected = sp.expand(stats.E(poly.subs(dict(zip(plain, rvs)))))
        assert sp.simplify(op(poly) - expected) == 0, poly


def test_correlated_pair_needs_its_joint_moments_and_wrong_independence_is_detectable():
    z1, z2 = stats.Normal("z1", 0, 1), stats.Normal("z2", 0, 1)
    rho = sp.Rational(3, 5)
    q_rv, k_rv = z1, rho * z1 + sp.sqrt(1 - rho**2) * z2  # corr(q, k) = rho
    truth = sp.simplify(stats.variance(q_rv * k_rv))
    assert truth == 1 + rho**2
    qs, ks = sp.symbols("q k", real=True)
    marginal = {qs: 0, qs**2: 1, ks: 0, ks**2: 1}
    joint = {qs * ks: sp.simplify(stats.E(q_rv * k_rv)), qs**2 * ks**2: sp.simplify(stats.E(q_rv**2 * k_rv**2))}
    assert joint == {qs * ks: rho, qs**2 * ks**2: 1 + 2 * rho**2}
    right = ExpectationOperator([[qs, ks]], moments={**marginal, **joint})
    assert right.variance(qs * ks) == truth
    wrong = ExpectationOperator([[qs], [ks]], moments=marginal)  # states independence that does not hold
    assert wrong.variance(qs * ks) == 1 and wrong.variance(qs * ks) != truth
    # one group but no joint moments: the answer stays unevaluated instead of guessing
    silent = ExpectationOperator([[qs, ks]], moments=marginal)
    assert silent.unevaluated(qs**2 * ks**2) == {Expect(qs**2 * ks**2)}


# ---------------------------------------------------------------- symbolic length


def _qk_operator(**kw) -> ExpectationOperator:
    return ExpectationOperator(families=[Family((q,), l), Family((k,), l)], moments={
        q[l]: MU_Q, q[l]**2: S_Q**2 + MU_Q**2, k[l]: MU_K, k[l]**2: S_K**2 + MU_K**2}, **kw)


def test_variance_of_the_dot_product_for_symbolic_length():
    formula = d * (S_Q**2 * S_K**2 + MU_Q**2 * S_K**2 + MU_K**2 * S_Q**2)
    got = _qk_operator().variance(sp.Sum(q[l] * k[l], (l, 1, d)))
    assert sp.expand(got - formula) == 0
    for n in range(1, 5):  # the explicit-size path agrees size by size
        explicit = _qk_operator(explicit_sums=True).variance(sp.Sum(q[l] * k[l], (l, 1, n)))
        assert sp.expand(explicit - formula.subs(d, n)) == 0


@pytest.mark.parametrize("n", [1])  # n = 2 takes 16 s in sympy.stats; the size sweep above covers n = 1..4
def test_dot_product_variance_matches_sympy_stats_at_explicit_size(n):
    mq, mk, sq, sk = 1, -2, 3, 1
    qs = [stats.Normal(f"q{i}", mq, sq) for i in range(n)]
    ks = [stats.Normal(f"k{i}", mk, sk) for i in range(n)]
    truth = sp.simplify(stats.variance(sum(a * b for a, b in zip(qs, ks))))
    op = ExpectationOperator(families=[Family((q,), l), Family((k,), l)],
                             moments={q[l]: mq, q[l]**2: sq**2 + mq**2, k[l]: mk, k[l]**2: sk**2 + mk**2})
    assert op.variance(sp.Sum(q[l] * k[l], (l, 1, d))).subs(d, n) == truth


def test_fourth_moment_of_a_sum_uses_every_index_pattern():
    gauss = {x[l]: 0, x[l]**2: 1, x[l]**3: 0, x[l]**4: 3}
    op = ExpectationOperator(families=[Family((x,), l)], moments=gauss)
    assert op(sp.Sum(x[l], (l, 1, d)) ** 4) == 3 * d**2  # 3 d + 3 d (d - 1)
    explicit = ExpectationOperator(families=[Family((x,), l)], moments=gauss, explicit_sums=True)
    for n in (1, 2, 3):
        zs = [stats.Normal(f"z{i}", 0, 1) for i in range(n)]
        assert explicit(sp.Sum(x[l], (l, 1, n)) ** 4) == 3 * n**2 == stats.E(sum(zs) ** 4)


def test_index_dependent_coefficients():
    op = ExpectationOperator(families=[Family((x,), l)], moments={x[l]: 0, x[l]**2: 1})
    # single sum: linearity keeps the sum; square: the off-diagonal terms vanish (E[x] = 0)
    assert op(sp.Sum(w[l] * x[l] ** 2, (l, 1, d))) == sp.Sum(w[l], (l, 1, d))
    assert op(sp.Sum(w[l] * x[l], (l, 1, d)) ** 2) == sp.Sum(w[l] ** 2, (l, 1, d))
    # with E[x] = m unknown-to-vanish, the off-diagonal sum over l != m is not counted: left unevaluated
    nonzero = ExpectationOperator(families=[Family((x,), l)], moments={x[l]: 1, x[l]**2: 2})
    assert nonzero.unevaluated(sp.Sum(w[l] * x[l], (l, 1, d)) ** 2)


# ---------------------------------------------------------------- what it refuses to assume


def test_independence_alone_factors_and_leaves_moments_unevaluated():
    op = ExpectationOperator(families=[Family((q,), l), Family((k,), l)])
    assert op(q[l] ** 2 * k[l] ** 2) == Expect(q[l] ** 2) * Expect(k[l] ** 2)
    assert sp.expand(op.variance(q[l] * k[l]) - (Expect(q[l] ** 2) * Expect(k[l] ** 2)
                                                 - Expect(q[l]) ** 2 * Expect(k[l]) ** 2)) == 0
    joint = ExpectationOperator(families=[Family((q, k), l)])
    assert joint(q[l] ** 2 * k[l] ** 2) == Expect(q[l] ** 2 * k[l] ** 2)


def test_what_cannot_be_reduced_stays_explicit():
    a, b, c = sp.symbols("a b c", real=True)
    op = ExpectationOperator([[a], [b]], moments={a: 1, a**2: 2})
    assert op(3 * a + c) == 3 + c  # c is not random: a constant
    assert op(a * b) == Expect(b)  # independence factors; E[b] was never stated
    assert op(sp.sin(a + b)) == Expect(sp.sin(a + b))  # a function of two groups
    assert op(sp.exp(a)) == Expect(sp.exp(a))
    assert op(op(sp.sin(a + b) + a**2)) == op(sp.sin(a + b) + a**2)  # idempotent
    fam = ExpectationOperator(families=[Family((x,), l)], moments={x[l]: 0, x[l]**2: 1})
    m = sp.Symbol("m", integer=True)
    assert fam(x[1] * x[2]) == 0  # distinct numeric indices: independent
    assert fam(x[l] * x[m]) == Expect(x[l] * x[m])  # l and m may coincide
    assert fam(x[3] * sp.Sum(x[l], (l, 1, d))) == Expect(x[3] * sp.Sum(x[l], (l, 1, d)))


def test_bad_declarations_are_named():
    a, b = sp.symbols("a b")
    with pytest.raises(ValueError, match="mixes variables of independent groups"):
        ExpectationOperator([[a], [b]], moments={a * b: 0})
    with pytest.raises(ValueError, match="declared in groups 0 and 1"):
        ExpectationOperator([[a], [a]])
    with pytest.raises(ValueError, match="no declared random variable"):
        ExpectationOperator([[a]], moments={b: 0})
    with pytest.raises(ValueError, match="must be non-random"):
        ExpectationOperator([[a], [b]], moments={a: b})
    with pytest.raises(ValueError, match="template index"):
        ExpectationOperator(families=[Family((x,), l)], moments={x[1]: 0})
    with pytest.raises(TypeError, match="group of one"):
        ExpectationOperator([a])
    with pytest.raises(TypeError, match="IndexedBase"):
        Family((a,), l)


def test_latex_of_an_unevaluated_expectation():
    assert sp.latex(Expect(q[l] ** 2)) == r"\mathbb{E}[{q}_{l}^{2}]"
    assert str(Expect(q[l])) == "E[q[l]]"


def test_docstring_examples_run():
    import doctest

    import proofs.expectation as module

    failures, tried = doctest.testmod(module)
    assert tried >= 3 and failures == 0
