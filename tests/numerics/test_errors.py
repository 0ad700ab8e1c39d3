"""Bad input: every check raises the documented error type with a message naming the argument.

Also the numerically extreme but valid inputs (huge logits, fully masked rows) that must
give finite answers rather than errors.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest

import numerics
from numerics import (
    MHAParams,
    attention_backward,
    init_params,
    multi_head_attention,
    multi_head_attention_backward,
    scaled_dot_product_attention,
    softmax,
)

try:  # the mixed-namespace checks need a second array library; CI installs torch
    import torch
except ImportError:  # pragma: no cover
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

RNG = np.random.default_rng(20240601)


def qkv(n=3, m=5, k=4, v=6, batch=(2,), dtype=np.float64):
    q = RNG.standard_normal(batch + (n, k)).astype(dtype)
    kk = RNG.standard_normal(batch + (m, k)).astype(dtype)
    vv = RNG.standard_normal(batch + (m, v)).astype(dtype)
    return q, kk, vv


def raises(exc, *names):
    """pytest.raises for ``exc`` whose message mentions every name in ``names`` as a word."""
    pattern = "".join(rf"(?=.*(?<!\w){re.escape(n)}(?!\w))" for n in names)
    return pytest.raises(exc, match=re.compile(pattern, re.S))


# The two attention entry points take the same arguments; backward also needs d_out.
def fwd(q, k, v, **kw):
    return scaled_dot_product_attention(q, k, v, **kw)


def bwd(q, k, v, **kw):
    d_out = kw.pop("d_out", None)
    if d_out is None:
        d_out = np.ones((2, 3, 6))  # the output's shape for the default qkv(); errors come first
    return attention_backward(q, k, v, d_out, **kw)


BOTH = pytest.mark.parametrize("call", [fwd, bwd], ids=["forward", "backward"])


# --------------------------------------------------------------------------- attention


@BOTH
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_rank_too_low(call, which):
    args = dict(zip("qkv", qkv()))
    args[which] = args[which][0, 0]  # 1-D
    with raises(ValueError, which, "2"):
        call(args["q"], args["k"], args["v"])


@BOTH
def test_q_k_width_mismatch(call):
    q, k, v = qkv()
    with raises(ValueError, "q", "k", str(q.shape), str(k[..., :3].shape)):
        call(q, k[..., :3], v)


@BOTH
def test_k_v_length_mismatch(call):
    q, k, v = qkv()
    with raises(ValueError, "k", "v", str(k.shape), str(v[:, :4].shape)):
        call(q, k, v[:, :4])


@BOTH
def test_batch_dims_do_not_broadcast(call):
    q, _, _ = qkv(batch=(2,))
    _, k, v = qkv(batch=(3,))
    with raises(ValueError, "q", "k", "v", "broadcast"):
        call(q, k, v)


def test_batch_dims_that_broadcast_are_accepted():
    q, _, _ = qkv(batch=(2, 1))
    _, k, v = qkv(batch=(3,))
    out = scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 3, 3, 6)
    dq, dk, dv = attention_backward(q, k, v, np.ones(out.shape))
    assert dq.shape == q.shape and dk.shape == k.shape and dv.shape == v.shape


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 4, 6), (3, 6)])
def test_d_out_wrong_shape(shape):
    q, k, v = qkv()
    with raises(ValueError, "d_out", str(shape)):
        attention_backward(q, k, v, np.ones(shape))


@BOTH
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_integer_input(call, which):
    args = dict(zip("qkv", qkv()))
    args[which] = np.round(args[which] * 3).astype(np.int64)
    with raises(TypeError, which, "floating"):
        call(args["q"], args["k"], args["v"])


@BOTH
def test_mixed_dtypes(call):
    q, k, v = qkv()
    with raises(TypeError, "q", "k", "float32", "float64"):
        call(q, k.astype(np.float32), v)


def test_mixed_dtypes_d_out():
    q, k, v = qkv()
    with raises(TypeError, "d_out", "float32"):
        attention_backward(q, k, v, np.ones((2, 3, 6), dtype=np.float32))


@needs_torch
@BOTH
@pytest.mark.parametrize("which", ["k", "v"])
def test_mixed_namespaces_names_both(call, which):
    args = dict(zip("qkv", qkv()))
    args[which] = torch.from_numpy(args[which])
    with raises(TypeError, "q", which, "numpy", "torch"):
        call(args["q"], args["k"], args["v"])


@needs_torch
def test_mixed_namespaces_mask():
    q, k, v = qkv()
    mask = torch.ones((3, 5), dtype=torch.bool)
    with raises(TypeError, "q", "mask", "numpy", "torch"):
        scaled_dot_product_attention(q, k, v, mask=mask)


def test_not_an_array():
    _, k, v = qkv()
    with raises(TypeError, "q"):
        scaled_dot_product_attention([[1.0, 2.0, 3.0, 4.0]], k, v)


@BOTH
@pytest.mark.parametrize("shape", [(3, 4), (2, 5), (3, 3, 5), (5, 3)])
def test_mask_does_not_broadcast(call, shape):
    q, k, v = qkv()
    with raises(ValueError, "mask", str(shape)):
        call(q, k, v, mask=np.ones(shape, dtype=bool))


@BOTH
@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.uint8])
def test_mask_not_boolean(call, dtype):
    q, k, v = qkv()
    with raises(TypeError, "mask", "boolean"):
        call(q, k, v, mask=np.ones((3, 5), dtype=dtype))


@BOTH
@pytest.mark.parametrize("which", ["q", "k", "v", "d_out"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input(call, which, bad):
    if which == "d_out" and call is fwd:
        pytest.skip("forward has no d_out")
    args = dict(zip("qkv", qkv()))
    if call is bwd:
        args["d_out"] = np.ones((2, 3, 6))
    args[which] = args[which].copy()
    args[which][1, 2, 3] = bad
    with raises(ValueError, which, "check_finite"):
        call(**args)
    # check_finite=False turns the check off: NaN/Inf then propagate instead of raising.
    with np.errstate(all="ignore"):
        result = call(**args, check_finite=False)
    results = result if isinstance(result, tuple) else (result,)
    assert not all(np.all(np.isfinite(r)) for r in results)


@BOTH
@pytest.mark.parametrize("scale", [math.inf, -math.inf, math.nan])  # 0 is allowed: uniform attention
def test_bad_scale_value(call, scale):
    q, k, v = qkv()
    with raises(ValueError, "scale"):
        call(q, k, v, scale=scale)


@BOTH
@pytest.mark.parametrize("scale", ["abc", "0.5", [0.5], 1j, object()])
def test_scale_not_a_number(call, scale):
    q, k, v = qkv()
    with raises(TypeError, "scale"):
        call(q, k, v, scale=scale)


@BOTH
@pytest.mark.parametrize("causal", [1, None, np.ones(1, dtype=bool)])
def test_causal_not_bool(call, causal):
    q, k, v = qkv()
    with raises(TypeError, "causal"):
        call(q, k, v, causal=causal)


@BOTH
@pytest.mark.parametrize("causal", ["yes", "top-left", "bottom_left", ""])
def test_causal_unknown_alignment(call, causal):
    # Strings name an alignment ("top_left", "bottom_right"); any other string is a ValueError.
    q, k, v = qkv()
    with raises(ValueError, "causal", "bottom_right"):
        call(q, k, v, causal=causal)


# --------------------------------------------------------------------------- softmax


def test_softmax_errors():
    x = RNG.standard_normal((3, 4))
    with raises(TypeError, "x", "floating"):
        softmax(np.arange(12).reshape(3, 4))
    with raises(ValueError, "axis"):
        softmax(x, axis=2)
    with raises(TypeError, "mask", "boolean"):
        softmax(x, mask=np.ones((3, 4)))
    with raises(ValueError, "mask", "(4, 3)"):
        softmax(x, mask=np.ones((4, 3), dtype=bool))
    if torch is not None:
        with raises(TypeError, "x", "mask", "numpy", "torch"):
            softmax(x, mask=torch.ones((3, 4), dtype=torch.bool))
    for bad in (np.nan, np.inf):
        y = x.copy()
        y[1, 1] = bad
        with raises(ValueError, "x", "check_finite"):
            softmax(y)


def test_softmax_minus_inf_is_exclusion_not_error():
    x = np.array([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf]])
    s = softmax(x)
    e = np.exp([0.0, 1.0])
    np.testing.assert_allclose(s[0], [e[0] / e.sum(), 0.0, e[1] / e.sum()], rtol=1e-15, atol=0)
    assert np.array_equal(s[1], np.zeros(3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_huge_logits(dtype):
    # exp(1e30) overflows in any precision; the max shift must remove it. Exact answers:
    # [1e30, 1e30 - 1 (== 1e30 in floating point), -1e30] -> [1/2, 1/2, 0].
    x = np.array([1e30, 1e30, -1e30, 0.0], dtype=dtype)
    s = softmax(x)
    assert s.dtype == dtype
    assert np.all(np.isfinite(s))
    np.testing.assert_allclose(s, [0.5, 0.5, 0.0, 0.0], rtol=0, atol=0)
    s = softmax(np.array([1e30, 1e30 - 1e16 * 100, 0.0]))  # gap 1e18: all weight on the max
    np.testing.assert_array_equal(s, [1.0, 0.0, 0.0])


# --------------------------------------------------------------------------- extreme but valid


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logits_of_magnitude_1e4_give_finite_output(dtype):
    # scale=1, K=1: logit i,j = q_i k_j. q = 100, k = [100, 99.99, -100]: logits 1e4, 9999, -1e4,
    # whose naive exp overflows. Exact weights: softmax([0, -1, -2e4]) = [1/(1+e^-1), e^-1/(1+e^-1), 0].
    q = np.array([[100.0], [-100.0]], dtype=dtype)
    k = np.array([[100.0], [99.99], [-100.0]], dtype=dtype)
    v = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]], dtype=dtype)
    out, w = scaled_dot_product_attention(q, k, v, scale=1.0, return_weights=True)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(w))
    logits = np.array([[1e4, 9999.0, -1e4], [-1e4, -9999.0, 1e4]])
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    tol = 1e-12 if dtype == np.float64 else 2e-3  # float32: k = 99.99 is rounded (logit error ~1e-3)
    np.testing.assert_allclose(w, expected, rtol=0, atol=tol)
    np.testing.assert_allclose(out, expected @ v.astype(np.float64), rtol=0, atol=3 * tol)
    grads = attention_backward(q, k, v, np.ones_like(out), scale=1.0)
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_fully_masked_row_attention_gives_zero_output_and_gradients():
    q, k, v = qkv()
    mask = np.ones((2, 3, 5), dtype=bool)
    mask[0, 1, :] = False  # batch 0, query 1: nothing allowed
    out, w = scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)
    assert np.array_equal(out[0, 1], np.zeros(6)) and np.array_equal(w[0, 1], np.zeros(5))
    assert np.all(np.isfinite(out))
    d_out = np.zeros((2, 3, 6))
    d_out[0, 1] = RNG.standard_normal(6)  # upstream gradient only on the masked row
    dq, dk, dv = attention_backward(q, k, v, d_out, mask=mask)
    for g in (dq, dk, dv):
        assert np.all(g == 0.0)


def test_fully_masked_row_mha_gives_zero_weights_and_zero_gradients():
    p = init_params(8, 2, bias=True, seed=3)
    p = dataclasses.replace(p, **{b: RNG.standard_normal(getattr(p, b).shape) for b in ("b_q", "b_k", "b_v", "b_o")})
    x = RNG.standard_normal((2, 4, 8))
    mask = np.ones((2, 4, 4), dtype=bool)
    mask[1, 2, :] = False
    out, w = multi_head_attention(x, p, mask=mask, return_weights=True)
    assert np.array_equal(w[1, :, 2], np.zeros((2, 4)))
    # With nothing to attend to, every head outputs 0, so the row is just the output bias.
    np.testing.assert_array_equal(out[1, 2], p.b_o)
    d_out = np.zeros((2, 4, 8))
    d_out[1, 2] = RNG.standard_normal(8)
    g = multi_head_attention_backward(x, p, d_out, mask=mask)
    assert np.all(g.x == 0.0)
    for name, arr in g.params.arrays().items():
        if name == "b_o":
            np.testing.assert_array_equal(arr, d_out[1, 2])  # b_o's gradient is d_out summed
        else:
            assert np.all(arr == 0.0), name


# --------------------------------------------------------------------------- multi-head attention


def mha_setup(bias=True, d_memory=None):
    p = init_params(8, 2, bias=bias, d_memory=d_memory, seed=1)
    x = RNG.standard_normal((2, 3, 8))
    return p, x


def mha_fwd(x, p, **kw):
    return multi_head_attention(x, p, **kw)


def mha_bwd(x, p, **kw):
    d_out = kw.pop("d_out", None)
    if d_out is None:
        d_out = np.ones((2, 3, 8))  # the output's shape for mha_setup(); errors come first
        if torch is not None and isinstance(x, torch.Tensor):
            d_out = torch.from_numpy(d_out)
    return multi_head_attention_backward(x, p, d_out, **kw)


MHA_BOTH = pytest.mark.parametrize("call", [mha_fwd, mha_bwd], ids=["forward", "backward"])


@MHA_BOTH
def test_mha_x_width_not_d_model(call):
    p, x = mha_setup()
    with raises(ValueError, "x", "(2, 3, 7)", "8"):
        call(x[..., :7], p)


@MHA_BOTH
def test_mha_x_rank_too_low(call):
    p, x = mha_setup()
    with raises(ValueError, "x", "2"):
        call(x[0, 0], p)


@MHA_BOTH
@pytest.mark.parametrize(
    "field, shape",
    [("w_k", (8, 6)), ("w_v", (7, 8)), ("w_o", (8, 7)), ("w_o", (6, 8)), ("w_k", (8, 8, 1))],
)
def test_mha_params_shapes_inconsistent(call, field, shape):
    p, x = mha_setup(bias=False)
    p = dataclasses.replace(p, **{field: RNG.standard_normal(shape)})
    with raises(ValueError, f"params.{field}", str(shape)):
        call(x, p)


@MHA_BOTH
def test_mha_columns_not_divisible_by_heads(call):
    p, x = mha_setup(bias=False)
    p = dataclasses.replace(p, w_q=RNG.standard_normal((8, 7)), w_k=RNG.standard_normal((8, 7)))
    with raises(ValueError, "params.w_q", "num_heads"):
        call(x, p)


@MHA_BOTH
@pytest.mark.parametrize("num_heads", [0, -1, 2.0, "2"])
def test_mha_bad_num_heads(call, num_heads):
    p, x = mha_setup(bias=False)
    p = dataclasses.replace(p, num_heads=num_heads)
    with raises(ValueError, "params.num_heads"):
        call(x, p)


@MHA_BOTH
@pytest.mark.parametrize("field, shape", [("b_q", (7,)), ("b_k", (8, 1)), ("b_v", (1, 8)), ("b_o", (9,)), ("b_o", ())])
def test_mha_bias_shape_wrong(call, field, shape):
    p, x = mha_setup(bias=True)
    p = dataclasses.replace(p, **{field: RNG.standard_normal(shape)})
    with raises(ValueError, f"params.{field}"):
        call(x, p)


@MHA_BOTH
@pytest.mark.parametrize("field", ["w_q", "w_o", "b_k"])
def test_mha_param_integer_dtype(call, field):
    p, x = mha_setup(bias=True)
    p = dataclasses.replace(p, **{field: np.zeros(getattr(p, field).shape, dtype=np.int64)})
    with raises(TypeError, f"params.{field}", "floating"):
        call(x, p)


@MHA_BOTH
def test_mha_mixed_dtypes(call):
    p, x = mha_setup()
    with raises(TypeError, "x", "float32"):
        call(x.astype(np.float32), p)
    p32 = dataclasses.replace(p, w_v=p.w_v.astype(np.float32))
    with raises(TypeError, "params.w_v", "float32"):
        call(x, p32)


@needs_torch
@MHA_BOTH
def test_mha_mixed_namespaces(call):
    p, x = mha_setup()
    with raises(TypeError, "x", "params.w_q", "numpy", "torch"):
        call(torch.from_numpy(x), p)
    pt = dataclasses.replace(p, w_o=torch.from_numpy(p.w_o))
    with raises(TypeError, "params.w_o", "numpy", "torch"):
        call(x, pt)


@MHA_BOTH
def test_mha_integer_x(call):
    p, x = mha_setup()
    with raises(TypeError, "x", "floating"):
        call(np.ones((2, 3, 8), dtype=np.int32), p)


@MHA_BOTH
def test_mha_memory_width_mismatch(call):
    p, x = mha_setup(d_memory=5)
    memory = RNG.standard_normal((2, 4, 6))
    with raises(ValueError, "memory", "(2, 4, 6)", "5"):
        call(x, p, memory=memory)
    # and self-attention with params built for a 5-wide memory is refused too
    with raises(ValueError, "memory"):
        call(x, p)


@MHA_BOTH
def test_mha_memory_batch_does_not_broadcast(call):
    p, x = mha_setup()
    with raises(ValueError, "x", "memory", "broadcast"):
        call(x, p, memory=RNG.standard_normal((3, 4, 8)))


@MHA_BOTH
def test_mha_memory_rank_and_dtype(call):
    p, x = mha_setup()
    with raises(ValueError, "memory", "2"):
        call(x, p, memory=RNG.standard_normal(8))
    with raises(TypeError, "memory", "float32"):
        call(x, p, memory=RNG.standard_normal((2, 4, 8)).astype(np.float32))


@MHA_BOTH
@pytest.mark.parametrize("params", [None, {"w_q": 1}, (1, 2, 3, 4)])
def test_mha_params_not_mhaparams(call, params):
    _, x = mha_setup()
    with raises(TypeError, "params", "MHAParams"):
        call(x, params)


@MHA_BOTH
def test_mha_mask_errors(call):
    p, x = mha_setup()
    with raises(ValueError, "mask", "(3, 4)"):
        call(x, p, mask=np.ones((3, 4), dtype=bool))
    with raises(TypeError, "mask", "boolean"):
        call(x, p, mask=np.ones((3, 3)))


@MHA_BOTH
@pytest.mark.parametrize("where", ["x", "memory", "params.w_k", "params.b_o"])
def test_mha_non_finite(call, where):
    p, x = mha_setup()
    memory = RNG.standard_normal((2, 4, 8))
    if where == "x":
        x = x.copy()
        x[0, 1, 2] = np.nan
    elif where == "memory":
        memory[1, 0, 0] = np.inf
    else:
        field = where.split(".")[1]
        arr = getattr(p, field).copy()
        arr.flat[0] = np.inf
        p = dataclasses.replace(p, **{field: arr})
    with raises(ValueError, where, "check_finite"):
        call(x, p, memory=memory)
    with np.errstate(all="ignore"):
        result = call(x, p, memory=memory, check_finite=False)
    assert result is not None  # no error once the check is off


def test_mha_d_out_wrong_shape():
    p, x = mha_setup()
    with raises(ValueError, "d_out", "(2, 3, 7)"):
        multi_head_attention_backward(x, p, np.ones((2, 3, 7)))
    with raises(TypeError, "d_out", "float32"):
        multi_head_attention_backward(x, p, np.ones((2, 3, 8), dtype=np.float32))


def test_init_params_not_divisible():
    with raises(ValueError, "d_model", "num_heads", "10", "3"):
        init_params(10, 3)
    with raises(ValueError, "d_model", "num_heads"):
        init_params(10, 3, d_k=4)  # d_v still defaults to d_model // num_heads


def test_init_params_explicit_head_widths_need_no_divisibility():
    p = init_params(10, 3, d_k=4, d_v=5)
    assert (p.w_q.shape, p.w_k.shape, p.w_v.shape, p.w_o.shape) == ((10, 12), (10, 12), (10, 15), (15, 10))
    assert (p.d_model, p.d_k, p.d_v, p.num_heads) == (10, 4, 5, 3)
    x = RNG.standard_normal((2, 3, 10))
    assert multi_head_attention(x, p).shape == (2, 3, 10)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(d_model=0, num_heads=1), "d_model"),
        (dict(d_model=4, num_heads=0), "num_heads"),
        (dict(d_model=4.0, num_heads=2), "d_model"),
        (dict(d_model=4, num_heads=2, d_k=0), "d_k"),
        (dict(d_model=4, num_heads=2, d_v=-1), "d_v"),
        (dict(d_model=4, num_heads=2, d_memory=0), "d_memory"),
    ],
)
def test_init_params_bad_sizes(kwargs, name):
    with raises(ValueError, name):
        init_params(**kwargs)


def test_init_params_bad_namespace():
    with raises(ValueError, "xp"):
        init_params(4, 2, xp="tensorflow")
    with raises(TypeError, "xp"):
        init_params(4, 2, xp=42)


def test_errors_report_shapes_like_the_design_example():
    # DESIGN.md: "k and v must have the same length M: k has shape (2, 7, 16), v has shape (2, 6, 16)"
    q = np.zeros((2, 5, 16))
    k = np.zeros((2, 7, 16))
    v = np.zeros((2, 6, 16))
    with pytest.raises(ValueError) as info:
        scaled_dot_product_attention(q, k, v)
    assert "k has shape (2, 7, 16)" in str(info.value) and "v has shape (2, 6, 16)" in str(info.value)
    assert numerics.scaled_dot_product_attention is scaled_dot_product_attention
    assert MHAParams is numerics.MHAParams


def test_mha_huge_logits_give_finite_output_and_gradients():
    # x of size 1e2 with unit-scale weights: per-head scores of order 1e4, far past exp's range.
    p = init_params(4, 2, bias=True, seed=2)
    x = RNG.standard_normal((2, 3, 4)) * 1e2
    out, w = multi_head_attention(x, p, causal=True, return_weights=True)
    scores = (x @ p.w_q)[..., :2] @ np.swapaxes((x @ p.w_k)[..., :2], -1, -2) / np.sqrt(2)
    assert np.max(np.abs(scores)) > 1e3
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(w))
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=0, atol=1e-14)
    g = multi_head_attention_backward(x, p, np.ones_like(out), causal=True)
    assert np.all(np.isfinite(g.x)) and all(np.all(np.isfinite(a)) for a in g.params.arrays().values())


# --------------------------------------------------------------------------- other namespaces

from tests.helpers import from_numpy  # noqa: E402


def test_checks_run_on_every_namespace(xp):
    """The same checks on torch, array_api_strict (and CuPy) arrays, not only NumPy."""
    q, k, v = (from_numpy(xp, a) for a in qkv())
    with raises(ValueError, "k", "v"):
        scaled_dot_product_attention(q, k, v[:, :4, :])
    with raises(ValueError, "q", "k"):
        scaled_dot_product_attention(q, k[..., :3], v)
    with raises(TypeError, "q", "floating"):
        scaled_dot_product_attention(xp.astype(q, xp.int32), k, v)
    with raises(TypeError, "q", "k", "float32"):
        scaled_dot_product_attention(q, xp.astype(k, xp.float32), v)
    with raises(TypeError, "mask", "boolean"):
        scaled_dot_product_attention(q, k, v, mask=xp.ones((3, 5)))
    with raises(ValueError, "mask", "(3, 4)"):
        scaled_dot_product_attention(q, k, v, mask=xp.ones((3, 4), dtype=xp.bool))
    bad = from_numpy(xp, np.where(np.arange(24).reshape(2, 3, 4) == 5, np.nan, 1.0))
    with raises(ValueError, "q", "check_finite"):
        scaled_dot_product_attention(bad, k, v)
    with raises(ValueError, "d_out"):
        attention_backward(q, k, v, xp.ones((2, 3, 5), dtype=xp.float64))
    p = init_params(8, 2, bias=True, xp=xp)
    x = from_numpy(xp, RNG.standard_normal((2, 3, 8)))
    with raises(ValueError, "x", "8"):
        multi_head_attention(x[..., :7], p)
    with raises(ValueError, "params.b_v"):
        multi_head_attention(x, dataclasses.replace(p, b_v=xp.zeros(7, dtype=xp.float64)))
    with raises(ValueError, "memory"):
        multi_head_attention(x, p, memory=from_numpy(xp, RNG.standard_normal((2, 4, 6))))


@pytest.mark.parametrize("other", ["array_api_strict", "torch"])
def test_mixed_namespaces_numpy_and_other(other):
    from tests.helpers import load_backend

    pytest.importorskip(other)
    xp = load_backend(other)
    q, k, v = qkv()
    with raises(TypeError, "q", "v", "numpy", other):
        scaled_dot_product_attention(q, k, from_numpy(xp, v))
    p = init_params(8, 2, xp=other)
    with raises(TypeError, "x", "params.w_q", "numpy", other):
        multi_head_attention(RNG.standard_normal((2, 3, 8)), p)
