"""numerics: reference attention and transformer-block array code for any array-API library."""

from .attention import attention_backward, causal_mask, scaled_dot_product_attention
from .softmax import softmax

__all__ = ["softmax", "scaled_dot_product_attention", "attention_backward", "causal_mask"]
from .multihead import MHAGradients, MHAParams, init_params, multi_head_attention, multi_head_attention_backward

__all__ += ["MHAParams", "MHAGradients", "init_params", "multi_head_attention", "multi_head_attention_backward"]
