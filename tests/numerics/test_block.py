"""The transformer block: forward and hand-written backward.

Evidence, in order of independence:

* ``numerics.reference.transformer_block`` (mpmath, 50 digits, written from the definitions)
  and ``reference.transformer_block_gradients`` (complex step at 100 digits, no
  hand-derived formula): float64 relative error < 1e-12. Forward on every namespace;
  gradients on NumPy only (each costs ~2 s), the other namespaces' float64 gradients are
  compared with NumPy's to 1e-12.
* float64 central finite differences with gradcheck's tolerances, for x and every parameter.
* ``torch.nn.TransformerEncoderLayer`` (dropout 0, GELU, batch_first, norm_first False/True,
  eval mode) with our weights copied in, gradients by autograd: float64 to 1e-12; in float32
  ``err(ours) <= 2 * err(torch) + FLOOR32``, both against torch's float64 on the same
  float32-rounded inputs (FlashAttention's rule), for the output and for all gradients
  together; each gradient array on its own with k = 4.

Gradient errors are max |ours - ref| / S with S the largest reference entry over *all*
gradient arrays of the case: ``attn.b_k``'s gradient is exactly 0 (softmax ignores a shift
common to all keys), so its own maximum is no scale.

Tests named ``*_detects_*`` show that the comparisons fail on a deliberately wrong input.
"""

from __future__ import annotations

import functools

import array_api_compat
import numpy as np
import pytest

import numerics
from numerics import reference
from numerics.block import (
    BlockGradients,
    BlockParams,
    init_block_params,
    transformer_block,
    transformer_block_backward,
)
from numerics.layers import FFNParams
from numerics.multihead import MHAParams
from tests.helpers import assert_gradcheck, from_numpy, numerical_gradient, relative_error, to_numpy
from verify.validate.tolerance import ABS64, K_GRADIENT, K_OUTPUT, floor

# The package's bounds (verify.validate.tolerance): float64 against mpmath; the float32 rule's
# floor (16 u relative to the largest reference entry, was u here; it matters only where torch
# happens to be nearly exact) and k for outputs and all gradients of a case together.
TOL64, FLOOR32, K32 = ABS64, floor("float32"), K_OUTPUT
# Deliberately looser than the package's K_GRADIENT = 2: each gradient array on its own, where a
# small array (a bias) can be 2-4x less accurate than torch's by chance (see
# test_float32_within_2x_of_torch_float32).
K32_GRAD = 2 * K_GRADIENT
HALF_UNIT = {"float16": 2.0**-11, "bfloat16": 2.0**-8}

B, N, D, H, F = 2, 3, 4, 2, 6
NORMS = ("post", "pre")
APPROXIMATIONS = ("none", "tanh")
MASKS = ("none", "causal", "padding", "causal_padding", "empty_row")


# ----------------------------------------------------------------------------- cases


def _mask_kwargs(kind: str) -> dict:
    """Keyword arguments (NumPy mask) for the small problem (B, N) = (2, 3)."""
    pad = np.ones((B, 1, N), dtype=bool)  # (B, 1, N): key padding, the same for every query
    pad[0, 0, 2] = False  # batch 0: last token is padding
    if kind == "none":
        return {}
    if kind == "causal":
        return {"causal": True}
    if kind == "padding":
        return {"mask": pad}
    if kind == "causal_padding":
        return {"mask": pad, "causal": True}
    if kind == "empty_row":  # (B, N, N) with one query that may attend to nothing
        m = np.broadcast_to(pad, (B, N, N)).copy()
        m[1, 1, :] = False
        return {"mask": m}
    raise KeyError(kind)


@functools.lru_cache(maxsize=None)
def problem(seed: int = 0, bias: bool = True):
    """x, params (NumPy float64, every parameter away from its trivial value), d_out."""
    rng = np.random.default_rng([7, seed])
    p = init_block_params(D, H, F, bias=bias, seed=seed, noise=0.3)
    x = rng.standard_normal((B, N, D))
    d_out = rng.standard_normal((B, N, D))
    return x, p, d_out


@functools.lru_cache(maxsize=None)
def ref_forward(norm: str, approximate: str, masks: str, seed: int = 0, bias: bool = True):
    x, p, _ = problem(seed, bias)
    y = reference.transformer_block(x, p, norm=norm, approximate=approximate, **_mask_kwargs(masks))
    return reference.to_float64(y)


# The cases with mpmath gradients (~2 s each): both norms, both GELUs, every mask kind,
# one without any bias.
GRAD_CASES = [
    ("post", "none", "empty_row", True),
    ("pre", "tanh", "causal", True),
    ("post", "tanh", "causal_padding", True),
    ("pre", "none", "padding", False),
]


@functools.lru_cache(maxsize=None)
def ref_gradients(norm: str, approximate: str, masks: str, bias: bool = True):
    x, p, d_out = problem(0, bias)
    return reference.transformer_block_gradients(x, p, d_out, norm=norm, approximate=approximate, **_mask_kwargs(masks))


def params_on(xp, p: BlockParams, dtype=None) -> BlockParams:
    put = lambda a: None if a is None else from_numpy(xp, a, dtype)  # noqa: E731
    return BlockParams(
        attn=MHAParams(num_heads=p.attn.num_heads, **{k: put(a) for k, a in p.attn.arrays().items()}),
        ffn=FFNParams(put(p.ffn.w1), put(p.ffn.b1), put(p.ffn.w2), put(p.ffn.b2)),
        ln1_gamma=put(p.ln1_gamma),
        ln1_beta=put(p.ln1_beta),
        ln2_gamma=put(p.ln2_gamma),
        ln2_beta=put(p.ln2_beta),
    )


def params_from_arrays(p: BlockParams, arrays: dict) -> BlockParams:
    """``p`` with the arrays named as in :meth:`BlockParams.arrays` replaced."""
    attn = {k[5:]: v for k, v in arrays.items() if k.startswith("attn.")}
    ffn = {k[4:]: v for k, v in arrays.items() if k.startswith("ffn.")}
    return BlockParams(
        attn=MHAParams(num_heads=p.attn.num_heads, **attn),
        ffn=FFNParams(ffn["w1"], ffn.get("b1"), ffn["w2"], ffn.get("b2")),
        **{k: arrays.get(k) for k in ("ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta")},
    )


def kwargs_on(xp, kw: dict) -> dict:
    return {k: from_numpy(xp, v) if k == "mask" else v for k, v in kw.items()}


def gradient_dict(g: BlockGradients) -> dict:
    """{"x": ..., "attn.w_q": ..., ...} as NumPy arrays, None fields left out."""
    return {n: to_numpy(a) for n, a in {"x": g.x, **g.params.arrays()}.items()}


def gradient_errors(ours: dict, ref: dict) -> dict:
    """max |ours - ref| / (largest reference entry over all arrays), per array."""
    assert ours.keys() == ref.keys(), (sorted(ours), sorted(ref))
    scale = max(float(np.max(np.abs(r))) for r in ref.values())
    assert scale > 0
    errors = {}
    for name, r in ref.items():
        assert ours[name].shape == r.shape, name
        errors[name] = float(np.max(np.abs(np.asarray(ours[name], np.float64) - r))) / scale
    return errors


# ============================================================================= vs mpmath


@pytest.mark.parametrize("masks", MASKS)
@pytest.mark.parametrize("approximate", APPROXIMATIONS)
@pytest.mark.parametrize("norm", NORMS)
def test_forward_matches_mpmath(xp, norm, approximate, masks):
    x, p, _ = problem()
    kw = _mask_kwargs(masks)
    y = transformer_block(from_numpy(xp, x), params_on(xp, p), norm=norm, approximate=approximate, **kwargs_on(xp, kw))
    assert type(y) is type(from_numpy(xp, x)) and y.dtype == xp.float64 and tuple(y.shape) == x.shape
    assert relative_error(to_numpy(y), ref_forward(norm, approximate, masks)) < TOL64


@pytest.mark.parametrize("norm, approximate, masks, bias", GRAD_CASES)
def test_backward_matches_mpmath(norm, approximate, masks, bias):
    x, p, d_out = problem(0, bias)
    g = transformer_block_backward(x, p, d_out, norm=norm, approximate=approximate, **_mask_kwargs(masks))
    assert isinstance(g, BlockGradients) and isinstance(g.params.attn, MHAParams) and isinstance(g.params.ffn, FFNParams)
    ref = ref_gradients(norm, approximate, masks, bias)
    errors = gradient_errors(gradient_dict(g), ref)
    assert max(errors.values()) < TOL64, errors
    # b_k: 0 in exact arithmetic (the complex step leaves ~1e-84), rounding noise in ours.
    scale = max(float(np.max(np.abs(r))) for r in ref.values())
    assert np.max(np.abs(ref["attn.b_k"])) <= 1e-30 * scale if bias else "attn.b_k" not in ref
    if not bias:
        for name in ("b_q", "b_k", "b_v", "b_o"):
            assert getattr(g.params.attn, name) is None
        assert g.params.ffn.b1 is None and g.params.ffn.b2 is None
        assert g.params.ln1_beta is None and g.params.ln2_beta is None


@pytest.mark.parametrize("norm, approximate, masks, bias", GRAD_CASES)
def test_backward_other_namespaces_match_numpy(xp, norm, approximate, masks, bias):
    x, p, d_out = problem(0, bias)
    kw = _mask_kwargs(masks)
    ref = gradient_dict(transformer_block_backward(x, p, d_out, norm=norm, approximate=approximate, **kw))
    g = transformer_block_backward(
        from_numpy(xp, x), params_on(xp, p), from_numpy(xp, d_out), norm=norm, approximate=approximate,
        **kwargs_on(xp, kw),
    )
    for a in (g.x, *g.params.arrays().values()):
        assert array_api_compat.array_namespace(a) is array_api_compat.array_namespace(from_numpy(xp, x))
        assert a.dtype == xp.float64
    errors = gradient_errors(gradient_dict(g), ref)
    assert max(errors.values()) < TOL64, errors


def test_empty_attention_row_is_finite_and_blocks_attention_gradients():
    # Batch 1, query 1 may attend to nothing: its attention output is b_o alone, so x[1, 1]
    # reaches the output only through the residual path and the layer norms.
    x, p, d_out = problem()
    kw = _mask_kwargs("empty_row")
    for norm in NORMS:
        y = transformer_block(x, p, norm=norm, **kw)
        assert np.all(np.isfinite(y))
        g = transformer_block_backward(x, p, d_out, norm=norm, **kw)
        assert all(np.all(np.isfinite(a)) for a in gradient_dict(g).values())
    # The row's attention sub-layer output equals b_o exactly: replacing x[1, 1]'s attention
    # by b_o by hand reproduces the block row (post-LN).
    t2 = x[1, 1] + p.attn.b_o
    t3 = numerics.layer_norm(t2, p.ln1_gamma, p.ln1_beta)
    expected = numerics.layer_norm(t3 + numerics.feed_forward(t3, p.ffn), p.ln2_gamma, p.ln2_beta)
    np.testing.assert_allclose(transformer_block(x, p, **kw)[1, 1], expected, rtol=1e-14, atol=1e-15)


# ============================================================================= finite differences


@pytest.mark.parametrize(
    "norm, approximate, masks", [("post", "none", "padding"), ("pre", "tanh", "causal"), ("post", "tanh", "none")]
)
def test_backward_finite_differences(norm, approximate, masks):
    x, p, d_out = problem(1)
    kw = _mask_kwargs(masks)

    def f(**arrays):
        return transformer_block(arrays.pop("x"), params_from_arrays(p, arrays), norm=norm, approximate=approximate, **kw)

    numeric = numerical_gradient(f, {"x": x, **p.arrays()}, d_out)
    ours = gradient_dict(transformer_block_backward(x, p, d_out, norm=norm, approximate=approximate, **kw))
    assert ours.keys() == numeric.keys()
    for name, expected in numeric.items():
        assert_gradcheck(ours[name], expected, name=name)


def test_finite_differences_detect_the_wrong_norm_and_swapped_layer_norms():
    x, p, d_out = problem(1)

    def f(**arrays):
        return transformer_block(arrays.pop("x"), params_from_arrays(p, arrays), norm="post")

    numeric = numerical_gradient(f, {"x": x, **p.arrays()}, d_out)
    right = gradient_dict(transformer_block_backward(x, p, d_out, norm="post"))
    assert_gradcheck(right["x"], numeric["x"], name="x")
    wrong_norm = gradient_dict(transformer_block_backward(x, p, d_out, norm="pre"))
    with pytest.raises(AssertionError):
        assert_gradcheck(wrong_norm["x"], numeric["x"], name="x with pre-LN")
    swapped = gradient_dict(transformer_block_backward(x, _swap_layer_norms(p), d_out, norm="post"))
    with pytest.raises(AssertionError):
        assert_gradcheck(swapped["ffn.w1"], numeric["ffn.w1"], name="ffn.w1 with swapped layer norms")


# ============================================================================= detection


def _swap_layer_norms(p: BlockParams) -> BlockParams:
    return BlockParams(p.attn, p.ffn, p.ln2_gamma, p.ln2_beta, p.ln1_gamma, p.ln1_beta)


def test_comparison_detects_swapped_layer_norms_and_norm_mixup(xp):
    x, p, _ = problem()
    ref = ref_forward("post", "none", "none")
    xx = from_numpy(xp, x)
    right = transformer_block(xx, params_on(xp, p), norm="post")
    assert relative_error(to_numpy(right), ref) < TOL64
    swapped = transformer_block(xx, params_on(xp, _swap_layer_norms(p)), norm="post")
    assert relative_error(to_numpy(swapped), ref) > 1e-3
    pre = transformer_block(xx, params_on(xp, p), norm="pre")
    assert relative_error(to_numpy(pre), ref) > 1e-3
    tanh = transformer_block(xx, params_on(xp, p), norm="post", approximate="tanh")
    assert relative_error(to_numpy(tanh), ref) > TOL64
    causal = transformer_block(xx, params_on(xp, p), norm="post", causal=True)
    assert relative_error(to_numpy(causal), ref) > 1e-3


def test_gradient_comparison_detects_swapped_layer_norms_and_norm_mixup():
    x, p, d_out = problem()
    ref = ref_gradients("pre", "tanh", "causal", True)
    kw = dict(approximate="tanh", causal=True)
    assert max(gradient_errors(gradient_dict(transformer_block_backward(x, p, d_out, norm="pre", **kw)), ref).values()) < TOL64
    swapped = gradient_dict(transformer_block_backward(x, _swap_layer_norms(p), d_out, norm="pre", **kw))
    assert max(gradient_errors(swapped, ref).values()) > 1e-3
    post = gradient_dict(transformer_block_backward(x, p, d_out, norm="post", **kw))
    assert max(gradient_errors(post, ref).values()) > 1e-3
    # A perturbation of one parameter by 1e-9 relative is seen by the 1e-12 comparison.
    w2 = p.ffn.w2.copy()
    w2[1, 2] *= 1 + 1e-9
    nudged = BlockParams(p.attn, FFNParams(p.ffn.w1, p.ffn.b1, w2, p.ffn.b2), p.ln1_gamma, p.ln1_beta, p.ln2_gamma, p.ln2_beta)
    errors = gradient_errors(gradient_dict(transformer_block_backward(x, nudged, d_out, norm="pre", **kw)), ref)
    assert max(errors.values()) > TOL64


# ============================================================================= torch


def _torch():
    return pytest.importorskip("torch")


def make_torch_layer(p: BlockParams, norm: str, approximate: str, dtype_name: str = "float64"):
    """nn.TransformerEncoderLayer holding ``p`` (row convention transposed into torch's)."""
    torch = _torch()
    import torch.nn.functional as tf

    activation = "gelu" if approximate == "none" else functools.partial(tf.gelu, approximate="tanh")
    dtype = getattr(torch, dtype_name)
    layer = torch.nn.TransformerEncoderLayer(
        p.d_model, p.num_heads, p.d_ff, dropout=0.0, activation=activation, batch_first=True,
        norm_first=(norm == "pre"), dtype=dtype,
    )
    a, f = p.attn, p.ffn
    t = lambda v: torch.tensor(np.ascontiguousarray(v), dtype=dtype)  # noqa: E731
    state = {
        "self_attn.in_proj_weight": t(np.concatenate([a.w_q.T, a.w_k.T, a.w_v.T])),
        "self_attn.in_proj_bias": t(np.concatenate([a.b_q, a.b_k, a.b_v])),
        "self_attn.out_proj.weight": t(a.w_o.T),
        "self_attn.out_proj.bias": t(a.b_o),
        "linear1.weight": t(f.w1.T),
        "linear1.bias": t(f.b1),
        "linear2.weight": t(f.w2.T),
        "linear2.bias": t(f.b2),
        "norm1.weight": t(p.ln1_gamma),
        "norm1.bias": t(p.ln1_beta),
        "norm2.weight": t(p.ln2_gamma),
        "norm2.bias": t(p.ln2_beta),
    }
    layer.load_state_dict(state)
    layer.eval()
    return layer


def run_torch_layer(layer, x, d_out, *, causal=False, key_padding=None):
    """Output and gradients (in our names and row convention) by autograd, as float64 NumPy."""
    torch = _torch()
    dtype = layer.linear1.weight.dtype
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    n = x.shape[-2]
    src_mask = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1) if causal else None  # True = NOT allowed
    pad = None if key_padding is None else torch.from_numpy(~key_padding)  # True = padding
    layer.zero_grad()
    y = layer(xt, src_mask=src_mask, src_key_padding_mask=pad)
    y.backward(torch.tensor(d_out, dtype=dtype))
    g = lambda prm: prm.grad.detach().double().numpy()  # noqa: E731
    d = x.shape[-1]
    inw, inb = g(layer.self_attn.in_proj_weight), g(layer.self_attn.in_proj_bias)
    grads = {
        "x": xt.grad.detach().double().numpy(),
        "attn.w_q": inw[:d].T, "attn.w_k": inw[d:2 * d].T, "attn.w_v": inw[2 * d:].T,
        "attn.w_o": g(layer.self_attn.out_proj.weight).T,
        "attn.b_q": inb[:d], "attn.b_k": inb[d:2 * d], "attn.b_v": inb[2 * d:],
        "attn.b_o": g(layer.self_attn.out_proj.bias),
        "ffn.w1": g(layer.linear1.weight).T, "ffn.b1": g(layer.linear1.bias),
        "ffn.w2": g(layer.linear2.weight).T, "ffn.b2": g(layer.linear2.bias),
        "ln1_gamma": g(layer.norm1.weight), "ln1_beta": g(layer.norm1.bias),
        "ln2_gamma": g(layer.norm2.weight), "ln2_beta": g(layer.norm2.bias),
    }
    return y.detach().double().numpy(), grads


def _torch_masks(kind: str, b: int, n: int):
    """(our kwargs, torch kwargs): our (B, 1, N) key mask is torch's inverted padding mask."""
    keep = np.ones((b, n), dtype=bool)
    keep[0, n - 1] = False
    ours, theirs = {}, {}
    if "causal" in kind:
        ours["causal"] = theirs["causal"] = True
    if "padding" in kind:
        ours["mask"] = keep[:, None, :]
        theirs["key_padding"] = keep
    return ours, theirs


TORCH_CASES = [("post", "none", "none"), ("pre", "tanh", "causal"), ("post", "tanh", "padding"), ("pre", "none", "causal_padding")]


@pytest.mark.parametrize("norm, approximate, masks", TORCH_CASES)
def test_float64_matches_torch_encoder_layer(xp, norm, approximate, masks):
    x, p, d_out = problem(2)
    ours_kw, torch_kw = _torch_masks(masks, B, N)
    ty, tg = run_torch_layer(make_torch_layer(p, norm, approximate), x, d_out, **torch_kw)
    kw = dict(norm=norm, approximate=approximate, **kwargs_on(xp, ours_kw))
    y = transformer_block(from_numpy(xp, x), params_on(xp, p), **kw)
    assert relative_error(to_numpy(y), ty) < TOL64
    g = transformer_block_backward(from_numpy(xp, x), params_on(xp, p), from_numpy(xp, d_out), **kw)
    errors = gradient_errors(gradient_dict(g), tg)
    assert max(errors.values()) < TOL64, errors


def test_torch_comparison_detects_mask_and_norm_mixups():
    x, p, d_out = problem(2)
    ours_kw, torch_kw = _torch_masks("padding", B, N)
    ty, tg = run_torch_layer(make_torch_layer(p, "post", "none"), x, d_out, **torch_kw)
    assert relative_error(transformer_block(x, p, **ours_kw), ty) < TOL64
    # Torch's convention (True = padding) handed to ours unchanged: detected.
    assert relative_error(transformer_block(x, p, mask=~ours_kw["mask"]), ty) > 1e-3
    assert relative_error(transformer_block(x, p, norm="pre", **ours_kw), ty) > 1e-3
    wrong = gradient_dict(transformer_block_backward(x, p, d_out, approximate="tanh", **ours_kw))
    assert max(gradient_errors(wrong, tg).values()) > TOL64


FLOAT32_CASES = [("post", "none", "causal_padding"), ("pre", "tanh", "padding"), ("post", "tanh", "none"), ("pre", "none", "causal")]


@functools.lru_cache(maxsize=None)
def float32_problem(norm, approximate, masks):
    """A wider block, inputs rounded to float32; torch float64 (reference) and float32 results."""
    b, n, d, h, f = 2, 8, 16, 4, 32
    rng = np.random.default_rng([5, len(masks)])
    r32 = lambda a: None if a is None else np.asarray(a, np.float32).astype(np.float64)  # noqa: E731
    p = init_block_params(d, h, f, seed=9, noise=0.3)
    p = params_from_arrays(p, {k: r32(a) for k, a in p.arrays().items()})
    x, d_out = r32(rng.standard_normal((b, n, d))), r32(rng.standard_normal((b, n, d)))
    ours_kw, torch_kw = _torch_masks(masks, b, n)
    ref = run_torch_layer(make_torch_layer(p, norm, approximate), x, d_out, **torch_kw)
    t32 = run_torch_layer(make_torch_layer(p, norm, approximate, "float32"), x, d_out, **torch_kw)
    return x, p, d_out, ours_kw, ref, t32


@pytest.mark.parametrize("norm, approximate, masks", FLOAT32_CASES)
def test_float32_within_2x_of_torch_float32(xp, norm, approximate, masks):
    x, p, d_out, ours_kw, (ref_y, ref_g), (t_y, t_g) = float32_problem(norm, approximate, masks)
    kw = dict(norm=norm, approximate=approximate, **kwargs_on(xp, ours_kw))
    p32 = params_on(xp, p, xp.float32)
    y = transformer_block(from_numpy(xp, x, xp.float32), p32, **kw)
    g = transformer_block_backward(from_numpy(xp, x, xp.float32), p32, from_numpy(xp, d_out, xp.float32), **kw)
    assert y.dtype == xp.float32 and all(a.dtype == xp.float32 for a in (g.x, *g.params.arrays().values()))
    # Our float64 agrees with torch's float64 reference (so the reference is not torch-specific).
    y64 = transformer_block(from_numpy(xp, x), params_on(xp, p), **kw)
    assert relative_error(to_numpy(y64), ref_y) < TOL64

    e_ours, e_torch = relative_error(to_numpy(y), ref_y), relative_error(t_y, ref_y)
    assert 0 < e_ours <= K32 * e_torch + FLOOR32, f"output: ours {e_ours:.3g}, torch {e_torch:.3g}"
    ours_err = gradient_errors(gradient_dict(g), ref_g)
    torch_err = gradient_errors(t_g, ref_g)
    # All gradients together (errors relative to the largest gradient entry): k = 2.
    e_ours, e_torch = max(ours_err.values()), max(torch_err.values())
    assert 0 < e_ours <= K32 * e_torch + FLOOR32, f"gradients: ours {e_ours:.3g}, torch {e_torch:.3g}"
    # Each gradient array on its own: k = 4, as PyTorch's SDPA tests allow for gradients. A
    # small array's error is a few roundings (measured ratios up to 2.2, e.g. attn.b_k, whose
    # exact gradient is 0, and ln1_gamma), too few for a factor of 2 to be a stable bound.
    for name in ref_g:
        assert ours_err[name] <= K32_GRAD * torch_err[name] + FLOOR32, (
            f"{name}: ours {ours_err[name]:.3g}, torch {torch_err[name]:.3g}"
        )


def test_float32_rule_detects_lower_precision():
    # Our block fed bfloat16-rounded weights (a lost-precision implementation) fails the rule.
    torch = _torch()
    x, p, _, ours_kw, (ref_y, _), (t_y, _) = float32_problem("post", "none", "causal_padding")

    def in_float32(params, rounding=lambda a: a):
        return params_from_arrays(params, {k: rounding(a).astype(np.float32) for k, a in params.arrays().items()})

    bf16 = lambda a: torch.from_numpy(a).bfloat16().double().numpy()  # noqa: E731
    bound = K32 * relative_error(t_y, ref_y) + FLOOR32
    assert relative_error(transformer_block(x.astype(np.float32), in_float32(p), **ours_kw), ref_y) <= bound
    assert relative_error(transformer_block(x.astype(np.float32), in_float32(p, bf16), **ours_kw), ref_y) > bound


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_half_precision_keeps_dtype_and_rounds_once(xp, dtype_name):
    """Half inputs run in float32 and are rounded once: error against float64 on the same
    rounded inputs <= the half unit roundoff (relative to the largest entry) + float32 noise."""
    dtype = getattr(xp, dtype_name, None)
    if dtype is None:
        pytest.skip(f"{xp.__name__} has no {dtype_name}")
    x, p, d_out = problem()
    kw = kwargs_on(xp, _mask_kwargs("causal_padding"))
    xh, ph, dh = from_numpy(xp, x, dtype), params_on(xp, p, dtype), from_numpy(xp, d_out, dtype)
    up = lambda a: None if a is None else to_numpy(xp.astype(a, xp.float64))  # noqa: E731
    x64, d64 = up(xh), up(dh)
    p64 = params_from_arrays(p, {k: up(a) for k, a in ph.arrays().items()})
    y = transformer_block(xh, ph, **kw)
    g = transformer_block_backward(xh, ph, dh, **kw)
    assert y.dtype == dtype and all(a.dtype == dtype for a in (g.x, *g.params.arrays().values()))
    np_kw = _mask_kwargs("causal_padding")
    bound = HALF_UNIT[dtype_name] + 1e-5
    assert relative_error(up(y), transformer_block(x64, p64, **np_kw)) <= bound
    ref_g = gradient_dict(transformer_block_backward(x64, p64, d64, **np_kw))
    errors = gradient_errors({k: up(a) for k, a in {"x": g.x, **g.params.arrays()}.items()}, ref_g)
    assert max(errors.values()) <= bound, errors


# ============================================================================= bad input


def _good():
    x, p, d_out = problem()
    return x, p, d_out


def _replace_ln(p: BlockParams, **kw) -> BlockParams:
    fields = dict(ln1_gamma=p.ln1_gamma, ln1_beta=p.ln1_beta, ln2_gamma=p.ln2_gamma, ln2_beta=p.ln2_beta)
    fields.update(kw)
    return BlockParams(p.attn, p.ffn, **fields)


@pytest.mark.parametrize("fn", ["forward", "backward"])
@pytest.mark.parametrize(
    "mutate, exc, pattern",
    [
        (lambda x, p, d: (x, p, d, {"norm": "middle"}), ValueError, r"norm must be 'post' or 'pre', got 'middle'"),
        (lambda x, p, d: (x, p, d, {"norm": None}), ValueError, r"norm must be 'post' or 'pre'"),
        (lambda x, p, d: (x, p, d, {"approximate": "erf"}), ValueError, r"approximate must be"),
        (lambda x, p, d: (x, p, d, {"eps": -1.0}), ValueError, r"eps must be finite and >= 0"),
        (lambda x, p, d: (x, p, d, {"causal": 1}), TypeError, r"causal must be a bool"),
        (lambda x, p, d: (x, p.attn, d, {}), TypeError, r"params must be a BlockParams, got MHAParams"),
        (lambda x, p, d: (x, BlockParams(p.ffn, p.ffn), d, {}), TypeError, r"params.attn must be an MHAParams"),
        (lambda x, p, d: (x, BlockParams(p.attn, p.attn), d, {}), TypeError, r"params.ffn must be an FFNParams"),
        (lambda x, p, d: (x[0, 0], p, d, {}), ValueError, r"x must have at least 2 dimensions"),
        (lambda x, p, d: (x[..., :3], p, d[..., :3], {}), ValueError, r"params.attn.w_q must have D = x.shape\[-1\] = 3"),
        (lambda x, p, d: (x.astype(np.int64), p, d, {}), TypeError, r"x must have a real floating dtype"),
        (lambda x, p, d: (x.astype(np.float32), p, d.astype(np.float32), {}), TypeError, r"must share one dtype"),
        (lambda x, p, d: (x, _replace_ln(p, ln2_gamma=np.ones(5)), d, {}), ValueError, r"params.ln2_gamma must have shape \(D,\)"),
        (lambda x, p, d: (x, _replace_ln(p, ln1_beta=np.ones((1, 4))), d, {}), ValueError, r"params.ln1_beta must have 1 dimensions"),
        (
            lambda x, p, d: (x, BlockParams(p.attn, FFNParams(np.ones((5, F)), None, np.ones((F, 5)), None)), d, {}),
            ValueError,
            r"params.ffn.w1 must have shape \(D, F\) with D = x.shape\[-1\] = 4",
        ),
        (
            lambda x, p, d: (x, BlockParams(p.attn, FFNParams(p.ffn.w1, p.ffn.b1, p.ffn.w2.T, p.ffn.b2)), d, {}),
            ValueError,
            r"params.ffn.w2 must have shape \(F, D\) = \(6, 4\)",
        ),
        (
            lambda x, p, d: (x, BlockParams(p.attn, FFNParams(p.ffn.w1, np.ones(4), p.ffn.w2, p.ffn.b2)), d, {}),
            ValueError,
            r"params.ffn.b1 must have shape \(6,\)",
        ),
        (
            lambda x, p, d: (x, BlockParams(MHAParams(p.attn.w_q, p.attn.w_k, p.attn.w_v, p.attn.w_o[:3], 2), p.ffn), d, {}),
            ValueError,
            r"params.attn.w_o must have shape \(4, 4\)",
        ),
        (lambda x, p, d: (x, _replace_ln(p, ln2_beta=np.full(4, np.nan)), d, {}), ValueError, r"params.ln2_beta contains NaN or Inf"),
        (lambda x, p, d: (np.where(x > 1, np.inf, x), p, d, {}), ValueError, r"^x contains NaN or Inf"),
        (lambda x, p, d: (x, p, d, {"mask": np.ones((B, N, N))}), TypeError, r"mask must be a boolean array"),
        (lambda x, p, d: (x, p, d, {"mask": np.ones((B, N, N + 1), bool)}), ValueError, r"mask must broadcast to \(\.\.\., N, N\)"),
    ],
)
def test_bad_input_is_rejected_naming_the_argument(fn, mutate, exc, pattern):
    x, p, d, kw = mutate(*_good())
    with pytest.raises(exc, match=pattern):
        if fn == "forward":
            transformer_block(x, p, **kw)
        else:
            transformer_block_backward(x, p, d, **kw)


def test_bad_d_out_is_rejected():
    x, p, d = _good()
    with pytest.raises(ValueError, match=r"d_out must have the output's shape, which is x's shape \(2, 3, 4\), got shape \(2, 3, 3\)"):
        transformer_block_backward(x, p, d[..., :3])
    with pytest.raises(ValueError, match=r"d_out contains NaN or Inf"):
        transformer_block_backward(x, p, np.full_like(d, np.nan))
    with pytest.raises(TypeError, match=r"d_out must have a real floating dtype"):
        transformer_block_backward(x, p, d.astype(np.int64))
    g = transformer_block_backward(x, p, np.full_like(d, np.nan), check_finite=False)
    assert np.all(np.isnan(g.x))


def test_check_finite_false_skips_the_scan():
    x, p, _ = _good()
    bad = _replace_ln(p, ln2_beta=np.full(4, np.inf))
    assert np.all(np.isinf(transformer_block(x, bad, check_finite=False)))


def test_mixed_namespaces_name_both(xp):
    if "numpy" in xp.__name__:
        pytest.skip("needs a namespace other than NumPy")
    x, p, _ = _good()
    with pytest.raises(TypeError, match=r"arguments mix array libraries: x is a .* params\.attn\.w_q is a numpy"):
        transformer_block(from_numpy(xp, x), p)
    pp = params_on(xp, p)
    mixed = _replace_ln(pp, ln1_gamma=p.ln1_gamma)
    with pytest.raises(TypeError, match=r"params\.ln1_gamma is a numpy"):
        transformer_block(from_numpy(xp, x), mixed)


# ============================================================================= misc


def test_init_block_params(xp):
    p = init_block_params(8, 2, 32, xp=xp, seed=3)
    assert isinstance(p, BlockParams) and (p.d_model, p.num_heads, p.d_ff) == (8, 2, 32)
    assert p.num_parameters() == 4 * 8 * 8 + 4 * 8 + (8 * 32 + 32 + 32 * 8 + 8) + 4 * 8
    assert all(a.dtype == xp.float64 and type(a) is type(xp.asarray(0.0)) for a in p.arrays().values())
    np.testing.assert_array_equal(to_numpy(p.ln1_gamma), np.ones(8))
    np.testing.assert_array_equal(to_numpy(p.ln2_beta), np.zeros(8))
    np.testing.assert_array_equal(to_numpy(p.attn.b_k), np.zeros(8))
    ref = init_block_params(8, 2, 32, seed=3)
    for k, a in ref.arrays().items():
        np.testing.assert_array_equal(to_numpy(p.arrays()[k]), a)
    # Independent streams: attention and feed-forward weights are not the same draws.
    assert not np.allclose(ref.attn.w_q.ravel()[:8] * np.sqrt(8), ref.ffn.w1.ravel()[:8] * np.sqrt(8))
    noisy = init_block_params(8, 2, 32, seed=3, noise=0.1)
    np.testing.assert_array_equal(noisy.attn.w_q, ref.attn.w_q)
    assert 0 < np.max(np.abs(noisy.ln1_gamma - 1)) < 1 and np.all(noisy.attn.b_o != 0)
    assert not np.array_equal(init_block_params(8, 2, 32, seed=4).attn.w_q, ref.attn.w_q)
    q = init_block_params(8, 2, 32, bias=False, dtype="float32", xp=xp)
    assert q.ln1_beta is None and q.ln2_beta is None and q.ffn.b1 is None and q.attn.b_q is None
    assert q.ln1_gamma is not None and q.attn.w_q.dtype == xp.float32
    y = transformer_block(from_numpy(xp, np.ones((1, 2, 8)), xp.float32), q)
    assert y.dtype == xp.float32


@pytest.mark.parametrize("kw, pattern", [
    ({"d_model": 0}, "d_model must be a positive integer"),
    ({"num_heads": 3}, r"d_model \(8\) must be divisible by num_heads \(3\)"),
    ({"d_ff": 2.5}, "d_ff must be a positive integer"),
    ({"noise": -1}, "noise must be finite and >= 0"),
])
def test_init_block_params_rejects_bad_arguments(kw, pattern):
    args = dict(d_model=8, num_heads=2, d_ff=16) | kw
    with pytest.raises(ValueError, match=pattern):
        init_block_params(args.pop("d_model"), args.pop("num_heads"), args.pop("d_ff"), **args)


def test_inputs_are_not_modified():
    x, p, d_out = problem()
    before = {k: a.copy() for k, a in {"x": x, "d_out": d_out, **p.arrays()}.items()}
    for norm in NORMS:
        transformer_block(x, p, norm=norm, causal=True)
        transformer_block_backward(x, p, d_out, norm=norm, causal=True)
    for k, a in {"x": x, "d_out": d_out, **p.arrays()}.items():
        np.testing.assert_array_equal(a, before[k], err_msg=k)


def test_batch_dims_and_single_sequence():
    x, p, d_out = problem()
    for norm in NORMS:
        full = transformer_block(x, p, norm=norm)
        one = transformer_block(x[1], p, norm=norm)  # (N, D), no batch dims
        np.testing.assert_allclose(one, full[1], rtol=1e-14, atol=1e-15)
        g1 = transformer_block_backward(x[1], p, d_out[1], norm=norm)
        g = transformer_block_backward(x, p, d_out, norm=norm)
        np.testing.assert_allclose(g1.x, g.x[1], rtol=1e-14, atol=1e-15)
        four = transformer_block(np.stack([x, x]), p, norm=norm)  # (2, B, N, D)
        np.testing.assert_allclose(four[1], full, rtol=1e-14, atol=1e-15)


def test_public_names_are_exported():
    for name in ("BlockParams", "BlockGradients", "init_block_params", "transformer_block", "transformer_block_backward"):
        assert getattr(numerics, name) is globals()[name]
        assert name in numerics.__all__
