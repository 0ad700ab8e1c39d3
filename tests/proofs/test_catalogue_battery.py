"""The seeds' attention code goes through the validate battery, and its table is evidence of the
catalogue's claims (first, so ``check``'s table shows it)."""

from __future__ import annotations

import importlib.util

import pytest

from proofs.catalogue import seed_001, seed_002
from proofs.claims import Verdict
from tests.helpers import OPTIONAL_BACKENDS

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason=f"torch is not installed ({OPTIONAL_BACKENDS['torch']})")


def _battery(outcome) -> dict:
    first = outcome.evidence[0]
    assert first.summary.startswith("the validate battery (kind='mha')"), first.summary
    return first.data


def test_seed001_example_is_diagnosed_by_the_battery():
    outcome = seed_001.check_example_multihead_code()
    assert outcome.verdict is Verdict.REFUTED
    data = _battery(outcome)
    assert data["validate"]["passed"] is False
    assert set(data["faults"]) == {"mha:concat-tokens,mha:no-softmax"}
    assert "concatenated on the wrong axis" in outcome.evidence[0].summary
    assert "no softmax" in outcome.evidence[0].summary


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
