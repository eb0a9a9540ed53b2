"""The active-learning loop of one trial, without Ray: cold start, then train / score / acquire rounds.

The *pool* is the train speakers' clips only: validation speakers pick each round's best epoch
(as in any trial) and test speakers only score it; neither is ever labelled, scored or picked.
A round r of the schedule ``fractions``:

1. select: round 1 takes ``cold_start`` (random, or the clips nearest k-means centres of the
   embeddings); later rounds score the unlabelled rest of the pool with the previous round's model
   and add the acquisition's top clips, up to ``round(fractions[r] * pool)`` labelled clips;
2. train: a normal :class:`FineTuner` run whose 'train' part is the labelled subset (feature cache,
   unfreeze schedule and head as in any trial), from the (TAPT) encoder when ``reinit`` is true
   (as AFTER, Li et al. 2023, did) or from the previous round's model when false;
3. report: val/test BCA of the round's best epoch, labelled count and the round's seconds.

Before its first round a worker process pays its one-off import costs untimed (``warm_up``), so round
seconds compare across acquisitions whichever trial a worker runs first.

Embeddings (for k-means and core-set) are the frozen encoder's per-layer pooled features from the
study's feature cache, standardised per layer and feature over the pool, then averaged over layers
(or, when the trial setting ``layer`` is an index, that layer alone).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..data import SAMPLE_RATE, crop
from ..encoders import SpeechEncoder, spec_fingerprint
from ..encoders.cache import FeatureCache, effective_max_length
from ..training.finetune import FineTuner, TrialData, TrialResult
from ..training.settings import TrialSettings
from ..training.trainable import pristine_encoder
from .acquisition import ACQUISITIONS, COLD_STARTS, select
from .config import FULL


class LoopError(ValueError):
    """The loop cannot run with these inputs; the message names the setting."""


@functools.cache
def warm_up() -> None:
    """Pay a worker process's one-off costs before any round is timed (the first AdamW imports torch's
    compiler stack, seconds; scikit-learn's k-means imports its own), so a worker's first trial is not
    charged for them and round times compare across acquisitions."""
    import sklearn.cluster  # noqa: F401
    import torch

    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.AdamW([p], lr=1e-3)
    (p.sum() ** 2).backward()
    opt.step()


def schedule_counts(fractions: list[float], pool_size: int) -> list[int]:
    """Labelled clips after each round: round(fraction * pool), at least 2 (the head's BatchNorm needs two
    clips) and at least one more than the round before, at most the pool."""
    if pool_size < 2:
        raise LoopError(f"the pool (train speakers' clips) has {pool_size} clip(s); active learning needs >= 2")
    counts, last = [], 0
    for f in fractions:
        n = min(pool_size, max(2, last + 1, int(round(f * pool_size))))
        if n <= last:
            break       # the pool is exhausted: later fractions add nothing
        counts.append(n)
        last = n
    return counts


def pool_embeddings(data: TrialData, pool: np.ndarray, *, encoder_spec: str, cache_root: str | Path,
                    settings: TrialSettings, encoder_loader: Callable[[str], SpeechEncoder] = pristine_encoder
                    ) -> np.ndarray:
    """(len(pool), D) embeddings of the pool clips from the feature cache (see the module docstring)."""
    ml = effective_max_length(settings.max_length, data.durations)
    cache = FeatureCache(cache_root, encoder_spec, spec_fingerprint(encoder_spec), lambda: encoder_loader(encoder_spec))
    feats = cache.get(data.paths, lambda i: crop(data.audio.get(data.paths[i]), ml, SAMPLE_RATE), ml, [])
    x = feats.pooled[pool].astype(np.float64)                      # (P, L+1, D)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    return x[:, settings.layer] if isinstance(settings.layer, int) else x.mean(1)


@dataclass
class LoopResult:
    rounds: list[dict]                          # one row per round (what the trial reports)
    selected: list[np.ndarray]                  # data rows added in each round
    pool: np.ndarray                            # data rows of the pool (train part)
    result: TrialResult | None = field(default=None, repr=False)   # the last round's run

    @property
    def labelled(self) -> np.ndarray:
        return np.concatenate(self.selected) if self.selected else np.zeros(0, np.int64)


def pool_probabilities(tuner: FineTuner, result: TrialResult, pool: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """Class probabilities of the pool's unlabelled clips under the last round's model (uniform for the
    labelled ones, which are never picked again)."""
    classes = len(tuner.data.labels)
    rest = np.flatnonzero(~labelled)
    probs = np.full((len(pool), classes), 1.0 / classes)
    probs[rest] = tuner.class_probabilities(result, pool[rest])
    return probs


def round_row(r: int, rounds: int, target: float, labelled: np.ndarray, picked: np.ndarray, pool: np.ndarray,
              data: TrialData, result: TrialResult, select_seconds: float, fit_seconds: float,
              cumulative: float) -> dict:
    """What a trial reports after round ``r``."""
    return {"round": r, "rounds": rounds, "labelled_count": int(labelled.sum()),
            "labelled_fraction": float(labelled.sum() / len(pool)), "target_fraction": float(target),
            "pool_size": int(len(pool)), "added": int(len(picked)),
            "classes_labelled": int(len(np.unique(data.y[pool[labelled]]))),
            "val_bca": result.val_bca, "test_bca": result.test_bca, "test_accuracy": result.test_accuracy,
            "best_epoch": result.best_epoch, "train_seconds": result.seconds["train"],
            "load_seconds": result.seconds["load"], "encode_seconds": result.seconds["encode"],
            "select_seconds": select_seconds, "fit_seconds": fit_seconds,
            "round_seconds": select_seconds + fit_seconds, "cumulative_seconds": cumulative}


def run_loop(data: TrialData, settings: TrialSettings, *, encoder_spec: str, cache_root: str | Path,
             acquisition: str, fractions: list[float], cold_start: str = "random", reinit: bool = True,
             seed: int = 0, report: Callable[[dict], None] | None = None,
             on_select: Callable[[int, np.ndarray], None] | None = None,
             encoder_loader: Callable[[str], SpeechEncoder] = pristine_encoder) -> LoopResult:
    """Run every round of one trial; ``acquisition`` 'full' is the full-label reference (one round, 100 %).
    ``report(row)`` gets each round's row; ``on_select(round, rows)`` the data rows it labelled, first."""
    if acquisition != FULL and acquisition not in ACQUISITIONS:
        raise LoopError(f"unknown acquisition '{acquisition}'; choose from {', '.join(ACQUISITIONS)} or {FULL}")
    if cold_start not in COLD_STARTS:
        raise LoopError(f"unknown cold start '{cold_start}'; choose from {', '.join(COLD_STARTS)}")
    warm_up()
    pool = np.asarray(data.parts["train"], dtype=np.int64)
    counts = [len(pool)] if acquisition == FULL else schedule_counts(list(fractions), len(pool))
    targets = [1.0] if acquisition == FULL else list(fractions)[:len(counts)]
    rng = np.random.default_rng(seed)
    labelled = np.zeros(len(pool), bool)
    t0 = time.perf_counter()
    embeddings = pool_embeddings(data, pool, encoder_spec=encoder_spec, cache_root=cache_root, settings=settings,
                                 encoder_loader=encoder_loader) if acquisition != FULL and (
        cold_start == "kmeans" or ACQUISITIONS[acquisition].needs == "embeddings") else None
    embed_seconds = time.perf_counter() - t0 if embeddings is not None else 0.0

    rows: list[dict] = []
    selected: list[np.ndarray] = []
    tuner: FineTuner | None = None
    result: TrialResult | None = None
    cumulative = 0.0
    for r, (count, target) in enumerate(zip(counts, targets), start=1):
        t0 = time.perf_counter()
        k = count - int(labelled.sum())
        if acquisition == FULL:
            picked = np.arange(len(pool))
        elif r == 1:   # random ignores the embeddings
            picked = select(cold_start, k, embeddings=embeddings, labelled_mask=labelled, rng=rng)
        else:
            probs = pool_probabilities(tuner, result, pool, labelled) \
                if ACQUISITIONS[acquisition].needs == "probs" else None
            picked = select(acquisition, k, probs=probs, embeddings=embeddings, labelled_mask=labelled, rng=rng)
        labelled[picked] = True
        selected.append(pool[picked])
        if on_select is not None:
            on_select(r, pool[picked])
        select_seconds = time.perf_counter() - t0 + (embed_seconds if r == 1 else 0.0)
        t1 = time.perf_counter()
        tuner = FineTuner(settings, dataclasses.replace(data, parts={**data.parts, "train": pool[labelled]}),
                          encoder_spec=encoder_spec, cache_root=cache_root, encoder_loader=encoder_loader)
        result = tuner.run(init_state=None if (reinit or result is None) else result.state)
        fit_seconds = time.perf_counter() - t1
        cumulative += select_seconds + fit_seconds
        rows.append(round_row(r, len(counts), target, labelled, picked, pool, data, result,
                              select_seconds, fit_seconds, cumulative))
        if report is not None:
            report(dict(rows[-1]))
    return LoopResult(rounds=rows, selected=selected, pool=pool, result=result)
