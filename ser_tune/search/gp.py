"""``gp``: Gaussian-process Bayesian optimisation (bayesian-optimization) through Ray Tune's BayesOptSearch.

BayesOptSearch only searches floats, so the space is relaxed to floats and every trial
config is decoded back (:mod:`ser_tune.search.relax`: ints -> uniform [low-0.5, high+0.5]
rounded to the nearest integer; choices -> an index float in [-0.5, n-0.5] rounded to the
nearest index; loguniform -> uniform over log10, then 10**x). Relaxed parameters are
renamed (``lr__log10``, ``num_epochs__relaxed``, ``max_length__index``) so an undecoded
config is refused by ``TrialSettings.from_config`` instead of silently used.

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

from bayes_opt import BayesianOptimization
from ray.tune.result import DEFAULT_METRIC
from ray.tune.search.bayesopt import BayesOptSearch
from ray.tune.search.bayesopt.bayesopt_search import _dict_hash
from ray.tune.search.searcher import Searcher

from ser_tune.search.base import SearchPlan, StrategyBase, native, one_blas_thread
from ser_tune.search.relax import RelaxedDecoder, relax_space


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

    def add_evaluated_point(self, parameters, value, error=False, pruned=False, intermediate_values=None):
        """A trial it did not suggest (a unit started again after Ray's state of it was lost), told as one it did."""
        self._live_trial_mapping["told"] = {name: parameters[name] for name in self._space}
        self.on_trial_complete("told", {self.metric: value}, error=error or value is None)

    def suggest(self, trial_id: str):
        with one_blas_thread():   # the GP is fitted and its acquisition maximised here
            config = super().suggest(trial_id)
        return config if config in (None, Searcher.FINISHED) else {
            key: native(value) for key, value in config.items()}


class GPStrategy(StrategyBase):
    name = "gp"
    library_warmup = 10   # BayesOptSearch random_search_steps

    def plan(self) -> SearchPlan:
        space = self._require_space()
        searcher = BudgetBayesOptSearch(metric=self.metric, mode=self.mode, random_state=self.seed,
                                        random_search_steps=self.warmup, patience=self.budget)
        return self.searched(searcher, f"GP-BO (bayesian-optimization, UCB), {self.warmup} random warm-up trials "
                                       f"of {self.budget}; ints and choices relaxed to floats",
                             param_space=relax_space(space), decode=RelaxedDecoder(space))
