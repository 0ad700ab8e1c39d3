"""Crosscheck: the same problems on every backend present, against float64, mpmath and SymPy.

Each problem (a :class:`Case`: scaled dot-product attention, multi-head attention or the
transformer block, with the modern options: additive bias with -inf entries, causal attention
in both alignments, a sliding window, softcap, grouped-query heads, rotary embedding) is drawn
once, in float64 on the host, from its seed. Every backend present (NumPy, array_api_strict,
torch, CuPy when a CUDA device exists) runs numerics' forward and backward on it in float64
and float32, and every result is measured against three references:

``float64``
    numerics on NumPy in float64 (not compared with itself);
``mpmath``
    :mod:`numerics.reference`: the definitions in 50 digits, gradients by the complex step
    in 100 digits;
``sympy``
    the derivations' SymPy expressions at these sizes, differentiated and lambdified. verify
    may not import proofs, so they come in through ``symbolic=`` (the command line passes
    :func:`proofs.derivations.lambdified.symbolic_results`); without it there is no sympy
    column.

The verdict is :mod:`verify.validate.tolerance`'s: a float64 result must be within ``ABS64``
of the reference; a float32 result must satisfy ``err <= k err(plain) + floor(float32)``, where
``plain`` is the mpmath reference evaluated with every operation rounded to float32's 24-bit
significand (:func:`numerics.reference.emulated_precision`: the textbook definitions in the
same precision, gradients by forward-mode differentiation in it).

The problems of :data:`CASES` are small (a few hundred numbers), so that mpmath and SymPy can
afford them; the whole run takes tens of seconds, most of it in mpmath's gradients. Those of
:data:`TILED_CASES` are long (hundreds of tokens) and run with numerics' tiled attention
(:mod:`numerics._tiled`) forced on, and the call counted, so the long-sequence path is checked
too: their reference is numerics on NumPy in float64 with tiling off, and float32's plain
implementation is the same untiled NumPy code in float32; mpmath and SymPy cannot afford them.

A :class:`Row` holds one (layer, pass, backend, dtype, reference): the worst case over the
layer's problems, by the ratio of error to bound, and the verdict over all of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from numerics import reference
from verify.validate.backends import INSTALL, ArrayBackend
from verify.validate.result import Measurement, Status
from verify.validate.tolerance import ABS64, K_GRADIENT, K_OUTPUT, absolute, dtype_name, rule

__all__ = [
    "Case",
    "Problem",
    "Row",
    "CrosscheckResult",
    "CASES",
    "TILED_CASES",
    "LAYERS",
    "PASSES",
    "REFERENCES",
    "available_backends",
    "make_problem",
    "run_backend",
    "crosscheck",
    "table_lines",
    "case_numbers",
]

LAYERS = ("sdpa", "mha", "block")
#: What is compared, per layer: the output and each gradient (``dparams``: every parameter
#: gradient together, relative to the largest; ``dbias``: the additive score bias's).
PASSES = {
    "sdpa": ("output", "dq", "dk", "dv", "dbias"),
    "mha": ("output", "dx", "dmemory", "dparams", "dbias"),
    "block": ("output", "dx", "dparams", "dbias"),
}
REFERENCES = ("float64", "mpmath", "sympy")
DTYPES = ("float64", "float32")
#: Backends in the order the table shows them.
BACKENDS = ("numpy", "array_api_strict", "torch", "cupy")
#: Significant bits of the plain float32 implementation (float32's significand).
PLAIN_BITS = {"float32": 24}

#: A provider of SymPy results: ``symbolic(problem)`` returns a dict pass -> float64 array
#: (the passes it can express) or None when it cannot express the problem at all.
SymbolicProvider = Callable[["Problem"], "Mapping[str, np.ndarray] | None"]


@dataclass(frozen=True)
class Case:
    """One problem, described by plain values (JSON-ready); :func:`make_problem` draws its arrays.

    Attributes
    ----------
    layer : {"sdpa", "mha", "block"}
    name : str
        Short name, unique within the layer.
    sizes : dict
        The glossary's letters: B, H, Hkv, N, M, K, V (sdpa); B, N, M, D, H, Hkv, K, V (mha);
        B, N, D, H, Hkv, F (block).
    options : dict
        numerics keywords that are not arrays: causal, window, softcap, rope (a dict of
        Rope's fields), enable_gqa, norm; ``bias``/``mask`` True means one is drawn.
    seed : int
    tiled : bool
        Run with numerics' tiled attention forced on, against the untiled NumPy float64 result
        (a long problem: no mpmath or SymPy reference).
    """

    layer: str
    name: str
    sizes: dict
    options: dict
    seed: int
    tiled: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The problems. Every option appears in each layer that has it; N != M where the layer allows
#: it (cross-attention), so that the two causal alignments differ.
CASES: tuple[Case, ...] = (
    Case("sdpa", "mask", dict(B=2, H=2, Hkv=2, N=3, M=5, K=4, V=3), dict(mask=True), 11),
    Case("sdpa", "top_left", dict(B=1, H=2, Hkv=2, N=4, M=3, K=4, V=3), dict(causal="top_left"), 12),
    Case("sdpa", "bottom_right+window", dict(B=1, H=2, Hkv=2, N=3, M=5, K=4, V=3),
         dict(causal="bottom_right", window=[2, 0]), 13),
    Case("sdpa", "bias+softcap", dict(B=1, H=2, Hkv=2, N=3, M=4, K=4, V=3), dict(bias=True, softcap=2.0), 14),
    Case("sdpa", "gqa+bottom_right", dict(B=1, H=4, Hkv=2, N=3, M=4, K=2, V=3),
         dict(enable_gqa=True, causal="bottom_right"), 15),
    Case("mha", "cross+gqa+bias", dict(B=1, N=3, M=4, D=4, H=4, Hkv=2, K=2, V=2), dict(bias=True), 21),
    Case("mha", "self+causal+rope_half", dict(B=1, N=3, M=3, D=4, H=2, Hkv=2, K=2, V=2),
         dict(causal="top_left", rope=dict(style="half", theta=100.0)), 22),
    Case("mha", "cross+window+softcap+rope_interleaved", dict(B=1, N=3, M=4, D=4, H=2, Hkv=1, K=4, V=2),
         dict(causal="bottom_right", window=[1, None], softcap=1.5, rope=dict(style="interleaved")), 23),
    Case("block", "post+causal+rope+bias", dict(B=1, N=3, D=4, H=2, Hkv=2, F=8),
         dict(norm="post", causal="top_left", rope=dict(style="half"), bias=True), 31),
    Case("block", "pre+gqa+window+softcap", dict(B=1, N=3, D=4, H=2, Hkv=1, F=8),
         dict(norm="pre", window=[1, 1], softcap=2.0), 32),
)


#: Long problems through the tiled path (tiles of numerics._tiled.BLOCK_Q x BLOCK_K = 256 x 256, so
#: 2 x 2 tiles, the last row and column partial), with a bias, both causal alignments and rope.
TILED_CASES: tuple[Case, ...] = (
    Case("sdpa", "long: bottom_right+bias", dict(B=1, H=2, Hkv=2, N=300, M=400, K=16, V=16),
         dict(causal="bottom_right", bias=True), 41, tiled=True),
    Case("mha", "long: self+causal+rope_half", dict(B=1, N=400, M=400, D=16, H=2, Hkv=2, K=8, V=8),
         dict(causal="top_left", rope=dict(style="half")), 42, tiled=True),
)


@dataclass(frozen=True)
class Problem:
    """A case's arrays, in float64 NumPy: ``arrays`` (q, k, v or x, memory; d_out; bias, mask
    when the case has them) and ``params`` (MHAParams / BlockParams, or None for sdpa)."""

    case: Case
    arrays: dict[str, np.ndarray]
    params: Any = None

    @property
    def options(self) -> dict[str, Any]:
        """numerics keywords (without the arrays): window as a tuple, rope as a dict."""
        out = {k: v for k, v in self.case.options.items() if k not in ("bias", "mask", "norm")}
        if out.get("window") is not None:
            out["window"] = tuple(out["window"])
        return out


def make_problem(case: Case) -> Problem:
    """Draw ``case``'s arrays from its seed (float64, NumPy): the same for every backend."""
    from numerics import init_block_params, init_params

    rng = np.random.default_rng(case.seed)
    s, o = case.sizes, case.options
    arrays: dict[str, np.ndarray] = {}
    params = None
    if case.layer == "sdpa":
        b, h, hkv, n, m = s["B"], s["H"], s["Hkv"], s["N"], s["M"]
        arrays["q"] = rng.standard_normal((b, h, n, s["K"]))
        arrays["k"] = rng.standard_normal((b, hkv, m, s["K"]))
        arrays["v"] = rng.standard_normal((b, hkv, m, s["V"]))
        arrays["d_out"] = rng.standard_normal((b, h, n, s["V"]))
        heads = h
    elif case.layer == "mha":
        b, n, m, d = s["B"], s["N"], s["M"], s["D"]
        arrays["x"] = rng.standard_normal((b, n, d))
        if n != m:
            arrays["memory"] = rng.standard_normal((b, m, d))
        arrays["d_out"] = rng.standard_normal((b, n, d))
        params = init_params(d, s["H"], d_k=s["K"], d_v=s["V"], num_kv_heads=s["Hkv"], bias=True,
                             seed=case.seed)
        params = dataclasses.replace(params, **{
            name: 0.1 * rng.standard_normal(getattr(params, name).shape) for name in ("b_q", "b_k", "b_v", "b_o")})
        heads = s["H"]
    elif case.layer == "block":
        b, n, d = s["B"], s["N"], s["D"]
        m = n
        arrays["x"] = rng.standard_normal((b, n, d))
        arrays["d_out"] = rng.standard_normal((b, n, d))
        params = init_block_params(d, s["H"], s["F"], seed=case.seed, noise=0.1, num_kv_heads=s["Hkv"])
        heads = s["H"]
    else:
        raise ValueError(f"case.layer must be one of {LAYERS}, got {case.layer!r}")
    if o.get("mask"):
        mask = rng.random((n, m)) < 0.7
        mask[0] = False  # a row with no allowed key: output 0, gradients 0
        mask[1:, 0] = True
        arrays["mask"] = mask
    if o.get("bias"):
        bias = 0.5 * rng.standard_normal((heads, n, m))
        bias[0, -1, 0] = -np.inf  # an excluded key
        arrays["bias"] = bias
    return Problem(case, arrays, params)


# ------------------------------------------------------------------ backends


def available_backends() -> tuple[tuple[str, ...], dict[str, str]]:
    """``(present, skipped)``: the backends that can run here, and why each other one cannot.

    CuPy is imported only when installed, to ask for a CUDA device."""
    present, skipped = ["numpy"], {}
    for name in ("array_api_strict", "torch"):
        if importlib.util.find_spec(name) is None:
            skipped[name] = f"not installed ({INSTALL[name]})"
        else:
            present.append(name)
    if importlib.util.find_spec("cupy") is None:
        skipped["cupy"] = f"not installed ({INSTALL['cupy']})"
    else:
        try:
            import cupy

            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # no driver, no device: CuPy raises its own CUDA errors
            count, why = 0, f"no CUDA device ({type(exc).__name__}: {exc})"
        else:
            why = "installed but no CUDA device is present"
        if count > 0:
            present.append("cupy")
        else:
            skipped["cupy"] = why
    return tuple(present), skipped


def _on(xp, dtype, value):
    """A NumPy array (or a parameter dataclass, or a rope dict) on namespace ``xp`` in ``dtype``
    (boolean masks stay boolean)."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        a = xp.asarray(np.ascontiguousarray(value))
        return a if value.dtype == np.bool_ else xp.astype(a, dtype)
    if dataclasses.is_dataclass(value):
        changes = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if isinstance(item, np.ndarray) or dataclasses.is_dataclass(item):
                changes[f.name] = _on(xp, dtype, item)
        return dataclasses.replace(value, **changes)
    return value


def _flat(grads: Mapping[str, Any]) -> np.ndarray:
    """Every parameter gradient, by sorted name, as one float64 vector."""
    return np.concatenate([np.ravel(ArrayBackend.to_host(grads[name])) for name in sorted(grads)])


def run_backend(problem: Problem, backend: str, dtype: str) -> dict[str, np.ndarray]:
    """numerics' forward and backward of ``problem`` on ``backend`` in ``dtype``: a dict pass ->
    float64 NumPy array (the passes of :data:`PASSES` the problem has)."""
    import numerics
    from numerics._backend import get_namespace

    xp = get_namespace(backend)
    dt = getattr(xp, dtype)
    a = {name: _on(xp, dt, value) for name, value in problem.arrays.items()}
    opts = problem.options
    layer = problem.case.layer
    if layer == "sdpa":
        kw = dict(mask=a.get("mask"), bias=a.get("bias"), **opts)
        out = numerics.scaled_dot_product_attention(a["q"], a["k"], a["v"], **kw)
        g = numerics.attention_backward(a["q"], a["k"], a["v"], a["d_out"], **kw)
        result = {"output": out, "dq": g.q, "dk": g.k, "dv": g.v, "dbias": g.bias}
    elif layer == "mha":
        params = _on(xp, dt, problem.params)
        kw = dict(memory=a.get("memory"), mask=a.get("mask"), bias=a.get("bias"), **opts)
        out = numerics.multi_head_attention(a["x"], params, **kw)
        g = numerics.multi_head_attention_backward(a["x"], params, a["d_out"], **kw)
        result = {"output": out, "dx": g.x, "dmemory": g.memory, "dbias": g.bias, "dparams": _flat(g.params.arrays())}
    else:
        params = _on(xp, dt, problem.params)
        kw = dict(norm=problem.case.options.get("norm", "post"), mask=a.get("mask"), bias=a.get("bias"), **opts)
        out = numerics.transformer_block(a["x"], params, **kw)
        g = numerics.transformer_block_backward(a["x"], params, a["d_out"], **kw)
        result = {"output": out, "dx": g.x, "dbias": g.bias, "dparams": _flat(g.params.arrays())}
    return {k: ArrayBackend.to_host(v) for k, v in result.items() if v is not None}


@contextlib.contextmanager
def tiling(forced: bool):
    """numerics' attention with tiling forced on or off, restored after.

    Forced on: ``numerics._tiled.MIN_SCORES = 0`` (every problem is tiled) and
    ``numerics.attention.SAVED_WEIGHTS_MAX = 0`` (a forward that feeds a backward, as multi-head
    attention's does, keeps q, k, v rather than the weights, and the backward is tiled too), as
    for sequences too long to hold the weights. Off: no problem is large enough. Yields a dict
    counting the calls of the tiled ``forward`` and ``backward``, so a caller can tell that the
    tiled path really ran."""
    from numerics import _tiled
    from numerics import attention as _attention

    calls = {"forward": 0, "backward": 0}
    saved = _tiled.MIN_SCORES, _tiled.forward, _tiled.backward
    saved_weights_max = _attention.SAVED_WEIGHTS_MAX

    def counted(name, fn):
        def run(*args, **kw):
            calls[name] += 1
            return fn(*args, **kw)
        return run

    _tiled.MIN_SCORES = 0 if forced else math.inf
    if forced:
        _attention.SAVED_WEIGHTS_MAX = 0
    _tiled.forward, _tiled.backward = counted("forward", saved[1]), counted("backward", saved[2])
    try:
        yield calls
    finally:
        _tiled.MIN_SCORES, _tiled.forward, _tiled.backward = saved
        _attention.SAVED_WEIGHTS_MAX = saved_weights_max


def run_reference(problem: Problem, bits: int | None = None) -> dict[str, np.ndarray]:
    """The mpmath reference of ``problem`` (pass -> float64 array); with ``bits``, the plain
    implementation: the same definitions with every operation rounded to ``bits`` bits."""
    if bits is None:
        return _reference(problem)
    with reference.emulated_precision(bits):
        return _reference(problem)


def _reference(problem: Problem) -> dict[str, np.ndarray]:
    R, a, opts, layer = reference, problem.arrays, problem.options, problem.case.layer
    if layer == "sdpa":
        kw = dict(mask=a.get("mask"), bias=a.get("bias"), **opts)
        out = R.to_float64(R.attention(a["q"], a["k"], a["v"], **kw))
        grads = R.attention_gradients(a["q"], a["k"], a["v"], a["d_out"], **kw)
        result = {"output": out, **dict(zip(("dq", "dk", "dv", "dbias"), grads))}
        return result
    if layer == "mha":
        kw = dict(memory=a.get("memory"), mask=a.get("mask"), bias=a.get("bias"), **opts)
        out = R.to_float64(R.multi_head_attention(a["x"], problem.params, **kw))
        g = R.multi_head_attention_gradients(a["x"], problem.params, a["d_out"], **kw)
    else:
        kw = dict(norm=problem.case.options.get("norm", "post"), mask=a.get("mask"), bias=a.get("bias"), **opts)
        out = R.to_float64(R.transformer_block(a["x"], problem.params, **kw))
        g = R.transformer_block_gradients(a["x"], problem.params, a["d_out"], **kw)
    names = set(R.param_arrays(problem.params))
    result = {"output": out, "dx": g["x"], "dparams": _flat({n: g[n] for n in names})}
    for key, name in (("dmemory", "memory"), ("dbias", "bias")):
        if name in g:
            result[key] = g[name]
    return result


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class Row:
    """One line of the table: a pass of a layer on one backend and dtype against one reference.

    ``error``, ``bound`` and ``plain_error`` are those of ``worst_case``, the case with the
    largest error relative to its bound; ``status`` is PASS when every case met its bound, FAIL
    when one did not, ERROR when the backend raised (``message`` says what).
    """

    layer: str
    quantity: str  # "output", "dq", ... ("pass" in to_dict)
    backend: str
    dtype: str
    reference: str
    status: Status
    error: float
    bound: float
    plain_error: float | None = None
    worst_case: str = ""
    cases: int = 0
    message: str = ""
    tiled: bool = False

    @property
    def passed(self) -> bool:
        return self.status is Status.PASS

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["pass"] = out.pop("quantity")
        out["status"] = self.status.value
        for key in ("error", "bound", "plain_error"):
            if isinstance(out[key], float) and not math.isfinite(out[key]):
                out[key] = str(out[key])  # JSON has no inf or NaN
        return out


@dataclass(frozen=True)
class CrosscheckResult:
    """Every :class:`Row`, the backends that ran and those that could not (with why), the
    references used, the cases and the wall time."""

    rows: tuple[Row, ...]
    backends: tuple[str, ...]
    skipped: dict[str, str]
    references: tuple[str, ...]
    cases: tuple[Case, ...]
    seconds: float = 0.0
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.passed for r in self.rows)

    @property
    def failures(self) -> tuple[Row, ...]:
        return tuple(r for r in self.rows if not r.passed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "backends": list(self.backends),
            "skipped": dict(self.skipped),
            "references": list(self.references),
            "tolerance": {"abs64": ABS64, "k_output": K_OUTPUT, "k_gradient": K_GRADIENT,
                          "plain": "mpmath reference with every operation rounded to 24 bits"},
            "seconds": self.seconds,
            "notes": list(self.notes),
            "cases": [c.to_dict() for c in self.cases],
            "rows": [r.to_dict() for r in self.rows],
        }


def _measure(candidate, ref, plain, dtype: str, quantity: str) -> Measurement:
    if dtype == "float64":
        return absolute(candidate, ref, bound=ABS64, what=quantity)
    k = K_OUTPUT if quantity == "output" else K_GRADIENT
    return rule(candidate, plain, ref, dtype=dtype, k=k, what=quantity)


@dataclass
class _Worst:
    """Accumulates one row's cases."""

    measurement: Measurement | None = None
    case: str = ""
    cases: int = 0
    failed: bool = False
    error: str = ""

    def add(self, m: Measurement, case: str) -> None:
        self.cases += 1
        self.failed |= not m.ok
        if self.measurement is None or _ratio(m) > _ratio(self.measurement):
            self.measurement, self.case = m, case


def _ratio(m: Measurement) -> float:
    """error / bound, inf for a NaN error or a zero bound (the worst case is shown first)."""
    if math.isnan(m.error) or m.bound <= 0:
        return math.inf
    return m.error / m.bound


def crosscheck(
    *,
    backends: Sequence[str] | None = None,
    dtypes: Sequence[str] = DTYPES,
    cases: Sequence[Case] = CASES + TILED_CASES,
    symbolic: SymbolicProvider | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> CrosscheckResult:
    """Run ``cases`` on every backend present and measure each result against the references.

    Parameters
    ----------
    backends : sequence of str, optional
        Default: every backend present (:func:`available_backends`). A named backend that is
        not present is a ValueError saying why.
    dtypes : sequence of {"float64", "float32"}
    cases : sequence of Case
        Default :data:`CASES` and :data:`TILED_CASES`.
    symbolic : callable, optional
        ``symbolic(problem)`` -> dict pass -> float64 array, or None: the SymPy results
        (see the module docstring). Without it, no sympy rows.
    progress : callable, optional
        ``progress(description, done, total)``, called as the work goes on.

    Returns
    -------
    CrosscheckResult
    """
    start = time.perf_counter()
    present, skipped = available_backends()
    if backends is None:
        chosen = present
    else:
        chosen = tuple(backends)
        for name in chosen:
            if name not in BACKENDS:
                raise ValueError(f"backends must be among {BACKENDS}, got {name!r}")
            if name not in present:
                raise ValueError(f"backend {name!r} cannot run here: {skipped.get(name, 'not present')}")
        skipped = {k: v for k, v in skipped.items() if k in chosen}
    for d in dtypes:
        if dtype_name(d) not in DTYPES:
            raise ValueError(f"dtypes must be among {DTYPES}, got {d!r}")
    dtypes = tuple(dtype_name(d) for d in dtypes)
    worst: dict[tuple[str, bool, str, str, str, str], _Worst] = {}
    notes: list[str] = []
    refs_used = ["float64", "mpmath"] + (["sympy"] if symbolic is not None else [])
    total = sum(2 + len(chosen) * len(dtypes) + (symbolic is not None and not c.tiled) for c in cases)
    done = 0

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(what, done, total)

    for case in cases:
        problem = make_problem(case)
        label = f"{case.layer} {case.name}"
        if case.tiled:
            references, plains, runs = _tiled_runs(problem, chosen, dtypes, label, tick)
        else:
            references, plains, runs = _small_runs(problem, chosen, dtypes, label, tick, symbolic, notes)
        for backend in chosen:
            for d in dtypes:
                got, failure = runs[backend, d]
                for quantity in references["float64"] if case.tiled else references["mpmath"]:
                    for ref_name in REFERENCES:
                        ref = references.get(ref_name, {}).get(quantity)
                        if ref is None or (not case.tiled and ref_name == "float64" and backend == "numpy"
                                           and d == "float64"):
                            continue
                        cell = worst.setdefault((case.layer, case.tiled, quantity, backend, d, ref_name), _Worst())
                        if failure or quantity not in got:
                            cell.failed, cell.error = True, failure or f"{backend} returned no {quantity}"
                            cell.cases += 1
                            continue
                        plain = plains.get(d, {}).get(quantity)
                        cell.add(_measure(got[quantity], ref, plain, d, quantity), case.name)
    rows = []
    order = {name: i for i, name in enumerate(BACKENDS)}
    for (layer, tiled, quantity, backend, d, ref_name), cell in sorted(
        worst.items(),
        key=lambda kv: (kv[0][1], LAYERS.index(kv[0][0]), PASSES[kv[0][0]].index(kv[0][2]), order[kv[0][3]],
                        DTYPES.index(kv[0][4]), REFERENCES.index(kv[0][5])),
    ):
        m = cell.measurement
        if cell.error:
            status = Status.ERROR
        else:
            status = Status.FAIL if cell.failed else Status.PASS
        rows.append(Row(layer, quantity, backend, d, ref_name, status,
                        error=m.error if m else math.nan, bound=m.bound if m else math.nan,
                        plain_error=m.plain_error if m else None, worst_case=cell.case, cases=cell.cases,
                        message=cell.error, tiled=tiled))
    return CrosscheckResult(tuple(rows), tuple(chosen), dict(skipped), tuple(refs_used), tuple(cases),
                            seconds=time.perf_counter() - start, notes=tuple(notes))


def _small_runs(problem, chosen, dtypes, label, tick, symbolic, notes):
    """A small problem's references (mpmath, SymPy when given, NumPy float64), plain float32 (the
    mpmath reference rounded to 24 bits) and every backend's run."""
    references = {"mpmath": run_reference(problem)}
    tick(f"{label}: mpmath")
    plains = {d: run_reference(problem, PLAIN_BITS[d]) for d in dtypes if d in PLAIN_BITS}
    tick(f"{label}: plain float32")
    if symbolic is not None:
        sym = symbolic(problem)
        tick(f"{label}: sympy")
        if sym is None:
            notes.append(f"sympy: no derivation expresses {label}")
        else:
            references["sympy"] = dict(sym)
            missing = [p for p in references["mpmath"] if p not in sym]
            if missing:
                notes.append(f"sympy: {label} without {', '.join(missing)}")
    runs = {}
    for backend, d in [("numpy", "float64")] + [(b, d) for b in chosen for d in dtypes]:
        if (backend, d) in runs:
            continue
        runs[backend, d] = _run(problem, backend, d)
        if backend in chosen and d in dtypes:
            tick(f"{label}: {backend} {d}")
    references["float64"] = runs["numpy", "float64"][0]
    return references, plains, runs


def _tiled_runs(problem, chosen, dtypes, label, tick):
    """A long problem's reference (NumPy float64, untiled), plain float32 (NumPy float32, untiled)
    and every backend's run with tiling forced; a run that did not go through the tiled forward
    and backward is a failure."""
    with tiling(False):
        references = {"float64": run_backend(problem, "numpy", "float64")}
        tick(f"{label}: numpy float64 untiled")
        plains = {d: run_backend(problem, "numpy", d) for d in dtypes if d in PLAIN_BITS}
        tick(f"{label}: numpy float32 untiled")
    runs = {}
    for backend in chosen:
        for d in dtypes:
            with tiling(True) as calls:
                got, failure = _run(problem, backend, d)
            if not failure and not (calls["forward"] and calls["backward"]):
                failure = f"the tiled path did not run (tiled forward calls {calls['forward']}, backward {calls['backward']})"
            runs[backend, d] = (got, failure)
            tick(f"{label}: {backend} {d} tiled")
    return references, plains, runs


def _run(problem, backend, dtype):
    """(run_backend's results, "") or ({}, what it raised): a backend that raises is reported."""
    try:
        return run_backend(problem, backend, dtype), ""
    except Exception as exc:  # a backend that raises is reported, and the run goes on
        return {}, f"{type(exc).__name__}: {exc}"


def case_numbers(result: CrosscheckResult) -> dict[tuple[str, str], int]:
    """(layer, case name) -> the problem's number (1-based, in ``result.cases``' order), as the
    table names each row's worst case."""
    return {(c.layer, c.name): i for i, c in enumerate(result.cases, 1)}


def table_lines(result: CrosscheckResult) -> dict[tuple[str, str, str, str], dict[str, Row]]:
    """The table's lines: (layer, pass, backend, dtype) -> {reference: Row}, in the rows' order;
    a tiled line's layer reads "sdpa tiled" (its rows are measured on the long problems)."""
    lines: dict[tuple[str, str, str, str], dict[str, Row]] = {}
    for row in result.rows:
        layer = f"{row.layer} tiled" if row.tiled else row.layer
        lines.setdefault((layer, row.quantity, row.backend, row.dtype), {})[row.reference] = row
    return lines
