"""Multi-head attention mutants for kind="mha": each a plain NumPy function (or a document's
class run from the document) with one known fault, and the words its diagnosis must contain.

Conventions: ``fn(x, w_q, w_k, w_v, w_o, num_heads)`` in the row convention (Q = x @ w_q, head
h = columns h*K:(h+1)*K), x (B, N, D); see :mod:`verify.validate.modules`.
"""

from __future__ import annotations

import math

import numpy as np


def _heads(x, w_q, w_k, w_v, num_heads):
    """Q, K, V split into heads (B, H, N, C), correctly."""
    def split(y):
        b, n, width = y.shape
        return y.reshape(b, n, num_heads, width // num_heads).transpose(0, 2, 1, 3)

    return split(x @ w_q), split(x @ w_k), split(x @ w_v)


def _attend(q, k, v, scale):
    s = q @ np.swapaxes(k, -1, -2) * scale
    w = np.exp(s - s.max(axis=-1, keepdims=True))
    return (w / w.sum(axis=-1, keepdims=True)) @ v


def merge_without_transpose(x, w_q, w_k, w_v, w_o, num_heads):
    """Heads (B, H, N, V) reshaped straight to (B, N, H*V): tokens and heads mixed."""
    q, k, v = _heads(x, w_q, w_k, w_v, num_heads)
    o = _attend(q, k, v, 1 / math.sqrt(q.shape[-1]))
    b, h, n, c = o.shape
    return o.reshape(b, n, h * c) @ w_o


def w_o_left_out(x, w_q, w_k, w_v, w_o, num_heads):
    """The concatenated heads returned without the output projection."""
    q, k, v = _heads(x, w_q, w_k, w_v, num_heads)
    o = _attend(q, k, v, 1 / math.sqrt(q.shape[-1]))
    b, h, n, c = o.shape
    return o.transpose(0, 2, 1, 3).reshape(b, n, h * c)


def scaled_by_d_model(x, w_q, w_k, w_v, w_o, num_heads):
    """Scores scaled by 1/sqrt(d_model) instead of 1/sqrt(d_k) (an sdpa scale fault, seen through MHA)."""
    q, k, v = _heads(x, w_q, w_k, w_v, num_heads)
    o = _attend(q, k, v, 1 / math.sqrt(x.shape[-1]))
    b, h, n, c = o.shape
    return o.transpose(0, 2, 1, 3).reshape(b, n, h * c) @ w_o


def centred_by_batch_mean(x, w_q, w_k, w_v, w_o, num_heads):
    """x centred by its mean over the batch before the projections (a batch statistic, as a
    batch norm): one sample's output depends on the others."""
    x = x - x.mean(axis=0, keepdims=True)
    q, k, v = _heads(x, w_q, w_k, w_v, num_heads)
    o = _attend(q, k, v, 1 / math.sqrt(q.shape[-1]))
    b, h, n, c = o.shape
    return o.transpose(0, 2, 1, 3).reshape(b, n, h * c) @ w_o


def jittery(x, w_q, w_k, w_v, w_o, num_heads):
    """Correct attention plus relative noise of 1e-7 from an unseeded generator (as a kernel whose
    reductions run in a different order on each call, exaggerated): two calls differ."""
    q, k, v = _heads(x, w_q, w_k, w_v, num_heads)
    o = _attend(q, k, v, 1 / math.sqrt(q.shape[-1]))
    b, h, n, c = o.shape
    out = o.transpose(0, 2, 1, 3).reshape(b, n, h * c) @ w_o
    return out * (1 + 1e-7 * np.random.default_rng().standard_normal(out.shape))


def projection_module(*, detach_keys: bool = False, wrong_softmax_backward: bool = False):
    """A torch module with q_proj/k_proj/v_proj/o_proj (HF style), d_model 8, 2 heads. Correct by
    default; ``detach_keys``: K detached from the graph (no gradient reaches W_k, and dx misses the
    keys' path); ``wrong_softmax_backward``: the softmax is a custom autograd Function whose
    backward returns p * g, forgetting the - p sum(p * g) term. The forward is right either way."""
    import torch
    from torch import nn

    class SoftmaxForgetsTheSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx, s):
            p = torch.softmax(s, dim=-1)
            ctx.save_for_backward(p)
            return p

        @staticmethod
        def backward(ctx, g):
            (p,) = ctx.saved_tensors
            return p * g

    class ProjectionMHA(nn.Module):
        def __init__(self, d_model=8, num_heads=2):
            super().__init__()
            self.num_heads = num_heads
            self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d_model, d_model) for _ in range(4))

        def forward(self, x):
            b, n, d = x.shape
            split = lambda y: y.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)  # noqa: E731
            q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
            if detach_keys:
                k = k.detach()
            s = q @ k.transpose(-1, -2) / math.sqrt(d // self.num_heads)
            p = SoftmaxForgetsTheSum.apply(s) if wrong_softmax_backward else torch.softmax(s, dim=-1)
            return self.o_proj((p @ v).transpose(1, 2).reshape(b, n, d))

    torch.manual_seed(0)
    return ProjectionMHA()


def llama_style_gqa(*, tiled: bool = False):
    """HF Llama-style grouped-query attention (q_proj/k_proj/v_proj/o_proj, num_key_value_heads,
    repeat_kv): d_model 16, 4 query heads, 2 key/value heads. ``tiled``: K and V repeated as a
    block (torch .repeat, head h on key/value head h mod 2) instead of repeat_interleave."""
    import torch
    from torch import nn

    class LlamaAttention(nn.Module):
        def __init__(self, d_model=16, num_heads=4, num_key_value_heads=2):
            super().__init__()
            self.num_heads, self.num_key_value_heads = num_heads, num_key_value_heads
            self.head_dim = d_model // num_heads
            self.q_proj = nn.Linear(d_model, num_heads * self.head_dim, bias=False)
            self.k_proj = nn.Linear(d_model, num_key_value_heads * self.head_dim, bias=False)
            self.v_proj = nn.Linear(d_model, num_key_value_heads * self.head_dim, bias=False)
            self.o_proj = nn.Linear(num_heads * self.head_dim, d_model, bias=False)

        def repeat_kv(self, a):
            g = self.num_heads // self.num_key_value_heads
            return a.repeat(1, g, 1, 1) if tiled else a.repeat_interleave(g, dim=1)

        def forward(self, x):
            b, n, _ = x.shape
            q = self.q_proj(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
            k = self.k_proj(x).view(b, n, self.num_key_value_heads, self.head_dim).transpose(1, 2)
            v = self.v_proj(x).view(b, n, self.num_key_value_heads, self.head_dim).transpose(1, 2)
            k, v = self.repeat_kv(k), self.repeat_kv(v)
            p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), dim=-1)
            return self.o_proj((p @ v).transpose(1, 2).reshape(b, n, -1))

    torch.manual_seed(0)
    return LlamaAttention()


def prunable_from_document():
    """Seed 002's PrunableMultiHeadAttention, run from the document, built at the only size it
    runs at (head_dim = num_heads: d_model = 4, 2 heads). Heads split without the transpose."""
    from proofs.catalogue._document_code import seed002_class

    import torch

    _, cls = seed002_class("PrunableMultiHeadAttention")
    torch.manual_seed(0)
    return cls(4, 2)


def seed001_from_document():
    """Seed 001's NumPy multi-head example, its own lines run on each sequence."""
    from proofs.catalogue._document_code import seed001_multihead

    return seed001_multihead()[1]


#: name -> (how to get the candidate, validate keywords, words the diagnosis must contain, the property that fails)
MUTANTS = {
    "merge without transpose": (lambda: merge_without_transpose, {}, "merged without a transpose", "agreement"),
    "W^O left out": (lambda: w_o_left_out, {}, "W^O left out", "output projection"),
    "scale 1/sqrt(d_model)": (lambda: scaled_by_d_model, {}, "scaled by 1/sqrt(d_model)", "agreement"),
    "seed 002 PrunableMultiHeadAttention": (prunable_from_document, {}, "split without the transpose", "agreement"),
    "seed 001 multi-head example": (seed001_from_document, {"d_model": 4, "num_heads": 2},
                                    "concatenated on the wrong axis", "agreement"),
}

#: Mutants of batch independence and determinism: name -> (candidate, the property that names it, fault code).
REPEAT_MUTANTS = {
    "centred by the batch mean": (centred_by_batch_mean, "batch independence", "batch:mixed"),
    "nondeterministic": (jittery, "determinism", "nondeterministic"),
}

#: Gradient mutants (torch): name -> (factory, fault code, words the diagnosis must contain).
GRADIENT_MUTANTS = {
    "keys detached": (lambda: projection_module(detach_keys=True), "gradient:detached,gradient:wrong",
                      "dw_k is zero: no gradient reaches w_k"),
    "softmax backward forgets the sum": (lambda: projection_module(wrong_softmax_backward=True), "gradient:wrong",
                                         "dw_q differs from the analytic backward"),
}
