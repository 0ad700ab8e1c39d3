"""The transformer encoder block, forward and hand-written backward.

Shapes use the package glossary: B... batch dims, N sequence length, D model width,
H heads, K key/query width per head, V value width per head, F feed-forward width.
Row-vector convention, as the documents write it. With MHA = :func:`numerics.multi_head_attention`
(self-attention), LN1/LN2 = :func:`numerics.layer_norm` with their own gain and bias, and
FFN = :func:`numerics.feed_forward`::

    post-LN (norm="post", the original Transformer; seed 003, Teorema 1):
        T1 = MHA(X);  T2 = X + T1;  T3 = LN1(T2);  T4 = FFN(T3);  T5 = T3 + T4;  H = LN2(T5)

    pre-LN (norm="pre"):
        T = X + MHA(LN1(X));  H = T + FFN(LN2(T))          (no final layer norm)

These are exactly ``torch.nn.TransformerEncoderLayer`` with ``dropout=0``,
``activation="gelu"`` (or the tanh GELU), ``norm_first=False`` / ``True``, in eval mode.

The block is a forward/backward pair, as each of its sub-layers is: the forward pass keeps
each sub-layer's backward (:func:`numerics.multi_head_attention_vjp`,
:func:`numerics.layer_norm_vjp`, :func:`numerics.feed_forward_vjp`: their forward values
kept, not recomputed) in :class:`BlockResiduals`, and the backward pass is a short reverse
pass over them, by the chain rule through the lines above (no automatic differentiation).
float16 / bfloat16 inputs are cast once to float32, the whole block is computed in float32,
and every result is rounded once back to the input's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any, Callable

import numpy as np

from . import _backend as bk
from . import layers as _layers
from . import multihead as _multihead
from .layers import FFNGradients, FFNParams, LayerNormGradients, feed_forward, feed_forward_vjp, init_ffn_params
from .layers import layer_norm, layer_norm_vjp
from .multihead import MHAGradients, MHAParams, init_params, multi_head_attention, multi_head_attention_vjp

__all__ = ["BlockParams", "BlockGradients", "init_block_params", "transformer_block", "transformer_block_backward"]

_NORMS = ("post", "pre")
_LN_FIELDS = ("ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta")
_FFN_FIELDS = ("w1", "b1", "w2", "b2")


@dataclass
class BlockParams:
    """Parameters of one transformer encoder block.

    Attributes
    ----------
    attn : MHAParams
        Self-attention: w_q (D, H*K), w_k (D, H*K), w_v (D, H*V), w_o (H*V, D), biases or None.
    ffn : FFNParams
        w1 (D, F), b1 (F,) or None, w2 (F, D), b2 (D,) or None.
    ln1_gamma, ln1_beta, ln2_gamma, ln2_beta : array (D,) or None
        Gains and biases of the two layer norms; None means gain 1 / bias 0. LN1 is the
        norm after (post-LN) or before (pre-LN) the attention sub-layer, LN2 the one of the
        feed-forward sub-layer (torch's ``norm1`` and ``norm2``).

    The same class holds gradients (:func:`transformer_block_backward`), with None where
    the parameter is None.
    """

    attn: MHAParams
    ffn: FFNParams
    ln1_gamma: Any = None
    ln1_beta: Any = None
    ln2_gamma: Any = None
    ln2_beta: Any = None

    @property
    def d_model(self) -> int:
        """D, the model width."""
        return self.attn.d_model

    @property
    def num_heads(self) -> int:
        """H, the number of attention heads."""
        return self.attn.num_heads

    @property
    def d_ff(self) -> int:
        """F, the feed-forward hidden width."""
        return self.ffn.d_ff

    def arrays(self) -> dict[str, Any]:
        """Every parameter array by dotted name (``attn.w_q``, ``ffn.w1``, ``ln1_gamma`` ...),
        absent (None) ones left out: the names of :func:`numerics.reference.param_arrays`."""
        out = {f"attn.{n}": a for n, a in self.attn.arrays().items()}
        out.update({f"ffn.{n}": getattr(self.ffn, n) for n in _FFN_FIELDS if getattr(self.ffn, n) is not None})
        out.update({n: getattr(self, n) for n in _LN_FIELDS if getattr(self, n) is not None})
        return out

    def num_parameters(self) -> int:
        """Total number of scalar parameters."""
        return sum(math.prod(a.shape) for a in self.arrays().values())


@dataclass
class BlockGradients:
    """Gradients of ``sum(d_out * transformer_block(x, params, ...))``.

    Attributes
    ----------
    x : array (..., N, D)
    params : BlockParams
        Gradient of every parameter, with the parameter's shape; None where it is None.
    bias : array or None
        Gradient of the attention's additive ``bias`` (its own shape); None without one.
    """

    x: Any
    params: BlockParams
    bias: Any = None  # the attention bias's gradient (its own shape), None without a bias


def init_block_params(
    d_model: int,
    num_heads: int,
    d_ff: int,
    *,
    bias: bool = True,
    dtype: Any = None,
    xp: ModuleType | str = "numpy",
    seed: int = 0,
    noise: float = 0.0,
    num_kv_heads: int | None = None,
) -> BlockParams:
    """Random :class:`BlockParams` for width D = ``d_model``, H = ``num_heads``, F = ``d_ff``.

    The attention weights come from :func:`numerics.init_params` (N(0, 1/fan_in), K = V =
    D / H, biases 0) and the feed-forward network from :func:`numerics.init_ffn_params`
    (weights and biases N(0, 1/fan_in)); the layer-norm gains are 1 and their biases 0,
    as in PyTorch. ``bias=False`` leaves every bias None (attention, feed-forward and
    layer-norm biases, like torch's ``bias=False``); the gains stay. ``num_kv_heads``
    (default None: as many as ``num_heads``) gives grouped-query attention, as in
    :func:`numerics.init_params`.

    ``noise > 0`` is for tests: the values that are otherwise constants are drawn near them,
    gains ``1 + noise * N(0, 1)`` and the layer-norm and attention biases ``noise * N(0, 1)``,
    so that every parameter takes part (a gain of exactly 1 and biases of exactly 0 hide
    transpositions, swaps and dropped terms). ``noise`` is a real, finite number >= 0 (a
    bool or a string is a TypeError); one so large that a drawn value is beyond ``dtype``'s
    range is a ValueError naming noise.

    Values are drawn on the host in float64 from ``numpy.random.SeedSequence(seed)`` (one
    independent child stream for each of attention, feed-forward and the extra values),
    then put on namespace ``xp`` (a module or its name) and cast to ``dtype`` (default
    float64; a dtype of ``xp`` or its name): the same seed gives the same values on every
    namespace. ``seed`` is a non-negative integer and ``bias`` a bool (Python or NumPy);
    anything else is an error naming the argument.
    """
    d_model, num_heads, d_ff = (
        bk.positive_int(n, v) for n, v in (("d_model", d_model), ("num_heads", num_heads), ("d_ff", d_ff))
    )
    if d_model % num_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
    noise = _layers._check_non_negative_real("noise", noise)
    bias = bk.check_flag("bias", bias)
    seed = bk.check_seed(seed)
    xp = bk.get_namespace(xp)
    dtype = bk.resolve_dtype(xp, dtype)
    attn_seq, ffn_seq, extra_seq = np.random.SeedSequence(seed).spawn(3)
    attn = init_params(
        d_model, num_heads, bias=bias, dtype=dtype, xp=xp, seed=int(attn_seq.generate_state(1)[0]),
        num_kv_heads=num_kv_heads,
    )
    ffn = init_ffn_params(d_model, d_ff, bias=bias, dtype=dtype, xp=xp, seed=int(ffn_seq.generate_state(1)[0]))
    rng = np.random.default_rng(extra_seq)

    def put(a: np.ndarray) -> Any:
        return xp.astype(xp.asarray(a), dtype)

    def near(name: str, value: float, shape: tuple[int, ...]) -> Any:
        if not noise:
            return put(np.full(shape, value))
        with np.errstate(over="ignore"):
            drawn = put(value + noise * rng.standard_normal(shape))
        if not bool(xp.all(xp.isfinite(drawn))):
            raise ValueError(
                f"noise = {noise!r} is too large: {name} = {value} + noise * N(0, 1) overflows {getattr(dtype, '__name__', dtype)}; "
                "pass a smaller noise"
            )
        return drawn

    if bias:
        attn = replace(attn, **{n: near(f"attn.{n}", 0.0, tuple(getattr(attn, n).shape)) for n in ("b_q", "b_k", "b_v", "b_o")})
    ln = {
        "ln1_gamma": near("ln1_gamma", 1.0, (d_model,)),
        "ln1_beta": near("ln1_beta", 0.0, (d_model,)) if bias else None,
        "ln2_gamma": near("ln2_gamma", 1.0, (d_model,)),
        "ln2_beta": near("ln2_beta", 0.0, (d_model,)) if bias else None,
    }
    return BlockParams(attn=attn, ffn=ffn, **ln)


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class _Call:
    """Checked arguments of one block call, cast to the compute dtype."""

    xp: ModuleType
    x: Any
    params: BlockParams
    mask: Any
    causal: str | None
    norm: str
    approximate: str
    eps: float
    dtype: Any  # the caller's dtype; results are cast back to it
    options: dict = field(default_factory=dict)  # bias, window, softcap, rope for the attention


def _prepare(x, params, mask, causal, norm, approximate, eps, check_finite, d_out=None, *, bias=None, window=None,
             softcap=None, rope=None) -> _Call:
    if not isinstance(params, BlockParams):
        raise TypeError(f"params must be a BlockParams, got {type(params).__name__}")
    if not isinstance(params.attn, MHAParams):
        raise TypeError(f"params.attn must be an MHAParams, got {type(params.attn).__name__}")
    if not isinstance(params.ffn, FFNParams):
        raise TypeError(f"params.ffn must be an FFNParams, got {type(params.ffn).__name__}")
    if not isinstance(norm, str) or norm not in _NORMS:
        raise ValueError(f"norm must be 'post' or 'pre', got {norm!r}")
    approximate = _layers._check_approximate(approximate)
    eps = _layers._check_eps(eps)
    check_finite = bk.check_flag("check_finite", check_finite)
    named = {f"params.{n}": a for n, a in params.arrays().items()}
    xp = bk.namespace_of(x=x, mask=mask, d_out=d_out, **_multihead._option_arrays(bias, rope), **named)
    bk.check_float_array("x", x, xp, min_ndim=2)
    d, n = int(x.shape[-1]), int(x.shape[-2])
    if d == 0:
        raise ValueError(f"x must have a non-empty width D, got shape {bk.shape_str(x)}")
    # The sub-layers' own checks, naming the block's arguments; x's width D decides the
    # attention's D and Dm (self-attention), as it does every other width here.
    _multihead._check_params(params.attn, xp, x=x, inputs_rule=True, owner="params.attn")
    _layers._check_ffn_params(params.ffn, xp, d, owner="params.ffn")
    for name in _LN_FIELDS:
        a = getattr(params, name)
        if a is not None:
            bk.check_float_array(f"params.{name}", a, xp, ndim=1)
            if tuple(a.shape) != (d,):
                raise ValueError(f"params.{name} must have shape (D,) with D = x.shape[-1] = {d}, got {bk.shape_str(a)}")
    if d_out is not None:
        bk.check_float_array("d_out", d_out, xp)
        if tuple(d_out.shape) != tuple(x.shape):
            raise ValueError(
                f"d_out must have the output's shape, which is x's shape {bk.shape_str(x)}, "
                f"got shape {bk.shape_str(d_out)}"
            )
    bk.check_same_dtype(x=x, d_out=d_out, **named)
    if mask is not None:
        bk.check_mask(mask, tuple(int(s) for s in x.shape[:-2]) + (n, n), xp, target_desc="(..., N, N) =")
    batch = tuple(int(s) for s in x.shape[:-2])
    # The attention's own checks of its options; the residual stream keeps x's shape, so
    # the bias may not add batch dims.
    with_bias, causal, window, softcap, rope = _multihead._check_options(
        xp, params.attn, x, x, batch, bias, causal, window, softcap, rope, check_finite, owner="params.attn"
    )
    if with_bias != batch:
        h = params.attn.num_heads
        raise ValueError(
            f"bias must broadcast to (..., H, N, N) = {batch + (h, n, n)} with x's batch dims {batch} (the block's "
            f"output keeps x's shape), got shape {bk.shape_str(bias)}"
        )
    if check_finite:
        bk.check_finite(xp, x=x, d_out=d_out, **named)
    dtype = x.dtype
    work = bk.compute_dtype(xp, dtype)
    if work != dtype:
        cast = lambda a: None if a is None else xp.astype(a, work)  # noqa: E731
        params = BlockParams(
            attn=replace(params.attn, **{k: cast(a) for k, a in params.attn.arrays().items()}),
            ffn=FFNParams(*(cast(getattr(params.ffn, k)) for k in _FFN_FIELDS)),
            **{k: cast(getattr(params, k)) for k in _LN_FIELDS},
        )
        x = cast(x)
        bias = cast(bias)
    options = dict(bias=bias, window=window, softcap=softcap, rope=rope)
    return _Call(xp, x, params, mask, causal, norm, approximate, eps, dtype, options)


# --------------------------------------------------------------------------- sub-layers
# Inputs are checked once in _prepare; the sub-layers skip the finiteness scan.


def _mha(c: _Call, u: Any, vjp: bool = False) -> Any:
    """MHA(u), or with ``vjp`` ``(MHA(u), its backward)``."""
    fn = multi_head_attention_vjp if vjp else multi_head_attention
    return fn(u, c.params.attn, mask=c.mask, causal=c.causal or False, check_finite=False, **c.options)


def _ln(c: _Call, which: int, u: Any, vjp: bool = False) -> Any:
    """LN1(u) or LN2(u), or with ``vjp`` ``(LN(u), its backward)``."""
    p = c.params
    gamma, beta = (p.ln1_gamma, p.ln1_beta) if which == 1 else (p.ln2_gamma, p.ln2_beta)
    return (layer_norm_vjp if vjp else layer_norm)(u, gamma, beta, eps=c.eps, check_finite=False)


def _ffn(c: _Call, u: Any, vjp: bool = False) -> Any:
    """FFN(u), or with ``vjp`` ``(FFN(u), its backward)``."""
    return (feed_forward_vjp if vjp else feed_forward)(u, c.params.ffn, approximate=c.approximate, check_finite=False)


def _forward(c: _Call) -> Any:
    x = c.x
    if c.norm == "post":
        t3 = _ln(c, 1, x + _mha(c, x))
        return _ln(c, 2, t3 + _ffn(c, t3))
    t = x + _mha(c, _ln(c, 1, x))
    return t + _ffn(c, _ln(c, 2, t))


@dataclass(frozen=True)
class BlockResiduals:
    """What the block's backward needs from its forward: each sub-layer's backward, its
    forward values kept (compute dtype)."""

    call: _Call
    mha: Callable[[Any], MHAGradients]
    ln1: Callable[[Any], LayerNormGradients]
    ffn: Callable[[Any], FFNGradients]
    ln2: Callable[[Any], LayerNormGradients]


def _fwd(c: _Call) -> tuple[Any, BlockResiduals]:
    """``(H, residuals)`` in the compute dtype."""
    x = c.x
    if c.norm == "post":
        # T2 = X + MHA(X);  T3 = LN1(T2);  T5 = T3 + FFN(T3);  H = LN2(T5)
        t1, mha = _mha(c, x, vjp=True)
        t3, ln1 = _ln(c, 1, x + t1, vjp=True)
        t4, ffn = _ffn(c, t3, vjp=True)
        h, ln2 = _ln(c, 2, t3 + t4, vjp=True)
    else:
        # T = X + MHA(LN1(X));  H = T + FFN(LN2(T))
        u, ln1 = _ln(c, 1, x, vjp=True)
        t1, mha = _mha(c, u, vjp=True)
        t = x + t1
        v, ln2 = _ln(c, 2, t, vjp=True)
        t4, ffn = _ffn(c, v, vjp=True)
        h = t + t4
    return h, BlockResiduals(c, mha, ln1, ffn, ln2)


def _bwd(res: BlockResiduals, d_h: Any) -> BlockGradients:
    """The reverse pass over the sub-layers; gradients in the caller's dtype."""
    c = res.call
    if c.norm == "post":
        g_ln2 = res.ln2(d_h)  # dT5
        g_ffn = res.ffn(g_ln2.x)  # dT3 = dT5 + FFN'(T3)[dT5]
        g_ln1 = res.ln1(g_ln2.x + g_ffn.x)  # dT2
        g_mha = res.mha(g_ln1.x)
        dx = g_ln1.x + g_mha.x  # dX = dT2 + MHA'(X)[dT2]
    else:
        g_ffn = res.ffn(d_h)
        g_ln2 = res.ln2(g_ffn.x)
        d_t = d_h + g_ln2.x  # dT = dH + LN2'(T)[FFN'(V)[dH]]
        g_mha = res.mha(d_t)
        g_ln1 = res.ln1(g_mha.x)
        dx = d_t + g_ln1.x  # dX = dT + LN1'(X)[MHA'(U)[dT]]
    xp, dtype = c.xp, c.dtype
    cast = lambda a: None if a is None else xp.astype(a, dtype, copy=False)  # noqa: E731
    attn, ffn = g_mha.params, g_ffn.params
    return BlockGradients(
        bias=cast(g_mha.bias),
        x=cast(dx),
        params=BlockParams(
            attn=replace(attn, **{k: cast(a) for k, a in attn.arrays().items()}),
            ffn=FFNParams(*(cast(getattr(ffn, k)) for k in _FFN_FIELDS)),
            ln1_gamma=cast(g_ln1.gamma),
            ln1_beta=cast(g_ln1.beta),
            ln2_gamma=cast(g_ln2.gamma),
            ln2_beta=cast(g_ln2.beta),
        ),
    )


# --------------------------------------------------------------------------- API


def transformer_block(
    x: Any,
    params: BlockParams,
    *,
    norm: str = "post",
    mask: Any = None,
    causal: bool | str = False,
    bias: Any = None,
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    rope: Any = None,
    approximate: str = "none",
    eps: float = 1e-5,
    check_finite: bool = True,
) -> Any:
    """One transformer encoder block: self-attention and feed-forward sub-layers with
    residual connections and two layer norms.

    Parameters
    ----------
    x : array (..., N, D)
        Real floating.
    params : BlockParams
        Same dtype and namespace as ``x``; attention with D = ``x.shape[-1]`` rows in w_q
        and w_k, feed-forward with w1 (D, F), layer-norm parameters (D,) or None.
    norm : {"post", "pre"}
        ``"post"``: ``T3 = LN1(X + MHA(X))``, ``H = LN2(T3 + FFN(T3))``.
        ``"pre"``: ``T = X + MHA(LN1(X))``, ``H = T + FFN(LN2(T))`` (no final layer norm).
    mask : boolean array, optional
        Broadcastable to x's (..., N, N), True = may attend, the same for every head. A query
        with no allowed key gets attention output 0 (its attention sub-layer adds only
        ``b_o``), never NaN. Unlike in :func:`numerics.multi_head_attention` the mask may not
        add batch dims of its own: the residual stream keeps x's shape.
    causal : bool or {"top_left", "bottom_right"}
        Token j visible to token i only when j <= i (combined with ``mask`` by AND); with
        self-attention N = M, so the two alignments agree.
    bias, window, softcap, rope
        The attention options, passed to :func:`numerics.multi_head_attention`: an
        additive score bias broadcastable to (..., H, N, N) (axis -3 the heads, e.g.
        :func:`numerics.alibi_bias`; no batch dims beyond x's), a sliding window
        (left, right), a softcap c > 0, a rotary embedding of every head's queries and keys
        (True, a :class:`numerics.Rope` or a dict of its fields). Grouped-query heads come
        from ``params.attn.num_kv_heads``.
    approximate : {"none", "tanh"}
        The feed-forward network's GELU (see :func:`numerics.gelu`).
    eps : float
        Epsilon of both layer norms (added to the biased variance), >= 0.
    check_finite : bool
        Raise ValueError when ``x`` or a parameter holds NaN or Inf.

    Returns
    -------
    array (..., N, D), same dtype and namespace as ``x``. N = 0 or a batch dim of 0 gives
    an empty result (and zero parameter gradients); D = 0 is a ValueError. Inputs of any
    finite magnitude give finite outputs (attention scores beyond the dtype's range are
    handled as in :func:`numerics.scaled_dot_product_attention`, layer norms rescale each
    row); a result beyond the dtype's range is a ValueError when ``check_finite``.

    Raises
    ------
    TypeError
        params not a BlockParams (or its attn / ffn of the wrong class), non-floating
        arrays, mixed dtypes or array libraries, causal or check_finite not a bool (Python
        or NumPy).
    ValueError
        Unknown ``norm`` or ``approximate``, inconsistent shapes (the message names the
        argument, e.g. ``params.ffn.w1`` or ``params.ln2_gamma``), bad ``eps``, non-finite input.
    """
    c = _prepare(x, params, mask, causal, norm, approximate, eps, check_finite, bias=bias, window=window,
                 softcap=softcap, rope=rope)
    out = _forward(c)
    if check_finite:
        bk.check_result_finite(c.xp, "transformer_block", out=out)
    return c.xp.astype(out, c.dtype, copy=False)


def transformer_block_backward(
    x: Any,
    params: BlockParams,
    d_out: Any,
    *,
    norm: str = "post",
    mask: Any = None,
    causal: bool | str = False,
    bias: Any = None,
    window: tuple[int | None, int | None] | None = None,
    softcap: float | None = None,
    rope: Any = None,
    approximate: str = "none",
    eps: float = 1e-5,
    check_finite: bool = True,
) -> BlockGradients:
    """Gradients of ``sum(d_out * transformer_block(x, params, ...))``, by hand.

    Arguments as in :func:`transformer_block`; ``d_out`` has the output's shape, which is
    ``x``'s (..., N, D), and is checked for NaN/Inf with the rest. Post-LN, with
    ``LN'``, ``FFN'``, ``MHA'`` the vector-Jacobian products of the sub-layers::

        dT5 = LN2'(T5)[dH];  dT3 = dT5 + FFN'(T3)[dT5];  dT2 = LN1'(T2)[dT3];
        dX  = dT2 + MHA'(X)[dT2]

    pre-LN::

        dT = dH + LN2'(T)[FFN'(LN2(T))[dH]];  dX = dT + LN1'(X)[MHA'(LN1(X))[dT]]

    The forward pass is recomputed (nothing is cached between calls).

    Returns
    -------
    BlockGradients
        ``x`` (..., N, D), ``bias`` (the attention bias's gradient, None without one)
        and ``params``, a :class:`BlockParams` of gradients with the
        parameters' shapes (``attn`` an MHAParams, ``ffn`` an FFNParams; None where the
        parameter is None), all in ``x``'s dtype and namespace. The gradient of
        ``attn.b_k`` is 0 in exact arithmetic (softmax is invariant to a shift common to
        all keys) and comes out as rounding noise.
    """
    c = _prepare(x, params, mask, causal, norm, approximate, eps, check_finite, d_out=d_out, bias=bias,
                 window=window, softcap=softcap, rope=rope)
    grads = _bwd(_fwd(c)[1], c.xp.astype(d_out, c.x.dtype, copy=False))
    if check_finite:
        bk.check_result_finite(c.xp, "transformer_block_backward", x=grads.x, bias=grads.bias, **{
            f"params.{n}": a for n, a in grads.params.arrays().items()
        })
    return grads
