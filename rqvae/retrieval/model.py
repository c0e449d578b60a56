"""A small decoder-only transformer over semantic-ID tokens (TIGER-style next-item generation).

Inputs are ``BOS, item_1 tokens, ..., item_n tokens``; each position gets a token, an item-slot and a level
embedding (slot 0 and a level of its own for BOS), so "level 2 of the 5th item" is known without the model
having to count. The output at a position predicts the next token, and since that token's level is known
from the position, logits are taken only over that level's block of the (tied) token embeddings: cheaper
than a full-vocabulary softmax, and never wasted on tokens of the wrong level.

Decoding reuses the history: :meth:`Retriever.prefix` keeps every layer's keys/values of the history once per
user, and :meth:`Retriever.extend` runs only the few generated tokens of all beams against them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .tokens import TokenLayout

Past = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [U, heads, T, head_dim]


class _Block(nn.Module):
    """Pre-norm self-attention + MLP."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.drop = nn.Dropout(dropout)
        self.p = dropout

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[..., T, d] -> three [..., heads, T, head_dim]."""
        *lead, t, d = x.shape
        qkv = self.qkv(x).view(*lead, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.unbind(-3)
        return q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2)

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        """[..., heads, T, head_dim] -> [..., T, d]."""
        y = y.transpose(-3, -2)
        return y.reshape(*y.shape[:-2], -1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Causal pass over [B, T, d]; right padding needs no mask (real positions never look ahead)."""
        q, k, v = self._split(self.norm1(x))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0, is_causal=True)
        x = x + self.drop(self.proj(self._merge(y)))
        return x + self.drop(self.mlp(self.norm2(x))), (k, v)

    def extend(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
        """New tokens x [U, B, g, d] of B beams attend to their user's history (past, valid [U, T]) and causally
        to themselves; the history is shared by the beams instead of being copied per beam."""
        pk, pv = past  # [U, h, T, dh]
        q, k, v = self._split(self.norm1(x))  # [U, B, h, g, dh]
        scale = 1.0 / math.sqrt(q.shape[-1])
        s_past = torch.einsum("ubhgd,uhtd->ubhgt", q, pk) * scale
        s_past = s_past.masked_fill(~valid[:, None, None, None, :], float("-inf"))
        s_self = torch.einsum("ubhgd,ubhsd->ubhgs", q, k) * scale
        g = x.shape[2]
        causal = torch.ones(g, g, dtype=torch.bool, device=x.device).tril()
        s_self = s_self.masked_fill(~causal, float("-inf"))
        att = torch.softmax(torch.cat([s_past, s_self], -1), -1)
        t = pk.shape[2]
        y = torch.einsum("ubhgt,uhtd->ubhgd", att[..., :t], pv) + torch.einsum("ubhgs,ubhsd->ubhgd", att[..., t:], v)
        x = x + self.proj(self._merge(y))
        return x + self.mlp(self.norm2(x))


class Retriever(nn.Module):
    """Next-item generator: histories of up to ``max_items - 1`` items, then the generated item."""

    def __init__(self, layout: TokenLayout, max_items: int, d_model: int = 128, layers: int = 2, heads: int = 4,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} must be a multiple of heads {heads}")
        self.layout = layout
        self.depth = layout.depth
        self.max_len = 1 + max_items * layout.depth
        self.offsets = [int(o) for o in layout.offsets]
        self.tok = nn.Embedding(layout.vocab_size, d_model)
        self.slot = nn.Embedding(max_items + 1, d_model)
        self.level = nn.Embedding(layout.depth + 1, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.out_bias = nn.Parameter(torch.zeros(layout.vocab_size))
        self.drop = nn.Dropout(dropout)
        pos = torch.arange(self.max_len)
        self.register_buffer("slot_of", torch.where(pos == 0, 0, (pos - 1) // self.depth + 1), persistent=False)
        self.register_buffer("level_of", torch.where(pos == 0, self.depth, (pos - 1) % self.depth), persistent=False)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.slot.weight, std=0.02)
        nn.init.normal_(self.level.weight, std=0.02)

    def embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.drop(self.tok(tokens) + self.slot(self.slot_of[positions]) + self.level(self.level_of[positions]))

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, Past]:
        """Hidden states [B, T, d] of right-padded sequences [B, T], and every layer's keys/values."""
        x = self.embed(tokens, torch.arange(tokens.shape[1], device=tokens.device))
        past: Past = []
        for block in self.blocks:
            x, kv = block(x)
            past.append(kv)
        return self.norm(x), past

    def level_logits(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        """Logits [..., size[level]] of the next token, known to be of ``level``."""
        lo, hi = self.offsets[level], self.offsets[level + 1]
        return hidden @ self.tok.weight[lo:hi].T + self.out_bias[lo:hi]

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy of every next token (PAD targets ignored), each over its level's block."""
        hidden, _ = self(tokens[:, :-1])
        targets = tokens[:, 1:]
        total, count = hidden.new_zeros(()), 0
        for level in range(self.depth):
            # the target at input position t has level t % depth (position 0 is BOS, predicting level 0)
            h, y = hidden[:, level :: self.depth], targets[:, level :: self.depth]
            keep = y != self.layout.pad
            logits = self.level_logits(h[keep], level)
            total = total + F.cross_entropy(logits, y[keep] - self.offsets[level], reduction="sum")
            count += int(keep.sum())
        return total / max(count, 1)

    def prefix(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[Past, torch.Tensor, torch.Tensor]:
        """Run the histories once: (keys/values, valid mask [U, T], hidden [U, d] of the last real position)."""
        hidden, past = self(tokens)
        valid = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]
        last = hidden[torch.arange(len(lengths), device=tokens.device), lengths - 1]
        return past, valid, last

    def extend(self, past: Past, valid: torch.Tensor, lengths: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Hidden states [U, B, g, d] of generated tokens new [U, B, g] placed right after each user's history."""
        positions = lengths[:, None, None] + torch.arange(new.shape[2], device=new.device)
        x = self.embed(new, positions)
        for block, kv in zip(self.blocks, past, strict=True):
            x = block.extend(x, kv, valid)
        return self.norm(x)
