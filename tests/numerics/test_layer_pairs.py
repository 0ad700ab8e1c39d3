"""Every layer as a forward/backward pair (issue 9, "one shape per layer").

- the vjp of each layer (attention, layer norm, feed-forward) gives the recomputing
  backward's gradients, named, and its backward may be called twice;
- multi-head attention's backward and vjp go through attention's tiled path for long
  sequences (forced here at small sizes) and agree with the untiled path to float64
  rounding; a wrong tiled gradient is caught by the same comparison;
- numerics._parallel.split joins gradients field by field: a field named like a cut
  input is concatenated along that input's axis, one named like an input that went whole
  to every slab, or a parameter's, is summed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

import numerics
from numerics import _parallel, _tiled, attention
from tests.helpers import force_split, from_numpy, to_numpy

TOL64 = 1e-12


def _rel(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# ----------------------------------------------------------------------------- attention


@pytest.mark.parametrize("kw", [dict(causal=True), dict(enable_gqa=True, window=(3, 1), softcap=2.0)], ids=str)
@pytest.mark.parametrize("tiled", [False, True])
def test_attention_vjp_equals_attention_backward(monkeypatch, kw, tiled):
    rng = np.random.default_rng(0)
    hkv = 1 if kw.get("enable_gqa") else 2
    q = rng.standard_normal((2, 2, 9, 4))
    k, v = rng.standard_normal((2, hkv, 11, 4)), rng.standard_normal((2, hkv, 11, 3))
    bias = rng.standard_normal((2, 9, 11))
    d_out = rng.standard_normal((2, 2, 9, 3))
    if tiled:
        monkeypatch.setattr(_tiled, "MIN_SCORES", 0)
        monkeypatch.setattr(attention, "SAVED_WEIGHTS_MAX", 0)
    calls = []
    real = _tiled.backward
    monkeypatch.setattr(_tiled, "backward", lambda *a, **k_: calls.append(1) or real(*a, **k_))
    out, backward = numerics.attention_vjp(q, k, v, bias=bias, **kw)
    np.testing.assert_allclose(out, numerics.scaled_dot_product_attention(q, k, v, bias=bias, **kw), rtol=0, atol=1e-14)
    grads = backward(d_out)
    assert bool(calls) == tiled, "the vjp took the other path"
    again = backward(d_out)  # the residuals are not consumed
    expected = numerics.attention_backward(q, k, v, d_out, bias=bias, **kw)
    assert isinstance(grads, numerics.AttentionGradients) and len(grads) == 4
    for name in ("q", "k", "v", "bias"):
        np.testing.assert_array_equal(getattr(grads, name), getattr(again, name))
        assert _rel(getattr(grads, name), getattr(expected, name)) < TOL64, name
    wrong = backward(d_out * 1.001)  # the comparison can fail
    assert _rel(wrong.q, expected.q) > 1e-4


def _count_tiled_forwards(monkeypatch) -> list:
    """Tiles forced (the vjp keeps no weights); counts the tiled forward passes, those of
    the forward and those a backward recomputes."""
    monkeypatch.setattr(_tiled, "MIN_SCORES", 0)
    monkeypatch.setattr(attention, "SAVED_WEIGHTS_MAX", 0)
    monkeypatch.setattr(_tiled, "BLOCK_Q", 4)
    monkeypatch.setattr(_tiled, "BLOCK_K", 8)
    calls = []
    real = _tiled._forward
    monkeypatch.setattr(_tiled, "_forward", lambda *a: calls.append(1) or real(*a))
    return calls


def _tiled_case(seed: int = 4):
    rng = np.random.default_rng(seed)
    q, k, v = rng.standard_normal((2, 3, 19, 4)), rng.standard_normal((2, 3, 23, 4)), rng.standard_normal((2, 3, 23, 5))
    return q, k, v, rng.standard_normal((2, 3, 19, 5))


TILED_OPTIONS = [dict(causal=True), dict(causal="bottom_right", window=(6, 2), softcap=2.5), dict(bias="rows")]


@pytest.mark.parametrize("kw", TILED_OPTIONS, ids=str)
def test_tiled_vjp_backward_does_not_recompute_the_forward(monkeypatch, kw):
    """On the tiled path the vjp keeps the forward's out and lse: its backward runs no
    forward pass (attention_backward, which keeps nothing, runs one), and the gradients
    are the recomputing backward's to float64 rounding."""
    q, k, v, d_out = _tiled_case()
    if kw.get("bias") == "rows":  # a bias: the online route, and lse with fewer batch dims than v
        kw = dict(bias=np.random.default_rng(5).standard_normal((19, 1)), causal=True)
        v = np.broadcast_to(v[:1], v.shape)
    calls = _count_tiled_forwards(monkeypatch)
    out, backward = numerics.attention_vjp(q, k, v, **kw)
    assert len(calls) == 1
    grads = backward(d_out)
    assert len(calls) == 1, "the vjp's backward recomputed the forward"
    expected = numerics.attention_backward(q, k, v, d_out, **kw)
    assert len(calls) == 2, "attention_backward recomputes the forward by design"
    for name in ("q", "k", "v", "bias"):
        if getattr(expected, name) is not None:
            assert _rel(getattr(grads, name), getattr(expected, name)) < TOL64, name


@pytest.mark.parametrize("wrong", ["lse", "out"])
def test_tiled_vjp_backward_uses_the_forwards_lse_and_out(monkeypatch, wrong):
    """A wrong lse (or out) kept by the forward gives wrong gradients: the backward uses
    what the forward kept, and the comparison with the recomputing backward catches it."""
    q, k, v, d_out = _tiled_case()
    _count_tiled_forwards(monkeypatch)
    real = _tiled.forward

    def shifted(p, return_lse=False):
        out, lse = real(p, return_lse=True)
        return (out, lse + 1e-6) if wrong == "lse" else (out * (1 + 1e-6), lse)

    expected = numerics.attention_backward(q, k, v, d_out, causal=True)
    monkeypatch.setattr(_tiled, "forward", shifted)
    _, backward = numerics.attention_vjp(q, k, v, causal=True)
    grads = backward(d_out)
    worst = max(_rel(getattr(grads, n), getattr(expected, n)) for n in ("q", "k", "v"))
    assert worst > 1e-8, f"a wrong {wrong} went unnoticed"


def test_tiled_backward_needs_both_out_and_lse():
    q, k, v, d_out = _tiled_case()
    p = attention._prepare(q, k, v, None, True, None, True)
    with pytest.raises(ValueError, match="both the forward's out and lse, or neither"):
        _tiled.backward(p, d_out, out=q[..., :5])


def test_attention_vjp_backward_checks_d_out():
    q = np.ones((2, 3, 4))
    _, backward = numerics.attention_vjp(q, q, q)
    with pytest.raises(ValueError, match=r"d_out must have the output's shape \(2, 3, 4\), got shape \(2, 3, 5\)"):
        backward(np.ones((2, 3, 5)))
    with pytest.raises(TypeError, match=r"q, d_out must share one dtype: q is float64, d_out is float32"):
        backward(np.ones((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="d_out contains NaN"):
        backward(np.full((2, 3, 4), np.nan))


# ----------------------------------------------------------------------------- layer norm, FFN


@pytest.mark.parametrize("with_params", [False, True])
def test_layer_norm_vjp_equals_layer_norm_backward(with_params):
    rng = np.random.default_rng(1)
    x, d_out = rng.standard_normal((3, 5, 6)), rng.standard_normal((3, 5, 6))
    gamma, beta = (rng.standard_normal(6), rng.standard_normal(6)) if with_params else (None, None)
    y, backward = numerics.layer_norm_vjp(x, gamma, beta)
    np.testing.assert_array_equal(y, numerics.layer_norm(x, gamma, beta))
    grads = backward(d_out)
    dx, dgamma, dbeta = numerics.layer_norm_backward(x, d_out, gamma)  # unpacks as before
    assert isinstance(grads, numerics.LayerNormGradients)
    np.testing.assert_allclose(grads.x, dx, rtol=0, atol=1e-14)
    assert (grads.gamma is None) == (gamma is None) and (grads.beta is None) == (beta is None)
    if with_params:
        np.testing.assert_allclose(grads.gamma, dgamma, rtol=0, atol=1e-14)
        np.testing.assert_allclose(grads.beta, dbeta, rtol=0, atol=1e-14)
    assert _rel(backward(1.5 * d_out).x, dx) > 0.1  # a constant added to d_out would not show: dx ignores it


def test_feed_forward_vjp_equals_feed_forward_backward():
    rng = np.random.default_rng(2)
    x, d_out = rng.standard_normal((3, 5, 6)), rng.standard_normal((3, 5, 6))
    params = numerics.init_ffn_params(6, 10, seed=3)
    y, backward = numerics.feed_forward_vjp(x, params, approximate="tanh")
    np.testing.assert_array_equal(y, numerics.feed_forward(x, params, approximate="tanh"))
    grads = backward(d_out)
    dx, expected = numerics.feed_forward_backward(x, params, d_out, approximate="tanh")  # unpacks as before
    assert isinstance(grads, numerics.FFNGradients) and isinstance(grads.params, numerics.FFNParams)
    np.testing.assert_allclose(grads.x, dx, rtol=0, atol=1e-14)
    for name in ("w1", "b1", "w2", "b2"):
        np.testing.assert_allclose(getattr(grads.params, name), getattr(expected, name), rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="d_out must have the output's shape"):
        backward(d_out[..., :3])
    assert _rel(backward(2 * d_out).params.w1, expected.w1) > 0.5


# ----------------------------------------------------------------------------- MHA on the tiled path


def _mha_case(kind: str, seed: int = 0):
    """(x, params, d_out, keywords) of a float64 multi-head problem."""
    rng = np.random.default_rng(seed)
    n, d = 37, 8
    kv = 1 if kind == "gqa_rope" else None
    params = numerics.init_params(d, 4, d_k=4, d_v=3, bias=True, seed=seed, num_kv_heads=kv)
    for name in ("b_q", "b_k", "b_v", "b_o"):
        setattr(params, name, rng.standard_normal(getattr(params, name).shape))
    x = rng.standard_normal((2, n, d))
    kw: dict[str, Any] = {}
    if kind == "causal_bias":
        kw = dict(causal=True, bias=rng.standard_normal((4, n, n)))
    elif kind == "gqa_rope":
        kw = dict(window=(5, 2), softcap=3.0, rope=True)
    elif kind == "cross":
        kw = dict(memory=rng.standard_normal((2, 29, d)), causal="bottom_right", mask=rng.random((2, n, 29)) > 0.2)
    return x, params, rng.standard_normal((2, n, d)), kw


def _mha_gradients(x, params, d_out, kw, xp=np) -> dict[str, np.ndarray]:
    """Every gradient of the recomputing backward and of the vjp, by name (computed on
    namespace ``xp``, returned as NumPy arrays)."""
    put = lambda a: from_numpy(xp, a) if isinstance(a, np.ndarray) else a  # noqa: E731
    x, d_out, kw = put(x), put(d_out), {n: put(a) for n, a in kw.items()}
    params = numerics.MHAParams(num_heads=params.num_heads, num_kv_heads=params.num_kv_heads,
                                **{n: put(a) for n, a in params.arrays().items()})
    out = {}
    for how, grads in (("backward", numerics.multi_head_attention_backward(x, params, d_out, **kw)),
                       ("vjp", numerics.multi_head_attention_vjp(x, params, **kw)[1](d_out))):
        out.update({f"{how}.{n}": a for n, a in grads.params.arrays().items()})
        out.update({f"{how}.{n}": getattr(grads, n) for n in ("x", "memory", "bias") if getattr(grads, n) is not None})
    return {n: to_numpy(a) for n, a in out.items()}


def _assert_agree(tiled: dict, untiled: dict) -> None:
    """Each gradient to float64 rounding, against the largest of them (b_k's gradient is 0
    in exact arithmetic: rounding noise on both paths)."""
    assert tiled.keys() == untiled.keys()
    scale = max(np.max(np.abs(a)) for a in untiled.values())
    for name, value in tiled.items():
        assert value.shape == untiled[name].shape, name
        assert np.max(np.abs(value - untiled[name])) < TOL64 * scale, name


def _worst(tiled: dict, untiled: dict) -> float:
    scale = max(np.max(np.abs(a)) for a in untiled.values())
    return max(float(np.max(np.abs(value - untiled[name]))) for name, value in tiled.items()) / scale


def _force_tiles(monkeypatch) -> list:
    """The tiled path at any size, in tiles that do not divide the lengths; counts its calls."""
    monkeypatch.setattr(_tiled, "MIN_SCORES", 0)
    monkeypatch.setattr(attention, "SAVED_WEIGHTS_MAX", 0)  # the vjp keeps no weights
    monkeypatch.setattr(_tiled, "BLOCK_Q", 8)
    monkeypatch.setattr(_tiled, "BLOCK_K", 16)
    calls = []
    real = _tiled.backward
    monkeypatch.setattr(_tiled, "backward", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.mark.parametrize("kind", ["plain", "causal_bias", "gqa_rope", "cross"])
def test_mha_backward_and_vjp_take_the_tiled_path_and_agree_with_untiled(monkeypatch, kind):
    x, params, d_out, kw = _mha_case(kind)
    untiled = _mha_gradients(x, params, d_out, kw)
    calls = _force_tiles(monkeypatch)
    tiled = _mha_gradients(x, params, d_out, kw)
    assert len(calls) == 2, "the MHA backward and the vjp should each take attention's tiled backward once"
    _assert_agree(tiled, untiled)


def test_mha_tiled_path_on_every_namespace(monkeypatch, xp):
    x, params, d_out, kw = _mha_case("gqa_rope")
    untiled = _mha_gradients(x, params, d_out, kw, xp)
    calls = _force_tiles(monkeypatch)
    tiled = _mha_gradients(x, params, d_out, kw, xp)
    assert len(calls) == 2
    _assert_agree(tiled, untiled)


def test_mha_tiled_comparison_catches_a_wrong_tiled_gradient(monkeypatch):
    """The comparison above can fail: a tiled dk off by 1e-9 is caught."""
    x, params, d_out, kw = _mha_case("causal_bias")
    untiled = _mha_gradients(x, params, d_out, kw)
    _force_tiles(monkeypatch)
    real = _tiled.backward

    def wrong(*a, **k):
        dq, dk, *rest = real(*a, **k)
        return (dq, dk * (1 + 1e-9), *rest)

    monkeypatch.setattr(_tiled, "backward", wrong)
    tiled = _mha_gradients(x, params, d_out, kw)
    assert _worst(tiled, untiled) > 10 * TOL64


def test_mha_tiled_path_split_over_cores(monkeypatch):
    x, params, d_out, kw = _mha_case("causal_bias")
    untiled = _mha_gradients(x, params, d_out, kw)
    calls = _force_tiles(monkeypatch)
    slabs = force_split(monkeypatch)
    tiled = _mha_gradients(x, params, d_out, kw)
    assert slabs and len(calls) == 4, "each of two slabs, for the backward and the vjp, took the tiled path"
    _assert_agree(tiled, untiled)


# ----------------------------------------------------------------------------- the generic split


@dataclass
class _Params:
    w: Any
    count: int = 3


@dataclass
class _Grads:
    x: Any
    shared: Any
    params: _Params
    nothing: Any = None


def _toy(x, shared):
    """A 'layer' with input x (..., L, C), an input ``shared`` broadcast along the batch, and
    a parameter: gradients of sum(x * shared * w) with w = 2."""
    return _Grads(x=2.0 * shared * np.ones_like(x), shared=np.sum(2.0 * x, axis=0, keepdims=True),
                  params=_Params(w=np.sum(x * shared)))


def test_split_joins_gradients_by_field(monkeypatch):
    rng = np.random.default_rng(3)
    x, shared = rng.standard_normal((4, 3, 2)), rng.standard_normal((1, 3, 2))
    whole = _toy(x, shared)
    monkeypatch.setattr(_parallel, "worker_count", lambda: 2)
    monkeypatch.setattr(_parallel, "MIN_SCORES", 0)
    inputs = dict(x=x, shared=shared)
    cut = _parallel.plan(np, (4,), 1, inputs)
    assert cut is not None and cut.axes == {"x": 0, "shared": None}
    joined = _parallel.split(_toy, inputs, cut, join=_parallel.like_inputs)
    np.testing.assert_array_equal(joined.x, whole.x)  # concatenated, as x was cut
    np.testing.assert_allclose(joined.shared, whole.shared, rtol=1e-15)  # summed: went whole to each slab
    np.testing.assert_allclose(joined.params.w, whole.params.w, rtol=1e-14)  # a parameter: summed
    assert joined.params.count == 3 and joined.nothing is None
    # The rule is what makes it right: concatenating every field is wrong.
    wrong = _parallel.split(_toy, inputs, cut, join=lambda r, c: [np.concatenate([g.shared for g in r])])
    assert wrong[0].shape != whole.shared.shape
