"""The active-learning experiment file: the usual blocks plus ``active:``.

Schema, with defaults (see experiments/active_quickstart.yaml)::

    name: <file stem>
    corpus: {name: synthetic, root: null, label_map: null, options: {}}
    split: {kind: speaker, val_speakers: 2, test_speakers: 2, seed: 0}
    encoder: tiny-wav2vec2
    trial: {unfreeze: none}        # fixed TrialSettings of every round (default: head only on cached features)
    resources: {cpus_per_trial: 1, memory_gb: null}
    seed: 0
    storage: studies
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

No search space, strategies or budget: the grid (acquisitions x tapt x seeds, plus the full
reference) is the study. Errors name the file and the field, as ``ser_tune.config`` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import (Budget, ConfigError, Experiment, Objective, _Checker, _corpus, _encoder, _name,
                      _resources, _split, _trial, read_yaml)
from .acquisition import ACQUISITIONS, COLD_STARTS

TOP_KEYS = ("name", "corpus", "split", "encoder", "trial", "resources", "seed", "storage", "active")
ACTIVE_KEYS = ("cold_start", "fractions", "acquisitions", "reinit", "tapt", "tapt_settings", "tapt_test_audio",
               "seeds", "full_reference")
DEFAULT_TRIAL = {"unfreeze": "none"}
FULL = "full"     # the full-label reference's acquisition name


@dataclass
class ActiveSettings:
    cold_start: str = "random"
    fractions: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.5, 1.0])
    acquisitions: list[str] = field(default_factory=lambda: ["entropy", "least_confidence", "margin", "random",
                                                             "coreset"])
    reinit: bool = True
    tapt: list[bool] = field(default_factory=lambda: [False])
    tapt_settings: dict = field(default_factory=dict)
    tapt_test_audio: bool = False
    seeds: list[int] = field(default_factory=lambda: [0])
    full_reference: bool = True

    def to_dict(self) -> dict:
        return {"cold_start": self.cold_start, "fractions": list(self.fractions),
                "acquisitions": list(self.acquisitions), "reinit": self.reinit, "tapt": list(self.tapt),
                "tapt_settings": dict(self.tapt_settings), "tapt_test_audio": self.tapt_test_audio,
                "seeds": list(self.seeds), "full_reference": self.full_reference}

    @property
    def trial_acquisitions(self) -> list[str]:
        return list(self.acquisitions) + ([FULL] if self.full_reference else [])


@dataclass
class ActiveConfig:
    experiment: Experiment          # corpus, split, encoder, trial, resources, seed, storage (no space)
    active: ActiveSettings

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.experiment.to_dict().items()
             if k in TOP_KEYS or k == "source"}
        d["active"] = self.active.to_dict()
        return d


def _bool(c: _Checker, value: Any, at: str) -> bool:
    if not isinstance(value, bool):
        raise c.fail(f"{at} must be true or false (got {value!r})")
    return value


def _active(c: _Checker, raw: Any, encoder: str, seed: int) -> ActiveSettings:
    raw = c.mapping(raw, "active", ACTIVE_KEYS)
    a = ActiveSettings(seeds=[seed])
    if "cold_start" in raw:
        if raw["cold_start"] not in COLD_STARTS:
            raise c.fail(f"active.cold_start must be one of {', '.join(COLD_STARTS)} (got {raw['cold_start']!r})")
        a.cold_start = raw["cold_start"]
    if "fractions" in raw:
        fr = raw["fractions"]
        if not isinstance(fr, list) or not fr:
            raise c.fail(f"active.fractions must be a non-empty list of fractions in (0, 1] (got {fr!r})")
        for i, f in enumerate(fr):
            c.number(f, f"active.fractions[{i}]")
            if not 0 < f <= 1:
                raise c.fail(f"active.fractions[{i}] must be a fraction in (0, 1] (got {f!r})")
            if i and f <= fr[i - 1]:
                raise c.fail(f"active.fractions must increase (active.fractions[{i}] = {f!r} "
                             f"follows {fr[i - 1]!r})")
        a.fractions = [float(f) for f in fr]
    if "acquisitions" in raw:
        acq = raw["acquisitions"]
        if isinstance(acq, str):
            acq = [acq]
        if not isinstance(acq, list) or not acq:
            raise c.fail(f"active.acquisitions must be a non-empty list from {', '.join(ACQUISITIONS)} (got {acq!r})")
        for i, name in enumerate(acq):
            if name not in ACQUISITIONS:
                raise c.fail(f"active.acquisitions[{i}]: unknown acquisition {name!r}; "
                             f"choose from {', '.join(ACQUISITIONS)}")
        if len(set(acq)) != len(acq):
            raise c.fail(f"active.acquisitions: an acquisition is listed twice ({acq!r})")
        a.acquisitions = list(acq)
    if "reinit" in raw:
        a.reinit = _bool(c, raw["reinit"], "active.reinit")
    if "full_reference" in raw:
        a.full_reference = _bool(c, raw["full_reference"], "active.full_reference")
    if "tapt_test_audio" in raw:
        a.tapt_test_audio = _bool(c, raw["tapt_test_audio"], "active.tapt_test_audio")
    if "tapt" in raw:
        tapt = raw["tapt"]
        tapt = [tapt] if isinstance(tapt, bool) else tapt
        if not isinstance(tapt, list) or not tapt or not all(isinstance(t, bool) for t in tapt):
            raise c.fail(f"active.tapt must be a list of true/false (got {raw['tapt']!r})")
        if len(set(tapt)) != len(tapt):
            raise c.fail(f"active.tapt: a value is listed twice ({tapt!r})")
        a.tapt = list(tapt)
    if "seeds" in raw:
        seeds = raw["seeds"]
        seeds = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
        if not isinstance(seeds, list) or not seeds:
            raise c.fail(f"active.seeds must be a non-empty list of integers >= 0 (got {raw['seeds']!r})")
        for i, s in enumerate(seeds):
            c.integer(s, f"active.seeds[{i}]", minimum=0, what="an integer >= 0")
        if len(set(seeds)) != len(seeds):
            raise c.fail(f"active.seeds: a seed is listed twice ({seeds!r})")
        a.seeds = [int(s) for s in seeds]
    ts = raw.get("tapt_settings") or {}
    if not isinstance(ts, dict):
        raise c.fail(f"active.tapt_settings must be a mapping of TAPT settings (got {ts!r})")
    if True in a.tapt or ts:
        try:
            from .tapt import TaptError, TaptSettings, check_tapt_supported
        except ImportError as err:
            raise c.fail(f"active.tapt: TAPT is not available in this installation ({err})") from None
        try:
            a.tapt_settings = TaptSettings.from_dict(dict(ts), where="active.tapt_settings").to_dict()
        except (TaptError, ValueError, TypeError) as err:
            msg = str(err)
            raise c.fail(msg if "active.tapt_settings" in msg else f"active.tapt_settings: {msg}") from None
        if True in a.tapt:
            try:
                check_tapt_supported(encoder)
            except (TaptError, ValueError) as err:
                raise c.fail(f"active.tapt: {err}") from None
    return a


def active_from_dict(raw: Any, *, source: str | Path | None = None) -> ActiveConfig:
    """Validate a parsed active-learning YAML; ``source`` (the file) prefixes errors and anchors paths."""
    source = Path(source) if source is not None else None
    c = _Checker(source)
    if not isinstance(raw, dict):
        raise c.fail(f"expected a mapping of experiment settings at the top level (got {type(raw).__name__})")
    for key in raw:
        if key not in TOP_KEYS:
            hint = (" (an active-learning study has no search: the grid is active.acquisitions x active.tapt "
                    "x active.seeds)") if key in ("space", "grid", "strategies", "budget") else ""
            raise c.fail(f"{key} is not a known key of an active-learning experiment; known keys: "
                         f"{', '.join(TOP_KEYS)}{hint}")
    trial = dict(DEFAULT_TRIAL)
    trial.update(_trial(c, raw.get("trial")))
    _trial(c, trial)
    resources = _resources(c, raw.get("resources"))
    seed = c.integer(raw.get("seed", 0), "seed", minimum=0, what="an integer >= 0")
    storage = Path(c.text(raw.get("storage", "studies"), "storage")).expanduser()
    encoder = _encoder(c, raw.get("encoder", "tiny-wav2vec2"))
    exp = Experiment(
        name=_name(c, raw.get("name")), corpus=_corpus(c, raw.get("corpus"), "corpus"),
        split=_split(c, raw.get("split")), encoder=encoder, trial=trial, space={}, grid=None,
        strategies=[], budget=Budget(trials=1), resources=resources, concurrency=None, seed=seed,
        storage=storage if storage.is_absolute() else (Path.cwd() / storage).resolve(),
        objective=Objective(), thresholds=[], crosscorpus=[], source=source)
    active = _active(c, raw.get("active"), encoder, seed)
    return ActiveConfig(experiment=exp, active=active)


def load_active(path: str | Path) -> ActiveConfig:
    return active_from_dict(read_yaml(path), source=Path(path))
