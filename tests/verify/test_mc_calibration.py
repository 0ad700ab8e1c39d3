"""Does the interval cover as often as it says, and does the verdict rule refute false claims?"""

import numpy as np
import pytest
from scipy import stats

from verify.montecarlo import DotSampler, check_equal, run_mc
from verify.montecarlo.experiments import variance_sweep
from verify.montecarlo.stats import Count, fraction_interval, variance_interval

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


# --------------------------------------------------------------------------- tail calibration (issue 14)
# The verdicts' own interval ("auto") at alpha = 1e-2: over CAL_SEEDS runs the share that excludes
# the true Var(q·k) = d_k must be alpha, i.e. alpha must lie in the 95% Clopper-Pearson interval of
# the observed share (800 seeds: 8 exclusions expected; 3x under-coverage, 24, is far outside).
# The full table (alpha down to 1e-4, d_k up to 1024, n up to 10^6) is benchmarks/bench_calibration.py.
CAL_ALPHA, CAL_SEEDS = 1e-2, 800


def exclusions(sampler, truth, samples, plain=False, seeds=CAL_SEEDS):
    """(false exclusions, runs without an interval) over ``seeds`` seeds, at CAL_ALPHA.

    ``plain``: the normal-theory fourth-moment interval without the tail rule (what the verdicts
    used before issue 14) instead of the verdicts' own interval."""
    excluded = undefined = 0
    for seed in range(seeds):
        r = run_mc(sampler, samples, seed=seed, workers=1)
        if plain:
            lo, hi, _ = variance_interval(r.accumulators["dot"], CAL_ALPHA, "fourth-moment")
        else:
            e = r.variance(alpha=CAL_ALPHA, method="auto")
            lo, hi = e.low, e.high
        undefined += bool(np.isnan(lo))
        excluded += bool(not np.isnan(lo) and not lo <= truth <= hi)
    return excluded, undefined


def calibrated(excluded, seeds=CAL_SEEDS):
    """Whether CAL_ALPHA lies in the 95% Clopper-Pearson interval of the observed exclusion rate."""
    lo, hi, _ = fraction_interval(Count(seeds, excluded), 0.05)
    return lo <= CAL_ALPHA <= hi


@pytest.mark.parametrize("dist,d_k,samples", [
    ("normal", 1, 10_000),
    ("uniform", 4, 10_000),
    # heavy tails: the rule asks n * alpha >= 10^4 before it gives an interval, so 10^6 samples
    # (the slowest case here, about 0.1 s a seed: fewer seeds, 3 exclusions expected, 3x is seen)
    pytest.param("t5", 1, 1_000_000, marks=pytest.mark.slow, id="t5-1-1000000"),
])
def test_the_verdicts_interval_excludes_the_truth_at_its_stated_rate(dist, d_k, samples):
    seeds = 300 if samples > 100_000 else CAL_SEEDS
    excluded, undefined = exclusions(DotSampler(d_k, dist), float(d_k), samples, seeds=seeds)
    assert undefined == 0  # every run had an interval: the rate below is not bought by abstaining
    assert calibrated(excluded, seeds), (excluded, seeds)


def test_the_calibration_check_fails_for_an_interval_known_to_under_cover():
    # t5 at d_k = 1 with 10^4 samples: the plain normal-theory interval excludes the truth about
    # 3 times as often as it says (issue 14's table); the check must see it
    excluded, undefined = exclusions(DotSampler(1, "t5"), 1.0, 10_000, plain=True)
    assert undefined == 0 and excluded > 2 * CAL_ALPHA * CAL_SEEDS
    assert not calibrated(excluded), excluded
    # the verdicts' interval gives none there (n * alpha = 100 < 10^4): no false exclusion
    assert exclusions(DotSampler(1, "t5"), 1.0, 10_000) == (0, CAL_SEEDS)
