"""Accumulators and intervals of verify.montecarlo.stats, against direct NumPy/SciPy computations."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from verify.montecarlo import stats as S

xp = np  # NumPy's own namespace is enough for the accumulators


def direct_moments(v):
    v = np.asarray(v, dtype=np.float64)
    d = v - v.mean()
    return v.size, v.mean(), np.sum(d**2), np.sum(d**3), np.sum(d**4)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=200),
    st.lists(st.integers(1, 199), max_size=6),
)
def test_chan_merge_matches_one_pass_over_the_concatenation(values, cuts):
    v = np.asarray(values)
    cuts = sorted({c for c in cuts if c < len(v)})
    parts = np.split(v, cuts)
    merged = S.merge_all([S.moments_of(xp, p) for p in parts if p.size])
    n, mean, m2, m3, m4 = direct_moments(v)
    scale = max(1.0, float(np.max(np.abs(v - v.mean()))))
    assert merged.n == n
    assert merged.mean == pytest.approx(mean, rel=1e-12, abs=1e-12 * scale)
    assert merged.m2 == pytest.approx(m2, rel=1e-9, abs=1e-9 * scale**2)
    assert merged.m3 == pytest.approx(m3, rel=1e-8, abs=1e-8 * scale**3 * n)
    assert merged.m4 == pytest.approx(m4, rel=1e-8, abs=1e-8 * scale**4)
    assert merged.minimum == v.min() and merged.maximum == v.max()


def test_moments_against_scipy_on_shifted_data():
    rng = np.random.default_rng(5)
    v = 1e6 + rng.standard_normal(100_000)  # large offset: a naive sum of squares would lose digits
    parts = np.array_split(v, 37)
    m = S.merge_all([S.moments_of(xp, p) for p in parts])
    assert m.variance == pytest.approx(np.var(v, ddof=1), rel=1e-10)
    assert m.fourth_central == pytest.approx(stats.moment(v, 4), rel=1e-8)
    assert m.kurtosis == pytest.approx(stats.kurtosis(v, fisher=False), rel=1e-8)


def test_mean_interval_is_scipy_t_interval():
    v = np.random.default_rng(1).exponential(size=500)
    m = S.moments_of(xp, v)
    lo, hi, method = S.mean_interval(m, 0.01)
    ref = stats.t.interval(0.99, v.size - 1, loc=v.mean(), scale=stats.sem(v))
    assert (lo, hi) == pytest.approx(ref, rel=1e-12)
    assert method == "t"


def test_fraction_interval_is_clopper_pearson():
    for n, k in [(100, 0), (100, 3), (1000, 517), (50, 50)]:
        lo, hi, _ = S.fraction_interval(S.Count(n, k), 0.05)
        ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-9, abs=1e-12)


def test_count_of_boolean_and_integer_arrays():
    assert S.count_of(xp, np.array([True, False, True])) == S.Count(3, 2)
    assert S.count_of(xp, np.array([0.0, 1.0, 1.0, 1.0])) == S.Count(4, 3)


def test_fourth_moment_interval_formula():
    v = np.random.default_rng(2).standard_normal(4000) * 3.0
    m = S.moments_of(xp, v)
    n, s2 = v.size, np.var(v, ddof=1)
    var_s2 = (stats.moment(v, 4) - s2**2 * (n - 3) / (n - 1)) / n
    z = stats.norm.isf(0.025)
    lo, hi, method = S.variance_interval(m, 0.05, "fourth-moment")
    assert lo == pytest.approx(s2 * math.exp(-z * math.sqrt(var_s2) / s2), rel=1e-9)
    assert hi == pytest.approx(s2 * math.exp(z * math.sqrt(var_s2) / s2), rel=1e-9)
    assert "fourth-moment" in method


def test_fourth_moment_se_has_the_exact_floor():
    # (q·k)^2 = 1 exactly for Rademacher at d_k = 1: m4 = s^4 and the plug-in collapses.
    v = np.where(np.random.default_rng(3).random(1000) < 0.5, -1.0, 1.0)
    m = S.moments_of(xp, v)
    floor = math.sqrt(2 * m.variance**2 / (m.n * (m.n - 1)))
    assert S.fourth_moment_se(m) >= floor * (1 - 1e-12)


def test_batch_means_interval_from_blocks():
    rng = np.random.default_rng(4)
    blocks = [S.moments_of(xp, rng.standard_normal(100)) for _ in range(128)]
    total = S.merge_all(blocks)
    lo, hi, method = S.variance_interval(total, 0.05, "batch-means", blocks=blocks, batches=32)
    batch_vars = [S.merge_all(blocks[i:i + 4]).variance for i in range(0, 128, 4)]
    half = stats.t.isf(0.025, 31) * np.std(batch_vars, ddof=1) / math.sqrt(32)
    assert (lo, hi) == pytest.approx((total.variance - half, total.variance + half), rel=1e-12)
    assert "32 batches" in method and "clipped" not in method
    nan = S.variance_interval(total, 0.05, "batch-means", blocks=blocks[:1])
    assert math.isnan(nan[0])


@pytest.mark.parametrize("n_blocks,batches", [(2, 32), (29, 32), (128, 29)])
def test_batch_means_below_the_minimum_is_undefined_with_the_reason(n_blocks, batches):
    rng = np.random.default_rng(5)
    blocks = [S.moments_of(xp, rng.standard_normal(50)) for _ in range(n_blocks)]
    lo, hi, method = S.variance_interval(S.merge_all(blocks), 1e-6, "batch-means", blocks=blocks, batches=batches)
    assert math.isnan(lo) and math.isnan(hi)
    assert f"needs at least {S.MIN_BATCHES} batches" in method and f"got {min(n_blocks, batches)}" in method
    ok = [S.moments_of(xp, rng.standard_normal(50)) for _ in range(S.MIN_BATCHES)]
    assert math.isfinite(S.variance_interval(S.merge_all(ok), 1e-6, "batch-means", blocks=ok, batches=S.MIN_BATCHES)[0])


def test_batch_means_lower_end_is_clipped_at_zero():
    # batch variances spread widely around a small total variance: the t interval would go below 0
    rng = np.random.default_rng(6)
    blocks = [S.moments_of(xp, rng.standard_normal(S.MIN_BATCH_SAMPLES) * (100.0 if i % 2 else 0.01)) for i in range(32)]
    total = S.merge_all(blocks)
    batch_vars = [b.variance for b in blocks]
    raw_low = total.variance - stats.t.isf(5e-7, 31) * np.std(batch_vars, ddof=1) / math.sqrt(32)
    assert raw_low < 0  # the unclipped interval would hold negative variances
    lo, hi, method = S.variance_interval(total, 1e-6, "batch-means", blocks=blocks, batches=32)
    assert lo == 0.0 and hi > total.variance and "lower end clipped at 0" in method
    with pytest.raises(ValueError, match="variance method must be one of"):
        S.variance_interval(total, 0.05, "bootstrap")


def test_histogram_quantile_and_interval():
    rng = np.random.default_rng(6)
    v = rng.standard_normal(200_000)
    edges = np.linspace(-5, 5, 2001)
    h = S.merge_all([S.histogram_of(xp, p, edges) for p in np.array_split(v, 7)])
    assert h.n == v.size
    assert h.counts == S.histogram_of(xp, v, edges).counts  # integer counts merge exactly
    for q in (0.1, 0.5, 0.9):
        est, lo, hi, _ = S.quantile_estimate(h, q, 1e-6)
        assert abs(est - np.quantile(v, q)) <= 2 * (edges[1] - edges[0])
        assert lo <= stats.norm.ppf(q) <= hi  # the true quantile
        assert lo <= np.quantile(v, q) <= hi
    est, lo, hi, _ = S.quantile_estimate(h, 0.5, 1e-6)
    assert not lo <= 0.05 <= hi  # a false median is excluded


def test_histogram_rejects_different_edges():
    a = S.Histogram((0.0, 1.0))
    with pytest.raises(ValueError, match="different edges"):
        a.merge(S.Histogram((0.0, 2.0)))


# --------------------------------------------------------------------------- tails (issue 14)


def test_tail_limit_rule():
    # all moments finite: always vouched for; t5-like (finite below 5): only where n * alpha >= 10^4
    assert S.HEAVY_TAIL_MIN_N_ALPHA == 1e4
    assert S.tail_limit(10, 1e-9) == ""
    assert S.tail_limit(10**6, 1e-2, 5.0) == ""  # n * alpha = 10^4
    why = S.tail_limit(10**6 - 1, 1e-2, 5.0)
    assert "heavy tails" in why and "order 5" in why and "the rule gives one from 1,000,000 samples" in why
    assert "from 60,000,000,000 samples" in S.tail_limit(400_000, 1e-6 / 6, 5.0)
    assert S.tail_limit(10**12, 1e-6, 8.0) == ""  # a finite eighth moment is enough
    # Var(s^2) infinite (moments finite below 4 or less, e.g. a quadratic form of t5): never
    none = S.tail_limit(10**15, 0.5, 2.5)
    assert "Var(s^2) is infinite" in none and "whatever the samples" in none


def test_auto_is_the_fourth_moment_interval_where_the_tail_holds_and_says_so():
    m = S.moments_of(xp, np.random.default_rng(7).standard_normal(5000))
    fm = S.variance_interval(m, 1e-6, "fourth-moment")
    lo, hi, method = S.variance_interval(m, 1e-6, "auto")
    assert (lo, hi) == fm[:2]
    assert method.startswith("auto (all moments finite, sample kurtosis ") and method.endswith("-> " + fm[2])
    lo, hi, method = S.variance_interval(m, 1e-2, "auto", finite_moments=5.0)  # n * alpha = 50
    assert math.isnan(lo) and math.isnan(hi)
    assert method.startswith("auto (moments finite below order 5, sample kurtosis") and "heavy tails" in method


@pytest.mark.parametrize("method", ["fourth-moment", "batch-means"])
def test_every_method_gives_no_interval_where_the_tail_is_not_vouched_for(method):
    rng = np.random.default_rng(8)
    blocks = [S.moments_of(xp, rng.standard_normal(400)) for _ in range(32)]
    total = S.merge_all(blocks)
    ok = S.variance_interval(total, 1e-2, method, blocks=blocks)
    assert math.isfinite(ok[0]) and math.isfinite(ok[1])
    lo, hi, why = S.variance_interval(total, 1e-2, method, blocks=blocks, finite_moments=5.0)
    assert math.isnan(lo) and math.isnan(hi) and why.startswith(f"{method}: undefined: heavy tails")
    # where n * alpha reaches the rule's floor (12,800 * 0.9) the same data get their interval back
    assert S.variance_interval(total, 0.9, method, blocks=blocks, finite_moments=5.0)[:2] == \
        S.variance_interval(total, 0.9, method, blocks=blocks)[:2]
