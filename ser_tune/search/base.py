"""The contract every search strategy meets: build a :class:`SearchPlan` for Ray Tune.

A strategy is constructed with the space, the trial budget and a seed, and does all
its seeding there; ``plan()`` returns what the launcher hands to ``tune.Tuner``::

    plan = make_plan("tpe", space, budget=15, seed=0)
    tuner = tune.Tuner(trainable, param_space={**fixed_settings, **plan.param_space},
                       tune_config=tune.TuneConfig(search_alg=plan.searcher,
                                                   num_samples=plan.num_samples,
                                                   metric="val_bca", mode="max",
                                                   reuse_actors=True))
    # in the trainable: settings = TrialSettings.from_config(plan.decode(config))
    # the unit is complete once plan.expected_trials trials have ended

Several objectives (``objectives``, metric -> mode, the first the validation metric): the
multi-objective strategies (``nsga2``, ``motpe``) search them together, and their plan says so
(``several_metrics``: TuneConfig then takes no metric, the searcher has them all); every other
strategy searches the first alone. Constraints (``constraints``, a ``objectives.TrialConstraints``):
a model-based single-objective searcher is told a penalty in place of the objective of a trial that
breaks one (:class:`~ser_tune.search.constrained.ConstrainedLimiter`); Optuna's samplers take them natively; random and grid
search do not learn, so constraints only rank their trials.

A plan's searcher is stateful: build a new plan for every Tuner run. Every trial runs
its full epochs: no strategy here uses a trial scheduler. ``reuse_actors=True`` saves a
worker start per trial (seconds on a busy machine). Each strategy limits its own
concurrency to ``max_concurrent`` in its searcher (a ``ConcurrencyLimiter``, or
BasicVariantGenerator's own limit, which ignores ``TuneConfig(max_concurrent_trials)``),
so the caller passes no ``max_concurrent_trials``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral
from typing import Any, Callable

import numpy as np
from threadpoolctl import threadpool_limits

from ser_tune.search.space import Param, parse_space, to_tune_space


class StrategyError(ValueError):
    """Bad arguments to a search strategy (unknown name, budget, warm-up, mode)."""


@dataclass
class SearchPlan:
    strategy: str
    searcher: object | None          # TuneConfig(search_alg=...)
    param_space: dict                # Tuner(param_space=...), fixed settings merged by the launcher
    num_samples: int                 # TuneConfig(num_samples=...)
    warmup: int                      # random warm-up trials before the model guides the search
    decode: Callable[[dict], dict]   # raw Ray config -> trial settings values
    notes: str                       # one line for the report
    expected_trials: int = 0         # trials the plan runs in all (0: num_samples)
    several_metrics: bool = False    # the searcher searches several objectives (TuneConfig gets no metric)

    def __post_init__(self):
        self.expected_trials = self.expected_trials or self.num_samples


LIBRARY = "library"   # warmup="library": the searcher library's own default warm-up (capped at the budget)


def default_warmup(budget: int) -> int:
    """Random warm-up sized to the budget: 30 % (at least 2), always leaving one guided trial.

    Ray's defaults (HyperOptSearch 20, BayesOptSearch 10 random trials) would make a
    15-trial study pure random search.
    """
    return max(1, min(max(2, math.floor(0.3 * budget + 0.5)), budget - 1))


def one_blas_thread():
    """Context for a searcher's GP fitting and acquisition search in the driver process.

    Its matrices are tiny (one row per trial), so multi-threaded BLAS only adds overhead; on a
    busy 2-core machine OpenBLAS threads made a 12-trial GP search 4-5x slower.
    """
    return threadpool_limits(limits=1)


def native(value: Any) -> Any:
    """numpy scalars -> Python scalars, so configs stay JSON-able."""
    return value.item() if isinstance(value, np.generic) else value


def native_config(config: dict) -> dict:
    """The decode of strategies that sample settings directly: only numpy -> Python scalars."""
    return {key: native(value) for key, value in config.items()}


class StrategyBase:
    """Argument checks shared by every strategy; subclasses implement ``plan()``."""

    name = "base"
    model_based = True   # needs at least one random warm-up trial to fit its model
    library_warmup: int | None = None   # the searcher library's default random warm-up (warmup="library")

    def __init__(self, space: dict[str, Param], *, budget: int, seed: int, metric: str = "val_bca",
                 mode: str = "max", max_concurrent: int = 1, warmup: int | None = None,
                 grid: dict | None = None, objectives: dict | None = None, constraints: Any = None):
        if not isinstance(budget, Integral) or isinstance(budget, bool) or budget < 1:
            raise StrategyError(f"{self.name}: budget must be a positive integer (got {budget!r})")
        if not isinstance(seed, Integral) or isinstance(seed, bool):
            raise StrategyError(f"{self.name}: seed must be an integer (got {seed!r})")
        if mode not in ("max", "min"):
            raise StrategyError(f"{self.name}: mode must be 'max' or 'min' (got {mode!r})")
        if not isinstance(metric, str) or not metric:
            raise StrategyError(f"{self.name}: metric must be a non-empty string (got {metric!r})")
        if not isinstance(max_concurrent, Integral) or isinstance(max_concurrent, bool) or max_concurrent < 1:
            raise StrategyError(f"{self.name}: max_concurrent must be a positive integer (got {max_concurrent!r})")
        if warmup == LIBRARY:   # what a user gets from the library as shipped: shows what sizing buys
            warmup = None if self.library_warmup is None else min(self.library_warmup, int(budget))
        if warmup is not None:
            low = 1 if self.model_based else 0
            if not isinstance(warmup, Integral) or isinstance(warmup, bool) or not low <= warmup <= budget:
                raise StrategyError(f"{self.name}: warmup must be an integer in [{low}, budget={budget}] "
                                    f"or '{LIBRARY}' (got {warmup!r})")
        self.space = parse_space(space) if space is not None else None
        self.budget = int(budget)
        self.seed = int(seed)
        self.metric = metric
        self.mode = mode
        self.max_concurrent = int(max_concurrent)
        self.warmup = int(warmup) if warmup is not None else default_warmup(self.budget)
        self.grid = grid
        self.objectives = dict(objectives) if objectives else {metric: mode}
        if next(iter(self.objectives)) != metric:
            raise StrategyError(f"{self.name}: the first objective must be the metric {metric!r} "
                                f"(got {list(self.objectives)})")
        self.constraints = constraints

    def limited(self, searcher):
        """``searcher`` in a ConcurrencyLimiter of ``max_concurrent`` trials at a time, which tells it
        penalties for trials that break a constraint when the study has any."""
        from ray.tune.search import ConcurrencyLimiter   # late: Ray workers import this module to decode

        from ser_tune.search.constrained import ConstrainedLimiter

        if self.constraints is None:
            return ConcurrencyLimiter(searcher, max_concurrent=self.max_concurrent)
        return ConstrainedLimiter(searcher, max_concurrent=self.max_concurrent, constraints=self.constraints)

    def searched(self, searcher, notes: str, *, limit: bool = True, **given) -> SearchPlan:
        """The plan of ``searcher`` over the space for the budget: ``limited`` unless ``limit`` is False (a
        searcher that limits itself), its warm-up, native values decoded; fields in ``given`` replace these."""
        if "param_space" not in given:
            given["param_space"] = to_tune_space(self._require_space())
        return SearchPlan(**{"strategy": self.name, "searcher": self.limited(searcher) if limit else searcher,
                             "num_samples": self.budget, "warmup": self.warmup, "decode": native_config,
                             "notes": notes, **given})

    def _require_space(self) -> dict[str, Param]:
        if not self.space:
            raise StrategyError(f"{self.name}: needs a search space")
        return self.space

    def plan(self) -> SearchPlan:
        raise NotImplementedError

