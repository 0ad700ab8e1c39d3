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
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, Callable, Sequence

import array_api_compat

__all__ = ["worker_count", "split_axis", "map_slabs", "join_slabs", "was_split"]

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
    """``x`` restricted to ``part`` along batch ``axis`` of a (batch + 2)-dim problem."""
    if not was_split(x, axis, ndim):
        return x  # absent, or broadcast along this axis: every slab uses all of it
    index = [slice(None)] * x.ndim
    index[x.ndim - ndim + axis] = part
    return x[tuple(index)]


def was_split(x: Any, axis: int, ndim: int) -> bool:
    """Whether :func:`map_slabs` cuts ``x`` (it may have fewer leading dims, or size 1 there)."""
    if x is None:
        return False
    position = x.ndim - ndim + axis
    return position >= 0 and x.shape[position] != 1


def map_slabs(
    fn: Callable[..., Sequence[Any]],
    arrays: Sequence[Any],
    axis: int,
    batch: tuple[int, ...],
    extras: Sequence[Any] | None = None,
) -> list[Sequence[Any]]:
    """``fn(*slabs_of_arrays[, extra])`` for one slab per core, in slab order.

    ``arrays`` are (batch + 2)-dim problem arrays, or broadcastable to that (those of size 1
    along ``axis`` go whole to every slab; None stays None). ``extras``, when given, holds
    one value per slab (what an earlier call returned for that slab, say), passed last.
    Join the per-slab results with :func:`join_slabs` (or by summing partial sums).
    """
    from threadpoolctl import threadpool_limits

    global _pool
    workers = worker_count()
    size = batch[axis]
    bounds = [size * i // workers for i in range(workers + 1)]
    parts = [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
    ndim = len(batch) + 2
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="numerics")

    if extras is not None and len(extras) != len(parts):
        raise ValueError(f"extras has {len(extras)} values for {len(parts)} slabs")

    def slab(i: int) -> Sequence[Any]:
        _inside.slab = True
        try:
            args = [_slice(x, axis, ndim, parts[i]) for x in arrays]
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
