"""The mpmath reference's multi-head attention and block with the modern options (bias, causal
alignments, window, softcap, grouped-query heads, rotary embedding), against numerics in float64.

The two are written independently (the reference from the definitions, per head, with mpmath's
cos and sin; numerics batched over heads, with its own rotary embedding and GQA folding), so
agreement to ``ABS64`` (the package's bound for float64 against mpmath) on every option is
evidence for both; each test also shows the comparison failing on a wrong input (a wrong
alignment, rope style, head mapping, or a perturbed bias).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from numerics import (Rope, init_block_params, init_params, multi_head_attention, multi_head_attention_backward,
                      transformer_block, transformer_block_backward)
from numerics import reference as R
from verify.validate.tolerance import ABS64, relative_error

B, N, M, D, H, HKV, K, V = 1, 3, 4, 8, 4, 2, 4, 2


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    x, mem = rng.standard_normal((B, N, D)), rng.standard_normal((B, M, D))
    p = init_params(D, H, d_k=K, d_v=V, num_kv_heads=HKV, bias=True, seed=seed + 1)
    for name in ("b_q", "b_k", "b_v", "b_o"):
        setattr(p, name, 0.1 * rng.standard_normal(getattr(p, name).shape))
    bias = rng.standard_normal((H, N, M))
    bias[1, 0, :2] = -np.inf
    return x, mem, p, bias, rng.standard_normal((B, N, D))


CASES = {
    "gqa": {},
    "top_left": {"causal": True},
    "bottom_right": {"causal": "bottom_right"},
    "window": {"causal": "bottom_right", "window": (1, 0)},
    "softcap": {"softcap": 1.5},
    "bias": {"bias": "bias"},
    "rope_half": {"rope": True},
    "rope_interleaved": {"rope": Rope(style="interleaved", theta=100.0), "causal": "bottom_right"},
}


def _kw(case: str, bias):
    return {k: (bias if v == "bias" else v) for k, v in CASES[case].items()}


@pytest.mark.parametrize("case", CASES)
def test_reference_mha_forward_matches_numerics(case):
    x, mem, p, bias, _ = _problem()
    kw = _kw(case, bias)
    ours = multi_head_attention(x, p, memory=mem, **kw)
    ref = R.to_float64(R.multi_head_attention(x, p, memory=mem, **kw))
    assert relative_error(ours, ref) <= ABS64


@pytest.mark.parametrize("wrong", [
    ("bottom_right", {"causal": True}),
    ("rope_interleaved", {"rope": Rope(style="half", theta=100.0), "causal": "bottom_right"}),
    ("window", {"causal": "bottom_right", "window": (0, 0)}),
    ("softcap", {"softcap": 3.0}),
])
def test_reference_mha_tells_options_apart(wrong):
    # The same comparison fails when the reference is given a different option than numerics.
    case, other = wrong
    x, mem, p, bias, _ = _problem()
    ours = multi_head_attention(x, p, memory=mem, **_kw(case, bias))
    ref = R.to_float64(R.multi_head_attention(x, p, memory=mem, **other))
    assert relative_error(ours, ref) > 1e-3


def test_reference_mha_detects_tiled_gqa_heads():
    # Query head h uses key/value head h // (H / Hkv): with the k/v heads in tiled order
    # (h % Hkv), numerics' result no longer matches.
    # The k/v heads repeated to H heads in each order, as ordinary MHA (num_kv_heads=None).
    x, mem, p, _, _ = _problem()
    def repeat(w, heads, c):
        return np.concatenate([w[:, h * c:(h + 1) * c] for h in heads], axis=1)

    def expand(b, heads, c):
        return np.concatenate([b[h * c:(h + 1) * c] for h in heads])

    interleaved, tiled_heads = [h // (H // HKV) for h in range(H)], [h % HKV for h in range(H)]
    assert interleaved != tiled_heads
    ref = R.to_float64(R.multi_head_attention(x, p, memory=mem))
    for heads, ok in ((interleaved, True), (tiled_heads, False)):
        full = dataclasses.replace(p, num_kv_heads=None, w_k=repeat(p.w_k, heads, K),
                                   w_v=repeat(p.w_v, heads, V), b_k=expand(p.b_k, heads, K),
                                   b_v=expand(p.b_v, heads, V))
        err = relative_error(multi_head_attention(x, full, memory=mem), ref)
        assert (err <= ABS64) is ok, (heads, err)


def test_reference_mha_gradients_match_numerics_with_every_option():
    x, mem, p, bias, d_out = _problem(3)
    kw = {"bias": bias, "causal": "bottom_right", "window": (2, None), "softcap": 2.0,
          "rope": Rope(style="interleaved")}
    ref = R.multi_head_attention_gradients(x, p, d_out, memory=mem, **kw)
    g = multi_head_attention_backward(x, p, d_out, memory=mem, **kw)
    ours = {"x": g.x, "memory": g.memory, "bias": g.bias, **g.params.arrays()}
    assert set(ours) == set(ref)
    scale = max(float(np.max(np.abs(r))) for r in ref.values())  # b_k's gradient is 0 exactly
    errors = {k: float(np.max(np.abs(ours[k] - ref[k]))) / scale for k in ref}
    assert max(errors.values()) <= ABS64, errors
    assert np.all(ref["bias"][np.isneginf(bias)] == 0)
    # A perturbed bias (not a constant shift: the softmax ignores those) fails the bound.
    shaken = bias + 0.1 * np.random.default_rng(9).standard_normal(bias.shape)
    wrong = multi_head_attention_backward(x, p, d_out, memory=mem, **{**kw, "bias": shaken})
    assert relative_error(wrong.x, ref["x"]) > 1e-4


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_reference_block_passes_the_options_through(norm):
    rng = np.random.default_rng(5)
    params = init_block_params(D, H, 16, seed=6, num_kv_heads=HKV)
    x, d_out = rng.standard_normal((1, N, D)), rng.standard_normal((1, N, D))
    bias = 0.5 * rng.standard_normal((H, N, N))
    kw = {"causal": True, "bias": bias, "softcap": 2.0, "rope": True, "window": (1, None)}
    ref = R.to_float64(R.transformer_block(x, params, norm=norm, **kw))
    assert relative_error(transformer_block(x, params, norm=norm, **kw), ref) <= ABS64
    assert relative_error(transformer_block(x, params, norm=norm, **{**kw, "rope": None}), ref) > 1e-4
    ref_g = R.transformer_block_gradients(x, params, d_out, norm=norm, **kw)
    g = transformer_block_backward(x, params, d_out, norm=norm, **kw)
    assert relative_error(g.x, ref_g["x"]) <= ABS64
    assert relative_error(g.bias, ref_g["bias"]) <= ABS64
    assert relative_error(g.params.attn.w_q, ref_g["attn.w_q"]) <= ABS64


def test_reference_mha_option_errors_name_the_argument():
    x, mem, p, bias, _ = _problem()
    with pytest.raises(ValueError, match="bias must broadcast to"):
        R.multi_head_attention(x, p, memory=mem, bias=bias[:, :, :3])
    with pytest.raises(ValueError, match="softcap must be > 0"):
        R.multi_head_attention(x, p, memory=mem, softcap=-1.0)
    with pytest.raises(ValueError, match="rope.style"):
        R.multi_head_attention(x, p, memory=mem, rope={"style": "pairs"})
    with pytest.raises(TypeError, match="rope got unknown keys"):
        R.multi_head_attention(x, p, memory=mem, rope={"base": 10.0})
    with pytest.raises(ValueError, match="num_kv_heads must be a positive int that divides"):
        R.multi_head_attention(x, dataclasses.replace(p, num_kv_heads=3), memory=mem)
