"""The numeric cross-check step shared by the derivations of issue 9."""

from __future__ import annotations

from typing import Callable

from ..derivation import Custom

__all__ = ["max_difference_check"]


def max_difference_check(compare: Callable[[], dict[str, float]], results: dict, tol: float,
                         key: str = "max_abs_difference") -> Custom:
    """A :class:`~proofs.derivation.Custom` checker: ``compare()`` returns named maximum absolute
    differences, all must be ``<= tol``; they are stored in ``results[key]`` when the step runs."""

    def run() -> tuple[bool, str]:
        worst = compare()
        results[key] = worst
        ok = all(v <= tol for v in worst.values())
        return ok, ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) + f" (tolerance {tol:g})"

    return Custom(run, f"numeric cross-check (float64, max abs difference <= {tol:g})")
