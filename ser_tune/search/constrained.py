"""Constraints told to a single-objective searcher: a penalty in place of an infeasible trial's objective."""
from __future__ import annotations

from ray.tune.search import ConcurrencyLimiter


class ConstrainedLimiter(ConcurrencyLimiter):
    """A ConcurrencyLimiter whose searcher is told each finished trial's result through ``constraints.told``:
    a trial that breaks a constraint reports a penalty worse than any feasible value in place of its
    objective (the true value stays in what Ray records, hence in trials.csv)."""

    def __init__(self, searcher, max_concurrent: int, constraints):
        self.constraints = constraints
        super().__init__(searcher, max_concurrent=max_concurrent)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and not error:
            result = self.constraints.told(result)
        super().on_trial_complete(trial_id, result=result, error=error)
