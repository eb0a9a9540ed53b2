"""Two-stage adaptation as a kind of study on the driver: one unit per stage, one trial each.

Stage one trains on the source corpus; stage two starts from stage one's exported model on the
target corpus (its unit is made once stage one has ended); the optional baseline trains stage two's
settings on the target from scratch. Each trial exports its model and scores it on the test
speakers of both corpora; ``adapt.json`` and ``adapt.md`` hold the table.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import LabelMapper, make_split
from ..study.driver import StudyError, StudyKind, Unit
from ..study.folder import TRIALS_FILE, StudyFolder, TrialState
from ..study.prepare import cache_root, load_study_corpus, machine_info
from ..study.progress import TrialProgress
from ..study.session import Cluster
from ..training.export import WEIGHTS_FILE, load_model, read_weights
from ..training.finetune import FineTuner, TrialData
from ..training.metrics import bca
from ..training.settings import TrialSettings
from ..training.trainable import TRIAL_COMPLETE, pristine_encoder, set_threads, worker_audio
from .config import AdaptConfig, AdaptError

RESULT_FILE = "adapt.json"
TABLE_FILE = "adapt.md"
ROLES = ("source", "target")
STAGES = ("stage 1", "stage 2", "target only")


@dataclass
class AdaptContext:
    """What the stages' trials need (sent to the workers once)."""
    tables: dict            # role -> corpus table
    assignments: dict       # role -> its split's assignment
    labels: dict            # role -> the corpus's labels
    sources: dict           # role -> {name, root, label_map, options} (named in the exported model)
    encoder_spec: str
    cache_root: str
    state_root: str
    stages: dict            # stage -> {"role", "trial", "freeze"}
    cpus_per_trial: int = 1


def run_stage(config: dict, context: AdaptContext, trial_id: str | None = None) -> dict:
    """One stage: fine-tune, export, score on both corpora's test speakers; its row is the trial's one report.
    A warm body (``study.warm``): stage two runs in the worker stage one left, its imports done."""
    set_threads(context.cpus_per_trial)
    name, stage = config["stage"], context.stages[config["stage"]]
    role = stage["role"]
    settings = TrialSettings.from_config(stage["trial"])
    data = TrialData.from_table(context.tables[role], context.assignments[role], context.labels[role],
                                audio=worker_audio())
    tuner = FineTuner(settings, data, encoder_spec=context.encoder_spec, cache_root=context.cache_root,
                      encoder_loader=pristine_encoder)
    start = time.perf_counter()
    result = tuner.run(init_state=initial_state(config.get("init_from"), context.labels),
                       freeze=stage["freeze"] if config.get("init_from") else ())
    seconds = time.perf_counter() - start
    folder = Path(context.state_root) / name.replace(" ", "_") / "model"
    train = context.tables[role].loc[(context.assignments[role] == "train").to_numpy(), "speaker"]
    tuner.export(result, folder, source={**context.sources[role], "train_speakers": sorted(train.astype(str).unique())})
    model = load_model(folder)
    row = {"stage": name, "trained_on": context.sources[role]["name"] + (" (target)" if role == "target" else ""),
           "peft": settings.peft, "unfreeze": settings.unfreeze, "freeze": json.dumps(list(stage["freeze"])),
           "val_bca": result.val_bca, "trainable_params": result.trainable_params,
           "total_params": result.total_params, "seconds": seconds, "model_dir": str(folder)}
    for other in ROLES:
        scored = score(model, context.tables[other], context.assignments[other])
        row[f"{other}_bca"], row[f"{other}_clips"] = scored["bca"], scored["clips"]
    return {**row, TRIAL_COMPLETE: True}


def initial_state(model_dir: str | None, labels: dict) -> dict | None:
    """Stage one's weights to start stage two from: its encoder weights, and its head when both corpora
    have the same labels."""
    if not model_dir:
        return None
    weights = read_weights(Path(model_dir) / WEIGHTS_FILE)
    same = labels["source"] == labels["target"]
    return {"encoder": weights["encoder"], "head": weights["head"] if same else None}


def score(model, table: pd.DataFrame, assignment: pd.Series) -> dict:
    """BCA of an exported model on one corpus's test speakers (the clips whose label the model knows)."""
    from ..data import load_audio

    mapper = LabelMapper(model.labels)
    test = table[(assignment == "test").to_numpy()]
    known = [(row, mapper(row["label"])) for _, row in test.iterrows()]
    known = [(row, label) for row, label in known if label is not None]
    if not known:
        return {"bca": None, "clips": 0}
    waves = [load_audio(row["path"], model.sample_rate) for row, _ in known]
    outputs = model.outputs(waves, [str(row["speaker"]) for row, _ in known])
    truth = np.array([model.labels.index(label) for _, label in known])
    return {"bca": bca(truth, outputs[:, : model.n_classes].argmax(1)), "clips": len(known)}


class AdaptStudy(StudyKind):
    def __init__(self, cfg: AdaptConfig):
        self.cfg = cfg
        self.corpora, self.splits = {}, {}

    def side(self, role: str):
        return self.cfg.source if role == "source" else self.cfg.target

    def prepare(self, folder: StudyFolder) -> None:
        for role in ROLES:
            corpus_cfg = self.side(role).corpus
            if corpus_cfg.name == "synthetic" and corpus_cfg.root is None:
                # generated corpora with other options must not share a folder (the generator refuses that)
                tag = hashlib.sha1(json.dumps(corpus_cfg.options, sort_keys=True).encode()).hexdigest()[:8]
                corpus_cfg = corpus_cfg.model_copy(update={"root": self.cfg.storage / f"_synthetic_{tag}"})
            self.corpora[role] = load_study_corpus(corpus_cfg, self.cfg.storage)
            self.splits[role] = make_split(self.corpora[role].table, dict(self.side(role).split))
        labels = {role: sorted(self.corpora[role].table["label"].unique()) for role in ROLES}
        if "head" in self.cfg.stage2.freeze and labels["source"] != labels["target"]:
            raise AdaptError(f"stage2.freeze: 'head' needs the same labels in both corpora "
                             f"(source {labels['source']}, target {labels['target']})")
        if not folder.meta:
            folder.meta = {"name": self.cfg.name, "kind": "adapt", "started_at": time.time(),
                           "experiment": self.cfg.to_dict(), "machine": machine_info(), "labels": labels,
                           **{role: self.describe(role) for role in ROLES}}
            folder.save_meta()

    def describe(self, role: str) -> dict:
        corpus, split = self.corpora[role], self.splits[role]
        return {"corpus": corpus.name, "root": str(corpus.root), "synthetic": bool(corpus.synthetic),
                "clips": len(corpus.table), "labels": sorted(corpus.table["label"].unique()),
                "test_speakers": split.speakers(corpus.table, "test")}

    def trial_workers(self, cluster: Cluster):
        return run_stage, 1   # the stages run one after another, each in the worker the one before left

    def check_cluster(self, cluster: Cluster) -> None:
        if cluster.largest_node < 1:
            raise StudyError("no node of the cluster has a CPU for a stage")

    def context(self, folder: StudyFolder) -> AdaptContext:
        stages = {"stage 1": {"role": "source", "trial": self.cfg.stage1.trial, "freeze": []},
                  "stage 2": {"role": "target", "trial": self.cfg.stage2.trial, "freeze": list(self.cfg.stage2.freeze)},
                  "target only": {"role": "target", "trial": self.cfg.stage2.trial, "freeze": []}}
        return AdaptContext(
            tables={r: self.corpora[r].table for r in ROLES}, assignments={r: self.splits[r].assignment for r in ROLES},
            labels=folder.meta["labels"], encoder_spec=self.cfg.encoder, cache_root=str(cache_root(self.cfg.storage)),
            state_root=str(folder.state_dir("stages")), stages=stages,
            sources={r: {"name": self.corpora[r].name, "root": str(self.corpora[r].root),
                         "label_map": self.side(r).corpus.label_map, "options": dict(self.side(r).corpus.options or {})}
                     for r in ROLES})

    def units(self, folder: StudyFolder, cluster: Cluster):
        context = self.context(folder)
        yield self.stage_unit("stage 1", context)
        first = stage_rows(folder).get("stage 1")
        if first is None or pd.isna(first.get("model_dir")):
            raise StudyError("stage 1 did not export a model: stage 2 has nothing to start from")
        yield self.stage_unit("stage 2", context, init_from=first["model_dir"])
        if self.cfg.baseline:
            yield self.stage_unit("target only", context)

    @staticmethod
    def stage_unit(stage: str, context: AdaptContext, init_from: str | None = None) -> Unit:
        name = stage.replace(" ", "_")
        return Unit(name=name, trainable=run_stage, context=context, warm=True,
                    param_space={"stage": stage, "init_from": init_from}, expected_trials=1,
                    tags={"stage": stage}, info={"notes": stage}, metric="val_bca",
                    progress=TrialProgress(name, 1, "target_bca", "max"))

    def finish(self, folder: StudyFolder) -> None:
        rows = [stage_rows(folder)[s] for s in STAGES if s in stage_rows(folder)]
        report = {"name": self.cfg.name, "encoder": self.cfg.encoder, "study_dir": str(folder.dir),
                  "source": folder.meta["source"], "target": folder.meta["target"], "stages": rows,
                  "head_carried_over": folder.meta["labels"]["source"] == folder.meta["labels"]["target"]}
        (folder.dir / RESULT_FILE).write_text(json.dumps(report, indent=2, default=str))
        (folder.dir / TABLE_FILE).write_text(table(rows) + "\n")
        folder.meta["adapt"] = str(folder.dir / RESULT_FILE)


def stage_rows(folder: StudyFolder) -> dict[str, dict]:
    """stage -> its trial's row (finished trials only)."""
    path = folder.dir / TRIALS_FILE
    if not path.exists():
        return {}
    trials = pd.read_csv(path)
    done = trials[trials["status"] == TrialState.TERMINATED.value]
    rows = {}
    for row in done.to_dict("records"):
        row["freeze"] = json.loads(row["freeze"]) if isinstance(row.get("freeze"), str) else []
        row["model"] = row.get("model_dir")
        rows[row["stage"]] = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
    return rows


def table(rows: list[dict]) -> str:
    """Markdown table: BCA on each corpus's test speakers after each stage."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    lines = ["| stage | trained on | peft | freeze | target BCA % | source BCA % | trainable params | seconds |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['stage']} | {r['trained_on']} | {r['peft']} ({r['unfreeze']}) | "
              f"{','.join(r['freeze']) or '-'} | {pct(r.get('target_bca'))} | {pct(r.get('source_bca'))} | "
              f"{int(r['trainable_params']):,} | {r['seconds']:.1f} |" for r in rows]
    return "\n".join(lines)
