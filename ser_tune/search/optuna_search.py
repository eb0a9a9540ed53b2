"""What ``nsga2`` and ``motpe`` share: an Optuna sampler behind Ray Tune's OptunaSearch, searching every
objective of the study together (one or several), with the study's constraints handed to the sampler.

OptunaSearch takes a list of metrics and modes for several objectives (TuneConfig then gets none: the
plan says so with ``several_metrics``) and ignores intermediate results then; a trial reports once,
at its end, anyway. Constraints: before a finished trial is told to Optuna, its distance from each
constraint (``TrialConstraints.violations``: 0 when met) is set on its Optuna trial
(``Trial.set_constraint``, optuna >= 5), which both samplers read: feasible trials rank before
infeasible ones, and infeasible ones by how far they miss.
"""
from __future__ import annotations

import logging
import warnings

import optuna
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from ser_tune.search.base import SearchPlan, StrategyBase, native_config
from ser_tune.search.space import to_tune_space

class ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that sets each finished trial's constraint distances on its Optuna trial first."""

    def __init__(self, *args, constraints=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.constraints = constraints

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self._ot_trials.get(trial_id)   # OptunaSearch keeps its Optuna trials by Ray trial id
        if self.constraints is not None and trial is not None:
            for text, distance in zip(self.constraints.constraints, self.constraints.violations(result or {})):
                trial.set_constraint(text, distance)
        super().on_trial_complete(trial_id, result=result, error=error)


class OptunaStrategy(StrategyBase):
    """A strategy whose searcher is an Optuna sampler (``sampler``), seeded and sized to the budget."""

    def sampler(self) -> "optuna.samplers.BaseSampler":
        raise NotImplementedError

    def method(self) -> str:
        """The sampler and its warm-up, for the plan's notes."""
        raise NotImplementedError

    def plan(self) -> SearchPlan:
        optuna.logging.set_verbosity(logging.WARNING)   # not a line per told trial on the console
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)   # set_constraint
        metrics, modes = list(self.objectives), list(self.objectives.values())
        several = len(metrics) > 1
        sampler = self.sampler()
        searcher = ConstrainedOptunaSearch(metric=metrics if several else metrics[0],
                                           mode=modes if several else modes[0], sampler=sampler,
                                           constraints=self.constraints)
        return SearchPlan(
            strategy=self.name,
            # concurrency only: the sampler takes the constraints itself
            searcher=ConcurrencyLimiter(searcher, max_concurrent=self.max_concurrent),
            param_space=to_tune_space(self._require_space()),
            num_samples=self.budget,
            warmup=self.warmup,
            decode=native_config,
            notes=f"{self.method()}; searches " + " and ".join(f"{m} ({mode})" for m, mode in self.objectives.items()),
            several_metrics=several,
        )

