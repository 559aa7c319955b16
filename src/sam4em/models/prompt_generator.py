"""Prompt-free adapter: prompt embeddings made from the image itself.

SAM needs points or boxes. For automatic EM segmentation the prompts are learned: per class, a few
query tokens attend to the image embedding and become the sparse prompt; a small conv head turns the
embedding into a dense prompt. `StaticPrompts` is the ablation without image conditioning (one fixed
set of learned tokens per class, as SAMed does).
"""

from __future__ import annotations

import torch
from torch import nn


class PromptGenerator(nn.Module):
    """Image-conditioned prompts for C classes.

    forward(embedding (N, D, h, w) with N = B * C ordered batch-major, position (1 or N, D, h, w))
    returns sparse (N, 1, T, D) and dense (N, D, h, w) prompt embeddings, item n using class n % C.
    """

    def __init__(self, *, num_classes: int, num_tokens: int, dim: int, num_heads: int = 4) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.queries = nn.Parameter(torch.randn(num_classes, num_tokens, dim) * 0.02)
        self.norm_query = nn.LayerNorm(dim)
        self.norm_image = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, _heads(dim, num_heads), batch_first=True)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        dense_out = nn.Conv2d(dim, dim, kernel_size=1)
        self.dense = nn.Sequential(nn.Conv2d(dim, dim, kernel_size=1), nn.GELU(), dense_out)
        # Zero-init: the dense prompt starts as SAM's own "no mask" embedding (added by the caller).
        for parameter in dense_out.parameters():
            nn.init.zeros_(parameter)
        self.class_dense = nn.Parameter(torch.zeros(num_classes, dim))

    def forward(self, embedding: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = embedding.shape[0]
        queries = self.queries.repeat(n // self.num_classes, 1, 1)
        keys = self.norm_image((embedding + position).flatten(2).transpose(1, 2))
        values = embedding.flatten(2).transpose(1, 2)
        attended, _ = self.attention(self.norm_query(queries), keys, values, need_weights=False)
        sparse = queries + attended
        sparse = sparse + self.mlp(sparse)
        class_dense = self.class_dense.repeat(n // self.num_classes, 1)[:, :, None, None]
        dense = self.dense(embedding) + class_dense
        return sparse[:, None], dense


class StaticPrompts(nn.Module):
    """Ablation: learned class tokens that do not look at the image; dense prompt left to SAM's default."""

    def __init__(self, *, num_classes: int, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.queries = nn.Parameter(torch.randn(num_classes, num_tokens, dim) * 0.02)

    def forward(self, embedding: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = embedding.shape[0]
        sparse = self.queries.repeat(n // self.num_classes, 1, 1)
        return sparse[:, None], torch.zeros_like(embedding)


def _heads(dim: int, wanted: int) -> int:
    while dim % wanted:
        wanted -= 1
    return wanted
