"""A study as a Ray job on a running two-node cluster: submitted and left (``--no-wait``), stopped with
``ray job stop``, resumed to its full budget.

``ray job stop`` sends SIGTERM to the job's driver (and its child processes), waits the head's
``RAY_JOB_STOP_WAIT_TIME_S`` (Ray's default 3 s; cluster/start-head.sh makes it 60 s), then SIGKILLs
them. The driver turns SIGTERM into Ray Tune's graceful stop and records the unit as interrupted;
the study resumes cleanly: trials continue from their own epoch state and none runs twice.

The dashboard and the job API, which runs code, answer only with the cluster's token.

The cluster (head 127.0.0.1 + worker 127.0.0.2, one CPU each, token auth on) lives in a private
network+PID namespace (tests/cluster_harness.py); the tests drive it through the job API on the
head's dashboard, as a host would. Needs root and unshare/nsenter/ip; skips with the reason otherwise.
(Ray Tune's spreading of trials over nodes and its recovery from a lost node are tested through a
launched study: tests/test_cluster_launch.py.)
"""
from __future__ import annotations

import json
import re
import sys
import textwrap
import time
from pathlib import Path

import pytest
import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers sit beside this file
from cluster_harness import LoopbackRayCluster
from cluster_studies import (  # noqa: F401 (cluster: the module's fixture)
    cluster, check_units_complete, finished_trials, has_saved_state, report_log, running_logs, wait_for,
    write_experiment)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

STRATEGIES = ("tpe",)   # one searcher whose state a resume restores: enough trials to stop between
BUDGET = 3
UNITS = {"default": 1, **{s: BUDGET for s in STRATEGIES}}


def _write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


def _study(storage: Path) -> Path | None:
    found = sorted(storage.glob("jobs-*"))
    return found[-1] if found else None


def _job_alive(cluster: LoopbackRayCluster, job: str):
    def why_not() -> str | None:
        status = cluster.job_status(job)
        return None if status in ("PENDING", "RUNNING") else f"job {status}:\n{cluster.job_logs(job)[-3000:]}"
    return why_not


def _num_epochs(study: Path, unit: str, trial: str) -> int | None:
    """The trial's num_epochs, from the config Ray wrote into its folder."""
    for params in (study / unit).glob(f"*{trial}*/params.json"):
        try:
            return int(json.loads(params.read_text())["num_epochs"])
        except (ValueError, KeyError):   # still being written
            return None
    return None


def _mid_study(storage: Path):
    """Some trials have ended and another has saved an epoch state with at least half its epochs to go
    (seconds, however fast the machine runs epochs): the moment to stop."""
    def condition():
        study = _study(storage)
        if study is None or len(finished_trials(study)) < 2:
            return None
        done = {trial for _, trial in finished_trials(study)}
        for unit in STRATEGIES:
            for trial, rows in running_logs(study, unit).items():
                if trial in done or len(rows) < 20 or not has_saved_state(study, unit, trial):
                    continue
                total = _num_epochs(study, unit, trial)
                if total and len(rows) <= total // 2:
                    return study, unit, trial
        return None
    return condition


# A stop without grace (RAY_JOB_STOP_WAIT_TIME_S=0: SIGKILL right after the SIGTERM) was tested the same
# way and passed; it is left out of the suite for time: a killed driver's resume is also what
# tests/test_launch.py (SIGKILL) and test_cluster_launch.py (a lost node) check.
def test_study_as_a_ray_job_stops_and_resumes_to_its_budget(cluster, tmp_path):
    storage = tmp_path / "storage"
    # head-only trials of 1200-2000 epochs (5-9 s each on an idle machine): stopped mid-study while a trial
    # has saved an epoch state (every 2 s) and has half its epochs to go, so that it is still part-way when
    # the SIGTERM comes
    config = write_experiment(tmp_path, "jobs", strategies=list(STRATEGIES), budget={"trials": BUDGET},
                              space={"lr": {"loguniform": [1e-3, 1e-2]}, "num_epochs": {"int": [1200, 2000]}},
                              concurrency=None)
    launch = [sys.executable, "-m", "ser_tune.launch", str(config), "--storage", str(storage)]
    submitted = cluster.submit_job(launch, submission_id="study-1")
    print(f"[timing] ray job submit --no-wait returned in {submitted.duration_s:.1f}s")
    study, unit, trial = wait_for(_mid_study(storage), "finished trials and one part-way", timeout_s=300,
                                  still_running=_job_alive(cluster, "study-1"), poll_s=0.5)
    before = report_log(study, unit, trial)
    stopping = time.time()
    stop = cluster.stop_job("study-1")
    print(f"[timing] ray job stop took {stop.duration_s:.1f}s")
    assert cluster.job_status("study-1") == "STOPPED"
    meta = json.loads((study / "study.json").read_text())
    assert meta["status"] != "done"
    # The shared encode ran as Ray tasks (a resume finds the cache and encodes nothing). Which nodes
    # took its shards depends on which had a warm worker first: tests/test_cluster_launch.py pins it.
    assert sum(meta["cache"]["ray"]["clips_per_node"].values()) == meta["corpus"]["files"]
    # the driver had time to stop Ray Tune and say so
    assert meta["status"] == "interrupted" and meta["units"][unit]["status"] == "interrupted", meta["units"]
    first_log = cluster.job_logs("study-1")
    assert re.search(r"^default\s+1/1\s+trial \d+\s+val_bca", first_log, re.M), first_log[-3000:]
    assert re.search(rf"^{STRATEGIES[0]}\s+1/{BUDGET}\s+trial \d+\s+val_bca", first_log, re.M), first_log[-3000:]

    cluster.submit_job([*launch, "--resume"], submission_id="study-2")
    cluster.wait_for_job("study-2", ["SUCCEEDED"], timeout_s=400)
    resumed_log = cluster.job_logs("study-2")
    assert f"study folder: {study}" in resumed_log
    assert re.search(rf"^{STRATEGIES[-1]}\s+{BUDGET}/{BUDGET}\s+trial \d+\s+val_bca", resumed_log, re.M), resumed_log[-3000:]
    check_units_complete(study, UNITS)
    # The trial stopped part-way went on from its own epoch state: its epochs before the stop are kept
    # and the run after the resume starts where they ended, not at epoch 1.
    log = report_log(study, unit, trial)
    # (Epoch states are saved every STATE_EVERY_S seconds: the epochs logged after the last save ran again.)
    kept = [row["epoch"] for row in log if row["reported_at"] < stopping]
    after = [row["epoch"] for row in log if row["reported_at"] >= stopping]
    assert kept and kept == list(range(1, len(kept) + 1)), (kept[-3:], len(before))
    assert after and after[0] == kept[-1] + 1, (kept[-3:], after[:3])


AUTH_PROBE = """
    import json, sys, urllib.error, urllib.request

    url, token = sys.argv[1], open(sys.argv[2]).read().strip()

    def status(path, headers=None, base=url):
        try:
            with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers or {}), timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, None
        except OSError as e:
            return "unreachable", None

    bearer = {"Authorization": "Bearer " + token}
    report = {
        "version_no_token": status("/api/version")[0],
        "version_wrong_token": status("/api/version", {"Authorization": "Bearer " + "0" * 64})[0],
        "version_with_token": status("/api/version", bearer),
        "jobs_no_token": status("/api/jobs/")[0],
        "jobs_with_token": status("/api/jobs/", bearer)[0],
        "dashboard_on_worker_ip": status("/api/version", bearer, base=url.replace("127.0.0.1", "127.0.0.2"))[0],
    }
    print(json.dumps(report))
"""


def test_dashboard_answers_only_with_the_token(cluster, tmp_path):
    probe = _write(tmp_path / "auth_probe.py", AUTH_PROBE)
    result = cluster.run([sys.executable, str(probe), cluster.dashboard_url, str(cluster.token_path)],
                         timeout_s=60, check=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    status, body = report["version_with_token"]
    assert status == 200 and body["ray_version"] == ray.__version__
    assert report["version_no_token"] == 401
    assert report["version_wrong_token"] == 403
    assert report["jobs_no_token"] == 401  # the job API runs code: closed without the token
    assert report["jobs_with_token"] == 200
    # --dashboard-host 127.0.0.1: not listening on the node's other address.
    assert report["dashboard_on_worker_ip"] == "unreachable"


def test_job_submission_works_only_with_the_token(cluster, tmp_path):
    """`ray job submit` is how a host reaches the compose head: it must work with the token and only with it.

    (The Ray client, ray://127.0.0.1:10001, also accepts the token, but its per-connection server
    sometimes fails to start on a loaded 2-core machine, so it is not asserted here.)
    """
    job = cluster.run(
        ["ray", "job", "submit", "--address", cluster.dashboard_url, "--",
         sys.executable, "-c", "import ray; ray.init(); print('job-cpus', ray.cluster_resources()['CPU'])"],
        timeout_s=120,
    )
    print(f"[timing] ray job submit round trip: {job.duration_s:.1f}s")
    assert job.returncode == 0, job.describe()
    assert "job-cpus 2.0" in job.stdout  # the job's driver saw both nodes
    refused = cluster.run(["ray", "job", "submit", "--address", cluster.dashboard_url, "--", "touch", str(tmp_path / "pwned")],
                          timeout_s=60, env={"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")})
    assert refused.returncode != 0 and "Authentication required" in refused.stdout + refused.stderr
    assert not (tmp_path / "pwned").exists()
