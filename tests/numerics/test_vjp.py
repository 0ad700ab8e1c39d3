"""multi_head_attention_vjp: the forward pass keeps what backward needs; same numbers as the
recomputing backward and as the mpmath reference."""

import numpy as np
import pytest

import numerics
from numerics import _parallel, reference
from tests.helpers import from_numpy, relative_error, to_numpy


def _case(rng, batch=(2,), n=4, m=None, d=6, heads=2, bias=True):
    params = numerics.init_params(d, heads, bias=bias, d_k=2, d_v=3, seed=int(rng.integers(1 << 30)))
    if bias:  # random biases, so a bias bug cannot hide behind zeros
        for name in ("b_q", "b_k", "b_v", "b_o"):
            setattr(params, name, rng.standard_normal(getattr(params, name).shape))
    x = rng.standard_normal(batch + (n, d))
    memory = None if m is None else rng.standard_normal(batch + (m, d))
    mask = rng.random(batch + (n, n if m is None else m)) > 0.3
    d_out = rng.standard_normal(batch + (n, d))
    return x, params, memory, mask, d_out


def _grad_arrays(g):
    arrays = {"x": g.x, **g.params.arrays()}
    if g.memory is not None:
        arrays["memory"] = g.memory
    return arrays


@pytest.mark.parametrize("cross", [False, True])
def test_vjp_matches_recomputing_backward_and_reference(xp, cross):
    rng = np.random.default_rng(7)
    x, params, memory, mask, d_out = _case(rng, m=5 if cross else None)
    xp_params = numerics.MHAParams(num_heads=params.num_heads, **{n: from_numpy(xp, a) for n, a in params.arrays().items()})
    args = dict(memory=None if memory is None else from_numpy(xp, memory), mask=from_numpy(xp, mask), causal=not cross)
    out, backward = numerics.multi_head_attention_vjp(from_numpy(xp, x), xp_params, **args)
    expected_out = numerics.multi_head_attention(from_numpy(xp, x), xp_params, **args)
    np.testing.assert_allclose(to_numpy(out), to_numpy(expected_out), rtol=0, atol=1e-14)
    grads = _grad_arrays(backward(from_numpy(xp, d_out)))
    again = _grad_arrays(backward(from_numpy(xp, d_out)))  # residuals are not consumed
    recomputed = _grad_arrays(numerics.multi_head_attention_backward(from_numpy(xp, x), xp_params, from_numpy(xp, d_out), **args))
    ref = reference.multi_head_attention_gradients(x, params, d_out, memory=memory, mask=mask, causal=not cross)
    scale = max(np.max(np.abs(a)) for a in ref.values())
    for name, value in grads.items():
        np.testing.assert_array_equal(to_numpy(value), to_numpy(again[name]))
        np.testing.assert_allclose(to_numpy(value), to_numpy(recomputed[name]), rtol=0, atol=1e-13 * scale)
        assert np.max(np.abs(to_numpy(value) - ref[name])) < 1e-12 * scale, name


def test_vjp_split_over_cores(monkeypatch):
    monkeypatch.setattr(_parallel, "MIN_SCORES", 1)
    monkeypatch.setattr(_parallel, "worker_count", lambda: 2)
    rng = np.random.default_rng(3)
    x, params, memory, mask, d_out = _case(rng, batch=(4,), m=3)
    calls = []
    real = _parallel.map_slabs
    monkeypatch.setattr(_parallel, "map_slabs", lambda *a, **k: calls.append(k.get("extras") is not None) or real(*a, **k))
    out, backward = numerics.multi_head_attention_vjp(x, params, memory=memory, mask=mask)
    grads = backward(d_out)
    assert calls == [False, True], "forward split, then backward split with each slab's saved values"
    monkeypatch.setattr(_parallel, "MIN_SCORES", 1 << 62)
    whole = numerics.multi_head_attention_backward(x, params, d_out, memory=memory, mask=mask)
    np.testing.assert_allclose(out, numerics.multi_head_attention(x, params, memory=memory, mask=mask), atol=1e-14)
    for name, value in _grad_arrays(grads).items():
        np.testing.assert_allclose(value, _grad_arrays(whole)[name], rtol=0, atol=1e-13)


def test_vjp_detects_a_wrong_upstream_gradient():
    """The comparison above can fail: a different d_out gives different gradients."""
    rng = np.random.default_rng(4)
    x, params, memory, mask, d_out = _case(rng)
    _, backward = numerics.multi_head_attention_vjp(x, params, mask=mask)
    right = numerics.multi_head_attention_backward(x, params, d_out, mask=mask)
    wrong = backward(d_out * 1.001)
    assert np.max(np.abs(wrong.x - right.x)) > 1e-6


def test_vjp_backward_checks_d_out():
    x, params, _, _, d_out = _case(np.random.default_rng(5))
    _, backward = numerics.multi_head_attention_vjp(x, params)
    with pytest.raises(ValueError, match="d_out must have the output's shape"):
        backward(d_out[..., :-1])
    with pytest.raises(TypeError, match="d_out"):
        backward(d_out.astype(np.float32))
    bad = d_out.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="d_out contains NaN"):
        backward(bad)


@pytest.mark.parametrize("x_shape", [(1, 4, 6), (4, 6)])
def test_vjp_cross_attention_with_x_broadcast_over_memory_batch(x_shape):
    """x with fewer (or size-1) batch dims than memory: dx and dW_q sum over memory's batch."""
    rng = np.random.default_rng(6)
    _, params, _, _, _ = _case(rng)
    x = rng.standard_normal(x_shape)
    memory = rng.standard_normal((3, 5, 6))
    d_out = rng.standard_normal((3, 4, 6))
    out, backward = numerics.multi_head_attention_vjp(x, params, memory=memory, causal=True)
    assert out.shape == (3, 4, 6)
    ref = reference.multi_head_attention_gradients(x, params, d_out, memory=memory, causal=True)
    scale = max(np.max(np.abs(a)) for a in ref.values())
    for grads in (backward(d_out), numerics.multi_head_attention_backward(x, params, d_out, memory=memory, causal=True)):
        for name, value in _grad_arrays(grads).items():
            assert value.shape == ref[name].shape, name
            assert np.max(np.abs(value - ref[name])) < 1e-12 * scale, name
