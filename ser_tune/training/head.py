"""The classification head: what it reads (each hidden state's mean, or mean and standard deviation,
over the clip's frames; one layer, a learned weighted sum of layers, or every layer side by side),
then a linear or small MLP classifier.

The head consumes per-layer *pooled* statistics (B, L+1, D'), D' = D for ``pooling: mean`` and 2D
for ``meanstd`` (the mean's D features, then the standard deviation's): statistics of frozen layers
come straight from the cache. (For the mean, pooling and the layer weighting are both linear, so
pooling first is exact; for ``meanstd`` the learned mix is one of each layer's statistics.)

``head: logreg`` and ``head: lda`` use the same module as a linear head: its standardisation (``norm``)
and classifier hold a scikit-learn model's scaler and linear map (``training.fitted``, :func:`load_fitted`),
so evaluation, export and predict are the same code for every head.

``head: attentive`` (:class:`AttentiveHead`) reads every layer's cached frames instead and pools them
itself: standardised per layer and feature with the training frames' statistics, mixed by learned
softmax layer weights, pooled by attentive statistics pooling (Okabe et al., 2018: an attention-weighted
mean and standard deviation over the clip's unpadded frames), then a linear classifier.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..encoders.cache import masked_mean_std
from .settings import TrialSettings

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
        else:   # "linear", and "logreg" / "lda" (a linear map fitted by scikit-learn)
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
def load_fitted(head: EmotionHead, model, dim: int) -> None:
    """Make ``head`` (layer one index or "all", a linear classifier) compute ``model``'s class scores:
    ``model`` is a fitted head (``training.fitted``: logreg or lda) fitted on ``head.read`` of
    un-normalised pooled statistics (feature width ``dim`` per state). Its standardisation goes into the
    head's norm (its other features stay as they are: the head does not read them), its linear map into
    the classifier; classes the model never saw get a score far below the others."""
    from .fitted import linear_map   # late: scikit-learn loads only in a fitted head's trial

    mean, scale, coef, intercept, classes = linear_map(model)
    read = head.read_slice(dim)
    eps = head.norm.eps   # BatchNorm divides by sqrt(var + eps): store scale^2 - eps to divide by scale
    head.norm.running_mean.zero_()
    head.norm.running_var.fill_(1.0 - eps)
    head.norm.running_mean[read] = torch.as_tensor(mean, dtype=torch.float32)
    head.norm.running_var[read] = torch.as_tensor(scale ** 2 - eps, dtype=torch.float32)
    weight = np.zeros((head.classifier_outputs, coef.shape[1]))
    bias = np.full(head.classifier_outputs, -1e4)
    classes = np.asarray(classes, dtype=np.int64)
    weight[classes], bias[classes] = coef, intercept
    head.classifier.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
    head.classifier.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))


class AttentiveHead(nn.Module):
    """Frames of every hidden state (B, T, L+1, D) and a mask of the real ones (B, T) -> outputs.

    Each frame's features are standardised per layer and feature with fixed statistics (the buffers
    ``frame_mean``, ``frame_std``: the training frames', see :func:`frame_moments`), mixed over layers
    by learned softmax weights, and pooled by attention: a score per frame from a small tanh network,
    softmax over the clip's real frames (padding never enters), then the weighted mean and standard
    deviation side by side (2D) go through dropout to a linear classifier."""

    def __init__(self, num_states: int, dim: int, num_outputs: int, *, hidden: int = 128, dropout: float = 0.1):
        super().__init__()
        self.num_states = num_states
        self.layer_logits = nn.Parameter(torch.zeros(num_states))
        self.register_buffer("frame_mean", torch.zeros(num_states, dim))
        self.register_buffer("frame_std", torch.ones(num_states, dim))
        self.attention = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * dim, num_outputs)
        self.classifier_outputs = num_outputs

    def layer_weights(self) -> torch.Tensor:
        return torch.softmax(self.layer_logits, dim=0)

    @torch.no_grad()
    def set_statistics(self, mean: np.ndarray, std: np.ndarray) -> None:
        """The standardisation's per-layer statistics (L+1, D)."""
        self.frame_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.frame_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def pool(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, L+1, D) frames -> (B, 2D): the attention-weighted mean and standard deviation of the
        layer mix over the real frames (``mask`` None: every frame is real)."""
        mixed = torch.einsum("btld,l->btd", (frames - self.frame_mean) / self.frame_std, self.layer_weights())
        scores = self.attention(mixed).squeeze(-1)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(scores, dim=1).unsqueeze(-1)
        mean = (alpha * mixed).sum(1)
        var = (alpha * (mixed - mean.unsqueeze(1)) ** 2).sum(1)
        return torch.cat([mean, torch.sqrt(var + 1e-6)], dim=-1)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled))

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(self.pool(frames, mask))


def frame_moments(mean: np.ndarray, std: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (L+1, D) over every frame of some clips, from each clip's frame mean
    and standard deviation (N, L+1, D) and frame count (N,): exact for the frames they were taken over
    (frames averaged in time afterwards keep the mean and spread a little less)."""
    weight = np.asarray(lengths, dtype=np.float64) / max(float(np.sum(lengths)), 1.0)
    mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
    mu = np.einsum("n,nld->ld", weight, mean)
    second = np.einsum("n,nld->ld", weight, std ** 2 + mean ** 2)
    return mu, np.sqrt(np.maximum(second - mu ** 2, 1e-12))


def make_head(settings: TrialSettings, num_states: int, dim: int, num_outputs: int) -> nn.Module:
    """The head of ``settings``' family on ``num_states`` hidden states of ``dim`` features (for a head
    that reads pooled statistics, ``dim`` is their width D')."""
    s = settings
    if s.reads_frames:
        return AttentiveHead(num_states, dim, num_outputs, hidden=s.attention_hidden, dropout=s.dropout)
    return EmotionHead(num_states, dim, num_outputs, layer=s.layer, kind=s.head, hidden=s.head_hidden,
                       dropout=s.dropout)
