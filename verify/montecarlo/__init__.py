"""Streaming Monte Carlo with honest confidence intervals, on NumPy or CuPy.

The pieces, one job each:

``engine``        :func:`run_mc`: blocks seeded from ``numpy.random.SeedSequence``, threads,
                  stopping rules, Ctrl-C; bit-identical whatever the chunk size and workers.
``cluster``       Blocks as tasks on a ``concurrent.futures`` executor or a Dask cluster
                  (``run_mc(..., executor=)``), merged in block order: the same bits.
``stats``         Welford/Chan/Pébay accumulators and the intervals (t, fourth-moment delta
                  method, batch means, Clopper-Pearson, order statistics).
``results``       :class:`Estimate` and :class:`MCResult` (``to_dict``, ``summary``).
``verdict``       The rule: "theta = theta0" is REFUTED when theta0 is outside the 1 - alpha
                  interval, SUPPORTED when inside and the interval lies within the equivalence
                  margin theta0 (1 +- 0.05), INCONCLUSIVE otherwise (with the reason and the
                  samples that would settle it); Bonferroni; ordering comparisons.
``distributions`` Standardised component laws (normal, uniform, Rademacher, Student t5).
``samplers``      The experiments' samplers, written against the array API.
``theory``        Closed forms the experiments are checked against.
``experiments``   The d_k sweeps (variance, scaled, projected, saturation).
``plots``         PNG plots of the sweeps.

Example
-------
>>> from verify.montecarlo import DotSampler, run_mc, check_equal
>>> r = run_mc(DotSampler(64), 10**5, seed=0)
>>> check_equal(r, 64.0).verdict
'SUPPORTED'

Measured coverage of the nominal 95% variance interval (fourth-moment method, 1000 seeds each,
n = 1024 and 8192): normal, uniform, Rademacher at d_k in {1, 4, 64}: 94.2-96.9% (Rademacher at
d_k = 1, where (q·k)^2 = 1 exactly, is conservative: 100%, thanks to the exact floor
``Var(s^2) >= 2 s^4 / (n (n - 1))``). Student t5 components, whose product q·k has an infinite
8th moment, under-cover at small d_k: 88-89% at d_k = 1, 92-94% at d_k = 4, 95% at d_k = 64;
batch means do no better there (87-93%). In the tail, where the verdicts live, the excess grows
as alpha shrinks (benchmarks/bench_calibration.py, the README's calibration section), so a
variance interval of such heavy tails is given only where ``stats.tail_limit`` vouches for it,
and the verdict is INCONCLUSIVE, with the reason and the samples needed, everywhere else.
"""

from .distributions import DISTRIBUTIONS, Distribution, get_distribution
from .engine import BlockInfo, FunctionSampler, Sampler, default_block_size, run_mc
from .results import Estimate, MCResult, Output
from .samplers import DotSampler, ProjectedSampler, SaturationSampler, softmax_row_stats
from .stats import Count, Histogram, Moments
from .verdict import (
    DEFAULT_ALPHA,
    DEFAULT_MARGIN,
    INCONCLUSIVE,
    REFUTED,
    SUPPORTED,
    Check,
    Comparison,
    bonferroni,
    check_equal,
    compare,
)

__all__ = [
    "run_mc",
    "Sampler",
    "FunctionSampler",
    "BlockInfo",
    "default_block_size",
    "Output",
    "Estimate",
    "MCResult",
    "Moments",
    "Count",
    "Histogram",
    "Check",
    "Comparison",
    "check_equal",
    "compare",
    "bonferroni",
    "SUPPORTED",
    "REFUTED",
    "INCONCLUSIVE",
    "DEFAULT_ALPHA",
    "DEFAULT_MARGIN",
    "Distribution",
    "DISTRIBUTIONS",
    "get_distribution",
    "DotSampler",
    "ProjectedSampler",
    "SaturationSampler",
    "softmax_row_stats",
]
