"""Shared test helpers: backends, conversions, tolerances."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from numerics._backend import get_namespace
from verify.validate.backends import INSTALL
from verify.validate.tolerance import relative_error  # noqa: F401  (the package's, re-exported for the tests)

#: Namespaces that are optional extras, with the install line a skip reason names (the package's
#: own lines, as validate and crosscheck print them).
OPTIONAL_BACKENDS = {name: INSTALL[name] for name in ("torch", "cupy")}


def backend_params(*names: str) -> list:
    """pytest parameters for the namespaces ``names``; an optional one that is not installed
    becomes a skipped parameter whose reason says how to install it."""
    params = []
    for name in names:
        if name in OPTIONAL_BACKENDS and importlib.util.find_spec(name) is None:
            reason = f"{name} is not installed ({OPTIONAL_BACKENDS[name]})"
            params.append(pytest.param(name, marks=pytest.mark.skip(reason=reason)))
        else:
            params.append(name)
    return params


#: Every namespace the numerics tests run on. torch and CuPy skip when not installed, and
#: CuPy also when no CUDA device is present.
BACKENDS = backend_params("numpy", "array_api_strict", "torch", "cupy")


def load_backend(name: str):
    """The array-API namespace ``name``, or a pytest skip for CuPy without a CUDA device."""
    if name in OPTIONAL_BACKENDS:
        pytest.importorskip(name, reason=f"{name} is not installed ({OPTIONAL_BACKENDS[name]})")
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


def numerical_gradient(f, inputs: dict, d_out, eps: float = 1e-6) -> dict:
    """Central finite differences of ``sum(d_out * f(**inputs))`` on NumPy float64 (tests only).

    Parameters
    ----------
    f : callable
        Called as ``f(**inputs)`` with NumPy float64 arrays; returns an array (any backend:
        it goes through :func:`to_numpy`) of ``d_out``'s shape.
    inputs : dict name -> array or None
        The point to differentiate at; None entries are passed through and get no gradient.
    d_out : array
        Upstream gradient (weights of the scalar objective).
    eps : float
        Step; with float64 and O(1) values, 1e-6 gives errors ~1e-9, fine for gradcheck's
        tolerances (atol 1e-5, rtol 1e-3).

    Returns
    -------
    dict name -> gradient array (float64, the input's shape), for every non-None input.
    """
    point = {n: None if a is None else np.array(a, dtype=np.float64, copy=True) for n, a in inputs.items()}
    weights = np.asarray(to_numpy(d_out), dtype=np.float64)

    def objective() -> float:
        out = np.asarray(to_numpy(f(**point)), dtype=np.float64)
        assert out.shape == weights.shape, f"f returned shape {out.shape}, d_out has shape {weights.shape}"
        return float(np.sum(weights * out))

    return central_differences(point, objective, eps)


def central_differences(point: dict, objective, step) -> dict:
    """``(objective(x + step) - objective(x - step)) / (2 step)`` for every entry of every
    non-None array in ``point``, perturbed in place (NumPy float64 or object arrays of mpmath
    numbers); ``objective()`` reads ``point``. Returns float64 gradients by name."""
    grads = {}
    for name, a in point.items():
        if a is None:
            continue
        g = np.empty(a.shape, dtype=np.float64)
        flat, gflat = a.reshape(-1), g.reshape(-1)  # flat is a view into point[name]
        for i in range(flat.size):
            saved = flat[i]
            flat[i] = saved + step
            plus = objective()
            flat[i] = saved - step
            minus = objective()
            flat[i] = saved
            gflat[i] = float((plus - minus) / (2 * step))
        grads[name] = g
    return grads


def assert_gradcheck(actual, expected, *, atol: float = 1e-5, rtol: float = 1e-3, name: str = "gradient") -> None:
    """gradcheck's float64 rule ``|actual - expected| <= atol + rtol * |expected|`` elementwise."""
    actual = np.asarray(to_numpy(actual), dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol, err_msg=name)


def force_split(monkeypatch, workers: int = 2) -> list:
    """Force numerics' NumPy path that cuts attention into one slab per core (numerics._parallel)
    on small problems, with ``workers`` slabs, whatever this machine has. Returns a list that
    gets one entry per split call, to show the path was really taken."""
    from numerics import _parallel

    monkeypatch.setattr(_parallel, "worker_count", lambda: workers)
    monkeypatch.setattr(_parallel, "MIN_SCORES", 1)
    calls = []
    original = _parallel.map_slabs
    monkeypatch.setattr(_parallel, "map_slabs", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls
