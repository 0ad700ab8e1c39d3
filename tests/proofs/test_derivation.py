"""The derivation machinery: step checkers accept right steps and reject wrong ones."""

from __future__ import annotations

import pytest
import sympy as sp

from proofs.claims import CheckOutcome, Evidence, Method, Verdict
from proofs.derivation import (
    AtSizes,
    Chain,
    Custom,
    Definition,
    Derivation,
    DerivationError,
    NonNegative,
    Step,
    Symbolic,
    canonical_sums,
    exp_to_symbols,
    format_sizes,
    is_zero,
    unfold_indexed,
)

z = sp.IndexedBase("z", real=True)
sigma = sp.IndexedBase("sigma")
i, j, k, n = sp.symbols("i j k n", integer=True, positive=True)
TOTAL = sp.Sum(sp.exp(z[k]), (k, 1, n))
UNFOLD = unfold_indexed({sigma: lambda a: sp.exp(z[a]) / TOTAL})
IN_RANGE = sp.Q.ge(i, 1) & sp.Q.le(i, n) & sp.Q.ge(j, 1) & sp.Q.le(j, n)


def jacobian_derivation(rhs: sp.Expr) -> Derivation:
    """d sigma_i / d z_j = rhs, checked symbolically for symbolic n."""
    return Derivation(
        name="test", title="softmax Jacobian", statement="-",
        steps=[Step.define(sigma[i], sp.exp(z[i]) / TOTAL, "softmax"),
               Step(sp.Derivative(sigma[i], z[j]), rhs, "claimed Jacobian", Symbolic(assumptions=IN_RANGE))],
        unfold=UNFOLD,
    )


def test_right_jacobian_step_passes():
    d = jacobian_derivation(sigma[i] * (sp.KroneckerDelta(i, j) - sigma[j]))
    results = d.check()
    assert [r.passed for r in results] == [True, True]
    assert results[0].checked is False and results[0].method == "definition"
    assert results[1].checked and results[1].method == "symbolic"
    assert d.valid


@pytest.mark.parametrize(
    "wrong",
    [
        sigma[i] * (sp.KroneckerDelta(i, j) + sigma[j]),  # wrong sign (the brief's example)
        2 * sigma[i] * (sp.KroneckerDelta(i, j) - sigma[j]),  # wrong factor
        sigma[i] * (1 - sigma[j]),  # delta_ij dropped
        sigma[j] * (sp.KroneckerDelta(i, j) - sigma[j]),  # wrong index
    ],
    ids=["sign", "factor", "no-delta", "index"],
)
def test_wrong_jacobian_step_is_rejected(wrong):
    d = jacobian_derivation(wrong)
    results = d.check()
    assert results[1].passed is False
    assert "does not reduce to 0" in results[1].note
    assert not d.valid
    with pytest.raises(DerivationError, match="claimed Jacobian"):
        d.outcome()


def test_chain_compares_with_previous_rhs():
    x = sp.Symbol("x")
    good = Derivation("t", "t", "-", [Step(x**2 - 1, (x - 1) * (x + 1), "factor"), Step(None, x**2 - 1, "expand")])
    assert good.valid and isinstance(good.steps[1].check, Chain)
    bad = Derivation("t", "t", "-", [Step(x**2 - 1, (x - 1) * (x + 1), "factor"), Step(None, x**2 + 1, "expand")])
    assert [r.passed for r in bad.check()] == [True, False]


def test_explicit_sizes_method_and_rejection():
    def right(m):
        s = sp.Matrix(sp.symbols(f"s_1:{m + 1}"))
        return (s.T * sp.ones(m, 1))[0] - sum(s)

    def wrong_at_four(m):
        return sp.Integer(0) if m != 4 else sp.Symbol("y")

    ok = AtSizes(right, range(2, 7))
    assert ok.method == "explicit sizes n=2..6"
    d = Derivation("t", "t", "-", [Step("a", "b", "sum", ok), Step("a", "b", "broken at 4", AtSizes(wrong_at_four, range(2, 7)))])
    res = d.check()
    assert res[0].passed and not res[1].passed and "n=4" in res[1].note


def test_nonnegative_witness_accepts_and_rejects():
    s = sp.Symbol("s", real=True)
    half = sp.Rational(1, 2)
    right = NonNegative(sp.Rational(1, 4) - s * (1 - s), (s - half) ** 2)
    wrong_identity = NonNegative(sp.Rational(1, 4) - s * (1 + s), (s - half) ** 2)  # wrong sign inside
    not_provable = NonNegative(s - half, s - half)  # identity holds, but s - 1/2 is not >= 0
    d = Derivation("t", "t", "-", [Step("a", "b", r, check=c, rel=r"\le")
                                   for r, c in (("ok", right), ("sign", wrong_identity), ("unproved", not_provable))])
    assert [r.passed for r in d.check()] == [True, False, False]
    assert "witness" in d.check()[2].note


def test_crashing_checker_is_a_failed_step_not_a_crash():
    def boom():
        raise ZeroDivisionError("nope")

    d = Derivation("t", "t", "-", [Step("a", "b", "crash", Custom(boom, "custom"))])
    r = d.check()[0]
    assert not r.passed and "ZeroDivisionError" in r.note
    with pytest.raises(DerivationError):
        d.outcome()


def test_derivation_without_checked_steps_is_not_valid():
    d = Derivation("t", "t", "-", [Step.define("a", "b", "only a definition")])
    assert not d.valid
    with pytest.raises(DerivationError):
        d.outcome()


def test_outcome_carries_derivation_evidence():
    d = jacobian_derivation(sigma[i] * (sp.KroneckerDelta(i, j) - sigma[j]))
    out = d.outcome()
    assert isinstance(out, CheckOutcome)
    assert out.verdict is Verdict.PROVED and out.method is Method.SYMBOLIC
    ev = out.evidence[0]
    assert ev.kind == "derivation" and ev.latex.startswith("\\begin{align*}")
    assert ev.data["valid"] is True and len(ev.data["steps"]) == 2
    assert ev.to_dict()["data"]["steps"][1]["method"] == "symbolic"
    # a derivation can support another verdict, with extra evidence; CORRECTED needs its statement
    extra = Evidence("counterexample", "x")
    refuted = d.outcome(Verdict.REFUTED, extra_evidence=[extra])
    assert refuted.verdict is Verdict.REFUTED and refuted.evidence[1] is extra
    with pytest.raises(ValueError):
        d.outcome(Verdict.CORRECTED)
    assert d.outcome(Verdict.CORRECTED, corrected_statement="y").corrected_statement == "y"


def test_step_needs_a_check_when_nothing_to_compare():
    with pytest.raises(ValueError, match="give a check"):
        Step("a", "b", "strings only")
    with pytest.raises(ValueError, match="reason"):
        Step(sp.Symbol("a"), sp.Symbol("a"), "")
    with pytest.raises(ValueError, match="cannot be checked as an equality"):
        Step(sp.Symbol("a"), sp.Symbol("b"), "r", rel=r"\le")
    with pytest.raises(ValueError):
        Definition("theorem")


def test_check_is_cached_and_can_be_forced():
    calls = []

    def count():
        calls.append(1)
        return True, "ok"

    d = Derivation("t", "t", "-", [Step("a", "b", "r", Custom(count, "custom"))])
    d.check(), d.check()
    assert len(calls) == 1
    d.check(force=True)
    assert len(calls) == 2


def test_is_zero_on_various_objects():
    x = sp.Symbol("x")
    assert is_zero(sp.Eq(sp.sin(x) ** 2 + sp.cos(x) ** 2, 1))[0]
    assert is_zero(sp.Matrix([[x - x, 0], [sp.expand((x + 1) ** 2) - x**2 - 2 * x - 1, 0]]))[0]
    assert not is_zero(sp.Matrix([[0, x]]))[0]
    a, b = sp.MatrixSymbol("A", 2, 3), sp.MatrixSymbol("B", 3, 2)
    assert is_zero(a * (b + b) - 2 * a * b)[0]
    c = sp.MatrixSymbol("C", 2, 2)
    assert not is_zero(c * c.T - c.T * c)[0]


def test_canonical_sums_identifies_dummy_indices():
    e = sp.Sum(sp.exp(z[j]), (j, 1, n)) - sp.Sum(sp.exp(z[k]), (k, 1, n))
    assert canonical_sums(e) == 0
    double = sp.Sum(z[j] * z[k] ** 2, (k, 1, j), (j, 1, n))  # inner limit depends on the outer index
    other = sp.Sum(z[i] * z[j] ** 2, (j, 1, i), (i, 1, n))
    assert canonical_sums(double) == canonical_sums(other)
    renamed = canonical_sums(double)
    (v0, _, hi0), (v1, _, _) = renamed.limits
    assert v0 != v1 and hi0 == v1  # no capture, the dependent limit follows the renaming


def test_exp_to_symbols_handles_merged_powers():
    a, b = sp.symbols("a b", real=True)
    e1, e2 = sp.symbols("e1 e2", positive=True)
    expr = sp.exp(a) ** 2 * sp.exp(b) + sp.exp(a / 3)
    out = exp_to_symbols(expr, {a: e1, b: e2})
    assert out == e1**2 * e2 + e1 ** sp.Rational(1, 3)


def test_format_sizes():
    assert format_sizes([2, 3, 4, 5, 6], "n") == "n=2..6"
    assert format_sizes([1, 2], "d") == "d=1, 2"
    assert format_sizes([(2, 3), (3, 2)], "(N,M)") == "(N,M)=(2,3), (3,2)"


def test_split_sums_applies_linearity_and_fubini():
    from proofs.derivation import split_sums

    a, b, n = sp.symbols("a b n", integer=True, positive=True)
    w, v = sp.IndexedBase("w"), sp.IndexedBase("v")
    c = sp.Symbol("c")
    double = sp.Sum(w[a] * w[b] * v[a] * v[b], (b, 1, n), (a, 1, n))
    single = sp.Sum(w[a] * v[a], (a, 1, n))
    assert canonical_sums(split_sums(double - single**2)) == 0
    assert split_sums(sp.Sum(c * w[a] + v[a], (a, 1, n))) == c * sp.Sum(w[a], (a, 1, n)) + sp.Sum(v[a], (a, 1, n))
    # a wrong factorisation stays visibly nonzero
    assert canonical_sums(split_sums(double - 2 * single**2)) != 0


def test_gap_form_with_symbolic_n_rejects_a_wrong_normaliser():
    from proofs.derivation import split_sums

    beta = sp.Symbol("beta", positive=True)
    z = sp.IndexedBase("z", real=True)
    k, n = sp.symbols("k n", integer=True, positive=True)
    total = sp.exp(beta * z[1]) + sp.Sum(sp.exp(beta * z[k]), (k, 2, n))

    def gap(offset, lower):
        return 1 / (offset + sp.Sum(sp.exp(-beta * (z[1] - z[k])), (k, lower, n)))

    def zero(g):
        return is_zero(sp.together(split_sums(sp.expand(sp.exp(beta * z[1]) / total - g, power_exp=True))))[0]

    assert zero(gap(1, 2))
    assert not zero(gap(2, 2)) and not zero(gap(1, 1))


def test_a_matrix_inside_a_displayed_line_is_not_its_alignment_point():
    """A line whose only ``&`` are inside a matrix is aligned like the others (``& ...``); counting
    the matrix's ``&`` put the whole line in the first column and widened the block past the page."""
    from proofs.derivation import Custom, Derivation, Step
    from proofs.latex import render

    def line(tex: str) -> Step:
        return Step(latex=tex, reason="r", check=Custom(lambda: (True, "ok"), "numeric"))

    block = render(Derivation("d", "t", "s", [line(r"J = \begin{pmatrix}1&-1\\-1&1\end{pmatrix}"), line(r"a &= b"),
                                              line(r"c \& d")]))
    rows = block.split("\\\\\n")
    assert rows[0].startswith("\\begin{align*}\n& J = ")
    assert rows[1].startswith("a &= b")
    assert rows[2].startswith("& c \\& d")
