"""Check a document's worked example number by number.

A :class:`WorkedExample` holds the inputs the document gives (exact decimal strings) and
each quantity it prints, with the formula that defines it. :meth:`WorkedExample.check`
recomputes every quantity twice at 40 significant digits (mpmath):

* **from scratch**: the formula applied to the *correct* values of earlier quantities;
  this decides the verdict;
* **from the document's own inputs**: the formula applied to the values the document
  printed for earlier quantities; a mismatch here is an arithmetic slip in that very step,
  a match with a from-scratch mismatch means the error was carried over from an earlier step.

A printed number with k decimals agrees with a value v when ``|v - printed| <= 0.5e-k``
(ties included, so both roundings of an exact half are accepted). Anything further off is
an error of the document, reported with the correct value. All printed numbers agree:
PROVED (the example's arithmetic is exactly verified); otherwise REFUTED, with the table of
wrong numbers as the counterexample.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import mpmath

from ..claims import CheckOutcome, Evidence, Method, Verdict

DPS = 40
_SLACK = mpmath.mpf("1e-30")


def decimals(text: str) -> int:
    text = text.strip()
    return len(text.split(".", 1)[1]) if "." in text else 0


def _mp(x: Any) -> Any:
    """Nested lists of decimal strings/numbers -> mpmath matrix; a scalar -> mpf."""
    if isinstance(x, (list, tuple)):
        if x and isinstance(x[0], (list, tuple)):
            return mpmath.matrix([[mpmath.mpf(str(e)) for e in row] for row in x])
        return mpmath.matrix([[mpmath.mpf(str(e)) for e in x]])  # a row vector
    if isinstance(x, mpmath.matrix):
        return x
    return mpmath.mpf(str(x))


def _entries(printed: Any) -> list[tuple[tuple[int, int], str]]:
    if isinstance(printed, (list, tuple)):
        if printed and isinstance(printed[0], (list, tuple)):
            return [((i, j), str(e)) for i, row in enumerate(printed) for j, e in enumerate(row)]
        return [((0, j), str(e)) for j, e in enumerate(printed)]
    return [((0, 0), str(printed))]


def _value_at(value: Any, index: tuple[int, int]) -> Any:
    return value[index] if isinstance(value, mpmath.matrix) else value


def _shape(value: Any) -> tuple[int, int]:
    return (value.rows, value.cols) if isinstance(value, mpmath.matrix) else (1, 1)


def _fmt(v: Any, k: int) -> str:
    return mpmath.nstr(v, 12) if k is None else f"{float(v):.{k}f}"


# ---- helpers formulas can use -------------------------------------------------------------

def softmax_row(z: Any) -> Any:
    """Softmax of a row vector (mpmath matrix 1 x m) or of a list of mpf."""
    vals = [z[0, j] for j in range(z.cols)] if isinstance(z, mpmath.matrix) else list(z)
    m = max(vals)
    e = [mpmath.exp(v - m) for v in vals]
    s = mpmath.fsum(e)
    return mpmath.matrix([[x / s for x in e]])


def hstack(*ms: Any) -> Any:
    rows = ms[0].rows
    return mpmath.matrix([[m[i, j] for m in ms for j in range(m.cols)] for i in range(rows)])


@dataclass
class Quantity:
    """One number or matrix the document prints, and the formula that defines it."""

    name: str
    printed: Any  # a decimal string, or (nested) lists of decimal strings, as printed
    formula: Callable[[Mapping[str, Any]], Any]
    where: str = ""


@dataclass
class WorkedExample:
    title: str
    given: dict[str, Any]
    quantities: Sequence[Quantity]
    notes: list[str] = field(default_factory=list)

    def recompute(self) -> list[dict[str, Any]]:
        """One row per printed entry: printed, correct, recomputed from the document's inputs."""
        rows = []
        with mpmath.workdps(DPS):
            given = {k: _mp(v) for k, v in self.given.items()}
            as_printed = dict(given)
            for q in self.quantities:
                as_printed[q.name] = _mp(q.printed)
            correct = dict(given)
            for q in self.quantities:
                true_value = _mp(q.formula(correct))
                local_value = _mp(q.formula(as_printed))
                correct[q.name] = true_value
                entries = _entries(q.printed)
                if _shape(true_value) != _shape(as_printed[q.name]):
                    rows.append({"quantity": q.name, "where": q.where, "entry": None, "printed": q.printed,
                                 "correct": f"shape {_shape(true_value)}", "ok": False, "slip": True,
                                 "problem": f"printed shape {_shape(as_printed[q.name])}, defined shape {_shape(true_value)}"})
                    continue
                for index, text in entries:
                    k = decimals(text)
                    half = mpmath.mpf(5) / mpmath.mpf(10) ** (k + 1)
                    p = mpmath.mpf(text)
                    v, lv = _value_at(true_value, index), _value_at(local_value, index)
                    rows.append({
                        "quantity": q.name,
                        "where": q.where,
                        "entry": list(index),
                        "printed": text,
                        "correct": _fmt(v, k),
                        "correct_full": mpmath.nstr(v, 15),
                        "from_document_inputs": _fmt(lv, k),
                        "ok": bool(abs(v - p) <= half + _SLACK),
                        "slip": not bool(abs(lv - p) <= half + _SLACK),
                    })
        return rows

    def correct_values(self) -> dict[str, list[list[float]]]:
        """The correct value of every quantity (floats, for reports and tests)."""
        with mpmath.workdps(DPS):
            env = {k: _mp(v) for k, v in self.given.items()}
            out = {}
            for q in self.quantities:
                env[q.name] = _mp(q.formula(env))
                v = env[q.name]
                out[q.name] = ([[float(v[i, j]) for j in range(v.cols)] for i in range(v.rows)]
                               if isinstance(v, mpmath.matrix) else float(v))
        return out

    def check(self) -> CheckOutcome:
        rows = self.recompute()
        wrong = [r for r in rows if not r["ok"]]
        n = len(rows)
        if not wrong:
            return CheckOutcome(Verdict.PROVED, Method.SYMBOLIC, [Evidence(
                "derivation",
                f"{self.title}: all {n} printed numbers recomputed at {DPS} digits agree to the printed rounding",
                {"entries": rows, "notes": self.notes, "rule": "|correct - printed| <= 0.5e-(decimals printed)"},
            )])
        by_quantity: dict[str, list[dict]] = {}
        for r in wrong:
            by_quantity.setdefault(r["quantity"], []).append(r)
        first = next(iter(by_quantity))
        corrected = self.correct_values()[first]
        slips = sorted({r["quantity"] for r in wrong if r["slip"]})
        summary = f"{self.title}: {wrong_in_words(rows)}; e.g. {first} should be {_short(corrected)}"
        return CheckOutcome(Verdict.REFUTED, Method.SYMBOLIC, [
            Evidence("counterexample", summary, {
                "wrong": wrong,
                "quantities_wrong": list(by_quantity),
                "arithmetic_slips": slips,
                "carried_over": sorted(set(by_quantity) - set(slips)),
                "correct_values": self.correct_values(),
                "rule": "|correct - printed| <= 0.5e-(decimals printed)",
                "notes": self.notes,
            }),
        ])


def wrong_in_words(rows: list[dict[str, Any]]) -> str:
    """What is wrong and what is right, quantity by quantity: "all 12 entries of M are wrong; C (24
    entries) is right", so a count never mixes correct and wrong quantities into one fraction."""
    per: dict[str, list[bool]] = {}
    for r in rows:
        per.setdefault(r["quantity"], []).append(bool(r["ok"]))
    wrong = []
    for name, oks in per.items():
        bad = oks.count(False)
        if bad:
            wrong.append(f"all {len(oks)} entries of {name}" if bad == len(oks) and len(oks) > 1 else
                         name if len(oks) == 1 else f"{bad} of {len(oks)} entries of {name}")
    right = [f"{name} ({len(oks)} entries)" if len(oks) > 1 else name for name, oks in per.items() if all(oks)]
    total_bad = sum(oks.count(False) for oks in per.values())
    total = sum(len(oks) for oks in per.values())
    text = f"{total_bad} of {total} printed numbers are wrong: " + ", ".join(wrong) if len(wrong) > 1 else \
        ", ".join(wrong) + (" is wrong" if len(wrong) == 1 and wrong[0] in per else " are wrong")
    if right:
        text += "; right: " + ", ".join(right)
    return text


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "[" + "; ".join(", ".join(f"{x:.4g}" for x in row) for row in value) + "]"
    return f"{value:.6g}"
