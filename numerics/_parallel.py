"""Split large NumPy attention problems over the CPU cores.

NumPy's elementwise passes (the softmax over (..., N, M) scores) run on one core, and its
BLAS threads fight over small per-head products. For large NumPy problems, attention (and
multi-head attention, projections included) is therefore cut along one batch axis into one
slab per core; each slab runs the ordinary code path in its own thread with BLAS limited to
one thread (NumPy releases the GIL in ufuncs and BLAS calls; without the limit, OpenBLAS
threads left spinning after a GEMM compete with the slab threads), and the slabs are joined
in order. Every slab sees whole rows, so the numbers are those of the unsplit computation up
to the BLAS kernel's summation order. The BLAS limit is process-wide while a split call runs.

Other namespaces (CuPy, torch, array_api_strict) run unsplit: they parallelise internally.

The wrapper is generic (:func:`plan`, then :func:`split`): a layer names its inputs, and its
results are joined field by field, never by position. Outputs with the batch dims are
concatenated (:func:`concatenated`); a gradient field named like an input is joined as that
input was cut (concatenated along its own axis, summed when the input went whole to every
slab) and every other gradient field, a parameter's, is summed (:func:`like_inputs`).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, Callable, Mapping, Sequence

import array_api_compat

__all__ = [
    "worker_count", "split_axis", "map_slabs", "join_slabs", "own_axis",
    "Cut", "plan", "split", "concatenated", "like_inputs", "with_residuals",
]

#: Below this many score entries (batch x N x M) one thread is faster than two.
MIN_SCORES = 1 << 20

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_blas_limit = threading.Lock()  # threadpool_limits is process-wide: one split call at a time
_inside = threading.local()  # set in slab threads: a slab never splits again (no nested pools)


def _reset_after_fork() -> None:
    """In a forked child the pool's threads are gone (and a lock may be held by a thread
    that no longer exists): start afresh, or the first split call would wait forever."""
    global _pool, _pool_lock, _blas_limit
    _pool = None
    _pool_lock = threading.Lock()
    _blas_limit = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def worker_count() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def split_axis(xp, batch: tuple[int, ...], scores: int) -> int | None:
    """The batch axis to split along (index into ``batch``), or None to run unsplit."""
    workers = worker_count()
    if getattr(_inside, "slab", False) or workers < 2 or scores < MIN_SCORES:
        return None
    if not array_api_compat.is_numpy_namespace(xp):
        return None
    for axis, size in enumerate(batch):
        if size >= workers:
            return axis
    return None


def _slice(x: Any, axis: int, ndim: int, part: slice) -> Any:
    """``x`` restricted to ``part`` along batch ``axis`` of an ``ndim``-dim problem (batch
    dims then the array's own trailing axes)."""
    position = own_axis(x, axis, ndim)
    if position is None:
        return x  # absent, or broadcast along this axis: every slab uses all of it
    index = [slice(None)] * x.ndim
    index[position] = part
    return x[tuple(index)]


def own_axis(x: Any, axis: int, ndim: int) -> int | None:
    """The axis of ``x`` that holds batch ``axis`` of an ``ndim``-dim problem (``x`` may have
    fewer leading dims), or None when :func:`map_slabs` does not cut ``x`` (absent, lacking
    the axis, or of size 1 there)."""
    if x is None:
        return None
    position = x.ndim - ndim + axis
    return position if position >= 0 and x.shape[position] != 1 else None



def map_slabs(
    fn: Callable[..., Sequence[Any]],
    arrays: Sequence[Any],
    axis: int,
    batch: tuple[int, ...],
    extras: Sequence[Any] | None = None,
    tails: Sequence[int] | None = None,
) -> list[Sequence[Any]]:
    """``fn(*slabs_of_arrays[, extra])`` for one slab per core, in slab order.

    ``arrays`` are (batch + 2)-dim problem arrays, or broadcastable to that (those of size 1
    along ``axis`` go whole to every slab; None stays None); ``tails``, when given, holds
    each array's number of trailing non-batch axes (default 2). ``extras``, when given,
    holds one value per slab (what an earlier call returned for that slab, say), passed
    last. Join the per-slab results with :func:`join_slabs` (or by summing partial sums).
    """
    from threadpoolctl import threadpool_limits

    global _pool
    workers = worker_count()
    size = batch[axis]
    bounds = [size * i // workers for i in range(workers + 1)]
    parts = [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
    tails = [2] * len(arrays) if tails is None else list(tails)
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="numerics")

    if extras is not None and len(extras) != len(parts):
        raise ValueError(f"extras has {len(extras)} values for {len(parts)} slabs")

    def slab(i: int) -> Sequence[Any]:
        _inside.slab = True
        try:
            args = [_slice(x, axis, len(batch) + tail, parts[i]) for x, tail in zip(arrays, tails)]
            return fn(*args) if extras is None else fn(*args, extras[i])
        finally:
            _inside.slab = False

    with _blas_limit, threadpool_limits(limits=1, user_api="blas"):
        futures = [_pool.submit(slab, i) for i in range(len(parts))]
        # Every slab finishes before the BLAS limit and the lock are released, even when
        # one raises: no slab outlives the call (or overlaps the next split call).
        wait(futures)
        return [f.result() for f in futures]


def join_slabs(per_slab: list[Sequence[Any]], axis: int) -> list[Any]:
    """Concatenate each result of :func:`map_slabs` along ``axis``."""
    import numpy as np

    return [np.concatenate(outputs, axis=axis) for outputs in zip(*per_slab)]


# ------------------------------------------------------------------ the generic wrapper


@dataclasses.dataclass(frozen=True)
class Cut:
    """How :func:`split` cuts a layer's inputs: along ``axis`` of the ``batch`` dims.

    ``axes`` holds, for each input by name, its own array axis that is cut, or None when the
    input goes whole to every slab (absent, lacking the batch axis, or of size 1 there):
    the gradient of that input is then a sum over the slabs (see :func:`like_inputs`).
    ``tails`` holds each input's number of trailing non-batch axes (2 unless named).
    """

    axis: int
    batch: tuple[int, ...]
    axes: Mapping[str, int | None]
    tails: Mapping[str, int]

    def tail(self, name: str) -> int:
        return self.tails.get(name, 2)


def plan(xp, batch: tuple[int, ...], scores: int, inputs: Mapping[str, Any],
         tails: Mapping[str, int] | None = None) -> Cut | None:
    """The cut of ``inputs`` (arrays with the ``batch`` dims, or broadcastable to them, then
    ``tails[name]`` own axes, default 2) for a problem of ``scores`` score entries, or None
    to run unsplit (see :func:`split_axis`)."""
    axis = split_axis(xp, batch, scores)
    if axis is None:
        return None
    tails = dict(tails or {})
    axes = {name: own_axis(x, axis, len(batch) + tails.get(name, 2)) for name, x in inputs.items()}
    return Cut(axis, tuple(batch), axes, tails)


def split(fn: Callable[..., Any], inputs: Mapping[str, Any], cut: Cut | None, *,
          join: Callable[[list, Cut | None], Any] | None = None, extras: Sequence[Any] | None = None) -> Any:
    """``fn(**inputs)`` run as one slab per core along ``cut`` (whole when ``cut`` is None).

    ``fn`` gets each input restricted to its slab by keyword (and, with ``extras``, one
    value per slab first: say the residuals that a forward slab returned, for its
    backward). ``join(results, cut)`` puts the per-slab results together (default
    :func:`concatenated`); ``inputs`` may hold arrays that ``cut`` was not planned with (an
    upstream gradient): they are cut the same way. With ``cut`` None, ``join`` gets the
    single result.
    """
    join = concatenated if join is None else join
    if cut is None:
        return join([fn(**inputs) if extras is None else fn(extras[0], **inputs)], None)
    names = list(inputs)

    def slab(*args):
        if extras is None:
            return fn(**dict(zip(names, args)))
        return fn(args[-1], **dict(zip(names, args[:-1])))

    per_slab = map_slabs(slab, [inputs[n] for n in names], cut.axis, cut.batch, extras=extras,
                         tails=[cut.tail(n) for n in names])
    return join(per_slab, cut)


def concatenated(results: list, cut: Cut | None) -> Any:
    """Outputs with the problem's batch dims (an array, or a tuple of arrays), each slab's
    concatenated along the cut's batch axis."""
    if cut is None:
        return results[0]
    if not isinstance(results[0], tuple):
        return join_slabs([(r,) for r in results], cut.axis)[0]
    return tuple(join_slabs(results, cut.axis))


def like_inputs(results: list, cut: Cut | None) -> Any:
    """Gradients (a dataclass per slab) joined field by field: a field named like an input
    of the cut is concatenated along that input's own cut axis, or summed when the input
    went whole to every slab; every other field (a parameter's gradient, or a dataclass of
    them) is summed. None fields stay None; fields that are not arrays (counts) are the
    first slab's."""
    if cut is None:
        return results[0]
    import numpy as np

    def summed(values: list) -> Any:
        first = values[0]
        if first is None or not hasattr(first, "shape"):
            if dataclasses.is_dataclass(first):
                return _fieldwise(values, lambda name, vs: summed(vs))
            return first
        total = first
        for value in values[1:]:
            total = total + value
        return total

    def field(name: str, values: list) -> Any:
        axis = cut.axes.get(name)
        if axis is None or values[0] is None:
            return summed(values)
        return np.concatenate(values, axis=axis)

    return _fieldwise(results, field)


def _fieldwise(instances: list, join_field: Callable[[str, list], Any]) -> Any:
    """One dataclass instance whose fields are ``join_field(name, that field of each instance)``."""
    first = instances[0]
    names = [f.name for f in dataclasses.fields(first)]
    return dataclasses.replace(first, **{n: join_field(n, [getattr(r, n) for r in instances]) for n in names})


def with_residuals(results: list, cut: Cut | None) -> tuple[Any, list]:
    """``(outputs, residuals)`` from per-slab ``(outputs, residuals)`` pairs: the outputs
    :func:`concatenated`, the residuals kept one per slab (for a backward over the same cut)."""
    return concatenated([r[0] for r in results], cut), [r[1] for r in results]
