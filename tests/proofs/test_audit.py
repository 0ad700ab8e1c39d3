"""``proofs.audit`` on small documents written for the purpose: each outcome, the rounding rule
at the printed precision, errors carried from an earlier WRONG value, column vectors written
for rows, malformed input, and the annotated copy."""

from __future__ import annotations

import pytest

from proofs.audit import HOLDS, UNCHECKED, WRONG, annotated_text, audit_text
from proofs.audit.source import Document

X = r"$X = \begin{bmatrix} 1 & 2 \\ 3 & 4 \end{bmatrix}$"
W = r"$W = \begin{bmatrix} 0.5 & 0 \\ 0 & 0.5 \end{bmatrix}$"


def only(audit, label):
    found = [f for f in audit.findings if f.name == label or f.label == label]
    assert len(found) == 1, [(f.line, f.label) for f in audit.findings]
    return found[0]


def test_a_right_product_holds_and_a_wrong_one_is_wrong_with_the_right_value():
    right = audit_text("\n".join([X, W, r"$Y = XW = \begin{bmatrix} 0.5 & 1 \\ 1.5 & 2 \end{bmatrix}$"]))
    assert only(right, "Y").outcome == HOLDS
    assert [i["name"] for i in right.inputs] == ["X", "W"]
    wrong = audit_text("\n".join([X, W, r"$Y = XW = \begin{bmatrix} 0.5 & 1 \\ 1.6 & 2 \end{bmatrix}$"]))
    f = only(wrong, "Y")
    assert f.outcome == WRONG and f.origin == "new"
    assert f.correct == "[0.5, 1; 1.5, 2]"
    assert f.max_deviation == pytest.approx(0.1)
    assert [e["index"] for e in f.entries if not e["ok"]] == [2]


def test_a_wrong_value_wrong_inputs_an_earlier_wrong_value():
    text = "\n".join([
        X, W,
        r"$Y = XW = \begin{bmatrix} 0.5 & 1 \\ 1.6 & 2 \end{bmatrix}$",          # new error at Y[1,0]
        r"$Z = Y W = \begin{bmatrix} 0.25 & 0.5 \\ 0.80 & 1 \end{bmatrix}$",    # right from the printed Y
        r"$U = Y W = \begin{bmatrix} 0.25 & 0.5 \\ 0.90 & 1 \end{bmatrix}$",    # wrong from both
    ])
    audit = audit_text(text)
    assert only(audit, "Y").origin == "new"
    z = only(audit, "Z")
    assert z.outcome == WRONG and z.origin == "carried" and z.wrong_inputs == ["Y"]
    assert z.correct == "[0.25, 0.5; 0.75, 1]"
    u = only(audit, "U")
    assert u.outcome == WRONG and u.origin == "new" and u.wrong_inputs == ["Y"]
    # the same step from a right Y holds: the carried verdict comes from Y, not from Z's arithmetic
    fixed = audit_text(text.replace("1.6", "1.5").replace("0.80 & 1", "0.75 & 1"))
    assert only(fixed, "Z").outcome == HOLDS


def test_a_carried_value_restated_as_a_number_is_traced():
    """``e^{1.22}`` after ``s = ... = 1.22`` is s: the correct recomputation uses s's correct value."""
    text = "\n".join([
        r"$q = [1, 0]$, $k = [1, 0.5]$",
        r"$s = q \cdot k = 1.22$",                                       # wrong: 1
        r"$w = \frac{e^{1.22}}{e^{1.22} + e^{0}} = 0.77$",               # right from 1.22, wrong from 1
    ])
    audit = audit_text(text)
    assert only(audit, "s").outcome == WRONG
    w = only(audit, "w")
    assert w.outcome == WRONG and w.origin == "carried" and w.wrong_inputs == ["s"]
    assert w.correct == "0.73"  # e / (e + 1) = 0.7311
    right = audit_text(text.replace("1.22", "1").replace("0.77", "0.73"))
    assert only(right, "w").outcome == HOLDS


@pytest.mark.parametrize("printed, outcome", [
    ("0.73", HOLDS),     # e/(e+1) = 0.731059 rounds to 0.73
    ("0.731", HOLDS),
    ("0.7311", HOLDS),
    ("0.72", WRONG),
    ("0.7310", WRONG),   # 4 decimals claim more than the value allows: off by 5.9e-5 > 5e-5
    ("0.7", HOLDS),
])
def test_rounding_is_judged_at_the_printed_precision(printed, outcome):
    audit = audit_text(rf"$p = \frac{{e^{{1}}}}{{e^{{1}} + e^{{0}}}} = {printed}$")
    assert only(audit, "p").outcome == outcome


def test_an_exact_tie_holds_both_ways_and_one_past_it_does_not():
    for printed in ("0.12", "0.13"):
        assert only(audit_text(rf"$t = \frac{{1}}{{8}} = {printed}$"), "t").outcome == HOLDS  # 0.125
    assert only(audit_text(r"$t = \frac{1}{8} = 0.14$"), "t").outcome == WRONG


def test_the_documents_own_rounding_of_an_earlier_value_is_allowed():
    """a = 1/3 printed 0.33 holds; 3a printed 0.99 holds from the printed a (exact 1): the
    document carried its own rounding. 0.98 holds from neither."""
    base = r"$a = \frac{1}{3} = 0.33$" + "\n"
    b = only(audit_text(base + r"$b = 3 a = 0.99$"), "b")
    assert b.outcome == HOLDS and b.entries[0]["via_printed_inputs"]
    assert only(audit_text(base + r"$b = 3 a = 0.98$"), "b").outcome == WRONG


def test_a_column_vector_written_for_a_row_vector():
    text = "\n".join([
        r"$x = \begin{bmatrix} 1 \\ 2 \end{bmatrix}$",
        r"$W = \begin{bmatrix} 1 & 0 & 1 \\ 0 & 1 & 1 \end{bmatrix}$",
        r"$y = xW = \begin{bmatrix} 1 \\ 2 \\ 3 \end{bmatrix}$",
    ])
    y = only(audit_text(text), "y")
    assert y.outcome == HOLDS
    assert any("column vector written for a row vector" in n for n in y.notes)
    assert only(audit_text(text.replace(r"2 \\ 3 \end", r"2 \\ 4 \end")), "y").outcome == WRONG


def test_a_malformed_matrix_is_unchecked_with_its_reason_and_so_is_what_uses_it():
    text = "\n".join([r"$M = \begin{bmatrix} 1 & 2 \\ 3 \end{bmatrix}$", W,
                      r"$N = MW = \begin{bmatrix} 0.5 & 1 \\ 1.5 & 2 \end{bmatrix}$"])
    audit = audit_text(text)
    m = only(audit, "M")
    assert m.outcome == UNCHECKED and "rows of different lengths [2, 1]" in m.reason
    n = only(audit, "N")
    assert n.outcome == UNCHECKED and "M" in n.reason


def test_a_name_with_no_value_is_unchecked_and_nothing_is_executed():
    audit = audit_text(r"$y = A b = 3$")
    assert only(audit, "y").outcome == UNCHECKED and "no value" in only(audit, "y").reason
    hostile = audit_text(r"$Z = \begin{bmatrix} __import__('os').system('false') & 1 \end{bmatrix}$")
    assert hostile.findings[0].outcome == UNCHECKED and "not a number" in hostile.findings[0].reason


def test_an_example_that_skips_the_scale_it_states_says_so():
    text = "\n".join([
        r"$$score(x_i, x_j) = \frac{q_i \cdot k_j}{\sqrt{d_k}}$$",
        r"$q_1 = [1, 1]$, $k_1 = [1, 0]$",
        r"$score(x_1, x_1) = q_1 \cdot k_1 = 1$",
    ])
    f = audit_text(text).findings[0]
    assert f.outcome == HOLDS and any("sqrt(d_k)" in n and "line 1" in n for n in f.notes)
    scaled = audit_text(text.replace(r"q_1 \cdot k_1 = 1", r"\frac{q_1 \cdot k_1}{\sqrt{2}} = 0.71")).findings[0]
    assert scaled.outcome == HOLDS and not any("sqrt(d_k)" in n for n in scaled.notes)


def test_general_forms_define_values_printed_without_a_formula():
    text = "\n".join([
        r"$$q_i = x_iW^Q$$",
        r"$x_2 = [1, 2]$, $W^Q = \begin{bmatrix} 1 & 0 \\ 0 & 1 \end{bmatrix}$",
        r"$q_2 = [1, 2]$, $q_2 = [1, 3]$",
    ])
    first, second = audit_text(text).findings
    assert first.outcome == HOLDS and second.outcome == WRONG


def test_softmax_concat_transpose_and_arithmetic_lines():
    text = "\n".join([
        r"$A = [1, 2]$, $B = [3, 4]$",
        r"$C = Concat(A, B) = [1, 2, 3, 4]$",
        r"$D = A^T = \begin{bmatrix} 1 \\ 2 \end{bmatrix}$",
        r"$S = softmax(A) = [0.27, 0.73]$",
        r"$n = 10$",
        r"$O(n^2 d) = O(10^2 * 5 + 10) = O(510)$",   # d has no value: the numbers are checked
        r"$O(n^2) = O(10^2 + 1) = O(101)$",          # n^2 = 100 is evaluated too, and disagrees
    ])
    audit = audit_text(text)
    assert [f.outcome for f in audit.findings] == [HOLDS, HOLDS, HOLDS, HOLDS, WRONG]
    assert only(audit, "S").entries[0]["exact"].startswith("0.268941")
    assert "n^2" in audit.findings[-1].label


def test_quoted_blocks_damaged_encoding_and_code_blocks():
    text = "\n".join([
        "> üí° **Exemplo Num√©rico**",   # the seeds' Mac-Roman damage
        ">",
        r">  $y = 2 * 3 = 6$",
        "```python",
        r"$z = 2 * 3 = 7$",
        "```",
    ])
    audit = audit_text(text)
    assert [(f.line, f.outcome) for f in audit.findings] == [(3, HOLDS)]
    assert "Exemplo Numérico" in Document.from_text(text).text_near(1)


def test_the_annotated_copy_marks_and_corrects_each_wrong_value_only():
    text = "\n".join(["> " + X, "> " + W, r"> $Y = XW = \begin{bmatrix} 0.5 & 1 \\ 1.6 & 2 \end{bmatrix}$", "after"])
    doc = Document.from_text(text)
    from proofs.audit import audit_document

    out = annotated_text(doc, audit_document(doc)).splitlines()
    assert out[:2] == text.splitlines()[:2]
    assert r"{\color{red}{1.6}\to 1.5}" in out[2] and r"0.5 & 1 \\" in out[2]
    assert out[4].startswith("> **attnverify audit:** Y (line 3) is WRONG") and "correct [0.5, 1; 1.5, 2]" in out[4]
    assert out[-1] == "after"


def test_matrix_forms_multiline_blocks_delimiters_and_approx():
    text = "\n".join([
        "$$",
        r"A = \begin{pmatrix}",
        r"1 & 2 \\",
        r"3 & 4",
        r"\end{pmatrix}",
        "$$",
        r"$B = A^\top = \left[\begin{array}{cc} 1 & 3 \\ 2 & 4 \end{array}\right]$",
        r"$c = \sqrt{2} \approx 1.414$, $p = \left( 1 + 2 \right)^2 = 9$",
        r"$E = A^\top = \left[\begin{array}{cc} 1 & 3 \\ 2 & 5 \end{array}\right]$",
    ])
    doc = Document.from_text(text)
    from proofs.audit import audit_document

    audit = audit_document(doc)
    assert [(f.label, f.outcome) for f in audit.findings] == [("B", HOLDS), ("c", HOLDS), ("p", HOLDS), ("E", WRONG)]
    assert audit.inputs[0]["name"] == "A" and audit.inputs[0]["line"] == 1
    marked = annotated_text(doc, audit).splitlines()
    assert r"\begin{array}{cc} 1 & 3 \\ 2 & {\color{red}{5}\to 4} \end{array}" in marked[8]


@pytest.mark.parametrize("side, words", [
    (r"10^{10^{10}}", "too large"),
    (r"(10^{4000})^{4000}", "too large"),
    (r"\frac{1}{0}", "not finite"),
    ("(" * 3000 + "1" + ")" * 3000, "RecursionError"),
])
def test_hostile_arithmetic_is_unchecked_with_a_reason_not_a_hang(side, words):
    [f] = audit_text(f"$a = {side} = 1$").findings
    assert f.outcome == UNCHECKED and words in f.reason


def test_each_printed_term_of_a_sum_is_checked_not_only_the_total():
    """600 + 150 = 750 is right as a total, but the terms stand for 10^2 * 5 = 500 and 10 * 5^2 = 250."""
    text = r"$O(n^2 d) = O(10^2 * 5 + 10 * 5^2) = O(600 + 150) = O(750)$"
    audit = audit_text(text)
    assert [(f.label, f.outcome) for f in audit.findings] == [
        ("600, term 1 of the sum", WRONG), ("150, term 2 of the sum", WRONG), ("O(n^2 d)", HOLDS)]
    assert audit.findings[0].correct == "500"
    right = audit_text(text.replace("600 + 150", "500 + 250"))
    assert [f.outcome for f in right.findings] == [HOLDS, HOLDS, HOLDS]


def test_scientific_notation_is_judged_at_the_mantissas_precision():
    holds = only(audit_text(r"$a = \frac{1}{3000} = 3.3 \times 10^{-4}$"), "a")   # 0.000333...
    assert holds.outcome == HOLDS and holds.printed == "3.3e-4"
    wrong = only(audit_text(r"$a = \frac{1}{3000} = 3.4 \cdot 10^{-4}$"), "a")
    assert wrong.outcome == WRONG and wrong.correct == "3.3e-4"
    assert only(audit_text(r"$a = \frac{1}{3000} = 3.33 \times 10^{-4}$"), "a").outcome == HOLDS
    assert only(audit_text(r"$a = \frac{1}{3000} = 3.34 \times 10^{-4}$"), "a").outcome == WRONG
