"""`python -m ser_tune.launch CONFIG --address HOST:PORT` on a real two-node Ray cluster.

The cluster (head 127.0.0.1 + worker 127.0.0.2, one CPU each, token auth on) lives in a private
network+PID namespace (tests/cluster_harness.py); the launcher runs inside it as a study's driver
would on a head node. Both nodes see this machine's file system, so a tmp folder is the shared
storage, and the feature cache under it (``<storage>/_feature_cache``) is shared by every trial.

Each node has one CPU and each trial takes one. Which node a trial gets is decided by holding the
head's CPU (LoopbackRayCluster.hold_cpu) and by waiting on states, never on sleeps: on the trials'
report logs (``_trial_state/<unit>/<trial id>/reports.jsonl``, a line per epoch), their final
results and the cluster's alive nodes. Trials report to Ray once, at their end.
Needs unshare/nsenter/ip and the right to create namespaces (root); skips with the reason otherwise.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers sit beside this file
from cluster_harness import HEAD_IP, HEAD_RESOURCE, WORKER_IP, LoopbackRayCluster
from cluster_studies import (  # noqa: F401 (cluster: the module's fixture)
    cluster, check_units_complete, finished_trials, has_saved_state, report_log, running_logs, wait_for,
    write_experiment)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
STRATEGY = "grid"
BUDGET = 4


def _launch(cluster: LoopbackRayCluster, tmp_path: Path, grid: dict, concurrency: int):
    """``python -m ser_tune.launch CONFIG --address ... --json`` started in the namespace (a grid study
    of ``BUDGET`` trials, run in the grid's order). The driver gets RAY_AUTH_MODE=token and
    RAY_AUTH_TOKEN_PATH from cluster.env(): without them the GCS refuses it."""
    config = write_experiment(tmp_path, "cluster", grid=grid, strategies=[STRATEGY], budget={"trials": BUDGET},
                              concurrency=concurrency)
    out, err = tmp_path / "launch.out", tmp_path / "launch.err"
    args = [sys.executable, "-m", "ser_tune.launch", str(config), "--address", cluster.gcs_address,
            "--storage", str(tmp_path / "storage"), "--json"]
    proc = cluster.popen(args, stdout_path=out, stderr_path=err, cwd=REPO)

    def ended() -> str | None:
        return None if proc.poll() is None else f"launcher exited {proc.returncode}:\n{err.read_text()[-3000:]}"
    return proc, out, err, ended


def _finish(proc, out: Path, err: Path, timeout_s: float) -> Path:
    """Wait for the launcher; its study folder (from the --json object, the last stdout line)."""
    try:
        proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, f"launcher exited {proc.returncode}:\n{err.read_text()[-3000:]}"
    lines = out.read_text().strip().splitlines()
    try:
        return Path(json.loads(lines[-1])["study_dir"])
    except (IndexError, ValueError, KeyError) as exc:
        raise AssertionError(f"the launcher's stdout does not end with its JSON object ({exc}):\n"
                             + "\n".join(lines[-20:])) from None


def _study(storage: Path) -> Path | None:
    found = sorted(storage.glob("cluster-*"))
    return found[-1] if found else None


def _grid_trial_running(storage: Path, min_epochs: int, max_epoch: int, *, saved: bool = False):
    """A grid trial that has run at least ``min_epochs`` epochs and not past ``max_epoch`` (with ``saved``:
    and has saved an epoch state to go on from): (study, trial id)."""
    def condition():
        study = _study(storage)
        if study is None:
            return None
        for trial, rows in running_logs(study, STRATEGY).items():
            if min_epochs <= len(rows) and rows[-1]["epoch"] <= max_epoch and (
                    not saved or has_saved_state(study, STRATEGY, trial)):
                return study, trial
        return None
    return condition


def test_launch_study_runs_on_both_nodes_and_survives_losing_the_worker(cluster, tmp_path):
    """The first trials run on the worker, the 1500-epoch one is killed with its node part-way and goes on on
    the head from its epoch state, the last runs on the head; every trial reads the one shared cache."""
    storage = tmp_path / "storage"
    started = time.monotonic()
    alive = {n["node_ip"]: n["node_id"][:8] for n in cluster.alive_nodes()}
    assert set(alive) == {HEAD_IP, WORKER_IP}
    status, body = cluster.dashboard_get("/api/version")
    assert status == 200 and body["ray_version"] == ray.__version__
    assert cluster.dashboard_get("/api/version", with_token=False)[0] == 401
    # One trial at a time, in grid order: 0 and 1 (40 epochs), 2 (1500 epochs), 3 (42). The head's CPU
    # is held until the worker is dead, so the encode and every trial up to the kill run on the worker:
    # 0 and 1 end there, 2 is cut off part-way (it has run more epochs than a short trial has, and at
    # least 500 remain when the kill starts).
    hold = cluster.hold_cpu(HEAD_RESOURCE)
    try:
        proc, out, err, ended = _launch(cluster, tmp_path, {"num_epochs": [40, 41, 1500, 42]},
                                        concurrency=1)
        study, victim = wait_for(_grid_trial_running(storage, 60, 1000, saved=True), "1500-epoch trial on the worker",
                                 timeout_s=240, still_running=ended)
        ended_before = {trial for unit, trial in finished_trials(study) if unit == STRATEGY}
        kill_started = time.time()
        killed = cluster.kill_worker(timeout_s=60)      # returns once the head sees one alive node
    finally:
        hold.release()
    print(f"[timing] worker killed ({len(killed)} processes) during trial {victim}, "
          f"declared dead in {time.time() - kill_started:.1f}s")
    study_dir = _finish(proc, out, err, timeout_s=400)
    print(f"[timing] fault launch study end to end: {time.monotonic() - started:.1f}s")
    assert study_dir == study
    assert len(ended_before) == 2 and victim not in ended_before, ended_before

    trials = check_units_complete(study, {"default": 1, STRATEGY: BUDGET}).set_index("trial_id")
    grid = trials[trials.unit == STRATEGY]
    # Every trial ran to its last epoch, each epoch once; the two that ended on the worker before the
    # kill kept their results (on the shared storage) and did not run again.
    for trial, row in grid.iterrows():
        epochs = [r["epoch"] for r in report_log(study, STRATEGY, trial)]
        assert epochs[-1] == row.cfg_num_epochs and epochs == sorted(epochs), trial
    for trial in ended_before:
        assert trials.loc[trial, "node"].startswith(f"{WORKER_IP}/")
        log = report_log(study, STRATEGY, trial)
        assert [r["epoch"] for r in log] == list(range(1, len(log) + 1)), f"{trial} ran again"
        assert all(r["reported_at"] < kill_started for r in log)
    # The trial cut off on the worker was retried on the head from its last epoch state (saved every
    # STATE_EVERY_S seconds), not from scratch: its epochs up to that state are in its log as the worker
    # ran them, and the head went on after them.
    log = report_log(study, STRATEGY, victim)
    on_worker = [r["epoch"] for r in log if r["reported_at"] < kill_started]
    on_head = [r["epoch"] for r in log if r["reported_at"] >= kill_started]
    assert len(on_worker) >= 60 and on_worker == list(range(1, len(on_worker) + 1)), on_worker[:5]
    assert on_head and on_head[0] == on_worker[-1] + 1, (on_worker[-3:], on_head[:3])
    assert trials.loc[victim, "node"].startswith(f"{HEAD_IP}/"), trials.loc[victim, "node"]

    used = {tuple(node.split("/")) for node in trials.node}
    assert used == {(HEAD_IP, alive[HEAD_IP]), (WORKER_IP, alive[WORKER_IP])}, trials.node.tolist()
    meta = json.loads((study / "study.json").read_text())
    assert meta["machine"]["nodes"] == 2 and meta["machine"]["cluster_cpus"] == 2
    # the shared encode ran as Ray tasks on the worker (the head's CPU was held); every trial, on either
    # node and after the resume on the head, read its features from the one cache
    assert (storage / "_feature_cache").is_dir() and any((storage / "_feature_cache").rglob("*.npy"))
    assert meta["cache"]["misses"] == 1
    assert meta["cache"]["ray"]["clips_per_node"] == {alive[WORKER_IP]: meta["corpus"]["files"]}
    assert (trials.cache_misses == 0).all() and (trials.cache_hits > 0).all(), \
        trials[["node", "cache_hits", "cache_misses"]]
