"""Quantities the derivations compute, which claim checks quote: GELU bound, op counts, counts."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

from proofs.derivations import gelu_tanh_error, multihead_identities, qk_variance, softmax_jacobian
from proofs.derivations.gelu import certify_gelu_tanh_error
from proofs.derivations.multihead import count_operations, d_, h_, n_, operation_counts


def test_gelu_certificate():
    c = certify_gelu_tanh_error()
    assert 4.7323e-4 < c.lower <= c.upper < 4.7325e-4
    assert c.upper - c.lower <= 1.01e-9
    assert c.argmax == pytest.approx(2.69894, abs=1e-4)
    assert c.err_at_argmax < 0  # the tanh formula overshoots x Phi(x) there
    assert c.tail_bound < 1e-8
    assert c.secondary_max[0] == pytest.approx(1.3645, abs=1e-3) and c.secondary_max[1] < c.lower
    d = gelu_tanh_error()
    lo, hi = d.results["certified_interval"]
    assert lo <= c.lower and c.upper <= hi and hi - lo < 2e-9


def test_gelu_certificate_restores_mpmath_precision():
    before = (mpmath.mp.prec, mpmath.iv.prec)
    certify_gelu_tanh_error.__wrapped__(6, "1e-7")  # uncached run
    assert (mpmath.mp.prec, mpmath.iv.prec) == before


def test_gelu_bound_against_a_dense_float_grid():
    from scipy.special import erf

    x = np.linspace(-8, 8, 400001)
    err = x / 2 * (erf(x / np.sqrt(2)) - np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    c = certify_gelu_tanh_error()
    assert np.max(np.abs(err)) <= c.upper
    assert np.max(np.abs(err)) >= c.lower - 1e-11  # the grid comes within its spacing of the max


@pytest.mark.parametrize("n,d,h", [(2, 4, 2), (5, 6, 3), (3, 8, 8)])
def test_operation_polynomials_match_instrumented_counts(n, d, h):
    counts = operation_counts(d_k=d_ / h_, d_v=d_ / h_)
    got, _, _ = count_operations(n, d, h)
    for key, value in got.items():
        assert counts[key].subs({n_: n, d_: d, h_: h}) == value


def test_multihead_results_say_which_terms_depend_on_h():
    r = multihead_identities().results
    assert r["h_dependent_terms"]["multiplications"] == "h*n**2"
    assert r["total_operations"] == "8*d**2*n + 4*d*n**2 - 5*d*n + 3*h*n**2 - h*n"
    assert set(r["table3_rows_A"].values()) == {4 * 512**2 + 4 * 512}


def test_result_fields_for_claim_checks():
    assert softmax_jacobian().results["spectral_norm_bound"] == "1/2"
    assert "d_k" in qk_variance().results["variance"]
