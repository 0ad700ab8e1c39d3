r"""Evidence as a reader wants it: prose with mathematics, numbers as vectors and matrices,
records as tables, worked examples as the document's matrices with the wrong entries marked.

Everything here works on the generic shapes an :class:`proofs.claims.Evidence` may carry
(nested dicts, lists, numbers, strings, SymPy objects); nothing depends on a claim's id.

- :func:`prose` -- a sentence that mixes text and ``$...$`` math: text escaped (accented
  letters as LaTeX accents), long math split where a line may break.
- :func:`value` -- one data value as LaTeX: numbers and lists of numbers in math mode
  (vectors and matrices as ``bmatrix``), SymPy-like strings as formulas, dicts as key/value
  tables with wrapping columns, lists of records as tables with a header.
- :func:`worked_example` -- a data dict whose records carry ``printed`` and ``correct``
  values of named matrices: each matrix with the wrong entries in red, the right value beside.
- :func:`data_block` -- an evidence dict as LaTeX, the worked example first.

The LaTeX needs amsmath, xcolor (``dvipsnames``), longtable, array, graphicx and the
``\fitwidth`` macro of :data:`PREAMBLE_MACROS`.
"""

from __future__ import annotations

import ast
import json
import math
import numbers
import re
import unicodedata
from typing import Any, Iterable, Mapping

import sympy as sp

from .latex import escape, group_end

__all__ = ["PREAMBLE_MACROS", "plain", "prose", "one_line", "number", "inline", "value", "block", "worked_example",
           "audit_records", "data_block"]

#: ``\fitwidth{...}``: typeset its argument, shrunk to the line width if it is wider.
PREAMBLE_MACROS = r"""\newsavebox\avfitbox
\newcommand{\fitwidth}[1]{\sbox\avfitbox{#1}\ifdim\wd\avfitbox>\linewidth\resizebox{\linewidth}{!}{\usebox\avfitbox}\else\usebox\avfitbox\fi}
\setcounter{MaxMatrixCols}{20}
"""

_ACCENTS = {"\u0301": "\\'", "\u0300": "\\`", "\u0302": "\\^", "\u0303": "\\~", "\u0308": '\\"', "\u0327": "\\c"}
_MAX_VECTOR = 12  # longer lists of numbers are written inline, where they may break
_MAX_COLUMNS = 6  # records with more fields are listed one by one, not as table columns


def _char(ch: str) -> str:
    """One character for text mode; an accented Latin letter becomes a LaTeX accent."""
    if ord(ch) > 127:
        parts = unicodedata.normalize("NFD", ch)
        if len(parts) == 2 and parts[0].isascii() and parts[1] in _ACCENTS:
            base = {"i": r"\i"}.get(parts[0], parts[0])
            return f"{_ACCENTS[parts[1]]}{{{base}}}"
    out = escape(ch, unknown="replace")
    return out + r"\allowbreak{}" if ch in "_/" else out


_LONG_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]{13,}")


def _breakable(word: str) -> str:
    """A long word with a break allowed at its camel-case joints (MultiHead|Attention)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "\x00", word)


def plain(text: Any) -> str:
    """Plain text (no math) for text mode; a line may break after an underscore or a slash
    and inside a long camel-case word."""
    text = _LONG_WORD.sub(lambda m: _breakable(m.group(0)), str(text))
    return "".join(r"\allowbreak{}" if c == "\x00" else _char(c) for c in text)


# a symbol written in plain text: Q_1, W_i^Q, d_model, n^2, Head_1 (a letter or a capitalised word,
# with a subscript and/or a superscript), at the start of a word
_SYMBOL = re.compile(r"(?<![\w\\.])([A-Za-z]|[A-Z][a-z]{1,9})"
                     r"(?:_(\{[^{}\s]{1,12}\}|[A-Za-z0-9]{1,6}))?(?:\^(\{[^{}\s]{1,12}\}|[A-Za-z0-9]{1,3}))?(?![\w(^])")


def _symbol(m: re.Match) -> str:
    base, sub, sup = m.group(1), m.group(2), m.group(3)
    if sub is None and sup is None:
        return plain(m.group(0))
    out = base if len(base) == 1 else rf"\mathrm{{{base}}}"
    for mark, part in (("_", sub), ("^", sup)):
        if part is not None:
            part = part.strip("{}")
            if len(part) > 1 and part.isalpha():
                part = r"\mathrm{" + part + "}"
            out += mark + "{" + part + "}"
    return f"${out}$"


def symbols(text: Any) -> str:
    """Plain text in which symbols written as ``Q_1``, ``W_i^Q``, ``d_model``, ``n^2`` are set
    as mathematics; the rest as :func:`plain`."""
    text, out, i = str(text), [], 0
    for m in _SYMBOL.finditer(text):
        if m.group(2) is None and m.group(3) is None:
            continue
        out += [plain(text[i:m.start()]), _symbol(m)]
        i = m.end()
    out.append(plain(text[i:]))
    return "".join(out)


def _math_pieces(body: str) -> list[tuple[str, str]]:
    r"""Split inline math at its top level so a long formula can break across lines.

    Returns ``(kind, piece)`` pairs, kind ``"math"`` or ``"text"``: a top-level
    ``\text{...}`` becomes text; a top-level ``,\ `` ``;`` or ``\quad`` ends a math piece
    (the punctuation kept in text). Braces, ``\left``/``\right`` and environments nest.
    """
    pieces: list[tuple[str, str]] = []
    cur: list[str] = []
    depth = i = 0

    def flush(kind_text: str | None = None) -> None:
        if "".join(cur).strip():
            pieces.append(("math", "".join(cur)))
        cur.clear()
        if kind_text is not None:
            pieces.append(("text", kind_text))

    while i < len(body):
        if depth == 0:
            m = re.match(r"\\text(?:rm|bf|it)?\{", body[i:])
            if m:
                j = group_end(body, i + m.end())
                flush(body[i + m.end():j - 1])
                i = j
                continue
            m = re.match(r",\s*(\\[ ,;:]|\\q?quad\b)\s*|;\s*(\\[ ,;:]|\\q?quad\b)?\s*|\\q?quad\b\s*", body[i:])
            if m:
                flush(";" if body[i] == ";" else "," if body[i] == "," else "")
                pieces.append(("text", " "))
                i += m.end()
                continue
        ch = body[i]
        if ch == "\\":
            m = re.match(r"\\(left|right|begin|end)\b", body[i:])
            if m:
                depth += 1 if m.group(1) in ("left", "begin") else -1
            cur.append(body[i:i + 2])
            i += 2
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur.append(ch)
        i += 1
    flush()
    return pieces


def _closing(text: str, start: int) -> int | None:
    """Index just past the bracket that closes the one at ``start`` (quotes respected)."""
    depth, quote, i = 0, None, start
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


# a matrix written on one line, rows split by "; " (proofs.audit's texts): [0.6, 1.0; 0.8, 0.7]
_ROW_TEXT = r"-?\d+(?:\.\d+)?(?:,\s*-?\d+(?:\.\d+)?)*"
_MATRIX_TEXT = re.compile(r"\[" + _ROW_TEXT + r"(?:;\s*" + _ROW_TEXT + r")+\]")


def _matrix_text(span: str) -> str:
    rows = [[plain(x.strip()) for x in row.split(",")] for row in span[1:-1].split(";")]
    return _drawn(rows, small=True) if len({len(r) for r in rows}) == 1 else plain(span)


def _text_with_literals(text: str) -> str:
    """Plain text in which a Python literal (a dict, or a list holding strings, dicts or
    lists, as ``repr`` prints them) is written out readably with :func:`inline`, and a matrix
    written on one line (``[0.6, 1.0; 0.8, 0.7]``) is set as a small matrix."""
    out, i = [], 0
    for m in re.finditer(r"[\[{]", text):
        if m.start() < i:
            continue
        table = _MATRIX_TEXT.match(text, m.start())
        if table:
            out += [symbols(text[i:m.start()]), "$" + _matrix_text(table.group(0)) + "$"]
            i = table.end()
            continue
        end = _closing(text, m.start())
        span = text[m.start():end] if end else ""
        if not span or not re.search(r"['\"{]|\[\s*\[", span):
            continue
        try:
            literal = ast.literal_eval(span)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        out += [symbols(text[i:m.start()]), inline(literal)]
        i = end
    out.append(symbols(text[i:]))
    return "".join(out)


def prose(text: Any) -> str:
    r"""Text with ``$...$`` math: text escaped, math kept and split where it may break.

    Unbalanced ``$`` makes all of it text. Text inside a split-off ``\text{}`` is kept as
    the LaTeX it already is.
    """
    text = str(text)
    parts = text.split("$")
    if len(parts) % 2 == 0:
        return _text_with_literals(text)
    out = []
    for k, part in enumerate(parts):
        if k % 2 == 0:
            out.append(_text_with_literals(part))
            continue
        for kind, piece in _math_pieces(part):
            out.append(f"${piece}$" if kind == "math" else piece)
    return "".join(out)


def one_line(text: str, limit: int = 170) -> str:
    """The first clause of ``text`` (to the first ``; `` or ``. `` outside math after a
    few words), cut at a word near ``limit`` characters with "..." if still longer."""
    text = " ".join(str(text).split())
    in_math, cut, last_space = False, None, None
    for i, ch in enumerate(text):
        if ch == "$":
            in_math = not in_math
        elif not in_math:
            if ch in ";." and i >= 40 and text[i + 1:i + 2] == " " and not text[i - 1].isdigit():
                cut = i
                break
            if ch == " " and i <= limit:
                last_space = i
        if i > limit and not in_math:
            break
    if cut is not None and cut <= limit:
        return text[:cut]
    if len(text) <= limit:
        return text
    return text[:last_space].rstrip(",;:") + " ..." if last_space else text


def number(x: Any) -> str:
    """A number as math-mode LaTeX (no ``$``): thousands thinly spaced, floats to 6
    significant digits, powers of ten written out."""
    if isinstance(x, bool):
        return r"\text{yes}" if x else r"\text{no}"
    if isinstance(x, sp.Basic):
        return sp.latex(x)
    if isinstance(x, numbers.Integral):
        s = f"{int(x):,}"
        return s.replace(",", r"\,") if abs(int(x)) >= 10_000 else s.replace(",", "")
    x = float(x)
    if math.isnan(x):
        return r"\mathrm{NaN}"
    if math.isinf(x):
        return r"\infty" if x > 0 else r"-\infty"
    s = f"{x:.6g}"
    if float(s) != x and float(s) == round(float(s)):  # 0.999999875 is not 1: show the digits that differ
        s = f"{x:.12g}"
    if "e" in s:
        mant, exp = s.split("e")
        return rf"{mant} \times 10^{{{int(exp)}}}"
    return s


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Number) or (isinstance(x, sp.Basic) and x.is_number)


def _is_matrix(x: Any) -> bool:
    return (isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(r, (list, tuple)) for r in x)
            and len({len(r) for r in x}) == 1 and len(x[0]) > 0 and all(_is_number(v) for r in x for v in r))


def _bmatrix(rows: list[list[str]]) -> str:
    return r"\begin{bmatrix}" + r" \\ ".join(" & ".join(r) for r in rows) + r"\end{bmatrix}"


_FORMULA = re.compile(r"^[\w\s*+\-/().^]+$")
_FUNCTIONS = {"sqrt", "exp", "log", "Max", "Min", "oo", "pi", "floor", "ceiling", "Abs"}


def _formula(s: str) -> str | None:
    """LaTeX of a string that reads as a SymPy expression (``'4*d**2*n - h*n'``), else None.

    Only strings with ``*`` or ``**`` and no word longer than three letters (other than a
    function name or a name with an underscore) are read, so prose is never parsed.
    """
    if s.strip() in ("oo", "-oo"):  # SymPy's infinity, as str() prints it
        return r"\infty" if s.strip() == "oo" else r"-\infty"
    if "*" not in s or not _FORMULA.match(s):
        return None
    for name in re.findall(r"[A-Za-z_][A-Za-z_0-9]*", s):
        if len(name) > 3 and name not in _FUNCTIONS and "_" not in name:
            return None
    try:
        expr = sp.parse_expr(s, evaluate=False)
        return sp.latex(expr, order="none")
    except Exception:  # noqa: BLE001 -- any parse failure means "not a formula": keep the text
        return None


def _key(key: Any) -> str:
    """A dict key as a label: snake_case words spaced, the rest kept (it may name a symbol)."""
    key = str(key)
    if re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)+", key):
        key = key.replace("_", " ")
    return prose(key) if "$" in key else symbols(key)


def _interval_key(key: Any) -> bool:
    return bool(re.search(r"(interval|range|ci|bounds?)$", str(key), re.I))


def _simple(x: Any) -> bool:
    """A scalar, a string, a short numeric vector or matrix, or a few short strings."""
    if x is None or isinstance(x, str) or _is_number(x):
        return True
    if isinstance(x, (list, tuple)):
        return (not x or all(_is_number(v) for v in x) or _is_matrix(x)
                or (all(isinstance(v, str) for v in x) and sum(len(v) for v in x) <= 160))
    return False


def _flat(x: Any) -> bool:
    return isinstance(x, Mapping) and all(_simple(v) for v in x.values())


def _records_like(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(v, Mapping) for v in x)


def _numbers(xs: list, key: Any) -> str:
    """A list of numbers: an interval, a row vector, or (long) a parenthesised list that may break."""
    entries = [number(v) for v in xs]
    if len(xs) == 2 and _interval_key(key):
        return rf"$[{entries[0]},\ {entries[1]}]$"
    if len(xs) <= _MAX_VECTOR:
        return r"\fitwidth{$" + _bmatrix([entries]) + "$}"
    return "$(" + r",\allowbreak\ ".join(entries) + ")$"


def _scalar(x: Any, key: Any = None) -> str | None:
    """LaTeX of a scalar, a string, or a numeric vector or matrix; None for anything else."""
    if x is None:
        return "--"
    if isinstance(x, str):
        formula = _formula(x)
        return rf"$\displaystyle {formula}$" if formula is not None else prose(x)
    if _is_number(x):
        return f"${number(x)}$"
    if hasattr(x, "tolist"):
        return _scalar(x.tolist(), key)
    if isinstance(x, (list, tuple)):
        xs = list(x)
        if not xs:
            return "none"
        if all(_is_number(v) for v in xs):
            return _numbers(xs, key)
        if _is_matrix(xs) and len(xs[0]) <= 20:
            return r"\fitwidth{$" + _bmatrix([[number(v) for v in r] for r in xs]) + "$}"
        if all(isinstance(v, str) for v in xs) and sum(len(v) for v in xs) <= 160:
            return ", ".join(_scalar(v) for v in xs)
    return None


def inline(x: Any, key: Any = None) -> str:
    """Any value as running text that wraps: dicts as ``key: value; ...``, lists numbered."""
    if hasattr(x, "to_dict") and not isinstance(x, Mapping):
        x = x.to_dict()
    if isinstance(x, Mapping):
        return "; ".join(rf"\textit{{{_key(k)}}}: {inline(v, k)}" for k, v in x.items()) if x else "--"
    if isinstance(x, (list, tuple)) and not _simple(x):
        return " ".join(rf"({n}) {inline(v)}" for n, v in enumerate(x, 1))
    out = _scalar(x, key)
    if out is not None and not out.startswith(r"\fitwidth"):
        return out
    if isinstance(x, (list, tuple)) and _is_matrix(list(x)):
        rows = [[number(v) for v in r] for r in x]
        return r"$\left[\begin{smallmatrix}" + r" \\ ".join(" & ".join(r) for r in rows) + r"\end{smallmatrix}\right]$"
    if isinstance(x, (list, tuple)):
        return "$(" + r",\allowbreak\ ".join(number(v) for v in x) + ")$"
    return prose(str(x))


def value(x: Any, *, key: Any = None) -> str:
    """One value for a table cell: scalars and arrays as mathematics, a flat dict as a small
    key/value table, a few flat records as a small table, anything deeper as running text
    (described, not printed, when too long for a cell)."""
    out = _scalar(x, key)
    if out is not None:
        return out
    if _size(x) > _MAX_CELL:
        return _described(x)
    if isinstance(x, Mapping) and x and _flat(x):
        return _table(x.items(), top=False)
    if _records_like(x) and all(_flat(r) for r in x) and len({k for r in x for k in r}) <= 4:
        return _records(list(x), top=False)
    return inline(x, key)


def _cell_inline(x: Any, key: Any) -> str:
    return _described(x) if _size(x) > _MAX_CELL else inline(x, key)


def block(x: Any, *, key: Any = None) -> str:
    """A value at full width: a dict as a key/value table, records as a table with a header
    (or one small table each when they are deep), anything else as a cell value."""
    if isinstance(x, Mapping) and x:
        return _table(x.items(), top=True)
    if _records_like(x):
        return _records(list(x), top=True)
    return value(x, key=key)


def _itemize(items: Iterable[str]) -> str:
    body = "\n".join(r"\item " + i for i in items)
    return r"\begin{itemize}\setlength{\itemsep}{0pt}" + "\n" + body + "\n" + r"\end{itemize}"


def _records(rows: list[Mapping], *, top: bool) -> str:
    """A list of dicts: one table with a header when they share a few simple fields, else
    (full width only) one key/value table per record."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    if len(keys) <= _MAX_COLUMNS and all(_flat(r) for r in rows):
        widths = [max(len(str(k)), *(min(len(json.dumps(r.get(k), default=str)), 40) for r in rows)) + 4
                  for k in keys]
        spec = _columns([w / sum(widths) for w in widths])
        head = " & ".join(r"\textbf{" + _key(k) + "}" for k in keys) + r" \\ \hline"
        if top:
            head += r" \endhead"
        body = [" & ".join(value(r.get(k), key=k) for k in keys) + r" \\" for r in rows]
        return _tabular(spec, [head] + body, long=top)
    if top:
        return "\n".join(rf"\textit{{({n})}}" + "\n" + _table(r.items(), top=True) for n, r in enumerate(rows, 1))
    return inline(rows)


def _columns(fractions: list[float]) -> str:
    """Ragged-right ``p`` columns whose widths, with their separation, add up to the line."""
    n = len(fractions)
    cols = [rf">{{\raggedright\arraybackslash}}p{{\dimexpr{f:.3f}\linewidth-{2 * (n - 1) / n:.3f}\tabcolsep\relax}}"
            for f in fractions]
    return "@{}" + "".join(cols) + "@{}"


def _tabular(spec: str, rows: list[str], *, long: bool) -> str:
    if long:
        return "\\begin{longtable}{" + spec + "}\n" + "\n".join(rows) + "\n\\end{longtable}"
    return "\\begin{tabular}[t]{" + spec + "}\n" + "\n".join(rows) + "\n\\end{tabular}"


def _table(items: Iterable[tuple[Any, Any]], *, top: bool) -> str:
    """Key/value pairs as a two-column table with wrapping columns (a longtable at full
    width, a tabular inside a cell)."""
    rows = [rf"{_key(k)} & {value(v, key=k) if top else (_scalar(v, k) or _cell_inline(v, k))} \\" for k, v in items]
    if not rows:
        return "--"
    return _tabular(_columns([0.28, 0.72] if top else [0.4, 0.6]), rows, long=top)


# --- worked examples: the document's matrices, the wrong entries marked ---------------------------------


def _records_with_printed(data: Mapping) -> tuple[str, list[Mapping]] | None:
    """The key of a list of records that name a quantity, an entry, a printed and a correct value."""
    for k, v in data.items():
        if (isinstance(v, list) and v and all(isinstance(r, Mapping) for r in v)
                and all({"quantity", "printed", "correct"} <= set(r) for r in v)):
            return k, v
    return None


def _matrices(data: Mapping) -> tuple[str, Mapping] | None:
    """The key of a dict of named numbers, vectors or matrices (the recomputed values)."""
    for k, v in data.items():
        if (isinstance(v, Mapping) and v and all(_is_number(m) or _is_matrix(m) or (
                isinstance(m, list) and m and all(map(_is_number, m))) for m in v.values())
                and any(not _is_number(m) for m in v.values())):
            return k, v
    return None


_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "mu", "sigma", "tau", "phi", "omega"}
_NAME = re.compile(r"([A-Za-z]+)(?:_\{?([A-Za-z0-9]+)\}?)?('*)(?:\(([\w\s,^{}]*)\))?")


def _name(q: str) -> str:
    """A quantity's name in math: ``Q_1``, ``alpha_21`` (as alpha), ``score(x_1, x_2)``,
    ``MultiHeadAttention(X)`` (a word upright); anything else as text."""
    m = _NAME.fullmatch(q.strip())
    if not m:
        return r"\text{" + plain(q) + "}"
    base, sub, primes, args = m.groups()
    out = base if len(base) == 1 else (rf"\{base}" if base in _GREEK else rf"\mathrm{{{base}}}")
    if sub:
        out += f"_{{{sub}}}"
    out += primes
    if args is not None:
        out += f"({args})"
    return out


def _decimals(s: str) -> int:
    s = str(s).strip()
    return len(s.split(".")[1]) if "." in s else 0


def _entry_index(entry: Any, shape: tuple[int, int]) -> tuple[int, int] | None:
    if isinstance(entry, (list, tuple)) and len(entry) == 2:
        i, j = entry
    elif isinstance(entry, (list, tuple)) and len(entry) == 1:
        i, j = (0, entry[0]) if shape[0] == 1 else (entry[0], 0)
    elif isinstance(entry, numbers.Integral):
        i, j = (0, entry) if shape[0] == 1 else (entry, 0)
    else:
        return None
    return (i, j) if 0 <= i < shape[0] and 0 <= j < shape[1] else None


def _marked(printed: Any, correct: Any) -> str:
    return (rf"\textcolor{{red}}{{{plain(printed)}}}"
            rf"\,\textcolor{{ForestGreen}}{{\scriptstyle {plain(correct)}}}")


def _marked_matrix(name: str, rows: list[list[Any]] | Any, wrong: list[Mapping]) -> str:
    """``name = [...]``: right entries at the document's precision, wrong ones as a red
    printed value with the right value beside it; a number when ``rows`` is one."""
    decimals = max((_decimals(r["printed"]) for r in wrong), default=2)
    if _is_number(rows):
        shown = _marked(wrong[0]["printed"], wrong[0]["correct"]) if wrong else f"{float(rows):.{decimals}f}"
        return "$" + _name(name) + " = " + shown + "$"
    shape = (len(rows), len(rows[0]))
    cells = [[f"{float(v):.{decimals}f}" for v in r] for r in rows]
    for r in wrong:
        at = _entry_index(r.get("entry"), shape)
        if at is not None:
            cells[at[0]][at[1]] = _marked(r["printed"], r["correct"])
    return r"\fitwidth{$" + _name(name) + " = " + _bmatrix(cells) + "$}"


def _where(entry: Any) -> str:
    """An entry index (0-based, as stored) as a reader counts it."""
    if isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(e, numbers.Integral) for e in entry):
        return f"row {entry[0] + 1}, column {entry[1] + 1}"
    if isinstance(entry, numbers.Integral):
        return f"entry {entry + 1}"
    return "" if entry is None else str(entry)


def worked_example(data: Mapping) -> tuple[str, set[str]]:
    """The worked-example part of an evidence dict, and the keys it used.

    Applies when ``data`` holds a list of records with ``quantity``, ``printed`` and
    ``correct`` (and an ``entry`` index) and a dict of the recomputed matrices. Each
    quantity with a wrong entry is shown as the document's matrix with the wrong entries in
    red and the right value beside them (green); records whose quantity has no matrix go to a
    table. Returns ``("", set())`` when ``data`` is not of that shape.
    """
    found, mats = _records_with_printed(data), _matrices(data)
    if found is None:
        return "", set()
    key, records = found
    matrices = {}
    if mats is not None:
        matrices = {q: (m if _is_matrix(m) or _is_number(m) else [m]) for q, m in mats[1].items()}
    by_quantity: dict[str, list[Mapping]] = {}
    for r in records:
        by_quantity.setdefault(str(r["quantity"]), []).append(r)
    shown, rest = [], []
    for q, rs in by_quantity.items():
        if q in matrices:
            shown.append(_marked_matrix(q, matrices[q], rs))
        else:
            rest += rs
    lines = []
    if shown:
        lines += [r"The document's values, wrong entries in \textcolor{red}{red} with the recomputed value beside"
                  r" them in \textcolor{ForestGreen}{green}:", r"\begin{center}", "\n\\quad\n".join(shown),
                  r"\end{center}"]
    if rest:
        cols = [c for c in ("quantity", "where", "entry", "printed", "correct") if any(c in r for r in rest)]
        lines.append(_records([{c: (_where(r.get(c)) if c == "entry" else r.get(c)) for c in cols} for r in rest],
                              top=True))
    used = {key} | ({mats[0]} if mats is not None and shown else set())
    return "\n".join(lines), used


# --- audit records: one numeric statement of a document each (proofs.audit's findings) -------------

_AUDIT_FIELDS = {"line", "label", "outcome"}
_SAFE_COMMANDS = {
    "cdot", "times", "frac", "dfrac", "tfrac", "sqrt", "top", "mathrm", "text", "operatorname", "mathbf", "mathit",
    "left", "right", "sum", "exp", "log", "max", "min", "big", "Big", "bigl", "bigr", "Bigl", "Bigr", "ldots",
    "cdots", "prime", "approx", "quad", "T", *_GREEK}
_SAFE_MATH = re.compile(r"[A-Za-z0-9\s+\-*/^_{}()\[\].,'|=<>!:;\\]*")


def _safe_math(src: str) -> bool:
    r"""Whether ``src`` (a piece of the document's LaTeX) compiles as inline math: ASCII, balanced
    braces and ``\left``/``\right``, no environment, no truncation, only common commands."""
    src = src.strip()
    if not src or "..." in src or not _SAFE_MATH.fullmatch(src) or r"\\" in src:
        return False
    if any(c not in _SAFE_COMMANDS for c in re.findall(r"\\([A-Za-z]+)", src)):
        return False
    if re.search(r"\\[^A-Za-z,;: ]", src) or src.count(r"\left") != src.count(r"\right"):
        return False
    depth = 0
    for ch in src:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def _math_source(src: str) -> str | None:
    """The document's LaTeX ready for inline math (words of three letters or more upright, Greek
    names as letters), or None where it would not compile or reads as prose (``0.53, term 1 of
    the sum``)."""
    src = str(src).strip()
    if not _safe_math(src) or re.search(r"(?<![\\{])\b[A-Za-z]{2,}\s+[A-Za-z]{2,}\b", src):
        return None
    src = re.sub(r"(?<![\\{A-Za-z])([A-Za-z]{3,})", lambda m: "\\" + m.group(1) if m.group(1) in _GREEK
                 else rf"{{\mathrm{{{m.group(1)}}}}}", src)
    return src.replace("*", r"\cdot ")


def _without_commands(src: str) -> str:
    """The document's LaTeX as plain words: commands and braces dropped."""
    return " ".join(re.sub(r"\\[A-Za-z]+|[{}\\]", " ", src).split())


def _top_sides(statement: str) -> list[str]:
    """``a = b = c`` split at the ``=`` outside braces and environments."""
    sides, cur, depth, i = [], [], 0, 0
    while i < len(statement):
        m = re.match(r"\\(begin|end|left|right)\b", statement[i:])
        if m:
            depth += 1 if m.group(1) in ("begin", "left") else -1
            cur.append(m.group(0))
            i += m.end()
            continue
        ch = statement[i]
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "=" and depth == 0:
            sides.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    sides.append("".join(cur))
    return sides


def _derivation(statement: str) -> list[str]:
    """The sides of the document's statement between its name and its printed value that compile
    as math (a side cut short, holding a matrix, or with unknown commands is left out)."""
    sides = _top_sides(str(statement))
    middle = sides[1:-1]
    shown = [_math_source(s) for s in middle if not re.fullmatch(r"\s*-?[\d.]+\s*", s)]
    return [s for s in shown if s is not None]


def _record_name(r: Mapping) -> str:
    """The quantity a record is about, as math (its name, else its label as the document wrote it)."""
    name = r.get("name")
    if name and _NAME.fullmatch(str(name).strip()):
        return "$" + _name(str(name)) + "$"
    label = str(r.get("label", ""))
    if _NAME.fullmatch(label.strip()):
        return "$" + _name(label) + "$"
    if _math_source(label) is not None:
        return "$" + _math_source(label) + "$"
    return symbols(_without_commands(label))


def _cells(r: Mapping, marked: bool) -> list[list[str]] | None:
    """The record's printed entries in its shape, wrong ones red with the right value beside."""
    entries = [e for e in r.get("entries") or [] if isinstance(e, Mapping) and "printed" in e]
    if not entries:
        return None
    rows, cols = r.get("shape") or (1, len(entries))
    if rows * cols != len(entries):
        rows, cols = 1, len(entries)
    texts = [_marked(e["printed"], e["correct"]) if marked and not e.get("ok", True) else plain(e["printed"])
             for e in entries]
    return [texts[k * cols:(k + 1) * cols] for k in range(rows)]


def _drawn(cells: list[list[str]], *, small: bool = False) -> str:
    if len(cells) == 1 and len(cells[0]) == 1:
        return cells[0][0]
    if small:
        return r"\left[\begin{smallmatrix}" + r" \\ ".join(" & ".join(r) for r in cells) + r"\end{smallmatrix}\right]"
    return _bmatrix(cells)


def _names(xs: Iterable[Any]) -> str:
    return ", ".join(_record_name({"name": x, "label": x}) for x in xs)


def _origin(r: Mapping) -> str:
    """Where the error comes from, in words."""
    inputs = [str(x) for x in r.get("wrong_inputs") or []]
    if r.get("origin") == "carried":
        return "carried from the wrong " + (_names(inputs) if inputs else "inputs") + " (right from the printed inputs)"
    if inputs:
        return "a new error in this step (its inputs " + _names(inputs) + " are wrong too)"
    return "a new error in this step"


def _wrong_record(r: Mapping) -> str:
    entries = [e for e in r.get("entries") or [] if isinstance(e, Mapping)]
    bad = sum(not e.get("ok", True) for e in entries)
    # kept on one page: the name and line above, the drawn value, the words below
    head = r"\par\noindent\begin{minipage}{\linewidth}" + _record_name(r) + rf", line {r['line']}" + r"\par" + "\n"
    cells = _cells(r, marked=True)
    if cells is None:  # no entries to draw: the printed and the right value in words
        line = ("printed " + prose(r.get("printed", "")) + ", recomputed " + prose(r.get("correct", ""))
                + (": " + prose(r["reason"]) if r.get("reason") else ""))
        return head + r"{\small " + line + r".}\par\end{minipage}\par\smallskip"
    lhs = _record_name(r).strip("$") if _record_name(r).startswith("$") else None
    chain = ([lhs] if lhs else []) + _derivation(r.get("statement", ""))
    body = " = ".join(chain + [_drawn(cells)])
    count = (f"all {len(entries)} entries wrong" if bad == len(entries) > 1 else
             f"{bad} of {len(entries)} entries wrong" if len(entries) > 1 else "wrong")
    words = count + ", " + _origin(r)
    if r.get("max_deviation") is not None:
        deviation = float(f"{float(r['max_deviation']):.3g}")
        words += f"; largest deviation ${number(deviation)}$"
    notes = [str(n) for n in r.get("notes") or []]
    if notes:
        words += "; " + "; ".join(symbols(_without_commands(n)) for n in notes)
    return (head + r"{\centering\fitwidth{$" + body + r"$}\par}" + "\n"
            + r"{\small " + words[0].upper() + words[1:] + r".}\par\end{minipage}\par\smallskip")


def _holding(rs: list[Mapping]) -> str:
    """Records that hold, compactly: name = printed value (line), one run of text."""
    items = []
    for r in rs:
        cells = _cells(r, marked=False)
        name = _record_name(r)
        shown = (name[:-1] + " = " + _drawn(cells, small=True) + "$") if cells and name.startswith("$") else name
        items.append(shown + rf" (line {r['line']})")
    return r"Agree at the printed precision: " + "; ".join(items) + "."


def audit_records(records: list[Mapping]) -> str:
    r"""Audit records (``line``, ``label``, ``outcome`` and the printed ``entries`` in their
    ``shape``) as a reader wants them: each WRONG one drawn as the document's matrix, vector or
    number with the wrong entries in red and the right value beside them in green, its name and
    line above and where the error comes from below; HOLDS ones in one compact run of text;
    UNCHECKED ones listed with the reason. The document's LaTeX is set as math only where it
    compiles, otherwise left out (the drawn value says what it printed)."""
    wrong = [r for r in records if r.get("outcome") == "WRONG"]
    holding = [r for r in records if r.get("outcome") == "HOLDS"]
    rest = [r for r in records if r.get("outcome") not in ("WRONG", "HOLDS")]
    parts = [_wrong_record(r) for r in wrong]
    if holding:
        parts.append(_holding(holding))
    if rest:
        parts.append(_itemize(_record_name(r) + rf", line {r['line']}: {str(r.get('outcome', '')).lower()}"
                              + (" -- " + symbols(_without_commands(r["reason"])) if r.get("reason") else "")
                              for r in rest))
    return "\n".join(parts)


def _audit_like(x: Any) -> bool:
    return _records_like(x) and all(_AUDIT_FIELDS <= set(r) for r in x)


def _empty(v: Any) -> bool:
    return v is None or (isinstance(v, (str, list, tuple, dict)) and len(v) == 0)


# characters of JSON: a structured entry larger than this is described, not printed (a table
# cell cannot break across pages, so its limit is lower)
_MAX_BLOCK = 12_000
_MAX_CELL = 2_500


def _size(x: Any) -> int:
    return len(json.dumps(x, default=str))


def _described(x: Any) -> str:
    """What a structure too large to print holds, and where to read it whole."""
    if isinstance(x, Mapping):
        keys = list(x)
        what = f"{len(keys)} entries ({', '.join(map(str, keys[:8]))}{', ...' if len(keys) > 8 else ''})"
    else:
        keys = list(dict.fromkeys(k for r in x for k in r)) if _records_like(x) else []
        what = f"{len(x)} records" + (f" with fields {', '.join(map(str, keys[:8]))}{', ...' if len(keys) > 8 else ''}"
                                      if keys else "")
    return plain(what) + r" -- too long to print here; \texttt{attnverify check -{}-json FILE} writes it whole."


def data_block(data: Mapping, *, shown_elsewhere: Iterable[str] = ()) -> str:
    """An evidence dict as LaTeX: a worked example first, then the simple entries as one
    key/value table, then each structured entry under its own heading; keys in
    ``shown_elsewhere`` and empty entries are left out."""
    worked, used = worked_example(data)
    skip = set(used) | set(shown_elsewhere)
    items = [(k, v) for k, v in data.items() if k not in skip and not _empty(v)]
    audits = [(k, v) for k, v in items if _audit_like(v)]
    items = [(k, v) for k, v in items if not _audit_like(v)]
    structured = [_records_like(v) or (isinstance(v, Mapping) and not _flat(v)) for _, v in items]
    small = [kv for kv, big in zip(items, structured) if not big]
    large = [kv for kv, big in zip(items, structured) if big]
    parts = [worked] if worked else []
    if small:
        parts.append(_table(small, top=True))
    for k, v in large:
        big = _size(v) > _MAX_BLOCK
        parts += [r"\textit{" + _key(k) + ":} " + (_described(v) if big else ""), "" if big else block(v, key=k)]
    for k, v in audits:
        parts += [r"\par\medskip\noindent\textit{" + _key(k) + r":}\par\smallskip", audit_records(v)]
    return "\n".join(parts)
