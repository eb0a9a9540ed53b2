"""``motpe``: multi-objective TPE (Optuna's TPESampler over several objectives) through Ray Tune's
OptunaSearch; see optuna_search.py. With one objective it is Optuna's (single-objective) TPE.

>>> from ser_tune.search.space import paper_space
>>> plan = MOTPEStrategy(paper_space(), budget=15, seed=0,
...                      objectives={"val_bca": "max", "latency_ms_per_s": "min"}).plan()
>>> plan.warmup, plan.several_metrics
(5, True)
"""
from __future__ import annotations

import functools

import optuna

from ser_tune.search.optuna_search import OptunaStrategy


class MOTPEStrategy(OptunaStrategy):
    name = "motpe"
    library_warmup = 10   # Optuna TPESampler n_startup_trials

    def method(self) -> str:
        return f"multi-objective TPE (Optuna), {self.warmup} random warm-up trials of {self.budget}"

    def sampler(self):
        return functools.partial(optuna.samplers.TPESampler, n_startup_trials=self.warmup)
