"""Search strategies without a Tuner: plans, argument errors, and each searcher driven through the
Searcher calls Ray Tune's controller makes (set_search_properties / suggest / on_trial_complete)."""
import doctest
import importlib.util
import inspect
import math

import numpy as np
import pytest
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.bayesopt import BayesOptSearch
from ray.tune.search.hyperopt import HyperOptSearch

import ser_tune.search
from ser_tune.search import OPTUNA_STRATEGIES, STRATEGY_NAMES, StrategyError, default_warmup, make_plan
from ser_tune.search import base, constrained, gp, grid, random, relax, skopt, tpe
from ser_tune.search.relax import RelaxedDecoder
from ser_tune.search.skopt import SkoptSearcher
from ser_tune.objectives import TrialConstraints
from ser_tune.search.space import SpaceError, paper_space, parse_space
from ser_tune.training.settings import SettingsError, TrialSettings

SPACE = parse_space({"lr": {"loguniform": [1e-6, 1e-2]}, "num_epochs": {"int": [1, 10]},
                     "max_length": {"choice": [1.0, 2.0, 3.0, 4.0]}})
OPTIMUM = {"lr": 10 ** -3.5, "num_epochs": 7, "max_length": 3.0}   # objective 1.0 there


def objective(s: dict) -> float:
    """A cheap stand-in for val_bca with its maximum 1.0 at OPTIMUM and minimum about -0.45."""
    return (1 - (math.log10(s["lr"]) + 3.5) ** 2 / 10 - 0.02 * (s["num_epochs"] - 7) ** 2
            - 0.1 * (s["max_length"] != 3.0))


def random_median() -> float:
    rng = np.random.default_rng(0)
    return float(np.median([objective({"lr": 10 ** rng.uniform(-6, -2), "num_epochs": int(rng.integers(1, 11)),
                                       "max_length": float(rng.choice([1.0, 2.0, 3.0, 4.0]))})
                            for _ in range(4000)]))


def drive(plan, n: int, *, concurrency: int = 1, mode: str = "max", value=objective,
          polls: int = 1) -> list[tuple[dict, float]]:
    """Run n trials of `value` through the plan's searcher as Tune's controller would."""
    searcher = plan.searcher
    assert searcher.set_search_properties("val_bca", mode, plan.param_space)
    done, pending, asked = [], [], 0
    while len(done) < n:
        while len(pending) < concurrency and asked < n:
            for _ in range(polls):   # Tune's controller asks again and again while trials run
                config = searcher.suggest(f"t{asked}")
                assert config != Searcher.FINISHED, f"{plan.strategy} ended the study after {asked} of {n} trials"
                if config is not None:
                    break
            if config is None:   # waiting for results (e.g. the end of a warm-up)
                assert pending, f"{plan.strategy} suggested nothing with no trial running"
                break
            pending.append((f"t{asked}", config))
            asked += 1
        trial_id, config = pending.pop(0)
        settings = plan.decode(config)
        result = value(settings)
        done.append((settings, result))
        searcher.on_trial_complete(trial_id, {"val_bca": result})
    return done


# -- plans ------------------------------------------------------------------------------

def installed_strategies() -> list[str]:
    """Every strategy whose searcher library is installed (nsga2 and motpe need optuna)."""
    return [name for name in STRATEGY_NAMES if name not in OPTUNA_STRATEGIES or importlib.util.find_spec("optuna")]


def test_registry_and_unknown_strategy():
    assert set(STRATEGY_NAMES) == {"tpe", "gp", "skopt", "grid", "random", "nsga2", "motpe"}
    with pytest.raises(StrategyError, match="unknown strategy 'xyz'; choose from tpe, gp, skopt, grid, random, "
                                            "nsga2, motpe"):
        make_plan("xyz", SPACE, budget=5, seed=0)
    assert issubclass(StrategyError, ValueError)


def test_ray_defaults_would_make_tpe_and_gp_random_search():
    # Why warm-ups are sized to the budget: Ray's own defaults exceed a 15-trial budget.
    assert inspect.signature(HyperOptSearch).parameters["n_initial_points"].default == 20
    assert inspect.signature(BayesOptSearch).parameters["random_search_steps"].default == 10


@pytest.mark.parametrize("budget, warmup", [(1, 1), (2, 1), (3, 2), (6, 2), (8, 2), (15, 5), (100, 30)])
def test_default_warmup_is_sized_to_the_budget(budget, warmup):
    assert default_warmup(budget) == warmup
    assert default_warmup(budget) < budget or budget == 1


def test_library_warmup_is_each_librarys_own_default_capped_at_the_budget():
    import optuna
    import skopt as scikit_optimize

    shipped = {"tpe": inspect.signature(HyperOptSearch).parameters["n_initial_points"].default,
               "gp": inspect.signature(BayesOptSearch).parameters["random_search_steps"].default,
               "skopt": inspect.signature(scikit_optimize.Optimizer).parameters["n_initial_points"].default,
               "motpe": inspect.signature(optuna.samplers.TPESampler).parameters["n_startup_trials"].default,
               "nsga2": inspect.signature(optuna.samplers.NSGAIISampler).parameters["population_size"].default}
    objectives = {"val_bca": "max", "latency_ms_per_s": "min"}
    for name, default in shipped.items():
        several = objectives if name in OPTUNA_STRATEGIES else None
        assert make_plan(name, SPACE, budget=100, seed=0, warmup=base.LIBRARY, objectives=several).warmup == default
        capped = make_plan(name, SPACE, budget=12, seed=0, warmup=base.LIBRARY, objectives=several)
        assert capped.warmup == min(default, 12), name
    assert "20 random warm-up trials of 30" in make_plan("tpe", SPACE, budget=30, seed=0, warmup="library").notes
    assert make_plan("random", SPACE, budget=30, seed=0, warmup="library").warmup == 30   # nothing to warm up
    with pytest.raises(StrategyError, match="or 'library'"):
        make_plan("tpe", SPACE, budget=30, seed=0, warmup="libary")


def test_model_based_plans_are_seeded_limited_and_maximise():
    plan = make_plan("tpe", SPACE, budget=15, seed=3, max_concurrent=2)
    assert isinstance(plan.searcher, ConcurrencyLimiter) and plan.searcher.max_concurrent == 2
    inner = plan.searcher.searcher
    assert isinstance(inner, HyperOptSearch) and inner.metric == "val_bca" and inner.mode == "max"
    assert inner.metric_op == -1.0   # hyperopt minimises the negated metric
    assert inner.algo.keywords["n_startup_jobs"] == 5
    assert (plan.num_samples, plan.warmup) == (15, 5)

    plan = make_plan("gp", SPACE, budget=15, seed=3, warmup=4)
    inner = plan.searcher.searcher
    assert isinstance(inner, BayesOptSearch) and inner._metric_op == 1.0 and inner.mode == "max"
    assert (inner.random_search_trials, inner._random_state, inner._patience) == (4, 3, 15)
    assert plan.warmup == 4 and "4 random warm-up trials of 15" in plan.notes

    plan = make_plan("skopt", SPACE, budget=15, seed=3)
    inner = plan.searcher.searcher
    assert isinstance(inner, SkoptSearcher) and inner.mode == "max" and inner._n_initial_points == 5


def test_random_and_grid_plans():
    plan = make_plan("random", SPACE, budget=9, seed=1, max_concurrent=2)
    assert isinstance(plan.searcher, BasicVariantGenerator) and plan.searcher.max_concurrent == 2
    assert (plan.num_samples, plan.warmup) == (9, 9)

    plan = make_plan("grid", SPACE, budget=5, seed=1, grid={"lr": [1e-4, 1e-3], "num_epochs": [1, 2, 3]})
    assert isinstance(plan.searcher, BasicVariantGenerator) and (plan.num_samples, plan.warmup) == (5, 0)
    plan = make_plan("grid", SPACE, budget=6, seed=1, grid={"lr": [1e-4, 1e-3], "num_epochs": [1, 2, 3]})
    assert plan.num_samples == 1 and "all 6 points" in plan.notes
    plan = make_plan("grid", paper_space(), budget=15, seed=1)   # no grid: the paper grid from the paper space
    assert "first 15 of 144" in plan.notes


@pytest.mark.parametrize("kwargs, message", [
    (dict(budget=0), "budget must be a positive integer"),
    (dict(budget=2.5), "budget must be a positive integer"),
    (dict(seed="0"), "seed must be an integer"),
    (dict(mode="maximise"), "mode must be 'max' or 'min'"),
    (dict(max_concurrent=0), "max_concurrent must be a positive integer"),
    (dict(warmup=0), r"warmup must be an integer in \[1, budget=8\]"),
    (dict(warmup=9), r"warmup must be an integer in \[1, budget=8\]"),
])
def test_bad_strategy_arguments(kwargs, message):
    args = dict(budget=8, seed=0) | kwargs
    with pytest.raises(StrategyError, match=f"tpe: {message}"):
        make_plan("tpe", SPACE, **args)


def test_unknown_parameter_is_refused_by_every_strategy():
    for name in installed_strategies():
        with pytest.raises(SpaceError, match="space.epochs: 'epochs' is not a trial setting"):
            make_plan(name, {"epochs": {"int": [1, 3]}}, budget=4, seed=0)


# -- gp's float relaxation ----------------------------------------------------------------

def test_gp_decoder_covers_every_value_and_clamps():
    space = paper_space()
    decode = RelaxedDecoder(space)
    ints = {decode({"num_epochs__relaxed": x})["num_epochs"] for x in np.linspace(0.5, 10.5, 1001)}
    assert ints == set(range(1, 11))
    choices = {decode({"max_length__index": x})["max_length"] for x in np.linspace(-0.5, 5.5, 601)}
    assert choices == set(space["max_length"].values)
    assert decode({"lr__log10": -3.0})["lr"] == pytest.approx(1e-3)
    assert decode({"lr__log10": -2.0})["lr"] == 1e-3          # clamped to the space
    assert decode({"unfreeze_epoch__relaxed": 5.5})["unfreeze_epoch"] == 5
    assert decode({"unfreeze_epoch__relaxed": -0.5})["unfreeze_epoch"] == 0
    assert decode({"batch_size": 16}) == {"batch_size": 16}   # fixed settings pass through


def test_gp_undecoded_config_is_refused_not_misread():
    plan = make_plan("gp", paper_space(), budget=4, seed=0)
    raw = {name: domain.sample(random_state=0) for name, domain in plan.param_space.items()}
    with pytest.raises(SettingsError, match="is not known"):
        TrialSettings.from_config(raw)
    TrialSettings.from_config(plan.decode(raw))


def test_gp_decoded_configs_are_valid_settings():
    plan = make_plan("gp", paper_space(), budget=10, seed=0)
    space = paper_space()
    for settings, _ in drive(plan, 10, value=lambda s: -abs(s["num_epochs"] - 4) - s["unfreeze_epoch"]):
        assert isinstance(settings["num_epochs"], int) and 1 <= settings["num_epochs"] <= 10
        assert isinstance(settings["unfreeze_epoch"], int) and 0 <= settings["unfreeze_epoch"] <= 5
        assert settings["max_length"] in space["max_length"].values
        assert 1e-6 <= settings["lr"] <= 1e-3
        TrialSettings.from_config(settings)


def test_gp_suggests_fresh_points_while_trials_run():
    # With no new result the GP's argmax repeats; stock BayesOptSearch answers None to each repeat
    # and, polled by Tune while trials run, ends the study after `patience` repeats.
    plan = make_plan("gp", parse_space({"num_epochs": {"int": [1, 3]}}), budget=12, seed=0, max_concurrent=4)
    drive(plan, 4, value=lambda s: float(s["num_epochs"]))
    asked = [plan.searcher.suggest(f"p{i}") for i in range(3)]   # all pending together
    assert all(asked)
    assert len({round(c["num_epochs__relaxed"], 5) for c in asked}) == 3


def test_gp_spends_the_budget_under_concurrency():
    plan = make_plan("gp", parse_space({"num_epochs": {"int": [1, 3]}}), budget=12, seed=0, max_concurrent=2)
    assert len(drive(plan, 12, concurrency=2, value=lambda s: float(s["num_epochs"]), polls=30)) == 12


def test_gp_replaces_failed_warmup_trials():
    # Stock BayesOptSearch waits forever for the result of a failed warm-up trial.
    plan = make_plan("gp", SPACE, budget=6, seed=0, warmup=2, max_concurrent=2)
    searcher = plan.searcher
    searcher.set_search_properties("val_bca", "max", plan.param_space)
    assert searcher.suggest("a") and searcher.suggest("b")
    searcher.on_trial_complete("a", None, error=True)
    searcher.on_trial_complete("b", {"other_metric": 1.0})     # no val_bca: not told, counts as failed
    c, d = searcher.suggest("c"), searcher.suggest("d")        # two new random warm-up trials
    assert c and d and c != d
    for trial_id, config in (("c", c), ("d", d)):
        searcher.on_trial_complete(trial_id, {"val_bca": objective(plan.decode(config))})
    assert len(searcher.searcher.optimizer.space) == 2          # the GP has both warm-up results
    assert searcher.suggest("e")


# -- the searchers maximise ---------------------------------------------------------------

@pytest.mark.parametrize("strategy, budget", [("tpe", 20), ("gp", 12), ("skopt", 12)])
def test_searchers_find_the_maximum(strategy, budget):
    best = max(v for _, v in drive(make_plan(strategy, SPACE, budget=budget, seed=0), budget))
    # Within 0.15 of the optimum 1.0: beyond a minimiser (which ends near -0.45) and above random's median.
    assert best >= 0.85
    assert best > random_median() + 0.2


def test_gp_minimises_only_when_asked():
    # The reference code's GP-BO minimised BCA by a sign slip; mode="min" must look the other way.
    maximised = drive(make_plan("gp", SPACE, budget=8, seed=0, mode="max"), 8, mode="max")
    minimised = drive(make_plan("gp", SPACE, budget=8, seed=0, mode="min"), 8, mode="min")
    guided_max = [v for _, v in maximised[2:]]   # after the 2 random warm-up trials
    guided_min = [v for _, v in minimised[2:]]
    assert np.mean(guided_max) > random_median() > np.mean(guided_min)


# -- skopt's Searcher ---------------------------------------------------------------------

def _skopt(n_initial_points=2, seed=0) -> SkoptSearcher:
    searcher = SkoptSearcher(metric="val_bca", mode="max", n_initial_points=n_initial_points, random_state=seed)
    assert searcher.set_search_properties(None, None, make_plan("skopt", SPACE, budget=8, seed=0).param_space)
    return searcher


def test_skopt_pending_suggestions_are_distinct():
    searcher = _skopt()
    for i in range(3):   # past the random warm-up, so the GP makes the suggestions
        config = searcher.suggest(f"w{i}")
        searcher.on_trial_complete(f"w{i}", {"val_bca": objective(config)})
    pending = [searcher.suggest(f"p{i}") for i in range(4)]
    assert len({tuple(sorted(c.items())) for c in pending}) == 4
    assert len(searcher._opt.yi) == 3


def test_skopt_tells_negated_values_and_skips_failures():
    searcher = _skopt()
    ids = [f"t{i}" for i in range(5)]
    configs = [searcher.suggest(t) for t in ids]
    searcher.on_trial_complete(ids[0], {"val_bca": 0.7})
    searcher.on_trial_complete(ids[1], None, error=True)
    searcher.on_trial_complete(ids[2], {"other": 1.0})
    searcher.on_trial_complete(ids[3], {"val_bca": float("nan")})
    searcher.on_trial_complete("never-suggested", {"val_bca": 0.9})
    assert searcher._opt.yi == [-0.7]   # skopt minimises
    assert list(searcher._pending) == [ids[4]]
    assert configs[0]["lr"] > 0 and isinstance(configs[0]["num_epochs"], int)


def test_skopt_save_restore_round_trip(tmp_path):
    searcher = _skopt()
    for i in range(4):
        config = searcher.suggest(f"t{i}")
        if i < 3:
            searcher.on_trial_complete(f"t{i}", {"val_bca": objective(config)})
    path = tmp_path / "skopt.pkl"
    searcher.save(str(path))

    restored = SkoptSearcher()
    restored.restore(str(path))
    assert (restored.metric, restored.mode) == ("val_bca", "max")
    assert list(restored._pending) == ["t3"]
    assert restored.suggest("t4") == searcher.suggest("t4")
    restored.on_trial_complete("t3", {"val_bca": 0.5})
    assert len(restored._opt.yi) == 4


@pytest.mark.parametrize("strategy", ["tpe", "gp", "skopt"])
def test_searchers_restore_through_tunes_checkpoint_dir(strategy, tmp_path):
    # Tuner.restore goes through save_to_dir / restore_from_dir on the ConcurrencyLimiter.
    plan = make_plan(strategy, SPACE, budget=6, seed=0)
    drive(plan, 3)
    plan.searcher.save_to_dir(str(tmp_path))
    fresh = make_plan(strategy, SPACE, budget=6, seed=1).searcher
    fresh.restore_from_dir(str(tmp_path))
    assert fresh.searcher.suggest("n") == plan.searcher.searcher.suggest("n")


def test_module_doctests():
    for module in (ser_tune.search, base, constrained, gp, grid, random, relax, skopt, tpe):
        assert doctest.testmod(module).failed == 0, module.__name__


# -- constraints and several objectives ---------------------------------------------------------

CONSTRAINTS = TrialConstraints(("latency_ms_per_s <= 50",), ("val_bca", "latency_ms_per_s"), "val_bca", "max",
                               worst=0.0)


class Recorder(Searcher):
    """A searcher that only records what it is told."""

    def __init__(self):
        super().__init__(metric="val_bca", mode="max")
        self.told = {}

    def suggest(self, trial_id):
        return {"lr": 1e-3}

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told[trial_id] = result


@pytest.mark.parametrize("strategy", ["tpe", "gp", "skopt"])
def test_model_based_searchers_are_told_a_penalty_for_infeasible_trials(strategy):
    plan = make_plan(strategy, SPACE, budget=6, seed=0, constraints=CONSTRAINTS)
    assert isinstance(plan.searcher, constrained.ConstrainedLimiter) and "penalty" in plan.notes
    limiter = constrained.ConstrainedLimiter(Recorder(), max_concurrent=2, constraints=CONSTRAINTS)
    for trial_id in ("fast", "slow", "failed"):
        limiter.suggest(trial_id)
    fast = {"val_bca": 0.6, "latency_ms_per_s": 20.0}
    slow = {"val_bca": 0.9, "latency_ms_per_s": 80.0}
    limiter.on_trial_complete("fast", fast)
    limiter.on_trial_complete("slow", slow)
    assert limiter.searcher.told["fast"] == fast
    assert limiter.searcher.told["slow"]["val_bca"] < 0.0 < 0.6 and slow["val_bca"] == 0.9   # caller's dict untouched
    limiter.suggest("failed")
    limiter.on_trial_complete("failed", None, error=True)
    assert limiter.searcher.told["failed"] is None


def test_without_constraints_plans_are_as_before():
    for strategy in ("tpe", "gp", "skopt"):
        plan = make_plan(strategy, SPACE, budget=6, seed=0)
        assert type(plan.searcher) is ConcurrencyLimiter and not plan.several_metrics
    notes = make_plan("random", SPACE, budget=6, seed=0, objectives={"val_bca": "max", "model_bytes": "min"},
                      constraints=CONSTRAINTS).notes
    assert "searches val_bca alone" in notes and "constraints rank its trials" in notes


def test_the_first_objective_must_be_the_metric():
    with pytest.raises(StrategyError, match="the first objective must be the metric 'val_bca'"):
        make_plan("tpe", SPACE, budget=6, seed=0, objectives={"latency_ms_per_s": "min", "val_bca": "max"})


@pytest.mark.parametrize("strategy", ["nsga2", "motpe"])
def test_optuna_strategies_search_every_objective_and_store_constraints(strategy):
    optuna = pytest.importorskip("optuna")
    from ser_tune.search import motpe, nsga2, optuna_search

    objectives = {"val_bca": "max", "latency_ms_per_s": "min"}
    plan = make_plan(strategy, SPACE, budget=8, seed=0, objectives=objectives, constraints=CONSTRAINTS)
    assert plan.several_metrics and plan.warmup == 2 and "sampler takes the constraints" in plan.notes
    searcher = plan.searcher.searcher
    assert searcher.metric == ["val_bca", "latency_ms_per_s"] and searcher.mode == ["max", "min"]
    assert plan.searcher.set_search_properties(None, None, plan.param_space)
    for i in range(8):   # a trade-off: more epochs, better and slower
        config = plan.searcher.suggest(f"t{i}")
        plan.searcher.on_trial_complete(f"t{i}", {"val_bca": objective(config),
                                                  "latency_ms_per_s": 10.0 * config["num_epochs"]})
    trials = searcher._ot_study.trials   # OptunaSearch keeps its Optuna study there
    assert len(trials) == 8 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    for trial in trials:
        latency = trial.values[1]
        assert trial.constraints == {"latency_ms_per_s <= 50": 0.0 if latency <= 50 else latency - 50}
    single = make_plan(strategy, SPACE, budget=8, seed=0)
    assert not single.several_metrics and single.searcher.searcher.metric == "val_bca"
    for module in (nsga2, motpe, optuna_search):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_a_study_with_library_warmups_hands_them_to_its_units(tmp_path):
    from ser_tune.config import experiment_from_dict
    from ser_tune.strategies import StrategyStudy
    from ser_tune.study.folder import StudyFolder
    from ser_tune.study.session import Cluster

    exp = experiment_from_dict({
        "name": "warm", "corpus": {"name": "synthetic", "root": str(tmp_path / "corpus"),
                                   "options": {"clips_per_cell": 1}},
        "storage": str(tmp_path / "studies"), "strategies": ["tpe", "gp", "random"],
        "budget": {"trials": 30, "warmup": "library"}})
    study = StrategyStudy(exp)
    folder = StudyFolder.create(exp.storage, exp.name)
    study.prepare(folder)
    cluster = Cluster(cpus=2, largest_node=2, nodes=1, dashboard=None)
    units = {s: study.strategy_unit(folder, s, 0, 0, cluster) for s in ("tpe", "gp", "random")}
    assert {s: u.info["warmup"] for s, u in units.items()} == {"tpe": 20, "gp": 10, "random": 30}
    assert units["tpe"].info["notes"].startswith("TPE (hyperopt), 20 random warm-up trials of 30")


def test_each_outer_fold_searches_with_its_own_seed(tmp_path):
    from ser_tune.config import experiment_from_dict
    from ser_tune.strategies import StrategyStudy
    from ser_tune.study.folder import StudyFolder
    from ser_tune.study.session import Cluster

    exp = experiment_from_dict({
        "name": "folds", "corpus": {"name": "synthetic", "root": str(tmp_path / "corpus"),
                                    "options": {"clips_per_cell": 1}},
        "storage": str(tmp_path / "studies"), "strategies": ["random"], "seed": 3,
        "objective": {"cv_folds": 2}, "evaluation": {"outer_folds": 3}})
    study = StrategyStudy(exp)
    folder = StudyFolder.create(exp.storage, exp.name)
    study.prepare(folder)
    cluster = Cluster(cpus=2, largest_node=2, nodes=1, dashboard=None)
    units = [study.strategy_unit(folder, "random", fold, 0, cluster) for fold in range(3)]
    assert units[0].info["seed"] == 3 and len({u.info["seed"] for u in units}) == 3
    assert [u.info["seed"] for u in units] == [study.strategy_unit(folder, "random", f, 0, cluster).info["seed"]
                                               for f in range(3)]   # reproducible
    first = []
    for unit in units:   # random search's first draw differs between folds
        unit.searcher.add_configurations({unit.name: {"run": lambda config: None, "config": unit.param_space,
                                                      "num_samples": 1}})
        first.append(unit.searcher.next_trial().config["lr"])
    assert len(set(first)) == 3
    again = study.strategy_unit(folder, "random", 0, 0, cluster)   # the same seed: the same draws
    again.searcher.add_configurations({again.name: {"run": lambda config: None, "config": again.param_space,
                                                    "num_samples": 1}})
    assert again.searcher.next_trial().config["lr"] == first[0]
