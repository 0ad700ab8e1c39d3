"""Small helpers the catalogue's checks share: sources, proof steps, evidence, outcomes.

Every check in the catalogue *computes* its verdict: the helpers here only package what a
check found (a list of verified steps, a counterexample) into :class:`~proofs.claims.Evidence`
and :class:`~proofs.claims.CheckOutcome`. None of them returns a verdict by itself.

Steps are :class:`proofs.derivation.Step` objects, the one step model of the toolkit: :func:`equal`
(``lhs = rhs`` by SymPy's zero test) and :func:`fact` (a check the caller computed, with how);
:func:`proof` checks them as a :class:`~proofs.derivation.Derivation`, which renders and reports
them like every other derivation.
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import sympy as sp

from ..claims import CheckOutcome, Claim, Evidence, Method, Source, Verdict
from ..derivation import Custom, Derivation, Step, Symbolic
from ._doc import document_path, text_line
from ._labels import labels_in_document

__all__ = ["fact", "equal", "proof", "steps_evidence", "failed_steps", "StepFailed", "claim_at", "supplementary_claim",
           "note", "counterexample", "derived", "numeric", "informal_outcome", "proved", "code_agrees"]


def _as_math_text(statement: str) -> str:
    """Statements are text with ``$...$`` math (what the report expects); bare math gets wrapped."""
    return statement if "$" in statement else f"${statement}$"


def _label_at(doc: str, line: int) -> str:
    for label, number in labels_in_document(doc):
        if number == line:
            return label
    raise LookupError(f"no statement header on line {line} of {document_path(doc).name}")


def claim_id(doc: str, label: str) -> str:
    """The catalogue's id of the claim labelled ``label`` in seed ``doc``: ``claim_id("003",
    "Corolário 4")`` is ``"seed003.corolario-4"``; ``"... (line 77)"`` becomes ``"...-l77"``."""
    import re
    import unicodedata

    ascii_label = unicodedata.normalize("NFKD", label).encode("ascii", "ignore").decode()
    ascii_label = re.sub(r"\(line (\d+)\)", r"l\1", ascii_label)
    return f"seed{doc}." + re.sub(r"[^a-z0-9.]+", "-", ascii_label.lower()).strip("-")


def claim_at(
    doc: str,
    line: int,
    *,
    title: str,
    statement: str,
    checks: list[Callable[[], CheckOutcome]],
    assumptions: list[str] | None = None,
) -> Claim:
    """A claim for the statement header on ``line`` of seed ``doc``.

    The label is read from the document with :func:`labels_in_document` (so a claim can only
    point at a real header), the original words are the repaired header line.
    """
    label = _label_at(doc, line)
    return Claim(
        id=claim_id(doc, label),
        title=title,
        source=Source(document_path(doc).name, label, line),
        statement=_as_math_text(statement),
        checks=checks,
        assumptions=list(assumptions or []),
        original=text_line(doc, line).lstrip("> ").strip(),
    )


def supplementary_claim(
    doc: str,
    line: int,
    label: str,
    *,
    title: str,
    statement: str,
    checks: list[Callable[[], CheckOutcome]],
    assumptions: list[str] | None = None,
) -> Claim:
    """A claim on a line that is not a statement header (seed 002 has none).

    ``label`` must occur on that line of the document (checked here, so a supplementary
    claim also points at real text); the source label gets ``(line N)`` appended.
    """
    text = text_line(doc, line)
    if label not in text:
        raise LookupError(f"{label!r} does not occur on line {line} of {document_path(doc).name}: {text[:80]!r}")
    full = f"{label} (line {line})"
    return Claim(
        id=claim_id(doc, full),
        title=title,
        source=Source(document_path(doc).name, full, line),
        statement=_as_math_text(statement),
        checks=checks,
        assumptions=list(assumptions or []),
        original=text.strip(),
    )


def fact(latex: str | sp.Basic, reason: str, verified: bool, how: str) -> Step:
    """A derivation step whose check the caller computed: ``verified`` (a bool), found by ``how``
    (shown as the step's method: "sympy limit", "numerics, 6 tokens", "running the document's code").

    The step is a :class:`proofs.derivation.Step` with a :class:`~proofs.derivation.Custom` checker,
    so it is checked, rendered and reported as every other derivation step is.
    """
    tex = latex if isinstance(latex, str) else sp.latex(latex)
    passed = bool(verified)
    return Step(latex=tex, reason=reason, check=Custom(lambda: (passed, how), how))


def equal(lhs: Any, rhs: Any, reason: str, *, how: str | None = None, display: str | None = None) -> Step:
    """The step ``lhs = rhs``, checked by SymPy's zero test (:class:`proofs.derivation.Symbolic`).

    ``display`` is the LaTeX shown (the general formula) when ``lhs`` and ``rhs`` are explicit
    matrices too large to print; the check is always on ``lhs - rhs``. ``how`` qualifies the method
    shown ("symbolic: sympy jacobian of the explicit softmax").
    """
    check = Symbolic()
    if how:
        check.method = f"symbolic: {how}"
    return Step(lhs, rhs, reason, check, latex=display)


def proof(name: str, steps: list[Step], statement: str = "") -> Derivation:
    """The checked :class:`~proofs.derivation.Derivation` of a check's ``steps`` (checked here, once)."""
    d = Derivation(name, name, statement or name, steps)
    d.check()
    return d


def steps_evidence(d: Derivation, summary: str, /, **data: Any) -> Evidence:
    """``d.evidence(summary)`` (per-step results and the rendered ``align*``) with ``data`` added."""
    ev = d.evidence(summary)
    ev.data.update(data)
    return ev


def failed_steps(d: Derivation) -> str:
    """The failed steps of ``d`` in words: "reason (method: note); ..."."""
    return "; ".join(f"{r.reason} ({r.method}: {r.note})" for r in d.failed)


def interval_text(low: float, high: float, digits: int = 7) -> str:
    """``[low, high]`` in scientific notation with ``digits`` significant digits, rounded outwards
    (the printed interval still contains the computed one)."""
    from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

    def rounded(x: float, mode: str) -> str:
        value = Decimal(repr(x))
        exponent = value.adjusted() - digits + 1
        return f"{value.quantize(Decimal(1).scaleb(exponent), rounding=mode):.{digits - 1}e}"

    return f"[{rounded(low, ROUND_FLOOR)}, {rounded(high, ROUND_CEILING)}]"


def note(summary: str, **data: Any) -> Evidence:
    return Evidence("note", summary, data)


def counterexample(summary: str, **data: Any) -> Evidence:
    return Evidence("counterexample", summary, data)


def derived(summary: str, **data: Any) -> Evidence:
    """Evidence from an exact (symbolic) computation that is not a list of steps."""
    return Evidence("derivation", summary, data)


def numeric(summary: str, **data: Any) -> Evidence:
    return Evidence("numeric", summary, data)


class StepFailed(RuntimeError):
    """A step of one of the toolkit's own proofs failed: a defect of the check, never a verdict."""


def proved(steps: Derivation, method: Method, evidence: list[Evidence], *, refuted_by_failure: bool = False) -> CheckOutcome:
    """PROVED when every step of the derivation ``steps`` was verified.

    A failed step is *not* evidence against the statement when the steps are the toolkit's own
    proof (SymPy could not simplify, a cross-check of ``numerics`` disagreed): that is a defect,
    so :class:`StepFailed` is raised and ``Claim.run`` records the check as crashed, never as
    REFUTED without a counterexample. Only where a failed step *is* a counterexample (it ran the
    document's own code or numbers) pass ``refuted_by_failure=True``: the outcome is then REFUTED
    with the failed steps as the counterexample.
    """
    if steps.valid:
        return CheckOutcome(Verdict.PROVED, method, evidence)
    failed = failed_steps(steps) or "no step recorded"
    if refuted_by_failure:
        return CheckOutcome(Verdict.REFUTED, method, [counterexample("a checked step fails: " + failed,
                                                                    failed=[r.to_dict() for r in steps.failed]),
                                                     *evidence])
    raise StepFailed(f"a step of the toolkit's own proof failed (a defect of the check, not a verdict): {failed}")


def code_agrees(steps: Derivation, evidence: list[Evidence], *, inputs: str, reference: str, tolerance: str,
                error_rate: str) -> CheckOutcome:
    """The verdict of "the document's code computes X": SUPPORTED when every step (the code run on
    finitely many inputs and compared with a reference) holds, REFUTED with the failed steps as the
    counterexample otherwise.

    Never PROVED: agreement within a rounding tolerance on finitely many inputs is no exact proof
    (seed 002's classes, checked by the battery, get the same verdict). The first evidence carries
    what SUPPORTED must state: the ``inputs`` run, the ``reference`` and its precision, the
    ``tolerance`` and why, and in place of an alpha the ``error_rate``: what a pass can miss.
    """
    if not steps.valid:
        return proved(steps, Method.NUMERIC, evidence, refuted_by_failure=True)
    evidence[0].data.update(inputs=inputs, reference=reference, tolerance=tolerance, error_rate=error_rate)
    evidence[0].summary += f" (inputs: {inputs}; reference: {reference}; tolerance: {tolerance})"
    return CheckOutcome(Verdict.SUPPORTED, Method.NUMERIC, evidence)


def informal_outcome(reason: str, proxy_holds: bool, proxy: Evidence, *, refutes_if_false: str) -> CheckOutcome:
    """INFORMAL when the statement cannot be checked and its proxy holds, else REFUTED.

    The proxy is a *necessary condition* of the statement (``refutes_if_false`` says why),
    so a failed proxy refutes the statement; a passing one is reported, never upgraded to a
    proof.
    """
    if proxy_holds:
        return CheckOutcome(
            Verdict.INFORMAL,
            Method.INFORMAL,
            [note("not a mathematical statement: " + reason, reason=reason), proxy],
        )
    return CheckOutcome(
        Verdict.REFUTED,
        Method.NUMERIC if proxy.kind == "numeric" else Method.SYMBOLIC,
        [counterexample("a necessary condition fails: " + refutes_if_false, proxy=proxy.to_dict()), proxy],
    )


@lru_cache(maxsize=1)
def _private_figures() -> Path:
    return Path(tempfile.mkdtemp(prefix="attnverify-figures-"))  # mode 0700: this user's only


def figures_folder() -> Path:
    """``$ATTNVERIFY_FIGURES`` when set, else a private temporary folder made once per process
    (``tempfile.mkdtemp``: no other user can read or replace its files)."""
    folder = os.environ.get("ATTNVERIFY_FIGURES")
    return Path(folder).expanduser() if folder else _private_figures()


def figure_path(name: str) -> Path:
    """Where a check writes its figure ``name`` (in :func:`figures_folder`). The report copies
    the figures its evidence names."""
    return figures_folder() / name


def write_figure(plot: Callable[[Path], Any], name: str) -> tuple[list[str], list[Evidence]]:
    """Draw the figure ``name`` with ``plot(path)``: ``([path], [])`` when it is written, ``([],
    [note])`` when its folder cannot be made or written. A figure never changes a verdict."""
    path = figure_path(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        plot(path)
    except OSError as exc:
        why = exc.strerror or str(exc)
        return [], [note(f"figure {name} not written to {path.parent}: {why} (set ATTNVERIFY_FIGURES "
                         "to a writable folder)", figure=name, folder=str(path.parent), error=why)]
    return [str(path)], []
