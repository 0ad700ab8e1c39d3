"""Sizes and conventions the caller declares for kind="mha" / "block" candidates.

A plain function has no sizes of its own and may not say which conventions it follows; the caller
declares them, from Python ``validate(fn, kind="block", options={"norm": "pre"})`` or from the
command line ``--option norm=pre`` (repeatable). :func:`check_options` turns either form into
checked Python values; every error names the option, what was expected and what came.

kind="mha"
    ``d_model``, ``num_heads`` (the sizes a plain function is run at; a module has its own, and a
    value that disagrees with it is an error), ``causal`` (the candidate always masks causally,
    top-left, without being asked: nanoGPT's ``CausalSelfAttention``).
kind="block"
    ``d_model``, ``num_heads``, ``d_ff`` (as above), ``norm`` ("post" or "pre"), ``approximate``
    (the GELU: "none" = erf, or "tanh"), ``eps`` (the layer norms' epsilon, plain functions).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

__all__ = ["KIND_OPTIONS", "check_options", "parse_pairs"]

_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def _positive(convert: type, words: str, types: tuple) -> Callable[[str, Any], Any]:
    """A check for a positive number: ``convert`` reads it from a string, ``types`` are accepted as they are."""
    def check(key: str, value: Any):
        if isinstance(value, str):
            try:
                value = convert(value.strip())
            except ValueError:
                raise ValueError(f"option {key!r} must be {words}, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, types) or not value > 0:
            raise ValueError(f"option {key!r} must be {words}, got {value!r}")
        return convert(value)
    return check


_positive_int = _positive(int, "a positive integer", (int,))
_positive_float = _positive(float, "a positive number", (int, float))


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    if not isinstance(value, bool):
        raise ValueError(f"option {key!r} must be true or false, got {value!r}")
    return value


def _choice(*allowed: str) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if value not in allowed:
            raise ValueError(f"option {key!r} must be one of {list(allowed)}, got {value!r}")
        return value
    return check


_SIZES = {"d_model": _positive_int, "num_heads": _positive_int}
#: The options each kind takes, with the check (and, from a string, the conversion) of each.
KIND_OPTIONS: dict[str, dict[str, Callable[[str, Any], Any]]] = {
    "mha": {**_SIZES, "causal": _flag},
    "block": {**_SIZES, "d_ff": _positive_int, "norm": _choice("post", "pre"),
              "approximate": _choice("none", "tanh"), "eps": _positive_float},
}


def check_options(kind: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` checked for ``kind`` (strings, as the command line gives them, converted).

    Raises
    ------
    ValueError
        Naming the option: an unknown key (with the kind's known ones), a bad value, or
        ``d_model`` not divisible by ``num_heads``; any option for kind="sdpa" (its conventions
        are ``layout`` and ``mask_convention``).
    """
    if not options:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a mapping of option names to values, got {type(options).__name__}")
    if kind not in KIND_OPTIONS:
        raise ValueError(f"options: kind {kind!r} takes none (its calling conventions are set by layout= and "
                         f"mask_convention=); got {sorted(options)}")
    known = KIND_OPTIONS[kind]
    unknown = [k for k in options if k not in known]
    if unknown:
        raise ValueError(f"option {unknown[0]!r} is not an option of kind {kind!r}; it takes {sorted(known)}")
    checked = {k: known[k](k, v) for k, v in options.items()}
    if "d_model" in checked and "num_heads" in checked and checked["d_model"] % checked["num_heads"]:
        raise ValueError(f"option 'd_model' ({checked['d_model']}) must be divisible by option 'num_heads' "
                         f"({checked['num_heads']})")
    return checked


def parse_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """``["norm=pre", "d_model=16"]`` -> ``{"norm": "pre", "d_model": "16"}`` (values still strings;
    :func:`check_options` converts them). A pair without ``=``, an empty key or a key given twice:
    ValueError naming it."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"option must be KEY=VALUE (e.g. norm=pre), got {pair!r}")
        if key in out:
            raise ValueError(f"option {key!r} given twice ({key}={out[key]} and {pair})")
        out[key] = value.strip()
    return out
