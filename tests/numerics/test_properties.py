"""Property tests (hypothesis): invariants that hold for every input, not only chosen ones.

Shapes, masks, scales and values are drawn by hypothesis; each property is also checked to
fail on a deliberately broken input, so a property that cannot fail would show up.
``max_examples`` is kept modest so the file runs in a few seconds.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from numerics import init_params, multi_head_attention, scaled_dot_product_attention, softmax

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
U64 = 2.0**-53

finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def attention_problem(draw, masks=True):
    b = draw(st.integers(1, 2))
    n = draw(st.integers(1, 5))
    m = draw(st.integers(1, 6))
    kd = draw(st.integers(1, 4))
    vd = draw(st.integers(1, 4))
    q = draw(arrays(np.float64, (b, n, kd), elements=finite))
    k = draw(arrays(np.float64, (b, m, kd), elements=finite))
    v = draw(arrays(np.float64, (b, m, vd), elements=finite))
    mask = draw(arrays(np.bool_, (b, n, m))) if masks and draw(st.booleans()) else None
    causal = draw(st.booleans()) if masks else False
    scale = draw(st.one_of(st.none(), st.floats(0.01, 3.0)))
    return q, k, v, mask, causal, scale


def allowed_of(mask, causal, shape):
    """(..., N, M) boolean: which keys each query may attend to."""
    allowed = np.ones(shape, dtype=bool) if mask is None else np.broadcast_to(mask, shape).copy()
    if causal:
        allowed &= np.arange(shape[-1])[None, :] <= np.arange(shape[-2])[:, None]
    return allowed


@SETTINGS
@given(attention_problem())
def test_weights_are_a_distribution_or_zero(problem):
    q, k, v, mask, causal, scale = problem
    out, w = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal, scale=scale, return_weights=True)
    allowed = allowed_of(mask, causal, w.shape)
    assert np.all(w >= 0)
    assert np.all(w[~allowed] == 0)  # excluded keys get exactly 0
    sums = w.sum(-1)
    has_any = allowed.any(-1)
    np.testing.assert_allclose(sums[has_any], 1.0, rtol=0, atol=8 * U64 * w.shape[-1])
    assert np.all(sums[~has_any] == 0)
    assert np.all(out[~has_any] == 0)


@SETTINGS
@given(attention_problem())
def test_output_rows_are_convex_combinations_of_allowed_values(problem):
    q, k, v, mask, causal, scale = problem
    out = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal, scale=scale)
    allowed = allowed_of(mask, causal, q.shape[:-1] + (k.shape[-2],))
    norms = np.linalg.norm(v, axis=-1)  # (B, M)
    bound = np.max(np.where(allowed, norms[:, None, :], 0.0), axis=-1)  # max over allowed j
    out_norm = np.linalg.norm(out, axis=-1)
    assert np.all(out_norm <= bound * (1 + 16 * U64) + 1e-300)
    # componentwise too: each output entry lies between the allowed values' min and max
    lo = np.min(np.where(allowed[..., None], v[:, None, :, :], np.inf), axis=-2)
    hi = np.max(np.where(allowed[..., None], v[:, None, :, :], -np.inf), axis=-2)
    rows = allowed.any(-1)
    tol = 16 * U64 * np.max(np.abs(v), initial=0.0)
    assert np.all(out[rows] >= lo[rows] - tol) and np.all(out[rows] <= hi[rows] + tol)


def test_convex_combination_property_detects_unnormalised_weights():
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((1, 3, 2)), rng.standard_normal((1, 4, 2)), rng.standard_normal((1, 4, 3)) + 5
    _, w = scaled_dot_product_attention(q, k, v, return_weights=True)
    unnormalised = np.exp(q @ k.transpose(0, 2, 1) / np.sqrt(2)) @ v  # softmax without the division
    assert np.any(np.linalg.norm(unnormalised, axis=-1) > np.max(np.linalg.norm(v, axis=-1)))


@SETTINGS
@given(attention_problem(masks=False), st.data())
def test_masking_a_key_equals_removing_it(problem, data):
    q, k, v, _, _, scale = problem
    m = k.shape[-2]
    keep = np.array(data.draw(st.lists(st.booleans(), min_size=m, max_size=m)))
    assume(keep.any())
    masked = scaled_dot_product_attention(q, k, v, mask=keep, scale=scale)
    removed = scaled_dot_product_attention(q, k[:, keep], v[:, keep], scale=scale)
    np.testing.assert_allclose(masked, removed, rtol=1e-13, atol=1e-13 * np.max(np.abs(v)))


@SETTINGS
@given(
    arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 6)), elements=finite),
    st.floats(-1e3, 1e3),
    st.data(),
)
def test_softmax_shift_invariance(z, shift, data):
    # softmax(z + c) = softmax(z) for any c per row. Adding c rounds z + c to within
    # u * |z + c|, which moves each weight by at most that much relative: tolerance 4u(|c| + max|z|).
    per_row = np.array(data.draw(st.lists(st.floats(-1e3, 1e3), min_size=z.shape[0], max_size=z.shape[0])))
    shifted = z + shift + per_row[:, None]
    a, b = softmax(z), softmax(shifted)
    tol = 4 * U64 * (np.max(np.abs(shifted)) + np.max(np.abs(z)) + 1)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    mask = np.array(data.draw(arrays(np.bool_, z.shape)))
    np.testing.assert_allclose(softmax(z, mask=mask), softmax(shifted, mask=mask), rtol=tol, atol=tol)


def test_shift_invariance_detects_a_column_shift():
    # shifting one entry (not a whole row) must change the result: the property is not vacuous
    z = np.array([[0.0, 1.0, 2.0]])
    assert not np.allclose(softmax(z), softmax(z + np.array([[0.0, 0.0, 1.0]])), rtol=1e-3)


@SETTINGS
@given(attention_problem(masks=False), st.floats(0.1, 4.0))
def test_scale_is_the_same_as_scaling_q(problem, s):
    q, k, v, _, causal, _ = problem
    a = scaled_dot_product_attention(q, k, v, scale=s)
    b = scaled_dot_product_attention(q * s, k, v, scale=1.0)
    tol = 64 * U64 * (1 + s * np.max(np.abs(q)) * np.max(np.abs(k)) * q.shape[-1]) * max(np.max(np.abs(v)), 1e-300)
    np.testing.assert_allclose(a, b, rtol=0, atol=tol)


# --------------------------------------------------------------------------- multi-head attention


@st.composite
def mha_problem(draw):
    h = draw(st.integers(1, 3))
    d_k = draw(st.integers(1, 3))
    d_v = draw(st.integers(1, 3))
    d_model = draw(st.integers(2, 6))
    n = draw(st.integers(2, 5))
    b = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**16))
    bias = draw(st.booleans())
    rng = np.random.default_rng(seed)
    p = init_params(d_model, h, d_k=d_k, d_v=d_v, bias=bias, seed=seed)
    if bias:
        p = dataclasses.replace(p, **{f: rng.standard_normal(getattr(p, f).shape) for f in ("b_q", "b_k", "b_v", "b_o")})
    x = draw(arrays(np.float64, (b, n, d_model), elements=st.floats(-3, 3, width=64)))
    return p, x, rng


@SETTINGS
@given(mha_problem(), st.data())
def test_mha_causal_output_row_i_ignores_later_positions(problem, data):
    p, x, rng = problem
    n = x.shape[-2]
    i = data.draw(st.integers(0, n - 2))
    y = x.copy()
    y[:, i + 1:] = rng.standard_normal(y[:, i + 1:].shape) * 3  # change every position after i
    a = multi_head_attention(x, p, causal=True)
    b = multi_head_attention(y, p, causal=True)
    np.testing.assert_allclose(a[:, : i + 1], b[:, : i + 1], rtol=1e-13, atol=1e-13)
    # without the causal mask the same change reaches row i (the property is not vacuous)
    a_full, b_full = multi_head_attention(x, p), multi_head_attention(y, p)
    assert not np.allclose(a_full[:, : i + 1], b_full[:, : i + 1], rtol=1e-10, atol=1e-10)


def _permute_heads(p, perm):
    """Reorder heads: column blocks of w_q, w_k, w_v (and biases), row blocks of w_o."""
    h, k, v = p.num_heads, p.d_k, p.d_v
    cols_k = np.concatenate([np.arange(j * k, (j + 1) * k) for j in perm])
    cols_v = np.concatenate([np.arange(j * v, (j + 1) * v) for j in perm])
    return dataclasses.replace(
        p,
        w_q=p.w_q[:, cols_k],
        w_k=p.w_k[:, cols_k],
        w_v=p.w_v[:, cols_v],
        w_o=p.w_o[cols_v, :],
        b_q=None if p.b_q is None else p.b_q[cols_k],
        b_k=None if p.b_k is None else p.b_k[cols_k],
        b_v=None if p.b_v is None else p.b_v[cols_v],
    )


@SETTINGS
@given(mha_problem(), st.data())
def test_mha_is_invariant_to_permuting_heads(problem, data):
    p, x, _ = problem
    perm = data.draw(st.permutations(range(p.num_heads)))
    causal = data.draw(st.booleans())
    a, wa = multi_head_attention(x, p, causal=causal, return_weights=True)
    b, wb = multi_head_attention(x, _permute_heads(p, perm), causal=causal, return_weights=True)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * max(1.0, np.max(np.abs(a))))
    np.testing.assert_allclose(wb, wa[:, list(perm)], rtol=1e-12, atol=1e-14)  # weights permuted too


def test_head_permutation_must_move_w_o_with_the_heads():
    # Permuting w_q/w_k/w_v head blocks but not w_o's rows changes the output.
    p = init_params(4, 2, d_k=2, d_v=2, seed=1)
    x = np.random.default_rng(1).standard_normal((1, 3, 4))
    q = _permute_heads(p, [1, 0])
    broken = dataclasses.replace(q, w_o=p.w_o)
    a = multi_head_attention(x, p)
    np.testing.assert_allclose(multi_head_attention(x, q), a, rtol=1e-13)
    assert not np.allclose(multi_head_attention(x, broken), a, rtol=1e-6)


@SETTINGS
@given(mha_problem())
def test_mha_weights_are_distributions(problem):
    p, x, _ = problem
    _, w = multi_head_attention(x, p, causal=True, return_weights=True)
    assert w.shape == (x.shape[0], p.num_heads, x.shape[1], x.shape[1])
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=0, atol=1e-14)
    assert np.all(np.triu(np.ones(w.shape[-2:], dtype=bool), 1) <= (w == 0))  # nothing above the diagonal


@pytest.mark.parametrize("n", [1, 3])
def test_single_key_attention_returns_that_value(n):
    # With one allowed key per row, attention returns that key's value exactly (weight 1).
    rng = np.random.default_rng(n)
    q, k, v = rng.standard_normal((n, 2)), rng.standard_normal((4, 2)) * 50, rng.standard_normal((4, 3))
    mask = np.zeros((n, 4), dtype=bool)
    mask[np.arange(n), np.arange(n) % 4] = True
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    np.testing.assert_array_equal(out, v[np.arange(n) % 4])
