"""Statistics over repeated runs (ser_tune.results.repeats), checked against hand computations."""
from __future__ import annotations

import doctest
import math

import numpy as np
import pandas as pd
import pytest

from ser_tune.results import repeats
from ser_tune.results.repeats import (
    RUN_TABLE_COLUMNS, best_so_far, compare_to_reference, ert_table,
    expected_running_time, holm, mean_se_curve, paired_gain, run_table, runtime_ecdf,
    time_to_target_comparison, vargha_delaney_a12)


def runs_of(strategy: str, to: list, total: list | None = None, threshold: float = 0.9,
            first_run: int = 0) -> pd.DataFrame:
    """A hand-made run table: ``to`` holds seconds to target (None: not reached), on every clock."""
    total = total if total is not None else [t if t is not None else 100.0 for t in to]
    rows = []
    for run, (reach, spent) in enumerate(zip(to, total), start=first_run):
        row = {"strategy": strategy, "run": run, "threshold": threshold, "reached": reach is not None,
               "best_value": math.nan}
        for clock in repeats.CLOCKS:
            row[f"{clock}_to"] = math.nan if reach is None else float(reach)
            row[f"{clock}_total"] = float(spent)
        rows.append(row)
    return pd.DataFrame(rows, columns=list(RUN_TABLE_COLUMNS))


def stream(time, value, trial=None, cpu=None) -> pd.DataFrame:
    trial = trial if trial is not None else list(range(1, len(time) + 1))
    cpu = cpu if cpu is not None else [t * 0.5 for t in time]
    return pd.DataFrame({"time": time, "cpu_seconds": cpu, "trial": trial, "value": value})


def test_module_doctest_runs():
    result = doctest.testmod(repeats)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------- run table

def test_run_table_takes_the_first_crossing_in_time_order():
    # Trial 2 (started later) crosses at t=15 before trial 1 does at t=18; a NaN report is skipped.
    reports = stream([5.0, 15.0, 18.0, 12.0, 30.0], [0.5, 0.92, 0.95, math.nan, 0.97],
                     trial=[1, 2, 1, 3, 3], cpu=[4.0, 20.0, 24.0, 16.0, 40.0])
    row = run_table({("tpe", 7): reports}, threshold=0.9).iloc[0]
    assert bool(row["reached"]) and row["run"] == 7
    assert (row["seconds_to"], row["cpu_seconds_to"], row["trials_to"]) == (15.0, 20.0, 2.0)
    assert (row["seconds_total"], row["cpu_seconds_total"], row["trials_total"]) == (30.0, 40.0, 3.0)
    assert row["best_value"] == pytest.approx(0.97)


def test_run_table_mode_min_totals_and_unreached():
    reports = {("gp", 0): stream([10.0, 20.0], [0.4, 0.2]),
               ("gp", 1): stream([10.0, 20.0], [0.5, 0.35])}
    table = run_table(reports, threshold=0.3, mode="min",
                      totals={("gp", 1): {"seconds": 60.0, "trials": 5}})
    reached, missed = table.iloc[0], table.iloc[1]
    assert bool(reached["reached"]) and reached["seconds_to"] == 20.0
    assert reached["best_value"] == pytest.approx(0.2)
    assert not bool(missed["reached"]) and math.isnan(missed["seconds_to"])
    # Given totals replace the observed ones; the CPU total still comes from the reports.
    assert (missed["seconds_total"], missed["trials_total"], missed["cpu_seconds_total"]) == \
        (60.0, 5.0, 10.0)


def test_run_table_bad_input_names_the_run_or_field():
    with pytest.raises(ValueError, match=r"run \('tpe', 0\): missing column\(s\) cpu_seconds"):
        run_table({("tpe", 0): pd.DataFrame({"time": [1.0], "trial": [1], "value": [0.5]})}, 0.9)
    with pytest.raises(ValueError, match="mode must be 'max' or 'min'"):
        run_table({}, 0.9, mode="maximum")
    with pytest.raises(ValueError, match="clock must be one of"):
        expected_running_time(runs_of("tpe", [1.0]), "minutes")
    mixed = pd.concat([runs_of("tpe", [1.0]), runs_of("tpe", [2.0], threshold=0.8)])
    for use in (lambda: expected_running_time(mixed, "seconds"),
                lambda: runtime_ecdf(mixed, "seconds"),
                lambda: time_to_target_comparison(mixed, "seconds")):
        with pytest.raises(ValueError, match=r"several thresholds \(0.9, 0.8\)"):
            use()


# ---------------------------------------------------------------- ERT

def test_ert_none_reached_is_infinite():
    estimate = expected_running_time(runs_of("tpe", [None, None], [40.0, 60.0]), "seconds")
    assert math.isinf(estimate.value) and math.isinf(estimate.low) and math.isinf(estimate.high)
    assert (estimate.success_rate, estimate.runs, estimate.reached) == (0.0, 2, 0)


def test_ert_all_reached_is_mean_time_to_target():
    estimate = expected_running_time(runs_of("tpe", [10.0, 20.0, 60.0], [99.0] * 3), "seconds")
    assert estimate.value == pytest.approx(30.0)
    assert estimate.success_rate == 1.0
    assert estimate.low <= 30.0 <= estimate.high and math.isfinite(estimate.high)


def test_ert_mix_is_total_spent_over_successes():
    runs = runs_of("tpe", [10.0, None, 30.0, None], [80.0, 100.0, 90.0, 50.0])
    estimate = expected_running_time(runs, "cpu_seconds")
    assert estimate.value == pytest.approx((10 + 100 + 30 + 50) / 2)
    assert (estimate.success_rate, estimate.runs, estimate.reached) == (0.5, 4, 2)


def test_ert_interval_contains_estimate_and_is_reproducible():
    runs = runs_of("tpe", [10.0, 14.0, None, 30.0, 22.0, 12.0, 40.0, 18.0, 25.0, 16.0])
    first = expected_running_time(runs, "seconds", seed=3)
    assert first.low <= first.value <= first.high
    assert first.low < first.high
    assert expected_running_time(runs, "seconds", seed=3) == first
    assert expected_running_time(runs, "seconds", seed=4, resamples=500) != first


def test_ert_interval_degenerate_when_runs_are_equal():
    estimate = expected_running_time(runs_of("tpe", [25.0] * 6), "trials")
    assert estimate.low == estimate.value == estimate.high == 25.0


def test_ert_interval_infinite_only_when_many_resamples_fail():
    # One success in 10: P(resample without success) = 0.9^10 = 0.35 > 2.5 %: high is inf.
    rare = expected_running_time(runs_of("tpe", [5.0] + [None] * 9), "seconds")
    assert math.isfinite(rare.value) and math.isinf(rare.high) and math.isfinite(rare.low)
    # Nine in 10: P = 0.1^10, never drawn: the interval is finite.
    common = expected_running_time(runs_of("tpe", [5.0] * 9 + [None]), "seconds")
    assert math.isfinite(common.high)


def test_ert_table_has_a_row_per_strategy_and_clock():
    runs = pd.concat([runs_of("tpe", [10.0, None]), runs_of("random", [20.0, 30.0])])
    table = ert_table(runs, resamples=200)
    assert list(zip(table["strategy"], table["clock"])) == [
        (s, c) for s in ("tpe", "random") for c in repeats.CLOCKS]
    assert table.set_index(["strategy", "clock"]).loc[("tpe", "seconds"), "value"] == 110.0
    with pytest.raises(ValueError, match="several strategies"):
        expected_running_time(runs, "seconds")


# ---------------------------------------------------------------- ECDF and curves

def test_runtime_ecdf_is_monotone_and_ends_at_success_rate():
    runs = pd.concat([runs_of("tpe", [30.0, 10.0, None, 10.0, 50.0]),
                      runs_of("random", [None, None])])
    ecdf = runtime_ecdf(runs, "seconds")
    tpe = ecdf[ecdf["strategy"] == "tpe"]
    assert list(tpe["seconds"]) == [10.0, 30.0, 50.0]  # tied times give one step
    assert list(tpe["fraction"]) == pytest.approx([0.4, 0.6, 0.8])
    assert np.all(np.diff(tpe["fraction"]) > 0)
    assert "random" not in set(ecdf["strategy"])  # never reached: no step above 0


def test_best_so_far_against_trials_counts_late_reports_of_early_trials():
    # Trial 1 reports its 0.8 after trial 2's 0.6: at trial 1 the best is still 0.8.
    reports = stream([5.0, 8.0, 12.0], [0.5, 0.6, 0.8], trial=[1, 2, 1])
    against_trials = best_so_far(reports, "trials")
    assert against_trials.to_dict() == {1.0: 0.8, 2.0: 0.8}
    against_time = best_so_far(reports, "seconds")
    assert against_time.to_dict() == {5.0: 0.5, 8.0: 0.6, 12.0: 0.8}
    assert best_so_far(reports, "seconds", mode="min").to_dict() == {5.0: 0.5, 8.0: 0.5, 12.0: 0.5}


def test_mean_se_curves_on_two_runs():
    first = best_so_far(stream([10.0, 30.0], [0.5, 0.7]), "seconds")
    second = best_so_far(stream([20.0, 25.0], [0.6, 0.4]), "seconds")  # 0.4 does not lower it
    curve = mean_se_curve([first, second], [0.0, 10.0, 20.0, 30.0, 40.0])
    assert list(curve["runs"]) == [0, 1, 2, 2, 2]
    assert math.isnan(curve["mean"][0])
    assert list(curve["mean"][1:]) == pytest.approx([0.5, 0.55, 0.65, 0.65])
    # sd of two values a, b is |a - b| / sqrt(2); over sqrt(2) runs: |a - b| / 2.
    assert math.isnan(curve["se"][1])
    assert list(curve["se"][2:]) == pytest.approx([0.05, 0.05, 0.05])


# ---------------------------------------------------------------- tests against random

def test_holm_matches_hand_computation():
    # Sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max so far 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([0.2]) == pytest.approx([0.2])


def test_a12_by_hand():
    # Pairs (x, y): 3>1, 3>2, 1<2 tie none, 1=1 tie: (2 + 0.5) / 4 with larger better.
    assert vargha_delaney_a12([3.0, 1.0], [1.0, 2.0], larger_is_better=True) == 2.5 / 4
    assert vargha_delaney_a12([3.0, 1.0], [1.0, 2.0], larger_is_better=False) == 1.5 / 4
    assert vargha_delaney_a12([math.inf], [math.inf], larger_is_better=False) == 0.5


def study_runs() -> pd.DataFrame:
    return pd.concat([
        runs_of("random", [100.0, 110.0, 120.0, 130.0, 140.0]),
        runs_of("tpe", [10.0, 20.0, 30.0, 40.0, 50.0]),
        runs_of("slow", [300.0, 310.0, 320.0, 330.0, 340.0]),
        runs_of("never", [None] * 5),
        runs_of("grid", [90.0])])


def test_rank_test_direction_and_unreached_runs_last():
    table = time_to_target_comparison(study_runs(), "seconds").set_index("strategy")
    # Every tpe run beats every random run: the exact one-sided p is 1 / C(10, 5).
    assert table.loc["tpe", "p"] == pytest.approx(1 / 252)
    assert table.loc["tpe", "a12"] == 1.0
    assert table.loc["slow", "p"] > 0.99 and table.loc["slow", "a12"] == 0.0
    # Unreached runs rank behind random's slowest reached run.
    assert table.loc["never", "p"] > 0.99 and table.loc["never", "a12"] == 0.0
    # Holm over the three testable strategies (grid ran once).
    assert table.loc["tpe", "p_holm"] == pytest.approx(3 / 252)
    assert math.isnan(table.loc["grid", "p"]) and not table.loc["grid", "significant"]
    assert list(table["significant"]) == [True, False, False, False]


def test_verdict_sentences():
    table = time_to_target_comparison(study_runs(), "seconds").set_index("strategy")
    assert table.loc["tpe", "verdict"] == \
        "tpe reaches 0.9 faster than random (Holm p = 0.012, A12 = 1.00, 5 repeats)"
    assert table.loc["slow", "verdict"] == (
        "slow vs random: no evidence of a difference at 5 repeats "
        "(one-sided test that slow reaches 0.9 faster: Holm p = 1, A12 = 0.00)")
    assert table.loc["grid", "verdict"] == ("grid vs random: cannot be tested with one run of "
                                            "grid (a rank test needs at least 2 on each side)")
    trials = time_to_target_comparison(study_runs(), "trials").set_index("strategy")
    assert trials.loc["tpe", "verdict"].startswith("tpe reaches 0.9 in fewer trials than random")


def test_final_value_comparison_larger_is_better():
    finals = pd.DataFrame({"strategy": ["random"] * 4 + ["tpe"] * 4 + ["gp"] * 4,
                           "test_bca": [0.60, 0.62, 0.64, 0.66, 0.70, 0.72, 0.74, 0.76,
                                        0.50, 0.52, 0.54, 0.56]})
    table = compare_to_reference(finals, "test_bca", larger_is_better=True,
                                 claim="has a higher final test BCA").set_index("strategy")
    assert table.loc["tpe", "p"] == pytest.approx(1 / 70)  # 1 / C(8, 4)
    assert table.loc["gp", "p"] == pytest.approx(1.0)
    assert table.loc["tpe", "a12"] == 1.0 and table.loc["gp", "a12"] == 0.0
    assert table.loc["tpe", "verdict"] == (
        "tpe has a higher final test BCA than random (Holm p = 0.029, A12 = 1.00, 4 repeats)")
    strict = compare_to_reference(finals, "test_bca", larger_is_better=True, alpha=0.01,
                                  claim="has a higher final test BCA").set_index("strategy")
    assert not strict.loc["tpe", "significant"]  # Holm p = 2/70 > 0.01
    assert "no evidence of a difference at 4 repeats" in strict.loc["tpe", "verdict"]


def test_missing_reference_gives_untestable_verdicts():
    table = time_to_target_comparison(runs_of("tpe", [1.0, 2.0]), "seconds")
    assert table["verdict"][0] == ("tpe vs random: cannot be tested with no run of random "
                                   "(a rank test needs at least 2 on each side)")


# ---------------------------------------------------------------- paired gains

def test_paired_gain_on_hand_made_folds():
    model = {"f1": 0.70, "f2": 0.80, "f3": 0.75, "f4": 0.90, "f5": 0.85}
    baseline = {"f5": 0.82, "f4": 0.83, "f3": 0.71, "f2": 0.72, "f1": 0.60}  # matched by fold
    gain = paired_gain(model, baseline)
    assert gain.gains == pytest.approx((0.10, 0.08, 0.04, 0.07, 0.03))
    assert gain.mean == pytest.approx(0.064)
    assert gain.sd == pytest.approx(math.sqrt(0.00332 / 4))
    # All five gains positive: the exact one-sided p is its smallest attainable value, 2^-5.
    assert gain.p == pytest.approx(1 / 32) and gain.min_p == pytest.approx(1 / 32)
    assert "smallest attainable with these folds is 0.031" in gain.sentence("tuned", "probe", "BCA")
    worse = paired_gain([0.6, 0.7, 0.5], [0.7, 0.8, 0.6])
    assert worse.p == pytest.approx(1.0) and worse.mean == pytest.approx(-0.1)


def test_paired_gain_few_folds_and_mismatches():
    single = paired_gain([0.8], [0.7])
    assert single.p is None and single.min_p is None and math.isnan(single.sd)
    assert paired_gain([0.8, 0.7], [0.8, 0.7]).p == 1.0  # no gain at all
    with pytest.raises(ValueError, match=r"folds differ \(model only: \['f3'\]"):
        paired_gain({"f1": 0.8, "f3": 0.7}, {"f1": 0.7, "f2": 0.6})
