"""Scaled dot-product attention and softmax: forward and backward against references.

Two independent references:

* ``numerics.reference`` (mpmath, >= 50 digits; gradients by the complex step at 100 digits,
  no hand-written backward): float64 results must agree to relative error < 1e-12, on every
  array namespace of the ``xp`` fixture (numpy, array_api_strict, torch, cupy on a GPU);
* central finite differences in float64 (gradcheck's rule: eps 1e-6, atol 1e-5, rtol 1e-3).

Relative error is normwise: ``max|ours - ref| / max|ref|`` over the whole array. Each check
is paired with a deliberately wrong input (wrong scale, missing mask, wrong gradient) that the
same comparison must reject, so a comparison that cannot fail would show up here.
"""

from __future__ import annotations

import functools
import math

import array_api_compat
import numpy as np
import pytest

from numerics import attention_backward, causal_mask, reference, scaled_dot_product_attention, softmax
from tests.helpers import assert_gradcheck, force_split, from_numpy, numerical_gradient, relative_error, to_numpy

#: float64 results must agree with the mpmath reference to this relative error (the package's bound).
from verify.validate.tolerance import ABS64 as TOL64


def _mask(rng, shape, p_keep=0.7):
    return rng.random(shape) < p_keep


def _build_case(name):
    """Inputs of one named problem: dict(q, k, v, d_out, kwargs). Deterministic per name."""
    rng = np.random.default_rng([7, *map(ord, name)])
    kw = {}
    if name == "self":  # N = M, K = V
        shapes = ((2, 4, 3), (2, 4, 3), (2, 4, 3))
    elif name == "cross_dk_ne_dv":  # M != N, K != V
        shapes = ((2, 3, 4), (2, 5, 4), (2, 5, 6))
    elif name == "causal":
        shapes = ((2, 4, 3), (2, 4, 3), (2, 4, 2))
        kw["causal"] = True
    elif name == "causal_rect":  # N != M: top-left aligned, j <= i
        shapes = ((1, 3, 2), (1, 5, 2), (1, 5, 3))
        kw["causal"] = True
    elif name == "padding":  # (B, 1, M) key padding: batch 1 has its last 2 keys padded
        shapes = ((2, 3, 4), (2, 5, 4), (2, 5, 3))
        pad = np.ones((2, 1, 5), dtype=bool)
        pad[1, 0, 3:] = False
        kw["mask"] = pad
    elif name == "mask_full_row":  # random mask, one query row with nothing allowed
        shapes = ((2, 4, 3), (2, 5, 3), (2, 5, 2))
        m = _mask(rng, (2, 4, 5))
        m[..., 0] = True
        m[1, 2, :] = False
        kw["mask"] = m
    elif name == "mask_and_causal":  # AND of both; row 0 of batch 0 has its only key masked
        shapes = ((2, 4, 3), (2, 4, 3), (2, 4, 3))
        m = np.ones((2, 4, 4), dtype=bool)
        m[0, 0, 0] = False
        m[1, 3, 1:] = False
        kw["mask"], kw["causal"] = m, True
    elif name == "scale":
        shapes = ((2, 3, 4), (2, 4, 4), (2, 4, 2))
        kw["scale"] = 0.37
    elif name == "broadcast_batch":  # q (2, 1, N, K) against k, v (3, M, K): batch (2, 3)
        shapes = ((2, 1, 3, 2), (3, 4, 2), (3, 4, 3))
        kw["mask"] = _mask(rng, (1, 3, 3, 4)) | np.eye(3, 4, dtype=bool)
    elif name == "heads4d":  # (B, H, N, K) with a (B, 1, 1, M) padding mask
        shapes = ((2, 2, 3, 2), (2, 2, 3, 2), (2, 2, 3, 2))
        pad = np.ones((2, 1, 1, 3), dtype=bool)
        pad[0, ..., 2] = False
        kw["mask"] = pad
    elif name == "batch5":  # batch of 5 (uneven slabs when split), mask AND causal, a full row
        shapes = ((5, 3, 2), (5, 4, 2), (5, 4, 3))
        m = _mask(rng, (5, 3, 4))
        m[..., 0] = True
        m[3, 1, :] = False
        kw["mask"], kw["causal"] = m, True
    elif name == "large_logits":  # scores up to ~1e3: exp overflows without the max shift
        shapes = ((1, 3, 2), (1, 4, 2), (1, 4, 2))
        kw["scale"] = 300.0  # not in CASES: see test_saturated_softmax_is_accurate_to_its_conditioning
    else:
        raise KeyError(name)
    q, k, v = (rng.standard_normal(s) for s in shapes)
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    d_out = rng.standard_normal(batch + (q.shape[-2], v.shape[-1]))
    return dict(q=q, k=k, v=v, d_out=d_out, kwargs=kw)


CASES = [
    "self",
    "cross_dk_ne_dv",
    "causal",
    "causal_rect",
    "padding",
    "mask_full_row",
    "mask_and_causal",
    "scale",
    "broadcast_batch",
    "heads4d",
    "batch5",
]


@functools.lru_cache(maxsize=None)
def case(name):
    """Inputs plus the mpmath reference output and gradients (computed once per session)."""
    c = _build_case(name)
    kw = c["kwargs"]
    c["ref_out"] = reference.to_float64(reference.attention(c["q"], c["k"], c["v"], **kw))
    c["ref_grads"] = reference.attention_gradients(c["q"], c["k"], c["v"], c["d_out"], **kw)
    return c


def _on(xp, c):
    """The case's q, k, v, d_out and kwargs moved to namespace xp."""
    kw = dict(c["kwargs"])
    if "mask" in kw:
        kw["mask"] = from_numpy(xp, kw["mask"])
    return [from_numpy(xp, c[n]) for n in ("q", "k", "v", "d_out")], kw


# --------------------------------------------------------------------------- float64 vs mpmath


@pytest.mark.parametrize("name", CASES)
def test_forward_and_backward_match_mpmath_reference(xp, name):
    c = case(name)
    (q, k, v, d_out), kw = _on(xp, c)
    out, weights = scaled_dot_product_attention(q, k, v, return_weights=True, **kw)
    grads = attention_backward(q, k, v, d_out, **kw)

    # Results stay on the caller's namespace, type and dtype.
    for r in (out, weights, *grads):
        assert type(r) is type(q)
        assert array_api_compat.array_namespace(r) is array_api_compat.array_namespace(q)
        assert r.dtype == xp.float64
    assert tuple(out.shape) == c["ref_out"].shape

    assert relative_error(to_numpy(out), c["ref_out"]) < TOL64
    for g, ref_g, x in zip(grads, c["ref_grads"], (q, k, v)):
        assert tuple(g.shape) == tuple(x.shape) == ref_g.shape
        assert relative_error(to_numpy(g), ref_g) < TOL64

    # Weights: attention with v = identity(M) returns the weight matrix itself.
    eye = np.broadcast_to(np.eye(c["k"].shape[-2]), c["k"].shape[:-1] + (c["k"].shape[-2],))
    ref_w = reference.to_float64(reference.attention(c["q"], c["k"], np.ascontiguousarray(eye), **c["kwargs"]))
    assert relative_error(to_numpy(weights), ref_w) < TOL64


def test_saturated_softmax_is_accurate_to_its_conditioning():
    """Scores of magnitude ~1e3 (scale 300): the weights are one-hot up to e^-100s.

    The forward pass is well conditioned and meets 1e-12. The gradient is not: for a
    saturated row, dS_j = A_j (dP_j - delta) with delta = sum_l A_l dP_l ~= dP_j cancels, so
    dq and dk (~1e-4 here, some rows ~1e-137 exactly) carry an absolute error of a few
    u * scale * max|k| * max|dP| (u = 2**-53) from rounding delta, whatever the
    implementation order. That is the bound used, with factor 16; a wrong formula is off by
    the size of dq itself (1e-4), 1e8 times more.
    """
    c = _build_case("large_logits")
    q, k, v, d_out, kw = c["q"], c["k"], c["v"], c["d_out"], c["kwargs"]
    ref_out = reference.to_float64(reference.attention(q, k, v, **kw))
    out = scaled_dot_product_attention(q, k, v, **kw)
    assert np.all(np.isfinite(out))
    assert relative_error(out, ref_out) < TOL64
    ref_dq, ref_dk, ref_dv = reference.attention_gradients(q, k, v, d_out, **kw)
    dq, dk, dv = attention_backward(q, k, v, d_out, **kw)
    assert relative_error(dv, ref_dv) < TOL64
    u, scale = 2.0**-53, kw["scale"]
    d_p = np.max(np.abs(d_out @ np.swapaxes(v, -1, -2)))
    assert np.max(np.abs(dq - ref_dq)) <= 16 * u * scale * np.max(np.abs(k)) * d_p
    assert np.max(np.abs(dk - ref_dk)) <= 16 * u * scale * np.max(np.abs(q)) * d_p
    wrong_dq = attention_backward(q, k, v, d_out, scale=scale * 1.01)[0]
    assert np.max(np.abs(wrong_dq - ref_dq)) > 1e6 * 16 * u * scale * np.max(np.abs(k)) * d_p


def test_fully_masked_rows_are_exactly_zero_in_reference_and_ours():
    c = case("mask_full_row")
    out = scaled_dot_product_attention(c["q"], c["k"], c["v"], **c["kwargs"])
    dq, dk, dv = attention_backward(c["q"], c["k"], c["v"], c["d_out"], **c["kwargs"])
    assert np.all(out[1, 2] == 0) and np.all(c["ref_out"][1, 2] == 0)
    assert np.all(dq[1, 2] == 0) and np.all(c["ref_grads"][0][1, 2] == 0)
    # The row's upstream gradient reaches nothing: zeroing it changes no gradient.
    d_out = c["d_out"].copy()
    d_out[1, 2] = 0
    for g, g0 in zip((dq, dk, dv), attention_backward(c["q"], c["k"], c["v"], d_out, **c["kwargs"])):
        np.testing.assert_array_equal(g, g0)


@pytest.mark.parametrize(
    "name, wrong",
    [
        ("scale", dict(scale=None)),  # default 1/sqrt(K) instead of the case's 0.37
        ("cross_dk_ne_dv", dict(scale=1.0)),  # unscaled scores
        ("causal", dict(causal=False)),  # causal mask forgotten
        ("causal_rect", dict(causal=False, mask=np.tril(np.ones((3, 5), dtype=bool), 2))),  # bottom-right aligned
        ("padding", dict(mask=None)),  # padding ignored
        ("mask_full_row", dict(mask="inverted")),  # True/False convention swapped
    ],
)
def test_reference_comparison_detects_wrong_arguments(name, wrong):
    c = case(name)
    kw = dict(c["kwargs"])
    for key, value in wrong.items():
        if isinstance(value, str) and value == "inverted":
            value = ~kw[key]
        if value is None:
            kw.pop(key, None)
        else:
            kw[key] = value
    out = scaled_dot_product_attention(c["q"], c["k"], c["v"], **kw)
    grads = attention_backward(c["q"], c["k"], c["v"], c["d_out"], **kw)
    assert relative_error(out, c["ref_out"]) > 1e-3
    assert max(relative_error(g, r) for g, r in zip(grads, c["ref_grads"])) > 1e-3


def test_reference_comparison_detects_a_wrong_gradient_formula():
    # The classic slip dS = A * dP without subtracting rowsum(dO * O) (delta) gives a dq and dk
    # that are wrong by far more than 1e-12; the same comparison as above must reject it.
    c = case("cross_dk_ne_dv")
    q, k, v, d_out = c["q"], c["k"], c["v"], c["d_out"]
    scale = 1 / math.sqrt(q.shape[-1])
    _, a = scaled_dot_product_attention(q, k, v, return_weights=True)
    d_s = a * (d_out @ np.swapaxes(v, -1, -2))  # delta term missing
    wrong_dq = scale * d_s @ k
    assert relative_error(wrong_dq, c["ref_grads"][0]) > 1e-3
    right_dq = scale * (a * (d_out @ np.swapaxes(v, -1, -2) - np.sum(d_out * (a @ v), -1, keepdims=True))) @ k
    assert relative_error(right_dq, c["ref_grads"][0]) < TOL64


# --------------------------------------------------------------------------- finite differences


def _fd_check(c, kw):
    q, k, v, d_out = c["q"], c["k"], c["v"], c["d_out"]
    numeric = numerical_gradient(
        lambda q, k, v: scaled_dot_product_attention(q, k, v, **kw), {"q": q, "k": k, "v": v}, d_out, eps=1e-6
    )
    analytic = attention_backward(q, k, v, d_out, **kw)
    for (name, g), a in zip(numeric.items(), analytic):
        assert_gradcheck(a, g, atol=1e-5, rtol=1e-3, name=name)


@pytest.mark.parametrize("name", ["cross_dk_ne_dv", "causal_rect", "padding", "mask_full_row", "broadcast_batch", "scale"])
def test_backward_matches_central_finite_differences(name):
    c = case(name)
    _fd_check(c, c["kwargs"])


def test_finite_difference_check_detects_wrong_backward():
    # Backward with twice the forward's scale: the check must reject its dq and dk.
    c = case("scale")
    q, k, v, d_out = c["q"], c["k"], c["v"], c["d_out"]
    numeric = numerical_gradient(lambda q, k, v: scaled_dot_product_attention(q, k, v, scale=0.37), {"q": q, "k": k, "v": v}, d_out)
    dq, dk, dv = attention_backward(q, k, v, d_out, scale=0.74)
    with pytest.raises(AssertionError):
        assert_gradcheck(dq, numeric["q"], name="dq")
    with pytest.raises(AssertionError):
        assert_gradcheck(dk, numeric["k"], name="dk")
    # Backward without the causal mask of the forward.
    c = case("causal")
    q, k, v, d_out = c["q"], c["k"], c["v"], c["d_out"]
    numeric = numerical_gradient(lambda v: scaled_dot_product_attention(q, k, v, causal=True), {"v": v}, d_out)
    with pytest.raises(AssertionError):
        assert_gradcheck(attention_backward(q, k, v, d_out)[2], numeric["v"], name="dv")


# --------------------------------------------------------------------------- half precision

HALF = {
    # unit roundoff u = 2**-(p) for a p+1-bit significand: float16 11 bits, bfloat16 8 bits.
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
}


@functools.lru_cache(maxsize=None)
def _half_case(dtype_name):
    """'cross_dk_ne_dv' and 'mask_full_row' inputs rounded to the half type, with their references."""
    torch = pytest.importorskip("torch")  # rounding to bfloat16 needs torch
    out = {}
    for name in ("cross_dk_ne_dv", "mask_full_row"):
        c = _build_case(name)
        rounded = {
            n: torch.from_numpy(c[n]).to(getattr(torch, dtype_name)).to(torch.float64).numpy() for n in ("q", "k", "v", "d_out")
        }
        kw = c["kwargs"]
        rounded["ref_out"] = reference.to_float64(reference.attention(rounded["q"], rounded["k"], rounded["v"], **kw))
        rounded["ref_grads"] = reference.attention_gradients(rounded["q"], rounded["k"], rounded["v"], rounded["d_out"], **kw)
        rounded["kwargs"] = kw
        out[name] = rounded
    return out


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_half_precision_keeps_dtype_and_is_accurate_to_half_rounding(xp, dtype_name):
    """Half inputs are computed in float32 and rounded once at the end, so each result is the
    exact result (on the half-rounded inputs) within u*max|ref| (one rounding) plus float32
    error (~1e-6): the bound 2u leaves room for that and no more. A result computed in half
    throughout, or rounded to a coarser type, exceeds it."""
    if not hasattr(xp, dtype_name):
        pytest.skip(f"{xp.__name__} has no {dtype_name}")
    pytest.importorskip("torch")
    dtype, u = getattr(xp, dtype_name), HALF[dtype_name]
    for name, c in _half_case(dtype_name).items():
        (q, k, v, d_out), kw = _on(xp, c)
        q, k, v, d_out = (xp.astype(a, dtype) for a in (q, k, v, d_out))
        out = scaled_dot_product_attention(q, k, v, **kw)
        grads = attention_backward(q, k, v, d_out, **kw)
        for r in (out, *grads):
            assert r.dtype == dtype and type(r) is type(q)
        assert relative_error(to_numpy(xp.astype(out, xp.float32)), c["ref_out"]) <= 2 * u
        for g, ref_g in zip(grads, c["ref_grads"]):
            assert relative_error(to_numpy(xp.astype(g, xp.float32)), ref_g) <= 2 * u


def test_half_precision_bound_is_tight_enough_to_fail():
    # The float16 bound 2u rejects a result that was rounded to bfloat16 (u = 2**-8) instead.
    torch = pytest.importorskip("torch")
    c = _half_case("float16")["cross_dk_ne_dv"]
    q, k, v = (torch.from_numpy(c[n]).to(torch.float16) for n in "qkv")
    out = scaled_dot_product_attention(q, k, v).to(torch.float32).to(torch.bfloat16).to(torch.float64).numpy()
    assert relative_error(out, c["ref_out"]) > 2 * HALF["float16"]


def test_float32_is_accurate_to_float32_rounding(xp):
    # float32 inputs and results: error vs the exact result on the same (rounded) inputs is a
    # few float32 roundings, well under 1e-5; a float64 tolerance (1e-12) would be impossible.
    c = case("mask_full_row")
    (q, k, v, d_out), kw = _on(xp, c)
    q, k, v, d_out = (xp.astype(a, xp.float32) for a in (q, k, v, d_out))
    r = {n: to_numpy(a).astype(np.float64) for n, a in zip("qkvd", (q, k, v, d_out))}
    ref_out = reference.to_float64(reference.attention(r["q"], r["k"], r["v"], **c["kwargs"]))
    out = scaled_dot_product_attention(q, k, v, **kw)
    assert out.dtype == xp.float32
    err = relative_error(to_numpy(out), ref_out)
    assert 0 < err < 32 * 2.0**-24


# --------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_matches_reference(xp, axis):
    rng = np.random.default_rng(7)
    z = rng.standard_normal((3, 4, 5)) * 5
    mask = rng.random((3, 4, 5)) < 0.6
    mask[1, 2, :] = False  # a fully masked row (along the last axis)
    moved = lambda a: np.moveaxis(a, axis, -1)  # noqa: E731 - the reference works on the last axis
    ref = reference.to_float64(reference.softmax(moved(z), mask=moved(mask)))
    ours = softmax(from_numpy(xp, z), axis=axis, mask=from_numpy(xp, mask))
    assert type(ours) is type(from_numpy(xp, z)) and ours.dtype == xp.float64
    assert relative_error(moved(to_numpy(ours)), ref) < TOL64
    ref_plain = reference.to_float64(reference.softmax(moved(z)))
    assert relative_error(moved(to_numpy(softmax(from_numpy(xp, z), axis=axis))), ref_plain) < TOL64
    if axis == -1:
        assert np.all(to_numpy(ours)[1, 2] == 0)
    # wrong axis is detected by the same comparison
    other = 0 if axis != 0 else 1
    assert relative_error(moved(to_numpy(softmax(from_numpy(xp, z), axis=other))), ref_plain) > 1e-3


def test_softmax_half_precision(xp):
    if not hasattr(xp, "float16"):
        pytest.skip(f"{xp.__name__} has no float16")
    z = np.random.default_rng(8).standard_normal((4, 6)) * 3
    z16 = z.astype(np.float16)
    ref = reference.to_float64(reference.softmax(z16.astype(np.float64)))
    out = softmax(from_numpy(xp, z16))
    assert out.dtype == xp.float16
    assert relative_error(to_numpy(out).astype(np.float64), ref) <= 2 * HALF["float16"]


def test_softmax_of_huge_and_minus_inf_logits_on_every_backend(xp):
    z = np.array([[1e30, 1e30, 0.0, -np.inf], [-np.inf, -np.inf, -np.inf, -np.inf], [1e4, 1e4 - 1, 0.0, 5.0]])
    out = to_numpy(softmax(from_numpy(xp, z)))
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[0], [0.5, 0.5, 0.0, 0.0])
    np.testing.assert_array_equal(out[1], [0.0, 0.0, 0.0, 0.0])
    e = 1 / (1 + math.exp(-1))
    np.testing.assert_allclose(out[2], [e, 1 - e, 0.0, 0.0], rtol=1e-15, atol=0)


# --------------------------------------------------------------------------- other checks


def test_attention_rows_are_convex_combinations(xp):
    # (folded in from the former test_attention_smoke.py)
    rng = np.random.default_rng(0)
    q, k, v = (from_numpy(xp, rng.standard_normal(s)) for s in [(2, 5, 4), (2, 6, 4), (2, 6, 3)])
    out, w = scaled_dot_product_attention(q, k, v, return_weights=True)
    w = to_numpy(w)
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=0, atol=1e-14)
    np.testing.assert_allclose(to_numpy(out), w @ to_numpy(v), rtol=0, atol=1e-14)


def test_causal_mask_is_top_left_aligned(xp):
    m = to_numpy(causal_mask(xp, 3, 5))
    np.testing.assert_array_equal(m, np.arange(5)[None, :] <= np.arange(3)[:, None])
    assert m.dtype == np.bool_


def test_inputs_are_not_modified():
    # The implementation writes into its own temporaries on NumPy; never into the caller's arrays.
    c = case("mask_full_row")
    arrays = {n: c[n].copy() for n in ("q", "k", "v", "d_out")}
    mask = c["kwargs"]["mask"].copy()
    scaled_dot_product_attention(arrays["q"], arrays["k"], arrays["v"], mask=mask, return_weights=True)
    attention_backward(arrays["q"], arrays["k"], arrays["v"], arrays["d_out"], mask=mask)
    for n, a in arrays.items():
        np.testing.assert_array_equal(a, c[n])
    np.testing.assert_array_equal(mask, c["kwargs"]["mask"])


def test_check_finite_false_gives_the_same_result():
    c = case("padding")
    a = scaled_dot_product_attention(c["q"], c["k"], c["v"], **c["kwargs"])
    b = scaled_dot_product_attention(c["q"], c["k"], c["v"], check_finite=False, **c["kwargs"])
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- split over cores


@pytest.mark.parametrize(
    "workers, name",
    [(2, "self"), (2, "causal"), (2, "padding"), (2, "mask_full_row"), (2, "mask_and_causal"), (2, "heads4d"), (3, "batch5"), (4, "batch5")],
)
def test_split_over_cores_matches_mpmath_reference(monkeypatch, workers, name):
    calls = force_split(monkeypatch, workers)  # 3 or 4 slabs of a batch of 5: uneven slabs
    c = case(name)
    out, w = scaled_dot_product_attention(c["q"], c["k"], c["v"], return_weights=True, **c["kwargs"])
    grads = attention_backward(c["q"], c["k"], c["v"], c["d_out"], **c["kwargs"])
    assert len(calls) == 2  # both calls really took the split path
    assert relative_error(out, c["ref_out"]) < TOL64
    for g, r in zip(grads, c["ref_grads"]):
        assert relative_error(g, r) < TOL64
    eye = np.broadcast_to(np.eye(c["k"].shape[-2]), c["k"].shape[:-1] + (c["k"].shape[-2],))
    ref_w = reference.to_float64(reference.attention(c["q"], c["k"], np.ascontiguousarray(eye), **c["kwargs"]))
    assert relative_error(w, ref_w) < TOL64


def test_causal_mask_accepts_bare_modules_and_names():
    """CuPy's (and NumPy 1.x's) own arange has no device=: causal_mask goes through the
    library's array-API namespace. A bare module with CuPy's arange signature stands in."""
    import types

    bare = types.ModuleType("bare")
    bare.asarray = np.asarray
    bare.arange = lambda start, stop=None, step=1, dtype=None: np.arange(start, stop, step, dtype)
    expected = np.arange(4)[None, :] <= np.arange(2)[:, None]
    np.testing.assert_array_equal(causal_mask(bare, 2, 4), expected)
    np.testing.assert_array_equal(causal_mask("numpy", 2, 4), expected)
    np.testing.assert_array_equal(causal_mask(np, 2, 4, device="cpu"), expected)
    with pytest.raises(ValueError, match="n must be a non-negative integer"):
        causal_mask(np, -1, 4)
