"""Run a user's proof script: load it, check every derivation it defines, classify every step.

This is what ``attnverify prove FILE`` does, as a library: :func:`prove_file` returns a
:class:`ProofRun`, one :class:`DerivationReport` per derivation, one :class:`StepReport` per
step, each step with a status:

============ ========================================================================
status       meaning
============ ========================================================================
PASS         the step's check passed (its method says how: symbolic, explicit sizes...)
FAIL         the step is false: a counterexample at random values (or the step's own
             custom check said no); the residual and the counterexample are given
UNPROVED     SymPy could not reduce the residual to 0, and no counterexample was found
             at the random points tried (the message says which): not proved (the residual
             is given)
ERROR        the checker raised; the exception and the script's line are given, and the
             other steps still run
DEFINITION,  not checked: notation, a stated assumption, a result cited from elsewhere
ASSUMPTION,
CITED
============ ========================================================================

A derivation is PROVED when every checked step passes and at least one step is checked.

Loading a script executes it in this process (it can run any code) as a fresh module whose
``__name__`` is not ``"__main__"`` (an ``if __name__ == "__main__":`` block does not run) and
with ``sys.argv`` left as it is. Its folder is put first on ``sys.path`` while it loads and
runs, so it can import modules beside it.
Derivations are found as module-level variables holding a :class:`~proofs.Derivation` and as
functions decorated with :func:`~proofs.register` (recorded in a registry of the script's own).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import itertools
import sys
import time
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from .derivation import Derivation, Step, _Context
from .derivations._registry import collect_registrations
from .diagnose import Counterexample, diagnose

__all__ = ["ScriptError", "StepReport", "DerivationReport", "ProofRun", "load_script", "check_derivation",
           "prove_file", "prove_found", "STATUSES", "DERIVATION_STATUSES", "NOT_CHECKED"]

#: Every step status, in the order the summary counts them.
STATUSES = ("PASS", "FAIL", "UNPROVED", "ERROR", "DEFINITION", "ASSUMPTION", "CITED")
#: Every derivation status.
DERIVATION_STATUSES = ("PROVED", "FAILED", "UNPROVED", "ERROR", "UNJUSTIFIED", "UNCHECKED")
#: The statuses of steps that are not checked.
NOT_CHECKED = ("DEFINITION", "ASSUMPTION", "CITED")

_LOADS = itertools.count(1)


class ScriptError(Exception):
    """The script could not be run: a syntax error, an exception while loading, nothing to prove.

    The message names the file (and the line, when there is one).
    """


@dataclass(frozen=True)
class StepReport:
    """One step, as checked.

    Attributes
    ----------
    index : int
        1-based position in the derivation.
    reason : str
        The step's justification, which names it.
    status : str
        One of :data:`STATUSES`.
    method : str
        How it was checked (``"symbolic"``, ``"explicit sizes n=2..6"``...), or its kind when
        not checked.
    note : str
        The checker's note; for FAIL, UNPROVED and ERROR, the explanation.
    seconds : float
    residual : str or None
        What SymPy could not reduce to 0, simplified (FAIL and UNPROVED).
    counterexample : Counterexample or None
        Values where the step is false (FAIL).
    location : str or None
        ``FILE:LINE`` in the script where a raising checker failed (ERROR).
    tag : str
        The tag shown beside the step (console, LaTeX): its method, or its kind when not
        checked (``"cited: THEOREM -- NOT CHECKED"``), with FAILED, UNPROVED or ERROR appended.
    """

    index: int
    reason: str
    status: str
    method: str
    note: str
    seconds: float
    residual: str | None = None
    counterexample: Counterexample | None = None
    location: str | None = None
    tag: str = ""

    @property
    def checked(self) -> bool:
        return self.status not in NOT_CHECKED

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "reason": self.reason, "status": self.status, "checked": self.checked,
                "method": self.method, "note": self.note, "seconds": round(self.seconds, 6),
                "residual": self.residual,
                "counterexample": self.counterexample.to_dict() if self.counterexample else None,
                "location": self.location, "tag": self.tag}


@dataclass
class DerivationReport:
    """One derivation of the script, checked (or the error that stopped it being built).

    Attributes
    ----------
    name, title, statement : str
    origin : str
        Where the script defines it: ``"variable two_logits"`` or ``"@register('name')"``.
    steps : list of StepReport
    error : str or None
        Why the derivation could not be built (a registered function that raised).
    seconds : float
    derivation : Derivation or None
        The checked object (for LaTeX); None when it could not be built.
    unjustified : list of str
        Lines taken on trust without a proper mark (:meth:`Derivation.unjustified`): a
        definition that continues a chain, a citation that names no theorem.
    """

    name: str
    title: str
    statement: str
    origin: str
    steps: list[StepReport] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    derivation: Derivation | None = None
    unjustified: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """FAILED (a step is false), ERROR (a checker or the build raised), UNPROVED,
        UNJUSTIFIED (a line taken on trust without a mark), UNCHECKED (no step is checked), or
        PROVED, the first that applies. :attr:`status_reason` says why."""
        found = {s.status for s in self.steps}
        if "FAIL" in found:
            return "FAILED"
        if self.error is not None or "ERROR" in found:
            return "ERROR"
        if "UNPROVED" in found:
            return "UNPROVED"
        if self.unjustified:
            return "UNJUSTIFIED"
        return "PROVED" if any(s.checked for s in self.steps) else "UNCHECKED"

    @property
    def status_reason(self) -> str:
        """One sentence: why the derivation has its status."""
        status = self.status
        counts = {k: sum(s.status == k for s in self.steps) for k in ("FAIL", "ERROR", "UNPROVED")}
        if status == "FAILED":
            return f"{counts['FAIL']} step(s) are false"
        if status == "ERROR":
            if self.error is not None:
                first = self.error.splitlines()[0] if self.error else ""
                return f"it could not be built: {first}" if self.derivation is None else first
            return f"{counts['ERROR']} checker(s) raised"
        if status == "UNPROVED":
            return f"{counts['UNPROVED']} step(s) could not be shown (neither proved nor refuted)"
        if status == "UNJUSTIFIED":
            return (f"not proved: {len(self.unjustified)} line(s) taken on trust without a mark: "
                    + "; ".join(self.unjustified))
        if status == "UNCHECKED":
            return ("not proved: no step is checked (only definitions, assumptions or cited results); "
                    "give a step a check (Symbolic, AtSizes, NonNegative, Custom)")
        return "every checked step passes and every other line is a definition, assumption or named citation"

    def assumptions(self) -> list[str]:
        """The derivation's assumptions in words, then each ``Step.assume`` line (``"REASON
        (step N: LINE)"``)."""
        if self.derivation is None:
            return []
        out = list(self.derivation.assumptions)
        for index, step in enumerate(self.derivation.steps, 1):
            if getattr(step.check, "kind", None) == "assumption":
                line = step.latex or " ".join(str(p) for p in (step.lhs, step.rel if step.rhs is not None else None,
                                                                 step.rhs) if p is not None)
                out.append(f"{step.reason} (step {index}: {line})")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "statement": self.statement, "origin": self.origin,
                "status": self.status, "status_reason": self.status_reason, "error": self.error, "seconds": round(self.seconds, 6),
                "assumptions": self.assumptions(),
                "unjustified": list(self.unjustified),
                "steps": [s.to_dict() for s in self.steps]}


@dataclass
class ProofRun:
    """Everything ``attnverify prove FILE`` found and checked in one script."""

    path: Path
    reports: list[DerivationReport]
    seconds: float = 0.0
    #: Derivations found but not checked because the run was stopped (Ctrl-C).
    not_run: list[str] = field(default_factory=list)

    @property
    def incomplete(self) -> bool:
        return bool(self.not_run)

    @property
    def proved(self) -> bool:
        """Every derivation found was checked and PROVED."""
        return not self.not_run and all(r.status == "PROVED" for r in self.reports)

    def derivation_counts(self) -> dict[str, int]:
        """How many derivations have each status (every status present, zeros included); one
        that could not be built counts as ERROR."""
        counts = dict.fromkeys(DERIVATION_STATUSES, 0)
        for report in self.reports:
            counts[report.status] += 1
        return counts

    def counts(self) -> dict[str, int]:
        """How many steps have each status (every status present, zeros included)."""
        counts = dict.fromkeys(STATUSES, 0)
        for report in self.reports:
            for step in report.steps:
                counts[step.status] += 1
        return counts


# --------------------------------------------------------------------------- loading


def _in_script(path: Path) -> Callable[[traceback.FrameSummary], bool]:
    target = str(path.resolve())
    return lambda frame: _same_file(frame.filename, target)


def _same_file(filename: str, target: str) -> bool:
    try:
        return str(Path(filename).resolve()) == target
    except (OSError, ValueError):
        return False


def script_location(exc: BaseException, path: Path) -> str | None:
    """``FILE:LINE`` of the innermost frame of ``exc``'s traceback that lies in the script."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _in_script(path)(f)]
    return f"{path}:{frames[-1].lineno}" if frames else None


def _describe_exception(exc: BaseException, path: Path) -> str:
    """The exception, and the script's frames of its traceback (not the toolkit's)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _in_script(path)(f)]
    lines = [f"  {path}:{f.lineno}, in {f.name}: {(f.line or '').strip()}" for f in frames]
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return "\n".join([what, *lines])


@contextlib.contextmanager
def _script_folder_on_path(folder: Path) -> Iterator[None]:
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def _compile(path: Path) -> types.CodeType:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScriptError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        source = importlib.util.decode_source(raw)
    except (UnicodeDecodeError, SyntaxError) as exc:
        raise ScriptError(f"{path}: not a Python source file ({exc})") from None
    try:
        return compile(source, str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f"{path}:{exc.lineno}" + (f":{exc.offset}" if exc.offset else "")
        lines = [f"{where}: syntax error: {exc.msg}"]
        if exc.text:
            text = exc.text.rstrip("\n")
            lines.append(f"    {text.strip()}")
            if exc.offset:
                indent = len(text) - len(text.lstrip())
                lines.append("    " + " " * max(exc.offset - 1 - indent, 0) + "^")
        raise ScriptError("\n".join(lines)) from None
    except ValueError as exc:  # null bytes
        raise ScriptError(f"{path}: not a Python source file ({exc})") from None


def load_script(path: str | Path) -> tuple[types.ModuleType, list[tuple[str, Any]]]:
    """Execute the script at ``path`` and find what it asks to prove.

    Parameters
    ----------
    path : str or Path
        A Python file.

    Returns
    -------
    (module, list of (origin, item))
        The executed module, and in the order the script defines them: ``("variable NAME",
        Derivation)`` for each module-level derivation (a derivation bound to two names
        counts once) and ``("@register('NAME')", function)`` for each registered function.

    Raises
    ------
    ScriptError
        A syntax error (file and line), an exception while loading (the script's lines of
        its traceback), ``sys.exit`` while loading, or a script that defines nothing to prove.
    """
    path = Path(path)
    code = _compile(path)
    name = f"_attnverify_prove_{next(_LOADS)}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        with _script_folder_on_path(path.resolve().parent), collect_registrations() as registered:
            try:
                exec(code, module.__dict__)
            except SystemExit as exc:
                raise ScriptError(f"{path}: the script called sys.exit({exc.code!r}) while loading; "
                                  "guard its command-line part with `if __name__ == \"__main__\":`") from None
            except Exception as exc:
                raise ScriptError(f"{path}: the script raised while loading: "
                                  f"{_describe_exception(exc, path)}") from None
    finally:
        sys.modules.pop(name, None)
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()
    for var, value in vars(module).items():
        if isinstance(value, Derivation) and id(value) not in seen:
            seen.add(id(value))
            found.append((f"variable {var}", value))
    found += [(f"@register({key!r})", fn) for key, fn in registered.items()]
    if not found:
        raise ScriptError(
            f"{path} defines nothing to prove: no Derivation at module level and no function "
            "registered with @register. Define `my_proof = Derivation(...)` at module level, or "
            "decorate a function that returns one with `@register(name, title)` (from proofs import ...)")
    return module, found


# --------------------------------------------------------------------------- checking


def _kind(result: Any) -> str:
    """``"checked"``, or why the step is not checked: definition, assumption, cited."""
    kind = getattr(result, "kind", None) or ("checked" if result.checked else result.method.split(":")[0])
    if kind == "checked" and not result.checked:
        return "assumption"  # an unchecked checker that says nothing: taken on trust (listed as unjustified)
    return kind


def _tag(step: Step, result: Any, status: str) -> str:
    tag = getattr(step.check, "tag", None)
    shown = tag(status not in ("FAIL",)) if callable(tag) else result.method
    return f"{shown}, {status}" if status in ("UNPROVED", "ERROR") else shown


def _step_report(derivation: Derivation, step: Step, previous: Step | None, result: Any, path: Path | None) -> StepReport:
    report = _classify(derivation, step, previous, result, path)
    return dataclasses.replace(report, tag=_tag(step, result, report.status))


def _classify(derivation: Derivation, step: Step, previous: Step | None, result: Any, path: Path | None) -> StepReport:
    base = dict(index=result.index, reason=result.reason, method=result.method, seconds=result.seconds)
    kind = _kind(result)
    checker = step.check
    if kind != "checked":
        if result.passed:
            return StepReport(status=kind.upper(), note=result.note, **base)
        # not checked in general, but a spot check of it (a cited theorem's instances) failed
        checker = getattr(checker, "spot_check", None) or checker
    elif result.passed:
        return StepReport(status="PASS", note=result.note, **base)
    error = getattr(result, "error", None)
    if error is not None:
        location = script_location(error, path) if path is not None else None
        what = f"the checker raised {type(error).__name__}: {error}" if str(error) else \
            f"the checker raised {type(error).__name__}"
        return StepReport(status="ERROR", note=what + (f" (at {location})" if location else ""),
                          location=location, **base)
    start = time.perf_counter()
    try:
        found = diagnose(checker, _Context(step, previous, derivation.unfold), result.note,
                         seed=f"{derivation.name}:{result.index}")
    except Exception as exc:  # the search is a diagnosis; the step failed its check either way
        return StepReport(status="UNPROVED", note=f"{result.note}; the search for a counterexample raised "
                          f"{type(exc).__name__}: {exc}", **base)
    base["seconds"] += time.perf_counter() - start
    return StepReport(status=found.status, note=found.explanation, residual=found.residual,
                      counterexample=found.counterexample, **base)


def check_derivation(derivation: Derivation, origin: str = "", path: Path | None = None) -> DerivationReport:
    """Check every step of ``derivation`` and classify each (PASS, FAIL, UNPROVED, ERROR...).

    Parameters
    ----------
    derivation : Derivation
    origin : str
        Where it comes from, for the report.
    path : Path, optional
        The script, so that a raising checker is located at the script's line.

    Returns
    -------
    DerivationReport
    """
    results = derivation.check()  # checked once: a script that checked it already is not re-run
    start = time.perf_counter()
    steps, previous = [], None
    for step, result in zip(derivation.steps, results):
        steps.append(_step_report(derivation, step, previous, result, path))
        if step.rhs is not None:
            previous = step
    seconds = (derivation.check_seconds or 0.0) + time.perf_counter() - start
    unjustified = derivation.unjustified() if hasattr(derivation, "unjustified") else []
    return DerivationReport(derivation.name, derivation.title, derivation.statement, origin, steps,
                            seconds=seconds, derivation=derivation, unjustified=unjustified)


def _run_registered(origin: str, fn: Any, path: Path) -> DerivationReport:
    name = getattr(fn, "derivation_name", origin)
    title = getattr(fn, "title", "")
    start = time.perf_counter()
    try:
        derivation = fn()
    except Exception as exc:
        return DerivationReport(name, title, "", origin, error=f"building it raised "
                                f"{_describe_exception(exc, path)}", seconds=time.perf_counter() - start)
    report = check_derivation(derivation, origin, path)
    report.seconds = time.perf_counter() - start
    return report


def prove_file(path: str | Path, *, on_derivation: Callable[[DerivationReport], Any] | None = None,
               stop: Any = None) -> ProofRun:
    """Load the script at ``path`` and check everything it defines.

    Parameters
    ----------
    path : str or Path
    on_derivation : callable, optional
        Called with each report as soon as it is ready (progress).
    stop : threading.Event, optional
        Once set, the derivations not yet started are left out (``ProofRun.not_run``).

    Returns
    -------
    ProofRun

    Raises
    ------
    ScriptError
        As :func:`load_script`.
    """
    path = Path(path)
    start = time.perf_counter()
    _, found = load_script(path)
    return prove_found(path, found, on_derivation=on_derivation, stop=stop, start=start)


def prove_found(path: str | Path, found: list[tuple[str, Any]], *,
                on_derivation: Callable[[DerivationReport], Any] | None = None, stop: Any = None,
                start: float | None = None) -> ProofRun:
    """Check what :func:`load_script` found in the script at ``path`` (parameters as
    :func:`prove_file`; ``start``: a ``time.perf_counter()`` reading the run's time counts from).

    Raises
    ------
    ScriptError
        Two derivations with the same name, known before anything runs (both origins are
        named). A registered function that builds a derivation named as one already checked
        gets an ERROR report saying so.
    """
    path = Path(path)
    start = time.perf_counter() if start is None else start
    for kind in (True, False):  # the names known before anything runs: variables, then registrations
        named: dict[str, str] = {}
        for origin, item in found:
            if isinstance(item, Derivation) is not kind:
                continue
            name = item.name if kind else getattr(item, "derivation_name", None)
            if name in named:
                raise ScriptError(f"{path}: two derivations are named {name!r}: {named[name]} and {origin}; "
                                  "give each its own name")
            if name is not None:
                named[name] = origin
    reports: list[DerivationReport] = []
    not_run: list[str] = []
    with _script_folder_on_path(path.resolve().parent):
        for origin, item in found:
            if stop is not None and stop.is_set():
                not_run.append(origin)
                continue
            if isinstance(item, Derivation):
                report = check_derivation(item, origin, path)
            else:
                report = _run_registered(origin, item, path)
                if any(r.derivation is report.derivation for r in reports if r.derivation is not None):
                    continue  # the script also kept what its registered function built in a variable
            same = [r for r in reports if r.name == report.name]
            if same and report.error is None:
                report.error = (f"two derivations are named {report.name!r}: {same[0].origin} and {report.origin}; "
                                "give each its own name")
            reports.append(report)
            if on_derivation is not None:
                on_derivation(report)
    return ProofRun(path, reports, time.perf_counter() - start, not_run)
