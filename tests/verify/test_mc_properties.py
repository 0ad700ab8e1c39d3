"""Property tests (issue 7, item 4) for the Monte Carlo statistics: empty inputs, and extreme but
finite magnitudes in the Welford/Chan/Pébay merges and the intervals. An interval is finite, or
NaN with "undefined" and the reason in its method; a run refuses what float64 cannot hold."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import array_api_compat.numpy as xp
from verify.montecarlo import DotSampler, Estimate, FunctionSampler, check_equal, run_mc
from verify.montecarlo import stats as S
from verify.montecarlo.experiments import saturation_sweep, variance_sweep

TINY = np.finfo(np.float64).tiny


def data(n, scale, shift, seed):
    return np.random.default_rng(seed).standard_normal(n) * scale + shift


@settings(max_examples=50, deadline=None)
@given(n=st.one_of(st.integers(4, 300), st.integers(S.MIN_VARIANCE_SAMPLES, 3000)), cut=st.floats(0.05, 0.95), e=st.integers(-70, 70), shift=st.integers(-70, 6),
       seed=st.integers(0, 2**32 - 1))
def test_chan_merge_equals_one_pass_at_any_representable_magnitude(n, cut, e, shift, seed):
    # a mean up to 1e6 spreads away (further, float64 cannot even hold the values' differences)
    x = data(n, 10.0**e, 10.0**(e + shift), seed)
    k = max(1, min(n - 1, int(cut * n)))
    whole = S.moments_of(xp, x)
    merged = S.moments_of(xp, x[:k]).merge(S.moments_of(xp, x[k:]))
    assert merged.n == whole.n and merged.minimum == whole.minimum and merged.maximum == whole.maximum
    assert merged.mean == pytest.approx(whole.mean, rel=1e-9, abs=10.0**e * 1e-9)
    assert merged.variance == pytest.approx(whole.variance, rel=1e-6)
    lo, hi, method = S.variance_interval(merged, 1e-6)
    if n < S.MIN_VARIANCE_SAMPLES:  # too few for the delta method: undefined, and it says why
        assert math.isnan(lo) and math.isnan(hi) and "undefined below" in method
    else:
        assert math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= merged.variance <= hi, method
    mlo, mhi, _ = S.mean_interval(merged, 1e-6)
    assert mlo <= merged.mean <= mhi


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 50), e=st.integers(-320, 308), seed=st.integers(0, 2**32 - 1))
def test_intervals_are_finite_or_undefined_with_a_reason_never_a_silent_nan(n, e, seed):
    x = data(n, 10.0**e, 0.0, seed)
    m = S.moments_of(xp, x) if np.all(np.isfinite(x)) else S.Moments()
    for lo, hi, method in (S.mean_interval(m, 1e-6), S.variance_interval(m, 1e-6)):
        if math.isnan(lo) or math.isnan(hi):
            assert math.isnan(lo) and math.isnan(hi) and "undefined" in method
        else:
            assert lo <= hi and math.isfinite(lo) and math.isfinite(hi)
    vlo = S.variance_interval(m, 1e-6)[0]
    assert math.isnan(vlo) or vlo >= 0
    # a verdict on such an interval is always a verdict with a reason
    lo, hi, method = S.variance_interval(m, 1e-6)
    c = check_equal(Estimate("Var(x)", "variance", m.variance, lo, hi, 1e-6, method, n, 0), 1.0)
    assert c.verdict in ("SUPPORTED", "REFUTED", "INCONCLUSIVE") and c.reason


@settings(max_examples=40, deadline=None)
@given(e=st.integers(-200, 200), seed=st.integers(0, 1000))
def test_a_run_at_any_scale_gives_an_honest_verdict_or_asks_to_rescale(e, seed):
    scale = 10.0**e
    s = FunctionSampler(lambda xp_, rng, n: rng.standard_normal(n) * scale, name="scaled")
    try:
        r = run_mc(s, 4000, seed=seed, block_size=500, workers=1)
    except ValueError as exc:
        assert "rescale it" in str(exc) and "sampler 'scaled' output 'x'" in str(exc)
        assert not 1e-76 < scale < 1e76  # only outside float64's fourth-moment range
        return
    var = r.variance()
    assert math.isfinite(var.low) and math.isfinite(var.high) and 0 <= var.low
    # the truth (Var = scale^2) is never refuted at alpha = 1e-6 (a wrong REFUTED would be a bug)
    assert check_equal(r, scale * scale, margin=0.5).verdict != "REFUTED", var
    assert check_equal(r, 0.0, statistic="mean", abs_margin=scale).verdict != "REFUTED"


def test_merging_blocks_whose_means_overflow_is_refused_by_name():
    def far_apart(xp_, rng, n):
        return rng.standard_normal(n) + (1e80 if rng.random() < 0.5 else -1e80)

    with pytest.raises(ValueError, match=r"sampler 'far' output 'x'.*(overflows|rescale)"):
        run_mc(FunctionSampler(far_apart, name="far"), 64 * 40, seed=1, block_size=64, workers=1)


# --------------------------------------------------------------------------- empty inputs

@pytest.mark.parametrize("call,match", [
    (lambda: run_mc(DotSampler(4), 0, seed=1), "samples must be an integer >= 2, got 0"),
    (lambda: run_mc(DotSampler(4), 1, seed=1), "samples must be an integer >= 2, got 1"),
    (lambda: DotSampler(0), "d_k must be an integer >= 1, got 0"),
    (lambda: variance_sweep([]), "d_k must name at least one key width, got an empty sequence"),
    (lambda: saturation_sweep([], samples=10), "d_k must name at least one key width"),
    (lambda: run_mc(FunctionSampler(lambda xp_, rng, n: rng.standard_normal(n), outputs={}), 10), "declares no outputs"),
])
def test_empty_inputs_are_refused_by_name(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_empty_accumulators_give_undefined_intervals_and_inconclusive_verdicts():
    empty = S.moments_of(xp, np.zeros(0))
    assert empty == S.Moments() and empty.merge(S.moments_of(xp, np.ones(3))).n == 3
    assert S.count_of(xp, np.zeros(0, dtype=bool)) == S.Count(0, 0)
    assert S.histogram_of(xp, np.zeros(0), [0.0, 1.0]).n == 0
    for lo, hi, method in (S.mean_interval(empty, 0.05), S.variance_interval(empty, 0.05),
                           S.fraction_interval(S.Count(), 0.05)):
        assert math.isnan(lo) and math.isnan(hi)
        c = check_equal(Estimate("x", "mean", math.nan, lo, hi, 0.05, method, 0, 0), 1.0)
        assert c.verdict == "INCONCLUSIVE" and "undefined" in c.reason
    assert math.isnan(S.quantile_estimate(S.Histogram((0.0, 1.0)), 0.5, 0.05)[1])
