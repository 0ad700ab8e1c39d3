"""Does the interval cover as often as it says, and does the verdict rule refute false claims?"""

import numpy as np
import pytest
from scipy import stats

from verify.montecarlo import DotSampler, check_equal, run_mc
from verify.montecarlo.experiments import variance_sweep

SEEDS = 1000  # the binomial sd of a 95% coverage over 1000 seeds is 0.7%: 93-97% is +-2.9 sd


def coverage(sampler, truth, samples, method, block_size):
    hits = 0
    for seed in range(SEEDS):
        r = run_mc(sampler, samples, seed=seed, workers=1, block_size=block_size, variance_method=method)
        hits += r.variance(alpha=0.05).contains(truth)
    return hits / SEEDS


@pytest.mark.parametrize("dist,d_k", [("normal", 4), ("uniform", 16)])
def test_fourth_moment_interval_covers_95_percent(dist, d_k):
    # truth: Var(q·k) = d_k for standardised components (independent of this code: Vaswani et al.)
    c = coverage(DotSampler(d_k, dist), float(d_k), 1024, "fourth-moment", 1024)
    assert 0.93 <= c <= 0.97, c


def test_batch_means_interval_covers_95_percent():
    c = coverage(DotSampler(4), 4.0, 1024, "batch-means", 32)
    assert 0.93 <= c <= 0.97, c


def test_verdict_rule_supports_the_truth_and_refutes_a_false_value():
    r = run_mc(DotSampler(16), 100_000, seed=12, workers=2)
    true = check_equal(r, 16.0)
    false = check_equal(r, 17.0)
    assert true.verdict == "SUPPORTED" and true.alpha == 1e-6
    assert false.verdict == "REFUTED"
    assert not false.estimate.contains(17.0)
    assert "REFUTED" in false.summary() and "outside" in false.summary()
    # the interval at 1e-6 is wider than at 0.05, and both contain the estimate
    wide, narrow = r.variance(alpha=1e-6), r.variance(alpha=0.05)
    assert wide.low < narrow.low < narrow.estimate < narrow.high < wide.high


def test_the_rule_refutes_var_equals_dk_outside_its_assumptions():
    # mean_q = 1, std_k = 2: Var(q·k) = d_k (1*4 + 1*4 + 0) = 8 d_k, not d_k
    r = run_mc(DotSampler(8, mean_q=1.0, std_k=2.0), 50_000, seed=3, workers=2)
    assert check_equal(r, 8.0).verdict == "REFUTED"
    assert check_equal(r, 64.0).verdict == "SUPPORTED"


def test_bonferroni_widens_each_interval():
    r = run_mc(DotSampler(4), 20_000, seed=1, workers=1)
    single = check_equal(r, 4.0, alpha=1e-3, tests=1)
    family = check_equal(r, 4.0, alpha=1e-3, tests=50)
    assert family.alpha == pytest.approx(1e-3 / 50)
    assert family.estimate.low < single.estimate.low and family.estimate.high > single.estimate.high
    z1, z50 = stats.norm.isf(1e-3 / 2), stats.norm.isf(1e-3 / 100)
    ratio = np.log(family.estimate.high / family.estimate.estimate) / np.log(single.estimate.high / single.estimate.estimate)
    assert ratio == pytest.approx(z50 / z1, rel=1e-9)


def test_a_sweep_uses_the_family_error_rate():
    sweep = variance_sweep([1, 4, 16], samples=5000, seed=2, alpha=1e-4, workers=1)
    assert sweep.tests == 6
    assert all(c.alpha == pytest.approx(1e-4 / 6) for c in sweep.checks)
    assert all(p.result.alpha == pytest.approx(1e-4 / 6) for p in sweep.points)
