"""A local study is closed (loopback only, token on the job API), and an interrupt never passes for a
finished study: Ctrl-C (in the encode, mid-study, as a unit ends) exits non-zero, study.json says interrupted,
--resume spends every budget."""
from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BUDGET = 3


def _config(tmp_path: Path) -> Path:
    raw = {
        "name": "t",
        "corpus": {"name": "synthetic", "root": str(tmp_path / "corpus"), "options": {"clips_per_cell": 2}},
        "split": {"kind": "speaker", "val_speakers": 2, "test_speakers": 2, "seed": 0},
        "encoder": "tiny-whisper",
        # a trained top layer makes each trial last a few seconds: long enough to be cut off
        "trial": {"unfreeze": "top:1", "max_length": 1.0, "batch_size": 8},
        "space": {"lr": {"loguniform": [1e-3, 3e-2]}, "num_epochs": {"int": [6, 8]}},
        "strategies": ["tpe", "random"],
        "budget": {"trials": BUDGET},
        "concurrency": 1,
        "storage": str(tmp_path / "studies"),
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _wait_for(condition, what: str, timeout: float = 300.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _listening(pid: int) -> list[str]:
    """Addresses the process tree of ``pid`` listens on (TCP)."""
    tree = {pid} | {p.pid for p in psutil.Process(pid).children(recursive=True)}
    return [c.laddr.ip for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.pid in tree]


def _get(url: str, token: str | None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def _finished_trials(studies: Path) -> int:
    logs = list(studies.glob("t-*/tpe/*/result.json"))
    return sum('"trial_complete": true' in p.read_text() for p in logs)


def _not_ignoring_sigint(pid: int) -> list[str]:
    """The raylet and Ray's workers under ``pid`` (its trials' processes, "ray::<task>"; not its agents,
    which set their own handlers) that a Ctrl-C would kill: a worker the raylet starts inherits its
    disposition, so one caught importing by a Ctrl-C dies with a traceback unless the raylet ignores it."""
    out = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            name = " ".join(child.cmdline())
            worker = name.startswith("ray::") and "Agent" not in name
            if not worker and not name.split(" ")[0].endswith("raylet"):
                continue
            status = Path(f"/proc/{child.pid}/status").read_text()
            ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
            if not ignored & (1 << (signal.SIGINT - 1)):
                out.append(name[:120])
        except (OSError, psutil.Error):   # gone meanwhile
            continue
    return out


ENCODE_INTERRUPTED = """
import os, signal, time, sys
from ser_tune.study import prepare
def interrupted_encode(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C in the middle of the encode
    time.sleep(30)
prepare.encode_once = interrupted_encode
from ser_tune.launch import main
sys.argv[0] = "ser_tune.launch"
raise SystemExit(main())
"""


def _interrupted(study: Path) -> list[str]:
    """The units a stop cut (each paused), once study.json says the study is interrupted."""
    meta = json.loads((study / "study.json").read_text())
    assert meta["status"] == "interrupted", meta
    units = meta.get("units", {})   # none yet when the encode was cut
    cut = [name for name, u in units.items() if u["status"] == "interrupted"]
    assert all("paused_at" in units[name] for name in cut), units
    return cut


def _in_encode(cfg: Path, tmp_path: Path) -> Path:
    """Ctrl-C during the shared encode: the interrupted line, exit 130, the study interrupted."""
    run = subprocess.run([sys.executable, "-c", ENCODE_INTERRUPTED, str(cfg)], cwd=REPO, text=True,
                         capture_output=True, timeout=300)
    assert run.returncode == 130, run.stderr[-3000:]
    assert run.stderr.strip().splitlines()[-1].startswith("study interrupted:") and "Traceback" not in run.stderr
    study = next((tmp_path / "studies").glob("t-*"))
    _interrupted(study)
    return study


def _mid_study(cfg: Path, study: Path, log: Path) -> list[str]:
    """Resumed with the dashboard and Ray Tune's tables; Ctrl-C once a trial has finished. On the way: the
    local Ray is closed (loopback only, the job API wants the study's token) and ignores Ctrl-C itself."""
    with open(log, "w") as out:
        # --ray-verbose 1 (the README's): Ray Tune's own trial tables in place of the one line per trial
        proc = subprocess.Popen([sys.executable, "-m", "ser_tune.launch", str(cfg), "--resume", str(study),
                                 "--ray-verbose", "1"], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                env={**os.environ, "SER_TUNE_RAY_DASHBOARD": "1"})   # its token is tested
    try:
        line = _wait_for(lambda: re.search(r"Ray dashboard: (\S+) \(token: (\S+)\)", log.read_text()), "the dashboard")
        url, token = line.group(1), Path(line.group(2)).read_text().strip()
        _wait_for(lambda: _finished_trials(study.parent) >= 1, "a finished trial")
        # every process of the local Ray listens on loopback only
        addresses = _listening(proc.pid)
        assert addresses and all(ipaddress.ip_address(a.split("%")[0].replace("::ffff:", "")).is_loopback
                                 for a in addresses), addresses
        # the job API (code execution for whoever may call it) wants the study's token
        assert _get(f"{url}/api/jobs/", None) == 401
        assert _get(f"{url}/api/jobs/", "not-the-token") in (401, 403)
        assert _get(f"{url}/api/jobs/", token) == 200
        # Ray's processes ignore Ctrl-C from their start (a worker still importing would print a traceback)
        assert _not_ignoring_sigint(proc.pid) == []
        os.killpg(proc.pid, signal.SIGINT)    # Ctrl-C: the whole foreground process group
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert rc != 0 and "Traceback" not in text, text[-3000:]
    # Ray Tune's tables (its new output or its older "== Status ==" one, whichever it picks for the stream),
    # not the one line per trial
    assert "Logical resource usage:" in text and not re.search(r"^tpe\s+1/", text, re.M)
    cut = _interrupted(study)
    assert cut, "the Ctrl-C cut no unit"
    return cut


def _as_tpe_ends(cfg: Path, study: Path, log: Path) -> None:
    """Resumed; Ctrl-C as tpe's last trial ends (Ray Tune's run is ending, or the next unit is starting): the
    study still stops, exit 130, and the last line is the command that resumes it."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ser_tune.launch", str(cfg), "--resume", str(study)],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: _finished_trials(study.parent) >= BUDGET, "tpe's last trial to end")
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.read_text()
    assert rc == 130, text[-3000:]
    assert f"--resume {study}" in text.splitlines()[-1] and "Tuner.restore" not in text
    _interrupted(study)


def test_a_study_interrupted_in_its_encode_mid_study_and_as_a_unit_ends_is_finished_by_resume(tmp_path):
    """Each interruption leaves the study interrupted (never passed off as finished) and the next --resume
    goes on from it: a Ctrl-C in the encode, one mid-study, one as a unit's last trial ends; the last resume
    spends every budget, runs no trial twice and keeps every epoch."""
    cfg = _config(tmp_path)
    study = _in_encode(cfg, tmp_path)
    cut = _mid_study(cfg, study, tmp_path / "mid.log")
    _as_tpe_ends(cfg, study, tmp_path / "late.log")

    run = subprocess.run([sys.executable, "-m", "ser_tune.launch", str(cfg), "--resume", str(study), "--json"],
                         cwd=REPO, text=True, capture_output=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    assert out["status"] == "done" and out["incomplete"] == []
    units = json.loads((study / "study.json").read_text())["units"]
    for name in cut:   # a stop is a pause of the unit it cut: the unit's clock leaves it out
        pauses = units[name]["pauses"]
        assert pauses and all(units[name]["started_at"] <= stopped < resumed <= units[name]["finished_at"]
                              for stopped, resumed in pauses), units[name]
    trials = pd.read_csv(study / "trials.csv", dtype={"trial_id": str})
    epochs = pd.read_csv(study / "epochs.csv", dtype={"trial_id": str})
    for strategy in ("tpe", "random"):
        rows = trials[trials.unit == strategy]
        assert len(rows) == BUDGET and rows.trial_id.is_unique and (rows.status == "TERMINATED").all()
        for trial in rows.itertuples():
            # every epoch of every trial is kept, also those before the interruptions
            assert sorted(epochs[epochs.trial_id == trial.trial_id].epoch) == list(range(1, int(trial.cfg_num_epochs) + 1))
