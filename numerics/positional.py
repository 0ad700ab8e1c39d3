"""Position information for attention: rotary embedding (RoPE) and ALiBi biases.

Rotary embedding (Su et al., RoFormer, arXiv 2104.09864) rotates pairs of coordinates of
every query and key row by angles ``pos * theta^(-2i/K)``, i = 0 .. K/2 - 1, so that the
score ``q_m . k_n`` depends on the positions only through ``m - n``. Two pairings are in use
and give different numbers for the same weights:

* ``style="half"`` (rotate-half: GPT-NeoX, Llama in Hugging Face transformers): coordinate
  i is paired with i + K/2;
* ``style="interleaved"`` (RoFormer, GPT-J, Meta's Llama reference code): coordinate 2i
  with 2i + 1.

ALiBi (Press et al., arXiv 2108.12409) adds ``-slope_h |j - i - delta|`` to head h's scores,
with the paper's head slopes (:func:`alibi_slopes`).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

from . import _backend as bk
from ._band import check_causal

__all__ = ["rotary_embedding", "rotary_embedding_backward", "alibi_slopes", "alibi_bias"]

_STYLES = ("half", "interleaved")


def _check_rope(x: Any, positions: Any, theta: Any, style: Any, name: str = "x") -> tuple[ModuleType, Any, float]:
    xp = bk.namespace_of(**{name: x}, positions=positions)
    bk.check_float_array(name, x, xp, min_ndim=2)
    if style not in _STYLES:
        raise ValueError(f"style must be 'half' (rotate-half, GPT-NeoX/HF Llama) or 'interleaved' "
                         f"(RoFormer/GPT-J), got {style!r}")
    theta = bk.real_number("theta", theta, "a real number > 0")
    if not (math.isfinite(theta) and theta > 0):
        raise ValueError(f"theta must be a finite number > 0, got {theta!r}")
    width = int(x.shape[-1])
    if width % 2:
        raise ValueError(
            f"rotary embedding rotates pairs of coordinates: the last dimension K of {name} must be even, "
            f"got shape {bk.shape_str(x)}"
        )
    if positions is not None:
        if xp.isdtype(positions.dtype, "bool") or not xp.isdtype(positions.dtype, ("integral", "real floating")):
            raise TypeError(f"positions must be an integer or real floating array, got dtype {positions.dtype}")
        target = tuple(int(s) for s in x.shape[:-1])
        try:
            ok = bk.broadcast_shapes(tuple(positions.shape), target) == target
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"positions must broadcast to {name}'s shape without its last axis (..., N) = {target}, "
                f"got shape {bk.shape_str(positions)}"
            )
        if not bool(xp.all(xp.isfinite(xp.astype(positions, xp.float64)))):
            raise ValueError("positions contains NaN or Inf")
    return xp, positions, theta


def _cos_sin(xp: ModuleType, x: Any, positions: Any, theta: float) -> tuple[Any, Any]:
    """cos and sin of the angles (..., N, K/2) in x's compute dtype, computed in float64."""
    device = array_api_compat.device(x)
    half = int(x.shape[-1]) // 2
    if positions is None:
        positions = xp.arange(int(x.shape[-2]), dtype=xp.float64, device=device)
    else:
        positions = xp.astype(positions, xp.float64)
    exponents = xp.arange(half, dtype=xp.float64, device=device) * (-2.0 / (2 * half)) if half else None
    if half == 0:
        empty = xp.zeros((*x.shape[:-1], 0), dtype=bk.compute_dtype(xp, x.dtype), device=device)
        return empty, empty
    inv_freq = xp.exp(exponents * math.log(theta))  # theta^(-2i/K)
    angles = positions[..., None] * inv_freq
    work = bk.compute_dtype(xp, x.dtype)
    return xp.astype(xp.cos(angles), work), xp.astype(xp.sin(angles), work)


def _rotate(xp: ModuleType, x: Any, cos: Any, sin: Any, style: str) -> Any:
    """Each pair (a, b) of x becomes (a cos - b sin, b cos + a sin)."""
    half = int(x.shape[-1]) // 2
    if style == "half":
        a, b = x[..., :half], x[..., half:]
        return xp.concat([a * cos - b * sin, b * cos + a * sin], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    pairs = xp.stack([a * cos - b * sin, b * cos + a * sin], axis=-1)
    return xp.reshape(pairs, (*pairs.shape[:-2], 2 * half))


def rotary_embedding(x: Any, positions: Any = None, *, theta: float = 10000.0, style: str = "half") -> Any:
    """Rotary position embedding of the rows of ``x``.

    Parameters
    ----------
    x : array (..., N, K)
        Queries or keys (one head each, or with a head axis in ``...``); K even.
    positions : integer or float array, optional
        Broadcastable to (..., N); default 0 .. N-1 (the same for every batch entry).
    theta : float > 0
        Frequency base: pair i turns by ``pos * theta^(-2i/K)``.
    style : {"half", "interleaved"}
        "half" pairs coordinate i with i + K/2 (rotate-half: GPT-NeoX, Llama in HF
        transformers); "interleaved" pairs 2i with 2i + 1 (RoFormer, GPT-J, Meta's Llama).

    Returns
    -------
    array (..., N, K), x's dtype; each pair (a, b) becomes (a cos t - b sin t, b cos t + a sin t).
    The angles and their cos and sin are computed in float64, then rounded to x's compute
    dtype (float32 for half precisions).
    """
    xp, positions, theta = _check_rope(x, positions, theta, style)
    cos, sin = _cos_sin(xp, x, positions, theta)
    work = bk.compute_dtype(xp, x.dtype)
    return xp.astype(_rotate(xp, xp.astype(x, work, copy=False), cos, sin, style), x.dtype, copy=False)


def rotary_embedding_backward(
    d_out: Any, positions: Any = None, *, theta: float = 10000.0, style: str = "half"
) -> Any:
    """Gradient of ``sum(d_out * rotary_embedding(x, positions, ...))`` with respect to x.

    The embedding is a rotation, linear in x: its gradient is ``d_out`` rotated back (by
    the opposite angles). Arguments as in :func:`rotary_embedding`; returns d_out's shape.
    """
    xp, positions, theta = _check_rope(d_out, positions, theta, style, name="d_out")
    cos, sin = _cos_sin(xp, d_out, positions, theta)
    work = bk.compute_dtype(xp, d_out.dtype)
    return xp.astype(_rotate(xp, xp.astype(d_out, work, copy=False), cos, -sin, style), d_out.dtype, copy=False)


def alibi_slopes(num_heads: int) -> list[float]:
    """The ALiBi paper's head slopes.

    For H a power of 2, the geometric sequence ``2^(-8 h / H)``, h = 1 .. H. Otherwise (the
    paper's reference code, ``get_slopes``), with P the largest power of 2 below H: the P
    slopes for P heads, then the first H - P of every other slope for 2P heads,
    ``2^(-4 (2 m + 1) / P)``, m = 0 .. H - P - 1. Each is computed as one power of 2
    (Python's float pow), not as the reference code's running product ``start * ratio^i``,
    which can differ from it in the last bit.
    """
    h = bk.positive_int("num_heads", num_heads)
    p = 1 << (h.bit_length() - 1)
    slopes = [2.0 ** (-8.0 * i / p) for i in range(1, p + 1)]
    slopes += [2.0 ** (-4.0 * (2 * i + 1) / p) for i in range(h - p)]
    return slopes


def alibi_bias(
    num_heads: int,
    n: int,
    m: int,
    *,
    causal: bool | str = False,
    xp: ModuleType | str = "numpy",
    dtype: Any = None,
    device: Any = None,
) -> Any:
    """ALiBi bias (H, N, M): ``-slope_h |j - i - delta|`` for query i and key j.

    ``delta = M - N`` when ``causal="bottom_right"`` (queries aligned with the last keys, as
    in KV-cache decoding), else 0. ``causal`` sets only the alignment: pass the same value
    to :func:`numerics.scaled_dot_product_attention` to mask the future keys. Pass the
    result as ``bias=`` (it broadcasts over a batch axis in front of the heads).

    Parameters
    ----------
    num_heads, n, m : int
        H (>= 1), N and M (>= 0).
    causal : bool or {"top_left", "bottom_right"}
    xp : array module or its name
    dtype : real floating dtype of xp or its name, optional (default float64)
    device : optional
    """
    slopes = alibi_slopes(num_heads)
    n, m = bk.non_negative_int("n", n), bk.non_negative_int("m", m)
    delta = m - n if check_causal(causal) == "bottom_right" else 0
    namespace = bk.get_namespace(xp)
    dtype = bk.resolve_dtype(namespace, dtype)
    distance = np.abs(np.arange(m)[None, :] - np.arange(n)[:, None] - delta).astype(np.float64)
    bias = 0.0 - np.asarray(slopes)[:, None, None] * distance  # one rounding per entry; +0 on the diagonal
    out = namespace.asarray(bias, device=device) if device is not None else namespace.asarray(bias)
    return namespace.astype(out, dtype)
