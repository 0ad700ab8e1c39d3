"""``attnverify prove FILE``: check the derivations of a user's own proof script, step by step."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.text import Text

from verify._console import plain, print_table, stdout_console
from verify._exits import EXIT_CODES, plan_exit
from verify._interrupt import InterruptGate
from verify._paths import OutputPath, refuse_shared_outputs, write_output

#: How each step status and derivation status is coloured.
STATUS_STYLE = {
    "PASS": "green", "PROVED": "green",
    "FAIL": "bold red", "FAILED": "bold red", "ERROR": "bold red",
    "UNPROVED": "yellow", "UNCHECKED": "yellow", "UNJUSTIFIED": "yellow",
    "DEFINITION": "dim", "ASSUMPTION": "dim", "CITED": "magenta",
}


def status_text(status: str) -> Text:
    """A status word in its colour."""
    return Text(status, style=STATUS_STYLE.get(status, "yellow"))


def prove_document(run) -> dict:
    """The JSON document ``prove --json`` writes (schema: proofs/schema/prove.schema.json)."""
    from verify import __version__

    return {
        "tool": "attnverify",
        "version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "file": str(run.path),
        "seconds": round(run.seconds, 6),
        "proved": run.proved,
        "incomplete": run.incomplete,
        "not_run": list(run.not_run),
        "summary": {"derivations": run.derivation_counts(), "steps": run.counts()},
        "derivations": [r.to_dict() for r in run.reports],
    }


def latex_document(run) -> str:
    """A standalone article: each derivation's statement, assumptions and checked ``align*`` block."""
    from proofs.latex import render_document

    from proofs.latex import escape as text

    built = [r for r in run.reports if r.derivation is not None]
    title = f"Derivations of {run.path.name}"
    preface = []
    if run.incomplete:
        title += " (INCOMPLETE: interrupted)"
        preface.append(r"\textbf{INCOMPLETE: the run was interrupted (Ctrl-C); not run: "
                       + text(", ".join(run.not_run)) + ".}")
    overall = ", ".join(f"{status} {n}" for status, n in run.derivation_counts().items() if n)
    preface.append(r"\textbf{Summary.} " + text(f"{len(run.reports)} derivation(s): {overall or 'none'}; "
                                                 f"steps: {_step_counts(run.counts())}."))
    failed_to_build = [r for r in run.reports if r.derivation is None]
    if failed_to_build:
        preface.append(r"\textbf{Not built (ERROR):} " + text("; ".join(
            f"{r.name} ({r.origin}): {(r.error or '').splitlines()[0]}" for r in failed_to_build)) + ".")
    return render_document([r.derivation for r in built], title=title,
                           tags=[[s.tag for s in r.steps] for r in built],
                           summaries=[f"{r.name}: {r.status} ({r.status_reason}); steps: "
                                      f"{_step_counts({k: sum(s.status == k for s in r.steps) for k in run.counts()})}"
                                      for r in built],
                           preface="\n\n".join(preface))


def _step_counts(counts: dict) -> str:
    """``"PASS 3, FAIL 1, UNPROVED 0, ERROR 0; 2 not checked"``: FAIL and UNPROVED apart."""
    from proofs.runner import NOT_CHECKED

    checked = ", ".join(f"{k} {v}" for k, v in counts.items() if k not in NOT_CHECKED)
    return f"{checked}; {sum(v for k, v in counts.items() if k in NOT_CHECKED)} not checked"


def _details(step) -> str:
    if step.status in ("FAIL", "UNPROVED") and step.residual:
        return f"{step.note}. Residual: {step.residual}"
    return step.note


def print_report(report, console: Console) -> None:
    """One derivation's table (step, status, how it was checked, details) and its status line."""
    title = f"{report.name}: {report.title} ({report.origin})"
    if report.error is not None and not report.steps:
        console.print(Text.assemble(plain(title, "bold"), "  ", status_text("ERROR")))
        console.print(plain(report.error))
        return
    rows = [(str(s.index), s.reason, status_text(s.status), s.tag if not s.checked else s.method, _details(s))
            for s in report.steps]
    print_table(console, title, ("#", "step", "status", "checked by", "details"), rows,
                verdict_columns=("#", "status"), wide=("details",))
    why = "" if report.status == "PROVED" else f": {report.status_reason}"
    console.print(Text.assemble(plain(f"{report.name}: "), status_text(report.status),
                                plain(f" ({report.seconds:.1f} s){why}")))
    if report.status != "UNJUSTIFIED":  # its reason lists them already
        for line in report.unjustified:
            console.print(plain(f"taken on trust, not marked: {line}", "yellow"))


def print_summary(run, console: Console) -> None:
    """The counts (derivations by status, steps by status), then every step that did not pass."""
    counts = run.counts()
    by_status = ", ".join(f"{status} {n}" for status, n in run.derivation_counts().items() if n)
    console.print(plain(f"{len(run.reports)} derivation(s) ({by_status or 'none'}), {sum(counts.values())} steps "
                        f"in {run.seconds:.1f} s: {_step_counts(counts)} (definitions, assumptions, cited results)"))
    for report in run.reports:
        if report.error is not None:
            what = "could not be built" if report.derivation is None else "is in error"
            console.print(Text.assemble(status_text("ERROR"), plain(f" {report.name} ({report.origin}) {what}: "
                                                                    f"{report.error.splitlines()[0]}")))
        for step in report.steps:
            if step.status in ("FAIL", "ERROR", "UNPROVED"):
                console.print(Text.assemble(status_text(step.status),
                                            plain(f" {report.name}, step {step.index} ({step.reason}): {step.note}")))


def print_run(run, console: Console) -> None:
    """Every derivation's table, then the summary."""
    for report in run.reports:
        print_report(report, console)
    print_summary(run, console)


def _latex_culprit(run) -> str:
    """The first derivation and step whose text LaTeX cannot take, named; or ``""``."""
    from proofs.latex import text

    for report in run.reports:
        derivation = report.derivation
        if derivation is None:
            continue
        for label, value in [("title", derivation.title), *[(f"assumption {a!r}", a) for a in derivation.assumptions]]:
            try:
                text(value)
            except ValueError as exc:
                return f"derivation {report.name!r}, {label}: {exc}"
        for index, step in enumerate(derivation.steps, 1):
            try:
                text(step.reason)
            except ValueError as exc:
                return f"derivation {report.name!r}, step {index} ({step.reason}): {exc}"
    return ""


@click.command(epilog=EXIT_CODES)
@click.argument("file", type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@click.option("--latex", "latex_path", type=OutputPath(suffixes=(".tex",)),
              help="Write the derivations as a LaTeX article (align* blocks, each step's check beside it) "
                   "to this .tex file, and the PDF beside it when pdflatex is on PATH.")
@click.option("--pdf/--no-pdf", default=True, help="With --latex: compile the PDF when pdflatex is on PATH.")
@click.option("--json", "json_path", type=OutputPath(dash=True),
              help="Write every step with its status, method, residual and counterexample to this JSON file "
                   "('-': to stdout, tables to stderr). Missing folders are created.")
@click.pass_context
def prove(ctx: click.Context, file: Path, latex_path: Path | None, pdf: bool, json_path) -> None:
    """Check the derivations of your own proof script FILE, step by step.

    FILE is a Python script that builds derivations with the public API
    (from proofs import Derivation, Step, Symbolic, AtSizes, NonNegative, Custom, register).
    Every Derivation it defines at module level and every function it registers with
    @register is checked. FILE is executed in this process as a fresh module (its
    __name__ is not "__main__", so an `if __name__ == "__main__":` block does not
    run; sys.argv is attnverify's; FILE's folder is first on sys.path). It can run
    any code, so prove only scripts you trust.

    Each step prints PASS, FAIL (false: a counterexample at random values is shown),
    UNPROVED (SymPy could not reduce the residual to 0 and no counterexample was found),
    ERROR (its checker raised; the other steps still run), or, for steps that are not
    checked, DEFINITION, ASSUMPTION or CITED. The exit code is 0 when every derivation
    is PROVED, 1 otherwise (and when the script cannot be loaded or defines nothing).
    Ctrl-C stops after the derivation in progress (twice: at once) and reports and
    saves the finished ones, marked incomplete.
    """
    from proofs.runner import ScriptError, load_script, prove_found

    refuse_shared_outputs(**{"--latex": latex_path, "--json": json_path})
    to_stdout = json_path == "-"
    console = stdout_console(stderr=to_stdout)
    # with --json -, stdout is the JSON document: what the script prints goes to stderr
    script_output = contextlib.redirect_stdout(sys.stderr) if to_stdout else contextlib.nullcontext()
    start = time.perf_counter()
    try:
        with script_output:  # outside the gate: Ctrl-C while the script loads stops at once
            _, found = load_script(file)
    except ScriptError as exc:
        plan_exit(1)
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        plan_exit(130)
        console.print(plain(f"interrupted while loading {file}: nothing was checked", "bold yellow"))
        ctx.exit(130)
    with InterruptGate() as gate, script_output:
        try:
            run = prove_found(file, found, stop=gate.stop, start=start,
                              on_derivation=lambda report: print_report(report, console))
        except ScriptError as exc:
            plan_exit(1)
            raise click.ClickException(str(exc)) from None
    code = 130 if gate.pending else 0 if run.proved else 1
    plan_exit(code)
    print_summary(run, console)
    document = json.dumps(prove_document(run), indent=2) if json_path is not None else None
    if document is not None:
        if to_stdout:
            click.echo(document)
        else:
            write_output(json_path, "--json", lambda: json_path.write_text(document, encoding="utf-8"))
            console.print(plain(f"wrote {json_path}"))
    if gate.pending:
        what = (f"the results above are INCOMPLETE: not run: {', '.join(run.not_run)}" if run.not_run
                else "every derivation had finished")
        console.print(plain(f"interrupted: {what}", "bold yellow"))
    if latex_path is not None:
        try:
            tex = latex_document(run)
        except ValueError as exc:  # a reason LaTeX cannot take (a lone $, an unknown non-ASCII character...)
            plan_exit(1)
            culprit = _latex_culprit(run) or str(exc)
            raise click.ClickException(f"--latex: not written, the derivations cannot be rendered: {culprit}") from None
        write_output(latex_path, "--latex", lambda: latex_path.write_text(tex, encoding="utf-8"))
        console.print(plain(f"wrote {latex_path}" + (" (marked INCOMPLETE)" if run.incomplete else "")))
        if pdf:
            _compile_pdf(latex_path, console)
    ctx.exit(code)


def _compile_pdf(tex: Path, console: Console) -> None:
    """Compile ``tex`` in a temporary folder (its .aux and .log stay out of the user's folder)
    and put the PDF beside it; a failure shows the end of pdflatex's transcript."""
    import shutil
    import tempfile

    from proofs.report import ReportError, compile_pdf

    with tempfile.TemporaryDirectory(prefix="attnverify-prove-") as tmp:
        copy = Path(tmp) / tex.name
        shutil.copyfile(tex, copy)
        try:
            built = compile_pdf(copy)
        except ReportError as exc:
            raise click.ClickException(f"--latex: {str(exc).replace(str(copy), str(tex))}") from None
        if built is None:
            console.print(plain("no pdflatex on PATH: PDF not built"))
            return
        pdf_path = tex.with_suffix(".pdf")
        write_output(pdf_path, "--latex", lambda: shutil.copyfile(built, pdf_path))
    console.print(plain(f"wrote {pdf_path}"))
