"""Every head family in one conditional space: parsing, and a trial's config holding only the settings
that apply to its head, whichever searcher sampled it."""
from __future__ import annotations

import pandas as pd
import pytest
from ray.tune.search.sample import Domain

from ser_tune.search import make_plan
from ser_tune.search.space import SpaceError, parse_space, space_to_raw, to_tune_space
from ser_tune.training.settings import applicable
from ser_tune.training.trainable import StudyContext

RAW = {
    "normalize": {"choice": ["none", "speaker"]},
    "pooling": {"choice": ["mean", "meanstd"]},
    "head": {
        "logreg": {"C": {"loguniform": [1.0e-4, 10.0]}, "layer": {"choice": ["all", 3]}},
        "linear": {"lr": {"loguniform": [1.0e-5, 1.0e-3]}, "weight_decay": {"loguniform": [1.0e-4, 1.0]},
                   "layer": {"choice": ["weighted", "all"]}},
        "mlp": {"lr": {"loguniform": [1.0e-5, 1.0e-3]}, "head_hidden": {"choice": [64, 256]}},
    },
}
# what each head's trial may hold: the shared settings, the fixed ones that apply, its branch's
ALLOWED = {"logreg": {"normalize", "pooling", "head", "C", "layer", "max_length"},
           "linear": {"normalize", "pooling", "head", "lr", "weight_decay", "layer", "max_length", "num_epochs",
                      "unfreeze"},
           "mlp": {"normalize", "pooling", "head", "lr", "head_hidden", "max_length", "num_epochs", "unfreeze"}}
FIXED = {"max_length": 3.0, "num_epochs": 20, "unfreeze": "none"}


def test_a_conditional_space_is_each_branchs_settings_beside_the_choice_of_head():
    space = parse_space(RAW)
    assert space["head"].values == ("logreg", "linear", "mlp")
    assert {"logreg.C", "logreg.layer", "linear.lr", "linear.weight_decay", "mlp.lr", "mlp.head_hidden"} <= set(space)
    assert space["logreg.C"].kind == "loguniform"
    assert parse_space(space_to_raw(space)) == space


@pytest.mark.parametrize("raw, message", [
    ({"head": {"logreg": {"lr": {"uniform": [0.1, 1.0]}}}}, r"space\.head\.logreg\.lr: 'lr' does not apply to head logreg"),
    ({"head": {"logreg": {"layer": {"choice": ["weighted", 2]}}}}, r"space\.head\.logreg\.layer.*trained head"),
    ({"head": {"svm": {}}}, r"space\.head\.svm: not a head family"),
    ({"head": {"mlp": {"head": {"choice": ["mlp"]}}}}, r"space\.head\.mlp\.head"),
])
def test_a_bad_branch_is_named(raw, message):
    with pytest.raises(SpaceError, match=message):
        parse_space(raw)


def test_applicable_keeps_the_chosen_branch_and_drops_other_heads_settings():
    values = {"head": "logreg", "lr": 1e-3, "num_epochs": 9, "logreg.C": 0.5, "mlp.lr": 1e-4, "normalize": "speaker"}
    assert applicable(values) == {"head": "logreg", "C": 0.5, "normalize": "speaker"}
    assert applicable({**values, "head": "mlp"}) == {"head": "mlp", "lr": 1e-4, "num_epochs": 9,
                                                     "normalize": "speaker"}


@pytest.mark.parametrize("strategy", ["random", "gp", "skopt"])
def test_a_setting_that_does_not_apply_is_absent_from_the_trials_config(strategy):
    """Configs as each searcher's plan samples them (its param_space's domains), decoded as a trial
    decodes them: only the settings of the trial's own head, every one a valid setting."""
    plan = make_plan(strategy, parse_space(RAW), budget=30, seed=0)
    context = StudyContext(table=pd.DataFrame(), assignments=[], labels=[], encoder_spec="tiny-whisper",
                           cache_root="", fixed=FIXED, decode=plan.decode)
    heads = set()
    for seed in range(30):
        config = {name: domain.sample(random_state=seed) if isinstance(domain, Domain) else domain
                  for name, domain in plan.param_space.items()}
        chosen = context.chosen(config)
        heads.add(chosen["head"])
        assert set(chosen) <= ALLOWED[chosen["head"]], chosen
        settings = context.settings_for(config)
        if chosen["head"] == "logreg":
            assert "lr" not in chosen and "num_epochs" not in chosen and settings.C == chosen["C"]
    assert heads == {"logreg", "linear", "mlp"}


def test_the_flat_space_samples_every_branch_setting():
    tune_space = to_tune_space(parse_space(RAW))
    assert {"logreg.C", "mlp.head_hidden", "head"} <= set(tune_space)


def test_tpe_searches_the_head_families_as_hyperopts_nested_choice():
    """TPE gets the conditional space natively (a nested hp.choice): its suggestions, through the warm-up
    and after it, decode to the settings of one head only."""
    plan = make_plan("tpe", parse_space(RAW), budget=12, seed=0)
    assert plan.param_space == {}           # the searcher holds the space
    searcher = plan.searcher.searcher       # under the concurrency limiter
    context = StudyContext(table=pd.DataFrame(), assignments=[], labels=[], encoder_spec="tiny-whisper",
                           cache_root="", fixed=FIXED, decode=plan.decode)
    heads = []
    for i in range(12):
        config = searcher.suggest(f"t{i}")
        assert isinstance(config["head"], dict)          # the branch hyperopt chose, with its own settings
        chosen = context.chosen(config)
        assert set(chosen) <= ALLOWED[chosen["head"]], chosen
        context.settings_for(config)
        heads.append(chosen["head"])
        searcher.on_trial_complete(f"t{i}", {"val_bca": 0.9 if chosen["head"] == "logreg" else 0.3})
    assert set(heads[:plan.warmup]) | set(heads) >= {"logreg"} and len(set(heads)) >= 2
