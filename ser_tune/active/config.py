"""The active-learning experiment file: the study sections of ``ser_tune.config`` plus ``active:``.

Schema, with defaults (see experiments/active_quickstart.yaml)::

    name: <file stem>
    corpus: {name: synthetic, root: null, label_map: null, options: {}, drop_labels: [], min_duration: 0.25}
    split: {kind: speaker, val_speakers: 2, test_speakers: 2, seed: 0}
    encoder: tiny-wav2vec2
    trial: {unfreeze: none}        # fixed TrialSettings of every round (default: head only on cached features)
    resources: {cpus_per_trial: 1, memory_gb: null}
    seed: 0
    storage: studies
    evaluation: {outer_folds: 1}   # > 1: outer test folds of speakers (not with a random split)
    active:
      cold_start: random           # random | kmeans (nearest clips to k-means centres of the embeddings)
      fractions: [0.1, 0.2, 0.3, 0.5, 1.0]   # labelled share of the pool after each round, increasing, <= 1
      acquisitions: [entropy, least_confidence, margin, random, coreset]
      reinit: true                 # each round starts from the (TAPT) encoder; false: from last round's model
      tapt: [false]                # TAPT off/on, a grid dimension (true needs an encoder with a TAPT objective)
      tapt_settings: {}            # ser_tune.active.tapt.TaptSettings fields
      tapt_test_audio: false       # true: TAPT also sees the test speakers' audio (transductive)
      seeds: [<seed>]              # one trial per seed (training and acquisition randomness)
      full_reference: true         # add acquisition 'full': one round on 100 % of the pool

No search space, strategies, budget or objective: the grid (acquisitions x tapt x seeds, plus the
full reference) is the study, and each round picks its epoch on the validation speakers (so no
``objective.cv_folds`` either). Errors name the file and the field, as ``ser_tune.config`` does.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from ..config import (Budget, EncoderSpec, Experiment, Objective, Seed, StudyConfig, TrialValues, read_yaml,
                      validate)
from ..schema import Flag, MappingOrNull, Section, choice, invalid, listed, number
from .acquisition import ACQUISITIONS, COLD_STARTS

DEFAULT_TRIAL = {"unfreeze": "none"}
FULL = "full"     # the full-label reference's acquisition name
NO_SEARCH = (" (an active-learning study has no search: the grid is active.acquisitions x active.tapt "
             "x active.seeds)")


def _increasing(fractions: list[float]) -> list[float]:
    for i in range(1, len(fractions)):
        if fractions[i] <= fractions[i - 1]:
            raise invalid(f"must increase (active.fractions[{i}] = {fractions[i]!r} follows {fractions[i - 1]!r})")
    return fractions


class ActiveSettings(Section):
    cold_start: choice(COLD_STARTS) = "random"
    fractions: Annotated[listed(number("a fraction in (0, 1]", gt=0, le=1), "a non-empty list of fractions in (0, 1]"),
                         AfterValidator(_increasing)] = [0.1, 0.2, 0.3, 0.5, 1.0]
    acquisitions: listed(choice(ACQUISITIONS, noun="acquisition"), f"a non-empty list from {', '.join(ACQUISITIONS)}",
                         single=True, noun="an acquisition") = ["entropy", "least_confidence", "margin", "random",
                                                                "coreset"]
    reinit: Flag = True
    tapt: listed(Flag, "a list of true/false", single=True, noun="a value") = [False]
    tapt_settings: MappingOrNull = {}
    tapt_test_audio: Flag = False
    seeds: listed(Seed, "a non-empty list of integers >= 0", single=True, noun="a seed") = [0]
    full_reference: Flag = True

    @model_validator(mode="after")
    def _tapt_settings_checked(self):
        if True in self.tapt or self.tapt_settings:
            try:
                from .tapt import TaptError, TaptSettings
            except ImportError as err:
                raise invalid(f": TAPT is not available in this installation ({err})", "tapt") from None
            try:
                self.tapt_settings = TaptSettings.from_dict(self.tapt_settings, where="tapt_settings").to_dict()
            except TaptError as err:
                raise invalid(f".{err}") from None
        return self

    @property
    def trial_acquisitions(self) -> list[str]:
        return list(self.acquisitions) + ([FULL] if self.full_reference else [])


class ActiveConfig(StudyConfig):
    """An active-learning study; ``experiment`` is the same study as ser_tune.study.Study takes it."""
    KEY_HINTS = {**{key: NO_SEARCH for key in ("space", "grid", "strategies", "budget")},
                 "objective": " (an active-learning study has no search objective: each round picks its epoch "
                              "on the validation speakers, so objective.cv_folds does not apply)"}
    encoder: EncoderSpec = "tiny-wav2vec2"
    trial: Annotated[TrialValues, BeforeValidator(lambda v: {**DEFAULT_TRIAL, **(v or {})})] = Field(
        None, validate_default=True)
    active: ActiveSettings = Field(default_factory=ActiveSettings)

    @model_validator(mode="after")
    def _seeds_and_tapt(self):
        if "seeds" not in self.active.model_fields_set:
            self.active.seeds = [self.seed]
        if True in self.active.tapt:
            from .tapt import TaptError, check_tapt_supported
            try:
                check_tapt_supported(self.encoder)
            except (TaptError, ValueError) as err:
                raise invalid(f": {err}", "active", "tapt") from None
        return self

    @cached_property
    def experiment(self) -> Experiment:
        """The study as an Experiment with no search (corpus, split, encoder, trial, resources, seed, storage)."""
        return Experiment.model_construct(**{k: getattr(self, k) for k in StudyConfig.model_fields}, space={},
                                          grid=None, strategies=[], budget=Budget(trials=1), concurrency=None,
                                          objective=Objective(), thresholds=[], crosscorpus=[])


def active_from_dict(raw: Any, *, source: str | Path | None = None) -> ActiveConfig:
    """Validate a parsed active-learning YAML; ``source`` (the file) prefixes errors and anchors paths."""
    return validate(ActiveConfig, raw, source=source)


def load_active(path: str | Path) -> ActiveConfig:
    return active_from_dict(read_yaml(path), source=Path(path))
