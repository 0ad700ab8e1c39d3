"""Every displayed line carries a tag, and no line is taken on trust without saying so (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from proofs.derivation import Checker, Cited, Custom, Definition, Derivation, Step
from proofs.derivations import DERIVATIONS
from proofs.derivations import softmax
from proofs.latex import render

x = sp.Symbol("x")


@pytest.fixture(scope="module", params=list(DERIVATIONS))
def derivation(request) -> Derivation:
    return DERIVATIONS[request.param]()


def test_no_line_is_taken_on_trust(derivation):
    assert derivation.unjustified() == []


def test_every_rendered_line_has_a_tag(derivation):
    rows = render(derivation).split(" \\\\\n")
    assert len(rows) == len(derivation.steps)
    for row, result in zip(rows, derivation.check()):
        assert r"\quad [" in row, row
        if result.kind == "cited":
            assert "NOT CHECKED" in row or "not checked in general" in row


def _one_line(step: Step) -> Derivation:
    return Derivation("t", "t", "-", [Step(x**2 - 1, (x - 1) * (x + 1), "factor"), step])


@pytest.mark.parametrize("step, problem", [
    (Step(None, x**2 - 1, "expand", Definition("definition")), "continues the previous line"),
    (Step("", x**2 - 1, "expand", Definition("assumption")), "continues the previous line"),
    (Step("y", "x^2 - 1", "a known theorem", Definition("cited")), "without naming the theorem"),
    (Step("y", "x^2 - 1", "unchecked", type("Trust", (Checker,), {"checked": False, "method": "trust",
                                                                   "run": lambda self, ctx: (True, "")})()),
     "not checked and not marked"),
])
def test_unjustified_lines_are_found(step, problem):
    found = _one_line(step).unjustified()
    assert len(found) == 1 and problem in found[0]


@pytest.mark.parametrize("step", [
    Step(None, x**2 - 1, "expand"),  # checked (Chain)
    Step("y", "x^2 - 1", "definition of y", Definition("definition")),
    Step("y", "x^2 - 1", "stated", Definition("assumption")),
    Step(None, "x^2 - 1", "a theorem", Cited("Some named theorem")),
])
def test_justified_lines_pass(step):
    assert _one_line(step).unjustified() == []


def test_cited_is_rendered_as_not_checked_and_its_spot_check_can_fail():
    plain = _one_line(Step("y", "z", "by a theorem", Cited("Gershgorin circle theorem")))
    assert plain.valid and plain.check()[1].checked is False and plain.check()[1].kind == "cited"
    assert "[cited: Gershgorin circle theorem -- NOT CHECKED]" in render(plain)
    failing = _one_line(Step("y", "z", "by a theorem",
                             Cited("Some theorem", spot_check=Custom(lambda: (False, "counterexample"), "examples"))))
    assert not failing.valid
    assert "spot-checked: examples, FAILED" in render(failing)
    with pytest.raises(ValueError, match="name of the theorem"):
        Cited("  ")


def test_definitions_and_assumptions_are_tagged():
    d = _one_line(Step("y", "z", "stated", Definition("assumption")))
    tex = render(d)
    assert "[symbolic]" in tex and "[assumption]" in tex


# ------------------------------------------------------------------ the Gershgorin line of softmax-jacobian


def test_old_gershgorin_equality_fails_at_n3_uniform():
    """||J||_2 = max_i R_i is false at n = 3, z = 0: 1/3 against 4/9 (float64 norm and exact row sums)."""
    sig = [sp.Rational(1, 3)] * 3
    jac = softmax._jacobian_at(sig)
    norm = np.linalg.norm(np.array(jac.tolist(), dtype=float), 2)
    rows = softmax._row_sums(jac)
    assert abs(norm - 1 / 3) < 1e-15 and rows == [sp.Rational(4, 9)] * 3
    assert abs(norm - float(max(rows))) > 0.1  # the old equality fails...
    assert norm <= float(max(rows)) <= 0.5  # ...the inequalities that replace it hold
    assert softmax._gershgorin_holds(sig) == (sp.Rational(4, 9), True)
    assert sig in softmax._simplex_points(3)  # the spot checks include this point


def test_gershgorin_spot_check_rejects_a_too_small_bound():
    """The exact PSD test behind the spot check fails when the bound is below lambda_max."""
    jac = softmax._jacobian_at([sp.Rational(1, 2), sp.Rational(1, 2)])  # lambda_max = 1/2
    assert (sp.Rational(1, 2) * sp.eye(2) - jac).is_positive_semidefinite
    assert not (sp.Rational(49, 100) * sp.eye(2) - jac).is_positive_semidefinite


def test_softmax_jacobian_lines_say_what_they_use():
    d = DERIVATIONS["softmax-jacobian"]()
    tex = render(d)
    assert "cited: spectral theorem for real symmetric matrices" in tex
    assert "cited: Gershgorin circle theorem" in tex
    assert r"\max_{\lambda} |\lambda|" not in tex  # the old false equality is gone
    kinds = {r.method: r.kind for r in d.check()}
    assert kinds["symbolic (symbolic n, nonnegative summands)"] == "checked"


# --------------------------------------------------------------------------- review: lines say what was checked


def _line(name: str, needle: str):
    from proofs.derivations import DERIVATIONS

    derivation = DERIVATIONS[name]()
    found = [s for s in derivation.steps if needle in s.reason or needle in str(s.rhs)]
    assert found, f"no line of {name} mentions {needle!r}"
    return derivation, found[0]


def test_lines_checked_only_at_sizes_say_so():
    _, limits = _line("soft-lookup", "hard lookup")
    assert "n = 2..4" in limits.reason and "only" in limits.reason
    _, derivative = _line("causality", "differentiating the masked expression")
    assert "(n, d) = (3,1), (3,2), (4,1)" in derivative.reason and "only" in derivative.reason
    from proofs.derivations import DERIVATIONS

    assert "n = 2..4" in DERIVATIONS["soft-lookup"].__doc__
    assert "(n, d) = (3,1), (3,2), (4,1)" in DERIVATIONS["causality"].__doc__


def test_numeric_and_concluding_lines_are_tagged_for_what_they_are():
    _, backward = _line("attention-backward", "close, not equal")
    assert backward.rel == r"\approx" and "10^{-12}" in backward.rhs
    _, conclusion = _line("gelu-tanh-error", "the three interval bounds above")
    assert conclusion.check.method.startswith("interval arithmetic")
    derivation, _ = _line("layer-norm-moments", "normaliser is defined")
    kinds = [(s.check.kind, s.rel) for s in derivation.steps if "v + \\varepsilon > 0" in s.reason]
    assert kinds == [("assumption", ">")]
