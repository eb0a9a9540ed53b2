"""Two-stage adaptation: ``python -m ser_tune.adapt CONFIG [--json]``.

Stage one fine-tunes the PEFT modules (LoRA / adapters) and the head on a *source* corpus
(typically acted speech); stage two starts from those weights on a *target* corpus, optionally
keeping groups fixed (``freeze: [lora]`` keeps stage one's LoRA and trains only the adapters and
the head). After each stage the model is exported and scored on the test speakers of both
corpora, so the table shows what stage two gained on the target and what it cost on the source.
``baseline: true`` adds stage two's settings trained on the target from scratch (no stage one).

CONFIG (see experiments/twostage.yaml)::

    name: <file stem>
    encoder: tiny-whisper
    storage: studies                          # results in <storage>/<name>/, feature cache shared
    source: {corpus: {name, root, ...}, split: {kind: speaker, ...}}   # corpus and split as in ser_tune.config
    target: {corpus: {...}, split: {...}}
    stage1: {trial: {peft: lora, unfreeze: "top:2", ...}}
    stage2: {trial: {...}, freeze: [lora]}    # trial: changes to stage one's settings
    baseline: false

Stage two must adapt at least the layers and modules stage one adapted (so its starting weights
have somewhere to go). Its head starts from stage one's when both corpora have the same labels;
otherwise it starts fresh, and scores on the other corpus count the clips whose label the
model knows (same name or the same canonical emotion, as in cross-corpus evaluation).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from .config import (ConfigError, CorpusConfig, EncoderSpec, Name, SourceFile, SplitDict, StoragePath, TrialValues,
                     read_yaml, validate)
from .schema import Flag, Section, choice, listed
from .training.peft import FREEZE_GROUPS

RESULT_FILE = "adapt.json"
TABLE_FILE = "adapt.md"


class AdaptError(ConfigError):
    """Bad two-stage configuration or a stage that cannot run; the message names the file or field."""


@dataclass
class Side:
    """One corpus of the two: its clips, split and trial data."""
    role: str
    corpus: Any
    split: Any
    data: Any


class CorpusSide(Section):
    """``source`` or ``target``: a corpus and its split."""
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    split: SplitDict = Field(None, validate_default=True)


class StageOne(Section):
    trial: TrialValues = {}


class StageTwo(Section):
    trial: TrialValues = {}     # in the file: changes to stage one's settings; once read: stage two's settings
    freeze: listed(choice(FREEZE_GROUPS), f"a list from {', '.join(FREEZE_GROUPS)}", empty=True) = []


class AdaptConfig(Section):
    """The two-stage configuration (see the module docs); ``path`` is the file it was read from."""
    source: CorpusSide
    target: CorpusSide
    stage1: StageOne
    stage2: StageTwo = Field(default_factory=StageTwo)
    name: Name = Field(None, validate_default=True)
    encoder: EncoderSpec = "tiny-whisper"
    storage: StoragePath = Field("studies", validate_default=True)
    baseline: Flag = False
    path: SourceFile = Field(None, exclude=True, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _stage_two_starts_from_stage_one(cls, raw: Any) -> Any:
        # stage2.trial lists changes to stage one's settings: check, and keep, the whole of stage two's
        try:
            stage2 = raw.get("stage2") or {}
            whole = {**(raw["stage1"].get("trial") or {}), **(stage2.get("trial") or {})}
        except (AttributeError, KeyError, TypeError):
            return raw      # malformed: the sections' own checks say how
        return {**raw, "stage2": {**stage2, "trial": whole}}


def load_config(path: str | Path) -> AdaptConfig:
    return config_from_dict(read_yaml(path, error=AdaptError), source=path)


def config_from_dict(raw: Any, *, source: str | Path | None = None) -> AdaptConfig:
    """Validate a parsed configuration; errors name the file and the field (``target.corpus.root``)."""
    return validate(AdaptConfig, raw, source=source, error=AdaptError)


# --- running -------------------------------------------------------------------------------------
def _load_side(cfg: AdaptConfig, role: str) -> Side:
    from .data import load_corpus, make_split
    from .training.finetune import TrialData

    spec = cfg.source if role == "source" else cfg.target
    corpus_cfg = spec.corpus
    root = corpus_cfg.root
    if corpus_cfg.name == "synthetic" and root is None:
        # Generated corpora with other options must not share a folder (the generator refuses that).
        tag = hashlib.sha1(json.dumps(corpus_cfg.options, sort_keys=True).encode()).hexdigest()[:8]
        root = cfg.storage / f"_synthetic_{tag}"
    corpus = load_corpus(corpus_cfg.name, root, label_map=corpus_cfg.label_map, **(corpus_cfg.options or {}))
    split = make_split(corpus.table, dict(spec.split))
    data = TrialData.from_table(corpus.table, split.assignment)
    return Side(role, corpus, split, data)


def score(model, side: Side) -> dict:
    """BCA of an exported model on the test speakers of one corpus (clips whose label the model knows)."""
    import torch

    from .data import LabelMapper
    from .training.metrics import bca

    mapper = LabelMapper(model.labels)
    data = side.data
    idx = data.parts["test"]
    if not len(idx):
        return {"bca": None, "clips": 0, "excluded": 0}
    truth, preds = [], []
    for i in idx:
        label = mapper(data.labels[data.y[i]])
        if label is None:
            continue
        with torch.no_grad():
            logits = model.head(model.embed(data.audio.get(data.paths[i])))[0, : model.n_classes]
        truth.append(model.labels.index(label))
        preds.append(int(logits.argmax()))
    return {"bca": bca(np.array(truth), np.array(preds)) if truth else None, "clips": len(truth),
            "excluded": int(len(idx) - len(truth))}


def _stage(cfg: AdaptConfig, label: str, side: Side, trial: dict, others: list[Side], out: Path,
           init_state: dict | None = None, freeze=()) -> tuple[dict, Any]:
    from .training.export import load_model
    from .training.finetune import FineTuner
    from .training.settings import TrialSettings

    settings = TrialSettings.from_config(trial)
    tuner = FineTuner(settings, side.data, encoder_spec=cfg.encoder, cache_root=cfg.storage / "_feature_cache")
    start = time.perf_counter()
    result = tuner.run(init_state=init_state, freeze=freeze)
    seconds = time.perf_counter() - start
    folder = tuner.export(result, out / label.replace(" ", "_"))
    model = load_model(folder)
    row = {"stage": label, "trained_on": side.corpus.name if side.role == "source" else f"{side.corpus.name} (target)",
           "peft": settings.peft, "unfreeze": settings.unfreeze, "freeze": list(freeze),
           "val_bca": result.val_bca, "trainable_params": result.trainable_params,
           "total_params": result.total_params, "seconds": seconds, "model": str(folder)}
    for other in others:
        scored = score(model, other)
        row[f"{other.role}_bca"] = scored["bca"]
        row[f"{other.role}_clips"] = scored["clips"]
    return row, result


def run(cfg: AdaptConfig, *, progress=None) -> dict:
    """Run both stages (and the optional baseline); write <storage>/<name>/adapt.json and adapt.md."""
    src, tgt = _load_side(cfg, "source"), _load_side(cfg, "target")
    out = cfg.storage / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    both = [tgt, src]
    rows = []
    say = progress or (lambda text: None)
    say(f"stage 1 on {src.corpus.name} ({len(src.data.paths)} clips)")
    row1, first = _stage(cfg, "stage 1", src, cfg.stage1.trial, both, out)
    rows.append(row1)
    same_labels = src.data.labels == tgt.data.labels
    if "head" in cfg.stage2.freeze and not same_labels:
        raise AdaptError(f"stage2.freeze: 'head' needs the same labels in both corpora "
                         f"(source {src.data.labels}, target {tgt.data.labels})")
    init = {"encoder": first.state["encoder"], "head": first.state["head"] if same_labels else None}
    say(f"stage 2 on {tgt.corpus.name} ({len(tgt.data.paths)} clips), freeze {cfg.stage2.freeze or 'nothing'}")
    row2, _ = _stage(cfg, "stage 2", tgt, cfg.stage2.trial, both, out, init_state=init,
                    freeze=cfg.stage2.freeze)
    rows.append(row2)
    if cfg.baseline:
        say("baseline: stage 2's settings on the target from scratch")
        row, _ = _stage(cfg, "target only", tgt, cfg.stage2.trial, both, out)
        rows.append(row)
    report = {"name": cfg.name, "encoder": cfg.encoder, "source": _describe(src), "target": _describe(tgt),
              "head_carried_over": same_labels, "stages": rows}
    (out / RESULT_FILE).write_text(json.dumps(report, indent=2, default=str))
    (out / TABLE_FILE).write_text(table(rows) + "\n")
    return report


def _describe(side: Side) -> dict:
    return {"corpus": side.corpus.name, "root": str(side.corpus.root), "synthetic": bool(side.corpus.synthetic),
            "clips": len(side.data.paths), "labels": side.data.labels,
            "test_speakers": sorted(side.split.speakers(side.corpus.table, "test"))}


def table(rows: list[dict]) -> str:
    """Markdown table: BCA on each corpus's test speakers after each stage."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    lines = ["| stage | trained on | peft | freeze | target BCA % | source BCA % | trainable params | seconds |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['trained_on']} | {r['peft']} ({r['unfreeze']}) | "
                     f"{','.join(r['freeze']) or '-'} | {pct(r.get('target_bca'))} | {pct(r.get('source_bca'))} | "
                     f"{r['trainable_params']:,} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ser_tune.adapt", description=__doc__.splitlines()[0])
    p.add_argument("config", help="two-stage configuration (YAML), e.g. experiments/twostage.yaml")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--cpus", type=int, default=None, help="torch threads (default: all cores)")
    args = p.parse_args(argv)

    from .data import DataError
    from .encoders import EncoderError
    from .training.export import ModelFolderError
    from .training.finetune import TrialError
    from .training.settings import SettingsError
    from .training.trainable import set_threads

    set_threads(args.cpus or os.cpu_count() or 1)
    try:
        cfg = load_config(args.config)
        report = run(cfg, progress=None if args.json else (lambda text: print(text, flush=True)))
    except (AdaptError, DataError, EncoderError, SettingsError, TrialError, ModelFolderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, default=str))
    else:
        print(table(report["stages"]))
        print(f"written: {cfg.storage / cfg.name / RESULT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
