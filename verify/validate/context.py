"""What a property receives: the adapted candidate, the run's settings, its own random stream, and
a clock that stops a property at its time limit.

Every call of the candidate goes through :meth:`PropertyContext.call` (or :meth:`gradients`): it
checks the time limit before each call, so a slow candidate stops at the next call, and the runner
(:mod:`verify.validate.runner`) stops one that hangs inside a call.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from verify.validate.candidate import Candidate, Outcome
from verify.validate.result import Measurement, PropertyResult, Status


class CandidateError(Exception):
    """The candidate raised (wrapped by :meth:`PropertyContext.call`, so that a property tells the
    candidate's exceptions from its own). ``__cause__`` is the candidate's exception."""

    def __init__(self, exc: BaseException):
        super().__init__(f"{type(exc).__name__}: {exc}")
        self.original = exc


class TimeLimitReached(BaseException):
    """Raised in a property's thread when its time is up. A BaseException so that neither the
    candidate's nor hypothesis's ``except Exception`` swallows it."""


@dataclass(frozen=True)
class Settings:
    """What the battery runs with (the public arguments of :func:`verify.validate.validate`).

    Attributes
    ----------
    kind : str
    dtypes : tuple of str
        The precisions the candidate is run in (``("float64", "float32")`` by default).
    seed : int
        Seeds every property's random stream and hypothesis's.
    max_examples : int
        Random examples per hypothesis search (shrinking comes on top).
    time_limit : float
        Seconds each property may take; past it the property is TIMEOUT.
    layout, mask_convention : str
        ``"bhsd"`` | ``"bshd"``; ``"allow"`` | ``"block"`` (how the candidate takes them: the adapter's business).
    """

    kind: str = "sdpa"
    dtypes: tuple[str, ...] = ("float64", "float32")
    seed: int = 0
    max_examples: int = 100
    time_limit: float = 60.0
    layout: str = "bhsd"
    mask_convention: str = "allow"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "dtypes": list(self.dtypes), "seed": self.seed, "max_examples": self.max_examples,
                "time_limit": self.time_limit, "layout": self.layout, "mask_convention": self.mask_convention,
                **self.extra}


class PropertyContext:
    """Handed to every property function.

    Attributes
    ----------
    candidate : Candidate
    settings : Settings
    name : str
        The property's name (results made with :meth:`passed` etc. carry it).
    rng : numpy.random.Generator
        The property's own stream: ``SeedSequence([seed, crc32(name)])``, so a property draws the
        same numbers whichever others run.
    deadline : float
        ``time.monotonic()`` value past which the property must stop.
    """

    def __init__(self, candidate: Candidate, settings: Settings, name: str, deadline: float | None = None):
        self.candidate = candidate
        self.settings = settings
        self.name = name
        self.entropy = [int(settings.seed), zlib.crc32(name.encode())]
        self.rng = np.random.default_rng(np.random.SeedSequence(self.entropy))
        self.deadline = deadline if deadline is not None else time.monotonic() + settings.time_limit
        self.calls = 0
        #: The last call's input shapes, dtype and options (what a TIMEOUT reports as its example).
        self.current: dict[str, Any] | None = None
        #: True while the candidate runs (a TIMEOUT then means: this call did not return).
        self.in_call = False

    # ------------------------------------------------------------------ the clock

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def check_time(self) -> None:
        """Raise :class:`TimeLimitReached` when the property's time is up."""
        if time.monotonic() > self.deadline:
            raise TimeLimitReached(f"property {self.name!r} ran past its time limit of {self.settings.time_limit:g} s")

    # ------------------------------------------------------------------ the candidate

    def call(self, *arrays: np.ndarray, dtype: str, **options: Any) -> Outcome:
        """The candidate on host arrays, cast to ``dtype`` (see :meth:`Candidate.__call__`); what it
        raises comes out as :class:`CandidateError`."""
        self.check_time()
        self.calls += 1
        self.current = _describe_call(arrays, dtype, options)
        self.in_call = True  # left True when TimeLimitReached is raised inside the call
        try:
            result = self.candidate(*arrays, dtype=dtype, **options)
        except Exception as exc:
            self.in_call = False
            raise CandidateError(exc) from exc
        self.in_call = False
        return result

    def gradients(self, *arrays: np.ndarray, d_out: np.ndarray, dtype: str, **options: Any) -> dict[str, np.ndarray]:
        """The candidate's gradients (see :meth:`Candidate.gradients`)."""
        self.check_time()
        self.calls += 1
        self.current = {**_describe_call(arrays, dtype, options), "gradients": True}
        self.in_call = True  # left True when TimeLimitReached is raised inside the call
        try:
            result = self.candidate.gradients(*arrays, d_out=d_out, dtype=dtype, **options)
        except Exception as exc:
            self.in_call = False
            raise CandidateError(exc) from exc
        self.in_call = False
        return result

    def dtypes(self) -> tuple[str, ...]:
        """The settings' dtypes the candidate's library holds."""
        return tuple(d for d in self.settings.dtypes if self.candidate.backend.supports(d))

    def generator(self, *key: int) -> np.random.Generator:
        """A stream derived from the property's seed and ``key`` (one per hypothesis example)."""
        return np.random.default_rng(np.random.SeedSequence(self.entropy + [int(k) for k in key]))

    # ------------------------------------------------------------------ results

    def result(self, status: Status, diagnosis: str, measurements=(), example=None, fault=None,
               shrunk: bool = False) -> PropertyResult:
        return PropertyResult(self.name, status, diagnosis, tuple(measurements), example, fault, shrunk)

    def passed(self, diagnosis: str, measurements: tuple[Measurement, ...] | list = (), example=None) -> PropertyResult:
        return self.result(Status.PASS, diagnosis, measurements, example)

    def failed(self, diagnosis: str, measurements=(), example=None, fault: str | None = None,
               shrunk: bool = False) -> PropertyResult:
        """A FAIL; ``fault`` is the named fault's code (``"scale:none"``, ``"causal:bottom_right"``);
        ``shrunk``: the example is the smallest failure a hypothesis search shrank to."""
        return self.result(Status.FAIL, diagnosis, measurements, example, fault, shrunk)

    def not_applicable(self, diagnosis: str) -> PropertyResult:
        return self.result(Status.NOT_APPLICABLE, diagnosis)

    def error(self, diagnosis: str, example=None, shrunk: bool = False) -> PropertyResult:
        return self.result(Status.ERROR, diagnosis, (), example, shrunk=shrunk)


def _describe_call(arrays, dtype: str, options: dict) -> dict[str, Any]:
    names = ("q", "k", "v") if len(arrays) == 3 else tuple(f"arg{i}" for i in range(len(arrays)))
    out: dict[str, Any] = {n: list(np.shape(a)) for n, a in zip(names, arrays)}
    out["dtype"] = dtype
    for key, value in options.items():
        if value is None or value is False:
            continue
        out[key] = list(np.shape(value)) if isinstance(value, np.ndarray) else value
    return out
