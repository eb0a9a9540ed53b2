"""The classification head: learned weighted sum of layers (or one layer), masked mean pooling,
then a linear or small MLP classifier.

The head consumes per-layer *pooled* features (B, L+1, D): pooling and the layer weighting are
both linear, so pooling first is exact and lets frozen layers come straight from the cache.
"""
from __future__ import annotations

import torch
from torch import nn


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real frames only: (B, T, D), (B, T) bool -> (B, D). Padding never enters the mean."""
    m = mask[..., None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class EmotionHead(nn.Module):
    def __init__(self, num_states: int, dim: int, num_outputs: int, *, layer: str | int = "weighted",
                 kind: str = "linear", hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.num_states = num_states
        self.layer = layer
        if layer == "weighted":
            self.layer_logits = nn.Parameter(torch.zeros(num_states))
        elif not -num_states <= int(layer) < num_states:
            raise ValueError(f"trial setting 'layer' = {layer}: the encoder has hidden states 0..{num_states - 1}")
        # Standardise every pooled feature of every layer with statistics of the training clips
        # (a cumulative average, so a single epoch already gives exact statistics): layers differ in
        # scale, and the emotional information is a small variation around a large shared mean.
        self.norm = nn.BatchNorm1d(num_states * dim, affine=False, momentum=None)
        self.dropout = nn.Dropout(dropout)
        if kind == "mlp":
            self.classifier = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                            nn.Linear(hidden, num_outputs))
        else:
            self.classifier = nn.Linear(dim, num_outputs)
        self.classifier_outputs = num_outputs

    def layer_weights(self) -> torch.Tensor:
        if self.layer == "weighted":
            return torch.softmax(self.layer_logits, dim=0)
        w = torch.zeros(self.num_states)
        w[int(self.layer)] = 1.0
        return w

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, L+1, D) pooled layers -> (B, D) utterance embedding."""
        pooled = self.norm(pooled.flatten(1)).view(pooled.shape)
        if self.layer == "weighted":
            return (pooled * self.layer_weights()[None, :, None]).sum(1)
        return pooled[:, int(self.layer)]

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.embed(pooled)))
