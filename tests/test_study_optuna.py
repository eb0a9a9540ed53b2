"""STUDY/optuna.db: every search trial in an Optuna storage as it ends, for optuna-dashboard, live and after."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from ser_tune.study.optuna_store import STORE_FILE, OptunaRecorder, recorder_for, storage_url, study_name

REPO = Path(__file__).resolve().parents[1]
SPACE = {"lr": {"loguniform": [1e-4, 1e-2]}, "num_epochs": {"int": [2, 6]},
         "max_length": {"choice": [1.0, 1.5, 2.0]}}


def _meta(**objective) -> dict:
    return {"kind": "search", "experiment": {"space": SPACE, "grid": None,
                                             "objective": {"metric": "val_bca", "mode": "max", **objective}}}


def _result(val=0.5, **extra) -> dict:
    return {"val_bca": val, "test_bca": 0.4, "time_total_s": 3.5, "node": "127.0.0.1/abc",
            "cfg_lr": 1e-3, "cfg_num_epochs": 3, "cfg_max_length": 1.5, **extra}


def test_a_strategy_runs_trials_land_in_its_own_optuna_study(tmp_path):
    recorder = recorder_for(tmp_path, _meta(), "tpe-r1", {"strategy": "tpe", "outer_fold": 0, "repeat": 1})
    log = tmp_path / "a1.jsonl"   # the trial's report log: one row per epoch
    log.write_text("\n".join(json.dumps({"epoch": e, "val_bca": max(v, 0.4), "epoch_val_bca": v})
                             for e, v in ((1, 0.4), (2, 0.5), (3, 0.45))) + "\n")
    recorder.record("a1", _result(0.5, reports=str(log)), failed=False)
    recorder.record("a2", _result(0.7, cfg_lr=5e-3), failed=False)
    recorder.record("a2", _result(0.7), failed=False)           # a resumed unit: not twice
    recorder.record("a3", _result(None), failed=True)
    study = optuna.load_study(study_name=study_name("tpe", 1, 0), storage=storage_url(tmp_path))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert [t.value for t in trials[:2]] == [0.5, 0.7]
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert trials[1].params == {"lr": 5e-3, "num_epochs": 3, "max_length": 1.5}
    assert trials[0].distributions["lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert trials[0].distributions["num_epochs"] == optuna.distributions.IntDistribution(2, 6)
    attrs = trials[0].user_attrs
    assert attrs["unit"] == "tpe-r1" and attrs["repeat"] == 1 and attrs["outer_fold"] == 0
    assert attrs["test_bca"] == 0.4 and attrs["seconds"] == 3.5 and attrs["node"] == "127.0.0.1/abc"
    assert attrs["trial_id"] == "a1"
    assert trials[0].intermediate_values == {1: 0.4, 2: 0.5, 3: 0.45}    # each epoch's own value


def test_pickled_recorder_reopens_the_storage(tmp_path):
    import pickle

    recorder = recorder_for(tmp_path, _meta(), "gp", {"strategy": "gp", "outer_fold": 0, "repeat": 0})
    recorder.record("b1", _result(0.3), failed=False)
    again = pickle.loads(pickle.dumps(recorder))     # Ray pickles callbacks with the experiment
    again.record("b2", _result(0.6), failed=False)
    study = optuna.load_study(study_name=study_name("gp", 0, 0), storage=storage_url(tmp_path))
    assert [t.value for t in study.trials] == [0.3, 0.6]


def test_several_objectives_in_their_directions_and_values_outside_the_space_kept(tmp_path):
    meta = _meta(metrics={"val_bca": "max", "latency_ms_per_s": "min"})
    recorder = recorder_for(tmp_path, meta, "nsga2", {"strategy": "nsga2", "outer_fold": 0, "repeat": 0})
    recorder.record("c1", _result(0.6, latency_ms_per_s=12.0, cfg_lr=0.5), failed=False)
    recorder.record("c2", _result(0.6), failed=False)   # no latency reported: a failed trial, not a made-up value
    study = optuna.load_study(study_name=study_name("nsga2", 0, 0), storage=storage_url(tmp_path))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    first, second = study.trials
    assert first.values == [0.6, 12.0] and "lr" not in first.params and first.user_attrs["cfg_lr"] == 0.5
    assert second.state == TrialState.FAIL


def test_grid_uses_the_grid_values_and_baselines_are_not_recorded(tmp_path):
    meta = _meta()
    meta["experiment"]["grid"] = {"lr": [1e-6, 1e-3], "num_epochs": [2, 3]}
    recorder = recorder_for(tmp_path, meta, "grid", {"strategy": "grid", "outer_fold": 0, "repeat": 0})
    recorder.record("d1", _result(0.2, cfg_lr=1e-6, cfg_num_epochs=2), failed=False)
    trial = optuna.load_study(study_name=study_name("grid", 0, 0), storage=storage_url(tmp_path)).trials[0]
    assert trial.params == {"lr": 1e-6, "num_epochs": 2}
    assert recorder_for(tmp_path, meta, "default", {"strategy": "default", "baseline": True}) is None
    assert recorder_for(tmp_path, {"kind": "active", "experiment": {}}, "x", {"strategy": "tpe"}) is None
    assert isinstance(recorder, OptunaRecorder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dashboard_studies(db: Path) -> list[dict]:
    """Start optuna-dashboard on 127.0.0.1 (a free port) on ``db`` and read /api/studies; always stopped."""
    port = free_port()
    command = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or "optuna-dashboard"
    server = subprocess.Popen([command, storage_url(db.parent), "--host", "127.0.0.1",
                               "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    return json.loads(response.read())["study_summaries"]
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"optuna-dashboard did not answer: {server.stderr.read()[-2000:]!r}"
                                         if server.poll() is not None else "optuna-dashboard: no answer in 60 s")
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_dashboard_serves_a_study_folders_storage(tmp_path):
    recorder = recorder_for(tmp_path, _meta(), "tpe", {"strategy": "tpe", "outer_fold": 0, "repeat": 0})
    recorder.record("e1", _result(0.5), failed=False)
    studies = dashboard_studies(tmp_path / STORE_FILE)
    assert [s["study_name"] for s in studies] == [study_name("tpe", 0, 0)]


def test_the_launcher_says_how_to_log_in_to_the_ray_dashboard_and_that_it_closes_with_the_study():
    from ser_tune.study.cli import dashboard_lines
    from ser_tune.study.session import Cluster

    text = dashboard_lines(Cluster(cpus=2, largest_node=2, nodes=1, dashboard="http://127.0.0.1:8265",
                                   token_file="/s/ray_auth_token"))
    first, login = text.splitlines()
    assert first == "Ray dashboard: http://127.0.0.1:8265 (token: /s/ray_auth_token)"
    assert "paste the content of /s/ray_auth_token" in login and "closes when the study ends" in login
    joined = dashboard_lines(Cluster(cpus=2, largest_node=2, nodes=1, dashboard="http://10.0.0.1:8265"))
    assert joined == "Ray dashboard: http://10.0.0.1:8265"     # a cluster's dashboard: its own token, its own life


def test_a_storage_that_cannot_be_written_costs_one_line_not_the_study(tmp_path, capsys):
    from types import SimpleNamespace

    (tmp_path / "blocked").mkdir()
    recorder = recorder_for(tmp_path / "blocked", _meta(), "tpe", {"strategy": "tpe", "outer_fold": 0, "repeat": 0})
    (tmp_path / "blocked").rmdir()
    (tmp_path / "blocked").write_text("a file where the study folder was")   # SQLite cannot open blocked/optuna.db
    trial = SimpleNamespace(trial_id="f1", last_result=_result(0.5))
    recorder.on_trial_complete(0, [trial], trial)
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{tmp_path / 'blocked' / STORE_FILE}: trial f1 not recorded (") and "goes on" in line
