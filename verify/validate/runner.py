"""Runs a kind's properties on one candidate, each isolated: what one property does (raise, hang,
exhaust its time) never stops the others.

How a hung call is stopped. Each property runs in a worker thread; the runner waits up to the
time limit. A property that reaches its limit between calls stops by itself
(:meth:`PropertyContext.check_time` raises :class:`TimeLimitReached`). One stuck *inside* a call gets
:class:`TimeLimitReached` raised asynchronously in its thread (CPython's
``PyThreadState_SetAsyncExc``): that ends a hang in Python code (a loop) at its next bytecode. A
call blocked in C (a lock, a sleep in a native library) cannot be interrupted that way; its daemon
thread is abandoned, left to finish or to die with the process, and the battery goes on. A
subprocess could always be killed, but it would have to import the candidate again (a closure or a
module-less function cannot be sent), and a CUDA context does not survive a fork; the thread
costs nothing when nothing hangs.
"""

from __future__ import annotations

import ctypes
import threading
import traceback
from typing import Any, Callable, Iterable

from verify.validate.adapters import ReturnTypeError, adapt
from verify.validate.backends import require
from verify.validate.candidate import Candidate
from verify.validate.context import CandidateError, PropertyContext, Settings, TimeLimitReached
from verify.validate.options import check_options
from verify.validate.registry import Property, properties_for
from verify.validate.result import PropertyResult, Status, ValidationResult

#: Default settings of :func:`validate` (sized so a correct NumPy SDPA takes well under 60 s on 2 cores).
DEFAULT_DTYPES = ("float64", "float32")
DEFAULT_MAX_EXAMPLES = 100
DEFAULT_TIME_LIMIT = 60.0
#: Seconds a property gets, past its time limit, to stop after the asynchronous exception.
GRACE = 2.0


def validate(fn: Any, kind: str = "sdpa", *, backend: str | None = None, device: str | None = None,
             dtypes: Iterable[str] | str | None = None, layout: str = "bhsd", mask_convention: str = "allow",
             seed: int = 0, max_examples: int | None = None, time_limit: float | None = None,
             properties: Iterable[str] | None = None, name: str | None = None, options: dict | None = None, stop=None,
             on_property: Callable[[PropertyResult], None] | None = None) -> ValidationResult:
    """Run the battery of ``kind`` on ``fn`` and return what each property found.

    Parameters
    ----------
    fn : callable or Candidate
        The implementation. A plain SDPA function is called ``fn(q, k, v, **kw)`` where ``kw`` holds
        those of ``mask=`` (True = may attend), ``causal=``, ``scale=``, ``bias=``, ``window=``,
        ``softcap=``, ``enable_gqa=`` its signature accepts; known peers (torch's and jax's SDPA)
        are recognised. An already adapted :class:`Candidate` is used as it is.
    kind : {"sdpa", "mha", "block"}
    backend : {"numpy", "torch", "cupy", "jax", "array_api_strict"}, optional
        The library its inputs are made in; by default judged from the function (NumPy otherwise).
    device : {"cpu", "cuda"}, optional
        ``"cuda"`` runs the candidate on the GPU (torch, CuPy); the reference stays float64 on the host.
    dtypes : str or iterable of str, optional
        Precisions to run in; default ``("float64", "float32")``.
    layout : {"bhsd", "bshd"}
        ``"bshd"``: the candidate takes (B, N, H, K) arrays (heads after the sequence). Plain
        functions only: known peers have their own layout, which the adapter knows.
    mask_convention : {"allow", "block"}
        ``"block"``: the candidate's boolean mask is True where a key is blocked (nn.MultiheadAttention's).
        Plain functions only, as ``layout``.
    seed : int
        Seeds the random problems and hypothesis (same seed, same examples).
    max_examples : int, optional
        Random examples per hypothesis search (default 100).
    time_limit : float, optional
        Seconds each property may take (default 60); past it, TIMEOUT.
    properties : iterable of str, optional
        Run only these properties (by name).
    name : str, optional
        How the report names the candidate.
    options : dict, optional
        Kind "mha" / "block": the sizes and conventions of a candidate that does not say them
        itself (``{"norm": "pre", "approximate": "tanh", "d_model": 16, "num_heads": 4}``; see
        :mod:`verify.validate.options`; strings as the command line's ``--option KEY=VALUE`` give
        them are converted). An unknown key or a bad value: ValueError naming the option.
    stop : threading.Event, optional
        Checked between properties: once set, the rest are not run (``settings["not_run"]`` lists
        them, ``settings["incomplete"]`` is True). The command line sets it on Ctrl-C.
    on_property : callable, optional
        Called with each PropertyResult as it is ready.

    Returns
    -------
    ValidationResult
    """
    settings = make_settings(kind, dtypes=dtypes, seed=seed, max_examples=max_examples, time_limit=time_limit,
                             layout=layout, mask_convention=mask_convention)
    # The kind's module first: importing it registers the kind's properties and its adapters.
    chosen = _choose(properties_for(kind), properties)
    options = check_options(kind, options)  # before the candidate: a bad option is the caller's error, named
    if isinstance(fn, Candidate) and options:
        raise ValueError(f"options {sorted(options)}: fn is an already adapted Candidate; declare them when adapting it "
                         "(as_mha_candidate / as_block_candidate) or pass the plain callable")
    if backend is not None:
        require(backend)
    candidate = fn if isinstance(fn, Candidate) else adapt(
        fn, kind, backend=backend, device=device, layout=layout, mask_convention=mask_convention, name=name,
        options=options)
    unsupported = [d for d in settings.dtypes if not candidate.backend.supports(d)]
    if len(unsupported) == len(settings.dtypes):
        raise ValueError(f"dtypes {list(settings.dtypes)}: backend {candidate.backend.name!r} has none of them "
                         f"(it has {[d for d in ('float64', 'float32', 'float16', 'bfloat16') if candidate.backend.supports(d)]})")
    results, not_run = [], []
    for prop in chosen:
        if stop is not None and stop.is_set():
            not_run.append(prop.name)
            continue
        results.append(run_property(prop, candidate, settings))
        if on_property is not None:
            on_property(results[-1])
    info = {**settings.to_dict(), "backend": candidate.backend.name, "device": candidate.backend.device,
            "features": sorted(candidate.features), "adapter": candidate.note}
    if options:
        info["options"] = dict(options)
    if hasattr(fn, "training") and hasattr(fn, "eval"):  # a torch module: the adapters run eval-mode copies
        info["module_mode"] = "module put in eval mode for the battery (copies of it: dropout off; yours untouched)"
    if not_run:
        info.update(incomplete=True, not_run=not_run)
    if unsupported:
        info["dtypes_not_run"] = unsupported  # the library has no such dtype
    return ValidationResult(candidate.name, kind, tuple(results), info)


def make_settings(kind: str, *, dtypes=None, seed: int = 0, max_examples=None, time_limit=None,
                  layout: str = "bhsd", mask_convention: str = "allow") -> Settings:
    """Checked :class:`Settings` (bad values: ValueError naming the argument)."""
    from verify.validate.tolerance import UNIT_ROUNDOFF

    if dtypes is None:
        dtypes = DEFAULT_DTYPES
    elif isinstance(dtypes, str):
        dtypes = (dtypes,)
    dtypes = tuple(dtypes)
    bad = [d for d in dtypes if d not in UNIT_ROUNDOFF]
    if not dtypes or bad:
        raise ValueError(f"dtypes must be a non-empty selection of {sorted(UNIT_ROUNDOFF)}, got {list(dtypes)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    max_examples = DEFAULT_MAX_EXAMPLES if max_examples is None else max_examples
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 1:
        raise ValueError(f"max_examples must be a positive int, got {max_examples!r}")
    time_limit = DEFAULT_TIME_LIMIT if time_limit is None else time_limit
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0:
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    if layout not in ("bhsd", "bshd"):
        raise ValueError(f"layout must be 'bhsd' or 'bshd', got {layout!r}")
    if mask_convention not in ("allow", "block"):
        raise ValueError(f"mask_convention must be 'allow' (True = may attend) or 'block' (True = blocked), "
                         f"got {mask_convention!r}")
    return Settings(kind=kind, dtypes=dtypes, seed=seed, max_examples=max_examples, time_limit=float(time_limit),
                    layout=layout, mask_convention=mask_convention)


def _choose(available: tuple[Property, ...], names: Iterable[str] | None) -> tuple[Property, ...]:
    if names is None:
        return available
    names = [names] if isinstance(names, str) else list(names)
    known = {p.name for p in available}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"properties must be among {sorted(known)}, got unknown {unknown}")
    return tuple(p for p in available if p.name in names)


def run_property(prop: Property, candidate: Candidate, settings: Settings) -> PropertyResult:
    """Run one property in a worker thread under the time limit; never raises for the candidate's sake."""
    missing = candidate.missing(prop.needs)
    if missing:
        return PropertyResult(prop.name, Status.NOT_APPLICABLE, _missing_text(candidate, missing))
    ctx = PropertyContext(candidate, settings, prop.name)
    box: dict[str, Any] = {}
    worker = threading.Thread(target=_guarded, args=(prop.fn, ctx, box), name=f"validate:{prop.name}", daemon=True)
    worker.start()
    worker.join(max(ctx.time_left(), 0.0) + 0.05)
    if worker.is_alive():
        _raise_in(worker, TimeLimitReached)
        worker.join(GRACE)
    if "result" in box:
        return box["result"]
    limit = f"{settings.time_limit:g} s"
    if worker.is_alive():
        return PropertyResult(prop.name, Status.TIMEOUT,
                              f"the candidate did not return within the time limit of {limit} and could not be "
                              f"interrupted (it is blocked in native code; its thread was abandoned)",
                              example=ctx.current)
    if "timeout" in box and box.get("in_call"):
        return PropertyResult(prop.name, Status.TIMEOUT,
                              f"the candidate did not return within the time limit of {limit} "
                              f"({ctx.calls} call(s) made); the call was stopped", example=ctx.current)
    if "timeout" in box:
        return PropertyResult(prop.name, Status.TIMEOUT,
                              f"the property ran past its time limit of {limit} between calls ({ctx.calls} call(s) "
                              f"made, each returned): the candidate is slow, or the property's own work is; "
                              f"raise --time-limit")
    if "crash" in box:
        return PropertyResult(prop.name, Status.ERROR, box["crash"])
    return PropertyResult(prop.name, Status.ERROR, "the property ended without a result")  # pragma: no cover


def _guarded(fn: Callable, ctx: PropertyContext, box: dict) -> None:
    try:
        result = fn(ctx)
        if not isinstance(result, PropertyResult):
            raise TypeError(f"property {ctx.name!r} returned {type(result).__name__}, not a PropertyResult")
        box["result"] = result
    except TimeLimitReached:
        box["timeout"] = True
        box["in_call"] = ctx.in_call
    except CandidateError as exc:  # the candidate raised where the property did not expect it
        if isinstance(exc.original, ReturnTypeError):  # it did not raise: it returned the wrong type
            box["crash"] = str(exc.original)
        else:
            box["crash"] = f"the candidate raised {exc}" + _where(exc.original)
    except Exception as exc:  # noqa: BLE001 - a bug of the battery: reported, never blamed on the candidate
        box["crash"] = f"the property itself failed (a bug in the battery): {type(exc).__name__}: {exc}" + _where(exc)
    except BaseException:  # noqa: BLE001 - SystemExit from a candidate: report, never exit the battery
        box["crash"] = "raised " + traceback.format_exc(limit=1).strip().splitlines()[-1]


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _raise_in(thread: threading.Thread, exc_type: type[BaseException]) -> None:
    """Raise ``exc_type`` in ``thread`` at its next Python bytecode (CPython)."""
    if thread.ident is None:
        return
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc_type))


def _missing_text(candidate: Candidate, missing: list[str]) -> str:
    words = []
    for m in missing:
        if m == "weights":
            words.append("does not return its attention weights")
        elif m == "gradients":
            words.append(f"is not differentiable in its library (backend {candidate.backend.name})")
        else:
            words.append(f"does not accept {m}=")
    return f"the candidate {' and '.join(words)}"
