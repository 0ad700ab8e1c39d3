"""Known faults of SDPA implementations, each a model of what the faulty code computes, and
:func:`identify`, which names the model that reproduces a wrong output.

A model maps a :class:`~verify.validate.sdpa.problem.Problem` to the float64 output the faulty
implementation would give, or None when the fault would not show on that problem (no mask to invert,
d_v != d_k for "K used where V belongs", ...). The scale is not here: :mod:`.scale_fit` estimates it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from verify.validate.sdpa.problem import Problem, allowed as _allowed
from verify.validate.tolerance import relative_error


@dataclass(frozen=True)
class Fault:
    """A named fault: a short ``code`` (``"mask:inverted"``), the words a report prints, the model."""

    code: str
    words: str
    model: Callable[[Problem], np.ndarray | None]


def _scores(p: Problem) -> np.ndarray:
    """The final scores (..., H, N, M) with -inf where a key is excluded, as numerics forms them."""
    q, k = p.q, p.k
    if p.enable_gqa:
        g = q.shape[-3] // k.shape[-3]
        k = np.repeat(k, g, axis=-3)
    scale = 1 / np.sqrt(q.shape[-1]) if p.scale is None else p.scale
    s = scale * (q @ np.swapaxes(k, -1, -2))
    if p.softcap is not None:
        s = p.softcap * np.tanh(s / p.softcap)
    if p.bias is not None:
        s = s + p.bias
    return np.where(_allowed(p, s.shape), s, -np.inf)


def _softmax(z: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(z, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.exp(z - top)
    total = e.sum(axis=axis, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


def _values(p: Problem) -> np.ndarray:
    v = p.v
    if p.enable_gqa:
        v = np.repeat(v, p.q.shape[-3] // v.shape[-3], axis=-3)
    return v


def _query_axis(p: Problem):
    return _softmax(_scores(p), axis=-2) @ _values(p)


def _k_for_v(p: Problem):
    if p.k.shape[-1] != p.v.shape[-1]:
        return None
    return p.with_(v=p.k).reference()


def _mask_after_softmax(p: Problem):
    if p.mask is None:
        return None
    unmasked = p.with_(mask=None)
    z = _scores(unmasked)
    a = _softmax(z, -1) * p.mask
    return a @ _values(p)


def _mask_inverted(p: Problem):
    if p.mask is None:
        return None
    return p.with_(mask=~p.mask).reference()


def _mask_ignored(p: Problem):
    if p.mask is None or p.mask.all():
        return None
    return p.with_(mask=None).reference()


def _diagonal_excluded(p: Problem):
    if not p.causal:
        return None
    z = _scores(p.with_(causal=None))
    z = np.where(_allowed(p, z.shape, diagonal=1), z, -np.inf)
    return _softmax(z, -1) @ _values(p)


def _future_leak(steps: int):
    """Model: query i also attends the next ``steps`` keys (a causal mask built with tril(k=steps))."""
    def model(p: Problem):
        if not p.causal:
            return None
        z = _scores(p.with_(causal=None))
        z = np.where(_allowed(p, z.shape, diagonal=-steps), z, -np.inf)
        return _softmax(z, -1) @ _values(p)
    return model


def _always_causal(p: Problem):
    if p.causal:
        return None
    return p.with_(causal="top_left").reference()


def _other_alignment(p: Problem):
    if not p.causal or p.q.shape[-2] == p.k.shape[-2]:
        return None
    other = "top_left" if p.causal == "bottom_right" else "bottom_right"
    return p.with_(causal=other).reference()


def _causal_ignored(p: Problem):
    if not p.causal:
        return None
    return p.with_(causal=None).reference()


def _gqa_tiled(p: Problem):
    if not p.enable_gqa or p.q.shape[-3] == p.k.shape[-3]:
        return None
    g = p.q.shape[-3] // p.k.shape[-3]
    k = np.tile(p.k, (1,) * (p.k.ndim - 3) + (g, 1, 1))
    v = np.tile(p.v, (1,) * (p.v.ndim - 3) + (g, 1, 1))
    return p.with_(k=k, v=v, enable_gqa=False).reference()


def _no_softmax(p: Problem):
    z = _scores(p)
    return np.where(np.isfinite(z), z, 0.0) @ _values(p)


#: The faults :func:`identify` tries, in this order.
FAULTS = (
    Fault("softmax:query_axis", "softmax taken over the query axis (columns) instead of the keys (rows)", _query_axis),
    Fault("values:k_for_v", "K used where V belongs (the output is weights @ K)", _k_for_v),
    Fault("mask:after_softmax", "mask applied after the softmax without renormalising (rows no longer sum to 1)",
          _mask_after_softmax),
    Fault("mask:inverted", "mask polarity inverted: True is taken as 'blocked' (nn.MultiheadAttention's "
          "convention), where True means 'may attend' (SDPA's); if that is intended, pass --mask-convention block "
          "(validate(..., mask_convention='block') from Python)",
          _mask_inverted),
    Fault("mask:ignored", "the mask is ignored", _mask_ignored),
    Fault("causal:diagonal_excluded", "causal mask excludes the diagonal (query i may not attend key i)",
          _diagonal_excluded),
    Fault("causal:future_leak", "query i attends key i+1: the future leaks (the causal mask is off by one, "
          "tril(k=1))", _future_leak(1)),
    Fault("causal:future_leak", "query i attends keys up to i+2: the future leaks (the causal mask is off by two, "
          "tril(k=2))", _future_leak(2)),
    Fault("causal:always", "a causal mask applied though none was asked for (causal always on)", _always_causal),
    Fault("causal:alignment", "causal alignment wrong when N != M (bottom-right vs top-left)", _other_alignment),
    Fault("causal:ignored", "causal=True is ignored", _causal_ignored),
    Fault("gqa:tiled", "GQA heads tiled (query head h on key/value head h % Hkv) instead of interleaved "
          "(h // G, torch's enable_gqa)", _gqa_tiled),
    Fault("softmax:missing", "no softmax: the scores multiply V directly", _no_softmax),
)


def alignment_words(p: Problem) -> str:
    """The alignment fault spelled for the problem's own causal setting."""
    if p.causal == "bottom_right":
        return ("causal alignment is top-left (torch's is_causal: j <= i) where bottom-right was asked "
                "(j <= i + M - N, FlashAttention's, KV-cache decoding)")
    return ("causal alignment is bottom-right (j <= i + M - N, FlashAttention's) where causal=True means "
            "top-left (j <= i, torch's is_causal)")


#: Faults that coincide on some N != M problems (top-left with one future key is bottom-right at
#: N = 1, M = 2): a square problem tells them apart (see ``agreement.diagnose``).
CAUSAL_AMBIGUOUS = frozenset({"causal:future_leak", "causal:bottom_right", "causal:top_left", "causal:ignored"})


def identify(p: Problem, out: np.ndarray, bound: float, codes=None) -> Fault | None:
    """The first fault (among ``codes``, default all) whose model reproduces ``out`` within ``bound``
    (relative, against the model) while the correct reference does not; None when no model does."""
    for fault in FAULTS:
        if codes is not None and fault.code not in codes:
            continue
        try:
            model = fault.model(p)
        except (ValueError, FloatingPointError):
            model = None
        if model is None or np.shape(model) != np.shape(out):
            continue
        if relative_error(model, p.reference()) <= bound:
            continue  # the fault does not show on this problem
        if relative_error(out, model) <= bound:
            if fault.code == "causal:alignment":
                used = "top_left" if p.causal == "bottom_right" else "bottom_right"
                return Fault(f"causal:{used}", alignment_words(p), fault.model)
            return fault
    return None
