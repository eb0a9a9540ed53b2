"""An active-learning study: one Ray Tune ``Tuner`` over the grid acquisitions x TAPT x seeds.

Before any trial: the split (as any study: ``split.json``), TAPT when asked (once per study, on the
pool and validation speakers' audio; the test speakers' too only with ``tapt_test_audio: true``),
and the frozen features of every encoder used (the TAPT encoder is another encoder: its own cache
entry). Each trial then runs :func:`ser_tune.active.loop.run_loop` and reports after every round;
``rounds.csv`` holds one row per trial x round.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import SAMPLE_RATE, AudioStore, crop
from ..encoders import load_encoder, spec_fingerprint
from ..encoders.cache import FeatureCache, effective_max_length
from ..study import Study, TrialProgress
from ..training.finetune import TrialData
from ..training.settings import TrialSettings
from ..training.trainable import set_threads
from .config import ActiveConfig
from .loop import pristine_copy, run_loop

ROUND_COLUMNS = ("acquisition", "tapt", "seed", "trial_id", "status", "error", "round", "rounds", "target_fraction",
                 "labelled_fraction", "labelled_count", "pool_size", "added", "classes_labelled", "val_bca",
                 "test_bca", "test_accuracy", "best_epoch", "train_seconds", "select_seconds", "fit_seconds",
                 "round_seconds", "cumulative_seconds", "load_seconds", "encode_seconds", "time_total_s")


class ActiveStudyError(RuntimeError):
    """The study cannot start (no pool, a TAPT failure, ...); the message names the cause."""


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


def trial_key(acquisition: str, tapt: bool, seed: int) -> str:
    return f"{acquisition}-tapt{int(bool(tapt))}-seed{seed}"


_AUDIO: dict[int, AudioStore] = {}


def run_active_trial(config: dict, context: ActiveContext) -> None:
    """The Ray Tune function trainable: one acquisition x TAPT x seed, one report per round."""
    from ray import tune

    set_threads(context.cpus_per_trial)
    acquisition, tapt, seed = config["acquisition"], bool(config["tapt"]), int(config["seed"])
    settings = TrialSettings.from_config({**context.fixed, "seed": seed})
    audio = _AUDIO.setdefault(SAMPLE_RATE, AudioStore(SAMPLE_RATE))
    data = TrialData.from_table(context.table, context.assignment, context.labels, audio=audio)
    tags = {"acquisition": acquisition, "tapt": tapt, "seed": seed}
    picked: list[list[str]] = []

    def on_select(round_: int, rows: np.ndarray) -> None:
        # which clips each round labelled, by path (for audit: never a validation or test clip)
        picked.append([data.paths[i] for i in rows])
        if context.selections_dir is not None:
            path = Path(context.selections_dir) / f"{trial_key(acquisition, tapt, seed)}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps({**tags, "rounds": picked}, indent=1))
            os.replace(tmp, path)

    run_loop(data, settings, encoder_spec=context.encoder_specs[tapt], cache_root=context.cache_root,
             acquisition=acquisition, fractions=context.fractions, cold_start=context.cold_start,
             reinit=context.reinit, seed=seed, report=lambda row: tune.report({**row, **tags}),
             on_select=on_select, encoder_loader=pristine_copy)


class ActiveStudy:
    """The driver side: data, TAPT, encode once, the Tuner, rounds.csv."""

    def __init__(self, cfg: ActiveConfig, study: Study):
        self.cfg = cfg
        self.study = study
        self.encoder_specs: dict[bool, str] = {False: cfg.experiment.encoder}

    @classmethod
    def create(cls, cfg: ActiveConfig) -> "ActiveStudy":
        return cls(cfg, Study.create(cfg.experiment))

    @classmethod
    def resume(cls, cfg: ActiveConfig, folder: str | Path = "latest") -> "ActiveStudy":
        """An interrupted study's folder ('latest': this experiment's newest): its split, TAPT encoder and
        feature cache are reused, its finished trials kept (raises StudyError when there is none)."""
        study = Study.latest(cfg.experiment) if str(folder) == "latest" else Study.open(Path(folder), cfg.experiment)
        return cls(cfg, study)

    @property
    def dir(self) -> Path:
        return self.study.dir

    @property
    def meta(self) -> dict:
        return self.study.meta

    @property
    def settings(self) -> TrialSettings:
        return TrialSettings.from_config(dict(self.cfg.experiment.trial))

    def prepare_data(self) -> None:
        """Corpus, split (saved as split.json) and the pool; study.json records them."""
        self.study.prepare_data()
        table, assignment = self.study.corpus.table, self.study.split.assignment
        pool = table[assignment.to_numpy() == "train"]
        if len(pool) < 2:
            raise ActiveStudyError(f"the pool (train speakers' clips) has {len(pool)} clip(s); "
                                   "active learning needs at least 2")
        self.meta.pop("strategies", None)
        self.meta["kind"] = "active"
        self.meta["active"] = self.cfg.active.to_dict()
        self.meta["pool"] = {"clips": int(len(pool)), "speakers": sorted(pool["speaker"].astype(str).unique())}
        self.meta["trial"] = self.settings.to_dict()
        self.study.save_meta()

    def tapt_paths(self) -> list[str]:
        parts = ("train", "val", "test") if self.cfg.active.tapt_test_audio else ("train", "val")
        table, assignment = self.study.corpus.table, self.study.split.assignment
        return [str(p) for p in table.loc[assignment.isin(parts).to_numpy(), "path"]]

    def run_tapt(self) -> dict | None:
        """Task-adaptive pre-training of the encoder once (cached on disk under storage), when asked."""
        if True not in self.cfg.active.tapt:
            return None
        from .tapt import TaptSettings, check_tapt_supported, tapt_encoder

        exp = self.cfg.experiment
        check_tapt_supported(exp.encoder)
        settings = TaptSettings.from_dict(dict(self.cfg.active.tapt_settings), where="active.tapt_settings")
        paths = self.tapt_paths()
        storage = Path(exp.storage).expanduser().resolve()       # the encoder goes to <storage>/_tapt/<key>
        result = tapt_encoder(exp.encoder, paths, settings, storage, sample_rate=SAMPLE_RATE)
        self.encoder_specs[True] = result.spec
        info = {"spec": result.spec, "folder": str(result.folder), "seconds": float(result.seconds),
                "reused": bool(result.reused), "steps": int(settings.steps),
                "first_loss": float(result.losses[0]) if result.losses else None,
                "last_loss": float(result.losses[-1]) if result.losses else None,
                "eval_loss_before": getattr(result, "eval_loss_before", None),
                "eval_loss_after": getattr(result, "eval_loss_after", None),
                "clips": len(paths), "test_audio": bool(self.cfg.active.tapt_test_audio),
                "settings": settings.to_dict()}
        self.meta["tapt"] = info
        self.study.save_meta()
        return info

    def encode_once(self) -> dict[str, float]:
        """The frozen features of every encoder used (base, and TAPT when on), before any trial."""
        settings = self.settings
        table = self.study.corpus.table
        paths = [str(p) for p in table["path"]]
        ml = effective_max_length(settings.max_length, table["duration"].to_numpy(float))
        audio = AudioStore(SAMPLE_RATE)
        set_threads(os.cpu_count() or 1)
        seconds: dict[str, float] = {}
        for tapt in self.cfg.active.tapt:
            spec = self.encoder_specs[tapt]
            loaded = {}

            def encoder(spec=spec):
                if spec not in loaded:
                    loaded[spec] = load_encoder(spec)
                return loaded[spec]

            boundaries = []
            if settings.encoder_trains:
                n = encoder().num_layers
                boundaries = [0 if settings.top_k is None else n - min(settings.top_k, n)]
            cache = FeatureCache(self.study.cache_root, spec, spec_fingerprint(spec), encoder)
            start = time.perf_counter()
            cache.get(paths, lambda i: crop(audio.get(paths[i]), ml, SAMPLE_RATE), ml, boundaries)
            seconds[spec] = time.perf_counter() - start
        self.meta["encode_seconds"] = float(sum(seconds.values()))
        self.meta["encode"] = {spec: float(s) for spec, s in seconds.items()}
        self.study.save_meta()
        return seconds

    def run_trials(self, *, verbose: int = 0):
        from ray import tune

        exp, active = self.cfg.experiment, self.cfg.active
        table = self.study.corpus.table
        selections = self.dir / "selections"
        selections.mkdir(exist_ok=True)
        context = ActiveContext(table=table, assignment=self.study.split.assignment, labels=self.meta["labels"],
                                encoder_specs=dict(self.encoder_specs), cache_root=str(self.study.cache_root),
                                fixed=dict(exp.trial), fractions=list(active.fractions), cold_start=active.cold_start,
                                reinit=active.reinit, cpus_per_trial=int(max(1, round(exp.resources.cpus_per_trial))),
                                selections_dir=str(selections))
        resources = {"cpu": exp.resources.cpus_per_trial}
        if exp.resources.memory_gb:
            resources["memory"] = int(exp.resources.memory_gb * 2**30)
        trainable = tune.with_resources(tune.with_parameters(run_active_trial, context=context), resources)
        param_space = {"acquisition": tune.grid_search(active.trial_acquisitions),
                       "tapt": tune.grid_search(list(active.tapt)),
                       "seed": tune.grid_search(list(active.seeds))}
        trials = self.meta.setdefault("trials", {"started_at": time.time()})
        trials["count"] = len(active.trial_acquisitions) * len(active.tapt) * len(active.seeds)
        self.study.save_meta()
        path = self.dir / "active"
        if path.exists() and tune.Tuner.can_restore(str(path)):
            # --resume: finished trials are kept; a trial cut off by the interruption runs again from
            # its first round (a trial is short, and its rounds depend on each other's models).
            tuner = tune.Tuner.restore(str(path), trainable, param_space=param_space, resume_unfinished=True,
                                       resume_errored=False, restart_errored=True)
        else:
            progress = TrialProgress("active", trials["count"], "test_bca", "max",
                                     fields=("acquisition", "tapt", "seed", "labelled_count"))
            tuner = tune.Tuner(trainable, param_space=param_space,
                               tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True),
                               run_config=tune.RunConfig(name="active", storage_path=str(self.dir), verbose=verbose,
                                                         callbacks=[progress] if verbose == 0 else None,
                                                         # a node lost mid-trial: the trial runs again elsewhere
                                                         failure_config=tune.FailureConfig(max_failures=2)))
        grid = tuner.fit()
        self.meta["trials"]["finished_at"] = time.time()
        rounds = self.collect(grid)
        self.meta["finished_at"] = time.time()
        self.study.save_meta()
        return rounds

    def collect(self, grid) -> pd.DataFrame:
        """rounds.csv: one row per trial x round (a failed trial keeps the rounds it reported)."""
        rows = []
        for result in grid:
            config = result.config or {}
            frame = result.metrics_dataframe if result.metrics_dataframe is not None else pd.DataFrame()
            if "round" in frame:
                # a trial run again after an interruption reports its rounds again: the last run's count
                frame = frame.drop_duplicates("round", keep="last")
            base = {"acquisition": config.get("acquisition"), "tapt": bool(config.get("tapt")),
                    "seed": int(config.get("seed", 0)),
                    "trial_id": (result.metrics or {}).get("trial_id") or Path(result.path).name,
                    "status": "ERROR" if result.error else "TERMINATED",
                    "error": _one_line(result.error) if result.error else ""}
            if frame.empty:
                rows.append(base)
            for _, r in frame.iterrows():
                rows.append({**base, **{c: r.get(c) for c in ROUND_COLUMNS if c not in base}})
        frame = pd.DataFrame(rows, columns=list(ROUND_COLUMNS))
        order = {a: i for i, a in enumerate(self.cfg.active.trial_acquisitions)}
        frame = frame.assign(_o=frame["acquisition"].map(order)).sort_values(
            ["_o", "tapt", "seed", "round"], kind="stable").drop(columns="_o").reset_index(drop=True)
        tmp = self.dir / "rounds.csv.tmp"
        frame.to_csv(tmp, index=False)
        os.replace(tmp, self.dir / "rounds.csv")
        return frame


def _one_line(error) -> str:
    lines = [l for l in str(error).strip().splitlines() if l.strip()]
    return lines[-1][:500] if lines else type(error).__name__
