"""Shared test helpers: backends, conversions, tolerances."""

from __future__ import annotations

import numpy as np
import pytest

from numerics._backend import get_namespace

#: Every namespace the numerics tests run on. CuPy skips only when no CUDA device is present.
BACKENDS = ["numpy", "array_api_strict", "torch", "cupy"]


def load_backend(name: str):
    """The array-API namespace ``name``, or a pytest skip for CuPy without a CUDA device."""
    if name == "cupy":
        cupy = pytest.importorskip("cupy")
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                pytest.skip("CuPy is installed but no CUDA device is present")
        except cupy.cuda.runtime.CUDARuntimeError:
            pytest.skip("CuPy is installed but no CUDA device is present")
    return get_namespace(name)


def to_numpy(x) -> np.ndarray:
    """Copy any backend's array to a NumPy array on the host (tests only)."""
    module = type(x).__module__.split(".")[0]
    if module == "cupy":
        return x.get()
    if module == "torch":
        return x.detach().cpu().numpy()
    return np.asarray(x)


def from_numpy(xp, a: np.ndarray, dtype=None):
    """Put a NumPy array on backend ``xp`` (optionally cast to ``dtype``)."""
    out = xp.asarray(np.ascontiguousarray(a))
    return out if dtype is None else xp.astype(out, dtype)


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected| (expected must not be all zero)."""
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = np.max(np.abs(expected))
    assert scale > 0, "relative error against an all-zero reference"
    return float(np.max(np.abs(actual - expected)) / scale)
