"""The samplers and accumulators use only the array API standard: run them on array_api_strict
(no GPU here, this is the best evidence that the CuPy path computes the same thing)."""

import numpy as np
import pytest

from verify.montecarlo import DotSampler, ProjectedSampler, SaturationSampler
from verify.montecarlo import stats as S

xps = pytest.importorskip("array_api_strict")


class StrictRNG:
    """NumPy's generator, handing out array_api_strict arrays (the methods CuPy's Generator has too)."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def _wrap(self, a):
        return xps.asarray(np.ascontiguousarray(a))

    def standard_normal(self, size):
        return self._wrap(self.rng.standard_normal(size))

    def random(self, size):
        return self._wrap(self.rng.random(size))

    def integers(self, low, high, size, dtype):
        return self._wrap(self.rng.integers(low, high, size=size, dtype=np.int8))

    def standard_gamma(self, shape, size):
        return self._wrap(self.rng.standard_gamma(shape, size))


def numpy_twin(sampler, n, seed):
    """The same draws on NumPy (same generator calls in the same order)."""
    import array_api_compat.numpy as xnp

    return sampler(xnp, np.random.default_rng(seed), n)


@pytest.mark.parametrize("sampler", [
    DotSampler(8, "t5", mean_q=0.5, std_k=2.0),
    DotSampler(4, "rademacher", scaled=True),
    DotSampler(4, "uniform"),
    ProjectedSampler(4, d_model=3, same_token=True),
    ProjectedSampler(4, d_model=3, weights="fixed", weight_seed=1),
    SaturationSampler(16, n_keys=5),
], ids=["dot-t5", "dot-rademacher", "dot-uniform", "projected-fresh", "projected-fixed", "saturation"])
def test_sampler_runs_on_array_api_strict_and_matches_numpy(sampler):
    n = 300
    strict = sampler(xps, StrictRNG(3), n)
    ref = numpy_twin(sampler, n, 3)
    for key, spec in sampler.outputs.items():
        v = strict[key]
        assert type(v).__module__.startswith("array_api_strict") and v.shape == (n,)
        host = np.from_dlpack(v) if v.dtype != xps.bool else np.from_dlpack(xps.astype(v, xps.int8)).astype(bool)
        np.testing.assert_allclose(host, ref[key], rtol=1e-12, atol=1e-300)
        if spec.kind == "moments":
            m = S.moments_of(xps, v)
            assert m.variance == pytest.approx(np.var(ref[key], ddof=1), rel=1e-10)
        else:
            assert S.count_of(xps, v).k == int(np.sum(ref[key]))


def test_histogram_on_array_api_strict():
    v = np.random.default_rng(0).standard_normal(1000)
    edges = np.linspace(-3, 3, 61)
    assert S.histogram_of(xps, xps.asarray(v), edges).counts == S.histogram_of(np, v, edges).counts
