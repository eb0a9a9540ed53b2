"""Time-to-threshold and time accounting of one run (a unit: one strategy's Tuner on one fold and repeat).

Definitions (also printed in the report, see ``report.TIMING_DEFINITIONS``):
- A crossing is the first epochs.csv report, in timestamp order, of a non-ERROR trial of the
  run whose validation metric is at least the threshold (at most, for mode "min").
  ERROR trials left no usable model, so their reports never count as reaching a threshold;
  their time still counts as spent.
- seconds_to: crossing timestamp minus the run's started_at (study wall-clock), less the time the study
  was stopped in between (an interrupt until ``--resume``: the unit's ``pauses``); the run's wall-clock
  leaves its pauses out the same way.
- trial_seconds_to (the reference paper's measure): at the crossing time t*, the sum over the
  run's trials that had started by t* of Ray's time_total_s at the trial's last report at or
  before t* (a trial with no report by t* counts t* - started_at), minus the trial's load_seconds
  once it had finished loading (a trial with no report whose elapsed time is under its
  load_seconds was still loading and counts 0).
- trials_to: trial_index of the crossing trial + 1.
A threshold never reached is censored: every value is NaN and ``reached`` is False.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..study.folder import StudyFolder, active_seconds

NAN = float("nan")


@dataclass(frozen=True)
class Crossing:
    threshold: float
    reached: bool
    timestamp: float = NAN
    trial_id: str | None = None
    epoch: float = NAN
    value: float = NAN
    seconds_to: float = NAN
    trial_seconds_to: float = NAN
    trials_to: float = NAN


def started_at(study: StudyFolder, unit: str) -> float:
    """study.json's started_at of the unit (a strategy's run); else its earliest trial start or report."""
    given = study.unit_meta(unit).get("started_at")
    if given is not None:
        return float(given)
    candidates = pd.Series([study.unit_trials(unit)["started_at"].min(), study.unit_epochs(unit)["timestamp"].min(),
                            study.meta.get("started_at")], dtype=float).dropna()
    return float(candidates.iloc[0]) if len(candidates) else NAN


def finished_at(study: StudyFolder, unit: str) -> float:
    """study.json's finished_at of the unit; while running or interrupted, its last observed event."""
    given = study.unit_meta(unit).get("finished_at")
    if given is not None:
        return float(given)
    trials = study.unit_trials(unit)
    return float(pd.Series([trials["finished_at"].max(), trials["started_at"].max(),
                            study.unit_epochs(unit)["timestamp"].max()], dtype=float).max())


def wall_clock(study: StudyFolder, unit: str) -> float:
    return elapsed(study, unit, finished_at(study, unit))


def elapsed(study: StudyFolder, unit: str, when):
    """Seconds of the run's clock at ``when`` (a timestamp or an array of them): since its start, pauses
    left out."""
    return active_seconds(started_at(study, unit), when, study.unit_pauses(unit))


def usable_reports(study: StudyFolder, unit: str) -> pd.DataFrame:
    """Reports of the unit's non-ERROR trials that have a metric value, in timestamp order."""
    trials = study.unit_trials(unit)
    usable = trials.loc[trials["status"] != "ERROR", ["trial_id", "trial_index"]]
    reports = study.unit_epochs(unit).merge(usable, on="trial_id", how="inner")
    reports = reports.dropna(subset=[study.metric, "timestamp"])
    # Stable order: time, then start order and epoch for reports stamped in the same instant.
    return reports.sort_values(["timestamp", "trial_index", "epoch"], kind="mergesort")


def first_crossing(study: StudyFolder, unit: str, threshold: float) -> Crossing:
    reports = usable_reports(study, unit)
    values = reports[study.metric]
    hits = reports[values <= threshold if study.mode == "min" else values >= threshold]
    if hits.empty:
        return Crossing(threshold=float(threshold), reached=False)
    hit = hits.iloc[0]
    t_star = float(hit["timestamp"])
    return Crossing(
        threshold=float(threshold), reached=True, timestamp=t_star, trial_id=str(hit["trial_id"]),
        epoch=float(hit["epoch"]), value=float(hit[study.metric]), trials_to=float(hit["trial_index"]) + 1,
        seconds_to=elapsed(study, unit, t_star),
        trial_seconds_to=cumulative_trial_seconds(study.unit_trials(unit), study.unit_epochs(unit), t_star))


def run_reports(study: StudyFolder, unit: str) -> tuple[pd.DataFrame, dict]:
    """A run's reports on the three clocks of a repeated comparison, and its totals on each:
    ``time`` (seconds since the run started), ``cpu_seconds`` (trial CPU-seconds spent by then: each
    trial's elapsed time up to that moment, load included, times the CPUs a trial holds), ``trial``
    (1-based start order) and ``value`` (the objective); see ``results.repeats``."""
    trials = study.unit_trials(unit)
    cpus = float(((study.experiment.get("resources") or {}).get("cpus_per_trial")) or 1)
    pauses = study.unit_pauses(unit)
    begin = trials["started_at"].to_numpy(float)
    end = trials["finished_at"].fillna(finished_at(study, unit)).to_numpy(float)
    known = ~(np.isnan(begin) | np.isnan(end))
    begin, end = begin[known], np.maximum(end[known], begin[known])

    def cpu_at(times: np.ndarray) -> np.ndarray:   # each trial's time up to then, outside pauses
        until = np.clip(times[:, None], begin[None, :], end[None, :])
        return cpus * active_seconds(np.broadcast_to(begin, until.shape), until, pauses).sum(axis=1)

    reports = usable_reports(study, unit)
    times = reports["timestamp"].to_numpy(float)
    frame = pd.DataFrame({"time": elapsed(study, unit, times), "cpu_seconds": cpu_at(times),
                          "trial": reports["trial_index"].to_numpy(float) + 1,
                          "value": reports[study.metric].to_numpy(float)})
    totals = {"seconds": wall_clock(study, unit),
              "cpu_seconds": float(cpus * active_seconds(begin, end, pauses).sum()), "trials": float(len(trials))}
    return frame, totals


def cumulative_trial_seconds(trials: pd.DataFrame, epochs: pd.DataFrame, t_star: float) -> float:
    """Trial time summed over one strategy's trials up to t*, model loading excluded."""
    total = 0.0
    for trial in trials.itertuples(index=False):
        reports = epochs[(epochs["trial_id"] == trial.trial_id) & (epochs["timestamp"] <= t_star)]
        started = trial.started_at
        load = 0.0 if pd.isna(trial.load_seconds) else float(trial.load_seconds)
        if len(reports):
            last = reports.sort_values("timestamp", kind="mergesort").iloc[-1]
            elapsed = last["time_total_s"]
            if pd.isna(elapsed):  # no Ray time at that report: fall back to the clock
                elapsed = float(last["timestamp"]) - started if not pd.isna(started) else 0.0
            total += max(0.0, float(elapsed) - load)  # a trial that reported has finished loading
        elif not pd.isna(started) and started <= t_star:
            elapsed = t_star - float(started)
            total += elapsed - load if elapsed >= load else 0.0  # still loading: nothing counted
    return total


def trial_seconds(trial: pd.Series, trial_epochs: pd.DataFrame) -> float:
    """A trial's whole Ray time: time_total_s, else its last report's, else finished - started."""
    if not pd.isna(trial.get("time_total_s")):
        return float(trial["time_total_s"])
    reported = trial_epochs["time_total_s"].dropna() if len(trial_epochs) else pd.Series(dtype=float)
    if len(reported):
        return float(reported.max())
    if not pd.isna(trial.get("finished_at")) and not pd.isna(trial.get("started_at")):
        return float(trial["finished_at"]) - float(trial["started_at"])
    return 0.0


def peak_concurrency(starts, ends) -> int:
    """Most trials running at once; intervals that only touch do not overlap."""
    events = sorted(event for start, end in zip(starts, ends) if not (pd.isna(start) or pd.isna(end))
                    for event in ((float(start), 1), (float(end), -1)))   # at equal times -1 sorts before +1
    return int(max([1, *np.cumsum([change for _, change in events])]))
