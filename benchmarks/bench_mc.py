"""Dot products per second of the streaming engine against a naive NumPy estimate, and peak memory.

    python3 benchmarks/bench_mc.py                      # d_k = 64, 3 interleaved repeats, 10^8-sample memory run
    python3 benchmarks/bench_mc.py --memory-samples 0   # skip the (minutes-long) memory run

Naive: one thread, ``rng.standard_normal((n, d_k))`` for q and for k, ``einsum('ij,ij->i')``,
``var(ddof=1)``: everything in memory at once. Engine: ``run_mc(DotSampler(d_k))`` on all usable
cores (threads over SeedSequence-seeded blocks, float64 Welford/Chan statistics). Both run in
this process, interleaved, so that a noisy machine slows both alike; the ratio of the medians is
reported. Peak memory of the engine on ``--memory-samples`` samples is measured in a fresh
subprocess (its own peak RSS, VmHWM, which includes the interpreter and the imported libraries,
and the tracemalloc peak of the arrays).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from verify.montecarlo import DotSampler, run_mc  # noqa: E402


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


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dk", type=int, default=64)
    p.add_argument("--engine-samples", type=float, default=1e7)
    p.add_argument("--naive-samples", type=float, default=1e6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=None, help="engine threads (default: all usable cores)")
    p.add_argument("--memory-samples", type=float, default=1e8, help="0 skips the memory run")
    p.add_argument("--json", type=Path, default=None)
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
