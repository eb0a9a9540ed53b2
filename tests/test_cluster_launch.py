"""`python -m ser_tune.launch CONFIG --address HOST:PORT` on a real two-node Ray cluster.

The cluster (head 127.0.0.1 + worker 127.0.0.2, one CPU each, token auth on) lives in a private
network+PID namespace (tests/cluster_harness.py); the launcher runs inside it as a study's driver
would on a head node. Both nodes see this machine's file system, so a tmp folder is the shared
storage, and the feature cache under it (``<storage>/_feature_cache``) is shared by every trial.

Each node has one CPU and each trial takes one, so two concurrent trials are placed on different
nodes. Ray Tune reuses a finished trial's actor for the next pending trial, though, and drops a
pending trial's actor that has not come up yet: if a trial ends before the other node's actor has
started (10-15 s on a loaded 2-core machine), every trial lands on one node. The studies are
therefore grid searches whose first trials are long enough to cover that, and the fault test
holds the head's CPU (LoopbackRayCluster.hold_cpu) to put its trials on the worker.
Needs unshare/nsenter/ip and the right to create namespaces (root); skips with the reason otherwise.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # cluster_harness sits beside this file
from cluster_harness import HEAD_IP, HEAD_RESOURCE, WORKER_IP, LoopbackRayCluster, namespace_support

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
STRATEGY = "grid"
BUDGET = 4
_SUPPORTED, _WHY_NOT = namespace_support()


@pytest.fixture
def cluster():
    """A fresh two-node cluster per test: the fault test kills its worker."""
    if not _SUPPORTED:
        pytest.skip(f"multi-node cluster tests need private namespaces: {_WHY_NOT}")
    started = time.monotonic()
    with LoopbackRayCluster(cpus_per_node=1) as running:
        print(f"[timing] two-node cluster up in {time.monotonic() - started:.1f}s")
        yield running


def _experiment(tmp_path: Path, grid: dict) -> Path:
    """A grid study of ``BUDGET`` trials, two at a time. Ray's grid order varies lr fastest."""
    raw = {
        "name": "cluster",
        "corpus": {"name": "synthetic", "root": str(tmp_path / "corpus"), "options": {"clips_per_cell": 2}},
        "split": {"kind": "speaker", "val_speakers": 2, "test_speakers": 2, "seed": 0},
        "encoder": "tiny-whisper",
        "trial": {"unfreeze": "none", "max_length": 1.0, "batch_size": 16},
        "space": {"lr": {"loguniform": [1e-3, 1e-2]}, "num_epochs": {"int": [1, 1000]}},
        "grid": grid,
        "strategies": [STRATEGY],
        "budget": {"trials": BUDGET},
        "resources": {"cpus_per_trial": 1},
        "concurrency": 2,
        "seed": 0,
        "storage": str(tmp_path / "storage"),
        "objective": {"metric": "val_bca", "mode": "max"},
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _launch_args(cluster: LoopbackRayCluster, config: Path, storage: Path) -> list[str]:
    # The driver gets RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH from cluster.env(): without them
    # the GCS refuses it (the launcher only turns auth off when it starts its own Ray).
    return [sys.executable, "-m", "ser_tune.launch", str(config), "--address", cluster.gcs_address,
            "--storage", str(storage), "--json"]


def _study_dir(stdout: str) -> Path:
    lines = stdout.strip().splitlines()
    try:
        return Path(json.loads(lines[-1])["study_dir"])
    except (IndexError, ValueError, KeyError) as exc:
        raise AssertionError(f"the launcher's stdout does not end with its JSON object ({exc}):\n"
                             + "\n".join(lines[-20:])) from None


def _result_lines(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:  # a line still being written
            pass
    return lines


def _check_budget_completed(trials: pd.DataFrame) -> None:
    rows = trials[trials.strategy == STRATEGY]
    assert len(rows) == BUDGET, rows
    assert (rows.status == "TERMINATED").all(), rows[["trial_id", "status", "error"]]
    assert rows.trial_id.is_unique, rows.trial_id.tolist()
    assert rows.val_bca.between(0, 1).all() and rows.test_bca.between(0, 1).all(), rows


def _on(node_ip: str, line: dict) -> bool:
    return str(line.get("node", "")).startswith(f"{node_ip}/")


def _wait_for(condition, proc, err: Path, what: str, timeout_s: float):
    """Poll ``condition()`` until it returns something truthy, while the launcher is still running."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = condition()
        if found:
            return found
        assert proc.poll() is None, f"launcher exited {proc.returncode} before {what}:\n{err.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s}s:\n{err.read_text()[-3000:]}"
        time.sleep(0.2)


def test_launch_study_runs_on_both_nodes(cluster, tmp_path):
    storage = tmp_path / "storage"
    # Trials 0 and 1 (300 epochs, ~12 s warm, more cold) start together, one per node, and outlast
    # either node's actor start; trials 2 and 3 (40 epochs) follow on whichever node frees first.
    config = _experiment(tmp_path, {"lr": [1e-3, 3e-3], "num_epochs": [300, 40]})
    run = cluster.run(_launch_args(cluster, config, storage), cwd=REPO, timeout_s=170)
    print(f"[timing] {BUDGET}-trial launch study on 2 nodes: {run.duration_s:.1f}s")
    assert run.returncode == 0, run.describe()
    study = _study_dir(run.stdout)
    assert study.parent == storage

    trials = pd.read_csv(study / "trials.csv")
    _check_budget_completed(trials)
    # `node` is "<ip>/<node id[:8]>": both nodes ran trials, and they are the cluster's two live nodes.
    alive = {n["node_ip"]: n["node_id"][:8] for n in cluster.alive_nodes()}
    assert set(alive) == {HEAD_IP, WORKER_IP}
    used = {tuple(node.split("/")) for node in trials.node}
    assert used == {(HEAD_IP, alive[HEAD_IP]), (WORKER_IP, alive[WORKER_IP])}, trials.node.tolist()
    meta = json.loads((study / "study.json").read_text())
    assert meta["machine"]["nodes"] == 2 and meta["machine"]["cluster_cpus"] == 2
    # The shared feature cache: the driver encoded once, every trial on either node only read it.
    assert (storage / "_feature_cache").is_dir() and any((storage / "_feature_cache").rglob("*"))
    assert (trials.cache_misses == 0).all() and (trials.cache_hits > 0).all(), \
        trials[["node", "cache_hits", "cache_misses"]]

    status, body = cluster.dashboard_get("/api/version")
    assert status == 200 and body["ray_version"] == ray.__version__
    assert cluster.dashboard_get("/api/version", with_token=False)[0] == 401


def test_launch_study_survives_losing_the_worker_node(cluster, tmp_path):
    storage = tmp_path / "storage"
    started = time.monotonic()
    # Trials 0 and 1 (40 epochs) then 2 and 3 (150 epochs, ~6 s warm). The head's CPU is held until
    # the kill, so every trial runs on the worker: 0 and 1 complete there, 2 is cut off mid-way.
    config = _experiment(tmp_path, {"lr": [1e-3, 3e-3], "num_epochs": [40, 150]})
    hold = cluster.hold_cpu(HEAD_RESOURCE)
    out, err = tmp_path / "launch.out", tmp_path / "launch.err"
    proc = cluster.popen(_launch_args(cluster, config, storage), stdout_path=out, stderr_path=err, cwd=REPO)

    def long_trial_running_on_worker():
        for trial_dir in sorted(storage.glob(f"cluster-*/{STRATEGY}/run_trial_*")):
            lines = _result_lines(trial_dir)
            if lines and _on(WORKER_IP, lines[-1]) and lines[-1]["epoch"] < lines[-1]["cfg_num_epochs"] - 100:
                return trial_dir
        return None

    try:
        try:
            victim = _wait_for(long_trial_running_on_worker, proc, err, "150-epoch trial on the worker",
                               timeout_s=150)
            finished_before_kill = [d.name for d in victim.parent.glob("run_trial_*")
                                    if any("test_bca" in line for line in _result_lines(d))]
            kill_started = time.monotonic()
            killed = cluster.kill_worker(timeout_s=60)
        finally:
            hold.release()
        print(f"[timing] worker killed ({len(killed)} processes) during {victim.name}, "
              f"declared dead in {time.monotonic() - kill_started:.1f}s")
        proc.wait(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"[timing] fault launch study end to end: {time.monotonic() - started:.1f}s")
    assert proc.returncode == 0, f"launcher exited {proc.returncode}:\n{err.read_text()[-3000:]}"
    study = _study_dir(out.read_text())
    assert len(finished_before_kill) == 2, finished_before_kill

    trials = pd.read_csv(study / "trials.csv")
    _check_budget_completed(trials)
    dirs = {row.trial_id: next(d for d in (study / STRATEGY).glob(f"run_trial_{row.trial_id}_*"))
            for row in trials.itertuples()}
    # Every trial ran to its last epoch; the one finished on the worker before the kill kept its
    # result (on the shared storage) and was not run again.
    for row in trials.itertuples():
        lines = _result_lines(dirs[row.trial_id])
        assert lines[-1]["epoch"] == row.cfg_num_epochs and "test_bca" in lines[-1], row.trial_id
    for name in finished_before_kill:
        lines = _result_lines(study / STRATEGY / name)
        assert all(_on(WORKER_IP, line) for line in lines)
        assert [line["epoch"] for line in lines] == list(range(1, len(lines) + 1)), f"{name} ran again"
    # The trial cut off on the worker was retried on the head from its last epoch checkpoint.
    lines = _result_lines(study / STRATEGY / victim.name)
    assert _on(WORKER_IP, lines[0]) and _on(HEAD_IP, lines[-1]), [line["node"] for line in lines]
    first_on_head = next(line["epoch"] for line in lines if _on(HEAD_IP, line))
    last_on_worker = max(line["epoch"] for line in lines if _on(WORKER_IP, line))
    assert 1 < first_on_head <= last_on_worker + 1, "retried from its checkpoint, not from scratch"
    victim_node = [row.node for row in trials.itertuples() if dirs[row.trial_id].name == victim.name]
    assert len(victim_node) == 1 and victim_node[0].startswith(f"{HEAD_IP}/"), victim_node
