"""A cold review of scaled_dot_product_attention / attention_backward, one section per defect.

1. q or k entries above about half the float64 maximum: ``aq + ak`` overflowed in the choice
   of the rescaled path, so scores of inf gave a spurious "overflowed" error or, for scores
   of -inf, a row silently treated as fully masked (output 0).
2. ``scale=0`` was rejected; torch's SDPA accepts it (uniform attention over allowed keys).
3. Arrays of one library on different devices failed deep inside with a message naming no
   argument; now a ValueError naming both arguments and their devices.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import numerics
from numerics import (
    attention_backward,
    init_block_params,
    init_params,
    multi_head_attention,
    multi_head_attention_backward,
    reference,
    scaled_dot_product_attention,
    softmax,
    transformer_block,
)
from tests.helpers import from_numpy, to_numpy

MAX = float(np.finfo(np.float64).max)  # 1.7976931348623157e308
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def raises(exc, *words):
    """pytest.raises for ``exc`` whose message contains every word in ``words``."""
    pattern = "".join(rf"(?=.*{re.escape(w)})" for w in words)
    return pytest.raises(exc, match=re.compile(pattern, re.S))


# --------------------------------------------------------------------------- 1. magnitudes


def test_reviewer_cases_near_the_largest_float(xp):
    """The review's two cases, forward and backward, on every namespace."""
    put = lambda a: from_numpy(xp, np.array(a, dtype=np.float64))  # noqa: E731
    out = scaled_dot_product_attention(put([[1e308]]), put([[1e308]]), put([[1.0]]))
    np.testing.assert_array_equal(to_numpy(out), [[1.0]])
    q, k, v = put([[-1e308]]), put([[1e308], [5e307]]), put([[1.0], [2.0]])
    out, w = scaled_dot_product_attention(q, k, v, return_weights=True)
    np.testing.assert_array_equal(to_numpy(out), [[2.0]])  # scores -1e616 and -5e615: key 1
    np.testing.assert_array_equal(to_numpy(w), [[0.0, 1.0]])
    dq, dk, dv = attention_backward(q, k, v, put([[1.0]]))
    np.testing.assert_array_equal(to_numpy(dv), [[0.0], [1.0]])
    np.testing.assert_array_equal(to_numpy(dq), [[0.0]])
    np.testing.assert_array_equal(to_numpy(dk), [[0.0], [0.0]])
    # The exact maximum, both signs, K = 2: scores 0, 2 MAX^2 and -2 MAX^2.
    q, k = put([[MAX, -MAX]]), put([[MAX, MAX], [MAX, -MAX], [-MAX, MAX]])
    out, w = scaled_dot_product_attention(q, k, put(np.eye(3)), return_weights=True, scale=1.0)
    np.testing.assert_array_equal(to_numpy(w), [[0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(to_numpy(out), [[0.0, 1.0, 0.0]])


def _exact_scores(q, k, scale):
    """scale q k^T in exact rational arithmetic (float64 entries convert exactly)."""
    fs = Fraction(scale)
    return [[fs * sum(Fraction(float(a)) * Fraction(float(b)) for a, b in zip(qi, kj)) for kj in k] for qi in q]


def _error_bound(q, k, scale):
    """Per query row, a bound on the absolute error of float64 scores: a few roundings of
    |scale| sum |q||k| plus underflow below the normal range, at the scale of the largest
    operands (the scores come from q and k rescaled by powers of 2 when they are huge)."""
    kw = len(q[0])
    aq, ak = max(abs(Fraction(float(x))) for x in q.flat), max(abs(Fraction(float(x))) for x in k.flat)
    fs, tiny = abs(Fraction(scale)), Fraction(1, 2**1070)
    bounds = []
    for qi in q:
        big = max(sum(abs(Fraction(float(a)) * Fraction(float(b))) for a, b in zip(qi, kj)) for kj in k)
        bounds.append((kw + 4) * (fs * big / 2**50 + (fs * aq * ak + ak + 1) * tiny))
    return bounds


def _exact_reference(scores, v, d_out, scale, q, k):
    """``(out, dq, dk, dv)`` in float64 (inf beyond the range): the softmax and its gradient
    written out in mpmath at 60 digits, with the score differences taken exactly (Fractions)
    before they are rounded. Not the complex step of numerics.reference, whose fixed step
    h = 2^-110 becomes |scale k| h in the scores: far too large for huge inputs."""
    import mpmath

    n, m = len(scores), len(scores[0])
    with mpmath.workdps(60):
        mp = lambda f: mpmath.mpf(f.numerator) / f.denominator  # noqa: E731
        w = [[1 / mpmath.fsum(mpmath.exp(mp(scores[i][l] - scores[i][j])) for l in range(m)) for j in range(m)]
             for i in range(n)]
        vv, dd = [[mpmath.mpf(float(x)) for x in row] for row in v], [[mpmath.mpf(float(x)) for x in row] for row in d_out]
        qq, kk = [[mpmath.mpf(float(x)) for x in row] for row in q], [[mpmath.mpf(float(x)) for x in row] for row in k]
        fs = mpmath.mpf(scale)
        vw, kw = len(v[0]), len(q[0])
        out = [[mpmath.fsum(w[i][j] * vv[j][c] for j in range(m)) for c in range(vw)] for i in range(n)]
        d_a = [[mpmath.fsum(dd[i][c] * vv[j][c] for c in range(vw)) for j in range(m)] for i in range(n)]
        delta = [mpmath.fsum(w[i][j] * d_a[i][j] for j in range(m)) for i in range(n)]
        d_s = [[w[i][j] * (d_a[i][j] - delta[i]) for j in range(m)] for i in range(n)]
        dq = [[fs * mpmath.fsum(d_s[i][j] * kk[j][t] for j in range(m)) for t in range(kw)] for i in range(n)]
        dk = [[fs * mpmath.fsum(d_s[i][j] * qq[i][t] for i in range(n)) for t in range(kw)] for j in range(m)]
        dv = [[mpmath.fsum(w[i][j] * dd[i][c] for i in range(n)) for c in range(vw)] for j in range(m)]
        tofloat = lambda rows: np.array([[float(x) if abs(x) <= MAX else math.copysign(math.inf, x) for x in r] for r in rows])  # noqa: E731
        return tuple(tofloat(a) for a in (out, dq, dk, dv))


def _float(x: Fraction) -> float:
    """A non-negative Fraction as a float, 1e300 for anything larger (a vacuous tolerance)."""
    return float(min(x, Fraction(10**300)))


finite = st.floats(min_value=-MAX, max_value=MAX, allow_nan=False, allow_infinity=False)
entries = st.one_of(finite, st.sampled_from([MAX, -MAX, 1e308, -1e308, 9e307, 0.0, 1.0, -1.0]))
scales = st.one_of(
    st.sampled_from([1.0, -1.0, 0.5, 0.7071067811865476, 3.0]),
    st.floats(min_value=1e-300, max_value=1e300),
    st.floats(min_value=-1e300, max_value=-1e-300),
)


@SETTINGS
@given(data=st.data())
def test_attention_of_any_finite_magnitude_forward_and_backward(data):
    """q and k entries anywhere in float64's range (the exact maximum included).

    Exact argument, per query row: the float scores are within ``d`` (see _error_bound) of
    the exact ones, so a key whose exact score is more than ``2 d + 1600`` below the row's
    best gets weight exactly 0 (exp(-800) is 0 in float64, as the exact weight is to 1e-347),
    and a row where that holds for every key but a unique best is exactly one-hot: output =
    that value row, and it contributes exactly 0 to dq and dk. Rows whose error bound is
    small are compared with the mpmath reference, forward and backward. Everywhere: no error
    from the forward, finite weights summing to 1; the backward finite, or an overflow
    error only when an exact gradient is beyond the range."""
    draw = data.draw
    n, m, kw, vw = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 2))
    if draw(st.booleans()):
        q = np.array(draw(st.lists(entries, min_size=n * kw, max_size=n * kw))).reshape(n, kw)
        k = np.array(draw(st.lists(entries, min_size=m * kw, max_size=m * kw))).reshape(m, kw)
    else:
        # Extreme operands, moderate scores: q of 2^e and k of 2^-e (the mpmath comparisons).
        e = draw(st.integers(-1000, 1020))
        small = st.floats(-4, 4, allow_nan=False)
        q = np.array(draw(st.lists(small, min_size=n * kw, max_size=n * kw))).reshape(n, kw) * 2.0**e
        k = np.array(draw(st.lists(small, min_size=m * kw, max_size=m * kw))).reshape(m, kw) * 2.0**-e
    scale = draw(scales)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    v = rng.standard_normal((m, vw))
    d_out = rng.standard_normal((n, vw))

    out, w = scaled_dot_product_attention(q, k, v, scale=scale, return_weights=True)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(w)) and np.all(w >= 0)
    np.testing.assert_allclose(w.sum(axis=-1), 1.0, rtol=0, atol=4 * m * 2.0**-52)
    scores, bounds = _exact_scores(q, k, scale), _error_bound(q, k, scale)
    one_hot, good = [], []
    for i in range(n):
        best = max(scores[i])
        far = [best - s > 2 * bounds[i] + 1600 for s in scores[i]]
        for j in range(m):
            if far[j]:
                assert w[i, j] == 0, (i, j, w)
        tops = [j for j in range(m) if scores[i][j] == best]
        one_hot.append(len(tops) == 1 and sum(far) == m - 1)
        if one_hot[-1]:
            np.testing.assert_array_equal(w[i], np.eye(m)[tops[0]])
            np.testing.assert_array_equal(out[i], v[tops[0]])
        good.append(bounds[i] < Fraction(1, 10**6))
    ref_out, rdq, rdk, rdv = _exact_reference(scores, v, d_out, scale, q, k)
    for i in range(n):
        if good[i]:
            tol = (m * (3 * _float(bounds[i]) + 1e-14) + 1e-14) * np.abs(v).max()
            np.testing.assert_allclose(out[i], ref_out[i], rtol=0, atol=tol)
    conditioned = all(g or h for g, h in zip(good, one_hot))
    event(f"one-hot rows: {sum(one_hot)}/{n}, compared with mpmath: {sum(good)}/{n}")

    try:
        dq, dk, dv = attention_backward(q, k, v, d_out, scale=scale)
    except ValueError as exc:
        assert "overflowed" in str(exc)
        event("backward: overflow error")
        assert not all(one_hot), "a one-hot problem has gradients 0 and A^T dO"
        if conditioned:
            # The exact gradient, or the rounding of dS (eps |dA|) that scale k and scale q
            # magnify in any float evaluation of dq = scale dS k, dk = scale dS^T q, is beyond the range.
            d_a = float(np.abs(d_out @ v.T).max())
            noise_q = 16 * (m + vw) * 2.0**-52 * abs(scale) * d_a * m * float(np.abs(k).max())
            noise_k = 16 * (m + vw) * 2.0**-52 * abs(scale) * d_a * n * float(np.abs(q).max())
            assert max(np.abs(rdq).max() + noise_q, np.abs(rdk).max() + noise_k) > MAX / 4, "overflow error"
        return
    assert all(np.all(np.isfinite(g)) for g in (dq, dk, dv))
    np.testing.assert_allclose(dv, w.T @ d_out, rtol=0, atol=4 * n * 2.0**-52 * np.abs(d_out).max())
    # Scores beyond 2^20 in magnitude: the backward takes delta = rowsum(A * dA), and a one-hot
    # row's dS is then exactly 0; below, rowsum(dO * O) leaves rounding noise (as for M = 1).
    saturated = max(abs(x) for row in scores for x in row) > 2**21
    d_a = np.abs(d_out @ v.T).max(axis=-1)  # |dA| per row
    for i in range(n):
        if one_hot[i] and saturated:
            assert np.all(dq[i] == 0), (i, dq)
        elif one_hot[i]:
            noise = 8 * vw * 2.0**-52 * abs(scale) * float(np.abs(d_out[i]).sum() * np.abs(v).max()) * float(np.abs(k).max())
            assert np.all(np.abs(dq[i]) <= noise), (i, dq, noise)
    if all(one_hot) and saturated:
        assert np.all(dk == 0), dk
    if conditioned:
        worst = max(_float(b) for b in bounds)
        # dq_i = scale sum_j dS_ij k_j with |dS_ij| <= 2 w_ij |dA_i| and dS's error within
        # (a few d + rounding) |dA_i| w_ij; likewise dk. Products in Python floats (inf is vacuous).
        for i in range(n):
            tol = (20 * _float(bounds[i]) + 1e-13) * abs(scale) * m * float(d_a[i]) * float(np.abs(k).max())
            assert np.all(np.abs(dq[i] - rdq[i]) <= tol + (1 + abs(scale)) * 2.0**-1065), (i, dq, rdq)  # (+ underflow)
        tol_k = (20 * worst + 1e-13) * abs(scale) * n * float(d_a.max()) * float(np.abs(q).max())
        assert np.all(np.abs(dk - rdk) <= tol_k + (1 + abs(scale)) * 2.0**-1065), (dk, rdk)
        assert np.all(np.abs(dv - rdv) <= (20 * worst + 1e-13) * n * np.abs(d_out).max()), (dv, rdv)


@pytest.mark.parametrize("top", [8.87e307, 9e307, 1e308])
def test_mha_and_block_with_x_up_to_the_largest_float_are_finite(top):
    """The review: x with max 1e308 raised "overflowed" from multi_head_attention and
    transformer_block although the projections and the output are finite."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8))
    x *= top / np.abs(x).max()
    params = init_params(8, 2, seed=0)
    with np.errstate(over="raise"):
        q = x @ params.w_q  # the projections themselves are finite here
    assert np.all(np.isfinite(q))
    out = multi_head_attention(x, params)
    assert np.all(np.isfinite(out))
    assert np.all(np.isfinite(transformer_block(x, init_block_params(8, 2, 16, seed=0))))


@pytest.mark.parametrize("scale, qs", [(1e39, 1e-30), (1e-60, 1e25), (3e-39, 1e10), (1e-50, 1.0)])
def test_float32_with_a_scale_float32_cannot_hold(scale, qs):
    """Found on the way: scale * q formed in float32 made 1e39 inf (an "overflowed" error)
    and 1e-60 zero; with a mask, a factor of 0 gave -inf * 0 = NaN. Compared with the same
    float32 inputs computed in float64 (whose range holds both scales)."""
    rng = np.random.default_rng(7)
    q, k = (rng.standard_normal((3, 4)) * qs).astype(np.float32), (rng.standard_normal((5, 4)) * qs).astype(np.float32)
    v, d_out = rng.standard_normal((5, 2)).astype(np.float32), rng.standard_normal((3, 2)).astype(np.float32)
    mask = np.array([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=bool)
    out, w = scaled_dot_product_attention(q, k, v, mask=mask, scale=scale, return_weights=True)
    wide = [a.astype(np.float64) for a in (q, k, v)]
    ref_out, ref_w = scaled_dot_product_attention(*wide, mask=mask, scale=scale, return_weights=True)
    np.testing.assert_allclose(w, ref_w, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out, ref_out, rtol=0, atol=1e-6)
    grads = attention_backward(q, k, v, d_out, mask=mask, scale=scale)
    for g, r in zip(grads, attention_backward(*wide, d_out.astype(np.float64), mask=mask, scale=scale)):
        assert np.all(np.isfinite(g))
        # (subnormal float32 intermediates when scale * q or k is near 1e-38: 1e-3 relative)
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-3 * max(np.abs(r).max(), 1e-30))


# --------------------------------------------------------------------------- 2. scale = 0


def _uniform_loop(mask, d_out, v):
    """Exact answer for scale 0: each row averages v over its allowed keys; dq = dk = 0."""
    n, m = mask.shape
    out, dv = np.zeros((n, v.shape[1])), np.zeros_like(v)
    for i in range(n):
        keys = np.flatnonzero(mask[i])
        if keys.size:
            out[i] = v[keys].mean(axis=0)
            dv[keys] += d_out[i] / keys.size
    return out, dv


@pytest.mark.parametrize("scale", [0, 0.0, -0.0, np.float64(0.0)])
@pytest.mark.parametrize("causal", [False, True])
def test_scale_zero_is_uniform_attention_over_allowed_keys(xp, scale, causal):
    rng = np.random.default_rng(5)
    q, k, v = rng.standard_normal((3, 4)) * 1e300, rng.standard_normal((5, 4)) * 1e300, rng.standard_normal((5, 2))
    mask = rng.random((3, 5)) < 0.6
    mask[1] = False  # a fully masked row: still 0
    d_out = rng.standard_normal((3, 2))
    allowed = mask & (np.tril(np.ones((3, 5), dtype=bool)) if causal else True)
    put = lambda a: from_numpy(xp, a)  # noqa: E731
    out, w = scaled_dot_product_attention(put(q), put(k), put(v), mask=put(mask), causal=causal, scale=scale, return_weights=True)
    ref_out, ref_dv = _uniform_loop(allowed, d_out, v)
    np.testing.assert_allclose(to_numpy(out), ref_out, rtol=1e-15, atol=1e-15)
    counts = allowed.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(to_numpy(w), np.where(allowed, 1 / np.maximum(counts, 1), 0.0), rtol=1e-15)
    dq, dk, dv = attention_backward(put(q), put(k), put(v), put(d_out), mask=put(mask), causal=causal, scale=scale)
    np.testing.assert_array_equal(to_numpy(dq), 0.0)  # exactly 0, never 0 * inf with k of 1e300
    np.testing.assert_array_equal(to_numpy(dk), 0.0)
    np.testing.assert_allclose(to_numpy(dv), ref_dv, rtol=1e-14, atol=1e-15)


def test_scale_zero_matches_torch_sdpa_and_autograd():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    q, k, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 2))
    d_out = rng.standard_normal((2, 3, 2))
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    t_out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True, scale=0.0)
    t_out.backward(torch.tensor(d_out))
    out = scaled_dot_product_attention(q, k, v, causal=True, scale=0.0)
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-14, atol=1e-15)
    for mine, theirs in zip(attention_backward(q, k, v, d_out, causal=True, scale=0.0), (tq, tk, tv)):
        np.testing.assert_allclose(mine, theirs.grad.numpy(), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("scale, exc", [(math.nan, ValueError), (math.inf, ValueError), (-math.inf, ValueError),
                                        (True, TypeError), (False, TypeError), (np.False_, TypeError)])
def test_scale_still_rejects_non_finite_and_bools(scale, exc):
    q = np.ones((2, 3))
    with raises(exc, "scale"):
        scaled_dot_product_attention(q, q, q, scale=scale)
    with raises(exc, "scale"):
        attention_backward(q, q, q, q, scale=scale)


# --------------------------------------------------------------------------- 3. devices


@pytest.fixture
def strict():
    xs = pytest.importorskip("array_api_strict")
    return xs, xs.Device("device1")


def test_mixed_devices_are_an_error_naming_both_arguments(strict):
    xs, d1 = strict
    f64 = xs.float64
    q1 = xs.ones((3, 4), dtype=f64, device=d1)
    k, v = xs.ones((5, 4), dtype=f64), xs.ones((5, 2), dtype=f64)
    with raises(ValueError, "different devices", "q is on", "device1", "k is on", "CPU_DEVICE"):
        scaled_dot_product_attention(q1, k, v)
    q, k1 = xs.ones((3, 4), dtype=f64), xs.ones((5, 4), dtype=f64, device=d1)
    with raises(ValueError, "q is on", "k is on", "device1"):
        attention_backward(q, k1, v, xs.ones((3, 2), dtype=f64))
    with raises(ValueError, "v is on", "device1"):
        scaled_dot_product_attention(q, k, xs.ones((5, 2), dtype=f64, device=d1))
    with raises(ValueError, "mask is on", "device1"):
        scaled_dot_product_attention(q, k, v, mask=xs.ones((3, 5), dtype=xs.bool, device=d1))
    with raises(ValueError, "d_out is on", "device1"):
        attention_backward(q, k, v, xs.ones((3, 2), dtype=f64, device=d1))
    with raises(ValueError, "x is on", "mask is on", "device1"):
        softmax(xs.ones((3, 5), dtype=f64), mask=xs.ones((3, 5), dtype=xs.bool, device=d1))
    # On one device (not the default): it works, and the result stays there.
    out = scaled_dot_product_attention(q1, k1, xs.ones((5, 2), dtype=f64, device=d1), causal=True)
    assert out.device == d1


def test_mha_with_params_on_another_device_names_the_param_field(strict):
    xs, d1 = strict
    params = init_params(4, 2, seed=0, xp=xs)
    x = xs.ones((3, 4), dtype=xs.float64, device=d1)
    with raises(ValueError, "different devices", "x is on", "device1", "params.w_q is on"):
        multi_head_attention(x, params)
    with raises(ValueError, "params.w_q is on"):
        multi_head_attention_backward(x, params, xs.ones((3, 4), dtype=xs.float64, device=d1))


def test_numpy_arrays_skip_the_device_lookup(monkeypatch):
    """NumPy arrays are all on the CPU: namespace_of does not ask array_api_compat for their
    device, so the check costs NumPy callers nothing."""
    import array_api_compat

    def fail(x):
        raise AssertionError("device() called for NumPy arrays")

    monkeypatch.setattr(array_api_compat, "device", fail)
    q = np.ones((3, 4))
    assert numerics._backend.namespace_of(q=q, k=q, v=q) is not None
    out = scaled_dot_product_attention(q, q, np.ones((3, 2)))
    np.testing.assert_allclose(out, 1.0)


def test_reference_accepts_scale_zero_like_the_array_code():
    """scale = 0 makes every score 0: uniform weights, so the output is the mean of v's rows."""
    from numerics import reference

    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((3, 2)), rng.standard_normal((4, 2)), rng.standard_normal((4, 3))
    out = np.asarray(reference.attention(q, k, v, scale=0), dtype=np.float64)
    np.testing.assert_allclose(out, np.broadcast_to(v.mean(axis=0), (3, 3)), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="scale"):
        reference.attention(q, k, v, scale=float("nan"))
