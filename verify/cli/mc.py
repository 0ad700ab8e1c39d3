"""``attnverify mc``: the Monte Carlo experiments on the command line.

    attnverify mc variance   --dk 1..4096 --dist t5 --samples 1e5 --json out.json --plot out.png
    attnverify mc scaled     --dk 1,8,64 --mean-q 0.5
    attnverify mc projected  --d-model 16 --same-token --weights fresh
    attnverify mc saturation --keys 16 --samples 1e4
    attnverify mc variance   --dk 4096 --samples 1e9 --dask tcp://scheduler:8786   # or --dask local

Argument errors from the library (ValueError/TypeError naming the argument) become one-line
usage errors naming the option (exit 2), with advice about API-only arguments (``abs_margin=``,
``memory_limit=``) reworded for the command line. Output paths are checked before any work. Result files
are written before the tables are printed. Ctrl-C, wherever it lands, saves the points finished
so far (the last one cut short), marked incomplete, and exits 130.

``--dask ADDRESS`` runs the blocks on a Dask cluster (``verify.montecarlo.cluster``): a
scheduler such as ``tcp://host:8786``, or ``local`` for a ``distributed.LocalCluster`` on this
machine; the cluster and its dashboard link are printed first. Without Dask installed, or with
an address where no scheduler answers within 10 s, it is a usage error (exit 2) that says what
to do. Ctrl-C cancels the cluster's pending tasks and saves what finished, as without --dask.
"""

from __future__ import annotations

import decimal
import json
import re
from contextlib import ExitStack, contextmanager

import click
from rich.text import Text

from verify._console import plain, print_table, stdout_console, verdict_text
from verify._exits import EXIT_CODES, plan_exit
from verify._interrupt import InterruptGate
from verify._paths import PLOT_SUFFIXES, OutputPath, refuse_shared_outputs, write_output

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


#: The engine's largest budget (verify.montecarlo.engine.MAX_SAMPLES): float64 counts are exact up to 2**53.
MAX_SAMPLES = 2**53


class _Count(click.ParamType):
    """A whole number from ``minimum`` to ``maximum`` written as 100000, 1e5 or 1_000_000.

    Read exactly (as a decimal, never through a float): ``9007199254740993`` is that number, not
    the float 2**53 it would round to, and ``1.5`` or ``1e-1`` is refused, not rounded.
    """

    name = "COUNT"

    def __init__(self, minimum: int = 1, maximum: int = MAX_SAMPLES):
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value, param, ctx):
        expected = f"a whole number >= {self.minimum} and <= {self.maximum:,} such as 100000 or 1e5"
        if isinstance(value, bool):
            self.fail(f"expected {expected}, got {value!r}", param, ctx)
        if isinstance(value, int):
            number = decimal.Decimal(value)
        else:
            try:
                # Python's own spelling (underscores between digits), read exactly
                number = decimal.Decimal(str(value).strip())
            except decimal.InvalidOperation:
                self.fail(f"expected {expected}, got {value!r}", param, ctx)
        if not number.is_finite() or number != number.to_integral_value():
            self.fail(f"expected {expected}, got {value!r}: not a whole number", param, ctx)
        if number > self.maximum:
            self.fail(f"expected {expected}, got {value!r}: over the largest budget (float64 counts are "
                      "exact up to 2**53)", param, ctx)
        if number < self.minimum:
            self.fail(f"expected {expected}, got {value!r}", param, ctx)
        return int(number)  # bounded above first: never a huge power of ten


#: A sample count: the engine needs two samples for an interval, and counts exactly up to 2**53.
COUNT = _Count(minimum=2, maximum=MAX_SAMPLES)


def _common(default_dk: str, default_samples: int, variance: bool = True):
    """Options every ``mc`` command shares."""

    def deco(f):
        opts = [
            click.option("--dk", "dk", multiple=True, default=(default_dk,), show_default=True,
                         help="Key widths: '1,2,4' or a doubling range '1..4096' (repeatable)."),
            click.option("--samples", type=COUNT, default=default_samples, show_default=True,
                         help="Sample budget per d_k, 2 to 2**53 (1e5 is accepted, read exactly); with --rel-error "
                              "and no --samples the budget is 10^9."),
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
            click.option("--dask", "dask", metavar="ADDRESS", default=None,
                         help="Run the blocks on a Dask cluster: a scheduler address such as tcp://host:8786, or "
                              "'local' to start a LocalCluster here (one worker process per core; its dashboard "
                              "link is printed). Same results as without it. Needs: pip install "
                              "\"attnverify[dask]\"."),
            click.option("--json", "json_path", type=OutputPath(dash=True), default=None,
                         help="Write the full results (runs, estimates, checks) as JSON ('-': to stdout, "
                              "tables to stderr). Missing folders are created."),
            click.option("--plot", "plot_path", type=OutputPath(suffixes=PLOT_SUFFIXES), default=None,
                         help=f"Write a plot ({', '.join(PLOT_SUFFIXES)}). Missing folders are created."),
            click.option("--progress/--no-progress", default=None,
                         help="Progress bar on stderr (default: when stderr is a terminal)."),
        ]
        if variance:
            margin_range = click.FloatRange(min=0, max=1, min_open=True, max_open=True)
            opts.append(click.option("--margin", type=margin_range, default=0.05, show_default=True,
                                     help="Equivalence margin: SUPPORTED only when the interval lies within "
                                          "theta0 (1 +- margin) (means: +- margin sd); a wider interval that "
                                          "holds theta0 is INCONCLUSIVE."))
            opts.append(click.option("--variance-method", type=click.Choice(("auto", "fourth-moment", "batch-means")),
                                     default="auto", show_default=True,
                                     help="Variance interval: auto (the 4th-moment delta method where the "
                                          "tails let it hold its alpha, else no verdict), the delta method "
                                          "from the 4th moment, or batch means."))
        for opt in reversed(opts):
            f = opt(f)
        return f

    return deco


@click.group("mc", epilog=EXIT_CODES)
def mc() -> None:
    """Monte Carlo experiments on the 1/sqrt(d_k) scaling argument.

    Each command sweeps d_k, estimates with confidence intervals, and gives a verdict per
    claim at the family error rate alpha (Bonferroni over the sweep's checks). Result files
    are written before the tables; Ctrl-C saves the finished points, marked incomplete.
    """


#: The library's argument names and the options that set them, for its error messages.
_OPTIONS = {"d_ks": "--dk", "d_k": "--dk", "samples": "--samples", "rel_error": "--rel-error",
            "dist": "--dist", "backend": "--backend", "seed": "--seed", "alpha": "--alpha",
            "margin": "--margin", "workers": "--workers", "variance_method": "--variance-method",
            "mean_q": "--mean-q", "mean_k": "--mean-k", "std_q": "--std-q", "std_k": "--std-k",
            "d_model": "--d-model", "n_keys": "--keys", "weights": "--weights", "executor": "--dask"}


#: Library wording that names an argument the command line does not have, and what to say instead.
_API_WORDING = (
    (re.compile(r"theta0 = (\S+) has no relative margin: pass abs_margin= \(.*\)"),
     r"the predicted value is \1, so the relative --margin allows no deviation at all; "
     r"choose --std-q, --std-k, --mean-q and --mean-k whose predicted variance is not 0"),
    (re.compile(r" \(or raise memory_limit\)"), ""),
    (re.compile(r"; make the sampler smaller or raise memory_limit"), "; use a smaller --dk"),
    (re.compile(r"over memory_limit=([0-9.,]+ [KMGTP]?i?B)"), r"over the memory limit of \1"),
    (re.compile(r" \(or lower block_size\)"), ""),
    (re.compile(r"at most block_size=([0-9,]+) fits"), r"at most \1 samples per block fit"),
    (re.compile(r"\bblock_size=([0-9,]+)"), r"a block of \1 samples"),
)

#: Library argument names that are not options; a message still naming one is a defect (tested).
API_ONLY = ("abs_margin", "memory_limit", "block_size", "chunk_size", "min_samples", "executor")


def _cli_wording(message: str) -> str:
    """A library message with its API-only argument names replaced by what a CLI user can do."""
    for pattern, replacement in _API_WORDING:
        message = pattern.sub(replacement, message)
    return message


def _usage_error(exc: Exception) -> click.UsageError:
    """A library argument error as a usage error naming the option, when the message names one."""
    message = _cli_wording(str(exc))
    name = re.match(r"[A-Za-z_]+", message)
    option = _OPTIONS.get(name.group(0)) if name else None
    return click.BadParameter(message, param_hint=f"'{option}'") if option else click.UsageError(message)


def _run_sweep(fn, kwargs: dict):
    try:
        return fn(**kwargs)
    except (ValueError, TypeError) as exc:
        raise _usage_error(exc) from None


def _fmt(x: float, digits: int = 5) -> str:
    from verify.montecarlo.results import format_number

    return format_number(x, digits)


def _interval(estimate) -> str:
    return f"[{_fmt(estimate.low, 4)}, {_fmt(estimate.high, 4)}]"


def run_and_report(sweep_name: str, kwargs: dict, json_path, plot_path, print_tables) -> None:
    """Run ``verify.montecarlo.experiments.<sweep_name>(**kwargs)``; write the JSON and the plot,
    then print the tables (``print_tables(sweep, console)``) and the findings; exit 0 or 130.

    Inside an :class:`InterruptGate`: Ctrl-C only asks the sweep to stop (its ``stop=`` event), so
    it never lands in an import, a verdict or a file write, and the finished points are saved.
    """
    ctx = click.get_current_context()
    refuse_shared_outputs(**{"--json": json_path, "--plot": plot_path})
    kwargs = dict(kwargs)
    dask = kwargs.pop("dask", None)
    _check_dask(dask, kwargs.get("workers"))
    to_stdout = json_path == "-"
    console = stdout_console(stderr=to_stdout)
    with InterruptGate() as gate, _dask_client(dask, console) as executor:
        from verify.montecarlo import experiments

        sweep = _run_sweep(getattr(experiments, sweep_name), {**kwargs, "stop": gate.stop, "executor": executor})
        plan_exit(130 if sweep.incomplete or gate.pending else 0)
        document = None if json_path is None else json.dumps(sweep.to_dict(), indent=1, ensure_ascii=False)
        if document is not None and not to_stdout:
            write_output(json_path, "--json", lambda: json_path.write_text(document, encoding="utf-8"))
        plotted = plot_path is not None and bool(sweep.points)
        if plotted:
            from verify.montecarlo.plots import plot_sweep

            write_output(plot_path, "--plot", lambda: plot_sweep(sweep, plot_path))
        print_tables(sweep, console)
        _print_findings(sweep, console)
        if document is not None and not to_stdout:
            console.print(plain(f"results written to {json_path}"))
        if plotted:
            console.print(plain(f"plot written to {plot_path}"))
        if document is not None and to_stdout:
            click.echo(document)
        code = 130 if sweep.incomplete or gate.pending else 0
        if code:
            what = "the results above are INCOMPLETE" if sweep.incomplete else "every point had finished"
            console.print(plain(f"interrupted: {what}", "bold yellow"))
    ctx.exit(code)


def _check_dask(dask: str | None, workers: int | None) -> None:
    """Usage errors of --dask found before any work: --workers with it, Dask not installed."""
    if dask is None:
        return
    if workers is not None:
        raise click.UsageError("--workers sets this machine's threads, but with --dask the cluster's workers run "
                               "the blocks: pass one or the other")
    from verify.montecarlo.cluster import import_distributed

    try:
        import_distributed()
    except ImportError as exc:
        raise click.BadParameter(f"--dask needs Dask: {exc}", param_hint="'--dask'") from None


@contextmanager
def _dask_client(dask: str | None, console):
    """None without --dask; else a client of the cluster (printed with its dashboard link), closed on exit."""
    if dask is None:
        yield None
        return
    from verify.montecarlo.cluster import open_client

    def announce(line: str) -> None:
        console.print(plain(line), soft_wrap=True)  # the dashboard link on one line, whole

    with ExitStack() as stack:
        try:
            client = stack.enter_context(open_client(dask, announce=announce))
        except ConnectionError as exc:
            raise click.BadParameter(str(exc), param_hint="'--dask'") from None
        yield client


def _print_findings(sweep, console) -> None:
    for f in sweep.findings:
        console.print(Text.assemble(verdict_text(f.verdict), " ", plain(f.claim)))
        console.print(plain(f"    {f.evidence()}; source: {f.source}", "dim"))
        reason = getattr(f, "reason", "")
        if reason:
            console.print(plain(f"    why: {reason}", "dim"))
    console.print(plain(sweep.summary()))


def _variance_table(sweep, console) -> None:
    """Every verdict next to its evidence (the estimate, its interval, the predicted value): a
    table of the variance checks (with the document's value when it differs), then one of the
    mean checks; two narrow tables rather than one that no 80-column terminal holds."""
    per = sweep.alpha / sweep.tests
    level = f"each interval at alpha={per:.3g} (family {sweep.alpha:g}, Bonferroni over {sweep.tests})"
    extra = any(len([c for c in p.checks if c.estimate.statistic == "variance"]) > 1 for p in sweep.points)
    cols = ["d_k", "n", "Var", "interval", "predicted", "verdict"]
    if extra:
        cols += ["naive", "naive verdict"]
    cols += ["s"]
    rows, mean_rows = [], []
    for p in sweep.points:
        var_checks = [c for c in p.checks if c.estimate.statistic == "variance"]
        e = var_checks[0].estimate
        row = [str(p.d_k), f"{p.result.samples:,}", _fmt(e.estimate), _interval(e),
               _fmt(p.predicted["variance"]), verdict_text(var_checks[0].verdict)]
        if extra:
            row += ([_fmt(var_checks[1].theta0), verdict_text(var_checks[1].verdict)] if len(var_checks) > 1
                    else ["", ""])
        row += [f"{p.result.seconds:.2f}" + (" INCOMPLETE" if p.result.incomplete else "")]
        rows.append(row)
        for c in p.checks:
            if c.estimate.statistic == "mean":
                mean_rows.append([str(p.d_k), _fmt(c.estimate.estimate, 4), _interval(c.estimate), _fmt(c.theta0),
                                  verdict_text(c.verdict)])
    print_table(console, f"{sweep.experiment}: {level}", cols, rows,
                verdict_columns=[c for c in cols if "verdict" in c], compact=True)
    if mean_rows:
        quantity = next(c.estimate.quantity for p in sweep.points for c in p.checks if c.estimate.statistic == "mean")
        print_table(console, f"{quantity}: {level}", ["d_k", "E", "interval", "predicted", "verdict"],
                    mean_rows, verdict_columns=["verdict"], compact=True)
    for check in sweep.checks:
        reason = getattr(check, "reason", "")
        if check.verdict not in ("SUPPORTED", "REFUTED") and reason:
            console.print(Text.assemble(verdict_text(check.verdict), plain(f" {check.claim}: {reason}")))
    for note in dict.fromkeys(c.note for c in sweep.checks if c.note):
        console.print(plain("note: ", "yellow") + plain(note))


def _common_kwargs(dk, samples, rel_error, dist, backend, seed, alpha, workers, progress) -> dict:
    ctx = click.get_current_context()
    if rel_error is not None and ctx.get_parameter_source("samples") == click.core.ParameterSource.DEFAULT:
        samples = None  # a target without a budget: the engine's cap (10^9) applies
    return dict(d_ks=parse_dks(dk), samples=samples, rel_error=rel_error, dist=dist, backend=backend,
                seed=seed, alpha=alpha, workers=workers, progress=progress)


def _dot_command(scaled: bool):
    def command(dk, samples, rel_error, dist, backend, seed, alpha, workers, json_path, plot_path, progress,
                variance_method, mean_q, mean_k, std_q, std_k, **extra):
        kw = _common_kwargs(dk, samples, rel_error, dist, backend, seed, alpha, workers, progress)
        if std_q**2 * std_k**2 + mean_q**2 * std_k**2 + mean_k**2 * std_q**2 == 0:  # each std > 0: underflow
            raise click.BadParameter(
                f"the predicted variance s_q^2 s_k^2 + mu_q^2 s_k^2 + mu_k^2 s_q^2 underflows to 0 in float64 "
                f"with --std-q {std_q:g} --std-k {std_k:g}: rescale the components", param_hint="'--std-q'")
        kw.update(mean_q=mean_q, mean_k=mean_k, std_q=std_q, std_k=std_k, scaled=scaled,
                  variance_method=variance_method, **extra)
        run_and_report("variance_sweep", kw, json_path, plot_path, _variance_table)

    return command


#: A standard deviation: a zero one makes the predicted variance 0, which no relative margin can test.
_STD = click.FloatRange(min=0, min_open=True)


def _moment_options(f):
    for opt in reversed([
        click.option("--mean-q", type=float, default=0.0, show_default=True, help="Mean of the q components."),
        click.option("--mean-k", type=float, default=0.0, show_default=True, help="Mean of the k components."),
        click.option("--std-q", type=_STD, default=1.0, show_default=True, help="Std of the q components."),
        click.option("--std-k", type=_STD, default=1.0, show_default=True, help="Std of the k components."),
    ]):
        f = opt(f)
    return f


@mc.command("variance", epilog=EXIT_CODES)
@_common("1..4096", 100_000)
@_moment_options
def variance_cmd(**kw):
    """Var(q·k) against d_k (s_q^2 s_k^2 + mu_q^2 s_k^2 + mu_k^2 s_q^2) (= d_k standardised)."""
    _dot_command(False)(**kw)


@mc.command("scaled", epilog=EXIT_CODES)
@_common("1..4096", 100_000)
@_moment_options
def scaled_cmd(**kw):
    """Var(q·k / sqrt(d_k)) against 1 (and the general formula / d_k)."""
    _dot_command(True)(**kw)


@mc.command("projected", epilog=EXIT_CODES)
@_common("1..256", 100_000)
@click.option("--d-model", type=click.IntRange(min=1), default=16, show_default=True, help="Token width D.")
@click.option("--same-token/--independent", default=False, show_default=True,
              help="Score a token against itself (x' = x) or against an independent token.")
@click.option("--weights", type=click.Choice(("fresh", "fixed")), default="fresh", show_default=True,
              help="New N(0, 1/D) projections per sample (ensemble) or one fixed draw (a model at init).")
def projected_cmd(dk, samples, rel_error, dist, backend, seed, alpha, workers, json_path, plot_path, progress,
                  variance_method, d_model, same_token, weights, **extra):
    """Var(x W^Q · x' W^K) against its exact value and against d_k.

    Fresh weights: d_k for independent tokens, d_k (1 + (kappa - 1)/D) for x' = x
    (kappa = E x^4: 3 normal, 1.8 uniform, 1 Rademacher, 9 t5).
    """
    kw = _common_kwargs(dk, samples, rel_error, dist, backend, seed, alpha, workers, progress)
    kw.update(d_model=d_model, same_token=same_token, weights=weights, variance_method=variance_method, **extra)
    run_and_report("projected_sweep", kw, json_path, plot_path, _variance_table)


@mc.command("saturation", epilog=EXIT_CODES)
@_common("1..4096", 10_000, variance=False)
@click.option("--keys", type=click.IntRange(min=2), default=16, show_default=True, help="Keys per query row.")
def saturation_cmd(dk, samples, rel_error, dist, backend, seed, alpha, workers, json_path, plot_path, progress, keys,
                   **extra):
    """Softmax saturation and gradients against d_k, raw against scaled scores."""
    kw = _common_kwargs(dk, samples, rel_error, dist, backend, seed, alpha, workers, progress)
    kw.update(n_keys=keys, **extra)
    run_and_report("saturation_sweep", kw, json_path, plot_path, _saturation_tables)


def _saturation_tables(sweep, console) -> None:
    keys = sweep.params.get("n_keys")
    cols = ("d_k", "rows", "max weight", "entropy", "||J||_F", "max ||J||_F", "||ds/dq||_F",
            "share > 0.99", "share grad < 1e-3")
    for tag, title in (("raw", "raw scores q·k"), ("scaled", "scaled scores q·k/sqrt(d_k)")):
        rows = []
        for p in sweep.points:
            r = p.result
            rows.append([
                str(p.d_k), f"{r.samples:,}",
                *[_fmt(r.mean(f"{key}_{tag}").estimate, 3) for key in ("max_weight", "entropy", "jacobian_fro")],
                _fmt(r.accumulators[f"jacobian_fro_{tag}"].maximum, 3),
                _fmt(r.mean(f"grad_q_fro_{tag}").estimate, 3),
                *[_fmt(r.fraction(f"{key}_{tag}").estimate, 3) for key in ("saturated", "grad_vanished")],
            ])
        print_table(console, f"softmax over {keys} keys, {title}: means (intervals in --json)", cols, rows,
                    compact=True)
    if sweep.points:
        console.print(plain(f"proved bound: ||diag(s) - s s^T||_F <= "
                            f"{sweep.points[0].predicted['jacobian_fro_bound']:.4g} for every input "
                            "(spectral norm <= 1/2)"))
