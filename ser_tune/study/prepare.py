"""The first steps of every study: its corpus, its split and the shared encode (frozen features, once)."""
from __future__ import annotations

import os
import platform
import socket
import sys
import time
from pathlib import Path

from ..data import SAMPLE_RATE, AudioStore, Corpus, Split, crop, load_corpus, make_split
from ..encoders import load_encoder, spec_fingerprint
from ..encoders.cache import FeatureCache, effective_max_length
from ..training.trainable import set_threads
from .folder import SPLIT_FILE, StudyFolder

PARTS = ("train", "val", "test")
DIMENSIONS = ("arousal", "valence", "dominance")


def load_study_corpus(corpus, storage: Path) -> Corpus:
    """The experiment's corpus (``corpus`` is its config section); the synthetic corpus is generated
    once under ``<storage>/_synthetic`` when no root is given."""
    root = corpus.root
    if corpus.name == "synthetic" and root is None:
        root = Path(storage).expanduser().resolve() / "_synthetic"
    return load_corpus(corpus.name, root, label_map=corpus.label_map, **(corpus.options or {}))


def study_split(folder: StudyFolder, corpus: Corpus, spec: dict) -> Split:
    """The study's split: made (seeded) and saved as split.json, or read back when resuming."""
    path = folder.dir / SPLIT_FILE
    if path.exists():
        return Split.load(path, corpus.table)
    split = make_split(corpus.table, dict(spec))
    split.save(path, corpus.table)
    return split


def data_meta(corpus: Corpus, split: Split) -> dict:
    """study.json's "corpus", "split" and "labels" entries."""
    table = corpus.table
    parts = {p: sorted(split.speakers(table, p)) for p in PARTS}
    meta = {
        "corpus": {"name": corpus.name, "root": str(corpus.root), "files": len(table),
                   "speakers": int(table["speaker"].nunique()), "synthetic": bool(corpus.synthetic),
                   "labels": {k: int(v) for k, v in table["label"].value_counts().sort_index().items()},
                   "skipped": len(corpus.skipped)},
        "split": {"kind": split.kind, "speaker_dependent": bool(split.speaker_dependent),
                  **{f"{p}_speakers": parts[p] for p in PARTS}, "counts": split.counts()},
        "labels": sorted(table["label"].unique()),
    }
    dims = [d for d in DIMENSIONS if d in table and table[d].notna().any()]
    if dims:
        labelled = table[dims].notna().all(axis=1).to_numpy()
        meta["corpus"]["dimensions_labelled"] = {
            p: {"labelled": int(labelled[(split.assignment == p).to_numpy()].sum()),
                "files": int((split.assignment == p).sum())} for p in PARTS}
    return meta


def machine_info() -> dict:
    import ray
    import torch

    return {"hostname": socket.gethostname(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": sys.version.split()[0], "torch": torch.__version__, "ray": ray.__version__, "nodes": 1}


def cache_root(storage) -> Path:
    """The feature cache, shared across the studies of one storage: its keys include clips, weights
    and max_length."""
    return Path(storage).expanduser().resolve() / "_feature_cache"


def encode_once(table, encoder_spec: str, root: Path, max_lengths, boundary_tops) -> dict:
    """Encode every clip once per effective max_length, with the frame-level hidden states at the
    boundaries below the top ``k`` layers for each k in ``boundary_tops`` (None: all layers train).
    Returns {"seconds", "encoder" (its description), "cache"} for study.json."""
    encoder = load_encoder(encoder_spec)
    set_threads(os.cpu_count() or 1)
    n = encoder.num_layers
    boundaries = sorted({0 if k is None else n - min(k, n) for k in boundary_tops})
    audio = AudioStore(SAMPLE_RATE)
    paths = [str(p) for p in table["path"]]
    durations = table["duration"].to_numpy(float)
    cache = FeatureCache(root, encoder_spec, spec_fingerprint(encoder_spec), lambda: encoder)
    start = time.perf_counter()
    lengths = {effective_max_length(m, durations) for m in max_lengths}
    for ml in sorted(lengths, key=lambda v: (v is None, v)):
        cache.get(paths, lambda i, ml=ml: crop(audio.get(paths[i]), ml, SAMPLE_RATE), ml, boundaries)
    return {"seconds": time.perf_counter() - start, "encoder": encoder.describe(),
            "cache": {"root": str(root), "max_lengths": [str(m) for m in sorted(lengths, key=str)],
                      "boundaries": boundaries, "misses": cache.stats.misses, "hits": cache.stats.hits}}
