"""Judge printed numbers against exact values, and say whether an error is new or carried.

The rule is the document's own precision: a number printed with k decimals HOLDS when the
exact value lies within half a unit of its last decimal, ``|v - p| <= 0.5e-k`` (both roundings
of an exact tie are accepted). A step is recomputed twice, from the correct values of its
inputs and from the values the document printed for them:

* right from the correct inputs: HOLDS;
* right only from the printed inputs, and every printed input HOLDS: HOLDS (the document
  rounded an earlier value and carried its rounding, which is allowed);
* right only from the printed inputs, some of which are WRONG: WRONG, *carried*;
* wrong from both: WRONG, *new* (an arithmetic error in this very step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal

import sympy as sp

from .evaluate import DIGITS, numeric
from .parse import decimals

HOLDS, WRONG, UNCHECKED = "HOLDS", "WRONG", "UNCHECKED"
OUTCOMES = (HOLDS, WRONG, UNCHECKED)

_SLACK = sp.Rational(1, 10 ** (DIGITS - 10))


def holds(value, printed: str) -> bool:
    """Whether the exact ``value`` rounds to ``printed`` at the decimals ``printed`` shows."""
    p = sp.Rational(printed.replace("{,}", "."))
    half = sp.Rational(1, 2) / sp.Integer(10) ** decimals(printed)
    diff = value - p
    if diff.is_Rational:
        return abs(diff) <= half
    return bool(abs(numeric(diff)) <= half + _SLACK)


def rounded(value, printed: str) -> str:
    """``value`` written with as many decimals as ``printed`` shows."""
    k = decimals(printed)
    text = str(Decimal(str(numeric(value))).quantize(Decimal(1).scaleb(-k), ROUND_HALF_EVEN))
    if "e" in printed:  # printed as mantissa x 10^e: say it the same way
        mantissa, _, exponent = printed.partition("e")
        shown = len(mantissa.split(".", 1)[1]) if "." in mantissa else 0
        return f"{Decimal(text).scaleb(-int(exponent)):.{shown}f}e{int(exponent)}"
    return text[1:] if text.startswith("-") and Decimal(text) == 0 else text


def deviation(value, printed: str) -> float:
    return float(abs(numeric(value - sp.Rational(printed))))


@dataclass
class Finding:
    """The audit of one numeric statement (or one input restated).

    ``printed``/``correct`` are texts at the document's precision; ``entries`` one dict per
    printed number (``index``, ``printed``, ``correct``, ``from_printed_inputs``, ``ok``,
    ``origin``), row by row in the printed value's ``shape``; ``origin`` is ``"new"`` or
    ``"carried"`` for a WRONG finding; ``wrong_inputs`` the WRONG inputs the step used;
    ``reason`` says why an UNCHECKED one was not checked.
    """

    line: int
    label: str
    statement: str
    outcome: str
    printed: str = ""
    correct: str = ""
    max_deviation: float | None = None
    origin: str | None = None
    wrong_inputs: list[str] = field(default_factory=list)
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    entries: list[dict] = field(default_factory=list)
    implicit: bool = False
    restated: bool = False  # the statement repeats a value printed earlier under the same name
    name: str | None = None  # the canonical name the statement defines (W_1^Q, alpha_21), if any
    span: tuple[int, int] | None = None  # where the printed value sits in the raw line
    shape: tuple[int, int] | None = None  # (rows, columns) of the printed value; entries run row by row

    def to_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "span"}
        out["span"] = list(self.span) if self.span else None
        out["shape"] = list(self.shape) if self.shape else None
        return out

    def summary(self) -> str:
        """One line: what is wrong and by how much, or why unchecked, or what holds."""
        if self.outcome == UNCHECKED:
            return self.reason
        if self.outcome == HOLDS:
            text = "agrees at the printed precision"
            if any(e.get("via_printed_inputs") for e in self.entries):
                text += " (with the document's own rounding of earlier values)"
        else:
            bad = [e for e in self.entries if not e["ok"]]
            what = f"{len(bad)} of {len(self.entries)} entries wrong" if len(self.entries) > 1 else "wrong"
            text = f"{what}; correct {self.correct}; largest deviation {self.max_deviation:.3g}; "
            text += ("carried from " + ", ".join(self.wrong_inputs) if self.origin == "carried"
                     else "new error" + (f" (inputs also wrong: {', '.join(self.wrong_inputs)})"
                                         if self.wrong_inputs else ""))
        if self.notes:
            text += "; " + "; ".join(self.notes)
        return text


def judge_entries(printed: list[str], correct: list, from_printed: list | None, wrong_inputs: list[str]) -> list[dict]:
    """One dict per printed entry, by the rule in the module docstring."""
    out = []
    for i, text in enumerate(printed):
        c = correct[i]
        d = None if from_printed is None else from_printed[i]
        ok_c = holds(c, text)
        ok_d = d is not None and holds(d, text)
        entry = {"index": i, "printed": text, "correct": rounded(c, text), "exact": str(numeric(c, 15)),
                 "from_printed_inputs": None if d is None else rounded(d, text),
                 "deviation": deviation(c, text)}
        if ok_c:
            entry.update(ok=True, origin=None)
        elif ok_d and not wrong_inputs:
            entry.update(ok=True, origin=None, via_printed_inputs=True)
        elif ok_d:
            entry.update(ok=False, origin="carried")
        else:
            entry.update(ok=False, origin="new")
        out.append(entry)
    return out


def matrix_text(texts: list[str], shape: tuple[int, int]) -> str:
    if shape == (1, 1):
        return texts[0]
    rows, cols = shape
    return "[" + "; ".join(", ".join(texts[r * cols:(r + 1) * cols]) for r in range(rows)) + "]"


def verdict(entry_rows: list[dict]) -> tuple[str, str | None]:
    bad = [e for e in entry_rows if not e["ok"]]
    if not bad:
        return HOLDS, None
    return WRONG, ("new" if any(e["origin"] == "new" for e in bad) else "carried")


__all__ = ["HOLDS", "WRONG", "UNCHECKED", "OUTCOMES", "Finding", "holds", "rounded", "judge_entries",
           "matrix_text", "verdict"]
