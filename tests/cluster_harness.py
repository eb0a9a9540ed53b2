"""A two-node Ray cluster on loopback, inside a private network + PID namespace, for tests.

Ray rewrites 127.0.0.1 to the machine's address when it can, and a second `ray start`
on the same host would fight over ports with any other Ray on the machine. So the
cluster lives in its own namespaces (``unshare --net --pid --mount``): only a loopback
interface exists there (no traffic can leave), the head listens on 127.0.0.1 and the
worker node on 127.0.0.2, and every process of the cluster dies with the namespace's
init process, so teardown is one SIGKILL by process id.

Nodes are started with the project's own ``cluster/start-head.sh`` and
``cluster/start-worker.sh``, with token authentication on. Commands that must talk to
the cluster (a Tune driver, ``python -m ser_tune.launch CONFIG --address ...``) run inside
the namespace through :meth:`LoopbackRayCluster.run` / :meth:`LoopbackRayCluster.popen`
(``nsenter``); the file system is shared with the test, so results can be read directly.

Needs: Linux, root (or unprivileged user namespaces), util-linux (unshare, nsenter)
and iproute2 (ip). :func:`namespace_support` says why not when they are missing.

Example::

    with LoopbackRayCluster() as cluster:
        result = cluster.run([sys.executable, "driver.py", cluster.gcs_address], timeout_s=120)
        cluster.kill_worker()

This file is also the namespace's init process (``--namespace-init``) and the in-namespace
helper for killing a node, listing nodes, HTTP requests to the dashboard and holding a node's
CPU, so it imports only the standard library (Ray only inside ``--hold-cpu``).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
START_HEAD = REPO_ROOT / "cluster" / "start-head.sh"
START_WORKER = REPO_ROOT / "cluster" / "start-worker.sh"

HEAD_IP = "127.0.0.1"
WORKER_IP = "127.0.0.2"
GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
HEAD_RESOURCE = "ser_tune_head"
WORKER_RESOURCE = "ser_tune_worker"

def worker_ip(index: int) -> str:
    """The address of worker node ``index`` (0: WORKER_IP)."""
    return f"127.0.0.{2 + index}"


_UNSHARE_ARGS = ["--net", "--pid", "--fork", "--mount", "--mount-proc", "--kill-child"]


class ClusterHarnessError(RuntimeError):
    """The test cluster could not be started, queried or driven."""


class CommandResult:
    """Outcome of one command run inside the cluster's namespace."""

    def __init__(self, args: Sequence[str], returncode: int, stdout: str, stderr: str, duration_s: float):
        self.args = list(args)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.duration_s = duration_s

    def describe(self, tail_chars: int = 4000) -> str:
        return (
            f"command {self.args} exited {self.returncode} after {self.duration_s:.1f}s\n"
            f"--- stdout (tail) ---\n{self.stdout[-tail_chars:]}\n"
            f"--- stderr (tail) ---\n{self.stderr[-tail_chars:]}"
        )


@functools.lru_cache(maxsize=1)
def namespace_support() -> tuple[bool, str]:
    """(True, "") when this machine can host the cluster, else (False, why not)."""
    if not sys.platform.startswith("linux"):
        return False, "network/PID namespaces need Linux"
    missing = [tool for tool in ("unshare", "nsenter", "ip") if shutil.which(tool) is None]
    if missing:
        return False, (
            f"missing {', '.join(missing)} (Debian/Ubuntu: apt-get install -y util-linux iproute2)"
        )
    probe = [shutil.which("unshare"), *_UNSHARE_ARGS, "--", shutil.which("ip"), "link", "set", "lo", "up"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"cannot create a private network+PID namespace: {exc}"
    if done.returncode != 0:
        return False, (
            "cannot create a private network+PID namespace (needs root or user namespaces): "
            + (done.stderr.strip() or f"exit {done.returncode}")
        )
    return True, ""


def _ray_executable() -> str:
    beside_python = Path(sys.executable).with_name("ray")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("ray")
    if found is None:
        raise ClusterHarnessError("the `ray` command is not installed beside this Python")
    return found


def _children_of(pid: int) -> list[int]:
    """Host pids whose parent is ``pid`` (works without CONFIG_PROC_CHILDREN)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces; fields follow the last ')'.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            children.append(int(entry))
    return children


class CpuHold:
    """A CPU held by :meth:`LoopbackRayCluster.hold_cpu`; :meth:`release` frees it."""

    def __init__(self, proc: subprocess.Popen, release_file: Path):
        self._proc = proc
        self._release_file = release_file

    def release(self, timeout_s: float = 30) -> None:
        self._release_file.touch()
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:  # the cluster's stop() kills it with the namespace
            pass


class LoopbackRayCluster:
    """Context manager: a Ray head (127.0.0.1) and ``workers`` worker nodes (127.0.0.2, 127.0.0.3, ...;
    one by default, none for a one-node cluster) in a private namespace.

    Each node gets ``cpus_per_node`` CPUs, ``memory_bytes`` of task memory and an object store
    of ``object_store_bytes``, plus a custom resource (``ser_tune_head`` / ``ser_tune_worker``)
    so a test can pin work to a node. ``cores`` (optional, one ``taskset`` CPU list per node, head
    first) pins each node's processes to those cores of this machine, so a "1-CPU node" is one
    core and not a share of all of them; :meth:`pinned` runs a driver on the head's cores.
    Every step has a timeout; :meth:`stop` always runs.
    """

    def __init__(
        self,
        *,
        cpus_per_node: int = 1,
        workers: int = 1,
        memory_bytes: int = 2 * 1024**3,
        object_store_bytes: int = 300 * 1000**2,
        start_timeout_s: float = 120.0,
        extra_env: Mapping[str, str] | None = None,
        keep_logs: bool | None = None,
        cores: Sequence[str] | None = None,
    ):
        if cores is not None and len(cores) != 1 + workers:
            raise ClusterHarnessError(f"cores: one CPU list per node ({1 + workers}), got {list(cores)}")
        self.cores = list(cores) if cores is not None else None
        self.cpus_per_node = cpus_per_node
        self.workers = workers
        self.memory_bytes = memory_bytes
        self.object_store_bytes = object_store_bytes
        self.start_timeout_s = start_timeout_s
        self.extra_env = dict(extra_env or {})
        # Keep the session logs after the test when asked (env var for debugging CI failures).
        self.keep_logs = bool(os.environ.get("SER_TUNE_KEEP_CLUSTER_LOGS")) if keep_logs is None else keep_logs
        self.work_dir: Path | None = None
        self.token: str | None = None
        self._unshare: subprocess.Popen | None = None
        self._init_pid: int | None = None
        self._background: list[subprocess.Popen] = []

    # ----- addresses a driver inside the namespace uses -----
    @property
    def gcs_address(self) -> str:
        return f"{HEAD_IP}:{GCS_PORT}"

    @property
    def client_address(self) -> str:
        return f"ray://{HEAD_IP}:{CLIENT_PORT}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{HEAD_IP}:{DASHBOARD_PORT}"

    @property
    def token_path(self) -> Path:
        return self._require_started().joinpath("auth_token")

    @property
    def ray_temp_dir(self) -> Path:
        return self._require_started().joinpath("ray")

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for anything run against the cluster: token auth on, same token everywhere."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
        env.update(
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_path),
            RAY_USAGE_STATS_ENABLED="0",
            # Declare a killed node dead after ~3 s instead of ~15 s (read by the GCS).
            RAY_health_check_period_ms="1000",
            RAY_health_check_timeout_ms="1000",
            RAY_health_check_failure_threshold="3",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        env.update(extra or {})
        return env

    # ----- lifecycle -----
    def __enter__(self) -> "LoopbackRayCluster":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> "LoopbackRayCluster":
        supported, reason = namespace_support()
        if not supported:
            raise ClusterHarnessError(reason)
        # Short path: Ray's unix socket paths live under it and must stay below 107 bytes.
        self.work_dir = Path(tempfile.mkdtemp(prefix="strc-", dir="/tmp"))
        self.token = os.urandom(32).hex()
        self.token_path.write_text(self.token)
        self.token_path.chmod(0o600)
        try:
            self._start_namespace()
            self._start_node(
                START_HEAD, 0,
                RAY_NODE_IP=HEAD_IP,
                RAY_RESOURCES=json.dumps({HEAD_RESOURCE: 1}),
                RAY_TEMP_DIR=str(self.ray_temp_dir),
                RAY_GCS_PORT=str(GCS_PORT),
                RAY_DASHBOARD_HOST=HEAD_IP,
                RAY_DASHBOARD_PORT=str(DASHBOARD_PORT),
                RAY_CLIENT_PORT=str(CLIENT_PORT),
            )
            for i in range(self.workers):
                self._start_node(
                    START_WORKER, 1 + i,
                    RAY_NODE_IP=worker_ip(i),
                    RAY_RESOURCES=json.dumps({WORKER_RESOURCE: 1}),
                    RAY_HEAD_ADDRESS=self.gcs_address,
                    RAY_HEAD_WAIT_S="30",
                )
            self.wait_for_alive_nodes(1 + self.workers, timeout_s=60)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill everything in the namespace (SIGKILL to its init, by pid) and remove the work dir."""
        if self._init_pid is not None:
            try:
                os.kill(self._init_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._init_pid = None
        if self._unshare is not None:
            try:
                self._unshare.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._unshare.kill()
                self._unshare.wait(timeout=15)
            self._unshare = None
        for proc in self._background:
            # nsenter wrappers exit once their child in the namespace is gone.
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        self._background.clear()
        if self.work_dir is not None and not self.keep_logs:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # ----- running things inside the namespace -----
    def command(self, args: Sequence[str], cwd: str | os.PathLike | None = None) -> list[str]:
        """``args`` wrapped so they run inside the cluster's network, PID and mount namespace."""
        if self._init_pid is None:
            raise ClusterHarnessError("the cluster namespace is not running")
        workdir = os.fspath(cwd) if cwd is not None else os.getcwd()
        return [
            shutil.which("nsenter"), "--target", str(self._init_pid),
            "--net", "--pid", "--mount", f"--wd={workdir}", "--", *args,
        ]

    def run(
        self,
        args: Sequence[str] | str,
        *,
        timeout_s: float,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        check: bool = False,
    ) -> CommandResult:
        """Run a command (list, or a string for ``bash -c``) in the namespace and wait for it."""
        argv = ["bash", "-c", args] if isinstance(args, str) else list(args)
        started = time.monotonic()
        proc = subprocess.Popen(
            self.command(argv, cwd), env=self.env(env), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._kill_inside(proc)
            try:
                stdout, stderr = proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:  # a daemon still holds the pipes; give up on the output
                stdout, stderr = "", "(output unavailable: pipes still held after kill)"
            result = CommandResult(argv, -9, stdout, stderr, time.monotonic() - started)
            raise ClusterHarnessError(f"timed out after {timeout_s}s: {result.describe()}")
        result = CommandResult(argv, proc.returncode, stdout, stderr, time.monotonic() - started)
        if check and result.returncode != 0:
            raise ClusterHarnessError(result.describe())
        return result

    def popen(
        self,
        args: Sequence[str],
        *,
        stdout_path: Path,
        stderr_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
    ) -> subprocess.Popen:
        """Start a command in the namespace without waiting (output goes to files); stopped with the cluster."""
        with open(stdout_path, "w") as out, open(stderr_path, "w") as err:
            proc = subprocess.Popen(
                self.command(list(args), cwd), env=self.env(env), stdout=out, stderr=err,
                start_new_session=True,
            )
        self._background.append(proc)
        return proc

    def python(self, code: str, *, timeout_s: float = 60, check: bool = True) -> CommandResult:
        return self.run([sys.executable, "-c", code], timeout_s=timeout_s, check=check)

    # ----- cluster state and faults -----
    def alive_nodes(self, timeout_s: float = 30) -> list[dict]:
        """Alive nodes as the dashboard's state API reports them (node_ip, node_id, resources)."""
        result = self.run(
            [sys.executable, __file__, "--alive-nodes", self.dashboard_url], timeout_s=timeout_s, check=True
        )
        return json.loads(result.stdout.strip().splitlines()[-1])

    def hold_cpu(self, node_resource: str = HEAD_RESOURCE, *, timeout_s: float = 60) -> "CpuHold":
        """Keep one CPU of a node busy (a placeholder Ray task pinned by the node's custom resource).

        Returns once the task runs, so the scheduler can place nothing else there until
        :meth:`CpuHold.release`; tests use it to decide which node gets the first trial.
        """
        folder = Path(tempfile.mkdtemp(prefix="hold-", dir=self._require_started()))
        held, release = folder / "held", folder / "release"
        proc = self.popen(
            [sys.executable, __file__, "--hold-cpu", self.gcs_address, node_resource, str(held), str(release)],
            stdout_path=folder / "out", stderr_path=folder / "err",
        )
        deadline = time.monotonic() + timeout_s
        while not held.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                release.touch()
                raise ClusterHarnessError(
                    f"could not hold a CPU with resource {node_resource} within {timeout_s}s:\n"
                    f"{(folder / 'err').read_text()[-3000:]}"
                )
            time.sleep(0.2)
        return CpuHold(proc, release)

    def dashboard_get(self, path: str, *, with_token: bool = True, timeout_s: float = 30) -> tuple[int, object]:
        """GET ``path`` from the head's dashboard inside the namespace: (HTTP status, parsed JSON body or None)."""
        args = [sys.executable, __file__, "--http-get", f"{self.dashboard_url}{path}"]
        if not with_token:
            args.append("--no-token")
        result = self.run(args, timeout_s=timeout_s, check=True)
        answer = json.loads(result.stdout.strip().splitlines()[-1])
        return answer["status"], answer["body"]

    # ----- Ray jobs (the job API on the head's dashboard, as `ray job ...` from a host) -----
    def submit_job(self, entrypoint: Sequence[str], *, submission_id: str, timeout_s: float = 120) -> CommandResult:
        """``ray job submit --no-wait``: returns once the head accepted the job; the job outlives the client."""
        return self.run(["ray", "job", "submit", "--address", self.dashboard_url, "--submission-id", submission_id,
                         "--no-wait", "--", *entrypoint], timeout_s=timeout_s, check=True)

    def job_status(self, submission_id: str) -> str:
        """PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED (the job API's answer)."""
        status, body = self.dashboard_get(f"/api/jobs/{submission_id}")
        if status != 200 or not isinstance(body, dict):
            raise ClusterHarnessError(f"job {submission_id}: the job API answered {status}: {body}")
        return str(body["status"])

    def wait_for_job(self, submission_id: str, statuses: Sequence[str], *, timeout_s: float) -> str:
        """Poll the job's status until it is one of ``statuses``; returns it."""
        deadline = time.monotonic() + timeout_s
        status = "?"
        while time.monotonic() < deadline:
            status = self.job_status(submission_id)
            if status in statuses:
                return status
            if status in ("STOPPED", "SUCCEEDED", "FAILED"):
                break   # terminal, and not what was awaited
            time.sleep(1)
        raise ClusterHarnessError(f"job {submission_id} is {status}, not {'/'.join(statuses)} "
                                  f"(waited up to {timeout_s}s); its log:\n{self.job_logs(submission_id)[-3000:]}")

    def stop_job(self, submission_id: str, *, timeout_s: float = 120) -> CommandResult:
        """``ray job stop``: SIGTERM to the job's driver, SIGKILL after the head's RAY_JOB_STOP_WAIT_TIME_S;
        returns once the job is stopped."""
        return self.run(["ray", "job", "stop", "--address", self.dashboard_url, submission_id],
                        timeout_s=timeout_s, check=True)

    def job_logs(self, submission_id: str, *, timeout_s: float = 60) -> str:
        return self.run(["ray", "job", "logs", "--address", self.dashboard_url, submission_id],
                        timeout_s=timeout_s, check=True).stdout

    def wait_for_alive_nodes(self, count: int, *, timeout_s: float) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        nodes: list[dict] = []
        last_error = ""
        while time.monotonic() < deadline:
            try:
                nodes = self.alive_nodes()
                if len(nodes) == count:
                    return nodes
            except ClusterHarnessError as exc:
                last_error = str(exc)[-1500:]
            time.sleep(1)
        raise ClusterHarnessError(
            f"expected {count} alive nodes within {timeout_s}s, saw {nodes}; {last_error}\n{self.log_excerpt()}"
        )

    def kill_worker(self, *, timeout_s: float = 60) -> list[int]:
        """SIGKILL every process of the (first) worker node (raylet, agents, its workers), as a lost
        machine would. Returns the killed pids (namespace pids) once the head reports it gone."""
        result = self.run(
            [sys.executable, __file__, "--kill-node-ip", WORKER_IP], timeout_s=30, check=True
        )
        killed = json.loads(result.stdout.strip().splitlines()[-1])
        if not killed:
            raise ClusterHarnessError(f"no process of the worker node ({WORKER_IP}) was found")
        self.wait_for_alive_nodes(self.workers, timeout_s=timeout_s)
        return killed

    def log_excerpt(self, tail_chars: int = 1500) -> str:
        """Tails of the Ray session's error logs, for failure messages."""
        if self.work_dir is None:
            return ""
        parts = []
        for path in sorted(self.ray_temp_dir.glob("session_*/logs/*.err")):
            try:
                text = path.read_text(errors="replace").strip()
            except OSError:
                continue
            if text:
                parts.append(f"--- {path.name} ---\n{text[-tail_chars:]}")
        return "\n".join(parts)

    # ----- internals -----
    def _require_started(self) -> Path:
        if self.work_dir is None:
            raise ClusterHarnessError("the cluster has not been started")
        return self.work_dir

    def _start_namespace(self) -> None:
        ready = self.work_dir / "namespace.ready"
        log = open(self.work_dir / "namespace.log", "w")
        self._unshare = subprocess.Popen(
            [shutil.which("unshare"), *_UNSHARE_ARGS, "--", sys.executable, __file__,
             "--namespace-init", str(ready)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self._unshare.poll() is not None:
                raise ClusterHarnessError(
                    f"namespace init exited {self._unshare.returncode}: "
                    f"{(self.work_dir / 'namespace.log').read_text()[-2000:]}"
                )
            if ready.exists():
                children = _children_of(self._unshare.pid)
                if len(children) == 1:
                    self._init_pid = children[0]
                    return
            time.sleep(0.1)
        raise ClusterHarnessError("the namespace init did not come up within 20s")

    def pinned(self, args: Sequence[str], node: int = 0) -> list[str]:
        """``args`` run on node ``node``'s cores (as they are, without ``cores``)."""
        if self.cores is None:
            return list(args)
        return [shutil.which("taskset") or "taskset", "-c", self.cores[node], *args]

    def _start_node(self, script: Path, node: int, **node_env: str) -> None:
        node_env.update(
            RAY_NUM_CPUS=str(self.cpus_per_node),
            RAY_MEMORY_BYTES=str(self.memory_bytes),
            RAY_OBJECT_STORE_BYTES=str(self.object_store_bytes),
        )
        # setsid: the node's daemons share one process group, which kill_worker also uses.
        # Ray's daemons and workers inherit the start script's CPU affinity.
        result = self.run(self.pinned(["setsid", "bash", str(script)], node), timeout_s=self.start_timeout_s,
                          env=node_env)
        if result.returncode != 0:
            raise ClusterHarnessError(f"{script.name} failed: {result.describe()}\n{self.log_excerpt()}")

    def _kill_inside(self, proc: subprocess.Popen) -> None:
        """Kill a timed-out command: its nsenter wrapper's group; the command itself dies at stop()."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------
# In-namespace entry points (run as `python cluster_harness.py --...`).
# ---------------------------------------------------------------------------

def _namespace_init(ready_file: str) -> None:
    """PID 1 of the namespace: bring loopback up, then reap orphans until killed."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
    Path(ready_file).write_text("ok")
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            time.sleep(0.5)


def _process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, process group, command line) for every process in this PID namespace."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry)] = (int(fields[1]), int(fields[2]), cmdline)
    return table


def _kill_node(node_ip: str) -> list[int]:
    """SIGKILL the raylet bound to ``node_ip``, its descendants and its process group; return the pids."""
    table = _process_table()
    ip_flags = (f"--node_ip_address={node_ip}", f"--node-ip-address={node_ip}")
    roots = {pid for pid, (_, _, cmd) in table.items() if any(flag in cmd for flag in ip_flags)}
    raylets = {pid for pid in roots if "/raylet/raylet " in table[pid][2]}
    groups = {table[pid][1] for pid in raylets if table[pid][1] > 1}
    targets = set(roots) | {pid for pid, (_, pgid, _) in table.items() if pgid in groups}
    frontier = set(targets)
    while frontier:  # add descendants (core workers running trials on that node)
        frontier = {pid for pid, (ppid, _, _) in table.items() if ppid in frontier} - targets
        targets |= frontier
    targets.discard(1)
    targets.discard(os.getpid())
    for pid in sorted(targets):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return sorted(targets)


def _alive_nodes(dashboard_url: str) -> list[dict]:
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    request = urllib.request.Request(
        f"{dashboard_url}/api/v0/nodes?limit=100&detail=true",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        payload = json.load(response)
    nodes = payload["data"]["result"]["result"]
    return [
        {"node_id": n["node_id"], "node_ip": n["node_ip"], "resources": n.get("resources_total", {})}
        for n in nodes
        if n["state"] == "ALIVE"
    ]


def _http_get(url: str, with_token: bool) -> dict:
    """One GET, with ``Authorization: Bearer <token>`` from RAY_AUTH_TOKEN_PATH unless told not to."""
    headers = {}
    if with_token:
        headers["Authorization"] = f"Bearer {Path(os.environ['RAY_AUTH_TOKEN_PATH']).read_text().strip()}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": None}
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")[:2000]
    return {"status": status, "body": body}


def _hold_cpu(address: str, node_resource: str, held_file: str, release_file: str) -> None:
    """Driver: run one 1-CPU task on the node with ``node_resource`` until ``release_file`` exists."""
    import ray  # only this entry point needs Ray; the harness itself stays standard-library only

    @ray.remote(num_cpus=1, resources={node_resource: 1})
    def hold() -> None:
        Path(held_file).touch()
        while not Path(release_file).exists():
            time.sleep(0.1)

    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    ray.get(hold.remote())


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--namespace-init":
        _namespace_init(argv[1])
    elif len(argv) == 2 and argv[0] == "--kill-node-ip":
        print(json.dumps(_kill_node(argv[1])))
    elif len(argv) == 2 and argv[0] == "--alive-nodes":
        print(json.dumps(_alive_nodes(argv[1])))
    elif len(argv) == 5 and argv[0] == "--hold-cpu":
        _hold_cpu(*argv[1:])
    elif len(argv) in (2, 3) and argv[0] == "--http-get" and argv[2:] in ([], ["--no-token"]):
        print(json.dumps(_http_get(argv[1], with_token=argv[2:] != ["--no-token"])))
    else:
        print(f"usage: {Path(__file__).name} --namespace-init FILE | --kill-node-ip IP | --alive-nodes URL"
              " | --http-get URL [--no-token] | --hold-cpu GCS RESOURCE HELD_FILE RELEASE_FILE", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
