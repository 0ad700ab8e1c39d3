"""The LaTeX report: one standalone article with every claim, its verdict and its evidence.

It reads as a referee's report: a summary table first (claim, verdict, one line, each row a
link to the claim); then one section per document, titled by the document's own title
(:func:`document_title`); under each claim its statement, assumptions, and each check's
evidence as prose and mathematics (:mod:`proofs.report_evidence`: numbers as vectors and
matrices, records as tables, worked examples as the document's matrices with the wrong entries
in red), figures with captions.

``write_report(results, out_dir)`` writes ``report.tex`` (figures copied beside it);
``compile_pdf(tex)`` runs pdflatex when it is on PATH and raises :class:`ReportError`
with the end of the log when LaTeX reports an error.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Iterable

from .claims import ClaimResult, Verdict
from .latex import escape
from .report_evidence import PREAMBLE_MACROS, data_block, one_line, plain, prose, symbols

__all__ = ["ReportError", "latex_escape", "document_title", "render_report", "write_report", "compile_pdf",
           "crosscheck_section"]

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
\usepackage{caption}
\usepackage[hidelinks]{hyperref}
\allowdisplaybreaks
\sloppy
\emergencystretch=3em
\setlength{\parindent}{0pt}
\setlength{\parskip}{0.5em}
""" + PREAMBLE_MACROS


class ReportError(RuntimeError):
    """pdflatex failed; the message holds the end of its log."""


def latex_escape(text: str) -> str:
    """Plain text made safe for LaTeX text mode; unknown non-ASCII characters become '?'."""
    return escape(text, unknown="replace")


def _verdict_tag(result: ClaimResult) -> str:
    if result.verdict is None:
        return r"\textcolor{red}{\textbf{CRASHED}}"
    return rf"\textcolor{{{_VERDICT_COLOUR[result.verdict]}}}{{\textbf{{{result.verdict.value}}}}}"


def _anchor(result: ClaimResult) -> str:
    return "claim:" + re.sub(r"[^A-Za-z0-9.-]", "-", result.claim.id)


def _figure(figure: str, caption: str, figure_dir: Path, out_dir: Path) -> list[str]:
    source = Path(figure)
    if not source.is_file():
        return [r"\emph{(figure " + plain(source.name) + " is missing)}"]
    figure_dir.mkdir(parents=True, exist_ok=True)
    target = figure_dir / source.name
    if source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    rel = target.relative_to(out_dir).as_posix()
    return [r"\begin{center}", rf"\includegraphics[width=0.75\linewidth]{{{rel}}}",
            r"\captionof{figure}{" + prose(caption) + "}", r"\end{center}"]


def _shown_by_latex(evidence) -> set[str]:
    """Data entries the evidence's own LaTeX already shows: the step records of a derivation."""
    if not evidence.latex:
        return set()
    return {k for k, v in evidence.data.items()
            if isinstance(v, list) and v and all(isinstance(s, dict) and ("latex" in s or "reason" in s) for s in v)}


def _source_line(claim) -> str:
    where = plain(claim.source.label)
    if claim.source.line and "(line" not in claim.source.label:
        where += f" (line {claim.source.line})"
    return where + r" in \texttt{" + plain(claim.source.document) + "}"


def _claim_section(result: ClaimResult, figure_dir: Path, out_dir: Path) -> str:
    claim = result.claim
    lines = [
        # the bracketed form (plain text) goes to the PDF bookmarks, the shown one sets Q_i as math
        rf"\subsection[{{{plain(claim.source.label)}: {plain(claim.title)}}}]"
        rf"{{{plain(claim.source.label)}: {symbols(claim.title)}}}\label{{{_anchor(result)}}}",
        rf"\textbf{{Verdict:}} {_verdict_tag(result)}. \textbf{{Source:}} {_source_line(claim)}."
        rf" \textbf{{Checked by:}} {plain(', '.join(result.methods) or '-')}, in {result.seconds:.2f} s.",
        "",
        r"\textbf{Statement.} " + prose(claim.statement),
    ]
    if claim.assumptions:
        lines += ["", r"\textbf{Assumptions.}", r"\begin{itemize}\setlength{\itemsep}{0pt}"]
        lines += [r"\item " + prose(a) for a in claim.assumptions]
        lines += [r"\end{itemize}"]
    if result.error:
        last = result.error.strip().splitlines()[-1]
        lines.append(r"\textbf{The check crashed:} \texttt{" + plain(last) + "}")
    for outcome in result.outcomes:
        lines.append(rf"\subsubsection*{{{plain(outcome.method.value.capitalize())} check: {outcome.verdict.value}}}")
        if outcome.corrected_statement:
            lines.append(r"\textbf{Corrected statement.} " + prose(outcome.corrected_statement))
            lines.append("")
        for evidence in outcome.evidence:
            lines += ["", rf"\textbf{{{plain(evidence.kind.capitalize())}.}} " + prose(evidence.summary), ""]
            if evidence.latex:  # a step-by-step derivation: a size smaller, so its two columns fit the page
                lines += [r"{\small", evidence.latex, "}"]
            block = data_block(evidence.data, shown_elsewhere=_shown_by_latex(evidence))
            if block:
                lines.append(block)
            for figure in evidence.figures:
                lines += _figure(figure, one_line(evidence.summary, limit=120), figure_dir, out_dir)
    return "\n".join(lines) + "\n"


def _summary_table(results: list[ClaimResult]) -> str:
    rows = [r"\textbf{Claim} & \textbf{Verdict} & \textbf{In one line} \\ \hline \endhead"]
    for r in results:
        claim = r.claim.source.document[:3] + " " + r.claim.source.label
        rows.append(rf"\hyperref[{_anchor(r)}]{{{plain(claim)}}} & {_verdict_tag(r)} & {prose(one_line(r.summary))} \\")
    spec = ("@{}>{\\raggedright\\arraybackslash}p{\\dimexpr0.2\\linewidth-1.334\\tabcolsep\\relax}"
            ">{\\raggedright\\arraybackslash}p{\\dimexpr0.19\\linewidth-1.334\\tabcolsep\\relax}"
            ">{\\raggedright\\arraybackslash}p{\\dimexpr0.61\\linewidth-1.334\\tabcolsep\\relax}@{}")
    return "{\\small\n\\begin{longtable}{" + spec + "}\n" + "\n".join(rows) + "\n\\end{longtable}}"


_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")


def document_title(text: str, fallback: str) -> str:
    """The document's title: its first Markdown heading, the encoding repaired, emphasis
    marks and a leading chapter number ("10.", "01.") removed; ``fallback`` if it has none."""
    for line in text.splitlines():
        m = _HEADING.match(line)
        if m:
            from .catalogue._doc import repair  # the catalogue is heavy: import it only when titles are asked for

            title = repair(m.group(1)).replace("**", "").replace("__", "").strip()
            title = re.sub(r"^\d+(\.\d+)*\.?\s+", "", title).strip()
            if title:
                return title
    return fallback


def _title_of(document: str) -> str:
    from .catalogue._doc import document_path

    try:
        text = document_path(document).read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, OSError):
        return document
    return document_title(text, document)


def _sci(x: float) -> str:
    """``8.1e-08`` as ``8.1\\times10^{-8}`` (math mode)."""
    if x != x or x in (float("inf"), float("-inf")):
        return r"\text{" + plain(str(x)) + "}"
    if x == 0:
        return "0"
    mantissa, exponent = f"{x:.1e}".split("e")
    return rf"{mantissa}{{\times}}10^{{{int(exponent)}}}"


def _crosscheck_cell(row) -> str:
    if row is None:
        return "--"
    if row.message:
        return r"\textcolor{red}{error}"
    relation = r"\le" if row.passed else ">"
    cell = f"${_sci(row.error)} {relation} {_sci(row.bound)}$"
    return cell if row.passed else r"\textcolor{red}{" + cell + "}"


def crosscheck_section(result) -> str:
    """The crosscheck's table (a :class:`verify.crosscheck.CrosscheckResult`) as a LaTeX section:
    one row per layer, pass, backend and dtype, the largest error against each reference beside
    its bound, and the tolerance rule's verdict over every case."""
    from verify.crosscheck import table_lines

    lines = table_lines(result)
    refs = list(result.references)
    head = " & ".join([r"\textbf{layer}", r"\textbf{pass}", r"\textbf{backend}", r"\textbf{dtype}",
                       *(rf"\textbf{{vs {plain(r)}}}" for r in refs), r"\textbf{verdict}"])
    body = [head + r" \\ \hline \endhead"]
    for (layer, quantity, backend, dtype), by_ref in lines.items():
        statuses = {r.status.value for r in by_ref.values()}
        verdict = "ERROR" if "ERROR" in statuses else "FAIL" if "FAIL" in statuses else "PASS"
        colour = "ForestGreen" if verdict == "PASS" else "red"
        body.append(" & ".join([plain(layer), plain(quantity), r"\texttt{" + plain(backend) + "}", plain(dtype),
                                *(_crosscheck_cell(by_ref.get(r)) for r in refs),
                                rf"\textcolor{{{colour}}}{{\textbf{{{verdict}}}}}"]) + r" \\")
    cases = "; ".join(f"{c.layer} {c.name}" for c in result.cases)
    skipped = "; ".join(f"{k}: {v}" for k, v in result.skipped.items())
    intro = (
        "The same problems (same seeds and weights) run forward and backward on every backend present ("
        + plain(", ".join(result.backends)) + "), in float64 and float32, against numerics on NumPy in float64, "
        "the mpmath reference (50 digits; gradients by the complex step in 100 digits)"
        + (" and the derivations' SymPy formulas, differentiated step by step and lambdified" if "sympy" in refs else "")
        + ". Each cell is the largest relative error over the cases against its bound: $10^{-12}$ for float64;"
        " for float32, $k\\,\\mathrm{err}(\\text{plain}) + 16u$ with $k = 2$, the plain implementation being the"
        " mpmath reference with every operation rounded to 24 bits. "
        + (" Tiled lines are the long problems, run with numerics' tiled attention forced on, against NumPy float64"
           " untiled (plain float32: NumPy float32 untiled); mpmath and SymPy cannot afford their sizes."
           if any(c.tiled for c in result.cases) else "")
        + plain(f" Cases: {cases}. Wall time {result.seconds:.1f} s.")
        + (" " + plain(f"Not run: {skipped}.") if skipped else "")
    )
    spec = "@{}llll" + "c" * len(refs) + "l@{}"
    title = "Crosscheck: every backend against " + ", ".join({"sympy": "SymPy"}.get(r, r) for r in refs)
    return "\n".join([rf"\section{{{title}}}", intro, "",
                      "{\\scriptsize\n\\setlength{\\tabcolsep}{3pt}\n\\begin{longtable}{" + spec + "}",
                      *body, r"\end{longtable}}"])


def render_report(results: list[ClaimResult], out_dir: Path, crosscheck=None) -> str:
    """The whole LaTeX document as a string (figures are copied into ``out_dir/figures``);
    with ``crosscheck`` (a :class:`verify.crosscheck.CrosscheckResult`), its section last."""
    counts = Counter("CRASHED" if r.verdict is None else r.verdict.value for r in results)
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    body = [
        _PREAMBLE,
        r"\title{attnverify: the claims of the source documents, checked}",
        r"\date{\today}",
        r"\begin{document}",
        r"\maketitle",
        "Every statement below comes from one of the source documents. Its verdict was computed"
        " when this report was built, by the checks listed under it: exact SymPy derivations"
        " (each step checked, or marked as a definition, an assumption or a cited theorem), Monte Carlo"
        " estimates with confidence intervals, or numerical counterexamples. "
        + plain(f"{len(results)} claims: {summary}."),
        r"\section*{Summary}",
        _summary_table(results),
    ]
    by_document: dict[str, list[ClaimResult]] = {}
    for r in results:
        by_document.setdefault(r.claim.source.document, []).append(r)
    for document, group in by_document.items():
        body.append(rf"\section{{{plain(_title_of(document))}}}")
        body.append(r"\emph{Source file} \texttt{" + plain(document) + "}.")
        body += [_claim_section(r, out_dir / "figures", out_dir) for r in group]
    if crosscheck is not None:
        body.append(crosscheck_section(crosscheck))
    body.append(r"\end{document}")
    return "\n".join(body) + "\n"


def write_report(results: list[ClaimResult], out_dir: Path, crosscheck=None) -> Path:
    """Write ``out_dir/report.tex`` (with the crosscheck's section when given) and return its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tex = out_dir / "report.tex"
    tex.write_text(render_report(results, out_dir, crosscheck), encoding="utf-8")
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
