"""Plots of the sweeps as PNG, PDF or SVG (matplotlib's object API; no pyplot state, no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

from .experiments import Sweep

__all__ = ["plot_variance_sweep", "plot_saturation_sweep", "plot_sweep", "SUFFIXES"]

#: File types a plot can be written as (matplotlib writes them with no extra dependency).
SUFFIXES = (".png", ".pdf", ".svg")


def _figure(ncols: int, width: float = 6.0, height: float = 4.5):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"plot path must end in {', '.join(SUFFIXES)}, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_variance_sweep(sweep: Sweep, path: str | Path) -> Path:
    """Variance against d_k on log-log axes (left) and relative to the prediction (right).

    Estimates with the per-test interval of the sweep (family alpha, Bonferroni) as a band, the
    exact prediction as a line, and the document's naive value (d_k, or 1 when scaled) dashed
    where it differs from the prediction.
    """
    if sweep.experiment not in ("variance", "scaled", "projected"):
        raise ValueError(f"plot_variance_sweep needs a variance, scaled or projected sweep, got {sweep.experiment!r}")
    per_alpha = sweep.alpha / sweep.tests
    dks = [p.d_k for p in sweep.points]
    est = [p.result.variance(alpha=per_alpha) for p in sweep.points]
    pred = [p.predicted["variance"] for p in sweep.points]
    naive = [1.0 if sweep.experiment == "scaled" else float(p.d_k) for p in sweep.points]
    show_naive = any(not math.isclose(a, b) for a, b in zip(pred, naive))
    fig, (ax, rax) = _figure(2)
    band = f"interval (alpha={per_alpha:.2g} each)"
    ax.fill_between(dks, [max(e.low, 1e-300) for e in est], [e.high for e in est], alpha=0.3, color="C0", label=band)
    ax.plot(dks, [e.estimate for e in est], "o", color="C0", label="Monte Carlo estimate")
    ax.plot(dks, pred, "-", color="C1", label="exact prediction")
    if show_naive:
        ax.plot(dks, naive, "--", color="C2", label="1" if sweep.experiment == "scaled" else "d_k")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("d_k")
    label = est[0].quantity if est else "Var"
    ax.set_ylabel(label)
    verdicts = sweep.verdicts
    ax.set_title(
        f"{sweep.experiment}: {label} ({sweep.params.get('dist', '')}); "
        f"{verdicts.count('SUPPORTED')}/{len(verdicts)} checks SUPPORTED, family alpha={sweep.alpha:g}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    rax.fill_between(dks, [e.low / p for e, p in zip(est, pred)], [e.high / p for e, p in zip(est, pred)],
                     alpha=0.3, color="C0", label=band)
    rax.plot(dks, [e.estimate / p for e, p in zip(est, pred)], "o", color="C0", label="estimate / prediction")
    rax.axhline(1.0, color="C1", label="prediction")
    if show_naive:
        rax.plot(dks, [a / p for a, p in zip(naive, pred)], "--", color="C2", label="naive / prediction")
    rax.set_xscale("log", base=2)
    rax.set_xlabel("d_k")
    rax.set_ylabel(f"{label} / prediction")
    rax.set_title("relative to the exact prediction", fontsize=9)
    rax.grid(True, alpha=0.3)
    rax.legend(fontsize=8)
    return _save(fig, path)


def plot_saturation_sweep(sweep: Sweep, path: str | Path) -> Path:
    """Jacobian norm, query-gradient norm, entropy and saturated share against d_k, raw and scaled."""
    if sweep.experiment != "saturation":
        raise ValueError(f"plot_saturation_sweep needs a saturation sweep, got {sweep.experiment!r}")
    per_alpha = sweep.alpha / sweep.tests
    dks = [p.d_k for p in sweep.points]
    panels = [
        ("jacobian_fro", "mean", "mean ||diag(s) - s s^T||_F"),
        ("grad_q_fro", "mean", "mean ||ds/dq||_F"),
        ("entropy", "mean", "mean entropy (nats)"),
        ("saturated", "fraction", "share of rows with max weight > 0.99"),
    ]
    fig, axes = _figure(len(panels), width=4.5)
    for ax, (key, stat, title) in zip(axes, panels):
        for tag, color in (("raw", "C3"), ("scaled", "C0")):
            est = [p.result.estimate(f"{key}_{tag}", stat, per_alpha) for p in sweep.points]
            ax.fill_between(dks, [e.low for e in est], [e.high for e in est], color=color, alpha=0.25)
            ax.plot(dks, [e.estimate for e in est], "o-", color=color, label=f"{tag} q·k" + ("/sqrt(d_k)" if tag == "scaled" else ""))
        if key == "jacobian_fro":
            bound = sweep.points[0].predicted.get("jacobian_fro_bound") if sweep.points else None
            if bound:
                ax.axhline(bound, color="k", ls=":", lw=1, label=f"proved bound {bound:.3g}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("d_k")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"softmax over {sweep.params.get('n_keys')} keys ({sweep.params.get('dist')}), "
                 f"bands at alpha={per_alpha:.3g} per interval", fontsize=10)
    return _save(fig, path)


def plot_sweep(sweep: Sweep, path: str | Path) -> Path:
    """The plot that fits the sweep's experiment."""
    if sweep.experiment == "saturation":
        return plot_saturation_sweep(sweep, path)
    return plot_variance_sweep(sweep, path)
