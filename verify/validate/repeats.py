"""Batch independence and determinism, judged on two of the candidate's own outputs (every kind).

Both compare outputs that must be equal: sample 0 before and after the other samples change, and
two calls on the same input. Each output may be off the reference by up to the tolerance rule's
bound for its dtype, so their difference is held to twice that bound. The sdpa properties
(:mod:`verify.validate.sdpa.structure`) and the mha / block ones (:func:`batch_independence`,
:func:`determinism` below) share these verdicts and their fault codes.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from verify.validate.result import Measurement, PropertyResult, Status
from verify.validate.tolerance import relative_error

__all__ = ["BATCH_MIXED", "NONDETERMINISTIC", "own_difference", "batch_verdict", "repeat_verdict",
           "batch_independence", "determinism"]

#: Fault codes.
BATCH_MIXED = "batch:mixed"
NONDETERMINISTIC = "nondeterministic"


def own_difference(what: str, a: np.ndarray, b: np.ndarray, bound: float) -> Measurement:
    """The relative difference of two outputs that must be equal, against ``2 * bound`` (``bound``:
    how far one may be off the reference)."""
    if a.shape != b.shape:
        return Measurement(what, float("inf"), 2 * bound)
    return Measurement(what, relative_error(a, b) if np.any(b) else float(np.max(np.abs(a - b), initial=0.0)),
                       2 * bound)


def batch_verdict(before: np.ndarray, after: np.ndarray, bound: float, dtype: str) -> tuple[Measurement, str | None]:
    """Sample 0's output ``before`` and ``after`` the other samples changed: (measurement, the
    diagnosis when it changed, else None)."""
    m = own_difference(f"sample 0, other samples changed ({dtype})", after, before, bound)
    if m.ok:
        return m, None
    return m, (f"sample 0's output changes when other samples change (by {m.error:.3g}): the batch is mixed "
               "(a reduction over the batch axis, a batch statistic, or the batch and sequence axes swapped?)")


def repeat_verdict(first: np.ndarray, second: np.ndarray, bound: float, dtype: str) -> tuple[Measurement, str, bool]:
    """Two calls on the same input: (measurement, a note for the report, ok). Bitwise equal, or a
    spread within rounding, is ok; a larger spread is not."""
    if first.shape == second.shape and np.array_equal(first, second, equal_nan=True):
        return Measurement(f"spread ({dtype})", 0.0, bound), f"{dtype}: bitwise identical", True
    m = own_difference(f"spread of two calls ({dtype})", second, first, bound)
    if m.ok:
        return m, f"{dtype}: not bitwise, spread {m.error:.3g} (within rounding)", True
    return m, f"two calls on the same input differ by {m.error:.3g} (beyond rounding, {dtype})", False


# ------------------------------------------------------------------ mha / block properties

#: ``call(x, dtype) -> output (B, N, D)`` on the host: the candidate on the property's problem's weights.
Call = Callable[[np.ndarray, str], np.ndarray]


def batch_independence(name: str, call: Call, x: np.ndarray, bounds: Sequence[tuple[str, float]], rng,
                       example: dict[str, Any]) -> PropertyResult:
    """Changing samples 1.. of ``x`` (B >= 2, N, D) leaves sample 0's output as it was, in each
    ``(dtype, bound)`` of ``bounds``."""
    changed = x.copy()
    changed[1:] = 3 * rng.standard_normal(changed[1:].shape)
    ms = []
    for dtype, bound in bounds:
        before, after = call(x, dtype), call(changed, dtype)
        m, words = batch_verdict(before[:1], after[:1], bound, dtype)
        ms.append(m)
        if words:
            # A change that the same input repeated also shows is the candidate's nondeterminism, not mixing.
            spread, note, ok = repeat_verdict(before, call(x, dtype), bound, dtype)
            if not ok and spread.error >= m.error / 10:
                return PropertyResult(name, Status.FAIL, f"sample 0's output changes by {m.error:.3g} when the other "
                                      f"samples change, but it is nondeterministic: {note}; batch independence "
                                      "cannot be told from it", (*ms, spread), example, NONDETERMINISTIC)
            return PropertyResult(name, Status.FAIL, words, tuple(ms), example, BATCH_MIXED)
    return PropertyResult(name, Status.PASS, "sample 0's output unchanged when the other samples change "
                          f"({', '.join(dtype for dtype, _ in bounds)})", tuple(ms))


def determinism(name: str, call: Call, x: np.ndarray, bounds: Sequence[tuple[str, float]],
                example: dict[str, Any]) -> PropertyResult:
    """Two calls on ``x`` in each dtype: bitwise equal, or the spread is reported (FAIL beyond rounding)."""
    ms, notes = [], []
    for dtype, bound in bounds:
        m, note, ok = repeat_verdict(call(x, dtype), call(x, dtype), bound, dtype)
        ms.append(m)
        if not ok:
            return PropertyResult(name, Status.FAIL, f"nondeterministic: {note}", tuple(ms), example, NONDETERMINISTIC)
        notes.append(note)
    return PropertyResult(name, Status.PASS, "; ".join(notes), tuple(ms))
