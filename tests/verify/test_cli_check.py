"""`attnverify check`, `derive` and `report` end to end, and the JSON schema of check's results."""

import json
import os
import shutil
from importlib import resources

import jsonschema
import pytest
from click.testing import CliRunner

from proofs.claims import CheckOutcome, Claim, Evidence, Method, Source, Verdict
from verify.cli import main


@pytest.fixture(scope="module")
def schema():
    return json.loads(resources.files("proofs").joinpath("schema/check.schema.json").read_text())


@pytest.fixture(scope="module")
def full_check(tmp_path_factory):
    """One run of the whole catalogue, as a user runs it (shared by the tests below)."""
    out = tmp_path_factory.mktemp("check") / "results.json"
    result = CliRunner().invoke(main, ["check", "--json", str(out), "--no-progress"])
    return result, json.loads(out.read_text())


def test_check_runs_every_claim_and_exits_zero(full_check):
    result, doc = full_check
    assert result.exit_code == 0, result.output
    assert doc["summary"]["crashed"] == 0
    assert doc["summary"]["claims"] == len(doc["results"]) > 0
    assert sum(doc["summary"]["verdicts"].values()) == len(doc["results"])
    for verdict in ("PROVED", "REFUTED", "INFORMAL"):
        assert verdict in result.output
    assert f"{len(doc['results'])} claims in" in result.output


def test_check_json_validates_against_schema(full_check, schema):
    _, doc = full_check
    jsonschema.validate(doc, schema)


def test_schema_rejects_a_result_without_evidence(full_check, schema):
    """The schema can fail: a verdict with no evidence, or an unknown verdict, is invalid."""
    _, doc = full_check
    broken = json.loads(json.dumps(doc))
    broken["results"][0]["checks"][0]["evidence"] = []
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    broken = json.loads(json.dumps(doc))
    broken["results"][0]["verdict"] = "PROBABLY"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def _fake_catalogue(monkeypatch, claims):
    import proofs.catalogue

    monkeypatch.setattr(proofs.catalogue, "all_claims", lambda: claims)


def _claim(claim_id, check):
    return Claim(claim_id, "demo", Source("003_ea119736e090508e.txt", "Lema 9"), "$1 = 1$", [check])


def _proved():
    return CheckOutcome(Verdict.PROVED, Method.SYMBOLIC, [Evidence("derivation", "1 - 1 simplifies to 0")])


def test_check_exits_one_when_a_check_crashes(monkeypatch):
    def crash():
        raise RuntimeError("division by zero in a check")

    _fake_catalogue(monkeypatch, [_claim("ok", _proved), _claim("bad", crash)])
    result = CliRunner().invoke(main, ["check", "--no-progress"])
    assert result.exit_code == 1
    assert "CRASHED" in result.output and "division by zero in a check" in result.output


def test_refuted_claim_is_a_finding_not_a_failure(monkeypatch):
    def refuted():
        return CheckOutcome(Verdict.REFUTED, Method.NUMERIC, [Evidence("counterexample", "x = 2 gives 4, not 5")])

    _fake_catalogue(monkeypatch, [_claim("wrong", refuted)])
    result = CliRunner().invoke(main, ["check", "--no-progress"])
    assert result.exit_code == 0 and "REFUTED" in result.output


def test_only_selects_and_rejects_unknown_patterns(monkeypatch):
    _fake_catalogue(monkeypatch, [_claim("seed003.a", _proved), _claim("seed004.b", _proved)])
    result = CliRunner().invoke(main, ["check", "--only", "seed004*", "--no-progress"])
    assert result.exit_code == 0 and "seed004.b" in result.output and "seed003.a" not in result.output
    result = CliRunner().invoke(main, ["check", "--only", "nothing-like-this", "--no-progress"])
    assert result.exit_code == 2 and "matches no claim" in result.output


def test_only_matches_the_source_as_the_table_shows_it_ignoring_case():
    from proofs.catalogue import all_claims
    from verify.cli.check import select_claims

    claims = all_claims()
    for pattern in ("003 Lema 1", "003 lema 1", "SEED003.LEMA-1", "003_*Lema 1"):
        picked = {c.id for c in select_claims(claims, pattern)}
        assert "seed003.lema-1" in picked, pattern
        assert "seed004.lema-1" not in picked and "seed003.teorema-1" not in picked, pattern
    assert select_claims(claims, "003 Lema 99") == []


def test_derive_lists_and_prints_latex():
    from proofs.derivations import DERIVATIONS

    listing = CliRunner().invoke(main, ["derive", "--list"])
    assert listing.exit_code == 0
    for name in DERIVATIONS:
        assert name in listing.output
    name = next(iter(DERIVATIONS))
    printed = CliRunner().invoke(main, ["derive", name])
    assert printed.exit_code == 0 and "\\begin{align*}" in printed.output
    unknown = CliRunner().invoke(main, ["derive", "no-such-derivation"])
    assert unknown.exit_code == 2 and "expected one of" in unknown.output


def test_derive_list_with_a_name_lists_only_that_one():
    one = CliRunner().invoke(main, ["derive", "--list", "causality"])
    assert one.exit_code == 0 and one.output.startswith("causality") and len(one.output.splitlines()) == 1
    unknown = CliRunner().invoke(main, ["derive", "--list", "no-such-derivation"])
    assert unknown.exit_code == 2 and "expected one of" in unknown.output


def test_report_writes_and_compiles_the_catalogue(tmp_path):
    if shutil.which("pdflatex") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install a TeX engine (.ci/run installs texlive); pdflatex is missing")
        pytest.skip("pdflatex not installed")
    result = CliRunner().invoke(main, ["report", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    tex = (tmp_path / "report.tex").read_text()
    assert (tmp_path / "report.pdf").stat().st_size > 10_000
    # the Monte Carlo evidence comes with its plots (variance sweeps, saturation sweep)
    # the crosscheck's table: every backend against float64, mpmath and SymPy, each line PASS
    section = tex[tex.index(r"\section{Crosscheck: every backend against float64, mpmath, SymPy}"):]
    assert r"\texttt{numpy}" in section and r"\texttt{array\_\allowbreak{}api\_\allowbreak{}strict}" in section
    assert "FAIL" not in section and section.count(r"\textbf{PASS}") >= 28
    figures = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert figures == ["seed003-saturation.png", "seed003-variance-raw.png", "seed003-variance-scaled.png"]
    for name in figures:
        assert f"figures/{name}" in tex


def _torch_notes():
    """The not-run notes seed 002 gives without torch, built as the catalogue builds them."""
    from proofs.catalogue import seed_002

    return [f"{seed_002.DOC} {name}: {seed_002.NEEDS_TORCH['torch']}"
            for name in ("class MultiHeadAttention (line 77)", "class PrunableMultiHeadAttention (line 269)")]


def _check_only(monkeypatch, tmp_path, pattern, notes):
    import proofs.catalogue

    claims = [_claim("seed003.lema-9", _proved),
              Claim("seed002.nota-importante-l138", "demo", Source("002_b7829993fcbce14a.txt",
                                                                   "Nota Importante (line 138)"), "$1$", [_proved])]
    _fake_catalogue(monkeypatch, claims)
    monkeypatch.setattr(proofs.catalogue, "not_run", lambda: list(notes))
    out = tmp_path / f"only-{len(list(tmp_path.iterdir()))}.json"
    args = ["check", "--no-progress", "--json", str(out)] + ([] if pattern is None else ["--only", pattern])
    result = CliRunner(env={"COLUMNS": "300"}).invoke(main, args)
    return result, (json.loads(out.read_text())["not_run"] if result.exit_code == 0 else None)


@pytest.mark.parametrize("pattern,kept", [
    (None, [0, 1]),
    ("003", []),  # the reviewer's case: no seed-002 torch notes under --only 003
    ("seed003*", []),
    ("002", [0, 1]),
    ("SEED002*", [0, 1]),
    ("002_b7829993fcbce14a.txt, *", [0, 1]),
    ("*MultiHeadAttention*", [0, 1]),
    ("002 class multiheadattention*", [0]),
    ("seed002.class-multiheadattention-l77", [0]),
    ("Prunable", [1]),
    ("torch", []),  # the reason is not part of the name
    ("line 77", [0]),
])
def test_not_run_notes_follow_only_by_the_same_rule(pattern, kept):
    from verify.cli.check import select_not_run

    notes = _torch_notes()
    assert select_not_run(notes + ["a note with no source"], pattern) == (
        [notes[i] for i in kept] + (["a note with no source"] if pattern is None else []))


@pytest.mark.parametrize("pattern,kept", [(None, 2), ("003", 0), ("002", 2), ("lema 9", 0)])
def test_check_prints_and_saves_only_the_not_run_notes_only_keeps(monkeypatch, tmp_path, pattern, kept):
    notes = _torch_notes()
    result, not_run = _check_only(monkeypatch, tmp_path, pattern, notes)
    assert result.exit_code == 0, result.output
    assert not_run == notes[:kept]
    printed = [line for line in result.output.splitlines() if line.startswith("not run:")]
    assert len(printed) == kept, result.output
    assert ("needs torch" in result.output) == bool(kept)


def test_only_naming_just_a_claim_not_run_here_says_so(monkeypatch, tmp_path):
    result, _ = _check_only(monkeypatch, tmp_path, "002 class MultiHeadAttention*", _torch_notes())
    assert result.exit_code == 2
    assert "matches only claims not run here: 002 class MultiHeadAttention (line 77): " in result.output
    result, _ = _check_only(monkeypatch, tmp_path, "torch", _torch_notes())
    assert result.exit_code == 2 and "matches no claim id or source" in result.output


def test_a_not_run_note_is_matched_by_the_id_the_catalogue_gives_its_claim():
    """The id select_not_run derives is the one the claim has when torch is installed."""
    from proofs.catalogue._kit import supplementary_claim
    from verify.cli.check import select_not_run

    for line, name in ((77, "class MultiHeadAttention"), (269, "class PrunableMultiHeadAttention")):
        claim = supplementary_claim("002", line, name, title="t", statement="x", checks=[])
        kept = select_not_run(_torch_notes(), claim.id)
        assert kept == [n for n in _torch_notes() if n.startswith(f"002 {claim.source.label}:")], claim.id
