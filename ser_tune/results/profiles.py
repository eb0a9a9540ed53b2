"""Targets that carry information and data profiles (COCO style), from plain run tables.

One threshold gives one bit per run, and a target nobody reaches gives none. So each comparison
also measures every strategy at a ladder of targets spread over the range the study covered:

- ``target_ladder(low, best, mode, count)``: ``count`` targets evenly spaced from just above ``low``
  (the untuned default's value, else the worst first-trial value over runs: a level every run is
  expected to pass) up to ``best`` (the best value any run reached, so the top target is reached by
  at least one run), easiest first. They are rounded to a few digits past the spacing's first one,
  the top one towards ``low`` so the best run still reaches it. A range with no width gives the one
  target ``best``.
- ``ladder_bounds(reports_by_run, mode, default)``: that ``low`` and ``best`` from the runs' report
  streams (see ``results.repeats``).
- ``data_profile(tables, clock)``: per strategy, the fraction of its (run, target) pairs reached by
  each time on ``clock``, one ``repeats.run_table`` per target (one ECDF per strategy: it rises at
  each pair's time to target and ends at the share of pairs ever reached).
"""
from __future__ import annotations

import math
from typing import Hashable, Mapping, Sequence

import pandas as pd

from ..objectives import check_mode
from .repeats import check_clock, ecdf_by_strategy

LADDER_SIZE = 5


def target_ladder(low: float, best: float, mode: str = "max", count: int = LADDER_SIZE) -> list[float]:
    """``count`` targets from just above ``low`` to ``best`` (see the module docstring), easiest first."""
    check_mode(mode)
    if count < 1:
        raise ValueError(f"target ladder: count must be at least 1, got {count!r}")
    if not (math.isfinite(low) and math.isfinite(best)):
        raise ValueError(f"target ladder: low ({low!r}) and best ({best!r}) must be finite numbers")
    width = (best - low) if mode == "max" else (low - best)
    if width <= 0:
        return [float(best)]
    step = width / count
    decimals = max(2, 2 - math.floor(math.log10(step)))
    sign = 1.0 if mode == "max" else -1.0
    targets = [round(low + sign * step * k, decimals) for k in range(1, count)]
    top = round(best, decimals)   # rounded towards low when needed: the best run still reaches it
    if (top > best) if mode == "max" else (top < best):
        top = round(top - sign * 10.0 ** -decimals, decimals)
    return [float(t) for t in dict.fromkeys([*targets, top])]


def ladder_bounds(reports_by_run: Mapping[tuple[str, Hashable], pd.DataFrame], mode: str = "max",
                  default: float | None = None) -> tuple[float, float] | None:
    """(low, best) of the ladder: best is the best value any run reported; low is ``default`` when it
    is given and worse than best, else the worst over runs of its first trial's best value. None when
    no run reported a value."""
    check_mode(mode)
    better, worse = (max, min) if mode == "max" else (min, max)
    bests, firsts = [], []
    for reports in reports_by_run.values():
        valued = reports.dropna(subset=["value"])
        if valued.empty:
            continue
        bests.append(better(valued["value"]))
        first = valued[valued["trial"] == valued["trial"].min()]
        firsts.append(better(first["value"]))
    if not bests:
        return None
    best = float(better(bests))
    if default is not None and math.isfinite(default) and better(default, best) == best and default != best:
        return float(default), best
    return float(worse(firsts)), best


def data_profile(tables: Sequence[pd.DataFrame], clock: str) -> pd.DataFrame:
    """Per strategy, the fraction of its (run, target) pairs reached by each time on ``clock``.

    ``tables``: one ``repeats.run_table`` per target, of the same runs. Columns ``strategy``, the
    clock's name and ``fraction``: one row per distinct time to target of a reached pair, in
    increasing order; the denominator is runs x targets, so a curve ends at the share of pairs ever
    reached (a strategy that reached none has no rows).
    """
    check_clock(clock)
    columns = ["strategy", clock, "fraction"]
    if not tables:
        return pd.DataFrame(columns=columns)
    return ecdf_by_strategy(pd.concat(list(tables), ignore_index=True), clock)


def profile_points(profile: pd.DataFrame, strategy: str, clock: str) -> list[list[float]]:
    """One strategy's data profile as [[time, fraction], ...] (the --json form; times to the millisecond)."""
    own = profile[profile["strategy"] == strategy]
    return [[round(float(t), 3), float(f)] for t, f in zip(own[clock], own["fraction"])]
