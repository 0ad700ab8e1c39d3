"""Long sequences: causal multi-head attention, numerics on NumPy against torch on the CPU.

Times the forward pass of causal self-attention in float32, B=1, D=512, H=8 (defaults),
at each N of ``--n``, and measures each side's peak memory; prints both, and the ratios
numerics/torch (< 1 means numerics is faster or leaner). With ``--backward``, the forward
and backward pass instead.

    python benchmarks/bench_long.py [--n 2048 8192 16384] [--repeat 3] [--rounds 1] [--backward]
                                    [--peers numerics torch] [--plot docs/long_sequences.png]

Peers: ``numerics.multi_head_attention(x, params, causal=True)`` (finite-input checks on;
long sequences take the tiled attention, see numerics/_tiled.py) against torch's
projections plus ``F.scaled_dot_product_attention(..., is_causal=True)`` under
``torch.no_grad`` (its flash kernel on the CPU). Same weights; the outputs are compared
before anything is timed (at the smallest N, at most 2048).

``--backward``: ``numerics.multi_head_attention_vjp(x, params, causal=True)``, then its
backward on an upstream gradient (every gradient: x and the parameters; long sequences
take the tiled backward from the forward's output and logsumexp) against torch's same
forward with x and the parameters requiring grad, then ``out.backward(d_out)`` through
autograd (SDPA's flash backward on the CPU). The gradients of x are compared before
anything is timed (at the smallest N, at most 4096: the tiled backward at H = 8).

Every figure is measured in a fresh process (``spawn``), so that the libraries' thread
pools never meet and each process's peak memory is its own:

- time: median wall time of ``--repeat`` passes after ``--warmup`` passes (default 1);
- cpu: median CPU time (all threads) of the same passes, the steadier figure on a loaded
  machine;
- peak: the process's peak resident memory (``ru_maxrss``), imports included;
- pass: the growth of that peak over the resident memory just before the first pass
  (inputs and parameters already made): what the attention itself needs.

``--block-q`` and ``--block-k`` override numerics' tile sizes (for choosing them).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from bench_mha import _cpu_model  # benchmarks/ is on sys.path when a script there runs

MIB = 1024 * 1024


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _setup(n: int, d: int, h: int):
    import numerics

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, n, d)).astype(np.float32)
    params = numerics.init_params(d, h, bias=True, dtype=np.float32, seed=0)
    return x, params


def _upstream(x):
    """The upstream gradient of the backward rows, x's shape."""
    return np.random.default_rng(1).standard_normal(x.shape).astype(x.dtype)


def _torch_pass(x, params, h: int, backward: bool = False):
    """Projections plus SDPA, the same weights as numerics'; returns fn() -> output, or
    with ``backward`` fn() -> the gradient of x (forward, then autograd's backward of
    ``sum(d_out * out)``, with x and every parameter requiring grad)."""
    import torch
    import torch.nn.functional as F

    tx = torch.from_numpy(x)
    w_qkv = torch.from_numpy(np.ascontiguousarray(np.concatenate([params.w_q, params.w_k, params.w_v], 1)))
    b_qkv = torch.from_numpy(np.concatenate([params.b_q, params.b_k, params.b_v]))
    w_o, b_o = torch.from_numpy(params.w_o), torch.from_numpy(params.b_o)
    leaves = (tx, w_qkv, b_qkv, w_o, b_o)
    b, n, _ = tx.shape

    def forward():
        qkv = torch.addmm(b_qkv, tx.reshape(b * n, -1), w_qkv).reshape(b, n, 3, h, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        heads = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return torch.addmm(b_o, heads.transpose(1, 2).reshape(b * n, -1), w_o).reshape(b, n, -1)

    if not backward:
        def run():
            with torch.no_grad():
                return forward()

        return run
    d_out = torch.from_numpy(_upstream(x))
    for leaf in leaves:
        leaf.requires_grad_(True)

    def run_backward():
        for leaf in leaves:
            leaf.grad = None
        forward().backward(d_out)
        return tx.grad

    return run_backward


def _numerics_pass(x, params, backward: bool = False):
    """numerics' forward, fn() -> output; with ``backward`` the vjp then its backward, fn()
    -> the gradients (MHAGradients)."""
    import numerics

    if not backward:
        return lambda: numerics.multi_head_attention(x, params, causal=True)
    d_out = _upstream(x)

    def run_backward():
        _, vjp = numerics.multi_head_attention_vjp(x, params, causal=True)
        return vjp(d_out)

    return run_backward


def measure(peer: str, n: int, d: int, h: int, repeat: int, blocks: tuple[int | None, int | None],
            warmup: int = 1, backward: bool = False) -> dict:
    """{"time": s, "cpu": s, "peak": bytes, "pass": bytes, "tree": numerics' source folder
    (None for torch)} of one forward pass (with
    ``backward``, forward and backward), in this (fresh) process; cpu is the process's CPU
    time (all threads) of the pass."""
    x, params = _setup(n, d, h)
    tree = None
    if peer == "numerics":
        import numerics
        from numerics import _tiled

        tree = os.path.dirname(os.path.dirname(numerics.__file__))

        if blocks[0]:
            _tiled.BLOCK_Q = blocks[0]
        if blocks[1]:
            _tiled.BLOCK_K = blocks[1]
        run = _numerics_pass(x, params, backward)
    else:
        run = _torch_pass(x, params, h, backward)
    before = _rss_bytes()
    for _ in range(warmup):
        run()
    times, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kiB on Linux
    return {"time": statistics.median(times), "cpu": statistics.median(cpu), "peak": peak,
            "pass": max(peak - before, 0), "tree": tree}


def _agree(n: int, d: int, h: int, backward: bool = False) -> float:
    """max |numerics - torch| of the output (with ``backward``, of the gradient of x),
    relative to torch's largest entry, both in this process (checked before timing)."""
    x, params = _setup(n, d, h)
    ours = _numerics_pass(x, params, backward)()
    ours = ours.x if backward else ours
    theirs = _torch_pass(x, params, h, backward)().detach().numpy()
    return float(np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)))


def _in_fresh_process(fn, *args):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _title(d: int, h: int, note: str, backward: bool = False) -> str:
    what = "forward + backward" if backward else "forward"
    return (f"causal MHA {what}, float32, B=1, D={d}, H={h}, {_cpu_model()}, {os.cpu_count()} cores"
            + (f" ({note})" if note else ""))


def plot(results: dict, path: str, title: str, backward: bool = False) -> None:
    """Time and peak memory against N, both peers, log-log, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for peer, marker, color in (("numerics", "o", "tab:blue"), ("torch", "s", "tab:orange")):
        ns = sorted(n for (p, n) in results if p == peer)
        if not ns:
            continue
        style = dict(marker=marker, color=color)
        ax_t.plot(ns, [results[(peer, n)]["time"] for n in ns], label=f"{peer} wall", **style)
        ax_t.plot(ns, [results[(peer, n)]["cpu"] for n in ns], linestyle="--", label=f"{peer} CPU", **style)
        ax_m.plot(ns, [results[(peer, n)]["peak"] / MIB for n in ns], label=f"{peer} peak RSS", **style)
        ax_m.plot(ns, [results[(peer, n)]["pass"] / MIB for n in ns], linestyle="--",
                  label=f"{peer} growth during the pass", **style)
    for ax, label in ((ax_t, "forward + backward (s)" if backward else "forward pass (s)"), (ax_m, "memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[2048, 8192, 16384])
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes first (0 for very long N)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate the peers this many times; each figure is the median over rounds")
    parser.add_argument("--peers", nargs="+", default=["numerics", "torch"], choices=["numerics", "torch"])
    parser.add_argument("--backward", action="store_true",
                        help="time forward + backward (numerics' vjp, torch's autograd) instead of the forward")
    parser.add_argument("--block-q", type=int, default=None)
    parser.add_argument("--block-k", type=int, default=None)
    parser.add_argument("--plot", default=None, help="write the curves to this PNG")
    parser.add_argument("--note", default="", help="added to the plot's title (e.g. 'measured under load')")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--replot", nargs="+", default=None, metavar="JSON",
                        help="measure nothing: merge these --json files into --plot")
    args = parser.parse_args()
    d, h = args.d_model, args.heads
    blocks = (args.block_q, args.block_k)
    if args.replot:
        merged = {}
        for path in args.replot:
            with open(path) as f:
                merged.update({(r["peer"], r["n"]): r for r in json.load(f)["results"]})
        plot(merged, args.plot, _title(d, h, args.note, args.backward), args.backward)
        print(f"plot: {args.plot}")
        return

    if set(args.peers) == {"numerics", "torch"}:
        # --backward: at most 4096, where H = 8 heads have more than SAVED_WEIGHTS_MAX = 2^26
        # scores, so the vjp's tiled backward is the one checked.
        small = min(args.n + [4096 if args.backward else 2048])
        err = _in_fresh_process(_agree, small, d, h, args.backward)
        assert err < 1e-3, f"numerics and torch disagree by {err} (relative) at N={small}"
        print(f"agreement at N={small}: max |numerics - torch| / max |torch| = {err:.1e} "
              f"({'the gradient of x' if args.backward else 'the output'})")

    load_before = os.getloadavg()
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.rounds):
        for n in args.n:
            for peer in args.peers:
                runs.setdefault((peer, n), []).append(_in_fresh_process(measure, peer, n, d, h, args.repeat, blocks,
                                                                      args.warmup, args.backward))
    results = {key: {f: statistics.median(r[f] for r in rs) for f in ("time", "cpu", "peak", "pass")}
               for key, rs in runs.items()}

    import numerics

    trees = sorted({r["tree"] for rs in runs.values() for r in rs if r["tree"]})
    load = os.getloadavg()
    print(f"machine: {platform.machine()} {_cpu_model()} cores={os.cpu_count()} load average (1, 5, 15 min) "
          f"before {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f}, after "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; numpy {np.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    from numerics import _tiled

    what = "forward + backward (numerics' vjp, torch's autograd)" if args.backward else "forward"
    print(f"problem: causal self-attention {what}, float32, B=1, D={d}, H={h}; numerics tiles "
          f"{args.block_q or _tiled.BLOCK_Q} x {args.block_k or _tiled.BLOCK_K}; each figure: median of "
          f"{args.rounds} fresh process(es) x {args.repeat} runs; numerics from {', '.join(trees)}")
    head = f"{'N':>7}{'peer':>10}{'time s':>10}{'cpu s':>10}{'peak MiB':>10}{'pass MiB':>10}"
    both = set(args.peers) == {"numerics", "torch"}
    if both:
        head += f"{'time ratio':>12}{'cpu ratio':>11}{'peak ratio':>12}{'pass ratio':>12}"
    print(head)
    for n in args.n:
        for peer in args.peers:
            r = results[(peer, n)]
            line = (f"{n:>7}{peer:>10}{r['time']:>10.3f}{r['cpu']:>10.3f}{r['peak'] / MIB:>10.0f}"
                    f"{r['pass'] / MIB:>10.0f}")
            if both and peer == "numerics":
                t = results[("torch", n)]
                line += (f"{r['time'] / t['time']:>12.2f}{r['cpu'] / t['cpu']:>11.2f}{r['peak'] / t['peak']:>12.2f}"
                         f"{r['pass'] / max(t['pass'], 1):>12.2f}")
            print(line)
    print("ratios: numerics / torch. cpu: CPU time of the pass, all threads (less sensitive than the wall"
          "\n  time to other processes on the machine); peak: the process's peak RSS (imports included:"
          "\n  torch's are larger); pass: growth of the peak over the RSS before the first pass.")
    del numerics
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load_average": load, "load_average_before": load_before, "d_model": d, "heads": h,
                       "backward": args.backward, "numerics": trees,
                       "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "results": [{"peer": p, "n": n, **r} for (p, n), r in results.items()]}, f, indent=1)
    if args.plot:
        plot(results, args.plot, _title(d, h, args.note, args.backward), args.backward)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
