"""Experiment configuration: one YAML file under experiments/ describes a whole study.

Every field is checked on load; an error names the file and the field, e.g.
``experiments/x.yaml: budget.trials must be a positive integer (got -3)``. Unknown keys
are errors. The schema, with defaults (see experiments/*.yaml for worked examples)::

    name: <file stem>               # study name, also its folder under storage
    corpus: {name: synthetic, root: null, label_map: null, options: {}}
    split: {kind: speaker, val_speakers: 2, test_speakers: 2, seed: 0}
    encoder: tiny-whisper           # tiny-<family> | hf:<hub id or folder> | speechbrain:<hub id or folder>
    trial: {}                       # fixed TrialSettings values
    space: <the paper's space>      # searched TrialSettings: {name: {loguniform|uniform|int|choice: [...]}}
    grid: null                      # for the grid strategy; null = derived from the space
    strategies: [tpe, gp]
    budget: {trials: 15, minutes: null}     # per strategy; minutes = optional time limit per strategy
    resources: {cpus_per_trial: 1, memory_gb: null}
    concurrency: null               # max concurrent trials per strategy; null = cluster CPUs // cpus_per_trial
    seed: 0
    storage: studies                # folder of study folders
    objective: {metric: val_bca, mode: max}
    thresholds: [0.8, 0.9]
    crosscorpus: []                 # [{name, root, label_map}] evaluated after the study

Paths: a relative ``corpus.root`` (and ``crosscorpus[*].root``) is looked up first next
to the YAML file, then in the current working directory; when neither exists the
working-directory path is kept (the corpus loader then names it). A relative
``storage`` is relative to the working directory. Encoder folders (``hf:<folder>``)
are left as written (relative to the working directory).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import yaml

from ser_tune.data.corpus import CORPORA
from ser_tune.data.labels import check_view
from ser_tune.search import STRATEGY_NAMES
from ser_tune.search.space import (Param, SpaceError, default_grid, paper_space, parse_grid, parse_space,
                                   space_to_raw)
from ser_tune.training.settings import TrialSettings

METRICS = ("val_bca", "val_ccc", "val_ccc_arousal", "val_ccc_valence", "val_ccc_dominance")
SPLIT_KEYS = {                      # the keyword arguments of ser_tune.data.make_split per kind
    "speaker": ("val_speakers", "test_speakers", "seed"),
    "random": ("val_fraction", "test_fraction", "seed"),
    "fold": ("k", "fold", "val_speakers", "seed"),
}
TOP_KEYS = ("name", "corpus", "split", "encoder", "trial", "space", "grid", "strategies", "budget",
            "resources", "concurrency", "seed", "storage", "objective", "thresholds", "crosscorpus")

# The quickstart study: synthetic corpus, tiny encoder, a few minutes on a laptop.
# experiments/quickstart.yaml holds the same values (a test checks they agree).
QUICKSTART: dict[str, Any] = {
    "name": "quickstart",
    "corpus": {"name": "synthetic", "root": None, "label_map": None, "options": {}},
    "split": {"kind": "speaker", "val_speakers": 2, "test_speakers": 2, "seed": 0},
    "encoder": "tiny-whisper",
    "trial": {"unfreeze": "top:1", "batch_size": 16},
    "space": {
        "lr": {"loguniform": [1.0e-4, 1.0e-2]},
        "num_epochs": {"int": [2, 6]},
        "unfreeze_epoch": {"int": [0, 3]},
        "max_length": {"choice": [1.0, 1.5, 2.0]},
    },
    "grid": None,
    "strategies": ["tpe", "gp"],
    "budget": {"trials": 6, "minutes": None},
    "resources": {"cpus_per_trial": 1, "memory_gb": None},
    "concurrency": None,
    "seed": 0,
    "storage": "studies",
    "objective": {"metric": "val_bca", "mode": "max"},
    "thresholds": [0.8, 0.9],
    "crosscorpus": [],
}


class ConfigError(ValueError):
    """An experiment file is malformed; the message names the file and the field."""


@dataclass
class CorpusConfig:
    name: str
    root: Path | None = None          # None only for the synthetic corpus (the launcher picks a folder)
    label_map: str | None = None      # a label view of ser_tune/data/label_maps.yaml; None = corpus default
    options: dict = field(default_factory=dict)   # synthetic-corpus options

    def to_dict(self) -> dict:
        return {"name": self.name, "root": None if self.root is None else str(self.root),
                "label_map": self.label_map, "options": dict(self.options)}


@dataclass
class Budget:
    trials: int
    minutes: float | None = None


@dataclass
class Resources:
    cpus_per_trial: float = 1
    memory_gb: float | None = None


@dataclass
class Objective:
    metric: str = "val_bca"
    mode: str = "max"


@dataclass
class Experiment:
    name: str
    corpus: CorpusConfig
    split: dict
    encoder: str
    trial: dict
    space: dict[str, Param]
    grid: dict | None
    strategies: list[str]
    budget: Budget
    resources: Resources
    concurrency: int | None
    seed: int
    storage: Path
    objective: Objective
    thresholds: list[float]
    crosscorpus: list[dict]
    source: Path | None = None

    def to_dict(self) -> dict:
        """JSON-able, in the YAML's own form (saved with the study)."""
        return {
            "name": self.name,
            "corpus": self.corpus.to_dict(),
            "split": dict(self.split),
            "encoder": self.encoder,
            "trial": dict(self.trial),
            "space": space_to_raw(self.space),
            "grid": None if self.grid is None else {k: list(v) for k, v in self.grid.items()},
            "strategies": list(self.strategies),
            "budget": {"trials": self.budget.trials, "minutes": self.budget.minutes},
            "resources": {"cpus_per_trial": self.resources.cpus_per_trial,
                          "memory_gb": self.resources.memory_gb},
            "concurrency": self.concurrency,
            "seed": self.seed,
            "storage": str(self.storage),
            "objective": {"metric": self.objective.metric, "mode": self.objective.mode},
            "thresholds": list(self.thresholds),
            "crosscorpus": [dict(c) for c in self.crosscorpus],
            "source": None if self.source is None else str(self.source),
        }


# -- small checkers: each raises a ConfigError naming the field --------------------------------

class _Checker:
    def __init__(self, source: Path | None):
        self.source = source
        self.prefix = f"{source}: " if source is not None else ""

    def fail(self, message: str) -> ConfigError:
        return ConfigError(self.prefix + message)

    def mapping(self, value: Any, at: str, keys: tuple[str, ...]) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(f"{at} must be a mapping (got {value!r})")
        unknown = [k for k in value if k not in keys]
        if unknown:
            field_name = f"{at}.{unknown[0]}" if at else str(unknown[0])
            raise self.fail(f"{field_name} is not a known key; known keys: {', '.join(keys)}")
        return value

    def integer(self, value: Any, at: str, *, minimum: int | None = None, what: str = "an integer") -> int:
        ok = isinstance(value, Integral) and not isinstance(value, bool)
        if not ok or (minimum is not None and value < minimum):
            raise self.fail(f"{at} must be {what} (got {value!r})")
        return int(value)

    def number(self, value: Any, at: str, *, positive: bool = False, what: str = "a number") -> float:
        ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (positive and value <= 0):
            raise self.fail(f"{at} must be {what} (got {value!r})")
        return value

    def text(self, value: Any, at: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{at} must be a non-empty string (got {value!r})")
        return value


def _resolve_root(root: str, source: Path | None) -> Path:
    path = Path(root).expanduser()
    if path.is_absolute():
        return path
    if source is not None and (source.parent / path).exists():
        return (source.parent / path).resolve()
    return (Path.cwd() / path).resolve()


def _corpus(c: _Checker, raw: Any, at: str, *, allow_options: bool = True) -> CorpusConfig:
    keys = ("name", "root", "label_map", "options") if allow_options else ("name", "root", "label_map")
    raw = c.mapping(raw, at, keys)
    name = raw.get("name", "synthetic" if allow_options else None)
    if name not in CORPORA:
        raise c.fail(f"{at}.name must be one of {', '.join(CORPORA)} (got {name!r})")
    root = raw.get("root")
    if root is None:
        if name != "synthetic":
            raise c.fail(f"{at}.root is required for corpus '{name}' (the corpus folder, or the CSV for csv)")
    else:
        root = _resolve_root(c.text(root, f"{at}.root"), c.source)
    label_map = raw.get("label_map")
    if label_map is not None:
        try:
            check_view(c.text(label_map, f"{at}.label_map"))
        except ValueError as err:
            raise c.fail(f"{at}.label_map: {err}") from None
    options = raw.get("options") or {}
    if not isinstance(options, dict):
        raise c.fail(f"{at}.options must be a mapping (got {options!r})")
    if options and name != "synthetic":
        raise c.fail(f"{at}.options: corpus '{name}' takes no options (got {', '.join(map(str, options))})")
    return CorpusConfig(name=name, root=root, label_map=label_map, options=dict(options))


def _split(c: _Checker, raw: Any) -> dict:
    if raw is None:
        return {"kind": "speaker", "val_speakers": 2, "test_speakers": 2, "seed": 0}
    if not isinstance(raw, dict):
        raise c.fail(f"split must be a mapping (got {raw!r})")
    kind = raw.get("kind")
    if kind not in SPLIT_KEYS:
        raise c.fail(f"split.kind must be one of {', '.join(SPLIT_KEYS)} (got {kind!r})")
    c.mapping(raw, "split", ("kind",) + SPLIT_KEYS[kind])
    for key, value in raw.items():
        at = f"split.{key}"
        if key in ("seed", "k", "fold"):
            c.integer(value, at, minimum=0, what="an integer >= 0")
        elif key in ("val_fraction", "test_fraction"):
            if c.number(value, at) <= 0 or value >= 1:
                raise c.fail(f"{at} must be a fraction in (0, 1) (got {value!r})")
        elif key in ("val_speakers", "test_speakers"):
            # a count of speakers, or a share of them in (0, 1)
            if isinstance(value, bool) or not isinstance(value, Real) or value < 0 or (
                    not isinstance(value, Integral) and not 0 < value < 1):
                raise c.fail(f"{at} must be a speaker count >= 0 or a fraction in (0, 1) (got {value!r})")
    if kind == "random" and raw.get("val_fraction", 0.1) + raw.get("test_fraction", 0.2) >= 1:
        raise c.fail("split: val_fraction + test_fraction must be < 1")
    return dict(raw)


def _encoder(c: _Checker, raw: Any) -> str:
    from ser_tune.encoders import resolve_spec   # late: the encoders package imports torch
    try:
        # a local folder is resolved like corpus.root: next to the YAML first, then the working directory
        return resolve_spec(raw, [c.source.parent] if c.source is not None else [])
    except ValueError as err:
        raise c.fail(f"encoder: {err}") from None


def _trial(c: _Checker, raw: Any) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise c.fail(f"trial must be a mapping of trial settings (got {raw!r})")
    try:
        TrialSettings.from_config(raw)
    except Exception as err:  # SettingsError, or a value of a type the field cannot hold
        named = re.search(r"'(\w+)'", str(err))
        where = f"trial.{named.group(1)}" if named and named.group(1) in raw else "trial"
        raise c.fail(f"{where}: {err}") from None
    return dict(raw)


def _strategies(c: _Checker, raw: Any) -> list[str]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise c.fail(f"strategies must be a non-empty list from {', '.join(STRATEGY_NAMES)} (got {raw!r})")
    for i, name in enumerate(raw):
        if name not in STRATEGY_NAMES:
            raise c.fail(f"strategies[{i}]: unknown strategy {name!r}; choose from {', '.join(STRATEGY_NAMES)}")
    if len(set(raw)) != len(raw):
        raise c.fail(f"strategies: a strategy is listed twice ({raw!r})")
    return list(raw)


def _objective(c: _Checker, raw: Any) -> Objective:
    raw = c.mapping(raw, "objective", ("metric", "mode"))
    metric = raw.get("metric", "val_bca")
    mode = raw.get("mode", "max")
    if metric not in METRICS:
        raise c.fail(f"objective.metric must be one of {', '.join(METRICS)} (got {metric!r})")
    if mode not in ("max", "min"):
        raise c.fail(f"objective.mode must be 'max' or 'min' (got {mode!r})")
    if mode == "min":
        # Every metric here is better when higher; the reference code's GP-BO minimised BCA by a sign slip.
        raise c.fail(f"objective.mode: {metric} is better when higher, so mode must be 'max' (got 'min')")
    return Objective(metric, mode)


def _name(c: _Checker, raw: Any) -> str:
    if raw is None:
        if c.source is None:
            raise c.fail("name is required")
        raw = c.source.stem
    name = c.text(raw, "name")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise c.fail(f"name must be letters, digits, '_', '.' or '-' (it names a folder; got {name!r})")
    return name


def _resources(c: _Checker, raw: Any) -> Resources:
    res_raw = c.mapping(raw, "resources", ("cpus_per_trial", "memory_gb"))
    return Resources(
        cpus_per_trial=c.number(res_raw.get("cpus_per_trial", 1), "resources.cpus_per_trial", positive=True,
                                what="a positive number"),
        memory_gb=None if res_raw.get("memory_gb") is None else
        c.number(res_raw["memory_gb"], "resources.memory_gb", positive=True, what="a positive number or null"))


def experiment_from_dict(raw: dict, *, source: str | Path | None = None) -> Experiment:
    """Validate a parsed YAML mapping; ``source`` (the file) prefixes errors and anchors corpus roots."""
    source = Path(source) if source is not None else None
    c = _Checker(source)
    if not isinstance(raw, dict):
        raise c.fail(f"expected a mapping of experiment settings at the top level (got {type(raw).__name__})")
    c.mapping(raw, "", TOP_KEYS)

    trial = _trial(c, raw.get("trial"))
    try:
        space = paper_space() if raw.get("space") is None else parse_space(raw["space"])
    except SpaceError as err:
        raise c.fail(str(err)) from None
    both = [k for k in space if k in trial]
    if both:
        raise c.fail(f"space.{both[0]}: '{both[0]}' is both fixed in trial and searched in space; keep one")

    strategies = _strategies(c, raw.get("strategies", ["tpe", "gp"]))
    grid = raw.get("grid")
    try:
        grid = parse_grid(grid) if grid is not None else (default_grid(space) if "grid" in strategies else None)
    except SpaceError as err:
        raise c.fail(str(err)) from None
    if grid is not None:
        both = [k for k in grid if k in trial]
        if both:
            raise c.fail(f"grid.{both[0]}: '{both[0]}' is both fixed in trial and searched in the grid; keep one")

    budget_raw = c.mapping(raw.get("budget"), "budget", ("trials", "minutes"))
    budget = Budget(
        trials=c.integer(budget_raw.get("trials", 15), "budget.trials", minimum=1, what="a positive integer"),
        minutes=None if budget_raw.get("minutes") is None else
        c.number(budget_raw["minutes"], "budget.minutes", positive=True, what="a positive number or null"))

    resources = _resources(c, raw.get("resources"))

    concurrency = raw.get("concurrency")
    if concurrency is not None:
        concurrency = c.integer(concurrency, "concurrency", minimum=1, what="a positive integer or null")

    thresholds = raw.get("thresholds", [0.8, 0.9])
    if not isinstance(thresholds, list):
        raise c.fail(f"thresholds must be a list of numbers (got {thresholds!r})")
    for i, t in enumerate(thresholds):
        c.number(t, f"thresholds[{i}]")
        if not -1 <= t <= 1:
            raise c.fail(f"thresholds[{i}] must be in [-1, 1] (got {t!r})")

    cross = raw.get("crosscorpus") or []
    if not isinstance(cross, list):
        raise c.fail(f"crosscorpus must be a list of {{name, root, label_map}} (got {cross!r})")
    crosscorpus = [_corpus(c, item, f"crosscorpus[{i}]", allow_options=False).to_dict()
                   for i, item in enumerate(cross)]
    for item in crosscorpus:
        item.pop("options")

    storage = Path(c.text(raw.get("storage", "studies"), "storage")).expanduser()
    return Experiment(
        name=_name(c, raw.get("name")),
        corpus=_corpus(c, raw.get("corpus"), "corpus"),
        split=_split(c, raw.get("split")),
        encoder=_encoder(c, raw.get("encoder", "tiny-whisper")),
        trial=trial,
        space=space,
        grid=grid,
        strategies=strategies,
        budget=budget,
        resources=resources,
        concurrency=concurrency,
        seed=c.integer(raw.get("seed", 0), "seed", minimum=0, what="an integer >= 0"),
        storage=storage if storage.is_absolute() else (Path.cwd() / storage).resolve(),
        objective=_objective(c, raw.get("objective")),
        thresholds=[float(t) for t in thresholds],
        crosscorpus=crosscorpus,
        source=source,
    )


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment YAML file."""
    return experiment_from_dict(read_yaml(path), source=Path(path))


def read_yaml(path: str | Path) -> dict:
    """The mapping of an experiment YAML file; unreadable, invalid or empty files name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the experiment file ({err.strerror or err})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if raw is None:
        raise ConfigError(f"{path}: the experiment file is empty")
    return raw


def default_experiment() -> Experiment:
    """The quickstart study (the values of experiments/quickstart.yaml)."""
    import copy

    return experiment_from_dict(copy.deepcopy(QUICKSTART))
