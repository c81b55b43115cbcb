"""A BERT-base-shaped transformer encoder built from ``torch.nn`` (no download, random weights).

The shape is BERT-base's: 12 layers, hidden size 768, 12 heads, feed-forward size 3072, a
vocabulary of 30 522 tokens and 512 positions. Inputs are token ids of shape (batch, seq_len);
the output is the pooled first-token vector, (batch, hidden). Only the shape and the arithmetic
matter for a throughput benchmark, so there is no tokenizer and no pretrained checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True, slots=True)
class EncoderShape:
    """Sizes of an encoder; the defaults are BERT-base's."""

    layers: int = 12
    hidden: int = 768
    heads: int = 12
    ffn: int = 3072
    vocab: int = 30522
    max_positions: int = 512

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token (2 per multiply-add), embeddings and softmax left out.

        >>> round(EncoderShape().flops_per_token(128) / 1e6, 1)
        174.6
        """
        h, f = self.hidden, self.ffn
        dense = 2 * (4 * h * h + 2 * h * f)  # QKV + output projection, two FFN matrices
        attention = 2 * 2 * seq_len * h  # scores and the weighted sum of values
        return float(self.layers * (dense + attention))


class Encoder(nn.Module):
    """Token ids (batch, seq_len) -> first-token vectors (batch, hidden)."""

    def __init__(self, shape: EncoderShape | None = None) -> None:
        super().__init__()
        self.shape = shape or EncoderShape()
        s = self.shape
        self.tokens = nn.Embedding(s.vocab, s.hidden)
        self.positions = nn.Embedding(s.max_positions, s.hidden)
        self.norm = nn.LayerNorm(s.hidden)
        layer = nn.TransformerEncoderLayer(
            d_model=s.hidden,
            nhead=s.heads,
            dim_feedforward=s.ffn,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=False,
        )
        # enable_nested_tensor only matters with padding masks, which a benchmark has none of.
        self.layers = nn.TransformerEncoder(layer, s.layers, enable_nested_tensor=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.shape.max_positions:
            raise ValueError(
                f"sequence length {ids.shape[1]} exceeds {self.shape.max_positions} positions"
            )
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.norm(self.tokens(ids) + self.positions(pos))
        return self.layers(x)[:, 0]
