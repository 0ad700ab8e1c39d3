"""Read the seed documents: raw lines, mojibake repair, LaTeX matrices and code blocks.

The five seeds are UTF-8 files whose Portuguese text was once decoded with the wrong
codec and re-encoded: ``ç`` appears as ``√ß`` (Mac-Roman), ``Ã§`` (Latin-1/cp1252) and, on
a few lines of seed 004, as combining marks whose original bytes are lost. Nothing here
depends on repairing that: labels are matched on the ASCII skeleton (see
:func:`proofs.catalogue.labels_in_document`), numbers and code are ASCII. :func:`repair`
is best effort, for showing the document's own words.

The checks read the copies bundled in ``proofs/catalogue/seeds/`` (found there by
:mod:`proofs.catalogue._documents`) so the catalogue runs wherever the package is installed;
``tests/proofs/test_catalogue.py`` checks that the copies are byte-identical to
``../shared/seeds`` when that folder exists.
"""

from __future__ import annotations

import contextlib
import io
import re
import unicodedata
from functools import lru_cache
from pathlib import Path

from ._documents import DOCUMENTS, SEEDS_DIR, known_document

_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")


def document_path(doc: str | Path) -> Path:
    """Path of a document given its key ("003"), its file name, or any path to a file.

    Keys and names are those of the bundled seeds and of every catalogue folder read so far
    (:func:`proofs.catalogue._documents.documents`).
    """
    doc = str(doc)
    known = known_document(doc)
    if known is not None:
        return known.path
    path = Path(doc)
    if path.is_file():
        return path
    if (SEEDS_DIR / path.name).is_file():
        return SEEDS_DIR / path.name
    raise FileNotFoundError(f"no catalogue document {doc!r}: expected one of {sorted(DOCUMENTS)} or a file path")


@lru_cache(maxsize=None)
def _lines(path: str) -> tuple[str, ...]:
    return tuple(Path(path).read_text(encoding="utf-8").splitlines())


def raw_lines(doc: str | Path) -> tuple[str, ...]:
    """The document's lines, undecoded mojibake and all (index 0 is line 1)."""
    return _lines(str(document_path(doc)))


def raw_line(doc: str | Path, line: int) -> str:
    lines = raw_lines(doc)
    if not 1 <= line <= len(lines):
        raise IndexError(f"{document_path(doc).name} has {len(lines)} lines, asked for line {line}")
    return lines[line - 1]


def _plausible(text: str) -> bool:
    """No combining marks or control characters: what a correct decoding of Portuguese gives."""
    return not any(unicodedata.category(c) in ("Mn", "Cc", "Co", "Cn") for c in text)


def _repair_run(run: str) -> str:
    for codec in ("cp1252", "latin-1", "mac_roman"):
        try:
            fixed = run.encode(codec).decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            continue
        if _plausible(fixed):
            return fixed
    if run == "Ã":  # "í" = C3 AD: the soft hyphen AD was dropped on some lines of seed 004
        return "í"
    return run


def repair(text: str) -> str:
    """Undo the double encoding run by run of non-ASCII characters (best effort).

    A run is re-encoded with cp1252, Latin-1 or Mac-Roman and decoded as UTF-8; the first
    that succeeds without combining marks or control characters wins. Text that is already correct UTF-8 fails all three and is kept.
    """
    return _NON_ASCII_RUN.sub(lambda m: _repair_run(m.group(0)), text)


def text_line(doc: str | Path, line: int) -> str:
    """Line ``line`` (1-based), repaired for display."""
    return repair(raw_line(doc, line))


_BMATRIX = re.compile(r"\\begin\{bmatrix\}(.*?)\\end\{bmatrix\}", re.S)


def bmatrices(doc: str | Path, line: int) -> list[list[list[str]]]:
    r"""Every ``\begin{bmatrix}...\end{bmatrix}`` on a line, as rows of entry strings.

    Entries are kept as the document prints them (e.g. ``"0.47"``), so a check knows how
    many decimals the document claims.
    """
    out = []
    for body in _BMATRIX.findall(raw_line(doc, line)):
        rows = [r.strip() for r in body.split(r"\\") if r.strip()]
        out.append([[e.strip() for e in r.split("&")] for r in rows])
    if not out:
        raise ValueError(f"no bmatrix on line {line} of {document_path(doc).name}")
    return out


def code_block_after(doc: str | Path, line: int) -> tuple[int, str]:
    """The first fenced code block starting at or after ``line``: (line of its fence, code).

    Blockquote markers (``> ``) are stripped, so code quoted inside a callout runs as is.
    """
    lines = raw_lines(doc)
    start, body = None, []
    for number in range(line, len(lines) + 1):
        content = re.sub(r"^\s*>\s?", "", lines[number - 1])
        if content.strip().startswith("```"):
            if start is None:
                start = number
                continue
            return start, "\n".join(body)
        if start is not None:
            body.append(content)
    raise ValueError(f"no complete code block after line {line} of {document_path(doc).name}")


def run_document_code(code: str, name: str, inputs: dict | None = None) -> dict:
    """Execute a document's code block with its printing captured; return its namespace.

    ``inputs`` are names defined before the code runs (values the caller puts in place of
    lines it removed). NumPy's legacy global RNG (which the documents seed) is saved and
    restored, so running a document never changes the state other code sees. Exceptions
    propagate.
    """
    import numpy as np

    state = np.random.get_state()
    namespace: dict = {**(inputs or {}), "__name__": f"attnverify_document_{name}"}
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            exec(compile(code, f"<{name}>", "exec"), namespace)  # noqa: S102 - the document under audit
    finally:
        np.random.set_state(state)
    namespace["__printed__"] = printed.getvalue()
    return namespace


def run_document_code_until_error(code: str, name: str) -> tuple[dict, tuple[int, str, BaseException] | None]:
    """Execute a document's code block statement by statement, as printed, stopping at the first
    statement that raises.

    Returns ``(namespace, None)`` when the whole block runs, else ``(namespace so far, (line, source,
    exception))``: ``line`` counts from 1 at the block's first line, ``source`` is the failing
    statement as printed. The RNG and printing are handled as in :func:`run_document_code`.
    """
    import ast

    import numpy as np

    tree = ast.parse(code, f"<{name}>")
    state = np.random.get_state()
    namespace: dict = {"__name__": f"attnverify_document_{name}"}
    failure = None
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            for statement in tree.body:
                try:
                    exec(compile(ast.Module([statement], []), f"<{name}>", "exec"), namespace)  # noqa: S102
                except Exception as exc:  # the finding: where the document's code stops, and why
                    failure = (statement.lineno, ast.get_source_segment(code, statement) or "", exc)
                    break
    finally:
        np.random.set_state(state)
    namespace["__printed__"] = printed.getvalue()
    return namespace, failure


_AFTER_EQUALS = re.compile(r"=\s*(-?\d+(?:\.\d+)?)\s*(?=\$|,|$)")


def printed_numbers(doc: str | Path, line: int) -> list[str]:
    """The numbers a line prints as results: each decimal that directly follows ``=``
    and ends a formula (``= 1.22 $``, ``= 0.47$,``), as printed."""
    found = _AFTER_EQUALS.findall(raw_line(doc, line))
    if not found:
        raise ValueError(f"no printed result on line {line} of {document_path(doc).name}")
    return found


def column(matrix: list[list[str]]) -> list[str]:
    """A column vector printed as a bmatrix (one entry per row) as a flat list."""
    if any(len(row) != 1 for row in matrix):
        raise ValueError(f"not a column vector: {matrix}")
    return [row[0] for row in matrix]
