"""The CuPy path (skipped without CuPy and a CUDA device)."""

import pytest

from tests.helpers import load_backend


@pytest.fixture(scope="module")
def cupy():
    return load_backend("cupy")


def test_cupy_dot_variance_and_reproducibility(cupy):
    from verify.montecarlo import DotSampler, SaturationSampler, check_equal, run_mc

    a = run_mc(DotSampler(64), 2_000_000, seed=1, backend="cupy")
    b = run_mc(DotSampler(64), 2_000_000, seed=1, backend="cupy", chunk_size=10**6)
    assert a.backend == "cupy" and a.workers == 1
    assert check_equal(a, 64.0).verdict == "SUPPORTED"
    assert check_equal(a, 66.0).verdict == "REFUTED"
    assert a.accumulators == b.accumulators
    s = run_mc(SaturationSampler(256, n_keys=8), 20_000, seed=1, backend="cupy")
    assert s.fraction("saturated_raw").estimate > s.fraction("saturated_scaled").estimate


def test_cupy_projected(cupy):
    from verify.montecarlo.experiments import projected_sweep

    # D = 2: Var = 2 d_k; at 2e5 samples the relative half-width is about 6%, so state a 25% margin
    # (the default 5% is INCONCLUSIVE here, as on NumPy)
    sweep = projected_sweep([4, 16], d_model=2, same_token=True, samples=200_000, seed=2, backend="cupy", margin=0.25)
    assert [c.verdict for c in sweep.checks if "exact" in c.claim] == ["SUPPORTED"] * 4
