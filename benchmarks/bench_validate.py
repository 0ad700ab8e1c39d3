"""Wall time of ``validate`` on a correct NumPy SDPA with the default settings, against the 60 s goal.

    python3 benchmarks/bench_validate.py              # numerics.scaled_dot_product_attention, defaults
    python3 benchmarks/bench_validate.py --repeats 3  # the median of 3 runs

The candidate is our own NumPy SDPA, which takes every option (mask, causal in both alignments,
scale, bias, window, softcap, GQA, weights), so every property but ``gradients`` runs: the slowest
case for a NumPy function. The defaults are those of :func:`verify.validate.validate` (float64 and
float32, 40 hypothesis examples per search, seed 0). The machine's load average is printed before
and after: on a shared machine the wall time grows with the load, so read the figure with it.
Each property's own time is printed too.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numerics
from verify.validate import validate
from verify.validate.runner import DEFAULT_DTYPES, DEFAULT_MAX_EXAMPLES

GOAL_SECONDS = 60.0


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def one_run() -> tuple[float, list[tuple[str, str, float]]]:
    marks = []
    last = [time.perf_counter()]

    def tick(result):
        now = time.perf_counter()
        marks.append((result.name, result.status.value, now - last[0]))
        last[0] = now

    start = last[0]
    result = validate(numerics.scaled_dot_product_attention, on_property=tick)
    seconds = time.perf_counter() - start
    if not result.passed:
        raise SystemExit(f"the correct SDPA did not pass: {[(p.name, p.diagnosis) for p in result.failures]}")
    return seconds, marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {_cpu()}, {cores} usable cores; load average before: {os.getloadavg()}")
    print(f"settings: defaults (dtypes {DEFAULT_DTYPES}, max_examples {DEFAULT_MAX_EXAMPLES}, seed 0)")
    times = []
    for i in range(args.repeats):
        seconds, marks = one_run()
        times.append(seconds)
        if i == 0:
            for name, status, t in marks:
                print(f"  {name:26s} {status:15s} {t:6.2f} s")
        print(f"run {i + 1}: {seconds:.1f} s")
    median = statistics.median(times)
    print(f"load average after: {os.getloadavg()}")
    print(f"validate(numerics.scaled_dot_product_attention), default settings: median {median:.1f} s "
          f"= {median / GOAL_SECONDS:.2f} x the {GOAL_SECONDS:.0f} s goal "
          f"({'met' if median <= GOAL_SECONDS else 'NOT met'})")


if __name__ == "__main__":
    main()
