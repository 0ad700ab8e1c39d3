"""Multi-head attention speed: numerics on NumPy against torch on the CPU, same run.

Times forward and forward+backward in float32 for B=8, N=M=512, D=512, H=8 (defaults),
prints both times, the ratio numerics/torch (< 1 means numerics is faster), and the
achieved GFLOP/s against a plain float32 GEMM measured in the same run.

    python benchmarks/bench_mha.py [--batch 8 --seq 512 --d-model 512 --heads 8 --repeat 5]

Peers: torch.nn.MultiheadAttention forward (inference, need_weights=False, under
torch.no_grad, which takes torch's fused fast path); forward+backward through autograd.
numerics runs with its defaults (finite-input checks on). Both sides use every core.
Each figure is measured in a fresh process (the two libraries' thread pools would
otherwise spin against each other), alternating the peers over several rounds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

import numerics


def best_time(fn, repeat: int, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs after ``warmup`` runs (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mha_flops(b: int, n: int, m: int, d: int, h: int) -> tuple[float, float]:
    """Matrix-product FLOPs (2 per multiply-add) of MHA forward and of its backward
    (without recomputing the forward)."""
    k = d // h
    projections = 2 * b * (n * d * h * k + 2 * m * d * h * k + n * h * k * d)
    attention = 2 * b * h * (n * m * k + n * m * k)
    forward = projections + attention
    # Backward: two products per forward product (the gradients of both operands).
    return float(forward), float(2 * forward)


def _setup(b: int, n: int, d: int, h: int):
    """The problem (NumPy float32) and numerics parameters; same seed in every process."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, n, d)).astype(np.float32)
    d_out = rng.standard_normal((b, n, d)).astype(np.float32)
    params = numerics.init_params(d, h, bias=True, dtype=np.float32, seed=0)
    return x, d_out, params


def _torch_module(params, d: int, h: int):
    import torch

    mha = torch.nn.MultiheadAttention(d, h, bias=True, batch_first=True)
    with torch.no_grad():  # the same weights as numerics
        mha.in_proj_weight.copy_(torch.from_numpy(np.concatenate([params.w_q, params.w_k, params.w_v], 1).T))
        mha.in_proj_bias.copy_(torch.from_numpy(np.concatenate([params.b_q, params.b_k, params.b_v])))
        mha.out_proj.weight.copy_(torch.from_numpy(params.w_o.T))
        mha.out_proj.bias.copy_(torch.from_numpy(params.b_o))
    return mha.eval()


def measure(peer: str, which: str, shape: tuple[int, int, int, int], repeat: int) -> float:
    """Median seconds of one pass, measured in the calling (fresh) process."""
    b, n, d, h = shape
    x, d_out, params = _setup(b, n, d, h)
    if peer == "gemm":
        a = np.ascontiguousarray(x.reshape(b * n, d))
        w = np.random.default_rng(1).standard_normal((d, 3 * d)).astype(np.float32)
        return best_time(lambda: a @ w, repeat)
    if peer == "numerics":
        if which == "forward":
            return best_time(lambda: numerics.multi_head_attention(x, params), repeat)
        if which == "forward+backward":  # like autograd: keep the forward's values
            return best_time(lambda: numerics.multi_head_attention_vjp(x, params)[1](d_out), repeat)
        # the backward that recomputes the forward pass (no values kept)
        return best_time(
            lambda: (numerics.multi_head_attention(x, params),
                     numerics.multi_head_attention_backward(x, params, d_out)),
            repeat,
        )
    import torch

    mha = _torch_module(params, d, h)
    tx, t_dout = torch.from_numpy(x), torch.from_numpy(d_out)

    def forward():
        with torch.no_grad():
            return mha(tx, tx, tx, need_weights=False)[0]

    def forward_backward():
        xg = tx.detach().requires_grad_(True)
        mha(xg, xg, xg, need_weights=False)[0].backward(t_dout)
        mha.zero_grad(set_to_none=True)
        return xg.grad

    return best_time(forward if which == "forward" else forward_backward, repeat)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def _in_fresh_process(*args) -> float:
    """Run :func:`measure` in a new process, so the libraries' thread pools never meet."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate the peers this many times; each figure is the median over rounds")
    args = parser.parse_args()
    import torch  # the peer; imported here so --help works without it

    shape = (args.batch, args.seq, args.d_model, args.heads)
    b, n, d, h = shape

    # Same answer before timing anything.
    x, _, params = _setup(*shape)
    with torch.no_grad():
        theirs = _torch_module(params, d, h)(*(torch.from_numpy(x),) * 3, need_weights=False)[0].numpy()
    err = float(np.max(np.abs(numerics.multi_head_attention(x, params) - theirs)))
    assert err < 1e-3, f"numerics and torch disagree by {err}"

    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for key in [("gemm", ""), ("numerics", "forward"), ("torch", "forward"),
                    ("numerics", "forward+backward"), ("torch", "forward+backward"),
                    ("numerics", "forward, then recomputing backward")]:
            times.setdefault(key, []).append(_in_fresh_process(*key, shape, args.repeat))
    med = {key: statistics.median(v) for key, v in times.items()}
    gemm_rate = 2 * b * n * d * 3 * d / med[("gemm", "")] / 1e9
    fwd_flops, bwd_flops = mha_flops(b, n, n, d, h)

    print(f"machine: {platform.machine()} {_cpu_model()} cores={os.cpu_count()} "
          f"numpy {np.__version__} torch {torch.__version__} (threads {torch.get_num_threads()})")
    print(f"problem: float32 B={b} N=M={n} D={d} H={h}; GEMM ({b * n}x{d})@({d}x{3 * d}) "
          f"{gemm_rate:.1f} GFLOP/s; each figure: median of {args.rounds} fresh processes x {args.repeat} runs")
    print(f"{'pass':<18}{'numerics s':>12}{'torch s':>10}{'ratio':>8}{'numerics GFLOP/s':>18}{'of GEMM':>9}")
    rows = (  # label, numerics pass, torch pass, FLOPs numerics does
        ("forward", "forward", "forward", fwd_flops),
        ("forward+backward", "forward+backward", "forward+backward", fwd_flops + bwd_flops),
        ("  recomputing", "forward, then recomputing backward", "forward+backward", 2 * fwd_flops + bwd_flops),
    )
    for label, which, peer, flops in rows:
        ours, theirs = med[("numerics", which)], med[("torch", peer)]
        rate = flops / ours / 1e9
        print(f"{label:<18}{ours:>12.4f}{theirs:>10.4f}{ours / theirs:>8.2f}{rate:>18.1f}{rate / gemm_rate:>9.0%}")
    print("forward+backward: numerics.multi_head_attention_vjp (keeps the forward's values, as autograd does);"
          "\n  recomputing: multi_head_attention then multi_head_attention_backward, which recomputes the forward.")


if __name__ == "__main__":
    main()
