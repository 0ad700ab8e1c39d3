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
from tests.helpers import from_numpy, to_numpy

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


def _force_split(monkeypatch, workers=2):
    """Make every NumPy call take the slab path (see numerics._parallel); returns the calls."""
    from numerics import _parallel

    monkeypatch.setattr(_parallel, "worker_count", lambda: workers)
    monkeypatch.setattr(_parallel, "MIN_SCORES", 1)
    calls = []
    original = _parallel.map_slabs
    monkeypatch.setattr(_parallel, "map_slabs", lambda *a, **kw: calls.append(1) or original(*a, **kw))
    return calls


@pytest.mark.parametrize(
    "shapes",
    [
        # q, k, v batch, mask shape: split along the batch, mask broadcast inside each slab
        ((4,), (4,), (4,), (1, 3, 5)),
        ((4,), (4,), (4,), (4, 1, 5)),
        ((4, 2), (4, 2), (4, 2), (2, 3, 5)),
        # batch dims q, k or v lack: run whole, still right
        ((1,), (4,), (4,), (4, 3, 5)),
        ((4,), (1,), (4,), None),
        ((1,), (1,), (4,), (4, 3, 5)),
    ],
)
def test_slab_splitter_with_broadcast_batch_dims(monkeypatch, shapes):
    calls = _force_split(monkeypatch)
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
    same = bq == bk_ == bv
    assert len(calls) == (2 if same else 0)  # the split path really ran where it can


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


def test_softmax_axis_must_be_an_integer_and_x_at_least_1d():
    with raises(TypeError, "axis must be an integer", "float"):
        softmax(_Q, axis=1.0)
    with raises(TypeError, "axis must be an integer", "bool"):
        softmax(_Q, axis=True)
    with raises(ValueError, "x must have at least 1 dimensions", "()"):
        softmax(np.float64(1.0) * np.ones(()))
