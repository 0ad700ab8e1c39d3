"""Layer normalisation, GELU and the position-wise feed-forward network, with hand-written
backward passes.

Shapes use the package glossary: ``...`` any leading (batch, token) dims, D model width,
F feed-forward width. Row-vector convention, as the documents write it::

    layer_norm:    y = (x - mean(x)) / sqrt(var(x) + eps) * gamma + beta      over the last axis
                   (biased variance, the 1/D of PyTorch's ``layer_norm``)
    gelu:          x * Phi(x)                                   approximate="none"
                   0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   approximate="tanh"
    feed_forward:  GELU(x W1 + b1) W2 + b2,   x (..., D), W1 (D, F), b1 (F,), W2 (F, D), b2 (D,)

Every ``*_backward`` returns the gradient of ``sum(d_out * f(...))`` with respect to each
input, as a named tuple (:class:`LayerNormGradients`, :class:`FFNGradients`); parameter
gradients are summed over all leading dims. Layer norm and the feed-forward network are
each a forward/backward pair with named residuals (``_*_fwd`` returns the output and the
residuals, ``_*_bwd`` takes them and d_out); ``layer_norm_vjp`` and ``feed_forward_vjp``
expose the pair, the ``*_backward`` functions run it once. float16 / bfloat16 inputs are
computed in float32 and every result is cast back to the input's dtype; results stay on the
input's namespace (and device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, NamedTuple

import numpy as np

from . import _backend as bk
from ._special import erfc

__all__ = [
    "layer_norm",
    "layer_norm_backward",
    "layer_norm_vjp",
    "LayerNormGradients",
    "gelu",
    "gelu_backward",
    "FFNParams",
    "init_ffn_params",
    "feed_forward",
    "feed_forward_backward",
    "feed_forward_vjp",
    "FFNGradients",
]

_GELU_MODES = ("none", "tanh")
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TANH_COEF = 0.044715


# --------------------------------------------------------------------------- checks


def _check_non_negative_real(name: str, value: Any) -> float:
    """``value`` as a float: a real, finite number >= 0 (int, float, NumPy scalar ...); a
    bool or a string is a TypeError, not a number, like anything float() cannot take."""
    number = bk.real_number(name, value)
    if not math.isfinite(number) or number < 0.0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return number


def _check_eps(eps: Any) -> float:
    return _check_non_negative_real("eps", eps)


def _check_approximate(approximate: Any) -> str:
    if not isinstance(approximate, str) or approximate not in _GELU_MODES:
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return approximate


def _check_d_out(d_out: Any, expected: tuple[int, ...], what: str) -> None:
    if tuple(d_out.shape) != tuple(expected):
        raise ValueError(f"d_out must have {what} {tuple(expected)}, got shape {bk.shape_str(d_out)}")


def _check_vector(name: str, v: Any, xp: ModuleType, size: int, letter: str, source: str) -> None:
    bk.check_float_array(name, v, xp)
    if tuple(v.shape) != (size,):
        raise ValueError(
            f"{name} must have shape ({letter},) with {letter} = {source} = {size}, got {bk.shape_str(v)}"
        )


# --------------------------------------------------------------------------- layer norm


def _layer_norm_prepare(x, gamma, beta, eps, check_finite, d_out=None):
    xp = bk.namespace_of(x=x, gamma=gamma, beta=beta, d_out=d_out)
    bk.check_float_array("x", x, xp, min_ndim=1)
    d = int(x.shape[-1])
    if d == 0:
        raise ValueError(f"x must have a non-empty last axis D, got shape {bk.shape_str(x)}")
    if gamma is not None:
        _check_vector("gamma", gamma, xp, d, "D", "x.shape[-1]")
    if beta is not None:
        _check_vector("beta", beta, xp, d, "D", "x.shape[-1]")
    if d_out is not None:
        bk.check_float_array("d_out", d_out, xp)
        _check_d_out(d_out, tuple(x.shape), "x's shape")
    bk.check_same_dtype(x=x, gamma=gamma, beta=beta, d_out=d_out)
    eps = _check_eps(eps)
    check_finite = bk.check_flag("check_finite", check_finite)
    if check_finite:
        bk.check_finite(xp, x=x, gamma=gamma, beta=beta, d_out=d_out)
    return xp, eps, bk.compute_dtype(xp, x.dtype)


def _power_of_two_scale(xp: ModuleType, x: Any) -> tuple[Any, Any, Any]:
    """``(s1, s2, k)`` of shape (..., 1): powers of two whose product ``s = s1 s2 = 2**k``
    brings each row's largest magnitude into [1, 4) (1 for an all-zero row).

    Multiplying by a power of two is exact (the scaled values are the row's own, shifted in
    exponent), unlike dividing by ``max |x|``, which rounds every element before the mean
    is subtracted. ``s`` is applied as two factors because it may be beyond the dtype's
    range on its own (2**1074 for a subnormal float64 row; each half stays within it).
    """
    a = xp.max(xp.abs(x), axis=-1, keepdims=True)
    a = xp.where(a > 0, a, xp.ones_like(a))
    # floor(log2 a) may be off by one when log2 rounds; any nearby power of two will do.
    e = xp.floor(xp.log2(a))
    h = xp.floor(-e / 2.0)
    two = xp.full_like(a, 2.0)
    return xp.pow(two, h), xp.pow(two, -e - h), -e


def _normalise(xp: ModuleType, x: Any, eps: float) -> tuple[Any, Any]:
    """``(xhat, rstd)``: normalisation over the last axis; ``rstd(v)`` is ``v / sqrt(var x + eps)``
    per row (computed so that it neither overflows nor underflows on the way).

    Each row is first scaled by a power of two ``s`` (exact: see :func:`_power_of_two_scale`)
    so that neither the mean nor the squares can overflow or underflow: with ``u = s x``,
    ``(x - mean x) / sqrt(var x + eps) = (u - mean u) / hypot(std u, s sqrt(eps))``. The
    centred values take two passes, ``c = u - mean(u)``, then ``c - mean(c)``: the first
    mean is rounded (by up to a few ulps of the row's offset, which for a row with a large
    common offset is a large part of its spread), the second removes that error, so the
    centred values are as exact as the format allows however large the offset. A constant
    row gives exactly 0 (its ``c`` are all equal, and their mean is exact), hence exactly
    ``beta``. A constant row with ``eps = 0`` (0 / 0) is a ValueError.
    """
    s1, s2, k = _power_of_two_scale(xp, x)
    u = (x * s1) * s2
    centred = u - xp.mean(u, axis=-1, keepdims=True)
    centred = centred - xp.mean(centred, axis=-1, keepdims=True)
    std_u = xp.sqrt(xp.mean(centred * centred, axis=-1, keepdims=True))
    # t = s sqrt(eps), eps in u's units. For a row far below sqrt(eps) it is beyond the
    # dtype's range ("not fits"): then t is held at big, so that denom = big, xhat ~ 0.
    big = float(xp.finfo(x.dtype).max) / 4
    if eps == 0.0:
        t, fits = xp.zeros_like(std_u), xp.ones_like(std_u) > 0
    else:
        root = math.sqrt(eps)
        fits = k + math.log2(root) < math.log2(big)
        zero = xp.zeros_like(s1)
        t = xp.where(fits, (root * xp.where(fits, s1, zero)) * xp.where(fits, s2, zero), xp.full_like(s1, big))
    denom = xp.hypot(std_u, t)
    if eps == 0.0 and math.prod(denom.shape) and not bool(xp.all(denom > 0)):
        raise ValueError(
            "layer norm with eps = 0 is undefined (0 / 0) for a row of x whose entries are all equal; "
            f"x has shape {bk.shape_str(x)}: pass eps > 0"
        )
    # denom = 0 (eps > 0 so tiny against a huge constant row that s sqrt(eps) underflows)
    # only where centred is exactly 0: xhat 0. denom = big (a row so tiny that s sqrt(eps)
    # is beyond the range): xhat ~ 0, as it is, to within the dtype's range.
    positive = denom > 0
    xhat = centred / xp.where(positive, denom, xp.ones_like(denom))
    # rstd = s / denom in x's units, applied as ((v / denom) s1) s2; where s sqrt(eps) is
    # beyond the range or denom underflowed to 0, var x is negligible against eps and
    # rstd = 1 / sqrt(eps).
    regular = positive & fits
    one = xp.ones_like(denom)
    inv_denom = one / xp.where(regular, denom, one)
    if eps > 0.0:
        inv_denom = xp.where(regular, inv_denom, xp.full_like(denom, 1.0 / math.sqrt(eps)))
    f1, f2 = xp.where(regular, s1, one), xp.where(regular, s2, one)

    def rstd(v: Any) -> Any:
        return ((v * inv_denom) * f1) * f2

    return xhat, rstd


def layer_norm(
    x: Any,
    gamma: Any = None,
    beta: Any = None,
    *,
    eps: float = 1e-5,
    check_finite: bool = True,
) -> Any:
    """Layer normalisation over the last axis, ``(x - mean) / sqrt(var + eps) * gamma + beta``.

    Parameters
    ----------
    x : array (..., D)
        Real floating, at least 1-D.
    gamma, beta : array (D,), optional
        Gain and bias, same dtype and namespace as ``x``; omitted means 1 and 0.
    eps : float
        Added to the biased (1/D) variance; must be >= 0. With ``eps=0`` a constant row
        is 0 / 0: a ValueError (PyTorch gives NaN).
    check_finite : bool
        Raise ValueError when an argument holds NaN or Inf (and when the result overflows,
        which only a huge ``gamma`` or ``beta`` can do).

    Returns
    -------
    array (..., D), same dtype and namespace as ``x``.

    Notes
    -----
    Rows of any finite magnitude are normalised without overflow or underflow (each row
    is first scaled by a power of two, which is exact), and the mean is taken in two
    passes, so that a row with a large common offset (``1e15 + [0, 0.125, ...]``) keeps
    every digit of its spread; a constant row gives exactly ``beta``.
    Leading dims may be empty (an empty result); D = 0 is a ValueError.
    """
    return _layer_norm_fwd(_layer_norm_residuals(x, gamma, beta, eps, check_finite), beta)[0]


class LayerNormGradients(NamedTuple):
    """Gradients of :func:`layer_norm`; unpacks as ``(dx, dgamma, dbeta)``.

    x : array (..., D); gamma : array (D,), or None without a gain; beta : array (D,)
    (from :func:`layer_norm_backward` always, from :func:`layer_norm_vjp` None without a bias).
    """

    x: Any
    gamma: Any
    beta: Any


@dataclass(frozen=True)
class LayerNormResiduals:
    """What layer norm's backward needs from its forward: the normalised rows ``xhat``
    (..., D) and ``rstd`` (``v -> v / sqrt(var x + eps)`` per row), compute dtype."""

    xp: ModuleType
    xhat: Any
    rstd: Callable[[Any], Any]
    gamma: Any  # compute dtype, or None
    with_beta: bool  # whether the gradient of beta is asked for
    dtype: Any  # the caller's dtype
    check_finite: bool


def _layer_norm_residuals(x, gamma, beta, eps, check_finite, d_out=None, *, with_beta=True) -> LayerNormResiduals:
    """The checked arguments, normalised (the forward's residuals, before gain and bias)."""
    xp, eps, work = _layer_norm_prepare(x, gamma, beta, eps, check_finite, d_out=d_out)
    xhat, rstd = _normalise(xp, xp.astype(x, work, copy=False), eps)
    gamma = None if gamma is None else xp.astype(gamma, work, copy=False)
    return LayerNormResiduals(xp, xhat, rstd, gamma, with_beta, x.dtype, bool(check_finite))


def _layer_norm_fwd(res: LayerNormResiduals, beta: Any) -> tuple[Any, LayerNormResiduals]:
    """``(y, residuals)``: ``xhat * gamma + beta`` in the caller's dtype."""
    xp = res.xp
    y = res.xhat if res.gamma is None else res.xhat * res.gamma
    if beta is not None:
        y = y + xp.astype(beta, res.xhat.dtype, copy=False)
    y = xp.astype(y, res.dtype, copy=False)
    if res.check_finite:
        bk.check_result_finite(xp, "layer_norm", y=y)
    return y, res


def _layer_norm_bwd(res: LayerNormResiduals, d_out: Any) -> LayerNormGradients:
    """The gradients of ``sum(d_out * layer_norm(...))`` in the caller's dtype."""
    xp, xhat = res.xp, res.xhat
    d = int(xhat.shape[-1])
    dy = xp.astype(d_out, xhat.dtype, copy=False)
    g = dy if res.gamma is None else dy * res.gamma
    dx = res.rstd(g - xp.mean(g, axis=-1, keepdims=True) - xhat * xp.mean(g * xhat, axis=-1, keepdims=True))
    dy_rows = xp.reshape(dy, (-1, d))
    dbeta = xp.sum(dy_rows, axis=0) if res.with_beta else None
    dgamma = None if res.gamma is None else xp.sum(dy_rows * xp.reshape(xhat, (-1, d)), axis=0)
    cast = lambda a: None if a is None else xp.astype(a, res.dtype, copy=False)  # noqa: E731
    grads = LayerNormGradients(cast(dx), cast(dgamma), cast(dbeta))
    if res.check_finite:
        bk.check_result_finite(xp, "layer_norm_backward", dx=grads.x, dgamma=grads.gamma, dbeta=grads.beta)
    return grads


def layer_norm_backward(
    x: Any,
    d_out: Any,
    gamma: Any = None,
    *,
    eps: float = 1e-5,
    check_finite: bool = True,
) -> LayerNormGradients:
    """Gradients ``(dx, dgamma, dbeta)`` of ``sum(d_out * layer_norm(x, gamma, beta, eps=eps))``.

    The gradients do not depend on ``beta``, so it is not an argument. With
    ``xhat = (x - mean) * rstd``, ``rstd = 1 / sqrt(var + eps)`` and ``g = d_out * gamma``::

        dx     = rstd * (g - mean(g) - xhat * mean(g * xhat))     (means over the last axis)
        dgamma = sum over leading dims of d_out * xhat
        dbeta  = sum over leading dims of d_out

    Returns
    -------
    LayerNormGradients
        A named tuple ``(x, gamma, beta)`` that unpacks as ``dx, dgamma, dbeta``:
        dx (..., D); dgamma (D,), or None when ``gamma`` is None (no gain to
        differentiate); dbeta (D,), always returned: it is the gradient for a bias whether
        or not the forward pass used one; a caller without a bias ignores it.
    All in ``x``'s dtype and namespace. Rows of any finite magnitude as in
    :func:`layer_norm` (eps = 0 with a constant row is a ValueError); with
    ``check_finite``, a gradient beyond the dtype's range is a ValueError.
    """
    return _layer_norm_bwd(_layer_norm_residuals(x, gamma, None, eps, check_finite, d_out=d_out), d_out)


def layer_norm_vjp(
    x: Any,
    gamma: Any = None,
    beta: Any = None,
    *,
    eps: float = 1e-5,
    check_finite: bool = True,
) -> tuple[Any, Callable[[Any], LayerNormGradients]]:
    """``(layer_norm(x, gamma, beta), backward)``: the forward pass, keeping the normalised
    rows for ``backward(d_out)``, which returns the :class:`LayerNormGradients` (beta None
    when ``beta`` is None) without normalising again. ``d_out`` has x's shape and dtype.
    """
    res = _layer_norm_residuals(x, gamma, beta, eps, check_finite, with_beta=beta is not None)
    y, res = _layer_norm_fwd(res, beta)

    def backward(d_out: Any) -> LayerNormGradients:
        bk.check_upstream(d_out, like=("x", x), shape=tuple(y.shape), dtype=res.dtype, finite=res.check_finite)
        return _layer_norm_bwd(res, d_out)

    return y, backward


# --------------------------------------------------------------------------- GELU


def _stable_sigmoids(xp: ModuleType, z: Any) -> tuple[Any, Any]:
    """``(sigmoid(z), sigmoid(-z))`` without overflow or cancellation for any real z."""
    e = xp.exp(-xp.abs(z))
    big = 1.0 / (1.0 + e)
    small = e / (1.0 + e)
    positive = z >= 0
    return xp.where(positive, big, small), xp.where(positive, small, big)


# Beyond |x| = 1e6 the tanh-GELU's sigmoid is exactly 0 or 1 in every precision: clipping
# there changes no result and keeps x^3 (and x^2 in the derivatives) from overflowing.
_CLIP_TANH = 1e6
# Beyond |x| = 40, x phi(x) < 1e-340 underflows to 0 in float64 and float32.
_CLIP_PDF = 40.0


def _tanh_argument(xp: ModuleType, x: Any) -> Any:
    """``2 u`` with ``u = sqrt(2/pi) (x + 0.044715 x^3)``, so that 0.5 (1 + tanh u) = sigmoid(2u)."""
    x = xp.clip(x, -_CLIP_TANH, _CLIP_TANH)
    return (2.0 * _SQRT_2_OVER_PI) * (x + _TANH_COEF * (x * x * x))


def _gelu(xp: ModuleType, x: Any, approximate: str) -> Any:
    if approximate == "none":
        # Phi(x) = erfc(-x / sqrt 2) / 2: no cancellation in the negative tail.
        return (0.5 * x) * erfc(xp, -x * _INV_SQRT_2)
    # 0.5 (1 + tanh u) written as sigmoid(2u), again free of cancellation for x << 0.
    s, _ = _stable_sigmoids(xp, _tanh_argument(xp, x))
    return x * s


def _gelu_derivative(xp: ModuleType, x: Any, approximate: str) -> Any:
    if approximate == "none":
        # d/dx x Phi(x) = Phi(x) + x phi(x)
        xc = xp.clip(x, -_CLIP_PDF, _CLIP_PDF)
        pdf_term = xc * (_INV_SQRT_2PI * xp.exp(-0.5 * (xc * xc)))
        return 0.5 * erfc(xp, -x * _INV_SQRT_2) + pdf_term
    s, one_minus_s = _stable_sigmoids(xp, _tanh_argument(xp, x))
    # d/dx x sigmoid(2u) = s + x * 2 s (1 - s) du/dx, du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2).
    # Where |x| >= 1e6, s (1 - s) is exactly 0 in every precision; zeroing x there keeps
    # x * x^2 from overflowing into 0 * inf = NaN.
    xs = xp.where(xp.abs(x) < _CLIP_TANH, x, xp.zeros_like(x))
    du = _SQRT_2_OVER_PI * (1.0 + (3.0 * _TANH_COEF) * (xs * xs))
    return s + (2.0 * xs) * (s * one_minus_s) * du


def _gelu_prepare(x, approximate, check_finite, d_out=None):
    xp = bk.namespace_of(x=x, d_out=d_out)
    bk.check_float_array("x", x, xp)
    if d_out is not None:
        bk.check_float_array("d_out", d_out, xp)
        _check_d_out(d_out, tuple(x.shape), "x's shape")
        bk.check_same_dtype(x=x, d_out=d_out)
    approximate = _check_approximate(approximate)
    check_finite = bk.check_flag("check_finite", check_finite)
    if check_finite:
        bk.check_finite(xp, x=x, d_out=d_out)
    return xp, approximate, bk.compute_dtype(xp, x.dtype)


def gelu(x: Any, *, approximate: str = "none", check_finite: bool = True) -> Any:
    """Gaussian error linear unit, elementwise.

    Parameters
    ----------
    x : array
        Real floating, any shape.
    approximate : {"none", "tanh"}
        ``"none"``: exact ``x * Phi(x)``, Phi the standard normal CDF (computed as
        ``erfc(-x / sqrt 2) / 2``, accurate also for large negative x). ``"tanh"``:
        ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (computed as ``x * sigmoid(2u)``),
        PyTorch's ``approximate='tanh'``.
    check_finite : bool
        Raise ValueError when ``x`` holds NaN or Inf.

    Returns
    -------
    array, same shape, dtype and namespace as ``x`` (empty for an empty ``x``); finite for
    every finite ``x`` (``|gelu(x)| <= |x|``).
    """
    xp, approximate, work = _gelu_prepare(x, approximate, check_finite)
    y = _gelu(xp, xp.astype(x, work, copy=False), approximate)
    return xp.astype(y, x.dtype, copy=False)


def gelu_backward(x: Any, d_out: Any, *, approximate: str = "none", check_finite: bool = True) -> Any:
    """Gradient ``d_out * gelu'(x)`` of ``sum(d_out * gelu(x))``; ``d_out`` has ``x``'s shape.

    ``gelu'(x) = Phi(x) + x phi(x)`` (exact) or the derivative of the tanh formula.
    """
    xp, approximate, work = _gelu_prepare(x, approximate, check_finite, d_out=d_out)
    grad = xp.astype(d_out, work, copy=False) * _gelu_derivative(xp, xp.astype(x, work, copy=False), approximate)
    grad = xp.astype(grad, x.dtype, copy=False)
    if check_finite:
        bk.check_result_finite(xp, "gelu_backward", grad=grad)
    return grad


# --------------------------------------------------------------------------- feed-forward


@dataclass(frozen=True)
class FFNParams:
    """Parameters of the position-wise feed-forward network ``GELU(x W1 + b1) W2 + b2``.

    Attributes
    ----------
    w1 : array (D, F)
    b1 : array (F,) or None
    w2 : array (F, D)
    b2 : array (D,) or None

    The same class holds gradients (:func:`feed_forward_backward`), with None where the
    parameter is None.
    """

    w1: Any
    b1: Any
    w2: Any
    b2: Any

    @property
    def d_model(self) -> int:
        """D, the model width (rows of ``w1``)."""
        return int(self.w1.shape[0])

    @property
    def d_ff(self) -> int:
        """F, the hidden width (columns of ``w1``)."""
        return int(self.w1.shape[1])


def init_ffn_params(
    d_model: int,
    d_ff: int,
    *,
    bias: bool = True,
    dtype: Any = None,
    xp: ModuleType | str = "numpy",
    seed: int = 0,
    device: Any = None,
) -> FFNParams:
    """Random :class:`FFNParams` for a (D = ``d_model``, F = ``d_ff``) feed-forward network.

    Every entry (weights and biases) is drawn from a normal distribution with standard
    deviation ``1 / sqrt(fan_in)`` (fan_in = D for ``w1``, ``b1``; F for ``w2``, ``b2``),
    in float64 by ``numpy.random.default_rng(seed)`` on the host, then moved to namespace
    ``xp`` (a module or its name: "numpy", "torch", "cupy", "array_api_strict") and cast to
    ``dtype`` (default float64; a dtype object of ``xp`` or its name). The same seed gives the
    same values on every namespace (up to the final cast). ``bias=False`` leaves b1, b2 None.
    ``seed`` is a non-negative integer and ``bias`` a bool (Python or NumPy); anything else
    is an error naming the argument.
    """
    d_model, d_ff = bk.positive_int("d_model", d_model), bk.positive_int("d_ff", d_ff)
    bias = bk.check_flag("bias", bias)
    seed = bk.check_seed(seed)
    xp = bk.get_namespace(xp)
    dtype = bk.resolve_dtype(xp, dtype)
    rng = np.random.default_rng(seed)
    std_in, std_hidden = 1.0 / math.sqrt(d_model), 1.0 / math.sqrt(d_ff)
    host = {
        "w1": rng.standard_normal((d_model, d_ff)) * std_in,
        "b1": rng.standard_normal(d_ff) * std_in if bias else None,
        "w2": rng.standard_normal((d_ff, d_model)) * std_hidden,
        "b2": rng.standard_normal(d_model) * std_hidden if bias else None,
    }
    moved = {
        name: None if a is None else xp.astype(xp.asarray(a, device=device), dtype)
        for name, a in host.items()
    }
    return FFNParams(**moved)


def _check_ffn_params(params: Any, xp: ModuleType, d: int, owner: str = "",
                      x_shape: tuple[int, ...] | None = None) -> None:
    """The feed-forward parameters against the model width D = ``d``: w1 (D, F), b1 (F,),
    w2 (F, D), b2 (D,). Errors name them ``owner.w1`` ... (``params.ffn.w1`` in the
    transformer block), or bare ``w1`` ... without an owner; ``x_shape`` is shown with an
    empty width."""
    w1, b1, w2, b2 = (f"{owner}.{n}" if owner else n for n in ("w1", "b1", "w2", "b2"))
    bk.check_float_array(w1, params.w1, xp)
    if params.w1.ndim != 2 or int(params.w1.shape[0]) != d:
        raise ValueError(f"{w1} must have shape (D, F) with D = x.shape[-1] = {d}, got {bk.shape_str(params.w1)}")
    f = int(params.w1.shape[1])
    if d == 0 or f == 0:
        x_desc = f"x has shape {x_shape}" if x_shape is not None else f"D = x.shape[-1] = {d}"
        raise ValueError(f"x and {w1} must have non-empty widths D and F: {x_desc}, "
                         f"{w1} has shape {bk.shape_str(params.w1)}")
    if params.b1 is not None:
        _check_vector(b1, params.b1, xp, f, "F", f"{w1}.shape[1]")
    bk.check_float_array(w2, params.w2, xp)
    if tuple(params.w2.shape) != (f, d):
        raise ValueError(
            f"{w2} must have shape (F, D) = ({f}, {d}) with F = {w1}.shape[1] and D = x.shape[-1], "
            f"got {bk.shape_str(params.w2)}"
        )
    if params.b2 is not None:
        _check_vector(b2, params.b2, xp, d, "D", "x.shape[-1]")


def _ffn_prepare(x, params, approximate, check_finite, d_out=None):
    if not isinstance(params, FFNParams):
        raise TypeError(f"params must be an FFNParams, got {type(params).__name__}")
    w1, b1, w2, b2 = params.w1, params.b1, params.w2, params.b2
    xp = bk.namespace_of(x=x, w1=w1, b1=b1, w2=w2, b2=b2, d_out=d_out)
    bk.check_float_array("x", x, xp, min_ndim=1)
    _check_ffn_params(params, xp, int(x.shape[-1]), x_shape=tuple(x.shape))
    if d_out is not None:
        bk.check_float_array("d_out", d_out, xp)
        _check_d_out(d_out, tuple(x.shape), "the output's shape (..., D) =")
    bk.check_same_dtype(x=x, w1=w1, b1=b1, w2=w2, b2=b2, d_out=d_out)
    approximate = _check_approximate(approximate)
    check_finite = bk.check_flag("check_finite", check_finite)
    if check_finite:
        bk.check_finite(xp, x=x, w1=w1, b1=b1, w2=w2, b2=b2, d_out=d_out)
    work = bk.compute_dtype(xp, x.dtype)
    cast = lambda a: None if a is None else xp.astype(a, work, copy=False)  # noqa: E731
    return xp, approximate, cast(x), FFNParams(cast(w1), cast(b1), cast(w2), cast(b2))


def _hidden(xp: ModuleType, x: Any, p: FFNParams) -> Any:
    h = xp.matmul(x, p.w1)
    return h if p.b1 is None else h + p.b1


def feed_forward(
    x: Any,
    params: FFNParams,
    *,
    approximate: str = "none",
    check_finite: bool = True,
) -> Any:
    """Position-wise feed-forward network ``GELU(x W1 + b1) W2 + b2``.

    Parameters
    ----------
    x : array (..., D)
    params : FFNParams
        w1 (D, F), b1 (F,) or None, w2 (F, D), b2 (D,) or None; same dtype and namespace as x.
    approximate : {"none", "tanh"}
        Which GELU (see :func:`gelu`).
    check_finite : bool
        Raise ValueError when x or a parameter holds NaN or Inf.

    Returns
    -------
    array (..., D), same dtype and namespace as ``x``. Leading dims may be empty (an empty
    result); D = 0 or F = 0 is a ValueError. With ``check_finite``, a result (or hidden
    value) beyond the dtype's range is a ValueError, never a silent inf or NaN.
    """
    return _ffn_fwd(_ffn_residuals(x, params, approximate, check_finite))[0]


class FFNGradients(NamedTuple):
    """Gradients of :func:`feed_forward`; unpacks as ``(dx, grads)``.

    x : array (..., D); params : :class:`FFNParams` of gradients with the parameters'
    shapes (b1, b2 None where the parameter is None).
    """

    x: Any
    params: FFNParams


@dataclass(frozen=True)
class FFNResiduals:
    """What the feed-forward backward needs from its forward (compute dtype): the input
    x (..., D), the parameters, the hidden pre-activation h (..., F) and a = GELU(h)."""

    xp: ModuleType
    x: Any
    params: FFNParams
    h: Any
    a: Any
    approximate: str
    dtype: Any  # the caller's dtype
    check_finite: bool


def _ffn_residuals(x, params, approximate, check_finite, d_out=None) -> FFNResiduals:
    """The checked arguments and the hidden layer (the forward pass up to GELU)."""
    dtype = x.dtype if hasattr(x, "dtype") else None
    xp, approximate, xw, p = _ffn_prepare(x, params, approximate, check_finite, d_out=d_out)
    h = _hidden(xp, xw, p)
    return FFNResiduals(xp, xw, p, h, _gelu(xp, h, approximate), approximate, dtype, bool(check_finite))


def _ffn_fwd(res: FFNResiduals) -> tuple[Any, FFNResiduals]:
    """``(y, residuals)``: ``y = a W2 + b2`` in the caller's dtype."""
    xp, p = res.xp, res.params
    y = xp.matmul(res.a, p.w2)
    if p.b2 is not None:
        y = y + p.b2
    y = xp.astype(y, res.dtype, copy=False)
    if res.check_finite:
        bk.check_result_finite(xp, "feed_forward", out=y)
    return y, res


def _ffn_bwd(res: FFNResiduals, d_out: Any) -> FFNGradients:
    """The gradients of ``sum(d_out * feed_forward(...))`` in the caller's dtype."""
    xp, p, xw = res.xp, res.params, res.x
    d, f = p.d_model, p.d_ff
    dy = xp.astype(d_out, xw.dtype, copy=False)
    dy_rows = xp.reshape(dy, (-1, d))
    dw2 = xp.matmul(xp.matrix_transpose(xp.reshape(res.a, (-1, f))), dy_rows)
    db2 = None if p.b2 is None else xp.sum(dy_rows, axis=0)
    dh = xp.matmul(dy, xp.matrix_transpose(p.w2)) * _gelu_derivative(xp, res.h, res.approximate)
    dh_rows = xp.reshape(dh, (-1, f))
    dw1 = xp.matmul(xp.matrix_transpose(xp.reshape(xw, (-1, d))), dh_rows)
    db1 = None if p.b1 is None else xp.sum(dh_rows, axis=0)
    dx = xp.matmul(dh, xp.matrix_transpose(p.w1))
    cast = lambda a: None if a is None else xp.astype(a, res.dtype, copy=False)  # noqa: E731
    grads = FFNGradients(cast(dx), FFNParams(cast(dw1), cast(db1), cast(dw2), cast(db2)))
    if res.check_finite:
        bk.check_result_finite(xp, "feed_forward_backward", dx=grads.x,
                               **{f"grads.{n}": getattr(grads.params, n) for n in ("w1", "b1", "w2", "b2")})
    return grads


def feed_forward_backward(
    x: Any,
    params: FFNParams,
    d_out: Any,
    *,
    approximate: str = "none",
    check_finite: bool = True,
) -> FFNGradients:
    """Gradients of ``sum(d_out * feed_forward(x, params))``.

    With ``h = x W1 + b1`` and ``a = GELU(h)``::

        dW2 = a^T d_out,  db2 = sum d_out,  dh = (d_out W2^T) * GELU'(h),
        dW1 = x^T dh,     db1 = sum dh,     dx = dh W1^T

    (parameter gradients summed over all leading dims of x).

    Returns
    -------
    FFNGradients
        A named tuple ``(x, params)`` that unpacks as ``dx, grads``: dx (..., D) and an
        FFNParams of gradients with the parameters' shapes (``b1``/``b2`` None where the
        parameter is None). All in ``x``'s dtype and namespace.
    """
    return _ffn_bwd(_ffn_residuals(x, params, approximate, check_finite, d_out=d_out), d_out)


def feed_forward_vjp(
    x: Any,
    params: FFNParams,
    *,
    approximate: str = "none",
    check_finite: bool = True,
) -> tuple[Any, Callable[[Any], FFNGradients]]:
    """``(feed_forward(x, params), backward)``: the forward pass, keeping the hidden layer
    (..., F) for ``backward(d_out)``, which returns the :class:`FFNGradients` without
    recomputing it. ``d_out`` has the output's shape and x's dtype.
    """
    y, res = _ffn_fwd(_ffn_residuals(x, params, approximate, check_finite))

    def backward(d_out: Any) -> FFNGradients:
        bk.check_upstream(d_out, like=("x", x), shape=tuple(y.shape), dtype=res.dtype, finite=res.check_finite)
        return _ffn_bwd(res, d_out)

    return y, backward
