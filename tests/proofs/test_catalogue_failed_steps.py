"""A failed step of the toolkit's own proof is a defect, never a verdict.

Before this file, checks built as ``Verdict.PROVED if steps.ok else Verdict.REFUTED`` turned a
step SymPy could not verify into REFUTED with no counterexample, Corolário 4's check turned it
into SUPPORTED with no interval, and seed 001's FFN check fell back to SUPPORTED without a
statistic. Each test below shows the check passing on the real inputs and, on a wrong input,
refusing to give a verdict (``Claim.run`` then records a crash) instead of a fabricated one.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from proofs.catalogue import seed_001, seed_003
from proofs.catalogue._derivations import derivation as real_derivation
from proofs.catalogue._kit import StepFailed, equal, proof, proved, steps_evidence
from proofs.claims import Claim, Method, Source, Verdict


def _steps(ok: bool):
    x = sp.Symbol("x")
    steps = [equal((x + 1) ** 2, x**2 + 2 * x + 1, "binomial")]
    if not ok:
        steps.append(equal((x + 1) ** 2, x**2 + 1, "wrong binomial"))
    return proof("test", steps)


def test_proved_helper_proves_raises_or_refutes_with_a_counterexample():
    good = _steps(True)
    assert proved(good, Method.SYMBOLIC, [steps_evidence(good, "s")]).verdict is Verdict.PROVED
    bad = _steps(False)
    with pytest.raises(StepFailed, match="wrong binomial"):
        proved(bad, Method.SYMBOLIC, [steps_evidence(bad, "s")])
    outcome = proved(bad, Method.NUMERIC, [steps_evidence(bad, "s")], refuted_by_failure=True)
    assert outcome.verdict is Verdict.REFUTED
    assert outcome.evidence[0].kind == "counterexample" and "wrong binomial" in outcome.evidence[0].summary


def test_a_failed_variance_step_crashes_instead_of_refuting(monkeypatch):
    assert seed_003.check_dot_product_variance().verdict is Verdict.PROVED
    real = seed_003._variance_facts()
    monkeypatch.setattr(seed_003, "_variance_facts", lambda: {**real, "standard": 2 * real["d_k"]})
    with pytest.raises(StepFailed, match="Var"):
        seed_003.check_dot_product_variance()
    claim = Claim("t.var", "t", Source("doc", "Teorema 6"), "$x$", [seed_003.check_dot_product_variance])
    result = claim.run()
    assert result.verdict is None and "StepFailed" in result.error


def test_corolario_4_check_never_supports_the_document_without_statistics(monkeypatch):
    assert seed_003.check_gradient_growth().verdict is Verdict.REFUTED
    # a Jacobian norm that grows like exp(||s||) makes the exact steps fail: the old code answered
    # SUPPORTED; now the check refuses to give a verdict
    real = seed_003._gradient_facts()
    monkeypatch.setattr(seed_003, "_gradient_facts", lambda: {**real, "jac_norm": sp.exp(real["t"]) / 2})
    with pytest.raises(StepFailed, match="largest eigenvalue"):
        seed_003.check_gradient_growth()
    # the same for the gradient in the query
    monkeypatch.setattr(seed_003, "_gradient_facts", lambda: {**real, "grad_q_norm": sp.exp(real["t"])})
    with pytest.raises(StepFailed, match="gradient in the query"):
        seed_003.check_gradient_growth()


def test_ffn_example_without_its_certified_bound_gives_no_supported_verdict(monkeypatch):
    assert seed_001.check_example_ffn_code().verdict is Verdict.SUPPORTED

    def missing(name):
        return (None, real_derivation("gelu-tanh-error")[1]) if name == "gelu-tanh-error" else real_derivation(name)

    monkeypatch.setattr(seed_001, "derivation", missing)
    with pytest.raises(RuntimeError, match="grid check alone"):
        seed_001.check_example_ffn_code()


def test_document_code_checks_still_refute_with_their_failed_step(monkeypatch):
    """Where the steps run the document's own code, a failed step *is* the counterexample."""
    assert seed_001.check_example_projection_shapes().verdict is Verdict.SUPPORTED
    real_run = seed_001._run_example

    def wrong_width(line):
        start, ns = real_run(line)
        ns = dict(ns)
        ns["v_i"] = np.append(ns["v_i"], 0.0)  # a v_i one entry too wide
        return start, ns

    monkeypatch.setattr(seed_001, "_run_example", wrong_width)
    outcome = seed_001.check_example_projection_shapes()
    assert outcome.verdict is Verdict.REFUTED and outcome.evidence[0].kind == "counterexample"
