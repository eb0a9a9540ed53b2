"""Strategy comparisons over repeated runs: success rate, ERT, runtime ECDF, curves and tests.

A study may run every search strategy R independent times ("runs"; a run may also be one outer
fold of speakers x one repeat). This module turns the runs' report streams into the numbers a
report needs, from plain inputs (pandas DataFrames, numpy arrays), without Ray or files.

Inputs
- A report stream of one run: a DataFrame with columns ``time`` (seconds since the run started),
  ``cpu_seconds`` (cumulative trial CPU-seconds), ``trial`` (1-based trial index) and ``value``
  (the objective; NaN rows are reports without one). ``reports_by_run`` maps
  ``(strategy, run)`` to such a stream; from one long frame with ``strategy`` and ``run``
  columns it is ``dict(tuple(long.groupby(["strategy", "run"])))``.
- Clocks (``CLOCKS``): ``seconds`` (run wall-clock, the ``time`` column), ``cpu_seconds`` and
  ``trials``.

Definitions
- A run reaches the target at its first report, in time order, whose value is at least the
  threshold (at most, for mode "min"). Its time to target on each clock is that report's
  ``time``, ``cpu_seconds`` and ``trial`` (as in ``timing.first_crossing``); NaN when not reached.
- A run's total on each clock is its last report's (largest) value unless ``totals`` gives it,
  e.g. when time was spent after the last report or trials ended in ERROR without reporting.
- ERT (COCO/BBOB expected running time): all time spent over all runs (a successful run counts
  its time to target, an unsuccessful one its total) divided by the number of runs that reached
  the target; infinite when none did. Its interval is a percentile bootstrap over runs.
- Effect size: Vargha-Delaney A12, the probability that a run of the strategy is better than a
  run of the reference (ties count half); 0.5 is no effect, 1 means every run is better.

Non-finite values: an ERT (and its bounds) with no success is ``math.inf``; values that cannot be
computed (a p-value with one run, an SE from one run) are NaN or None. Both are plain floats; a
caller writing JSON turns them into null.

Example: two tpe runs, one reaching 0.9 after 20 s (and going on to 40 s), one never reaching it
in 50 s.

>>> import pandas as pd
>>> reports_by_run = {
...     ("tpe", 0): pd.DataFrame({"time": [10.0, 20.0, 40.0], "cpu_seconds": [8.0, 16.0, 32.0],
...                               "trial": [1, 2, 3], "value": [0.85, 0.93, 0.91]}),
...     ("tpe", 1): pd.DataFrame({"time": [25.0, 50.0], "cpu_seconds": [20.0, 40.0],
...                               "trial": [1, 2], "value": [0.80, 0.88]})}
>>> runs = run_table(reports_by_run, threshold=0.9, mode="max")
>>> runs[["strategy", "run", "reached", "seconds_to", "seconds_total", "trials_to"]]
  strategy  run  reached  seconds_to  seconds_total  trials_to
0      tpe    0     True        20.0           40.0        2.0
1      tpe    1    False         NaN           50.0        NaN
>>> estimate = expected_running_time(runs, "seconds", seed=0)
>>> estimate.value, estimate.success_rate  # (20 + 50) s over 1 success
(70.0, 0.5)
>>> estimate.high  # over 2.5 % of resamples drew the unsuccessful run twice
inf
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ..objectives import check_mode

CLOCKS = ("seconds", "cpu_seconds", "trials")
REPORT_COLUMNS = ("time", "cpu_seconds", "trial", "value")
# The report column that measures each clock.
CLOCK_COLUMN = {"seconds": "time", "cpu_seconds": "cpu_seconds", "trials": "trial"}
RUN_TABLE_COLUMNS = ("strategy", "run", "threshold", "reached", *(f"{clock}_to" for clock in CLOCKS),
                     *(f"{clock}_total" for clock in CLOCKS), "best_value")
DEFAULT_RESAMPLES = 2000


# ---------------------------------------------------------------- run table

def run_table(reports_by_run: Mapping[tuple[str, Hashable], pd.DataFrame], threshold: float,
              mode: str = "max", totals: Mapping[tuple[str, Hashable], Mapping[str, float]] | None = None
              ) -> pd.DataFrame:
    """One row per run: ``RUN_TABLE_COLUMNS``, for one threshold.

    ``totals`` may give, per ``(strategy, run)``, any of the clocks' totals (keys from
    ``CLOCKS``); the others come from the run's reports. ``best_value`` is the run's final best
    objective (NaN when it reported none).
    """
    check_mode(mode)
    totals = totals or {}
    rows = [run_row(key, reports, threshold, mode, totals.get(key, {}))
            for key, reports in reports_by_run.items()]
    return pd.DataFrame(rows, columns=list(RUN_TABLE_COLUMNS))


def run_row(key: tuple[str, Hashable], reports: pd.DataFrame, threshold: float, mode: str,
            given_totals: Mapping[str, float]) -> dict:
    """The run table row of one run (see ``run_table``)."""
    reports = time_ordered_reports(reports, key)
    valued = reports.dropna(subset=["value"])
    hits = valued[valued["value"] >= threshold] if mode == "max" else valued[valued["value"] <= threshold]
    row = {"strategy": key[0], "run": key[1], "threshold": float(threshold), "reached": not hits.empty}
    for clock, column in CLOCK_COLUMN.items():
        row[f"{clock}_to"] = float(hits[column].iloc[0]) if len(hits) else math.nan
        observed = float(reports[column].max()) if len(reports) else 0.0
        row[f"{clock}_total"] = float(given_totals.get(clock, observed))
    best = valued["value"].max() if mode == "max" else valued["value"].min()
    row["best_value"] = float(best) if len(valued) else math.nan
    return row


def time_ordered_reports(reports: pd.DataFrame, key) -> pd.DataFrame:
    """The run's reports in time order (stable), after checking their columns."""
    missing = [c for c in REPORT_COLUMNS if c not in reports.columns]
    if missing:
        raise ValueError(f"reports of run {key!r}: missing column(s) {', '.join(missing)}")
    return reports.sort_values(["time", "trial"], kind="mergesort")


def time_spent(runs: pd.DataFrame, clock: str) -> np.ndarray:
    """Per run, the time ERT counts: time to target when reached, else the run's total."""
    check_clock(clock)
    one_threshold(runs)
    reached = runs["reached"].to_numpy(dtype=bool)
    spent = np.where(reached, runs[f"{clock}_to"].to_numpy(dtype=float),
                     runs[f"{clock}_total"].to_numpy(dtype=float))
    if np.isnan(spent).any():
        bad = runs[np.isnan(spent)].iloc[0]
        raise ValueError(f"run table: run {bad['run']!r} of {bad['strategy']!r} has no "
                         f"{clock}_to/{clock}_total value")
    return spent


def one_threshold(runs: pd.DataFrame) -> float:
    """The run table's threshold; a table mixing thresholds would mix different targets."""
    thresholds = runs["threshold"].drop_duplicates()
    if len(thresholds) > 1:
        raise ValueError("run table: several thresholds "
                         f"({', '.join(f'{t:g}' for t in thresholds)}); use one table per threshold")
    return float(thresholds.iloc[0]) if len(thresholds) else math.nan


def check_clock(clock: str) -> None:
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")


# ---------------------------------------------------------------- ERT

@dataclass(frozen=True)
class ErtEstimate:
    """ERT of one strategy on one clock with its bootstrap interval (inf: never reached)."""
    clock: str
    value: float
    low: float
    high: float
    success_rate: float
    runs: int
    reached: int
    level: float


def ert_of(spent: np.ndarray, reached: np.ndarray) -> np.ndarray:
    """ERT along the last axis: spent summed over runs / successes (inf without success)."""
    successes = reached.sum(axis=-1)
    total = spent.sum(axis=-1)
    return np.where(successes > 0, total / np.maximum(successes, 1), np.inf)


def expected_running_time(runs: pd.DataFrame, clock: str, *, resamples: int = DEFAULT_RESAMPLES,
                          seed: int = 0, level: float = 0.95) -> ErtEstimate:
    """ERT of the runs of one strategy on ``clock``, with a percentile bootstrap interval.

    The interval resamples the runs with replacement ``resamples`` times (numpy Generator seeded
    with ``seed``) and takes the ``(1 - level) / 2`` and ``(1 + level) / 2`` order statistics
    (``inverted_cdf``, no interpolation) of the resampled ERTs, infinite ones (resamples without
    a success) sorted last. So ``high`` is inf exactly when more than (1 - level) / 2 of the
    resamples (2.5 % at 95 %) drew no successful run, and ``low`` is inf when more than
    (1 + level) / 2 (97.5 %) did.
    """
    if runs["strategy"].nunique() > 1:
        raise ValueError("expected_running_time: the run table holds several strategies "
                         f"({', '.join(map(str, runs['strategy'].unique()))}); use ert_table")
    if runs.empty:
        raise ValueError("expected_running_time: the run table has no runs")
    spent = time_spent(runs, clock)
    reached = runs["reached"].to_numpy(dtype=bool)
    picks = np.random.default_rng(seed).integers(0, len(runs), size=(resamples, len(runs)))
    resampled = ert_of(spent[picks], reached[picks])
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(resampled, [tail, 1.0 - tail], method="inverted_cdf")
    return ErtEstimate(clock=clock, value=float(ert_of(spent, reached)), low=float(low),
                       high=float(high), success_rate=float(reached.mean()), runs=len(runs),
                       reached=int(reached.sum()), level=level)


def ert_table(runs: pd.DataFrame, clocks: Sequence[str] = CLOCKS, *, resamples: int = DEFAULT_RESAMPLES,
              seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """One row per (strategy, clock): the ``ErtEstimate`` fields, strategies in table order."""
    rows = [{"strategy": strategy, **expected_running_time(own, clock, resamples=resamples, seed=seed,
                                                           level=level).__dict__}
            for strategy, own in runs.groupby("strategy", sort=False) for clock in clocks]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- runtime ECDF and curves

def runtime_ecdf(runs: pd.DataFrame, clock: str) -> pd.DataFrame:
    """Fraction of a strategy's runs that reached the target by each time (a step function).

    Columns ``strategy``, the clock's name and ``fraction``: one row per distinct time to target
    of a reached run, in increasing order; the fraction counts all runs, so each strategy's
    curve ends at its success rate (a strategy with no success has no rows). Plot with
    ``drawstyle="steps-post"`` from 0 at time 0.
    """
    check_clock(clock)
    one_threshold(runs)
    return ecdf_by_strategy(runs, clock)


def ecdf_by_strategy(rows: pd.DataFrame, clock: str) -> pd.DataFrame:
    """Per strategy, the fraction of its rows (runs, or (run, target) pairs) reached by each distinct time."""
    parts = []
    for strategy, own in rows.groupby("strategy", sort=False):
        times = np.sort(own.loc[own["reached"].astype(bool), f"{clock}_to"].to_numpy(float))
        distinct = np.unique(times)
        fraction = np.searchsorted(times, distinct, side="right") / len(own)
        parts.append(pd.DataFrame({"strategy": strategy, clock: distinct, "fraction": fraction}))
    columns = ["strategy", clock, "fraction"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def best_so_far(reports: pd.DataFrame, clock: str, mode: str = "max", run: Hashable = None) -> pd.Series:
    """A run's best objective so far against ``clock``: values indexed by increasing clock.

    On the time clocks it is the best of the reports up to that time; against trials, the best
    of every report of trials 1..k, whatever order they reported in (concurrent trials).
    """
    check_clock(clock)
    check_mode(mode)
    column = CLOCK_COLUMN[clock]
    order = list(dict.fromkeys([column, "time"]))
    valued = time_ordered_reports(reports, run).dropna(subset=["value"])
    valued = valued.sort_values(order, kind="mergesort")
    best = valued["value"].cummax() if mode == "max" else valued["value"].cummin()
    steps = pd.Series(best.to_numpy(float), index=valued[column].to_numpy(float), name="best")
    return steps[~steps.index.duplicated(keep="last")]


def mean_se_curve(curves: Sequence[pd.Series], grid: Sequence[float]) -> pd.DataFrame:
    """Mean and standard error over runs of step-function curves, at each grid point.

    Each curve (see ``best_so_far``) is constant from one report to the next and keeps its last
    value after its last report. Before a run's first report it is undefined: that run is left
    out of the mean at that point, and ``runs`` counts the runs that are in it. ``se`` is the
    sample standard deviation (ddof=1) over sqrt(runs); NaN with fewer than 2 runs in.
    """
    grid = np.asarray(grid, dtype=float)
    values = np.full((len(curves), len(grid)), np.nan)
    for row, curve in enumerate(curves):
        position = np.searchsorted(curve.index.to_numpy(float), grid, side="right") - 1
        known = position >= 0
        values[row, known] = curve.to_numpy(float)[position[known]]
    frame = pd.DataFrame(values)  # pandas skips NaN (runs not yet started) per grid point
    return pd.DataFrame({"x": grid, "mean": frame.mean(axis=0).to_numpy(),
                         "se": frame.sem(axis=0, ddof=1).to_numpy(), "runs": frame.count(axis=0).to_numpy()})


# ---------------------------------------------------------------- tests against a reference

def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values, in the input order.

    With m p-values sorted ascending, the i-th (1-based) becomes (m - i + 1) p_(i), made
    non-decreasing along the sorted order and capped at 1.
    """
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="mergesort")
    factors = len(p) - np.arange(len(p))
    stepped = np.minimum(1.0, np.maximum.accumulate(factors * p[order]))
    adjusted = np.empty_like(p)
    adjusted[order] = stepped
    return adjusted


def vargha_delaney_a12(x: Sequence[float], y: Sequence[float], larger_is_better: bool) -> float:
    """P(a value of x is better than one of y) + P(tie) / 2; inf ties inf."""
    x = np.asarray(x, dtype=float)[:, None]
    y = np.asarray(y, dtype=float)[None, :]
    better = (x > y) if larger_is_better else (x < y)
    return float(better.mean() + 0.5 * (x == y).mean())


def compare_to_reference(values: pd.DataFrame, column: str, *, larger_is_better: bool, claim: str,
                         reference: str = "random", alpha: float = 0.05,
                         runs_word: str = "repeats") -> pd.DataFrame:
    """Each strategy against ``reference`` over runs: one-sided Mann-Whitney U test.

    ``values`` has one row per run with ``strategy`` and ``column``; runs with NaN there are
    left out. The alternative is that the strategy's values tend to be larger
    (``larger_is_better``) or smaller than the reference's (scipy's method "auto": exact without
    ties for small samples, else the normal approximation). Raw p-values of the testable
    strategies (at least 2 runs each side) are Holm-adjusted together. ``claim`` completes
    "<strategy> <claim> than <reference>", e.g. "reaches 0.9 faster".

    Columns: strategy, reference, runs, reference_runs, statistic (U of the strategy), p,
    p_holm, a12 (``vargha_delaney_a12``; NaN when untestable), significant (p_holm <= alpha),
    verdict (one sentence).
    """
    present = values.dropna(subset=[column])
    samples = {s: own[column].to_numpy(float) for s, own in present.groupby("strategy", sort=False)}
    baseline = samples.get(reference, np.array([]))
    rows = []
    for strategy in values["strategy"].drop_duplicates():
        if strategy == reference:
            continue
        mine = samples.get(strategy, np.array([]))
        row = {"strategy": strategy, "reference": reference, "runs": len(mine),
               "reference_runs": len(baseline), "statistic": math.nan, "p": math.nan, "a12": math.nan}
        if len(mine) >= 2 and len(baseline) >= 2:
            test = stats.mannwhitneyu(mine, baseline, alternative="greater" if larger_is_better else "less")
            row.update(statistic=float(test.statistic), p=float(test.pvalue),
                       a12=vargha_delaney_a12(mine, baseline, larger_is_better))
        rows.append(row)
    table = pd.DataFrame(rows, columns=["strategy", "reference", "runs", "reference_runs",
                                        "statistic", "p", "a12"])
    tested = table["p"].notna()
    table["p_holm"] = math.nan
    table.loc[tested, "p_holm"] = holm(table.loc[tested, "p"].to_numpy())
    table["significant"] = tested & (table["p_holm"] <= alpha)
    table["verdict"] = [verdict(row, claim, runs_word) for row in table.to_dict("records")]
    return table[["strategy", "reference", "runs", "reference_runs", "statistic", "p", "p_holm",
                  "a12", "significant", "verdict"]]


def verdict(row: Mapping, claim: str, runs_word: str = "repeats") -> str:
    """One sentence on a ``compare_to_reference`` row (``runs_word``: what a run is, e.g. "runs"
    when a run is one repeat on one outer fold)."""
    strategy, reference = row["strategy"], row["reference"]
    runs, reference_runs = int(row["runs"]), int(row["reference_runs"])
    if runs < 2 or reference_runs < 2:
        few, count = (strategy, runs) if runs < 2 else (reference, reference_runs)
        had = {0: "no run", 1: "one run"}.get(count, f"{count} runs")
        return (f"{strategy} vs {reference}: cannot be tested with {had} of {few} "
                f"(a rank test needs at least 2 on each side)")
    repeats = f"{runs} {runs_word}" if runs == reference_runs else f"{runs} and {reference_runs} {runs_word}"
    numbers = f"Holm p = {format_p(row['p_holm'])}, A12 = {row['a12']:.2f}"
    if row["significant"]:
        return f"{strategy} {claim} than {reference} ({numbers}, {repeats})"
    return (f"{strategy} vs {reference}: no evidence of a difference at {repeats} "
            f"(one-sided test that {strategy} {claim}: {numbers})")


def format_p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def time_to_target_comparison(runs: pd.DataFrame, clock: str, *, reference: str = "random",
                              alpha: float = 0.05, runs_word: str = "repeats") -> pd.DataFrame:
    """``compare_to_reference`` on time to target; unreached runs rank last (as infinite time).

    Unreached runs tie with each other, whichever strategy they belong to.
    """
    check_clock(clock)
    ranked = runs.assign(to=np.where(runs["reached"].astype(bool),
                                     runs[f"{clock}_to"].to_numpy(float), np.inf))
    threshold = one_threshold(runs)
    claim = {"seconds": f"reaches {threshold:g} faster",
             "cpu_seconds": f"reaches {threshold:g} in less CPU time",
             "trials": f"reaches {threshold:g} in fewer trials"}[clock]
    return compare_to_reference(ranked, "to", larger_is_better=False, claim=claim,
                                reference=reference, alpha=alpha, runs_word=runs_word)


# ---------------------------------------------------------------- paired per-fold gains

@dataclass(frozen=True)
class PairedGain:
    """Per-fold gains (model - baseline on the same folds) and a one-sided Wilcoxon test.

    ``p`` tests that the gains tend to be positive (signed-rank, zero gains dropped; scipy's
    method "auto", exact for small samples without ties); None with fewer than 2 folds, 1.0
    when every gain is 0. ``min_p`` = 2 ** -(non-zero gains) is the smallest p the exact test
    can give on this many folds (all gains positive), so with 4 folds p is never below 0.0625.
    """
    folds: tuple
    gains: tuple[float, ...]
    mean: float
    sd: float
    p: float | None
    min_p: float | None

    def sentence(self, model: str, baseline: str, metric: str) -> str:
        if self.p is None:
            return (f"{model} - {baseline} {metric}: {self.mean:+.3f} on {len(self.gains)} fold "
                    f"(a test needs at least 2 folds)")
        return (f"{model} - {baseline} {metric}: {self.mean:+.3f} ± {self.sd:.3f} (sd) over "
                f"{len(self.gains)} folds, one-sided Wilcoxon p = {format_p(self.p)} (the "
                f"smallest attainable with these folds is {format_p(self.min_p)})")


def paired_gain(model, baseline) -> PairedGain:
    """Gains of ``model`` over ``baseline`` on the same folds.

    Both are Series or dicts keyed by fold (matched by key), or equal-length sequences
    (matched by position).
    """
    model, baseline = pd.Series(model, dtype=float), pd.Series(baseline, dtype=float)
    if set(model.index) != set(baseline.index) or len(model) != len(baseline):
        only_model = sorted(set(model.index) - set(baseline.index), key=str)
        only_base = sorted(set(baseline.index) - set(model.index), key=str)
        raise ValueError(f"paired_gain: the folds differ (model only: {only_model}, baseline "
                         f"only: {only_base}, sizes {len(model)} and {len(baseline)})")
    if model.isna().any() or baseline.isna().any() or model.empty:
        raise ValueError("paired_gain: every fold needs a model and a baseline value")
    gains = model - baseline.loc[model.index]
    nonzero = int((gains != 0).sum())
    p = min_p = None
    if len(gains) >= 2:
        min_p = 0.5 ** nonzero if nonzero else 1.0
        p = float(stats.wilcoxon(gains, alternative="greater").pvalue) if nonzero else 1.0
    return PairedGain(folds=tuple(model.index), gains=tuple(float(g) for g in gains),
                      mean=float(gains.mean()),
                      sd=float(gains.std(ddof=1)) if len(gains) > 1 else math.nan,
                      p=p, min_p=min_p)
