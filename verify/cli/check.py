"""``attnverify check``, ``derive`` and ``report``: run the claims catalogue, print derivations,
write the LaTeX report."""

from __future__ import annotations

import datetime as _dt
import fnmatch
import json
import platform
import sys
from collections import Counter
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from verify._console import VERDICTS, plain, print_table, stdout_console, verdict_text
from verify._interrupt import InterruptGate
from verify._paths import OutputPath, write_output
from verify._exits import EXIT_CODES, plan_exit

#: Verdicts that make ``check --strict`` exit 1.
FINDINGS = ("REFUTED", "CORRECTED")

def short_source(claim) -> str:
    """The source as the table shows it: the document's number and its label, "003 Lema 1"."""
    return f"{claim.source.document[:3]} {claim.source.label}"


def _matcher(pattern: str):
    """``--only``'s rule: a glob (a plain word matches anywhere), ignoring case; true when any of
    the names matches."""
    pattern = (pattern if any(c in pattern for c in "*?[") else f"*{pattern}*").casefold()
    return lambda names: any(fnmatch.fnmatchcase(name.casefold(), pattern) for name in names)


def select_claims(claims, pattern: str | None):
    """Claims whose id, source ``document, label`` or table source ``"003 Lema 1"`` matches the
    glob ``pattern``, ignoring case."""
    if pattern is None:
        return list(claims)
    matches = _matcher(pattern)
    return [c for c in claims if matches((c.id, str(c.source), short_source(c)))]


def select_not_run(notes, pattern: str | None) -> list[str]:
    """The catalogue's not-run notes that ``--only pattern`` keeps, by :func:`select_claims`' rule.

    A note reads ``"002 class MultiHeadAttention (line 77): the document's code needs torch ..."``:
    the part before the first ':' is the claim's source as the table shows it. It is matched as
    that, as the source ``document, label`` and as the id the catalogue gives the claim, so a
    pattern keeps a note exactly when it would select the claim were it run.
    """
    if pattern is None:
        return list(notes)
    from proofs.catalogue import claim_id, documents

    names_of = {key: doc.path.name for key, doc in documents().items()}  # bundled and $ATTNVERIFY_CATALOGUE's
    matches = _matcher(pattern)
    kept = []
    for note in notes:
        shown = note.split(":", 1)[0].strip()
        doc, _, label = shown.partition(" ")
        names = [shown]
        if doc in names_of and label:
            names += [f"{names_of[doc]}, {label}", claim_id(doc, label)]
        if matches(names):
            kept.append(note)
    return kept


def run_claims(claims, *, console: Console, show_progress: bool, gate: InterruptGate | None = None):
    """Run every claim in order, with a progress bar on a terminal; return (results, interrupted).

    With a ``gate``, a Ctrl-C stops the run after the claim in progress; the claim in progress
    when a second Ctrl-C lands is left out (its result is the interrupt's doing).
    """
    results = []
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress,
        transient=True,
    ) as progress:
        task = progress.add_task("checking claims", total=len(claims))
        for claim in claims:
            if gate is not None and gate.pending:
                return results, True
            progress.update(task, description=f"checking {escape(claim.id)}")
            try:
                result = claim.run()
            except KeyboardInterrupt:
                return results, True
            if gate is not None and gate.pending and not result.ok:
                return results, True
            results.append(result)
            progress.advance(task)
    return results, bool(gate is not None and gate.pending)


def results_document(results, *, seconds: float, not_run: list[str] | None = None,
                     incomplete: bool = False) -> dict:
    """The JSON document ``check --json`` writes (schema: proofs/schema/check.schema.json)."""
    from proofs.claims import Verdict
    from verify import __version__

    counts = Counter(r.verdict.value for r in results if r.verdict is not None)
    return {
        "tool": "attnverify",
        "version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "backend": "numpy",
        "python": platform.python_version(),
        "seconds": seconds,
        "incomplete": incomplete,
        "summary": {
            "claims": len(results),
            "crashed": sum(1 for r in results if not r.ok),
            "verdicts": {v.value: counts.get(v.value, 0) for v in Verdict},
        },
        "not_run": list(not_run or []),
        "results": [r.to_dict() for r in results],
    }


def verdict_of(result) -> str:
    """The verdict word of a claim result: its verdict, or CRASHED."""
    return "CRASHED" if result.verdict is None else result.verdict.value


def print_results(results, console: Console) -> None:
    """The verdict table: claims, sources and methods fold, evidence wraps, verdicts stay whole."""
    rows = [(r.claim.id, short_source(r.claim), verdict_text(verdict_of(r)),
             ", ".join(r.methods), r.summary) for r in results]
    print_table(console, "attnverify check", ("claim", "source", "verdict", "method", "evidence"), rows,
                verdict_columns=("verdict",), wide=("evidence",))


def exit_code(results, *, interrupted: bool, strict: bool) -> int:
    """130 interrupted; 1 a crash, or a REFUTED/CORRECTED claim under --strict; else 0."""
    if interrupted:
        return 130
    if any(not r.ok for r in results):
        return 1
    if strict and any(verdict_of(r) in FINDINGS for r in results):
        return 1
    return 0


@click.command(epilog=EXIT_CODES)
@click.option("--json", "json_path", type=OutputPath(dash=True),
              help="Write every result with its evidence to this JSON file ('-': to stdout, tables to stderr). "
                   "Missing folders are created.")
@click.option("--only", "pattern", metavar="PATTERN",
              help="Run only claims whose id or source (as the table shows it, e.g. '003 Lema 1') matches this glob, "
                   "ignoring case (a plain word matches anywhere); the claims not run here (a missing optional "
                   "dependency) are listed by the same rule.")
@click.option("--strict", is_flag=True,
              help="Exit 1 when any claim is REFUTED or CORRECTED (for a document's own CI).")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar (default: when stderr is a terminal).")
@click.pass_context
def check(ctx: click.Context, json_path, pattern: str | None, strict: bool, progress: bool | None) -> None:
    """Run the claims catalogue of the seed documents and print a verdict table.

    The documents are the bundled seeds plus those in the folders named in
    $ATTNVERIFY_CATALOGUE (separated by os.pathsep, ':' on Unix; each document KEY_name.txt or .md with its
    checks in seed_KEY.py beside it, see proofs/catalogue/_documents.py).

    A REFUTED claim is a finding, not a failure: the exit code is 0 unless a check
    crashed, or --strict is given and a claim is REFUTED or CORRECTED. Ctrl-C stops
    after the claim in progress (twice: at once) and saves the finished claims.
    """
    import time

    to_stdout = json_path == "-"
    console = stdout_console(stderr=to_stdout)
    with InterruptGate() as gate:
        from proofs.catalogue import all_claims, not_run

        claims = select_claims(all_claims(), pattern)
        if not claims:
            _no_claim(pattern)
        start = time.perf_counter()
        show = sys.stderr.isatty() if progress is None else progress
        results, interrupted = run_claims(claims, console=Console(stderr=True), show_progress=show, gate=gate)
        seconds = time.perf_counter() - start
        left_out = select_not_run(not_run(), pattern)
        if interrupted:
            left_out = [*left_out, f"{len(claims) - len(results)} of {len(claims)} claims: interrupted"]
        code = exit_code(results, interrupted=interrupted, strict=strict)
        plan_exit(code)
        document = None
        if json_path is not None:
            document = json.dumps(results_document(results, seconds=seconds, not_run=left_out,
                                                   incomplete=interrupted), indent=2)
            if not to_stdout:
                write_output(json_path, "--json", lambda: json_path.write_text(document, encoding="utf-8"))
        print_results(results, console)
        _print_footer(results, seconds, left_out, console)
        if document is not None:
            if to_stdout:
                click.echo(document)
            else:
                console.print(plain(f"wrote {json_path}"))
        if strict and code == 1 and all(r.ok for r in results):
            console.print(plain("--strict: a claim is REFUTED or CORRECTED", "yellow"))
        if interrupted or gate.pending:
            what = "the results above are INCOMPLETE" if interrupted else "every claim had finished"
            console.print(plain(f"interrupted: {what}", "bold yellow"))
            code = 130
    ctx.exit(code)


def _no_claim(pattern: str) -> None:
    """``--only`` selected nothing: a usage error, saying why when the pattern names claims that
    cannot run here (an optional dependency missing)."""
    from proofs.catalogue import not_run

    left_out = select_not_run(not_run(), pattern)
    if left_out:
        raise click.BadParameter(f"{pattern!r} matches only claims not run here: {'; '.join(left_out)}",
                                 param_hint="--only")
    raise click.BadParameter(f"{pattern!r} matches no claim id or source", param_hint="--only")


def _print_footer(results, seconds: float, left_out: list[str], console: Console) -> None:
    """The counts, the claims not run and why, and the crashes with their tracebacks."""
    counts = Counter(verdict_of(r) for r in results)
    console.print(plain(f"{len(results)} claims in {seconds:.1f} s: "
                        + ", ".join(f"{v} {counts[v]}" for v in VERDICTS if counts[v])))
    for reason in left_out:
        console.print(plain("not run: ", "yellow") + plain(reason))
    for r in results:
        if not r.ok:
            console.print(plain(f"{r.claim.id} crashed:", "bold red"))
            console.print(plain(r.error))


@click.command(epilog=EXIT_CODES)
@click.argument("name", required=False)
@click.option("--list", "list_names", is_flag=True, help="List the derivations (with NAME: only that one).")
def derive(name: str | None, list_names: bool) -> None:
    """Print one derivation as LaTeX (each step checked first, or marked as a definition, an
    assumption or a cited theorem; exit 1 when a step fails)."""
    from proofs.derivations import DERIVATIONS

    if list_names or name is None:
        if name is not None and name not in DERIVATIONS:
            raise click.BadParameter(f"expected one of {', '.join(DERIVATIONS)}; got {name!r}", param_hint="NAME")
        plan_exit(0)
        for key, build in DERIVATIONS.items():
            if name is not None and key != name:
                continue
            doc = (build.__doc__ or "").strip().splitlines()
            click.echo(f"{key:<22}{doc[0] if doc else ''}")
        return
    if name not in DERIVATIONS:
        raise click.BadParameter(f"expected one of {', '.join(DERIVATIONS)}; got {name!r}", param_hint="NAME")
    derivation = DERIVATIONS[name]()
    plan_exit(0 if derivation.valid else 1)
    click.echo(derivation.latex())
    if not derivation.valid:
        raise click.ClickException(f"{len(derivation.failed)} step(s) of {name} failed their check")


@click.command(epilog=EXIT_CODES)
@click.option("--out", "out_dir", required=True, type=OutputPath(directory=True),
              help="Directory for report.tex (and report.pdf when a TeX engine is present); created if missing.")
@click.option("--only", "pattern", metavar="PATTERN", help="Only claims matching this glob, as in check.")
@click.option("--pdf/--no-pdf", default=True, help="Compile the PDF when pdflatex is on PATH.")
@click.option("--crosscheck/--no-crosscheck", "with_crosscheck", default=True,
              help="Add the crosscheck's table (every backend against float64, mpmath and SymPy; about 15 s).")
@click.pass_context
def report(ctx: click.Context, out_dir: Path, pattern: str | None, pdf: bool, with_crosscheck: bool) -> None:
    """Write a standalone LaTeX article of every claim, verdict, derivation and evidence, and
    the crosscheck's table of every backend against the exact results.

    Ctrl-C stops after the claim in progress and writes nothing (a report of part of the
    catalogue would read as the whole).
    """
    with InterruptGate() as gate:
        from proofs.catalogue import all_claims
        from proofs.report import compile_pdf, write_report

        claims = select_claims(all_claims(), pattern)
        if not claims:
            _no_claim(pattern)
        results, interrupted = run_claims(claims, console=Console(stderr=True), show_progress=sys.stderr.isatty(),
                                          gate=gate)
        if interrupted:
            click.echo(f"interrupted after {len(results)} of {len(claims)} claims: report not written", err=True)
            ctx.exit(130)
        crosscheck = None
        if with_crosscheck:
            from proofs.derivations.lambdified import symbolic_results
            from verify.crosscheck import crosscheck as run_crosscheck

            crosscheck = run_crosscheck(symbolic=symbolic_results)
        plan_exit(0)
        tex = write_report(results, out_dir, crosscheck=crosscheck)
        click.echo(f"wrote {tex}")
        if pdf:
            pdf_path = compile_pdf(tex)
            click.echo(f"wrote {pdf_path}" if pdf_path else "no pdflatex on PATH: PDF not built")
        code = 130 if gate.pending else 0
    ctx.exit(code)
