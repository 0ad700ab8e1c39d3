"""The public proof API: the fixed names, their numpydoc docstrings and examples, and proofs.attention."""

from __future__ import annotations

import doctest
import importlib
import inspect
import subprocess
import sys

import pytest
import sympy as sp

import proofs
from proofs import AtSizes, Custom, Derivation, NonNegative, Step, Symbolic, is_zero, register
from proofs.attention import (ForAllN, attention_at, exp_prepare, gaussian_pair_moments, gradient, index_derivative,
                              index_range, jacobian, normal_moments, softmax_indexed, softmax_vector, symbol_matrix)

FIXED = ("Derivation", "Step", "Symbolic", "AtSizes", "NonNegative", "Custom", "register")


def test_the_fixed_names_are_the_machinery_itself():
    from proofs import derivation
    from proofs.derivations import _registry

    for name in FIXED[:-1]:
        assert getattr(proofs, name) is getattr(derivation, name)
    assert proofs.register is _registry.register
    assert set(FIXED) <= set(proofs.__all__) and set(FIXED) <= set(dir(proofs))
    with pytest.raises(AttributeError, match="no attribute 'Derivaton'"):
        proofs.Derivaton  # noqa: B018


def test_import_proofs_does_not_load_sympy():
    code = "import sys, proofs; assert 'sympy' not in sys.modules, 'sympy loaded'; proofs.Step; assert 'sympy' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _documented_parameters(doc: str) -> set[str]:
    """Names listed in a numpydoc Parameters section (``a, b : type`` or ``name`` lines at the
    section's indent), up to the next section header."""
    lines = inspect.cleandoc(doc).splitlines()
    start = lines.index("Parameters") + 2
    names = set()
    for line, following in zip(lines[start:], lines[start + 1:] + [""]):
        if following and set(following) == {"-"}:
            break  # the next section's header
        if line and not line.startswith(" "):
            names |= {n.strip().lstrip("*") for n in line.split(" : ")[0].split(",")}
    return names


@pytest.mark.parametrize("name", FIXED)
def test_numpydoc_docstring_lists_every_parameter_and_has_an_example(name):
    obj = getattr(proofs, name)
    doc = inspect.getdoc(obj) if name != "register" else obj.__doc__
    raw = obj.__doc__
    assert "Parameters\n    ----------\n" in raw, f"{name}: no numpydoc Parameters section"
    assert "Examples\n    --------\n" in raw, f"{name}: no Examples section"
    target = obj.__init__ if inspect.isclass(obj) else obj
    wanted = {p for p in inspect.signature(target).parameters if p not in ("self",)}
    documented = _documented_parameters(raw)
    assert wanted <= documented, f"{name}: parameters {sorted(wanted - documented)} are not documented"
    assert doc.strip()


@pytest.mark.parametrize("module", ["proofs.derivation", "proofs.attention", "proofs.derivations._registry"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0


# --------------------------------------------------------------------------- proofs.attention


def test_index_derivative_gives_the_softmax_jacobian_and_a_wrong_one_is_told_apart():
    z = sp.IndexedBase("z", real=True)
    i, j, n = sp.symbols("i j n", integer=True, positive=True)
    k = sp.Symbol("k", integer=True)
    T = sp.Symbol("T", positive=True)
    s_i, s_j = softmax_indexed(z, i, n, k=k, temperature=T), softmax_indexed(z, j, n, k=k, temperature=T)
    got = index_derivative(s_i, z[j], index_range(n, i, j))
    assert not got.has(sp.Piecewise)
    right = s_i * (sp.KroneckerDelta(i, j) - s_j) / T
    assert is_zero(got - right, index_range(n, i, j))[0]
    assert not is_zero(got - right * T, index_range(n, i, j))[0]


def test_index_range_needs_an_index():
    with pytest.raises(ValueError, match="at least one index"):
        index_range(sp.Symbol("n"))


def test_softmax_vector_jacobian_orientation_and_exp_prepare():
    z, s = softmax_vector(3)
    jac = jacobian(s, z)
    assert jac.shape == (3, 3)
    # J[a, b] = d s_a / d z_b: column b is the derivative along z_b
    assert sp.simplify(jac[0, 1] - sp.diff(s[0], z[1])) == 0
    prepare = exp_prepare(z)
    diff = prepare(jac - (sp.diag(*s) - s * s.T))
    assert not diff.has(sp.exp)
    assert all(sp.cancel(e) == 0 for e in diff)
    assert any(sp.cancel(e) != 0 for e in prepare(jac - (sp.diag(*s) + s * s.T)))


def test_softmax_vector_and_symbol_matrix_reject_bad_sizes():
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        softmax_vector(0)
    with pytest.raises(ValueError, match="cols must be a positive int, got 2.5"):
        symbol_matrix("w", 2, 2.5)
    names = {str(e) for e in symbol_matrix("w", 11, 2)}
    assert len(names) == 22 and "w_11,2" in names and "w_1,1" in names


def test_attention_at_and_gradient_match_the_closed_form_of_dV():
    att = attention_at(2, 3, 2, 2)
    g = symbol_matrix("g", 2, 2)
    loss = sum(g[a, b] * att.output[a, b] for a in range(2) for b in range(2))
    dv = gradient(loss, att.v)
    assert dv.shape == att.v.shape
    assert all(sp.simplify(e) == 0 for e in dv - att.weights.T * g)
    assert any(sp.simplify(e) != 0 for e in dv - att.weights.T * g.T)  # g transposed: not the gradient
    with pytest.raises(TypeError, match="explicit sympy Matrix"):
        gradient(loss, sp.MatrixSymbol("V", 3, 2))


def test_for_all_n_says_which_way_it_checked():
    n = sp.Symbol("n", integer=True, positive=True)
    m = sp.Symbol("m", integer=True)

    def gauss(size):
        return sum(range(1, size + 1)) - sp.Rational(size * (size + 1), 2)

    symbolic = Derivation("g", "g", "-", [Step(sp.Sum(m, (m, 1, n)), n * (n + 1) / 2, "Gauss",
                                               ForAllN(None, gauss, range(1, 6)))])
    assert symbolic.valid and symbolic.check()[0].method == "symbolic (all n)"

    x = sp.Symbol("x", positive=True)
    unreduced = sp.atan(x) + sp.atan(1 / x) - sp.pi / 2  # true for x > 0; SymPy does not reduce it
    swept = Derivation("s", "s", "-", [Step("lhs", "rhs", "no symbolic proof, a sweep",
                                            ForAllN(unreduced, gauss, range(1, 6)))])
    assert swept.valid
    assert swept.check()[0].method == "explicit sizes n=1..5 (symbolic n not reduced)"

    def wrong(size):
        return sum(range(1, size + 1)) - size * size

    failing = Derivation("f", "f", "-", [Step("lhs", "rhs", "wrong", ForAllN(unreduced, wrong, range(1, 4)))])
    assert not failing.valid


def test_gaussian_pair_moments_agree_with_sympy_stats_bivariate_normal():
    from sympy import stats

    q, k = sp.symbols("q k", real=True)
    rho = sp.Rational(1, 3)
    moments = gaussian_pair_moments(q, k, rho)
    pair = stats.MultivariateNormal("X", [0, 0], [[1, rho], [rho, 1]])
    assert moments[q**2 * k**2] == stats.E(pair[0] ** 2 * pair[1] ** 2) == sp.Rational(11, 9)
    assert moments[q * k] == rho and moments[q**2] == moments[k**2] == 1 and moments[q] == 0
    assert normal_moments(4) == {1: 0, 2: 1, 3: 0, 4: 3}
    with pytest.raises(ValueError, match="order must be a positive int"):
        normal_moments(0)


def test_register_rejects_an_empty_name_and_a_non_function():
    with pytest.raises(ValueError, match="non-empty string"):
        register("", "t")
    with pytest.raises(TypeError, match="decorates a function"):
        register("x-never", "t")(42)


def test_the_fixed_names_build_a_derivation_that_fails_when_wrong():
    x = sp.Symbol("x", real=True)
    s = sp.Symbol("s", nonnegative=True)

    def build(bad: bool) -> Derivation:
        return Derivation("api", "api", "-", [
            Step((x + 1) ** 2, x**2 + 2 * x + 1 + (x if bad else 0), "expand", Symbolic()),
            Step("sizes", "0", "sizes", AtSizes(lambda m: sp.Integer(m % 2 if bad else 0), range(1, 4))),
            Step("s(1-s)", "1/4", "AM-GM", NonNegative(sp.Rational(1, 4) - s * (1 - s) - (1 if bad else 0),
                                                      (s - sp.Rational(1, 2)) ** 2 - (1 if bad else 0)), rel=r"\le"),
            Step("c", "c", "custom", Custom(lambda: (not bad, "flag"), "numeric")),
        ])

    assert build(False).valid
    assert [r.passed for r in build(True).check()] == [False, False, False, False]
