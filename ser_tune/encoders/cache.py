"""The feature cache: frozen encoder layers' outputs, computed once per study and shared.

While encoder layers are frozen their outputs depend only on (clips, encoder weights,
max_length), not on the trial. One encoder pass stores, per clip:

- ``pooled``: the masked mean over frames of every hidden state, (N, L+1, D). Weighted layer
  sums and mean pooling are both linear, so they commute: a head on the learned weighted sum
  of mean-pooled layers equals one on the mean-pooled weighted sum. Head-only epochs therefore
  need nothing else and cost only the head.
- ``frames`` at a layer boundary b (optional): the full (T_i, D) hidden state at index b, the
  input of the lowest layer a "top-k" trial trains (b = L - k), so such a trial runs only its top layers.

Entries live on disk under the study's storage (shared by every trial and node), written to a
temporary name and renamed, under an exclusive file lock so concurrent trials compute an entry once.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from filelock import FileLock

from .base import SpeechEncoder


@dataclass
class CachedFeatures:
    pooled: np.ndarray                    # (N, L+1, D) float32
    lengths: np.ndarray                   # (N,) frames per clip
    frames: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # b -> (concat (sumT, D), offsets (N+1,))

    def frames_of(self, boundary: int, index: int) -> np.ndarray:
        data, offsets = self.frames[boundary]
        return data[offsets[index]: offsets[index + 1]]


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    encode_seconds: float = 0.0
    clips_encoded: int = 0


def effective_max_length(max_length: float | None, durations: Sequence[float]) -> float | None:
    """The crop that really applies: a max_length past the longest clip keeps whole clips, so
    e.g. 3 s and 10 s on a corpus of 2 s clips share one cache entry."""
    if max_length is None or not len(durations):
        return None
    return None if max_length >= max(durations) else float(max_length)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)


class FeatureCache:
    """Encode-once store of frozen features under ``root``.

    ``encoder_loader`` is called only on a miss, so a head-only trial with a warm cache never
    loads the encoder.
    """

    def __init__(self, root: str | Path, encoder_spec: str, encoder_fingerprint: str,
                 encoder_loader: Callable[[], SpeechEncoder], *, batch_size: int = 16):
        self.root = Path(root)
        self.encoder_spec = encoder_spec
        self.encoder_fingerprint = encoder_fingerprint
        self._loader = encoder_loader
        self._encoder: SpeechEncoder | None = None
        self.batch_size = batch_size
        self.stats = CacheStats()

    @property
    def encoder(self) -> SpeechEncoder:
        if self._encoder is None:
            self._encoder = self._loader()
        return self._encoder

    def key(self, clip_ids: Sequence[str], max_length: float | None) -> str:
        digest = hashlib.sha256()
        digest.update(f"{self.encoder_fingerprint}|{max_length}|v1".encode())
        for clip in clip_ids:
            digest.update(clip.encode())
            digest.update(b"\0")
        return digest.hexdigest()[:20]

    def get(self, clip_ids: Sequence[str], load_wave: Callable[[int], np.ndarray], max_length: float | None,
            boundaries: Sequence[int] = ()) -> CachedFeatures:
        """Features for the clips (in order); ``load_wave(i)`` gives clip i's cropped waveform."""
        folder = self.root / self.key(clip_ids, max_length)
        folder.mkdir(parents=True, exist_ok=True)
        wanted = sorted(set(int(b) for b in boundaries))
        if self._complete(folder, wanted):
            self.stats.hits += 1
            return self._load(folder, wanted)
        with FileLock(folder / ".lock"):  # exclusive across processes: concurrent trials encode an entry once
            missing = [b for b in wanted if not (folder / f"frames_{b}.npy").exists()]
            if self._complete(folder, wanted):  # another trial finished it while we waited
                self.stats.hits += 1
            else:
                self.stats.misses += 1
                self._encode(folder, len(clip_ids), load_wave, missing,
                             need_pooled=not (folder / "meta.json").exists())
                (folder / "meta.json.tmp").write_text(json.dumps({
                    "encoder": self.encoder_spec, "fingerprint": self.encoder_fingerprint,
                    "max_length": max_length, "clips": len(clip_ids), "created": time.time()}))
                os.replace(folder / "meta.json.tmp", folder / "meta.json")
        return self._load(folder, wanted)

    @staticmethod
    def _complete(folder: Path, boundaries: Sequence[int]) -> bool:
        return (folder / "meta.json").exists() and all((folder / f"frames_{b}.npy").exists() for b in boundaries)

    def _load(self, folder: Path, boundaries: Sequence[int]) -> CachedFeatures:
        feats = CachedFeatures(pooled=np.load(folder / "pooled.npy"), lengths=np.load(folder / "lengths.npy"))
        for b in boundaries:
            feats.frames[b] = (np.load(folder / f"frames_{b}.npy", mmap_mode="r"),
                               np.load(folder / f"offsets_{b}.npy"))
        return feats

    @torch.no_grad()
    def _encode(self, folder: Path, n: int, load_wave, boundaries: list[int], need_pooled: bool) -> None:
        start = time.perf_counter()
        encoder = self.encoder
        encoder.eval()
        waves = [load_wave(i) for i in range(n)]
        deepest = encoder.num_layers if need_pooled else max(boundaries)
        pooled = np.zeros((n, encoder.num_layers + 1, encoder.hidden_size), np.float32) if need_pooled else None
        lengths = np.zeros(n, np.int64)
        frames: dict[int, list[np.ndarray]] = {b: [None] * n for b in boundaries}
        for batch in _equal_length_batches(waves, self.batch_size):
            x = torch.from_numpy(np.stack([waves[i] for i in batch]))
            lens = torch.full((len(batch),), x.shape[1], dtype=torch.long)
            hidden, mask = encoder.embed(x, lens)
            states = [hidden, *encoder.run_layers(hidden, mask, 0, deepest)]
            m = mask[..., None].float()
            counts = m.sum(1).clamp(min=1)
            for row, i in enumerate(batch):
                lengths[i] = int(mask[row].sum())
            if pooled is not None:
                means = torch.stack([(h * m).sum(1) / counts for h in states], dim=1)
                pooled[batch] = means.numpy()
            for b in boundaries:
                for row, i in enumerate(batch):
                    frames[b][i] = states[b][row, : lengths[i]].numpy().astype(np.float32)
        if pooled is not None:
            _atomic_save(folder / "pooled.npy", pooled)
            _atomic_save(folder / "lengths.npy", lengths)
        for b in boundaries:
            offsets = np.concatenate([[0], np.cumsum([f.shape[0] for f in frames[b]])]).astype(np.int64)
            _atomic_save(folder / f"offsets_{b}.npy", offsets)
            _atomic_save(folder / f"frames_{b}.npy", np.concatenate(frames[b], axis=0))
        self.stats.encode_seconds += time.perf_counter() - start
        self.stats.clips_encoded += n


def _equal_length_batches(waves: Sequence[np.ndarray], batch_size: int) -> list[list[int]]:
    """Batch only clips of identical length: no padding enters the encoder, so a clip's cached
    features do not depend on which clips shared its batch (wav2vec2-base's group norm would see padding)."""
    by_length: dict[int, list[int]] = {}
    for i, w in enumerate(waves):
        by_length.setdefault(len(w), []).append(i)
    batches = []
    for _, idx in sorted(by_length.items()):
        for s in range(0, len(idx), batch_size):
            batches.append(idx[s: s + batch_size])
    return batches
