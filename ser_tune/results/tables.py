"""Strategy comparison tables and the ``--json`` summary, computed from study folders alone."""
from __future__ import annotations

import json
import math
from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..study.folder import StudyFolder, load_study
from . import timing
from .ert import add_repeated
from .fronts import add_fronts
from .held_out import held_out_summary


def as_studies(study_dirs: Iterable) -> list[StudyFolder]:
    """Accept folders or already loaded StudyFolder objects."""
    return [s if isinstance(s, StudyFolder) else load_study(s) for s in study_dirs]


def run_row(study: StudyFolder, unit: str) -> dict[str, Any]:
    """One run of a strategy (a unit): its trials, best trial, times and overhead."""
    trials = study.unit_trials(unit)
    epochs = study.unit_epochs(unit)
    info = study.unit_meta(unit)
    best = study.best_trial(unit=unit)
    tested = study.held_out_trial(unit)
    started, finished = timing.started_at(study, unit), timing.finished_at(study, unit)
    wall = timing.elapsed(study, unit, finished)   # the run's wall-clock, its pauses left out
    seconds = [timing.trial_seconds(t, epochs[epochs["trial_id"] == t["trial_id"]]) for _, t in trials.iterrows()]
    trial_total = float(sum(seconds))
    # Still-running trials are taken to run until the run's last observed event.
    ends = trials["finished_at"].fillna(finished)
    concurrency = timing.peak_concurrency(trials["started_at"], ends) if len(trials) else 1
    best_val = float(best[study.metric]) if best is not None else math.nan
    tags = info.get("tags") or {}
    return {
        "study": study.name, "study_dir": str(study.dir), "strategy": tags.get("strategy", unit), "unit": unit,
        "outer_fold": tags.get("outer_fold", 0), "repeat": tags.get("repeat", 0),
        "status": info.get("status", "unknown"), "notes": info.get("notes", ""),
        "budget": info.get("budget"), "warmup": info.get("warmup"), "metric": study.metric, "mode": study.mode,
        "trials_started": int(len(trials)), "trials": int((trials["status"] == "TERMINATED").sum()),
        "errors": int((trials["status"] == "ERROR").sum()), "best_val": best_val,
        "best_trial_id": str(best["trial_id"]) if best is not None else None,
        "best_trial_index": int(best["trial_index"]) if best is not None else None,
        "best_config": study.trial_config(best) if best is not None else {},
        "best_test": _float(tested.get(study.test_metric)) if tested is not None else math.nan,
        "best_test_accuracy": _float(tested.get("test_accuracy")) if tested is not None else math.nan,
        "started_at": started, "finished_at": finished, "wall_clock_seconds": wall,
        "per_minute": best_val / (wall / 60.0) if wall > 0 else math.nan,
        "trial_seconds": trial_total, "load_seconds": float(trials["load_seconds"].sum()),
        "trial_encode_seconds": float(trials["encode_seconds"].sum()),
        "train_seconds": float(trials["train_seconds"].sum()), "concurrency": concurrency,
        "overhead_seconds": wall - trial_total / concurrency, "shared_encode_seconds": study.encode_seconds,
    }


SUMMED = ("trials_started", "trials", "errors", "trial_seconds", "load_seconds", "trial_encode_seconds",
          "train_seconds", "overhead_seconds")
AVERAGED = ("best_val", "best_test", "best_test_accuracy", "wall_clock_seconds", "per_minute")


def strategy_row(study: StudyFolder, strategy: str) -> dict[str, Any]:
    """A strategy over its runs: one run's row as it is; several runs' counts and times summed, their
    best values and wall-clocks averaged (with the standard error), the best trial over all runs."""
    runs = [run_row(study, unit) for unit in study.runs(strategy) or [strategy]]
    if len(runs) == 1:
        return {**runs[0], "unit": runs[0]["unit"], "runs": 1}
    frame = pd.DataFrame(runs)
    best = max((r for r in runs if not math.isnan(r["best_val"])), default=runs[0],
               key=lambda r: r["best_val"] if study.mode == "max" else -r["best_val"])
    info = study.strategy_meta(strategy)
    row = {**best, "unit": None, "runs": len(runs), "status": info.get("status", "unknown"),
           "started_at": float(frame["started_at"].min()), "finished_at": float(frame["finished_at"].max()),
           "concurrency": int(frame["concurrency"].max())}
    row.update({k: float(frame[k].sum()) for k in SUMMED})
    row.update({k: float(frame[k].mean()) for k in AVERAGED})
    row.update({f"{k}_se": float(frame[k].sem()) for k in AVERAGED})
    row.update({k: int(row[k]) for k in ("trials_started", "trials", "errors")})
    return row


def threshold_row(study: StudyFolder, unit: str, threshold: float, wall: float) -> dict[str, Any]:
    crossing = timing.first_crossing(study, unit, threshold)
    tags = study.unit_meta(unit).get("tags") or {}
    return {
        "study": study.name, "study_dir": str(study.dir), "strategy": tags.get("strategy", unit), "unit": unit,
        "metric": study.metric, "threshold": float(threshold), "reached": crossing.reached,
        "seconds_to": crossing.seconds_to, "trial_seconds_to": crossing.trial_seconds_to,
        "seconds_to_incl_encode": crossing.seconds_to + study.encode_seconds, "trials_to": crossing.trials_to,
        "crossing_trial_id": crossing.trial_id, "crossing_epoch": crossing.epoch,
        "crossing_value": crossing.value, "trials_started": int(len(study.unit_trials(unit))),
        "wall_clock_seconds": wall,
    }


def compare(study_dirs: list, thresholds: list[float] | None = None) -> dict[str, pd.DataFrame]:
    """{"strategies": one row per (study, strategy), over its runs; "runs": one row per (study, run);
    "thresholds": one row per (study, run, threshold)}.

    thresholds=None uses each study's own experiment.thresholds (else 0.8 and 0.9).
    Censored (never reached) thresholds have NaN times and reached=False.
    """
    strategy_rows, run_rows, threshold_rows = [], [], []
    for study in as_studies(study_dirs):
        for strategy in study.strategies:
            strategy_rows.append(strategy_row(study, strategy))
            for unit in study.runs(strategy) or [strategy]:
                row = run_row(study, unit)
                run_rows.append(row)
                for threshold in (thresholds if thresholds is not None else study.thresholds):
                    threshold_rows.append(threshold_row(study, unit, threshold, row["wall_clock_seconds"]))
    return {"strategies": pd.DataFrame(strategy_rows, columns=list(_STRATEGY_COLUMNS)),
            "runs": pd.DataFrame(run_rows, columns=list(_RUN_COLUMNS)),
            "thresholds": pd.DataFrame(threshold_rows, columns=list(_THRESHOLD_COLUMNS))}


def summary_json(study_dirs, thresholds: list[float] | None = None) -> dict:
    """The ``--json`` object; NaN (including censored thresholds) becomes null."""
    studies = as_studies(study_dirs)
    tables = compare(studies, thresholds)
    out = []
    for study in studies:
        own = thresholds if thresholds is not None else study.thresholds
        rows = tables["strategies"][tables["strategies"]["study_dir"] == str(study.dir)]
        marks = tables["thresholds"][tables["thresholds"]["study_dir"] == str(study.dir)]
        strategies = {row["strategy"]: strategy_summary(study, row, marks) for row in rows.to_dict("records")}
        entry = {"study_dir": str(study.dir), "name": study.name, "metric": study.metric, "mode": study.mode,
                 "encode_seconds": study.encode_seconds, "thresholds": [float(t) for t in own],
                 "strategies": strategies}
        entry.update(held_out_summary(study, strategies))
        if any(row["runs"] > 1 for row in rows.to_dict("records")):
            entry.update(add_repeated(study, own, strategies))
        if study.front_objectives:
            add_fronts(study, strategies)
        out.append(entry)
    # Round-trip proves the object is plain JSON (no numpy scalars, no NaN, no infinity).
    return json.loads(json.dumps(_plain_json({"studies": out}), allow_nan=False))


def strategy_summary(study: StudyFolder, row: dict, marks: pd.DataFrame) -> dict:
    """One strategy's entry of the --json object. With one run: its times to each threshold; with
    several, ``repeats`` and (see ``add_repeated``) ERT and the verdict instead."""
    metric_name = study.metric[4:] if study.metric.startswith("val_") else study.metric
    own = marks[marks["strategy"] == row["strategy"]]
    single = row["runs"] == 1

    def by_threshold(column: str) -> dict:
        return {repr(float(t)): _json_number(v) if single else None
                for t, v in zip(own["threshold"], own[column])}

    return {"trials": row["trials"], "errors": row["errors"], "runs": row["runs"],
            f"best_{study.metric}": _json_number(row["best_val"]), "best_config": row["best_config"],
            study.test_metric: _json_number(row["best_test"]), "best_trial_id": row["best_trial_id"],
            "seconds_to": by_threshold("seconds_to"), "seconds_to_incl_encode": by_threshold("seconds_to_incl_encode"),
            "trial_seconds_to": by_threshold("trial_seconds_to"),
            "trials_to": {k: (int(v) if v is not None else None) for k, v in by_threshold("trials_to").items()},
            "wall_clock_seconds": _json_number(row["wall_clock_seconds"]),
            f"{metric_name}_per_minute": _json_number(row["per_minute"]),
            "trials_started": row["trials_started"], "status": row["status"]}


_RUN_COLUMNS = (
    "study", "study_dir", "strategy", "unit", "outer_fold", "repeat", "status", "notes", "budget", "warmup",
    "metric", "mode", "trials_started", "trials", "errors", "best_val", "best_trial_id", "best_trial_index",
    "best_config", "best_test", "best_test_accuracy", "started_at", "finished_at", "wall_clock_seconds",
    "per_minute", "trial_seconds", "load_seconds", "trial_encode_seconds", "train_seconds", "concurrency",
    "overhead_seconds", "shared_encode_seconds")
# A strategy's row: a run's without the run's own tags, with its run count and the runs' standard errors.
_STRATEGY_COLUMNS = ("study", "study_dir", "strategy", "runs", *_RUN_COLUMNS[_RUN_COLUMNS.index("status"):],
                     "best_val_se", "best_test_se")
_THRESHOLD_COLUMNS = (
    "study", "study_dir", "strategy", "unit", "metric", "threshold", "reached", "seconds_to",
    "seconds_to_incl_encode", "trial_seconds_to", "trials_to", "crossing_trial_id", "crossing_epoch",
    "crossing_value", "trials_started", "wall_clock_seconds")


def _float(value) -> float:
    return math.nan if value is None or pd.isna(value) else float(value)


def _plain_json(value):
    """NaN (pandas' stand-in for a missing value in any column) -> None; numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None   # NaN (unknown) and infinity (an ERT never reached): null in JSON
    return value


def _json_number(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)
