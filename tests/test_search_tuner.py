"""Every strategy end to end through a real ray.tune.Tuner with a cheap function trainable."""
import math
import sys

import pytest
import ray
from ray import cloudpickle, tune

from ser_tune.search import make_plan
from ser_tune.search.space import grid_points, paper_space
from ser_tune.training.settings import TrialSettings

# One Ray start for the module (20-30 s on a busy 2-core machine), then a few seconds per Tuner run.
pytestmark = pytest.mark.slow

SPACE = paper_space()


def objective(s: dict) -> float:
    # maximum 1.0 at lr 10^-4, 7 epochs, unfreeze after 1, 3 s
    return (1 - (math.log10(s["lr"]) + 4) ** 2 / 10 - 0.02 * (s["num_epochs"] - 7) ** 2
            - 0.02 * (s["unfreeze_epoch"] - 1) ** 2 - 0.1 * (s["max_length"] != 3))


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    # Ray workers cannot import this test module: ship the trainable (and objective) by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    ray.shutdown()


def run(plan, tmp_path, *, fixed=None):
    decode = plan.decode

    def trainable(config):
        settings = TrialSettings.from_config(decode(config))   # what the real trainable does
        tune.report({"val_bca": objective(settings.to_dict())})

    tuner = tune.Tuner(
        trainable,
        param_space={**(fixed or {}), **plan.param_space},
        tune_config=tune.TuneConfig(search_alg=plan.searcher, num_samples=plan.num_samples, metric="val_bca",
                                    mode="max", reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name=plan.strategy, verbose=0),
    )
    return tuner.fit()


@pytest.mark.parametrize("strategy", ["tpe", "gp", "skopt", "random"])
def test_strategy_runs_exactly_its_budget(strategy, tmp_path):
    plan = make_plan(strategy, SPACE, budget=8, seed=0, max_concurrent=2)
    results = run(plan, tmp_path, fixed={"batch_size": 8, "unfreeze": "top:1"})
    assert len(results) == 8
    assert results.num_errors == 0 and results.num_terminated == 8
    decoded = [plan.decode(r.config) for r in results]
    for settings in decoded:
        assert settings["batch_size"] == 8 and settings["unfreeze"] == "top:1"   # fixed settings kept
        assert isinstance(settings["num_epochs"], int) and 1 <= settings["num_epochs"] <= 10
        assert isinstance(settings["unfreeze_epoch"], int) and 0 <= settings["unfreeze_epoch"] <= 5
        assert settings["max_length"] in SPACE["max_length"].values
        assert 1e-6 <= settings["lr"] <= 1e-3
    assert len({tuple(sorted(s.items())) for s in decoded}) >= 6   # the searcher explores
    best = results.get_best_result()
    assert best.metrics["val_bca"] == max(r.metrics["val_bca"] for r in results)


def test_grid_runs_the_first_budget_points_in_grid_order(tmp_path):
    grid = {"lr": [1e-5, 1e-4, 1e-3], "num_epochs": [2, 5], "unfreeze_epoch": [0, 1], "max_length": [3]}
    plan = make_plan("grid", SPACE, budget=5, seed=0, grid=grid, max_concurrent=2)
    results = run(plan, tmp_path)
    assert len(results) == 5 and results.num_errors == 0 and results.num_terminated == 5
    ran = [plan.decode(r.config) for r in sorted(results, key=lambda r: r.metrics["trial_id"])]
    assert ran == grid_points(grid)[:5]


def test_small_grid_runs_whole(tmp_path):
    grid = {"lr": [1e-4, 1e-3], "num_epochs": [2, 5]}
    plan = make_plan("grid", SPACE, budget=8, seed=0, grid=grid, max_concurrent=2)
    results = run(plan, tmp_path, fixed={"unfreeze_epoch": 0, "max_length": 3.0})
    assert len(results) == 4 and results.num_errors == 0
    assert sorted((r.config["lr"], r.config["num_epochs"]) for r in results) == sorted(
        (p["lr"], p["num_epochs"]) for p in grid_points(grid))


@pytest.mark.parametrize("strategy", ["nsga2", "motpe"])
def test_optuna_strategies_run_through_tunes_pickling_and_restore(strategy, tmp_path):
    """Tune pickles the searcher when the Tuner is built (tuner.pkl) and at every experiment snapshot;
    Tuner.restore unpickles both. optuna 5.1's NSGAIISampler holds a lock, which no pickle takes."""
    plan = make_plan(strategy, SPACE, budget=4, seed=0, max_concurrent=2,
                     objectives={"val_bca": "max", "latency_ms_per_s": "min"})
    assert plan.several_metrics

    def trainable(config):
        settings = plan.decode(config)
        tune.report({"val_bca": objective(settings), "latency_ms_per_s": 10.0 * settings["num_epochs"]})

    def tuner_config():
        return dict(param_space=plan.param_space,
                    tune_config=tune.TuneConfig(search_alg=plan.searcher, num_samples=plan.num_samples))

    tuner = tune.Tuner(trainable, **tuner_config(),
                       run_config=tune.RunConfig(storage_path=str(tmp_path), name=strategy, verbose=0))
    results = tuner.fit()
    assert len(results) == 4 and results.num_errors == 0 and results.num_terminated == 4

    restored = tune.Tuner.restore(str(tmp_path / strategy), trainable, param_space=plan.param_space)
    assert len(restored.fit()) == 4   # every trial had ended: none runs again
    again = make_plan(strategy, SPACE, budget=4, seed=0, max_concurrent=2,
                      objectives={"val_bca": "max", "latency_ms_per_s": "min"}).searcher
    again.restore_from_dir(str(tmp_path / strategy))   # the last snapshot's searcher
    study = again.searcher._ot_study
    assert len(study.trials) == 4 and {t.state.name for t in study.trials} == {"COMPLETE"}
    assert again.searcher._ot_study.sampler.told == 4   # the rebuilt sampler goes on from the told trials
    assert set(again.suggest("next")) == set(plan.param_space)
