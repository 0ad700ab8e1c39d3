r"""An expectation operator that knows only linearity, stated independence and stated moments.

:class:`ExpectationOperator` evaluates :math:`\mathbb{E}[\cdot]` of SymPy expressions in
random variables using nothing but

* **linearity**: ``E[a X + b Y] = a E[X] + b E[Y]`` for non-random ``a, b``;
* **stated independence**: the random variables come in *groups*; different groups are
  mutually independent, so the expectation of a product factors over groups. Variables in
  one group may be dependent: their joint moments must be stated;
* **stated moments**: a mapping from monomials of one group (``q``, ``q**2``, ``q*k``,
  ``q**2*k**2``...) to their values.

Polynomials are expanded, each monomial is split over the independent groups, and each
group's part is looked up among the stated moments. Whatever cannot be reduced this way (a
moment nobody stated, a function of variables from two groups, indices that may or may not
coincide) stays as an explicit unevaluated :class:`Expect` node, printed ``E[...]``
(``\mathbb{E}[...]`` in LaTeX), so nothing is silently assumed. Every symbol
that is not a declared random variable is a non-random constant.

Two ways to declare random variables:

* ``groups=[[x, y], [z]]``: plain SymPy symbols (x and y may be dependent; both are
  independent of z);
* ``families=[Family((q, k), l)]``: indexed variables ``q[i], k[i]`` of
  ``IndexedBase`` objects. For each index value ``i`` the variables ``{q[i], k[i]}`` form one
  group; groups at different indices are independent and **identically distributed**, with
  moments stated once at the template index ``l`` (``{q[l]: mu, q[l]**2: 1 + mu**2}``).

With families, sums over a symbolic length are handled exactly (*symbolic length*): a
product of sums ``Sum(f(l_1), (l_1, 1, d)) ... Sum(g(l_r), (l_r, 1, d))`` becomes one
multiple sum, which is split by the equality pattern of its indices (a set partition of
``l_1..l_r``). Inside one pattern, indices in distinct blocks are distinct, their groups are
independent, and the expectation factors; when the value of a pattern does not depend on the
indices (identically distributed terms), the pattern contributes that value times the number
of index tuples with exactly that pattern, the falling factorial ``d (d-1) ... (d-b+1)`` for
``b`` blocks. Sums with numeric limits can instead be expanded (``explicit_sums=True``, or
build the expression at explicit sizes and sweep them): that is the *explicit-size* path, and
a check built on it should say which sizes it covered.

Example
-------
>>> import sympy as sp
>>> q, k = sp.IndexedBase("q"), sp.IndexedBase("k")
>>> l, d = sp.Symbol("l", integer=True), sp.Symbol("d", integer=True, positive=True)
>>> E = ExpectationOperator(families=[Family((q,), l), Family((k,), l)],
...                         moments={q[l]: 0, q[l]**2: 1, k[l]: 0, k[l]**2: 1})
>>> E.variance(sp.Sum(q[l] * k[l], (l, 1, d)))
d

With ``q[l], k[l]`` in one group (possibly dependent), the joint moments are needed, and
without them the answer says so:

>>> E = ExpectationOperator(families=[Family((q, k), l)],
...                         moments={q[l]: 0, q[l]**2: 1, k[l]: 0, k[l]**2: 1})
>>> E.variance(q[l] * k[l])
-E[k[l]*q[l]]**2 + E[k[l]**2*q[l]**2]

:class:`ByExpectation` is a derivation checker built on the operator: a step holds when
``E[lhs] - E[rhs]`` reduces to 0; its method string says what the step used ("stated
independence", "stated moments, symbolic d_k") and its note lists the operator's knowledge
(:func:`describe`) and any E[...] left unevaluated.

sympy.stats treats distinct random symbols as independent without saying so (sympy
#20111); here independence is an argument, and a wrong statement of it gives a different,
detectable answer (see the tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import sympy as sp
from sympy.utilities.iterables import multiset_partitions

from .derivation import Checker, is_zero

__all__ = ["Expect", "Family", "ExpectationOperator", "ByExpectation", "describe"]


class Expect(sp.Expr):
    r"""An unevaluated expectation ``E[arg]``: what the operator could not reduce.

    Printed ``E[arg]`` (str) and ``\mathbb{E}[arg]`` (LaTeX). Applying an
    :class:`ExpectationOperator` to an expression containing ``Expect`` nodes reduces them
    with that operator's knowledge; a node that survives is a quantity nothing stated
    determines. Also useful to write the right-hand side of a displayed step
    (``Expect(q**2) * Expect(k**2)``).
    """

    is_commutative = True

    def __new__(cls, arg: Any) -> "Expect":
        return sp.Expr.__new__(cls, sp.sympify(arg))

    @property
    def arg(self) -> sp.Expr:
        """The expression whose expectation this is."""
        return self.args[0]

    def _sympystr(self, printer: Any) -> str:
        return f"E[{printer._print(self.arg)}]"

    def _latex(self, printer: Any) -> str:
        return r"\mathbb{E}[" + printer._print(self.arg) + "]"


@dataclass(frozen=True)
class Family:
    """Indexed random variables, one independent, identically distributed group per index.

    Parameters
    ----------
    bases : sequence of sympy.IndexedBase
        The variables of one group, e.g. ``(q, k)`` for the pairs ``(q[i], k[i])``.
    index : sympy.Symbol
        The template index used in the stated moments (``q[l]**2``...).

    For every index value ``i``, ``{b[i] for b in bases}`` is one group (its members may be
    dependent; state their joint moments); groups at different indices are mutually
    independent and have the same joint distribution.
    """

    bases: tuple[sp.IndexedBase, ...]
    index: sp.Symbol

    def __post_init__(self) -> None:
        bases = tuple(self.bases) if isinstance(self.bases, (list, tuple)) else (self.bases,)
        for b in bases:
            if not isinstance(b, sp.IndexedBase):
                raise TypeError(f"Family bases must be sympy.IndexedBase objects, got {b!r} ({type(b).__name__})")
        if not isinstance(self.index, sp.Symbol):
            raise TypeError(f"Family index must be a sympy.Symbol, got {self.index!r} ({type(self.index).__name__})")
        object.__setattr__(self, "bases", bases)


def _powers(monomial: sp.Expr) -> frozenset:
    """A hashable key for a product of powers: ``frozenset({(base, exponent)})``."""
    out: dict[sp.Expr, sp.Expr] = {}
    for factor in sp.Mul.make_args(monomial):
        base, exp = factor.as_base_exp()
        out[base] = out.get(base, 0) + exp
    return frozenset((b, e) for b, e in out.items() if e != 0)


class _Irreducible(Exception):
    """Raised inside the reduction of one term that must stay an unevaluated E[...]."""


class ExpectationOperator:
    """E[.] from linearity, stated independence and stated moments only.

    Parameters
    ----------
    groups : sequence of sequences of sympy.Symbol, optional
        Plain random variables. Different groups are mutually independent; variables of one
        group may be dependent. A variable independent of all others is a group of one.
    families : sequence of Family, optional
        Indexed random variables, one iid group per index value (see :class:`Family`).
    moments : mapping, optional
        Stated moments: monomial of one group's variables (family variables at the template
        index) -> its non-random value. ``E[1] = 1`` need not be stated.
    explicit_sums : bool, default False
        Expand sums with numeric limits term by term (explicit-size path) instead of the
        symbolic-length rule. Both give the same value where both apply.

    Raises
    ------
    ValueError
        A variable declared twice; a moment key that mixes groups, has no random variable,
        or uses a family variable away from its template index; a random moment value.
    TypeError
        A group member that is not a sympy Symbol.

    Notes
    -----
    Calling the operator returns a SymPy expression. Anything it cannot reduce stays as an
    :class:`Expect` node; :meth:`unevaluated` lists those. Every symbol that is not a
    declared random variable is treated as a non-random constant.
    """

    def __init__(self, groups: Sequence[Sequence[sp.Symbol]] = (), *, families: Sequence[Family] = (),
                 moments: Mapping[Any, Any] | None = None, explicit_sums: bool = False):
        self._group_of: dict[sp.Symbol, int] = {}
        for g, members in enumerate(groups):
            if isinstance(members, sp.Basic):
                raise TypeError(f"groups must be a sequence of sequences of symbols; got the bare {members!r} "
                                f"(write [[{members}]] for a group of one)")
            for v in members:
                if not isinstance(v, sp.Symbol):
                    raise TypeError(f"group {g} member {v!r} is not a sympy Symbol ({type(v).__name__})")
                if v in self._group_of:
                    raise ValueError(f"random variable {v} declared in groups {self._group_of[v]} and {g}")
                self._group_of[v] = g
        self._family_of: dict[sp.IndexedBase, int] = {}
        self.families = tuple(families)
        for f, fam in enumerate(self.families):
            if not isinstance(fam, Family):
                raise TypeError(f"families[{f}] must be a Family, got {type(fam).__name__}")
            for b in fam.bases:
                if b in self._family_of:
                    raise ValueError(f"indexed variable {b} declared in families {self._family_of[b]} and {f}")
                if b.label in self._group_of:
                    raise ValueError(f"{b} is declared both as a plain and as an indexed random variable")
                self._family_of[b] = f
        self.groups = tuple(tuple(g) for g in groups)
        self.explicit_sums = bool(explicit_sums)
        self._moments: dict[tuple, dict[frozenset, sp.Expr]] = {}
        for key, value in (moments or {}).items():
            self._state(sp.sympify(key), sp.sympify(value))

    # ------------------------------------------------------------------ declarations

    def _group_key(self, atom: sp.Basic) -> tuple | None:
        """``('g', n)`` for a plain variable, ``('f', n, index)`` for a family variable, else None."""
        if isinstance(atom, sp.Symbol) and atom in self._group_of:
            return ("g", self._group_of[atom])
        if isinstance(atom, sp.Indexed) and atom.base in self._family_of:
            if len(atom.indices) != 1:
                raise ValueError(f"{atom}: family variables take exactly one index")
            return ("f", self._family_of[atom.base], atom.indices[0])
        return None

    def _random_atoms(self, expr: sp.Basic) -> set:
        """Random variables in ``expr`` outside Expect nodes and outside Sums (Sums are handled apart)."""
        found: set = set()

        def walk(e: sp.Basic) -> None:
            if isinstance(e, Expect):
                return
            if self._group_key(e) is not None:
                found.add(e)
                return
            for a in e.args:
                if isinstance(a, sp.Basic):
                    walk(a)

        walk(expr)
        return found

    def is_random(self, expr: Any) -> bool:
        """Whether ``expr`` involves a declared random variable (outside ``Expect`` nodes)."""
        return bool(self._random_atoms(sp.sympify(expr)))

    def _state(self, key: sp.Expr, value: sp.Expr) -> None:
        atoms = self._random_atoms(key)
        if not atoms:
            raise ValueError(f"moment key {key} contains no declared random variable")
        groups = {self._group_key(a) for a in atoms}
        if len(groups) != 1:
            names = sorted(str(a) for a in atoms)
            raise ValueError(f"moment key {key} mixes variables of independent groups ({', '.join(names)}): "
                             f"its expectation follows from independence; state them in one group to give a joint moment")
        (group,) = groups
        if group[0] == "f" and group[2] != self.families[group[1]].index:
            raise ValueError(f"moment key {key}: state family moments at the template index "
                             f"{self.families[group[1]].index}, not {group[2]}")
        if self.is_random(value):
            raise ValueError(f"moment value for {key} must be non-random, got {value}")
        self._moments.setdefault(group[:2], {})[_powers(key)] = value

    # ------------------------------------------------------------------ evaluation

    def __call__(self, expr: Any) -> sp.Expr:
        """E[expr], reduced as far as the stated knowledge allows (see the class docstring)."""
        expr = self._free_template_indices(sp.sympify(expr))
        expr = expr.replace(lambda e: isinstance(e, Expect), lambda e: self._reduce(e.arg))
        return _restore_names(self._reduce(expr))

    def _free_template_indices(self, expr: sp.Basic) -> sp.Basic:
        """Rename summation indices that coincide with a family's template index.

        Unevaluated family moments are written at the template index (``E[q[l]**2]``, the
        same at every index); a ``Sum(..., (l, 1, d))`` must not capture that ``l``.
        """
        templates = {fam.index for fam in self.families}

        def rename(s: sp.Sum) -> sp.Sum:
            mapping = {v: _renamed(v) for v, *_ in s.limits if v in templates}
            if not mapping:
                return s
            limits = [(mapping.get(v, v), *(b.xreplace(mapping) for b in bounds)) for v, *bounds in s.limits]
            return sp.Sum(s.function.xreplace(mapping), *limits)

        return expr.replace(lambda e: isinstance(e, sp.Sum), rename) if templates and expr.has(sp.Sum) else expr

    def variance(self, x: Any) -> sp.Expr:
        """Var(x) = E[x^2] - E[x]^2."""
        x = sp.sympify(x)
        return sp.expand(self(x**2) - self(x) ** 2)

    def covariance(self, x: Any, y: Any) -> sp.Expr:
        """Cov(x, y) = E[x y] - E[x] E[y]."""
        x, y = sp.sympify(x), sp.sympify(y)
        return sp.expand(self(x * y) - self(x) * self(y))

    def unevaluated(self, expr: Any) -> set[Expect]:
        """The ``Expect`` nodes left in ``self(expr)``: the quantities nothing stated determines."""
        return set(sp.sympify(self(expr)).atoms(Expect))

    def _reduce(self, expr: sp.Expr) -> sp.Expr:
        if self.explicit_sums:
            expr = expr.replace(lambda e: isinstance(e, sp.Sum) and self._has_random(e) and self._numeric_limits(e),
                                lambda e: e.doit())
        total = sp.Integer(0)
        for term in sp.Add.make_args(sp.expand(expr)):
            try:
                total += self._term(term)
            except _Irreducible:
                total += Expect(term)
        return sp.expand(total.doit()) if total.has(sp.Sum) else sp.expand(total)

    def _has_random(self, e: sp.Basic) -> bool:
        return any(self._group_key(a) is not None for a in sp.preorder_traversal(e)
                   if isinstance(a, (sp.Symbol, sp.Indexed)))

    @staticmethod
    def _numeric_limits(s: sp.Sum) -> bool:
        return all(lo.is_Integer and hi.is_Integer for _, lo, hi in s.limits)

    def _term(self, term: sp.Expr) -> sp.Expr:
        """E of one product term: sums are merged into one multiple sum, then split by index pattern."""
        coeff, factors, limits = sp.Integer(1), [], []
        for factor in sp.Mul.make_args(term):
            base, exp = factor.as_base_exp()
            if isinstance(base, sp.Sum) and self._has_random(base):
                if not (exp.is_Integer and exp > 0):
                    raise _Irreducible
                for _ in range(int(exp)):
                    body, lims = self._fresh(base)
                    factors.append(body)
                    limits += lims
            elif self._has_random(factor):
                factors.append(factor)
            else:
                coeff *= factor
        if not factors:
            return coeff
        if not limits:
            return coeff * self._product(sp.Mul(*factors), dummies=())
        return coeff * self._multiple_sum(sp.Mul(*factors), limits)

    @staticmethod
    def _fresh(s: sp.Sum) -> tuple[sp.Expr, list[tuple]]:
        """The summand and limits of ``s`` with fresh dummy indices (so products never clash)."""
        mapping, limits = {}, []
        for limit in s.limits:
            if len(limit) != 3:
                raise _Irreducible
            v, lo, hi = limit
            new = _renamed(v)
            mapping[v] = new
            limits.append((new, lo.xreplace(mapping), hi.xreplace(mapping)))
        return s.function.xreplace(mapping), limits

    def _multiple_sum(self, body: sp.Expr, limits: list[tuple]) -> sp.Expr:
        """E[sum over ``limits`` of ``body``], monomial by monomial of the expanded body."""
        return sp.Add(*[self._multiple_sum_monomial(m, limits) for m in sp.Add.make_args(sp.expand(body))])

    def _multiple_sum_monomial(self, mono: sp.Expr, limits: list[tuple]) -> sp.Expr:
        for factor in sp.Mul.make_args(mono):  # a nested sum: pull its indices out
            base, exp = factor.as_base_exp()
            if isinstance(base, sp.Sum) and self._has_random(base):
                if not (exp.is_Integer and exp > 0):
                    raise _Irreducible
                rest, extra = mono / factor, []
                for _ in range(int(exp)):
                    body, lims = self._fresh(base)
                    rest, extra = rest * body, extra + lims
                return self._multiple_sum(rest, limits + extra)
        dummies = [v for v, _, _ in limits]
        ranges = {(lo, hi) for _, lo, hi in limits}
        if len(ranges) != 1:
            raise _Irreducible  # different ranges: the index patterns are not counted here
        ((lo, hi),) = ranges
        if lo.has(*dummies) or hi.has(*dummies):
            raise _Irreducible  # triangular sums
        count = hi - lo + 1
        total = sp.Integer(0)
        for partition in multiset_partitions(list(range(len(dummies)))):
            reps = [dummies[block[0]] for block in partition]
            value = sp.expand(self._product(mono.xreplace({dummies[i]: dummies[block[0]]
                                                           for block in partition for i in block}),
                                            dummies=tuple(reps)))
            if not value.has(*reps):
                total += value * sp.ff(count, len(partition))  # index tuples with exactly this pattern
            elif len(partition) == 1:
                total += sp.Sum(value, (reps[0], lo, hi))
            else:
                raise _Irreducible  # index-dependent terms over distinct indices
        return total

    def _product(self, mono: sp.Expr, dummies: tuple) -> sp.Expr:
        """E of a product: non-random factors out, the rest factored over independent groups.

        ``dummies`` are summation indices known to be pairwise distinct and in range: family
        variables at distinct dummies belong to distinct groups.
        """
        total = sp.Integer(0)
        for term in sp.Add.make_args(sp.expand(mono)):
            coeff, parts = sp.Integer(1), {}
            for factor in sp.Mul.make_args(term):
                atoms = self._random_atoms(factor)
                if not atoms:
                    coeff *= factor
                    continue
                keys = {self._group_key(a) for a in atoms}
                if len(keys) != 1:
                    raise _Irreducible  # a function of several groups, e.g. exp(q + k)
                (key,) = keys
                parts.setdefault(key, []).append(factor)
            self._check_distinct([k for k in parts if k[0] == "f"], dummies)
            value = coeff
            for key, fs in parts.items():
                value *= self._moment(key, sp.Mul(*fs))
            total += value
        return total

    @staticmethod
    def _check_distinct(keys: list[tuple], dummies: tuple) -> None:
        """Family groups at two index expressions are independent only if the indices provably differ."""
        for a in range(len(keys)):
            for b in range(a + 1, len(keys)):
                if keys[a][1] != keys[b][1]:
                    continue
                i, j = keys[a][2], keys[b][2]
                if i in dummies and j in dummies:
                    continue  # distinct blocks of an index pattern
                diff = sp.simplify(i - j)
                if not (diff.is_number and diff != 0):
                    raise _Irreducible  # i and j might coincide

    def _moment(self, key: tuple, part: sp.Expr) -> sp.Expr:
        """The stated moment of one group's factor, or an unevaluated Expect."""
        stated = self._moments.get(key[:2], {})
        if key[0] == "f":
            fam = self.families[key[1]]
            to_template = {b[key[2]]: b[fam.index] for b in fam.bases}
            template = part.xreplace(to_template)
            if _powers(template) in stated:
                return stated[_powers(template)]
            # identically distributed: the unknown moment is the same at every index
            return Expect(template)
        return stated.get(_powers(part), Expect(part))


def _renamed(v: sp.Symbol) -> sp.Dummy:
    """A fresh summation index standing for ``v``, with its name and assumptions (to give them back)."""
    return sp.Dummy(v.name, **v.assumptions0)


def _restore_names(expr: sp.Basic) -> sp.Basic:
    """Give fresh summation indices their original names back where that captures nothing."""
    if not isinstance(expr, sp.Basic) or not expr.has(sp.Sum):
        return expr

    def restore(s: sp.Sum) -> sp.Sum:
        mapping = {}
        for v, *_ in s.limits:
            original = sp.Symbol(v.name, **v.assumptions0) if isinstance(v, sp.Dummy) else None
            if original is not None and original not in s.function.free_symbols and original not in mapping.values():
                mapping[v] = original
        if not mapping:
            return s
        limits = [(mapping.get(v, v), *(b.xreplace(mapping) for b in bounds)) for v, *bounds in s.limits]
        return sp.Sum(s.function.xreplace(mapping), *limits)

    return expr.replace(lambda e: isinstance(e, sp.Sum), restore)


def describe(operator: ExpectationOperator) -> str:
    """One line saying what ``operator`` knows: its independent groups and stated moments."""
    parts = [", ".join("{" + ", ".join(map(str, g)) + "}" for g in operator.groups)] if operator.groups else []
    for fam in operator.families:
        parts.append("{" + ", ".join(str(b[fam.index]) for b in fam.bases) + "}" + f" for each {fam.index} (iid)")
    stated = [f"E[{sp.Mul(*[b**e for b, e in key])}] = {value}"
              for moments in operator._moments.values() for key, value in moments.items()]
    return ("independent groups " + "; ".join(parts) + "; stated moments: " + (", ".join(stated) or "none"))


class ByExpectation(Checker):
    """A step checked with an :class:`ExpectationOperator`: ``E[lhs] - E[rhs]`` reduces to 0.

    Parameters
    ----------
    operator : ExpectationOperator
        What the step may use: linearity, the stated independence and the stated moments.
    lhs, rhs : sympy expressions
        The two sides as expressions in the random variables (``Expect`` nodes allowed);
        each is reduced by ``operator`` before the zero test.
    uses : str
        What the step relies on, for the method string (``"stated independence"``,
        ``"stated moments, symbolic d_k"``...).
    """

    def __init__(self, operator: ExpectationOperator, lhs: Any, rhs: Any, *, uses: str):
        if not isinstance(operator, ExpectationOperator):
            raise TypeError(f"operator must be an ExpectationOperator, got {type(operator).__name__}")
        self.operator, self.lhs, self.rhs = operator, sp.sympify(lhs), sp.sympify(rhs)
        self.method = f"expectation operator: linearity + {uses}"

    def run(self, ctx: Any) -> tuple[bool, str]:
        left, right = self.operator(self.lhs), self.operator(self.rhs)
        ok, note = is_zero(left - right)
        pending = sorted(map(str, left.atoms(Expect) | right.atoms(Expect)))
        rest = f"; unevaluated (nothing stated fixes them): {', '.join(pending)}" if pending else ""
        return ok, f"E[lhs] = {left}; E[rhs] = {right}: {note}{rest} ({describe(self.operator)})"
