"""SDPA problems: the inputs and options of one call, drawn on the host in float64, and what they
should give (the float64 reference, the plain implementation in the candidate's precision).

Shapes: q (..., H, N, K), k (..., Hkv, M, K), v (..., Hkv, M, V); mask and bias (..., H, N, M).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

import numerics


def round_to(x: np.ndarray | None, dtype: str) -> np.ndarray | None:
    """``x`` rounded to ``dtype`` and returned as float64 (bfloat16 by rounding float32's bits to
    nearest even: NumPy has no bfloat16)."""
    if x is None or x.dtype == np.bool_:
        return x
    if dtype == "bfloat16":
        bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.astype(np.uint32).view(np.float32).astype(np.float64)
    return np.asarray(x, dtype=dtype).astype(np.float64)


def allowed(p: "Problem", shape, *, causal=None, diagonal=0) -> np.ndarray:
    """Boolean (shape) True where query i may attend key j under the problem's mask, causal and
    window (``causal`` overrides the problem's; ``diagonal=1`` leaves the diagonal out)."""
    n, m = shape[-2], shape[-1]
    ok = np.ones(shape, dtype=bool)
    if p.mask is not None:
        ok &= p.mask
    causal = p.causal if causal is None else causal
    i, j = np.arange(n)[:, None], np.arange(m)[None, :]
    offset = (m - n) if causal == "bottom_right" else 0
    if causal:
        ok &= j <= i + offset - diagonal
    if p.window is not None:
        left, right = p.window
        centre = i + offset
        if left is not None:
            ok &= j >= centre - left
        if right is not None:
            ok &= j <= centre + right
    return ok


@dataclass(frozen=True)
class Problem:
    """One SDPA call in our convention (numerics'): mask True = may attend; causal ``"top_left"``
    or ``"bottom_right"``; window ``(left, right)``; GQA query head h on key/value head h // G."""

    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    mask: np.ndarray | None = None
    causal: str | None = None
    bias: np.ndarray | None = None
    window: tuple[int | None, int | None] | None = None
    softcap: float | None = None
    scale: float | None = None
    enable_gqa: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """The keywords for :meth:`Candidate.__call__` (those not set are left out)."""
        opts = {"mask": self.mask, "causal": self.causal, "bias": self.bias, "window": self.window,
                "softcap": self.softcap, "scale": self.scale, "enable_gqa": self.enable_gqa or None}
        return {k: v for k, v in opts.items() if v is not None}

    def rounded(self, dtype: str) -> "Problem":
        """The problem with its arrays rounded to ``dtype`` (the inputs the candidate really gets)."""
        return replace(self, q=round_to(self.q, dtype), k=round_to(self.k, dtype), v=round_to(self.v, dtype),
                       bias=round_to(self.bias, dtype))

    def with_(self, **changes: Any) -> "Problem":
        return replace(self, **changes)

    def describe(self, dtype: str | None = None) -> dict[str, Any]:
        """Shapes and options, for a report's example."""
        d: dict[str, Any] = {"q": list(self.q.shape), "k": list(self.k.shape), "v": list(self.v.shape)}
        if dtype:
            d["dtype"] = dtype
        if self.mask is not None:
            d["mask"] = f"{list(self.mask.shape)}, {int(self.mask.sum())} of {self.mask.size} allowed"
        for key in ("causal", "window", "softcap", "scale"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.bias is not None:
            d["bias"] = list(self.bias.shape)
        if self.enable_gqa:
            d["enable_gqa"] = True
        d.update(self.extra)
        return d

    # ------------------------------------------------------------------ what it should give

    def _numerics_kwargs(self) -> dict[str, Any]:
        return {"mask": self.mask, "bias": self.bias, "causal": self.causal or False, "window": self.window,
                "softcap": self.softcap, "scale": self.scale, "enable_gqa": self.enable_gqa}

    def reference(self, **overrides: Any) -> np.ndarray:
        """Our float64 attention on exactly these arrays (``overrides`` change options: a fault model)."""
        kw = {**self._numerics_kwargs(), **overrides}
        return numerics.scaled_dot_product_attention(self.q, self.k, self.v, **kw)

    def reference_weights(self) -> np.ndarray:
        return numerics.scaled_dot_product_attention(self.q, self.k, self.v, return_weights=True,
                                                     **self._numerics_kwargs())[1]

    def plain(self, dtype: str) -> np.ndarray:
        """Our implementation run in ``dtype`` (float16/bfloat16: computed in float32, the output
        rounded back, as numerics does), on the problem's arrays rounded to ``dtype``."""
        work = "float32" if dtype in ("float16", "bfloat16") else dtype
        p = self.rounded(dtype)
        cast = (lambda a: None if a is None else a.astype(work))
        out = numerics.scaled_dot_product_attention(cast(p.q), cast(p.k), cast(p.v), **{
            **p._numerics_kwargs(), "bias": cast(p.bias)})
        return round_to(np.asarray(out, dtype=np.float64), dtype)

    def enlarged(self, rng: np.random.Generator, *, square: bool = False) -> "Problem":
        """A problem with the same options, heads and d_k but at least 6 queries and keys and 3
        value columns (new random arrays; a mask or bias redrawn to the new shape); ``square``: N = M."""
        *lead_q, n, dk = self.q.shape
        *lead_k, m, dv = self.v.shape
        n, m, dv = max(n, 6), max(m, 6), max(dv, 3)
        if square:
            n = m = max(n, m)
        q = rng.standard_normal((*lead_q, n, dk))
        k = rng.standard_normal((*lead_k, m, dk))
        v = rng.standard_normal((*lead_k, m, dv))
        if self.enable_gqa:  # (..., Hq) and (..., Hkv): the scores have the query heads
            scores = (*np.broadcast_shapes(tuple(lead_q[:-1]), tuple(lead_k[:-1])), lead_q[-1], n, m)
        else:
            scores = (*np.broadcast_shapes(tuple(lead_q), tuple(lead_k)), n, m)
        mask = None if self.mask is None else mask_with_keys(rng, scores)
        bias = None if self.bias is None else rng.standard_normal(scores)
        return replace(self, q=q, k=k, v=v, mask=mask, bias=bias)

    def score_magnitude(self) -> float:
        """The largest |scale q.k| (after the softcap, plus |bias|): how ill-conditioned the softmax is."""
        k = self.k
        if self.enable_gqa:
            k = np.repeat(k, self.q.shape[-3] // k.shape[-3], axis=-3)
        scale = 1 / np.sqrt(self.q.shape[-1]) if self.scale is None else self.scale
        s = np.abs(scale * (self.q @ np.swapaxes(k, -1, -2))) if self.q.size and k.size else np.zeros(1)
        if self.softcap is not None:
            s = np.minimum(s, self.softcap)
        if self.bias is not None:
            s = s + np.abs(self.bias)
        s = np.where(allowed(self, s.shape), s, 0.0)  # blocked keys do not enter the result
        return float(np.max(s, initial=0.0))

    @property
    def size(self) -> int:
        return int(self.q.size + self.k.size + self.v.size)


def draw(rng: np.random.Generator, batch: tuple[int, ...], heads: int, n: int, m: int, dk: int, dv: int, *,
         kv_heads: int | None = None, scale_inputs: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Standard normal q (*batch, H, N, K), k (*batch, Hkv, M, K), v (*batch, Hkv, M, V); ``heads=0``
    leaves the head axis out."""
    hk = heads if kv_heads is None else kv_heads
    lead_q = (*batch, heads) if heads else batch
    lead_k = (*batch, hk) if heads else batch
    q = rng.standard_normal((*lead_q, n, dk)) * scale_inputs
    k = rng.standard_normal((*lead_k, m, dk)) * scale_inputs
    v = rng.standard_normal((*lead_k, m, dv))
    return q, k, v


def mask_with_keys(rng, shape, density=0.6):
    """A random mask where every query row keeps at least one key and blocks at least one."""
    mask = rng.random(shape) < density
    m = shape[-1]
    first = rng.integers(0, m, size=shape[:-1])
    np.put_along_axis(mask, first[..., None], True, axis=-1)
    if m > 1:
        np.put_along_axis(mask, ((first + 1) % m)[..., None], False, axis=-1)
    return mask
