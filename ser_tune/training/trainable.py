"""The trials' bodies: plain functions that run one fine-tuning (on K inner folds) and return what the trial
reports, ``(config, context, trial_id) -> dict``. The study runs them as Ray Tune trials in warm workers
(``ser_tune.study.warm``); they keep their epoch state in the trial's own folder, not in Ray Tune's session.

Everything a trial needs but does not search over travels in a ``StudyContext`` (through Ray's object store,
once per unit).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from ..data import SAMPLE_RATE, AudioStore
from ..encoders import SpeechEncoder, load_encoder
from .crossval import FoldedRun
from .ensemble import save_test_probabilities
from .export import to_jsonable
from .finetune import STATE_FILE, FineTuner, TrialData
from .latency import LatencyCheck, deployment_costs
from .settings import BRANCH, TrialSettings, applicable

# A trainable's last report carries this key: the trial ran to its end (the driver tells a finished
# trial from one cut off by an interrupt by it).
TRIAL_COMPLETE = "trial_complete"
REPORTS_FILE = "reports.jsonl"
# A trial's epoch state is written at most this often: short head-only epochs would otherwise spend
# more time writing state than training, and a trial cut off loses no more than this.
STATE_EVERY_S = 2.0


@dataclass
class StudyContext:
    table: pd.DataFrame
    assignments: list[pd.Series]                        # the trial's inner folds (one: a single split)
    labels: list[str]
    encoder_spec: str
    cache_root: str
    fixed: dict = field(default_factory=dict)          # trial settings the search does not vary
    cpus_per_trial: int = 1
    decode: Callable[[dict], dict] | None = None        # raw searcher config -> settings (gp's float relaxation)
    state_root: str | None = None                       # per-trial epoch state, on the study's shared storage
    source: dict | None = None                          # the corpus, for exported models (see FineTuner.export)
    latency: LatencyCheck | None = None                 # measure each trial's deployment costs (None: do not)
    refits: dict | None = None                          # run_refit's jobs by name (settings, assignment)

    def chosen(self, config: dict) -> dict:
        """The trial's settings values: the fixed ones and the searcher's (decoded), only those that apply
        to its head (``settings.applicable``: a conditional space's branch settings renamed, the settings of
        other heads left out)."""
        return applicable({**self.fixed, **(self.decode(config) if self.decode is not None else config)})

    def settings_for(self, config: dict) -> TrialSettings:
        return TrialSettings.from_config(self.chosen(config))

    def encoder_for(self, settings: TrialSettings) -> str:
        """The encoder spec a trial uses: its own ``encoder`` setting (a study searching among encoders), else
        the study's."""
        return settings.encoder or self.encoder_spec

    def model_source(self, fold: int) -> dict | None:
        """``source`` with the training speakers of inner fold ``fold``."""
        if self.source is None:
            return None
        speakers = self.table.loc[(self.assignments[fold] == "train").to_numpy(), "speaker"].astype(str)
        return {**self.source, "train_speakers": sorted(speakers.unique())}

    def fold_data(self) -> list[TrialData]:
        return [TrialData.from_table(self.table, a, self.labels, audio=worker_audio()) for a in self.assignments]


# Per worker process: decoded audio and pristine encoders survive across trials when Ray reuses
# the actor, so a study decodes each file once and loads each encoder once per process.
_AUDIO: dict[int, AudioStore] = {}
_ENCODERS: dict[str, SpeechEncoder] = {}


def worker_audio(sample_rate: int = SAMPLE_RATE) -> AudioStore:
    """This process's store of decoded audio at ``sample_rate``, shared by every trial it runs."""
    return _AUDIO.setdefault(sample_rate, AudioStore(sample_rate))


def pristine_encoder(spec: str) -> SpeechEncoder:
    """A fresh copy of this process's once-loaded encoder ``spec`` (an ``encoder_loader`` for FineTuner)."""
    if spec not in _ENCODERS:
        _ENCODERS[spec] = load_encoder(spec)
    return copy.deepcopy(_ENCODERS[spec])  # trials change weights in place; keep the original clean


def set_threads(cpus: int) -> None:
    """torch ignores Ray's CPU limit; match intra-op threads to the trial's CPUs."""
    torch.set_num_threads(max(1, int(cpus)))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # can only be set once per process, before any parallel work
        pass


def warm_up() -> None:
    """What a worker pays once before its first trial, paid ahead by ``study.warm.prewarm``: torch's
    ``Optimizer.step`` imports ``torch._dynamo`` at its first call (~2.6 CPU-s)."""
    import torch._dynamo  # noqa: F401


def run_trial(config: dict, context: StudyContext, trial_id: str) -> dict:
    """One trial: its settings on every inner fold in lockstep, a row per epoch in its report log, and what
    it reports at the end (per-epoch reports cost Ray more than they give a search without a scheduler; the
    log keeps every epoch, also across an interruption)."""
    settings = context.settings_for(config)
    state_dir = trial_state_dir(context, trial_id)
    log = ReportLog(state_dir, count_cpu=context.latency is not None)
    run = FoldedRun(settings, context.fold_data(), encoder_spec=context.encoder_for(settings),
                    cache_root=context.cache_root, encoder_loader=pristine_encoder)
    result = fit_in_lockstep(run, state_dir, log)
    final = {**log.last(), **result.metrics(), **run.timing(), **searched_settings(context, config, settings),
             "reports": str(log.path), TRIAL_COMPLETE: True}
    if len(run.tuners) == 1 or context.latency is not None:
        # The trial's own model: what the study exports when it stands for the study (with folds, the
        # first fold's stands for the trial's deployment costs and front model).
        run.tuners[0].export(result.results[0], state_dir / "model", source=context.model_source(0))
        final["model_dir"] = str(state_dir / "model")
    if context.latency is not None:
        final.update(measured_costs(context.latency, state_dir / "model"))
    return final


def measured_costs(check: LatencyCheck, folder: Path) -> dict:
    """The deployment costs of the exported model in ``folder`` (training.latency.deployment_costs) on
    ``check``'s clips; the encoder comes from this process's once-loaded copy."""
    audio = worker_audio()
    waves = [audio.get(path) for path in check.clips]
    return deployment_costs(folder, waves, audio.target_sr, repeats=check.repeats, warmup=check.warmup,
                            threads=check.threads, encoder_loader=pristine_encoder)


def run_refit(config: dict, context: StudyContext, trial_id: str) -> dict:
    """A chosen configuration trained once more, for its fixed epoch count, on one assignment of the
    context (``context.refits[config["refit_of"]]``: its settings and which assignment: training
    speakers, and test speakers when there are any), scored on the test speakers and exported."""
    job = context.refits[config["refit_of"]]
    settings = context.settings_for(job["settings"])
    state_dir = trial_state_dir(context, trial_id)
    log = ReportLog(state_dir)
    data = TrialData.from_table(context.table, context.assignments[job["assignment"]], context.labels,
                                audio=worker_audio(), refit=True)
    tuner = FineTuner(settings, data, encoder_spec=context.encoder_for(settings),
                      cache_root=context.cache_root, encoder_loader=pristine_encoder)
    state = tuner.start(resume_dir=state_dir if (state_dir / STATE_FILE).exists() else None)
    log.resume_at(state.epoch)
    while not state.done:
        tuner.fit_epoch(state)
        tuner.keep_epoch(state)          # the last epoch: the count was chosen by the search
        log.append(dict(state.history[-1]))
        tuner.save_state(state, state_dir)
    result = tuner.finish(state)
    tuner.export(result, state_dir / "model", source=context.model_source(job["assignment"]))
    kept = {}
    if result.test_probabilities is not None:   # what an ensemble of refits averages (training.ensemble)
        test = data.parts["test"]
        kept["test_probabilities"] = str(save_test_probabilities(
            state_dir, result.test_probabilities, data.y[test], [data.paths[i] for i in test]))
    return {**log.last(), **result.test_metrics, **tuner.timing(), "model_dir": str(state_dir / "model"), **kept,
            "best_epoch": result.best_epoch, "trainable_params": result.trainable_params,
            "total_params": result.total_params, "refit_of": config["refit_of"],
            "refit_trial": job["trial_id"], "refit_unit": job["unit"],
            **searched_settings(context, job["settings"], settings), "reports": str(log.path),
            TRIAL_COMPLETE: True}


def fit_in_lockstep(run: FoldedRun, state_dir: Path, log: "ReportLog"):
    """Every epoch of the trial's folds; the epoch state is saved when STATE_EVERY_S seconds have passed
    since the last save (what resume needs: a trial cut off loses at most that much), every epoch's row
    goes to the report log."""
    states = run.start(state_dir)
    log.resume_at(states[0].epoch)        # epochs after the last saved state run again
    saved = time.perf_counter()
    while not states[0].done:
        row = run.fit_epoch(states)
        log.append(row)                   # before the save: a resume never skips a logged epoch
        if time.perf_counter() - saved >= STATE_EVERY_S:
            run.save(states, state_dir)
            saved = time.perf_counter()
    return run.finish(states, log.rows())


def trial_state_dir(context: StudyContext, trial_id: str) -> Path:
    """This trial's own folder on the study's storage: epoch states, report log, exported model. A resumed
    study, or a trial retried on another node, continues from its last epoch there. (Ray's own per-epoch
    checkpoints are not used: with num_to_keep=1 a kill between Ray deleting the old checkpoint and
    snapshotting the experiment left a resumed trial pointing at nothing.)"""
    set_threads(context.cpus_per_trial)
    # Ray logs every persisted checkpoint at INFO on the driver's console; keep it for what needs reading.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    root = Path(context.state_root) if context.state_root else Path(tempfile.gettempdir()) / "ser_tune_trials"
    folder = root / str(trial_id)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def searched_settings(context: StudyContext, config: dict, settings: TrialSettings) -> dict:
    """The settings the search chose (``cfg_<name>``, decoded), and where the trial ran (node and process:
    trials of a study share warm worker processes, ``study.warm``)."""
    decoded = context.decode(config) if context.decode is not None else config
    varied = {key.partition(BRANCH)[2] or key for key in decoded} & set(context.chosen(config))
    return {**{f"cfg_{k}": v for k, v in settings.to_dict().items() if k in varied}, "node": _node_name(),
            "worker_pid": os.getpid()}


class ReportLog:
    """A trial's rows, one per epoch, appended to ``reports.jsonl`` in its folder as they happen; the
    study's epochs.csv is made from these logs, so every epoch is kept even when the trial was cut off
    and resumed. ``time_total_s`` counts the trial's own seconds across resumes; with ``count_cpu``,
    ``train_cpu_seconds`` its process's CPU-seconds (every thread) the same way."""

    def __init__(self, folder: Path, *, count_cpu: bool = False):
        self.path = Path(folder) / REPORTS_FILE
        previous = self.rows()
        self.offset = float(previous[-1].get("time_total_s", 0.0)) if previous else 0.0
        self.cpu_offset = float(previous[-1].get("train_cpu_seconds", 0.0)) if previous else 0.0
        self.count_cpu = count_cpu
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self.offset = self.cpu_offset = 0.0

    def keep_until(self, epoch: int) -> None:
        """A trial resumed from the epoch state saved at ``epoch``: the rows logged after it are dropped, as
        those epochs run again (the log stays one row per epoch, in order; its clocks keep the time spent)."""
        rows = [r for r in self.rows() if r.get("epoch") is not None and r["epoch"] <= epoch]
        staged = self.path.with_suffix(".tmp")
        staged.write_text("".join(json.dumps(r, default=to_jsonable) + "\n" for r in rows))
        staged.replace(self.path)

    def resume_at(self, epoch: int) -> None:
        """Match the log to where the trial (re)starts: nothing at epoch 0, else the epochs up to ``epoch``."""
        if epoch == 0:
            self.clear()
        else:
            self.keep_until(epoch)

    def append(self, row: dict) -> None:
        row = dict(row, time_total_s=self.offset + time.perf_counter() - self.started)
        if self.count_cpu:
            row["train_cpu_seconds"] = self.cpu_offset + time.process_time() - self.cpu_started
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, default=to_jsonable) + "\n")

    def rows(self) -> list[dict]:
        return read_reports(self.path)

    def last(self) -> dict:
        rows = self.rows()
        return rows[-1] if rows else {}


def read_reports(path: str | Path) -> list[dict]:
    """The rows of a report log, one per epoch, the last row kept where an epoch repeats (a resume)."""
    by_epoch: dict = {}
    for row in read_json_lines(path):
        by_epoch[row.get("epoch")] = row
    return list(by_epoch.values())


def read_json_lines(path: str | Path) -> list[dict]:
    """The rows of a JSON-lines file (a report log, Ray's result.json), leaving out a line cut off by a
    kill; none when there is no file."""
    path = Path(path)
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _node_name() -> str:
    import ray

    ctx = ray.get_runtime_context()
    return f"{ray.util.get_node_ip_address()}/{ctx.get_node_id()[:8]}"
