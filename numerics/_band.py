"""Which keys a query may see by position: causal alignment and sliding window as one band.

Every positional rule of :func:`numerics.scaled_dot_product_attention` is a band on the
offset ``d = j - i - delta`` of key j from query i::

    causal            d <= 0
    window (l, r)     -l <= d <= r          (None on a side: unbounded)

with ``delta = M - N`` under bottom-right alignment (KV-cache decoding, FlashAttention
since 2.1) and ``delta = 0`` under top-left alignment (torch's ``is_causal``). Causal and
window together are the intersection of the two bands, itself a band ``lo <= d <= hi``.

The band is asked about any tile of the (N, M) score matrix, rows ``[i0, i1)`` times
columns ``[j0, j1)``: :meth:`KeyBand.coverage` says cheaply whether the tile is entirely
excluded, entirely allowed or cut, and :meth:`KeyBand.mask` builds the tile's boolean mask
(True = may attend). The untiled attention asks about the whole matrix; a tiled one asks
about each tile and skips those that are excluded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["KeyBand", "ALIGNMENTS", "check_causal", "check_window", "key_band"]

#: The alignments ``causal`` may name (True means "top_left").
ALIGNMENTS = ("top_left", "bottom_right")

NONE, SOME, ALL = "none", "some", "all"


def check_causal(causal: Any) -> str | None:
    """``causal`` as None (no causal mask), "top_left" or "bottom_right".

    Accepts False, True (= "top_left", torch's ``is_causal``), and the two names; anything
    else is an error naming the argument.
    """
    if isinstance(causal, (bool, np.bool_)):
        return "top_left" if causal else None
    if isinstance(causal, str):
        if causal in ALIGNMENTS:
            return causal
        raise ValueError(f"causal must be False, True, 'top_left' or 'bottom_right', got {causal!r}")
    raise TypeError(
        f"causal must be a bool (True or False) or 'top_left' or 'bottom_right', got {type(causal).__name__} {causal!r}"
    )


def check_window(window: Any) -> tuple[int | None, int | None] | None:
    """``window`` as None or a pair ``(left, right)`` of non-negative ints or None (unbounded)."""
    if window is None:
        return None
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise TypeError(
            f"window must be None or a pair (left, right) of non-negative ints or None, got {window!r}"
        )
    sides = []
    for side, value in zip(("left", "right"), window):
        if value is None:
            sides.append(None)
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"window's {side} side must be a non-negative int or None, got {type(value).__name__} {value!r}")
        if value < 0:
            raise ValueError(f"window's {side} side must be >= 0 (or None for unbounded), got {int(value)}")
        sides.append(int(value))
    return sides[0], sides[1]


@dataclass(frozen=True)
class KeyBand:
    """Key j allowed for query i iff ``lo <= j - i - delta <= hi`` (None: unbounded side).

    ``n`` and ``m`` are the query and key lengths of the whole problem; tiles are addressed
    in its coordinates.
    """

    n: int
    m: int
    delta: int = 0
    lo: int | None = None
    hi: int | None = None

    @property
    def unbounded(self) -> bool:
        """True when the band allows every key (no causal mask, no window)."""
        return self.lo is None and self.hi is None

    def _offsets(self, rows: tuple[int, int], cols: tuple[int, int]) -> tuple[int, int]:
        """Smallest and largest ``j - i - delta`` over a non-empty tile."""
        (i0, i1), (j0, j1) = rows, cols
        return j0 - (i1 - 1) - self.delta, (j1 - 1) - i0 - self.delta

    def coverage(self, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None) -> str:
        """"none" (no entry of the tile is allowed), "all" or "some", for rows ``[i0, i1)``
        and columns ``[j0, j1)`` (default: the whole matrix). An empty tile is "all"."""
        rows, cols = rows or (0, self.n), cols or (0, self.m)
        if rows[1] <= rows[0] or cols[1] <= cols[0] or self.unbounded:
            return ALL
        d_min, d_max = self._offsets(rows, cols)
        lo = -math.inf if self.lo is None else self.lo
        hi = math.inf if self.hi is None else self.hi
        if d_max < lo or d_min > hi or lo > hi:
            return NONE
        return ALL if lo <= d_min and d_max <= hi else SOME

    def mask(
        self,
        xp: ModuleType,
        rows: tuple[int, int] | None = None,
        cols: tuple[int, int] | None = None,
        device: Any = None,
    ) -> Any:
        """Boolean (i1 - i0, j1 - j0) mask of the tile, True = may attend, or None when the
        band allows every entry of it (``coverage == "all"``)."""
        rows, cols = rows or (0, self.n), cols or (0, self.m)
        if self.coverage(rows, cols) == ALL:
            return None
        i = xp.arange(rows[0], rows[1], device=device)[:, None]
        j = xp.arange(cols[0], cols[1], device=device)[None, :]
        d = j - i - self.delta
        keep = None
        if self.lo is not None:
            keep = d >= self.lo
        if self.hi is not None:
            keep = d <= self.hi if keep is None else keep & (d <= self.hi)
        return keep


def key_band(n: int, m: int, causal: str | None, window: tuple[int | None, int | None] | None) -> KeyBand:
    """The band of a checked ``causal`` (:func:`check_causal`) and ``window`` (:func:`check_window`).

    The window takes causal's alignment: ``delta = M - N`` under "bottom_right", else 0.
    """
    delta = m - n if causal == "bottom_right" else 0
    lo, hi = (None, None) if window is None else (-window[0] if window[0] is not None else None, window[1])
    if causal is not None:
        hi = 0 if hi is None else min(hi, 0)
    return KeyBand(n, m, delta, lo, hi)
