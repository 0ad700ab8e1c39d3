"""The LaTeX report: one standalone article with every claim, its verdict and its evidence.

``write_report(results, out_dir)`` writes ``report.tex`` (figures copied beside it);
``compile_pdf(tex)`` runs pdflatex when it is on PATH and raises :class:`ReportError`
with the end of the log when LaTeX reports an error.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Iterable

from .claims import ClaimResult, Verdict
from .latex import escape
from .latex import text as latex_text

__all__ = ["ReportError", "latex_escape", "render_report", "write_report", "compile_pdf"]

_VERDICT_COLOUR = {
    Verdict.PROVED: "ForestGreen",
    Verdict.SUPPORTED: "teal",
    Verdict.CORRECTED: "orange",
    Verdict.REFUTED: "red",
    Verdict.INCONCLUSIVE: "gray",
    Verdict.INFORMAL: "violet",
}
_PREAMBLE = r"""\documentclass[11pt]{article}
\usepackage[utf8]{inputenc}
\usepackage{amsmath,amssymb}
\usepackage[a4paper,margin=2.2cm]{geometry}
\usepackage[dvipsnames]{xcolor}
\usepackage{graphicx}
\usepackage{longtable,array}
\usepackage{hyperref}
\allowdisplaybreaks
\sloppy
\setlength{\parindent}{0pt}
\setlength{\parskip}{0.5em}
"""


class ReportError(RuntimeError):
    """pdflatex failed; the message holds the end of its log."""


def latex_escape(text: str) -> str:
    """Plain text made safe for LaTeX text mode; unknown non-ASCII characters become '?'."""
    return escape(text, unknown="replace")


def _safe_math_text(text: str) -> str:
    """A statement that mixes text and $...$ math: escape the text, keep the math."""
    try:
        return latex_text(str(text), unknown="replace")
    except ValueError:  # unbalanced $: all of it is text
        return latex_escape(text)


def _verdict_tag(result: ClaimResult) -> str:
    if result.verdict is None:
        return r"\textcolor{red}{\textbf{CRASHED}}"
    return rf"\textcolor{{{_VERDICT_COLOUR[result.verdict]}}}{{\textbf{{{result.verdict.value}}}}}"


def _data_rows(data: dict, prefix: str = "") -> Iterable[tuple[str, str]]:
    """Scalars (and short lists) of an evidence dict as (key, value) rows, nested keys dotted."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _data_rows(value, prefix=f"{name}.")
        elif isinstance(value, (list, tuple)) and len(value) > 8:
            yield name, f"[{len(value)} values]"
        else:
            text = f"{value:.6g}" if isinstance(value, float) else str(value)
            yield name, text if len(text) <= 90 else text[:87] + "..."


def _claim_section(result: ClaimResult, figure_dir: Path, out_dir: Path) -> str:
    claim = result.claim
    lines = [
        rf"\subsection*{{{latex_escape(claim.id)}: {latex_escape(claim.title)}}}",
        rf"\textbf{{Source:}} \texttt{{{latex_escape(claim.source.document)}}}, {latex_escape(claim.source.label)}"
        + (rf" (line {claim.source.line})" if claim.source.line and "(line" not in claim.source.label else "")
        + r"\\",
        rf"\textbf{{Verdict:}} {_verdict_tag(result)} \quad \textbf{{Method:}} {latex_escape(', '.join(result.methods) or '-')}"
        rf" \quad \textbf{{Time:}} {result.seconds:.2f} s",
        "",
        r"\textbf{Statement.} " + _safe_math_text(claim.statement),
    ]
    if claim.assumptions:
        lines += [r"\textbf{Assumptions.}", r"\begin{itemize}"]
        lines += [r"\item " + _safe_math_text(a) for a in claim.assumptions]
        lines += [r"\end{itemize}"]
    if result.error:
        last = result.error.strip().splitlines()[-1]
        lines.append(r"\textbf{The check crashed:} \texttt{" + latex_escape(last) + "}")
    for outcome in result.outcomes:
        lines.append(
            rf"\paragraph{{{latex_escape(outcome.method.value.capitalize())} check: {outcome.verdict.value}.}}"
        )
        if outcome.corrected_statement:
            lines.append(r"\textbf{Corrected statement.} " + _safe_math_text(outcome.corrected_statement))
        for evidence in outcome.evidence:
            lines.append(rf"\emph{{{latex_escape(evidence.kind)}:}} " + _safe_math_text(evidence.summary))
            if evidence.latex:
                lines.append(evidence.latex)
            rows = list(_data_rows(evidence.data))
            if rows:
                lines += [r"\begin{longtable}{>{\raggedright}p{0.3\linewidth}>{\raggedright\arraybackslash}p{0.64\linewidth}}"]
                lines += [rf"\texttt{{{latex_escape(k)}}} & {latex_escape(v)} \\" for k, v in rows]
                lines += [r"\end{longtable}"]
            for figure in evidence.figures:
                source = Path(figure)
                if source.is_file():
                    figure_dir.mkdir(parents=True, exist_ok=True)
                    target = figure_dir / source.name
                    shutil.copyfile(source, target)
                    rel = target.relative_to(out_dir).as_posix()
                    lines += [r"\begin{center}", rf"\includegraphics[width=0.8\linewidth]{{{rel}}}", r"\end{center}"]
    return "\n".join(lines) + "\n"


def render_report(results: list[ClaimResult], out_dir: Path) -> str:
    """The whole LaTeX document as a string (figures are copied into ``out_dir/figures``)."""
    counts = Counter("CRASHED" if r.verdict is None else r.verdict.value for r in results)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    body = [
        _PREAMBLE,
        r"\title{attnverify: the claims of the seed documents, checked}",
        r"\date{\today}",
        r"\begin{document}",
        r"\maketitle",
        "Every statement below comes from one of the source documents. Its verdict was computed"
        " when this report was built, by the checks listed under it: exact SymPy derivations"
        " (each step checked, or marked as a definition, an assumption or a cited theorem), Monte Carlo estimates with confidence intervals, or numerical"
        " counterexamples. " + latex_escape(f"{len(results)} claims: {summary}."),
    ]
    by_document: dict[str, list[ClaimResult]] = {}
    for r in results:
        by_document.setdefault(r.claim.source.document, []).append(r)
    for document, group in by_document.items():
        body.append(rf"\section{{\texttt{{{latex_escape(document)}}}}}")
        body += [_claim_section(r, out_dir / "figures", out_dir) for r in group]
    body.append(r"\end{document}")
    return "\n".join(body) + "\n"


def write_report(results: list[ClaimResult], out_dir: Path) -> Path:
    """Write ``out_dir/report.tex`` and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tex = out_dir / "report.tex"
    tex.write_text(render_report(results, out_dir), encoding="utf-8")
    return tex


def compile_pdf(tex: Path, *, engine: str = "pdflatex", timeout: float = 300) -> Path | None:
    """Compile ``tex`` twice (for references); None when the engine is not on PATH."""
    exe = shutil.which(engine)
    if exe is None:
        return None
    tex = Path(tex)
    for _ in range(2):
        run = subprocess.run(
            [exe, "-interaction=nonstopmode", "-halt-on-error", tex.name],
            cwd=tex.parent, capture_output=True, text=True, errors="replace", timeout=timeout,
        )
        if run.returncode != 0:
            tail = "\n".join(run.stdout.splitlines()[-30:])
            raise ReportError(f"{engine} failed on {tex} (exit {run.returncode}):\n{tail}")
    return tex.with_suffix(".pdf")
