"""Turning the user's callable into a :class:`~verify.validate.candidate.Candidate`.

For ``kind="sdpa"``:

* a plain function is called ``fn(q, k, v, **kw)``; ``kw`` holds only the options its signature
  names (``mask``, ``causal``, ``scale``, ``bias``, ``window``, ``softcap``, ``enable_gqa``; a
  ``**kwargs`` catch-all does not count: an option the function might silently drop is NOT
  APPLICABLE, never passed). With a ``return_weights`` parameter it is asked for its weights and
  must return ``(out, weights)``. Its library is ``backend=`` or judged from its code
  (:func:`~verify.validate.backends.detect_backend`), NumPy otherwise;
* ``torch.nn.functional.scaled_dot_product_attention`` (attn_mask, is_causal, scale, enable_gqa);
* ``jax.nn.dot_product_attention`` when jax is installed (mask, bias, is_causal, scale,
  local_window_size; its (B, T, N, H) layout; GQA by its own head repetition).

Other kinds register their recognisers with :func:`register_adapter` (tried newest first; the first
that returns a Candidate wins).
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, Callable

import numpy as np

from verify.validate.backends import ArrayBackend, detect_backend
from verify.validate.candidate import FEATURES, Candidate, Outcome

#: Recognisers by kind: ``recognise(fn, backend, device, layout, mask_convention, name) -> Candidate | None``.
_RECOGNISERS: dict[str, list[Callable]] = {}


def register_adapter(kind: str) -> Callable:
    """Decorator: add a recogniser for ``kind`` (tried before the ones registered earlier)."""
    def decorate(recognise: Callable) -> Callable:
        _RECOGNISERS.setdefault(kind, []).insert(0, recognise)
        return recognise
    return decorate


def adapt(fn: Any, kind: str = "sdpa", *, backend: str | None = None, device: str | None = None,
          layout: str = "bhsd", mask_convention: str = "allow", name: str | None = None,
          options: dict | None = None) -> Candidate:
    """The candidate for ``fn`` (see the module docstring). ``options``: the sizes and conventions
    declared for kind "mha" / "block" (see :mod:`verify.validate.options`), handed to the kind's
    recognisers. Bad arguments: ValueError/TypeError naming them."""
    from verify.validate.options import check_options

    if not callable(fn):
        raise TypeError(f"fn must be callable (a function, or an object with __call__), got {type(fn).__name__}")
    if kind not in ("sdpa", "mha", "block"):
        raise ValueError(f"kind must be 'sdpa', 'mha' or 'block', got {kind!r}")
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a library name or None, got {backend!r}")
    options = check_options(kind, options)
    extra = {"options": options} if options else {}  # only the mha/block recognisers take options
    name = name or describe(fn)
    for recognise in _RECOGNISERS.get(kind, []):
        candidate = recognise(fn, backend=backend, device=device, layout=layout, mask_convention=mask_convention,
                              name=name, **extra)
        if candidate is not None:
            return candidate
    raise ValueError(f"no adapter for kind {kind!r} recognises {name}")


def describe(fn: Any) -> str:
    """``module:qualname`` of a function, the class for other callables."""
    module = getattr(fn, "__module__", None)
    qual = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}:{qual}" if module else qual


def make_backend(name: str | None, device: str | None, fn: Any) -> ArrayBackend:
    """The backend named, or judged from ``fn``; ``device="cuda"`` checked against the library."""
    chosen = name or detect_backend(fn) or "numpy"
    backend = ArrayBackend(chosen, device)
    if device == "cuda":
        if chosen == "torch":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("device='cuda' needs a CUDA device; torch sees none (torch.cuda.is_available() is False)")
        elif chosen == "cupy":
            import cupy

            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise ValueError("device='cuda' needs a CUDA device; CuPy sees none")
    return backend


# ------------------------------------------------------------------ layout and masks


def _to_layout(x: np.ndarray | None, layout: str) -> np.ndarray | None:
    """(..., H, L, C) -> (..., L, H, C) for ``bshd``; a 2-D array gets a head axis of 1 first."""
    if x is None or layout == "bhsd":
        return x
    if x.ndim < 3:
        x = x[..., None, :, :]
    return np.swapaxes(x, -2, -3)


def _from_layout(x: np.ndarray, layout: str, ndim: int) -> np.ndarray:
    if layout == "bhsd":
        return x
    x = np.swapaxes(x, -2, -3)
    return x[..., 0, :, :] if ndim < 3 else x


def _mask_for(mask: np.ndarray | None, convention: str) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    return ~mask if convention == "block" else mask


class ReturnTypeError(TypeError):
    """The candidate returned something that is not an array (None, a list, a dict...)."""


def _split(result: Any, pair: bool = True) -> tuple[Any, Any]:
    """``(out, weights)`` from what a function returned (a tuple's first two entries; ``pair=False``:
    the function was not asked for weights, so what it returned must be the output array itself)."""
    if not pair:
        if not (hasattr(result, "shape") and hasattr(result, "dtype")):
            raise ReturnTypeError(f"the candidate returned {'None' if result is None else _a(type(result).__name__)}"
                                  f"{'' if result is None else ' (' + _brief(result) + ')'}, not an array: "
                                  f"it must return the output (..., N, V) in its library")
        return result, None
    if isinstance(result, (tuple, list)):
        if not result:
            raise ValueError("the candidate returned an empty tuple")
        return result[0], (result[1] if len(result) > 1 else None)
    return result, None


def _a(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _brief(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------------ plain functions


class FunctionCandidate(Candidate):
    """A plain SDPA function ``fn(q, k, v, **kw)`` with the options its signature names."""

    def __init__(self, fn, *, name, backend, features, weights_param: bool, causal_alignments, layout,
                 mask_convention, note=""):
        super().__init__(fn, name=name, kind="sdpa", backend=backend, features=features,
                         returns_weights=weights_param, differentiable=backend.name == "torch",
                         causal_alignments=causal_alignments, note=note)
        self.layout = layout
        self.mask_convention = mask_convention
        self.weights_param = weights_param

    def _native_args(self, arrays, dtype, options, requires_grad=False):
        b = self.backend
        q, k, v = (b.to_native(_to_layout(a, self.layout), dtype, requires_grad=requires_grad) for a in arrays)
        kw = {}
        for key, value in options.items():
            if key == "mask":
                value = b.to_native(_mask_for(value, self.mask_convention))
            elif key == "bias":
                value = b.to_native(np.asarray(value), dtype, requires_grad=requires_grad)
            elif key == "causal":
                value = True if value in (True, "top_left") else value
            kw[key] = value
        if self.weights_param:
            kw["return_weights"] = True
        return q, k, v, kw

    def _call(self, arrays, dtype, options) -> Outcome:
        q, k, v, kw = self._native_args(arrays, dtype, options)
        out, weights = _split(self.fn(q, k, v, **kw), pair=self.weights_param)
        ndim = arrays[0].ndim
        host = _from_layout(self.backend.to_host(out), self.layout, ndim)
        w = None if weights is None else self.backend.to_host(weights)
        return Outcome(host, w, ArrayBackend.dtype_of(out))

    def _gradients(self, arrays, d_out, dtype, options):
        import torch

        q, k, v, kw = self._native_args(arrays, dtype, options, requires_grad=True)
        out, _ = _split(self.fn(q, k, v, **kw), pair=self.weights_param)
        grad = self.backend.to_native(_to_layout(d_out, self.layout), ArrayBackend.dtype_of(out).replace("torch.", ""))
        torch.autograd.backward(out, grad)
        ndim = arrays[0].ndim
        result = {}
        for key, t in (("q", q), ("k", k), ("v", v)):
            result[key] = _grad_or_zero(t, lambda g: _from_layout(g, self.layout, ndim))
        if "bias" in kw:
            result["bias"] = _grad_or_zero(kw["bias"], lambda g: g)
        return result


def _grad_or_zero(t, back) -> np.ndarray:
    if t.grad is None:  # the output does not depend on it
        return back(np.zeros(tuple(t.shape)))
    return back(ArrayBackend.to_host(t.grad))


def _signature_features(fn: Any) -> tuple[frozenset, bool, tuple[str, ...], str]:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return frozenset(), False, ("top_left",), "signature not readable: called with q, k, v only"
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    features = frozenset(named & set(FEATURES))
    alignments = ("top_left",)
    if "causal" in features:
        ann = params["causal"].annotation
        text = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
        if "str" in str(text) or "Literal" in str(text):
            alignments = ("top_left", "bottom_right")
    return features, "return_weights" in named, alignments, ""


def _check_callable_as_qkv(fn: Any, name: str) -> None:
    """ValueError (bad usage) when ``fn`` cannot be called as fn(q, k, v, **options): fewer than three
    positional parameters, or parameters beyond them without a default (checked up front, so that the
    battery does not report every property as the candidate raising TypeError)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    rest = [p for p in params if p not in positional[:3] and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    required = [p.name for p in rest if p.default is p.empty]
    if len(positional) < 3 or required:
        shown = ", ".join(p.name for p in params)
        need = ("it takes fewer than three positional arguments" if len(positional) < 3 else
                f"it also needs {', '.join(required)} (no default) besides {', '.join(p.name for p in positional[:3])}")
        raise ValueError(f"{name} cannot be called as fn(q, k, v, **options): {need} (its signature: ({shown})); "
                         f"wrap it in a function of q, k, v, or give those parameters defaults")


@register_adapter("sdpa")
def _plain_function(fn, *, backend, device, layout, mask_convention, name):
    _check_callable_as_qkv(fn, name)
    features, weights_param, alignments, note = _signature_features(fn)
    return FunctionCandidate(fn, name=name, backend=make_backend(backend, device, fn), features=features,
                             weights_param=weights_param, causal_alignments=alignments, layout=layout,
                             mask_convention=mask_convention, note=note or "plain function")


# ------------------------------------------------------------------ torch SDPA


class TorchSDPACandidate(Candidate):
    """``torch.nn.functional.scaled_dot_product_attention``: a boolean ``attn_mask`` (True = may
    attend), a bias as a float ``attn_mask`` (the mask folded in as -inf), ``is_causal`` (top-left;
    folded into the mask when a mask or bias is also given, since torch refuses both)."""

    def __init__(self, fn, *, name, backend):
        params = _torch_sdpa_params(fn)
        features = {"mask", "causal", "scale", "bias"} | ({"enable_gqa"} if "enable_gqa" in params else set())
        super().__init__(fn, name=name, kind="sdpa", backend=backend, features=features, differentiable=True,
                         note="torch.nn.functional.scaled_dot_product_attention")

    def _native_args(self, arrays, dtype, options, requires_grad=False):
        b = self.backend
        q, k, v = (b.to_native(a, dtype, requires_grad=requires_grad) for a in arrays)
        mask = options.get("mask")
        causal = options.get("causal")
        bias = options.get("bias")
        kw: dict[str, Any] = {}
        if causal and (mask is not None or bias is not None):
            n, m = arrays[0].shape[-2], arrays[1].shape[-2]
            tril = np.tril(np.ones((n, m), dtype=bool))
            mask = tril if mask is None else (np.asarray(mask, bool) & tril)
            causal = None
        bias_t = None
        if bias is not None:
            bias_t = b.to_native(np.asarray(bias), dtype, requires_grad=requires_grad)
            attn = bias_t
            if mask is not None:
                attn = bias_t.masked_fill(~b.to_native(np.asarray(mask, bool)), float("-inf"))
            kw["attn_mask"] = attn
        elif mask is not None:
            kw["attn_mask"] = b.to_native(np.asarray(mask, bool))
        if causal:
            kw["is_causal"] = True
        if "scale" in options:
            kw["scale"] = options["scale"]
        if options.get("enable_gqa"):
            kw["enable_gqa"] = True
        return q, k, v, kw, bias_t

    def _call(self, arrays, dtype, options):
        q, k, v, kw, _ = self._native_args(arrays, dtype, options)
        out = self.fn(q, k, v, **kw)
        return Outcome(self.backend.to_host(out), None, ArrayBackend.dtype_of(out))

    def _gradients(self, arrays, d_out, dtype, options):
        import torch

        q, k, v, kw, bias_t = self._native_args(arrays, dtype, options, requires_grad=True)
        out = self.fn(q, k, v, **kw)
        torch.autograd.backward(out, self.backend.to_native(d_out, dtype))
        grads = {"q": _grad_or_zero(q, lambda g: g), "k": _grad_or_zero(k, lambda g: g),
                 "v": _grad_or_zero(v, lambda g: g)}
        if bias_t is not None:
            grads["bias"] = _grad_or_zero(bias_t, lambda g: g)
        return grads


def _torch_sdpa_params(fn) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        import torch

        major, minor = (int(x) for x in torch.__version__.split(".")[:2])
        return {"attn_mask", "is_causal", "scale"} | ({"enable_gqa"} if (major, minor) >= (2, 5) else set())


@register_adapter("sdpa")
def _torch_sdpa(fn, *, backend, device, layout, mask_convention, name):
    torch = sys.modules.get("torch")
    if torch is None or fn is not getattr(torch.nn.functional, "scaled_dot_product_attention", None):
        return None
    if backend not in (None, "torch"):
        raise ValueError(f"torch's scaled_dot_product_attention takes torch tensors: backend must be 'torch' or None, "
                         f"got {backend!r}")
    return TorchSDPACandidate(fn, name="torch.nn.functional.scaled_dot_product_attention",
                              backend=make_backend("torch", device, fn))


# ------------------------------------------------------------------ jax


class JaxDPACandidate(Candidate):
    """``jax.nn.dot_product_attention``: (B, T, N, H) layout, ``mask`` True = may attend, ``bias``,
    ``is_causal`` (top-left), ``local_window_size=(left, right)``; key/value heads fewer than query
    heads are repeated by jax itself (query head h on key/value head h // G). jax wants d_v = d_k:
    a narrower v is padded with zero columns (sliced off the output), narrower q and k with zero
    columns (q . k unchanged; the default scale passed explicitly as 1/sqrt(d_k)). Gradients by
    ``jax.vjp``."""

    def __init__(self, fn, *, name, backend):
        super().__init__(fn, name=name, kind="sdpa", backend=backend,
                         features={"mask", "causal", "scale", "bias", "window", "enable_gqa"},
                         differentiable=True, note="jax.nn.dot_product_attention")

    def _native(self, arrays, dtype, options):
        b = self.backend
        q, k, v = arrays
        dk, dv = q.shape[-1], v.shape[-1]
        width = max(dk, dv)
        pad = (lambda a: a if a.shape[-1] == width else
               np.concatenate([a, np.zeros(a.shape[:-1] + (width - a.shape[-1],))], axis=-1))
        q, k, v = (b.to_native(_to_4d(pad(a)), dtype) for a in (q, k, v))
        kw: dict[str, Any] = {}
        if options.get("mask") is not None:
            kw["mask"] = b.to_native(_score_4d(np.asarray(options["mask"], bool)))
        if options.get("bias") is not None:
            kw["bias"] = b.to_native(_score_4d(np.asarray(options["bias"])), dtype)
        if options.get("causal"):
            kw["is_causal"] = True
        if "scale" in options:
            kw["scale"] = options["scale"]
        elif dv > dk:
            kw["scale"] = 1 / np.sqrt(dk)
        if options.get("window") is not None:  # jax takes ints: an unbounded side is the whole sequence
            n, m = arrays[0].shape[-2], arrays[1].shape[-2]
            kw["local_window_size"] = tuple(n + m if side is None else side for side in options["window"])
        return q, k, v, kw, width

    def _call(self, arrays, dtype, options):
        q, k, v, kw, _ = self._native(arrays, dtype, options)
        out = self.fn(q, k, v, **kw)
        return Outcome(_from_4d(self.backend.to_host(out), arrays[0].shape[:-1], arrays[2].shape[-1]), None,
                       ArrayBackend.dtype_of(out))

    def _gradients(self, arrays, d_out, dtype, options):
        import jax

        q, k, v, kw, width = self._native(arrays, dtype, options)
        bias = kw.pop("bias", None)
        out, vjp = jax.vjp(lambda q, k, v, bias: self.fn(q, k, v, bias=bias, **kw), q, k, v, bias)
        pad = np.zeros(d_out.shape[:-1] + (width - d_out.shape[-1],))
        grads = vjp(self.backend.to_native(_to_4d(np.concatenate([d_out, pad], axis=-1)), dtype))
        result = {name: _from_4d(self.backend.to_host(g), a.shape[:-1], a.shape[-1])
                  for name, g, a in zip("qkv", grads, arrays)}
        if bias is not None:
            result["bias"] = self.backend.to_host(grads[3]).reshape(np.shape(options["bias"]))
        return result


def _from_4d(x: np.ndarray, lead: tuple[int, ...], width: int) -> np.ndarray:
    """(B, L, H, C) -> (..., H, L, width): the inverse of :func:`_to_4d`, padding columns dropped."""
    return np.swapaxes(x, 1, 2)[..., :width].reshape(lead + (width,))


def _to_4d(x: np.ndarray) -> np.ndarray:
    """(..., H, L, C) -> (B, L, H, C) with every leading batch dim flattened into B."""
    while x.ndim < 4:
        x = x[None]
    x = x.reshape((-1,) + x.shape[-3:])
    return np.swapaxes(x, 1, 2)


def _score_4d(x: np.ndarray) -> np.ndarray:
    while x.ndim < 4:
        x = x[None]
    return x.reshape((-1,) + x.shape[-3:])


@register_adapter("sdpa")
def _jax_dpa(fn, *, backend, device, layout, mask_convention, name):
    jax = sys.modules.get("jax")
    if jax is None or fn is not getattr(getattr(jax, "nn", None), "dot_product_attention", None):
        return None
    return JaxDPACandidate(fn, name="jax.nn.dot_product_attention", backend=make_backend("jax", device, fn))
