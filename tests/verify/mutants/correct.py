"""Correct SDPA implementations written differently from ours; the battery must pass each."""

from __future__ import annotations

import math

import numpy as np


def _allowed(n, m, mask, causal):
    ok = np.ones((n, m), dtype=bool)
    if causal:
        ok = np.tril(ok)
    return ok if mask is None else ok & mask


def logsumexp_form(q, k, v, mask=None, causal=False, scale=None):
    """out = exp(s - logsumexp(s)) @ v, the logsumexp from scipy; rows with no key give 0."""
    from scipy.special import logsumexp

    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = scale * (q @ np.swapaxes(k, -1, -2))
    s = np.where(_allowed(s.shape[-2], s.shape[-1], mask, causal), s, -np.inf)
    with np.errstate(divide="ignore"):
        lse = logsumexp(s, axis=-1, keepdims=True)
    w = np.exp(s - np.where(np.isfinite(lse), lse, 0.0))
    return np.where(np.isfinite(lse), w, 0.0) @ v


def online_softmax(q, k, v, mask=None, causal=False, scale=None, block=16):
    """FlashAttention's forward: key blocks of ``block``, a running maximum, rescaled partial sums."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    n, m = q.shape[-2], k.shape[-2]
    ok = _allowed(n, m, mask, causal)
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], ok.shape[:-2])
    top = np.full((*batch, n, 1), -np.inf)
    total = np.zeros((*batch, n, 1))
    acc = np.zeros((*batch, n, v.shape[-1]))
    for start in range(0, m, block):
        kb, vb = k[..., start:start + block, :], v[..., start:start + block, :]
        s = scale * (q @ np.swapaxes(kb, -1, -2))
        s = np.where(ok[..., start:start + block], s, -np.inf)
        new_top = np.maximum(top, np.max(s, axis=-1, keepdims=True))
        safe = np.where(np.isfinite(new_top), new_top, 0.0)
        correction = np.exp(np.where(np.isfinite(top), top - safe, -np.inf))
        p = np.exp(s - safe)
        total = total * correction + p.sum(-1, keepdims=True)
        acc = acc * correction + p @ vb
        top = new_top
    return np.divide(acc, total, out=np.zeros_like(acc), where=total > 0).astype(q.dtype)


def torch_masked_fill(q, k, v, mask=None, causal=False, scale=None):
    """torch: scores, masked_fill with -inf, torch.softmax, NaN rows zeroed (the hand-written form)."""
    import torch

    s = (q @ k.transpose(-2, -1)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    return torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0) @ v
