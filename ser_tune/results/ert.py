"""Which strategy gets there first, over repeated runs: ERT, success rate, ECDF and a verdict per strategy.

A study's runs of a strategy are its units (budget.repeats x evaluation.outer_folds). Each run's
reports give its time to each threshold on three clocks (``timing.run_reports``: run wall-clock,
cumulative trial CPU-seconds, trials); ``results.repeats`` turns them into the expected running
time (COCO's ERT, with a bootstrap interval), the runtime ECDF, mean ± SE best-so-far curves and a
one-sided rank test of each strategy against random search, Holm-corrected. Grid search runs its
grid once per fold; a test needs at least 2 runs on each side, and its verdict says so.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..study.folder import UNIT_INTERRUPTED, UNIT_RUNNING, StudyFolder
from . import repeats, timing

REFERENCE = "random"


def run_reports(study: StudyFolder) -> tuple[dict, dict]:
    """{(strategy, unit): report stream} and {(strategy, unit): totals} of every search run that ended (a
    run still going or cut off by an interrupt has not spent its budget: it counts in no ERT)."""
    streams, totals = {}, {}
    for strategy in study.strategies:
        for unit in study.runs(strategy):
            if study.unit_meta(unit).get("status") in (UNIT_RUNNING, UNIT_INTERRUPTED):
                continue
            streams[(strategy, unit)], totals[(strategy, unit)] = timing.run_reports(study, unit)
    return streams, totals


def run_tables(study: StudyFolder, thresholds, streams=None, totals=None) -> dict[float, pd.DataFrame]:
    """threshold -> ``repeats.run_table`` of the study's search runs."""
    if streams is None:
        streams, totals = run_reports(study)
    return {float(t): repeats.run_table(streams, float(t), study.mode, totals) for t in thresholds}


def ert_rows(runs: pd.DataFrame, seed: int = 0) -> dict[str, dict]:
    """strategy -> its ERT on each clock with the interval, success rate and runs (inf/NaN as is)."""
    table = repeats.ert_table(runs, seed=seed)
    out: dict[str, dict] = {}
    for row in table.to_dict("records"):
        entry = out.setdefault(row["strategy"], {"success_rate": row["success_rate"], "runs": row["runs"],
                                                   "reached": row["reached"]})
        entry[row["clock"]] = row["value"]
        entry[f"{row['clock']}_low"], entry[f"{row['clock']}_high"] = row["low"], row["high"]
    for entry in out.values():   # the wall-clock ERT's interval under the names the --json object uses
        entry["low"], entry["high"] = entry["seconds_low"], entry["seconds_high"]
    return out


def verdicts(runs: pd.DataFrame, strategies: list[str], final_test: pd.DataFrame | None = None,
             runs_word: str = "repeats") -> dict[str, str]:
    """strategy -> one sentence against random search on time to the threshold (wall-clock), and on
    the final test metric when given (``final_test``: one row per run, ``strategy`` and ``value``)."""
    if REFERENCE not in strategies:
        return {s: f"no random search in this study to compare {s} with" for s in strategies}
    out = {REFERENCE: "random search is the reference"}
    for row in repeats.time_to_target_comparison(runs, "seconds", reference=REFERENCE,
                                                 runs_word=runs_word).to_dict("records"):
        out[row["strategy"]] = row["verdict"]
    if final_test is not None and not final_test.empty:
        tested = repeats.compare_to_reference(final_test, "value", larger_is_better=True,
                                              claim="scores a higher test metric", reference=REFERENCE,
                                              runs_word=runs_word)
        for row in tested.to_dict("records"):
            out[row["strategy"]] = f"{out.get(row['strategy'], '')}; {row['verdict']}".strip("; ")
    return out


def final_test_values(study: StudyFolder) -> pd.DataFrame:
    """One row per search run: its best trial's test metric (``value``)."""

    rows = []
    for strategy in study.strategies:
        for unit in study.runs(strategy):
            best = study.held_out_trial(unit)
            value = best.get(study.test_metric) if best is not None else None
            rows.append({"strategy": strategy, "run": unit,
                         "value": float(value) if value is not None and not pd.isna(value) else np.nan})
    return pd.DataFrame(rows, columns=["strategy", "run", "value"])


def add_repeated(study: StudyFolder, thresholds, strategies: dict) -> None:
    """Add to each strategy's --json entry: ``repeats``, ``ert`` per threshold and the ``verdict``
    (against random search, at the highest threshold and on the final test metric)."""
    if not thresholds:
        return
    tables = run_tables(study, thresholds)
    for threshold, runs in tables.items():
        for strategy, entry in ert_rows(runs, seed=int(study.experiment.get("seed") or 0)).items():
            strategies[strategy].setdefault("ert", {})[f"{threshold:g}"] = entry
    folds = len((study.meta.get("folds") or {}).get("outer") or [None])
    word = "repeats" if folds == 1 else f"runs (repeats x {folds} outer folds)"
    sentences = verdicts(tables[max(tables)], study.strategies, final_test_values(study), word)
    for strategy in study.strategies:
        entry = strategies[strategy]
        entry["repeats"] = len({(study.unit_meta(u).get("tags") or {}).get("repeat", 0) for u in study.runs(strategy)})
        entry["verdict"] = sentences.get(strategy, "")
