"""The A12 the verdicts' rank test can detect, checked against a direct simulation of known effect sizes
(normal shifts, each draw tested with scipy's Mann-Whitney U as the verdicts are), and A12's interval."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ser_tune.results import power
from ser_tune.results.repeats import compare_to_reference, vargha_delaney_a12


def simulated_detection(a12: float, runs: int, alpha: float, draws: int = 3000, seed: int = 11) -> float:
    """Share of draws, with true effect ``a12``, that the one-sided test rejects at ``alpha``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((draws, runs)) + power.a12_to_shift(a12)
    y = rng.standard_normal((draws, runs))
    return float((stats.mannwhitneyu(x, y, alternative="greater", axis=1).pvalue <= alpha).mean())


@pytest.mark.parametrize("runs, comparisons", [(20, 3), (10, 1)])
def test_detectable_a12_is_detected_80_percent_of_the_time_and_a_smaller_one_clearly_less(runs, comparisons):
    detectable = power.min_detectable_a12(runs, runs, alpha=0.05, comparisons=comparisons, seed=0)
    assert 0.5 < detectable < 1
    level = 0.05 / comparisons   # Holm's level for the first rejection
    # 3000 draws: the standard error of a detection rate near 0.8 is about 0.007
    assert simulated_detection(detectable, runs, level) == pytest.approx(0.8, abs=0.03)
    assert simulated_detection(detectable - 0.07, runs, level) < 0.65
    assert simulated_detection(min(0.99, detectable + 0.07), runs, level) > 0.9


def test_more_runs_and_fewer_comparisons_detect_smaller_effects():
    at = {runs: power.min_detectable_a12(runs, runs, 0.05, 3) for runs in (5, 10, 20)}
    assert at[5] > at[10] > at[20]
    assert power.min_detectable_a12(10, 10, 0.05, 1) < at[10]
    assert power.min_detectable_a12(10, 10, 0.05, 3, seed=0) == power.min_detectable_a12(10, 10, 0.05, 3, seed=0)


def test_too_few_runs_detect_nothing():
    # 2 against 2 runs: the smallest one-sided p is 1/6, above any usual alpha
    assert power.critical_u(2, 2, 0.05) is None
    assert power.min_detectable_a12(2, 2, 0.05) is None
    assert power.detection_rate(0.99, 2, 2, 0.05) == 0.0
    # 3 against 3: every pair won (U = 9, p = 0.05) is just significant alone, not Holm-adjusted over 3
    assert power.critical_u(3, 3, 0.05) == 9 and power.critical_u(3, 3, 0.05 / 3) is None


def test_critical_u_agrees_with_the_verdicts_test():
    """At U* the verdict's own test (compare_to_reference) is significant, one pair less it is not."""
    needed = power.critical_u(6, 6, 0.05)

    def table_with_u(u):
        wins = np.clip(u - 6 * np.arange(6), 0, 6)
        values = pd.DataFrame({"strategy": ["tpe"] * 6 + ["random"] * 6,
                               "v": [*(wins + (np.arange(6) + 1) / 7), *range(1, 7)]})
        return compare_to_reference(values, "v", larger_is_better=True, claim="is higher").iloc[0]

    assert table_with_u(needed)["significant"] and table_with_u(needed)["statistic"] == needed
    assert not table_with_u(needed - 1)["significant"]


def test_a12_interval_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(3)
    x, y = rng.normal(0.5, 1, 15), rng.normal(0, 1, 15)
    estimate = vargha_delaney_a12(x, y, larger_is_better=True)
    low, high = power.a12_interval(x, y, larger_is_better=True, seed=1)
    assert 0 <= low < estimate < high <= 1
    assert (low, high) == power.a12_interval(x, y, larger_is_better=True, seed=1)
    # unreached runs (infinite time) tie with each other: all-unreached is exactly no effect
    assert power.a12_interval([np.inf] * 3, [np.inf] * 3, larger_is_better=False) == (0.5, 0.5)
    assert all(np.isnan(power.a12_interval([], [1.0], True)))
