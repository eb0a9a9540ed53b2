"""``tpe``: Tree-structured Parzen Estimators (hyperopt) through Ray Tune's HyperOptSearch.

The random warm-up (hyperopt's ``n_startup_jobs``, Ray's ``n_initial_points``) is sized
to the budget; at Ray's default of 20 a 15-trial study would never leave random search.

>>> from ser_tune.search.space import paper_space
>>> plan = TPEStrategy(paper_space(), budget=15, seed=0).plan()
>>> plan.num_samples, plan.warmup
(15, 5)
>>> plan.notes
'TPE (hyperopt), 5 random warm-up trials of 15'
"""
from __future__ import annotations

import copy
import sys

from ray.tune.search.hyperopt import HyperOptSearch

from ser_tune.search.base import SearchPlan, StrategyBase, native_config
from ser_tune.search.space import to_tune_space


class TellableHyperOptSearch(HyperOptSearch):
    """HyperOptSearch that can be told a trial it did not suggest (a unit started again after Ray's state of it
    was lost): the point joins hyperopt's trials as if suggested, then completes as a suggested one does."""

    def add_evaluated_point(self, parameters, value, error=False, pruned=False, intermediate_values=None):
        point = copy.deepcopy(parameters)
        self._convert_categories_to_indices(point)
        [tid] = self._hpopt_trials.new_trial_ids(1)
        self._hpopt_trials.insert_trial_docs([sys.modules["hyperopt.fmin"].generate_trial(tid, point)])
        self._hpopt_trials.refresh()
        self._live_trial_mapping["told"] = (tid, None)
        self.on_trial_complete("told", {self.metric: value}, error=error or value is None)


class TPEStrategy(StrategyBase):
    name = "tpe"

    def plan(self) -> SearchPlan:
        searcher = TellableHyperOptSearch(metric=self.metric, mode=self.mode,
                                  n_initial_points=self.warmup, random_state_seed=self.seed)
        return SearchPlan(
            strategy=self.name,
            searcher=self.limited(searcher),
            param_space=to_tune_space(self._require_space()),
            num_samples=self.budget,
            warmup=self.warmup,
            decode=native_config,
            notes=f"TPE (hyperopt), {self.warmup} random warm-up trials of {self.budget}",
        )
