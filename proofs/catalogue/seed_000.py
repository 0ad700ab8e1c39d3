"""Seed 000 (000_d2de934c731e32db.txt): "Multi-Head Attention: Capturando Diversidade ...".

Ten labelled statements: three worked examples, Lema 1.1, 1.2, Teorema 1.1, 1.2,
Proposição 1.1, 2.1 and Observação 2.1. Each check is declared with ``@claim`` (``proofs.catalogue._registry``); the
findings: ``attnverify check --only 000``.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import sympy as sp

from ..claims import CheckOutcome, Method, Verdict
from ..derivation import Step
from . import _counts as C
from ._derivations import derivation
from ._doc import bmatrices
from ._registry import claim
from ._kit import (StepFailed, counterexample, equal, fact, failed_steps, informal_outcome, note, numeric, proof,
                   proved, steps_evidence)
from ._worked import Quantity, WorkedExample, hstack

DOC = "000"


# ---- worked example (line 16): projections of two heads ---------------------------------------

def example_projections() -> WorkedExample:
    (X,) = bmatrices(DOC, 22)
    W1Q, W1K, W1V = bmatrices(DOC, 26)
    W2Q, W2K, W2V = bmatrices(DOC, 30)
    given = {"X": X, "W_1^Q": W1Q, "W_1^K": W1K, "W_1^V": W1V, "W_2^Q": W2Q, "W_2^K": W2K, "W_2^V": W2V}
    quantities = []
    for line, name, weight in ((36, "Q_1", "W_1^Q"), (38, "K_1", "W_1^K"), (40, "V_1", "W_1^V"),
                               (44, "Q_2", "W_2^Q"), (46, "K_2", "W_2^K"), (48, "V_2", "W_2^V")):
        quantities.append(Quantity(name, bmatrices(DOC, line)[0], lambda e, w=weight: e["X"] * e[w], f"line {line}"))
    return WorkedExample("Exemplo Numérico (line 16): Q_i = X W_i^Q, K_i = X W_i^K, V_i = X W_i^V", given, quantities)


def _attainable(head: list[list[str]], values: np.ndarray, tol: float) -> list[dict]:
    """Rows of ``head`` that no attention weights over ``values`` can produce (within ``tol``).

    Row r is attainable iff some a >= 0 with sum(a) = 1 has |a V - r| <= tol entrywise: a
    linear feasibility problem (scipy linprog). A column where r lies outside
    [min V, max V] by more than tol is reported as the human-readable witness.
    """
    from scipy.optimize import linprog

    bad = []
    m, width = values.shape
    for i, row in enumerate(np.array(head, dtype=float)):
        a_ub = np.vstack([values.T, -values.T])
        b_ub = np.concatenate([row + tol, -(row - tol)])
        res = linprog(np.zeros(m), A_ub=a_ub, b_ub=b_ub, A_eq=np.ones((1, m)), b_eq=[1.0], bounds=[(0, None)] * m,
                      method="highs")
        if res.status == 2:  # infeasible
            cols = [j for j in range(width) if row[j] + tol < values[:, j].min() or row[j] - tol > values[:, j].max()]
            bad.append({"row": i, "printed": row.tolist(),
                        "witness_columns": [{"column": j, "printed": float(row[j]),
                                             "range_of_V_column": [float(values[:, j].min()), float(values[:, j].max())]}
                                            for j in cols]})
    return bad


def _engine_outcome(first: int, last: int, title: str) -> CheckOutcome:
    """The worked example's numbers judged by ``attnverify audit``'s engine (proofs.audit), which
    reads them from the document; ``tests/proofs/test_audit_outcome.py`` checks that it agrees
    with the hand-written WorkedExample of the same lines."""
    from ..audit.outcome import example_outcome
    from ._doc import document_path

    return example_outcome(document_path(DOC), first, last, title)


@claim(16,
       title="Worked example: per-head projections Q_i, K_i, V_i",
       statement=r"Q_i = XW_i^Q,\ K_i = XW_i^K,\ V_i = XW_i^V \text{ equal the printed matrices (lines 36--48); "
                 r"the assumed } \mathrm{Head}_i \text{ (lines 56, 58) are attention outputs}",
       assumptions=["inputs exactly as printed (lines 22, 26, 30)", "printed numbers rounded to their decimals"])
def check_example_projections() -> CheckOutcome:
    example = example_projections()
    outcome = _engine_outcome(16, 50, example.title)
    # The document then *assumes* head outputs (line 54: "assumir que temos como resultado").
    # Any attention output row is a convex combination of the rows of V_i: check they could be.
    correct = example.correct_values()
    heads = {"Head_1": (bmatrices(DOC, 56)[0], "V_1"), "Head_2": (bmatrices(DOC, 58)[0], "V_2")}
    unattainable = {}
    for name, (head, v_name) in heads.items():
        printed_v = np.array(next(q.printed for q in example.quantities if q.name == v_name), dtype=float)
        for which, v in (("printed", printed_v), ("correct", np.array(correct[v_name]))):
            bad = _attainable(head, v, tol=0.05)
            if bad:
                unattainable[f"{name} vs {which} {v_name}"] = bad
    true_heads = {}
    for i in (1, 2):
        q, k, v = (np.array(correct[f"{m}_{i}"]) for m in "QKV")
        s = q @ k.T / np.sqrt(q.shape[1])
        a = np.exp(s - s.max(1, keepdims=True))
        true_heads[f"Head_{i}"] = ((a / a.sum(1, keepdims=True)) @ v).round(4).tolist()
    if unattainable:
        witnesses = [(key, r["row"], w) for key, rows in unattainable.items() for r in rows for w in r["witness_columns"]]
        example = ""
        if witnesses:
            key, row, w = witnesses[0]
            lo, hi = w["range_of_V_column"]
            example = (f"; e.g. {key.split(' vs ')[0]} row {row + 1} has {w['printed']:g} in column {w['column'] + 1}, "
                       f"where the {key.split(' vs ')[1]} ranges over [{lo:g}, {hi:g}]")
        outcome.evidence.append(counterexample(
            "the assumed head outputs (lines 56, 58) cannot be attention outputs: some rows lie outside the convex hull "
            f"of the rows of V_i ({', '.join(unattainable)}), even "
            f"allowing the printed 1-decimal rounding (a linear feasibility test){example}",
            unattainable=unattainable, true_heads_from_correct_QKV=true_heads))
        if outcome.verdict is Verdict.PROVED:
            return CheckOutcome(Verdict.REFUTED, Method.SYMBOLIC, outcome.evidence[::-1])
    else:
        outcome.evidence.append(note("the assumed head outputs are convex combinations of the rows of V_i",
                                     true_heads_from_correct_QKV=true_heads))
    return outcome


# ---- worked example (line 70): concatenation and output projection ---------------------------

def example_output() -> WorkedExample:
    given = {"Head_1": bmatrices(DOC, 56)[0], "Head_2": bmatrices(DOC, 58)[0], "W^O": bmatrices(DOC, 78)[0]}
    quantities = [
        Quantity("ConcatHeads", bmatrices(DOC, 74)[0], lambda e: hstack(e["Head_1"], e["Head_2"]), "line 74"),
        Quantity("MultiHeadAttention(X)", bmatrices(DOC, 82)[0], lambda e: e["ConcatHeads"] * e["W^O"], "line 82"),
    ]
    return WorkedExample("Exemplo Numérico (line 70): Concat(Head_1, Head_2) W^O", given, quantities,
                         notes=["inputs are the head outputs the document assumes on lines 56 and 58"])


@claim(70,
       title="Worked example: Concat(Head_1, Head_2) W^O",
       statement=r"\mathrm{Concat}(\mathrm{Head}_1,\mathrm{Head}_2)W^O = \text{the printed } 3\times 4 \text{ matrix (line 82)}",
       assumptions=["Head_1, Head_2 as assumed on lines 56, 58; W^O as printed on line 78"])
def check_example_output() -> CheckOutcome:
    return _engine_outcome(70, 84, example_output().title)


# ---- Lema 1.1: heads are independent ---------------------------------------------------------

def _symbolic_heads(n: int, d: int, h: int):
    """head_i for explicit sizes with symbolic inputs and per-head parameters."""
    dk = d // h
    X = sp.Matrix(n, d, lambda i, j: sp.Symbol(f"x_{i}{j}"))
    heads, params = [], []
    for t in range(h):
        W = {m: sp.Matrix(d, dk, lambda i, j, m=m: sp.Symbol(f"w{m}{t}_{i}{j}")) for m in "qkv"}
        Q, K, V = X * W["q"], X * W["k"], X * W["v"]
        S = Q * K.T / sp.sqrt(dk)
        E = S.applyfunc(sp.exp)
        A = sp.Matrix(n, n, lambda i, j: E[i, j] / sum(E[i, l] for l in range(n)))
        heads.append(A * V)
        params.append(set().union(*(w.free_symbols for w in W.values())))
    return X, heads, params


@claim(88,
       title="Heads can be computed in parallel (independent)",
       statement=r"\mathrm{head}_i = \mathrm{Attention}(XW_i^Q, XW_i^K, XW_i^V) \text{ depends only on } X, W_i^Q, W_i^K, W_i^V")
def check_heads_independent() -> CheckOutcome:
    steps: list[Step] = []
    X, heads, params = _symbolic_heads(n=2, d=2, h=2)
    for i, head in enumerate(heads):
        others = set().union(*(p for j, p in enumerate(params) if j != i))
        used = head.free_symbols
        steps.append(fact(rf"\operatorname{{vars}}(\mathrm{{head}}_{i + 1}) \cap \theta_{{j \ne {i + 1}}} = \emptyset",
                          f"head {i + 1} uses only X and its own W^Q, W^K, W^V", not (used & others),
                          "sympy free_symbols at n=2, d=2, h=2 (the same expression for every n, d, h)"))
    # numerically: perturbing head 2's parameters leaves head 1's weights bit-identical
    from numerics import init_params, multi_head_attention

    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 8))
    p = init_params(8, 2, seed=3)
    _, w = multi_head_attention(x, p, return_weights=True)
    p2 = init_params(8, 2, seed=3)
    for name in ("w_q", "w_k", "w_v"):
        arr = getattr(p2, name).copy()
        arr[:, 4:] += rng.standard_normal((8, 4))
        setattr(p2, name, arr)
    _, w2 = multi_head_attention(x, p2, return_weights=True)
    same1, diff2 = float(np.abs(w[0] - w2[0]).max()) <= 1e-15, float(np.abs(w[1] - w2[1]).max())
    steps.append(fact(r"A_1(\theta_1, \theta_2) = A_1(\theta_1, \theta_2')",
                      f"numerics.multi_head_attention: head 1's weights unchanged after changing head 2's W (head 2 moved by {diff2:.3g})",
                      same1 and diff2 > 1e-6, "numeric, float64: head 1 moves by <= 1e-15 (in practice 0)"))
    checked = proof(f"{DOC}.check_heads_independent", steps)
    return proved(checked, Method.SYMBOLIC,
                        [steps_evidence(checked, "each head is a function of X and its own projections only" if checked.valid
                                        else "a head depends on another head's parameters")])


# ---- Teorema 1.1 (informal) --------------------------------------------------------------------

def _heads_can_differ(seed: int = 0) -> tuple[bool, float]:
    from numerics import init_params, multi_head_attention

    x = np.random.default_rng(seed).standard_normal((6, 8))
    _, w = multi_head_attention(x, init_params(8, 2, seed=seed), return_weights=True)
    gap = float(np.abs(w[0] - w[1]).max())
    return gap > 1e-3, gap


@claim(96,
       title="Multi-head attention increases representational capacity",
       statement=r"\text{MHA captures more diverse relations than one head (informal)}")
def check_capacity_informal() -> CheckOutcome:
    holds, gap = _heads_can_differ()
    return informal_outcome(
        "'capacidade de capturar diferentes relações' and 'representação mais rica' are not defined quantities",
        holds,
        numeric(f"proxy: two heads of one layer (random init, d=8, h=2) give different attention maps, "
                f"max |A_1 - A_2| = {gap:.3f}", max_abs_difference=gap),
        refutes_if_false="heads that always attend identically could not focus on different aspects",
    )


# ---- Proposição 1.1: h = 1 is single-head attention ---------------------------------------------

@claim(106,
       title="Single-head attention is multi-head attention with h = 1",
       statement=r"h = 1:\ \mathrm{MHA}(X) = \mathrm{softmax}\!\big(XW^Q (XW^K)^\top/\sqrt{d_k}\big)\, X W^V W^O",
       assumptions=["h = 1, so d_k = d_v = d (Lema 1.2's d_k = d/h)",
                    "added: 'special case' read as equality of the functions computed: MHA with h = 1 is "
                    "single-head attention with value matrix W^V W^O (with W^O = I, exactly the same)"])
def check_single_head_special_case() -> CheckOutcome:
    steps: list[Step] = []
    n, d = 2, 2
    X = sp.Matrix(n, d, lambda i, j: sp.Symbol(f"x_{i}{j}"))
    Wq, Wk, Wv, Wo = (sp.Matrix(d, d, lambda i, j, m=m: sp.Symbol(f"{m}_{i}{j}")) for m in ("q", "k", "v", "o"))
    S = (X * Wq) * (X * Wk).T / sp.sqrt(d)
    E = S.applyfunc(sp.exp)
    A = sp.Matrix(n, n, lambda i, j: E[i, j] / (E[i, 0] + E[i, 1]))
    mha_h1 = (A * (X * Wv)) * Wo  # Concat(head_1) W^O with a single head
    steps.append(equal(mha_h1, A * (X * (Wv * Wo)), "h = 1: Concat(head_1) W^O is attention with value matrix W^V W^O",
                       how="sympy, explicit 2 x 2 symbolic matrices",
                       display=r"\mathrm{Concat}(\mathrm{head}_1)W^O = \big(A\,XW^V\big)W^O = A\,X\big(W^VW^O\big)"))
    steps.append(equal(mha_h1.subs({s: (1 if s.name in ("o_00", "o_11") else 0) for s in Wo.free_symbols}),
                       A * (X * Wv), "with W^O = I it is exactly single-head self-attention", how="sympy substitution",
                       display=r"W^O = I:\ \mathrm{MHA}_{h=1}(X) = A\,XW^V,\ A = \mathrm{softmax}(XW^Q(XW^K)^\top/\sqrt{d_k})"))
    # numerically with numerics: multi_head_attention(h=1, W_o = I) == scaled_dot_product_attention
    from numerics import MHAParams, multi_head_attention, scaled_dot_product_attention

    rng = np.random.default_rng(5)
    x, wq, wk, wv = (rng.standard_normal(s) for s in ((4, 6), (6, 6), (6, 6), (6, 6)))
    out = multi_head_attention(x, MHAParams(wq, wk, wv, np.eye(6), num_heads=1))
    ref = scaled_dot_product_attention(x @ wq, x @ wk, x @ wv)
    err = float(np.abs(out - ref).max())
    steps.append(fact(r"\mathrm{MHA}_{h=1}(X; W^O = I) = \mathrm{Attention}(XW^Q, XW^K, XW^V)",
                      f"numerics, random 4 x 6 input: max error {err:.1e}", err < 1e-12, "numeric, float64"))
    checked = proof(f"{DOC}.check_single_head_special_case", steps)
    evidence = [steps_evidence(checked, "multi-head attention with h = 1 is single-head attention (value matrix W^V W^O)")]
    _, ev = derivation("multihead")
    evidence.append(ev)
    return proved(checked, Method.SYMBOLIC, evidence)


# ---- Lema 1.2: projection widths d/h and per-head cost ---------------------------------------

@claim(113,
       title="Projection width d_model/h reduces each head's cost",
       statement=r"d_k = d_{model}/h,\ Q_i, K_i, V_i \in \mathbb{R}^{n\times d_k},\ \text{one head costs less than a head of width } d_{model}",
       assumptions=["d_k = d_v = d_model / h", "h >= 2",
                    "'reduces the computational complexity' read per head, as the proof's step IV says"])
def check_projection_dims() -> CheckOutcome:
    steps: list[Step] = []
    from numerics import init_params, multi_head_attention

    d_model, heads = 512, 8
    p = init_params(d_model, heads, seed=0)
    per_head = p.w_q.shape[1] // heads
    steps.append(fact(r"W_i^Q \in \mathbb{R}^{d_{model} \times d_{model}/h}",
                      f"numerics.init_params(512, 8): W^Q is {p.w_q.shape}, i.e. {heads} heads of width {per_head}",
                      per_head == d_model // heads == 64, "numeric shapes"))
    x = np.zeros((10, d_model))
    _, w = multi_head_attention(x, p, return_weights=True)
    steps.append(fact(r"Q_i \in \mathbb{R}^{n \times d_k}", f"weights per head have shape {w.shape[1:]}", w.shape == (heads, 10, 10),
                      "numeric shapes"))
    one = C.attention_core(C.n, C.n, C.d / C.h, C.d / C.h)
    full = C.attention_core(C.n, C.n, C.d, C.d)
    gap = sp.factor(sp.expand(full - one))
    positive = sp.simplify(gap.subs(C.h, C.h + 1) * (C.h + 1)).is_positive  # h >= 2  <=>  h+1 with h >= 1
    steps.append(fact(sp.Eq(sp.Symbol(r"\mathrm{cost}_{d}") - sp.Symbol(r"\mathrm{cost}_{d/h}"), gap),
                      "one head of width d/h costs less than a head of width d (scores, softmax, A V)",
                      bool(positive), "sympy: the difference is positive for integers n, d >= 1, h >= 2"))
    total = sp.expand(C.h * one - full)
    steps.append(fact(sp.Eq(sp.Symbol(r"h\,\mathrm{cost}_{d/h} - \mathrm{cost}_{d}"), sp.factor(total)),
                      "but the h heads together cost as much as one wide head, plus the extra softmaxes",
                      sp.Poly(total, C.d).degree() == 0, "sympy: the difference does not depend on d"))
    checked = proof(f"{DOC}.check_projection_dims", steps)
    return proved(checked, Method.SYMBOLIC,
                        [steps_evidence(checked, "Q_i, K_i, V_i have width d_model/h and one head costs less; all heads together "
                                        "cost the same matrix products as one head of width d_model")])


# ---- Teorema 1.2 (informal): specialisation -------------------------------------------------------

@claim(121,
       title="Heads specialise (random init, independent learning)",
       statement=r"\text{each head specialises in different relations (informal), because its } W_i^Q, W_i^K, W_i^V "
                 r"\text{ are initialised at random and learned independently}",
       assumptions=["added: 'learned independently' read as: the gradient of one matrix does not depend on the values of the others",
                    "added: a loss that is not linear in the output (the witness uses the squared loss)"])
def check_specialisation_informal() -> CheckOutcome:
    from numerics import MHAParams, init_params, multi_head_attention_backward

    rng = np.random.default_rng(2)
    x, g = rng.standard_normal((6, 8)), rng.standard_normal((6, 8))
    p = init_params(8, 2, seed=4)

    def head_grads(params):
        grads = multi_head_attention_backward(x, params, g).params
        return [np.concatenate([grads.w_q[:, i * 4:(i + 1) * 4].ravel(), grads.w_k[:, i * 4:(i + 1) * 4].ravel(),
                                grads.w_v[:, i * 4:(i + 1) * 4].ravel(), grads.w_o[i * 4:(i + 1) * 4].ravel()])
                for i in range(2)]

    random_gap = float(np.abs(np.subtract(*head_grads(p))).max())
    tied = MHAParams(*(np.concatenate([w[:, :4], w[:, :4]], axis=1) for w in (p.w_q, p.w_k, p.w_v)),
                     np.concatenate([p.w_o[:4], p.w_o[:4]], axis=0), num_heads=2)
    tied_gap = float(np.abs(np.subtract(*head_grads(tied))).max())
    holds = random_gap > 1e-6
    return informal_outcome(
        "'especializar-se em diferentes tipos de relações' is an empirical property of trained models",
        holds,
        numeric(f"proxy: randomly initialised heads get different gradients (max difference {random_gap:.3g}); identical "
                f"heads get identical ones ({tied_gap:.1e}; for any loss, since swapping two identical heads leaves the "
                f"output unchanged), so gradient descent alone never separates them and the "
                f"random initialisation is what breaks the symmetry (that the heads are not learned independently is "
                f"checked separately).", random_init_gradient_gap=random_gap, tied_init_gradient_gap=tied_gap),
        refutes_if_false="heads whose gradients always coincide could not specialise",
    )


def head_coupling() -> dict:
    """Exact cross derivatives d^2 L / dW_1^Q dW_2^Q between the query weights of two heads.

    Two heads of width 1 on two tokens (d = 2): a = W_1^Q[0, 0] and b = W_2^Q[0, 0] symbolic,
    every other weight a fixed rational. For the squared loss L = 1/2 ||MHA(X)||^2 the cross
    derivative at a = b = 1/2 is nonzero (heads are coupled through the loss); for a loss linear in
    the output, L = sum MHA(X), it is identically 0 (MHA is a sum of per-head terms).
    """
    a, b = sp.symbols("a b", real=True)
    half = sp.Rational(1, 2)
    X = sp.Matrix([[1, 0], [1, 2]])
    params = [(sp.Matrix([a, half]), sp.Matrix([1, -1]), sp.Matrix([1, 2])),
              (sp.Matrix([b, 1]), sp.Matrix([-1, 1]), sp.Matrix([2, -1]))]
    Wo = sp.Matrix([[1, half], [-1, 1]])
    heads = []
    for wq, wk, wv in params:
        q, k, v = X * wq, X * wk, X * wv
        e = sp.Matrix(2, 2, lambda i, j: sp.exp(q[i] * k[j]))  # d_k = 1: sqrt(d_k) = 1
        heads.append(sp.Matrix(2, 1, lambda i, _: sum(e[i, j] * v[j] for j in range(2)) / (e[i, 0] + e[i, 1])))
    out = heads[0].row_join(heads[1]) * Wo
    squared = sum(x ** 2 for x in out) / 2
    linear = sum(out)
    at = {a: half, b: half}
    return {"squared": sp.N(sp.diff(squared, a, b).subs(at), 15),
            "linear": sp.simplify(sp.diff(linear, a, b)),
            "setting": "2 tokens X = [[1, 0], [1, 2]], 2 heads of width 1, W_1^Q = (a, 1/2), W_2^Q = (b, 1), "
                       "W_1^K = (1, -1), W_2^K = (-1, 1), W_1^V = (1, 2), W_2^V = (2, -1), W^O = [[1, 1/2], [-1, 1]], "
                       "at a = b = 1/2"}


@claim(121)
def check_independent_heads_learning() -> CheckOutcome:
    """The precise sub-claim of Teorema 1.2 (as 001's Lema 2.1 for W^Q, W^K, W^V): 'aprendizado
    independente das matrizes de projeção ... para cada head'."""
    c = head_coupling()
    data = {"d2L_dW1Q_dW2Q_squared_loss": float(c["squared"]), "d2L_dW1Q_dW2Q_linear_loss": str(c["linear"]),
            "setting": c["setting"]}
    if abs(c["squared"]) < 1e-12:
        raise RuntimeError(f"the heads' gradients came out uncoupled in this example ({c}): it decides nothing")
    if c["linear"] != 0:
        raise StepFailed(f"a loss linear in the output coupled the heads ({c['linear']}): a defect of the model")
    return CheckOutcome(Verdict.CORRECTED, Method.SYMBOLIC, [
        counterexample(f"the heads' projections are not learned independently: for the squared loss L = 1/2 "
                       f"||MHA(X)||^2, d^2 L / dW_1^Q dW_2^Q = {float(c['squared']):.6f} != 0 (exact derivative, "
                       "evaluated to 15 digits; two heads of width 1 on two tokens); each head's gradient depends on "
                       "the other heads through the loss (for a loss linear in the output it would be 0, checked)",
                       **data),
    ], corrected_statement=(
        r"Each head has its own $W_i^Q, W_i^K, W_i^V$ (separate parameters), initialised at random; identical heads "
        r"would receive identical gradients, so the random initialisation is what lets them differ. They are not "
        r"learned independently: the gradient of $W_i^Q$ depends on the other heads' parameters through the loss "
        r"(e.g. $\partial^2 L/\partial W_1^Q \partial W_2^Q \ne 0$ for a squared loss). Whether heads specialise "
        r"in different relations is an empirical property of trained models."))


# ---- worked example (line 160): complexity numbers ----------------------------------------------

def example_complexity() -> WorkedExample:
    given = {"n": "10", "d": "512", "h": "8"}
    quantities = [
        Quantity("d_k = d/h", "64", lambda e: e["d"] / e["h"], "line 164"),
        Quantity("n^2 d", "51200", lambda e: e["n"] ** 2 * e["d"], "line 166"),
        Quantity("n d^2", "2621440", lambda e: e["n"] * e["d"] ** 2, "line 166"),
        Quantity("n^2 d + n d^2", "2672640", lambda e: e["n^2 d"] + e["n d^2"], "line 166"),
        Quantity("single-head n^2 d", "51200", lambda e: e["n"] ** 2 * e["d"], "line 168"),
    ]
    return WorkedExample("Exemplo Numérico (line 160): complexity numbers", given, quantities)


def complexity_readings(n_: int = 10, d_: int = 512, h_: int = 8) -> dict:
    """Exact flop counts of the example's comparison, in both readings of "single-head attention".

    A: the single head is multi-head attention with h = 1, with its own d x d output projection W^O;
    B: the textbook single head, Attention(XW^Q, XW^K, XW^V) with d x d projections and no W^O.
    Each reading: the counts, the difference from h heads and how much of it the output projection
    and the extra heads' softmax and scaling account for (integers, exact).
    """
    mha = C.terms_table(n_, d_, h_)
    total = sum(mha.values())
    extra_softmax = int((C.h_dependent_part(C.mha_flops()) * (C.h - 1) / C.h).subs({C.n: n_, C.h: h_}))
    out = {"n": n_, "d": d_, "h": h_, "multi_head": total, "multi_head_stages": mha,
           "extra_heads_softmax_and_scaling": extra_softmax, "output_projection": mha["output projection"]}
    for key, with_wo in (("A_single_head_with_W_O", True), ("B_single_head_without_W_O", False)):
        single = int(C.single_head_flops(n_, d_, output_projection=with_wo))
        out[key] = {"flops": single, "multi_head_minus_single": total - single,
                    "explained": extra_softmax + (0 if with_wo else mha["output projection"])}
    return out


@claim(160,
       title="Worked example: complexity of 8-head attention vs single-head",
       statement=r"n=10, d=512, h=8:\ d_k = 64,\ n^2d + nd^2 = 2672640;\ \text{single head } n^2 d = 51200;\ "
                 r"\text{MHA costs more due to projections and concatenation}",
       assumptions=["operation counts in the model of proofs/catalogue/_counts.py (one flop per addition, "
                    "multiplication, division or exponential; concatenation moves data, 0 flops)",
                    "added: 'single-head attention' read both with (A) and without (B) its own d x d "
                    "output projection W^O; the document does not say"])
def check_example_complexity_comparison() -> CheckOutcome:
    r = complexity_readings()
    a, b = r["A_single_head_with_W_O"], r["B_single_head_without_W_O"]
    steps: list[Step] = []
    for name, reading in (("A", a), ("B", b)):
        steps.append(fact(rf"\mathrm{{MHA}}_{{h=8}} - \mathrm{{SA}}_{{{name}}} = {reading['multi_head_minus_single']}",
                          f"reading {name}: the difference is {'the extra heads' if name == 'A' else 'W^O plus the extra heads'}'"
                          " softmax and scaling", reading["multi_head_minus_single"] == reading["explained"],
                          "exact integer counts (_counts model)"))
    checked = proof(f"{DOC}.check_example_complexity_comparison", steps)
    if not checked.valid:
        raise StepFailed("the flop counts of the two readings do not add up: " + failed_steps(checked))
    pct = Fraction(b["multi_head_minus_single"], b["flops"]) * 100
    data = {**r, "document_single_head_figure": r["n"] ** 2 * r["d"], "percent_more_in_B": f"{float(pct):.4f}",
            "model": C.__doc__.split("\n\n")[1],
            "assumption": "reading A: the single head has its own d x d W^O; reading B: it has none (Attention(XW^Q, "
                          "XW^K, XW^V)); concatenation moves data, 0 flops"}
    summary = (f"exact counts (n = 10, d = 512): 8 heads cost {r['multi_head']:,} flops. Whether the document's 'higher "
               f"cost due to the projections' holds depends on the single head: (A) with its own d x d W^O it costs "
               f"{a['flops']:,}, and the difference is only the extra heads' softmax and scaling, "
               f"{a['multi_head_minus_single']:,}; (B) without W^O it costs {b['flops']:,}, and 8 heads cost "
               f"{b['multi_head_minus_single']:,} more (+{float(pct):.1f}%: W^O's {r['output_projection']:,} plus "
               f"{r['extra_heads_softmax_and_scaling']:,}), so the document is right in reading B. Concatenation costs "
               "0 flops in both. The printed single-head O(n^2 d) = 51,200 leaves out the projections that the "
               "multi-head 2,672,640 includes, so those two numbers are not comparable")
    return CheckOutcome(Verdict.CORRECTED, Method.SYMBOLIC, [
        counterexample(summary, **data), steps_evidence(checked, "the differences of both readings, accounted for", **data),
    ], corrected_statement=(
        rf"For $n=10$, $d=512$, $h=8$ multi-head attention costs {r['multi_head']:,} flops (counting additions, "
        r"multiplications, divisions and exponentials; concatenation moves data and costs none). Single-head "
        rf"attention with its own $d \times d$ output projection costs {a['flops']:,} (the heads add only "
        rf"{a['multi_head_minus_single']:,} softmax and scaling flops); without an output projection it costs "
        rf"{b['flops']:,}, and multi-head attention costs {float(pct):.1f}\% more, because of its output "
        r"projection $W^O$. The document's $O(n^2d) = 51200$ for the single head leaves out its projections, which "
        r"its $2672640$ for multi-head attention counts."))


@claim(160)
def check_example_complexity_arithmetic() -> CheckOutcome:
    return _engine_outcome(160, 170, example_complexity().title)


# ---- Observação 2.1: normalising the projections by sqrt(d_k) ---------------------------------

def scaling_variants(seed: int = 7, n: int = 4, d_k: int = 16) -> dict[str, float]:
    """Max |output - softmax(QK^T/sqrt(d_k))V| when the factor 1/sqrt(d_k) is applied to Q alone,
    to Q and K, and to Q, K and V (random n x d_k q, k, v from ``seed``; float64, rounding ~1e-16)."""
    from numerics import scaled_dot_product_attention

    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((n, d_k)) for _ in range(3))
    r = np.sqrt(d_k)
    standard = scaled_dot_product_attention(q, k, v)
    variants = {"Q": (q / r, k, v), "Q, K": (q / r, k / r, v), "Q, K, V": (q / r, k / r, v / r)}
    return {name: float(np.abs(scaled_dot_product_attention(*qkv, scale=1.0) - standard).max())
            for name, qkv in variants.items()}


@claim(174,
       title="Projections may be normalised by sqrt(d_k)",
       statement=r"\text{(some implementations) } Q_i, K_i, V_i \mapsto Q_i/\sqrt{d_k},\ K_i/\sqrt{d_k},\ V_i/\sqrt{d_k}")
def check_normalising_projections() -> CheckOutcome:
    steps: list[Step] = []
    n, dk = 2, 2
    Q, K, V = (sp.Matrix(n, dk, lambda i, j, m=m: sp.Symbol(f"{m}_{i}{j}")) for m in "qkv")
    X, Wq = sp.Matrix(n, dk, lambda i, j: sp.Symbol(f"x_{i}{j}")), sp.Matrix(dk, dk, lambda i, j: sp.Symbol(f"w_{i}{j}"))
    steps.append(equal((Q / sp.sqrt(dk)) * K.T, Q * K.T / sp.sqrt(dk),
                       "dividing Q alone by sqrt(d_k) is the scaling of the scores in scaled dot-product attention",
                       display=r"(Q/\sqrt{d_k})K^\top = QK^\top/\sqrt{d_k}", how="sympy, explicit 2 x 2"))
    steps.append(equal(Q * (K / sp.sqrt(dk)).T, Q * K.T / sp.sqrt(dk), "and so is dividing K alone",
                       display=r"Q(K/\sqrt{d_k})^\top = QK^\top/\sqrt{d_k}", how="sympy, explicit 2 x 2"))
    steps.append(equal((X * (Wq / sp.sqrt(dk))) * K.T, (X * Wq) * K.T / sp.sqrt(dk),
                       "so is folding the factor into W^Q (a model with no explicit scale, e.g. T5, has it in W^Q's "
                       "initialisation)", display=r"X(W^Q/\sqrt{d_k})K^\top = QK^\top/\sqrt{d_k}", how="sympy, explicit 2 x 2"))
    steps.append(equal((Q / sp.sqrt(dk)) * (K / sp.sqrt(dk)).T, Q * K.T / dk,
                       "dividing both Q and K by sqrt(d_k) scales the scores by 1/d_k instead",
                       display=r"(Q/\sqrt{d_k})(K/\sqrt{d_k})^\top = QK^\top/d_k", how="sympy, explicit 2 x 2"))
    A = sp.Matrix(n, n, lambda i, j: sp.Symbol(f"a_{i}{j}"))
    steps.append(equal(A * (V / sp.sqrt(dk)), (A * V) / sp.sqrt(dk),
                       "and dividing V as well scales the output itself by 1/sqrt(d_k)",
                       display=r"A\,(V/\sqrt{d_k}) = (AV)/\sqrt{d_k}", how="sympy, explicit 2 x 2"))
    gaps = scaling_variants()
    tol = 1e-12  # float64 rounding of a 4 x 16 attention is ~1e-16
    steps.append(fact(r"\mathrm{softmax}((Q/\sqrt{d_k})K^\top)V = \mathrm{softmax}(QK^\top/\sqrt{d_k})V",
                      f"numerics: Q alone, max difference {gaps['Q']:.1e}", gaps["Q"] < tol, "numeric, float64, d_k = 16, seed 7"))
    data = {"max_output_change": gaps, "d_k": 16, "seed": 7, "shape": [4, 16], "tolerance": tol}
    checked = proof(f"{DOC}.check_normalising_projections", steps)
    if gaps["Q, K, V"] < tol:
        return proved(checked, Method.SYMBOLIC, [steps_evidence(checked, "normalising Q, K, V by sqrt(d_k) is the standard scaling", **data)])
    if not checked.valid:
        raise StepFailed("a step of the scaling identities failed: " + failed_steps(checked))
    return CheckOutcome(Verdict.CORRECTED, Method.SYMBOLIC, [
        counterexample(f"dividing Q, K and V by sqrt(d_k) = 4 is not the standard scaling: the output moves by up to "
                       f"{gaps['Q, K, V']:.3f} (Q and K only, a 1/d_k scale of the scores: {gaps['Q, K']:.3f}; Q alone: "
                       f"{gaps['Q']:.0e}, float64 rounding: the standard form), random 4 x 16 q, k, v, seed 7. 'In some implementations' is "
                       "right: the factor may be folded into W^Q instead", **data),
        steps_evidence(checked, "the 1/sqrt(d_k) factor belongs to the scores: equivalently to Q alone or to W^Q", **data),
    ], corrected_statement=(
        r"The factor $1/\sqrt{d_k}$ scales the scores, $\mathrm{softmax}(Q_iK_i^\top/\sqrt{d_k})V_i$; that is the "
        r"same as dividing $Q_i$ alone (or $K_i$ alone) by $\sqrt{d_k}$, or folding the factor into $W_i^Q$ (some "
        r"models, e.g. T5, use no explicit factor and fold it into the initialisation of $W^Q$). Dividing $Q_i$ and "
        r"$K_i$ both scales the scores by $1/d_k$, and dividing $V_i$ as well also scales the output: "
        r"$\mathrm{softmax}(Q_iK_i^\top/d_k)V_i/\sqrt{d_k}$, a different function."))


# ---- Proposição 2.1: complexity of multi-head attention -------------------------------------

def judge_mha_complexity(terms: dict[str, sp.Expr]) -> dict:
    """Every fact the verdict on Proposição 2.1 rests on, computed from the stage counts ``terms``
    (polynomials in ``C.n``, ``C.d``, ``C.h``, as :func:`_counts.mha_terms` gives them).

    Returns the exact total and projection cost and, each decided by SymPy: ``statement_bound``
    (total <= 8nd^2 + 7n^2d for 1 <= h <= d: the statement's O(n^2d + nd^2)), ``proof_bound``
    (projections <= 8hnd^2 for h >= 1: the proof's O(hnd^2), valid however loose),
    ``projections_grow_with_h``, ``mha_over_n2d`` (the limit of total / n^2d as d -> oo: infinite
    means multi-head attention *with its projections* is not O(n^2d)), ``single_core_bound`` and
    ``mha_core_bound`` (single-head and multi-head attention from given Q, K, V are <= 7n^2d).
    """
    n, d, h = C.n, C.d, C.h
    r = sp.Symbol("r", nonnegative=True)  # h = d - r: 1 <= h <= d
    total = sp.expand(sum(terms.values()))
    proj = sp.expand(sum(v for k, v in terms.items() if "projection" in k))
    core = sp.expand(total - proj)
    single_core = sp.expand(core.subs(h, 1))
    return {
        "total": total, "projections": proj, "mha_core": core, "single_core": single_core,
        "statement_bound": C.nonnegative_for((8 * n * d ** 2 + 7 * n ** 2 * d - total).subs(h, d - r),
                                             {n: 1, d: 1, r: 0}),
        "proof_bound": C.nonnegative_for(8 * h * n * d ** 2 - proj, {n: 1, d: 1, h: 1}),
        "projections_grow_with_h": sp.Poly(proj, h).degree() > 0,
        "mha_over_n2d": sp.limit(total / (n ** 2 * d), d, sp.oo),
        "single_over_n2d": sp.limit(C.single_head_flops(output_projection=False) / (n ** 2 * d), d, sp.oo),
        "single_core_bound": C.nonnegative_for(7 * n ** 2 * d - single_core, {n: 1, d: 1}),
        "mha_core_bound": C.nonnegative_for((7 * n ** 2 * d - core).subs(h, d - r), {n: 1, d: 1, r: 0}),
    }


@claim(178,
       title="Complexity of multi-head attention",
       statement=r"\mathrm{cost}(\mathrm{MHA}) = O(n^2 d + n d^2),\ \mathrm{cost}(\text{self-attention}) = O(n^2 d),"
                 r"\ \text{the cost does not grow asymptotically in } n, d"
                 r"\ \text{(proof: projections } O(hnd^2)\text{; both } O(n^2 d))",
       assumptions=["d_k = d_v = d/h (Lema 1.2); proved for every 1 <= h <= d, which covers the document's h constant",
                    "operation counts in the model of proofs/catalogue/_counts.py",
                    "reading (the document's own counts): multi-head attention from X with its projections "
                    "(proof, step I); single-head attention's O(n^2 d) from given Q, K, V"])
def check_mha_complexity() -> CheckOutcome:
    """Reading used (the document's own): multi-head attention counted from X with its projections
    (proof, step I), single-head attention as the statement's O(n^2 d), i.e. from given Q, K, V."""
    f = judge_mha_complexity(C.mha_terms())
    total, proj, core, single_core = f["total"], f["projections"], f["mha_core"], f["single_core"]
    steps: list[Step] = []
    steps.append(fact(sp.Eq(sp.Symbol(r"\mathrm{flops}"), total), "exact count, d_k = d_v = d/h (model in _counts)",
                      sp.expand(sum(C.mha_terms().values()) - total) == 0, "sympy sum of the stage counts"))
    steps.append(fact(r"\mathrm{flops} \le 8 n d^2 + 7 n^2 d = O(n^2 d + n d^2)\quad (1 \le h \le d)",
                      "the statement's bound", f["statement_bound"],
                      "sympy: with h = d - r, n = 1 + m, d = 1 + e the slack has nonnegative coefficients"))
    steps.append(fact(rf"\mathrm{{flops}}_{{\mathrm{{proj}}}} = {sp.latex(proj)} \le 8hnd^2\quad (h \ge 1)",
                      "the proof's O(h n d^2) for the projections is a valid, loose upper bound (the count does not depend on h)",
                      f["proof_bound"] and not f["projections_grow_with_h"],
                      "sympy: nonnegative coefficients after n, d, h = 1 + ...; degree in h is 0"))
    steps.append(fact(rf"{sp.latex(single_core)} \le 7n^2d", "single-head attention from given Q, K, V is O(n^2 d)",
                      f["single_core_bound"], "sympy: nonnegative coefficients after n, d = 1 + ..."))
    steps.append(fact(rf"{sp.latex(core)} \le 7n^2d\quad (h \le d)", "so is multi-head attention from given Q_i, K_i, V_i",
                      f["mha_core_bound"], "sympy: nonnegative coefficients after h = d - r, n, d = 1 + ..."))
    steps.append(fact(rf"\lim_{{d\to\infty}} \mathrm{{flops}}/(n^2 d) = {sp.latex(f['mha_over_n2d'])}",
                      "with its projections, multi-head attention is not O(n^2 d)", f["mha_over_n2d"] == sp.oo, "sympy limit"))
    steps.append(fact(rf"\lim_{{d\to\infty}} \mathrm{{flops}}_{{h=1,\,XW}}/(n^2 d) = {sp.latex(f['single_over_n2d'])}",
                      "nor is single-head attention with its three d x d projections", f["single_over_n2d"] == sp.oo,
                      "sympy limit"))
    data = {"exact_count": str(total), "stages": {k: str(v) for k, v in C.mha_terms().items()},
            "projection_count": str(proj), "proof_projection_bound": "O(h n d^2): valid, loose" if f["proof_bound"]
            else "O(h n d^2): invalid", "single_head_from_QKV": str(single_core), "multi_head_from_QKV": str(core),
            "limit_flops_over_n2d_as_d_grows": str(f["mha_over_n2d"]),
            "reading": "multi-head counted from X with its projections (proof step I), single-head from given Q, K, V"}
    if not f["statement_bound"]:
        return CheckOutcome(Verdict.REFUTED, Method.SYMBOLIC, [counterexample("the count exceeds O(n^2 d + n d^2)", **data)])
    _, ev = derivation("multihead")
    cross = [e for e in (C.compare_with_derivation(total),) if e is not None]
    checked = proof(f"{DOC}.check_mha_complexity", steps)
    if f["mha_over_n2d"] != sp.oo:  # the closing "both O(n^2 d)" would hold
        return proved(checked, Method.SYMBOLIC, [steps_evidence(checked, "the statement and its proof's counts hold", **data), ev, *cross])
    if not checked.valid:
        raise StepFailed("a step of the complexity proof failed: " + failed_steps(checked))
    bound_words = ("a valid upper bound, only loose (they cost exactly {proj} <= 8hnd^2 flops, independent of h)"
                   if f["proof_bound"] else "wrong")
    return CheckOutcome(Verdict.CORRECTED, Method.SYMBOLIC, [
        counterexample(
            "the statement's O(n^2 d + n d^2) holds (flops <= 8nd^2 + 7n^2d for 1 <= h <= d) and the proof's O(h n d^2) "
            f"for the projections is {bound_words.format(proj=C.text(proj))}. What is false is the closing 'both of order "
            "O(n^2 d)': it compares single-head attention counted from given Q, K, V (O(n^2 d), true) with multi-head "
            "attention counted with its projections, and with them flops / n^2 d -> oo as d grows. Counted the same "
            "way the two agree: both O(n^2 d + n d^2) from X, both O(n^2 d) from given Q, K, V", **data),
        steps_evidence(checked, "exact operation count of multi-head attention, both readings"), ev, *cross,
    ], corrected_statement=(
        r"With $d_k = d_v = d/h$, multi-head self-attention of an $n \times d$ input costs exactly "
        rf"${sp.latex(total)}$ flops $\le 8nd^2 + 7n^2d$: $O(n^2 d + n d^2)$ for every $1 \le h \le d$, as stated. "
        rf"The projections cost ${sp.latex(proj)} \le 8hnd^2$, so the proof's $O(hnd^2)$ is a valid, loose bound. "
        r"The comparison must count both mechanisms the same way: from the input $X$, projections included, both "
        r"are $O(n^2d + nd^2)$ and neither is $O(n^2 d)$ ($\mathrm{flops}/n^2d \to \infty$ as $d \to \infty$); "
        rf"from given $Q, K, V$ both are $O(n^2 d)$ (single head ${sp.latex(single_core)}$, $h$ heads "
        rf"${sp.latex(core)} \le 7n^2d$ for $h \le d$)."))
