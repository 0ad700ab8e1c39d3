"""Find the labelled statements of a seed document by regex on its raw (mojibake) text.

The rule
--------
A *statement header* is a bold span that **opens a line** and whose first word is a
statement kind:

* kinds: Lema, Teorema, Proposição, Corolário, Observação (also the plural
  "Observações"), Definição, Exemplo;
* Lema, Teorema, Proposição and Corolário must carry a number ("Lema 1.1", "Corolário 3");
  Exemplo, Observação and Definição may be unnumbered ("Exemplo Numérico"), because the
  documents label their worked examples that way and worked examples are claims too;
* "opens a line" means: only blockquote markers (``>``), one icon (``💡`` in whatever
  encoding), whitespace and a highlight marker (``==``) may come before the ``**``.

Why this rule: the documents write every statement as ``**Lema 1.1** (Título): ...``,
``**Lema 1 (Título):** ...``, ``==**Lema 2 (...):** ...``, ``**Lema 1.** *...*`` or
``> 💡 **Exemplo Numérico:**``, always at the start of a line, while they *mention*
statements inside running text: ``O **Lema 1** destaca`` (seed 003, line 87, after a
"Comentário Avançado" label) and ``como demonstrado no Teorema 6`` (seed 003, line 519).
Anchoring at the line start separates the two. Proof headers (``**Prova do Lema 2:**``,
``**Demonstração:**``) start with another word and are not statements. Callouts such as
"Ponto de Destaque", "Comentário Avançado" or "Insight" are not statement kinds.

Robustness to the mojibake: each accented letter of a kind is matched by
``[^\x00-\x7f]{1,8}`` (any run of non-ASCII code units), so "Proposição" matches
``Proposi√ß√£o``, ``ProposiÃ§Ã£o``, the lossy variants of seed 004 and clean UTF-8 alike.
Labels are rebuilt from the canonical spelling, never from the mis-decoded text.

A label that occurs more than once as a header in one document (e.g. "Exemplo Numérico")
is disambiguated on every occurrence with its line: ``"Exemplo Numérico (line 16)"``.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from ._doc import document_path, raw_lines, repair

_A = r"[^\x00-\x7f]{1,8}"  # one accented letter, whatever the mis-encoding

# canonical name -> (pattern, number required)
KINDS: dict[str, tuple[str, bool]] = {
    "Lema": (r"Lema", True),
    "Teorema": (r"Teorema", True),
    "Proposição": (rf"Proposi{_A}o", True),
    "Corolário": (rf"Corol{_A}rio", True),
    "Observação": (rf"Observa{_A}o", False),
    "Observações": (rf"Observa{_A}es", False),
    "Definição": (rf"Defini{_A}o", False),
    "Exemplo": (r"Exemplo", False),
}

_KIND_GROUPS = "|".join(f"(?P<k{i}>{pattern})" for i, (pattern, _) in enumerate(KINDS.values()))

HEADER = re.compile(
    rf"""^[ \t]*(?:>[ \t]*)*            # blockquote markers
        (?:[^\x00-\x7f]{{1,8}}[ \t]*)?   # at most one icon, e.g. the light bulb, in any encoding
        (?:==)?\*\*[ \t]*                # optional highlight, then the bold span opens
        (?:{_KIND_GROUPS})(?![A-Za-z])   # a statement kind, as a whole word
        (?P<rest>[^*\n]*)                # the rest of the bold span (number, qualifier, title)
    """,
    re.X,
)

_NUMBER = re.compile(r"^[ \t]*(\d+(?:\.\d+)*)")
_QUALIFIER = re.compile(r"^[ \t]+([^\s:().,]+)")


def _match_header(line: str) -> str | None:
    m = HEADER.match(line)
    if not m:
        return None
    index = next(i for i in range(len(KINDS)) if m.group(f"k{i}") is not None)
    kind, (_, needs_number) = list(KINDS.items())[index]
    rest = m.group("rest")
    number = _NUMBER.match(rest)
    if number:
        return f"{kind} {number.group(1)}"
    if needs_number:
        return None
    qualifier = _QUALIFIER.match(rest)
    return f"{kind} {repair(qualifier.group(1))}" if qualifier else kind


def labels_in_document(path: str | Path) -> list[tuple[str, int]]:
    """The statement labels of a seed document, in order, as ``(label, line)`` pairs.

    ``path`` is a file path, a seed file name or a seed key ("003"). Lines are 1-based.
    See the module docstring for the rule and why it finds headers, not mentions.
    """
    found = []
    for number, line in enumerate(raw_lines(document_path(path)), start=1):
        label = _match_header(line)
        if label is not None:
            found.append((label, number))
    counts = Counter(label for label, _ in found)
    return [(f"{label} (line {n})" if counts[label] > 1 else label, n) for label, n in found]


def is_statement_label(label: str) -> bool:
    """True when ``label`` names a statement kind (the labels :func:`labels_in_document` finds)."""
    first = label.split()[0] if label.split() else ""
    return first in KINDS
