"""Sampler outputs are checked by kind (issue 7, item 8), naming the sampler and the output."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verify.montecarlo import FunctionSampler, Output, run_mc

KINDS = {
    "moments": Output("x"),
    "fraction": Output("x > 0", kind="fraction"),
    "quantile": Output("x", kind="quantile", quantiles=(0.5,), edges=tuple(np.linspace(-5, 5, 101))),
}


def sampler(make, kind="moments", name="bad"):
    return FunctionSampler(make, outputs={"x": KINDS[kind]}, name=name)


def run(s, samples=200):
    return run_mc(s, samples, seed=1, block_size=100, workers=1)


def test_fraction_needs_booleans_not_floats_with_nan():
    # before: NaN != 0 counted as True, silently
    floats = sampler(lambda xp, rng, n: xp.where(rng.random(n) < 0.5, 1.0, np.nan), "fraction")
    with pytest.raises(TypeError, match=r"sampler 'bad' output 'x' \(kind 'fraction'\) must be a boolean array, "
                                        r"got dtype float64"):
        run(floats)
    ints = sampler(lambda xp, rng, n: xp.astype(rng.random(n) < 0.5, xp.int64), "fraction")
    with pytest.raises(TypeError, match="must be a boolean array, got dtype int64"):
        run(ints)
    good = run(sampler(lambda xp, rng, n: rng.random(n) < 0.25, "fraction"))
    assert 0.15 < good.fraction("x").estimate < 0.35


@pytest.mark.parametrize("kind", ["moments", "quantile"])
def test_complex_values_are_refused_not_truncated(kind):
    s = sampler(lambda xp, rng, n: rng.standard_normal(n) + 1j * rng.standard_normal(n), kind)
    with pytest.raises(TypeError, match=rf"output 'x' \(kind '{kind}'\) must hold real numbers .*got dtype complex128"):
        run(s)


@pytest.mark.parametrize("kind", ["moments", "quantile"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(kind, bad):
    def make(xp, rng, n):
        v = rng.standard_normal(n)
        v[3] = bad
        return v

    with pytest.raises(ValueError, match=rf"sampler 'bad' output 'x' \(kind '{kind}'\) must be finite, got 1 NaN "
                                         r"or infinite value in a block of 100"):
        run(sampler(make, kind))


def test_booleans_are_not_moments():
    with pytest.raises(TypeError, match=r"\(kind 'moments'\) must hold real numbers .*got dtype bool"):
        run(sampler(lambda xp, rng, n: rng.random(n) < 0.5))


def test_integers_are_real_numbers():
    r = run(sampler(lambda xp, rng, n: rng.integers(0, 10, size=n)), samples=10_000)
    assert r.mean("x").contains(4.5) and r.accumulators["x"].minimum == 0 and r.accumulators["x"].maximum == 9


@pytest.mark.parametrize("value,match", [
    (lambda n: [0.0] * n, r"must be an array of shape \(n,\), got list"),
    (lambda n: 1.5, r"must be an array of shape \(n,\), got float"),
    (lambda n: np.float64(1.5), r"must be an array of shape \(n,\), got float64"),
    (lambda n: np.zeros((n, 1)), r"must have shape \(100,\), got \(100, 1\)"),
    (lambda n: np.zeros(n + 1), r"must have shape \(100,\), got \(101,\)"),
])
def test_not_a_one_d_array_of_the_block_length(value, match):
    with pytest.raises((TypeError, ValueError), match=match):
        run(sampler(lambda xp, rng, n: value(n)))


def test_array_api_strict_output_is_converted():
    xps = pytest.importorskip("array_api_strict")
    base = sampler(lambda xp, rng, n: rng.standard_normal(n))
    strict = sampler(lambda xp, rng, n: xps.asarray(rng.standard_normal(n)))
    assert run(strict).accumulators == run(base).accumulators
    flags = run(sampler(lambda xp, rng, n: xps.asarray(rng.random(n) < 0.5), "fraction"))
    assert flags.accumulators["x"] == run(sampler(lambda xp, rng, n: rng.random(n) < 0.5, "fraction")).accumulators["x"]


def test_torch_output_is_converted_or_refused_by_name():
    torch = pytest.importorskip("torch")
    base = run(sampler(lambda xp, rng, n: rng.standard_normal(n)))
    conv = run(sampler(lambda xp, rng, n: torch.from_numpy(rng.standard_normal(n))))
    assert conv.accumulators == base.accumulators  # before: an internal AttributeError
    grad = sampler(lambda xp, rng, n: torch.from_numpy(rng.standard_normal(n)).requires_grad_())
    with pytest.raises(TypeError, match=r"sampler 'bad' output 'x' is a torch.Tensor that cannot be converted .*DLPack"):
        run(grad)


DTYPES = ["bool", "int8", "uint8", "int64", "float32", "float64", "complex64", "complex128"]


@settings(max_examples=50, deadline=None)
@given(kind=st.sampled_from(sorted(KINDS)), dtype=st.sampled_from(DTYPES),
       shape=st.sampled_from(["n", "n+1", "n,1", "scalar"]), poison=st.sampled_from([None, "nan", "inf"]))
def test_outputs_are_accepted_exactly_when_the_rule_allows(kind, dtype, shape, poison):
    def make(xp, rng, n):
        size = {"n": (n,), "n+1": (n + 1,), "n,1": (n, 1), "scalar": ()}[shape]
        v = (rng.standard_normal(size) * 3).astype(dtype) if dtype != "bool" else rng.random(size) < 0.5
        if poison and np.issubdtype(v.dtype, np.inexact) and v.ndim:
            v.flat[0] = np.nan if poison == "nan" else np.inf
        return v

    is_float = dtype.startswith("float")
    ok_dtype = dtype == "bool" if kind == "fraction" else dtype not in ("bool", "complex64", "complex128")
    ok = shape == "n" and ok_dtype and not (poison and is_float and kind != "fraction")
    try:
        r = run(sampler(make, kind))
    except (TypeError, ValueError) as exc:
        assert not ok, exc
        assert "sampler 'bad' output 'x'" in str(exc)
    else:
        assert ok
        assert r.samples == 200
