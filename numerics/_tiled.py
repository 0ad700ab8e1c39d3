"""Attention in tiles: scores never held beyond one (query block x key block) tile.

The untiled attention (:mod:`numerics.attention`) forms every (..., N, M) score at once.
Here the queries go in blocks of :data:`BLOCK_Q` rows and, for each, the keys in blocks of
:data:`BLOCK_K` columns; a tile's scores come from the same pipeline
(:func:`numerics.attention._scores`, scale -> softcap -> bias -> masks), so a tiled result
is the untiled one up to the order of the sums. Tiles that the band (causal, window)
excludes entirely are skipped, never computed (:meth:`numerics._band.KeyBand.coverage`).

Forward, two routes. When every score is known to lie where exp neither overflows nor
underflows into the digits that matter (:func:`_unshifted_plan`: ``|Z| <= scale |q_i| |k_j|``
by Cauchy-Schwarz, or the softcap; no bias), no shift is needed: the tiles are independent
and each costs two products and one exp::

    l = sum_b exp(Z_b) 1,   a = sum_b exp(Z_b) keep_b V_b / (1 - p),   out = a / l,  lse = log l

(softmax is invariant under the shift, so this is the same quotient; without softcap the
scale times log2(e) goes into q once and exp2 replaces exp, which NumPy computes faster).
Otherwise the online softmax (Milakov and Gimelshein 2018; FlashAttention-2), per query row
and key block b with scores Z_b::

    m' = max(m, max_j Z_bj)                     running maximum (0 while it is -inf)
    l' = l exp(m - m') + sum_j exp(Z_bj - m')   running sum
    a' = a exp(m - m') + exp(Z_b - m') keep_b V_b / (1 - p)
    out = a / l,  lse = m + log(l)              (-inf and out 0 for a row with no key)

Backward, FlashAttention-2's recomputation from the lse, per tile::

    P = exp(Z - lse)                            the weights before dropout
    dV_b += (P keep / (1 - p))^T dO
    dP = (dO V_b^T) keep / (1 - p)
    dS = P (dP - rowsum(dO * O))                = d bias of the tile
    dQ += scale dS' K_b,  dK_b += scale dS'^T Q  with dS' = dS (1 - (T / c)^2) under softcap

With plain scores (no softcap, no bias) Z - lse comes from one product, [scale Q, -lse]
times [K^T; 1], so P costs one exp (exp2, log2(e) folded into q as in the forward) and no
subtraction pass over the tile.

When to tile (:func:`use_tiles`): without weights asked for, when the problem has at least
:data:`MIN_SCORES` scores (batch x N x M, before any split over cores), and when the
magnitudes are ordinary (no score beyond 2**20 that saturates the softmax, no product with
v that could overflow): the rare extreme inputs, and empty problems, keep the untiled path,
which handles them exactly (see ``numerics.attention._Problem``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import array_api_compat
import numpy as np

from . import _backend as bk
from . import attention as _attention

__all__ = ["BLOCK_Q", "BLOCK_K", "MIN_SCORES", "use_tiles", "forward", "backward"]

#: Query rows per tile. Chosen by measurement (CPU time of the causal MHA forward of
#: benchmarks/bench_long.py at N = 2048, 4096, 8192, float32, H = 8: 256 x 256 was best
#: among 128..512 x 128..2048, by 5-25%): large enough that the per-tile Python overhead and
#: the (BLOCK_Q, K) x (K, BLOCK_K) products stay efficient, small enough that a tile of the
#: heads of a slab stays in cache and the causal diagonal wastes few entries. Measured again
#: for the unshifted route (thread CPU time of one 4-head slab, N = 8192, K = 64): 256 x 256
#: 0.38 s; 128 x 256, 256 x 512, 512 x 256, 512 x 512 0.40-0.41 s; 256 x 1024 0.47 s.
BLOCK_Q = 256
#: Key columns per tile.
BLOCK_K = 256
#: Tile only when a problem has at least this many scores (batch x N x M); below it the
#: untiled path is as lean and faster. Set to 0 to force tiling (tests do).
MIN_SCORES = 1 << 22
#: Take the unshifted route when the magnitudes allow it (see :func:`_unshifted_plan`); set to
#: False to force the online softmax (tests do, to cover both routes).
UNSHIFTED = True
#: Backward of plain scores: ``Z - lse`` from one product of q with a last column ``-lse``
#: and K^T with a row of ones (see :func:`_folded_rows`); False: scores, then subtract.
FOLD_LSE = True


def use_tiles(p: Any, return_weights: bool) -> bool:
    """Whether the checked problem ``p`` goes through the tiled path (see the module doc)."""
    if return_weights or p.saturating or p.weights_first or p.unit is not None or p.downscale:
        return False
    scores = math.prod(p.batch) * int(p.q.shape[-2]) * int(p.k.shape[-2])
    return scores > 0 and scores >= MIN_SCORES  # empty problems: the untiled path's rules


def _blocks(length: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, length)) for start in range(0, length, size)]


def _live(p: Any, rows: tuple[int, int]) -> list[tuple[int, int]]:
    """The key blocks of query rows ``rows`` that the band does not exclude entirely."""
    return [cols for cols in _blocks(int(p.k.shape[-2]), BLOCK_K) if p.band.coverage(rows, cols) != "none"]


def _zeros(xp, shape: tuple[int, ...], like: Any) -> Any:
    return xp.zeros(shape, dtype=like.dtype, device=array_api_compat.device(like))


def _finite_or_zero(xp, x: Any) -> Any:
    return xp.where(xp.isfinite(x), x, xp.zeros_like(x))


@dataclass(frozen=True)
class _Plan:
    """How the unshifted route gets a tile's ``exp(Z)`` (see :func:`_exp_scores`)."""

    exp: str  # "exp2" (scores taken in base 2: log2(e) folded into q's factor) or "exp"
    factor: float | None = None  # q's factor for the plain scores; None: the score pipeline
    kt: Any = None  # K^T (..., K, M) (plain scores): a view, or a copy with a row of ones
    ones: Any = None  # (BLOCK_K, 1): a tile's row sums as a matrix-vector product


def _unshifted_plan(p: Any) -> _Plan | None:
    """The plan of the unshifted route, or None when ``p`` needs the online softmax.

    Every score satisfies ``|Z_ij| <= B = |scale| max_i |q_i| max_j |k_j|`` (Cauchy-Schwarz;
    ``B <= c`` under softcap), so the row sums ``l`` and the accumulator stay below
    ``M exp(B) max|v| / (1 - p)``, and a row's largest term is at least ``exp(-B)``. The
    route is taken when that sum stays below the dtype's largest value / e^2, and when
    ``M`` terms of subnormal rounding (each below ``tiny eps``) stay below ``eps e^-2``
    times a row's largest term (and its product with ``max|v|``), so the quotient keeps
    the precision of the shifted softmax. A bias (whose rows may hold huge finite offsets)
    takes the online route.
    """
    xp = p.xp
    if not UNSHIFTED or p.bias is not None or p.unit is not None or p.downscale:
        return None
    m = int(p.k.shape[-2])
    bound = abs(p.scale) * _largest_norm(xp, p.q) * _largest_norm(xp, p.k) * 1.001  # 1.001: rounding of Z
    if p.softcap is not None:
        bound = min(bound, p.softcap)
    v_top = bk.max_abs(xp, p.v) / (1.0 - p.dropout_p)
    if not (math.isfinite(bound) and math.isfinite(v_top)):
        return None
    info = xp.finfo(p.q.dtype)
    log_v = math.log(v_top) if v_top > 0 else 0.0  # v = 0: the accumulator is exactly 0
    spread = bound + math.log(max(m, 1)) + 2.0
    if spread + max(log_v, 0.0) > math.log(float(info.max)) or spread - min(log_v, 0.0) > -math.log(
        float(info.smallest_normal)
    ):
        return None
    ones = xp.ones((min(BLOCK_K, m), 1), dtype=p.q.dtype, device=array_api_compat.device(p.q))
    if p.softcap is not None:
        return _Plan("exp", ones=ones)
    return _plain_plan(p, ones=ones)


def _plain_plan(p: Any, lse_row: bool = False, ones: Any = None) -> _Plan:
    """The plan of plain scores ``scale q k^T`` (no softcap, no bias): exp2 where the
    namespace has it (not in the array API standard; array_api_strict lacks it). K^T is a
    view (a contiguous copy saves in the products what it costs: 0.40 s either way for a
    4-head slab at N = 8192, and it would take memory); with ``lse_row``, K^T gets a row of
    ones, for q rows that end in ``-lse`` (see :func:`_folded_rows`)."""
    xp = p.xp
    kt = xp.matrix_transpose(p.k)
    if lse_row:
        row = xp.ones((*kt.shape[:-2], 1, int(kt.shape[-1])), dtype=kt.dtype, device=array_api_compat.device(kt))
        kt = xp.concat([kt, row], axis=-2)
    if hasattr(xp, "exp2"):
        return _Plan("exp2", p.scale * math.log2(math.e), kt, ones)
    return _Plan("exp", p.scale, kt, ones)


def _folded_rows(p: Any, plan: _Plan, rows: tuple[int, int], shift_rows: Any) -> Any:
    """q of ``rows`` times the plan's factor, then ``-lse`` (in the plan's base) as a last
    column: with K^T and its row of ones (``_plain_plan(p, lse_row=True)``), one product
    gives ``Z - lse``, so ``exp`` of it is P with no pass to subtract the lse."""
    xp = p.xp
    q_rows = _plan_rows(p, plan, rows)
    q_rows = xp.broadcast_to(q_rows, (*shift_rows.shape[:-2], *q_rows.shape[-2:]))
    base = math.log2(math.e) if plan.exp == "exp2" else 1.0  # lse in the plan's base
    return xp.concat([q_rows, shift_rows * -base], axis=-1)


def _plain(p: Any) -> bool:
    """Whether the scores are ``scale q k^T`` and masks only (no softcap, bias or rescaling)."""
    return p.softcap is None and p.bias is None and p.unit is None and not p.downscale


def _largest_norm(xp, a: Any) -> float:
    """``max_i |a_i|`` over the rows of ``a`` (..., L, C), NaN if ``a`` holds NaN; taken in
    blocks of rows, so that no temporary of ``a``'s size is made."""
    top = 0.0
    for rows in _blocks(int(a.shape[-2]), 1024):
        part = _attention._rows_of(a, rows, -2)
        largest = float(xp.max(xp.sum(part * part, axis=-1)))
        if math.isnan(largest):
            return math.nan
        top = max(top, largest)
    return math.sqrt(top)


def _exp_scores(p: Any, plan: _Plan, q_rows: Any, rows: tuple[int, int], cols: tuple[int, int]) -> Any:
    """``exp(Z)`` of the tile rows x cols (a fresh array, 0 where excluded); ``q_rows`` is q
    of ``rows`` times ``plan.factor`` (plain scores) or None (the score pipeline)."""
    xp = p.xp
    if plan.factor is None:
        scores, factors = _attention._scores(p, rows, cols)
        assert not factors, "_unshifted_plan keeps problems with score factors on the online route"
    else:
        scores = q_rows @ plan.kt[..., cols[0]:cols[1]]
        # Interior tiles (the band allows all of them, no mask): nothing to exclude.
        allowed = None if p.mask is None and p.band.coverage(rows, cols) == "all" else (
            _attention._allowed(p, rows, cols, scores))
        if allowed is not None:
            scores = (bk.masked_fill(xp, scores, allowed, -xp.inf) if _attention._fits(xp, scores, allowed)
                      else xp.where(allowed, scores, -xp.inf))
    return bk.inplace(xp, plan.exp, scores)


def _plan_rows(p: Any, plan: _Plan, rows: tuple[int, int]) -> Any:
    """q of ``rows`` times the plan's factor (None for the score pipeline)."""
    return None if plan.factor is None else _attention._rows_of(p.q, rows, -2) * plan.factor


def _unshifted_rows(p: Any, plan: _Plan, rows: tuple[int, int]) -> tuple[Any, Any]:
    """``(out, lse)`` of query rows ``rows`` by the unshifted route (see :func:`_unshifted_plan`)."""
    xp = p.xp
    total = acc = None
    q_rows = _plan_rows(p, plan, rows)
    for cols in _live(p, rows):
        e = _exp_scores(p, plan, q_rows, rows, cols)
        block_sum = e @ plan.ones[: cols[1] - cols[0], :]  # faster than a sum along the rows
        contribution = _attention._dropped(p, e, rows, cols, overwrite=True) @ _attention._rows_of(p.v, cols, -2)
        if total is None:
            total, acc = block_sum, contribution
            continue
        total = bk.inplace(xp, "add", total, block_sum) if _fits(total, block_sum) else total + block_sum
        acc = bk.inplace(xp, "add", acc, contribution) if _fits(acc, contribution) else acc + contribution
    if total is None:
        return _no_key(p, rows)
    out = _attention.safe_divide(xp, acc, total, overwrite=True)
    with np.errstate(divide="ignore"):
        lse = xp.log(total)  # log 0 = -inf: no allowed key
    return _attention._to_batch(p, out), lse


def _no_key(p: Any, rows: tuple[int, int]) -> tuple[Any, Any]:
    """``(out, lse)`` of query rows every key block of which is excluded: 0 and -inf."""
    xp = p.xp
    height = rows[1] - rows[0]
    return (_zeros(xp, p.batch + (height, int(p.v.shape[-1])), p.q),
            _zeros(xp, _score_batch(p) + (height, 1), p.q) - xp.inf)


def _online_rows(p: Any, rows: tuple[int, int]) -> tuple[Any, Any]:
    """``(out, lse)`` of query rows ``rows`` by the online softmax: out (..., rows, V), lse
    (..., rows, 1)."""
    xp = p.xp
    running_max = total = acc = None
    for cols in _live(p, rows):
        scores, factors = _attention._scores(p, rows, cols)
        assert not factors, "use_tiles keeps problems with score factors untiled"
        block_max = xp.max(scores, axis=-1, keepdims=True)
        new_max = block_max if running_max is None else xp.maximum(running_max, block_max)
        shift = _finite_or_zero(xp, new_max)  # a row with nothing allowed yet: exp(-inf - 0) = 0
        e = bk.inplace(xp, "exp", bk.inplace(xp, "subtract", scores, shift))
        block_sum = xp.sum(e, axis=-1, keepdims=True)
        v = _attention._rows_of(p.v, cols, -2)
        contribution = _attention._dropped(p, e, rows, cols, overwrite=True) @ v
        if running_max is None:
            total, acc = block_sum, contribution
        else:
            rescale = _rescale(xp, running_max, shift)
            total = total * rescale + block_sum
            acc = bk.inplace(xp, "add", acc * rescale, contribution) if _fits(acc, contribution) else (
                acc * rescale + contribution)
        running_max = new_max
    if running_max is None:
        return _no_key(p, rows)
    out = _attention.safe_divide(xp, acc, total, overwrite=True)
    with np.errstate(divide="ignore"):
        lse = _finite_or_zero(xp, running_max) + xp.log(total)  # log 0 = -inf: no allowed key
    return _attention._to_batch(p, out), lse


def _rescale(xp, old_max: Any, new_shift: Any) -> Any:
    """``exp(m - m')``, the factor that takes sums and accumulators shifted by the old
    running maximum to the new shift (0 where the old one was -inf: nothing was summed).
    ``m <= m'``, so it never overflows."""
    return xp.exp(old_max - new_shift)


def _score_batch(p: Any) -> tuple[int, ...]:
    """The batch dims of the scores: those of q, k, mask and bias broadcast."""
    arrays = [a for a in (p.q, p.k, p.mask, p.bias) if a is not None]
    return bk.broadcast_shapes(*(bk.batch_of(a) if a.ndim >= 2 else () for a in arrays))


def _fits(acc: Any, other: Any) -> bool:
    shape = tuple(acc.shape)
    return shape == tuple(other.shape) or shape == bk.broadcast_shapes(shape, tuple(other.shape))


def forward(p: Any, return_lse: bool = False) -> tuple[Any, ...]:
    """``(out[, lse])`` as :func:`numerics.attention._forward` gives them without weights:
    out (..., N, V), lse (..., N, 1), the problem's batch dims, compute dtype."""
    out, lse = _forward(p)
    return (out, _attention._to_batch(p, lse)) if return_lse else (out,)


def _forward(p: Any) -> tuple[Any, Any]:
    """``(out, lse)``, lse with the batch dims of the scores (those of q, k, mask and bias)."""
    xp = p.xp
    blocks = _blocks(int(p.q.shape[-2]), BLOCK_Q)
    plan = _unshifted_plan(p)
    row_block = partial(_online_rows, p) if plan is None else partial(_unshifted_rows, p, plan)
    if not bk._writes_in_place(xp):
        parts = [row_block(rows) for rows in blocks]
        return xp.concat([o for o, _ in parts], axis=-2), xp.concat([lse for _, lse in parts], axis=-2)
    # NumPy, CuPy: each block written into the output, never a second copy of it.
    n = int(p.q.shape[-2])
    device = array_api_compat.device(p.q)
    out = xp.empty(p.batch + (n, int(p.v.shape[-1])), dtype=p.q.dtype, device=device)
    lse = xp.empty(_score_batch(p) + (n, 1), dtype=p.q.dtype, device=device)
    for rows in blocks:
        out[..., rows[0]:rows[1], :], lse[..., rows[0]:rows[1], :] = row_block(rows)
    return out, lse


def backward(p: Any, d_out: Any, out: Any = None, lse: Any = None) -> tuple[Any, ...]:
    """``(dq, dk, dv[, d_bias])`` as :func:`numerics.attention._backward` gives them (the
    problem's batch dims; d_bias summed over the bias's broadcast rows and columns), from
    the tiled forward's output and lse; no (N, M) array is formed unless the bias is one.

    ``out`` (..., N, V) and ``lse`` (..., N, 1), compute dtype, are what :func:`forward`
    with ``return_lse`` gave for ``p`` (a vjp keeps them); None: the forward is recomputed."""
    xp = p.xp
    n, m = int(p.q.shape[-2]), int(p.k.shape[-2])
    if (out is None) != (lse is None):
        raise ValueError("backward needs both the forward's out and lse, or neither (to recompute them)")
    if out is None:
        out, lse = _forward(p)
    shift = _finite_or_zero(xp, lse)  # rows with no key: every score -inf, P = 0
    delta = xp.sum(d_out * out, axis=-1, keepdims=True)
    del out
    # Plain scores: Z - lse from one product (no subtraction pass), see _folded_rows.
    folded = _plain_plan(p, lse_row=True) if FOLD_LSE and _plain(p) else None
    key_blocks = _blocks(m, BLOCK_K)
    dk = {cols: None for cols in key_blocks}
    dv = dict(dk)
    dq_rows, bias_rows = [], []
    bias_by_rows = p.bias is not None and p.bias.ndim >= 2 and int(p.bias.shape[-2]) != 1
    bias_by_cols = p.bias is not None and p.bias.ndim >= 1 and int(p.bias.shape[-1]) != 1
    for rows in _blocks(n, BLOCK_Q):
        q_rows = _attention._rows_of(p.q, rows, -2)
        d_rows = _attention._rows_of(d_out, rows, -2)
        shift_rows, delta_rows = (_attention._rows_of(a, rows, -2) for a in (shift, delta))
        q_folded = None if folded is None else _folded_rows(p, folded, rows, shift_rows)
        dq = None
        bias_cols = {}
        for cols in _live(p, rows):
            k_cols, v_cols = (_attention._rows_of(a, cols, -2) for a in (p.k, p.v))
            if folded is not None:
                weights = _exp_scores(p, folded, q_folded, rows, cols)
            else:
                scores, _ = _attention._scores(p, rows, cols)
                weights = bk.inplace(xp, "exp", bk.inplace(xp, "subtract", scores, shift_rows))
            dropped = _attention._dropped(p, weights, rows, cols, overwrite=False)
            dv[cols] = _accumulate(dv[cols], xp.matrix_transpose(dropped) @ d_rows)
            del dropped
            d_weights = _attention._dropped(p, d_rows @ xp.matrix_transpose(v_cols), rows, cols, overwrite=True)
            d_scores = bk.inplace(xp, "multiply", bk.inplace(xp, "subtract", d_weights, delta_rows), weights)
            del weights
            if p.bias is not None:
                bias_cols[cols] = _attention._reduce_broadcast_tail(xp, d_scores, p.bias)
            if p.softcap is not None:
                d_scores = d_scores * _attention._softcap_slope(p, rows, cols)
            dq = _accumulate(dq, _attention._scaled_product(xp, d_scores, k_cols, p.scale, p.shifts[1]))
            dk[cols] = _accumulate(
                dk[cols], _attention._scaled_product(xp, xp.matrix_transpose(d_scores), q_rows, p.scale, p.shifts[0])
            )
        dq_rows.append(dq if dq is not None else _zeros(xp, p.batch + (rows[1] - rows[0], int(p.q.shape[-1])), p.q))
        if p.bias is not None:
            bias_rows.append(_bias_row(p, bias_cols, key_blocks, rows, bias_by_cols))
    width_k, width_v = int(p.k.shape[-1]), int(p.v.shape[-1])
    dq = xp.concat(dq_rows, axis=-2)
    dk = _join(xp, dk, p, width_k)
    dv = _join(xp, dv, p, width_v)
    if p.bias is None:
        return dq, dk, dv
    if bias_by_rows:
        d_bias = xp.concat(bias_rows, axis=-2)
    else:
        d_bias = bias_rows[0]
        for part in bias_rows[1:]:
            d_bias = d_bias + part
    return dq, dk, dv, d_bias


def _accumulate(total: Any, part: Any) -> Any:
    return part if total is None else total + part


def _join(xp, per_block: dict, p: Any, width: int) -> Any:
    """The per key block gradients (None: no tile reached the block) along the key axis."""
    parts = [g if g is not None else _zeros(xp, p.batch + (cols[1] - cols[0], width), p.q)
             for cols, g in per_block.items()]
    return xp.concat(parts, axis=-2)


def _bias_row(p: Any, per_cols: dict, key_blocks: list, rows: tuple[int, int], by_cols: bool) -> Any:
    """d_bias of one query block: its key blocks joined (or summed where the bias is
    broadcast along the keys), 0 for skipped tiles."""
    xp = p.xp
    height = rows[1] - rows[0] if (p.bias.ndim >= 2 and int(p.bias.shape[-2]) != 1) else 1
    if not by_cols:
        parts = list(per_cols.values())
        if not parts:
            return _zeros(xp, p.batch + (height, 1), p.q)
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total
    return xp.concat(
        [per_cols[cols] if cols in per_cols else _zeros(xp, p.batch + (height, cols[1] - cols[0]), p.q)
         for cols in key_blocks],
        axis=-1,
    )
