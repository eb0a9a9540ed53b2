"""What a strategy comparison could have found: the smallest A12 its rank test detects, and A12's interval.

The verdicts of ``results.repeats`` test each strategy against the reference with a one-sided
Mann-Whitney U test over runs, Holm-adjusted over the strategies. "No evidence of a difference"
means little unless it says which difference the test could have seen, so:

- ``min_detectable_a12(runs, reference_runs, alpha, comparisons)``: the smallest Vargha-Delaney A12
  that the test detects with probability ``power`` (80 %). Holm compares the smallest p with
  alpha / comparisons, so a strategy that alone differs from the reference is tested at that level;
  the figure uses it (the level Holm asks of the first rejection, so it holds whatever the others do).
  The alternatives are normal shifts: a run of the strategy is N(delta, 1), one of the reference
  N(0, 1), so A12 = Phi(delta / sqrt(2)). Seeded simulation, exact for each draw: the test (scipy's
  ``mannwhitneyu``, as the verdicts call it) rejects once U reaches a critical count U*, and U of
  (x + delta, y) is the number of pairs with y - x < delta, so the draw is detected for every delta
  above the U*-th smallest pairwise difference. The power at delta is the share of draws whose
  critical delta is below it, and the detectable delta is their ``power`` quantile. Ties (runs that
  never reached the target tie with each other) make the real test somewhat weaker than this.
- ``a12_interval``: a percentile bootstrap of A12, resampling each side's runs independently.

No ERT ratio is given: a rank test sees orders, not times, so the ratio it can detect depends on the
shape of the run-time distribution, which a handful of runs does not pin down.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

POWER = 0.8
DEFAULT_SIMULATIONS = 4000
# Largest number of pairwise differences held at once (simulations x runs x reference runs).
_CHUNK_CELLS = 2_000_000


def critical_u(runs: int, reference_runs: int, alpha: float) -> int | None:
    """Smallest U (pairs the strategy wins, no ties) at which the one-sided test's p is <= alpha;
    None when even U = runs x reference_runs (every pair won) is not significant."""
    if runs < 1 or reference_runs < 1:
        return None
    pairs = runs * reference_runs
    counts = np.arange(pairs + 1)
    # Data with U = u and no ties (ties would change the test's variance): the reference at 1..m,
    # each strategy run strictly between two of them, above ``wins`` of them (u in total).
    wins = np.clip(counts[:, None] - reference_runs * np.arange(runs)[None, :], 0, reference_runs)
    x = wins + (np.arange(runs) + 1.0) / (runs + 1.0)
    y = np.broadcast_to(np.arange(1, reference_runs + 1, dtype=float), (pairs + 1, reference_runs))
    p = stats.mannwhitneyu(x, y, alternative="greater", axis=1).pvalue
    significant = np.flatnonzero(p <= alpha)
    return int(significant[0]) if len(significant) else None


def critical_shifts(runs: int, reference_runs: int, alpha: float, simulations: int = DEFAULT_SIMULATIONS,
                    seed: int = 0) -> np.ndarray | None:
    """Per simulated draw (standard normal runs on both sides), the normal shift above which the test
    detects it (sorted); None when no shift can be detected with these runs."""
    needed = critical_u(runs, reference_runs, alpha)
    if needed is None:
        return None
    if needed == 0:   # significant whatever the data (alpha >= 1)
        return np.full(simulations, -np.inf)
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK_CELLS // (runs * reference_runs))
    parts = []
    for start in range(0, simulations, per_chunk):
        size = min(per_chunk, simulations - start)
        x = rng.standard_normal((size, runs, 1))
        y = rng.standard_normal((size, 1, reference_runs))
        differences = (y - x).reshape(size, -1)
        parts.append(np.partition(differences, needed - 1, axis=1)[:, needed - 1])
    return np.sort(np.concatenate(parts))


def shift_to_a12(shift: float) -> float:
    """A12 of N(shift, 1) against N(0, 1)."""
    return float(stats.norm.cdf(shift / math.sqrt(2.0)))


def a12_to_shift(a12: float) -> float:
    return float(math.sqrt(2.0) * stats.norm.ppf(a12))


def min_detectable_a12(runs: int, reference_runs: int, alpha: float = 0.05, comparisons: int = 1,
                       power: float = POWER, simulations: int = DEFAULT_SIMULATIONS,
                       seed: int = 0) -> float | None:
    """Smallest A12 the one-sided Mann-Whitney test detects with probability ``power`` at level
    alpha / comparisons (see the module docstring); None when no effect can be detected."""
    if not 0 < power < 1:
        raise ValueError(f"power must be between 0 and 1, got {power!r}")
    shifts = critical_shifts(runs, reference_runs, alpha / max(1, comparisons), simulations, seed)
    if shifts is None:
        return None
    return shift_to_a12(float(np.quantile(shifts, power, method="inverted_cdf")))


def detection_rate(a12: float, runs: int, reference_runs: int, alpha: float = 0.05, comparisons: int = 1,
                   simulations: int = DEFAULT_SIMULATIONS, seed: int = 0) -> float:
    """Share of simulated draws the test detects when the true effect is ``a12`` (normal shift)."""
    shifts = critical_shifts(runs, reference_runs, alpha / max(1, comparisons), simulations, seed)
    if shifts is None:
        return 0.0
    return float(np.searchsorted(shifts, a12_to_shift(a12), side="left") / len(shifts))


def a12_interval(x, y, larger_is_better: bool, resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of A12(x over y), each side resampled with replacement
    (NaN, NaN with an empty side). Infinite values (runs that never reached) tie with each other."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if not len(x) or not len(y):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK_CELLS // (len(x) * len(y)))
    values = []
    for start in range(0, resamples, per_chunk):
        size = min(per_chunk, resamples - start)
        xs = x[rng.integers(0, len(x), (size, len(x)))][:, :, None]
        ys = y[rng.integers(0, len(y), (size, len(y)))][:, None, :]
        better = (xs > ys) if larger_is_better else (xs < ys)
        values.append(better.mean(axis=(1, 2)) + 0.5 * (xs == ys).mean(axis=(1, 2)))
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(np.concatenate(values), [tail, 1.0 - tail])
    return float(low), float(high)
