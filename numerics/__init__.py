"""numerics: reference attention and transformer-block array code for any array-API library."""

from .attention import (
    AttentionGradients,
    attention_backward,
    attention_vjp,
    causal_mask,
    dropout_keep_mask,
    scaled_dot_product_attention,
)
from .positional import alibi_bias, alibi_slopes, rotary_embedding, rotary_embedding_backward
from .softmax import softmax

__all__ = ["softmax", "scaled_dot_product_attention", "attention_backward", "attention_vjp", "AttentionGradients"]
__all__ += ["causal_mask"]
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
from .layers import (  # noqa: E402
    FFNGradients,
    FFNParams,
    LayerNormGradients,
    feed_forward,
    feed_forward_backward,
    feed_forward_vjp,
    gelu,
    gelu_backward,
    init_ffn_params,
    layer_norm,
    layer_norm_backward,
    layer_norm_vjp,
)

__all__ += ["layer_norm", "layer_norm_backward", "layer_norm_vjp", "LayerNormGradients", "gelu", "gelu_backward"]
__all__ += ["FFNParams", "FFNGradients", "init_ffn_params", "feed_forward", "feed_forward_backward", "feed_forward_vjp"]
from .block import BlockGradients, BlockParams, init_block_params, transformer_block, transformer_block_backward  # noqa: E402
__all__ += ["BlockParams", "BlockGradients", "init_block_params", "transformer_block", "transformer_block_backward"]
