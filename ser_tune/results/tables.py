"""Strategy comparison tables and the ``--json`` summary, computed from study folders alone."""
from __future__ import annotations

import json
import math
from typing import Any, Iterable

import numpy as np
import pandas as pd

from . import timing
from ..study.folder import StudyFolder, load_study


def as_studies(study_dirs: Iterable) -> list[StudyFolder]:
    """Accept folders or already loaded StudyFolder objects."""
    return [s if isinstance(s, StudyFolder) else load_study(s) for s in study_dirs]


def best_trial(study: StudyFolder, strategy: str | None = None) -> pd.Series | None:
    """Best non-ERROR trial by the objective (whole study when strategy is None); ties: earliest."""
    trials = study.trials if strategy is None else study.strategy_trials(strategy)
    usable = trials[(trials["status"] != "ERROR") & trials[study.metric].notna()]
    if usable.empty:
        return None
    values = usable[study.metric]
    position = int(np.argmin(values.to_numpy()) if study.mode == "min" else np.argmax(values.to_numpy()))
    return usable.iloc[position]


def trial_config(study: StudyFolder, trial: pd.Series) -> dict[str, Any]:
    """The cfg_* settings of one trial as plain Python values (unset settings left out)."""
    config = {}
    for column in config_columns(study):
        value = trial[column]
        if pd.isna(value):
            continue
        config[column[len("cfg_"):]] = _plain(value, integral=_integral_column(study.trials[column]))
    return config


def config_columns(study: StudyFolder) -> list[str]:
    return [c for c in study.trials.columns if c.startswith("cfg_")]


def strategy_row(study: StudyFolder, strategy: str) -> dict[str, Any]:
    trials = study.strategy_trials(strategy)
    epochs = study.strategy_epochs(strategy)
    info = study.strategy_meta(strategy)
    best = best_trial(study, strategy)
    started = timing.strategy_started_at(study, strategy)
    finished = timing.strategy_finished_at(study, strategy)
    wall = finished - started
    seconds = [timing.trial_seconds(t, epochs[epochs["trial_id"] == t["trial_id"]])
               for _, t in trials.iterrows()]
    trial_total = float(sum(seconds))
    # Still-running trials are taken to run until the strategy's last observed event.
    ends = trials["finished_at"].fillna(finished)
    concurrency = timing.peak_concurrency(trials["started_at"], ends) if len(trials) else 1
    best_val = float(best[study.metric]) if best is not None else math.nan
    return {
        "study": study.name, "study_dir": str(study.dir), "strategy": strategy,
        "status": info.get("status", "unknown"), "notes": info.get("notes", ""),
        "budget": info.get("budget"), "warmup": info.get("warmup"),
        "metric": study.metric, "mode": study.mode,
        "trials_started": int(len(trials)),
        "trials": int((trials["status"] == "TERMINATED").sum()),
        "errors": int((trials["status"] == "ERROR").sum()),
        "best_val": best_val,
        "best_trial_id": str(best["trial_id"]) if best is not None else None,
        "best_trial_index": int(best["trial_index"]) if best is not None else None,
        "best_config": trial_config(study, best) if best is not None else {},
        "best_test": _float(best.get(study.test_metric)) if best is not None else math.nan,
        "best_test_accuracy": _float(best.get("test_accuracy")) if best is not None else math.nan,
        "started_at": started, "finished_at": finished, "wall_clock_seconds": wall,
        "per_minute": best_val / (wall / 60.0) if wall > 0 else math.nan,
        "trial_seconds": trial_total,
        "load_seconds": float(trials["load_seconds"].sum()),
        "trial_encode_seconds": float(trials["encode_seconds"].sum()),
        "train_seconds": float(trials["train_seconds"].sum()),
        "concurrency": concurrency,
        "overhead_seconds": wall - trial_total / concurrency,
        "shared_encode_seconds": study.encode_seconds,
    }


def threshold_row(study: StudyFolder, strategy: str, threshold: float, wall: float) -> dict[str, Any]:
    crossing = timing.first_crossing(study, strategy, threshold)
    return {
        "study": study.name, "study_dir": str(study.dir), "strategy": strategy,
        "metric": study.metric, "threshold": float(threshold), "reached": crossing.reached,
        "seconds_to": crossing.seconds_to,
        "seconds_to_incl_encode": crossing.seconds_to + study.encode_seconds,
        "trial_seconds_to": crossing.trial_seconds_to,
        "trials_to": crossing.trials_to,
        "crossing_trial_id": crossing.trial_id, "crossing_epoch": crossing.epoch,
        "crossing_value": crossing.value,
        "trials_started": int(len(study.strategy_trials(strategy))),
        "wall_clock_seconds": wall,
    }


def compare(study_dirs: list, thresholds: list[float] | None = None) -> dict[str, pd.DataFrame]:
    """{"strategies": one row per (study, strategy), "thresholds": one row per (study, strategy, threshold)}.

    thresholds=None uses each study's own experiment.thresholds (else 0.8 and 0.9).
    Censored (never reached) thresholds have NaN times and reached=False.
    """
    strategy_rows, threshold_rows = [], []
    for study in as_studies(study_dirs):
        for strategy in study.strategies:
            row = strategy_row(study, strategy)
            strategy_rows.append(row)
            for threshold in (thresholds if thresholds is not None else study.thresholds):
                threshold_rows.append(threshold_row(study, strategy, threshold,
                                                    row["wall_clock_seconds"]))
    strategies = pd.DataFrame(strategy_rows, columns=list(_STRATEGY_COLUMNS))
    threshold_frame = pd.DataFrame(threshold_rows, columns=list(_THRESHOLD_COLUMNS))
    return {"strategies": strategies, "thresholds": threshold_frame}


def summary_json(study_dirs, thresholds: list[float] | None = None) -> dict:
    """The ``--json`` object; NaN (including censored thresholds) becomes null."""
    studies = as_studies(study_dirs)
    tables = compare(studies, thresholds)
    out = []
    for study in studies:
        metric_name = study.metric[4:] if study.metric.startswith("val_") else study.metric
        rows = tables["strategies"][tables["strategies"]["study_dir"] == str(study.dir)]
        marks = tables["thresholds"][tables["thresholds"]["study_dir"] == str(study.dir)]
        strategies = {}
        for row in rows.to_dict("records"):
            own = marks[marks["strategy"] == row["strategy"]]
            def by_threshold(column: str) -> dict:
                return {threshold_key(t): _json_number(v) for t, v in zip(own["threshold"], own[column])}
            strategies[row["strategy"]] = {
                "trials": row["trials"], "errors": row["errors"],
                f"best_{study.metric}": _json_number(row["best_val"]),
                "best_config": row["best_config"],
                study.test_metric: _json_number(row["best_test"]),
                "best_trial_id": row["best_trial_id"],
                "seconds_to": by_threshold("seconds_to"),
                "seconds_to_incl_encode": by_threshold("seconds_to_incl_encode"),
                "trial_seconds_to": by_threshold("trial_seconds_to"),
                "trials_to": {k: (int(v) if v is not None else None)
                              for k, v in by_threshold("trials_to").items()},
                "wall_clock_seconds": _json_number(row["wall_clock_seconds"]),
                f"{metric_name}_per_minute": _json_number(row["per_minute"]),
                "trials_started": row["trials_started"], "status": row["status"],
            }
        out.append({"study_dir": str(study.dir), "name": study.name, "metric": study.metric,
                    "mode": study.mode, "encode_seconds": study.encode_seconds,
                    "thresholds": [float(t) for t in (thresholds if thresholds is not None
                                                      else study.thresholds)],
                    "strategies": strategies})
    # Round-trip proves the object is plain JSON (no numpy scalars, no NaN).
    return json.loads(json.dumps(_plain_json({"studies": out}), allow_nan=False))


def threshold_key(threshold: float) -> str:
    return repr(float(threshold))


_STRATEGY_COLUMNS = (
    "study", "study_dir", "strategy", "status", "notes", "budget", "warmup", "metric", "mode",
    "trials_started", "trials", "errors", "best_val", "best_trial_id", "best_trial_index",
    "best_config", "best_test", "best_test_accuracy", "started_at", "finished_at",
    "wall_clock_seconds", "per_minute", "trial_seconds", "load_seconds", "trial_encode_seconds",
    "train_seconds", "concurrency", "overhead_seconds", "shared_encode_seconds")
_THRESHOLD_COLUMNS = (
    "study", "study_dir", "strategy", "metric", "threshold", "reached", "seconds_to",
    "seconds_to_incl_encode", "trial_seconds_to", "trials_to", "crossing_trial_id",
    "crossing_epoch", "crossing_value", "trials_started", "wall_clock_seconds")


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
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _json_number(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _integral_column(column: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(column):
        return False
    values = pd.to_numeric(column, errors="coerce").dropna()
    return len(values) == column.notna().sum() and bool((values == values.round()).all())


def _plain(value, *, integral: bool):
    if isinstance(value, np.generic):
        value = value.item()  # numpy scalar -> Python bool / int / float / str
    if isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return int(value) if integral else float(value)
    if isinstance(value, str):
        return _parse_text(value)
    return value


def _parse_text(text: str):
    """cfg_ columns of text may hold numbers or booleans written by the launcher."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in lowered else number
