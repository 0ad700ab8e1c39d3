"""Numerically stable softmax with boolean masks.

A row whose entries are all excluded (every logit ``-inf``, or every mask entry False)
gives weights 0, not NaN: the behaviour of PyTorch's ``_safe_softmax``.
"""

from __future__ import annotations

from typing import Any

from ._backend import check_float_array, check_mask, compute_dtype, inplace, namespace_of

__all__ = ["softmax", "softmax_unnormalised"]


def softmax_unnormalised(xp, x: Any, axis: int = -1, *, overwrite: bool = False) -> tuple[Any, Any]:
    """``(e, l)`` with ``e = exp(x - max)`` and ``l = sum(e)``, so softmax is ``e / l``.

    Rows of all ``-inf`` give ``e = 0`` and ``l = 0``. Callers divide by
    ``where(l > 0, l, 1)``; attention divides its (N, V) output rather than the (N, M) weights.
    ``overwrite=True`` lets NumPy and CuPy write ``e`` into ``x``'s memory.
    """
    row_max = xp.max(x, axis=axis, keepdims=True)
    # An all -inf row has max -inf; shifting by 0 instead keeps exp(-inf) = 0 and no NaN.
    row_max = xp.where(xp.isfinite(row_max), row_max, xp.zeros_like(row_max))
    if overwrite:
        e = inplace(xp, "exp", inplace(xp, "subtract", x, row_max))
    else:
        e = xp.exp(x - row_max)
    return e, xp.sum(e, axis=axis, keepdims=True)


def safe_divide(xp, e: Any, total: Any, *, overwrite: bool = False) -> Any:
    """``e / total`` where ``total > 0``, else 0 (``e`` is 0 there); into ``e`` if ``overwrite``."""
    divisor = xp.where(total > 0, total, xp.ones_like(total))
    return inplace(xp, "divide", e, divisor) if overwrite else e / divisor


def softmax(x: Any, axis: int = -1, *, mask: Any = None, check_finite: bool = True) -> Any:
    """Softmax of ``x`` along ``axis``, stable for logits of any finite magnitude.

    Parameters
    ----------
    x : array (..., M)
        Real floating logits; ``-inf`` entries are allowed and get weight 0.
    axis : int
        Axis to normalise over.
    mask : boolean array, optional
        Broadcastable to ``x.shape``; False entries get weight 0.
    check_finite : bool
        Raise ValueError on NaN or ``+inf`` logits.

    Returns
    -------
    array, same shape, dtype and namespace as ``x``; rows with nothing allowed are 0.
    Half precision is computed in float32 and cast back.
    """
    xp = namespace_of(x=x, mask=mask)
    check_float_array("x", x, xp)
    if not -x.ndim <= axis < max(x.ndim, 1):
        raise ValueError(f"axis must be in [-{x.ndim}, {x.ndim}) for x of shape {tuple(x.shape)}, got {axis}")
    if mask is not None:
        check_mask(mask, tuple(x.shape), xp, target_desc="x's shape")
    if check_finite:
        if bool(xp.any(xp.isnan(x) | (x == xp.inf))):
            raise ValueError(
                f"x contains NaN or +Inf (shape {tuple(x.shape)}); pass check_finite=False to skip this check"
            )
    work = xp.astype(x, compute_dtype(xp, x.dtype))
    if mask is not None:
        work = xp.where(mask, work, xp.full_like(work, -xp.inf))
    # astype above copied x, so its memory is ours to overwrite.
    e, total = softmax_unnormalised(xp, work, axis, overwrite=True)
    return xp.astype(safe_divide(xp, e, total, overwrite=True), x.dtype, copy=False)
