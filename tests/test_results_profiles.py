"""The ladder of targets, ERT at each and the data profile, on hand-made report streams (none, some and
all runs reaching a target)."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from ser_tune.results import profiles, repeats
from ser_tune.results.ert import ert_rows


def stream(time, value) -> pd.DataFrame:
    """One run's reports: one trial per report, trial CPU-seconds equal to wall-clock."""
    return pd.DataFrame({"time": [float(t) for t in time], "cpu_seconds": [float(t) for t in time],
                         "trial": list(range(1, len(time) + 1)), "value": value})


# tpe: both runs climb to 0.9; random: one run to 0.8, one stays at 0.6 (its first trial gave 0.6).
STREAMS = {("tpe", 0): stream([10, 20, 30], [0.7, 0.8, 0.9]),
           ("tpe", 1): stream([10, 20, 30], [0.65, 0.85, 0.85]),
           ("random", 0): stream([10, 20, 30], [0.6, 0.8, 0.7]),
           ("random", 1): stream([10, 20, 30], [0.6, 0.6, 0.55])}


def test_ladder_spans_default_to_best_and_the_top_is_reached():
    assert profiles.target_ladder(0.4, 0.9) == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9])
    assert profiles.target_ladder(0.4, 0.9, count=6)[-1] == 0.9
    # rounded, the top one towards the low end, so the best run still reaches it
    ladder = profiles.target_ladder(0.5123, 0.87777)
    assert len(ladder) == 5 and ladder == sorted(ladder) and 0.8 < ladder[-1] <= 0.87777
    # minimised objectives go downwards, easiest (largest) first
    assert profiles.target_ladder(2.0, 1.0, mode="min") == pytest.approx([1.8, 1.6, 1.4, 1.2, 1.0])
    assert profiles.target_ladder(0.9, 0.9) == [0.9]   # nothing to spread over


def test_ladder_bad_input_names_the_field():
    with pytest.raises(ValueError, match="count"):
        profiles.target_ladder(0.4, 0.9, count=0)
    with pytest.raises(ValueError, match="finite"):
        profiles.target_ladder(math.nan, 0.9)


def test_ladder_bounds_take_the_default_else_the_worst_first_trial():
    assert profiles.ladder_bounds(STREAMS, "max", default=0.5) == (0.5, 0.9)
    # no default, or a default no worse than the best run: the worst first-trial value over runs
    assert profiles.ladder_bounds(STREAMS, "max") == (0.6, 0.9)
    assert profiles.ladder_bounds(STREAMS, "max", default=0.95) == (0.6, 0.9)
    assert profiles.ladder_bounds(STREAMS, "min") == (0.7, 0.55)
    assert profiles.ladder_bounds({("tpe", 0): stream([1], [math.nan])}, "max") is None


def ladder_tables(ladder):
    return {t: repeats.run_table(STREAMS, t, "max") for t in ladder}


def test_ert_at_each_target_with_none_some_and_all_reached():
    ladder = profiles.target_ladder(*profiles.ladder_bounds(STREAMS, "max", default=0.5))
    assert ladder == pytest.approx([0.58, 0.66, 0.74, 0.82, 0.9])
    tables = ladder_tables(ladder)
    easiest, hardest = ert_rows(tables[ladder[0]]), ert_rows(tables[ladder[-1]])
    # 0.58: every run of both at its first trial
    assert easiest["tpe"]["seconds"] == 10.0 and easiest["random"]["success_rate"] == 1.0
    assert easiest["random"]["trials"] == 1.0
    # 0.9: one tpe run after 30 s, the other spent 30 s for nothing; random never
    assert hardest["tpe"]["seconds"] == 60.0 and hardest["tpe"]["success_rate"] == 0.5
    assert hardest["random"]["success_rate"] == 0.0 and math.isinf(hardest["random"]["seconds"])
    assert math.isinf(hardest["random"]["low"]) and math.isinf(hardest["random"]["high"])
    # 0.74: random's run 0 after 20 s, run 1 spent 30 s: (20 + 30) / 1
    assert ert_rows(tables[ladder[2]])["random"]["seconds"] == 50.0


def test_data_profile_counts_run_target_pairs():
    ladder = [0.58, 0.66, 0.74, 0.82, 0.9]
    tables = list(ladder_tables(ladder).values())
    profile = profiles.data_profile(tables, "seconds")
    # tpe: run 0 reaches 0.58, 0.66 at 10 s, 0.74 at 20 s, 0.82 and 0.9 at 30 s;
    # run 1 reaches 0.58 at 10 s (0.65), 0.66, 0.74 and 0.82 at 20 s, never 0.9: 9 of 10 pairs
    assert profiles.profile_points(profile, "tpe", "seconds") == [[10.0, 0.3], [20.0, 0.7], [30.0, 0.9]]
    # random: run 0: 0.58 at 10 s, 0.66 and 0.74 at 20 s; run 1: 0.58 at 10 s: 4 of 10 pairs
    assert profiles.profile_points(profile, "random", "seconds") == [[10.0, 0.2], [20.0, 0.4]]
    by_trials = profiles.data_profile(tables, "trials")
    assert profiles.profile_points(by_trials, "tpe", "trials") == [[1.0, 0.3], [2.0, 0.7], [3.0, 0.9]]
    for _, own in profile.groupby("strategy"):   # each curve rises and stays in [0, 1]
        assert own["fraction"].is_monotonic_increasing and own["fraction"].between(0, 1).all()


def test_data_profile_of_a_strategy_that_reached_nothing_is_empty():
    tables = [repeats.run_table(STREAMS, t, "max") for t in (0.95, 0.99)]
    profile = profiles.data_profile(tables, "seconds")
    assert profile.empty and list(profile.columns) == ["strategy", "seconds", "fraction"]
    assert profiles.profile_points(profile, "tpe", "seconds") == []
    assert profiles.data_profile([], "trials").empty
    with pytest.raises(ValueError, match="clock"):
        profiles.data_profile(tables, "minutes")
