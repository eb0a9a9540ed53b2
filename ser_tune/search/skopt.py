"""``skopt``: GP Bayesian optimisation with scikit-optimize, as a Ray Tune Searcher.

Ray dropped its SkOptSearch; :class:`SkoptSearcher` wraps ``skopt.Optimizer`` directly.
Unlike ``gp`` it needs no relaxation: loguniform is ``Real(prior="log-uniform")``, ints are
``Integer`` and choices ``Categorical``.

- skopt minimises, so a "max" metric is told negated.
- Concurrency: once the model is fitted, ``Optimizer.ask()`` repeats the same point until
  told a result, so a suggestion made while others are pending comes from a copy of the
  optimizer that was told each pending point with a pessimistic lie (the worst value
  seen: "constant liar", cl_max), which steers it away from them; a point that still
  repeats is replaced by a random one. Before the warm-up results are in, every
  suggestion is random (as with hyperopt), so under concurrency a few more trials than
  ``warmup`` may be random.
- Failed trials and results without the metric (or NaN) are not told.
- ``save``/``restore`` pickle the whole state so ``Tuner.restore`` resumes the search.

>>> from ray.tune.search import ConcurrencyLimiter
>>> from ser_tune.search.space import paper_space
>>> plan = SkoptStrategy(paper_space(), budget=15, seed=0).plan()
>>> plan.warmup, isinstance(plan.searcher, ConcurrencyLimiter)
(5, True)
>>> searcher = SkoptSearcher(metric="val_bca", mode="max", n_initial_points=2, random_state=0)
>>> searcher.set_search_properties(None, None, plan.param_space)
True
>>> a, b = searcher.suggest("t1"), searcher.suggest("t2")   # both pending
>>> a != b and sorted(a) == sorted(plan.param_space)
True
"""
from __future__ import annotations

import math
import pickle
from typing import Any

import numpy as np
import skopt
from ray.tune.search import Searcher
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Quantized, Uniform
from ray.tune.search.variant_generator import parse_spec_vars
from ray.tune.utils.util import flatten_dict, unflatten_dict

from ser_tune.search.base import SearchPlan, StrategyBase, native, one_blas_thread


def tune_space_to_dimensions(config: dict) -> tuple[list[str], list]:
    """Ray Tune domains in a param_space -> (names, skopt dimensions); constants are skipped."""
    _, domain_vars, grid_vars = parse_spec_vars(config)
    if grid_vars:
        raise ValueError("SkoptSearcher cannot search tune.grid_search parameters; use the grid strategy")
    names, dims = [], []
    for path, domain in domain_vars:
        name = "/".join(map(str, path))
        sampler = domain.get_sampler()
        if isinstance(sampler, Quantized):
            raise ValueError(f"SkoptSearcher: quantized parameter '{name}' is not supported")
        log = isinstance(sampler, LogUniform)
        if isinstance(domain, Float) and isinstance(sampler, (Uniform, LogUniform)):
            dim = skopt.space.Real(domain.lower, domain.upper, prior="log-uniform" if log else "uniform", name=name)
        elif isinstance(domain, Integer) and isinstance(sampler, (Uniform, LogUniform)):
            # Tune's randint excludes its upper end; skopt's Integer includes it.
            dim = skopt.space.Integer(domain.lower, domain.upper - 1, prior="log-uniform" if log else "uniform",
                                      name=name)
        elif isinstance(domain, Categorical):
            dim = skopt.space.Categorical(list(domain.categories), name=name)
        else:
            raise ValueError(f"SkoptSearcher: parameter '{name}' has an unsupported domain {domain!r}")
        names.append(name)
        dims.append(dim)
    return names, dims


class SkoptSearcher(Searcher):
    """A Ray Tune Searcher around ``skopt.Optimizer`` (see the module doc)."""

    def __init__(self, metric: str | None = None, mode: str | None = None, *, n_initial_points: int = 10,
                 random_state: int | None = None, base_estimator: str = "GP", acq_func: str = "gp_hedge"):
        super().__init__(metric=metric, mode=mode)
        if mode is not None and mode not in ("max", "min"):
            raise ValueError(f"SkoptSearcher: mode must be 'max' or 'min' (got {mode!r})")
        self._n_initial_points = n_initial_points
        self._random_state = random_state
        self._base_estimator = base_estimator
        self._acq_func = acq_func
        self._rng = np.random.RandomState(random_state)
        self._names: list[str] = []
        self._opt: skopt.Optimizer | None = None
        self._pending: dict[str, list] = {}   # trial_id -> point, suggested but not yet told

    # -- Ray Tune hooks ------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        if self._opt is not None:
            return False
        self._metric, self._mode = metric or self._metric, mode or self._mode
        self._names, dims = tune_space_to_dimensions(config)
        if not dims:
            raise ValueError("SkoptSearcher: the param_space has nothing to search")
        self._opt = skopt.Optimizer(dims, base_estimator=self._base_estimator,
                                    n_initial_points=self._n_initial_points, acq_func=self._acq_func,
                                    random_state=self._random_state)
        return True

    def suggest(self, trial_id: str) -> dict | None:
        if self._opt is None:
            raise RuntimeError("SkoptSearcher has no search space: pass a param_space to the Tuner")
        if not self._metric or not self._mode:
            raise RuntimeError("SkoptSearcher needs metric and mode (pass them to TuneConfig)")
        with one_blas_thread():
            point = self._ask()
        self._pending[trial_id] = point
        return unflatten_dict({name: native(v) for name, v in zip(self._names, point)})

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        point = self._pending.pop(trial_id, None)
        if point is None or error or not result or self._metric not in result:
            return
        value = result[self._metric]
        try:
            value = float(value)
        except (TypeError, ValueError):
            return
        if not math.isfinite(value):
            return
        with one_blas_thread():   # tell() fits the GP and picks the next point
            self._opt.tell(point, -value if self._mode == "max" else value)

    def add_evaluated_point(self, parameters, value, error=False, pruned=False, intermediate_values=None):
        """A trial it did not suggest (a unit started again after Ray's state of it was lost), told as one it did."""
        flat = flatten_dict(parameters, delimiter="/")
        self._pending["told"] = [native(flat[name]) for name in self._names]
        self.on_trial_complete("told", {self._metric: value}, error=error)

    # -- asking while trials are pending ------------------------------------------------
    def _ask(self) -> list:
        if not self._pending or len(self._opt.Xi) < self._opt.n_initial_points_:
            point = self._opt.ask()   # no model yet: each ask draws a new random point
        else:
            liar = self._opt.copy(random_state=self._rng.randint(0, 2**31 - 1))
            lie = max(self._opt.yi) if self._opt.yi else 0.0
            pending = list(self._pending.values())
            liar.tell(pending, [lie] * len(pending))
            point = liar.ask()
        point = [native(v) for v in point]
        taken = list(self._pending.values()) + [list(x) for x in self._opt.Xi]
        for _ in range(50):   # tiny discrete spaces can run out of fresh points; then repeat one
            if point not in taken:
                break
            point = [native(v) for v in self._opt.space.rvs(random_state=self._rng)[0]]
        return point

    # -- persistence (Tuner.restore) ----------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))


class SkoptStrategy(StrategyBase):
    name = "skopt"
    library_warmup = 10   # skopt.Optimizer n_initial_points

    def plan(self) -> SearchPlan:
        searcher = SkoptSearcher(metric=self.metric, mode=self.mode, n_initial_points=self.warmup,
                                 random_state=self.seed, base_estimator="GP")
        return self.searched(searcher, f"GP-BO (scikit-optimize, gp_hedge), {self.warmup} random warm-up trials "
                                       f"of {self.budget}")
