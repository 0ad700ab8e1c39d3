"""Hostile use of the public numerics API, by class (issue 7), with hypothesis where the
class is a space of inputs rather than one case.

* broadcasting: q, k, v and mask batch dims broadcast together on every namespace, and
  gradients are summed back to each input's own shape; compared with an explicit
  per-batch loop written here from the definitions (no code shared with numerics);
* flags and seeds: one rule for every boolean option (Python or NumPy bool, anything
  else a TypeError naming the flag) and for every ``seed``;
* empty axes (batch, N, M, K, V, D = 0): a correct empty (or fully-masked) result, or a
  ValueError naming the argument, never a crash from inside or a NaN;
* extreme but finite magnitudes: finite inputs give finite, correct outputs (against the
  mpmath reference or an exact invariance) or a ValueError that says what overflowed.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import numerics
from numerics import (
    FFNParams,
    attention_backward,
    feed_forward,
    feed_forward_backward,
    gelu,
    gelu_backward,
    init_block_params,
    init_ffn_params,
    init_params,
    layer_norm,
    layer_norm_backward,
    multi_head_attention,
    multi_head_attention_backward,
    multi_head_attention_vjp,
    reference,
    scaled_dot_product_attention,
    softmax,
    transformer_block,
    transformer_block_backward,
)
from tests.helpers import force_split, from_numpy, to_numpy

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
U64 = 2.0**-53


def raises(exc, *words):
    """pytest.raises for ``exc`` whose message contains every word in ``words``."""
    pattern = "".join(rf"(?=.*{re.escape(w)})" for w in words)
    return pytest.raises(exc, match=re.compile(pattern, re.S))


# --------------------------------------------------------------------------- loop reference
# Plain NumPy float64, one batch element and one query row at a time, from the definitions:
# S = scale Q K^T, A = row softmax over the allowed keys (0 for a row with none), O = A V.


def _allowed(mask, causal, batch, n, m):
    allowed = np.ones(batch + (n, m), dtype=bool) if mask is None else np.broadcast_to(mask, batch + (n, m)).copy()
    if causal:
        for i in range(n):
            allowed[..., i, i + 1:] = False
    return allowed


def loop_attention(q, k, v, mask=None, causal=False, scale=None, d_out=None):
    """``(out, weights)``, and with ``d_out`` also ``(dq, dk, dv)`` summed to each input's shape."""
    shapes = [q.shape[:-2], k.shape[:-2], v.shape[:-2]] + ([] if mask is None else [mask.shape[:-2]])
    batch = tuple(np.broadcast_shapes(*shapes))
    n, m, kw, vw = q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]
    scale = (1 / math.sqrt(kw) if kw else 1.0) if scale is None else scale
    qb, kb, vb = (np.broadcast_to(a, batch + a.shape[-2:]) for a in (q, k, v))
    allowed = _allowed(mask, causal, batch, n, m)
    out, w = np.zeros(batch + (n, vw)), np.zeros(batch + (n, m))
    grads = [np.zeros(a.shape) for a in (q, k, v)]
    for b in np.ndindex(*batch):
        s = np.zeros((n, m))
        for i in range(n):
            for j in range(m):
                s[i, j] = scale * sum(qb[b][i, t] * kb[b][j, t] for t in range(kw))
        for i in range(n):
            keys = np.flatnonzero(allowed[b][i])
            if keys.size:
                e = np.exp(s[i, keys] - s[i, keys].max())
                w[b][i, keys] = e / e.sum()
        out[b] = w[b] @ vb[b]
        if d_out is None:
            continue
        do = d_out[b]
        d_w = do @ vb[b].T
        d_s = np.zeros((n, m))
        for i in range(n):  # the softmax Jacobian diag(a) - a a^T, row by row
            a = w[b][i]
            d_s[i] = (np.diag(a) - np.outer(a, a)) @ d_w[i]
        parts = (scale * d_s @ kb[b], scale * d_s.T @ qb[b], w[b].T @ do)
        for g, part, x in zip(grads, parts, (q, k, v)):
            # The input's own batch index: its trailing batch dims, 0 where it has size 1.
            own = tuple(0 if size == 1 else i for i, size in zip(b[len(b) - (x.ndim - 2):], x.shape[:-2]))
            g[own] += part
    return (out, w) if d_out is None else (out, w, *grads)


# --------------------------------------------------------------------------- broadcasting


@st.composite
def broadcast_problem(draw, allow_empty=False):
    """q, k, v, mask whose batch dims broadcast to a drawn batch shape, each dropping
    leading dims or keeping size 1 where it likes; sizes may be 0 with ``allow_empty``."""
    low = 0 if allow_empty else 1
    batch = tuple(draw(st.lists(st.integers(low, 3), min_size=0, max_size=2)))
    n, m = draw(st.integers(low, 4)), draw(st.integers(low, 4))
    kw, vw = draw(st.integers(low, 3)), draw(st.integers(low, 3))

    def own(tail):
        dims = [size if draw(st.booleans()) else 1 for size in batch]
        return tuple(dims[draw(st.integers(0, len(dims))):]) + tail

    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    q = rng.standard_normal(own((n, kw)))
    k = rng.standard_normal(own((m, kw)))
    v = rng.standard_normal(own((m, vw)))
    mask = None
    if draw(st.booleans()):
        mask = rng.random(own((n if draw(st.booleans()) else 1, m))) < 0.7
    return q, k, v, mask, draw(st.booleans())


@SETTINGS
@given(problem=broadcast_problem())
def test_attention_broadcasts_q_k_v_and_mask_together_on_every_namespace(xp, problem):
    q, k, v, mask, causal = problem
    ref_out, ref_w = loop_attention(q, k, v, mask, causal)
    args = [from_numpy(xp, a) for a in (q, k, v)]
    xmask = None if mask is None else from_numpy(xp, mask)
    out, w = scaled_dot_product_attention(*args, mask=xmask, causal=causal, return_weights=True)
    assert tuple(out.shape) == ref_out.shape and tuple(w.shape) == ref_w.shape  # weights line up with out
    np.testing.assert_allclose(to_numpy(out), ref_out, rtol=0, atol=1e-13)
    np.testing.assert_allclose(to_numpy(w), ref_w, rtol=0, atol=1e-14)


@SETTINGS
@given(problem=broadcast_problem(), seed=st.integers(0, 2**16))
def test_attention_backward_sums_broadcast_dims_back_to_each_input(xp, problem, seed):
    q, k, v, mask, causal = problem
    ref_out = loop_attention(q, k, v, mask, causal)[0]
    d_out = np.random.default_rng(seed).standard_normal(ref_out.shape)
    _, _, *ref = loop_attention(q, k, v, mask, causal, d_out=d_out)
    xmask = None if mask is None else from_numpy(xp, mask)
    grads = attention_backward(*(from_numpy(xp, a) for a in (q, k, v, d_out)), mask=xmask, causal=causal)
    for name, g, r in zip("qkv", grads, ref):
        assert tuple(g.shape) == r.shape, name
        np.testing.assert_allclose(to_numpy(g), r, rtol=0, atol=1e-12, err_msg=f"d{name}")


@settings(max_examples=15, deadline=None)
@given(problem=broadcast_problem(allow_empty=True))
def test_mpmath_reference_follows_the_same_broadcast_and_empty_rules(problem):
    q, k, v, mask, causal = problem
    ref_out, _ = loop_attention(q, k, v, mask, causal)
    out = reference.to_float64(reference.attention(q, k, v, mask=mask, causal=causal))
    assert out.shape == ref_out.shape
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-14)


def test_issue_case_mask_batch_beyond_q_and_k(xp):
    """Issue 7 item 4, as reported: q (1, 4, 3), k (1, 5, 3), v (3, 5, 2), mask (3, 4, 5)."""
    rng = np.random.default_rng(4)
    q, k, v = rng.standard_normal((1, 4, 3)), rng.standard_normal((1, 5, 3)), rng.standard_normal((3, 5, 2))
    mask = rng.random((3, 4, 5)) < 0.6
    ref_out, ref_w = loop_attention(q, k, v, mask)
    out, w = scaled_dot_product_attention(*(from_numpy(xp, a) for a in (q, k, v)), mask=from_numpy(xp, mask), return_weights=True)
    np.testing.assert_allclose(to_numpy(out), ref_out, atol=1e-14, rtol=0)
    np.testing.assert_allclose(to_numpy(w), ref_w, atol=1e-14, rtol=0)
    # batch only on v: the weights have the output's batch dims
    out, w = scaled_dot_product_attention(*(from_numpy(xp, a) for a in (q, k, v)), return_weights=True)
    assert tuple(out.shape) == (3, 4, 2) and tuple(w.shape) == (3, 4, 5)
    np.testing.assert_allclose(to_numpy(w), loop_attention(q, k, v)[1], atol=1e-14, rtol=0)


def test_batch_dims_that_do_not_broadcast_name_every_argument():
    q, k, v = np.zeros((2, 4, 3)), np.zeros((2, 5, 3)), np.zeros((2, 5, 2))
    with raises(ValueError, "q, k, v and mask must broadcast", "mask has shape (3, 4, 5)"):
        scaled_dot_product_attention(q, k, v, mask=np.ones((3, 4, 5), dtype=bool))
    with raises(ValueError, "mask must broadcast to (..., N, M)", "(2, 4, 5)", "(2, 3, 5)"):
        scaled_dot_product_attention(q, k, v, mask=np.ones((2, 3, 5), dtype=bool))


@pytest.mark.parametrize(
    "shapes",
    [
        # q, k, v batch, mask shape: split along the batch, mask broadcast inside each slab
        ((4,), (4,), (4,), (1, 3, 5)),
        ((4,), (4,), (4,), (4, 1, 5)),
        ((4, 2), (4, 2), (4, 2), (2, 3, 5)),
        # batch dims q lacks: run whole, still right; k or v broadcast (as grouped-query heads): split
        ((1,), (4,), (4,), (4, 3, 5)),
        ((4,), (1,), (4,), None),
        ((1,), (1,), (4,), (4, 3, 5)),
    ],
)
def test_slab_splitter_with_broadcast_batch_dims(monkeypatch, shapes):
    calls = force_split(monkeypatch)
    bq, bk_, bv, mshape = shapes
    rng = np.random.default_rng(7)
    q, k, v = rng.standard_normal(bq + (3, 2)), rng.standard_normal(bk_ + (5, 2)), rng.standard_normal(bv + (5, 3))
    mask = None if mshape is None else rng.random(mshape) < 0.7
    ref_out, ref_w = loop_attention(q, k, v, mask, True)
    d_out = rng.standard_normal(ref_out.shape)
    _, _, *ref_grads = loop_attention(q, k, v, mask, True, d_out=d_out)
    out, w = scaled_dot_product_attention(q, k, v, mask=mask, causal=True, return_weights=True)
    grads = attention_backward(q, k, v, d_out, mask=mask, causal=True)
    np.testing.assert_allclose(out, ref_out, atol=1e-13, rtol=0)
    np.testing.assert_allclose(w, ref_w, atol=1e-14, rtol=0)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, atol=1e-12, rtol=0)
    full = bq == np.broadcast_shapes(bq, bk_, bv, () if mshape is None else mshape[:-2])
    assert len(calls) == (2 if full else 0)  # the split path really ran where it can (q has every batch dim)


@pytest.mark.parametrize("saturated", [False, True])
def test_slab_splitter_with_scores_beyond_the_range(monkeypatch, saturated):
    """The unit-scale operands of huge scores are cut into slabs with q, k and v."""
    rng = np.random.default_rng(8)
    q, k, v = rng.standard_normal((4, 3, 2)) * 1e200, rng.standard_normal((4, 5, 2)) * 1e200, rng.standard_normal((4, 5, 3))
    if not saturated:
        q, k = q * 1e-200, k * 1e-200
    d_out = rng.standard_normal((4, 3, 3))
    whole = scaled_dot_product_attention(q, k, v, return_weights=True), attention_backward(q, k, v, d_out)
    calls = force_split(monkeypatch)
    split = scaled_dot_product_attention(q, k, v, return_weights=True), attention_backward(q, k, v, d_out)
    assert len(calls) == 2
    for a, b in zip((*whole[0], *whole[1]), (*split[0], *split[1])):
        assert np.all(np.isfinite(b))
        np.testing.assert_allclose(b, a, rtol=1e-13, atol=1e-300)
    for i in range(4):  # and each slab's answer is the per-batch one
        np.testing.assert_allclose(split[0][0][i], scaled_dot_product_attention(q[i], k[i], v[i]), rtol=1e-13)


def _mha_loop(x, params, mask, memory=None):
    """multi_head_attention on each broadcast batch element alone (2-D inputs, no batch)."""
    sources = [a for a in (x, memory, mask) if a is not None]
    batch = tuple(np.broadcast_shapes(*(a.shape[:-2] for a in sources)))
    xb = np.broadcast_to(x, batch + x.shape[-2:])
    mb = None if memory is None else np.broadcast_to(memory, batch + memory.shape[-2:])
    m = x.shape[-2] if memory is None else memory.shape[-2]
    kb = None if mask is None else np.broadcast_to(mask, batch + (x.shape[-2], m))
    out = np.zeros(batch + (x.shape[-2], params.d_model))
    for b in np.ndindex(*batch):
        out[b] = multi_head_attention(
            np.ascontiguousarray(xb[b]), params,
            memory=None if mb is None else np.ascontiguousarray(mb[b]),
            mask=None if kb is None else np.ascontiguousarray(kb[b]),
        )
    return out


@pytest.mark.parametrize("cross", [False, True])
def test_mha_mask_batch_dims_broadcast_with_x_and_memory(xp, cross):
    rng = np.random.default_rng(11)
    params = init_params(4, 2, bias=True, xp=xp, seed=3)
    host = init_params(4, 2, bias=True, seed=3)
    x = rng.standard_normal((1, 3, 4))
    memory = rng.standard_normal((1, 2, 5, 4)) if cross else None
    m = 5 if cross else 3
    mask = rng.random((3, 1, 3, m)) < 0.7  # batch (3, 1): beyond x's (1,) and memory's (1, 2)
    ref = _mha_loop(x, host, mask, memory)
    xmem = None if memory is None else from_numpy(xp, memory)
    out, w = multi_head_attention(from_numpy(xp, x), params, memory=xmem, mask=from_numpy(xp, mask), return_weights=True)
    assert tuple(out.shape) == ref.shape and tuple(w.shape) == ref.shape[:-2] + (2, 3, m)
    np.testing.assert_allclose(to_numpy(out), ref, atol=1e-13, rtol=0)
    # gradients summed back to x's (and memory's) own shape: compare with the loop's sum
    d_out = rng.standard_normal(ref.shape)
    g = multi_head_attention_backward(from_numpy(xp, x), params, from_numpy(xp, d_out), memory=xmem, mask=from_numpy(xp, mask))
    assert tuple(g.x.shape) == x.shape
    assert (g.memory is None) == (memory is None) and (memory is None or tuple(g.memory.shape) == memory.shape)
    batch = ref.shape[:-2]
    xb = np.broadcast_to(x, batch + x.shape[-2:])
    mb = None if memory is None else np.broadcast_to(memory, batch + memory.shape[-2:])
    dx, dwq = np.zeros(x.shape[-2:]), 0.0
    for b in np.ndindex(*batch):
        gb = multi_head_attention_backward(
            np.ascontiguousarray(xb[b]), host, np.ascontiguousarray(d_out[b]),
            memory=None if mb is None else np.ascontiguousarray(mb[b]),
            mask=np.ascontiguousarray(np.broadcast_to(mask, batch + mask.shape[-2:])[b]),
        )
        dx, dwq = dx + gb.x, dwq + gb.params.w_q
    np.testing.assert_allclose(to_numpy(g.x)[0], dx, atol=1e-12, rtol=0)
    np.testing.assert_allclose(to_numpy(g.params.w_q), dwq, atol=1e-12, rtol=0)
    _, backward = multi_head_attention_vjp(from_numpy(xp, x), params, memory=xmem, mask=from_numpy(xp, mask))
    np.testing.assert_allclose(to_numpy(backward(from_numpy(xp, d_out)).x)[0], dx, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------- flags and seeds

_RNG = np.random.default_rng(5)
_Q, _K, _V = _RNG.standard_normal((2, 3, 4)), _RNG.standard_normal((2, 5, 4)), _RNG.standard_normal((2, 5, 6))
_X = _RNG.standard_normal((2, 3, 4))
_MHA = init_params(4, 2, bias=True)
_FFN = init_ffn_params(4, 8)
_BLOCK = init_block_params(4, 2, 8, noise=0.1)


def _call(name, **flags):
    """Every public numerics function with a boolean option, called on small valid inputs."""
    calls = {
        "softmax": lambda: softmax(_Q, **flags),
        "scaled_dot_product_attention": lambda: scaled_dot_product_attention(_Q, _K, _V, **flags),
        "attention_backward": lambda: attention_backward(_Q, _K, _V, np.ones((2, 3, 6)), **flags),
        "multi_head_attention": lambda: multi_head_attention(_X, _MHA, **flags),
        "multi_head_attention_backward": lambda: multi_head_attention_backward(_X, _MHA, np.ones((2, 3, 4)), **flags).x,
        "multi_head_attention_vjp": lambda: multi_head_attention_vjp(_X, _MHA, **flags)[0],
        "layer_norm": lambda: layer_norm(_X, **flags),
        "layer_norm_backward": lambda: layer_norm_backward(_X, np.ones((2, 3, 4)), **flags)[0],
        "gelu": lambda: gelu(_X, **flags),
        "gelu_backward": lambda: gelu_backward(_X, np.ones((2, 3, 4)), **flags),
        "feed_forward": lambda: feed_forward(_X, _FFN, **flags),
        "feed_forward_backward": lambda: feed_forward_backward(_X, _FFN, np.ones((2, 3, 4)), **flags)[0],
        "transformer_block": lambda: transformer_block(_X, _BLOCK, **flags),
        "transformer_block_backward": lambda: transformer_block_backward(_X, _BLOCK, np.ones((2, 3, 4)), **flags).x,
        "init_params": lambda: init_params(4, 2, **flags).w_q,
        "init_ffn_params": lambda: init_ffn_params(4, 8, **flags).w1,
        "init_block_params": lambda: init_block_params(4, 2, 8, **flags).attn.w_q,
    }
    return calls[name]()


_ATTENTION = ["scaled_dot_product_attention", "attention_backward", "multi_head_attention",
              "multi_head_attention_backward", "multi_head_attention_vjp", "transformer_block",
              "transformer_block_backward"]
_ALL_CHECKING = ["softmax", *_ATTENTION, "layer_norm", "layer_norm_backward", "gelu", "gelu_backward",
                 "feed_forward", "feed_forward_backward"]
FLAGS = (
    [(f, "check_finite") for f in _ALL_CHECKING]
    + [(f, "causal") for f in _ATTENTION]
    + [(f, "return_weights") for f in ("scaled_dot_product_attention", "multi_head_attention")]
    + [(f, "bias") for f in ("init_params", "init_ffn_params", "init_block_params")]
)


def _first(result):
    return result[0] if isinstance(result, tuple) else result


@pytest.mark.parametrize("function, flag", FLAGS)
def test_every_flag_takes_python_and_numpy_bools_alike(function, flag):
    for value in (False, True):
        expected = _call(function, **{flag: value})
        got = _call(function, **{flag: np.bool_(value)})
        np.testing.assert_array_equal(to_numpy(_first(got)), to_numpy(_first(expected)))
        assert type(got) is type(expected)


@pytest.mark.parametrize("function, flag", FLAGS)
@pytest.mark.parametrize("bad", ["yes", 1, 0, None, 1.0, np.int64(1), [True]])
def test_every_flag_rejects_anything_but_a_bool(function, flag, bad):
    if flag == "causal" and isinstance(bad, str):
        # causal may also name an alignment (every attention function and the layers built on
        # it): another string is a wrong value.
        with raises(ValueError, "causal must be False, True, 'top_left' or 'bottom_right'", repr(bad)):
            _call(function, **{flag: bad})
        return
    with raises(TypeError, f"{flag} must be a bool", type(bad).__name__):
        _call(function, **{flag: bad})


@pytest.mark.parametrize("init", ["init_params", "init_ffn_params", "init_block_params"])
def test_every_init_names_a_bad_seed(init):
    for bad, exc in ((-1, ValueError), (np.int64(-5), ValueError), (1.5, TypeError), ("3", TypeError),
                     (None, TypeError), (True, TypeError)):
        with raises(exc, "seed must be a non-negative integer", repr(bad)):
            _call(init, seed=bad)
    # NumPy integers are integers: the same values as the Python int
    np.testing.assert_array_equal(_call(init, seed=np.int64(7)), _call(init, seed=7))
    assert not np.array_equal(_call(init, seed=7), _call(init, seed=8))


@pytest.mark.parametrize("bad", [True, np.True_])
def test_numbers_are_not_flags(bad):
    """The converse of the flag rule: a bool is not a number for scale or eps."""
    with raises(TypeError, "scale must be a real number", type(bad).__name__):
        scaled_dot_product_attention(_Q, _K, _V, scale=bad)
    with raises(TypeError, "eps must be a real number", type(bad).__name__):
        layer_norm(_X, eps=bad)


def test_softmax_axis_must_be_an_integer_and_x_at_least_1d():
    with raises(TypeError, "axis must be an integer", "float"):
        softmax(_Q, axis=1.0)
    with raises(TypeError, "axis must be an integer", "bool"):
        softmax(_Q, axis=True)
    with raises(ValueError, "x must have at least 1 dimensions", "()"):
        softmax(np.float64(1.0) * np.ones(()))


# --------------------------------------------------------------------------- empty axes


@SETTINGS
@given(problem=broadcast_problem(allow_empty=True), seed=st.integers(0, 2**16))
def test_attention_with_empty_axes_matches_the_loop(xp, problem, seed):
    """batch, N, M, K or V = 0: M = 0 is a row with no key (output 0, dq 0), K = 0 makes
    every score 0 (uniform weights over the allowed keys), the others give empty results."""
    q, k, v, mask, causal = problem
    ref_out, ref_w = loop_attention(q, k, v, mask, causal)
    d_out = np.random.default_rng(seed).standard_normal(ref_out.shape)
    _, _, *ref_grads = loop_attention(q, k, v, mask, causal, d_out=d_out)
    xmask = None if mask is None else from_numpy(xp, mask)
    args = [from_numpy(xp, a) for a in (q, k, v)]
    out, w = scaled_dot_product_attention(*args, mask=xmask, causal=causal, return_weights=True)
    assert tuple(out.shape) == ref_out.shape and tuple(w.shape) == ref_w.shape
    np.testing.assert_allclose(to_numpy(out), ref_out, rtol=0, atol=1e-13)
    np.testing.assert_allclose(to_numpy(w), ref_w, rtol=0, atol=1e-14)
    grads = attention_backward(*args, from_numpy(xp, d_out), mask=xmask, causal=causal)
    for g, r in zip(grads, ref_grads):
        assert tuple(g.shape) == r.shape
        np.testing.assert_allclose(to_numpy(g), r, rtol=0, atol=1e-12)


def test_attention_m_zero_and_k_zero_by_hand():
    """The two empty-axis rules stated without the loop: no key gives 0; K = 0 gives the mean."""
    q, v = np.ones((2, 3, 4)), np.arange(10.0).reshape(2, 5, 1)
    out, w = scaled_dot_product_attention(q, np.ones((2, 0, 4)), np.ones((2, 0, 1)), return_weights=True)
    assert out.shape == (2, 3, 1) and w.shape == (2, 3, 0) and np.all(out == 0)
    out = scaled_dot_product_attention(np.ones((2, 3, 0)), np.ones((2, 5, 0)), v)
    np.testing.assert_allclose(out, np.broadcast_to(v.mean(axis=-2, keepdims=True), (2, 3, 1)), rtol=1e-15)


@SETTINGS
@given(
    batch=st.lists(st.integers(0, 2), max_size=2).map(tuple),
    n=st.integers(0, 3),
    m=st.integers(0, 3),
    cross=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_mha_with_empty_lengths_and_batch(xp, batch, n, m, cross, seed):
    rng = np.random.default_rng(seed)
    params = init_params(4, 2, bias=True, xp=xp, seed=seed)
    params = dataclasses.replace(params, b_o=from_numpy(xp, rng.standard_normal(4)))
    x = rng.standard_normal(batch + (n, 4))
    memory = rng.standard_normal(batch + (m, 4)) if cross else None
    m = m if cross else n
    xmem = None if memory is None else from_numpy(xp, memory)
    out, w = multi_head_attention(from_numpy(xp, x), params, memory=xmem, return_weights=True)
    assert tuple(out.shape) == batch + (n, 4) and tuple(w.shape) == batch + (2, n, m)
    out = to_numpy(out)
    assert np.all(np.isfinite(out))
    if m == 0:  # no key: the attention is 0 and only b_o is left
        np.testing.assert_array_equal(out, np.broadcast_to(to_numpy(params.b_o), out.shape))
    elif out.size:
        host = init_params(4, 2, bias=True, seed=seed)
        host = dataclasses.replace(host, b_o=to_numpy(params.b_o))
        np.testing.assert_allclose(out, _mha_loop(x, host, None, memory), atol=1e-13, rtol=0)
    d_out = rng.standard_normal(batch + (n, 4))
    g = multi_head_attention_backward(from_numpy(xp, x), params, from_numpy(xp, d_out), memory=xmem)
    assert tuple(g.x.shape) == x.shape
    for name, a in g.params.arrays().items():
        assert tuple(a.shape) == tuple(getattr(params, name).shape) and np.all(np.isfinite(to_numpy(a)))
    np.testing.assert_allclose(to_numpy(g.params.b_o), d_out.reshape(-1, 4).sum(0), atol=1e-13, rtol=0)
    if m == 0:
        assert np.all(to_numpy(g.x) == 0) and np.all(to_numpy(g.params.w_q) == 0)


def test_mha_zero_widths_are_errors_naming_the_parameter():
    p = init_params(4, 2, bias=False)
    empty_q = dataclasses.replace(p, w_q=np.zeros((4, 0)), w_k=np.zeros((4, 0)))
    with raises(ValueError, "params.w_q", "(4, 0)"):
        multi_head_attention(np.ones((2, 3, 4)), empty_q)
    no_width = numerics.MHAParams(np.zeros((0, 4)), np.zeros((0, 4)), np.zeros((0, 4)), np.zeros((4, 0)), 2)
    with raises(ValueError, "params.w_q", "(0, 4)"):
        multi_head_attention_backward(np.zeros((2, 3, 0)), no_width, np.zeros((2, 3, 0)))


@pytest.mark.parametrize("lead", [(0,), (2, 0), (0, 3)])
def test_layers_and_block_with_empty_leading_dims(xp, lead):
    """Empty batch or sequence: empty results of the right shape, zero parameter gradients."""
    x = from_numpy(xp, np.zeros(lead + (4,)))
    gamma = from_numpy(xp, np.ones(4))
    assert tuple(layer_norm(x, gamma).shape) == lead + (4,)
    dx, dgamma, dbeta = layer_norm_backward(x, x, gamma)
    assert tuple(dx.shape) == lead + (4,) and np.all(to_numpy(dgamma) == 0) and np.all(to_numpy(dbeta) == 0)
    assert tuple(gelu(x).shape) == lead + (4,) and tuple(gelu_backward(x, x).shape) == lead + (4,)
    ffn = init_ffn_params(4, 8, xp=xp)
    assert tuple(feed_forward(x, ffn).shape) == lead + (4,)
    dx, g = feed_forward_backward(x, ffn, x)
    assert tuple(dx.shape) == lead + (4,) and np.all(to_numpy(g.w1) == 0) and np.all(to_numpy(g.b2) == 0)
    assert tuple(softmax(x, axis=0).shape) == lead + (4,)
    if len(lead) == 2:
        block = init_block_params(4, 2, 8, xp=xp, noise=0.1)
        for norm in ("post", "pre"):
            assert tuple(transformer_block(x, block, norm=norm).shape) == lead + (4,)
            g = transformer_block_backward(x, block, x, norm=norm)
            assert tuple(g.x.shape) == lead + (4,)
            assert all(np.all(to_numpy(a) == 0) for a in g.params.arrays().values())


def test_zero_model_width_is_an_error_naming_x():
    x = np.zeros((2, 3, 0))
    with raises(ValueError, "x", "(2, 3, 0)"):
        layer_norm(x)
    with raises(ValueError, "x", "(2, 3, 0)"):
        feed_forward(x, FFNParams(np.zeros((0, 8)), None, np.zeros((8, 0)), None))
    with raises(ValueError, "x", "(2, 3, 0)"):
        transformer_block(x, init_block_params(4, 2, 8))


def test_softmax_of_an_empty_axis_is_empty(xp):
    for shape, axis in (((3, 0), -1), ((0, 3), 0), ((2, 0, 4), 1)):
        y = softmax(from_numpy(xp, np.zeros(shape)), axis=axis)
        assert tuple(y.shape) == shape
    y = to_numpy(softmax(from_numpy(xp, np.zeros((0, 3))), axis=-1))
    assert y.shape == (0, 3)


# --------------------------------------------------------------------------- extreme magnitudes


@pytest.mark.parametrize("dtype, top, span", [("float64", 1000, 2000), ("float32", 120, 240)])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_attention_scores_beyond_the_range_give_the_exact_answer(xp, dtype, top, span, data):
    """q = q0 2^a, k = k0 2^b, scale 2^s with integer q0, k0: the exact scores are the integers
    q0.k0 times 2^t, t = a + b + s, far beyond the dtype's range when t is large. There the
    exact softmax is one-hot at the largest integer score (the next one is 2^t lower), so the
    output is that key's value, and dq = dk = 0 (exp(-2^t) is 0 to any precision). For small t
    the answer is the loop's on (q0, k0, scale 2^t), with dq and dk scaled by 2^-a and 2^-b."""
    draw = data.draw
    n, m, kw = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    ints = st.integers(-9, 9)
    q0 = np.array(draw(st.lists(ints, min_size=n * kw, max_size=n * kw)), dtype=float).reshape(1, n, kw)
    k0 = np.array(draw(st.lists(ints, min_size=m * kw, max_size=m * kw)), dtype=float).reshape(1, m, kw)
    huge = draw(st.booleans())
    t = draw(st.integers(24, span)) if huge else draw(st.integers(-12, 3))
    s = draw(st.integers(max(-top, t - 2 * top), min(top, t + 2 * top)))
    a = draw(st.integers(max(-top, t - s - top), min(top, t - s + top)))
    b = t - s - a
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    v = rng.standard_normal((1, m, 2))
    d_out = rng.standard_normal((1, n, 2))
    dt = getattr(xp, dtype)
    put = lambda arr: from_numpy(xp, arr, dt)  # noqa: E731  (exact: powers of 2 times small integers)
    args = (put(q0 * 2.0**a), put(k0 * 2.0**b), put(v))
    out, w = scaled_dot_product_attention(*args, scale=2.0**s, return_weights=True)
    out, w = to_numpy(out).astype(np.float64), to_numpy(w).astype(np.float64)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(w))
    scores = np.einsum("bnk,bmk->bnm", q0, k0)  # exact small integers
    unique = all(np.sum(scores[0, i] == scores[0, i].max()) == 1 for i in range(n))
    # With tied maxima the exact dk (scale dS^T q, up to 2^(a+s)) may be beyond the range:
    # then a clear overflow error is the promise; with unique maxima it is exactly 0.
    grads = _finite_or_overflow_error(lambda: attention_backward(*args, put(d_out), scale=2.0**s))
    if grads is None:
        assert huge and not unique
        return
    dq, dk, dv = (to_numpy(r).astype(np.float64) for r in grads)
    v32 = to_numpy(put(v)).astype(np.float64)
    if huge:
        for i in range(n):
            top_keys = np.flatnonzero(scores[0, i] == scores[0, i].max())
            assert np.all(w[0, i][np.setdiff1d(np.arange(m), top_keys)] == 0)
            assert abs(w[0, i].sum() - 1) < 1e-6
            if top_keys.size == 1:  # a unique maximum: exactly that key
                j = top_keys[0]
                assert w[0, i, j] == 1 and np.all(out[0, i] == v32[0, j])
                assert np.all(dq[0, i] == 0)
        if unique:
            assert np.all(dk == 0)
            tol_dv = (1e-13 if dtype == "float64" else 1e-6) * np.abs(d_out).sum()  # sums of n terms
            np.testing.assert_allclose(dv, np.swapaxes(w, -1, -2) @ d_out, rtol=0, atol=tol_dv)
    else:
        ref_out, ref_w, rdq, rdk, rdv = loop_attention(q0, k0, v32, scale=2.0**t, d_out=d_out)
        tol = 1e-12 if dtype == "float64" else 2e-5
        scale_g = max(1.0, np.abs(rdq).max(), np.abs(rdk).max())
        np.testing.assert_allclose(out, ref_out, atol=tol, rtol=0)
        np.testing.assert_allclose(w, ref_w, atol=tol, rtol=0)
        np.testing.assert_allclose(dq * 2.0**a, rdq, atol=tol * scale_g * 10, rtol=0)
        np.testing.assert_allclose(dk * 2.0**b, rdk, atol=tol * scale_g * 10, rtol=0)
        np.testing.assert_allclose(dv, rdv, atol=tol * 10, rtol=0)


def test_attention_values_near_the_largest_float_against_mpmath(xp):
    """|v| near the dtype's largest value: the unnormalised product e @ v would overflow
    (M terms of up to max |v| each), the weights-first product does not."""
    rng = np.random.default_rng(3)
    q, k = rng.standard_normal((2, 3, 4)) * 0.1, rng.standard_normal((2, 6, 4)) * 0.1
    v = rng.uniform(0.5, 1.0, (2, 6, 2)) * 1.5e308
    out = to_numpy(scaled_dot_product_attention(*(from_numpy(xp, a) for a in (q, k, v))))
    ref = reference.to_float64(reference.attention(q, k, v))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, ref, rtol=1e-13)


def _ln_condition(x, eps):
    """max |x| / sqrt(var + eps) per row, computed exactly enough in float64 via rescaling."""
    a = np.max(np.abs(x), axis=-1, keepdims=True)
    a = np.where(a > 0, a, 1.0)
    u = x / a
    with np.errstate(divide="ignore"):  # a constant row without eps: infinitely ill-conditioned
        return 1.0 / np.hypot(u.std(axis=-1), math.sqrt(eps) / a[..., 0])


@SETTINGS
@given(
    e=st.integers(-300, 300),
    x0=st.lists(st.floats(-10, 10, allow_nan=False, allow_infinity=False), min_size=4, max_size=4),
    constant=st.booleans(),
)
def test_layer_norm_of_rows_of_any_magnitude_against_mpmath(e, x0, constant):
    x = np.array([x0, [x0[0]] * 4 if constant else x0[::-1]]) * 10.0**e
    gamma, beta = np.array([1.5, -0.5, 2.0, 1.0]), np.array([0.1, 0.2, -0.3, 0.4])
    y = layer_norm(x, gamma, beta)
    ref = reference.to_float64(reference.layer_norm(x, gamma, beta))
    # Rounding x costs eps |x| in x - mean: relative to sqrt(var + eps) that is the row's
    # condition number (large for nearly constant rows, in any float implementation).
    cond = _ln_condition(x, 1e-5)
    assert np.all(np.abs(y - ref) <= 4e-13 * (1 + cond)[:, None]), (y, ref, cond)
    if constant or x0[0] == x0[1] == x0[2] == x0[3]:
        np.testing.assert_array_equal(y[1] if constant else y[0], beta)  # exactly beta
    d_out = np.array([[1.0, -2.0, 0.5, 0.25], [0.3, 0.1, -1.0, 2.0]])
    dx, dgamma, dbeta = layer_norm_backward(x, d_out, gamma)
    ref_g = reference.gradients(reference.layer_norm, {"x": x, "gamma": gamma}, d_out, beta=beta)
    assert np.all(np.isfinite(dx))
    # dgamma sums d_out * xhat over both rows
    assert np.all(np.abs(dgamma - ref_g["gamma"]) <= 1e-12 * (1 + cond).sum() * 2), (dgamma, ref_g["gamma"])
    # dx scales as 1 / |x| (or 1 / sqrt(eps) for tiny rows): compare relative to its size
    scale_dx = max(np.abs(ref_g["x"]).max(), 1e-300)
    assert np.all(np.abs(dx - ref_g["x"]) <= 1e-11 * (1 + cond)[:, None] * scale_dx), (dx, ref_g["x"], cond)


@SETTINGS
@given(e=st.integers(-1000, 1000), x0=st.lists(st.floats(1, 8) | st.floats(-8, -1), min_size=4, max_size=4))
def test_layer_norm_without_eps_is_invariant_to_powers_of_two(e, x0):
    """With eps = 0, LN(2^e x) = LN(x) exactly in real arithmetic, for every e the dtype holds."""
    x = np.array([x0])
    if np.ptp(x) == 0:
        return
    ref = reference.to_float64(reference.layer_norm(x, eps=0.0))
    cond = _ln_condition(x, 0.0)
    assert np.all(np.abs(layer_norm(x * 2.0**e, eps=0.0) - ref) <= 4e-14 * (1 + cond)[:, None])


def test_layer_norm_constant_row_without_eps_is_an_error_not_nan():
    x = np.array([[1.0, 2.0, 3.0], [0.1, 0.1, 0.1]])
    with raises(ValueError, "eps = 0", "all equal", "(2, 3)"):
        layer_norm(x, eps=0.0)
    with raises(ValueError, "eps = 0", "all equal"):
        layer_norm_backward(x, np.ones((2, 3)), eps=0.0)
    np.testing.assert_array_equal(layer_norm(x)[1], 0.0)  # with eps > 0 it is exactly 0


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@SETTINGS
@given(e=st.integers(-300, 308), mantissa=st.floats(1, 1.7), sign=st.sampled_from([-1.0, 1.0]))
def test_gelu_of_any_magnitude_against_mpmath(approximate, e, mantissa, sign):
    x = np.array([sign * mantissa * 10.0**e, -sign * mantissa * 10.0**min(e, 2), 0.5])
    y = gelu(x, approximate=approximate)
    ref = reference.to_float64(reference.gelu(x, approximate=approximate))
    assert np.all(np.isfinite(y))
    # the reference's 50 digits leave an absolute error of order |x| 1e-50 in the far tail
    np.testing.assert_array_less(np.abs(y - ref), 1e-14 * np.abs(ref) + 1e-45 * np.abs(x) + 1e-300)
    d = gelu_backward(x, np.ones(3), approximate=approximate)
    assert np.all(np.isfinite(d)) and np.all(np.abs(d) <= 1.2)  # gelu' lies in [-0.17, 1.13]


@SETTINGS
@given(
    e=st.integers(0, 300),
    x0=st.lists(st.floats(-4, 4, allow_nan=False), min_size=6, max_size=6),
)
def test_softmax_of_logits_of_any_magnitude(e, x0):
    x = np.array([x0]) * 10.0**e
    for dt in (np.float64, np.float32):
        xs = x.astype(dt) if e < 38 else x
        w = softmax(xs)
        assert np.all(np.isfinite(w)) and np.all(w >= 0)
        assert abs(float(w.sum()) - 1) < 1e-6
        assert w[0, np.argmax(xs[0])] == w.max()


def _finite_or_overflow_error(fn):
    """The promise for every function: a finite result, or a ValueError that says it overflowed."""
    try:
        result = fn()
    except ValueError as exc:
        assert "overflowed" in str(exc) and "not finite although every input is" in str(exc)
        return None
    arrays = result if isinstance(result, tuple) else (result,)
    for a in arrays:
        for leaf in (a.arrays().values() if hasattr(a, "arrays") else [a]):
            assert np.all(np.isfinite(to_numpy(leaf)))
    return result


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("dtype, top", [(np.float64, 250), (np.float32, 30)])
@settings(max_examples=15, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**16))
def test_huge_inputs_through_mha_and_the_block_give_finite_outputs(norm, dtype, top, data, seed):
    """x up to 1e250 (1e30 in float32): the scores (up to 1e500, 1e60) overflow, the
    outputs do not. The forward passes must be finite; the backward passes finite or a
    clear overflow error."""
    e = data.draw(st.integers(0, top))
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((2, 4, 8)) * 10.0**e).astype(dtype)
    d_out = rng.standard_normal((2, 4, 8)).astype(dtype)
    mha = init_params(8, 2, bias=True, seed=seed, dtype=np.dtype(dtype).name)
    block = init_block_params(8, 2, 16, seed=seed, noise=0.1, dtype=np.dtype(dtype).name)
    ffn = init_ffn_params(8, 16, seed=seed, dtype=np.dtype(dtype).name)
    out, backward = multi_head_attention_vjp(x, mha)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(multi_head_attention(x, mha)))
    assert np.all(np.isfinite(transformer_block(x, block, norm=norm)))
    _finite_or_overflow_error(lambda: backward(d_out).x)
    _finite_or_overflow_error(lambda: multi_head_attention_backward(x, mha, d_out).x)
    _finite_or_overflow_error(lambda: transformer_block_backward(x, block, d_out, norm=norm).x)
    _finite_or_overflow_error(lambda: feed_forward(x, ffn))
    _finite_or_overflow_error(lambda: feed_forward_backward(x, ffn, d_out)[0])
    _finite_or_overflow_error(lambda: layer_norm_backward(x, d_out, block.ln1_gamma))


def test_mha_backward_of_saturated_scores_is_finite_and_matches_torch():
    """Scores of ~1e200 make every softmax row one-hot, so the exact dx comes from v alone;
    the FlashAttention delta (rowsum dO * O) left rounding noise of ~1e184 in dx."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 8)) * 1e100
    params = init_params(8, 2, bias=True, seed=2)
    d_out = rng.standard_normal((2, 5, 8))
    g = multi_head_attention_backward(x, params, d_out)
    tx = torch.tensor(x, requires_grad=True)
    w = {n: torch.tensor(a) for n, a in params.arrays().items()}
    q, k, v = tx @ w["w_q"] + w["b_q"], tx @ w["w_k"] + w["b_k"], tx @ w["w_v"] + w["b_v"]
    split = lambda t: t.reshape(2, 5, 2, 4).transpose(1, 2)  # noqa: E731
    heads = torch.softmax(split(q) @ split(k).transpose(-1, -2) / 2.0, dim=-1) @ split(v)
    out = heads.transpose(1, 2).reshape(2, 5, 8) @ w["w_o"] + w["b_o"]
    out.backward(torch.tensor(d_out))
    np.testing.assert_allclose(g.x, tx.grad.numpy(), rtol=1e-10, atol=1e-10 * np.abs(tx.grad.numpy()).max())


def test_an_overflowing_result_is_a_clear_error_and_check_finite_false_returns_it():
    ffn = FFNParams(np.full((2, 2), 1e300), None, np.full((2, 2), 1e300), None)
    x = np.ones((1, 2))
    with raises(ValueError, "feed_forward overflowed", "out", "float64"):
        feed_forward(x, ffn)
    assert np.all(np.isinf(feed_forward(x, ffn, check_finite=False)))


def test_extreme_logits_give_no_numpy_warning():
    """A shift that overflows to -inf is exactly weight 0: NumPy must not warn about it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        weights = numerics.softmax(np.array([1e308, -1e308, 0.0]))
    np.testing.assert_array_equal(weights, [1.0, 0.0, 0.0])
