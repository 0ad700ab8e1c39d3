"""Monte Carlo blocks as tasks on an executor: a ``concurrent.futures.Executor`` or a Dask cluster.

``run_mc(..., executor=...)`` hands its blocks to :func:`run_on_executor`. A task is a
contiguous range of blocks (:class:`BlockTask` called with ``(start, end)``); it returns the
per-block accumulators of that range, in order, never samples. The caller merges them strictly
in block order, exactly as the local engine does, so a result is bit-identical to the local
engine's for the same seed and block size (on workers with the same NumPy build and CPU: a
different SIMD path can change the last bit of a block's sums).

Tasks go out in rounds, a bounded window of them in flight:

* without a relative-error target, the budget is cut into about ``TASKS_PER_RUN`` (256) tasks
  of at least ``TASK_MIN_ELEMENTS`` random numbers each (so that Dask's few milliseconds per
  task stay a few percent) and at most ``TASK_MAX_BLOCKS`` blocks (so that a result stays below
  about half a MB per output), and never fewer tasks than the cluster has threads when the
  budget allows;
* with one (``rel_error``), tasks are sent up to a *horizon*: first the blocks ``min_samples``
  needs, at least one task per thread; then, after each merged block, the blocks that the
  current interval projects (``n (rhw / rel_error)^2``, half-widths shrinking as 1/sqrt(n)),
  plus 5%; when every task up to the horizon is out and the rule has not stopped the run, one
  more round of one task per thread. The rule itself is checked after every merged block, in
  block order, as locally, so the stopping point is the local engine's; the tasks past it are
  cancelled.

Faults: a Dask worker that dies costs only the tasks it held, which the scheduler recomputes
elsewhere (up to ``distributed.scheduler.allowed-failures`` times per task); a task is a pure
function of the seed and its block range, so the recomputed accumulators are the same bits. A
failing task's exception propagates to the caller. Once ``stop`` is set (Ctrl-C inside the
command line's gate), or on KeyboardInterrupt, the pending tasks are cancelled and the blocks
merged so far are kept.

Dask is imported only when a Dask object is handed in or :func:`open_client` is called:
``pip install "attnverify[dask]"`` installs it.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import signal
import sys
import threading
import uuid
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np

__all__ = [
    "BlockTask",
    "DASK_INSTALL",
    "CONNECT_TIMEOUT",
    "TASKS_PER_RUN",
    "TASK_MIN_ELEMENTS",
    "TASK_MAX_BLOCKS",
    "import_distributed",
    "is_dask_client",
    "executor_threads",
    "describe_executor",
    "plan_chunk",
    "plan_horizon",
    "open_client",
    "run_on_executor",
]

#: How to install what ``executor=`` on Dask and ``--dask`` need.
DASK_INSTALL = 'pip install "attnverify[dask]"'
#: Seconds to wait for a scheduler (and, from the command line, for its first worker).
CONNECT_TIMEOUT = 10.0
#: Tasks a budget is cut into, about (fewer when tasks would be too small).
TASKS_PER_RUN = 256
#: Fewest random numbers (float64) a task draws, when the budget has that many per thread.
TASK_MIN_ELEMENTS = 2**24
#: Most blocks per task: bounds the size of a task's result (one accumulator per block and output).
TASK_MAX_BLOCKS = 4096
#: Seconds between two looks at the stop event while waiting for tasks.
POLL_S = 0.2


def import_distributed() -> Any:
    """The ``distributed`` module, or an ImportError that says how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(f"Dask distributed is not installed ({exc}): {DASK_INSTALL}") from None
    return distributed


def is_dask_client(obj: Any) -> bool:
    """True for a ``distributed.Client`` (never imports Dask)."""
    distributed = sys.modules.get("distributed")
    return distributed is not None and isinstance(obj, distributed.Client)


def _client_of(executor: Any) -> Any:
    """The ``distributed.Client`` behind ``executor`` (itself, or a ``client.get_executor()``), or None."""
    if is_dask_client(executor):
        return executor
    client = getattr(executor, "_client", None)  # distributed.cfexecutor.ClientExecutor
    return client if is_dask_client(client) else None


def check_executor(executor: Any) -> Any:
    """``executor`` if it is a ``concurrent.futures.Executor`` or a ``distributed.Client``, else TypeError."""
    if is_dask_client(executor) or isinstance(executor, Executor):
        return executor
    raise TypeError(
        f"executor must be a concurrent.futures.Executor or a distributed.Client, got {type(executor).__name__}"
    )


def executor_threads(executor: Any) -> int:
    """Tasks ``executor`` runs at once: a Dask cluster's threads, an Executor's ``max_workers``."""
    client = _client_of(executor)
    if client is not None:
        return max(1, sum(client.nthreads().values()))
    workers = getattr(executor, "_max_workers", None)  # ThreadPoolExecutor, ProcessPoolExecutor
    if isinstance(workers, int) and workers > 0:
        return workers
    return os.cpu_count() or 1


def describe_executor(executor: Any) -> str:
    """One line for logs and results: ``"dask tcp://127.0.0.1:8786 (2 workers, 2 threads)"``."""
    client = _client_of(executor)
    if client is not None:
        threads = client.nthreads()
        return f"dask {client.scheduler.address} ({len(threads)} workers, {sum(threads.values())} threads)"
    return f"{type(executor).__name__} ({executor_threads(executor)} workers)"


@dataclass(frozen=True)
class BlockTask:
    """Blocks of one run, computable anywhere: a picklable function of the block range.

    ``task(start, end)`` returns the accumulators of blocks ``start`` to ``end - 1`` (a list of
    ``{output: Moments | Count | Histogram}``, in block order); ``task.block(b)`` one of them.
    Block ``b`` draws ``min(block_size, samples - b * block_size)`` samples from
    ``SeedSequence(entropy, spawn_key=spawn_key + (b,))``.
    """

    sampler: Any
    outputs: Mapping[str, Any]
    backend: str
    bit_generator: str
    entropy: int
    spawn_key: tuple[int, ...]
    block_size: int
    samples: int

    def block_n(self, b: int) -> int:
        """Samples of block ``b``."""
        return min(self.block_size, self.samples - b * self.block_size)

    def block(self, b: int) -> dict:
        """The accumulators of block ``b``."""
        from .engine import _summarise, array_namespace_for, make_generator

        ss = np.random.SeedSequence(self.entropy, spawn_key=self.spawn_key + (b,))
        rng = make_generator(self.backend, ss, self.bit_generator)
        n = self.block_n(b)
        xp = array_namespace_for(self.backend)
        return _summarise(xp, self.outputs, self.sampler(xp, rng, n), n, self.sampler.name)

    def __call__(self, start: int, end: int) -> list:
        return [self.block(b) for b in range(start, end)]


def plan_chunk(n_blocks: int, block_elements: int, threads: int) -> tuple[int, int]:
    """Blocks per task of a run without a target, and the fewest blocks a task should hold.

    Parameters
    ----------
    n_blocks : int
        Blocks in the budget.
    block_elements : int
        Random numbers one block draws (``block_size * elements_per_sample``).
    threads : int
        Tasks the executor runs at once.

    Returns
    -------
    (chunk, smallest) : (int, int)
        ``chunk``: about ``n_blocks / TASKS_PER_RUN``, at least ``smallest`` (tasks of at least
        ``TASK_MIN_ELEMENTS`` numbers), at most ``TASK_MAX_BLOCKS``, and small enough that every
        thread gets a task when the budget allows. ``smallest``: the block count of a task of
        ``TASK_MIN_ELEMENTS`` numbers (at most ``TASK_MAX_BLOCKS``).
    """
    smallest = min(TASK_MAX_BLOCKS, max(1, -(-TASK_MIN_ELEMENTS // max(1, block_elements))))
    chunk = min(TASK_MAX_BLOCKS, max(smallest, -(-n_blocks // TASKS_PER_RUN)))
    chunk = min(chunk, max(1, -(-n_blocks // threads)))
    return chunk, smallest


def plan_horizon(horizon: int, *, merged: int, submitted: int, pending: int, rhw: float | None, rel_error: float,
                 first: int, round_blocks: int, n_blocks: int) -> int:
    """The block (exclusive) up to which tasks may be sent, under a relative-error target.

    Parameters
    ----------
    horizon : int
        The current horizon (0 before the first round).
    merged, submitted, pending : int
        Blocks merged; blocks sent (the next task starts there); tasks not yet merged.
    rhw : float or None
        The target's relative half-width after the last merged block (None before ``min_samples``).
    rel_error : float
    first : int
        Blocks of the first round (``min_samples`` worth, at least one task per thread).
    round_blocks : int
        Blocks of one more round when the projection gives nothing new (one task per thread).
    n_blocks : int
        The budget, in blocks.

    Returns
    -------
    int
        Never below ``horizon``, never above ``n_blocks``.
    """
    target = max(horizon, first)
    if rhw is not None and math.isfinite(rhw) and merged > 0:
        # never more than 4x what is merged: an early interval is noisy, and the horizon moves on each merge
        projected = min(merged * (rhw / rel_error) ** 2 * 1.05, 4.0 * merged)
        target = max(target, math.ceil(min(projected, float(n_blocks))))
    if submitted >= target and pending == 0:
        target = submitted + round_blocks  # everything sent was merged and the rule has not stopped the run
    return min(n_blocks, target)


def run_on_executor(
    executor: Any,
    task: BlockTask,
    merge: Callable[[int, dict], bool],
    *,
    n_blocks: int,
    chunk_blocks: int | None,
    rel_error: float | None,
    min_blocks: int,
    rhw: Callable[[], float | None],
    interrupted: Callable[[], bool],
    progress: Callable[[int], Any],
) -> int:
    """Compute ``task``'s blocks on ``executor`` and ``merge`` them in block order.

    Parameters
    ----------
    executor : concurrent.futures.Executor or distributed.Client
    task : BlockTask
    merge : callable
        ``merge(b, accumulators)``, called for b = 0, 1, ... in order; True ends the run.
    n_blocks : int
        The budget, in blocks.
    chunk_blocks : int or None
        Blocks per task (None: planned, module docstring).
    rel_error : float or None
        The run's target: tasks are then sent in rounds up to :func:`plan_horizon`.
    min_blocks : int
        Blocks before the stopping rule is first checked (``min_samples`` worth).
    rhw : callable
        The target's relative half-width after the last merge (None before it is checked).
    interrupted : callable
        True when the run must end now (stop requested, at least one block merged).
    progress : callable
        Called with the samples computed so far each time a task completes.

    Returns
    -------
    int
        The largest task, in blocks.
    """
    threads = executor_threads(executor)
    client = _client_of(executor)
    if client is not None:
        distributed = import_distributed()  # already imported: the client is one of its objects
    planned, smallest = plan_chunk(n_blocks, task.block_size * max(1, int(task.sampler.elements_per_sample)), threads)
    fixed = chunk_blocks is not None
    chunk = chunk_blocks if fixed else planned
    window = max(4, 2 * threads)
    first = min(n_blocks, max(min_blocks, threads * smallest))
    horizon = n_blocks if rel_error is None else 0
    done_q: queue.Queue = queue.Queue()
    pending: dict = {}  # future -> (start, end)
    finished: dict[int, dict] = {}
    computed = next_block = next_merge = largest = 0
    try:
        while next_merge < n_blocks:
            if rel_error is not None:
                horizon = plan_horizon(horizon, merged=next_merge, submitted=next_block, pending=len(pending),
                                       rhw=rhw(), rel_error=rel_error, first=first, round_blocks=threads * smallest,
                                       n_blocks=n_blocks)
            while len(pending) < window and next_block < horizon:
                size = chunk if fixed or rel_error is None else \
                    min(planned, max(smallest, -(-(horizon - next_block) // threads)))
                end = min(next_block + size, n_blocks if fixed or rel_error is None else horizon)
                if client is not None:
                    # earlier blocks first: the merge waits for them
                    fut = client.submit(task, next_block, end, priority=-next_block,
                                        key=f"mc-{task.sampler.name}-{next_block}-{uuid.uuid4().hex}")
                else:
                    fut = executor.submit(task, next_block, end)
                pending[fut] = (next_block, end)
                fut.add_done_callback(done_q.put)
                largest = max(largest, end - next_block)
                next_block = end
            try:
                fut = done_q.get(timeout=POLL_S)
            except queue.Empty:
                if interrupted():
                    return largest
                continue
            start, end = pending.pop(fut)
            for b, acc in zip(range(start, end), fut.result()):
                finished[b] = acc
            computed += sum(task.block_n(b) for b in range(start, end))
            progress(computed)
            while next_merge in finished:
                stop_now = merge(next_merge, finished.pop(next_merge))
                next_merge += 1
                if stop_now:
                    return largest
            if interrupted():
                return largest
    finally:
        if pending:
            if client is not None:
                client.cancel([f for f in pending if isinstance(f, distributed.Future)])
            for f in pending:
                f.cancel()
    return largest


def dask_setup(worker: Any) -> None:
    """Dask preload hook of the local cluster's worker processes: they ignore Ctrl-C.

    A terminal sends Ctrl-C to every process of its foreground group; the command that owns the
    cluster handles it (cancels the tasks, keeps what finished, shuts the cluster down), so the
    workers must not die first, mid-task, or print tracebacks of their own.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def open_client(address: str, *, n_workers: int | None = None, timeout: float | None = None,
                announce: Callable[[str], Any] = print) -> Iterator[Any]:
    """A ``distributed.Client`` for ``address``, closed (and a local cluster shut down) on exit.

    Parameters
    ----------
    address : str
        A scheduler address such as ``"tcp://host:8786"``, or ``"local"``: a
        ``distributed.LocalCluster`` on this machine with ``n_workers`` worker processes of one
        thread each (default: the usable cores), which ignore Ctrl-C (:func:`dask_setup`).
    n_workers : int, optional
        Worker processes of a local cluster (ignored for an address).
    timeout : float, optional
        Seconds to reach the scheduler and to see its first worker (default ``CONNECT_TIMEOUT``).
    announce : callable
        Called with one line naming the cluster and its dashboard link.

    Raises
    ------
    ImportError
        Dask distributed is not installed (the message says how to install it).
    ConnectionError
        No scheduler answered at ``address`` within ``timeout`` seconds, or it has no worker.
    """
    distributed = import_distributed()
    timeout = CONNECT_TIMEOUT if timeout is None else timeout
    if address == "local":
        if n_workers is None:
            n_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        # Quiet logs: a worker's heartbeat racing the shutdown logs an ERROR with a traceback;
        # a failing task still reaches the caller, as the exception its future raises.
        with distributed.LocalCluster(n_workers=n_workers, processes=True, threads_per_worker=1,
                                      preload=[__name__], silence_logs=logging.CRITICAL) as cluster, \
                distributed.Client(cluster, timeout=timeout) as client:
            announce(f"Dask LocalCluster: {n_workers} worker processes of 1 thread; dashboard {client.dashboard_link}")
            yield client
        return
    try:
        client = distributed.Client(address, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - OSError (timeout, refused), ValueError (bad form), and a
        # MemoryError when something that is not a Dask scheduler answers with bytes read as a length
        raise ConnectionError(
            f"could not reach a Dask scheduler at {address!r} within {timeout:g} s "
            f"({type(exc).__name__}: {exc}); start one with 'dask scheduler' and pass its tcp://HOST:PORT"
        ) from None
    with client:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - TimeoutError, or the scheduler going away
            raise ConnectionError(
                f"the Dask scheduler at {address!r} has no worker after {timeout:g} s ({type(exc).__name__}); "
                "start some with 'dask worker ADDRESS'"
            ) from None
        threads = client.nthreads()
        announce(f"Dask scheduler {address}: {len(threads)} workers, {sum(threads.values())} threads; "
                 f"dashboard {client.dashboard_link}")
        yield client
