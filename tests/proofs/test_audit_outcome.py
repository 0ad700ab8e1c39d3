"""The engine's verdict on each worked example agrees with the catalogue's hand-written one: same
verdict, same wrong quantities, same split into arithmetic slips and carried errors."""

from __future__ import annotations

import pytest

from proofs.audit.outcome import example_outcome
from proofs.catalogue import seed_000, seed_004
from proofs.catalogue._doc import document_path
from proofs.claims import Verdict

CASES = [  # (document, first line, last line, the catalogue's WorkedExample)
    ("000", 16, 50, seed_000.example_projections),
    ("000", 70, 84, seed_000.example_output),
    ("000", 160, 170, seed_000.example_complexity),
    ("004", 19, 77, seed_004.example),
]


@pytest.mark.parametrize("doc, first, last, build", CASES, ids=lambda c: getattr(c, "__name__", str(c)))
def test_engine_and_catalogue_agree_on_the_worked_examples(doc, first, last, build):
    catalogue = build().check()
    engine = example_outcome(document_path(doc), first, last, "example")
    assert engine.verdict is catalogue.verdict
    if catalogue.verdict is Verdict.REFUTED:
        norm = lambda names: sorted(n.replace(" ", "") for n in names)  # noqa: E731
        ours, theirs = engine.evidence[0].data, catalogue.evidence[0].data
        assert norm(ours["quantities_wrong"]) == norm(theirs["quantities_wrong"])
        assert norm(ours["arithmetic_slips"]) == norm(theirs["arithmetic_slips"])
        assert norm(ours["carried_over"]) == norm(theirs["carried_over"])


def test_a_range_with_an_unchecked_statement_is_never_proved(tmp_path):
    doc = tmp_path / "d.md"
    doc.write_text("$a = 1 + 1 = 2$\n$b = c + 1 = 2$\n$e = 1 + 1 = 3$\n", encoding="utf-8")
    assert example_outcome(doc, 1, 1, "t").verdict is Verdict.PROVED
    assert example_outcome(doc, 1, 2, "t").verdict is Verdict.INCONCLUSIVE
    assert example_outcome(doc, 1, 3, "t").verdict is Verdict.REFUTED
    with pytest.raises(ValueError, match="no numeric statement"):
        example_outcome(doc, 5, 9, "t")
