"""The catalogue of the seeds' claims: coverage of the labels, every check runs, key verdicts
agree with independent arguments written here, the checkers reject wrong inputs, and every
refutation carries its counterexample.
"""

from __future__ import annotations

import filecmp
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest

from proofs.catalogue import (
    DOCUMENTS,
    SEEDS_DIR,
    all_claims,
    claims_for,
    is_statement_label,
    labels_in_document,
    run_all,
)
from proofs.catalogue._doc import bmatrices, repair
from proofs.catalogue._kit import StepFailed, equal, informal_outcome, numeric, proof
from proofs.catalogue._worked import Quantity, WorkedExample
from proofs.claims import Verdict

SHARED_SEEDS = Path(__file__).resolve().parents[2].parent / "shared" / "seeds"

# A second, independent reading of the headers: on the repaired text (not the ASCII skeleton
# _labels matches), a bold span at the start of a line whose first word is a statement kind.
_KINDS = re.compile(r"^\W*\*\*\s*(Lema|Teorema|Proposi\S*|Corol\S*|Observa\S*|Defini\S*|Exemplo)(?![A-Za-z])(\s*\d)?")


def header_lines(path) -> list[int]:
    """The lines a second reading takes for statement headers (Lema, Teorema, Proposição and
    Corolário only with a number)."""
    found = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        m = _KINDS.match(repair(line))
        numbered = m and m.group(1).startswith(("Lema", "Teorema", "Proposi", "Corol"))
        if m and (m.group(2) or not numbered):
            found.append(number)
    return found


EXPECTED_003 = [
    ("Lema 1", 21), ("Teorema 1", 113), ("Lema 2", 200), ("Corolário 1", 244), ("Lema 3", 279),
    ("Teorema 3", 330), ("Lema 4", 342), ("Teorema 5", 411), ("Teorema 6", 425), ("Corolário 3", 451),
    ("Teorema 7", 481), ("Lema 6", 513), ("Teorema 8", 541), ("Corolário 4", 549),
]


@pytest.fixture(scope="module")
def claims():
    return all_claims()


_CPU_SECONDS: dict[str, float] = {}


@pytest.fixture(scope="module")
def results(claims):
    start = time.process_time()
    out = {r.claim.id: r for r in run_all(claims)}
    _CPU_SECONDS["run_all"] = time.process_time() - start  # CPU, not wall: the machine may be shared
    return out


# ---------------------------------------------------------------- (a) labels against sources

@pytest.mark.parametrize("doc", sorted(DOCUMENTS))
def test_every_label_has_exactly_one_claim_and_back(doc, claims):
    name = DOCUMENTS[doc]
    found = labels_in_document(SEEDS_DIR / name)
    assert [line for _, line in found] == header_lines(SEEDS_DIR / name), "the two readings of the headers differ"
    assert len(set(found)) == len(found), "labels must be unique within a document (disambiguated by line)"
    sources = [(c.source.label, c.source.line) for c in claims
               if c.source.document == name and is_statement_label(c.source.label)]
    assert sorted(sources) == sorted(found), "catalogue sources and document labels differ"
    assert len(set(sources)) == len(sources), "a label has more than one claim"


def test_supplementary_claims_point_at_their_label(claims):
    """Seed 002 has no statement header; its claims name a bold label or class on their line."""
    supplementary = [c for c in claims if not is_statement_label(c.source.label)]
    assert supplementary and {c.source.document for c in supplementary} == {DOCUMENTS["002"]}
    for c in supplementary:
        label = c.source.label.rsplit(" (line ", 1)[0]
        line = (SEEDS_DIR / c.source.document).read_text(encoding="utf-8").splitlines()[c.source.line - 1]
        assert label in repair(line), (c.id, label, line)
        assert c.source.label.endswith(f"(line {c.source.line})")


def test_labels_are_headers_not_mentions():
    found = labels_in_document("003")
    assert found == EXPECTED_003
    # "O **Lema 1** destaca" (line 87) and "como demonstrado no Teorema 6" (line 519) are mentions
    assert all(line not in (87, 519) for _, line in found)
    assert [label for label, _ in labels_in_document("000") if label.startswith("Exemplo")] == [
        "Exemplo Numérico (line 16)", "Exemplo Numérico (line 70)", "Exemplo Numérico (line 160)"]


def test_label_rule_on_synthetic_text(tmp_path):
    text = "\n".join([
        "**Lema 1.1** (Título): header",                     # 1 found
        "Como mostra o **Lema 1.1**, ...",                    # 2 mention
        "**Prova do Lema 2:**",                               # 3 proof header
        "> \u00f0\u0178\u2019\u00a1 **Exemplo Num\u00c3\u00a9rico:**",  # 4 found (cp1252 mojibake)
        "==**Proposi\u221a\u00df\u221a\u00a3o 3 (X):** ...",  # 5 found (Mac-Roman mojibake)
        "**Corolário:** no number",                           # 6 not a statement (number required)
        "**Teoremas 1 e 2** são ...",                         # 7 not the kind (plural)
        "> 🌀 **Comentário Avançado:** O **Lema 1** destaca", # 8 mention after another label
        "**Observações Importantes**",                        # 9 found (unnumbered kind)
        "**Exemplo Numérico:**",                              # 10 repeated -> disambiguated
    ])
    path = tmp_path / "doc.txt"
    path.write_text(text, encoding="utf-8")
    assert labels_in_document(path) == [
        ("Lema 1.1", 1), ("Exemplo Numérico (line 4)", 4), ("Proposição 3", 5),
        ("Observações Importantes", 9), ("Exemplo Numérico (line 10)", 10)]


@pytest.mark.parametrize("doc", sorted(DOCUMENTS))
def test_labels_survive_repairing_the_encoding(doc, tmp_path):
    """The rule finds the same headers in the mojibake and in the repaired text."""
    raw = (SEEDS_DIR / DOCUMENTS[doc]).read_text(encoding="utf-8").splitlines()
    fixed = tmp_path / "fixed.txt"
    fixed.write_text("\n".join(repair(line) for line in raw), encoding="utf-8")
    assert labels_in_document(fixed) == labels_in_document(doc)


def test_bundled_seeds_are_the_shared_ones():
    if not SHARED_SEEDS.is_dir():
        pytest.skip(f"{SHARED_SEEDS} not present")
    for name in DOCUMENTS.values():
        assert filecmp.cmp(SEEDS_DIR / name, SHARED_SEEDS / name, shallow=False), name


# ---------------------------------------------------------------- (b) everything runs

def test_every_claim_runs_and_gets_a_verdict(claims, results):
    assert len({c.id for c in claims}) == len(claims)
    for c in claims:
        r = results[c.id]
        assert r.error is None, f"{c.id} crashed:\n{r.error}"
        assert r.verdict in set(Verdict)
        assert c.checks and r.outcomes and all(o.evidence for o in r.outcomes)
        assert c.statement.count("$") % 2 == 0 and "$" in c.statement  # text with $...$ math, as the report expects


def test_verdicts_of_the_issue_examples(results):
    assert results["seed003.corolario-4"].verdict is Verdict.REFUTED
    assert results["seed004.lema-1"].verdict is Verdict.REFUTED
    assert results["seed000.proposicao-2.1"].verdict is Verdict.CORRECTED


# ---------------------------------------------------------------- (c) independent arguments

def _example_004():
    x = np.array([[float(e[0]) for e in m] for m in bmatrices("004", 23)])
    wq, wk, wv = (np.array(m, dtype=float) for m in bmatrices("004", 27))
    return x, wq, wk, wv


def test_translation_changes_self_attention(results):
    """Seed 004, Lema 1: plain NumPy, the document's own numbers, t = (1, 1, 1, 1)."""
    x, wq, wk, wv = _example_004()

    def attention(x):
        s = (x @ wq) @ (x @ wk).T
        s = np.where(np.tril(np.ones((3, 3))) > 0, s, -np.inf)
        a = np.exp(s - s.max(1, keepdims=True))
        return (a / a.sum(1, keepdims=True)) @ (x @ wv)

    assert np.abs(attention(x + 1.0) - attention(x)).max() > 0.1
    assert results["seed004.lema-1"].verdict is Verdict.REFUTED


def test_softmax_gradient_does_not_explode(results):
    """Seed 003, Corolário 4: the Jacobian at scores (t, 0) shrinks as t (= ||s||) grows."""
    norms = []
    for t in (1.0, 10.0, 30.0):
        p = np.exp([t, 0.0] - np.max([t, 0.0]))
        p /= p.sum()
        norms.append(np.linalg.norm(np.diag(p) - np.outer(p, p), 2))
    assert norms[0] > norms[1] > norms[2] and max(norms) <= 0.5
    assert results["seed003.corolario-4"].verdict is Verdict.REFUTED


def test_projection_cost_does_not_grow_with_heads(results):
    """Seed 000, Proposição 2.1: count the multiplications of the projections directly."""
    n, d = 5, 8

    def projection_mults(h):
        dk = d // h
        per_head = 3 * n * d * dk  # X (n x d) times W_i (d x dk), for Q, K and V
        return h * per_head + n * (h * dk) * d  # plus the output projection

    assert len({projection_mults(h) for h in (1, 2, 4, 8)}) == 1  # not O(h n d^2)
    assert results["seed000.proposicao-2.1"].verdict is Verdict.CORRECTED


def test_worked_example_004_weights(results):
    """Seed 004: from the document's own scores 1.22 and 1.32, alpha_21 = 1/(1 + e^0.1) = 0.4750."""
    alpha_21 = 1 / (1 + math.exp(0.1))
    assert abs(alpha_21 - 0.47) > 0.005  # the printed 0.47 is not a rounding of 0.47502
    x, wq, _, _ = _example_004()
    assert not np.allclose((x @ wq)[0], [0.2, 0.8, 0.6, 0.8])  # q_1 as printed on line 32
    assert results["seed004.exemplo-numerico"].verdict is Verdict.REFUTED


def test_worked_example_000_output_projection(results):
    heads = np.hstack([np.array(bmatrices("000", 56)[0], float), np.array(bmatrices("000", 58)[0], float)])
    out = heads @ np.array(bmatrices("000", 78)[0], float)
    assert abs(out[0, 0] - 1.55) > 0.1  # the document prints 1.55; it is 1.34
    assert results["seed000.exemplo-numerico-l70"].verdict is Verdict.REFUTED


def test_dot_product_variance(results):
    """Seed 003, Teorema 6: a quick Monte Carlo of our own agrees with Var(q.k) = d_k."""
    rng = np.random.default_rng(0)
    for dk in (4, 32):
        s = (rng.standard_normal((40_000, dk)) * rng.standard_normal((40_000, dk))).sum(1)
        assert abs(s.var() / dk - 1) < 0.06
    assert results["seed003.teorema-6"].verdict is Verdict.PROVED


def test_softmax_jacobian_by_finite_differences(results):
    rng = np.random.default_rng(1)
    z = rng.standard_normal(5)
    softmax = lambda z: np.exp(z - z.max()) / np.exp(z - z.max()).sum()  # noqa: E731
    s, h = softmax(z), 1e-6
    fd = np.array([(softmax(z + h * e) - softmax(z - h * e)) / (2 * h) for e in np.eye(5)]).T
    assert np.abs(fd - (np.diag(s) - np.outer(s, s))).max() < 1e-8
    assert results["seed003.teorema-8"].verdict is Verdict.PROVED


def test_output_is_not_a_combination_of_raw_inputs(results):
    """Seed 003, Lema 1: y = A X W^v, not A X."""
    rng = np.random.default_rng(2)
    x, wv = rng.standard_normal((3, 2)), rng.standard_normal((2, 2))
    a = np.full((3, 3), 1 / 3)
    assert np.abs(a @ (x @ wv) - a @ x).max() > 1e-3
    assert results["seed003.lema-1"].verdict is Verdict.CORRECTED


def test_multihead_code_example_crashes(results):
    """Seed 001, line 215: np.concatenate of two 0-d arrays raises."""
    with pytest.raises(ValueError):
        np.concatenate((np.float64(1.0), np.float64(2.0)))
    assert results["seed001.exemplo-numerico-l215"].verdict is Verdict.REFUTED


def test_causal_mask_claims(results):
    assert results["seed004.teorema-1"].verdict is Verdict.PROVED
    assert results["seed004.corolario-1.1"].verdict is Verdict.PROVED


# ---------------------------------------------------------------- (d) checkers reject wrong inputs

def _rounded(value, k):
    if isinstance(value, list):
        return [_rounded(v, k) for v in value]
    return f"{value:.{k}f}"


def _with_printed(example: WorkedExample, printed: dict) -> WorkedExample:
    return WorkedExample(example.title, example.given,
                         [Quantity(q.name, printed[q.name], q.formula, q.where) for q in example.quantities])


@pytest.mark.parametrize("which", ["000-l16", "000-l70", "004-l19"])
def test_worked_example_checker_with_correct_and_perturbed_numbers(which):
    from proofs.catalogue import seed_000, seed_004

    example = {"000-l16": seed_000.example_projections, "000-l70": seed_000.example_output,
               "004-l19": seed_004.example}[which]()
    assert example.check().verdict is Verdict.REFUTED  # as the document prints it
    correct = {}
    for name, value in example.correct_values().items():
        row = value[0] if isinstance(value, list) and len(value) == 1 else value
        correct[name] = _rounded(row, 4)
    good = _with_printed(example, correct)
    assert good.check().verdict is Verdict.PROVED
    name = example.quantities[-1].name
    bad_value = correct[name]
    while isinstance(bad_value, list):
        bad_value = bad_value[0]
    perturbed = dict(correct)
    perturbed[name] = _replace_first(correct[name], f"{float(bad_value) + 0.01:.4f}")
    outcome = _with_printed(example, perturbed).check()
    assert outcome.verdict is Verdict.REFUTED
    assert [r["quantity"] for r in outcome.evidence[0].data["wrong"]] == [name]


def _replace_first(value, new):
    if isinstance(value, list):
        return [_replace_first(value[0], new), *value[1:]]
    return new


def test_rounding_rule_accepts_ties_and_rejects_beyond_half_a_unit():
    def one(printed, value):
        ex = WorkedExample("t", {"v": value}, [Quantity("w", printed, lambda e: e["v"])])
        return ex.check().verdict

    assert one("0.47", "0.465") is Verdict.PROVED   # exact tie: either rounding is accepted
    assert one("0.46", "0.465") is Verdict.PROVED
    assert one("0.47", "0.4650001") is Verdict.PROVED
    assert one("0.47", "0.4750001") is Verdict.REFUTED
    assert one("0.47", "0.475021") is Verdict.REFUTED  # the document's alpha_21
    assert one("1.4", "1.32") is Verdict.REFUTED


def test_steps_reject_a_wrong_identity():
    import sympy as sp

    x = sp.Symbol("x")
    steps = [equal((x + 1) ** 2, x ** 2 + 2 * x + 1, "binomial")]
    assert proof("right", steps).valid
    steps.append(equal((x + 1) ** 2, x ** 2 + 1, "wrong binomial"))
    wrong = proof("wrong", steps)
    assert not wrong.valid and [r.reason for r in wrong.failed] == ["wrong binomial"]


def test_the_second_reading_of_headers_counts_headers_not_mentions(tmp_path):
    text = ("**Lema 1** (x): a.\n> **Exemplo Numérico:** b\nO **Lema 1** destaca c\n**Teorema** sem número\n"
            "**Prova do Lema 1:** d\n==**Corolário 2.1** e\n")
    (tmp_path / "t.md").write_text(text, encoding="utf-8")
    assert header_lines(tmp_path / "t.md") == [1, 2, 6]
    assert [line for _, line in labels_in_document(tmp_path / "t.md")] == [1, 2, 6]


def test_inventory_is_current(results):
    """INVENTORY.md is what ``python -m proofs.catalogue.inventory`` writes today."""
    from proofs.catalogue import inventory, not_run

    if not_run():
        pytest.skip("claims not run here (pip install 'attnverify[torch]'): the inventory lists every claim's verdict")
    verdicts = {cid: (r.verdict.value if r.verdict is not None else "CRASHED") for cid, r in results.items()}
    assert inventory.render(verdicts) == inventory.PATH.read_text(encoding="utf-8"), (
        f"INVENTORY.md is not current: run {inventory.COMMAND}")


def test_informal_outcome_follows_its_proxy():
    ev = numeric("proxy")
    assert informal_outcome("why", True, ev, refutes_if_false="x").verdict is Verdict.INFORMAL
    assert informal_outcome("why", False, ev, refutes_if_false="x").verdict is Verdict.REFUTED


def test_translation_check_follows_the_attention_it_is_given(monkeypatch):
    """The verdict is computed: with an attention that ignores its inputs the counterexample is
    gone, and one unchanged example proves no invariance, so the check gives no verdict (it
    used to return PROVED from that single example)."""
    import numerics
    from proofs.catalogue import seed_004

    assert seed_004.check_translation_invariance().verdict is Verdict.REFUTED
    monkeypatch.setattr(numerics, "scaled_dot_product_attention", lambda q, k, v, **kw: np.zeros_like(v))
    with pytest.raises(RuntimeError, match="neither proves nor refutes"):
        seed_004.check_translation_invariance()


def test_heads_independence_check_detects_coupled_heads(monkeypatch):
    """Seed 000, Lema 1.1: if head 1's weights moved with head 2's parameters, the check says so."""
    import numerics
    from proofs.catalogue import seed_000

    real = numerics.multi_head_attention

    def coupled(x, params, **kw):
        out, w = real(x, params, **kw)
        return out, w + 1e-3 * np.abs(params.w_q[:, 4:]).sum()

    assert seed_000.check_heads_independent().verdict is Verdict.PROVED
    monkeypatch.setattr(numerics, "multi_head_attention", coupled)
    # a coupled implementation is a defect of numerics, not a counterexample to the lemma: no verdict
    with pytest.raises(StepFailed, match="head 1's weights unchanged"):
        seed_000.check_heads_independent()


def test_variance_steps_detect_a_wrong_claim():
    from proofs.catalogue.seed_003 import _variance_facts

    f = _variance_facts()
    assert not proof("wrong", [equal(f["standard"], 2 * f["d_k"], "Var(q . k) = 2 d_k (wrong)")]).valid


# ---------------------------------------------------------------- (e) evidence of every finding

def test_refutations_and_corrections_carry_their_evidence(results):
    for cid, r in results.items():
        deciding = [o for o in r.outcomes if o.verdict is r.verdict]
        assert deciding, cid
        if r.verdict is Verdict.REFUTED:
            assert any(e.kind in ("counterexample", "statistic") for o in deciding for e in o.evidence), cid
        if r.verdict is Verdict.CORRECTED:
            for o in deciding:
                assert o.corrected_statement and o.corrected_statement != r.claim.statement, cid
                assert any(e.kind == "counterexample" for e in o.evidence), cid
        if r.verdict is Verdict.INFORMAL:
            assert any(e.kind == "note" and "not a mathematical statement" in e.summary
                       for o in deciding for e in o.evidence), cid
        if r.verdict is Verdict.PROVED:
            for o in deciding:
                steps = [s for e in o.evidence if e.kind == "derivation" for s in e.data.get("steps", [])]
                entries = [s for e in o.evidence for s in e.data.get("entries", [])]
                assert steps or entries, f"{cid}: PROVED without checked steps"
                assert all(s.get("verified", s.get("passed", True)) for s in steps), cid
                assert all(s["ok"] for s in entries), cid


def test_results_serialise(results):
    import json

    for r in results.values():
        json.dumps(r.to_dict())


def test_whole_catalogue_is_fast(results):
    """The catalogue's CPU time (wall-clock time on a contended machine says nothing about the code)."""
    assert _CPU_SECONDS["run_all"] < 40


@pytest.mark.parametrize("torch_installed", [False, True])
def test_claims_that_need_torch_are_listed_as_not_run_when_torch_is_missing(monkeypatch, torch_installed):
    """Both worlds, whichever this machine is: listing the claims never imports torch, so
    ``find_spec`` decides alone."""
    import importlib.machinery
    import importlib.util

    from proofs import catalogue

    real = importlib.util.find_spec
    fake_spec = importlib.machinery.ModuleSpec("torch", loader=None)

    def find_spec(name, *args):
        if name == "torch":
            return fake_spec if torch_installed else None
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    ids = {c.id for c in catalogue.all_claims()}
    code_claims = {i for i in ids if "multiheadattention" in i}
    if torch_installed:
        assert len(code_claims) == 2 and catalogue.not_run() == [] and len(claims_for("002")) == 4
    else:
        assert not code_claims and len(claims_for("002")) == 2
        reasons = catalogue.not_run()
        assert len(reasons) == 2 and all("needs torch" in r and "attnverify[torch]" in r for r in reasons)


def test_not_run_matches_this_machine():
    import importlib.util

    from proofs import catalogue

    assert (catalogue.not_run() == []) == (importlib.util.find_spec("torch") is not None)


def test_claim_id_is_the_rule_every_catalogue_id_follows():
    from proofs.catalogue import all_claims, claim_id

    for c in all_claims():
        doc = c.source.document[:3]
        assert claim_id(doc, c.source.label) == c.id
    assert claim_id("003", "Corolário 4") == "seed003.corolario-4"
    assert claim_id("002", "class MultiHeadAttention (line 77)") == "seed002.class-multiheadattention-l77"
