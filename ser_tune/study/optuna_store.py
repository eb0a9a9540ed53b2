"""Every search trial in an Optuna storage, ``STUDY/optuna.db``, as it ends, for optuna-dashboard.

Whatever searched (TPE through hyperopt, a GP, grid, random or Optuna's own samplers), each run of a
strategy (one unit: a strategy, a repeat, an outer fold) is one Optuna study in the study folder's SQLite
file, and each of its trials is added there by the driver when Ray Tune says it ended: its searched
settings with their distributions (from the experiment's search space, or the grid's values), its
value(s) in the study's direction(s), the validation metric of every epoch as intermediate values, and
user attributes (unit, outer fold, repeat, `trial`: its number in start order, held-out test metric,
seconds, node, Ray's trial id). The file outlives the study and Ray: ``optuna-dashboard
sqlite:///STUDY/optuna.db`` shows history, parallel coordinates, importances and Pareto fronts while
the study runs and after it.

Only Optuna's public API writes the file (``optuna.create_study(storage=..., load_if_exists=True)``,
``optuna.trial.create_trial``, ``Study.add_trial``); a trial already there (a resumed unit) is not added
twice.
"""
from __future__ import annotations

import datetime
import math
import time
import warnings
from pathlib import Path

from ray.tune import Callback

from ..search.space import Param, parse_space
from ..training.trainable import read_reports
from .folder import StudyFolder
from .progress import start_number

STORE_FILE = "optuna.db"
ENDED = ("TERMINATED", "ERROR")
DIRECTIONS = {"max": "maximize", "min": "minimize"}


def storage_url(study_dir: str | Path) -> str:
    """The SQLAlchemy URL of a study folder's Optuna storage."""
    return f"sqlite:///{Path(study_dir).resolve() / STORE_FILE}"


def dashboard_command(study_dir: str | Path) -> str:
    """What a user types to watch the study (live, and after it); optuna-dashboard wants a storage URL,
    not a file name (``sqlite:///`` and the path: four slashes before an absolute one)."""
    return f"optuna-dashboard {storage_url(study_dir)}"


def study_name(strategy: str, repeat: int, outer_fold: int) -> str:
    """One Optuna study per strategy run: its strategy, repeat and outer fold."""
    return f"{strategy} repeat={repeat} outer_fold={outer_fold}"


def distributions(space: dict[str, Param], grid: dict | None = None) -> dict:
    """Optuna distributions of the searched settings: from the search space, or from the grid's values
    for a grid search (a grid may hold points outside the space's ranges)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if grid:
        return {name: CategoricalDistribution(list(values)) for name, values in grid.items()}
    out = {}
    for name, p in space.items():
        if p.kind == "choice":
            out[name] = CategoricalDistribution(list(p.values))
        elif p.kind == "int":
            out[name] = IntDistribution(int(p.low), int(p.high))
        else:
            out[name] = FloatDistribution(float(p.low), float(p.high), log=p.kind == "loguniform")
    return out


class OptunaRecorder(Callback):
    """A Ray Tune callback (on the driver) that adds each ended trial of one unit to the Optuna storage.

    Ray pickles callbacks with the experiment state, so it holds only plain values; the Optuna study is
    opened on the first trial that ends (and again after a resume).
    """

    def __init__(self, study_dir: str | Path, name: str, *, space: dict, objectives: dict[str, str],
                 attrs: dict, grid: dict | None = None):
        self.url = storage_url(study_dir)
        self.name = name
        self.space_raw = space                 # the YAML form: a Param does not outlive every pickle
        self.grid = grid
        self.objectives = dict(objectives)     # metric -> "max" | "min", the validation metric first
        self.attrs = dict(attrs)
        self._study = None

    def __getstate__(self):
        return {**self.__dict__, "_study": None}

    def open(self):
        import optuna

        if self._study is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            self._study = optuna.create_study(storage=self.url, study_name=self.name, load_if_exists=True,
                                              directions=[DIRECTIONS[m] for m in self.objectives.values()])
            with warnings.catch_warnings():   # set_metric_names is marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._study.set_metric_names(list(self.objectives))   # the dashboard says val_bca, not "Objective 0"
            for key, value in self.attrs.items():
                self._study.set_user_attr(key, value)
        return self._study

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.record_safely(trial, trials, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.record_safely(trial, trials, failed=True)

    def record_safely(self, trial, trials, *, failed: bool) -> None:
        """The study goes on when its Optuna copy cannot be written (a full disk, a locked file): one line.
        A second try, after reopening, rides out a reader (optuna-dashboard) creating the file's tables at
        the same moment."""
        for retry in (False, True):
            if retry:
                time.sleep(0.5)
            try:
                return self.record(str(trial.trial_id), getattr(trial, "last_result", None) or {}, failed=failed,
                                   number=start_number(trials, trial))
            except Exception as exc:   # noqa: BLE001 - any storage error; trials.csv stays the record
                self._study, error = None, exc
        print(f"{self.url[len('sqlite:///'):]}: trial {trial.trial_id} not recorded "
              f"({type(error).__name__}: {error}); the study goes on, trials.csv has it", flush=True)

    def record(self, trial_id: str, result: dict, *, failed: bool, number: int | None = None) -> None:
        """Add one ended trial; ``number``: its place in start order (Optuna numbers trials in the order
        they are added, which is the order they ended), kept as the user attribute ``trial``."""
        study = self.open()
        if any(t.user_attrs.get("trial_id") == trial_id for t in study.get_trials(deepcopy=False)):
            return   # a resumed unit: this trial is there already
        attrs = self.attrs if number is None else {**self.attrs, "trial": number}
        study.add_trial(frozen_trial(result, trial_id, self.objectives, self.distributions(), attrs, failed=failed))

    def distributions(self) -> dict:
        return distributions(parse_space(self.space_raw) if self.space_raw else {}, self.grid)


def frozen_trial(result: dict, trial_id: str, objectives: dict[str, str], dists: dict, attrs: dict, *,
                 failed: bool):
    """One ended Ray Tune trial (its last result) as an Optuna trial: COMPLETE with every objective's value,
    else FAIL (an error, or an objective it never reported)."""
    from optuna.distributions import IntDistribution
    from optuna.trial import TrialState, create_trial

    values = [number(result.get(metric)) for metric in objectives]
    complete = not failed and all(v is not None for v in values)
    params, kept = {}, {}
    for name, dist in dists.items():
        value = result.get(f"cfg_{name}")
        if value is None:
            continue
        if within(dist, value):
            params[name] = int(value) if isinstance(dist, IntDistribution) else plain(value)
        else:
            kept[f"cfg_{name}"] = plain(value)   # a value outside its distribution stays visible, as an attribute
    metric = next(iter(objectives))
    test_key = "test_" + metric[4:] if metric.startswith("val_") else "test_bca"
    user = {**attrs, "trial_id": trial_id, "status": "ERROR" if failed else "TERMINATED", **kept,
            **{k: plain(result[k]) for k in (test_key, "time_total_s", "node", "best_epoch") if k in result}}
    if "time_total_s" in user:
        user["seconds"] = user.pop("time_total_s")
    trial = create_trial(state=TrialState.COMPLETE if complete else TrialState.FAIL,
                         values=values if complete else None, params=params,
                         distributions={n: dists[n] for n in params}, user_attrs=user,
                         intermediate_values=epoch_values(result, metric))
    seconds = number(result.get("time_total_s"))
    if seconds is not None:
        end = datetime.datetime.now()
        trial.datetime_start, trial.datetime_complete = end - datetime.timedelta(seconds=seconds), end
    return trial


def within(dist, value) -> bool:
    """Whether Optuna would accept ``value`` for ``dist`` (it refuses the whole trial otherwise)."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return plain(value) in dist.choices
    if number(value) is None:
        return False
    if isinstance(dist, IntDistribution) and float(value) != int(value):
        return False
    return dist.low <= value <= dist.high


def epoch_values(result: dict, metric: str) -> dict[int, float]:
    """The validation metric after every epoch (Optuna's intermediate values), from the trial's report log."""
    out = {}
    for row in read_reports(result["reports"]) if result.get("reports") else []:
        epoch, value = row.get("epoch"), number(row.get(f"epoch_{metric}", row.get(metric)))
        if isinstance(epoch, int) and value is not None:
            out[epoch] = value
    return out


def number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def plain(value):
    """A user attribute Optuna stores as JSON."""
    if hasattr(value, "item"):
        value = value.item()
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def records_trials(meta: dict) -> bool:
    """Whether a study keeps an Optuna storage: a strategy search does."""
    return meta.get("kind") == "search" and "space" in (meta.get("experiment") or {})


def recorder_for(study_dir: str | Path, meta: dict, unit_name: str, tags: dict) -> OptunaRecorder | None:
    """The recorder of a unit that is a strategy run of a search study (not a baseline, not the refit,
    not another kind of study); None for every other unit."""
    experiment = meta.get("experiment") or {}
    strategy = tags.get("strategy")
    if not records_trials(meta) or not strategy or tags.get("baseline"):
        return None
    objectives = StudyFolder(study_dir, meta).objectives
    repeat, fold = int(tags.get("repeat", 0)), int(tags.get("outer_fold", 0))
    grid = experiment.get("grid") if strategy == "grid" else None
    if strategy == "grid" and not grid:
        from ..search.space import default_grid

        grid = default_grid(parse_space(experiment["space"]))
    return OptunaRecorder(study_dir, study_name(strategy, repeat, fold), space=experiment["space"],
                          objectives=objectives, grid=grid,
                          attrs={"unit": unit_name, "strategy": strategy, "repeat": repeat, "outer_fold": fold,
                                 "objectives": list(objectives)})
