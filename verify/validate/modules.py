"""Adapters for kind="mha" and kind="block": anyone's multi-head attention or transformer block,
called in our convention with weights the battery can read and set.

The battery works with :class:`numerics.MHAParams` / :class:`numerics.BlockParams` in float64 on the
host (row convention, ``Q = X @ w_q``); an adapter puts them into the candidate, runs it in a dtype,
and brings the output back as float64 NumPy. So numerics, run on the *same* weights, is the reference.

Calling conventions recognised (no flags needed):

kind="mha"
    * a plain function ``fn(x, params, **kw)`` whose second parameter is named ``params``: called with
      an :class:`numerics.MHAParams` (numerics' own convention, so ``numerics.multi_head_attention``
      validates as is);
    * a plain function taking the weights by name, e.g. ``fn(x, w_q, w_k, w_v, w_o, num_heads)``:
      any of ``w_q w_k w_v w_o b_q b_k b_v b_o num_heads`` it declares are passed by keyword, in
      the row convention (``w_q`` (D, H*K), head h = columns h*K:(h+1)*K, ``w_o`` (H*V, D)); the
      biases it does not declare are zero;
    * ``torch.nn.MultiheadAttention`` (an instance, or a zero-argument factory returning one):
      packed ``in_proj_weight`` or separate ``q/k/v_proj_weight`` (kdim != embed_dim),
      ``batch_first`` either way, ``attn_mask`` True = blocked (the adapter negates ours),
      ``need_weights=True`` gives the head-averaged weights;
    * an ``nn.Module`` with four ``nn.Linear`` projections named like ``W_q/W_k/W_v/W_o``,
      ``q_proj/k_proj/v_proj/o_proj`` (or ``out_proj``), or a packed ``qkv``/``c_attn`` plus
      ``proj``/``c_proj``, a head count in ``num_heads``/``n_head``/``h``, and ``forward(query,
      key, value)`` or ``forward(x)`` (seed 002's ``MultiHeadAttention`` style; nanoGPT's).

    Options, each passed only when the function's signature names it (else the properties that
    need it are NOT APPLICABLE): ``memory=`` (cross-attention), ``mask=`` (boolean, True = may
    attend, (N, M)), ``causal=`` (top-left).

kind="block"
    * ``fn(x, params, **kw)`` with a :class:`numerics.BlockParams`, or the weights by name: the MHA
      names above plus ``w1 b1 w2 b2 ln1_gamma ln1_beta ln2_gamma ln2_beta`` (and ``eps``);
    * ``torch.nn.TransformerEncoderLayer`` (``norm_first``, GELU ``activation``, ``layer_norm_eps``
      read from it; ``relu`` is not a GELU block);
    * an ``nn.Module`` with an attention submodule (``self_attn``/``attn``, recognised as above),
      layer norms ``norm1/norm2`` or ``ln1/ln2`` (``nn.LayerNorm``), linears ``linear1/linear2`` or
      ``fc1/fc2``, and ``forward(x)``.

    The block's conventions, ``norm`` ("post" or "pre") and the GELU ``approximate`` ("none" =
    erf or "tanh"), come from the module when it says (TransformerEncoderLayer), else from the
    caller (``validate(..., norm=..., approximate=...)``); a function that takes ``norm=`` or
    ``approximate=`` keywords gets them passed.
"""

from __future__ import annotations

import copy
import inspect
import sys
from dataclasses import replace
from typing import Any, Callable

import numpy as np

from numerics import BlockParams, FFNParams, MHAParams, init_block_params, init_params
from verify.validate.adapters import _split, make_backend, register_adapter
from verify.validate.backends import ArrayBackend
from verify.validate.candidate import FEATURES, Candidate
from verify.validate.faults import allowed_mask

__all__ = ["MHACandidate", "BlockCandidate", "as_mha_candidate", "as_block_candidate", "MHA_WEIGHT_NAMES",
           "BLOCK_WEIGHT_NAMES"]

MHA_WEIGHT_NAMES = ("w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o")
BLOCK_WEIGHT_NAMES = ("w1", "b1", "w2", "b2", "ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta")
OPTIONS = ("memory", "mask", "causal")


# --------------------------------------------------------------------------- helpers

def _torch():
    import torch

    return torch


def _is_module(obj: Any) -> bool:
    torch_nn = getattr(sys.modules.get("torch"), "nn", None)  # never import torch for a plain function
    return torch_nn is not None and isinstance(obj, torch_nn.Module)


def _is_factory(obj: Any) -> bool:
    """A zero-argument callable that is not itself a module (it builds one)."""
    if _is_module(obj) or not callable(obj):
        return False
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return False
    return not any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                   for p in sig.parameters.values())


def _name_of(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__qualname__


# --------------------------------------------------------------------------- candidates

class MHACandidate(Candidate):
    """Multi-head attention under test, in the battery's convention.

    Call as ``candidate(x, params, dtype="float32", memory=..., mask=..., causal=...)`` with host
    float64 NumPy ``x`` (B, N, D) and :class:`numerics.MHAParams`; returns ``(out, weights)``
    on the host in float64 (weights None unless :attr:`returns_weights`).

    Attributes
    ----------
    name, note : str
        How reports name it, and how it was recognised.
    d_model, num_heads, d_memory : int
    takes : frozenset of str
        The options of ("memory", "mask", "causal") it accepts (``features`` holds those that
        are also SDPA options, for the engine's ``needs``).
    has_bias : dict
        Which of b_q, b_k, b_v, b_o it has (the others are zero in its reference).
    returns_weights : bool
        Whether it returns the head-averaged attention weights (B, N, M).
    """

    def __init__(self, fn, *, name, note, backend: ArrayBackend, d_model, num_heads, takes=(), has_bias=None,
                 returns_weights=False, d_memory=None):
        super().__init__(fn, name=name, kind="mha", backend=backend, features=[t for t in takes if t in FEATURES],
                         returns_weights=returns_weights, note=note)
        self.takes = frozenset(takes)
        self.d_model, self.num_heads = int(d_model), int(num_heads)
        self.d_memory = int(d_memory or d_model)
        self.has_bias = dict(has_bias or {b: False for b in MHA_WEIGHT_NAMES[4:]})

    def read(self) -> MHAParams | None:
        """The candidate's own weights (a module's), or None when the battery chooses them."""
        return None

    def draw_params(self, seed: int) -> MHAParams:
        """Weights for a candidate that takes them: N(0, 1/fan_in), biases drawn where it has them."""
        p = init_params(self.d_model, self.num_heads, d_memory=self.d_memory, bias=True, seed=seed)
        rng = np.random.default_rng([seed, 7])
        return replace(p, **{b: (0.3 * rng.standard_normal(getattr(p, b).shape) if self.has_bias[b] else None)
                             for b in MHA_WEIGHT_NAMES[4:]})

    def params(self, seed: int) -> MHAParams:
        """The weights the properties use: a module's own weights with its biases (zeros at
        torch's initialisation, which would hide a dropped bias) drawn N(0, 0.3^2); drawn ones
        for a function."""
        own = self.read()
        if own is None:
            return self.draw_params(seed)
        rng = np.random.default_rng([seed, 13])
        return replace(own, **{b: None if getattr(own, b) is None else 0.3 * rng.standard_normal(getattr(own, b).shape)
                               for b in MHA_WEIGHT_NAMES[4:]})

    #: True when the candidate always masks causally (declared: ``as_mha_candidate(..., causal=True)``);
    #: the battery then compares it with causal attention and never passes ``causal``.
    always_causal = False

    def __call__(self, x, params: MHAParams, *, dtype: str, memory=None, mask=None, causal=False):
        if self.always_causal:
            if not causal:
                raise ValueError(f"the candidate {self.name} is declared always causal; a property asked for "
                                 "non-causal attention")
            causal = False  # built in: nothing to pass
        refused = [k for k, v in (("memory", memory), ("mask", mask), ("causal", causal)) if v is not None and v is not False
                   and k not in self.takes]
        if refused:
            raise ValueError(f"the candidate {self.name} does not accept {refused}; a property passed them")
        return self._call(np.asarray(x, dtype=np.float64), params, dtype, memory, mask, bool(causal))

    def _call(self, x, params, dtype, memory, mask, causal):  # pragma: no cover - abstract
        raise NotImplementedError

    def gradients(self, x, params: MHAParams, *, d_out, dtype: str, memory=None, mask=None, causal=False):
        """Autograd gradients of ``sum(d_out * out)`` (torch modules): ``{"x": (B, N, D), "w_q": ...,
        "b_o": ...}`` on the host in float64, the weights' in the row convention (``w_q`` (D, H*K));
        a bias the module lacks is absent."""
        if not self.differentiable:
            raise ValueError(f"the candidate {self.name} is not differentiable in its library")
        if self.always_causal:
            causal = False
        torch = _torch()
        m = self.copies.get(dtype)
        self._load_into(m, params)
        xt = self.backend.to_native(np.asarray(x, dtype=np.float64), dtype, requires_grad=True)
        for p in m.parameters():
            p.requires_grad_(True)
            p.grad = None
        with torch.enable_grad():
            out, _ = self._forward(m, xt, memory, mask, bool(causal), dtype)
            (out * self.backend.to_native(np.asarray(d_out, dtype=np.float64), dtype)).sum().backward()
        grads = {"x": ArrayBackend.to_host(xt.grad)}
        with _grads_as_weights(m):
            as_params = self._read_from(m)
        grads.update({k: v for k, v in as_params.arrays().items() if v is not None})
        return grads


class BlockCandidate(Candidate):
    """A transformer block under test: ``candidate(x, params, dtype=..., mask=..., causal=...)``
    with :class:`numerics.BlockParams`; returns the output (B, N, D) on the host in float64.

    ``norm`` and ``approximate`` are the conventions it declares (or the caller declared for it);
    ``eps`` its layer norms' epsilon.
    """

    def __init__(self, fn, *, name, note, backend: ArrayBackend, d_model, num_heads, d_ff, norm, approximate,
                 eps=1e-5, takes=(), has_bias=True):
        if norm not in ("post", "pre"):
            raise ValueError(f"norm must be 'post' or 'pre', got {norm!r}")
        if approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' (erf GELU) or 'tanh', got {approximate!r}")
        super().__init__(fn, name=name, kind="block", backend=backend, features=takes, note=note)
        self.takes = frozenset(takes)
        self.d_model, self.num_heads, self.d_ff = int(d_model), int(num_heads), int(d_ff)
        self.norm, self.approximate, self.eps = norm, approximate, float(eps)
        self.has_bias = has_bias

    def read(self) -> BlockParams | None:
        return None

    def params(self, seed: int) -> BlockParams:
        return self.read() or init_block_params(self.d_model, self.num_heads, self.d_ff, bias=self.has_bias, seed=seed,
                                                noise=0.3)

    def __call__(self, x, params: BlockParams, *, dtype: str, mask=None, causal=False):
        refused = [k for k, v in (("mask", mask), ("causal", causal)) if v is not None and v is not False
                   and k not in self.takes]
        if refused:
            raise ValueError(f"the candidate {self.name} does not accept {refused}; a property passed them")
        return self._call(np.asarray(x, dtype=np.float64), params, dtype, mask, bool(causal))

    def _call(self, x, params, dtype, mask, causal):  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------- plain functions

def _signature(fn: Callable, kind: str) -> inspect.Signature:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot read the signature of {_name_of(fn)} ({exc}); kind={kind!r} calls a plain function "
                        "by its parameter names: fn(x, params, ...) or fn(x, w_q, w_k, w_v, w_o, num_heads, ...)") from None


def _function_style(fn: Callable, known: tuple[str, ...], kind: str) -> tuple[str, set[str]]:
    """("params" | "names", the parameter names it takes), checked against the convention."""
    sig = _signature(fn, kind)
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional:
        raise TypeError(f"{_name_of(fn)} must take the input x as its first argument (kind={kind!r})")
    names = {p.name for p in params}
    if len(positional) >= 2 and positional[1].name == "params":
        return "params", names
    extra = {"num_heads", "eps", "norm", "approximate", *OPTIONS}
    required = [p.name for p in params[1:] if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    unknown = [n for n in required if n not in known and n not in extra]
    if unknown:
        raise TypeError(
            f"{_name_of(fn)} requires {unknown}, which the kind={kind!r} convention does not supply: it passes "
            f"fn(x, params, ...) with a numerics params object, or the weights by name among {list(known)} and "
            "num_heads (row convention: Q = x @ w_q)")
    missing = [w for w in known if w.startswith("w") and w not in names]
    if missing:
        raise TypeError(f"{_name_of(fn)} must take every weight of the convention by name; it lacks {missing}")
    return "names", names


class FunctionMHA(MHACandidate):
    """A plain function (see the module docstring for the two conventions)."""

    def __init__(self, fn, *, backend: ArrayBackend, d_model: int = 8, num_heads: int = 2, name: str | None = None):
        self.style, self.names = _function_style(fn, MHA_WEIGHT_NAMES, "mha")
        takes = [o for o in OPTIONS if o in self.names]
        has_bias = {b: self.style == "params" or b in self.names for b in MHA_WEIGHT_NAMES[4:]}
        super().__init__(fn, name=name or _name_of(fn), backend=backend,
                         note=f"plain function, weights passed as {self.style!r} ({backend.name})",
                         d_model=d_model, num_heads=num_heads, takes=takes, has_bias=has_bias)

    def _call(self, x, params, dtype, memory, mask, causal):
        put = lambda a: self.backend.to_native(None if a is None else np.asarray(a), dtype)  # noqa: E731
        arrays = {k: put(v) for k, v in params.arrays().items()}
        kw: dict[str, Any] = {}
        if self.style == "params":
            args = (put(x), MHAParams(num_heads=params.num_heads, **arrays))
        else:
            args = (put(x),)
            kw.update({k: v for k, v in arrays.items() if k in self.names})
            if "num_heads" in self.names:
                kw["num_heads"] = params.num_heads
        if memory is not None:
            kw["memory"] = put(memory)
        if mask is not None:
            kw["mask"] = self.backend.to_native(np.asarray(mask, dtype=bool))
        if causal:
            kw["causal"] = True
        out, weights = _split(self.fn(*args, **kw))
        return self.backend.to_host(out), (None if weights is None else self.backend.to_host(weights))


class FunctionBlock(BlockCandidate):
    """A plain block function (see the module docstring)."""

    def __init__(self, fn, *, backend: ArrayBackend, d_model=8, num_heads=2, d_ff=16, norm="post", approximate="none",
                 eps=1e-5, name=None):
        self.style, self.names = _function_style(fn, MHA_WEIGHT_NAMES + BLOCK_WEIGHT_NAMES, "block")
        takes = [o for o in ("mask", "causal") if o in self.names]
        super().__init__(fn, name=name or _name_of(fn), backend=backend,
                         note=f"plain function, weights passed as {self.style!r} ({backend.name})",
                         d_model=d_model, num_heads=num_heads, d_ff=d_ff, norm=norm, approximate=approximate, eps=eps,
                         takes=takes)

    def _call(self, x, params, dtype, mask, causal):
        put = lambda a: None if a is None else self.backend.to_native(np.asarray(a), dtype)  # noqa: E731
        attn = params.attn
        kw: dict[str, Any] = {}
        if self.style == "params":
            p = BlockParams(attn=MHAParams(num_heads=attn.num_heads, **{k: put(v) for k, v in attn.arrays().items()}),
                            ffn=FFNParams(*(put(getattr(params.ffn, f)) for f in ("w1", "b1", "w2", "b2"))),
                            **{f: put(getattr(params, f)) for f in BLOCK_WEIGHT_NAMES[4:]})
            args = (put(x), p)
        else:
            args = (put(x),)
            flat = {**attn.arrays(), **{f: getattr(params.ffn, f) for f in ("w1", "b1", "w2", "b2")},
                    **{f: getattr(params, f) for f in BLOCK_WEIGHT_NAMES[4:]}}
            kw.update({k: put(v) for k, v in flat.items() if k in self.names})
            if "num_heads" in self.names:
                kw["num_heads"] = attn.num_heads
        for name, value in (("norm", self.norm), ("approximate", self.approximate), ("eps", self.eps)):
            if name in self.names:
                kw[name] = value
        if mask is not None:
            kw["mask"] = self.backend.to_native(np.asarray(mask, dtype=bool))
        if causal:
            kw["causal"] = True
        out, _ = _split(self.fn(*args, **kw))
        return self.backend.to_host(out)


# --------------------------------------------------------------------------- torch modules

def _linear_params(lin) -> tuple[np.ndarray, np.ndarray | None]:
    """An nn.Linear as (w (in, out), b) in the row convention: x @ w + b == lin(x)."""
    w = lin.weight.detach().double().cpu().numpy().T
    b = None if lin.bias is None else lin.bias.detach().double().cpu().numpy()
    return w, b


class _grads_as_weights:
    """Within the block, each parameter of ``m`` holds its gradient (zeros where none reached it),
    so the code that reads a module's weights in the row convention reads its gradients."""

    def __init__(self, m):
        self.m, self.saved = m, []

    def __enter__(self):
        torch = _torch()
        with torch.no_grad():
            for p in self.m.parameters():
                self.saved.append((p, p.data))
                p.data = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p.data)
        return self.m

    def __exit__(self, *exc):
        for p, data in self.saved:
            p.data = data
        return False


def _set(tensor, value: np.ndarray | None) -> None:
    torch = _torch()
    if tensor is None:
        if value is not None and np.any(value != 0):
            raise ValueError("the module has no bias where the battery set a non-zero one")
        return
    with torch.no_grad():
        tensor.copy_(torch.as_tensor(np.ascontiguousarray(value), dtype=tensor.dtype, device=tensor.device))


class _ModuleCopies:
    """One eval-mode copy of a module per dtype, so setting weights never touches the user's module."""

    def __init__(self, module, device: str | None = None):
        self.module = module
        self.device = device or "cpu"
        self.copies: dict[str, Any] = {}

    def get(self, dtype: str):
        if dtype not in self.copies:
            torch = _torch()
            self.copies[dtype] = copy.deepcopy(self.module).to(dtype=getattr(torch, dtype), device=self.device).eval()
        return self.copies[dtype]


class TorchMultiheadAttention(MHACandidate):
    """``torch.nn.MultiheadAttention``: weights read from and written to a copy of it."""

    def __init__(self, module, name=None, device=None):
        if getattr(module, "bias_k", None) is not None or getattr(module, "add_zero_attn", False):
            raise TypeError("nn.MultiheadAttention with add_bias_kv or add_zero_attn has no counterpart in "
                            "multi-head attention as numerics defines it")
        self.module = module
        self.copies = _ModuleCopies(module, device)
        has_b = module.in_proj_bias is not None
        super().__init__(module, name=name or f"torch.nn.MultiheadAttention(batch_first={module.batch_first})",
                         note="torch.nn.MultiheadAttention (attn_mask True = blocked, negated by the adapter)",
                         backend=ArrayBackend("torch", device), d_model=module.embed_dim, num_heads=module.num_heads,
                         d_memory=module.kdim if module.kdim == module.vdim else None,
                         takes=("memory", "mask", "causal"), has_bias={b: has_b for b in MHA_WEIGHT_NAMES[4:]},
                         returns_weights=True)
        self.differentiable = True
        if module.kdim != module.vdim:
            raise TypeError("nn.MultiheadAttention with kdim != vdim: keys and values from different memories are "
                            "not covered by the battery")

    def _weights(self, m) -> dict[str, Any]:
        d = m.embed_dim
        if m._qkv_same_embed_dim:
            w = m.in_proj_weight
            wq, wk, wv = w[:d], w[d:2 * d], w[2 * d:]
        else:
            wq, wk, wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
        b = m.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:d], b[d:2 * d], b[2 * d:])
        return {"w_q": wq, "w_k": wk, "w_v": wv, "w_o": m.out_proj.weight, "b_q": bq, "b_k": bk, "b_v": bv,
                "b_o": m.out_proj.bias}

    def read(self) -> MHAParams:
        return self._read_from(self.module)

    def _read_from(self, m) -> MHAParams:
        t = self._weights(m)
        host = {k: (None if v is None else v.detach().double().cpu().numpy()) for k, v in t.items()}
        return MHAParams(num_heads=self.num_heads, **{k: (v.T if k.startswith("w") else v) for k, v in host.items()})

    def _load(self, m, params: MHAParams) -> None:
        t = self._weights(m)
        for k in MHA_WEIGHT_NAMES:
            value = getattr(params, k)
            _set(t[k], None if value is None else (value.T if k.startswith("w") else value))

    def _forward(self, m, xt, memory, mask, causal, dtype):
        """The module on native ``xt`` (B, N, D): (out (B, N, D), head-averaged weights)."""
        kv = xt if memory is None else self.backend.to_native(np.asarray(memory, dtype=np.float64), dtype)
        q = xt
        if not m.batch_first:
            q, kv = q.transpose(0, 1), kv.transpose(0, 1)
        allowed = allowed_mask(mask, causal, xt.shape[-2], kv.shape[0 if not m.batch_first else -2])
        attn_mask = None if allowed is None else self.backend.to_native(~allowed)
        out, weights = m(q, kv, kv, attn_mask=attn_mask, need_weights=True, average_attn_weights=True)
        return (out if m.batch_first else out.transpose(0, 1)), weights

    def _load_into(self, m, params: MHAParams) -> None:
        self._load(m, params)

    def _call(self, x, params, dtype, memory, mask, causal):
        torch = _torch()
        m = self.copies.get(dtype)
        self._load(m, params)
        with torch.no_grad():
            out, weights = self._forward(m, self.backend.to_native(x, dtype), memory, mask, causal, dtype)
        return ArrayBackend.to_host(out), ArrayBackend.to_host(weights)


_Q_NAMES = ("W_q", "q_proj", "query", "wq", "to_q", "q")
_K_NAMES = ("W_k", "k_proj", "key", "wk", "to_k", "k")
_V_NAMES = ("W_v", "v_proj", "value", "wv", "to_v", "v")
_O_NAMES = ("W_o", "o_proj", "out_proj", "wo", "to_out", "proj", "c_proj", "out")
_QKV_NAMES = ("qkv", "c_attn", "in_proj", "W_qkv", "qkv_proj")
_HEAD_NAMES = ("num_heads", "n_head", "n_heads", "h", "heads")
#: Key/value head counts of grouped-query attention (HF Llama's num_key_value_heads).
_KV_HEAD_NAMES = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "n_kv_head")


def _child(module, names: tuple[str, ...]):
    torch = _torch()
    for n in names:
        sub = getattr(module, n, None)
        if isinstance(sub, torch.nn.Linear):
            return n, sub
    return None, None


class LinearProjectionMHA(MHACandidate):
    """An nn.Module whose projections are nn.Linear layers (seed 002's style, nanoGPT's)."""

    def __init__(self, module, name=None, device=None):
        self.module = module
        self.copies = _ModuleCopies(module, device)
        self.layout = self._find(module)
        heads = next((getattr(module, n) for n in _HEAD_NAMES if isinstance(getattr(module, n, None), int)), None)
        if heads is None:
            raise TypeError(f"{type(module).__name__}: no head count found (an int attribute among {list(_HEAD_NAMES)})")
        forward = inspect.signature(module.forward)
        required = [p for p in forward.parameters.values() if p.default is p.empty
                    and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(required) not in (1, 3):
            raise TypeError(f"{type(module).__name__}.forward must take (x) or (query, key, value), takes "
                            f"{[p.name for p in required]}")
        self.three = len(required) == 3
        kv_heads = next((getattr(module, n) for n in _KV_HEAD_NAMES if isinstance(getattr(module, n, None), int)), heads)
        if kv_heads != heads and ("qkv" in self.layout or heads % kv_heads):
            raise TypeError(f"{type(module).__name__}: {kv_heads} key/value heads for {heads} query heads needs separate "
                            "q/k/v projections and a head count divisible by the key/value heads")
        w_o, b_o = _linear_params(self.layout["o"])
        _, b_q = _linear_params(self.layout["q"]) if "q" in self.layout else _linear_params(self.layout["qkv"])
        super().__init__(module, name=name or type(module).__qualname__, backend=ArrayBackend("torch", device),
                         note=f"nn.Module with nn.Linear projections {sorted(self.names.values())}, "
                              f"forward({'query, key, value' if self.three else 'x'})",
                         d_model=w_o.shape[1], num_heads=heads, takes=("memory",) if self.three else (),
                         has_bias={"b_q": b_q is not None, "b_k": b_q is not None, "b_v": b_q is not None,
                                   "b_o": b_o is not None})
        self.differentiable = True
        self.num_kv_heads = kv_heads
        if kv_heads != heads:
            self.note += f"; grouped-query: {kv_heads} key/value heads"

    def _find(self, module) -> dict[str, Any]:
        found, self.names = {}, {}
        for key, names in (("q", _Q_NAMES), ("k", _K_NAMES), ("v", _V_NAMES), ("o", _O_NAMES), ("qkv", _QKV_NAMES)):
            n, lin = _child(module, names)
            if lin is not None:
                found[key], self.names[key] = lin, n
        if "o" not in found or not ({"q", "k", "v"} <= found.keys() or "qkv" in found):
            raise TypeError(
                f"{type(module).__name__}: expected nn.Linear projections named like W_q/W_k/W_v/W_o, "
                f"q_proj/k_proj/v_proj/o_proj or a packed qkv/c_attn with proj/c_proj; found {sorted(self.names.values())}")
        return found

    def _row_weights(self, m) -> dict[str, tuple[Any, Any]]:
        """name -> (weight tensor slice (out, in), bias slice) for w_q, w_k, w_v, w_o."""
        lay = {k: getattr(m, n) for k, n in self.names.items()}
        if "q" in lay:
            out = {"q": (lay["q"].weight, lay["q"].bias), "k": (lay["k"].weight, lay["k"].bias),
                   "v": (lay["v"].weight, lay["v"].bias)}
        else:
            w, b = lay["qkv"].weight, lay["qkv"].bias
            d = w.shape[0] // 3
            out = {key: (w[i * d:(i + 1) * d], None if b is None else b[i * d:(i + 1) * d]) for i, key in enumerate("qkv")}
        out["o"] = (lay["o"].weight, lay["o"].bias)
        return out

    def read(self) -> MHAParams:
        return self._read_from(self.module)

    def _read_from(self, m) -> MHAParams:
        host = {}
        for key, (w, b) in self._row_weights(m).items():
            host[f"w_{key}"] = w.detach().double().cpu().numpy().T
            host[f"b_{key}"] = None if b is None else b.detach().double().cpu().numpy()
        kv = getattr(self, "num_kv_heads", self.num_heads)
        return MHAParams(num_heads=self.num_heads, num_kv_heads=None if kv == self.num_heads else kv, **host)

    def _load_into(self, m, params: MHAParams) -> None:
        for key, (w, b) in self._row_weights(m).items():
            _set(w, getattr(params, f"w_{key}").T)
            _set(b, getattr(params, f"b_{key}"))

    def _forward(self, m, xt, memory, mask, causal, dtype):
        if self.three:
            src = xt if memory is None else self.backend.to_native(np.asarray(memory), dtype)
            return _split(m(xt, src, src))
        return _split(m(xt))

    def _call(self, x, params, dtype, memory, mask, causal):
        torch = _torch()
        m = self.copies.get(dtype)
        self._load_into(m, params)
        with torch.no_grad():
            out, _ = self._forward(m, self.backend.to_native(x, dtype), memory, mask, causal, dtype)
        return ArrayBackend.to_host(out), None


def _gelu_of(activation) -> str:
    """'none' or 'tanh' for a torch GELU activation (function or module); TypeError otherwise."""
    torch = _torch()
    if activation is torch.nn.functional.gelu:
        return "none"
    if isinstance(activation, torch.nn.GELU):
        return activation.approximate
    raise TypeError(f"the block's activation is {activation!r}: the battery checks GELU blocks (numerics."
                    "transformer_block); relu has no counterpart there")


class TorchBlock(BlockCandidate):
    """``torch.nn.TransformerEncoderLayer`` or a module with the same parts under common names."""

    def __init__(self, module, *, norm=None, approximate=None, name=None, device=None):
        torch = _torch()
        self.module = module
        self.copies = _ModuleCopies(module, device)
        self.encoder_layer = isinstance(module, torch.nn.TransformerEncoderLayer)
        self.parts = self._find(module)
        attn = self.parts["attn"]
        self.attn = TorchMultiheadAttention(attn) if isinstance(attn, torch.nn.MultiheadAttention) \
            else LinearProjectionMHA(attn)
        if self.encoder_layer:
            declared_norm = "pre" if module.norm_first else "post"
            declared_gelu = _gelu_of(module.activation)
            note = "torch.nn.TransformerEncoderLayer (norm_first, activation and layer_norm_eps read from it)"
            eps = module.norm1.eps
        else:
            flag = next((getattr(module, n) for n in ("norm_first", "pre_norm", "pre_ln") if hasattr(module, n)), None)
            declared_norm = None if flag is None else ("pre" if flag else "post")
            declared_gelu = None
            note = f"nn.Module with parts {sorted(self.names.values())}"
            eps = self.parts["ln1"].eps
        self.declared = {"norm": norm or declared_norm, "approximate": approximate or declared_gelu}
        if self.declared["norm"] is None:
            raise TypeError(f"{type(module).__name__}: say whether the block is pre-LN or post-LN "
                            "(validate(..., norm='pre' | 'post'), or a norm_first attribute)")
        lin1 = self.parts["fc1"]
        super().__init__(module, name=name or type(module).__qualname__, note=note, backend=ArrayBackend("torch", device),
                         d_model=self.attn.d_model, num_heads=self.attn.num_heads, d_ff=lin1.out_features,
                         norm=self.declared["norm"], approximate=self.declared["approximate"] or "none", eps=eps,
                         takes=("mask", "causal") if self.encoder_layer else ())

    def _find(self, module) -> dict[str, Any]:
        torch = _torch()
        options = {"attn": ("self_attn", "attn", "attention", "mha"), "ln1": ("norm1", "ln1", "ln_1"),
                   "ln2": ("norm2", "ln2", "ln_2"), "fc1": ("linear1", "fc1", "c_fc", "w1"),
                   "fc2": ("linear2", "fc2", "w2")}
        found, self.names = {}, {}
        for key, names in options.items():
            for n in names:
                sub = getattr(module, n, None)
                if isinstance(sub, torch.nn.Module):
                    found[key], self.names[key] = sub, n
                    break
        missing = sorted(set(options) - set(found))
        if missing:
            raise TypeError(f"{type(module).__name__}: a block needs an attention submodule, two nn.LayerNorm and two "
                            f"nn.Linear; not found: {missing} (names tried: {options})")
        return found

    def read(self) -> BlockParams:
        attn = self.attn.read()
        w1, b1 = _linear_params(self.parts["fc1"])
        w2, b2 = _linear_params(self.parts["fc2"])
        ln = {}
        for i in (1, 2):
            norm = self.parts[f"ln{i}"]
            ln[f"ln{i}_gamma"] = None if norm.weight is None else norm.weight.detach().double().numpy()
            ln[f"ln{i}_beta"] = None if norm.bias is None else norm.bias.detach().double().numpy()
        return BlockParams(attn=attn, ffn=FFNParams(w1, b1, w2, b2), **ln)

    def params(self, seed: int) -> BlockParams:
        """The module's weights, with its layer-norm gains and biases and attention biases moved
        off 1 and 0 (a gain of 1 and biases of 0 hide swapped or dropped terms)."""
        p = self.read()
        rng = np.random.default_rng([seed, 11])
        near = lambda a, v: None if a is None else v + 0.3 * rng.standard_normal(a.shape)  # noqa: E731
        ln = {f: near(getattr(p, f), 1.0 if f.endswith("gamma") else 0.0) for f in BLOCK_WEIGHT_NAMES[4:]}
        attn = replace(p.attn, **{b: near(getattr(p.attn, b), 0.0) for b in MHA_WEIGHT_NAMES[4:]})
        return replace(p, attn=attn, **ln)

    def _call(self, x, params, dtype, mask, causal):
        torch = _torch()
        m = self.copies.get(dtype)
        parts = {k: getattr(m, n) for k, n in self.names.items()}
        adapter = self.attn
        if isinstance(adapter, TorchMultiheadAttention):
            adapter._load(parts["attn"], params.attn)
        else:
            for key, (w, b) in adapter._row_weights(parts["attn"]).items():
                _set(w, getattr(params.attn, f"w_{key}").T)
                _set(b, getattr(params.attn, f"b_{key}"))
        for key, (w, b) in (("fc1", (params.ffn.w1, params.ffn.b1)), ("fc2", (params.ffn.w2, params.ffn.b2))):
            _set(parts[key].weight, w.T)
            _set(parts[key].bias, b)
        for i in (1, 2):
            _set(parts[f"ln{i}"].weight, getattr(params, f"ln{i}_gamma"))
            _set(parts[f"ln{i}"].bias, getattr(params, f"ln{i}_beta"))
        xt = self.backend.to_native(x, dtype)
        with torch.no_grad():
            if self.encoder_layer:
                batch_first = m.self_attn.batch_first
                src = xt if batch_first else xt.transpose(0, 1)
                allowed = allowed_mask(mask, causal, x.shape[-2], x.shape[-2])
                src_mask = None if allowed is None else self.backend.to_native(~allowed)
                out = m(src, src_mask=src_mask)
                out = out if batch_first else out.transpose(0, 1)
            else:
                out, _ = _split(m(xt))
        return ArrayBackend.to_host(out)


# --------------------------------------------------------------------------- recognition

def _resolve(obj: Any) -> Any:
    """A factory is called once (it builds the module under test)."""
    if _is_factory(obj):
        made = obj()
        if not _is_module(made):
            raise TypeError(f"{_name_of(obj)} takes no arguments, so it was called as a factory, but it returned "
                            f"{type(made).__name__}, not an nn.Module")
        return made
    return obj


def as_mha_candidate(obj: Any, *, backend: str | None = None, device: str | None = None, d_model: int | None = None,
                     num_heads: int | None = None, causal: bool = False, name: str | None = None) -> MHACandidate:
    """Recognise ``obj`` (see the module docstring) as multi-head attention under test.

    ``d_model`` and ``num_heads`` are the sizes a plain function is run at (default 8 and 2); a
    module has its own, and a value that disagrees with them is a ValueError. ``causal=True``
    declares attention that always masks causally (top-left) without being asked, as nanoGPT's
    ``CausalSelfAttention``. Pass the result to :func:`verify.validate.validate` with ``kind="mha"``.
    """
    if isinstance(obj, MHACandidate):
        return obj
    obj = _resolve(obj)
    if _is_module(obj):
        torch = _torch()
        if isinstance(obj, torch.nn.MultiheadAttention):
            cand = TorchMultiheadAttention(obj, name=name, device=device)
        else:
            cand = LinearProjectionMHA(obj, name=name, device=device)
        _agrees_with_module(cand, d_model=d_model, num_heads=num_heads)
    elif not callable(obj):
        raise TypeError(f"expected a function, an nn.Module or a factory returning one, got {type(obj).__name__}")
    else:
        cand = FunctionMHA(obj, backend=make_backend(backend, device, obj), d_model=d_model or 8,
                           num_heads=num_heads or 2, name=name)
    if causal:
        cand.always_causal = True
        cand.takes = cand.takes - {"causal"}
        cand.note += "; declared always causal"
    return cand


def _agrees_with_module(cand, **declared) -> None:
    """A module's sizes are its own: a declared size that differs is the caller's mistake."""
    for key, value in declared.items():
        if value is not None and value != getattr(cand, key):
            raise ValueError(f"option {key!r} is {value}, but the module {cand.name} has {key} = {getattr(cand, key)} "
                             "(a module's sizes are read from it; leave the option out)")


def as_block_candidate(obj: Any, *, backend: str | None = None, device: str | None = None, d_model: int | None = None,
                       num_heads: int | None = None, d_ff: int | None = None, norm: str | None = None,
                       approximate: str | None = None, eps: float | None = None,
                       name: str | None = None) -> BlockCandidate:
    """Recognise ``obj`` as a transformer block under test. ``norm`` and ``approximate`` declare
    its conventions when it does not say itself (a plain function: default "post" and "none");
    the sizes (default 8, 2, 16) and ``eps`` (default 1e-5) are a plain function's, a module's
    are read from it (a size that disagrees is a ValueError)."""
    if isinstance(obj, BlockCandidate):
        return obj
    obj = _resolve(obj)
    if _is_module(obj):
        cand = TorchBlock(obj, norm=norm, approximate=approximate, name=name, device=device)
        _agrees_with_module(cand, d_model=d_model, num_heads=num_heads, d_ff=d_ff)
        if eps is not None and eps != cand.eps:
            raise ValueError(f"option 'eps' is {eps}, but the module {cand.name} has layer-norm eps {cand.eps} "
                             "(read from it; leave the option out)")
        return cand
    if not callable(obj):
        raise TypeError(f"expected a function, an nn.Module or a factory returning one, got {type(obj).__name__}")
    return FunctionBlock(obj, backend=make_backend(backend, device, obj), d_model=d_model or 8, num_heads=num_heads or 2,
                         d_ff=d_ff or 16, norm=norm or "post", approximate=approximate or "none",
                         eps=1e-5 if eps is None else eps, name=name)


@register_adapter("mha")
def _recognise_mha(fn, *, backend, device, layout, mask_convention, name, options=None):
    return as_mha_candidate(fn, backend=backend, device=device, name=name, **(options or {}))


@register_adapter("block")
def _recognise_block(fn, *, backend, device, layout, mask_convention, name, options=None):
    return as_block_candidate(fn, backend=backend, device=device, name=name, **(options or {}))
