"""The interface between the battery and the implementation it checks.

A :class:`Candidate` is the user's callable adapted to one calling convention: the properties hand
it host float64 NumPy arrays and options in *our* convention (numerics': mask True = may attend,
``causal=True`` top-left, ``window=(left, right)``, GQA query head h on key/value head h // G), and
get back an :class:`Outcome` on the host. The adapter (see :mod:`verify.validate.adapters`) does
the translating: the dtype, the device, the layout, the mask polarity, the keyword names.

Which options a candidate takes is in :attr:`Candidate.features`; a property that needs one it lacks
is NOT APPLICABLE and the option is never passed. Besides the option names (:data:`FEATURES`), a
property may need ``"weights"`` (the candidate returns its attention weights) or ``"gradients"``
(it is differentiable in its own library: torch autograd).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from verify.validate.backends import ArrayBackend

#: The options of an SDPA call, in our convention (numerics.scaled_dot_product_attention's).
FEATURES = ("mask", "causal", "scale", "bias", "window", "softcap", "enable_gqa")
#: Capabilities a property may need besides the options.
CAPABILITIES = ("weights", "gradients")


@dataclass(frozen=True)
class Outcome:
    """What one call gave back, on the host.

    Attributes
    ----------
    out : ndarray, float64
        The output (NaN and inf kept).
    weights : ndarray or None
        The attention weights, when the candidate returns them.
    dtype : str
        The dtype the candidate returned its output in (``"float32"``).
    """

    out: np.ndarray
    weights: np.ndarray | None = None
    dtype: str = "float64"


class Candidate:
    """An implementation under test, adapted to the battery's convention.

    Subclasses implement :meth:`_call` (and :meth:`_gradients` when differentiable). Call it as
    ``candidate(q, k, v, dtype="float32", mask=..., causal=...)`` with host NumPy arrays.

    Attributes
    ----------
    fn : callable
        The user's callable, as given.
    name : str
        How reports name it (``module:attr`` when known).
    kind : str
        ``"sdpa"``, ``"mha"`` or ``"block"``.
    backend : ArrayBackend
        The library and device its inputs go to.
    features : frozenset of str
        The options of :data:`FEATURES` it accepts.
    returns_weights : bool
        Whether calls also give the attention weights.
    differentiable : bool
        Whether :meth:`gradients` works (torch autograd).
    causal_alignments : tuple of str
        The causal alignments it can be asked for: ``("top_left",)`` when ``causal`` is a bool,
        both when it also takes ``"bottom_right"``.
    """

    def __init__(self, fn: Callable, *, name: str, kind: str, backend: ArrayBackend, features=(),
                 returns_weights: bool = False, differentiable: bool = False,
                 causal_alignments: tuple[str, ...] = ("top_left",), note: str = ""):
        unknown = set(features) - set(FEATURES)
        if unknown:
            raise ValueError(f"features must be among {FEATURES}, got {sorted(unknown)}")
        self.fn = fn
        self.name = name
        self.kind = kind
        self.backend = backend
        self.features = frozenset(features)
        self.returns_weights = returns_weights
        self.differentiable = differentiable
        self.causal_alignments = causal_alignments if "causal" in self.features else ()
        #: How it was recognised (``"torch.nn.functional.scaled_dot_product_attention"``, ...).
        self.note = note

    def supports(self, need: str) -> bool:
        """Whether the candidate has ``need``: an option of :data:`FEATURES`, ``"weights"`` or
        ``"gradients"``."""
        if need == "weights":
            return self.returns_weights
        if need == "gradients":
            return self.differentiable
        if need in FEATURES:
            return need in self.features
        raise ValueError(f"need must be one of {FEATURES + CAPABILITIES}, got {need!r}")

    def missing(self, needs) -> list[str]:
        """The entries of ``needs`` the candidate lacks."""
        return [n for n in needs if not self.supports(n)]

    def __call__(self, *arrays: np.ndarray, dtype: str, **options: Any) -> Outcome:
        """Run the candidate on host arrays (cast to ``dtype``) with options in our convention.

        Options it does not accept are refused (a property must not pass them): ValueError.
        Options that are None or False are dropped before the call.
        """
        options = {k: v for k, v in options.items() if v is not None and v is not False}
        refused = [k for k in options if k not in self.features]
        if refused:
            raise ValueError(f"the candidate {self.name} does not accept {refused}; a property passed them")
        return self._call(arrays, dtype, options)

    def gradients(self, *arrays: np.ndarray, d_out: np.ndarray, dtype: str, **options: Any) -> dict[str, np.ndarray]:
        """Gradients of ``sum(d_out * out)`` with respect to each array (and ``bias`` when passed),
        on the host in float64, keyed ``"q"``, ``"k"``, ``"v"``, ``"bias"`` (sdpa)."""
        if not self.differentiable:
            raise ValueError(f"the candidate {self.name} is not differentiable in its library")
        options = {k: v for k, v in options.items() if v is not None and v is not False}
        return self._gradients(arrays, d_out, dtype, options)

    def _call(self, arrays, dtype: str, options: dict) -> Outcome:  # pragma: no cover - abstract
        raise NotImplementedError

    def _gradients(self, arrays, d_out, dtype: str, options: dict) -> dict[str, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.name!r}, kind={self.kind!r}, backend={self.backend.name!r}, "
                f"features={sorted(self.features)})")
