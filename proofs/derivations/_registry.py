"""The registry of named derivations (``attnverify derive NAME`` / ``--list``)."""

from __future__ import annotations

import difflib
import functools
import time
from typing import Callable

from ..derivation import Derivation

__all__ = ["DERIVATIONS", "TITLES", "register", "get", "list_derivations"]

#: name -> function returning the built and checked :class:`Derivation` (cached).
DERIVATIONS: dict[str, Callable[[], Derivation]] = {}
#: name -> one-line title, available without building anything.
TITLES: dict[str, str] = {}


def register(name: str, title: str) -> Callable[[Callable[[], Derivation]], Callable[[], Derivation]]:
    """Register ``build`` under ``name``; the registered function builds, checks and caches.

    Derivations are pure functions of nothing, so the first call builds and checks the
    steps and later calls return the same (already checked) object; ``build_seconds`` on
    it records the time of that first build + check.
    """

    def deco(build: Callable[[], Derivation]) -> Callable[[], Derivation]:
        @functools.lru_cache(maxsize=None)
        def checked() -> Derivation:
            start = time.perf_counter()
            derivation = build()
            if derivation.name != name:
                raise AssertionError(f"derivation registered as {name!r} is named {derivation.name!r}")
            derivation.check()
            derivation.build_seconds = time.perf_counter() - start
            return derivation

        functools.update_wrapper(checked, build)
        checked.derivation_name = name  # type: ignore[attr-defined]
        checked.title = title  # type: ignore[attr-defined]
        checked.build = build  # type: ignore[attr-defined]  # uncached, unchecked builder (tests)
        if name in DERIVATIONS:
            raise ValueError(f"derivation {name!r} registered twice")
        DERIVATIONS[name] = checked
        TITLES[name] = title
        return checked

    return deco


def get(name: str) -> Derivation:
    """The checked derivation called ``name``; KeyError naming the close matches."""
    try:
        return DERIVATIONS[name]()
    except KeyError:
        close = difflib.get_close_matches(name, list(DERIVATIONS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"no derivation named {name!r}{hint} (known: {', '.join(DERIVATIONS)})") from None


def list_derivations() -> list[tuple[str, str]]:
    """``(name, title)`` for every registered derivation, in registration order."""
    return list(TITLES.items())
