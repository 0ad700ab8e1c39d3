"""Rotary embedding (both styles) and ALiBi, forward and backward.

References written independently of numerics.positional: RoPE as multiplication of complex
numbers ``(a + i b) e^(i pos theta^(-2j/K))`` with the two pairings spelled out, in
mpmath; ALiBi slopes from the paper's reference ``get_slopes`` (ofirpress/
attention_with_linear_biases, fairseq/models/transformer.py), transcribed below. Each
check is paired with a wrong variant (the other pairing, the other alignment) that the
same comparison must reject.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

from numerics import (
    alibi_bias,
    alibi_slopes,
    reference,
    rotary_embedding,
    rotary_embedding_backward,
    scaled_dot_product_attention,
)
from tests.helpers import assert_gradcheck, from_numpy, numerical_gradient, relative_error, to_numpy

STYLES = ["half", "interleaved"]


def rope_mp(x, positions, theta, style):
    """RoPE in mpmath (50 digits) as complex multiplication; float64 result."""
    x = np.asarray(x, dtype=np.float64)
    k = x.shape[-1]
    half = k // 2
    out = np.empty_like(x)
    with mpmath.workdps(50):
        for idx in np.ndindex(*x.shape[:-1]):
            pos = mpmath.mpf(float(np.broadcast_to(positions, x.shape[:-1])[idx]))
            row = x[idx]
            for j in range(half):
                a_i, b_i = (j, j + half) if style == "half" else (2 * j, 2 * j + 1)
                z = mpmath.mpc(row[a_i], row[b_i]) * mpmath.expjpi(pos * mpmath.mpf(theta) ** (-mpmath.mpf(2 * j) / k) / mpmath.pi)
                out[idx + (a_i,)] = float(z.real)
                out[idx + (b_i,)] = float(z.imag)
    return out


@pytest.mark.parametrize("style", STYLES)
def test_rope_matches_complex_multiplication_in_mpmath(xp, style):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 6))
    positions = np.arange(5)
    ref = rope_mp(x, positions, 10000.0, style)
    ours = to_numpy(rotary_embedding(from_numpy(xp, x), style=style))
    # The angles pos * theta^(-2j/K) (< 5) are formed in float64: a few ulps of the angle.
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-14)
    other = "interleaved" if style == "half" else "half"
    wrong = to_numpy(rotary_embedding(from_numpy(xp, x), style=other))
    assert np.max(np.abs(wrong - ref)) > 1e-2  # the other pairing is caught
    # Explicit positions, broadcast per batch entry; theta changes the answer.
    pos = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    ref = rope_mp(x, pos, 500.0, style)
    ours = to_numpy(rotary_embedding(from_numpy(xp, x), from_numpy(xp, pos), theta=500.0, style=style))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-13)
    assert np.max(np.abs(to_numpy(rotary_embedding(from_numpy(xp, x), from_numpy(xp, pos), style=style)) - ref)) > 1e-3


@pytest.mark.parametrize("style", STYLES)
def test_rope_is_a_rotation_and_scores_depend_on_position_differences(style):
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((4, 8)), rng.standard_normal((4, 8))
    rq = rotary_embedding(q, np.array([0, 3, 7, 20]), style=style)
    np.testing.assert_allclose(np.linalg.norm(rq, axis=-1), np.linalg.norm(q, axis=-1), rtol=1e-14)
    # <R(m) q, R(n) k> depends on m - n only.
    for shift in (1, 13, 1000):
        a = rotary_embedding(q, np.array([5, 6, 7, 8]), style=style) @ rotary_embedding(k, np.array([2, 2, 2, 2]), style=style).T
        b = rotary_embedding(q, np.array([5, 6, 7, 8]) + shift, style=style) @ rotary_embedding(k, np.array([2, 2, 2, 2]) + shift, style=style).T
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    # Different position differences do give different scores (the check can fail).
    c = rotary_embedding(q, np.array([5, 6, 7, 8]), style=style) @ rotary_embedding(k, np.array([3, 3, 3, 3]), style=style).T
    assert np.max(np.abs(a - c)) > 1e-3


@pytest.mark.parametrize("style", STYLES)
def test_rope_backward_matches_finite_differences_and_inverts_the_rotation(xp, style):
    rng = np.random.default_rng(2)
    x, d_out = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    pos = np.array([2.5, 7.0, 11.0])
    numeric = numerical_gradient(lambda x: rotary_embedding(x, pos, style=style), {"x": x}, d_out)["x"]
    ours = rotary_embedding_backward(from_numpy(xp, d_out), from_numpy(xp, pos), style=style)
    assert_gradcheck(ours, numeric, name="dx")
    # The embedding is orthogonal: its backward undoes it.
    back = rotary_embedding_backward(rotary_embedding(from_numpy(xp, x), from_numpy(xp, pos), style=style),
                                     from_numpy(xp, pos), style=style)
    np.testing.assert_allclose(to_numpy(back), x, rtol=0, atol=1e-14)
    # The forward rotation used as its own backward is wrong: rejected.
    with pytest.raises(AssertionError):
        assert_gradcheck(rotary_embedding(d_out, pos, style=style), numeric, name="dx")


def test_rope_float32_and_half_keep_the_dtype(xp):
    x = np.random.default_rng(3).standard_normal((3, 4))
    ref = rope_mp(x.astype(np.float32), np.arange(3), 10000.0, "half")
    for name in ("float32", "float16"):
        if not hasattr(xp, name):
            continue
        dtype = getattr(xp, name)
        out = rotary_embedding(xp.astype(from_numpy(xp, x), dtype))
        assert out.dtype == dtype
        u = 2.0**-24 if name == "float32" else 2.0**-11
        # cos, sin rounded once to float32, the rotation in float32, the result rounded: a few u.
        assert relative_error(to_numpy(xp.astype(out, xp.float64)), rope_mp(to_numpy(xp.astype(xp.astype(from_numpy(xp, x), dtype), xp.float64)), np.arange(3), 10000.0, "half")) <= 4 * u
    assert ref.shape == (3, 4)


@pytest.mark.parametrize(
    "call, exc, words",
    [
        (lambda: rotary_embedding(np.ones((3, 5))), ValueError, ["K of x must be even", "(3, 5)"]),
        (lambda: rotary_embedding_backward(np.ones((3, 5))), ValueError, ["K of d_out must be even"]),
        (lambda: rotary_embedding(np.ones((3, 4)), style="neox"), ValueError, ["style", "'neox'", "half", "interleaved"]),
        (lambda: rotary_embedding(np.ones((3, 4)), theta=0.0), ValueError, ["theta", "> 0"]),
        (lambda: rotary_embedding(np.ones((3, 4)), theta="1e4"), TypeError, ["theta", "str"]),
        (lambda: rotary_embedding(np.ones((3, 4)), np.arange(4)), ValueError, ["positions", "(3,)", "(4,)"]),
        (lambda: rotary_embedding(np.ones((3, 4)), np.ones(3, dtype=bool)), TypeError, ["positions", "bool"]),
        (lambda: rotary_embedding(np.ones((3, 4)), np.array([0.0, np.nan, 1.0])), ValueError, ["positions", "NaN"]),
        (lambda: rotary_embedding(np.ones(4)), ValueError, ["x", "at least 2"]),
        (lambda: rotary_embedding(np.ones((3, 4), dtype=np.int64)), TypeError, ["x", "floating"]),
        (lambda: alibi_slopes(0), ValueError, ["num_heads", "positive"]),
        (lambda: alibi_bias(2, 3, -1), ValueError, ["m", "non-negative"]),
        (lambda: alibi_bias(2, 3, 3, causal="bottom"), ValueError, ["causal", "'bottom_right'"]),
    ],
)
def test_positional_errors_name_the_argument(call, exc, words):
    with pytest.raises(exc) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


# --------------------------------------------------------------------------- ALiBi


def paper_get_slopes(n):
    """The ALiBi paper's reference code (ofirpress/attention_with_linear_biases), transcribed."""

    def get_slopes_power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return get_slopes_power_of_2(closest_power_of_2) + paper_get_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2]


@pytest.mark.parametrize("h", list(range(1, 34)) + [48, 64, 96])
def test_alibi_slopes_are_the_papers(h):
    ours = alibi_slopes(h)
    # The reference's running product start * ratio**i may differ in the last bits.
    np.testing.assert_allclose(ours, paper_get_slopes(h), rtol=1e-14, atol=0)


def test_alibi_slopes_known_values_and_a_wrong_rule_is_caught():
    assert alibi_slopes(8) == [2.0**-i for i in range(1, 9)]  # the paper's 1/2 ... 1/256
    np.testing.assert_allclose(alibi_slopes(4), [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8])
    # 12 heads: the 8 geometric slopes, then every other one of the 16-head sequence.
    np.testing.assert_allclose(alibi_slopes(12)[8:], [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5])
    # A naive geometric sequence for 12 heads (2^(-8h/12)) is not the paper's.
    naive = [2.0 ** (-8.0 * i / 12) for i in range(1, 13)]
    assert np.max(np.abs(np.array(naive) - paper_get_slopes(12))) > 1e-2


@pytest.mark.parametrize("causal", [False, True, "top_left", "bottom_right"])
def test_alibi_bias_is_minus_slope_times_distance(xp, causal):
    h, n, m = 3, 4, 6
    bias = to_numpy(alibi_bias(h, n, m, causal=causal, xp=xp))
    assert bias.shape == (h, n, m) and bias.dtype == np.float64
    delta = m - n if causal == "bottom_right" else 0
    slopes = paper_get_slopes(h)
    for hh in range(h):
        for i in range(n):
            for j in range(m):
                assert bias[hh, i, j] == pytest.approx(-slopes[hh] * abs(j - i - delta), rel=1e-14, abs=0)
    assert np.all(np.signbit(bias[bias == 0]) == False)  # noqa: E712 - +0, not -0


def test_alibi_alignment_matters_and_float32_dtype(xp):
    a = to_numpy(alibi_bias(2, 2, 5, causal="top_left", xp=xp))
    b = to_numpy(alibi_bias(2, 2, 5, causal="bottom_right", xp=xp))
    assert np.max(np.abs(a - b)) > 0.1
    assert alibi_bias(2, 2, 5, xp=xp, dtype="float32").dtype == xp.float32


def test_alibi_in_attention_matches_reference_with_the_papers_bias():
    """ALiBi as a bias: causal bottom-right attention with the bias, against mpmath with the
    bias built from the paper's slopes in the test."""
    rng = np.random.default_rng(4)
    q, k, v = rng.standard_normal((1, 3, 2, 2)), rng.standard_normal((1, 3, 4, 2)), rng.standard_normal((1, 3, 4, 2))
    ours = scaled_dot_product_attention(q, k, v, bias=alibi_bias(3, 2, 4, causal="bottom_right"), causal="bottom_right")
    slopes = np.array(paper_get_slopes(3))[:, None, None]
    distance = np.abs(np.arange(4)[None, :] - np.arange(2)[:, None] - 2)
    ref = reference.to_float64(reference.attention(q, k, v, bias=-slopes * distance, causal="bottom_right"))
    assert relative_error(ours, ref) < 1e-12
