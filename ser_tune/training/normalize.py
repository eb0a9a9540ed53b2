"""Feature normalisation: z-scoring of the encoder's per-layer pooled features, from unlabelled audio.

``normalize`` (a trial setting, fixed or searched):

- ``none``: features as the encoder gives them.
- ``corpus``: every layer's features minus the mean, over the standard deviation, of the clips the
  model trains on (the train part; no labels); an exported model keeps them for ``predict``.
  Evaluated on another corpus (cross-corpus), that corpus's own statistics replace them: the usual
  unsupervised adaptation to a new recording setup.
- ``speaker``: each speaker's clips z-scored with that speaker's own statistics, test speakers' included.
  This is transductive (it uses unlabelled audio of the speakers it scores), and it assumes each
  speaker's clips span the emotions, as acted corpora do: reports that use it say both. ``predict``
  takes the statistics of the clips it is given together, per speaker when told the speakers.

The statistics come from the frozen encoder's features (the feature cache). When encoder layers train,
their features get the same fixed map (it is not re-estimated as the layers change): a fixed affine
map of the head's input, which the head learns through. A speaker with fewer than ``MIN_CLIPS`` clips
gets the corpus statistics (one clip has no spread).

>>> import numpy as np
>>> pooled = np.array([[[1.0, 10.0]], [[3.0, 30.0]], [[5.0, 5.0]], [[7.0, 7.0]]])   # 4 clips, 1 layer, 2 dims
>>> norm = FeatureNorm.fit("speaker", pooled, speakers=["a", "a", "b", "b"], rows=np.arange(4))
>>> norm.apply(pooled, np.arange(4))[:, 0, 0].tolist()
[-1.0, 1.0, -1.0, 1.0]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NORMALIZE = ("none", "corpus", "speaker")
MIN_CLIPS = 2
EPS = 1e-6


@dataclass
class FeatureNorm:
    kind: str
    mean: np.ndarray             # (groups, states, dim)
    std: np.ndarray              # (groups, states, dim)
    group_of_row: np.ndarray     # (clips,) index into the groups, per clip
    reference: tuple[np.ndarray, np.ndarray]   # (states, dim) mean and std of the clips the model trains on

    @classmethod
    def fit(cls, kind: str, pooled: np.ndarray, *, speakers, rows: np.ndarray,
            reference: tuple[np.ndarray, np.ndarray] | None = None) -> "FeatureNorm | None":
        """Statistics of ``pooled`` (clips, states, dim) for ``kind``. ``reference``: the corpus statistics
        (``corpus``) and the fallback of speakers with too few clips (``speaker``); by default those of
        the clips ``rows`` (the train part). None for ``none``."""
        if kind not in NORMALIZE:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZE)} (got {kind!r})")
        if kind == "none":
            return None
        pooled = np.asarray(pooled, dtype=np.float64)
        reference = moments(pooled[np.asarray(rows)]) if reference is None else reference
        if kind == "corpus":
            return cls(kind, reference[0][None], reference[1][None], np.zeros(len(pooled), np.int64), reference)
        names, group = np.unique(np.asarray(speakers).astype(str), return_inverse=True)
        stats = [moments(pooled[group == g]) if (group == g).sum() >= MIN_CLIPS else reference
                 for g in range(len(names))]
        return cls(kind, np.stack([m for m, _ in stats]), np.stack([s for _, s in stats]),
                   group.astype(np.int64), reference)

    def shift_scale(self, rows) -> tuple[np.ndarray, np.ndarray]:
        """The mean and standard deviation (len(rows), states, dim) each of the clips ``rows`` is z-scored with."""
        group = self.group_of_row[np.asarray(rows, dtype=np.int64)]
        return self.mean[group], self.std[group]

    def apply_frames(self, frames, rows):
        """z-scored frames (len(rows), T, states, dim) (torch) of the clips ``rows``: every frame of a clip
        with the statistics its pooled features get (the same affine map)."""
        import torch

        mean, std = self.shift_scale(rows)
        return ((frames - torch.as_tensor(mean[:, None], dtype=frames.dtype))
                / torch.as_tensor(std[:, None], dtype=frames.dtype))

    def apply(self, features, rows):
        """z-scored ``features`` (len(rows), states, dim) of the clips ``rows`` (numpy or torch)."""
        mean, std = self.shift_scale(rows)
        if hasattr(features, "detach"):   # a torch tensor: keep it one (and its gradient path)
            import torch

            mean = torch.as_tensor(mean, dtype=features.dtype)
            std = torch.as_tensor(std, dtype=features.dtype)
        else:                              # numpy: keep the features' dtype (a head wants float32)
            mean, std = mean.astype(features.dtype, copy=False), std.astype(features.dtype, copy=False)
        return (features - mean) / std

    def tensors(self) -> dict:
        """What an exported model keeps: the reference statistics (the "norm" weight group)."""
        import torch

        return {"mean": torch.from_numpy(self.reference[0].astype(np.float32)),
                "std": torch.from_numpy(self.reference[1].astype(np.float32))}


def moments(pooled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per state and dimension: mean and standard deviation (floored at EPS) over the clips."""
    return pooled.mean(0), np.maximum(pooled.std(0), EPS)
