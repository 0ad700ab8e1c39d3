"""Every registered derivation builds, every step is checked and passes, and its LaTeX is sound."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from proofs.claims import CheckOutcome, Method, Verdict
from proofs.derivation import Derivation
from proofs.derivations import DERIVATIONS, TITLES, get, list_derivations
from proofs.latex import check_latex, render, render_document, render_section, text

EXPECTED = [
    "softmax-jacobian", "attention-backward", "qk-variance", "multihead", "causality",
    "convex-combination", "soft-lookup", "linear-collapse", "gelu-tanh-error", "layer-norm-moments",
    "online-softmax-merge", "lse-backward", "softcap-chain-rule", "rotary-embedding", "alibi-bias",
]


def test_registry_has_every_derivation():
    assert list(DERIVATIONS) == EXPECTED
    assert [name for name, _ in list_derivations()] == EXPECTED
    assert all(TITLES[name] for name in EXPECTED)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(KeyError, match="softmax-jacobian"):
        get("softmax-jacobain")


@pytest.fixture(scope="module", params=EXPECTED)
def derivation(request) -> Derivation:
    return DERIVATIONS[request.param]()


def test_every_step_is_checked_and_passes(derivation):
    results = derivation.check()
    assert len(results) == len(derivation.steps)
    failed = [(r.index, r.reason, r.note) for r in results if not r.passed]
    assert not failed, failed
    checked = [r for r in results if r.checked]
    assert len(checked) >= 3, "a derivation must check more than its definitions"
    assert all(r.method and r.note for r in results)
    assert derivation.valid
    assert derivation.build_seconds is not None and derivation.build_seconds < 30


def test_cached_and_title_matches(derivation):
    assert DERIVATIONS[derivation.name]() is derivation
    assert derivation.title == TITLES[derivation.name]


def test_outcome_is_a_proof_with_derivation_evidence(derivation):
    out = derivation.outcome()
    assert isinstance(out, CheckOutcome) and out.verdict is Verdict.PROVED
    expected_method = Method.NUMERIC if derivation.name == "gelu-tanh-error" else Method.SYMBOLIC
    assert out.method is expected_method
    ev = out.evidence[0]
    assert ev.kind == "derivation" and ev.data["derivation"] == derivation.name
    assert ev.data["valid"] and ev.latex == render(derivation)
    json.dumps(out.evidence[0].to_dict())  # JSON-able, for `attnverify check --json`


def test_latex_block_is_clean(derivation):
    tex = derivation.latex()
    assert tex.startswith("\\begin{align*}\n") and tex.endswith("\n\\end{align*}")
    check_latex(tex)
    assert tex.count("{") == tex.count("}") + tex.count("\\}") - tex.count("\\{")
    assert "\\left[" not in tex and "\\right]" not in tex
    assert "\\textbackslash" not in tex, "LaTeX commands in a reason outside $...$ are escaped: fix the reason"
    assert tex.count(" \\\\\n") == len(derivation.steps) - 1  # one row per step
    assert "FAILED" not in tex
    plain = render(derivation, with_methods=False, reason_width=None)
    check_latex(plain)
    assert "[symbolic" not in plain
    check_latex(render_section(derivation))


def test_whole_document_compiles_if_pdflatex_is_present(tmp_path):
    tex = render_document([f() for f in DERIVATIONS.values()])
    check_latex(tex)
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed; structural checks only")
    (tmp_path / "d.tex").write_text(tex)
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "d.tex"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (tmp_path / "d.pdf").exists()


def test_check_latex_catches_defects():
    for bad in ["\\begin{align*}\na &= b\n\n\\end{align*}", "{a", "a}", "\\left( a",
                "\\begin{align*} a \\end{aligned}", "\\begin{align*} $x$ \\end{align*}", "\u03c3"]:
        with pytest.raises(ValueError):
            check_latex(bad)
    check_latex("\\begin{align*} a &= b && \\text{r $x$ \\{y\\}} \\end{align*}")


def test_text_escapes_outside_math():
    assert text("a_b & 50% $x_1$") == r"a\_b \& 50\% $x_1$"
    assert text("\u2264 \u03c3") == r"$\le$ $\sigma$"
    with pytest.raises(ValueError):
        text("unbalanced $x")
    with pytest.raises(ValueError):
        text("\u4e2d")
