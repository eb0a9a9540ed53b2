"""Experiment YAML files: the shipped examples load, defaults apply, and every error names file and field."""
import copy
import json
from pathlib import Path

import pytest
import yaml

from ser_tune.config import (QUICKSTART, ConfigError, default_experiment, experiment_from_dict,
                             load_experiment)
from ser_tune.search.space import paper_grid, paper_space, parse_space

REPO = Path(__file__).resolve().parents[1]
# Study experiments have a top-level corpus; other YAMLs there (e.g. twostage.yaml for
# ser_tune.adapt, with source/target corpora; ser_tune.active, with an active: block) follow their own schema.
EXAMPLES = sorted(p for p in (REPO / "experiments").glob("*.yaml")
                  if "corpus" in (raw := yaml.safe_load(p.read_text()) or {}) and "active" not in raw)


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"quickstart.yaml", "emodb_paper.yaml", "emodb.yaml", "ravdess.yaml", "cremad.yaml"} <= names


def _missing_encoder_folder(path: Path) -> str | None:
    """The encoder folder an example names (relative to the working directory, as resolve_spec looks
    too) when it is not here, e.g. ../shared/models/whisper-base-encoder on a clone without shared/."""
    spec = yaml.safe_load(path.read_text()).get("encoder", "")
    folder = spec.split(":", 1)[1] if spec.startswith("hf:../") else None
    return folder if folder and not (path.parent / folder).exists() and not (REPO / folder).exists() else None


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads_and_round_trips(path):
    if _missing_encoder_folder(path):   # refused at once, naming the field and the folder
        with pytest.raises(ConfigError, match=f"{path}: encoder: no encoder folder"):
            load_experiment(path)
        return
    exp = load_experiment(path)
    assert exp.name == path.stem and exp.source == path
    data = exp.to_dict()
    json.dumps(data)   # saved with the study
    data.pop("source")
    again = experiment_from_dict(copy.deepcopy(data))
    assert {k: v for k, v in again.to_dict().items() if k != "source"} == data


def test_quickstart_constant_matches_the_yaml_file():
    assert yaml.safe_load((REPO / "experiments" / "quickstart.yaml").read_text()) == QUICKSTART
    exp = default_experiment()
    from_file = load_experiment(REPO / "experiments" / "quickstart.yaml")
    assert {k: v for k, v in exp.to_dict().items() if k != "source"} == {
        k: v for k, v in from_file.to_dict().items() if k != "source"}
    assert exp.corpus.name == "synthetic" and exp.corpus.root is None
    assert exp.encoder == "tiny-whisper" and exp.strategies == ["tpe", "gp"]
    assert exp.budget.trials == 6 and exp.resources.cpus_per_trial == 1
    assert exp.trial == {"unfreeze": "top:1", "batch_size": 16}
    assert exp.space == parse_space({"lr": {"loguniform": [1e-4, 1e-2]}, "num_epochs": {"int": [2, 6]},
                                     "unfreeze_epoch": {"int": [0, 3]},
                                     "max_length": {"choice": [1.0, 1.5, 2.0]}})


def test_paper_and_speaker_independent_emodb_examples():
    paper = load_experiment(REPO / "experiments" / "emodb_paper.yaml")
    assert paper.split["kind"] == "random"            # the paper's speaker-dependent protocol
    assert paper.space == paper_space() and paper.grid == paper_grid()
    assert paper.strategies == ["tpe", "gp", "grid"] and paper.budget.trials == 15
    assert paper.resources.cpus_per_trial == 8 and paper.trial == {"unfreeze": "all"}
    assert paper.encoder.startswith("speechbrain:")
    assert paper.corpus.root == (REPO.parent / "shared" / "data" / "emodb").resolve()

    if _missing_encoder_folder(REPO / "experiments" / "emodb.yaml"):
        pytest.skip("needs ../shared/models/whisper-base-encoder")
    emodb = load_experiment(REPO / "experiments" / "emodb.yaml")
    assert emodb.split["kind"] == "speaker"
    assert emodb.strategies == ["tpe", "gp", "skopt", "random", "grid"]
    whisper = REPO.parent / "shared" / "models" / "whisper-base-encoder"
    # A folder spec resolves to an absolute path (so every Ray worker finds it); a missing one is refused.
    assert emodb.encoder == f"hf:{whisper.resolve()}"
    assert emodb.objective.metric == "val_bca" and emodb.objective.mode == "max"


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "minimal.yaml"
    path.write_text("corpus: {name: synthetic}\n")
    exp = load_experiment(path)
    assert exp.name == "minimal"
    assert exp.space == paper_space() and exp.strategies == ["tpe", "gp"] and exp.grid is None
    assert exp.split == {"kind": "speaker", "val_speakers": 2, "test_speakers": 2, "seed": 0}
    assert (exp.budget.trials, exp.budget.minutes) == (15, None)
    assert (exp.objective.metric, exp.objective.mode) == ("val_bca", "max")
    assert exp.thresholds == [0.8, 0.9] and exp.crosscorpus == [] and exp.concurrency is None
    assert exp.storage == tmp_path / "studies"


def test_corpus_root_next_to_the_yaml_then_cwd(tmp_path, monkeypatch):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "data").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    path = tmp_path / "exp" / "x.yaml"
    path.write_text("corpus: {name: emodb, root: data}\n")
    assert load_experiment(path).corpus.root == tmp_path / "exp" / "data"
    path.write_text("corpus: {name: emodb, root: elsewhere}\n")
    assert load_experiment(path).corpus.root == tmp_path / "work" / "elsewhere"


def test_grid_is_derived_only_for_the_grid_strategy():
    raw = copy.deepcopy(QUICKSTART) | {"strategies": ["tpe", "grid"]}
    exp = experiment_from_dict(raw)
    assert exp.grid == {"lr": [1e-4, 4.64e-4, 2.15e-3, 1e-2], "num_epochs": [2, 3, 5, 6],
                        "unfreeze_epoch": [0, 1, 2, 3], "max_length": [1.0, 1.5, 2.0]}
    raw["grid"] = {"lr": [1e-3], "num_epochs": [2, 4]}
    assert experiment_from_dict(raw).grid == {"lr": [1e-3], "num_epochs": [2, 4]}


def _with(**changes):
    raw = copy.deepcopy(QUICKSTART)
    for dotted, value in changes.items():
        keys = dotted.split("__")
        target = raw
        for key in keys[:-1]:
            target = target[key]
        if value is KeyError:
            target.pop(keys[-1])
        else:
            target[keys[-1]] = value
    return raw


@pytest.mark.parametrize("raw, message", [
    (_with(budget__trials=-3), "budget.trials must be a positive integer (got -3)"),
    (_with(budget__trials=2.5), "budget.trials must be a positive integer (got 2.5)"),
    (_with(budget__trails=3), "budget.trails is not a known key"),
    (_with(budget__minutes=0), "budget.minutes must be a positive number or null (got 0)"),
    (_with(strategy=["tpe"]), "strategy is not a known key"),
    (_with(corpus__name="tess"), "corpus.name must be one of emodb, ravdess, cremad, iemocap, csv, synthetic"),
    (_with(corpus__name="emodb"), "corpus.root is required for corpus 'emodb'"),
    (_with(corpus__label_map="colours"), "corpus.label_map: label_map: unknown view 'colours'"),
    (_with(corpus__name="emodb", corpus__root="x", corpus__options={"seed": 1}),
     "corpus.options: corpus 'emodb' takes no options"),
    (_with(split={"kind": "loso"}), "split.kind must be one of speaker, random, fold (got 'loso')"),
    (_with(split={"kind": "random", "val_fraction": 1.5}), "split.val_fraction must be a fraction in (0, 1)"),
    (_with(split={"kind": "random", "val_speakers": 2}), "split.val_speakers is not a known key"),
    (_with(split={"kind": "speaker", "val_speakers": -1}), "split.val_speakers must be a speaker count"),
    (_with(encoder="wav2vec2"), "encoder: unknown encoder 'wav2vec2'"),
    (_with(encoder="hf:"), "encoder: encoder spec 'hf:' names no model"),
    (_with(trial__lr=-1.0), "trial.lr: trial setting 'lr' = -1.0: must be > 0"),
    (_with(trial__epochs=3), "trial.epochs: trial setting 'epochs' is not known"),
    (_with(trial__num_epochs="many"), "trial.num_epochs: trial setting 'num_epochs' must be an integer"),
    (_with(space__lr={"loguniform": [1e-2, 1e-4]}), "space.lr: low must be < high (got 0.01 > 0.0001)"),
    (_with(space__lr={"loguniform": ["1e-4", 1e-2]}), "space.lr: low must be a number"),
    (_with(space__lr={"beta": [1, 2]}), "space.lr: unknown kind 'beta'"),
    (_with(space__epochs={"int": [1, 2]}), "space.epochs: 'epochs' is not a trial setting"),
    (_with(space__batch_size={"choice": [8, 16]}),
     "space.batch_size: 'batch_size' is both fixed in trial and searched in space"),
    (_with(grid={"batch_size": [8]}, strategies=["grid"]),
     "grid.batch_size: 'batch_size' is both fixed in trial and searched in the grid"),
    (_with(grid={"epochs": [1]}), "grid.epochs: 'epochs' is not a trial setting"),
    (_with(strategies=["tpe", "hyperband"]), "strategies[1]: unknown strategy 'hyperband'"),
    (_with(strategies=["tpe", "tpe"]), "strategies: a strategy is listed twice"),
    (_with(strategies=[]), "strategies must be a non-empty list"),
    (_with(objective__metric="accuracy"), "objective.metric must be one of val_bca"),
    (_with(objective__mode="min"), "objective.mode: val_bca is better when higher, so mode must be 'max'"),
    (_with(objective__mode="maximise"), "objective.mode must be 'max' or 'min'"),
    (_with(resources__cpus_per_trial=0), "resources.cpus_per_trial must be a positive number (got 0)"),
    (_with(resources__gpus=1), "resources.gpus is not a known key"),
    (_with(concurrency=0), "concurrency must be a positive integer or null (got 0)"),
    (_with(seed=-1), "seed must be an integer >= 0 (got -1)"),
    (_with(thresholds=[0.8, 2]), "thresholds[1] must be in [-1, 1] (got 2)"),
    (_with(thresholds=[-0.5, 0.9]), "thresholds[0] must be in [0, 1] for val_bca, a balanced class accuracy (got -0.5)"),
    (_with(encoder="hf:./no-such-encoder"), "encoder: no encoder folder"),
    (_with(encoder="hf:/no/such/encoder"), "encoder: no encoder folder /no/such/encoder (hf:/no/such/encoder)"),
    (_with(encoder="speechbrain:~/no-such-encoder"), "encoder: no encoder folder"),
    (_with(encoder="hf:a/b/no-such-encoder"), "encoder: no encoder folder"),
    (_with(space__encoder={"choice": ["tiny-whisper", "hf:../no-such-encoder"]}), "space.encoder: no encoder folder"),
    (_with(thresholds=0.8), "thresholds must be a list of numbers"),
    (_with(crosscorpus=[{"name": "ravdess"}]), "crosscorpus[0].root is required for corpus 'ravdess'"),
    (_with(crosscorpus=[{"name": "emodb", "root": "x", "options": {}}]), "crosscorpus[0].options is not a known key"),
    (_with(name="my study/1"), "name must be letters, digits"),
])
def test_errors_name_the_file_and_field(tmp_path, raw, message):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_yaml_number_without_a_dot_gets_a_hint(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("space:\n  lr: {loguniform: [1e-6, 1.0e-3]}\n")
    with pytest.raises(ConfigError, match=r"space\.lr: low must be a number \(got '1e-6'.*write 1\.0e-6"):
        load_experiment(path)


def test_file_level_errors(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: cannot read the experiment file"):
        load_experiment(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="empty.yaml: the experiment file is empty"):
        load_experiment(tmp_path / "empty.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_experiment(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- tpe\n")
    with pytest.raises(ConfigError, match="list.yaml: expected a mapping"):
        load_experiment(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="^name is required"):
        experiment_from_dict({"corpus": {"name": "synthetic"}})


# -- new fields: defaults, bad values, round trip ---------------------------------------------------

def test_new_fields_default_to_todays_behaviour():
    exp = default_experiment()
    assert exp.objective.cv_folds == 1 and exp.evaluation.outer_folds == 1
    assert (exp.budget.repeats, exp.budget.repeat_over) == (1, ["searcher"])
    assert (exp.corpus.drop_labels, exp.corpus.min_duration) == ([], 0.25)
    saved = exp.to_dict()
    assert saved["objective"]["cv_folds"] == 1 and saved["evaluation"] == {"outer_folds": 1, "ensemble": 1}
    assert saved["budget"]["repeats"] == 1 and saved["budget"]["repeat_over"] == ["searcher"]
    assert saved["corpus"]["drop_labels"] == [] and saved["corpus"]["min_duration"] == 0.25


def test_new_fields_round_trip_through_to_dict():
    raw = _with(objective__cv_folds=4, budget__repeats=3, budget__repeat_over=["split", "searcher"],
                corpus__drop_labels=["disgust", "boredom"], corpus__min_duration=0.5)
    raw["evaluation"] = {"outer_folds": 5}
    exp = experiment_from_dict(raw)
    assert exp.objective.cv_folds == 4 and exp.evaluation.outer_folds == 5
    assert exp.budget.repeats == 3 and exp.budget.repeat_over == ["split", "searcher"]
    assert exp.corpus.drop_labels == ["disgust", "boredom"] and exp.corpus.min_duration == 0.5
    saved = exp.to_dict()
    json.dumps(saved)
    saved.pop("source")
    again = experiment_from_dict(copy.deepcopy(saved)).to_dict()
    assert {k: v for k, v in again.items() if k != "source"} == saved


def test_warmup_is_sized_unless_the_library_default_is_asked_for():
    assert default_experiment().budget.warmup == "sized"
    assert experiment_from_dict(_with(budget__warmup="library")).budget.warmup == "library"
    with pytest.raises(ConfigError, match=r"budget\.warmup must be one of sized, library \(got 'libary'\)"):
        experiment_from_dict(_with(budget__warmup="libary"))


def test_a_single_repeat_target_is_a_list_of_one():
    assert experiment_from_dict(_with(budget__repeat_over="split")).budget.repeat_over == ["split"]


def _random_split(**changes):
    raw = _with(split={"kind": "random", "val_fraction": 0.1, "test_fraction": 0.2, "seed": 0})
    for key, value in changes.items():
        raw[key] = value
    return raw


@pytest.mark.parametrize("raw, message", [
    (_with(objective__cv_folds=0), "objective.cv_folds must be a positive integer (got 0)"),
    (_with(objective__cv_folds=2.5), "objective.cv_folds must be a positive integer (got 2.5)"),
    (_random_split(objective={"metric": "val_bca", "cv_folds": 3}),
     "objective.cv_folds: speaker folds need speakers, but split.kind is 'random'"),
    (_with(evaluation={"outer_folds": 0}), "evaluation.outer_folds must be a positive integer (got 0)"),
    (_with(evaluation=[5]), "evaluation must be a mapping (got [5])"),
    (_random_split(evaluation={"outer_folds": 5}),
     "evaluation.outer_folds: speaker folds need speakers, but split.kind is 'random'"),
    (_with(budget__repeats=0), "budget.repeats must be a positive integer (got 0)"),
    (_with(budget__repeats="twice"), "budget.repeats must be a positive integer (got 'twice')"),
    (_with(budget__repeat_over=[]), "budget.repeat_over must be a non-empty list from searcher, split (got [])"),
    (_with(budget__repeat_over=["searcher", "seed"]),
     "budget.repeat_over[1]: unknown repeat target 'seed'; choose from searcher, split"),
    (_with(budget__repeat_over=["split", "split"]), "budget.repeat_over: a repeat target is listed twice"),
    (_with(corpus__drop_labels="neutral"), "corpus.drop_labels must be a list of class names (got 'neutral')"),
    (_with(corpus__drop_labels=["neutral", 3]), "corpus.drop_labels[1] must be a class name (got 3)"),
    (_with(corpus__drop_labels=["neutral", "neutral"]), "corpus.drop_labels: a class is listed twice"),
    (_with(corpus__min_duration=0), "corpus.min_duration must be a positive number (got 0)"),
    (_with(corpus__min_duration="short"), "corpus.min_duration must be a positive number (got 'short')"),
])
def test_new_fields_bad_values_name_the_field(tmp_path, raw, message):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{path}: {message}"), str(err.value)


def test_speaker_folds_are_fine_with_speaker_and_fold_splits():
    for split in ({"kind": "speaker", "test_speakers": 2}, {"kind": "fold", "k": 5, "fold": 0}):
        raw = _with(split=split, objective={"cv_folds": 3})
        raw["evaluation"] = {"outer_folds": 4}
        exp = experiment_from_dict(raw)
        assert (exp.objective.cv_folds, exp.evaluation.outer_folds) == (3, 4)


# -- unknown keys, at every level -------------------------------------------------------------------

@pytest.mark.parametrize("raw, field", [
    (_with(evalution={"outer_folds": 2}), "evalution"),
    (_with(corpus__sample_rate=16000), "corpus.sample_rate"),
    (_with(split__val_fraction=0.1), "split.val_fraction"),
    (_with(budget__repeat=2), "budget.repeat"),
    (_with(resources__gpus=1), "resources.gpus"),
    (_with(objective__folds=3), "objective.folds"),
    (_with(evaluation={"inner_folds": 3}), "evaluation.inner_folds"),
    (_with(crosscorpus=[{"name": "emodb", "root": "x"}, {"name": "emodb", "root": "x", "min_duration": 1}]),
     "crosscorpus[1].min_duration"),
    (_with(source="elsewhere.yaml"), "source"),      # the file's path is not a key of the file
])
def test_unknown_keys_are_named_with_their_place(raw, field):
    with pytest.raises(ConfigError) as err:
        experiment_from_dict(raw, source="experiments/x.yaml")
    assert str(err.value).startswith(f"experiments/x.yaml: {field} is not a known key; known keys: "), str(err.value)


def test_known_keys_are_listed():
    with pytest.raises(ConfigError, match=r"evaluation\.inner is not a known key; known keys: outer_folds, ensemble$"):
        experiment_from_dict(_with(evaluation={"inner": 1}))
    with pytest.raises(ConfigError, match="known keys: trials, minutes, repeats, repeat_over, warmup$"):
        experiment_from_dict(_with(budget__trails=3))


def test_split_keys_follow_its_kind_and_null_is_the_default():
    assert experiment_from_dict(_with(split=None)).split == {"kind": "speaker", "val_speakers": 2,
                                                             "test_speakers": 2, "seed": 0}
    assert experiment_from_dict(_with(split={"kind": "fold", "k": 5})).split == {"kind": "fold", "k": 5}
    with pytest.raises(ConfigError, match=r"^split\.seed must be an integer >= 0 \(got None\)"):
        experiment_from_dict(_with(split={"kind": "speaker", "seed": None}))
    with pytest.raises(ConfigError, match=r"^split\.kind is required"):
        experiment_from_dict(_with(split={"seed": 1}))


# -- the launcher's checks before any trial (tests/test_launch.py runs them end to end, slowly) -----

@pytest.mark.parametrize("change, message", [
    ({"strategies": ["tpe", "bogus"]}, "strategies[1]: unknown strategy 'bogus'"),
    ({"encoder": "bert-base"}, "encoder: unknown encoder 'bert-base'"),
    ({"space": {"lr": {"loguniform": [1e-2, 1e-5]}}}, "space.lr: low must be < high"),
    ({"space": {"num_epochs": {"int": ["one", 3]}}}, "space.num_epochs: low must be a number"),
])
def test_launch_config_errors_are_one_line(tmp_path, change, message):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(_with(**change)))
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{path}: {message}"), str(err.value)


def test_launcher_overrides_re_parse_to_dict():
    # ser_tune.launch applies CLI overrides to to_dict() and parses the result again
    raw = default_experiment().to_dict()
    raw.pop("source")
    raw["budget"]["trials"] = 2
    raw["resources"]["cpus_per_trial"] = 0.5
    exp = experiment_from_dict(raw)
    assert exp.budget.trials == 2 and exp.resources.cpus_per_trial == 0.5
    raw["budget"]["trials"] = 0
    with pytest.raises(ConfigError, match=r"^budget\.trials must be a positive integer \(got 0\)$"):
        experiment_from_dict(raw)


# -- trial settings ----------------------------------------------------------------------------------

def test_trial_setting_normalize():
    from ser_tune.training.settings import SettingsError, TrialSettings

    assert TrialSettings().normalize == "none" and TrialSettings.from_config({}).normalize == "none"
    for mode in ("none", "corpus", "speaker"):
        settings = TrialSettings.from_config({"normalize": mode})
        assert TrialSettings.from_config(settings.to_dict()).normalize == mode
    with pytest.raises(SettingsError, match="trial setting 'normalize' = 'global': must be 'none', 'corpus' or "
                                            "'speaker'") as err:
        TrialSettings.from_config({"normalize": "global"})
    assert err.value.field == "normalize"
    with pytest.raises(ConfigError, match=r"trial\.normalize: trial setting 'normalize'"):
        experiment_from_dict(_with(trial__normalize="z"))
    assert "normalize" in experiment_from_dict(_with(space__normalize={"choice": ["none", "speaker"]})).space


@pytest.mark.parametrize("values, message", [
    ({"lr": 0}, "trial setting 'lr' = 0: must be > 0"),
    ({"num_epochs": 0}, "trial setting 'num_epochs' = 0: must be >= 1"),
    ({"unfreeze_epoch": -1}, "trial setting 'unfreeze_epoch' = -1: must be >= 0"),
    ({"max_length": 0}, "trial setting 'max_length' = 0: must be > 0"),
    ({"unfreeze": "top:0"}, "trial setting 'unfreeze' must be 'none', 'all' or 'top:K' with K >= 1 (got 'top:0')"),
    ({"layer": "last"}, "trial setting 'layer' must be 'weighted', 'all' or a layer index (got 'last')"),
    ({"head": "deep"}, "trial setting 'head' = 'deep': must be 'logreg', 'lda', 'linear', 'mlp' or 'attentive'"),
    ({"features": "lazy"}, "trial setting 'features' = 'lazy': must be 'cache' or 'naive'"),
    ({"batch_size": 0}, "trial setting 'batch_size' = 0: must be >= 1"),
    ({"dropout": 1.0}, "trial setting 'dropout' = 1.0: must be < 1"),
    ({"task": "both", "objective": "acc"},
     "trial setting 'objective' must be val_bca, val_ccc or val_ccc_<dimension> (got 'acc')"),
    ({"peft": "prefix"}, "trial setting 'peft' = 'prefix': must be 'none', 'lora', 'adapter' or 'lora+adapter'"),
    ({"lr": "fast"}, "trial setting 'lr' must be a number (got 'fast')"),
])
def test_trial_settings_are_checked_per_field(values, message):
    from ser_tune.training.settings import SettingsError, TrialSettings

    with pytest.raises(SettingsError) as err:
        TrialSettings.from_config(values)
    assert str(err.value) == message and err.value.field == next(k for k in values if k in message)


def test_trial_settings_convert_searcher_values_and_check_direct_ones():
    import numpy as np

    from ser_tune.training.settings import SettingsError, TrialSettings

    s = TrialSettings.from_config({"num_epochs": np.float64(3.6), "lr": "1e-3", "layer": "2", "max_length": None})
    assert (s.num_epochs, s.lr, s.layer, s.max_length) == (4, 1e-3, 2, None)
    direct = TrialSettings(num_epochs=0)          # built directly: checked by validate()
    with pytest.raises(SettingsError, match="'num_epochs' = 0"):
        direct.validate()
    dims = TrialSettings(task="dimensions")
    dims.validate()
    assert dims.objective == "val_ccc"


# -- the two-stage configuration (ser_tune.adapt) builds on the same sections ------------------------

def _two_stage(**changes):
    raw = {"name": "two", "source": {"corpus": {"name": "synthetic", "options": {"seed": 0}}},
           "target": {"corpus": {"name": "synthetic", "options": {"seed": 1}},
                      "split": {"kind": "speaker", "val_speakers": 1, "test_speakers": 2}},
           "stage1": {"trial": {"peft": "lora", "unfreeze": "top:2", "lr": 3e-3}},
           "stage2": {"trial": {"peft": "lora+adapter", "lr": 1e-3}, "freeze": ["lora"]}}
    raw.update(changes)
    return raw


def test_two_stage_config_reads_its_sections():
    from ser_tune.adapt import config_from_dict, load_config

    cfg = config_from_dict(_two_stage())
    assert cfg.source.corpus.options == {"seed": 0} and cfg.source.split == {"kind": "speaker", "val_speakers": 2,
                                                                             "test_speakers": 2, "seed": 0}
    assert cfg.target.split == {"kind": "speaker", "val_speakers": 1, "test_speakers": 2}
    assert cfg.stage1.trial == {"peft": "lora", "unfreeze": "top:2", "lr": 3e-3}
    # stage two's trial is stage one's settings with stage two's changes
    assert cfg.stage2.trial == {"peft": "lora+adapter", "unfreeze": "top:2", "lr": 1e-3}
    assert cfg.stage2.freeze == ["lora"] and cfg.baseline is False and cfg.encoder == "tiny-whisper"
    shipped = load_config(REPO / "experiments" / "twostage.yaml")
    assert shipped.name == "twostage" and shipped.path == REPO / "experiments" / "twostage.yaml"
    assert shipped.stage2.trial["unfreeze"] == "top:2" and shipped.baseline is True


@pytest.mark.parametrize("raw, message", [
    ({"target": {}, "stage1": {}}, "source is required"),
    (_two_stage(stages=2), "stages is not a known key"),
    (_two_stage(source={"corpus": {"name": "synthetic"}, "splt": {}}), "source.splt is not a known key"),
    (_two_stage(source={"corpus": {"name": "synthetic", "rot": "x"}}), "source.corpus.rot is not a known key"),
    (_two_stage(target={"split": {"kind": "speaker", "folds": 2}}), "target.split.folds is not a known key"),
    (_two_stage(stage1={"trial": {}, "freeze": ["lora"]}), "stage1.freeze is not a known key"),
    (_two_stage(stage2={"trial": {}, "unfreeze": "all"}), "stage2.unfreeze is not a known key"),
    (_two_stage(target={"corpus": {"name": "emodb"}}), "target.corpus.root is required for corpus 'emodb'"),
    (_two_stage(source={"split": {"kind": "random", "val_fraction": 2}}), "source.split.val_fraction must be"),
    (_two_stage(stage1={"trial": {"lr": -1}}), "stage1.trial.lr: trial setting 'lr' = -1: must be > 0"),
    (_two_stage(stage2={"trial": {"peft": "prefix"}}), "stage2.trial.peft: trial setting 'peft' = 'prefix'"),
    (_two_stage(stage2={"freeze": ["everything"]}), "stage2.freeze[0] must be one of lora, adapter, head"),
    (_two_stage(baseline="yes"), "baseline must be true or false (got 'yes')"),
    (_two_stage(name="two stage"), "name must be letters, digits"),
])
def test_two_stage_config_errors_name_the_field(raw, message):
    from ser_tune.adapt import AdaptError, config_from_dict

    with pytest.raises(AdaptError) as err:
        config_from_dict(raw, source="experiments/two.yaml")
    assert isinstance(err.value, ConfigError) and "\n" not in str(err.value)
    assert str(err.value).startswith(f"experiments/two.yaml: {message}"), str(err.value)


def test_two_stage_file_errors(tmp_path):
    from ser_tune.adapt import AdaptError, load_config

    with pytest.raises(AdaptError, match="missing.yaml: cannot read"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("source: [unclosed\n")
    with pytest.raises(AdaptError, match="bad.yaml: not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump({k: v for k, v in _two_stage().items() if k != "name"}))
    assert load_config(tmp_path / "mine.yaml").name == "mine"        # the name defaults to the file's stem


# --- several objectives, constraints, deployment costs ----------------------------------------------
def test_objectives_constraints_and_deployment_defaults_measure_nothing():
    objective = default_experiment().objective
    assert objective.objectives == {"val_bca": "max"} and objective.constraints == []
    assert not objective.measures_deployment and objective.trial_constraints() is None
    assert (objective.latency.clips, objective.latency.repeats, objective.latency.warmup) == (8, 5, 1)


def test_several_objectives_and_constraints():
    exp = experiment_from_dict(_with(objective={"metrics": {"val_bca": "max", "latency_ms_per_s": "min"},
                                                "constraints": "model_bytes <= 1e8", "latency": {"clips": 3}}))
    assert exp.objective.metric == "val_bca" and exp.objective.objectives == {"val_bca": "max",
                                                                              "latency_ms_per_s": "min"}
    assert exp.objective.constraints == ["model_bytes <= 1e8"] and exp.objective.measures_deployment
    rules = exp.objective.trial_constraints()
    assert rules.worst == 0.0 and not rules.meets({"model_bytes": 2e8})
    saved = exp.to_dict()["objective"]
    assert experiment_from_dict(_with(objective=saved)).objective == exp.objective   # round trip
    # YAML writers may sort keys: the validation metric comes first wherever it is written
    swapped = experiment_from_dict(_with(objective={"metrics": {"latency_ms_per_s": "min", "val_bca": "max"}}))
    assert list(swapped.objective.objectives) == ["val_bca", "latency_ms_per_s"]
    # a constraint on a cost, or deployment: true, measures the costs too
    assert experiment_from_dict(_with(objective={"constraints": ["total_params <= 5e6"]})).objective.measures_deployment
    assert experiment_from_dict(_with(objective={"deployment": True})).objective.measures_deployment
    assert not experiment_from_dict(_with(objective={"constraints": ["val_bca >= 0.5"]})).objective.measures_deployment


@pytest.mark.parametrize("objective, message", [
    ({"metrics": {"latency_ms_per_s": "min", "model_bytes": "min"}},
     "objective.metrics: name a validation metric (val_bca, val_ccc"),
    ({"metric": "val_ccc", "metrics": {"val_bca": "max"}},
     "objective.metrics: objective.metric ('val_ccc') must be one of the objectives"),
    ({"metrics": {"val_bca": "max", "latency_ms_per_s": "max"}},
     "objective.metrics.latency_ms_per_s: latency_ms_per_s is better when lower, so its mode must be 'min'"),
    ({"metrics": {"val_bca": "max", "speed": "min"}}, "objective.metrics: unknown objective 'speed'"),
    ({"metrics": {"val_bca": "best"}}, "objective.metrics.val_bca must be 'max' or 'min' (got 'best')"),
    ({"constraints": ["latency <= 3"]}, "objective.constraints[0]: constraint 'latency <= 3': unknown column 'latency'"),
    ({"constraints": ["latency_ms_per_s =< 3"]}, "objective.constraints[0]: constraint 'latency_ms_per_s =< 3': expected"),
    ({"deployment": "yes"}, "objective.deployment must be true or false (got 'yes')"),
    ({"latency": {"clips": 0}}, "objective.latency.clips must be a positive integer (got 0)"),
    ({"latency": {"threads": 2}}, "objective.latency.threads is not a known key"),
])
def test_bad_objectives_name_the_field(objective, message):
    with pytest.raises(ConfigError) as err:
        experiment_from_dict(_with(objective=objective))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_optuna_strategies_need_optuna():
    import importlib.util

    raw = _with(strategies=["nsga2", "random"])
    if importlib.util.find_spec("optuna") is None:
        with pytest.raises(ConfigError, match="strategies: strategy 'nsga2' needs optuna"):
            experiment_from_dict(raw)
    else:
        assert experiment_from_dict(raw).strategies == ["nsga2", "random"]


def test_thresholds_of_a_ccc_metric_may_be_negative():
    raw = _with(objective={"metric": "val_ccc", "mode": "max"}, thresholds=[-0.5, 0.9])
    assert experiment_from_dict(raw).thresholds == [-0.5, 0.9]


@pytest.mark.parametrize("spec", ["hf:facebook/wav2vec2-base", "hf:openai-whisper-base", "tiny-wavlm",
                                  "speechbrain:speechbrain/emotion-recognition-wav2vec2-IEMOCAP"])
def test_hub_ids_stay_hub_ids(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert experiment_from_dict(_with(encoder=spec)).encoder == spec


def test_a_missing_encoder_folder_stops_the_launch_at_once_and_leaves_no_study_folder(tmp_path):
    import subprocess
    import sys

    storage = tmp_path / "studies"
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump(_with(encoder="hf:./missing-encoder", storage=str(storage))))
    run = subprocess.run([sys.executable, "-m", "ser_tune.launch", str(path)], cwd=tmp_path, text=True,
                         capture_output=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == f"error: {path}: encoder: no encoder folder {tmp_path / 'missing-encoder'} " \
                                 "(hf:./missing-encoder)"
    assert not storage.exists() or not any(storage.iterdir())
