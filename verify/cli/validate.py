"""``attnverify validate MODULE:ATTR``: run the validate battery on someone's attention function."""

from __future__ import annotations

import datetime as _dt
import importlib
import importlib.util
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.text import Text

from verify._console import plain, print_table, stdout_console
from verify._exits import VALIDATE_EXIT_CODES, plan_exit
from verify._interrupt import InterruptGate
from verify._paths import OutputPath, write_output

#: How each property status is coloured.
STATUS_STYLE = {"PASS": "green", "FAIL": "bold red", "ERROR": "bold red", "TIMEOUT": "bold red",
                "NOT APPLICABLE": "dim"}
DTYPES = ("float64", "float32", "float16", "bfloat16")


def load_target(target: str) -> tuple[Any, str]:
    """The callable named by ``MODULE:ATTR`` (MODULE a file path or an importable module, the
    current directory on sys.path; ATTR may be dotted). Raises click.BadParameter naming TARGET."""
    def bad(message: str):
        return click.BadParameter(message, param_hint="'MODULE:ATTR'")

    module_part, sep, attr = target.rpartition(":")
    if not sep or not module_part or not attr:
        raise bad(f"expected MODULE:ATTR (a module or a .py file, then the function's name), got {target!r}")
    if ":" in module_part and not Path(module_part).is_file():
        raise bad(f"too many colons in {target!r}: expected one, MODULE:ATTR (ATTR may be dotted: Class.method)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    path = Path(module_part)
    try:
        if module_part.endswith(".py") or path.is_file():
            if not path.is_file():
                raise bad(f"no such file {module_part!r}")
            name = f"_attnverify_validate_{abs(hash(str(path.resolve())))}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            sys.path.insert(0, str(path.resolve().parent))
            spec.loader.exec_module(module)
        else:
            try:
                module = importlib.import_module(module_part)
            except ModuleNotFoundError as exc:
                if exc.name and module_part.startswith(exc.name):
                    raise bad(f"no module named {module_part!r} (not importable from here, nor a file)") from None
                raise
    except click.BadParameter:
        raise
    except Exception as exc:  # the user's module raised (or has a syntax error) while it was imported: bad usage
        raise bad(f"importing {module_part!r} raised {type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise bad(f"{module_part!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        noun = type(obj).__name__
        raise bad(f"{target!r} is {'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}, not a callable")
    return obj, target


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, "yellow"))


def _worst(p) -> str:
    ms = [m for m in p.measurements if m.bound > 0 or m.error > 0]
    if not ms:
        return ""
    m = max(ms, key=lambda m: m.error / m.bound if m.bound > 0 else math.inf)
    return f"{m.error:.3g} / {m.bound:.3g}"


def _example(p) -> str:
    if not p.example:
        return ""
    if p.status.value == "TIMEOUT":  # the call in progress when time ran out: nothing was shrunk
        return "; the call in progress (not shrunk): " + ", ".join(f"{k}={v}" for k, v in p.example.items())
    label = "smallest example (shrunk by hypothesis)" if p.shrunk else "failing example"
    return f"; {label}: " + ", ".join(f"{k}={v}" for k, v in p.example.items())


def print_result(result, console: Console, seconds: float) -> None:
    """The property table and the summary line."""
    s = result.settings
    title = (f"{result.target} (kind {result.kind}, {s.get('backend')}"
             f"{'/' + s['device'] if s.get('device') else ''}, {', '.join(s.get('dtypes', []))}, "
             f"seed {s.get('seed')})")
    rows = [(p.name, status_text(p.status.value), p.diagnosis + _example(p), _worst(p)) for p in result.properties]
    print_table(console, title, ("property", "status", "diagnosis", "worst error / bound"), rows,
                verdict_columns=("property", "status"), wide=("diagnosis",))
    counts = {}
    for p in result.properties:
        counts[p.status.value] = counts.get(p.status.value, 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    verdict = ("every applicable property passed" if result.passed else
               "INTERRUPTED: not every property ran, so nothing is passed" if result.incomplete else "FAILED")
    faults = f"; faults named: {', '.join(result.faults)}" if result.faults else ""
    if s.get("module_mode"):
        console.print(plain(s["module_mode"]))
    console.print(Text.assemble(plain(f"{len(result.properties)} properties in {seconds:.1f} s ({summary}): "),
                                plain(verdict, "green" if result.passed else "bold red"), plain(faults)))


def validate_document(result, seconds: float) -> dict:
    from verify import __version__

    return {"tool": "attnverify", "version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(), "seconds": round(seconds, 6), **result.to_dict()}


@click.command(epilog=VALIDATE_EXIT_CODES)
@click.argument("target", metavar="MODULE:ATTR")
@click.option("--kind", type=click.Choice(["sdpa", "mha", "block"]), default="sdpa", show_default=True,
              help="What the function computes: scaled dot-product attention, multi-head attention, a block.")
@click.option("--backend", type=click.Choice(["numpy", "cupy", "torch", "jax", "array_api_strict"]),
              help="The library its inputs are made in (default: judged from its code, else numpy).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Run it on the GPU (torch, cupy).")
@click.option("--dtype", "dtypes", type=click.Choice(DTYPES), multiple=True,
              help="A precision to run in (repeatable; default float64 and float32).")
@click.option("--layout", type=click.Choice(["bhsd", "bshd"]), default="bhsd", show_default=True,
              help="bshd: the function takes (B, N, H, K) arrays.")
@click.option("--mask-convention", type=click.Choice(["allow", "block"]), default="allow", show_default=True,
              help="block: its boolean mask is True where a key is blocked.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seeds the random problems and hypothesis's search (same seed, same examples).")
@click.option("--max-examples", type=click.IntRange(min=1), default=None,
              help="Random examples per hypothesis search [default: 100].")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds each property may take before it is TIMEOUT [default: 60].")
@click.option("--option", "option_pairs", metavar="KEY=VALUE", multiple=True,
              help="--kind mha/block: a size or convention the function does not state itself (repeatable): "
                   "d_model, num_heads, causal (mha); d_model, num_heads, d_ff, norm=pre|post, "
                   "approximate=none|tanh, eps (block).")
@click.option("--json", "json_path", type=OutputPath(dash=True),
              help="Write every property with its status, diagnosis, measurements and failing example "
                   "to this JSON file ('-': to stdout, the table to stderr).")
@click.pass_context
def validate(ctx: click.Context, target: str, kind: str, backend, device, dtypes, layout, mask_convention, seed,
             max_examples, time_limit, option_pairs, json_path) -> None:
    """Check an attention implementation MODULE:ATTR and name what is wrong.

    MODULE is an importable module or a .py file (the current directory is on
    sys.path); ATTR the function. A plain function is called fn(q, k, v, **kw)
    with NumPy arrays (torch tensors when its code uses torch, or with --backend),
    where kw holds only the options its signature names: mask= (True = may
    attend), causal=, scale=, bias=, window=, softcap=, enable_gqa=. Options it
    does not take make their properties NOT APPLICABLE. torch's and jax's SDPA
    are recognised (torch.nn.functional:scaled_dot_product_attention).

    --kind mha / block: an nn.MultiheadAttention, a TransformerEncoderLayer, a
    module with nn.Linear projections, or fn(x, params, ...) / fn(x, w_q, w_k,
    w_v, w_o, num_heads, ...) with the weights in the row convention; declare
    what it does not state with --option (e.g. --option norm=pre). See the
    README, "Multi-head attention and blocks".

    Each property prints PASS, FAIL (with the fault named and the failing
    example: the smallest, shrunk by hypothesis, where the property searches),
    NOT APPLICABLE, ERROR (the function raised) or TIMEOUT. The exit code is 0
    when every applicable property passes, 1 when one does not, 2 when the
    target cannot be imported or the backend is not installed. The module is
    imported and run in this process: validate only code you trust. Ctrl-C
    stops after the property in progress (twice: at once); the run is then
    incomplete, never passed.
    """
    from verify.validate import validate as run_battery

    to_stdout = json_path == "-"
    console = stdout_console(stderr=to_stdout)
    from verify.validate.options import parse_pairs

    try:
        options = parse_pairs(option_pairs)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--option'") from None
    fn, name = load_target(target)
    start = time.perf_counter()
    try:
        with InterruptGate() as gate, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")  # the candidate's own warnings: counted and said once, not a flood
            result = run_battery(fn, kind, backend=backend, device=device, dtypes=dtypes or None, layout=layout,
                                 mask_convention=mask_convention, seed=seed, max_examples=max_examples,
                                 time_limit=time_limit, name=name, options=options or None, stop=gate.stop)
    except (ValueError, TypeError) as exc:  # the library's argument checks: bad usage
        raise click.UsageError(str(exc)) from None
    seconds = time.perf_counter() - start
    # Ctrl-C after the last property stopped nothing: the result is complete and its own code stands
    interrupted = gate.pending and result.incomplete
    code = 130 if interrupted else 0 if result.passed else 1
    plan_exit(code)
    if json_path is not None:
        document = json.dumps({**validate_document(result, seconds), "candidate_warnings": len(caught)}, indent=2,
                              default=str)
        if to_stdout:
            click.echo(document)
        else:
            write_output(json_path, "--json", lambda: json_path.write_text(document, encoding="utf-8"))
    print_result(result, console, seconds)
    if caught:
        first = caught[0]
        console.print(plain(f"{len(caught)} warning{'s' if len(caught) > 1 else ''} from the candidate (first: "
                            f"{first.category.__name__}: {first.message} at {Path(first.filename).name}:{first.lineno})"))
    if json_path is not None and not to_stdout:
        console.print(plain(f"wrote {json_path}"))
    if gate.pending and not interrupted:
        console.print(plain("Ctrl-C came after the last property had finished: the run is complete", "bold yellow"))
    elif interrupted:
        console.print(plain(f"interrupted: not run: {', '.join(result.settings.get('not_run', [])) or 'none'}",
                            "bold yellow"))
    ctx.exit(code)
