"""Multi-head attention in the row convention of the documents, forward and backward.

Shapes: B... batch dims, N query length, M key/memory length, D model width,
Dm memory width (D for self-attention), H heads, K key/query width per head,
V value width per head.

    Q = X W_q + b_q          (..., N, H*K)    split into H heads (..., H, N, K)
    K = Mem W_k + b_k        (..., M, H*K)    Mem = X for self-attention
    V = Mem W_v + b_v        (..., M, H*V)
    head_i = attention(Q_i, K_i, V_i)         all heads in one batched call
    MHA(X) = concat(head_1..head_H) W_o + b_o (..., N, D)

Backward is written by hand from these lines and :func:`numerics.attention_backward`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from functools import partial
from types import ModuleType
from typing import Any, Callable

import array_api_compat
import numpy as np

from . import _backend as bk
from . import _parallel
from . import attention as _attention
from .attention import scaled_dot_product_attention

__all__ = [
    "MHAParams",
    "MHAGradients",
    "init_params",
    "multi_head_attention",
    "multi_head_attention_backward",
    "multi_head_attention_vjp",
]

_WEIGHTS = ("w_q", "w_k", "w_v", "w_o")
_BIASES = ("b_q", "b_k", "b_v", "b_o")


@dataclass
class MHAParams:
    """Parameters of multi-head attention (row convention, ``Q = X @ w_q``).

    w_q (D, H*K), w_k (Dm, H*K), w_v (Dm, H*V), w_o (H*V, D); biases b_q (H*K,),
    b_k (H*K,), b_v (H*V,), b_o (D,) or None. Dm is the memory width (D for self-attention).
    """

    w_q: Any
    w_k: Any
    w_v: Any
    w_o: Any
    num_heads: int
    b_q: Any = None
    b_k: Any = None
    b_v: Any = None
    b_o: Any = None

    @property
    def d_model(self) -> int:
        return int(self.w_q.shape[0])

    @property
    def d_memory(self) -> int:
        return int(self.w_k.shape[0])

    @property
    def d_k(self) -> int:
        return int(self.w_q.shape[1]) // self.num_heads

    @property
    def d_v(self) -> int:
        return int(self.w_v.shape[1]) // self.num_heads

    def arrays(self) -> dict[str, Any]:
        """The parameter arrays by field name, absent biases left out."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "num_heads" and getattr(self, f.name) is not None}

    def num_parameters(self) -> int:
        """Total number of scalar parameters."""
        return sum(math.prod(a.shape) for a in self.arrays().values())


@dataclass
class MHAGradients:
    """Gradients of ``sum(d_out * MHA(x, memory))``: x (..., N, D), memory (..., M, Dm) or
    None for self-attention (its gradient is folded into ``x``), params as :class:`MHAParams`."""

    x: Any
    memory: Any
    params: MHAParams


def init_params(
    d_model: int,
    num_heads: int,
    *,
    d_k: int | None = None,
    d_v: int | None = None,
    d_memory: int | None = None,
    bias: bool = False,
    dtype: Any = None,
    xp: ModuleType | str = "numpy",
    seed: int = 0,
) -> MHAParams:
    """Random parameters: weights N(0, 1/fan_in), biases 0.

    d_k and d_v default to d_model // num_heads (d_model must then be divisible by
    num_heads); d_memory defaults to d_model. Drawn on the host with
    ``numpy.random.default_rng(seed)`` (float64) and cast to ``dtype`` (default float64)
    on namespace ``xp``, so every backend gets the same values for the same seed. Sizes
    are positive integers, ``seed`` a non-negative integer and ``bias`` a bool (Python or
    NumPy); anything else is an error naming the argument.
    """
    d_model, num_heads = bk.positive_int("d_model", d_model), bk.positive_int("num_heads", num_heads)
    if (d_k is None or d_v is None) and d_model % num_heads:
        raise ValueError(
            f"d_model ({d_model}) must be divisible by num_heads ({num_heads}) when d_k or d_v is not given"
        )
    d_k = d_model // num_heads if d_k is None else bk.positive_int("d_k", d_k)
    d_v = d_model // num_heads if d_v is None else bk.positive_int("d_v", d_v)
    d_memory = d_model if d_memory is None else bk.positive_int("d_memory", d_memory)
    bias = bk.check_flag("bias", bias)
    seed = bk.check_seed(seed)
    xp = bk.get_namespace(xp)
    dtype = bk.resolve_dtype(xp, dtype)
    rng = np.random.default_rng(seed)
    shapes = {
        "w_q": (d_model, num_heads * d_k),
        "w_k": (d_memory, num_heads * d_k),
        "w_v": (d_memory, num_heads * d_v),
        "w_o": (num_heads * d_v, d_model),
    }
    weights = {n: xp.asarray(rng.standard_normal(s) / math.sqrt(s[0]), dtype=dtype) for n, s in shapes.items()}
    biases = {}
    if bias:
        biases = {b: xp.zeros(shapes[w][1], dtype=dtype) for w, b in zip(_WEIGHTS, _BIASES)}
    return MHAParams(num_heads=num_heads, **weights, **biases)


def _check_params(params: MHAParams, xp: ModuleType, *, x: Any = None, memory: Any = None, inputs_rule: bool = False) -> None:
    """Check the parameters' dtypes, ranks and shapes, with ``x`` (..., N, D) and ``memory``
    (..., M, Dm) when given (already checked as float arrays of rank >= 2).

    Every width appears in several places: D in x, the rows of w_q, the columns of w_o and
    b_o; Dm in memory (x for self-attention), the rows of w_k and w_v; H*K in the columns of
    w_q and w_k, b_q and b_k; H*V in the columns of w_v, the rows of w_o and b_v. Where they
    disagree, the message names the odd one out: the one place that differs from the value
    the others share (``dataclasses.replace(p, w_k=p.w_k[:7])`` names w_k, not w_v). Where
    no value has a majority (two places, one each) it names both. With ``inputs_rule``
    (the transformer block, whose widths all follow x) x's width decides D and Dm.
    """
    h = bk.positive_int("params.num_heads", params.num_heads)
    for name in _WEIGHTS:
        bk.check_float_array(f"params.{name}", getattr(params, name), xp, ndim=2)
    for name in _BIASES:
        if getattr(params, name) is not None:
            bk.check_float_array(f"params.{name}", getattr(params, name), xp, ndim=1)
    bk.check_same_dtype(**{f"params.{n}": a for n, a in params.arrays().items()})
    w_q, w_k, w_v, w_o = (tuple(getattr(params, n).shape) for n in _WEIGHTS)
    for name, shape, what in (("w_q", w_q, "(D, H*K)"), ("w_k", w_k, "(Dm, H*K)"), ("w_v", w_v, "(Dm, H*V)")):
        if 0 in shape:
            raise ValueError(
                f"params.{name} must have shape {what} with every width >= 1, got {shape}"
            )
    for name, shape in (("w_q", w_q), ("w_v", w_v)):
        if shape[1] % h:
            raise ValueError(f"params.{name} has {shape[1]} columns, not divisible by num_heads = {h}")
    source, source_name = (memory, "memory") if memory is not None else (x, "x")
    # Each place a width appears: (name, array, axis holding the width, unit); absent ones dropped.
    groups = {
        "D": [
            ("x", x, -1, "width"),
            ("params.w_q", params.w_q, 0, "rows"),
            ("params.w_o", params.w_o, 1, "columns"),
            ("params.b_o", params.b_o, 0, "entries"),
        ],
        "Dm": [
            (source_name, source, -1, "width"),
            ("params.w_k", params.w_k, 0, "rows"),
            ("params.w_v", params.w_v, 0, "rows"),
        ],
        "H*K": [
            ("params.w_q", params.w_q, 1, "columns"),
            ("params.w_k", params.w_k, 1, "columns"),
            ("params.b_q", params.b_q, 0, "entries"),
            ("params.b_k", params.b_k, 0, "entries"),
        ],
        "H*V": [
            ("params.w_v", params.w_v, 1, "columns"),
            ("params.w_o", params.w_o, 0, "rows"),
            ("params.b_v", params.b_v, 0, "entries"),
        ],
    }
    for letter, places in groups.items():
        places = [(n, a, axis, unit) for n, a, axis, unit in places if a is not None]
        _check_width(letter, places, inputs_rule and places[0][0] in ("x", "memory"))


def _axis_desc(name: str, axis: int) -> str:
    return f"{name}.shape[{axis}]"


def _check_width(letter: str, places: list, inputs_rule: bool) -> None:
    """One width (D, Dm, H*K or H*V) must be the same in every place it appears; see
    :func:`_check_params` for which place an error names."""
    sizes = [int(a.shape[axis]) for _, a, axis, _ in places]
    if len(set(sizes)) <= 1:
        return
    if inputs_rule:
        # The first place is the input (x, or memory), whose width decides.
        name0, a0, axis0, _ = places[0]
        for (name, a, axis, unit), size in zip(places[1:], sizes[1:]):
            if size != sizes[0]:
                raise ValueError(
                    f"{name} must have {letter} = {_axis_desc(name0, axis0)} = {sizes[0]} {unit}, "
                    f"got shape {bk.shape_str(a)}"
                )
    counts = {size: sizes.count(size) for size in sizes}
    top = max(counts.values())
    majority = [size for size, count in counts.items() if count == top]
    if top >= 2 and len(majority) == 1:
        value = majority[0]
        agreeing = [_axis_desc(n, axis) for (n, _, axis, _), size in zip(places, sizes) if size == value]
        like = agreeing[0] if len(agreeing) == 1 else ", ".join(agreeing[:-1]) + " and " + agreeing[-1]
        name, a, axis, unit = next(place for place, size in zip(places, sizes) if size != value)
        if name in ("x", "memory"):
            if letter == "Dm" and name == "x":
                raise ValueError(
                    f"self-attention needs params.w_k.shape[0] == params.w_v.shape[0] == d_model = "
                    f"x.shape[-1] = {int(a.shape[-1])}, got {value}; pass memory= for cross-attention"
                )
            raise ValueError(
                f"{name} must have width {letter} = {value}, like {like}: {name} has shape {bk.shape_str(a)}"
            )
        expected = list(a.shape)
        expected[axis] = value
        raise ValueError(
            f"{name} must have shape {tuple(expected)}, {letter} = {value} {unit} like {like}; "
            f"got shape {bk.shape_str(a)}"
        )
    # No majority: two places, one value each (or a tie); name them all.
    if len(places) == 2:
        (n0, a0, ax0, _), (n1, a1, ax1, _) = places
        expected = list(a1.shape)
        expected[ax1] = sizes[0]
        raise ValueError(
            f"{n1} must have shape {tuple(expected)} to match {n0} {bk.shape_str(a0)} "
            f"({letter} = {_axis_desc(n0, ax0)} = {sizes[0]}), got shape {bk.shape_str(a1)} "
            f"(one of the two is wrong)"
        )
    listing = ", ".join(f"{n} has shape {bk.shape_str(a)}" for n, a, _, _ in places)
    raise ValueError(
        f"{', '.join(_axis_desc(n, ax) for n, _, ax, _ in places)} must all be the same width {letter}: {listing}"
    )


@dataclass(frozen=True)
class _Call:
    """Checked arguments of one MHA call, cast to the compute dtype."""

    xp: ModuleType
    x: Any
    memory: Any  # None for self-attention
    params: MHAParams
    mask: Any  # broadcastable to (..., N, M), or None
    causal: bool
    batch: tuple[int, ...]  # broadcast batch dims of x, memory and mask: the output's
    dtype: Any  # the caller's dtype, results are cast back to it

    @property
    def head_mask(self) -> Any:
        """The mask with a head axis, (..., 1, N, M): one mask for every head."""
        if self.mask is None or self.mask.ndim < 2:
            return self.mask
        return self.xp.expand_dims(self.mask, axis=-3)


def _prepare(x, params, memory, mask, causal, check_finite, d_out=None) -> _Call:
    if not isinstance(params, MHAParams):
        raise TypeError(f"params must be an MHAParams, got {type(params).__name__}")
    causal = bk.check_flag("causal", causal)
    check_finite = bk.check_flag("check_finite", check_finite)
    named_params = {f"params.{n}": a for n, a in params.arrays().items()}
    xp = bk.namespace_of(x=x, memory=memory, mask=mask, d_out=d_out, **named_params)
    bk.check_float_array("x", x, xp, min_ndim=2)
    if memory is not None:
        bk.check_float_array("memory", memory, xp, min_ndim=2)
    _check_params(params, xp, x=x, memory=memory)
    params = replace(params, num_heads=int(params.num_heads))  # NumPy integers too
    bk.check_same_dtype(x=x, memory=memory, d_out=d_out, **{"params.w_q": params.w_q})
    source = x if memory is None else memory
    if mask is not None and mask.dtype != xp.bool:
        raise TypeError(f"mask must be a boolean array (True = may attend), got dtype {mask.dtype}")
    shapes = {"x": x, "memory": memory, "mask": mask}
    try:
        batch = bk.broadcast_shapes(*(bk.batch_of(a) for a in shapes.values() if a is not None))
    except ValueError:
        present = [n for n, a in shapes.items() if a is not None]
        listing = ", ".join(f"{n} has shape {bk.shape_str(shapes[n])}" for n in present)
        raise ValueError(
            f"the batch dimensions of {', '.join(present[:-1])} and {present[-1]} must broadcast: {listing}"
        ) from None
    n, m = int(x.shape[-2]), int(source.shape[-2])
    if mask is not None:
        bk.check_mask(mask, batch + (n, m), xp, target_desc="(..., N, M) =")
    if d_out is not None and tuple(d_out.shape) != batch + (n, params.d_model):
        raise ValueError(
            f"d_out must have the output's shape {batch + (n, params.d_model)}, got shape {bk.shape_str(d_out)}"
        )
    if check_finite:
        bk.check_finite(xp, x=x, memory=memory, d_out=d_out, **named_params)
    dtype = x.dtype
    work = bk.compute_dtype(xp, dtype)
    if work != dtype:
        params = replace(params, **{k: xp.astype(a, work) for k, a in params.arrays().items()})
        x = xp.astype(x, work)
        memory = None if memory is None else xp.astype(memory, work)
    return _Call(xp, x, memory, params, mask, causal, batch, dtype)


def _project(xp, x, w, b):
    """``x @ w + b`` (b may be None); the bias is added into the fresh product."""
    y = x @ w
    return y if b is None else bk.inplace(xp, "add", y, b)


def _split_heads(xp, y, num_heads: int):
    """(..., L, H*C) -> (..., H, L, C)."""
    *lead, length, width = y.shape
    y = xp.reshape(y, (*lead, length, num_heads, width // num_heads))
    axes = tuple(range(len(lead)))
    y = xp.permute_dims(y, axes + (len(lead) + 1, len(lead), len(lead) + 2))
    # Flattening forces one C-order copy: per-head matrices with a short row stride make
    # the batched products below several times faster than strided views (NumPy, torch).
    return xp.reshape(xp.reshape(y, (-1,)), (*lead, num_heads, length, width // num_heads))


def _merge_heads(xp, y):
    """(..., H, L, C) -> (..., L, H*C)."""
    *lead, h, length, width = y.shape
    axes = tuple(range(len(lead)))
    y = xp.permute_dims(y, axes + (len(lead) + 1, len(lead), len(lead) + 2))
    return xp.reshape(y, (*lead, length, h * width))


def _heads(c: _Call):
    """Projected per-head q (..., H, N, K), k (..., H, M, K), v (..., H, M, V)."""
    xp, p = c.xp, c.params
    if c.memory is None:
        # Self-attention: one (D, 2*H*K + H*V) product instead of three thinner ones.
        qkv = _project(xp, c.x, xp.concat([p.w_q, p.w_k, p.w_v], axis=1), _packed_bias(xp, p))
        hk = p.w_q.shape[1]
        q, k, v = qkv[..., :hk], qkv[..., hk : 2 * hk], qkv[..., 2 * hk :]
    else:
        q = _project(xp, c.x, p.w_q, p.b_q)
        k = _project(xp, c.memory, p.w_k, p.b_k)
        v = _project(xp, c.memory, p.w_v, p.b_v)
    return tuple(_split_heads(xp, y, p.num_heads) for y in (q, k, v))


def _packed_bias(xp, p: MHAParams):
    """b_q, b_k, b_v side by side (zeros for an absent one), or None when all are absent."""
    if p.b_q is None and p.b_k is None and p.b_v is None:
        return None
    parts = [
        xp.zeros(w.shape[1], dtype=w.dtype, device=array_api_compat.device(w)) if b is None else b
        for w, b in ((p.w_q, p.b_q), (p.w_k, p.b_k), (p.w_v, p.b_v))
    ]
    return xp.concat(parts)


def multi_head_attention(
    x: Any,
    params: MHAParams,
    *,
    memory: Any = None,
    mask: Any = None,
    causal: bool = False,
    return_weights: bool = False,
    check_finite: bool = True,
) -> Any:
    """Multi-head attention of ``x`` over itself or over ``memory``.

    Parameters
    ----------
    x : array (..., N, D)
    params : MHAParams
    memory : array (..., M, Dm), optional
        Keys and values come from here (cross-attention); default ``x`` (self-attention).
    mask : boolean array, optional
        Broadcastable to (..., N, M), True = may attend; the same for every head.
    causal : bool
        Key j allowed for query i only when j <= i.
    return_weights : bool
        Also return the per-head weights (..., H, N, M).
    check_finite : bool
        Raise ValueError on NaN or Inf in x, memory or the parameters.

    Returns
    -------
    out : array (..., N, D), or ``(out, weights)``.

    Notes
    -----
    The batch dims of x, memory and mask broadcast together (as in
    :func:`numerics.scaled_dot_product_attention`); the output and the weights have the
    broadcast ones. Lengths may be empty: N = 0 or a batch dim of 0 gives an empty output,
    M = 0 (an empty memory) leaves every query without a key, so its attention is 0 and the
    output is ``b_o`` (0 without a bias). Widths may not: D, H*K and H*V of 0 are a
    ValueError naming the parameter. Finite inputs give finite outputs (scores beyond the
    dtype's range are handled as in scaled_dot_product_attention); a result beyond the
    dtype's range is a ValueError when ``check_finite``.
    """
    return_weights = bk.check_flag("return_weights", return_weights)
    c = _prepare(x, params, memory, mask, causal, check_finite)
    joins = ("batch", "batch") if return_weights else ("batch",)
    results = _join(c, _in_slabs(c, partial(_forward, return_weights=return_weights)), joins)
    results = tuple(c.xp.astype(r, c.dtype, copy=False) for r in results)
    if check_finite:
        bk.check_result_finite(c.xp, "multi_head_attention", out=results[0])
    return results if return_weights else results[0]


def multi_head_attention_vjp(
    x: Any,
    params: MHAParams,
    *,
    memory: Any = None,
    mask: Any = None,
    causal: bool = False,
    check_finite: bool = True,
) -> tuple[Any, Callable[[Any], MHAGradients]]:
    """Forward pass that keeps what the backward pass needs: ``(out, backward)``.

    ``backward(d_out)`` returns the :class:`MHAGradients` of ``sum(d_out * out)`` without
    recomputing the forward pass (as autograd libraries do), at the cost of holding the
    per-head q, k, v, outputs and weights (..., H, N, M) until ``backward`` is dropped.
    It may be called more than once. Arguments as in :func:`multi_head_attention`.

    The gradients are those at the forward's values: ``backward`` holds its own copies of
    x, memory, mask and the parameter arrays (O(B N D) and O(D H K), small against the
    saved weights), so changing any of them in place after the forward pass changes
    nothing (autograd instead raises an error for a tensor modified in place).
    """
    c = _own_copies(_prepare(x, params, memory, mask, causal, check_finite))
    check_finite = bool(check_finite)
    per_slab = _in_slabs(c, _forward_saving)
    out = c.xp.astype(_join(c, per_slab, ("batch",))[0], c.dtype, copy=False)  # (out, saved): out only
    if check_finite:
        bk.check_result_finite(c.xp, "multi_head_attention_vjp", out=out)
    # The backward keeps only what it needs: not the per-slab outputs (already joined).
    saved, axis = [result[1] for result in per_slab.results], per_slab.axis
    del per_slab

    def backward(d_out: Any) -> MHAGradients:
        """Gradients of ``sum(d_out * out)``; d_out has the output's shape (..., N, D)."""
        _check_d_out(c, d_out, check_finite)
        d_out = c.xp.astype(d_out, c.params.w_q.dtype, copy=False)
        if axis is None:
            results = _backward_saved(saved[0], d_out)
        else:
            per_slab_grads = _parallel.map_slabs(_backward_saved_slab, [d_out], axis, c.batch, extras=saved)
            results = _join(c, _Slabs(axis, per_slab_grads), _backward_joins(c))
        return _gradients_result(c, results, check_finite)

    return out, backward


def _own_copies(c: _Call) -> _Call:
    """``c`` with copies of the caller's arrays it holds (x, memory, mask, parameters), for a
    backward pass that must see the forward's values whatever the caller does meanwhile.
    Arrays already cast to the compute dtype are copies made by ``_prepare`` and kept."""
    xp = c.xp
    if c.x.dtype != c.dtype:  # float16 / bfloat16: x, memory and params are fresh casts
        own = lambda a: a  # noqa: E731
    else:
        own = lambda a: None if a is None else xp.asarray(a, copy=True)  # noqa: E731
    mask = None if c.mask is None else xp.asarray(c.mask, copy=True)
    params = replace(c.params, **{k: own(a) for k, a in c.params.arrays().items()})
    return replace(c, x=own(c.x), memory=own(c.memory), mask=mask, params=params)


def multi_head_attention_backward(
    x: Any,
    params: MHAParams,
    d_out: Any,
    *,
    memory: Any = None,
    mask: Any = None,
    causal: bool = False,
    check_finite: bool = True,
) -> MHAGradients:
    """Gradients of ``sum(d_out * multi_head_attention(x, params, ...))``.

    ``d_out`` has the output's shape (..., N, D). Returns :class:`MHAGradients` with the
    gradient of x, of memory (None for self-attention; its share is in ``x``) and of every
    parameter (None where the bias is None). The forward pass is recomputed; use
    :func:`multi_head_attention_vjp` to keep it from a forward pass instead.
    """
    c = _prepare(x, params, memory, mask, causal, check_finite, d_out=d_out)
    d_out = c.xp.astype(d_out, c.params.w_q.dtype, copy=False)
    results = _join(c, _in_slabs(c, _backward, d_out=d_out), _backward_joins(c))
    return _gradients_result(c, results, bool(check_finite))


# ------------------------------------------------------------------ computation in one slab


@dataclass(frozen=True)
class _Saved:
    """What the backward pass needs from the forward pass of one slab (compute dtype)."""

    call: _Call  # the slab's arguments
    problem: Any  # the per-head attention problem: q (..., H, N, K), k, v
    weights: Any  # (..., H, N, M)
    heads: Any  # per-head outputs (..., H, N, V)


def _forward(c: _Call, return_weights: bool) -> tuple[Any, ...]:
    """``(out,)`` or ``(out, weights)`` in the compute dtype."""
    xp, p = c.xp, c.params
    q, k, v = _heads(c)
    attended = scaled_dot_product_attention(
        q, k, v, mask=c.head_mask, causal=c.causal, return_weights=return_weights, check_finite=False
    )
    heads, weights = attended if return_weights else (attended, None)
    out = _project(xp, _merge_heads(xp, heads), p.w_o, p.b_o)
    return (out, weights) if return_weights else (out,)


def _forward_saving(c: _Call) -> tuple[Any, _Saved]:
    """``(out, saved)``: the forward pass, keeping normalised weights for the backward pass."""
    xp, p = c.xp, c.params
    q, k, v = _heads(c)
    problem = _attention._prepare(q, k, v, c.head_mask, c.causal, None, False)
    weights, heads = _attention._run(problem, _attention._weights_and_output)
    out = _project(xp, _merge_heads(xp, heads), p.w_o, p.b_o)
    return out, _Saved(c, problem, weights, heads)


def _backward(c: _Call, d_out: Any) -> tuple[Any, ...]:
    """The forward pass recomputed, then :func:`_backward_saved`."""
    return _backward_saved(_forward_saving(c)[1], d_out)


def _backward_saved_slab(d_out: Any, saved: _Saved) -> tuple[Any, ...]:
    return _backward_saved(saved, d_out)


def _backward_saved(saved: _Saved, d_out: Any) -> tuple[Any, ...]:
    """``(dx, [d_memory,] *parameter gradients)`` in the compute dtype (absent biases left out)."""
    c, problem = saved.call, saved.problem
    xp, p = c.xp, c.params
    source = c.x if c.memory is None else c.memory
    d_heads = _split_heads(xp, d_out @ xp.matrix_transpose(p.w_o), p.num_heads)
    dq, dk, dv = _attention._run(problem, _attention._gradients, saved.weights, saved.heads, d_heads)
    # q has x's batch dims, k and v memory's: either may be fewer than the broadcast ones
    # (cross-attention), and each gradient is summed back to its own input's shape.
    dq = bk.sum_to_shape(xp, dq, tuple(problem.q.shape))
    dk, dv = (bk.sum_to_shape(xp, g, tuple(problem.k.shape)) for g in (dk, dv))
    dq, dk, dv, concat = (_merge_heads(xp, g) for g in (dq, dk, dv, saved.heads))

    d_source = dk @ xp.matrix_transpose(p.w_k) + dv @ xp.matrix_transpose(p.w_v)
    dx = dq @ xp.matrix_transpose(p.w_q)
    grads = {
        "w_q": _weight_grad(xp, c.x, dq),
        "w_k": _weight_grad(xp, source, dk),
        "w_v": _weight_grad(xp, source, dv),
        "w_o": _weight_grad(xp, concat, d_out),
    }
    for b, d in (("b_q", dq), ("b_k", dk), ("b_v", dv), ("b_o", d_out)):
        if getattr(p, b) is not None:
            grads[b] = _bias_grad(xp, d)
    if c.memory is None:
        return (bk.inplace(xp, "add", dx, d_source), *grads.values())
    return (dx, d_source, *grads.values())


def _weight_grad(xp, inputs, d_outputs):
    """sum over all leading dims of inputs^T d_outputs: (..., L, A), (..., L, C) -> (A, C)."""
    a, c = inputs.shape[-1], d_outputs.shape[-1]
    return xp.matrix_transpose(xp.reshape(inputs, (-1, a))) @ xp.reshape(d_outputs, (-1, c))


def _bias_grad(xp, d_outputs):
    return xp.sum(xp.reshape(d_outputs, (-1, d_outputs.shape[-1])), axis=0)


# ------------------------------------------------------------------ slabs and results


@dataclass(frozen=True)
class _Slabs:
    """Per-slab results of one computation, with the batch axis it was split along (None:
    computed whole, ``results`` then holds one entry)."""

    axis: int | None
    results: list[Any]


def _in_slabs(c: _Call, fn, d_out: Any = None) -> _Slabs:
    """``fn(c)`` (or ``fn(c, d_out)``), run as one batch slab per core for large NumPy problems.

    The whole layer runs inside each slab, projections included, so every product and every
    elementwise pass is spread over the cores (see numerics._parallel).
    """
    source = c.x if c.memory is None else c.memory
    full = tuple(c.x.shape[:-2]) == c.batch
    scores = math.prod(c.batch) * c.params.num_heads * c.x.shape[-2] * source.shape[-2]
    axis = _parallel.split_axis(c.xp, c.batch, scores) if full else None
    if axis is None:
        return _Slabs(None, [fn(c) if d_out is None else fn(c, d_out)])

    def slab(x, memory, mask, *rest):
        return fn(replace(c, x=x, memory=memory, mask=mask), *rest)

    arrays = [c.x, c.memory, c.mask] + ([] if d_out is None else [d_out])
    return _Slabs(axis, _parallel.map_slabs(slab, arrays, axis, c.batch))


def _join(c: _Call, slabs: _Slabs, joins: tuple[str, ...]) -> list[Any]:
    """Put each result together from the slabs, as ``joins`` says: "batch" (it has the batch
    dims: concatenate), "sum" (a partial sum, e.g. a parameter gradient), "memory" (memory's
    gradient: concatenated when memory was split, summed when shared across the split axis).
    Results beyond ``joins`` are left out."""
    if slabs.axis is None:
        return list(slabs.results[0])[: len(joins)]
    ndim = len(c.batch) + 2
    memory_split = _parallel.was_split(c.memory, slabs.axis, ndim)
    joined = []
    for how, outputs in zip(joins, zip(*slabs.results)):
        if how == "batch":
            joined.append(c.xp.concat(outputs, axis=slabs.axis))
        elif how == "memory" and memory_split:
            # memory may have fewer leading dims than the broadcast batch: its own axis.
            joined.append(c.xp.concat(outputs, axis=slabs.axis + c.memory.ndim - ndim))
        else:
            total = outputs[0]
            for part in outputs[1:]:
                total = total + part
            joined.append(total)
    return joined


def _parameter_names(p: MHAParams) -> list[str]:
    """The parameters that have gradients, in the order :func:`_backward_saved` returns them."""
    return [n for n in (*_WEIGHTS, *_BIASES) if getattr(p, n) is not None]


def _backward_joins(c: _Call) -> tuple[str, ...]:
    memory = ("memory",) if c.memory is not None else ()
    return ("batch", *memory) + ("sum",) * len(_parameter_names(c.params))


def _gradients_result(c: _Call, results: list[Any], check_finite: bool) -> MHAGradients:
    """MHAGradients from ``(dx, [d_memory,] *parameter gradients)``, in the caller's dtype;
    with ``check_finite``, a gradient beyond the dtype's range is a ValueError."""
    xp = c.xp
    names = _parameter_names(c.params)
    dx, d_memory = results[0], (results[1] if c.memory is not None else None)
    dx = bk.sum_to_shape(xp, dx, tuple(c.x.shape))
    if c.memory is not None:
        d_memory = bk.sum_to_shape(xp, d_memory, tuple(c.memory.shape))
    cast = lambda a: None if a is None else xp.astype(a, c.dtype, copy=False)  # noqa: E731
    result = MHAGradients(
        x=cast(dx),
        memory=cast(d_memory),
        params=MHAParams(num_heads=c.params.num_heads, **{n: cast(g) for n, g in zip(names, results[-len(names):])}),
    )
    if check_finite:
        grads = {"x": result.x, "memory": result.memory}
        grads.update({f"params.{n}": g for n, g in result.params.arrays().items()})
        bk.check_result_finite(xp, "multi_head_attention_backward", **grads)
    return result


def _check_d_out(c: _Call, d_out: Any, check_finite: bool) -> None:
    """The checks multi_head_attention_backward makes of d_out, for a vjp's backward."""
    bk.namespace_of(x=c.x, d_out=d_out)
    expected = c.batch + (int(c.x.shape[-2]), c.params.d_model)
    if tuple(d_out.shape) != expected:
        raise ValueError(f"d_out must have the output's shape {expected}, got shape {bk.shape_str(d_out)}")
    if d_out.dtype != c.dtype:
        raise TypeError(f"x, d_out must share one dtype: x is {c.dtype}, d_out is {d_out.dtype}")
    if check_finite:
        bk.check_finite(c.xp, d_out=d_out)
