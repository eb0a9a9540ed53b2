"""Active learning as a kind of study on the driver: one unit, the grid acquisitions x TAPT x seeds.

Before any trial: the split (as any study: ``split.json``), TAPT when asked (once per study, on the
pool and validation speakers' audio; the test speakers' too only with ``tapt_test_audio: true``),
and the frozen features of every encoder used (the TAPT encoder is another encoder: its own cache
entry). Each trial then runs :func:`ser_tune.active.loop.run_loop` and reports after every round;
``rounds.csv`` holds one row per trial x round.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import SAMPLE_RATE, AudioStore
from ..study.driver import StudyError, StudyKind, Unit
from ..study.folder import EPOCHS_FILE, ROUNDS_FILE, TRIALS_FILE, StudyFolder, write_atomic
from ..study.prepare import cache_root, data_meta, encode_once, load_study_corpus, machine_info, study_split
from ..study.progress import TrialProgress
from ..study.session import Cluster
from ..training.finetune import TrialData
from ..training.settings import TrialSettings
from ..training.trainable import TRIAL_COMPLETE, pristine_encoder, set_threads
from .config import ActiveConfig
from .loop import run_loop

ROUND_COLUMNS = ("acquisition", "tapt", "seed", "trial_id", "status", "error", "round", "rounds", "target_fraction",
                 "labelled_fraction", "labelled_count", "pool_size", "added", "classes_labelled", "val_bca",
                 "test_bca", "test_accuracy", "best_epoch", "train_seconds", "select_seconds", "fit_seconds",
                 "round_seconds", "cumulative_seconds", "load_seconds", "encode_seconds", "time_total_s")
UNIT = "active"


@dataclass
class ActiveContext:
    """What every trial needs but does not vary (sent to the workers once via ``tune.with_parameters``)."""
    table: pd.DataFrame
    assignment: pd.Series
    labels: list[str]
    encoder_specs: dict            # {False: the encoder, True: the TAPT encoder}
    cache_root: str
    fixed: dict                    # the config's trial settings
    fractions: list[float]
    cold_start: str
    reinit: bool
    cpus_per_trial: int = 1
    selections_dir: str | None = None


AUDIO: dict[int, AudioStore] = {}   # per worker process: decoded audio survives across trials


def run_active_trial(config: dict, context: ActiveContext) -> None:
    """The Ray Tune function trainable: one acquisition x TAPT x seed, one report per round."""
    from ray import tune

    set_threads(context.cpus_per_trial)
    acquisition, tapt, seed = config["acquisition"], bool(config["tapt"]), int(config["seed"])
    settings = TrialSettings.from_config({**context.fixed, "seed": seed})
    audio = AUDIO.setdefault(SAMPLE_RATE, AudioStore(SAMPLE_RATE))
    data = TrialData.from_table(context.table, context.assignment, context.labels, audio=audio)
    tags = {"acquisition": acquisition, "tapt": tapt, "seed": seed}
    picked: list[list[str]] = []

    def on_select(round_: int, rows: np.ndarray) -> None:
        # which clips each round labelled, by path (for audit: never a validation or test clip)
        picked.append([data.paths[i] for i in rows])
        if context.selections_dir is not None:
            path = Path(context.selections_dir) / f"{acquisition}-tapt{int(tapt)}-seed{seed}.json"
            write_atomic(path, json.dumps({**tags, "rounds": picked}, indent=1))

    def report(row: dict) -> None:
        final = {TRIAL_COMPLETE: True} if row["round"] == row["rounds"] else {}
        tune.report({**row, **tags, "reported_at": time.time(), **final})

    run_loop(data, settings, encoder_spec=context.encoder_specs[tapt], cache_root=context.cache_root,
             acquisition=acquisition, fractions=context.fractions, cold_start=context.cold_start,
             reinit=context.reinit, seed=seed, report=report, on_select=on_select, encoder_loader=pristine_encoder)


class ActiveStudy(StudyKind):
    """The driver's side of active learning: data, TAPT, encode once, the grid unit, rounds.csv."""

    def __init__(self, cfg: ActiveConfig):
        self.cfg = cfg
        self.cpus_per_trial = cfg.experiment.resources.cpus_per_trial
        self.corpus = self.split = None
        self.encoder_specs: dict[bool, str] = {False: cfg.experiment.encoder}

    @property
    def settings(self) -> TrialSettings:
        return TrialSettings.from_config(dict(self.cfg.experiment.trial))

    def prepare(self, folder: StudyFolder) -> None:
        """Corpus, split (saved as split.json) and the pool; study.json records them."""
        exp = self.cfg.experiment
        self.corpus = load_study_corpus(exp.corpus, exp.storage)
        self.split = study_split(folder, self.corpus, exp.split)
        pool = self.corpus.table[self.split.assignment.to_numpy() == "train"]
        if len(pool) < 2:
            raise StudyError(f"the pool (train speakers' clips) has {len(pool)} clip(s); active learning needs "
                             "at least 2")
        if not folder.meta:
            folder.meta = {"name": exp.name, "kind": "active", "started_at": time.time(), "finished_at": None,
                           "experiment": exp.to_dict(), **data_meta(self.corpus, self.split),
                           "machine": machine_info(), "encode_seconds": 0.0,
                           "active": self.cfg.active.to_dict(), "trial": self.settings.to_dict(),
                           "pool": {"clips": int(len(pool)),
                                    "speakers": sorted(pool["speaker"].astype(str).unique())}}
            folder.save_meta()

    def encode(self, folder: StudyFolder) -> float:
        """TAPT when asked, then the frozen features of every encoder used (base, and TAPT when on)."""
        tapt = self.run_tapt(folder)
        if tapt:
            print(f"TAPT: {tapt['steps']} steps on {tapt['clips']} clips, {tapt['seconds']:.1f} s"
                  f"{' (reused)' if tapt['reused'] else ''} -> {tapt['spec']}", flush=True)
        settings = self.settings
        tops = [settings.top_k] if settings.encoder_trains else []
        seconds = {}
        for on in self.cfg.active.tapt:
            spec = self.encoder_specs[on]
            done = encode_once(self.corpus.table, spec, cache_root(self.cfg.experiment.storage),
                               [settings.max_length], tops)
            seconds[spec] = done["seconds"]
            folder.meta.setdefault("encoder", done["encoder"])
        folder.meta["encode_seconds"] = float(sum(seconds.values()))
        folder.meta["encode"] = seconds
        folder.save_meta()
        return folder.meta["encode_seconds"]

    def run_tapt(self, folder: StudyFolder) -> dict | None:
        """Task-adaptive pre-training of the encoder once (cached on disk under storage), when asked."""
        if True not in self.cfg.active.tapt:
            return None
        from .tapt import TaptSettings, check_tapt_supported, tapt_encoder

        exp = self.cfg.experiment
        check_tapt_supported(exp.encoder)
        settings = TaptSettings.from_dict(dict(self.cfg.active.tapt_settings), where="active.tapt_settings")
        parts = ("train", "val", "test") if self.cfg.active.tapt_test_audio else ("train", "val")
        paths = [str(p) for p in self.corpus.table.loc[self.split.assignment.isin(parts).to_numpy(), "path"]]
        storage = Path(exp.storage).expanduser().resolve()       # the encoder goes to <storage>/_tapt/<key>
        result = tapt_encoder(exp.encoder, paths, settings, storage, sample_rate=SAMPLE_RATE)
        self.encoder_specs[True] = result.spec
        folder.meta["tapt"] = {
            "spec": result.spec, "folder": str(result.folder), "seconds": float(result.seconds),
            "reused": bool(result.reused), "steps": int(settings.steps),
            "first_loss": float(result.losses[0]) if result.losses else None,
            "last_loss": float(result.losses[-1]) if result.losses else None,
            "eval_loss_before": result.eval_loss_before, "eval_loss_after": result.eval_loss_after,
            "clips": len(paths), "test_audio": bool(self.cfg.active.tapt_test_audio), "settings": settings.to_dict()}
        folder.save_meta()
        return folder.meta["tapt"]

    def units(self, folder: StudyFolder, cluster: Cluster) -> list[Unit]:
        exp, active = self.cfg.experiment, self.cfg.active
        selections = folder.dir / "selections"
        selections.mkdir(exist_ok=True)
        context = ActiveContext(table=self.corpus.table, assignment=self.split.assignment,
                                labels=folder.meta["labels"], encoder_specs=dict(self.encoder_specs),
                                cache_root=str(cache_root(exp.storage)), fixed=dict(exp.trial),
                                fractions=list(active.fractions), cold_start=active.cold_start,
                                reinit=active.reinit, cpus_per_trial=int(max(1, round(exp.resources.cpus_per_trial))),
                                selections_dir=str(selections))
        from ray import tune

        count = len(active.trial_acquisitions) * len(active.tapt) * len(active.seeds)
        space = {"acquisition": tune.grid_search(active.trial_acquisitions),
                 "tapt": tune.grid_search(list(active.tapt)), "seed": tune.grid_search(list(active.seeds))}
        progress = TrialProgress(UNIT, count, "test_bca", "max", fields=("acquisition", "tapt", "seed", "labelled_count"))
        # A trial cut off by an interrupt runs again from its first round: its rounds depend on each
        # other's models, and a trial is short.
        return [Unit(name=UNIT, trainable=run_active_trial, context=context, param_space=space, expected_trials=count,
                     tags={"strategy": UNIT}, progress=progress, continue_errored=False,
                     report_keys=tuple(c for c in ROUND_COLUMNS if c not in ("trial_id", "status", "error")))]

    def trial_row(self, unit: Unit, result) -> dict:
        config = result.config or {}
        return {"acquisition": config.get("acquisition"), "tapt": bool(config.get("tapt")),
                "seed": int(config.get("seed", 0))}

    def finish(self, folder: StudyFolder) -> None:
        rounds_table(folder, self.cfg.active.trial_acquisitions)


def rounds_table(folder: StudyFolder, acquisitions: list[str]) -> pd.DataFrame:
    """rounds.csv: one row per trial x round (a failed trial keeps the rounds it reported), from the
    study's trials.csv and epochs.csv."""
    trials = pd.read_csv(folder.dir / TRIALS_FILE, dtype={"trial_id": str})
    reports = pd.read_csv(folder.dir / EPOCHS_FILE, dtype={"trial_id": str}) \
        if (folder.dir / EPOCHS_FILE).exists() else pd.DataFrame(columns=["trial_id", "round"])
    reports = reports.dropna(subset=["round"]).drop_duplicates(["trial_id", "round"], keep="last")
    status = trials[["trial_id", "status", "error", "acquisition", "tapt", "seed"]]
    frame = status.merge(reports.drop(columns=[c for c in ("acquisition", "tapt", "seed") if c in reports]),
                         on="trial_id", how="left")
    frame = frame.reindex(columns=list(ROUND_COLUMNS))
    order = {a: i for i, a in enumerate(acquisitions)}
    frame = frame.assign(_o=frame["acquisition"].map(order)).sort_values(
        ["_o", "tapt", "seed", "round"], kind="stable").drop(columns="_o").reset_index(drop=True)
    frame["error"] = frame["error"].fillna("")
    write_atomic(folder.dir / ROUNDS_FILE, frame.to_csv(index=False))
    return frame
