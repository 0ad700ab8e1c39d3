"""Calibration of the variance intervals: how often a (1 - alpha) interval for Var(q·k) excludes the truth.

    python3 benchmarks/bench_calibration.py --quick              # about a minute on one core
    python3 benchmarks/bench_calibration.py --estimate           # time of the full grid, without running it
    python3 benchmarks/bench_calibration.py --jobs 16 --out cal.json --plot cal.png   # the full grid

For q, k with iid standardised components Var(q·k) = d_k exactly, whatever the law (Vaswani et
al. 2017, footnote 4): each seed draws n samples of q·k, computes every interval method of
``verify.montecarlo.stats.variance_interval`` at every alpha from the same samples, and counts
a *false exclusion* when the interval is defined and d_k lies outside it. The observed rate of
a cell is k exclusions out of S seeds, printed with its 95% Clopper-Pearson interval; an honest
interval has rate alpha (``ratio`` = rate / alpha = 1). ``auto`` is the verdicts' method: where
it cannot vouch for its tail it gives no interval (``undef`` counts those seeds), which is never
an exclusion, so its rate is the verdict's real error rate. ``fourth-moment`` and ``batch-means``
are measured as plain intervals, without the tail rule, to show what the rule guards against.

Only the law of one sample of q·k matters, so it is drawn as cheaply as it can be exactly:
normal components give ``q·k = |k| Z`` with ``|k|^2 ~ chi^2(d_k)`` (2 draws per sample),
Rademacher ones ``2 Binomial(d_k, 1/2) - d_k`` (1 draw); uniform and t5 have no such shortcut
and cost ``2 d_k`` component draws per sample (through ``Distribution.draw``, the CLI's own
laws). Batch means uses 32 contiguous batches of each seed's samples.

The grid is every distribution the CLI offers, d_k in {1, 4, 64, 1024}, n in {10^4, 10^5, 10^6},
alpha in {1e-2, 1e-3, 1e-4}. ``--seeds`` (default 100,000: about 10 exclusions expected at
1e-4) is capped per cell by ``--max-draws`` random numbers (default 4e10), so the costly cells
(uniform and t5 at large n d_k) run fewer seeds and say so through their wider rate intervals.
``--quick`` runs d_k in {1, 4}, n = 10^4, 2000 seeds. ``--estimate`` times a few seeds of each
cell and prints what the chosen grid would take. ``--from-json a.json b.json --plot p.png``
prints the tables and draws the plot of earlier ``--out`` files (a grid run in parts; a later
run of a cell replaces an earlier one, ``--min-seeds`` leaves out thin cells).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from verify.montecarlo.distributions import DISTRIBUTIONS, get_distribution  # noqa: E402
from verify.montecarlo.stats import Moments, fraction_interval, Count, variance_interval  # noqa: E402

DISTS = tuple(DISTRIBUTIONS)
D_KS = (1, 4, 64, 1024)
NS = (10**4, 10**5, 10**6)
ALPHAS = (1e-2, 1e-3, 1e-4)
METHODS = ("auto", "fourth-moment", "batch-means")
BATCHES = 32
#: Largest array of q·k samples drawn at once (rows of seeds x n), in elements.
CHUNK_ELEMENTS = 2**22


def draws_per_sample(dist: str, d_k: int) -> int:
    """Random numbers one exact sample of q·k costs (see the module docstring)."""
    return {"normal": 2, "rademacher": 1}.get(dist, 2 * d_k)


def products(dist: str, d_k: int, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """``q·k`` for iid standardised components of law ``dist``, an array of ``shape`` (seeds, n)."""
    if dist == "normal":  # given k, q·k ~ N(0, |k|^2), and |k|^2 ~ chi^2(d_k)
        return np.sqrt(rng.chisquare(d_k, shape)) * rng.standard_normal(shape)
    if dist == "rademacher":  # q_i k_i are iid +-1
        return 2.0 * rng.binomial(d_k, 0.5, shape) - d_k
    law = get_distribution(dist)
    out = np.zeros(shape)
    for _ in range(d_k):
        out += law.draw(np, rng, shape) * law.draw(np, rng, shape)
    return out


def _row_moments(x: np.ndarray) -> list[Moments]:
    """Moments of each row of ``x`` (rows, m), as the engine's accumulators hold them."""
    n = x.shape[1]
    mean = x.mean(axis=1)
    d = x - mean[:, None]
    d2 = d * d
    sums = np.stack([np.sum(d2, axis=1), np.sum(d2 * d, axis=1), np.sum(d2 * d2, axis=1)], axis=1)
    lo, hi = x.min(axis=1), x.max(axis=1)
    return [Moments(n, float(mean[i]), *map(float, sums[i]), float(lo[i]), float(hi[i])) for i in range(x.shape[0])]


def _seed_moments(x: np.ndarray) -> tuple[list[Moments], list[list[Moments]]]:
    """(whole-run moments, per-batch moments) of each row of ``x`` (seeds, n)."""
    totals = _row_moments(x)
    cuts = np.array_split(np.arange(x.shape[1]), BATCHES)
    per_batch = [_row_moments(x[:, c[0]:c[-1] + 1]) for c in cuts]  # BATCHES lists of rows
    return totals, [list(b) for b in zip(*per_batch)]


def run_chunk(task: tuple) -> dict:
    """Exclusions and undefined intervals of ``rows`` seeds of one cell: {method: {alpha: [excl, undef]}}."""
    dist, d_k, n, rows, entropy, key, alphas = task
    rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=key))
    p = get_distribution(dist).finite_moments
    counts = {m: {a: [0, 0] for a in alphas} for m in METHODS}
    truth = float(d_k)
    x = products(dist, d_k, (rows, n), rng)
    totals, batches = _seed_moments(x)
    for tot, blocks in zip(totals, batches):
        for method in METHODS:
            for a in alphas:
                # the plain methods are measured without the tail rule, to show what it guards against
                lo, hi, _ = variance_interval(tot, a, method, blocks=blocks, batches=BATCHES,
                                              finite_moments=p if method == "auto" else math.inf)
                c = counts[method][a]
                if math.isnan(lo) or math.isnan(hi):
                    c[1] += 1
                elif not lo <= truth <= hi:
                    c[0] += 1
    return counts


def cell_tasks(ci: int, dist: str, d_k: int, n: int, seeds: int, entropy: int, alphas) -> list[tuple]:
    rows = max(1, min(seeds, CHUNK_ELEMENTS // n))
    return [(dist, d_k, n, min(rows, seeds - s), entropy, (ci, s // rows), tuple(alphas))
            for s in range(0, seeds, rows)]


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    lo, hi, _ = fraction_interval(Count(n, k), 1.0 - level)
    return lo, hi


def plan(dists, dks, ns, seeds: int, max_draws: float) -> list[tuple]:
    """(dist, d_k, n, seeds) of every cell, seeds capped by ``max_draws`` random numbers."""
    out = []
    for dist in dists:
        for d in dks:
            for n in ns:
                cap = int(max_draws // (n * draws_per_sample(dist, d)))
                out.append((dist, d, n, max(0, min(seeds, cap))))
    return out


def estimate(cells, jobs: int) -> float:
    """Seconds the cells would take on ``jobs`` processes (printed), timed on seeds of 10^4 samples.

    The cost of a seed is linear in n (drawing, moments, a fixed number of intervals), so each
    cell is timed at n = 10^4 on a few seeds and scaled.
    """
    total = 0.0
    for dist, d, n, s in cells:
        m = min(n, 10**4)
        k = 8
        t = time.perf_counter()
        run_chunk((dist, d, m, k, 0, (0,), ALPHAS))
        per_seed = (time.perf_counter() - t) / k * (n / m)
        total += per_seed * s
        print(f"{dist:>10} d_k={d:<5} n={n:<8} {per_seed * 1e3:9.1f} ms/seed x {s:>7,} seeds = {per_seed * s / 3600:8.2f} h")
    print(f"total {total / 3600:.1f} core-hours, about {total / 3600 / jobs:.1f} h on {jobs} processes")
    return total


def _records(cell: tuple, sums: dict, alphas, seconds: float) -> list[dict]:
    dist, d, n, s = cell
    out = []
    for m in METHODS:
        for a in alphas:
            k, undef = sums[m][a]
            lo, hi = clopper_pearson(k, s) if s else (math.nan, math.nan)
            out.append({"dist": dist, "d_k": d, "n": n, "seeds": s, "method": m, "alpha": a,
                        "exclusions": k, "undefined": undef, "rate": k / s if s else math.nan,
                        "rate_low": lo, "rate_high": hi, "seconds": seconds})
    return out


def run(cells, jobs: int, entropy: int, alphas=ALPHAS, out: str | None = None) -> list[dict]:
    """Run the cells, one after the other (each over ``jobs`` processes); one record per
    (cell, method, alpha). Each cell's line is printed, and ``out`` rewritten, as it finishes."""
    records = []
    t0 = time.perf_counter()
    ex = ProcessPoolExecutor(jobs) if jobs > 1 else None
    try:
        for ci, cell in enumerate(cells):
            t1 = time.perf_counter()
            tasks = cell_tasks(ci, *cell, entropy, alphas)
            results = list(ex.map(run_chunk, tasks, chunksize=1)) if ex else [run_chunk(t) for t in tasks]
            sums = {m: {a: [sum(r[m][a][0] for r in results), sum(r[m][a][1] for r in results)] for a in alphas}
                    for m in METHODS}
            recs = _records(cell, sums, alphas, time.perf_counter() - t1)
            records += recs
            print(f"{cell[0]:>10} d_k={cell[1]:<5} n={cell[2]:<8.0e} seeds={cell[3]:<7,} {time.perf_counter() - t1:7.0f} s  "
                  + "  ".join(f"{r['method']} {r['alpha']:g}: {r['exclusions']}" for r in recs), flush=True)
            if out:
                Path(out).write_text(json.dumps(records, indent=1))
    finally:
        if ex:
            ex.shutdown()
    print(f"ran {sum(c[3] for c in cells):,} seeds in {time.perf_counter() - t0:.0f} s on {jobs} process(es)")
    return records


def _fmt_rate(r: dict) -> str:
    if not r["seeds"]:
        return "not run"
    a = r["alpha"]
    text = f"{r['exclusions']}/{r['seeds']:,} = {r['rate'] / a:.2g}x [{r['rate_low'] / a:.2g}, {r['rate_high'] / a:.2g}]"
    if r["undefined"]:
        text += f", no interval {r['undefined'] / r['seeds']:.0%}"
    return text


def table(records: list[dict], methods=("fourth-moment", "batch-means", "auto")) -> str:
    """Markdown table: per cell and method, exclusions/seeds = rate/alpha [95% CP interval of it]."""
    alphas = sorted({r["alpha"] for r in records}, reverse=True)
    head = "| components | d_k | n | interval | " + " | ".join(f"alpha = {a:g}" for a in alphas) + " |"
    lines = [head, "|" + "---|" * (4 + len(alphas))]
    keys = sorted({(r["dist"], r["d_k"], r["n"]) for r in records},
                  key=lambda k: (DISTS.index(k[0]), k[1], k[2]))
    for dist, d, n in keys:
        for m in methods:
            rs = {r["alpha"]: r for r in records if (r["dist"], r["d_k"], r["n"], r["method"]) == (dist, d, n, m)}
            if not rs:
                continue
            lines.append(f"| {dist} | {d} | {n:.0e} | {m} | " + " | ".join(_fmt_rate(rs[a]) for a in alphas) + " |")
    return "\n".join(lines)


def latest(records: list[dict]) -> list[dict]:
    """The last record of each (dist, d_k, n, method, alpha): a later run of a cell replaces an earlier one."""
    out = {}
    for r in records:
        out[(r["dist"], r["d_k"], r["n"], r["method"], r["alpha"])] = r
    return list(out.values())


def compact_table(records: list[dict]) -> str:
    """The README's table: one row per cell, rate / alpha [95% CP] of the plain fourth-moment
    interval at each alpha, and what the verdicts' ``auto`` interval did with the same draws."""
    alphas = sorted({r["alpha"] for r in records}, reverse=True)
    by = {(r["dist"], r["d_k"], r["n"], r["method"], r["alpha"]): r for r in records}
    keys = sorted({(r["dist"], r["d_k"], r["n"]) for r in records if r["seeds"]},
                  key=lambda k: (DISTS.index(k[0]), k[1], k[2]))
    head = ("| components | d_k | n | seeds | " + " | ".join(f"fourth-moment, alpha = {a:g}" for a in alphas)
            + " | verdicts' interval (auto) |")
    lines = [head, "|" + "---|" * (5 + len(alphas))]
    for key in keys:
        fm = [by[key + ("fourth-moment", a)] for a in alphas]
        au = [by[key + ("auto", a)] for a in alphas]
        cells = []
        for r in fm:
            a = r["alpha"]
            cells.append(f"{r['exclusions']}: {r['rate'] / a:.2g}x [{r['rate_low'] / a:.2g}, {r['rate_high'] / a:.2g}]")
        if all(u["exclusions"] == f["exclusions"] and not u["undefined"] for u, f in zip(au, fm)):
            auto = "the same"
        elif all(u["undefined"] == u["seeds"] for u in au):
            auto = "no interval (no verdict)"
        else:
            auto = ", ".join(f"{u['alpha']:g}: " + (f"none ({u['undefined'] / u['seeds']:.0%} no interval)"
                                                   if u["undefined"] else f"{u['exclusions']}") for u in au)
        lines.append(f"| {key[0]} | {key[1]} | {key[2]:.0e} | {fm[0]['seeds']:,} | " + " | ".join(cells)
                     + f" | {auto} |")
    return "\n".join(lines)


def plot(records: list[dict], path: str) -> None:
    """rate / alpha against alpha, one panel per distribution, the fourth-moment interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dists = [d for d in DISTS if any(r["dist"] == d for r in records)]
    cols = min(2, len(dists))
    rows = -(-len(dists) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4.2 * rows), sharey=True, squeeze=False)
    for ax in axes.flat[len(dists):]:
        ax.set_visible(False)
    for ax, dist in zip(axes.flat, dists):
        cells = sorted({(r["d_k"], r["n"]) for r in records if r["dist"] == dist and r["seeds"]})
        for i, (d, n) in enumerate(cells):
            rs = sorted((r for r in records if (r["dist"], r["d_k"], r["n"], r["method"]) == (dist, d, n, "fourth-moment")),
                        key=lambda r: r["alpha"])
            a = np.array([r["alpha"] for r in rs]) * (1.0 + 0.06 * (i - len(cells) / 2))  # spread the bars
            y = np.array([max(r["rate"], r["rate_high"] / 50) / r["alpha"] for r in rs])
            lo = np.array([max(r["rate_low"] / r["alpha"], 1e-2) for r in rs])
            hi = np.array([r["rate_high"] / r["alpha"] for r in rs])
            zero = np.array([r["exclusions"] == 0 for r in rs])
            line = ax.errorbar(a[~zero], y[~zero], yerr=[y[~zero] - lo[~zero], hi[~zero] - y[~zero]], fmt="o-",
                               ms=4, capsize=2, label=f"d_k={d}, n={n:.0e}")
            if zero.any():  # no exclusion: only the upper end of the rate's interval is known
                ax.plot(a[zero], hi[zero], "v", color=line[0].get_color(), ms=6)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("alpha")
        ax.set_title(f"{dist}: fourth-moment interval")
        ax.legend(fontsize=6)
    for ax in axes[:, 0]:
        ax.set_ylabel("false exclusions / alpha\n(95% CP; v: none seen, upper end)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="d_k in {1, 4}, n = 10^4, 2000 seeds")
    p.add_argument("--dists", nargs="+", choices=DISTS, default=list(DISTS))
    p.add_argument("--dks", nargs="+", type=int, default=list(D_KS))
    p.add_argument("--ns", nargs="+", type=int, default=list(NS))
    p.add_argument("--seeds", type=int, default=100_000)
    p.add_argument("--max-draws", type=float, default=4e10, help="random numbers per cell at most (caps its seeds)")
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--seed", type=int, default=14)
    p.add_argument("--estimate", action="store_true", help="time a few seeds per cell and stop")
    p.add_argument("--out", help="write the records as JSON here")
    p.add_argument("--plot", help="write the plot (PNG) here")
    p.add_argument("--from-json", nargs="+", metavar="JSON",
                   help="only print the tables (and plot) of earlier --out files (a later run of a cell wins; "
                        "--out writes them merged)")
    p.add_argument("--min-seeds", type=int, default=0, help="with --from-json: leave out cells with fewer seeds")
    a = p.parse_args(argv)
    if a.from_json:
        records = latest([r for f in a.from_json for r in json.loads(Path(f).read_text())])
        if a.out:
            Path(a.out).write_text(json.dumps(records, indent=1))
        records = [r for r in records if r["seeds"] >= a.min_seeds]
        print(table(records))
        print()
        print(compact_table(records))
        if a.plot:
            plot(records, a.plot)
        return records
    if a.quick:
        a.dks, a.ns, a.seeds = [1, 4], [10**4], 2000
    cells = plan(a.dists, a.dks, a.ns, a.seeds, a.max_draws)
    if a.estimate:
        estimate(cells, a.jobs)
        return []
    records = run(cells, a.jobs, a.seed, out=a.out)
    print(table(records))
    if a.plot:
        plot(records, a.plot)
    return records


if __name__ == "__main__":
    main()
