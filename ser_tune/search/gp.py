"""``gp``: Gaussian-process Bayesian optimisation (bayesian-optimization) through Ray Tune's BayesOptSearch.

BayesOptSearch only searches floats, so the space is relaxed to floats and every trial
config is decoded back (:class:`RelaxedDecoder`). A relaxed parameter gets a new name, so
an undecoded config is refused by ``TrialSettings.from_config`` instead of silently used:

======================  ===============================  ==================================
kind                    searched float                   decoded value
======================  ===============================  ==================================
loguniform [lo, hi]     ``<name>__log10`` in             ``10 ** x``
                        [log10 lo, log10 hi]
int [lo, hi]            ``<name>__relaxed`` in           nearest integer, clamped to
                        [lo - 0.5, hi + 0.5]             [lo, hi]
choice (n values)       ``<name>__index`` in             ``values[nearest index]``,
                        [-0.5, n - 0.5]                  clamped to [0, n - 1]
uniform [lo, hi]        ``<name>`` unchanged             ``x``
======================  ===============================  ==================================

Every integer and option owns an interval of width 1, so each is equally likely under
random warm-up. The GP sees the relaxed floats, so two trials may decode to the same settings.

To spend the whole budget: ``random_search_steps`` (Ray's default 10) is the budget-sized
warm-up, ``patience`` is the budget, and :class:`BudgetBayesOptSearch` replaces an
acquisition maximum that repeats an earlier suggestion (already run, or still running
under concurrency, where the GP has no new data) with a random point; stock
BayesOptSearch would skip it and, after ``patience`` repeats, end the study early.
It also replaces a failed warm-up trial with another random one (stock BayesOptSearch
waits for the failed trial's result forever) and ignores results without the metric.

>>> from ser_tune.search.space import paper_space
>>> plan = GPStrategy(paper_space(), budget=15, seed=0).plan()
>>> sorted(plan.param_space)
['lr__log10', 'max_length__index', 'num_epochs__relaxed', 'unfreeze_epoch__relaxed']
>>> plan.decode({"lr__log10": -4.0, "num_epochs__relaxed": 10.5, "unfreeze_epoch__relaxed": 1.49,
...              "max_length__index": 4.6, "batch_size": 16})
{'batch_size': 16, 'lr': 0.0001, 'num_epochs': 10, 'unfreeze_epoch': 1, 'max_length': 10.0}
"""
from __future__ import annotations

import math

from bayes_opt import BayesianOptimization
from ray import tune
from ray.tune.result import DEFAULT_METRIC
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.bayesopt import BayesOptSearch
from ray.tune.search.bayesopt.bayesopt_search import _dict_hash
from ray.tune.search.searcher import Searcher

from ser_tune.search.base import SearchPlan, StrategyBase, native, one_blas_thread
from ser_tune.search.space import Param

_SUFFIX = {"loguniform": "__log10", "int": "__relaxed", "choice": "__index", "uniform": ""}


def relaxed_name(param: Param) -> str:
    return param.name + _SUFFIX[param.kind]


def relax_space(space: dict[str, Param]) -> dict:
    """Tune uniform domains over the relaxed floats (see the module table)."""
    out = {}
    for p in space.values():
        if p.kind == "loguniform":
            low, high = math.log10(p.low), math.log10(p.high)
        elif p.kind == "int":
            low, high = p.low - 0.5, p.high + 0.5
        elif p.kind == "choice":
            low, high = -0.5, len(p.values) - 0.5
        else:
            low, high = p.low, p.high
        out[relaxed_name(p)] = tune.uniform(low, high)
    return out


def _nearest(x: float, low: int, high: int) -> int:
    # floor(x + 0.5), not round(): Python rounds halves to even, which skews the intervals.
    return min(high, max(low, int(math.floor(float(x) + 0.5))))


class RelaxedDecoder:
    """Raw Ray config (relaxed floats) -> trial settings values; other keys pass through."""

    def __init__(self, space: dict[str, Param]):
        self.space = dict(space)

    def decode_value(self, p: Param, x: float):
        if p.kind == "loguniform":
            return min(p.high, max(p.low, 10.0 ** float(x)))
        if p.kind == "int":
            return _nearest(x, int(p.low), int(p.high))
        if p.kind == "choice":
            return p.values[_nearest(x, 0, len(p.values) - 1)]
        return float(x)

    def __call__(self, config: dict) -> dict:
        relaxed = {relaxed_name(p): p for p in self.space.values()}
        out = {key: native(value) for key, value in config.items() if key not in relaxed}
        for key, p in relaxed.items():
            if key in config:
                out[p.name] = self.decode_value(p, config[key])
        return out


class _FreshPointOptimizer(BayesianOptimization):
    """Suggests a random point instead of one the searcher has already handed out."""

    def __init__(self, *args, seen: dict, precision: int, **kwargs):
        super().__init__(*args, **kwargs)
        self._seen = seen              # the searcher's own counter of suggested configs
        self._precision = precision

    def suggest(self, utility_function):
        point = super().suggest(utility_function)
        if _dict_hash(point, self._precision) in self._seen:
            point = self._space.array_to_params(self._space.random_sample())
        return point


class BudgetBayesOptSearch(BayesOptSearch):
    """BayesOptSearch that never ends a study early by re-suggesting a point (see module doc)."""

    def _setup_optimizer(self):
        if self._metric is None and self._mode:
            self._metric = DEFAULT_METRIC
        self.optimizer = _FreshPointOptimizer(
            f=None, pbounds=self._space, verbose=self._verbose, random_state=self._random_state,
            allow_duplicate_points=True, seen=self._config_counter, precision=self.repeat_float_precision)
        if self._analysis is not None:
            self.register_analysis(self._analysis)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        known = trial_id in self._live_trial_mapping
        failed = error or not result or self.metric not in result
        warming_up = len(self._buffered_trial_results) < self.random_search_trials
        super().on_trial_complete(trial_id, result=None if failed else result, error=failed)
        if known and failed and warming_up and self._total_random_search_trials > 0:
            # A failed warm-up trial never reaches the warm-up buffer; without another random
            # trial in its place the search would wait for it forever.
            self._total_random_search_trials -= 1

    def suggest(self, trial_id: str):
        with one_blas_thread():   # the GP is fitted and its acquisition maximised here
            config = super().suggest(trial_id)
        return config if config is Searcher.FINISHED or config is None else {
            key: native(value) for key, value in config.items()}


class GPStrategy(StrategyBase):
    name = "gp"

    def plan(self) -> SearchPlan:
        space = self._require_space()
        searcher = BudgetBayesOptSearch(metric=self.metric, mode=self.mode, random_state=self.seed,
                                        random_search_steps=self.warmup, patience=self.budget)
        return SearchPlan(
            strategy=self.name,
            searcher=ConcurrencyLimiter(searcher, max_concurrent=self.max_concurrent),
            param_space=relax_space(space),
            num_samples=self.budget,
            warmup=self.warmup,
            decode=RelaxedDecoder(space),
            notes=f"GP-BO (bayesian-optimization, UCB), {self.warmup} random warm-up trials of {self.budget}; "
                  "ints and choices relaxed to floats",
        )
