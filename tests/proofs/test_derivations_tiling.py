"""The online-softmax merge and the backward from the logsumexp: right rules pass, wrong rules fail."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from proofs.derivation import Derivation, DerivationError, Step, Symbolic, is_zero
from proofs.derivations import logsumexp as lb
from proofs.derivations import online_softmax as om


def failed_steps(d: Derivation) -> set[int]:
    return {r.index for r in d.check() if not r.passed}


def step(d: Derivation, words: str) -> int:
    """The 1-based index of the one step whose reason contains ``words``."""
    found = [i for i, s in enumerate(d.steps, 1) if words in s.reason]
    assert len(found) == 1, (words, found)
    return found[0]


#: the merge derivation's lines, by a phrase of their reasons
SUM, ACC, RATIO, CANCEL, LSE = "merged sum is", "merged accumulator", "two lines above, divided", "cancels", "logsumexp"
EXPLICIT, COMM, ASSOC, NUMERIC = "block maxima as", "commutative", "associative", "merged block by block"


# --------------------------------------------------------------------------- merge


def _no_accumulator_rescale(a, b):
    m, l, _ = om.merge_symbolic(a, b)
    return m, l, a[2] + b[2]


def _no_accumulator_rescale_arrays(a, b):
    m, l, _ = om.merge_arrays(a, b)
    return m, l, a[2] + b[2]


def _inverted_factor(a, b):
    m = sp.Max(a[0], b[0])
    return m, sp.exp(m - a[0]) * a[1] + sp.exp(m - b[0]) * b[1], sp.exp(m - a[0]) * a[2] + sp.exp(m - b[0]) * b[2]


def test_merge_derivation_is_valid_and_symbolic_in_the_block_sizes():
    d = om.online_softmax_merge()
    assert d.valid and d.unjustified() == []
    symbolic = [r for r, s in zip(d.check(), d.steps) if r.method == "symbolic"]
    assert len(symbolic) >= 5
    assert "explicit sizes (p,q)=" in " ".join(d.methods)
    assert d.results["max_abs_difference"]["output"] <= om.NUMERIC_TOL


def test_merge_that_forgets_to_rescale_the_accumulator_fails():
    d = om.build_merge_derivation(_no_accumulator_rescale, _no_accumulator_rescale_arrays)
    # the merged accumulator, the ratio, the explicit sizes and the numeric cross-check fail
    assert failed_steps(d) == {step(d, x) for x in (ACC, RATIO, EXPLICIT, NUMERIC)}, failed_steps(d)
    with pytest.raises(DerivationError):
        d.outcome()


def test_merge_with_inverted_rescaling_fails_symbolically():
    d = om.build_merge_derivation(_inverted_factor)
    assert {step(d, x) for x in (SUM, ACC, RATIO, LSE, EXPLICIT)} <= failed_steps(d), failed_steps(d)


def test_exactness_does_not_need_the_maximum():
    """With m = min(m_A, m_B) the identities still hold (the maximum only keeps the terms <= 1)."""

    def with_min(a, b):
        m = sp.Min(a[0], b[0])
        return m, sp.exp(a[0] - m) * a[1] + sp.exp(b[0] - m) * b[1], sp.exp(a[0] - m) * a[2] + sp.exp(b[0] - m) * b[2]

    d = om.build_merge_derivation(with_min)
    # only two lines fail: the explicit-size line also asserts m = max over the union, and with the
    # minimum an empty block (-inf, 0, 0) is no longer neutral (m would become -inf)
    assert failed_steps(d) == {step(d, EXPLICIT), step(d, "is neutral")}, failed_steps(d)


def test_numeric_comparison_rejects_a_merge_without_rescaling():
    worst = om.numeric_comparison(_no_accumulator_rescale_arrays)
    assert worst["output"] > 1e-3
    assert om.numeric_comparison()["output"] <= 1e-12


@pytest.mark.parametrize("sizes", [(1, 1, 1, 1, 1, 1, 1), (7,), (3, 0, 4), (2, 5)])
def test_blockwise_softmax_any_partition_matches_the_plain_softmax(sizes):
    rng = np.random.default_rng(5)
    z, v = 4 * rng.standard_normal((3, 7)), rng.standard_normal((7, 2))
    z[1, 2:] = -np.inf
    z[2] = -np.inf
    with np.errstate(all="raise"):  # the guard: no nan from -inf - (-inf), no log(0)
        out, lse = om.blockwise_softmax(z, v, sizes)
    e = np.exp(z[:2] - z[:2].max(axis=1, keepdims=True))
    np.testing.assert_allclose(out[:2], (e / e.sum(axis=1, keepdims=True)) @ v, rtol=0, atol=1e-14)
    np.testing.assert_allclose(lse[:2], np.log(np.exp(z[:2]).sum(axis=1)), rtol=1e-14)
    assert np.all(out[2] == 0) and lse[2] == -np.inf


def test_blockwise_softmax_rejects_a_partition_of_the_wrong_length():
    with pytest.raises(ValueError, match="must add up to the key length M = 5"):
        om.blockwise_softmax(np.zeros((1, 5)), np.zeros((5, 1)), (2, 2))


def test_any_tree_spot_check_fails_for_a_non_associative_rule():
    def averaging(a, b):  # commutative, not associative
        return sp.Max(a[0], b[0]), (a[1] + b[1]) / 2, (a[2] + b[2]) / 2

    ok, note = om._any_tree_spot_check(averaging)()
    assert not ok, note
    assert om._any_tree_spot_check(om.merge_symbolic)()[0]


# --------------------------------------------------------------------------- backward from the lse


def test_lse_backward_is_valid():
    d = lb.lse_backward()
    assert d.valid and d.unjustified() == []
    assert max(d.results["max_abs_difference"].values()) <= lb.NUMERIC_TOL


def test_weights_without_the_lse_fail_the_explicit_check():
    def unnormalised(n, m, s):
        return s.applyfunc(sp.exp)

    d = lb.build_lse_backward_derivation(unnormalised)
    assert failed_steps(d) == {step(d, "differentiated entry by entry")}, failed_steps(d)


def test_ds_without_the_rowsum_term_is_rejected():
    """dS = P * dP (the D term forgotten) does not follow from differentiating through the lse."""
    i, j, k, m = lb._i, lb._j, lb._k, lb._M
    wrong = lb._P[i, j] * lb._dP[i, j]
    direct = sp.Sum(lb._dP[i, k] * sp.diff(sp.exp(lb._S[i, k] - lb._row_lse(i)), lb._S[i, j]), (k, 1, m))
    d = lb.build_lse_backward_derivation()
    step = Step("dS", "P dP", "wrong", Symbolic(expr=direct - wrong, assumptions=lb._IN_RANGE))
    assert not Derivation("w", "w", "-", [step], unfold=d.unfold).valid
    ok, _ = is_zero(d.unfold(direct - lb._P[i, j] * (lb._dP[i, j] - sp.Sum(lb._dP[i, k] * lb._P[i, k], (k, 1, m)))),
                    lb._IN_RANGE)
    assert ok


def test_tiled_backward_with_the_row_max_instead_of_the_lse_is_wrong():
    from numerics import attention_backward, scaled_dot_product_attention

    rng = np.random.default_rng(2)
    q, k, v, g = (rng.standard_normal(s) for s in [(3, 2), (5, 2), (5, 2), (3, 2)])
    scale = 1 / np.sqrt(2)
    z = scale * q @ k.T
    out, lse = scaled_dot_product_attention(q, k, v, return_lse=True)
    ref = attention_backward(q, k, v, g)
    right = lb.tiled_backward(q, k, v, g, out, lse, z, (2, 1), (2, 3), scale)
    wrong = lb.tiled_backward(q, k, v, g, out, z.max(axis=1), z, (2, 1), (2, 3), scale)
    np.testing.assert_allclose(right["q"], ref.q, rtol=0, atol=1e-13)
    assert np.max(np.abs(wrong["q"] - ref.q)) > 1e-2


@pytest.mark.parametrize("alignment", ["top_left", "bottom_right"])
@pytest.mark.parametrize("n, m", [(3, 5), (5, 3), (4, 4)])
def test_allowed_keys_agree_with_numerics_causal_mask(alignment, n, m):
    from numerics import causal_mask

    assert np.array_equal(lb.allowed_keys(n, m, alignment), np.asarray(causal_mask("numpy", n, m, alignment=alignment)))
