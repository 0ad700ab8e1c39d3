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


# ------------------------------------------------------------- a report people want to read

import re  # noqa: E402

from proofs.report import document_title  # noqa: E402
from proofs.report_evidence import audit_records, data_block, prose, value, worked_example  # noqa: E402

#: What Python's repr of a dict or list of strings/dicts looks like once escaped for LaTeX.
_REPR = re.compile(r"\\?\{\s*'|\\?\{\s*\"|\[\s*\\?\{\s*'|\[\s*'[^']*'\s*,|':\s*[\[{\d'\"]")


def _repr_hits(tex: str) -> list[str]:
    return [tex[max(0, m.start() - 40):m.end() + 40] for m in _REPR.finditer(tex)]


def _overfull(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("Overfull \\hbox")]


def _nested_result():
    """A claim whose evidence carries every shape the catalogue's evidence has: nested dicts,
    records, matrices, long keys and strings, SymPy-like formulas, a Python literal in the
    summary, a worked example with printed and recomputed values."""
    worked = {
        "wrong": [
            {"quantity": "Q_1", "where": "line 36", "entry": [0, 1], "printed": "0.9", "correct": "1.0"},
            {"quantity": "Q_1", "where": "line 36", "entry": [1, 0], "printed": "0.4", "correct": "0.8"},
            {"quantity": "score(x_1, x_2)", "where": "line 40", "entry": [0, 0], "printed": "1.4", "correct": "0.7"},
            {"quantity": "MultiHeadAttention(X)", "where": "line 90", "entry": [0, 2], "printed": "7.25",
             "correct": "1.25"},
        ],
        "correct_values": {"Q_1": [[0.6, 1.0, 0.6, 0.7], [0.8, 0.7, 0.5, 0.7]], "score(x_1, x_2)": 0.7},
        "quantities_wrong": ["Q_1", "score(x_1, x_2)", "MultiHeadAttention(X)"],
        "rule": "|correct - printed| <= 0.5e-(decimals printed)",
    }
    deep = {
        "unattainable": {"Head_1 vs printed V_1": [
            {"row": 0, "printed": [0.7, 0.8, 0.7, 0.6], "witness_columns": []},
            {"row": 2, "printed": [0.4, 0.7, 0.6, 0.7],
             "witness_columns": [{"column": 0, "printed": 0.4, "range_of_V_column": [0.6, 0.8]}]}]},
        "a_very_long_key_name_that_would_overprint_its_value_in_a_fixed_column_of_any_width": 3,
        "d2L_dW1Q_dW2Q_squared_loss_with_a_long_identifier_and_no_spaces_at_all_anywhere": -0.6233,
        "operation_counts": {"additions": "4*d**2*n + 2*d*n**2 - 5*d*n - h*n", "divisions": "h*n**2"},
        "wide": [[0.123456 * i * j for j in range(16)] for i in range(3)],
        "long_vector": list(range(40)),
        "setting": "a long sentence " * 30,
        "findings": [{"claim": "E[q.k] = 0", "relation": "==", "verdict": "SUPPORTED", "alpha": 1e-7,
                      "tests": 8, "source": "closed form", "interval": [-0.0079, 0.0089]}] * 3,
        "sweep": {"points": [{"estimates": [{"quantity": f"q{i}", "estimate": 0.5, "seed": i} for i in range(50)]}] * 5},
    }

    def check():
        return CheckOutcome(Verdict.REFUTED, Method.NUMERIC, [
            Evidence("counterexample", "12 of 24 printed numbers are wrong: Q_1 should be [0.6, 1.0]", worked),
            Evidence("numeric", "proxy: the shapes are consistent: {'q': ['1', 'd_k'], 'k': ['1', 'd_k']}", deep),
        ])
    return Claim("demo-2", "Worked example: per-head projections Q_i, K_i", Source("999_unknown.txt", "Exemplo", 16),
                 r"$Q_i = XW_i^Q,\ K_i = XW_i^K,\ V_i = XW_i^V \text{ equal the printed matrices (lines 36--48) and a"
                 r" long tail of words that must wrap} \text{ across the line}$", [check]).run()


def test_repr_scanner_finds_raw_dicts():
    """The scan the tests rely on does catch a Python repr, escaped or not."""
    assert _repr_hits(latex_escape(str({"row": 0, "printed": [0.7], "witness_columns": []})))
    assert _repr_hits(str([{"a": 1}])) and _repr_hits(latex_escape(str(["1", "d_k"])))
    assert not _repr_hits(r"$\mathbb{E}[{q}_{l}^{2}]$ and \{x\} and [0.6, 0.9]")


def test_nested_evidence_renders_without_python_repr(tmp_path):
    tex = render_report([_nested_result()], tmp_path)
    assert _repr_hits(tex) == []
    assert r"\begin{bmatrix}" in tex  # numbers as vectors and matrices
    assert r"4 d^{2} n" in tex.replace("  ", " ") or r"4 d^{2}" in tex  # a formula string as mathematics
    assert "too long to print here" in tex  # the 250-record sweep is described, not dumped
    assert r"$\mathrm{Head}_{1}$ vs printed $V_{1}$" in tex  # symbols in keys set as math
    assert "\\textit{q}: 1, $d_{k}$" in tex  # the literal in the summary written out


def test_value_forms():
    assert value([1, 2, 3]).startswith(r"\fitwidth{$\begin{bmatrix}1 & 2 & 3")
    assert r"\begin{bmatrix}1 & 2 \\ 3 & 4\end{bmatrix}" in value([[1, 2], [3, 4]])
    assert value([0.25, 0.5], key="certified_sup_interval") == r"$[0.25,\ 0.5]$"
    assert value(1.5e-17) == r"$1.5 \times 10^{-17}$" and value(1050624) == r"$1\,050\,624$"
    assert value(0.999999875) == "$0.999999875$" and value(0.25) == "$0.25$"  # never rounded to a whole number
    assert value("oo") == r"$\displaystyle \infty$"
    assert value("h*n**2").startswith("$") and "n^{2}" in value("h*n**2")
    assert value("4 d^2 + 4 d (4 d^2 without biases)").count("without") == 1  # prose is not parsed
    assert value({"a": 1, "b": "x"}).startswith(r"\begin{tabular}")
    assert r"\emph" not in prose("a_b") and r"\_" in prose("snake_case_name")


def test_worked_example_marks_wrong_entries_in_red_with_the_right_value_beside():
    data = _nested_result().outcomes[0].evidence[0].data
    tex, used = worked_example(data)
    assert used == {"wrong", "correct_values"}
    q1 = next(line for line in tex.splitlines() if "Q_{1} =" in line)
    # row 1: 0.6, [0.9 printed, 1.0 right], 0.6, 0.7 -- right entries at the document's precision, not red
    assert (r"0.6 & \textcolor{red}{0.9}\,\textcolor{ForestGreen}{\scriptstyle 1.0} & 0.6 & 0.7 \\ "
            r"\textcolor{red}{0.4}\,\textcolor{ForestGreen}{\scriptstyle 0.8} & 0.7 & 0.5 & 0.7") in q1
    assert q1.count("textcolor{red}") == 2
    assert r"\mathrm{score}(x_1, x_2) = \textcolor{red}{1.4}" in tex  # a number, no brackets
    # no recomputed matrix for this one: listed in a table, the entry counted as a reader counts
    assert r"Multi\allowbreak{}Head\allowbreak{}Attention(X) & line 90 & row 1, column 3 & 7.25 & 1.25" in tex
    # a record set without printed/correct is not a worked example
    assert worked_example({"wrong": [{"quantity": "Q"}]}) == ("", set())
    assert "quantities wrong" in data_block(data)


_X = r"$X = \begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}$"
_W = r"$W = \begin{bmatrix} 0.5 & 0 \\ 0 & 0.5 \end{bmatrix}$"


def _records(*statements):
    from proofs.audit import audit_text

    return [f.to_dict() for f in audit_text("\n".join([_X, _W, *statements])).findings]


def test_audit_records_draw_the_documents_matrix_with_wrong_entries_red_and_the_right_value_beside():
    # Y[1,0] printed 1.6, right 1.5 (a new error); Z = Y W is right from the printed Y (carried)
    records = _records(r"$Y = XW = \begin{bmatrix} 0.5 & 1 \\ 1.6 & 2 \end{bmatrix}$",
                       r"$Z = Y W = \begin{bmatrix} 0.25 & 0.5 \\ 0.80 & 1 \end{bmatrix}$")
    tex = audit_records(records)
    y = next(line for line in tex.splitlines() if "Y = XW =" in line)
    assert (r"\begin{bmatrix}0.5 & 1 \\ \textcolor{red}{1.6}\,\textcolor{ForestGreen}{\scriptstyle 1.5} & 2"
            r"\end{bmatrix}") in y
    assert y.count(r"\textcolor{red}") == 1  # the right entries stay as printed
    assert "Y, line 3" in tex.replace("$", "") and "a new error in this step" in tex
    assert "1 of 4 entries wrong" in tex and "largest deviation $0.1$" in tex
    assert r"carried from the wrong $Y$" in tex  # Z
    assert r"\textcolor{red}{0.80}\,\textcolor{ForestGreen}{\scriptstyle 0.75}" in tex
    # the document's LaTeX never appears as source
    assert "textbackslash" not in tex and r"\texttt" not in tex
    # a right product is one compact line, no red
    right = audit_records(_records(r"$Y = XW = \begin{bmatrix} 0.5 & 1 \\ 1.5 & 2 \end{bmatrix}$"))
    assert right.startswith("Agree at the printed precision: $Y = ") and r"\textcolor{red}" not in right
    assert "(line 3)" in right


def test_audit_records_leave_out_latex_that_would_not_compile():
    # a statement cut short (as the engine stores long ones) or with an unknown command is not set
    record = {"line": 5, "label": "Y", "name": "Y", "outcome": "WRONG", "origin": "new", "wrong_inputs": [],
              "statement": r"Y = \weird{X} W = X W = \begin{bmatrix} 1 & 2 \\ 3 & ...", "max_deviation": 1.0,
              "shape": [1, 2], "entries": [{"printed": "1", "correct": "2", "ok": False},
                                           {"printed": "2", "correct": "2", "ok": True}]}
    tex = audit_records([record])
    assert r"Y = X W = \begin{bmatrix}\textcolor{red}{1}" in tex and r"\weird" not in tex and "..." not in tex
    unchecked = audit_records([{"line": 7, "label": r"\frac{a}{b}", "outcome": "UNCHECKED",
                                "reason": r"cannot read '\frac{a}{\b'"}])
    assert "line 7: unchecked" in unchecked and "textbackslash" not in unchecked


def test_data_block_draws_audit_records_instead_of_tables(tmp_path):
    records = _records(r"$Y = XW = \begin{bmatrix} 0.5 & 1 \\ 1.6 & 2 \end{bmatrix}$")
    tex = data_block({"wrong": records, "rule": "|exact - printed| <= half a unit"})
    assert r"\textcolor{red}{1.6}" in tex and "max deviation" not in tex and "statement &" not in tex
    assert _repr_hits(tex) == []


@pytest.mark.parametrize("raw, title", [
    ("## 10.  Multi-Head Attention: Capturando Diversidade nas Rela\u221a\u00df\u221a\u00b5es entre Palavras\n### Intro",
     "Multi-Head Attention: Capturando Diversidade nas Rela\u00e7\u00f5es entre Palavras"),  # Mac-Roman damage
    ("\n## O Mecanismo de Autoaten\u00c3\u00a7\u00c3\u00a3o em Detalhe\n", "O Mecanismo de Autoaten\u00e7\u00e3o em Detalhe"),
    ("# 01. **Mecanismos** de Self-Attention\n", "Mecanismos de Self-Attention"),
    ("no heading here\n#hashtag is not one\n", "fallback.txt"),
])
def test_document_title_from_damaged_text(raw, title):
    assert document_title(raw, "fallback.txt") == title


def test_sections_are_titled_by_the_document(tmp_path):
    from proofs.catalogue._doc import DOCUMENTS

    result = _result()  # source 003_ea119736e090508e.txt, a bundled seed
    assert result.claim.source.document == DOCUMENTS["003"]
    tex = render_report([result, _nested_result()], tmp_path)
    assert r"\section{Mecanismos de Self-Attention e Blocos Transformers em Modelos de Linguagem de Grande Porte}" in tex
    assert r"\section{999\_\allowbreak{}unknown.txt}" in tex  # no such file: the file name stands in
    table = tex[tex.index(r"\section*{Summary}"):tex.index(r"\section{")]  # the summary comes first
    assert "{003 Teorema 1} & " in table and "{999 Exemplo} & " in table and "REFUTED" in table
    assert "12 of 24 printed numbers are wrong" in table


def test_overfull_scan_catches_a_box_too_wide(tmp_path):
    """The log check can fail: evidence LaTeX wider than the page shows up as Overfull \\hbox."""
    _needs_pdflatex()

    def check():
        return CheckOutcome(Verdict.PROVED, Method.SYMBOLIC, [
            Evidence("derivation", "too wide", latex=r"\noindent\rule{1.5\linewidth}{1pt}")])
    result = Claim("w", "t", Source("d.txt", "Lema 1"), "$x$", [check]).run()
    tex = write_report([result], tmp_path)
    compile_pdf(tex)
    assert _overfull(tex.with_suffix(".log").read_text(errors="replace"))


def test_nested_evidence_compiles_without_overfull_boxes(tmp_path):
    _needs_pdflatex()
    tex = write_report([_nested_result(), _result(verdict=Verdict.CORRECTED)], tmp_path)
    compile_pdf(tex)
    assert _overfull(tex.with_suffix(".log").read_text(errors="replace")) == []


@pytest.fixture(scope="module")
def catalogue_report(tmp_path_factory):
    from proofs.catalogue import run_all

    out = tmp_path_factory.mktemp("report")
    return write_report(run_all(), out)


def test_catalogue_report_has_no_raw_dicts_and_uses_document_titles(catalogue_report):
    tex = catalogue_report.read_text(encoding="utf-8")
    assert _repr_hits(tex) == []
    assert "\\section{" in tex and not re.search(r"\\section\{\d{3}\\_", tex)  # no section named by file
    assert r"\section{O Mecanismo de Autoaten\c{c}\~{a}o em Detalhe: Computando Representa\c{c}\~{o}es Contextuais}" in tex


def test_catalogue_report_draws_worked_examples_with_the_wrong_entries_red(catalogue_report):
    """000's example at line 70: the document's MultiHeadAttention(X) (line 82) drawn as a matrix
    whose wrong entries are red, each with the recomputed value beside it; no LaTeX source."""
    from proofs.catalogue import SEEDS_DIR

    tex = catalogue_report.read_text(encoding="utf-8")
    start = tex.index(r"\label{claim:seed000.exemplo-numerico-l70}")
    section = tex[start:tex.index(r"\subsection", start)]
    (seed,) = SEEDS_DIR.glob("000_*.txt")
    line = seed.read_text(encoding="utf-8", errors="replace").splitlines()[81]
    printed = re.findall(r"\d+\.\d+", line[line.index(r"\begin{bmatrix}"):])  # the document's 12 numbers
    assert len(printed) == 12
    drawn = next(row for row in section.splitlines() if r"\begin{bmatrix}" in row and "ConcatHeads" in row)
    for p in printed:  # each printed output entry is wrong (issue 8, section 1): red, the right value beside
        assert rf"\textcolor{{red}}{{{p}}}\,\textcolor{{ForestGreen}}" in drawn
    assert drawn.count(r"\textcolor{red}") == 12
    assert "textbackslash{}begin" not in tex and not re.search(r"\\texttt\{[^}]*begin\{bmatrix", tex)
    assert "printed & [" not in tex  # no raw list of printed values


def test_catalogue_report_compiles_without_overfull_boxes(catalogue_report):
    _needs_pdflatex()
    compile_pdf(catalogue_report)
    log = catalogue_report.with_suffix(".log").read_text(errors="replace")
    assert _overfull(log) == [], "\n".join(_overfull(log))
    assert "too high" not in log  # no table row taller than a page (it would be cut off)


def _crosscheck_result(fail: bool):
    from verify.crosscheck import CASES, CrosscheckResult, Row
    from verify.validate.result import Status

    rows = []
    for backend in ("numpy", "array_api_strict", "torch"):
        for dtype in ("float64", "float32"):
            for ref in ("float64", "mpmath", "sympy"):
                if (backend, dtype, ref) == ("numpy", "float64", "float64"):
                    continue
                bound = 1e-12 if dtype == "float64" else 1.2e-6
                error = 3.1e-16 if dtype == "float64" else 2.2e-7
                status = Status.PASS
                if fail and (backend, dtype) == ("torch", "float32"):
                    error, status = 4.0e-3, Status.FAIL
                rows.append(Row("sdpa", "dq", backend, dtype, ref, status, error, bound, worst_case="mask", cases=5))
    return CrosscheckResult(tuple(rows), ("numpy", "array_api_strict", "torch"), {"cupy": "not installed"},
                            ("float64", "mpmath", "sympy"), CASES, seconds=13.7)


def test_crosscheck_section_shows_each_line_with_its_verdict(tmp_path):
    tex = render_report([_result()], tmp_path, crosscheck=_crosscheck_result(fail=True))
    section = tex[tex.index(r"\section{Crosscheck: every backend against float64, mpmath, SymPy}"):]
    assert section.count(r"\textcolor{ForestGreen}{\textbf{PASS}}") == 5
    assert section.count(r"\textcolor{red}{\textbf{FAIL}}") == 1
    assert r"\textcolor{red}{$4.0{\times}10^{-3} > 1.2{\times}10^{-6}$}" in section
    assert r"$3.1{\times}10^{-16} \le 1.0{\times}10^{-12}$" in section
    assert "Not run: cupy: not installed." in section
    assert "crosscheck" not in render_report([_result()], tmp_path).lower()  # only when given


def test_crosscheck_section_compiles_without_overfull_boxes(tmp_path):
    _needs_pdflatex()
    tex = write_report([_result()], tmp_path, crosscheck=_crosscheck_result(fail=True))
    compile_pdf(tex)
    assert _overfull(tex.with_suffix(".log").read_text(errors="replace")) == []
