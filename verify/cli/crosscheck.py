"""``attnverify crosscheck``: numerics on every backend present against float64, mpmath and SymPy.

The table has one line per layer, pass (output or gradient), backend and dtype, with the worst
relative error against each reference next to its bound and the number of the problem that gave
it, and the verdict of verify.validate.tolerance's rule over every case; a footer says what the
numbers mean and lists the problems. The JSON file (``--json``) is written before the table is printed.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from verify._console import plain, print_table, stdout_console
from verify._exits import EXIT_CODES, plan_exit
from verify._paths import OutputPath, write_output

__all__ = ["crosscheck", "footer", "result_document", "table_rows"]

_STYLE = {"PASS": "green", "FAIL": "bold red", "ERROR": "bold red"}


def result_document(result) -> dict:
    """The JSON document ``crosscheck --json`` writes."""
    from verify import __version__

    return {"tool": "attnverify", "command": "crosscheck", "version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), **result.to_dict()}


def _cell(row, numbers: dict, *, reference_itself: bool = False) -> str:
    if row is None:
        return "(reference)" if reference_itself else "-"
    if row.message:
        return "error"
    case = f" #{numbers[row.layer, row.worst_case]}" if (row.layer, row.worst_case) in numbers else ""
    relation = "<=" if row.passed else ">"
    return f"{row.error:.1e} {relation} {row.bound:.1e}{case}"


def table_rows(result) -> list[tuple]:
    """One tuple a (layer, pass, backend, dtype): the references' cells ("error <= bound #n", n the
    worst problem's number; "(reference)" where the line is the float64 reference itself; "-"
    where the reference was not run) and the verdict (FAIL or ERROR when any reference's row is)."""
    from verify.crosscheck import case_numbers, table_lines

    numbers = case_numbers(result)
    out = []
    for (layer, quantity, backend, dtype), by_ref in table_lines(result).items():
        statuses = [r.status.value for r in by_ref.values()]
        verdict = "ERROR" if "ERROR" in statuses else "FAIL" if "FAIL" in statuses else "PASS"
        itself = not layer.endswith(" tiled") and backend == "numpy" and dtype == "float64"
        out.append((layer, quantity, backend, dtype,
                    *(_cell(by_ref.get(ref), numbers, reference_itself=itself and ref == "float64")
                      for ref in result.references), verdict))
    return out


def footer(result) -> list[str]:
    """What the table's numbers mean, and its problems by number."""
    from verify.validate.tolerance import ABS64, K_GRADIENT, K_OUTPUT

    lines = [
        "error: max |result - reference| / max |reference| over all entries of that output or gradient, the "
        "largest over the layer's problems (#n: the problem that gave it, listed below); '(reference)': NumPy "
        "float64 is the float64 reference itself.",
        f"bound: a float64 result within ABS64 = {ABS64:g} of the reference (relative, as the error); a float32 "
        f"result within k err(plain float32) + 16u, u = 2^-24 (float32's unit roundoff), k = {K_OUTPUT:g} for "
        f"outputs and {K_GRADIENT:g} for gradients; plain: the mpmath reference with every operation rounded to "
        "24 bits.",
    ]
    if any(c.tiled for c in result.cases):
        lines.append("tiled lines: the long problems, with numerics' tiled attention forced on (forward and "
                     "backward, each run checked to go through it), against NumPy float64 untiled; plain float32 "
                     "is NumPy float32 untiled; mpmath and SymPy ('-') cannot afford these sizes.")
    lines.append("problems: " + "; ".join(
        f"#{i} {c.layer} {c.name} (" + ", ".join(f"{k}={v}" for k, v in c.sizes.items() if k in ("N", "M")) + ")"
        for i, c in enumerate(result.cases, 1)))
    return lines


def _print(result, console: Console) -> None:
    rows = [(*row[:-1], Text(row[-1], style=_STYLE[row[-1]])) for row in table_rows(result)]
    columns = ("layer", "pass", "backend", "dtype", *(f"vs {ref}" for ref in result.references), "verdict")
    print_table(console, "attnverify crosscheck: max relative error <= bound (#n: worst problem)", columns, rows,
                verdict_columns=("verdict",), compact=True)
    for line in footer(result):
        console.print(plain(line))
    failed = [r for r in result.rows if not r.passed]
    for row in failed:
        what = f"{row.layer}{' tiled' if row.tiled else ''} {row.quantity} on {row.backend} {row.dtype} vs {row.reference}"
        if row.message:
            console.print(plain(f"ERROR {what}: {row.message}", "bold red"))
        else:
            console.print(plain(f"FAIL {what}: case {row.worst_case}, error {row.error:.3g} > bound {row.bound:.3g}",
                                "bold red"))
    for note in result.notes:
        console.print(plain(f"note: {note}", "yellow"))
    for name, why in result.skipped.items():
        console.print(plain("not run: ", "yellow") + plain(f"{name}: {why}"))
    lines = table_rows(result)
    passed = sum(1 for line in lines if line[-1] == "PASS")
    console.print(plain(f"{len(result.cases)} problems on {', '.join(result.backends)} in {result.seconds:.1f} s: "
                        f"{passed} of {len(lines)} lines PASS"))


@click.command(epilog=EXIT_CODES)
@click.option("--json", "json_path", type=OutputPath(dash=True),
              help="Write every row (layer, pass, backend, dtype, reference, error, bound, verdict) and the cases "
                   "to this JSON file ('-': to stdout, the table to stderr). Missing folders are created.")
@click.option("--backend", "backends", multiple=True, metavar="NAME",
              type=click.Choice(["numpy", "array_api_strict", "torch", "cupy"]),
              help="Run only this backend: numpy, array_api_strict, torch or cupy (repeat for more); default: every backend present.")
@click.option("--sympy/--no-sympy", "use_sympy", default=True,
              help="Compare with the derivations' SymPy results (about 8 s); default on.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")
@click.pass_context
def crosscheck(ctx: click.Context, json_path, backends: tuple[str, ...], use_sympy: bool,
               progress: bool | None) -> None:
    """Run the same attention, multi-head attention and transformer-block problems (bias, causal
    alignments, window, softcap, grouped-query heads, rope) forward and backward on every
    backend present, in float64 and float32, against NumPy float64, the mpmath reference and
    the derivations' SymPy results, and print the largest errors with the tolerance rule's
    verdict; two long problems run through the tiled path against NumPy float64 untiled.
    Exit 1 when a line fails.
    """
    from verify.crosscheck import crosscheck as run

    symbolic = None
    if use_sympy:
        from proofs.derivations.lambdified import symbolic_results as symbolic
    to_stdout = json_path == "-"
    console = stdout_console(stderr=to_stdout)
    show = sys.stderr.isatty() if progress is None else progress
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), disable=not show, transient=True) as bar:
        task = bar.add_task("crosscheck", total=None)

        def report(description: str, done: int, total: int) -> None:
            bar.update(task, description=Text(description).markup, completed=done, total=total)

        try:
            result = run(backends=backends or None, symbolic=symbolic, progress=report)
        except ValueError as exc:  # a named backend that cannot run here
            raise click.BadParameter(str(exc), param_hint="--backend") from None
    code = 0 if result.passed else 1
    plan_exit(code)
    document = None
    if json_path is not None:
        document = json.dumps(result_document(result), indent=2)
        if not to_stdout:
            write_output(json_path, "--json", lambda: json_path.write_text(document, encoding="utf-8"))
    _print(result, console)
    if document is not None:
        if to_stdout:
            click.echo(document)
        else:
            console.print(plain(f"wrote {json_path}"))
    ctx.exit(code)
