"""Scaled dot-product attention, forward and hand-written backward.

Shapes (one glossary for the whole package): B... batch dims, N query length,
M key length, K key/query width, V value width; with grouped-query heads, Hq query
heads and Hkv key/value heads, G = Hq / Hkv.

The scores go through one pipeline, in this order (see :func:`_scores`)::

    R = scale * Q K^T                          (..., N, M)
    T = c tanh(R / c)                          softcap c (else T = R)
    Z = T + bias                               additive bias; -inf excludes the key
    Z = -inf where a mask excludes the key     boolean mask, causal, window
    A = softmax(Z) over M, excluded entries at weight 0
    A_d = A * keep / (1 - p)                   dropout with an explicit keep mask
    O = A_d V                                  (..., N, V)
    lse = log sum_j exp(Z_j)                   (..., N), -inf for a row with no allowed key

Backward, for an upstream gradient dO (FlashAttention's formulation)::

    dV = A_d^T dO
    dA = (dO V^T) * keep / (1 - p)
    dZ = A * (dA - rowsum(dO * O))             = d bias (summed to bias's shape)
    dR = dZ * (1 - (T / c)^2)                  softcap (else dR = dZ)
    dQ = scale * dR K
    dK = scale * dR^T Q

A query row with no allowed key has A = 0, so its output, weights and every gradient
through it are 0 (PyTorch's ``_safe_softmax`` behaviour), never NaN.

Large problems without weights asked for run the same pipeline tile by tile, never holding
more than one tile of scores (online softmax forward, backward from the logsumexp): see
:mod:`numerics._tiled` for the rule that chooses.

The layer is a forward/backward pair: :func:`_fwd` returns the output and
:class:`AttentionResiduals` (the checked problem, and the weights unless the tiled path
recomputes them), :func:`_bwd` takes them and d_out and returns :class:`AttentionGradients`.
:func:`attention_vjp` exposes the pair, :func:`attention_backward` runs it once.
"""

from __future__ import annotations

import math
from functools import partial
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Callable

import array_api_compat
import numpy as np

from . import _backend as bk
from . import _parallel, _tiled
from ._band import KeyBand, check_causal, check_window, key_band
from .softmax import safe_divide, softmax_unnormalised

__all__ = [
    "scaled_dot_product_attention",
    "attention_backward",
    "attention_vjp",
    "AttentionGradients",
    "AttentionResiduals",
    "causal_mask",
    "dropout_keep_mask",
]


def causal_mask(xp: ModuleType | str, n: int, m: int, device: Any = None, *, alignment: str = "top_left") -> Any:
    """Boolean (N, M) causal mask, True = may attend.

    ``alignment="top_left"`` (default, torch's ``is_causal``) allows key j for query i iff
    j <= i; ``"bottom_right"`` iff j <= i + M - N (FlashAttention's, KV-cache decoding).
    ``xp`` is an array module (``numpy``, ``cupy``, ``torch``, an array-API namespace) or
    its name; the mask is made on ``device`` (the library's default when None).
    """
    # The bare modules' arange may lack the standard's device= (cupy, numpy < 2): use the
    # array-API namespace of the library instead.
    namespace = bk.get_namespace(xp)
    n, m = bk.non_negative_int("n", n), bk.non_negative_int("m", m)
    if alignment not in ("top_left", "bottom_right"):
        raise ValueError(f"alignment must be 'top_left' or 'bottom_right', got {alignment!r}")
    band = key_band(n, m, alignment, None)
    mask = band.mask(namespace, device=device)
    return _all_true(namespace, (n, m), device) if mask is None else mask


def _all_true(xp: ModuleType, shape: tuple[int, ...], device: Any) -> Any:
    """A boolean array of True (an empty causal mask is all-allowed)."""
    return xp.ones(shape, dtype=xp.bool, device=device)


def dropout_keep_mask(
    shape: tuple[int, ...], dropout_p: float, *, seed: int, xp: ModuleType | str = "numpy", device: Any = None
) -> Any:
    """A boolean keep mask for ``dropout_mask=``: each entry True with probability ``1 - dropout_p``.

    Drawn on the host with ``numpy.random.default_rng(seed)`` (the same mask for the same
    seed and shape on every backend), then put on ``xp`` and ``device``. Pass it together
    with the same ``dropout_p`` to :func:`scaled_dot_product_attention` and
    :func:`attention_backward`, which stay deterministic.

    Parameters
    ----------
    shape : tuple of int
        Usually (..., N, M), or anything broadcastable to the scores' shape.
    dropout_p : float in [0, 1)
    seed : non-negative int
    xp : array module or its name
    device : optional
    """
    p = _check_dropout_p(dropout_p)
    seed = bk.check_seed(seed)
    shape = tuple(bk.non_negative_int("shape entries", s) for s in shape)
    keep = np.random.default_rng(seed).random(shape) >= p
    namespace = bk.get_namespace(xp)
    return namespace.asarray(keep, device=device) if device is not None else namespace.asarray(keep)


def check_softcap(softcap: Any) -> float | None:
    if softcap is None:
        return None
    value = bk.real_number("softcap", softcap, "a positive real number or None")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"softcap must be a finite number > 0 (scores become c tanh(s / c)), got {softcap!r}")
    return value


def _check_dropout_p(dropout_p: Any) -> float:
    value = bk.real_number("dropout_p", dropout_p, "a real number in [0, 1)")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")
    return value


# ------------------------------------------------------------------ grouped-query heads


@dataclass(frozen=True)
class _Groups:
    """How grouped-query heads were folded: query heads (..., Hq, N, K) as (..., Hkv, G, N, K),
    key/value heads (..., Hkv, M, .) as (..., Hkv, 1, M, .). Query head h = kv * G + g uses
    key/value head kv = h // G (torch's enable_gqa order); K and V are never repeated."""

    hq: int
    hkv: int

    @property
    def size(self) -> int:
        return self.hq // self.hkv


def _fold_groups(xp, q, k, v, enable_gqa, **per_score: Any):
    """``(groups, q, k, v, per_score)`` with the head axes folded (groups None: unchanged).

    ``per_score`` holds arrays broadcastable to (..., Hq, N, M) (mask, bias, dropout mask):
    a head axis of Hq is split into (Hkv, G), one of 1 (or none) gets a second axis of 1."""
    if not enable_gqa:
        return None, q, k, v, per_score
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim < 3:
            raise ValueError(
                f"enable_gqa=True needs a head axis: {name} must have shape (..., H, L, C), got shape {bk.shape_str(x)}"
            )
    hq, hkv = int(q.shape[-3]), int(k.shape[-3])
    if int(v.shape[-3]) != hkv:
        raise ValueError(
            f"k and v must have the same number of heads Hkv: k has shape {bk.shape_str(k)}, v has shape {bk.shape_str(v)}"
        )
    if hkv == 0 or hq % hkv:
        raise ValueError(
            f"enable_gqa=True needs the query heads Hq to be a multiple of the key/value heads Hkv: "
            f"q has shape {bk.shape_str(q)} (Hq = {hq}), k has shape {bk.shape_str(k)} (Hkv = {hkv})"
        )
    groups = _Groups(hq, hkv)
    g = groups.size
    q = xp.reshape(q, (*q.shape[:-3], hkv, g, *q.shape[-2:]))
    k, v = xp.expand_dims(k, axis=-3), xp.expand_dims(v, axis=-3)
    folded = {}
    for name, a in per_score.items():
        if a is None:
            folded[name] = None
        elif name == "d_out" and (a.ndim < 3 or int(a.shape[-3]) != hq):
            raise ValueError(
                f"d_out must have the output's shape (..., Hq, N, V) with Hq = {hq} query heads, "
                f"got shape {bk.shape_str(a)}"
            )
        elif a.ndim >= 3 and int(a.shape[-3]) == hq and hq != 1:
            folded[name] = xp.reshape(a, (*a.shape[:-3], hkv, g, *a.shape[-2:]))
        elif a.ndim < 3 or int(a.shape[-3]) == 1:
            folded[name] = xp.expand_dims(a, axis=-3) if a.ndim >= 2 else a
        else:
            raise ValueError(
                f"{name} must broadcast to (..., Hq, N, M) with Hq = {hq} query heads, got shape {bk.shape_str(a)}"
            )
    return groups, q, k, v, folded


def _unfold(xp, x: Any, groups: _Groups | None) -> Any:
    """(..., Hkv, G, L, C) -> (..., Hq, L, C); (..., Hkv, G, N) -> (..., Hq, N) for ndim_tail=1."""
    if groups is None:
        return x
    return xp.reshape(x, (*x.shape[:-4], groups.hq, *x.shape[-2:]))


# ------------------------------------------------------------------ checked problem


@dataclass(frozen=True)
class _Problem:
    """Checked arguments of one attention call, in the compute dtype."""

    xp: ModuleType
    q: Any
    k: Any
    v: Any
    mask: Any  # the caller's boolean mask (..., N, M) up to broadcasting, or None
    band: KeyBand  # causal alignment and window (see numerics._band)
    scale: float
    batch: tuple[int, ...]  # broadcast batch dims of q, k, v, mask, bias, keep: those of the output
    # Set when the scores' product could overflow: (sign(s) q 2^-sq, k 2^-sk, factors), operands
    # rescaled by exact powers of 2 (see _shift) and positive factors whose product is
    # |s| 2^(sq + sk), which take their shifted scores back (see _scores and
    # softmax_unnormalised); s is the scale, divided by the softcap when there is one. When
    # q or k is all 0: (q, k, ()), scores exactly 0 without forming scale * q.
    unit: tuple[Any, Any, tuple[float, ...]] | None = None
    # (sq, sk): the gradients take dS k and dS^T q from k 2^-sk and q 2^-sq, then multiply by
    # scale and the power of 2 (see _scaled_product), so that no intermediate overflows.
    shifts: tuple[int, int] = (0, 0)
    # Normalise the (N, M) weights before the product with v: the unnormalised product could
    # overflow when M max|v| / (1 - p) is beyond the dtype's range.
    weights_first: bool = False
    # Set when scores may be large enough to saturate the softmax (|scores| beyond 2**20), or
    # are all 0 with a scale * q or scale * k that may be huge: the backward then takes
    # rowsum(A * dA) over M rather than rowsum(dO * O) over V.
    saturating: bool = False
    bias: Any = None  # additive, (..., N, M) up to broadcasting, compute dtype
    softcap: float | None = None
    keep: Any = None  # boolean dropout keep mask (..., N, M) up to broadcasting
    dropout_p: float = 0.0
    # Softcapped or biased scores whose sum could overflow: the logits are taken / 8 and the
    # softmax multiplies the shifted ones back by 8.
    downscale: bool = False


def _check_score_array(name: str, a: Any, target: tuple[int, ...], xp: ModuleType) -> None:
    """``a`` must broadcast to ``target`` = (..., N, M)."""
    try:
        out = bk.broadcast_shapes(tuple(a.shape), target)
    except ValueError:
        out = None
    if out != tuple(target):
        raise ValueError(f"{name} must broadcast to (..., N, M) = {tuple(target)}, got shape {bk.shape_str(a)}")


def check_bias_dtype(xp: ModuleType, bias: Any, dtype: Any, owner: str) -> None:
    """``bias`` must be a real floating array of ``owner``'s dtype (a boolean one is a mask)."""
    if bias.dtype == xp.bool:
        raise TypeError("bias must be a real floating array added to the scores (-inf excludes a key), "
                        "got a boolean array; pass a boolean mask as mask=")
    bk.check_float_array("bias", bias, xp)
    if bias.dtype != dtype:
        raise TypeError(f"bias must have {owner}'s dtype {dtype}, got dtype {bias.dtype} (shape {bk.shape_str(bias)})")


def _log2_abs(x: float) -> float:
    return math.log2(abs(x)) if x else -math.inf


def _pow2(e: float) -> float:
    """2^e as a Python float, inf beyond its range."""
    try:
        return 2.0**e
    except OverflowError:
        return math.inf


def _prepare(
    q,
    k,
    v,
    mask,
    causal,
    scale,
    check_finite,
    d_out=None,
    *,
    bias=None,
    window=None,
    softcap=None,
    dropout_p=0.0,
    dropout_mask=None,
) -> _Problem:
    xp = bk.namespace_of(q=q, k=k, v=v, mask=mask, bias=bias, dropout_mask=dropout_mask, d_out=d_out)
    for name, x in (("q", q), ("k", k), ("v", v)):
        bk.check_float_array(name, x, xp, min_ndim=2)
    bk.check_same_dtype(q=q, k=k, v=v, d_out=d_out)
    causal = check_causal(causal)
    window = check_window(window)
    softcap = check_softcap(softcap)
    dropout_p = _check_dropout_p(dropout_p)
    check_finite = bk.check_flag("check_finite", check_finite)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same width K: q has shape {bk.shape_str(q)}, k has shape {bk.shape_str(k)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same length M: k has shape {bk.shape_str(k)}, v has shape {bk.shape_str(v)}"
        )
    if mask is not None and mask.dtype != xp.bool:
        raise TypeError(f"mask must be a boolean array (True = may attend), got dtype {mask.dtype}")
    if bias is not None:
        check_bias_dtype(xp, bias, q.dtype, "q")
    if dropout_mask is not None and dropout_mask.dtype != xp.bool:
        raise TypeError(f"dropout_mask must be a boolean keep mask (True = keep), got dtype {dropout_mask.dtype}")
    if dropout_p > 0 and dropout_mask is None:
        raise ValueError(
            f"dropout_p = {dropout_p} needs an explicit dropout_mask (a boolean keep mask, e.g. from "
            "numerics.dropout_keep_mask); the computation itself draws nothing"
        )
    extras = {"mask": mask, "bias": bias, "dropout_mask": dropout_mask}
    shapes = [bk.batch_of(q), bk.batch_of(k), bk.batch_of(v)] + [bk.batch_of(a) for a in extras.values() if a is not None]
    try:
        batch = bk.broadcast_shapes(*shapes)
    except ValueError:
        listing = f"q has shape {bk.shape_str(q)}, k has shape {bk.shape_str(k)}, v has shape {bk.shape_str(v)}"
        present = [n for n, a in extras.items() if a is not None]
        for name in present:
            listing += f", {name} has shape {bk.shape_str(extras[name])}"
        names = ", ".join(["q", "k", "v", *present][:-1]) + " and " + ["q", "k", "v", *present][-1]
        raise ValueError(f"the batch dimensions of {names} must broadcast: {listing}") from None
    n, m, width = int(q.shape[-2]), int(k.shape[-2]), int(q.shape[-1])
    if mask is not None:
        bk.check_mask(mask, batch + (n, m), xp, target_desc="(..., N, M) =")
    for name in ("bias", "dropout_mask"):
        if extras[name] is not None:
            _check_score_array(name, extras[name], batch + (n, m), xp)
    if d_out is not None:
        expected = batch + (n, int(v.shape[-1]))
        if tuple(d_out.shape) != expected:
            raise ValueError(
                f"d_out must have the output's shape {expected}, got shape {bk.shape_str(d_out)}"
            )
    # K = 0: every score is an empty dot product, 0, whatever the scale; take 1 for it.
    scale = (1.0 / math.sqrt(width) if width else 1.0) if scale is None else bk.check_scale(scale)
    # One reduction per operand gives both the finiteness check and the magnitudes that
    # decide whether the scores or the product with v could overflow.
    amax = {name: bk.max_abs(xp, x) for name, x in (("q", q), ("k", k), ("v", v))}
    bias_amax = 0.0
    if bias is not None and math.prod(bias.shape):
        top_bias = float(xp.max(bias))
        if math.isnan(top_bias) or top_bias == math.inf:
            if check_finite:
                raise ValueError(
                    f"bias contains NaN or +Inf (shape {bk.shape_str(bias)}); only -inf (an excluded key) is "
                    "allowed; pass check_finite=False to skip this check"
                )
            bias_amax = math.inf
        else:
            finite_part = xp.where(bias == -xp.inf, xp.zeros_like(bias), bias)
            bias_amax = bk.max_abs(xp, finite_part)
    if check_finite:
        for name, x in (("q", q), ("k", k), ("v", v)):
            if not math.isfinite(amax[name]):
                raise ValueError(
                    f"{name} contains NaN or Inf (shape {bk.shape_str(x)}); "
                    "pass check_finite=False to skip this check"
                )
        bk.check_finite(xp, d_out=d_out)

    band = key_band(n, m, causal, window)
    work = bk.compute_dtype(xp, q.dtype)
    q, k, v = (xp.astype(x, work, copy=False) for x in (q, k, v))
    bias = None if bias is None else xp.astype(bias, work, copy=False)
    # |s q k^T| <= |s| K max|q| max|k|; shifting by the row max can double it. s is the
    # factor of q k^T inside the softcap's tanh (scale / c), else the scale.
    # (Python float products overflow to inf, never raise: inf > limit is the answer wanted.)
    info = xp.finfo(work)
    top, tiny = float(info.max), float(info.smallest_normal)
    limit = top / 4
    aq, ak = amax["q"], amax["k"]
    log2s = _log2_abs(scale) - (math.log2(softcap) if softcap is not None else 0.0)
    abs_s = _pow2(log2s)
    # NaN or Inf in q or k (check_finite=False): the plain path, NaN propagates.
    finite = math.isfinite(aq) and math.isfinite(ak)
    unit = None
    # Gradients: operands whose largest entry is beyond sqrt(top) or below 1 / sqrt(top) are
    # rescaled (see _scaled_product); the common case needs no extra pass.
    root = math.sqrt(top)
    shifts = tuple(_shift(a, top) if finite and not 1 / root <= a < root else 0 for a in (aq, ak))
    if scale == 0:
        pass  # every score is scale * q.k = 0 exactly (q * 0 is 0 for finite q): the plain path
    elif aq == 0 or ak == 0:
        # Every score is exactly 0: q k^T unscaled (scale * q alone might overflow).
        unit = (q, k, ())
    elif finite and (abs_s * width * aq * ak > limit or abs_s * aq > limit or not tiny <= abs_s <= top):
        # Scores beyond the range, or a scale the dtype does not hold (float32 and a scale
        # of 1e-60 or 1e39): q and k with largest entries in [2, 4) by exact powers of 2
        # (tiny ones scaled up, else their products would underflow), and the rest of the
        # scale in the factors.
        shifts = (_shift(aq, top), _shift(ak, top))
        sign = 1.0 if scale > 0 else -1.0
        # c = |s| 2^(sq + sk) may be beyond the range: applied as equal factors that the
        # dtype holds (see softmax_unnormalised).
        total = log2s + shifts[0] + shifts[1]
        pieces = max(1, math.ceil(total / (math.log2(top) - 2)))
        unit_q = q * (sign * 2.0 ** -shifts[0]) if shifts[0] or sign < 0 else q
        unit_k = k * 2.0 ** -shifts[1] if shifts[1] else k
        # A factor below the normal range (float32 and a scale of 1e-60) leaves every score
        # within 32 K tiny of 0, which exp rounds to 1: take tiny, so that masked entries
        # stay -inf (-inf * 0 would be NaN).
        unit = (unit_q, unit_k, (max(2.0 ** (total / pieces), tiny),) * pieces)
    keep_factor = 1.0 / (1.0 - dropout_p)
    weights_first = amax["v"] * max(m, 1) * keep_factor > limit
    score_bound = abs(scale) * width * aq * ak
    if softcap is not None:
        score_bound = min(score_bound, softcap)
    saturating = unit is not None or score_bound + bias_amax > 2.0**20
    # Logits that could overflow once the bias is added: softcapped scores (<= c), plain
    # scores (<= limit) or scores times a factor below 1; not unit scores with factors >= 1,
    # to which the bias is added divided by the factors (see _scores).
    downscale = False
    if bias is not None or softcap is not None:
        if softcap is not None:
            part = softcap
        elif unit is None:
            part = min(score_bound, limit)
        elif all(f >= 1 for f in unit[2]):
            part = None
        else:
            part = 0.0
        downscale = part is not None and part + bias_amax > limit
    return _Problem(
        xp, q, k, v, mask, band, scale, batch, unit, shifts, weights_first, saturating,
        bias=bias, softcap=softcap, keep=dropout_mask, dropout_p=dropout_p, downscale=downscale,
    )


def _shift(a: float, top: float) -> int:
    """``s`` with ``2^-s a`` in [2, 4) (0 when ``a`` is 0), bounded so that ``2^-s`` is a
    normal number of the dtype whose largest value is ``top`` (for a subnormal ``a``,
    ``2^-s a`` is then below 2).

    ``x 2^-s`` is exact unless it falls below the normal range, where the error is far
    below the rounding of the scores or gradients built from the largest entries."""
    return max(math.frexp(a)[1] - 2, 2 - int(math.log2(top))) if a > 0 else 0


# ------------------------------------------------------------------ the score pipeline

def _rows_of(x: Any, span: tuple[int, int] | None, axis: int) -> Any:
    """``x`` restricted to ``span`` along ``axis`` (-2 rows, -1 columns), unless None or
    broadcast there (size 1)."""
    if x is None or span is None or x.ndim < -axis or int(x.shape[axis]) == 1:
        return x
    index = [slice(None)] * x.ndim
    index[x.ndim + axis] = slice(*span)
    return x[tuple(index)]


def _tile(x: Any, rows: tuple[int, int] | None, cols: tuple[int, int] | None) -> Any:
    """The (rows, cols) tile of an array broadcastable to (..., N, M)."""
    return _rows_of(_rows_of(x, rows, -2), cols, -1)


def _fits(xp, scores: Any, other: Any) -> bool:
    """Whether ``other`` broadcasts to ``scores``'s own shape (so it can be applied in place)."""
    return other.ndim <= 2 or bk.broadcast_shapes(bk.batch_of(scores), bk.batch_of(other)) == bk.batch_of(scores)


def _scaled_up(xp, x: Any, factors: tuple[float, ...], bound: float | None = None) -> Any:
    """``x`` times each factor in turn (into ``x``); with ``bound``, clipped first to
    ``+-bound / factor``, so that a product beyond ``bound`` is ``+-bound`` (saturated), never inf."""
    for factor in factors:
        if bound is not None and factor > 1:
            x = bk.inplace(xp, "clip", x, -bound / factor, bound / factor)
        x = bk.inplace(xp, "multiply", x, factor)
    return x


def _capped_argument(p: _Problem, rows=None, cols=None) -> Any:
    """``y = scale q k^T / c`` for the softcap's ``tanh(y)`` (tile rows x cols); beyond +-64
    (where tanh is +-1 in every dtype) it may be clipped to +-64."""
    xp = p.xp
    if p.unit is None:
        q, k = _rows_of(p.q, rows, -2), _rows_of(p.k, cols, -2)
        return (q * (p.scale / p.softcap)) @ xp.matrix_transpose(k)
    q, k = _rows_of(p.unit[0], rows, -2), _rows_of(p.unit[1], cols, -2)
    return _scaled_up(xp, q @ xp.matrix_transpose(k), p.unit[2], bound=64.0)


def _scores(p: _Problem, rows=None, cols=None) -> tuple[Any, tuple[float, ...]]:
    """``(x, factors)``: the logits of the tile rows ``[i0, i1)`` x columns ``[j0, j1)``
    (default: all), with the final scores ``Z = prod(factors) * x``; excluded entries -inf.

    The one place of the pipeline scale -> softcap -> bias -> masks (dropout follows the
    softmax, see :func:`_dropped`). The tile's mask comes from the caller's mask and the
    band (causal, window) of the same tile, so a tiled computation gets exactly the untiled
    one's scores. ``factors`` is non-empty when the scores' magnitudes are beyond the
    dtype's range (see ``_Problem.unit``) or their sum with the bias could overflow
    (``_Problem.downscale``): softmax_unnormalised multiplies the shifted logits by them.
    """
    xp = p.xp
    factors: tuple[float, ...] = ()
    if p.softcap is not None:
        x = bk.inplace(xp, "tanh", _capped_argument(p, rows, cols))
        x = bk.inplace(xp, "multiply", x, p.softcap / 8 if p.downscale else p.softcap)
    elif p.unit is None:
        q, k = _rows_of(p.q, rows, -2), _rows_of(p.k, cols, -2)
        # Scaling q (N x K) costs less than scaling the scores (N x M).
        x = (q * (p.scale / 8 if p.downscale else p.scale)) @ xp.matrix_transpose(k)
    else:
        q, k = _rows_of(p.unit[0], rows, -2), _rows_of(p.unit[1], cols, -2)
        x = q @ xp.matrix_transpose(k)
        factors = p.unit[2]
        if p.bias is not None and not all(f >= 1 for f in factors):
            # Factors below 1 (a scale below the normal range): the scores are small, take
            # them to their value before adding the bias.
            x, factors = _scaled_up(xp, x, factors), ()
            if p.downscale:
                x = bk.inplace(xp, "multiply", x, 0.125)
    if p.bias is not None:
        b = _tile(p.bias, rows, cols)
        if factors:
            # Z = F u + b = F (u + b / F), F >= 1: the bias divided by the factors one by one.
            for factor in factors:
                b = b / factor
        elif p.downscale:
            b = b * 0.125
        x = bk.inplace(xp, "add", x, b) if _fits(xp, x, b) else x + b
    if p.downscale:
        factors = (8.0,)
    allowed = _allowed(p, rows, cols, x)
    if allowed is None:
        return x, factors
    if not _fits(xp, x, allowed):
        # The mask has batch dims that the scores lack: a fresh array of the broadcast shape.
        return xp.where(allowed, x, -xp.inf), factors
    return bk.masked_fill(xp, x, allowed, -xp.inf), factors


def _allowed(p: _Problem, rows, cols, like: Any) -> Any:
    """Boolean mask of the tile (caller's mask AND band), or None when every key is allowed."""
    band = None if p.band.unbounded else p.band.mask(p.xp, rows, cols, device=array_api_compat.device(like))
    mask = _tile(p.mask, rows, cols)
    if band is None:
        return mask
    return band if mask is None else (mask & band)


def _dropped(p: _Problem, weights: Any, rows=None, cols=None, *, overwrite: bool) -> Any:
    """``weights * keep / (1 - p)`` for the tile (the weights themselves without dropout)."""
    if p.keep is None:
        return weights
    xp = p.xp
    keep = _tile(p.keep, rows, cols)
    if overwrite and _fits(xp, weights, keep):
        weights = bk.masked_fill(xp, weights, keep, 0.0)
    else:
        weights = xp.where(keep, weights, xp.zeros_like(weights))
    return bk.inplace(xp, "multiply", weights, 1.0 / (1.0 - p.dropout_p)) if p.dropout_p else weights


def _unnormalised_weights(p: _Problem, return_lse: bool = False) -> tuple[Any, ...]:
    """``(e, l)``: unnormalised weights (..., N, M) and their row sums (..., N, 1); with
    ``return_lse``, also the logsumexp of the scores (..., N, 1), -inf where ``l`` is 0."""
    xp = p.xp
    scores, factors = _scores(p)
    if scores.shape[-1] == 0:
        # M = 0: no key at all, as a fully masked row: weights 0, output 0.
        total = xp.zeros((*scores.shape[:-1], 1), dtype=scores.dtype, device=array_api_compat.device(scores))
        return (scores, total, total - xp.inf) if return_lse else (scores, total)
    e, total, row_max = softmax_unnormalised(
        xp, scores, axis=-1, overwrite=True, factors=factors, return_max=True
    )
    if not return_lse:
        return e, total
    with np.errstate(over="ignore", divide="ignore"):
        # c max beyond the range is an lse beyond it: inf, reported by the caller's check.
        lse = _scaled_up(xp, xp.asarray(row_max, copy=True), factors) + xp.log(total)
    return e, total, lse


def _forward(p: _Problem, return_weights: bool, return_lse: bool = False) -> tuple[Any, ...]:
    """``(out[, weights][, lse])`` in the compute dtype; the weights (after dropout) and the
    lse (..., N, 1) have the output's batch dims."""
    xp = p.xp
    if p.weights_first:
        weights, out, *lse = _weights_and_output(p, return_lse=return_lse)
        weights = _dropped(p, weights, overwrite=True)
    else:
        e, total, *lse = _unnormalised_weights(p, return_lse=return_lse)
        e = _dropped(p, e, overwrite=True)
        # Normalise the (N, V) output rather than the larger (N, M) weights.
        out = safe_divide(xp, e @ p.v, total, overwrite=True)
        weights = safe_divide(xp, e, total, overwrite=True) if return_weights else None
    results = [out]
    if return_weights:
        results.append(_to_batch(p, weights))
    if return_lse:
        results.append(_to_batch(p, lse[0]))
    return tuple(results)


def _to_batch(p: _Problem, x: Any) -> Any:
    """``x`` with the problem's batch dims (those only v has: copies of the same values)."""
    if bk.batch_of(x) == p.batch:
        return x
    return p.xp.asarray(p.xp.broadcast_to(x, (*p.batch, *x.shape[-2:])), copy=True)


def _weights_and_output(p: _Problem, return_lse: bool = False) -> tuple[Any, ...]:
    """``(weights, out[, lse])``: normalised weights (..., N, M) before dropout, the output
    (..., N, V) after it, compute dtype.

    The weights have the batch dims of q, k, mask and bias (not those only v has)."""
    xp = p.xp
    e, total, *lse = _unnormalised_weights(p, return_lse)
    weights = safe_divide(xp, e, total, overwrite=True)
    out = _dropped(p, weights, overwrite=False) @ p.v
    return (weights, out, *lse)


def _softcap_slope(p: _Problem, rows=None, cols=None) -> Any:
    """``dT/dR = 1 - tanh(R / c)^2`` for the softcap, of the tile rows x cols (default:
    all), recomputed from q and k."""
    xp = p.xp
    t = bk.inplace(xp, "tanh", _capped_argument(p, rows, cols))
    return 1.0 - t * t


def _gradients(p: _Problem, weights: Any, out: Any, d_out: Any) -> tuple[Any, ...]:
    """``(dq, dk, dv[, d_bias])`` from the forward's weights (before dropout) and output
    (neither is modified), before summing over broadcast batch dims; ``d_bias`` (with a
    bias) is dZ summed over the rows or columns along which the bias is broadcast."""
    xp = p.xp
    dv = xp.matrix_transpose(_dropped(p, weights, overwrite=False)) @ d_out
    d_weights = _dropped(p, d_out @ xp.matrix_transpose(p.v), overwrite=True)
    if not p.saturating:
        delta = xp.sum(d_out * out, axis=-1, keepdims=True)
    else:
        # Huge scores saturate the softmax: rows are (nearly) one-hot, and delta =
        # rowsum(A * dA) from dA itself makes a one-hot row's dS exactly 0 (as the true
        # gradient nearly is), where the cheaper (N, V) form rowsum(dO * O) leaves rounding
        # noise of order eps |dO| |v| that the huge q and k then magnify.
        delta = xp.sum(d_weights * weights, axis=-1, keepdims=True)
    d_scores = bk.inplace(xp, "subtract", d_weights, delta)
    d_scores = bk.inplace(xp, "multiply", d_scores, weights)
    extra = ()
    if p.bias is not None:
        extra = (_reduce_broadcast_tail(xp, d_scores, p.bias),)
    if p.softcap is not None:
        d_scores = d_scores * _softcap_slope(p)  # not in place: d_bias may be d_scores itself
    dq = _scaled_product(xp, d_scores, p.k, p.scale, p.shifts[1])
    dk = _scaled_product(xp, xp.matrix_transpose(d_scores), p.q, p.scale, p.shifts[0])
    return (dq, dk, dv, *extra)


def _reduce_broadcast_tail(xp, d: Any, bias: Any) -> Any:
    """``d`` (..., N, M) summed over the last two axes where ``bias`` has size 1 (or lacks
    them); the batch dims are kept, so that slabs of it concatenate (see _run)."""
    axes = tuple(a for a in (-2, -1) if bias.ndim < -a or int(bias.shape[a]) == 1)
    return xp.sum(d, axis=axes, keepdims=True) if axes else d


def _scaled_product(xp: ModuleType, a: Any, b: Any, scale: float, shift: int) -> Any:
    """``scale * (a @ b)``, with ``b`` taken as ``b 2^-shift`` and ``scale 2^shift`` applied
    after the product (see :func:`_times`), so that a huge ``b`` or a scale the dtype does not
    hold overflows no intermediate; with ``scale = 0``, exact zeros (never ``0 * inf``)."""
    if scale == 0:
        shape = bk.broadcast_shapes(bk.batch_of(a), bk.batch_of(b)) + (int(a.shape[-2]), int(b.shape[-1]))
        return xp.zeros(shape, dtype=a.dtype, device=array_api_compat.device(a))
    return _times(xp, a @ (b * 2.0**-shift) if shift else a @ b, scale, shift)


def _times(xp: ModuleType, x: Any, scale: float, shift: int) -> Any:
    """``x scale 2^shift`` (written into ``x``), correctly rounded unless the result is below
    the normal range, even when ``scale`` or the factor is beyond the dtype's range.

    One multiplication when the factor is a normal number of the dtype; else ``x`` times the
    mantissa of ``scale`` and then powers of 2 that the dtype holds, all on one side of 1, so
    that every intermediate lies between ``x`` and the result: none overflows unless the
    result does."""
    info = xp.finfo(x.dtype)
    mantissa, exponent = math.frexp(scale)
    exponent += shift
    if float(info.smallest_normal) <= abs(scale) * 2.0 ** min(shift, 1023) <= float(info.max) / 2:
        return bk.inplace(xp, "multiply", x, math.ldexp(mantissa, exponent))
    x = bk.inplace(xp, "multiply", x, mantissa)
    step = int(math.log2(float(info.max))) - 2  # 2^step and 2^-step are normal numbers
    while exponent:
        piece = max(-step, min(step, exponent))
        x = bk.inplace(xp, "multiply", x, 2.0**piece)
        exponent -= piece
    return x


def _backward(p: _Problem, d_out: Any) -> tuple[Any, ...]:
    """``(dq, dk, dv[, d_bias])``: the forward recomputed, then :func:`_gradients`."""
    return _gradients(p, *_weights_and_output(p), d_out)


def _run(p: _Problem, fn, *extra: Any) -> tuple[Any, ...]:
    """``fn(p, *extra)``, split over CPU cores for large NumPy problems (see _parallel).

    ``extra`` holds arrays with the problem's batch dims (d_out, saved weights); bind other
    arguments with functools.partial. Every result has the problem's batch dims.
    """
    # q with every batch dim (k and v may broadcast along some, as grouped-query heads do):
    # the scores, and so every result, have the problem's batch dims.
    full = tuple(p.q.shape[:-2]) == p.batch
    n, m = p.q.shape[-2], p.k.shape[-2]
    units = (None, None) if p.unit is None else p.unit[:2]
    inputs = dict(q=p.q, k=p.k, v=p.v, mask=p.mask, bias=p.bias, keep=p.keep, unit_q=units[0], unit_k=units[1])
    inputs.update({f"extra{i}": x for i, x in enumerate(extra)})
    cut = _parallel.plan(p.xp, p.batch, math.prod(p.batch) * n * m, inputs) if full else None
    if cut is None:
        return fn(p, *extra)

    def slab(q, k, v, mask, bias, keep, unit_q, unit_k, **rest):
        unit = None if p.unit is None else (unit_q, unit_k, p.unit[2])
        # q has the problem's batch dims (full): the slab's are q's.
        sliced = replace(p, q=q, k=k, v=v, mask=mask, bias=bias, keep=keep, unit=unit, batch=bk.batch_of(q))
        return fn(sliced, *(rest[f"extra{i}"] for i in range(len(extra))))

    return _parallel.split(slab, inputs, cut)


class AttentionGradients(tuple):
    """Gradients of attention: ``q``, ``k``, ``v`` (each of its input's shape) and ``bias``
    (of the bias's own shape; None when no bias was given).

    A tuple ``(dq, dk, dv)`` without a bias and ``(dq, dk, dv, d_bias)`` with one, so code
    written for the former ``(dq, dk, dv)`` return still unpacks and indexes it.
    """

    __slots__ = ()

    def __new__(cls, q: Any, k: Any, v: Any, bias: Any = None) -> "AttentionGradients":
        return super().__new__(cls, (q, k, v) if bias is None else (q, k, v, bias))

    @property
    def q(self) -> Any:
        return self[0]

    @property
    def k(self) -> Any:
        return self[1]

    @property
    def v(self) -> Any:
        return self[2]

    @property
    def bias(self) -> Any:
        return self[3] if len(self) > 3 else None

    def __repr__(self) -> str:
        return f"AttentionGradients(q={self.q!r}, k={self.k!r}, v={self.v!r}, bias={self.bias!r})"


_OPTIONS_DOC = """
    q : array (..., N, K)
    k : array (..., M, K)
    v : array (..., M, V)
        One real floating dtype. With ``enable_gqa``, q is (..., Hq, N, K) and k, v are
        (..., Hkv, M, .).
    mask : boolean array, optional
        (..., N, M) up to broadcasting; True means query i may attend to key j.
    bias : float array, optional
        (..., N, M) up to broadcasting, q's dtype, added to the scores (ALiBi, relative
        position biases, a float attention mask); ``-inf`` entries exclude the key, as a
        False mask entry does. NaN and +inf are errors.
    causal : bool or {"top_left", "bottom_right"}
        True is "top_left" (torch's ``is_causal``): key j allowed for query i only when
        j <= i. "bottom_right" (FlashAttention >= 2.1, KV-cache decoding): j <= i + M - N.
    window : (left, right), optional
        Sliding window: key j allowed for query i only when ``-left <= j - i - delta <= right``
        with ``delta = M - N`` under bottom-right alignment and 0 otherwise; None on a side
        means unbounded. Ints >= 0.
    softcap : float > 0, optional
        Scores ``s -> c tanh(s / c)`` after the scale, before bias and masks (Gemma 2).
    scale : float, optional
        Multiplies the scores; default ``1 / sqrt(K)`` (1 when K = 0). Any finite real,
        0 included (every score 0: uniform weights over the allowed keys, as torch's SDPA,
        and dq = dk = 0); NaN, inf and bools are errors.
    enable_gqa : bool
        Grouped-query heads: Hq a multiple of Hkv, query head h uses key/value head
        ``h // (Hq / Hkv)`` (torch's order). K and V are not repeated in memory. mask,
        bias and dropout_mask broadcast to (..., Hq, N, M).
    dropout_p : float in [0, 1)
    dropout_mask : boolean array, optional
        Keep mask (True = keep), (..., N, M) up to broadcasting: the weights become
        ``weights * keep / (1 - dropout_p)``. Required when ``dropout_p > 0`` (see
        :func:`dropout_keep_mask`); nothing is drawn here.
    check_finite : bool
        Raise ValueError when q, k, v hold NaN or Inf, or the bias NaN or +Inf, and when
        a result overflows."""


def _public_prepare(q, k, v, *, mask, bias, causal, window, softcap, scale, enable_gqa, dropout_p, dropout_mask,
                    check_finite, d_out=None):
    """``(groups, problem)`` for the public functions: grouped heads folded, then checked."""
    enable_gqa = bk.check_flag("enable_gqa", enable_gqa)
    groups = None
    if enable_gqa:
        xp = bk.namespace_of(q=q, k=k, v=v, mask=mask, bias=bias, dropout_mask=dropout_mask, d_out=d_out)
        groups, q, k, v, folded = _fold_groups(xp, q, k, v, True, mask=mask, bias=bias, dropout_mask=dropout_mask,
                                               d_out=d_out)
        mask, bias, dropout_mask = folded["mask"], folded["bias"], folded["dropout_mask"]
        d_out = folded["d_out"]
    p = _prepare(q, k, v, mask, causal, scale, check_finite, d_out, bias=bias, window=window, softcap=softcap,
                 dropout_p=dropout_p, dropout_mask=dropout_mask)
    return groups, p, q, k, v, bias, d_out


def scaled_dot_product_attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    mask: Any = None,
    bias: Any = None,
    causal: bool | str = False,
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    scale: float | None = None,
    enable_gqa: bool = False,
    dropout_p: float = 0.0,
    dropout_mask: Any = None,
    return_weights: bool = False,
    return_lse: bool = False,
    check_finite: bool = True,
) -> Any:
    """Attention ``softmax(scores) v`` with the options of today's attention code.

    The scores go through scale -> softcap -> bias -> masks (boolean mask, causal,
    window) -> softmax -> dropout, in that order.

    Parameters
    ----------
    {options}
    return_weights : bool
        Also return the attention weights (..., N, M), after dropout (so that
        ``out = weights @ v``).
    return_lse : bool
        Also return the logsumexp of each row's final scores (..., N), -inf for a row with
        no allowed key (FlashAttention's ``softmax_lse``; dropout does not enter it).

    Returns
    -------
    out : array (..., N, V); ``(out, weights)``, ``(out, lse)`` or ``(out, weights, lse)``
    as asked. Rows with no allowed key give output 0 and weights 0. float16/bfloat16
    inputs are computed in float32 and the results cast back.

    Notes
    -----
    Broadcasting: the batch dims ``...`` of q, k, v, mask, bias and dropout_mask broadcast
    together (NumPy's rule, as matmul and torch's SDPA broadcast), on every backend; the
    output, the weights and the lse have the broadcast batch dims (weights that only v's
    batch dims distinguish are repeated).

    Empty axes: N = 0 or a batch dim of 0 gives an empty output; M = 0 (no key) is a
    fully masked row, output 0 and weights of shape (..., N, 0); K = 0 makes every score 0
    (an empty dot product), so the weights are uniform over the allowed keys; V = 0 gives
    an empty (..., N, 0) output.

    Magnitudes: finite inputs of any magnitude, up to the dtype's largest value, give the
    exact result rounded, never NaN and never a spurious overflow (the output is a convex
    combination of rows of v, times 1 / (1 - dropout_p)). Scores whose magnitude the dtype
    cannot hold (``|scale q.k|`` beyond its largest value), or a scale it cannot hold
    (float32 and 1e39), are computed from q and k whose largest entries are brought into
    [2, 4) by exact powers of 2, and taken back after the softmax's shift, where only
    differences matter; an output (or lse) beyond the dtype's range is a ValueError when
    ``check_finite`` (else it is inf).

    Devices: every array argument must be on one device (``array_api_compat.device``);
    else a ValueError naming both arguments and their devices.

    Long sequences: without ``return_weights``, problems of at least 2^22 scores
    (``numerics._tiled.MIN_SCORES``, batch x N x M) with ordinary magnitudes are computed
    in tiles (online softmax; tiles that causal or the window exclude are skipped), in
    memory linear in N and M; the result is the untiled one up to rounding.
    """
    dtype = q.dtype if hasattr(q, "dtype") else None
    return_weights = bk.check_flag("return_weights", return_weights)
    return_lse = bk.check_flag("return_lse", return_lse)
    groups, p, *_ = _public_prepare(
        q, k, v, mask=mask, bias=bias, causal=causal, window=window, softcap=softcap, scale=scale,
        enable_gqa=enable_gqa, dropout_p=dropout_p, dropout_mask=dropout_mask, check_finite=check_finite,
    )
    xp = p.xp
    if _tiled.use_tiles(p, return_weights):
        forward = partial(_tiled.forward, return_lse=return_lse)
    else:
        forward = partial(_forward, return_weights=return_weights, return_lse=return_lse)
    results = list(_run(p, forward))
    if return_lse:
        results[-1] = results[-1][..., 0]
        if groups is not None:
            results[-1] = xp.reshape(results[-1], (*results[-1].shape[:-3], groups.hq, results[-1].shape[-1]))
    for i in range(len(results) - (1 if return_lse else 0)):
        results[i] = _unfold(xp, results[i], groups)
    results = [xp.astype(r, dtype, copy=False) for r in results]
    if check_finite:
        bk.check_result_finite(xp, "scaled_dot_product_attention", out=results[0])
        if return_lse:
            lse = results[-1]
            if bool(xp.any(xp.isnan(lse) | (lse == xp.inf))):
                bk.check_result_finite(xp, "scaled_dot_product_attention", lse=lse)
    return results[0] if len(results) == 1 else tuple(results)


def attention_backward(
    q: Any,
    k: Any,
    v: Any,
    d_out: Any,
    *,
    mask: Any = None,
    bias: Any = None,
    causal: bool | str = False,
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    scale: float | None = None,
    enable_gqa: bool = False,
    dropout_p: float = 0.0,
    dropout_mask: Any = None,
    check_finite: bool = True,
) -> AttentionGradients:
    """Gradients of ``sum(d_out * attention(q, k, v, ...))``.

    Parameters
    ----------
    q, k, v, and the keywords
        As in :func:`scaled_dot_product_attention` (the same values as the forward pass).
    d_out : array (..., N, V)
        The output's shape: the batch dims of q, k, v, mask, bias and dropout_mask
        broadcast together (with ``enable_gqa``, (..., Hq, N, V)).

    Returns
    -------
    AttentionGradients
        Fields ``q``, ``k``, ``v`` (each of its input's shape, summed over the batch dims
        it was broadcast along; with ``enable_gqa``, dk and dv summed over each group's
        query heads) and ``bias`` (of bias's own shape, summed over its broadcast axes;
        0 at entries that are -inf or masked; None without a bias). Unpacks as
        ``dq, dk, dv`` (``dq, dk, dv, d_bias`` with a bias).

    Notes
    -----
    Rows with no allowed key contribute 0 to every gradient. Empty axes give empty
    gradients (M = 0: dq is 0). With ``check_finite``, NaN or Inf in any argument, or a
    gradient beyond the dtype's range, is a ValueError. dS k and dS^T q are formed from k
    and q rescaled by powers of 2 when they are huge, so no intermediate overflows unless
    the gradient (or the rounding of dS times scale k or scale q) does; ``scale=0`` gives
    dq = dk = 0 exactly.
    """
    res, fd_out = _residuals(q, k, v, d_out, mask=mask, bias=bias, causal=causal, window=window, softcap=softcap,
                             scale=scale, enable_gqa=enable_gqa, dropout_p=dropout_p, dropout_mask=dropout_mask,
                             check_finite=check_finite)
    return _bwd(replace(res, tiled=_tiled.use_tiles(res.problem, False)), fd_out)


def attention_vjp(
    q: Any,
    k: Any,
    v: Any,
    *,
    mask: Any = None,
    bias: Any = None,
    causal: bool | str = False,
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    scale: float | None = None,
    enable_gqa: bool = False,
    dropout_p: float = 0.0,
    dropout_mask: Any = None,
    check_finite: bool = True,
) -> tuple[Any, Callable[[Any], AttentionGradients]]:
    """Forward pass that keeps what the backward pass needs: ``(out, backward)``.

    ``backward(d_out)`` returns the :class:`AttentionGradients` of ``sum(d_out * out)``,
    as :func:`attention_backward` would, without recomputing the weights: they are kept
    (..., N, M) until ``backward`` is dropped. Problems of more than
    :data:`SAVED_WEIGHTS_MAX` scores that the tiled path takes keep only q, k, v, the
    output and its logsumexp (..., N) instead, and the backward recomputes the scores
    tile by tile from them (not the forward), in memory linear in N and M. ``backward``
    may be called more than once; ``d_out`` has the output's shape, dtype and namespace.
    Arguments as in :func:`scaled_dot_product_attention`; the arrays are held as given
    (not copied).
    """
    res, _ = _residuals(q, k, v, mask=mask, bias=bias, causal=causal, window=window, softcap=softcap,
                        scale=scale, enable_gqa=enable_gqa, dropout_p=dropout_p, dropout_mask=dropout_mask,
                        check_finite=check_finite)
    out, res = _fwd(res)
    xp = res.problem.xp
    if res.check_finite:
        bk.check_result_finite(xp, "attention_vjp", out=out)

    def backward(d_out: Any) -> AttentionGradients:
        """Gradients of ``sum(d_out * out)``; d_out has the output's shape."""
        bk.check_upstream(d_out, like=("q", q), shape=tuple(out.shape), dtype=res.dtype, finite=res.check_finite)
        if res.groups is not None:  # (..., Hq, N, V) as the folded problem's (..., Hkv, G, N, V)
            g = res.groups
            d_out = xp.reshape(d_out, (*d_out.shape[:-3], g.hkv, g.size, *d_out.shape[-2:]))
        return _bwd(res, d_out)

    return out, backward


# ------------------------------------------------------------------ the layer's forward/backward pair

#: :func:`attention_vjp` keeps the weights of problems of up to this many scores (batch x N x
#: M: 256 MiB in float32), so that its backward recomputes nothing; larger problems that
#: the tiled path takes keep only q, k, v, out and the lse (..., N). (Keeping the weights
#: is faster than the tiled recomputation at every size that fits in memory.)
SAVED_WEIGHTS_MAX = 1 << 26


@dataclass(frozen=True)
class AttentionResiduals:
    """What the backward pass needs from the forward pass (the attention layer's residuals).

    ``problem`` is the checked problem (compute dtype, grouped heads folded). On the untiled
    path ``weights`` (..., N, M, before dropout) and ``out`` (..., N, V) are the forward's;
    on the tiled path (``tiled``) ``weights`` is None, ``out`` and ``lse`` (..., N, 1) are
    the forward's, and the backward recomputes the scores tile by tile from them (without
    ``out`` and ``lse``, it recomputes the forward first). With neither, the backward
    recomputes the weights whole.
    """

    problem: _Problem
    groups: _Groups | None  # how grouped-query heads were folded
    shapes: tuple[tuple[int, ...] | None, ...]  # q, k, v, bias as given: the gradients' shapes
    folded: tuple[tuple[int, ...] | None, ...]  # their shapes in the problem
    dtype: Any  # the caller's dtype
    check_finite: bool
    tiled: bool = False
    weights: Any = None
    out: Any = None
    lse: Any = None


def _residuals(q, k, v, d_out=None, **options) -> tuple[AttentionResiduals, Any]:
    """``(residuals, d_out)``: the checked problem with nothing computed yet (d_out, when
    given, checked and folded as the problem)."""
    groups, p, *folded, fd_out = _public_prepare(q, k, v, d_out=d_out, **options)
    shapes = tuple(None if a is None else tuple(a.shape) for a in (q, k, v, options["bias"]))
    folded = tuple(None if a is None else tuple(a.shape) for a in folded)
    res = AttentionResiduals(p, groups, shapes, folded, q.dtype, bool(options["check_finite"]))
    return res, fd_out


def _fwd(res: AttentionResiduals) -> tuple[Any, AttentionResiduals]:
    """``(out, residuals)``: out (..., N, V) in the caller's dtype (grouped heads unfolded),
    the residuals with what the backward needs (see :data:`SAVED_WEIGHTS_MAX`)."""
    p = res.problem
    scores = math.prod(p.batch) * int(p.q.shape[-2]) * int(p.k.shape[-2])
    if _tiled.use_tiles(p, False) and scores > SAVED_WEIGHTS_MAX:
        out, lse = _run(p, partial(_tiled.forward, return_lse=True))
        res = replace(res, tiled=True, out=out, lse=lse)
    else:
        weights, out = _run(p, _weights_and_output)
        res = replace(res, weights=weights, out=out)
    xp = p.xp
    return xp.astype(_unfold(xp, out, res.groups), res.dtype, copy=False), res


def _bwd(res: AttentionResiduals, d_out: Any) -> AttentionGradients:
    """The gradients of ``sum(d_out * out)`` from the residuals; d_out folded as the problem."""
    p = res.problem
    xp = p.xp
    d_out = xp.astype(d_out, p.q.dtype, copy=False)
    if res.weights is not None:
        raw = _run(p, _gradients, res.weights, res.out, d_out)
    elif res.tiled and res.lse is not None:
        raw = _run(p, _tiled.backward, d_out, res.out, res.lse)
    else:
        raw = _run(p, _tiled.backward if res.tiled else _backward, d_out)
    grads = []
    for g, folded, shape in zip(raw, res.folded, res.shapes):
        g = bk.sum_to_shape(xp, g, folded)
        grads.append(xp.astype(xp.reshape(g, shape), res.dtype, copy=False))
    result = AttentionGradients(*grads)
    if res.check_finite:
        bk.check_result_finite(xp, "attention_backward", dq=result.q, dk=result.k, dv=result.v, d_bias=result.bias)
    return result


if scaled_dot_product_attention.__doc__:  # None under python -OO
    scaled_dot_product_attention.__doc__ = scaled_dot_product_attention.__doc__.replace(
        "    {options}", _OPTIONS_DOC.strip("\n")
    )
