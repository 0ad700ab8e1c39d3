"""Derivation 2's formulas agree with numerics.attention_backward on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from numerics import attention_backward
from proofs.derivations.backward import SIZES, attention_problem, numeric_comparison


@pytest.mark.parametrize("seed", [1, 2])
def test_symbolic_gradients_and_formulas_match_numerics(seed):
    worst = numeric_comparison(SIZES, trials=4, seed=seed)
    assert set(worst) == {"sympy_vs_formula", "sympy_vs_numerics", "formula_vs_numerics"}
    assert max(worst.values()) <= 1e-12, worst


@pytest.mark.parametrize("size", SIZES)
def test_lambdified_closed_forms_match_numerics_at_larger_scores(size):
    """Scores of a few units (sharper softmax): the closed forms still agree to ~1e-12 relative."""
    p = attention_problem(*size)
    args = [*p.q, *p.k, *p.v, *p.d_out]
    f = sp.lambdify(args, [p.formulas[x] for x in ("dq", "dk", "dv")], "numpy")
    rng = np.random.default_rng(99)
    for _ in range(5):
        q = 2.5 * rng.standard_normal((p.n, p.d_k))
        k = 2.5 * rng.standard_normal((p.m, p.d_k))
        v = rng.standard_normal((p.m, p.d_v))
        g = rng.standard_normal((p.n, p.d_v))
        got = [np.asarray(x, dtype=float) for x in f(*q.ravel(), *k.ravel(), *v.ravel(), *g.ravel())]
        ref = attention_backward(q, k, v, g)
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, np.asarray(b), rtol=1e-11, atol=1e-12)


def test_a_wrong_formula_would_be_caught_numerically():
    p = attention_problem(*SIZES[0])
    args = [*p.q, *p.k, *p.v, *p.d_out]
    wrong = sp.lambdify(args, p.formulas["ds"] * p.k, "numpy")  # missing 1/sqrt(d_k)
    rng = np.random.default_rng(3)
    q, k = rng.standard_normal((p.n, p.d_k)), rng.standard_normal((p.m, p.d_k))
    v, g = rng.standard_normal((p.m, p.d_v)), rng.standard_normal((p.n, p.d_v))
    dq = attention_backward(q, k, v, g)[0]
    assert np.max(np.abs(np.asarray(wrong(*q.ravel(), *k.ravel(), *v.ravel(), *g.ravel()), float) - dq)) > 1e-3
