"""The settings of one fine-tuning run: what a trial's config may set.

Every field can be fixed in an experiment's ``trial:`` section or join its search
space. The first four are the reference paper's hyper-parameters. Each field declares
what it accepts (type, range, allowed values); :meth:`TrialSettings.from_config` and
:meth:`TrialSettings.validate` check them all (pydantic, as :mod:`ser_tune.schema`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError

from ser_tune.schema import ERROR_KIND, described, invalid, why


class SettingsError(ValueError):
    """A trial setting has a bad name or value; the message names it, ``field`` is its name."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def _integer(value: Any) -> int:
    # Searchers hand out numpy scalars and floats for integers (BayesOpt relaxes everything).
    try:
        return int(round(float(value)))
    except (TypeError, ValueError, OverflowError):
        raise invalid(f"must be an integer (got {value!r})") from None


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise invalid(f"must be a number (got {value!r})") from None


Int = Annotated[int, BeforeValidator(_integer)]
Float = Annotated[float, BeforeValidator(_number)]


@dataclass
class TrialSettings:
    # The reference paper's four hyper-parameters.
    lr: Annotated[Float, Field(gt=0)] = 1e-4   # peak learning rate of AdamW (encoder layers get lr * encoder_lr_scale)
    num_epochs: Annotated[Int, Field(ge=1)] = 5
    unfreeze_epoch: Annotated[Int, Field(ge=0)] = 0     # epochs with the encoder frozen before it trains
    max_length: Optional[Annotated[Float, Field(gt=0)]] = 3.0   # seconds of audio kept (None: whole clip)

    # What trains once unfrozen: "none" (head only), "top:K" (top K transformer layers), "all".
    unfreeze: Annotated[str, Field(pattern=r"^(none|all|top:[1-9][0-9]*)$"),
                        described("'none', 'all' or 'top:K' with K >= 1")] = "top:2"
    head_lr: Optional[Float] = None  # head learning rate; None = lr * head_lr_scale
    head_lr_scale: Float = 10.0      # heads on cached features want a larger step than encoder layers
    # What the head reads: each hidden state's statistics over the clip's frames, its "mean" or its
    # "meanstd" (mean and standard deviation side by side), of one layer index, a learned mix of
    # every layer ("weighted", trained heads only) or "all" layers' statistics concatenated.
    pooling: Literal["mean", "meanstd"] = "mean"
    layer: Annotated[Union[Literal["weighted", "all"], int], described("'weighted', 'all' or a layer index")] = "weighted"
    # "logreg": scikit-learn's L2-regularised logistic regression (the probe's kind of model) fitted
    # to convergence on the standardised features, inverse regularisation C; "linear" or "mlp": a torch
    # head trained by AdamW for num_epochs; "attentive": a learned softmax mix of every layer's cached
    # frames, attentive statistics pooling (attention-weighted mean and standard deviation over the
    # clip's frames, Okabe et al. 2018) and a linear classifier, trained as linear and mlp are.
    # "lda": scikit-learn's linear discriminant analysis with a shrunk within-class covariance
    # (Friedman 1989, regularised discriminant analysis; weight `shrinkage` on the identity), fitted in
    # closed form in the principal subspace of the standardised training features (at most as many
    # dimensions as training clips: the covariance of 7 x 512 features from a few hundred clips).
    head: Literal["logreg", "lda", "linear", "mlp", "attentive"] = "linear"
    C: Annotated[Float, Field(gt=0)] = 1.0
    shrinkage: Annotated[Float, Field(ge=0, le=1)] = 0.5
    head_hidden: Int = 256
    # "attentive" only: the attention's hidden width. frame_average: the frames an attentive head reads
    # (cached every layer's, averaged over 1 or 2 frames in time: 2 halves the cache and the head's work), or
    # those the encoder layers a linear or mlp head trains read (the hidden state below them, averaged the
    # same way before them: half the frames through the trained layers, in training and in the exported model).
    attention_hidden: Annotated[Int, Field(ge=1)] = 128
    frame_average: Annotated[Literal[1, 2], BeforeValidator(_integer), described("1 or 2")] = 1
    # Augmentation of the cached frames of training clips ("attentive" only; validation and test clips
    # are never augmented), each off at 0: mask up to time_mask consecutive frames of each clip, drop
    # each frame with probability frame_dropout, mix pairs of clips' pooled statistics and one-hot
    # targets with a Beta(mixup, mixup) weight, add Gaussian noise of feature_noise times each
    # feature's standard deviation over the training frames.
    time_mask: Annotated[Int, Field(ge=0)] = 0
    frame_dropout: Annotated[Float, Field(ge=0, lt=1)] = 0.0
    mixup: Annotated[Float, Field(ge=0)] = 0.0
    feature_noise: Annotated[Float, Field(ge=0)] = 0.0
    dropout: Annotated[Float, Field(ge=0, lt=1)] = 0.1
    weight_decay: Annotated[Float, Field(ge=0)] = 0.01
    batch_size: Annotated[Int, Field(ge=1)] = 16
    class_weighted: bool = True
    grad_clip: Float = 1.0
    warmup_fraction: Float = 0.1     # linear warm-up share of the cosine schedule
    seed: Int = 0
    # Encode frozen layers once and reuse them ("cache"), or re-encode every clip every epoch
    # as the reference code did ("naive"); the benchmark compares the two.
    features: Literal["cache", "naive"] = "cache"
    # What the head predicts: emotion "categories", continuous "dimensions" (arousal, valence,
    # dominance), or "both" (multi-task, the dimensional loss weighted by dimension_weight).
    task: Literal["categories", "dimensions", "both"] = "categories"
    dimension_loss: Literal["ccc", "mse"] = "ccc"   # "ccc" (1 - concordance correlation) or "mse"
    dimension_weight: Float = 1.0
    # The per-epoch metric that picks the best epoch (the study's objective); None: val_bca when the
    # task has categories, else val_ccc.
    objective: Optional[Annotated[str, Field(pattern=r"^val_(bca|ccc(_\w+)?)$"),
                                  described("val_bca, val_ccc or val_ccc_<dimension>")]] = None
    # Parameter-efficient fine-tuning (see ser_tune.training.peft); "none" = plain weights.
    peft: Literal["none", "lora", "adapter", "lora+adapter"] = "none"
    lora_rank: Int = 8
    lora_alpha: Float = 16.0
    lora_targets: str = "q,v"
    adapter_size: Int = 64
    # z-scoring of the encoder's features, statistics from unlabelled audio: "none", over the whole
    # "corpus", or per "speaker".
    normalize: Literal["none", "corpus", "speaker"] = "none"
    # The arithmetic of the encoder's layers, in the shared encode and in the layers a trial trains:
    # "bf16" (bfloat16 autocast) or "fp32"; "auto": bf16 where the CPU has it in hardware (AMX or
    # AVX512-BF16), fp32 elsewhere (see ser_tune.encoders.precision).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # The encoder spec (see ser_tune.encoders) of a strategy study's trial when it differs from the study's
    # own: the study then searches among encoders (each has its own feature-cache entry). None: the study's.
    encoder: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "TrialSettings":
        """Build from a (possibly Ray-sampled) config, converting types; unknown keys are an error."""
        for key in config:
            if key not in cls.field_names():
                raise SettingsError(
                    f"trial setting '{key}' is not known; known settings: {', '.join(cls.field_names())}", key)
        return checked(config)

    def validate(self) -> None:
        """Check every setting (also ones set directly rather than through from_config); settles the
        default objective for the task."""
        self.objective = checked(self.to_dict()).objective

    @property
    def top_k(self) -> int | None:
        """Number of top layers that train once unfrozen; None for all, 0 for none."""
        if self.unfreeze == "none":
            return 0
        if self.unfreeze == "all":
            return None
        return int(self.unfreeze[4:])

    @property
    def uses_categories(self) -> bool:
        return self.task in ("categories", "both")

    @property
    def uses_dimensions(self) -> bool:
        return self.task in ("dimensions", "both")

    @property
    def encoder_trains(self) -> bool:
        return self.head in ENCODER_HEADS and self.top_k != 0 and self.unfreeze_epoch < self.num_epochs

    @property
    def averages_trained_frames(self) -> bool:
        """Whether the encoder layers that train read their input frames averaged over ``frame_average`` in time."""
        return self.encoder_trains and self.frame_average > 1

    @property
    def reads_frames(self) -> bool:
        """Whether the head reads every layer's cached frames (else each layer's pooled statistics)."""
        return self.head in FRAME_HEADS

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("extra")
        return d


ADAPTER = TypeAdapter(TrialSettings)
HEADS = ("logreg", "lda", "linear", "mlp", "attentive")
FITTED_HEADS = ("logreg", "lda")                 # scikit-learn models fitted once on cached features
TRAINED_HEADS = ("linear", "mlp", "attentive")   # trained by AdamW for num_epochs
ENCODER_HEADS = ("linear", "mlp")                # may train encoder layers under them (unfreeze)
FRAME_HEADS = ("attentive",)                     # read every layer's cached frames and pool them themselves
POOLED_HEADS = ("logreg", "lda", "linear", "mlp")       # read each layer's pooled statistics
# Settings that mean something for some heads only: a trial's config (see :func:`applicable`) leaves
# them out for the others. A logistic regression or an LDA is fitted once on frozen features: no
# steps, epochs, dropout or encoder training; a torch head has no C or shrinkage; an attentive head pools every
# layer's cached frames itself (no pooling, layer or encoder training), and only it reads frames to
# augment (frames averaged in time: an attentive head's, or those of the layers a linear or mlp head trains).
ONLY_FOR_HEADS = {
    "C": ("logreg",),
    "shrinkage": ("lda",),
    "head_hidden": ("mlp",),
    **{name: POOLED_HEADS for name in ("pooling", "layer")},
    **{name: TRAINED_HEADS for name in (
        "lr", "num_epochs", "head_lr", "head_lr_scale", "dropout", "weight_decay", "batch_size", "grad_clip",
        "warmup_fraction")},
    **{name: ENCODER_HEADS for name in (
        "unfreeze_epoch", "unfreeze", "peft", "lora_rank", "lora_alpha", "lora_targets", "adapter_size")},
    **{name: FRAME_HEADS for name in ("attention_hidden", "time_mask", "frame_dropout", "mixup", "feature_noise")},
    "frame_average": FRAME_HEADS + ENCODER_HEADS,
}
# A setting searched within one head's branch of a conditional space is named "<head>.<setting>"
# (see ser_tune.search.space): it applies when the trial's head is that head.
BRANCH = "."


def applicable(values: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``values`` that apply to its head (default: TrialSettings.head), branch names
    ("<head>.<setting>") of the chosen head renamed to the setting, every other branch's and every
    setting of :data:`ONLY_FOR_HEADS` the head does not use left out. A branch's value wins over the
    same setting given plainly.

    >>> applicable({"head": "logreg", "lr": 0.1, "logreg.C": 2.0, "mlp.head_hidden": 64, "normalize": "speaker"})
    {'head': 'logreg', 'normalize': 'speaker', 'C': 2.0}
    """
    head = values.get("head", TrialSettings.head)
    plain = {k: v for k, v in values.items() if BRANCH not in k}
    branch = {k.partition(BRANCH)[2]: v for k, v in values.items() if k.partition(BRANCH)[0] == head}
    return {k: v for k, v in {**plain, **branch}.items() if head in ONLY_FOR_HEADS.get(k, HEADS)}


# Settings that must agree with each other: (setting to blame, why, test).
AGREE = [
    ("layer", "'weighted' is a learned mix of layers: it needs a trained head (linear or mlp); logreg and lda "
     "read one layer or 'all'", lambda s: s.head in TRAINED_HEADS or s.layer != "weighted"),
    ("head", f"{'/'.join(FITTED_HEADS)} predict emotion categories only (task 'categories')",
     lambda s: s.head not in FITTED_HEADS or s.task == "categories"),
    ("head", f"{'/'.join(FITTED_HEADS)} are fitted on the cached frozen features: they need 'features: cache'",
     lambda s: s.head not in FITTED_HEADS or s.features == "cache"),
    ("head", "attentive reads the cached frames: it needs 'features: cache'",
     lambda s: not s.reads_frames or s.features == "cache"),
    ("mixup", "mixup mixes one-hot class targets: it needs task 'categories'",
     lambda s: s.mixup == 0 or s.task == "categories"),
    ("objective", "a CCC objective needs task 'dimensions' or 'both'",
     lambda s: s.uses_dimensions or not s.objective.startswith("val_ccc")),
    ("objective", "val_bca needs task 'categories' or 'both'", lambda s: s.uses_categories or s.objective != "val_bca"),
]


def checked(values: dict[str, Any]) -> TrialSettings:
    """TrialSettings from known setting names, every value checked; SettingsError names the setting."""
    try:
        settings = ADAPTER.validate_python(values)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        name = str(first["loc"][0])
        if first["type"] == ERROR_KIND:
            raise SettingsError(f"trial setting '{name}' {why(first)}", name) from None
        raise SettingsError(f"trial setting '{name}' = {values.get(name)!r}: {why(first)}", name) from None
    if settings.objective is None:
        settings.objective = "val_bca" if settings.uses_categories else "val_ccc"
    for name, reason, holds in AGREE:
        if not holds(settings):
            raise SettingsError(f"trial setting '{name}' = {getattr(settings, name)!r}: {reason}", name)
    return settings
