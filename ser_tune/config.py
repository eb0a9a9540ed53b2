"""Experiment configuration: one YAML file under experiments/ describes a whole study.

The sections are declarative schemas (:mod:`ser_tune.schema`); every field is checked on load and
an error is one line naming the file and the field, e.g.
``experiments/x.yaml: budget.trials must be a positive integer (got -3)``. Unknown keys are errors.
The schema, with defaults (see experiments/*.yaml for worked examples)::

    name: <file stem>               # study name, also its folder under storage
    corpus: {name: synthetic, root: null, label_map: null, options: {}, drop_labels: [], min_duration: 0.25}
                                    # drop_labels: classes dropped after the label view;
                                    # min_duration: clips shorter (seconds) are skipped
    split: {kind: speaker, val_speakers: 2, test_speakers: 2, seed: 0}   # or kind random / fold
    encoder: tiny-whisper           # tiny-<family> | hf:<hub id or folder> | speechbrain:<hub id or folder>
    trial: {}                       # fixed TrialSettings values
    space: <the paper's space>      # searched TrialSettings: {name: {loguniform|uniform|int|choice: [...]}}
    grid: null                      # for the grid strategy; null = derived from the space
    strategies: [tpe, gp]
    budget: {trials: 15, minutes: null, repeats: 1, repeat_over: [searcher], warmup: sized}
                                    # per strategy; minutes = optional time limit per strategy;
                                    # repeats: runs of each strategy, varying what repeat_over lists
                                    # (searcher: its seed; split: the split's seed); warmup: model-based
                                    # searchers' random start, sized to the budget or the library's default
    resources: {cpus_per_trial: 1, memory_gb: null}
    concurrency: null               # max concurrent trials per strategy; null = cluster CPUs // cpus_per_trial
    seed: 0
    storage: studies                # folder of study folders
    objective: {metric: val_bca, mode: max, cv_folds: 1, metrics: null, constraints: [], deployment: false,
                latency: {clips: 8, repeats: 5, warmup: 1}}
                                    # cv_folds > 1: each trial's objective is the mean over speaker
                                    # cross-validation folds of the non-test speakers (1 = the split's val part)
                                    # metrics: objectives searched together, e.g. {val_bca: max,
                                    # latency_ms_per_s: min}; metric: the (first) validation metric among them
                                    # constraints: e.g. ["latency_ms_per_s <= 50"]: infeasible trials rank last
                                    # deployment: measure every trial's deployment costs (DEPLOYMENT_METRICS;
                                    # also whenever metrics or constraints name one), latency as in latency:
    evaluation: {outer_folds: 1, ensemble: 1}
                                    # outer_folds > 1: outer test folds of speakers (the study runs once per
                                    # fold); ensemble > 1: a run's model is the mean class probabilities of
                                    # its `ensemble` best configurations, each refit (training.ensemble)
    thresholds: [0.8, 0.9]
    crosscorpus: []                 # [{name, root, label_map}] evaluated after the study

Speaker folds (cv_folds or outer_folds > 1) need speakers, so not a random split.

Paths: a relative ``corpus.root`` (and ``crosscorpus[*].root``) is looked up first next
to the YAML file, then in the current working directory; when neither exists the
working-directory path is kept (the corpus loader then names it). A relative
``storage`` is relative to the working directory. Encoder folders (``hf:<folder>``)
resolve the same way as corpus roots (``ser_tune.encoders.resolve_spec``).
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import yaml
from pydantic import BeforeValidator, Field, PlainSerializer, ValidationError, ValidationInfo, model_validator

from ser_tune.data.corpus import CORPORA
from ser_tune.data.labels import check_view
from ser_tune.objectives import Objective
from ser_tune.schema import (MappingOrNull, NonNegativeInt, PositiveInt, Section, choice, described, error_line,
                             integer, invalid, kept_as_dict, listed, number)
from ser_tune.search import STRATEGY_NAMES, StrategyError, check_installed
from ser_tune.search.space import SpaceError, default_grid, paper_space, parse_grid, parse_space, space_to_raw
from ser_tune.training.settings import SettingsError, TrialSettings

SPLIT_KEYS = {                      # the keyword arguments of ser_tune.data.make_split per kind
    "speaker": ("val_speakers", "test_speakers", "seed"),
    "random": ("val_fraction", "test_fraction", "seed"),
    "fold": ("k", "fold", "val_speakers", "seed"),
}
DEFAULT_SPLIT = {"kind": "speaker", "val_speakers": 2, "test_speakers": 2, "seed": 0}
REPEAT_OVER = ("searcher", "split")
# sized: each searcher's random warm-up sized to the budget (search.default_warmup); library: the library's own
WARMUPS = ("sized", "library")
SPEAKER_FOLDS = ": speaker folds need speakers, but split.kind is 'random' (use speaker or fold)"

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
    """A configuration file is malformed; the message names the file and the field."""


# -- field types shared by every configuration file ------------------------------------------------

def source_file(info: ValidationInfo) -> Path | None:
    """The file being validated (``validate``'s ``source``): relative paths are looked up next to it."""
    return (info.context or {}).get("source")


def _text(value: Any) -> str:
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise invalid(f"must be a non-empty string (got {value!r})")
    return str(value)


def _corpus_root(value: Any, info: ValidationInfo) -> Path | None:
    if value is None:
        return None
    path, source = Path(_text(value)).expanduser(), source_file(info)
    if path.is_absolute():
        return path
    if source is not None and (source.parent / path).exists():
        return (source.parent / path).resolve()
    return (Path.cwd() / path).resolve()


def _label_view(value: Any) -> str | None:
    try:
        return None if value is None else check_view(_text(value))
    except ValueError as err:
        raise invalid(f": {err}") from None


def _name(value: Any, info: ValidationInfo) -> str:
    if value is None:
        if source_file(info) is None:
            raise invalid("is required")
        value = source_file(info).stem
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", value):
        raise invalid(f"must be letters, digits, '_', '.' or '-' (it names a folder; got {value!r})")
    return value


def _storage(value: Any) -> Path:
    path = Path(_text(value)).expanduser()
    return path if path.is_absolute() else (Path.cwd() / path).resolve()


def _encoder(value: Any, info: ValidationInfo) -> str:
    from ser_tune.encoders import resolve_spec   # late: the encoders package imports torch
    source = source_file(info)
    try:
        # a local folder is resolved like corpus.root: next to the YAML first, then the working directory
        return resolve_spec(value, [source.parent] if source is not None else [])
    except ValueError as err:
        raise invalid(f": {err}") from None


def _trial(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"must be a mapping of trial settings (got {value!r})")
    try:
        TrialSettings.from_config(value)
    except SettingsError as err:
        raise invalid(f": {err}", *([err.field] if err.field in value else [])) from None
    return dict(value)


def _searched(parse, default=lambda: None) -> BeforeValidator:
    """``space`` or ``grid``: ``parse`` (parse_space / parse_grid) with messages that follow the field's name."""
    def check(value: Any) -> dict | None:
        try:
            return default() if value is None else parse(value, where="")
        except SpaceError as err:
            raise invalid(str(err)) from None
    return BeforeValidator(check)


Name = Annotated[str, BeforeValidator(_name)]
SourceFile = Annotated[Optional[Path], BeforeValidator(lambda _value, info: source_file(info))]
StoragePath = Annotated[Path, BeforeValidator(_storage)]
EncoderSpec = Annotated[str, BeforeValidator(_encoder)]
TrialValues = Annotated[dict, BeforeValidator(_trial)]          # fixed TrialSettings values, checked
Seed = NonNegativeInt
PositiveNumber = number("a positive number", gt=0)


# -- sections -------------------------------------------------------------------------------------

class CorpusTarget(Section):
    """A corpus named in ``crosscorpus``: name, folder and label view."""
    name: choice(CORPORA)
    root: Annotated[Optional[Path], BeforeValidator(_corpus_root)] = None   # None: synthetic only
    label_map: Annotated[Optional[str], BeforeValidator(_label_view)] = None   # None: the corpus default

    @model_validator(mode="after")
    def _root_unless_synthetic(self):
        if self.root is None and self.name != "synthetic":
            raise invalid(f"is required for corpus '{self.name}' (the corpus folder, or the CSV for csv)", "root")
        return self


class CorpusConfig(CorpusTarget):
    """The study's corpus (``root`` null for the synthetic one: a folder under storage)."""
    name: choice(CORPORA) = "synthetic"
    options: MappingOrNull = {}         # synthetic-corpus options
    drop_labels: listed(Annotated[str, described("a class name")], "a list of class names", empty=True,
                        noun="a class") = []
    min_duration: PositiveNumber = 0.25

    @model_validator(mode="after")
    def _options_only_for_synthetic(self):
        if self.options and self.name != "synthetic":
            raise invalid(f": corpus '{self.name}' takes no options (got {', '.join(map(str, self.options))})",
                          "options")
        return self


SpeakerShare = Annotated[Annotated[int, Field(strict=True, ge=0)] | Annotated[float, Field(strict=True, gt=0, lt=1)],
                         described("a speaker count >= 0 or a fraction in (0, 1)")]
Fraction = number("a fraction in (0, 1)", gt=0, lt=1)


class SplitConfig(Section):
    """ser_tune.data.make_split's arguments; only the keys of its ``kind``; unset keys take make_split's defaults."""
    kind: choice(tuple(SPLIT_KEYS))
    val_speakers: SpeakerShare = None      # None: not set, make_split's default
    test_speakers: SpeakerShare = None
    val_fraction: Fraction = None
    test_fraction: Fraction = None
    k: NonNegativeInt = None
    fold: NonNegativeInt = None
    seed: Seed = None

    @model_validator(mode="after")
    def _keys_of_the_kind(self):
        known = ("kind",) + SPLIT_KEYS[self.kind]
        for key in self.model_fields_set - set(known):
            raise invalid(f"is not a known key; known keys: {', '.join(known)}", key)
        if self.kind == "random" and (self.val_fraction or 0.1) + (self.test_fraction or 0.2) >= 1:
            raise invalid(": val_fraction + test_fraction must be < 1")
        return self

    def to_dict(self) -> dict:
        return self.model_dump(exclude_unset=True)


SplitDict = Annotated[dict, kept_as_dict(SplitConfig),
                      BeforeValidator(lambda v: dict(DEFAULT_SPLIT) if v is None else v)]   # null: the default


class Resources(Section):
    cpus_per_trial: PositiveNumber = 1
    memory_gb: number("a positive number or null", optional=True, gt=0) = None


class Budget(Section):
    trials: PositiveInt = 15
    minutes: number("a positive number or null", optional=True, gt=0) = None
    repeats: PositiveInt = 1
    repeat_over: listed(choice(REPEAT_OVER, noun="repeat target"), f"a non-empty list from {', '.join(REPEAT_OVER)}",
                        single=True, noun="a repeat target") = ["searcher"]
    warmup: choice(WARMUPS) = "sized"


class Evaluation(Section):
    outer_folds: PositiveInt = 1


class SearchEvaluation(Evaluation):
    ensemble: PositiveInt = 1   # > 1: a run's model is the mean of its best configurations' (training.ensemble)


class StudyConfig(Section):
    """What every study file has: data, encoder, fixed trial settings, resources, where results go."""
    name: Name = Field(None, validate_default=True)
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    split: SplitDict = Field(default_factory=lambda: dict(DEFAULT_SPLIT))
    encoder: EncoderSpec = "tiny-whisper"
    trial: TrialValues = {}
    resources: Resources = Field(default_factory=Resources)
    seed: Seed = 0
    storage: StoragePath = Field("studies", validate_default=True)
    evaluation: Evaluation = Field(default_factory=Evaluation)
    source: SourceFile = Field(None, exclude=True, validate_default=True)

    @model_validator(mode="after")
    def _speaker_folds_need_speakers(self):
        if self.evaluation.outer_folds > 1 and self.split["kind"] == "random":
            raise invalid(SPEAKER_FOLDS, "evaluation", "outer_folds")
        return self

    def to_dict(self) -> dict:
        return {**self.model_dump(mode="json"), "source": None if self.source is None else str(self.source)}


class Experiment(StudyConfig):
    """A search study: the space, the strategies and their budget."""
    evaluation: SearchEvaluation = Field(default_factory=SearchEvaluation)
    space: Annotated[dict, _searched(parse_space, paper_space), PlainSerializer(space_to_raw)] = Field(
        None, validate_default=True)
    grid: Annotated[Optional[dict], _searched(parse_grid)] = None
    strategies: listed(choice(STRATEGY_NAMES, noun="strategy"), f"a non-empty list from {', '.join(STRATEGY_NAMES)}",
                       single=True, noun="a strategy") = ["tpe", "gp"]
    budget: Budget = Field(default_factory=Budget)
    concurrency: integer("a positive integer or null", optional=True, ge=1) = None
    objective: Objective = Field(default_factory=Objective)
    thresholds: listed(number("in [-1, 1]", ge=-1, le=1), "a list of numbers") = [0.8, 0.9]
    crosscorpus: listed(Annotated[dict, kept_as_dict(CorpusTarget)], "a list of {name, root, label_map}",
                        empty=True) = []

    @model_validator(mode="after")
    def _fits_together(self):
        both = [k for k in self.space if k in self.trial]
        if both:
            raise invalid(f": '{both[0]}' is both fixed in trial and searched in space; keep one", "space", both[0])
        if self.grid is None and "grid" in self.strategies:
            self.grid = default_grid(self.space)
        both = [k for k in self.grid or {} if k in self.trial]
        if both:
            raise invalid(f": '{both[0]}' is both fixed in trial and searched in the grid; keep one", "grid", both[0])
        if self.objective.cv_folds > 1 and self.split["kind"] == "random":
            raise invalid(SPEAKER_FOLDS, "objective", "cv_folds")
        if self.evaluation.ensemble > 1 and self.evaluation.outer_folds == 1 and self.objective.cv_folds == 1:
            raise invalid(": an ensemble averages refits of the best configurations, which a study makes with "
                          "outer_folds > 1 or objective.cv_folds > 1", "evaluation", "ensemble")
        if self.evaluation.ensemble > 1 and self.trial.get("task", "categories") == "dimensions":
            raise invalid(": an ensemble averages class probabilities; task 'dimensions' has none",
                          "evaluation", "ensemble")
        for i, threshold in enumerate(self.thresholds if self.objective.metric == "val_bca" else []):
            if not 0 <= threshold <= 1:
                raise invalid(f"must be in [0, 1] for val_bca, a balanced class accuracy (got {threshold})",
                              "thresholds", i)
        for strategy in self.strategies:
            try:
                check_installed(strategy)
            except StrategyError as err:
                raise invalid(f": {err}", "strategies") from None
        self._resolve_encoder_choices()
        return self

    def _resolve_encoder_choices(self) -> None:
        """The ``encoder`` setting (a study searching among encoders: a choice of specs in the space or the
        grid, or one in trial) with local folders resolved as the ``encoder`` field is."""
        from ser_tune.encoders import resolve_spec
        from ser_tune.search.space import Param

        bases = [self.source.parent] if self.source is not None else []

        def resolved(values, *where):
            try:
                return [resolve_spec(v, bases) for v in values]
            except ValueError as err:
                raise invalid(f": {err}", *where) from None

        param = self.space.get("encoder")
        if param is not None and param.kind != "choice":
            raise invalid(": the encoder is searched as a choice of encoder specs", "space", "encoder")
        if param is not None:
            self.space["encoder"] = Param("encoder", "choice", values=tuple(resolved(param.values, "space", "encoder")))
        if self.grid and "encoder" in self.grid:
            self.grid["encoder"] = resolved(self.grid["encoder"], "grid", "encoder")
        if self.trial.get("encoder") is not None:
            self.trial["encoder"] = resolved([self.trial["encoder"]], "trial", "encoder")[0]


# -- reading files ----------------------------------------------------------------------------------

SectionT = TypeVar("SectionT", bound=Section)


def validate(schema: type[SectionT], raw: Any, *, source: str | Path | None = None,
             error: type[ConfigError] = ConfigError) -> SectionT:
    """Check a parsed file against ``schema``; ``source`` (the file) prefixes errors and anchors paths."""
    source = Path(source) if source is not None else None
    prefix = f"{source}: " if source is not None else ""
    if not isinstance(raw, dict):
        raise error(f"{prefix}expected a mapping of settings at the top level (got {type(raw).__name__})")
    try:
        return schema.model_validate(raw, context={"source": source})
    except ValidationError as err:
        raise error(prefix + error_line(err)) from None


def experiment_from_dict(raw: dict, *, source: str | Path | None = None) -> Experiment:
    """Validate a parsed experiment YAML mapping (see the module docs)."""
    return validate(Experiment, raw, source=source)


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment YAML file."""
    return experiment_from_dict(read_yaml(path), source=Path(path))


def read_yaml(path: str | Path, error: type[ConfigError] = ConfigError) -> dict:
    """The mapping of a configuration YAML file; unreadable, invalid or empty files name the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise error(f"{path}: cannot read the experiment file ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise error(f"{path}: not valid YAML ({err})") from None
    if raw is None:
        raise error(f"{path}: the experiment file is empty")
    return raw


def default_experiment() -> Experiment:
    """The quickstart study (the values of experiments/quickstart.yaml)."""
    return experiment_from_dict(copy.deepcopy(QUICKSTART))
