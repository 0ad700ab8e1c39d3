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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from verify._console import stdout_console

_VERDICT_STYLE = {
    "PROVED": "green",
    "SUPPORTED": "cyan",
    "CORRECTED": "yellow",
    "REFUTED": "red",
    "INFORMAL": "magenta",
}


def select_claims(claims, pattern: str | None):
    """Claims whose id, or source ``document, label``, matches the glob ``pattern``."""
    if pattern is None:
        return list(claims)
    pattern = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    return [c for c in claims if fnmatch.fnmatch(c.id, pattern) or fnmatch.fnmatch(str(c.source), pattern)]


def run_claims(claims, *, console: Console, show_progress: bool):
    """Run every claim in order, with a progress bar on a terminal; return the results."""
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
            progress.update(task, description=f"checking {claim.id}")
            results.append(claim.run())
            progress.advance(task)
    return results


def results_document(results, *, seconds: float, not_run: list[str] | None = None) -> dict:
    """The JSON document ``check --json`` writes (schema: proofs/schema/check.schema.json)."""
    from verify.cli import __version__

    counts = Counter(r.verdict.value for r in results if r.verdict is not None)
    return {
        "tool": "attnverify",
        "version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "backend": "numpy",
        "python": platform.python_version(),
        "seconds": seconds,
        "summary": {
            "claims": len(results),
            "crashed": sum(1 for r in results if not r.ok),
            "verdicts": {v: counts.get(v, 0) for v in _VERDICT_STYLE},
        },
        "not_run": list(not_run or []),
        "results": [r.to_dict() for r in results],
    }


def _results_table(results) -> Table:
    table = Table(title="attnverify check", show_lines=False)
    table.add_column("claim", overflow="fold", min_width=18, max_width=34)
    table.add_column("source", overflow="fold", min_width=10, max_width=24)
    table.add_column("verdict", no_wrap=True, min_width=9)
    table.add_column("method", overflow="fold", min_width=8, max_width=12)
    table.add_column("evidence", overflow="fold", min_width=30)
    for r in results:
        verdict = "CRASHED" if r.verdict is None else r.verdict.value
        style = _VERDICT_STYLE.get(verdict, "bold red")
        source = f"{r.claim.source.document[:3]} {r.claim.source.label}"
        table.add_row(r.claim.id, source, f"[{style}]{verdict}[/]", ", ".join(r.methods), r.summary)
    return table


@click.command()
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write every result with its evidence to this JSON file.")
@click.option("--only", "pattern", metavar="PATTERN",
              help="Run only claims whose id or source matches this glob (a plain word matches anywhere).")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar (default: when stderr is a terminal).")
def check(json_path: Path | None, pattern: str | None, progress: bool | None) -> None:
    """Run the claims catalogue of the seed documents and print a verdict table.

    Exit code 0 when every check ran (a REFUTED claim is a finding, not a failure),
    1 when a check crashed, 2 on bad usage.
    """
    import time

    from proofs.catalogue import all_claims, not_run

    console = stdout_console()
    claims = select_claims(all_claims(), pattern)
    if not claims:
        raise click.UsageError(f"--only {pattern!r} matches no claim id or source")
    start = time.perf_counter()
    show = sys.stderr.isatty() if progress is None else progress
    results = run_claims(claims, console=Console(stderr=True), show_progress=show)
    seconds = time.perf_counter() - start
    console.print(_results_table(results))
    counts = Counter("CRASHED" if r.verdict is None else r.verdict.value for r in results)
    console.print(
        f"{len(results)} claims in {seconds:.1f} s: "
        + ", ".join(f"{v} {counts[v]}" for v in [*_VERDICT_STYLE, "CRASHED"] if counts[v])
    )
    left_out = not_run()
    for reason in left_out:
        console.print(f"[yellow]not run:[/] {reason}")
    if json_path is not None:
        document = results_document(results, seconds=seconds, not_run=left_out)
        json_path.write_text(json.dumps(document, indent=2))
        console.print(f"wrote {json_path}")
    crashed = [r for r in results if not r.ok]
    for r in crashed:
        console.print(f"[bold red]{r.claim.id} crashed:[/]\n{r.error}")
    sys.exit(1 if crashed else 0)


@click.command()
@click.argument("name", required=False)
@click.option("--list", "list_names", is_flag=True, help="List the derivations.")
def derive(name: str | None, list_names: bool) -> None:
    """Print one derivation as LaTeX (each step checked first)."""
    from proofs.derivations import DERIVATIONS

    if list_names or name is None:
        for key, build in DERIVATIONS.items():
            doc = (build.__doc__ or "").strip().splitlines()
            click.echo(f"{key:<22}{doc[0] if doc else ''}")
        return
    if name not in DERIVATIONS:
        raise click.BadParameter(f"expected one of {', '.join(DERIVATIONS)}; got {name!r}", param_hint="NAME")
    derivation = DERIVATIONS[name]()
    click.echo(derivation.latex())
    if not derivation.valid:
        raise click.ClickException(f"{len(derivation.failed)} step(s) of {name} failed their check")


@click.command()
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory for report.tex (and report.pdf when a TeX engine is present).")
@click.option("--only", "pattern", metavar="PATTERN", help="Only claims matching this glob, as in check.")
@click.option("--pdf/--no-pdf", default=True, help="Compile the PDF when pdflatex is on PATH.")
def report(out_dir: Path, pattern: str | None, pdf: bool) -> None:
    """Write a standalone LaTeX article of every claim, verdict, derivation and evidence."""
    from proofs.catalogue import all_claims
    from proofs.report import compile_pdf, write_report

    claims = select_claims(all_claims(), pattern)
    if not claims:
        raise click.UsageError(f"--only {pattern!r} matches no claim id or source")
    results = run_claims(claims, console=Console(stderr=True), show_progress=sys.stderr.isatty())
    tex = write_report(results, out_dir)
    click.echo(f"wrote {tex}")
    if pdf:
        pdf_path = compile_pdf(tex)
        click.echo(f"wrote {pdf_path}" if pdf_path else "no pdflatex on PATH: PDF not built")
