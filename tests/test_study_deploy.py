"""Deployment objectives in whole studies: a constraint honoured by every strategy, several objectives
searched together (nsga2, motpe), the exported front and ``predict --max-latency``; a default study
measures nothing."""
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


def _params_between_the_heads() -> int:
    """A parameter count between the whole model with a linear head and with an MLP head."""
    from ser_tune.encoders import load_encoder
    from ser_tune.training.head import EmotionHead
    from ser_tune.training.latency import count_parameters

    encoder = load_encoder("tiny-whisper")
    heads = [count_parameters(EmotionHead(encoder.num_layers + 1, encoder.hidden_size, 7, kind=kind))[1]
             for kind in ("linear", "mlp")]
    return count_parameters(encoder)[1] + sum(heads) // 2


def test_a_default_study_measures_no_deployment_cost(tmp_path):
    assert StrategyStudy(default_experiment()).latency_check() is None
    log = ReportLog(tmp_path)
    log.append({"epoch": 1})
    assert "train_cpu_seconds" not in log.last()


@pytest.mark.slow
def test_a_constraint_is_honoured_by_every_strategy(tmp_path):
    """MLP heads break the constraint: every strategy's best trial and the exported model have a linear head
    whenever the strategy ran one; trials.csv keeps each trial's true BCA and whether it is feasible."""
    limit = _params_between_the_heads()
    out, trials = _launch(_experiment(tmp_path, strategies=["tpe", "gp", "skopt", "random", "grid"],
                                      objective={"metric": "val_bca", "constraints": [f"total_params <= {limit}"]}))
    search = trials[trials["strategy"] != "default"]
    assert set(DEPLOYMENT_COLUMNS) <= set(trials.columns) and search[list(DEPLOYMENT_COLUMNS)].notna().all().all()
    assert (search["feasible"] == (search["total_params"] <= limit)).all()
    assert (search["feasible"] == (search["cfg_head"] == "linear")).all()
    assert search["val_bca"].between(0, 1).all()   # the true values: penalties go to the searchers only
    for strategy, rows in search.groupby("strategy"):
        entry = out["strategies"][strategy]
        best = rows[rows["trial_id"] == entry["best_trial_id"]].iloc[0]
        if rows["feasible"].any():
            assert best["feasible"], strategy
            assert best["val_bca"] == rows.loc[rows["feasible"], "val_bca"].max(), strategy
        else:
            assert best["val_bca"] == rows["val_bca"].max(), strategy
    assert set(search["cfg_head"][search["strategy"] == "grid"]) == {"linear", "mlp"}   # grid ran both
    exported = json.loads((Path(out["best_model"]) / "model.json").read_text())
    assert exported["settings"]["head"] == "linear"
    study = json.loads((Path(out["study_dir"]) / "study.json").read_text())
    for strategy in ("tpe", "gp", "skopt"):
        assert "told a penalty" in study["units"][strategy]["notes"]
    report = (Path(out["study_dir"]) / "report.md").read_text()
    assert f"`total_params <= {limit}`" in report and "coefficient of variation" in report


@pytest.mark.slow
def test_several_objectives_give_fronts_an_exported_front_and_a_model_by_latency(tmp_path):
    pytest.importorskip("optuna")
    out, trials = _launch(_experiment(
        tmp_path, strategies=["nsga2", "motpe", "random"],
        space={"lr": {"loguniform": [1e-3, 3e-2]}, "num_epochs": {"int": [1, 3]},
               "layer": {"choice": [1, 2, 3, "weighted"]}},
        objective={"metrics": {"val_bca": "max", "latency_ms_per_s": "min"}, "latency": {"clips": 3, "repeats": 3}}))
    assert set(DEPLOYMENT_COLUMNS) <= set(trials.columns)
    for name in ("nsga2", "motpe", "random"):
        front = out["strategies"][name]["pareto"]
        assert front and all({"trial_id", "config", "val_bca", "latency_ms_per_s"} <= set(p) for p in front)
        own = trials[trials["strategy"] == name]
        for point in front:   # no trial of the strategy beats a front point in both objectives
            assert not ((own["val_bca"] >= point["val_bca"]) & (own["latency_ms_per_s"] <= point["latency_ms_per_s"])
                        & ((own["val_bca"] > point["val_bca"]) | (own["latency_ms_per_s"] < point["latency_ms_per_s"]))
                        ).any(), (name, point)
        assert out["strategies"][name]["hypervolume"]["mean"] >= 0
    layers = trials.set_index("trial_id")["cfg_layer"].astype(str)
    params = trials.set_index("trial_id")["total_params"]
    cut = [t for t in params.index if layers.get(t) in ("1.0", "1")]
    whole = [t for t in params.index if layers.get(t) == "weighted"]
    if cut and whole:   # reading layer 1 ships a third of the encoder
        assert params[cut].max() < params[whole].min()
    study_dir = Path(out["study_dir"])
    listing = json.loads((study_dir / "front" / "front.json").read_text())
    slowest = max(m["latency_ms_per_s"] for m in listing["models"])
    wav = next((tmp_path / "corpus").rglob("*.wav"))
    run = subprocess.run([sys.executable, "-m", "ser_tune.predict", str(study_dir), "--max-latency", str(slowest),
                          str(wav), "--json"], cwd=REPO, text=True, capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    chosen = json.loads(run.stdout)["front_model"]
    assert chosen["val_bca"] == max(m["val_bca"] for m in listing["models"])


@pytest.mark.slow
def test_a_study_searches_among_encoders(tmp_path):
    """The grid runs each encoder: each trial's exported model names the encoder it trained on, both were
    encoded once before any trial, and their costs differ."""
    out, trials = _launch(_experiment(tmp_path, strategies=["grid"], space={"num_epochs": {"int": [1, 2]}},
                                      grid={"encoder": ["tiny-whisper", "tiny-hubert"], "num_epochs": [1]},
                                      objective={"metric": "val_bca", "deployment": True}))
    search = trials[trials["strategy"] == "grid"]
    assert sorted(search["cfg_encoder"]) == ["tiny-hubert", "tiny-whisper"]
    for _, trial in search.iterrows():
        assert json.loads((Path(trial["model_dir"]) / "model.json").read_text())["encoder"] == trial["cfg_encoder"]
    assert search["total_params"].nunique() == 2
    study = json.loads((Path(out["study_dir"]) / "study.json").read_text())
    assert sorted(study["encoders"]) == ["tiny-hubert", "tiny-whisper"] and study["encoder"]["spec"] == "tiny-whisper"
