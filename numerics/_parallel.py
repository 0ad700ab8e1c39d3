"""Split large NumPy attention problems over the CPU cores.

NumPy's elementwise passes (the softmax over (..., N, M) scores) run on one core, and its
BLAS threads fight over small per-head products. For large NumPy problems, attention is
therefore cut along one batch axis into one slab per core; each slab runs the ordinary
code path in its own thread with BLAS limited to one thread (NumPy releases the GIL in
ufuncs and BLAS calls), and the slabs are joined in order. Every slab sees whole rows, so
the numbers are those of the unsplit computation up to the BLAS kernel's summation order.

Other namespaces (CuPy, torch, array_api_strict) run unsplit: they parallelise internally.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import array_api_compat

__all__ = ["worker_count", "split_axis", "map_slabs"]

#: Below this many score entries (batch x N x M) one thread is faster than two.
MIN_SCORES = 1 << 20

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_blas_limit = threading.Lock()  # threadpool_limits is process-wide: one split call at a time


def worker_count() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def split_axis(xp, batch: tuple[int, ...], scores: int) -> int | None:
    """The batch axis to split along (index into ``batch``), or None to run unsplit."""
    workers = worker_count()
    if workers < 2 or scores < MIN_SCORES or not array_api_compat.is_numpy_namespace(xp):
        return None
    for axis, size in enumerate(batch):
        if size >= workers:
            return axis
    return None


def _slice(x: Any, axis: int, ndim: int, part: slice) -> Any:
    """``x`` restricted to ``part`` along batch ``axis`` of a (batch + 2)-dim problem."""
    if x is None:
        return None
    offset = x.ndim - ndim  # x may have fewer leading dims (broadcast)
    if offset + axis < 0 or x.shape[offset + axis] == 1:
        return x  # broadcast along this axis: every slab uses all of it
    index = [slice(None)] * x.ndim
    index[offset + axis] = part
    return x[tuple(index)]


def map_slabs(
    fn: Callable[..., Sequence[Any]],
    arrays: Sequence[Any],
    axis: int,
    batch: tuple[int, ...],
) -> list[Any]:
    """Run ``fn(*slabs_of_arrays)`` on one slab per core and join each result along ``axis``.

    ``arrays`` are (batch + 2)-dim problem arrays (or broadcastable to that); every result
    of ``fn`` must have the full batch dims, so results join by concatenation.
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
    with _blas_limit, threadpool_limits(limits=1, user_api="blas"):
        futures = [_pool.submit(fn, *(_slice(x, axis, ndim, part) for x in arrays)) for part in parts]
        results = [f.result() for f in futures]
    import numpy as np

    return [np.concatenate(outputs, axis=axis) for outputs in zip(*results)]
