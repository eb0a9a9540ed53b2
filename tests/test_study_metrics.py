"""A study's progress as Ray metrics: Prometheus (Debian's package), given the config Ray writes for its
session, scrapes them from a local Ray running a study. Loopback only, bounded waits, always stopped."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ser_tune.study.live_metrics import StudyMetrics
from test_study_optuna import two_strategy_study

REPO = Path(__file__).resolve().parents[1]


def test_the_callback_pickles_without_its_metric_objects():
    metrics = StudyMetrics("s", "tpe", "tpe", "val_bca", "max", 3)
    metrics._made = object()          # stands for Ray's metric objects, which do not pickle
    again = pickle.loads(pickle.dumps(metrics))
    assert again._made is None and again.tags == {"study": "s", "strategy": "tpe", "unit": "tpe",
                                                  "metric": "val_bca"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition, what: str, seconds: float, alive=lambda: True):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and alive():
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {seconds:.0f} s")


def _query(port: int, expression: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expression)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())["data"]["result"]


def _prometheus_config(ray_config: Path, out: Path) -> Path:
    """Ray's own config for its session (its service discovery file lists every node's metrics port),
    scraped every second so a short study's last values are seen before its Ray stops."""
    config = yaml.safe_load(ray_config.read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    out.write_text(yaml.safe_dump(config))
    return out


@pytest.mark.slow
def test_prometheus_scrapes_a_running_studys_progress(tmp_path):
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install -y prometheus)")
    ray_tmp = Path(tempfile.mkdtemp(prefix="rp", dir="/tmp"))   # short: Ray's socket paths have a length limit
    path = two_strategy_study(tmp_path, "metrics")
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_metrics_report_interval_ms": "1000",
           "SER_TUNE_RAY_DASHBOARD": "1"}   # the dashboard writes Ray's prometheus.yml
    log = tmp_path / "launch.log"
    launch = prometheus = None
    try:
        with log.open("w") as out:
            launch = subprocess.Popen([sys.executable, "-m", "ser_tune.launch", str(path)], cwd=REPO, env=env,
                                      stdout=out, stderr=subprocess.STDOUT)
        ray_config = _wait(lambda: next(iter(ray_tmp.glob("ray/session_*/metrics/prometheus/prometheus.yml")), None),
                           "Prometheus config from Ray", 300, alive=lambda: launch.poll() is None)
        port = _free_port()
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={_prometheus_config(ray_config, tmp_path / 'prometheus.yml')}",
             f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"],
            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("w"))
        assert launch.wait(timeout=600) == 0, log.read_text()[-3000:]
        # the study's Ray is gone; what Prometheus scraped while it ran stays
        ended = _wait(lambda: _query(port, "last_over_time(ray_ser_tune_trials_ended_total[1h])"),
                      "ser_tune metrics in Prometheus", 60, alive=lambda: prometheus.poll() is None)
        by_unit = {r["metric"]["unit"]: float(r["value"][1]) for r in ended}
        best = {r["metric"]["unit"]: float(r["value"][1])
                for r in _query(port, "last_over_time(ray_ser_tune_best_value[1h])")}
        budget = {r["metric"]["unit"]: float(r["value"][1])
                  for r in _query(port, "last_over_time(ray_ser_tune_trial_budget[1h])")}
    finally:
        if launch is not None and launch.poll() is None:
            launch.kill()
            launch.wait(timeout=60)
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    study = next((tmp_path / "studies").glob("metrics-*"))
    trials = pd.read_csv(study / "trials.csv")
    assert by_unit["tpe"] == 3 and budget["tpe"] == 3 and budget["random"] == 3, (by_unit, budget)
    assert best["tpe"] == pytest.approx(trials[trials.strategy == "tpe"].val_bca.max())
    assert {r["metric"]["study"] for r in ended} == {study.name}
