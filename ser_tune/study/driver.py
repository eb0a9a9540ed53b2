"""The one study driver: corpus -> split -> encode once -> one Ray Tune Tuner per unit of work -> collect.

Every kind of study (a strategy search, active learning, two-stage adaptation) runs on it. A kind
supplies what differs (:class:`StudyKind`): its data preparation and shared encode, its units of work
(each a trainable, a parameter space and a searcher) and what it writes at the end. The driver owns
what is the same: running a unit as a Tuner or resuming it, the line per finished trial, collecting
each unit's trials and reports into the study folder, and telling a finished unit from an
interrupted one. A unit is done only when all its trials ended (finished or failed): a unit cut
short by SIGINT, SIGTERM or ``ray job stop`` is recorded as interrupted, the study stops there, and
``--resume`` finishes it (a unit whose Ray Tune state a kill left unreadable starts again without
its ended trials: ``lost_state``).
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..training.trainable import TRIAL_COMPLETE as FINAL_KEY
from ..training.trainable import read_json_lines, read_reports
from . import lost_state, warm
from .folder import (EPOCHS_FILE, TRIALS_FILE, UNIT_DONE, UNIT_INTERRUPTED, UNIT_RUNNING, StudyFolder,
                     active_seconds)
from .live_metrics import StudyMetrics
from .optuna_store import recorder_for
from .progress import TrialProgress
from .session import Cluster


class StudyError(RuntimeError):
    """The study cannot start or go on; the message names the field, file or resource."""


class StudyInterrupted(RuntimeError):
    """A unit of work did not finish (an interrupt); the study folder says which, --resume goes on."""


@dataclass
class Unit:
    """One Tuner: ``trainable(config, context)`` run over ``param_space`` by ``searcher``. With ``warm``,
    ``trainable`` is a body ``(config, context, trial_id) -> dict`` (the trial's one report) that runs in a
    pooled worker kept across units (``study.warm``)."""
    name: str                                   # its folder and its key in study.json "units"
    trainable: Callable[..., Any]
    context: Any                                # what every trial needs but does not vary
    param_space: dict
    expected_trials: int                        # trials a complete unit has ended
    searcher: Any = None
    num_samples: int = 1
    metric: str | None = None
    mode: str = "max"
    max_concurrent_trials: int | None = None
    time_budget_s: float | None = None
    tags: dict = field(default_factory=dict)    # columns of its rows in trials.csv / epochs.csv
    info: dict = field(default_factory=dict)    # its study.json entry (budget, warm-up, notes, ...)
    progress: TrialProgress | None = None
    report_keys: tuple[str, ...] = ("epoch", "val_", "epoch_val_", "train_loss")   # epochs.csv columns
    # A trial cut off by an interrupt may be recorded as errored: continue it from its own epoch state
    # (True), or start it again (False, for trials whose steps depend on each other's models).
    continue_errored: bool = True
    warm: bool = False


class StudyKind:
    """What a kind of study supplies to the driver; see :func:`run_study`."""
    cpus_per_trial: float = 0.0   # resources.cpus_per_trial, which some node must have (0: not checked)

    def prepare(self, folder: StudyFolder) -> None:
        """Corpus, split and anything else before Ray starts; record it in folder.meta."""

    def check_cluster(self, cluster: Cluster) -> None:
        """Raise StudyError when the cluster can never run a trial (e.g. too few CPUs per node)."""
        why = cluster.cannot_run(self.cpus_per_trial)
        if why:
            raise StudyError(why)

    def encode(self, folder: StudyFolder) -> float:
        """The shared encode (frozen features, once per study); returns its seconds."""
        return 0.0

    def units(self, folder: StudyFolder, cluster: Cluster) -> list[Unit]:
        raise NotImplementedError

    def trial_workers(self, cluster: Cluster) -> tuple[Callable, int] | None:
        """The body its warm units run and how many of their trials run at a time (the workers to start
        ahead: :func:`start_trial_workers`); None: no warm units."""
        return None

    def trial_row(self, unit: Unit, result) -> dict:
        """Kind-specific columns of a trial's trials.csv row."""
        return {}

    def finish(self, folder: StudyFolder) -> None:
        """After every unit is done: exports, baselines, the kind's own tables."""


@dataclass
class WorkersStarting:
    """Trial workers started ahead (``warm.start``), waited for before the first warm unit."""
    pending: list
    slots: int


def start_trial_workers(kind: StudyKind, cluster: Cluster, resources: dict) -> WorkersStarting | None:
    """Right after Ray starts, before the shared encode: as many workers as the kind's trials run at a time
    start importing its trials' module, so neither the first unit nor the study waits for them (they start
    while the corpus is encoded)."""
    plan = kind.trial_workers(cluster)
    if plan is None or not warm.enabled():
        return None
    body, slots = plan
    return WorkersStarting(warm.start(body, slots, resources["cpu"]), slots)


def run_study(kind: StudyKind, folder: StudyFolder, cluster: Cluster, *, resources: dict,
              verbose: int = 0, workers: WorkersStarting | None = None) -> None:
    """Run (or resume) every unit of the study; raises StudyInterrupted when one did not finish. ``workers``:
    trial workers already starting (:func:`start_trial_workers`); the first warm unit waits for them."""
    if verbose == 0:   # the line per finished trial replaces Ray's tables and experiment boxes
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    folder.meta.setdefault("status", UNIT_RUNNING)
    for unit in kind.units(folder, cluster):
        entry = folder.unit(unit.name)
        if entry.get("status") == UNIT_DONE:
            print(f"{unit.name}: already done, skipped", flush=True)
            continue
        if unit.warm and workers is not None:
            wait_for_workers(folder, workers)
            workers = None
        print(f"{unit.name}: {unit.expected_trials} trials", flush=True)
        run_unit(kind, folder, unit, resources=resources, verbose=verbose)
    kind.finish(folder)
    folder.meta.update(status=UNIT_DONE, finished_at=time.time())
    folder.save_meta()


def wait_for_workers(folder: StudyFolder, workers: WorkersStarting) -> None:
    """Before the first warm unit: the workers started ahead are ready; the seconds waited for them (beyond
    the encode they started with) are the study's, like the shared encode's."""
    start = time.perf_counter()
    ready = warm.ready(workers.pending)
    seconds = time.perf_counter() - start
    folder.meta["warm_up_seconds"] = folder.meta.get("warm_up_seconds", 0.0) + seconds
    print(f"trial workers started: {len(ready)} of {workers.slots} (waited {seconds:.1f} s after the encode)",
          flush=True)


def run_unit(kind: StudyKind, folder: StudyFolder, unit: Unit, *, resources: dict, verbose: int = 0) -> None:
    entry = folder.unit(unit.name)
    note_pause(entry, folder.dir / unit.name)
    entry.update(unit.info, tags=unit.tags, expected_trials=unit.expected_trials, status=UNIT_RUNNING)
    entry.setdefault("started_at", time.time())
    earlier = earlier_trials(folder, unit.name)
    if earlier:
        unit = lost_state.restart(unit, earlier)
    folder.save_meta()
    restored = restorable(folder.dir / unit.name)
    grid, stopped = fit_unit(folder, unit, resources, verbose)
    ended = collect_unit(kind, folder, unit, grid, earlier)
    if restored and not stopped and ended < unit.expected_trials and not unit.time_budget_s:
        # Ray Tune's restored run ended, no signal, budget left: a unit stopped as it started can leave its
        # searcher's snapshot ahead of its trials. Go on as after a lost state, from the trials that ended.
        kept = start_afresh(folder, unit.name)
        print(f"{unit.name}: Ray Tune's restored run ended with trials of its budget never run; its {len(kept)} "
              "ended trials are kept, and the rest of its budget runs", flush=True)
        earlier = kept_trials(folder, unit.name)
        unit = lost_state.restart(unit, earlier)
        grid, stopped = fit_unit(folder, unit, resources, verbose)
        ended = collect_unit(kind, folder, unit, grid, earlier)
    spent = active_seconds(float(entry["started_at"]), time.time(), entry.get("pauses") or [])
    complete = ended >= unit.expected_trials or bool(unit.time_budget_s and spent >= unit.time_budget_s)
    entry.update(status=UNIT_DONE if complete else UNIT_INTERRUPTED, trials_ended=ended)
    entry["finished_at" if complete else "paused_at"] = time.time()
    if stopped or not complete:
        folder.meta["status"] = UNIT_INTERRUPTED
    folder.save_meta()
    if stopped or not complete:
        raise StudyInterrupted(f"{unit.name}: {ended} of {unit.expected_trials} trials ended before the study "
                               "was interrupted")


def note_pause(entry: dict, unit_dir: Path) -> None:
    """A unit that runs again after its study stopped: the stop, from the interrupt (or, after a kill, Ray Tune's
    last snapshot of the unit) to now, goes into its ``pauses``, which its clock leaves out (a resumed run's
    time to a target is not the hours the study sat stopped)."""
    since = entry.pop("paused_at", None)
    if since is None and entry.get("status") == UNIT_RUNNING:   # the launcher was killed while the unit ran
        since = max((p.stat().st_mtime for p in unit_dir.glob("experiment_state-*.json")), default=None)
    if since is not None and "started_at" in entry and float(since) < time.time():
        entry.setdefault("pauses", []).append([max(float(since), float(entry["started_at"])), time.time()])


def earlier_trials(folder: StudyFolder, name: str) -> list:
    """The trials a unit had ended before Ray's state of it was lost (none while that state is whole)."""
    unit_dir = folder.dir / name
    if lost_state.state_lost(unit_dir):
        kept = start_afresh(folder, name)
        print(f"{name}: Ray's state of this unit could not be read; its {len(kept)} ended "
              "trials are kept, and the rest of its budget runs", flush=True)
    return kept_trials(folder, name)


def kept_trials(folder: StudyFolder, name: str) -> list:
    """The ended trials :func:`start_afresh` kept (study.json's ``earlier_trials``), read from their folders."""
    unit_dir = folder.dir / name
    return [r for r in (lost_state.load(unit_dir / trial) for trial in folder.unit(name).get("earlier_trials", []))
            if r is not None]


def start_afresh(folder: StudyFolder, name: str) -> list[str]:
    """Ray's state of the unit dropped and its ended trials kept (its study.json entry lists them under
    ``earlier_trials``): the unit's next run starts a new Tuner for the rest of its budget."""
    entry = folder.unit(name)
    entry["earlier_trials"] = lost_state.ended_trials(folder.dir / name)
    lost_state.forget_state(folder.dir / name, keep=entry["earlier_trials"])
    return entry["earlier_trials"]


def restorable(unit_dir: Path) -> bool:
    """Whether Ray Tune can restore the unit's run from its folder."""
    from ray import tune

    return unit_dir.exists() and tune.Tuner.can_restore(str(unit_dir))


def fit_unit(folder: StudyFolder, unit: Unit, resources: dict, verbose: int) -> tuple[Any, bool]:
    """:func:`fit` of the unit's Tuner (restored, or new); nothing to run when no trial is left of its budget
    (every trial had ended before Ray's state of the unit was lost)."""
    if not unit.num_samples:
        return [], False
    return fit(make_tuner(folder, unit, resources=resources, verbose=verbose))


def fit(tuner) -> tuple[Any, bool]:
    """``tuner.fit()``, and whether a stop signal (Ctrl-C, SIGTERM, ``ray job stop``) reached it. Ray Tune's
    handler ends the run and puts back the handler it replaced; a run no signal reached leaves it installed,
    where it would swallow the next Ctrl-C. So the handler from before is put back either way, and a signal
    that came as the last trials ended (the unit complete) still stops the study."""
    if threading.current_thread() is not threading.main_thread():   # Ray Tune installs no handler there
        return tuner.fit(), False
    before = signal.getsignal(signal.SIGINT)
    try:
        grid = tuner.fit()
    finally:
        left = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, before)
    return grid, left is before


def make_tuner(folder: StudyFolder, unit: Unit, *, resources: dict, verbose: int):
    from ray import tune

    if unit.warm and warm.enabled():
        trainable = tune.with_resources(warm.trainable(unit.trainable, unit.context),
                                        warm.resources(resources["cpu"], resources.get("memory")))
    else:
        body = warm.in_actor(unit.trainable) if unit.warm else unit.trainable
        trainable = tune.with_resources(tune.with_parameters(body, context=unit.context), resources)
    path = folder.dir / unit.name
    if restorable(path):
        return tune.Tuner.restore(str(path), trainable, param_space=unit.param_space, resume_unfinished=True,
                                  resume_errored=unit.continue_errored,
                                  restart_errored=not unit.continue_errored)
    return tune.Tuner(
        trainable, param_space=unit.param_space,
        tune_config=tune.TuneConfig(search_alg=unit.searcher, num_samples=unit.num_samples, metric=unit.metric,
                                    mode=unit.mode if unit.metric else None, reuse_actors=True,
                                    max_concurrent_trials=unit.max_concurrent_trials,
                                    time_budget_s=unit.time_budget_s),
        run_config=tune.RunConfig(name=unit.name, storage_path=str(folder.dir), verbose=verbose,
                                  callbacks=unit_callbacks(folder, unit, verbose),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                  # a node lost mid-trial: the trial restarts from its epoch state elsewhere
                                  failure_config=tune.FailureConfig(max_failures=2)))


def unit_callbacks(folder: StudyFolder, unit: Unit, verbose: int) -> list:
    """On the driver, as each trial ends: its line (unless Ray's own tables show it), the unit's progress as
    Ray metrics, and its record in the study folder's Optuna storage (STUDY/optuna.db, for optuna-dashboard)."""
    callbacks = [unit.progress] if unit.progress is not None and verbose == 0 else []
    recorder = recorder_for(folder.dir, folder.meta, unit.name, unit.tags)
    metric = unit.metric or (unit.progress.metric if unit.progress is not None else None)
    if metric is not None:   # the study's progress as Ray metrics (Prometheus, the Ray dashboard's Metrics page)
        callbacks.append(StudyMetrics(folder.dir.name, str(unit.tags.get("strategy", unit.name)), unit.name,
                                      metric, unit.mode, unit.expected_trials))
    return callbacks + ([recorder] if recorder is not None else [])


def collect_unit(kind: StudyKind, folder: StudyFolder, unit: Unit, grid, earlier=()) -> int:
    """Write the unit's rows of trials.csv and epochs.csv (``earlier``: trials ended before its Ray state was
    lost, numbered before the others); returns how many of its trials ended."""
    trials, reports = [], []
    for n, result in enumerate([*earlier, *grid]):
        row, epochs = trial_rows(unit, result)
        if earlier and n >= len(earlier):
            row["trial_index"] += 1 + max(t["trial_index"] for t in trials[:len(earlier)])
        row.update(kind.trial_row(unit, result))
        trials.append(row)
        reports += epochs
    folder.replace_rows(TRIALS_FILE, pd.DataFrame(trials), unit.name)
    folder.replace_rows(EPOCHS_FILE, pd.DataFrame(reports), unit.name)
    return sum(1 for row in trials if row["status"] in ("TERMINATED", "ERROR"))


def trial_rows(unit: Unit, result) -> tuple[dict, list[dict]]:
    """A trial's trials.csv row (tags, status, config, final metrics) and its report rows."""
    metrics = result.metrics or {}
    trial_id = str(metrics.get("trial_id") or Path(result.path).name)
    status = "ERROR" if result.error else ("TERMINATED" if metrics.get(FINAL_KEY) else "INCOMPLETE")
    row = {"unit": unit.name, **unit.tags, "trial_id": trial_id,
           "trial_index": trial_index(trial_id, Path(result.path).name), "status": status,
           "error": one_line(result.error) if result.error else ""}
    row.update({f"raw_{k}": v for k, v in (result.config or {}).items()})
    row.update({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in metrics.items()
                if k not in RAY_BOOKKEEPING})
    reports = [{"unit": unit.name, **unit.tags, "trial_id": trial_id, **report_row(r, unit.report_keys)}
               for r in trial_reports(result)]
    if reports:
        row.setdefault("started_at", reports[0]["timestamp"] - reports[0].get("time_total_s", 0.0))
        row.setdefault("finished_at", reports[-1]["timestamp"])
    return row, reports


def trial_reports(result) -> list[dict]:
    """A trial's rows, one per epoch (or round): its own report log when it keeps one (every epoch, also
    across a resume), else what it reported to Ray."""
    log = (result.metrics or {}).get("reports")
    if log:
        return read_reports(log)
    frame = result.metrics_dataframe
    if (frame is None or frame.empty) and result.metrics and result.path:
        # Ray reads a trial's result.json whole and gives nothing when one line fails: a driver killed while
        # it wrote a row (the final "done" one, after the trial's last report) leaves that line cut off.
        return read_json_lines(Path(result.path) / "result.json")
    return frame.to_dict("records") if frame is not None else []


# Ray's own bookkeeping in every result: not a trial's metric
RAY_BOOKKEEPING = {"config", "checkpoint_dir_name", "done", "training_iteration", "date", "timestamp", "pid",
                   "hostname", "node_ip", "time_this_iter_s", "time_since_restore", "iterations_since_restore",
                   "experiment_tag", "reported_at", "should_checkpoint", "reports", FINAL_KEY}


def report_row(record: dict, keys: tuple[str, ...]) -> dict:
    """One report of a trial as an epochs.csv row: the columns named or prefixed by ``keys``;
    ``timestamp`` is the trainable's own (sub-second), not Ray's (whole seconds)."""
    row = {k: v for k, v in record.items() if k.startswith(keys)}
    row["timestamp"] = float(record.get("reported_at", record.get("timestamp", 0.0)))
    row.setdefault("time_total_s", record.get("time_total_s"))
    return row


def trial_index(trial_id: str, dirname: str) -> int:
    """0-based creation order: Ray names a trial's folder "<trainable>_<trial_id>_<counter>_<config>",
    with the counter starting at 1."""
    tail = str(trial_id).rsplit("_", 1)
    if len(tail) == 2 and tail[1].isdigit():  # BasicVariantGenerator's ids: "<prefix>_<counter from 0>"
        return int(tail[1])
    parts = dirname.split("_")
    if trial_id in parts:
        at = parts.index(trial_id) + 1
        if at < len(parts) and parts[at].isdigit():
            return int(parts[at]) - 1
    return -1


def one_line(error) -> str:
    """Ray wraps the trial's exception; its last line carries our message."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(error).__name__
