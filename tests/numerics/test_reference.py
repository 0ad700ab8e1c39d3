"""Tests of numerics.reference, the mpmath reference, checked independently of numerics' float code.

The reference is compared with formulas written inline here in float64 NumPy, with PyTorch in
float64 (``scaled_dot_product_attention``, ``layer_norm``, ``gelu``, ``nn.MultiheadAttention``,
``nn.TransformerEncoderLayer`` and autograd), and with mpmath central finite differences.

Tolerance: torch and NumPy in float64 on these tiny, well-conditioned problems (entries O(1),
at most a few dozen roundings per output) are accurate to about 1e-15 relative, so ``TOL =
1e-12`` leaves a margin of about 1000 while every genuine mistake tried below (a wrong scale, a
perturbed weight, a mask ignored) gives errors above 1e-4. Checks inside mpmath itself use
1e-40, well above the reference's 50-digit working precision.
"""

from __future__ import annotations

import types

import mpmath
import numpy as np
import pytest
import scipy.special

from numerics import reference as R
from verify.validate.tolerance import ABS64
from verify.validate.tolerance import relative_error as rel_err

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = ABS64
MP_TOL = mpmath.mpf(10) ** -40

B, N, M, D, H, FF = 2, 3, 4, 4, 2, 8


def grad_errs(ours: dict, theirs: dict) -> dict:
    """Per-name error of gradients, relative to the largest entry over ALL of them.

    A common scale is needed because some gradients are exactly zero in exact arithmetic
    (the key bias b_k: adding q.b_k to every score of a row leaves the softmax unchanged),
    where float64 autograd returns rounding noise of about 1e-16 and the reference about 1e-100.
    """
    assert set(ours) == set(theirs), (sorted(ours), sorted(theirs))
    scale = max(float(np.max(np.abs(np.asarray(t)))) for t in theirs.values())
    out = {}
    for name in ours:
        a, b = np.asarray(ours[name], dtype=np.float64), np.asarray(theirs[name], dtype=np.float64)
        assert a.shape == b.shape, (name, a.shape, b.shape)
        out[name] = float(np.max(np.abs(a - b))) / scale
    return out


def t64(a) -> "torch.Tensor":
    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64)


def tgrad(a) -> "torch.Tensor":
    return t64(a).requires_grad_(True)


def make_mha(rng, d=D, h=H, k=None, v=None, dm=None, bias=True):
    k = d // h if k is None else k
    v = d // h if v is None else v
    dm = d if dm is None else dm

    def b(n):
        return 0.2 * rng.standard_normal(n) if bias else None

    return types.SimpleNamespace(
        w_q=rng.standard_normal((d, h * k)) / np.sqrt(d),
        w_k=rng.standard_normal((dm, h * k)) / np.sqrt(dm),
        w_v=rng.standard_normal((dm, h * v)) / np.sqrt(dm),
        w_o=rng.standard_normal((h * v, d)) / np.sqrt(h * v),
        b_q=b(h * k), b_k=b(h * k), b_v=b(h * v), b_o=b(d),
        num_heads=h,
    )


def make_ffn(rng, d=D, f=FF):
    return types.SimpleNamespace(
        w1=rng.standard_normal((d, f)) / np.sqrt(d), b1=0.2 * rng.standard_normal(f),
        w2=rng.standard_normal((f, d)) / np.sqrt(f), b2=0.2 * rng.standard_normal(d),
    )


def make_block(rng, d=D, h=H, f=FF):
    return types.SimpleNamespace(
        attn=make_mha(rng, d, h), ffn=make_ffn(rng, d, f),
        ln1_gamma=1 + 0.2 * rng.standard_normal(d), ln1_beta=0.2 * rng.standard_normal(d),
        ln2_gamma=1 + 0.2 * rng.standard_normal(d), ln2_beta=0.2 * rng.standard_normal(d),
    )


def causal_np(n, m):
    return np.arange(m)[None, :] <= np.arange(n)[:, None]


def numpy_attention(q, k, v, allowed=None, scale=None):
    """Inline float64 attention (no max subtraction needed for these O(1) logits)."""
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    e = np.exp(scale * q @ np.swapaxes(k, -1, -2))
    if allowed is not None:
        e = e * allowed
    with np.errstate(invalid="ignore"):  # a fully masked row gives 0/0 here; tests skip it
        return (e / e.sum(-1, keepdims=True)) @ v


def torch_mha_module(p, d=D, dm=None):
    """nn.MultiheadAttention holding the row-convention params ``p`` (K = V = D / H)."""
    dm = d if dm is None else dm
    mod = torch.nn.MultiheadAttention(d, p.num_heads, bias=True, batch_first=True, kdim=dm, vdim=dm,
                                      dtype=torch.float64)
    with torch.no_grad():
        if dm == d:
            # torch computes x @ W.T + b, so in_proj_weight stacks the transposed row-convention weights.
            mod.in_proj_weight.copy_(torch.cat([t64(p.w_q).T, t64(p.w_k).T, t64(p.w_v).T]))
        else:
            mod.q_proj_weight.copy_(t64(p.w_q).T)
            mod.k_proj_weight.copy_(t64(p.w_k).T)
            mod.v_proj_weight.copy_(t64(p.w_v).T)
        mod.in_proj_bias.copy_(torch.cat([t64(p.b_q), t64(p.b_k), t64(p.b_v)]))
        mod.out_proj.weight.copy_(t64(p.w_o).T)
        mod.out_proj.bias.copy_(t64(p.b_o))
    return mod


def torch_not_allowed(allowed, h):
    """nn.MultiheadAttention's boolean attn_mask means True = NOT allowed; batched masks are (B*H, N, M)."""
    m = torch.from_numpy(~np.asarray(allowed))
    return m.repeat_interleave(h, dim=0) if m.ndim == 3 else m


def torch_block_module(p, norm, approximate, eps):
    act = "gelu" if approximate == "none" else (lambda t: F.gelu(t, approximate="tanh"))
    mod = torch.nn.TransformerEncoderLayer(
        D, H, dim_feedforward=FF, dropout=0.0, activation=act, layer_norm_eps=eps, batch_first=True,
        norm_first=(norm == "pre"), dtype=torch.float64,
    )
    mod.eval()
    a, f = p.attn, p.ffn
    with torch.no_grad():
        sa = mod.self_attn
        sa.in_proj_weight.copy_(torch.cat([t64(a.w_q).T, t64(a.w_k).T, t64(a.w_v).T]))
        sa.in_proj_bias.copy_(torch.cat([t64(a.b_q), t64(a.b_k), t64(a.b_v)]))
        sa.out_proj.weight.copy_(t64(a.w_o).T)
        sa.out_proj.bias.copy_(t64(a.b_o))
        mod.linear1.weight.copy_(t64(f.w1).T)
        mod.linear1.bias.copy_(t64(f.b1))
        mod.linear2.weight.copy_(t64(f.w2).T)
        mod.linear2.bias.copy_(t64(f.b2))
        mod.norm1.weight.copy_(t64(p.ln1_gamma))
        mod.norm1.bias.copy_(t64(p.ln1_beta))
        mod.norm2.weight.copy_(t64(p.ln2_gamma))
        mod.norm2.bias.copy_(t64(p.ln2_beta))
    return mod


def torch_mha_grads(mod, dm_differs=False):
    """Row-convention gradients out of an nn.MultiheadAttention after backward()."""
    d = mod.embed_dim
    if dm_differs:
        wq, wk, wv = mod.q_proj_weight.grad.T, mod.k_proj_weight.grad.T, mod.v_proj_weight.grad.T
    else:
        g = mod.in_proj_weight.grad
        wq, wk, wv = g[:d].T, g[d:2 * d].T, g[2 * d:].T
    gb = mod.in_proj_bias.grad
    out = {"w_q": wq, "w_k": wk, "w_v": wv, "w_o": mod.out_proj.weight.grad.T,
           "b_q": gb[:d], "b_k": gb[d:2 * d], "b_v": gb[2 * d:], "b_o": mod.out_proj.bias.grad}
    return {k: v.detach().numpy() for k, v in out.items()}


# ----------------------------------------------------------------------------- conversions


def test_to_mp_and_back_is_exact():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 4)) * np.logspace(-300, 300, 4)
    mp = R.to_mp(a)
    assert mp.dtype == object and isinstance(mp[0, 0], mpmath.mpf)
    np.testing.assert_array_equal(R.to_float64(mp), a)
    assert R.to_float64(R.to_mp(np.float32(0.1) * np.ones(2))).tolist() == [float(np.float32(0.1))] * 2


def test_functions_keep_global_precision_and_work_in_50_digits():
    before = mpmath.mp.dps
    rng = np.random.default_rng(2)
    z = rng.standard_normal((2, 5)) * 3
    s = R.softmax(z)
    assert mpmath.mp.dps == before
    with mpmath.workdps(60):
        # Rows sum to 1 and a shift of the logits changes nothing, to far beyond float64.
        for row in s:
            assert abs(mpmath.fsum(row) - 1) < MP_TOL
        shifted = R.softmax(R.to_mp(z) + mpmath.mpf(700))
        assert max(abs(a - b) for a, b in zip(shifted.ravel(), s.ravel())) < MP_TOL
        x = R.to_mp(z)
        for approximate in ("none", "tanh"):
            # gelu(x) - gelu(-x) = x holds exactly for both variants.
            diff = R.gelu(x, approximate) - R.gelu(-x, approximate) - x
            assert max(abs(t) for t in diff.ravel()) < MP_TOL
        y = R.layer_norm(z, eps=0.0)
        for row in y:
            assert abs(mpmath.fsum(row)) < MP_TOL
            assert abs(mpmath.fsum(t * t for t in row) / len(row) - 1) < MP_TOL
    assert mpmath.mp.dps == before


# ----------------------------------------------------------------------------- forward vs inline NumPy / torch


def test_softmax_matches_inline_numpy_and_masks():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((3, 5))
    mask = rng.random((3, 5)) < 0.6
    mask[:, 0] = True
    expected = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    assert rel_err(R.to_float64(R.softmax(z)), expected) < TOL
    e = np.exp(z) * mask
    out = R.to_float64(R.softmax(z, mask=mask))
    assert rel_err(out, e / e.sum(-1, keepdims=True)) < TOL
    assert np.all(out[~mask] == 0.0)


def test_fully_masked_row_is_zero_for_softmax_and_attention():
    rng = np.random.default_rng(4)
    z = rng.standard_normal((3, 4))
    mask = np.ones((3, 4), dtype=bool)
    mask[1] = False
    s = R.softmax(z, mask=mask)
    assert all(t == 0 for t in s[1])
    q, k, v = rng.standard_normal((B, N, 2)), rng.standard_normal((B, M, 2)), rng.standard_normal((B, M, 3))
    amask = np.ones((B, N, M), dtype=bool)
    amask[0, 2] = False
    out = R.attention(q, k, v, mask=amask)
    assert all(t == 0 for t in out[0, 2])
    ok = np.ones((B, N), dtype=bool)
    ok[0, 2] = False
    assert rel_err(R.to_float64(out)[ok], numpy_attention(q, k, v, amask)[ok]) < TOL


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("scale", [None, 0.7])
def test_attention_matches_inline_numpy_and_torch_sdpa(causal, scale):
    rng = np.random.default_rng(5)
    q, k, v = rng.standard_normal((B, N, 3)), rng.standard_normal((B, M, 3)), rng.standard_normal((B, M, 2))
    mask = rng.random((B, N, M)) < 0.7
    mask[..., 0] = True  # every row keeps key 0, so torch never sees a fully masked row
    allowed = mask & causal_np(N, M) if causal else mask
    ref = R.to_float64(R.attention(q, k, v, mask=mask, causal=causal, scale=scale))
    assert rel_err(ref, numpy_attention(q, k, v, allowed, scale)) < TOL
    expected = F.scaled_dot_product_attention(t64(q), t64(k), t64(v), attn_mask=torch.from_numpy(allowed),
                                              scale=scale).numpy()
    assert rel_err(ref, expected) < TOL
    if scale is None:
        # torch's own causal flag is top-left aligned for N != M, like ours.
        plain = R.to_float64(R.attention(q, k, v, causal=causal))
        torch_plain = F.scaled_dot_product_attention(t64(q), t64(k), t64(v), is_causal=causal).numpy()
        assert rel_err(plain, torch_plain) < TOL


def test_attention_broadcasts_batch_dims():
    rng = np.random.default_rng(6)
    q, k, v = rng.standard_normal((2, 1, N, 2)), rng.standard_normal((3, M, 2)), rng.standard_normal((M, 2))
    out = R.to_float64(R.attention(q, k, v))
    assert out.shape == (2, 3, N, 2)
    assert rel_err(out, numpy_attention(q, k, v)) < TOL


def test_multi_head_attention_matches_torch_module():
    rng = np.random.default_rng(7)
    p = make_mha(rng)
    x = rng.standard_normal((B, N, D))
    mask = rng.random((B, N, N)) < 0.7
    mask[..., 0] = True
    mod = torch_mha_module(p)
    for kw, attn_mask in [({}, None), ({"mask": mask}, torch_not_allowed(mask, H)),
                          ({"causal": True}, torch_not_allowed(causal_np(N, N), H))]:
        ref = R.to_float64(R.multi_head_attention(x, p, **kw))
        expected = mod(t64(x), t64(x), t64(x), attn_mask=attn_mask, need_weights=False)[0].detach().numpy()
        assert rel_err(ref, expected) < TOL


def test_cross_attention_with_k_ne_v_matches_per_head_torch():
    rng = np.random.default_rng(8)
    kw_, vw_, dm = 3, 2, 5
    p = make_mha(rng, k=kw_, v=vw_, dm=dm)
    x, mem = rng.standard_normal((B, N, D)), rng.standard_normal((B, M, dm))
    ref = R.to_float64(R.multi_head_attention(x, p, memory=mem, causal=True))
    qa = t64(x) @ t64(p.w_q) + t64(p.b_q)
    ka = t64(mem) @ t64(p.w_k) + t64(p.b_k)
    va = t64(mem) @ t64(p.w_v) + t64(p.b_v)
    heads = [F.scaled_dot_product_attention(qa[..., i * kw_:(i + 1) * kw_], ka[..., i * kw_:(i + 1) * kw_],
                                            va[..., i * vw_:(i + 1) * vw_], is_causal=True) for i in range(H)]
    expected = (torch.cat(heads, -1) @ t64(p.w_o) + t64(p.b_o)).numpy()
    assert rel_err(ref, expected) < TOL
    # Memory with kdim != D also agrees with nn.MultiheadAttention when K = V = D / H.
    p2 = make_mha(rng, dm=dm)
    mod = torch_mha_module(p2, dm=dm)
    ref2 = R.to_float64(R.multi_head_attention(x, p2, memory=mem))
    expected2 = mod(t64(x), t64(mem), t64(mem), need_weights=False)[0].detach().numpy()
    assert rel_err(ref2, expected2) < TOL


def test_mha_without_biases_and_masked_row_gives_b_o():
    rng = np.random.default_rng(9)
    p = make_mha(rng, bias=False)
    x = rng.standard_normal((N, D))
    ref = R.to_float64(R.multi_head_attention(x, p))
    q, k, v = x @ p.w_q, x @ p.w_k, x @ p.w_v
    cols = [slice(i * 2, (i + 1) * 2) for i in range(H)]
    heads = [numpy_attention(q[:, c], k[:, c], v[:, c]) for c in cols]
    assert rel_err(ref, np.concatenate(heads, -1) @ p.w_o) < TOL
    p = make_mha(rng)
    mask = np.ones((N, N), dtype=bool)
    mask[1] = False
    out = R.to_float64(R.multi_head_attention(x, p, mask=mask))
    np.testing.assert_array_equal(out[1], p.b_o)


@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_layer_norm_matches_torch(eps):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((B, N, D)) * 3 + 1
    g, b = rng.standard_normal(D), rng.standard_normal(D)
    ref = R.to_float64(R.layer_norm(x, g, b, eps=eps))
    expected = F.layer_norm(t64(x), (D,), t64(g), t64(b), eps=eps).numpy()
    assert rel_err(ref, expected) < TOL
    plain = R.to_float64(R.layer_norm(x, eps=eps))
    assert rel_err(plain, F.layer_norm(t64(x), (D,), eps=eps).numpy()) < TOL


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_torch(approximate):
    x = np.linspace(-6, 6, 49)
    ref = R.to_float64(R.gelu(x, approximate))
    expected = F.gelu(t64(x), approximate=approximate).numpy()
    assert rel_err(ref, expected) < TOL
    # Pointwise, relative to each value (torch's 1 + erf(x) cancels for x << 0, so use forms
    # without cancellation: x/2 erfc(-x/sqrt 2) and x / (1 + exp(-2u)) = x/2 (1 + tanh u)).
    if approximate == "none":
        stable = x / 2 * scipy.special.erfc(-x / np.sqrt(2))
    else:
        stable = x / (1 + np.exp(-2 * np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    nz = x != 0
    assert np.max(np.abs(ref[nz] - stable[nz]) / np.abs(stable[nz])) < TOL


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_feed_forward_matches_torch(approximate):
    rng = np.random.default_rng(11)
    p = make_ffn(rng)
    x = rng.standard_normal((B, N, D))
    ref = R.to_float64(R.feed_forward(x, p, approximate))
    hidden = F.gelu(t64(x) @ t64(p.w1) + t64(p.b1), approximate=approximate)
    assert rel_err(ref, (hidden @ t64(p.w2) + t64(p.b2)).numpy()) < TOL


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_transformer_block_matches_torch_encoder_layer(norm, approximate):
    rng = np.random.default_rng(12)
    p = make_block(rng)
    x = rng.standard_normal((B, N, D))
    mod = torch_block_module(p, norm, approximate, 1e-5)
    for kw, src_mask in [({}, None), ({"causal": True}, torch_not_allowed(causal_np(N, N), H))]:
        ref = R.to_float64(R.transformer_block(x, p, norm=norm, approximate=approximate, **kw))
        # requires_grad keeps torch off its inference fast path, so this is the plain composition.
        expected = mod(tgrad(x), src_mask=src_mask).detach().numpy()
        assert rel_err(ref, expected) < TOL


def test_post_ln_block_follows_the_stated_composition():
    rng = np.random.default_rng(13)
    p = make_block(rng)
    x = rng.standard_normal((N, D))
    # Arithmetic done here on the returned mp numbers runs at the caller's precision: raise it.
    with mpmath.workdps(60):
        t1 = R.multi_head_attention(x, p.attn)
        t3 = R.layer_norm(R.to_mp(x) + t1, p.ln1_gamma, p.ln1_beta)
        h = R.layer_norm(t3 + R.feed_forward(t3, p.ffn), p.ln2_gamma, p.ln2_beta)
        diff = h - R.transformer_block(x, p)
        assert max(abs(t) for t in diff.ravel()) < MP_TOL


# ----------------------------------------------------------------------------- gradients


def test_complex_step_matches_mpmath_central_differences():
    rng = np.random.default_rng(14)
    x, g, b = rng.standard_normal((2, 3)), rng.standard_normal(3), rng.standard_normal(3)
    d = rng.standard_normal((2, 3))

    def f(x, gamma, beta):
        return R.gelu(R.layer_norm(x, gamma, beta, eps=0.01), "none")

    grads = R.gradients(f, {"x": x, "gamma": g, "beta": b}, d, as_mp=True)
    with mpmath.workdps(80):
        h = mpmath.mpf(10) ** -25
        inputs = {"x": R.to_mp(x), "gamma": R.to_mp(g), "beta": R.to_mp(b)}
        dm = R.to_mp(d)
        for name, arr in inputs.items():
            for idx in np.ndindex(*arr.shape):
                plus, minus = dict(inputs), dict(inputs)
                plus[name], minus[name] = arr.copy(), arr.copy()
                plus[name][idx] += h
                minus[name][idx] -= h
                fd = (mpmath.fsum((dm * f(**plus)).ravel()) - mpmath.fsum((dm * f(**minus)).ravel())) / (2 * h)
                assert abs(fd - grads[name][idx]) < mpmath.mpf(10) ** -30 * (1 + abs(fd))


@pytest.mark.parametrize("causal", [False, True])
def test_attention_gradients_match_torch_autograd(causal):
    rng = np.random.default_rng(15)
    q, k, v = rng.standard_normal((B, N, 3)), rng.standard_normal((M, 3)), rng.standard_normal((B, M, 2))
    mask = rng.random((B, N, M)) < 0.7
    mask[..., 0] = True
    d = rng.standard_normal((B, N, 2))
    dq, dk, dv = R.attention_gradients(q, k, v, d, mask=mask, causal=causal, scale=0.8)
    assert dk.shape == (M, 3)  # summed over the broadcast batch dim
    tq, tk, tv = tgrad(q), tgrad(k), tgrad(v)
    allowed = mask & causal_np(N, M) if causal else mask
    out = F.scaled_dot_product_attention(tq, tk.expand(B, M, 3), tv, attn_mask=torch.from_numpy(allowed), scale=0.8)
    (out * t64(d)).sum().backward()
    for ours, theirs in [(dq, tq), (dk, tk), (dv, tv)]:
        assert rel_err(ours, theirs.grad.numpy()) < TOL


def test_fully_masked_row_has_zero_gradient():
    rng = np.random.default_rng(16)
    q, k, v = rng.standard_normal((N, 2)), rng.standard_normal((M, 2)), rng.standard_normal((M, 2))
    mask = np.ones((N, M), dtype=bool)
    mask[1] = False
    d = rng.standard_normal((N, 2))
    dq, dk, dv = R.attention_gradients(q, k, v, d, mask=mask)
    assert np.all(dq[1] == 0.0)
    assert np.all(np.isfinite(dq)) and np.any(dq != 0)
    # The masked row's upstream gradient reaches nothing.
    d2 = d.copy()
    d2[1] = 1e3 * rng.standard_normal(2)
    dq2, dk2, dv2 = R.attention_gradients(q, k, v, d2, mask=mask)
    np.testing.assert_array_equal(dq2, dq)
    np.testing.assert_array_equal(dk2, dk)
    np.testing.assert_array_equal(dv2, dv)


def test_mha_gradients_match_torch_autograd():
    rng = np.random.default_rng(17)
    p = make_mha(rng)
    x = rng.standard_normal((B, N, D))
    mask = rng.random((B, N, N)) < 0.7
    mask[..., 0] = True
    d = rng.standard_normal((B, N, D))
    grads = R.multi_head_attention_gradients(x, p, d, mask=mask)
    assert set(grads) == {"x", "w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o"}
    mod = torch_mha_module(p)
    tx = tgrad(x)
    out = mod(tx, tx, tx, attn_mask=torch_not_allowed(mask, H), need_weights=False)[0]
    (out * t64(d)).sum().backward()
    expected = torch_mha_grads(mod)
    expected["x"] = tx.grad.numpy()
    errs = grad_errs(grads, expected)
    assert max(errs.values()) < TOL, errs
    # The key bias cannot change the output: its gradient is exactly 0, which the reference
    # reproduces far below float64 rounding; every other gradient is O(1).
    assert np.max(np.abs(grads["b_k"])) < 1e-60
    for name in set(grads) - {"b_k"}:
        assert rel_err(grads[name], expected[name]) < TOL, name


def test_cross_attention_gradients_match_torch_autograd():
    rng = np.random.default_rng(18)
    dm = 3
    p = make_mha(rng, dm=dm)
    x, mem = rng.standard_normal((1, N, D)), rng.standard_normal((1, M, dm))
    d = rng.standard_normal((1, N, D))
    grads = R.multi_head_attention_gradients(x, p, d, memory=mem, causal=True)
    mod = torch_mha_module(p, dm=dm)
    tx, tm = tgrad(x), tgrad(mem)
    out = mod(tx, tm, tm, attn_mask=torch_not_allowed(causal_np(N, M), H), need_weights=False)[0]
    (out * t64(d)).sum().backward()
    expected = torch_mha_grads(mod, dm_differs=True)
    expected["x"], expected["memory"] = tx.grad.numpy(), tm.grad.numpy()
    errs = grad_errs(grads, expected)
    assert max(errs.values()) < TOL, errs


@pytest.mark.parametrize(
    "norm, approximate, batch, causal",
    [("post", "none", B, False), ("pre", "tanh", 1, True)],
)
def test_block_gradients_match_torch_autograd(norm, approximate, batch, causal):
    rng = np.random.default_rng(19)
    p = make_block(rng)
    x = rng.standard_normal((batch, N, D))
    d = rng.standard_normal((batch, N, D))
    grads = R.transformer_block_gradients(x, p, d, norm=norm, approximate=approximate, causal=causal)
    assert len(grads) == 17 and sum(g.size for g in grads.values()) == batch * N * D + 172
    mod = torch_block_module(p, norm, approximate, 1e-5)
    tx = tgrad(x)
    src_mask = torch_not_allowed(causal_np(N, N), H) if causal else None
    (mod(tx, src_mask=src_mask) * t64(d)).sum().backward()
    expected = {"attn." + k: v for k, v in torch_mha_grads(mod.self_attn).items()}
    expected.update({
        "x": tx.grad.numpy(),
        "ffn.w1": mod.linear1.weight.grad.T.numpy(), "ffn.b1": mod.linear1.bias.grad.numpy(),
        "ffn.w2": mod.linear2.weight.grad.T.numpy(), "ffn.b2": mod.linear2.bias.grad.numpy(),
        "ln1_gamma": mod.norm1.weight.grad.numpy(), "ln1_beta": mod.norm1.bias.grad.numpy(),
        "ln2_gamma": mod.norm2.weight.grad.numpy(), "ln2_beta": mod.norm2.bias.grad.numpy(),
    })
    errs = grad_errs(grads, expected)
    assert max(errs.values()) < TOL, errs
    assert np.max(np.abs(grads["attn.b_k"])) < 1e-60


def test_param_arrays_and_dotted_inputs():
    rng = np.random.default_rng(20)
    p = make_block(rng)
    p.ffn.b2 = None
    names = R.param_arrays(p, "params")
    assert "params.attn.w_q" in names and "params.ffn.w1" in names and "params.ffn.b2" not in names
    assert set(R.param_arrays(p.ffn)) == {"w1", "b1", "w2"}
    x, d = rng.standard_normal((N, D)), rng.standard_normal((N, D))
    # A dotted input replaces the field: differentiating at another w1 changes the result.
    g = R.gradients(lambda x, params: R.transformer_block(x, params), {"params.ffn.b1": p.ffn.b1}, d, x=x, params=p)
    g_other = R.gradients(lambda x, params: R.transformer_block(x, params), {"params.ffn.b1": p.ffn.b1 + 1.0}, d,
                          x=x, params=p)
    assert g["params.ffn.b1"].shape == (FF,)
    assert rel_err(g_other["params.ffn.b1"], g["params.ffn.b1"]) > 1e-6
    with pytest.raises(KeyError, match="no attribute 'w9'"):
        R.gradients(R.feed_forward, {"params.w9": np.zeros(2)}, d, x=x, params=p.ffn)


# ----------------------------------------------------------------------------- the checks can fail


def test_wrong_scale_or_perturbed_weight_is_detected():
    rng = np.random.default_rng(21)
    q, k, v = rng.standard_normal((N, 4)), rng.standard_normal((M, 4)), rng.standard_normal((M, 2))
    expected = F.scaled_dot_product_attention(t64(q), t64(k), t64(v)).numpy()
    assert rel_err(R.to_float64(R.attention(q, k, v)), expected) < TOL
    assert rel_err(R.to_float64(R.attention(q, k, v, scale=1.0)), expected) > 1e-4

    p = make_mha(rng)
    x = rng.standard_normal((N, D))
    mod = torch_mha_module(p)
    expected = mod(t64(x), t64(x), t64(x), need_weights=False)[0].detach().numpy()
    bad = types.SimpleNamespace(**vars(p))
    bad.w_q = p.w_q.copy()
    bad.w_q[1, 2] += 1e-3
    assert rel_err(R.to_float64(R.multi_head_attention(x, bad)), expected) > 1e-7
    # A transposed-convention mistake (heads read in the wrong order) is also caught.
    swapped = types.SimpleNamespace(**vars(p))
    swapped.w_o = np.concatenate([p.w_o[2:], p.w_o[:2]])
    assert rel_err(R.to_float64(R.multi_head_attention(x, swapped)), expected) > 1e-4
    # An ignored mask is caught.
    mask = np.tril(np.ones((N, N), dtype=bool))
    assert rel_err(R.to_float64(R.multi_head_attention(x, p, mask=mask)), expected) > 1e-4


def test_wrong_gradient_is_detected():
    rng = np.random.default_rng(22)
    q, k, v = rng.standard_normal((N, 2)), rng.standard_normal((M, 2)), rng.standard_normal((M, 2))
    d = rng.standard_normal((N, 2))
    dq, dk, dv = R.attention_gradients(q, k, v, d)
    tq, tk, tv = tgrad(q), tgrad(k), tgrad(v)
    (F.scaled_dot_product_attention(tq, tk, tv) * t64(d)).sum().backward()
    assert rel_err(dq, tq.grad.numpy()) < TOL
    # The gradient of a different function (no 1/sqrt(K) scale) differs visibly.
    dq_bad, _, _ = R.attention_gradients(q, k, v, d, scale=1.0)
    assert rel_err(dq_bad, tq.grad.numpy()) > 1e-3


# ----------------------------------------------------------------------------- the float64 implementation


def test_numerics_float64_attention_agrees_with_reference():
    import numerics

    rng = np.random.default_rng(23)
    q, k, v = rng.standard_normal((B, N, 3)), rng.standard_normal((B, M, 3)), rng.standard_normal((B, M, 2))
    mask = rng.random((B, N, M)) < 0.7
    mask[1, 0] = False  # a fully masked row
    d = rng.standard_normal((B, N, 2))
    out = numerics.scaled_dot_product_attention(q, k, v, mask=mask, causal=True)
    assert rel_err(out, R.to_float64(R.attention(q, k, v, mask=mask, causal=True))) < TOL
    ours = numerics.attention_backward(q, k, v, d, mask=mask, causal=True)
    for a, b in zip(ours, R.attention_gradients(q, k, v, d, mask=mask, causal=True)):
        assert rel_err(a, b) < TOL


# ----------------------------------------------------------------------------- argument errors


def test_argument_errors_name_the_argument():
    rng = np.random.default_rng(24)
    q, k, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 6, 4))
    expected = r"k and v must have the same length M: k has shape \(2, 5, 4\), v has shape \(2, 6, 4\)"
    with pytest.raises(ValueError, match=expected):
        R.attention(q, k, v)
    with pytest.raises(ValueError, match="q and k must have the same width K"):
        R.attention(q, k[..., :3], v[:, :5])
    with pytest.raises(ValueError, match=r"mask must broadcast to \(\.\.\., N, M\) = \(2, 3, 5\), got shape \(3, 4\)"):
        R.attention(q, k, v[:, :5], mask=np.ones((3, 4), dtype=bool))
    with pytest.raises(TypeError, match="mask must be a boolean array"):
        R.attention(q, k, v[:, :5], mask=np.ones((3, 5)))
    with pytest.raises(ValueError, match="q contains NaN or Inf"):
        R.attention(np.full((3, 4), np.nan), k[0], v[0, :5])
    with pytest.raises(TypeError, match="causal must be a bool"):
        R.attention(q, k, v[:, :5], causal=1)
    p = make_mha(rng)
    with pytest.raises(ValueError, match=r"params.w_q must have shape \(D, H\*K\) with 5 rows, got shape \(4, 4\)"):
        R.multi_head_attention(rng.standard_normal((3, 5)), p)
    bad = types.SimpleNamespace(**vars(p))
    bad.b_o = np.zeros(3)
    with pytest.raises(ValueError, match=r"params.b_o must have shape \(4,\)"):
        R.multi_head_attention(rng.standard_normal((3, 4)), bad)
    bad = types.SimpleNamespace(**vars(p))
    bad.num_heads = 3
    with pytest.raises(ValueError, match="H\\*K columns with H = 3"):
        R.multi_head_attention(rng.standard_normal((3, 4)), bad)
    blk = make_block(rng)
    blk.attn.w_k = np.zeros((3, 4))
    with pytest.raises(ValueError, match="params.attn.w_k"):
        R.transformer_block(rng.standard_normal((3, 4)), blk)
    with pytest.raises(ValueError, match=r"gamma must have shape \(4,\)"):
        R.layer_norm(np.ones((2, 4)), np.ones(3))
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh'"):
        R.gelu(np.ones(2), approximate="erf")
    with pytest.raises(ValueError, match="norm must be 'post' or 'pre'"):
        R.transformer_block(np.ones((3, 4)), make_block(rng), norm="sandwich")
    with pytest.raises(ValueError, match=r"d_out must have the shape of fn's output \(3, 2\)"):
        R.gradients(R.attention, {"q": q[0]}, np.ones((3, 3)), k=k[0], v=v[0, :5, :2])
    with pytest.raises(TypeError, match="params must have an attribute 'num_heads'"):
        R.multi_head_attention(np.ones((3, 4)), types.SimpleNamespace(w_q=p.w_q))
