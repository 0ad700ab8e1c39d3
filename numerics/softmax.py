"""Numerically stable softmax with boolean masks.

A row whose entries are all excluded (every logit ``-inf``, or every mask entry False)
gives weights 0, not NaN: the behaviour of PyTorch's ``_safe_softmax``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._backend import check_flag, check_float_array, check_mask, compute_dtype, inplace, namespace_of

__all__ = ["softmax", "softmax_unnormalised"]


def softmax_unnormalised(
    xp, x: Any, axis: int = -1, *, overwrite: bool = False, factors: tuple[float, ...] = (), return_max: bool = False
) -> tuple[Any, ...]:
    """``(e, l)`` with ``e = exp(c (x - max))`` and ``l = sum(e)``, so softmax of ``c x`` is ``e / l``.

    ``c`` is the product of ``factors`` (positive, each finite in x's dtype; 1 when empty), applied one by one
    to the shifted logits ``x - max <= 0``: a product beyond the dtype's range gives
    ``-inf`` there (weight 0) and the row's maximum stays at 0, never ``0 * inf``. Rows of all
    ``-inf`` give ``e = 0`` and ``l = 0``. Callers divide by ``where(l > 0, l, 1)``; attention
    divides its (N, V) output rather than the (N, M) weights. ``overwrite=True`` lets NumPy and
    CuPy write ``e`` into ``x``'s memory. The axis must not be empty. ``return_max=True`` also
    returns the shift (the row maximum of ``x``, 0 for an all ``-inf`` row), from which the
    logsumexp of ``c x`` is ``c max + log(l)``.
    """
    row_max = xp.max(x, axis=axis, keepdims=True)
    # An all -inf row has max -inf; shifting by 0 instead keeps exp(-inf) = 0 and no NaN.
    row_max = xp.where(xp.isfinite(row_max), row_max, xp.zeros_like(row_max))
    # Without overwrite, x - row_max is a fresh array: the passes below may write into it. Logits
    # more than the dtype's largest below the maximum shift to -inf, which is exactly weight 0:
    # NumPy's overflow warning there is noise.
    with np.errstate(over="ignore"):
        shifted = inplace(xp, "subtract", x, row_max) if overwrite else x - row_max
    if factors:
        top = float(xp.finfo(shifted.dtype).max)
        for factor in factors:
            # Clipped first, so that a product beyond the range is -top (weight 0), not an overflow.
            if factor > 1:
                shifted = inplace(xp, "clip", shifted, -0.5 * top / factor, 0.0)
            shifted = inplace(xp, "multiply", shifted, factor)
    e = inplace(xp, "exp", shifted)
    total = xp.sum(e, axis=axis, keepdims=True)
    return (e, total, row_max) if return_max else (e, total)


def safe_divide(xp, e: Any, total: Any, *, overwrite: bool = False) -> Any:
    """``e / total`` where ``total > 0``, else 0 (``e`` is 0 there); into ``e`` if ``overwrite``."""
    divisor = xp.where(total > 0, total, xp.ones_like(total))
    return inplace(xp, "divide", e, divisor) if overwrite else e / divisor


def softmax(x: Any, axis: int = -1, *, mask: Any = None, check_finite: bool = True) -> Any:
    """Softmax of ``x`` along ``axis``, stable for logits of any finite magnitude.

    Parameters
    ----------
    x : array (..., M)
        Real floating logits, at least 1-D; ``-inf`` entries are allowed and get weight 0.
        Any axis may be empty: the result is then the empty array of x's shape.
    axis : int
        Axis to normalise over.
    mask : boolean array, optional
        Broadcastable to ``x.shape``; False entries get weight 0.
    check_finite : bool
        Raise ValueError on NaN or ``+inf`` logits.

    Returns
    -------
    array, same shape, dtype and namespace as ``x``; rows with nothing allowed are 0.
    Half precision is computed in float32 and cast back. Finite logits of any magnitude
    (up to the dtype's largest) give finite weights, never NaN.
    """
    xp = namespace_of(x=x, mask=mask)
    check_float_array("x", x, xp, min_ndim=1)
    check_finite = check_flag("check_finite", check_finite)
    if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"axis must be an integer, got {type(axis).__name__} {axis!r}")
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis must be in [-{x.ndim}, {x.ndim}) for x of shape {tuple(x.shape)}, got {axis}")
    if mask is not None:
        check_mask(mask, tuple(x.shape), xp, target_desc="x's shape")
    if check_finite:
        if bool(xp.any(xp.isnan(x) | (x == xp.inf))):
            raise ValueError(
                f"x contains NaN or +Inf (shape {tuple(x.shape)}); pass check_finite=False to skip this check"
            )
    work = xp.astype(x, compute_dtype(xp, x.dtype))
    if x.shape[axis] == 0:
        return xp.astype(work, x.dtype, copy=False)  # an empty axis: an empty result (a copy)
    if mask is not None:
        work = xp.where(mask, work, xp.full_like(work, -xp.inf))
    # astype above copied x, so its memory is ours to overwrite.
    e, total = softmax_unnormalised(xp, work, axis, overwrite=True)
    return xp.astype(safe_divide(xp, e, total, overwrite=True), x.dtype, copy=False)
