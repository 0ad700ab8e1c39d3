"""The error function for any array-API namespace.

The array API standard has no ``erf``. :func:`erf` and :func:`erfc` use the namespace's
own implementation when it has one (SciPy for NumPy, ``torch.special`` for torch,
``cupyx.scipy.special`` for CuPy, ``jax.scipy.special`` for JAX: each imported only when
the array already belongs to that library), and otherwise fall back on
:func:`erf_portable` / :func:`erfc_portable`, written with standard array-API operations
only.

The portable path is W. J. Cody's rational Chebyshev approximations (W. J. Cody,
"Rational Chebyshev approximations for the error function", Math. Comp. 23 (1969)
631-638), with the coefficients and the three intervals of Netlib SPECFUN ``CALERF``:

* ``|x| <= 0.46875``: ``erf(x) = x P(x^2) / Q(x^2)``;
* ``0.46875 < |x| <= 4``: ``erfc(|x|) = exp(-x^2) P(|x|) / Q(|x|)``;
* ``|x| > 4``: ``erfc(|x|) = exp(-x^2) / |x| (1/sqrt(pi) + x^-2 P(x^-2) / Q(x^-2))``,

with ``exp(-x^2)`` evaluated as ``exp(-s^2) exp(-(|x| - s)(|x| + s))``, ``s = trunc(16|x|)/16``,
so that the rounding of ``x^2`` does not spoil the relative accuracy of ``erfc`` in the tail.
In float64 the result is accurate to about 1e-16 relative for erf over the whole real
line (measured against mpmath in tests/numerics/test_layers.py), and erfc to a few ulps.
Every branch is evaluated on clipped arguments and the results selected with ``where``, so
there is no data-dependent control flow and no host round-trip; NaN propagates, ``erf(+-inf)
= +-1``, ``erf(-0.0) = -0.0``.

float16 and bfloat16 inputs are computed in float32 and cast back, on every path.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import array_api_compat

from ._backend import check_float_array, compute_dtype

__all__ = ["erf", "erfc", "erf_portable", "erfc_portable"]

# Netlib SPECFUN CALERF coefficients (Cody 1969).
_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02,
      3.20937758913846947e03, 1.85777706184603153e-1)
_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03,
      2.84423683343917062e03)
_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01,
      2.98635138197400131e02, 8.81952221241769090e02, 1.71204761263407058e03,
      2.05107837782607147e03, 1.23033935479799725e03, 2.15311535474403846e-8)
_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02,
      1.62138957456669019e03, 3.29079923573345963e03, 4.36261909014324716e03,
      3.43936767414372164e03, 1.23033935480374942e03)
_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
      1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2)
_Q = (2.56852019228982242e00, 1.87295284992346047e00, 5.27905102951428412e-1,
      6.05183413124413191e-2, 2.33520497626869185e-3)
_SQRPI = 5.6418958354775628695e-1  # 1 / sqrt(pi)
_THRESH = 0.46875
# erfc(x) underflows to 0 beyond ~27.3 in float64 (~10.1 in float32): clipping |x| to 40
# keeps every intermediate finite without changing any result.
_XBIG = 40.0


def _small(xp: ModuleType, x: Any) -> Any:
    """erf(x) for |x| <= 0.46875 (x already clipped to that interval)."""
    z = x * x
    num = _A[4] * z
    den = z
    for i in range(3):
        num = (num + _A[i]) * z
        den = (den + _B[i]) * z
    return x * (num + _A[3]) / (den + _B[3])


def _exp_minus_square(xp: ModuleType, y: Any) -> Any:
    """exp(-y^2) for y >= 0, split so that the rounding of y^2 does not matter."""
    s = xp.trunc(y * 16.0) / 16.0
    return xp.exp(-s * s) * xp.exp(-(y - s) * (y + s))


def _erfc_positive(xp: ModuleType, y: Any) -> Any:
    """erfc(y) for y = |x| > 0.46875 (values at smaller y are computed but unused)."""
    # Middle interval, 0.46875 < y <= 4.
    ym = xp.clip(y, _THRESH, 4.0)
    num = _C[8] * ym
    den = ym
    for i in range(7):
        num = (num + _C[i]) * ym
        den = (den + _D[i]) * ym
    middle = (num + _C[7]) / (den + _D[7]) * _exp_minus_square(xp, ym)
    # Tail, y > 4.
    yt = xp.clip(y, 4.0, _XBIG)
    z = 1.0 / (yt * yt)
    num = _P[5] * z
    den = z
    for i in range(4):
        num = (num + _P[i]) * z
        den = (den + _Q[i]) * z
    tail = (_SQRPI - z * (num + _P[4]) / (den + _Q[4])) / yt * _exp_minus_square(xp, yt)
    return xp.where(y <= 4.0, middle, tail)


def _prepare(xp: ModuleType, x: Any) -> tuple[Any, Any]:
    if xp is None:
        xp = array_api_compat.array_namespace(x)
    check_float_array("x", x, xp)
    return xp, xp.astype(x, compute_dtype(xp, x.dtype), copy=False)


def erf_portable(xp: ModuleType, x: Any) -> Any:
    """erf(x) with standard array-API operations only (Cody 1969); see the module docstring."""
    xp, work = _prepare(xp, x)
    y = xp.abs(work)
    small = _small(xp, xp.clip(work, -_THRESH, _THRESH))
    large = 1.0 - _erfc_positive(xp, y)
    large = xp.where(work < 0, -large, large)
    return xp.astype(xp.where(y <= _THRESH, small, large), x.dtype, copy=False)


def erfc_portable(xp: ModuleType, x: Any) -> Any:
    """erfc(x) = 1 - erf(x) with standard array-API operations only, accurate in both tails."""
    xp, work = _prepare(xp, x)
    y = xp.abs(work)
    small = 1.0 - _small(xp, xp.clip(work, -_THRESH, _THRESH))
    large = _erfc_positive(xp, y)
    large = xp.where(work < 0, 2.0 - large, large)
    return xp.astype(xp.where(y <= _THRESH, small, large), x.dtype, copy=False)


def _native(xp: ModuleType, name: str):
    """The namespace's own special function ``name``, or None. Imports only the caller's library."""
    if array_api_compat.is_numpy_namespace(xp):
        try:
            import scipy.special
        except ImportError:  # pragma: no cover - scipy is a declared dependency
            return None
        return getattr(scipy.special, name)
    if array_api_compat.is_torch_namespace(xp):
        import torch

        return getattr(torch.special, name)
    if array_api_compat.is_cupy_namespace(xp):
        import cupyx.scipy.special  # only reached for CuPy arrays

        return getattr(cupyx.scipy.special, name)
    if array_api_compat.is_jax_namespace(xp):
        import jax.scipy.special

        return getattr(jax.scipy.special, name)
    return None


def _dispatch(xp: ModuleType, x: Any, name: str, portable) -> Any:
    if xp is None:
        xp = array_api_compat.array_namespace(x)
    check_float_array("x", x, xp)
    fn = _native(xp, name)
    if fn is None:
        return portable(xp, x)
    work = xp.astype(x, compute_dtype(xp, x.dtype), copy=False)
    # asarray: SciPy returns a NumPy scalar for a 0-d input.
    return xp.astype(xp.asarray(fn(work)), x.dtype, copy=False)


def erf(xp: ModuleType | None, x: Any) -> Any:
    """The error function of a real floating array ``x`` of namespace ``xp``.

    Parameters
    ----------
    xp : array namespace or None
        The namespace of ``x`` (found from ``x`` when None).
    x : array
        Real floating; any shape.

    Returns
    -------
    array of ``x``'s shape, dtype and namespace. Uses the library's own erf when it has
    one, else :func:`erf_portable`. Half precision is computed in float32 and cast back.
    """
    return _dispatch(xp, x, "erf", erf_portable)


def erfc(xp: ModuleType | None, x: Any) -> Any:
    """The complementary error function ``1 - erf(x)``, accurate in the tails; see :func:`erf`."""
    return _dispatch(xp, x, "erfc", erfc_portable)
