"""High-precision reference attention and transformer block for small problems.

What it is
----------
A slow, plain implementation of softmax, scaled dot-product attention, multi-head
attention, layer normalisation, GELU, the feed-forward sub-layer and the transformer
block, forward *and* backward, in mpmath arithmetic. Tests use it as the ground truth
against which the float64 (and lower-precision) implementations in ``numerics`` are
measured, to relative errors far below 1e-12.

Why it is independent
---------------------
It is written directly from the mathematical definitions and shares no code with
``numerics.softmax``, ``numerics.attention`` or the other array modules:

* softmax is ``exp(z_j) / sum(exp(z_l) for allowed l)``: masked keys are simply left out
  of the sum, with no max subtraction and no ``-inf``; a row with no allowed key is 0;
* every gradient comes from the **complex-step** method, not from hand-derived backward
  formulas: the input entry ``x`` is replaced by ``x + i h`` and
  ``d/dx sum(d_out * f) = Im(sum(d_out * f(x + i h))) / h``. Because there is no
  subtraction of nearby values, this is exact up to ``O(h^2)`` and the working precision
  for analytic ``f`` -- which is why the reference avoids ``max``, ``abs`` and every
  comparison on values (masks and causality are decided from positions only).

Precision
---------
Forward values are computed with at least :data:`DPS` = 50 significant decimal digits
(more if the caller's mpmath context is already more precise); float64 inputs convert
exactly (``mpf(float)`` is exact). Gradients are computed at :data:`GRADIENT_DPS` = 100
digits with step ``h =`` :data:`STEP` ``= 2**-110`` (about 7.7e-34): the truncation error
is ``O(h^2)`` ~ 1e-67 relative, and a rounding error of 1e-100 times the size of the
intermediate values becomes an absolute error of about 1e-66 times that size in the
gradient. Every function restores the caller's mpmath precision on return, so arithmetic
you do yourself on the returned object arrays runs at *your* precision (mpmath's default
is 15 digits): wrap it in ``mpmath.workdps(50)`` or convert with :func:`to_float64` first.

Shapes (the package's glossary)
-------------------------------
B... batch dims (any number, broadcast), N query length, M key length, H heads,
D model width, K key/query width per head, V value width per head, F feed-forward width.

Conventions: row vectors (``Q = X @ W_q``); boolean masks with True = "may attend",
broadcastable to (..., N, M); ``causal=True`` allows key j for query i iff ``j <= i``
(top-left aligned, combined with ``mask`` by AND); a query row with no allowed key gives
output 0 and gradient 0. Parameter objects (multi-head attention, feed-forward, block)
are read only through attribute access, so ``numerics.multihead.MHAParams``,
``numerics.layers.FFNParams``, ``numerics.block.BlockParams`` and plain
``types.SimpleNamespace`` objects all work.

Cost: every operation is a Python call on mpmath numbers, and a gradient costs one
forward pass per input entry. Use problems of a few hundred entries at most (a block with
B=2, N=3, D=4, H=2, F=8 and its ~200 parameters takes a few seconds).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import numbers
from typing import Any, Callable, Iterator, Mapping

import mpmath
import numpy as np

__all__ = [
    "DPS",
    "GRADIENT_DPS",
    "STEP",
    "emulated_precision",
    "to_mp",
    "to_float64",
    "softmax",
    "attention",
    "logsumexp",
    "multi_head_attention",
    "layer_norm",
    "gelu",
    "feed_forward",
    "transformer_block",
    "param_arrays",
    "gradients",
    "attention_gradients",
    "multi_head_attention_gradients",
    "transformer_block_gradients",
]

#: Minimum working precision of the forward functions, in significant decimal digits.
DPS = 50
#: Working precision of :func:`gradients`, in significant decimal digits.
GRADIENT_DPS = 100
#: Complex step ``h`` of :func:`gradients` (an exact power of two, about 7.7e-34).
STEP = mpmath.mpf(2) ** -110

_MHA_FIELDS = ("w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o")
_FFN_FIELDS = ("w1", "b1", "w2", "b2")
_BLOCK_FIELDS = ("ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta")


# --------------------------------------------------------------------------- precision


_EMULATED_BITS: contextvars.ContextVar[int | None] = contextvars.ContextVar("emulated_bits", default=None)


@contextlib.contextmanager
def _precision(dps: int = DPS) -> Iterator[None]:
    """mpmath context with at least ``dps`` digits (never lowers the caller's precision), or
    exactly the bits of :func:`emulated_precision` inside one."""
    bits = _EMULATED_BITS.get()
    if bits is not None:
        with mpmath.workprec(bits):
            yield
        return
    with mpmath.workdps(max(int(dps), int(mpmath.mp.dps))):
        yield


@contextlib.contextmanager
def emulated_precision(bits: int) -> Iterator[None]:
    """Run this module's functions with every operation rounded to ``bits`` significant bits.

    Inside, the inputs are rounded to ``bits`` bits (24: float32's significand, as a cast to
    float32 rounds them) and every operation of the definitions is rounded to nearest: the
    textbook formulas evaluated in a lower precision, which is what the tolerance rule's
    "plain implementation in the same precision" means (FlashAttention's reference run without
    upcasting). The exponent range stays unbounded (no overflow or underflow), and
    :func:`gradients`' complex step becomes forward-mode differentiation in that precision.
    Used by ``verify.crosscheck`` for the float32 rows; not a ground truth.

    Parameters
    ----------
    bits : int >= 8
        Significant bits of every intermediate result.
    """
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or bits < 8:
        raise ValueError(f"bits must be an int >= 8, got {bits!r}")
    token = _EMULATED_BITS.set(int(bits))
    try:
        yield
    finally:
        _EMULATED_BITS.reset(token)


# --------------------------------------------------------------------------- conversions

_exp = np.frompyfunc(mpmath.exp, 1, 1)


def _erf_value(z: Any) -> Any:
    """erf, with the complex step's argument ``x + i h`` (``|h|`` tiny against x) taken to first
    order, ``erf(x) + i h erf'(x)`` (exact to O(h^2), like the step itself): mpmath's complex erf
    loses an imaginary part that far below the real one at low precision (at 53 bits it gave
    0.27 for erf'(0.5) = 0.88), which :func:`emulated_precision` runs at."""
    if isinstance(z, mpmath.mpc) and abs(z.imag) <= mpmath.ldexp(max(abs(z.real), 1), -60):
        x = z.real
        return mpmath.mpc(mpmath.erf(x), z.imag * 2 / mpmath.sqrt(mpmath.pi) * mpmath.exp(-x * x))
    return mpmath.erf(z)


_erf = np.frompyfunc(_erf_value, 1, 1)
_tanh = np.frompyfunc(mpmath.tanh, 1, 1)
_cos = np.frompyfunc(mpmath.cos, 1, 1)
_sin = np.frompyfunc(mpmath.sin, 1, 1)
_sqrt = np.frompyfunc(mpmath.sqrt, 1, 1)
_mpf_of_float = np.frompyfunc(lambda t: mpmath.mpf(float(t)), 1, 1)
_mpmathify = np.frompyfunc(mpmath.mpmathify, 1, 1)


def _object_array(x: Any) -> np.ndarray:
    """Wrap a frompyfunc result (a bare object for 0-d input) as an object array."""
    if isinstance(x, np.ndarray):
        return x
    out = np.empty((), dtype=object)
    out[()] = x
    return out


def to_mp(x: Any, name: str = "x") -> np.ndarray:
    """Convert an array to a NumPy object array of mpmath numbers, exactly.

    Parameters
    ----------
    x : array_like
        Real floating or integer NumPy array (converted exactly), or an object array of
        mpmath numbers (``mpf``/``mpc``, returned with its entries mpmathified).
    name : str
        Argument name used in error messages.

    Returns
    -------
    numpy.ndarray of dtype object, same shape.
    """
    if isinstance(x, np.ndarray) and x.dtype == object:
        return _object_array(_mpmathify(x))
    try:
        a = np.asarray(x)
    except Exception:  # pragma: no cover - exotic objects
        raise TypeError(f"{name} must be a real NumPy array, got {type(x).__name__}") from None
    if a.dtype == object:
        return _object_array(_mpmathify(a))
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name} must have a real floating dtype, got {a.dtype} (shape {a.shape})")
    if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf (shape {a.shape}); the reference needs finite input")
    if np.issubdtype(a.dtype, np.floating) and a.dtype.itemsize > 8:
        raise TypeError(f"{name} has dtype {a.dtype}; convert it to float64 or to an object array of mpf")
    if a.dtype.kind == "f":
        return _object_array(_mpf_of_float(a.astype(np.float64)))
    return _object_array(_mpmathify(a.astype(object)))


def _to_float(v: Any) -> float:
    v = mpmath.mpmathify(v)
    if isinstance(v, mpmath.mpc):
        if v.imag != 0:
            raise TypeError(f"cannot convert the complex value {v} to float64")
        v = v.real
    return float(v)


_to_float_u = np.frompyfunc(_to_float, 1, 1)


def to_float64(x: Any) -> np.ndarray:
    """Round an object array of mpmath reals to the nearest float64 values.

    Parameters
    ----------
    x : numpy.ndarray of dtype object (or anything :func:`numpy.asarray` accepts)

    Returns
    -------
    numpy.ndarray of dtype float64, same shape. Complex entries with a non-zero imaginary
    part raise TypeError.
    """
    a = np.asarray(x, dtype=object)
    return np.asarray(_to_float_u(a), dtype=object).astype(np.float64)


def _zeros(shape: tuple[int, ...]) -> np.ndarray:
    out = np.empty(shape, dtype=object)
    out.fill(mpmath.mpf(0))
    return out


def _mp_scalar(name: str, value: Any) -> Any:
    """A real scalar (float, int, mpf or 0-d array) as an exact mpf."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (mpmath.mpf, mpmath.mpc)):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not np.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return mpmath.mpf(value)


# --------------------------------------------------------------------------- checks


def _shape(x: np.ndarray) -> str:
    return str(tuple(int(n) for n in x.shape))


def _check_ndim(name: str, x: np.ndarray, min_ndim: int, desc: str) -> None:
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have shape {desc} (at least {min_ndim} dimensions), got shape {_shape(x)}")


def _broadcast(what: str, **arrays_shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*arrays_shapes.values()))
    except ValueError:
        listing = ", ".join(f"{n} has shape {tuple(s)}" for n, s in arrays_shapes.items())
        raise ValueError(f"{what} must broadcast: {listing}") from None


def _check_mask(mask: Any, target: tuple[int, ...], target_desc: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        raise TypeError(f"mask must be a boolean array (True = may attend), got dtype {m.dtype}")
    try:
        ok = tuple(np.broadcast_shapes(m.shape, target)) == tuple(target)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"mask must broadcast to {target_desc} {tuple(target)}, got shape {_shape(m)}")
    return m


def _check_vector(name: str, b: Any, size: int, what: str) -> np.ndarray | None:
    if b is None:
        return None
    b = to_mp(b, name)
    if b.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},) ({what}), got shape {_shape(b)}")
    return b


def _check_matrix(name: str, w: Any, desc: str, rows: int | None = None) -> np.ndarray:
    if w is None:
        raise ValueError(f"{name} is required, got None")
    w = to_mp(w, name)
    if w.ndim != 2:
        raise ValueError(f"{name} must be a matrix of shape {desc}, got shape {_shape(w)}")
    if rows is not None and w.shape[0] != rows:
        raise ValueError(f"{name} must have shape {desc} with {rows} rows, got shape {_shape(w)}")
    return w


def _field(params: Any, name: str, where: str) -> Any:
    """Required attribute ``name`` of a parameter object, with a clear error when missing."""
    try:
        return getattr(params, name)
    except AttributeError:
        raise TypeError(f"{where} must have an attribute {name!r} ({type(params).__name__} has none)") from None


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


# --------------------------------------------------------------------------- core maths
# The underscored functions take checked object arrays and do the mathematics only.


def _softmax(z: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    """Row softmax over the last axis; excluded entries are left out of the sum."""
    if allowed is not None:
        # The mask may have batch dims the scores lack (it broadcasts with q, k and v).
        z = np.broadcast_to(z, np.broadcast_shapes(z.shape, allowed.shape))
    e = _exp(z)
    if allowed is not None:
        allowed = np.broadcast_to(allowed, z.shape)
        e = np.where(allowed, e, mpmath.mpf(0))
        has_any = np.any(allowed, axis=-1, keepdims=True)
    else:
        has_any = np.ones(z.shape[:-1] + (1,), dtype=bool)
    total = np.sum(e, axis=-1, keepdims=True)
    # A row with nothing allowed has total 0; divide by 1 there (e is 0 there).
    total = np.where(has_any, total, mpmath.mpf(1))
    return np.where(has_any, e / total, mpmath.mpf(0))


def _layer_norm(x: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None, eps: Any) -> np.ndarray:
    d = x.shape[-1]
    mean = np.sum(x, axis=-1, keepdims=True) / d
    centred = x - mean
    var = np.sum(centred * centred, axis=-1, keepdims=True) / d
    y = centred / _sqrt(var + eps)
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    half = mpmath.mpf(1) / 2
    if approximate == "none":
        return x * half * (1 + _erf(x / mpmath.sqrt(2)))
    c = mpmath.sqrt(2 / mpmath.pi)
    a = mpmath.mpf("0.044715")
    return x * half * (1 + _tanh(c * (x + a * x * x * x)))


# --------------------------------------------------------------------------- forward API


def softmax(z: Any, mask: Any = None) -> np.ndarray:
    """Softmax along the last axis, ``exp(z_j) / sum_{allowed l} exp(z_l)``.

    Parameters
    ----------
    z : array (..., M)
        Real logits (float64 or an object array of mpmath numbers).
    mask : boolean array, optional
        Broadcastable to ``z.shape``; False entries are left out of the sum and get 0.

    Returns
    -------
    object array (..., M) of mpmath numbers; rows with no allowed entry are 0.
    """
    with _precision():
        z = to_mp(z, "z")
        _check_ndim("z", z, 1, "(..., M)")
        m = None if mask is None else _check_mask(mask, z.shape, "z's shape")
        return _softmax(z, m)


def _prepare_scale(scale: Any, width: int) -> Any:
    if scale is None:
        # K = 0: every score is an empty sum, 0, whatever the scale; take 1 for it.
        return 1 / mpmath.sqrt(width) if width else mpmath.mpf(1)
    return _mp_scalar("scale", scale)  # 0 is allowed: uniform weights, as in numerics.attention


def _check_alignment(causal: Any) -> str | None:
    """None, "top_left" or "bottom_right" from ``causal`` (True is "top_left")."""
    if isinstance(causal, (bool, np.bool_)):
        return "top_left" if causal else None
    if isinstance(causal, str) and causal in ("top_left", "bottom_right"):
        return causal
    if isinstance(causal, str):
        raise ValueError(f"causal must be False, True, 'top_left' or 'bottom_right', got {causal!r}")
    raise TypeError(f"causal must be a bool or 'top_left' or 'bottom_right', got {type(causal).__name__}")


def _positional(n: int, m: int, causal: Any, window: Any) -> np.ndarray | None:
    """Boolean (N, M): key j allowed for query i by causality and the window, from positions.

    With bottom-right alignment query i sits at position ``i + M - N`` of the keys' axis,
    else at position i; causal allows the keys at or before it, the window (left, right)
    the keys from ``left`` before it to ``right`` after it (None: unbounded)."""
    alignment = _check_alignment(causal)
    if window is not None:
        if not isinstance(window, (tuple, list)) or len(window) != 2:
            raise TypeError(f"window must be None or a pair (left, right), got {window!r}")
        for side, w in zip(("left", "right"), window):
            if w is not None and (isinstance(w, bool) or not isinstance(w, numbers.Integral)):
                raise TypeError(f"window's {side} side must be an int or None, got {w!r}")
            if w is not None and w < 0:
                raise ValueError(f"window's {side} side must be >= 0, got {w}")
    if alignment is None and window is None:
        return None
    position = np.arange(n)[:, None] + (m - n if alignment == "bottom_right" else 0)
    key = np.arange(m)[None, :]
    ok = np.ones((n, m), dtype=bool)
    if alignment is not None:
        ok &= key <= position
    if window is not None:
        left, right = window
        if left is not None:
            ok &= key >= position - left
        if right is not None:
            ok &= key <= position + right
    return ok


def _split_bias(bias: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """``(values, excluded)``: the bias as mp numbers (0 where it is -inf) and where it is -inf
    (None when nowhere). Object arrays (as :func:`gradients` passes) are taken as they are."""
    b = np.asarray(bias) if not isinstance(bias, np.ndarray) else bias
    if b.dtype == object:
        return to_mp(b, "bias"), None
    if b.dtype == np.bool_ or not np.issubdtype(b.dtype, np.floating):
        raise TypeError(f"bias must be a real floating array, got dtype {b.dtype}")
    if np.any(np.isnan(b) | (b == np.inf)):
        raise ValueError(f"bias contains NaN or +Inf (shape {_shape(b)}); only -inf (an excluded key) is allowed")
    excluded = b == -np.inf
    values = to_mp(np.where(excluded, 0.0, b), "bias")
    return values, (excluded if excluded.any() else None)


def _fold_gqa(q, k, v, enable_gqa):
    """k and v with each key/value head repeated for its query heads: query head h uses
    key/value head h // (Hq / Hkv) (a copy: this is the reference, not the fast path)."""
    if not _check_bool("enable_gqa", enable_gqa):
        return k, v
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_ndim(name, x, 3, "(..., H, L, C)")
    hq, hkv = q.shape[-3], k.shape[-3]
    if v.shape[-3] != hkv or hkv == 0 or hq % hkv:
        raise ValueError(
            f"enable_gqa needs Hq a multiple of Hkv and k, v with Hkv heads: q has shape {_shape(q)}, "
            f"k has shape {_shape(k)}, v has shape {_shape(v)}"
        )
    heads = np.arange(hq) // (hq // hkv)
    return np.take(k, heads, axis=-3), np.take(v, heads, axis=-3)


def _final_scores(q, k, scale, bias, softcap):
    """scale -> softcap -> bias, written from the definitions."""
    scores = (q @ np.swapaxes(k, -1, -2)) * scale
    if softcap is not None:
        scores = softcap * _tanh(scores / softcap)
    if bias is not None:
        scores = scores + bias
    return scores


def _checked_attention_args(q, k, v, mask, bias, causal, window, softcap, scale, enable_gqa, dropout_p, dropout_mask):
    """Everything :func:`attention` and :func:`logsumexp` need, checked, in the current mp context."""
    q, k = to_mp(q, "q"), to_mp(k, "k")
    v = None if v is None else to_mp(v, "v")
    _check_ndim("q", q, 2, "(..., N, K)")
    _check_ndim("k", k, 2, "(..., M, K)")
    if v is not None:
        _check_ndim("v", v, 2, "(..., M, V)")
        k, v = _fold_gqa(q, k, v, enable_gqa)
        if k.shape[-2] != v.shape[-2]:
            raise ValueError(
                f"k and v must have the same length M: k has shape {_shape(k)}, v has shape {_shape(v)}"
            )
    else:
        k = _fold_gqa(q, k, k, enable_gqa)[0]
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same width K: q has shape {_shape(q)}, k has shape {_shape(k)}")
    n, m = q.shape[-2], k.shape[-2]
    shapes = {"q": q.shape[:-2], "k": k.shape[:-2]}
    if v is not None:
        shapes["v"] = v.shape[:-2]
    bias_values, excluded = (None, None) if bias is None else _split_bias(bias)
    extra = {"mask": mask, "bias": bias_values, "dropout_mask": dropout_mask}
    for name, a in extra.items():
        if a is not None:
            shapes[name] = np.shape(a)[:-2]
    batch = _broadcast(f"the batch dimensions of {', '.join(shapes)}", **shapes)
    mask = None if mask is None else _check_mask(mask, batch + (n, m), "(..., N, M) =")
    if dropout_mask is not None:
        dropout_mask = np.asarray(dropout_mask)
        if dropout_mask.dtype != np.bool_:
            raise TypeError(f"dropout_mask must be a boolean keep mask, got dtype {dropout_mask.dtype}")
    for name, a in (("bias", bias_values), ("dropout_mask", dropout_mask)):
        if a is None:
            continue
        try:
            ok = tuple(np.broadcast_shapes(a.shape, batch + (n, m))) == batch + (n, m)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{name} must broadcast to (..., N, M) = {batch + (n, m)}, got shape {_shape(a)}")
    allowed = mask
    for extra_mask in (excluded if excluded is None else ~excluded, _positional(n, m, causal, window)):
        if extra_mask is not None:
            allowed = extra_mask if allowed is None else (allowed & extra_mask)
    if softcap is not None:
        softcap = _mp_scalar("softcap", softcap)
        if softcap <= 0:
            raise ValueError(f"softcap must be > 0, got {softcap}")
    p = _mp_scalar("dropout_p", dropout_p)
    if not 0 <= p < 1:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")
    if p > 0 and dropout_mask is None:
        raise ValueError("dropout_p > 0 needs a dropout_mask (the reference is deterministic)")
    return q, k, v, allowed, bias_values, softcap, _prepare_scale(scale, q.shape[-1]), p, dropout_mask, batch


def attention(
    q: Any,
    k: Any,
    v: Any,
    *,
    mask: Any = None,
    bias: Any = None,
    causal: Any = False,
    window: Any = None,
    softcap: Any = None,
    scale: Any = None,
    enable_gqa: bool = False,
    dropout_p: Any = 0.0,
    dropout_mask: Any = None,
) -> np.ndarray:
    """Scaled dot-product attention with the options of :func:`numerics.scaled_dot_product_attention`.

    Written from the definitions: scores ``scale q.k``; ``c tanh(s / c)`` with a softcap;
    plus ``bias``; keys excluded by ``mask`` (False), a ``-inf`` bias, causality or the
    window are left out of the softmax's sum (a row with none left is 0); the weights times
    ``keep / (1 - dropout_p)``; times v.

    Parameters
    ----------
    q : array (..., N, K)
    k : array (..., M, K)
    v : array (..., M, V)
        float64 or object arrays of mpmath numbers; the batch dims of q, k, v, mask, bias
        and dropout_mask broadcast together. With ``enable_gqa``, (..., Hq, N, K) and
        (..., Hkv, M, .), query head h using key/value head ``h // (Hq / Hkv)``.
    mask : boolean array, optional
        Broadcastable to (..., N, M); True = query i may attend to key j.
    bias : float array, optional
        Added to the scores; -inf entries exclude the key.
    causal : bool or {"top_left", "bottom_right"}
        True = "top_left": key j allowed for query i only when ``j <= i``;
        "bottom_right": only when ``j <= i + M - N``.
    window : (left, right), optional
        Keys from ``left`` before to ``right`` after the query's position (``i``, or
        ``i + M - N`` under bottom-right alignment); None = unbounded side.
    softcap : real > 0, optional
    scale : real, optional
        Multiplies the scores; default ``1 / sqrt(K)`` computed in mp precision.
    enable_gqa : bool
    dropout_p : real in [0, 1)
    dropout_mask : boolean array, optional
        Keep mask broadcastable to (..., N, M), required when ``dropout_p > 0``.

    Returns
    -------
    object array (..., N, V); rows with no allowed key are 0.
    """
    with _precision():
        q, k, v, allowed, bias, softcap, scale, p, keep, batch = _checked_attention_args(
            q, k, v, mask, bias, causal, window, softcap, scale, enable_gqa, dropout_p, dropout_mask
        )
        weights = _softmax(_final_scores(q, k, scale, bias, softcap), allowed)
        if keep is not None:
            weights = np.where(keep, weights, mpmath.mpf(0)) / (1 - p)
        out = weights @ v
        n = q.shape[-2]
        return np.broadcast_to(out, batch + (n, v.shape[-1])).copy()


def logsumexp(
    q: Any,
    k: Any,
    *,
    mask: Any = None,
    bias: Any = None,
    causal: Any = False,
    window: Any = None,
    softcap: Any = None,
    scale: Any = None,
    enable_gqa: bool = False,
) -> np.ndarray:
    """``log sum_j exp(Z_ij)`` over the allowed keys of each row of the final scores
    (..., N) (what ``return_lse=True`` returns); ``-inf`` for a row with no allowed key.

    Arguments as in :func:`attention` (dropout does not enter the scores)."""
    with _precision():
        q, k, _, allowed, bias, softcap, scale, _, _, batch = _checked_attention_args(
            q, k, None, mask, bias, causal, window, softcap, scale, enable_gqa, 0.0, None
        )
        z = _final_scores(q, k, scale, bias, softcap)
        shape = np.broadcast_shapes(z.shape, batch + z.shape[-2:], () if allowed is None else allowed.shape)
        z = np.broadcast_to(z, shape)
        ok = np.ones(shape, dtype=bool) if allowed is None else np.broadcast_to(allowed, shape)
        out = np.empty(shape[:-1], dtype=object)
        for idx in np.ndindex(*shape[:-1]):
            terms = [mpmath.exp(z[idx][j]) for j in range(shape[-1]) if ok[idx][j]]
            out[idx] = mpmath.log(mpmath.fsum(terms)) if terms else mpmath.mpf("-inf")
        return out


@dataclasses.dataclass(frozen=True)
class _Options:
    """The attention options of multi-head attention and the block (beyond mask and scale)."""

    bias: Any = None
    causal: Any = False
    window: Any = None
    softcap: Any = None
    rope: Any = None
    #: Boolean (..., H, N, M): keys excluded besides a -inf bias (the gradients pass the bias's
    #: finite values as ``bias`` and its -inf entries here).
    excluded: Any = None


def _rope_fields(rope: Any) -> tuple[Any, str, Any, Any] | None:
    """``(theta, style, positions, key_positions)`` of ``rope`` (None/False, True, a dict or
    an object with those attributes, e.g. :class:`numerics.Rope`), checked; None without rope."""
    if rope is None or rope is False or (isinstance(rope, np.bool_) and not rope):
        return None
    if rope is True or isinstance(rope, np.bool_):
        rope = {}
    get = rope.get if isinstance(rope, Mapping) else (lambda name, default: getattr(rope, name, default))
    if isinstance(rope, Mapping):
        unknown = sorted(str(key) for key in rope if key not in ("theta", "style", "positions", "key_positions"))
        if unknown:
            raise TypeError(f"rope got unknown keys {unknown}; it takes theta, style, positions, key_positions")
    theta = _mp_scalar("rope.theta", get("theta", 10000.0))
    if theta <= 0:
        raise ValueError(f"rope.theta must be > 0, got {theta}")
    style = get("style", "half")
    if style not in ("half", "interleaved"):
        raise ValueError(f"rope.style must be 'half' or 'interleaved', got {style!r}")
    return theta, style, get("positions", None), get("key_positions", None)


def _rotate(x: np.ndarray, positions: np.ndarray, theta: Any, style: str) -> np.ndarray:
    """Rotary embedding of the rows of x (..., L, K): pair i (coordinates i and i + K/2 for
    "half", 2i and 2i + 1 for "interleaved") turned by ``pos * theta^(-2i/K)``, from the
    definition with mpmath's cos and sin; ``positions`` broadcasts to (..., L)."""
    width = x.shape[-1]
    half = width // 2
    pos = to_mp(np.asarray(positions, dtype=np.float64), "rope positions")[..., None]  # (..., L, 1)
    inv = np.array([mpmath.power(theta, mpmath.mpf(-2 * i) / width) for i in range(half)], dtype=object)
    angles = pos * inv
    cos, sin = _cos(angles), _sin(angles)
    if style == "half":
        first, second = list(range(half)), list(range(half, width))
    else:
        first, second = list(range(0, width, 2)), list(range(1, width, 2))
    a, b = x[..., first], x[..., second]
    shape = np.broadcast_shapes(a.shape, cos.shape)
    out = np.empty(shape[:-1] + (width,), dtype=object)
    out[..., first] = a * cos - b * sin
    out[..., second] = b * cos + a * sin
    return out


def _mha(x, params, memory, mask, scale, options: _Options = _Options(), where="params"):
    """Checked multi-head attention in the current mp context."""
    x = to_mp(x, "x")
    _check_ndim("x", x, 2, "(..., N, D)")
    mem = x if memory is None else to_mp(memory, "memory")
    _check_ndim("memory", mem, 2, "(..., M, Dm)")
    d, dm = x.shape[-1], mem.shape[-1]
    h = _field(params, "num_heads", where)
    if isinstance(h, bool) or not isinstance(h, numbers.Integral) or h < 1:
        raise ValueError(f"{where}.num_heads must be a positive int, got {h!r}")
    h = int(h)
    hkv = getattr(params, "num_kv_heads", None)
    hkv = h if hkv is None else hkv
    if isinstance(hkv, bool) or not isinstance(hkv, numbers.Integral) or hkv < 1 or h % hkv:
        raise ValueError(f"{where}.num_kv_heads must be a positive int that divides num_heads = {h}, got {hkv!r}")
    hkv = int(hkv)
    w_q = _check_matrix(f"{where}.w_q", _field(params, "w_q", where), "(D, H*K)", rows=d)
    w_k = _check_matrix(f"{where}.w_k", _field(params, "w_k", where), "(Dm, Hkv*K)", rows=dm)
    w_v = _check_matrix(f"{where}.w_v", _field(params, "w_v", where), "(Dm, Hkv*V)", rows=dm)
    hk, hv = w_q.shape[1], w_v.shape[1]
    if hk % h or w_k.shape[1] * h != hk * hkv:
        raise ValueError(
            f"{where}.w_q must have H*K columns with H = {h} and {where}.w_k Hkv*K columns with Hkv = {hkv}: "
            f"w_q has shape {_shape(w_q)}, w_k has shape {_shape(w_k)}"
        )
    if hv % hkv:
        raise ValueError(f"{where}.w_v must have Hkv*V columns with Hkv = {hkv}, got shape {_shape(w_v)}")
    kw, vw = hk // h, hv // hkv
    w_o = _check_matrix(f"{where}.w_o", _field(params, "w_o", where), "(H*V, D)", rows=h * vw)
    b_q = _check_vector(f"{where}.b_q", getattr(params, "b_q", None), hk, "H*K")
    b_k = _check_vector(f"{where}.b_k", getattr(params, "b_k", None), w_k.shape[1], "Hkv*K")
    b_v = _check_vector(f"{where}.b_v", getattr(params, "b_v", None), hv, "Hkv*V")
    b_o = _check_vector(f"{where}.b_o", getattr(params, "b_o", None), w_o.shape[1], "w_o's width")
    n, m = x.shape[-2], mem.shape[-2]
    bias_values, excluded = (None, None) if options.bias is None else _split_bias(options.bias)
    if options.excluded is not None:
        excluded = options.excluded if excluded is None else (excluded | options.excluded)
    shapes = {"x": x.shape[:-2], "memory": mem.shape[:-2]}
    if mask is not None:
        shapes["mask"] = np.shape(mask)[:-2]
    if bias_values is not None:
        _check_ndim("bias", bias_values, 3, "(..., H, N, M)")
        shapes["bias"] = bias_values.shape[:-3]
    batch = _broadcast(f"the batch dimensions of {', '.join(shapes)}", **shapes)
    mask = None if mask is None else _check_mask(mask, batch + (n, m), "(..., N, M) =")
    if bias_values is not None:
        try:
            ok = np.broadcast_shapes(bias_values.shape, batch + (h, n, m)) == batch + (h, n, m)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"bias must broadcast to (..., H, N, M) = {batch + (h, n, m)}, got shape "
                             f"{_shape(bias_values)}")
    allowed = mask
    positional = _positional(n, m, options.causal, options.window)
    if positional is not None:
        allowed = positional if allowed is None else (allowed & positional)
    softcap = options.softcap
    if softcap is not None:
        softcap = _mp_scalar("softcap", softcap)
        if softcap <= 0:
            raise ValueError(f"softcap must be > 0, got {softcap}")
    rope = _rope_fields(options.rope)
    if rope is not None and kw % 2:
        raise ValueError(f"rope rotates pairs of coordinates: the per-head width K must be even, got K = {kw}")
    scale = _prepare_scale(scale, kw)

    q_all = x @ w_q + (0 if b_q is None else b_q)
    k_all = mem @ w_k + (0 if b_k is None else b_k)
    v_all = mem @ w_v + (0 if b_v is None else b_v)
    if rope is not None:
        theta, style, q_pos, k_pos = rope
        if q_pos is None:
            delta = m - n if _check_alignment(options.causal) == "bottom_right" else 0
            q_pos = np.arange(delta, delta + n)
        if k_pos is None:
            k_pos = rope[2] if memory is None and rope[2] is not None else np.arange(m)
    group = h // hkv
    heads = []
    for i in range(h):
        j = i // group  # query head i uses key/value head i // (H / Hkv)
        q_i = q_all[..., i * kw:(i + 1) * kw]
        k_j = k_all[..., j * kw:(j + 1) * kw]
        if rope is not None:
            q_i, k_j = _rotate(q_i, q_pos, theta, style), _rotate(k_j, k_pos, theta, style)
        bias_i = None if bias_values is None else bias_values[..., i if bias_values.shape[-3] > 1 else 0, :, :]
        allowed_i = allowed
        if excluded is not None:
            kept = ~excluded[..., i if excluded.shape[-3] > 1 else 0, :, :]
            allowed_i = kept if allowed_i is None else (allowed_i & kept)
        weights = _softmax(_final_scores(q_i, k_j, scale, bias_i, softcap), allowed_i)
        heads.append(weights @ v_all[..., j * vw:(j + 1) * vw])
    # Each head broadcasts to batch + (N, V) before concatenation.
    heads = [np.broadcast_to(o, batch + (n, vw)) for o in heads]
    out = np.concatenate(heads, axis=-1) @ w_o
    return out + b_o if b_o is not None else out


def multi_head_attention(
    x: Any,
    params: Any,
    *,
    memory: Any = None,
    mask: Any = None,
    bias: Any = None,
    causal: Any = False,
    window: Any = None,
    softcap: Any = None,
    rope: Any = None,
    scale: Any = None,
) -> np.ndarray:
    """Multi-head attention in the row convention, with the options of
    :func:`numerics.multi_head_attention`.

    ``Q = X W_q + b_q``, ``K = Mem W_k + b_k``, ``V = Mem W_v + b_v`` (``Mem = memory``
    or ``x``); query head i takes columns ``i*K:(i+1)*K`` of Q and key/value head
    ``g = i // (H / Hkv)``, columns ``g*K:(g+1)*K`` of K and ``g*V:(g+1)*V`` of V; with
    ``rope`` its q and k rows are rotated; its scores are ``scale q.k``, softcapped, plus
    its bias; the keys excluded by the mask, causality, the window or a -inf bias are left
    out of the softmax; the head outputs are concatenated in head order and multiplied by
    ``W_o``, then ``b_o`` is added.

    Parameters
    ----------
    x : array (..., N, D)
    params : object with attributes
        ``w_q`` (D, H*K), ``w_k`` (Dm, Hkv*K), ``w_v`` (Dm, Hkv*V), ``w_o`` (H*V, D),
        ``num_heads`` (int H), optionally ``num_kv_heads`` (Hkv, None or missing = H), and
        ``b_q`` (H*K,), ``b_k`` (Hkv*K,), ``b_v`` (Hkv*V,), ``b_o`` (D,), each optional.
    memory : array (..., M, Dm), optional
        Keys and values come from here (cross-attention); default ``x``.
    mask : boolean array, optional
        Broadcastable to (..., N, M), applied to every head.
    bias : float array, optional
        Broadcastable to (..., H, N, M) (axis -3: 1 or H heads); -inf excludes the key.
    causal : bool or {"top_left", "bottom_right"}
        True = "top_left": key j allowed for query i only when ``j <= i``; "bottom_right":
        only when ``j <= i + M - N``.
    window : (left, right), optional
        As in :func:`attention`.
    softcap : real > 0, optional
    rope : None, bool, dict or object with ``theta``, ``style``, ``positions``, ``key_positions``
        Rotary embedding of every head's q and k (e.g. :class:`numerics.Rope`): style
        "half" pairs i with i + K/2, "interleaved" 2i with 2i + 1; query positions default
        to ``delta + 0..N-1`` (``delta = M - N`` under bottom-right alignment, else 0), key
        positions to the query positions given for self-attention, else ``0..M-1``.
    scale : real, optional
        Score scale; default ``1 / sqrt(K)``.

    Returns
    -------
    object array (..., N, D) (the width of ``w_o``).
    """
    with _precision():
        return _mha(x, params, memory, mask, scale, _Options(bias, causal, window, softcap, rope))


def _ln_checked(x, gamma, beta, eps, prefix=""):
    x = to_mp(x, "x")
    _check_ndim("x", x, 1, "(..., D)")
    d = x.shape[-1]
    gamma = _check_vector(prefix + "gamma", gamma, d, "D, the last dimension of x")
    beta = _check_vector(prefix + "beta", beta, d, "D, the last dimension of x")
    e = _mp_scalar("eps", eps)
    if not isinstance(e, mpmath.mpc) and e < 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    return _layer_norm(x, gamma, beta, e)


def layer_norm(x: Any, gamma: Any = None, beta: Any = None, eps: Any = 1e-5) -> np.ndarray:
    """Layer normalisation over the last axis with the biased variance.

    ``(x - mean) / sqrt(var + eps) * gamma + beta`` with ``var = mean((x - mean)**2)``.

    Parameters
    ----------
    x : array (..., D)
    gamma, beta : array (D,), optional
        Scale and shift; None means 1 and 0.
    eps : real
        Added to the variance; the float64 value given is used exactly (``1e-5`` means
        the double nearest 1e-5, as in float implementations).

    Returns
    -------
    object array (..., D).
    """
    with _precision():
        return _ln_checked(x, gamma, beta, eps)


def _check_approximate(approximate: Any) -> str:
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return approximate


def gelu(x: Any, approximate: str = "none") -> np.ndarray:
    """GELU, exact ``x Phi(x) = x/2 (1 + erf(x / sqrt 2))`` or its tanh approximation.

    Parameters
    ----------
    x : array (...)
    approximate : {"none", "tanh"}
        ``"tanh"``: ``x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` with the constant
        0.044715 taken as the exact decimal.

    Returns
    -------
    object array, same shape.
    """
    with _precision():
        return _gelu(to_mp(x, "x"), _check_approximate(approximate))


def _ffn(x, params, approximate, where="params"):
    x = to_mp(x, "x")
    _check_ndim("x", x, 1, "(..., D)")
    d = x.shape[-1]
    w1 = _check_matrix(f"{where}.w1", _field(params, "w1", where), "(D, F)", rows=d)
    f = w1.shape[1]
    b1 = _check_vector(f"{where}.b1", getattr(params, "b1", None), f, "F, the width of w1")
    w2 = _check_matrix(f"{where}.w2", _field(params, "w2", where), "(F, D)", rows=f)
    b2 = _check_vector(f"{where}.b2", getattr(params, "b2", None), w2.shape[1], "the width of w2")
    hidden = x @ w1
    if b1 is not None:
        hidden = hidden + b1
    out = _gelu(hidden, _check_approximate(approximate)) @ w2
    return out + b2 if b2 is not None else out


def feed_forward(x: Any, params: Any, approximate: str = "none") -> np.ndarray:
    """Position-wise feed-forward sub-layer ``GELU(x W1 + b1) W2 + b2``.

    Parameters
    ----------
    x : array (..., D)
    params : object with attributes ``w1`` (D, F), ``b1`` (F,) or None, ``w2`` (F, D),
        ``b2`` (D,) or None.
    approximate : {"none", "tanh"}
        GELU variant, see :func:`gelu`.

    Returns
    -------
    object array (..., D).
    """
    with _precision():
        return _ffn(x, params, approximate)


def transformer_block(
    x: Any,
    params: Any,
    *,
    norm: str = "post",
    mask: Any = None,
    causal: Any = False,
    bias: Any = None,
    window: Any = None,
    softcap: Any = None,
    rope: Any = None,
    approximate: str = "none",
    eps: Any = 1e-5,
) -> np.ndarray:
    """One transformer encoder block (self-attention, feed-forward, two layer norms).

    post-LN (``norm="post"``)::

        T1 = MHA(X); T2 = X + T1; T3 = LN1(T2); T4 = FFN(T3); T5 = T3 + T4; H = LN2(T5)

    pre-LN (``norm="pre"``)::

        T = X + MHA(LN1(X)); H = T + FFN(LN2(T))       (no final layer norm)

    Parameters
    ----------
    x : array (..., N, D)
    params : object with attributes ``attn`` (see :func:`multi_head_attention`), ``ffn``
        (see :func:`feed_forward`), ``ln1_gamma``, ``ln1_beta``, ``ln2_gamma``,
        ``ln2_beta`` (each (D,) or None).
    norm : {"post", "pre"}
    mask : boolean array, optional
        Broadcastable to (..., N, N), applied to every head.
    causal : bool or {"top_left", "bottom_right"}
        (The same here: N = M.)
    bias, window, softcap, rope
        The attention options, as in :func:`multi_head_attention`.
    approximate : {"none", "tanh"}
        GELU variant.
    eps : real
        Layer-norm epsilon of both layer norms.

    Returns
    -------
    object array (..., N, D).
    """
    return _block(x, params, norm, mask, _Options(bias, causal, window, softcap, rope), approximate, eps)


def _block(x, params, norm, mask, options: _Options, approximate, eps):
    if norm not in ("post", "pre"):
        raise ValueError(f"norm must be 'post' or 'pre', got {norm!r}")
    _check_approximate(approximate)
    with _precision():
        x = to_mp(x, "x")
        _check_ndim("x", x, 2, "(..., N, D)")
        attn, ffn = _field(params, "attn", "params"), _field(params, "ffn", "params")
        g1, b1 = getattr(params, "ln1_gamma", None), getattr(params, "ln1_beta", None)
        g2, b2 = getattr(params, "ln2_gamma", None), getattr(params, "ln2_beta", None)
        if norm == "post":
            t2 = x + _mha(x, attn, None, mask, None, options, "params.attn")
            t3 = _ln_checked(t2, g1, b1, eps, "params.ln1_")
            t5 = t3 + _ffn(t3, ffn, approximate, "params.ffn")
            return _ln_checked(t5, g2, b2, eps, "params.ln2_")
        t = x + _mha(_ln_checked(x, g1, b1, eps, "params.ln1_"), attn, None, mask, None, options, "params.attn")
        return t + _ffn(_ln_checked(t, g2, b2, eps, "params.ln2_"), ffn, approximate, "params.ffn")


# --------------------------------------------------------------------------- backward


class _Overlay:
    """Read-only attribute view of ``base`` with some attributes replaced."""

    def __init__(self, base: Any, overrides: Mapping[str, Any]):
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_overrides", dict(overrides))

    def __getattr__(self, name: str) -> Any:
        overrides = object.__getattribute__(self, "_overrides")
        if name in overrides:
            return overrides[name]
        return getattr(object.__getattribute__(self, "_base"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a parameter overlay is read-only")


def _overlay(base: Any, paths: Mapping[str, Any], where: str) -> Any:
    """``base`` with the dotted ``paths`` (relative to it) replaced by their values."""
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in paths.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[head] = value
    for head, sub in nested.items():
        if head in direct:
            raise ValueError(f"inputs name both {where}.{head} and fields inside it")
        try:
            child = getattr(base, head)
        except AttributeError:
            raise KeyError(f"{where} has no attribute {head!r}") from None
        direct[head] = _overlay(child, sub, f"{where}.{head}")
    for head in direct:
        if not hasattr(base, head):
            raise KeyError(f"{where} has no attribute {head!r}")
    return _Overlay(base, direct)


def _call(fn: Callable, values: Mapping[str, np.ndarray], kwargs: Mapping[str, Any]) -> Any:
    """Call ``fn`` with ``kwargs`` where ``values`` replace arguments or dotted fields."""
    args = dict(kwargs)
    dotted: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        root, _, rest = name.partition(".")
        if rest:
            dotted.setdefault(root, {})[rest] = value
        else:
            args[name] = value
    for root, paths in dotted.items():
        if root not in kwargs:
            raise KeyError(f"input {root}.{next(iter(paths))} names {root!r}, which is not among the keyword arguments")
        args[root] = _overlay(kwargs[root], paths, root)
    return fn(**args)


def param_arrays(params: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """The array fields of a parameter object as a flat dict with dotted names.

    Multi-head attention params give ``w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o``;
    feed-forward params ``w1, b1, w2, b2``; block params ``attn.<mha field>``,
    ``ffn.<ffn field>``, ``ln1_gamma, ln1_beta, ln2_gamma, ln2_beta``. Fields that are
    None or missing are left out. With ``prefix="params"`` every name starts with
    ``"params."``, ready to be passed as ``inputs`` to :func:`gradients` together with
    ``params=params`` in its keyword arguments.

    Parameters
    ----------
    params : MHA, FFN or block parameter object (read through ``getattr``)
    prefix : str
        Prepended to every name, followed by a dot, when non-empty.

    Returns
    -------
    dict mapping names to the parameter arrays (not copied).
    """
    pre = f"{prefix}." if prefix else ""
    out: dict[str, np.ndarray] = {}
    if hasattr(params, "attn") and hasattr(params, "ffn"):
        out.update(param_arrays(getattr(params, "attn"), f"{pre}attn"))
        out.update(param_arrays(getattr(params, "ffn"), f"{pre}ffn"))
        fields = _BLOCK_FIELDS
    elif hasattr(params, "w_q"):
        fields = _MHA_FIELDS
    elif hasattr(params, "w1"):
        fields = _FFN_FIELDS
    else:
        raise TypeError(
            "params must be multi-head attention (w_q, ...), feed-forward (w1, ...) or block "
            f"(attn, ffn, ...) parameters, got {type(params).__name__}"
        )
    for name in fields:
        value = getattr(params, name, None)
        if value is not None:
            out[pre + name] = value
    return out


def gradients(
    fn: Callable[..., np.ndarray],
    inputs: Mapping[str, Any],
    d_out: Any,
    *,
    as_mp: bool = False,
    **kwargs: Any,
) -> dict[str, np.ndarray]:
    """Gradients of ``sum(d_out * fn(**inputs, **kwargs))`` by the complex step in mpmath.

    For every entry ``x`` of every named input, ``x`` is replaced by ``x + i h``
    (``h =`` :data:`STEP`) and the derivative is ``Im(sum(d_out * f)) / h``, computed at
    :data:`GRADIENT_DPS` digits. One forward call per input entry.

    Naming inputs: a plain name (``"q"``, ``"x"``) is passed to ``fn`` as that keyword
    argument. A dotted name ``"root.a.b"`` replaces field ``a.b`` of the object passed as
    keyword argument ``root`` in ``kwargs`` (through a read-only attribute view, so it
    works with frozen dataclasses and ``SimpleNamespace``). :func:`param_arrays` builds
    such names, e.g. ``inputs = {"x": x, **param_arrays(params, "params")}`` with
    ``params=params`` in ``kwargs`` gives keys ``"params.attn.w_q"``, ``"params.ffn.w1"``,
    ``"params.ln1_gamma"`` ....

    Parameters
    ----------
    fn : callable
        Built from this module's functions (or any function analytic in its inputs that
        accepts object arrays of ``mpc``), called as ``fn(**inputs, **kwargs)``.
    inputs : dict of str -> array
        The arrays to differentiate with respect to (float64 or object arrays).
    d_out : array
        Same shape as ``fn``'s output.
    as_mp : bool
        Return object arrays of ``mpf`` (about 60 correct digits) instead of float64.
    **kwargs
        Further keyword arguments of ``fn`` (held fixed).

    Returns
    -------
    dict of str -> float64 array (object array of mpf with ``as_mp``), same keys and
    shapes as ``inputs``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    with _precision(GRADIENT_DPS):
        base = {name: to_mp(value, name) for name, value in inputs.items()}
        dout = to_mp(d_out, "d_out")
        out = np.asarray(_call(fn, base, kwargs), dtype=object)
        if out.shape != dout.shape:
            raise ValueError(
                f"d_out must have the shape of fn's output {tuple(out.shape)}, got shape {_shape(dout)}"
            )
        h = STEP
        grads: dict[str, np.ndarray] = {}
        for name, x in base.items():
            g = _zeros(x.shape)
            for idx in np.ndindex(*x.shape):
                xp = x.copy()
                xp[idx] = mpmath.mpc(xp[idx], h)
                values = dict(base)
                values[name] = xp
                f = np.asarray(_call(fn, values, kwargs), dtype=object)
                total = mpmath.fsum((dout * f).ravel()) if f.size else mpmath.mpf(0)
                g[idx] = mpmath.im(total) / h
            grads[name] = g if as_mp else to_float64(g)
        return grads


def _bias_input(inputs: dict, bias: Any) -> np.ndarray | None:
    """Put a float bias's finite values (0 at -inf) into ``inputs``; return where it is -inf."""
    if bias is None:
        return None
    values, excluded = _split_bias(np.asarray(bias, dtype=np.float64))
    inputs["bias"] = to_float64(values)
    return excluded


def _zero_excluded(grads: dict[str, np.ndarray], excluded: np.ndarray | None) -> dict[str, np.ndarray]:
    if excluded is not None:
        grads["bias"] = np.where(excluded, 0.0, grads["bias"])
    return grads


def attention_gradients(
    q: Any, k: Any, v: Any, d_out: Any, *, mask: Any = None, bias: Any = None, **options: Any
) -> tuple[np.ndarray, ...]:
    """``(dq, dk, dv)``, float64 gradients of ``sum(d_out * attention(q, k, v, ...))``, and
    ``d_bias`` as a fourth entry when a bias is given (0 where the bias is -inf).

    Arguments as in :func:`attention` (``options``: causal, window, softcap, scale,
    enable_gqa, dropout_p, dropout_mask); ``d_out`` has the output's shape (..., N, V).
    Each gradient has the shape of its input (broadcast batch dims summed over).
    """
    inputs = {"q": q, "k": k, "v": v}
    excluded = _bias_input(inputs, bias)
    if excluded is not None:
        # -inf entries: excluded keys with a fixed value (their gradient is 0).
        mask = ~excluded if mask is None else (np.asarray(mask) & ~excluded)
    g = _zero_excluded(gradients(attention, inputs, d_out, mask=mask, **options), excluded)
    grads = (g["q"], g["k"], g["v"])
    return grads if bias is None else (*grads, g["bias"])


def _strip(grads: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {name[len(prefix):] if name.startswith(prefix) else name: g for name, g in grads.items()}


def multi_head_attention_gradients(
    x: Any,
    params: Any,
    d_out: Any,
    *,
    memory: Any = None,
    mask: Any = None,
    bias: Any = None,
    causal: Any = False,
    window: Any = None,
    softcap: Any = None,
    rope: Any = None,
    scale: Any = None,
) -> dict[str, np.ndarray]:
    """Float64 gradients of ``sum(d_out * multi_head_attention(x, params, ...))``.

    Arguments as in :func:`multi_head_attention`.

    Returns
    -------
    dict with keys ``"x"``, ``"memory"`` (only when given), ``"bias"`` (only when given; 0
    where it is -inf) and the non-None parameter fields ``"w_q", "w_k", "w_v", "w_o", "b_q",
    "b_k", "b_v", "b_o"``; each value has the shape of the corresponding array.
    """
    inputs = {"x": x, **param_arrays(params, "params")}
    if memory is not None:
        inputs["memory"] = memory
    excluded = _bias_input(inputs, bias)

    def fn(x, params, memory=None, bias=None):
        with _precision():
            return _mha(x, params, memory, mask, scale, _Options(bias, causal, window, softcap, rope, excluded))

    return _zero_excluded(_strip(gradients(fn, inputs, d_out, params=params), "params."), excluded)


def transformer_block_gradients(
    x: Any,
    params: Any,
    d_out: Any,
    *,
    norm: str = "post",
    mask: Any = None,
    causal: Any = False,
    bias: Any = None,
    window: Any = None,
    softcap: Any = None,
    rope: Any = None,
    approximate: str = "none",
    eps: Any = 1e-5,
) -> dict[str, np.ndarray]:
    """Float64 gradients of ``sum(d_out * transformer_block(x, params, ...))``.

    Returns
    -------
    dict with keys ``"x"``, ``"attn.w_q"`` ... ``"attn.b_o"``, ``"ffn.w1"`` ...
    ``"ffn.b2"``, ``"ln1_gamma"``, ``"ln1_beta"``, ``"ln2_gamma"``, ``"ln2_beta"``
    (None fields left out), i.e. :func:`param_arrays` names plus ``"x"``, and ``"bias"``
    when a bias is given (0 where it is -inf). Arguments as in :func:`transformer_block`.
    """
    inputs = {"x": x, **param_arrays(params, "params")}
    excluded = _bias_input(inputs, bias)

    def fn(x, params, bias=None):
        options = _Options(bias, causal, window, softcap, rope, excluded)
        return _block(x, params, norm, mask, options, approximate, eps)

    return _zero_excluded(_strip(gradients(fn, inputs, d_out, params=params), "params."), excluded)
