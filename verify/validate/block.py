"""kind="block": the properties of a transformer encoder block, each with a named diagnosis.

The reference is :func:`numerics.transformer_block` on the candidate's weights (or weights the
battery sets), with the conventions the candidate declares: ``norm`` ("post": the original
Transformer, ``LN(x + sublayer(x))``; "pre": ``x + sublayer(LN(x))``) and the GELU ``approximate``
("none": x Phi(x) with erf; "tanh": 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))), torch's
``approximate="tanh"``).

What is a fault and what a convention. Pre-LN and post-LN are both conventions, and so are the
two GELUs: the block is checked against the ones it declares (a TransformerEncoderLayer declares
both through ``norm_first`` and ``activation``; a plain function gets "post" and "none" unless the
caller says otherwise). Computing the *other* placement or the other GELU than declared is a fault
(the two GELUs differ by up to 4.7e-4, far above float32 rounding). A tanh GELU whose constant is
not 0.044715 (or any other activation) is a fault whatever is declared, and so is a layer norm over
any axis but the features.

agreement
    The block against numerics by the tolerance rule (float64 against mpmath; float32 against
    float64 with numerics in float32 as the plain one). A failure is diagnosed by matching the fault
    models of :mod:`verify.validate.faults` (placement, layer-norm axis, GELU, the attention's
    merge/split/W^O) and, failing that, by fitting the tanh-GELU constant.
masks
    With a boolean mask and causal masking, when the block takes them.
layer norm placement
    Both sub-layers switched off (W^O = 0, b_o = 0, W_2 = 0, b_2 = 0): a pre-LN block is then the
    identity, a post-LN block is LN2(LN1(x)).
position-wise
    With the attention switched off, token i's output depends on token i alone (a layer norm over
    the tokens breaks this).
gelu
    With the attention switched off, which GELU the output is made of: erf, the tanh form with
    0.044715, or the tanh form with a fitted constant.
batch independence, determinism
    As for kind mha (:mod:`verify.validate.repeats`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from numerics import BlockParams, FFNParams, transformer_block
from numerics import reference as mp_reference
from verify.validate import faults, repeats
from verify.validate.context import CandidateError
from verify.validate.mha import _round, raised, register_properties, repeat_property
from verify.validate.modules import BlockCandidate
from verify.validate.result import Measurement, PropertyResult, Status
from verify.validate.tolerance import ABS64, absolute, rule

__all__ = ["agreement", "masks", "norm_placement", "position_wise", "gelu", "batch_independence", "determinism",
           "diagnose"]

MPMATH_MAX_WIDTH = 64
BATCH, LENGTH = 2, 5
_GELU = {"none": "erf", "tanh": "tanh"}
_APPROXIMATE = {"erf": "none", "tanh": "tanh"}


class Problem:
    """x (B, N, D) with weights, optional mask (N, N) and causal."""

    def __init__(self, cand: BlockCandidate, seed: int, *, masked: bool = False, causal: bool = False):
        rng = np.random.default_rng([seed, 3, masked, causal])
        self.params = cand.params(seed)
        self.x = rng.standard_normal((BATCH, LENGTH, cand.d_model))
        self.mask = None
        if masked:
            mask = rng.random((LENGTH, LENGTH)) < 0.6
            mask[:, 0] = True
            self.mask = mask
        self.causal = causal

    def options(self) -> dict[str, Any]:
        return {"mask": self.mask, "causal": self.causal}

    def describe(self) -> dict[str, Any]:
        return {"x": list(self.x.shape), "mask": None if self.mask is None else list(self.mask.shape),
                "causal": self.causal}


def _round_block(p: BlockParams, dtype: str) -> BlockParams:
    r = lambda a: None if a is None else np.asarray(a, dtype=dtype).astype(np.float64)  # noqa: E731
    return BlockParams(attn=_round(p.attn, dtype), ffn=FFNParams(*(r(getattr(p.ffn, f)) for f in ("w1", "b1", "w2", "b2"))),
                       **{f: r(getattr(p, f)) for f in ("ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta")})


def _cast_block(p: BlockParams, dtype: str) -> BlockParams:
    c = lambda a: None if a is None else np.asarray(a, dtype=dtype)  # noqa: E731
    return BlockParams(attn=replace(p.attn, **{k: c(v) for k, v in p.attn.arrays().items()}),
                       ffn=FFNParams(*(c(getattr(p.ffn, f)) for f in ("w1", "b1", "w2", "b2"))),
                       **{f: c(getattr(p, f)) for f in ("ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta")})


def _conventions(cand) -> dict[str, Any]:
    return {"norm": cand.norm, "approximate": cand.approximate, "eps": cand.eps}


def _measure(cand, problem: Problem, dtypes) -> list[Measurement]:
    conv = _conventions(cand)
    out = []
    for dtype in dtypes:
        if dtype == "float64":
            got = cand(problem.x, problem.params, dtype="float64", **problem.options())
            if got.shape != problem.x.shape:
                raise _Shape(got.shape, problem.x.shape)
            exact = cand.d_model <= MPMATH_MAX_WIDTH
            if exact:
                ref = mp_reference.to_float64(mp_reference.transformer_block(
                    problem.x, problem.params, mask=problem.mask, causal=problem.causal, **conv))
            else:
                ref = transformer_block(problem.x, problem.params, mask=problem.mask, causal=problem.causal, **conv)
            out.append(absolute(got, ref, bound=ABS64 if exact else 1e-10,
                                what="float64 against " + ("mpmath" if exact else "numerics float64")))
            continue
        x = problem.x.astype(dtype).astype(np.float64)
        params = _round_block(problem.params, dtype)
        got = cand(x, params, dtype=dtype, **problem.options())
        if got.shape != x.shape:
            raise _Shape(got.shape, x.shape)
        ref = transformer_block(x, params, mask=problem.mask, causal=problem.causal, **conv)
        plain = transformer_block(x.astype(dtype), _cast_block(params, dtype), mask=problem.mask, causal=problem.causal,
                                  **conv)
        out.append(rule(got, plain, ref, dtype=dtype, what=f"{dtype} against float64 (numerics {dtype} is the plain one)"))
    return out


class _Shape(AssertionError):
    def __init__(self, got, expected):
        super().__init__(f"output has shape {tuple(got)}, expected x's shape {tuple(expected)}")


def _fault_words(f: faults.BlockFault, cand) -> list[str]:
    """What a matched block model gets wrong relative to the candidate's declared conventions."""
    words = []
    declared_gelu = _GELU[cand.approximate]
    if f.norm != cand.norm:
        words.append(f"pre-LN and post-LN confused: it computes {f.norm}-LN where {cand.norm}-LN is declared")
    if f.ln_axis != -1:
        words.append("layer norm over the wrong axis: it normalises over the tokens (axis -2) instead of the features")
    if f.gelu != declared_gelu:
        words.append(f"GELU confused: it uses the {f.gelu} form where the {declared_gelu} form is declared "
                     f"(approximate={cand.approximate!r})")
    elif f.gelu == "tanh" and abs(f.gelu_c - faults.GELU_TANH_C) > 1e-9:
        words.append(f"a wrong GELU constant: c = {f.gelu_c:.6g} in tanh(sqrt(2/pi)(x + c x^3)) instead of 0.044715")
    words += f.attn.parts()
    return words


_CODES = {"pre-LN and post-LN": "block:norm-placement", "wrong axis": "block:ln-axis", "GELU confused": "block:gelu-form",
          "wrong GELU constant": "block:gelu-constant", "heads merged": "mha:merge-no-transpose",
          "heads split": "mha:split-no-transpose", "W^O left out": "mha:no-w_o"}


def _code(words: list[str]) -> str | None:
    return ",".join(code for key, code in _CODES.items() if any(key in w for w in words)) or None


def _match_block(cand, x, params, got, *, mask=None, causal=False) -> tuple[list[str] | None, str]:
    """Match ``got`` against the block fault models: (fault words or None when nothing matched, text)."""
    declared = _GELU[cand.approximate]
    models = {f: faults.block_model(x, params, f, mask=mask, causal=causal, eps=cand.eps)
              for f in faults.block_faults(cand.norm, declared)}
    found = faults.match(got, models)
    if found:
        f, dist = found[0]
        words = _fault_words(f, cand)
        return words, f"relative distance {dist:.1e}"
    # No model matched: try the tanh form with a fitted constant, both placements, features axis.
    best = None
    for norm in (cand.norm, {"post": "pre", "pre": "post"}[cand.norm]):
        c, dist = faults.fit_gelu_constant(got, lambda c, norm=norm: faults.block_model(
            x, params, faults.BlockFault(norm=norm, gelu="tanh", gelu_c=c), mask=mask, causal=causal, eps=cand.eps))
        if best is None or dist < best[2]:
            best = (norm, c, dist)
    norm, c, dist = best
    if dist <= faults.MATCH:
        f = faults.BlockFault(norm=norm, gelu="tanh", gelu_c=c)
        words = _fault_words(f, cand)
        if cand.approximate == "none":
            words = [w for w in words if not w.startswith("GELU confused")]
            if abs(c - faults.GELU_TANH_C) > 1e-9:
                words.append(f"a wrong GELU constant: c = {c:.6g} in tanh(sqrt(2/pi)(x + c x^3)) instead of 0.044715 "
                             "(and the tanh form where erf is declared)")
            else:
                words.append("GELU confused: it uses the tanh form where the erf form is declared")
        return words, f"relative distance {dist:.1e} after fitting the constant"
    return None, (f"it matches none of the {len(models)} block fault models; the closest tanh-GELU block "
                  f"(c = {c:.4g}, {norm}-LN) is {dist:.3g} away")


def diagnose(cand, seed: int) -> tuple[str, list[str]]:
    """The float64 output on a plain problem matched against the fault models: (text, fault words)."""
    problem = Problem(cand, seed)
    try:
        got = cand(problem.x, problem.params, dtype="float64")
    except CandidateError as exc:
        return f"it raises {raised(exc)}", []
    if got.shape != problem.x.shape:
        return f"its output has shape {got.shape}, not x's {problem.x.shape}", []
    words, how = _match_block(cand, problem.x, problem.params, got)
    if words is None:
        return how, []
    if not words:
        return "the unmasked block does agree, so the fault is specific to this problem's options", []
    return f"it computes the block with {'; and '.join(words)} ({how})", words


def _checked(name: str, cand, seed: int, problem: Problem, dtypes) -> PropertyResult:
    try:
        measurements = _measure(cand, problem, dtypes)
    except _Shape as exc:
        return PropertyResult(name, Status.FAIL, f"the {exc}", (), problem.describe())
    except CandidateError as exc:
        return PropertyResult(name, Status.ERROR, f"the candidate raised {raised(exc)}", (), problem.describe())
    if not measurements:
        return PropertyResult(name, Status.NOT_APPLICABLE, f"no dtype to run in: the battery compares float64, float32 "
                              f"and float16 runs, the settings gave {list(dtypes) or 'none the library holds'}")
    bad = [m for m in measurements if not m.ok]
    conv = f"{cand.norm}-LN, GELU approximate={cand.approximate!r}"
    if not bad:
        return PropertyResult(name, Status.PASS, f"agrees with numerics.transformer_block ({conv}) on the same weights "
                              f"({', '.join(m.what for m in measurements)})", tuple(measurements))
    worst = max(bad, key=lambda m: m.error / m.bound if m.bound else math.inf)
    text, words = diagnose(cand, seed)
    lead = f"differs from the {conv} block ({worst.what}: error {worst.error:.3g} > bound {worst.bound:.3g})"
    return PropertyResult(name, Status.FAIL, f"{lead}: {text}" if words else f"{lead}; {text}", tuple(measurements),
                          problem.describe(), _code(words))


def agreement(cand, seed: int, dtypes) -> PropertyResult:
    """The block on x (2, 5, D) against numerics by the tolerance rule."""
    return _checked("agreement", cand, seed, Problem(cand, seed), dtypes)


def masks(cand, seed: int, dtypes) -> PropertyResult:
    """A boolean mask (True = may attend) and causal masking, where the block takes them."""
    if not ({"mask", "causal"} & cand.takes):
        return PropertyResult("masks", Status.NOT_APPLICABLE, "the block takes neither a mask nor causal")
    results = []
    for masked, causal in ((True, False), (False, True)):
        if (masked and "mask" not in cand.takes) or (causal and "causal" not in cand.takes):
            continue
        results.append(_checked("masks", cand, seed, Problem(cand, seed, masked=masked, causal=causal), dtypes))
    bad = [r for r in results if r.status is not Status.PASS]
    if bad:
        return bad[0]
    return PropertyResult("masks", Status.PASS, f"agrees with numerics on {len(results)} masked problems",
                          tuple(m for r in results for m in r.measurements))


def _switched_off(p: BlockParams, *, attention: bool = True, ffn: bool = False) -> BlockParams:
    """The block's weights with the attention (W^O, b_o = 0) and/or the FFN (W_2, b_2 = 0) switched off."""
    out = p
    if attention:
        a = p.attn
        out = replace(out, attn=replace(a, w_o=np.zeros_like(a.w_o), b_o=None if a.b_o is None else np.zeros_like(a.b_o)))
    if ffn:
        f = p.ffn
        out = replace(out, ffn=FFNParams(f.w1, f.b1, np.zeros_like(f.w2), None if f.b2 is None else np.zeros_like(f.b2)))
    return out


def _probe(name: str, cand, problem: Problem, params: BlockParams):
    """The candidate's float64 output on ``problem.x`` with ``params``: (output, None), or (None, the
    ERROR / FAIL result when it raised or gave the wrong shape)."""
    try:
        got = cand(problem.x, params, dtype="float64")
    except CandidateError as exc:
        return None, PropertyResult(name, Status.ERROR, f"the candidate raised {raised(exc)}", (), problem.describe())
    if got.shape != problem.x.shape:
        return None, PropertyResult(name, Status.FAIL, f"output of shape {got.shape}, not x's {problem.x.shape}", ())
    return got, None


def norm_placement(cand, seed: int, dtypes) -> PropertyResult:
    """Sub-layers off: pre-LN is the identity, post-LN is LN2(LN1(x))."""
    name = "layer norm placement"
    problem = Problem(cand, seed)
    off = _switched_off(problem.params, attention=True, ffn=True)
    got, stopped = _probe(name, cand, problem, off)
    if stopped is not None:
        return stopped
    models = {(norm, axis): faults.block_model(problem.x, off, faults.BlockFault(norm=norm, ln_axis=axis), eps=cand.eps)
              for norm in ("post", "pre") for axis in (-1, -2)}
    found = faults.match(got, models)
    expected = models[(cand.norm, -1)]
    m = absolute(got, expected, bound=faults.MATCH, what="float64, both sub-layers off, against the declared placement")
    what = {"post": "LN2(LN1(x))", "pre": "x itself"}
    if m.ok:
        return PropertyResult(name, Status.PASS, f"{cand.norm}-LN as declared: with both sub-layers off the block gives "
                              f"{what[cand.norm]}", (m,))
    if found:
        (norm, axis), _ = found[0]
        words = []
        if norm != cand.norm:
            words.append(f"pre-LN and post-LN confused: with both sub-layers off it gives {what[norm]}, as a "
                         f"{norm}-LN block does, where {cand.norm}-LN is declared")
        if axis != -1:
            words.append("layer norm over the wrong axis: its layer norms normalise over the tokens (axis -2)")
        return PropertyResult(name, Status.FAIL, "; ".join(words), (m,), problem.describe(), _code(words))
    return PropertyResult(name, Status.FAIL, f"with both sub-layers off it gives neither x nor LN2(LN1(x)) (relative "
                          f"distance {m.error:.3g} from the declared {cand.norm}-LN)", (m,), problem.describe())


def position_wise(cand, seed: int, dtypes) -> PropertyResult:
    """Attention off: changing token 0 changes no other token's output."""
    name = "position-wise"
    problem = Problem(cand, seed)
    off = _switched_off(problem.params, attention=True)
    x2 = problem.x.copy()
    x2[:, 0, :] += np.random.default_rng([seed, 5]).standard_normal(x2.shape[-1])
    try:
        y1 = cand(problem.x, off, dtype="float64")
        y2 = cand(x2, off, dtype="float64")
    except CandidateError as exc:
        return PropertyResult(name, Status.ERROR, f"the candidate raised {raised(exc)}", (), problem.describe())
    if y1.shape != problem.x.shape or y2.shape != problem.x.shape:
        return PropertyResult(name, Status.FAIL, f"output of shape {y1.shape}, not x's {problem.x.shape}", ())
    scale = float(np.max(np.abs(y1))) or 1.0
    leak = float(np.max(np.abs(y2[:, 1:] - y1[:, 1:]))) / scale
    m = Measurement("largest change of tokens 1.. when token 0 changes, attention off (relative)", leak, 1e-12)
    if m.ok:
        return PropertyResult(name, Status.PASS, "with the attention off, each token's output depends on that token "
                              "alone (layer norms and FFN are position-wise)", (m,))
    words = ["layer norm over the wrong axis: with the attention off, changing token 0 changed the other tokens' "
             f"outputs by {leak:.3g} (relative), so a layer norm mixes the tokens"]
    return PropertyResult(name, Status.FAIL, words[0], (m,), problem.describe(), _code(words))


def gelu(cand, seed: int, dtypes) -> PropertyResult:
    """Attention off: which GELU the block's FFN uses."""
    name = "gelu"
    problem = Problem(cand, seed)
    off = _switched_off(problem.params, attention=True)
    got, stopped = _probe(name, cand, problem, off)
    if stopped is not None:
        return stopped
    declared = _GELU[cand.approximate]
    # Placement and layer-norm axis vary too: their faults are the other properties' to name, not this one's.
    models = {(norm, kind, axis): faults.block_model(problem.x, off, faults.BlockFault(norm=norm, gelu=kind, ln_axis=axis),
                                                     eps=cand.eps)
              for norm in ("post", "pre") for kind in ("erf", "tanh") for axis in (-1, -2)}
    found = faults.match(got, models)
    expected = models[(cand.norm, declared, -1)]
    m = absolute(got, expected, bound=faults.MATCH, what="float64, attention off, against the declared GELU")
    if found and found[0][0][1] == declared:
        return PropertyResult(name, Status.PASS, f"the FFN uses the {declared} GELU, as declared "
                              f"(approximate={cand.approximate!r})", (m,))
    if found:
        kind = found[0][0][1]
        words = [f"GELU confused: the FFN uses the {kind} form where the {declared} form is declared "
                 f"(approximate={cand.approximate!r}); both are conventions, declare the one meant"]
        return PropertyResult(name, Status.FAIL, words[0], (m,), problem.describe(), _code(words))
    best = None
    for norm in ("post", "pre"):
        for axis in (-1, -2):
            c, dist = faults.fit_gelu_constant(got, lambda c, norm=norm, axis=axis: faults.block_model(
                problem.x, off, faults.BlockFault(norm=norm, gelu="tanh", gelu_c=c, ln_axis=axis), eps=cand.eps))
            if best is None or dist < best[1]:
                best = (c, dist)
    c, dist = best
    if dist <= faults.MATCH:
        words = [f"a wrong GELU constant: the FFN computes 0.5 x (1 + tanh(sqrt(2/pi)(x + c x^3))) with c = {c:.6g} "
                 f"instead of 0.044715 (fitted, relative distance {dist:.1e})"]
        return PropertyResult(name, Status.FAIL, words[0], (m,), problem.describe(), _code(words))
    return PropertyResult(name, Status.FAIL, f"the FFN's activation is neither erf GELU nor the tanh form with any "
                          f"constant (closest c = {c:.4g}, relative distance {dist:.3g})", (m,), problem.describe())


def _own_call(cand, problem: Problem):
    return lambda x, dtype: cand(x, problem.params, dtype=dtype, **problem.options())


def batch_independence(cand, seed: int, dtypes) -> PropertyResult:
    """Changing samples 1.. of the batch leaves sample 0's output as it was."""
    problem = Problem(cand, seed)
    return repeat_property("batch independence", repeats.batch_independence, lambda p: _measure(cand, p, dtypes),
                           _own_call(cand, problem), problem, dtypes, (_Shape,), np.random.default_rng([seed, 21]))


def determinism(cand, seed: int, dtypes) -> PropertyResult:
    """Two calls on the same input agree bitwise, or within rounding (the spread reported)."""
    problem = Problem(cand, seed)
    return repeat_property("determinism", repeats.determinism, lambda p: _measure(cand, p, dtypes),
                           _own_call(cand, problem), problem, dtypes, (_Shape,))


register_properties("block", BlockCandidate, (
    ("agreement", agreement, "the block agrees with numerics on the same weights (tolerance rule)"),
    ("masks", masks, "a boolean mask and causal masking agree with numerics"),
    ("layer norm placement", norm_placement, "pre-LN or post-LN, as declared"),
    ("position-wise", position_wise, "layer norms and FFN act on each token alone"),
    ("gelu", gelu, "the FFN's GELU is the declared one, with its constant"),
    ("batch independence", batch_independence, "one sample's output ignores the others"),
    ("determinism", determinism, "two calls on the same input agree"),
))
