"""proofs.derivations.lambdified: the chain of SymPy steps gives SymPy's own derivative of the
whole expression, and the crosscheck problems' values agree with the mpmath reference."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from proofs.derivations.lambdified import SymbolicTape, _softmax, symbolic_results
from verify.crosscheck import CASES, make_problem, run_reference
from verify.validate.tolerance import ABS64, relative_error


def test_the_chain_of_steps_equals_differentiating_the_whole_expression():
    # softmax(tanh(Q K^T)) V at 2 x 3 by SymPy at once, and as a tape of three steps.
    rng = np.random.default_rng(0)
    allowed = np.array([[True, True, False], [True, True, True]])
    q, k, v, g = (rng.standard_normal(s) for s in [(2, 2), (3, 2), (3, 2), (2, 2)])
    tape = SymbolicTape()
    for name, a in (("q", q), ("k", k), ("v", v)):
        tape.input(name, a.shape)
    tape.step("s", ("q", "k"), lambda a, b: (a * b.T).applyfunc(sp.tanh))
    tape.step("p", ("s",), _softmax(allowed))
    tape.step("o", ("p", "v"), lambda a, b: a * b)
    vals, grads = tape.run({"q": q, "k": k, "v": v}, {"o": g})

    Q, K, V = (sp.Matrix(*a.shape, lambda i, j, n=n: sp.Symbol(f"{n}{i}{j}")) for n, a in (("Q", q), ("K", k), ("V", v)))
    s = (Q * K.T).applyfunc(sp.tanh)
    p = _softmax(allowed)(s)
    o = p * V
    loss = sum(g[i, j] * o[i, j] for i in range(2) for j in range(2))
    subs = {**dict(zip(Q, q.ravel())), **dict(zip(K, k.ravel())), **dict(zip(V, v.ravel()))}
    whole = np.array([[float(sp.diff(loss, K[i, j]).subs(subs)) for j in range(2)] for i in range(3)])
    assert np.max(np.abs(grads["k"] - whole)) < 1e-14
    assert np.allclose(vals["o"], np.array(o.subs(subs), dtype=float), atol=1e-15)
    assert np.max(np.abs(grads["k"] - whole * 1.001)) > 1e-6  # the comparison can fail


@pytest.mark.parametrize("case", [CASES[0], CASES[6]], ids=lambda c: f"{c.layer} {c.name}")
def test_symbolic_results_agree_with_the_mpmath_reference(case):
    problem = make_problem(case)
    sym, ref = symbolic_results(problem), run_reference(problem)
    assert set(sym) == set(ref)
    for key in ref:
        assert relative_error(sym[key], ref[key]) <= ABS64, key
