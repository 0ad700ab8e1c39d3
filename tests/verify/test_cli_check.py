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
    from verify.cli_check import select_claims

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
    figures = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    assert figures == ["seed003-saturation.png", "seed003-variance-raw.png", "seed003-variance-scaled.png"]
    for name in figures:
        assert f"figures/{name}" in tex
