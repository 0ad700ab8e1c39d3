"""Array libraries the battery can hand a candidate its inputs in, and take its results back from.

The battery draws every problem on the host in float64 NumPy; an :class:`ArrayBackend` puts the
arrays in the candidate's library, dtype and device, and brings results back to the host as float64
(NaN and inf kept: they are findings). A library is imported only when it is asked for by name or
the candidate's own code uses it, never on speculation (CuPy in particular).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np

#: The backends a user can name (``--backend``), with the dtypes each can hold.
BACKEND_DTYPES = {
    "numpy": ("float64", "float32", "float16"),
    "array_api_strict": ("float64", "float32"),
    "torch": ("float64", "float32", "float16", "bfloat16"),
    "cupy": ("float64", "float32", "float16"),
    "jax": ("float64", "float32", "float16", "bfloat16"),
}

#: How to install each library that does not come with attnverify.
INSTALL = {
    "torch": "pip install 'attnverify[torch]'",
    "jax": "pip install 'attnverify[jax]'",
    "cupy": "pip install 'attnverify[gpu]' on a machine with a CUDA device",
    "array_api_strict": "pip install array-api-strict",
}


def require(name: str) -> None:
    """Raise ValueError naming backend ``name`` and its install line when the library is not installed
    (checked before any candidate is adapted, so a missing library is bad usage, not a raising candidate)."""
    if name in INSTALL and importlib.util.find_spec(name) is None:
        raise ValueError(f"backend {name!r} is not installed ({INSTALL[name]})")


@dataclass(frozen=True)
class ArrayBackend:
    """One array library on one device.

    Attributes
    ----------
    name : str
        One of :data:`BACKEND_DTYPES`.
    device : str or None
        ``"cpu"``, ``"cuda"`` (torch, CuPy) or None for the library's default.
    """

    name: str
    device: str | None = None

    def __post_init__(self) -> None:
        if self.name not in BACKEND_DTYPES:
            raise ValueError(f"backend must be one of {sorted(BACKEND_DTYPES)}, got {self.name!r}")
        if self.device not in (None, "cpu", "cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda' or None, got {self.device!r}")
        if self.device == "cuda" and self.name in ("numpy", "array_api_strict"):
            raise ValueError(f"device='cuda' needs backend 'torch', 'cupy' or 'jax', got backend {self.name!r}")

    @property
    def module(self) -> Any:
        """The library's module (imported on first use)."""
        if self.name == "jax":
            return importlib.import_module("jax.numpy")
        return importlib.import_module(self.name)

    def supports(self, dtype: str) -> bool:
        """Whether the library has ``dtype`` (NumPy has no bfloat16; jax has float64 only with
        ``jax_enable_x64``, which the battery does not turn on behind the user's back)."""
        if self.name == "jax" and dtype == "float64":
            import jax

            return bool(jax.config.jax_enable_x64)
        return dtype in BACKEND_DTYPES[self.name]

    def to_native(self, a: np.ndarray | None, dtype: str | None = None, *, requires_grad: bool = False) -> Any:
        """A host array ``a`` in the library, cast to ``dtype`` (booleans keep theirs), on the device."""
        if a is None:
            return None
        a = np.ascontiguousarray(a)
        if a.dtype != np.bool_ and dtype is not None:
            if self.name in ("numpy", "cupy", "array_api_strict") and dtype == "bfloat16":
                raise ValueError(f"backend {self.name!r} has no bfloat16")
        if self.name == "numpy":
            return a if a.dtype == np.bool_ or dtype is None else a.astype(dtype)
        if self.name == "torch":
            import torch

            device = self.device or "cpu"
            t = torch.as_tensor(a, device=device)
            if a.dtype != np.bool_ and dtype is not None:
                t = t.to(getattr(torch, dtype))
            return t.requires_grad_(True) if requires_grad else t
        if self.name == "cupy":
            import cupy

            return cupy.asarray(a if a.dtype == np.bool_ or dtype is None else a.astype(dtype))
        if self.name == "jax":
            import jax.numpy as jnp

            return jnp.asarray(a) if a.dtype == np.bool_ or dtype is None else jnp.asarray(a, dtype=getattr(jnp, dtype))
        xp = self.module  # array_api_strict
        x = xp.asarray(a)
        return x if a.dtype == np.bool_ or dtype is None else xp.astype(x, getattr(xp, dtype))

    @staticmethod
    def to_host(x: Any) -> np.ndarray:
        """Any library's array as a float64 NumPy array on the host (a bool array stays bool)."""
        module = type(x).__module__.split(".")[0]
        if module == "torch":
            x = x.detach()
            if x.dtype.is_floating_point:
                import torch

                x = x.to(torch.float64)
            return x.cpu().numpy()
        if module == "cupy":
            x = x.get()
        elif module == "array_api_strict":
            x = np.from_dlpack(x)
        a = np.asarray(x)
        return a if a.dtype == np.bool_ else a.astype(np.float64)

    @staticmethod
    def dtype_of(x: Any) -> str:
        """The dtype name of an array of any library (``'float32'``)."""
        return str(getattr(x, "dtype", type(x).__name__)).rsplit(".", 1)[-1]


def detect_backend(fn: Any) -> str | None:
    """The array library ``fn`` computes with, judged from the modules its code refers to.

    ``torch.nn.functional.scaled_dot_product_attention`` and a function that calls ``torch.`` or
    ``F.`` (torch.nn.functional) are torch; likewise jax and cupy. None when nothing says (a plain
    NumPy function, or a callable object whose code cannot be read).
    """
    module = getattr(fn, "__module__", None) or ""
    for name in ("torch", "jax", "cupy"):
        if module == name or module.startswith(name + "."):
            return name
    code = getattr(fn, "__code__", None) or getattr(getattr(fn, "__call__", None), "__code__", None)
    globals_ = getattr(fn, "__globals__", None) or getattr(getattr(fn, "__call__", None), "__globals__", {})
    if code is None:
        return None
    used = set()
    stack = [code]
    while stack:
        c = stack.pop()
        used.update(c.co_names)
        stack.extend(const for const in c.co_consts if hasattr(const, "co_names"))
    found = set()
    for name in used:
        if name in ("torch", "jax", "cupy") and name not in globals_:  # imported inside the function
            found.add(name)
            continue
        value = globals_.get(name)
        origin = getattr(value, "__name__", None) if isinstance(value, type(np)) else getattr(value, "__module__", None)
        root = (origin or "").split(".")[0]
        if root in ("torch", "jax", "jaxlib", "cupy"):
            found.add("jax" if root == "jaxlib" else root)
    return found.pop() if len(found) == 1 else None
