"""The LaTeX report: escaping, structure, and a real pdflatex compile of the catalogue's report."""

import os
import shutil

import pytest

from proofs.claims import Claim, CheckOutcome, Evidence, Method, Source, Verdict
from proofs.report import ReportError, compile_pdf, latex_escape, render_report, write_report


def _needs_pdflatex():
    if shutil.which("pdflatex") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install a TeX engine (.ci/run installs texlive); pdflatex is missing")
        pytest.skip("pdflatex not installed")


def _result(statement="The sum is $\\sum_i w_i = 1$ for 100% of rows & more_", verdict=Verdict.PROVED):
    def check():
        return CheckOutcome(verdict, Method.SYMBOLIC, [
            Evidence("derivation", "checked # steps", {"n": 3, "max_error": 1.5e-17},
                     latex="\\begin{align*}\n a &= b && \\text{by definition}\n\\end{align*}")
        ], corrected_statement="$x = 2$" if verdict is Verdict.CORRECTED else None)
    return Claim("demo-1", "Sums_of weights", Source("003_ea119736e090508e.txt", "Teorema 1", 113),
                 statement, [check], ["rows have $M \\ge 1$ keys"]).run()


def test_latex_escape_covers_specials():
    assert latex_escape("a_b & 50% #1 {x} ~ ^ \\") == (
        r"a\_b \& 50\% \#1 \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{}"
    )
    assert latex_escape("Proposição √2") == r"Proposi\c{c}\~ao ?2"
    assert latex_escape("a < b | c > d") == r"a \ensuremath{<} b \ensuremath{|} c \ensuremath{>} d"


def test_render_keeps_math_and_escapes_text(tmp_path):
    text = render_report([_result()], tmp_path)
    assert "$\\sum_i w_i = 1$" in text
    assert "100\\% of rows \\& more\\_" in text
    assert "\\textbf{PROVED}" in text and "Teorema 1" in text
    assert text.count("\\begin{document}") == 1 and text.rstrip().endswith("\\end{document}")


def test_crashed_claim_is_reported_as_crashed(tmp_path):
    def boom():
        raise ZeroDivisionError("no")
    result = Claim("x", "t", Source("d.txt", "Lema 1"), "s", [boom]).run()
    assert result.verdict is None and "ZeroDivisionError" in result.error
    assert "CRASHED" in render_report([result], tmp_path)


def test_pdflatex_compiles_report(tmp_path):
    _needs_pdflatex()
    tex = write_report([_result(), _result(verdict=Verdict.CORRECTED)], tmp_path)
    pdf = compile_pdf(tex)
    assert pdf is not None and pdf.stat().st_size > 1000


def test_pdflatex_error_is_raised_not_hidden(tmp_path):
    """The compile check can fail: a broken statement gives ReportError with the log."""
    _needs_pdflatex()
    tex = write_report([_result(statement="broken math $\\frac{1}{$")], tmp_path)
    with pytest.raises(ReportError, match="pdflatex failed"):
        compile_pdf(tex)
