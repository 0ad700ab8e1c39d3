r"""Building blocks for derivations about attention, with SymPy's pitfalls handled.

Two ways to state something about attention so that SymPy can check it:

* **index level, for every n** (:func:`softmax_indexed`, :func:`index_derivative`):
  ``sigma_i = exp(z_i / T) / Sum(exp(z_k / T), (k, 1, n))`` with ``z = IndexedBase("z")``
  and a symbolic ``n``. Differentiating gives a ``Sum`` of ``KroneckerDelta``;
  :func:`index_derivative` applies the recipe that works (``diff``, then ``doit``, then
  ``refine`` with ``1 <= index <= n`` to drop the ``Piecewise``), never ``simplify`` first
  (sympy #14570, #27359). Matrix-expression calculus (``MatrixSymbol`` with an elementwise
  ``exp``) is not used: it raises RecursionError on softmax (sympy #21062, #17972).
* **explicit sizes** (:func:`softmax_vector`, :func:`symbol_matrix`, :func:`attention_at`,
  :func:`jacobian`, :func:`gradient`): every entry is its own Symbol and gradients are taken
  by differentiating entries. :func:`exp_prepare` turns the exponentials into positive
  symbols so the zero test decides the resulting rational functions quickly and exactly.

:class:`ForAllN` states "for every n": it checks the general (symbolic n) form when SymPy
can, and otherwise a sweep of explicit sizes, and its method says which one it did.

Shape letters: N queries, M keys, K key/query width, V value width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import sympy as sp

from .derivation import AtSizes, Checker, Symbolic, exp_to_symbols, format_sizes

__all__ = [
    "softmax_indexed",
    "index_range",
    "index_derivative",
    "softmax_vector",
    "symbol_matrix",
    "row_softmax",
    "jacobian",
    "gradient",
    "exp_prepare",
    "ExplicitAttention",
    "attention_at",
    "ForAllN",
    "normal_moments",
    "gaussian_pair_moments",
]


# --------------------------------------------------------------------------- index level


def softmax_indexed(z: sp.IndexedBase, i: sp.Expr, n: sp.Expr, *, k: sp.Symbol | None = None,
                    temperature: sp.Expr | None = None) -> sp.Expr:
    r"""The ``i``-th softmax weight of a length-``n`` vector, at index level.

    Parameters
    ----------
    z : IndexedBase
        The logits, ``z[1] .. z[n]`` (declare it ``real=True``).
    i : Expr
        The index of the weight (an integer Symbol, or a number).
    n : Expr
        The length (a positive integer Symbol for "every n").
    k : Symbol, optional
        The summation index (default: a fresh integer Dummy ``k``).
    temperature : Expr, optional
        ``T`` in ``softmax(z / T)`` (declare it ``positive=True``); default 1.

    Returns
    -------
    Expr
        ``exp(z[i] / T) / Sum(exp(z[k] / T), (k, 1, n))``.

    Examples
    --------
    >>> import sympy as sp
    >>> z = sp.IndexedBase("z", real=True)
    >>> i, n = sp.symbols("i n", integer=True, positive=True)
    >>> k = sp.Symbol("k", integer=True)
    >>> softmax_indexed(z, i, n, k=k)
    exp(z[i])/Sum(exp(z[k]), (k, 1, n))
    """
    k = sp.Dummy("k", integer=True) if k is None else k
    scale = 1 if temperature is None else 1 / sp.sympify(temperature)
    return sp.exp(z[i] * scale) / sp.Sum(sp.exp(z[k] * scale), (k, 1, n))


def index_range(n: sp.Expr, *indices: sp.Expr) -> Any:
    """The assumption ``1 <= index <= n`` for each index, as a SymPy ``Q`` predicate.

    Pass it to :class:`~proofs.Symbolic` (``assumptions=``) and :func:`index_derivative`:
    it is what lets ``refine`` drop the ``Piecewise`` a sum of ``KroneckerDelta`` leaves.
    """
    if not indices:
        raise ValueError("index_range needs at least one index")
    return sp.And(*[sp.Q.ge(ix, 1) & sp.Q.le(ix, n) for ix in indices])


def index_derivative(expr: sp.Expr, wrt: sp.Indexed, assumptions: Any = None) -> sp.Expr:
    """``d expr / d wrt`` at index level: ``diff``, ``doit``, then ``refine`` (never ``simplify``
    first: sympy #14570, #27359).

    Parameters
    ----------
    expr : Expr
        An index-level expression (``softmax_indexed(z, i, n)``...).
    wrt : Indexed
        The variable, ``z[j]``.
    assumptions : Q predicate, optional
        Typically :func:`index_range` of the indices: drops the ``Piecewise`` that
        ``Sum(KroneckerDelta(j, k) ..., (k, 1, n))`` evaluates to.

    Returns
    -------
    Expr
        The derivative with the sums over a ``KroneckerDelta`` collapsed.
    """
    out = sp.diff(expr, wrt).doit()
    if assumptions is not None:
        out = sp.refine(out, assumptions)
    return out


# --------------------------------------------------------------------------- explicit sizes


def symbol_matrix(name: str, rows: int, cols: int, **assumptions: Any) -> sp.Matrix:
    """A ``rows x cols`` matrix of distinct Symbols ``name_ab`` (1-based), real by default.

    Parameters
    ----------
    name : str
        Stem of the entries' names (``"q"`` gives ``q_11, q_12, ...``).
    rows, cols : int
        The shape.
    **assumptions
        SymPy assumptions for every entry (default ``real=True``).
    """
    for label, value in (("rows", rows), ("cols", cols)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"symbol_matrix: {label} must be a positive int, got {value!r}")
    assumptions = assumptions or {"real": True}
    comma = "," if rows > 9 or cols > 9 else ""  # q_1,12 and q_11,2 must not both be q_1112
    return sp.Matrix(rows, cols, lambda a, b: sp.Symbol(f"{name}_{a + 1}{comma}{b + 1}", **assumptions))


def softmax_vector(n: int, prefix: str = "z", *, temperature: sp.Expr | None = None) -> tuple[list[sp.Symbol], sp.Matrix]:
    """Real symbols ``z_1 .. z_n`` and the explicit softmax column vector of ``z / T``.

    Parameters
    ----------
    n : int
        The length.
    prefix : str
        Name stem of the logits.
    temperature : Expr, optional
        ``T`` (declare it ``positive=True``); default 1.

    Returns
    -------
    (list of Symbol, Matrix)
        The logits and the (n, 1) vector of weights.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"softmax_vector: n must be a positive int, got {n!r}")
    z = list(sp.symbols(f"{prefix}_1:{n + 1}", real=True))
    return z, row_softmax(sp.Matrix([z]), temperature=temperature).T


def row_softmax(scores: sp.Matrix, *, temperature: sp.Expr | None = None) -> sp.Matrix:
    """The softmax of each row of an explicit matrix (of ``scores / T``)."""
    scale = 1 if temperature is None else 1 / sp.sympify(temperature)
    e = scores.applyfunc(lambda s: sp.exp(s * scale))
    return sp.Matrix(e.rows, e.cols, lambda a, b: e[a, b] / sum(e[a, c] for c in range(e.cols)))


def jacobian(outputs: sp.Matrix | Iterable[sp.Expr], inputs: Iterable[sp.Expr]) -> sp.Matrix:
    """``J[a, b] = d outputs[a] / d inputs[b]`` (rows: outputs, columns: inputs).

    ``sympy.derive_by_array`` puts the differentiation index first (``[b, a]``): this is the
    usual orientation, the one ``diag(s) - s s^T`` is written in.
    """
    outputs = sp.Matrix(list(outputs))
    return outputs.jacobian(sp.Matrix(list(inputs)))


def gradient(f: sp.Expr, wrt: sp.Matrix) -> sp.Matrix:
    """``df / dW`` for a scalar ``f`` and an explicit matrix ``W`` of symbols, entry by entry
    (same shape as ``W``): gradients by differentiating explicit entries, no matrix calculus."""
    if not isinstance(wrt, sp.MatrixBase):
        raise TypeError(f"gradient: wrt must be an explicit sympy Matrix of symbols, got {type(wrt).__name__}")
    return wrt.applyfunc(lambda w: sp.diff(f, w))


def exp_prepare(keys: Iterable[sp.Expr]) -> Callable[[Any], Any]:
    """A ``prepare=`` for zero tests: ``exp(r * key)`` becomes ``e_key**r`` with ``e_key > 0``.

    Each exponential of a rational multiple of a key is replaced by a power of one positive
    symbol, so softmax expressions become rational functions that ``cancel`` decides exactly
    and quickly (``exp(a)**2`` and ``exp(2 a)`` become the same thing).

    Parameters
    ----------
    keys : iterable of Expr
        The exponents' building blocks: the logits ``z_1 .. z_n``, or ``z_i / T`` with a
        temperature, or the entries of a score matrix.
    """
    table = {key: sp.Symbol(f"e_{idx}", positive=True) for idx, key in enumerate(keys)}
    return lambda expr: exp_to_symbols(expr, table)


@dataclass(frozen=True)
class ExplicitAttention:
    """Scaled dot-product attention at explicit sizes, every entry a Symbol.

    Attributes
    ----------
    q : Matrix (N, K)
    k : Matrix (M, K)
    v : Matrix (M, V)
    scores : Matrix (N, M)
        ``scale * q k^T``.
    weights : Matrix (N, M)
        Row softmax of the scores.
    output : Matrix (N, V)
        ``weights v``.
    scale : Expr
    """

    q: sp.Matrix
    k: sp.Matrix
    v: sp.Matrix
    scores: sp.Matrix
    weights: sp.Matrix
    output: sp.Matrix
    scale: sp.Expr

    def exp_prepare(self) -> Callable[[Any], Any]:
        """:func:`exp_prepare` keyed on the score entries."""
        return exp_prepare(list(self.scores))


def attention_at(n: int, m: int, d_k: int, d_v: int, *, scale: sp.Expr | None = None) -> ExplicitAttention:
    """``softmax(scale q k^T) v`` with symbolic entries, at explicit sizes.

    Parameters
    ----------
    n, m, d_k, d_v : int
        N queries, M keys, K key/query width, V value width.
    scale : Expr, optional
        Default ``1 / sqrt(d_k)``.

    Returns
    -------
    ExplicitAttention
    """
    q, k, v = symbol_matrix("q", n, d_k), symbol_matrix("k", m, d_k), symbol_matrix("v", m, d_v)
    scale = 1 / sp.sqrt(d_k) if scale is None else sp.sympify(scale)
    scores = (q * k.T) * scale
    weights = row_softmax(scores)
    return ExplicitAttention(q, k, v, scores, weights, weights * v, scale)


# --------------------------------------------------------------------------- moments


def normal_moments(order: int = 4) -> dict[int, sp.Expr]:
    """``{p: E[Z^p]}`` for ``p = 1..order`` and ``Z ~ N(0, 1)``, computed by sympy.stats."""
    from sympy import stats

    if not isinstance(order, int) or order < 1:
        raise ValueError(f"normal_moments: order must be a positive int, got {order!r}")
    z = stats.Normal("Z", 0, 1)
    return {p: sp.simplify(stats.E(z**p)) for p in range(1, order + 1)}


def gaussian_pair_moments(q: sp.Expr, k: sp.Expr, rho: sp.Expr, order: int = 4) -> dict[sp.Expr, sp.Expr]:
    """Joint moments ``E[q^a k^b]`` (``1 <= a + b <= order``) of a standard bivariate Normal pair
    with correlation ``rho``: the moments to state for correlated (q, k) components.

    They are computed, not looked up: ``(q, k)`` has the law of ``(z1, rho z1 + sqrt(1 - rho^2) z2)``
    for independent standard Normals ``z1, z2`` (a Gaussian vector is determined by its mean
    and covariance), whose moments come from sympy.stats; the expectation operator of
    :mod:`proofs.expectation` then needs only linearity and the independence of ``z1, z2``.

    Parameters
    ----------
    q, k : Expr
        The pair's variables as they appear in the moments' keys (``q[l], k[l]`` for a family).
    rho : Expr
        The correlation (a Symbol with ``-1 <= rho <= 1``, or a number).
    order : int
        Highest total degree.

    Returns
    -------
    dict
        ``{q: 0, k: 0, q**2: 1, q*k: rho, ..., q**2 * k**2: 1 + 2 rho**2, ...}``.
    """
    from .expectation import ExpectationOperator

    z1, z2 = sp.symbols("z_1 z_2", real=True)
    moments = normal_moments(order)
    expect = ExpectationOperator(groups=[[z1], [z2]],
                                 moments={z**p: m for z in (z1, z2) for p, m in moments.items()})
    k_as = rho * z1 + sp.sqrt(1 - rho**2) * z2
    return {q**a * k**b: sp.expand(expect(z1**a * k_as**b))
            for a in range(order + 1) for b in range(order + 1 - a) if a + b}


# --------------------------------------------------------------------------- for all n


class ForAllN(Checker):
    """"For every n": the general form symbolically where SymPy can, else a sweep of sizes.

    The symbolic test runs first; when SymPy cannot reduce ``general`` to 0, the statement
    is checked at each explicit size instead and the method says so
    (``"explicit sizes n=2..6 (symbolic n not reduced)"``), so a reader knows which one
    holds.

    Parameters
    ----------
    general : Expr, Eq or None
        What must vanish for a symbolic ``n`` (``None``: the step's ``lhs - rhs``).
    at_size : callable
        ``at_size(n)`` returns what must vanish at one explicit size.
    sizes : iterable of int
        The sizes of the sweep.
    label : str
        The size's name in the method string.
    assumptions : Q predicate, optional
        For the symbolic test (``index_range(n, i, j)``...).
    prepare : callable, optional
        Applied to each explicit-size expression (``exp_prepare(...)``).
    """

    def __init__(self, general: Any, at_size: Callable[..., Any], sizes: Iterable[Any], label: str = "n", *,
                 assumptions: Any = None, prepare: Callable[[Any], Any] | None = None):
        self.symbolic = Symbolic(general, assumptions=assumptions)
        self.sweep = AtSizes(at_size, sizes, label, prepare=prepare)
        self.method = f"symbolic (all {label}), else explicit sizes {format_sizes(self.sweep.sizes, label)}"

    def run(self, ctx: Any) -> tuple[bool, str]:
        try:
            ok, note = self.symbolic.run(ctx)
        except (TypeError, ValueError, NotImplementedError, RecursionError, StopIteration) as exc:
            ok, note = False, f"the symbolic attempt raised {type(exc).__name__}: {exc}"  # SymPy gaps: sweep instead
        if ok:
            self.method = f"symbolic (all {self.sweep.label})"
            return True, note
        self.method = f"{self.sweep.method} (symbolic {self.sweep.label} not reduced)"
        ok, sweep_note = self.sweep.run(ctx)
        return ok, f"{sweep_note}; the general form was not reduced: {note}"

    def residual_cases(self, ctx: Any) -> list[tuple[str, Any, Any]]:
        """The zero tests of the sweep, ``(where, target, assumptions)``, for a diagnosis."""
        cases = []
        for size in self.sweep.sizes:
            target = self.sweep.build(*size) if isinstance(size, tuple) else self.sweep.build(size)
            if self.sweep.prepare is not None:
                target = self.sweep.prepare(target)
            cases.append((f"at {self.sweep.label}={size}", target, None))
        return cases
