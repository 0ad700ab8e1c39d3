"""Faulty SDPA implementations, each with the fault code the battery must name (``FAULT``).

Plain NumPy functions ``fn(q, k, v, ...)`` of shapes q (..., N, K), k (..., M, K), v (..., M, V),
mask True = may attend; the one NaN-gradient mutant is torch. Each bug is one a real codebase shipped.
"""

from __future__ import annotations

import math

import numpy as np


def _softmax(z, axis=-1):
    z = z - np.max(z, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def _masked(s, mask):
    return s if mask is None else np.where(mask, s, -np.inf)


def _safe_softmax(z):
    top = np.max(z, axis=-1, keepdims=True)
    e = np.exp(z - np.where(np.isfinite(top), top, 0.0))
    total = e.sum(-1, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


def _t(k):
    return np.swapaxes(k, -1, -2)


def no_scale(q, k, v, mask=None):
    """The 1/sqrt(d_k) left out."""
    return _safe_softmax(_masked(q @ _t(k), mask)) @ v


def scale_one_over_dk(q, k, v, mask=None):
    """1/d_k instead of 1/sqrt(d_k)."""
    return _safe_softmax(_masked(q @ _t(k) / q.shape[-1], mask)) @ v


def scale_sqrt_d_model(q, k, v, mask=None):
    """1/sqrt(d_model) = 1/sqrt(H d_k) (heads on axis -3)."""
    heads = q.shape[-3] if q.ndim >= 3 else 1
    return _safe_softmax(_masked(q @ _t(k) / math.sqrt(heads * q.shape[-1]), mask)) @ v


def stray_factor(q, k, v, mask=None):
    """A stray factor 1.02 on the scale."""
    return _safe_softmax(_masked(1.02 * q @ _t(k) / math.sqrt(q.shape[-1]), mask)) @ v


def softmax_query_axis(q, k, v, mask=None):
    """Softmax over the queries (axis -2) instead of the keys."""
    s = _masked(q @ _t(k) / math.sqrt(q.shape[-1]), mask)
    top = np.max(s, axis=-2, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(top), top, 0.0))
    total = e.sum(-2, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0) @ v


def no_max_subtraction(q, k, v, mask=None):
    """exp(scores) / sum without subtracting the row maximum: overflows at logits of 1e4."""
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(_masked(q @ _t(k) / math.sqrt(q.shape[-1]), mask))
        return e / e.sum(-1, keepdims=True) @ v


def causal_excludes_diagonal(q, k, v, causal=False):
    """causal with j < i instead of j <= i."""
    s = q @ _t(k) / math.sqrt(q.shape[-1])
    if causal:
        n, m = s.shape[-2:]
        s = np.where(np.tril(np.ones((n, m), bool), -1), s, -np.inf)
    return _safe_softmax(s) @ v


def causal_bottom_right(q, k, v, causal=False):
    """causal=True aligned bottom-right (j <= i + M - N), where it means top-left (torch's)."""
    s = q @ _t(k) / math.sqrt(q.shape[-1])
    if causal:
        n, m = s.shape[-2:]
        s = np.where(np.tril(np.ones((n, m), bool), m - n), s, -np.inf)
    return _safe_softmax(s) @ v


def causal_leaks_one(q, k, v, causal=False):
    """causal with tril(k=1): query i also sees key i + 1."""
    s = q @ _t(k) / math.sqrt(q.shape[-1])
    if causal:
        n, m = s.shape[-2:]
        s = np.where(np.tril(np.ones((n, m), bool), 1), s, -np.inf)
    return _safe_softmax(s) @ v


def causal_always(q, k, v):
    """Decoder-only code: a causal mask always applied, with no flag to ask for it."""
    s = q @ _t(k) / math.sqrt(q.shape[-1])
    n, m = s.shape[-2:]
    return _safe_softmax(np.where(np.tril(np.ones((n, m), bool)), s, -np.inf)) @ v


def mask_after_softmax(q, k, v, mask=None):
    """The mask multiplied into the weights after the softmax, rows not renormalised."""
    a = _softmax(q @ _t(k) / math.sqrt(q.shape[-1]))
    return (a if mask is None else a * mask) @ v


def mask_inverted(q, k, v, mask=None):
    """mask True taken as 'blocked' (nn.MultiheadAttention's polarity)."""
    return _safe_softmax(_masked(q @ _t(k) / math.sqrt(q.shape[-1]), None if mask is None else ~mask)) @ v


def k_for_v(q, k, v, mask=None):
    """The weights multiply K where V belongs."""
    return _safe_softmax(_masked(q @ _t(k) / math.sqrt(q.shape[-1]), mask)) @ k


def gqa_tiled(q, k, v, enable_gqa=False):
    """Key/value heads repeated by tiling (query head h on kv head h % Hkv), not interleaving (h // G)."""
    if enable_gqa:
        g = q.shape[-3] // k.shape[-3]
        k = np.tile(k, (1,) * (k.ndim - 3) + (g, 1, 1))
        v = np.tile(v, (1,) * (v.ndim - 3) + (g, 1, 1))
    return _safe_softmax(q @ _t(k) / math.sqrt(q.shape[-1])) @ v


def float16_sum(q, k, v, mask=None):
    """The softmax's denominator accumulated in float16."""
    s = _masked(q @ _t(k) / math.sqrt(q.shape[-1]), mask)
    top = np.max(s, axis=-1, keepdims=True)
    e = np.exp(s - np.where(np.isfinite(top), top, 0.0))
    total = np.cumsum(e.astype(np.float16), axis=-1, dtype=np.float16)[..., -1:].astype(q.dtype)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0) @ v


def softmax_in_float32(q, k, v, mask=None):
    """torch: the softmax in float32 whatever the inputs' dtype (Hugging Face's eager attention)."""
    import torch

    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(s, dim=-1, dtype=torch.float32), nan=0.0).to(q.dtype) @ v


def dropout_left_on(q, k, v):
    """Dropout (p = 0.1) on the weights at every call, as in training."""
    w = _softmax(q @ _t(k) / math.sqrt(q.shape[-1]))
    return w * (np.random.default_rng().random(w.shape) > 0.1) / 0.9 @ v


def nan_gradient_empty_rows(q, k, v, mask=None):
    """torch: an additive -inf mask, and the output of a row with no allowed key zeroed after the
    softmax (forward fine), but the backward of a softmax of all -inf is NaN and the addition passes
    it on to dq and dk."""
    import torch

    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s + torch.zeros_like(s).masked_fill(~mask, float("-inf"))
    a = torch.softmax(s, dim=-1)
    a = torch.where(torch.isnan(a), torch.zeros_like(a), a)
    return a @ v


#: (mutant, the fault code the battery must name, the validate keywords it needs).
MUTANTS = [
    (no_scale, "scale:none", {}),
    (scale_one_over_dk, "scale:1/d_k", {}),
    (scale_sqrt_d_model, "scale:1/sqrt(d_model)", {}),
    (stray_factor, "scale:stray_factor", {}),
    (softmax_query_axis, "softmax:query_axis", {}),
    (no_max_subtraction, "softmax:no_max_subtraction", {}),
    (causal_excludes_diagonal, "causal:diagonal_excluded", {}),
    (causal_bottom_right, "causal:bottom_right", {}),
    (causal_leaks_one, "causal:future_leak", {}),
    (causal_always, "causal:always", {}),
    (mask_after_softmax, "mask:after_softmax", {}),
    (mask_inverted, "mask:inverted", {}),
    (k_for_v, "values:k_for_v", {}),
    (gqa_tiled, "gqa:tiled", {}),
    (float16_sum, "precision:float16", {}),
    (softmax_in_float32, "precision:float32", {"backend": "torch"}),
    (dropout_left_on, "nondeterministic", {}),
    (nan_gradient_empty_rows, "empty_rows:nan_gradients", {"backend": "torch"}),
]

#: Not a function (the command line's "is an int, not a callable").
MUTANT_COUNT = len(MUTANTS)
