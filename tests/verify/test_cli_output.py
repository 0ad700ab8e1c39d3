"""What the commands print and where: text kept verbatim, ``--json -``, ``--strict``, closed pipes."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from proofs.claims import CheckOutcome, Claim, Evidence, Method, Source, Verdict
from verify.cli import main

BRACKETS = "pip install 'attnverify[torch]' and [x] and [bold]not bold[/bold]"


def fake_catalogue(monkeypatch, claims, not_run=()):
    import proofs.catalogue

    monkeypatch.setattr(proofs.catalogue, "all_claims", lambda: claims)
    monkeypatch.setattr(proofs.catalogue, "not_run", lambda: list(not_run))


def claim(claim_id, verdict=Verdict.PROVED, summary="1 - 1 simplifies to 0", label="Lema 9"):
    method = Method.NUMERIC if verdict is Verdict.REFUTED else Method.SYMBOLIC
    extra = {"corrected_statement": "$1 = 1$"} if verdict is Verdict.CORRECTED else {}
    outcome = CheckOutcome(verdict, method, [Evidence("derivation", summary)], **extra)
    return Claim(claim_id, "demo", Source("003_ea119736e090508e.txt", label), "$1 = 1$", [lambda: outcome])


def check(*args, env=None):
    return CliRunner(env=env).invoke(main, ["check", "--no-progress", *args])


def test_claims_evidence_and_footers_keep_their_brackets(monkeypatch):
    """rich markup is never applied to our text: '[torch]' and '[x]' print as written."""
    def crash():
        raise RuntimeError("failed at [x] of 'attnverify[torch]'")

    fake_catalogue(monkeypatch, [claim("seed003.[x]", summary=BRACKETS, label="Lema [x]"),
                                 Claim("bad[x]", "demo", Source("003_ea119736e090508e.txt", "L"), "$1$", [crash])],
                   not_run=["the document's code needs torch (pip install 'attnverify[torch]')"])
    result = check(env={"COLUMNS": "400"})
    assert "seed003.[x]" in result.output and "Lema [x]" in result.output
    assert BRACKETS in result.output
    assert "(pip install 'attnverify[torch]')" in result.output
    assert "failed at [x] of 'attnverify[torch]'" in result.output
    assert "bad[x] crashed:" in result.output


def test_strict_exits_one_on_refuted_or_corrected_claims(monkeypatch):
    for verdict in (Verdict.REFUTED, Verdict.CORRECTED):
        fake_catalogue(monkeypatch, [claim("ok"), claim("finding", verdict)])
        assert check().exit_code == 0
        strict = check("--strict")
        assert strict.exit_code == 1, strict.output
        assert "--strict" in strict.output
    fake_catalogue(monkeypatch, [claim("ok"), claim("informal", Verdict.INFORMAL)])
    assert check("--strict").exit_code == 0


def test_check_json_dash_writes_json_to_stdout_and_tables_to_stderr(monkeypatch):
    fake_catalogue(monkeypatch, [claim("a"), claim("b", Verdict.REFUTED)])
    result = check("--json", "-")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert [r["id"] for r in doc["results"]] == ["a", "b"] and doc["incomplete"] is False
    assert "attnverify check" in result.stderr and "REFUTED" in result.stderr


def test_mc_json_dash_writes_json_to_stdout_and_tables_to_stderr():
    result = CliRunner().invoke(main, ["mc", "variance", "--dk", "2", "--samples", "2000", "--seed", "1",
                                       "--json", "-"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["experiment"] == "variance" and doc["points"][0]["d_k"] == 2
    assert "variance: each interval" in result.stderr


def _closed_pipe(args, cwd):
    """Run ``attnverify args`` with stdout's reader gone before the first write."""
    exe = os.path.join(os.path.dirname(sys.executable), "attnverify")
    proc = subprocess.Popen([exe, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    return proc.wait(timeout=300), err


def test_mc_writes_its_files_and_exits_quietly_when_stdout_is_closed(tmp_path):
    """``... --json bp.json --plot bp.png | head -1``: the files are written, nothing is said."""
    code, err = _closed_pipe(["mc", "variance", "--dk", "1..64", "--samples", "1000", "--seed", "1",
                              "--json", "bp.json", "--plot", "bp.png"], tmp_path)
    assert err == "" and code == 0
    assert json.loads((tmp_path / "bp.json").read_text())["points"][-1]["d_k"] == 64
    assert (tmp_path / "bp.png").read_bytes()[:4] == b"\x89PNG"


def test_check_writes_its_json_and_exits_quietly_when_stdout_is_closed(tmp_path):
    code, err = _closed_pipe(["check", "--only", "seed004.corolario-1.1", "--json", "c.json", "--strict"], tmp_path)
    assert err == "" and code == 0
    assert [r["id"] for r in json.loads((tmp_path / "c.json").read_text())["results"]] == ["seed004.corolario-1.1"]


def terminal_of_width(monkeypatch, columns):
    """The commands print to a terminal ``columns`` wide."""
    from rich.console import Console

    import verify.cli.check
    import verify.cli.mc

    for module in (verify.cli.check, verify.cli.mc):
        monkeypatch.setattr(module, "stdout_console", lambda stderr=False: Console(width=columns, stderr=stderr))


@pytest.mark.parametrize("columns", [80, 40])
def test_mc_table_keeps_every_verdict_whole(monkeypatch, columns, tmp_path):
    terminal_of_width(monkeypatch, columns)
    out = tmp_path / "v.json"
    result = CliRunner().invoke(
        main, ["mc", "variance", "--dk", "1,2", "--samples", "2000", "--seed", "1", "--mean-q", "1", "--json", str(out)])
    assert result.exit_code == 0
    doc = json.loads(out.read_text())
    table = result.stdout
    assert "…" not in table
    verdicts = [c["verdict"] for p in doc["points"] for c in p["checks"]]
    for v in set(verdicts):
        assert table.count(v) >= verdicts.count(v), (v, table)
    assert max(map(len, table.splitlines())) <= columns


@pytest.mark.parametrize("columns", [80, 40])
def test_check_table_keeps_every_verdict_whole(monkeypatch, columns):
    long = "a long piece of evidence that has to wrap over several lines of the table " * 3
    claims = [claim(f"seed00{i}.a-rather-long-claim-identifier", v, summary=long) for i, v in enumerate(Verdict)]
    fake_catalogue(monkeypatch, claims)
    terminal_of_width(monkeypatch, columns)
    result = check()
    assert "…" not in result.output
    for v in Verdict:
        assert v.value in result.output
    assert max(map(len, result.output.splitlines())) <= columns
    assert result.output.count("several") == 3 * len(Verdict)  # the evidence wraps, all of it is there


def test_tables_written_to_a_pipe_follow_columns(monkeypatch):
    fake_catalogue(monkeypatch, [claim("a", summary="evidence " * 30)])
    assert max(map(len, check(env={"COLUMNS": "50"}).output.splitlines())) <= 50
    assert max(map(len, check(env={"COLUMNS": None}).output.splitlines())) > 80  # a pipe: 160 columns


def test_derive_exits_zero_when_its_reader_stops_early(tmp_path):
    from proofs.derivations import DERIVATIONS

    code, err = _closed_pipe(["derive", next(iter(DERIVATIONS))], tmp_path)
    assert (code, err) == (0, "")
