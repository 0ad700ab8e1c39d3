"""The catalogue's claims, declared where they are checked: ``@claim(...)`` on each check.

A document's checks module (``seed_KEY.py``, see :mod:`proofs.catalogue._documents`) decorates
each check function with :func:`claim`, naming the line of the statement it checks::

    @claim(21, title="Each output is a convex combination of the inputs",
           statement=r"y_n = \\sum_m a_{nm} x_m")
    def check_linear_combination() -> CheckOutcome: ...

    @claim(21)                      # a second check of the same claim: the line alone
    def check_linear_combination_numerically() -> CheckOutcome: ...

The line must hold a statement header of the document (its label is read from there), or,
with ``label=``, a line containing that text (a *supplementary* claim, ``"label (line N)"``).
A claim's checks run in the order they are declared; claims come out in the order of their
lines. A check with ``requires={"torch": reason}`` is left out where that module cannot be
found; a claim left with no check is listed by :func:`not_run` with the reasons.

This is :func:`proofs.derivations.register`'s pattern for claims: the module only declares, and
:func:`proofs.catalogue.all_claims` imports the modules of the documents it finds.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from ..claims import CheckOutcome, Claim
from ._documents import Document, documents

__all__ = ["claim", "ClaimSpec", "specs_of", "load", "claims_of", "not_run_of", "document_of"]

Check = Callable[[], CheckOutcome]


@dataclass
class ClaimSpec:
    """What ``@claim`` declared for one line of one checks module."""

    line: int
    label: str | None = None  # set for a supplementary claim (a line that is not a statement header)
    title: str | None = None
    statement: str | None = None
    assumptions: list[str] = field(default_factory=list)
    checks: list[tuple[Check, dict[str, str]]] = field(default_factory=list)  # (check, requires)
    module: str = ""


#: checks module name -> (line, label) -> spec, filled as the modules are imported.
_SPECS: dict[str, dict[tuple[int, str | None], ClaimSpec]] = {}


def claim(line: int, label: str | None = None, *, title: str | None = None, statement: str | None = None,
          assumptions: Iterable[str] = (), requires: Mapping[str, str] | None = None) -> Callable[[Check], Check]:
    """Decorator: the function is a check of the claim on ``line`` of this module's document.

    Parameters
    ----------
    line : int
        1-based line of the statement in the document.
    label : str, optional
        For a line that is not a statement header: text that occurs on it (a bold label, a
        class name); the claim's label becomes ``"label (line N)"``.
    title, statement : str
        Given once per claim (on any of its checks): a one-line title and the statement as the
        document means it (text with ``$...$`` math, or bare math).
    assumptions : iterable of str
        Assumptions printed with the claim; ours are marked ``"added: ..."``.
    requires : mapping, optional
        Module name -> why the check needs it. Where ``importlib.util.find_spec`` does not find
        the module, the check is left out (nothing is imported to find out).

    Returns
    -------
    callable
        The decorator; it returns the function unchanged.

    Raises
    ------
    ValueError
        When ``line`` is not a positive int, or a claim gets a title or statement twice.
    """
    if not isinstance(line, int) or isinstance(line, bool) or line < 1:
        raise ValueError(f"claim: line must be a positive int, got {line!r}")

    def deco(check: Check) -> Check:
        if not callable(check):
            raise TypeError(f"claim({line}) decorates a check function, got {type(check).__name__}")
        module = check.__module__
        spec = _SPECS.setdefault(module, {}).setdefault((line, label), ClaimSpec(line, label, module=module))
        for name, value in (("title", title), ("statement", statement)):
            if value is not None:
                if getattr(spec, name) is not None:
                    raise ValueError(f"claim on line {line} of {module}: {name} given twice")
                setattr(spec, name, value)
        spec.assumptions += list(assumptions)
        spec.checks.append((check, dict(requires or {})))
        return check

    return deco


def load(doc: Document) -> str | None:
    """Import the checks module of ``doc`` (once); its name, or None when the document has none."""
    name = doc.module_name
    if name in sys.modules:
        return name
    if doc.bundled:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            return None
        return name
    path = doc.module_path
    if path is None or not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        _SPECS.pop(name, None)
        raise
    return name


def specs_of(doc: Document) -> list[ClaimSpec]:
    """The declared claims of ``doc``, in the order of their lines.

    Raises
    ------
    ValueError
        When a claim has no title or statement.
    """
    name = load(doc)
    specs = sorted(_SPECS.get(name, {}).values(), key=lambda s: (s.line, s.label or ""))
    for s in specs:
        if s.title is None or s.statement is None:
            raise ValueError(f"claim on line {s.line} of {s.module} has no title or statement: give them in one "
                             f"of its @claim(...) decorators")
    return specs


def _available(requires: Mapping[str, str]) -> list[str]:
    """The reasons of the modules in ``requires`` that cannot be found here."""
    missing = []
    for module, why in requires.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except Exception:  # noqa: BLE001 - a parent package that is absent or broken: not available
            found = False
        if not found:
            missing.append(why)
    return missing


def _build(doc: Document, spec: ClaimSpec, checks: list[Check]) -> Claim:
    from ._kit import claim_at, supplementary_claim

    kw = dict(title=spec.title, statement=spec.statement, checks=checks, assumptions=spec.assumptions)
    if spec.label is None:
        return claim_at(doc.key, spec.line, **kw)
    return supplementary_claim(doc.key, spec.line, spec.label, **kw)


def claims_of(doc: Document) -> list[Claim]:
    """The claims of ``doc`` that can run here (each with the checks whose requirements are met)."""
    out = []
    for spec in specs_of(doc):
        checks = [check for check, requires in spec.checks if not _available(requires)]
        if checks:
            out.append(_build(doc, spec, checks))
    return out


def not_run_of(doc: Document) -> list[str]:
    """``"KEY LABEL: reason"`` for each claim of ``doc`` left with no check here, or one
    ``"KEY: ..."`` note when the document has no checks module at all."""
    if load(doc) is None:
        where = doc.module_path or f"proofs/catalogue/seed_{doc.key}.py"
        return [f"{doc.key}: {doc.path.name} has no checks module ({where})"]
    out = []
    for spec in specs_of(doc):
        missing = [_available(requires) for _, requires in spec.checks]
        if all(missing):
            reasons = [why for whys in missing for why in whys]
            label = _build(doc, spec, []).source.label
            out.append(f"{doc.key} {label}: " + "; ".join(dict.fromkeys(reasons)))
    return out


def document_of(key: str, folders: Iterable | None = None) -> Document:
    """The document with key ``key`` (``"003"``), or its file name; KeyError naming the known keys."""
    docs = documents(folders)
    if key in docs:
        return docs[key]
    for doc in docs.values():
        if doc.path.name == key:
            return doc
    raise KeyError(f"unknown catalogue document {key!r}; expected one of {sorted(docs)} "
                   f"or {sorted(d.path.name for d in docs.values())}")
