"""Why a step did not pass: false (FAIL, with a counterexample) or not proved (UNPROVED).

A symbolic check that does not reduce ``lhs - rhs`` to 0 says only that SymPy could not show
the step; it does not say the step is false. :func:`diagnose` tells the two apart: it
simplifies the residual (what SymPy was left with), then evaluates it at random admissible
values of its symbols, with 50 significant digits. A value clearly away from 0, confirmed at
100 digits, is a counterexample and the step FAILs; a residual that vanishes at every point
tried is UNPROVED (not proved; the message says which points were tried), as is one that cannot be evaluated (an
undefined function, a sum over a symbolic range of a non-integer symbol).

Random values respect what the expression states about its symbols: integer symbols (sizes,
indices) get small integers (1..5 when positive), positive and nonnegative symbols get
values of that sign, and the step's SymPy assumptions (``Q.le(i, n)``, ``Q.le(abs(rho), 1)``:
state a domain there, or a point outside it may be reported) reject a point that violates
them. Sums with concrete limits are expanded and ``Indexed`` entries
(``z[2]``) and matrix elements get values of their own. The draws are seeded by the step's
position, so a report is the same every run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import sympy as sp
from sympy.core.function import AppliedUndef
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr

from .derivation import (_GREATER, _LESS, AtSizes, Chain, Checker, Custom, NonNegative, Symbolic, _displayed_difference,
                         _zero_scalar, is_zero)

__all__ = ["Counterexample", "Diagnosis", "diagnose", "find_counterexample", "simplified_residual", "POINTS", "DOMAIN"]

#: Random points tried before a residual that would not simplify is called UNPROVED.
POINTS = 24
#: Significant digits of the evaluation, and of the confirmation of a counterexample.
DIGITS, CONFIRM_DIGITS = 50, 100
#: |residual| above this (relative to the size of its terms, at least 1) is not rounding.
THRESHOLD = sp.Float("1e-25")
_MAX_DRAWS = 400
_SHOWN_CHARS = 400


@dataclass(frozen=True)
class Counterexample:
    """Values at which a step's residual is clearly not 0.

    Attributes
    ----------
    values : dict of str to str
        Each symbol (or entry, ``z[2]``) and the exact value given to it.
    residual : str
        The residual's value there, 12 significant digits.
    where : str
        Which part failed, when the step has several: ``"entry (0, 1)"``, ``"at n=3"``.
    sides : tuple of str, optional
        The two sides' values (``lhs``, ``rhs``), when the step compares two expressions.
    note : str
        A caveat: the residual is not real there (the step may be meant for a smaller domain).
    """

    values: dict[str, str]
    residual: str
    where: str = ""
    sides: tuple[str, str] | None = None
    note: str = ""

    def describe(self) -> str:
        """One line: where, the values, the residual (and the two sides when known)."""
        where = f"{self.where}, " if self.where else ""
        if not self.values:
            return f"{where}the residual is the nonzero constant {self.residual}"
        at = ", ".join(f"{k} = {v}" for k, v in self.values.items())
        text = f"{where}at {at}: residual = {self.residual}"
        if self.sides:
            text += f" (lhs = {self.sides[0]}, rhs = {self.sides[1]})"
        if self.note:
            text += f"; {self.note}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"values": dict(self.values), "residual": self.residual, "where": self.where,
                "sides": list(self.sides) if self.sides else None, "note": self.note}


@dataclass(frozen=True)
class Diagnosis:
    """The verdict on a step whose check did not pass.

    Attributes
    ----------
    status : {"FAIL", "UNPROVED"}
        FAIL: a counterexample exists (or the step's own custom check said no); UNPROVED:
        SymPy could not reduce the residual to 0 and no counterexample was found.
    explanation : str
        One or two sentences saying which, and why.
    residual : str or None
        The residual as SymPy left it after simplification; None when the check has none.
    counterexample : Counterexample or None
    points : int
        Random points evaluated.
    """

    status: str
    explanation: str
    residual: str | None = None
    counterexample: Counterexample | None = None
    points: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "explanation": self.explanation, "residual": self.residual,
                "counterexample": self.counterexample.to_dict() if self.counterexample else None,
                "points": self.points}


# --------------------------------------------------------------------------- residuals


def _shown(expr: Any) -> str:
    s = sp.sstr(expr)
    return s if len(s) <= _SHOWN_CHARS else s[: _SHOWN_CHARS - 3] + "..."


def _entries(expr: Any) -> list[tuple[str, Any]]:
    """``(label, scalar)`` for each part of a target: an entry of a matrix, an item of a list."""
    if isinstance(expr, sp.Equality):
        expr = expr.lhs - expr.rhs
    if isinstance(expr, MatrixExpr) and not isinstance(expr, sp.MatrixBase):
        reduced = expr.expand().doit()
        if isinstance(reduced, MatrixExpr) and not isinstance(reduced, sp.MatrixBase):
            if not all(isinstance(d, (int, sp.Integer)) for d in reduced.shape):
                return [("", reduced)]
            reduced = reduced.as_explicit()
        expr = reduced
    if isinstance(expr, sp.MatrixBase):
        cols = expr.shape[1]
        return [(f"entry ({idx // cols}, {idx % cols})", e) for idx, e in enumerate(expr)]
    if isinstance(expr, (list, tuple)):
        out = []
        for idx, item in enumerate(expr):
            out += [(f"item {idx}" + (f" {label}" if label else ""), e) for label, e in _entries(item)]
        return out
    return [("", expr)]


def simplified_residual(expr: Any, assumptions: Any = None) -> list[tuple[str, Any]]:
    """The parts of ``expr`` that SymPy does not reduce to 0, each as it was left simplified.

    ``expr`` is what a zero test receives (an expression, an ``Eq``, a matrix, a list);
    returns ``(label, residual)`` pairs, the label naming the entry (``""`` for a scalar).
    """
    left = []
    for label, entry in _entries(expr):
        if isinstance(entry, MatrixExpr):
            left.append((label, entry))
            continue
        ok, _, cur = _zero_scalar(entry, assumptions)
        if not ok:
            left.append((label, cur))
    return left


# --------------------------------------------------------------------------- random points


#: Powers of ten the values of a point are scaled by (one is picked per point) in the second
#: half of the points; the first half is of order 1. A step that fails only for large inputs
#: (``Max(x, -1000) = x``) is found too, and the usual counterexample stays readable.
MAGNITUDES = (1, 2, 3, 4, 6)
#: What the random points range over, as the messages state it.
DOMAIN = ("random points: magnitudes 0.05 to 3e6 with the sign each symbol's assumptions allow; "
          "complex values (real and imaginary parts drawn alike) for symbols not assumed real; "
          "integers -4..5 for integer symbols")


def _real_value(rng: random.Random, scale: sp.Rational) -> sp.Rational:
    return sp.Rational(rng.randint(1, 60), 20) * scale  # (0, 3 scale]


def _draw(symbol: sp.Basic, rng: random.Random, scale: sp.Rational) -> sp.Basic:
    """An exact value of the sign ``symbol``'s assumptions require; a complex one half the time
    for a symbol not assumed real (a plain ``Symbol("z")`` is complex)."""
    if symbol.is_integer:
        if symbol.is_positive:
            return sp.Integer(rng.randint(1, 5))
        if symbol.is_nonnegative:
            return sp.Integer(rng.randint(0, 5))
        if symbol.is_negative:
            return sp.Integer(-rng.randint(1, 5))
        return sp.Integer(rng.randint(-4, 4))
    value = _real_value(rng, scale)
    if symbol.is_positive or symbol.is_nonnegative:
        return value
    if symbol.is_negative or symbol.is_nonpositive:
        return -value
    value = value if rng.random() < 0.5 else -value
    if symbol.is_extended_real is None and symbol.is_imaginary is None and rng.random() < 0.5:
        imag = _real_value(rng, scale) * rng.choice((1, -1))
        return (0 if rng.random() < 0.25 else value) + sp.I * imag
    if symbol.is_imaginary:
        return sp.I * value
    return value


def _admissible(conditions: Iterable[Any], values: dict) -> bool | None:
    """False when a condition is violated at ``values``; None when one cannot be decided yet."""
    undecided = False
    for cond in conditions:
        if cond is None or cond is True:
            continue
        if isinstance(cond, tuple):  # (expression, symbol whose assumptions it must meet)
            value, symbol = cond
            v = sp.sympify(value).subs(values)
            if not v.is_number:
                undecided = True
                continue
            v = v.evalf(DIGITS)
            if v.is_extended_real is not True:
                return False  # a complex value cannot meet a sign assumption
            if (symbol.is_nonnegative and v < 0) or (symbol.is_positive and v <= 0) \
                    or (symbol.is_nonpositive and v > 0) or (symbol.is_negative and v >= 0):
                return False
            continue
        answer = sp.ask(cond.subs(values))
        if answer is False:
            return False
        if answer is None:
            undecided = True
    return None if undecided else True


def _at(expr: Any, values: dict) -> Any:
    """``expr`` at ``values``: integer symbols first (so sums with concrete limits expand), then
    the entries and the other symbols."""
    ints = {s: v for s, v in values.items() if isinstance(s, sp.Symbol) and s.is_integer}
    at = sp.sympify(expr)
    at = at.subs(ints).doit() if ints else at.doit()
    return at.xreplace({a: v for a, v in values.items() if a not in ints})


def _point(expr: Any, rng: random.Random, scale: sp.Rational, conditions: list) -> tuple[Any, dict] | None:
    """``expr`` at a random admissible point: ``(value expression, {atom: value})``, or None
    when the draw violated a condition."""
    values: dict = {}
    for s in sorted((s for s in expr.free_symbols if isinstance(s, sp.Symbol) and s.is_integer), key=str):
        values[s] = _draw(s, rng, scale)
    if _admissible(conditions, values) is False:
        return None
    at = expr.subs(values).doit() if values else expr.doit()
    for atom in sorted(at.atoms(sp.Indexed, MatrixElement), key=str):
        values[atom] = _draw(atom, rng, scale)
    at = at.xreplace({a: v for a, v in values.items() if not isinstance(a, sp.Symbol)})
    for s in sorted((s for s in at.free_symbols if isinstance(s, sp.Symbol)), key=str):
        values[s] = _draw(s, rng, scale)
    if _admissible(conditions, values) is not True:  # undecidable at numbers: do not risk a false report
        return None
    return at.xreplace(values), values


def _unevaluable(at: Any) -> str | None:
    """Why ``at`` (all symbols given values) is still not a number, or None."""
    if at.is_number:
        return None
    undefined = sorted({str(f.func) for f in at.atoms(AppliedUndef)})
    if undefined:
        return "it contains the undefined function(s) " + ", ".join(undefined)
    if at.has(sp.Sum, sp.Product):
        return "it contains a sum or product over a range that is not an integer"
    return f"it still contains {_shown(at.free_symbols or at)} after every symbol was given a value"


def _magnitude(at: sp.Basic) -> sp.Float:
    terms = sp.Add.make_args(sp.expand(at)) if len(at.args) < 50 else (at,)
    return max([sp.Float(1)] + [abs(t.evalf(DIGITS)) for t in terms if t.is_number])


def _format_value(v: sp.Basic) -> str:
    """Exact for small rationals, else 12 significant digits without trailing zeros."""
    if v.is_Integer or (v.is_Rational and v.q < 1000):
        return sp.sstr(v)
    return sp.sstr(v.evalf(12), full_prec=False)


def find_counterexample(
    parts: list[tuple[str, Any]],
    *,
    conditions: Iterable[Any] = (),
    seed: str = "attnverify",
    points: int = POINTS,
    negative: bool = False,
    sides: Callable[[], tuple[Any, Any]] | None = None,
) -> tuple[Counterexample | None, int, str]:
    """Search random admissible points for one where a part is clearly not 0 (or, with
    ``negative``, clearly below 0).

    Parameters
    ----------
    parts : list of (str, expression)
        Labelled scalar expressions (``simplified_residual``'s output).
    conditions : iterable
        SymPy ``Q`` predicates, or ``(expression, symbol)`` pairs meaning "``expression``
        satisfies ``symbol``'s sign assumptions"; a point violating one is redrawn.
    seed : str
        Seeds the draws (reports are reproducible).
    points : int
        Admissible points to evaluate.
    negative : bool
        Look for a value below 0 (an inequality ``expr >= 0``) instead of a nonzero one.
    sides : callable, optional
        Returns ``(lhs, rhs)``, evaluated at a counterexample and shown with it.

    Returns
    -------
    (Counterexample or None, int, str)
        The counterexample, the number of points evaluated, and a note (why none could be
        evaluated, or the largest |value| seen).
    """
    rng = random.Random(seed)
    conditions = [c for c in conditions if c is not None]
    evaluated, extreme, why_not, complex_only = 0, None, "", None
    for label, expr in parts:
        expr = sp.sympify(expr)
        if isinstance(expr, MatrixExpr):
            why_not = "it is a matrix expression of symbolic shape"
            continue
        if expr.atoms(AppliedUndef):
            why_not = _unevaluable(expr)
            continue
        done = 0
        for draw in range(_MAX_DRAWS):
            if done >= points:
                break
            scale = sp.Rational(1, 2 ** (draw // 40))  # shrink when constraints reject large values
            if done >= points // 2:
                scale *= 10 ** rng.choice(MAGNITUDES)
            try:
                found = _point(expr, rng, scale, conditions)
            except (TypeError, ValueError, ZeroDivisionError, NotImplementedError) as exc:
                why_not = f"substituting values failed ({type(exc).__name__}: {' '.join(str(exc).split())})"
                break
            if found is None:
                continue
            at, values = found
            reason = _unevaluable(at)
            if reason:
                why_not = reason
                break
            value = at.evalf(DIGITS)
            if value.has(sp.nan, sp.zoo, sp.oo, -sp.oo):
                continue
            done += 1
            evaluated += 1
            seen = sp.re(value) if negative else abs(value)
            extreme = seen if extreme is None else (min(extreme, seen) if negative else max(extreme, seen))
            bad = (seen < -THRESHOLD * _magnitude(at)) if negative else (seen > THRESHOLD * _magnitude(at))
            if not bad:
                continue
            confirm = at.evalf(CONFIRM_DIGITS)
            if abs(confirm - value) > abs(value) / 1000:
                continue  # the value moved with the precision: rounding, not a counterexample
            shown_sides = None
            if sides is not None:
                try:
                    shown_sides = tuple(_format_value(_at(side, values).evalf(DIGITS)) for side in sides())
                except Exception:  # the sides are a courtesy; the residual is the evidence
                    shown_sides = None
            shown = {str(k): _format_value(v) for k, v in values.items() if not str(k).startswith("_")}
            exact = at if at.is_Rational else value
            real_inputs = all(v.is_real for v in values.values())
            if not negative and real_inputs and abs(sp.im(value)) > THRESHOLD * _magnitude(at):
                # false there, but the expression leaves the reals: keep looking for a real counterexample
                complex_only = complex_only or Counterexample(
                    shown, _format_value(exact), label, shown_sides,
                    "the residual is not real there: if the step is meant for a smaller domain, "
                    "state it with assumptions= (e.g. Q.le(abs(rho), 1))")
                continue
            return Counterexample(shown, _format_value(exact), label, shown_sides), evaluated, ""
        else:
            if done == 0 and not why_not:
                why_not = f"no random point satisfied the assumptions in {_MAX_DRAWS} draws"
    if complex_only is not None:
        return complex_only, evaluated, ""
    if evaluated:
        if negative:
            return None, evaluated, f"smallest value {_format_value(extreme)}"
        return None, evaluated, f"|value| <= {_format_value(extreme)} at all {evaluated} points"
    return None, 0, why_not or "nothing to evaluate"


# --------------------------------------------------------------------------- diagnosis


def _symbolic_target(checker: Symbolic, ctx: Any) -> Any:
    e = checker._target(ctx)
    if checker.do_unfold:
        e = ctx.unfold(e)
    if checker.prepare is not None:
        e = checker.prepare(e)
    return e


def _symbolic_sides(checker: Symbolic, ctx: Any) -> Callable[[], tuple[Any, Any]] | None:
    if checker.expr is not None or checker.prepare is not None:
        return None
    sym = (sp.Basic, sp.MatrixBase)
    pair = (ctx.previous.rhs, ctx.step.rhs) if isinstance(checker, Chain) and ctx.previous else (ctx.step.lhs, ctx.step.rhs)
    if not all(isinstance(p, sym) and not isinstance(p, sp.MatrixBase) for p in pair):
        return None
    lhs, rhs = (ctx.unfold(p) if checker.do_unfold else p for p in pair)
    return lambda: (lhs, rhs)


def _zero_test_diagnosis(target: Any, assumptions: Any, seed: str, *, where: str = "",
                         sides: Callable | None = None, conditions: Iterable = ()) -> Diagnosis:
    parts = simplified_residual(target, assumptions)
    if not parts:  # simplification alone got there this time (e.g. a cache): nothing is wrong
        return Diagnosis("UNPROVED", "the check failed but its residual reduces to 0 when re-simplified")
    prefix = f"{where}: " if where else ""
    residual = "; ".join(f"{label}: {_shown(r)}" if label else _shown(r) for label, r in parts)
    cex, n, note = find_counterexample(parts,
                                       conditions=[assumptions, *conditions], seed=seed, sides=sides)
    if cex is not None:
        return Diagnosis("FAIL", f"{prefix}false: {cex.describe()}", residual, cex, n)
    if n:
        return Diagnosis("UNPROVED", f"{prefix}SymPy could not reduce the residual to 0, and no counterexample was "
                         f"found at {n} {DOMAIN} ({note}): not proved", residual, None, n)
    return Diagnosis("UNPROVED", f"{prefix}SymPy could not reduce the residual to 0, and it could not be evaluated "
                     f"numerically ({note}): neither proved nor refuted", residual, None, 0)


def _nonnegative_diagnosis(checker: NonNegative, ctx: Any, seed: str) -> Diagnosis:
    for idx, (expr, witness, subs) in enumerate(checker.cases):
        expr = ctx.unfold(expr)
        witness = sp.sympify(witness)
        plain = checker.substituted(subs)
        unsigned = [why for why in (checker._value_sign(aux, spec)[1] for aux, spec in subs.items()) if why]
        # the substituted values keep the search inside the domain the witness describes, so a
        # counterexample found is one there; a value whose sign is not shown leaves it UNPROVED
        conditions = [checker.assumptions, *[(value, aux) for aux, value in plain.items()]]
        where = f"case {idx}" if len(checker.cases) > 1 else ""
        ok, _ = is_zero(expr - witness.subs(plain), checker.assumptions)
        if ok and witness.is_nonnegative is True and not unsigned:
            continue
        cex, n, note = find_counterexample([(where, expr)], conditions=conditions, seed=f"{seed}:{idx}", negative=True)
        prefix = f"{where}: " if where else ""
        if cex is not None:
            return Diagnosis("FAIL", f"{prefix}false: the expression is negative, {cex.describe()}",
                             _shown(expr), cex, n)
        if not ok:
            d = _zero_test_diagnosis(expr - witness.subs(plain), checker.assumptions, f"{seed}:{idx}:w",
                                     where=where, conditions=conditions[1:])
            if d.status == "FAIL":
                return Diagnosis("FAIL", f"{prefix}the witness does not equal the expression: "
                                 f"{d.counterexample.describe()}", d.residual, d.counterexample, d.points)
            return d
        found = (f"no negative value at {n} {DOMAIN} ({note})" if n
                 else f"it could not be evaluated ({note})")
        if unsigned and witness.is_nonnegative is True:
            return Diagnosis("UNPROVED", f"{prefix}{unsigned[0]}; {found}: not proved", _shown(witness), None, n)
        return Diagnosis("UNPROVED", f"{prefix}SymPy cannot show the witness {_shown(witness)} is nonnegative from "
                         f"its symbols' assumptions; {found}: not proved", _shown(witness), None, n)
    return Diagnosis("UNPROVED", "the check failed but every case passes when re-checked")


def _unlinked_diagnosis(checker: Symbolic | NonNegative, ctx: Any, seed: str) -> Diagnosis | None:
    """When the check does not test the displayed line: FAIL if the displayed line itself is false
    at a point, else UNPROVED saying so. None when the check is linked to the line."""
    why = checker.unlinked(ctx)
    if why is None:
        return None
    shown = _displayed_difference(ctx)
    if isinstance(checker, NonNegative):
        rel = ctx.step.rel.strip()
        if rel not in _LESS and rel not in _GREATER:
            return Diagnosis("UNPROVED", why)
        target = ctx.unfold(-shown if rel in _LESS else shown)
        cex, n, note = find_counterexample([("", target)], conditions=[checker.assumptions], seed=seed, negative=True)
        if cex is not None:
            return Diagnosis("FAIL", f"{why}; and the displayed line is false: {cex.describe()}", _shown(target), cex, n)
        return Diagnosis("UNPROVED", f"{why}; no point found where the displayed line is false ({n} points"
                         f"{', ' + note if note else ''}): not proved", _shown(target), None, n)
    target = checker._prepared(shown, ctx)
    d = _zero_test_diagnosis(target, checker.assumptions, seed, sides=lambda: (ctx.step.lhs, ctx.step.rhs)
                             if ctx.step.lhs is not None else None)
    if d.status == "FAIL":
        return Diagnosis("FAIL", f"{why}; and the displayed line is false: {d.explanation}", d.residual,
                         d.counterexample, d.points)
    return Diagnosis("UNPROVED", f"{why}; {d.explanation}", d.residual, None, d.points)


def diagnose(checker: Checker, ctx: Any, note: str, seed: str) -> Diagnosis:
    """FAIL or UNPROVED for a step whose ``checker`` did not pass (it returned, it did not raise).

    Parameters
    ----------
    checker : Checker
        The step's checker.
    ctx : proofs.derivation._Context
        The step, the previous step and the derivation's unfolding map.
    note : str
        The checker's own note (kept for checks with no residual, such as :class:`Custom`).
    seed : str
        Seeds the random points.
    """
    if hasattr(checker, "residual_cases"):  # a checker of ours that knows its zero tests (ForAllN)
        for where, target, assumptions in checker.residual_cases(ctx):
            if not is_zero(target, assumptions)[0]:
                return _zero_test_diagnosis(target, assumptions, f"{seed}:{where}", where=where)
        return Diagnosis("UNPROVED", "the check failed but each case passes when re-checked")
    if isinstance(checker, (Symbolic, NonNegative)):
        unlinked = _unlinked_diagnosis(checker, ctx, seed)
        if unlinked is not None:
            return unlinked
    if isinstance(checker, Symbolic):
        return _zero_test_diagnosis(_symbolic_target(checker, ctx), checker.assumptions, seed,
                                    sides=_symbolic_sides(checker, ctx))
    from .expectation import ByExpectation

    if isinstance(checker, ByExpectation):
        left, right = checker.operator(checker.lhs), checker.operator(checker.rhs)
        return _zero_test_diagnosis(left - right, None, seed, sides=lambda: (left, right))
    if isinstance(checker, AtSizes):
        for size in checker.sizes:
            target = checker.build(*size) if isinstance(size, tuple) else checker.build(size)
            if checker.prepare is not None:
                target = checker.prepare(target)
            if not is_zero(target, checker.assumptions)[0]:
                return _zero_test_diagnosis(target, checker.assumptions, f"{seed}:{size}",
                                            where=f"at {checker.label}={size}")
        return Diagnosis("UNPROVED", "the check failed but every size passes when re-checked")
    if isinstance(checker, NonNegative):
        return _nonnegative_diagnosis(checker, ctx, seed)
    if isinstance(checker, Custom):
        return Diagnosis("FAIL", f"the custom check ({checker.method}) returned False: {note}")
    return Diagnosis("FAIL", f"the check {type(checker).__name__} returned False: {note}")
