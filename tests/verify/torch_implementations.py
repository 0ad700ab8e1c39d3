"""Correct torch implementations written differently from numerics (test fixtures, need torch).

``PackedMHA``: nanoGPT style, one packed ``c_attn`` Linear and ``c_proj``, heads through
``F.scaled_dot_product_attention``. ``PreLNBlock``: a pre-LN block with that attention, the tanh
GELU through ``F.gelu(approximate="tanh")`` and its own attribute names (attn, ln1, ln2, fc1, fc2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PackedMHA(nn.Module):
    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(d_model, 3 * d_model)
        self.c_proj = nn.Linear(d_model, d_model)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (t.view(b, n, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.c_proj(y.transpose(1, 2).reshape(b, n, d))


class PreLNBlock(nn.Module):
    norm_first = True

    def __init__(self, d_model: int = 8, n_head: int = 2, d_ff: int = 24):
        super().__init__()
        self.attn = PackedMHA(d_model, n_head)
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.fc1, self.fc2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))


class CausalSelfAttention(nn.Module):
    """nanoGPT's CausalSelfAttention (karpathy/nanoGPT model.py), its manual path: packed c_attn,
    a registered lower-triangular buffer, masked_fill with -inf, softmax, c_proj."""

    def __init__(self, n_embd: int = 8, n_head: int = 2, block_size: int = 16):
        super().__init__()
        self.n_head, self.n_embd = n_head, n_embd
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x):
        b, t, c = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        q = q.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        v = v.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / (k.size(-1) ** 0.5))
        att = att.masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf"))
        y = torch.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))
