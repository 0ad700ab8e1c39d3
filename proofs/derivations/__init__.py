"""The derivations (the ten of issue 3, and issue 9's algebra of the attention options), each a function returning a checked :class:`~proofs.derivation.Derivation`.

``DERIVATIONS`` maps the short names used by ``attnverify derive NAME`` to those functions;
``get(name)`` builds (once, cached) and returns one; ``list_derivations()`` gives
``(name, title)`` pairs without building anything.
"""

from ._registry import DERIVATIONS, TITLES, get, list_derivations, register
from .softmax import softmax_jacobian
from .backward import attention_backward
from .variance import qk_variance
from .multihead import multihead_identities
from .causal import causality
from .convex import convex_combination
from .lookup import soft_lookup
from .collapse import linear_collapse
from .gelu import gelu_tanh_error
from .layernorm import layer_norm_moments
from .online_softmax import online_softmax_merge
from .logsumexp import lse_backward
from .softcap import softcap_chain_rule
from .rope import rotary_embedding_derivation
from .alibi import alibi_bias_derivation

__all__ = [
    "DERIVATIONS", "TITLES", "get", "list_derivations", "register",
    "softmax_jacobian", "attention_backward", "qk_variance", "multihead_identities", "causality", "convex_combination", "soft_lookup", "linear_collapse", "gelu_tanh_error", "layer_norm_moments",
    "online_softmax_merge", "lse_backward", "softcap_chain_rule", "rotary_embedding_derivation",
    "alibi_bias_derivation",
]
