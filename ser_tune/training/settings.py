"""The settings of one fine-tuning run: what a trial's config may set.

Every field can be fixed in an experiment's ``trial:`` section or join its search
space. The first four are the reference paper's hyper-parameters.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class SettingsError(ValueError):
    """A trial setting has a bad name or value; the message names the field."""


@dataclass
class TrialSettings:
    # The reference paper's four hyper-parameters.
    lr: float = 1e-4                 # peak learning rate of AdamW (encoder layers get lr * encoder_lr_scale)
    num_epochs: int = 5
    unfreeze_epoch: int = 0          # epochs with the encoder frozen before it trains
    max_length: float | None = 3.0   # seconds of audio kept (None: whole clip)

    # What trains once unfrozen: "none" (head only), "top:K" (top K transformer layers), "all".
    unfreeze: str = "top:2"
    head_lr: float | None = None     # head learning rate; None = lr * head_lr_scale
    head_lr_scale: float = 10.0      # heads on cached features want a larger step than encoder layers
    # Head: learned weighted sum of all layers ("weighted") or one layer index; masked mean pooling;
    # then "linear" or "mlp".
    layer: str | int = "weighted"
    head: str = "linear"
    head_hidden: int = 256
    dropout: float = 0.1
    weight_decay: float = 0.01
    batch_size: int = 16
    class_weighted: bool = True
    grad_clip: float = 1.0
    warmup_fraction: float = 0.1     # linear warm-up share of the cosine schedule
    seed: int = 0
    # Encode frozen layers once and reuse them ("cache"), or re-encode every clip every epoch
    # as the reference code did ("naive"); the benchmark compares the two.
    features: str = "cache"
    # What the head predicts: emotion "categories", continuous "dimensions" (arousal, valence,
    # dominance), or "both" (multi-task, the dimensional loss weighted by dimension_weight).
    task: str = "categories"
    dimension_loss: str = "ccc"      # "ccc" (1 - concordance correlation) or "mse"
    dimension_weight: float = 1.0
    # The per-epoch metric that picks the best epoch (the study's objective); None: val_bca when the
    # task has categories, else val_ccc.
    objective: str | None = None
    # Parameter-efficient fine-tuning (see ser_tune.training.peft); "none" = plain weights.
    peft: str = "none"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: str = "q,v"
    adapter_size: int = 64
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "TrialSettings":
        """Build from a (possibly Ray-sampled) config, converting types; unknown keys are an error."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in config.items():
            if key not in known or key == "extra":
                raise SettingsError(
                    f"trial setting '{key}' is not known; known settings: {', '.join(cls.field_names())}")
            values[key] = value
        settings = cls(**values)
        settings._coerce()
        settings.validate()
        return settings

    def _coerce(self) -> None:
        # Searchers hand out numpy scalars and floats for integers (BayesOpt relaxes everything).
        for name in ("num_epochs", "unfreeze_epoch", "head_hidden", "batch_size", "seed", "lora_rank",
                     "adapter_size"):
            value = getattr(self, name)
            try:
                setattr(self, name, int(round(float(value))))
            except (TypeError, ValueError):
                raise SettingsError(f"trial setting '{name}' must be an integer, got {value!r}") from None
        for name in ("lr", "head_lr_scale", "dropout", "weight_decay", "grad_clip", "warmup_fraction",
                     "lora_alpha", "dimension_weight"):
            value = getattr(self, name)
            try:
                setattr(self, name, float(value))
            except (TypeError, ValueError):
                raise SettingsError(f"trial setting '{name}' must be a number, got {value!r}") from None
        if self.head_lr is not None:
            self.head_lr = float(self.head_lr)
        if self.max_length is not None:
            self.max_length = float(self.max_length)
        if isinstance(self.layer, str) and self.layer.lstrip("-").isdigit():
            self.layer = int(self.layer)
        self.class_weighted = bool(self.class_weighted)

    def validate(self) -> None:
        def bad(name: str, why: str) -> SettingsError:
            return SettingsError(f"trial setting '{name}' = {getattr(self, name)!r}: {why}")

        if not self.lr > 0:
            raise bad("lr", "must be > 0")
        if self.num_epochs < 1:
            raise bad("num_epochs", "must be >= 1")
        if self.unfreeze_epoch < 0:
            raise bad("unfreeze_epoch", "must be >= 0")
        if self.max_length is not None and not self.max_length > 0:
            raise bad("max_length", "must be > 0 seconds (or null for whole clips)")
        if self.unfreeze not in ("none", "all") and not (
                self.unfreeze.startswith("top:") and self.unfreeze[4:].isdigit() and int(self.unfreeze[4:]) > 0):
            raise bad("unfreeze", "must be 'none', 'all' or 'top:K' with K >= 1")
        if self.head not in ("linear", "mlp"):
            raise bad("head", "must be 'linear' or 'mlp'")
        if not (self.layer == "weighted" or isinstance(self.layer, int)):
            raise bad("layer", "must be 'weighted' or a layer index")
        if self.features not in ("cache", "naive"):
            raise bad("features", "must be 'cache' or 'naive'")
        if self.batch_size < 1:
            raise bad("batch_size", "must be >= 1")
        if not 0 <= self.dropout < 1:
            raise bad("dropout", "must be in [0, 1)")
        if self.task not in ("categories", "dimensions", "both"):
            raise bad("task", "must be 'categories', 'dimensions' or 'both'")
        if self.dimension_loss not in ("ccc", "mse"):
            raise bad("dimension_loss", "must be 'ccc' or 'mse'")
        if self.objective is None:
            self.objective = "val_bca" if self.uses_categories else "val_ccc"
        wants_dims = self.objective.startswith("val_ccc")
        if self.objective != "val_bca" and not wants_dims:
            raise bad("objective", "must be val_bca, val_ccc or val_ccc_<dimension>")
        if wants_dims and self.task == "categories":
            raise bad("objective", "a CCC objective needs task 'dimensions' or 'both'")
        if self.objective == "val_bca" and self.task == "dimensions":
            raise bad("objective", "val_bca needs task 'categories' or 'both'")
        if self.peft not in ("none", "lora", "adapter", "lora+adapter"):
            raise bad("peft", "must be 'none', 'lora', 'adapter' or 'lora+adapter'")

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
        return self.top_k != 0 and self.unfreeze_epoch < self.num_epochs

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("extra")
        return d
