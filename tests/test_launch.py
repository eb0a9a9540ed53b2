"""The main job end to end: every strategy on the synthetic corpus, exact budgets under a deployment constraint,
resume, bad input."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ser_tune.results import load_study

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, **changes) -> Path:
    raw = {
        "name": "t",
        "corpus": {"name": "synthetic", "root": str(tmp_path / "corpus"), "options": {"clips_per_cell": 2}},
        "split": {"kind": "speaker", "val_speakers": 2, "test_speakers": 2, "seed": 0},
        "encoder": "tiny-whisper",
        "trial": {"unfreeze": "none", "max_length": 1.0, "batch_size": 16},
        "space": {"lr": {"loguniform": [1e-3, 3e-2]}, "num_epochs": {"int": [1, 3]}},
        "grid": {"lr": [1e-3, 1e-2], "num_epochs": [1, 3]},
        "strategies": ["tpe", "gp", "skopt", "grid", "random"],
        "budget": {"trials": 3},
        "resources": {"cpus_per_trial": 1},
        "concurrency": 1,   # a trial actor per unit (each ~3 CPU-s of imports); the every-strategy test runs 2
        "seed": 0,
        "storage": str(tmp_path / "studies"),
        "objective": {"metric": "val_bca", "mode": "max"},
    }
    for key, value in changes.items():
        raw[key] = value
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _launch(*args, timeout=600, **kwargs):
    return subprocess.run([sys.executable, "-m", "ser_tune.launch", *map(str, args)], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout, **kwargs)


DEPLOYMENT_COLUMNS = ("latency_ms_per_s", "model_bytes", "trainable_params", "total_params", "train_cpu_seconds")


def _params_between_the_heads() -> int:
    """A parameter count between the whole model with a linear head and with an MLP head."""
    from ser_tune.encoders import load_encoder
    from ser_tune.training.head import EmotionHead
    from ser_tune.training.latency import count_parameters

    encoder = load_encoder("tiny-whisper")
    heads = [count_parameters(EmotionHead(encoder.num_layers + 1, encoder.hidden_size, 7, kind=kind))[1]
             for kind in ("linear", "mlp")]
    return count_parameters(encoder)[1] + sum(heads) // 2


def test_every_strategy_spends_exactly_its_budget_and_honours_a_constraint(tmp_path):
    """Every strategy, two trials at a time, a deployment constraint that MLP heads break: each spends
    exactly its budget, its best trial and the exported model have a linear head whenever it ran one, and
    trials.csv keeps each trial's true BCA and whether it is feasible."""
    limit = _params_between_the_heads()
    cfg = _config(tmp_path, concurrency=None, budget={"trials": 4},
                  space={"lr": {"loguniform": [1e-3, 3e-2]}, "num_epochs": {"int": [1, 3]},
                         "head": {"choice": ["linear", "mlp"]}},
                  grid={"head": ["mlp", "linear"], "num_epochs": [3, 1]},
                  objective={"metric": "val_bca", "constraints": [f"total_params <= {limit}"]})
    run = _launch(cfg, "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    # --json: stdout is the one JSON object, nothing from Ray before or after it
    assert len(run.stdout.strip().splitlines()) == 1, run.stdout[-3000:]
    out = json.loads(run.stdout)
    study = Path(out["study_dir"])
    assert run.stderr.splitlines()[0] == f"study folder: {study}"      # printed first
    trials = pd.read_csv(study / "trials.csv", dtype={"trial_id": str})
    for strategy in ["tpe", "gp", "skopt", "grid", "random"]:
        rows = trials[trials.strategy == strategy]
        assert len(rows) == 4 and (rows.status == "TERMINATED").all(), strategy
        assert rows.val_bca.between(0, 1).all() and rows.test_bca.between(0, 1).all()
        s = out["strategies"][strategy]
        assert s["trials"] == 4
        assert "seconds_to_0.9" in s and "best_config" in s
        # the best trial is the best feasible one when the strategy ran one
        best = rows[rows["trial_id"] == s["best_trial_id"]].iloc[0]
        if rows["feasible"].any():
            assert best["feasible"] and best["val_bca"] == rows.loc[rows["feasible"], "val_bca"].max(), strategy
        else:
            assert best["val_bca"] == rows["val_bca"].max(), strategy
        assert s["best_val_bca"] == pytest.approx(best["val_bca"])
    search = trials[trials["strategy"] != "default"]
    assert set(DEPLOYMENT_COLUMNS) <= set(trials.columns) and search[list(DEPLOYMENT_COLUMNS)].notna().all().all()
    assert (search["feasible"] == (search["total_params"] <= limit)).all()
    assert (search["feasible"] == (search["cfg_head"] == "linear")).all()
    exported = json.loads((study / "best_model" / "model.json").read_text())
    assert exported["settings"]["head"] == "linear"
    # gp's relaxed floats are decoded before the trial: integer epochs and a head by name in the recorded config
    gp = trials[trials.strategy == "gp"]
    assert (gp.cfg_num_epochs == gp.cfg_num_epochs.round()).all() and set(gp.cfg_head) <= {"linear", "mlp"}
    # grid: every point, in the grid's order (Ray's nested loops, the first name varying fastest)
    grid = trials[trials.strategy == "grid"].sort_values("trial_index")
    assert list(zip(grid.cfg_head, grid.cfg_num_epochs)) in (
        [("mlp", 3), ("linear", 3), ("mlp", 1), ("linear", 1)],
        [("mlp", 3), ("mlp", 1), ("linear", 3), ("linear", 1)]), grid[["cfg_head", "cfg_num_epochs"]]
    meta = json.loads((study / "study.json").read_text())
    assert meta["split"]["speaker_dependent"] is False
    assert not set(meta["split"]["test_speakers"]) & set(meta["split"]["train_speakers"] + meta["split"]["val_speakers"])
    assert load_study(study).strategy_meta("tpe")["warmup"] >= 1
    for strategy in ("tpe", "gp", "skopt"):
        assert "told a penalty" in meta["units"][strategy]["notes"]
    report = (study / "report.md").read_text()
    assert f"`total_params <= {limit}`" in report and "coefficient of variation" in report
    # warm workers (study.warm): trials of later units ran in processes an earlier unit started
    units_per_worker = trials.groupby("worker_pid").unit.nunique()
    assert units_per_worker.max() >= 2 and trials.worker_pid.nunique() < trials.unit.nunique(), units_per_worker
    # --resume of a study that is done runs nothing (no Ray, no encode) and gives the same results
    again = _launch(cfg, "--resume", study, "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to run" in again.stderr and "shared encode" not in again.stderr, again.stderr[-3000:]
    assert json.loads(again.stdout)["strategies"] == out["strategies"]
    predict = subprocess.run([sys.executable, "-m", "ser_tune.predict", study / "best_model",
                              next((tmp_path / "corpus").glob("*.wav")), "--json"],
                             cwd=REPO, text=True, capture_output=True, timeout=120)
    assert predict.returncode == 0, predict.stderr
    assert json.loads(predict.stdout)["predictions"][0]["emotion"] in meta["labels"]


def test_diverging_trial_is_an_error_and_the_study_goes_on(tmp_path):
    cfg = _config(tmp_path, strategies=["grid"], space={"lr": {"choice": [1e-3, 1e30]}},
                  grid={"lr": [1e-3, 1e30]}, trial={"unfreeze": "none", "max_length": 1.0, "num_epochs": 2,
                                                    "head_lr_scale": 1.0})
    # trials inside their actors (SER_TUNE_WARM_WORKERS=0, what bench/warm_workers.py compares with): the
    # error reaches the trial's row the same way
    run = _launch(cfg, "--trials", 2, "--json", env={**os.environ, "SER_TUNE_WARM_WORKERS": "0"})
    assert run.returncode == 0, run.stderr[-3000:]
    study = Path(json.loads(run.stdout.strip().splitlines()[-1])["study_dir"])
    trials = pd.read_csv(study / "trials.csv")
    assert trials.groupby("worker_pid").unit.nunique().max() == 1  # no process outlives its unit's Tuner
    trials = trials[trials.strategy == "grid"]    # not the default-configuration baseline's row
    assert sorted(trials.status) == ["ERROR", "TERMINATED"]
    error = trials[trials.status == "ERROR"].error.iloc[0]
    assert "loss became" in error


def test_killed_study_resumes_to_the_full_budget(tmp_path):
    cfg = _config(tmp_path, strategies=["tpe", "random"], budget={"trials": 4},
                  space={"lr": {"loguniform": [1e-3, 3e-2]}, "num_epochs": {"int": [6, 8]}})
    # the README's `--strategies tpe gp --trials 15 --cpus-per-trial 1`, as this study's own (the resume, with
    # none of them, goes on with the same experiment)
    proc = subprocess.Popen([sys.executable, "-m", "ser_tune.launch", str(cfg), "--concurrency", "1",
                             "--strategies", "tpe", "random", "--trials", "4", "--cpus-per-trial", "1"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    study = None
    deadline = time.time() + 300
    try:
        while time.time() < deadline:   # waits on states: a trial's model is exported just before it ends
            models = list((tmp_path / "studies").glob("t-*/_trial_state/tpe/*/model/model.json"))
            if len(models) >= 2:
                study = models[0].parents[4]
                break
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)   # the driver and the Ray it started die mid-study
        proc.wait(timeout=60)
    assert study is not None, "no trial finished in time"
    done_before = {p.parent.name for p in (study / "tpe").glob("run_trial_*/result.json") if '"test_bca"' in p.read_text()}
    time.sleep(2)
    run = _launch(cfg, "--resume", study, "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    trials = pd.read_csv(study / "trials.csv")
    for strategy in ["tpe", "random"]:
        rows = trials[trials.strategy == strategy]
        assert len(rows) == 4 and (rows.status == "TERMINATED").all(), rows[["trial_id", "status", "error"]].to_string()
        assert rows.trial_id.is_unique
    # the trials that had finished before the kill were kept, not run again
    tpe_dirs = {p.name for p in (study / "tpe").glob("run_trial_*")}
    assert done_before <= tpe_dirs and len(tpe_dirs) == 4
    for name in done_before:
        lines = (study / "tpe" / name / "result.json").read_text().strip().splitlines()
        assert [json.loads(l)["epoch"] for l in lines] == sorted({json.loads(l)["epoch"] for l in lines})
    # every epoch of every trial is in epochs.csv, those of the trial cut off by the kill included
    epochs = pd.read_csv(study / "epochs.csv", dtype={"trial_id": str})
    for row in trials[trials.strategy.isin(["tpe", "random"])].itertuples():
        assert sorted(epochs[epochs.trial_id == str(row.trial_id)].epoch) == list(range(1, int(row.cfg_num_epochs) + 1))
    # the resumed tpe goes on counting from the trials it had finished (Ray's snapshot may lag its
    # result files by the last trial), not from 1
    counts = [int(n) for n in re.findall(r"^tpe\s+(\d+)/4\s", run.stderr, re.M)]
    if len(done_before) < 4:
        assert counts and counts[0] >= max(2, len(done_before)), (counts, done_before)


def test_storage_that_is_a_file_is_one_line_before_ray_starts(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    run = _launch(_config(tmp_path, storage=str(tmp_path / "afile")), timeout=180)
    assert run.returncode == 2
    errors = [l for l in run.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "is a file, not a folder" in errors[0], run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "Ray dashboard" not in run.stdout + run.stderr


@pytest.mark.parametrize("change, message", [
    ({"strategies": ["tpe", "bogus"]}, "bogus"),
    ({"encoder": "bert-base"}, "bert-base"),
    ({"space": {"lr": {"loguniform": [1e-2, 1e-5]}}}, "space.lr"),
    ({"space": {"num_epochs": {"int": ["one", 3]}}}, "space.num_epochs"),
    ({"corpus": {"name": "emodb", "root": "/nonexistent/emodb"}}, "/nonexistent/emodb"),
    ({"resources": {"cpus_per_trial": 64}}, "cpus_per_trial = 64"),
])
def test_bad_input_is_one_clear_line_before_any_trial(tmp_path, change, message):
    run = _launch(_config(tmp_path, **change), timeout=180)
    assert run.returncode == 2
    errors = [l for l in run.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert not list((tmp_path / "studies").glob("*/*/run_trial_*"))
    # no empty study folder left behind for --resume to pick up
    assert not list((tmp_path / "studies").glob("t-*")), list((tmp_path / "studies").iterdir())


def test_a_trial_must_fit_on_one_node_not_on_the_cluster_as_a_whole():
    from ser_tune.study.session import Cluster

    two_nodes = Cluster(cpus=4, largest_node=2, nodes=2, dashboard=None)
    assert two_nodes.cannot_run(2) is None
    assert "cpus_per_trial = 3 but the largest node has 2 CPUs" in two_nodes.cannot_run(3)
    assert Cluster.local().cannot_run(1) is None
