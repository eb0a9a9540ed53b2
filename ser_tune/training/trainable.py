"""The Ray Tune trainable: a plain function that runs one fine-tuning and reports every epoch.

Everything a trial needs but does not search over travels in a ``StudyContext`` (via
``tune.with_parameters``, so the table goes through Ray's object store once).
"""
from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from ..data import SAMPLE_RATE, AudioStore
from ..encoders import SpeechEncoder, load_encoder
from .finetune import STATE_FILE, FineTuner, TrialData
from .settings import TrialSettings

# A trainable's last report carries this key: the trial ran to its end (the driver tells a finished
# trial from one cut off by an interrupt by it).
TRIAL_COMPLETE = "trial_complete"


@dataclass
class StudyContext:
    table: pd.DataFrame
    assignment: pd.Series
    labels: list[str]
    encoder_spec: str
    cache_root: str
    fixed: dict = field(default_factory=dict)          # trial settings the search does not vary
    cpus_per_trial: int = 1
    decode: Callable[[dict], dict] | None = None        # raw searcher config -> settings (gp's float relaxation)
    state_root: str | None = None                       # per-trial epoch state, on the study's shared storage

    def settings_for(self, config: dict) -> TrialSettings:
        values = dict(self.fixed)
        values.update(self.decode(config) if self.decode is not None else config)
        return TrialSettings.from_config(values)


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


def run_trial(config: dict, context: StudyContext) -> None:
    from ray import tune

    set_threads(context.cpus_per_trial)
    # Ray logs every persisted checkpoint at INFO on the driver's console; a trial's one checkpoint is
    # its exported model, recorded in trials.csv, so keep the console for what needs reading.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    settings = context.settings_for(config)
    data = TrialData.from_table(context.table, context.assignment, context.labels, audio=worker_audio())
    tuner = FineTuner(settings, data, encoder_spec=context.encoder_spec, cache_root=context.cache_root,
                      encoder_loader=pristine_encoder)
    # Epoch state lives in the study folder under the trial's id, written atomically by FineTuner: a
    # resumed study or a trial retried on another node continues from its last epoch. Ray's own
    # per-epoch checkpoints are not used for this: with num_to_keep=1 a kill between Ray deleting the
    # old checkpoint and snapshotting the experiment left a resumed trial pointing at nothing.
    trial_id = tune.get_context().get_trial_id()
    root = Path(context.state_root) if context.state_root else Path(tempfile.gettempdir()) / "ser_tune_trials"
    state_dir = root / str(trial_id)
    state_dir.mkdir(parents=True, exist_ok=True)
    varied = context.decode(config) if context.decode is not None else config
    searched = {f"cfg_{k}": v for k, v in settings.to_dict().items() if k in varied}
    searched["node"] = _node_name()

    def report(metrics: dict) -> None:
        final = "test_confusion" in metrics or metrics.get("epoch") == settings.num_epochs
        if final:
            metrics = dict(metrics, **{TRIAL_COMPLETE: True})
        if final and (state_dir / "model").exists():
            # the trial's one Ray checkpoint: its exported best model (what the launcher exports)
            tune.report(dict(metrics, **searched), checkpoint=tune.Checkpoint.from_directory(str(state_dir)))
        else:
            tune.report(dict(metrics, **searched))

    resume_dir = state_dir if (state_dir / STATE_FILE).exists() else None
    tuner.run(report=report, checkpoint_dir=state_dir, resume_dir=resume_dir)


def _node_name() -> str:
    import ray

    ctx = ray.get_runtime_context()
    return f"{ray.util.get_node_ip_address()}/{ctx.get_node_id()[:8]}"
