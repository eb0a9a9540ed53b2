"""``grid``: exhaustive grid search (Ray Tune's BasicVariantGenerator over ``tune.grid_search``).

The grid is a mapping name -> list of values (default: :func:`~ser_tune.search.space.default_grid`
of the space, which is :func:`~ser_tune.search.space.paper_grid` for the paper's space).

Order: BasicVariantGenerator's nested-loop order over the parameter names sorted
alphabetically, the first name varying fastest (:func:`~ser_tune.search.space.grid_points`);
for the paper grid: lr fastest, then max_length, num_epochs, unfreeze_epoch slowest, so
its first 15 points all train for 1 epoch. A grid no larger than the budget runs whole
(``num_samples=1``, so fewer trials than the budget when it is smaller). A larger grid
runs only its first ``budget`` points in that order: they are handed to the generator as
``points_to_evaluate``, each replacing one of ``budget`` samples.

>>> grid = {"lr": [1e-4, 1e-3], "num_epochs": [2, 4, 6]}
>>> plan = GridStrategy(None, budget=4, seed=0, grid=grid).plan()
>>> plan.num_samples, [ (p["lr"], p["num_epochs"]) for p in plan.searcher._points_to_evaluate]
(4, [(0.0001, 2), (0.001, 2), (0.0001, 4), (0.001, 4)])
>>> GridStrategy(None, budget=10, seed=0, grid=grid).plan().notes
'grid search, all 6 points (budget 10)'
"""
from __future__ import annotations

from ray.tune.search.basic_variant import BasicVariantGenerator

from ser_tune.search.base import SearchPlan, StrategyBase, StrategyError
from ser_tune.search.space import default_grid, grid_points, grid_size, parse_grid, to_grid_space


class GridStrategy(StrategyBase):
    name = "grid"
    model_based = False

    def plan(self) -> SearchPlan:
        if self.grid is not None:
            grid = parse_grid(self.grid)
        elif self.space:
            grid = default_grid(self.space)
        else:
            raise StrategyError("grid: needs a grid (or a space to derive one from)")
        size = grid_size(grid)
        # BasicVariantGenerator ignores TuneConfig(max_concurrent_trials): it takes its own limit.
        if size <= self.budget:
            searcher = BasicVariantGenerator(max_concurrent=self.max_concurrent)
            num_samples, expected, notes = 1, size, f"grid search, all {size} points (budget {self.budget})"
        else:
            first = grid_points(grid)[:self.budget]
            searcher = BasicVariantGenerator(points_to_evaluate=first, max_concurrent=self.max_concurrent)
            num_samples = expected = self.budget
            notes = f"grid search, first {self.budget} of {size} points in Ray's grid order"
        return self.searched(searcher, notes, limit=False, param_space=to_grid_space(grid), num_samples=num_samples,
                             warmup=0, expected_trials=expected)
