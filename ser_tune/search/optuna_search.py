"""What ``nsga2`` and ``motpe`` share: an Optuna sampler behind Ray Tune's OptunaSearch, searching every
objective of the study together (one or several), with the study's constraints handed to the sampler.

OptunaSearch takes a list of metrics and modes for several objectives (TuneConfig then gets none: the
plan says so with ``several_metrics``) and ignores intermediate results then; a trial reports once,
at its end, anyway. Constraints: before a finished trial is told to Optuna, its distance from each
constraint (``TrialConstraints.violations``: 0 when met) is set on its Optuna trial
(``Trial.set_constraint``, optuna >= 5), which both samplers read: feasible trials rank before
infeasible ones, and infeasible ones by how far they miss.

Ray Tune pickles the searcher when the Tuner is built and in every experiment snapshot, and a sampler
need not pickle (optuna 5.1's NSGAIISampler holds a thread lock): see :class:`RebuiltSampler`.
"""
from __future__ import annotations

import logging
import warnings
from typing import Callable

import optuna
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from ser_tune.search.base import SearchPlan, StrategyBase

class RebuiltSampler(optuna.samplers.BaseSampler):
    """The sampler ``make(seed=...)`` makes, pickled as its recipe and made again when unpickled.

    What a sampler learns from, the told trials, is in the Optuna study's storage, which pickles; the
    new sampler's seed is the first one plus the trials told so far, so that a restored search does not
    draw its first trials again.
    """

    def __init__(self, make: Callable[..., optuna.samplers.BaseSampler], seed: int):
        self.make, self.seed, self.told = make, seed, 0
        self.sampler = make(seed=seed)

    def __getstate__(self) -> dict:
        return {"make": self.make, "seed": self.seed, "told": self.told}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.sampler = self.make(seed=self.seed + self.told)

    def infer_relative_search_space(self, study, trial):
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self.sampler.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.sampler.after_trial(study, trial, state, values)
        self.told += 1

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


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

    def sampler(self) -> Callable[..., optuna.samplers.BaseSampler]:
        """The sampler's recipe: a picklable callable taking ``seed=`` (a functools.partial)."""
        raise NotImplementedError

    def method(self) -> str:
        """The sampler and its warm-up, for the plan's notes."""
        raise NotImplementedError

    def plan(self) -> SearchPlan:
        optuna.logging.set_verbosity(logging.WARNING)   # not a line per told trial on the console
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)   # set_constraint
        metrics, modes = list(self.objectives), list(self.objectives.values())
        several = len(metrics) > 1
        searcher = ConstrainedOptunaSearch(metric=metrics if several else metrics[0],
                                           mode=modes if several else modes[0],
                                           sampler=RebuiltSampler(self.sampler(), self.seed),
                                           constraints=self.constraints)
        notes = " and ".join(f"{m} ({mode})" for m, mode in self.objectives.items())
        # concurrency only: the sampler takes the constraints itself
        return self.searched(ConcurrencyLimiter(searcher, max_concurrent=self.max_concurrent),
                             f"{self.method()}; searches {notes}", limit=False, several_metrics=several)

