"""A study's Pareto fronts: each strategy's and the study's, their hypervolume against wall-clock, and
the exported front models (``front/``), from the study folder alone.

What a front is over is ``StudyFolder.front_objectives`` (the study's objectives when there are
several, else the validation metric against the measured latency). Only finished search trials count
(not the baselines), and only feasible ones when the study has constraints: infeasible trials rank
after every feasible one, so none of them is on a front. The hypervolume of a run (one strategy,
one repeat, one outer fold) counts its trials as they end, against one study-wide reference point
(the worst value of each objective over all those trials), so strategies compare on one scale.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from ..study.folder import FRONT_DIR, FRONT_FILE, StudyFolder
from . import repeats, timing
from .trials import trial_config
from ..objectives import feasible, hypervolume, hypervolume_over_time, measured, pareto_front, reference_point

# The latency columns a front row carries besides the objectives (both clocks, the spread of the measurement).
LATENCY_COLUMNS = ("latency_ms_per_s", "latency_cpu_ms_per_s", "latency_iqr_ms_per_s", "latency_cv")


def ranked_trials(study: StudyFolder, strategy: str | None = None) -> pd.DataFrame:
    """The finished search trials (of ``strategy``, or of every strategy) that have every front objective
    and meet every constraint, in trials.csv order."""
    objectives = study.front_objectives
    trials = study.trials[study.trials["strategy"].isin([strategy] if strategy else study.strategies)]
    trials = trials[trials["status"] == "TERMINATED"]
    if not objectives or any(c not in trials.columns for c in objectives):
        return trials.iloc[0:0]
    trials = trials.dropna(subset=list(objectives))
    if not measured(trials, study.constraints):   # a constraint's column was never measured: none is known to meet it
        return trials.iloc[0:0]
    return trials[feasible(trials, study.constraints)]


def front_trials(study: StudyFolder, strategy: str | None = None) -> pd.DataFrame:
    """The Pareto front of a strategy's trials (or of the whole study's), best first by the first objective."""
    trials = ranked_trials(study, strategy)
    if trials.empty:
        return trials
    first, mode = next(iter(study.front_objectives.items()))
    return pareto_front(trials, study.front_objectives).sort_values(first, ascending=mode == "min", kind="mergesort")


def study_reference(study: StudyFolder) -> dict[str, float] | None:
    """The study-wide reference point of every hypervolume: the worst value of each objective."""
    trials = ranked_trials(study)
    return reference_point(trials, study.front_objectives) if not trials.empty else None


def hypervolume_curves(study: StudyFolder, strategy: str, reference: dict) -> list[pd.Series]:
    """One step curve per run of ``strategy``: the hypervolume of its trials ended by each second since
    the run started (0 from its start until its first feasible trial ends)."""
    trials = ranked_trials(study, strategy)
    curves = []
    for unit in study.runs(strategy):
        own = trials[trials["unit"] == unit]
        if own.empty:
            continue
        ended = own.assign(time=own["finished_at"].astype(float) - timing.started_at(study, unit))
        curve = hypervolume_over_time(ended, study.front_objectives, reference)
        curves.append(pd.Series([0.0, *curve["hypervolume"]], index=[0.0, *curve["time"]]))
    return curves


def hypervolume_band(study: StudyFolder, strategy: str, reference: dict, points: int = 200) -> pd.DataFrame:
    """Mean ± SE over the strategy's runs of their hypervolume curves (``repeats.mean_se_curve``) on a
    grid from 0 to the longest run's last trial end."""
    curves = hypervolume_curves(study, strategy, reference)
    if not curves:
        return pd.DataFrame(columns=["x", "mean", "se", "runs"])
    end = max(float(c.index.max()) for c in curves)
    return repeats.mean_se_curve(curves, np.linspace(0.0, end, points))


def final_hypervolumes(study: StudyFolder, strategy: str, reference: dict) -> list[float]:
    """Each run's hypervolume once all its trials ended."""
    trials = ranked_trials(study, strategy)
    return [hypervolume(trials[trials["unit"] == unit], study.front_objectives, reference)
            for unit in study.runs(strategy) if (trials["unit"] == unit).any()]


def front_rows(study: StudyFolder, front: pd.DataFrame) -> list[dict]:
    """One plain row per front trial: its id, strategy, run, searched settings, every objective, the
    latency spread and its test metric (on the outer fold's test speakers)."""

    rows = []
    for _, trial in front.iterrows():
        row = {"trial_id": str(trial["trial_id"]), "strategy": trial["strategy"], "unit": trial["unit"],
               "config": trial_config(study, trial)}
        for column in dict.fromkeys([*study.front_objectives, *LATENCY_COLUMNS, study.test_metric, "model_bytes"]):
            if column in trial.index and not pd.isna(trial[column]):
                row[column] = float(trial[column])
        rows.append(row)
    return rows


def add_fronts(study: StudyFolder, strategies: dict) -> None:
    """The ``--json`` entries of a study with a front: per strategy ``pareto`` (its front's rows) and
    ``hypervolume`` (mean, SE and per run, against the study-wide reference)."""
    reference = study_reference(study)
    if reference is None:
        return
    for name, entry in strategies.items():
        entry["pareto"] = [{k: v for k, v in row.items() if k not in ("strategy", "unit")}
                           for row in front_rows(study, front_trials(study, name))]
        values = final_hypervolumes(study, name, reference)
        entry["hypervolume"] = {"runs": values, "mean": float(np.mean(values)) if values else None,
                                "se": float(pd.Series(values).sem()) if len(values) > 1 else None}


def front_latency(study: StudyFolder) -> str:
    """The latency column a front is chosen from (``predict --max-latency``): its latency objective, else
    the wall-clock latency."""
    return next((c for c in study.front_objectives if c.startswith("latency_")), "latency_ms_per_s")


def export_front(study: StudyFolder) -> Path | None:
    """Copy the model of every trial on the study-wide front to ``front/<trial_id>/`` and list them in
    ``front/front.json`` (most accurate first); None when the study has no front."""
    front = front_trials(study)
    target = study.dir / FRONT_DIR
    shutil.rmtree(target, ignore_errors=True)
    if front.empty or "model_dir" not in front.columns:
        return None
    models = []
    for row, (_, trial) in zip(front_rows(study, front), front.iterrows()):
        source = Path(str(trial["model_dir"]))
        if pd.isna(trial["model_dir"]) or not source.is_dir():
            continue
        shutil.copytree(source, target / row["trial_id"])
        models.append({**row, "path": row["trial_id"]})
    folds = study.experiment.get("objective", {}).get("cv_folds", 1) > 1
    (target / FRONT_FILE).write_text(json.dumps({
        "objectives": study.front_objectives, "constraints": study.constraints, "metric": study.metric,
        "latency": front_latency(study),
        "trained_on": "the first inner fold's train speakers" if folds else "the trial's train speakers",
        "models": models}, indent=2))
    return target


def latency_spread(study: StudyFolder) -> dict | None:
    """How noisy the latency measurement was: over the study's measured trials, the median and range of
    each trial's coefficient of variation over its timed passes, the median of their interquartile
    range (also as a share of the trial's latency) and of the CPU-time clock's."""
    trials = study.trials
    if "latency_cv" not in trials.columns or trials["latency_cv"].dropna().empty:
        return None
    cv, iqr = trials["latency_cv"].dropna(), trials["latency_iqr_ms_per_s"].dropna()
    spread = {"trials": int(len(cv)), "cv_median": float(cv.median()), "cv_min": float(cv.min()),
              "cv_max": float(cv.max()), "iqr_median_ms_per_s": float(iqr.median()),
              "iqr_share_median": float((trials["latency_iqr_ms_per_s"] / trials["latency_ms_per_s"]).median()),
              "audio_seconds": float(trials["latency_audio_seconds"].dropna().median())}
    if "latency_cpu_iqr_ms_per_s" in trials.columns:
        share = trials["latency_cpu_iqr_ms_per_s"] / trials["latency_cpu_ms_per_s"]
        spread["cpu_iqr_share_median"] = float(share.median())
    return spread
