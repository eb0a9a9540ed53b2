"""Augmentation of cached frames, for the training batches of heads that read frames (``head: attentive``).

Each is a trial setting, off at 0, and costs nothing beside the head: no audio is decoded and no
encoder runs, the cached frames (or their pooled statistics) are changed on the way into the head.

- ``time_mask`` N: each clip loses a run of up to N consecutive frames (its width drawn from 0..N);
- ``frame_dropout`` p: each frame is dropped with probability p;
- ``feature_noise`` s: Gaussian noise of s times each feature's standard deviation over the training
  frames is added to every frame;
- ``mixup`` alpha: the clips' pooled statistics are mixed in pairs with a Beta(alpha, alpha) weight, and
  so are their one-hot targets (the loss mixes the two clips' losses with the same weight).

Masked and dropped frames leave the mask: the head's attention never sees them; a clip always keeps
one frame at least. Every draw comes from torch's RNG, which a trial runs as its own stream (saved with
its state), so a resumed trial draws what it would have drawn. Only ``FineTuner.fit_batch`` calls these:
validation and test clips are never augmented.
"""
from __future__ import annotations

import numpy as np
import torch

from .settings import TrialSettings


def augments(settings: TrialSettings) -> bool:
    """Whether ``settings`` change any training batch."""
    s = settings
    return bool(s.time_mask or s.frame_dropout or s.feature_noise or s.mixup)


def augment_frames(frames: torch.Tensor, mask: torch.Tensor, settings: TrialSettings,
                   feature_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, L+1, D) frames and their (B, T) mask, time-masked, dropped and noised as ``settings`` say;
    ``feature_std`` (L+1, D): each feature's standard deviation over the training frames."""
    s = settings
    if s.time_mask:
        mask = mask_time(mask, s.time_mask)
    if s.frame_dropout:
        mask = drop_frames(mask, s.frame_dropout)
    if s.feature_noise:
        frames = frames + torch.randn_like(frames) * (s.feature_noise * feature_std)
    return frames, mask


def mask_time(mask: torch.Tensor, width: int) -> torch.Tensor:
    """Each row without a run of w consecutive real frames, w drawn from 0..width (at most its length - 1),
    the run's start uniform over where it fits."""
    mask = mask.clone()
    lengths = mask.sum(1)
    for row in range(len(mask)):
        n = int(lengths[row])
        w = int(torch.randint(0, min(int(width), n - 1) + 1, ()))
        if w:
            start = int(torch.randint(0, n - w + 1, ()))
            mask[row, start: start + w] = False
    return mask


def drop_frames(mask: torch.Tensor, p: float) -> torch.Tensor:
    """Each real frame dropped with probability ``p``; a row that would lose all keeps its mask."""
    kept = mask & (torch.rand(mask.shape) >= p)
    return torch.where(kept.any(1, keepdim=True), kept, mask)


def mixup_pairs(n: int, alpha: float) -> tuple[np.ndarray, float] | None:
    """(a permutation of the batch's rows, the weight lambda of each row itself) for mixup, None when off."""
    if alpha <= 0 or n < 2:
        return None
    lam = float(torch.distributions.Beta(float(alpha), float(alpha)).sample())
    return torch.randperm(n).numpy(), lam
