"""Search strategies for a ser_tune study, one module each, behind one contract (base.py).

Strategy modules (and their searcher libraries) load on first use, so that Ray workers,
which only decode configs (base.native_config, relax.RelaxedDecoder), stay light.

>>> from ser_tune.search import STRATEGY_NAMES, make_plan
>>> from ser_tune.search.space import paper_space
>>> sorted(STRATEGY_NAMES)
['gp', 'grid', 'motpe', 'nsga2', 'random', 'skopt', 'tpe']
>>> make_plan("tpe", paper_space(), budget=15, seed=0).notes
'TPE (hyperopt), 5 random warm-up trials of 15'
"""
from __future__ import annotations

import importlib
import importlib.util

from ser_tune.search.base import LIBRARY, SearchPlan, StrategyError, default_warmup
from ser_tune.search.space import (Param, SpaceError, grid_size, paper_grid, paper_space, parse_space,
                                   to_grid_space, to_tune_space)

STRATEGY_NAMES = ("tpe", "gp", "skopt", "grid", "random", "nsga2", "motpe")
OPTUNA_STRATEGIES = ("nsga2", "motpe")   # several objectives searched together; they need optuna
_CLASSES = {"tpe": "TPEStrategy", "gp": "GPStrategy", "skopt": "SkoptStrategy", "grid": "GridStrategy",
            "random": "RandomStrategy", "nsga2": "NSGA2Strategy", "motpe": "MOTPEStrategy"}


def strategy_class(name: str) -> type:
    if name not in _CLASSES:
        raise StrategyError(f"unknown strategy '{name}'; choose from {', '.join(STRATEGY_NAMES)}")
    check_installed(name)
    return getattr(importlib.import_module(f"ser_tune.search.{name}"), _CLASSES[name])


def check_installed(name: str) -> None:
    """A StrategyError naming what to install when a strategy's searcher library is missing."""
    if name in OPTUNA_STRATEGIES and importlib.util.find_spec("optuna") is None:
        raise StrategyError(f"strategy '{name}' needs optuna, which is not installed (pip install -e . installs it)")


def make_plan(strategy: str, space, *, budget, seed, metric="val_bca", mode="max", max_concurrent=1,
              warmup=None, grid=None, objectives=None, constraints=None) -> SearchPlan:
    """Build the named strategy's plan; see :class:`~ser_tune.search.base.SearchPlan` (``objectives``
    and ``constraints``: see the module docstring of :mod:`ser_tune.search.base`)."""
    plan = strategy_class(strategy)(space, budget=budget, seed=seed, metric=metric, mode=mode,
                                    max_concurrent=max_concurrent, warmup=warmup, grid=grid, objectives=objectives,
                                    constraints=constraints).plan()
    if objectives and len(objectives) > 1 and not plan.several_metrics:
        plan.notes += f"; searches {metric} alone"
    if constraints is not None:
        plan.notes += ("; constraints rank its trials (it does not learn from them)" if strategy in ("random", "grid")
                       else "; Optuna's sampler takes the constraints" if strategy in OPTUNA_STRATEGIES
                       else f"; a trial that breaks a constraint is told a penalty as its {metric}")
    return plan


__all__ = ["STRATEGY_NAMES", "OPTUNA_STRATEGIES", "strategy_class", "check_installed", "make_plan",
           "SearchPlan", "StrategyError", "LIBRARY", "default_warmup", "Param", "SpaceError", "parse_space",
           "paper_space", "paper_grid", "to_tune_space", "to_grid_space", "grid_size"]
