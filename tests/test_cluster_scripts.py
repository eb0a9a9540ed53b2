"""cluster/start-head.sh and cluster/start-worker.sh: arguments handed to `ray start`, and input errors.

A fake `ray` on PATH records its arguments, so these tests start no Ray process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # cluster_harness sits beside this file
import cluster_harness  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
START_HEAD = REPO_ROOT / "cluster" / "start-head.sh"
START_WORKER = REPO_ROOT / "cluster" / "start-worker.sh"


@pytest.fixture
def fake_ray(tmp_path):
    """PATH with a `ray` that writes its argv and auth mode to a JSON file."""
    record = tmp_path / "ray_args.json"
    fake = tmp_path / "bin" / "ray"
    fake.parent.mkdir()
    fake.write_text(
        "#!/usr/bin/env python3\n"
        "import json, os, sys\n"
        f"json.dump({{'argv': sys.argv[1:], 'auth': os.environ.get('RAY_AUTH_MODE'), "
        f"'job_stop_wait': os.environ.get('RAY_JOB_STOP_WAIT_TIME_S')}}, open({str(record)!r}, 'w'))\n"
    )
    fake.chmod(0o755)
    token = tmp_path / "token"
    token.write_text("ab" * 32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(PATH=f"{fake.parent}{os.pathsep}{env['PATH']}", RAY_AUTH_TOKEN_PATH=str(token), HOME=str(tmp_path))
    return env, record


def _run(script: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60)


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_head_gets_limits_loopback_dashboard_and_token_auth(fake_ray):
    env, record = fake_ray
    env.update(RAY_NUM_CPUS="3", RAY_MEMORY_BYTES="2147483648", RAY_OBJECT_STORE_BYTES="300000000",
               RAY_RESOURCES='{"ser_tune_head": 1}')
    done = _run(START_HEAD, env, "--block")
    assert done.returncode == 0, done.stderr
    called = json.loads(record.read_text())
    argv = called["argv"]
    assert argv[0] == "start" and "--head" in argv and argv[-1] == "--block"
    assert _flag(argv, "--num-cpus") == "3"
    assert _flag(argv, "--memory") == "2147483648"
    assert _flag(argv, "--object-store-memory") == "300000000"
    assert _flag(argv, "--dashboard-host") == "127.0.0.1"
    assert _flag(argv, "--ray-client-server-port") == "10001"
    assert json.loads(_flag(argv, "--resources")) == {"ser_tune_head": 1}
    assert called["auth"] == "token"
    assert called["job_stop_wait"] == "60"   # `ray job stop` gives a study's driver a minute, not Ray's 3 s


def test_head_keeps_a_given_job_stop_grace(fake_ray):
    env, record = fake_ray
    env.update(RAY_JOB_STOP_WAIT_TIME_S="0")
    done = _run(START_HEAD, env)
    assert done.returncode == 0, done.stderr
    assert json.loads(record.read_text())["job_stop_wait"] == "0"


def test_worker_waits_for_the_head_port_then_joins(fake_ray):
    env, record = fake_ray
    with socket.socket() as listener:  # stands in for the head's GCS port
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        env.update(RAY_HEAD_ADDRESS=f"127.0.0.1:{port}", RAY_NUM_CPUS="1")
        done = _run(START_WORKER, env)
    assert done.returncode == 0, done.stderr
    argv = json.loads(record.read_text())["argv"]
    assert _flag(argv, "--address") == f"127.0.0.1:{port}"
    assert _flag(argv, "--num-cpus") == "1"
    assert "--memory" in argv and "--object-store-memory" in argv and "--head" not in argv


def test_worker_gives_up_on_an_unreachable_head(fake_ray):
    env, record = fake_ray
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env.update(RAY_HEAD_ADDRESS=f"127.0.0.1:{port}", RAY_HEAD_WAIT_S="1")
    done = _run(START_WORKER, env)
    assert done.returncode == 2
    assert f"head 127.0.0.1:{port} not reachable" in done.stderr
    assert not record.exists()


@pytest.mark.parametrize(
    "script, overrides, message",
    [
        (START_HEAD, {"RAY_NUM_CPUS": "two"}, "RAY_NUM_CPUS must be a positive integer, got 'two'"),
        (START_HEAD, {"RAY_MEMORY_BYTES": "4g"}, "RAY_MEMORY_BYTES must be a positive integer"),
        (START_HEAD, {"RAY_AUTH_MODE": "none"}, "RAY_AUTH_MODE must be 'token' or 'disabled'"),
        (START_HEAD, {"RAY_JOB_STOP_WAIT_TIME_S": "1m"}, "RAY_JOB_STOP_WAIT_TIME_S must be a whole number of seconds"),
        (START_HEAD, {"RAY_AUTH_TOKEN_PATH": "/nonexistent/token"}, "RAY_AUTH_TOKEN_PATH=/nonexistent/token does not exist"),
        (START_WORKER, {}, "RAY_HEAD_ADDRESS is not set"),
        (START_WORKER, {"RAY_HEAD_ADDRESS": "ray-head"}, "RAY_HEAD_ADDRESS must be HOST:PORT"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(fake_ray, script, overrides, message):
    env, record = fake_ray
    env.update(overrides)
    done = _run(script, env)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not record.exists(), "ray start must not run with bad settings"


def test_token_mode_without_any_token_is_refused(fake_ray, tmp_path):
    env, record = fake_ray
    del env["RAY_AUTH_TOKEN_PATH"]  # and HOME has no .ray/auth_token
    done = _run(START_HEAD, env)
    assert done.returncode == 2
    assert "no token" in done.stderr and "ray get-auth-token --generate" in done.stderr
    assert not record.exists()


def test_harness_skip_reason_names_the_missing_tools(monkeypatch):
    monkeypatch.setattr(cluster_harness.shutil, "which", lambda name: None)
    cluster_harness.namespace_support.cache_clear()
    try:
        ok, why = cluster_harness.namespace_support()
    finally:
        monkeypatch.undo()
        cluster_harness.namespace_support.cache_clear()
    assert not ok
    assert "unshare" in why and "nsenter" in why and "apt-get install -y util-linux iproute2" in why
