"""Repeated runs and outer folds end to end: the units a study runs, what --json carries, and that repeats
differ by their searcher seed and agree when it is the same."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _study(tmp_path: Path, name: str, *flags: str, **changes) -> dict:
    raw = {
        "name": name,
        "corpus": {"name": "synthetic", "root": str(tmp_path / "corpus"), "options": {"clips_per_cell": 2}},
        "split": {"kind": "speaker", "val_speakers": 1, "test_speakers": 2, "seed": 0},
        "encoder": "tiny-whisper",
        "trial": {"unfreeze": "none", "max_length": 1.0, "num_epochs": 3},
        "space": {"lr": {"loguniform": [1e-3, 3e-2]}, "dropout": {"uniform": [0.0, 0.5]}},
        "strategies": ["tpe", "random"],
        "budget": {"trials": 3},
        "concurrency": 1,
        "storage": str(tmp_path / "studies"),
        "thresholds": [0.3, 0.9],
        **changes,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    run = subprocess.run([sys.executable, "-m", "ser_tune.launch", str(path), *flags, "--json"], cwd=REPO, text=True,
                         capture_output=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout)


def _configs(study_dir: str, unit: str) -> list[tuple]:
    trials = pd.read_csv(Path(study_dir) / "trials.csv")
    rows = trials[trials.unit == unit].sort_values("trial_index")
    return list(zip(rows.cfg_lr.round(12), rows.cfg_dropout.round(12)))


def test_repeats_differ_by_seed_agree_with_it_and_carry_ert_and_verdicts(tmp_path):
    first = _study(tmp_path, "a", "--repeats", "2", seed=5)   # (the README's `--repeats 10`, smaller)
    for strategy in ("tpe", "random"):
        assert _configs(first["study_dir"], f"{strategy}-r0") != _configs(first["study_dir"], f"{strategy}-r1")
    # repeat r searches with the experiment's seed + r (a seed gives the same trials again:
    # tests/test_pinned_study.py, tests/test_search_strategies.py)
    units = json.loads((Path(first["study_dir"]) / "study.json").read_text())["units"]
    assert [units[f"{s}-r{r}"]["seed"] for s in ("tpe", "random") for r in (0, 1)] == [5, 6, 5, 6]
    tpe = first["strategies"]["tpe"]
    assert tpe["repeats"] == 2 and tpe["runs"] == 2
    # ERT at the user's thresholds and at each target of the ladder (default's value to the best reached)
    assert len(first["targets"]) >= 5 and first["targets"] == sorted(first["targets"])
    assert set(tpe["ert"]) == {"0.3", "0.9", *(f"{t:g}" for t in first["targets"])}
    for ert in tpe["ert"].values():
        assert {"seconds", "low", "high", "trials", "success_rate"} <= set(ert)
        assert 0 <= ert["success_rate"] <= 1
    top = f"{first['targets'][-1]:g}"   # the best any run reached: some run of some strategy got there
    assert max(first["strategies"][s]["ert"][top]["success_rate"] for s in ("tpe", "random")) > 0
    for strategy in ("tpe", "random"):
        profile = first["strategies"][strategy]["data_profile"]
        assert all(0 < f <= 1 for _, f in profile) and [f for _, f in profile] == sorted(f for _, f in profile)
    assert "random" in tpe["verdict"] and "A12" in tpe["verdict"]
    # 2 runs a side: no effect is detectable, and the json says so
    assert tpe["power"] == {**tpe["power"], "repeats": 2, "min_detectable_a12": None}
    assert tpe["comparison"]["reference"] == "random" and tpe["comparison"]["threshold"] == 0.9
    # the held-out figures and the baselines beside them, on the study's one fold
    assert len(first["outer_folds"]) == 1
    assert first["baselines"]["probe"]["folds"][0] is not None
    assert first["baselines"]["default"]["folds"][0] is not None
    assert tpe["nested_test_bca"]["mean"] == pytest.approx(tpe["nested_test_bca"]["folds"][0])
    report = (Path(first["study_dir"]) / "report.md").read_text()
    assert "## Repeated runs" in report and "## Speakers the search never heard" in report
    assert (Path(first["study_dir"]) / "plots" / "runtime_ecdf.png").is_file()
    assert (Path(first["study_dir"]) / "plots" / "data_profile.png").is_file()
    assert "Detectable A12" in report and "data profile" in report


def test_outer_folds_and_cross_validated_trials_test_every_speaker_once(tmp_path):
    out = _study(tmp_path, "nested", "--cv-folds", "2", budget={"trials": 2}, strategies=["random"],
                 objective={"metric": "val_bca", "mode": "max"},   # cv_folds from the flag (the README's --cv-folds)
                 evaluation={"outer_folds": 2})
    study = Path(out["study_dir"])
    meta = json.loads((study / "study.json").read_text())
    tested = [s for fold in out["outer_folds"] for s in fold["test_speakers"]]
    assert sorted(tested) == sorted(set(tested)) and len(tested) == meta["corpus"]["speakers"]
    assert set(meta["units"]) == {"default-f0", "random-f0", "default-f1", "random-f1", "refit"}
    trials = pd.read_csv(study / "trials.csv")
    search = trials[trials.unit.str.startswith("random")]
    # each trial's objective is the mean over its two inner folds, with each fold's value kept
    for row in search.itertuples():
        folds = json.loads(row.val_bca_folds)
        assert len(folds) == 2 and row.val_bca == pytest.approx(sum(folds) / 2)
    assert_a_trial_recomputes_from_the_folder(study, meta, search[search.unit == "random-f0"].iloc[0])
    nested = out["strategies"]["random"]["nested_test_bca"]
    assert len(nested["folds"]) == 2 and None not in nested["folds"]
    # each run's best configuration refit on its fold's search speakers is what its fold's figure scores,
    # as the probe is refit; one more refit on every speaker is exported
    refits = trials[trials.unit == "refit"].set_index("refit_of")
    assert set(refits.index) == {"default-f0", "random-f0", "default-f1", "random-f1", "study"}
    for fold in (0, 1):
        run = search[search.unit == f"random-f{fold}"]
        best = run.loc[run.val_bca.idxmax()]
        refit = refits.loc[f"random-f{fold}"]
        assert str(refit.refit_trial) == str(best.trial_id) and refit.cfg_num_epochs == best.best_epoch
        assert nested["folds"][fold] == pytest.approx(refit.test_bca)
        model = json.loads((Path(refit.model_dir) / "model.json").read_text())
        held = set(out["outer_folds"][fold]["test_speakers"])
        assert not held & set(model["source"]["train_speakers"])
        assert set(model["source"]["train_speakers"]) | held == set(tested)
    assert out["baselines"]["default"]["folds"] == pytest.approx(
        [refits.loc["default-f0"].test_bca, refits.loc["default-f1"].test_bca])
    assert pd.isna(refits.loc["study"].test_bca)
    assert out["best_model"] and (Path(out["best_model"]) / "model.json").is_file()
    exported = json.loads((Path(out["best_model"]) / "model.json").read_text())
    # refit on every speaker: the exported model's training speakers are all of them
    assert sorted(exported["source"]["train_speakers"]) == sorted(tested)


def assert_a_trial_recomputes_from_the_folder(study: Path, meta: dict, trial: pd.Series) -> None:
    """The folds in study.json, the trial's settings in trials.csv and the shared cache give the trial's
    per-fold validation values again."""
    from ser_tune.data import load_corpus
    from ser_tune.training.crossval import FoldedRun
    from ser_tune.training.finetune import TrialData
    from ser_tune.training.settings import TrialSettings

    exp = meta["experiment"]
    table = load_corpus("synthetic", exp["corpus"]["root"], **exp["corpus"]["options"]).table
    speaker = table["speaker"].astype(str)
    test = speaker.isin(meta["folds"]["outer"][0]["test_speakers"])
    datas = []
    for held in meta["folds"]["inner_val_speakers"]["f0-r0"]:
        parts = pd.Series("train", index=table.index, dtype=object)
        parts[speaker.isin(held)] = "val"
        parts[test] = "test"
        datas.append(TrialData.from_table(table, parts, meta["labels"]))
    config = {c[4:]: trial[c] for c in trial.index if c.startswith("cfg_") and not pd.isna(trial[c])}
    settings = TrialSettings.from_config({"objective": "val_bca", **exp["trial"], **config})
    run = FoldedRun(settings, datas, encoder_spec=exp["encoder"], cache_root=str(Path(exp["storage"]) / "_feature_cache"))
    states = run.start(None)
    while not states[0].done:
        run.fit_epoch(states)
    again = run.finish(states, []).metrics()
    assert again["val_bca_folds"] == pytest.approx(json.loads(trial.val_bca_folds), abs=1e-9)
    assert again["test_bca"] == pytest.approx(trial.test_bca, abs=1e-9)
