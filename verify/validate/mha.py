"""kind="mha": the properties of multi-head attention, each with a named diagnosis.

Every property is ``prop(candidate, seed, dtypes) -> PropertyResult`` on an adapted candidate
(:class:`verify.validate.modules.MHACandidate`), registered with the engine by
:func:`register_properties` (its calls then go through the property's context: the time limit,
and the candidate's exceptions told from the battery's). The problems are small and fixed by the
seed (B = 2, N = 5, M = 7, the candidate's widths); a failure reports that problem, not a shrunk one.

agreement
    Self-attention against :func:`numerics.multi_head_attention` on the same weights, by the
    tolerance rule (float32: ``err <= 2 err(numerics in float32) + floor`` against float64;
    float64: against mpmath, :data:`~verify.validate.tolerance.ABS64`). A failure is diagnosed by
    matching the candidate against the fault models of :mod:`verify.validate.faults` (heads split
    or merged without the transpose, heads concatenated on the token axis, no softmax, softmax
    over the queries, a wrong scale, W^O left out).
masks
    With a boolean mask (True = may attend) and top-left causal, when the candidate takes them.
cross-attention
    Keys and values from a memory of another length, when the candidate takes one.
output projection
    With W^O = 0 and b_o = 0 the output must vanish; unchanged output names "W^O left out".
head independence
    With W^O = identity (D = H*V), perturbing one head's W_q, W_k, W_v columns changes only that
    head's slice of the output (the heads before W^O); anything else names mixed heads.
attention weights
    Returned (head-averaged) weights against numerics' weights, when the candidate returns them.
batch independence, determinism
    Sample 0's output unchanged when the other samples change; two calls on the same input
    bitwise equal or within rounding (:mod:`verify.validate.repeats`, shared with sdpa).
gradients
    Torch modules: autograd's dx and the gradient of each weight and bias (row convention) against
    :func:`numerics.multi_head_attention_backward` on the same weights, each separately by the rule
    with K_GRADIENT (float64: ABS64); a wrong one is named, "detached" when it is zero.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from numerics import MHAParams, multi_head_attention, multi_head_attention_backward
from numerics import reference as mp_reference
from verify.validate import faults, repeats
from verify.validate.context import CandidateError
from verify.validate.modules import MHACandidate
from verify.validate.registry import register
from verify.validate.result import Measurement, PropertyResult, Status
from verify.validate.tolerance import ABS64, K_GRADIENT, absolute, floor, relative_error, rule

__all__ = ["agreement", "masks", "cross_attention", "output_projection", "head_independence",
           "attention_weights", "batch_independence", "determinism", "diagnose", "Problem"]

#: Largest model width at which the float64 check runs against mpmath (numerics float64 above).
MPMATH_MAX_WIDTH = 64
#: Largest H*V at which the diagnosis also tries N = H*V.
SQUARE_MAX = 64
#: Batch and sequence lengths of the problems.
BATCH, LENGTH, MEMORY_LENGTH = 2, 5, 7


class Problem:
    """One random problem: x (B, N, D), optional memory (B, M, Dm) and mask (N, M), and weights."""

    def __init__(self, cand: MHACandidate, seed: int, *, n: int = LENGTH, m: int | None = None, masked: bool = False,
                 causal: bool = False):
        rng = np.random.default_rng([seed, n, m or 0, masked, causal])
        self.params = cand.params(seed)
        self.x = rng.standard_normal((BATCH, n, cand.d_model))
        if m is None and cand.d_memory != cand.d_model:
            m = n  # keys of another width (kdim != embed_dim): always from a memory, here as long as x
        self.memory = None if m is None else rng.standard_normal((BATCH, m, cand.d_memory))
        m_len = n if m is None else m
        self.mask = None
        if masked:
            mask = rng.random((n, m_len)) < 0.6
            mask[:, 0] = True  # every query keeps key 0, causal or not: no empty-row convention involved
            self.mask = mask
        # A candidate that always masks causally (declared, e.g. nanoGPT's) is compared with causal attention.
        self.causal = causal or getattr(cand, "always_causal", False)

    def options(self) -> dict[str, Any]:
        return {"memory": self.memory, "mask": self.mask, "causal": self.causal}

    def describe(self) -> dict[str, Any]:
        return {"x": list(self.x.shape), "memory": None if self.memory is None else list(self.memory.shape),
                "mask": None if self.mask is None else list(self.mask.shape), "causal": self.causal,
                "num_heads": self.params.num_heads}


def _round(params: MHAParams, dtype: str) -> MHAParams:
    """The weights rounded to ``dtype`` and back to float64 (the reference then sees what the candidate sees)."""
    return replace(params, **{k: np.asarray(v, dtype=dtype).astype(np.float64) for k, v in params.arrays().items()})


def _reference(problem: Problem, x, params, *, exact: bool):
    opts = dict(memory=problem.memory, mask=problem.mask, causal=problem.causal)
    if exact:
        return mp_reference.to_float64(mp_reference.multi_head_attention(x, params, **opts))
    return multi_head_attention(x, params, **opts)


def _measure(cand: MHACandidate, problem: Problem, dtypes) -> tuple[list[Measurement], dict]:
    """The candidate's output in each dtype, measured by the rule; raises on a wrong shape."""
    out = []
    for dtype in dtypes:
        if dtype == "float64":
            got, _ = cand(problem.x, problem.params, dtype="float64", **problem.options())
            _check_shape(got, problem)
            exact = cand.d_model <= MPMATH_MAX_WIDTH and problem.x.shape[-2] <= 8
            ref = _reference(problem, problem.x, problem.params, exact=exact)
            out.append(absolute(got, ref, bound=ABS64 if exact else 1e-10,
                                what="float64 against " + ("mpmath" if exact else "numerics float64")))
            continue
        x = problem.x.astype(dtype).astype(np.float64)
        params = _round(problem.params, dtype)
        got, _ = cand(x, params, dtype=dtype, **problem.options())
        _check_shape(got, problem)
        ref = _reference(problem, x, params, exact=False)
        low = replace(params, **{k: v.astype(dtype) for k, v in params.arrays().items()})
        opts = {k: (v.astype(dtype) if k == "memory" and v is not None else v) for k, v in problem.options().items()}
        plain = multi_head_attention(x.astype(dtype), low, **opts)
        out.append(rule(got, plain, ref, dtype=dtype, what=f"{dtype} against float64 (numerics {dtype} is the plain one)"))
    return out, problem.describe()


class ShapeError(AssertionError):
    """The candidate's output has the wrong shape."""

    def __init__(self, got, expected):
        super().__init__(f"output has shape {tuple(got.shape)}, expected (B, N, D) = {tuple(expected)}")
        self.got, self.expected = tuple(got.shape), tuple(expected)


def _check_shape(got: np.ndarray, problem: Problem) -> None:
    expected = problem.x.shape[:-1] + (problem.params.w_o.shape[1],)
    if got.shape != expected:
        raise ShapeError(got, expected)


def diagnose(cand: MHACandidate, seed: int) -> tuple[str, list[str]]:
    """Match the candidate's float64 output against every fault model: (words, fault names).

    Tried at N = 5 and, when different and at most :data:`SQUARE_MAX`, at N = H*V (where code
    that stacks the heads along the tokens can multiply by W^O at all).
    """
    params = cand.params(seed)
    h, vw = params.num_heads, params.w_v.shape[1] // params.num_heads
    tried = []
    for n in dict.fromkeys((LENGTH, h * vw) if h * vw <= SQUARE_MAX else (LENGTH,)):
        problem = Problem(cand, seed, n=n)
        try:
            got, _ = cand(problem.x, problem.params, dtype="float64", **problem.options())
        except CandidateError as exc:  # the candidate's own failure is information
            tried.append(f"at N = {n} it raises {raised(exc)}")
            continue
        models = {f: faults.mha_model(problem.x, problem.params, f, memory=problem.memory, causal=problem.causal)
                  for f in faults.MHA_FAULTS}
        found = faults.match(got, models)
        if found:
            fault, dist = found[0]
            parts = fault.parts()
            if not parts:
                return (f"plain self-attention at N = {n} does agree, so the fault is specific to this problem's "
                        "options"), []
            where = f"at N = {n} its output is that of multi-head attention with " + "; and ".join(parts)
            return f"{where} (relative distance {dist:.1e})" + ("; " + "; ".join(tried) if tried else ""), parts
        shape = f"shape {tuple(got.shape)}" + ("" if got.shape == problem.x.shape else f", not {problem.x.shape}")
        ref = multi_head_attention(problem.x, problem.params, memory=problem.memory, causal=problem.causal)
        dist = relative_error(got, ref) if got.shape == ref.shape else math.inf
        tried.append(f"at N = {n} its output ({shape}, relative error {dist:.3g}) matches none of the "
                     f"{len(models)} fault models tried")
    return "; ".join(tried), []


def _failed(name: str, measurements, example, cand, seed, lead: str) -> PropertyResult:
    words, parts = diagnose(cand, seed)
    diagnosis = f"{lead}: {words}" if parts else f"{lead}; {words}"
    return PropertyResult(name, Status.FAIL, diagnosis, tuple(measurements), example, fault_code(parts))


def _run_checked(name: str, cand: MHACandidate, seed: int, problem: Problem, dtypes) -> PropertyResult:
    try:
        measurements, example = _measure(cand, problem, dtypes)
    except ShapeError as exc:
        return _failed(name, (), problem.describe(), cand, seed, f"the {exc}")
    except CandidateError as exc:
        words, parts = diagnose(cand, seed)
        if parts:
            return PropertyResult(name, Status.FAIL, f"it raises {raised(exc)}; {words}", (),
                                  problem.describe(), fault_code(parts))
        return PropertyResult(name, Status.ERROR, f"the candidate raised {raised(exc)}", (), problem.describe())
    if not measurements:
        return PropertyResult(name, Status.NOT_APPLICABLE, f"no dtype to run in: the battery compares float64, float32 "
                              f"and float16 runs, the settings gave {list(dtypes) or 'none the library holds'}")
    bad = [m for m in measurements if not m.ok]
    if bad:
        worst = max(bad, key=lambda m: m.error / m.bound if m.bound else math.inf)
        return _failed(name, measurements, example, cand, seed,
                       f"differs from multi-head attention ({worst.what}: error {worst.error:.3g} > bound {worst.bound:.3g})")
    return PropertyResult(name, Status.PASS, "agrees with numerics.multi_head_attention on the same weights "
                          f"({', '.join(m.what for m in measurements)})", tuple(measurements))


def agreement(cand: MHACandidate, seed: int, dtypes) -> PropertyResult:
    """Self-attention, no mask, against numerics by the tolerance rule."""
    return _run_checked("agreement", cand, seed, Problem(cand, seed), dtypes)


def masks(cand: MHACandidate, seed: int, dtypes) -> PropertyResult:
    """A boolean mask (True = may attend) and top-left causal, each where the candidate takes it."""
    if not ({"mask", "causal"} & cand.takes):
        return PropertyResult("masks", Status.NOT_APPLICABLE, "the candidate takes neither mask= nor causal=")
    results = []
    for masked, causal in ((True, False), (False, True), (True, True)):
        if (masked and "mask" not in cand.takes) or (causal and "causal" not in cand.takes):
            continue
        problem = Problem(cand, seed, masked=masked, causal=causal)
        results.append(_run_checked("masks", cand, seed, problem, dtypes))
    bad = [r for r in results if r.status is not Status.PASS]
    if bad:
        return bad[0]
    return PropertyResult("masks", Status.PASS, f"agrees with numerics on {len(results)} masked problems (a boolean mask "
                          "with True = may attend, causal top-left, both, as the candidate takes them)",
                          tuple(m for r in results for m in r.measurements))


def cross_attention(cand: MHACandidate, seed: int, dtypes) -> PropertyResult:
    """Keys and values from a memory of length M != N."""
    if "memory" not in cand.takes:
        return PropertyResult("cross-attention", Status.NOT_APPLICABLE, "the candidate takes no separate memory")
    problem = Problem(cand, seed, m=MEMORY_LENGTH)
    return _run_checked("cross-attention", cand, seed, problem, dtypes)


def output_projection(cand: MHACandidate, seed: int, dtypes) -> PropertyResult:
    """With W^O = 0 (and b_o = 0) the output must be 0."""
    name = "output projection"
    problem = Problem(cand, seed)
    zero = replace(problem.params, w_o=np.zeros_like(problem.params.w_o),
                   b_o=None if problem.params.b_o is None else np.zeros_like(problem.params.b_o))
    try:
        before, _ = cand(problem.x, problem.params, dtype="float64", **problem.options())
        after, _ = cand(problem.x, zero, dtype="float64", **problem.options())
    except CandidateError as exc:
        return PropertyResult(name, Status.ERROR, f"the candidate raised {raised(exc)}", (),
                              problem.describe())
    scale = float(np.max(np.abs(before))) if before.size else 0.0
    size = float(np.max(np.abs(after))) if after.size else 0.0
    m = Measurement("max |output| with W^O = 0, relative to the output's size", size / (scale or 1.0), 1e-12)
    if m.ok:
        return PropertyResult(name, Status.PASS, "with W^O = 0 and b_o = 0 the output is 0: the heads reach the output "
                              "only through W^O", (m,))
    if before.shape == after.shape and relative_error(after, before) <= faults.MATCH:
        return PropertyResult(name, Status.FAIL, "W^O left out: the output does not change when W^O is set to 0 "
                              "(the concatenated heads are returned without the output projection)", (m,),
                              problem.describe())
    return PropertyResult(name, Status.FAIL, "the output does not vanish with W^O = 0 and b_o = 0: part of it bypasses "
                          "the output projection", (m,), problem.describe())


def head_independence(cand: MHACandidate, seed: int, dtypes) -> PropertyResult:
    """Perturbing head h's projections changes only head h's slice before W^O (W^O = I)."""
    name = "head independence"
    base = cand.params(seed)
    h, vw, kw, d = base.num_heads, base.w_v.shape[1] // base.num_heads, base.w_q.shape[1] // base.num_heads, base.d_model
    if base.kv_heads != h:
        return PropertyResult(name, Status.NOT_APPLICABLE, f"grouped-query heads ({base.kv_heads} key/value heads for "
                              f"{h} query heads): a key/value head's weights reach several heads by design")
    if h * vw != d:
        return PropertyResult(name, Status.NOT_APPLICABLE, f"needs W^O square (H*V = D) to read the heads through "
                              f"W^O = I; here H*V = {h * vw}, D = {d}")
    if h < 2:
        return PropertyResult(name, Status.NOT_APPLICABLE, "one head: nothing to be independent of")
    eye = replace(base, w_o=np.eye(d), b_o=None if base.b_o is None else np.zeros(d))
    problem = Problem(cand, seed)
    rng = np.random.default_rng([seed, 99])
    try:
        y0, _ = cand(problem.x, eye, dtype="float64", **problem.options())
        leaks, own = [], []
        for head in range(h):
            cols_k, cols_v = slice(head * kw, (head + 1) * kw), slice(head * vw, (head + 1) * vw)
            changed = {}
            for w, cols in (("w_q", cols_k), ("w_k", cols_k), ("w_v", cols_v)):
                a = getattr(eye, w).copy()
                a[:, cols] += rng.standard_normal(a[:, cols].shape)
                changed[w] = a
            y1, _ = cand(problem.x, replace(eye, **changed), dtype="float64", **problem.options())
            if y1.shape != y0.shape:
                return PropertyResult(name, Status.FAIL, f"the output's shape changed from {y0.shape} to {y1.shape}", ())
            delta = np.abs(y1 - y0)
            inside = np.zeros(delta.shape[-1], dtype=bool)
            inside[cols_v] = True
            scale = float(np.max(np.abs(y0))) or 1.0
            leaks.append(float(np.max(delta[..., ~inside])) / scale)
            own.append(float(np.max(delta[..., inside])) / scale)
    except CandidateError as exc:
        return PropertyResult(name, Status.ERROR, f"the candidate raised {raised(exc)}", (),
                              problem.describe())
    m = Measurement("largest change outside the perturbed head's slice (relative)", max(leaks), 1e-12)
    if not m.ok:
        worst = int(np.argmax(leaks))
        return PropertyResult(name, Status.FAIL, f"heads are mixed: with W^O = I, perturbing head {worst}'s W_q, W_k, "
                              f"W_v columns changed the output outside its slice [{worst * vw}:{(worst + 1) * vw}] by "
                              f"{leaks[worst]:.3g} (relative): heads split or merged without the transpose mix tokens "
                              "and heads", (m,), problem.describe())
    if min(own) <= 1e-9:
        return PropertyResult(name, Status.FAIL, f"perturbing head {int(np.argmin(own))}'s weights did not change its "
                              "own slice: that head does not reach the output", (m,), problem.describe())
    return PropertyResult(name, Status.PASS, f"with W^O = I, perturbing each of the {h} heads' W_q, W_k, W_v changed "
                          "only its own slice of the output", (m,))


def attention_weights(cand: MHACandidate, seed: int, dtypes) -> PropertyResult:
    """The returned head-averaged weights against numerics' per-head weights averaged."""
    name = "attention weights"
    if not cand.returns_weights:
        return PropertyResult(name, Status.NOT_APPLICABLE, "the candidate does not return attention weights")
    problem = Problem(cand, seed)
    try:
        _, weights = cand(problem.x, problem.params, dtype="float64", **problem.options())
    except CandidateError as exc:
        return PropertyResult(name, Status.ERROR, f"the candidate raised {raised(exc)}", ())
    _, ref = multi_head_attention(problem.x, problem.params, memory=problem.memory, causal=problem.causal,
                                  return_weights=True)
    ref = ref.mean(axis=-3)
    if weights is None or weights.shape != ref.shape:
        return PropertyResult(name, Status.FAIL, f"weights of shape {None if weights is None else weights.shape}, "
                              f"expected the head average (B, N, M) = {ref.shape}", ())
    m = absolute(weights, ref, bound=1e-12, what="head-averaged weights, float64")
    if m.ok:
        return PropertyResult(name, Status.PASS, "the returned weights are numerics' weights averaged over the heads", (m,))
    return PropertyResult(name, Status.FAIL, f"the returned weights differ from the head-averaged weights by {m.error:.3g}",
                          (m,), problem.describe())


#: The gradients the property compares, in this order (those of biases the candidate has).
GRADIENT_NAMES = ("x", "w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o")


def _gradient_measure(name: str, got, plain, exact, dtype: str, scale: float) -> Measurement:
    """The rule for one gradient, errors relative to ``scale`` (the reference's own size, or for
    d b_k, which is 0 in exact arithmetic, the size of d b_q): float64 against the stated ABS64."""
    rel = lambda a: float(np.max(np.abs(a - exact), initial=0.0)) / scale if np.all(np.isfinite(a)) else math.inf  # noqa: E731
    what = f"d{name} ({dtype})"
    if dtype == "float64":
        return Measurement(what, rel(got), ABS64)
    e_plain = rel(plain)
    f = floor(dtype)
    return Measurement(what, rel(got), K_GRADIENT * e_plain + f, plain_error=e_plain, k=K_GRADIENT, floor=f)


def _analytic(x, params: MHAParams, d_out, problem: Problem, dtype: str) -> dict[str, np.ndarray]:
    cast = lambda a: None if a is None else np.asarray(a, dtype=dtype)  # noqa: E731
    low = replace(params, **{k: cast(v) for k, v in params.arrays().items()})
    g = multi_head_attention_backward(cast(x), low, cast(d_out), memory=cast(problem.memory), mask=problem.mask,
                                      causal=problem.causal)
    out = {"x": g.x, **{k: v for k, v in g.params.arrays().items() if v is not None}}
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def gradients(cand: MHACandidate, seed: int, dtypes) -> PropertyResult:
    """Autograd dx and each weight's gradient against numerics' analytic backward, separately."""
    name = "gradients"
    if not cand.differentiable:
        return PropertyResult(name, Status.NOT_APPLICABLE, f"the candidate is not differentiable in its library "
                              f"(backend {cand.backend.name}; torch modules are)")
    problem = Problem(cand, seed)
    try:
        forward = _measure(cand, problem, ("float64",))[0][0]
    except ShapeError as exc:
        return PropertyResult(name, Status.NOT_APPLICABLE, f"the {exc}: gradients of the wrong output are not judged")
    except CandidateError as exc:
        return PropertyResult(name, Status.ERROR, f"the candidate raised {raised(exc)}", (), problem.describe())
    if not forward.ok:
        return PropertyResult(name, Status.NOT_APPLICABLE, f"the output itself differs from ours ({forward.what}: error "
                              f"{forward.error:.3g} > bound {forward.bound:.3g}; see agreement), so its gradients "
                              "cannot be told apart from the forward's fault and are not judged")
    d_out0 = np.random.default_rng([seed, 31]).standard_normal(problem.x.shape)
    ms, wrong = [], []
    for dtype in dtypes:
        x = problem.x.astype(dtype).astype(np.float64)
        params = _round(problem.params, dtype)
        d_out = d_out0.astype(dtype).astype(np.float64)
        try:
            got = cand.gradients(x, params, d_out=d_out, dtype=dtype, **problem.options())
        except CandidateError as exc:
            return PropertyResult(name, Status.ERROR, f"the candidate's backward raised {raised(exc)}", (),
                                  problem.describe())
        exact = _analytic(x, params, d_out, problem, "float64")
        plain = _analytic(x, params, d_out, problem, dtype)
        for g in (n for n in GRADIENT_NAMES if n in exact):
            if got.get(g) is None or got[g].shape != exact[g].shape:
                wrong.append((g, f"d{g} has shape {None if got.get(g) is None else got[g].shape}, expected "
                                 f"{exact[g].shape}"))
                continue
            ref_scale = exact["b_q"] if g == "b_k" and "b_q" in exact else exact[g]
            scale = float(np.max(np.abs(ref_scale), initial=0.0)) or 1.0
            m = _gradient_measure(g, got[g], plain[g], exact[g], dtype, scale)
            ms.append(m)
            if not m.ok and g not in (w for w, _ in wrong):
                if not np.any(got[g]) and np.any(exact[g]):
                    wrong.append((g, f"d{g} is zero: no gradient reaches {g} (detached from the graph: a .detach() "
                                     "or torch.no_grad() on its path)"))
                else:
                    wrong.append((g, f"d{g} differs from the analytic backward (error {m.error:.3g} > bound "
                                     f"{m.bound:.3g})"))
        if wrong:
            break
    if wrong:
        names = ", ".join(f"d{g}" for g, _ in wrong)
        lead = ("; ".join(w for _, w in wrong) + f". Wrong: {names}; right: "
                + ", ".join(f"d{g}" for g in GRADIENT_NAMES if g in exact and g not in dict(wrong)))
        why = (f". The output agrees ({forward.what}: error {forward.error:.3g}), so the backward is at fault: a "
               "custom autograd Function with a wrong backward, or a detach() in the wrong place")
        code = ",".join(["gradient:detached"] * any("is zero" in w for _, w in wrong)
                        + ["gradient:wrong"] * any("is zero" not in w for _, w in wrong))
        return PropertyResult(name, Status.FAIL, lead + why, tuple(ms), problem.describe(), code)
    return PropertyResult(name, Status.PASS, "dx and every weight's gradient agree with "
                          f"numerics.multi_head_attention_backward ({', '.join(dtypes)})", tuple(ms))


def repeat_property(name: str, kind_check, measure, call, problem, dtypes, shape_errors=(), rng=None) -> PropertyResult:
    """Batch independence (``kind_check`` = :func:`repeats.batch_independence`, ``rng`` given) or
    determinism (:func:`repeats.determinism`) on ``problem``, each dtype's bound the rule's bound
    that ``measure(problem) -> [Measurement per dtype of dtypes]`` finds (shared by kinds mha and block)."""
    try:
        bounds = [(dtype, m.bound) for dtype, m in zip(dtypes, measure(problem), strict=True)]
        extra = () if rng is None else (rng,)
        return kind_check(name, call, problem.x, bounds, *extra, problem.describe())
    except shape_errors as exc:
        return PropertyResult(name, Status.FAIL, f"the {exc}", (), problem.describe())
    except CandidateError as exc:
        return PropertyResult(name, Status.ERROR, f"the candidate raised {raised(exc)}", (), problem.describe())


def _own_call(cand: MHACandidate, problem: Problem):
    return lambda x, dtype: cand(x, problem.params, dtype=dtype, **problem.options())[0]


def batch_independence(cand: MHACandidate, seed: int, dtypes) -> PropertyResult:
    """Changing samples 1.. of the batch leaves sample 0's output as it was."""
    problem = Problem(cand, seed)
    return repeat_property("batch independence", repeats.batch_independence,
                           lambda p: _measure(cand, p, dtypes)[0], _own_call(cand, problem), problem, dtypes, (ShapeError,),
                           np.random.default_rng([seed, 21]))


def determinism(cand: MHACandidate, seed: int, dtypes) -> PropertyResult:
    """Two calls on the same input agree bitwise, or within rounding (the spread reported)."""
    problem = Problem(cand, seed)
    return repeat_property("determinism", repeats.determinism, lambda p: _measure(cand, p, dtypes)[0],
                           _own_call(cand, problem), problem, dtypes, (ShapeError,))


def raised(exc: BaseException) -> str:
    """``"ValueError: ..."`` for the candidate's exception (unwrapped from the engine's CandidateError)."""
    exc = getattr(exc, "original", exc)
    return f"{type(exc).__name__}: {exc}"


def fault_code(parts: list[str]) -> str | None:
    """The short codes (``"mha:merge-reshape"``) of the fault-model parts named in ``parts``."""
    codes = {"heads split without": "mha:split-no-transpose", "merged without a transpose": "mha:merge-no-transpose",
             "concatenated on the wrong axis": "mha:concat-tokens", "no softmax": "mha:no-softmax",
             "softmax over the query": "mha:softmax-query", "scores scaled by": "mha:scale", "W^O left out": "mha:no-w_o",
             "causal mask applied though": "mha:unasked-causal", "GQA heads tiled": "gqa:tiled"}
    found = [code for words, code in codes.items() if any(words in p for p in parts)]
    return ",".join(found) or None


class _Calls:
    """The candidate as the properties use it, every call going through the engine's context
    (its clock and its CandidateError), every attribute the candidate's."""

    def __init__(self, ctx):
        self._ctx = ctx

    def __getattr__(self, name: str):
        return getattr(self._ctx.candidate, name)

    def __call__(self, *arrays, dtype: str, **options):
        return self._ctx.call(*arrays, dtype=dtype, **options)

    def gradients(self, *arrays, d_out, dtype: str, **options):
        return self._ctx.gradients(*arrays, d_out=d_out, dtype=dtype, **options)


def _dtypes(ctx) -> tuple[str, ...]:
    """The run's dtypes the candidate's library holds and NumPy can round to (not bfloat16)."""
    return tuple(d for d in ctx.dtypes() if d in ("float64", "float32", "float16"))


def register_properties(kind: str, candidate_class: type, table) -> None:
    """Register ``(name, fn(cand, seed, dtypes), title)`` rows as ``kind``'s properties: each runs
    on the context's candidate (which must be a ``candidate_class``), its calls through the context."""
    for name, fn, title in table:
        def prop(ctx, fn=fn) -> PropertyResult:
            if not isinstance(ctx.candidate, candidate_class):
                raise TypeError(f"kind {kind!r} needs a {candidate_class.__name__}, got {type(ctx.candidate).__name__}")
            return fn(_Calls(ctx), int(ctx.settings.seed), _dtypes(ctx))

        prop.__qualname__ = f"{kind}.{fn.__name__}"
        register(kind, name, title=title)(prop)


register_properties("mha", MHACandidate, (
    ("agreement", agreement, "self-attention agrees with numerics on the same weights (tolerance rule)"),
    ("masks", masks, "a boolean mask and causal masking agree with numerics"),
    ("cross-attention", cross_attention, "keys and values from a memory agree with numerics"),
    ("output projection", output_projection, "W^O = 0 gives output 0 (W^O is applied)"),
    ("head independence", head_independence, "one head's weights change only its slice before W^O"),
    ("attention weights", attention_weights, "returned weights are the head-averaged weights"),
    ("batch independence", batch_independence, "one sample's output ignores the others"),
    ("determinism", determinism, "two calls on the same input agree"),
    ("gradients", gradients, "dx and each weight's gradient (autograd) agree with our analytic backward"),
))
