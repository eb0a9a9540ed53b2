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


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_loads_and_round_trips(path):
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

    emodb = load_experiment(REPO / "experiments" / "emodb.yaml")
    assert emodb.split["kind"] == "speaker"
    assert emodb.strategies == ["tpe", "gp", "skopt", "random", "grid"]
    whisper = REPO.parent / "shared" / "models" / "whisper-base-encoder"
    # A folder spec resolves to an absolute path when the folder exists (so every Ray worker finds it).
    expected = f"hf:{whisper.resolve()}" if whisper.is_dir() else "hf:../shared/models/whisper-base-encoder"
    assert emodb.encoder == expected
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
