"""``tpe``: Tree-structured Parzen Estimators (hyperopt) through Ray Tune's HyperOptSearch.

The random warm-up (hyperopt's ``n_startup_jobs``, Ray's ``n_initial_points``) is sized
to the budget; at Ray's default of 20 a 15-trial study would never leave random search.

A conditional space (``head: {family: sub-space}``, see :mod:`ser_tune.search.space`) is handed to
hyperopt as what it natively searches: a nested ``hp.choice`` of the head families, each with its own
settings, so TPE models a branch's settings only on the trials that used that branch. The searcher's
config then holds the chosen branch as a mapping under ``head``; :func:`nested_config` (the plan's
decode) flattens it back to ``head`` and ``<head>.<setting>`` values.

>>> from ser_tune.search.space import paper_space
>>> plan = TPEStrategy(paper_space(), budget=15, seed=0).plan()
>>> plan.num_samples, plan.warmup
(15, 5)
>>> plan.notes
'TPE (hyperopt), 5 random warm-up trials of 15'
>>> nested_config({"head": {"head": "logreg", "logreg.C": 0.5}, "lr": 1e-3})
{'lr': 0.001, 'head': 'logreg', 'logreg.C': 0.5}
"""
from __future__ import annotations

import copy
import sys

from ray.tune.search.hyperopt import HyperOptSearch

from ser_tune.search.base import SearchPlan, StrategyBase, native
from ser_tune.search.space import Param, split_branch, to_tune_space


def hyperopt_space(space: dict[str, Param]) -> dict:
    """The space as hyperopt's own: plain settings as they are, ``head`` a nested ``hp.choice`` of one
    mapping per family ({"head": family, "<family>.<setting>": domain, ...})."""
    from hyperopt import hp

    plain = {name: p for name, p in space.items() if name != "head" and split_branch(name)[0] is None}
    out = HyperOptSearch.convert_search_space(to_tune_space(plain)) if plain else {}
    def branch(head: str) -> dict:
        own = {name: p for name, p in space.items() if split_branch(name)[0] == head}
        return {"head": head, **(HyperOptSearch.convert_search_space(to_tune_space(own)) if own else {})}
    out["head"] = hp.choice("head", [branch(head) for head in space["head"].values])
    return out


def nested_config(config: dict) -> dict:
    """A config of :func:`hyperopt_space` as flat setting values (numpy scalars made Python's)."""
    out = {key: native(value) for key, value in config.items() if not isinstance(value, dict)}
    for value in config.values():
        if isinstance(value, dict):
            out.update({key: native(v) for key, v in value.items()})
    return out


class TellableHyperOptSearch(HyperOptSearch):
    """HyperOptSearch that can be told a trial it did not suggest (a unit started again after Ray's state of it
    was lost): the point joins hyperopt's trials as if suggested, then completes as a suggested one does."""

    def add_evaluated_point(self, parameters, value, error=False, pruned=False, intermediate_values=None):
        if any(isinstance(v, dict) for v in parameters.values()):   # hyperopt's nested choice: not told
            raise NotImplementedError("a conditional space's points are not told to hyperopt")
        point = copy.deepcopy(parameters)
        self._convert_categories_to_indices(point)
        [tid] = self._hpopt_trials.new_trial_ids(1)
        self._hpopt_trials.insert_trial_docs([sys.modules["hyperopt.fmin"].generate_trial(tid, point)])
        self._hpopt_trials.refresh()
        self._live_trial_mapping["told"] = (tid, None)
        self.on_trial_complete("told", {self.metric: value}, error=error or value is None)


class TPEStrategy(StrategyBase):
    name = "tpe"
    library_warmup = 20   # Ray's HyperOptSearch n_initial_points

    def plan(self) -> SearchPlan:
        space = self._require_space()
        conditional = any(split_branch(name)[0] is not None for name in space)
        searcher = TellableHyperOptSearch(space=hyperopt_space(space) if conditional else None,
                                  metric=self.metric, mode=self.mode,
                                  n_initial_points=self.warmup, random_state_seed=self.seed)
        given = {"param_space": {}, "decode": nested_config} if conditional else {}
        return self.searched(searcher, f"TPE (hyperopt), {self.warmup} random warm-up trials of {self.budget}"
                             + (", head families as a nested choice" if conditional else ""), **given)
