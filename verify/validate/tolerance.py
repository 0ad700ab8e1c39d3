"""The tolerance rule of DESIGN.md, in one place for the battery, crosscheck and our own tests.

A candidate computed in precision p passes when, against a float64 (or mpmath) reference,

    err(candidate) <= k * err(plain, p) + floor(p),

where ``plain`` is a straightforward implementation run in the same precision p (FlashAttention's
and PyTorch's SDPA tests use this rule) and err is the relative error max|a - r| / max|r|.

``floor(p)`` is a small multiple of p's unit roundoff u: rounding the exact result to p alone costs
up to u, and a short chain of operations a few u more. The floor keeps the rule from failing when the
plain implementation happens to be exceptionally accurate on a small problem; it is far below the
error of a genuinely lower precision (bfloat16's u = 2^-8), which tests show the rule catches.
Against the float64 reference itself (p = float64), ``ABS64`` is the stated bound: the plain float64
result agrees with mpmath to ~1e-15 on the problems we draw, and 1e-12 leaves room for conditioning.
"""

from __future__ import annotations

import numpy as np

from verify.validate.result import Measurement

#: Unit roundoff u = 2^-p for a (p+1)-bit significand.
UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
#: floor(p) = FLOOR_ULPS * u(p): 16 u is 9.5e-7 in float32 (the 1e-6 our torch cross-check used).
FLOOR_ULPS = 16
#: k for the output and for every gradient (dq, dk, dv, d_bias): PyTorch's SDPA tests allow larger
#: factors for gradients; 2 holds for our problems, so 2 is what we assert.
K_OUTPUT = 2.0
K_GRADIENT = 2.0
#: The bound for a float64 result against the mpmath reference.
ABS64 = 1e-12


def dtype_name(dtype) -> str:
    """'float32' for np.float32, torch.float32, cupy's and array_api_strict's float32 alike."""
    name = dtype if isinstance(dtype, str) else getattr(dtype, "__name__", None) or str(dtype)
    name = name.rsplit(".", 1)[-1].strip("'>")
    if name not in UNIT_ROUNDOFF:
        raise ValueError(f"dtype must be one of {sorted(UNIT_ROUNDOFF)}, got {dtype!r}")
    return name


def floor(dtype, magnitude: float = 1.0) -> float:
    """The rounding floor of the rule for ``dtype`` (a dtype object or its name).

    ``magnitude`` is the largest |score| of the problem (attention's logits): rounding a score s to
    the dtype alone moves it by up to |s| u, and the weights exp(s - lse) by that relative amount,
    so an ill-conditioned problem (large logits) gets a floor of FLOOR_ULPS u max(1, magnitude).
    Without it the rule would fail correct code whose rounding differs from the plain
    implementation's on the one problem where the plain happened to be exact.
    """
    m = float(magnitude)
    return FLOOR_ULPS * UNIT_ROUNDOFF[dtype_name(dtype)] * (max(1.0, m) if m == m else 1.0)


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected|, in float64 on the host.

    An all-zero reference gives the absolute error instead (a row with no allowed key has output 0).
    A NaN or inf anywhere in ``actual`` where ``expected`` is finite gives inf, never NaN.
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"actual and expected must have the same shape: actual has shape {actual.shape}, "
                         f"expected has shape {expected.shape}")
    if actual.size == 0:
        return 0.0
    diff = np.abs(actual - expected)
    if not np.all(np.isfinite(diff)):
        return float("inf")
    scale = float(np.max(np.abs(expected)))
    return float(np.max(diff)) / (scale if scale > 0 else 1.0)


def rule(candidate, plain, reference, *, dtype, k: float = K_OUTPUT, what: str = "output",
         magnitude: float = 1.0) -> Measurement:
    """Measure ``candidate`` (computed in ``dtype``) by the rule, with ``plain`` in the same dtype
    (``magnitude``: the problem's largest |score|, see :func:`floor`).

    Returns a :class:`Measurement` whose ``ok`` says whether the rule holds.
    """
    e_candidate = relative_error(candidate, reference)
    e_plain = relative_error(plain, reference)
    f = floor(dtype, magnitude)
    return Measurement(what=what, error=e_candidate, bound=k * e_plain + f, plain_error=e_plain, k=k, floor=f)


def absolute(candidate, reference, *, bound: float = ABS64, what: str = "output") -> Measurement:
    """Measure a float64 ``candidate`` against an exact or mpmath ``reference`` with a stated bound."""
    return Measurement(what=what, error=relative_error(candidate, reference), bound=bound)
