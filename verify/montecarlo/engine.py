"""The streaming Monte Carlo engine: blocks, seeds, workers, stopping rules.

How a run is defined
--------------------
A run is the sampler, the seed and the **block size**. The sample budget is cut into blocks of
``block_size`` samples (the last one possibly shorter); block ``b`` draws from its own generator,
seeded by ``SeedSequence(seed, spawn_key=spawn_key + (b,))``, and is summarised on its own
(mean, centred moment sums, counts, histograms). Block summaries are merged in block order with
Chan's formulas. Threads, chunk sizes and the order in which blocks finish therefore cannot change
a single bit of the result; the block size can, and is logged with the seed.

Memory is bounded by ``workers`` blocks in flight whatever the sample budget: the default block
holds about 2**19 random numbers (4 MiB in float64); the per-block moments kept for batch means
are at most ``MAX_KEPT_BLOCKS`` entries (adjacent entries merge pairwise, in block order, when
that many are kept); block starts are never listed. Before any work, a run whose blocks in flight
would need more than ``memory_limit`` (default ``MEMORY_LIMIT`` = 1 GiB, estimated as
``workers * block_size * elements_per_sample * 8`` bytes) is refused with a ValueError naming
``block_size``, ``workers`` or the sampler's size, and what would fit; with the default
``workers`` the worker count is lowered to fit instead. Budgets above ``MAX_SAMPLES`` (2**53) are
refused too: float64 counts are exact up to there, and even 10^8 samples/s would need 3 years.

Batch means: with ``variance_method="batch-means"`` and no ``block_size``, the default block is
shrunk (to a power of two) so that the budget makes at least ``batches`` blocks; a run that would
make fewer than ``MIN_BATCHES`` (30) blocks is refused up front.

Sampler outputs are checked block by block, by kind: a 1-D array of the block's length, of the
run's namespace (arrays of another array-API library, e.g. a CPU torch tensor on the NumPy
backend, are converted through DLPack; anything else is a TypeError); boolean for ``"fraction"``,
real (floating or integer, not complex, not bool) and finite for ``"moments"`` and
``"quantile"``. Errors name the sampler and the output.

Workers are threads: NumPy's generators and ufuncs release the GIL, so one Python process uses
every core. ``chunk_size`` is the number of samples a worker takes at once (a whole number of
blocks): it only changes scheduling and how often progress is drawn.

Scale-out: with ``executor=`` (a ``concurrent.futures.Executor`` or a ``distributed.Client``),
ranges of blocks go out as tasks that return only their blocks' accumulators, merged here in
block order: the same bits as the local engine (:mod:`verify.montecarlo.cluster`).

Stopping: at the budget (``samples``), or when the target interval's relative half-width
reaches ``rel_error`` (checked after every block, in block order, so that the stopping point is
reproducible too), or on Ctrl-C, which returns the blocks finished so far, in order, flagged
``incomplete=True``.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np

from ._checks import check_alpha, check_choice, check_int, check_positive_float
from .cluster import BlockTask, check_executor, describe_executor, executor_threads, run_on_executor
from .results import MCResult, Output
from .stats import (
    MIN_BATCH_SAMPLES,
    MIN_BATCHES,
    _to_host,
    VARIANCE_METHODS,
    Count,
    Histogram,
    Moments,
    count_of,
    fraction_interval,
    histogram_of,
    mean_interval,
    moments_of,
    variance_interval,
)

__all__ = [
    "Sampler",
    "FunctionSampler",
    "BlockInfo",
    "run_mc",
    "default_block_size",
    "array_namespace_for",
    "make_generator",
    "BACKENDS",
    "BIT_GENERATORS",
    "BLOCK_ELEMENTS",
    "MEMORY_LIMIT",
    "MAX_SAMPLES",
    "MAX_KEPT_BLOCKS",
    "memory_needed",
]

#: Backends a run can use; CuPy is imported only when named.
BACKENDS = ("numpy", "cupy")
#: NumPy bit generators a run can use (CuPy uses its own default generator).
BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64")
#: Random numbers per block the default block size aims at, per backend.
BLOCK_ELEMENTS = {"numpy": 2**19, "cupy": 2**25}
#: Largest default block, in samples.
MAX_BLOCK_SAMPLES = 2**16
#: Budget when only a relative-error target is given.
DEFAULT_MAX_SAMPLES = 10**9
#: Budget when neither samples nor a target is given.
DEFAULT_SAMPLES = 10**6
#: Seconds after which a progress bar appears (when stderr is a terminal).
PROGRESS_AFTER_S = 2.0
#: Default bound, in bytes, on the memory of the blocks in flight (``memory_limit`` of run_mc).
MEMORY_LIMIT = 2**30
#: Largest sample budget: float64 counts are exact up to 2**53 (and 10^8 samples/s would take 3 years).
MAX_SAMPLES = 2**53
_TINY = float(np.finfo(np.float64).tiny)
#: Most per-block moments kept per output for batch means (then adjacent entries merge pairwise).
MAX_KEPT_BLOCKS = 4096


@runtime_checkable
class Sampler(Protocol):
    """What the engine samples from.

    Attributes
    ----------
    name : str
    params : dict
        Parameters logged with the result.
    outputs : mapping of str to Output
        The named per-sample quantities the call returns, and how to summarise them.
    elements_per_sample : int
        Roughly how many float64 numbers one sample holds in memory; sizes the default block.

    ``sampler(xp, rng, n)`` draws ``n`` independent samples with the generator ``rng``
    (``numpy.random.Generator`` or ``cupy.random.Generator``) and returns a mapping from each
    output name to an array of shape (n,) in namespace ``xp``. It must use only ``rng`` for
    randomness and only array-API functions of ``xp`` for arithmetic, so that the same code runs
    on NumPy and CuPy.
    """

    name: str
    params: dict
    outputs: Mapping[str, Output]
    elements_per_sample: int

    def __call__(self, xp: Any, rng: Any, n: int) -> Mapping[str, Any]: ...


@dataclass
class FunctionSampler:
    """Wrap a plain function ``fn(xp, rng, n) -> array (n,) or mapping`` as a :class:`Sampler`.

    A bare array result is reported under the output name ``"x"``.
    """

    fn: Callable[..., Any]
    outputs: Mapping[str, Output] = field(default_factory=lambda: {"x": Output("x")})
    name: str = ""
    elements_per_sample: int = 1
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.name:
            self.name = getattr(self.fn, "__name__", "sampler")

    def __call__(self, xp, rng, n):
        out = self.fn(xp, rng, n)
        if isinstance(out, Mapping):
            return out
        if len(self.outputs) != 1:
            raise ValueError(f"sampler {self.name!r} returned one array but declares outputs {sorted(self.outputs)}")
        return {next(iter(self.outputs)): out}


@dataclass(frozen=True)
class BlockInfo:
    """Passed to ``callback`` after each block is merged (in block order)."""

    block: int
    blocks: int
    samples: int
    budget: int
    seconds: float
    relative_half_width: float | None


def array_namespace_for(backend: str) -> Any:
    """The array-API namespace of ``backend`` (``array_api_compat``'s wrapper of NumPy or CuPy)."""
    check_choice("backend", backend, BACKENDS)
    if backend == "numpy":
        import array_api_compat.numpy as xp
    else:
        try:
            import array_api_compat.cupy as xp
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise ValueError(f"backend 'cupy' needs CuPy and a CUDA device: {exc}") from None
    return xp


def make_generator(backend: str, seed_seq: np.random.SeedSequence, bit_generator: str = "PCG64") -> Any:
    """A generator for one block.

    NumPy: ``Generator(<bit_generator>(seed_seq))``. CuPy: ``cupy.random.default_rng`` seeded
    with a 64-bit integer drawn from ``seed_seq`` (CuPy cannot take a SeedSequence).
    """
    if backend == "numpy":
        return np.random.Generator(getattr(np.random, bit_generator)(seed_seq))
    import cupy

    return cupy.random.default_rng(int(seed_seq.generate_state(1, np.uint64)[0]))


def default_block_size(elements_per_sample: int, backend: str = "numpy") -> int:
    """Samples per block: ``BLOCK_ELEMENTS[backend] // elements_per_sample`` rounded down to a
    power of two, between 1 and ``MAX_BLOCK_SAMPLES`` (numpy)."""
    per = max(1, int(elements_per_sample))
    raw = max(1, BLOCK_ELEMENTS[backend] // per)
    size = 1 << (raw.bit_length() - 1)
    cap = MAX_BLOCK_SAMPLES if backend == "numpy" else MAX_BLOCK_SAMPLES * 64
    return max(1, min(size, cap))


def format_bytes(n: float) -> str:
    """``1.49 GiB``, ``4 MiB``, ``512 B``."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def memory_needed(elements_per_sample: int, block_size: int, in_flight: int = 1) -> int:
    """Bytes of ``in_flight`` blocks of ``block_size`` samples of ``elements_per_sample`` float64 numbers."""
    return 8 * max(1, int(elements_per_sample)) * int(block_size) * int(in_flight)


def _describe(sampler: Any) -> str:
    params = ", ".join(f"{k}={v}" for k, v in (getattr(sampler, "params", {}) or {}).items())
    return f"sampler {sampler.name!r}" + (f" ({params})" if params else "")


def _fit_memory(sampler: Any, block_size: int, block_given: bool, workers: int | None, n_blocks: int,
                limit: int) -> int | None:
    """Check the blocks in flight against ``limit``; the worker count that fits when ``workers`` is None."""
    per = max(1, int(sampler.elements_per_sample))
    one = memory_needed(per, 1)
    if one > limit:
        raise ValueError(
            f"{_describe(sampler)} holds about {per:,} float64 numbers per sample ({format_bytes(one)}), "
            f"over memory_limit={format_bytes(limit)}: even one sample cannot fit; make the sampler smaller "
            "or raise memory_limit"
        )
    block = memory_needed(per, block_size)
    if block > limit:
        what = f"block_size={block_size:,}" if block_given else f"the default block of {block_size:,} samples"
        raise ValueError(
            f"{what} needs about {format_bytes(block)} per block for {_describe(sampler)} "
            f"({per:,} float64 numbers per sample), over memory_limit={format_bytes(limit)}; "
            f"at most block_size={limit // one:,} fits"
        )
    fit = max(1, limit // block)
    if workers is None:
        return fit
    if min(workers, n_blocks) > fit:
        raise ValueError(
            f"workers={workers} blocks in flight need about {format_bytes(block * min(workers, n_blocks))} "
            f"({format_bytes(block)} per block of {block_size:,} samples for {_describe(sampler)}), over "
            f"memory_limit={format_bytes(limit)}; at most workers={fit} fits (or lower block_size)"
        )
    return workers


def _seed_parts(seed: Any) -> tuple[int, tuple[int, ...]]:
    if seed is None:
        ss = np.random.SeedSequence()
        return int(ss.entropy), ()
    if isinstance(seed, np.random.SeedSequence):
        if not isinstance(seed.entropy, (int, np.integer)):
            raise ValueError(f"seed must be a SeedSequence with an integer entropy, got entropy {seed.entropy!r}")
        return int(seed.entropy), tuple(int(k) for k in seed.spawn_key)
    value = check_int("seed", seed, minimum=0)
    return value, ()


def _as_namespace_array(xp: Any, v: Any, name: str, key: str) -> Any:
    """``v`` as an array of ``xp``: other array-API arrays go through DLPack, anything else is refused."""
    import array_api_compat

    if not array_api_compat.is_array_api_obj(v) or isinstance(v, (np.generic, bool, int, float, complex)):
        raise TypeError(f"sampler {name!r} output {key!r} must be an array of shape (n,), got {type(v).__name__}")
    if array_api_compat.array_namespace(v) is xp:
        return v
    try:
        return xp.from_dlpack(v)
    except Exception as exc:  # noqa: BLE001 - each library raises its own type (BufferError, RuntimeError ...)
        raise TypeError(
            f"sampler {name!r} output {key!r} is a {type(v).__module__}.{type(v).__name__} that cannot be "
            f"converted to the run's namespace {xp.__name__} through DLPack ({exc}); return arrays of the "
            "namespace the sampler is given"
        ) from None


def _check_output(xp: Any, spec: Output, v: Any, n: int, name: str, key: str) -> Any:
    """The output checked by kind (see the module docstring); returns it in namespace ``xp``."""
    v = _as_namespace_array(xp, v, name, key)
    shape = tuple(v.shape)
    if shape != (n,):
        raise ValueError(f"sampler {name!r} output {key!r} must have shape ({n},), got {shape}")
    dtype = v.dtype
    if spec.kind == "fraction":
        if not xp.isdtype(dtype, "bool"):
            raise TypeError(f"sampler {name!r} output {key!r} (kind 'fraction') must be a boolean array, got dtype {dtype}")
        return v
    if not (xp.isdtype(dtype, "real floating") or xp.isdtype(dtype, "integral")):
        raise TypeError(
            f"sampler {name!r} output {key!r} (kind {spec.kind!r}) must hold real numbers (a real floating or "
            f"integer dtype), got dtype {dtype}"
        )
    if xp.isdtype(dtype, "real floating"):
        bad = int(_to_host(xp.sum(xp.astype(xp.logical_not(xp.isfinite(v)), xp.int64))))
        if bad:
            raise ValueError(
                f"sampler {name!r} output {key!r} (kind {spec.kind!r}) must be finite, got {bad} NaN or infinite "
                f"value{'s' if bad > 1 else ''} in a block of {n}"
            )
    return v


def _summarise(xp: Any, outputs: Mapping[str, Output], values: Mapping[str, Any], n: int, name: str) -> dict:
    if not isinstance(values, Mapping):
        raise TypeError(f"sampler {name!r} must return a mapping of output name to array, got {type(values).__name__}")
    missing = [k for k in outputs if k not in values]
    if missing:
        raise ValueError(f"sampler {name!r} did not return outputs {missing}; it returned {sorted(values)}")
    stats = {}
    for key, spec in outputs.items():
        v = _check_output(xp, spec, values[key], n, name, key)
        if spec.kind == "moments":
            m = moments_of(xp, v)
            if not (math.isfinite(m.mean) and math.isfinite(m.m4)):
                raise ValueError(
                    f"sampler {name!r} output {key!r} overflows float64 moments "
                    f"(mean {m.mean}, fourth central sum {m.m4}): rescale it"
                )
            if m.maximum > m.minimum and m.m4 < m.n * _TINY:  # (x - mean)^4 underflowed (exactly, m4 > 0 here)
                raise ValueError(
                    f"sampler {name!r} output {key!r} varies too little for float64 fourth moments (fourth central "
                    f"sum {m.m4:.3g} over {m.n} values underflows; spreads below about 1e-77 do): rescale it"
                )
            stats[key] = m
        elif spec.kind == "fraction":
            stats[key] = count_of(xp, v)
        else:
            stats[key] = histogram_of(xp, v, spec.edges)
    return stats


@dataclass(frozen=True)
class _Kept:
    """Per-block moments of one output for batch means, in block order, in bounded memory.

    ``entries[:length]`` are complete entries of ``span`` consecutive blocks each (``entries`` is
    append-only and may be shared with the previous state, so that Ctrl-C between two merges
    leaves a consistent state); ``partial`` holds the ``filled`` blocks of the open entry. When
    ``cap`` (even) entries are complete, adjacent pairs merge and ``span`` doubles.
    """

    entries: list = field(default_factory=list)
    length: int = 0
    partial: Moments | None = None
    filled: int = 0
    span: int = 1

    def add(self, m: Moments, cap: int) -> "_Kept":
        partial = m if self.partial is None else self.partial.merge(m)
        if self.filled + 1 < self.span:
            return _Kept(self.entries, self.length, partial, self.filled + 1, self.span)
        entries = self.entries
        del entries[self.length:]  # only ever a tail left by an interrupted merge
        entries.append(partial)
        length, span = self.length + 1, self.span
        if length >= cap:
            entries = [entries[i].merge(entries[i + 1]) for i in range(0, length, 2)]
            length, span = len(entries), 2 * span
        return _Kept(entries, length, None, 0, span)

    def moments(self) -> tuple:
        return tuple(self.entries[: self.length]) + ((self.partial,) if self.partial is not None else ())


def _mean_of(m: Any) -> float:
    return getattr(m, "mean", math.nan)


def _empty(spec: Output):
    if spec.kind == "moments":
        return Moments()
    if spec.kind == "fraction":
        return Count()
    return Histogram(tuple(spec.edges))


def _relative_half_width(spec: Output, statistic: str, acc: Any, blocks: list, alpha: float,
                         variance_method: str, batches: int) -> float:
    if statistic == "mean":
        lo, hi, _ = mean_interval(acc, alpha)
        est = acc.mean
    elif statistic == "variance":
        lo, hi, _ = variance_interval(acc, alpha, variance_method, blocks=blocks, batches=batches)
        est = acc.variance
    else:
        lo, hi, _ = fraction_interval(acc, alpha)
        est = acc.fraction
    if not (math.isfinite(lo) and math.isfinite(hi)) or not est:
        return math.inf
    return 0.5 * (hi - lo) / abs(est)


class _Progress:
    """A rich progress bar on stderr that appears only after ``PROGRESS_AFTER_S`` seconds."""

    def __init__(self, enabled: bool | None, total: int, description: str):
        if enabled is None:
            enabled = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self.enabled, self.total, self.description = enabled, total, description
        self.bar = None
        self.task = None
        self.t0 = time.perf_counter()

    def update(self, done: int, note: str = "") -> None:
        if not self.enabled:
            return
        if self.bar is None:
            if time.perf_counter() - self.t0 < PROGRESS_AFTER_S:
                return
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TextColumn("{task.fields[note]}"),
                console=Console(stderr=True), transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=self.total, note="")
        self.bar.update(self.task, completed=done, note=note)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def run_mc(
    sampler: Sampler | Callable[..., Any],
    samples: int | None = None,
    *,
    seed: int | np.random.SeedSequence | None = None,
    alpha: float = 1e-6,
    rel_error: float | None = None,
    target: tuple[str, str] | None = None,
    variance_method: str = "auto",
    batches: int = 32,
    block_size: int | None = None,
    chunk_size: int | None = None,
    workers: int | None = None,
    backend: str = "numpy",
    bit_generator: str = "PCG64",
    progress: bool | None = None,
    callback: Callable[[BlockInfo], Any] | None = None,
    min_samples: int = 1000,
    description: str | None = None,
    memory_limit: int | None = None,
    stop: Any = None,
    executor: Any = None,
) -> MCResult:
    """Run a streaming Monte Carlo estimate.

    Parameters
    ----------
    sampler : Sampler or callable
        ``sampler(xp, rng, n)`` returning ``{name: array (n,)}`` (see :class:`Sampler`); a plain
        function returning one array (n,) is wrapped by :class:`FunctionSampler`.
    samples : int, optional
        Sample budget, 2 to ``MAX_SAMPLES`` (2**53). Default: ``DEFAULT_SAMPLES`` (10**6), or ``DEFAULT_MAX_SAMPLES``
        (10**9) when ``rel_error`` is given.
    seed : int, SeedSequence or None
        Root of every block's stream; None draws fresh entropy (logged in the result).
    alpha : float
        Error rate of the result's default intervals, in (0, 1).
    rel_error : float, optional
        Stop once the target interval's half-width is at most ``rel_error * |estimate|``.
    target : (output name, statistic), optional
        What ``rel_error`` watches; default: the sampler's ``target`` attribute, else the first
        output's variance (moments) or fraction.
    variance_method : {"auto", "fourth-moment", "batch-means"}
        How the variance interval is built (:func:`verify.montecarlo.stats.variance_interval`);
        ``"auto"`` (the default) picks the fourth-moment interval where the sampled quantity's
        finite moments let its tail be trusted, and no interval otherwise (the tail rule applies
        to every method).
    batches : int
        Batches for the batch-means interval (>= ``MIN_BATCHES`` = 30).
    block_size : int, optional
        Samples per block (default :func:`default_block_size`, shrunk for batch means so that the
        budget makes ``batches`` blocks); part of the stream's definition.
    chunk_size : int, optional
        Samples a worker takes at once, rounded up to whole blocks (default one block).
    workers : int, optional
        Threads (default: the usable CPU count; 1 for CuPy). 1 runs in the calling thread.
    backend : {"numpy", "cupy"}
    bit_generator : {"PCG64", "PCG64DXSM", "Philox", "SFC64"}
        NumPy bit generator (ignored by CuPy).
    progress : bool or None
        Progress bar on stderr after 2 s; None: only when stderr is a terminal.
    callback : callable, optional
        Called with a :class:`BlockInfo` after each block is merged (in order). Raising
        KeyboardInterrupt there stops the run like Ctrl-C.
    min_samples : int
        ``rel_error`` is not checked before this many samples.
    description : str, optional
        Label of the progress bar (default: the sampler's name).
    memory_limit : int, optional
        Bytes the blocks in flight may hold (default ``MEMORY_LIMIT``, 1 GiB); see the module
        docstring. Refused up front with a ValueError when they cannot fit.
    stop : threading.Event, optional
        Cancellation: once ``stop.is_set()``, the run ends after the block being merged (at least
        one block always is), with ``incomplete=True`` and ``stop_reason="interrupted"``, as a
        KeyboardInterrupt would end it. A command line sets it from its Ctrl-C handler.
    executor : concurrent.futures.Executor or distributed.Client, optional
        Run the blocks there instead of on this process's threads (then ``workers`` must be
        None): tasks of ``chunk_size`` samples (default: planned, about 256 per run, see
        :mod:`verify.montecarlo.cluster`) return their blocks' accumulators, merged here in block
        order, so the result has the same bits as without an executor. The sampler must be
        picklable (cloudpickle for Dask). ``stop`` and KeyboardInterrupt cancel the pending
        tasks and keep the blocks merged so far.

    Returns
    -------
    MCResult
    """
    if not isinstance(sampler, Sampler):
        if not callable(sampler):
            raise TypeError(f"sampler must be a Sampler or a callable, got {type(sampler).__name__}")
        sampler = FunctionSampler(sampler)
    outputs = dict(sampler.outputs)
    if not outputs:
        raise ValueError(f"sampler {sampler.name!r} declares no outputs")
    backend = check_choice("backend", backend, BACKENDS)
    bit_generator = check_choice("bit_generator", bit_generator, BIT_GENERATORS)
    alpha = check_alpha(alpha)
    rel_error = check_positive_float("rel_error", rel_error, allow_none=True)
    variance_method = check_choice("variance_method", variance_method, VARIANCE_METHODS)
    batches = check_int("batches", batches, minimum=MIN_BATCHES)
    min_samples = check_int("min_samples", min_samples, minimum=0)
    if samples is None:
        samples = DEFAULT_MAX_SAMPLES if rel_error is not None else DEFAULT_SAMPLES
    samples = check_int("samples", samples, minimum=2)
    if samples > MAX_SAMPLES:
        raise ValueError(
            f"samples must be at most {MAX_SAMPLES:,} (2**53: float64 counts are exact up to there, and at "
            f"10^8 samples/s that many take 3 years), got {samples:,}"
        )
    if variance_method == "batch-means" and samples < MIN_BATCHES * MIN_BATCH_SAMPLES:
        raise ValueError(
            f"variance_method='batch-means' needs samples >= {MIN_BATCHES * MIN_BATCH_SAMPLES:,} ({MIN_BATCHES} "
            f"batches of at least {MIN_BATCH_SAMPLES} samples), got samples={samples:,}; use more samples or "
            "variance_method='fourth-moment'"
        )
    block_given = block_size is not None
    if block_size is None:
        block_size = default_block_size(sampler.elements_per_sample, backend)
        if variance_method == "batch-means" and samples // batches < block_size:
            block_size = max(MIN_BATCH_SAMPLES, 1 << (max(1, samples // batches).bit_length() - 1))
    block_size = check_int("block_size", block_size, minimum=1)
    n_blocks = -(-samples // block_size)
    if variance_method == "batch-means" and n_blocks < MIN_BATCHES:
        raise ValueError(
            f"variance_method='batch-means' needs at least {MIN_BATCHES} blocks to form its batches, but "
            f"samples={samples:,} with block_size={block_size:,} makes {n_blocks}; use samples >= "
            f"{MIN_BATCHES * block_size:,}" + (f", block_size <= {samples // MIN_BATCHES:,}" if samples >= MIN_BATCHES else "")
            + " or variance_method='fourth-moment'"
        )
    chunk_given = chunk_size is not None
    chunk_size = check_int("chunk_size", chunk_size if chunk_given else block_size, minimum=1)
    if workers is not None:
        workers = check_int("workers", workers, minimum=1)
    if executor is not None:
        check_executor(executor)
        if workers is not None:
            raise ValueError(
                f"workers={workers} sets this process's threads, but executor= runs the blocks on its own "
                "workers: pass one or the other"
            )
    memory_limit = MEMORY_LIMIT if memory_limit is None else check_int("memory_limit", memory_limit, minimum=1)
    # with an executor each of its threads holds one block at a time, on its own machine
    fit = _fit_memory(sampler, block_size, block_given, 1 if executor is not None else workers, n_blocks,
                      memory_limit)
    if executor is not None:
        workers = executor_threads(executor)
    elif workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = min(1 if backend == "cupy" else cores, fit)
    entropy, spawn_key = _seed_parts(seed)

    if target is None:
        target = getattr(sampler, "target", None)
    if target is None:
        first, spec = next(iter(outputs.items()))
        target = (first, "variance" if spec.kind == "moments" else "fraction" if spec.kind == "fraction" else "quantile")
    t_name, t_stat = target
    if t_name not in outputs:
        raise ValueError(f"target output must be one of {sorted(outputs)}, got {t_name!r}")
    allowed = {"moments": ("mean", "variance"), "fraction": ("fraction",), "quantile": ()}[outputs[t_name].kind]
    if rel_error is not None and t_stat not in allowed:
        raise ValueError(
            f"target statistic for output {t_name!r} (kind {outputs[t_name].kind!r}) must be one of "
            f"{allowed or 'none (quantiles cannot be a stopping target)'}, got {t_stat!r}"
        )

    array_namespace_for(backend)  # CuPy missing: a clear error before any work
    chunk_blocks = max(1, -(-chunk_size // block_size))
    chunk_size = chunk_blocks * block_size

    task = BlockTask(sampler, outputs, backend, bit_generator, entropy, spawn_key, block_size, samples)
    block_n, compute_block = task.block_n, task.block

    cap = max(MAX_KEPT_BLOCKS, 2 * batches)
    cap += cap % 2
    # The merged state (totals, kept block moments, counts) is replaced by one assignment, so that
    # Ctrl-C arriving mid-merge leaves either the old or the new prefix, never a mix.
    kept0 = {k: _Kept() for k, spec in outputs.items() if spec.kind == "moments"}
    state = {"snap": ({k: _empty(spec) for k, spec in outputs.items()}, 0, 0, kept0), "stop": "budget",
             "incomplete": False, "rhw": None, "note": ""}
    t0 = time.perf_counter()
    bar = _Progress(progress, samples, description or sampler.name)

    def merge(b: int, stats: dict) -> bool:
        """Merge block ``b``; True when the run should stop after it."""
        totals, merged, done_samples, kept = state["snap"]
        new_totals = {k: totals[k].merge(st) for k, st in stats.items()}
        for k, acc in new_totals.items():
            if isinstance(acc, Moments) and not (math.isfinite(acc.m2) and math.isfinite(acc.m4)):
                raise ValueError(
                    f"sampler {sampler.name!r} output {k!r}: merging block {b} overflows float64 moments (block means "
                    f"{totals[k].mean:.3g} and {_mean_of(stats[k]):.3g} too far apart for their spread): rescale it"
                )
        new_kept = {k: kv.add(stats[k], cap) for k, kv in kept.items()}
        state["snap"] = (new_totals, b + 1, done_samples + block_n(b), new_kept)
        totals, merged, done_samples, kept = state["snap"]
        rhw = None
        done = False
        if rel_error is not None and done_samples >= min_samples:
            blocks = kept[t_name].moments() if t_name in kept and variance_method == "batch-means" else []
            rhw = _relative_half_width(outputs[t_name], t_stat, totals[t_name], blocks,
                                       alpha, variance_method, batches)
            if rhw <= rel_error:
                state["stop"] = "rel_error"
                done = True
        state["rhw"] = rhw
        state["note"] = note = f"rel. half-width {rhw:.3g} -> {rel_error:g}" if rhw is not None else ""
        if executor is None:  # with an executor the bar follows the tasks that complete
            bar.update(done_samples, note)
        if callback is not None:
            callback(BlockInfo(b, n_blocks, done_samples, samples, time.perf_counter() - t0, rhw))
        if not done and stop is not None and stop.is_set() and b + 1 < n_blocks:
            state["stop"], state["incomplete"] = "interrupted", True
            done = True
        return done

    def interrupted() -> bool:
        """Executor runs: end now, without waiting for the next task, once ``stop`` is set (and a block merged)."""
        merged = state["snap"][1]
        if stop is not None and stop.is_set() and 0 < merged < n_blocks:
            state["stop"], state["incomplete"] = "interrupted", True
            return True
        return False

    try:
        if executor is not None:
            chunk_size = block_size * max(1, run_on_executor(
                executor, task, merge, n_blocks=n_blocks,
                chunk_blocks=chunk_blocks if chunk_given else None, rel_error=rel_error,
                min_blocks=-(-min_samples // block_size), rhw=lambda: state["rhw"], interrupted=interrupted,
                progress=lambda computed: bar.update(computed, state["note"])))
        elif workers == 1:
            for b in range(n_blocks):
                if merge(b, compute_block(b)):
                    break
        else:
            _run_threaded(compute_block, merge, n_blocks, chunk_blocks, workers)
    except KeyboardInterrupt:
        state["stop"] = "interrupted"
        state["incomplete"] = True
    finally:
        bar.close()

    totals, merged, done_samples, kept = state["snap"]
    return MCResult(
        name=sampler.name,
        params=dict(getattr(sampler, "params", {}) or {}),
        outputs=outputs,
        accumulators=totals,
        block_moments={k: kv.moments() for k, kv in kept.items()},
        block_span=max([kv.span for kv in kept.values()], default=1),
        samples=done_samples,
        seed=entropy,
        spawn_key=spawn_key,
        block_size=block_size,
        blocks=merged,
        bit_generator=bit_generator if backend == "numpy" else "cupy default_rng (XORWOW)",
        backend=backend,
        workers=workers,
        chunk_size=chunk_size,
        alpha=alpha,
        variance_method=variance_method,
        batches=batches,
        seconds=time.perf_counter() - t0,
        incomplete=state["incomplete"],
        stop_reason=state["stop"],
        target=(t_name, t_stat),
        rel_error=rel_error,
        executor=None if executor is None else describe_executor(executor),
    )


def _run_threaded(compute_block, merge, n_blocks: int, chunk_blocks: int, workers: int) -> None:
    """Compute blocks on a thread pool, merging them strictly in block order.

    At most ``2 * workers`` chunks are in flight. KeyboardInterrupt (from the main thread or
    re-raised from a worker) propagates after the pool has been stopped.
    """
    stop = threading.Event()

    def task(start: int, end: int) -> list:
        out = []
        for b in range(start, end):
            if stop.is_set():
                break
            out.append((b, compute_block(b)))
        return out

    starts = range(0, n_blocks, chunk_blocks)  # lazy: never a list as long as the budget
    ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="attnverify-mc")
    pending: dict = {}
    finished: dict[int, dict] = {}
    next_task = 0
    next_merge = 0
    try:
        while next_merge < n_blocks:
            while len(pending) < 2 * workers and next_task < len(starts):
                s = starts[next_task]
                pending[ex.submit(task, s, min(s + chunk_blocks, n_blocks))] = s
                next_task += 1
            done, _ = wait(list(pending), timeout=0.2, return_when=FIRST_COMPLETED)
            for f in done:
                pending.pop(f)
                for b, st in f.result():
                    finished[b] = st
            while next_merge in finished:
                stop_now = merge(next_merge, finished.pop(next_merge))
                next_merge += 1
                if stop_now:
                    return
    finally:
        stop.set()
        for f in pending:
            f.cancel()
        ex.shutdown(wait=True, cancel_futures=True)
