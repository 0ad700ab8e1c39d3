"""Transformer-block mutants for kind="block": plain NumPy functions ``fn(x, params)`` with one
known fault each (params a numerics.BlockParams, row convention), the conventions they are
declared with, and the words their diagnosis must contain."""

from __future__ import annotations

import math

import numpy as np
from scipy import special


def _mha(x, a):
    h = a.num_heads

    def split(y):
        b, n, width = y.shape
        return y.reshape(b, n, h, width // h).transpose(0, 2, 1, 3)

    q, k, v = (split(x @ w + b) for w, b in ((a.w_q, a.b_q), (a.w_k, a.b_k), (a.w_v, a.b_v)))
    s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
    w = np.exp(s - s.max(-1, keepdims=True))
    o = (w / w.sum(-1, keepdims=True)) @ v
    b, _, n, c = o.shape
    return o.transpose(0, 2, 1, 3).reshape(b, n, h * c) @ a.w_o + a.b_o


def _ln(x, gamma, beta, axis=-1, eps=1e-5):
    mu = x.mean(axis=axis, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(axis=axis, keepdims=True) + eps) * gamma + beta


def _gelu_erf(u):
    return 0.5 * u * (1 + special.erf(u / math.sqrt(2)))


def _gelu_tanh(u, c=0.044715):
    return 0.5 * u * (1 + np.tanh(math.sqrt(2 / math.pi) * (u + c * u ** 3)))


def _block(x, p, *, norm="post", axis=-1, act=_gelu_erf):
    ffn = lambda u: act(u @ p.ffn.w1 + p.ffn.b1) @ p.ffn.w2 + p.ffn.b2  # noqa: E731
    ln1 = lambda u: _ln(u, p.ln1_gamma, p.ln1_beta, axis)  # noqa: E731
    ln2 = lambda u: _ln(u, p.ln2_gamma, p.ln2_beta, axis)  # noqa: E731
    if norm == "post":
        t = ln1(x + _mha(x, p.attn))
        return ln2(t + ffn(t))
    t = x + _mha(ln1(x), p.attn)
    return t + ffn(ln2(t))


def correct_post(x, params):
    """A correct post-LN block, written plainly (the mutants' baseline: it must PASS)."""
    return _block(x, params)


def layer_norm_over_the_batch(x, params):
    """Both layer norms normalise over the batch (axis 0, a batch norm's statistics): one sample's
    output depends on the others."""
    return _block(x, params, axis=0)


def jittery(x, params):
    """A correct block plus relative noise of 1e-7 from an unseeded generator: two calls differ."""
    out = _block(x, params)
    return out * (1 + 1e-7 * np.random.default_rng().standard_normal(out.shape))


def layer_norm_over_tokens(x, params):
    """Both layer norms normalise over the tokens (axis -2) instead of the features."""
    return _block(x, params, axis=-2)


def gelu_constant_dropped_digit(x, params):
    """tanh GELU with c = 0.04715 (a digit dropped from 0.044715); declared approximate='tanh'."""
    return _block(x, params, act=lambda u: _gelu_tanh(u, 0.04715))


def pre_ln_declared_post(x, params):
    """Computes a pre-LN block; declared (by default) post-LN."""
    return _block(x, params, norm="pre")


def tanh_gelu_declared_erf(x, params):
    """Uses the tanh approximation where the exact (erf) GELU is declared."""
    return _block(x, params, act=_gelu_tanh)


#: name -> (candidate, as_block_candidate keywords, words the diagnosis must contain, property that names it)
MUTANTS = {
    "layer norm over the tokens": (layer_norm_over_tokens, {}, "layer norm over the wrong axis", "position-wise"),
    "GELU constant 0.04715": (gelu_constant_dropped_digit, {"approximate": "tanh"}, "wrong GELU constant", "gelu"),
    "pre-LN declared post-LN": (pre_ln_declared_post, {"norm": "post"}, "pre-LN and post-LN confused",
                                "layer norm placement"),
    "post-LN declared pre-LN": (correct_post, {"norm": "pre"}, "pre-LN and post-LN confused", "layer norm placement"),
    "tanh GELU declared erf": (tanh_gelu_declared_erf, {"approximate": "none"}, "GELU confused", "gelu"),
}

#: Mutants of batch independence and determinism: name -> (candidate, the property that names it, fault code).
REPEAT_MUTANTS = {
    "layer norm over the batch": (layer_norm_over_the_batch, "batch independence", "batch:mixed"),
    "nondeterministic": (jittery, "determinism", "nondeterministic"),
}
