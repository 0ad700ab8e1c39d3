"""Scaled dot-product attention, forward and hand-written backward.

Shapes (one glossary for the whole package): B... batch dims, N query length,
M key length, K key/query width, V value width.

    S = scale * Q K^T            (..., N, M)
    A = softmax(S) over M, with excluded entries at weight 0
    O = A V                      (..., N, V)

Backward, for an upstream gradient dO (FlashAttention's formulation)::

    dV = A^T dO
    dS = A * (dO V^T - rowsum(dO * O))
    dQ = scale * dS K
    dK = scale * dS^T Q

A query row with no allowed key has A = 0, so its output, weights and every gradient
through it are 0 (PyTorch's ``_safe_softmax`` behaviour), never NaN.
"""

from __future__ import annotations

import math
from functools import partial
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

import array_api_compat

from . import _backend as bk
from . import _parallel
from .softmax import safe_divide, softmax_unnormalised

__all__ = ["scaled_dot_product_attention", "attention_backward", "causal_mask"]


def causal_mask(xp: ModuleType | str, n: int, m: int, device: Any = None) -> Any:
    """Boolean (N, M) mask allowing key j for query i iff j <= i (top-left aligned).

    ``xp`` is an array module (``numpy``, ``cupy``, ``torch``, an array-API namespace) or
    its name; the mask is made on ``device`` (the library's default when None).
    """
    # The bare modules' arange may lack the standard's device= (cupy, numpy < 2): use the
    # array-API namespace of the library instead.
    return _causal_mask(bk.get_namespace(xp), bk.non_negative_int("n", n), bk.non_negative_int("m", m), device)


def _causal_mask(xp: ModuleType, n: int, m: int, device: Any = None) -> Any:
    """:func:`causal_mask` for an array-API namespace ``xp`` (as ``namespace_of`` returns)."""
    rows = xp.arange(n, device=device)[:, None]
    cols = xp.arange(m, device=device)[None, :]
    return cols <= rows


@dataclass(frozen=True)
class _Problem:
    """Checked arguments of one attention call, in the compute dtype."""

    xp: ModuleType
    q: Any
    k: Any
    v: Any
    allowed: Any  # boolean (..., N, M) or None when every key is allowed
    scale: float
    batch: tuple[int, ...]  # broadcast batch dims of q, k, v and mask: those of the output
    # Set when scale * q k^T could overflow: (sign(scale) q 2^-sq, k 2^-sk, factors), operands
    # rescaled by exact powers of 2 (see _shift) and positive factors whose product is
    # |scale| 2^(sq + sk), which take their shifted scores back (see _scores and
    # softmax_unnormalised). When q or k is all 0: (q, k, ()), scores exactly 0 without
    # forming scale * q.
    unit: tuple[Any, Any, tuple[float, ...]] | None = None
    # (sq, sk): the gradients take dS k and dS^T q from k 2^-sk and q 2^-sq, then multiply by
    # scale and the power of 2 (see _scaled_product), so that no intermediate overflows.
    shifts: tuple[int, int] = (0, 0)
    # Normalise the (N, M) weights before the product with v: the unnormalised product could
    # overflow when M max|v| is beyond the dtype's range.
    weights_first: bool = False
    # Set when scores may be large enough to saturate the softmax (|scale q.k| can exceed
    # 2**20), or are all 0 with a scale * q or scale * k that may be huge: the backward then
    # takes rowsum(A * dA) over M rather than rowsum(dO * O) over V.
    saturating: bool = False


def _prepare(q, k, v, mask, causal, scale, check_finite, d_out=None) -> _Problem:
    xp = bk.namespace_of(q=q, k=k, v=v, mask=mask, d_out=d_out)
    for name, x in (("q", q), ("k", k), ("v", v)):
        bk.check_float_array(name, x, xp, min_ndim=2)
    bk.check_same_dtype(q=q, k=k, v=v, d_out=d_out)
    causal = bk.check_flag("causal", causal)
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
    shapes = [bk.batch_of(q), bk.batch_of(k), bk.batch_of(v)] + ([] if mask is None else [bk.batch_of(mask)])
    try:
        batch = bk.broadcast_shapes(*shapes)
    except ValueError:
        listing = f"q has shape {bk.shape_str(q)}, k has shape {bk.shape_str(k)}, v has shape {bk.shape_str(v)}"
        if mask is not None:
            listing += f", mask has shape {bk.shape_str(mask)}"
        names = "q, k and v" if mask is None else "q, k, v and mask"
        raise ValueError(f"the batch dimensions of {names} must broadcast: {listing}") from None
    n, m, width = int(q.shape[-2]), int(k.shape[-2]), int(q.shape[-1])
    if mask is not None:
        bk.check_mask(mask, batch + (n, m), xp, target_desc="(..., N, M) =")
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
    if check_finite:
        for name, x in (("q", q), ("k", k), ("v", v)):
            if not math.isfinite(amax[name]):
                raise ValueError(
                    f"{name} contains NaN or Inf (shape {bk.shape_str(x)}); "
                    "pass check_finite=False to skip this check"
                )
        bk.check_finite(xp, d_out=d_out)

    allowed = mask
    if causal:
        tri = _causal_mask(xp, n, m, device=array_api_compat.device(q))
        allowed = tri if allowed is None else (allowed & tri)
    work = bk.compute_dtype(xp, q.dtype)
    q, k, v = (xp.astype(x, work, copy=False) for x in (q, k, v))
    # |scale q k^T| <= |scale| K max|q| max|k|; shifting by the row max can double it.
    # (Python float products overflow to inf, never raise: inf > limit is the answer wanted.)
    info = xp.finfo(work)
    top, tiny = float(info.max), float(info.smallest_normal)
    limit = top / 4
    aq, ak = amax["q"], amax["k"]
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
    elif finite and (
        abs(scale) * width * aq * ak > limit or abs(scale) * aq > limit or not tiny <= abs(scale) <= top
    ):
        # Scores beyond the range, or a scale the dtype does not hold (float32 and a scale
        # of 1e-60 or 1e39): q and k with largest entries in [2, 4) by exact powers of 2
        # (tiny ones scaled up, else their products would underflow), and the rest of the
        # scale in the factors.
        shifts = (_shift(aq, top), _shift(ak, top))
        sign = 1.0 if scale > 0 else -1.0
        # c = |scale| 2^(sq + sk) may be beyond the range: applied as equal factors that the
        # dtype holds (see softmax_unnormalised).
        total = math.log2(abs(scale)) + shifts[0] + shifts[1]
        pieces = max(1, math.ceil(total / (math.log2(top) - 2)))
        unit_q = q * (sign * 2.0 ** -shifts[0]) if shifts[0] or sign < 0 else q
        unit_k = k * 2.0 ** -shifts[1] if shifts[1] else k
        # A factor below the normal range (float32 and a scale of 1e-60) leaves every score
        # within 32 K tiny of 0, which exp rounds to 1: take tiny, so that masked entries
        # stay -inf (-inf * 0 would be NaN).
        unit = (unit_q, unit_k, (max(2.0 ** (total / pieces), tiny),) * pieces)
    weights_first = amax["v"] * max(m, 1) > limit
    saturating = unit is not None or abs(scale) * width * aq * ak > 2.0**20
    return _Problem(xp, q, k, v, allowed, scale, batch, unit, shifts, weights_first, saturating)


def _shift(a: float, top: float) -> int:
    """``s`` with ``2^-s a`` in [2, 4) (0 when ``a`` is 0), bounded so that ``2^-s`` is a
    normal number of the dtype whose largest value is ``top`` (for a subnormal ``a``,
    ``2^-s a`` is then below 2).

    ``x 2^-s`` is exact unless it falls below the normal range, where the error is far
    below the rounding of the scores or gradients built from the largest entries."""
    return max(math.frexp(a)[1] - 2, 2 - int(math.log2(top))) if a > 0 else 0


def _scores(p: _Problem) -> Any:
    """Scores (..., N, M) with excluded entries at -inf; when ``p.unit`` is set, the scores
    of the unit-scale operands, which :func:`_unnormalised_weights` takes back after the shift."""
    xp = p.xp
    if p.unit is None:
        # Scaling q (N x K) costs less than scaling the scores (N x M).
        scores = (p.q * p.scale) @ xp.matrix_transpose(p.k)
    else:
        scores = p.unit[0] @ xp.matrix_transpose(p.unit[1])
    if p.allowed is None:
        return scores
    if p.allowed.ndim > 2 and bk.broadcast_shapes(bk.batch_of(scores), bk.batch_of(p.allowed)) != bk.batch_of(scores):
        # The mask has batch dims that q and k lack: a fresh array of the broadcast shape.
        return xp.where(p.allowed, scores, -xp.inf)
    return bk.masked_fill(xp, scores, p.allowed, -xp.inf)


def _unnormalised_weights(p: _Problem) -> tuple[Any, Any]:
    """``(e, l)``: unnormalised weights (..., N, M) and their row sums (..., N, 1)."""
    xp = p.xp
    scores = _scores(p)
    if scores.shape[-1] == 0:
        # M = 0: no key at all, as a fully masked row: weights 0, output 0.
        total = xp.zeros((*scores.shape[:-1], 1), dtype=scores.dtype, device=array_api_compat.device(scores))
        return scores, total
    factors = () if p.unit is None else p.unit[2]
    return softmax_unnormalised(xp, scores, axis=-1, overwrite=True, factors=factors)


def _forward(p: _Problem, return_weights: bool) -> tuple[Any, ...]:
    """``(out,)`` or ``(out, weights)`` in the compute dtype; the weights have the output's
    batch dims (those of q, k, v and mask broadcast together)."""
    xp = p.xp
    if p.weights_first:
        weights, out = _weights_and_output(p)
    else:
        e, total = _unnormalised_weights(p)
        # Normalise the (N, V) output rather than the larger (N, M) weights.
        out = safe_divide(xp, e @ p.v, total, overwrite=True)
        weights = safe_divide(xp, e, total, overwrite=True) if return_weights else None
    if not return_weights:
        return (out,)
    if bk.batch_of(weights) != p.batch:
        # Batch dims that only v has: the same weights for each, as separate copies.
        weights = xp.asarray(xp.broadcast_to(weights, (*p.batch, *weights.shape[-2:])), copy=True)
    return out, weights


def _weights_and_output(p: _Problem) -> tuple[Any, Any]:
    """``(weights, out)``: normalised weights (..., N, M) and output (..., N, V), compute dtype.

    The weights have the batch dims of q, k and mask (not those only v has)."""
    xp = p.xp
    e, total = _unnormalised_weights(p)
    weights = safe_divide(xp, e, total, overwrite=True)
    return weights, weights @ p.v


def _gradients(p: _Problem, weights: Any, out: Any, d_out: Any) -> tuple[Any, Any, Any]:
    """``(dq, dk, dv)`` from the forward's weights and output (neither is modified), before
    summing over broadcast batch dims."""
    xp = p.xp
    dv = xp.matrix_transpose(weights) @ d_out
    d_weights = d_out @ xp.matrix_transpose(p.v)
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
    dq = _scaled_product(xp, d_scores, p.k, p.scale, p.shifts[1])
    dk = _scaled_product(xp, xp.matrix_transpose(d_scores), p.q, p.scale, p.shifts[0])
    return dq, dk, dv


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


def _backward(p: _Problem, d_out: Any) -> tuple[Any, Any, Any]:
    """``(dq, dk, dv)``: the forward recomputed, then :func:`_gradients`."""
    return _gradients(p, *_weights_and_output(p), d_out)


def _run(p: _Problem, fn, *extra: Any) -> tuple[Any, ...]:
    """``fn(p, *extra)``, split over CPU cores for large NumPy problems (see _parallel).

    ``extra`` holds arrays with the problem's batch dims (d_out); bind other arguments
    with functools.partial.
    """
    same_batch = all(tuple(x.shape[:-2]) == p.batch for x in (p.q, p.k, p.v))
    n, m = p.q.shape[-2], p.k.shape[-2]
    axis = _parallel.split_axis(p.xp, p.batch, math.prod(p.batch) * n * m) if same_batch else None
    if axis is None:
        return fn(p, *extra)

    def slab(q, k, v, allowed, unit_q, unit_k, *rest):
        unit = None if p.unit is None else (unit_q, unit_k, p.unit[2])
        # q, k and v all have the problem's batch dims (same_batch): the slab's are q's.
        return fn(replace(p, q=q, k=k, v=v, allowed=allowed, unit=unit, batch=bk.batch_of(q)), *rest)

    units = [None, None] if p.unit is None else list(p.unit[:2])
    arrays = [p.q, p.k, p.v, p.allowed, *units, *extra]
    return tuple(_parallel.join_slabs(_parallel.map_slabs(slab, arrays, axis, p.batch), axis))


def scaled_dot_product_attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    mask: Any = None,
    causal: bool = False,
    scale: float | None = None,
    return_weights: bool = False,
    check_finite: bool = True,
) -> Any:
    """Attention ``softmax(scale * q k^T) v`` with optional boolean and causal masks.

    Parameters
    ----------
    q : array (..., N, K)
    k : array (..., M, K)
    v : array (..., M, V)
        One real floating dtype.
    mask : boolean array, optional
        (..., N, M) up to broadcasting; True means query i may attend to key j.
    causal : bool
        Allow key j for query i only when j <= i (combined with ``mask`` by AND).
    scale : float, optional
        Multiplies the scores; default ``1 / sqrt(K)`` (1 when K = 0). Any finite real,
        0 included (every score 0: uniform weights over the allowed keys, as torch's SDPA,
        and dq = dk = 0); NaN, inf and bools are errors.
    return_weights : bool
        Also return the attention weights (..., N, M).
    check_finite : bool
        Raise ValueError when q, k or v hold NaN or Inf, and when the output overflows
        (see Notes).

    Returns
    -------
    out : array (..., N, V), or ``(out, weights)`` when ``return_weights``.
    Rows with no allowed key give output 0 and weights 0. float16/bfloat16 inputs are
    computed in float32 and the results cast back.

    Notes
    -----
    Broadcasting: the batch dims ``...`` of q, k, v and mask broadcast together (NumPy's
    rule, as matmul and torch's SDPA broadcast), on every backend; the output and the
    weights both have the broadcast batch dims of all four, so they line up (weights that
    only v's batch dims distinguish are repeated).

    Empty axes: N = 0 or a batch dim of 0 gives an empty output; M = 0 (no key) is a
    fully masked row, output 0 and weights of shape (..., N, 0); K = 0 makes every score 0
    (an empty dot product), so the weights are uniform over the allowed keys; V = 0 gives
    an empty (..., N, 0) output.

    Magnitudes: finite inputs of any magnitude, up to the dtype's largest value, give the
    exact result rounded, never NaN and never a spurious overflow (the output is a convex
    combination of rows of v). Scores whose magnitude the dtype cannot hold (``|scale q.k|``
    beyond its largest value), or a scale it cannot hold (float32 and 1e39), are computed
    from q and k whose largest entries are brought into [2, 4) by exact powers of 2, and
    taken back after the softmax's shift, where only differences matter; an output beyond the dtype's range is a
    ValueError when ``check_finite`` (else it is inf).

    Devices: q, k, v and mask must be on one device (``array_api_compat.device``); else a
    ValueError naming both arguments and their devices.
    """
    dtype = q.dtype if hasattr(q, "dtype") else None
    return_weights = bk.check_flag("return_weights", return_weights)
    p = _prepare(q, k, v, mask, causal, scale, check_finite)
    results = tuple(p.xp.astype(r, dtype, copy=False) for r in _run(p, partial(_forward, return_weights=return_weights)))
    if check_finite:
        bk.check_result_finite(p.xp, "scaled_dot_product_attention", out=results[0])
    return results if return_weights else results[0]


def attention_backward(
    q: Any,
    k: Any,
    v: Any,
    d_out: Any,
    *,
    mask: Any = None,
    causal: bool = False,
    scale: float | None = None,
    check_finite: bool = True,
) -> tuple[Any, Any, Any]:
    """Gradients ``(dq, dk, dv)`` of ``sum(d_out * attention(q, k, v))``.

    Arguments as in :func:`scaled_dot_product_attention`; ``d_out`` has the output's
    shape (..., N, V), the batch dims of q, k, v and mask broadcast together. Each gradient
    has the shape of its input (summed over the batch dims it was broadcast along). Rows
    with no allowed key contribute 0 to every gradient. Empty axes give empty gradients
    (M = 0: dq is 0). With ``check_finite``, NaN or Inf in any argument, or a gradient
    beyond the dtype's range, is a ValueError. dS k and dS^T q are formed from k and q
    rescaled by powers of 2 when they are huge, so no intermediate overflows unless the
    gradient (or the rounding of dS times scale k or scale q) does; ``scale=0`` gives
    dq = dk = 0 exactly.
    """
    dtype = q.dtype if hasattr(q, "dtype") else None
    p = _prepare(q, k, v, mask, causal, scale, check_finite, d_out=d_out)
    xp = p.xp
    dq, dk, dv = _run(p, _backward, xp.astype(d_out, p.q.dtype, copy=False))
    grads = tuple(
        xp.astype(bk.sum_to_shape(xp, g, tuple(x.shape)), dtype, copy=False) for g, x in ((dq, q), (dk, k), (dv, v))
    )
    if check_finite:
        bk.check_result_finite(xp, "attention_backward", dq=grads[0], dk=grads[1], dv=grads[2])
    return grads
