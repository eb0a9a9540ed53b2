"""Read a study folder (study.json, trials.csv, epochs.csv) written by the launcher.

Everything here works from the files alone, without Ray, so finished, interrupted and
hand-made studies are read the same way. Bad input raises ``StudyFormatError`` naming the
file and field at fault.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

DEFAULT_THRESHOLDS = (0.8, 0.9)

# Columns a file cannot be used without; every other documented column is optional.
TRIAL_REQUIRED = ("strategy", "trial_id", "trial_index", "status")
EPOCH_REQUIRED = ("strategy", "trial_id", "epoch", "timestamp")
TRIAL_NUMERIC = ("trial_index", "best_epoch", "test_accuracy", "time_total_s", "load_seconds",
                 "encode_seconds", "train_seconds", "started_at", "finished_at",
                 "trainable_params", "total_params")
EPOCH_NUMERIC = ("epoch", "train_loss", "timestamp", "time_total_s")
# Read as text so that ids like "00001" and JSON matrices survive untouched.
TEXT_COLUMNS = {"strategy": str, "trial_id": str, "status": str, "error": str, "node": str,
                "test_confusion": str}


class StudyFormatError(ValueError):
    """A study folder is missing a file or has a bad value; the message names the file and field."""


@dataclass
class Study:
    dir: Path
    meta: dict
    trials: pd.DataFrame
    epochs: pd.DataFrame

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.dir.name)

    @property
    def objective(self) -> dict:
        return (self.meta.get("experiment") or {}).get("objective") or {}

    @property
    def metric(self) -> str:
        """Validation metric column, e.g. ``val_bca``."""
        return str(self.objective.get("metric", "val_bca"))

    @property
    def mode(self) -> str:
        return str(self.objective.get("mode", "max"))

    @property
    def test_metric(self) -> str:
        """Test column of the objective: ``val_bca`` -> ``test_bca``."""
        return test_column(self.metric)

    @property
    def thresholds(self) -> list[float]:
        given = (self.meta.get("experiment") or {}).get("thresholds")
        return [float(t) for t in given] if given else list(DEFAULT_THRESHOLDS)

    @property
    def encode_seconds(self) -> float:
        value = self.meta.get("encode_seconds")
        return float(value) if value is not None else 0.0

    @property
    def labels(self) -> list[str]:
        return [str(label) for label in self.meta.get("labels") or []]

    @property
    def strategies(self) -> list[str]:
        """Strategies in study.json order, then any that only trials.csv names."""
        names = list(self.meta.get("strategies") or {})
        names += [s for s in pd.unique(self.trials["strategy"]) if s not in names]
        return names

    def strategy_meta(self, strategy: str) -> dict:
        return (self.meta.get("strategies") or {}).get(strategy) or {}

    def strategy_trials(self, strategy: str) -> pd.DataFrame:
        rows = self.trials[self.trials["strategy"] == strategy]
        return rows.sort_values("trial_index", kind="mergesort")

    def strategy_epochs(self, strategy: str) -> pd.DataFrame:
        return self.epochs[self.epochs["strategy"] == strategy]

    def is_better_or_equal(self, value: float, threshold: float) -> bool:
        return value <= threshold if self.mode == "min" else value >= threshold


def test_column(metric: str) -> str:
    return "test_" + (metric[4:] if metric.startswith("val_") else metric)


def load_study(study_dir) -> Study:
    """Read and check a study folder; raises StudyFormatError on missing or malformed files."""
    directory = Path(study_dir)
    if not directory.is_dir():
        raise StudyFormatError(f"study folder {directory} does not exist")
    meta = _read_meta(directory / "study.json")
    metric = str(((meta.get("experiment") or {}).get("objective") or {}).get("metric", "val_bca"))
    metric_columns = (metric, test_column(metric))
    trials = _read_csv(directory / "trials.csv", TRIAL_REQUIRED, TRIAL_NUMERIC + metric_columns,
                       required_file=True)
    epochs = _read_csv(directory / "epochs.csv", EPOCH_REQUIRED, EPOCH_NUMERIC + (metric,),
                       required_file=False)
    _check_trials(trials, directory / "trials.csv")
    return Study(dir=directory, meta=meta, trials=trials, epochs=epochs)


def _read_meta(path: Path) -> dict:
    if not path.is_file():
        raise StudyFormatError(f"{path} is missing (every study folder needs a study.json)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StudyFormatError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise StudyFormatError(f"{path} must hold a JSON object, not {type(meta).__name__}")
    _check_meta(meta, path)
    return meta


def _check_meta(meta: dict, path: Path) -> None:
    def fail(field: str, problem: str) -> None:
        raise StudyFormatError(f"{path}: field {field} {problem}")

    experiment = meta.get("experiment") or {}
    if not isinstance(experiment, dict):
        fail("experiment", "must be an object")
    objective = experiment.get("objective") or {}
    if not isinstance(objective, dict):
        fail("experiment.objective", "must be an object")
    if objective.get("mode", "max") not in ("max", "min"):
        fail("experiment.objective.mode", f"must be 'max' or 'min', got {objective.get('mode')!r}")
    if not isinstance(objective.get("metric", "val_bca"), str):
        fail("experiment.objective.metric", "must be a column name")
    thresholds = experiment.get("thresholds")
    if thresholds is not None and (not isinstance(thresholds, list)
                                   or not all(_is_number(t) for t in thresholds)):
        fail("experiment.thresholds", f"must be a list of numbers, got {thresholds!r}")
    for field in ("started_at", "finished_at", "encode_seconds"):
        if meta.get(field) is not None and not _is_number(meta[field]):
            fail(field, f"must be a number, got {meta[field]!r}")
    labels = meta.get("labels")
    if labels is not None and not isinstance(labels, list):
        fail("labels", "must be a list of class names")
    strategies = meta.get("strategies") or {}
    if not isinstance(strategies, dict):
        fail("strategies", "must be an object keyed by strategy name")
    for name, info in strategies.items():
        if not isinstance(info, dict):
            fail(f"strategies.{name}", "must be an object")
        for field in ("started_at", "finished_at"):
            if info.get(field) is not None and not _is_number(info[field]):
                fail(f"strategies.{name}.{field}", f"must be a number, got {info[field]!r}")


def _read_csv(path: Path, required: tuple, numeric: tuple, *, required_file: bool) -> pd.DataFrame:
    empty = pd.DataFrame({column: pd.Series(dtype=object) for column in required})
    if not path.is_file():
        if required_file:
            raise StudyFormatError(f"{path} is missing (every study folder needs one)")
        frame = empty  # e.g. no trial has reported yet
    else:
        try:
            frame = pd.read_csv(path, dtype=TEXT_COLUMNS)
        except pd.errors.EmptyDataError:
            frame = empty
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
            raise StudyFormatError(f"{path} cannot be read as CSV: {err}") from None
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise StudyFormatError(f"{path} lacks column(s) {', '.join(missing)}")
    for column in numeric:
        if column not in frame.columns:
            frame[column] = float("nan")  # optional column absent: treat as unknown
            continue
        try:
            frame[column] = pd.to_numeric(frame[column]).astype(float)
        except (ValueError, TypeError):
            raise StudyFormatError(f"{path}: column {column} holds a non-numeric value") from None
    for column in ("strategy", "trial_id"):
        if frame[column].isna().any():
            raise StudyFormatError(f"{path}: column {column} is empty in some rows")
        frame[column] = frame[column].astype(object)
    return frame


def _check_trials(trials: pd.DataFrame, path: Path) -> None:
    if trials["trial_index"].isna().any():
        raise StudyFormatError(f"{path}: column trial_index is empty in some rows")
    trials["status"] = trials["status"].fillna("").astype(str).str.upper().astype(object)
    duplicated = trials.duplicated(["strategy", "trial_id"])
    if duplicated.any():
        first = trials[duplicated].iloc[0]
        raise StudyFormatError(f"{path}: trial_id {first['trial_id']} appears twice "
                               f"in strategy {first['strategy']}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
