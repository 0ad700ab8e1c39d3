"""RoPE and ALiBi derivations: the right conventions pass; wrong pairings and wrong slopes fail."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from proofs.derivation import DerivationError
from proofs.derivations import alibi as al
from proofs.derivations import rope


def failed(d) -> set[int]:
    return {r.index for r in d.check() if not r.passed}


# --------------------------------------------------------------------------- RoPE


def test_rope_derivation_is_valid():
    d = rope.rotary_embedding_derivation()
    assert d.valid and d.unjustified() == []
    assert max(d.results["max_abs_difference"].values()) <= rope.NUMERIC_TOL


def _swapped(k, style):
    return rope.pairs(k, "interleaved" if style == "half" else "half")


def _overlapping(k, style):
    return [(i, i + 1) for i in range(k // 2)]  # pairs share coordinates for K >= 4


def test_swapped_layouts_are_caught_only_by_the_numeric_comparison():
    """Any perfect pairing is a rotation: the symbolic lines pass, numerics pins the names."""
    d = rope.build_rope_derivation(_swapped)
    assert failed(d) == {9}
    assert rope.numeric_comparison(_swapped)["forward"] > 1e-2
    with pytest.raises(DerivationError):
        d.outcome()


def test_overlapping_pairs_are_not_a_rotation():
    d = rope.build_rope_derivation(_overlapping)
    assert {4, 5, 9} <= failed(d), failed(d)
    r = rope.rope_matrix(4, sp.Symbol("p", real=True), "half", pairing=_overlapping)
    assert any(x != 0 for x in (r.T * r - sp.eye(4)).applyfunc(rope.trig_reduce))


def test_pairs_and_matrix_conventions():
    assert rope.pairs(6, "half") == [(0, 3), (1, 4), (2, 5)]
    assert rope.pairs(6, "interleaved") == [(0, 1), (2, 3), (4, 5)]
    with pytest.raises(ValueError, match="style"):
        rope.pairs(4, "rotate")
    with pytest.raises(ValueError, match="even"):
        rope.pairs(5, "half")
    r = rope.rope_matrix(4, 1, "half", theta=100)
    angle0, angle1 = 1, sp.Integer(100) ** sp.Rational(-1, 2)
    assert r[0, 0] == sp.cos(angle0) and r[0, 2] == -sp.sin(angle0) and r[1, 3] == -sp.sin(angle1)


def test_mixed_layouts_counterexample_and_its_control():
    ok, note = rope._mixed_layouts()
    assert ok, note
    theta, q, k = sp.Integer(10), sp.Matrix([1, 2, -1, 3]), sp.Matrix([2, -1, 1, 3])
    same = [((rope.rope_matrix(4, m, "half", theta) * q).T * (rope.rope_matrix(4, m + 1, "half", theta) * k))[0]
            for m in (0, 5)]
    assert abs(sp.N(same[0] - same[1], 30)) < 1e-25  # one layout for both: relative


# --------------------------------------------------------------------------- ALiBi


def test_alibi_derivation_is_valid():
    d = al.alibi_bias_derivation()
    assert d.valid and d.unjustified() == []
    worst = d.results["max_difference"]
    assert worst["slopes_vs_numerics_ulp"] <= 1 and worst["bias"] <= al.NUMERIC_TOL


def _geometric_always(h):
    return [sp.Integer(2) ** sp.Rational(-8 * j, h) for j in range(1, h + 1)]


def _wrong_interpolation(h):  # every other slope of 2P heads, but the odd ones (index 2m + 1)
    p = 1 << (h.bit_length() - 1)
    return ([sp.Integer(2) ** sp.Rational(-8 * j, p) for j in range(1, p + 1)]
            + [sp.Integer(2) ** sp.Rational(-8 * (2 * m + 2), 2 * p) for m in range(h - p)])


@pytest.mark.parametrize("rule", [_geometric_always, _wrong_interpolation])
def test_wrong_slope_rules_fail(rule):
    d = al.build_alibi_derivation(rule)
    assert {6, 7, 12} <= failed(d), failed(d)


def test_paper_code_transcription():
    assert al.paper_get_slopes(8) == [2.0 ** -(j + 1) for j in range(8)]
    six = al.paper_get_slopes(6)
    assert six[:4] == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]
    np.testing.assert_allclose(six[4:], [2.0**-1, 2.0**-3], rtol=1e-15)
    assert [float(x) for x in al.slopes_closed_form(6)] == pytest.approx(six, rel=1e-15)


def test_causal_rows_check_fails_for_the_wrong_sign():
    a = sp.Symbol("a", positive=True)
    s = sp.symbols("s_1:4", real=True)
    alibi = al._softmax([s[j] + a * abs(j - 2) for j in range(3)])  # +|j - i|: wrong sign
    linear = al._softmax([s[j] + a * j for j in range(3)])
    from proofs.derivation import is_zero

    assert not is_zero([sp.expand(x - y) for x, y in zip(alibi, linear)])[0]
    assert is_zero(al._causal_rows(3, 3))[0]  # the right sign
