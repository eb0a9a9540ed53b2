"""A running study watched as people watch one: its trials land in STUDY/optuna.db as they end (optuna-dashboard
lists them), and Prometheus (Debian's package), given the config Ray writes for its session, scrapes the study's
progress from Ray's metrics. One launched study serves both; loopback only, bounded waits, always stopped."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from ser_tune.study.optuna_store import STORE_FILE, storage_url, study_name
from test_study_optuna import dashboard_studies, free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BUDGET = 3


def two_strategy_study(tmp_path: Path, name: str) -> Path:
    """A tiny launchable study (synthetic corpus, tiny-whisper): tpe and random, 3 trials each, one at a time."""
    config = {
        "name": name, "encoder": "tiny-whisper",
        "corpus": {"name": "synthetic", "root": str(tmp_path / "corpus"), "options": {"clips_per_cell": 2}},
        "split": {"kind": "speaker", "val_speakers": 2, "test_speakers": 2, "seed": 0},
        "trial": {"unfreeze": "none", "max_length": 1.0, "batch_size": 16},
        "space": {"lr": {"loguniform": [1e-3, 3e-2]}, "num_epochs": {"int": [1, 3]}},
        "strategies": ["tpe", "random"], "budget": {"trials": BUDGET}, "resources": {"cpus_per_trial": 1},
        "concurrency": 1, "seed": 0, "storage": str(tmp_path / "studies"),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


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


def _wait(condition, what: str, seconds: float, alive=lambda: True):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and alive():
        found = condition()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"no {what} within {seconds:.0f} s")


class Watcher:
    """What a person watching the study sees while it runs: tpe's trials in optuna.db (how many had ended,
    and whether the study was still running then), and Prometheus scraping Ray's metrics (when installed)."""

    def __init__(self, tmp_path: Path, launch: subprocess.Popen, ray_tmp: Path):
        self.tmp_path, self.launch, self.ray_tmp = tmp_path, launch, ray_tmp
        self.seen_live: tuple[int, bool] | None = None
        self.prometheus: subprocess.Popen | None = None
        self.port = free_port()

    def look(self) -> None:
        if self.seen_live is None:
            self.seen_live = self.tpe_trials_in_storage()
        if self.prometheus is None and shutil.which("prometheus"):
            ray_config = next(iter(self.ray_tmp.glob("ray/session_*/metrics/prometheus/prometheus.yml")), None)
            if ray_config is not None:
                self.prometheus = subprocess.Popen(
                    ["prometheus", f"--config.file={_prometheus_config(ray_config, self.tmp_path / 'prometheus.yml')}",
                     f"--web.listen-address=127.0.0.1:{self.port}", f"--storage.tsdb.path={self.tmp_path / 'tsdb'}"],
                    stdout=subprocess.DEVNULL, stderr=(self.tmp_path / "prometheus.log").open("w"))

    def tpe_trials_in_storage(self) -> tuple[int, bool] | None:
        study_dirs = list((self.tmp_path / "studies").glob("live-*"))
        db = study_dirs[0] / STORE_FILE if study_dirs else None
        if db is None or not db.exists():
            return None
        try:
            live = optuna.load_study(study_name=study_name("tpe", 0, 0), storage=storage_url(db.parent))
        except KeyError:   # the study's first trial has not ended yet
            return None
        except (SQLAlchemyError, optuna.exceptions.StorageInternalError):
            return None    # read while the driver writes ("database is locked", or both creating the tables)
        ended = [t for t in live.trials if t.state == TrialState.COMPLETE]
        return (len(ended), self.launch.poll() is None) if ended else None

    def scraped(self) -> dict | None:
        """After the study: what Prometheus kept of its metrics (its Ray is gone by then)."""
        if self.prometheus is None:
            return None
        ended = _wait(lambda: _query(self.port, "last_over_time(ray_ser_tune_trials_ended_total[1h])"),
                      "ser_tune metrics in Prometheus", 60, alive=lambda: self.prometheus.poll() is None)
        last = {name: {r["metric"]["unit"]: float(r["value"][1])
                       for r in _query(self.port, f"last_over_time(ray_ser_tune_{name}[1h])")}
                for name in ("best_value", "trial_budget")}
        return {"ended": {r["metric"]["unit"]: float(r["value"][1]) for r in ended},
                "studies": {r["metric"]["study"] for r in ended}, **last}


@pytest.fixture(scope="module")
def watched(tmp_path_factory) -> dict:
    tmp_path = tmp_path_factory.mktemp("live")
    ray_tmp = Path(tempfile.mkdtemp(prefix="rp", dir="/tmp"))   # short: Ray's socket paths have a length limit
    path = two_strategy_study(tmp_path, "live")
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_metrics_report_interval_ms": "1000",
           "SER_TUNE_RAY_DASHBOARD": "1"}   # the dashboard writes Ray's prometheus.yml; its login line is tested
    log = tmp_path / "launch.log"
    with log.open("w") as out:
        launch = subprocess.Popen([sys.executable, "-m", "ser_tune.launch", str(path)], cwd=REPO, text=True, env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    watcher = Watcher(tmp_path, launch, ray_tmp)
    try:
        deadline = time.monotonic() + 600
        while launch.poll() is None and time.monotonic() < deadline:
            watcher.look()
            time.sleep(0.5)
        assert launch.wait(timeout=max(1, deadline - time.monotonic())) == 0, log.read_text()[-3000:]
        scraped = watcher.scraped()
    finally:
        if launch.poll() is None:
            launch.kill()
            launch.wait(timeout=60)
        if watcher.prometheus is not None:
            watcher.prometheus.terminate()
            watcher.prometheus.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return {"study": next((tmp_path / "studies").glob("live-*")), "log": log.read_text(),
            "seen_live": watcher.seen_live, "scraped": scraped}


def test_a_launched_study_fills_its_storage_while_it_runs(watched):
    """During the study, each strategy's trials ended so far are in STUDY/optuna.db; at its end every trial
    of trials.csv is there with the same value; optuna-dashboard lists the studies."""
    text, study_dir = watched["log"], watched["study"]
    assert f"optuna-dashboard sqlite:///{study_dir / STORE_FILE}" in text
    assert f"paste the content of {study_dir / 'ray_auth_token'}" in text
    assert (watched["seen_live"] or (0, False))[1], f"no tpe trial seen in {STORE_FILE} while the study ran"
    trials = pd.read_csv(study_dir / "trials.csv", dtype={"trial_id": str})
    searched = trials[trials.strategy.isin(["tpe", "random"])]
    for strategy, rows in searched.groupby("strategy"):
        study = optuna.load_study(study_name=study_name(strategy, 0, 0), storage=storage_url(study_dir))
        recorded = {t.user_attrs["trial_id"]: t for t in study.trials}
        assert set(recorded) == set(rows.trial_id), strategy
        for row in rows.itertuples():
            assert recorded[row.trial_id].value == pytest.approx(row.val_bca)
            assert recorded[row.trial_id].params["num_epochs"] == row.cfg_num_epochs
            assert recorded[row.trial_id].user_attrs["trial"] == row.trial_index + 1    # start order, from 1
        assert study.metric_names == ["val_bca"]
    # one trial numbering: the launcher's "trial N" is trials.csv's trial_index + 1 (start order), as in the plots
    for strategy, rows in searched.groupby("strategy"):
        printed = {int(m.group(1)): float(m.group(2)) for m in
                   re.finditer(rf"^{strategy}\s+\d+/{BUDGET}  trial (\d+)  val_bca ([0-9.]+)", text, re.M)}
        assert printed == {int(r.trial_index) + 1: pytest.approx(r.val_bca, abs=5e-4) for r in rows.itertuples()}
    names = {s["study_name"] for s in dashboard_studies(study_dir / STORE_FILE)}
    assert names == {study_name("tpe", 0, 0), study_name("random", 0, 0)}


def test_prometheus_scrapes_a_running_studys_progress(watched):
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus is not installed (Debian: apt-get install -y prometheus)")
    scraped, study = watched["scraped"], watched["study"]
    assert scraped is not None, "Ray wrote no prometheus.yml for the study's session"
    trials = pd.read_csv(study / "trials.csv")
    by_unit, budget, best = scraped["ended"], scraped["trial_budget"], scraped["best_value"]
    assert by_unit["tpe"] == BUDGET and budget["tpe"] == BUDGET and budget["random"] == BUDGET, (by_unit, budget)
    assert best["tpe"] == pytest.approx(trials[trials.strategy == "tpe"].val_bca.max())
    assert scraped["studies"] == {study.name}
