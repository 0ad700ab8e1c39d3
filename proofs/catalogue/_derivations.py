"""Use the project's SymPy derivations (``proofs.derivations``) as evidence, when they exist.

The derivations are written separately; the catalogue imports them lazily, inside the
checks, so it still imports (and every check still runs on its own computations) when a
derivation module is missing. A derivation is looked up in the registry
``proofs.derivations.DERIVATIONS`` (name -> function returning a checked
:class:`proofs.derivation.Derivation`) by keywords, so a renamed entry is still found.

:func:`derivation` returns ``(status, evidence)``: status True when the derivation ran and
is valid (every checked step passed), None when it is not available (the evidence says
why). A derivation that exists but is *invalid* raises :class:`RuntimeError`: a failing
step of our own derivation is a defect of the toolkit, never a verdict about a document,
so ``Claim.run`` records the check as crashed.
"""

from __future__ import annotations

from typing import Any

from ..claims import Evidence

# topic -> keywords (most specific first); matched against registry names with "-" read as "_"
TOPICS = {
    "softmax_jacobian": ("softmax_jacobian", "jacobian"),
    "attention_backward": ("attention_backward", "backward"),
    "variance": ("dot_product_variance", "variance", "var_qk"),
    "multihead": ("multihead", "multi_head", "mha"),
    "causality": ("causality", "causal"),
    "convex": ("convex_combination", "convex"),
    "soft_lookup": ("soft_lookup", "lookup", "argmax"),
    "linear_collapse": ("linear_collapse", "collapse"),
    "gelu": ("gelu",),
    "layer_norm": ("layer_norm", "layernorm"),
}


def _registry() -> dict[str, Any]:
    from ..derivations import DERIVATIONS  # noqa: PLC0415 - lazy on purpose

    return dict(DERIVATIONS)


def find(topic: str) -> tuple[str, Any]:
    registry = _registry()
    for keyword in TOPICS[topic]:
        for key in registry:
            if keyword in str(key).lower().replace("-", "_"):
                return key, registry[key]
    raise LookupError(f"no derivation for {topic!r} among {sorted(registry)}")


def derivation(topic: str) -> tuple[bool | None, Evidence]:
    """``(True, evidence)`` for a valid derivation, ``(None, note)`` when there is none."""
    try:
        key, build = find(topic)
    except (ImportError, LookupError) as exc:
        return None, Evidence("note", f"derivation '{topic}' not available ({type(exc).__name__}: {exc})", {})
    d = build()
    if not d.valid:
        failed = "; ".join(f"step {r.index}: {r.note}" for r in d.failed)
        raise RuntimeError(f"derivation {key!r} is not valid (a defect of the toolkit, not a verdict): {failed}")
    return True, d.evidence()


def derivation_object(topic: str) -> Any | None:
    """The checked Derivation object for ``topic`` (to quote its ``results``), or None."""
    try:
        key, build = find(topic)
    except (ImportError, LookupError):
        return None
    d = build()
    if not d.valid:
        raise RuntimeError(f"derivation {key!r} is not valid (a defect of the toolkit, not a verdict)")
    return d
