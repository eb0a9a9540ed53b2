"""A strategy search: one unit of work per strategy, the same split, budget and feature cache for each.

The frozen features are computed once, before the first strategy starts, and their time is
reported as the study's shared ``encode`` time. Each trial runs
:func:`ser_tune.training.trainable.run_trial` (one fine-tuning run, a report per epoch).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd

from ..config import Experiment
from ..search import make_plan
from ..training.settings import TrialSettings
from ..training.trainable import StudyContext, run_trial
from .driver import StudyError, StudyKind, Unit
from .folder import TRIALS_FILE, StudyFolder
from .prepare import cache_root, data_meta, encode_once, load_study_corpus, machine_info, study_split
from .progress import TrialProgress
from .session import Cluster


class StrategyStudy(StudyKind):
    def __init__(self, experiment: Experiment):
        self.experiment = experiment
        self.corpus = None
        self.split = None

    def prepare(self, folder: StudyFolder) -> None:
        exp = self.experiment
        self.corpus = load_study_corpus(exp.corpus, exp.storage)
        self.split = study_split(folder, self.corpus, exp.split)
        if not folder.meta:
            folder.meta = {"name": exp.name, "kind": "search", "started_at": time.time(), "finished_at": None,
                           "experiment": exp.to_dict(), **data_meta(self.corpus, self.split),
                           "machine": machine_info(), "encode_seconds": 0.0}
            folder.save_meta()

    def check_cluster(self, cluster: Cluster) -> None:
        cpus = self.experiment.resources.cpus_per_trial
        if cpus > cluster.largest_node:
            raise StudyError(f"resources.cpus_per_trial = {cpus:g} but the largest node has "
                             f"{cluster.largest_node:g} CPUs; no trial could ever start")

    def encode(self, folder: StudyFolder) -> float:
        """The frozen features every trial of every strategy may ask for."""
        exp = self.experiment
        if exp.trial.get("features", "cache") == "naive" and "features" not in exp.space:
            return 0.0
        max_lengths = candidates(exp, "max_length", TrialSettings.max_length)
        tops = {TrialSettings(unfreeze=u).top_k for u in candidates(exp, "unfreeze", TrialSettings.unfreeze)}
        done = encode_once(self.corpus.table, exp.encoder, cache_root(exp.storage), max_lengths,
                           [k for k in tops if k != 0])
        folder.meta["encoder"] = done["encoder"]
        folder.meta["cache"] = done["cache"]
        folder.meta["encode_seconds"] = folder.meta.get("encode_seconds", 0.0) + done["seconds"]
        folder.save_meta()
        return done["seconds"]

    def units(self, folder: StudyFolder, cluster: Cluster) -> list[Unit]:
        return [self.strategy_unit(folder, strategy, cluster) for strategy in self.experiment.strategies]

    def strategy_unit(self, folder: StudyFolder, strategy: str, cluster: Cluster) -> Unit:
        exp = self.experiment
        cpus = exp.resources.cpus_per_trial
        concurrency = exp.concurrency or max(1, int(cluster.cpus // cpus))
        plan = make_plan(strategy, exp.space, budget=exp.budget.trials, seed=exp.seed,
                         metric=exp.objective.metric, mode=exp.objective.mode, max_concurrent=concurrency,
                         grid=exp.grid)
        context = StudyContext(table=self.corpus.table, assignment=self.split.assignment,
                               labels=folder.meta["labels"], encoder_spec=exp.encoder,
                               cache_root=str(cache_root(exp.storage)),
                               fixed={"objective": exp.objective.metric, **dict(exp.trial)},
                               cpus_per_trial=int(max(1, round(cpus))), decode=plan.decode,
                               state_root=str(folder.state_dir(strategy)))
        return Unit(name=strategy, trainable=run_trial, context=context, param_space=plan.param_space,
                    expected_trials=plan.expected_trials, searcher=plan.searcher, num_samples=plan.num_samples,
                    metric=exp.objective.metric, mode=exp.objective.mode,
                    time_budget_s=exp.budget.minutes * 60 if exp.budget.minutes else None,
                    tags={"strategy": strategy},
                    info={"budget": exp.budget.trials, "warmup": plan.warmup, "notes": plan.notes,
                          "concurrency": concurrency},
                    progress=TrialProgress(strategy, plan.expected_trials, exp.objective.metric, exp.objective.mode))

    def finish(self, folder: StudyFolder) -> None:
        export_best(folder, self.experiment.objective.metric, self.experiment.objective.mode)


def export_best(folder: StudyFolder, metric: str, mode: str) -> Path | None:
    """Copy the best trial's model (its final checkpoint) to ``best_model/``."""
    path = folder.dir / TRIALS_FILE
    if not path.exists():
        return None
    trials = pd.read_csv(path)
    ok = trials[(trials["status"] == "TERMINATED") & trials[metric].notna()]
    if "checkpoint" in ok:
        ok = ok[ok["checkpoint"].notna()]
    if ok.empty:
        return None
    best = ok.sort_values(metric, ascending=mode == "min").iloc[0]
    source = Path(best["checkpoint"]) / "model"
    if not source.exists():
        return None
    target = folder.dir / "best_model"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    meta_path = target / "model.json"
    meta = json.loads(meta_path.read_text())
    meta.update({"study": str(folder.dir), "strategy": best["strategy"], "trial_id": best["trial_id"]})
    meta_path.write_text(json.dumps(meta, indent=2))
    folder.meta["best_model"] = {"path": str(target), "strategy": best["strategy"], "trial_id": best["trial_id"]}
    folder.save_meta()
    return target


def candidates(exp: Experiment, name: str, default) -> list:
    """The values a setting takes in this study: its choices when searched, else its fixed value.
    A continuous max_length gives none: trials make those cache entries on demand."""
    if name in exp.space:
        param = exp.space[name]
        if param.kind == "choice":
            return list(param.values)
        if name == "max_length":
            return []
    return [exp.trial.get(name, default)]
