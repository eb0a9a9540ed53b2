"""Dimensional emotion: CCC, regression and multi-task heads, a study tuned for val_ccc."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ser_tune.data import load_corpus, speaker_split
from ser_tune.training.export import load_model
from ser_tune.training.finetune import FineTuner, TrialData
from ser_tune.training.metrics import ccc
from ser_tune.training.settings import SettingsError, TrialSettings

REPO = Path(__file__).resolve().parents[1]


def test_ccc_on_hand_made_vectors():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert ccc(x, x) == pytest.approx(1.0)
    assert ccc(x, np.full(5, 3.0)) == pytest.approx(0.0)
    assert ccc(x, -x) < 0
    # direct formula: 2 cov / (var_x + var_y + (mean_x - mean_y)^2), population moments
    y = np.array([1.5, 1.0, 3.5, 4.0, 6.0])
    direct = 2 * np.mean((x - x.mean()) * (y - y.mean())) / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)
    assert ccc(x, y) == pytest.approx(direct)
    assert ccc(x, x + 1) < 1  # a shift is penalised (unlike Pearson correlation)


@pytest.fixture(scope="module")
def data(synthetic_root):
    corpus = load_corpus("synthetic", synthetic_root)
    table = corpus.table.copy()
    # a few clips without dimensional labels: excluded from CCC, still used for categories
    table.loc[table.index[::10], ["arousal", "valence", "dominance"]] = np.nan
    split = speaker_split(table, val_speakers=2, test_speakers=2, seed=0)
    return TrialData.from_table(table, split.assignment)


def test_regression_head_learns_dimensions(data, tmp_path, feature_cache_root):
    s = TrialSettings(task="dimensions", objective="val_ccc", lr=1e-2, num_epochs=10, unfreeze="none",
                      max_length=2.0)
    tuner = FineTuner(s, data, encoder_spec="tiny-whisper", cache_root=feature_cache_root)
    r = tuner.run()
    assert r.val_metrics["val_ccc"] > 0.3
    assert set(r.test_metrics) >= {"test_ccc", "test_ccc_arousal", "test_ccc_valence", "test_ccc_dominance"}
    assert r.test_bca is None
    model = load_model(tuner.export(r, tmp_path / "model"))
    out = model.predict(data.audio.get(data.paths[0]))
    assert set(out["dimensions"]) == {"arousal", "valence", "dominance"} and "emotion" not in out
    assert 0 < out["dimensions"]["arousal"] < 6   # back on the corpus's 1-5 scale


def test_multitask_reports_bca_and_ccc(data, feature_cache_root):
    s = TrialSettings(task="both", objective="val_bca", lr=1e-2, num_epochs=4, unfreeze="none", max_length=2.0,
                      dimension_loss="mse")
    r = FineTuner(s, data, encoder_spec="tiny-whisper", cache_root=feature_cache_root).run()
    assert {"val_bca", "val_ccc"} <= set(r.val_metrics)
    assert {"test_bca", "test_ccc"} <= set(r.test_metrics)
    assert r.history[-1]["epoch_val_ccc"] == pytest.approx(r.history[-1]["epoch_val_ccc"])


def test_unlabelled_rows_are_counted_and_excluded(data):
    n_val = len(data.parts["val"])
    assert 0 < data.labelled_dims("val") < n_val


def test_objective_must_fit_the_task():
    with pytest.raises(SettingsError, match="objective"):
        TrialSettings.from_config({"task": "categories", "objective": "val_ccc"})
    with pytest.raises(SettingsError, match="objective"):
        TrialSettings.from_config({"task": "dimensions", "objective": "val_bca"})


@pytest.mark.slow
def test_study_tuned_for_val_ccc(tmp_path):
    raw = {
        "name": "dims", "corpus": {"name": "synthetic", "root": str(tmp_path / "corpus"),
                                   "options": {"clips_per_cell": 2}},
        "split": {"kind": "speaker", "val_speakers": 2, "test_speakers": 2, "seed": 0},
        "encoder": "tiny-whisper",
        "trial": {"task": "dimensions", "unfreeze": "none", "max_length": 1.0, "num_epochs": 8},
        "space": {"lr": {"loguniform": [3e-3, 3e-2]}},
        "strategies": ["tpe"], "budget": {"trials": 3}, "resources": {"cpus_per_trial": 1}, "concurrency": 1,
        "storage": str(tmp_path / "studies"), "objective": {"metric": "val_ccc", "mode": "max"},
        "thresholds": [0.2, 0.5],
    }
    cfg = tmp_path / "dims.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    run = subprocess.run([sys.executable, "-m", "ser_tune.launch", str(cfg), "--json"], cwd=REPO, text=True,
                         capture_output=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    best = out["strategies"]["tpe"]["best_val_ccc"]
    assert best > 0.3
    study = Path(out["study_dir"])
    trials = pd.read_csv(study / "trials.csv")
    trials = trials[trials.strategy == "tpe"]    # the study's default-configuration baseline has its own row
    assert len(trials) == 3 and trials["val_ccc"].max() == pytest.approx(best)
    report = (study / "report.md").read_text()
    assert "Dimensional labels" in report
