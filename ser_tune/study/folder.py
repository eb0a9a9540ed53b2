"""The study folder: the one definition of its format, written by the driver and read by results.

A study folder holds everything needed to report on a study and to resume it::

    study.json        what was run and how it went: experiment, corpus, splits, machine, the shared
                      encode, and one entry per unit of work under "units" (status, start, end, tags);
                      a strategy search also keeps "strategies" (budget, warm-up, notes per strategy)
                      and, with evaluation.ensemble > 1, "ensembles" (per run: its refit members
                      and the test metrics of their mean class probabilities)
    split.json        the speaker split (train / val / test clip paths); splits.json with outer folds
    trials.csv        one row per trial: unit, its tags (strategy, repeat, outer_fold, ...), status,
                      the searched settings (cfg_*), final metrics, seconds, node
    epochs.csv        one row per report of a trial (an epoch, an active-learning round)
    rounds.csv        an active-learning study's rounds, one row per trial x round
    <unit>/           Ray Tune's experiment folder of each unit (for --resume)
    _trial_state/     each trial's own epoch state and reports (written by the trainable)
    report.md, summary.json, plots/, best_model/   written at the end (best_model/: a model folder, or
                      an ensemble's: ensemble.json and members/<rank>/, training.ensemble)
    front/            with several objectives (or measured deployment costs): the exported model of
                      each trial on the study's Pareto front, front/<trial_id>/, and front/front.json
                      listing them with their objectives (what ``predict --max-latency`` chooses from)

Everything here works from the files alone, without Ray, so finished, interrupted and hand-made
studies are read the same way. Bad input raises ``StudyFormatError`` naming the file and field.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..objectives import Latency, Objective, feasible, measured, pareto_front, rank_with_constraints
from ..training.export import to_jsonable   # one JSON fallback for numpy values

STUDY_FILE = "study.json"
TRIALS_FILE = "trials.csv"
EPOCHS_FILE = "epochs.csv"
SPLIT_FILE = "split.json"
FRONT_DIR, FRONT_FILE = "front", "front.json"
BEST_MODEL_DIR = "best_model"
ROUNDS_FILE = "rounds.csv"   # an active-learning study's: one row per trial x round
TRIAL_STATE = "_trial_state"
DEFAULT_THRESHOLDS = (0.8, 0.9)

# Columns a file cannot be used without; every other documented column is optional.
TRIAL_REQUIRED = ("strategy", "trial_id", "trial_index", "status")
EPOCH_REQUIRED = ("strategy", "trial_id", "epoch", "timestamp")
TRIAL_NUMERIC = ("trial_index", "best_epoch", "test_accuracy", "time_total_s", "load_seconds",
                 "encode_seconds", "train_seconds", "started_at", "finished_at",
                 "trainable_params", "total_params")
EPOCH_NUMERIC = ("epoch", "train_loss", "timestamp", "time_total_s")
# Read as text so that ids like "00001" and JSON matrices survive untouched.
TEXT_COLUMNS = {"strategy": str, "trial_id": str, "status": str, "error": str, "node": str, "unit": str,
                "test_confusion": str}
UNIT_DONE, UNIT_RUNNING, UNIT_INTERRUPTED = "done", "running", "interrupted"
REFIT_UNIT = "refit"   # runs' best configurations trained again on every search speaker (and the export)
REFIT_EXPORT = "study"   # the refit unit's trial of the study's best configuration on every speaker
MEMBER_MARK = "@"        # "tpe-f0@2": the refit of a run's second-best configuration (an ensemble's member)


def member_name(unit: str, rank: int) -> str:
    """The refit job of ``unit``'s ``rank``-th best configuration (rank 1: the unit's own name)."""
    return unit if rank == 1 else f"{unit}{MEMBER_MARK}{rank}"


# The columns a front row carries besides the objectives: the latency on both clocks and its spread.
LATENCY_COLUMNS = ("latency_ms_per_s", "latency_cpu_ms_per_s", "latency_iqr_ms_per_s", "latency_cv")


class TrialState(str, Enum):
    """A trial's ``status`` in trials.csv (Ray Tune's, and the driver's INCOMPLETE). The one rule for
    "ended": TERMINATED. An ERROR trial failed; a PENDING, RUNNING, PAUSED or INCOMPLETE one was cut off
    by an interrupt (its last report is not its result, and it may have no model)."""
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PAUSED = "PAUSED"
    TERMINATED = "TERMINATED"
    ERROR = "ERROR"
    INCOMPLETE = "INCOMPLETE"


class StudyFormatError(ValueError):
    """A study folder is missing a file or has a bad value; the message names the file and field."""


class StudyFolder:
    """One study folder: ``meta`` (study.json) and the trials and reports of its units."""

    def __init__(self, directory: str | Path, meta: dict | None = None):
        self.dir = Path(directory)
        self.meta: dict = meta if meta is not None else {}

    # --- finding and making folders ------------------------------------------------------
    @classmethod
    def create(cls, storage: str | Path, name: str) -> "StudyFolder":
        """A new, empty folder ``<storage>/<name>-<date>-<time>`` (storage made when missing)."""
        storage = Path(storage).expanduser().resolve()
        if storage.exists() and not storage.is_dir():
            raise StudyFormatError(f"storage: {storage} is a file, not a folder of study folders")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        folder, n = storage / f"{name}-{stamp}", 1
        while folder.exists():
            n += 1
            folder = storage / f"{name}-{stamp}-{n}"
        folder.mkdir(parents=True)
        return cls(folder)

    @classmethod
    def latest(cls, storage: str | Path, name: str) -> "StudyFolder":
        """The newest study folder of ``name`` under ``storage`` (for --resume)."""
        storage = Path(storage).expanduser().resolve()
        found = sorted((p for p in storage.glob(f"{name}-*") if (p / STUDY_FILE).exists()),
                       key=lambda p: p.stat().st_mtime)
        if not found:
            raise StudyFormatError(f"--resume: no study of '{name}' under {storage}")
        return cls.open(found[-1])

    @classmethod
    def open(cls, folder: str | Path) -> "StudyFolder":
        """An existing study folder with its study.json read and checked."""
        folder = Path(folder).expanduser().resolve()
        if not folder.is_dir():
            raise StudyFormatError(f"study folder {folder} does not exist")
        return cls(folder, read_meta(folder / STUDY_FILE))

    def discard_if_unstarted(self) -> None:
        """A new study that failed before any trial: remove its folder, so bad input leaves no empty
        study behind for --resume to pick up. Never touches a folder with a unit or trial in it."""
        if self.dir.is_dir() and not any(p.is_dir() for p in self.dir.iterdir()):
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- writing -----------------------------------------------------------------------------
    def save_meta(self) -> None:
        write_atomic(self.dir / STUDY_FILE, json.dumps(self.meta, indent=2, default=to_jsonable))

    def unit(self, name: str) -> dict:
        """The study.json entry of a unit of work (created empty when new)."""
        return self.meta.setdefault("units", {}).setdefault(name, {})

    def replace_rows(self, file: str, frame: pd.DataFrame, unit: str) -> None:
        """Write a unit's rows of trials.csv / epochs.csv, replacing its older rows."""
        path = self.dir / file
        if path.exists():
            old = pd.read_csv(path, dtype=TEXT_COLUMNS, low_memory=False)
            if "unit" in old:
                old = old[old["unit"] != unit]
            frame = pd.concat([old, frame], ignore_index=True)
        write_atomic(path, frame.to_csv(index=False))
        self.__dict__.pop("trials", None)
        self.__dict__.pop("epochs", None)

    @property
    def best_model_dir(self) -> Path:
        """Where the study's exported model is (``best_model/``)."""
        return self.dir / BEST_MODEL_DIR

    def state_dir(self, unit: str) -> Path:
        """Where the trials of a unit keep their own state (epoch checkpoints, reports)."""
        return self.dir / TRIAL_STATE / unit

    # --- reading -------------------------------------------------------------------------------
    @cached_property
    def trials(self) -> pd.DataFrame:
        numeric = TRIAL_NUMERIC + (self.metric, self.test_metric)
        trials = read_csv(self.dir / TRIALS_FILE, TRIAL_REQUIRED, numeric, required_file=True)
        check_trials(trials, self.dir / TRIALS_FILE)
        return trials

    @cached_property
    def epochs(self) -> pd.DataFrame:
        epochs = read_csv(self.dir / EPOCHS_FILE, EPOCH_REQUIRED, EPOCH_NUMERIC + (self.metric,),
                          required_file=False)
        if "unit" not in epochs:
            epochs["unit"] = epochs["strategy"]
        return epochs

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.dir.name)

    @property
    def experiment(self) -> dict:
        return self.meta.get("experiment") or {}

    @property
    def objective(self) -> Objective:
        """experiment.objective with the config's defaults for what it leaves out (read as written, not
        validated again: a hand-made folder may name any metric column)."""
        raw = {k: v for k, v in (self.experiment.get("objective") or {}).items() if k in Objective.model_fields}
        if isinstance(raw.get("latency"), dict):
            raw["latency"] = Latency.model_construct(**raw["latency"])
        return Objective.model_construct(**raw)

    @property
    def metric(self) -> str:
        """Validation metric column, e.g. ``val_bca``."""
        return str(self.objective.metric)

    @property
    def mode(self) -> str:
        return str(self.objective.mode)

    @property
    def objectives(self) -> dict[str, str]:
        """Every objective and its mode (experiment.objective.metrics), the validation metric first."""
        return self.objective.objectives

    @property
    def constraints(self) -> list[str]:
        return [str(c) for c in self.objective.constraints or []]

    @property
    def cv_folds(self) -> int:
        """The speaker folds each trial was scored on (objective.cv_folds)."""
        return int(self.objective.cv_folds)

    @property
    def front_objectives(self) -> dict[str, str]:
        """What the study's Pareto fronts are over: its objectives when there are several; else, when its
        trials measured their latency, the validation metric against it; else nothing (no front)."""
        if len(self.objectives) > 1:
            return self.objectives
        if "latency_ms_per_s" in self.trials.columns:
            return {self.metric: self.mode, "latency_ms_per_s": "min"}
        return {}

    @property
    def test_metric(self) -> str:
        """Test column of the objective: ``val_bca`` -> ``test_bca``."""
        return test_column(self.metric)

    @property
    def thresholds(self) -> list[float]:
        given = self.experiment.get("thresholds")
        return [float(t) for t in given] if given else list(DEFAULT_THRESHOLDS)

    @property
    def encode_seconds(self) -> float:
        return float(self.meta.get("encode_seconds") or 0.0)

    @property
    def labels(self) -> list[str]:
        return [str(label) for label in self.meta.get("labels") or []]

    @property
    def units(self) -> dict[str, dict]:
        """Units of work by name (study.json "units"); an older or hand-made folder that names only
        "strategies" has one unit per strategy, named after it."""
        if self.meta.get("units"):
            return self.meta["units"]
        legacy = dict.fromkeys([*(self.meta.get("strategies") or {}), *pd.unique(self.trials["strategy"])])
        return {name: {**((self.meta.get("strategies") or {}).get(name) or {}), "tags": {"strategy": name}}
                for name in legacy}

    @property
    def strategies(self) -> list[str]:
        """The search strategies, in the order of their units (baselines are not strategies)."""
        names = [u["tags"]["strategy"] for u in self.units.values()
                 if "strategy" in u.get("tags", {}) and not u["tags"].get("baseline")]
        return list(dict.fromkeys(names))

    def runs(self, strategy: str) -> list[str]:
        """The units (runs: repeats x outer folds) of one strategy, or of one baseline."""
        return [name for name, u in self.units.items() if u.get("tags", {}).get("strategy") == strategy]

    def unit_meta(self, unit: str) -> dict:
        return self.units.get(unit) or {}

    def unit_pauses(self, unit: str) -> list[tuple[float, float]]:
        """The unit's pauses: (from, to) while the study was stopped before the unit ended (study.json)."""
        return [(float(a), float(b)) for a, b in self.unit_meta(unit).get("pauses") or []]

    def unit_trials(self, unit: str) -> pd.DataFrame:
        rows = self.trials[self.trials["unit"] == unit]
        return rows.sort_values("trial_index", kind="mergesort")

    def refit_of(self, unit: str) -> pd.Series | None:
        """The refit unit's trial for run ``unit`` (its best configuration trained again on all of its outer
        fold's search speakers and scored on the fold's test speakers), when the study made one."""
        trials = self.trials
        if "refit_of" not in trials:
            return None
        rows = trials[(trials["unit"] == REFIT_UNIT) & (trials["refit_of"] == unit) & (trials["status"] == "TERMINATED")]
        return rows.iloc[0] if len(rows) else None

    def unit_epochs(self, unit: str) -> pd.DataFrame:
        return self.epochs[self.epochs["unit"] == unit]

    def strategy_meta(self, strategy: str) -> dict:
        """What study.json says of a strategy: its runs' budget, warm-up and notes, its status (done when
        every run is), first start and last end (while every run is done)."""
        runs = [self.unit_meta(u) for u in self.runs(strategy)]
        if not runs:
            return {}
        statuses = {r.get("status", "unknown") for r in runs}
        status = statuses.pop() if len(statuses) == 1 else (
            UNIT_INTERRUPTED if UNIT_INTERRUPTED in statuses else UNIT_RUNNING)
        starts = [r["started_at"] for r in runs if r.get("started_at") is not None]
        ends = [r["finished_at"] for r in runs if r.get("finished_at") is not None]
        return {**{k: v for k, v in runs[0].items() if k not in ("started_at", "finished_at", "status", "tags")},
                "status": status, "runs": len(runs), "started_at": min(starts) if starts else None,
                "finished_at": max(ends) if status == UNIT_DONE and ends else None}

    def strategy_trials(self, strategy: str) -> pd.DataFrame:
        """Every trial of every run of a strategy."""
        rows = self.trials[self.trials["strategy"] == strategy]
        return rows.sort_values(["unit", "trial_index"], kind="mergesort")

    # --- the trials that stand for a run, a strategy or the study ---------------------------------------
    def ended_trials(self, strategy: str | None = None, *, unit: str | None = None) -> pd.DataFrame:
        """The ended trials (TrialState.TERMINATED) with a value of the metric: of a run (``unit``, a
        baseline's too), of a strategy's runs, or of the study's searches (both None; baselines are not
        searches)."""
        if unit is not None:
            trials = self.unit_trials(unit)
        elif strategy is not None:
            trials = self.strategy_trials(strategy)
        else:
            trials = self.trials[self.trials["strategy"].isin(self.strategies)]
        return trials[(trials["status"] == TrialState.TERMINATED.value) & trials[self.metric].notna()]

    def top_trials(self, count: int, strategy: str | None = None, *, unit: str | None = None,
                   structural: frozenset = frozenset()) -> list[pd.Series]:
        """An ensemble's members: up to ``count`` of the best trials by ``best_trial``'s rule (the first is
        it), each the best of its structure (its values of the ``structural`` settings, e.g. the searched
        choices: head, layer, pooling) while there are other structures; then the next best configurations,
        each once. Members that differ in a learning rate or a shrinkage alone predict nearly alike, and
        an average of near-copies is one model (a model-based searcher's best few are often that)."""
        ranked = [trial for _, trial in self.ranked_trials(strategy, unit=unit).iterrows()]
        configs = [self.trial_config(trial) for trial in ranked]
        chosen, structures, seen = set(), set(), set()   # chosen: positions in ``ranked``
        for structured in (True, False):
            for i, config in enumerate(configs):
                key = json.dumps(config, sort_keys=True, default=str)
                structure = json.dumps({k: v for k, v in config.items() if k in structural}, sort_keys=True,
                                       default=str)
                if len(chosen) == count or key in seen or (structured and structure in structures):
                    continue
                seen.add(key)
                structures.add(structure)
                chosen.add(i)
        return [ranked[i] for i in sorted(chosen)]

    def best_trial(self, strategy: str | None = None, *, unit: str | None = None) -> pd.Series | None:
        """The one definition of the best trial, which the study exports and the report names: among
        ``ended_trials``, one that meets every constraint before any that does not, then the best metric;
        ties: the earliest. A constraint on a column no trial reported (e.g. val_ccc in a categorical
        study) is left out."""
        ranked = self.ranked_trials(strategy, unit=unit)
        return None if ranked.empty else ranked.iloc[0]

    def ranked_trials(self, strategy: str | None = None, *, unit: str | None = None) -> pd.DataFrame:
        """``ended_trials`` best first by ``best_trial``'s rule."""
        ended = self.ended_trials(strategy, unit=unit)
        if ended.empty:
            return ended
        constraints = self.constraints if measured(ended, self.constraints) else []
        return rank_with_constraints(ended, self.metric, self.mode, constraints)

    def held_out_trial(self, unit: str) -> pd.Series | None:
        """The trial whose test metric is a run's held-out figure: the refit of its best configuration when
        the study made one (its trials trained on inner folds), else its best trial. With an ensemble
        (``evaluation.ensemble`` > 1), that refit's row with the ensemble's test metrics (``ensemble_of``:
        its members' refit trials); ``single_held_out_trial`` keeps the best configuration's own."""
        single = self.single_held_out_trial(unit)
        ensemble = (self.meta.get("ensembles") or {}).get(unit)
        if single is None or not ensemble:
            return single
        metrics = {k: v for k, v in ensemble.items() if k.startswith("test_")}
        return pd.concat([single.drop(labels=[k for k in metrics if k in single.index]),
                          pd.Series({**metrics, "ensemble_of": " ".join(ensemble["members"])})])

    def single_held_out_trial(self, unit: str) -> pd.Series | None:
        """``held_out_trial`` of the run's best configuration alone (an ensemble's first member)."""
        refit = self.refit_of(unit)
        return refit if refit is not None else self.best_trial(unit=unit)

    def refit_members(self, unit: str) -> pd.DataFrame:
        """The ended refits of ``unit``'s best configurations (``member_name``), best first."""
        trials = self.trials
        if "refit_of" not in trials:
            return trials.iloc[0:0]
        refit = trials[(trials["unit"] == REFIT_UNIT) & (trials["status"] == TrialState.TERMINATED.value)]
        names = refit["refit_of"].astype(str)
        rank = names.map(lambda n: 1 if n == unit else (int(n.rsplit(MEMBER_MARK, 1)[1])
                                                        if n.startswith(unit + MEMBER_MARK) else 0))
        return refit[rank > 0].assign(member_rank=rank[rank > 0]).sort_values("member_rank", kind="mergesort")

    def feasible_trials(self, strategy: str | None = None) -> pd.DataFrame:
        """The ended search trials (of ``strategy``, or of every strategy) that have every front objective
        and meet every constraint, in trials.csv order: what the Pareto fronts are drawn from."""
        objectives = self.front_objectives
        trials = self.trials[self.trials["strategy"].isin([strategy] if strategy else self.strategies)]
        trials = trials[trials["status"] == TrialState.TERMINATED.value]
        if not objectives or any(c not in trials.columns for c in objectives):
            return trials.iloc[0:0]
        trials = trials.dropna(subset=list(objectives))
        if not measured(trials, self.constraints):   # a constraint's column was never measured: none is known to meet it
            return trials.iloc[0:0]
        return trials[feasible(trials, self.constraints)]

    def front_trials(self, strategy: str | None = None) -> pd.DataFrame:
        """The Pareto front of a strategy's trials (or of the whole study's), best first by the first objective."""
        trials = self.feasible_trials(strategy)
        if trials.empty:
            return trials
        first, mode = next(iter(self.front_objectives.items()))
        return pareto_front(trials, self.front_objectives).sort_values(first, ascending=mode == "min", kind="mergesort")

    def front_rows(self, front: pd.DataFrame) -> list[dict]:
        """One plain row per front trial: its id, strategy, run, searched settings, every objective, the
        latency spread and its test metric (on the outer fold's test speakers)."""
        columns = dict.fromkeys([*self.front_objectives, *LATENCY_COLUMNS, self.test_metric, "model_bytes"])
        return [{"trial_id": str(trial["trial_id"]), "strategy": trial["strategy"], "unit": trial["unit"],
                 "config": self.trial_config(trial),
                 **{c: float(trial[c]) for c in columns if c in trial.index and not pd.isna(trial[c])}}
                for _, trial in front.iterrows()]

    @property
    def config_columns(self) -> list[str]:
        """The searched settings' columns of trials.csv (cfg_*)."""
        return [c for c in self.trials.columns if c.startswith("cfg_")]

    def trial_config(self, trial: pd.Series) -> dict[str, Any]:
        """The cfg_* settings of one trial as plain Python values (unset settings left out)."""
        config = {}
        for column in self.config_columns:
            value = trial[column]
            if pd.isna(value):
                continue
            config[column[len("cfg_"):]] = plain_value(value, integral=integral_column(self.trials[column]))
        return config


def active_seconds(start, until, pauses=()):
    """Seconds from ``start`` to ``until`` (numbers or arrays of one shape) outside ``pauses`` ((from, to)
    pairs): a unit's clock, which leaves out the time its study was stopped between an interrupt and
    ``--resume`` (study.json's unit ``pauses``, written by the driver)."""
    begin, end = np.asarray(start, dtype=float), np.asarray(until, dtype=float)
    total = end - begin
    for a, b in pauses:
        total = total - np.clip(np.minimum(end, b) - np.maximum(begin, a), 0.0, None)
    return float(total) if total.ndim == 0 else total


def load_study(study_dir) -> StudyFolder:
    """Read and check a study folder; raises StudyFormatError on missing or malformed files."""
    study = StudyFolder.open(study_dir)
    study.trials, study.epochs  # noqa: B018 - read (and check) both files now
    return study


def test_column(metric: str) -> str:
    return "test_" + (metric[4:] if metric.startswith("val_") else metric)


def write_atomic(path: Path, text: str) -> None:
    """``path`` holds its old text or the new, never part of one; no temporary file is left (disk full, Ctrl-C)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_meta(path: Path) -> dict:
    if not path.is_file():
        raise StudyFormatError(f"{path} is missing (every study folder needs a study.json)")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StudyFormatError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise StudyFormatError(f"{path} must hold a JSON object, not {type(meta).__name__}")
    check_meta(meta, path)
    return meta


def check_meta(meta: dict, path: Path) -> None:
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
    if thresholds is not None and (not isinstance(thresholds, list) or not all(map(is_number, thresholds))):
        fail("experiment.thresholds", f"must be a list of numbers, got {thresholds!r}")
    for field in ("started_at", "finished_at", "encode_seconds"):
        if meta.get(field) is not None and not is_number(meta[field]):
            fail(field, f"must be a number, got {meta[field]!r}")
    if meta.get("labels") is not None and not isinstance(meta["labels"], (list, dict)):   # adapt: one per corpus
        fail("labels", "must be a list of class names")
    for section in ("strategies", "units"):
        entries = meta.get(section) or {}
        if not isinstance(entries, dict):
            fail(section, "must be an object keyed by name")
        for name, info in entries.items():
            if not isinstance(info, dict):
                fail(f"{section}.{name}", "must be an object")
            for field in ("started_at", "finished_at"):
                if info.get(field) is not None and not is_number(info[field]):
                    fail(f"{section}.{name}.{field}", f"must be a number, got {info[field]!r}")


def read_csv(path: Path, required: tuple, numeric: tuple, *, required_file: bool) -> pd.DataFrame:
    empty = pd.DataFrame({column: pd.Series(dtype=object) for column in required})
    if not path.is_file():
        if required_file:
            raise StudyFormatError(f"{path} is missing (every study folder needs one)")
        frame = empty  # e.g. no trial has reported yet
    else:
        try:
            # low_memory=False: types from the whole file; chunk by chunk, a column whose values are numbers
            # in the first rows and text later (a layer: 3, then "all") read as numbers in one part and text
            # in another (pandas' DtypeWarning), and equal settings stopped comparing equal
            frame = pd.read_csv(path, dtype=TEXT_COLUMNS, low_memory=False)
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


def check_trials(trials: pd.DataFrame, path: Path) -> None:
    if trials["trial_index"].isna().any():
        raise StudyFormatError(f"{path}: column trial_index is empty in some rows")
    trials["status"] = trials["status"].fillna("").astype(str).str.upper().astype(object)
    if "unit" not in trials:
        trials["unit"] = trials["strategy"]   # a study of one run per strategy (older folders)
    duplicated = trials.duplicated(["unit", "trial_id"])
    if duplicated.any():
        first = trials[duplicated].iloc[0]
        raise StudyFormatError(f"{path}: trial_id {first['trial_id']} appears twice "
                               f"in strategy {first['strategy']}")


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integral_column(column: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(column):
        return False
    values = pd.to_numeric(column, errors="coerce").dropna()
    return len(values) == column.notna().sum() and bool((values == values.round()).all())


def plain_value(value, *, integral: bool):
    if isinstance(value, np.generic):
        value = value.item()  # numpy scalar -> Python bool / int / float / str
    if isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return int(value) if integral else float(value)
    if isinstance(value, str):
        return parse_text(value)
    return value


def parse_text(text: str):
    """cfg_ columns of text may hold numbers or booleans written by the launcher."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in lowered else number
