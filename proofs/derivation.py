"""Derivations: ordered lists of steps, each step checked when the derivation is checked.

A :class:`Derivation` is a list of :class:`Step` objects. A step is one line of the
derivation as it is displayed (``lhs  rel  rhs``, or raw LaTeX) together with its
justification (``reason``) and a *checker* that decides, when the derivation is checked,
whether the step holds. The checker also says *how* it decided (``method``), so every line
of the rendered proof carries its own evidence:

=================== ===================================================================
checker             what it verifies (method string recorded)
=================== ===================================================================
:class:`Definition` nothing: introduces notation or states an assumption ("definition",
                    "assumption"); recorded as *not checked*
:class:`Symbolic`   ``lhs - rhs`` (or a given expression) reduces to 0 in SymPy
                    ("symbolic"); ``Chain`` compares with the previous step's rhs
:class:`AtSizes`    the same zero test, instantiated at explicit sizes where SymPy
                    cannot do the general case ("explicit sizes n=2..6")
:class:`NonNegative` an inequality ``expr >= 0`` through a witness: ``expr - witness``
                    reduces to 0, SymPy's assumptions prove ``witness >= 0`` and every
                    value substituted for a signed symbol is shown to have that sign
:class:`Custom`     any callable returning ``(passed, note)`` (interval arithmetic,
                    numeric cross-checks); the caller names the method
:class:`Cited`      nothing in general: the step rests on a named theorem ("cited:
                    Gershgorin circle theorem"); recorded and rendered as *not checked*.
                    An optional spot check (any checker, e.g. explicit sizes) must pass
=================== ===================================================================

Every displayed line carries a tag (:meth:`Checker.tag`): the check method, or
``definition``, ``assumption``, or ``cited: THEOREM -- NOT CHECKED``.
:meth:`Derivation.unjustified` lists the lines that are neither checked, nor a definition or
stated assumption, nor cited with the theorem named (a definition that continues a chain,
``&= ...``, is a derivation step taken on trust and is listed too).

The zero test (:func:`is_zero`) orders SymPy's steps as its issues require (sympy #14570,
#27359): ``doit()`` first, then ``refine`` with the step's assumptions (drops the
``Piecewise`` that sums of ``KroneckerDelta`` produce), then bound summation variables are
renamed canonically (so ``Sum(e**z[j], (j, 1, n))`` and ``Sum(e**z[k], (k, 1, n))`` cancel), then ``expand``,
``cancel`` and only last ``simplify``.

A check must test the displayed line: where both sides are SymPy, ``Symbolic(expr)`` needs
``expr`` to be ``lhs - rhs`` up to simplification and ``NonNegative``'s expression must be the
displayed ``rhs - lhs`` (``<=``) or ``lhs - rhs`` (``>=``); otherwise the step does not pass.

A derivation is *valid* when every checked step passed, at least one step was checked and no
line is taken on trust without a mark (:meth:`Derivation.unjustified` is empty). :meth:`Derivation.outcome` turns a valid derivation into a
:class:`~proofs.claims.CheckOutcome`; for an invalid one it **raises**
:class:`DerivationError`: a failing step in one of our own derivations is a defect of the
toolkit, not a finding about a document, and must never be reported as PROVED (nor
silently as anything else). ``Claim.run`` records the exception as a crashed check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

from .claims import CheckOutcome, Evidence, Method, Verdict

__all__ = [
    "Derivation",
    "DerivationError",
    "Step",
    "StepResult",
    "Checker",
    "Definition",
    "Symbolic",
    "Chain",
    "AtSizes",
    "NonNegative",
    "Custom",
    "Cited",
    "is_zero",
    "canonical_sums",
    "split_sums",
    "exp_to_symbols",
    "unfold_indexed",
    "format_sizes",
]

_NOTE_CHARS = 300


# --------------------------------------------------------------------------- zero test


def canonical_sums(expr: Any) -> Any:
    """Rename the bound variables of every ``Sum`` to canonical symbols.

    The names depend only on the nesting depth and the position of the limit (innermost
    ``_i0_0``, the sum around it ``_i1_0``...), so two sums that differ only in their dummy
    indices become identical and cancel, and nested sums never capture each other's index.
    """
    if not isinstance(expr, sp.Basic) or not expr.has(sp.Sum):
        return expr

    def depth(e: sp.Basic) -> int:
        inner = [depth(a) for a in e.args if isinstance(a, sp.Basic) and a.has(sp.Sum)]
        own = 1 if isinstance(e, sp.Sum) else 0
        return own + (max(inner) if inner else 0)

    def rename(s: sp.Sum) -> sp.Basic:
        if any(len(limit) != 3 for limit in s.limits):
            return s
        level = depth(s.function)
        mapping = {limit[0]: sp.Symbol(f"_i{level}_{p}", integer=True) for p, limit in enumerate(s.limits)}
        if all(old == new for old, new in mapping.items()):
            return s
        limits = [(mapping[v], lo.xreplace(mapping), hi.xreplace(mapping)) for v, lo, hi in s.limits]
        return sp.Sum(s.function.xreplace(mapping), *limits)

    return expr.replace(lambda e: isinstance(e, sp.Sum), rename)


def split_sums(expr: Any) -> Any:
    """Apply linearity and Fubini to every ``Sum``: split over ``+``, pull out factors free of
    the summation index, and separate ``Sum(g(a) h(b), (b, ..), (a, ..))`` into
    ``Sum(h) * Sum(g)`` (finite sums over constant limits). Repeated until nothing changes.

    ``expand`` leaves ``Sum(f + g)`` and double sums of products alone; this rewrites them into
    products of single sums, which :func:`canonical_sums` can then match term by term.
    """

    def one(s: sp.Sum) -> sp.Basic:
        (var, *bounds), rest = s.limits[0], s.limits[1:]
        if len(bounds) != 2:
            return s
        out = sp.Integer(0)
        for term in sp.Add.make_args(sp.expand(s.function)):
            const, dep = term.as_independent(var, as_Add=False)
            out += const * sp.Sum(dep, (var, *bounds))
        return sp.Sum(out, *rest) if rest else out

    if not isinstance(expr, sp.Basic):
        return expr
    previous = None
    while previous != expr:
        previous = expr
        expr = sp.expand(expr.replace(lambda e: isinstance(e, sp.Sum), one))
    return expr


def exp_to_symbols(expr: Any, table: dict[Any, sp.Symbol]) -> Any:
    """Replace ``exp(r * key)`` by ``symbol**r`` for each ``key -> symbol`` of ``table``.

    SymPy merges ``exp(a)**2`` into ``exp(2 a)``; replacing each exponential of a known
    argument by a positive symbol turns softmax expressions into rational functions, which
    ``cancel`` decides quickly and exactly. ``r`` must be a rational number.
    """
    keys = []
    for k, s in table.items():
        k = sp.expand(k)
        terms = k.as_coefficients_dict()
        keys.append((k, s, next(iter(terms.items()))))

    def match(arg: sp.Basic) -> sp.Basic | None:
        a = sp.expand(arg)
        terms = a.as_coefficients_dict()
        for key, sym, (mono, coeff) in keys:
            if mono not in terms:
                continue
            ratio = terms[mono] / coeff
            if ratio.is_Rational and sp.expand(a - ratio * key) == 0:
                return sym**ratio
        return None

    if not isinstance(expr, (sp.Basic, sp.MatrixBase)):
        return expr
    atoms = expr.atoms(sp.exp)
    mapping = {}
    for atom in atoms:
        new = match(atom.args[0])
        if new is not None:
            mapping[atom] = new
    return expr.xreplace(mapping) if mapping else expr


def _short(x: Any) -> str:
    s = str(x)
    return s if len(s) <= _NOTE_CHARS else s[: _NOTE_CHARS - 3] + "..."


def _zero_scalar(e: Any, assumptions: Any) -> tuple[bool, str, Any]:
    e = sp.sympify(e)
    if e == 0:
        return True, "identically 0", e
    e = e.doit()  # doit before simplify (sympy #14570, #27359)
    if assumptions is not None:
        e = sp.refine(e, assumptions)
    e = canonical_sums(e)
    if e == 0:
        return True, "0 after doit/refine", e
    stages: list[tuple[str, Callable[[Any], Any]]] = [
        ("expand", lambda x: canonical_sums(sp.expand(x).doit())),
        ("cancel", lambda x: sp.cancel(sp.together(x))),
        ("simplify", lambda x: canonical_sums(sp.simplify(x))),
    ]
    cur = e
    for name, stage in stages:
        cur = stage(cur)
        if assumptions is not None and isinstance(cur, sp.Basic) and cur.has(sp.Piecewise):
            cur = sp.refine(cur, assumptions)
        if cur == 0:
            return True, f"reduces to 0 ({name})", cur
    return False, f"does not reduce to 0: {_short(cur)}", cur


def is_zero(expr: Any, assumptions: Any = None) -> tuple[bool, str]:
    """Decide whether ``expr`` is identically zero; ``(passed, note)``.

    ``expr`` may be a SymPy expression, an ``Eq`` (``lhs - rhs`` is tested), an explicit
    matrix (every entry is tested), a matrix expression (``expand().doit()`` must give a
    zero matrix) or an iterable of these. ``assumptions`` is a SymPy ``Q`` predicate used
    with ``refine``. A ``False`` answer means "SymPy could not show it", which for our own
    derivations is treated as a failed step.
    """
    if isinstance(expr, sp.Equality):
        expr = expr.lhs - expr.rhs
    if isinstance(expr, MatrixExpr) and not isinstance(expr, sp.MatrixBase):
        reduced = expr.expand().doit()
        if isinstance(reduced, sp.ZeroMatrix) or reduced == 0:
            return True, "matrix expression reduces to the zero matrix"
        if isinstance(reduced, sp.MatrixBase):
            return is_zero(reduced, assumptions)
        return False, f"matrix expression does not reduce to 0: {_short(reduced)}"
    if isinstance(expr, sp.MatrixBase) or isinstance(expr, (list, tuple)):
        entries = list(expr) if not isinstance(expr, sp.MatrixBase) else list(expr)
        how: set[str] = set()
        for idx, entry in enumerate(entries):
            ok, note = is_zero(entry, assumptions)
            if not ok:
                return False, f"entry {idx}: {note}"
            how.add(note)
        return True, f"all {len(entries)} entries: " + "; ".join(sorted(how))
    ok, note, _ = _zero_scalar(expr, assumptions)
    return ok, note


# --------------------------------------------------------------------------- checkers


@dataclass(frozen=True)
class StepResult:
    """Outcome of checking one step."""

    index: int  # 1-based position in the derivation
    reason: str
    passed: bool
    method: str
    note: str
    seconds: float
    checked: bool = True  # False for definitions, stated assumptions and cited results
    kind: str = "checked"  # "checked", "definition", "assumption" or "cited"
    #: The exception a checker raised (the step counts as failed); None when it returned.
    error: BaseException | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "reason": self.reason,
            "passed": self.passed,
            "checked": self.checked,
            "kind": self.kind,
            "method": self.method,
            "note": self.note,
            "seconds": round(self.seconds, 6),
        }


@dataclass
class _Context:
    """What a checker may look at: the step, the previous step, the unfolding map."""

    step: "Step"
    previous: "Step | None"
    unfold: Callable[[Any], Any]


class Checker:
    """Base class: ``run(ctx) -> (passed, note)``, a ``method`` string and a ``kind``.

    ``kind`` is ``"checked"`` for a checker that verifies the step, and ``"definition"``,
    ``"assumption"`` or ``"cited"`` for one that records why the step is not checked.
    """

    method: str = "?"
    checked: bool = True
    kind: str = "checked"

    def run(self, ctx: _Context) -> tuple[bool, str]:  # pragma: no cover - interface
        raise NotImplementedError

    def tag(self, passed: bool = True) -> str:
        """The tag shown on the step's displayed line: the method, ``FAILED`` appended if it failed."""
        return self.method if passed else f"{self.method}, FAILED"


class Definition(Checker):
    """Introduces notation or states an assumption; nothing to check (recorded as such)."""

    checked = False

    def __init__(self, kind: str = "definition"):
        if kind not in ("definition", "assumption", "cited"):
            raise ValueError(f"kind must be 'definition', 'assumption' or 'cited', got {kind!r}")
        self.method = self.kind = kind

    def tag(self, passed: bool = True) -> str:
        return "cited -- NOT CHECKED" if self.kind == "cited" else self.kind

    def run(self, ctx: _Context) -> tuple[bool, str]:
        return True, {"definition": "introduces notation", "assumption": "stated assumption",
                      "cited": "cited result, not re-proved here"}[self.method]


class Symbolic(Checker):
    """Check that ``expr`` (default: the step's ``lhs - rhs``) reduces to 0 in SymPy.

    The zero test (:func:`is_zero`) runs ``doit``, ``refine`` with ``assumptions``, renames
    summation indices canonically, then ``expand``, ``cancel`` and ``simplify``. Method
    string: ``"symbolic"``. A test that does not reach 0 fails the step; ``attnverify prove``
    then tells a false step (a numeric counterexample) from an unproved one.

    Parameters
    ----------
    expr : Expr, Eq, Matrix, list or None
        What must vanish. None (default): the step's ``lhs - rhs``, both SymPy objects.
        An ``Eq`` tests ``lhs - rhs``; a matrix or list tests every entry. When the displayed
        sides are SymPy, ``expr`` must be their ``lhs - rhs`` (or its negative) up to
        simplification through the derivation's ``unfold`` (or the displayed difference must
        itself reduce to 0): a check of something else does not pass.
    assumptions : Q predicate, optional
        Used with ``refine``, e.g. ``Q.ge(j, 1) & Q.le(j, n)`` so that
        ``Sum(KroneckerDelta(j, k) f(k), (k, 1, n))`` collapses to ``f(j)``.
    prepare : callable, optional
        Applied to the expression before the test (e.g. :func:`exp_to_symbols`).
    unfold : bool
        Apply the derivation's ``unfold`` map first (default True).

    Examples
    --------
    >>> import sympy as sp
    >>> x = sp.Symbol("x", real=True)
    >>> step = Step((x + 1) ** 2, x**2 + 2 * x + 1, "expand the square", Symbolic())
    >>> Derivation("square", "A square", "$(x+1)^2$", [step]).valid
    True
    """

    method = "symbolic"

    def __init__(self, expr: Any = None, *, assumptions: Any = None, prepare: Callable[[Any], Any] | None = None,
                 unfold: bool = True):
        self.expr, self.assumptions, self.prepare, self.do_unfold = expr, assumptions, prepare, unfold

    def _target(self, ctx: _Context) -> Any:
        if self.expr is not None:
            return self.expr
        step = ctx.step
        if not isinstance(step.lhs, (sp.Basic, sp.MatrixBase)) or not isinstance(step.rhs, (sp.Basic, sp.MatrixBase)):
            raise TypeError(f"step {step.reason!r}: a symbolic check needs SymPy lhs and rhs, or an explicit expr")
        return step.lhs - step.rhs

    def _prepared(self, e: Any, ctx: _Context) -> Any:
        if isinstance(e, sp.Equality):
            e = e.lhs - e.rhs
        if self.do_unfold:
            e = ctx.unfold(e)
        if self.prepare is not None:
            e = self.prepare(e)
        return e

    def unlinked(self, ctx: _Context) -> str | None:
        """Why the explicit ``expr`` is not shown to test the displayed line, or None.

        When both displayed sides are SymPy, ``expr`` must be ``lhs - rhs`` (or its negative)
        up to simplification, or the displayed ``lhs - rhs`` must itself reduce to 0: otherwise
        a check of something else would pass under the displayed line.
        """
        shown = _displayed_difference(ctx)
        if self.expr is None or shown is None or ctx.step.rel != "=":
            return None
        # compared through the derivation's unfold even when the check itself skips it
        # (unfold=False): an expr that is 0 with notation left symbolic is 0 once it is unfolded
        e = self.expr.lhs - self.expr.rhs if isinstance(self.expr, sp.Equality) else self.expr
        shown, e = ctx.unfold(shown), ctx.unfold(e)
        if self.prepare is not None:
            shown, e = self.prepare(shown), self.prepare(e)
        for candidate in (shown - e, shown + e, shown):
            if is_zero(candidate, self.assumptions)[0]:
                return None
        return (f"the check tests {_short(self.expr)}, which is not shown to be the displayed lhs - rhs "
                f"({_short(shown)}): the displayed line is not what was checked")

    def run(self, ctx: _Context) -> tuple[bool, str]:
        ok, note = is_zero(self._prepared(self._target(ctx), ctx), self.assumptions)
        if ok:
            why = self.unlinked(ctx)
            if why:
                return False, why
        return ok, note


class Chain(Symbolic):
    """Check that the step's rhs equals the previous step's rhs (a line ``&= ...`` of a chain).

    The default checker of a step written with ``lhs=None``. Takes the parameters of
    :class:`Symbolic` (``assumptions``, ``prepare``, ``unfold``).
    """

    def _target(self, ctx: _Context) -> Any:
        if ctx.previous is None or not isinstance(ctx.previous.rhs, (sp.Basic, sp.MatrixBase)):
            raise TypeError(f"step {ctx.step.reason!r} continues a chain but the previous step has no SymPy rhs")
        if not isinstance(ctx.step.rhs, (sp.Basic, sp.MatrixBase)):
            raise TypeError(f"step {ctx.step.reason!r}: a chain step needs a SymPy rhs")
        return ctx.previous.rhs - ctx.step.rhs


def format_sizes(sizes: Sequence[Any], label: str) -> str:
    """``"n=2..6"``, ``"n=2, 4, 8"`` or ``"(N,M)=(2,3), (3,2)"`` (spaces let LaTeX break lines)."""
    vals = list(sizes)
    if vals and all(isinstance(v, int) for v in vals):
        if len(vals) > 2 and vals == list(range(vals[0], vals[-1] + 1)):
            return f"{label}={vals[0]}..{vals[-1]}"
        return f"{label}=" + ", ".join(map(str, vals))
    return f"{label}=" + ", ".join("(" + ",".join(map(str, v)) + ")" for v in vals)


def _is_empty(e: Any) -> bool:
    """Whether a built target compares nothing: None, an empty list or tuple, an empty matrix."""
    if e is None:
        return True
    if isinstance(e, (list, tuple)):
        return len(e) == 0 or all(_is_empty(x) for x in e)
    if isinstance(e, sp.MatrixBase):
        return 0 in e.shape
    return False


class AtSizes(Checker):
    """Check the zero test at each of several explicit sizes.

    For statements about vectors or matrices of any size that SymPy cannot handle with a
    symbolic size, build the explicit objects at each size and test there. The method string
    lists the sizes (``"explicit sizes n=2..6"``), so nobody reads it as a proof for every n.

    Parameters
    ----------
    build : callable
        ``build(size)`` (a tuple size is unpacked: ``build(*size)``) returns what must be 0
        at that size: an expression, an ``Eq``, a matrix, or a list of these.
    sizes : iterable
        The sizes, ints or tuples (at least one).
    label : str
        The size's name in the method string (``"n"``, ``"d_k"``, ``"(N,M)"``).
    assumptions : Q predicate, optional
        As in :class:`Symbolic`.
    prepare : callable, optional
        Applied to each built expression before its test.

    Raises
    ------
    ValueError
        When ``sizes`` is empty.

    Examples
    --------
    >>> import sympy as sp
    >>> def row_sums(n):  # the rows of diag(s) - s s^T sum to 0 when the s_i sum to 1
    ...     s = sp.Matrix(sp.symbols(f"s_1:{n + 1}"))
    ...     jac = (sp.diag(*s) - s * s.T).subs(s[-1], 1 - sum(s[:-1]))
    ...     return jac * sp.ones(n, 1)
    >>> AtSizes(row_sums, range(2, 5)).method
    'explicit sizes n=2..4'
    """

    def __init__(self, build: Callable[..., Any], sizes: Iterable[Any], label: str = "n", *,
                 assumptions: Any = None, prepare: Callable[[Any], Any] | None = None):
        self.build, self.sizes, self.label = build, list(sizes), label
        if not self.sizes:
            raise ValueError("AtSizes needs at least one size")
        self.assumptions, self.prepare = assumptions, prepare
        self.method = "explicit sizes " + format_sizes(self.sizes, label)

    def run(self, ctx: _Context) -> tuple[bool, str]:
        notes = []
        for size in self.sizes:
            e = self.build(*size) if isinstance(size, tuple) else self.build(size)
            if _is_empty(e):
                raise ValueError(f"AtSizes: build({size!r}) returned {e!r}, which compares nothing; "
                                 "return what must be 0 at that size (an expression, an Eq, a matrix, a list)")
            if self.prepare is not None:
                e = self.prepare(e)
            ok, note = is_zero(e, self.assumptions)
            if not ok:
                return False, f"fails at {self.label}={size}: {note}"
            notes.append(size)
        return True, f"zero at every size ({format_sizes(notes, self.label)})"


_LESS = (r"\le", r"\leq", "<=", "<", r"\leqslant", r"\lt")
_GREATER = (r"\ge", r"\geq", ">=", ">", r"\geqslant", r"\gt")


class NonNegative(Checker):
    """Check an inequality ``expr >= 0`` through a witness.

    Passes when ``expr - witness.subs(subs)`` reduces to 0, SymPy shows
    ``witness.is_nonnegative`` from the assumptions of its symbols (a sum of squares, a
    product of nonnegative symbols...), and every value substituted through ``subs`` is shown
    to meet the sign assumptions of the symbol it replaces (SymPy sees it from its own
    symbols' assumptions, after ``cancel``; or it comes with a witness of its own). Without that
    last check ``{r: x}`` with ``r`` nonnegative would "prove" ``x >= 0`` for any ``x``.
    Write ``a <= b`` as ``NonNegative(b - a, witness)``. The witness's symbols must carry the
    assumptions the statement grants (``nonnegative=True`` for weights...): they are what
    SymPy reasons from.

    Parameters
    ----------
    expr : Expr
        What must be ``>= 0`` (the derivation's ``unfold`` is applied).
    witness : Expr
        An expression equal to ``expr`` whose sign SymPy can see.
    subs : dict, optional
        Expresses auxiliary symbols of the witness in the variables of ``expr``
        (e.g. the remaining mass ``{r: 1 - s_i - s_j}``). A value is either an expression whose
        sign SymPy sees, or a tuple ``(value, witness)`` / ``(value, witness, subs)``: the value
        is shown nonnegative the same way, recursively.
    premises : dict, optional
        ``{symbol: where}`` for an auxiliary symbol whose value's sign is established elsewhere
        (``"the two lines above"``). It is not checked here: the step's tag and note say
        ``given ... >= 0 (where)`` so a reader sees what the step rests on.
    assumptions : Q predicate, optional
        For the equality test, as in :class:`Symbolic`.

    See Also
    --------
    NonNegative.many : several ``(expr, witness, subs)`` cases in one step (one per size).

    Examples
    --------
    >>> import sympy as sp
    >>> s = sp.Symbol("s", nonnegative=True)
    >>> check = NonNegative(sp.Rational(1, 4) - s * (1 - s), (s - sp.Rational(1, 2)) ** 2)
    >>> Derivation("quarter", "s(1-s) <= 1/4", "-", [Step("s(1-s)", "1/4", "AM-GM", check, rel=r"\\le")]).valid
    True
    """

    method = "symbolic (nonnegativity witness)"

    def __init__(self, expr: Any, witness: Any, subs: dict | None = None, *, premises: dict | None = None,
                 assumptions: Any = None):
        self.cases = [(expr, witness, subs or {})]
        self.assumptions = assumptions
        self.premises = {}
        for aux, where in (premises or {}).items():
            if not isinstance(where, str) or not where.strip():
                raise ValueError(f"NonNegative premises: say where {aux} >= 0 is established (a non-empty string), "
                                 f"got {where!r}")
            self.premises[aux] = where.strip()
        if self.premises:
            given = "; ".join(f"given {aux} >= 0 ({where})" for aux, where in self.premises.items())
            self.method = f"{NonNegative.method}, {given}"

    @classmethod
    def many(cls, cases: Iterable[tuple[Any, Any, dict | None]], label: str | None = None) -> "NonNegative":
        obj = cls(0, 0)
        obj.cases = [(e, w, s or {}) for e, w, s in cases]
        if label:
            obj.method = f"symbolic (nonnegativity witness), {label}"
        return obj

    def _value_sign(self, aux: Any, spec: Any, depth: int = 0) -> tuple[Any, str | None]:
        """``(value, None)`` when the substituted value meets ``aux``'s sign assumptions, else
        ``(value, why not)``. ``spec`` is a value or ``(value, witness[, subs])``."""
        if isinstance(spec, tuple):
            if len(spec) not in (2, 3):
                raise ValueError(f"NonNegative subs[{aux}]: expected a value or (value, witness[, subs]), "
                                 f"got a tuple of {len(spec)}")
            value, witness = sp.sympify(spec[0]), sp.sympify(spec[1])
            inner = spec[2] if len(spec) == 3 else {}
            ok, note = is_zero(value - witness.subs({k: (v[0] if isinstance(v, tuple) else v) for k, v in inner.items()}),
                               self.assumptions)
            if not ok:
                return value, f"the substituted value {aux} = {_short(value)} differs from its witness: {note}"
            for k, v in inner.items():
                _, why = self._value_sign(k, v, depth + 1)
                if why:
                    return value, why
            shown = witness
        else:
            value = shown = sp.sympify(spec)
        needs_positive = getattr(aux, "is_positive", None) is True
        needs_nonnegative = needs_positive or getattr(aux, "is_nonnegative", None) is True
        needs_real = getattr(aux, "is_extended_real", None) is True
        if aux in self.premises:
            return value, None
        for candidate in (shown, sp.cancel(sp.together(shown)), sp.factor(shown)):
            if needs_positive and candidate.is_positive is not True:
                continue
            if needs_nonnegative and candidate.is_nonnegative is not True:
                continue
            if needs_real and candidate.is_extended_real is not True:
                continue
            return value, None
        sign = "positive" if needs_positive else "nonnegative" if needs_nonnegative else "real"
        return value, (f"SymPy cannot show the substituted value {aux} = {_short(value)} is {sign} "
                       f"(as {aux} is assumed); give it a witness, subs={{{aux}: (value, witness)}}")

    def substituted(self, subs: dict) -> dict:
        """The plain substitution ``{symbol: value}`` (the witnesses of values dropped)."""
        return {k: (v[0] if isinstance(v, tuple) else v) for k, v in subs.items()}

    def unlinked(self, ctx: _Context) -> str | None:
        """Why ``expr`` is not the displayed inequality's ``rhs - lhs`` (``<=``) or ``lhs - rhs``
        (``>=``) up to simplification, or None (also when a side is not SymPy)."""
        shown = _displayed_difference(ctx)
        if shown is None or len(self.cases) != 1 or isinstance(shown, sp.MatrixBase):
            return None
        rel = ctx.step.rel.strip()
        if rel in _LESS:
            shown = -shown
        elif rel not in _GREATER:
            return (f"the displayed relation {rel!r} is not an inequality <=, <, >= or >: "
                    "a nonnegativity check does not test it")
        expr = ctx.unfold(self.cases[0][0])
        if is_zero(ctx.unfold(shown) - expr, self.assumptions)[0]:
            return None
        side = "rhs - lhs" if rel in _LESS else "lhs - rhs"
        return (f"the check shows {_short(expr)} >= 0, which is not the displayed {side} = {_short(shown)}: "
                "the displayed line is not what was checked")

    def run(self, ctx: _Context) -> tuple[bool, str]:
        why = self.unlinked(ctx)
        if why:
            return False, why
        for idx, (expr, witness, subs) in enumerate(self.cases):
            expr = ctx.unfold(expr)
            ok, note = is_zero(expr - sp.sympify(witness).subs(self.substituted(subs)), self.assumptions)
            if not ok:
                return False, f"case {idx}: expression differs from its witness: {note}"
            if sp.sympify(witness).is_nonnegative is not True:
                return False, f"case {idx}: SymPy cannot show the witness {witness} is nonnegative"
            for aux, spec in subs.items():
                _, why = self._value_sign(aux, spec)
                if why:
                    return False, f"case {idx}: {why}"
        given = "".join(f"; given {aux} >= 0 ({where}), not checked here" for aux, where in self.premises.items())
        subs_note = ", substituted values shown >= 0" if any(c[2] for c in self.cases) else ""
        return True, (f"{len(self.cases)} case(s): expression = witness, witness >= 0 by the symbols' "
                      f"assumptions{subs_note}{given}")


class Custom(Checker):
    """Any check you can compute: a callable returning ``(passed, note)``.

    For what SymPy does not decide: a numeric cross-check, a Monte Carlo run, interval
    arithmetic. ``attnverify prove`` reports a False as FAIL with your note, and an exception
    as ERROR against the step (the other steps still run).

    Parameters
    ----------
    fn : callable
        Called with no argument; returns ``(passed, note)``: a bool (``numpy.bool_`` and
        SymPy's ``true``/``false`` too; a
        string, a number or NaN is an error, not a truth value) and a one-line account of the
        evidence (values, tolerances, seeds).
    method : str
        How it checks, shown beside the step (``"numeric (finite differences)"``).

    Examples
    --------
    >>> import math
    >>> check = Custom(lambda: (abs(math.tanh(1.0) - 0.7615941559557649) < 1e-15, "tanh(1) to 1e-15"), "numeric")
    >>> Derivation("tanh", "tanh(1)", "-", [Step("tanh(1)", "0.76159...", "numeric value", check)]).valid
    True
    """

    def __init__(self, fn: Callable[[], tuple[bool, str]], method: str):
        self.fn, self.method = fn, method

    def run(self, ctx: _Context) -> tuple[bool, str]:
        out = self.fn()
        where = f"step {ctx.step.reason!r}: the custom check ({self.method})"
        if not isinstance(out, tuple) or len(out) != 2:
            raise TypeError(f"{where} must return (passed, note), a bool and a string; it returned {_short(repr(out))}")
        ok, note = out
        import numpy as np

        if not isinstance(ok, (bool, np.bool_, sp.logic.boolalg.BooleanAtom)):  # SymPy's true/false too
            raise TypeError(f"{where} must return a bool (True or False) as passed; it returned "
                            f"{_short(repr(ok))} of type {type(ok).__name__} (compare explicitly, e.g. err < tol)")
        return bool(ok), str(note)


class Cited(Checker):
    """The step rests on a named theorem that is not re-proved here: recorded as *not checked*.

    Parameters
    ----------
    theorem : str
        The theorem the step uses, named so a reader can look it up ("Gershgorin circle
        theorem", "spectral theorem for real symmetric matrices").
    spot_check : Checker, optional
        A check of instances of the step (explicit sizes, examples). It must pass (a failure
        fails the derivation), but the step stays *not checked* in general: the tag says
        ``cited: THEOREM -- not checked in general; spot-checked: METHOD``.
    """

    checked = False
    kind = "cited"

    def __init__(self, theorem: str, *, spot_check: Checker | None = None):
        if not isinstance(theorem, str) or not theorem.strip():
            raise ValueError(f"Cited needs the name of the theorem, got {theorem!r}")
        if spot_check is not None and not isinstance(spot_check, Checker):
            raise TypeError(f"spot_check must be a Checker, got {type(spot_check).__name__}")
        self.theorem, self.spot_check = theorem.strip(), spot_check
        self.method = f"cited: {self.theorem}"

    def run(self, ctx: _Context) -> tuple[bool, str]:
        if self.spot_check is None:
            return True, f"cited result ({self.theorem}), not re-proved here"
        ok, note = self.spot_check.run(ctx)
        return ok, f"cited result ({self.theorem}), not re-proved here; spot check ({self.spot_check.method}): {note}"

    def tag(self, passed: bool = True) -> str:
        if self.spot_check is None:
            return f"cited: {self.theorem} -- NOT CHECKED"
        failed = ", FAILED" if not passed else ""
        return f"cited: {self.theorem} -- not checked in general; spot-checked: {self.spot_check.method}{failed}"


# --------------------------------------------------------------------------- steps


@dataclass
class Step:
    """One displayed line of a derivation, ``lhs rel rhs``, with its reason and its check.

    Parameters
    ----------
    lhs : Expr, number, str or None
        Left side: a SymPy object (a plain Python number is made one), or LaTeX. None continues
        the previous line (``&= rhs``).
    rhs : Expr, number or str
        Right side, a SymPy object (a plain Python number is made one) or LaTeX.
    reason : str
        The justification, shown beside the line; it names the step in reports (required).
        ``$...$`` segments are LaTeX math.
    check : Checker, optional
        How the step is checked. Default: :class:`Chain` when ``lhs`` is None and ``rhs`` is
        SymPy, :class:`Symbolic` when both sides are SymPy; otherwise a check is required.
    rel : str
        The relation, as LaTeX: ``"="`` (default), ``r"\\le"``, ``r"\\to"``... A relation other
        than ``=`` needs an explicit check (an equality test would not fit it).
    latex : str, optional
        Replaces the displayed math entirely (it may contain one ``&`` alignment point).
    latex_options : dict, optional
        Options for ``sympy.latex`` on this line (``order="none"``...).

    Raises
    ------
    ValueError
        No reason; no check where one is needed; a relation other than ``=`` with the
        default equality check.

    See Also
    --------
    Step.define, Step.assume : steps that are not checked (notation, stated assumptions).

    Examples
    --------
    >>> import sympy as sp
    >>> a, b = sp.symbols("a b", real=True)
    >>> Step(sp.exp(a) / (sp.exp(a) + sp.exp(b)), 1 / (1 + sp.exp(b - a)), "divide by $e^a$").check.method
    'symbolic'
    """

    lhs: Any = None
    rhs: Any = None
    reason: str = ""
    check: Checker | None = None
    rel: str = "="
    latex: str | None = None
    latex_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.reason:
            raise ValueError("every step needs a reason")
        self.lhs, self.rhs = _as_sympy_number(self.lhs), _as_sympy_number(self.rhs)
        if self.check is None:
            sym = (sp.Basic, sp.MatrixBase)
            if self.lhs is None and isinstance(self.rhs, sym):
                self.check = Chain()
            elif isinstance(self.lhs, sym) and isinstance(self.rhs, sym):
                self.check = Symbolic()
            else:
                raise ValueError(f"step {self.reason!r}: give a check (no SymPy lhs/rhs to compare)")
        if self.rel != "=" and isinstance(self.check, Symbolic) and self._default_symbolic():
            raise ValueError(f"step {self.reason!r}: relation {self.rel!r} cannot be checked as an equality")

    def _default_symbolic(self) -> bool:
        return isinstance(self.check, Symbolic) and self.check.expr is None

    # convenience constructors -------------------------------------------------------
    @classmethod
    def define(cls, lhs: Any, rhs: Any, reason: str = "definition", *, kind: str = "definition", **kw) -> "Step":
        return cls(lhs, rhs, reason, Definition(kind), **kw)

    @classmethod
    def assume(cls, lhs: Any, rhs: Any = None, reason: str = "assumption", **kw) -> "Step":
        return cls(lhs, rhs, reason, Definition("assumption"), **kw)


# --------------------------------------------------------------------------- derivation


class DerivationError(RuntimeError):
    """A step of one of our own derivations failed its check: a defect, never a verdict."""

    def __init__(self, derivation: "Derivation", failed: list[StepResult]):
        self.derivation, self.failed = derivation, failed
        lines = [f"step {r.index} ({r.reason}): {r.note}" for r in failed]
        lines += [f"taken on trust: {line}" for line in derivation.unjustified()]
        if not lines:
            lines = ["no step is checked"]
        super().__init__(f"derivation {derivation.name!r} is not valid: {'; '.join(lines)}")


def _as_sympy_number(side: Any) -> Any:
    """A plain Python number (int, float, Fraction, numpy scalar) as a SymPy number; anything
    else unchanged (a bool is not a number here)."""
    import numbers

    if isinstance(side, numbers.Number) and not isinstance(side, (bool, sp.Basic)):
        return sp.nsimplify(side) if isinstance(side, float) and float(side).is_integer() else sp.sympify(side)
    return side


def _displayed_difference(ctx: _Context) -> Any:
    """The displayed line's ``lhs - rhs`` (``previous rhs - rhs`` for a line ``&= ...``) when both
    sides are SymPy objects and no raw LaTeX replaces them; None otherwise."""
    step = ctx.step
    if step.latex is not None:
        return None
    lhs = step.lhs if step.lhs is not None else (ctx.previous.rhs if ctx.previous is not None else None)
    sym = (sp.Basic, sp.MatrixBase)
    if not isinstance(lhs, sym) or not isinstance(step.rhs, sym):
        return None
    if isinstance(lhs, sp.MatrixBase) != isinstance(step.rhs, sp.MatrixBase):
        return None
    return lhs - step.rhs


def _identity(x: Any) -> Any:
    return x


def _continues(step: Step) -> bool:
    """Whether the displayed line has an empty left-hand side (``&= ...``, a chain step)."""
    if step.latex is not None:
        return "&" in step.latex and not step.latex.split("&", 1)[0].strip()
    return step.lhs is None or (isinstance(step.lhs, str) and not step.lhs.strip())


def unfold_indexed(table: dict[sp.IndexedBase, Callable[..., Any]]) -> Callable[[Any], Any]:
    """An ``unfold`` map replacing ``base[idx]`` by ``table[base](*idx)`` everywhere."""

    def unfold(expr: Any) -> Any:
        if not isinstance(expr, (sp.Basic, sp.MatrixBase)):
            return expr
        return expr.replace(
            lambda e: isinstance(e, sp.Indexed) and e.base in table,
            lambda e: table[e.base](*e.indices),
        )

    return unfold


@dataclass
class Derivation:
    """An ordered list of checked steps proving ``statement`` under ``assumptions``.

    Checking (:meth:`check`) runs every step's checker once, in order; a checker that raises
    fails its step (the exception is kept) and the other steps still run. The derivation is
    :attr:`valid` when every checked step passed, at least one step was checked and no line is
    taken on trust without a mark.

    Parameters
    ----------
    name : str
        Short unique name (``"softmax-temperature-jacobian"``).
    title : str
        One-line title.
    statement : str
        What is proved, as LaTeX (text with ``$...$`` math).
    steps : list of Step
        The lines, in order.
    assumptions : list of str, optional
        Every assumption the statement is proved under, in words (printed with it).
    unfold : callable, optional
        Maps displayed notation to checkable expressions before symbolic checks (e.g.
        ``sigma[i]`` to ``exp(z[i]) / Sum(exp(z[k]), (k, 1, n))``; see :func:`unfold_indexed`).
    results : dict, optional
        Quantities a claim may quote (a certified bound, a polynomial...).
    method : Method
        What a :meth:`outcome` reports by default (symbolic).
    latex_options : dict, optional
        Options for ``sympy.latex`` on every line.

    See Also
    --------
    register : name a function that builds a derivation.

    Examples
    --------
    >>> import sympy as sp
    >>> a, b = sp.symbols("a b", real=True)
    >>> sigma = sp.exp(a) / (sp.exp(a) + sp.exp(b))
    >>> d = Derivation("two-logits", "Two-logit softmax", r"$\\sigma = 1/(1 + e^{b-a})$", [
    ...     Step(sigma, 1 / (1 + sp.exp(b - a)), "divide by $e^a$"),
    ...     Step(sp.diff(sigma, a), sigma * (1 - sigma), "its derivative"),
    ... ])
    >>> d.valid, [r.method for r in d.check()]
    (True, ['symbolic', 'symbolic'])
    """

    name: str
    title: str
    statement: str  # LaTeX
    steps: list[Step]
    assumptions: list[str] = field(default_factory=list)
    unfold: Callable[[Any], Any] = _identity
    results: dict[str, Any] = field(default_factory=dict)
    method: Method = Method.SYMBOLIC
    latex_options: dict[str, Any] = field(default_factory=dict)
    _results: list[StepResult] | None = field(default=None, init=False, repr=False)
    check_seconds: float | None = field(default=None, init=False)
    build_seconds: float | None = field(default=None, init=False)

    def check(self, force: bool = False) -> list[StepResult]:
        """Check every step (once; ``force=True`` re-checks) and return the per-step results.

        A checker that raises counts as a failed step, with the exception in its note.
        """
        if self._results is not None and not force:
            return self._results
        start = time.perf_counter()
        results: list[StepResult] = []
        previous: Step | None = None
        for index, step in enumerate(self.steps, 1):
            t = time.perf_counter()
            checker = step.check
            error = None
            try:
                ok, note = checker.run(_Context(step, previous, self.unfold))
            except Exception as exc:  # a crashing checker is a failed step, with the reason
                ok, note, error = False, f"checker raised {type(exc).__name__}: {_short(exc)}", exc
            results.append(StepResult(index, step.reason, bool(ok), checker.method, note,
                                      time.perf_counter() - t, checker.checked, getattr(checker, "kind", "checked"),
                                      error))
            if step.rhs is not None:
                previous = step
        self._results = results
        self.check_seconds = time.perf_counter() - start
        return results

    @property
    def valid(self) -> bool:
        """Every checked step passed, at least one step was checked, and no line is taken on
        trust without a mark (:meth:`unjustified` is empty)."""
        results = self.check()
        return all(r.passed for r in results) and any(r.checked for r in results) and not self.unjustified()

    @property
    def failed(self) -> list[StepResult]:
        return [r for r in self.check() if not r.passed]

    @property
    def methods(self) -> list[str]:
        """The distinct check methods used, in order of first use (definitions left out)."""
        seen: list[str] = []
        for r in self.check():
            if r.checked and r.method not in seen:
                seen.append(r.method)
        return seen

    def unjustified(self) -> list[str]:
        """The lines that are neither checked, nor a definition or assumption, nor a named citation.

        A definition or assumption that continues a chain (an empty left-hand side, ``&=
        ...``) is a derivation step taken on trust and is listed; so is ``Definition("cited")``
        (the theorem is not named; use :class:`Cited`) and any other unchecked checker. An
        empty list means every displayed line is accounted for.
        """
        problems = []
        for index, step in enumerate(self.steps, 1):
            checker = step.check
            if checker.checked:
                continue
            kind = getattr(checker, "kind", None)
            where = f"step {index} ({step.reason})"
            if kind in ("definition", "assumption"):
                if _continues(step):
                    problems.append(f"{where}: marked {kind} but continues the previous line (a derivation step)")
            elif isinstance(checker, Cited):
                continue
            elif kind == "cited":
                problems.append(f"{where}: cited without naming the theorem (use Cited(theorem))")
            else:
                problems.append(f"{where}: not checked and not marked as a definition, assumption or citation")
        return problems

    def summary(self) -> str:
        results = self.check()
        checked = sum(r.checked for r in results)
        cited = sum(r.kind == "cited" for r in results)
        failed, trusted = len(self.failed), len(self.unjustified())
        if self.valid:
            status = "all checked steps pass"
        elif failed:
            status = f"{failed} step(s) do not pass"
        elif trusted:
            status = f"NOT PROVED: {trusted} line(s) taken on trust without a mark"
        else:
            status = "NOT PROVED: no step is checked"
        also = f", {cited} cited (not checked)" if cited else ""
        return f"{self.title}: {checked} of {len(results)} steps checked{also}, {status} ({'; '.join(self.methods)})"

    def latex(self, **options: Any) -> str:
        from .latex import render

        return render(self, **options)

    def evidence(self, summary: str | None = None) -> Evidence:
        """Evidence(kind="derivation") with the per-step results, the results and the LaTeX."""
        results = self.check()
        return Evidence(
            kind="derivation",
            summary=summary or self.summary(),
            data={
                "derivation": self.name,
                "title": self.title,
                "statement": self.statement,
                "assumptions": list(self.assumptions),
                "valid": self.valid,
                "steps": [r.to_dict() for r in results],
                "results": dict(self.results),
                "check_seconds": self.check_seconds,
            },
            latex=self.latex(),
        )

    def outcome(
        self,
        verdict_if_valid: Verdict = Verdict.PROVED,
        *,
        summary: str | None = None,
        method: Method | None = None,
        corrected_statement: str | None = None,
        extra_evidence: Sequence[Evidence] = (),
    ) -> CheckOutcome:
        """A :class:`CheckOutcome` carrying this derivation as evidence.

        Raises :class:`DerivationError` when a step failed: a broken derivation of ours is
        a defect and must never be reported as a verdict (``Claim.run`` records it as a
        crashed check). ``verdict_if_valid`` may be REFUTED or CORRECTED when the
        derivation proves a statement contradicting a document's (pass the counterexample
        in ``extra_evidence``, and ``corrected_statement`` for CORRECTED).
        """
        self.check()
        if not self.valid:
            raise DerivationError(self, self.failed or [])
        return CheckOutcome(
            Verdict(verdict_if_valid),
            method or self.method,
            [self.evidence(summary), *extra_evidence],
            corrected_statement,
        )
