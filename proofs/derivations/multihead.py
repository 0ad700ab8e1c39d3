"""Derivation 4: multi-head attention identities, parameter count and exact operation count.

Row convention (the documents' and the toolkit's): ``Q_i = X W^Q_i``, ``W^Q = [W^Q_1 ... W^Q_h]`` of shape
(d, h d_k), ``W^O`` of shape (h d_v, d) with row blocks ``W^O_i`` (d_v, d).

Operation count (self-attention, n tokens, width d, h heads of widths d_k, d_v; no
biases; the plain softmax of the paper, without max-subtraction): a matrix product
(a x b)(b x c) costs a b c multiplications and a (b - 1) c additions; scaling the scores
costs one multiplication per score; the softmax one ``exp`` per score, n - 1 additions
per row sum and one division per score; concatenation is free. The polynomial is checked
against an instrumented plain-Python MHA that counts every arithmetic operation it
performs (and whose output is compared with :func:`numerics.multi_head_attention`).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import sympy as sp

from ..derivation import AtSizes, Custom, Derivation, Step, Symbolic
from ._registry import register

__all__ = ["multihead_identities", "operation_counts", "count_operations"]

n_, d_, h_ = sp.symbols("n d h", positive=True, integer=True)
dk_, dv_ = sp.symbols("d_k d_v", positive=True, integer=True)

#: Vaswani et al. 2017, Table 3 rows (A): d_model = 512, h d_k = h d_v = 512 (plus the base row h = 8).
TABLE3_ROWS_A = [(1, 512), (4, 128), (8, 64), (16, 32), (32, 16)]
COUNT_SIZES = [(2, 4, 1), (2, 4, 2), (3, 4, 4), (3, 6, 2), (2, 6, 3), (4, 2, 2)]


def _mat(name: str, rows: int, cols: int) -> sp.Matrix:
    return sp.Matrix(rows, cols, lambda a, b: sp.Symbol(f"{name}_{a + 1}{b + 1}", real=True))


def _row_softmax(scores: sp.Matrix) -> sp.Matrix:
    e = scores.applyfunc(sp.exp)
    return sp.Matrix(e.rows, e.cols, lambda a, b: e[a, b] / sum(e[a, c] for c in range(e.cols)))


# --------------------------------------------------------------------------- identities


def _concat_difference(n: int, h: int, d_v: int, d: int) -> sp.Matrix:
    """concat(H_1..H_h) W^O - sum_i H_i W^O_i for free head outputs H_i (n x d_v)."""
    heads = [_mat(f"H{i}", n, d_v) for i in range(h)]
    w_o = _mat("o", h * d_v, d)
    concat = sp.Matrix.hstack(*heads)
    blocks = sum((heads[i] * w_o[i * d_v:(i + 1) * d_v, :] for i in range(h)), sp.zeros(n, d))
    return (concat * w_o - blocks).applyfunc(sp.expand)


def _single_head_difference(n: int, d: int, d_v: int) -> sp.Matrix:
    """(A X W^V) W^O - A X (W^V W^O) for free attention weights A (n x n)."""
    a, x = _mat("a", n, n), _mat("x", n, d)
    w_v, w_o = _mat("v", d, d_v), _mat("o", d_v, d)
    return ((a * x * w_v) * w_o - a * x * (w_v * w_o)).applyfunc(sp.expand)


def _mha(x: sp.Matrix, w_q, w_k, w_v, w_o, h: int, d_k: int, d_v: int) -> sp.Matrix:
    heads = []
    for i in range(h):
        q = x * w_q[:, i * d_k:(i + 1) * d_k]
        k = x * w_k[:, i * d_k:(i + 1) * d_k]
        v = x * w_v[:, i * d_v:(i + 1) * d_v]
        heads.append(_row_softmax(q * k.T / sp.sqrt(d_k)) * v)
    return sp.Matrix.hstack(*heads) * w_o


BLOCK_HEADS = range(1, 7)


def _block_product_symbolic() -> tuple[bool, str]:
    """[H_1 ... H_h] W^O = sum_i H_i W^O_i with W^O split into h row blocks: BlockMatrix at symbolic n, d_v, d."""
    n, d_v, d = sp.symbols("n d_v d", integer=True, positive=True)
    for h in BLOCK_HEADS:
        heads = [sp.MatrixSymbol(f"H_{i + 1}", n, d_v) for i in range(h)]
        blocks = [sp.MatrixSymbol(f"W_{i + 1}", d_v, d) for i in range(h)]
        product = sp.block_collapse(sp.BlockMatrix([heads]) * sp.BlockMatrix([[b] for b in blocks]))
        difference = (product - sp.MatAdd(*[a * b for a, b in zip(heads, blocks)])).doit()
        if not (difference == sp.ZeroMatrix(n, d) or difference == 0):
            return False, f"h={h}: block product minus the sum of head products = {difference}"
    return True, (f"block_collapse([H_1 .. H_h] [W_1; ..; W_h]) = sum_i H_i W_i at symbolic n, d_v, d for "
                  f"h = {BLOCK_HEADS[0]}..{BLOCK_HEADS[-1]}")


def _permutation_differences(n: int, d: int, h: int) -> list:
    """MHA with the heads' parameter blocks permuted, minus MHA, for every permutation."""
    d_k = d_v = d // h
    x = _mat("x", n, d)
    w_q, w_k, w_v, w_o = _mat("q", d, h * d_k), _mat("k", d, h * d_k), _mat("v", d, h * d_v), _mat("o", h * d_v, d)
    base = _mha(x, w_q, w_k, w_v, w_o, h, d_k, d_v)
    out = []
    for perm in itertools.permutations(range(h)):
        if perm == tuple(range(h)):
            continue
        cols_k = [c for i in perm for c in range(i * d_k, (i + 1) * d_k)]
        cols_v = [c for i in perm for c in range(i * d_v, (i + 1) * d_v)]
        permuted = _mha(x, w_q[:, cols_k], w_k[:, cols_k], w_v[:, cols_v], w_o[cols_v, :], h, d_k, d_v)
        out.append(permuted - base)
    return out


# --------------------------------------------------------------------------- parameter count


def parameter_count(d=d_, h=h_, d_k=dk_, d_v=dv_, bias: bool = True) -> sp.Expr:
    """W^Q, W^K (d x h d_k), W^V (d x h d_v), W^O (h d_v x d) and, with ``bias``, their biases."""
    weights = 2 * d * h * d_k + d * h * d_v + h * d_v * d
    return weights + (2 * h * d_k + h * d_v + d if bias else 0)


def _numerics_parameter_counts() -> tuple[bool, str]:
    from numerics import init_params

    rows = []
    for d, h in [(8, 1), (8, 2), (8, 4), (8, 8), (12, 3), (12, 6)]:
        got = init_params(d, h, bias=True).num_parameters()
        rows.append((d, h, got, 4 * d * d + 4 * d))
    ok = all(got == want for *_, got, want in rows)
    return ok, "numerics.init_params(d, h, bias=True).num_parameters() = 4d^2 + 4d for (d, h) in " + ", ".join(
        f"({d},{h}): {got}" for d, h, got, _ in rows)


# --------------------------------------------------------------------------- operation count


def operation_counts(n=n_, d=d_, h=h_, d_k=dk_, d_v=dv_) -> dict[str, sp.Expr]:
    """Exact counts of multiplications, additions, exponentials and divisions of MHA (module doc)."""
    mults = {
        "projections Q, K": 2 * n * d * h * d_k,
        "projection V": n * d * h * d_v,
        "scores Q_i K_i^T": h * n * n * d_k,
        "scaling": h * n * n,
        "A_i V_i": h * n * n * d_v,
        "output projection": n * h * d_v * d,
    }
    adds = {
        "projections Q, K": 2 * n * (d - 1) * h * d_k,
        "projection V": n * (d - 1) * h * d_v,
        "scores Q_i K_i^T": h * n * n * (d_k - 1),
        "softmax row sums": h * n * (n - 1),
        "A_i V_i": h * n * (n - 1) * d_v,
        "output projection": n * (h * d_v - 1) * d,
    }
    return {
        "multiplications": sum(mults.values()),
        "additions": sum(adds.values()),
        "exponentials": h * n * n,
        "divisions": h * n * n,
        "_mult_terms": mults,
        "_add_terms": adds,
    }


class _Counter:
    def __init__(self) -> None:
        self.mul = self.add = self.exp = self.div = 0


class _Num:
    """A float that counts the arithmetic done with it."""

    __slots__ = ("v", "c")

    def __init__(self, v: float, c: _Counter):
        self.v, self.c = v, c

    def __mul__(self, o: "_Num") -> "_Num":
        self.c.mul += 1
        return _Num(self.v * (o.v if isinstance(o, _Num) else o), self.c)

    def __add__(self, o: "_Num") -> "_Num":
        self.c.add += 1
        return _Num(self.v + o.v, self.c)

    def __truediv__(self, o: "_Num") -> "_Num":
        self.c.div += 1
        return _Num(self.v / o.v, self.c)

    def exp(self) -> "_Num":
        self.c.exp += 1
        return _Num(math.exp(self.v), self.c)


def _matmul(a, b):
    rows, inner, cols = len(a), len(b), len(b[0])
    out = []
    for r in range(rows):
        row = []
        for c in range(cols):
            acc = a[r][0] * b[0][c]
            for t in range(1, inner):
                acc = acc + a[r][t] * b[t][c]
            row.append(acc)
        out.append(row)
    return out


def count_operations(n: int, d: int, h: int, seed: int = 0) -> tuple[dict[str, int], np.ndarray, tuple]:
    """Run a plain-Python MHA (d_k = d_v = d / h) on counting numbers.

    Returns the counts, the output as an array, and the float64 inputs (x, w_q, w_k, w_v, w_o).
    """
    d_k = d // h
    rng = np.random.default_rng(seed)
    x, w_q, w_k, w_v, w_o = (rng.standard_normal(s) for s in [(n, d), (d, d), (d, d), (d, d), (d, d)])
    cnt = _Counter()

    def wrap(m):
        return [[_Num(float(v), cnt) for v in row] for row in m]

    X, WQ, WK, WV, WO = map(wrap, (x, w_q, w_k, w_v, w_o))
    Q, K, V = _matmul(X, WQ), _matmul(X, WK), _matmul(X, WV)
    scale = 1.0 / math.sqrt(d_k)
    heads = []
    for i in range(h):
        sl = slice(i * d_k, (i + 1) * d_k)
        qi = [row[sl] for row in Q]
        ki_t = [list(col) for col in zip(*[row[sl] for row in K])]
        vi = [row[sl] for row in V]
        s = _matmul(qi, ki_t)
        e = [[(v * scale).exp() for v in row] for row in s]
        a = []
        for row in e:
            total = row[0]
            for v in row[1:]:
                total = total + v
            a.append([v / total for v in row])
        heads.append(_matmul(a, vi))
    concat = [sum((heads[i][r] for i in range(h)), []) for r in range(n)]
    out = _matmul(concat, WO)
    counts = {"multiplications": cnt.mul, "additions": cnt.add, "exponentials": cnt.exp, "divisions": cnt.div}
    return counts, np.array([[v.v for v in row] for row in out]), (x, w_q, w_k, w_v, w_o)


def _instrumented_counts() -> tuple[bool, str]:
    from numerics import MHAParams, multi_head_attention

    counts = operation_counts(d_k=d_ / h_, d_v=d_ / h_)
    worst = 0.0
    for n, d, h in COUNT_SIZES:
        got, out, (x, w_q, w_k, w_v, w_o) = count_operations(n, d, h)
        sub = {n_: n, d_: d, h_: h}
        for key in ("multiplications", "additions", "exponentials", "divisions"):
            want = counts[key].subs(sub)
            if want != got[key]:
                return False, f"(n,d,h)=({n},{d},{h}): {key} counted {got[key]}, polynomial gives {want}"
        ref = multi_head_attention(x, MHAParams(w_q, w_k, w_v, w_o, h))
        worst = max(worst, float(np.max(np.abs(out - np.asarray(ref)))))
    if worst > 1e-12:
        return False, f"the instrumented MHA differs from numerics.multi_head_attention by {worst:.2e}"
    return True, (f"every count equals the polynomial at (n,d,h) in {COUNT_SIZES}; the instrumented MHA matches "
                  f"numerics.multi_head_attention to {worst:.1e}")


@register("multihead", "Multi-head attention: identities, parameter and operation counts")
def multihead_identities() -> Derivation:
    """MHA = sum_i head_i W^O_i; h = 1 case; head permutation invariance; 4d^2 (+4d) parameters; op counts."""
    per_head = {"d_k": d_ / h_, "d_v": d_ / h_}
    counts = operation_counts(d_k=d_ / h_, d_v=d_ / h_)
    poly = {k: sp.expand(counts[k]) for k in ("multiplications", "additions", "exponentials", "divisions")}
    total = sp.expand(sum(poly.values()))
    h_terms = {k: sp.expand(v - v.subs(h_, 0)) for k, v in poly.items()}
    expected_mults = 4 * n_ * d_**2 + 2 * n_**2 * d_ + h_ * n_**2
    expected_adds = 4 * n_ * d_**2 + 2 * n_**2 * d_ - 5 * n_ * d_ - h_ * n_
    table3 = {f"h={h}, d_k=d_v={dk}": int(parameter_count(512, h, dk, dk)) for h, dk in TABLE3_ROWS_A}
    params_sub = parameter_count(d_, h_, d_ / h_, d_ / h_)
    terms = {k: {name: str(sp.factor(sp.expand(v.subs({dk_: d_ / h_, dv_: d_ / h_})))) for name, v in counts[k].items()}
             for k in ("_mult_terms", "_add_terms")}

    steps = [
        Step.define(r"\operatorname{MHA}(X)", r"\operatorname{Concat}(\mathrm{head}_1, \dots, \mathrm{head}_h)\, W^O",
                    r"$\mathrm{head}_i = \operatorname{Attention}(X W^Q_i, X W^K_i, X W^V_i)$, row convention"),
        Step(None, r"\sum_{i=1}^{h} \mathrm{head}_i\, W^O_i",
             r"block product; $W^O_i$ = rows $(i-1)d_v + 1 .. i d_v$ of $W^O$ (symbolic block sizes; "
             r"$h$ = 1..6 heads, not a symbolic $h$)",
             Custom(_block_product_symbolic, "symbolic sizes n, d_v, d (BlockMatrix), h=1..6")),
        Step(r"\operatorname{MHA}(X)", r"\sum_{i=1}^{h} \mathrm{head}_i\, W^O_i",
             r"cross-check with the attention heads computed entry by entry",
             AtSizes(_concat_difference, [(2, 1, 2, 3), (2, 2, 2, 4), (3, 3, 1, 2), (2, 4, 1, 4)], "(n,h,d_v,d)")),
        Step(r"\operatorname{MHA}(X)\big|_{h=1}", r"\operatorname{softmax}\!\left(\tfrac{X W^Q W^{K\top} X^{\top}}{\sqrt{d_k}}\right) X\,(W^V W^O)",
             r"one head: single-head attention with value matrix $W^V W^O$ (associativity, any weights $A$)",
             AtSizes(_single_head_difference, [(2, 2, 1), (2, 3, 2), (3, 2, 3)], "(n,d,d_v)")),
        Step(r"\operatorname{MHA}_{\pi}(X)", r"\operatorname{MHA}(X)",
             r"permuting the heads (blocks of $W^Q, W^K, W^V$ and of $W^O$ together) changes nothing; all permutations",
             AtSizes(_permutation_differences, [(2, 2, 2), (2, 3, 3)], "(n,d,h)")),
        Step(r"P(d, h, d_k, d_v)", parameter_count(),
             r"$W^Q, W^K \in \mathbb{R}^{d \times h d_k}$, $W^V \in \mathbb{R}^{d \times h d_v}$, "
             r"$W^O \in \mathbb{R}^{h d_v \times d}$, and biases",
             Symbolic(parameter_count() - (2 * d_ * h_ * dk_ + 2 * d_ * h_ * dv_ + 2 * h_ * dk_ + h_ * dv_ + d_))),
        Step(r"P\big|_{d_k = d_v = d/h}", 4 * d_**2 + 4 * d_,
             r"$h d_k = h d_v = d$: the count does not depend on $h$", Symbolic(params_sub - 4 * d_**2 - 4 * d_)),
        Step(r"\partial P / \partial h\big|_{d_k = d_v = d/h}", sp.Integer(0), r"independent of $h$",
             Symbolic(sp.diff(params_sub, h_))),
        Step(r"P(512, h, 512/h, 512/h)", r"4 \cdot 512^2 + 4 \cdot 512 = 1\,050\,624",
             r"Vaswani et al. 2017, Table 3 rows (A): $h \in \{1, 4, 8, 16, 32\}$, constant parameter count",
             Custom(lambda: (len(set(table3.values())) == 1 and set(table3.values()) == {4 * 512**2 + 4 * 512},
                             f"per attention layer: {table3}"), "symbolic (explicit values)")),
        Step(r"P", r"4 d^2 + 4 d", "cross-check with numerics.init_params",
             Custom(_numerics_parameter_counts, "numeric cross-check (numerics.init_params)")),
        Step(r"\#\text{mult}", expected_mults,
             r"$4nd^2$ (four projections) $+ 2n^2 d$ ($QK^\top$ and $AV$: $h \cdot n^2 d/h$) $+ hn^2$ (scaling)",
             Symbolic(poly["multiplications"] - expected_mults)),
        Step(r"\#\text{add}", expected_adds,
             r"products $a(b-1)c$; the $h$ dot products per score lose one addition each: $h n^2 (d/h - 1)$; "
             r"row sums $h n (n-1)$",
             Symbolic(poly["additions"] - expected_adds)),
        Step(r"\#\exp = \#\text{div}", h_ * n_**2, r"one exponential and one division per score and head",
             Symbolic(poly["exponentials"] - h_ * n_**2 + poly["divisions"] - h_ * n_**2)),
        Step(r"F(n, d, h)", total, r"all four kinds, counted as one flop each",
             Symbolic(total - (8 * n_ * d_**2 + 4 * n_**2 * d_ - 5 * n_ * d_ + 3 * h_ * n_**2 - h_ * n_))),
        Step(r"F - F\big|_{h=0}", sp.expand(3 * h_ * n_**2 - h_ * n_),
             r"the $h$-dependent part: softmax and scaling ($3hn^2$) and the lost additions ($-hn$); "
             r"the matrix products' $n^2 d$ and $n d^2$ terms do not depend on $h$",
             Symbolic(sum(h_terms.values()) - (3 * h_ * n_**2 - h_ * n_))),
        Step(r"\text{counts}", r"\text{polynomials above}",
             r"an instrumented plain-Python MHA counting every operation it performs",
             Custom(_instrumented_counts, "explicit sizes (n,d,h)=" + ", ".join(f"({a},{b},{c})" for a, b, c in COUNT_SIZES)
                    + " (instrumented count)")),
    ]
    return Derivation(
        name="multihead",
        title="Multi-head attention: identities, parameter and operation counts",
        statement=(r"$\operatorname{MHA}(X) = \sum_i \mathrm{head}_i W^O_i$; for $h = 1$ it is single-head attention with "
                   r"value matrix $W^V W^O$; it is invariant under permuting the heads; with $d_k = d_v = d/h$ it has "
                   r"$4d^2 + 4d$ parameters for every $h$ and costs $8nd^2 + 4n^2d - 5nd + 3hn^2 - hn$ operations, "
                   r"whose only $h$-dependent terms are $3hn^2 - hn$."),
        steps=steps,
        assumptions=["row convention Q = X W^Q; self-attention on n tokens of width d",
                     "operation count: no biases, plain softmax without max-subtraction, "
                     "a (a x b)(b x c) product costs abc multiplications and a(b-1)c additions, "
                     "exp/division/multiplication/addition one operation each, concatenation free"],
        results={
            "parameters": "4 d^2 + 4 d (4 d^2 without biases), independent of h",
            "table3_rows_A": table3,
            "operation_counts": {k: str(v) for k, v in poly.items()},
            "total_operations": str(total),
            "h_dependent_terms": {k: str(v) for k, v in h_terms.items()},
            "terms": terms,
            "per_head_widths": {k: str(v) for k, v in per_head.items()},
        },
    )
