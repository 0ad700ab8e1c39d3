"""Dot products per second of the streaming engine against a naive NumPy estimate, and peak memory.

    python3 benchmarks/bench_mc.py                      # d_k = 64, 3 interleaved repeats, 10^8-sample memory run
    python3 benchmarks/bench_mc.py --memory-samples 0   # skip the (minutes-long) memory run
    python3 benchmarks/bench_mc.py --no-dask            # skip the Dask row

Naive: one thread, ``rng.standard_normal((n, d_k))`` for q and for k, ``einsum('ij,ij->i')``,
``var(ddof=1)``: everything in memory at once. Engine: ``run_mc(DotSampler(d_k))`` on all usable
cores (threads over SeedSequence-seeded blocks, float64 Welford/Chan statistics). Both run in
this process, interleaved, so that a noisy machine slows both alike; the ratio of the medians is
reported. Peak memory of the engine on ``--memory-samples`` samples is measured in a fresh
subprocess (its own peak RSS, VmHWM, which includes the interpreter and the imported libraries,
and the tracemalloc peak of the arrays).

Dask row (when ``distributed`` is installed: ``pip install "attnverify[dask]"``): the same run on a
``distributed.LocalCluster`` of 2 single-thread worker processes (``run_mc(executor=client)``)
against the threaded engine on 2 threads and against a ``ProcessPoolExecutor`` of 2 processes
given the same tasks (which tells Dask's own cost from that of worker processes), interleaved,
same seeds (the results must be the same bits); the per-task overhead (no-op tasks through the same client: the round trip of one, and
the scheduler's time per task when 400 are in flight); and, from the measured per-block cost (the
engine on one thread), the overhead and the client's merge per block, what 10^10 samples would
take on 8, 64 and 512 workers:
``T(W) = max(ceil(tasks / W) * (blocks_per_task * t_block + t_roundtrip), tasks * t_scheduler,
blocks * t_merge)``, tasks as :func:`verify.montecarlo.cluster.plan_chunk` cuts them: a
projection for workers like this machine's cores and a network as fast as loopback.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from verify.montecarlo import DotSampler, Moments, run_mc  # noqa: E402
from verify.montecarlo import cluster  # noqa: E402
from verify.montecarlo.engine import MAX_KEPT_BLOCKS, _Kept  # noqa: E402


def naive(d_k: int, n: int, seed: int) -> tuple[float, float]:
    """(variance, seconds) by drawing everything at once on one thread."""
    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((n, d_k))
    k = rng.standard_normal((n, d_k))
    var = float(np.einsum("ij,ij->i", q, k).var(ddof=1))
    return var, time.perf_counter() - t


def engine(d_k: int, n: int, seed: int, workers: int | None) -> tuple[float, float, int]:
    t = time.perf_counter()
    r = run_mc(DotSampler(d_k), n, seed=seed, workers=workers, progress=False)
    return r.variance().estimate, time.perf_counter() - t, r.workers


MEMORY_SCRIPT = r"""
import resource, sys, time, tracemalloc, json
sys.path.insert(0, {root!r})
from verify.montecarlo import DotSampler, run_mc

def hwm_kib():
    # VmHWM is this process's own peak RSS; ru_maxrss survives fork+exec on Linux and would
    # report the parent's peak (the naive arrays) instead.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

base = hwm_kib()
tracemalloc.start()
t = time.perf_counter()
r = run_mc(DotSampler({d_k}), {n}, seed=0, workers={workers}, progress=False)
sec = time.perf_counter() - t
_, traced = tracemalloc.get_traced_memory()
peak = hwm_kib()
print(json.dumps({{"base_kib": base, "peak_kib": peak, "traced_peak_bytes": traced, "seconds": sec,
                  "samples": r.samples, "variance": r.variance().estimate, "block_size": r.block_size,
                  "workers": r.workers, "summary": r.summary()}}))
"""


def memory_run(d_k: int, n: int, workers: int | None) -> dict:
    code = MEMORY_SCRIPT.format(root=str(ROOT), d_k=d_k, n=n, workers=workers)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def speed_summary(rates_n: list, rates_e: list, rates_e1: list) -> dict:
    """Medians of the interleaved repeats, printed and returned."""
    med_n, med_e, med_1 = statistics.median(rates_n), statistics.median(rates_e), statistics.median(rates_e1)
    print(f"median dot products per second: naive {med_n:,.0f}, engine {med_e:,.0f} "
          f"(ratio {med_e / med_n:.2f}x), engine on 1 worker {med_1:,.0f} ({med_1 / med_n:.2f}x)")
    return {
        "naive_rate": med_n, "engine_rate": med_e, "engine_1_worker_rate": med_1,
        "ratio": med_e / med_n, "ratio_1_worker": med_1 / med_n,
        "naive_rates": rates_n, "engine_rates": rates_e, "engine_1_worker_rates": rates_e1,
    }


def task_overhead(client, task: "cluster.BlockTask", tasks: int = 400, trips: int = 50) -> tuple[float, float]:
    """(round trip of one no-op task, scheduler seconds per task with ``tasks`` in flight), through
    ``client`` with the engine's task object (an empty block range: pickling included)."""
    trip = []
    for i in range(trips):
        t = time.perf_counter()
        client.submit(task, 0, 0, key=f"noop-trip-{i}-{time.time_ns()}").result()
        trip.append(time.perf_counter() - t)
    t = time.perf_counter()
    futures = [client.submit(task, 0, 0, key=f"noop-{i}-{time.time_ns()}") for i in range(tasks)]
    client.gather(futures)
    return statistics.median(trip), (time.perf_counter() - t) / tasks


def merge_cost(d_k: int, blocks: int = 4000) -> float:
    """Seconds the client spends per merged block (the engine's running total and kept block
    moments), on real block accumulators."""
    s = DotSampler(d_k)
    task = cluster.BlockTask(s, dict(s.outputs), "numpy", "PCG64", 0, (), 16, 16 * blocks)
    accs = [a["dot"] for a in task(0, blocks)]
    t = time.perf_counter()
    total, kept = Moments(), _Kept()
    for a in accs:
        total = total.merge(a)
        kept = kept.add(a, MAX_KEPT_BLOCKS)
    return (time.perf_counter() - t) / blocks


def project(samples: float, block_size: int, elements: int, t_block: float, trip: float, sched: float,
            merge: float, workers: int) -> tuple[float, int, int]:
    """(seconds, tasks, blocks per task) of ``samples`` on ``workers`` (module docstring)."""
    n_blocks = math.ceil(samples / block_size)
    chunk, _ = cluster.plan_chunk(n_blocks, block_size * elements, workers)
    tasks = math.ceil(n_blocks / chunk)
    compute = math.ceil(tasks / workers) * (chunk * t_block + trip)
    return max(compute, tasks * sched, n_blocks * merge), tasks, chunk


def dask_comparison(d_k: int, n: int, repeats: int) -> dict:
    """The Dask row: LocalCluster (2 workers) against the threaded engine on 2 threads and a
    process pool of 2 given the same tasks."""
    import distributed

    s = DotSampler(d_k)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0",
                                  silence_logs=logging.CRITICAL) as lc, distributed.Client(lc) as client, \
            ProcessPoolExecutor(2) as pool:
        for executor in (client, pool):  # warm-up: imports on the workers
            run_mc(s, 20_000, seed=0, executor=executor, progress=False)
        rates_t, rates_d, rates_p, same = [], [], [], True
        for i in range(repeats):
            t = time.perf_counter()
            r_t = run_mc(s, n, seed=i, workers=2, progress=False)
            rates_t.append(n / (time.perf_counter() - t))
            t = time.perf_counter()
            r_d = run_mc(s, n, seed=i, executor=client, progress=False)
            rates_d.append(n / (time.perf_counter() - t))
            t = time.perf_counter()
            r_p = run_mc(s, n, seed=i, executor=pool, progress=False)
            rates_p.append(n / (time.perf_counter() - t))
            same = same and all(r.accumulators == r_t.accumulators and r.block_moments == r_t.block_moments
                                for r in (r_d, r_p))
            print(f"  repeat {i}: threads (2) {rates_t[-1]:,.0f}/s, Dask LocalCluster (2 workers) "
                  f"{rates_d[-1]:,.0f}/s, process pool (2) {rates_p[-1]:,.0f}/s; tasks of {r_d.chunk_size:,} "
                  "samples", flush=True)
        trip, sched = task_overhead(client, cluster.BlockTask(s, dict(s.outputs), "numpy", "PCG64", 0, (), 1, 1))
    one = run_mc(s, max(n // 4, 1), seed=99, workers=1, progress=False)
    t_block = one.seconds / one.blocks
    t_merge = merge_cost(d_k)
    med_t, med_d, med_p = (statistics.median(r) for r in (rates_t, rates_d, rates_p))
    print(f"median dot products per second: threaded engine (2 threads) {med_t:,.0f}, Dask LocalCluster "
          f"(2 workers) {med_d:,.0f}: ratio {med_d / med_t:.2f}x (goal >= 0.9x); process pool (2) {med_p:,.0f} "
          f"({med_p / med_t:.2f}x; Dask / pool {med_d / med_p:.2f}x); same bits: {same}")
    print(f"per-task overhead: {trip * 1e3:.1f} ms round trip of a no-op task, {sched * 1e3:.2f} ms of scheduler "
          f"time per task with 400 in flight; per block ({one.block_size:,} samples): {t_block * 1e3:.2f} ms "
          f"on one core, {t_merge * 1e6:.1f} us to merge on the client")
    projections = {}
    for w in (8, 64, 512):
        sec, tasks, chunk = project(1e10, one.block_size, 2 * d_k, t_block, trip, sched, t_merge, w)
        projections[w] = {"seconds": sec, "tasks": tasks, "blocks_per_task": chunk}
        print(f"  10^10 samples on {w:>3} workers: {sec / 3600:8.2f} h ({tasks:,} tasks of {chunk:,} blocks)")
    return {"threads_rate": med_t, "dask_rate": med_d, "ratio": med_d / med_t, "same_bits": same,
            "pool_rate": med_p, "pool_ratio": med_p / med_t, "pool_rates": rates_p,
            "threads_rates": rates_t, "dask_rates": rates_d, "task_roundtrip_s": trip, "scheduler_s_per_task": sched,
            "block_seconds": t_block, "block_size": one.block_size, "merge_seconds_per_block": t_merge,
            "projection_1e10": projections}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dk", type=int, default=64)
    p.add_argument("--engine-samples", type=float, default=1e7)
    p.add_argument("--naive-samples", type=float, default=1e6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=None, help="engine threads (default: all usable cores)")
    p.add_argument("--memory-samples", type=float, default=1e8, help="0 skips the memory run")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--dask", action=argparse.BooleanOptionalAction, default=None,
                   help="the Dask row (default: when distributed is installed)")
    a = p.parse_args(argv)
    d_k, n_eng, n_naive = a.dk, int(a.engine_samples), int(a.naive_samples)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"d_k={d_k}, {cores} usable cores, numpy {np.__version__}")
    print(f"naive: {n_naive:,} samples per repeat ({2 * n_naive * d_k * 8 / 1e9:.2f} GB of q and k); "
          f"engine: {n_eng:,} samples per repeat; {a.repeats} interleaved repeats")
    if a.repeats > 0:
        engine(d_k, 20_000, 0, a.workers)  # warm-up (imports, thread pool, scipy)
        naive(d_k, 10_000, 0)
    rates_n, rates_e, rates_e1 = [], [], []
    for i in range(a.repeats):  # --repeats 0 runs the memory measurement only
        var_n, t_n = naive(d_k, n_naive, i)
        var_e, t_e, w = engine(d_k, n_eng, i, a.workers)
        var_1, t_1, _ = engine(d_k, n_eng // 4, i, 1)
        rates_n.append(n_naive / t_n)
        rates_e.append(n_eng / t_e)
        rates_e1.append((n_eng // 4) / t_1)
        print(f"  repeat {i}: naive {rates_n[-1]:,.0f}/s (Var {var_n:.3f}), engine {w} workers "
              f"{rates_e[-1]:,.0f}/s (Var {var_e:.3f}), engine 1 worker {rates_e1[-1]:,.0f}/s")
    res: dict = {"d_k": d_k, "cores": cores}
    if a.repeats > 0:
        res.update(speed_summary(rates_n, rates_e, rates_e1))
    dask = importlib.util.find_spec("distributed") is not None if a.dask is None else a.dask
    if dask and a.repeats > 0:
        print(f"Dask: {n_eng:,} samples per repeat, LocalCluster of 2 worker processes against 2 threads")
        res["dask"] = dask_comparison(d_k, n_eng, a.repeats)
    elif a.dask is None:
        print(f"Dask row skipped: distributed is not installed ({cluster.DASK_INSTALL})")
    n_mem = int(a.memory_samples)
    if n_mem > 0:
        need = 2 * n_mem * d_k * 8
        print(f"memory: engine on {n_mem:,} samples in a subprocess (naive would hold q and k: "
              f"{need / 1e9:.1f} GB, {need / 2e9:.1f} GB each) ...", flush=True)
        m = memory_run(d_k, n_mem, a.workers)
        res["memory"] = m
        res["naive_bytes_needed"] = need
        print(f"  peak RSS {m['peak_kib'] / 1024:.0f} MiB (interpreter and imports before the run: "
              f"{m['base_kib'] / 1024:.0f} MiB), tracemalloc peak {m['traced_peak_bytes'] / 2**20:.1f} MiB, "
              f"{m['seconds']:.0f} s, {m['samples'] / m['seconds']:,.0f}/s, block {m['block_size']} samples")
        print(f"  {m['summary']}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
