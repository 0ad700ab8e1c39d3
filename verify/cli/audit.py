"""``attnverify audit FILE...``: recompute the worked numbers of any Markdown/LaTeX document."""

from __future__ import annotations

import json
from pathlib import Path

import click

from verify._console import plain, print_table, stdout_console
from verify._exits import EXIT_CODES, plan_exit
from verify._paths import OutputPath, check_output_path, write_output

OUTCOME_STYLE = {"HOLDS": "green", "WRONG": "bold red", "UNCHECKED": "yellow"}


def exit_code(audits, *, strict: bool) -> int:
    """0 when the audit ran (a WRONG value is a finding, as a REFUTED claim is for ``check``);
    1 under --strict when any value is WRONG."""
    return 1 if strict and any(f.outcome == "WRONG" for a in audits for f in a.findings) else 0


def _annotate_targets(out: Path, files: list[Path]) -> list[Path]:
    """One file: ``out`` itself. Several: ``out`` is a folder holding ``<name>.annotated.md``."""
    try:
        if len(files) == 1 and not out.is_dir():
            return [check_output_path(out)]
        folder = check_output_path(out, directory=True)
        return [check_output_path(folder / f"{f.stem}.annotated.md") for f in files]
    except ValueError as exc:
        what = "a file" if len(files) == 1 else f"a folder (for {len(files)} files)"
        raise click.BadParameter(f"expected {what} that can be written: {exc}", param_hint="--annotate") from None


@click.command(epilog=EXIT_CODES)
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "json_path", type=OutputPath(dash=True),
              help="Write every finding (printed, correct, deviation, origin, reason) to this JSON file "
                   "('-': to stdout, the table to stderr). Missing folders are created.")
@click.option("--annotate", "annotate_path", type=click.Path(path_type=Path),
              help="Write a copy of the document with each WRONG value marked in red and corrected "
                   "(several FILEs: a folder, one <name>.annotated.md each).")
@click.option("--strict", is_flag=True, help="Exit 1 when any printed value is WRONG (for a document's own CI).")
@click.pass_context
def audit(ctx: click.Context, files: tuple[Path, ...], json_path, annotate_path: Path | None, strict: bool) -> None:
    """Recompute every worked number in FILE... exactly and judge it at the printed precision.

    Reads Markdown with LaTeX math ($...$, $$...$$, quoted > blocks; bmatrix, pmatrix and
    inline [1, 0, 2] vectors) and each "=" chain that ends in a printed number or matrix:
    products, transposes, Concat, dot products, \\frac, \\sqrt, e^{...}, softmax weights,
    weighted sums and plain arithmetic. Each statement is HOLDS, WRONG (with the correct
    value, the largest deviation, and whether the error is new or carried from an earlier
    WRONG value) or UNCHECKED (with the reason). The exit code is 0 unless --strict is
    given and a value is WRONG. The document is only read, never run.
    """
    from proofs.audit import annotated_text, audit_document, audit_json, table_rows, totals_line
    from proofs.audit.source import Document
    from verify import __version__

    to_stdout = json_path == "-"
    console = stdout_console(stderr=to_stdout)
    targets = _annotate_targets(annotate_path, list(files)) if annotate_path is not None else []
    docs = [Document.read(f) for f in files]
    audits = [audit_document(d) for d in docs]
    code = exit_code(audits, strict=strict)
    plan_exit(code)
    document = json.dumps(audit_json(audits, version=__version__), indent=2) if json_path is not None else None
    if document is not None and not to_stdout:
        write_output(json_path, "--json", lambda: json_path.write_text(document, encoding="utf-8"))
    for doc, result, target in zip(docs, audits, targets):
        write_output(target, "--annotate", lambda t=target, d=doc, r=result: t.write_text(annotated_text(d, r),
                                                                                        encoding="utf-8"))
    rows = [(d, line, label, plain(outcome, OUTCOME_STYLE[outcome]), text)
            for d, line, label, outcome, text in table_rows(audits)]
    print_table(console, "attnverify audit", ("document", "line", "statement", "outcome", "finding"), rows,
                verdict_columns=("outcome",), wide=("finding",))
    console.print(plain(totals_line(audits), "bold"))
    if document is not None:
        if to_stdout:
            click.echo(document)
        else:
            console.print(plain(f"wrote {json_path}"))
    for target in targets:
        console.print(plain(f"wrote {target}"))
    if strict and code == 1:
        console.print(plain("--strict: a printed value is WRONG", "yellow"))
    ctx.exit(code)
