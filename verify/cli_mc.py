"""``attnverify mc``: the Monte Carlo experiments on the command line.

    attnverify mc variance   --dk 1..4096 --dist t5 --samples 1e5 --json out.json --plot out.png
    attnverify mc scaled     --dk 1,8,64 --mean-q 0.5
    attnverify mc projected  --d-model 16 --same-token --weights fresh
    attnverify mc saturation --keys 16 --samples 1e4

Argument errors from the library (ValueError/TypeError naming the argument) become click usage
errors. Ctrl-C prints and saves what was computed so far, marked INCOMPLETE, and exits with 130.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
from rich.markup import escape

from verify._console import stdout_console

__all__ = ["mc", "parse_dks"]

_DISTS = ("normal", "uniform", "rademacher", "t5")


def parse_dks(values: tuple[str, ...] | list[str] | str) -> tuple[int, ...]:
    """Key widths from ``"1,2,4"``, ``"1..4096"`` (doubling from the first to at most the
    second) or several such strings; order kept, duplicates removed."""
    if isinstance(values, str):
        values = (values,)
    out: list[int] = []
    for text in values:
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if ".." in part:
                    lo_s, hi_s = part.split("..", 1)
                    lo, hi = int(lo_s), int(hi_s)
                    if lo < 1 or hi < lo:
                        raise ValueError
                    d = lo
                    while d <= hi:
                        out.append(d)
                        d *= 2
                else:
                    d = int(part)
                    if d < 1:
                        raise ValueError
                    out.append(d)
            except ValueError:
                raise click.BadParameter(
                    f"expected integers >= 1 as '1,2,4' or a doubling range '1..4096', got {part!r}",
                    param_hint="--dk",
                ) from None
    if not out:
        raise click.BadParameter("expected at least one key width", param_hint="--dk")
    return tuple(dict.fromkeys(out))


class _Count(click.ParamType):
    """A positive integer written as 100000, 1e5 or 1_000_000."""

    name = "COUNT"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            f = float(str(value).replace("_", ""))
        except ValueError:
            self.fail(f"expected an integer such as 100000 or 1e5, got {value!r}", param, ctx)
        if not math.isfinite(f) or not f.is_integer() or f < 1:
            self.fail(f"expected a whole number >= 1 such as 100000 or 1e5, got {value!r}", param, ctx)
        return int(f)


COUNT = _Count()


def _common(default_dk: str, default_samples: int, variance: bool = True):
    """Options every ``mc`` command shares."""

    def deco(f):
        opts = [
            click.option("--dk", "dk", multiple=True, default=(default_dk,), show_default=True,
                         help="Key widths: '1,2,4' or a doubling range '1..4096' (repeatable)."),
            click.option("--samples", type=COUNT, default=default_samples, show_default=True,
                         help="Sample budget per d_k (1e5 is accepted); with --rel-error and no "
                              "--samples the budget is 10^9."),
            click.option("--rel-error", type=float, default=None,
                         help="Stop a d_k early once the interval's half-width is this fraction of the estimate."),
            click.option("--dist", type=click.Choice(_DISTS), default="normal", show_default=True,
                         help="Law of the (standardised) components."),
            click.option("--backend", type=click.Choice(("numpy", "cupy")), default="numpy", show_default=True),
            click.option("--seed", type=click.IntRange(min=0), default=None,
                         help="Root seed (default: fresh entropy, printed and saved)."),
            click.option("--alpha", type=float, default=1e-6, show_default=True,
                         help="Family error rate (Bonferroni across the sweep)."),
            click.option("--workers", type=click.IntRange(min=1), default=None,
                         help="Threads (default: all usable cores; 1 for cupy)."),
            click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                         help="Write the full results (runs, estimates, checks) as JSON."),
            click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                         help="Write a PNG plot."),
            click.option("--progress/--no-progress", default=None,
                         help="Progress bar on stderr (default: when stderr is a terminal)."),
        ]
        if variance:
            opts.append(click.option("--variance-method", type=click.Choice(("fourth-moment", "batch-means")),
                                     default="fourth-moment", show_default=True,
                                     help="Variance interval: delta method from the 4th moment, or batch means."))
        for opt in reversed(opts):
            f = opt(f)
        return f

    return deco


@click.group("mc")
def mc() -> None:
    """Monte Carlo experiments on the 1/sqrt(d_k) scaling argument.

    Each command sweeps d_k, estimates with confidence intervals, and gives a verdict per
    claim: SUPPORTED when the claimed value lies in the (1 - alpha/m) interval, REFUTED
    otherwise (m = number of checks in the sweep).
    """


def _run_sweep(fn, kwargs: dict):
    try:
        return fn(**kwargs)
    except (ValueError, TypeError) as exc:
        raise click.UsageError(str(exc)) from None


def _fmt(x: float, digits: int = 5) -> str:
    from verify.montecarlo.results import format_number

    return format_number(x, digits)


def _verdict_style(v: str) -> str:
    return {"SUPPORTED": "[green]SUPPORTED[/]", "REFUTED": "[bold red]REFUTED[/]"}.get(v, f"[yellow]{v}[/]")


def _finish(sweep, json_path: Path | None, plot_path: Path | None) -> None:
    console = stdout_console()
    for f in sweep.findings:
        console.print(f"{_verdict_style(f.verdict)} {escape(f.claim)}", highlight=False)
        console.print(f"    [dim]{escape(f.evidence())}; source: {escape(f.source)}[/]", highlight=False)
    console.print(escape(sweep.summary()), highlight=False)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(sweep.to_dict(), indent=1, ensure_ascii=False))
        console.print(f"results written to {escape(str(json_path))}", highlight=False)
    if plot_path is not None and sweep.points:
        from verify.montecarlo.plots import plot_sweep

        try:
            plot_sweep(sweep, plot_path)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        console.print(f"plot written to {escape(str(plot_path))}", highlight=False)
    if sweep.incomplete:
        console.print("[bold yellow]interrupted: the results above are INCOMPLETE[/]")
        raise SystemExit(130)


def _variance_table(sweep) -> None:
    from rich.table import Table

    per = sweep.alpha / sweep.tests
    table = Table(title=f"{sweep.experiment}: each interval at alpha={per:.3g} "
                        f"(family {sweep.alpha:g}, Bonferroni over {sweep.tests})")
    extra = any(len([c for c in p.checks if c.estimate.statistic == "variance"]) > 1 for p in sweep.points)
    cols = ["d_k", "n", "Var", "interval", "predicted", "verdict"]
    if extra:
        cols += ["naive", "verdict "]
    cols += ["mean", "s"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("interval",) or col.startswith("verdict") else "right",
                         no_wrap=col == "interval")
    for p in sweep.points:
        var_checks = [c for c in p.checks if c.estimate.statistic == "variance"]
        mean_check = next((c for c in p.checks if c.estimate.statistic == "mean"), None)
        e = var_checks[0].estimate
        row = [str(p.d_k), f"{p.result.samples:,}", _fmt(e.estimate), escape(f"[{_fmt(e.low, 4)}, {_fmt(e.high, 4)}]"),
               _fmt(p.predicted["variance"]), _verdict_style(var_checks[0].verdict)]
        if extra:
            if len(var_checks) > 1:
                row += [_fmt(var_checks[1].theta0), _verdict_style(var_checks[1].verdict)]
            else:
                row += ["", ""]
        row += [_verdict_style(mean_check.verdict) if mean_check else "",
                f"{p.result.seconds:.2f}" + (" [yellow]INCOMPLETE[/]" if p.result.incomplete else "")]
        table.add_row(*row)
    stdout_console().print(table)
    notes = {c.note for c in sweep.checks if c.note}
    for note in notes:
        stdout_console().print(f"[yellow]note:[/] {escape(note)}", highlight=False)


def _common_kwargs(dk, samples, rel_error, dist, backend, seed, alpha, workers, progress) -> dict:
    ctx = click.get_current_context()
    if rel_error is not None and ctx.get_parameter_source("samples") == click.core.ParameterSource.DEFAULT:
        samples = None  # a target without a budget: the engine's cap (10^9) applies
    return dict(d_ks=parse_dks(dk), samples=samples, rel_error=rel_error, dist=dist, backend=backend,
                seed=seed, alpha=alpha, workers=workers, progress=progress)


def _dot_command(scaled: bool):
    def command(dk, samples, rel_error, dist, backend, seed, alpha, workers, json_path, plot_path, progress,
                variance_method, mean_q, mean_k, std_q, std_k):
        from verify.montecarlo.experiments import variance_sweep

        kw = _common_kwargs(dk, samples, rel_error, dist, backend, seed, alpha, workers, progress)
        kw.update(mean_q=mean_q, mean_k=mean_k, std_q=std_q, std_k=std_k, scaled=scaled,
                  variance_method=variance_method)
        sweep = _run_sweep(variance_sweep, kw)
        _variance_table(sweep)
        _finish(sweep, json_path, plot_path)

    return command


def _moment_options(f):
    for opt in reversed([
        click.option("--mean-q", type=float, default=0.0, show_default=True, help="Mean of the q components."),
        click.option("--mean-k", type=float, default=0.0, show_default=True, help="Mean of the k components."),
        click.option("--std-q", type=float, default=1.0, show_default=True, help="Std of the q components."),
        click.option("--std-k", type=float, default=1.0, show_default=True, help="Std of the k components."),
    ]):
        f = opt(f)
    return f


@mc.command("variance")
@_common("1..4096", 100_000)
@_moment_options
def variance_cmd(**kw):
    """Var(q·k) against d_k (s_q^2 s_k^2 + mu_q^2 s_k^2 + mu_k^2 s_q^2) (= d_k standardised)."""
    _dot_command(False)(**kw)


@mc.command("scaled")
@_common("1..4096", 100_000)
@_moment_options
def scaled_cmd(**kw):
    """Var(q·k / sqrt(d_k)) against 1 (and the general formula / d_k)."""
    _dot_command(True)(**kw)


@mc.command("projected")
@_common("1..256", 100_000)
@click.option("--d-model", type=click.IntRange(min=1), default=16, show_default=True, help="Token width D.")
@click.option("--same-token/--independent", default=False, show_default=True,
              help="Score a token against itself (x' = x) or against an independent token.")
@click.option("--weights", type=click.Choice(("fresh", "fixed")), default="fresh", show_default=True,
              help="New N(0, 1/D) projections per sample (ensemble) or one fixed draw (a model at init).")
def projected_cmd(dk, samples, rel_error, dist, backend, seed, alpha, workers, json_path, plot_path, progress,
                  variance_method, d_model, same_token, weights):
    """Var(x W^Q · x' W^K) against its exact value and against d_k.

    Fresh weights: d_k for independent tokens, d_k (1 + (kappa - 1)/D) for x' = x
    (kappa = E x^4: 3 normal, 1.8 uniform, 1 Rademacher, 9 t5).
    """
    from verify.montecarlo.experiments import projected_sweep

    kw = _common_kwargs(dk, samples, rel_error, dist, backend, seed, alpha, workers, progress)
    kw.update(d_model=d_model, same_token=same_token, weights=weights, variance_method=variance_method)
    sweep = _run_sweep(projected_sweep, kw)
    _variance_table(sweep)
    _finish(sweep, json_path, plot_path)


@mc.command("saturation")
@_common("1..4096", 10_000, variance=False)
@click.option("--keys", type=click.IntRange(min=2), default=16, show_default=True, help="Keys per query row.")
def saturation_cmd(dk, samples, rel_error, dist, backend, seed, alpha, workers, json_path, plot_path, progress, keys):
    """Softmax saturation and gradients against d_k, raw against scaled scores."""
    from rich.table import Table

    from verify.montecarlo.experiments import saturation_sweep

    kw = _common_kwargs(dk, samples, rel_error, dist, backend, seed, alpha, workers, progress)
    kw.update(n_keys=keys)
    sweep = _run_sweep(saturation_sweep, kw)
    console = stdout_console()
    for tag, title in (("raw", "raw scores q·k"), ("scaled", "scaled scores q·k/sqrt(d_k)")):
        table = Table(title=f"softmax over {keys} keys, {title}: means (intervals in --json)")
        for col in ("d_k", "rows", "max weight", "entropy", "||J||_F", "max ||J||_F", "||ds/dq||_F",
                    "share > 0.99", "share grad < 1e-3"):
            table.add_column(col, justify="right")
        for p in sweep.points:
            r = p.result
            table.add_row(
                str(p.d_k), f"{r.samples:,}",
                *[_fmt(r.mean(f"{key}_{tag}").estimate, 3) for key in ("max_weight", "entropy", "jacobian_fro")],
                _fmt(r.accumulators[f"jacobian_fro_{tag}"].maximum, 3),
                _fmt(r.mean(f"grad_q_fro_{tag}").estimate, 3),
                *[_fmt(r.fraction(f"{key}_{tag}").estimate, 3) for key in ("saturated", "grad_vanished")],
            )
        console.print(table)
    if sweep.points:
        console.print(f"proved bound: ||diag(s) - s s^T||_F <= {sweep.points[0].predicted['jacobian_fro_bound']:.4g} "
                      "for every input (spectral norm <= 1/2)", highlight=False)
    _finish(sweep, json_path, plot_path)
