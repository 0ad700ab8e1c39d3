"""The registry of named derivations (``attnverify derive NAME`` / ``--list``)."""

from __future__ import annotations

import contextlib
import difflib
import functools
import time
from typing import Callable, Iterator

from ..derivation import Derivation

__all__ = ["DERIVATIONS", "TITLES", "register", "get", "list_derivations", "collect_registrations"]

#: name -> function returning the built and checked :class:`Derivation` (cached).
DERIVATIONS: dict[str, Callable[[], Derivation]] = {}
#: name -> one-line title, available without building anything.
TITLES: dict[str, str] = {}
#: Open :func:`collect_registrations` blocks, innermost last: where ``register`` records instead.
_COLLECTORS: list[dict[str, Callable[[], Derivation]]] = []


def register(name: str, title: str) -> Callable[[Callable[[], Derivation]], Callable[[], Derivation]]:
    """Decorator: register a function that builds a :class:`~proofs.Derivation` under ``name``.

    The decorated function takes no argument and returns the derivation (its ``name`` must
    be ``name``). Calling the registered function builds the derivation, checks every step
    and caches the result, so later calls return the same, already checked, object.
    ``attnverify prove FILE`` runs every function its script registers (each in the
    script's own registry, so a script can be proved twice in one process); elsewhere the
    function joins the toolkit's registry, which ``proofs.derivations.get(name)`` reads.

    Parameters
    ----------
    name : str
        Short name of the derivation, unique in its registry (``"softmax-jacobian"``).
    title : str
        One-line title, listed without building anything.

    Returns
    -------
    callable
        A decorator. The function it returns builds, checks and caches the derivation, and
        carries ``derivation_name``, ``title`` and ``build`` (the undecorated builder).

    Raises
    ------
    ValueError
        When ``name`` is empty or already registered, or (when the function is called) the
        derivation it builds has another name.

    Examples
    --------
    Registering changes the toolkit's registry, so this example is not run:

    >>> import sympy as sp
    >>> from proofs import Derivation, Step, register
    >>> x = sp.Symbol("x", real=True)
    >>> @register("square-of-sum", "The square of a sum")  # doctest: +SKIP
    ... def square_of_sum():
    ...     return Derivation("square-of-sum", "The square of a sum", r"$(x+1)^2 = x^2+2x+1$",
    ...                       [Step((x + 1) ** 2, x**2 + 2 * x + 1, "expand")])
    >>> square_of_sum().valid  # doctest: +SKIP
    True
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"register: name must be a non-empty string, got {name!r}")

    def deco(build: Callable[[], Derivation]) -> Callable[[], Derivation]:
        if not callable(build):
            raise TypeError(f"register({name!r}) decorates a function returning a Derivation, "
                            f"got {type(build).__name__}")

        @functools.lru_cache(maxsize=None)
        def checked() -> Derivation:
            start = time.perf_counter()
            derivation = build()
            if not isinstance(derivation, Derivation):
                raise TypeError(f"the function registered as {name!r} must return a Derivation, "
                                f"got {type(derivation).__name__}")
            if derivation.name != name:
                raise ValueError(f"derivation registered as {name!r} is named {derivation.name!r}")
            derivation.check()
            derivation.build_seconds = time.perf_counter() - start
            return derivation

        functools.update_wrapper(checked, build)
        checked.derivation_name = name  # type: ignore[attr-defined]
        checked.title = title  # type: ignore[attr-defined]
        checked.build = build  # type: ignore[attr-defined]  # uncached, unchecked builder (tests)
        ours = getattr(build, "__module__", "").startswith(f"{__package__}.")  # the toolkit's own, always global
        registry = _COLLECTORS[-1] if _COLLECTORS and not ours else DERIVATIONS
        if name in registry:
            raise ValueError(f"derivation {name!r} registered twice")
        registry[name] = checked
        if registry is DERIVATIONS:
            TITLES[name] = title
        return checked

    return deco


@contextlib.contextmanager
def collect_registrations() -> Iterator[dict[str, Callable[[], Derivation]]]:
    """Within the block, :func:`register` records into the dict yielded, not the toolkit's registry.

    ``attnverify prove`` loads a user's script inside one, so the script's derivations are
    its own (a name may repeat one of ours, and the same script may be loaded twice).
    """
    collected: dict[str, Callable[[], Derivation]] = {}
    _COLLECTORS.append(collected)
    try:
        yield collected
    finally:  # by identity: two collectors with the same entries compare equal
        del _COLLECTORS[next(i for i, c in enumerate(_COLLECTORS) if c is collected)]


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
