"""The attention options of issue 9, forward and backward: bias, causal alignments, sliding
window, softcap, grouped-query heads, dropout with an explicit keep mask, logsumexp.

Three independent references:

* ``numerics.reference`` (mpmath; gradients by the complex step, no hand-written backward):
  float64 results must agree to relative error < 1e-12 on every namespace of the ``xp``
  fixture (numpy, array_api_strict, torch, cupy on a GPU);
* torch (where torch has the option): SDPA with ``enable_gqa`` and a float ``attn_mask``,
  and for the rest torch's autograd through the formula with explicit boolean masks built
  here with ``tril``/``triu`` (bottom-right alignment, windows), ``c tanh(s / c)`` and
  ``aten._scaled_dot_product_attention_math`` with a ``dropout_mask``;
* central finite differences in float64 (gradcheck's rule), d_bias included.

Each comparison is paired with a deliberately wrong variant (tiled instead of interleaved
GQA order, top-left instead of bottom-right alignment, softcap after the bias, no 1/(1 - p))
that the same comparison must reject.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from numerics import (
    AttentionGradients,
    attention_backward,
    dropout_keep_mask,
    reference,
    scaled_dot_product_attention,
)
from numerics._band import key_band
from tests.helpers import (
    OPTIONAL_BACKENDS, assert_gradcheck, force_split, from_numpy, numerical_gradient, relative_error, to_numpy,
)
from verify.validate.tolerance import ABS64, K_OUTPUT, floor

#: The package's bounds (verify.validate.tolerance): float64 against mpmath, and the float32 rule
#: err(ours) <= K32 err(torch float32) + FLOOR32.
TOL64, K32, FLOOR32 = ABS64, K_OUTPUT, floor("float32")


# --------------------------------------------------------------------------- cases


def _build(name):
    """Inputs of one named problem: dict(q, k, v, d_out, kwargs). Deterministic per name."""
    rng = np.random.default_rng([9, *map(ord, name)])
    kw = {}
    shapes = ((2, 3, 2), (2, 4, 2), (2, 4, 3))
    if name == "bias":  # (N, M) bias shared over the batch, one -inf entry
        b = rng.standard_normal((3, 4))
        b[1, 2] = -np.inf
        kw["bias"] = b
    elif name == "bias_batch_and_mask":  # (B, 1, M) key bias plus a boolean mask; a row with no key
        b = rng.standard_normal((2, 1, 4))
        m = rng.random((2, 3, 4)) < 0.7
        m[..., 0] = True
        m[1, 2, :] = False
        kw["bias"], kw["mask"] = b, m
    elif name == "bias_row_minus_inf":  # a whole row of bias at -inf: zero row
        b = rng.standard_normal((2, 3, 4))
        b[0, 1, :] = -np.inf
        kw["bias"] = b
    elif name == "bottom_right":  # N < M: query i sees keys j <= i + 2
        shapes = ((2, 3, 2), (2, 5, 2), (2, 5, 3))
        kw["causal"] = "bottom_right"
    elif name == "bottom_right_n_gt_m":  # N > M: rows 0 and 1 see no key at all
        shapes = ((1, 5, 2), (1, 3, 2), (1, 3, 2))
        kw["causal"] = "bottom_right"
    elif name == "window":  # non-causal band of width 1 each side (top-left, delta 0)
        shapes = ((2, 4, 2), (2, 5, 2), (2, 5, 2))
        kw["window"] = (1, 1)
    elif name == "window_causal_bottom_right":  # Mistral-style: causal with 2 keys of history
        shapes = ((1, 3, 2), (1, 6, 2), (1, 6, 3))
        kw["causal"], kw["window"] = "bottom_right", (2, None)
    elif name == "window_right_only":
        shapes = ((1, 4, 2), (1, 4, 2), (1, 4, 2))
        kw["window"] = (None, 1)
    elif name == "softcap":  # scale 3 and c = 1.5: the cap bites
        kw["softcap"], kw["scale"] = 1.5, 3.0
    elif name == "softcap_bias_causal":
        shapes = ((2, 4, 2), (2, 4, 2), (2, 4, 2))
        kw["softcap"], kw["bias"], kw["causal"] = 2.0, rng.standard_normal((1, 4, 4)), True
    elif name == "gqa":  # Hq = 4, Hkv = 2: heads 0, 1 use kv head 0; 2, 3 use kv head 1
        shapes = ((2, 4, 3, 2), (2, 2, 4, 2), (2, 2, 4, 3))
        kw["enable_gqa"] = True
    elif name == "gqa_mqa_mask_per_head":  # Hkv = 1, a mask per query head, a bias per batch
        shapes = ((1, 3, 2, 2), (1, 1, 4, 2), (1, 1, 4, 2))
        m = rng.random((3, 2, 4)) < 0.6
        m[..., 1] = True
        kw["enable_gqa"], kw["mask"], kw["bias"] = True, m, rng.standard_normal((1, 1, 2, 4))
    elif name == "dropout":
        keep = rng.random((2, 3, 4)) < 0.7
        keep[1, 0, :] = False  # every key of a row dropped: output row 0, lse unaffected
        kw["dropout_p"], kw["dropout_mask"] = 0.3, keep
    elif name == "everything":
        shapes = ((1, 4, 3, 2), (1, 2, 5, 2), (1, 2, 5, 2))
        b = rng.standard_normal((4, 3, 5))
        b[2, 1, :] = -np.inf
        kw.update(bias=b, causal="bottom_right", window=(2, None), softcap=1.5, enable_gqa=True,
                  dropout_p=0.25, dropout_mask=rng.random((4, 3, 5)) < 0.75, scale=0.8)
    else:
        raise KeyError(name)
    q, k, v = (rng.standard_normal(s) for s in shapes)
    out_shape = scaled_dot_product_attention(q, k, v, **kw).shape
    d_out = rng.standard_normal(out_shape)
    return dict(q=q, k=k, v=v, d_out=d_out, kwargs=kw)


CASES = [
    "bias", "bias_batch_and_mask", "bias_row_minus_inf", "bottom_right", "bottom_right_n_gt_m", "window",
    "window_causal_bottom_right", "window_right_only", "softcap", "softcap_bias_causal", "gqa",
    "gqa_mqa_mask_per_head", "dropout", "everything",
]


def _lse_kwargs(kw):
    return {a: b for a, b in kw.items() if a not in ("dropout_p", "dropout_mask")}


@functools.lru_cache(maxsize=None)
def case(name):
    """Inputs plus the mpmath reference output, weights, lse and gradients (once per session)."""
    c = _build(name)
    q, k, v, kw = c["q"], c["k"], c["v"], c["kwargs"]
    c["ref_out"] = reference.to_float64(reference.attention(q, k, v, **kw))
    # Weights: attention with v = identity(M) returns the weight matrix (after dropout).
    eye = np.ascontiguousarray(np.broadcast_to(np.eye(k.shape[-2]), k.shape[:-1] + (k.shape[-2],)))
    c["ref_weights"] = reference.to_float64(reference.attention(q, k, eye, **kw))
    c["ref_lse"] = reference.to_float64(reference.logsumexp(q, k, **_lse_kwargs(kw)))
    c["ref_grads"] = reference.attention_gradients(q, k, v, c["d_out"], **kw)
    return c


def _on(xp, c):
    """The case's arrays and array-valued keywords moved to namespace xp."""
    kw = {a: (from_numpy(xp, b) if isinstance(b, np.ndarray) else b) for a, b in c["kwargs"].items()}
    return [from_numpy(xp, c[n]) for n in ("q", "k", "v", "d_out")], kw


# --------------------------------------------------------------------------- float64 vs mpmath


@pytest.mark.parametrize("name", CASES)
def test_options_match_mpmath_reference(xp, name):
    c = case(name)
    (q, k, v, d_out), kw = _on(xp, c)
    out, weights, lse = scaled_dot_product_attention(q, k, v, return_weights=True, return_lse=True, **kw)
    grads = attention_backward(q, k, v, d_out, **kw)
    assert isinstance(grads, AttentionGradients)
    for r in (out, weights, lse, *grads):
        assert type(r) is type(q) and r.dtype == xp.float64
    assert relative_error(to_numpy(out), c["ref_out"]) < TOL64
    assert relative_error(to_numpy(weights), c["ref_weights"]) < TOL64
    lse, ref_lse = to_numpy(lse), c["ref_lse"]
    assert lse.shape == ref_lse.shape == c["ref_out"].shape[:-1]
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(ref_lse))  # -inf exactly for empty rows
    finite = np.isfinite(ref_lse)
    assert np.all(np.isfinite(lse[finite]))
    assert relative_error(lse[finite], ref_lse[finite]) < TOL64
    names = ("q", "k", "v", "bias")
    assert len(grads) == len(c["ref_grads"]) == (4 if "bias" in kw else 3)
    for field, g, ref_g in zip(names, grads, c["ref_grads"]):
        original = c[field] if field != "bias" else c["kwargs"]["bias"]
        assert tuple(g.shape) == original.shape == ref_g.shape
        assert getattr(grads, field) is g
        if np.any(ref_g != 0):
            assert relative_error(to_numpy(g), ref_g) < TOL64, field
        else:
            assert np.all(to_numpy(g) == 0), field
    if "bias" not in kw:
        assert grads.bias is None


def test_return_order_and_named_fields():
    c = case("bias")
    q, k, v, kw = c["q"], c["k"], c["v"], c["kwargs"]
    out = scaled_dot_product_attention(q, k, v, **kw)
    assert isinstance(out, np.ndarray)
    o1, w = scaled_dot_product_attention(q, k, v, return_weights=True, **kw)
    o2, lse = scaled_dot_product_attention(q, k, v, return_lse=True, **kw)
    o3, w3, lse3 = scaled_dot_product_attention(q, k, v, return_weights=True, return_lse=True, **kw)
    assert w.shape == (2, 3, 4) and lse.shape == (2, 3)
    for o in (o1, o2, o3):
        np.testing.assert_array_equal(o, out)
    np.testing.assert_array_equal(w, w3)
    np.testing.assert_array_equal(lse, lse3)
    dq, dk, dv, db = attention_backward(q, k, v, c["d_out"], **kw)
    g = attention_backward(q, k, v, c["d_out"], **kw)
    assert g.q is g[0] and g.bias is g[3] and db.shape == kw["bias"].shape
    dq, dk, dv = attention_backward(q, k, v, c["d_out"])  # no bias: the former 3-tuple
    assert attention_backward(q, k, v, c["d_out"]).bias is None


# --------------------------------------------------------------------------- wrong variants are caught


def _tiled_gqa_reference(q, k, v, kw):
    """GQA in the *other* order (query head h uses kv head h % Hkv, np.tile): a wrong answer."""
    g = q.shape[-3] // k.shape[-3]
    k_t, v_t = np.tile(k, (1, g, 1, 1)), np.tile(v, (1, g, 1, 1))
    kw = {a: b for a, b in kw.items() if a != "enable_gqa"}
    return reference.to_float64(reference.attention(q, k_t, v_t, **kw))


@pytest.mark.parametrize(
    "name, wrong",
    [
        ("gqa", "tiled order"),
        ("bottom_right", "top_left"),
        ("window_causal_bottom_right", "window top_left"),
        ("softcap_bias_causal", "softcap after bias"),
        ("dropout", "no 1/(1-p)"),
        ("bias", "bias ignored"),
        ("window", "window ignored"),
    ],
)
def test_reference_comparison_rejects_wrong_conventions(name, wrong):
    c = case(name)
    q, k, v, kw = c["q"], c["k"], c["v"], dict(c["kwargs"])
    if wrong == "tiled order":
        ours = scaled_dot_product_attention(q, k, v, **kw)
        assert relative_error(_tiled_gqa_reference(q, k, v, kw), c["ref_out"]) > 1e-3
        assert relative_error(ours, c["ref_out"]) < TOL64
        return
    if wrong in ("top_left", "window top_left"):
        kw["causal"] = "top_left"
    elif wrong == "softcap after bias":
        # c tanh((s + b) / c): the bias inside the cap
        c_ = kw.pop("softcap")
        s = np.einsum("bnk,bmk->bnm", q, k) / math.sqrt(q.shape[-1]) + kw.pop("bias")
        kw["bias"] = c_ * np.tanh(s / c_) - np.einsum("bnk,bmk->bnm", q, k) / math.sqrt(q.shape[-1])
    elif wrong == "no 1/(1-p)":
        kw["dropout_p"] = 0.0
    elif wrong == "bias ignored":
        kw.pop("bias")
    elif wrong == "window ignored":
        kw.pop("window")
    out = scaled_dot_product_attention(q, k, v, **kw)
    assert relative_error(out, c["ref_out"]) > 1e-3
    grads = attention_backward(q, k, v, c["d_out"], **kw)
    assert max(relative_error(g, r) for g, r in zip(grads[:3], c["ref_grads"][:3])) > 1e-3


def test_window_takes_the_causal_alignment():
    """delta = M - N under bottom-right alignment, 0 otherwise: the same window gives different
    answers for N != M, and equal ones for N = M."""
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((3, 2)), rng.standard_normal((6, 2)), rng.standard_normal((6, 2))
    a = scaled_dot_product_attention(q, k, v, causal="top_left", window=(1, None))
    b = scaled_dot_product_attention(q, k, v, causal="bottom_right", window=(1, None))
    assert np.max(np.abs(a - b)) > 1e-3
    q = rng.standard_normal((6, 2))
    a = scaled_dot_product_attention(q, k, v, causal="top_left", window=(1, None))
    b = scaled_dot_product_attention(q, k, v, causal="bottom_right", window=(1, None))
    np.testing.assert_array_equal(a, b)
    # causal=True is top-left, as before.
    np.testing.assert_array_equal(scaled_dot_product_attention(q, k, v, causal=True),
                                  scaled_dot_product_attention(q, k, v, causal="top_left"))


# --------------------------------------------------------------------------- finite differences


@pytest.mark.parametrize("name", ["bias", "bias_batch_and_mask", "softcap_bias_causal", "gqa_mqa_mask_per_head",
                                  "dropout", "everything"])
def test_backward_matches_finite_differences(name):
    c = case(name)
    kw = dict(c["kwargs"])
    bias = kw.pop("bias", None)
    finite_bias = None if bias is None else np.where(np.isneginf(bias), 0.0, bias)
    excluded = None if bias is None else np.isneginf(bias)

    def f(q, k, v, bias=None):
        b = None if bias is None else np.where(excluded, -np.inf, bias)
        return scaled_dot_product_attention(q, k, v, bias=b, **kw)

    inputs = {"q": c["q"], "k": c["k"], "v": c["v"], "bias": finite_bias}
    numeric = numerical_gradient(f, inputs, c["d_out"])
    analytic = attention_backward(c["q"], c["k"], c["v"], c["d_out"], bias=bias, **kw)
    for field, g in zip(("q", "k", "v", "bias"), analytic):
        assert_gradcheck(g, numeric[field], name=field)
    if bias is not None:
        assert np.all(analytic.bias[excluded] == 0)


def test_finite_differences_reject_a_backward_without_the_softcap_slope():
    c = case("softcap")
    kw = c["kwargs"]
    numeric = numerical_gradient(lambda q: scaled_dot_product_attention(q, c["k"], c["v"], **kw), {"q": c["q"]}, c["d_out"])
    wrong = attention_backward(c["q"], c["k"], c["v"], c["d_out"], scale=kw["scale"])  # dR = dZ: no 1 - tanh^2
    with pytest.raises(AssertionError):
        assert_gradcheck(wrong.q, numeric["q"], name="dq")
    assert_gradcheck(attention_backward(c["q"], c["k"], c["v"], c["d_out"], **kw).q, numeric["q"], name="dq")


def test_finite_differences_reject_a_wrong_bias_gradient():
    # d_bias must be dZ reduced to bias's shape; the un-normalised dP (dO V^T) is a classic slip.
    c = case("bias")
    kw = c["kwargs"]
    bias = kw["bias"]
    ex = np.isneginf(bias)
    numeric = numerical_gradient(
        lambda b: scaled_dot_product_attention(c["q"], c["k"], c["v"], bias=np.where(ex, -np.inf, b)),
        {"b": np.where(ex, 0.0, bias)}, c["d_out"])["b"]
    right = attention_backward(c["q"], c["k"], c["v"], c["d_out"], **kw).bias
    assert_gradcheck(right, numeric, name="d_bias")
    wrong = np.sum(c["d_out"] @ np.swapaxes(c["v"], -1, -2), axis=0)
    with pytest.raises(AssertionError):
        assert_gradcheck(wrong, numeric, name="d_bias")


# --------------------------------------------------------------------------- rows with no allowed key

EMPTY_ROWS = {  # N = 5 queries, M = 3 keys
    "bias -inf row": lambda n, m: dict(bias=np.where(np.arange(n)[:, None] == 1, -np.inf, np.ones((n, m)))),
    "bias -inf everywhere": lambda n, m: dict(bias=np.full((n, m), -np.inf)),
    "window beyond the keys": lambda n, m: dict(window=(0, 0)),  # rows 3, 4 (top-left)
    "window and mask exclude everything": lambda n, m: dict(window=(0, 0), mask=~np.eye(n, m, dtype=bool)),
    "bottom_right N > M": lambda n, m: dict(causal="bottom_right"),  # rows 0, 1
}


@pytest.mark.parametrize("rows, softcap, gqa, dropout", list(itertools.product(EMPTY_ROWS, [None, 0.7], [False, True], [False, True])))
def test_rows_with_no_allowed_key_give_zeros_and_zero_gradients(xp, rows, softcap, gqa, dropout):
    rng = np.random.default_rng(3)
    n, m = 5, 3
    hq, hkv = (4, 2) if gqa else (2, 2)
    q = rng.standard_normal((1, hq, n, 2))
    k, v = rng.standard_normal((1, hkv, m, 2)), rng.standard_normal((1, hkv, m, 3))
    kw = EMPTY_ROWS[rows](n, m)
    kw.update(softcap=softcap, enable_gqa=gqa)
    if dropout:
        kw.update(dropout_p=0.5, dropout_mask=rng.random((hq, n, m)) < 0.5)
    # Which rows are empty, from the definitions (not from numerics).
    allowed = np.ones((n, m), dtype=bool)
    i, j = np.arange(n)[:, None], np.arange(m)[None, :]
    if "bias" in kw:
        allowed &= ~np.isneginf(kw["bias"])
    if "mask" in kw:
        allowed &= kw["mask"]
    delta = m - n if kw.get("causal") == "bottom_right" else 0
    if kw.get("causal"):
        allowed &= j <= i + delta
    if kw.get("window"):
        left, right = kw["window"]
        if left is not None:
            allowed &= j - i - delta >= -left
        if right is not None:
            allowed &= j - i - delta <= right
    empty = ~allowed.any(-1)
    assert empty.any()
    d_out = rng.standard_normal((1, hq, n, 3))
    x = {a: (from_numpy(xp, b) if isinstance(b, np.ndarray) else b) for a, b in kw.items()}
    args = [from_numpy(xp, a) for a in (q, k, v)]
    out, w, lse = (to_numpy(r) for r in scaled_dot_product_attention(*args, return_weights=True, return_lse=True, **x))
    grads = [to_numpy(g) for g in attention_backward(*args, from_numpy(xp, d_out), **x)]
    for r in (out, w, *grads):
        assert np.all(np.isfinite(r))
    assert np.all(out[..., empty, :] == 0) and np.all(w[..., empty, :] == 0)
    assert np.all(np.isneginf(lse[..., empty])) and np.all(np.isfinite(lse[..., ~empty]))
    assert np.all(grads[0][..., empty, :] == 0)  # dq of an empty row
    if len(grads) == 4:
        assert np.all(grads[3][..., empty, :] == 0)  # d_bias of an empty row
    # The empty rows' upstream gradient reaches nothing.
    d_out2 = d_out.copy()
    d_out2[..., empty, :] = rng.standard_normal(d_out2[..., empty, :].shape)
    again = attention_backward(*args, from_numpy(xp, d_out2), **x)
    for g, g2 in zip(grads, again):
        np.testing.assert_array_equal(g, to_numpy(g2))


# --------------------------------------------------------------------------- torch


def _torch():
    return pytest.importorskip("torch", reason=f"torch is not installed ({OPTIONAL_BACKENDS['torch']})")


def explicit_allowed(n, m, causal, window):
    """Boolean (N, M) from tril/triu diagonals: j <= i + delta (causal); delta - left <= j - i <=
    delta + right (window); delta = M - N under bottom-right alignment."""
    delta = m - n if causal == "bottom_right" else 0
    ones = np.ones((n, m), dtype=bool)
    allowed = ones.copy()
    if causal:
        allowed &= np.tril(ones, delta)
    if window is not None:
        left, right = window
        if left is not None:
            allowed &= np.triu(ones, delta - left)
        if right is not None:
            allowed &= np.tril(ones, delta + right)
    return allowed


def torch_formula(q, k, v, d_out, *, dtype, mask=None, bias=None, causal=False, window=None, softcap=None,
                  scale=None, enable_gqa=False, dropout_p=0.0, dropout_mask=None):
    """torch autograd through the formula, in ``dtype``: (out, grads q, k, v[, bias], lse)."""
    torch = _torch()
    t = lambda a: None if a is None else torch.tensor(a, dtype=dtype, requires_grad=True)  # noqa: E731
    tq, tk, tv = t(q), t(k), t(v)
    tb = None if bias is None else torch.tensor(np.where(np.isneginf(bias), 0.0, bias), dtype=dtype, requires_grad=True)
    kk, vv = tk, tv
    if enable_gqa:
        g = q.shape[-3] // k.shape[-3]
        kk, vv = tk.repeat_interleave(g, dim=-3), tv.repeat_interleave(g, dim=-3)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = scale * tq @ kk.transpose(-1, -2)
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    allowed = torch.from_numpy(explicit_allowed(q.shape[-2], k.shape[-2], causal, window))
    if bias is not None:
        s = s + tb
        allowed = allowed & torch.from_numpy(~np.isneginf(bias))
    if mask is not None:
        allowed = allowed & torch.from_numpy(mask)
    s = s.masked_fill(~allowed, -math.inf)
    lse = torch.logsumexp(s, dim=-1)
    a = torch.ops.aten._safe_softmax(s, -1)
    if dropout_mask is not None:
        a = a.masked_fill(~torch.from_numpy(dropout_mask), 0.0) / (1 - dropout_p)
    out = a @ vv
    out.backward(torch.tensor(d_out, dtype=dtype))
    grads = [tq.grad, tk.grad, tv.grad] + ([] if tb is None else [tb.grad.masked_fill(torch.from_numpy(np.isneginf(bias)), 0.0)])
    f64 = lambda x: x.detach().double().numpy()  # noqa: E731
    return f64(out), [f64(x) for x in grads], f64(lse)


@functools.lru_cache(maxsize=None)
def torch_case(name):
    c = case(name)
    return torch_formula(c["q"], c["k"], c["v"], c["d_out"], dtype=_torch().float64, **c["kwargs"])


@pytest.mark.parametrize("name", CASES)
def test_options_match_torch_formula_with_explicit_masks(xp, name):
    c = case(name)
    t_out, t_grads, t_lse = torch_case(name)
    # The torch formula itself agrees with mpmath (so the two references agree with each other).
    assert relative_error(t_out, c["ref_out"]) < TOL64
    (q, k, v, d_out), kw = _on(xp, c)
    out, lse = scaled_dot_product_attention(q, k, v, return_lse=True, **kw)
    grads = attention_backward(q, k, v, d_out, **kw)
    assert relative_error(to_numpy(out), t_out) < TOL64
    fin = np.isfinite(t_lse)
    np.testing.assert_array_equal(np.isfinite(to_numpy(lse)), fin)
    assert relative_error(to_numpy(lse)[fin], t_lse[fin]) < TOL64
    for g, tg in zip(grads, t_grads):
        if np.any(tg != 0):
            assert relative_error(to_numpy(g), tg) < TOL64


def _torch_sdpa(q, k, v, d_out, attn_mask=None, **kw):
    torch = _torch()
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    tm = None if attn_mask is None else torch.tensor(attn_mask, requires_grad=attn_mask.dtype != np.bool_)
    out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm, **kw)
    out.backward(torch.tensor(d_out))
    grads = [tq.grad.numpy(), tk.grad.numpy(), tv.grad.numpy()]
    if tm is not None and tm.requires_grad:
        grads.append(tm.grad.numpy())
    return out.detach().numpy(), grads


def test_gqa_matches_torch_sdpa_enable_gqa_and_rejects_the_tiled_order(xp):
    _torch()
    rng = np.random.default_rng(5)
    q, k, v = rng.standard_normal((2, 6, 4, 3)), rng.standard_normal((2, 2, 5, 3)), rng.standard_normal((2, 2, 5, 4))
    bias = rng.standard_normal((6, 4, 5))  # float attn_mask, one per query head
    d_out = rng.standard_normal((2, 6, 4, 4))
    t_out, t_grads = _torch_sdpa(q, k, v, d_out, attn_mask=bias, enable_gqa=True)
    args = [from_numpy(xp, a) for a in (q, k, v)]
    out = scaled_dot_product_attention(*args, bias=from_numpy(xp, bias), enable_gqa=True)
    grads = attention_backward(*args, from_numpy(xp, d_out), bias=from_numpy(xp, bias), enable_gqa=True)
    assert relative_error(to_numpy(out), t_out) < TOL64
    for g, tg in zip(grads, t_grads):
        assert relative_error(to_numpy(g), tg) < TOL64
    # kv heads repeated in the tiled order (h % Hkv) instead: torch disagrees.
    tiled = scaled_dot_product_attention(q, np.tile(k, (1, 3, 1, 1)), np.tile(v, (1, 3, 1, 1)), bias=bias)
    assert relative_error(tiled, t_out) > 1e-3
    # Repeating each kv head for its G query heads (np.repeat: torch's order) agrees.
    interleaved = scaled_dot_product_attention(q, np.repeat(k, 3, axis=1), np.repeat(v, 3, axis=1), bias=bias)
    assert relative_error(interleaved, t_out) < TOL64


@pytest.mark.parametrize("causal, window", [("bottom_right", None), ("bottom_right", (1, None)), (False, (1, 2)),
                                            ("top_left", (2, None)), (False, (None, 0))])
def test_alignments_and_windows_match_torch_sdpa_with_explicit_boolean_masks(xp, causal, window):
    _torch()
    rng = np.random.default_rng(6)
    n, m = 4, 7
    q, k, v = rng.standard_normal((2, n, 3)), rng.standard_normal((2, m, 3)), rng.standard_normal((2, m, 2))
    d_out = rng.standard_normal((2, n, 2))
    allowed = explicit_allowed(n, m, causal, window)
    assert allowed.any(-1).all()  # torch's math path: every row has a key
    t_out, t_grads = _torch_sdpa(q, k, v, d_out, attn_mask=allowed)
    args = [from_numpy(xp, a) for a in (q, k, v)]
    out = scaled_dot_product_attention(*args, causal=causal, window=window)
    grads = attention_backward(*args, from_numpy(xp, d_out), causal=causal, window=window)
    assert relative_error(to_numpy(out), t_out) < TOL64
    for g, tg in zip(grads, t_grads):
        assert relative_error(to_numpy(g), tg) < TOL64


def test_bias_matches_torch_float_attn_mask_including_minus_inf():
    _torch()
    rng = np.random.default_rng(7)
    q, k, v = rng.standard_normal((2, 2, 3, 4)), rng.standard_normal((2, 2, 5, 4)), rng.standard_normal((2, 2, 5, 2))
    bias = rng.standard_normal((2, 1, 3, 5))
    bias[0, 0, 1, 3] = -np.inf
    d_out = rng.standard_normal((2, 2, 3, 2))
    t_out, t_grads = _torch_sdpa(q, k, v, d_out, attn_mask=np.where(np.isneginf(bias), -np.inf, bias))
    out = scaled_dot_product_attention(q, k, v, bias=bias)
    grads = attention_backward(q, k, v, d_out, bias=bias)
    assert relative_error(out, t_out) < TOL64
    for g, tg in zip(grads, t_grads):
        assert relative_error(g, np.where(np.isneginf(bias), 0.0, tg) if g.shape == bias.shape else tg) < TOL64
    assert grads.bias.shape == bias.shape


def test_dropout_matches_torch_math_kernel_with_a_dropout_mask():
    torch = _torch()
    rng = np.random.default_rng(8)
    q, k, v = rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 4, 2)), rng.standard_normal((2, 4, 3))
    d_out = rng.standard_normal((2, 3, 3))
    keep = dropout_keep_mask((2, 3, 4), 0.4, seed=11)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    t_out, t_attn = torch.ops.aten._scaled_dot_product_attention_math(tq, tk, tv, None, 0.4, False, torch.from_numpy(keep))
    t_out.backward(torch.tensor(d_out))
    out, w = scaled_dot_product_attention(q, k, v, dropout_p=0.4, dropout_mask=keep, return_weights=True)
    grads = attention_backward(q, k, v, d_out, dropout_p=0.4, dropout_mask=keep)
    assert relative_error(out, t_out.detach().numpy()) < TOL64
    for g, tg in zip(grads, (tq.grad, tk.grad, tv.grad)):
        assert relative_error(g, tg.numpy()) < TOL64
    # torch's math kernel returns the weights before dropout; ours are those that multiply v.
    np.testing.assert_allclose(w, np.where(keep, t_attn.detach().numpy(), 0) / 0.6, rtol=1e-14, atol=0)
    np.testing.assert_allclose(out, w @ v, rtol=1e-13, atol=1e-15)


def test_dropout_keep_mask_is_seeded_and_has_the_keep_rate(xp):
    a = to_numpy(dropout_keep_mask((64, 64), 0.25, seed=3, xp=xp))
    b = to_numpy(dropout_keep_mask((64, 64), 0.25, seed=3, xp=xp))
    c = to_numpy(dropout_keep_mask((64, 64), 0.25, seed=4, xp=xp))
    assert a.dtype == np.bool_ and np.array_equal(a, b) and not np.array_equal(a, c)
    # 4096 Bernoulli(0.75): the mean is within 6 standard deviations (sd ~ 0.0068).
    assert abs(a.mean() - 0.75) < 6 * math.sqrt(0.75 * 0.25 / a.size)
    assert np.all(to_numpy(dropout_keep_mask((3, 3), 0.0, seed=0, xp=xp)))


# --------------------------------------------------------------------------- float32: the 2x rule


@pytest.mark.parametrize("name", ["bias_batch_and_mask", "bottom_right", "window_causal_bottom_right", "softcap_bias_causal",
                                  "gqa", "dropout", "everything"])
def test_float32_within_2x_of_torch_float32(xp, name):
    torch = _torch()
    c = _build(name)
    kw = c["kwargs"]
    r = {a: np.asarray(c[a], np.float32).astype(np.float64) for a in ("q", "k", "v", "d_out")}
    kw64 = dict(kw)
    if "bias" in kw:
        kw64["bias"] = np.asarray(kw["bias"], np.float32).astype(np.float64)
    ref_out, ref_grads, ref_lse = torch_formula(r["q"], r["k"], r["v"], r["d_out"], dtype=torch.float64, **kw64)
    t_out, t_grads, t_lse = torch_formula(r["q"], r["k"], r["v"], r["d_out"], dtype=torch.float32, **kw64)
    on = lambda a: xp.astype(from_numpy(xp, a), xp.float32)  # noqa: E731
    x = {a: (on(b) if isinstance(b, np.ndarray) and b.dtype != np.bool_ else
             (from_numpy(xp, b) if isinstance(b, np.ndarray) else b)) for a, b in kw64.items()}
    out, lse = scaled_dot_product_attention(on(r["q"]), on(r["k"]), on(r["v"]), return_lse=True, **x)
    grads = attention_backward(on(r["q"]), on(r["k"]), on(r["v"]), on(r["d_out"]), **x)
    assert out.dtype == xp.float32 and all(g.dtype == xp.float32 for g in grads)
    fin = np.isfinite(ref_lse)
    pairs = [("out", out, t_out, ref_out), ("lse", to_numpy(lse)[fin], t_lse[fin], ref_lse[fin])]
    pairs += [(f"d{f}", g, tg, rg) for f, g, tg, rg in zip("qkvb", grads, t_grads, ref_grads)]
    for label, ours, theirs, ref in pairs:
        e_ours, e_torch = relative_error(to_numpy(ours), ref), relative_error(theirs, ref)
        assert e_ours <= K32 * e_torch + FLOOR32, f"{label}: ours {e_ours:.3g}, torch {e_torch:.3g}"


def test_float32_rule_rejects_a_float16_result():
    torch = _torch()
    c = _build("softcap_bias_causal")
    r = {a: np.asarray(c[a], np.float32).astype(np.float64) for a in ("q", "k", "v", "d_out")}
    kw = dict(c["kwargs"], bias=np.asarray(c["kwargs"]["bias"], np.float32).astype(np.float64))
    ref_out = torch_formula(r["q"], r["k"], r["v"], r["d_out"], dtype=torch.float64, **kw)[0]
    t_out = torch_formula(r["q"], r["k"], r["v"], r["d_out"], dtype=torch.float32, **kw)[0]
    out = scaled_dot_product_attention(*(np.float32(r[a]) for a in "qkv"), **dict(kw, bias=np.float32(kw["bias"])))
    coarse = out.astype(np.float16).astype(np.float64)
    assert relative_error(out, ref_out) <= K32 * relative_error(t_out, ref_out) + FLOOR32
    assert relative_error(coarse, ref_out) > K32 * relative_error(t_out, ref_out) + FLOOR32


# --------------------------------------------------------------------------- band and tiles


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 9), m=st.integers(0, 9),
    causal=st.sampled_from([None, "top_left", "bottom_right"]),
    left=st.one_of(st.none(), st.integers(0, 4)), right=st.one_of(st.none(), st.integers(0, 4)),
    use_window=st.booleans(), data=st.data(),
)
def test_band_tiles_agree_with_the_explicit_mask(n, m, causal, left, right, use_window, data):
    """The allowed set of any tile [i0, i1) x [j0, j1), and whether it is empty or full, is
    the explicit mask's (tril/triu) restricted to the tile."""
    window = (left, right) if use_window else None
    band = key_band(n, m, causal, window)
    full = explicit_allowed(n, m, causal, window)
    i0 = data.draw(st.integers(0, n))
    i1 = data.draw(st.integers(i0, n))
    j0 = data.draw(st.integers(0, m))
    j1 = data.draw(st.integers(j0, m))
    tile = full[i0:i1, j0:j1]
    got = band.mask(np, (i0, i1), (j0, j1))
    got = np.ones(tile.shape, dtype=bool) if got is None else got
    np.testing.assert_array_equal(got, tile)
    coverage = band.coverage((i0, i1), (j0, j1))
    if tile.size:
        assert coverage == ("all" if tile.all() else "none" if not tile.any() else "some")


def test_band_coverage_would_catch_a_wrong_alignment():
    band = key_band(3, 6, "bottom_right", None)
    wrong = key_band(3, 6, "top_left", None)
    full = explicit_allowed(3, 6, "bottom_right", None)
    assert np.array_equal(band.mask(np), full) and not np.array_equal(wrong.mask(np), full)
    assert band.coverage((0, 3), (4, 6)) == "some" and wrong.coverage((0, 3), (4, 6)) == "none"


def test_scores_of_tiles_assemble_the_whole_scores():
    """The score pipeline asked tile by tile (as a tiled path will) gives the untiled scores."""
    from numerics import attention as attn

    c = _build("everything")
    kw = dict(c["kwargs"])
    for key in ("enable_gqa", "dropout_p", "dropout_mask"):
        kw.pop(key)
    q = c["q"][:, :2]  # Hq = Hkv = 2
    p = attn._prepare(q, c["k"], c["v"], None, kw.pop("causal"), kw.pop("scale"), True, bias=kw["bias"][:2],
                      window=kw["window"], softcap=kw["softcap"])
    whole, factors = attn._scores(p)
    assert factors == ()
    n, m = q.shape[-2], c["k"].shape[-2]
    for rows in ((0, 2), (2, 3)):
        for cols in ((0, 1), (1, 4), (4, 5)):
            tile, _ = attn._scores(p, rows, cols)
            np.testing.assert_array_equal(tile, whole[..., rows[0]:rows[1], cols[0]:cols[1]])
    assert (n, m) == (3, 5)


# --------------------------------------------------------------------------- hypothesis


def plain_attention(q, k, v, *, bias, allowed, softcap, scale):
    """Definitions in float64 NumPy (no max shift needed for these small scores)."""
    s = scale * q @ np.swapaxes(k, -1, -2)
    if softcap is not None:
        s = softcap * np.tanh(s / softcap)
    s = s + bias
    e = np.where(allowed, np.exp(np.where(allowed, s, 0.0)), 0.0)
    total = e.sum(-1, keepdims=True)
    w = np.where(total > 0, e / np.where(total > 0, total, 1), 0.0)
    with np.errstate(divide="ignore"):
        return w @ v, np.log(total[..., 0])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 5), m=st.integers(1, 6), groups=st.integers(1, 3), hkv=st.integers(1, 2),
    causal=st.sampled_from([False, True, "top_left", "bottom_right"]),
    window=st.one_of(st.none(), st.tuples(st.one_of(st.none(), st.integers(0, 3)), st.one_of(st.none(), st.integers(0, 3)))),
    softcap=st.one_of(st.none(), st.floats(0.2, 5.0)), scale=st.floats(0.1, 2.0), seed=st.integers(0, 2**16),
)
def test_any_combination_matches_the_definitions(n, m, groups, hkv, causal, window, softcap, scale, seed):
    rng = np.random.default_rng(seed)
    hq = hkv * groups
    q, k, v = rng.standard_normal((hq, n, 2)), rng.standard_normal((hkv, m, 2)), rng.standard_normal((hkv, m, 2))
    bias = rng.standard_normal((hq, n, m))
    bias[rng.random((hq, n, m)) < 0.1] = -np.inf
    alignment = "top_left" if causal is True else (causal or None)
    allowed = explicit_allowed(n, m, alignment, window) & ~np.isneginf(bias)
    idx = np.arange(hq) // groups
    ref_out, ref_lse = plain_attention(q, k[idx], v[idx], bias=np.where(np.isneginf(bias), 0, bias),
                                       allowed=allowed, softcap=softcap, scale=scale)
    out, lse = scaled_dot_product_attention(q, k, v, bias=bias, causal=causal, window=window, softcap=softcap,
                                            scale=scale, enable_gqa=True, return_lse=True)
    np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-13)
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(ref_lse))
    np.testing.assert_allclose(lse[np.isfinite(ref_lse)], ref_lse[np.isfinite(ref_lse)], rtol=1e-12, atol=1e-13)


# --------------------------------------------------------------------------- split over cores, extremes


@pytest.mark.parametrize("name", ["bias_batch_and_mask", "gqa", "everything", "dropout"])
def test_split_over_cores_matches_mpmath_reference(monkeypatch, name):
    calls = force_split(monkeypatch, 2)
    c = case(name)
    out = scaled_dot_product_attention(c["q"], c["k"], c["v"], **c["kwargs"])
    grads = attention_backward(c["q"], c["k"], c["v"], c["d_out"], **c["kwargs"])
    assert len(calls) == 2
    assert relative_error(out, c["ref_out"]) < TOL64
    for g, r in zip(grads, c["ref_grads"]):
        assert relative_error(g, r) < TOL64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_scores_with_bias_and_softcap_stay_finite_and_exact(dtype):
    """Scores far beyond the dtype's range (q, k ~ 1e200 in float64 and 1e25 in float32):
    with a bias, the winner is still decided by the scores; with a softcap, the capped
    scores are +-c or 0 exactly, so the weights are softmax(capped + bias)."""
    big = 1e200 if dtype == np.float64 else 1e25
    q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype) * dtype(big)
    k = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype) * dtype(big)
    v = np.eye(3, dtype=dtype)
    bias = np.array([[0.0, 5.0, -np.inf], [1.0, 0.0, 0.0]], dtype)
    out = scaled_dot_product_attention(q, k, v, bias=bias)
    np.testing.assert_array_equal(out, np.array([[1, 0, 0], [0, 0, 1]], dtype))
    # The lse is beyond the range: an error naming it, or inf with check_finite=False.
    with pytest.raises(ValueError, match="lse"):
        scaled_dot_product_attention(q, k, v, bias=bias, return_lse=True)
    _, lse = scaled_dot_product_attention(q, k, v, bias=bias, return_lse=True, check_finite=False)
    np.testing.assert_array_equal(lse, [np.inf, np.inf])
    c = 2.0
    out, lse = scaled_dot_product_attention(q, k, v, bias=bias, softcap=c, return_lse=True)
    z = np.array([[c, -c + 5.0, -np.inf], [1.0, 0.0, c]])
    e = np.exp(z - z.max(-1, keepdims=True))
    np.testing.assert_allclose(out, e / e.sum(-1, keepdims=True), rtol=4 * np.finfo(dtype).eps)
    np.testing.assert_allclose(lse, np.log(np.exp(z).sum(-1)), rtol=4 * np.finfo(dtype).eps)
    d_out = np.array([[0.3, -1.0, 2.0], [1.5, -0.5, 0.25]], dtype)
    g = attention_backward(q, k, v, d_out, bias=bias, softcap=c)
    assert all(np.all(np.isfinite(x)) for x in g)
    # Saturated tanh (or excluded keys) everywhere in row 0 and column 2: dR = dZ (1 - tanh^2) = 0 there.
    assert np.all(g.q[0] == 0) and np.all(g.k[2] == 0)
    # Row 1: keys 0 and 1 have score 0 (slope 1), key 2 is saturated (slope 0):
    # dq_1 = scale (dR_10 k_0 + dR_11 k_1) = scale big (dR_10 - dR_11) e_0.
    a = e[1] / e[1].sum()
    d_z = a * (d_out[1].astype(np.float64) - np.sum(a * d_out[1]))
    expected = np.array([(d_z[0] - d_z[1]) * big / math.sqrt(2), 0.0])
    np.testing.assert_allclose(g.q[1], expected, rtol=8 * np.finfo(dtype).eps)


def test_bias_near_the_top_of_the_range_does_not_overflow():
    """A bias near the largest float64: scores plus bias would overflow; they are taken / 8.
    The scores are then below the bias's rounding (top + s rounds to top, in any float
    arithmetic), so row 0 ties keys 0 and 1; nothing is inf or NaN."""
    top = np.finfo(np.float64).max
    rng = np.random.default_rng(2)
    q, k, v = rng.standard_normal((2, 3)), rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    bias = np.array([[top, top, 0.0, -top], [0.5 * top, -0.5 * top, 0.0, 0.0]])
    out, w, lse = scaled_dot_product_attention(q, k, v, bias=bias, return_weights=True, return_lse=True)
    np.testing.assert_array_equal(w, [[0.5, 0.5, 0, 0], [1, 0, 0, 0]])
    np.testing.assert_allclose(out, w @ v, rtol=1e-15)
    assert lse[0] == top and lse[1] == 0.5 * top
    g = attention_backward(q, k, v, np.ones((2, 2)), bias=bias)
    assert all(np.all(np.isfinite(x)) for x in g)


# --------------------------------------------------------------------------- errors


def _qkv(hq=4, hkv=2):
    rng = np.random.default_rng(0)
    return rng.standard_normal((1, hq, 3, 2)), rng.standard_normal((1, hkv, 5, 2)), rng.standard_normal((1, hkv, 5, 2))


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        (dict(window=(-1, 2)), ValueError, ["window's left side", ">= 0", "-1"]),
        (dict(window=(None, -3)), ValueError, ["window's right side", "-3"]),
        (dict(window=3), TypeError, ["window", "pair"]),
        (dict(window=(1.5, None)), TypeError, ["window's left side", "float"]),
        (dict(softcap=0.0), ValueError, ["softcap", "> 0"]),
        (dict(softcap=-1.0), ValueError, ["softcap", "-1.0"]),
        (dict(softcap=math.inf), ValueError, ["softcap"]),
        (dict(softcap="2"), TypeError, ["softcap", "str"]),
        (dict(dropout_p=1.0), ValueError, ["dropout_p", "[0, 1)", "1.0"]),
        (dict(dropout_p=-0.1), ValueError, ["dropout_p", "-0.1"]),
        (dict(dropout_p=math.nan), ValueError, ["dropout_p"]),
        (dict(dropout_p=0.5), ValueError, ["dropout_p", "dropout_mask"]),
        (dict(dropout_p=0.5, dropout_mask=np.ones((3, 4), dtype=bool)), ValueError, ["dropout_mask", "(3, 4)"]),
        (dict(dropout_p=0.5, dropout_mask=np.ones((3, 5))), TypeError, ["dropout_mask", "boolean", "float64"]),
        (dict(bias=np.zeros((3, 4))), ValueError, ["bias", "(..., N, M)", "(3, 4)"]),
        (dict(bias=np.zeros((3, 5), dtype=np.float32)), TypeError, ["bias", "float64", "float32"]),
        (dict(bias=np.zeros((3, 5), dtype=np.int64)), TypeError, ["bias", "int64"]),
        (dict(bias=np.zeros((3, 5), dtype=bool)), TypeError, ["bias", "boolean", "mask="]),
        (dict(bias=np.full((3, 5), np.nan)), ValueError, ["bias", "NaN"]),
        (dict(bias=np.full((3, 5), np.inf)), ValueError, ["bias", "+Inf"]),
        (dict(causal="bottom-right"), ValueError, ["causal", "'bottom_right'", "'bottom-right'"]),
        (dict(enable_gqa=1), TypeError, ["enable_gqa", "bool"]),
    ],
)
def test_bad_options_name_the_argument(kwargs, exc, words, backward):
    q, k, v = _qkv(2, 2)
    q, k, v = q[0, 0], k[0, 0], v[0, 0]
    call = (lambda **kw: attention_backward(q, k, v, np.ones((3, 2)), **kw)) if backward else (
        lambda **kw: scaled_dot_product_attention(q, k, v, **kw))
    with pytest.raises(exc) as info:
        call(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_gqa_errors_name_the_heads():
    q, k, v = _qkv(3, 2)
    with pytest.raises(ValueError, match=r"multiple of the key/value heads Hkv.*Hq = 3.*Hkv = 2"):
        scaled_dot_product_attention(q, k, v, enable_gqa=True)
    q, k, v = _qkv(4, 2)
    with pytest.raises(ValueError, match=r"k and v must have the same number of heads"):
        scaled_dot_product_attention(q, k, v[:, :1], enable_gqa=True)
    with pytest.raises(ValueError, match=r"enable_gqa=True needs a head axis: k"):
        scaled_dot_product_attention(q, k[0, 0], v[0, 0], enable_gqa=True)
    with pytest.raises(ValueError, match=r"bias must broadcast to \(\.\.\., Hq, N, M\) with Hq = 4.*\(3, 3, 5\)"):
        scaled_dot_product_attention(q, k, v, bias=np.zeros((3, 3, 5)), enable_gqa=True)
    with pytest.raises(ValueError, match=r"d_out must have the output's shape \(\.\.\., Hq, N, V\) with Hq = 4.*\(1, 2, 3, 2\)"):
        attention_backward(q, k, v, np.ones((1, 2, 3, 2)), enable_gqa=True)
    # Without enable_gqa, 4 query heads and 2 kv heads do not broadcast.
    with pytest.raises(ValueError, match="must broadcast"):
        scaled_dot_product_attention(q, k, v)


def test_dropout_keep_mask_errors():
    with pytest.raises(ValueError, match="dropout_p"):
        dropout_keep_mask((2, 2), 1.0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        dropout_keep_mask((2, 2), 0.1, seed=-1)


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        (dict(window=(-1, 0)), ValueError, "window's left side must be >= 0"),
        (dict(softcap=0.0), ValueError, "softcap must be > 0"),
        (dict(dropout_p=0.5), ValueError, "dropout_p > 0 needs a dropout_mask"),
        (dict(dropout_p=1.0, dropout_mask=np.ones((3, 5), dtype=bool)), ValueError, r"dropout_p must be in \[0, 1\)"),
        (dict(causal="bottom"), ValueError, "causal must be"),
        (dict(bias=np.zeros((3, 4))), ValueError, r"bias must broadcast to \(\.\.\., N, M\)"),
        (dict(bias=np.full((3, 5), np.inf)), ValueError, "bias contains NaN or \\+Inf"),
    ],
)
def test_reference_rejects_the_same_bad_options(kwargs, exc, pattern):
    q, k, v = _qkv(2, 2)
    with pytest.raises(exc, match=pattern):
        reference.attention(q[0, 0], k[0, 0], v[0, 0], **kwargs)


def test_reference_gqa_errors_and_determinism():
    q, k, v = _qkv(3, 2)
    with pytest.raises(ValueError, match="enable_gqa needs Hq a multiple of Hkv"):
        reference.attention(q, k, v, enable_gqa=True)
    c = _build("dropout")
    a = reference.attention(c["q"], c["k"], c["v"], **c["kwargs"])
    b = reference.attention(c["q"], c["k"], c["v"], **c["kwargs"])
    np.testing.assert_array_equal(reference.to_float64(a), reference.to_float64(b))


def test_causal_mask_alignments():
    from numerics import causal_mask

    np.testing.assert_array_equal(causal_mask(np, 3, 5), np.tril(np.ones((3, 5), dtype=bool)))
    np.testing.assert_array_equal(causal_mask(np, 3, 5, alignment="bottom_right"), np.tril(np.ones((3, 5), dtype=bool), 2))
    np.testing.assert_array_equal(causal_mask(np, 5, 3, alignment="bottom_right"), np.tril(np.ones((5, 3), dtype=bool), -2))
    assert causal_mask(np, 1, 1).tolist() == [[True]] and causal_mask(np, 0, 2).shape == (0, 2)
    with pytest.raises(ValueError, match="alignment must be 'top_left' or 'bottom_right'"):
        causal_mask(np, 2, 2, alignment="bottom")


@pytest.mark.parametrize("dtype_name, u", [("float16", 2.0**-11), ("bfloat16", 2.0**-8)])
def test_half_precision_options_keep_the_dtype_within_two_roundings(dtype_name, u):
    """Half inputs (bias included) are computed in float32 and rounded once: each result is
    within 2u (normwise) of the exact result on the half-rounded inputs."""
    torch = _torch()
    c = _build("everything")
    dtype = getattr(torch, dtype_name)
    half = {a: torch.from_numpy(c[a]).to(dtype) for a in ("q", "k", "v", "d_out")}
    kw = dict(c["kwargs"])
    bias = np.where(np.isneginf(kw["bias"]), -np.inf, kw["bias"])
    half_bias = torch.from_numpy(bias).to(dtype)
    exact = {a: t.double().numpy() for a, t in half.items()}
    kw64 = dict(kw, bias=half_bias.double().numpy())
    ref_out = reference.to_float64(reference.attention(exact["q"], exact["k"], exact["v"], **kw64))
    ref_grads = reference.attention_gradients(exact["q"], exact["k"], exact["v"], exact["d_out"], **kw64)
    kwt = dict(kw, bias=half_bias, dropout_mask=torch.from_numpy(kw["dropout_mask"]))
    out = scaled_dot_product_attention(half["q"], half["k"], half["v"], **kwt)
    grads = attention_backward(half["q"], half["k"], half["v"], half["d_out"], **kwt)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert relative_error(out.double().numpy(), ref_out) <= 2 * u
    for g, r in zip(grads, ref_grads):
        assert relative_error(g.double().numpy(), r) <= 2 * u


def test_grouped_heads_are_views_not_copies():
    """enable_gqa folds q into (..., Hkv, G, N, K) groups: K and V are views of the caller's
    arrays (never repeated G times), q a reshape of its own memory."""
    from numerics import attention as attn

    q, k, v = _qkv(4, 2)
    groups, fq, fk, fv, _ = attn._fold_groups(np, q, k, v, True)
    assert (groups.hq, groups.hkv, groups.size) == (4, 2, 2)
    assert fq.shape == (1, 2, 2, 3, 2) and fk.shape == (1, 2, 1, 5, 2)
    assert np.shares_memory(fk, k) and np.shares_memory(fv, v) and np.shares_memory(fq, q)
    assert fk.size == k.size  # not Hq / Hkv times larger
