"""numerics: reference attention and transformer-block array code for any array-API library."""

from .attention import attention_backward, causal_mask, scaled_dot_product_attention
from .softmax import softmax

__all__ = ["softmax", "scaled_dot_product_attention", "attention_backward", "causal_mask"]
