"""The catalogue as a registry: a new document is one file and one module in a folder.

Documents are discovered in the bundled seeds folder, in ``$ATTNVERIFY_CATALOGUE`` and in the
``folders=`` argument; claims are declared with ``@claim`` on their checks.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

from proofs import catalogue
from proofs.catalogue import ENV_FOLDERS, SEEDS_DIR, all_claims, claims_for, documents, not_run
from proofs.claims import Verdict
from verify.cli import main

DOCUMENT = """\
# Um documento pequeno

**Lema 1** (Quadrado): $(x + 1)^2 = x^2 + 2x + 1$.

**Lema 2** (Quadrado, errado): $(x + 1)^2 = x^2 + 1$.

**Nota** (line 7): attention weights sum to 1.
"""

MODULE = '''\
import sympy as sp

from proofs.catalogue import claim
from proofs.claims import CheckOutcome, Evidence, Method, Verdict
from proofs.derivation import Derivation, Step

DOC = "{key}"
x = sp.Symbol("x", real=True)


@claim(3, title="Square of a sum", statement=r"$(x + 1)^2 = x^2 + 2x + 1$")
def check_square():
    return Derivation("square", "Square of a sum", "$(x+1)^2$",
                      [Step((x + 1) ** 2, x**2 + 2 * x + 1, "expand")]).outcome()


@claim(5, title="Square of a sum, as the document writes it", statement=r"$(x + 1)^2 = x^2 + 1$")
def check_wrong_square():
    gap = sp.expand((x + 1) ** 2 - (x**2 + 1))
    verdict = Verdict.PROVED if gap == 0 else Verdict.REFUTED
    return CheckOutcome(verdict, Method.SYMBOLIC, [Evidence("counterexample", f"the difference is {{gap}}",
                                                             {{"at x = 1": str(gap.subs(x, 1))}})])


@claim(7, "Nota", title="Weights sum to one", statement="$\\\\sum_j a_j = 1$", requires={{"{missing}": "needs {missing}"}})
def check_needs_a_missing_module():
    raise AssertionError("never run: its requirement is missing")
'''


def write_document(folder, key="005", missing="no_such_module_attnverify"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{key}_small.md").write_text(DOCUMENT, encoding="utf-8")
    (folder / f"seed_{key}.py").write_text(MODULE.format(key=key, missing=missing), encoding="utf-8")
    return folder


def test_a_sixth_document_in_a_folder_appears_in_check(tmp_path, monkeypatch):
    """One document and one module written, nothing else: its claims run in ``attnverify check``."""
    folder = write_document(tmp_path / "mine")
    monkeypatch.setenv(ENV_FOLDERS, str(folder))
    out = tmp_path / "out.json"
    result = CliRunner(env={"COLUMNS": "200"}).invoke(main, ["check", "--no-progress", "--only", "seed005",
                                                           "--json", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    verdicts = {r["id"]: r["verdict"] for r in saved["results"]}
    assert verdicts == {"seed005.lema-1": "PROVED", "seed005.lema-2": "REFUTED"}
    assert all(r["source"]["document"] == "005_small.md" for r in saved["results"])
    assert saved["not_run"] == ["005 Nota (line 7): needs no_such_module_attnverify"]


def test_folders_argument_works_without_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_FOLDERS, raising=False)
    folder = write_document(tmp_path / "other", key="006")
    assert not any(c.id.startswith("seed006.") for c in all_claims())
    ids = [c.id for c in all_claims(folders=[folder])]
    assert ids[-2:] == ["seed006.lema-1", "seed006.lema-2"]
    assert [c.run().verdict for c in claims_for("006", folders=[folder])] == [Verdict.PROVED, Verdict.REFUTED]


def test_a_requirement_that_is_met_keeps_the_claim(tmp_path):
    folder = write_document(tmp_path / "met", key="007", missing="json")
    claims = claims_for("007", folders=[folder])
    assert [c.id for c in claims] == ["seed007.lema-1", "seed007.lema-2", "seed007.nota-l7"]
    assert [note for note in not_run(folders=[folder]) if note.startswith("007")] == []


def test_the_bundled_documents_are_the_files_of_the_seeds_folder():
    names = sorted(p.name for p in SEEDS_DIR.iterdir() if p.suffix in (".txt", ".md"))
    assert [d.path.name for d in documents().values()] == names
    assert catalogue.DOCUMENTS == {name[:3]: name for name in names}
    # every bundled document has claims, and every claim names its document
    for key, doc in documents().items():
        assert {c.source.document for c in claims_for(key)} == {doc.path.name}


def test_a_document_without_checks_is_listed_as_not_run(tmp_path):
    folder = tmp_path / "bare"
    folder.mkdir()
    (folder / "010_bare.md").write_text(DOCUMENT, encoding="utf-8")
    assert claims_for("010", folders=[folder]) == []
    # (the bundled seed 002's torch claims are listed too where torch is missing)
    assert [note for note in not_run(folders=[folder]) if note.startswith("010")] == [
        f"010: 010_bare.md has no checks module ({folder / 'seed_010.py'})"]


def test_a_missing_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_FOLDERS, str(tmp_path / "absent"))
    with pytest.raises(NotADirectoryError, match="ATTNVERIFY_CATALOGUE.*absent"):
        all_claims()


def test_two_documents_with_one_key_are_an_error(tmp_path):
    folder = write_document(tmp_path / "dup", key="003")
    with pytest.raises(ValueError, match="two catalogue documents have the key '003'"):
        all_claims(folders=[folder])


def test_a_claim_without_title_is_an_error(tmp_path):
    folder = tmp_path / "untitled"
    folder.mkdir()
    (folder / "008_doc.md").write_text(DOCUMENT, encoding="utf-8")
    (folder / "seed_008.py").write_text(textwrap.dedent("""\
        from proofs.catalogue import claim

        @claim(3)
        def check():
            raise AssertionError
        """), encoding="utf-8")
    with pytest.raises(ValueError, match="line 3 .* no title or statement"):
        claims_for("008", folders=[folder])


def test_a_claim_on_a_line_without_a_statement_header_is_an_error(tmp_path):
    folder = tmp_path / "noheader"
    folder.mkdir()
    (folder / "009_doc.md").write_text(DOCUMENT, encoding="utf-8")
    (folder / "seed_009.py").write_text(textwrap.dedent("""\
        from proofs.catalogue import claim

        @claim(1, title="t", statement="$x$")
        def check():
            raise AssertionError
        """), encoding="utf-8")
    with pytest.raises(LookupError, match="no statement header on line 1"):
        claims_for("009", folders=[folder])


def test_every_saturation_finding_is_assigned_to_a_corollary_of_seed_003():
    """The findings are matched by their stable key, never by their wording: a finding added to the
    sweep without saying which statement it tests fails here."""
    from proofs.catalogue import seed_003
    from verify.montecarlo.experiments import SATURATION_FINDINGS

    assert set(seed_003.SATURATION_FINDINGS_OF) == set(SATURATION_FINDINGS)
    assert set(seed_003.SATURATION_FINDINGS_OF.values()) == {seed_003.COROLARIO_3, seed_003.COROLARIO_4}


def test_derivations_are_found_by_their_exact_name():
    from proofs.catalogue._derivations import derivation, derivation_object

    status, evidence = derivation("qk-variance")
    assert status is True and evidence.data["derivation"] == "qk-variance"
    assert derivation_object("gelu-tanh-error").name == "gelu-tanh-error"
    with pytest.raises(KeyError, match="no derivation named 'variance'"):  # a keyword is not a name
        derivation("variance")
