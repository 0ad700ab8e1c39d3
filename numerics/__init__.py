"""numerics: reference attention and transformer-block array code for any array-API library."""

from .attention import AttentionGradients, attention_backward, causal_mask, dropout_keep_mask, scaled_dot_product_attention
from .positional import alibi_bias, alibi_slopes, rotary_embedding, rotary_embedding_backward
from .softmax import softmax

__all__ = ["softmax", "scaled_dot_product_attention", "attention_backward", "AttentionGradients", "causal_mask"]
__all__ += ["dropout_keep_mask", "rotary_embedding", "rotary_embedding_backward", "alibi_slopes", "alibi_bias"]
from .multihead import (
    MHAGradients,
    MHAParams,
    Rope,
    init_params,
    multi_head_attention,
    multi_head_attention_backward,
    multi_head_attention_vjp,
)

__all__ += ["MHAParams", "MHAGradients", "init_params", "multi_head_attention", "multi_head_attention_backward"]
__all__ += ["multi_head_attention_vjp", "Rope"]
from .layers import FFNParams, feed_forward, feed_forward_backward, gelu, gelu_backward, init_ffn_params, layer_norm, layer_norm_backward  # noqa: E402
__all__ += ["layer_norm", "layer_norm_backward", "gelu", "gelu_backward", "FFNParams", "init_ffn_params", "feed_forward", "feed_forward_backward"]  # noqa: E501
from .block import BlockGradients, BlockParams, init_block_params, transformer_block, transformer_block_backward  # noqa: E402
__all__ += ["BlockParams", "BlockGradients", "init_block_params", "transformer_block", "transformer_block_backward"]
