"""``proofs.audit`` over the bundled seeds: every numeric statement gets an outcome, and every
wrong number the catalogue's hand-written worked examples know about is found WRONG by the
engine too, entry by entry, with the same new/carried origin."""

from __future__ import annotations

import inspect

import pytest

from proofs.audit import OUTCOMES, UNCHECKED, WRONG, audit_file, totals
from proofs.catalogue import DOCUMENTS, SEEDS_DIR
from proofs.catalogue._worked import WorkedExample


@pytest.fixture(scope="module")
def audits():
    return {doc: audit_file(SEEDS_DIR / name) for doc, name in sorted(DOCUMENTS.items())}


def _worked_examples(doc: str) -> list[WorkedExample]:
    """Every WorkedExample a seed module builds (functions taking no argument that return one)."""
    from importlib import import_module

    module = import_module(f"proofs.catalogue.seed_{doc}")
    found = []
    for name, fn in vars(module).items():
        if name.startswith("example") and inspect.isfunction(fn) and not inspect.signature(fn).parameters:
            value = fn()
            if isinstance(value, WorkedExample):
                found.append(value)
    return found


def test_every_numeric_statement_has_an_outcome_with_its_evidence(audits):
    for doc, audit in audits.items():
        for f in audit.findings:
            assert f.outcome in OUTCOMES, (doc, f.line, f.outcome)
            if f.outcome == UNCHECKED:
                assert f.reason.strip(), f"{doc} line {f.line}: UNCHECKED without a reason"
            else:
                assert f.entries and f.correct and f.max_deviation is not None, (doc, f.line)
            if f.outcome == WRONG:
                assert f.origin in ("new", "carried"), (doc, f.line)
                assert f.max_deviation > 0


def test_the_worked_examples_are_all_checked(audits):
    """Seeds 000 and 004 hold the worked examples: none of their printed numbers is left unchecked."""
    for doc in ("000", "004"):
        unchecked = [(f.line, f.label, f.reason) for f in audits[doc].findings if f.outcome == UNCHECKED]
        assert not unchecked, unchecked
    t = totals(list(audits.values()))
    assert t["statements"] == t["HOLDS"] + t["WRONG"] + t["UNCHECKED"]
    assert t["checked"] == t["HOLDS"] + t["WRONG"]


@pytest.mark.parametrize("doc", ["000", "004"])
def test_the_engine_finds_what_the_catalogue_knows(audits, doc):
    """Ground truth: the catalogue's per-example code. Each quantity it defines by name is found by
    the engine at the same line, with the same wrong entries and the same new/carried split."""
    examples = _worked_examples(doc)
    assert examples, f"seed_{doc} builds no WorkedExample"
    by_name = {}
    for f in audits[doc].findings:
        if f.name:
            by_name.setdefault(f.name.replace(" ", ""), []).append(f)
    compared = wrong = 0
    for example in examples:
        per: dict[str, list[dict]] = {}
        for row in example.recompute():
            per.setdefault(row["quantity"], []).append(row)
        for quantity, rows in per.items():
            line = int(rows[0]["where"].split()[-1]) if rows[0]["where"].startswith("line") else None
            candidates = [f for f in by_name.get(quantity.replace(" ", ""), []) if line is None or f.line == line]
            if not candidates:  # complexity counts have no name in the document: match by line
                candidates = [f for f in audits[doc].findings if f.line == line and f.entries]
                if any(not r["ok"] for r in rows) or not candidates:
                    pytest.fail(f"{doc} {quantity} (line {line}): no finding of the engine matches it")
                assert all(f.outcome != WRONG for f in candidates)
                continue
            f = candidates[0]
            assert [e["printed"] for e in f.entries] == [r["printed"] for r in rows], quantity
            assert [i for i, r in enumerate(rows) if not r["ok"]] == [e["index"] for e in f.entries if not e["ok"]], \
                quantity
            assert [i for i, r in enumerate(rows) if not r["ok"] and r["slip"]] == \
                [e["index"] for e in f.entries if e["origin"] == "new"], quantity
            compared += 1
            wrong += any(not r["ok"] for r in rows)
    assert compared and wrong, (compared, wrong)
