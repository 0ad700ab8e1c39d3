"""The softcap derivation: the right slope passes; a slope without the tanh^2 term, or a wrong power, fails."""

from __future__ import annotations

import pytest
import sympy as sp

from proofs.derivation import DerivationError
from proofs.derivations import softcap as sc


def test_softcap_derivation_is_valid():
    d = sc.softcap_chain_rule()
    assert d.valid and d.unjustified() == []
    assert max(d.results["max_abs_difference"].values()) <= sc.NUMERIC_TOL


@pytest.mark.parametrize("name, slope", [
    ("no tanh^2 term", lambda t, c: 1),
    ("first power", lambda t, c: 1 - t / c),
    ("missing 1/c", lambda t, c: 1 - t**2),
])
def test_wrong_slope_fails_the_derivation(name, slope):
    d = sc.build_softcap_derivation(slope)
    failed = {r.index for r in d.check() if not r.passed}
    assert {3, 7, 11} <= failed, (name, failed)
    with pytest.raises(DerivationError):
        d.outcome()


def test_numeric_comparison_catches_the_identity_slope():
    worst = sc.numeric_comparison(lambda t, c: 1.0)
    assert worst["grads_vs_capped_bias"] > 1e-2
    assert worst["sympy_vs_numerics"] <= 1e-12  # numerics itself is right


def test_limit_and_series_checks_can_fail():
    ok, _ = sc._limit(sc._c * sp.tanh(sc._s / sc._c), 2 * sc._s)()
    assert not ok
    assert sc._limit(sc._c * sp.tanh(sc._s / sc._c), sc._s)()[0]
