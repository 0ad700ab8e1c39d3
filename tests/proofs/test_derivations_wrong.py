"""The step checkers reject wrong versions of the derivations' steps (sign, factor, index, term)."""

from __future__ import annotations

import pytest
import sympy as sp

from proofs.derivation import AtSizes, Derivation, DerivationError, Step, Symbolic, exp_to_symbols, is_zero
from proofs.derivations import collapse, convex, layernorm, lookup, multihead, softmax, variance
from proofs.derivations.backward import attention_problem
from proofs.derivations.causal import self_attention_outputs
from proofs.derivations.gelu import DERIV_FORM, ERR_FORM, x_
from proofs.expectation import ByExpectation, Expect


def rejected(build, sizes, label="n") -> bool:
    """A one-step derivation with an AtSizes check of ``build``: True when the step fails."""
    d = Derivation("wrong", "wrong", "-", [Step("a", "b", "wrong step", AtSizes(build, sizes, label))])
    res = d.check()[0]
    if res.passed:
        return False
    with pytest.raises(DerivationError):
        d.outcome()
    return True


# --------------------------------------------------------------------------- 1 softmax


@pytest.mark.parametrize("sign", [+1, -1])
def test_softmax_matrix_jacobian_wrong_sign_or_factor(sign):
    def wrong(n):
        z, s = softmax.softmax_vector(n)
        j = s.jacobian(z)
        claimed = sp.diag(*s) + sign * s * s.T if sign > 0 else 2 * (sp.diag(*s) - s * s.T)
        return exp_to_symbols(j - claimed, softmax._positive_exp_table(z))

    assert rejected(wrong, range(2, 5))


def test_softmax_entry_bound_below_quarter_is_rejected():
    from proofs.derivation import NonNegative

    s = sp.Symbol("sigma_i", nonnegative=True)
    # claims sigma(1 - sigma) <= 1/5 with a made-up witness: the identity fails
    d = Derivation("w", "w", "-", [Step("a", "b", "bound 1/5", NonNegative(sp.Rational(1, 5) - s * (1 - s), (s - sp.Rational(1, 2)) ** 2), rel=r"\le")])
    assert not d.valid


# --------------------------------------------------------------------------- 2 attention backward

P = (2, 3, 2, 2)


def _rational(p, m):
    return exp_to_symbols(m, p.exp_table())


@pytest.mark.parametrize("which", ["dq-no-scale", "dq-double", "dk-half", "ds-plus", "dv-unnormalised"])
def test_attention_backward_wrong_formulas_rejected(which):
    p = attention_problem(*P)
    f, g = p.formulas, p.grads
    a = p.weights
    if which == "dq-no-scale":  # forgot 1/sqrt(d_k)
        diff = g["dq"] - f["ds"] * p.k
    elif which == "dq-double":  # wrong factor
        diff = g["dq"] - 2 * f["dq"]
    elif which == "dk-half":
        diff = g["dk"] - f["dk"] / 2
    elif which == "ds-plus":  # wrong sign of the row-sum term
        dp = p.d_out * p.v.T
        ds = sp.Matrix(p.n, p.m, lambda r, c: a[r, c] * (dp[r, c] + sum(dp[r, x] * a[r, x] for x in range(p.m))))
        diff = g["dq"] - ds * p.k / sp.sqrt(p.d_k)
    else:  # exp(S) instead of the normalised weights
        diff = g["dv"] - p.scores.applyfunc(sp.exp).T * p.d_out
    ok, note = is_zero(_rational(p, diff))
    assert not ok, note


def test_attention_backward_shape_mismatch_is_a_failed_step():
    def wrong(n, m, d_k, d_v):
        p = attention_problem(n, m, d_k, d_v)
        return p.grads["dk"] - p.formulas["ds"] * p.k  # dS K has the shape of Q, not K
    assert rejected(wrong, [P], "(N,M,d_k,d_v)")


# --------------------------------------------------------------------------- 3 variance


@pytest.mark.parametrize("wrong", [
    lambda d: d * (variance.S_Q**2 * variance.S_K**2 + variance.MU_Q**2 * variance.MU_K**2),  # wrong cross term
    lambda d: d**2 * (variance.S_Q**2 * variance.S_K**2),  # d^2 instead of d
    lambda d: d * (variance.S_Q**2 * variance.S_K**2 + variance.MU_Q**2 * variance.S_K**2),  # a term missing
])
def test_qk_variance_wrong_formulas_rejected(wrong):
    def build(d):
        return variance._explicit_size_difference(d) + variance.variance_formula(d) - wrong(d)
    assert rejected(build, range(1, 4), "d_k")
    # and for symbolic d_k, through the expectation operator
    op = variance.component_operator()
    dot = sp.Sum(variance.Q[variance.L_IDX] * variance.K[variance.L_IDX], (variance.L_IDX, 1, variance.D))
    step = Step("a", "b", "wrong", ByExpectation(op, Expect(dot**2) - Expect(dot) ** 2, wrong(variance.D),
                                                  uses="stated moments, symbolic d_k"))
    assert Derivation("wrong", "wrong", "-", [step]).check()[0].passed is False


def test_qk_variance_independence_step_fails_under_a_wrong_independence_statement():
    """With q_l, k_l stated as one (possibly dependent) group, E[q^2 k^2] does not factor: the step fails."""
    q, k = variance.Q[variance.L_IDX], variance.K[variance.L_IDX]
    var_term = Expect(q**2 * k**2) - Expect(q * k) ** 2
    factored = Expect(q**2) * Expect(k**2) - Expect(q) ** 2 * Expect(k) ** 2

    def step(op):
        return Step("a", "b", "independence", ByExpectation(op, var_term, factored, uses="stated independence"))

    right = Derivation("t", "t", "-", [step(variance.component_operator(moments=False))]).check()[0]
    wrong = Derivation("t", "t", "-", [step(variance.component_operator(moments=False, independent=False))]).check()[0]
    assert right.passed and not wrong.passed
    assert "E[k[l]**2*q[l]**2]" in wrong.note  # the joint moment nobody stated stays unevaluated


# --------------------------------------------------------------------------- 4 multi-head


def test_multihead_claimed_h_n_d2_projection_cost_is_contradicted():
    """Seed 000 counts O(h n d^2) for the projections; the instrumented count says 4 n d^2 for every h."""
    n, d = 3, 4
    counts = [multihead.count_operations(n, d, h)[0]["multiplications"] for h in (1, 2, 4)]
    proj = [c - 2 * n * n * d - h * n * n for c, h in zip(counts, (1, 2, 4))]
    assert proj == [4 * n * d * d] * 3
    claimed = [h * n * d * d for h in (1, 2, 4)]
    assert proj != claimed


def test_multihead_wrong_parameter_count_rejected():
    d, h = multihead.d_, multihead.h_
    p = multihead.parameter_count(d, h, d / h, d / h)
    assert not is_zero(p - (4 * h * d**2 + 4 * d))[0]


# --------------------------------------------------------------------------- 5 causality


def test_unmasked_future_derivatives_are_not_zero():
    def unmasked(n, dd):
        x, out, _ = self_attention_outputs(n, dd, False)
        return [sp.diff(out[0, 0], x[1, 0])]
    assert rejected(unmasked, [(3, 1)], "(n,d)")


# --------------------------------------------------------------------------- 6 convex combination


def test_convex_wrong_variance_identity_rejected():
    def wrong(n, d):
        return [e + sp.Symbol("w_1", nonnegative=True) for e in convex._variance_identity(n, d)]
    assert rejected(wrong, [(2, 1)], "(n,d)")


# --------------------------------------------------------------------------- 7 soft lookup


def test_soft_lookup_wrong_limits_rejected():
    def to_second(n):
        v = sp.symbols(f"v_1:{n + 1}", real=True)
        return lookup._output_limit(n) + v[0] - v[1]  # claims the limit is v_2

    def tie_to_first(n, m):
        v = sp.symbols(f"v_1:{n + 1}", real=True)
        return lookup._tied_limit(n, m) + sum(v[:m]) / m - v[0]  # claims a tie still picks v_1

    assert rejected(to_second, [2, 3])
    assert rejected(tie_to_first, [(2, 2)], "(n,m)")


# --------------------------------------------------------------------------- 8 linear collapse


def test_linear_collapse_wrong_forms_rejected():
    d = sp.Symbol("d", integer=True, positive=True)
    x, w1, w2 = sp.MatrixSymbol("X", d, d), sp.MatrixSymbol("W_1", d, d), sp.MatrixSymbol("W_2", d, d)
    b1, b2 = sp.MatrixSymbol("b_1", 1, d), sp.MatrixSymbol("b_2", 1, d)
    one = sp.OneMatrix(d, 1)
    lhs = (x * w1 + one * b1) * w2 + one * b2
    assert is_zero(lhs - (x * (w1 * w2) + one * (b1 * w2 + b2)))[0]
    assert not is_zero(lhs - (x * (w2 * w1) + one * (b1 * w2 + b2)))[0]  # wrong order
    assert not is_zero(lhs - (x * (w1 * w2) + one * b2))[0]  # b1 W2 dropped

    def wrong_explicit(n, dd, f, e):
        return collapse._explicit(n, dd, f, e) + sp.Symbol("b_11", real=True)
    assert rejected(wrong_explicit, [(1, 2, 3, 2)], "(n,d,f,e)")


# --------------------------------------------------------------------------- 9 GELU


def test_gelu_wrong_derivative_and_evenness_rejected():
    assert not is_zero(sp.diff(ERR_FORM, x_) - (DERIV_FORM + x_ * sp.exp(-x_**2 / 2) / 100))[0]
    odd = x_**2 / 2 * (sp.erf(x_ / sp.sqrt(2)) - sp.tanh(x_))  # x^2 (odd) is odd: not even
    assert not is_zero(odd.subs(x_, -x_) - odd)[0]


def test_gelu_certificate_refutes_smaller_claims():
    from proofs.derivations.gelu import certify_gelu_tanh_error

    c = certify_gelu_tanh_error()
    assert c.lower > 4.7e-4  # "the error is below 4.7e-4" would be refuted
    assert c.upper < 4.74e-4


# --------------------------------------------------------------------------- 10 layer norm


def test_layer_norm_variance_one_rejected_with_eps():
    eps = layernorm.EPS

    def claims_one(d):
        x = sp.symbols(f"x_1:{d + 1}", real=True)
        mu = sum(x) / d
        v = sum((xi - mu) ** 2 for xi in x) / d
        y = [(xi - mu) / sp.sqrt(v + eps) for xi in x]
        return sp.cancel(sp.together(sum(yi**2 for yi in y) / d - 1))

    assert rejected(claims_one, range(2, 4), "D")
    # with eps = 0 the variance is exactly 1
    assert is_zero(sp.cancel(claims_one(3).subs(eps, 0)))[0]
    assert not Derivation("w", "w", "-", [Step(sp.Symbol("a"), sp.Symbol("a") + 1, "off by one", Symbolic())]).valid
