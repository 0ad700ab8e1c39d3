"""Multi-head attention: forward and backward against the mpmath reference and finite differences.

``numerics.reference.multi_head_attention`` is written from the definition (per-head column
slices, concatenation, W_o) in mpmath; its gradients come from the complex step, so they
share nothing with the hand-written backward under test. float64 results must agree to
normwise relative error < 1e-12 on every namespace of the ``xp`` fixture.

One gradient is exactly zero: ``b_k`` adds ``q_i . b_k`` to every score of row i, which the
softmax ignores, so ``d b_k = 0``. Our value is rounding noise of a sum of terms the size of
``dK``; it is compared against the size of the ``w_k`` and input gradients instead of its own.
"""

from __future__ import annotations

import dataclasses
import functools

import array_api_compat
import numpy as np
import pytest

from numerics import MHAParams, init_params, multi_head_attention, multi_head_attention_backward, reference
from tests.helpers import assert_gradcheck, from_numpy, numerical_gradient, relative_error, to_numpy

from verify.validate.tolerance import ABS64 as TOL64  # the package's float64 bound

FIELDS = ("w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o")


def _random_params(rng, d_model, num_heads, d_k, d_v, d_memory=None, bias=True, seed=0):
    p = init_params(d_model, num_heads, d_k=d_k, d_v=d_v, d_memory=d_memory, bias=bias, seed=seed)
    if bias:  # init_params gives zero biases; random ones exercise every bias gradient
        p = dataclasses.replace(p, **{b: 0.5 * rng.standard_normal(getattr(p, b).shape) for b in FIELDS[4:]})
    return p


def _build_case(name):
    """dict(x, memory, params, d_out, kwargs) for one named problem."""
    rng = np.random.default_rng([11, *map(ord, name)])
    memory, kw = None, {}
    if name == "self_bias":
        p = _random_params(rng, 6, 2, 3, 3)
        x = rng.standard_normal((2, 3, 6))
    elif name == "causal_nobias":
        p = _random_params(rng, 4, 2, 2, 2, bias=False)
        x = rng.standard_normal((2, 4, 4))
        kw["causal"] = True
    elif name == "padding":  # (B, 1, M) key padding mask; batch 0 has its last key padded
        p = _random_params(rng, 4, 2, 2, 3)
        x = rng.standard_normal((2, 4, 4))
        pad = np.ones((2, 1, 4), dtype=bool)
        pad[0, 0, 3] = False
        kw["mask"] = pad
    elif name == "full_row_causal":  # random mask AND causal, with a fully masked query row
        p = _random_params(rng, 4, 2, 2, 2)
        x = rng.standard_normal((2, 4, 4))
        m = rng.random((2, 4, 4)) < 0.7
        m[..., 0] = True
        m[1, 2, :] = False
        kw["mask"], kw["causal"] = m, True
    elif name == "cross":  # M != N, Dm != D, K != V, padding on the memory
        p = _random_params(rng, 4, 2, 3, 2, d_memory=3)
        x = rng.standard_normal((2, 3, 4))
        memory = rng.standard_normal((2, 5, 3))
        pad = np.ones((2, 1, 5), dtype=bool)
        pad[1, 0, 2:] = False
        kw["mask"] = pad
    elif name == "cross_shared_memory":  # memory without batch dims, broadcast over x's batch
        p = _random_params(rng, 4, 2, 2, 2, d_memory=2)
        x = rng.standard_normal((2, 3, 4))
        memory = rng.standard_normal((4, 2))
    elif name == "cross_shared_x":  # x without batch dims, broadcast over memory's batch
        p = _random_params(rng, 4, 2, 3, 2, d_memory=3)
        x = rng.standard_normal((3, 4))
        memory = rng.standard_normal((2, 5, 3))
        kw["mask"] = rng.random((5,)) < 0.7  # key padding of shape (M,)
    elif name == "cross_memory_fewer_dims":  # batch (1, 2): memory has only the second axis
        p = _random_params(rng, 4, 2, 2, 3, d_memory=3)
        x = rng.standard_normal((1, 2, 3, 4))
        memory = rng.standard_normal((2, 4, 3))
    elif name == "one_head":
        p = _random_params(rng, 3, 1, 4, 2)
        x = rng.standard_normal((1, 3, 3))
        kw["causal"] = True
    elif name == "three_heads":
        p = _random_params(rng, 6, 3, 2, 2, bias=False)
        x = rng.standard_normal((1, 3, 6))
    else:
        raise KeyError(name)
    batch = np.broadcast_shapes(x.shape[:-2], () if memory is None else memory.shape[:-2])
    d_out = rng.standard_normal(batch + (x.shape[-2], p.d_model))
    return dict(x=x, memory=memory, params=p, d_out=d_out, kwargs=kw)


CASES = [
    "self_bias", "causal_nobias", "padding", "full_row_causal", "cross", "cross_shared_memory", "cross_shared_x",
    "cross_memory_fewer_dims", "one_head", "three_heads",
]


@functools.lru_cache(maxsize=None)
def case(name):
    c = _build_case(name)
    kw = dict(c["kwargs"], memory=c["memory"])
    c["ref_out"] = reference.to_float64(reference.multi_head_attention(c["x"], c["params"], **kw))
    c["ref_grads"] = reference.multi_head_attention_gradients(c["x"], c["params"], c["d_out"], **kw)
    c["ref_weights"] = reference_weights(c["x"], c["params"], c["memory"], **c["kwargs"])
    return c


def reference_weights(x, p, memory=None, mask=None, causal=False):
    """Per-head weights (..., H, N, M) in mpmath: heads projected exactly, v = identity(M)."""
    mp = reference.to_mp
    src = mp(x if memory is None else memory)

    def proj(a, w, b):
        y = a @ mp(w)
        return y if b is None else y + mp(b)

    q_all, k_all = proj(mp(x), p.w_q, p.b_q), proj(src, p.w_k, p.b_k)
    h, kw = p.num_heads, p.d_k
    m = src.shape[-2]
    batch = np.broadcast_shapes(q_all.shape[:-2], k_all.shape[:-2])
    eye = np.broadcast_to(np.eye(m), batch + (m, m))
    out = [
        reference.to_float64(
            reference.attention(
                q_all[..., i * kw:(i + 1) * kw], k_all[..., i * kw:(i + 1) * kw], eye, mask=mask, causal=causal
            )
        )
        for i in range(h)
    ]
    return np.stack(out, axis=-3)


def params_on(xp, p, dtype=None):
    arrays = {n: from_numpy(xp, a, dtype) for n, a in p.arrays().items()}
    return MHAParams(num_heads=p.num_heads, **arrays)


def _on(xp, c, dtype=None):
    kw = dict(c["kwargs"])
    if "mask" in kw:
        kw["mask"] = from_numpy(xp, kw["mask"])
    x = from_numpy(xp, c["x"], dtype)
    memory = None if c["memory"] is None else from_numpy(xp, c["memory"], dtype)
    return x, memory, params_on(xp, c["params"], dtype), from_numpy(xp, c["d_out"], dtype), kw


def gradient_errors(g, ref):
    """Relative error of each gradient in ``g`` (MHAGradients) against the reference dict."""
    errors = {"x": relative_error(to_numpy(g.x), ref["x"])}
    if "memory" in ref:
        errors["memory"] = relative_error(to_numpy(g.memory), ref["memory"])
    else:
        assert g.memory is None
    for name in FIELDS:
        ours = getattr(g.params, name)
        if name not in ref:
            assert ours is None, name
            continue
        ours = to_numpy(ours)
        assert ours.shape == ref[name].shape, name
        if name == "b_k":
            # exact gradient 0 (softmax shift invariance): measure against the dK-sized gradients
            scale = max(np.max(np.abs(ref["w_k"])), np.max(np.abs(ref.get("memory", ref["x"]))))
            assert np.max(np.abs(ref[name])) <= 1e-30 * scale
            errors[name] = float(np.max(np.abs(ours - ref[name])) / scale)
        else:
            errors[name] = relative_error(ours, ref[name])
    return errors


# --------------------------------------------------------------------------- float64 vs mpmath


@pytest.mark.parametrize("name", CASES)
def test_forward_and_backward_match_mpmath_reference(xp, name):
    c = case(name)
    x, memory, p, d_out, kw = _on(xp, c)
    out, weights = multi_head_attention(x, p, memory=memory, return_weights=True, **kw)
    g = multi_head_attention_backward(x, p, d_out, memory=memory, **kw)

    for r in (out, weights, g.x, *g.params.arrays().values()):
        assert type(r) is type(x) and r.dtype == xp.float64
        assert array_api_compat.array_namespace(r) is array_api_compat.array_namespace(x)
    assert g.params.num_heads == p.num_heads

    assert relative_error(to_numpy(out), c["ref_out"]) < TOL64
    assert tuple(weights.shape) == c["ref_weights"].shape
    assert relative_error(to_numpy(weights), c["ref_weights"]) < TOL64
    errors = gradient_errors(g, c["ref_grads"])
    assert max(errors.values()) < TOL64, errors


def test_fully_masked_row_output_is_the_output_bias_and_passes_no_gradient():
    c = case("full_row_causal")
    x, p, kw = c["x"], c["params"], c["kwargs"]
    out, w = multi_head_attention(x, p, return_weights=True, **kw)
    np.testing.assert_array_equal(out[1, 2], p.b_o)
    np.testing.assert_allclose(c["ref_out"][1, 2], p.b_o, rtol=1e-15, atol=0)
    assert np.all(w[1, :, 2] == 0)
    d_out = np.zeros_like(c["d_out"])
    d_out[1, 2] = c["d_out"][1, 2]
    g = multi_head_attention_backward(x, p, d_out, **kw)
    assert np.all(g.x == 0)
    for name, a in g.params.arrays().items():
        if name == "b_o":
            np.testing.assert_array_equal(a, d_out[1, 2])
        else:
            assert np.all(a == 0), name


def _transposed_w_q(p):
    return dataclasses.replace(p, w_q=np.ascontiguousarray(p.w_q.T))


def _heads_swapped_in_w_q_only(p):
    h, k = p.num_heads, p.d_k
    perm = np.concatenate([np.arange(i * k, (i + 1) * k) for i in reversed(range(h))])
    return dataclasses.replace(p, w_q=p.w_q[:, perm], b_q=None if p.b_q is None else p.b_q[perm])


@pytest.mark.parametrize(
    "name, wrong",
    [
        ("self_bias", _transposed_w_q),  # (D, H*K) square here: a transposed weight still runs
        ("self_bias", _heads_swapped_in_w_q_only),  # query heads paired with the wrong key heads
        ("padding", "no mask"),
        ("full_row_causal", "no causal"),
        ("cross", "memory as x"),  # keys and values from the wrong sequence (N != M: 3 of 5 rows)
    ],
)
def test_reference_comparison_detects_wrong_inputs(name, wrong):
    c = case(name)
    x, memory, p, d_out, kw = c["x"], c["memory"], c["params"], c["d_out"], dict(c["kwargs"])
    if callable(wrong):
        p = wrong(p)
    elif wrong == "no mask":
        kw.pop("mask")
    elif wrong == "no causal":
        kw["causal"] = False
    elif wrong == "memory as x":
        memory = np.ascontiguousarray(memory[:, :3, :])
        kw["mask"] = kw["mask"][..., :3]
    out = multi_head_attention(x, p, memory=memory, **kw)
    assert relative_error(out, c["ref_out"]) > 1e-3
    g = multi_head_attention_backward(x, p, d_out, memory=memory, **kw)
    assert relative_error(g.x, c["ref_grads"]["x"]) > 1e-3


# --------------------------------------------------------------------------- finite differences


def _fd_inputs(c):
    inputs = {"x": c["x"], **c["params"].arrays()}
    if c["memory"] is not None:
        inputs["memory"] = c["memory"]
    return inputs


def _mha_from_flat(num_heads, kw):
    def f(x, memory=None, **arrays):
        return multi_head_attention(x, MHAParams(num_heads=num_heads, **arrays), memory=memory, **kw)

    return f


@pytest.mark.parametrize("name", ["self_bias", "full_row_causal", "cross", "cross_shared_memory", "cross_shared_x", "one_head"])
def test_backward_matches_central_finite_differences(name):
    c = case(name)
    p, kw = c["params"], c["kwargs"]
    numeric = numerical_gradient(_mha_from_flat(p.num_heads, kw), _fd_inputs(c), c["d_out"], eps=1e-6)
    g = multi_head_attention_backward(c["x"], p, c["d_out"], memory=c["memory"], **kw)
    analytic = {"x": g.x, "memory": g.memory, **g.params.arrays()}
    assert set(numeric) <= set(analytic)
    for name_, num in numeric.items():
        assert_gradcheck(analytic[name_], num, atol=1e-5, rtol=1e-3, name=name_)


def test_finite_difference_check_detects_wrong_backward():
    c = case("self_bias")
    p, x, d_out = c["params"], c["x"], c["d_out"]
    f = lambda x, w_o, w_k: multi_head_attention(x, dataclasses.replace(p, w_o=w_o, w_k=w_k))  # noqa: E731
    numeric = numerical_gradient(f, {"x": x, "w_o": p.w_o, "w_k": p.w_k}, d_out)
    # backward taken with causal=True while the forward was not causal
    g = multi_head_attention_backward(x, p, d_out, causal=True)
    with pytest.raises(AssertionError):
        assert_gradcheck(g.x, numeric["x"], name="x")
    with pytest.raises(AssertionError):
        assert_gradcheck(g.params.w_k, numeric["w_k"], name="w_k")
    # a transposed weight gradient (square here, so shapes alone would not catch it)
    g = multi_head_attention_backward(x, p, d_out)
    assert_gradcheck(g.params.w_o, numeric["w_o"], name="w_o")
    with pytest.raises(AssertionError):
        assert_gradcheck(g.params.w_o.T, numeric["w_o"], name="w_o transposed")


# --------------------------------------------------------------------------- precision


HALF_U = {"float16": 2.0**-11, "bfloat16": 2.0**-8}


@functools.lru_cache(maxsize=None)
def _rounded_case(name, dtype_name, grads=True):
    """The case with every input rounded to the given type (kept in float64), and its references."""
    torch = pytest.importorskip("torch")
    c = _build_case(name)
    rnd = lambda a: None if a is None else torch.from_numpy(a).to(getattr(torch, dtype_name)).double().numpy()  # noqa: E731
    p = c["params"]
    r = dict(
        x=rnd(c["x"]),
        memory=rnd(c["memory"]),
        params=MHAParams(num_heads=p.num_heads, **{n: rnd(a) for n, a in p.arrays().items()}),
        d_out=rnd(c["d_out"]),
        kwargs=c["kwargs"],
    )
    kw = dict(r["kwargs"], memory=r["memory"])
    r["ref_out"] = reference.to_float64(reference.multi_head_attention(r["x"], r["params"], **kw))
    if grads:
        r["ref_grads"] = reference.multi_head_attention_gradients(r["x"], r["params"], r["d_out"], **kw)
    return r


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_half_precision_keeps_dtype_and_is_accurate_to_half_rounding(xp, dtype_name):
    """Half inputs are computed in float32 and rounded once, so the error against the exact
    result on the same rounded inputs is at most u*max|ref| plus float32 error: bound 2u."""
    if not hasattr(xp, dtype_name):
        pytest.skip(f"{xp.__name__} has no {dtype_name}")
    dtype, u = getattr(xp, dtype_name), HALF_U[dtype_name]
    c = _rounded_case("cross", dtype_name)
    x, memory, p, d_out, kw = _on(xp, c, dtype)
    out = multi_head_attention(x, p, memory=memory, **kw)
    g = multi_head_attention_backward(x, p, d_out, memory=memory, **kw)
    for r in (out, g.x, g.memory, *g.params.arrays().values()):
        assert r.dtype == dtype and type(r) is type(x)
    up = lambda a: to_numpy(xp.astype(a, xp.float32))  # noqa: E731
    assert relative_error(up(out), c["ref_out"]) <= 2 * u
    ref = c["ref_grads"]
    assert relative_error(up(g.x), ref["x"]) <= 2 * u
    assert relative_error(up(g.memory), ref["memory"]) <= 2 * u
    for name, a in g.params.arrays().items():
        if name != "b_k":  # exact 0, see the module docstring
            assert relative_error(up(a), ref[name]) <= 2 * u, name
    assert np.max(np.abs(up(g.params.b_k))) <= 2 * u * np.max(np.abs(ref["w_k"]))


def test_float32_error_is_float32_sized(xp):
    c = _rounded_case("full_row_causal", "float32", grads=False)
    x, memory, p, d_out, kw = _on(xp, c, xp.float32)
    out = multi_head_attention(x, p, memory=memory, **kw)
    assert out.dtype == xp.float32
    err = relative_error(to_numpy(out), c["ref_out"])
    assert 0 < err < 64 * 2.0**-24


# --------------------------------------------------------------------------- misc


def test_init_params_same_values_on_every_backend(xp):
    ref = init_params(6, 3, d_k=2, d_v=4, d_memory=5, bias=True, seed=5)
    p = init_params(6, 3, d_k=2, d_v=4, d_memory=5, bias=True, seed=5, xp=xp)
    for name, a in ref.arrays().items():
        b = getattr(p, name)
        assert type(b) is type(xp.asarray(0.0)) and b.dtype == xp.float64
        np.testing.assert_array_equal(to_numpy(b), a)
    assert (p.d_model, p.d_memory, p.d_k, p.d_v, p.num_heads) == (6, 5, 2, 4, 3)
    assert p.num_parameters() == 6 * 6 + 5 * 6 + 5 * 12 + 12 * 6 + 6 + 6 + 12 + 6
    other = init_params(6, 3, d_k=2, d_v=4, d_memory=5, seed=6)
    assert not np.array_equal(other.w_q, ref.w_q)


def test_self_attention_equals_cross_attention_on_itself():
    c = case("self_bias")
    a = multi_head_attention(c["x"], c["params"])
    b = multi_head_attention(c["x"], c["params"], memory=c["x"])
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)
    g_self = multi_head_attention_backward(c["x"], c["params"], c["d_out"])
    g_cross = multi_head_attention_backward(c["x"], c["params"], c["d_out"], memory=c["x"])
    assert g_self.memory is None
    # self-attention's x gradient is the query share plus the key/value share
    np.testing.assert_allclose(g_self.x, g_cross.x + g_cross.memory, rtol=0, atol=1e-13)


def test_inputs_are_not_modified():
    c = case("cross")
    saved = {n: a.copy() for n, a in c["params"].arrays().items()}
    x, memory, d_out = c["x"].copy(), c["memory"].copy(), c["d_out"].copy()
    multi_head_attention(x, c["params"], memory=memory, return_weights=True, **c["kwargs"])
    multi_head_attention_backward(x, c["params"], d_out, memory=memory, **c["kwargs"])
    p2 = _build_case("self_bias")["params"]
    saved2 = {n: a.copy() for n, a in p2.arrays().items()}
    multi_head_attention(c["x"].copy()[..., :3, :].repeat(2, axis=-1)[..., :6], p2)  # self-attention path
    for n, a in c["params"].arrays().items():
        np.testing.assert_array_equal(a, saved[n])
    for n, a in p2.arrays().items():
        np.testing.assert_array_equal(a, saved2[n])
    np.testing.assert_array_equal(x, c["x"])
    np.testing.assert_array_equal(memory, c["memory"])
    np.testing.assert_array_equal(d_out, c["d_out"])


@pytest.mark.parametrize(
    "workers, name",
    [
        (2, "self_bias"), (2, "full_row_causal"), (2, "cross"), (2, "three_heads"), (3, "three_heads"),
        # split along batch axis 1, which memory (2, M, Dm) holds as its axis 0
        (2, "cross_memory_fewer_dims"),
    ],
)
def test_split_over_cores_matches_mpmath_reference(monkeypatch, workers, name):
    """numerics cuts large NumPy attention into one slab per core (along batch, else heads);
    forced here on small problems, whatever this machine has."""
    from numerics import _parallel

    monkeypatch.setattr(_parallel, "worker_count", lambda: workers)
    monkeypatch.setattr(_parallel, "MIN_SCORES", 1)
    calls = []
    original = _parallel.map_slabs
    monkeypatch.setattr(_parallel, "map_slabs", lambda *a, **k: calls.append(1) or original(*a, **k))
    c = case(name)
    kw = dict(c["kwargs"], memory=c["memory"])
    out, w = multi_head_attention(c["x"], c["params"], return_weights=True, **kw)
    g = multi_head_attention_backward(c["x"], c["params"], c["d_out"], **kw)
    # forward and backward both took the split path (a backward split along heads, not
    # batch, splits its recomputed forward and its gradients separately)
    assert len(calls) >= 2
    assert relative_error(out, c["ref_out"]) < TOL64
    assert relative_error(w, c["ref_weights"]) < TOL64
    errors = gradient_errors(g, c["ref_grads"])
    assert max(errors.values()) < TOL64, errors
