"""Fault models: multi-head attention and the transformer block with one known mistake each.

The battery names a fault by *matching*: the candidate's float64 output is compared with
these models computed on the same weights and inputs, and the models it agrees with name
what it does. Each model is the correct computation with the named parts changed; with no
part changed it is :func:`numerics.multi_head_attention` / :func:`numerics.transformer_block`
(a test holds them equal), written here plainly in float64 NumPy because numerics has no
knobs for mistakes. Shapes use the package glossary (B... batch, N queries, M keys, D model
width, H heads, K key width, V value width per head, F feed-forward width).

A match is a diagnosis, not a verdict: the verdicts come from the properties (agreement by
the tolerance rule, the probes); two different models agree on random weights only by
accident, so a relative distance of :data:`MATCH` (far above float64 rounding, far below
any model's distance from another) identifies one.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
from scipy import optimize, special

from numerics import BlockParams, MHAParams
from verify.validate.tolerance import relative_error

#: Relative distance under which a candidate's float64 output "is" a model's output.
MATCH = 1e-8
#: GELU's tanh-approximation constant (Hendrycks & Gimpel 2016; torch approximate="tanh").
GELU_TANH_C = 0.044715

__all__ = ["MATCH", "GELU_TANH_C", "MHAFault", "BlockFault", "mha_model", "block_model", "match", "fit_gelu_constant",
           "MHA_FAULTS", "block_faults", "allowed_mask", "gelu_model", "layer_norm_model"]


@dataclass(frozen=True)
class MHAFault:
    """Which parts of multi-head attention a model gets wrong (defaults: none).

    split : "transpose" (Q (..., N, H*K) -> (..., H, N, K), correct) or "none" (viewed as
        (..., N, H, K) and used as is: each position attends over the heads, seed 002's
        PrunableMultiHeadAttention).
    merge : "transpose" (heads (..., H, N, V) -> (..., N, H, V) -> (..., N, H*V), correct),
        "reshape" (reshaped to (..., N, H*V) without the transpose) or "tokens" (the heads
        concatenated along the token axis, (..., H*N, V): np.concatenate's default axis 0,
        seed 001's example).
    scores : "softmax" (over the keys, correct), "softmax_query" (over the queries) or "raw"
        (no softmax and no V: the head returns its scaled scores, seed 001's example).
    scale : None (1/sqrt(K), correct) or a name of :data:`SCALES`.
    out_proj : False when W^O (and b_o) is left out.
    causal : True when a causal (top-left) mask is applied though none was asked for.
    gqa : "interleaved" (query head h uses key/value head h // G, G = H / Hkv: torch's
        enable_gqa, HF's repeat_kv, correct) or "tiled" (head h mod Hkv: K and V repeated as a
        block). Only grouped-query weights (num_kv_heads < num_heads) tell the two apart.
    """

    split: str = "transpose"
    merge: str = "transpose"
    scores: str = "softmax"
    scale: str | None = None
    out_proj: bool = True
    causal: bool = False
    gqa: str = "interleaved"

    def parts(self) -> list[str]:
        """The mistakes in words, one a changed part (empty for the correct model)."""
        words = []
        if self.split == "none":
            words.append("heads split without the transpose: Q, K, V viewed as (B, N, H, K) and used as is, so each "
                         "position attends over the heads instead of over the sequence")
        if self.merge == "reshape":
            words.append("heads merged without a transpose: the (B, H, N, V) head outputs reshaped straight to "
                         "(B, N, H*V), mixing tokens and heads")
        if self.merge == "tokens":
            words.append("heads concatenated on the wrong axis: along the tokens, giving (H*N, ...) rows, instead of "
                         "along the features")
        if self.scores == "raw":
            words.append("no softmax: each head returns its scaled scores Q K^T / sqrt(d_k) and never uses V")
        if self.scores == "softmax_query":
            words.append("softmax over the query axis instead of the key axis")
        if self.scale is not None:
            words.append(f"scores scaled by {self.scale} instead of 1/sqrt(d_k)")
        if not self.out_proj:
            words.append("W^O left out: the concatenated heads are returned without the output projection")
        if self.gqa == "tiled":
            words.append("GQA heads tiled instead of interleaved: query head h uses key/value head h mod Hkv (K and "
                         "V repeated as a block) instead of h // G (repeat_interleave, HF's repeat_kv)")
        if self.causal:
            words.append("a causal mask applied though none was asked for (if the attention is causal by design, "
                         "declare it: as_mha_candidate(..., causal=True))")
        return words


#: Scale mistakes, by name: the factor from (K, D, H).
SCALES: dict[str, Callable[[int, int, int], float]] = {
    "1 (no scaling)": lambda k, d, h: 1.0,
    "1/d_k": lambda k, d, h: 1.0 / k,
    "1/sqrt(d_model)": lambda k, d, h: 1.0 / math.sqrt(d),
}


@dataclass(frozen=True)
class BlockFault:
    """Which parts of the transformer block a model gets wrong, relative to the declared
    conventions ``norm`` and ``gelu`` (those are part of the model, not faults by themselves).

    norm : "post" or "pre" (where the layer norms sit).
    ln_axis : -1 (over the features, correct) or -2 (over the tokens).
    gelu : "erf" (x Phi(x)), "tanh" (0.5 x (1 + tanh(sqrt(2/pi)(x + c x^3)))) with constant
        ``gelu_c`` (0.044715 is the convention).
    attn : the attention's own mistakes.
    """

    norm: str = "post"
    ln_axis: int = -1
    gelu: str = "erf"
    gelu_c: float = GELU_TANH_C
    attn: MHAFault = MHAFault()


def _softmax(s: np.ndarray, allowed: np.ndarray | None, axis: int) -> np.ndarray:
    if allowed is not None:
        s = np.where(allowed, s, -np.inf)
    top = np.max(s, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.exp(s - top)
    total = np.sum(e, axis=axis, keepdims=True)
    return e / np.where(total > 0, total, 1.0)  # a row with no allowed key gives 0 (numerics' convention)


def allowed_mask(mask, causal: bool, n: int, m: int) -> np.ndarray | None:
    """The boolean mask (True = may attend) combined with top-left causal, (N, M) or None."""
    allowed = None if mask is None else np.asarray(mask, dtype=bool)
    if causal:
        tri = np.tril(np.ones((n, m), dtype=bool))
        allowed = tri if allowed is None else allowed & tri
    return allowed


def _add(y: np.ndarray, b) -> np.ndarray:
    return y if b is None else y + np.asarray(b, dtype=np.float64)


def mha_model(x, params: MHAParams, fault: MHAFault = MHAFault(), *, memory=None, mask=None,
              causal: bool = False) -> np.ndarray | None:
    """Multi-head attention of ``x`` (..., N, D) with ``fault``'s mistakes, float64 NumPy.

    ``mask`` (True = may attend, broadcastable to (..., N, M)) and ``causal`` (top-left) apply
    to every head. Returns None where the faulty computation has no result at these shapes
    (a product of mismatched shapes, a mask on heads split without the transpose), as the
    faulty code would raise there.
    """
    x = np.asarray(x, dtype=np.float64)
    src = x if memory is None else np.asarray(memory, dtype=np.float64)
    p = {k: (None if v is None else np.asarray(v, dtype=np.float64)) for k, v in params.arrays().items()}
    h, hkv = params.num_heads, params.kv_heads
    if hkv != h and fault.split != "transpose":
        return None  # grouped heads viewed without the transpose: no consistent shapes
    kw = p["w_q"].shape[1] // h
    n, m = x.shape[-2], src.shape[-2]
    q = _add(x @ p["w_q"], p.get("b_q"))
    k = _add(src @ p["w_k"], p.get("b_k"))
    v = _add(src @ p["w_v"], p.get("b_v"))
    q = q.reshape(*q.shape[:-1], h, q.shape[-1] // h)  # (..., L, H, C)
    k, v = (a.reshape(*a.shape[:-1], hkv, a.shape[-1] // hkv) for a in (k, v))  # (..., L, Hkv, C)
    if hkv != h:  # every query head gets its key/value head: h // G (interleaved) or h mod Hkv (tiled)
        g = h // hkv
        k, v = (np.repeat(a, g, axis=-2) if fault.gqa == "interleaved" else
                np.tile(a, (1,) * (a.ndim - 2) + (g, 1)) for a in (k, v))
    allowed = allowed_mask(mask, causal or fault.causal, n, m)
    if fault.split == "transpose":
        q, k, v = (np.swapaxes(a, -3, -2) for a in (q, k, v))  # (..., H, L, C)
        if allowed is not None:
            allowed = np.expand_dims(allowed, -3) if allowed.ndim >= 2 else allowed
    elif allowed is not None or n != m:
        return None
    scale = 1.0 / math.sqrt(kw) if fault.scale is None else SCALES[fault.scale](kw, x.shape[-1], h)
    s = (q @ np.swapaxes(k, -1, -2)) * scale
    if fault.scores == "raw":
        o = s
        if allowed is not None:
            o = np.where(allowed, o, 0.0)
    else:
        w = _softmax(s, allowed, -1 if fault.scores == "softmax" else -2)
        o = w @ v
    lead, width = o.shape[:-3], o.shape[-1]
    if fault.merge == "transpose":
        merged = np.swapaxes(o, -3, -2).reshape(*lead, n, -1)
    elif fault.merge == "reshape":
        merged = o.reshape(*lead, n, -1)
    else:  # "tokens": the per-head (L, C) blocks stacked along the token axis
        heads = o if fault.split == "transpose" else np.swapaxes(o, -3, -2)
        merged = heads.reshape(*lead, heads.shape[-3] * heads.shape[-2], width)
    if not fault.out_proj:
        return merged
    if merged.shape[-1] != p["w_o"].shape[0]:
        return None
    return _add(merged @ p["w_o"], p.get("b_o"))


def layer_norm_model(x: np.ndarray, gamma, beta, eps: float, axis: int = -1) -> np.ndarray:
    """Layer norm over ``axis`` (biased variance), gain and bias on the last axis."""
    mu = x.mean(axis=axis, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axis, keepdims=True)
    y = (x - mu) / np.sqrt(var + eps)
    return _add(y if gamma is None else y * np.asarray(gamma, dtype=np.float64), beta)


def gelu_model(x: np.ndarray, kind: str = "erf", c: float = GELU_TANH_C) -> np.ndarray:
    """x Phi(x) (``"erf"``) or the tanh form with constant ``c`` (``"tanh"``)."""
    if kind == "erf":
        return 0.5 * x * special.erfc(-x / math.sqrt(2.0))
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + c * x ** 3)))


def block_model(x, params: BlockParams, fault: BlockFault = BlockFault(), *, mask=None, causal: bool = False,
                eps: float = 1e-5) -> np.ndarray | None:
    """The transformer block of :mod:`numerics.block` with ``fault``'s mistakes, float64 NumPy."""
    x = np.asarray(x, dtype=np.float64)

    def ln(u, which):
        g, b = getattr(params, f"ln{which}_gamma"), getattr(params, f"ln{which}_beta")
        return layer_norm_model(u, g, b, eps, fault.ln_axis)

    def mha(u):
        return mha_model(u, params.attn, fault.attn, mask=mask, causal=causal)

    def ffn(u):
        f = params.ffn
        hidden = gelu_model(_add(u @ np.asarray(f.w1, dtype=np.float64), f.b1), fault.gelu, fault.gelu_c)
        return _add(hidden @ np.asarray(f.w2, dtype=np.float64), f.b2)

    if fault.norm == "post":
        a = mha(x)
        if a is None or a.shape != x.shape:
            return None
        t3 = ln(x + a, 1)
        return ln(t3 + ffn(t3), 2)
    a = mha(ln(x, 1))
    if a is None or a.shape != x.shape:
        return None
    t = x + a
    return t + ffn(ln(t, 2))


def _grid(space: dict[str, Iterable]) -> list[dict[str, Any]]:
    keys = list(space)
    return [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]


#: Every MHA fault model the battery tries (the correct one first).
MHA_FAULTS: tuple[MHAFault, ...] = tuple(
    MHAFault(**kw) for kw in _grid({
        "split": ("transpose", "none"), "merge": ("transpose", "reshape", "tokens"),
        "scores": ("softmax", "softmax_query", "raw"), "scale": (None, *SCALES), "out_proj": (True, False),
    })
) + (MHAFault(causal=True), MHAFault(gqa="tiled"))


def block_faults(norm: str, gelu: str) -> tuple[BlockFault, ...]:
    """Block fault models around the declared ``norm`` and ``gelu`` (the declared model first):
    the other norm placement, layer norm over the tokens, the other GELU, and the attention
    faults that most often ship (merge without transpose, W^O left out)."""
    attn = (MHAFault(), MHAFault(merge="reshape"), MHAFault(out_proj=False), MHAFault(split="none"))
    other = {"post": "pre", "pre": "post"}[norm]
    out = [BlockFault(**kw) for kw in _grid({
        "norm": (norm, other), "ln_axis": (-1, -2), "gelu": (gelu, {"erf": "tanh", "tanh": "erf"}[gelu]), "attn": attn,
    })]
    return tuple(out)


def match(output: np.ndarray, models: dict[Any, np.ndarray | None], bound: float = MATCH) -> list[tuple[Any, float]]:
    """The models whose output ``output`` agrees with (same shape, relative distance <= bound),
    each with its distance, closest first."""
    output = np.asarray(output, dtype=np.float64)
    found = []
    for key, y in models.items():
        if y is None or y.shape != output.shape:
            continue
        e = relative_error(output, y)
        if e <= bound:
            found.append((key, e))
    return sorted(found, key=lambda item: item[1])


def fit_gelu_constant(output: np.ndarray, model: Callable[[float], np.ndarray | None]) -> tuple[float, float]:
    """The tanh-GELU constant c in [0, 0.5] that brings ``model(c)`` closest to ``output``:
    ``(c, relative distance)`` (bounded Brent, scipy)."""
    output = np.asarray(output, dtype=np.float64)

    def distance(c: float) -> float:
        y = model(float(c))
        return math.inf if y is None or y.shape != output.shape else relative_error(output, y)

    # A coarse scan first: the distance is not unimodal over the whole bracket.
    grid = np.linspace(0.0, 0.5, 51)
    best = grid[int(np.argmin([distance(c) for c in grid]))]
    lo, hi = max(0.0, best - 0.01), min(0.5, best + 0.01)
    res = optimize.minimize_scalar(distance, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12})
    return float(res.x), float(res.fun)
