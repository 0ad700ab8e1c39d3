"""The streaming engine: reproducibility, stopping rules, interruption, memory, argument errors."""

import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from verify.montecarlo import engine as E
from verify.montecarlo import (
    DotSampler,
    FunctionSampler,
    Output,
    ProjectedSampler,
    SaturationSampler,
    check_equal,
    run_mc,
)


def fingerprint(result):
    """Every number of a result, as exact bit patterns."""
    acc = {k: v.to_dict() for k, v in result.accumulators.items()}
    blocks = {k: [b.to_dict() for b in v] for k, v in result.block_moments.items()}
    return json.dumps({"acc": acc, "blocks": blocks, "n": result.samples}, sort_keys=True, default=float.hex)


@pytest.mark.parametrize("sampler", [
    DotSampler(16, "t5"),
    SaturationSampler(8, n_keys=5),
    ProjectedSampler(8, d_model=12, weights="fixed", weight_seed=3),  # BLAS matmul
    ProjectedSampler(4, d_model=3, same_token=True),
], ids=["dot", "saturation", "projected-fixed", "projected-fresh"])
def test_same_seed_same_bits_whatever_chunks_and_workers(sampler):
    runs = [
        run_mc(sampler, 20_000, seed=7, block_size=512, chunk_size=c, workers=w)
        for c, w in [(512, 1), (512, 2), (1536, 2), (5000, 3), (20_000, 4), (1, 3)]
    ]
    ref = fingerprint(runs[0])
    for r in runs[1:]:
        assert fingerprint(r) == ref
        assert r.variance("dot" if "dot" in r.outputs else "entropy_raw").estimate == \
            runs[0].variance("dot" if "dot" in r.outputs else "entropy_raw").estimate
    other = run_mc(sampler, 20_000, seed=8, block_size=512, workers=2)
    assert fingerprint(other) != ref


def test_default_block_size_depends_only_on_the_sampler():
    s = DotSampler(64)
    a = run_mc(s, 30_000, seed=1, workers=1)
    b = run_mc(s, 30_000, seed=1, workers=2, chunk_size=50_000)
    assert a.block_size == b.block_size == E.default_block_size(128)
    assert fingerprint(a) == fingerprint(b)


def test_a_shorter_run_is_a_prefix_of_a_longer_one():
    s = DotSampler(4)
    short = run_mc(s, 4 * 256, seed=3, block_size=256, workers=1)
    long = run_mc(s, 10 * 256, seed=3, block_size=256, workers=2)
    assert short.block_moments["dot"] == long.block_moments["dot"][:4]


def test_seed_is_logged_and_reproduces():
    s = DotSampler(2)
    r = run_mc(s, 1000, workers=1)  # fresh entropy
    assert isinstance(r.seed, int) and r.seed > 0
    again = run_mc(s, 1000, seed=r.seed, workers=1)
    assert fingerprint(again) == fingerprint(r)
    keyed = run_mc(s, 1000, seed=np.random.SeedSequence(11, spawn_key=(4, 2)), workers=1)
    assert keyed.seed == 11 and keyed.spawn_key == (4, 2)
    assert keyed.mean().spawn_key == (4, 2)
    assert fingerprint(keyed) != fingerprint(run_mc(s, 1000, seed=11, workers=1))


def raising_after(blocks_ok):
    calls = {"n": 0}

    def sampler(xp, rng, n):
        calls["n"] += 1
        if calls["n"] > blocks_ok:
            raise KeyboardInterrupt
        return rng.standard_normal(n)

    return FunctionSampler(sampler, name="interruptible")


@pytest.mark.parametrize("workers", [1, 2])
def test_keyboard_interrupt_in_sampler_returns_partial_result(workers):
    r = run_mc(raising_after(5), 100 * 64, seed=1, block_size=64, workers=workers)
    assert r.incomplete and r.stop_reason == "interrupted"
    assert 0 < r.samples < 100 * 64 and r.samples == 64 * r.blocks
    assert r.mean().incomplete and "INCOMPLETE" in r.mean().summary()
    full = run_mc(FunctionSampler(lambda xp, rng, n: rng.standard_normal(n)), 100 * 64, seed=1, block_size=64, workers=1)
    assert r.block_moments["x"] == full.block_moments["x"][: r.blocks]  # the partial run is the exact prefix


def test_keyboard_interrupt_from_callback():
    def callback(info):
        assert info.samples == (info.block + 1) * 100
        if info.block == 2:
            raise KeyboardInterrupt

    for workers in (1, 2):
        r = run_mc(DotSampler(3), 10_000, seed=1, block_size=100, workers=workers, callback=callback)
        assert r.incomplete and r.samples == 300 and r.blocks == 3


@pytest.mark.parametrize("workers", [1, 2])
def test_stop_event_ends_the_run_after_the_block_being_merged(workers):
    import threading

    stop = threading.Event()

    def callback(info):
        if info.block == 2:
            stop.set()

    r = run_mc(DotSampler(3), 10_000, seed=1, block_size=100, workers=workers, callback=callback, stop=stop)
    assert r.incomplete and r.stop_reason == "interrupted" and r.samples == 300 and r.blocks == 3
    full = run_mc(DotSampler(3), 10_000, seed=1, block_size=100, workers=1, stop=threading.Event())
    assert not full.incomplete and full.samples == 10_000  # an event never set changes nothing
    assert r.block_moments == {k: v[:3] for k, v in full.block_moments.items()}  # the exact prefix


def test_a_sweep_whose_stop_is_set_starts_no_new_point():
    import threading

    from verify.montecarlo.experiments import variance_sweep

    stop = threading.Event()
    stop.set()
    sweep = variance_sweep((1, 2), samples=2000, seed=1, workers=1, stop=stop, progress=False)
    assert sweep.incomplete and sweep.points == ()
    sweep = variance_sweep((1, 2), samples=2000, seed=1, workers=1, stop=threading.Event(), progress=False)
    assert not sweep.incomplete and [p.result.samples for p in sweep.points] == [2000, 2000]


def test_relative_error_stop_is_reproducible():
    s = DotSampler(8)
    runs = [run_mc(s, 10**7, seed=2, rel_error=0.02, alpha=1e-3, block_size=1000, workers=w, chunk_size=c)
            for w, c in [(1, 1000), (2, 1000), (2, 7000)]]
    r = runs[0]
    assert r.stop_reason == "rel_error" and not r.incomplete
    assert r.samples < 10**7
    assert r.variance().relative_half_width <= 0.02
    shorter = run_mc(s, r.samples - 1000, seed=2, alpha=1e-3, block_size=1000, workers=1)
    assert shorter.variance().relative_half_width > 0.02  # it stopped at the first block that met the target
    assert all(fingerprint(x) == fingerprint(r) for x in runs[1:])


def test_quantile_and_fraction_outputs():
    def sampler(xp, rng, n):
        z = rng.standard_normal(n)
        return {"z": z, "z_moments": z, "positive": z > 0}

    fs = FunctionSampler(sampler, outputs={
        "z": Output("z", kind="quantile", quantiles=(0.5, 0.975), edges=tuple(np.linspace(-6, 6, 4801))),
        "z_moments": Output("z"),
        "positive": Output("z > 0", kind="fraction"),
    })
    r = run_mc(fs, 200_000, seed=4, workers=2)
    # the median of N(0, 1) is 0: no relative scale, so an absolute margin (5% of the sd)
    assert check_equal(r, 0.0, output="z", statistic="quantile", abs_margin=0.05).verdict == "SUPPORTED"
    assert check_equal(r, 0.05, output="z", statistic="quantile", abs_margin=0.05).verdict == "REFUTED"
    with pytest.raises(ValueError, match="theta0 = 0.0 has no relative margin: pass abs_margin="):
        check_equal(r, 0.0, output="z", statistic="quantile")
    q975 = r.quantile("z", 0.975)
    assert q975.low <= 1.959964 <= q975.high
    assert check_equal(r, 0.5, output="positive", statistic="fraction").verdict == "SUPPORTED"
    assert check_equal(r, 0.52, output="positive", statistic="fraction").verdict == "REFUTED"
    assert len(r.estimates()) == 2 + 2 + 1
    json.dumps(r.to_dict(), allow_nan=False)


def test_peak_memory_is_bounded_by_blocks_not_samples():
    s = DotSampler(64)

    def peak(samples):
        tracemalloc.start()
        run_mc(s, samples, seed=1, workers=2)
        _, p = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return p

    small, large = peak(50_000), peak(500_000)
    naive_bytes = 500_000 * 64 * 8 * 2
    assert large < 64 * 2**20, large  # far below the naive 512 MB
    assert large < 2 * small + 2**20  # grows with the workers' blocks, not with the budget
    assert large < naive_bytes / 10


def test_numpy_runs_never_import_cupy():
    code = (
        "import sys; from verify.montecarlo import run_mc, DotSampler;"
        "run_mc(DotSampler(4), 1000, seed=1, workers=2);"
        "from verify.montecarlo.experiments import saturation_sweep; saturation_sweep([1, 2], samples=100, seed=1);"
        "print('cupy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_progress_bar_on_request(monkeypatch, capsys):
    monkeypatch.setattr(E, "PROGRESS_AFTER_S", 0.0)
    r = run_mc(DotSampler(4), 20_000, seed=1, block_size=1000, workers=2, progress=True, rel_error=1e-9)
    assert r.samples == 20_000 and r.stop_reason == "budget"


@pytest.mark.parametrize("kwargs,match", [
    ({"samples": 1}, "samples must be an integer >= 2, got 1"),
    ({"samples": 2.5}, "samples must be an integer, got 2.5"),
    ({"alpha": 0.0}, r"alpha must lie in \(0, 1\), got 0.0"),
    ({"alpha": 1.5}, r"alpha must lie in \(0, 1\), got 1.5"),
    ({"rel_error": -0.1}, r"rel_error must lie in \(0, inf\), got -0.1"),
    ({"backend": "torch"}, "backend must be one of 'numpy', 'cupy', got 'torch'"),
    ({"block_size": 0}, "block_size must be an integer >= 1, got 0"),
    ({"workers": 0}, "workers must be an integer >= 1, got 0"),
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ({"variance_method": "jackknife"}, "variance_method must be one of"),
    ({"bit_generator": "MT19937"}, "bit_generator must be one of"),
    ({"target": ("nope", "variance")}, "target output must be one of"),
    ({"target": ("dot", "fraction"), "rel_error": 0.1}, "target statistic for output 'dot'"),
])
def test_bad_arguments_name_argument_expected_and_given(kwargs, match):
    kw = {"samples": 1000, "seed": 1}
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        run_mc(DotSampler(4), **kw)


def test_bad_sampler_parameters():
    with pytest.raises(ValueError, match="d_k must be an integer >= 1, got 0"):
        DotSampler(0)
    with pytest.raises(ValueError, match="dist must be one of 'normal', 'uniform', 'rademacher', 't5', got 'cauchy'"):
        DotSampler(4, "cauchy")
    with pytest.raises(ValueError, match="weight_seed is required"):
        ProjectedSampler(4, weights="fixed")
    with pytest.raises(ValueError, match="n_keys must be an integer >= 2, got 1"):
        SaturationSampler(4, n_keys=1)


def test_sampler_output_shape_is_checked():
    bad = FunctionSampler(lambda xp, rng, n: rng.standard_normal((n, 2)), name="bad")
    with pytest.raises(ValueError, match=r"output 'x' must have shape \(100,\), got \(100, 2\)"):
        run_mc(bad, 100, seed=1, workers=1)
    missing = FunctionSampler(lambda xp, rng, n: {"y": rng.standard_normal(n)}, name="missing")
    with pytest.raises(ValueError, match=r"did not return outputs \['x'\]"):
        run_mc(missing, 100, seed=1, workers=2)


def test_worker_exceptions_propagate():
    def boom(xp, rng, n):
        raise RuntimeError("sampler failed")

    with pytest.raises(RuntimeError, match="sampler failed"):
        run_mc(boom, 10_000, seed=1, block_size=100, workers=2)
