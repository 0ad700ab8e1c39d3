"""The tiled attention path (numerics._tiled) against the untiled one.

Tiling is forced at small sizes (``_tiled.MIN_SCORES = 0``) with blocks that do not divide
the lengths (113 x 203 queries x keys in 16 x 32 tiles), and every option combination must
give the untiled forward (output, lse) and backward (dq, dk, dv, d_bias) to float64
rounding, on both forward routes (unshifted exp, online softmax) and both ways to the
backward's P (lse folded into the product, or subtracted). A merge without its rescale, row
sums taken after dropout, and a fold with the wrong sign must be caught by the same comparison; excluded
tiles must not be computed; the unshifted route must refuse magnitudes it cannot hold and
keep float32 precision at its limit; the automatic choice and the bounded memory are checked.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from numerics import _tiled, attention, attention_backward, scaled_dot_product_attention
from tests.helpers import force_split, from_numpy, to_numpy
from verify.validate.tolerance import rule

from verify.validate.tolerance import ABS64 as TOL64  # the package's float64 bound


@pytest.fixture
def tiles(monkeypatch):
    """Tiled path forced at any size, in 16 x 32 tiles; counts the tiled calls."""
    monkeypatch.setattr(_tiled, "MIN_SCORES", 0)
    monkeypatch.setattr(_tiled, "BLOCK_Q", 16)
    monkeypatch.setattr(_tiled, "BLOCK_K", 32)
    calls = []
    forward, backward = _tiled.forward, _tiled.backward

    def counted_forward(*a, **kw):
        calls.append("forward")
        return forward(*a, **kw)

    def counted_backward(*a, **kw):
        calls.append("backward")
        return backward(*a, **kw)

    monkeypatch.setattr(_tiled, "forward", counted_forward)
    monkeypatch.setattr(_tiled, "backward", counted_backward)
    return calls


@pytest.fixture(params=["unshifted", "online"])
def route(request, monkeypatch):
    """The forward route under test (``_tiled.UNSHIFTED``); returns (name, calls of the
    unshifted route), so that a test can check the route it asked for was taken."""
    monkeypatch.setattr(_tiled, "UNSHIFTED", request.param == "unshifted")
    calls = []
    original = _tiled._unshifted_rows
    monkeypatch.setattr(_tiled, "_unshifted_rows", lambda *a: calls.append(1) or original(*a))
    return request.param, calls


def _check_route(route, bias) -> None:
    """The unshifted route is taken when asked for (inputs of ordinary magnitude, no bias)."""
    name, calls = route
    assert bool(calls) == (name == "unshifted" and bias is None), f"route {name} with bias {bias}: {len(calls)} calls"


def _untiled(monkeypatch):
    monkeypatch.setattr(_tiled, "MIN_SCORES", float("inf"))


def _case(n, m, *, heads=(2, 2), bias=None, mask=False, dropout=False, empty_rows=False, seed=0):
    """numpy float64 inputs (q, k, v, d_out) and keywords; heads = (Hq, Hkv)."""
    rng = np.random.default_rng(seed)
    hq, hkv = heads
    q = rng.standard_normal((2, hq, n, 8)) * 2.0  # scores of several units: the running max moves
    k = rng.standard_normal((1, hkv, m, 8)) * 2.0
    v = rng.standard_normal((2, hkv, m, 5))
    d_out = rng.standard_normal((2, hq, n, 5))
    kw = {}
    if hq != hkv:
        kw["enable_gqa"] = True
    if bias == "full":
        b = rng.standard_normal((hq, n, m))
        b[:, 3, 7] = -np.inf
        kw["bias"] = b
    elif bias == "keys":
        kw["bias"] = rng.standard_normal((m,))
    elif bias == "rows":
        kw["bias"] = rng.standard_normal((2, 1, n, 1))
    if mask:
        allowed = rng.random((n, m)) < 0.8
        if empty_rows:
            allowed[[0, 5, n - 1], :] = False
        kw["mask"] = allowed
    elif empty_rows:
        b = kw.get("bias", np.zeros((n, m)))
        b = np.broadcast_to(b, np.broadcast_shapes(b.shape, (n, m))).copy()
        b[..., [0, 5, n - 1], :] = -np.inf
        kw["bias"] = b
    if dropout:
        kw["dropout_p"] = 0.25
        kw["dropout_mask"] = rng.random((2, 1, n, m)) >= 0.25
    return q, k, v, d_out, kw


def _on(xp, arrays, kw):
    out = [from_numpy(xp, a) for a in arrays]
    kw = {name: from_numpy(xp, a) if isinstance(a, np.ndarray) else a for name, a in kw.items()}
    return out, kw


def _run_both(xp, monkeypatch, case, calls, **options):
    """((out, lse, grads) tiled, (out, lse, grads) untiled), as numpy arrays."""
    (q, k, v, d_out), kw = _on(xp, case[:4], case[4])
    kw.update(options)
    results = []
    for tiled in (True, False):
        if not tiled:
            _untiled(monkeypatch)
        before = len(calls)
        out, lse = scaled_dot_product_attention(q, k, v, return_lse=True, **kw)
        grads = attention_backward(q, k, v, d_out, **kw)
        assert (len(calls) > before) == tiled, "the path under test was not the one taken"
        results.append((to_numpy(out), to_numpy(lse), [None if g is None else to_numpy(g) for g in
                                                         (grads.q, grads.k, grads.v, grads.bias)]))
    return results


def _assert_agree(tiled, untiled):
    (out_t, lse_t, g_t), (out_u, lse_u, g_u) = tiled, untiled
    np.testing.assert_allclose(out_t, out_u, rtol=TOL64, atol=TOL64)
    np.testing.assert_array_equal(np.isneginf(lse_t), np.isneginf(lse_u))
    finite = np.isfinite(lse_u)
    np.testing.assert_allclose(lse_t[finite], lse_u[finite], rtol=TOL64, atol=TOL64)
    for name, a, b in zip(("dq", "dk", "dv", "d_bias"), g_t, g_u):
        assert (a is None) == (b is None), name
        if a is not None:
            assert a.shape == b.shape, name
            np.testing.assert_allclose(a, b, rtol=TOL64, atol=TOL64 * max(1.0, np.abs(b).max()), err_msg=name)


POSITIONAL = [
    dict(),
    dict(causal=True),
    dict(causal="bottom_right"),
    dict(window=(20, 5)),
    dict(causal="bottom_right", window=(40, None)),
    dict(causal=True, window=(0, 0)),
]
SCORE = [dict(), dict(softcap=3.0)]


@pytest.mark.parametrize("n, m", [(113, 203), (203, 113)])
@pytest.mark.parametrize("positional", POSITIONAL, ids=str)
@pytest.mark.parametrize("score", SCORE, ids=str)
@pytest.mark.parametrize("bias", [None, "full", "keys", "rows"])
def test_tiled_equals_untiled_every_option_numpy(monkeypatch, tiles, route, n, m, positional, score, bias):
    for heads, mask, dropout, empty in (((2, 2), False, False, False), ((4, 2), True, True, True)):
        case = _case(n, m, heads=heads, bias=bias, mask=mask, dropout=dropout, empty_rows=empty)
        monkeypatch.setattr(_tiled, "MIN_SCORES", 0)
        _assert_agree(*_run_both(np, monkeypatch, case, tiles, **positional, **score))
    _check_route(route, bias)


@pytest.mark.parametrize("options", [
    dict(causal=True, softcap=2.0),
    dict(causal="bottom_right", window=(30, 3)),
    dict(window=(None, 10), scale=0.7),
], ids=str)
@pytest.mark.parametrize("bias", [None, "full", "keys"])
def test_tiled_equals_untiled_on_every_namespace(xp, monkeypatch, tiles, route, options, bias):
    case = _case(113, 203, heads=(4, 2), bias=bias, mask=True, dropout=True, empty_rows=True, seed=3)
    _assert_agree(*_run_both(xp, monkeypatch, case, tiles, **options))
    _check_route(route, bias)


@pytest.mark.parametrize("scale", [0.0, -0.4, 1e-3])
def test_unusual_scales(monkeypatch, tiles, route, scale):
    """scale = 0 (uniform weights over the allowed keys), a negative and a tiny scale: tiled
    as untiled, on both routes."""
    case = _case(113, 203, heads=(4, 2), mask=True, dropout=True, empty_rows=True, seed=19)
    _assert_agree(*_run_both(np, monkeypatch, case, tiles, causal=True, scale=scale))
    _check_route(route, None)


def test_rows_with_no_key_are_zero(monkeypatch, tiles, route):
    """A window that excludes every key of some rows (bottom-right, N > M) and -inf bias rows:
    output 0, lse -inf, zero gradients through them, as untiled."""
    # The unshifted route takes no bias: its empty rows come from the boolean mask instead.
    by_mask = route[0] == "unshifted"
    case = _case(203, 113, mask=by_mask, empty_rows=True, seed=5)
    tiled, untiled = _run_both(np, monkeypatch, case, tiles, causal="bottom_right", window=(3, None))
    _assert_agree(tiled, untiled)
    _check_route(route, None if by_mask else "-inf rows")
    out, lse, _ = tiled
    empty = np.isneginf(lse)
    assert empty[..., :90].all() and empty.sum() > 90 * 4  # the first N - M rows see no key
    assert not np.any(out[empty])


@pytest.mark.parametrize("bias", [None, "full"])
def test_split_over_cores_then_tiled(monkeypatch, tiles, route, bias):
    split = force_split(monkeypatch)
    case = _case(113, 203, heads=(4, 2), bias=bias, dropout=True, seed=7)
    _assert_agree(*_run_both(np, monkeypatch, case, tiles, causal=True, softcap=4.0))
    assert split, "the problem was not split over cores"
    _check_route(route, bias)


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
@pytest.mark.parametrize("options, bias", [
    (dict(causal=True), None), (dict(causal="bottom_right", softcap=3.0), "full"), (dict(window=(30, 3)), "keys"),
], ids=str)
def test_vjp_backward_from_the_kept_out_and_lse(monkeypatch, tiles, route, options, bias, split):
    """attention_vjp on the tiled path keeps the forward's out and lse, and its backward
    (no forward recomputed) gives the untiled gradients; rows with no key (lse -inf),
    dropout and grouped heads included, whole or split over cores."""
    monkeypatch.setattr(attention, "SAVED_WEIGHTS_MAX", 0)
    slabs = force_split(monkeypatch) if split else None
    q, k, v, d_out, kw = _case(113, 203, heads=(4, 2), bias=bias, mask=True, dropout=True, empty_rows=True, seed=23)
    kw.update(options)
    out, backward = attention.attention_vjp(q, k, v, **kw)
    grads = backward(d_out)
    # One tiled forward and backward per slab (test_layer_pairs checks no forward is recomputed).
    assert tiles.count("forward") == tiles.count("backward") == len(tiles) // 2 >= 1
    assert not split or slabs, "the problem was not split over cores"
    _check_route(route, bias)
    _untiled(monkeypatch)
    out_u, lse_u = scaled_dot_product_attention(q, k, v, return_lse=True, **kw)
    untiled = attention_backward(q, k, v, d_out, **kw)
    _assert_agree((out, lse_u, list(grads)), (out_u, lse_u, list(untiled)))


def test_a_merge_without_rescale_is_caught(monkeypatch, tiles):
    """The same comparison rejects a merge that forgets to rescale the old sum and accumulator."""
    monkeypatch.setattr(_tiled, "UNSHIFTED", False)
    monkeypatch.setattr(_tiled, "_rescale", lambda xp, old, new: xp.ones_like(old))
    case = _case(113, 203, seed=11)
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        _assert_agree(*_run_both(np, monkeypatch, case, tiles, causal=True))


def test_row_sums_after_dropout_are_caught(monkeypatch, tiles):
    """The unshifted route's row sums must be those of exp(Z) before dropout: a sum taken
    after the keep mask (a plausible slip) is rejected by the same comparison."""
    dropped = attention._dropped

    def drop_first(p, weights, rows=None, cols=None, *, overwrite):
        return dropped(p, weights, rows, cols, overwrite=False)  # the row sums then see the dropped weights

    def sums_after_dropout(p, plan, q_rows, rows, cols):
        e = exp_scores(p, plan, q_rows, rows, cols)
        return dropped(p, e, rows, cols, overwrite=False) if p.keep is not None else e

    exp_scores = _tiled._exp_scores
    monkeypatch.setattr(_tiled, "_exp_scores", sums_after_dropout)
    case = _case(113, 203, dropout=True, seed=13)
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        _assert_agree(*_run_both(np, monkeypatch, case, tiles, causal=True))


@pytest.mark.parametrize("fold", [True, False], ids=["folded", "subtracted"])
def test_backward_lse_folded_into_the_product(monkeypatch, tiles, fold):
    """Plain scores: the backward takes Z - lse from one product (q with a column -lse, K^T
    with a row of ones) or subtracts it; both give the untiled gradients, and the fold is
    really taken (and a fold with the wrong sign is caught by the same comparison)."""
    monkeypatch.setattr(_tiled, "FOLD_LSE", fold)
    calls = []
    folded_rows = _tiled._folded_rows
    monkeypatch.setattr(_tiled, "_folded_rows", lambda *a: calls.append(1) or folded_rows(*a))
    case = _case(113, 203, heads=(4, 2), mask=True, dropout=True, empty_rows=True, seed=17)
    _assert_agree(*_run_both(np, monkeypatch, case, tiles, causal=True))
    assert bool(calls) == fold
    if fold:
        monkeypatch.setattr(_tiled, "MIN_SCORES", 0)
        monkeypatch.setattr(_tiled, "_folded_rows", lambda p, plan, rows, shift: folded_rows(p, plan, rows, -shift))
        with pytest.raises(AssertionError, match="Not equal to tolerance"):
            _assert_agree(*_run_both(np, monkeypatch, case, tiles, causal=True))


def _aligned(n: int, m: int, size: float, dtype, against: bool = False) -> tuple[np.ndarray, ...]:
    """q, k, v whose every score is +-size or near it: k along one direction u, half the
    queries along u (largest terms exp(size), near the overflow) and half against it (every
    query with ``against``), so those rows' largest score is about -size (the unshifted
    route's worst case: its largest term exp(-size) near the underflow)."""
    rng = np.random.default_rng(21)
    width = 8
    u = np.ones(width) / np.sqrt(width)
    k = u * np.sqrt(size * np.sqrt(width)) * (1 + 0.01 * rng.standard_normal((1, m, 1)))
    q = u * np.sqrt(size * np.sqrt(width)) * np.where(np.arange(n) % 2 & (not against), 1.0, -1.0)[None, :, None]
    v = rng.standard_normal((1, m, 5))
    return tuple(a.astype(dtype) for a in (q, k, v))


def test_unshifted_route_refuses_magnitudes_it_cannot_hold():
    """Scores up to about 80 in float32 (exp overflows at 88.7, underflows at -87.3), a tiny
    v, or a bias take the online route; float64 holds the same scores unshifted."""

    def plan(q, k, v, **kw):
        return _tiled._unshifted_plan(attention._prepare(q, k, v, None, True, None, True, **kw))

    for size, expected in ((20.0, True), (60.0, True), (85.0, False), (400.0, False)):
        assert (plan(*_aligned(113, 203, size, np.float32)) is not None) == expected, size
        assert plan(*_aligned(113, 203, size, np.float64)) is not None, size
    q, k, v = _aligned(113, 203, 20.0, np.float32)
    # exp(-20) v with v near 1e-30 falls below float32's normal range (1.2e-38); near 1e-20 it does not.
    assert plan(q, k, v * np.float32(1e-30)) is None
    assert plan(q, k, v * np.float32(1e-20)) is not None
    assert plan(q, k, v, bias=np.zeros((113, 203), np.float32)) is None
    assert plan(q, k, v, softcap=5.0) is not None  # the softcap bounds the scores (|Z| <= 5)
    assert plan(*_aligned(113, 203, 500.0, np.float32), softcap=5.0) is not None


@pytest.mark.parametrize("against", [False, True], ids=["mixed", "against"])
@pytest.mark.parametrize("size", [20.0, 60.0, 80.0, 86.0, 95.0])
def test_float32_precision_at_the_unshifted_limit(monkeypatch, tiles, route, size, against):
    """float32 scores of +-size, rows whose best key scores -size: the tiled result (either
    route; the unshifted one up to its limit) is as close to the float64 result as the
    untiled float32 one, by the package's rule (2x plus 16 u). (Unshifted at 86, exp(86) times 203
    keys overflows; at 95, exp(-95) is subnormal: a route that took them would fail here.)"""
    q, k, v = _aligned(113, 203, size, np.float32, against)
    tiled = scaled_dot_product_attention(q, k, v, causal=True)
    assert tiles == ["forward"]
    taken = bool(route[1])
    _untiled(monkeypatch)
    plain = scaled_dot_product_attention(q, k, v, causal=True)
    exact = scaled_dot_product_attention(*(a.astype(np.float64) for a in (q, k, v)), causal=True)
    measured = rule(tiled, plain, exact, dtype="float32")
    assert measured.ok, measured
    assert taken == (route[0] == "unshifted" and size < 80), "the unshifted route's limit moved"


def test_excluded_tiles_are_not_computed(monkeypatch, tiles, route):
    computed = []
    if route[0] == "online":
        scores = attention._scores

        def counted(p, rows=None, cols=None):
            computed.append((rows, cols))
            return scores(p, rows, cols)

        monkeypatch.setattr(attention, "_scores", counted)
    else:
        exp_scores = _tiled._exp_scores

        def counted(p, plan, q_rows, rows, cols):
            computed.append((rows, cols))
            return exp_scores(p, plan, q_rows, rows, cols)

        monkeypatch.setattr(_tiled, "_exp_scores", counted)
    q, k, v, _, _ = _case(113, 203, seed=2)
    scaled_dot_product_attention(q, k, v, causal=True, window=(40, None))
    band = attention.key_band(113, 203, "top_left", (40, None))
    rows = _tiled._blocks(113, 16)
    cols = _tiled._blocks(203, 32)
    live = {(r, c) for r in rows for c in cols if band.coverage(r, c) != "none"}
    assert set(computed) == live and len(computed) == len(live) < len(rows) * len(cols) / 2


def test_automatic_choice(monkeypatch):
    """Large problems tile unless weights are asked for; small ones and extreme magnitudes don't."""
    monkeypatch.setattr(_tiled, "MIN_SCORES", 1 << 12)
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((1, 64, 8)), rng.standard_normal((1, 64, 8)), rng.standard_normal((1, 64, 4))

    def problem(q, k, v, **kw):
        return attention._prepare(q, k, v, None, kw.get("causal", False), None, True, bias=kw.get("bias"))

    assert _tiled.use_tiles(problem(q, k, v), return_weights=False)
    assert not _tiled.use_tiles(problem(q, k, v), return_weights=True)
    assert not _tiled.use_tiles(problem(q[:, :32], k, v), return_weights=False)  # 32 x 64 < 2^12
    assert not _tiled.use_tiles(problem(q * 1e200, k * 1e200, v), return_weights=False)  # saturating
    assert not _tiled.use_tiles(problem(q, k, v * 1e306), return_weights=False)  # weights first


def test_tiled_forward_holds_no_full_score_matrix(monkeypatch):
    """Peak traced memory of a tiled forward and backward stays far below one (N, M) float64
    score array, which the untiled path allocates several times."""
    monkeypatch.setattr(_tiled, "MIN_SCORES", 0)
    monkeypatch.setattr(_tiled, "BLOCK_Q", 64)
    monkeypatch.setattr(_tiled, "BLOCK_K", 256)
    n = 1024
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, n, 16)) for _ in range(3))
    scores_bytes = n * n * 8
    peaks = {}
    for tiled in (True, False):
        if not tiled:
            _untiled(monkeypatch)
        tracemalloc.start()
        scaled_dot_product_attention(q, k, v, causal=True)
        attention_backward(q, k, v, v, causal=True)
        peaks[tiled] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[True] < scores_bytes / 4 < peaks[False]


def test_multi_head_attention_forward_takes_the_tiled_path(monkeypatch, tiles):
    """The MHA layer's forward goes through the tiled attention when it applies, with the
    untiled result; asking for the weights keeps it untiled."""
    import numerics

    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 113, 24))
    params = numerics.init_params(24, 4, bias=True, seed=1)
    tiled = numerics.multi_head_attention(x, params, causal=True)
    assert tiles == ["forward"]
    out, _ = numerics.multi_head_attention(x, params, causal=True, return_weights=True)
    assert tiles == ["forward"]
    _untiled(monkeypatch)
    np.testing.assert_allclose(tiled, numerics.multi_head_attention(x, params, causal=True), rtol=TOL64, atol=TOL64)
    np.testing.assert_allclose(tiled, out, rtol=TOL64, atol=TOL64)


@pytest.mark.parametrize("shapes", [((0, 5, 4), (0, 7, 4), (0, 7, 3)), ((2, 0, 4), (2, 7, 4), (2, 7, 3)),
                                    ((2, 5, 4), (2, 0, 4), (2, 0, 3)), ((2, 5, 0), (2, 7, 0), (2, 7, 3))])
def test_empty_axes_with_tiling_forced(monkeypatch, tiles, shapes):
    """Empty batch, N, M or K: the same results as before tiling existed (K = 0 tiles)."""
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(s) for s in shapes)
    d_out = rng.standard_normal(q.shape[:-1] + (3,))
    tiled = scaled_dot_product_attention(q, k, v, causal=True), attention_backward(q, k, v, d_out, causal=True)
    _untiled(monkeypatch)
    untiled = scaled_dot_product_attention(q, k, v, causal=True), attention_backward(q, k, v, d_out, causal=True)
    for a, b in zip([tiled[0], *tiled[1]], [untiled[0], *untiled[1]]):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=TOL64, atol=TOL64)
