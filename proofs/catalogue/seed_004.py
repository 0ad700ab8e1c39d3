"""Seed 004 (004_d3277361910d1a35.txt): "O Mecanismo de Autoatenção em Detalhe".

Six labelled statements: the worked example (line 19), "Observações Importantes", Lema 1,
Teorema 1, Proposição 1 and Corolário 1.1. The document mixes two mis-encodings and some
lines lost bytes; the labels are found on the ASCII skeleton regardless. Each check is declared with ``@claim``; the findings: ``attnverify check --only 004``.

Conventions of the document: row vectors (x_i W), scores ``q_i . k_j`` *without* the
1/sqrt(d_k) factor (line 12; the later "Formalização" adds it) and causal attention
(line 84: the softmax runs over j <= i). The worked example is checked in those
conventions.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..claims import CheckOutcome, Method, Verdict
from ..derivation import Step
from ._derivations import derivation
from ._doc import bmatrices, column, printed_numbers
from ._kit import StepFailed, counterexample, equal, fact, failed_steps, note, proof, proved, steps_evidence
from ._registry import claim
from ._worked import Quantity, WorkedExample, softmax_row

DOC = "004"


def _example_inputs() -> dict:
    x1, x2, x3 = (column(m) for m in bmatrices(DOC, 23))
    wq, wk, wv = bmatrices(DOC, 27)
    return {"x_1": x1, "x_2": x2, "x_3": x3, "W^Q": wq, "W^K": wk, "W^V": wv}


def _dot(a, b):
    return (a * b.T)[0, 0]


def example() -> WorkedExample:
    b = lambda line, i: column(bmatrices(DOC, line)[i])  # noqa: E731
    num = printed_numbers
    proj = lambda x, w: (lambda e: e[x] * e[w])  # noqa: E731

    def weights(i: int, j: int):
        def f(e):
            scores = [e[f"score(x_{i}, x_{m})"] for m in range(1, i + 1)]
            return softmax_row(scores)[0, j - 1]
        return f

    quantities = [
        Quantity("q_1", b(32, 2), proj("x_1", "W^Q"), "line 32"),
        Quantity("k_1", b(34, 2), proj("x_1", "W^K"), "line 34"),
        Quantity("v_1", b(36, 2), proj("x_1", "W^V"), "line 36"),
        Quantity("score(x_1, x_1)", num(DOC, 43)[0], lambda e: _dot(e["q_1"], e["k_1"]), "line 43"),
        Quantity("q_2", b(46, 0), proj("x_2", "W^Q"), "line 46"),
        Quantity("k_2", b(46, 2), proj("x_2", "W^K"), "line 46"),
        Quantity("score(x_2, x_1)", num(DOC, 48)[0], lambda e: _dot(e["q_2"], e["k_1"]), "line 48"),
        Quantity("score(x_2, x_2)", num(DOC, 49)[0], lambda e: _dot(e["q_2"], e["k_2"]), "line 49"),
        Quantity("q_3", b(52, 0), proj("x_3", "W^Q"), "line 52"),
        Quantity("k_3", b(52, 3), proj("x_3", "W^K"), "line 52"),
        Quantity("score(x_3, x_1)", num(DOC, 54)[0], lambda e: _dot(e["q_3"], e["k_1"]), "line 54"),
        Quantity("score(x_3, x_2)", num(DOC, 55)[0], lambda e: _dot(e["q_3"], e["k_2"]), "line 55"),
        Quantity("score(x_3, x_3)", num(DOC, 56)[0], lambda e: _dot(e["q_3"], e["k_3"]), "line 56"),
        Quantity("alpha_11", num(DOC, 61)[0], weights(1, 1), "line 61"),
        Quantity("alpha_21", num(DOC, 64)[0], weights(2, 1), "line 64"),
        Quantity("alpha_22", num(DOC, 64)[1], weights(2, 2), "line 64"),
        Quantity("alpha_31", num(DOC, 67)[0], weights(3, 1), "line 67"),
        Quantity("alpha_32", num(DOC, 67)[1], weights(3, 2), "line 67"),
        Quantity("alpha_33", num(DOC, 67)[2], weights(3, 3), "line 67"),
        Quantity("v_2", b(73, 1), proj("x_2", "W^V"), "line 73"),
        Quantity("v_3", b(75, 2), proj("x_3", "W^V"), "line 75"),
        Quantity("a_1", b(71, 1), lambda e: e["alpha_11"] * e["v_1"], "line 71"),
        Quantity("a_2", b(73, 2), lambda e: e["alpha_21"] * e["v_1"] + e["alpha_22"] * e["v_2"], "line 73"),
        Quantity("a_3", b(75, 3), lambda e: e["alpha_31"] * e["v_1"] + e["alpha_32"] * e["v_2"] + e["alpha_33"] * e["v_3"],
                 "line 75"),
    ]
    return WorkedExample("Exemplo Numérico (line 19): causal self-attention of three words", _example_inputs(), quantities,
                         notes=["vectors printed as columns are row vectors (x_i W)",
                                "scores unscaled (line 12), softmax over j <= i (line 84)"])


@claim(19,
       title="Worked example: causal self-attention of three words",
       statement=r"q_i = x_iW^Q, k_i = x_iW^K, v_i = x_iW^V,\ \mathrm{score}(x_i,x_j) = q_i\cdot k_j,\ "
                 r"\alpha_{ij} = \mathrm{softmax}_{j\le i},\ a_i = \sum_{j\le i}\alpha_{ij}v_j \text{ as printed (lines 32--75)}",
       assumptions=["inputs exactly as printed (lines 23, 27)", "unscaled scores (line 12), causal softmax (line 84)",
                    "printed numbers rounded to their decimals"])
def check_example() -> CheckOutcome:
    """Judged by ``attnverify audit``'s engine (proofs.audit), which reads the numbers from the
    document; ``tests/proofs/test_audit_outcome.py`` checks it agrees with :func:`example`."""
    from ..audit.outcome import example_outcome
    from ._doc import document_path

    return example_outcome(document_path(DOC), 19, 77, example().title)


# ---- Observações Importantes ----------------------------------------------------------------

@claim(124,
       title="The softmax weights form a probability distribution over the preceding words",
       statement=r"\alpha_{ij} \ge 0,\ \textstyle\sum_{j\le i}\alpha_{ij} = 1")
def check_observations() -> CheckOutcome:
    steps: list[Step] = []
    s = sp.symbols("s_1:4", real=True)
    for i in range(1, 4):
        w = [sp.exp(s[j]) / sum(sp.exp(s[m]) for m in range(i)) for j in range(i)]
        steps.append(equal(sum(w), sp.Integer(1), f"row {i} of the causal softmax sums to 1 over j <= {i}",
                           display=rf"\textstyle\sum_{{j \le {i}}} \alpha_{{{i}j}} = 1"))
    from numerics import scaled_dot_product_attention

    rng = np.random.default_rng(12)
    q, k, v = rng.standard_normal((3, 7, 4))
    _, w = scaled_dot_product_attention(q, k, v, causal=True, return_weights=True)
    ok_num = bool((w >= 0).all() and np.allclose(w.sum(-1), 1, atol=1e-15, rtol=0) and not np.triu(w, 1).any())
    steps.append(fact(r"\alpha_{ij} \ge 0,\ \alpha_{ij} = 0\ (j > i),\ \textstyle\sum_j \alpha_{ij} = 1",
                      "numerics, causal, 7 tokens", ok_num, "numeric, float64"))
    checked = proof(f"{DOC}.check_observations", steps)
    return proved(checked, Method.SYMBOLIC, [
        steps_evidence(checked, "the (causal) softmax weights are a probability distribution over the preceding words"),
        note("the other three bullets (weighting of values, parallelisation, masking against 'cheating') are informal"),
    ])


# ---- Lema 1: translation invariance ----------------------------------------------------------

@claim(131,
       title="Self-attention is invariant to translating the embeddings",
       statement=r"x_i \mapsto x_i + t \ \Rightarrow\ a_i \mapsto a_i \quad (\text{projections applied after the translation})",
       assumptions=["the document's conventions: unscaled scores (line 12), causal softmax (line 84)",
                    "added: the witness is the document's own example (lines 23-27) with t = (1, 1, 1, 1)"])
def check_translation_invariance() -> CheckOutcome:
    from numerics import scaled_dot_product_attention

    inputs = _example_inputs()
    X = np.array([inputs["x_1"], inputs["x_2"], inputs["x_3"]], dtype=float)
    Wq, Wk, Wv = (np.array(inputs[w], dtype=float) for w in ("W^Q", "W^K", "W^V"))
    t = np.ones(4)

    def attend(x, **kw):
        return scaled_dot_product_attention(x @ Wq, x @ Wk, x @ Wv, causal=True, **kw)

    results = {}
    for label, kw in (("unscaled", {"scale": 1.0}), ("scaled", {})):
        a, a_t = attend(X, **kw), attend(X + t, **kw)
        results[label] = {"a": a.round(4).tolist(), "a_translated": a_t.round(4).tolist(),
                          "max_change": float(np.abs(a_t - a).max()),
                          "max_change_beyond_tWv": float(np.abs(a_t - a - t @ Wv).max())}
    changed = min(r["max_change"] for r in results.values()) > 1e-6
    # exact account of what translation does to the scores (sympy, symbolic x_i, x_j, t, M = W^Q W^K^T)
    d = 2
    xi, xj, tt = (sp.Matrix(1, d, lambda r, c, n=n: sp.Symbol(f"{n}_{c}")) for n in ("x", "y", "t"))
    M = sp.Matrix(d, d, lambda r, c: sp.Symbol(f"m_{r}{c}"))
    shift = ((xi + tt) * M * (xj + tt).T - xi * M * xj.T)[0]
    steps: list[Step] = []
    steps.append(equal(shift, (xi * M * tt.T + tt * M * xj.T + tt * M * tt.T)[0],
                       "translating by t adds x_i M t^T + t M x_j^T + t M t^T to score(x_i, x_j) (M = W^Q W^K^T); the middle "
                       "term depends on j, so the softmax weights change, and every value moves by t W^V",
                       display=r"s'_{ij} - s_{ij} = x_iMt^\top + tMx_j^\top + tMt^\top"))
    # the exception: t W^Q (W^K)^T = 0 (rank-2 W^Q, W^K, t in the left null space of W^Q W^K^T)
    rng = np.random.default_rng(16)
    wq2, wk2 = rng.standard_normal((2, 4, 2))
    t0 = np.linalg.svd((wq2 @ wk2.T).T)[2][-1]  # (W^Q W^K^T)^T t0 = 0, i.e. t0 W^Q W^K^T = 0
    shifted = scaled_dot_product_attention((X + t0) @ wq2, (X + t0) @ wk2, (X + t0) @ Wv, causal=True, scale=1.0)
    base = scaled_dot_product_attention(X @ wq2, X @ wk2, X @ Wv, causal=True, scale=1.0)
    exception_gap = float(np.abs(shifted - base - t0 @ Wv).max())
    steps.append(fact(r"tW^Q(W^K)^\top = 0 \Rightarrow a_i' = a_i + tW^V",
                      f"random rank-2 W^Q, W^K (seed 16), t in the left null space of W^Q W^K^T: max deviation {exception_gap:.1e}",
                      exception_gap < 1e-12 and float(np.abs(t0 @ wq2 @ wk2.T).max()) < 1e-12, "numeric, float64"))
    checked = proof(f"{DOC}.check_translation_invariance", steps)
    if changed:
        if not checked.valid:
            raise StepFailed("a step of the translation analysis failed: " + failed_steps(checked))
        return CheckOutcome(Verdict.REFUTED, Method.NUMERIC, [
            counterexample("self-attention is not translation invariant: the document's own example (x_1, x_2, x_3, "
                           "W^Q, W^K, W^V of lines 23-27) translated by t = (1, 1, 1, 1) changes the outputs a_i by up "
                           f"to {results['unscaled']['max_change']:.3f} (causal, unscaled as on line 12; "
                           f"{results['scaled']['max_change']:.3f} with the 1/sqrt(d_k) scale)",
                           t=t.tolist(), results=results),
            steps_evidence(checked, "why: the score shift depends on j and the values shift by t W^V"),
            note("the proof's step VII is where it fails: the softmax is invariant only to adding the same constant to "
                 "every score of a row, and the weighted sum of values is translation-equivariant (a_i + t W^V), not "
                 "invariant. If t W^Q (W^K)^T = 0 the weights stay put and a_i moves by exactly t W^V (checked above); "
                 "otherwise the j-dependent term moves the weights, as in the document's example."),
        ])
    # One example left unchanged proves no invariance (and the score shift above depends on j):
    # no verdict without evidence for it.
    raise RuntimeError("translating the document's example by t = (1, 1, 1, 1) left every output unchanged; "
                       f"that neither proves nor refutes translation invariance: {results}")


# ---- Teorema 1: causal masking ---------------------------------------------------------------

def _symbolic_attention(causal: bool, n: int = 3):
    xs = sp.symbols(f"x_1:{n + 1}", real=True)
    wq, wk, wv = sp.Rational(1, 2), sp.Integer(1), sp.Integer(2)  # d = 1, fixed nonzero weights
    outs = []
    for i in range(n):
        keys = range(i + 1) if causal else range(n)
        e = {j: sp.exp(wq * xs[i] * wk * xs[j]) for j in keys}
        outs.append(sum(e[j] * wv * xs[j] for j in keys) / sum(e.values()))
    return xs, outs


@claim(148,
       title="Masked self-attention is causal",
       statement=r"\text{with the causal mask, } a_i \text{ depends only on } x_j,\ j \le i")
def check_causal_mask() -> CheckOutcome:
    steps: list[Step] = []
    xs, outs = _symbolic_attention(causal=True)
    zero = all(sp.diff(outs[i], xs[j]) == 0 for i in range(3) for j in range(i + 1, 3))
    steps.append(fact(r"\partial a_i/\partial x_j = 0 \quad (j > i)", "causal attention, n = 3, d = 1 (symbolic inputs)", zero,
                      "sympy diff, exact"))
    from numerics import scaled_dot_product_attention

    rng = np.random.default_rng(13)
    q, k, v = rng.standard_normal((3, 6, 4))
    out = scaled_dot_product_attention(q, k, v, causal=True)
    k2, v2 = k.copy(), v.copy()
    k2[4:] += 5 * rng.standard_normal((2, 4))
    v2[4:] += 5 * rng.standard_normal((2, 4))
    out2 = scaled_dot_product_attention(q, k2, v2, causal=True)
    same = float(np.abs(out[:4] - out2[:4]).max()) <= 1e-15 and float(np.abs(out[4:] - out2[4:]).max()) > 1e-3
    steps.append(fact(r"a_{1..4} \text{ unchanged when } x_5, x_6 \text{ change}", "numerics, causal, 6 tokens", same,
                      "numeric, float64: earlier outputs move by <= 1e-15 (in practice 0)"))
    _, ev = derivation("causality")
    checked = proof(f"{DOC}.check_causal_mask", steps)
    return proved(checked, Method.SYMBOLIC,
                        [steps_evidence(checked, "with the causal mask a_i depends only on x_j, j <= i"), ev])


# ---- Proposição 1: special case of general attention --------------------------------------------

@claim(157,
       title="Causal self-attention is a special case of general attention",
       statement=r"\text{self-attention is general attention restricted to the preceding words } \{j \le i\}",
       assumptions=["self-attention as the document defines it: causal, softmax over j <= i (line 84)",
                    "added: 'general attention' read as attention over an allowed set S_i of keys "
                    "(a 0/1 mask); the document does not define it"])
def check_special_case(allowed=lambda i, j: j <= i) -> CheckOutcome:
    """Exact, as 000's Proposição 1.1 ("a special case of multi-head attention") is checked: general
    attention over an allowed set S_i of keys, sum_{j in S_i} softmax_{S_i}(s_ij) v_j, written with a
    0/1 indicator m_ij, is the document's self-attention (line 84-86) when m_ij = [j <= i].
    ``allowed(i, j)`` (0-based) is the set tried; any other set fails a step (StepFailed)."""
    n = 3
    s_ = sp.Matrix(n, n, lambda i, j: sp.Symbol(f"s_{i + 1}{j + 1}", real=True))
    v = sp.symbols(f"v_1:{n + 1}", real=True)
    steps: list[Step] = []
    for i in range(n):
        m = [1 if allowed(i, j) else 0 for j in range(n)]
        general = sum(m[j] * sp.exp(s_[i, j]) * v[j] for j in range(n)) / sum(m[j] * sp.exp(s_[i, j]) for j in range(n))
        document = sum(sp.exp(s_[i, j]) * v[j] for j in range(i + 1)) / sum(sp.exp(s_[i, k]) for k in range(i + 1))
        steps.append(equal(general, document,
                           f"row {i + 1}: general attention with the allowed set S_{i + 1} = {{1..{i + 1}}} is the document's a_{i + 1}",
                           display=rf"\frac{{\sum_j m_{{{i + 1}j}} e^{{s_{{{i + 1}j}}}} v_j}}{{\sum_j m_{{{i + 1}j}} "
                                   rf"e^{{s_{{{i + 1}j}}}}}} = \sum_{{j \le {i + 1}}} \alpha_{{{i + 1}j}} v_j,\ m_{{ij}} = [j \le i]",
                           how="sympy, symbolic scores and values, n = 3"))
    from numerics import scaled_dot_product_attention

    rng = np.random.default_rng(14)
    q, k, v_ = rng.standard_normal((3, 5, 4))
    causal = scaled_dot_product_attention(q, k, v_, causal=True)
    general = scaled_dot_product_attention(q, k, v_, mask=np.tril(np.ones((5, 5), dtype=bool)))
    gap = float(np.abs(causal - general).max())
    steps.append(fact(r"\mathrm{attention}_{\mathrm{causal}} = \mathrm{attention}_{\mathrm{mask}\,\{j \le i\}}",
                      f"numerics, 5 tokens: max difference {gap:.1e}", gap < 1e-15, "numeric, float64"))
    checked = proof(f"{DOC}.check_special_case", steps)
    return proved(checked, Method.SYMBOLIC, [
        steps_evidence(checked, "self-attention as the document defines it (softmax over j <= i) is general attention with the "
                       "allowed set {j <= i}", max_difference=gap),
        note("the document's self-attention is the causal (decoder) kind; encoder self-attention (e.g. BERT) attends "
             "in both directions"),
    ])


# ---- Corolário 1.1: without the mask, later tokens matter -------------------------------------

@claim(164,
       title="Without the mask, outputs depend on later words",
       statement=r"\text{without the mask, } a_i \text{ depends on } x_j \text{ for } j > i \text{ too}")
def check_unmasked_dependence() -> CheckOutcome:
    steps: list[Step] = []
    xs, outs = _symbolic_attention(causal=False)
    point = {xs[0]: 1, xs[1]: -1, xs[2]: 2}
    value = sp.N(sp.diff(outs[0], xs[2]).subs(point), 20)
    steps.append(fact(rf"\partial a_1/\partial x_3\big|_{{x=(1,-1,2)}} = {sp.latex(sp.Float(value, 8))} \ne 0",
                      "without the mask the first output depends on the last token", abs(value) > 1e-12, "sympy diff, exact point"))
    partials = [[sp.N(sp.diff(outs[i], xs[j]).subs(point), 20) for j in range(3)] for i in range(3)]
    steps.append(fact(r"\partial a_i/\partial x_j\big|_{x=(1,-1,2)} \ne 0 \ \text{for all } i, j",
                      "'todas as palavras' read literally: every output depends on every word",
                      all(abs(p) > 1e-12 for row in partials for p in row), "sympy diff, exact point, all 9 pairs"))
    from numerics import scaled_dot_product_attention

    rng = np.random.default_rng(15)
    q, k, v = rng.standard_normal((3, 6, 4))
    out = scaled_dot_product_attention(q, k, v)
    v2 = v.copy()
    v2[5] += 1.0
    moved = float(np.abs(out[0] - scaled_dot_product_attention(q, k, v2)[0]).max())
    steps.append(fact(r"a_1 \text{ changes when } v_6 \text{ changes}", f"numerics, no mask: change {moved:.3g}", moved > 1e-6,
                      "numeric"))
    _, ev = derivation("causality")
    checked = proof(f"{DOC}.check_unmasked_dependence", steps)
    return proved(checked, Method.SYMBOLIC,
                        [steps_evidence(checked, "without the mask a_i depends on later tokens"), ev])
