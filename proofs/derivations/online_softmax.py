"""Derivation: the online-softmax merge of two key blocks is exact, associative and commutative.

The tiled attention path keeps, for every query row and every block X of keys, a state
``(m_X, l_X, o_X)``: a reference value ``m_X`` (the running maximum), the sum
``l_X = sum_{j in X} exp(s_j - m_X)`` and the unnormalised accumulator
``o_X = sum_{j in X} exp(s_j - m_X) v_j``. Two states merge as::

    m = max(m_A, m_B)
    l = exp(m_A - m) l_A + exp(m_B - m) l_B
    o = exp(m_A - m) o_A + exp(m_B - m) o_B

The derivation proves, symbolically in the block sizes p and q, that the merged state is the
state of the union (so ``o / l`` is the softmax-weighted sum over the union and
``m + log l`` its logsumexp), that the identities hold for any reference values (the maximum
only keeps every term in (0, 1]), that the merge is commutative and associative, that an
empty block ``(-inf, 0, 0)`` is neutral, and that two empty blocks need a guard (IEEE gives
``exp(-inf - (-inf)) = nan``). A last step merges blocks of random scores in NumPy and
compares with ``numerics.scaled_dot_product_attention(..., return_lse=True)``.

One value coordinate is shown: the V coordinates of the accumulator are merged with the
same factors, independently. A tile of query rows applies the same rule row by row.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import numpy as np
import sympy as sp

from ..derivation import AtSizes, Chain, Cited, Custom, Derivation, Step, Symbolic, split_sums
from ._crosscheck import max_difference_check
from ._registry import register

__all__ = [
    "online_softmax_merge",
    "build_merge_derivation",
    "merge_symbolic",
    "merge_arrays",
    "block_state",
    "blockwise_softmax",
    "numeric_comparison",
]

#: (p, q) block sizes of the explicit-size cross-check (actual maxima as reference values).
SIZES = [(1, 1), (1, 2), (2, 1), (2, 2), (3, 2)]
#: (N, M, K, V) and key-block partitions of the numeric cross-check.
NUMERIC_CASES = [((3, 7, 4, 2), (3, 4)), ((4, 9, 3, 3), (1, 2, 6)), ((2, 5, 2, 2), (5,)), ((5, 8, 4, 1), (2, 2, 2, 2))]
NUMERIC_TOL = 1e-12

State = tuple[Any, Any, Any]


def merge_symbolic(a: State, b: State) -> State:
    """The merge rule on SymPy states ``(m, l, o)``."""
    (m_a, l_a, o_a), (m_b, l_b, o_b) = a, b
    m = sp.Max(m_a, m_b)
    return m, sp.exp(m_a - m) * l_a + sp.exp(m_b - m) * l_b, sp.exp(m_a - m) * o_a + sp.exp(m_b - m) * o_b


def merge_arrays(a: State, b: State) -> State:
    """The merge rule on NumPy states: m (N,), l (N,), o (N, V); guarded for two empty blocks.

    Where both maxima are -inf the factors are taken at the reference 0 (so they are
    ``exp(-inf) = 0``), not at ``-inf - (-inf) = nan``.
    """
    (m_a, l_a, o_a), (m_b, l_b, o_b) = a, b
    m = np.maximum(m_a, m_b)
    ref = np.where(np.isfinite(m), m, 0.0)
    f_a, f_b = np.exp(m_a - ref), np.exp(m_b - ref)
    return m, f_a * l_a + f_b * l_b, f_a[:, None] * o_a + f_b[:, None] * o_b


def block_state(z: np.ndarray, v: np.ndarray) -> State:
    """The state of one key block: scores z (N, p) (-inf for an excluded key), values v (p, V)."""
    m = np.max(z, axis=1) if z.shape[1] else np.full(z.shape[0], -np.inf)
    ref = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(z - ref[:, None])
    return m, e.sum(axis=1), e @ v


def blockwise_softmax(z: np.ndarray, v: np.ndarray, sizes: Sequence[int],
                      merge: Callable[[State, State], State] = merge_arrays) -> tuple[np.ndarray, np.ndarray]:
    """``(out (N, V), lse (N,))`` of softmax(z) v, keys split into blocks of ``sizes``, merged left to right.

    A row whose every key is excluded gets output 0 and lse -inf.
    """
    if sum(sizes) != z.shape[1]:
        raise ValueError(f"block sizes {tuple(sizes)} must add up to the key length M = {z.shape[1]}")
    edges = np.cumsum([0, *sizes])
    state = (np.full(z.shape[0], -np.inf), np.zeros(z.shape[0]), np.zeros((z.shape[0], v.shape[1])))
    for lo, hi in zip(edges[:-1], edges[1:]):
        state = merge(state, block_state(z[:, lo:hi], v[lo:hi]))
    m, l, o = state
    empty = l == 0
    out = np.where(empty[:, None], 0.0, o / np.where(empty, 1.0, l)[:, None])
    lse = np.where(empty, -np.inf, m + np.log(np.where(empty, 1.0, l)))
    return out, lse


def numeric_comparison(merge: Callable[[State, State], State] = merge_arrays, seed: int = 20261129) -> dict[str, float]:
    """Max |difference| between the blockwise merge and ``numerics.scaled_dot_product_attention``.

    For each case of :data:`NUMERIC_CASES`: random float64 q, k, v and bias, a boolean mask
    that excludes a whole key block of row 0 and every key of the last row, scores
    ``z = q k^T / sqrt(K) + bias`` (-inf where masked) merged block by block, against numerics'
    output and ``return_lse``.
    """
    from numerics import scaled_dot_product_attention

    rng = np.random.default_rng(seed)
    worst = {"output": 0.0, "lse": 0.0, "lse_infinite_rows_differ": 0.0}
    for (n, m, k_dim, v_dim), sizes in NUMERIC_CASES:
        q, k = 2 * rng.standard_normal((n, k_dim)), 2 * rng.standard_normal((m, k_dim))
        v, bias = rng.standard_normal((m, v_dim)), rng.standard_normal((n, m))
        mask = rng.random((n, m)) > 0.3
        mask[0, : sizes[0]] = False
        mask[-1, :] = False
        z = np.where(mask, q @ k.T / np.sqrt(k_dim) + bias, -np.inf)
        out, lse = blockwise_softmax(z, v, sizes, merge)
        ref_out, ref_lse = scaled_dot_product_attention(q, k, v, mask=mask, bias=bias, return_lse=True)
        ref_out, ref_lse = np.asarray(ref_out), np.asarray(ref_lse)
        finite = np.isfinite(ref_lse)
        worst["output"] = max(worst["output"], float(np.max(np.abs(out - ref_out))))
        worst["lse"] = max(worst["lse"], float(np.max(np.abs(lse[finite] - ref_lse[finite]), initial=0.0)))
        worst["lse_infinite_rows_differ"] += float(np.sum(np.isfinite(lse) != finite))
    return worst


# --------------------------------------------------------------------------- symbolic pieces

_s, _v = sp.IndexedBase("s", real=True), sp.IndexedBase("v", real=True)
_j, _k = sp.symbols("j k", integer=True)
_p, _q = sp.symbols("p q", integer=True, positive=True)
_mA, _mB, _mC, _m = sp.symbols("m_A m_B m_C m", real=True)
_lA, _lB, _lC, _l = sp.symbols("l_A l_B l_C l", positive=True)
_oA, _oB, _oC, _o = sp.symbols("o_A o_B o_C o", real=True)


def _block_sums(ref: sp.Expr, lo: Any, hi: Any) -> tuple[sp.Expr, sp.Expr]:
    e = sp.exp(_s[_j] - ref)
    return sp.Sum(e, (_j, lo, hi)), sp.Sum(e * _v[_j], (_j, lo, hi))


def _union(ref: sp.Expr = _m) -> tuple[sp.Expr, sp.Expr]:
    return _block_sums(ref, 1, _p + _q)


def _unfolder(merge: Callable[[State, State], State]) -> Callable[[Any], Any]:
    """Displayed symbols -> their definitions: m, l, o through ``merge``; l_A... as block sums."""
    l_a, o_a = _block_sums(_mA, 1, _p)
    l_b, o_b = _block_sums(_mB, _p + 1, _p + _q)
    m, l, o = merge((_mA, _lA, _oA), (_mB, _lB, _oB))
    table = {_l: l, _o: o, _lA: l_a, _oA: o_a, _lB: l_b, _oB: o_b}

    def unfold(expr: Any) -> Any:
        if not isinstance(expr, (sp.Basic, sp.MatrixBase)):
            return expr
        for _ in range(3):
            expr = expr.xreplace(table)
        return expr.xreplace({_m: m})

    return unfold


def _explicit_difference(merge: Callable[[State, State], State]) -> Callable[[int, int], list]:
    """At block sizes (p, q), reference values the actual block maxima: m, o/l and e^m l of the merge
    minus max, softmax-weighted sum and sum of exponentials over the union."""

    def build(p: int, q: int) -> list:
        s = sp.symbols(f"s_1:{p + q + 1}", real=True)
        v = sp.symbols(f"v_1:{p + q + 1}", real=True)

        def state(idx: range) -> State:
            m = sp.Max(*(s[t] for t in idx))
            return m, sum(sp.exp(s[t] - m) for t in idx), sum(sp.exp(s[t] - m) * v[t] for t in idx)

        m, l, o = merge(state(range(p)), state(range(p, p + q)))
        total = sum(sp.exp(x) for x in s)
        weighted = sum(sp.exp(x) * y for x, y in zip(s, v))
        return [m - sp.Max(*s), sp.expand(o * total) - sp.expand(weighted * l), sp.expand(sp.exp(m) * l) - total]

    return build


def _any_tree_spot_check(merge: Callable[[State, State], State]) -> Callable[[], tuple[bool, str]]:
    """All 5 bracketings x 24 orders of 4 random states, merged by ``merge`` in 50-digit floats."""

    def run() -> tuple[bool, str]:
        rng = np.random.default_rng(7)
        states = [tuple(sp.Float(repr(float(x)), 50) for x in (rng.normal(0, 3), rng.uniform(1, 4), rng.normal()))
                  for _ in range(4)]

        def trees(items: list) -> list:
            if len(items) == 1:
                return [items[0]]
            out = []
            for cut in range(1, len(items)):
                out += [tuple(sp.N(x, 50) for x in merge(a, b)) for a in trees(items[:cut]) for b in trees(items[cut:])]
            return out

        results = [r for order in itertools.permutations(states) for r in trees(list(order))]
        worst = max(abs(a - b) for r in results for a, b in zip(r, results[0]))
        ok = bool(worst < sp.Float("1e-40"))
        return ok, f"{len(results)} merge trees of 4 states: max |difference| = {sp.N(worst, 3)} (< 1e-40 required)"

    return run


def _double_empty() -> tuple[bool, str]:
    """exp(-inf - (-inf)) is undefined (SymPy nan, IEEE nan); the guarded NumPy merge gives (-inf, 0, 0)."""
    sym = sp.exp(-sp.oo - (-sp.oo))
    with np.errstate(invalid="ignore"):
        ieee = np.exp(np.float64(-np.inf) - np.float64(-np.inf))
    empty = (np.array([-np.inf]), np.array([0.0]), np.zeros((1, 1)))
    m, l, o = merge_arrays(empty, empty)
    guarded = bool(m[0] == -np.inf and l[0] == 0 and o[0, 0] == 0)
    ok = sym is sp.nan and bool(np.isnan(ieee)) and guarded
    return ok, f"SymPy: exp(-oo - (-oo)) = {sym}; NumPy: {ieee}; guarded merge of two empty states: ({m[0]}, {l[0]}, {o[0, 0]})"


def _max_keeps_terms_bounded() -> tuple[bool, str]:
    """Spot check of 1 <= l_X <= |X| with m_X the block maximum (float64, random blocks)."""
    rng = np.random.default_rng(11)
    bad = 0
    for size in range(1, 9):
        z = 30 * rng.standard_normal((50, size))
        _, l, _ = block_state(z, np.ones((size, 1)))
        bad += int(np.sum((l < 1) | (l > size)))
    return bad == 0, f"blocks of 1..8 keys, 50 rows each, scores ~ N(0, 30^2): {bad} sums outside [1, |X|]"


def build_merge_derivation(merge: Callable[[State, State], State] = merge_symbolic,
                           merge_numeric: Callable[[State, State], State] = merge_arrays) -> Derivation:
    """The derivation for the merge rule ``merge`` (SymPy states) and its array form ``merge_numeric``.

    The registered derivation uses :func:`merge_symbolic` and :func:`merge_arrays`; tests pass
    a wrong rule (e.g. one that forgets to rescale the accumulator) and see steps fail.
    """
    results: dict = {"explicit sizes (p, q)": [list(s) for s in SIZES], "tolerance": NUMERIC_TOL,
                     "numeric cases (N, M, K, V), blocks": [[list(c), list(b)] for c, b in NUMERIC_CASES]}
    unfold = _unfolder(merge)
    union_l, union_o = _union()
    l_a_m, _ = _block_sums(_m, 1, _p)
    state_a, state_b, state_c = (_mA, _lA, _oA), (_mB, _lB, _oB), (_mC, _lC, _oC)
    ratio = union_o / union_l
    softmax_sum = (sp.Sum(sp.exp(_s[_j]) * _v[_j], (_j, 1, _p + _q)) / sp.Sum(sp.exp(_s[_k]), (_k, 1, _p + _q)))

    def tuple_difference(x: State, y: State) -> list:
        return [a - b for a, b in zip(x, y)]

    blocks = r"A = \{1, \dots, p\},\ B = \{p + 1, \dots, p + q\}"
    steps = [
        Step.define(r"l_X", r"\sum_{j \in X} e^{s_j - m_X}",
                    rf"sum of a block $X$ of keys of one query row, ${blocks}$; $s_j$ the final scores; "
                    r"$m_X$ any real number (in practice $\max_{j \in X} s_j$)"),
        Step.define(r"o_X", r"\sum_{j \in X} e^{s_j - m_X} v_j",
                    r"its accumulator, $v_j$ one coordinate of the values; $(m_X, l_X, o_X)$ is the block's state"),
        Step.define(r"m", r"\max(m_A, m_B)", r"the merge rule of the tiled path: reference value"),
        Step.define(r"l", r"e^{m_A - m} l_A + e^{m_B - m} l_B", r"merge rule: rescaled sums"),
        Step.define(r"o", r"e^{m_A - m} o_A + e^{m_B - m} o_B", r"merge rule: rescaled accumulators"),
        Step(r"e^{m_A - m}\, l_A", l_a_m,
             r"rescaling: $e^{m_A - m} e^{s_j - m_A} = e^{s_j - m}$, for any real $m_A$, $m$ and symbolic $p$",
             Symbolic(unfold=False, expr=sp.exp(_mA - _m) * _block_sums(_mA, 1, _p)[0] - l_a_m)),
        Step(_l, union_l, r"the merged sum is the sum over $A \cup B$ (symbolic $p$, $q$, any real $m_A$, $m_B$)"),
        Step(_o, union_o, r"the merged accumulator likewise (symbolic $p$, $q$)"),
        Step(_o / _l, ratio, r"the two lines above, divided",
             Custom(lambda: _zero([unfold(_l - union_l), unfold(_o - union_o)]),
                    "symbolic (both substituted equalities re-checked)")),
        Step(None, softmax_sum, r"$e^{-m}$ cancels: the softmax-weighted sum of the values over $A \cup B$",
             Chain(prepare=split_sums)),
        Step(r"m + \log l", r"\log \sum_{j=1}^{p+q} e^{s_j}",
             r"the logsumexp of the union; checked as $e^{m} l = \sum_j e^{s_j}$ (both sides of the line are "
             r"real: $l > 0$, and $\exp$ is injective)", Symbolic(expr=sp.exp(_m) * _l - sp.Sum(sp.exp(_s[_j]), (_j, 1, _p + _q)))),
        Step(r"m,\ o / l,\ e^{m} l", r"\max_j s_j,\ \textstyle\sum_j \operatorname{softmax}(s)_j v_j,\ \sum_j e^{s_j}",
             r"cross-check with the block maxima as $m_A$, $m_B$ (explicit symbols)",
             AtSizes(_explicit_difference(merge), SIZES, "(p,q)")),
        Step(r"e^{s_j - m_X}", r"(0, 1],\quad 1 \le l_X \le |X| \text{ for } m_X = \max_{j \in X} s_j",
             r"why the maximum: exactness holds for any $m_X$ (above), the maximum keeps every term at most 1 "
             r"(no overflow) and one term equal to 1 (no underflow of $l_X$ to 0)", rel=r"\in",
             check=Cited("exp is positive and increasing on the reals",
                         spot_check=Custom(_max_keeps_terms_bounded, "numeric, float64 random blocks"))),
        Step(r"\operatorname{merge}(A, B)", r"\operatorname{merge}(B, A)",
             r"commutative, for any states", Custom(lambda: _zero(tuple_difference(merge(state_a, state_b),
                                                                                    merge(state_b, state_a))),
                                                   "symbolic (generic states)")),
        Step(r"\operatorname{merge}(\operatorname{merge}(A, B), C)", r"\operatorname{merge}(A, \operatorname{merge}(B, C))",
             r"associative, for any states",
             Custom(lambda: _zero(tuple_difference(merge(merge(state_a, state_b), state_c),
                                                   merge(state_a, merge(state_b, state_c)))),
                    "symbolic (generic states)")),
        Step(r"\text{any merge tree of } X_1, \dots, X_r", r"\text{the state of } X_1 \cup \dots \cup X_r",
             r"any bracketing and any order of the blocks give the same state, by the two lines above",
             Cited("general associative and commutative laws",
                   spot_check=Custom(_any_tree_spot_check(merge), "50-digit floats, every tree of 4 blocks"))),
        Step(r"\operatorname{merge}\bigl((m_A, l_A, o_A), (-\infty, 0, 0)\bigr)", r"(m_A, l_A, o_A)",
             r"a block whose keys are all excluded ($s_j = -\infty$) is neutral, for real $m_A$",
             Custom(lambda: _zero(tuple_difference(merge(state_a, (-sp.oo, sp.Integer(0), sp.Integer(0))), state_a)),
                    "symbolic")),
        Step(r"e^{m_A - m} \text{ at } m_A = m_B = -\infty", r"e^{-\infty - (-\infty)} \text{ undefined}",
             r"two empty blocks: the factors must be guarded (take them at reference 0, giving "
             r"$(-\infty, 0, 0)$); a row with no allowed key then has output 0 and lse $-\infty$",
             Custom(_double_empty, "symbolic and IEEE float64")),
        Step(r"\text{blockwise merge}", r"\text{\ttfamily numerics.scaled\_dot\_product\_attention}",
             r"merged block by block in NumPy (float64) against numerics' output and return_lse, random "
             r"$q, k, v$, bias and mask (an excluded block, an empty row), blocks of " +
             "; ".join("+".join(map(str, b)) + " keys" for _, b in NUMERIC_CASES),
             max_difference_check(lambda: numeric_comparison(merge_numeric), results, NUMERIC_TOL)),
    ]
    return Derivation(
        name="online-softmax-merge",
        title="Online-softmax merge of key blocks",
        statement=(r"For blocks $A$, $B$ of $p$ and $q$ keys with states $(m_X, l_X, o_X)$, the merge "
                   r"$m = \max(m_A, m_B)$, $l = e^{m_A - m} l_A + e^{m_B - m} l_B$, "
                   r"$o = e^{m_A - m} o_A + e^{m_B - m} o_B$ gives $o / l = \sum_{j \in A \cup B} "
                   r"\operatorname{softmax}(s)_j v_j$ and $m + \log l = \log \sum_{j \in A \cup B} e^{s_j}$ "
                   r"(symbolic $p$, $q$); the merge is commutative and associative, so every order and "
                   r"bracketing of the blocks gives the same result (in exact arithmetic)."),
        steps=steps,
        assumptions=["one query row and one value coordinate (the others use the same factors independently); "
                     "finite scores in the symbolic steps, -inf for an excluded key in the last three",
                     "symbolic block sizes p, q >= 1; cross-checked with the actual block maxima at (p, q) = "
                     + ", ".join(str(s) for s in SIZES),
                     "exact arithmetic: in floating point another order changes the rounding, not the value"],
        unfold=unfold,
        results=results,
    )


def _zero(entries: list) -> tuple[bool, str]:
    from ..derivation import is_zero

    return is_zero(entries)


@register("online-softmax-merge", "Online-softmax merge of key blocks")
def online_softmax_merge() -> Derivation:
    """Merging key blocks' (max, sum, accumulator) is exact over the union, associative and commutative."""
    return build_merge_derivation()
