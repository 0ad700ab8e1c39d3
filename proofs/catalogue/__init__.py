"""The catalogue: every labelled statement of the five seed documents as a checkable Claim.

One module per seed (``seed_000`` ... ``seed_004``), each with ``claims() -> list[Claim]``.
Every claim's checks compute its verdict when they run: worked examples are recomputed
number by number at 40 digits, theorems are proved with SymPy (and the project's
derivations in ``proofs.derivations`` when present), false statements get a concrete
counterexample, informal ones a stated reason and a proxy check that could fail.

Public API
----------
all_claims()              every claim, in document order (seed 000 first)
claims_for(doc)           the claims of one seed ("003" or its file name)
labels_in_document(path)  the statement labels found in a seed file, as (label, line)
is_statement_label(label) whether a Source label names a statement kind
run_all()                 run every claim, return the ClaimResults
DOCUMENTS, SEEDS_DIR      the seed file names and the folder of the bundled copies

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

from importlib import import_module

from ..claims import Claim, ClaimResult
from ._doc import DOCUMENTS, SEEDS_DIR, document_path
from ._kit import claim_id
from ._labels import is_statement_label, labels_in_document

__all__ = [
    "all_claims",
    "claim_id",
    "claims_for",
    "labels_in_document",
    "is_statement_label",
    "run_all",
    "DOCUMENTS",
    "not_run",
    "SEEDS_DIR",
    "document_path",
]


def _module(doc: str):
    key = doc if doc in DOCUMENTS else next((k for k, v in DOCUMENTS.items() if v == doc), None)
    if key is None:
        raise KeyError(f"unknown seed {doc!r}; expected one of {sorted(DOCUMENTS)} or {sorted(DOCUMENTS.values())}")
    return import_module(f"{__name__}.seed_{key}")


def claims_for(doc: str) -> list[Claim]:
    """The claims of one seed, given its key ("003") or file name."""
    return _module(doc).claims()


def all_claims() -> list[Claim]:
    """Every claim of the catalogue, seed by seed in document order. Ids are unique."""
    claims = [c for key in DOCUMENTS for c in claims_for(key)]
    seen: dict[str, Claim] = {}
    for c in claims:
        if c.id in seen:
            raise RuntimeError(f"duplicate claim id {c.id!r}: {seen[c.id].source} and {c.source}")
        seen[c.id] = c
    return claims


def not_run() -> list[str]:
    """Claims the catalogue leaves out in this environment (an optional dependency missing),
    each with the reason; :func:`all_claims` holds every other claim."""
    return [reason for key in DOCUMENTS for reason in getattr(_module(key), "not_run", list)()]


def run_all(claims: list[Claim] | None = None) -> list[ClaimResult]:
    """Run every claim (a crashed check is recorded in its result, never raised)."""
    return [c.run() for c in (all_claims() if claims is None else claims)]
