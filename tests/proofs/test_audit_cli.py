"""``attnverify audit``: runs over the bundled seeds, prints the table and the share checked,
writes --json and --annotate, and exits as ``check`` does (0; 1 under --strict with a WRONG)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from proofs.catalogue import DOCUMENTS, SEEDS_DIR
from verify.cli import main

SEEDS = [str(SEEDS_DIR / name) for name in sorted(DOCUMENTS.values())]


def test_audit_of_the_seeds_prints_counts_and_share_and_writes_json(tmp_path):
    out = tmp_path / "audit.json"
    result = CliRunner().invoke(main, ["audit", *SEEDS, "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    t = data["totals"]
    assert t["statements"] == t["HOLDS"] + t["WRONG"] + t["UNCHECKED"] > 0
    line = f"checked {t['checked']}/{t['statements']} ({100 * t['share_checked']:.1f}%)"
    assert line in result.output
    assert [d["document"] for d in data["documents"]] == sorted(DOCUMENTS.values())
    for doc in data["documents"]:
        for f in doc["findings"]:
            assert f["outcome"] in ("HOLDS", "WRONG", "UNCHECKED")
            assert f["outcome"] != "UNCHECKED" or f["reason"]


def test_strict_exits_1_on_a_wrong_value_and_0_without(tmp_path):
    wrong = tmp_path / "wrong.md"
    wrong.write_text("$a = 1 + 1 = 3$\n", encoding="utf-8")
    right = tmp_path / "right.md"
    right.write_text("$a = 1 + 1 = 2$\n", encoding="utf-8")
    assert CliRunner().invoke(main, ["audit", str(wrong)]).exit_code == 0  # a finding, not a failure
    strict = CliRunner().invoke(main, ["audit", "--strict", str(wrong)])
    assert strict.exit_code == 1 and "--strict: a printed value is WRONG" in strict.output
    assert CliRunner().invoke(main, ["audit", "--strict", str(right)]).exit_code == 0


def test_json_to_stdout_and_annotate_one_file_and_several(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("> $a = 1 + 1 = 3$\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["audit", str(doc), "--json", "-", "--annotate", str(tmp_path / "a.md")])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout[result.stdout.index("{"):])
    assert payload["documents"][0]["findings"][0]["correct"] == "2"
    annotated = (tmp_path / "a.md").read_text()
    assert r"{\color{red}{3}\to 2}" in annotated and "**attnverify audit:**" in annotated
    several = CliRunner().invoke(main, ["audit", str(doc), SEEDS[0], "--annotate", str(tmp_path / "out")])
    assert several.exit_code == 0, several.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["doc.annotated.md", SEEDS[0].rsplit("/", 1)[1].replace(".txt", ".annotated.md")])


def test_bad_usage_exits_2_naming_the_argument(tmp_path):
    missing = CliRunner().invoke(main, ["audit", str(tmp_path / "nope.md")])
    assert missing.exit_code == 2 and "FILE" in missing.output
    assert CliRunner().invoke(main, ["audit"]).exit_code == 2
    help_text = CliRunner().invoke(main, ["audit", "--help"]).output
    assert "1    findings under --strict" in help_text
