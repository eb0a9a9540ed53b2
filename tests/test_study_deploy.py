"""Deployment objectives in whole studies: several objectives searched together (nsga2, motpe; the grid among
encoders), the exported front and ``predict --max-latency``; a default study measures nothing. (A constraint honoured by every strategy:
tests/test_launch.py.)"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ser_tune.config import default_experiment
from ser_tune.strategies import StrategyStudy
from ser_tune.training.trainable import ReportLog

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENT_COLUMNS = ("latency_ms_per_s", "model_bytes", "trainable_params", "total_params", "train_cpu_seconds")


def _experiment(tmp_path: Path, **changes) -> Path:
    raw = {
        "name": "deploy",
        "corpus": {"name": "synthetic", "root": str(tmp_path / "corpus"), "options": {"clips_per_cell": 2}},
        "split": {"kind": "speaker", "val_speakers": 2, "test_speakers": 2, "seed": 0},
        "encoder": "tiny-whisper",
        "trial": {"unfreeze": "none", "max_length": 1.0, "batch_size": 16},
        "space": {"lr": {"loguniform": [1e-3, 3e-2]}, "num_epochs": {"int": [1, 3]},
                  "head": {"choice": ["linear", "mlp"]}},
        "grid": {"head": ["mlp", "linear"], "num_epochs": [3, 1]},
        "budget": {"trials": 4},
        "resources": {"cpus_per_trial": 1},
        "concurrency": 1,   # one trial worker per search run (each costs seconds of imports); tests/test_launch.py runs 2
        "seed": 0,
        "storage": str(tmp_path / "studies"),
        **changes,
    }
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _launch(config: Path) -> tuple[dict, pd.DataFrame]:
    run = subprocess.run([sys.executable, "-m", "ser_tune.launch", str(config), "--json"], cwd=REPO, text=True,
                         capture_output=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    return out, pd.read_csv(Path(out["study_dir"]) / "trials.csv", dtype={"trial_id": str})


def test_a_default_study_measures_no_deployment_cost(tmp_path):
    assert StrategyStudy(default_experiment()).latency_check() is None
    log = ReportLog(tmp_path)
    log.append({"epoch": 1})
    assert "train_cpu_seconds" not in log.last()


@pytest.mark.slow
def test_several_objectives_give_fronts_an_exported_front_and_a_model_by_latency(tmp_path):
    """nsga2, motpe and random search val_bca against latency; the grid runs each of two encoders (a study
    that searches among encoders): every strategy has its front, the study exports one, and predict picks
    from it by latency."""
    pytest.importorskip("optuna")
    out, trials = _launch(_experiment(
        tmp_path, strategies=["nsga2", "motpe", "random", "grid"],
        space={"lr": {"loguniform": [1e-3, 3e-2]}, "num_epochs": {"int": [1, 3]},
               "layer": {"choice": [1, 2, 3, "weighted"]}},
        grid={"encoder": ["tiny-whisper", "tiny-hubert"], "num_epochs": [1]},
        objective={"metrics": {"val_bca": "max", "latency_ms_per_s": "min"}, "latency": {"clips": 3, "repeats": 3}}))
    assert set(DEPLOYMENT_COLUMNS) <= set(trials.columns)
    for name in ("nsga2", "motpe", "random", "grid"):
        front = out["strategies"][name]["pareto"]
        assert front and all({"trial_id", "config", "val_bca", "latency_ms_per_s"} <= set(p) for p in front)
        own = trials[trials["strategy"] == name]
        for point in front:   # no trial of the strategy beats a front point in both objectives
            assert not ((own["val_bca"] >= point["val_bca"]) & (own["latency_ms_per_s"] <= point["latency_ms_per_s"])
                        & ((own["val_bca"] > point["val_bca"]) | (own["latency_ms_per_s"] < point["latency_ms_per_s"]))
                        ).any(), (name, point)
        assert out["strategies"][name]["hypervolume"]["mean"] >= 0
    search = trials[trials["strategy"] != "grid"]
    layers = search.set_index("trial_id")["cfg_layer"].astype(str)
    params = search.set_index("trial_id")["total_params"]
    cut = [t for t in params.index if layers.get(t) in ("1.0", "1")]
    whole = [t for t in params.index if layers.get(t) == "weighted"]
    if cut and whole:   # reading layer 1 ships a third of the encoder
        assert params[cut].max() < params[whole].min()
    # the grid's two encoders: each trial's model names the one it trained on, both were encoded before any
    # trial, and their costs differ
    grid = trials[trials["strategy"] == "grid"]
    assert sorted(grid["cfg_encoder"]) == ["tiny-hubert", "tiny-whisper"]
    for _, trial in grid.iterrows():
        assert json.loads((Path(trial["model_dir"]) / "model.json").read_text())["encoder"] == trial["cfg_encoder"]
    assert grid["total_params"].nunique() == 2
    study_dir = Path(out["study_dir"])
    study = json.loads((study_dir / "study.json").read_text())
    assert sorted(study["encoders"]) == ["tiny-hubert", "tiny-whisper"] and study["encoder"]["spec"] == "tiny-whisper"
    listing = json.loads((study_dir / "front" / "front.json").read_text())
    slowest = max(m["latency_ms_per_s"] for m in listing["models"])
    wav = next((tmp_path / "corpus").rglob("*.wav"))
    run = subprocess.run([sys.executable, "-m", "ser_tune.predict", str(study_dir), "--max-latency", str(slowest),
                          str(wav), "--json"], cwd=REPO, text=True, capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    chosen = json.loads(run.stdout)["front_model"]
    assert chosen["val_bca"] == max(m["val_bca"] for m in listing["models"])
