"""What the validate battery returns: one :class:`PropertyResult` a property, gathered in a
:class:`ValidationResult` (small dataclasses, as scipy's results, never bare tuples)."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class Status(str, enum.Enum):
    """The outcome of one property of the battery."""

    PASS = "PASS"
    FAIL = "FAIL"
    #: The candidate does not accept what the property needs (a feature, weights, gradients).
    NOT_APPLICABLE = "NOT APPLICABLE"
    #: The candidate raised where a correct implementation would not; the battery went on.
    ERROR = "ERROR"
    #: The candidate did not return within the time limit; the battery went on.
    TIMEOUT = "TIMEOUT"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Measurement:
    """One measured error against the bound it must stay under.

    ``error`` is the candidate's error against the float64 (or mpmath) reference; ``bound`` is
    ``k * plain_error + floor`` by the tolerance rule (see :mod:`verify.validate.tolerance`), or a
    stated absolute bound when ``plain_error`` is None.
    """

    what: str
    error: float
    bound: float
    plain_error: float | None = None
    k: float | None = None
    floor: float | None = None

    @property
    def ok(self) -> bool:
        # NaN compares False: a NaN error never passes.
        return bool(self.error <= self.bound)


@dataclass(frozen=True)
class PropertyResult:
    """The outcome of one property.

    Attributes
    ----------
    name : str
        The property's name (``"agreement"``, ``"causality"``, ...).
    status : Status
    diagnosis : str
        In words: what was found (a named fault when it failed, why when not applicable).
    measurements : tuple of Measurement
        The errors measured, each with its bound.
    example : dict or None
        The failing example (shapes, dtype, options), when the property failed.
    shrunk : bool
        True when ``example`` is the smallest failure hypothesis shrank to (a property that
        searches); False for a fixed problem (kind mha / block, most single-problem checks).
    fault : str or None
        The named fault's short code when the property failed and the fault was identified
        (``"scale:none"``, ``"causal:bottom_right"``, ``"mask:inverted"``); None otherwise.
    """

    name: str
    status: Status
    diagnosis: str
    measurements: tuple[Measurement, ...] = ()
    example: dict[str, Any] | None = None
    fault: str | None = None
    shrunk: bool = False

    @property
    def applicable(self) -> bool:
        return self.status is not Status.NOT_APPLICABLE

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status.value
        return out


@dataclass(frozen=True)
class ValidationResult:
    """The battery's result for one candidate.

    ``passed`` is True when every applicable property passed; FAIL, ERROR and TIMEOUT all count
    against it, and so does an interrupted run (``incomplete``: some properties were not run). ``settings`` holds what the battery ran with (kind, backend, dtypes, seed, ...).
    """

    target: str
    kind: str
    properties: tuple[PropertyResult, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def incomplete(self) -> bool:
        """True when the run was stopped (Ctrl-C) before every property ran: it never reads as passed."""
        return bool(self.settings.get("incomplete"))

    @property
    def passed(self) -> bool:
        return not self.incomplete and all(p.status in (Status.PASS, Status.NOT_APPLICABLE) for p in self.properties) \
            and any(p.status is Status.PASS for p in self.properties)

    @property
    def failures(self) -> tuple[PropertyResult, ...]:
        return tuple(p for p in self.properties if p.status in (Status.FAIL, Status.ERROR, Status.TIMEOUT))

    @property
    def faults(self) -> tuple[str, ...]:
        """The codes of the faults the failing properties named (in property order, no repeats)."""
        return tuple(dict.fromkeys(p.fault for p in self.properties if p.fault))

    def __getitem__(self, name: str) -> PropertyResult:
        for p in self.properties:
            if p.name == name:
                return p
        raise KeyError(f"no property named {name!r}; the battery ran {[p.name for p in self.properties]}")

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "kind": self.kind, "passed": self.passed, "incomplete": self.incomplete,
                "not_run": list(self.settings.get("not_run", [])), "settings": dict(self.settings), "properties": [p.to_dict() for p in self.properties]}
