"""Which trials stand for a run, a strategy or a study (the best, the held-out one) and their settings:
the pickers every table builds on, below the tables and the summary."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import pandas as pd

from ..objectives import measured, rank_with_constraints
from ..study.folder import StudyFolder, load_study


def as_studies(study_dirs: Iterable) -> list[StudyFolder]:
    """Accept folders or already loaded StudyFolder objects."""
    return [s if isinstance(s, StudyFolder) else load_study(s) for s in study_dirs]


def best_trial(study: StudyFolder, strategy: str | None = None, *, unit: str | None = None) -> pd.Series | None:
    """Best non-ERROR trial by the objective, of a run (``unit``), of a strategy's runs, or of the
    study's searches (both None; baselines are not searches); ties: earliest."""
    if unit is not None:
        trials = study.unit_trials(unit)
    elif strategy is not None:
        trials = study.strategy_trials(strategy)
    else:
        trials = study.trials[study.trials["strategy"].isin(study.strategies)]
    usable = trials[(trials["status"] != "ERROR") & trials[study.metric].notna()]
    if usable.empty:
        return None
    if study.constraints and measured(usable, study.constraints):   # feasible trials before any other
        return rank_with_constraints(usable, study.metric, study.mode, study.constraints).iloc[0]
    values = usable[study.metric]
    position = int(np.argmin(values.to_numpy()) if study.mode == "min" else np.argmax(values.to_numpy()))
    return usable.iloc[position]


def held_out_trial(study: StudyFolder, unit: str) -> pd.Series | None:
    """The trial whose test metric is a run's held-out figure: the refit of its best configuration when
    the study made one (its trials trained on inner folds), else its best trial."""
    refit = study.refit_of(unit)
    return refit if refit is not None else best_trial(study, unit=unit)


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
