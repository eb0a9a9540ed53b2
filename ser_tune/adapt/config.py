"""The two-stage adaptation file (``python -m ser_tune.adapt CONFIG``).

Stage one fine-tunes the PEFT modules (LoRA / adapters) and the head on a *source* corpus
(typically acted speech); stage two starts from those weights on a *target* corpus, optionally
keeping groups fixed (``freeze: [lora]`` keeps stage one's LoRA and trains only the adapters and
the head). After each stage the model is exported and scored on the test speakers of both
corpora, so the table shows what stage two gained on the target and what it cost on the source.
``baseline: true`` adds stage two's settings trained on the target from scratch (no stage one).

CONFIG (see experiments/twostage.yaml)::

    name: <file stem>
    encoder: tiny-whisper
    storage: studies                          # a study folder <storage>/<name>-<date>-<time>/, feature cache shared
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

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from ..config import (ConfigError, CorpusConfig, EncoderSpec, Name, SourceFile, SplitDict, StoragePath, TrialValues,
                      read_yaml, validate)
from ..schema import Flag, Section, choice, listed
from ..training.peft import FREEZE_GROUPS


class AdaptError(ConfigError):
    """Bad two-stage configuration or a stage that cannot run; the message names the file or field."""


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


