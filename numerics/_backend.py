"""Backend dispatch and argument checks shared by every numerics function.

One entry point, :func:`namespace_of`, finds the array-API namespace of the named
arguments (through ``array_api_compat``, which looks types up in ``sys.modules`` and so
never imports CuPy for a NumPy caller). Everything else here checks arguments up front
and raises errors that name the argument, what was expected and what came.
"""

from __future__ import annotations

import importlib
import math
from types import ModuleType
from typing import Any

import array_api_compat
import numpy as np

__all__ = [
    "namespace_of",
    "get_namespace",
    "library_name",
    "compute_dtype",
    "check_float_array",
    "check_same_dtype",
    "check_finite",
    "check_mask",
    "check_scale",
    "real_number",
    "broadcast_shapes",
    "shape_str",
    "sum_to_shape",
    "inplace",
    "masked_fill",
    "resolve_dtype",
    "positive_int",
    "non_negative_int",
    "check_flag",
    "check_seed",
    "batch_of",
    "max_abs",
    "check_result_finite",
    "check_upstream",
]

# Names a caller may use in ``xp=``; each is imported only when asked for.
_NAMESPACE_MODULES = {
    "numpy": "numpy",
    "cupy": "cupy",
    "torch": "torch",
    "array_api_strict": "array_api_strict",
}


def shape_str(x: Any) -> str:
    """The shape of ``x`` as a plain tuple string, e.g. ``(2, 7, 16)``."""
    return str(tuple(int(n) for n in x.shape))


def library_name(x: Any) -> str:
    """Top-level module of the array type of ``x`` (``numpy``, ``torch``, ``cupy`` ...)."""
    return type(x).__module__.split(".")[0]


def namespace_of(**arrays: Any) -> ModuleType:
    """Return the array-API namespace shared by the named arrays (``None`` entries skipped).

    Raises TypeError naming the argument when one is not an array, and naming both
    arguments and their libraries when they come from different libraries; ValueError
    naming both arguments and their devices (``array_api_compat.device``) when arrays of
    one library are on different devices (not checked for NumPy, whose arrays are all on
    the CPU).
    """
    first_name, first_xp, first_array = None, None, None
    for name, x in arrays.items():
        if x is None:
            continue
        try:
            xp = array_api_compat.array_namespace(x)
        except TypeError:
            raise TypeError(
                f"{name} must be an array of NumPy, CuPy, torch or another array-API library, "
                f"got {type(x).__name__}"
            ) from None
        if first_xp is None:
            first_name, first_xp, first_array = name, xp, x
        elif xp is not first_xp:
            raise TypeError(
                f"arguments mix array libraries: {first_name} is a {library_name(first_array)} "
                f"array ({type(first_array).__name__}), {name} is a {library_name(x)} array "
                f"({type(x).__name__}); convert them to one library"
            )
    if first_xp is None:
        raise TypeError("no array argument was given")
    if not array_api_compat.is_numpy_namespace(first_xp):  # NumPy arrays are all on "cpu"
        _check_same_device(arrays)
    return first_xp


def _check_same_device(arrays: dict[str, Any]) -> None:
    """Raise ValueError naming two of the arrays (``None`` skipped) that are on different devices."""
    first_name, first_device = None, None
    for name, x in arrays.items():
        if x is None:
            continue
        dev = array_api_compat.device(x)
        if first_name is None:
            first_name, first_device = name, dev
        elif dev != first_device:
            raise ValueError(
                f"arguments are on different devices: {first_name} is on {first_device}, "
                f"{name} is on {dev}; move them to one device"
            )


def get_namespace(xp: ModuleType | str) -> ModuleType:
    """The array-API namespace for a module (``numpy``, ``torch``, ...) or its name.

    Only the library named is imported, so CuPy is loaded only when asked for.
    """
    if isinstance(xp, str):
        if xp not in _NAMESPACE_MODULES:
            raise ValueError(
                f"xp must be one of {sorted(_NAMESPACE_MODULES)} or an array module, got {xp!r}"
            )
        xp = importlib.import_module(_NAMESPACE_MODULES[xp])
    if not isinstance(xp, ModuleType) or not hasattr(xp, "asarray"):
        raise TypeError(f"xp must be an array module or its name, got {xp!r}")
    return array_api_compat.array_namespace(xp.asarray(0.0))


def compute_dtype(xp: ModuleType, dtype: Any) -> Any:
    """The dtype to compute in: float64 and float32 as given, half precisions in float32."""
    if dtype == xp.float64 or dtype == xp.float32:
        return dtype
    return xp.float32


def check_float_array(name: str, x: Any, xp: ModuleType, *, min_ndim: int = 0, ndim: int | None = None) -> None:
    """Check that ``x`` is a real floating array of the wanted rank."""
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype, got {x.dtype} (shape {shape_str(x)})")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {shape_str(x)}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {shape_str(x)}")


def check_same_dtype(**arrays: Any) -> None:
    """Check that the named arrays (``None`` skipped) share one dtype."""
    present = [(n, x) for n, x in arrays.items() if x is not None]
    dtypes = {str(x.dtype) for _, x in present}
    if len(dtypes) > 1:
        listing = ", ".join(f"{n} is {x.dtype}" for n, x in present)
        raise TypeError(f"{', '.join(n for n, _ in present)} must share one dtype: {listing}")


def check_finite(xp: ModuleType, **arrays: Any) -> None:
    """Raise ValueError naming the first array (``None`` skipped) that holds NaN or Inf."""
    for name, x in arrays.items():
        if x is not None and not bool(xp.all(xp.isfinite(x))):
            raise ValueError(
                f"{name} contains NaN or Inf (shape {shape_str(x)}); "
                "pass check_finite=False to skip this check"
            )


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy broadcasting of shapes; ValueError when they do not broadcast."""
    ndim = max((len(s) for s in shapes), default=0)
    result = []
    for axis in range(-ndim, 0):
        sizes = {s[axis] for s in shapes if len(s) >= -axis} - {1}
        if len(sizes) > 1:
            raise ValueError(f"shapes {', '.join(str(tuple(s)) for s in shapes)} do not broadcast")
        result.append(sizes.pop() if sizes else 1)
    return tuple(result)


def check_mask(mask: Any, target: tuple[int, ...], xp: ModuleType, *, target_desc: str) -> None:
    """Check a boolean mask (True = may attend) broadcastable to ``target``."""
    if mask.dtype != xp.bool:
        raise TypeError(f"mask must be a boolean array (True = may attend), got dtype {mask.dtype}")
    try:
        out = broadcast_shapes(tuple(mask.shape), target)
    except ValueError:
        out = None
    if out != tuple(target):
        raise ValueError(
            f"mask must broadcast to {target_desc} {tuple(target)}, got shape {shape_str(mask)}"
        )


def real_number(name: str, value: Any, what: str = "a real number") -> float:
    """``value`` as a Python float (int, float, NumPy scalar ...); a bool, a string or anything
    float() cannot take is a TypeError saying ``name`` must be ``what``. Ranges are the caller's."""
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}") from None


def check_scale(scale: Any) -> float:
    """A finite real scale as a Python float (0 included: every score is then 0, as in
    torch's SDPA, and the attention is uniform over the allowed keys)."""
    value = real_number("scale", scale, "a real number or None")
    if not math.isfinite(value):
        raise ValueError(f"scale must be finite, got {scale!r}")
    return value if value else 0.0  # -0.0 as 0.0


def sum_to_shape(xp: ModuleType, x: Any, shape: tuple[int, ...]) -> Any:
    """Sum ``x`` over the axes along which ``shape`` was broadcast to ``x.shape``."""
    shape = tuple(shape)
    if tuple(x.shape) == shape:
        return x
    lead = x.ndim - len(shape)
    if lead > 0:
        x = xp.sum(x, axis=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and x.shape[i] != 1)
    if axes:
        x = xp.sum(x, axis=axes, keepdims=True)
    return x


def _writes_in_place(xp: ModuleType) -> bool:
    """NumPy and CuPy ufuncs take ``out=``; the array API standard has no in-place form."""
    return array_api_compat.is_numpy_namespace(xp) or array_api_compat.is_cupy_namespace(xp)


def inplace(xp: ModuleType, op: str, a: Any, *others: Any) -> Any:
    """``xp.<op>(a, *others)``, written into ``a`` where the namespace allows it.

    Only for arrays the caller owns and whose shape the result keeps: on NumPy and CuPy it
    saves the allocation and first touch of a fresh buffer, the dominant cost of the
    elementwise passes over (..., N, M) score arrays.
    """
    fn = getattr(xp, op)
    return fn(a, *others, out=a) if _writes_in_place(xp) else fn(a, *others)


def masked_fill(xp: ModuleType, a: Any, keep: Any, value: float) -> Any:
    """``where(keep, a, value)``, written into ``a`` (which the caller owns) on NumPy and CuPy."""
    if _writes_in_place(xp):
        xp.copyto(a, value, where=xp.logical_not(keep))
        return a
    return xp.where(keep, a, value)


def resolve_dtype(xp: ModuleType, dtype: Any) -> Any:
    """A real floating dtype of ``xp`` from a dtype object or its name; None means float64."""
    if dtype is None:
        return xp.float64
    if isinstance(dtype, str):
        if not hasattr(xp, dtype):
            raise ValueError(f"dtype {dtype!r} is not a dtype of namespace {xp.__name__}")
        dtype = getattr(xp, dtype)
    try:
        ok = xp.isdtype(dtype, "real floating")
    except Exception:
        ok = False
    if not ok:
        raise TypeError(f"dtype must be a real floating dtype of namespace {xp.__name__}, got {dtype!r}")
    return dtype


def positive_int(name: str, value: Any) -> int:
    """``value`` as a Python int when it is a positive integer (NumPy integers too), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def non_negative_int(name: str, value: Any) -> int:
    """``value`` as a Python int when it is an integer >= 0 (NumPy integers too), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def check_flag(name: str, value: Any) -> bool:
    """``value`` as a Python bool when it is a Python or NumPy bool, else TypeError naming ``name``.

    Every boolean option of the public numerics API (``causal``, ``return_weights``,
    ``check_finite``, ``bias`` ...) goes through here, so they all accept the same things:
    ``True``/``False`` and ``numpy.True_``/``numpy.False_``; not 0/1, strings or None.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be a bool (True or False), got {type(value).__name__} {value!r}")


def check_seed(value: Any) -> int:
    """A seed for ``numpy.random``: a non-negative Python or NumPy integer, as a Python int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"seed must be a non-negative integer, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value!r}")
    return int(value)


def batch_of(x: Any) -> tuple[int, ...]:
    """The batch dims of an (..., rows, cols) array or mask: all but the last two (none when
    it has fewer than three dims)."""
    return tuple(int(n) for n in x.shape[:-2])


def max_abs(xp: ModuleType, x: Any) -> float:
    """``max |x|`` as a Python float (0.0 for an empty array; NaN or inf when ``x`` holds them)."""
    if math.prod(x.shape) == 0:
        return 0.0
    # Two reductions rather than abs then max: no temporary array of x's size.
    hi, lo = float(xp.max(x)), float(xp.min(x))
    return math.nan if math.isnan(hi) or math.isnan(lo) else max(hi, -lo)


def check_result_finite(xp: ModuleType, function: str, **results: Any) -> None:
    """Raise ValueError when a result of ``function`` (computed from finite inputs) is not finite.

    The last line of every public function that runs with ``check_finite=True``: a result
    beyond the dtype's range (the exact value overflows) becomes a clear error, never a
    silent inf or NaN.
    """
    for name, x in results.items():
        if x is not None and not bool(xp.all(xp.isfinite(x))):
            raise ValueError(
                f"{function} overflowed: {name} (shape {shape_str(x)}) is not finite although every "
                f"input is; the result or an intermediate value is beyond the range of {x.dtype}: "
                "rescale the inputs or compute in a wider dtype"
            )


def check_upstream(d_out: Any, *, like: tuple[str, Any], shape: tuple[int, ...], dtype: Any, finite: bool) -> None:
    """The checks of a vjp's ``backward(d_out)``: d_out an array of the namespace (and device)
    of the forward's input ``like = (name, array)``, of the output's ``shape`` and the
    forward's ``dtype``, and finite when ``finite``."""
    name, array = like
    xp = namespace_of(**{name: array}, d_out=d_out)
    if tuple(d_out.shape) != tuple(shape):
        raise ValueError(f"d_out must have the output's shape {tuple(shape)}, got shape {shape_str(d_out)}")
    if d_out.dtype != dtype:
        raise TypeError(f"{name}, d_out must share one dtype: {name} is {dtype}, d_out is {d_out.dtype}")
    if finite:
        check_finite(xp, d_out=d_out)
