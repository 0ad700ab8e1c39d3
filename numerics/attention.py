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
    batch: tuple[int, ...]


def _prepare(q, k, v, mask, causal, scale, check_finite, d_out=None) -> _Problem:
    xp = bk.namespace_of(q=q, k=k, v=v, mask=mask, d_out=d_out)
    for name, x in (("q", q), ("k", k), ("v", v)):
        bk.check_float_array(name, x, xp, min_ndim=2)
    bk.check_same_dtype(q=q, k=k, v=v, d_out=d_out)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same width K: q has shape {bk.shape_str(q)}, k has shape {bk.shape_str(k)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same length M: k has shape {bk.shape_str(k)}, v has shape {bk.shape_str(v)}"
        )
    try:
        batch = bk.broadcast_shapes(tuple(q.shape[:-2]), tuple(k.shape[:-2]), tuple(v.shape[:-2]))
    except ValueError:
        raise ValueError(
            "the batch dimensions of q, k and v must broadcast: "
            f"q has shape {bk.shape_str(q)}, k has shape {bk.shape_str(k)}, v has shape {bk.shape_str(v)}"
        ) from None
    n, m = int(q.shape[-2]), int(k.shape[-2])
    if mask is not None:
        bk.check_mask(mask, batch + (n, m), xp, target_desc="(..., N, M) =")
    if d_out is not None:
        expected = batch + (n, int(v.shape[-1]))
        if tuple(d_out.shape) != expected:
            raise ValueError(
                f"d_out must have the output's shape {expected}, got shape {bk.shape_str(d_out)}"
            )
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else bk.check_scale(scale)
    if check_finite:
        bk.check_finite(xp, q=q, k=k, v=v, d_out=d_out)

    allowed = mask
    if causal:
        tri = _causal_mask(xp, n, m, device=array_api_compat.device(q))
        allowed = tri if allowed is None else (allowed & tri)
    work = bk.compute_dtype(xp, q.dtype)
    q, k, v = (xp.astype(x, work, copy=False) for x in (q, k, v))
    return _Problem(xp, q, k, v, allowed, scale, batch)


def _unnormalised_weights(p: _Problem) -> tuple[Any, Any]:
    """``(e, l)``: unnormalised weights (..., N, M) and their row sums (..., N, 1)."""
    xp = p.xp
    # Scaling q (N x K) costs less than scaling the scores (N x M).
    scores = (p.q * p.scale) @ xp.matrix_transpose(p.k)
    if p.allowed is not None:
        scores = bk.masked_fill(xp, scores, p.allowed, -xp.inf)
    return softmax_unnormalised(xp, scores, axis=-1, overwrite=True)


def _forward(p: _Problem, return_weights: bool) -> tuple[Any, ...]:
    """``(out,)`` or ``(out, weights)`` in the compute dtype."""
    xp = p.xp
    e, total = _unnormalised_weights(p)
    # Normalise the (N, V) output rather than the larger (N, M) weights.
    out = safe_divide(xp, e @ p.v, total, overwrite=True)
    return (out, safe_divide(xp, e, total, overwrite=True)) if return_weights else (out,)


def _weights_and_output(p: _Problem) -> tuple[Any, Any]:
    """``(weights, out)``: normalised weights (..., N, M) and output (..., N, V), compute dtype."""
    xp = p.xp
    e, total = _unnormalised_weights(p)
    weights = safe_divide(xp, e, total, overwrite=True)
    return weights, weights @ p.v


def _gradients(p: _Problem, weights: Any, out: Any, d_out: Any) -> tuple[Any, Any, Any]:
    """``(dq, dk, dv)`` from the forward's weights and output (neither is modified), before
    summing over broadcast batch dims."""
    xp = p.xp
    dv = xp.matrix_transpose(weights) @ d_out
    delta = xp.sum(d_out * out, axis=-1, keepdims=True)
    d_scores = bk.inplace(xp, "subtract", d_out @ xp.matrix_transpose(p.v), delta)
    d_scores = bk.inplace(xp, "multiply", d_scores, weights)
    dq = bk.inplace(xp, "multiply", d_scores @ p.k, p.scale)
    dk = bk.inplace(xp, "multiply", xp.matrix_transpose(d_scores) @ p.q, p.scale)
    return dq, dk, dv


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

    def slab(q, k, v, allowed, *rest):
        return fn(replace(p, q=q, k=k, v=v, allowed=allowed), *rest)

    arrays = [p.q, p.k, p.v, p.allowed, *extra]
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
        One real floating dtype; batch dims broadcast against each other.
    mask : boolean array, optional
        Broadcastable to (..., N, M); True means query i may attend to key j.
    causal : bool
        Allow key j for query i only when j <= i (combined with ``mask`` by AND).
    scale : float, optional
        Multiplies the scores; default ``1 / sqrt(K)``.
    return_weights : bool
        Also return the attention weights (..., N, M).
    check_finite : bool
        Raise ValueError when q, k or v hold NaN or Inf.

    Returns
    -------
    out : array (..., N, V), or ``(out, weights)`` when ``return_weights``.
    Rows with no allowed key give output 0 and weights 0. float16/bfloat16 inputs are
    computed in float32 and the results cast back.
    """
    dtype = q.dtype if hasattr(q, "dtype") else None
    p = _prepare(q, k, v, mask, causal, scale, check_finite)
    results = tuple(p.xp.astype(r, dtype, copy=False) for r in _run(p, partial(_forward, return_weights=return_weights)))
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
    shape (..., N, V). Each gradient has the shape of its input (summed over broadcast
    batch dims). Rows with no allowed key contribute 0 to every gradient.
    """
    dtype = q.dtype if hasattr(q, "dtype") else None
    p = _prepare(q, k, v, mask, causal, scale, check_finite, d_out=d_out)
    xp = p.xp
    dq, dk, dv = _run(p, _backward, xp.astype(d_out, p.q.dtype, copy=False))
    return tuple(
        xp.astype(bk.sum_to_shape(xp, g, tuple(x.shape)), dtype, copy=False)
        for g, x in ((dq, q), (dk, k), (dv, v))
    )
