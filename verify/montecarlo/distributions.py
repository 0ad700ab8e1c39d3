"""Component distributions, standardised to mean 0 and variance 1.

Each is drawn with generator methods that NumPy's and CuPy's ``Generator`` share
(``standard_normal``, ``random``, ``integers``, ``standard_gamma``), so one sampler runs on both.

========== ================================ ================== ==========================
name        law                              E[z^4] (kurtosis)  note
========== ================================ ================== ==========================
normal      N(0, 1)                          3
uniform     Uniform(-sqrt 3, sqrt 3)         9/5
rademacher  +-1 with probability 1/2         1                  z^2 = 1 exactly
t5          Student t, 5 df, times sqrt(3/5) 9                  moments of order >= 5 infinite
========== ================================ ================== ==========================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ._checks import check_choice

__all__ = ["Distribution", "DISTRIBUTIONS", "get_distribution"]


@dataclass(frozen=True)
class Distribution:
    """A standardised (mean 0, variance 1) component law.

    Attributes
    ----------
    name : str
    label : str
        Human-readable description.
    kurtosis : float
        ``E[z^4]`` (3 for the normal law).
    finite_moments : float
        Moments of order below this are finite (inf: all of them).
    """

    name: str
    label: str
    kurtosis: float
    finite_moments: float = math.inf

    def draw(self, xp: Any, rng: Any, shape: tuple[int, ...]) -> Any:
        """An array of ``shape`` of iid standardised draws, float64, in namespace ``xp``.

        Parameters
        ----------
        xp : array namespace of the generator's arrays
        rng : numpy.random.Generator or cupy.random.Generator
        shape : tuple of int
        """
        if self.name == "normal":
            return rng.standard_normal(shape)
        if self.name == "uniform":
            return (rng.random(shape) - 0.5) * (2.0 * math.sqrt(3.0))
        if self.name == "rademacher":
            bits = rng.integers(0, 2, size=shape, dtype=xp.int8)
            return xp.astype(bits, xp.float64) * 2.0 - 1.0
        if self.name == "t5":
            z = rng.standard_normal(shape)
            chi2 = rng.standard_gamma(2.5, shape) * 2.0  # chi-square with 5 degrees of freedom
            return z * xp.sqrt(3.0 / chi2)  # t5 = z / sqrt(chi2 / 5), times sqrt(3/5)
        raise AssertionError(self.name)  # pragma: no cover


DISTRIBUTIONS: dict[str, Distribution] = {
    "normal": Distribution("normal", "N(0, 1)", 3.0),
    "uniform": Distribution("uniform", "Uniform(-sqrt 3, sqrt 3)", 9.0 / 5.0),
    "rademacher": Distribution("rademacher", "Rademacher (+-1)", 1.0),
    "t5": Distribution("t5", "Student t (5 df) * sqrt(3/5)", 9.0, finite_moments=5.0),
}


def get_distribution(name: str | Distribution) -> Distribution:
    """The distribution called ``name`` (ValueError listing the known ones otherwise)."""
    if isinstance(name, Distribution):
        return name
    return DISTRIBUTIONS[check_choice("dist", name, DISTRIBUTIONS)]
