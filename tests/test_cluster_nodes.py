"""A real two-node Ray cluster (head 127.0.0.1 + worker 127.0.0.2 in a private namespace).

Trials spread over both nodes, the dashboard and job API demand the token, and a study
survives losing the worker node mid-trial (that test kills the worker, so it runs last). The
Tune drivers' trials wait for each other at their start (a folder of "started" files), so two
run at once, one per 1-CPU node, however long a node's actor takes to come up.
Needs unshare/nsenter/ip and the right to
create namespaces (root); skips with the reason otherwise.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path

import pytest
import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))  # cluster_harness sits beside this file
from cluster_harness import HEAD_IP, WORKER_IP, LoopbackRayCluster, namespace_support

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

_SUPPORTED, _WHY_NOT = namespace_support()


@pytest.fixture(scope="module")
def cluster():
    if not _SUPPORTED:
        pytest.skip(f"multi-node cluster tests need private namespaces: {_WHY_NOT}")
    started = time.monotonic()
    with LoopbackRayCluster(cpus_per_node=1) as running:
        print(f"[timing] two-node cluster up in {time.monotonic() - started:.1f}s")
        yield running


def _write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


SPREAD_DRIVER = """
    import json, sys, time
    from pathlib import Path
    import ray
    from ray import tune

    def trainable(config):
        node_ip = ray.util.get_node_ip_address()
        node_id = ray.get_runtime_context().get_node_id()
        # Two trials run at once, one per 1-CPU node: each waits until two have started, so the first
        # cannot end (and hand its actor to the next trial) before the other node's trial is up.
        started = Path(config["started"])
        (started / str(config["x"])).touch()
        deadline = time.time() + 120
        while len(list(started.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.1)
        for step in range(3):
            tune.report({"step": step, "score": config["x"] * step, "node": node_ip, "node_id": node_id})

    address, storage, out, started = sys.argv[1:5]
    ray.init(address=address)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"x": tune.grid_search([1, 2, 3, 4]), "started": started},
        tune_config=tune.TuneConfig(metric="score", mode="max"),
        run_config=tune.RunConfig(name="spread", storage_path=storage, verbose=0),
    )
    grid = tuner.fit()
    rows = [{"x": r.config["x"], "score": r.metrics.get("score"), "node": r.metrics.get("node"),
             "node_id": r.metrics.get("node_id"), "error": repr(r.error) if r.error else None} for r in grid]
    nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    json.dump({"trials": rows, "nodes": nodes}, open(out, "w"))
"""


def test_trials_run_on_both_nodes(cluster, tmp_path):
    driver = _write(tmp_path / "spread_driver.py", SPREAD_DRIVER)
    out, started = tmp_path / "spread.json", tmp_path / "started"
    started.mkdir()
    result = cluster.run([sys.executable, str(driver), cluster.gcs_address, str(tmp_path / "storage"), str(out),
                          str(started)], timeout_s=240)
    print(f"[timing] 4-trial study on 2 nodes: {result.duration_s:.1f}s")
    assert result.returncode == 0, result.describe()
    summary = json.loads(out.read_text())
    trials = summary["trials"]
    assert sorted(t["x"] for t in trials) == [1, 2, 3, 4]
    assert all(t["error"] is None for t in trials), trials
    assert all(t["score"] == 2 * t["x"] for t in trials), trials
    assert {t["node"] for t in trials} == {HEAD_IP, WORKER_IP}
    assert {t["node_id"] for t in trials} == set(summary["nodes"]), "each trial names a live node id"


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


FAULT_DRIVER = """
    import json, sys, tempfile, time
    from pathlib import Path
    import ray
    from ray import tune

    STEPS = 5
    WORKER_IP = "%(worker_ip)s"

    def trainable(config):
        start = 0
        checkpoint = tune.get_checkpoint()
        if checkpoint:
            with checkpoint.as_directory() as d:
                start = json.loads(Path(d, "state.json").read_text())["step"] + 1
        node_ip = ray.util.get_node_ip_address()
        # Two trials run at once, one per node: each waits until two have started, so the worker gets
        # one however long its actor takes to come up.
        started = Path(config["started"])
        (started / str(config["x"])).touch()
        deadline = time.time() + 120
        while len(list(started.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.1)
        for step in range(start, STEPS):
            time.sleep(0.5)
            with tempfile.TemporaryDirectory() as d:
                Path(d, "state.json").write_text(json.dumps({"step": step}))
                tune.report({"step": step, "resumed_from": start, "node": node_ip, "x": config["x"]},
                            checkpoint=tune.Checkpoint.from_directory(d))
            if node_ip == WORKER_IP and step == 1:
                # Hold this trial on the worker until the test has killed the node under it.
                Path(config["marker"]).touch()
                deadline = time.time() + 90
                while time.time() < deadline:
                    time.sleep(0.5)

    class Events(tune.Callback):
        def __init__(self):
            self.completed, self.recovered, self.errored = [], [], []
        def on_trial_complete(self, iteration, trials, trial, **info):
            self.completed.append(trial.config["x"])
        def on_trial_recover(self, iteration, trials, trial, **info):
            self.recovered.append(trial.config["x"])
        def on_trial_error(self, iteration, trials, trial, **info):
            self.errored.append(trial.config["x"])

    address, storage, marker, out, started = sys.argv[1:6]
    ray.init(address=address)
    events = Events()
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"x": tune.grid_search([1, 2, 3, 4]), "marker": marker, "started": started},
        tune_config=tune.TuneConfig(metric="step", mode="max"),
        run_config=tune.RunConfig(name="fault", storage_path=storage, verbose=0, callbacks=[events],
                                  failure_config=tune.FailureConfig(max_failures=2)),
    )
    grid = tuner.fit()
    rows = [{"x": r.config["x"], "step": r.metrics.get("step"), "resumed_from": r.metrics.get("resumed_from"),
             "node": r.metrics.get("node"), "error": repr(r.error) if r.error else None} for r in grid]
    json.dump({"trials": rows, "completed": events.completed, "recovered": events.recovered,
               "errored": events.errored}, open(out, "w"))
"""


def test_study_survives_losing_the_worker_node(cluster, tmp_path):
    driver = _write(tmp_path / "fault_driver.py", FAULT_DRIVER % {"worker_ip": WORKER_IP})
    marker, out, barrier = tmp_path / "worker_trial_running", tmp_path / "fault.json", tmp_path / "started"
    barrier.mkdir()
    started = time.monotonic()
    proc = cluster.popen(
        [sys.executable, str(driver), cluster.gcs_address, str(tmp_path / "storage"), str(marker), str(out),
         str(barrier)],
        stdout_path=tmp_path / "driver.out", stderr_path=tmp_path / "driver.err",
    )
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            assert proc.poll() is None, (tmp_path / "driver.err").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial reached step 1 on the worker node within 90s"
            time.sleep(0.2)
        kill_started = time.monotonic()
        killed = cluster.kill_worker(timeout_s=60)
        print(f"[timing] worker node killed ({len(killed)} processes) and declared dead in "
              f"{time.monotonic() - kill_started:.1f}s")
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"[timing] fault study end to end: {time.monotonic() - started:.1f}s")
    assert proc.returncode == 0, (tmp_path / "driver.err").read_text()[-3000:]

    summary = json.loads(out.read_text())
    print(f"[fault] {summary}")
    trials = {t["x"]: t for t in summary["trials"]}
    # The whole budget completed, every trial to its last step, none reported as failed.
    assert sorted(trials) == [1, 2, 3, 4]
    assert all(t["error"] is None and t["step"] == 4 for t in trials.values()), trials
    assert sorted(summary["completed"]) == [1, 2, 3, 4], "each trial completes exactly once"
    # The trial held on the worker failed with its node, was retried on the head from its checkpoint.
    assert len(summary["recovered"]) >= 1, summary
    for x in summary["recovered"]:
        assert trials[x]["node"] == HEAD_IP
        assert trials[x]["resumed_from"] >= 2, "retried from the step-1 checkpoint, not from scratch"
