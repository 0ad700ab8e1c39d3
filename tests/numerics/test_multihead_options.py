"""Multi-head attention and the block with the options of issue 9: grouped-query heads
(``num_kv_heads``), a bias per head (ALiBi), causal alignments, sliding windows, softcap and
rotary embedding (``rope``), forward and backward.

Independent references:

* an mpmath composition written here from the definitions: projections, per-head column
  slices, RoPE as a rotation of coordinate pairs with mpmath's cos and sin, then
  ``numerics.reference.attention`` (which repeats each key/value head for its query heads
  with ``np.take``), concatenation and W_o; gradients by the complex step
  (``reference.gradients``), so nothing is shared with the hand-written backward;
* torch autograd through an explicit composition: projections, ``repeat_interleave`` for
  grouped heads, the RoPE formula as HF transformers (rotate-half) and Meta's Llama
  (complex pairs) write it, and SDPA with a float ``attn_mask`` (bias plus -inf where a
  boolean mask, causality or the window excludes a key), or the formula ``c tanh(s / c)``
  where a softcap is set (SDPA has none);
* central finite differences through the whole layer and the whole block.

Each comparison is paired with a deliberately wrong variant that it must reject: key/value
heads tiled instead of interleaved, RoPE also applied to v, the other RoPE pairing, the ALiBi
bias with its heads reversed, the block without the options passed through.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import mpmath
import numpy as np
import pytest

from numerics import (
    BlockParams,
    FFNParams,
    MHAParams,
    Rope,
    alibi_bias,
    feed_forward,
    init_block_params,
    init_params,
    layer_norm,
    multi_head_attention,
    multi_head_attention_backward,
    multi_head_attention_vjp,
    reference,
    transformer_block,
    transformer_block_backward,
)
from tests.helpers import (
    OPTIONAL_BACKENDS, assert_gradcheck, force_split, from_numpy, numerical_gradient, relative_error, to_numpy,
)
from tests.numerics.test_attention_options import explicit_allowed
from verify.validate.tolerance import ABS64, K_OUTPUT, floor

#: The package's bounds (verify.validate.tolerance): float64 against mpmath, and the float32 rule
#: err(ours) <= K32 err(torch float32) + FLOOR32, against float64.
TOL64, K32, FLOOR32 = ABS64, K_OUTPUT, floor("float32")
FIELDS = ("w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o")


# --------------------------------------------------------------------------- cases


def _params(rng, d_model, heads, kv_heads, d_k, d_v, d_memory=None):
    """Random parameters with random biases (zero biases would hide dropped terms)."""
    p = init_params(d_model, heads, d_k=d_k, d_v=d_v, d_memory=d_memory, bias=True, num_kv_heads=kv_heads,
                    seed=int(rng.integers(1000)))
    return dataclasses.replace(p, **{b: 0.5 * rng.standard_normal(getattr(p, b).shape) for b in FIELDS[4:]})


def _build(name):
    """dict(x, memory, params, d_out, kwargs); every query row keeps at least one key."""
    rng = np.random.default_rng([19, *map(ord, name)])
    memory, kw = None, {}
    if name == "gqa_alibi_causal":  # H = 4 query heads over Hkv = 2, ALiBi (H, N, N), causal
        p = _params(rng, 4, 4, 2, 2, 1)
        x = rng.standard_normal((2, 3, 4))
        kw.update(bias=alibi_bias(4, 3, 3, causal=True), causal=True)
    elif name == "mqa_rope_window_softcap":  # Hkv = 1, rope (half, default positions), window, softcap
        p = _params(rng, 4, 2, 1, 4, 2)  # K = 4: two pairs, so the two pairings differ
        x = rng.standard_normal((2, 4, 4))
        kw.update(rope=True, window=(1, 1), softcap=1.5)
    elif name == "cross_bottom_right_rope_interleaved":  # N=3 < M=5, rope's default positions shifted by M - N
        p = _params(rng, 4, 2, 2, 2, 1, d_memory=3)
        x = rng.standard_normal((2, 3, 4))
        memory = rng.standard_normal((2, 5, 3))
        kw.update(causal="bottom_right", rope={"style": "interleaved", "theta": 100.0},
                  bias=0.5 * rng.standard_normal((2, 1, 3, 5)))  # one bias per batch entry, all heads
        pad = np.ones((2, 1, 5), dtype=bool)
        pad[1, 0, 1] = False
        kw["mask"] = pad
    elif name == "rope_positions_gqa_bias":  # explicit positions per batch entry, bias (B, H, N, N)
        p = _params(rng, 4, 4, 2, 2, 2)
        x = rng.standard_normal((2, 3, 4))
        positions = np.array([[0, 1, 2], [5, 9, 10]])
        kw.update(rope=Rope(theta=500.0, positions=positions), bias=rng.standard_normal((2, 4, 3, 3)),
                  window=(None, 0), softcap=3.0)
    else:
        raise KeyError(name)
    batch = np.broadcast_shapes(x.shape[:-2], () if memory is None else memory.shape[:-2])
    d_out = rng.standard_normal(batch + (x.shape[-2], p.d_model))
    return dict(x=x, memory=memory, params=p, d_out=d_out, kwargs=kw)


CASES = ["gqa_alibi_causal", "mqa_rope_window_softcap", "cross_bottom_right_rope_interleaved", "rope_positions_gqa_bias"]


def _rope_spec(kw, n, m):
    """(theta, style, query positions, key positions) for the case, the documented defaults
    spelled out: queries at delta + 0..N-1 (delta = M - N bottom-right), keys at 0..M-1."""
    rope = kw.get("rope")
    if rope is None:
        return None
    if rope is True:
        rope = Rope()
    elif isinstance(rope, dict):
        rope = Rope(**rope)
    delta = m - n if kw.get("causal") == "bottom_right" else 0
    q_pos = np.arange(n) + delta if rope.positions is None else np.asarray(rope.positions)
    k_pos = rope.key_positions
    if k_pos is None:
        k_pos = rope.positions if (rope.positions is not None and n == m) else np.arange(m)
    return rope.theta, rope.style, q_pos, np.asarray(k_pos)


# --------------------------------------------------------------------------- mpmath composition


def _rope_rows_mp(a, positions, theta, style):
    """Each pair (u, w) of every row of ``a`` (..., L, K) rotated by pos * theta^(-2i/K):
    (u cos - w sin, u sin + w cos). Pairs (i, i + K/2) for "half", (2i, 2i + 1) for
    "interleaved". Works on mpc entries (the complex step)."""
    k = a.shape[-1]
    out = a.copy()
    pos = np.broadcast_to(np.asarray(positions), a.shape[:-1])
    for idx in np.ndindex(*a.shape[:-1]):
        for i in range(k // 2):
            iu, iw = (i, i + k // 2) if style == "half" else (2 * i, 2 * i + 1)
            angle = mpmath.mpf(int(pos[idx])) * mpmath.power(mpmath.mpf(theta), -mpmath.mpf(2 * i) / k)
            c, s = mpmath.cos(angle), mpmath.sin(angle)
            u, w = a[idx + (iu,)], a[idx + (iw,)]
            out[idx + (iu,)] = u * c - w * s
            out[idx + (iw,)] = u * s + w * c
    return out


def _heads_mp(y, heads):
    """(..., L, H*C) -> (..., H, L, C) by column slices."""
    c = y.shape[-1] // heads
    return np.stack([y[..., h * c:(h + 1) * c] for h in range(heads)], axis=-3)


def mha_mp(x, params, memory=None, mask=None, bias=None, causal=False, window=None, softcap=None, rope=None,
           rope_on_v=False):
    """Multi-head attention from the definitions, on object arrays (mpf or mpc)."""
    mp = reference.to_mp
    x = mp(x)
    src = x if memory is None else mp(memory)
    h, hkv = params.num_heads, params.kv_heads

    def proj(a, w, b):
        return a @ mp(w) + mp(b)

    q = _heads_mp(proj(x, params.w_q, params.b_q), h)
    k = _heads_mp(proj(src, params.w_k, params.b_k), hkv)
    v = _heads_mp(proj(src, params.w_v, params.b_v), hkv)
    spec = _rope_spec(dict(rope=rope, causal=causal), x.shape[-2], src.shape[-2])
    if spec is not None:
        theta, style, q_pos, k_pos = spec
        with_head = lambda p: p[..., None, :] if p.ndim >= 2 else p  # noqa: E731
        q = _rope_rows_mp(q, with_head(q_pos), theta, style)
        k = _rope_rows_mp(k, with_head(k_pos), theta, style)
        if rope_on_v:  # the wrong variant
            v = _rope_rows_mp(v, with_head(k_pos), theta, style)
    head_mask = None if mask is None else np.asarray(mask)[..., None, :, :]
    heads = reference.attention(q, k, v, mask=head_mask, bias=bias, causal=causal, window=window, softcap=softcap,
                                enable_gqa=hkv != h)
    merged = np.concatenate([heads[..., i, :, :] for i in range(h)], axis=-1)
    return merged @ mp(params.w_o) + mp(params.b_o)


@functools.lru_cache(maxsize=None)
def case(name):
    """Inputs, the mpmath output and the complex-step gradients (once per session)."""
    c = _build(name)
    kw = dict(c["kwargs"])
    c["ref_out"] = reference.to_float64(mha_mp(c["x"], c["params"], memory=c["memory"], **kw))
    inputs = {"x": c["x"], **reference.param_arrays(c["params"], "params")}
    if c["memory"] is not None:
        inputs["memory"] = c["memory"]
    if "bias" in kw:
        inputs["bias"] = kw.pop("bias")

    def f(x, params, memory=None, bias=None):
        return mha_mp(x, params, memory=memory, bias=bias, **kw)

    c["ref_grads"] = {n.removeprefix("params."): g for n, g in reference.gradients(f, inputs, c["d_out"],
                                                                                 params=c["params"]).items()}
    return c


def _on(xp, c, dtype=None):
    """The case's arrays, parameters and keywords on namespace xp (float arrays cast to dtype)."""
    put = lambda a: from_numpy(xp, a, dtype if a.dtype != np.bool_ and a.dtype.kind == "f" else None)  # noqa: E731
    p = c["params"]
    params = dataclasses.replace(p, **{n: put(a) for n, a in p.arrays().items()})
    kw = {}
    for key, value in c["kwargs"].items():
        if isinstance(value, np.ndarray):
            value = put(value)
        elif isinstance(value, Rope) and value.positions is not None:
            value = dataclasses.replace(value, positions=from_numpy(xp, value.positions))
        kw[key] = value
    memory = None if c["memory"] is None else put(c["memory"])
    return put(c["x"]), params, memory, put(c["d_out"]), kw


def gradient_error(got, ref, grads):
    """Relative error, measured against w_k's gradient as well: without rope, d b_k is 0
    exactly (softmax ignores a shift common to all keys) and ours is rounding noise of the
    size of dK; with rope, b_k is rotated with the positions and its gradient is not 0."""
    scale = max(np.max(np.abs(ref)), np.max(np.abs(grads["w_k"])))
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref)) / scale)


def _gradient_dict(g):
    out = {"x": g.x, **g.params.arrays()}
    if g.memory is not None:
        out["memory"] = g.memory
    if g.bias is not None:
        out["bias"] = g.bias
    return out


# --------------------------------------------------------------------------- float64 vs mpmath


@pytest.mark.parametrize("name", CASES)
def test_options_match_the_mpmath_composition(xp, name):
    c = case(name)
    x, p, memory, d_out, kw = _on(xp, c)
    out, weights = multi_head_attention(x, p, memory=memory, return_weights=True, **kw)
    assert type(out) is type(x) and out.dtype == xp.float64
    assert weights.shape[-3] == c["params"].num_heads  # one weight matrix per query head
    assert relative_error(to_numpy(out), c["ref_out"]) < TOL64
    g = multi_head_attention_backward(x, p, d_out, memory=memory, **kw)
    ours = _gradient_dict(g)
    assert set(ours) == set(c["ref_grads"])
    for n, ref in c["ref_grads"].items():
        got = to_numpy(ours[n])
        assert got.shape == ref.shape, n
        assert gradient_error(got, ref, c["ref_grads"]) < TOL64, n
    # The vjp keeps the forward and gives the same gradients.
    out_vjp, backward = multi_head_attention_vjp(x, p, memory=memory, **kw)
    assert relative_error(to_numpy(out_vjp), c["ref_out"]) < TOL64
    again = _gradient_dict(backward(d_out))
    for n in ours:
        np.testing.assert_allclose(to_numpy(again[n]), to_numpy(ours[n]), rtol=1e-13, atol=1e-15, err_msg=n)


def test_grouped_heads_are_interleaved_not_tiled():
    """Query head h uses key/value head h // (H / Hkv): the same layer written as full
    multi-head attention with each kv head's columns repeated (np.repeat) agrees; tiled
    (np.tile, head h using h % Hkv) disagrees with the reference."""
    c = case("gqa_alibi_causal")
    p, kw = c["params"], c["kwargs"]
    g = p.num_heads // p.kv_heads

    def expand(w, b, width, order):
        blocks = [w[:, i * width:(i + 1) * width] for i in range(p.kv_heads)]
        bias_blocks = [b[i * width:(i + 1) * width] for i in range(p.kv_heads)]
        pick = [i for i in range(p.kv_heads) for _ in range(g)] if order == "interleaved" else list(range(p.kv_heads)) * g
        return np.concatenate([blocks[i] for i in pick], axis=1), np.concatenate([bias_blocks[i] for i in pick])

    for order, agrees in (("interleaved", True), ("tiled", False)):
        w_k, b_k = expand(p.w_k, p.b_k, p.d_k, order)
        w_v, b_v = expand(p.w_v, p.b_v, p.d_v, order)
        full = dataclasses.replace(p, w_k=w_k, b_k=b_k, w_v=w_v, b_v=b_v, num_kv_heads=None)
        err = relative_error(multi_head_attention(c["x"], full, **kw), c["ref_out"])
        assert (err < TOL64) if agrees else (err > 1e-3), (order, err)


def test_rope_wrong_variants_are_rejected():
    """RoPE also applied to v, or the other pairing, changes the output far beyond rounding."""
    c = case("mqa_rope_window_softcap")
    kw = c["kwargs"]
    on_v = reference.to_float64(mha_mp(c["x"], c["params"], rope_on_v=True, **kw))
    assert relative_error(on_v, c["ref_out"]) > 1e-3
    other = multi_head_attention(c["x"], c["params"], **dict(kw, rope={"style": "interleaved"}))
    assert relative_error(other, c["ref_out"]) > 1e-3
    none = multi_head_attention(c["x"], c["params"], **dict(kw, rope=None))
    assert relative_error(none, c["ref_out"]) > 1e-3


def test_alibi_heads_reversed_and_default_positions_shift_are_rejected():
    c = case("gqa_alibi_causal")
    kw = c["kwargs"]
    reversed_heads = multi_head_attention(c["x"], c["params"], **dict(kw, bias=kw["bias"][::-1]))
    assert relative_error(reversed_heads, c["ref_out"]) > 1e-3
    # Bottom-right rope: default query positions are M - N + i; 0 + i is another result.
    c = case("cross_bottom_right_rope_interleaved")
    kw = dict(c["kwargs"])
    n, m = c["x"].shape[-2], c["memory"].shape[-2]
    shifted = dict(kw, rope=Rope(theta=100.0, style="interleaved", positions=np.arange(n) + m - n))
    unshifted = dict(kw, rope=Rope(theta=100.0, style="interleaved", positions=np.arange(n)))
    assert relative_error(multi_head_attention(c["x"], c["params"], memory=c["memory"], **shifted), c["ref_out"]) < TOL64
    assert relative_error(multi_head_attention(c["x"], c["params"], memory=c["memory"], **unshifted), c["ref_out"]) > 1e-3


# --------------------------------------------------------------------------- torch composition


def _torch():
    return pytest.importorskip("torch", reason=f"torch is not installed ({OPTIONAL_BACKENDS['torch']})")


def _rope_torch(torch, a, positions, theta, style):
    """RoPE as HF transformers (rotate_half) and Meta's Llama (complex pairs) write it."""
    k = a.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, k, 2, dtype=torch.float64) / k))
    angles = torch.as_tensor(np.asarray(positions), dtype=torch.float64)[..., None] * inv_freq
    if positions.ndim >= 2:
        angles = angles[..., None, :, :]  # a head axis
    if style == "half":
        cos = torch.cat([angles.cos(), angles.cos()], dim=-1).to(a.dtype)
        sin = torch.cat([angles.sin(), angles.sin()], dim=-1).to(a.dtype)
        rotate_half = torch.cat([-a[..., k // 2:], a[..., :k // 2]], dim=-1)
        return a * cos + rotate_half * sin
    pairs = torch.view_as_complex(a.double().reshape(*a.shape[:-1], k // 2, 2).contiguous())
    turned = pairs * torch.polar(torch.ones_like(angles), angles)
    return torch.view_as_real(turned).reshape(a.shape).to(a.dtype)


def torch_mha(c, dtype):
    """(out, gradients by name) through the explicit torch composition, in ``dtype``."""
    torch = _torch()
    p, kw = c["params"], c["kwargs"]
    t = lambda a: torch.tensor(np.asarray(a, np.float64), dtype=dtype, requires_grad=True)  # noqa: E731
    leaves = {"x": t(c["x"]), **{n: t(a) for n, a in p.arrays().items()}}
    if c["memory"] is not None:
        leaves["memory"] = t(c["memory"])
    if "bias" in kw:
        leaves["bias"] = t(kw["bias"])
    x, src = leaves["x"], leaves.get("memory", leaves["x"])
    n, m, h, hkv = x.shape[-2], src.shape[-2], p.num_heads, p.kv_heads

    def heads(y, count):
        return y.unflatten(-1, (count, y.shape[-1] // count)).transpose(-3, -2)

    q = heads(x @ leaves["w_q"] + leaves["b_q"], h)
    k = heads(src @ leaves["w_k"] + leaves["b_k"], hkv)
    v = heads(src @ leaves["w_v"] + leaves["b_v"], hkv)
    spec = _rope_spec(kw, n, m)
    if spec is not None:
        theta, style, q_pos, k_pos = spec
        q, k = _rope_torch(torch, q, q_pos, theta, style), _rope_torch(torch, k, k_pos, theta, style)
    k, v = k.repeat_interleave(h // hkv, dim=-3), v.repeat_interleave(h // hkv, dim=-3)
    allowed = torch.from_numpy(explicit_allowed(n, m, kw.get("causal", False), kw.get("window")))
    if "mask" in kw:
        allowed = allowed & torch.from_numpy(kw["mask"])[..., None, :, :]
    excluded = torch.zeros((), dtype=dtype).masked_fill(~allowed, -math.inf)
    bias = leaves.get("bias", torch.zeros((), dtype=dtype))
    if kw.get("softcap") is None:
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias + excluded)
    else:
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        s = kw["softcap"] * torch.tanh(s / kw["softcap"]) + bias + excluded
        o = torch.softmax(s, dim=-1) @ v
    out = o.transpose(-3, -2).flatten(-2) @ leaves["w_o"] + leaves["b_o"]
    out.backward(torch.tensor(c["d_out"], dtype=dtype))
    f64 = lambda a: a.detach().double().numpy()  # noqa: E731
    return f64(out), {name: f64(a.grad) for name, a in leaves.items()}


@pytest.mark.parametrize("name", CASES)
def test_options_match_the_torch_composition(xp, name):
    c = case(name)
    t_out, t_grads = torch_mha(c, _torch().float64)
    assert relative_error(t_out, c["ref_out"]) < TOL64  # the two references agree
    x, p, memory, d_out, kw = _on(xp, c)
    assert relative_error(to_numpy(multi_head_attention(x, p, memory=memory, **kw)), t_out) < TOL64
    ours = _gradient_dict(multi_head_attention_backward(x, p, d_out, memory=memory, **kw))
    assert set(ours) == set(t_grads)
    for n, tg in t_grads.items():
        assert gradient_error(to_numpy(ours[n]), tg, t_grads) < TOL64, n


def test_torch_composition_rejects_tiled_heads_and_rope_on_the_wrong_side():
    """The torch comparison itself catches the wrong variants (not only the mpmath one)."""
    torch = _torch()
    c = case("rope_positions_gqa_bias")
    t_out, _ = torch_mha(c, torch.float64)
    p, kw = c["params"], c["kwargs"]
    tiled = dataclasses.replace(
        p, w_k=np.tile(p.w_k, 2), b_k=np.tile(p.b_k, 2), w_v=np.tile(p.w_v, 2), b_v=np.tile(p.b_v, 2), num_kv_heads=None
    )
    assert relative_error(multi_head_attention(c["x"], tiled, **kw), t_out) > 1e-3
    c = case("mqa_rope_window_softcap")  # K = 4: the two pairings differ
    t_out, _ = torch_mha(c, torch.float64)
    swapped = dict(c["kwargs"], rope=Rope(style="interleaved"))
    assert relative_error(multi_head_attention(c["x"], c["params"], **swapped), t_out) > 1e-3


@pytest.mark.parametrize("name", CASES)
def test_float32_within_2x_of_torch_float32(xp, name):
    torch = _torch()
    c = dict(_build(name))
    # The float64 references start from the float32-rounded inputs.
    r32 = lambda a: np.asarray(a, np.float32).astype(np.float64)  # noqa: E731
    c["x"], c["d_out"] = r32(c["x"]), r32(c["d_out"])
    c["memory"] = None if c["memory"] is None else r32(c["memory"])
    c["params"] = dataclasses.replace(c["params"], **{n: r32(a) for n, a in c["params"].arrays().items()})
    if "bias" in c["kwargs"]:
        c["kwargs"] = dict(c["kwargs"], bias=r32(c["kwargs"]["bias"]))
    ref_out, ref_grads = torch_mha(c, torch.float64)
    t_out, t_grads = torch_mha(c, torch.float32)
    x, p, memory, d_out, kw = _on(xp, c, dtype=xp.float32)
    out = multi_head_attention(x, p, memory=memory, **kw)
    ours = _gradient_dict(multi_head_attention_backward(x, p, d_out, memory=memory, **kw))
    assert out.dtype == xp.float32 and all(g.dtype == xp.float32 for g in ours.values())
    pairs = [("out", out, t_out, ref_out)] + [(n, ours[n], t_grads[n], ref_grads[n]) for n in ref_grads]
    for label, mine, theirs, ref in pairs:
        if label == "out":
            e_ours, e_torch = relative_error(to_numpy(mine), ref), relative_error(theirs, ref)
        else:
            e_ours, e_torch = gradient_error(to_numpy(mine), ref, ref_grads), gradient_error(theirs, ref, ref_grads)
        assert e_ours <= K32 * e_torch + FLOOR32, f"{label}: ours {e_ours:.3g}, torch {e_torch:.3g}"
    # The rule has teeth: the output rounded to float16 fails it.
    coarse = to_numpy(out).astype(np.float16).astype(np.float64)
    assert relative_error(coarse, ref_out) > K32 * relative_error(t_out, ref_out) + FLOOR32


# --------------------------------------------------------------------------- finite differences


def _flat_layer(c):
    """f(x, memory, bias, **param arrays) for numerical_gradient, and its inputs."""
    p, kw = c["params"], dict(c["kwargs"])
    inputs = {"x": c["x"], **p.arrays()}
    if c["memory"] is not None:
        inputs["memory"] = c["memory"]
    if "bias" in kw:
        inputs["bias"] = kw.pop("bias")

    def f(x, memory=None, bias=None, **arrays):
        params = MHAParams(num_heads=p.num_heads, num_kv_heads=p.num_kv_heads, **arrays)
        return multi_head_attention(x, params, memory=memory, bias=bias, **kw)

    return f, inputs


@pytest.mark.parametrize("name", ["rope_positions_gqa_bias", "cross_bottom_right_rope_interleaved"])
def test_layer_backward_matches_finite_differences(name):
    c = case(name)
    f, inputs = _flat_layer(c)
    numeric = numerical_gradient(f, inputs, c["d_out"])
    ours = _gradient_dict(multi_head_attention_backward(c["x"], c["params"], c["d_out"], memory=c["memory"],
                                                        **c["kwargs"]))
    assert set(numeric) == set(ours)
    for n, num in numeric.items():
        assert_gradcheck(ours[n], num, name=n)


def test_finite_differences_reject_a_backward_without_rope():
    c = case("rope_positions_gqa_bias")
    f, inputs = _flat_layer(c)
    others = {n: a for n, a in inputs.items() if n not in ("x", "w_q")}
    numeric = numerical_gradient(lambda x, w_q: f(x, w_q=w_q, **others), {"x": inputs["x"], "w_q": inputs["w_q"]},
                                 c["d_out"])
    kw = dict(c["kwargs"], rope=None)
    wrong = multi_head_attention_backward(c["x"], c["params"], c["d_out"], **kw)
    with pytest.raises(AssertionError):
        assert_gradcheck(wrong.params.w_q, numeric["w_q"], name="w_q")


def _block_case(norm):
    rng = np.random.default_rng([23, len(norm)])
    p = init_block_params(8, 4, 6, num_kv_heads=2, noise=0.3, seed=3)
    x = rng.standard_normal((2, 3, 8))
    kw = dict(bias=alibi_bias(4, 3, 3, causal=True), causal=True, window=(1, None), softcap=2.5,
              rope=Rope(style="interleaved", positions=np.array([[0, 1, 2], [3, 4, 5]])), norm=norm)
    return p, x, rng.standard_normal(x.shape), kw


def _block_composition(x, p, norm, **options):
    """The block written out from the sub-layers (attention with the options)."""
    mha = lambda u: multi_head_attention(u, p.attn, **options)  # noqa: E731
    ln1 = lambda u: layer_norm(u, p.ln1_gamma, p.ln1_beta)  # noqa: E731
    ln2 = lambda u: layer_norm(u, p.ln2_gamma, p.ln2_beta)  # noqa: E731
    if norm == "post":
        t3 = ln1(x + mha(x))
        return ln2(t3 + feed_forward(t3, p.ffn))
    t = x + mha(ln1(x))
    return t + feed_forward(ln2(t), p.ffn)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_block_passes_the_options_through(norm):
    p, x, _, kw = _block_case(norm)
    options = {k: v for k, v in kw.items() if k != "norm"}
    out = transformer_block(x, p, **kw)
    np.testing.assert_allclose(out, _block_composition(x, p, norm, **options), rtol=1e-13, atol=1e-13)
    for dropped in ("bias", "rope", "softcap", "window"):
        assert relative_error(out, _block_composition(x, p, norm, **dict(options, **{dropped: None}))) > 1e-6, dropped


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_block_backward_matches_finite_differences(norm):
    p, x, d_out, kw = _block_case(norm)
    bias = kw.pop("bias")
    names = list(reference.param_arrays(p))

    def f(x, bias, **arrays):
        attn = MHAParams(num_heads=p.attn.num_heads, num_kv_heads=p.attn.num_kv_heads,
                         **{n[5:]: a for n, a in arrays.items() if n.startswith("attn_")})
        ffn = FFNParams(**{n[4:]: a for n, a in arrays.items() if n.startswith("ffn_")})
        ln = {n: a for n, a in arrays.items() if n.startswith("ln")}
        return transformer_block(x, BlockParams(attn=attn, ffn=ffn, **ln), bias=bias, **kw)

    flat = {n.replace(".", "_"): a for n, a in reference.param_arrays(p).items()}
    numeric = numerical_gradient(f, {"x": x, "bias": bias, **flat}, d_out)
    g = transformer_block_backward(x, p, d_out, bias=bias, **kw)
    analytic = {"x": g.x, "bias": g.bias, **{n.replace(".", "_"): a for n, a in g.params.arrays().items()}}
    assert len(names) + 2 == len(numeric)
    for n, num in numeric.items():
        assert_gradcheck(analytic[n], num, name=n)
    # Without the rope in the backward, dx no longer matches.
    wrong = transformer_block_backward(x, p, d_out, bias=bias, **dict(kw, rope=None))
    with pytest.raises(AssertionError):
        assert_gradcheck(wrong.x, numeric["x"], name="x")


# --------------------------------------------------------------------------- slabs, empty rows


def test_split_over_cores_matches_unsplit_with_bias_and_positions(monkeypatch):
    """The NumPy path that cuts the layer into one slab per core slices the bias's batch
    dims (with its head axis) and the rope positions with x."""
    c = case("rope_positions_gqa_bias")
    kw = c["kwargs"]
    out = multi_head_attention(c["x"], c["params"], **kw)
    g = _gradient_dict(multi_head_attention_backward(c["x"], c["params"], c["d_out"], **kw))
    calls = force_split(monkeypatch)
    split_out = multi_head_attention(c["x"], c["params"], **kw)
    split_g = _gradient_dict(multi_head_attention_backward(c["x"], c["params"], c["d_out"], **kw))
    _, vjp = multi_head_attention_vjp(c["x"], c["params"], **kw)
    vjp_g = _gradient_dict(vjp(c["d_out"]))
    assert len(calls) >= 3
    assert relative_error(split_out, c["ref_out"]) < TOL64
    for n in g:
        for other in (split_g, vjp_g):
            assert other[n].shape == g[n].shape
            np.testing.assert_allclose(other[n], g[n], rtol=1e-12, atol=1e-14, err_msg=n)


def test_rows_with_no_allowed_key_give_b_o_and_zero_gradients_through_them():
    c = case("gqa_alibi_causal")
    p, x, d_out = c["params"], c["x"], c["d_out"]
    bias = np.array(c["kwargs"]["bias"])
    bias[:, 1, :] = -np.inf  # query 1 sees no key in any head
    out = multi_head_attention(x, p, bias=bias, causal=True, rope=True)
    np.testing.assert_allclose(out[:, 1], np.broadcast_to(p.b_o, out[:, 1].shape), rtol=0, atol=1e-15)
    g = multi_head_attention_backward(x, p, d_out, bias=bias, causal=True, rope=True)
    for name, a in _gradient_dict(g).items():
        assert np.all(np.isfinite(a)), name
    assert np.all(g.bias[:, 1, :] == 0)
    # A window that excludes every key: attention is 0, the output is b_o everywhere.
    out = multi_head_attention(x, p, causal="bottom_right", window=(0, None), memory=x[:, :0], softcap=1.0)
    np.testing.assert_array_equal(out, np.broadcast_to(p.b_o, out.shape))


# --------------------------------------------------------------------------- errors


def _gqa_params():
    return init_params(8, 4, num_kv_heads=2, bias=True)


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda: init_params(8, 4, num_kv_heads=3), ValueError, ["num_heads (4)", "multiple of num_kv_heads (3)"]),
        (lambda: init_params(8, 4, num_kv_heads=0), ValueError, ["num_kv_heads", "positive integer"]),
        (lambda: multi_head_attention(np.ones((2, 8)), dataclasses.replace(_gqa_params(), num_kv_heads=3)),
         ValueError, ["params.num_heads (4)", "params.num_kv_heads (3)"]),
        (lambda: multi_head_attention(np.ones((2, 8)), dataclasses.replace(_gqa_params(), num_kv_heads=1)),
         ValueError, ["params.w_k", "params.w_q", "per-head width K"]),
        (lambda: multi_head_attention(np.ones((2, 8)), dataclasses.replace(
            _gqa_params(), w_k=np.ones((8, 5)), b_k=None)), ValueError, ["params.w_k", "5 columns", "num_kv_heads = 2"]),
        (lambda: multi_head_attention(np.ones((2, 8)), init_params(8, 4, d_k=3, d_v=2), rope=True),
         ValueError, ["rope", "even", "K = params.w_q.shape[1] / num_heads = 3"]),
        (lambda: multi_head_attention(np.ones((2, 8)), _gqa_params(), rope={"style": "neox"}),
         ValueError, ["rope.style", "'neox'", "half", "interleaved"]),
        (lambda: multi_head_attention(np.ones((2, 8)), _gqa_params(), rope={"theta": -1.0}),
         ValueError, ["rope.theta", "> 0"]),
        (lambda: multi_head_attention(np.ones((2, 8)), _gqa_params(), rope={"base": 10.0}),
         TypeError, ["rope", "unknown keys", "base"]),
        (lambda: multi_head_attention(np.ones((2, 8)), _gqa_params(), rope="half"),
         TypeError, ["rope must be None, a bool, a numerics.Rope", "str"]),
        (lambda: multi_head_attention(np.ones((2, 8)), _gqa_params(), rope=Rope(positions=np.arange(3))),
         ValueError, ["rope.positions", "(2,)", "(3,)"]),
        (lambda: multi_head_attention(np.ones((2, 8)), _gqa_params(), rope=Rope(positions=np.array([0.0, np.nan]))),
         ValueError, ["rope.positions", "NaN"]),
        (lambda: multi_head_attention(np.ones((2, 8)), _gqa_params(), rope=Rope(positions=np.array([True, False]))),
         TypeError, ["rope.positions", "integer or real floating"]),
        (lambda: multi_head_attention(np.ones((2, 8)), _gqa_params(), bias=np.ones((3, 2, 2))),
         ValueError, ["bias must broadcast to (..., H, N, M) = (4, 2, 2)", "head axis", "(3, 2, 2)"]),
        (lambda: multi_head_attention(np.ones((2, 8)), _gqa_params(), bias=np.ones((2, 2), dtype=np.float32)),
         TypeError, ["bias must have x's dtype float64", "float32"]),
        (lambda: multi_head_attention(np.ones((2, 8)), _gqa_params(), bias=np.ones((2, 2), dtype=bool)),
         TypeError, ["bias must be a real floating array", "mask="]),
        (lambda: multi_head_attention(np.ones((2, 8)), _gqa_params(), bias=np.full((2, 2), np.nan)),
         ValueError, ["bias contains NaN"]),
        (lambda: multi_head_attention(np.ones((2, 8)), _gqa_params(), window=(-1, 0)),
         ValueError, ["window's left side", ">= 0", "-1"]),
        (lambda: multi_head_attention(np.ones((2, 8)), _gqa_params(), softcap=0.0), ValueError, ["softcap", "> 0"]),
        (lambda: multi_head_attention(np.ones((2, 8)), _gqa_params(), causal="bottom"),
         ValueError, ["causal must be", "'bottom'", "bottom_right"]),
        (lambda: multi_head_attention_backward(np.ones((2, 8)), _gqa_params(), np.ones((2, 8)), softcap=-2.0),
         ValueError, ["softcap", "> 0"]),
        (lambda: transformer_block(np.ones((2, 3, 8)), init_block_params(8, 4, 6), bias=np.ones((5, 2, 4, 3, 3))),
         ValueError, ["bias must broadcast", "x's batch dims (2,)", "(5, 2, 4, 3, 3)"]),
        (lambda: transformer_block(np.ones((2, 3, 8)), init_block_params(8, 4, 6), rope={"style": "x"}),
         ValueError, ["rope.style"]),
        (lambda: init_block_params(8, 4, 6, num_kv_heads=3), ValueError, ["num_kv_heads (3)"]),
    ],
)
def test_bad_options_name_the_argument(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_positions_from_another_library_are_named():
    torch = _torch()
    for call in (lambda: multi_head_attention(np.ones((2, 8)), _gqa_params(), rope=Rope(positions=torch.arange(2))),
                 lambda: transformer_block(np.ones((2, 8)), init_block_params(8, 4, 6), rope={"key_positions": torch.arange(2)})):
        with pytest.raises(TypeError, match=r"mix array libraries.*rope\.(key_)?positions is a torch array"):
            call()


def test_gqa_parameters_hold_fewer_key_value_columns_and_the_same_values_per_seed():
    p = init_params(8, 4, num_kv_heads=2, seed=5)
    assert (p.w_q.shape, p.w_k.shape, p.w_v.shape, p.w_o.shape) == ((8, 8), (8, 4), (8, 4), (8, 8))
    assert (p.num_heads, p.kv_heads, p.d_k, p.d_v) == (4, 2, 2, 2)
    assert "num_kv_heads" not in p.arrays()
    full = init_params(8, 4, seed=5)
    assert full.num_kv_heads is None and full.kv_heads == 4
    np.testing.assert_array_equal(p.w_q, full.w_q)  # w_q is drawn first, with the same shape
    g = multi_head_attention_backward(np.ones((2, 8)), p, np.ones((2, 8)))
    assert g.params.num_kv_heads == 2 and g.params.w_k.shape == (8, 4) and g.bias is None
