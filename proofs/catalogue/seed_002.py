"""Seed 002 (002_b7829993fcbce14a.txt): "Parallel Attention Heads em Transformers".

This document has **no** labelled statement (no Lema, Teorema, Proposição, Corolário,
Observação, Definição or Exemplo header), so :func:`proofs.catalogue.labels_in_document`
finds nothing in it. To audit it anyway, the catalogue adds *supplementary* claims for
its checkable assertions, each pointing at the line of the document's own bold label or
code definition (labels "Complexidade Computacional (line 144)", ...). The count test
treats them separately: they are not statement labels.

The two PyTorch code claims are included only when torch is importable (torch is an
optional dependency); they run the document's code exactly as printed.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ..claims import CheckOutcome, Method, Verdict
from ..derivation import Step
from . import _counts as C
from ._derivations import derivation
from ._doc import code_block_after, run_document_code
from ._document_code import battery_evidence, run_battery, seed002_class
from ._kit import (StepFailed, counterexample, derived, fact, failed_steps, informal_outcome, note, numeric, proof,
                   proved, steps_evidence)
from ._registry import claim

DOC = "002"
NEEDS_TORCH = {"torch": "the document's code needs torch (pip install 'attnverify[torch]')"}


# ---- "Complexidade Computacional" (line 144-145) ----------------------------------------------

@claim(144, "Complexidade Computacional",
       title="Complexity of multi-head attention is O(N^2 d), heads add a constant factor",
       statement=r"\mathrm{cost}(\mathrm{MHA}) = O(N^2 d);\ \text{more heads change the count by a constant factor only}",
       assumptions=["d_k = d_v = d / h", "operation counts as in _counts.py",
                    "multi-head attention as defined on lines 122-134, projections included"])
def check_complexity() -> CheckOutcome:
    """A big-O is a statement about limits, so the limits decide, never one instance: for fixed d,
    flops / N^2 d tends to a constant as N grows (O(N^2 d) holds whenever d = O(N)); for fixed N it
    tends to infinity as d grows (the N d^2 of the projections), so O(N^2 d) fails in N and d jointly."""
    n, d, h = C.n, C.d, C.h
    r = sp.Symbol("r", nonnegative=True)  # h = d - r
    total = C.mha_flops()
    terms = C.mha_terms()
    over_n2d_d = sp.limit(total / (n ** 2 * d), d, sp.oo)
    over_n2d_n = sp.simplify(sp.limit(total / (n ** 2 * d), n, sp.oo))
    bound = C.nonnegative_for((8 * n * d ** 2 + 7 * n ** 2 * d - total).subs(h, d - r), {n: 1, d: 1, r: 0})
    limit_at_most_7 = C.nonnegative_for(sp.expand((7 - over_n2d_n) * d).subs(h, d - r), {d: 1, r: 0})
    h_part = C.h_dependent_part(total)
    h_only_softmax = sp.Poly(h_part, h).degree() <= 1 and sp.Poly(h_part, d).degree() == 0
    ratio_hd_h1 = sp.expand(total.subs(h, d)) / sp.expand(total.subs(h, 1))
    ratio_bound = C.nonnegative_for(sp.expand(7 * total.subs(h, 1) - 4 * total.subs(h, d)), {n: 1, d: 1})
    steps: list[Step] = []
    steps.append(fact(rf"\lim_{{N\to\infty}} \mathrm{{flops}}/(N^2 d) = {sp.latex(over_n2d_n)} \le 7\quad (h \le d)",
                      "for fixed d the count grows like N^2 d", limit_at_most_7, "sympy limit; 7 - limit >= 0 for h <= d"))
    steps.append(fact(r"\mathrm{flops} \le 8Nd^2 + 7N^2d \le (8k + 7)N^2d \ \text{when } d \le kN",
                      "so O(N^2 d) holds whenever d = O(N)", bound,
                      "sympy: with h = d - r, N, d = 1 + ... the slack of the first bound has nonnegative coefficients"))
    steps.append(fact(rf"\lim_{{d\to\infty}} \mathrm{{flops}}/(N^2 d) = {sp.latex(over_n2d_d)}",
                      "for fixed N it is not: the projections cost 8Nd^2 - 4Nd" if over_n2d_d == sp.oo else
                      "for fixed N it stays bounded as d grows", True, "sympy limit (the value decides the verdict)"))
    steps.append(fact(rf"\mathrm{{flops}}_{{h=d}} / \mathrm{{flops}}_{{h=1}} < 7/4",
                      "the number of heads changes the count by a bounded factor (d_k = d/h, 1 <= h <= d)", ratio_bound,
                      "sympy: 7 flops(h=1) - 4 flops(h=d) has nonnegative coefficients after N, d = 1 + ..."))
    data = {"exact_count": str(total), "stages": {key: str(v) for key, v in terms.items()},
            "h_dependent_part": str(h_part), "limit_flops_over_N2d_as_N_grows": str(over_n2d_n),
            "limit_flops_over_N2d_as_d_grows": str(over_n2d_d), "ratio_h_d_over_h_1": str(ratio_hd_h1),
            "illustration_not_evidence": {"N=10, d=512, h=8": int(C.mha_flops(10, 512, 8)), "N^2 d": 51200},
            "reading": "multi-head attention as the document defines it (lines 122-134): with the projections "
                       "X W_i^Q, X W_i^K, X W_i^V and W^O"}
    checked = proof(f"{DOC}.check_complexity", steps)
    if over_n2d_d != sp.oo:
        return proved(checked, Method.SYMBOLIC, [steps_evidence(checked, "the count is O(N^2 d)", **data)])
    if not checked.valid:
        raise StepFailed("a step of the complexity limits failed: " + failed_steps(checked))
    return CheckOutcome(Verdict.CORRECTED, Method.SYMBOLIC, [
        counterexample(f"O(N^2 d) holds only where d = O(N): for fixed d, flops / N^2 d -> {C.text(over_n2d_n)} <= 7 as N "
                       "grows, but for fixed N it -> oo as d grows, because the projections cost 8Nd^2 - 4Nd (exact "
                       "limits of the exact count). The heads change the count only through "
                       f"{C.text(h_part)} (softmax and scaling), by a factor below 7/4, as stated", **data),
        steps_evidence(checked, "the limits that decide the big-O, and the effect of h", **data),
        *[e for e in (C.compare_with_derivation(total),) if e is not None],
    ], corrected_statement=(
        rf"With $d_k = d/h$ and $n = N$ tokens, multi-head attention costs exactly ${sp.latex(total)}$ flops: "
        r"$O(N^2 d + N d^2)$, which is $O(N^2 d)$ when $d = O(N)$ ($\mathrm{flops}/N^2d \to "
        rf"{sp.latex(over_n2d_n)} \le 7$ as $N$ grows), but not in $N$ and $d$ jointly: for fixed $N$, "
        r"$\mathrm{flops}/N^2d \to \infty$ as $d$ grows (the $N d^2$ of the projections). "
        rf"The number of heads changes only the term ${sp.latex(h_part)}$ (softmax and scaling): "
        r"$1 \le h \le d$ changes the count by a factor below $7/4$."
        if h_only_softmax else r"Multi-head attention costs $O(N^2 d + N d^2)$."))


# ---- "Nota Importante" (line 138): d = h d_k -------------------------------------------------

@claim(138, "Nota Importante",
       title="d = h d_k: trade-off between heads and head width",
       statement=r"d = h\,d_k \text{ creates a trade-off between per-head capacity and the number of heads (informal)}")
def check_split_informal() -> CheckOutcome:
    d, h = sp.symbols("d h", positive=True)
    dk = d / h
    params = sp.simplify(3 * d * h * dk + h * dk * d)  # W^Q, W^K, W^V: d x h d_k; W^O: h d_v x d
    holds = sp.simplify(params - 4 * d ** 2) == 0
    _, ev = derivation("multihead")
    outcome = informal_outcome(
        "'trade-off between the capacity of each head and the number of perspectives' names no measurable quantity",
        holds,
        derived(f"proxy: with d = h d_k the weights hold {C.text(params)} parameters whatever h (sympy), so h only redistributes "
                f"a fixed budget, as in the constant-parameter rows (A) of Table 3 of Vaswani et al. 2017",
                parameter_count=str(params)),
        refutes_if_false="if the budget grew with h there would be no trade-off at fixed d",
    )
    outcome.evidence.append(ev)
    return outcome


# ---- code: class MultiHeadAttention (line 77) --------------------------------------------------

def _torch_reference(model, d_model: int, heads: int, x):
    from numerics import MHAParams, multi_head_attention

    lin = [getattr(model, n) for n in ("W_q", "W_k", "W_v", "W_o")] if hasattr(model, "W_q") else \
        [getattr(model, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]
    w = [m.weight.detach().numpy().T for m in lin]
    b = [m.bias.detach().numpy() for m in lin]
    p = MHAParams(*w, num_heads=heads, b_q=b[0], b_k=b[1], b_v=b[2], b_o=b[3])
    return multi_head_attention(x, p)


@claim(77, "class MultiHeadAttention",
       title="Code: MultiHeadAttention (split_heads, scaled attention, W_o)",
       statement=r"\text{the class computes } \mathrm{Concat}(\mathrm{head}_1..\mathrm{head}_h)W^O",
       assumptions=["the document's code, run as printed",
                    "added: in float64 (the document's default is float32), so agreement is judged at 1e-12",
                    "added: the validate battery (kind='mha') runs it in float64 and float32 on weights it sets"],
       requires=NEEDS_TORCH)
def check_mha_code() -> CheckOutcome:
    import torch

    start, cls = seed002_class("MultiHeadAttention")
    errors = []
    with torch.random.fork_rng(devices=[]):
        for seed in range(3):
            torch.manual_seed(seed)
            model = cls(8, 2).double()
            x = np.random.default_rng(seed).standard_normal((2, 5, 8))
            with torch.no_grad():
                got = model(*(torch.from_numpy(x),) * 3).numpy()
            errors.append(float(np.abs(got - _torch_reference(model, 8, 2, x)).max()))
    worst = max(errors)
    battery = run_battery(lambda: cls(8, 2), "mha")
    data = {"trials": 3, "seeds": [0, 1, 2], "shape": [2, 5, 8], "heads": 2, "max_errors": errors, "tolerance": 1e-12,
            "inputs": "3 random inputs (2, 5, 8), seeds 0 to 2, on torch's initial weights (seeds 0 to 2); and the "
                      "battery's examples (first evidence: its settings and each property's examples)",
            "reference": "numerics.multi_head_attention in float64 on the same weights (the battery: float64 against "
                         "mpmath up to width 64, float32 by its tolerance rule)",
            "error_rate": "not statistical: two implementations of different functions agree on random real inputs "
                          "with probability 0; the tolerance covers float64 rounding"}
    table = battery_evidence(battery, f"the document's MultiHeadAttention(8, 2) (code fence line {start})")
    if worst < 1e-12 and battery.passed:
        return CheckOutcome(Verdict.SUPPORTED, Method.NUMERIC, [table, numeric(
            f"the document's MultiHeadAttention (code fence line {start}) matches numerics.multi_head_attention on 3 "
            f"random inputs, max error {worst:.1e}", **data)])
    found = [] if worst < 1e-12 else [counterexample(
        f"the document's MultiHeadAttention differs from multi-head attention by up to {worst:.3g}", **data)]
    return CheckOutcome(Verdict.REFUTED, Method.NUMERIC, [table] + found)


# ---- code: class PrunableMultiHeadAttention (line 269) ------------------------------------------

_FIX = (
    ("k = self.k_proj(key).view(bsz, seq_len, self.num_heads, self.head_dim)",
     "k = self.k_proj(key).view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2)"),
    ("q = self.q_proj(query).view(bsz, seq_len, self.num_heads, self.head_dim)",
     "q = self.q_proj(query).view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2)"),
    ("v = self.v_proj(value).view(bsz, seq_len, self.num_heads, self.head_dim)",
     "v = self.v_proj(value).view(bsz, seq_len, self.num_heads, self.head_dim).transpose(1, 2)"),
    ("self.head_mask.view(1, 1, -1, 1)", "self.head_mask.view(1, -1, 1, 1)"),
    ("attn_output = attn_output * self.head_importance *", "attn_output = attn_output * self.head_importance.view(1, -1, 1, 1) *"),
)


def _prunable_run(cls, d_model: int, heads: int, x):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = cls(d_model, heads).double()
    seen = {}
    original_matmul = torch.matmul

    def spy(a, b, *args, **kw):
        out = original_matmul(a, b, *args, **kw)
        seen.setdefault("scores", tuple(out.shape))
        return out

    with torch.no_grad():
        torch.matmul = spy
        try:
            got = model(*(torch.from_numpy(x),) * 3).numpy()
        finally:
            torch.matmul = original_matmul
    return model, got, seen.get("scores", ())


@claim(269, "class PrunableMultiHeadAttention",
       title="Code: PrunableMultiHeadAttention implements multi-head attention with head pruning",
       statement=r"\text{the class computes multi-head attention, with pruned heads masked out}",
       assumptions=["the document's code, run as printed",
         "added: in float64 (the document's default is float32), "
         "so agreement is judged at 1e-12"],
       requires=NEEDS_TORCH)
def check_prunable_code() -> CheckOutcome:
    start, code = code_block_after(DOC, 263)
    cls = run_document_code(code, f"seed002_line{start}")["PrunableMultiHeadAttention"]
    fixed_code = code
    for old, new in _FIX:
        if old not in fixed_code:
            raise LookupError(f"expected line not found in the document's code: {old!r}")
        fixed_code = fixed_code.replace(old, new)
    fixed_cls = run_document_code(fixed_code, f"seed002_line{start}_fixed")["PrunableMultiHeadAttention"]
    rng = np.random.default_rng(0)
    evidence, data = [], {"code_fence_line": start, "fix": [{"from": a, "to": b} for a, b in _FIX]}
    # 1. the document's own usage: PrunableMultiHeadAttention(d_model=512, num_heads=8)
    try:
        _prunable_run(cls, 512, 8, rng.standard_normal((1, 3, 512)))
        data["usage_512_8"] = "runs"
    except Exception as exc:  # the finding: it does not run
        data["usage_512_8"] = f"{type(exc).__name__}: {exc}"
        evidence.append(counterexample(
            f"PrunableMultiHeadAttention(d_model=512, num_heads=8), the document's own usage, raises "
            f"{type(exc).__name__}: {exc} (head_importance of shape (8,) is broadcast against head_dim = 64)", **data))
    # 2. where it runs (head_dim == num_heads): compare with multi-head attention
    x = rng.standard_normal((2, 5, 4))
    model, got, scores = _prunable_run(cls, 4, 2, x)
    ref = _torch_reference(model, 4, 2, x)
    err = float(np.abs(got - ref).max())
    _, got_fixed, _ = _prunable_run(fixed_cls, 4, 2, x)
    err_fixed = float(np.abs(got_fixed - ref).max())
    data.update({"score_tensor_shape_d4_h2": list(scores), "max_error_d4_h2": err, "max_error_after_fix": err_fixed})
    if err > 1e-12:
        evidence.append(counterexample(
            f"with d_model = 4, 2 heads (head_dim = num_heads, the only case where it runs) it is not multi-head "
            f"attention: q, k, v are viewed as (bsz, seq, heads, head_dim) without .transpose(1, 2), so the scores have "
            f"shape {tuple(scores)} and each position attends over the heads, not over the sequence; output differs by "
            f"up to {err:.3g} (5 tokens, seed 0)", **data))
    battery = run_battery(lambda: cls(4, 2), "mha")
    table = battery_evidence(battery, "the document's PrunableMultiHeadAttention(4, 2) (head_dim = num_heads, "
                             "the only size at which it runs)")
    if not evidence and battery.passed:
        return CheckOutcome(Verdict.SUPPORTED, Method.NUMERIC, [table, numeric(
            "the document's PrunableMultiHeadAttention runs and matches multi-head attention", **data)])
    evidence.insert(0, table)  # first: the check table shows the first piece of evidence
    if err_fixed < 1e-12:
        evidence.append(note("with .transpose(1, 2) on q, k, v and the head mask and importance broadcast over the head "
                             f"axis, the same weights give multi-head attention (max error {err_fixed:.1e})", **data))
    return CheckOutcome(Verdict.REFUTED, Method.NUMERIC, evidence)
