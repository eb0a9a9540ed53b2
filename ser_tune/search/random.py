"""``random``: independent random sampling of the space (Ray Tune's BasicVariantGenerator).

The baseline every model-based strategy must beat at the same budget. Every trial is
random, so the plan's ``warmup`` equals the budget (a ``warmup`` argument is ignored).

>>> from ser_tune.search.space import paper_space
>>> plan = RandomStrategy(paper_space(), budget=15, seed=0, max_concurrent=2).plan()
>>> plan.num_samples, plan.warmup, plan.searcher.max_concurrent
(15, 15, 2)
"""
from __future__ import annotations

from ray.tune.search.basic_variant import BasicVariantGenerator

from ser_tune.search.base import SearchPlan, StrategyBase


class RandomStrategy(StrategyBase):
    name = "random"
    model_based = False

    def plan(self) -> SearchPlan:
        # BasicVariantGenerator ignores TuneConfig(max_concurrent_trials): it takes its own limit.
        searcher = BasicVariantGenerator(random_state=self.seed, max_concurrent=self.max_concurrent)
        return self.searched(searcher, f"random search, {self.budget} random trials", limit=False,
                             warmup=self.budget)
