"""Multi-head attention in the row convention of the documents, forward and backward.

Shapes: B... batch dims, N query length, M key/memory length, D model width,
Dm memory width (D for self-attention), H heads, K key/query width per head,
V value width per head.

    Q = X W_q + b_q          (..., N, H*K)    split into H heads (..., H, N, K)
    K = Mem W_k + b_k        (..., M, Hkv*K)  Mem = X for self-attention; Hkv = H unless
    V = Mem W_v + b_v        (..., M, Hkv*V)  grouped-query heads (num_kv_heads)
    Q_i, K_j = RoPE(Q_i), RoPE(K_j)           with ``rope``: every head's rows rotated
    head_i = attention(Q_i, K_{i // (H/Hkv)}, V_{i // (H/Hkv)}, bias_i)   one batched call
    MHA(X) = concat(head_1..head_H) W_o + b_o (..., N, D)

Backward is written by hand from these lines and :func:`numerics.attention_vjp`. The layer is
a forward/backward pair (:func:`_fwd` returns the output and :class:`MHAResiduals`,
:func:`_bwd` takes them and d_out and returns :class:`MHAGradients`), run in one slab per
core for large NumPy problems by the generic :func:`numerics._parallel.split`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from functools import partial
from types import ModuleType
from typing import Any, Callable, Mapping

import array_api_compat
import numpy as np

from . import _backend as bk
from . import _parallel
from ._band import check_causal, check_window
from .attention import AttentionGradients, attention_vjp, check_bias_dtype, check_softcap, scaled_dot_product_attention
from .positional import rotary_embedding, rotary_embedding_backward

__all__ = [
    "MHAParams",
    "Rope",
    "MHAGradients",
    "init_params",
    "multi_head_attention",
    "multi_head_attention_backward",
    "multi_head_attention_vjp",
]

_WEIGHTS = ("w_q", "w_k", "w_v", "w_o")
_BIASES = ("b_q", "b_k", "b_v", "b_o")
_COUNTS = ("num_heads", "num_kv_heads")  # the integer fields of MHAParams


@dataclass
class MHAParams:
    """Parameters of multi-head attention (row convention, ``Q = X @ w_q``).

    w_q (D, H*K), w_k (Dm, Hkv*K), w_v (Dm, Hkv*V), w_o (H*V, D); biases b_q (H*K,),
    b_k (Hkv*K,), b_v (Hkv*V,), b_o (D,) or None. Dm is the memory width (D for
    self-attention). H = ``num_heads`` query heads; Hkv = ``num_kv_heads`` key/value heads
    (None: Hkv = H, ordinary multi-head attention), H a multiple of Hkv: grouped-query
    attention (Hkv = 1: multi-query), query head h using key/value head h // (H / Hkv).
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
    num_kv_heads: int | None = None

    @property
    def kv_heads(self) -> int:
        """Hkv, the number of key/value heads (``num_heads`` unless ``num_kv_heads`` is set)."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

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
        return int(self.w_v.shape[1]) // self.kv_heads

    def arrays(self) -> dict[str, Any]:
        """The parameter arrays by field name, absent biases left out."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _COUNTS and getattr(self, f.name) is not None}

    def num_parameters(self) -> int:
        """Total number of scalar parameters."""
        return sum(math.prod(a.shape) for a in self.arrays().values())


@dataclass
class MHAGradients:
    """Gradients of ``sum(d_out * MHA(x, memory))``: x (..., N, D), memory (..., M, Dm) or
    None for self-attention (its gradient is folded into ``x``), params as :class:`MHAParams`,
    and bias (the additive score bias's own shape; None when no bias was given)."""

    x: Any
    memory: Any
    params: MHAParams
    bias: Any = None


_ROPE_STYLES = ("half", "interleaved")


@dataclass(frozen=True)
class Rope:
    """Rotary embedding of every head's queries and keys (``rope=`` of :func:`multi_head_attention`).

    Attributes
    ----------
    theta : float > 0
        Frequency base (pair i turns by ``pos * theta^(-2i/K)``).
    style : {"half", "interleaved"}
        "half" pairs coordinate i with i + K/2 (rotate-half: GPT-NeoX, HF Llama);
        "interleaved" pairs 2i with 2i + 1 (RoFormer, GPT-J, Meta's Llama reference code).
    positions : integer or float array (..., N), optional
        The queries' positions, broadcastable to x's batch dims + (N,). Default
        ``delta + 0 .. N-1`` with ``delta = M - N`` under ``causal="bottom_right"`` (the
        queries are the keys' last N positions, as in KV-cache decoding), else 0.
    key_positions : integer or float array (..., M), optional
        The keys' positions, broadcastable to the key source's batch dims + (M,). Default
        ``positions`` for self-attention when given, else 0 .. M-1.

    ``rope=True`` is ``Rope()``; a dict is ``Rope(**dict)``. See :func:`numerics.rotary_embedding`.
    """

    theta: float = 10000.0
    style: str = "half"
    positions: Any = None
    key_positions: Any = None


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
    num_kv_heads: int | None = None,
) -> MHAParams:
    """Random parameters: weights N(0, 1/fan_in), biases 0.

    d_k and d_v default to d_model // num_heads (d_model must then be divisible by
    num_heads); d_memory defaults to d_model. ``num_kv_heads`` (Hkv, default None: Hkv =
    num_heads) gives grouped-query attention: w_k (Dm, Hkv*K) and w_v (Dm, Hkv*V), with
    num_heads a multiple of Hkv. Drawn on the host with
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
    hkv = None if num_kv_heads is None else _check_kv_heads("num_kv_heads", num_kv_heads, num_heads, "num_heads")
    bias = bk.check_flag("bias", bias)
    seed = bk.check_seed(seed)
    xp = bk.get_namespace(xp)
    dtype = bk.resolve_dtype(xp, dtype)
    rng = np.random.default_rng(seed)
    kv = num_heads if hkv is None else hkv
    shapes = {
        "w_q": (d_model, num_heads * d_k),
        "w_k": (d_memory, kv * d_k),
        "w_v": (d_memory, kv * d_v),
        "w_o": (num_heads * d_v, d_model),
    }
    weights = {n: xp.asarray(rng.standard_normal(s) / math.sqrt(s[0]), dtype=dtype) for n, s in shapes.items()}
    biases = {}
    if bias:
        biases = {b: xp.zeros(shapes[w][1], dtype=dtype) for w, b in zip(_WEIGHTS, _BIASES)}
    return MHAParams(num_heads=num_heads, num_kv_heads=hkv, **weights, **biases)


def _check_kv_heads(name: str, value: Any, num_heads: int, heads_name: str) -> int:
    """Hkv as a positive int that divides the query heads H."""
    hkv = bk.positive_int(name, value)
    if num_heads % hkv:
        raise ValueError(
            f"{heads_name} ({num_heads}) must be a multiple of {name} ({hkv}): each key/value head "
            f"serves H / Hkv query heads"
        )
    return hkv


def _check_params(params: MHAParams, xp: ModuleType, *, x: Any = None, memory: Any = None, inputs_rule: bool = False,
                  owner: str = "params") -> None:
    """Check the parameters' dtypes, ranks and shapes, with ``x`` (..., N, D) and ``memory``
    (..., M, Dm) when given (already checked as float arrays of rank >= 2).

    Every width appears in several places: D in x, the rows of w_q, the columns of w_o and
    b_o; Dm in memory (x for self-attention), the rows of w_k and w_v; H*K in the columns of
    w_q and w_k, b_q and b_k; H*V in the columns of w_v, the rows of w_o and b_v. Where they
    disagree, the message names the odd one out: the one place that differs from the value
    the others share (``dataclasses.replace(p, w_k=p.w_k[:7])`` names w_k, not w_v). Where
    no value has a majority (two places, one each) it names both. With ``inputs_rule``
    (the transformer block, whose widths all follow x) x's width decides D and Dm.
    Messages call the parameters ``owner`` (``params.attn`` in the block: ``params.attn.w_q``).
    """
    h = bk.positive_int(f"{owner}.num_heads", params.num_heads)
    hkv = h
    if params.num_kv_heads is not None:
        hkv = _check_kv_heads(f"{owner}.num_kv_heads", params.num_kv_heads, h, f"{owner}.num_heads")
    for name in _WEIGHTS:
        bk.check_float_array(f"{owner}.{name}", getattr(params, name), xp, ndim=2)
    for name in _BIASES:
        if getattr(params, name) is not None:
            bk.check_float_array(f"{owner}.{name}", getattr(params, name), xp, ndim=1)
    bk.check_same_dtype(**{f"{owner}.{n}": a for n, a in params.arrays().items()})
    w_q, w_k, w_v, w_o = (tuple(getattr(params, n).shape) for n in _WEIGHTS)
    for name, shape, what in (("w_q", w_q, "(D, H*K)"), ("w_k", w_k, "(Dm, H*K)"), ("w_v", w_v, "(Dm, H*V)")):
        if 0 in shape:
            raise ValueError(
                f"{owner}.{name} must have shape {what} with every width >= 1, got {shape}"
            )
    divisible = [("w_q", w_q[1], h, "columns"), ("w_v", w_v[1], hkv, "columns")]
    if hkv != h:  # else w_k and w_o must equal w_q and w_v, checked below
        divisible += [("w_k", w_k[1], hkv, "columns"), ("w_o", w_o[0], h, "rows")]
    for name, size, heads, what in divisible:
        if size % heads:
            count = "num_heads" if heads == h else "num_kv_heads"
            raise ValueError(f"{owner}.{name} has {size} {what}, not divisible by {count} = {heads}")
    source, source_name = (memory, "memory") if memory is not None else (x, "x")
    # Each place a width appears: (name, array, axis holding the width, unit); absent ones dropped.
    groups = {
        "D": [
            ("x", x, -1, "width"),
            (f"{owner}.w_q", params.w_q, 0, "rows"),
            (f"{owner}.w_o", params.w_o, 1, "columns"),
            (f"{owner}.b_o", params.b_o, 0, "entries"),
        ],
        "Dm": [
            (source_name, source, -1, "width"),
            (f"{owner}.w_k", params.w_k, 0, "rows"),
            (f"{owner}.w_v", params.w_v, 0, "rows"),
        ],
        "H*K": [
            (f"{owner}.w_q", params.w_q, 1, "columns"),
            (f"{owner}.w_k", params.w_k, 1, "columns"),
            (f"{owner}.b_q", params.b_q, 0, "entries"),
            (f"{owner}.b_k", params.b_k, 0, "entries"),
        ],
        "H*V": [
            (f"{owner}.w_v", params.w_v, 1, "columns"),
            (f"{owner}.w_o", params.w_o, 0, "rows"),
            (f"{owner}.b_v", params.b_v, 0, "entries"),
        ],
    }
    if hkv != h:
        # Grouped-query heads: query-side and key/value-side widths differ by H / Hkv.
        groups["H*K"], groups["Hkv*K"] = groups["H*K"][::2], groups["H*K"][1::2]
        groups["Hkv*V"], groups["H*V"] = groups["H*V"][::2], groups["H*V"][1:2]
    for letter, places in groups.items():
        places = [(n, a, axis, unit) for n, a, axis, unit in places if a is not None]
        _check_width(letter, places, inputs_rule and places[0][0] in ("x", "memory"), owner)
    if hkv != h:
        for width, (q_name, q_size), (kv_name, kv_size) in (
            ("K", ("w_q", w_q[1]), ("w_k", w_k[1])), ("V", ("w_o", w_o[0]), ("w_v", w_v[1]))
        ):
            if q_size // h != kv_size // hkv:
                raise ValueError(
                    f"{owner}.{q_name} and {owner}.{kv_name} must have the same per-head width {width} with "
                    f"num_heads = {h} and num_kv_heads = {hkv}: {owner}.{q_name} has shape "
                    f"{bk.shape_str(getattr(params, q_name))} ({width} = {q_size // h}), {owner}.{kv_name} has "
                    f"shape {bk.shape_str(getattr(params, kv_name))} ({width} = {kv_size // hkv})"
                )


def _axis_desc(name: str, axis: int) -> str:
    return f"{name}.shape[{axis}]"


def _check_width(letter: str, places: list, inputs_rule: bool, owner: str) -> None:
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
                    f"self-attention needs {owner}.w_k.shape[0] == {owner}.w_v.shape[0] == d_model = "
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
    causal: str | None  # None, "top_left" or "bottom_right"
    batch: tuple[int, ...]  # broadcast batch dims of x, memory, mask and bias: the output's
    dtype: Any  # the caller's dtype, results are cast back to it
    bias: Any = None  # broadcastable to (..., H, N, M) (axis -3: heads), compute dtype
    window: tuple[int | None, int | None] | None = None
    softcap: float | None = None
    rope: Rope | None = None  # positions, when given, as the caller's arrays

    @property
    def head_mask(self) -> Any:
        """The mask with a head axis, (..., 1, N, M): one mask for every head."""
        if self.mask is None or self.mask.ndim < 2:
            return self.mask
        return self.xp.expand_dims(self.mask, axis=-3)

    @property
    def attention_options(self) -> dict[str, Any]:
        """The keywords of :func:`numerics.scaled_dot_product_attention` for the per-head problem."""
        return dict(mask=self.head_mask, bias=self.bias, causal=self.causal or False, window=self.window,
                    softcap=self.softcap, enable_gqa=self.params.kv_heads != self.params.num_heads)


def _resolve_rope(rope: Any) -> Rope | None:
    """``rope`` as a :class:`Rope` or None: None/False, True, a Rope or a dict of its fields."""
    if rope is None or rope is False or (isinstance(rope, np.bool_) and not rope):
        return None
    if rope is True or isinstance(rope, np.bool_):
        return Rope()
    if isinstance(rope, Mapping):
        known = {f.name for f in fields(Rope)}
        unknown = sorted(str(key) for key in rope if key not in known)
        if unknown:
            raise TypeError(f"rope got unknown keys {unknown}; it takes {sorted(known)}")
        rope = Rope(**rope)
    if not isinstance(rope, Rope):
        raise TypeError(
            f"rope must be None, a bool, a numerics.Rope or a dict of its fields (theta, style, positions, "
            f"key_positions), got {type(rope).__name__}"
        )
    if rope.style not in _ROPE_STYLES:
        raise ValueError(f"rope.style must be 'half' (rotate-half, GPT-NeoX/HF Llama) or 'interleaved' "
                         f"(RoFormer/GPT-J), got {rope.style!r}")
    theta = bk.real_number("rope.theta", rope.theta, "a real number > 0")
    if not (math.isfinite(theta) and theta > 0):
        raise ValueError(f"rope.theta must be a finite number > 0, got {rope.theta!r}")
    return replace(rope, theta=theta)


def _check_positions(xp, name: str, positions: Any, target: tuple[int, ...], desc: str) -> None:
    """Rope positions: an integer or real floating array broadcastable to ``target``."""
    if xp.isdtype(positions.dtype, "bool") or not xp.isdtype(positions.dtype, ("integral", "real floating")):
        raise TypeError(f"{name} must be an integer or real floating array, got dtype {positions.dtype}")
    try:
        ok = bk.broadcast_shapes(tuple(positions.shape), target) == target
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must broadcast to {desc} = {target}, got shape {bk.shape_str(positions)}")


def _option_arrays(bias: Any, rope: Any) -> dict[str, Any]:
    """The arrays among the options, by name, for the namespace and device check."""
    arrays = {"bias": bias}
    if isinstance(rope, (Rope, Mapping)):
        get = rope.get if isinstance(rope, Mapping) else partial(getattr, rope)
        arrays.update({f"rope.{k}": get(k, None) for k in ("positions", "key_positions")})
    return arrays


def _check_options(xp, params: MHAParams, x, source, batch, bias, causal, window, softcap, rope, check_finite,
                   owner: str = "params"):
    """The attention options, checked: ``(batch, causal, window, softcap, rope)`` with the
    batch dims of x, memory and mask (``batch``) broadcast with the bias's.

    ``bias`` must broadcast to (..., H, N, M): its axis -3 is the head axis (1 or H)."""
    causal, window = check_causal(causal), check_window(window)
    softcap = check_softcap(softcap)
    rope = _resolve_rope(rope)
    h, n, m = params.num_heads, int(x.shape[-2]), int(source.shape[-2])
    if bias is not None:
        check_bias_dtype(xp, bias, x.dtype, "x")
        try:
            batch = bk.broadcast_shapes(batch, tuple(bias.shape[:-3]))
            ok = bk.broadcast_shapes(tuple(bias.shape), batch + (h, n, m)) == batch + (h, n, m)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"bias must broadcast to (..., H, N, M) = {batch + (h, n, m)} (axis -3 is the head axis: 1 or "
                f"H = {h}; the batch dims broadcast with x's), got shape {bk.shape_str(bias)}"
            )
        if check_finite and math.prod(bias.shape):
            top = float(xp.max(bias))
            if math.isnan(top) or top == math.inf:
                raise ValueError(
                    f"bias contains NaN or +Inf (shape {bk.shape_str(bias)}); only -inf (an excluded key) is "
                    "allowed; pass check_finite=False to skip this check"
                )
    if rope is not None:
        if params.d_k % 2:
            raise ValueError(
                f"rope rotates pairs of coordinates: the per-head query/key width K must be even, got "
                f"K = {owner}.w_q.shape[1] / num_heads = {params.d_k}"
            )
        if rope.positions is not None:
            _check_positions(xp, "rope.positions", rope.positions, tuple(x.shape[:-2]) + (n,), "x's batch dims + (N,)")
        if rope.key_positions is not None:
            what = "x's" if source is x else "memory's"
            _check_positions(xp, "rope.key_positions", rope.key_positions, tuple(source.shape[:-2]) + (m,),
                             f"{what} batch dims + (M,)")
        for name in ("positions", "key_positions"):
            p = getattr(rope, name)
            if p is not None and not bool(xp.all(xp.isfinite(xp.astype(p, xp.float64)))):
                raise ValueError(f"rope.{name} contains NaN or Inf")
    return batch, causal, window, softcap, rope


def _prepare(x, params, memory, mask, causal, check_finite, d_out=None, *, bias=None, window=None, softcap=None,
             rope=None) -> _Call:
    if not isinstance(params, MHAParams):
        raise TypeError(f"params must be an MHAParams, got {type(params).__name__}")
    check_finite = bk.check_flag("check_finite", check_finite)
    named_params = {f"params.{n}": a for n, a in params.arrays().items()}
    xp = bk.namespace_of(x=x, memory=memory, mask=mask, d_out=d_out, **_option_arrays(bias, rope), **named_params)
    bk.check_float_array("x", x, xp, min_ndim=2)
    if memory is not None:
        bk.check_float_array("memory", memory, xp, min_ndim=2)
    _check_params(params, xp, x=x, memory=memory)
    params = replace(params, num_heads=int(params.num_heads),
                     num_kv_heads=None if params.num_kv_heads is None else int(params.num_kv_heads))
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
    batch, causal, window, softcap, rope = _check_options(
        xp, params, x, source, batch, bias, causal, window, softcap, rope, check_finite
    )
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
        bias = None if bias is None else xp.astype(bias, work)
    return _Call(xp, x, memory, params, mask, causal, batch, dtype, bias=bias, window=window, softcap=softcap,
                 rope=rope)


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


def _rope_positions(c: _Call) -> tuple[Any, Any]:
    """The queries' and keys' positions for the rotary embedding, with a head axis where they
    have batch dims: (..., 1, N) or (N,), and (..., 1, M) or (M,)."""
    xp, rope = c.xp, c.rope
    source = c.x if c.memory is None else c.memory
    n, m = int(c.x.shape[-2]), int(source.shape[-2])
    device = array_api_compat.device(c.x)
    queries, keys = rope.positions, rope.key_positions
    if queries is None:
        delta = m - n if c.causal == "bottom_right" else 0
        queries = xp.arange(delta, delta + n, dtype=xp.int64, device=device)
    if keys is None:
        keys = rope.positions if c.memory is None and rope.positions is not None else xp.arange(m, dtype=xp.int64, device=device)
    with_head = lambda p: xp.expand_dims(p, axis=-2) if p.ndim >= 2 else p  # noqa: E731
    return with_head(queries), with_head(keys)


def _rotated(c: _Call, q: Any, k: Any) -> tuple[Any, Any]:
    """q (..., H, N, K) and k (..., Hkv, M, K) with the rotary embedding (unchanged without rope)."""
    if c.rope is None:
        return q, k
    q_pos, k_pos = _rope_positions(c)
    style, theta = c.rope.style, c.rope.theta
    return rotary_embedding(q, q_pos, theta=theta, style=style), rotary_embedding(k, k_pos, theta=theta, style=style)


def _rotated_back(c: _Call, dq: Any, dk: Any) -> tuple[Any, Any]:
    """The gradients of q and k before the rotary embedding (the rotation's transpose)."""
    if c.rope is None:
        return dq, dk
    q_pos, k_pos = _rope_positions(c)
    style, theta = c.rope.style, c.rope.theta
    return (rotary_embedding_backward(dq, q_pos, theta=theta, style=style),
            rotary_embedding_backward(dk, k_pos, theta=theta, style=style))


def _heads(c: _Call):
    """Projected per-head q (..., H, N, K), k (..., Hkv, M, K), v (..., Hkv, M, V); q and k
    rotated when ``rope`` is set."""
    xp, p = c.xp, c.params
    if c.memory is None:
        # Self-attention: one (D, H*K + Hkv*(K + V)) product instead of three thinner ones.
        qkv = _project(xp, c.x, xp.concat([p.w_q, p.w_k, p.w_v], axis=1), _packed_bias(xp, p))
        hq, hk = p.w_q.shape[1], p.w_k.shape[1]
        q, k, v = qkv[..., :hq], qkv[..., hq : hq + hk], qkv[..., hq + hk :]
    else:
        q = _project(xp, c.x, p.w_q, p.b_q)
        k = _project(xp, c.memory, p.w_k, p.b_k)
        v = _project(xp, c.memory, p.w_v, p.b_v)
    q = _split_heads(xp, q, p.num_heads)
    k, v = (_split_heads(xp, y, p.kv_heads) for y in (k, v))
    return (*_rotated(c, q, k), v)


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
    bias: Any = None,
    causal: bool | str = False,
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    rope: Any = None,
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
    bias : float array, optional
        Added to every head's scores, broadcastable to (..., H, N, M): axis -3 is the head
        axis (1 or H), so ALiBi's (H, N, M) (:func:`numerics.alibi_bias`) gives each head its
        own bias and an (N, M) one is shared; -inf entries exclude the key. x's dtype.
    causal : bool or {"top_left", "bottom_right"}
        True is "top_left": key j allowed for query i only when j <= i; "bottom_right":
        when j <= i + M - N (KV-cache decoding).
    window : (left, right), optional
        Sliding window, as in :func:`numerics.scaled_dot_product_attention`.
    softcap : float > 0, optional
        Every head's scores ``s -> c tanh(s / c)`` (after the scale, before bias and masks).
    rope : None, bool, Rope or dict, optional
        Rotary embedding of every head's queries and keys after the projections (values are
        not rotated): True for the defaults (theta 10000, style "half", positions 0..N-1),
        or a :class:`Rope` (or a dict of its fields: theta, style, positions,
        key_positions). Needs an even K.
    return_weights : bool
        Also return the per-head weights (..., H, N, M).
    check_finite : bool
        Raise ValueError on NaN or Inf in x, memory or the parameters.

    Returns
    -------
    out : array (..., N, D), or ``(out, weights)``.

    Notes
    -----
    Grouped-query heads come from the parameters (``params.num_kv_heads``): query head h
    uses key/value head h // (H / Hkv) (torch's enable_gqa order), K and V never repeated.
    The order of the options is that of scaled_dot_product_attention: scale -> softcap ->
    bias -> masks (mask, causal, window) -> softmax.

    The batch dims of x, memory, mask and bias broadcast together (as in
    :func:`numerics.scaled_dot_product_attention`); the output and the weights have the
    broadcast ones. Lengths may be empty: N = 0 or a batch dim of 0 gives an empty output,
    M = 0 (an empty memory) leaves every query without a key, so its attention is 0 and the
    output is ``b_o`` (0 without a bias). Widths may not: D, H*K and H*V of 0 are a
    ValueError naming the parameter. Finite inputs give finite outputs (scores beyond the
    dtype's range are handled as in scaled_dot_product_attention); a result beyond the
    dtype's range is a ValueError when ``check_finite``.
    """
    return_weights = bk.check_flag("return_weights", return_weights)
    c = _prepare(x, params, memory, mask, causal, check_finite, bias=bias, window=window, softcap=softcap, rope=rope)
    results = _in_slabs(c, partial(_forward, return_weights=return_weights), _plan(c), join=_parallel.concatenated)
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
    bias: Any = None,
    causal: bool | str = False,
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    rope: Any = None,
    check_finite: bool = True,
) -> tuple[Any, Callable[[Any], MHAGradients]]:
    """Forward pass that keeps what the backward pass needs: ``(out, backward)``.

    ``backward(d_out)`` returns the :class:`MHAGradients` of ``sum(d_out * out)`` without
    recomputing the forward pass (as autograd libraries do), at the cost of holding the
    per-head q, k, v, outputs and weights (..., H, N, M) until ``backward`` is dropped.
    Long sequences (per slab more than ``numerics.attention.SAVED_WEIGHTS_MAX`` scores, on
    the tiled path) keep no weights: the backward recomputes them tile by tile, in memory
    linear in N and M (see :func:`numerics.attention_vjp`). It may be called more than
    once. Arguments as in :func:`multi_head_attention`.

    The gradients are those at the forward's values: ``backward`` holds its own copies of
    x, memory, mask and the parameter arrays (O(B N D) and O(D H K), small against the
    saved weights), so changing any of them in place after the forward pass changes
    nothing (autograd instead raises an error for a tensor modified in place).
    """
    c = _own_copies(_prepare(x, params, memory, mask, causal, check_finite, bias=bias, window=window,
                             softcap=softcap, rope=rope))
    check_finite = bool(check_finite)
    cut = _plan(c)
    out, residuals = _in_slabs(c, _fwd, cut, join=_parallel.with_residuals)
    out = c.xp.astype(out, c.dtype, copy=False)
    if check_finite:
        bk.check_result_finite(c.xp, "multi_head_attention_vjp", out=out)

    def backward(d_out: Any) -> MHAGradients:
        """Gradients of ``sum(d_out * out)``; d_out has the output's shape (..., N, D)."""
        bk.check_upstream(d_out, like=("x", c.x), shape=tuple(out.shape), dtype=c.dtype, finite=check_finite)
        d_out = c.xp.astype(d_out, c.params.w_q.dtype, copy=False)
        grads = _parallel.split(_bwd, {"d_out": d_out}, cut, join=_parallel.like_inputs, extras=residuals)
        return _result(c, grads, check_finite)

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
    copy = lambda a: None if a is None else xp.asarray(a, copy=True)  # noqa: E731
    params = replace(c.params, **{k: own(a) for k, a in c.params.arrays().items()})
    rope = c.rope if c.rope is None else replace(c.rope, positions=copy(c.rope.positions),
                                                   key_positions=copy(c.rope.key_positions))
    return replace(c, x=own(c.x), memory=own(c.memory), mask=copy(c.mask), params=params, bias=own(c.bias),
                   rope=rope)


def multi_head_attention_backward(
    x: Any,
    params: MHAParams,
    d_out: Any,
    *,
    memory: Any = None,
    mask: Any = None,
    bias: Any = None,
    causal: bool | str = False,
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    rope: Any = None,
    check_finite: bool = True,
) -> MHAGradients:
    """Gradients of ``sum(d_out * multi_head_attention(x, params, ...))``.

    ``d_out`` has the output's shape (..., N, D). Returns :class:`MHAGradients` with the
    gradient of x, of memory (None for self-attention; its share is in ``x``), of every
    parameter (None where the bias is None) and of ``bias`` (its own shape, 0 where it is
    -inf or masked; None without a bias). Through ``rope`` the gradients of q and k are
    rotated back (the rotation's transpose). The forward pass is recomputed (its weights
    held only during the call, or for long sequences never formed: see
    :func:`multi_head_attention_vjp`); use :func:`multi_head_attention_vjp` to keep it from
    a forward pass instead.
    """
    c = _prepare(x, params, memory, mask, causal, check_finite, d_out=d_out, bias=bias, window=window,
                 softcap=softcap, rope=rope)
    d_out = c.xp.astype(d_out, c.params.w_q.dtype, copy=False)
    grads = _in_slabs(c, _backward, _plan(c), join=_parallel.like_inputs, d_out=d_out)
    return _result(c, grads, bool(check_finite))


# ------------------------------------------------------------------ the layer's forward/backward pair


@dataclass(frozen=True)
class MHAResiduals:
    """What the backward pass needs from the forward pass of one slab (compute dtype)."""

    call: _Call  # the slab's arguments
    heads: Any  # per-head outputs (..., H, N, V), the input of the output projection
    attention: Callable[[Any], AttentionGradients]  # the per-head attention's backward (attention_vjp)


def _forward(c: _Call, return_weights: bool) -> tuple[Any, ...]:
    """``(out,)`` or ``(out, weights)`` in the compute dtype."""
    xp, p = c.xp, c.params
    q, k, v = _heads(c)
    attended = scaled_dot_product_attention(
        q, k, v, **c.attention_options, return_weights=return_weights, check_finite=False
    )
    heads, weights = attended if return_weights else (attended, None)
    out = _project(xp, _merge_heads(xp, heads), p.w_o, p.b_o)
    return (out, weights) if return_weights else (out,)


def _fwd(c: _Call) -> tuple[Any, MHAResiduals]:
    """``(out, residuals)``: the forward pass, keeping what the backward pass needs (the
    attention keeps its weights, or on the tiled path of long sequences only q, k and v)."""
    xp, p = c.xp, c.params
    heads, attention_backward = attention_vjp(*_heads(c), **c.attention_options, check_finite=False)
    out = _project(xp, _merge_heads(xp, heads), p.w_o, p.b_o)
    return out, MHAResiduals(c, heads, attention_backward)


def _bwd(res: MHAResiduals, d_out: Any) -> MHAGradients:
    """The gradients of ``sum(d_out * out)`` in the compute dtype, with the slab's shapes
    (memory None for self-attention: its share is in x)."""
    c = res.call
    xp, p = c.xp, c.params
    source = c.x if c.memory is None else c.memory
    # Each per-head gradient comes with its input's shape: q x's batch dims, k and v memory's
    # (summed over each group's query heads with grouped heads), bias its own.
    g = res.attention(_split_heads(xp, d_out @ xp.matrix_transpose(p.w_o), p.num_heads))
    dq, dk = _rotated_back(c, g.q, g.k)
    dq, dk, dv, concat = (_merge_heads(xp, a) for a in (dq, dk, g.v, res.heads))
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
    params = MHAParams(num_heads=p.num_heads, num_kv_heads=p.num_kv_heads, **grads)
    if c.memory is None:
        return MHAGradients(x=bk.inplace(xp, "add", dx, d_source), memory=None, params=params, bias=g.bias)
    return MHAGradients(x=dx, memory=d_source, params=params, bias=g.bias)


def _backward(c: _Call, d_out: Any) -> MHAGradients:
    """The forward pass recomputed, then :func:`_bwd`."""
    return _bwd(_fwd(c)[1], d_out)


def _weight_grad(xp, inputs, d_outputs):
    """sum over all leading dims of inputs^T d_outputs: (..., L, A), (..., L, C) -> (A, C)."""
    a, c = inputs.shape[-1], d_outputs.shape[-1]
    return xp.matrix_transpose(xp.reshape(inputs, (-1, a))) @ xp.reshape(d_outputs, (-1, c))


def _bias_grad(xp, d_outputs):
    return xp.sum(xp.reshape(d_outputs, (-1, d_outputs.shape[-1])), axis=0)


# ------------------------------------------------------------------ slabs and results

# The cut inputs' trailing non-batch axes, where not 2: the bias (..., H, N, M), the rope
# positions (..., L).
_TAILS = {"bias": 3, "positions": 1, "key_positions": 1}


def _inputs(c: _Call) -> dict[str, Any]:
    """The arrays of ``c`` with batch dims, by name: what a slab gets its part of."""
    rope = c.rope
    return dict(x=c.x, memory=c.memory, mask=c.mask, bias=c.bias, positions=None if rope is None else rope.positions,
                key_positions=None if rope is None else rope.key_positions)


def _plan(c: _Call) -> _parallel.Cut | None:
    """How to cut ``c`` into one batch slab per core (None: run whole). The whole layer runs
    inside each slab, projections included, so every product and every elementwise pass is
    spread over the cores (see numerics._parallel)."""
    source = c.x if c.memory is None else c.memory
    if tuple(c.x.shape[:-2]) != c.batch:  # x broadcast along a batch dim: run whole
        return None
    scores = math.prod(c.batch) * c.params.num_heads * c.x.shape[-2] * source.shape[-2]
    return _parallel.plan(c.xp, c.batch, scores, _inputs(c), _TAILS)


def _in_slabs(c: _Call, fn, cut: _parallel.Cut | None, *, join, **more: Any) -> Any:
    """``fn(slab_call, **more)`` in the slabs of ``cut``, joined by ``join`` (see
    :func:`numerics._parallel.split`); ``more`` holds arrays with the output's batch dims."""

    def slab(x, memory, mask, bias, positions, key_positions, **rest):
        rope = c.rope if c.rope is None else replace(c.rope, positions=positions, key_positions=key_positions)
        return fn(replace(c, x=x, memory=memory, mask=mask, bias=bias, rope=rope), **rest)

    return _parallel.split(slab, {**_inputs(c), **more}, cut, join=join)


def _result(c: _Call, grads: MHAGradients, check_finite: bool) -> MHAGradients:
    """``grads`` in the caller's dtype; with ``check_finite``, a gradient beyond the dtype's
    range is a ValueError."""
    xp = c.xp
    cast = lambda a: None if a is None else xp.astype(a, c.dtype, copy=False)  # noqa: E731
    params = replace(grads.params, **{n: cast(g) for n, g in grads.params.arrays().items()})
    result = MHAGradients(x=cast(grads.x), memory=cast(grads.memory), params=params, bias=cast(grads.bias))
    if check_finite:
        named = {"x": result.x, "memory": result.memory, "bias": result.bias}
        named.update({f"params.{n}": g for n, g in result.params.arrays().items()})
        bk.check_result_finite(xp, "multi_head_attention_backward", **named)
    return result
