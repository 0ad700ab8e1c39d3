"""The derivations' SymPy attention, at explicit sizes, differentiated and lambdified: the sympy
column of ``attnverify crosscheck`` (:func:`verify.crosscheck.crosscheck`'s ``symbolic=``).

verify may not import proofs, so the command line hands :func:`symbolic_results` to crosscheck.

Each layer is written as a short chain of steps, each a SymPy formula of explicit symbolic
matrices as the derivations write it: the scores ``Q K^T / sqrt(K)``; the softcap
``c tanh(s / c)`` (``softcap.py``); the bias added; the softmax over the allowed keys only
(``logsumexp.py``'s :func:`~proofs.derivations.logsumexp.allowed_keys`: a row with none is 0);
the weights times V; the rotary embedding as ``rope.py``'s
:func:`~proofs.derivations.rope.rope_matrix` times each row; the projections ``X W + b``; layer
norm with the biased variance; GELU ``x/2 (1 + erf(x / sqrt 2))``. SymPy differentiates every
step (its Jacobian with respect to each input, ``Matrix.jacobian``), each step's value and
Jacobians are lambdified (NumPy, SciPy for erf), and the gradients of ``sum(d_out * output)``
come from the chain rule over the steps, in float64. Differentiating the whole layer as one
expression gives the same numbers but takes minutes at these sizes (the quotient rule on
nested softmaxes), which is why the steps are kept apart.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import sympy as sp

from .logsumexp import allowed_keys
from .rope import rope_matrix

__all__ = ["symbolic_results", "SymbolicTape"]


def _mat(name: str, rows: int, cols: int) -> sp.Matrix:
    return sp.Matrix(rows, cols, lambda a, b: sp.Symbol(f"{name}_{a}_{b}", real=True))


def _exact(value: float) -> sp.Rational:
    return sp.Rational(float(value))  # the float's exact binary value


class SymbolicTape:
    """A chain of SymPy steps on named matrices, with lambdified values and Jacobians.

    ``input(name, shape)`` declares a matrix; ``step(name, inputs, formula)`` adds
    ``name = formula(*input matrices)``, where formula builds a SymPy Matrix from matrices of
    fresh symbols; :meth:`run` evaluates the steps at float64 numbers and, given the gradient
    of a scalar with respect to some outputs, returns its gradient with respect to everything.
    """

    def __init__(self, modules: Any = "numpy"):
        self.modules = modules
        self.shapes: dict[str, tuple[int, int]] = {}
        self.steps: list[tuple[str, tuple[str, ...], Callable, list[Callable]]] = []

    def input(self, name: str, shape: tuple[int, int]) -> str:
        self.shapes[name] = tuple(shape)
        return name

    def step(self, name: str, inputs: Sequence[str], formula: Callable[..., sp.Matrix]) -> str:
        symbols = [_mat(f"a{i}", *self.shapes[inp]) for i, inp in enumerate(inputs)]
        out = sp.Matrix(formula(*symbols))
        self.shapes[name] = out.shape
        args = [s for m in symbols for s in m]
        flat = sp.Matrix(list(out))
        value = sp.lambdify(args, out, self.modules)
        jacobians = [sp.lambdify(args, flat.jacobian(list(m)), self.modules) for m in symbols]
        self.steps.append((name, tuple(inputs), value, jacobians))
        return name

    def run(self, values: Mapping[str, np.ndarray], seeds: Mapping[str, np.ndarray]
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``(values, gradients)``: every matrix's value, and the gradient of
        ``sum(seeds[k] * values[k] over k)`` with respect to every matrix it depends on."""
        vals = {k: np.asarray(v, dtype=np.float64).reshape(self.shapes[k]) for k, v in values.items()}
        arguments = {}
        for name, inputs, value, _ in self.steps:
            args = [float(x) for inp in inputs for x in vals[inp].reshape(-1)]
            arguments[name] = args
            vals[name] = np.asarray(value(*args), dtype=np.float64).reshape(self.shapes[name])
        grads = {k: np.asarray(v, dtype=np.float64).reshape(self.shapes[k]) for k, v in seeds.items()}
        for name, inputs, _, jacobians in reversed(self.steps):
            if name not in grads:
                continue
            g = grads[name].reshape(-1)
            for inp, jacobian in zip(inputs, jacobians):
                size = int(np.prod(self.shapes[inp]))
                j = np.asarray(jacobian(*arguments[name]), dtype=np.float64).reshape(g.size, size)
                grads[inp] = grads.get(inp, 0.0) + (j.T @ g).reshape(self.shapes[inp])
        return vals, grads


# ------------------------------------------------------------------ the steps' formulas


def _scores(q: sp.Matrix, k: sp.Matrix) -> sp.Matrix:
    return q * k.T / sp.sqrt(q.cols)


def _softcap(c: float) -> Callable[[sp.Matrix], sp.Matrix]:
    cap = _exact(c)
    return lambda s: s.applyfunc(lambda x: cap * sp.tanh(x / cap))


def _softmax(allowed: np.ndarray) -> Callable[[sp.Matrix], sp.Matrix]:
    """Row softmax over the allowed keys; the others (and rows with none) are 0."""

    def formula(z: sp.Matrix) -> sp.Matrix:
        out = sp.zeros(*z.shape)
        for i in range(z.rows):
            keys = [j for j in range(z.cols) if allowed[i, j]]
            total = sum(sp.exp(z[i, j]) for j in keys)
            for j in keys:
                out[i, j] = sp.exp(z[i, j]) / total
        return out

    return formula


def _rows_rotated(positions: Sequence[int], rope: Mapping[str, Any]) -> Callable[[sp.Matrix], sp.Matrix]:
    theta, style = _exact(rope.get("theta", 10000.0)), rope.get("style", "half")
    return lambda x: sp.Matrix.vstack(*[(rope_matrix(x.cols, int(p), style, theta) * x[r, :].T).T
                                        for r, p in enumerate(positions)])


def _affine(x: sp.Matrix, w: sp.Matrix, b: sp.Matrix | None = None) -> sp.Matrix:
    y = x * w
    return y + sp.ones(x.rows, 1) * b if b is not None else y


def _layer_norm(x: sp.Matrix, gamma: sp.Matrix | None = None, beta: sp.Matrix | None = None,
                eps: float = 1e-5) -> sp.Matrix:
    d, e = x.cols, _exact(eps)
    rows = []
    for r in range(x.rows):
        centred = x[r, :] - sum(x[r, :]) / d * sp.ones(1, d)
        y = centred / sp.sqrt(sum(c * c for c in centred) / d + e)
        y = y.multiply_elementwise(gamma) if gamma is not None else y
        rows.append(y + beta if beta is not None else y)
    return sp.Matrix.vstack(*rows)


def _gelu(x: sp.Matrix) -> sp.Matrix:
    return x.applyfunc(lambda t: t / 2 * (1 + sp.erf(t / sp.sqrt(2))))


# ------------------------------------------------------------------ the layers as tapes


def _allowed(problem, n: int, m: int, head: int) -> np.ndarray:
    opts, mask, bias = problem.options, problem.arrays.get("mask"), problem.arrays.get("bias")
    ok = allowed_keys(n, m, opts.get("causal") or False, opts.get("window"))
    if mask is not None:
        ok = ok & np.broadcast_to(mask, (n, m))
    if bias is not None:
        ok = ok & ~np.isneginf(bias[head if bias.shape[0] > 1 else 0])
    return ok


def _attention_steps(tape: SymbolicTape, head: int, q: str, k: str, v: str, problem, allowed: np.ndarray) -> str:
    """scores -> softcap -> + bias -> softmax over the allowed keys -> times v; returns the name."""
    z = tape.step(f"s{head}", (q, k), _scores)
    softcap = problem.options.get("softcap")
    if softcap is not None:
        z = tape.step(f"t{head}", (z,), _softcap(softcap))
    if problem.arrays.get("bias") is not None:
        bias = f"bias{head if problem.arrays['bias'].shape[0] > 1 else 0}"
        if bias not in tape.shapes:
            tape.input(bias, tape.shapes[z])
        z = tape.step(f"z{head}", (z, bias), lambda a, b: a + b)
    a = tape.step(f"a{head}", (z,), _softmax(allowed))
    return tape.step(f"o{head}", (a, v), lambda a, b: a * b)


def _sdpa_tape(problem) -> SymbolicTape:
    a = problem.arrays
    _, h, n, kw = a["q"].shape
    hkv, m, vw = a["v"].shape[1], a["k"].shape[2], a["v"].shape[3]
    tape = SymbolicTape()
    for j in range(hkv):
        tape.input(f"k{j}", (m, kw))
        tape.input(f"v{j}", (m, vw))
    for i in range(h):
        tape.input(f"q{i}", (n, kw))
        j = i // (h // hkv)
        _attention_steps(tape, i, f"q{i}", f"k{j}", f"v{j}", problem, _allowed(problem, n, m, i))
    return tape


def _bias_values(problem, allowed_of) -> dict[str, np.ndarray]:
    bias = problem.arrays.get("bias")
    if bias is None:
        return {}
    return {f"bias{i}": np.where(allowed_of(i), bias[i], 0.0) for i in range(bias.shape[0])}


def _sdpa(problem) -> dict[str, np.ndarray]:
    a = problem.arrays
    q, k, v, d_out, bias = a["q"], a["k"], a["v"], a["d_out"], a.get("bias")
    b, h, n, _ = q.shape
    hkv, m = v.shape[1], k.shape[2]
    tape = _sdpa_tape(problem)
    result = {"output": np.zeros(d_out.shape), "dq": np.zeros(q.shape), "dk": np.zeros(k.shape),
              "dv": np.zeros(v.shape)}
    if bias is not None:
        result["dbias"] = np.zeros(bias.shape)
    for batch in range(b):
        values = {f"q{i}": q[batch, i] for i in range(h)}
        values.update({f"k{j}": k[batch, j] for j in range(hkv)})
        values.update({f"v{j}": v[batch, j] for j in range(hkv)})
        values.update(_bias_values(problem, lambda i: _allowed(problem, n, m, i)))
        vals, grads = tape.run(values, {f"o{i}": d_out[batch, i] for i in range(h)})
        for i in range(h):
            result["output"][batch, i] = vals[f"o{i}"]
            result["dq"][batch, i] = grads.get(f"q{i}", 0.0)
        for j in range(hkv):
            result["dk"][batch, j] = grads.get(f"k{j}", 0.0)
            result["dv"][batch, j] = grads.get(f"v{j}", 0.0)
        if bias is not None:
            for i in range(bias.shape[0]):
                result["dbias"][i] += grads.get(f"bias{i}", 0.0)
    return result


def _row(vector: np.ndarray) -> np.ndarray:
    return vector.reshape(1, -1)


def _mha_steps(tape: SymbolicTape, problem, params, x: str, memory: str, prefix: str, n: int, m: int) -> str:
    """Multi-head attention of tape matrix ``x`` over ``memory``; parameters are inputs named
    ``prefix + field``. Returns the output's name."""
    h, hkv, kw, vw = params.num_heads, params.kv_heads, params.d_k, params.d_v
    for name, value in params.arrays().items():
        tape.input(prefix + name, value.shape if value.ndim == 2 else (1, value.shape[0]))

    def project(inp: str, which: str) -> str:
        inputs = [inp, prefix + "w_" + which] + ([prefix + "b_" + which] if getattr(params, "b_" + which) is not None else [])
        return tape.step(f"{which}_all", inputs, _affine)

    q_all, k_all, v_all = project(x, "q"), project(memory, "k"), project(memory, "v")
    rope = problem.options.get("rope")
    delta = m - n if problem.options.get("causal") == "bottom_right" else 0
    heads = []
    for j in range(hkv):
        k_j = tape.step(f"k{j}", (k_all,), lambda t, j=j: t[:, j * kw:(j + 1) * kw])
        if rope is not None:
            k_j = tape.step(f"rk{j}", (k_j,), _rows_rotated(range(m), rope))
        tape.step(f"v{j}", (v_all,), lambda t, j=j: t[:, j * vw:(j + 1) * vw])
    for i in range(h):
        q_i = tape.step(f"q{i}", (q_all,), lambda t, i=i: t[:, i * kw:(i + 1) * kw])
        if rope is not None:
            q_i = tape.step(f"rq{i}", (q_i,), _rows_rotated(range(delta, delta + n), rope))
        j = i // (h // hkv)
        k_name = f"rk{j}" if rope is not None else f"k{j}"
        heads.append(_attention_steps(tape, i, q_i, k_name, f"v{j}", problem, _allowed(problem, n, m, i)))
    cat = tape.step("concat", heads, lambda *o: sp.Matrix.hstack(*o))
    inputs = [cat, prefix + "w_o"] + ([prefix + "b_o"] if params.b_o is not None else [])
    return tape.step("mha", inputs, _affine)


def _block_steps(tape: SymbolicTape, problem, n: int) -> str:
    p = problem.params
    for name in ("ln1_gamma", "ln1_beta", "ln2_gamma", "ln2_beta", "ffn.w1", "ffn.b1", "ffn.w2", "ffn.b2"):
        value = p.arrays().get(name)
        if value is not None:
            tape.input(name, value.shape if value.ndim == 2 else (1, value.shape[0]))

    def ln(u: str, which: int) -> str:
        has = [getattr(p, f"ln{which}_{f}") is not None for f in ("gamma", "beta")]
        extra = [f"ln{which}_{f}" for f, present in zip(("gamma", "beta"), has) if present]

        def formula(x, *given):
            given = list(given)
            gamma = given.pop(0) if has[0] else None
            beta = given.pop(0) if has[1] else None
            return _layer_norm(x, gamma, beta)

        return tape.step(f"ln{which}", [u, *extra], formula)

    def ffn(u: str) -> str:
        hidden = tape.step("hidden", [u, "ffn.w1"] + (["ffn.b1"] if p.ffn.b1 is not None else []), _affine)
        act = tape.step("gelu", (hidden,), _gelu)
        return tape.step("ffn", [act, "ffn.w2"] + (["ffn.b2"] if p.ffn.b2 is not None else []), _affine)

    def add(name: str, a: str, b: str) -> str:
        return tape.step(name, (a, b), lambda u, w: u + w)

    if problem.case.options.get("norm", "post") == "post":
        t2 = add("t2", "x", _mha_steps(tape, problem, p.attn, "x", "x", "attn.", n, n))
        t3 = ln(t2, 1)
        return ln(add("t5", t3, ffn(t3)), 2)
    u = ln("x", 1)
    t = add("t", "x", _mha_steps(tape, problem, p.attn, u, u, "attn.", n, n))
    return add("out", t, ffn(ln(t, 2)))


def _layer(problem) -> dict[str, np.ndarray]:
    """mha or block, one batch entry at a time."""
    a, p, layer = problem.arrays, problem.params, problem.case.layer
    x, d_out, memory, bias = a["x"], a["d_out"], a.get("memory"), a.get("bias")
    b, n, d = x.shape
    m = n if memory is None else memory.shape[1]
    tape = SymbolicTape(["scipy", "numpy"])
    tape.input("x", (n, d))
    if layer == "mha":
        source = "x"
        if memory is not None:
            source = tape.input("memory", (m, memory.shape[2]))
        out = _mha_steps(tape, problem, p, "x", source, "", n, m)
    else:
        out = _block_steps(tape, problem, n)
    params = p.arrays()
    result: dict[str, Any] = {"output": np.zeros(d_out.shape), "dx": np.zeros(x.shape)}
    grads_by_name = {k: np.zeros(v.shape) for k, v in params.items()}
    if memory is not None:
        result["dmemory"] = np.zeros(memory.shape)
    if bias is not None:
        result["dbias"] = np.zeros(bias.shape)
    for batch in range(b):
        values = {"x": x[batch], **{k: (v if v.ndim == 2 else _row(v)) for k, v in params.items()}}
        if memory is not None:
            values["memory"] = memory[batch]
        values.update(_bias_values(problem, lambda i: _allowed(problem, n, m, i)))
        vals, grads = tape.run(values, {out: d_out[batch]})
        result["output"][batch] = vals[out]
        result["dx"][batch] = grads.get("x", 0.0)
        if memory is not None:
            result["dmemory"][batch] = grads.get("memory", 0.0)
        for k in params:
            grads_by_name[k] += np.reshape(grads.get(k, 0.0), params[k].shape)
        if bias is not None:
            for i in range(bias.shape[0]):
                result["dbias"][i] += grads.get(f"bias{i}", 0.0)
    result["dparams"] = np.concatenate([grads_by_name[k].reshape(-1) for k in sorted(grads_by_name)])
    return result


def symbolic_results(problem) -> dict[str, np.ndarray] | None:
    """The SymPy output and gradients of a :class:`verify.crosscheck.Problem`.

    Returns
    -------
    dict pass -> float64 array with the keys of ``verify.crosscheck.PASSES[layer]`` that the
    problem has (``dparams``: every parameter gradient by sorted name, flattened), or None for
    a layer this module does not express.
    """
    layer = problem.case.layer
    if layer == "sdpa":
        return _sdpa(problem)
    if layer in ("mha", "block"):
        return _layer(problem)
    return None
