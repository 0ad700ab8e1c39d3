"""Argument checks shared by the Monte Carlo modules.

Every check raises ValueError (or TypeError for a wrong type) naming the argument, what was
expected and what came, so that the command line can turn it into a usage error unchanged.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

__all__ = [
    "check_alpha",
    "check_int",
    "check_positive_float",
    "check_real",
    "check_choice",
    "check_dks",
]


def check_int(name: str, value: Any, *, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """``value`` as an int (float values that are whole numbers, such as 1e6, are accepted)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got a bool ({value!r})")
    if isinstance(value, numbers.Integral):
        out = int(value)
    elif isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer():
        out = int(value)
    else:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and out < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return out


def check_real(name: str, value: Any) -> float:
    """``value`` as a finite float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return out


def check_positive_float(name: str, value: Any, *, allow_none: bool = False, upper: float | None = None) -> float | None:
    """``value`` as a float in (0, upper) (or (0, inf) without ``upper``)."""
    if value is None and allow_none:
        return None
    out = check_real(name, value)
    if out <= 0 or (upper is not None and out >= upper):
        interval = f"(0, {upper:g})" if upper is not None else "(0, inf)"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return out


def check_alpha(value: Any, name: str = "alpha") -> float:
    """An error rate strictly between 0 and 1."""
    return check_positive_float(name, value, upper=1.0)


def check_margin(value: Any, name: str = "margin") -> float:
    """A relative equivalence margin, strictly between 0 and 1: at 1 or more the band
    ``theta0 (1 +- margin)`` reaches 0 and past it, so "equal" would admit any smaller value."""
    out = check_real(name, value)
    if not 0 < out < 1:
        raise ValueError(
            f"{name} must lie in (0, 1) (a relative margin of 1 or more makes theta0 (1 +- margin) reach 0, "
            f"so any smaller value would count as equal), got {value!r}"
        )
    return out


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` must be one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_dks(d_ks: Any, name: str = "d_k") -> tuple[int, ...]:
    """A non-empty sequence of key widths, each an integer >= 1, duplicates removed, order kept."""
    if isinstance(d_ks, numbers.Integral) and not isinstance(d_ks, bool):
        d_ks = (d_ks,)
    try:
        items = list(d_ks)
    except TypeError:
        raise ValueError(f"{name} must be an integer >= 1 or a sequence of them, got {d_ks!r}") from None
    if not items:
        raise ValueError(f"{name} must name at least one key width, got an empty sequence")
    out: list[int] = []
    for item in items:
        value = check_int(name, item, minimum=1)
        if value not in out:
            out.append(value)
    return tuple(out)
