"""The first steps of every study: its corpus, its split and the shared encode (frozen features, once)."""
from __future__ import annotations

import os
import platform
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import (SAMPLE_RATE, AudioStore, Corpus, Split, check_split, crop, decoded_length, load_corpus,
                    make_split, outer_fold_assignments, speaker_folds)
from ..encoders import load_encoder, spec_fingerprint
from ..encoders.cache import FeatureCache, effective_max_length
from ..encoders.distributed import RayShardedEncode, spreading_pays
from ..encoders.precision import resolve as resolve_precision
from ..training.trainable import set_threads
from .folder import SPLIT_FILE, StudyFolder

PARTS = ("train", "val", "test")
DIMENSIONS = ("arousal", "valence", "dominance")


def load_study_corpus(corpus, storage: Path) -> Corpus:
    """The experiment's corpus (``corpus`` is its config section); the synthetic corpus is generated
    once under ``<storage>/_synthetic`` when no root is given."""
    root = Path(storage).expanduser().resolve() / "_synthetic" if (
        corpus.name == "synthetic" and corpus.root is None) else corpus.root
    return load_corpus(corpus.name, root, label_map=corpus.label_map, drop_labels=corpus.drop_labels,
                       min_duration=corpus.min_duration, **(corpus.options or {}))


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
    meta = {"corpus": {"name": corpus.name, "root": str(corpus.root), "files": len(table),
                       "speakers": int(table["speaker"].nunique()), "synthetic": bool(corpus.synthetic),
                       "labels": {k: int(v) for k, v in table["label"].value_counts().sort_index().items()},
                       "skipped": len(corpus.skipped)},
            "split": {"kind": split.kind, "speaker_dependent": bool(split.speaker_dependent),
                      **{f"{p}_speakers": sorted(split.speakers(table, p)) for p in PARTS},
                      "counts": split.counts()},
            "labels": sorted(table["label"].unique())}
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


def encode_once(table, encoder_spec: str, root: Path, max_lengths, boundary_tops, frame_averages=(),
                precision: str = "auto") -> dict:
    """Encode every clip once per effective max_length, with the frame-level hidden states at the
    boundaries below the top ``k`` layers for each k in ``boundary_tops`` (None: all layers train), and
    every hidden state's frames averaged over each of ``frame_averages`` (for heads that read frames), the
    layers run in ``precision`` (resolved here, so that every node of a cluster encodes alike).
    With Ray initialised (a study's driver) and ``encoders.distributed.spreading_pays``, the clips are encoded
    as Ray tasks over every CPU of the cluster (``RayShardedEncode``), else here with every core; same cache
    entries either way, and a progress line on stderr while an entry is encoded.
    Returns {"seconds", "encoder" (its description), "cache"} for study.json ("cache": entries, hits,
    misses, and under "ray" the tasks and clips per node when Ray encoded), and "pooled": the per-layer
    pooled features at the first max_length (the linear probe's)."""
    import ray

    paths = [str(p) for p in table["path"]]
    lengths = [effective_max_length(m, table["duration"].to_numpy(float)) for m in max_lengths]
    audio_seconds = float(table["duration"].sum())
    precision = resolve_precision(precision)
    spread = (RayShardedEncode(encoder_spec)
              if ray.is_initialized() and spreading_pays(audio_seconds) else None)
    cache = FeatureCache(root, encoder_spec, spec_fingerprint(encoder_spec), lambda: load_encoder(encoder_spec),
                         encode_clips=spread, progress=True, precision=precision)
    set_threads(os.cpu_count() or 1)
    cached = all(cache.has(paths, ml, averages=frame_averages) for ml in lengths)
    description = cache.remembered_description() if cached else None
    if description is None:
        if spread is not None and not cached:
            spread.warm_up()   # the cluster's workers load the encoder; this process never needs it
            description = spread.describe() or cache.encoder.describe()
        else:
            description = cache.encoder.describe()
        cache.remember_description(description)
    n = description["num_layers"]
    boundaries = sorted({0 if k is None else n - min(k, n) for k in boundary_tops})
    audio = AudioStore(SAMPLE_RATE)
    start = time.perf_counter()
    pooled = {}
    for ml in sorted(set(lengths), key=lambda v: (v is None, v)):
        pooled[ml] = cache.get(paths, lambda i, ml=ml: crop(audio.get(paths[i]), ml, SAMPLE_RATE), ml, boundaries,
                               length_hint=lambda i, ml=ml: decoded_length(paths[i], SAMPLE_RATE, ml),
                               averages=frame_averages).pooled
    summary = {"root": str(root), "max_lengths": [str(m) for m in sorted(set(lengths), key=str)],
               "boundaries": boundaries, "frame_averages": sorted(frame_averages), "precision": precision,
               "misses": cache.stats.misses,
               "hits": cache.stats.hits}
    if spread is not None and spread.tasks:
        summary["ray"] = spread.summary()
    return {"seconds": time.perf_counter() - start, "encoder": description, "pooled": pooled[lengths[0]],
            "cache": summary}


@dataclass
class FoldPlan:
    """The speakers each part of a study sees. ``outer[f]``: outer fold f's assignment (train / val /
    test; one fold = the study's split). A trial of outer fold f trains and validates on
    ``inner(f, r)``: the ``cv_folds`` speaker folds of its non-test speakers (or, with one fold, the
    outer assignment's own validation speakers), drawn again for each repeat r when the study
    repeats over the split."""
    table: pd.DataFrame
    outer: list[pd.Series]
    cv_folds: int
    seed: int
    over_split: bool = False

    def inner(self, fold: int, repeat: int = 0) -> list[pd.Series]:
        seed = self.seed + (repeat if self.over_split else 0)
        outer = self.outer[fold]
        if self.cv_folds == 1:
            return [outer if seed == self.seed else redrawn_validation(self.table, outer, seed)]
        return inner_assignments(self.table, outer, self.cv_folds, seed, where=f"outer fold {fold}",
                                 name="objective.cv_folds")

    def outer_rows(self, fold: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows outer fold ``fold`` trains on (its search's training and validation speakers) and tests."""
        outer = self.outer[fold]
        return np.flatnonzero((outer != "test").to_numpy()), np.flatnonzero((outer == "test").to_numpy())

    def inner_rows(self, fold: int, repeat: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """(training rows, validation rows) of each of ``inner(fold, repeat)``."""
        return [(np.flatnonzero((a == "train").to_numpy()), np.flatnonzero((a == "val").to_numpy()))
                for a in self.inner(fold, repeat)]

    def speakers(self, assignment: pd.Series) -> dict:
        return {f"{p}_speakers": sorted(self.table.loc[(assignment == p).to_numpy(), "speaker"].astype(str).unique())
                for p in PARTS}

    def describe(self, repeats: int) -> dict:
        """study.json's "folds": each outer fold's speakers, and each inner fold's validation speakers
        (per repeat when the split is drawn again), enough to rebuild every assignment."""
        outer = [self.speakers(a) for a in self.outer]
        draws = range(repeats if self.over_split else 1)
        inner = {f"f{f}-r{r}": [self.speakers(a)["val_speakers"] for a in self.inner(f, r)]
                 for f in range(len(self.outer)) for r in draws}
        return {"outer": outer, "cv_folds": self.cv_folds, "inner_val_speakers": inner}


def fold_plan(corpus: Corpus, split: Split, *, outer_folds: int, cv_folds: int, split_spec: dict,
              over_split: bool) -> FoldPlan:
    """Outer folds of test speakers (one: the study's split) and the inner folds of each."""
    table = corpus.table
    seed = int(split_spec.get("seed", 0))
    if outer_folds == 1:
        outer = [split.assignment]
    else:
        outer = outer_fold_assignments(table, outer_folds, val_speakers=split_spec.get("val_speakers", 2),
                                       seed=seed, name="evaluation.outer_folds")
    plan = FoldPlan(table=table, outer=outer, cv_folds=cv_folds, seed=seed, over_split=over_split)
    for f in range(len(outer)):   # every inner assignment checked (leaks, untrainable classes) up front
        plan.inner(f)
    return plan


def inner_assignments(table: pd.DataFrame, outer: pd.Series, k: int, seed: int, *, where: str,
                      name: str = "k") -> list[pd.Series]:
    """k speaker folds of the non-test speakers: in fold i, fold i's speakers validate, the rest train."""
    testing = (outer == "test").to_numpy()
    folds = []
    for i, held in enumerate(speaker_folds(table, k, seed=seed, rows=~testing, name=name)):
        parts = np.where(testing, "test", np.where(held, "val", "train"))
        assignment = pd.Series(parts, index=table.index, dtype=object, name="part")
        check_split(table, assignment, where=f"{where}, inner fold {i}")
        folds.append(assignment)
    return folds


def redrawn_validation(table: pd.DataFrame, outer: pd.Series, seed: int) -> pd.Series:
    """Another draw of the validation speakers among the non-test ones, as many as the outer
    assignment has (a repeat over the split when a trial has one validation split)."""
    testing = (outer == "test").to_numpy()
    speakers = table["speaker"].astype(str)
    n_val = speakers[(outer == "val").to_numpy()].nunique()
    n_rest = speakers[~testing].nunique()
    k = max(2, round(n_rest / max(n_val, 1)))
    folds = inner_assignments(table, outer, k, seed, where="repeated split")
    return folds[seed % k]
