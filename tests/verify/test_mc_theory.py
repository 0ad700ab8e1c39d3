"""The closed forms of verify.montecarlo.theory against exact expectations computed here
independently (SymPy stats, or polynomial expansion with the moments of each variable)."""

import math

import mpmath
import numpy as np
import pytest
import sympy as sp
from sympy import stats as sps

from verify.montecarlo import theory
from verify.montecarlo.samplers import softmax_row_stats

# ----------------------------------------------------------------------------- exact helpers


def normal_moment(k):
    return 0 if k % 2 else sp.factorial2(k - 1)


def rademacher_moment(k):
    return 0 if k % 2 else 1


def uniform_moment(k):  # Uniform(-sqrt 3, sqrt 3)
    return 0 if k % 2 else sp.Integer(3) ** (k // 2) / (k + 1)


def expectation(expr, laws):
    """E[expr] for independent variables, ``laws`` mapping each symbol to its moment function."""
    poly = sp.Poly(sp.expand(expr), *laws)
    total = sp.Integer(0)
    for powers, coeff in poly.terms():
        term = coeff
        for sym, p in zip(laws, powers):
            if p:
                term *= laws[sym](p)
        total += term
    return sp.nsimplify(total) if not total.free_symbols else sp.simplify(total)


def projected_scores(D, K, same_token, x_law):
    x = sp.symbols(f"x0:{D}")
    y = x if same_token else sp.symbols(f"y0:{D}")
    a = sp.symbols(f"a0:{D * K}")
    b = sp.symbols(f"b0:{D * K}")
    scale = 1 / sp.sqrt(D)
    q = [sum(x[i] * a[i * K + l] for i in range(D)) * scale for l in range(K)]
    k = [sum(y[i] * b[i * K + l] for i in range(D)) * scale for l in range(K)]
    dot = sum(ql * kl for ql, kl in zip(q, k))
    laws = {s: x_law for s in set(x) | set(y)}
    laws.update({s: normal_moment for s in a + b})
    return dot, laws


# ----------------------------------------------------------------------------- dot products


def test_dot_moments_general_formula_against_sympy_stats():
    mq, mk = sp.symbols("mu_q mu_k", real=True)
    sq, sk = sp.symbols("s_q s_k", positive=True)
    for d in (1, 2):
        qs = [sps.Normal(f"q{i}", mq, sq) for i in range(d)]
        ks = [sps.Normal(f"k{i}", mk, sk) for i in range(d)]
        dot = sum(q * k for q, k in zip(qs, ks))
        var = sp.simplify(sps.variance(dot))
        mean = sp.simplify(sps.E(dot))
        expected = d * (sq**2 * sk**2 + mq**2 * sk**2 + mk**2 * sq**2)
        assert sp.simplify(var - expected) == 0
        assert sp.simplify(mean - d * mq * mk) == 0
        vals = {mq: 0.3, mk: -1.2, sq: 0.7, sk: 2.0}
        m, v = theory.dot_moments(d, 0.3, -1.2, 0.7, 2.0)
        assert v == pytest.approx(float(expected.subs(vals)))
        assert m == pytest.approx(float((d * mq * mk).subs(vals)))


def test_dot_moments_do_not_depend_on_the_law():
    # Uniform components with the same mean and variance: sympy stats, exact.
    q = sps.Uniform("q", 1 - sp.sqrt(3), 1 + sp.sqrt(3))  # mean 1, variance 1
    k = sps.Uniform("k", -2 * sp.sqrt(3), 2 * sp.sqrt(3))  # mean 0, variance 4
    var = sp.simplify(sps.variance(q * k))
    assert float(var) == pytest.approx(theory.dot_moments(1, 1.0, 0.0, 1.0, 2.0)[1])


def test_scaled_dot_moments():
    assert theory.dot_moments(64, scaled=True) == (0.0, 1.0)
    assert theory.dot_moments(64) == (0.0, 64.0)
    with pytest.raises(ValueError, match="d_k must be an integer >= 1"):
        theory.dot_moments(0)


# ----------------------------------------------------------------------------- projections


@pytest.mark.parametrize("D,K", [(1, 1), (2, 1), (1, 2), (2, 2), (3, 1)])
@pytest.mark.parametrize("law,kappa", [(normal_moment, 3), (rademacher_moment, 1), (uniform_moment, sp.Rational(9, 5))])
def test_projected_fresh_weights_exact(D, K, law, kappa):
    for same in (False, True):
        dot, laws = projected_scores(D, K, same, law)
        mean = expectation(dot, laws)
        second = expectation(dot**2, laws)
        m, v = theory.projected_moments(K, D, same, float(kappa))
        assert float(mean) == pytest.approx(m, abs=1e-12)
        assert float(second - mean**2) == pytest.approx(v, rel=1e-12)


def test_projected_fixed_weights_against_exact_expectations():
    rng = np.random.default_rng(0)
    D, K = 3, 2
    wq, wk = rng.standard_normal((D, K)), rng.standard_normal((D, K))
    x = sp.symbols(f"x0:{D}")
    y = sp.symbols(f"y0:{D}")
    for law, kappa in ((normal_moment, 3.0), (rademacher_moment, 1.0), (uniform_moment, 1.8)):
        for same in (False, True):
            other = x if same else y
            q = [sum(sp.Float(wq[i, l], 30) * x[i] for i in range(D)) for l in range(K)]
            k = [sum(sp.Float(wk[i, l], 30) * other[i] for i in range(D)) for l in range(K)]
            dot = sum(a * b for a, b in zip(q, k))
            laws = {s: law for s in set(x) | set(other)}
            mean = float(expectation(dot, laws))
            var = float(expectation(dot**2, laws)) - mean**2
            m, v = theory.projected_conditional_moments(wq, wk, same, kappa)
            assert m == pytest.approx(mean, abs=1e-10)
            assert v == pytest.approx(var, rel=1e-10)


def test_projected_fixed_weights_gram_route_equals_direct_route():
    rng = np.random.default_rng(1)
    wq, wk = rng.standard_normal((9, 4)), rng.standard_normal((9, 4))  # D > K: Gram route
    a = wq @ wk.T
    fro2, tr_a2, diag = np.sum(a * a), np.trace(a @ a), np.diag(a)
    assert theory.projected_conditional_moments(wq, wk, False)[1] == pytest.approx(fro2)
    m, v = theory.projected_conditional_moments(wq, wk, True, 1.8)
    assert m == pytest.approx(np.trace(a))
    assert v == pytest.approx(fro2 + tr_a2 + (1.8 - 3) * np.sum(diag**2))


# ----------------------------------------------------------------------------- softmax statistics


def mp_row(z):
    mpmath.mp.dps = 60
    z = [mpmath.mpf(float(t)) for t in z]
    m = max(z)
    e = [mpmath.exp(t - m) for t in z]
    total = sum(e)
    s = [t / total for t in e]
    ent = -sum(p * mpmath.log(p) for p in s if p > 0)
    p2 = sum(p * p for p in s)
    p3 = sum(p**3 for p in s)
    jac = mpmath.sqrt(p2 - 2 * p3 + p2 * p2)
    return float(max(s)), float(ent), float(jac)


@pytest.mark.parametrize("row", [
    [0.0, 0.1, -0.3, 2.0],
    [0.0, -40.0, -45.0, -50.0],  # saturated: the naive formulas cancel catastrophically here
    [0.0, -20.0, -20.0, -700.0],
    [3.0, 3.0, -1.0, 0.0],  # a tie for the largest weight
    [0.0, 0.0],  # two equal weights: ||J||_F = 1/2
])
def test_softmax_row_stats_accurate_against_mpmath(row):
    out = softmax_row_stats(np, np.asarray([row], dtype=np.float64))
    smax, ent, jac = mp_row(row)
    assert out["max_weight"][0] == pytest.approx(smax, rel=1e-14)
    assert out["entropy"][0] == pytest.approx(ent, rel=1e-10, abs=1e-300)
    assert out["jacobian_fro"][0] == pytest.approx(jac, rel=1e-10, abs=1e-300)


def test_jacobian_fro_matches_explicit_matrix_and_bound():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((200, 7)) * rng.uniform(0.1, 10, size=(200, 1))
    out = softmax_row_stats(np, z)
    s = out["s"]
    explicit = [np.linalg.norm(np.diag(r) - np.outer(r, r)) for r in s]
    assert out["jacobian_fro"] == pytest.approx(explicit, rel=1e-10, abs=1e-15)
    assert np.max(explicit) <= theory.softmax_jacobian_fro_bound(7)
    spectral = [np.linalg.norm(np.diag(r) - np.outer(r, r), 2) for r in s]
    assert np.max(spectral) <= 0.5 + 1e-12
    assert theory.softmax_jacobian_fro_bound(2) == pytest.approx(0.5)
    assert theory.softmax_jacobian_fro_bound(16) == pytest.approx(1 / math.sqrt(2))
