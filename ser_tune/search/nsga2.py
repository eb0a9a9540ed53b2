"""``nsga2``: NSGA-II (Optuna's NSGAIISampler) through Ray Tune's OptunaSearch; see optuna_search.py.

A genetic algorithm over every objective of the study: its first generation is random, each later one
is bred from the non-dominated (and least crowded) trials so far. The population is the budget-sized
warm-up (Optuna's default of 50 would make a 15-trial study pure random search).

>>> from ser_tune.search.space import paper_space
>>> plan = NSGA2Strategy(paper_space(), budget=15, seed=0,
...                      objectives={"val_bca": "max", "latency_ms_per_s": "min"}).plan()
>>> plan.warmup, plan.several_metrics, plan.searcher.searcher.metric
(5, True, ['val_bca', 'latency_ms_per_s'])
"""
from __future__ import annotations

import functools

import optuna

from ser_tune.search.optuna_search import OptunaStrategy


class NSGA2Strategy(OptunaStrategy):
    name = "nsga2"
    library_warmup = 50   # Optuna NSGAIISampler population_size

    def method(self) -> str:
        return f"NSGA-II (Optuna), generations of {max(2, self.warmup)} trials (the first random) of {self.budget}"

    def sampler(self):
        return functools.partial(optuna.samplers.NSGAIISampler, population_size=max(2, self.warmup))
