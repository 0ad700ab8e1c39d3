"""Shared steps of the sdpa properties: a measured run with its diagnosis, and a difference between
two of the candidate's own outputs judged against the rule's bound."""

from __future__ import annotations

from typing import Callable

import numpy as np

from verify.validate.context import PropertyContext
from verify.validate.repeats import own_difference
from verify.validate.result import Measurement
from verify.validate.sdpa.agreement import diagnose, rerunner
from verify.validate.sdpa.common import Run, fmt, judge_outcome, measure
from verify.validate.sdpa.problem import Problem, draw
from verify.validate.tolerance import relative_error


#: The problem on which the precision a candidate delivers is diagnosed (see :func:`delivered`).
PROBE_KEY = 0x9E


def delivered(ctx: PropertyContext, dtype: str) -> str:
    """The precision the candidate's output has when ``dtype`` is asked for: ``dtype``, or the lower one
    that :func:`diagnose` names (``precision:float32``...) on a fixed plain problem (once per property).

    The agreement property reports that shortfall as its one FAIL; the other properties, which
    compare values, judge by the delivered precision's rule so as not to invent scale, mask or
    determinism faults from rounding."""
    cache = ctx.__dict__.setdefault("_delivered", {})
    if dtype not in cache:
        run = measure(ctx, Problem(*draw(ctx.generator(PROBE_KEY), (2,), 2, 9, 12, 16, 8)), dtype,
                      what="precision probe")
        code = None
        if not run.ok and not run.shape_error:
            code = diagnose(run.problem, dtype, run.outcome.out, run.measurement.bound)[1]
        cache[dtype] = code.split(":", 1)[1] if code and code.startswith("precision:") else dtype
    return cache[dtype]


def judged(ctx: PropertyContext, p: Problem, dtype: str, what: str = "output"):
    """``(run, None)`` when the candidate agrees on ``p`` (by the rule of the precision it delivers,
    see :func:`delivered`); else ``(run, PropertyResult FAIL)`` with the fault named when a known one
    reproduces the output."""
    run = measure(ctx, p, dtype, what=what)
    if run.ok:
        return run, None
    low = None if run.shape_error else delivered(ctx, dtype)
    if low is not None and low != dtype:
        as_low = judge_outcome(run.problem, dtype, run.outcome, what=what, judged_as=low)
        if as_low.ok:
            return as_low, None
    example = run.problem.describe(dtype)
    if run.shape_error:
        return run, ctx.failed(run.shape_error, (run.measurement,), example, "output:shape")
    words, code = diagnose(run.problem, dtype, run.outcome.out, run.measurement.bound, rerunner(ctx, dtype))
    m = run.measurement
    return run, ctx.failed(f"{words} (error {fmt(m.error)} vs bound {fmt(m.bound)})", (m,), example, code)


def judged_runs(ctx: PropertyContext, make: Callable[[], Problem], dtypes=None):
    """``(runs, None)``: for each dtype (the context's by default) a fresh problem ``make()`` run and
    judged; ``(runs so far, PropertyResult FAIL)`` at the first that disagrees."""
    runs = []
    for dtype in ctx.dtypes() if dtypes is None else dtypes:
        run, fail = judged(ctx, make(), dtype)
        if fail:
            return runs, fail
        runs.append(run)
    return runs, None


def agrees_on(ctx: PropertyContext, make: Callable[[], Problem], words: str):
    """The whole of a property that only needs the candidate to agree with us on ``make()`` in each
    dtype: PASS with ``words`` and the worst measurement, or the first FAIL (its fault named)."""
    runs, fail = judged_runs(ctx, make)
    if fail:
        return fail
    ms = [run.measurement for run in runs]
    return ctx.passed(words + worst(ms), ms)


def difference(what: str, a: np.ndarray, b: np.ndarray, run: Run) -> Measurement:
    """Two of the candidate's outputs that must be equal: their relative difference against twice
    the rule's bound (each may be off the reference by up to one bound)."""
    return own_difference(what, a, b, run.measurement.bound)


def worst(measurements) -> str:
    ms = [m for m in measurements if m is not None]
    if not ms:
        return ""
    m = max(ms, key=lambda m: m.error / m.bound if m.bound > 0 else (float("inf") if m.error else 0))
    return f"; worst error {fmt(m.error)} vs bound {fmt(m.bound)} ({m.what})"
