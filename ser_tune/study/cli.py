"""What every study command line does the same way: the study folder, Ray, --json, --resume, interrupts.

``python -m ser_tune.launch`` and ``python -m ser_tune.active`` are thin shells over :func:`run_study_cli`:
they parse their arguments and build their kind of study; this prints the study folder first, stops
on bad input with one ``error:`` line (leaving no empty study folder behind), starts or joins Ray,
runs the study on the driver and turns an interrupt (Ctrl-C, SIGTERM, ``ray job stop``) into an
interrupted study and a non-zero exit status.
"""
from __future__ import annotations

import contextlib
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from ..data import DataError
from ..encoders import EncoderError
from . import local_ray
from .driver import StudyError, StudyInterrupted, StudyKind, run_study, start_trial_workers
from .folder import UNIT_DONE, UNIT_INTERRUPTED, StudyFolder, StudyFormatError
from .optuna_store import dashboard_command, records_trials
from .session import (Cluster, JoinError, cluster_address, fail, keep_stdout_for_json, os_error_line,
                      restore_auth_env, start_ray)

INPUT_ERRORS = (DataError, EncoderError, StudyError, StudyFormatError, JoinError, ValueError)
EXIT_INTERRUPTED = 130


@dataclass
class Outcome:
    folder: StudyFolder
    cluster: Cluster | None      # None: a study --resume found done already (nothing ran, no Ray started)
    interrupted: str | None      # why the study stopped early, or None when every unit is done
    json_out: object | None      # the real stdout with --json

    @property
    def already_done(self) -> bool:
        return self.cluster is None


def run_study_cli(kind: StudyKind, args, *, name: str, storage, resources, verbose: int = 0) -> Outcome:
    """Run (or resume) a study of ``name`` under ``storage`` from the command line (``args``: the common
    arguments); exits with status 2 on bad input."""
    json_out = keep_stdout_for_json() if args.json else None
    folder = None

    def fail_before_trials(message: str):
        # nothing is computed yet: a new study's folder goes, so --resume never picks up an empty one
        if folder is not None and not args.resume:
            folder.discard_if_unstarted()
        fail(message)

    try:
        folder = (StudyFolder.latest(storage, name) if args.resume == "latest" else
                  StudyFolder.open(Path(args.resume)) if args.resume else StudyFolder.create(storage, name))
        print(f"study folder: {folder.dir}", flush=True)
        if args.resume and folder.meta.get("status") == UNIT_DONE:   # its results, without a Ray to start
            print("every unit of this study is done: nothing to run; its results follow", flush=True)
            return Outcome(folder=folder, cluster=None, interrupted=None, json_out=json_out)
        kind.prepare(folder)
        if records_trials(folder.meta):
            print(f"watch it (live, and after it): {dashboard_command(folder.dir)}", flush=True)
        local = cluster_address(args.address) is None
        if local:
            kind.check_cluster(Cluster.local())   # say so before starting a local Ray
            local_ray.end_leftovers(folder.dir.parent)
        cluster = start_ray(args.address, quiet=args.json, token_dir=folder.dir)
        if local:
            local_ray.note(folder.dir.parent)
        kind.check_cluster(cluster)
    except INPUT_ERRORS as exc:
        fail_before_trials(str(exc))
    except OSError as exc:   # storage that cannot be written (read-only, full, not ours)
        fail_before_trials(os_error_line(exc))
    if cluster.dashboard:
        print(dashboard_lines(cluster), flush=True)
    folder.meta["machine"].update(nodes=cluster.nodes, cluster_cpus=cluster.cpus)
    interrupted = run_until_interrupted(kind, folder, cluster, resources, verbose, fail_before_trials)
    stop_ray()
    local_ray.forget(folder.dir.parent)
    return Outcome(folder=folder, cluster=cluster, interrupted=interrupted, json_out=json_out)


def dashboard_lines(cluster: Cluster) -> str:
    """Where the Ray dashboard is and how to log in to it; a local study's Ray (and its dashboard) ends
    with the study."""
    token = f" (token: {cluster.token_file})" if cluster.token_file else ""
    lines = [f"Ray dashboard: {cluster.dashboard}{token}"]
    if cluster.token_file:
        lines.append(f"  log in: paste the content of {cluster.token_file} (cat it) into the dashboard's token "
                     f"dialog (its `ray get-auth-token` hint reads another file). The dashboard closes when the "
                     f"study ends.")
    return "\n".join(lines)


def run_in_process(kind: StudyKind, *, name: str, storage, resources) -> StudyFolder:
    """Run a new study in this process on a local Ray (a library call, not a command line: bad input
    and interrupts raise)."""
    folder = StudyFolder.create(storage, name)
    kind.prepare(folder)
    kind.check_cluster(Cluster.local())
    cluster = start_ray(None, quiet=True, token_dir=folder.dir)
    try:
        workers = start_trial_workers(kind, cluster, trial_resources(resources))
        kind.encode(folder)
        run_study(kind, folder, cluster, resources=trial_resources(resources), workers=workers)
    finally:
        stop_ray()
    return folder


def stop_ray() -> None:
    """Shut Ray down once the units are done, before the report: the driver stops listening to the
    workers first, so their own shutdown (a SystemExit each) prints nothing on the user's terminal."""
    import ray

    ray.shutdown()
    restore_auth_env()


def run_until_interrupted(kind, folder, cluster, resources, verbose, fail_before_trials) -> str | None:
    previous = signal.signal(signal.SIGTERM, _sigterm_as_sigint)
    try:
        workers = start_trial_workers(kind, cluster, trial_resources(resources))
        try:
            seconds = kind.encode(folder)
        except (EncoderError, DataError) as exc:
            fail_before_trials(str(exc))
        print(f"shared encode (frozen features, once per study): {seconds:.1f} s", flush=True)
        run_study(kind, folder, cluster, resources=trial_resources(resources), verbose=verbose, workers=workers)
        return None
    except StudyInterrupted as exc:
        return str(exc)
    except KeyboardInterrupt:   # between units, or in the encode
        return mark_interrupted(folder, "interrupted before every unit of work had run")
    except OSError as exc:   # storage full or no longer writable: what is written stays, --resume goes on
        return mark_interrupted(folder, os_error_line(exc))
    finally:
        signal.signal(signal.SIGTERM, previous)


def mark_interrupted(folder: StudyFolder, reason: str) -> str:
    """study.json says interrupted, where it can still be written; returns ``reason``."""
    folder.meta["status"] = UNIT_INTERRUPTED
    with contextlib.suppress(OSError):
        folder.save_meta()
    return reason


def _sigterm_as_sigint(signum, frame) -> None:
    # SIGTERM (and `ray job stop`, which sends it) stops a study the way Ctrl-C does: Ray Tune saves
    # the experiment and returns, and the unit is recorded as interrupted.
    signal.raise_signal(signal.SIGINT)


def trial_resources(resources) -> dict:
    return {"cpu": resources.cpus_per_trial,
            **({"memory": int(resources.memory_gb * 2**30)} if resources.memory_gb else {})}


def finish_cli(outcome: Outcome, summary: dict | None) -> int:
    """Write the --json object (when asked) and return the exit status: 0, or 130 after an interrupt."""
    if outcome.interrupted:
        print(f"study interrupted: {outcome.interrupted}; continue it with: {resume_command(outcome.folder)}",
              file=sys.stderr, flush=True)
    if outcome.json_out is not None and summary is not None:
        import json

        outcome.json_out.write(json.dumps(summary, default=str) + "\n")
        outcome.json_out.flush()
    return EXIT_INTERRUPTED if outcome.interrupted else 0


def resume_command(folder: StudyFolder) -> str:
    """This command line again, resuming ``folder``: what the user types to finish the study."""
    module = str(getattr(sys.modules["__main__"].__spec__, "name", "")).removesuffix(".__main__")
    args, rest = [], iter(sys.argv[1:])
    for arg in rest:
        if arg == "--resume":   # its optional value goes with it
            arg = next(rest, None)
            if arg is None or not arg.startswith("-"):
                continue
        if not arg.startswith("--resume="):
            args.append(arg)
    module = module if module.startswith("ser_tune") else "ser_tune.launch"
    return shlex.join(["python", "-m", module, *args, "--resume", str(folder.dir)])
