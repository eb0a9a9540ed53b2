"""One trial's settings trained on K speaker folds in lockstep: the cross-validated objective.

Each epoch trains every fold's model once and scores its own validation speakers; the trial reports
the mean over folds (and each fold's value and their spread), and the epoch it keeps is the best on
the mean, the same epoch for every fold. At the end every fold's model is scored on the test
speakers (the outer fold's, never seen by any fold) and the trial's test metrics are their mean.
With K = 1 this is exactly one fine-tuning run. Trials with trained encoder layers cost K times more.

Resume: every fold's epoch state is saved after each epoch (``fold<k>/`` under the trial's state
folder; the folder itself with one fold); a trial cut off between two folds' saves starts again.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .finetune import STATE_FILE, FineTuner, FitState, TrialData, TrialResult
from .settings import TrialSettings


@dataclass
class FoldedResult:
    results: list[TrialResult]
    objective: str
    history: list[dict] = field(default_factory=list)   # one row per epoch, means over folds

    @property
    def best_epoch(self) -> int:
        return self.results[0].best_epoch

    def metrics(self) -> dict:
        """The trial's final metrics: validation at the kept epoch and test, each the mean over folds,
        with each fold's value (``_folds``) and their spread (``_sd``) when there are several folds."""
        out = {"best_epoch": self.best_epoch, **fold_means([r.val_metrics for r in self.results]),
               **fold_means([r.test_metrics for r in self.results])}
        confusions = [np.asarray(r.test_confusion) for r in self.results if r.test_confusion is not None]
        if confusions:
            out["test_confusion"] = np.sum(confusions, axis=0).tolist()
        first = self.results[0]
        out.update(trainable_params=first.trainable_params, total_params=first.total_params)
        for name in first.seconds:
            out[f"{name}_seconds"] = float(sum(r.seconds[name] for r in self.results))
        return out


def fold_means(rows: list[dict]) -> dict:
    """{metric: mean over folds}; with several folds also {metric_sd, metric_folds}."""
    out = {}
    for key in rows[0] if rows else []:
        values = [row.get(key) for row in rows]
        if not all(isinstance(v, (int, float)) for v in values):
            continue
        out[key] = float(np.mean(values))
        if len(rows) > 1:
            out[f"{key}_sd"] = float(np.std(values))
            out[f"{key}_folds"] = [float(v) for v in values]
    return out


class FoldedRun:
    """The fine-tuners of one trial, one per inner fold (``datas``: the same clips, other assignments)."""

    def __init__(self, settings: TrialSettings, datas: list[TrialData], **tuner_options):
        self.settings = settings
        self.tuners = [FineTuner(settings, data, **tuner_options) for data in datas]
        self.best = -math.inf

    @property
    def objective(self) -> str:
        return self.settings.objective

    def fold_dirs(self, state_dir: Path) -> list[Path]:
        return [state_dir] if len(self.tuners) == 1 else [state_dir / f"fold{k}" for k in range(len(self.tuners))]

    def start(self, state_dir: Path | None) -> list[FitState]:
        """Every fold's fine-tuning before its first epoch, or where the saved epoch states left off."""
        dirs = self.fold_dirs(state_dir) if state_dir is not None else [None] * len(self.tuners)
        saved = [d is not None and (d / STATE_FILE).exists() for d in dirs]
        states = [t.start(resume_dir=d if ok else None) for t, d, ok in zip(self.tuners, dirs, saved)]
        if any(saved) and (not all(saved) or len({s.epoch for s in states}) > 1):
            # cut off between two folds' saves: the folds disagree, so the trial starts again
            for d in dirs:
                (d / STATE_FILE).unlink(missing_ok=True)
            states = [t.start() for t in self.tuners]
        # the best of the folds' mean objective at each epoch so far (their histories: also after a resume)
        self.best = max((float(np.mean([s.history[e - 1][f"epoch_{self.objective}"] for s in states]))
                         for e in range(1, states[0].epoch + 1)), default=-math.inf)
        return states

    def fit_epoch(self, states: list[FitState]) -> dict:
        """Train every fold one epoch; keep it when its mean objective is the best so far; returns the
        epoch's row (means over folds)."""
        scores = [t.fit_epoch(s) for t, s in zip(self.tuners, states)]
        mean = float(np.mean([m[self.objective] for m in scores]))
        if mean > self.best:
            self.best = mean
            for tuner, state in zip(self.tuners, states):
                tuner.keep_epoch(state)
        row = {"epoch": states[0].epoch, "best_epoch": states[0].best["epoch"]}
        row.update(fold_means([s.best["metrics"] for s in states]))
        row.update({f"epoch_{k}": v for k, v in fold_means(scores).items()})
        row["train_loss"] = float(np.mean([s.last.train_loss for s in states]))
        row["encoder_trained"] = bool(states[0].last.encoder_trained)
        row["reported_at"] = time.time()
        return row

    def save(self, states: list[FitState], state_dir: Path) -> None:
        for tuner, state, folder in zip(self.tuners, states, self.fold_dirs(state_dir)):
            tuner.save_state(state, folder)

    def finish(self, states: list[FitState], history: list[dict]) -> FoldedResult:
        return FoldedResult([t.finish(s) for t, s in zip(self.tuners, states)], self.objective, history)

    def timing(self) -> dict:
        """Load / encode / train seconds and cache counts, summed over folds."""
        totals = Counter()
        for tuner in self.tuners:
            totals.update(tuner.timing())
        return dict(totals)
