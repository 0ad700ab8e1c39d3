"""proofs: step-checked SymPy derivations, the Claim model, the catalogue of the seeds' claims, LaTeX.

The public API for writing your own proofs::

    from proofs import Derivation, Step, Symbolic, AtSizes, NonNegative, Custom, register

A :class:`Derivation` is an ordered list of :class:`Step` objects, each displayed as
``lhs = rhs`` with its reason and checked by its checker: :class:`Symbolic` (``lhs - rhs``
reduces to 0), :class:`Chain` (equal to the previous line), :class:`AtSizes` (the same at
explicit sizes), :class:`NonNegative` (``expr >= 0`` through a witness), :class:`Custom` (any
callable); :class:`Cited` marks a step resting on a named theorem (not checked, shown as such,
optionally spot-checked) and :class:`Definition` (``Step.define``, ``Step.assume``) a definition
or an assumption.
:func:`register` names a function that builds one. ``attnverify prove FILE.py`` checks
every derivation a script defines and says, step by step, PASS, FAIL (with a counterexample)
or UNPROVED (with the residual SymPy could not reduce). :mod:`proofs.attention` holds building
blocks for attention (softmax at index level and at explicit sizes, gradients, "for all n");
:class:`ExpectationOperator` takes expectations and variances of sums of products from
linearity, stated independence and stated moments only.

A :class:`Claim` is a statement with its source, its assumptions and checks that compute a
:class:`Verdict` when they run. Names are imported on first use, so ``import proofs`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it.
_EXPORTS = {
    "Derivation": "proofs.derivation",
    "Step": "proofs.derivation",
    "StepResult": "proofs.derivation",
    "DerivationError": "proofs.derivation",
    "Checker": "proofs.derivation",
    "Symbolic": "proofs.derivation",
    "Chain": "proofs.derivation",
    "AtSizes": "proofs.derivation",
    "NonNegative": "proofs.derivation",
    "Custom": "proofs.derivation",
    "Definition": "proofs.derivation",
    "Cited": "proofs.derivation",
    "is_zero": "proofs.derivation",
    "unfold_indexed": "proofs.derivation",
    "register": "proofs.derivations._registry",
    "ForAllN": "proofs.attention",
    "ExpectationOperator": "proofs.expectation",
    "Family": "proofs.expectation",
    "Expect": "proofs.expectation",
    "ByExpectation": "proofs.expectation",
    "Claim": "proofs.claims",
    "CheckOutcome": "proofs.claims",
    "Evidence": "proofs.claims",
    "Method": "proofs.claims",
    "Source": "proofs.claims",
    "Verdict": "proofs.claims",
    "prove_file": "proofs.runner",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # pragma: no cover
    from .attention import ForAllN
    from .claims import CheckOutcome, Claim, Evidence, Method, Source, Verdict
    from .expectation import ByExpectation, Expect, ExpectationOperator, Family
    from .derivation import (AtSizes, Chain, Checker, Cited, Custom, Definition, Derivation, DerivationError,
                             NonNegative, Step, StepResult, Symbolic, is_zero, unfold_indexed)
    from .derivations._registry import register
    from .runner import prove_file


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'proofs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
