"""The classification head: what it reads (each hidden state's mean, or mean and standard deviation,
over the clip's frames; one layer, a learned weighted sum of layers, or every layer side by side),
then a linear or small MLP classifier.

The head consumes per-layer *pooled* statistics (B, L+1, D'), D' = D for ``pooling: mean`` and 2D
for ``meanstd`` (the mean's D features, then the standard deviation's): statistics of frozen layers
come straight from the cache. (For the mean, pooling and the layer weighting are both linear, so
pooling first is exact; for ``meanstd`` the learned mix is one of each layer's statistics.)

``head: logreg`` uses the same module as a linear head: its standardisation (``norm``) and
classifier hold a scikit-learn logistic regression's scaler and coefficients (see :func:`load_logreg`),
so evaluation, export and predict are the same code for every head.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..encoders.cache import masked_mean_std

POOLINGS = ("mean", "meanstd")


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real frames only: (B, T, D), (B, T) bool -> (B, D). Padding never enters the mean."""
    m = mask[..., None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def pool_states(states, mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """Hidden states [(B, T, D)] -> their statistics over each clip's real frames (B, len(states), D'),
    as the feature cache stores them (see :func:`stack_statistics`)."""
    if pooling == "mean":
        return torch.stack([masked_mean(h, mask) for h in states], dim=1)
    stats = [masked_mean_std(h, mask) for h in states]
    return torch.stack([torch.cat([m, s], dim=-1) for m, s in stats], dim=1)


def stack_statistics(mean: np.ndarray, std: np.ndarray | None, pooling: str) -> np.ndarray:
    """The head's input from the cache's per-layer statistics (N, L+1, D) each: the mean, or the mean
    and standard deviation side by side (N, L+1, 2D)."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)} (got {pooling!r})")
    if pooling == "mean":
        return mean
    if std is None:
        raise ValueError("pooling 'meanstd' needs the cache's pooled_std (an entry written before it was cached: "
                         "encode again)")
    return np.concatenate([mean, std], axis=-1)


class EmotionHead(nn.Module):
    def __init__(self, num_states: int, dim: int, num_outputs: int, *, layer: str | int = "weighted",
                 kind: str = "linear", hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.num_states = num_states
        self.layer = layer
        if layer == "weighted":
            self.layer_logits = nn.Parameter(torch.zeros(num_states))
        elif layer != "all" and not -num_states <= int(layer) < num_states:
            raise ValueError(f"trial setting 'layer' = {layer}: the encoder has hidden states 0..{num_states - 1}")
        # Standardise every pooled feature of every layer with statistics of the training clips
        # (a cumulative average, so a single epoch already gives exact statistics): layers differ in
        # scale, and the emotional information is a small variation around a large shared mean.
        self.norm = nn.BatchNorm1d(num_states * dim, affine=False, momentum=None)
        self.dropout = nn.Dropout(dropout)
        width = num_states * dim if layer == "all" else dim
        if kind == "mlp":
            self.classifier = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout),
                                            nn.Linear(hidden, num_outputs))
        else:   # "linear", and "logreg" (a linear map fitted by scikit-learn)
            self.classifier = nn.Linear(width, num_outputs)
        self.classifier_outputs = num_outputs

    def layer_weights(self) -> torch.Tensor:
        if self.layer == "weighted":
            return torch.softmax(self.layer_logits, dim=0)
        if self.layer == "all":
            return torch.ones(self.num_states)
        w = torch.zeros(self.num_states)
        w[int(self.layer)] = 1.0
        return w

    def read(self, pooled: torch.Tensor) -> torch.Tensor:
        """The part of (B, L+1, D') pooled statistics the head reads, before anything else: (B, D) of one
        layer, (B, L+1, D') for a mix, (B, (L+1) * D') for every layer side by side."""
        if self.layer == "weighted":
            return pooled
        if self.layer == "all":
            return pooled.flatten(1)
        return pooled[:, int(self.layer)]

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, L+1, D') pooled layers -> the classifier's input."""
        pooled = self.norm(pooled.flatten(1)).view(pooled.shape)
        if self.layer == "weighted":
            return (pooled * self.layer_weights()[None, :, None]).sum(1)
        return self.read(pooled)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.embed(pooled)))

    def read_slice(self, dim: int) -> slice:
        """Which of the flattened (L+1) * D' features the head reads (its norm's positions)."""
        if self.layer == "all":
            return slice(0, self.num_states * dim)
        k = int(self.layer) % self.num_states
        return slice(k * dim, (k + 1) * dim)


@torch.no_grad()
def load_logreg(head: EmotionHead, model, dim: int) -> None:
    """Make ``head`` (layer one index or "all", a linear classifier) compute ``model``'s class logits:
    ``model`` is scikit-learn's StandardScaler + LogisticRegression pipeline fitted on ``head.read`` of
    un-normalised pooled statistics (feature width ``dim`` per state). The scaler goes into the head's
    norm (its other features stay as they are: the head does not read them), the coefficients into its
    classifier; classes the regression never saw get a logit far below the others."""
    scaler, regression = model[0], model[-1]
    read = head.read_slice(dim)
    eps = head.norm.eps   # BatchNorm divides by sqrt(var + eps): store scale^2 - eps to divide by scale
    head.norm.running_mean.zero_()
    head.norm.running_var.fill_(1.0 - eps)
    head.norm.running_mean[read] = torch.as_tensor(scaler.mean_, dtype=torch.float32)
    head.norm.running_var[read] = torch.as_tensor(np.asarray(scaler.scale_, np.float64) ** 2 - eps, dtype=torch.float32)
    coef = np.asarray(regression.coef_, np.float64)
    intercept = np.asarray(regression.intercept_, np.float64)
    if coef.shape[0] == 1:   # two classes: sklearn keeps one logit s; softmax([0, s]) is its sigmoid
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    weight = np.zeros((head.classifier_outputs, coef.shape[1]))
    bias = np.full(head.classifier_outputs, -1e4)
    classes = np.asarray(regression.classes_, dtype=np.int64)
    weight[classes], bias[classes] = coef, intercept
    head.classifier.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
    head.classifier.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
