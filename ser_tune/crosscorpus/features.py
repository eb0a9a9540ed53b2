"""What the heads read: the tuned model's features of each clip, or the original encoder's through the
shared feature cache, normalised as the model normalises its own corpus."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from ..data import AudioError, load_audio


def embed_files(model, paths: list[str], memo: dict) -> tuple[np.ndarray, list[int], list[dict]]:
    """Tuned-model features (N, L+1, D) of the files that decode; their indices; the failures.

    ``memo`` (path -> features or failure) makes a file shared by several targets (one corpus
    read through two label views) cost one decode and one encoder pass.
    """
    feats, kept, failed = [], [], []
    for i, path in enumerate(paths):
        if path not in memo:
            try:
                memo[path] = model.embed(load_audio(path, model.sample_rate))[0].numpy()
            except AudioError as err:
                memo[path] = {"path": err.path, "reason": err.reason}
        if isinstance(memo[path], dict):
            failed.append(memo[path])
            continue
        feats.append(memo[path])
        kept.append(i)
    return (np.stack(feats).astype(np.float32) if feats else np.zeros((0, 0, 0), np.float32)), kept, failed


class OriginalFeatures:
    """Frozen features from the encoder's original weights, through the shared feature cache.

    The cache key is (clip list, weights fingerprint, effective max_length): a study's own
    corpus in its table order hits the entry the study computed, so nothing is re-encoded.
    """

    def __init__(self, spec: str, sample_rate: int, max_length: float | None, cache_root: Path):
        from ..encoders import spec_fingerprint
        from ..encoders.cache import FeatureCache

        self.spec = spec
        self.sample_rate = sample_rate
        self.max_length = max_length
        self._encoder = None
        self.cache = FeatureCache(cache_root, spec, spec_fingerprint(spec), self.encoder)

    def encoder(self):
        if self._encoder is None:
            from ..encoders import load_encoder

            self._encoder = load_encoder(self.spec)
        return self._encoder

    def pooled(self, paths: list[str], durations) -> np.ndarray:
        from ..data import AudioStore, crop
        from ..encoders.cache import effective_max_length

        audio = AudioStore(self.sample_rate)
        ml = effective_max_length(self.max_length, durations)
        feats = self.cache.get(list(paths), lambda i: crop(audio.get(paths[i]), ml, self.sample_rate), ml)
        return feats.pooled


def encoder_fine_tuned(model, original) -> bool:
    """True when any encoder weight of the tuned model differs from the encoder spec's own (of the layers
    it kept, when it was exported truncated at the layer its head reads)."""
    import torch

    tuned = model.encoder.state_dict()
    if model.encoder.num_layers < original.num_layers:
        original = copy.deepcopy(original)
        original.truncate(model.encoder.num_layers)
    reference = original.state_dict()
    return set(tuned) != set(reference) or any(tuned[name].shape != value.shape or not torch.equal(tuned[name], value)
                                               for name, value in reference.items())


def normalized_features(pooled: np.ndarray, speakers, normalize: str) -> np.ndarray:
    """Features z-scored as a model with ``normalize`` sees them on a corpus of its own: with that
    corpus's statistics (``corpus``), each speaker's (``speaker``), or as they are (``none``)."""
    from ..training.normalize import FeatureNorm

    norm = FeatureNorm.fit(normalize, pooled, speakers=speakers, rows=np.arange(len(pooled)))
    return pooled if norm is None else norm.apply(pooled, np.arange(len(pooled)))
