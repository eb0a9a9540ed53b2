"""Search strategies for a ser_tune study, one module each, behind one contract (base.py).

Strategy modules (and their searcher libraries) load on first use, so that Ray workers,
which only decode configs (base.native_config, relax.RelaxedDecoder), stay light.

>>> from ser_tune.search import STRATEGIES, make_plan
>>> from ser_tune.search.space import paper_space
>>> sorted(STRATEGIES)
['gp', 'grid', 'random', 'skopt', 'tpe']
>>> make_plan("tpe", paper_space(), budget=15, seed=0).notes
'TPE (hyperopt), 5 random warm-up trials of 15'
"""
from __future__ import annotations

import importlib

from ser_tune.search.base import SearchPlan, Strategy, StrategyError, default_warmup
from ser_tune.search.space import (Param, SpaceError, grid_size, paper_grid, paper_space, parse_space,
                                   to_grid_space, to_tune_space)

STRATEGY_NAMES = ("tpe", "gp", "skopt", "grid", "random")
_CLASSES = {"tpe": "TPEStrategy", "gp": "GPStrategy", "skopt": "SkoptStrategy", "grid": "GridStrategy",
            "random": "RandomStrategy"}


def strategy_class(name: str) -> type:
    if name not in _CLASSES:
        raise StrategyError(f"unknown strategy '{name}'; choose from {', '.join(STRATEGY_NAMES)}")
    return getattr(importlib.import_module(f"ser_tune.search.{name}"), _CLASSES[name])


def __getattr__(attr: str):
    # STRATEGIES: dict[str, type] ("tpe", "gp", "skopt", "grid", "random"), built on first access.
    if attr == "STRATEGIES":
        return {name: strategy_class(name) for name in STRATEGY_NAMES}
    raise AttributeError(f"module 'ser_tune.search' has no attribute '{attr}'")


def make_plan(strategy: str, space, *, budget, seed, metric="val_bca", mode="max", max_concurrent=1,
              warmup=None, grid=None) -> SearchPlan:
    """Build the named strategy's plan; see :class:`~ser_tune.search.base.SearchPlan`."""
    return strategy_class(strategy)(space, budget=budget, seed=seed, metric=metric, mode=mode,
                                    max_concurrent=max_concurrent, warmup=warmup, grid=grid).plan()


__all__ = ["STRATEGIES", "STRATEGY_NAMES", "strategy_class", "make_plan", "SearchPlan", "Strategy",
           "StrategyError", "default_warmup", "Param", "SpaceError", "parse_space", "paper_space", "paper_grid",
           "to_tune_space", "to_grid_space", "grid_size"]
