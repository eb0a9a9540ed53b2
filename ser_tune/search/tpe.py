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

from ray.tune.search.hyperopt import HyperOptSearch

from ser_tune.search.base import SearchPlan, StrategyBase


class TPEStrategy(StrategyBase):
    name = "tpe"

    def plan(self) -> SearchPlan:
        searcher = HyperOptSearch(metric=self.metric, mode=self.mode,
                                  n_initial_points=self.warmup, random_state_seed=self.seed)
        return self.searched(searcher, f"TPE (hyperopt), {self.warmup} random warm-up trials of {self.budget}")
