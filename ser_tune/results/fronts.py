"""A study's Pareto fronts: each strategy's and the study's and their hypervolume against wall-clock,
from the study folder alone (the front's trials are the folder's: ``StudyFolder.front_trials``; the
study exports their models, ``strategies.export_front``).

What a front is over is ``StudyFolder.front_objectives`` (the study's objectives when there are
several, else the validation metric against the measured latency). Only finished search trials count
(not the baselines), and only feasible ones when the study has constraints: infeasible trials rank
after every feasible one, so none of them is on a front. The hypervolume of a run (one strategy,
one repeat, one outer fold) counts its trials as they end, against one study-wide reference point
(the worst value of each objective over all those trials), so strategies compare on one scale.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..objectives import hypervolume, hypervolume_over_time, reference_point
from ..study.folder import StudyFolder
from . import repeats, timing


def study_reference(study: StudyFolder) -> dict[str, float] | None:
    """The study-wide reference point of every hypervolume: the worst value of each objective."""
    trials = study.feasible_trials()
    return reference_point(trials, study.front_objectives) if not trials.empty else None


def hypervolume_curves(study: StudyFolder, strategy: str, reference: dict) -> list[pd.Series]:
    """One step curve per run of ``strategy``: the hypervolume of its trials ended by each second since
    the run started (0 from its start until its first feasible trial ends)."""
    trials = study.feasible_trials(strategy)
    curves = []
    for unit in study.runs(strategy):
        own = trials[trials["unit"] == unit]
        if own.empty:
            continue
        ended = own.assign(time=timing.elapsed(study, unit, own["finished_at"].to_numpy(float)))
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
    trials = study.feasible_trials(strategy)
    return [hypervolume(trials[trials["unit"] == unit], study.front_objectives, reference)
            for unit in study.runs(strategy) if (trials["unit"] == unit).any()]


def add_fronts(study: StudyFolder, strategies: dict) -> None:
    """The ``--json`` entries of a study with a front: per strategy ``pareto`` (its front's rows) and
    ``hypervolume`` (mean, SE and per run, against the study-wide reference)."""
    reference = study_reference(study)
    if reference is None:
        return
    for name, entry in strategies.items():
        entry["pareto"] = [{k: v for k, v in row.items() if k not in ("strategy", "unit")}
                           for row in study.front_rows(study.front_trials(name))]
        values = final_hypervolumes(study, name, reference)
        entry["hypervolume"] = {"runs": values, "mean": float(np.mean(values)) if values else None,
                                "se": float(pd.Series(values).sem()) if len(values) > 1 else None}


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
