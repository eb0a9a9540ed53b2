"""Ray for a study: a closed local Ray, or a running cluster joined by address; and the CLI's streams.

A local study binds every Ray process to 127.0.0.1 and turns on token authentication with a token
made for the study (kept, readable by its owner only, in the study folder), unless the caller
already set ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``: without it any local user could run code
through the dashboard's job API. A cluster is joined with the nodes' own token, as they require.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import logging
import os
import secrets
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from .warm import SOFT_LIMIT_ENV, pool_size

TOKEN_FILE = "ray_auth_token"
STORAGE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT)   # storage not writable


class JoinError(RuntimeError):
    """The cluster named by --address (or RAY_ADDRESS) could not be joined."""


@dataclass
class Cluster:
    cpus: float            # CPUs of all alive nodes
    largest_node: float    # CPUs of the largest node: a trial needing more can never start
    nodes: int
    dashboard: str | None  # URL
    token_file: str | None = None   # where the owner finds the local dashboard's token

    @classmethod
    def local(cls) -> "Cluster":
        """What a local Ray would have: this machine's CPUs."""
        cpus = os.cpu_count() or 1
        return cls(cpus=cpus, largest_node=cpus, nodes=1, dashboard=None)

    def cannot_run(self, cpus_per_trial: float) -> str | None:
        """Why no trial needing ``cpus_per_trial`` CPUs could ever start here, or None when one can."""
        if cpus_per_trial > self.largest_node:
            return (f"resources.cpus_per_trial = {cpus_per_trial:g} but the largest node has "
                    f"{self.largest_node:g} CPUs; no trial could ever start")
        return None


def cluster_address(address: str | None) -> str | None:
    """The running cluster a study joins: ``--address``, else RAY_ADDRESS (a `ray job submit` driver joins its
    cluster); None: the study starts its own local Ray."""
    return address or os.environ.get("RAY_ADDRESS") or None


def start_ray(address: str | None, *, quiet: bool, token_dir: Path | None = None) -> Cluster:
    """Start a closed local Ray (``address`` None and no RAY_ADDRESS) or join a cluster."""
    import ray

    address = cluster_address(address)
    token_file = None if address else _close_local_ray(token_dir)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Keeping one checkpoint per trial forces an experiment snapshot per report; that is intended
    # (resume loses nothing), so Ray's warning about it is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")   # snapshot after every result: resume keeps all
    kwargs = dict(log_to_driver=not quiet, configure_logging=True, logging_level="WARNING")
    quiet_transient_sync_errors()
    if address:
        context = _join(address, kwargs)
    else:
        # Ray prestarts an idle worker per CPU for the first driver's tasks; they never run a trial (trials run in
        # actors and their tasks, in Ray Tune's runtime env), so they only cost CPU (1.5 s a launch on 2 cores).
        os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
        # Keep trial bodies' workers across units (study.warm): Ray ends idle workers above this many.
        os.environ.setdefault(SOFT_LIMIT_ENV, str(pool_size(os.cpu_count() or 1)))
        with children_ignore_sigint():
            context = ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=wants_dashboard(),
                               dashboard_host="127.0.0.1",
                               runtime_env={"worker_process_setup_hook": "ser_tune.study.session.calm_worker"},
                               **kwargs)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = [n.get("Resources", {}).get("CPU", 0.0) for n in nodes]
    url = getattr(context, "dashboard_url", None)
    return Cluster(cpus=float(sum(cpus)), largest_node=float(max(cpus) if cpus else 0), nodes=len(nodes),
                   dashboard=f"http://{url}" if url else None, token_file=token_file)


def wants_dashboard() -> bool:
    """A local Ray starts its dashboard unless SER_TUNE_RAY_DASHBOARD=0 (a headless machine or CI: the
    dashboard costs ~5 s of start and a core's share while the study runs; optuna.db still fills)."""
    return os.environ.get("SER_TUNE_RAY_DASHBOARD", "1") != "0"


class TransientSyncError(logging.Filter):
    """Ray Tune copies its experiment snapshot to storage in the background; when it lists a searcher's
    temporary state file that is renamed before the copy reaches it, it logs the FileNotFoundError with a
    traceback. The next snapshot copies the renamed file, so say it in one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, FileNotFoundError) and "-tmp-" in str(error):
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = "experiment snapshot: a temporary file vanished while being copied; the next snapshot has it"
            record.args = ()
        return record.levelno >= logging.WARNING


class StorageErrorsOnce(logging.Filter):
    """Ray Tune logs a failed experiment snapshot with its traceback, at every snapshot: a full or read-only
    storage is one line (the path and why), said once."""

    def __init__(self):
        super().__init__()
        self.said: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not (isinstance(error, OSError) and error.errno in STORAGE_ERRNOS):
            return True
        record.msg, record.args = f"experiment snapshot: {os_error_line(error)}", ()
        record.exc_info = record.exc_text = record.stack_info = None
        said = record.msg in self.said
        self.said.add(record.msg)
        return not said


def os_error_line(exc: OSError) -> str:
    """An OSError as one line: what could not be done, to which path, and why."""
    doing = "cannot write " if exc.errno in STORAGE_ERRNOS else ""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{doing}{where}{exc.strerror or exc}"


def without_restore_hint(record: logging.LogRecord) -> bool:
    """Ray Tune ends an interrupted run with its own resume hint (``Tuner.restore(...)``); the study's is
    ``--resume``, which the command line prints."""
    return "Resume experiment with" not in str(record.msg)


def quiet_transient_sync_errors() -> None:
    log = logging.getLogger("ray.tune.execution.experiment_state")
    if not any(isinstance(f, TransientSyncError) for f in log.filters):
        log.addFilter(TransientSyncError())
    tune_log = logging.getLogger("ray.tune.tune")
    if without_restore_hint not in tune_log.filters:
        tune_log.addFilter(without_restore_hint)
    for name in ("ray.tune.execution.experiment_state", "ray.tune.tune"):
        if not any(isinstance(f, StorageErrorsOnce) for f in logging.getLogger(name).filters):
            logging.getLogger(name).addFilter(StorageErrorsOnce())


# The auth variables as they were before a local study set them (restore_auth_env puts them back).
_AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")
_auth_before: dict[str, str | None] = {}


def restore_auth_env() -> None:
    """After a local study's Ray is shut down: the auth variables as they were before it, so a later Ray
    in the same process (another study, a test) does not look for this study's token."""
    if not _auth_before:
        return
    for name, value in _auth_before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _auth_before.clear()
    reload_auth_config()


def reload_auth_config() -> None:
    """Ray's C++ config and its token are read once per process and cached: read them again, so this
    process uses the auth mode and token the environment says now (as Ray's own token setup does)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _close_local_ray(token_dir: Path | None) -> str | None:
    keep_ray_on_loopback()
    if not _auth_before:
        _auth_before.update({name: os.environ.get(name) for name in _AUTH_VARIABLES})
    os.environ["RAY_AUTH_MODE"] = "token"
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        reload_auth_config()   # this driver, not only the processes it starts, uses token mode
        return os.environ.get("RAY_AUTH_TOKEN_PATH")
    folder = token_dir if token_dir is not None else Path.home() / ".ray"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TOKEN_FILE
    if not path.exists():   # a resumed study keeps its token
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    reload_auth_config()
    return str(path)


@contextlib.contextmanager
def children_ignore_sigint():
    """SIGINT ignored while a local Ray starts: its daemons inherit the disposition, and so do the workers
    the raylet starts later (an ignored signal stays ignored across exec, and Python keeps it so), so a
    Ctrl-C that reaches a worker still importing, before :func:`calm_worker` runs, does not kill it with
    a traceback. Only the main thread can change a handler; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def calm_worker() -> None:
    """Run in every worker of a local Ray as it starts. Ctrl-C in a terminal reaches every process of
    its group, Ray's workers included, which then die printing tracebacks; the driver alone should
    answer it (Ray Tune then stops the trials itself), so workers ignore SIGINT. (SIGTERM: Ray's worker
    loop installs its own handler after this hook; the pooled workers put a quiet exit back as they run,
    ``warm.leave_quietly_on_sigterm``.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def keep_ray_on_loopback() -> None:
    """Ray binds its servers to the node's address; in Ray's single-machine mode (the default on Windows
    and macOS, an environment variable on Linux) that address is the loopback one, so nothing listens on
    another interface. Ray reads the variable when it is first imported: the command lines call this
    before importing anything that imports Ray; a process that imported Ray already gets the value set."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray" in sys.modules:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


def prepare_for(address: str | None) -> None:
    """Called by a command line first thing: a local study keeps Ray on loopback (see keep_ray_on_loopback)."""
    if cluster_address(address) is None:
        keep_ray_on_loopback()


def _join(address: str, kwargs: dict):
    import ray

    try:
        return ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError) as exc:
        chain = f"{exc} {exc.__cause__}"
        hint = ("the cluster requires its auth token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH "
                "(or RAY_AUTH_TOKEN) to the nodes' token") if "InvalidAuthToken" in chain \
            else str(exc).splitlines()[0]
        raise JoinError(f"cannot join the Ray cluster at {address}: {hint}") from None


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage", help="folder of study folders (shared by every node on a cluster)")
    parser.add_argument("--cpus-per-trial", type=float, help="CPUs each trial gets (torch threads follow)")
    parser.add_argument("--address", help="join a running Ray cluster: 'auto' or HOST:PORT")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="STUDY_DIR",
                        help="continue an interrupted study (default: the latest of this experiment)")
    parser.add_argument("--json", action="store_true", help="end with one JSON object (stdout holds nothing else)")


def keep_stdout_for_json():
    """With --json, stdout carries one JSON object and nothing else: file descriptor 1 is pointed at
    stderr for the rest of the process, so Ray (its C++ parts, the processes it starts, late log
    lines from a lost node) cannot print after the object; the object goes to a duplicate of the
    real stdout, which this returns. Only for the command line (``python -m``), which exits right after."""
    sys.stdout.flush()
    real = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return real


def exit_now(code: int) -> "NoReturn":  # noqa: F821
    """End a study command with ``code`` without the interpreter's teardown of torch, transformers and Ray's
    modules, which took 2-3 s of CPU after a study's last line (measured: 3.4 CPU-s of a tiny launch). Every
    file is written and closed by then and Ray is shut down; the atexit handlers still run and stdout and
    stderr are flushed. For the ``__main__`` of a command only: an exception never gets here."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def fail(message: str) -> "NoReturn":  # noqa: F821
    """The CLIs' one line for bad input, and exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
