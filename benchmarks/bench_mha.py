"""Multi-head attention speed: numerics on NumPy against torch on the CPU, same run.

Times forward and forward+backward in float32 for B=8, N=M=512, D=512, H=8 (defaults),
prints both times, the ratio numerics/torch (< 1 means numerics is faster), and the
achieved GFLOP/s against a plain float32 GEMM measured in the same run.

    python benchmarks/bench_mha.py [--batch 8 --seq 512 --d-model 512 --heads 8 --repeat 5]

Peers: torch.nn.MultiheadAttention forward (inference, need_weights=False, under
torch.no_grad, which takes torch's fused fast path); forward+backward through autograd.
Both sides use every core: NumPy through its BLAS, torch through its intra-op threads.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

import numerics


def best_time(fn, repeat: int, warmup: int = 1) -> float:
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
    """Matrix-product FLOPs (2 per multiply-add) of MHA forward and of its backward."""
    k = d // h
    projections = 2 * b * (n * d * h * k + 2 * m * d * h * k + n * h * k * d)
    attention = 2 * b * h * (n * m * k + n * m * k)
    forward = projections + attention
    # Backward: two products per forward product (gradients of both operands), plus the
    # recomputed forward that numerics does (torch keeps activations instead).
    return float(forward), float(2 * forward)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    import torch  # the peer; imported here so --help works without it

    b, n, d, h = args.batch, args.seq, args.d_model, args.heads
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, n, d)).astype(np.float32)
    d_out = rng.standard_normal((b, n, d)).astype(np.float32)
    params = numerics.init_params(d, h, bias=True, dtype=np.float32, seed=0)

    mha = torch.nn.MultiheadAttention(d, h, bias=True, batch_first=True)
    with torch.no_grad():  # same weights on both sides
        mha.in_proj_weight.copy_(torch.from_numpy(np.concatenate([params.w_q, params.w_k, params.w_v], 1).T))
        mha.in_proj_bias.copy_(torch.from_numpy(np.concatenate([params.b_q, params.b_k, params.b_v])))
        mha.out_proj.weight.copy_(torch.from_numpy(params.w_o.T))
        mha.out_proj.bias.copy_(torch.from_numpy(params.b_o))
    mha.eval()
    tx = torch.from_numpy(x)
    t_dout = torch.from_numpy(d_out)

    def torch_forward():
        with torch.no_grad():
            return mha(tx, tx, tx, need_weights=False)[0]

    def torch_forward_backward():
        xg = tx.detach().requires_grad_(True)
        out = mha(xg, xg, xg, need_weights=False)[0]
        out.backward(t_dout)
        mha.zero_grad(set_to_none=True)
        return xg.grad

    def ours_forward():
        return numerics.multi_head_attention(x, params, check_finite=False)

    def ours_forward_backward():
        ours_forward()
        return numerics.multi_head_attention_backward(x, params, d_out, check_finite=False)

    # Same answer before timing anything.
    err = float(np.max(np.abs(ours_forward() - torch_forward().numpy())))
    assert err < 1e-3, f"numerics and torch disagree by {err}"

    a = rng.standard_normal((b * n, d)).astype(np.float32)
    w = rng.standard_normal((d, 3 * d)).astype(np.float32)
    gemm_time = best_time(lambda: a @ w, args.repeat)
    gemm_rate = 2 * a.shape[0] * d * 3 * d / gemm_time / 1e9

    fwd_flops, bwd_flops = mha_flops(b, n, n, d, h)
    rows = [
        ("forward", ours_forward, torch_forward, fwd_flops),
        ("forward+backward", ours_forward_backward, torch_forward_backward, fwd_flops + bwd_flops),
    ]
    print(f"machine: {platform.machine()} {platform.processor() or ''} cores={os.cpu_count()} "
          f"numpy {np.__version__} torch {torch.__version__} (threads {torch.get_num_threads()})")
    print(f"problem: float32 B={b} N=M={n} D={d} H={h}; GEMM ({b * n}x{d})@({d}x{3 * d}) "
          f"{gemm_rate:.1f} GFLOP/s")
    print(f"{'pass':<18}{'numerics s':>12}{'torch s':>10}{'ratio':>8}{'numerics GFLOP/s':>18}{'of GEMM':>9}")
    for name, ours, theirs, flops in rows:
        t_ours = best_time(ours, args.repeat)
        t_torch = best_time(theirs, args.repeat)
        rate = flops / t_ours / 1e9
        print(f"{name:<18}{t_ours:>12.4f}{t_torch:>10.4f}{t_ours / t_torch:>8.2f}{rate:>18.1f}{rate / gemm_rate:>9.0%}")


if __name__ == "__main__":
    main()
