"""The seeds' attention code goes through the validate battery, and its table is evidence of the
catalogue's claims (first, so ``check``'s table shows it)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from proofs.catalogue import claims_for, seed_001, seed_002
from proofs.catalogue._doc import raw_line, run_document_code_until_error
from proofs.claims import Verdict
from tests.helpers import OPTIONAL_BACKENDS

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason=f"torch is not installed ({OPTIONAL_BACKENDS['torch']})")


def _battery(outcome, at: int = 0, prefix: str = "") -> dict:
    first = outcome.evidence[at]
    assert first.summary.startswith(prefix + "the validate battery (kind='mha')"), first.summary
    return first.data


def test_seed001_example_leads_with_its_crash_then_the_adapted_battery():
    outcome = seed_001.check_example_multihead_code()
    assert outcome.verdict is Verdict.REFUTED
    crash, heads, _ = outcome.evidence
    # as printed: the exact error and statement, computed by running the document's code
    with pytest.raises(ValueError) as raised:
        np.concatenate((np.float64(1.0), np.float64(2.0)))
    assert crash.kind == "counterexample" and crash.data["exception"] == f"ValueError: {raised.value}"
    assert crash.data["statement"] == "concatenated_heads = np.concatenate((head1, head2))"
    assert raw_line("001", crash.data["line"]).lstrip("> ") == crash.data["statement"]
    # what it computes instead: 0-d heads that never read V; the missing softmax is the document's own choice
    assert heads.data["head1"]["shape"] == [] and "never use V" in heads.summary
    assert "sem softmax" in heads.data["declared_simplification"] and "not counted" in heads.summary
    data = _battery(outcome, 2, prefix="ADAPTED, not the document's code as printed: ")
    assert data["adapted"] is True and data["validate"]["passed"] is False
    assert set(data["faults"]) == {"mha:concat-tokens,mha:no-softmax"}
    assert "concatenated on the wrong axis" in outcome.evidence[2].summary
    claim = next(c for c in claims_for("001") if c.id == "seed001.exemplo-numerico-l215")
    assert any(a.startswith("added: for the validate battery only") for a in claim.assumptions)


def test_what_the_heads_compute_tells_a_head_that_reads_v():
    rng = np.random.default_rng(0)
    ns = {f"{m}{i}": rng.standard_normal(2) for m in "QKV" for i in (1, 2)}
    ns.update(dk=2, W_O=np.eye(4), attention=lambda q, k, v: np.dot(q, k.T) / np.sqrt(2))
    is_score, ignores_v, _ = seed_001._what_the_heads_compute(ns)
    assert is_score and ignores_v
    ns["attention"] = lambda q, k, v: np.dot(q, k.T) / np.sqrt(2) * v  # the simplification done right: uses V
    is_score, ignores_v, found = seed_001._what_the_heads_compute(ns)
    assert not is_score and not ignores_v and found["head1"]["shape"] == [2]


def test_run_document_code_until_error():
    ns, failure = run_document_code_until_error("a = 1\nb = a + 1", "t")
    assert failure is None and ns["b"] == 2
    ns, failure = run_document_code_until_error("a = 1\nb = a / 0\nc = 3", "t")
    line, source, exc = failure
    assert (line, source, type(exc)) == (2, "b = a / 0", ZeroDivisionError) and ns["a"] == 1 and "c" not in ns


@needs_torch
def test_seed002_classes_through_the_battery():
    correct = seed_002.check_mha_code()
    assert correct.verdict is Verdict.SUPPORTED
    assert _battery(correct)["validate"]["passed"] is True
    prunable = seed_002.check_prunable_code()
    assert prunable.verdict is Verdict.REFUTED
    data = _battery(prunable)
    assert "mha:split-no-transpose" in data["faults"]
    statuses = {p["name"]: p["status"] for p in data["validate"]["properties"]}
    assert statuses["agreement"] == "FAIL" and statuses["head independence"] == "FAIL"
    assert statuses["output projection"] == "PASS"  # W^O is there: the fault is the split, not the projection
