"""Which strategy gets there first, over repeated runs: ERT, success rate, ECDF and a verdict per strategy.

A study's runs of a strategy are its units (budget.repeats x evaluation.outer_folds). Each run's
reports give its time to each threshold on three clocks (``timing.run_reports``: run wall-clock,
cumulative trial CPU-seconds, trials); ``results.repeats`` turns them into the expected running
time (COCO's ERT, with a bootstrap interval), the runtime ECDF, mean ± SE best-so-far curves and a
one-sided rank test of each strategy against random search, Holm-corrected. Grid search runs its
grid once per fold; a test needs at least 2 runs on each side, and its verdict says so.
Beside the user's thresholds, a ladder of targets from the untuned default's value to the best any
run reached (``results.profiles``) gives ERT at every level and the data profiles, and each verdict
comes with the smallest A12 its test could detect (``results.power``).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..study.folder import UNIT_INTERRUPTED, UNIT_RUNNING, StudyFolder
from . import power, profiles, repeats, timing
from .held_out import DEFAULT

REFERENCE = "random"
ALPHA = 0.05   # the verdicts' level (repeats.compare_to_reference's default)


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
             runs_word: str = "repeats", detectable: dict[str, str] | None = None) -> dict[str, str]:
    """strategy -> one sentence against random search on time to the threshold (wall-clock), followed
    by ``detectable``'s clause for it (what that test could have found), and on the final test metric
    when given (``final_test``: one row per run, ``strategy`` and ``value``)."""
    if REFERENCE not in strategies:
        return {s: f"no random search in this study to compare {s} with" for s in strategies}
    out = {REFERENCE: "random search is the reference"}
    for row in repeats.time_to_target_comparison(runs, "seconds", reference=REFERENCE,
                                                 runs_word=runs_word).to_dict("records"):
        clause = (detectable or {}).get(row["strategy"])
        out[row["strategy"]] = row["verdict"] + (f"; {clause}" if clause else "")
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
            best = study.held_out_trial(unit)   # (its test metric column is numeric: NaN when missing)
            rows.append({"strategy": strategy, "run": unit,
                         "value": np.nan if best is None else float(best.get(study.test_metric, np.nan))})
    return pd.DataFrame(rows, columns=["strategy", "run", "value"])


def default_value(study: StudyFolder) -> float | None:
    """The untuned default's objective: per ``default`` unit, its trial's validation value; the mean
    over units (one per outer fold); None without a default unit."""
    values = []
    for unit in study.runs(DEFAULT):
        trials = study.unit_trials(unit)
        usable = trials.loc[trials["status"] != "ERROR", study.metric].dropna()
        if len(usable):
            values.append(float(usable.max() if study.mode == "max" else usable.min()))
    return float(np.mean(values)) if values else None


def target_ladder(study: StudyFolder, streams: dict) -> list[float]:
    """The study's ladder of targets (``profiles.target_ladder``) from the untuned default's value (else
    the worst first-trial value over runs) to the best value any run reached; [] when none reported."""
    bounds = profiles.ladder_bounds(streams, study.mode, default_value(study))
    return profiles.target_ladder(*bounds, mode=study.mode) if bounds else []


def reference_comparison(runs: pd.DataFrame, repeats_of: dict[str, int], runs_word: str = "repeats",
                         seed: int = 0) -> dict[str, dict]:
    """strategy -> the time-to-target test against random search (wall-clock, the verdict's test): its
    Holm p, A12 with a bootstrap interval, and ``power`` (``power.min_detectable_a12`` at the level
    Holm gives the first rejection among the strategies tested)."""
    table = repeats.time_to_target_comparison(runs, "seconds", reference=REFERENCE, alpha=ALPHA,
                                              runs_word=runs_word)
    to = pd.Series(np.where(runs["reached"].astype(bool), runs["seconds_to"].to_numpy(float), np.inf))
    samples = {s: to[(runs["strategy"] == s).to_numpy()].to_numpy() for s in runs["strategy"].unique()}
    tested = max(1, int(table["p"].notna().sum()))
    out = {}
    for row in table.to_dict("records"):
        mine, theirs = samples.get(row["strategy"], np.array([])), samples.get(REFERENCE, np.array([]))
        low, high = power.a12_interval(mine, theirs, larger_is_better=False, seed=seed) \
            if row["runs"] >= 2 and row["reference_runs"] >= 2 else (math.nan, math.nan)
        detectable = power.min_detectable_a12(row["runs"], row["reference_runs"], ALPHA, tested, seed=seed)
        out[row["strategy"]] = {
            "reference": REFERENCE, "threshold": repeats.one_threshold(runs), "clock": "seconds",
            "p_holm": row["p_holm"], "a12": row["a12"], "a12_low": low, "a12_high": high,
            "significant": bool(row["significant"]),
            "power": {"repeats": repeats_of.get(row["strategy"]), "runs": row["runs"], "alpha": ALPHA,
                      "reference_runs": row["reference_runs"], "comparisons": tested, "power": power.POWER,
                      "min_detectable_a12": detectable}}
    return out


def detectable_sentence(comparison: dict, runs_word: str) -> str:
    """What the test could have found, said beside its verdict."""
    figure = comparison["power"]["min_detectable_a12"]
    runs = f"{comparison['power']['runs']} and {comparison['power']['reference_runs']} {runs_word}"
    if figure is None:
        return f"at {runs} this test can detect no effect at alpha {ALPHA:g}, Holm-adjusted"
    return (f"at {runs} this test detects A12 >= {figure:.2f} with {power.POWER:.0%} power "
            f"(alpha {ALPHA:g}, Holm over {comparison['power']['comparisons']})")


def add_repeated(study: StudyFolder, thresholds, strategies: dict) -> dict:
    """Add to each strategy's --json entry: ``repeats``, ``ert`` at each threshold and ladder target,
    ``data_profile`` (wall-clock) and ``data_profile_trials`` over the ladder, and with thresholds the
    ``verdict`` (against random search, at the highest threshold and on the final test metric), the
    ``comparison`` behind it and its ``power``. Returns the study-level keys: ``targets`` (the ladder)."""
    streams, totals = run_reports(study)
    seed = int(study.experiment.get("seed") or 0)
    ladder = target_ladder(study, streams)
    tables = run_tables(study, sorted({*map(float, thresholds), *ladder}), streams, totals)
    for threshold, runs in tables.items():
        for strategy, entry in ert_rows(runs, seed=seed).items():
            strategies[strategy].setdefault("ert", {})[f"{threshold:g}"] = entry
    profiles_by_clock = {clock: profiles.data_profile([tables[t] for t in ladder], clock)
                         for clock in ("seconds", "trials")}
    folds = len((study.meta.get("folds") or {}).get("outer") or [None])
    word = "repeats" if folds == 1 else f"runs (repeats x {folds} outer folds)"
    for strategy in study.strategies:
        entry = strategies[strategy]
        entry["repeats"] = len({(study.unit_meta(u).get("tags") or {}).get("repeat", 0) for u in study.runs(strategy)})
        entry["data_profile"] = profiles.profile_points(profiles_by_clock["seconds"], strategy, "seconds")
        entry["data_profile_trials"] = profiles.profile_points(profiles_by_clock["trials"], strategy, "trials")
        entry["power"] = {"repeats": entry["repeats"], "min_detectable_a12": None}
    if thresholds:
        top = tables[float(max(thresholds))]
        compared = reference_comparison(top, {s: strategies[s]["repeats"] for s in study.strategies}, word, seed) \
            if REFERENCE in study.strategies else {}
        sentences = verdicts(top, study.strategies, final_test_values(study), word,
                             {s: detectable_sentence(c, word) for s, c in compared.items()})
        for strategy in study.strategies:
            entry = strategies[strategy]
            entry["verdict"] = sentences.get(strategy, "")
            if strategy in compared:
                entry["comparison"] = compared[strategy]
                entry["power"] = compared[strategy]["power"]
    return {"targets": ladder}
