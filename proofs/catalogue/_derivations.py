"""Use the project's SymPy derivations (``proofs.derivations``) as evidence, by their registry name.

A check names the derivation it relies on exactly as ``attnverify derive --list`` lists it
(``"qk-variance"``, ``"softmax-jacobian"``...). The registry is imported lazily, inside the
checks, so the catalogue still imports when the derivations package cannot be.

:func:`derivation` returns ``(status, evidence)``: status True when the derivation ran and is
valid (every checked step passed), None when the derivations package is not available (the
evidence says why). An unknown name is a defect of the check and raises KeyError (naming the
close matches); a derivation that exists but is *invalid* raises :class:`RuntimeError`: a
failing step of our own derivation is a defect of the toolkit, never a verdict about a
document, so ``Claim.run`` records the check as crashed.
"""

from __future__ import annotations

from typing import Any

from ..claims import Evidence


def _get(name: str) -> Any:
    """The checked derivation ``name`` (ImportError when the derivations package is missing)."""
    from ..derivations import get  # noqa: PLC0415 - lazy on purpose

    return get(name)


def _valid(name: str, d: Any) -> Any:
    if not d.valid:
        failed = "; ".join(f"step {r.index}: {r.note}" for r in d.failed)
        raise RuntimeError(f"derivation {name!r} is not valid (a defect of the toolkit, not a verdict): {failed}")
    return d


def derivation(name: str) -> tuple[bool | None, Evidence]:
    """``(True, evidence)`` for the valid derivation ``name``; ``(None, note)`` when the derivations
    package cannot be imported."""
    try:
        d = _get(name)
    except ImportError as exc:
        return None, Evidence("note", f"derivation '{name}' not available (ImportError: {exc})", {})
    return True, _valid(name, d).evidence()


def derivation_object(name: str) -> Any | None:
    """The checked Derivation ``name`` (to quote its ``results``), or None when the package is missing."""
    try:
        d = _get(name)
    except ImportError:
        return None
    return _valid(name, d)
