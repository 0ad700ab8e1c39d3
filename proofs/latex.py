r"""LaTeX rendering of derivations (amsmath ``align*`` blocks) and a balance checker.

Every derivation renders as one ``align*`` block, one row per step::

    \begin{align*}
    lhs &= rhs && \text{reason} \\
        &= rhs' && \text{reason'}
    \end{align*}

Expressions go through :func:`latex_expr` (``sympy.latex`` with ``mat_str='bmatrix'`` and
``mat_delim=''``, so matrices never leave ``\left[ ... \right]`` behind); reasons through
:func:`text`, which escapes TeX specials outside ``$...$`` and maps the few Unicode
symbols we use to LaTeX, so the output is pure ASCII and compiles with plain
``pdflatex`` + amsmath (amssymb for ``\mathbb``). :func:`check_latex` verifies braces,
``\left``/``\right`` and ``\begin``/``\end`` balance and the absence of blank lines inside
``align*``; the tests run it on every derivation.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Sequence

import sympy as sp

if TYPE_CHECKING:  # pragma: no cover
    from .derivation import Derivation

__all__ = ["latex_expr", "text", "render", "render_section", "render_document", "check_latex", "group_end", "PREAMBLE"]

PREAMBLE = r"""\documentclass{article}
\usepackage{amsmath,amssymb}
\usepackage[margin=2cm]{geometry}
\allowdisplaybreaks
"""

DEFAULT_OPTIONS: dict[str, Any] = {"mat_str": "bmatrix", "mat_delim": ""}

_UNICODE = {
    "\u2264": r"$\le$", "\u2265": r"$\ge$", "\u2260": r"$\ne$", "\u2192": r"$\to$", "\u221e": r"$\infty$",
    "\u00b7": r"$\cdot$", "\u00d7": r"$\times$", "\u2212": "-", "\u2013": "--", "\u2014": "---",
    "\u2018": "`", "\u2019": "'", "\u201c": "``", "\u201d": "''", "\u00e9": r"\'e", "\u00e3": r"\~a",
    "\u00e7": r"\c{c}", "\u03c3": r"$\sigma$", "\u03bc": r"$\mu$", "\u03b5": r"$\varepsilon$",
    "\u03b2": r"$\beta$", "\u03b4": r"$\delta$", "\u2211": r"$\sum$", "\u2248": r"$\approx$",
}
_TEXT_SPECIALS = {
    "\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "_": r"\_", "%": r"\%", "&": r"\&",
    "#": r"\#", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "$": r"\$",
    # the default OT1 text font has no <, >, |: take them from math
    "<": r"\ensuremath{<}", ">": r"\ensuremath{>}", "|": r"\ensuremath{|}",
}


def latex_expr(expr: Any, **options: Any) -> str:
    """LaTeX for a SymPy object (strings pass through unchanged).

    Defaults ``mat_str='bmatrix', mat_delim=''`` (without ``mat_delim=''`` SymPy still wraps
    ``\\left[ \\right]``); any ``sympy.latex`` option (``order='none'``, ``symbol_names=...``) may
    be given.
    """
    if isinstance(expr, str):
        return expr
    opts = {**DEFAULT_OPTIONS, **options}
    return sp.latex(expr, **opts)


def escape(s: str, *, unknown: str = "raise") -> str:
    """Plain text (no math) for LaTeX text mode: specials escaped, known Unicode mapped.

    Another non-ASCII character raises ValueError (``unknown="raise"``), or becomes ``?``
    (``unknown="replace"``, for text that comes from documents).
    """
    out = []
    for ch in str(s):
        if ch in _TEXT_SPECIALS:
            out.append(_TEXT_SPECIALS[ch])
        elif ch in _UNICODE:
            out.append(_UNICODE[ch])
        elif ord(ch) > 127:
            if unknown != "replace":
                raise ValueError(f"non-ASCII character {ch!r} in LaTeX text {s!r}: add it to proofs.latex._UNICODE")
            out.append("?")
        else:
            out.append(ch)
    return "".join(out)


def text(s: str, *, unknown: str = "raise") -> str:
    """Escape ``s`` for LaTeX text mode; ``$...$`` segments are kept as math, untouched."""
    parts = s.split("$")
    if len(parts) % 2 == 0:
        raise ValueError(f"unbalanced $ in {s!r}")
    return "".join(escape(p, unknown=unknown) if k % 2 == 0 else f"${p}$" for k, p in enumerate(parts))


_ENVIRONMENT = re.compile(r"\\begin\{([^}]*)\}.*?\\end\{\1\}", re.DOTALL)


def _has_alignment_point(tex: str) -> bool:
    """Whether ``tex`` has its own ``&`` for align*, not counting those inside a matrix or other
    environment (``\\begin{pmatrix}1&-1\\end{pmatrix}``) or escaped (``\\&``)."""
    outer = tex
    while (stripped := _ENVIRONMENT.sub("", outer)) != outer:
        outer = stripped
    return re.search(r"(?<!\\)&", outer) is not None


def _row(step: Any, options: dict[str, Any], with_methods: bool, result: Any, reason_width: str | None,
         tag: str | None = None) -> str:
    opts = {**options, **step.latex_options}
    if step.latex is not None:
        math = step.latex if _has_alignment_point(step.latex) else "& " + step.latex
    else:
        lhs = "" if step.lhs is None else latex_expr(step.lhs, **opts)
        rhs = "" if step.rhs is None else latex_expr(step.rhs, **opts)
        rel = step.rel
        math = f"{lhs} &{rel} {rhs}" if rhs else f"{lhs} &"
    reason = text(step.reason)
    if with_methods and result is not None:
        reason += r" \quad [" + text(tag if tag is not None else step.check.tag(result.passed)) + "]"
    if reason_width:
        reason = f"\\parbox[t]{{{reason_width}}}{{\\raggedright\\footnotesize {reason}}}"
    return f"{math} && \\text{{{reason}}}"


def render(derivation: "Derivation", *, with_methods: bool = True, reason_width: str | None = r"0.3\linewidth",
           tags: Sequence[str] | None = None, **options: Any) -> str:
    r"""The derivation as one ``align*`` block, a row per step, reasons as ``\text{}``.

    ``with_methods`` appends every step's tag to its reason: the check method
    (``[symbolic]``, ``[explicit sizes n=2..6]``..., with ``FAILED`` for a failed check), or
    ``[definition]``, ``[assumption]``, ``[cited: THEOREM -- NOT CHECKED]``. ``reason_width`` sets the
    reasons in a ``\\parbox`` of that width (footnotesize, ragged right) so long reasons wrap
    instead of running off the page; ``None`` gives a plain ``\\text{...}``. ``tags``, one per
    step, replace the computed tags (``attnverify prove`` marks UNPROVED and ERROR steps so).
    Extra keyword arguments go to ``sympy.latex`` (over the derivation's own ``latex_options``).
    """
    results = derivation.check() if with_methods else [None] * len(derivation.steps)
    if tags is not None and len(tags) != len(derivation.steps):
        raise ValueError(f"tags: expected one per step ({len(derivation.steps)}), got {len(tags)}")
    tags = list(tags) if tags is not None else [None] * len(derivation.steps)
    opts = {**derivation.latex_options, **options}
    rows = [_row(step, opts, with_methods, res, reason_width, tag)
            for step, res, tag in zip(derivation.steps, results, tags)]
    body = " \\\\\n".join(rows)
    return "\\begin{align*}\n" + body + "\n\\end{align*}"


def render_section(derivation: "Derivation", *, level: str = "subsection", summary: str | None = None,
                   **options: Any) -> str:
    """A report snippet: heading, statement, assumptions, the ``align*`` block, status
    (``summary``, plain text, replaces :meth:`Derivation.summary`)."""
    lines = [f"\\{level}*{{{text(derivation.title)}}}", "", r"\textbf{Statement.} " + derivation.statement, ""]
    if derivation.assumptions:
        lines += [r"\textbf{Assumptions.}", r"\begin{itemize}"]
        lines += [r"\item " + text(a) for a in derivation.assumptions]
        lines += [r"\end{itemize}", ""]
    lines.append(render(derivation, **options))
    lines += ["", (escape(summary, unknown="replace") if summary is not None else text(derivation.summary())) + "."]
    return "\n".join(lines)


def render_document(derivations: list["Derivation"], title: str = "attnverify derivations", *,
                    tags: Sequence[Sequence[str] | None] | None = None,
                    summaries: Sequence[str | None] | None = None, preface: str = "") -> str:
    """A standalone article with one section per derivation; ``tags``: per derivation, the
    per-step tags :func:`render` takes (None keeps the computed ones); ``summaries``: per
    derivation, its status line (plain text; None keeps :meth:`Derivation.summary`);
    ``preface``: LaTeX put before the first section (an overall status)."""
    tags = list(tags) if tags is not None else [None] * len(derivations)
    summaries = list(summaries) if summaries is not None else [None] * len(derivations)
    body = "\n\n".join(render_section(d, tags=t, summary=m) for d, t, m in zip(derivations, tags, summaries))
    if preface:
        body = preface + "\n\n" + body
    return PREAMBLE + f"\\title{{{text(title)}}}\n\\author{{attnverify}}\n\\date{{}}\n\\begin{{document}}\n\\maketitle\n\n{body}\n\n\\end{{document}}\n"


def group_end(tex: str, start: int) -> int:
    r"""Index just past the ``}`` that closes a group whose content begins at ``start`` (just
    after its ``{``); escaped braces (``\{``) do not count; ``len(tex)`` if it never closes."""
    k, depth = start, 1
    while k < len(tex) and depth:
        if tex[k] == "\\":
            k += 2
            continue
        depth += {"{": 1, "}": -1}.get(tex[k], 0)
        k += 1
    return k


def _strip_text(tex: str) -> str:
    r"""``tex`` with every ``\text{...}`` group (nested braces allowed) removed."""
    out, i = [], 0
    while True:
        j = tex.find("\\text{", i)
        if j < 0:
            out.append(tex[i:])
            return "".join(out)
        out.append(tex[i:j])
        i = group_end(tex, j + len("\\text{"))


_ENV = re.compile(r"\\(begin|end)\{([^}]*)\}")


def check_latex(tex: str) -> None:
    r"""Raise ValueError unless ``tex`` is structurally sound LaTeX.

    Checks: pure ASCII; braces balanced (ignoring ``\{``, ``\}``); ``\left``/``\right``
    paired; ``\begin``/``\end`` properly nested; no blank line inside ``align*``; no
    ``$`` inside ``align*`` outside ``\text{}``; no leftover ``\left[`` from matrices.
    """
    try:
        tex.encode("ascii")
    except UnicodeEncodeError as exc:
        raise ValueError(f"non-ASCII character in LaTeX at {exc.start}: {tex[exc.start:exc.start + 20]!r}") from None
    depth = 0
    i = 0
    while i < len(tex):
        ch = tex[i]
        if ch == "\\":
            i += 2  # skip the escaped character (\{, \}, \\, \%...)
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced '}}' at {i}: {tex[max(0, i - 30):i + 10]!r}")
        i += 1
    if depth != 0:
        raise ValueError(f"{depth} unclosed '{{'")
    lefts = len(re.findall(r"\\left(?![a-zA-Z])", tex))
    rights = len(re.findall(r"\\right(?![a-zA-Z])", tex))
    if lefts != rights:
        raise ValueError(f"\\left / \\right mismatch: {lefts} vs {rights}")
    if re.search(r"\\left\[", tex) and "bmatrix" in tex:
        raise ValueError("matrix rendered with \\left[ ... \\right] next to bmatrix: use mat_delim=''")
    stack: list[tuple[str, int]] = []
    for m in _ENV.finditer(tex):
        kind, env = m.groups()
        if kind == "begin":
            stack.append((env, m.start()))
        else:
            if not stack or stack[-1][0] != env:
                raise ValueError(f"\\end{{{env}}} at {m.start()} does not close {stack[-1][0] if stack else 'anything'}")
            begin_env, start = stack.pop()
            if env == "align*":
                inner = tex[start:m.start()]
                if re.search(r"\n\s*\n", inner):
                    raise ValueError("blank line inside align*")
                if "$" in _strip_text(inner):
                    raise ValueError("$ inside align* outside \\text{}")
    if stack:
        raise ValueError(f"unclosed environment(s): {[e for e, _ in stack]}")
