"""proofs.runner and proofs.diagnose: loading a user's script, classifying each step.

A FAIL must carry a counterexample that really is one (re-evaluated here independently); an
UNPROVED must be a step that is true but that SymPy does not reduce; a raising checker is an
ERROR against its own step while the others still run.
"""

from __future__ import annotations

import textwrap

import pytest
import sympy as sp

from proofs import AtSizes, Custom, Derivation, NonNegative, Step, Symbolic
from proofs.derivations import DERIVATIONS
from proofs.runner import ScriptError, check_derivation, load_script, prove_file

from tests.proofs.test_derivation import IN_RANGE, UNFOLD, i, j, sigma, z  # the index-level softmax


def one_step(step: Step, unfold=None) -> Derivation:
    kw = {"unfold": unfold} if unfold else {}
    return Derivation("t", "t", "-", [step], **kw)


def status_of(step: Step, unfold=None):
    report = check_derivation(one_step(step, unfold))
    return report.steps[0]


def value_at(expr, values: dict) -> complex:
    """``expr`` at the counterexample's printed values, computed here from scratch."""
    ints = {s: sp.Integer(values[str(s)]) for s in expr.free_symbols
            if isinstance(s, sp.Symbol) and s.is_integer and str(s) in values}
    at = expr.subs(ints).doit()
    rest = {a: sp.Rational(values[str(a)]) for a in at.atoms(sp.Indexed, sp.Symbol) if str(a) in values}
    return complex(at.xreplace(rest).evalf(30))


# --------------------------------------------------------------------------- classification


def test_a_right_index_level_step_passes():
    step = Step(sp.Derivative(sigma[i], z[j]), sigma[i] * (sp.KroneckerDelta(i, j) - sigma[j]),
                "softmax Jacobian", Symbolic(assumptions=IN_RANGE))
    report = status_of(step, UNFOLD)
    assert report.status == "PASS" and report.counterexample is None


def test_a_wrong_sign_fails_with_a_counterexample_that_is_one():
    wrong = sigma[i] * (sp.KroneckerDelta(i, j) + sigma[j])
    step = Step(sp.Derivative(sigma[i], z[j]), wrong, "softmax Jacobian, wrong sign", Symbolic(assumptions=IN_RANGE))
    report = status_of(step, UNFOLD)
    assert report.status == "FAIL"
    assert report.residual and "Sum" in report.residual
    values = report.counterexample.values
    assert {"i", "j", "n"} <= set(values)
    assert 1 <= int(values["i"]) <= int(values["n"]) and 1 <= int(values["j"]) <= int(values["n"])
    residual = UNFOLD(sp.Derivative(sigma[i], z[j]) - wrong)
    assert abs(value_at(residual, values)) > 1e-6  # the printed point really refutes the step
    lhs, rhs = map(float, report.counterexample.sides)
    assert abs(lhs - rhs) > 1e-6


def test_a_true_identity_sympy_does_not_reduce_is_unproved_not_failed():
    x = sp.Symbol("x", positive=True)
    report = status_of(Step(sp.atan(x) + sp.atan(1 / x), sp.pi / 2, "atan(x) + atan(1/x) = pi/2 for x > 0"))
    assert report.status == "UNPROVED"
    assert report.counterexample is None
    assert "atan" in report.residual and "no counterexample" in report.note


def test_the_same_identity_for_real_x_fails_at_a_negative_x():
    x = sp.Symbol("x", real=True)
    report = status_of(Step(sp.atan(x) + sp.atan(1 / x), sp.pi / 2, "atan(x) + atan(1/x) = pi/2 for real x"))
    assert report.status == "FAIL"
    assert sp.Rational(report.counterexample.values["x"]) < 0
    assert float(report.counterexample.residual) == pytest.approx(-float(sp.pi))


def test_a_residual_with_an_undefined_function_is_unproved_and_says_why():
    f, y = sp.Function("f"), sp.Symbol("y", real=True)
    report = status_of(Step(f(y) * (1 + y), f(y) + y * f(y) + f(2 * y) - f(y + y) + sp.Integral(f(y), y) - sp.Integral(f(y), y),
                            "expand"))
    assert report.status == "PASS"
    report = status_of(Step(sp.Derivative(f(y) ** 2, y), f(y) * sp.Derivative(f(y), y), "chain rule, factor 2 forgotten"))
    assert report.status == "UNPROVED"
    assert "undefined function" in report.note and "f" in report.note


def test_a_constant_residual_fails_without_values():
    f, y = sp.Function("f"), sp.Symbol("y", real=True)
    report = status_of(Step(f(y) + 1, f(y), "off by one"))
    assert report.status == "FAIL"
    assert report.counterexample.values == {} and report.counterexample.residual == "1"
    assert "nonzero constant 1" in report.note


def test_at_sizes_fails_at_the_first_wrong_size_and_names_it():
    def square_of_sum(size):
        x = sp.symbols(f"x1:{size + 1}", real=True)
        claimed = sum(v**2 for v in x) + (2 * x[0] * x[1] if size < 3 else 0)  # cross terms dropped from n = 3
        return sp.expand(sum(x) ** 2) - claimed

    report = status_of(Step("(x_1 + ... + x_n)^2", "...", "square of a sum", AtSizes(square_of_sum, range(2, 5))))
    assert report.status == "FAIL"
    assert "at n=3" in report.note
    assert report.counterexample is not None


def test_nonnegative_false_inequality_fails_with_a_negative_value_inside_the_constraints():
    si, sj, r = sp.symbols("sigma_i sigma_j r", nonnegative=True)
    wrong = NonNegative(sp.Rational(1, 8) - si * sj, ((si - sj) ** 2 + r**2 + 2 * r * (si + sj)) / 4, {r: 1 - si - sj})
    report = status_of(Step(r"\sigma_i\sigma_j", r"\tfrac18", "off-diagonal bound (wrong: 1/8)", wrong, rel=r"\le"))
    assert report.status == "FAIL"
    vals = {key: sp.Rational(v) for key, v in report.counterexample.values.items()}
    assert vals["sigma_i"] + vals["sigma_j"] <= 1  # the witness's constraint r >= 0 was respected
    assert sp.Rational(1, 8) - vals["sigma_i"] * vals["sigma_j"] < 0


def test_nonnegative_true_but_unseen_witness_is_unproved():
    s1, s2 = sp.symbols("s_1 s_2", nonnegative=True)
    expr = sp.Rational(1, 4) - s1 * s2
    unprovable = NonNegative(expr, expr, {sp.Symbol("r", nonnegative=True): 1 - s1 - s2})
    report = status_of(Step("s_1 s_2", r"\tfrac14", "AM-GM, witness SymPy cannot sign", unprovable, rel=r"\le"))
    assert report.status == "UNPROVED"
    assert "cannot show the witness" in report.note


def test_a_custom_check_that_says_no_fails_with_its_note():
    report = status_of(Step("a", "b", "numeric", Custom(lambda: (False, "max error 0.3"), "numeric")))
    assert report.status == "FAIL" and "max error 0.3" in report.note


def test_a_raising_checker_is_an_error_against_its_step_and_the_others_still_run():
    x = sp.Symbol("x", real=True)
    d = Derivation("t", "t", "-", [
        Step(x + x, 2 * x, "double"),
        Step("a", "b", "raises", Custom(lambda: 1 / 0, "numeric")),
        Step(x * x, x**3, "wrong power"),
        Step(x - x, sp.Integer(0), "zero"),
    ])
    statuses = [s.status for s in check_derivation(d).steps]
    assert statuses == ["PASS", "ERROR", "FAIL", "PASS"]
    report = check_derivation(d)
    assert report.status == "FAILED"  # a false step outranks a crashed checker
    assert "ZeroDivisionError" in report.steps[1].note


def test_definitions_are_reported_as_not_checked_and_a_derivation_of_them_only_is_unchecked():
    x = sp.Symbol("x")
    report = check_derivation(Derivation("t", "t", "-", [Step.define(x, sp.Integer(1), "let x = 1"),
                                                        Step.assume(x, sp.Integer(2), "assume")]))
    assert [s.status for s in report.steps] == ["DEFINITION", "ASSUMPTION"]
    assert report.status == "UNCHECKED"


# --------------------------------------------------------------------------- loading scripts


def write(tmp_path, text: str, name: str = "proof.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


GOOD = """
    import sympy as sp
    from proofs import Derivation, Step, register

    x = sp.Symbol("x", real=True)
    square = Derivation("square", "A square", "-", [Step((x + 1) ** 2, x**2 + 2 * x + 1, "expand")])

    @register("softmax-jacobian", "same name as one of ours: allowed in a script's own registry")
    def cube():
        return Derivation("softmax-jacobian", "A cube", "-", [Step((x + 1) ** 3, x**3 + 3 * x**2 + 3 * x + 1, "expand")])
"""


def test_a_script_with_a_variable_and_a_registered_function_is_proved_and_leaves_our_registry_alone(tmp_path):
    before = dict(DERIVATIONS)
    path = write(tmp_path, GOOD)
    for _ in range(2):  # the same script twice in one process
        run = prove_file(path)
        assert [r.origin for r in run.reports] == ["variable square", "@register('softmax-jacobian')"]
        assert [r.status for r in run.reports] == ["PROVED", "PROVED"] and run.proved
    assert DERIVATIONS == before


def test_a_syntax_error_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "import sympy\nx = (1 +\n")
    with pytest.raises(ScriptError, match=rf"{path}:2.*syntax error"):
        load_script(path)


def test_a_script_that_defines_nothing_says_so(tmp_path):
    path = write(tmp_path, "import sympy as sp\nx = sp.Symbol('x')\n")
    with pytest.raises(ScriptError, match="defines nothing to prove.*@register"):
        load_script(path)


def test_an_exception_while_loading_names_the_line(tmp_path):
    path = write(tmp_path, "import sympy as sp\n\nvalue = 1 / 0\n")
    with pytest.raises(ScriptError, match=rf"ZeroDivisionError(.|\n)*{path}:3"):
        load_script(path)


def test_sys_exit_while_loading_is_reported(tmp_path):
    path = write(tmp_path, "import sys\nsys.exit(3)\n")
    with pytest.raises(ScriptError, match=r"sys.exit\(3\)"):
        load_script(path)


def test_a_registered_function_that_raises_is_an_error_and_the_rest_still_runs(tmp_path):
    path = write(tmp_path, GOOD + """
    @register("broken", "raises while building")
    def broken():
        return Derivation("broken", "b", "-", [Step(x, x, "")])  # no reason: ValueError
    """)
    run = prove_file(path)
    assert [r.status for r in run.reports] == ["PROVED", "PROVED", "ERROR"]
    assert "every step needs a reason" in run.reports[2].error and f"{path}:" in run.reports[2].error
    assert not run.proved


def test_a_registered_derivation_with_another_name_is_an_error(tmp_path):
    path = write(tmp_path, GOOD.replace('return Derivation("softmax-jacobian"', 'return Derivation("other"'))
    run = prove_file(path)
    assert run.reports[1].status == "ERROR" and "is named 'other'" in run.reports[1].error


def test_a_raising_checker_is_located_in_the_script(tmp_path):
    path = write(tmp_path, """
    from proofs import Custom, Derivation, Step

    def check():
        return {}["missing"], "never"

    d = Derivation("d", "d", "-", [Step("a", "b", "looks up a key", Custom(check, "custom"))])
    """)
    step = prove_file(path).reports[0].steps[0]
    assert step.status == "ERROR" and step.location == f"{path}:5"


def test_a_script_imports_a_module_beside_it(tmp_path):
    write(tmp_path, "import sympy as sp\nX = sp.Symbol('x', real=True)\n", "shared_symbols.py")
    path = write(tmp_path, """
    from shared_symbols import X
    from proofs import Derivation, Step
    d = Derivation("d", "d", "-", [Step(X * 2, X + X, "double")])
    """)
    assert prove_file(path).proved


def test_a_derivation_kept_in_a_variable_and_registered_counts_once(tmp_path):
    path = write(tmp_path, """
    import sympy as sp
    from proofs import Derivation, Step, register
    x = sp.Symbol("x")

    @register("d", "d")
    def build():
        return Derivation("d", "d", "-", [Step(x * 2, x + x, "double")])

    kept = build()
    """)
    assert len(prove_file(path).reports) == 1


def test_a_cited_step_is_reported_as_cited_and_a_failed_spot_check_as_a_failure():
    from proofs import Cited

    x = sp.Symbol("x", real=True)
    spot_ok = Custom(lambda: (True, "3 instances"), "numeric")
    spot_bad = Symbolic(sp.sin(x) ** 2 - sp.sin(x))  # an instance that is false
    report = check_derivation(Derivation("c", "c", "-", [
        Step(x + x, 2 * x, "double"),
        Step("A", "B", "by a theorem", Cited("Some theorem")),
        Step("A", "B", "by a theorem, spot-checked", Cited("Some theorem", spot_check=spot_ok)),
    ]))
    assert [s.status for s in report.steps] == ["PASS", "CITED", "CITED"] and report.status == "PROVED"
    assert report.steps[1].tag == "cited: Some theorem -- NOT CHECKED"
    assert "spot-checked: numeric" in report.steps[2].tag
    failed = check_derivation(Derivation("c", "c", "-", [
        Step(x + x, 2 * x, "double"),
        Step("A", "B", "by a theorem, wrong instance", Cited("Some theorem", spot_check=spot_bad)),
    ]))
    assert failed.steps[1].status == "FAIL" and failed.status == "FAILED"
    assert failed.steps[1].counterexample is not None and failed.steps[1].tag.endswith("FAILED")


def test_unproved_and_error_steps_are_tagged_so_in_the_latex():
    from verify.cli.prove import latex_document
    from proofs.runner import ProofRun
    from pathlib import Path

    x = sp.Symbol("x", positive=True)
    d = Derivation("t", "t", "-", [
        Step(sp.atan(x) + sp.atan(1 / x), sp.pi / 2, "atan identity"),
        Step("a", "b", "raises", Custom(lambda: 1 / 0, "numeric")),
        Step(x * 2, x + x, "double"),
    ])
    tex = latex_document(ProofRun(Path("t.py"), [check_derivation(d)]))
    assert "[symbolic, UNPROVED]" in tex and "[numeric, ERROR]" in tex and "[symbolic]" in tex
    assert "FAILED" not in tex


def test_the_toolkits_own_derivations_register_globally_even_while_a_script_loads():
    from proofs.derivations import _registry
    from proofs.derivations._registry import collect_registrations, register

    def build():  # pretend it is defined in one of our derivation modules
        raise AssertionError("never built")

    build.__module__ = "proofs.derivations.pretend"
    with collect_registrations() as collected:
        register("pretend-ours", "t")(build)
    try:
        assert "pretend-ours" in DERIVATIONS and "pretend-ours" not in collected
    finally:
        del _registry.DERIVATIONS["pretend-ours"], _registry.TITLES["pretend-ours"]


def test_a_derivation_step_marked_as_a_definition_is_listed_as_taken_on_trust():
    x = sp.Symbol("x", real=True)
    report = check_derivation(Derivation("t", "t", "-", [
        Step(x * (x + 1), x**2 + x, "expand"),
        Step.define(None, x**2 + x + 0, "and so on"),  # continues the chain: a step, not a definition
    ]))
    assert report.status == "UNJUSTIFIED" and not report.derivation.valid  # never PROVED
    assert len(report.unjustified) == 1 and "step 2 (and so on)" in report.unjustified[0]
    assert "taken on trust" in report.status_reason


def test_a_stated_domain_keeps_the_search_inside_it():
    rho = sp.Symbol("rho", real=True)
    # true for -1 <= rho <= 1; for rho < -1 both square roots of negative numbers are imaginary
    lhs, rhs = sp.sqrt(1 - rho**2) * sp.sqrt(1 + rho), sp.sqrt((1 - rho) * (1 + rho) ** 2)
    inside = status_of(Step(lhs, rhs, "inside the domain", Symbolic(assumptions=sp.Q.le(abs(rho), 1))))
    assert inside.status == "UNPROVED" and "no counterexample" in inside.note
    anywhere = status_of(Step(lhs, rhs, "for every real rho"))
    assert anywhere.status == "FAIL" and sp.Rational(anywhere.counterexample.values["rho"]) < -1


# --------------------------------------------------------------------------- review: substituted values


def test_nonnegative_a_substituted_value_must_be_shown_nonnegative():
    """{r: x} with r nonnegative must not prove x >= 0 for a real x."""
    x, r = sp.Symbol("x", real=True), sp.Symbol("r", nonnegative=True)
    d = one_step(Step(x, 0, "x >= 0 by renaming it", NonNegative(x, r, {r: x}), rel=r"\ge"))
    assert not d.valid
    report = check_derivation(d)
    assert report.steps[0].status == "UNPROVED" and report.status != "PROVED"
    assert "substituted value r = x" in report.steps[0].note


def test_nonnegative_a_substituted_value_with_its_own_witness_passes():
    si, sj, r = sp.symbols("sigma_i sigma_j r", nonnegative=True)
    e_i, e_j = sp.symbols("e_i e_j", positive=True)
    rest = sp.Symbol("R", nonnegative=True)
    pair = {si: e_i / (e_i + e_j + rest), sj: e_j / (e_i + e_j + rest)}
    witness = (((si - sj) ** 2 + r**2 + 2 * r * (si + sj)) / 4).subs(pair)
    right = {r: ((1 - si - sj).subs(pair), rest / (e_i + e_j + rest))}
    wrong = {r: ((1 - si - sj).subs(pair), (rest + 1) / (e_i + e_j + rest))}  # not equal to the value
    step = lambda subs: Step("s_i s_j", "1/4", "AM-GM", NonNegative((sp.Rational(1, 4) - si * sj).subs(pair),
                                                                    witness, subs), rel=r"\le")
    assert one_step(step(right)).valid
    bad = one_step(step(wrong))
    assert not bad.valid and "differs from its witness" in bad.failed[0].note
    # the bare value 1 - s_i - s_j of two free nonnegative symbols cannot be signed
    free = NonNegative(sp.Rational(1, 4) - si * sj, ((si - sj) ** 2 + r**2 + 2 * r * (si + sj)) / 4, {r: 1 - si - sj})
    assert not one_step(Step("a", "b", "free", free, rel=r"\le")).valid


def test_nonnegative_a_premise_is_named_in_the_tag_and_the_note():
    m, p, u = sp.Symbol("M", positive=True), sp.Symbol("p", nonnegative=True), sp.Symbol("u", nonnegative=True)
    check = NonNegative(m - p, u / (m + p), {u: m**2 - p**2}, premises={u: "the line above"})
    d = one_step(Step("p", "M", "monotone root", check, rel=r"\le"))
    assert d.valid and "given u >= 0 (the line above)" in check.tag()
    assert "not checked here" in d.check()[0].note
    without = NonNegative(m - p, u / (m + p), {u: m**2 - p**2})
    assert not one_step(Step("p", "M", "monotone root", without, rel=r"\le")).valid
    with pytest.raises(ValueError, match="premises"):
        NonNegative(m - p, u / (m + p), {u: m**2 - p**2}, premises={u: ""})


# --------------------------------------------------------------------------- review: the check tests the line


def test_an_explicit_symbolic_expr_must_be_the_displayed_line():
    x = sp.Symbol("x", real=True)
    unrelated = status_of(Step(x, x + 1, "x is x + 1", Symbolic(x**2 - x * x)))
    assert unrelated.status == "FAIL" and "not what was checked" in unrelated.note
    linked = status_of(Step(x * (x + 1), x**2 + x, "expand", Symbolic(x**2 + x - x * (x + 1))))  # rhs - lhs
    assert linked.status == "PASS"
    eq = status_of(Step(x * (x + 1), x**2 + x, "expand", Symbolic(sp.Eq(x * (x + 1), x**2 + x))))
    assert eq.status == "PASS"


def test_an_atsizes_that_compares_nothing_is_an_error():
    x = sp.Symbol("x", real=True)
    report = status_of(Step(x, x + 2, "nothing compared", AtSizes(lambda n: [], [2, 3])))
    assert report.status == "ERROR" and "compares nothing" in report.note
    assert status_of(Step("a", "b", "one entry", AtSizes(lambda n: [sp.Integer(n - n)], [2, 3]))).status == "PASS"


def test_a_nonnegative_check_must_be_the_displayed_inequality():
    x, s = sp.Symbol("x", real=True), sp.Symbol("s", real=True)
    wrong = status_of(Step(x**2, -1, "x^2 <= -1", NonNegative(s**2, s**2), rel=r"\le"))
    assert wrong.status == "FAIL" and "not what was checked" in wrong.note
    assert wrong.counterexample is not None
    right_le = status_of(Step(-1 - x**2, 0, "-1 - x^2 <= 0", NonNegative(1 + x**2, 1 + x**2), rel=r"\le"))
    right_ge = status_of(Step(x**2 + 1, 0, "x^2 + 1 >= 0", NonNegative(x**2 + 1, x**2 + 1), rel=r"\ge"))
    assert right_le.status == right_ge.status == "PASS"
    flipped = status_of(Step(x**2 + 1, 0, "x^2 + 1 <= 0 (wrong way)", NonNegative(x**2 + 1, x**2 + 1), rel=r"\le"))
    assert flipped.status == "FAIL"


def test_plain_python_numbers_are_sides():
    x = sp.Symbol("x", real=True)
    step = Step(sp.sin(x) ** 2 + sp.cos(x) ** 2, 1, "pythagoras")
    assert step.rhs == sp.Integer(1) and status_of(step).status == "PASS"
    assert status_of(Step(sp.sin(x) ** 2 + sp.cos(x) ** 2, 2.0, "wrong")).status == "FAIL"
    assert Step(x, 0.5, "half", Symbolic(x - x)).rhs == sp.Float(0.5)


def test_a_custom_check_must_return_a_real_bool():
    import numpy as np

    for bad in ["False", float("nan"), 1, None]:
        report = status_of(Step("a", "b", "truthy", Custom(lambda bad=bad: (bad, "note"), "numeric")))
        assert report.status == "ERROR" and "must return a bool" in report.note and "'truthy'" in report.note
    bare = status_of(Step("a", "b", "bare yes", Custom(lambda: "yes", "numeric")))
    assert bare.status == "ERROR" and "must return (passed, note)" in bare.note and "'bare yes'" in bare.note
    assert status_of(Step("a", "b", "numpy", Custom(lambda: (np.float64(1) < 2, "ok"), "numeric"))).status == "PASS"
    assert status_of(Step("a", "b", "numpy no", Custom(lambda: (np.float64(3) < 2, "no"), "numeric"))).status == "FAIL"
    assert status_of(Step("a", "b", "sympy", Custom(lambda: (sp.Integer(1) < 2, "ok"), "exact"))).status == "PASS"
    assert status_of(Step("a", "b", "sympy no", Custom(lambda: (sp.Integer(3) < 2, "no"), "exact"))).status == "FAIL"


# --------------------------------------------------------------------------- review: where the search looks


def test_a_symbol_not_assumed_real_gets_complex_values():
    z = sp.Symbol("z")
    for step in (Step(sp.Abs(z) ** 2, z**2, "|z|^2 = z^2"), Step(sp.log(sp.exp(z)), z, "log exp z = z")):
        report = status_of(step)
        assert report.status == "FAIL", report.note
        value = sp.sympify(report.counterexample.values["z"])
        assert sp.im(value) != 0
        assert abs(complex((step.lhs - step.rhs).subs(z, value).evalf(30))) > 1e-6  # really false there
    x = sp.Symbol("x", real=True)
    assert status_of(Step(sp.Abs(x) ** 2, x**2, "real: true")).status == "PASS"


def test_large_magnitudes_are_tried_and_the_domain_is_stated():
    x = sp.Symbol("x", real=True)
    report = status_of(Step(sp.Max(x, -1000), x, "max(x, -1000) = x"))
    assert report.status == "FAIL" and sp.Rational(report.counterexample.values["x"]) < -1000
    y = sp.Symbol("y", positive=True)
    unproved = status_of(Step(sp.atan(y) + sp.atan(1 / y), sp.pi / 2, "true, not reduced"))
    assert unproved.status == "UNPROVED"
    assert "probably" not in unproved.note and "magnitudes 0.05 to 3e6" in unproved.note
