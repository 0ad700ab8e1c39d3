"""Layer norm, GELU, the feed-forward network and erf: forward and hand-written backward.

Evidence, in order of independence:

* an mpmath computation at 40 digits written here (forward by the textbook formulas,
  gradients by central differences at 40 digits, so they do not reuse the hand derivation),
  float64 to relative error < 1e-12 (max |diff| / max |ref|);
* float64 central finite differences with gradcheck's tolerances (atol 1e-5, rtol 1e-3);
* PyTorch (``torch.nn.functional`` and autograd): float64 to 1e-12, and in float32
  ``err(ours) <= 2 * err(torch) + floor`` against a float64 reference (FlashAttention's rule).

Tests named ``*_detects_*`` show that the comparisons used here fail on a deliberately
wrong computation.
"""

from __future__ import annotations

import functools

import mpmath
import numpy as np
import pytest

import numerics
from numerics import _special
from numerics._special import erf, erf_portable, erfc, erfc_portable
from numerics.layers import (
    FFNParams,
    feed_forward,
    feed_forward_backward,
    gelu,
    gelu_backward,
    init_ffn_params,
    layer_norm,
    layer_norm_backward,
)
from tests.helpers import (
    assert_gradcheck,
    central_differences,
    from_numpy,
    numerical_gradient,
    relative_error,
    to_numpy,
)
from verify.validate.tolerance import ABS64, K_OUTPUT, rule

MP_DPS = 40
# The package's bounds (verify.validate.tolerance): float64 against mpmath, and the float32 rule
# (assert_float32_rule), whose floor is 16 u relative to max |ref| (was u here): it matters only
# when torch happens to be (nearly) exact, e.g. a sum of six numbers accumulated in higher precision.
TOL64 = ABS64
HALF_UNIT = {"float16": 2.0**-11, "bfloat16": 2.0**-8}


# ----------------------------------------------------------------------------- helpers


def _mp(a):
    return np.vectorize(mpmath.mpf, otypes=[object])(np.asarray(a, dtype=np.float64))


def _to_float(a) -> np.ndarray:
    return np.vectorize(float, otypes=[np.float64])(a)


def _mp_map(fn, a):
    return np.vectorize(fn, otypes=[object])(a)


def mp_layer_norm(x, gamma=None, beta=None, eps=1e-5):
    d = x.shape[-1]
    mean = x.sum(axis=-1, keepdims=True) / d
    centred = x - mean
    var = (centred * centred).sum(axis=-1, keepdims=True) / d
    y = centred / _mp_map(mpmath.sqrt, var + mpmath.mpf(eps))
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y


def _mp_gelu_scalar(v, approximate):
    # The textbook formulas; 1 + erf and 1 + tanh cancel ~40 digits at x = -10, hence the
    # 80 extra digits.
    with mpmath.extradps(80):
        if approximate == "none":
            r = v * (1 + mpmath.erf(v / mpmath.sqrt(2))) / 2
        else:
            u = mpmath.sqrt(2 / mpmath.pi) * (v + mpmath.mpf("0.044715") * v**3)
            r = v * (1 + mpmath.tanh(u)) / 2
    return +r  # rounded to the working precision


def mp_gelu(x, approximate="none"):
    return _mp_map(lambda v: _mp_gelu_scalar(v, approximate), x)


def mp_feed_forward(x, w1, b1, w2, b2, approximate="none"):
    h = np.matmul(x, w1)
    if b1 is not None:
        h = h + b1
    y = np.matmul(mp_gelu(h, approximate), w2)
    return y if b2 is None else y + b2


def mp_gradients(f, inputs: dict, d_out) -> dict:
    """Gradients of sum(d_out * f(**inputs)) by 40-digit central differences (step 1e-15)."""
    with mpmath.workdps(MP_DPS):
        point = {n: None if a is None else _mp(a) for n, a in inputs.items()}
        weights = _mp(d_out)
        step = mpmath.mpf("1e-15")

        def objective():
            return (weights * f(**point)).sum()

        return central_differences(point, objective, step)


def mp_forward(f, inputs: dict) -> np.ndarray:
    with mpmath.workdps(MP_DPS):
        return _to_float(f(**{n: None if a is None else _mp(a) for n, a in inputs.items()}))


def _rng(seed=0):
    return np.random.default_rng(seed)


def _other_backend(xp):
    """A namespace different from ``xp``, for the mixed-namespace tests."""
    from numerics._backend import get_namespace

    return get_namespace("array_api_strict" if "numpy" in xp.__name__ else "numpy")


def _dtype_or_skip(xp, name):
    dtype = getattr(xp, name, None)
    if dtype is None:
        pytest.skip(f"{xp.__name__} has no {name}")
    return dtype


def assert_float32_rule(ours, theirs, ref, *, k=K_OUTPUT, what="output"):
    """The package's rule (verify.validate.tolerance.rule): err(ours) <= k * err(torch) + floor."""
    m = rule(to_numpy(ours), to_numpy(theirs), ref, dtype="float32", k=k, what=what)
    assert m.ok, f"{what}: err(ours) = {m.error:.3g}, err(torch) = {m.plain_error:.3g}"


# ----------------------------------------------------------------------------- fixtures (cases)

LN_SHAPE = (2, 3, 8)


@functools.lru_cache(maxsize=None)
def ln_case():
    rng = _rng(1)
    x = rng.standard_normal(LN_SHAPE) * 2.0 + 0.5
    gamma = 1.0 + 0.3 * rng.standard_normal(LN_SHAPE[-1])
    beta = 0.3 * rng.standard_normal(LN_SHAPE[-1])
    d_out = rng.standard_normal(LN_SHAPE)
    return x, gamma, beta, d_out


@functools.lru_cache(maxsize=None)
def ln_mp_reference(affine: bool):
    x, gamma, beta, d_out = ln_case()
    inputs = {"x": x, "gamma": gamma if affine else None, "beta": beta if affine else None}
    y = mp_forward(mp_layer_norm, inputs)
    grads = mp_gradients(mp_layer_norm, inputs, d_out)
    return y, grads


FFN_D, FFN_F = 4, 6


@functools.lru_cache(maxsize=None)
def ffn_case(bias: bool):
    rng = _rng(2)
    x = rng.standard_normal((2, 3, FFN_D))
    p = init_ffn_params(FFN_D, FFN_F, bias=bias, seed=3)
    d_out = rng.standard_normal((2, 3, FFN_D))
    return x, {"w1": p.w1, "b1": p.b1, "w2": p.w2, "b2": p.b2}, d_out


@functools.lru_cache(maxsize=None)
def ffn_mp_reference(approximate: str, bias: bool):
    x, params, d_out = ffn_case(bias)

    def f(x, w1, b1, w2, b2):
        return mp_feed_forward(x, w1, b1, w2, b2, approximate)

    inputs = {"x": x, **params}
    return mp_forward(f, inputs), mp_gradients(f, inputs, d_out)


def _ffn_params(xp, params: dict, dtype=None) -> FFNParams:
    return FFNParams(**{n: None if a is None else from_numpy(xp, a, dtype) for n, a in params.items()})


GELU_GRID = np.concatenate([np.linspace(-10.0, 10.0, 801), [-1e-300, 0.0, 1e-300, 3e-8, -3e-8]])


@functools.lru_cache(maxsize=None)
def gelu_mp_reference(approximate: str):
    with mpmath.workdps(MP_DPS):
        xs = _mp(GELU_GRID)
        y = _to_float(mp_gelu(xs, approximate))
        dy = _to_float(_mp_map(lambda v: mpmath.diff(lambda t: _mp_gelu_scalar(t, approximate), v), xs))
    return y, dy


def _elementwise_relative(actual, expected, tiny=1e-290):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    m = np.abs(expected) > tiny
    assert np.all(actual[~m] == expected[~m]) or np.all(np.abs(actual[~m]) <= tiny)
    return float(np.max(np.abs(actual[m] - expected[m]) / np.abs(expected[m])))


# ============================================================================= erf

ERF_GRID = np.concatenate(
    [
        np.linspace(-6.5, 6.5, 2601),
        np.linspace(-30.0, 30.0, 241),
        np.linspace(0.46, 0.48, 81),  # around Cody's first break point 0.46875
        np.linspace(3.98, 4.02, 81),  # and the second, 4
        np.geomspace(1e-300, 0.5, 200),
        -np.geomspace(1e-300, 0.5, 200),
        [0.0, 5e-324, 1e-310, 2.2e-308, 26.5, 27.2, 27.3],
    ]
)


@functools.lru_cache(maxsize=None)
def erf_mp_reference():
    with mpmath.workdps(MP_DPS):
        return (
            np.array([float(mpmath.erf(mpmath.mpf(v))) for v in ERF_GRID]),
            np.array([float(mpmath.erfc(mpmath.mpf(v))) for v in ERF_GRID]),
        )


def _max_rel_normal(actual, expected, subnormal_atol=4 * 5e-324):
    """Max relative error over entries whose reference is a normal float64 (subnormals checked apart)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    normal = np.abs(expected) >= np.finfo(np.float64).tiny
    sub = ~normal
    # Subnormal (or zero) results: an absolute error of a few units of 2**-1074 on our path.
    assert np.all(np.abs(actual[sub] - expected[sub]) <= subnormal_atol), "subnormal results off"
    return float(np.max(np.abs(actual[normal] - expected[normal]) / np.abs(expected[normal])))


def test_erf_portable_matches_mpmath_float64():
    import array_api_compat.numpy as xnp

    ref, refc = erf_mp_reference()
    err = _max_rel_normal(erf_portable(xnp, ERF_GRID), ref)
    errc = _max_rel_normal(erfc_portable(xnp, ERF_GRID), refc)
    assert err < 1e-15, err  # measured 4.5e-16 (4 ulps, at |x| just above 0.46875)
    assert errc < 2e-15, errc  # measured 6.8e-16 (6 ulps)


def test_erf_portable_on_strict_namespace_and_special_values():
    import array_api_strict as xs

    ref, refc = erf_mp_reference()
    assert _max_rel_normal(to_numpy(erf_portable(xs, xs.asarray(ERF_GRID))), ref) < 1e-15
    special = xs.asarray([np.inf, -np.inf, np.nan, -0.0, 0.0, 1e308, -1e308])
    e = to_numpy(erf_portable(xs, special))
    np.testing.assert_array_equal(e[[0, 1, 4, 5, 6]], [1.0, -1.0, 0.0, 1.0, -1.0])
    assert np.isnan(e[2]) and e[3] == 0.0 and np.signbit(e[3])
    c = to_numpy(erfc_portable(xs, special))
    np.testing.assert_array_equal(c[[0, 1, 3, 4, 5, 6]], [0.0, 2.0, 1.0, 1.0, 0.0, 2.0])
    assert np.isnan(c[2])


def test_erf_portable_float32():
    import array_api_compat.numpy as xnp

    g = ERF_GRID.astype(np.float32)
    g = g[np.abs(g) > 1e-37]  # float32 normal range
    with mpmath.workdps(30):
        ref = np.array([float(mpmath.erf(mpmath.mpf(float(v)))) for v in g])
    out = erf_portable(xnp, g)
    assert out.dtype == np.float32
    rel = np.abs(out.astype(np.float64) - ref) / np.abs(ref)
    assert rel.max() < 1e-6, rel.max()  # measured 2.5e-7 (~4 float32 ulps)


def test_erf_dispatch_matches_mpmath(xp):
    ref, refc = erf_mp_reference()
    x = from_numpy(xp, ERF_GRID)
    out, outc = erf(xp, x), erfc(xp, x)
    assert type(out) is type(x) and out.dtype == x.dtype
    # Native libraries may flush subnormal results to 0 (SciPy's erfc does).
    tiny = np.finfo(np.float64).tiny
    assert _max_rel_normal(to_numpy(out), ref, tiny) < 1e-15
    # SciPy's erfc is good to ~5e-14 relative deep in the right tail; ours and torch's to 1e-15.
    assert _max_rel_normal(to_numpy(outc), refc, tiny) < 1e-13


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_erf_half_precision_keeps_dtype(xp, name):
    dtype = _dtype_or_skip(xp, name)
    x = from_numpy(xp, np.linspace(-3, 3, 13), dtype)
    for fn in (erf, erf_portable):
        out = fn(xp, x)
        assert out.dtype == dtype
        ref = [float(mpmath.erf(float(v))) for v in to_numpy(xp.astype(x, xp.float32))]
        assert relative_error(to_numpy(xp.astype(out, xp.float32)), ref) <= HALF_UNIT[name]


def test_erf_rejects_integer_input(xp):
    with pytest.raises(TypeError, match="x must have a real floating dtype"):
        erf(xp, from_numpy(xp, np.arange(3)))
    with pytest.raises(TypeError, match="x must have a real floating dtype"):
        erf_portable(xp, from_numpy(xp, np.arange(3)))


def test_erf_check_detects_a_perturbed_coefficient(monkeypatch):
    import array_api_compat.numpy as xnp

    ref, _ = erf_mp_reference()
    bad = list(_special._C)
    bad[3] *= 1 + 1e-12
    monkeypatch.setattr(_special, "_C", tuple(bad))
    assert _max_rel_normal(erf_portable(xnp, ERF_GRID), ref) > 1e-15


# ============================================================================= layer norm


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_forward_and_backward_match_mpmath(xp, affine):
    x, gamma, beta, d_out = ln_case()
    ref_y, ref_g = ln_mp_reference(affine)
    g, b = (from_numpy(xp, gamma), from_numpy(xp, beta)) if affine else (None, None)
    y = layer_norm(from_numpy(xp, x), g, b)
    assert type(y) is type(from_numpy(xp, x)) and tuple(y.shape) == LN_SHAPE
    assert relative_error(to_numpy(y), ref_y) < TOL64
    dx, dgamma, dbeta = layer_norm_backward(from_numpy(xp, x), from_numpy(xp, d_out), g)
    assert relative_error(to_numpy(dx), ref_g["x"]) < TOL64
    if affine:
        assert relative_error(to_numpy(dgamma), ref_g["gamma"]) < TOL64
        assert relative_error(to_numpy(dbeta), ref_g["beta"]) < TOL64
    else:
        assert dgamma is None
        np.testing.assert_allclose(to_numpy(dbeta), d_out.reshape(-1, LN_SHAPE[-1]).sum(0), rtol=1e-14)


def test_layer_norm_backward_finite_differences(xp):
    x, gamma, beta, d_out = ln_case()

    def f(x, gamma, beta):
        return layer_norm(from_numpy(xp, x), from_numpy(xp, gamma), from_numpy(xp, beta))

    num = numerical_gradient(f, {"x": x, "gamma": gamma, "beta": beta}, d_out)
    dx, dgamma, dbeta = layer_norm_backward(from_numpy(xp, x), from_numpy(xp, d_out), from_numpy(xp, gamma))
    assert_gradcheck(dx, num["x"], name="dx")
    assert_gradcheck(dgamma, num["gamma"], name="dgamma")
    assert_gradcheck(dbeta, num["beta"], name="dbeta")


def test_layer_norm_backward_handles_1d_and_custom_eps(xp):
    x, gamma, _, d_out = ln_case()
    x1, d1 = x[0, 0], d_out[0, 0]

    def f(x, gamma):
        return layer_norm(from_numpy(xp, x), from_numpy(xp, gamma), eps=0.5)

    num = numerical_gradient(f, {"x": x1, "gamma": gamma}, d1)
    dx, dgamma, _ = layer_norm_backward(from_numpy(xp, x1), from_numpy(xp, d1), from_numpy(xp, gamma), eps=0.5)
    assert_gradcheck(dx, num["x"], name="dx")
    assert_gradcheck(dgamma, num["gamma"], name="dgamma")


@pytest.mark.parametrize(
    "offset, scale", [(0.0, 1.0), (0.0, 1e-3), (0.0, 1e3), (1e3, 1.0), (-50.0, 0.1)]
)
def test_layer_norm_output_has_mean_zero_and_unit_variance(xp, offset, scale):
    rng = _rng(4)
    x = offset + scale * rng.standard_normal((5, 16))
    # eps = 0: exactly mean 0 and variance 1 in exact arithmetic. Rounding of the inputs' mean
    # is amplified by the condition number max|x| / std, so the bound carries it.
    y = to_numpy(layer_norm(from_numpy(xp, x), eps=0.0))
    cond = np.max(np.abs(x), axis=-1) / x.std(axis=-1)
    bound = 64 * np.finfo(np.float64).eps * cond
    assert np.all(np.abs(y.mean(-1)) <= bound), (y.mean(-1), bound)
    assert np.all(np.abs(y.var(-1) - 1.0) <= bound), (y.var(-1) - 1.0, bound)
    # eps > 0: variance var / (var + eps).
    eps = 1e-5 * scale**2
    y = to_numpy(layer_norm(from_numpy(xp, x), eps=eps))
    var = x.var(-1)
    np.testing.assert_allclose(y.var(-1), var / (var + eps), rtol=0, atol=64 * np.finfo(np.float64).eps * cond.max())


def test_layer_norm_float32_moments(xp):
    x = (3.0 + _rng(5).standard_normal((4, 32))).astype(np.float32)
    y = to_numpy(layer_norm(from_numpy(xp, x), eps=0.0)).astype(np.float64)
    assert y.dtype == np.float64 and np.all(np.abs(y.mean(-1)) < 1e-5) and np.all(np.abs(y.var(-1) - 1) < 1e-5)


def test_layer_norm_comparison_detects_wrong_eps_and_perturbed_gain(xp):
    x, gamma, beta, _ = ln_case()
    ref_y, _ = ln_mp_reference(True)
    wrong_eps = layer_norm(from_numpy(xp, x), from_numpy(xp, gamma), from_numpy(xp, beta), eps=1e-4)
    assert relative_error(to_numpy(wrong_eps), ref_y) > TOL64
    g = gamma.copy()
    g[3] *= 1 + 1e-9
    perturbed = layer_norm(from_numpy(xp, x), from_numpy(xp, g), from_numpy(xp, beta))
    assert relative_error(to_numpy(perturbed), ref_y) > TOL64


def _torch_layer_norm(x, gamma, beta, d_out, eps=1e-5):
    torch = pytest.importorskip("torch")
    tx = torch.tensor(x, requires_grad=True)
    tg = torch.tensor(gamma, requires_grad=True)
    tb = torch.tensor(beta, requires_grad=True)
    y = torch.nn.functional.layer_norm(tx, (x.shape[-1],), tg, tb, eps)
    y.backward(torch.tensor(d_out))
    return [t.detach().numpy() for t in (y, tx.grad, tg.grad, tb.grad)]


def test_layer_norm_matches_torch(xp):
    x, gamma, beta, d_out = ln_case()
    ty, tdx, tdg, tdb = _torch_layer_norm(x, gamma, beta, d_out)
    ours_y = layer_norm(from_numpy(xp, x), from_numpy(xp, gamma), from_numpy(xp, beta))
    ours_g = layer_norm_backward(from_numpy(xp, x), from_numpy(xp, d_out), from_numpy(xp, gamma))
    for a, b in zip((ours_y, *ours_g), (ty, tdx, tdg, tdb)):
        assert relative_error(to_numpy(a), b) < TOL64

    # float32: within 2x of torch's own float32 error against the float64 result.
    x32, g32, b32, d32 = (a.astype(np.float32) for a in ln_case())
    ref = _torch_layer_norm(*(a.astype(np.float64) for a in (x32, g32, b32, d32)))
    t32 = _torch_layer_norm(x32, g32, b32, d32)
    y = layer_norm(from_numpy(xp, x32), from_numpy(xp, g32), from_numpy(xp, b32))
    grads = layer_norm_backward(from_numpy(xp, x32), from_numpy(xp, d32), from_numpy(xp, g32))
    assert y.dtype == xp.float32 and all(g.dtype == xp.float32 for g in grads)
    for what, a, t, r in zip(("y", "dx", "dgamma", "dbeta"), (y, *grads), t32, ref):
        assert_float32_rule(a, t, r, what=what)


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_layer_norm_half_precision(xp, name):
    dtype = _dtype_or_skip(xp, name)
    x, gamma, beta, d_out = ln_case()
    args = [from_numpy(xp, a, dtype) for a in (x, gamma, beta, d_out)]
    exact = [to_numpy(xp.astype(a, xp.float64)) for a in args]  # the half-rounded inputs, in float64
    y = layer_norm(args[0], args[1], args[2])
    grads = layer_norm_backward(args[0], args[3], args[1])
    ref_y = to_numpy(layer_norm(*(from_numpy(xp, a) for a in exact[:3])))
    ref_g = layer_norm_backward(from_numpy(xp, exact[0]), from_numpy(xp, exact[3]), from_numpy(xp, exact[1]))
    # Computed in float32 and rounded once to half: error <= half's unit roundoff + float32 noise.
    bound = HALF_UNIT[name] + 1e-5
    for a, r in zip((y, *grads), (ref_y, *ref_g)):
        assert a.dtype == dtype
        assert relative_error(to_numpy(xp.astype(a, xp.float64)), to_numpy(r)) <= bound


# ============================================================================= GELU


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_mpmath(xp, approximate):
    ref_y, ref_dy = gelu_mp_reference(approximate)
    x = from_numpy(xp, GELU_GRID)
    y = to_numpy(gelu(x, approximate=approximate))
    dy = to_numpy(gelu_backward(x, from_numpy(xp, np.ones_like(GELU_GRID)), approximate=approximate))
    assert relative_error(y, ref_y) < TOL64 and relative_error(dy, ref_dy) < TOL64
    # Elementwise too, including the negative tail where 1 + erf(x / sqrt 2) would cancel.
    assert _elementwise_relative(y, ref_y) < TOL64
    assert _elementwise_relative(dy, ref_dy) < 1e-11  # derivative crosses 0 near x = -0.75


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_backward_finite_differences(xp, approximate):
    x = _rng(6).standard_normal((3, 5)) * 3
    d_out = _rng(7).standard_normal((3, 5))
    num = numerical_gradient(lambda x: gelu(from_numpy(xp, x), approximate=approximate), {"x": x}, d_out)
    ours = gelu_backward(from_numpy(xp, x), from_numpy(xp, d_out), approximate=approximate)
    assert_gradcheck(ours, num["x"], name="dx")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_torch(xp, approximate):
    torch = pytest.importorskip("torch")
    x = _rng(8).standard_normal((4, 9)) * 3
    d_out = _rng(9).standard_normal((4, 9))

    def torch_gelu(x, d_out):
        tx = torch.tensor(x, requires_grad=True)
        y = torch.nn.functional.gelu(tx, approximate=approximate)
        y.backward(torch.tensor(d_out))
        return y.detach().numpy(), tx.grad.numpy()

    ty, tdx = torch_gelu(x, d_out)
    assert relative_error(to_numpy(gelu(from_numpy(xp, x), approximate=approximate)), ty) < TOL64
    ours = gelu_backward(from_numpy(xp, x), from_numpy(xp, d_out), approximate=approximate)
    assert relative_error(to_numpy(ours), tdx) < TOL64

    x32, d32 = x.astype(np.float32), d_out.astype(np.float32)
    ref = torch_gelu(x32.astype(np.float64), d32.astype(np.float64))
    t32 = torch_gelu(x32, d32)
    y = gelu(from_numpy(xp, x32), approximate=approximate)
    dx = gelu_backward(from_numpy(xp, x32), from_numpy(xp, d32), approximate=approximate)
    assert y.dtype == xp.float32 and dx.dtype == xp.float32
    assert_float32_rule(y, t32[0], ref[0], what="y")
    assert_float32_rule(dx, t32[1], ref[1], what="dx")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_huge_inputs_stay_finite(xp, approximate):
    for dtype, big in ((xp.float64, 1e300), (xp.float32, 3e38)):
        x = xp.astype(from_numpy(xp, np.array([-big, -1e20, -60.0, 60.0, 1e20, big])), dtype)
        y = to_numpy(gelu(x, approximate=approximate)).astype(np.float64)
        dy = to_numpy(gelu_backward(x, xp.ones_like(x), approximate=approximate)).astype(np.float64)
        xs = to_numpy(x).astype(np.float64)
        np.testing.assert_array_equal(y, np.where(xs > 0, xs, 0.0))
        np.testing.assert_array_equal(dy, np.where(xs > 0, 1.0, 0.0))


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_gelu_half_precision(xp, name):
    dtype = _dtype_or_skip(xp, name)
    x = from_numpy(xp, np.linspace(-4, 4, 33), dtype)
    exact = from_numpy(xp, to_numpy(xp.astype(x, xp.float64)))
    for approximate in ("none", "tanh"):
        y = gelu(x, approximate=approximate)
        dy = gelu_backward(x, xp.ones_like(x), approximate=approximate)
        assert y.dtype == dtype and dy.dtype == dtype
        ref_y = to_numpy(gelu(exact, approximate=approximate))
        ref_dy = to_numpy(gelu_backward(exact, xp.ones_like(exact), approximate=approximate))
        assert relative_error(to_numpy(xp.astype(y, xp.float64)), ref_y) <= HALF_UNIT[name] + 1e-6
        assert relative_error(to_numpy(xp.astype(dy, xp.float64)), ref_dy) <= HALF_UNIT[name] + 1e-6


def test_gelu_comparison_detects_the_wrong_formula(xp):
    ref_y, ref_dy = gelu_mp_reference("none")
    x = from_numpy(xp, GELU_GRID)
    assert relative_error(to_numpy(gelu(x, approximate="tanh")), ref_y) > 1e-5
    wrong = gelu_backward(x, from_numpy(xp, np.ones_like(GELU_GRID)), approximate="tanh")
    assert relative_error(to_numpy(wrong), ref_dy) > 1e-5


# ============================================================================= feed-forward


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("bias", [True, False])
def test_feed_forward_matches_mpmath(xp, approximate, bias):
    x, params, d_out = ffn_case(bias)
    ref_y, ref_g = ffn_mp_reference(approximate, bias)
    p = _ffn_params(xp, params)
    y = feed_forward(from_numpy(xp, x), p, approximate=approximate)
    assert type(y) is type(p.w1) and tuple(y.shape) == x.shape
    assert relative_error(to_numpy(y), ref_y) < TOL64
    dx, grads = feed_forward_backward(from_numpy(xp, x), p, from_numpy(xp, d_out), approximate=approximate)
    assert isinstance(grads, FFNParams)
    assert relative_error(to_numpy(dx), ref_g["x"]) < TOL64
    for name in ("w1", "b1", "w2", "b2"):
        g = getattr(grads, name)
        if params[name] is None:
            assert g is None
        else:
            assert tuple(g.shape) == params[name].shape
            assert relative_error(to_numpy(g), ref_g[name]) < TOL64, name


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_feed_forward_backward_finite_differences(xp, approximate):
    x, params, d_out = ffn_case(True)

    def f(x, w1, b1, w2, b2):
        p = _ffn_params(xp, {"w1": w1, "b1": b1, "w2": w2, "b2": b2})
        return feed_forward(from_numpy(xp, x), p, approximate=approximate)

    num = numerical_gradient(f, {"x": x, **params}, d_out)
    dx, grads = feed_forward_backward(from_numpy(xp, x), _ffn_params(xp, params), from_numpy(xp, d_out), approximate=approximate)
    assert_gradcheck(dx, num["x"], name="dx")
    for name in ("w1", "b1", "w2", "b2"):
        assert_gradcheck(getattr(grads, name), num[name], name=name)


def test_feed_forward_single_token_vector(xp):
    x, params, d_out = ffn_case(True)
    p = _ffn_params(xp, params)
    y = feed_forward(from_numpy(xp, x[0, 0]), p)
    assert tuple(y.shape) == (FFN_D,)
    full = to_numpy(feed_forward(from_numpy(xp, x), p))
    np.testing.assert_allclose(to_numpy(y), full[0, 0], rtol=1e-14, atol=1e-15)
    dx, grads = feed_forward_backward(from_numpy(xp, x[0, 0]), p, from_numpy(xp, d_out[0, 0]))
    assert tuple(dx.shape) == (FFN_D,) and tuple(grads.w1.shape) == (FFN_D, FFN_F)


def _torch_ffn(x, params, d_out, approximate):
    torch = pytest.importorskip("torch")
    t = {n: torch.tensor(a, requires_grad=True) for n, a in {"x": x, **params}.items()}
    h = t["x"] @ t["w1"] + t["b1"]
    y = torch.nn.functional.gelu(h, approximate=approximate) @ t["w2"] + t["b2"]
    y.backward(torch.tensor(d_out))
    return y.detach().numpy(), {n: v.grad.numpy() for n, v in t.items()}


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_feed_forward_matches_torch(xp, approximate):
    x, params, d_out = ffn_case(True)
    ty, tg = _torch_ffn(x, params, d_out, approximate)
    p = _ffn_params(xp, params)
    assert relative_error(to_numpy(feed_forward(from_numpy(xp, x), p, approximate=approximate)), ty) < TOL64
    dx, grads = feed_forward_backward(from_numpy(xp, x), p, from_numpy(xp, d_out), approximate=approximate)
    assert relative_error(to_numpy(dx), tg["x"]) < TOL64
    for name in ("w1", "b1", "w2", "b2"):
        assert relative_error(to_numpy(getattr(grads, name)), tg[name]) < TOL64

    # float32, a wider layer so that rounding errors accumulate.
    rng = _rng(10)
    x32 = rng.standard_normal((4, 7, 32)).astype(np.float32)
    big = init_ffn_params(32, 96, seed=11)
    p32 = {n: getattr(big, n).astype(np.float32) for n in ("w1", "b1", "w2", "b2")}
    d32 = rng.standard_normal((4, 7, 32)).astype(np.float32)
    ref_y, ref_g = _torch_ffn(x32.astype(np.float64), {n: a.astype(np.float64) for n, a in p32.items()},
                              d32.astype(np.float64), approximate)
    t_y, t_g = _torch_ffn(x32, p32, d32, approximate)
    pp = _ffn_params(xp, p32)
    y = feed_forward(from_numpy(xp, x32), pp, approximate=approximate)
    dx, grads = feed_forward_backward(from_numpy(xp, x32), pp, from_numpy(xp, d32), approximate=approximate)
    assert y.dtype == xp.float32 and dx.dtype == xp.float32 and grads.w1.dtype == xp.float32
    assert_float32_rule(y, t_y, ref_y, what="y")
    assert_float32_rule(dx, t_g["x"], ref_g["x"], what="dx")
    for name in ("w1", "b1", "w2", "b2"):
        assert_float32_rule(getattr(grads, name), t_g[name], ref_g[name], what=name)


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_feed_forward_half_precision(xp, name):
    dtype = _dtype_or_skip(xp, name)
    x, params, d_out = ffn_case(True)
    p = _ffn_params(xp, params, dtype)
    xh, dh = from_numpy(xp, x, dtype), from_numpy(xp, d_out, dtype)
    up = lambda a: from_numpy(xp, to_numpy(xp.astype(a, xp.float64)))  # noqa: E731
    p64 = FFNParams(*(up(getattr(p, n)) for n in ("w1", "b1", "w2", "b2")))
    y = feed_forward(xh, p)
    dx, grads = feed_forward_backward(xh, p, dh)
    ref_y = feed_forward(up(xh), p64)
    ref_dx, ref_grads = feed_forward_backward(up(xh), p64, up(dh))
    bound = HALF_UNIT[name] + 1e-5
    pairs = [(y, ref_y), (dx, ref_dx)] + [(getattr(grads, n), getattr(ref_grads, n)) for n in ("w1", "b1", "w2", "b2")]
    for a, r in pairs:
        assert a.dtype == dtype
        assert relative_error(to_numpy(xp.astype(a, xp.float64)), to_numpy(r)) <= bound


def test_feed_forward_comparison_detects_a_perturbed_weight(xp):
    x, params, d_out = ffn_case(True)
    ref_y, ref_g = ffn_mp_reference("none", True)
    w1 = params["w1"].copy()
    w1[1, 2] *= 1 + 1e-9
    p = _ffn_params(xp, {**params, "w1": w1})
    assert relative_error(to_numpy(feed_forward(from_numpy(xp, x), p)), ref_y) > TOL64
    _, grads = feed_forward_backward(from_numpy(xp, x), p, from_numpy(xp, d_out))
    assert relative_error(to_numpy(grads.w2), ref_g["w2"]) > TOL64
    # A gradient computed with the wrong GELU fails the gradcheck comparison.
    num = numerical_gradient(
        lambda x: feed_forward(from_numpy(xp, x), _ffn_params(xp, params)), {"x": x}, d_out
    )
    wrong_dx, _ = feed_forward_backward(from_numpy(xp, x), _ffn_params(xp, params), from_numpy(xp, d_out), approximate="tanh")
    with pytest.raises(AssertionError):
        assert_gradcheck(wrong_dx, num["x"], atol=1e-7, rtol=1e-5)


def test_init_ffn_params(xp):
    p = init_ffn_params(8, 32, xp=xp, seed=5)
    assert (p.d_model, p.d_ff) == (8, 32)
    assert tuple(p.w1.shape) == (8, 32) and tuple(p.b1.shape) == (32,)
    assert tuple(p.w2.shape) == (32, 8) and tuple(p.b2.shape) == (8,)
    assert all(a.dtype == xp.float64 for a in (p.w1, p.b1, p.w2, p.b2))
    assert type(p.w1) is type(xp.asarray(0.0))
    # Same seed, same values on every namespace; the scale is 1 / sqrt(fan_in).
    ref = init_ffn_params(8, 32, xp="numpy", seed=5)
    for n in ("w1", "b1", "w2", "b2"):
        np.testing.assert_array_equal(to_numpy(getattr(p, n)), getattr(ref, n))
    big = init_ffn_params(64, 256, seed=0)
    assert abs(big.w1.std() * 8 - 1) < 0.05 and abs(big.w2.std() * 16 - 1) < 0.05
    assert not np.array_equal(init_ffn_params(8, 32, seed=6).w1, ref.w1)
    q = init_ffn_params(8, 32, xp=xp, bias=False, dtype="float32")
    assert q.b1 is None and q.b2 is None and q.w1.dtype == xp.float32


def test_public_names_are_exported():
    for name in ("layer_norm", "layer_norm_backward", "gelu", "gelu_backward", "FFNParams",
                 "init_ffn_params", "feed_forward", "feed_forward_backward"):
        assert getattr(numerics, name) is globals()[name]
        assert name in numerics.__all__


# ============================================================================= bad input


def _bad_cases(xp):
    """(label, call, exception type, text(s) the message must contain)."""
    rng = _rng(12)
    A = lambda *shape: from_numpy(xp, rng.standard_normal(shape))  # noqa: E731
    x = A(2, 3, 8)
    nan_x = from_numpy(xp, np.array([[1.0, np.nan, 2.0]]))
    ints = from_numpy(xp, np.arange(8).reshape(1, 8))
    other = _other_backend(xp)
    good = FFNParams(A(8, 16), A(16), A(16, 8), A(8))
    with_ = lambda **kw: FFNParams(**{**good.__dict__, **kw})  # noqa: E731
    f32 = lambda a: xp.astype(a, xp.float32)  # noqa: E731
    return [
        ("ln gamma shape", lambda: layer_norm(x, A(7)), ValueError, "gamma must have shape (D,) with D = x.shape[-1] = 8, got (7,)"),
        ("ln beta shape", lambda: layer_norm(x, A(8), A(8, 1)), ValueError, "beta must have shape"),
        ("ln int x", lambda: layer_norm(ints), TypeError, "x must have a real floating dtype"),
        ("ln 0-d x", lambda: layer_norm(xp.asarray(1.0)), ValueError, "x must have at least 1 dimensions"),
        ("ln dtype mix", lambda: layer_norm(x, f32(A(8))), TypeError, ("x, gamma must share one dtype", "gamma is", "float32")),
        ("ln nan", lambda: layer_norm(nan_x), ValueError, "x contains NaN or Inf"),
        ("ln nan gamma", lambda: layer_norm(x, from_numpy(xp, np.full(8, np.nan))), ValueError, "gamma contains NaN"),
        ("ln eps negative", lambda: layer_norm(x, eps=-1.0), ValueError, "eps must be finite and >= 0"),
        ("ln eps type", lambda: layer_norm(x, eps="small"), TypeError, "eps must be a real number"),
        ("ln mixed", lambda: layer_norm(x, other.asarray(np.ones(8))), TypeError, "gamma is a"),
        ("ln bwd d_out", lambda: layer_norm_backward(x, A(2, 3, 7)), ValueError, "d_out must have x's shape (2, 3, 8), got shape (2, 3, 7)"),
        ("ln bwd gamma", lambda: layer_norm_backward(x, A(2, 3, 8), A(9)), ValueError, "gamma must have shape"),
        ("ln bwd nan d_out", lambda: layer_norm_backward(xp.ones_like(nan_x), nan_x), ValueError, "d_out contains NaN"),
        ("gelu approximate", lambda: gelu(x, approximate="exact"), ValueError, "approximate must be 'none' or 'tanh', got 'exact'"),
        ("gelu approximate None", lambda: gelu(x, approximate=None), ValueError, "approximate must be"),
        ("gelu bwd approximate", lambda: gelu_backward(x, x, approximate="erf"), ValueError, "approximate must be"),
        ("gelu int", lambda: gelu(ints), TypeError, "x must have a real floating dtype"),
        ("gelu nan", lambda: gelu(nan_x), ValueError, "x contains NaN or Inf"),
        ("gelu bwd d_out", lambda: gelu_backward(x, A(3, 8)), ValueError, "d_out must have x's shape"),
        ("gelu bwd dtype", lambda: gelu_backward(x, f32(x)), TypeError, ("must share one dtype", "d_out is", "float32")),
        ("gelu mixed", lambda: gelu_backward(x, other.asarray(np.ones((2, 3, 8)))), TypeError, "d_out is a"),
        ("ffn params type", lambda: feed_forward(x, (1, 2, 3, 4)), TypeError, "params must be an FFNParams, got tuple"),
        ("ffn w1", lambda: feed_forward(x, with_(w1=A(7, 16))), ValueError, "w1 must have shape (D, F) with D = x.shape[-1] = 8, got (7, 16)"),
        ("ffn w1 rank", lambda: feed_forward(x, with_(w1=A(8))), ValueError, "w1 must have shape (D, F)"),
        ("ffn b1", lambda: feed_forward(x, with_(b1=A(8))), ValueError, "b1 must have shape (F,) with F = w1.shape[1] = 16, got (8,)"),
        ("ffn w2", lambda: feed_forward(x, with_(w2=A(8, 16))), ValueError, "w2 must have shape (F, D) = (16, 8)"),
        ("ffn b2", lambda: feed_forward(x, with_(b2=A(16))), ValueError, "b2 must have shape (D,) with D = x.shape[-1] = 8, got (16,)"),
        ("ffn int x", lambda: feed_forward(ints, good), TypeError, "x must have a real floating dtype"),
        ("ffn dtype", lambda: feed_forward(x, with_(w2=f32(good.w2))), TypeError, ("must share one dtype", "w2 is", "float32")),
        ("ffn nan", lambda: feed_forward(x, with_(b2=from_numpy(xp, np.full(8, np.nan)))), ValueError, "b2 contains NaN"),
        ("ffn mixed", lambda: feed_forward(x, with_(w1=other.asarray(np.ones((8, 16))))), TypeError, "w1 is a"),
        ("ffn approximate", lambda: feed_forward(x, good, approximate="fast"), ValueError, "approximate must be"),
        ("ffn bwd d_out", lambda: feed_forward_backward(x, good, A(2, 3, 16)), ValueError, "d_out must have the output's shape (..., D) = (2, 3, 8), got shape (2, 3, 16)"),
        ("ffn bwd approximate", lambda: feed_forward_backward(x, good, x, approximate="Tanh"), ValueError, "approximate must be"),
        ("init d_model", lambda: init_ffn_params(0, 4), ValueError, "d_model must be a positive integer"),
        ("init d_ff", lambda: init_ffn_params(4, 2.5), ValueError, "d_ff must be a positive integer"),
        ("init dtype", lambda: init_ffn_params(4, 4, dtype="int32"), TypeError, "dtype must be a real floating dtype"),
        ("init xp", lambda: init_ffn_params(4, 4, xp="tensorflow"), ValueError, "xp must be one of"),
    ]


def test_bad_input_errors_name_the_argument(xp):
    problems = []
    for label, call, exc, text in _bad_cases(xp):
        try:
            call()
        except Exception as e:  # noqa: BLE001 - the type is checked just below
            texts = (text,) if isinstance(text, str) else text
            if type(e) is not exc or not all(t in str(e) for t in texts):
                problems.append(f"{label}: expected {exc.__name__} containing {text!r}, got {type(e).__name__}: {e}")
        else:
            problems.append(f"{label}: no error raised")
    assert not problems, "\n".join(problems)


def test_check_finite_false_lets_nan_through(xp):
    nan_x = from_numpy(xp, np.array([[1.0, np.nan, 2.0], [1.0, 2.0, 4.0]]))
    y = to_numpy(layer_norm(nan_x, check_finite=False))
    assert np.all(np.isnan(y[0])) and np.all(np.isfinite(y[1]))
    g = to_numpy(gelu(nan_x, check_finite=False))
    assert np.isnan(g[0, 1]) and np.isfinite(g[1]).all()
    p = init_ffn_params(3, 4, xp=xp)
    out = to_numpy(feed_forward(nan_x, p, check_finite=False))
    assert np.all(np.isnan(out[0])) and np.all(np.isfinite(out[1]))
    dx, _ = feed_forward_backward(nan_x, p, xp.ones_like(nan_x), check_finite=False)
    assert np.all(np.isfinite(to_numpy(dx)[1]))


# ============================================================================= numerics.reference


def test_agrees_with_numerics_reference_when_present():
    """Cross-check against the package's complex-step mpmath reference (a second, independent
    high-precision implementation), on NumPy only: the per-backend checks are above."""
    reference = pytest.importorskip("numerics.reference")
    for name in ("layer_norm", "gelu", "feed_forward", "gradients", "to_float64"):
        if not hasattr(reference, name):
            pytest.skip(f"numerics.reference has no {name} yet")
    x, gamma, beta, d_out = ln_case()
    y = layer_norm(x, gamma, beta)
    assert relative_error(y, reference.to_float64(reference.layer_norm(x, gamma, beta))) < TOL64
    ref_g = reference.gradients(reference.layer_norm, {"x": x, "gamma": gamma, "beta": beta}, d_out)
    for ours, name in zip(layer_norm_backward(x, d_out, gamma), ("x", "gamma", "beta")):
        assert relative_error(ours, ref_g[name]) < TOL64, name

    g = np.linspace(-6, 6, 49)
    for approximate in ("none", "tanh"):
        ref = reference.to_float64(reference.gelu(g, approximate=approximate))
        assert relative_error(gelu(g, approximate=approximate), ref) < TOL64

    xf, params, df = ffn_case(True)
    p = FFNParams(**params)

    def ffn(x, w1, b1, w2, b2):
        return reference.feed_forward(x, FFNParams(w1, b1, w2, b2))

    ref_y = reference.to_float64(reference.feed_forward(xf, p))
    assert relative_error(feed_forward(xf, p), ref_y) < TOL64
    ref_g = reference.gradients(ffn, {"x": xf, **params}, df)
    dx, grads = feed_forward_backward(xf, p, df)
    assert relative_error(dx, ref_g["x"]) < TOL64
    for name in ("w1", "b1", "w2", "b2"):
        assert relative_error(getattr(grads, name), ref_g[name]) < TOL64, name
