"""Objectives: their modes (directions), Pareto fronts, hypervolume, constraints on deployment costs and
the ranking they give. A low floor: config, search, study and results import it; it imports none of them.

Pure functions over pandas DataFrames with one row per trial (e.g. columns ``val_bca``,
``latency_ms_per_s``, ``model_bytes``), without Ray or files.

Definitions
- ``objectives`` maps a column to its mode, ``"max"`` or ``"min"``, e.g.
  ``{"val_bca": "max", "latency_ms_per_s": "min"}``.
- A row dominates another when it is at least as good in every objective and better in one.
  The Pareto front is the set of rows no row dominates. Rows with the same values in every
  objective do not dominate each other: duplicates of a front point are all on the front.
  Rows with NaN in an objective (a trial that did not measure it) are left out.
- Hypervolume: the measure of the objective space that the points dominate and that dominates
  the reference point (the area, in 2-D, between the front and the reference). The reference is
  given by the caller, one value per objective, worse than every point counted: a point not
  strictly better than the reference in every objective adds nothing. ``reference_point`` gives
  the usual study-wide choice, the worst value of each objective over all the study's trials
  (points on that worst value then add nothing; a comparison of studies must use one reference).
  2 objectives: an exact sweep, O(n log n). 3 or more: exact, by slicing along the last
  objective into 2-D sweeps (Hypervolume by Slicing Objectives, While et al. 2006),
  O(n^(d-1) log n): fine for the hundreds of trials of a study.
- Constraints: strings ``"<column> <op> <number>"`` with ``op`` one of ``<=, <, >=, >, ==``,
  e.g. ``"latency_ms_per_s <= 50"`` or ``"model_bytes < 2e7"``. A trial is feasible when it
  meets every constraint; a NaN value meets none (a trial that did not measure its latency is
  not known to fit the budget).

Example: four trials, BCA against latency.

>>> import pandas as pd
>>> trials = pd.DataFrame({"trial": [1, 2, 3, 4], "val_bca": [0.70, 0.80, 0.75, 0.60],
...                        "latency_ms_per_s": [20.0, 60.0, 70.0, 30.0]})
>>> objectives = {"val_bca": "max", "latency_ms_per_s": "min"}
>>> pareto_front(trials, objectives)["trial"].tolist()  # 3 is slower and worse than 2, 4 than 1
[1, 2]
>>> reference = reference_point(trials, objectives)
>>> reference
{'val_bca': 0.6, 'latency_ms_per_s': 70.0}
>>> round(hypervolume(trials, objectives, reference), 6)  # 0.1 x 50 + 0.1 x 10
6.0
>>> feasible(trials, ["latency_ms_per_s <= 50"]).tolist()
[True, False, False, True]
>>> rank_with_constraints(trials, "val_bca", "max", ["latency_ms_per_s <= 50"])["trial"].tolist()
[1, 4, 2, 3]
"""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Annotated, Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from .schema import NonNegativeInt, PositiveInt, Section, choice, described, invalid, listed

METRICS = ("val_bca", "val_ccc", "val_ccc_arousal", "val_ccc_valence", "val_ccc_dominance")
# The worst value each metric can take: what a trial that breaks a constraint is told (a little worse).
METRIC_FLOOR = {"val_bca": 0.0, "val_ccc": -1.0, "val_ccc_arousal": -1.0, "val_ccc_valence": -1.0,
                "val_ccc_dominance": -1.0}
# What a trial's exported model costs (training.latency.deployment_costs, and the trial's training CPU):
# measured only when the study asks, better when lower.
# latency_cpu_ms_per_s: the timing thread's CPU time per second of audio, a steadier measure of the same cost on
# a machine other processes share.
DEPLOYMENT_METRICS = ("latency_ms_per_s", "latency_cpu_ms_per_s", "model_bytes", "trainable_params", "total_params",
                      "train_cpu_seconds")
COMPARISONS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq}
CONSTRAINT_FORM = re.compile(r"^\s*(?P<column>[^\s<>=!]+)\s*(?P<op><=|>=|==|<|>)\s*(?P<number>\S+)\s*$")


# ---------------------------------------------------------------- objectives and the front

def check_mode(mode: str) -> None:
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")


def check_objectives(frame: pd.DataFrame, objectives: Mapping[str, str]) -> None:
    """One clear line for objectives that name no column or have a bad mode."""
    if not objectives:
        raise ValueError("objectives: give at least one column and its mode ('max' or 'min')")
    for column, mode in objectives.items():
        if column not in frame.columns:
            raise ValueError(f"objective {column!r}: no such column (columns: {', '.join(map(str, frame.columns))})")
        try:
            check_mode(mode)
        except ValueError as err:
            raise ValueError(f"objective {column!r}: {err}") from None


def minimised(frame: pd.DataFrame, objectives: Mapping[str, str]) -> np.ndarray:
    """(n, d) float values with every objective turned into one to minimise (max ones negated)."""
    check_objectives(frame, objectives)
    return frame[list(objectives)].to_numpy(dtype=float) * mode_signs(objectives)


def mode_signs(objectives: Mapping[str, str]) -> np.ndarray:
    """-1 for a maximised objective, +1 for a minimised one: turns every objective into a minimum."""
    return np.array([-1.0 if mode == "max" else 1.0 for mode in objectives.values()])


def non_dominated(values: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of (n, d) values (to minimise) that no other row dominates."""
    keep = np.ones(len(values), dtype=bool)
    for i, point in enumerate(values):
        no_worse = np.all(values <= point, axis=1)
        better = np.any(values < point, axis=1)
        keep[i] = not np.any(no_worse & better)
    return keep


def pareto_front(frame: pd.DataFrame, objectives: Mapping[str, str]) -> pd.DataFrame:
    """The rows of ``frame`` on the Pareto front of ``objectives``, in ``frame``'s order.

    Rows with NaN in an objective are left out; duplicates of a front point are all kept.
    """
    values = minimised(frame, objectives)
    measured = ~np.isnan(values).any(axis=1)
    on_front = np.zeros(len(frame), dtype=bool)
    on_front[measured] = non_dominated(values[measured])
    return frame[on_front]


# ---------------------------------------------------------------- hypervolume

def reference_point(frame: pd.DataFrame, objectives: Mapping[str, str]) -> dict[str, float]:
    """The worst value of each objective over ``frame`` (NaN ignored): the study-wide reference."""
    check_objectives(frame, objectives)
    worst = {}
    for column, mode in objectives.items():
        value = frame[column].min() if mode == "max" else frame[column].max()
        if pd.isna(value):
            raise ValueError(f"objective {column!r}: no trial has a value, so there is no reference point")
        worst[column] = float(value)
    return worst


def hypervolume(points: pd.DataFrame, objectives: Mapping[str, str], reference: Mapping[str, float]) -> float:
    """Hypervolume of ``points`` (any rows; dominated ones add nothing) against ``reference``
    (one value per objective; see the module docstring). Rows with NaN are left out."""
    values = minimised(points, objectives)
    missing = [c for c in objectives if c not in reference]
    if missing:
        raise ValueError(f"reference point: no value for objective(s) {', '.join(missing)}")
    ref = np.array([reference[c] for c in objectives], dtype=float) * mode_signs(objectives)
    values = values[~np.isnan(values).any(axis=1)]
    return hypervolume_of_minimised(values[non_dominated(values)], ref)


def hypervolume_of_minimised(values: np.ndarray, reference: np.ndarray) -> float:
    """Exact hypervolume of (n, d) points to minimise against ``reference`` (d,)."""
    values = values[np.all(values < reference, axis=1)]
    if not len(values):
        return 0.0
    if values.shape[1] == 1:
        return float(reference[0] - values[:, 0].min())
    if values.shape[1] == 2:
        return sweep_2d(values, reference)
    # Slice along the last objective: between two consecutive point levels, the cross-section is
    # the (d-1)-dimensional hypervolume of the points at or below the lower level.
    values = values[np.argsort(values[:, -1], kind="stable")]
    levels = np.append(values[1:, -1], reference[-1])
    total = 0.0
    for i, upper in enumerate(levels):
        depth = upper - values[i, -1]
        if depth > 0:
            total += depth * hypervolume_of_minimised(values[: i + 1, :-1], reference[:-1])
    return float(total)


def sweep_2d(values: np.ndarray, reference: np.ndarray) -> float:
    """Area dominated by 2-D points to minimise, all strictly better than ``reference``."""
    area, lowest = 0.0, reference[1]
    for x, y in values[np.lexsort((values[:, 1], values[:, 0]))]:
        if y < lowest:  # sorted by x: a new lower y adds the strip [x, ref_x] x [y, lowest]
            area += (reference[0] - x) * (lowest - y)
            lowest = y
    return float(area)


def hypervolume_over_time(reports: pd.DataFrame, objectives: Mapping[str, str],
                          reference: Mapping[str, float], times: Sequence[float] | None = None,
                          *, time_column: str = "time") -> pd.DataFrame:
    """The front's hypervolume as trials end: columns ``time``, ``hypervolume``, ``trials``.

    ``reports`` has one row per ended trial, with ``time_column`` (when it ended, e.g. seconds
    since the study started) and the objectives. At each of ``times`` (default: every distinct
    end time) the hypervolume counts the trials ended by then; ``trials`` is how many had.
    A step function: plot with ``drawstyle="steps-post"``.
    """
    if time_column not in reports.columns:
        raise ValueError(f"hypervolume_over_time: reports have no {time_column!r} column")
    check_objectives(reports, objectives)
    ended = reports.sort_values(time_column, kind="mergesort")
    end_times = ended[time_column].to_numpy(dtype=float)
    grid = np.unique(end_times[~np.isnan(end_times)]) if times is None else np.asarray(times, dtype=float)
    rows = [{"time": float(t), "hypervolume": hypervolume(ended[end_times <= t], objectives, reference),
             "trials": int((end_times <= t).sum())} for t in grid]
    return pd.DataFrame(rows, columns=["time", "hypervolume", "trials"])


# ---------------------------------------------------------------- constraints

def parse_constraint(text: str, columns: Sequence[str]) -> tuple[str, str, float]:
    """``"latency_ms_per_s <= 50"`` -> ("latency_ms_per_s", "<=", 50.0); one clear line otherwise."""
    match = CONSTRAINT_FORM.match(text) if isinstance(text, str) else None
    number = None
    if match:
        try:
            number = float(match["number"])
        except ValueError:
            pass
    if number is None:
        raise ValueError(f"constraint {text!r}: expected '<column> <op> <number>' with op one of "
                         f"{', '.join(COMPARISONS)}, e.g. 'latency_ms_per_s <= 50'")
    if match["column"] not in columns:
        raise ValueError(f"constraint {text!r}: unknown column {match['column']!r} "
                         f"(columns: {', '.join(map(str, columns))})")
    return match["column"], match["op"], number


def measured(frame: pd.DataFrame, constraints: Sequence[str]) -> bool:
    """Whether ``frame`` has the column every (well-formed) constraint names."""
    return all((m := CONSTRAINT_FORM.match(str(text))) is not None and m["column"] in frame.columns
               for text in constraints)


def feasible(frame: pd.DataFrame, constraints: Sequence[str]) -> pd.Series:
    """Boolean Series (``frame``'s index): the rows that meet every constraint (NaN meets none).

    Every constraint is checked before any is applied, so a bad one fails before work is done.
    """
    if isinstance(constraints, str):
        constraints = [constraints]
    parsed = [parse_constraint(c, list(frame.columns)) for c in constraints]
    ok = pd.Series(True, index=frame.index, name="feasible")
    for column, op, number in parsed:
        values = pd.to_numeric(frame[column], errors="coerce")
        ok &= COMPARISONS[op](values, number).fillna(False).astype(bool)
    return ok


def rank_with_constraints(frame: pd.DataFrame, metric: str, mode: str,
                          constraints: Sequence[str]) -> pd.DataFrame:
    """``frame`` ranked for one metric with infeasible trials last, plus columns ``feasible`` and
    ``rank`` (1 = best). Within each group: best ``metric`` first, NaN last, ties in frame order."""
    check_mode(mode)
    if metric not in frame.columns:
        raise ValueError(f"metric {metric!r}: no such column (columns: {', '.join(map(str, frame.columns))})")
    ranked = frame.assign(feasible=feasible(frame, constraints))
    ranked = ranked.sort_values(metric, ascending=(mode == "min"), na_position="last", kind="mergesort")
    ranked = ranked.sort_values("feasible", ascending=False, kind="mergesort")
    return ranked.assign(rank=np.arange(1, len(ranked) + 1))


def penalised(value, feasible, mode: str, *, worst: float, margin: float = 0.1):
    """The value a single-objective searcher is told: ``value`` for a feasible trial; for an
    infeasible one, ``worst - margin`` (mode "max") or ``worst + margin`` ("min").

    ``worst`` is the metric's worst possible value, e.g. 0.0 for a balanced accuracy: the penalty
    is then worse than any feasible trial's value. It stays finite because searchers' surrogate
    models cannot fit infinities. Scalars give a float, arrays an array.
    """
    check_mode(mode)
    penalty = worst - margin if mode == "max" else worst + margin
    result = np.where(np.asarray(feasible, dtype=bool), np.asarray(value, dtype=float), penalty)
    return float(result) if result.ndim == 0 else result


def violation(value, op: str, number: float) -> float:
    """How far ``value`` breaks ``<op> number``: 0.0 when it holds, else the distance to ``number`` (at
    least 1e-12, so a strict inequality broken by equality counts); infinite when ``value`` is missing
    or NaN (a trial that did not measure it is not known to meet it)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.inf
    if math.isnan(value):
        return math.inf
    return 0.0 if COMPARISONS[op](value, number) else max(abs(value - number), 1e-12)


@dataclass(frozen=True)
class TrialConstraints:
    """A study's constraints applied to one trial's result (a mapping of its metrics, as Ray hands it to
    a searcher): what a single-objective searcher is told of it (``told``) and how far it is from
    feasible (``violations``, the form Optuna's ``constraints_func`` takes). ``worst`` is the worst
    possible value of ``metric`` (see :func:`penalised`). Plain data, so searchers that keep it can
    be saved with their experiment.

    >>> rules = TrialConstraints(("latency_ms_per_s <= 50",), ("latency_ms_per_s",), "val_bca", "max", worst=0.0)
    >>> rules.told({"val_bca": 0.8, "latency_ms_per_s": 70.0})["val_bca"], rules.violations({"latency_ms_per_s": 70.0})
    (-0.1, [20.0])
    """
    constraints: tuple[str, ...]
    columns: tuple[str, ...]          # the columns constraints may name
    metric: str
    mode: str
    worst: float
    margin: float = 0.1

    def __post_init__(self):
        for text in self.constraints:   # a bad constraint fails here, before any trial
            parse_constraint(text, self.columns)

    def violations(self, result: Mapping) -> list[float]:
        """One value per constraint: 0.0 when met, else how far it is broken (see :func:`violation`)."""
        parsed = [parse_constraint(text, self.columns) for text in self.constraints]
        return [violation(result.get(column), op, number) for column, op, number in parsed]

    def meets(self, result: Mapping) -> bool:
        return all(v == 0.0 for v in self.violations(result))

    def told(self, result: Mapping) -> dict:
        """``result`` with ``metric`` replaced by its penalised value (itself when feasible)."""
        if result.get(self.metric) is None:
            return dict(result)
        value = penalised(result[self.metric], self.meets(result), self.mode, worst=self.worst, margin=self.margin)
        return {**result, self.metric: value}


# ---------------------------------------------------------------- the experiment's objective section

Mode = choice(("max", "min"), what="'max' or 'min'")


class Latency(Section):
    """How a trial's inference latency is measured (training.latency.measure_latency, one CPU thread)."""
    clips: PositiveInt = 8            # a fixed set of the corpus's clips, the same for every trial
    repeats: PositiveInt = 5          # timed passes over them; the median is the trial's latency
    warmup: NonNegativeInt = 1        # untimed passes first


class Objective(Section):
    metric: choice(METRICS) = "val_bca"
    mode: Mode = "max"
    cv_folds: PositiveInt = 1
    metrics: Optional[dict[str, Mode]] = None
    constraints: listed(Annotated[str, described("a constraint such as 'latency_ms_per_s <= 50'")],
                        "a list of constraints such as 'latency_ms_per_s <= 50'", single=True, empty=True) = []
    deployment: Annotated[bool, Field(strict=True), described("true or false")] = False
    latency: Latency = Field(default_factory=Latency)

    @model_validator(mode="before")
    @classmethod
    def _metric_from_metrics(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("metrics"), dict) and raw["metrics"]:
            validation = [name for name in raw["metrics"] if name in METRICS]
            if not validation:
                raise invalid(f": name a validation metric ({', '.join(METRICS)}) among the objectives", "metrics")
            if raw.setdefault("metric", validation[0]) not in raw["metrics"]:
                raise invalid(f": objective.metric ({raw['metric']!r}) must be one of the objectives", "metrics")
        return raw

    @model_validator(mode="after")
    def _higher_is_better(self):
        if self.mode == "min":
            # Every metric here is better when higher; the reference code's GP-BO minimised BCA by a sign slip.
            raise invalid(f": {self.metric} is better when higher, so mode must be 'max' (got 'min')", "mode")
        for name, mode in (self.metrics or {}).items():
            if name not in METRICS + DEPLOYMENT_METRICS:
                raise invalid(f": unknown objective {name!r}; choose from {', '.join(METRICS + DEPLOYMENT_METRICS)}",
                              "metrics")
            better = "max" if name in METRICS else "min"
            if mode != better:
                raise invalid(f": {name} is better when {'higher' if better == 'max' else 'lower'}, so its mode "
                              f"must be '{better}' (got '{mode}')", "metrics", name)
        for i, text in enumerate(self.constraints):
            try:
                parse_constraint(text, METRICS + DEPLOYMENT_METRICS)
            except ValueError as err:
                raise invalid(f": {err}", "constraints", i) from None
        return self

    @property
    def objectives(self) -> dict[str, str]:
        """Every objective and its mode, the validation metric (``metric``) first."""
        return {self.metric: self.mode, **{k: v for k, v in (self.metrics or {}).items() if k != self.metric}}

    def trial_constraints(self):
        """The constraints as searchers and the study apply them to a trial's result (None without any)."""
        if not self.constraints:
            return None
        return TrialConstraints(tuple(self.constraints), METRICS + DEPLOYMENT_METRICS, self.metric, self.mode,
                                worst=METRIC_FLOOR[self.metric])

    @property
    def measures_deployment(self) -> bool:
        """Whether trials measure their deployment costs: asked for, or named by an objective or constraint."""
        named = set(self.objectives) | {parse_constraint(c, METRICS + DEPLOYMENT_METRICS)[0] for c in self.constraints}
        return self.deployment or bool(named & set(DEPLOYMENT_METRICS))
