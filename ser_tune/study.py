"""A study: one experiment config run as one Ray Tune ``Tuner`` per strategy.

Every strategy gets the same split, the same budget and the same feature cache; the frozen
features are computed once, before the first strategy starts, and their time is reported as
the study's shared ``encode`` time. The study folder holds everything needed to report on it
and to resume it (see ``ser_tune.results`` for the layout).
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from ray.tune import Callback
from ray.tune.search import ConcurrencyLimiter

from .config import Experiment
from .data import SAMPLE_RATE, Corpus, Split, load_corpus, make_split
from .encoders import load_encoder, spec_fingerprint
from .encoders.cache import FeatureCache, effective_max_length
from .search import make_plan
from .training.settings import TrialSettings
from .training.trainable import StudyContext, run_trial, set_threads


class StudyError(RuntimeError):
    """The study cannot start or go on; the message names the field, file or resource."""


def _now() -> float:
    return time.time()


@dataclass
class Study:
    experiment: Experiment
    dir: Path
    corpus: Corpus | None = None
    split: Split | None = None
    meta: dict = field(default_factory=dict)

    # --- folder -------------------------------------------------------------------------
    @classmethod
    def create(cls, experiment: Experiment) -> "Study":
        storage = Path(experiment.storage).expanduser().resolve()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder = storage / f"{experiment.name}-{stamp}"
        n = 1
        while folder.exists():
            n += 1
            folder = storage / f"{experiment.name}-{stamp}-{n}"
        folder.mkdir(parents=True)
        return cls(experiment=experiment, dir=folder)

    @classmethod
    def latest(cls, experiment: Experiment) -> "Study":
        storage = Path(experiment.storage).expanduser().resolve()
        found = sorted((p for p in storage.glob(f"{experiment.name}-*") if (p / "study.json").exists()),
                       key=lambda p: p.stat().st_mtime)
        if not found:
            raise StudyError(f"--resume: no study of '{experiment.name}' under {storage}")
        return cls.open(found[-1], experiment)

    @classmethod
    def open(cls, folder: Path, experiment: Experiment) -> "Study":
        folder = Path(folder).resolve()
        if not (folder / "study.json").exists():
            raise StudyError(f"--resume: {folder} is not a study folder (no study.json)")
        study = cls(experiment=experiment, dir=folder)
        study.meta = json.loads((folder / "study.json").read_text())
        return study

    def discard_if_unstarted(self) -> None:
        """A new study that failed before any trial (bad corpus, no cluster): remove its folder, so
        bad input leaves no empty study behind for --resume to pick up. Never touches a folder
        with a strategy or trial subfolder in it."""
        if self.dir.is_dir() and not any(p.is_dir() for p in self.dir.iterdir()):
            shutil.rmtree(self.dir, ignore_errors=True)

    def save_meta(self) -> None:
        tmp = self.dir / "study.json.tmp"
        tmp.write_text(json.dumps(self.meta, indent=2, default=_jsonable))
        os.replace(tmp, self.dir / "study.json")

    # --- data ---------------------------------------------------------------------------
    def prepare_data(self) -> None:
        exp = self.experiment
        c = exp.corpus
        root = c.root
        if c.name == "synthetic" and root is None:
            root = Path(exp.storage).expanduser().resolve() / "_synthetic"
        self.corpus = load_corpus(c.name, root, label_map=c.label_map, **(c.options or {}))
        split_file = self.dir / "split.json"
        if split_file.exists():
            self.split = Split.load(split_file, self.corpus.table)
        else:
            self.split = make_split(self.corpus.table, dict(exp.split))
            self.split.save(split_file, self.corpus.table)
        table = self.corpus.table
        if not self.meta:
            parts = {p: sorted(self.split.speakers(table, p)) for p in ("train", "val", "test")}
            self.meta = {
                "name": exp.name, "started_at": _now(), "finished_at": None,
                "experiment": exp.to_dict(),
                "corpus": {"name": self.corpus.name, "root": str(self.corpus.root), "files": len(table),
                           "speakers": int(table["speaker"].nunique()), "synthetic": bool(self.corpus.synthetic),
                           "labels": {k: int(v) for k, v in table["label"].value_counts().sort_index().items()},
                           "skipped": len(self.corpus.skipped)},
                "split": {"kind": self.split.kind, "speaker_dependent": bool(self.split.speaker_dependent),
                          "train_speakers": parts["train"], "val_speakers": parts["val"],
                          "test_speakers": parts["test"],
                          "counts": {p: int((self.split.assignment == p).sum()) for p in ("train", "val", "test")}},
                "labels": sorted(table["label"].unique()),
                "machine": machine_info(),
                "encode_seconds": 0.0,
                "strategies": {},
            }
            dims = [d for d in ("arousal", "valence", "dominance") if d in table and table[d].notna().any()]
            if dims:
                labelled = table[dims].notna().all(axis=1).to_numpy()
                self.meta["corpus"]["dimensions_labelled"] = {
                    p: {"labelled": int(labelled[(self.split.assignment == p).to_numpy()].sum()),
                        "files": int((self.split.assignment == p).sum())} for p in ("train", "val", "test")}
            self.save_meta()

    # --- shared encode ------------------------------------------------------------------
    def encode_once(self) -> float:
        """Compute the frozen features every trial of every strategy may ask for."""
        exp = self.experiment
        fixed = dict(exp.trial)
        if fixed.get("features", "cache") == "naive" and "features" not in exp.space:
            return 0.0
        encoder = load_encoder(exp.encoder)
        self.meta["encoder"] = encoder.describe()
        set_threads(os.cpu_count() or 1)
        max_lengths = _candidates(exp, "max_length", TrialSettings.max_length)
        unfreezes = _candidates(exp, "unfreeze", TrialSettings.unfreeze)
        boundaries = set()
        for u in unfreezes:
            k = TrialSettings(unfreeze=u).top_k
            if k != 0:
                boundaries.add(0 if k is None else encoder.num_layers - min(k, encoder.num_layers))
        from .data import AudioStore, crop

        audio = AudioStore(SAMPLE_RATE)
        table = self.corpus.table
        paths = [str(p) for p in table["path"]]
        durations = table["duration"].to_numpy(float)
        cache = FeatureCache(self.cache_root, exp.encoder, spec_fingerprint(exp.encoder), lambda: encoder)
        start = time.perf_counter()
        for ml in sorted({effective_max_length(m, durations) for m in max_lengths}, key=lambda v: (v is None, v)):
            cache.get(paths, lambda i, ml=ml: crop(audio.get(paths[i]), ml, SAMPLE_RATE), ml, sorted(boundaries))
        seconds = time.perf_counter() - start
        self.meta["encode_seconds"] = self.meta.get("encode_seconds", 0.0) + seconds
        self.meta["cache"] = {"root": str(self.cache_root), "max_lengths": [str(m) for m in max_lengths],
                              "boundaries": sorted(boundaries), "misses": cache.stats.misses,
                              "hits": cache.stats.hits}
        self.save_meta()
        return seconds

    @property
    def cache_root(self) -> Path:
        # Shared across studies of the same storage: keys include clips, weights and max_length.
        return Path(self.experiment.storage).expanduser().resolve() / "_feature_cache"

    # --- strategies ---------------------------------------------------------------------
    def run_strategy(self, strategy: str, *, cpus_available: float, verbose: int = 0, progress: bool = True) -> None:
        """One Tuner for ``strategy``; ``progress``: a line per finished trial on stdout, ``verbose``: Ray's
        own tables (0 off, 1 status, 2 status and results)."""
        from ray import tune

        exp = self.experiment
        cpus = exp.resources.cpus_per_trial
        concurrency = exp.concurrency or max(1, int(cpus_available // cpus))
        plan = make_plan(strategy, exp.space, budget=exp.budget.trials, seed=exp.seed,
                         metric=exp.objective.metric, mode=exp.objective.mode, max_concurrent=concurrency,
                         grid=exp.grid)
        table = self.corpus.table
        context = StudyContext(table=table, assignment=self.split.assignment, labels=self.meta["labels"],
                               encoder_spec=exp.encoder, cache_root=str(self.cache_root),
                               fixed={"objective": exp.objective.metric, **dict(exp.trial)},
                               cpus_per_trial=int(max(1, round(cpus))), decode=plan.decode,
                               state_root=str(self.dir / "_trial_state" / strategy))
        resources = {"cpu": cpus}
        if exp.resources.memory_gb:
            resources["memory"] = int(exp.resources.memory_gb * 2**30)
        trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), resources)
        info = self.meta["strategies"].setdefault(strategy, {})
        info.update({"budget": exp.budget.trials, "warmup": plan.warmup, "notes": plan.notes,
                     "concurrency": concurrency, "status": "running"})
        info.setdefault("started_at", _now())
        self.save_meta()
        path = self.dir / strategy
        if path.exists() and tune.Tuner.can_restore(str(path)):
            # A trial cut off by the kill may have been recorded as errored in the last snapshot:
            # resume errored trials from their last epoch checkpoint too (a genuinely failing trial
            # fails again and stays recorded as an error).
            tuner = tune.Tuner.restore(str(path), trainable, param_space=plan.param_space,
                                       resume_unfinished=True, resume_errored=True, restart_errored=False)
        else:
            tuner = tune.Tuner(
                trainable, param_space=plan.param_space,
                tune_config=tune.TuneConfig(
                    search_alg=plan.searcher, num_samples=plan.num_samples, metric=exp.objective.metric,
                    mode=exp.objective.mode, reuse_actors=True,
                    # grid/random limit themselves (BasicVariantGenerator ignores this), so does a
                    # searcher already wrapped in a ConcurrencyLimiter (Ray warns on both)
                    max_concurrent_trials=None if plan.searcher is None or strategy in ("grid", "random")
                    or isinstance(plan.searcher, ConcurrencyLimiter) else concurrency,
                    time_budget_s=exp.budget.minutes * 60 if exp.budget.minutes else None),
                run_config=tune.RunConfig(
                    name=strategy, storage_path=str(self.dir), verbose=verbose,
                    callbacks=[TrialProgress(strategy, exp.budget.trials, exp.objective.metric,
                                             exp.objective.mode)] if progress else None,
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    # A node lost mid-trial: the trial restarts from its last epoch checkpoint elsewhere.
                    failure_config=tune.FailureConfig(max_failures=2)))
        grid = tuner.fit()
        info["finished_at"] = _now()
        info["status"] = "done"
        self.collect(strategy, grid)
        self.save_meta()

    def collect(self, strategy: str, grid) -> None:
        """Append this strategy's trials and epochs to trials.csv / epochs.csv (replacing older rows)."""
        trials, epochs = [], []
        results = list(grid)
        for result in results:
            metrics = result.metrics or {}
            frame = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
            trial_id = metrics.get("trial_id") or Path(result.path).name
            row = {"strategy": strategy, "trial_id": trial_id,
                   "trial_index": _trial_index(trial_id, Path(result.path).name),
                   "status": "ERROR" if result.error else "TERMINATED",
                   "error": _one_line(result.error) if result.error else ""}
            for key, value in (result.config or {}).items():
                row.setdefault(f"raw_{key}", value)
            for key, value in metrics.items():
                if key.startswith("cfg_"):
                    row[key] = value
            for key in ("best_epoch", "time_total_s", "load_seconds", "encode_seconds", "train_seconds",
                        "trainable_params", "total_params", "node", "cache_hits", "cache_misses"):
                row[key] = metrics.get(key)
            for key, value in metrics.items():  # every validation and test metric (bca, ccc, ccc_<dim>, ...)
                if key.startswith(("val_", "test_")) and key != "test_confusion":
                    row[key] = value
            row.setdefault(self.experiment.objective.metric, None)
            if metrics.get("test_confusion") is not None:
                row["test_confusion"] = json.dumps(metrics["test_confusion"])
            if not frame.empty and "reported_at" in frame:
                ts = frame["reported_at"].astype(float)  # ours: sub-second; Ray's "timestamp" is whole seconds
                tt = frame["time_total_s"].astype(float) if "time_total_s" in frame else ts - ts.iloc[0]
                row["started_at"] = float(ts.iloc[0] - tt.iloc[0])
                row["finished_at"] = float(ts.iloc[-1])
                metric_columns = [c for c in frame.columns if c.startswith(("val_", "epoch_val_"))]
                for _, r in frame.iterrows():
                    epochs.append({"strategy": strategy, "trial_id": trial_id, "epoch": r.get("epoch"),
                                   **{c: r.get(c) for c in metric_columns},
                                   "train_loss": r.get("train_loss"), "timestamp": float(r["reported_at"]),
                                   "time_total_s": float(r.get("time_total_s", np.nan))})
            if result.checkpoint is not None and not result.error:
                row["checkpoint"] = result.checkpoint.path
            trials.append(row)
        _replace_rows(self.dir / "trials.csv", pd.DataFrame(trials), strategy)
        _replace_rows(self.dir / "epochs.csv", pd.DataFrame(epochs), strategy)

    # --- end ----------------------------------------------------------------------------
    def export_best(self) -> Path | None:
        """Copy the best trial's model (its final checkpoint) to ``best_model/``."""
        path = self.dir / "trials.csv"
        if not path.exists():
            return None
        trials = pd.read_csv(path)
        metric = self.experiment.objective.metric
        ok = trials[(trials["status"] == "TERMINATED") & trials[metric].notna()]
        if "checkpoint" in ok:
            ok = ok[ok["checkpoint"].notna()]
        if ok.empty:
            return None
        best = ok.sort_values(metric, ascending=self.experiment.objective.mode == "min").iloc[0]
        source = Path(best["checkpoint"]) / "model"
        if not source.exists():
            return None
        target = self.dir / "best_model"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        meta_path = target / "model.json"
        meta = json.loads(meta_path.read_text())
        meta.update({"study": str(self.dir), "strategy": best["strategy"], "trial_id": best["trial_id"]})
        meta_path.write_text(json.dumps(meta, indent=2))
        self.meta["best_model"] = {"path": str(target), "strategy": best["strategy"], "trial_id": best["trial_id"]}
        self.save_meta()
        return target


class TrialProgress(Callback):
    """One line per finished or failed trial (Ray's own tables are long for short trials):
    ``tpe   3/15  val_bca 0.912  best 0.935  4.1 s  lr=0.000216 num_epochs=30``.
    Holds no stream (Ray pickles callbacks with the experiment): prints to the current stdout."""

    def __init__(self, strategy: str, budget: int, metric: str, mode: str, fields: tuple[str, ...] | None = None):
        self.strategy, self.budget, self.metric, self.mode = strategy, budget, metric, mode
        self.fields = fields        # result keys to show; None: the searched settings (cfg_*)
        self.done = 0
        self.best: float | None = None

    def _line(self, trial, words: str) -> None:
        self.done += 1
        result = getattr(trial, "last_result", None) or {}
        if self.fields is None:
            searched = " ".join(f"{k[4:]}={_short(v)}" for k, v in result.items() if k.startswith("cfg_"))
        else:
            searched = " ".join(f"{k}={_short(result[k])}" for k in self.fields if k in result)
        seconds = result.get("time_total_s")
        took = f"  {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
        print(f"{self.strategy:6} {self.done:>3}/{self.budget}  {words}{took}  {searched}".rstrip(), flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        value = (getattr(trial, "last_result", None) or {}).get(self.metric)
        if isinstance(value, (int, float)):
            better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
            self.best = value if better else self.best
            self._line(trial, f"{self.metric} {value:.3f}  best {self.best:.3f}")
        else:
            self._line(trial, f"{self.metric} -")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "ERROR (the error is in trials.csv once the strategy ends)")


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _candidates(exp: Experiment, name: str, default):
    if name in exp.space:
        p = exp.space[name]
        if p.kind == "choice":
            return list(p.values)
        if name == "max_length":  # continuous: cache entries are made on demand by the trials
            return []
    return [exp.trial.get(name, default)]


def _trial_index(trial_id: str, dirname: str) -> int:
    """0-based creation order: Ray names a trial's folder "<trainable>_<trial_id>_<counter>_<config>",
    with the counter starting at 1."""
    tail = str(trial_id).rsplit("_", 1)
    if len(tail) == 2 and tail[1].isdigit():  # BasicVariantGenerator's ids: "<prefix>_<counter from 0>"
        return int(tail[1])
    parts = dirname.split("_")
    if trial_id in parts:
        at = parts.index(trial_id) + 1
        if at < len(parts) and parts[at].isdigit():
            return int(parts[at]) - 1
    return -1


def _one_line(error) -> str:
    text = str(error).strip().splitlines()
    # Ray wraps the trial's exception; its last line carries our message.
    lines = [l for l in text if l.strip()]
    return lines[-1][:500] if lines else type(error).__name__


def _replace_rows(path: Path, frame: pd.DataFrame, strategy: str) -> None:
    if path.exists():
        old = pd.read_csv(path)
        old = old[old["strategy"] != strategy]
        frame = pd.concat([old, frame], ignore_index=True)
    tmp = path.with_suffix(".tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def machine_info() -> dict:
    import ray
    import torch

    return {"hostname": socket.gethostname(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": sys.version.split()[0], "torch": torch.__version__, "ray": ray.__version__, "nodes": 1}


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)
