"""Search strategies for a ser_tune study, one module each, behind one contract (base.py).

>>> from ser_tune.search.space import paper_space
>>> sorted(STRATEGIES)
['gp', 'grid', 'random', 'skopt', 'tpe']
>>> make_plan("tpe", paper_space(), budget=15, seed=0).notes
'TPE (hyperopt), 5 random warm-up trials of 15'
"""
from __future__ import annotations

from ser_tune.search.base import SearchPlan, Strategy, StrategyError, default_warmup
from ser_tune.search.gp import GPStrategy
from ser_tune.search.grid import GridStrategy
from ser_tune.search.random import RandomStrategy
from ser_tune.search.skopt import SkoptStrategy
from ser_tune.search.space import (Param, SpaceError, grid_size, paper_grid, paper_space, parse_space,
                                   to_grid_space, to_tune_space)
from ser_tune.search.tpe import TPEStrategy

STRATEGIES: dict[str, type] = {
    "tpe": TPEStrategy,
    "gp": GPStrategy,
    "skopt": SkoptStrategy,
    "grid": GridStrategy,
    "random": RandomStrategy,
}


def make_plan(strategy: str, space, *, budget, seed, metric="val_bca", mode="max", max_concurrent=1,
              warmup=None, grid=None) -> SearchPlan:
    """Build the named strategy's plan; see :class:`~ser_tune.search.base.SearchPlan`."""
    if strategy not in STRATEGIES:
        raise StrategyError(f"unknown strategy '{strategy}'; choose from {', '.join(STRATEGIES)}")
    return STRATEGIES[strategy](space, budget=budget, seed=seed, metric=metric, mode=mode,
                                max_concurrent=max_concurrent, warmup=warmup, grid=grid).plan()


__all__ = ["STRATEGIES", "make_plan", "SearchPlan", "Strategy", "StrategyError", "default_warmup", "Param",
           "SpaceError", "parse_space", "paper_space", "paper_grid", "to_tune_space", "to_grid_space",
           "grid_size"]
