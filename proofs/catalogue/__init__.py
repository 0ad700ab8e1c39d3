"""The catalogue: every labelled statement of the seed documents as a checkable Claim.

Documents are found in folders (:mod:`._documents`): the bundled ``seeds/`` folder, the folders
of ``$ATTNVERIFY_CATALOGUE`` (separated by ``os.pathsep``) and any ``folders=`` passed below.
Document ``KEY_*.txt`` (or ``.md``) is checked by the module ``seed_KEY`` (bundled: in this
package; elsewhere: ``seed_KEY.py`` beside the document), whose check functions declare their
claims with :func:`claim` (:mod:`._registry`). A sixth document is one file and one module.
Every claim's checks compute its verdict when they run: worked examples are recomputed
number by number at 40 digits, theorems are proved with SymPy (and the project's
derivations in ``proofs.derivations`` when present), false statements get a concrete
counterexample, informal ones a stated reason and a proxy check that could fail.

Public API
----------
all_claims(folders=None)  every claim, document by document (bundled first), in line order
claims_for(doc)           the claims of one document ("003" or its file name)
not_run(folders=None)     the claims left out here (a missing optional dependency), with why
documents(folders=None)   every document found: key -> Document(key, path, bundled)
claim(line, ...)          the decorator a checks module puts on each check
labels_in_document(path)  the statement labels found in a seed file, as (label, line)
is_statement_label(label) whether a Source label names a statement kind
run_all()                 run every claim, return the ClaimResults
DOCUMENTS, SEEDS_DIR      the bundled seeds (key -> file name, read from the folder) and their folder

Verdicts
--------
Each check computes its verdict by the referee's rules (a)-(f) written in :mod:`proofs.claims`:
loose bounds are not false; modal and quantifier words are read literally; every correction is
checked before it is printed; numbers are exact or carry intervals; the same kind of statement
gets the same verdict everywhere; PROVED is under the document's assumptions, ours are printed
(marked "added:" in ``Claim.assumptions``).

Which labels count
------------------
:func:`labels_in_document` finds statement *headers* (Lema, Teorema, Proposição,
Corolário, Observação, Definição, Exemplo) at the start of a line, not mentions in running
text; its docstring (module ``_labels``) explains the rule. Seed 002 has no header at all;
its checkable assertions are *supplementary* claims whose label names the document's own
bold label or code definition at that line, with ``(line N)`` appended
(:func:`is_statement_label` is False for them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..claims import Claim, ClaimResult
from ._doc import document_path
from ._documents import DOCUMENTS, ENV_FOLDERS, SEEDS_DIR, Document, documents
from ._kit import claim_id
from ._labels import is_statement_label, labels_in_document
from ._registry import claim, claims_of, document_of, not_run_of

__all__ = [
    "all_claims",
    "claim",
    "claim_id",
    "claims_for",
    "documents",
    "labels_in_document",
    "is_statement_label",
    "run_all",
    "DOCUMENTS",
    "Document",
    "ENV_FOLDERS",
    "not_run",
    "SEEDS_DIR",
    "document_path",
]

Folders = Iterable[str | Path] | None


def claims_for(doc: str, folders: Folders = None) -> list[Claim]:
    """The claims of one document, given its key ("003") or file name."""
    return claims_of(document_of(doc, folders))


def all_claims(folders: Folders = None) -> list[Claim]:
    """Every claim of the catalogue, document by document (bundled first), each in line order.

    ``folders`` adds catalogue folders to the bundled one and ``$ATTNVERIFY_CATALOGUE``'s. Ids are
    unique (a RuntimeError names both claims otherwise).
    """
    claims = [c for doc in documents(folders).values() for c in claims_of(doc)]
    seen: dict[str, Claim] = {}
    for c in claims:
        if c.id in seen:
            raise RuntimeError(f"duplicate claim id {c.id!r}: {seen[c.id].source} and {c.source}")
        seen[c.id] = c
    return claims


def not_run(folders: Folders = None) -> list[str]:
    """Claims the catalogue leaves out in this environment (an optional dependency missing),
    each with the reason; :func:`all_claims` holds every other claim."""
    return [reason for doc in documents(folders).values() for reason in not_run_of(doc)]


def run_all(claims: list[Claim] | None = None) -> list[ClaimResult]:
    """Run every claim (a crashed check is recorded in its result, never raised)."""
    return [c.run() for c in (all_claims() if claims is None else claims)]
