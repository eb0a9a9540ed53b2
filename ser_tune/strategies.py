"""A strategy search: every strategy, repeated, on every outer fold of test speakers, beside baselines.

The loops (see the README's architecture section)::

    for each outer fold f of test speakers           evaluation.outer_folds (1: the study's split)
        the untuned default configuration             unit "default" (one trial)
        for each repeat r, for each strategy s        budget.repeats (grid once: it has no seed)
            one unit (Tuner), budget.trials trials    searcher seed: seed + r (on f > 0 drawn from it and f)
    the best configuration refit for export          unit "refit" (when folds or CV make the best trial's own model partial)

A trial trains on the inner folds of its outer fold (``objective.cv_folds``) and reports the mean
validation metric; the linear probe on the frozen features is fitted on the same folds before any
trial. Every unit shares the one feature cache; the frozen features are computed once, before the
first unit, and their time is the study's shared ``encode`` time.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Experiment
from .encoders.precision import resolve as resolve_precision
from .search import LIBRARY, make_plan
from .search.base import native_config
from .search.space import split_branch
from .training.ensemble import ensemble_scores, read_listing, save_ensemble
from .training.latency import LatencyCheck
from .training.probe import CHOSEN, choose_normalization, normalised_probe
from .training.settings import BRANCH, TrialSettings
from .training.trainable import StudyContext, run_refit, run_trial
from .study.driver import StudyError, StudyKind, Unit
from .study.folder import (FRONT_DIR, FRONT_FILE, REFIT_EXPORT, REFIT_UNIT, StudyFolder, TrialState,
                           member_name)
from .study.prepare import (cache_root, data_meta, encode_once, fold_plan, load_study_corpus, machine_info,
                      study_split)
from .study.progress import TrialProgress
from .study.session import Cluster

DEFAULT, REFIT, EXPORT = "default", REFIT_UNIT, REFIT_EXPORT
# Probes run in processes from this many pooled values times probes: a process takes 1-2 s to start (its
# imports); an EmoDB outer fold's probe (535 clips x 7 states x 512) takes ~6 s of one core, and 10 of them
# (5 folds, 2 normalisations) held up the first trial a minute.
PARALLEL_PROBE_VALUES = 4_000_000


class StrategyStudy(StudyKind):
    def __init__(self, experiment: Experiment):
        self.experiment = experiment
        self.cpus_per_trial = experiment.resources.cpus_per_trial
        self.corpus = self.split = self.plan = None

    # --- before Ray ------------------------------------------------------------------------------
    def prepare(self, folder: StudyFolder) -> None:
        exp = self.experiment
        self.corpus = load_study_corpus(exp.corpus, exp.storage)
        self.split = study_split(folder, self.corpus, exp.split)
        self.plan = fold_plan(self.corpus, self.split, outer_folds=exp.evaluation.outer_folds,
                              cv_folds=exp.objective.cv_folds, split_spec=exp.split,
                              over_split="split" in exp.budget.repeat_over)
        if not folder.meta:
            folder.meta = {"name": exp.name, "kind": "search", "started_at": time.time(), "finished_at": None,
                           "experiment": exp.to_dict(), **data_meta(self.corpus, self.split),
                           "folds": self.plan.describe(exp.budget.repeats), "machine": machine_info(),
                           "encode_seconds": 0.0}
            folder.save_meta()

    # --- the shared encode and the probe ---------------------------------------------------------
    def encode(self, folder: StudyFolder) -> float:
        """The frozen features every trial of every strategy may ask for (of each encoder, when the study
        searches among them), then the linear probe (on the first encoder's)."""
        exp = self.experiment
        if exp.trial.get("features", "cache") == "naive" and "features" not in exp.space:
            return 0.0
        max_lengths = candidates(exp, "max_length", TrialSettings.max_length)
        tops = {TrialSettings(unfreeze=u).top_k for u in candidates(exp, "unfreeze", TrialSettings.unfreeze)}
        specs = dict.fromkeys(spec or exp.encoder for spec in candidates(exp, "encoder", None))
        runs = [(spec, precision) for spec in specs for precision in precisions(exp)]
        done = {(spec, precision): encode_once(self.corpus.table, spec, cache_root(exp.storage),
                                               max_lengths or [TrialSettings.max_length], [k for k in tops if k != 0],
                                               frame_averages(exp), precision=precision)
                for spec, precision in runs}
        first = done[runs[0]]   # the study's own encoder (unless every trial uses another), its first precision
        folder.meta.update(encoder=first["encoder"], cache=first["cache"])
        if len(specs) > 1:   # a search among encoders
            folder.meta["encoders"] = {spec: done[spec, runs[0][1]]["encoder"] for spec in specs}
        seconds = sum(d["seconds"] for d in done.values())
        folder.meta["encode_seconds"] = folder.meta.get("encode_seconds", 0.0) + seconds
        if "probe" not in folder.meta.get("baselines", {}):
            folder.meta.setdefault("baselines", {})["probe"] = self.probe(first["pooled"])
        folder.save_meta()
        return seconds

    def probe(self, pooled: np.ndarray) -> dict:
        """The linear probe on each outer fold, for each normalisation the study uses: one process per core
        when they are big enough to pay for the processes' start."""
        from joblib import Parallel, delayed

        table = self.corpus.table
        y = table["label"].map({name: i for i, name in enumerate(sorted(table["label"].unique()))}).to_numpy()
        used = candidates(self.experiment, "normalize", TrialSettings.normalize)
        kinds = ["none"] + [n for n in used if n != "none"]   # none, and any the trials use
        folds = range(len(self.plan.outer))
        jobs = [(kind, f) for kind in kinds for f in folds]
        speakers, seed = table["speaker"].to_numpy(), self.experiment.seed
        big = pooled.size * len(jobs) >= PARALLEL_PROBE_VALUES
        rows = Parallel(n_jobs=min(len(jobs), os.cpu_count() or 1) if big else 1)(
            delayed(normalised_probe)(pooled, y, speakers, kind, self.plan.inner_rows(f), train=train, test=test,
                                      seed=seed)
            for kind, f in jobs for train, test in [self.plan.outer_rows(f)])
        by_job = dict(zip(jobs, rows))
        out = {kind: {"folds": [by_job[kind, f] for f in folds]} for kind in kinds}
        if "normalize" in self.experiment.space and len(out) > 1:
            # the trials search normalize: so does the probe, on the same inner folds (the yardstick)
            out[CHOSEN] = {"folds": choose_normalization({k: v["folds"] for k, v in out.items()})}
        return out

    # --- the units ---------------------------------------------------------------------------------
    def units(self, folder: StudyFolder, cluster: Cluster):
        exp = self.experiment
        for fold in range(len(self.plan.outer)):
            yield self.default_unit(folder, fold)
            for repeat in range(exp.budget.repeats):
                for strategy in exp.strategies:
                    if strategy == "grid" and repeat > 0:
                        continue   # a grid has no seed: one run per fold
                    yield self.strategy_unit(folder, strategy, fold, repeat, cluster)
        if self.needs_refit():
            yield self.refit_unit(folder)

    def unit_name(self, label: str, fold: int, repeat: int | None = None) -> str:
        name = label
        if len(self.plan.outer) > 1:
            name += f"-f{fold}"
        if repeat is not None and self.experiment.budget.repeats > 1:
            name += f"-r{repeat}"
        return name

    def latency_check(self) -> LatencyCheck | None:
        """How trials measure their latency, when the study asks for deployment costs: the same clips for
        every trial, spread evenly over the corpus table."""
        objective = self.experiment.objective
        if not objective.measures_deployment:
            return None
        table = self.corpus.table
        rows = np.unique(np.linspace(0, len(table) - 1, min(objective.latency.clips, len(table))).round().astype(int))
        return LatencyCheck(clips=tuple(str(p) for p in table["path"].iloc[rows]),
                            repeats=objective.latency.repeats, warmup=objective.latency.warmup)

    def context(self, folder: StudyFolder, name: str, fold: int, repeat: int, decode=None) -> StudyContext:
        exp = self.experiment
        return StudyContext(table=self.corpus.table, assignments=self.plan.inner(fold, repeat),
                            labels=folder.meta["labels"], encoder_spec=exp.encoder,
                            cache_root=str(cache_root(exp.storage)), state_root=str(folder.state_dir(name)),
                            fixed={"objective": exp.objective.metric, **dict(exp.trial), **self.encoded_precision()},
                            decode=decode,
                            cpus_per_trial=int(max(1, round(exp.resources.cpus_per_trial))),
                            source={"name": self.corpus.name, "root": str(self.corpus.root),
                                    "label_map": exp.corpus.label_map, "options": dict(exp.corpus.options or {})},
                            latency=self.latency_check())

    def encoded_precision(self) -> dict:
        """The trials' precision as this machine resolved it for the shared encode (unless searched): a trial
        on a node that would resolve ``auto`` otherwise still reads the features the study encoded."""
        return {} if "precision" in self.experiment.space else {"precision": precisions(self.experiment)[0]}

    def concurrency(self, cluster: Cluster) -> int:
        """Trials of a search run at a time: the experiment's ``concurrency``, else as many as the cluster's
        CPUs hold."""
        exp = self.experiment
        return exp.concurrency or max(1, int(cluster.cpus // exp.resources.cpus_per_trial))

    def trial_workers(self, cluster: Cluster):
        # no more than a run's trials: a worker started for a trial that never comes costs its imports
        return run_trial, max(1, min(self.concurrency(cluster), self.experiment.budget.trials))

    def search_seed(self, fold: int, repeat: int) -> int:
        """The searcher's seed on outer fold ``fold`` in repeat ``repeat``: the experiment's seed + repeat on the
        first fold, a draw from both on each other, so that every outer fold's search is a replicate of its own
        (with one seed, random search drew the same configurations on every fold: one miss, five times)."""
        seed = self.experiment.seed + repeat
        return seed if fold == 0 else int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])

    def strategy_unit(self, folder: StudyFolder, strategy: str, fold: int, repeat: int, cluster: Cluster) -> Unit:
        exp = self.experiment
        name = self.unit_name(strategy, fold, repeat)
        concurrency = self.concurrency(cluster)
        seed = self.search_seed(fold, repeat)
        plan = make_plan(strategy, exp.space, budget=exp.budget.trials, seed=seed,
                         warmup=LIBRARY if exp.budget.warmup == LIBRARY else None,
                         metric=exp.objective.metric, mode=exp.objective.mode, max_concurrent=concurrency,
                         grid=exp.grid, objectives=exp.objective.objectives,
                         constraints=exp.objective.trial_constraints())
        return Unit(name=name, trainable=run_trial, warm=True,
                    context=self.context(folder, name, fold, repeat, plan.decode),
                    param_space=plan.param_space, expected_trials=plan.expected_trials, searcher=plan.searcher,
                    num_samples=plan.num_samples, mode=exp.objective.mode,
                    # a searcher of several objectives has them all; TuneConfig then takes none
                    metric=None if plan.several_metrics else exp.objective.metric,
                    time_budget_s=exp.budget.minutes * 60 if exp.budget.minutes else None,
                    tags={"strategy": strategy, "outer_fold": fold, "repeat": repeat},
                    info={"budget": exp.budget.trials, "warmup": plan.warmup, "notes": plan.notes,
                          "concurrency": concurrency, "seed": seed},
                    progress=TrialProgress(name, plan.expected_trials, exp.objective.metric, exp.objective.mode))

    def default_unit(self, folder: StudyFolder, fold: int) -> Unit:
        """The untuned baseline: the experiment's fixed settings, TrialSettings' defaults for the rest."""
        exp = self.experiment
        name = self.unit_name(DEFAULT, fold)
        return Unit(name=name, trainable=run_trial, warm=True, context=self.context(folder, name, fold, 0),
                    param_space={},
                    expected_trials=1, metric=exp.objective.metric, mode=exp.objective.mode,
                    tags={"strategy": DEFAULT, "outer_fold": fold, "repeat": 0, "baseline": True},
                    info={"budget": 1, "warmup": 0, "notes": "the untuned default configuration (a baseline)"},
                    progress=TrialProgress(name, 1, exp.objective.metric, exp.objective.mode))

    # --- the exported model --------------------------------------------------------------------------
    def needs_refit(self) -> bool:
        """The best trial's own model stands for the study unless it was trained on part of the
        training speakers (CV folds) or the study has several outer folds."""
        return len(self.plan.outer) > 1 or self.experiment.objective.cv_folds > 1

    def refit_unit(self, folder: StudyFolder) -> Unit:
        """Each run's best configuration (the defaults' too) trained again for its best epoch count on every
        speaker its search could use (its outer fold's training and validation speakers) and scored once on
        the fold's test speakers: the run's held-out figure, by the protocol the linear probe follows (choose
        on inner folds, refit on all of them). With several outer folds, one more: the study's best
        configuration on every speaker, which is exported (with one fold, the best run's refit is)."""
        study_best = folder.best_trial()
        if study_best is None:
            raise StudyError("no search trial finished with a metric: nothing to refit and export")
        members = self.experiment.evaluation.ensemble   # > 1: each run's best configurations, an ensemble
        structural = self.structural_settings()
        jobs = {}
        for name, meta in folder.units.items():
            tags = meta.get("tags") or {}
            if name == REFIT or meta.get("status") != "done":
                continue
            for rank, trial in enumerate(folder.top_trials(members, unit=name, structural=structural), start=1):
                jobs[member_name(name, rank)] = refit_job(trial, int(tags.get("outer_fold", 0)))
        if len(self.plan.outer) > 1:
            for rank, trial in enumerate(folder.top_trials(members, structural=structural), start=1):
                jobs[member_name(EXPORT, rank)] = refit_job(trial, len(self.plan.outer))
        context = self.context(folder, REFIT, 0, 0)
        context.assignments = [self.plan.outer[f].map(lambda p: "test" if p == "test" else "train")
                               for f in range(len(self.plan.outer))] + [self.plan.outer[0].map(lambda p: "train")]
        context.refits = jobs
        from ray import tune

        return Unit(name=REFIT, trainable=run_refit, warm=True, context=context,
                    param_space={"refit_of": tune.grid_search(list(jobs))}, expected_trials=len(jobs),
                    tags={"strategy": REFIT, "outer_fold": -1, "repeat": 0, "baseline": True},
                    info={"budget": len(jobs), "notes": (
                        ("each run's best configuration" if members == 1 else
                         f"each run's {members} best configurations (an ensemble)")
                        + " refit on its outer fold's training and validation speakers, scored on its test speakers"
                        + ("; the study's best on every speaker, exported" if EXPORT in jobs else ""))},
                    progress=TrialProgress(REFIT, len(jobs), "test_bca", "max", fields=("refit_of", "cfg_num_epochs")))

    def structural_settings(self) -> frozenset:
        """The settings an ensemble's members differ in first: the space's choices (a branch's by its
        setting name), e.g. the head family, the layer read, the pooling and the normalisation."""
        return frozenset(split_branch(name)[1] for name, param in self.experiment.space.items()
                         if param.kind == "choice")

    def trial_row(self, unit: Unit, result) -> dict:
        """With constraints, whether the trial meets them all (``feasible``)."""
        constraints = self.experiment.objective.trial_constraints()
        return {} if constraints is None else {"feasible": constraints.meets(result.metrics or {})}

    def finish(self, folder: StudyFolder) -> None:
        if self.needs_refit():
            if self.experiment.evaluation.ensemble > 1:
                record_ensembles(folder)
            export_refit(folder, folder.best_trial())
        else:
            export_best(folder)
        if folder.front_objectives:
            front = export_front(folder)
            folder.meta["front"] = {"path": str(front) if front else None, "objectives": folder.front_objectives}
            folder.save_meta()


def export_best(folder: StudyFolder) -> Path | None:
    """Copy the study's best trial's model (its final checkpoint) to ``best_model/``."""
    best = folder.best_trial()
    if best is None or pd.isna(best.get("model_dir")):
        return None
    return export_model(folder, Path(best["model_dir"]), best)


def export_refit(folder: StudyFolder, best: pd.Series | None) -> Path | None:
    """Export the refit on every speaker (several outer folds), else the refit of the run that holds the
    study's best trial ``best``; with an ensemble's members refit, the ensemble of them."""
    trials = folder.trials
    refit = trials[(trials["unit"] == REFIT) & (trials["status"] == TrialState.TERMINATED.value)]
    if "refit_of" in refit:   # (a study folder from before per-run refits has the export's row alone)
        chosen = folder.refit_members(EXPORT)
        if chosen.empty and best is not None:
            chosen = folder.refit_members(best["unit"])
        refit = chosen
    if refit.empty or pd.isna(refit.iloc[0].get("model_dir")):
        return None
    members = [Path(d) for d in refit["model_dir"] if not pd.isna(d) and Path(d).exists()]
    if len(refit) > 1 and len(members) == len(refit):
        return export_ensemble(folder, members, refit)
    return export_model(folder, Path(refit.iloc[0]["model_dir"]), refit.iloc[0])


def record_ensembles(folder: StudyFolder) -> None:
    """study.json "ensembles": for each run with more than one refit member, the members' refit trials and
    the test metrics of their mean class probabilities (what ``held_out_trial`` reports for the run). A
    run whose members' probability files are gone is left out (its best configuration alone stands)."""
    ensembles = {}
    for unit in [*folder.units, EXPORT]:
        members = folder.refit_members(unit)
        if len(members) < 2 or "test_probabilities" not in members:
            continue
        files = [Path(f) for f in members["test_probabilities"] if not pd.isna(f)]
        if len(files) < len(members) or not all(f.exists() for f in files):
            continue
        ensembles[unit] = {"members": [str(t) for t in members["trial_id"]],
                           "configurations": [str(t) for t in members["refit_trial"]], **ensemble_scores(files)}
    folder.meta["ensembles"] = ensembles
    folder.save_meta()


def export_ensemble(folder: StudyFolder, members: list[Path], refit: pd.DataFrame) -> Path:
    """``best_model/`` as the ensemble of the refit models ``members`` (rows ``refit``, best first)."""
    info = {"refit_trials": [str(t) for t in refit["trial_id"]],
            "configurations": [str(t) for t in refit["refit_trial"]], "study": str(folder.dir)}
    target = save_ensemble(folder.best_model_dir, members, info)
    for member, (_, row) in zip(read_listing(target)["members"], refit.iterrows()):
        path = target / member / "model.json"   # as export_model marks its copy: whose study and trial
        path.write_text(json.dumps({**json.loads(path.read_text()), "study": str(folder.dir),
                                    "strategy": row["strategy"], "trial_id": row["trial_id"]}, indent=2))
    first = refit.iloc[0]
    folder.meta["best_model"] = {"path": str(target), "strategy": first["strategy"], "trial_id": first["trial_id"],
                                 "unit": first["unit"], "ensemble": len(members)}
    folder.save_meta()
    return target


def refit_job(best: pd.Series, assignment: int) -> dict:
    """What a refit trains: ``best``'s settings for its best epoch count, on inner assignment
    ``assignment`` of the refit unit (an outer fold's, or the last: every speaker)."""
    config = {c[4:]: v for c, v in best.items() if c.startswith("cfg_") and not pd.isna(v)}
    config["num_epochs"] = int(best["best_epoch"])
    return {"settings": native_config(config), "assignment": assignment, "trial_id": str(best["trial_id"]),
            "unit": str(best["unit"])}


def export_model(folder: StudyFolder, source: Path, trial: pd.Series) -> Path | None:
    if not source.exists():
        return None
    target = folder.best_model_dir
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    meta_path = target / "model.json"
    meta = json.loads(meta_path.read_text())
    meta.update({"study": str(folder.dir), "strategy": trial["strategy"], "trial_id": trial["trial_id"]})
    meta_path.write_text(json.dumps(meta, indent=2))
    folder.meta["best_model"] = {"path": str(target), "strategy": trial["strategy"], "trial_id": trial["trial_id"],
                                 "unit": trial["unit"]}
    folder.save_meta()
    return target


def export_front(study: StudyFolder) -> Path | None:
    """Copy the model of every trial on the study-wide front to ``front/<trial_id>/`` and list them in
    ``front/front.json`` (most accurate first); None when the study has no front."""
    front = study.front_trials()
    target = study.dir / FRONT_DIR
    shutil.rmtree(target, ignore_errors=True)
    if front.empty or "model_dir" not in front.columns:
        return None
    models = []
    for row, (_, trial) in zip(study.front_rows(front), front.iterrows()):
        source = Path(str(trial["model_dir"]))
        if pd.isna(trial["model_dir"]) or not source.is_dir():
            continue
        shutil.copytree(source, target / row["trial_id"])
        models.append({**row, "path": row["trial_id"]})
    folds = study.cv_folds > 1
    (target / FRONT_FILE).write_text(json.dumps({
        "objectives": study.front_objectives, "constraints": study.constraints, "metric": study.metric,
        # what ``predict --max-latency`` compares: the front's latency objective, else the wall-clock latency
        "latency": next((c for c in study.front_objectives if c.startswith("latency_")), "latency_ms_per_s"),
        "trained_on": "the first inner fold's train speakers" if folds else "the trial's train speakers",
        "models": models}, indent=2))
    return target


def candidates(exp: Experiment, name: str, default) -> list:
    """The values a setting takes in this study: its choices when searched, else its fixed value, and the
    grid's values when the grid strategy runs. A continuous max_length gives none of its own: trials make
    those cache entries on demand."""
    param = exp.space.get(name)
    if param is not None and param.kind == "choice":
        values = list(param.values)
    else:
        values = [] if param is not None and name == "max_length" else [exp.trial.get(name, default)]
    if "grid" in exp.strategies and name in (exp.grid or {}):
        values += [v for v in exp.grid[name] if v not in values]
    return values


def precisions(exp: Experiment) -> list[str]:
    """The arithmetic the study's encodes run in, resolved on this machine (``auto``: bf16 where the CPU has
    it in hardware), each once; the first is the fixed one's (or the first searched)."""
    return list(dict.fromkeys(resolve_precision(p) for p in candidates(exp, "precision", TrialSettings.precision)))


def frame_averages(exp: Experiment) -> list[int]:
    """The frame averages whose cached frames the study's trials read: none unless a trial's head can be
    one that reads frames (frames cost disk and encode time a study of pooled heads never uses); else
    every value ``frame_average`` takes: searched (plainly or in such a head's branch), else fixed, and the
    grid's values when the grid strategy runs."""
    heads = [h for h in candidates(exp, "head", TrialSettings.head) if TrialSettings(head=h).reads_frames]
    if not heads:
        return []
    values = set()
    for param in (exp.space.get(name) for name in ["frame_average", *(f"{h}{BRANCH}frame_average" for h in heads)]):
        if param is not None:
            values |= set(param.values) if param.kind == "choice" else set(range(int(param.low), int(param.high) + 1))
    if not values:
        values.add(exp.trial.get("frame_average", TrialSettings.frame_average))
    if "grid" in exp.strategies:
        values |= set((exp.grid or {}).get("frame_average", []))
    return sorted(int(v) for v in values)

