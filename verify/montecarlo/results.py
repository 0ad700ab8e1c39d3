"""Result dataclasses: one :class:`Estimate` per statistic, one :class:`MCResult` per run.

Both are small, immutable, JSON-ready (``to_dict``) and summarise themselves in one line
(``summary``), so that a claim can carry them as evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from .stats import (
    Count,
    Histogram,
    Moments,
    fraction_interval,
    mean_interval,
    quantile_estimate,
    variance_interval,
)

__all__ = ["Estimate", "MCResult", "Output", "format_number"]


def format_number(x: float, digits: int = 5) -> str:
    """Compact number formatting used by every summary line."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}g}"


def _level(alpha: float) -> str:
    pct = 100.0 * (1.0 - alpha)
    return f"{pct:.10g}%"


def _jsonable(x: Any) -> Any:
    """Floats stay floats (NaN and inf become strings, which JSON lacks); tuples become lists."""
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if hasattr(x, "to_dict"):
        return x.to_dict()
    return x


@dataclass(frozen=True)
class Output:
    """What a sampler returns under one name, and how the engine summarises it.

    Parameters
    ----------
    label : str
        Human name of the sampled quantity, e.g. ``"q·k"``.
    kind : {"moments", "fraction", "quantile"}
        ``"moments"``: mean and variance (float values); ``"fraction"``: share of True
        (boolean values); ``"quantile"``: the ``quantiles`` of the values, from a histogram
        over ``edges``.
    quantiles : tuple of float
        Probabilities in (0, 1) for ``kind="quantile"``.
    edges : tuple of float
        Increasing histogram bin edges for ``kind="quantile"``.
    finite_moments : float
        Moments of the quantity of order below this are finite (default ``math.inf``: all of
        them). The variance interval gives no verdict where heavy tails keep it from holding its
        error rate (:func:`verify.montecarlo.stats.tail_limit`).
    """

    label: str
    kind: str = "moments"
    quantiles: tuple[float, ...] = ()
    edges: tuple[float, ...] = ()
    finite_moments: float = math.inf

    def __post_init__(self):
        if self.kind not in ("moments", "fraction", "quantile"):
            raise ValueError(f"Output kind must be 'moments', 'fraction' or 'quantile', got {self.kind!r}")
        if self.kind == "quantile":
            if not self.quantiles or any(not 0.0 < q < 1.0 for q in self.quantiles):
                raise ValueError(f"Output quantiles must be probabilities in (0, 1), got {self.quantiles!r}")
            if len(self.edges) < 2 or any(b <= a for a, b in zip(self.edges, self.edges[1:])):
                raise ValueError(f"Output edges must be at least 2 increasing numbers, got {self.edges!r}")
        if not (isinstance(self.finite_moments, (int, float)) and self.finite_moments > 0):
            raise ValueError(f"Output finite_moments must be a number > 0 (math.inf: all moments finite), "
                             f"got {self.finite_moments!r}")


@dataclass(frozen=True)
class Estimate:
    """One estimated statistic with its confidence interval.

    Attributes
    ----------
    quantity : str
        What was estimated, e.g. ``"Var(q·k)"``.
    statistic : str
        ``"mean"``, ``"variance"``, ``"fraction"`` or ``"quantile(p)"``.
    estimate : float
    low, high : float
        The ``1 - alpha`` confidence interval.
    alpha : float
        Error rate of the interval.
    method : str
        How the interval was built.
    samples : int
    seed : int
        Root entropy of the ``numpy.random.SeedSequence``.
    spawn_key : tuple of int
        Spawn key of the run under that entropy (blocks add their index to it).
    seconds : float
        Wall time of the run.
    incomplete : bool
        True when the run was interrupted before its budget or target.
    """

    quantity: str
    statistic: str
    estimate: float
    low: float
    high: float
    alpha: float
    method: str
    samples: int
    seed: int
    spawn_key: tuple[int, ...] = ()
    seconds: float = 0.0
    incomplete: bool = False

    @property
    def interval(self) -> tuple[float, float]:
        return (self.low, self.high)

    @property
    def confidence_level(self) -> float:
        return 1.0 - self.alpha

    @property
    def half_width(self) -> float:
        return 0.5 * (self.high - self.low)

    @property
    def relative_half_width(self) -> float:
        """Half-width over ``|estimate|`` (inf for a zero estimate)."""
        return self.half_width / abs(self.estimate) if self.estimate else math.inf

    def contains(self, value: float) -> bool:
        """Whether ``low <= value <= high`` (False for NaN bounds)."""
        return bool(self.low <= value <= self.high)

    def to_dict(self) -> dict:
        return _jsonable({
            "quantity": self.quantity, "statistic": self.statistic, "estimate": self.estimate,
            "interval": [self.low, self.high], "alpha": self.alpha, "confidence_level": self.confidence_level,
            "method": self.method, "samples": self.samples, "seed": self.seed,
            "spawn_key": list(self.spawn_key), "seconds": self.seconds, "incomplete": self.incomplete,
        })

    def summary(self) -> str:
        key = f" key={list(self.spawn_key)}" if self.spawn_key else ""
        flag = " INCOMPLETE" if self.incomplete else ""
        return (
            f"{self.quantity} = {format_number(self.estimate)} "
            f"[{format_number(self.low)}, {format_number(self.high)}] "
            f"({_level(self.alpha)} CI, {self.method}; n={self.samples:,}, seed={self.seed}{key}, "
            f"{self.seconds:.3g} s){flag}"
        )

    def __str__(self) -> str:
        return self.summary()


@dataclass(frozen=True)
class MCResult:
    """Everything a streaming Monte Carlo run accumulated, and its estimates on demand.

    Attributes
    ----------
    name : str
        The sampler's name.
    params : dict
        The sampler's parameters (d_k, distribution ...).
    outputs : dict of str to Output
    accumulators : dict of str to Moments, Count or Histogram
        Merged over all blocks, in block order.
    block_moments : dict of str to tuple of Moments
        Per-block moments of each ``"moments"`` output (for batch means), in block order; each
        entry spans ``block_span`` consecutive blocks (the last possibly fewer).
    block_span : int
        Blocks per entry of ``block_moments``: 1 until a run passes ``engine.MAX_KEPT_BLOCKS``
        blocks, then doubled each time that many entries are kept (memory stays bounded).
    samples : int
    seed, spawn_key :
        The ``SeedSequence`` entropy and spawn key; block ``b`` uses
        ``SeedSequence(seed, spawn_key=spawn_key + (b,))``.
    block_size : int
        Samples per block: part of the stream's definition (with the seed and the sampler).
    blocks : int
    bit_generator : str
    backend : str
    workers, chunk_size : int
        Scheduling only: they do not change any number in the result (with an executor:
        its threads, and the largest task in samples).
    alpha : float
        Default error rate of the intervals.
    variance_method : str
        Default variance interval method.
    batches : int
        Number of batches for the batch-means method.
    seconds : float
    incomplete : bool
        True when interrupted (Ctrl-C): the result holds the blocks finished in order.
    stop_reason : str
        ``"budget"``, ``"rel_error"``, ``"time_limit"`` or ``"interrupted"``.
    target : tuple (output name, statistic) or None
        What the relative-error stopping rule watched.
    executor : str or None
        Where the blocks ran when not on this process's threads, e.g.
        ``"dask tcp://127.0.0.1:8786 (2 workers, 2 threads)"``; scheduling only.
    """

    name: str
    params: dict
    outputs: dict
    accumulators: dict
    block_moments: dict
    samples: int
    seed: int
    spawn_key: tuple[int, ...]
    block_size: int
    blocks: int
    bit_generator: str
    backend: str
    workers: int
    chunk_size: int
    alpha: float
    variance_method: str
    batches: int
    seconds: float
    incomplete: bool = False
    stop_reason: str = "budget"
    target: tuple[str, str] | None = None
    rel_error: float | None = None
    block_span: int = 1
    executor: str | None = None

    # ------------------------------------------------------------------ estimates
    def _acc(self, name: str, kind: str):
        if name not in self.accumulators:
            raise KeyError(f"no output named {name!r}; outputs are {sorted(self.accumulators)}")
        out = self.outputs[name]
        if out.kind != kind:
            raise ValueError(f"output {name!r} is of kind {out.kind!r}, not {kind!r}")
        return self.accumulators[name]

    def _est(self, quantity, statistic, value, lo, hi, alpha, method) -> Estimate:
        return Estimate(
            quantity, statistic, float(value), float(lo), float(hi), float(alpha), method,
            self.samples, self.seed, tuple(self.spawn_key), self.seconds, self.incomplete,
        )

    def mean(self, name: str | None = None, alpha: float | None = None) -> Estimate:
        """Mean of a ``"moments"`` output with its t interval."""
        name = name or self._first("moments")
        alpha = self.alpha if alpha is None else alpha
        m: Moments = self._acc(name, "moments")
        lo, hi, method = mean_interval(m, alpha)
        return self._est(f"E[{self.outputs[name].label}]", "mean", m.mean, lo, hi, alpha, method)

    def variance(self, name: str | None = None, alpha: float | None = None, method: str | None = None) -> Estimate:
        """Variance of a ``"moments"`` output with the ``method`` interval (default: the run's)."""
        name = name or self._first("moments")
        alpha = self.alpha if alpha is None else alpha
        method = method or self.variance_method
        m: Moments = self._acc(name, "moments")
        lo, hi, desc = variance_interval(m, alpha, method, blocks=self.block_moments.get(name), batches=self.batches,
                                         finite_moments=self.outputs[name].finite_moments)
        return self._est(f"Var({self.outputs[name].label})", "variance", m.variance, lo, hi, alpha, desc)

    def fraction(self, name: str | None = None, alpha: float | None = None) -> Estimate:
        """Share of True of a ``"fraction"`` output with its Clopper-Pearson interval."""
        name = name or self._first("fraction")
        alpha = self.alpha if alpha is None else alpha
        c: Count = self._acc(name, "fraction")
        lo, hi, method = fraction_interval(c, alpha)
        return self._est(f"P({self.outputs[name].label})", "fraction", c.fraction, lo, hi, alpha, method)

    def quantile(self, name: str | None = None, q: float | None = None, alpha: float | None = None) -> Estimate:
        """The ``q`` quantile of a ``"quantile"`` output (default: its first listed ``q``)."""
        name = name or self._first("quantile")
        out = self.outputs[name]
        if out.kind != "quantile":
            raise ValueError(f"output {name!r} is of kind {out.kind!r}, not 'quantile'")
        q = out.quantiles[0] if q is None else q
        alpha = self.alpha if alpha is None else alpha
        h: Histogram = self.accumulators[name]
        est, lo, hi, method = quantile_estimate(h, q, alpha)
        return self._est(f"Q_{q:g}({out.label})", f"quantile({q:g})", est, lo, hi, alpha, method)

    def estimate(self, name: str, statistic: str, alpha: float | None = None) -> Estimate:
        """``statistic`` in {"mean", "variance", "fraction", "quantile"} of output ``name``."""
        if statistic == "mean":
            return self.mean(name, alpha)
        if statistic == "variance":
            return self.variance(name, alpha)
        if statistic == "fraction":
            return self.fraction(name, alpha)
        if statistic.startswith("quantile"):
            return self.quantile(name, alpha=alpha)
        raise ValueError(f"statistic must be 'mean', 'variance', 'fraction' or 'quantile', got {statistic!r}")

    def estimates(self, alpha: float | None = None) -> list[Estimate]:
        """The default estimates of every output: mean and variance, fraction, or quantiles."""
        out = []
        for name, spec in self.outputs.items():
            if spec.kind == "moments":
                out += [self.mean(name, alpha), self.variance(name, alpha)]
            elif spec.kind == "fraction":
                out.append(self.fraction(name, alpha))
            else:
                out += [self.quantile(name, q, alpha) for q in spec.quantiles]
        return out

    def _first(self, kind: str) -> str:
        for name, spec in self.outputs.items():
            if spec.kind == kind:
                return name
        raise ValueError(f"the sampler {self.name!r} has no output of kind {kind!r}")

    # ------------------------------------------------------------------ reporting
    def to_dict(self, *, include_blocks: bool = False) -> dict:
        """JSON-ready dict: the run's definition, its accumulators and its default estimates."""
        d = {
            "name": self.name, "params": self.params, "samples": self.samples, "seed": self.seed,
            "spawn_key": list(self.spawn_key), "block_size": self.block_size, "blocks": self.blocks,
            "bit_generator": self.bit_generator, "backend": self.backend, "workers": self.workers,
            "chunk_size": self.chunk_size, "alpha": self.alpha, "variance_method": self.variance_method,
            "batches": self.batches, "seconds": self.seconds, "incomplete": self.incomplete,
            "stop_reason": self.stop_reason, "target": list(self.target) if self.target else None,
            "rel_error": self.rel_error, "block_span": self.block_span,
            "executor": self.executor,
            "outputs": {k: {"label": v.label, "kind": v.kind, "finite_moments": v.finite_moments}
                        for k, v in self.outputs.items()},
            "accumulators": {k: v.to_dict() for k, v in self.accumulators.items()},
            "estimates": [e.to_dict() for e in self.estimates()],
        }
        if include_blocks:
            d["block_moments"] = {k: [m.to_dict() for m in v] for k, v in self.block_moments.items()}
        return _jsonable(d)

    def summary(self) -> str:
        """One line: the target (or first) estimate, the run's size, seed and stop reason."""
        if self.target is not None:
            est = self.estimate(*self.target)
        else:
            est = self.estimates()[0]
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({params}): {est.summary()} [stop: {self.stop_reason}]"

    def __str__(self) -> str:
        return self.summary()
