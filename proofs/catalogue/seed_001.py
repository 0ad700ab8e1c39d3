"""Seed 001 (001_82dc5f1976065850.txt): "Autoatenção e Feedforward nos Transformer Blocks".

Nine labelled statements: four worked examples given as Python code (run here exactly as
printed), Lema 2, 2.1, Proposição 2, 2.1 and Teorema 1. Each check is declared with ``@claim``;
the findings: ``attnverify check --only 001``.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..claims import CheckOutcome, Method, Verdict
from ..derivation import Step
from ._derivations import derivation
from ._doc import code_block_after, repair, run_document_code, run_document_code_until_error
from ._document_code import battery_evidence, run_battery, seed001_multihead
from ._kit import (code_agrees, counterexample, derived, equal, fact, informal_outcome, interval_text, note, numeric, proof,
                   proved, steps_evidence)
from ._registry import claim

DOC = "001"


def _run_example(line: int) -> tuple[int, dict]:
    start, code = code_block_after(DOC, line)
    return start, run_document_code(code, f"seed001_line{start}")


# ---- worked example (line 15): projections of one token -----------------------------------------

@claim(15,
       title="Worked example (code): projections q_i, k_i, v_i of one token",
       statement=r"q_i = x_iW^Q,\ k_i = x_iW^K \in \mathbb{R}^{d_k},\ v_i = x_iW^V \in \mathbb{R}^{d_v}\ (d=4, d_k=3, d_v=2)",
       assumptions=["the document's code, run as printed"])
def check_example_projection_shapes() -> CheckOutcome:
    from fractions import Fraction

    start, ns = _run_example(15)
    steps: list[Step] = []
    d, dk, dv = ns["d"], ns["dk"], ns["dv"]
    # x_i and the weights are nonnegative, so a float64 dot of d terms is within gamma_d = d u / (1 - d u)
    # of the exact value, relatively (Higham, Accuracy and Stability, 3.1); u = 2^-53.
    u = 2.0 ** -53
    gamma = d * u / (1 - d * u)
    worst = 0.0
    for name, width, weight in (("q_i", dk, "W_Q"), ("k_i", dk, "W_K"), ("v_i", dv, "W_V")):
        vec, x, w = ns[name], ns["x_i"], ns[weight]
        exact = [sum(Fraction(float(x[r])) * Fraction(float(w[r, c])) for r in range(len(x))) for c in range(w.shape[1])]
        rel = max(float(abs(Fraction(float(v)) - e) / abs(e)) for v, e in zip(vec, exact)) if vec.shape == (width,) else float("inf")
        worst = max(worst, rel)
        steps.append(fact(rf"{name} = x_i {weight} \in \mathbb{{R}}^{{{width}}}",
                          f"the document's code (fence on line {start}) gives shape {vec.shape}, relative error {rel:.1e} "
                          "against the exact product", vec.shape == (width,) and rel <= gamma,
                          "running the document's code; exact rational reference"))
    checked = proof(f"{DOC}.check_example_projection_shapes", steps)
    return code_agrees(checked, [steps_evidence(
        checked, f"q_i, k_i have d_k = {dk} entries and v_i has d_v = {dv} (d = {d}), each x_i W to rounding"
        if checked.valid else "a projection has the wrong width or value",
        max_relative_error=worst if np.isfinite(worst) else None)],
        inputs="the document's own x_i and its seeded random W_Q, W_K, W_V",
        reference="x_i W in exact rational arithmetic (fractions.Fraction of the float64 entries)",
        tolerance=f"relative {gamma:.2e} = gamma_{d} = {d}u/(1 - {d}u), the bound for a float64 dot of {d} "
                  "nonnegative terms",
        error_rate="not statistical: the document's one input, checked exactly to rounding; nothing is claimed "
                   "for other inputs")


# ---- worked example (line 54): one query's attention ------------------------------------------

@claim(54,
       title="Worked example (code): attention weights and output of one query",
       statement=r"\text{the code computes } \alpha = \mathrm{softmax}(q_iK^\top/\sqrt{d_k}),\ a_i = \alpha V",
       assumptions=["the document's code, run as printed"])
def check_example_attention_code() -> CheckOutcome:
    import mpmath

    start, ns = _run_example(54)
    from numerics import scaled_dot_product_attention

    q, K, V, dk = ns["q_i"], ns["K"], ns["V"], ns["dk"]
    weights, a = ns["attention_weights"], ns["a_i"]
    out, w_ref = scaled_dot_product_attention(q[None, :], K, V, return_weights=True)
    with mpmath.workdps(40):
        s = [mpmath.fsum(mpmath.mpf(repr(float(qq))) * mpmath.mpf(repr(float(kk))) for qq, kk in zip(q, k)) / mpmath.sqrt(dk)
             for k in K]
        e = [mpmath.exp(x) for x in s]
        exact_w = [x / mpmath.fsum(e) for x in e]
        exact_a = [float(mpmath.fsum(exact_w[j] * mpmath.mpf(repr(float(V[j, c]))) for j in range(len(e))))
                   for c in range(V.shape[1])]
    err_code = float(np.abs(a - np.array(exact_a)).max())
    err_numerics = float(np.abs(out[0] - np.array(exact_a)).max())
    steps: list[Step] = []
    steps.append(fact(r"\alpha_{ij} \ge 0,\ \textstyle\sum_j \alpha_{ij} = 1", f"weights {np.round(weights, 6).tolist()}",
                      bool((weights >= 0).all() and abs(weights.sum() - 1) < 1e-15), "document's code"))
    steps.append(fact(r"a_i = \sum_j \alpha_{ij} v_j = \mathrm{softmax}(q_i K^\top/\sqrt{d_k}) V",
                      f"document's a_i = {np.round(a, 8).tolist()}: error {err_code:.1e} against a 40-digit reference "
                      f"(numerics: {err_numerics:.1e})", err_code < 1e-14 and err_numerics < 1e-14,
                      "mpmath, 40 digits; float64 rounding bound 1e-14"))
    checked = proof(f"{DOC}.check_example_attention_code", steps)
    return code_agrees(checked, [steps_evidence(
        checked, "the document's code computes softmax(q K^T / sqrt(d_k)) V to float64 rounding" if checked.valid
        else "the document's code does not compute attention", weights=weights.tolist(), a_i=a.tolist(),
        max_error=err_code)],
        inputs="the document's own q_i (3), K (3 x 3), V (3 x 2)",
        reference="the same formula in mpmath at 40 digits from the float64 inputs",
        tolerance="absolute 1e-14 on a_i (entries below 1: a few float64 ulps of a 3-term softmax and sum)",
        error_rate="not statistical: the document's one input; a pass says the code computes attention there, "
                   "nothing about other inputs")


# ---- Lema 2 (informal): separate projections ------------------------------------------------------

def _tied_scores_symmetric() -> tuple[bool, bool, dict]:
    n, d, dk = 3, 2, 2
    X = sp.Matrix(n, d, lambda i, j: sp.Symbol(f"x_{i}{j}"))
    W = sp.Matrix(d, dk, lambda i, j: sp.Symbol(f"w_{i}{j}"))
    S_tied = (X * W) * (X * W).T
    tied_symmetric = (S_tied - S_tied.T).expand().is_zero_matrix
    Wq = sp.Matrix([[1, 0], [0, 0]])
    Wk = sp.Matrix([[0, 0], [1, 0]])
    Xn = sp.Matrix([[1, 0], [0, 1], [1, 1]])
    S = (Xn * Wq) * (Xn * Wk).T
    separate_asymmetric = not (S - S.T).is_zero_matrix
    return tied_symmetric, separate_asymmetric, {"W_Q": Wq.tolist(), "W_K": Wk.tolist(), "X": Xn.tolist(), "S": S.tolist()}


@claim(93,
       title="Linear projections W^Q, W^K, W^V give flexibility",
       statement=r"\text{the projections map inputs to different spaces, capturing different aspects (informal)}")
def check_projections_informal() -> CheckOutcome:
    tied, separate, data = _tied_scores_symmetric()
    outcome = informal_outcome(
        "'capturar diferentes aspectos da informação' and 'flexibilidade' are not defined",
        tied and separate,
        derived(
            "proxy: with one shared projection (W^Q = W^K) the scores X W W^T X^T are always symmetric (sympy, "
            "3 x 2 symbolic X, W); with separate W^Q, W^K they need not be (explicit example)", **data),
        refutes_if_false="separate projections would add nothing if they could not produce different scores",
    )
    coupling = check_independent_learning().evidence[0].data  # the proof's step IV, as Lema 2.1 states it
    outcome.evidence.append(note(
        "the proof's step IV says W^Q, W^K, W^V are learned independently: they are not (d^2 L / dW^Q dW^K = "
        f"{coupling['d2L_dWQ_dWK']:.6f} != 0, see Lema 2.1); the statement itself does not rest on it",
        d2L_dWQ_dWK=coupling["d2L_dWQ_dWK"]))
    return outcome


# ---- Lema 2.1: "independently parametrised and learned" ----------------------------------------

@claim(108,
       title="W^Q, W^K, W^V are parametrised and learned independently",
       statement=r"W^Q, W^K, W^V \text{ are independently parametrised and learned}",
       assumptions=["added: 'learned independently' read as: the gradient of one matrix does not depend on the values of the others"])
def check_independent_learning() -> CheckOutcome:
    a, b, c = sp.symbols("a b c", real=True)  # W^Q, W^K, W^V for d = d_k = d_v = 1
    x = [sp.Integer(1), sp.Integer(2)]
    loss = 0
    for i in range(2):
        e = [sp.exp(a * x[i] * b * x[j]) for j in range(2)]
        loss += sum(e[j] * c * x[j] for j in range(2)) / sum(e)
    grad_q = sp.diff(loss, a)
    cross = sp.diff(grad_q, b)
    at = {a: sp.Rational(1, 2), b: sp.Rational(1, 2), c: 1}
    value = sp.N(cross.subs(at), 15)
    value_v = sp.N(sp.diff(grad_q, c).subs(at), 15)
    coupled = abs(value) > 1e-12 and abs(value_v) > 1e-12
    # the same numerically with numerics.attention_backward: changing W^K changes the gradient of W^Q
    from numerics import attention_backward

    rng = np.random.default_rng(8)
    X, Wq, Wk, Wv, G = (rng.standard_normal(s) for s in ((5, 4), (4, 4), (4, 4), (4, 4), (5, 4)))

    def grad_wq(wk):
        dq, _, _ = attention_backward(X @ Wq, X @ wk, X @ Wv, G)
        return X.T @ dq

    change = float(np.abs(grad_wq(Wk) - grad_wq(Wk + 0.5 * rng.standard_normal((4, 4)))).max())
    data = {"x": [1, 2], "point": {"W^Q": 0.5, "W^K": 0.5, "W^V": 1}, "d2L_dWQ_dWK": float(value),
            "d2L_dWQ_dWV": float(value_v), "numeric_change_of_dL_dWQ_when_WK_moves": change}
    if not coupled:  # one uncoupled example proves no independence: no verdict without evidence for it
        raise RuntimeError(f"the gradients came out uncoupled in this example ({data}): it decides nothing")
    return CheckOutcome(Verdict.CORRECTED, Method.SYMBOLIC, [
        counterexample(f"not learned independently: d^2 L / dW^Q dW^K = {float(value):.6f} and d^2 L / dW^Q dW^V = "
                       f"{float(value_v):.6f}, both != 0 (exact derivatives evaluated to 15 digits), for the sum of the "
                       f"outputs of 1-d attention on x = (1, 2) at W^Q = W^K = 1/2, W^V = 1; numerically, moving W^K "
                       f"changes dL/dW^Q by up to {change:.3f}", **data),
        derived("exact gradient (sympy)", dL_dWQ=str(grad_q)),
    ], corrected_statement=(
        r"$W^Q$, $W^K$, $W^V$ are separate parameters (no entry is shared), but they are not learned "
        r"independently: the gradient $\partial L/\partial W^Q$ depends on the current values of $W^K$ and $W^V$ "
        r"($\partial^2 L/\partial W^Q\partial W^K \ne 0$ and $\partial^2 L/\partial W^Q\partial W^V \ne 0$), so "
        r"gradient descent updates each matrix using the others."))


# ---- worked example (line 134): feed-forward with GELU -----------------------------------------

@claim(134,
       title="Worked example (code): feed-forward layer with tanh-GELU",
       statement=r"\mathrm{FFN}(x) = \mathrm{GELU}(xW_1+b_1)W_2+b_2:\ \mathbb{R}^4 \to \mathbb{R}^8 \to \mathbb{R}^4,\ "
                 r"\mathrm{GELU}(x) \approx 0.5x(1+\tanh[\sqrt{2/\pi}(x+0.044715x^3)])",
       assumptions=["the document's code, run as printed"])
def check_example_ffn_code() -> CheckOutcome:
    start, ns = _run_example(134)
    from numerics import gelu

    steps: list[Step] = []
    d, d_ff = ns["d"], ns["d_ff"]
    steps.append(fact(r"xW_1 + b_1 \in \mathbb{R}^{d_{ff}},\ \mathrm{FFN}(x) \in \mathbb{R}^{d}",
                      f"document's code: hidden {ns['hidden'].shape}, output {ns['output'].shape}",
                      ns["hidden"].shape == (d_ff,) and ns["output"].shape == (d,), "running the document's code"))
    grid = np.linspace(-6, 6, 2001)
    doc_gelu = ns["gelu"](grid)
    ref_tanh = gelu(grid, approximate="tanh")
    exact = gelu(grid)
    gap_tanh = float(np.abs(doc_gelu - ref_tanh).max())
    gap_exact = float(np.abs(doc_gelu - exact).max())
    steps.append(fact(r"0.5x(1+\tanh[\sqrt{2/\pi}(x+0.044715x^3)]) \approx x\Phi(x)",
                      f"the document's gelu equals the standard tanh form (max diff {gap_tanh:.1e}); its largest distance "
                      f"from x Phi(x) on the grid is {gap_exact:.6e}", gap_tanh < 1e-12 and gap_exact < 5e-4,
                      "numerics.gelu on 2001 points"))
    rigorous, ev = derivation("gelu-tanh-error")
    if rigorous:
        from ._derivations import derivation_object

        results = derivation_object("gelu-tanh-error").results
        lower, upper = float(results.get("lower", "nan")), float(results.get("upper", "nan"))
        steps.append(fact(rf"\max_{{\mathrm{{grid}}}} |\mathrm{{err}}| = {gap_exact:.6e} \le {upper:.6e}",
                          "the grid maximum is within the certified bound of the gelu derivation", gap_exact <= upper + 1e-12,
                          "comparison with the derivation's interval-certified sup"))
    checked = proof(f"{DOC}.check_example_ffn_code", steps)
    if not checked.valid:
        return CheckOutcome(Verdict.REFUTED, Method.NUMERIC, [counterexample(
            "the example's code does not do what the text says"), ev])
    # The code is checked on a grid, as every "the document's code computes X" claim is checked on
    # finitely many inputs (SUPPORTED, see code_agrees); the approximation it uses needs the gelu
    # derivation's certified sup bound: a grid maximum alone bounds nothing between its points.
    if not rigorous:
        raise RuntimeError("the gelu derivation is not available: the grid check alone gives no verdict")
    return code_agrees(checked, [
        steps_evidence(checked, "the example's code expands 4 -> 8 -> 4 with the standard tanh GELU, whose largest distance "
                       f"from x Phi(x) over all x lies in {interval_text(lower, upper)} (certified by interval "
                       "arithmetic, gelu derivation)", grid="2001 points on [-6, 6]", max_error_on_grid=gap_exact,
                       certified_sup_interval=[lower, upper], max_difference_from_tanh_form=gap_tanh), ev],
        inputs="the document's own x (shapes); its gelu on 2001 points of [-6, 6]",
        reference="numerics.gelu(approximate='tanh') in float64 (the same formula); the derivation's certified sup",
        tolerance="1e-12 between the two tanh forms (float64 rounding of one formula evaluated twice)",
        error_rate="not statistical: a deterministic grid, the code is not checked between its points; the "
                   "approximation's error over all x is certified (interval arithmetic)")


# ---- Proposição 2: the FFN is nonlinear; without GELU it collapses ------------------------------

@claim(177,
       title="The feed-forward layer introduces nonlinearity",
       statement=r"\mathrm{GELU}(xW_1+b_1)W_2+b_2 \text{ is not affine; without GELU it is the affine map } x W_1W_2 + b_1W_2 + b_2")
def check_ffn_nonlinear() -> CheckOutcome:
    steps: list[Step] = []
    d, f = 2, 3
    x = sp.Matrix(1, d, lambda i, j: sp.Symbol(f"x_{j}"))
    W1 = sp.Matrix(d, f, lambda i, j: sp.Symbol(f"a_{i}{j}"))
    W2 = sp.Matrix(f, d, lambda i, j: sp.Symbol(f"c_{i}{j}"))
    b1 = sp.Matrix(1, f, lambda i, j: sp.Symbol(f"b_{j}"))
    b2 = sp.Matrix(1, d, lambda i, j: sp.Symbol(f"e_{j}"))
    steps.append(equal((x * W1 + b1) * W2 + b2, x * (W1 * W2) + (b1 * W2 + b2),
                       "without an activation the two layers are one affine map x W + b with W = W_1W_2, b = b_1W_2 + b_2",
                       how="sympy, explicit 2 -> 3 -> 2 symbolic matrices",
                       display=r"(xW_1 + b_1)W_2 + b_2 = x(W_1W_2) + (b_1W_2 + b_2)"))
    from numerics import feed_forward, init_ffn_params

    p = init_ffn_params(4, 8, seed=1)
    rng = np.random.default_rng(9)
    u, v = rng.standard_normal((2, 4))
    mid = feed_forward((u + v)[None] / 2, p)[0]
    avg = (feed_forward(u[None], p)[0] + feed_forward(v[None], p)[0]) / 2
    gap = float(np.abs(mid - avg).max())
    steps.append(fact(r"\mathrm{FFN}\big(\tfrac{u+v}{2}\big) \ne \tfrac{1}{2}\big(\mathrm{FFN}(u) + \mathrm{FFN}(v)\big)",
                      f"with GELU the FFN is not affine: midpoint gap {gap:.3g} (numerics.feed_forward, d = 4, d_ff = 8)",
                      gap > 1e-6, "numeric witness, far above float64 rounding"))
    _, ev = derivation("linear-collapse")
    checked = proof(f"{DOC}.check_ffn_nonlinear", steps)
    return proved(checked, Method.SYMBOLIC,
                        [steps_evidence(checked, "the FFN with GELU is non-affine; without it, it would collapse to one affine map"), ev])


# ---- Proposição 2.1 (informal): expansion and reduction ---------------------------------------

@claim(194,
       title="Expansion d -> d_ff -> d allows more complex transformations",
       statement=r"d \to d_{ff} > d \to d \text{ permits more complex transformations (informal)}")
def check_expansion_informal() -> CheckOutcome:
    from numerics import feed_forward, init_ffn_params

    p = init_ffn_params(4, 16, seed=0)
    y = feed_forward(np.ones((3, 4)), p)
    narrow = init_ffn_params(4, 2, seed=0)  # d_ff = 2 < d = 4
    u, v = np.random.default_rng(9).standard_normal((2, 4))
    gap = float(np.abs(feed_forward(((u + v) / 2)[None], narrow)[0]
                       - (feed_forward(u[None], narrow)[0] + feed_forward(v[None], narrow)[0]) / 2).max())
    holds = p.w1.shape == (4, 16) and p.w2.shape == (16, 4) and y.shape == (3, 4)
    return informal_outcome(
        "'transformações mais complexas' is not defined; expansion to d_ff > d is a design choice (Vaswani et al. use "
        "d_ff = 4d): the nonlinearity, not the expansion, is what makes the layer non-affine",
        holds and gap > 1e-6,
        numeric(f"proxy: numerics.feed_forward maps (n, d) -> (n, d) through width d_ff: W_1 {p.w1.shape}, W_2 {p.w2.shape}, "
                f"output {y.shape}; with d_ff = 2 < d = 4 it is non-affine too (midpoint gap {gap:.3g}, seed 9)",
                w1=list(p.w1.shape), w2=list(p.w2.shape), out=list(y.shape), narrow_midpoint_gap=gap),
        refutes_if_false="the layer would not map d -> d_ff -> d",
    )


# ---- worked example (line 215): multi-head code --------------------------------------------------

def _declared_simplification(code: str, start: int) -> tuple[int, str] | None:
    """The document's own comment that its attention leaves softmax out ("sem softmax"), if any:
    (document line, the comment)."""
    for number, line in enumerate(code.splitlines(), start + 1):
        if line.lstrip().startswith("#") and "sem softmax" in line:
            return number, repair(line.strip())
    return None


def _what_the_heads_compute(ns: dict) -> tuple[bool, bool, dict]:
    """What the example's ``attention`` returns on its own Q, K, V: whether it is the scaled score
    Q K^T / sqrt(d_k), whether it reads V at all (V replaced by V + 1 and by -V), and the shapes."""
    attention, dk = ns["attention"], ns["dk"]
    found: dict = {}
    is_score, ignores_v = True, True
    for i in (1, 2):
        q, k, v = ns[f"Q{i}"], ns[f"K{i}"], ns[f"V{i}"]
        head = np.asarray(attention(q, k, v))
        score = np.dot(q, k.T) / np.sqrt(dk)
        is_score &= bool(head.shape == np.shape(score) and np.array_equal(head, score))
        ignores_v &= all(np.array_equal(head, np.asarray(attention(q, k, other))) for other in (v + 1, -v))
        found[f"head{i}"] = {"shape": list(head.shape), "value": head.tolist(), "V_shape": list(v.shape)}
    found["W_O_shape"] = list(np.shape(ns["W_O"]))
    return is_score, ignores_v, found


@claim(215,
       title="Worked example (code): two heads, concatenation and projection",
       statement=r"\text{the code computes two heads, concatenates them and projects back to } \mathbb{R}^d",
       assumptions=["the document's code, run as printed",
                    "added: for the validate battery only (evidence marked ADAPTED), the example's lines applied to a "
                    "sequence x (N, 4), with the battery's weights in place of the document's random ones and its "
                    "prints and np.random.seed left out; d = 4, h = 2, d_k = d_v = 2 and its attention function kept",
                    "the missing softmax is the document's declared simplification ('sem softmax para demonstração') "
                    "and is not counted against it"])
def check_example_multihead_code() -> CheckOutcome:
    start, code = code_block_after(DOC, 215)
    ns, failure = run_document_code_until_error(code, f"seed001_line{start}")
    declared = _declared_simplification(code, start)
    declared_text = (f"the document declares its attention a simplification without softmax (line {declared[0]}: "
                     f"{declared[1]!r}), so that is not counted as an error here" if declared else
                     "the document does not say its attention leaves softmax out")
    # The battery runs the document's lines adapted to sequences (d = 4, h = 2 as printed) and names the faults.
    _, example = seed001_multihead()
    table = battery_evidence(run_battery(example, "mha", d_model=4, num_heads=2),
                             f"the example's lines (fence on line {start}) applied to a sequence x (N, 4) with the "
                             "battery's weights", adapted=True)
    if failure is None:
        out = np.asarray(ns.get("output"))
        if out.shape != (ns["d"],):
            return CheckOutcome(Verdict.REFUTED, Method.NUMERIC, [counterexample(
                f"the example's code runs but gives output of shape {out.shape}, not ({ns['d']},)", shape=list(out.shape)),
                table])
        # Running with the right shape proves nothing about what it computes: no verdict without a check.
        raise RuntimeError(f"the example's code (fence on line {start}) now runs and gives shape {out.shape}: "
                           "compare its output with numerics.multi_head_attention before giving a verdict")
    line, source, exc = failure
    crash = counterexample(
        f"as printed, the example's code (fence on line {start}) stops on line {start + line}, {source!r}, with "
        f"{type(exc).__name__}: {exc}; no output is computed, so nothing is concatenated or projected",
        exception=f"{type(exc).__name__}: {exc}", line=start + line, statement=source,
        defined_before_the_error=sorted(k for k in ns if not k.startswith("__") and k != "np"))
    evidence = [crash]
    if {"attention", "Q1", "K1", "V1", "Q2", "K2", "V2", "W_O", "dk"} <= ns.keys():
        is_score, ignores_v, heads = _what_the_heads_compute(ns)
        shapes = ", ".join(f"head{i} has shape {tuple(heads[f'head{i}']['shape'])}" for i in (1, 2))
        score = ("each equals its scaled score Q_i K_i^T / sqrt(d_k) exactly" if is_score else
                 "they are not the scaled scores Q_i K_i^T / sqrt(d_k)")
        uses_v = ("is unchanged when V_i is replaced by V_i + 1 or -V_i, so the heads never use V "
                  f"(two heads of width d_v = {heads['head1']['V_shape'][-1]}, as V_i has, would concatenate to the "
                  f"{heads['W_O_shape'][0]} rows of W_O {tuple(heads['W_O_shape'])})" if ignores_v else
                  "changes when V_i changes")
        summary = (f"what the lines before the error compute: {shapes}; {score} and {uses_v}"
                   + ("; with one token x_i, Q_i K_i^T is a scalar" if is_score else "")
                   + f". {declared_text[0].upper()}{declared_text[1:]}")
        evidence.append(numeric(summary, **heads, declared_simplification=declared[1] if declared else None))
    else:
        evidence.append(note(declared_text))
    if declared and any("no-softmax" in fault for fault in table.data["faults"]):
        table.summary += ". Of the faults named, 'no softmax' is the document's declared simplification"
    evidence.append(table)
    return CheckOutcome(Verdict.REFUTED, Method.NUMERIC, evidence)


# ---- Teorema 1 (informal): expressivity --------------------------------------------------------

@claim(282,
       title="Multi-head attention is more expressive than one head",
       statement=r"\text{multi-head attention is more expressive than single-head attention (informal)}")
def check_expressivity_informal() -> CheckOutcome:
    from numerics import init_params, multi_head_attention

    d, h = 8, 2
    p = init_params(d, h, seed=0)
    dk = d // h
    ranks = [int(np.linalg.matrix_rank(p.w_q[:, i * dk:(i + 1) * dk] @ p.w_k[:, i * dk:(i + 1) * dk].T)) for i in range(h)]
    single = init_params(d, 1, seed=0)
    single_rank = int(np.linalg.matrix_rank(single.w_q @ single.w_k.T))
    x = np.random.default_rng(0).standard_normal((6, d))
    _, w = multi_head_attention(x, p, return_weights=True)
    gap = float(np.abs(w[0] - w[1]).max())
    holds = gap > 1e-3 and max(ranks) <= dk
    # Nothing here decides whether either class of functions contains the other: not claimed.
    return informal_outcome(
        "'expressividade' is not defined, and the statement names no function class to compare",
        holds,
        numeric(f"proxy: the two heads of a random layer attend differently (max |A_1 - A_2| = {gap:.3f}); each head's "
                f"score form W_i^Q (W_i^K)^T has rank {ranks} <= d/h = {dk}, a single head of width d = {d} rank "
                f"{single_rank} (random init, seed 0)",
                ranks=ranks, single_head_rank=single_rank, max_abs_difference=gap),
        refutes_if_false="heads that always attend alike cannot combine different patterns",
    )
